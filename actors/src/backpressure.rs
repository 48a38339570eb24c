//! End-to-end backpressure on the tick path. The websocket reader takes one permit per frame
//! before reading the next one; the permit travels with the rows made from that frame and is
//! released when Kafka has acknowledged all of them. When Kafka is slow or down, the permits
//! run out and the reader stops reading the socket: memory stays bounded (failure row 7).

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A share of one frame's permit; the permit returns when the last share is dropped.
#[derive(Clone, Debug)]
pub struct Inflight(#[allow(dead_code)] Option<Arc<OwnedSemaphorePermit>>);

impl Inflight {
    /// For rows that do not come from the websocket (tests, replay).
    pub fn none() -> Self {
        Self(None)
    }

    /// Observes the permit without holding it (the websocket's replay buffer).
    pub fn watch(&self) -> InflightWatch {
        InflightWatch(self.0.as_ref().map(Arc::downgrade))
    }
}

/// A frame's permit seen from outside: pending until Kafka acknowledged the frame's rows.
#[derive(Clone, Debug, Default)]
pub struct InflightWatch(Option<Weak<OwnedSemaphorePermit>>);

impl InflightWatch {
    pub fn pending(&self) -> bool {
        self.0.as_ref().is_some_and(|w| w.strong_count() > 0)
    }

    /// The permit again if it is still held (a replayed frame keeps its place in the bound).
    pub fn resume(&self) -> Inflight {
        Inflight(self.0.as_ref().and_then(Weak::upgrade))
    }
}

/// The pool of permits shared by a connector's reader and producer.
#[derive(Clone, Debug)]
pub struct InflightLimit {
    semaphore: Arc<Semaphore>,
    max: usize,
}

impl InflightLimit {
    pub fn new(max: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Waits for a permit; returns `None` only if the pool was closed.
    pub async fn acquire(&self) -> Option<Inflight> {
        let permit = self.semaphore.clone().acquire_owned().await.ok()?;
        Some(Inflight(Some(Arc::new(permit))))
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn in_flight(&self) -> usize {
        self.max - self.semaphore.available_permits()
    }

    /// Waits up to `timeout` until no permit is held; whether that happened.
    pub async fn idle(&self, timeout: Duration) -> bool {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        match tokio::time::timeout(timeout, self.semaphore.acquire_many(all)).await {
            Ok(Ok(_all_back)) => true,
            _ => self.in_flight() == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permit_returns_when_last_share_drops() {
        let limit = InflightLimit::new(1);
        let a = limit.acquire().await.unwrap();
        let b = a.clone();
        assert_eq!(limit.in_flight(), 1);
        drop(a);
        assert_eq!(limit.in_flight(), 1);
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn idle_waits_for_every_permit() {
        let limit = InflightLimit::new(3);
        assert!(limit.idle(Duration::from_millis(10)).await);
        let a = limit.acquire().await.unwrap();
        assert!(!limit.idle(Duration::from_millis(10)).await);
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.idle(Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        drop(a);
        assert!(waiter.await.unwrap());
        assert_eq!(limit.in_flight(), 0);
    }
}
