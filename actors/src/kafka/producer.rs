//! The Kafka producer actor: one idempotent producer (`acks=all`) for every category topic.
//! A row's backpressure permit is released only when Kafka has acknowledged it; a delivery
//! that failed for a reason that can pass (broker down, leader election, timeout) is re-sent
//! with back-off, never dropped (rows carry deterministic ids, so a re-send that Kafka had in
//! fact stored is collapsed downstream). An error no retry can cure is not retried forever:
//! a message too large for the broker is replaced by a bounded quarantine record, and any
//! other (authorization, unknown topic, invalid configuration) fails the actor, so the
//! supervisor restarts it and, if it keeps failing, the pod exits where Kubernetes shows it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use tracing::{debug, error, warn};

use marketlane_protocol::UnqualifiedRecord;
use marketlane_protocol::schema::UNQUALIFIED_SUFFIX;

use crate::backpressure::{Inflight, InflightLimit};
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// One message to produce.
#[derive(Debug)]
pub struct Produce {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    /// Category of the row, for metrics.
    pub category: String,
    /// Source event time (ns), for the event→Kafka latency.
    pub event_time_ns: Option<i64>,
    pub permit: Inflight,
}

#[derive(RactorMessage)]
pub enum ProducerMsg {
    Produce(Produce),
    /// Waits until everything handed over so far is acknowledged, up to the deadline (drain).
    Flush(Duration, RpcReplyPort<bool>),
    GetState(RpcReplyPort<ProducerSnapshot>),
    /// A delivery failed for good (sent by the delivery task): the actor fails with it.
    Failed(String),
}

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

pub struct ProducerState {
    producer: FutureProducer,
    metrics: Arc<Metrics>,
    inflight: InflightLimit,
    produced: u64,
    acknowledged: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    too_large: Arc<AtomicU64>,
    myself: ActorRef<ProducerMsg>,
}

pub struct KafkaProducer;

impl Actor for KafkaProducer {
    type Msg = ProducerMsg;
    type State = ProducerState;
    type Arguments = ProducerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ProducerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let producer: FutureProducer = super::client_config(&args.kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &args.kafka.compression)
            .set("linger.ms", args.kafka.linger_ms.to_string())
            // Kafka down (failure row 7): keep retrying without a deadline; the in-flight
            // limit, not a timeout, bounds what waits.
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .create()?;
        Ok(ProducerState {
            producer,
            metrics: args.metrics,
            inflight: args.inflight,
            produced: 0,
            acknowledged: Arc::new(AtomicU64::new(0)),
            retries: Arc::new(AtomicU64::new(0)),
            too_large: Arc::new(AtomicU64::new(0)),
            myself,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProducerMsg::Produce(p) => {
                state.produced += 1;
                send(state, p).await?;
            }
            ProducerMsg::Flush(deadline, reply) => {
                let producer = state.producer.clone();
                let done = tokio::task::spawn_blocking(move || producer.flush(deadline).is_ok())
                    .await
                    .unwrap_or(false);
                let _ = reply.send(done);
            }
            ProducerMsg::GetState(reply) => {
                let _ = reply.send(ProducerSnapshot {
                    produced: state.produced,
                    acknowledged: state.acknowledged.load(Ordering::Relaxed),
                    delivery_retries: state.retries.load(Ordering::Relaxed),
                    in_flight_frames: state.inflight.in_flight(),
                    too_large: state.too_large.load(Ordering::Relaxed),
                });
            }
            ProducerMsg::Failed(why) => return Err(why.into()),
        }
        Ok(())
    }
}

/// Hands one message to librdkafka and spawns the wait for its acknowledgement. A full local
/// queue waits here, which stalls the mailbox and so the connector (backpressure); an error
/// that can pass is retried with back-off (100 ms · 2^n ≤ 5 s); one that cannot is returned,
/// failing the actor, except a message too large, which is quarantined instead.
async fn send(state: &ProducerState, mut p: Produce) -> Result<(), ActorProcessingErr> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let record = FutureRecord::to(&p.topic).key(&p.key).payload(&p.payload);
        match state.producer.send_result(record) {
            Ok(delivery) => {
                spawn_delivery(state, p, delivery, started);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                debug!(topic = %p.topic, "local producer queue full; waiting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => {
                count_error(&state.metrics, &p.topic, &e);
                match classify(&e) {
                    Verdict::Retry => {
                        error!(topic = %p.topic, error = %e, ?backoff, "cannot enqueue message; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Verdict::TooLarge => match too_large(&state.metrics, &state.too_large, p, &e) {
                        Some(q) => p = q,
                        None => return Err(format!("kafka: {e}").into()),
                    },
                    Verdict::Fatal => {
                        return Err(format!("kafka: cannot produce to {}: {e}", p.topic).into());
                    }
                }
            }
        }
    }
}

/// Waits for the acknowledgement of one message in the background; re-sends it while the
/// error can pass, and tells the actor when it cannot.
fn spawn_delivery(
    state: &ProducerState,
    p: Produce,
    delivery: rdkafka::producer::DeliveryFuture,
    started: Instant,
) {
    let producer = state.producer.clone();
    let metrics = state.metrics.clone();
    let acknowledged = state.acknowledged.clone();
    let retries = state.retries.clone();
    let too_large_count = state.too_large.clone();
    let inflight = state.inflight.clone();
    let myself = state.myself.clone();
    tokio::spawn(async move {
        let mut outcome = delivery.await;
        let mut backoff = Duration::from_millis(100);
        loop {
            match outcome {
                Ok(Ok(_)) => break,
                Ok(Err((e, _))) => {
                    count_error(&metrics, &p.topic, &e);
                    match classify(&e) {
                        Verdict::Retry => {
                            warn!(topic = %p.topic, error = %e, "delivery failed; re-sending");
                        }
                        Verdict::TooLarge => {
                            let failed = format!("kafka: {e}");
                            match too_large(&metrics, &too_large_count, p, &e) {
                                Some(q) => {
                                    // The quarantine record goes the normal way (and keeps
                                    // the frame's permit until Kafka has it).
                                    let _ = myself.cast(ProducerMsg::Produce(q));
                                }
                                None => {
                                    let _ = myself.cast(ProducerMsg::Failed(failed));
                                }
                            }
                            return;
                        }
                        Verdict::Fatal => {
                            error!(topic = %p.topic, error = %e, "delivery failed for good");
                            let _ = myself.cast(ProducerMsg::Failed(format!(
                                "kafka: delivery to {} failed: {e}",
                                p.topic
                            )));
                            return;
                        }
                    }
                }
                Err(_) => warn!(topic = %p.topic, "delivery canceled; re-sending"),
            }
            retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            outcome = Ok(producer
                .send(
                    FutureRecord::to(&p.topic).key(&p.key).payload(&p.payload),
                    Duration::from_secs(0),
                )
                .await);
        }
        acknowledged.fetch_add(1, Ordering::Relaxed);
        metrics
            .kafka_produced
            .with_label_values(&[p.topic.as_str()])
            .inc();
        metrics
            .kafka_produce_latency
            .with_label_values(&[p.topic.as_str()])
            .observe(started.elapsed().as_secs_f64());
        if let Some(t) = p.event_time_ns {
            let lag = (marketlane_protocol::now_ns() - t).max(0) as f64 / 1e9;
            metrics
                .event_to_sink_latency
                .with_label_values(&[p.category.as_str(), "kafka"])
                .observe(lag);
        }
        drop(p.permit);
        metrics.in_flight_frames.set(inflight.in_flight() as i64);
    });
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
        .with_label_values(&[p.category.as_str(), "producer", "too_large"])
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
        topic: format!("{}{UNQUALIFIED_SUFFIX}", p.topic),
        key: "too_large".into(),
        payload: serde_json::to_vec(&rec).unwrap_or_default(),
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
        Some(_) => "broker",
        None => "client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            key: "AAPL".into(),
            payload: payload.clone(),
            category: "tick_market_data".into(),
            event_time_ns: None,
            permit: Inflight::none(),
        };
        let q = too_large(&metrics, &count, p, &e).expect("quarantined");
        assert_eq!(q.topic, "x_tick_market_data_unqualified");
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
