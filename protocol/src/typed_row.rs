//! Rows the connector builds, as borrowed typed values instead of a `serde_json::Map`: checked
//! against the schema and written to their wire JSON in one pass, with the same result and the
//! same bytes as building the map (`row::RowMap`), then [`CategorySchema::check`] and
//! [`CategorySchema::write_json`] (a test holds the two paths equal). Row ids are computed
//! into a stack buffer ([`RowId`]): no String per row, per number or per id.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::row::{JsonScalar, RowError, STATE_MISSING, STATE_OK, check_value};
use crate::schema::{CategorySchema, ROW_ID, STATE_SUFFIX};

/// One value of a connector row: what `serde_json::json!` would make of it, without a heap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Str(&'a str),
    /// Always finite: [`Scalar::f64`] makes a non-finite number `Null`, as `json!` does.
    F64(f64),
    I64(i64),
    U64(u64),
}

impl<'a> Scalar<'a> {
    /// A float as `json!(x)` has it: `null` when not finite.
    pub fn f64(x: f64) -> Self {
        if x.is_finite() {
            Self::F64(x)
        } else {
            Self::Null
        }
    }

    pub fn opt_f64(x: Option<f64>) -> Self {
        x.map_or(Self::Null, Self::f64)
    }

    pub fn opt_str(s: Option<&'a str>) -> Self {
        s.map_or(Self::Null, Self::Str)
    }

    fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// The `serde_json::Value` it stands for (error messages, tests).
    pub fn to_value(&self) -> Value {
        match *self {
            Self::Null => Value::Null,
            Self::Str(s) => Value::String(s.to_string()),
            Self::F64(x) => serde_json::json!(x),
            Self::I64(i) => Value::from(i),
            Self::U64(u) => Value::from(u),
        }
    }
}

impl Serialize for Scalar<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Self::Null => s.serialize_unit(),
            Self::Str(v) => s.serialize_str(v),
            Self::F64(x) => s.serialize_f64(x),
            Self::I64(i) => s.serialize_i64(i),
            Self::U64(u) => s.serialize_u64(u),
        }
    }
}

impl JsonScalar for Scalar<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F64(x) => Some(x),
            Self::I64(i) => Some(i as f64),
            Self::U64(u) => Some(u as f64),
            _ => None,
        }
    }
    fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I64(i) => Some(i),
            Self::U64(u) => i64::try_from(u).ok(),
            _ => None,
        }
    }
    fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U64(u) => Some(u),
            Self::I64(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }
    fn type_name(&self) -> String {
        JsonScalar::type_name(&self.to_value())
    }
}

/// A connector row: `(column, value)` in the order the normalizer sets them.
pub type TypedRow<'a> = [(&'a str, Scalar<'a>)];

/// The position of `name` in `row`, trying `hint` first (rows are built in schema order).
fn position(row: &TypedRow<'_>, name: &str, hint: usize) -> Option<usize> {
    if row.get(hint).is_some_and(|(k, _)| *k == name) {
        return Some(hint);
    }
    row.iter().position(|(k, _)| *k == name)
}

/// Writing into a `Vec` cannot fail: the results are ignored.
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(&mut *out, value);
}

/// A string as JSON, the bytes `serde_json` writes: most values (symbols, units, ids) need no
/// escaping, and checking that first costs less than serde_json's escaping loop.
fn put_str(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly these bytes: controls, '"' and '\\'.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        put(out, s);
    }
}

/// A value as JSON, the bytes `serde_json` writes.
fn put_scalar(out: &mut Vec<u8>, v: &Scalar<'_>) {
    match *v {
        Scalar::Null => out.extend_from_slice(b"null"),
        Scalar::Str(s) => put_str(out, s),
        Scalar::I64(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Scalar::U64(u) => out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes()),
        Scalar::F64(_) => put(out, v),
    }
}

impl CategorySchema {
    /// [`Self::check`] of the map the row stands for (same result, same error), followed by
    /// [`Self::write_json`] of it into `out` when it passes. `missing` gets the index of every
    /// nullable field that is null (for the missing-fields metric).
    pub fn write_typed(
        &self,
        row: &TypedRow<'_>,
        out: &mut Vec<u8>,
        missing: &mut Vec<usize>,
    ) -> Result<(), RowError> {
        let id = match row.iter().find(|(k, _)| *k == ROW_ID) {
            Some((_, Scalar::Str(id))) if !id.is_empty() => *id,
            _ => return Err(RowError::MissingRowId),
        };
        let mut known = 1;
        // A state column the caller set is rare: one pass tells whether to look for them.
        let has_states = row.iter().any(|(k, _)| k.ends_with(STATE_SUFFIX));
        // Where each field's value is (row_id comes first: field i is at i + 1).
        let mut at: [Option<usize>; 48] = [None; 48];
        for (i, field) in self.fields.iter().enumerate() {
            let p = position(row, &field.name, i + 1);
            let value = match p {
                Some(p) => {
                    known += 1;
                    &row[p].1
                }
                None => &Scalar::Null,
            };
            if let Some(slot) = at.get_mut(i) {
                *slot = p;
            }
            if field.nullable
                && has_states
                && row
                    .iter()
                    .any(|(k, _)| k.strip_suffix(STATE_SUFFIX) == Some(field.name.as_str()))
            {
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
                .iter()
                .map(|(k, _)| *k)
                .find(|k| {
                    *k != ROW_ID
                        && self.field(k).is_none()
                        && !k
                            .strip_suffix(STATE_SUFFIX)
                            .and_then(|f| self.field(f))
                            .is_some_and(|f| f.nullable)
                })
                .unwrap_or_default();
            return Err(RowError::UnknownField(extra.to_string()));
        }
        out.extend_from_slice(b"{\"row_id\":");
        put_str(out, id);
        let value_of = |i: usize, name: &str| {
            let p = match at.get(i) {
                Some(p) => *p,
                None => position(row, name, i + 1),
            };
            p.map_or(Scalar::Null, |p| row[p].1)
        };
        for (i, field) in self.fields.iter().enumerate() {
            match self.json_keys.get(i) {
                Some((key, _)) => out.extend_from_slice(key.as_bytes()),
                None => {
                    out.push(b',');
                    put(out, field.name.as_str());
                    out.push(b':');
                }
            }
            put_scalar(out, &value_of(i, &field.name));
        }
        for (i, field) in self.fields.iter().enumerate().filter(|(_, f)| f.nullable) {
            let state = if value_of(i, &field.name).is_null() {
                missing.push(i);
                STATE_MISSING
            } else {
                STATE_OK
            };
            match self.json_keys.get(i) {
                Some((_, Some(key))) => out.extend_from_slice(key.as_bytes()),
                _ => {
                    out.push(b',');
                    put(out, &format!("{}{STATE_SUFFIX}", field.name));
                    out.push(b':');
                }
            }
            // "ok" and "missing" need no escaping.
            out.push(b'"');
            out.extend_from_slice(state.as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
        Ok(())
    }

    /// The Kafka key of a row that passed [`Self::write_typed`] (the schema's `kafka_key`).
    pub fn typed_key<'r>(&self, row: &'r TypedRow<'r>) -> &'r str {
        match row.iter().find(|(k, _)| *k == self.kafka_key) {
            Some((_, Scalar::Str(s))) => s,
            _ => "",
        }
    }
}

/// The row as `serde_json::to_vec` of its map (columns in the order set): the quarantine copy.
pub fn typed_row_json(row: &TypedRow<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.push(b'{');
    for (i, (k, v)) in row.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        put(&mut out, *k);
        out.push(b':');
        put(&mut out, v);
    }
    out.push(b'}');
    out
}

/// A row id (v5 UUID, hyphenated) in place: what [`crate::row_id`] returns, without a heap.
#[derive(Clone, Copy)]
pub struct RowId([u8; 36]);

impl RowId {
    pub fn as_str(&self) -> &str {
        // Hyphenated lowercase hex is ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for RowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name a row id hashes, built on the stack (spills to the heap only past 256 bytes).
pub struct IdName {
    stack: [u8; 256],
    len: usize,
    heap: Vec<u8>,
}

impl IdName {
    /// Starts the name of a row id of `category`; add each part with [`Self::part`].
    pub fn new(category: &str) -> Self {
        let mut n = Self {
            stack: [0; 256],
            len: 0,
            heap: Vec::new(),
        };
        n.push(category.as_bytes());
        n
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.heap.is_empty() && self.len + bytes.len() <= self.stack.len() {
            self.stack[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.stack[..self.len]);
            }
            self.heap.extend_from_slice(bytes);
        }
    }

    /// One part, as its `Display` text (`to_string()`), after a `|`.
    pub fn part(mut self, p: impl std::fmt::Display) -> Self {
        self.push(b"|");
        let _ = write!(self, "{p}");
        self
    }

    fn bytes(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.stack[..self.len]
        } else {
            &self.heap
        }
    }

    pub fn id(&self) -> RowId {
        let mut buf = [0u8; 36];
        crate::row::row_uuid(self.bytes())
            .hyphenated()
            .encode_lower(&mut buf);
        RowId(buf)
    }
}

impl std::fmt::Write for IdName {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// [`crate::tick_row_id`] without a heap (same id).
pub fn tick_row_id_buf(
    source: &str,
    conid: i64,
    updated_ms: i64,
    price: Option<f64>,
    size: Option<f64>,
    volume_without_updated: Option<Option<f64>>,
) -> RowId {
    struct Num(Option<f64>);
    impl std::fmt::Display for Num {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0 {
                Some(x) => std::fmt::Display::fmt(&x, f),
                None => Ok(()),
            }
        }
    }
    let name = IdName::new(crate::category::TICK)
        .part(source)
        .part(conid)
        .part(updated_ms)
        .part(Num(price))
        .part(Num(size));
    match volume_without_updated {
        None => name.id(),
        Some(volume) => name.part("no_updated").part(Num(volume)).id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::fixtures::schemas;
    use crate::{RowMap, row_id, tick_row_id};

    fn map(row: &TypedRow<'_>) -> RowMap {
        row.iter()
            .map(|(k, v)| (k.to_string(), v.to_value()))
            .collect()
    }

    /// The typed path and the map path agree: same result, same error, same bytes.
    #[test]
    fn typed_rows_write_what_the_map_path_writes() {
        let s = schemas();
        let l2 = s.get("l2_market_data").unwrap();
        let base: Vec<(&str, Scalar)> = vec![
            ("row_id", Scalar::Str("x")),
            ("source_system_name", Scalar::Str("ib")),
            ("component_instance_name", Scalar::Str("p\"0")),
            ("ingestion_time", Scalar::I64(1)),
            ("exchange_identifier", Scalar::Null),
            ("symbol_identifier", Scalar::Str("CLZ6")),
            ("symbol_type", Scalar::Str("futures")),
            ("price", Scalar::f64(70.1)),
            ("price_unit", Scalar::Str("1_USdollar")),
            ("size", Scalar::f64(4.0)),
            ("size_unit", Scalar::Str("1_contracts")),
            ("side", Scalar::Str("bid")),
            ("level", Scalar::U64(1)),
            ("max_level", Scalar::U64(1)),
            ("l2_time", Scalar::I64(1)),
        ];
        let variants: Vec<(usize, Scalar)> = vec![
            (usize::MAX, Scalar::Null),
            (11, Scalar::Str("middle")),
            (7, Scalar::f64(f64::NAN)),
            (7, Scalar::Str("1")),
            (9, Scalar::I64(3)),
            (14, Scalar::I64(-5)),
            (12, Scalar::U64(5_000_000_000)),
            (0, Scalar::Str("")),
            (0, Scalar::Null),
            (4, Scalar::Str("NYMEX")),
            (5, Scalar::Str("")),
            (6, Scalar::Null),
            (3, Scalar::f64(1.5)),
        ];
        for (i, v) in variants {
            let mut row = base.clone();
            if let Some(slot) = row.get_mut(i) {
                slot.1 = v;
            }
            let m = map(&row);
            let mut typed = b"junk".to_vec();
            let mut missing = Vec::new();
            let got = l2.write_typed(&row, &mut typed, &mut missing);
            assert_eq!(got, l2.check(&m), "{i} {v:?}");
            if got.is_ok() {
                let mut wire = b"junk".to_vec();
                l2.write_json(&m, &mut wire);
                assert_eq!(typed, wire, "{i} {v:?}");
                assert_eq!(l2.typed_key(&row), l2.key_of(&m));
            }
            assert_eq!(typed_row_json(&row), serde_json::to_vec(&m).unwrap());
        }
        // Extra and reordered columns.
        let mut row = base.clone();
        row.swap(2, 9);
        row.push(("colour", Scalar::Str("red")));
        assert_eq!(
            l2.write_typed(&row, &mut Vec::new(), &mut Vec::new()),
            l2.check(&map(&row))
        );
        row.pop();
        row.push(("symbol_type_state", Scalar::Str("ok")));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        l2.write_typed(&row, &mut a, &mut Vec::new()).unwrap();
        l2.write_json(&map(&row), &mut b);
        assert_eq!(a, b);
        // The state column of a nullable field, set by the caller.
        row.pop();
        row.push(("exchange_identifier_state", Scalar::Str("missing")));
        assert_eq!(
            l2.write_typed(&row, &mut Vec::new(), &mut Vec::new()),
            l2.check(&map(&row))
        );
    }

    #[test]
    fn row_ids_in_place_are_the_row_ids() {
        assert_eq!(
            IdName::new("l2_market_data")
                .part("ib")
                .part(265_598i64)
                .part("sbd-p0-17")
                .part("bid")
                .part(3u32)
                .id()
                .as_str(),
            row_id("l2_market_data", &["ib", "265598", "sbd-p0-17", "bid", "3"])
        );
        let long = "x".repeat(300);
        assert_eq!(
            IdName::new("c").part(&long).part(1).id().as_str(),
            row_id("c", &[&long, "1"])
        );
        for (p, s, v) in [
            (Some(189.6), Some(3.0), None),
            (Some(0.1 + 0.2), None, Some(Some(1e21))),
            (None, Some(1200.0), Some(None)),
        ] {
            assert_eq!(
                tick_row_id_buf("ib", 1, 2, p, s, v).as_str(),
                tick_row_id("ib", 1, 2, p, s, v)
            );
        }
    }
}
