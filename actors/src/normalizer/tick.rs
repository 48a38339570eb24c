//! The tick_market_data normalizer: trades from `smd` deltas.
//!
//! IB sends a full first frame per subscription and then only changed fields. A trade shows as
//! a later frame carrying field 31 (last price, without the `C` prior-close or `H` halted
//! prefix) and/or 7059 (last size); the row takes the merged last price and size. The first
//! frame after a (re)subscription only seeds the state: it repeats the last trade, which may
//! already have been emitted, so emitting it would invent a trade. The row id is derived from
//! the source, the conid and IB's `_updated` time, so every pod and every replay produces the
//! same id for the same trade.

use std::collections::HashMap;
use std::sync::Arc;

use marketlane_protocol::category::TICK;
use marketlane_protocol::ib::{LastPrice, MarketDataFrame, field, parse_last_price, parse_number};
use marketlane_protocol::{RowMap, row_id};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{Value, json};
use tracing::{debug, instrument};

use super::{Emitted, InstrumentMap, NormalizerMsg, NormalizerSnapshot, RowEmitter};
use crate::backpressure::Inflight;
use crate::ib_websocket::WsMsg;
use crate::names::IB_WEBSOCKET;

#[derive(Debug, Default, Clone, Copy)]
struct TradeState {
    last: Option<f64>,
    last_size: Option<f64>,
    /// False until the first (snapshot) frame after a subscription has been seen.
    seeded: bool,
}

pub struct TickState {
    emitter: RowEmitter,
    instruments: InstrumentMap,
    trades: HashMap<i64, TradeState>,
    snapshot: NormalizerSnapshot,
}

pub struct TickNormalizer;

impl Actor for TickNormalizer {
    type Msg = NormalizerMsg;
    type State = TickState;
    type Arguments = RowEmitter;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        emitter: RowEmitter,
    ) -> Result<Self::State, ActorProcessingErr> {
        if let Some(ws) = emitter.names.lookup::<WsMsg>(IB_WEBSOCKET) {
            let _ = ws.cast(WsMsg::Announce);
        }
        Ok(TickState {
            emitter,
            instruments: Arc::default(),
            trades: HashMap::new(),
            snapshot: NormalizerSnapshot {
                category: TICK.into(),
                ..Default::default()
            },
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NormalizerMsg::MarketData {
                frame,
                received_ns,
                permit,
            } => {
                state.snapshot.frames += 1;
                match state.on_frame(&frame, received_ns, &permit).await {
                    Some(Emitted::Row) => state.snapshot.rows += 1,
                    Some(Emitted::Quarantined) => state.snapshot.quarantined += 1,
                    None => {}
                }
            }
            NormalizerMsg::Instruments(map) => {
                state.snapshot.instruments = map.len();
                state.trades.retain(|conid, _| map.contains_key(conid));
                state.instruments = map;
            }
            NormalizerMsg::Resubscribed(conids) => {
                for c in conids {
                    state.trades.entry(c).or_default().seeded = false;
                }
            }
            NormalizerMsg::GetState(reply) => {
                let _ = reply.send(state.snapshot.clone());
            }
        }
        Ok(())
    }
}

/// The raw frame as JSON, for quarantine records.
fn frame_json(frame: &MarketDataFrame) -> Vec<u8> {
    let mut obj: serde_json::Map<String, Value> = frame
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    obj.insert("conid".into(), json!(frame.conid));
    obj.insert("_updated".into(), json!(frame.updated_ms));
    serde_json::to_vec(&obj).unwrap_or_default()
}

impl TickState {
    #[instrument(level = "trace", skip_all, fields(category = TICK, conid = frame.conid))]
    async fn on_frame(
        &mut self,
        frame: &MarketDataFrame,
        received_ns: i64,
        permit: &Inflight,
    ) -> Option<Emitted> {
        let has_last = frame.fields.get(field::LAST);
        let has_size = frame.fields.get(field::LAST_SIZE);
        if has_last.is_none() && has_size.is_none() {
            return None;
        }
        let quarantine = |code: &'static str, reason: String| (code, reason);
        let outcome = (|| {
            let conid = frame
                .conid
                .ok_or_else(|| quarantine("no_conid", "smd frame without conid".into()))?;
            let instrument = self.instruments.get(&conid).ok_or_else(|| {
                quarantine("unknown_conid", format!("conid {conid} is not subscribed"))
            })?;
            let last = match has_last.map(parse_last_price).transpose() {
                Ok(v) => v,
                Err(e) => return Err(quarantine("bad_value", e.to_string())),
            };
            let size = match has_size
                .map(|v| parse_number(field::LAST_SIZE, v))
                .transpose()
            {
                Ok(v) => v,
                Err(e) => return Err(quarantine("bad_value", e.to_string())),
            };
            Ok((conid, instrument.clone(), last, size))
        })();
        let (conid, instrument, last, size) = match outcome {
            Ok(v) => v,
            Err((code, reason)) => {
                self.emitter
                    .quarantine(TICK, code, reason, &frame_json(frame), permit)
                    .await;
                return Some(Emitted::Quarantined);
            }
        };
        let st = self.trades.entry(conid).or_default();
        let mut trade = size.is_some();
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
            st.last_size = Some(s);
        }
        if !st.seeded {
            st.seeded = true;
            debug!(conid, "snapshot frame seeds the trade state");
            return None;
        }
        if !trade {
            return None;
        }
        let updated_ms = frame.updated_ms.unwrap_or(received_ns / 1_000_000);
        let tick_time = updated_ms.saturating_mul(1_000_000);
        let st = *st;
        let mut row = RowMap::new();
        let source = self.emitter.source_system.clone();
        row.insert(
            "row_id".into(),
            json!(row_id(
                TICK,
                &[&source, &conid.to_string(), &updated_ms.to_string()]
            )),
        );
        row.insert("source_system_name".into(), json!(source));
        row.insert(
            "component_instance_name".into(),
            json!(self.emitter.instance),
        );
        row.insert("ingestion_time".into(), json!(received_ns));
        row.insert("exchange_identifier".into(), json!(instrument.exchange));
        row.insert("symbol_identifier".into(), json!(instrument.symbol));
        row.insert("symbol_type".into(), json!(instrument.symbol_type()));
        row.insert("price".into(), st.last.map_or(Value::Null, |p| json!(p)));
        row.insert("price_unit".into(), json!(instrument.price_unit));
        row.insert(
            "size".into(),
            st.last_size.map_or(Value::Null, |s| json!(s)),
        );
        row.insert("size_unit".into(), json!(instrument.size_unit));
        row.insert("tick_time".into(), json!(tick_time));
        Some(self.emitter.emit(TICK, row, tick_time, permit).await)
    }
}
