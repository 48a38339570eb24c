//! The writer's Kafka side: its group consumer (bounded prefetch, the pausing rebalance
//! context shared with the calculators), seeks, pause/resume, the advisory commit and the lag
//! export, and the read-back of a refused row's payload. What to seek where is decided by
//! [`super::batch::Batcher`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::config::{KafkaConfig, WriterConfig};
use crate::kafka::rebalance::{PausingRebalance, RebalanceEvent, group_positions, seek_assigned};
use crate::kafka::stall::{EndsReader, PartitionEnds, StallWatch};
use crate::metrics::Metrics;

/// Bytes librdkafka may prefetch per writer, in KiB (`queued.max.messages.kbytes`, and the
/// fetch response size). Its default is 64 MiB per consumer; with a writer per category and
/// per quarantine topic that was most of the daemon's memory under lag or a ClickHouse
/// outage. A batch is encoded into the writer's own buffer, so a few MiB ahead keep it busy.
/// librdkafka's heap holds several times this per busy consumer (a fetch in flight besides
/// the queue, compressed and decompressed sets, an op per message): at 4 MiB, 64 MB of it was
/// in use in a writer falling behind on three busy topics (glibc `malloc_stats`).
pub const PREFETCH_KIB: u32 = 2048;
/// The same for quarantine topics, which carry little.
pub const QUARANTINE_PREFETCH_KIB: u32 = 1024;

/// One writer's group consumer of one topic.
pub struct WriterConsumer {
    inner: Arc<StreamConsumer<PausingRebalance>>,
    kafka: KafkaConfig,
    topic: String,
    group: String,
    last_lag_update: Instant,
    /// Partitions in the last lag export; a newly assigned one is exported at once.
    lag_partitions: usize,
    /// Kafka's ends being read for the next lag export and stall check.
    reading_ends: EndsReader,
    stalls: StallWatch,
}

impl WriterConsumer {
    /// Joins the writer's own group (`group`, static member `instance`) on `topic`.
    pub fn subscribe(
        kafka: &KafkaConfig,
        writer: &WriterConfig,
        topic: &str,
        group: &str,
        instance: &str,
        prefetch_kib: u32,
    ) -> Result<Self, KafkaError> {
        let prefetch_bytes = (prefetch_kib as usize * 1024).to_string();
        let consumer: StreamConsumer<PausingRebalance> =
            crate::kafka::group_consumer_config(kafka, group, instance, writer.session_timeout)
                .set("auto.offset.reset", "earliest")
                .set("fetch.queue.backoff.ms", "10")
                .set("queued.max.messages.kbytes", prefetch_kib.to_string())
                // One fetch response at most the prefetch budget (librdkafka's default is 50 MiB); a
                // larger single message is still returned on its own.
                .set("fetch.max.bytes", prefetch_bytes)
                .create_with_context(PausingRebalance::default())?;
        consumer.subscribe(&[topic])?;
        Ok(Self {
            inner: Arc::new(consumer),
            kafka: kafka.clone(),
            topic: topic.to_string(),
            group: group.to_string(),
            last_lag_update: Instant::now(),
            lag_partitions: 0,
            reading_ends: EndsReader::default(),
            stalls: StallWatch::default(),
        })
    }

    /// The consumer itself, to receive from while the writer's state is borrowed mutably.
    pub fn stream(&self) -> Arc<StreamConsumer<PausingRebalance>> {
        self.inner.clone()
    }

    /// Assignment changes seen since the last call, oldest first.
    pub fn take_events(&self) -> Vec<RebalanceEvent> {
        self.inner.context().take()
    }

    /// Hands changes that could not be applied yet back, ahead of newer ones.
    pub fn put_back(&self, events: Vec<RebalanceEvent>) {
        self.inner.context().put_back(events);
    }

    /// Seeks a partition; librdkafka may need a moment after an assignment before it accepts.
    /// A failed seek is logged: the stored offsets still filter what was already written.
    pub async fn seek(&self, partition: i32, offset: i64) {
        if let Err(e) = seek_assigned(&self.inner, &self.topic, partition, offset, 20).await {
            warn!(topic = %self.topic, partition, offset, error = %e, "seek failed; the stored offsets filter replays");
        }
    }

    /// Completes once the group has assigned or revoked partitions since the last completion.
    pub async fn rebalanced(&self) {
        self.inner.context().changed().await;
    }

    /// Where partitions without stored state start: the group's committed offset (within the
    /// log), else the log's start. Read by a client of its own that does not join the group:
    /// the member's own look-ups fail while it is between generations.
    pub async fn group_starts(&self, partitions: &[i32]) -> Result<HashMap<i32, i64>, String> {
        let (kafka, group, topic) = (self.kafka.clone(), self.group.clone(), self.topic.clone());
        let partitions = partitions.to_vec();
        tokio::task::spawn_blocking(move || {
            group_starts(&kafka, &group, &topic, &partitions, Duration::from_secs(5))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Starts newly assigned (paused) partitions, and restarts stalled ones: resumes them, then
    /// seeks each that has a known start. Seeking after the resume is what makes librdkafka
    /// fetch at once (see [`seek_assigned`]). A partition without one (its start could not be
    /// read) is left where librdkafka starts it: the group's committed offset, or the earliest.
    pub async fn start(&self, partitions: &[(i32, Option<i64>)]) {
        let parts: Vec<i32> = partitions.iter().map(|(p, _)| *p).collect();
        self.resume(&parts);
        for (p, next) in partitions {
            if let Some(next) = next {
                self.seek(*p, *next).await;
            }
        }
    }

    fn list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        tpl
    }

    pub fn pause(&self, partitions: &[i32]) {
        if let Err(e) = self.inner.pause(&self.list(partitions)) {
            warn!(topic = %self.topic, error = %e, "cannot pause partitions");
        }
    }

    pub fn resume(&self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        if let Err(e) = self.inner.resume(&self.list(partitions)) {
            warn!(topic = %self.topic, error = %e, "cannot resume partitions");
        }
    }

    /// Takes whatever arrives within a few milliseconds without using it, to keep the member
    /// in its group and serve rebalances while a failed flush waits; returns the
    /// `(partition, offset)` of each message so delivered.
    pub async fn poll_untaken(&self) -> Vec<(i32, i64)> {
        use rdkafka::Message as _;
        let mut out = Vec::new();
        while let Ok(Ok(m)) =
            tokio::time::timeout(Duration::from_millis(5), self.inner.recv()).await
        {
            out.push((m.partition(), m.offset()));
        }
        out
    }

    /// Commits `(partition, next offset)` pairs. Advisory only: the offsets table is what a
    /// new owner of the partition starts from.
    pub fn commit(&self, next: &[(i32, i64)]) {
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in next {
            let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*offset));
        }
        if let Err(e) = self.inner.commit(&tpl, CommitMode::Async) {
            warn!(topic = %self.topic, error = %e, "offset commit failed (advisory)");
        }
    }

    /// Exports the consumer lag every few seconds, and at once when the assignment changed, and
    /// returns the partitions found stalled (see `writer.stall_after`; `None` while the writer
    /// pauses its partitions itself, which also restarts the clocks). Kafka's ends are read on
    /// the blocking pool and used at the next call after they arrive.
    pub fn watch(
        &mut self,
        positions: Vec<(i32, i64)>,
        metrics: &Arc<Metrics>,
        stall_after: Option<Duration>,
    ) -> PartitionEnds {
        let mut stalled = Vec::new();
        if let Some(ends) = self.reading_ends.take_finished() {
            for &(p, next, high) in &ends {
                metrics
                    .consumer_lag
                    .with_label_values(&[self.group.as_str(), self.topic.as_str(), &p.to_string()])
                    .set((high - next).max(0));
            }
            match stall_after {
                Some(after) => stalled = self.stalls.check(Instant::now(), &ends, after),
                None => self.stalls = StallWatch::default(),
            }
        }
        let assignment_changed = positions.len() != self.lag_partitions;
        if self.reading_ends.is_reading()
            || (!assignment_changed && self.last_lag_update.elapsed() < Duration::from_secs(2))
        {
            return stalled;
        }
        self.last_lag_update = Instant::now();
        self.lag_partitions = positions.len();
        self.reading_ends
            .start(&self.inner, &self.topic, positions, Duration::from_secs(1));
        stalled
    }

    /// Forgets how long partitions have been behind (the writer paused them on purpose).
    pub fn reset_stalls(&mut self) {
        self.stalls = StallWatch::default();
    }
}

/// The blocking body of [`WriterConsumer::group_starts`].
fn group_starts(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<HashMap<i32, i64>, KafkaError> {
    let reader: BaseConsumer = crate::kafka::client_config(kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    Ok(group_positions(&reader, topic, partitions, timeout)?
        .into_iter()
        .map(|g| (g.partition, g.committed.unwrap_or(g.low)))
        .collect())
}

/// How long the payloads of a batch's refused rows are looked for in Kafka before the rows are
/// quarantined without them.
pub const REFETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the payloads at `offsets` of `topic`/`partition` back from Kafka, in one pass: the
/// batch does not keep them, and only a row ClickHouse refused on its own needs its payload
/// (for its quarantine record). `None` for an offset that is no longer in the log (retention),
/// was never there, or did not arrive within `timeout`. Blocking calls, run off the executor.
pub async fn fetch_payloads(
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
    partition: i32,
    offsets: &[i64],
    timeout: Duration,
) -> Vec<Option<Vec<u8>>> {
    let n = offsets.len();
    let read = ReadBack {
        kafka: kafka.clone(),
        group: group.to_string(),
        topic: topic.to_string(),
        partition,
        offsets: offsets.to_vec(),
        timeout,
    };
    tokio::task::spawn_blocking(move || read.run())
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e, "the payload read-back failed");
            vec![None; n]
        })
}

/// One read-back of payloads, moved onto a blocking thread.
struct ReadBack {
    kafka: KafkaConfig,
    group: String,
    topic: String,
    partition: i32,
    offsets: Vec<i64>,
    timeout: Duration,
}

impl ReadBack {
    fn run(self) -> Vec<Option<Vec<u8>>> {
        let Self {
            kafka,
            group,
            topic,
            partition,
            offsets,
            timeout,
        } = self;
        let (kafka, group, topic, offsets) = (&kafka, group.as_str(), topic.as_str(), &offsets);
        let mut out = vec![None; offsets.len()];
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        // Assigned, never subscribed: no group is joined and nothing is committed (a `group.id` is
        // only what lets rust-rdkafka poll messages). An offset out of range is an error at once,
        // not a silent jump to the end of the log. The prefetch is bounded as the quarantine
        // writers' is: librdkafka's default would read up to 64 MiB of the log past the offsets.
        let consumer: BaseConsumer = match crate::kafka::client_config(kafka)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "error")
            .set(
                "queued.max.messages.kbytes",
                QUARANTINE_PREFETCH_KIB.to_string(),
            )
            .set(
                "fetch.max.bytes",
                (QUARANTINE_PREFETCH_KIB as usize * 1024).to_string(),
            )
            .create()
        {
            Ok(c) => c,
            Err(e) => {
                warn!(topic, partition, error = %e, "cannot create the payload read-back consumer");
                return out;
            }
        };
        // Offsets outside the log are gone (or never were): only the others are waited for.
        let (low, high) = match consumer.fetch_watermarks(topic, partition, left()) {
            Ok(w) => w,
            Err(e) => {
                warn!(topic, partition, error = %e, "cannot read the partition's watermarks to read payloads back");
                return out;
            }
        };
        let mut wanted: Vec<usize> = (0..offsets.len())
            .filter(|&i| (low..high).contains(&offsets[i]))
            .collect();
        wanted.sort_by_key(|&i| offsets[i]);
        let mut next = 0;
        let mut assigned = false;
        while next < wanted.len() && !left().is_zero() {
            if !assigned {
                let mut tpl = TopicPartitionList::new();
                let at = Offset::Offset(offsets[wanted[next]]);
                if let Err(e) = tpl
                    .add_partition_offset(topic, partition, at)
                    .and_then(|()| consumer.assign(&tpl))
                {
                    warn!(topic, partition, error = %e, "cannot assign the partition to read payloads back");
                    break;
                }
                assigned = true;
            }
            match consumer.poll(left()) {
                None => {}
                Some(Ok(m)) => {
                    // Offsets the log skips (compaction, transaction markers) are not there.
                    while next < wanted.len() && offsets[wanted[next]] < m.offset() {
                        next += 1;
                    }
                    if next < wanted.len() && offsets[wanted[next]] == m.offset() {
                        out[wanted[next]] = Some(m.payload().unwrap_or_default().to_vec());
                        next += 1;
                    }
                }
                Some(Err(e)) => {
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset
                        )
                    ) {
                        // Retention deleted it since the watermarks were read: go on from the next.
                        next += 1;
                        assigned = false;
                    }
                    warn!(topic, partition, error = %e, "reading payloads back");
                }
            }
        }
        let missing = out.iter().filter(|p| p.is_none()).count();
        if missing > 0 {
            warn!(
                topic,
                partition,
                missing,
                low,
                high,
                "payloads of refused rows could not be read back from kafka"
            );
        }
        out
    }
}
