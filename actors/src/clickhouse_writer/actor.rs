//! The ClickHouse writer actor: one per category topic (and one per `_unqualified` topic).
//!
//! Exactly-once after clickhouse-kafka-connect's design:
//! - batches are cut per partition, so each insert covers one offset range `[min, max]`;
//! - each flush makes one insert into the offsets table (`clickhouse_writer/sink.rs`) ahead of
//!   its data: the range of each batch it sends as `before`, and as `after` the ranges earlier
//!   flushes landed (of partitions with no batch in this one); a drain writes the last `after`s;
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
//!
//! The bookkeeping of those rules (positions, cuts, replays, rewinds) is the pure state machine
//! of `batch.rs`; the Kafka side is `consumer.rs`; this file encodes rows, `flush.rs` sends them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use marketlane_protocol::clickhouse::{
    encode_unqualified, insert_statement, unqualified_insert_statement, unqualified_table,
};
use marketlane_protocol::wire_row::encode_json_row;
use marketlane_protocol::{CategorySchema, UnqualifiedRecord};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use rdkafka::message::{BorrowedMessage, Message};
use serde::Serialize;
use tokio::time::Instant;
use tracing::{info, warn};

use super::batch::{Admit, Backoff, Batcher};
use super::budget::{BudgetShare, WriterBudget};
use super::consumer::{PREFETCH_KIB, QUARANTINE_PREFETCH_KIB, WriterConsumer};
use super::sink::{ClickHouse, RowIndex, SinkError};
use crate::config::{KafkaConfig, WriterConfig};
use crate::kafka::rebalance::RebalanceEvent;
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
    /// The schema grew (`reload_schemas`): what was encoded under the old one is flushed
    /// first (at once, or by the retry in progress), then rows are encoded with the new one.
    /// Replies whether the flush succeeded at once (false: the switch waits for the retry).
    ReloadSchema(Arc<CategorySchema>, RpcReplyPort<bool>),
    /// Fault injection (control socket `fault`, failure-matrix row 11): panic in the handler.
    InjectPanic,
    /// Fault injection (control socket `fault`, kind `stall`): pauses the held partitions
    /// without telling the writer, as a resume librdkafka lost leaves them; only the stall
    /// check (`writer.stall_after`) gets them going again.
    InjectStall,
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
    /// Flushes whose batches all landed, and inserts sent to the offsets table, failed ones
    /// included (one per flush attempt that sends a new range, one per drain with `after`
    /// ranges to write).
    pub flushes: u64,
    pub offset_inserts: u64,
    /// The writer's own consumer group and static member id.
    pub group: String,
    pub group_instance: String,
    /// Partitions paused while a failed batch is retried (the group is still served).
    pub paused_for_retry: Vec<i32>,
    /// Partitions found stalled and restarted (see `writer.stall_after`).
    pub stalls: u64,
}

#[derive(Clone)]
pub struct WriterArgs {
    pub kind: WriterKind,
    pub kafka: KafkaConfig,
    pub writer: WriterConfig,
    pub clickhouse: ClickHouse,
    pub metrics: Arc<Metrics>,
    pub instance: String,
    /// What the writers of this process hold together (`writer.buffer_bytes` bounds it).
    pub budget: Arc<WriterBudget>,
}

/// What one partition's batch holds besides its offsets: the encoded rows and quarantine
/// records, and what the metrics and a bisection need.
#[derive(Default)]
pub(super) struct Encoded {
    rows: Vec<u8>,
    row_count: usize,
    quarantine: Vec<u8>,
    quarantine_count: usize,
    event_times: Vec<i64>,
    /// Row boundaries, offsets and Kafka times: a batch ClickHouse rejects is bisected with it
    /// (a refused row's payload is read back from Kafka, not kept here).
    index: RowIndex,
    /// Rows ClickHouse refused on their own (counted as quarantined once the batch lands).
    poisoned: usize,
    /// The buffers as sent: frozen once when the batch is first flushed, so a retry or a
    /// bisection shares them instead of copying the batch.
    frozen: Option<(Bytes, Bytes)>,
}

impl Encoded {
    /// What the batch holds in memory: its encoded rows and quarantine records (sent or not),
    /// and per row its offset, Kafka time, end and event time.
    fn bytes(&self) -> usize {
        let sent = self.frozen.as_ref().map_or(0, |(r, q)| r.len() + q.len());
        let per_row =
            3 * size_of::<i64>() * self.index.len() + size_of::<i64>() * self.event_times.len();
        self.rows.len() + self.quarantine.len() + sent + per_row
    }

    fn frozen(&mut self) -> (Bytes, Bytes) {
        self.frozen
            .get_or_insert_with(|| {
                (
                    Bytes::from(std::mem::take(&mut self.rows)),
                    Bytes::from(std::mem::take(&mut self.quarantine)),
                )
            })
            .clone()
    }
}

pub struct WriterState {
    args: WriterArgs,
    consumer: WriterConsumer,
    topic: String,
    table: String,
    insert_sql: String,
    quarantine_sql: String,
    batcher: Batcher<Encoded>,
    paused: bool,
    backoff: Backoff,
    snapshot: WriterSnapshot,
    last_seq: u64,
    /// Partitions paused while a failed batch is retried.
    retry_paused: Vec<i32>,
    /// A reloaded schema waiting for the batches encoded under the old one to land.
    pending_schema: Option<Arc<CategorySchema>>,
    /// ClickHouse refused this writer's credentials or grants: the actor fails (after the
    /// handler that saw it), so the supervisor restarts it and escalates if it persists.
    refused: Option<String>,
    /// This writer's part of its process's `writer.buffer_bytes`.
    budget: BudgetShare,
}

pub struct ClickHouseWriter;

/// The longest a poll reads before the actor serves its mailbox and rebalances.
const SERVE_INTERVAL: Duration = Duration::from_millis(500);

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
        let prefetch = match args.kind {
            WriterKind::Category(_) => PREFETCH_KIB,
            WriterKind::Quarantine { .. } => QUARANTINE_PREFETCH_KIB,
        };
        let consumer = WriterConsumer::subscribe(
            &args.kafka,
            &args.writer,
            &topic,
            &group,
            &group_instance,
            prefetch,
        )?;
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
                group,
                group_instance,
                ..Default::default()
            },
            batcher: Batcher::new(args.writer.batch_rows, args.writer.batch_max_age),
            backoff: Backoff::new(args.writer.retry_backoff, args.writer.retry_max_backoff),
            retry_paused: Vec::new(),
            pending_schema: None,
            refused: None,
            budget: args.budget.share(),
            args,
            consumer,
            topic,
            table,
            insert_sql,
            quarantine_sql,
            paused: false,
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
                if state.backoff.retrying() {
                    // Served between attempts, so a long outage of this writer's table never
                    // exceeds max.poll.interval.ms (nor holds any other writer).
                    state.keep_alive().await;
                    // The lag goes on being exported: during an outage it is the backlog ops
                    // watch grow.
                    let positions = state.batcher.positions().collect();
                    state.consumer.watch(positions, &state.args.metrics, None);
                    let flushed = state.flush_due().await;
                    state.fail_if_refused()?;
                    if !flushed {
                        let wait = state.backoff.failed();
                        myself.send_after(wait, || WriterMsg::Poll);
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
                if let Some(wait) = state.backoff.current() {
                    myself.send_after(wait, || WriterMsg::Poll);
                    return Ok(());
                }
                let positions = state.batcher.positions().collect();
                let stall_after = Some(state.args.writer.stall_after);
                let stalled = state
                    .consumer
                    .watch(positions, &state.args.metrics, stall_after);
                if !stalled.is_empty() {
                    state.restart_stalled(stalled).await;
                }
                let _ = myself.cast(WriterMsg::Poll);
            }
            WriterMsg::Pause => {
                info!(topic = %state.topic, "writer paused");
                state.consumer.reset_stalls();
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
                if let WriterKind::Category(_) = state.args.kind {
                    state.pending_schema = Some(schema);
                }
                // In a retry the batches stay as they are (same bytes, same token); the
                // schema switches once they land.
                let ok = !state.backoff.retrying() && state.flush_all().await;
                let _ = reply.send(ok);
            }
            WriterMsg::Drain(reply) => {
                let ok = state.flush_all().await;
                if ok {
                    state.record_afters().await;
                }
                let _ = reply.send(ok);
            }
            WriterMsg::InjectPanic => {
                panic!("fault injected over the control socket");
            }
            WriterMsg::InjectStall => {
                let held: Vec<i32> = state.batcher.positions().map(|(p, _)| p).collect();
                state.consumer.pause(&held);
                warn!(topic = %state.topic, partitions = ?held, "fault injected: partitions paused behind the writer's back");
            }
            WriterMsg::GetState(reply) => {
                let mut s = state.snapshot.clone();
                s.batch_rows = state.batcher.buffered();
                s.retrying = state.backoff.retrying();
                s.partitions = state.batcher.positions().collect();
                s.paused_for_retry = state.retry_paused.clone();
                s.replayed_ranges = state.batcher.replayed_ranges;
                let _ = reply.send(s);
            }
        }
        Ok(())
    }
}

impl WriterState {
    /// Reads messages into the per-partition batches until one is due (full, old, or at the
    /// end of a replayed range), then inserts the due ones. A failed flush switches to retry
    /// mode, where no new message is read.
    async fn poll_batch(&mut self) -> Result<(), SinkError> {
        self.handle_rebalance().await?;
        // The mailbox (drain, state, pause) and new assignments are served at least this
        // often: assigned partitions stay paused until the next poll positions them, and a
        // long `batch_max_age` must not hold either back.
        let serve_by = Instant::now() + self.args.writer.batch_max_age.min(SERVE_INTERVAL);
        let consumer = self.consumer.stream();
        // One timer per poll, not per message: it fires at the oldest batch's age limit, or
        // at `serve_by`, whichever is first.
        let mut armed = self.batcher.deadline();
        let sleep = tokio::time::sleep_until(armed.map_or(serve_by, |d| d.min(serve_by)));
        tokio::pin!(sleep);
        // What the batches hold, kept up to date as messages are encoded (a batch revoked
        // meanwhile only makes it an overestimate, so a cut comes early, never late).
        let mut held = self.held();
        self.budget.publish(held);
        let mut read = 0;
        while !self.batcher.has_due() && read < 10_000 {
            // The timer first: a consumer that always has a message ready must not starve
            // the age cut (polling an armed timer is cheap).
            let m = tokio::select! {
                biased;
                () = &mut sleep => break,
                m = consumer.recv() => m,
                // New partitions deliver nothing until positioned: do that now, not at the
                // timer.
                () = self.consumer.rebalanced() => break,
            };
            match m {
                Ok(m) => {
                    let repositioned = self.handle_rebalance().await?;
                    let p = m.partition();
                    if self.batcher.admit(p, m.offset(), &repositioned) == Admit::Take {
                        held += self.add(&m);
                        if self.budget.over(held, self.args.writer.buffer_bytes) {
                            self.batcher.cut_every();
                        }
                        if armed.is_none()
                            && let Some(deadline) = self.batcher.deadline()
                        {
                            armed = Some(deadline);
                            sleep.as_mut().reset(deadline.min(serve_by));
                        }
                    }
                    read += 1;
                }
                Err(e) => {
                    warn!(topic = %self.topic, error = %e, "consumer error");
                    break;
                }
            }
        }
        self.batcher.cut_aged(Instant::now());
        // A flush takes every batch along: one offsets insert (and, without tokens, one data
        // insert) for all partitions instead of one flush per partition a few ms apart, and
        // the younger batches only land sooner.
        if self.batcher.has_due() {
            self.batcher.cut_every();
        }
        if self.batcher.has_due() && !self.flush_due().await {
            self.backoff.failed();
            self.pause_for_retry();
        }
        // What landed no longer counts against the other writers of the process.
        let held = self.held();
        self.budget.publish(held);
        Ok(())
    }

    /// What this writer's batches hold in memory.
    fn held(&self) -> usize {
        self.batcher.data().map(Encoded::bytes).sum()
    }

    /// Pauses every positioned partition while the failed batch is retried: the consumer keeps
    /// being polled (group membership, rebalances) but reads nothing new.
    fn pause_for_retry(&mut self) {
        self.retry_paused = self.batcher.positions().map(|(p, _)| p).collect();
        self.consumer.pause(&self.retry_paused);
    }

    /// Polls the consumer without taking messages: keeps the member in its group and serves
    /// rebalances. A revoked partition's batch is dropped (its next owner starts from the
    /// stored state); a new partition stays paused until the retry is over. A message that
    /// still arrives (fetched before the pause) is left for later: its partition is sought
    /// back before it resumes.
    async fn keep_alive(&mut self) {
        for (p, offset) in self.consumer.poll_untaken().await {
            self.batcher.untaken(p, offset);
        }
        let mut later = Vec::new();
        for event in self.consumer.take_events() {
            match event {
                RebalanceEvent::Revoked(parts) => {
                    info!(topic = %self.topic, partitions = ?parts, "partitions revoked during a retry; their batches are dropped");
                    for p in parts {
                        self.batcher.revoke(p);
                        self.retry_paused.retain(|x| *x != p);
                    }
                }
                assigned => later.push(assigned),
            }
        }
        self.consumer.put_back(later);
    }

    /// The retried batch is in: every paused partition resumes, and those that delivered a
    /// message during the pause are sought back to their position.
    async fn end_retry(&mut self) {
        let paused: Vec<i32> = std::mem::take(&mut self.retry_paused)
            .into_iter()
            .filter(|p| self.batcher.position(*p).is_some())
            .collect();
        // Resume, then seek: a seek wakes librdkafka's fetcher, a resume does not.
        self.consumer.resume(&paused);
        for (p, next) in self.batcher.end_retry() {
            self.consumer.seek(p, next).await;
        }
    }

    /// Flushes every batch now (drain, schema reload); a replay in progress is read again.
    async fn flush_all(&mut self) -> bool {
        for (p, offset) in self.batcher.cut_all() {
            self.consumer.seek(p, offset).await;
        }
        self.flush_due().await
    }

    /// Applies assignment changes: revoked partitions lose their unsent batches (the next owner
    /// starts from the stored state); assigned ones are positioned from the stored state, then
    /// resumed. Returns the partitions it repositioned.
    async fn handle_rebalance(&mut self) -> Result<Vec<i32>, SinkError> {
        let events = self.consumer.take_events();
        let mut repositioned = Vec::new();
        for event in events {
            match event {
                RebalanceEvent::Revoked(parts) => {
                    for p in parts {
                        self.batcher.revoke(p);
                    }
                }
                RebalanceEvent::Assigned(parts) => match self.position(&parts).await {
                    Ok(sought) => repositioned.extend(sought),
                    Err(e) => {
                        // The partitions stay paused until their state can be read.
                        self.consumer
                            .put_back(vec![RebalanceEvent::Assigned(parts)]);
                        return Err(e);
                    }
                },
            }
        }
        Ok(repositioned)
    }

    /// Positions assigned partitions from their stored state (one without: from the group's
    /// committed offset, else the log's start) and starts them; returns those it sought.
    async fn position(&mut self, parts: &[i32]) -> Result<Vec<i32>, SinkError> {
        let states = self.args.clickhouse.partition_states(&self.topic).await?;
        let fresh: Vec<i32> = parts
            .iter()
            .copied()
            .filter(|p| !states.contains_key(p))
            .collect();
        let group_starts = if fresh.is_empty() {
            HashMap::new()
        } else {
            self.consumer.group_starts(&fresh).await.unwrap_or_else(|e| {
                warn!(topic = %self.topic, partitions = ?fresh, error = %e,
                    "cannot read where partitions without stored state start; librdkafka starts them");
                HashMap::new()
            })
        };
        let mut starts = Vec::with_capacity(parts.len());
        for &p in parts {
            let (mut pos, stored) = self.batcher.assign(p, states.get(&p).copied());
            let group_start = (!stored).then(|| group_starts.get(&p).copied()).flatten();
            if let Some(start) = group_start {
                self.batcher.start_at(p, start);
                pos.next = start;
            }
            starts.push((p, (stored || group_start.is_some()).then_some(pos.next)));
            info!(topic = %self.topic, partition = p, next = pos.next, replay_until = ?pos.replay_until,
                from = if stored { "stored state" } else if group_start.is_some() { "group" } else { "librdkafka" },
                "partition assigned");
        }
        self.consumer.start(&starts).await;
        Ok(starts
            .iter()
            .filter(|(_, next)| next.is_some())
            .map(|(p, _)| *p)
            .collect())
    }

    /// Resumes stalled partitions and seeks them back to their positions (those that never
    /// had one only resumed: librdkafka starts them), counting and logging each.
    async fn restart_stalled(&mut self, stalled: Vec<(i32, i64, i64)>) {
        let stall_after = self.args.writer.stall_after;
        crate::kafka::stall::report(&self.args.metrics, &self.topic, &stalled, stall_after);
        self.snapshot.stalls += stalled.len() as u64;
        let starts: Vec<(i32, Option<i64>)> = stalled
            .iter()
            .map(|&(p, pos, _)| (p, (pos > 0).then_some(pos)))
            .collect();
        self.consumer.start(&starts).await;
    }

    /// Encodes an admitted message into its partition's batch; returns the bytes it added.
    fn add(&mut self, m: &BorrowedMessage<'_>) -> usize {
        let partition = m.partition();
        let offset = m.offset();
        let payload = m.payload().unwrap_or_default();
        // `quarantined_at` (the quarantine table's partition day) is the message's Kafka
        // timestamp, the moment its producer made it: the same on every replay of the offset,
        // so a replayed record lands in the partition of the first and collapses there.
        let at = m
            .timestamp()
            .to_millis()
            .map_or_else(marketlane_protocol::now_ns, |ms| {
                ms.saturating_mul(1_000_000)
            });
        let batch = self.batcher.take(partition, offset, Instant::now());
        let before = batch.bytes();
        let quarantine = |rec: UnqualifiedRecord, buf: &mut Vec<u8>| {
            let mut rec = rec;
            rec.source_topic
                .get_or_insert_with(|| m.topic().to_string());
            rec.source_partition.get_or_insert(partition);
            rec.source_offset.get_or_insert(offset);
            encode_unqualified(&rec, at, buf);
        };
        match &self.args.kind {
            WriterKind::Category(schema) => {
                // Straight from the payload to RowBinary: no map of the row is built.
                match encode_json_row(schema, payload, &mut batch.rows) {
                    Ok(t) => {
                        batch.row_count += 1;
                        batch.index.push(offset, at, batch.rows.len());
                        if let Some(t) = t {
                            batch.event_times.push(t);
                        }
                    }
                    Err(e) => {
                        // A poison row is kept aside with its coordinates, never retried.
                        let category = schema.category.as_str();
                        self.args
                            .metrics
                            .rows_quarantined
                            .with_label_values(&[category, "writer", e.code()])
                            .inc();
                        let rec = UnqualifiedRecord::new(
                            category,
                            e.code(),
                            e.to_string(),
                            payload,
                            "unknown",
                            &self.args.instance,
                            marketlane_protocol::now_ns(),
                        );
                        quarantine(rec, &mut batch.quarantine);
                        batch.quarantine_count += 1;
                    }
                }
            }
            WriterKind::Quarantine { category } => {
                let rec =
                    serde_json::from_slice::<UnqualifiedRecord>(payload).unwrap_or_else(|e| {
                        UnqualifiedRecord::new(
                            category,
                            "bad_quarantine_record",
                            e.to_string(),
                            payload,
                            "unknown",
                            &self.args.instance,
                            marketlane_protocol::now_ns(),
                        )
                    });
                quarantine(rec, &mut batch.quarantine);
                batch.quarantine_count += 1;
            }
        }
        let after = batch.bytes();
        if after >= self.args.writer.batch_bytes {
            self.batcher.cut_full(partition);
        }
        after - before
    }

    /// Nothing encoded under the old schema is left: a reloaded one takes over.
    fn apply_pending_schema(&mut self) {
        if let Some(schema) = self.pending_schema.take() {
            info!(topic = %self.topic, "schema reloaded");
            self.insert_sql = insert_statement(&schema, &self.args.clickhouse.config.database);
            self.args.kind = WriterKind::Category(schema);
        }
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
}

#[path = "flush.rs"]
mod flush;

#[cfg(test)]
#[path = "flush_tests.rs"]
mod flush_tests;
