//! The Kafka producer actor: one idempotent producer (`acks=all`) for every category topic.
//! Messages go to librdkafka directly from the actor (one ractor message per frame's rows);
//! librdkafka's delivery report comes back on the producer's own polling thread
//! ([`Delivery::delivery`]), which counts the acknowledgement and drops the row's share of the
//! frame's backpressure permit: no task and no actor message per row. A delivery that failed
//! for a reason that can pass (broker down, leader election, a purge while the producer is
//! replaced) is handed back to the producer after a back-off, never dropped (rows carry
//! deterministic ids, so a re-send that Kafka had in fact stored is collapsed downstream). An
//! error no retry can cure is not retried forever: a message too large for the broker is
//! replaced by a bounded quarantine record, and any other (authorization, unknown topic,
//! invalid configuration) fails the actor, so the supervisor restarts it and, if it keeps
//! failing, the pod exits where Kubernetes shows it.
//!
//! Memory: librdkafka's queue holds at most [`QUEUE_KBYTES`]; before that, the frames'
//! permits (`backpressure.rs`) stop the websocket reader.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{Histogram, IntCounter};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Serialize;
use tracing::{debug, error, warn};

use marketlane_protocol::UnqualifiedRecord;
use marketlane_protocol::schema::UNQUALIFIED_SUFFIX;

use crate::backpressure::{Inflight, InflightLimit};
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// librdkafka's local queue, in KiB (`queue.buffering.max.kbytes`): a bound on memory at any
/// rate; the in-flight permits normally stop the reader well before it fills.
pub const QUEUE_KBYTES: usize = 32 * 1024;

/// One message to produce.
#[derive(Debug)]
pub struct Produce {
    /// Shared with the normalizer's cache: no String per row.
    pub topic: Arc<str>,
    /// Slices of the normalizer's frame buffer: no allocation per row.
    pub key: Bytes,
    pub payload: Bytes,
    /// Category of the row, for metrics (shared like `topic`).
    pub category: Arc<str>,
    /// Source event time (ns), for the event→Kafka latency.
    pub event_time_ns: Option<i64>,
    pub permit: Inflight,
}

/// Messages on their way to the producer through its mailbox. ractor drops a mailbox with
/// its actor, and a dropped message releases its frame's permit as if Kafka had it; so
/// messages a producer never took (it failed with them in its mailbox, or while sending them)
/// are handed to the producer registered under `back_to` once it is restarted, like a failed
/// delivery. Without `back_to` (a replay's printer, tests) they are dropped.
#[derive(Debug)]
pub struct Handover {
    rows: VecDeque<Produce>,
    back_to: Option<Arc<str>>,
    /// Handed back from a producer that failed (counted by the one that takes it).
    handed_back: bool,
}

impl Handover {
    pub fn new(rows: Vec<Produce>, back_to: Option<Arc<str>>) -> Self {
        Self {
            rows: rows.into(),
            back_to,
            handed_back: false,
        }
    }

    /// The messages, in order; nothing is handed back once they are taken.
    pub fn take(mut self) -> Vec<Produce> {
        std::mem::take(&mut self.rows).into()
    }

    /// The next message; those not taken yet are handed back if this is dropped.
    fn next(&mut self) -> Option<Produce> {
        self.rows.pop_front()
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if self.rows.is_empty() {
            return;
        }
        let (Some(to), Ok(runtime)) = (self.back_to.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let rows: Vec<Produce> = std::mem::take(&mut self.rows).into();
        // One line per hand-over would be thousands in one failure: the restart warns once.
        debug!(rows = rows.len(), producer = %to, "the producer stopped with messages it had not taken; handing them to its restart");
        runtime.spawn(async move {
            // The failed producer may still be registered for a moment.
            tokio::time::sleep(Duration::from_millis(20)).await;
            hand_over(to, rows, true).await;
        });
    }
}

/// Casts `rows` to the producer registered as `to`, waiting while there is none (it is being
/// restarted): a row is never dropped because its next hop is down for a moment.
/// `handed_back`: they come from a failed producer's mailbox.
pub async fn hand_over(to: Arc<str>, mut rows: Vec<Produce>, handed_back: bool) {
    let mut waited = Duration::ZERO;
    loop {
        if let Some(producer) = ractor::registry::where_is(&to) {
            let mut handover = Handover::new(rows, Some(to.clone()));
            handover.handed_back = handed_back;
            match ActorRef::<ProducerMsg>::from(producer).cast(ProducerMsg::ProduceAll(handover)) {
                Ok(()) => return,
                Err(ractor::MessagingErr::SendErr(ProducerMsg::ProduceAll(back))) => {
                    rows = back.take();
                }
                // Any other outcome dropped the handover, which hands the rows back again.
                Err(_) => return,
            }
        }
        if waited.as_secs() >= 1 && waited.as_millis() % 5_000 < 20 {
            warn!(rows = rows.len(), producer = %to, "producer not available; holding rows");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
}

#[derive(RactorMessage)]
pub enum ProducerMsg {
    /// The messages of one frame, in order: one hand-over per frame, not per row.
    ProduceAll(Handover),
    /// Waits until everything handed over so far is acknowledged, up to the deadline (drain).
    Flush(Duration, RpcReplyPort<bool>),
    GetState(RpcReplyPort<ProducerSnapshot>),
    /// A failed delivery handed back by the delivery report, with its failed attempts so far
    /// (so its next failure waits twice as long).
    Resend(Handover, u32),
    /// A delivery failed for good (sent by the delivery report): the actor fails with it.
    Failed(String),
    /// Fault injection (control socket `fault`, failure-matrix row 11): the producer holds its
    /// mailbox for [`FAULT_HOLD`], as one stuck on a full queue would, then panics right
    /// after handing the next frame to librdkafka. So the failure always finds frames queued
    /// behind it and at least one message in librdkafka's queue (its batch is younger than
    /// `linger.ms`), whose two recoveries the failure-matrix test checks: dropping the
    /// producer purges what librdkafka holds, and each purged message comes back through its
    /// delivery report and is re-sent to the restarted producer after a back-off; the frames
    /// left in the mailbox are handed to the restarted producer.
    InjectPanic,
}

/// How long an injected fault holds the producer's mailbox before it arms.
const FAULT_HOLD: Duration = Duration::from_millis(500);
/// How long an armed fault waits for a frame before the producer fails without one.
const FAULT_IDLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProducerSnapshot {
    pub produced: u64,
    pub acknowledged: u64,
    pub delivery_retries: u64,
    pub in_flight_frames: usize,
    /// Messages too large for the broker, replaced by their quarantine record.
    pub too_large: u64,
}

#[derive(Clone)]
pub struct ProducerArgs {
    pub kafka: KafkaConfig,
    pub metrics: Arc<Metrics>,
    pub inflight: InflightLimit,
}

/// What travels with a message through librdkafka and comes back with its delivery report.
pub struct Pending {
    category: Arc<str>,
    event_time_ns: Option<i64>,
    started: Instant,
    permit: Inflight,
    /// Failed deliveries of this message so far (its back-off).
    attempt: u32,
}

/// Metric handles of one topic, looked up once instead of per acknowledgement.
struct TopicMetrics {
    produced: IntCounter,
    latency: Histogram,
    event_to_kafka: Histogram,
}

#[derive(Default)]
struct Counters {
    acknowledged: AtomicU64,
    retries: AtomicU64,
    too_large: AtomicU64,
}

/// The producer's context: librdkafka calls [`ProducerContext::delivery`] once per message.
pub struct Delivery {
    metrics: Arc<Metrics>,
    counters: Arc<Counters>,
    inflight: InflightLimit,
    topics: Mutex<HashMap<String, Arc<TopicMetrics>>>,
    /// The producer actor's registered name: a message to re-send goes to whichever actor
    /// holds it then (a restarted producer).
    name: Option<Arc<str>>,
    myself: ActorRef<ProducerMsg>,
    runtime: tokio::runtime::Handle,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    /// Shared by the rows of a frame with the same category and event time: no allocation
    /// per row. The frame's permit goes with the last of them.
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Arc<Pending>) {
        match result {
            Ok(m) => {
                self.acknowledged(m.topic(), &pending);
                drop(pending);
                self.metrics
                    .in_flight_frames
                    .set(self.inflight.in_flight() as i64);
            }
            Err((e, m)) => {
                let p = Produce {
                    topic: m.topic().into(),
                    key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
                    payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    category: pending.category.clone(),
                    event_time_ns: pending.event_time_ns,
                    permit: pending.permit.clone(),
                };
                self.failed(p, pending.attempt, e);
            }
        }
    }
}

impl Delivery {
    fn topic(&self, topic: &str, category: &str) -> Arc<TopicMetrics> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = topics.get(topic) {
            return t.clone();
        }
        let t = Arc::new(TopicMetrics {
            produced: self.metrics.kafka_produced.with_label_values(&[topic]),
            latency: self
                .metrics
                .kafka_produce_latency
                .with_label_values(&[topic]),
            event_to_kafka: self
                .metrics
                .event_to_sink_latency
                .with_label_values(&[category, "kafka"]),
        });
        topics.insert(topic.to_string(), t.clone());
        t
    }

    fn acknowledged(&self, topic: &str, p: &Pending) {
        self.counters.acknowledged.fetch_add(1, Ordering::Relaxed);
        let t = self.topic(topic, &p.category);
        t.produced.inc();
        t.latency.observe(p.started.elapsed().as_secs_f64());
        if let Some(at) = p.event_time_ns {
            let lag = (marketlane_protocol::now_ns() - at).max(0) as f64 / 1e9;
            t.event_to_kafka.observe(lag);
        }
    }

    fn failed(&self, p: Produce, attempt: u32, e: &KafkaError) {
        count_error(&self.metrics, &p.topic, e);
        match classify(e) {
            Verdict::Retry => {
                warn!(topic = %p.topic, error = %e, attempt, "delivery failed; re-sending");
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                self.resend(p, attempt + 1);
            }
            Verdict::TooLarge => {
                let failed = format!("kafka: {e}");
                match too_large(&self.metrics, &self.counters.too_large, p, e) {
                    // The quarantine record goes the normal way (and keeps the frame's
                    // permit until Kafka has it).
                    Some(q) => self.resend(q, 0),
                    None => self.fail(failed),
                }
            }
            Verdict::Fatal => {
                error!(topic = %p.topic, error = %e, "delivery failed for good");
                self.fail(format!("kafka: delivery to {} failed: {e}", p.topic));
                // The row stays held (its permit too) and goes to the restarted producer: if
                // the error persists, the supervisor's escalation ends the pod, not a drop.
                self.resend(p, attempt + 1);
            }
        }
    }

    fn fail(&self, why: String) {
        // The actor is gone already only if it failed for another message: nothing to add.
        let _ = self.myself.cast(ProducerMsg::Failed(why));
    }

    /// Hands `p` back to the producer actor after the back-off of its attempt (100 ms · 2^n,
    /// at most 5 s; none for a first attempt), waiting for a producer while it is restarted.
    fn resend(&self, p: Produce, attempt: u32) {
        let backoff = resend_backoff(attempt);
        let name = self.name.clone();
        let myself = self.myself.clone();
        let metrics = self.metrics.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(backoff).await;
            let mut p = p;
            let mut first = true;
            loop {
                let target = name
                    .as_deref()
                    .and_then(ractor::registry::where_is)
                    .map(ActorRef::<ProducerMsg>::from)
                    .unwrap_or_else(|| myself.clone());
                let handover = Handover::new(vec![p], name.clone());
                match target.cast(ProducerMsg::Resend(handover, attempt)) {
                    Ok(()) => return,
                    Err(ractor::MessagingErr::SendErr(ProducerMsg::Resend(back, _))) => {
                        match back.take().pop() {
                            Some(back) => p = back,
                            None => return,
                        }
                    }
                    Err(_) => return,
                }
                if first {
                    first = false;
                    metrics
                        .data_path_undelivered
                        .with_label_values(&["delivery_retry", "requeued"])
                        .inc();
                    warn!(topic = %p.topic, "producer restarting; holding a message to re-send");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
}

/// The wait before the `attempt`th re-send of a message: none for a first attempt (a
/// quarantine record replacing a message too large), then 100 ms · 2^(attempt−1), at most 5 s.
fn resend_backoff(attempt: u32) -> Duration {
    match attempt {
        0 => Duration::ZERO,
        n => (Duration::from_millis(100) * 2u32.pow(n.min(7) - 1)).min(Duration::from_secs(5)),
    }
}

pub struct ProducerState {
    producer: Arc<ThreadedProducer<Delivery>>,
    metrics: Arc<Metrics>,
    inflight: InflightLimit,
    produced: u64,
    counters: Arc<Counters>,
    /// Whether this producer has logged taking its predecessor's mailbox.
    warned_handed_back: bool,
    /// An injected fault fails the actor after its next message (see [`ProducerMsg::InjectPanic`]).
    fault_armed: bool,
}

pub struct KafkaProducer;

/// The producer's librdkafka settings: idempotent, every replica's acknowledgement, and no
/// delivery deadline. Also what `marketlane-message-bench` produces with.
pub fn producer_config(kafka: &KafkaConfig) -> rdkafka::ClientConfig {
    let mut c = super::client_config(kafka);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &kafka.compression)
        .set("linger.ms", kafka.linger_ms.to_string())
        // Kafka down (failure row 7): keep retrying without a deadline; the in-flight
        // limit, not a timeout, bounds what waits.
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", QUEUE_KBYTES.to_string());
    c
}

impl Actor for KafkaProducer {
    type Msg = ProducerMsg;
    type State = ProducerState;
    type Arguments = ProducerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ProducerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let counters = Arc::new(Counters::default());
        let context = Delivery {
            metrics: args.metrics.clone(),
            counters: counters.clone(),
            inflight: args.inflight.clone(),
            topics: Mutex::new(HashMap::new()),
            name: myself.get_name().map(Arc::from),
            myself,
            runtime: tokio::runtime::Handle::current(),
        };
        let producer: ThreadedProducer<Delivery> =
            producer_config(&args.kafka).create_with_context(context)?;
        Ok(ProducerState {
            producer: Arc::new(producer),
            metrics: args.metrics,
            inflight: args.inflight,
            produced: 0,
            counters,
            warned_handed_back: false,
            fault_armed: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProducerMsg::Resend(mut resent, attempt) => {
                while let Some(p) = resent.next() {
                    send(state, p, Instant::now(), &mut None, attempt).await?;
                }
            }
            ProducerMsg::ProduceAll(mut batch) => {
                if batch.handed_back {
                    if !state.warned_handed_back {
                        state.warned_handed_back = true;
                        warn!(
                            "messages left in the failed producer's mailbox are handed to this one (counted in marketlane_data_path_undelivered_total{{stage=\"producer_mailbox\"}})"
                        );
                    }
                    state
                        .metrics
                        .data_path_undelivered
                        .with_label_values(&["producer_mailbox", "requeued"])
                        .inc_by(batch.rows.len() as u64);
                }
                // One clock read per frame: its rows are handed over together.
                let started = Instant::now();
                let mut shared = None;
                while let Some(p) = batch.next() {
                    state.produced += 1;
                    send(state, p, started, &mut shared, 0).await?;
                }
            }
            ProducerMsg::Flush(deadline, reply) => {
                let producer = state.producer.clone();
                let done = tokio::task::spawn_blocking(move || producer.flush(deadline).is_ok())
                    .await
                    .unwrap_or(false);
                let _ = reply.send(done);
            }
            ProducerMsg::GetState(reply) => {
                let c = &state.counters;
                let _ = reply.send(ProducerSnapshot {
                    produced: state.produced,
                    acknowledged: c.acknowledged.load(Ordering::Relaxed),
                    delivery_retries: c.retries.load(Ordering::Relaxed),
                    in_flight_frames: state.inflight.in_flight(),
                    too_large: c.too_large.load(Ordering::Relaxed),
                });
            }
            ProducerMsg::Failed(why) => return Err(why.into()),
            ProducerMsg::InjectPanic => {
                // Failing at once found nothing in the mailbox in one run of seven.
                tokio::time::sleep(FAULT_HOLD).await;
                state.fault_armed = true;
                // An idle lane sends no frame: this fails the actor then (a restarted actor
                // is another one, so this never reaches it).
                myself.send_after(FAULT_IDLE, || {
                    ProducerMsg::Failed("fault injected over the control socket".into())
                });
                return Ok(());
            }
        }
        if state.fault_armed {
            panic!("fault injected over the control socket");
        }
        Ok(())
    }
}

/// Hands one message to librdkafka; its delivery report does the rest ([`Delivery`]). A full
/// local queue waits here, which stalls the mailbox and so the connector (backpressure); an
/// error that can pass is retried with back-off (100 ms · 2^n ≤ 5 s); one that cannot is
/// returned, failing the actor, except a message too large, which is quarantined instead.
async fn send(
    state: &ProducerState,
    p: Produce,
    started: Instant,
    shared: &mut Option<Arc<Pending>>,
    attempt: u32,
) -> Result<(), ActorProcessingErr> {
    let Produce {
        mut topic,
        mut key,
        mut payload,
        category,
        event_time_ns,
        permit,
    } = p;
    // The previous row's opaque when it says the same (a frame's rows do).
    let mut pending = match shared {
        Some(s)
            if Arc::ptr_eq(&s.category, &category)
                && s.event_time_ns == event_time_ns
                && s.permit.same(&permit)
                && s.attempt == attempt =>
        {
            s.clone()
        }
        _ => {
            let s = Arc::new(Pending {
                category,
                event_time_ns,
                started,
                permit,
                attempt,
            });
            *shared = Some(s.clone());
            s
        }
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let record = BaseRecord::with_opaque_to(&topic, pending)
            .key(&key[..])
            .payload(&payload[..]);
        let e = match state.producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, record)) => {
                pending = record.delivery_opaque;
                e
            }
        };
        if let KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) = e {
            debug!(%topic, "local producer queue full; waiting");
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        count_error(&state.metrics, &topic, &e);
        match classify(&e) {
            Verdict::Retry => {
                error!(%topic, error = %e, ?backoff, "cannot enqueue message; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Verdict::TooLarge => {
                let p = Produce {
                    topic,
                    key,
                    payload,
                    category: pending.category.clone(),
                    event_time_ns: pending.event_time_ns,
                    permit: pending.permit.clone(),
                };
                drop(pending);
                let Some(q) = too_large(&state.metrics, &state.counters.too_large, p, &e) else {
                    return Err(format!("kafka: {e}").into());
                };
                (topic, key, payload) = (q.topic, q.key, q.payload);
                pending = Arc::new(Pending {
                    category: q.category,
                    event_time_ns: q.event_time_ns,
                    started: Instant::now(),
                    permit: q.permit,
                    attempt: 0,
                });
            }
            Verdict::Fatal => {
                return Err(format!("kafka: cannot produce to {topic}: {e}").into());
            }
        }
    }
}

fn count_error(metrics: &Metrics, topic: &str, e: &KafkaError) {
    metrics
        .kafka_produce_errors
        .with_label_values(&[topic, error_kind(e)])
        .inc();
}

/// What a produce error calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It can pass by itself (broker down, leader moving, timeout, throttling).
    Retry,
    /// This message can never be stored: quarantine it instead.
    TooLarge,
    /// No retry can cure it (authorization, unknown or invalid topic, configuration): fail.
    Fatal,
}

/// Classifies a produce error; unknown codes are retried (the old behaviour, and the safe one
/// for transient broker states librdkafka may add).
pub fn classify(e: &KafkaError) -> Verdict {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => Verdict::TooLarge,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnsupportedSASLMechanism
            | C::UnknownTopic
            | C::InvalidTopic
            | C::InvalidConfig
            | C::InvalidArgument
            | C::InvalidRequiredAcks
            | C::InvalidRecord
            | C::PolicyViolation
            | C::UnsupportedCompressionType
            | C::UnsupportedForMessageFormat
            | C::Fatal,
        ) => Verdict::Fatal,
        _ => Verdict::Retry,
    }
}

/// The bounded quarantine record that replaces a message too large for the broker, with the
/// original's permit; `None` when the message already was a quarantine record (bounded by
/// construction, so something else is wrong).
fn too_large(metrics: &Metrics, count: &AtomicU64, p: Produce, e: &KafkaError) -> Option<Produce> {
    if p.topic.ends_with(UNQUALIFIED_SUFFIX) {
        error!(topic = %p.topic, error = %e, bytes = p.payload.len(), "a quarantine record is too large for the broker");
        return None;
    }
    count.fetch_add(1, Ordering::Relaxed);
    // The row's own meta fields say where it came from.
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        source_system_name: String,
        #[serde(default)]
        component_instance_name: String,
    }
    let meta: Meta = serde_json::from_slice(&p.payload).unwrap_or_default();
    let reason = format!(
        "{} bytes exceed the broker's message limit: {e}",
        p.payload.len()
    );
    warn!(topic = %p.topic, bytes = p.payload.len(), "message too large for Kafka; quarantined");
    metrics
        .rows_quarantined
        .with_label_values(&[&*p.category, "producer", "too_large"])
        .inc();
    let rec = UnqualifiedRecord::new(
        &p.category,
        "too_large",
        reason,
        &p.payload,
        &meta.source_system_name,
        &meta.component_instance_name,
        marketlane_protocol::now_ns(),
    );
    Some(Produce {
        topic: format!("{}{UNQUALIFIED_SUFFIX}", p.topic).into(),
        key: Bytes::from_static(b"too_large"),
        payload: serde_json::to_vec(&rec).unwrap_or_default().into(),
        category: p.category,
        event_time_ns: None,
        permit: p.permit,
    })
}

fn error_kind(e: &KafkaError) -> &'static str {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => "queue_full",
        Some(RDKafkaErrorCode::MessageTimedOut) => "timed_out",
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => "too_large",
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => "unknown_topic",
        // The producer was dropped (restart or drain) with the message queued or in flight.
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => "purged",
        Some(_) => "broker",
        None => "client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_delivery_waits_longer_each_time_up_to_five_seconds() {
        let ms = |n| resend_backoff(n).as_millis();
        let waits: Vec<u128> = (0..10).map(ms).collect();
        assert_eq!(waits, [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(ms(u32::MAX), 5000);
    }

    fn row(n: u8) -> Produce {
        Produce {
            topic: "t".into(),
            key: Bytes::from(vec![n]),
            payload: Bytes::from(vec![n]),
            category: "c".into(),
            event_time_ns: None,
            permit: Inflight::none(),
        }
    }

    /// What a producer's mailbox holds when it fails is dropped with it: a handover dropped
    /// with messages still in it casts them to the producer registered under its name (here
    /// registered only after the drop, as a restarted one is); one whose messages were taken
    /// casts nothing.
    #[tokio::test]
    async fn a_dropped_handover_reaches_the_restarted_producer() {
        use crate::normalizer::testkit::FakeProducer;
        let name: Arc<str> = format!("handover_test_{}", std::process::id()).into();
        let sink = Arc::new(Mutex::new(Vec::new()));
        drop(Handover::new(vec![row(1), row(2)], Some(name.clone())));
        let taken = Handover::new(vec![row(3)], Some(name.clone())).take();
        assert_eq!(taken.len(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (producer, handle) = Actor::spawn(Some(name.to_string()), FakeProducer, sink.clone())
            .await
            .expect("spawn");
        let until = Instant::now() + Duration::from_secs(5);
        while sink.lock().unwrap().len() < 2 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let keys: Vec<u8> = sink.lock().unwrap().iter().map(|p| p.key[0]).collect();
        assert_eq!(keys, [1, 2], "in order, once, and nothing of the taken one");
        producer.stop(None);
        let _ = handle.await;
    }

    #[test]
    fn errors_no_retry_can_cure_are_not_retried() {
        let produce = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::QueueFull)),
            Verdict::Retry
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::BrokerTransportFailure)),
            Verdict::Retry
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::NotLeaderForPartition)),
            Verdict::Retry
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::MessageSizeTooLarge)),
            Verdict::TooLarge
        );
        for fatal in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::InvalidConfig,
        ] {
            assert_eq!(classify(&produce(fatal)), Verdict::Fatal, "{fatal:?}");
        }
    }

    #[test]
    fn a_message_too_large_becomes_a_bounded_quarantine_record() {
        let metrics = Metrics::new();
        let count = AtomicU64::new(0);
        let field = "9".repeat(4 * 1024 * 1024);
        let payload = format!(
            r#"{{"symbol":"AAPL","note":"{field}","source_system_name":"ib","component_instance_name":"p0"}}"#
        )
        .into_bytes();
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let p = Produce {
            topic: "x_tick_market_data".into(),
            key: Bytes::from_static(b"AAPL"),
            payload: payload.clone().into(),
            category: "tick_market_data".into(),
            event_time_ns: None,
            permit: Inflight::none(),
        };
        let q = too_large(&metrics, &count, p, &e).expect("quarantined");
        assert_eq!(&*q.topic, "x_tick_market_data_unqualified");
        assert!(q.payload.len() < 256 * 1024, "{}", q.payload.len());
        let rec: UnqualifiedRecord = serde_json::from_slice(&q.payload).unwrap();
        assert_eq!(rec.reason_code, "too_large");
        assert_eq!(rec.component_instance_name, "p0");
        assert!(
            rec.reason
                .contains(&format!("of {} bytes kept", payload.len()))
        );
        assert_eq!(count.load(Ordering::Relaxed), 1);
        // A quarantine record that is too large is not quarantined again: the actor fails.
        assert!(too_large(&metrics, &count, q, &e).is_none());
    }
}
