//! The consumer context of group members that position their partitions themselves (the
//! ClickHouse writers from their offsets table, the calculators from their look-back).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use tracing::warn;

/// An assignment change seen by librdkafka's rebalance callback, handled later by the actor.
#[derive(Debug)]
pub enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Pauses newly assigned partitions inside the callback (before any fetch), so that the actor
/// can read where each one starts; it then resumes them and seeks them itself.
#[derive(Default)]
pub struct PausingRebalance {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Signalled on every change, so an actor waiting for messages (none come from paused
    /// partitions) positions new partitions at once instead of at its next timer.
    changed: tokio::sync::Notify,
}

impl PausingRebalance {
    /// The changes seen since the last call, oldest first.
    pub fn take(&self) -> Vec<RebalanceEvent> {
        match self.events.lock() {
            Ok(mut events) => std::mem::take(&mut *events),
            Err(_) => Vec::new(),
        }
    }

    /// Completes once a change has been seen since the last completion (at once if one was
    /// seen while nobody waited).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Hands changes the actor could not apply yet back, ahead of any seen since.
    pub fn put_back(&self, mut unapplied: Vec<RebalanceEvent>) {
        if unapplied.is_empty() {
            return;
        }
        if let Ok(mut events) = self.events.lock() {
            unapplied.append(&mut events);
            *events = unapplied;
        }
    }
}

/// Seeks a freshly assigned partition to `offset`: librdkafka may refuse until the assignment
/// has settled, so it tries `attempts` times, 100 ms apart; the last error is returned.
///
/// Call it after `resume`, never before: a resume does not wake librdkafka's fetcher, which
/// then starts only at its next timer (measured: 0.5 s), while a seek does; and seeking
/// after resuming is librdkafka's own advice for a pause inside the rebalance callback
/// (confluentinc/librdkafka#2190: a pause can make the assignment's start position stale).
/// Messages fetched before the seek are discarded by librdkafka's version barrier.
///
/// Each try runs on the blocking pool: librdkafka's seek waits for the fetcher's reply (up to
/// 5 s), and a process of one role has a single runtime worker (`runtime.worker_threads`).
pub async fn seek_assigned(
    consumer: &Arc<StreamConsumer<PausingRebalance>>,
    topic: &str,
    partition: i32,
    offset: i64,
    attempts: u32,
) -> Result<(), KafkaError> {
    let mut attempt = 1;
    loop {
        let (c, t) = (consumer.clone(), topic.to_string());
        let tried = tokio::task::spawn_blocking(move || {
            c.seek(
                &t,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            )
        })
        .await
        .unwrap_or_else(|e| Err(KafkaError::Seek(e.to_string())));
        match tried {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= attempts => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        attempt += 1;
    }
}

/// One partition's log bounds and the group's committed offset within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPosition {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    /// `None` when the group has committed nothing for the partition.
    pub committed: Option<i64>,
}

/// Reads, for each of `partitions` of `topic`, where the log starts and ends and where the
/// group of `consumer` committed (clamped to the log: retention may have passed it). Blocking
/// calls; `consumer` should not be a member of the group (a member's look-ups fail while it is
/// between generations).
pub fn group_positions(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<GroupPosition>, KafkaError> {
    let mut all = rdkafka::TopicPartitionList::new();
    for p in partitions {
        all.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(all, timeout)?;
    partitions
        .iter()
        .map(|&partition| {
            let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
            let committed =
                committed
                    .find_partition(topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) if o >= 0 => Some(o.clamp(low, high)),
                        _ => None,
                    });
            Ok(GroupPosition {
                partition,
                low,
                high,
                committed,
            })
        })
        .collect()
}

impl ClientContext for PausingRebalance {}

impl ConsumerContext for PausingRebalance {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance
            && tpl.count() > 0
            && let Err(e) = consumer.pause(tpl)
        {
            warn!(error = %e, "cannot pause newly assigned partitions");
        }
        if let Some(event) = event_of(rebalance)
            && let Ok(mut events) = self.events.lock()
        {
            events.push(event);
            self.changed.notify_one();
        }
    }
}

/// The change a rebalance makes, if any. A cooperative rebalance that gives or takes nothing
/// from this member still calls back, with an empty list: it is no event (positioning an
/// empty list would ask the broker about nothing, and librdkafka refuses an empty
/// offsets-for-times list with `InvalidArgument`).
fn event_of(rebalance: &Rebalance<'_>) -> Option<RebalanceEvent> {
    let partitions = |tpl: &rdkafka::TopicPartitionList| -> Vec<i32> {
        tpl.elements().iter().map(|e| e.partition()).collect()
    };
    match rebalance {
        Rebalance::Assign(tpl) if tpl.count() > 0 => {
            Some(RebalanceEvent::Assigned(partitions(tpl)))
        }
        Rebalance::Revoke(tpl) if tpl.count() > 0 => Some(RebalanceEvent::Revoked(partitions(tpl))),
        Rebalance::Assign(_) | Rebalance::Revoke(_) => None,
        Rebalance::Error(e) => {
            warn!(error = %e, "rebalance error");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_incremental_change_is_no_event() {
        let empty = rdkafka::TopicPartitionList::new();
        assert!(event_of(&Rebalance::Assign(&empty)).is_none());
        assert!(event_of(&Rebalance::Revoke(&empty)).is_none());
        let mut two = rdkafka::TopicPartitionList::new();
        two.add_partition("t", 0);
        two.add_partition("t", 3);
        assert_eq!(
            format!("{:?}", event_of(&Rebalance::Assign(&two))),
            "Some(Assigned([0, 3]))"
        );
        assert_eq!(
            format!("{:?}", event_of(&Rebalance::Revoke(&two))),
            "Some(Revoked([0, 3]))"
        );
    }

    #[test]
    fn changes_put_back_come_before_those_seen_since() {
        let ctx = PausingRebalance::default();
        ctx.events
            .lock()
            .unwrap()
            .push(RebalanceEvent::Revoked(vec![2]));
        ctx.put_back(vec![RebalanceEvent::Assigned(vec![0, 1])]);
        let order: Vec<String> = ctx.take().iter().map(|e| format!("{e:?}")).collect();
        assert_eq!(order, ["Assigned([0, 1])", "Revoked([2])"]);
        assert!(ctx.take().is_empty());
    }
}
