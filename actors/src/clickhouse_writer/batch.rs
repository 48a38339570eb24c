//! The writer's exactly-once bookkeeping, apart from Kafka and ClickHouse: where each
//! partition stands, which offsets go into which batch, when a batch is cut, what a restart
//! replays and what a retry rewinds. No client types and no I/O: the actor feeds it offsets
//! and stored states and carries out what it answers (seek, insert, record the range).
//!
//! The rules (clickhouse-kafka-connect's design):
//! - a batch holds one partition's consecutive offsets `[min, max]`; it is cut when it holds
//!   `batch_rows` messages, when its bytes reach the caller's bound ([`Batcher::cut_full`]),
//!   with every other batch when all of them together reach the caller's bound
//!   ([`Batcher::cut_every`]), or when its first one is `max_age` old;
//! - a flush makes one offsets insert ([`Batcher::state_records`]): the `before` range of each
//!   batch it is about to send, and the `after` range of each batch the previous flushes landed
//!   whose partition has no newer range in it. A batch's own `after` is thus written with the
//!   next flush (or by a drain), never in an insert of its own;
//! - on assignment a partition resumes after an `after` range, and at the `min` of a `before`
//!   range, whose first batch is then cut at exactly that `max`: the replay carries the same
//!   range and so the same deduplication token (`topic-partition-min-max`). A `before` range
//!   that did land (its `after` not yet written) is so sent once more and dropped as a copy;
//!   a `before` is only written once every earlier batch of its partition has landed, so
//!   nothing below its `min` is missing;
//! - a failed insert keeps its batches; nothing new is taken until it lands, and offsets the
//!   consumer delivered meanwhile are read again from the partition's position afterwards.

use std::collections::BTreeMap;
use std::time::Duration;

use marketlane_protocol::clickhouse::BatchPhase;
use tokio::time::Instant;

use super::sink::PartitionState;

/// One row of the offsets table: `(partition, min, max, phase)`.
pub type StateRecord = (i32, i64, i64, BatchPhase);

/// Where a partition stands: the next offset to take, and a range to re-cut exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub next: i64,
    /// After a `before` state: the first batch must end at exactly this offset.
    pub replay_until: Option<i64>,
}

impl Position {
    /// Where a partition resumes from its stored state (none: from the start).
    pub fn resume(stored: Option<PartitionState>) -> Self {
        match stored {
            Some(s) if s.phase == BatchPhase::After => Self {
                next: s.max_offset + 1,
                replay_until: None,
            },
            Some(s) => Self {
                next: s.min_offset,
                replay_until: Some(s.max_offset),
            },
            None => Self {
                next: 0,
                replay_until: None,
            },
        }
    }
}

/// What to do with a message the consumer delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Add it to its partition's batch ([`Batcher::take`]).
    Take,
    /// Already stored (offset below the partition's position).
    Stored,
    /// The partition was just repositioned: the message comes again from the new position.
    Repositioned,
}

/// One partition's batch: offsets `[min, max]`, `messages` of them, and what the caller
/// encoded from them (`D`).
#[derive(Debug)]
pub struct Batch<D> {
    pub min: i64,
    pub max: i64,
    pub messages: usize,
    pub started: Instant,
    /// The data insert was acknowledged (a retry then only records the range).
    pub inserted: bool,
    /// Its `before` range is stored (a retry does not write it again).
    pub recorded: bool,
    pub data: D,
}

/// The positions and batches of one writer's partitions.
#[derive(Debug)]
pub struct Batcher<D> {
    batch_rows: usize,
    max_age: Duration,
    positions: BTreeMap<i32, Position>,
    batches: BTreeMap<i32, Batch<D>>,
    /// Partitions whose batch is cut and waits for (or retries) its insert, in cut order.
    due: Vec<i32>,
    /// While a failed flush is retried: the lowest offset the consumer delivered per
    /// partition that was not taken (read again once the retry is over).
    rewind: BTreeMap<i32, i64>,
    /// Ranges landed whose `after` is not stored yet, per partition (the newest only): the
    /// next offsets insert carries them.
    unrecorded_after: BTreeMap<i32, (i64, i64)>,
    /// Batches cut at the end of a replayed range.
    pub replayed_ranges: u64,
}

impl<D: Default> Batcher<D> {
    pub fn new(batch_rows: usize, max_age: Duration) -> Self {
        Self {
            batch_rows: batch_rows.max(1),
            max_age,
            positions: BTreeMap::new(),
            batches: BTreeMap::new(),
            due: Vec::new(),
            rewind: BTreeMap::new(),
            unrecorded_after: BTreeMap::new(),
            replayed_ranges: 0,
        }
    }

    /// A partition was assigned with its stored state: returns where it resumes, and whether
    /// the consumer must be sought there (only a stored state says so; without one the
    /// consumer starts at its committed offset or the earliest one).
    pub fn assign(&mut self, partition: i32, stored: Option<PartitionState>) -> (Position, bool) {
        let pos = Position::resume(stored);
        self.drop_partition(partition);
        self.positions.insert(partition, pos);
        (pos, stored.is_some())
    }

    /// Moves a partition assigned without stored state to where it starts (the group's
    /// committed offset, or the log's start), so its position, its lag and a seek back after a
    /// stall all count from there, not from offset 0.
    pub fn start_at(&mut self, partition: i32, next: i64) {
        if let Some(pos) = self.positions.get_mut(&partition)
            && pos.replay_until.is_none()
            && !self.batches.contains_key(&partition)
        {
            pos.next = next;
        }
    }

    /// A partition was revoked: its unsent batch is dropped (its next owner starts from the
    /// stored state), and so is its unwritten `after`: a range written for a partition this
    /// writer no longer owns could hide its new owner's newer one.
    pub fn revoke(&mut self, partition: i32) {
        self.drop_partition(partition);
        self.positions.remove(&partition);
    }

    fn drop_partition(&mut self, partition: i32) {
        self.batches.remove(&partition);
        self.due.retain(|d| *d != partition);
        self.rewind.remove(&partition);
        self.unrecorded_after.remove(&partition);
    }

    /// Whether a delivered message is taken. `repositioned` partitions were just sought.
    pub fn admit(&mut self, partition: i32, offset: i64, repositioned: &[i32]) -> Admit {
        if repositioned.contains(&partition) {
            return Admit::Repositioned;
        }
        let pos = self.positions.entry(partition).or_insert(Position {
            next: 0,
            replay_until: None,
        });
        if offset < pos.next {
            return Admit::Stored;
        }
        // The replayed range is gone from Kafka (retention): nothing to re-cut.
        if pos.replay_until.is_some_and(|end| offset > end)
            && !self.batches.contains_key(&partition)
        {
            pos.replay_until = None;
        }
        Admit::Take
    }

    /// Adds an admitted message to its partition's batch (cutting it when full or at the end
    /// of a replayed range) and returns the batch's data for the caller to encode into. Once
    /// a batch is cut the caller flushes before it takes more (a cut range never grows).
    pub fn take(&mut self, partition: i32, offset: i64, now: Instant) -> &mut D {
        debug_assert!(!self.due.contains(&partition), "a cut batch grew");
        let pos = self.positions.entry(partition).or_insert(Position {
            next: 0,
            replay_until: None,
        });
        pos.next = offset + 1;
        let batch = self.batches.entry(partition).or_insert_with(|| Batch {
            min: offset,
            max: offset,
            messages: 0,
            started: now,
            inserted: false,
            recorded: false,
            data: D::default(),
        });
        batch.max = offset;
        batch.messages += 1;
        let cut = if pos.replay_until == Some(offset) {
            pos.replay_until = None;
            self.replayed_ranges += 1;
            true
        } else {
            pos.replay_until.is_none() && batch.messages >= self.batch_rows
        };
        if cut && !self.due.contains(&partition) {
            self.due.push(partition);
        }
        &mut batch.data
    }

    /// Cuts `partition`'s batch because it holds as many bytes as the caller allows. A batch
    /// replaying a `before` range is not cut: it must end where that range ended, whose batch
    /// was cut under the same bound from the same messages.
    pub fn cut_full(&mut self, partition: i32) {
        if self.batches.contains_key(&partition)
            && !self.replaying(partition)
            && !self.due.contains(&partition)
        {
            self.due.push(partition);
        }
    }

    /// Cuts every batch that may be cut ([`Batcher::cut_full`] for each partition): the
    /// writer's batches together hold as many bytes as it allows.
    pub fn cut_every(&mut self) {
        let partitions: Vec<i32> = self.batches.keys().copied().collect();
        for p in partitions {
            self.cut_full(p);
        }
    }

    fn replaying(&self, partition: i32) -> bool {
        self.positions
            .get(&partition)
            .is_some_and(|p| p.replay_until.is_some())
    }

    /// When the oldest batch that may be cut by age is due (none: no such batch).
    pub fn deadline(&self) -> Option<Instant> {
        self.batches
            .iter()
            .filter(|(p, _)| !self.replaying(**p))
            .map(|(_, b)| b.started + self.max_age)
            .min()
    }

    /// Cuts every batch that is old or full (a replayed range waits for its end).
    pub fn cut_aged(&mut self, now: Instant) {
        let ready: Vec<i32> = self
            .batches
            .iter()
            .filter(|(p, b)| {
                !self.replaying(**p)
                    && (now >= b.started + self.max_age || b.messages >= self.batch_rows)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in ready {
            if !self.due.contains(&p) {
                self.due.push(p);
            }
        }
    }

    pub fn has_due(&self) -> bool {
        !self.due.is_empty()
    }

    /// The cut batches' ranges `(partition, min, max)`, in cut order.
    pub fn due_ranges(&self) -> Vec<(i32, i64, i64)> {
        self.due
            .iter()
            .filter_map(|p| self.batches.get(p).map(|b| (*p, b.min, b.max)))
            .collect()
    }

    pub fn batch(&self, partition: i32) -> Option<&Batch<D>> {
        self.batches.get(&partition)
    }

    pub fn batch_mut(&mut self, partition: i32) -> Option<&mut Batch<D>> {
        self.batches.get_mut(&partition)
    }

    /// The rows of this flush's offsets insert: `before` for each due batch not yet recorded,
    /// and `after` for each landed range whose partition has no due batch (that batch's
    /// `before` is newer, or is about to be). Empty when every due batch is recorded (a retry
    /// of the data only): the `after` ranges then wait for the next flush. All rows of one
    /// insert share one version: a partition has at most one row in it.
    pub fn state_records(&self) -> Vec<StateRecord> {
        let mut records: Vec<StateRecord> = self
            .due
            .iter()
            .filter_map(|p| self.batches.get(p).map(|b| (*p, b)))
            .filter(|(_, b)| !b.recorded)
            .map(|(p, b)| (p, b.min, b.max, BatchPhase::Before))
            .collect();
        if records.is_empty() {
            return records;
        }
        records.extend(self.after_records());
        records
    }

    /// The landed ranges whose `after` is not stored yet, for partitions without a due batch
    /// (a drain writes them once, so a clean restart replays nothing).
    pub fn after_records(&self) -> Vec<StateRecord> {
        self.unrecorded_after
            .iter()
            .filter(|(p, _)| !self.due.contains(p))
            .map(|(p, (min, max))| (*p, *min, *max, BatchPhase::After))
            .collect()
    }

    /// The offsets insert of `records` was acknowledged.
    pub fn recorded(&mut self, records: &[StateRecord]) {
        for &(p, min, max, phase) in records {
            match phase {
                BatchPhase::Before => {
                    if let Some(b) = self.batches.get_mut(&p)
                        && (b.min, b.max) == (min, max)
                    {
                        b.recorded = true;
                    }
                    // Its newer `before` supersedes the partition's older `after`.
                    self.unrecorded_after.remove(&p);
                }
                BatchPhase::After => {
                    if self.unrecorded_after.get(&p) == Some(&(min, max)) {
                        self.unrecorded_after.remove(&p);
                    }
                }
            }
        }
    }

    /// The cut batches were acknowledged: they leave the writer (returned for the metrics),
    /// nothing is due any more, and their `after` ranges wait for the next offsets insert.
    pub fn landed(&mut self) -> Vec<(i32, Batch<D>)> {
        let due = std::mem::take(&mut self.due);
        let landed: Vec<(i32, Batch<D>)> = due
            .into_iter()
            .filter_map(|p| self.batches.remove(&p).map(|b| (p, b)))
            .collect();
        for (p, b) in &landed {
            self.unrecorded_after.insert(*p, (b.min, b.max));
        }
        landed
    }

    /// Cuts every batch now (drain, schema reload). A partition still re-cutting a replayed
    /// range is dropped instead (flushing it early would change its range and token): it is
    /// read again from its range's start, returned as `(partition, offset)` seeks.
    pub fn cut_all(&mut self) -> Vec<(i32, i64)> {
        let replaying: Vec<i32> = self
            .positions
            .iter()
            .filter(|(_, p)| p.replay_until.is_some())
            .map(|(p, _)| *p)
            .collect();
        let mut seeks = Vec::new();
        for p in replaying {
            if let Some(b) = self.batches.remove(&p)
                && let Some(pos) = self.positions.get_mut(&p)
            {
                pos.next = b.min;
                seeks.push((p, b.min));
            }
        }
        let all: Vec<i32> = self.batches.keys().copied().collect();
        for p in all {
            if !self.due.contains(&p) {
                self.due.push(p);
            }
        }
        seeks
    }

    /// During a retry the consumer delivered a message that was not taken.
    pub fn untaken(&mut self, partition: i32, offset: i64) {
        let at = self.rewind.entry(partition).or_insert(offset);
        *at = (*at).min(offset);
    }

    /// The retry is over: the partitions that delivered untaken messages are sought back to
    /// their positions (`(partition, offset)`).
    pub fn end_retry(&mut self) -> Vec<(i32, i64)> {
        std::mem::take(&mut self.rewind)
            .into_keys()
            .filter_map(|p| self.positions.get(&p).map(|pos| (p, pos.next)))
            .collect()
    }

    /// The next offset expected from each assigned partition.
    pub fn positions(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.positions.iter().map(|(p, x)| (*p, x.next))
    }

    pub fn position(&self, partition: i32) -> Option<Position> {
        self.positions.get(&partition).copied()
    }

    #[cfg(test)]
    pub fn partitions(&self) -> usize {
        self.positions.len()
    }

    /// What each batch encoded, for the caller to size.
    pub fn data(&self) -> impl Iterator<Item = &D> {
        self.batches.values().map(|b| &b.data)
    }

    /// Messages held in batches.
    pub fn buffered(&self) -> usize {
        self.batches.values().map(|b| b.messages).sum()
    }
}

/// Back-off between attempts of a failed flush: `first`, doubling up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            current: None,
        }
    }

    /// A flush failed: the wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let next = match self.current {
            None => self.first,
            Some(d) => (d * 2).min(self.max),
        };
        self.current = Some(next);
        next
    }

    /// The flush landed.
    pub fn reset(&mut self) {
        self.current = None;
    }

    pub fn retrying(&self) -> bool {
        self.current.is_some()
    }

    /// The wait before the next attempt, while retrying.
    pub fn current(&self) -> Option<Duration> {
        self.current
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
