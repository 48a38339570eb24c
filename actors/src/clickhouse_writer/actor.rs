//! The ClickHouse writer actor: one per category topic (and one per `_unqualified` topic).
//!
//! Exactly-once after clickhouse-kafka-connect's design:
//! - batches are cut per partition, so each insert covers one offset range `[min, max]`;
//! - before the insert the range is written to the offsets table as `before`, after
//!   ClickHouse acknowledged it as `after` (`clickhouse_writer/sink.rs`);
//! - on partition assignment the writer reads that state and seeks: after `after` to `max + 1`,
//!   after `before` to `min`, and then cuts the first batch at exactly `max`, so a batch that may
//!   or may not have landed is sent again with the same range and the same
//!   `insert_deduplication_token` (`topic-partition-min-max`), which the server drops on tables
//!   with a deduplication window. Kafka's committed offsets are only advisory (a fresh consumer
//!   group starts where the state says). On 18.16, which has no token, the replayed range
//!   collapses in the ReplacingMergeTree (`row_id` last in the key) and reads exactly with FINAL.
//!
//! A failed insert keeps the batch and retries it with back-off; nothing advances meanwhile. A
//! row that fails its schema goes to the quarantine table with its Kafka coordinates and never
//! blocks or retries the batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketlane_protocol::clickhouse::{
    BatchPhase, dedup_token, encode_unqualified, insert_statement, unqualified_insert_statement,
    unqualified_table,
};
use marketlane_protocol::wire_row::encode_json_row;
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
use crate::kafka::rebalance::{PausingRebalance, RebalanceEvent, seek_assigned};
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
    /// Flushes the current batches and commits; replies whether it succeeded.
    Drain(RpcReplyPort<bool>),
    GetState(RpcReplyPort<WriterSnapshot>),
    /// The schema grew (`reload_schemas`): flush what was encoded under the old one, then
    /// encode with the new one. Replies whether the flush succeeded.
    ReloadSchema(Arc<CategorySchema>, RpcReplyPort<bool>),
    /// Fault injection (control socket `fault`, failure-matrix row 11): panic in the handler.
    InjectPanic,
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
    /// Partitions assigned, with the next offset the writer expects from each.
    pub partitions: BTreeMap<i32, i64>,
    /// Batches re-sent with their original range after a restart (`before` state found).
    pub replayed_ranges: u64,
    /// The writer's own consumer group and static member id.
    pub group: String,
    pub group_instance: String,
    /// Partitions paused while a failed batch is retried (the group is still served).
    pub paused_for_retry: Vec<i32>,
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

type WriterConsumer = StreamConsumer<PausingRebalance>;

/// The rows of one partition waiting for their insert: offsets `[min_offset, max_offset]`.
struct PartitionBatch {
    rows: Vec<u8>,
    row_count: usize,
    quarantine: Vec<u8>,
    quarantine_count: usize,
    min_offset: i64,
    max_offset: i64,
    event_times: Vec<i64>,
    /// Row boundaries, offsets and payloads: a batch ClickHouse rejects is bisected with it.
    index: super::sink::RowIndex,
    /// Rows ClickHouse refused on their own (counted as quarantined once the batch lands).
    poisoned: usize,
    started: Instant,
    /// The data insert was acknowledged (a retry then only writes the state).
    inserted: bool,
}

impl PartitionBatch {
    fn new(offset: i64) -> Self {
        Self {
            rows: Vec::new(),
            row_count: 0,
            quarantine: Vec::new(),
            quarantine_count: 0,
            min_offset: offset,
            max_offset: offset,
            event_times: Vec::new(),
            index: Default::default(),
            poisoned: 0,
            started: Instant::now(),
            inserted: false,
        }
    }

    fn len(&self) -> usize {
        self.row_count + self.quarantine_count
    }
}

/// Where a partition stands: the next offset to take, and a range to re-cut exactly.
#[derive(Debug, Clone, Copy)]
struct Position {
    next: i64,
    /// After a `before` state: the first batch must end at exactly this offset.
    replay_until: Option<i64>,
}

pub struct WriterState {
    args: WriterArgs,
    consumer: Arc<WriterConsumer>,
    topic: String,
    table: String,
    insert_sql: String,
    quarantine_sql: String,
    batches: BTreeMap<i32, PartitionBatch>,
    /// Partitions whose batch is cut and waits for (or retries) its insert.
    due: Vec<i32>,
    positions: HashMap<i32, Position>,
    paused: bool,
    retry_backoff: Option<Duration>,
    snapshot: WriterSnapshot,
    last_lag_update: Instant,
    /// Partitions in the last lag export; a newly assigned one is exported at once.
    lag_partitions: usize,
    last_seq: u64,
    /// Partitions paused while a failed batch is retried.
    retry_paused: Vec<i32>,
    /// Messages that arrived while paused for a retry were not taken: the partition is sought
    /// back to its position before it resumes.
    rewind: BTreeMap<i32, i64>,
    group: String,
    /// ClickHouse refused this writer's credentials or grants: the actor fails (after the
    /// handler that saw it), so the supervisor restarts it and escalates if it persists.
    refused: Option<String>,
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
        // A group per writer: a writer that fails, retries or restarts rebalances only the
        // writers of its own topic (on other pods), never the rest.
        let group = args.writer.group_of(&topic);
        let group_instance = format!("{}-{}", args.instance, args.kind.topic());
        let consumer: WriterConsumer = crate::kafka::group_consumer_config(
            &args.kafka,
            &group,
            &group_instance,
            args.writer.session_timeout,
        )
        .set("auto.offset.reset", "earliest")
        .set("fetch.queue.backoff.ms", "10")
        // librdkafka prefetches up to 64 MiB per consumer by default; with a writer per
        // category and per quarantine topic that is most of the daemon's memory under lag.
        // A batch is encoded into our own buffer, so a few MiB ahead keep the writer busy.
        .set(
            "queued.max.messages.kbytes",
            match args.kind {
                WriterKind::Category(_) => "16384",
                WriterKind::Quarantine { .. } => "1024",
            },
        )
        .create_with_context(PausingRebalance::default())?;
        consumer.subscribe(&[topic.as_str()])?;
        let category = args.kind.category().to_string();
        let database = args.clickhouse.config.database.clone();
        let (table, insert_sql) = match &args.kind {
            WriterKind::Category(s) => (s.category.clone(), insert_statement(s, &database)),
            WriterKind::Quarantine { category } => (unqualified_table(category), String::new()),
        };
        let quarantine_sql = unqualified_insert_statement(&category, &database);
        info!(topic, table, group, group_instance, "writer started");
        let _ = myself.cast(WriterMsg::Poll);
        Ok(WriterState {
            snapshot: WriterSnapshot {
                topic: topic.clone(),
                table: table.clone(),
                group: group.clone(),
                group_instance: group_instance.clone(),
                ..Default::default()
            },
            retry_paused: Vec::new(),
            rewind: BTreeMap::new(),
            refused: None,
            group,
            args,
            consumer: Arc::new(consumer),
            topic,
            table,
            insert_sql,
            quarantine_sql,
            batches: BTreeMap::new(),
            due: Vec::new(),
            positions: HashMap::new(),
            paused: false,
            retry_backoff: None,
            last_lag_update: Instant::now(),
            lag_partitions: 0,
            last_seq: 0,
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
                if let Some(backoff) = state.retry_backoff {
                    // Served between attempts, so a long outage of this writer's table never
                    // exceeds max.poll.interval.ms (nor holds any other writer).
                    state.keep_alive().await;
                    let flushed = state.flush_due().await;
                    state.fail_if_refused()?;
                    if !flushed {
                        let next = (backoff * 2).min(state.args.writer.retry_max_backoff);
                        state.retry_backoff = Some(next);
                        myself.send_after(backoff, || WriterMsg::Poll);
                        return Ok(());
                    }
                    state.end_retry().await;
                }
                // Reading ClickHouse state for new partitions is retried on the next poll.
                let polled = state.poll_batch().await;
                state.fail_if_refused()?;
                if let Err(e) = polled {
                    if super::is_refusal(&e.to_string()) {
                        return Err(
                            format!("clickhouse refused writer {}: {e}", state.topic).into()
                        );
                    }
                    warn!(topic = %state.topic, error = %e, "cannot position new partitions");
                    myself.send_after(state.args.writer.retry_backoff, || WriterMsg::Poll);
                    return Ok(());
                }
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
            WriterMsg::ReloadSchema(schema, reply) => {
                let ok = state.flush_all().await;
                if ok && let WriterKind::Category(_) = state.args.kind {
                    info!(topic = %state.topic, "schema reloaded");
                    state.insert_sql =
                        insert_statement(&schema, &state.args.clickhouse.config.database);
                    state.args.kind = WriterKind::Category(schema);
                }
                let _ = reply.send(ok);
            }
            WriterMsg::Drain(reply) => {
                let ok = state.flush_all().await;
                let _ = reply.send(ok);
            }
            WriterMsg::InjectPanic => {
                panic!("fault injected over the control socket");
            }
            WriterMsg::GetState(reply) => {
                let mut s = state.snapshot.clone();
                s.batch_rows = state.batches.values().map(PartitionBatch::len).sum();
                s.retrying = state.retry_backoff.is_some();
                s.partitions = state.positions.iter().map(|(p, x)| (*p, x.next)).collect();
                s.paused_for_retry = state.retry_paused.clone();
                let _ = reply.send(s);
            }
        }
        Ok(())
    }
}

/// Why a message was not added to a batch.
#[derive(Debug, PartialEq, Eq)]
enum Skip {
    /// Already stored (offset below the partition's position).
    Stored,
    /// The partition was just repositioned: the message comes again from the new position.
    Repositioned,
}

impl WriterState {
    /// Reads messages into the per-partition batches until one is due (full, old, or at the
    /// end of a replayed range), then inserts the due ones. A failed flush switches to retry
    /// mode, where no new message is read.
    async fn poll_batch(&mut self) -> Result<(), super::SinkError> {
        self.handle_rebalance().await?;
        let max_age = self.args.writer.batch_max_age;
        let consumer = self.consumer.clone();
        let mut read = 0;
        while self.due.is_empty() && read < 10_000 {
            let oldest = self
                .batches
                .iter()
                .filter(|(p, _)| !self.replaying(**p))
                .map(|(_, b)| b.started)
                .min();
            let deadline = oldest.unwrap_or_else(Instant::now) + max_age;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, consumer.recv()).await {
                Ok(Ok(m)) => {
                    let repositioned = self.handle_rebalance().await?;
                    if self.skip(&m, &repositioned).is_none() {
                        self.add(&m);
                        let p = m.partition();
                        let full = self
                            .batches
                            .get(&p)
                            .is_some_and(|b| b.len() >= self.args.writer.batch_rows);
                        if full && !self.replaying(p) && !self.due.contains(&p) {
                            self.due.push(p);
                        }
                    }
                    read += 1;
                }
                Ok(Err(e)) => {
                    warn!(topic = %self.topic, error = %e, "consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        for (p, b) in &self.batches {
            let old = b.started.elapsed() >= max_age && !self.replaying(*p);
            if (old || b.len() >= self.args.writer.batch_rows && !self.replaying(*p))
                && !self.due.contains(p)
            {
                self.due.push(*p);
            }
        }
        if !self.due.is_empty() && !self.flush_due().await {
            self.retry_backoff = Some(self.args.writer.retry_backoff);
            self.pause_for_retry();
        }
        Ok(())
    }

    /// Pauses every positioned partition while the failed batch is retried: the consumer keeps
    /// being polled (group membership, rebalances) but reads nothing new.
    fn pause_for_retry(&mut self) {
        let mut tpl = TopicPartitionList::new();
        self.retry_paused = self.positions.keys().copied().collect();
        self.retry_paused.sort_unstable();
        for p in &self.retry_paused {
            tpl.add_partition(&self.topic, *p);
        }
        if let Err(e) = self.consumer.pause(&tpl) {
            warn!(topic = %self.topic, error = %e, "cannot pause partitions for the retry");
        }
    }

    /// Polls the consumer without taking messages: keeps the member in its group and serves
    /// rebalances. A revoked partition's batch is dropped (its next owner starts from the
    /// stored state); a new partition stays paused until the retry is over. A message that
    /// still arrives (fetched before the pause) is left for later: its partition is sought
    /// back before it resumes.
    async fn keep_alive(&mut self) {
        let consumer = self.consumer.clone();
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(5), consumer.recv()).await
        {
            let at = self.rewind.entry(m.partition()).or_insert(m.offset());
            *at = (*at).min(m.offset());
        }
        let events = self.consumer.context().take();
        let mut later = Vec::new();
        for event in events {
            match event {
                RebalanceEvent::Revoked(parts) => {
                    info!(topic = %self.topic, partitions = ?parts, "partitions revoked during a retry; their batches are dropped");
                    for p in parts {
                        self.batches.remove(&p);
                        self.due.retain(|d| *d != p);
                        self.positions.remove(&p);
                        self.retry_paused.retain(|x| *x != p);
                        self.rewind.remove(&p);
                    }
                }
                assigned => later.push(assigned),
            }
        }
        self.consumer.context().put_back(later);
    }

    /// The retried batch is in: partitions that delivered a message during the pause are
    /// sought back to their position, then every paused partition resumes.
    async fn end_retry(&mut self) {
        for (p, _) in std::mem::take(&mut self.rewind) {
            if let Some(pos) = self.positions.get(&p) {
                self.seek(p, pos.next).await;
            }
        }
        let mut tpl = TopicPartitionList::new();
        for p in std::mem::take(&mut self.retry_paused) {
            if self.positions.contains_key(&p) {
                tpl.add_partition(&self.topic, p);
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.resume(&tpl)
        {
            warn!(topic = %self.topic, error = %e, "cannot resume partitions after the retry");
        }
    }

    /// Flushes every batch now (drain, schema reload). A partition still re-cutting a replayed
    /// range is dropped instead: flushing it early would change its range and token, and it is
    /// read again from the stored state.
    async fn flush_all(&mut self) -> bool {
        let replaying: Vec<i32> = self
            .positions
            .iter_mut()
            .filter(|(_, p)| p.replay_until.is_some())
            .map(|(p, _)| *p)
            .collect();
        for p in replaying {
            if let Some(b) = self.batches.remove(&p)
                && let Some(pos) = self.positions.get_mut(&p)
            {
                pos.next = b.min_offset;
                self.seek(p, b.min_offset).await;
            }
        }
        let all: Vec<i32> = self.batches.keys().copied().collect();
        for p in all {
            if !self.due.contains(&p) {
                self.due.push(p);
            }
        }
        self.flush_due().await
    }

    fn replaying(&self, partition: i32) -> bool {
        self.positions
            .get(&partition)
            .is_some_and(|p| p.replay_until.is_some())
    }

    /// Applies assignment changes: revoked partitions lose their unsent batches (the next owner
    /// starts from the stored state); assigned ones are positioned from the stored state, then
    /// resumed. Returns the partitions it repositioned.
    async fn handle_rebalance(&mut self) -> Result<Vec<i32>, super::SinkError> {
        let events = self.consumer.context().take();
        let mut repositioned = Vec::new();
        for event in events {
            match event {
                RebalanceEvent::Revoked(parts) => {
                    for p in parts {
                        self.batches.remove(&p);
                        self.due.retain(|d| *d != p);
                        self.positions.remove(&p);
                    }
                }
                RebalanceEvent::Assigned(parts) => match self.position(&parts).await {
                    Ok(sought) => repositioned.extend(sought),
                    Err(e) => {
                        // The partitions stay paused until their state can be read.
                        self.consumer
                            .context()
                            .put_back(vec![RebalanceEvent::Assigned(parts)]);
                        return Err(e);
                    }
                },
            }
        }
        Ok(repositioned)
    }

    /// Positions assigned partitions from their stored state; returns those it sought.
    async fn position(&mut self, parts: &[i32]) -> Result<Vec<i32>, super::SinkError> {
        let states = self.args.clickhouse.partition_states(&self.topic).await?;
        let mut tpl = TopicPartitionList::new();
        let mut sought = Vec::new();
        for &p in parts {
            let pos = match states.get(&p) {
                Some(s) if s.phase == BatchPhase::After => Position {
                    next: s.max_offset + 1,
                    replay_until: None,
                },
                Some(s) => Position {
                    next: s.min_offset,
                    replay_until: Some(s.max_offset),
                },
                None => Position {
                    next: 0,
                    replay_until: None,
                },
            };
            if states.contains_key(&p) {
                self.seek(p, pos.next).await;
                sought.push(p);
            }
            info!(topic = %self.topic, partition = p, next = pos.next, replay_until = ?pos.replay_until, "partition assigned");
            self.batches.remove(&p);
            self.positions.insert(p, pos);
            let _ = tpl.add_partition(&self.topic, p);
        }
        if let Err(e) = self.consumer.resume(&tpl) {
            warn!(topic = %self.topic, error = %e, "cannot resume assigned partitions");
        }
        Ok(sought)
    }

    /// Seeks a freshly assigned partition; librdkafka may need a moment before it accepts.
    async fn seek(&self, partition: i32, offset: i64) {
        if let Err(e) = seek_assigned(&self.consumer, &self.topic, partition, offset, 20).await {
            warn!(topic = %self.topic, partition, offset, error = %e, "seek failed; the stored offsets filter replays");
        }
    }

    fn skip(&mut self, m: &BorrowedMessage<'_>, repositioned: &[i32]) -> Option<Skip> {
        let p = m.partition();
        if repositioned.contains(&p) {
            return Some(Skip::Repositioned);
        }
        let pos = self.positions.entry(p).or_insert(Position {
            next: 0,
            replay_until: None,
        });
        if m.offset() < pos.next {
            return Some(Skip::Stored);
        }
        // The replayed range is gone from Kafka (retention): nothing to re-cut.
        if pos.replay_until.is_some_and(|end| m.offset() > end) && !self.batches.contains_key(&p) {
            pos.replay_until = None;
        }
        None
    }

    fn add(&mut self, m: &BorrowedMessage<'_>) {
        let partition = m.partition();
        let offset = m.offset();
        let batch = self
            .batches
            .entry(partition)
            .or_insert_with(|| PartitionBatch::new(offset));
        batch.max_offset = offset;
        if let Some(pos) = self.positions.get_mut(&partition) {
            pos.next = offset + 1;
            if pos.replay_until == Some(offset) {
                pos.replay_until = None;
                self.due.push(partition);
                self.snapshot.replayed_ranges += 1;
            }
        }
        let payload = m.payload().unwrap_or_default();
        let now = marketlane_protocol::now_ns();
        // `quarantined_at` (the quarantine table's partition day) is the message's Kafka
        // timestamp, the moment its producer made it: the same on every replay of the offset,
        // so a replayed record lands in the partition of the first and collapses there.
        let at = m
            .timestamp()
            .to_millis()
            .map_or(now, |ms| ms.saturating_mul(1_000_000));
        let coords = |mut rec: UnqualifiedRecord| {
            rec.source_topic
                .get_or_insert_with(|| m.topic().to_string());
            rec.source_partition.get_or_insert(partition);
            rec.source_offset.get_or_insert(offset);
            rec
        };
        let category = self.args.kind.category().to_string();
        match &self.args.kind {
            WriterKind::Category(schema) => {
                // Straight from the payload to RowBinary: no map of the row is built.
                match encode_json_row(schema, payload, &mut batch.rows) {
                    Ok(t) => {
                        batch.row_count += 1;
                        batch.index.push(offset, at, batch.rows.len(), payload);
                        if let Some(t) = t {
                            batch.event_times.push(t);
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
                        encode_unqualified(&rec, at, &mut batch.quarantine);
                        batch.quarantine_count += 1;
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
                encode_unqualified(&coords(rec), at, &mut batch.quarantine);
                batch.quarantine_count += 1;
            }
        }
    }

    /// A strictly increasing version for the offsets state of this writer.
    fn next_seq(&mut self) -> u64 {
        let now = marketlane_protocol::now_ns().max(0) as u64;
        self.last_seq = now.max(self.last_seq + 1);
        self.last_seq
    }

    /// Inserts the due partition batches: state `before`, the data with its token, state
    /// `after`, then the advisory Kafka commit. Returns false (keeping every batch) on failure.
    async fn flush_due(&mut self) -> bool {
        if self.due.is_empty() {
            self.retry_backoff = None;
            return true;
        }
        let started = Instant::now();
        let ch = self.args.clickhouse.clone();
        let ranges: Vec<(i32, i64, i64)> = self
            .due
            .iter()
            .filter_map(|p| {
                self.batches
                    .get(p)
                    .map(|b| (*p, b.min_offset, b.max_offset))
            })
            .collect();
        if ranges.is_empty() {
            self.due.clear();
            self.retry_backoff = None;
            return true;
        }
        let seq = self.next_seq();
        if let Err(e) = ch
            .write_states(&self.topic, &ranges, BatchPhase::Before, seq)
            .await
        {
            return self.failed(
                marketlane_protocol::clickhouse::OFFSETS_TABLE,
                e.to_string(),
            );
        }
        let quarantine_table = unqualified_table(self.args.kind.category());
        for &(p, min, max) in &ranges {
            let Some(batch) = self.batches.get(&p) else {
                continue;
            };
            if batch.inserted {
                continue;
            }
            let token = dedup_token(&self.topic, p, min, max);
            let mut poison = Vec::new();
            if batch.row_count > 0 {
                match ch
                    .insert_bisecting(&self.insert_sql, &batch.rows, &batch.index, &token)
                    .await
                {
                    Ok(rows) => poison = rows,
                    Err(e) => {
                        let table = self.table.clone();
                        return self.failed(&table, e.to_string());
                    }
                }
            }
            // Rows ClickHouse refused go to quarantine with its reason, inside this batch.
            let mut quarantine = batch.quarantine.clone();
            let category = self.args.kind.category().to_string();
            let now = marketlane_protocol::now_ns();
            for row in &poison {
                let mut rec = UnqualifiedRecord::new(
                    &category,
                    "rejected_by_clickhouse",
                    row.reason.clone(),
                    &row.payload,
                    "unknown",
                    &self.args.instance,
                    now,
                );
                rec.source_topic = Some(self.topic.clone());
                rec.source_partition = Some(p);
                rec.source_offset = Some(row.offset);
                encode_unqualified(&rec, row.at, &mut quarantine);
            }
            if (batch.quarantine_count > 0 || !poison.is_empty())
                && let Err(e) = ch
                    .insert(&self.quarantine_sql, quarantine.into(), Some(&token))
                    .await
            {
                return self.failed(&quarantine_table, e.to_string());
            }
            if let Some(b) = self.batches.get_mut(&p) {
                b.inserted = true;
                b.poisoned = poison.len();
            }
        }
        let seq = self.next_seq();
        if let Err(e) = ch
            .write_states(&self.topic, &ranges, BatchPhase::After, seq)
            .await
        {
            return self.failed(
                marketlane_protocol::clickhouse::OFFSETS_TABLE,
                e.to_string(),
            );
        }
        let metrics = &self.args.metrics;
        metrics
            .clickhouse_insert_duration
            .with_label_values(&[self.table.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let now = marketlane_protocol::now_ns();
        let category = self.args.kind.category().to_string();
        let hist = metrics
            .event_to_sink_latency
            .with_label_values(&[category.as_str(), "clickhouse"]);
        let mut tpl = TopicPartitionList::new();
        for &(p, _, max) in &ranges {
            let Some(batch) = self.batches.remove(&p) else {
                continue;
            };
            metrics
                .clickhouse_rows_inserted
                .with_label_values(&[self.table.as_str()])
                .inc_by((batch.row_count - batch.poisoned) as u64);
            if batch.poisoned > 0 {
                metrics
                    .rows_quarantined
                    .with_label_values(&[category.as_str(), "writer", "rejected_by_clickhouse"])
                    .inc_by(batch.poisoned as u64);
            }
            for t in &batch.event_times {
                hist.observe((now - t).max(0) as f64 / 1e9);
            }
            self.snapshot.rows_inserted += (batch.row_count - batch.poisoned) as u64;
            self.snapshot.rows_quarantined += (batch.quarantine_count + batch.poisoned) as u64;
            self.snapshot.batches += 1;
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(max + 1));
        }
        // Advisory only: the offsets table is what a new owner of the partition starts from.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            warn!(topic = %self.topic, error = %e, "offset commit failed (advisory)");
        }
        self.due.clear();
        self.snapshot.last_error = None;
        self.retry_backoff = None;
        true
    }

    fn failed(&mut self, table: &str, error: String) -> bool {
        if super::is_refusal(&error) {
            self.refused = Some(format!("{table}: {error}"));
        } else {
            warn!(table, error = %error, "insert failed; keeping the batch and retrying");
        }
        self.args
            .metrics
            .clickhouse_insert_errors
            .with_label_values(&[table])
            .inc();
        self.snapshot.failed_inserts += 1;
        self.snapshot.last_error = Some(error);
        false
    }

    /// Fails the actor when ClickHouse refused this writer's credentials or grants: retrying
    /// cannot help, and a failing actor is what the supervisor counts, restarts and escalates
    /// (the pod then restarts, visibly). The batch stays uncommitted, so nothing is lost.
    fn fail_if_refused(&mut self) -> Result<(), ActorProcessingErr> {
        match self.refused.take() {
            Some(error) => Err(format!("clickhouse refused writer {}: {error}", self.topic).into()),
            None => Ok(()),
        }
    }

    /// Exports the consumer lag every few seconds (watermark look-ups are blocking calls).
    fn update_lag(&mut self) {
        let assignment_changed = self.positions.len() != self.lag_partitions;
        if !assignment_changed && self.last_lag_update.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_lag_update = Instant::now();
        self.lag_partitions = self.positions.len();
        let metrics = self.args.metrics.clone();
        let group = self.group.clone();
        let topic = self.topic.clone();
        let positions: Vec<(i32, i64)> = self.positions.iter().map(|(p, x)| (*p, x.next)).collect();
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || {
            for (p, next) in positions {
                let Ok((_, high)) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(1))
                else {
                    continue;
                };
                metrics
                    .consumer_lag
                    .with_label_values(&[group.as_str(), topic.as_str(), &p.to_string()])
                    .set((high - next).max(0));
            }
        });
    }
}
