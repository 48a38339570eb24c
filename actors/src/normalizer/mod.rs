//! Normalizers: one actor per category turns IB's stateful delta frames into stateless category
//! rows. They share one message type (the websocket sends `smd` frames to each, `sbd` ladders
//! to the l2 normalizer only) and the [`RowEmitter`], which checks every row against its schema
//! and writes it to its wire JSON in one pass (`marketlane_protocol::typed_row`), or sends it to
//! `<category>_unqualified` with the reason when it does not qualify. The messages of one frame
//! go to the producer together, in one hand-over ([`Outbox`]).

mod child;
pub mod indicators;
pub mod l2;
pub mod tick;

#[cfg(test)]
pub(crate) mod testkit;

#[cfg(test)]
mod golden_tests;

pub use child::NormalizerChild;

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use marketlane_protocol::ib::{Availability, BookFrame, MarketDataFrame, field};
use marketlane_protocol::typed_row::typed_row_json;
use marketlane_protocol::{RowMap, SchemaSet, TypedRow, UnqualifiedRecord};
use prometheus::IntCounter;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;
use tracing::warn;

use crate::backpressure::Inflight;
use crate::config::KafkaConfig;
use crate::contracts::Instrument;
use crate::frame_progress::FrameProgress;
use crate::ib_websocket::WsMsg;
use crate::kafka::producer::hand_over;
use crate::kafka::{Handover, Produce, ProducerMsg};
use crate::metrics::Metrics;
use crate::names::{ActorNames, IB_WEBSOCKET, KAFKA_PRODUCER};

/// The trades normalizer (tick_market_data).
pub type TickNormalizer = Normalizer<tick::Trades>;
/// The book normalizer (l2_market_data).
pub type L2Normalizer = Normalizer<l2::Books>;
/// The session-statistics normalizer (indicators_market_data).
pub type IndicatorsNormalizer = Normalizer<indicators::Statistics>;

/// Instruments by conid: what this pod is subscribed to.
pub type InstrumentMap = Arc<BTreeMap<i64, Instrument>>;

#[derive(RactorMessage)]
pub enum NormalizerMsg {
    /// One `smd` frame, as received.
    MarketData {
        frame: Arc<MarketDataFrame>,
        received_ns: i64,
        permit: Inflight,
        /// The websocket's number of the frame ([`FrameProgress`]); 0 for a replay's seed.
        number: u64,
    },
    /// One `sbd` BookTrader ladder, as received.
    Book {
        frame: Arc<BookFrame>,
        received_ns: i64,
        permit: Inflight,
        number: u64,
    },
    /// The instruments this pod streams (after contract resolution or a rebalance).
    Instruments(InstrumentMap),
    /// These conids were (re)subscribed: their next frame is a full snapshot, not an update.
    Resubscribed(Vec<i64>),
    /// The websocket's replay for this restarted normalizer starts here: frames before it
    /// were broadcast before the replay and come again inside it.
    ReplayBegins,
    GetState(RpcReplyPort<NormalizerSnapshot>),
    /// Fault injection (control socket `fault`, failure-matrix row 11): panic in the handler.
    InjectPanic,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NormalizerSnapshot {
    pub category: String,
    pub instruments: usize,
    pub frames: u64,
    pub rows: u64,
    pub quarantined: u64,
    /// Of `quarantined`: rows of symbols whose market data is not real-time (field 6509).
    pub not_realtime: u64,
}

/// The quarantine reason of rows whose symbol's market data is not real-time.
/// Bytes of one block of a normalizer's frame buffer ([`Outbox`]): about a hundred rows.
const FRAME_BYTES_BLOCK: usize = 64 * 1024;

pub const NOT_REALTIME: &str = "not_realtime";

/// What every normalizer keeps besides its own per-conid state: where its rows go, what is
/// subscribed, and its observable counters.
pub struct Core {
    pub emitter: RowEmitter,
    pub instruments: InstrumentMap,
    pub snapshot: NormalizerSnapshot,
    /// Field 6509 per conid as last received. IB sends it in the first (full) frame of a
    /// subscription and then only when it changes, so every later delta of the conid has the
    /// availability kept here. A conid without one yet (6509 not requested) counts as
    /// real-time: nothing says otherwise.
    pub availability: HashMap<i64, Availability>,
    /// Restarted, waiting for the websocket's replay: live frames are ignored until then.
    pub awaiting_replay: bool,
    /// Row columns every row of this pod carries (shared, not copied per row).
    pub source: Arc<str>,
    pub instance: Arc<str>,
    /// The messages of the frame being normalized, and the cached handles to send them.
    pub out: Outbox,
    /// This normalizer's slot in the emitter's [`FrameProgress`].
    pub progress_slot: Option<usize>,
}

/// The messages of one frame, handed to the producer in one message after the frame, with the
/// producer's reference and the metric handles cached (looked up again only when the
/// producer was restarted).
#[derive(Default)]
pub struct Outbox {
    batch: Vec<Produce>,
    /// The frame's keys and payloads, back to back: each message is a slice of it, so a row
    /// costs no allocation of its own (librdkafka copies the bytes when it takes them).
    bytes: BytesMut,
    /// Where a row is written before it joins `bytes` (reused: no allocation per row).
    scratch: Vec<u8>,
    producer: Option<ActorRef<ProducerMsg>>,
    /// The producer's registered name, where a hand-over it never took goes back to.
    producer_name: Option<Arc<str>>,
    /// By category (a normalizer emits one or two: a short list).
    categories: Vec<CategoryOut>,
    missing: Vec<usize>,
}

/// What every row of a category needs: its topic and its counters.
struct CategoryOut {
    topic: Arc<str>,
    category: Arc<str>,
    rows: IntCounter,
    /// `missing_fields` by field index, made on first use.
    missing: Vec<Option<IntCounter>>,
}

impl Outbox {
    /// The messages gathered so far, without handing them over (tests).
    #[cfg(test)]
    pub fn take_batch(&mut self) -> Vec<Produce> {
        std::mem::take(&mut self.batch)
    }

    /// `data` as a slice of the frame's buffer.
    fn slice(&mut self, data: &[u8]) -> Bytes {
        if self.bytes.capacity() - self.bytes.len() < data.len() {
            // A block for many rows at once; the last slice of the previous one frees it.
            self.bytes = BytesMut::with_capacity(FRAME_BYTES_BLOCK.max(data.len()));
        }
        self.bytes.extend_from_slice(data);
        self.bytes.split().freeze()
    }

    /// Hands the frame's messages to the producer, waiting while it is being restarted: a row
    /// is never dropped because its next hop is down for a moment.
    pub async fn flush(&mut self, emitter: &RowEmitter) {
        if self.batch.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        let back_to = self
            .producer_name
            .get_or_insert_with(|| emitter.names.name(KAFKA_PRODUCER).into())
            .clone();
        let mut waited = Duration::ZERO;
        loop {
            if self.producer.is_none() {
                self.producer = emitter.names.lookup::<ProducerMsg>(KAFKA_PRODUCER);
            }
            if let Some(producer) = self.producer.clone() {
                let handover = Handover::new(batch, Some(back_to.clone()));
                match producer.cast(ProducerMsg::ProduceAll(handover)) {
                    Ok(()) => return,
                    Err(ractor::MessagingErr::SendErr(ProducerMsg::ProduceAll(back))) => {
                        batch = back.take();
                        self.producer = None;
                        // Try the restarted producer at once, before waiting.
                        if waited.is_zero() {
                            emitter
                                .metrics
                                .data_path_undelivered
                                .with_label_values(&["producer_handover", "requeued"])
                                .inc();
                            waited = Duration::from_millis(1);
                            continue;
                        }
                    }
                    Err(_) => return,
                }
            }
            if waited.as_secs() >= 1 && waited.as_millis() % 5_000 < 20 {
                warn!(rows = batch.len(), "producer not available; holding rows");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
    }
}

impl Core {
    /// Frame `number` is handled: its rows are with the producer (0: a replay's seed).
    fn handled(&self, number: u64) {
        if let Some(slot) = self.progress_slot
            && number > 0
        {
            self.emitter.progress.handled(slot, number);
        }
    }

    pub fn count(&mut self, emitted: Emitted) {
        match emitted {
            Emitted::Row => self.snapshot.rows += 1,
            Emitted::Quarantined => self.snapshot.quarantined += 1,
        }
    }

    /// Sends `raw` to `<category>_unqualified` with the reason, with the frame's other messages.
    pub fn quarantine(
        &mut self,
        category: &str,
        code: &str,
        reason: String,
        raw: &[u8],
        p: &Inflight,
    ) {
        let q = self
            .emitter
            .quarantine_record(category, code, reason, raw, p);
        self.out.batch.push(q);
    }

    /// Keeps the availability a frame carries (a full frame, or a change).
    fn note_availability(&mut self, frame: &MarketDataFrame) {
        if let (Some(conid), Some(a)) = (
            frame.conid,
            frame
                .fields
                .get(field::AVAILABILITY)
                .and_then(Availability::parse),
        ) {
            self.availability.insert(conid, a);
        }
    }

    /// The conid's availability when it is known and not real-time.
    pub fn not_realtime(&self, conid: i64) -> Option<&Availability> {
        self.availability.get(&conid).filter(|a| !a.is_realtime())
    }

    /// Hands a row of `conid` (of `symbol`) to the emitter, unless the conid's market data is
    /// not real-time: such a row never reaches the real-time table; it is kept in
    /// `<category>_unqualified` with reason `not_realtime` and counted per symbol. Level-2
    /// ladders go through here too, under the level-1 availability of their conid: IB gives
    /// ladders no availability of their own, and a user whose level 1 is delayed or frozen has
    /// no real-time entitlement for the contract.
    pub fn emit_row(
        &mut self,
        category: &str,
        conid: i64,
        symbol: &str,
        row: &TypedRow<'_>,
        event_time_ns: i64,
        permit: &Inflight,
    ) -> Emitted {
        if let Some(a) = self.not_realtime(conid) {
            let reason = format!(
                "{symbol}: market data is {} (field 6509 = {a:?}), not real-time",
                a.label(),
                a = a.code()
            );
            self.emitter
                .metrics
                .not_realtime_rows
                .with_label_values(&[category, symbol])
                .inc();
            self.snapshot.not_realtime += 1;
            let raw = typed_row_json(row);
            self.quarantine(category, NOT_REALTIME, reason, &raw, permit);
            return Emitted::Quarantined;
        }
        self.emitter
            .emit_typed(&mut self.out, category, row, event_time_ns, permit)
    }
}

/// One category's rule for turning IB frames into rows; [`Normalizer`] is the actor around it.
pub trait Normalize: Default + Send + 'static {
    const CATEGORY: &'static str;

    fn market_data(
        &mut self,
        core: &mut Core,
        frame: &MarketDataFrame,
        received_ns: i64,
        permit: &Inflight,
    ) -> impl std::future::Future<Output = ()> + Send;

    /// `sbd` ladders; only the book normalizer reads them.
    fn book(
        &mut self,
        _core: &mut Core,
        _frame: &BookFrame,
        _received_ns: i64,
        _permit: &Inflight,
    ) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }

    /// The subscribed instruments changed: forget conids no longer in `instruments`.
    fn retain(&mut self, _instruments: &InstrumentMap) {}

    /// These conids were subscribed again: their next frame is a snapshot.
    fn resubscribed(&mut self, _conids: &[i64]) {}
}

/// The normalizer actor: the same shell for every category, around its [`Normalize`] rule.
pub struct Normalizer<N>(PhantomData<fn() -> N>);

impl<N> Normalizer<N> {
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<N> Default for Normalizer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<N: Normalize> Actor for Normalizer<N> {
    type Msg = NormalizerMsg;
    type State = (Core, N);
    type Arguments = RowEmitter;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        emitter: RowEmitter,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A restarted normalizer asks the websocket for the instruments, its lost per-conid
        // state and the frames not yet acknowledged by Kafka (`ib_websocket/unacked.rs`).
        // Until the replay begins it ignores frames: they come again inside the replay.
        let awaiting_replay = emitter
            .names
            .lookup::<WsMsg>(IB_WEBSOCKET)
            .is_some_and(|ws| ws.cast(WsMsg::ReplayTo(myself.clone())).is_ok());
        let core = Core {
            awaiting_replay,
            source: emitter.source_system.as_str().into(),
            instance: emitter.instance.as_str().into(),
            out: Outbox::default(),
            emitter,
            instruments: Arc::default(),
            snapshot: NormalizerSnapshot {
                category: N::CATEGORY.into(),
                ..Default::default()
            },
            availability: HashMap::new(),
            progress_slot: FrameProgress::slot(N::CATEGORY),
        };
        Ok((core, N::default()))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        (core, rule): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NormalizerMsg::MarketData { .. } | NormalizerMsg::Book { .. }
                if core.awaiting_replay => {}
            NormalizerMsg::ReplayBegins => core.awaiting_replay = false,
            NormalizerMsg::MarketData {
                frame,
                received_ns,
                permit,
                number,
            } => {
                core.snapshot.frames += 1;
                core.note_availability(&frame);
                rule.market_data(core, &frame, received_ns, &permit).await;
                core.out.flush(&core.emitter).await;
                core.handled(number);
            }
            NormalizerMsg::Book {
                frame,
                received_ns,
                permit,
                number,
            } => {
                core.snapshot.frames += 1;
                rule.book(core, &frame, received_ns, &permit).await;
                core.out.flush(&core.emitter).await;
                core.handled(number);
            }
            NormalizerMsg::Instruments(map) => {
                core.snapshot.instruments = map.len();
                core.availability.retain(|c, _| map.contains_key(c));
                rule.retain(&map);
                core.instruments = map;
            }
            NormalizerMsg::Resubscribed(conids) => rule.resubscribed(&conids),
            NormalizerMsg::InjectPanic => {
                panic!("fault injected over the control socket");
            }
            NormalizerMsg::GetState(reply) => {
                let _ = reply.send(core.snapshot.clone());
            }
        }
        Ok(())
    }
}

/// The raw frame as JSON, for quarantine records.
pub fn frame_json(frame: &MarketDataFrame) -> Vec<u8> {
    let mut obj: serde_json::Map<String, serde_json::Value> = frame
        .fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_value()))
        .collect();
    obj.insert("conid".into(), serde_json::json!(frame.conid));
    obj.insert("_updated".into(), serde_json::json!(frame.updated_ms));
    serde_json::to_vec(&obj).unwrap_or_default()
}

/// The subscribed instrument of a frame's conid, or the quarantine code and reason.
pub fn instrument_of(
    instruments: &InstrumentMap,
    conid: Option<i64>,
) -> Result<(i64, &Instrument), (&'static str, String)> {
    let conid = conid.ok_or(("no_conid", "frame without conid".to_string()))?;
    instruments
        .get(&conid)
        .map(|i| (conid, i))
        .ok_or(("unknown_conid", format!("conid {conid} is not subscribed")))
}

/// Validates rows and hands them to the producer actor.
#[derive(Clone)]
pub struct RowEmitter {
    pub schemas: Arc<SchemaSet>,
    pub kafka: KafkaConfig,
    pub source_system: String,
    pub instance: String,
    pub names: ActorNames,
    pub metrics: Arc<Metrics>,
    /// How far the normalizers got through the websocket's frames (the replay store's bound).
    pub progress: Arc<FrameProgress>,
}

/// What became of one row handed to [`RowEmitter::emit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitted {
    Row,
    Quarantined,
}

impl RowEmitter {
    /// Validates `row` for `category` and produces it; a row that fails its schema goes to the
    /// quarantine topic with the reason instead.
    pub async fn emit(
        &self,
        category: &str,
        row: RowMap,
        event_time_ns: i64,
        permit: &Inflight,
    ) -> Emitted {
        let schema = match self.schemas.get(category) {
            Ok(s) => s,
            Err(e) => {
                let raw = serde_json::to_vec(&row).unwrap_or_default();
                self.quarantine(category, "unknown_category", e.to_string(), &raw, permit)
                    .await;
                return Emitted::Quarantined;
            }
        };
        // Checked in place and written straight to JSON in column order: no validated copy
        // of the row is built (same bytes as serializing `validate`'s result).
        match schema.check(&row) {
            Ok(()) => {
                for f in schema.fields.iter().filter(|f| f.nullable) {
                    if row.get(&f.name).is_none_or(serde_json::Value::is_null) {
                        self.metrics
                            .missing_fields
                            .with_label_values(&[
                                category,
                                f.name.as_str(),
                                self.source_system.as_str(),
                            ])
                            .inc();
                    }
                }
                let key = schema.key_of(&row).to_string();
                let mut payload = Vec::with_capacity(512);
                schema.write_json(&row, &mut payload);
                self.metrics
                    .rows_normalized
                    .with_label_values(&[category])
                    .inc();
                self.produce(Produce {
                    topic: self.kafka.topic(&schema.topic()).into(),
                    key: key.into(),
                    payload: payload.into(),
                    category: category.into(),
                    event_time_ns: Some(event_time_ns),
                    permit: permit.clone(),
                })
                .await;
                Emitted::Row
            }
            Err(e) => {
                // Serialized only here: a valid row never pays for its quarantine copy.
                let raw = serde_json::to_vec(&row).unwrap_or_default();
                self.quarantine(category, e.code(), e.to_string(), &raw, permit)
                    .await;
                Emitted::Quarantined
            }
        }
    }

    /// Checks a normalizer's typed row for `category` and writes it straight to its wire JSON
    /// (the bytes [`Self::emit`] gives for the same row as a map); the message joins the
    /// frame's others in `out`. A row that fails its schema becomes a quarantine record.
    pub fn emit_typed(
        &self,
        out: &mut Outbox,
        category: &str,
        row: &TypedRow<'_>,
        event_time_ns: i64,
        permit: &Inflight,
    ) -> Emitted {
        let schema = match self.schemas.get(category) {
            Ok(s) => s,
            Err(e) => {
                let q = self.quarantine_record(
                    category,
                    "unknown_category",
                    e.to_string(),
                    &typed_row_json(row),
                    permit,
                );
                out.batch.push(q);
                return Emitted::Quarantined;
            }
        };
        let mut payload = std::mem::take(&mut out.scratch);
        payload.clear();
        let mut missing = std::mem::take(&mut out.missing);
        missing.clear();
        let checked = schema.write_typed(row, &mut payload, &mut missing);
        let emitted = match checked {
            Ok(()) => {
                let at = match out.categories.iter().position(|c| &*c.category == category) {
                    Some(at) => at,
                    None => {
                        let c = CategoryOut {
                            topic: self.kafka.topic(&schema.topic()).into(),
                            category: category.into(),
                            rows: self.metrics.rows_normalized.with_label_values(&[category]),
                            missing: vec![None; schema.fields.len()],
                        };
                        out.categories.push(c);
                        out.categories.len() - 1
                    }
                };
                let c = &mut out.categories[at];
                for &i in &missing {
                    if let Some(slot) = c.missing.get_mut(i) {
                        slot.get_or_insert_with(|| {
                            self.metrics.missing_fields.with_label_values(&[
                                category,
                                schema.fields[i].name.as_str(),
                                self.source_system.as_str(),
                            ])
                        })
                        .inc();
                    }
                }
                c.rows.inc();
                let key = schema.typed_key(row);
                let (topic, category) = (c.topic.clone(), c.category.clone());
                let key = out.slice(key.as_bytes());
                let payload = out.slice(&payload);
                out.batch.push(Produce {
                    topic,
                    key,
                    payload,
                    category,
                    event_time_ns: Some(event_time_ns),
                    permit: permit.clone(),
                });
                Emitted::Row
            }
            Err(e) => {
                let raw = typed_row_json(row);
                let q = self.quarantine_record(category, e.code(), e.to_string(), &raw, permit);
                out.batch.push(q);
                Emitted::Quarantined
            }
        };
        out.missing = missing;
        out.scratch = payload;
        emitted
    }

    /// Sends `raw` to `<category>_unqualified` with the reason; counted by category and reason.
    pub async fn quarantine(
        &self,
        category: &str,
        code: &str,
        reason: String,
        raw: &[u8],
        permit: &Inflight,
    ) {
        let q = self.quarantine_record(category, code, reason, raw, permit);
        self.produce(q).await;
    }

    /// The quarantine record of `raw` for `<category>_unqualified`, logged and counted.
    pub fn quarantine_record(
        &self,
        category: &str,
        code: &str,
        reason: String,
        raw: &[u8],
        permit: &Inflight,
    ) -> Produce {
        if code == NOT_REALTIME {
            // Every frame of a delayed symbol ends here: the metric and `ctl status` say it,
            // a warning per row would drown the log.
            tracing::debug!(category, reason = %reason, "quarantined");
        } else {
            warn!(category, reason = %reason, "quarantined");
        }
        self.metrics
            .rows_quarantined
            .with_label_values(&[category, "connector", code])
            .inc();
        let rec = UnqualifiedRecord::new(
            category,
            code,
            reason,
            raw,
            &self.source_system,
            &self.instance,
            marketlane_protocol::now_ns(),
        );
        let topic = format!(
            "{category}{}",
            marketlane_protocol::schema::UNQUALIFIED_SUFFIX
        );
        Produce {
            topic: self.kafka.topic(&topic).into(),
            key: Bytes::copy_from_slice(code.as_bytes()),
            payload: serde_json::to_vec(&rec).unwrap_or_default().into(),
            category: category.into(),
            event_time_ns: None,
            permit: permit.clone(),
        }
    }

    /// Hands a message to the producer, waiting while it is being restarted: a row is never
    /// dropped because its next hop is down for a moment.
    async fn produce(&self, p: Produce) {
        hand_over(self.names.name(KAFKA_PRODUCER).into(), vec![p], false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{Harness, json};
    use super::{IndicatorsNormalizer, L2Normalizer, NOT_REALTIME, TickNormalizer};
    use crate::names::{INDICATORS_NORMALIZER, L2_NORMALIZER, TICK_NORMALIZER};

    /// `(topic, reason_code or "row")` of each produced message.
    fn outcomes(got: &[crate::kafka::Produce]) -> Vec<(String, String)> {
        got.iter()
            .map(|p| {
                let v = json(p);
                let what = v["reason_code"].as_str().unwrap_or("row").to_string();
                (p.topic.to_string(), what)
            })
            .collect()
    }

    fn not_realtime(h: &Harness, category: &str) -> u64 {
        h.metrics
            .not_realtime_rows
            .with_label_values(&[category, "AAPL"])
            .get()
    }

    /// The frames of a symbol whose 6509 says delayed (as in machdat/broker-gateway's live
    /// recordings, `DPB`), then real-time, then frozen: (frame, what each category gives).
    #[tokio::test]
    async fn availability_decides_between_the_table_and_unqualified() {
        let tick = Harness::start(TickNormalizer::new(), TICK_NORMALIZER).await;
        let l2 = Harness::start(L2Normalizer::new(), L2_NORMALIZER).await;
        let ind = Harness::start(IndicatorsNormalizer::new(), INDICATORS_NORMALIZER).await;
        let q = |c: &str| (format!("{c}_unqualified"), NOT_REALTIME.to_string());
        let row = |c: &str| (c.to_string(), "row".to_string());
        type Want = (
            Vec<(String, String)>,
            Vec<(String, String)>,
            Vec<(String, String)>,
        );
        let table: Vec<(&str, Want)> = vec![
            // Full frame, delayed: the trade seeds; the opening quote and the statistic are
            // kept in _unqualified, not in the real-time tables.
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":10,"6509":"DPB","31":"271.67","7059":"3","84":"271.55","86":"271.66","88":"2","85":"4","7762":"1000"}"#,
                (
                    vec![],
                    vec![q("l2_market_data"), q("l2_market_data")],
                    vec![q("indicators_market_data")],
                ),
            ),
            // A delta without 6509: still delayed (IB sends 6509 only when it changes).
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":11,"31":"271.70","84":"271.60"}"#,
                (
                    vec![q("tick_market_data")],
                    vec![q("l2_market_data"), q("l2_market_data")],
                    vec![],
                ),
            ),
            // The availability changes to real-time: rows flow.
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":12,"6509":"RpB","31":"271.75","7059":"1"}"#,
                (vec![row("tick_market_data")], vec![], vec![]),
            ),
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":13,"31":"271.80","84":"271.70","7762":"1100"}"#,
                (
                    vec![row("tick_market_data")],
                    vec![row("l2_market_data"), row("l2_market_data")],
                    vec![row("indicators_market_data")],
                ),
            ),
            // Frozen after the close (`ZB`, observed in the same recordings): not real-time.
            (
                r#"{"topic":"smd+265598","conid":265598,"_updated":14,"6509":"ZB","31":"271.81","7059":"1"}"#,
                (vec![q("tick_market_data")], vec![], vec![]),
            ),
        ];
        for (i, (frame, (t, l, x))) in table.iter().enumerate() {
            assert_eq!(&outcomes(&tick.feed(frame, 1).await), t, "tick, frame {i}");
            let mut got = outcomes(&l2.feed(frame, 1).await);
            got.sort();
            assert_eq!(&got, l, "l2, frame {i}");
            assert_eq!(
                &outcomes(&ind.feed(frame, 1).await),
                x,
                "indicators, frame {i}"
            );
        }
        assert_eq!(not_realtime(&tick, "tick_market_data"), 2);
        assert_eq!(not_realtime(&l2, "l2_market_data"), 4);
        assert_eq!(not_realtime(&ind, "indicators_market_data"), 1);
        // The quarantined row is kept whole, with the reason naming the symbol and the code.
        let frozen = r#"{"topic":"smd+265598","conid":265598,"_updated":15,"31":"271.90"}"#;
        let got = tick.feed(frozen, 1).await;
        let rec: marketlane_protocol::UnqualifiedRecord =
            serde_json::from_slice(&got[0].payload).unwrap();
        assert_eq!(rec.reason_code, NOT_REALTIME);
        assert!(
            rec.reason.contains("AAPL") && rec.reason.contains("\"ZB\""),
            "{}",
            rec.reason
        );
        let kept: serde_json::Value = serde_json::from_str(&rec.raw).unwrap();
        assert_eq!(kept["price"], 271.9);
        assert_eq!(kept["symbol_identifier"], "AAPL");
        // A ladder of a symbol whose level 1 is not real-time is not real-time either.
        let ladder = r#"{"topic":"sbd+DU1+265598","data":[{"row":0,"focus":0,"price":"271.95","ask":"7"},{"row":1,"focus":0,"price":"271.85","bid":"3"}]}"#;
        l2.feed(
            r#"{"topic":"smd+265598","conid":265598,"_updated":16,"6509":"DPB"}"#,
            1,
        )
        .await;
        assert_eq!(
            outcomes(&l2.feed(ladder, 2).await),
            vec![q("l2_market_data"), q("l2_market_data")]
        );
        let st = ractor::call_t!(l2.normalizer, super::NormalizerMsg::GetState, 1000).unwrap();
        assert_eq!(st.not_realtime, 6);
        for h in [tick, l2, ind] {
            h.stop();
        }
    }
}
