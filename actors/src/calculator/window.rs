//! Incremental window aggregates: the sums a trade window's indicators need, kept up to date
//! as rows enter (in any order) and leave, so a row costs O(log n) to place in the symbol's
//! store and O(1) amortized here, and a flush reads a value without walking the window.
//!
//! A window is always the tail of the symbol's store starting at its oldest member (`first`):
//! a time window holds the keys with `as_of - W < tick_time`, a tick window the last N keys.
//! Rows join when they land in that tail and leave from its front only, so each row enters
//! and leaves once (amortized O(1)); a row placed in the middle touches its two neighbours.
//! The EMA of a tick window is kept for rows that arrive in order; a row landing before the
//! newest member (rare: late trades) recomputes that window once.
//!
//! Float rounding: sums updated by adding and subtracting differ from a sum over the window in
//! the last bits. The aggregate is recomputed from the store (in window order, the same
//! arithmetic as [`Sums::of`]) after as many departures as it holds members, which costs O(1)
//! amortized and keeps the difference to a few ulps of the window's largest term; a window that
//! empties restarts from exact zeros, and "no volume" is decided by counting sized trades, not
//! by comparing a sum with 0.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

use super::compact::RowId;
use super::config::{Kind, Window};

/// (tick_time, row_id): the order of a symbol's trades. Owns no heap memory for the usual
/// (UUID) row ids.
pub type Key = (i64, RowId);

/// A symbol's trades: key → (price, size).
pub type Rows = BTreeMap<Key, (f64, f64)>;

/// What the trade indicators of one window are computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sums {
    pub count: usize,
    /// Trades with a size other than 0 (vwap needs one).
    pub sized: usize,
    pub size: f64,
    pub notional: f64,
    pub price: f64,
    /// Log returns between consecutive trades of the window whose prices are both positive.
    pub returns: usize,
    pub squared_returns: f64,
    /// EMA seeded with the oldest price, alpha = 2 / (N + 1) (tick windows only).
    pub ema: Option<f64>,
}

/// The squared log return between two consecutive prices, if both are positive.
fn squared_return(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| {
        let r = (b / a).ln();
        r * r
    })
}

/// `alpha` of a tick window's EMA: 2 / (N + 1).
fn ema_alpha(span: usize) -> f64 {
    2.0 / (span as f64 + 1.0)
}

impl Sums {
    /// The sums of `prices` (oldest first) computed from scratch: the reference the incremental
    /// updates are checked against, and what re-anchoring sets.
    pub fn of(window: Window, rows: impl Iterator<Item = (f64, f64)>) -> Self {
        let mut s = Self::default();
        let alpha = match window {
            Window::Ticks(n) => Some(ema_alpha(n)),
            _ => None,
        };
        let mut prev: Option<f64> = None;
        for (p, size) in rows {
            s.count += 1;
            if size != 0.0 {
                s.sized += 1;
            }
            s.size += size;
            s.notional += p * size;
            s.price += p;
            if let Some(r) = prev.and_then(|a| squared_return(a, p)) {
                s.returns += 1;
                s.squared_returns += r;
            }
            if let Some(a) = alpha {
                s.ema = Some(s.ema.map_or(p, |e| a * p + (1.0 - a) * e));
            }
            prev = Some(p);
        }
        s
    }

    /// The value of a trade indicator (EMA needs a tick window: the config refuses others).
    pub fn value(&self, kind: Kind) -> Option<f64> {
        match kind {
            Kind::Vwap => (self.sized > 0 && self.size > 0.0).then(|| self.notional / self.size),
            Kind::Sma => (self.count > 0).then(|| self.price / self.count as f64),
            Kind::Ema => self.ema,
            Kind::RealizedVolatility => (self.returns > 0).then(|| self.squared_returns.sqrt()),
            Kind::TradeCount => Some(self.count as f64),
            Kind::Volume => Some(if self.sized == 0 { 0.0 } else { self.size }),
            Kind::Mid | Kind::Spread | Kind::BookImbalance => None,
        }
    }
}

/// One trade window of one symbol, maintained incrementally.
#[derive(Debug, Clone)]
pub struct Agg {
    pub window: Window,
    /// The oldest member; `None` when the window is empty.
    first: Option<Key>,
    sums: Sums,
    /// Departures since the sums were last recomputed from the store.
    departed: usize,
    /// The EMA no longer matches the members (a row landed before the newest one).
    ema_stale: bool,
}

impl Agg {
    pub fn new(window: Window) -> Self {
        Self {
            window,
            first: None,
            sums: Sums::default(),
            departed: 0,
            ema_stale: false,
        }
    }

    pub fn sums(&self) -> &Sums {
        &self.sums
    }

    /// The members, oldest first.
    pub fn members<'a>(&'a self, rows: &'a Rows) -> impl Iterator<Item = (f64, f64)> + 'a {
        self.first.iter().flat_map(move |f| {
            rows.range::<Key, _>((Included(f), Unbounded))
                .map(|(_, v)| *v)
        })
    }

    /// `key` was just stored in `rows` and the symbol's event time is now `as_of`: takes the
    /// row in if it falls in the window, then lets go of what the window no longer reaches.
    pub fn insert(&mut self, rows: &Rows, key: &Key, as_of: i64) {
        let joins = match self.window {
            Window::Time(ns) => key.0 > as_of.saturating_sub(ns),
            Window::Ticks(n) => self.sums.count < n || self.first.as_ref().is_none_or(|f| key > f),
            Window::Book => false,
        };
        if joins {
            self.join(rows, key);
        }
        self.expire(rows, as_of);
        let anchor_every = self.sums.count.max(16);
        if self.ema_stale || self.departed >= anchor_every {
            self.anchor(rows);
        }
    }

    fn join(&mut self, rows: &Rows, key: &Key) {
        let Some(&(p, size)) = rows.get(key) else {
            return;
        };
        let prev = match &self.first {
            Some(f) if f < key => rows
                .range::<Key, _>((Included(f), Excluded(key)))
                .next_back(),
            _ => None,
        }
        .map(|(_, v)| v.0);
        let next = rows
            .range::<Key, _>((Excluded(key), Unbounded))
            .next()
            .map(|(_, v)| v.0);
        let s = &mut self.sums;
        s.count += 1;
        if size != 0.0 {
            s.sized += 1;
        }
        s.size += size;
        s.notional += p * size;
        s.price += p;
        if let (Some(a), Some(b)) = (prev, next)
            && let Some(r) = squared_return(a, b)
        {
            s.returns -= 1;
            s.squared_returns -= r;
        }
        for (a, b) in [(prev, Some(p)), (Some(p), next)] {
            if let (Some(a), Some(b)) = (a, b)
                && let Some(r) = squared_return(a, b)
            {
                s.returns += 1;
                s.squared_returns += r;
            }
        }
        if let Window::Ticks(n) = self.window {
            if next.is_none() {
                let alpha = ema_alpha(n);
                s.ema = Some(s.ema.map_or(p, |e| alpha * p + (1.0 - alpha) * e));
            } else {
                self.ema_stale = true;
            }
        }
        if self.first.as_ref().is_none_or(|f| key < f) {
            self.first = Some(key.clone());
        }
    }

    /// Lets the oldest members go while the window does not reach them.
    fn expire(&mut self, rows: &Rows, as_of: i64) {
        loop {
            let Some(first) = &self.first else {
                return;
            };
            let out = match self.window {
                Window::Time(ns) => first.0 <= as_of.saturating_sub(ns),
                Window::Ticks(n) => self.sums.count > n,
                Window::Book => false,
            };
            if !out {
                return;
            }
            let mut tail = rows.range::<Key, _>((Included(first), Unbounded));
            let Some((key, &(p, size))) = tail.next() else {
                self.first = None;
                self.anchor(rows);
                return;
            };
            if key != first {
                // The store lost a member: cannot happen (it only drops rows no window
                // reaches); recompute rather than trust the sums.
                self.first = Some(key.clone());
                self.anchor(rows);
                continue;
            }
            let next = tail.next().map(|(k, v)| (k.clone(), v.0));
            self.leave(p, size, next.as_ref().map(|(_, q)| *q));
            self.first = next.map(|(k, _)| k);
        }
    }

    fn leave(&mut self, p: f64, size: f64, next: Option<f64>) {
        let before = self.sums.count;
        let s = &mut self.sums;
        s.count -= 1;
        self.departed += 1;
        if s.count == 0 {
            *s = Sums::default();
            return;
        }
        if size != 0.0 {
            s.sized -= 1;
        }
        s.size -= size;
        s.notional -= p * size;
        s.price -= p;
        if let Some(q) = next {
            if let Some(r) = squared_return(p, q) {
                s.returns -= 1;
                s.squared_returns -= r;
            }
            // Dropping the seed p0 makes p1 the seed: e' = e + (1 - a)^(m - 1) (p1 - p0).
            if let (Window::Ticks(n), Some(e)) = (self.window, s.ema) {
                let keep = 1.0 - ema_alpha(n);
                s.ema = Some(e + keep.powi(before as i32 - 1) * (q - p));
            }
        }
        if s.returns == 0 {
            s.squared_returns = 0.0;
        }
        if s.sized == 0 {
            s.size = 0.0;
            s.notional = 0.0;
        }
    }

    /// Recomputes the sums from the members.
    fn anchor(&mut self, rows: &Rows) {
        self.sums = Sums::of(self.window, self.members(rows));
        self.departed = 0;
        self.ema_stale = false;
    }
}
