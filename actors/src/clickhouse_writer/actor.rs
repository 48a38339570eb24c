//! The ClickHouse writer actor: one per category topic (and one per `_unqualified` topic).
//!
//! It consumes its topic in a consumer group, cuts batches by size and age, inserts them as
//! RowBinary and commits the Kafka offsets only after ClickHouse has acknowledged the batch.
//! A failed insert keeps the batch and retries it with back-off; nothing advances meanwhile.
//! A row that fails its schema goes to the quarantine table with its Kafka coordinates; it
//! never blocks the batch. Ingestion tables are ReplacingMergeTree keyed by `row_id`, so a
//! batch replayed after a crash between insert and commit collapses into the original.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketlane_protocol::clickhouse::{
    encode_row_binary, encode_unqualified, insert_statement, unqualified_insert_statement,
};
use marketlane_protocol::{CategorySchema, UnqualifiedRecord};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tracing::{info, warn};

use super::sink::ClickHouse;
use crate::config::{KafkaConfig, WriterConfig};
use crate::metrics::Metrics;

/// What a writer reads and where it writes.
#[derive(Clone)]
pub enum WriterKind {
    /// A category topic into its ingestion table.
    Category(Arc<CategorySchema>),
    /// A `<category>_unqualified` topic into the category's quarantine table.
    Quarantine { category: String },
}

impl WriterKind {
    pub fn category(&self) -> &str {
        match self {
            Self::Category(s) => &s.category,
            Self::Quarantine { category } => category,
        }
    }

    pub fn topic(&self) -> String {
        match self {
            Self::Category(s) => s.topic(),
            Self::Quarantine { category } => {
                format!(
                    "{category}{}",
                    marketlane_protocol::schema::UNQUALIFIED_SUFFIX
                )
            }
        }
    }
}

#[derive(RactorMessage)]
pub enum WriterMsg {
    Poll,
    Pause,
    Resume,
    /// Flushes the current batch and commits; replies whether it succeeded.
    Drain(RpcReplyPort<bool>),
    GetState(RpcReplyPort<WriterSnapshot>),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterSnapshot {
    pub topic: String,
    pub table: String,
    pub paused: bool,
    pub batch_rows: usize,
    pub rows_inserted: u64,
    pub rows_quarantined: u64,
    pub batches: u64,
    pub failed_inserts: u64,
    pub retrying: bool,
    pub last_error: Option<String>,
}

#[derive(Clone)]
pub struct WriterArgs {
    pub kind: WriterKind,
    pub kafka: KafkaConfig,
    pub writer: WriterConfig,
    pub clickhouse: ClickHouse,
    pub metrics: Arc<Metrics>,
    pub instance: String,
}

#[derive(Default)]
struct Batch {
    rows: Vec<u8>,
    row_count: usize,
    quarantine: Vec<u8>,
    quarantine_count: usize,
    /// Highest offset per partition in the batch.
    offsets: BTreeMap<(String, i32), i64>,
    event_times: Vec<i64>,
    started: Option<Instant>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

pub struct WriterState {
    args: WriterArgs,
    consumer: Arc<StreamConsumer>,
    topic: String,
    table: String,
    insert_sql: String,
    quarantine_sql: String,
    batch: Batch,
    paused: bool,
    retry_backoff: Option<Duration>,
    snapshot: WriterSnapshot,
    last_lag_update: Instant,
}

pub struct ClickHouseWriter;

impl Actor for ClickHouseWriter {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WriterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let topic = args.kafka.topic(&args.kind.topic());
        let consumer: StreamConsumer = crate::kafka::client_config(&args.kafka)
            .set("group.id", &args.writer.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // A ClickHouse outage stalls polling while the batch is retried; stay in the group
            // for an hour of that (heartbeats run on librdkafka's own thread).
            .set("max.poll.interval.ms", "3600000")
            .set("session.timeout.ms", "10000")
            .set("fetch.queue.backoff.ms", "10")
            .create()?;
        consumer.subscribe(&[topic.as_str()])?;
        let category = args.kind.category().to_string();
        let database = args.clickhouse.config.database.clone();
        let (table, insert_sql) = match &args.kind {
            WriterKind::Category(s) => (s.category.clone(), insert_statement(s, &database)),
            WriterKind::Quarantine { category } => (
                marketlane_protocol::clickhouse::unqualified_table(category),
                String::new(),
            ),
        };
        let quarantine_sql = unqualified_insert_statement(&category, &database);
        info!(topic, table, "writer started");
        let _ = myself.cast(WriterMsg::Poll);
        Ok(WriterState {
            snapshot: WriterSnapshot {
                topic: topic.clone(),
                table: table.clone(),
                ..Default::default()
            },
            args,
            consumer: Arc::new(consumer),
            topic,
            table,
            insert_sql,
            quarantine_sql,
            batch: Batch::default(),
            paused: false,
            retry_backoff: None,
            last_lag_update: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Poll => {
                if state.paused {
                    return Ok(());
                }
                if let Some(backoff) = state.retry_backoff
                    && !state.flush().await
                {
                    let next = (backoff * 2).min(state.args.writer.retry_max_backoff);
                    state.retry_backoff = Some(next);
                    myself.send_after(backoff, || WriterMsg::Poll);
                    return Ok(());
                }
                state.poll_batch().await;
                state.update_lag();
                let _ = myself.cast(WriterMsg::Poll);
            }
            WriterMsg::Pause => {
                info!(topic = %state.topic, "writer paused");
                state.paused = true;
                state.snapshot.paused = true;
            }
            WriterMsg::Resume => {
                if state.paused {
                    info!(topic = %state.topic, "writer resumed");
                    state.paused = false;
                    state.snapshot.paused = false;
                    let _ = myself.cast(WriterMsg::Poll);
                }
            }
            WriterMsg::Drain(reply) => {
                let ok = state.batch.is_empty() || state.flush().await;
                let _ = reply.send(ok);
            }
            WriterMsg::GetState(reply) => {
                let mut s = state.snapshot.clone();
                s.batch_rows = state.batch.row_count;
                s.retrying = state.retry_backoff.is_some();
                let _ = reply.send(s);
            }
        }
        Ok(())
    }
}

impl WriterState {
    /// Reads messages into the batch until it is full or old enough, then flushes it. A failed
    /// flush switches to retry mode, where no new message is read.
    async fn poll_batch(&mut self) {
        let max_age = self.args.writer.batch_max_age;
        let deadline = self.batch.started.unwrap_or_else(Instant::now) + max_age;
        let consumer = self.consumer.clone();
        let mut read = 0;
        while self.batch.row_count + self.batch.quarantine_count < self.args.writer.batch_rows
            && read < 10_000
        {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, consumer.recv()).await {
                Ok(Ok(m)) => {
                    self.add(&m);
                    read += 1;
                }
                Ok(Err(e)) => {
                    warn!(topic = %self.topic, error = %e, "consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        let full =
            self.batch.row_count + self.batch.quarantine_count >= self.args.writer.batch_rows;
        let old = Instant::now() >= deadline;
        if !self.batch.is_empty() && (full || old) {
            if !self.flush().await {
                self.retry_backoff = Some(self.args.writer.retry_backoff);
            }
        } else if self.batch.is_empty() {
            self.batch.started = None;
        }
    }

    fn add(&mut self, m: &BorrowedMessage<'_>) {
        if self.batch.started.is_none() {
            self.batch.started = Some(Instant::now());
        }
        let key = (m.topic().to_string(), m.partition());
        let max = self.batch.offsets.entry(key).or_insert(m.offset());
        *max = (*max).max(m.offset());
        let payload = m.payload().unwrap_or_default();
        let now = marketlane_protocol::now_ns();
        let coords = |mut rec: UnqualifiedRecord| {
            rec.source_topic
                .get_or_insert_with(|| m.topic().to_string());
            rec.source_partition.get_or_insert(m.partition());
            rec.source_offset.get_or_insert(m.offset());
            rec
        };
        let category = self.args.kind.category().to_string();
        match &self.args.kind {
            WriterKind::Category(schema) => {
                let encoded = schema.validate_json(payload).and_then(|row| {
                    let t = row.get(&schema.event_time).and_then(|v| v.as_i64());
                    encode_row_binary(schema, &row, &mut self.batch.rows)
                        .map(|()| t)
                        .map_err(|e| marketlane_protocol::RowError::WrongType {
                            field: e.column,
                            expected: marketlane_protocol::Dtype::String,
                            got: e.value,
                        })
                });
                match encoded {
                    Ok(t) => {
                        self.batch.row_count += 1;
                        if let Some(t) = t {
                            self.batch.event_times.push(t);
                        }
                    }
                    Err(e) => {
                        // A poison row is kept aside with its coordinates, never retried.
                        self.args
                            .metrics
                            .rows_quarantined
                            .with_label_values(&[category.as_str(), "writer", e.code()])
                            .inc();
                        let rec = coords(UnqualifiedRecord::new(
                            &category,
                            e.code(),
                            e.to_string(),
                            payload,
                            "unknown",
                            &self.args.instance,
                            now,
                        ));
                        encode_unqualified(&rec, now, &mut self.batch.quarantine);
                        self.batch.quarantine_count += 1;
                    }
                }
            }
            WriterKind::Quarantine { .. } => {
                let rec =
                    serde_json::from_slice::<UnqualifiedRecord>(payload).unwrap_or_else(|e| {
                        UnqualifiedRecord::new(
                            &category,
                            "bad_quarantine_record",
                            e.to_string(),
                            payload,
                            "unknown",
                            &self.args.instance,
                            now,
                        )
                    });
                encode_unqualified(&coords(rec), now, &mut self.batch.quarantine);
                self.batch.quarantine_count += 1;
            }
        }
    }

    /// Inserts the batch and commits its offsets. Returns false (keeping the batch) on failure.
    async fn flush(&mut self) -> bool {
        let started = Instant::now();
        let ch = &self.args.clickhouse;
        let metrics = &self.args.metrics;
        // The buffers stay in the batch until both inserts succeeded, for the retry.
        let rows = bytes::Bytes::from(std::mem::take(&mut self.batch.rows));
        let quarantine = bytes::Bytes::from(std::mem::take(&mut self.batch.quarantine));
        let mut failure = None;
        if self.batch.row_count > 0
            && let Err(e) = ch.insert(&self.insert_sql, rows.clone()).await
        {
            failure = Some((self.table.clone(), e.to_string()));
        }
        if failure.is_none()
            && self.batch.quarantine_count > 0
            && let Err(e) = ch.insert(&self.quarantine_sql, quarantine.clone()).await
        {
            let table =
                marketlane_protocol::clickhouse::unqualified_table(self.args.kind.category());
            failure = Some((table, e.to_string()));
        }
        if let Some((table, error)) = failure {
            self.batch.rows = rows.to_vec();
            self.batch.quarantine = quarantine.to_vec();
            return self.failed(&table, error);
        }
        let elapsed = started.elapsed().as_secs_f64();
        metrics
            .clickhouse_insert_duration
            .with_label_values(&[self.table.as_str()])
            .observe(elapsed);
        metrics
            .clickhouse_rows_inserted
            .with_label_values(&[self.table.as_str()])
            .inc_by(self.batch.row_count as u64);
        let now = marketlane_protocol::now_ns();
        let category = self.args.kind.category().to_string();
        let hist = metrics
            .event_to_sink_latency
            .with_label_values(&[category.as_str(), "clickhouse"]);
        for t in &self.batch.event_times {
            hist.observe((now - t).max(0) as f64 / 1e9);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.batch.offsets {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1));
        }
        // The batch is in ClickHouse: a failed commit only means a replay, which collapses.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
            warn!(topic = %self.topic, error = %e, "offset commit failed; the batch may be replayed");
        }
        self.snapshot.rows_inserted += self.batch.row_count as u64;
        self.snapshot.rows_quarantined += self.batch.quarantine_count as u64;
        self.snapshot.batches += 1;
        self.snapshot.last_error = None;
        self.batch = Batch::default();
        self.retry_backoff = None;
        true
    }

    fn failed(&mut self, table: &str, error: String) -> bool {
        warn!(table, error = %error, "insert failed; keeping the batch and retrying");
        self.args
            .metrics
            .clickhouse_insert_errors
            .with_label_values(&[table])
            .inc();
        self.snapshot.failed_inserts += 1;
        self.snapshot.last_error = Some(error);
        false
    }

    /// Exports the consumer lag every few seconds (watermark look-ups are blocking calls).
    fn update_lag(&mut self) {
        if self.last_lag_update.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_lag_update = Instant::now();
        let consumer = self.consumer.clone();
        let metrics = self.args.metrics.clone();
        let group = self.args.writer.group_id.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(assignment) = consumer.assignment() else {
                return;
            };
            let Ok(positions) = consumer.position() else {
                return;
            };
            for el in assignment.elements() {
                let Ok((_, high)) =
                    consumer.fetch_watermarks(el.topic(), el.partition(), Duration::from_secs(1))
                else {
                    continue;
                };
                let pos = positions
                    .find_partition(el.topic(), el.partition())
                    .and_then(|p| match p.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                let committed = consumer
                    .committed_offsets(
                        {
                            let mut t = TopicPartitionList::new();
                            t.add_partition(el.topic(), el.partition());
                            t
                        },
                        Duration::from_secs(1),
                    )
                    .ok()
                    .and_then(|t| {
                        t.find_partition(el.topic(), el.partition()).and_then(|p| {
                            match p.offset() {
                                Offset::Offset(o) => Some(o),
                                _ => None,
                            }
                        })
                    });
                let done = committed.or(pos).unwrap_or(0);
                metrics
                    .consumer_lag
                    .with_label_values(&[group.as_str(), el.topic(), &el.partition().to_string()])
                    .set((high - done).max(0));
            }
        });
    }
}
