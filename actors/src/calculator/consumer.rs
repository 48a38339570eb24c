//! The calculator consumer: one per source topic. Calculator pods share the topic's partitions
//! through a consumer group (the Kafka key is the symbol, so all rows of a symbol are on one
//! partition and so on one pod); each consumer parses its rows and routes each to the worker
//! that owns its symbol.
//!
//! Assignment (cooperative-sticky: a rebalance moves only the partitions that change owner).
//! The rebalance callback pauses a newly assigned partition before anything is fetched from it;
//! the actor then positions it at its warm start: `warm_restart_lookback` ago (by Kafka message
//! time) or the group's committed offset, whichever is older. Rows before the committed offset
//! only refill the windows; values are written from the first row after it, so a pod that takes
//! a partition over never writes a value computed from a window it has not refilled. Revocation:
//! the workers drop the windows and unwritten values of the partition's symbols, so this pod
//! writes nothing more for them.
//!
//! Offsets are committed at checkpoints, after every worker has applied the rows read so far,
//! Redis holds the values they produced and Kafka has acknowledged their indicator rows.
//!
//! Static membership: `group.instance.id` is the pod name and topic, so a restarted pod takes
//! its partitions back at once, without a group-wide rebalance; a pod that is gone for good
//! loses them after `session.timeout.ms`.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::{FutureExt, StreamExt};
use marketlane_protocol::category::TICK;
use marketlane_protocol::{CategorySchema, RowMap};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Shared;
use super::compact::{Interner, RowId};
use super::engine::{BookLevel, CalcRow, Trade};
use super::worker::WorkerMsg;
use crate::config::KafkaConfig;
use crate::kafka::rebalance::{
    GroupPosition, PausingRebalance, RebalanceEvent, group_positions, seek_assigned,
};
use crate::kafka::stall::{EndsReader, PartitionEnds, StallWatch, report};

#[derive(RactorMessage)]
pub enum ConsumerMsg {
    Poll,
    /// A worker restarted without its windows: seek back to the warm-restart start.
    Rewind,
    /// Fault injection (control socket `fault`, kind `stall`): pauses every held partition
    /// without telling the actor, as a resume librdkafka lost leaves them; only the stall
    /// check (see [`ConsumerState::restart_stalled`]) gets them going again.
    InjectStall,
    GetState(RpcReplyPort<ConsumerSnapshot>),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsumerSnapshot {
    pub topic: String,
    pub group: String,
    pub group_instance: String,
    pub rows: u64,
    pub refill_rows: u64,
    pub invalid_rows: u64,
    /// Messages of a partition this consumer does not (or no longer) hold.
    pub unowned_rows: u64,
    pub checkpoints: u64,
    pub last_checkpoint_ok: bool,
    pub partitions_assigned: u64,
    pub partitions_revoked: u64,
    /// Partitions found stalled and restarted (see `calculators.stall_after`).
    pub stalls: u64,
    /// Next offset to read, by partition (the partitions this pod holds).
    pub positions: HashMap<i32, i64>,
    /// First offset whose values are written, by partition (rows before refill windows only).
    pub live_from: HashMap<i32, i64>,
}

#[derive(Clone)]
pub struct ConsumerArgs {
    pub schema: Arc<CategorySchema>,
    pub kafka: KafkaConfig,
    pub shared: Arc<Shared>,
}

type CalcConsumer = StreamConsumer<PausingRebalance>;

pub struct ConsumerState {
    args: ConsumerArgs,
    consumer: Arc<CalcConsumer>,
    /// Reads the group's committed offsets, watermarks and offsets by time for the warm-start
    /// plan. Not a member of the group: the member's own look-ups fail while it is between
    /// generations (seen as `InvalidArgument` right after a rebalance), this one's do not.
    planner: Arc<BaseConsumer>,
    topic: String,
    positions: HashMap<i32, i64>,
    live_from: HashMap<i32, i64>,
    /// Held partitions behind Kafka's end without moving (the stall check).
    stalls: StallWatch,
    /// Kafka's ends being read for the next stall check (off the poll loop).
    reading_ends: EndsReader,
    /// The checkpoint under way, if any (see [`ConsumerState::start_checkpoint`]).
    checkpointing: Option<Checkpointing>,
    /// Counts assignment changes and rewinds: a checkpoint started before one commits nothing.
    generation: u64,
    /// Symbols seen on each held partition: what the workers drop when it is revoked.
    symbols: HashMap<i32, BTreeSet<Arc<str>>>,
    /// Symbols and units of the rows read, shared by every row that carries them.
    interner: Interner,
    last_checkpoint: Instant,
    snapshot: ConsumerSnapshot,
}

pub struct CalculatorConsumer;

impl Actor for CalculatorConsumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConsumerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let topic = args.kafka.topic(&args.schema.topic());
        let group = args.shared.config.group_id.clone();
        // Unique per consumer of the group: a pod runs one consumer per source topic.
        let instance = format!("{}-{}", args.shared.emitter.instance, args.schema.category);
        let consumer: CalcConsumer = crate::kafka::group_consumer_config(
            &args.kafka,
            &group,
            &instance,
            args.shared.config.session_timeout,
        )
        .set("fetch.queue.backoff.ms", "10")
        // Bounds what librdkafka prefetches while the workers hold us back: 3 MiB queued plus
        // at most one 1 MiB fetch response in flight.
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
        .set("fetch.max.bytes", FETCH_MAX_BYTES)
        .create_with_context(PausingRebalance::default())?;
        consumer.subscribe(&[topic.as_str()])?;
        let planner: BaseConsumer = crate::kafka::client_config(&args.kafka)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()?;
        info!(
            topic,
            group,
            group_instance = instance,
            "calculator consumer joined its group"
        );
        let state = ConsumerState {
            args,
            consumer: Arc::new(consumer),
            planner: Arc::new(planner),
            topic: topic.clone(),
            positions: HashMap::new(),
            live_from: HashMap::new(),
            stalls: StallWatch::default(),
            reading_ends: EndsReader::default(),
            checkpointing: None,
            generation: 0,
            symbols: HashMap::new(),
            interner: Interner::default(),
            last_checkpoint: Instant::now(),
            snapshot: ConsumerSnapshot {
                topic,
                group,
                group_instance: instance,
                ..Default::default()
            },
        };
        let _ = myself.cast(ConsumerMsg::Poll);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::Poll => {
                // Failing lets the supervisor restart us: a new consumer rejoins the group.
                state.handle_rebalance().await?;
                state.poll().await;
                state.finish_checkpoint();
                if state.checkpointing.is_none()
                    && state.last_checkpoint.elapsed()
                        >= state.args.shared.config.checkpoint_interval
                {
                    state.start_checkpoint();
                    state.restart_stalled().await;
                }
                let _ = myself.cast(ConsumerMsg::Poll);
            }
            ConsumerMsg::Rewind => {
                let held: Vec<i32> = state.positions.keys().copied().collect();
                state.generation += 1;
                if !held.is_empty() {
                    state.pause(&held);
                    state.position(&held).await?;
                }
            }
            ConsumerMsg::InjectStall => {
                let held: Vec<i32> = state.positions.keys().copied().collect();
                state.pause(&held);
                warn!(topic = %state.topic, partitions = ?held, "fault injected: partitions paused behind the consumer's back");
            }
            ConsumerMsg::GetState(reply) => {
                let mut s = state.snapshot.clone();
                s.positions = state.positions.clone();
                s.live_from = state.live_from.clone();
                let _ = reply.send(s);
            }
        }
        Ok(())
    }
}

impl ConsumerState {
    /// Applies assignment changes: revoked partitions make the workers drop their symbols;
    /// assigned ones are positioned at their warm start, then resumed.
    async fn handle_rebalance(&mut self) -> Result<(), ActorProcessingErr> {
        for event in self.consumer.context().take() {
            self.generation += 1;
            match event {
                RebalanceEvent::Revoked(parts) => self.revoke(&parts).await,
                RebalanceEvent::Assigned(parts) => self.position(&parts).await?,
            }
        }
        Ok(())
    }

    async fn revoke(&mut self, parts: &[i32]) {
        let workers = self.args.shared.workers.len();
        let mut by_worker: Vec<Vec<Arc<str>>> = vec![Vec::new(); workers];
        for p in parts {
            self.positions.remove(p);
            self.live_from.remove(p);
            for symbol in self.symbols.remove(p).unwrap_or_default() {
                by_worker[worker_of(&symbol, workers)].push(symbol);
            }
        }
        self.snapshot.partitions_revoked += parts.len() as u64;
        info!(topic = %self.topic, partitions = ?parts, "partitions revoked; their symbols are dropped");
        let category = if self.args.schema.category == TICK {
            TICK
        } else {
            marketlane_protocol::category::L2
        };
        for (w, symbols) in by_worker.into_iter().enumerate() {
            if symbols.is_empty() {
                continue;
            }
            // A worker being restarted has no windows to drop.
            if let Some(worker) = self
                .args
                .shared
                .names
                .lookup::<WorkerMsg>(&self.args.shared.workers[w])
            {
                let _ = worker.cast(WorkerMsg::Forget { category, symbols });
            }
        }
    }

    fn list(&self, parts: impl IntoIterator<Item = i32>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            tpl.add_partition(&self.topic, p);
        }
        tpl
    }

    fn pause(&self, parts: &[i32]) {
        if let Err(e) = self.consumer.pause(&self.list(parts.iter().copied())) {
            warn!(topic = %self.topic, error = %e, "cannot pause partitions");
        }
    }

    /// Resumes paused partitions, then seeks each to its start (in that order: see
    /// `seek_assigned`).
    async fn start(&self, starts: &[(i32, i64)]) {
        if let Err(e) = self
            .consumer
            .resume(&self.list(starts.iter().map(|(p, _)| *p)))
        {
            warn!(topic = %self.topic, error = %e, "cannot resume partitions");
        }
        for &(p, offset) in starts {
            self.seek(p, offset).await;
        }
    }

    /// Resumes `parts` (paused) and positions them at their warm-restart start (see the
    /// module doc).
    async fn position(&mut self, parts: &[i32]) -> Result<(), ActorProcessingErr> {
        let lookback = self.args.shared.config.warm_restart_lookback;
        // Freshly created topics answer "not leader" for a moment: retry for up to 30 s.
        let mut attempt = 0;
        let plan = loop {
            let planner = self.planner.clone();
            let topic = self.topic.clone();
            let parts = parts.to_vec();
            let result =
                tokio::task::spawn_blocking(move || plan(&planner, &topic, &parts, lookback))
                    .await
                    .map_err(|e| format!("warm-start plan: {e}"))?;
            match result {
                Ok(plan) => break plan,
                Err(e) if attempt < 60 => {
                    attempt += 1;
                    if attempt % 10 == 1 {
                        warn!(topic = %self.topic, error = %e, "warm-start plan failed; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let starts: Vec<(i32, i64)> = plan.iter().map(|(p, start, _)| (*p, *start)).collect();
        self.start(&starts).await;
        for (p, start, live) in plan {
            self.positions.insert(p, start);
            self.live_from.insert(p, live);
        }
        self.snapshot.partitions_assigned += parts.len() as u64;
        info!(topic = %self.topic, positions = ?self.positions, live_from = ?self.live_from,
            "calculator partitions positioned (warm start)");
        Ok(())
    }

    /// Resumes and seeks back to its position every held partition that has not moved for
    /// `calculators.stall_after` while Kafka held rows past that position at every check of
    /// that time. Such a partition is paused inside librdkafka though this actor resumed it (a
    /// lost resume, confluentinc/librdkafka#5591) or its fetcher is stuck; either way nothing
    /// else would ever read it again. Kafka's end is read between checks (one `ListOffsets` per
    /// held partition, off the group member and on the blocking pool), so a Kafka that does
    /// not answer delays the check, never the reading.
    async fn restart_stalled(&mut self) {
        let ends = self.reading_ends.take_finished();
        if !self.reading_ends.is_reading() {
            let held: Vec<(i32, i64)> = self.positions.iter().map(|(p, o)| (*p, *o)).collect();
            self.reading_ends
                .start(&self.planner, &self.topic, held, Duration::from_secs(5));
        }
        let Some(ends) = ends else {
            return;
        };
        let stall_after = self.args.shared.config.stall_after;
        // Read a moment ago: a partition that has moved since is not stalled.
        let stalled: PartitionEnds = self
            .stalls
            .check(Instant::now(), &ends, stall_after)
            .into_iter()
            .filter(|(p, pos, _)| self.positions.get(p) == Some(pos))
            .collect();
        if stalled.is_empty() {
            return;
        }
        report(
            &self.args.shared.metrics,
            &self.topic,
            &stalled,
            stall_after,
        );
        self.snapshot.stalls += stalled.len() as u64;
        let starts: Vec<(i32, i64)> = stalled.iter().map(|(p, pos, _)| (*p, *pos)).collect();
        self.start(&starts).await;
    }

    /// Seeks a freshly assigned partition; librdkafka may need a moment before it accepts.
    async fn seek(&self, partition: i32, offset: i64) {
        if let Err(e) = seek_assigned(&self.consumer, &self.topic, partition, offset, 50).await {
            warn!(topic = %self.topic, partition, offset, error = %e, "seek failed");
        }
    }

    /// Waits up to [`IDLE_WAIT`] for a first row, then takes what librdkafka already holds (up
    /// to [`MAX_BATCH_ROWS`], never waiting for more) and hands it to the workers: a row waits
    /// here only while the rows ahead of it are parsed.
    async fn poll(&mut self) {
        let workers = self.args.shared.workers.len();
        let mut batches: Vec<Vec<(CalcRow, bool)>> = vec![Vec::new(); workers];
        let consumer = self.consumer.clone();
        // One stream for the whole batch: each `recv` would register and drop a waker slot.
        let mut stream = consumer.stream();
        let mut read = 0;
        while read < MAX_BATCH_ROWS {
            // The first row is waited for; the rest are taken only if librdkafka already
            // holds them, polled once without a timer (a timer per row was 3% of the
            // calculator's CPU).
            let next = if read == 0 {
                tokio::time::timeout(IDLE_WAIT, stream.next()).await.ok()
            } else {
                stream.next().now_or_never()
            };
            let m = match next.flatten() {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    warn!(topic = %self.topic, error = %e, "consumer error");
                    break;
                }
                None => break,
            };
            read += 1;
            let (p, o) = (m.partition(), m.offset());
            // Not positioned (yet) or revoked meanwhile: its owner reads it.
            let Some(position) = self.positions.get_mut(&p) else {
                self.snapshot.unowned_rows += 1;
                continue;
            };
            *position = o + 1;
            let live = self.live_from.get(&p).is_none_or(|l| o >= *l);
            match parse_interned(
                &self.args.schema,
                m.payload().unwrap_or_default(),
                &mut self.interner,
            ) {
                Ok(row) => {
                    if live {
                        self.snapshot.rows += 1;
                    } else {
                        self.snapshot.refill_rows += 1;
                    }
                    let symbols = self.symbols.entry(p).or_default();
                    if !symbols.contains(row.symbol()) {
                        symbols.insert(row.symbol().clone());
                    }
                    let w = worker_of(row.symbol(), workers);
                    batches[w].push((row, live));
                }
                Err(reason) => {
                    // The ClickHouse writer quarantines bad rows; the calculators skip them.
                    self.snapshot.invalid_rows += 1;
                    self.args
                        .shared
                        .metrics
                        .calculator_rows
                        .with_label_values(&[self.args.schema.category.as_str(), "invalid"])
                        .inc();
                    if self.snapshot.invalid_rows.is_power_of_two() {
                        warn!(topic = %self.topic, partition = p, offset = o, reason, "row skipped");
                    }
                }
            }
        }
        for (w, rows) in batches.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            // Waiting for a permit is the backpressure: no polling until the worker catches up.
            let Ok(permit) = self.args.shared.permits[w].clone().acquire_owned().await else {
                return;
            };
            let name = &self.args.shared.workers[w];
            let mut msg = Some(WorkerMsg::Rows { rows, permit });
            // A worker being restarted is looked up again until it is back.
            while let Some(m) = msg.take() {
                match self.args.shared.names.lookup::<WorkerMsg>(name) {
                    Some(worker) => match worker.cast(m) {
                        Ok(()) => {}
                        Err(ractor::MessagingErr::SendErr(back)) => {
                            msg = Some(back);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(_) => {}
                    },
                    None => {
                        msg = Some(m);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }

    /// Starts a checkpoint: every worker is asked, behind the rows already handed to it,
    /// to flush; once all have written Redis and Kafka has acknowledged their indicator rows,
    /// [`Self::finish_checkpoint`] commits the positions read up to now. Until then nothing
    /// is committed (the rows are replayed after a crash). The waiting runs beside the actor:
    /// with Kafka down the acknowledgements take as long as the outage, and reading, the
    /// workers and Redis go on meanwhile.
    fn start_checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        let workers: Option<Vec<ActorRef<WorkerMsg>>> = self
            .args
            .shared
            .workers
            .iter()
            .map(|name| self.args.shared.names.lookup::<WorkerMsg>(name))
            .collect();
        // A worker being restarted: its windows are refilled from the warm start first.
        let Some(workers) = workers else {
            self.checkpoint_done(false, "a worker is restarting");
            return;
        };
        let done = tokio::spawn(async move {
            let settled = workers.iter().map(|w| async move {
                match ractor::call_t!(w, WorkerMsg::Barrier, BARRIER_WAIT_MS) {
                    Ok(flushed) => flushed.settled(ACK_WAIT).await,
                    Err(_) => false,
                }
            });
            join_all(settled).await.into_iter().all(|ok| ok)
        });
        self.checkpointing = Some(Checkpointing {
            positions: self.positions.clone(),
            generation: self.generation,
            done,
        });
    }

    /// Commits a finished checkpoint's positions if every worker settled and no rebalance or
    /// rewind happened meanwhile (see [`Self::start_checkpoint`]).
    fn finish_checkpoint(&mut self) {
        let Some(c) = self.checkpointing.take_if(|c| c.done.is_finished()) else {
            return;
        };
        let settled = c.done.now_or_never().and_then(Result::ok) == Some(true);
        if !settled {
            self.checkpoint_done(false, "workers not settled: Redis or Kafka behind");
            return;
        }
        if c.generation != self.generation {
            self.checkpoint_done(false, "partitions moved meanwhile");
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &c.positions {
            // Never behind the offset this partition was taken over at: rows before it were
            // only refill, and committing one of them would make the next owner write values
            // again from a window refilled from a later look-back.
            let o = self.live_from.get(p).map_or(*o, |l| (*o).max(*l));
            let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(o));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            warn!(topic = %self.topic, error = %e, "checkpoint commit failed");
        }
        self.checkpoint_done(true, "");
    }

    /// Counts a checkpoint; logs when checkpoints start or stop failing.
    fn checkpoint_done(&mut self, ok: bool, why: &str) {
        let failing = self.snapshot.checkpoints > 0 && !self.snapshot.last_checkpoint_ok;
        if ok && failing {
            info!(topic = %self.topic, "checkpoints commit again");
        } else if !ok && !failing {
            warn!(topic = %self.topic, why, "checkpoint skipped; positions not committed until one succeeds");
        }
        self.snapshot.checkpoints += 1;
        self.snapshot.last_checkpoint_ok = ok;
    }
}

/// A checkpoint under way: the positions it commits and the wait for the workers.
struct Checkpointing {
    positions: HashMap<i32, i64>,
    generation: u64,
    done: JoinHandle<bool>,
}

/// Longest wait for a worker's barrier answer (it flushes, which writes Redis).
const BARRIER_WAIT_MS: u64 = 10_000;

/// Longest wait, after the barriers, for Kafka to acknowledge the flushes' indicator rows.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// Longest wait for a first row in one poll (an idle topic): the actor then checks its
/// rebalances and checkpoint before polling again.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// Rows handed to the workers per poll at most.
const MAX_BATCH_ROWS: usize = 2_000;

/// librdkafka's prefetch queue of one consumer, in KiB (`queued.max.messages.kbytes`).
const PREFETCH_KBYTES: &str = "3072";

/// One fetch response at most (`fetch.max.bytes`); above `message.max.bytes` (1 000 000).
const FETCH_MAX_BYTES: &str = "1048576";

/// (partition, start offset, first live offset) of each of `partitions` of `topic`.
fn plan(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    lookback: Duration,
) -> Result<Vec<(i32, i64, i64)>, ActorProcessingErr> {
    let timeout = Duration::from_secs(10);
    let since_ms = (marketlane_protocol::now_ns() / 1_000_000) - lookback.as_millis() as i64;
    let mut times = TopicPartitionList::new();
    for p in partitions {
        times.add_partition_offset(topic, *p, Offset::Offset(since_ms))?;
    }
    let by_time = consumer.offsets_for_times(times, timeout)?;
    let mut out = Vec::new();
    for GroupPosition {
        partition: p,
        low,
        high,
        committed,
    } in group_positions(consumer, topic, partitions, timeout)?
    {
        let lookback_start = match by_time.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => o,
            // No message since then: nothing to refill.
            _ => high,
        }
        .max(low);
        let (start, live) = match committed {
            Some(c) => (lookback_start.min(c), c),
            None => (lookback_start, lookback_start),
        };
        out.push((p, start, live));
    }
    Ok(out)
}

/// The worker that owns `symbol` (FNV-1a: stable across runs and pods).
pub fn worker_of(symbol: &str, workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in symbol.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % workers.max(1) as u64) as usize
}

/// A Kafka payload of `schema`'s category as a calculator row.
///
/// Rows on the category topics were validated by the connector before it produced them (and the
/// ClickHouse writer quarantines any that were not), so this reads only the columns the
/// calculators use, straight into their types, instead of validating every column again. A
/// payload that is not JSON, lacks one of those columns or has it of the wrong type is an error
/// (counted `invalid` by the caller), as are the checks the calculators rely on: non-empty
/// row id and symbol, a non-negative event time, a side of `bid` or `ask`.
///
/// A tool's or test's one-off parse; the consumer shares strings with [`parse_interned`].
pub fn parse(schema: &CategorySchema, payload: &[u8]) -> Result<CalcRow, String> {
    parse_interned(schema, payload, &mut Interner::default())
}

/// [`parse`], the strings read in place (a `Cow` is owned only when the JSON text has escapes):
/// the row keeps the row id in its compact form and the symbol and units from `interner`.
pub fn parse_interned(
    schema: &CategorySchema,
    payload: &[u8],
    interner: &mut Interner,
) -> Result<CalcRow, String> {
    let row = if schema.category == TICK {
        let w: TickWire = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        check(&w.row_id, &w.symbol_identifier, w.tick_time)?;
        CalcRow::Trade(Trade {
            row_id: RowId::new(&w.row_id),
            symbol: interner.intern(&w.symbol_identifier),
            time: w.tick_time,
            price: w.price,
            size: w.size,
            price_unit: interner.intern(&w.price_unit),
            size_unit: interner.intern(&w.size_unit),
        })
    } else {
        let w: L2Wire = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        check(&w.row_id, &w.symbol_identifier, w.l2_time)?;
        CalcRow::Book(BookLevel {
            row_id: RowId::new(&w.row_id),
            symbol: interner.intern(&w.symbol_identifier),
            time: w.l2_time,
            bid: matches!(w.side, Side::Bid),
            level: w.level,
            max_level: w.max_level,
            price: w.price,
            size: w.size,
            price_unit: interner.intern(&w.price_unit),
            size_unit: interner.intern(&w.size_unit),
        })
    };
    Ok(row)
}

/// The checks the calculators rely on beyond the types.
fn check(id: &str, symbol: &str, time: i64) -> Result<(), String> {
    if id.is_empty() || symbol.is_empty() {
        return Err("row_id or symbol_identifier empty".into());
    }
    if time < 0 {
        return Err(format!("event time {time} is negative"));
    }
    Ok(())
}

/// The columns of a `tick_market_data` row that the calculators read (others are skipped).
/// Strings borrow from the payload unless they hold escapes.
#[derive(Deserialize)]
struct TickWire<'a> {
    #[serde(borrow)]
    row_id: Cow<'a, str>,
    #[serde(borrow)]
    symbol_identifier: Cow<'a, str>,
    tick_time: i64,
    price: f64,
    size: f64,
    #[serde(borrow)]
    price_unit: Cow<'a, str>,
    #[serde(borrow)]
    size_unit: Cow<'a, str>,
}

/// The columns of an `l2_market_data` row that the calculators read (others are skipped).
#[derive(Deserialize)]
struct L2Wire<'a> {
    #[serde(borrow)]
    row_id: Cow<'a, str>,
    #[serde(borrow)]
    symbol_identifier: Cow<'a, str>,
    l2_time: i64,
    side: Side,
    level: u32,
    max_level: u32,
    price: f64,
    size: f64,
    #[serde(borrow)]
    price_unit: Cow<'a, str>,
    #[serde(borrow)]
    size_unit: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Side {
    Bid,
    Ask,
}

/// A validated category row as a calculator row.
pub fn from_row(category: &str, row: &RowMap) -> Result<CalcRow, String> {
    let s = |k: &str| -> Result<&str, String> {
        row.get(k)
            .and_then(Json::as_str)
            .ok_or_else(|| format!("{k} missing"))
    };
    let f = |k: &str| -> Result<f64, String> {
        row.get(k)
            .and_then(Json::as_f64)
            .ok_or_else(|| format!("{k} missing"))
    };
    let i = |k: &str| -> Result<i64, String> {
        row.get(k)
            .and_then(Json::as_i64)
            .ok_or_else(|| format!("{k} missing"))
    };
    if category == TICK {
        return Ok(CalcRow::Trade(Trade {
            row_id: RowId::new(s("row_id")?),
            symbol: s("symbol_identifier")?.into(),
            time: i("tick_time")?,
            price: f("price")?,
            size: f("size")?,
            price_unit: s("price_unit")?.into(),
            size_unit: s("size_unit")?.into(),
        }));
    }
    Ok(CalcRow::Book(BookLevel {
        row_id: RowId::new(s("row_id")?),
        symbol: s("symbol_identifier")?.into(),
        time: i("l2_time")?,
        bid: s("side")? == "bid",
        level: u32::try_from(i("level")?).map_err(|e| e.to_string())?,
        max_level: u32::try_from(i("max_level")?).map_err(|e| e.to_string())?,
        price: f("price")?,
        size: f("size")?,
        price_unit: s("price_unit")?.into(),
        size_unit: s("size_unit")?.into(),
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use marketlane_protocol::SchemaSet;
    use marketlane_protocol::category::L2;

    use super::*;

    fn schemas() -> SchemaSet {
        SchemaSet::load_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")).unwrap()
    }

    /// The consumer's direct parse gives what full validation + `from_row` gives, on every row of
    /// the golden input.
    #[test]
    fn parse_matches_full_validation_on_the_golden_input() {
        let schemas = schemas();
        let input = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/golden/calculators/input.jsonl"),
        )
        .unwrap();
        let mut n = 0;
        let mut interner = Interner::default();
        for line in input.lines().filter(|l| !l.trim().is_empty()) {
            let category = if line.contains("\"l2_time\"") {
                L2
            } else {
                TICK
            };
            let schema = schemas.get(category).unwrap();
            let full = from_row(category, &schema.validate_json(line.as_bytes()).unwrap()).unwrap();
            assert_eq!(
                parse_interned(schema, line.as_bytes(), &mut interner).unwrap(),
                full,
                "{line}"
            );
            n += 1;
        }
        assert!(n > 10);
    }

    #[test]
    fn unreadable_rows_are_errors() {
        let schemas = schemas();
        let l2 = schemas.get(L2).unwrap();
        let mut interner = Interner::default();
        let good = serde_json::json!({
            "row_id": "x", "symbol_identifier": "CLZ6", "l2_time": 1, "side": "bid", "level": 1,
            "max_level": 1, "price": 70.1, "size": 4, "price_unit": "1_USdollar",
            "size_unit": "1_contracts"
        });
        assert!(parse_interned(l2, good.to_string().as_bytes(), &mut interner).is_ok());
        for (k, v) in [
            ("side", serde_json::json!("middle")),
            ("level", serde_json::json!(-1)),
            ("price", serde_json::Value::Null),
            ("price", serde_json::json!("70.1")),
            ("symbol_identifier", serde_json::json!("")),
            ("l2_time", serde_json::json!(-1)),
        ] {
            let mut bad = good.clone();
            bad[k] = v;
            assert!(
                parse_interned(l2, bad.to_string().as_bytes(), &mut interner).is_err(),
                "{k}"
            );
        }
        assert!(parse_interned(l2, b"{not json", &mut interner).is_err());
        assert!(
            parse_interned(
                schemas.get(TICK).unwrap(),
                good.to_string().as_bytes(),
                &mut interner
            )
            .is_err()
        );
    }

    /// A string with JSON escapes cannot be borrowed from the payload: it is read as its
    /// unescaped text all the same, and interned like any other.
    #[test]
    fn escaped_strings_parse_to_their_text() {
        let schemas = schemas();
        let tick = schemas.get(TICK).unwrap();
        let mut interner = Interner::default();
        let id = "0f8e2c1a-5b3d-5e7f-9a1b-c2d3e4f5a6b7";
        let escaped = br#"{"row_id": "0f8e2c1a-5b3d-5e7f-9a1b-c2d3e4f5a6b\u0037", "symbol_identifier": "BRK\/B", "tick_time": 5, "price": 1.5, "size": 2, "price_unit": "1_US\u00e9", "size_unit": "\tx"}"#;
        let CalcRow::Trade(t) = parse_interned(tick, escaped, &mut interner).unwrap() else {
            panic!("a tick row parsed as a book level");
        };
        assert_eq!(t.row_id, RowId::new(id));
        assert_eq!(t.row_id.to_string(), id);
        assert_eq!(&*t.symbol, "BRK/B");
        assert_eq!(&*t.price_unit, "1_US\u{e9}");
        assert_eq!(&*t.size_unit, "\tx");
        let plain = format!(
            r#"{{"row_id": "{id}", "symbol_identifier": "BRK/B", "tick_time": 5, "price": 1.5, "size": 2, "price_unit": "1_USd", "size_unit": "x"}}"#
        );
        let CalcRow::Trade(u) = parse_interned(tick, plain.as_bytes(), &mut interner).unwrap()
        else {
            panic!("a tick row parsed as a book level");
        };
        assert!(
            Arc::ptr_eq(&t.symbol, &u.symbol),
            "one symbol, one shared string"
        );
        assert_eq!(u.row_id, t.row_id);
    }
}
