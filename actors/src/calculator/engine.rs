//! The indicators themselves, free of actors and I/O: per-symbol windows of trades and the
//! level-2 book, and the evaluation of every spec on them. The golden tests drive this directly.
//!
//! Window semantics (all in event time: `tick_time`, `l2_time`):
//! - `as_of` of a symbol is the greatest event time seen for it in the spec's source category.
//! - A time window W holds the trades with `as_of - W < tick_time <= as_of` (lower bound
//!   exclusive, upper inclusive); a tick window N the last N trades ordered by
//!   `(tick_time, row_id)`.
//! - Book indicators read, per (side, level), the row with the greatest `(l2_time, row_id)`;
//!   levels above the `max_level` of the side's latest row, and levels of size 0, are empty.
//! - Every value is a function of the rows in its window only, so arrival order within the
//!   window does not matter, a duplicate row (same `row_id`) is ignored, and a replayed Kafka
//!   range changes nothing. A row older than everything the symbol still keeps is late and
//!   ignored (counted).
//! - Empty windows: vwap, sma, ema → no value; realized volatility needs two trades (one
//!   return) → no value; trade count and volume → 0; mid and spread need both level-1 sides,
//!   book imbalance a non-zero size within the top N levels → no value otherwise.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::compact::RowId;
use super::config::{Kind, Spec, Window};
use super::window::{Agg, Key, Rows, Sums};

/// One trade of `tick_market_data`. Symbol and units are shared (interned by the consumer):
/// a row owns no string of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Trade {
    pub row_id: RowId,
    pub symbol: Arc<str>,
    pub time: i64,
    pub price: f64,
    pub size: f64,
    pub price_unit: Arc<str>,
    pub size_unit: Arc<str>,
}

/// One level of `l2_market_data`.
#[derive(Debug, Clone, PartialEq)]
pub struct BookLevel {
    pub row_id: RowId,
    pub symbol: Arc<str>,
    pub time: i64,
    pub bid: bool,
    pub level: u32,
    pub max_level: u32,
    pub price: f64,
    pub size: f64,
    pub price_unit: Arc<str>,
    pub size_unit: Arc<str>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CalcRow {
    Trade(Trade),
    Book(BookLevel),
}

impl CalcRow {
    pub fn symbol(&self) -> &Arc<str> {
        match self {
            Self::Trade(t) => &t.symbol,
            Self::Book(b) => &b.symbol,
        }
    }
}

/// What became of one applied row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    New,
    Duplicate,
    Late,
}

impl Applied {
    pub fn label(self) -> &'static str {
        match self {
            Self::New => "applied",
            Self::Duplicate => "duplicate",
            Self::Late => "late",
        }
    }
}

/// One computed value.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub value: Option<f64>,
    /// Event time the value belongs to (ns).
    pub as_of: i64,
    pub unit: String,
}

/// The trades a symbol still needs: the union of what its specs' windows can reach.
#[derive(Debug, Default)]
struct Trades {
    rows: Rows,
    /// One incremental aggregate per distinct window of the symbol's trade specs.
    aggs: Vec<Agg>,
    as_of: Option<i64>,
    keep_ns: i64,
    keep_n: usize,
    price_unit: Arc<str>,
    size_unit: Arc<str>,
}

impl Trades {
    fn apply(&mut self, t: &Trade) -> Applied {
        let key = (t.time, t.row_id.clone());
        if self.rows.contains_key(&key) {
            return Applied::Duplicate;
        }
        let as_of = self.as_of.unwrap_or(t.time).max(t.time);
        let below_time = t.time <= as_of.saturating_sub(self.keep_ns);
        let below_count = self.rows.len() >= self.keep_n
            && self.rows.keys().next().is_some_and(|first| key < *first);
        if self.as_of.is_some() && below_time && below_count {
            return Applied::Late;
        }
        self.as_of = Some(as_of);
        self.rows.insert(key.clone(), (t.price, t.size));
        for agg in &mut self.aggs {
            agg.insert(&self.rows, &key, as_of);
        }
        if self
            .rows
            .keys()
            .next_back()
            .is_some_and(|k| k.0 == t.time && k.1 == t.row_id)
        {
            set_shared(&mut self.price_unit, &t.price_unit);
            set_shared(&mut self.size_unit, &t.size_unit);
        }
        let cutoff = as_of.saturating_sub(self.keep_ns);
        while self.rows.len() > self.keep_n
            && self.rows.keys().next().is_some_and(|k| k.0 <= cutoff)
        {
            self.rows.pop_first();
        }
        Applied::New
    }

    /// A fresh state for the same specs (a moved partition's symbol).
    fn emptied(&self) -> Self {
        Self {
            keep_ns: self.keep_ns,
            keep_n: self.keep_n,
            aggs: self.aggs.iter().map(|a| Agg::new(a.window)).collect(),
            ..Self::default()
        }
    }

    fn agg(&self, window: Window) -> Option<&Agg> {
        self.aggs.iter().find(|a| a.window == window)
    }
}

/// Points `slot` at `value`, unless it already shares it (the usual case: interned units), so
/// a row costs no reference-count traffic for an unchanged unit.
fn set_shared(slot: &mut Arc<str>, value: &Arc<str>) {
    if !Arc::ptr_eq(slot, value) {
        slot.clone_from(value);
    }
}

/// The (price, size) pairs of `window` over `rows` at event time `as_of`, oldest first: the
/// window recomputed from the store (for `evaluate_at` and as the tests' reference).
pub fn window_rows(rows: &Rows, window: Window, as_of: i64) -> Vec<(f64, f64)> {
    match window {
        Window::Time(ns) => {
            let lo: Key = (as_of.saturating_sub(ns).saturating_add(1), RowId::min());
            rows.range(lo..).map(|(_, v)| *v).collect()
        }
        Window::Ticks(n) => {
            let skip = rows.len().saturating_sub(n);
            rows.values().skip(skip).copied().collect()
        }
        Window::Book => Vec::new(),
    }
}

#[derive(Debug, Clone)]
struct Level {
    time: i64,
    row_id: RowId,
    max_level: u32,
    price: f64,
    size: f64,
}

#[derive(Debug, Default)]
struct Book {
    /// (is_bid, level) → the latest row of that level.
    levels: BTreeMap<(bool, u32), Level>,
    /// Per side (ask, bid): (l2_time, row_id, max_level) of its most recent row. A level is
    /// only ever replaced by a newer row, so the newest row ever accepted on a side is also
    /// the newest one it holds: the depth is known without scanning the side.
    latest: [Option<(i64, RowId, u32)>; 2],
    as_of: Option<i64>,
    price_unit: Arc<str>,
    size_unit: Arc<str>,
}

impl Book {
    fn apply(&mut self, b: &BookLevel) -> Applied {
        let new = Level {
            time: b.time,
            row_id: b.row_id.clone(),
            max_level: b.max_level,
            price: b.price,
            size: b.size,
        };
        let key = (b.bid, b.level);
        match self.levels.get(&key) {
            Some(old) if (old.time, &old.row_id) == (new.time, &new.row_id) => {
                return Applied::Duplicate;
            }
            Some(old) if (old.time, &old.row_id) > (new.time, &new.row_id) => {
                return Applied::Late;
            }
            _ => {}
        }
        if self.as_of.is_none_or(|t| b.time >= t) {
            set_shared(&mut self.price_unit, &b.price_unit);
            set_shared(&mut self.size_unit, &b.size_unit);
        }
        self.as_of = Some(self.as_of.unwrap_or(b.time).max(b.time));
        let latest = &mut self.latest[usize::from(b.bid)];
        if latest
            .as_ref()
            .is_none_or(|(t, id, _)| (*t, id) < (new.time, &new.row_id))
        {
            *latest = Some((new.time, new.row_id.clone(), new.max_level));
        }
        self.levels.insert(key, new);
        Applied::New
    }

    /// Depth of a side: `max_level` of its most recent row.
    fn depth(&self, bid: bool) -> u32 {
        self.latest[usize::from(bid)]
            .as_ref()
            .map_or(0, |(_, _, max_level)| *max_level)
    }

    /// Total size of the live levels 1..=`n` of a side: O(n), never the whole side.
    fn size_within(&self, bid: bool, n: u32) -> f64 {
        let top = n.min(self.depth(bid));
        if top == 0 {
            return 0.0;
        }
        self.levels
            .range((bid, 1)..=(bid, top))
            .map(|(_, l)| l.size)
            .filter(|s| *s > 0.0)
            .sum()
    }

    /// (price, size) of a live level.
    fn level(&self, bid: bool, level: u32) -> Option<(f64, f64)> {
        if level > self.depth(bid) {
            return None;
        }
        self.levels
            .get(&(bid, level))
            .filter(|l| l.size > 0.0)
            .map(|l| (l.price, l.size))
    }
}

/// Everything one symbol keeps.
#[derive(Debug, Default)]
pub struct SymbolState {
    trades: Trades,
    book: Book,
    /// Indices (into the engine's specs) of the specs that match this symbol.
    pub specs: Vec<usize>,
}

/// The calculators of one worker: state per symbol it owns.
pub struct Engine {
    specs: Arc<Vec<Spec>>,
    symbols: HashMap<Arc<str>, SymbolState>,
}

impl Engine {
    pub fn new(specs: Arc<Vec<Spec>>) -> Self {
        Self {
            specs,
            symbols: HashMap::new(),
        }
    }

    pub fn specs(&self) -> &[Spec] {
        &self.specs
    }

    pub fn symbols(&self) -> usize {
        self.symbols.len()
    }

    /// Rows held in windows and books, for the state snapshot.
    pub fn rows_held(&self) -> usize {
        self.symbols
            .values()
            .map(|s| s.trades.rows.len() + s.book.levels.len())
            .sum()
    }

    /// The state of `symbol`, made on its first row. Takes the fields apart from `self` so the
    /// caller can read the specs while it holds the state.
    fn state<'a>(
        symbols: &'a mut HashMap<Arc<str>, SymbolState>,
        all: &[Spec],
        symbol: &Arc<str>,
    ) -> &'a mut SymbolState {
        if !symbols.contains_key(symbol) {
            let specs: Vec<usize> = all
                .iter()
                .enumerate()
                .filter(|(_, s)| s.matches(symbol))
                .map(|(i, _)| i)
                .collect();
            let mut st = SymbolState::default();
            for i in &specs {
                let window = all[*i].window;
                match window {
                    Window::Time(ns) => st.trades.keep_ns = st.trades.keep_ns.max(ns),
                    Window::Ticks(n) => st.trades.keep_n = st.trades.keep_n.max(n),
                    Window::Book => continue,
                }
                if st.trades.agg(window).is_none() {
                    st.trades.aggs.push(Agg::new(window));
                }
            }
            st.specs = specs;
            symbols.insert(symbol.clone(), st);
        }
        // Inserted just above when missing.
        symbols.get_mut(symbol).expect("symbol state present")
    }

    /// Drops what `symbol` keeps of `category` (its trades or its book): the partition that
    /// carries it moved to another pod, and a later return refills it from the look-back.
    pub fn forget(&mut self, category: &str, symbol: &str) {
        let Some(st) = self.symbols.get_mut(symbol) else {
            return;
        };
        if category == marketlane_protocol::category::TICK {
            st.trades = st.trades.emptied();
        } else {
            st.book = Book::default();
        }
        if st.trades.as_of.is_none() && st.book.as_of.is_none() {
            self.symbols.remove(symbol);
        }
    }

    /// Applies one row. Returns what became of it and the specs whose value may have changed
    /// (empty when the symbol matches no spec of the row's category, or the row changed nothing).
    pub fn apply(&mut self, row: &CalcRow) -> (Applied, Vec<usize>) {
        let mut touched = Vec::new();
        let outcome = self.apply_into(row, &mut touched);
        (outcome, touched)
    }

    /// [`Self::apply`] with the touched specs pushed onto `touched` (cleared first): the
    /// worker reuses one vector instead of allocating one per row.
    pub fn apply_into(&mut self, row: &CalcRow, touched: &mut Vec<usize>) -> Applied {
        touched.clear();
        let specs = &self.specs;
        let st = Self::state(&mut self.symbols, specs, row.symbol());
        let (outcome, source) = match row {
            CalcRow::Trade(t) => (st.trades.apply(t), marketlane_protocol::category::TICK),
            CalcRow::Book(b) => (st.book.apply(b), marketlane_protocol::category::L2),
        };
        if outcome == Applied::New {
            touched.extend(
                st.specs
                    .iter()
                    .copied()
                    .filter(|i| specs[*i].source == source),
            );
        }
        outcome
    }

    /// The current value of spec `i` for `symbol`, `None` before the symbol's first row.
    pub fn evaluate(&self, i: usize, symbol: &str) -> Option<Value> {
        let spec = &self.specs[i];
        let st = self.symbols.get(symbol)?;
        if spec.window == Window::Book {
            let as_of = st.book.as_of?;
            let unit = match spec.kind {
                Kind::BookImbalance => "1_ratio".to_string(),
                _ => st.book.price_unit.to_string(),
            };
            return Some(Value {
                value: book_value(spec, &st.book),
                as_of,
                unit,
            });
        }
        let trades = &st.trades;
        let as_of = trades.as_of?;
        let value = match trades.agg(spec.window) {
            Some(agg) => agg.sums().value(spec.kind),
            // Every trade window of the symbol's specs has an aggregate; recompute otherwise.
            None => {
                let w = window_rows(&trades.rows, spec.window, as_of);
                Sums::of(spec.window, w.into_iter()).value(spec.kind)
            }
        };
        Some(trade_value(spec, trades, value, as_of))
    }

    /// Spec `i` for `symbol` evaluated at an explicit event time `at` (≥ the symbol's `as_of`),
    /// e.g. after a quiet period: the time window may then be empty. Recomputed from the
    /// store (a query, not the flush path).
    pub fn evaluate_at(&self, i: usize, symbol: &str, at: i64) -> Option<Value> {
        let spec = &self.specs[i];
        let st = self.symbols.get(symbol)?;
        if spec.window == Window::Book {
            return self.evaluate(i, symbol);
        }
        let trades = &st.trades;
        let as_of = at.max(trades.as_of.unwrap_or(at));
        let w = window_rows(&trades.rows, spec.window, as_of);
        let value = Sums::of(spec.window, w.into_iter()).value(spec.kind);
        Some(trade_value(spec, trades, value, as_of))
    }
}

/// A trade indicator's value with its unit. EMA is seeded with the oldest price of the window,
/// alpha = 2 / (N + 1): a function of the window alone, so a restart that refills the window
/// reproduces it.
fn trade_value(spec: &Spec, trades: &Trades, value: Option<f64>, as_of: i64) -> Value {
    let unit = match spec.kind {
        Kind::Vwap | Kind::Sma | Kind::Ema => trades.price_unit.to_string(),
        Kind::Volume => trades.size_unit.to_string(),
        Kind::TradeCount => "1_trades".into(),
        _ => "1_ratio".into(),
    };
    Value { value, as_of, unit }
}

fn book_value(spec: &Spec, book: &Book) -> Option<f64> {
    match spec.kind {
        Kind::Mid | Kind::Spread => {
            let (bid, _) = book.level(true, 1)?;
            let (ask, _) = book.level(false, 1)?;
            Some(if spec.kind == Kind::Mid {
                (bid + ask) / 2.0
            } else {
                ask - bid
            })
        }
        Kind::BookImbalance => {
            let n = u32::try_from(spec.levels).unwrap_or(u32::MAX);
            let (b, a) = (book.size_within(true, n), book.size_within(false, n));
            (b + a > 0.0).then(|| (b - a) / (b + a))
        }
        _ => None,
    }
}
