//! The indicators_market_data normalizer: IB's session statistics from `smd` frames (volume,
//! open/high/low/close, prior close, change, mark, open interest), one row per field present,
//! at IB's `_updated` time. Unlike trades, a snapshot frame's statistics are values as of that
//! time, so they are emitted too. A field whose value cannot be read is quarantined alone; the
//! frame's other fields still give rows.

use marketlane_protocol::Scalar;
use marketlane_protocol::category::INDICATORS;
use marketlane_protocol::ib::{
    FieldValue, MarketDataFrame, field, parse_abbreviated, parse_last_price, parse_number,
};
use marketlane_protocol::typed_row::IdName;
use tracing::instrument;

use super::{Core, Normalize, frame_json, instrument_of};
use crate::backpressure::Inflight;
use crate::config::SecType;
use crate::contracts::Instrument;

/// How a field's value is read and which unit it has.
#[derive(Clone, Copy)]
enum Unit {
    /// The instrument's price unit.
    Price,
    Percent,
    /// Shares for stocks (field 7762 is the exact volume), contracts for futures.
    Volume,
    Contracts,
}

/// IB field → (indicator_identifier, indicator_type, unit). 87 (abbreviated volume) is used
/// only when the exact 7762 is absent.
const FIELDS: &[(&str, &str, &str, Unit)] = &[
    (field::VOLUME, "volume", "session_statistic", Unit::Volume),
    (
        field::VOLUME_ABBREV,
        "volume",
        "session_statistic",
        Unit::Volume,
    ),
    (field::OPEN, "open", "session_statistic", Unit::Price),
    (field::HIGH, "high", "session_statistic", Unit::Price),
    (field::LOW, "low", "session_statistic", Unit::Price),
    (field::CLOSE, "close", "session_statistic", Unit::Price),
    (
        field::PRIOR_CLOSE,
        "prior_close",
        "session_statistic",
        Unit::Price,
    ),
    (field::CHANGE, "change", "session_statistic", Unit::Price),
    (
        field::CHANGE_PCT,
        "change_percent",
        "session_statistic",
        Unit::Percent,
    ),
    (
        field::CHANGE_SINCE_OPEN,
        "change_since_open",
        "session_statistic",
        Unit::Price,
    ),
    (field::MARK, "mark", "valuation", Unit::Price),
    (
        field::OPEN_INTEREST,
        "open_interest",
        "positioning",
        Unit::Contracts,
    ),
];

fn unit_name(unit: Unit, instrument: &Instrument) -> &str {
    match unit {
        Unit::Price => &instrument.price_unit,
        Unit::Percent => "1_percent",
        Unit::Volume => match instrument.sec_type {
            SecType::Stock => "1_shares",
            SecType::Future => "1_contracts",
        },
        Unit::Contracts => "1_contracts",
    }
}

/// Reads an indicator value: numbers with commas, K/M suffixes for 87, and the `C`/`H`
/// prefixes IB may put on prices.
fn read(field_id: &str, v: &FieldValue) -> Result<f64, String> {
    if field_id == field::VOLUME_ABBREV {
        return parse_abbreviated(field_id, v).map_err(|e| e.to_string());
    }
    parse_number(field_id, v).or_else(|e| match parse_last_price(v) {
        Ok(marketlane_protocol::ib::LastPrice::Trade(x))
        | Ok(marketlane_protocol::ib::LastPrice::Halted(x))
        | Ok(marketlane_protocol::ib::LastPrice::PriorClose(x)) => Ok(x),
        Err(_) => Err(e.to_string()),
    })
}

/// The indicators normalizer keeps no per-conid values (every statistic is a value as of its
/// frame), only IB's last `_updated` per conid: IB sends the first frame twice with the same
/// `_updated`, and the repeat says nothing new.
#[derive(Default)]
pub struct Statistics {
    updated: std::collections::HashMap<i64, i64>,
}

impl Normalize for Statistics {
    const CATEGORY: &'static str = INDICATORS;

    async fn market_data(
        &mut self,
        core: &mut Core,
        frame: &MarketDataFrame,
        received_ns: i64,
        permit: &Inflight,
    ) {
        if let (Some(conid), Some(u)) = (frame.conid, frame.updated_ms) {
            let last = self.updated.entry(conid).or_insert(i64::MIN);
            if u <= *last {
                return;
            }
            *last = u;
        }
        on_frame(core, frame, received_ns, permit).await;
    }

    fn retain(&mut self, instruments: &super::InstrumentMap) {
        self.updated.retain(|c, _| instruments.contains_key(c));
    }
}

#[instrument(level = "trace", skip_all, fields(category = INDICATORS, conid = frame.conid))]
async fn on_frame(core: &mut Core, frame: &MarketDataFrame, received_ns: i64, permit: &Inflight) {
    let present: Vec<_> = FIELDS
        .iter()
        .filter(|(f, ..)| frame.fields.contains_key(f))
        .filter(|(f, ..)| !(*f == field::VOLUME_ABBREV && frame.fields.contains_key(field::VOLUME)))
        .collect();
    if present.is_empty() {
        return;
    }
    let instruments = core.instruments.clone();
    let (conid, instrument) = match instrument_of(&instruments, frame.conid) {
        Ok(found) => found,
        Err((code, reason)) => {
            core.snapshot.quarantined += 1;
            core.quarantine(INDICATORS, code, reason, &frame_json(frame), permit);
            return;
        }
    };
    let updated_ms = frame.updated_ms.unwrap_or(received_ns / 1_000_000);
    let event_time = updated_ms.saturating_mul(1_000_000);
    let (source, instance) = (core.source.clone(), core.instance.clone());
    for (field_id, identifier, kind, unit) in present {
        let raw = &frame.fields[*field_id];
        // An empty value means IB has none: nothing to report for that field.
        if raw.as_str().is_some_and(|s| s.trim().is_empty()) {
            continue;
        }
        let value = match read(field_id, raw) {
            Ok(v) => v,
            Err(reason) => {
                core.snapshot.quarantined += 1;
                core.quarantine(INDICATORS, "bad_value", reason, &frame_json(frame), permit);
                continue;
            }
        };
        let id = IdName::new(INDICATORS)
            .part(&*source)
            .part(conid)
            .part(updated_ms)
            .part(identifier)
            .id();
        let row = [
            ("row_id", Scalar::Str(id.as_str())),
            ("source_system_name", Scalar::Str(&source)),
            ("component_instance_name", Scalar::Str(&instance)),
            ("ingestion_time", Scalar::I64(received_ns)),
            ("market_event_time", Scalar::I64(event_time)),
            ("symbol_identifier", Scalar::Str(&instrument.symbol)),
            ("indicator_identifier", Scalar::Str(identifier)),
            ("indicator_value", Scalar::f64(value)),
            (
                "indicator_value_unit",
                Scalar::Str(unit_name(*unit, instrument)),
            ),
            ("indicator_type", Scalar::Str(kind)),
        ];
        let emitted = core.emit_row(
            INDICATORS,
            conid,
            &instrument.symbol,
            &row,
            event_time,
            permit,
        );
        core.count(emitted);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::names::INDICATORS_NORMALIZER;
    use crate::normalizer::testkit::{Harness, json};

    #[tokio::test]
    async fn session_statistics_table() {
        let h = Harness::start(
            crate::normalizer::IndicatorsNormalizer::new(),
            INDICATORS_NORMALIZER,
        )
        .await;
        let frame = r#"{"topic":"smd+265598","conid":265598,"_updated":5,"7762":"1234567","87":"1.23M","7295":"188.10","70":"190.00","71":"187.90","7741":"C187.50","82":"+1.10","83":0.59,"7635":"189.62","31":"189.6"}"#;
        let got = h.feed(frame, 9).await;
        let by_id: BTreeMap<String, serde_json::Value> = got
            .iter()
            .map(json)
            .map(|r| (r["indicator_identifier"].as_str().unwrap().to_string(), r))
            .collect();
        let want: &[(&str, f64, &str, &str)] = &[
            ("volume", 1_234_567.0, "1_shares", "session_statistic"),
            ("open", 188.10, "1_USdollar", "session_statistic"),
            ("high", 190.0, "1_USdollar", "session_statistic"),
            ("low", 187.90, "1_USdollar", "session_statistic"),
            ("prior_close", 187.50, "1_USdollar", "session_statistic"),
            ("change", 1.10, "1_USdollar", "session_statistic"),
            ("change_percent", 0.59, "1_percent", "session_statistic"),
            ("mark", 189.62, "1_USdollar", "valuation"),
        ];
        assert_eq!(by_id.len(), want.len(), "{by_id:?}");
        for (id, value, unit, kind) in want {
            let r = &by_id[*id];
            assert_eq!(r["indicator_value"].as_f64().unwrap(), *value, "{id}");
            assert_eq!(r["indicator_value_unit"], *unit, "{id}");
            assert_eq!(r["indicator_type"], *kind, "{id}");
            assert_eq!(r["market_event_time"], 5_000_000);
            assert_eq!(r["indicator_identifier_state"], "ok");
        }
        // 87 stands in for volume only without 7762; a bad value is quarantined alone.
        let got = h
            .feed(
                r#"{"topic":"smd+265598","conid":265598,"_updated":6,"87":"350K","70":"n/a"}"#,
                9,
            )
            .await;
        assert_eq!(got.len(), 2);
        let rows: Vec<_> = got.iter().map(json).collect();
        assert!(rows.iter().any(|r| r["indicator_identifier"] == "volume" && r["indicator_value"] == 350_000.0));
        assert!(rows.iter().any(|r| r["reason_code"] == "bad_value"));
        h.stop();
    }
}
