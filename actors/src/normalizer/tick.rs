//! The tick_market_data normalizer: trades from `smd` deltas.
//!
//! IB sends a full first frame per subscription and then only changed fields. A trade shows as
//! a later frame carrying field 31 (last price, without the `C` prior-close or `H` halted
//! prefix) and/or 7059 (last size); the row takes the merged last price and size. The first
//! frame after a (re)subscription only seeds the state: it repeats the last trade, which may
//! already have been emitted, so emitting it would invent a trade. Later full frames repeat it
//! too: IB sends the first frame twice (same `_updated`; machdat/broker-gateway
//! `tests/fixtures/recorded/ws/topic-explorer-2026-04-30/smd-single.jsonl`), and a re-sent
//! `smd` may bring a full frame again. A frame that carries 6509 (sent in full frames and on
//! changes only) or an `_updated` not after the last one is therefore a trade only if the last
//! price or size differ from the state. The row id is derived from the source, the conid, IB's
//! `_updated` time and the trade's merged price and size (`marketlane_protocol::tick_row_id`
//! states the rule), so every pod and every replay produces the same id for the same trade,
//! and two trades of one millisecond stay apart.
//!
//! Units: 7059 is "the number of units traded at the last price" (IB's field list, as copied
//! in Voyz/ibind `ibind/client/ibkr_definitions.py`); IB documents the division by 100 for US
//! stocks only for the bid and ask sizes 88/85. Trade sizes are therefore shares (contracts
//! for futures): [`Instrument::trade_size_unit`].

use std::collections::HashMap;

use marketlane_protocol::Scalar;
use marketlane_protocol::category::TICK;
use marketlane_protocol::ib::{
    FieldValue, LastPrice, MarketDataFrame, field, parse_last_price, parse_number,
};
use marketlane_protocol::typed_row::tick_row_id_buf;
use tracing::{debug, instrument, warn};

use super::{Core, Emitted, InstrumentMap, Normalize, frame_json, instrument_of};
use crate::backpressure::Inflight;

#[derive(Debug, Default, Clone, Copy)]
struct TradeState {
    last: Option<f64>,
    last_size: Option<f64>,
    /// IB's `_updated` of the last frame that changed the state.
    updated_ms: Option<i64>,
    /// The latest `_updated` of the conid: the event time of a frame that lacks its own.
    last_updated: Option<i64>,
    /// The exact cumulative volume (7762) as merged: tells apart trades without `_updated`.
    volume: Option<f64>,
    /// False until the first (snapshot) frame after a subscription has been seen.
    seeded: bool,
}

/// Per-conid trade state of the tick normalizer.
#[derive(Default)]
pub struct Trades {
    trades: HashMap<i64, TradeState>,
}

impl Normalize for Trades {
    const CATEGORY: &'static str = TICK;

    async fn market_data(
        &mut self,
        core: &mut Core,
        frame: &MarketDataFrame,
        received_ns: i64,
        permit: &Inflight,
    ) {
        if let Some(e) = self.on_frame(core, frame, received_ns, permit).await {
            core.count(e);
        }
    }

    fn retain(&mut self, instruments: &InstrumentMap) {
        self.trades
            .retain(|conid, _| instruments.contains_key(conid));
    }

    fn resubscribed(&mut self, conids: &[i64]) {
        for c in conids {
            self.trades.entry(*c).or_default().seeded = false;
        }
    }
}

impl Trades {
    #[instrument(level = "trace", skip_all, fields(category = TICK, conid = frame.conid))]
    async fn on_frame(
        &mut self,
        core: &mut Core,
        frame: &MarketDataFrame,
        received_ns: i64,
        permit: &Inflight,
    ) -> Option<Emitted> {
        let has_last = frame.fields.get(field::LAST);
        let has_size = frame.fields.get(field::LAST_SIZE);
        // Every frame of a known conid (trade or not) advances the merged time and volume,
        // which identify a later frame without `_updated`.
        if let Some(conid) = frame.conid
            && core.instruments.contains_key(&conid)
        {
            let st = self.trades.entry(conid).or_default();
            if let Some(u) = frame.updated_ms {
                st.last_updated = Some(st.last_updated.map_or(u, |l| l.max(u)));
            }
            if let Some(v) = frame.fields.get(field::VOLUME)
                && let Ok(x) = parse_number(field::VOLUME, v)
            {
                st.volume = Some(x);
            }
        }
        if has_last.is_none() && has_size.is_none() {
            return None;
        }
        let quarantine = |code: &'static str, reason: String| (code, reason);
        // The map is shared: rows borrow the instrument from it, no copy per frame.
        let instruments = core.instruments.clone();
        let outcome = (|| {
            let (conid, instrument) = instrument_of(&instruments, frame.conid)?;
            let last = match has_last.map(parse_last_price).transpose() {
                Ok(v) => v,
                Err(e) => return Err(quarantine("bad_value", e.to_string())),
            };
            // IB sends "" for a value it does not have: that clears the size.
            let size = match has_size {
                None => None,
                Some(FieldValue::Str(t)) if t.trim().is_empty() => Some(None),
                Some(v) => match parse_number(field::LAST_SIZE, v) {
                    Ok(x) => Some(Some(x)),
                    Err(e) => return Err(quarantine("bad_value", e.to_string())),
                },
            };
            Ok((conid, instrument, last, size))
        })();
        let (conid, instrument, last, size) = match outcome {
            Ok(v) => v,
            Err((code, reason)) => {
                core.quarantine(TICK, code, reason, &frame_json(frame), permit);
                return Some(Emitted::Quarantined);
            }
        };
        let st = self.trades.entry(conid).or_default();
        if st.seeded
            && let (Some(f), Some(u)) = (frame.updated_ms, st.updated_ms)
            && f < u
        {
            // An older update arriving late: no new trade, and no reason to move the state
            // back. The same `_updated` again is not dropped here: it is a repeat (IB sends
            // the first frame twice; the full-frame rule below catches it) or a second trade
            // of the same millisecond, which differs in price or size. A frame without
            // `_updated` has no IB time to compare (the receive time is this pod's own).
            debug!(conid, updated_ms = f, "older frame");
            return None;
        }
        let full = frame.fields.contains_key(field::AVAILABILITY);
        let (prev_last, prev_size) = (st.last, st.last_size);
        let mut trade = matches!(size, Some(Some(_)));
        match last {
            Some(LastPrice::Trade(p)) => {
                st.last = Some(p);
                trade = true;
            }
            // A halted or prior-close value is not a trade and not the last trade price.
            Some(LastPrice::Halted(_) | LastPrice::PriorClose(_)) => {}
            None => {}
        }
        if let Some(s) = size {
            st.last_size = s;
        }
        if let Some(u) = frame.updated_ms {
            st.updated_ms = Some(u);
        }
        if !st.seeded {
            st.seeded = true;
            debug!(conid, "snapshot frame seeds the trade state");
            return None;
        }
        if full {
            // A full frame repeats the last trade: it is a new one only if it differs.
            trade = trade && (st.last != prev_last || st.last_size != prev_size);
        }
        if !trade {
            return None;
        }
        let (id_ms, volume) = match (frame.updated_ms, st.last_updated) {
            (Some(u), _) => (u, None),
            (None, Some(u)) => (u, Some(st.volume)),
            (None, None) => {
                // No IB time seen for this conid yet: the receive time is the only one there
                // is, and this id alone is pod-local (see `tick_row_id`).
                warn!(
                    conid,
                    "trade frame without _updated before any _updated: receive time used"
                );
                (received_ns / 1_000_000, Some(st.volume))
            }
        };
        let tick_time = id_ms.saturating_mul(1_000_000);
        let st = *st;
        let (source, instance) = (core.source.clone(), core.instance.clone());
        let id = tick_row_id_buf(&source, conid, id_ms, st.last, st.last_size, volume);
        let row = [
            ("row_id", Scalar::Str(id.as_str())),
            ("source_system_name", Scalar::Str(&source)),
            ("component_instance_name", Scalar::Str(&instance)),
            ("ingestion_time", Scalar::I64(received_ns)),
            ("exchange_identifier", Scalar::Str(&instrument.exchange)),
            ("symbol_identifier", Scalar::Str(&instrument.symbol)),
            ("symbol_type", Scalar::Str(instrument.symbol_type())),
            ("price", Scalar::opt_f64(st.last)),
            ("price_unit", Scalar::Str(&instrument.price_unit)),
            ("size", Scalar::opt_f64(st.last_size)),
            ("size_unit", Scalar::Str(instrument.trade_size_unit())),
            ("tick_time", Scalar::I64(tick_time)),
        ];
        Some(core.emit_row(TICK, conid, &instrument.symbol, &row, tick_time, permit))
    }
}

#[cfg(test)]
mod tests {
    use crate::names::TICK_NORMALIZER;
    use crate::normalizer::NormalizerMsg;
    use crate::normalizer::testkit::Harness;
    use marketlane_protocol::tick_row_id;

    #[tokio::test]
    async fn trades_from_deltas_table() {
        let h = Harness::start(crate::normalizer::TickNormalizer::new(), TICK_NORMALIZER).await;
        // (frame, what it must produce: Some(Ok((price, size))) a row, Some(Err(code)) a
        // quarantine record, None nothing)
        type Expected = Option<Result<(f64, f64), &'static str>>;
        let table: Vec<(&str, Expected)> = vec![
            // The snapshot repeats the last trade: it seeds, it is not a trade.
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":1,"31":"189.60","7059":"3","84":"189.5","86":"189.7"}"#,
                None,
            ),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":2,"31":"189.65"}"#,
                Some(Ok((189.65, 3.0))),
            ),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":3,"7059":"1,200"}"#,
                Some(Ok((189.65, 1200.0))),
            ),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":4,"84":"189.61"}"#,
                None,
            ),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":5,"31":"H189.70"}"#,
                None,
            ),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":6,"31":"C189.00"}"#,
                None,
            ),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":7,"31":"1x9"}"#,
                Some(Err("bad_value")),
            ),
            (
                r#"{"topic":"smd+1","conid":1,"_updated":8,"31":"5.0","7059":"1"}"#,
                Some(Err("unknown_conid")),
            ),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":9,"31":"190.00","7059":""}"#,
                Some(Err("missing_field")),
            ),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":10,"31":"190.05","7059":"2"}"#,
                Some(Ok((190.05, 2.0))),
            ),
        ];
        let mut want_rows = 0;
        for (i, (text, want)) in table.iter().enumerate() {
            let got = h.feed(text, 99).await;
            match want {
                None => assert!(got.is_empty(), "frame {i} produced {got:?}"),
                Some(Ok((price, size))) => {
                    assert_eq!(got.len(), 1, "frame {i}: {got:?}");
                    assert_eq!(&*got[0].topic, "tick_market_data");
                    assert_eq!(got[0].key, "AAPL");
                    let row: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
                    assert_eq!(row["price"], serde_json::json!(price), "frame {i}");
                    assert_eq!(row["size"], serde_json::json!(size), "frame {i}");
                    let updated =
                        serde_json::from_str::<serde_json::Value>(text).unwrap()["_updated"]
                            .as_i64()
                            .unwrap();
                    assert_eq!(row["tick_time"], serde_json::json!(updated * 1_000_000));
                    assert_eq!(
                        row["row_id"],
                        serde_json::json!(tick_row_id(
                            "ib",
                            265598,
                            updated,
                            Some(*price),
                            Some(*size),
                            None
                        ))
                    );
                    assert_eq!(row["size_unit"], "1_shares");
                    assert_eq!(row["ingestion_time"], 99);
                    want_rows += 1;
                }
                Some(Err(code)) => {
                    assert_eq!(got.len(), 1, "frame {i}: {got:?}");
                    assert_eq!(&*got[0].topic, "tick_market_data_unqualified");
                    let rec: marketlane_protocol::UnqualifiedRecord =
                        serde_json::from_slice(&got[0].payload).unwrap();
                    assert_eq!(rec.reason_code, *code, "frame {i}: {}", rec.reason);
                }
            }
        }
        let st = ractor::call_t!(h.normalizer, NormalizerMsg::GetState, 1000).unwrap();
        assert_eq!(st.rows, want_rows);
        assert_eq!(st.quarantined, 3);
        h.stop();
    }

    /// IB repeats the last trade in every full frame: the first frame comes twice with the
    /// same `_updated` (a live recording), and a re-sent `smd` may bring another full frame.
    /// None of them is a trade unless its last price or size changed.
    #[tokio::test]
    async fn full_frames_never_double_a_trade() {
        let h = Harness::start(crate::normalizer::TickNormalizer::new(), TICK_NORMALIZER).await;
        let full = |u: u64, px: &str, size: &str| {
            format!(
                r#"{{"topic":"smd+265598","conid":265598,"_updated":{u},"6509":"RpB","31":"{px}","7059":"{size}","84":"189.5"}}"#
            )
        };
        let table: Vec<(String, Option<f64>)> = vec![
            (full(100, "189.60", "3"), None),
            (full(100, "189.60", "3"), None),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":101,"31":"189.65"}"#.into(),
                Some(189.65),
            ),
            // A delayed repeat of an older update moves nothing back.
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":99,"31":"189.10"}"#.into(),
                None,
            ),
            // The full frame after a re-sent smd repeats the last trade: no row.
            (full(160, "189.65", "3"), None),
            // A full frame whose trade differs from the last one is a trade missed meanwhile.
            (full(170, "189.70", "3"), Some(189.70)),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":171,"7059":"5"}"#.into(),
                Some(189.70),
            ),
        ];
        for (i, (frame, want)) in table.iter().enumerate() {
            let got = h.feed(frame, 7).await;
            match want {
                None => assert!(got.is_empty(), "frame {i}: {got:?}"),
                Some(px) => {
                    assert_eq!(got.len(), 1, "frame {i}");
                    let row: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
                    assert_eq!(row["price"], serde_json::json!(px), "frame {i}");
                }
            }
        }
        h.stop();
    }

    /// Two pods see the same frames at different receive times: every row id agrees, and two
    /// trades of one millisecond (or without `_updated`) stay two rows.
    #[tokio::test]
    async fn ids_agree_across_pods_and_keep_same_millisecond_trades_apart() {
        let frames = [
            r#"{"topic":"smd+265598","conid":265598,"_updated":1,"31":"189.60","7059":"3","7762":"1000"}"#,
            r#"{"topic":"smd+265598","conid":265598,"_updated":5,"31":"189.65","7762":"1300"}"#,
            r#"{"topic":"smd+265598","conid":265598,"_updated":5,"31":"189.70","7762":"1600"}"#,
            r#"{"topic":"smd+265598","conid":265598,"7059":"2","7762":"1800"}"#,
            r#"{"topic":"smd+265598","conid":265598,"7059":"4","7762":"2200"}"#,
        ];
        let mut ids = Vec::new();
        for (pod, received) in [("a", 1_000), ("b", 7_000_000)] {
            let h = Harness::start(crate::normalizer::TickNormalizer::new(), pod).await;
            let mut pod_ids = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                for p in h.feed(f, received + i as i64).await {
                    let row: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    assert_eq!(&*p.topic, "tick_market_data", "{row}");
                    // A frame without _updated takes the conid's latest one, never the clock.
                    assert_eq!(row["tick_time"], 5_000_000, "{row}");
                    pod_ids.push(row["row_id"].as_str().unwrap().to_string());
                }
            }
            h.stop();
            ids.push(pod_ids);
        }
        assert_eq!(ids[0].len(), 4, "{ids:?}");
        assert_eq!(ids[0], ids[1]);
        let distinct: std::collections::BTreeSet<_> = ids[0].iter().collect();
        assert_eq!(distinct.len(), 4, "{ids:?}");
    }
}
