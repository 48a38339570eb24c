//! How far each normalizer got through the websocket's frames. The websocket numbers every
//! market-data and book frame it hands on; each normalizer records the number of the last one
//! it handled. A frame whose rows Kafka acknowledged and that every normalizer it went to has
//! handled is safe to forget: no replay can need it (`ib_websocket/unacked.rs`). Without this,
//! the replay store could not tell a frame acknowledged from one whose normalizer died with it
//! in its mailbox (both release their permit), and had to keep every frame for a fixed time.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::normalizer::{Normalize, indicators, l2, tick};

/// The normalizers that take frames from the websocket, in slot order.
const CATEGORIES: [&str; 3] = [
    tick::Trades::CATEGORY,
    l2::Books::CATEGORY,
    indicators::Statistics::CATEGORY,
];
const BOOK_SLOT: usize = 1;

/// Shared by the websocket (which numbers frames) and the normalizers (which report them).
/// Lives as long as the connector's lane, so that numbers stay increasing across restarts of
/// the websocket and of the normalizers.
#[derive(Debug, Default)]
pub struct FrameProgress {
    last_number: AtomicU64,
    handled: [AtomicU64; 3],
}

impl FrameProgress {
    /// The next frame's number (from 1: 0 means "none handled yet").
    pub fn number(&self) -> u64 {
        self.last_number.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The slot of a normalizer's category; `None` for a category that takes no frames.
    pub fn slot(category: &str) -> Option<usize> {
        CATEGORIES.iter().position(|c| *c == category)
    }

    /// A normalizer handled frame `number` (frames come in order; a replay may repeat older
    /// ones, which do not move it back).
    pub fn handled(&self, slot: usize, number: u64) {
        self.handled[slot].fetch_max(number, Ordering::Release);
    }

    /// Whether every normalizer has handled market-data frame `number` (it goes to all).
    pub fn market_data_handled(&self, number: u64) -> bool {
        self.handled
            .iter()
            .all(|h| h.load(Ordering::Acquire) >= number)
    }

    /// Whether the book normalizer, the only one a ladder goes to, has handled `number`.
    pub fn book_handled(&self, number: u64) -> bool {
        self.handled[BOOK_SLOT].load(Ordering::Acquire) >= number
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_handled_once_every_normalizer_it_went_to_is_past_it() {
        let p = FrameProgress::default();
        let (a, b) = (p.number(), p.number());
        assert_eq!((a, b), (1, 2));
        let book = FrameProgress::slot(l2::Books::CATEGORY).unwrap();
        assert_eq!(book, BOOK_SLOT);
        p.handled(book, b);
        assert!(p.book_handled(b));
        assert!(!p.market_data_handled(a), "tick and indicators are behind");
        for c in CATEGORIES {
            p.handled(FrameProgress::slot(c).unwrap(), a);
        }
        assert!(p.market_data_handled(a));
        assert!(
            p.book_handled(b),
            "a replayed older frame does not move it back"
        );
        assert!(!p.market_data_handled(b));
        assert_eq!(FrameProgress::slot("numeric_economic_data"), None);
    }
}
