//! Category rows: building, validating against a [`CategorySchema`], deterministic row ids, and
//! the quarantine record that replaces a row that fails its schema.
//!
//! On the wire (Kafka) a row is one JSON object with the schema's column names, in schema order,
//! so any consumer (and ClickHouse's JSONEachRow) can read it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::schema::{CategorySchema, Dtype, ROW_ID, STATE_SUFFIX};

/// A row as JSON object, keyed by column name.
pub type RowMap = Map<String, Value>;

/// The value of a `<field>_state` column.
pub const STATE_OK: &str = "ok";
pub const STATE_MISSING: &str = "missing";

/// Namespace of marketlane's v5 row ids (fixed forever: changing it changes every row id).
pub(crate) const ROW_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6d61_726b_6574_6c61_6e65_2d72_6f77_6964);

/// A deterministic row id: the same source event always gives the same id, on any pod and on
/// any re-processing, so ClickHouse can collapse replays. `parts` must identify the event
/// (source, instrument, source event time, and what distinguishes rows of one event), never
/// the ingestion time or the pod.
pub fn row_id(category: &str, parts: &[&str]) -> String {
    let mut name = String::with_capacity(64);
    name.push_str(category);
    for p in parts {
        name.push('|');
        name.push_str(p);
    }
    row_uuid(name.as_bytes()).hyphenated().to_string()
}

/// The v5 uuid of `name` in [`ROW_ID_NAMESPACE`], the same as `Uuid::new_v5`. Hashed by the
/// `sha1` crate, which uses the CPU's SHA instructions where there are some: uuid's portable
/// SHA-1 was 3% of the connector's CPU.
pub(crate) fn row_uuid(name: &[u8]) -> uuid::Uuid {
    use sha1::Digest;
    let digest = sha1::Sha1::new()
        .chain_update(ROW_ID_NAMESPACE.as_bytes())
        .chain_update(name)
        .finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(first).into_uuid()
}

/// The row id of a trade (`tick_market_data`). The rule, and why:
///
/// - IB's `_updated` (ms) alone is not enough: two trades of one conid in the same millisecond
///   would share it, and one would collapse into the other. The id therefore also holds the
///   trade's content as every pod merges it from IB's deltas: last price and last size (the
///   values of the emitted row, `f64` shortest round-trip text; empty for a missing size).
///   Two trades of one millisecond that differ in neither price nor size are not two frames
///   of IB's throttled snapshot stream anyway (a delta shows only changed fields).
/// - The pod's clock never enters: every pod streaming the conid computes the same id.
/// - A frame without `_updated` (seen in the wild, rare) has no event time of its own. It
///   takes the conid's latest `_updated` (`updated_ms` here, the same on every pod: IB stamps
///   it) and is told apart from the trade of that frame by the exact cumulative volume
///   (field 7762, `volume`) it was merged with, which rises with every trade. Only when a pod
///   has not seen any `_updated` for the conid yet does the caller fall back to its receive
///   time (the one case whose id is pod-local; it is logged and counted by the caller).
///
/// The simulator's ledger records `updated`, `price` and `size` of each trade frame, so
/// reconciliation computes the same id (`tick_row_id(source, conid, updated, Some(price),
/// Some(size), None)`): every frame the simulator sends carries `_updated`.
pub fn tick_row_id(
    source: &str,
    conid: i64,
    updated_ms: i64,
    price: Option<f64>,
    size: Option<f64>,
    volume_without_updated: Option<Option<f64>>,
) -> String {
    let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let (conid, updated, price, size) = (
        conid.to_string(),
        updated_ms.to_string(),
        num(price),
        num(size),
    );
    match volume_without_updated {
        None => row_id(
            crate::category::TICK,
            &[source, &conid, &updated, &price, &size],
        ),
        Some(volume) => row_id(
            crate::category::TICK,
            &[
                source,
                &conid,
                &updated,
                &price,
                &size,
                "no_updated",
                &num(volume),
            ],
        ),
    }
}

/// Why a row failed its schema. `code()` is the stable label used in metrics and quarantine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("payload is not a JSON object")]
    NotAnObject,
    #[error("missing row_id")]
    MissingRowId,
    #[error("missing required field {0}")]
    MissingField(String),
    #[error("field {field}: expected {expected}, got {got}")]
    WrongType {
        field: String,
        expected: Dtype,
        got: String,
    },
    #[error("field {0}: value is not finite")]
    NotFinite(String),
    #[error("field {field}: value {value} is out of range for {dtype}")]
    OutOfRange {
        field: String,
        value: String,
        dtype: Dtype,
    },
    #[error("field {0}: empty string")]
    EmptyString(String),
    #[error("field {field}: value {value:?} is not one of {allowed:?}")]
    NotAllowed {
        field: String,
        value: String,
        allowed: Vec<String>,
    },
    #[error("unknown field {0}")]
    UnknownField(String),
}

impl RowError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "not_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingRowId => "missing_row_id",
            Self::MissingField(_) => "missing_field",
            Self::WrongType { .. } => "wrong_type",
            Self::NotFinite(_) => "not_finite",
            Self::OutOfRange { .. } => "out_of_range",
            Self::EmptyString(_) => "empty_string",
            Self::NotAllowed { .. } => "not_allowed",
            Self::UnknownField(_) => "unknown_field",
        }
    }
}

/// What the schema checks need of a JSON value: implemented by `serde_json::Value` and by the
/// writer's borrowed scalars (`wire_row`), so that both paths check rows with one function.
pub(crate) trait JsonScalar {
    fn as_str(&self) -> Option<&str>;
    /// Any number.
    fn as_f64(&self) -> Option<f64>;
    /// An integer that fits.
    fn as_i64(&self) -> Option<i64>;
    /// A non-negative integer.
    fn as_u64(&self) -> Option<u64>;
    /// The value's type as errors describe it.
    fn type_name(&self) -> String;
}

impl JsonScalar for Value {
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }
    fn as_f64(&self) -> Option<f64> {
        Value::as_f64(self)
    }
    fn as_i64(&self) -> Option<i64> {
        Value::as_i64(self)
    }
    fn as_u64(&self) -> Option<u64> {
        Value::as_u64(self)
    }
    fn type_name(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(_) => "bool".into(),
            Value::Number(n) => format!("number {n}"),
            Value::String(s) => format!("string {s:?}"),
            Value::Array(_) => "array".into(),
            Value::Object(_) => "object".into(),
        }
    }
}

/// The state of a nullable field of a checked row.
fn field_state(row: &RowMap, field: &str) -> &'static str {
    if row.get(field).is_none_or(Value::is_null) {
        STATE_MISSING
    } else {
        STATE_OK
    }
}

/// Checks one non-null value against its field's type and constraints.
pub(crate) fn check_value<V: JsonScalar>(
    field: &crate::schema::FieldSpec,
    value: &V,
) -> Result<(), RowError> {
    let wrong = |v: &V| RowError::WrongType {
        field: field.name.clone(),
        expected: field.dtype,
        got: v.type_name(),
    };
    match field.dtype {
        Dtype::String => {
            let s = value.as_str().ok_or_else(|| wrong(value))?;
            if s.is_empty() {
                return Err(RowError::EmptyString(field.name.clone()));
            }
            if !field.allowed.is_empty() && !field.allowed.iter().any(|a| a == s) {
                return Err(RowError::NotAllowed {
                    field: field.name.clone(),
                    value: s.to_string(),
                    allowed: field.allowed.clone(),
                });
            }
        }
        Dtype::Float64 => {
            let f = value.as_f64().ok_or_else(|| wrong(value))?;
            if !f.is_finite() {
                return Err(RowError::NotFinite(field.name.clone()));
            }
        }
        Dtype::Int64 => {
            value.as_i64().ok_or_else(|| wrong(value))?;
        }
        Dtype::Timestamp => {
            let t = value.as_i64().ok_or_else(|| wrong(value))?;
            if t < 0 {
                return Err(RowError::OutOfRange {
                    field: field.name.clone(),
                    value: t.to_string(),
                    dtype: field.dtype,
                });
            }
        }
        Dtype::UInt32 => {
            let n = value.as_u64().ok_or_else(|| wrong(value))?;
            if n > u64::from(u32::MAX) {
                return Err(RowError::OutOfRange {
                    field: field.name.clone(),
                    value: n.to_string(),
                    dtype: field.dtype,
                });
            }
        }
    }
    Ok(())
}

impl CategorySchema {
    /// Validates `row` against the schema and returns it in column order, with the state
    /// column of every nullable field set. Unknown columns are errors (they would be lost).
    /// Takes the row so that its keys and values move into the result instead of being cloned.
    pub fn validate(&self, mut row: RowMap) -> Result<RowMap, RowError> {
        self.check(&row)?;
        let mut out = Map::with_capacity(self.fields.len() + self.state_names.len() + 1);
        if let Some((k, v)) = row.swap_remove_entry(ROW_ID) {
            out.insert(k, v);
        }
        let mut states = Vec::new();
        for (i, field) in self.fields.iter().enumerate() {
            let (k, v) = row
                .swap_remove_entry(&field.name)
                .unwrap_or_else(|| (field.name.clone(), Value::Null));
            if field.nullable {
                states.push((i, if v.is_null() { STATE_MISSING } else { STATE_OK }));
            }
            out.insert(k, v);
        }
        for (i, state) in states {
            out.insert(self.state_name(i).into_owned(), Value::String(state.into()));
        }
        Ok(out)
    }

    /// [`Self::validate`] without taking the row, so a caller can still quarantine it as it was.
    pub fn validate_borrowed(&self, row: &RowMap) -> Result<RowMap, RowError> {
        self.check(row)?;
        let mut out = Map::with_capacity(self.fields.len() + self.state_names.len() + 1);
        let id = row.get(ROW_ID).cloned().unwrap_or(Value::Null);
        out.insert(ROW_ID.to_string(), id);
        for field in &self.fields {
            let v = row.get(&field.name).cloned().unwrap_or(Value::Null);
            out.insert(field.name.clone(), v);
        }
        for (i, field) in self.fields.iter().enumerate().filter(|(_, f)| f.nullable) {
            out.insert(
                self.state_name(i).into_owned(),
                Value::String(field_state(row, &field.name).into()),
            );
        }
        Ok(out)
    }

    /// Checks `row` against the schema without building anything: `Ok` exactly when
    /// [`Self::validate`] would succeed, with the same error otherwise.
    pub fn check(&self, row: &RowMap) -> Result<(), RowError> {
        match row.get(ROW_ID) {
            Some(Value::String(id)) if !id.is_empty() => {}
            _ => return Err(RowError::MissingRowId),
        }
        // Columns of the row that the schema knows (fields, their states, row_id).
        let mut known = 1;
        for (i, field) in self.fields.iter().enumerate() {
            let value = match row.get(&field.name) {
                Some(v) => {
                    known += 1;
                    v
                }
                None => &Value::Null,
            };
            if field.nullable && row.contains_key(self.state_name(i).as_ref()) {
                // A state sent by the producer is recomputed, never trusted.
                known += 1;
            }
            if value.is_null() {
                if !field.nullable {
                    return Err(RowError::MissingField(field.name.clone()));
                }
                continue;
            }
            check_value(field, value)?;
        }
        if known < row.len() {
            let extra = row
                .keys()
                .find(|k| {
                    k.as_str() != ROW_ID
                        && self.field(k).is_none()
                        && !k
                            .strip_suffix(STATE_SUFFIX)
                            .and_then(|f| self.field(f))
                            .is_some_and(|f| f.nullable)
                })
                .cloned()
                .unwrap_or_default();
            return Err(RowError::UnknownField(extra));
        }
        Ok(())
    }

    /// Appends a row that passed [`Self::check`] as the JSON object [`Self::validate`] would
    /// give (same bytes as `serde_json::to_vec` of it), without building that object.
    pub fn write_json(&self, row: &RowMap, out: &mut Vec<u8>) {
        // Writing a `str` or a `Value` into a `Vec` cannot fail: the results are ignored.
        fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, key: &str, value: &T) {
            out.push(b',');
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, value);
        }
        out.extend_from_slice(b"{\"row_id\":");
        let _ = serde_json::to_writer(&mut *out, row.get(ROW_ID).unwrap_or(&Value::Null));
        for field in &self.fields {
            put(
                out,
                &field.name,
                row.get(&field.name).unwrap_or(&Value::Null),
            );
        }
        for (i, field) in self.fields.iter().enumerate().filter(|(_, f)| f.nullable) {
            put(out, &self.state_name(i), field_state(row, &field.name));
        }
        out.push(b'}');
    }

    /// The `<field>_state` column name of field `i`: precomputed at load, formatted only if the
    /// schema's fields were changed after.
    fn state_name(&self, i: usize) -> Cow<'_, str> {
        match self.state_names.get(i) {
            Some(Some(name)) => Cow::Borrowed(name),
            _ => Cow::Owned(format!("{}{STATE_SUFFIX}", self.fields[i].name)),
        }
    }

    /// Parses a Kafka payload and validates it.
    pub fn validate_json(&self, payload: &[u8]) -> Result<RowMap, RowError> {
        match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(map)) => self.validate(map),
            Ok(_) => Err(RowError::NotAnObject),
            Err(e) => Err(RowError::NotJson(e.to_string())),
        }
    }

    /// The Kafka message key of a validated row (the schema's `kafka_key`, e.g. the symbol).
    pub fn key_of<'r>(&self, row: &'r RowMap) -> &'r str {
        row.get(&self.kafka_key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// How the raw payload of a quarantined record is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawEncoding {
    Utf8,
    Base64,
}

/// A record that did not qualify for its category: kept with the reason, never dropped
/// (seed, DataOps: `<category>_unqualified`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnqualifiedRecord {
    pub category: String,
    pub reason_code: String,
    pub reason: String,
    pub raw: String,
    pub raw_encoding: RawEncoding,
    pub source_system_name: String,
    pub component_instance_name: String,
    /// Nanoseconds since the epoch, UTC.
    pub ingestion_time: i64,
    /// Where the payload was read from, when it came from Kafka (the writer's quarantine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_offset: Option<i64>,
}

/// Bytes of a quarantined payload kept in the record (before JSON escaping, which at most
/// sextuples them): the record stays far below Kafka's 1 MB message limit however large the
/// input was. The original length and its SHA-256 are kept in the reason.
pub const MAX_QUARANTINE_RAW: usize = 32 * 1024;
/// Bytes of a quarantine reason kept (an error message may quote the offending value).
pub const MAX_QUARANTINE_REASON: usize = 1024;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl UnqualifiedRecord {
    /// A record for `raw` bytes, kept as text when they are UTF-8 and as base64 otherwise.
    /// Both `raw` and `reason` are bounded ([`MAX_QUARANTINE_RAW`], [`MAX_QUARANTINE_REASON`]):
    /// a longer payload keeps its first bytes, and the reason says how long it was and its
    /// SHA-256, so the record always fits the broker and the input can still be identified.
    pub fn new(
        category: &str,
        reason_code: &str,
        reason: String,
        raw: &[u8],
        source_system_name: &str,
        component_instance_name: &str,
        ingestion_time: i64,
    ) -> Self {
        use base64::Engine as _;
        let mut reason = prefix_at_char(&reason, MAX_QUARANTINE_REASON).to_string();
        let (raw_text, raw_encoding, kept) = match std::str::from_utf8(raw) {
            Ok(s) => {
                let kept = prefix_at_char(s, MAX_QUARANTINE_RAW);
                (kept.to_string(), RawEncoding::Utf8, kept.len())
            }
            Err(_) => {
                // Base64 grows by 4/3: keep as many input bytes as fit the same bound.
                let kept = &raw[..raw.len().min(MAX_QUARANTINE_RAW / 4 * 3)];
                (
                    base64::engine::general_purpose::STANDARD.encode(kept),
                    RawEncoding::Base64,
                    kept.len(),
                )
            }
        };
        if kept < raw.len() {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(raw);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            reason.push_str(&format!(
                " [raw truncated: first {kept} of {} bytes kept; sha256 {hex}]",
                raw.len()
            ));
        }
        Self {
            category: category.to_string(),
            reason_code: reason_code.to_string(),
            reason,
            raw: raw_text,
            raw_encoding,
            source_system_name: source_system_name.to_string(),
            component_instance_name: component_instance_name.to_string(),
            ingestion_time,
            source_topic: None,
            source_partition: None,
            source_offset: None,
        }
    }
}

/// Rows and schemas shared by the unit tests of this crate.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::schema::SchemaSet;
    use serde_json::json;
    use std::path::Path;

    pub fn schemas() -> SchemaSet {
        SchemaSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")).unwrap()
    }

    /// A valid tick row (AAPL, as the connector would emit it).
    pub fn tick() -> RowMap {
        let v = json!({
            "row_id": row_id("tick_market_data", &["ib", "265598", "1712596911593"]),
            "source_system_name": "ib", "component_instance_name": "marketlane-0",
            "ingestion_time": 1_712_596_911_600_000_000i64, "exchange_identifier": "SMART",
            "symbol_identifier": "AAPL", "symbol_type": "stocks", "price": 189.6,
            "price_unit": "1_USdollar", "size": 3.0, "size_unit": "100_shares",
            "tick_time": 1_712_596_911_593_000_000i64
        });
        v.as_object().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{schemas, tick};
    use super::*;
    use serde_json::json;

    #[test]
    fn row_ids_are_deterministic_and_distinct() {
        let a = row_id("tick_market_data", &["ib", "1", "2"]);
        assert_eq!(a, row_id("tick_market_data", &["ib", "1", "2"]));
        assert_ne!(a, row_id("tick_market_data", &["ib", "1", "3"]));
        assert_ne!(a, row_id("l2_market_data", &["ib", "1", "2"]));
        // Part boundaries matter: ("1","23") is not ("12","3").
        assert_ne!(row_id("x", &["1", "23"]), row_id("x", &["12", "3"]));
        assert_eq!(a.len(), 36);
    }

    /// Every id ever written stays the same: the hash is uuid's v5 for names of every length
    /// around SHA-1's 64-byte blocks (the namespace takes 16 of the first block).
    #[test]
    fn row_ids_are_uuid_v5_of_their_name() {
        for len in 0..300 {
            let name: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            assert_eq!(
                row_uuid(&name),
                uuid::Uuid::new_v5(&ROW_ID_NAMESPACE, &name),
                "name of {len} bytes"
            );
        }
        // Pinned by an independent implementation (Python's `uuid.uuid5`): a change of
        // namespace or hash shows here.
        assert_eq!(
            row_id("tick_market_data", &["ib", "265598", "1712596911593"]),
            "23f542e4-c213-5b98-96c1-c3f530c6ec6d"
        );
    }

    #[test]
    fn same_millisecond_trades_differ_and_pods_agree() {
        let t =
            |p: f64, s: f64| tick_row_id("ib", 265598, 1_712_596_911_593, Some(p), Some(s), None);
        // Two trades of one conid in one millisecond: different content, different ids.
        assert_ne!(t(189.6, 3.0), t(189.61, 3.0));
        assert_ne!(t(189.6, 3.0), t(189.6, 4.0));
        // The same trade on two pods (same _updated and merged content): one id.
        assert_eq!(t(189.6, 3.0), t(189.6, 3.0));
        // A missing size is part of the content, not a default.
        assert_ne!(
            tick_row_id("ib", 1, 2, Some(1.0), None, None),
            tick_row_id("ib", 1, 2, Some(1.0), Some(0.0), None)
        );
        // Without _updated: the conid's latest _updated plus the cumulative volume tell two
        // such trades apart, and neither collides with the trade that carried that _updated.
        let no_upd = |v: f64| tick_row_id("ib", 1, 2, Some(1.0), Some(1.0), Some(Some(v)));
        assert_ne!(no_upd(100.0), no_upd(200.0));
        assert_ne!(
            no_upd(100.0),
            tick_row_id("ib", 1, 2, Some(1.0), Some(1.0), None)
        );
        assert_eq!(no_upd(100.0), no_upd(100.0));
    }

    #[test]
    fn valid_row_keeps_schema_order() {
        let s = schemas();
        let schema = s.get("tick_market_data").unwrap();
        let mut row = tick();
        // Insert in a different order: the output must follow the schema.
        let price = row.shift_remove("price").unwrap();
        row.insert("price".into(), price);
        let out = schema.validate(row).unwrap();
        let keys: Vec<_> = out.keys().cloned().collect();
        assert_eq!(keys, schema.columns());
    }

    #[test]
    fn each_kind_of_bad_row_is_rejected_with_its_code() {
        let s = schemas();
        let schema = s.get("tick_market_data").unwrap();
        type Mutation = Box<dyn Fn(&mut RowMap)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "missing_field",
                Box::new(|r| {
                    r.remove("price");
                }),
            ),
            (
                "missing_field",
                Box::new(|r| {
                    r.insert("size".into(), Value::Null);
                }),
            ),
            (
                "wrong_type",
                Box::new(|r| {
                    r.insert("price".into(), json!("189.6"));
                }),
            ),
            (
                "wrong_type",
                Box::new(|r| {
                    r.insert("tick_time".into(), json!(1.5));
                }),
            ),
            (
                "empty_string",
                Box::new(|r| {
                    r.insert("symbol_identifier".into(), json!(""));
                }),
            ),
            (
                "unknown_field",
                Box::new(|r| {
                    r.insert("colour".into(), json!("red"));
                }),
            ),
            (
                "missing_row_id",
                Box::new(|r| {
                    r.remove("row_id");
                }),
            ),
            (
                "out_of_range",
                Box::new(|r| {
                    r.insert("tick_time".into(), json!(-1));
                }),
            ),
        ];
        for (code, mutate) in cases {
            let mut row = tick();
            mutate(&mut row);
            let err = schema.validate(row).unwrap_err();
            assert_eq!(err.code(), code, "{err}");
        }
        assert_eq!(
            schema.validate_json(b"{not json").unwrap_err().code(),
            "not_json"
        );
        assert_eq!(
            schema.validate_json(b"[1]").unwrap_err().code(),
            "not_an_object"
        );
    }

    #[test]
    fn nullable_fields_get_state_columns() {
        let s = schemas();
        let schema = s.get("l2_market_data").unwrap();
        let row = json!({
            "row_id": "x", "source_system_name": "ib", "component_instance_name": "p0",
            "ingestion_time": 1, "symbol_identifier": "CLZ6", "symbol_type": "futures",
            "price": 70.1, "price_unit": "1_USdollar", "size": 4, "size_unit": "1_contracts",
            "side": "bid", "level": 1, "max_level": 1, "l2_time": 1,
            "exchange_identifier_state": "ok"
        });
        let out = schema.validate(row.as_object().unwrap().clone()).unwrap();
        assert_eq!(out["exchange_identifier"], Value::Null);
        assert_eq!(out["exchange_identifier_state"], json!("missing"));
        assert_eq!(out["symbol_type_state"], json!("ok"));
        let mut bad = row.as_object().unwrap().clone();
        bad.insert("side".into(), json!("middle"));
        assert_eq!(schema.validate(bad).unwrap_err().code(), "not_allowed");
        let mut bad = row.as_object().unwrap().clone();
        bad.insert("level".into(), json!(5_000_000_000u64));
        assert_eq!(schema.validate(bad).unwrap_err().code(), "out_of_range");
    }

    /// The emitter writes rows with `check` + `write_json`, the writer uses `validate`, the
    /// quarantine path `validate_borrowed`: all must agree, byte for byte on the wire.
    #[test]
    fn check_write_json_and_validate_agree() {
        let s = schemas();
        let l2 = s.get("l2_market_data").unwrap();
        let mut l2_row = json!({
            "l2_time": 1, "row_id": "x", "source_system_name": "ib",
            "component_instance_name": "p0", "ingestion_time": 1, "symbol_identifier": "CLZ6",
            "symbol_type": "futures", "price": 70.1, "price_unit": "1_USdollar", "size": 4,
            "size_unit": "1_contracts", "side": "bid", "level": 1, "max_level": 1,
            "exchange_identifier_state": "ok"
        })
        .as_object()
        .unwrap()
        .clone();
        let tick_schema = s.get("tick_market_data").unwrap();
        for (schema, row) in [(l2, l2_row.clone()), (tick_schema, tick())] {
            schema.check(&row).unwrap();
            let borrowed = schema.validate_borrowed(&row).unwrap();
            let owned = schema.validate(row.clone()).unwrap();
            assert_eq!(borrowed, owned);
            assert_eq!(owned.keys().cloned().collect::<Vec<_>>(), schema.columns());
            let mut wire = b"junk".to_vec();
            schema.write_json(&row, &mut wire);
            assert_eq!(&wire[4..], serde_json::to_vec(&owned).unwrap().as_slice());
            assert_eq!(schema.validate_json(&wire[4..]).unwrap(), owned);
        }
        for (k, v) in [
            ("side", json!("middle")),
            ("colour", json!(1)),
            ("price", Value::Null),
            ("l2_time", json!(-5)),
            ("symbol_type_state", json!("ok")),
        ] {
            l2_row.insert(k.into(), v);
            let checked = l2.check(&l2_row);
            let validated = l2.validate(l2_row.clone()).map(|_| ());
            assert_eq!(checked, validated, "{k}");
        }
        assert!(l2.check(&l2_row).is_err());
    }

    #[test]
    fn quarantine_records_are_bounded_whatever_the_input() {
        use sha2::Digest as _;
        // Kafka's default message.max.bytes is 1 MB; a record must stay well below it.
        const BROKER_LIMIT: usize = 1_000_000;
        let field_2mb = "9".repeat(2 * 1024 * 1024);
        let frame = format!(r#"{{"topic":"smd+265598","conid":265598,"31":"{field_2mb}"}}"#);
        let field_64mib = vec![b'x'; 64 * 1024 * 1024];
        let escaped = vec![1u8; 4 * 1024 * 1024]; // each byte is 6 in JSON (\u0001)
        let mut binary = vec![0xffu8; 3 * 1024 * 1024];
        binary[0] = b'{';
        for (raw, encoding) in [
            (frame.as_bytes(), RawEncoding::Utf8),
            (&field_64mib[..], RawEncoding::Utf8),
            (&escaped[..], RawEncoding::Utf8),
            (&binary[..], RawEncoding::Base64),
        ] {
            // The reason of a bad value quotes the value: it is bounded too.
            let reason = format!(
                "field 31: {:?} is not a number",
                String::from_utf8_lossy(raw)
            );
            let rec = UnqualifiedRecord::new("t", "bad", reason, raw, "ib", "p0", 1);
            let json = serde_json::to_vec(&rec).unwrap();
            assert!(json.len() < BROKER_LIMIT / 4, "{} bytes", json.len());
            assert_eq!(rec.raw_encoding, encoding);
            assert!(rec.raw.len() <= MAX_QUARANTINE_RAW);
            let hex: String = sha2::Sha256::digest(raw)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert!(
                rec.reason
                    .contains(&format!("of {} bytes kept; sha256 {hex}", raw.len())),
                "{}",
                &rec.reason[rec.reason.len().saturating_sub(200)..]
            );
            assert!(rec.reason.len() < MAX_QUARANTINE_REASON + 200);
        }
        // Small inputs are kept whole, with no note.
        let rec = UnqualifiedRecord::new("t", "c", "r".into(), "é{}".as_bytes(), "ib", "p", 5);
        assert_eq!((rec.raw.as_str(), rec.reason.as_str()), ("é{}", "r"));
        // A cut never splits a character.
        let wide = "é".repeat(MAX_QUARANTINE_RAW);
        let rec = UnqualifiedRecord::new("t", "c", "r".into(), wide.as_bytes(), "ib", "p", 5);
        assert!(rec.raw.len() <= MAX_QUARANTINE_RAW && rec.raw.chars().all(|c| c == 'é'));
    }

    #[test]
    fn unqualified_keeps_non_utf8_bytes() {
        let raw = [0xff, 0xfe, b'{'];
        let rec = UnqualifiedRecord::new(
            "tick_market_data",
            "not_utf8",
            "bad".into(),
            &raw,
            "ib",
            "p0",
            5,
        );
        assert_eq!(rec.raw_encoding, RawEncoding::Base64);
        use base64::Engine as _;
        let back = base64::engine::general_purpose::STANDARD
            .decode(&rec.raw)
            .unwrap();
        assert_eq!(back, raw);
        let rec = UnqualifiedRecord::new("t", "c", "r".into(), b"{}", "ib", "p0", 5);
        assert_eq!(
            (rec.raw.as_str(), rec.raw_encoding),
            ("{}", RawEncoding::Utf8)
        );
    }
}
