//! A calculator worker: owns the windows of the symbols routed to it (a symbol always goes to
//! the same worker), recomputes the specs a row touched once per coalescing interval, produces
//! each value as an `indicators_market_data` row and writes it to Redis.
//!
//! Backpressure: the consumer needs one of the worker's permits per batch it hands over; the
//! permit returns when the batch is applied. A slow Redis slows the flush, so permits run out
//! and the consumer stops polling Kafka. Redis down (failure row 9): the values stay in
//! `pending` (at most one per key, so memory is bounded by the key count), the windows keep
//! being updated, and the write is retried with back-off until Redis is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketlane_protocol::Scalar;
use marketlane_protocol::category::{INDICATORS, L2, TICK};
use marketlane_protocol::typed_row::IdName;
use prometheus::IntCounter;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, info_span, warn};

use super::ConsumerMsg;
use super::Shared;
use super::engine::{Applied, CalcRow, Engine};
use super::redis::{RedisSink, Update};
use crate::backpressure::{Inflight, InflightLimit, InflightWatch};
use crate::normalizer::{Outbox, RowEmitter};

#[derive(RactorMessage)]
pub enum WorkerMsg {
    /// Rows of one poll. `live` false: a warm-restart refill row (updates the windows only).
    Rows {
        rows: Vec<(CalcRow, bool)>,
        permit: OwnedSemaphorePermit,
    },
    /// The partitions carrying these symbols of `category` moved to another pod: drop their
    /// windows and every value not yet written, so this pod writes nothing more for them.
    Forget {
        category: &'static str,
        symbols: Vec<Arc<str>>,
    },
    /// Coalescing tick: compute what changed, produce it, write Redis.
    Flush,
    /// Flushes now; replies whether Redis holds every value computed so far, with the flushes
    /// whose indicator rows Kafka has not yet acknowledged (checkpoint). The caller waits for
    /// those, never the worker: a worker waiting on Kafka would stop its Redis writes too.
    Barrier(RpcReplyPort<Flushed>),
    GetState(RpcReplyPort<WorkerSnapshot>),
}

/// A worker's answer to a checkpoint's [`WorkerMsg::Barrier`].
#[derive(Debug, Clone, Default)]
pub struct Flushed {
    /// Redis holds every value computed from the rows applied so far.
    pub written: bool,
    /// The flushes Kafka had not acknowledged at the barrier.
    pub unacknowledged: Vec<InflightWatch>,
}

impl Flushed {
    /// Waits up to `timeout` for Kafka to acknowledge every flush the barrier found
    /// outstanding; whether Redis and Kafka both hold everything up to the barrier.
    pub async fn settled(&self, timeout: Duration) -> bool {
        if !self.written {
            return false;
        }
        let until = tokio::time::Instant::now() + timeout;
        while self.unacknowledged.iter().any(InflightWatch::pending) {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(ACK_POLL).await;
        }
        true
    }
}

/// How often [`Flushed::settled`] looks at the outstanding flushes.
const ACK_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerSnapshot {
    pub worker: usize,
    pub symbols: usize,
    pub rows_held: usize,
    pub applied: u64,
    pub duplicates: u64,
    pub late: u64,
    pub values_computed: u64,
    pub keys_written: u64,
    pub pending_keys: usize,
    pub failed_writes: u64,
    /// Flushes whose indicator rows Kafka has not yet acknowledged.
    pub unacknowledged_flushes: usize,
    /// Symbols dropped because their partition moved to another pod.
    pub forgotten_symbols: u64,
    pub redis_connected: bool,
    pub last_error: Option<String>,
}

#[derive(Clone)]
pub struct WorkerArgs {
    pub index: usize,
    pub shared: Arc<Shared>,
}

pub struct WorkerState {
    index: usize,
    /// `calculator` label of the metrics: the worker's registered name.
    label: String,
    shared: Arc<Shared>,
    engine: Engine,
    sink: RedisSink,
    /// Specs per symbol whose value may have changed since the last flush: keyed by symbol so
    /// a symbol touched again within the interval costs a lookup; a new one shares the row's
    /// interned symbol.
    dirty: HashMap<Arc<str>, Vec<usize>>,
    /// Reused by `apply` for the specs one row touched.
    touched: Vec<usize>,
    /// `calculator_rows` by [category][outcome], looked up once.
    row_counters: [[IntCounter; 3]; 2],
    /// Values not yet in Redis, by key: the newest wins (coalescing).
    pending: HashMap<(usize, Arc<str>), Update>,
    retry_backoff: Duration,
    retry_at: Option<Instant>,
    /// One permit per flush that produced rows, released when Kafka acknowledged the last of
    /// them; bounds the flushes Kafka may hold (see [`MAX_UNACKNOWLEDGED_FLUSHES`]). A
    /// checkpoint commits Kafka offsets only once the permits held at its barrier are
    /// released, so a crash between a value and its acknowledgement replays the rows that made
    /// it.
    produced: InflightLimit,
    /// The permits of `produced` still held, seen from outside (what a barrier hands over).
    unacknowledged: Vec<InflightWatch>,
    /// The indicator rows of one flush, handed to the producer together.
    outbox: Outbox,
    snapshot: WorkerSnapshot,
}

/// Flushes whose indicator rows may wait for Kafka at once (the flush waits for a permit
/// beyond that, which holds the rows back: Kafka down stops the calculators too).
const MAX_UNACKNOWLEDGED_FLUSHES: usize = 4_096;

pub struct CalculatorWorker;

impl Actor for CalculatorWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let c = &args.shared.config;
        let sink = RedisSink::connect(&c.redis, c.key_ttl, c.publish)?;
        // A restarted worker lost its windows: the consumers replay from their warm-restart
        // start; the other workers drop those rows as duplicates.
        for name in &args.shared.consumers {
            if let Some(consumer) = args.shared.names.lookup::<ConsumerMsg>(name) {
                info!(worker = args.index, consumer = %name, "asking for a refill");
                let _ = consumer.cast(ConsumerMsg::Rewind);
            }
        }
        myself.send_after(c.coalesce_interval, || WorkerMsg::Flush);
        let row_counters = [TICK, L2].map(|category| {
            [Applied::New, Applied::Duplicate, Applied::Late].map(|o| {
                args.shared
                    .metrics
                    .calculator_rows
                    .with_label_values(&[category, o.label()])
            })
        });
        Ok(WorkerState {
            index: args.index,
            label: crate::names::calculator_worker(args.index),
            engine: Engine::new(args.shared.specs.clone()),
            shared: args.shared,
            sink,
            dirty: HashMap::new(),
            touched: Vec::new(),
            row_counters,
            pending: HashMap::new(),
            retry_backoff: Duration::from_millis(100),
            retry_at: None,
            produced: InflightLimit::new(MAX_UNACKNOWLEDGED_FLUSHES),
            unacknowledged: Vec::new(),
            outbox: Outbox::default(),
            snapshot: WorkerSnapshot {
                worker: args.index,
                ..Default::default()
            },
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Rows { rows, permit } => {
                state.apply(rows);
                drop(permit);
            }
            WorkerMsg::Flush => {
                state.flush().await;
                myself.send_after(state.shared.config.coalesce_interval, || WorkerMsg::Flush);
            }
            WorkerMsg::Forget { category, symbols } => state.forget(category, &symbols),
            WorkerMsg::Barrier(reply) => {
                state.retry_at = None;
                state.flush().await;
                let _ = reply.send(Flushed {
                    written: state.pending.is_empty() && state.dirty.is_empty(),
                    unacknowledged: state.unacknowledged.clone(),
                });
            }
            WorkerMsg::GetState(reply) => {
                let mut s = state.snapshot.clone();
                s.symbols = state.engine.symbols();
                s.rows_held = state.engine.rows_held();
                s.pending_keys = state.pending.len();
                s.unacknowledged_flushes = state.produced.in_flight();
                s.redis_connected = state.sink.is_connected();
                let _ = reply.send(s);
            }
        }
        Ok(())
    }
}

impl WorkerState {
    fn forget(&mut self, category: &'static str, symbols: &[Arc<str>]) {
        let specs = self.shared.specs.clone();
        let gone = |i: usize, symbol: &str| {
            specs[i].source == category && symbols.iter().any(|s| **s == *symbol)
        };
        self.dirty.retain(|symbol, specs_of| {
            specs_of.retain(|i| !gone(*i, symbol));
            !specs_of.is_empty()
        });
        self.pending.retain(|(i, symbol), _| !gone(*i, symbol));
        for symbol in symbols {
            self.engine.forget(category, symbol);
        }
        self.snapshot.forgotten_symbols += symbols.len() as u64;
        info!(
            worker = self.index,
            category,
            symbols = symbols.len(),
            "windows of moved partitions dropped"
        );
    }

    fn apply(&mut self, rows: Vec<(CalcRow, bool)>) {
        for (row, live) in rows {
            let category = match row {
                CalcRow::Trade(_) => 0,
                CalcRow::Book(_) => 1,
            };
            let outcome = self.engine.apply_into(&row, &mut self.touched);
            let (at, count) = match outcome {
                Applied::New => (0, &mut self.snapshot.applied),
                Applied::Duplicate => (1, &mut self.snapshot.duplicates),
                Applied::Late => (2, &mut self.snapshot.late),
            };
            *count += 1;
            self.row_counters[category][at].inc();
            if live && !self.touched.is_empty() {
                let specs_of = match self.dirty.get_mut(row.symbol()) {
                    Some(v) => v,
                    None => self.dirty.entry(row.symbol().clone()).or_default(),
                };
                for &i in &self.touched {
                    if !specs_of.contains(&i) {
                        specs_of.push(i);
                    }
                }
            }
        }
    }

    /// Computes the dirty values, produces them to Kafka, and writes everything pending to
    /// Redis unless a retry back-off is running.
    async fn flush(&mut self) {
        let now = marketlane_protocol::now_ns();
        // In (spec, symbol) order, as before the map: the rows go out in a stable order.
        let mut dirty: Vec<(usize, Arc<str>)> = self
            .dirty
            .drain()
            .flat_map(|(symbol, specs_of)| specs_of.into_iter().map(move |i| (i, symbol.clone())))
            .collect();
        dirty.sort_unstable();
        // One share per produced row; the permit returns when Kafka acknowledged them all.
        let permit = if dirty.is_empty() {
            Inflight::none()
        } else {
            self.produced.acquire().await.unwrap_or_else(Inflight::none)
        };
        self.unacknowledged.retain(InflightWatch::pending);
        let watch = permit.watch();
        if watch.pending() {
            self.unacknowledged.push(watch);
        }
        for (i, symbol) in dirty {
            let Some(v) = self.engine.evaluate(i, &symbol) else {
                continue;
            };
            let spec = &self.engine.specs()[i];
            let span = info_span!("calculator", team = %spec.team, indicator = %spec.name, %symbol);
            let update = Update {
                team: spec.team.clone(),
                indicator: spec.name.clone(),
                symbol: symbol.clone(),
                kind: spec.kind.name(),
                indicator_type: spec.kind.indicator_type(),
                window: spec.window.label(),
                value: v.value,
                unit: v.unit,
                as_of: v.as_of,
                computed_at: now,
                source: spec.source,
            };
            self.snapshot.values_computed += 1;
            span.in_scope(|| produce(&self.shared.emitter, &mut self.outbox, &update, &permit));
            self.pending.insert((i, symbol), update);
        }
        // The flush's rows go to the producer in one hand-over.
        self.outbox.flush(&self.shared.emitter).await;
        self.shared
            .metrics
            .calculator_pending_keys
            .with_label_values(&[self.label.as_str()])
            .set(self.pending.len() as i64);
        if self.pending.is_empty() || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Borrowed, not cloned: the values stay in `pending` until Redis has them.
        let updates: Vec<&Update> = self.pending.values().collect();
        let metrics = &self.shared.metrics;
        let started = Instant::now();
        let result = self.sink.write(&updates).await;
        metrics
            .redis_write_latency
            .with_label_values(&[self.label.as_str()])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                let written = marketlane_protocol::now_ns();
                for u in &updates {
                    metrics
                        .event_to_sink_latency
                        .with_label_values(&[u.source, "redis"])
                        .observe((written - u.as_of).max(0) as f64 / 1e9);
                }
                metrics
                    .redis_writes
                    .with_label_values(&[self.label.as_str(), "ok"])
                    .inc();
                self.snapshot.keys_written += updates.len() as u64;
                self.snapshot.last_error = None;
                self.pending.clear();
                self.retry_at = None;
                self.retry_backoff = Duration::from_millis(100);
            }
            Err(e) => {
                metrics
                    .redis_writes
                    .with_label_values(&[self.label.as_str(), "error"])
                    .inc();
                if self.snapshot.failed_writes.is_multiple_of(20) {
                    warn!(worker = self.index, error = %e, keys = updates.len(),
                        "redis write failed; keeping the values and retrying");
                }
                self.snapshot.failed_writes += 1;
                self.snapshot.last_error = Some(e.to_string());
                self.retry_at = Some(Instant::now() + self.retry_backoff);
                self.retry_backoff = (self.retry_backoff * 2).min(Duration::from_secs(5));
            }
        }
        metrics
            .calculator_pending_keys
            .with_label_values(&[self.label.as_str()])
            .set(self.pending.len() as i64);
    }
}

/// The value as an `indicators_market_data` row into the flush's `out`, with an id that only
/// depends on team, indicator, symbol and event time (a recomputation after a restart collapses
/// with it). Written straight from typed values, as the connector writes its rows.
fn produce(emitter: &RowEmitter, out: &mut Outbox, u: &Update, permit: &Inflight) {
    let identifier = format!("{}:{}", u.team, u.indicator);
    let id = IdName::new(INDICATORS)
        .part(&u.team)
        .part(&u.indicator)
        .part(&u.symbol)
        .part(u.as_of)
        .id();
    // In the order a quarantined copy has always had its keys (sorted, as the map's were).
    let row = [
        (
            "component_instance_name",
            Scalar::Str(emitter.instance.as_str()),
        ),
        ("indicator_identifier", Scalar::Str(&identifier)),
        ("indicator_type", Scalar::Str(u.indicator_type)),
        ("indicator_value", Scalar::opt_f64(u.value)),
        (
            "indicator_value_unit",
            Scalar::opt_str(Some(u.unit.as_str()).filter(|s| !s.is_empty())),
        ),
        ("ingestion_time", Scalar::I64(u.computed_at)),
        ("market_event_time", Scalar::I64(u.as_of)),
        ("row_id", Scalar::Str(id.as_str())),
        (
            "source_system_name",
            Scalar::Str(emitter.source_system.as_str()),
        ),
        ("symbol_identifier", Scalar::Str(&u.symbol)),
    ];
    emitter.emit_typed(out, INDICATORS, &row, u.as_of, permit);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use marketlane_protocol::{RowMap, SchemaSet, row_id};
    use serde_json::Value as Json;

    use super::*;
    use crate::config::KafkaConfig;
    use crate::metrics::Metrics;
    use crate::names::ActorNames;

    /// The indicator row as the worker built it before, as a map: the typed row must give the
    /// same key and the same bytes.
    fn map_row(emitter: &RowEmitter, u: &Update) -> RowMap {
        let mut row = RowMap::new();
        let as_of = u.as_of.to_string();
        let id = row_id(INDICATORS, &[&u.team, &u.indicator, &u.symbol, &as_of]);
        row.insert("row_id".into(), Json::String(id));
        row.insert(
            "source_system_name".into(),
            Json::String(emitter.source_system.clone()),
        );
        row.insert(
            "component_instance_name".into(),
            Json::String(emitter.instance.clone()),
        );
        row.insert("ingestion_time".into(), Json::from(u.computed_at));
        row.insert("market_event_time".into(), Json::from(u.as_of));
        row.insert(
            "symbol_identifier".into(),
            Json::String(u.symbol.to_string()),
        );
        row.insert(
            "indicator_identifier".into(),
            Json::String(format!("{}:{}", u.team, u.indicator)),
        );
        row.insert(
            "indicator_value".into(),
            u.value.map_or(Json::Null, Json::from),
        );
        row.insert(
            "indicator_value_unit".into(),
            if u.unit.is_empty() {
                Json::Null
            } else {
                Json::String(u.unit.clone())
            },
        );
        row.insert(
            "indicator_type".into(),
            Json::String(u.indicator_type.to_string()),
        );
        row
    }

    #[test]
    fn indicator_rows_are_written_as_the_map_wrote_them() {
        let schemas =
            SchemaSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas"))
                .expect("schemas");
        let emitter = RowEmitter {
            schemas: Arc::new(schemas),
            kafka: KafkaConfig::default(),
            source_system: "marketlane".into(),
            instance: "calc-0".into(),
            names: ActorNames::new("worker_rows_".to_string()),
            metrics: Arc::new(Metrics::new()),
            progress: Default::default(),
        };
        let schema = emitter.schemas.get(INDICATORS).expect("indicators schema");
        let update = |value: Option<f64>, unit: &str, symbol: &str| Update {
            team: "alpha".into(),
            indicator: "vwap_60s".into(),
            symbol: symbol.into(),
            kind: "vwap",
            indicator_type: "moving_average",
            window: "60s".into(),
            value,
            unit: unit.into(),
            as_of: 1_764_000_000_123_456_789,
            computed_at: 1_764_000_000_200_000_000,
            source: TICK,
        };
        let cases = [
            update(Some(102.14285714285714), "1_USdollar", "AAPL"),
            update(Some(-0.5), "", "CL \"Z6\""),
            update(None, "1_percent", "ES"),
        ];
        let mut out = Outbox::default();
        for u in &cases {
            produce(&emitter, &mut out, u, &Inflight::none());
        }
        let got = out.take_batch();
        assert_eq!(got.len(), cases.len());
        for (u, p) in cases.iter().zip(&got) {
            let row = map_row(&emitter, u);
            schema.check(&row).expect("a valid row");
            let mut want = Vec::new();
            schema.write_json(&row, &mut want);
            assert_eq!(
                std::str::from_utf8(&p.payload).unwrap(),
                std::str::from_utf8(&want).unwrap()
            );
            assert_eq!(&p.key[..], schema.key_of(&row).as_bytes());
            assert!(p.topic.ends_with(INDICATORS), "{}", p.topic);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_barrier_settles_once_kafka_acknowledged_what_it_found_outstanding() {
        let limit = InflightLimit::new(4);
        let flush = limit.acquire().await.unwrap();
        let outstanding = Flushed {
            written: true,
            unacknowledged: vec![flush.watch()],
        };
        // Kafka holds the flush's rows for the whole wait: not settled.
        assert!(!outstanding.settled(Duration::from_secs(5)).await);
        // Acknowledged during the wait: settled.
        let ack = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(flush);
        });
        assert!(outstanding.settled(Duration::from_secs(5)).await);
        ack.await.unwrap();
        // A later flush is not waited for; values not yet in Redis never settle.
        let _later = limit.acquire().await.unwrap();
        assert!(outstanding.settled(Duration::ZERO).await);
        let unwritten = Flushed {
            written: false,
            unacknowledged: Vec::new(),
        };
        assert!(!unwritten.settled(Duration::from_secs(5)).await);
    }
}
