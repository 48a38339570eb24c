//! End-to-end backpressure on the tick path. The websocket reader takes one permit per frame
//! before reading the next one, and once the frame is read, its size in KiB from a second pool
//! ([`MAX_IN_FLIGHT_BYTES`]); the permit travels with the rows made from that frame and is
//! released when Kafka has acknowledged all of them. When Kafka is slow or down, either pool
//! runs out and the reader stops reading the socket: memory stays bounded in frames and in
//! bytes (failure row 7).

use std::sync::{Arc, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of frames in flight at most (charged in KiB per frame, at least 1 KiB).
pub const MAX_IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;

/// What one frame holds of the two pools.
#[derive(Debug)]
struct Held {
    _frame: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// A share of one frame's permit; the permit returns when the last share is dropped.
#[derive(Clone, Debug)]
pub struct Inflight(Option<Arc<Held>>);

impl Inflight {
    /// For rows that do not come from the websocket (tests, replay).
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether both hold the same frame's permit (or both none).
    pub fn same(&self, other: &Inflight) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// Observes the permit without holding it (the websocket's replay buffer).
    pub fn watch(&self) -> InflightWatch {
        InflightWatch(self.0.as_ref().map(Arc::downgrade))
    }
}

/// A frame's permit seen from outside: pending until Kafka acknowledged the frame's rows.
#[derive(Clone, Debug, Default)]
pub struct InflightWatch(Option<Weak<Held>>);

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
    /// KiB of frames in flight.
    kib: Arc<Semaphore>,
    max_kib: u32,
}

impl InflightLimit {
    pub fn new(max: usize) -> Self {
        Self::with_bytes(max, MAX_IN_FLIGHT_BYTES)
    }

    pub fn with_bytes(max: usize, max_bytes: usize) -> Self {
        let max_kib = u32::try_from(max_bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        Self {
            semaphore: Arc::new(Semaphore::new(max)),
            max,
            kib: Arc::new(Semaphore::new(max_kib as usize)),
            max_kib,
        }
    }

    /// Waits for a frame's permit; returns `None` only if the pool was closed.
    pub async fn acquire(&self) -> Option<Inflight> {
        let permit = self.semaphore.clone().acquire_owned().await.ok()?;
        Some(Inflight(Some(Arc::new(Held {
            _frame: permit,
            _bytes: None,
        }))))
    }

    /// Adds the frame's size to its permit, waiting while the frames in flight hold too many
    /// bytes (a frame larger than the whole pool waits for all of it). `None` only if the pool
    /// was closed. A permit already shared or without a pool is returned as it is.
    pub async fn charge(&self, permit: Inflight, bytes: usize) -> Option<Inflight> {
        let Some(held) = permit.0 else {
            return Some(Inflight(None));
        };
        let held = match Arc::try_unwrap(held) {
            Ok(h) => h,
            Err(shared) => return Some(Inflight(Some(shared))),
        };
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_kib);
        let charged = self.kib.clone().acquire_many_owned(kib).await.ok()?;
        Some(Inflight(Some(Arc::new(Held {
            _frame: held._frame,
            _bytes: Some(charged),
        }))))
    }

    /// KiB of frames in flight.
    pub fn in_flight_kib(&self) -> usize {
        self.max_kib as usize - self.kib.available_permits()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn in_flight(&self) -> usize {
        self.max - self.semaphore.available_permits()
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
    async fn bytes_in_flight_stop_the_next_frame_until_acknowledged() {
        let limit = InflightLimit::with_bytes(100, 4 * 1024);
        let a = limit.acquire().await.unwrap();
        let a = limit.charge(a, 3 * 1024 + 1).await.unwrap();
        assert_eq!(limit.in_flight_kib(), 4);
        let b = limit.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.charge(b, 10).await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the pool is full");
        let watch = a.watch();
        drop(a);
        assert!(!watch.pending());
        assert!(waiter.await.unwrap());
        // A frame larger than the whole pool still passes, alone.
        let c = limit.acquire().await.unwrap();
        let c = limit.charge(c, 1 << 30).await.unwrap();
        assert_eq!(limit.in_flight_kib(), 4);
        drop(c);
        assert_eq!((limit.in_flight(), limit.in_flight_kib()), (0, 0));
    }
}
