//! The Kafka producer actor: one idempotent producer (`acks=all`) for every category topic.
//! A row's backpressure permit is released only when Kafka has acknowledged it; a failed
//! delivery is re-sent, never dropped (rows carry deterministic ids, so a re-send that Kafka
//! had in fact stored is collapsed downstream).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use tracing::{debug, error, warn};

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
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProducerSnapshot {
    pub produced: u64,
    pub acknowledged: u64,
    pub delivery_retries: u64,
    pub in_flight_frames: usize,
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
}

pub struct KafkaProducer;

impl Actor for KafkaProducer {
    type Msg = ProducerMsg;
    type State = ProducerState;
    type Arguments = ProducerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
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
                send(state, p).await;
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
                });
            }
        }
        Ok(())
    }
}

/// Hands one message to librdkafka and spawns the wait for its acknowledgement. A full local
/// queue waits here, which stalls the mailbox and so the connector (backpressure).
async fn send(state: &ProducerState, p: Produce) {
    let started = Instant::now();
    loop {
        let record = FutureRecord::to(&p.topic).key(&p.key).payload(&p.payload);
        match state.producer.send_result(record) {
            Ok(delivery) => {
                let producer = state.producer.clone();
                let metrics = state.metrics.clone();
                let acknowledged = state.acknowledged.clone();
                let retries = state.retries.clone();
                let inflight = state.inflight.clone();
                tokio::spawn(async move {
                    let mut outcome = delivery.await;
                    let mut backoff = Duration::from_millis(100);
                    loop {
                        match outcome {
                            Ok(Ok(_)) => break,
                            Ok(Err((e, _))) => {
                                metrics
                                    .kafka_produce_errors
                                    .with_label_values(&[p.topic.as_str(), error_kind(&e)])
                                    .inc();
                                warn!(topic = %p.topic, error = %e, "delivery failed; re-sending");
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
                return;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                debug!(topic = %p.topic, "local producer queue full; waiting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => {
                state
                    .metrics
                    .kafka_produce_errors
                    .with_label_values(&[p.topic.as_str(), error_kind(&e)])
                    .inc();
                error!(topic = %p.topic, error = %e, "cannot enqueue message; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
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
