//! The l2_market_data normalizer: book levels from two sources.
//!
//! - Top of book from `smd` (84 bid, 86 ask, 88 bid size, 85 ask size): every frame that
//!   carries any of them gives both sides' level-1 rows (`max_level` 1) with the merged values,
//!   at IB's `_updated` time. The first frame of a subscription too: its quote is the current
//!   one (unlike its last trade, which may be old), and a quiet contract may not quote again
//!   for a long time. A repeat of the same update (IB sends the first frame twice, with the same
//!   `_updated`) gives nothing.
//! - `sbd` BookTrader ladders: each ladder is a full book, so it gives one row per side and
//!   level (level 1 is the best price, `max_level` the rows of that side). IB gives no event
//!   time for ladders: `l2_time` is the receive time and the row id is per pod (the seed notes
//!   that L2 duplicates across pods cannot be recognised). The exchange of a ladder over all
//!   deep exchanges is unknown, so `exchange_identifier` is missing (state `missing`).
//!
//! Sizes are kept in IB's unit (lots of 100 for US stocks: `size_unit` says so). IB documents
//! the division by 100 for 88/85; that ladder sizes share it is an assumption (no real ladder
//! with a known share count has been published).

use std::collections::HashMap;

use marketlane_protocol::Scalar;
use marketlane_protocol::category::L2;
use marketlane_protocol::ib::{
    BookFrame, FieldValue, MarketDataFrame, field, parse_decimal, parse_number,
};
use marketlane_protocol::typed_row::IdName;
use serde_json::json;
use tracing::instrument;

use super::{Core, InstrumentMap, Normalize, frame_json, instrument_of};
use crate::backpressure::Inflight;
use crate::contracts::Instrument;

#[derive(Debug, Default, Clone, Copy)]
struct TopOfBook {
    bid: Option<f64>,
    ask: Option<f64>,
    bid_size: Option<f64>,
    ask_size: Option<f64>,
    /// IB's `_updated` of the last frame that gave rows.
    updated_ms: Option<i64>,
}

/// Per-conid top of book of the l2 normalizer (ladders need no state: each is a full book).
#[derive(Default)]
pub struct Books {
    books: HashMap<i64, TopOfBook>,
}

impl Normalize for Books {
    const CATEGORY: &'static str = L2;

    async fn market_data(
        &mut self,
        core: &mut Core,
        frame: &MarketDataFrame,
        received_ns: i64,
        permit: &Inflight,
    ) {
        self.on_top_of_book(core, frame, received_ns, permit).await;
    }

    async fn book(
        &mut self,
        core: &mut Core,
        frame: &BookFrame,
        received_ns: i64,
        permit: &Inflight,
    ) {
        on_ladder(core, frame, received_ns, permit).await;
    }

    fn retain(&mut self, instruments: &InstrumentMap) {
        self.books
            .retain(|conid, _| instruments.contains_key(conid));
    }
}

/// One book level as a row; `exchange` is `None` when the source does not say.
struct Level<'a> {
    instrument: &'a Instrument,
    exchange: Option<&'a str>,
    side: &'static str,
    level: u32,
    max_level: u32,
    price: Option<f64>,
    size: Option<f64>,
    l2_time: i64,
    /// What identifies the event besides side and level (IB `_updated`, or receive time).
    event_key: EventKey<'a>,
}

/// The event part of an l2 row id: IB's `_updated` of a quote, or a ladder's receive time on
/// this pod (`sbd-<instance>-<received_ns>`).
#[derive(Clone, Copy)]
enum EventKey<'a> {
    Updated(i64),
    Ladder { instance: &'a str, received_ns: i64 },
}

impl std::fmt::Display for EventKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Updated(ms) => write!(f, "{ms}"),
            Self::Ladder {
                instance,
                received_ns,
            } => write!(f, "sbd-{instance}-{received_ns}"),
        }
    }
}

/// The price of a ladder row: `"189.60"`, or `"300 @ 189.60"` on the last-trade row.
fn ladder_price(v: &FieldValue) -> Option<f64> {
    let text = v.as_str()?;
    parse_decimal(text.rsplit('@').next()?)
}

fn emit(core: &mut Core, conid: i64, l: Level<'_>, received_ns: i64, permit: &Inflight) {
    let (source, instance) = (core.source.clone(), core.instance.clone());
    let id = IdName::new(L2)
        .part(&*source)
        .part(conid)
        .part(l.event_key)
        .part(l.side)
        .part(l.level)
        .id();
    let row = [
        ("row_id", Scalar::Str(id.as_str())),
        ("source_system_name", Scalar::Str(&source)),
        ("component_instance_name", Scalar::Str(&instance)),
        ("ingestion_time", Scalar::I64(received_ns)),
        ("exchange_identifier", Scalar::opt_str(l.exchange)),
        ("symbol_identifier", Scalar::Str(&l.instrument.symbol)),
        ("symbol_type", Scalar::Str(l.instrument.symbol_type())),
        ("price", Scalar::opt_f64(l.price)),
        ("price_unit", Scalar::Str(&l.instrument.price_unit)),
        ("size", Scalar::opt_f64(l.size)),
        ("size_unit", Scalar::Str(&l.instrument.size_unit)),
        ("side", Scalar::Str(l.side)),
        ("level", Scalar::U64(u64::from(l.level))),
        ("max_level", Scalar::U64(u64::from(l.max_level))),
        ("l2_time", Scalar::I64(l.l2_time)),
    ];
    let emitted = core.emit_row(L2, conid, &l.instrument.symbol, &row, l.l2_time, permit);
    core.count(emitted);
}

impl Books {
    #[instrument(level = "trace", skip_all, fields(category = L2, conid = frame.conid))]
    async fn on_top_of_book(
        &mut self,
        core: &mut Core,
        frame: &MarketDataFrame,
        received_ns: i64,
        permit: &Inflight,
    ) {
        const QUOTE: [&str; 4] = [field::BID, field::ASK, field::BID_SIZE, field::ASK_SIZE];
        if !QUOTE.iter().any(|f| frame.fields.contains_key(f)) {
            return;
        }
        let instruments = core.instruments.clone();
        let (conid, instrument) = match instrument_of(&instruments, frame.conid) {
            Ok(found) => found,
            Err((code, reason)) => {
                core.snapshot.quarantined += 1;
                core.quarantine(L2, code, reason, &frame_json(frame), permit);
                return;
            }
        };
        let mut parsed = [None; 4];
        for (i, f) in QUOTE.iter().enumerate() {
            match frame.fields.get(f) {
                None => {}
                // IB sends "" for a value it does not have: the level is cleared.
                Some(FieldValue::Str(t)) if t.trim().is_empty() => parsed[i] = Some(None),
                Some(v) => match parse_number(f, v) {
                    Ok(x) => parsed[i] = Some(Some(x)),
                    Err(e) => {
                        core.snapshot.quarantined += 1;
                        core.quarantine(L2, "bad_value", e.to_string(), &frame_json(frame), permit);
                        return;
                    }
                },
            }
        }
        let updated_ms = frame.updated_ms.unwrap_or(received_ns / 1_000_000);
        let book = self.books.entry(conid).or_default();
        if book.updated_ms.is_some_and(|u| updated_ms <= u) {
            // The same update again, or an older one: the book already says it.
            return;
        }
        book.updated_ms = Some(updated_ms);
        let slots = [
            &mut book.bid,
            &mut book.ask,
            &mut book.bid_size,
            &mut book.ask_size,
        ];
        for (slot, value) in slots.into_iter().zip(parsed) {
            if let Some(v) = value {
                *slot = v;
            }
        }
        let book = *book;
        let l2_time = updated_ms.saturating_mul(1_000_000);
        for (side, price, size) in [
            ("bid", book.bid, book.bid_size),
            ("ask", book.ask, book.ask_size),
        ] {
            let level = Level {
                instrument,
                exchange: Some(instrument.exchange.as_str()),
                side,
                level: 1,
                max_level: 1,
                price,
                size,
                l2_time,
                event_key: EventKey::Updated(updated_ms),
            };
            emit(core, conid, level, received_ns, permit);
        }
    }
}

#[instrument(level = "trace", skip_all, fields(category = L2, conid = frame.conid))]
async fn on_ladder(core: &mut Core, frame: &BookFrame, received_ns: i64, permit: &Inflight) {
    let raw = || {
        serde_json::to_vec(&json!({
            "topic": format!("sbd+{}+{}", frame.account.clone().unwrap_or_default(), frame.conid.unwrap_or_default()),
            "rows": frame.rows.len(),
        }))
        .unwrap_or_default()
    };
    let instruments = core.instruments.clone();
    let (conid, instrument) = match instrument_of(&instruments, frame.conid) {
        Ok(found) => found,
        Err((code, reason)) => {
            core.snapshot.quarantined += 1;
            core.quarantine(L2, code, reason, &raw(), permit);
            return;
        }
    };
    let mut bids: Vec<(f64, f64)> = Vec::new();
    let mut asks: Vec<(f64, f64)> = Vec::new();
    for r in &frame.rows {
        let Some(price) = r.price.as_ref().and_then(ladder_price) else {
            core.snapshot.quarantined += 1;
            // As a `serde_json::Value` prints it, so the reason reads as before.
            let shown = r.price.as_ref().map(FieldValue::to_value);
            let reason = format!("ladder row {}: unreadable price {shown:?}", r.row);
            core.quarantine(L2, "bad_value", reason, &raw(), permit);
            return;
        };
        for (side, v) in [(&mut bids, &r.bid), (&mut asks, &r.ask)] {
            if let Some(v) = v {
                match parse_number("sbd size", v) {
                    Ok(size) => side.push((price, size)),
                    Err(e) => {
                        core.snapshot.quarantined += 1;
                        core.quarantine(L2, "bad_value", e.to_string(), &raw(), permit);
                        return;
                    }
                }
            }
        }
    }
    // Level 1 is the best price: the highest bid and the lowest ask.
    bids.sort_by(|a, b| b.0.total_cmp(&a.0));
    asks.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (side, levels) in [("bid", &bids), ("ask", &asks)] {
        let max_level = u32::try_from(levels.len()).unwrap_or(u32::MAX);
        for (i, (price, size)) in levels.iter().enumerate() {
            let instance = core.instance.clone();
            let level = Level {
                instrument,
                exchange: None,
                side,
                level: u32::try_from(i + 1).unwrap_or(u32::MAX),
                max_level,
                price: Some(*price),
                size: Some(*size),
                l2_time: received_ns,
                event_key: EventKey::Ladder {
                    instance: &instance,
                    received_ns,
                },
            };
            emit(core, conid, level, received_ns, permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::names::L2_NORMALIZER;
    use crate::normalizer::testkit::{Harness, json};

    /// (side, level, max_level, price, size) of each produced row, sorted.
    fn levels(got: &[crate::kafka::Produce]) -> Vec<(String, u64, u64, f64, f64)> {
        let mut v: Vec<_> = got
            .iter()
            .map(json)
            .map(|r| {
                assert!(r.get("reason_code").is_none(), "quarantined: {r}");
                (
                    r["side"].as_str().unwrap().to_string(),
                    r["level"].as_u64().unwrap(),
                    r["max_level"].as_u64().unwrap(),
                    r["price"].as_f64().unwrap(),
                    r["size"].as_f64().unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        v
    }

    #[tokio::test]
    async fn top_of_book_from_smd() {
        let h = Harness::start(crate::normalizer::L2Normalizer::new(), L2_NORMALIZER).await;
        // The opening quote is the current quote: level-1 rows at once.
        let snap = r#"{"topic":"smd+265598","conid":265598,"_updated":1,"6509":"RpB","84":"189.50","86":"189.70","88":"5","85":"1,300","31":"189.6"}"#;
        let got = h.feed(snap, 7).await;
        assert_eq!(
            levels(&got),
            vec![
                ("ask".into(), 1, 1, 189.7, 1300.0),
                ("bid".into(), 1, 1, 189.5, 5.0)
            ]
        );
        assert_eq!(json(&got[0])["l2_time"], 1_000_000);
        // IB sends the first frame twice (same `_updated`): nothing new.
        assert!(h.feed(snap, 8).await.is_empty(), "a repeated update");
        // Only the bid moved: both sides' level-1 rows, with the merged ask.
        let got = h
            .feed(
                r#"{"topic":"smd+265598","conid":265598,"_updated":2,"84":"189.55"}"#,
                7,
            )
            .await;
        assert_eq!(
            levels(&got),
            vec![
                ("ask".into(), 1, 1, 189.7, 1300.0),
                ("bid".into(), 1, 1, 189.55, 5.0)
            ]
        );
        let row = json(&got[0]);
        assert_eq!(row["l2_time"], 2_000_000);
        assert_eq!(row["exchange_identifier_state"], "ok");
        assert_eq!(row["symbol_type"], "stocks");
        assert_eq!(row["size_unit"], "100_shares");
        // A trade-only frame says nothing about the book.
        assert!(
            h.feed(
                r#"{"topic":"smd+265598","conid":265598,"_updated":3,"31":"189.6"}"#,
                7
            )
            .await
            .is_empty()
        );
        // A bad size is quarantined with the reason.
        let got = h
            .feed(
                r#"{"topic":"smd+265598","conid":265598,"_updated":4,"88":"lots"}"#,
                7,
            )
            .await;
        assert_eq!(got.len(), 1);
        assert_eq!(json(&got[0])["reason_code"], "bad_value");
        assert_eq!(&*got[0].topic, "l2_market_data_unqualified");
        h.stop();
    }

    #[tokio::test]
    async fn ladders_from_sbd() {
        let h = Harness::start(crate::normalizer::L2Normalizer::new(), L2_NORMALIZER).await;
        let ladder = r#"{"topic":"sbd+DU1+265598","data":[
            {"row":0,"focus":0,"price":"189.72","ask":"7"},
            {"row":1,"focus":0,"price":"189.71","ask":"3"},
            {"row":2,"focus":1,"price":"2 @ 189.65"},
            {"row":3,"focus":0,"price":"189.60","bid":"1,100"},
            {"row":4,"focus":0,"price":"189.59","bid":"4"}]}"#;
        let got = h.feed(ladder, 42).await;
        assert_eq!(
            levels(&got),
            vec![
                ("ask".into(), 1, 2, 189.71, 3.0),
                ("ask".into(), 2, 2, 189.72, 7.0),
                ("bid".into(), 1, 2, 189.60, 1100.0),
                ("bid".into(), 2, 2, 189.59, 4.0),
            ]
        );
        let row = json(&got[0]);
        assert_eq!(
            row["l2_time"], 42,
            "ladders carry no event time: receive time"
        );
        assert_eq!(row["exchange_identifier"], serde_json::Value::Null);
        assert_eq!(row["exchange_identifier_state"], "missing");
        let bad =
            r#"{"topic":"sbd+DU1+265598","data":[{"row":0,"focus":0,"price":"x","ask":"7"}]}"#;
        let got = h.feed(bad, 43).await;
        assert_eq!(json(&got[0])["reason_code"], "bad_value");
        let unknown = r#"{"topic":"sbd+DU1+5","data":[{"row":0,"focus":0,"price":"1","ask":"7"}]}"#;
        assert_eq!(
            json(&h.feed(unknown, 44).await[0])["reason_code"],
            "unknown_conid"
        );
        h.stop();
    }
}
