//! Finding group-member partitions that stopped being read: held, behind Kafka's end, and not
//! moving. librdkafka can leave a partition paused though its owner resumed it (a resume that
//! races its own assignment work, confluentinc/librdkafka#5591), or a fetcher stuck; nothing
//! else would ever read such a partition again. Used by the ClickHouse writers and the
//! calculator consumers, each of which restarts what this finds (resume, then seek back).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::consumer::{Consumer, ConsumerContext};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::metrics::Metrics;

/// `(partition, position, Kafka's end)` of each held partition whose end could be read.
pub type PartitionEnds = Vec<(i32, i64, i64)>;

/// Reads Kafka's end (high watermark) of each held `(partition, position)`: one `ListOffsets`
/// request each, waiting up to `timeout`, so callers run it on the blocking pool. A partition
/// whose end cannot be read is left out.
pub fn read_ends<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    held: Vec<(i32, i64)>,
    timeout: Duration,
) -> PartitionEnds {
    held.into_iter()
        .filter_map(|(p, pos)| {
            let (_, high) = consumer.fetch_watermarks(topic, p, timeout).ok()?;
            Some((p, pos, high))
        })
        .collect()
}

/// Kafka's ends read beside an actor, one read at a time on the blocking pool: the actor takes
/// the last read once it has finished and starts the next, and never waits for Kafka (a broker
/// that does not answer would otherwise hold it for the timeout of every partition).
#[derive(Debug, Default)]
pub struct EndsReader {
    reading: Option<JoinHandle<PartitionEnds>>,
}

impl EndsReader {
    /// The ends of the last read, once it has finished; then nothing until the next one has.
    pub fn take_finished(&mut self) -> Option<PartitionEnds> {
        let read = self.reading.take_if(|r| r.is_finished())?;
        read.now_or_never()?.ok()
    }

    /// A read is under way.
    pub fn is_reading(&self) -> bool {
        self.reading.is_some()
    }

    /// Starts reading the ends of `held` (see [`read_ends`]) unless a read is under way.
    pub fn start<X, C>(
        &mut self,
        consumer: &Arc<C>,
        topic: &str,
        held: Vec<(i32, i64)>,
        timeout: Duration,
    ) where
        X: ConsumerContext + 'static,
        C: Consumer<X> + Send + Sync + 'static,
    {
        if self.reading.is_some() {
            return;
        }
        let (consumer, topic) = (consumer.clone(), topic.to_string());
        self.reading = Some(tokio::task::spawn_blocking(move || {
            read_ends(&*consumer, &topic, held, timeout)
        }));
    }
}

/// Logs and counts partitions found stalled (`marketlane_consumer_stalls_total{topic}`), just
/// before their owner restarts them.
pub fn report(metrics: &Metrics, topic: &str, stalled: &PartitionEnds, stall_after: Duration) {
    warn!(topic, partitions = ?stalled, ?stall_after,
        "partitions behind and silent (partition, position, end); resuming and seeking back");
    metrics
        .consumer_stalls
        .with_label_values(&[topic])
        .inc_by(stalled.len() as u64);
}

/// Each held partition's position at the last check, and since when it has been behind
/// without moving.
#[derive(Debug, Default)]
pub struct StallWatch {
    progress: HashMap<i32, (i64, Option<Instant>)>,
}

impl StallWatch {
    /// Takes the ends read at `now`; returns the partitions that have been behind, at the same
    /// position, at every check for `stall_after` or longer. The clock of each one returned
    /// starts again, so a partition still stuck is returned once more `stall_after` later.
    /// Partitions absent from `ends` are forgotten (no longer held, or their end unread).
    pub fn check(
        &mut self,
        now: Instant,
        ends: &PartitionEnds,
        stall_after: Duration,
    ) -> PartitionEnds {
        let mut stalled = Vec::new();
        for &(p, pos, high) in ends {
            let entry = self.progress.entry(p).or_insert((pos, None));
            if entry.0 != pos || high <= pos {
                // Moved, or nothing to read: not behind.
                *entry = (pos, None);
                continue;
            }
            let behind_since = *entry.1.get_or_insert(now);
            if now.duration_since(behind_since) >= stall_after {
                stalled.push((p, pos, high));
                entry.1 = Some(now);
            }
        }
        self.progress
            .retain(|p, _| ends.iter().any(|(held, _, _)| held == p));
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_stalled_only_when_behind_and_unmoved_for_the_whole_time() {
        let after = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut watch = StallWatch::default();
        // 0: behind and stuck; 1: behind but moving; 2: caught up and quiet.
        assert!(
            watch
                .check(at(0), &vec![(0, 5, 9), (1, 5, 9), (2, 7, 7)], after)
                .is_empty()
        );
        assert!(
            watch
                .check(at(5), &vec![(0, 5, 9), (1, 6, 9), (2, 7, 7)], after)
                .is_empty()
        );
        assert_eq!(
            watch.check(at(10), &vec![(0, 5, 9), (1, 7, 9), (2, 7, 7)], after),
            vec![(0, 5, 9)]
        );
        // Its clock started again: not returned at the next check, but after another span.
        assert!(watch.check(at(11), &vec![(0, 5, 9)], after).is_empty());
        assert_eq!(
            watch.check(at(20), &vec![(0, 5, 9)], after),
            vec![(0, 5, 9)]
        );
        // A partition that is let go and comes back starts from scratch.
        assert!(watch.check(at(21), &vec![], after).is_empty());
        assert!(watch.check(at(40), &vec![(0, 5, 9)], after).is_empty());
    }
}
