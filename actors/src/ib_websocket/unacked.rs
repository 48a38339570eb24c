//! Frames a restarted normalizer must see again. IB replays nothing, so a normalizer that
//! panics would lose the frames in its mailbox and those sent while it was down. The
//! websocket keeps, in receive order, every market-data and book frame whose rows Kafka has
//! not acknowledged yet (its in-flight permit is alive) or that a normalizer it went to has
//! not handled yet ([`FrameProgress`]: a normalizer that died with the frame in its mailbox,
//! or was down when it was sent), together with the (re)subscription markers between them.
//! Older frames are folded into one merged field state per conid (`base`): what the
//! normalizer's per-conid state was built from. In steady state that keeps about the frames
//! in flight, not a time window of the stream.
//!
//! A restarted normalizer asks for a replay (`WsMsg::ReplayTo`): it gets the instruments, a
//! re-subscription of every conid, the merged state of each conid as a snapshot frame (which
//! only seeds, like IB's first frame after a subscription), then the kept frames in order. The
//! rows it makes again for frames that were already produced carry the same row ids (built
//! from IB's `_updated` and the merged trade content), so the overlap collapses in ClickHouse
//! and in the calculators' windows. Bounded: beyond [`Unacked::cap`] frames the oldest are
//! folded into the base even if unacknowledged (counted in `evicted`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use marketlane_protocol::ib::{BookFrame, Fields, MarketDataFrame};
use ractor::ActorRef;

use crate::backpressure::{Inflight, InflightWatch};
use crate::frame_progress::FrameProgress;
use crate::normalizer::{InstrumentMap, NormalizerMsg};

enum Item {
    MarketData(Arc<MarketDataFrame>),
    Book(Arc<BookFrame>),
    /// These conids were (re)subscribed here: their next frame is a snapshot.
    Resubscribed(Vec<i64>),
}

struct Kept {
    /// The frame's number ([`FrameProgress::number`]); 0 for a marker.
    number: u64,
    received_ns: i64,
    permit: InflightWatch,
    item: Item,
}

/// The merged fields of a conid's frames that are no longer kept.
struct Base {
    frame: MarketDataFrame,
    /// A re-subscription was folded in after the last folded frame: the next kept frame of
    /// the conid is a snapshot and seeds by itself.
    awaits_snapshot: bool,
}

pub struct Unacked {
    kept: VecDeque<Kept>,
    base: BTreeMap<i64, Base>,
    progress: Arc<FrameProgress>,
    /// At most this many frames are kept.
    pub cap: usize,
    /// Frames folded into the base while still unacknowledged (over the cap).
    pub evicted: u64,
}

impl Unacked {
    pub fn new(progress: Arc<FrameProgress>, cap: usize) -> Self {
        Self {
            kept: VecDeque::new(),
            base: BTreeMap::new(),
            progress,
            cap,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Keeps a market-data frame; returns its number, which goes to the normalizers with it.
    pub fn market_data(
        &mut self,
        frame: Arc<MarketDataFrame>,
        received_ns: i64,
        p: &Inflight,
    ) -> u64 {
        self.push(received_ns, p.watch(), Item::MarketData(frame))
    }

    /// Keeps a ladder; returns its number.
    pub fn book(&mut self, frame: Arc<BookFrame>, received_ns: i64, p: &Inflight) -> u64 {
        self.push(received_ns, p.watch(), Item::Book(frame))
    }

    pub fn resubscribed(&mut self, conids: &[i64]) {
        self.kept.push_back(Kept {
            number: 0,
            received_ns: 0,
            permit: InflightWatch::default(),
            item: Item::Resubscribed(conids.to_vec()),
        });
        self.fold();
    }

    fn push(&mut self, received_ns: i64, permit: InflightWatch, item: Item) -> u64 {
        let number = self.progress.number();
        self.kept.push_back(Kept {
            number,
            received_ns,
            permit,
            item,
        });
        self.fold();
        number
    }

    /// Whether a replay may still need `k`: its rows are not acknowledged, or a normalizer it
    /// went to has not handled it (a marker is needed only while a frame before it is).
    fn needed(&self, k: &Kept) -> bool {
        k.permit.pending()
            || match k.item {
                Item::MarketData(_) => !self.progress.market_data_handled(k.number),
                Item::Book(_) => !self.progress.book_handled(k.number),
                Item::Resubscribed(_) => false,
            }
    }

    /// Folds the oldest frames into the base while no replay can need them (or while over the
    /// cap). Stops at the first one still needed: order is kept.
    fn fold(&mut self) {
        while let Some(front) = self.kept.front() {
            let over = self.kept.len() > self.cap;
            let needed = self.needed(front);
            if needed && !over {
                break;
            }
            if needed {
                self.evicted += 1;
            }
            let Some(k) = self.kept.pop_front() else {
                break;
            };
            match k.item {
                Item::MarketData(f) => {
                    let Some(conid) = f.conid else { continue };
                    let b = self.base.entry(conid).or_insert_with(|| Base {
                        frame: MarketDataFrame {
                            conid: Some(conid),
                            updated_ms: None,
                            fields: Fields::new(),
                        },
                        awaits_snapshot: false,
                    });
                    for (k, v) in f.fields.iter() {
                        b.frame.fields.insert(k, v.clone());
                    }
                    if f.updated_ms.is_some() {
                        b.frame.updated_ms = f.updated_ms.max(b.frame.updated_ms);
                    }
                    b.awaits_snapshot = false;
                }
                // A ladder is complete in itself: nothing to merge.
                Item::Book(_) => {}
                Item::Resubscribed(conids) => {
                    for c in conids {
                        if let Some(b) = self.base.get_mut(&c) {
                            b.awaits_snapshot = true;
                        }
                    }
                }
            }
        }
    }

    /// Hands a restarted normalizer what it needs to rebuild its state and produce again the
    /// rows of the kept frames (see the module comment). Returns the frames replayed and the
    /// messages the normalizer did not take (it failed again meanwhile: its next start asks
    /// for the replay again, which still holds them).
    pub fn replay(
        &mut self,
        to: &ActorRef<NormalizerMsg>,
        instruments: &InstrumentMap,
    ) -> (usize, u64) {
        self.fold();
        let known = |c: Option<i64>| c.is_some_and(|c| instruments.contains_key(&c));
        let mut undelivered = 0u64;
        let mut cast = |msg: NormalizerMsg| {
            if to.cast(msg).is_err() {
                undelivered += 1;
            }
        };
        cast(NormalizerMsg::ReplayBegins);
        cast(NormalizerMsg::Instruments(instruments.clone()));
        let mut conids: BTreeSet<i64> = self.base.keys().copied().collect();
        for k in &self.kept {
            match &k.item {
                Item::MarketData(f) => conids.extend(f.conid),
                Item::Book(f) => conids.extend(f.conid),
                Item::Resubscribed(c) => conids.extend(c.iter().copied()),
            }
        }
        conids.retain(|c| instruments.contains_key(c));
        cast(NormalizerMsg::Resubscribed(conids.into_iter().collect()));
        for b in self.base.values() {
            if !b.awaits_snapshot && known(b.frame.conid) {
                cast(NormalizerMsg::MarketData {
                    frame: Arc::new(b.frame.clone()),
                    received_ns: 0,
                    permit: Inflight::none(),
                    number: 0,
                });
            }
        }
        let mut n = 0;
        for k in &self.kept {
            let msg = match &k.item {
                Item::MarketData(f) if known(f.conid) => NormalizerMsg::MarketData {
                    frame: f.clone(),
                    received_ns: k.received_ns,
                    permit: k.permit.resume(),
                    number: k.number,
                },
                Item::Book(f) if known(f.conid) => NormalizerMsg::Book {
                    frame: f.clone(),
                    received_ns: k.received_ns,
                    permit: k.permit.resume(),
                    number: k.number,
                },
                Item::Resubscribed(c) => NormalizerMsg::Resubscribed(c.clone()),
                _ => continue,
            };
            n += usize::from(!matches!(msg, NormalizerMsg::Resubscribed(_)));
            cast(msg);
        }
        (n, undelivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backpressure::InflightLimit;
    use crate::normalizer::{Normalize, indicators, l2, tick};
    use serde_json::json;

    fn md(conid: i64, updated: i64, fields: &[(&str, serde_json::Value)]) -> Arc<MarketDataFrame> {
        Arc::new(MarketDataFrame {
            conid: Some(conid),
            updated_ms: Some(updated),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        })
    }

    fn book(conid: i64) -> Arc<BookFrame> {
        Arc::new(BookFrame {
            account: None,
            conid: Some(conid),
            rows: Vec::new(),
        })
    }

    const ALL: [&str; 3] = [
        tick::Trades::CATEGORY,
        l2::Books::CATEGORY,
        indicators::Statistics::CATEGORY,
    ];

    fn handled(p: &FrameProgress, categories: &[&str], number: u64) {
        for c in categories {
            p.handled(FrameProgress::slot(c).unwrap(), number);
        }
    }

    #[tokio::test]
    async fn acknowledged_handled_frames_fold_into_the_base_and_pending_ones_are_kept() {
        let progress = Arc::new(FrameProgress::default());
        let limit = InflightLimit::new(10);
        let mut u = Unacked::new(progress.clone(), 100);
        let acked = limit.acquire().await.unwrap();
        u.resubscribed(&[1]);
        let first = u.market_data(
            md(1, 1, &[("31", json!("10")), ("7059", json!("1"))]),
            5,
            &acked,
        );
        drop(acked);
        handled(&progress, &ALL, first);
        let pending = limit.acquire().await.unwrap();
        let second = u.market_data(md(1, 2, &[("31", json!("11"))]), 6, &pending);
        let after = Inflight::none();
        let third = u.market_data(md(1, 3, &[("7059", json!("2"))]), 7, &after);
        handled(&progress, &ALL, third);
        assert_eq!((first, second, third), (1, 2, 3));
        // The marker and the acknowledged frame are folded; the pending one holds the rest.
        assert_eq!(u.len(), 2);
        let b = &u.base[&1];
        assert_eq!(b.frame.fields["31"], json!("10"));
        assert_eq!(b.frame.updated_ms, Some(1));
        assert!(!b.awaits_snapshot);
        drop(pending);
        u.fold();
        assert!(u.is_empty());
        assert_eq!(u.base[&1].frame.fields["7059"], json!("2"));
        assert_eq!(u.evicted, 0);
    }

    /// A normalizer that dies with frames in its mailbox releases their permits without their
    /// rows reaching Kafka: the frames stay until it (restarted) has handled them.
    #[tokio::test]
    async fn a_released_frame_a_normalizer_has_not_handled_is_kept_for_the_replay() {
        let progress = Arc::new(FrameProgress::default());
        let limit = InflightLimit::new(10);
        let mut u = Unacked::new(progress.clone(), 100);
        let p = limit.acquire().await.unwrap();
        let n = u.market_data(md(1, 1, &[("31", json!("10"))]), 5, &p);
        drop(p);
        handled(&progress, &ALL[..2], n);
        u.fold();
        assert_eq!(u.len(), 1, "the indicators normalizer has not handled it");
        // Ladders go to the book normalizer only: its progress alone decides.
        let b = u.book(book(1), 6, &Inflight::none());
        handled(&progress, &[l2::Books::CATEGORY], b);
        u.fold();
        assert_eq!(u.len(), 2, "kept behind the frame before it: order is kept");
        handled(&progress, &[indicators::Statistics::CATEGORY], n);
        u.fold();
        assert!(u.is_empty());
        assert_eq!(u.evicted, 0);
    }

    #[tokio::test]
    async fn the_cap_bounds_what_is_kept() {
        let progress = Arc::new(FrameProgress::default());
        let limit = InflightLimit::new(100);
        let mut u = Unacked::new(progress, 3);
        let mut permits = Vec::new();
        for i in 0..5 {
            let p = limit.acquire().await.unwrap();
            u.market_data(md(1, i, &[("31", json!(i.to_string()))]), i, &p);
            permits.push(p);
        }
        assert_eq!(u.len(), 3);
        assert_eq!(u.evicted, 2);
        assert_eq!(u.base[&1].frame.fields["31"], json!("1"));
    }
}
