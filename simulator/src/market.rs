//! The market model: per conid a seeded random walk, and a central ticker per subscribed conid
//! that produces ONE update per frame interval and hands the same `Arc<Tick>` to every
//! connection subscribed to it (so all clients see the same `_updated` for the same update).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::clock::SimClock;
use crate::instruments::{Instrument, SecKind, Universe};
use crate::lock;

/// Availability code (field 6509) of a symbol not configured otherwise: real-time,
/// consolidated, book (IB's example frame in its Web API documentation: `"6509":"RpB"`).
/// `--availability SYMBOL=CODE` gives a symbol another one, e.g. `DPB` (delayed, as a live
/// account without a subscription gets it: machdat/broker-gateway
/// `tests/fixtures/recorded/ws/topic-explorer-2026-04-30/smd-single.jsonl`) or `ZB` (frozen,
/// outside trading hours: the same repository's `tests/fixtures/recorded/live/
/// iserver_marketdata_snapshot__GET__c26648ca_02.json`).
pub const AVAILABILITY: &str = "RpB";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastStatus {
    Normal,
    /// `31` shows `H<last>`.
    Halted,
    /// `31` shows `C<prior close>`.
    PriorClose,
}

/// One update of a conid: every field value as IB would send it.
#[derive(Debug)]
pub struct Tick {
    pub inst: Arc<Instrument>,
    pub seq: u64,
    /// Sim ms, strictly increasing per conid.
    pub updated: i64,
    /// Whether this update produced a new trade.
    pub trade: bool,
    pub status: LastStatus,
    pub fields: BTreeMap<&'static str, Value>,
    pub last_price: f64,
    /// As sent in 7059: shares for stocks, contracts for futures.
    pub last_size: f64,
    pub bid: f64,
    pub ask: f64,
    pub bid_size: f64,
    pub ask_size: f64,
    bid_ticks: i64,
    ask_ticks: i64,
    last_ticks: i64,
    last_size_raw: u64,
    book_seed: u64,
}

impl Tick {
    pub fn conid(&self) -> u32 {
        self.inst.conid
    }

    /// A full BookTrader ladder: `depth` ask rows (highest first), then `depth` bid rows;
    /// the row holding the last trade reads `"size @ price"` and has `focus:1`. All values are
    /// strings. Sizes are derived from the tick, so every client sees the same ladder.
    pub fn ladder(&self, depth: usize) -> Vec<Value> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.book_seed ^ self.seq.wrapping_mul(0x9e37));
        let inst = &self.inst;
        let mut levels: Vec<(i64, Option<u64>, Option<u64>)> = Vec::new();
        for i in (0..depth as i64).rev() {
            let size = if i == 0 {
                self.ask_size_raw()
            } else {
                rng.random_range(1..60)
            };
            levels.push((self.ask_ticks + i, None, Some(size)));
        }
        for i in 0..depth as i64 {
            let size = if i == 0 {
                self.bid_size_raw()
            } else {
                rng.random_range(1..60)
            };
            levels.push((self.bid_ticks - i, Some(size), None));
        }
        // The last trade may sit inside the spread: give it its own row there.
        if self.last_ticks > self.bid_ticks && self.last_ticks < self.ask_ticks {
            let pos = levels
                .iter()
                .position(|l| l.0 < self.last_ticks)
                .unwrap_or(levels.len());
            levels.insert(pos, (self.last_ticks, None, None));
        }
        levels
            .iter()
            .enumerate()
            .map(|(row, (px, bid, ask))| {
                let focus = *px == self.last_ticks;
                let price = fmt_px(inst, *px);
                let mut o = serde_json::Map::new();
                o.insert("row".into(), json!(row));
                o.insert("focus".into(), json!(u8::from(focus)));
                o.insert(
                    "price".into(),
                    json!(if focus {
                        format!("{} @ {}", fmt_size(self.last_size_raw), price)
                    } else {
                        price
                    }),
                );
                if let Some(b) = bid {
                    o.insert("bid".into(), json!(fmt_size(*b)));
                }
                if let Some(a) = ask {
                    o.insert("ask".into(), json!(fmt_size(*a)));
                }
                Value::Object(o)
            })
            .collect()
    }

    /// A reproducible coin flip tied to this tick (for per-frame quirks).
    pub fn draw(&self, p: f64) -> bool {
        p > 0.0 && ((mix(self.book_seed ^ 0xc0_1d, self.seq as u32) % 1_000_000) as f64) < p * 1e6
    }

    fn bid_size_raw(&self) -> u64 {
        self.bid_size as u64
    }

    fn ask_size_raw(&self) -> u64 {
        self.ask_size as u64
    }
}

pub fn fmt_px(inst: &Instrument, ticks: i64) -> String {
    format!("{:.*}", inst.decimals, ticks as f64 * inst.tick_size)
}

/// Sizes with thousands separators, as IB sends them (`"1,300"`).
pub fn fmt_size(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Volume with K/M suffix as in field 87.
pub fn fmt_volume(v: u64) -> String {
    if v >= 1_000_000 {
        format!("{:.2}M", v as f64 / 1e6)
    } else if v >= 1_000 {
        format!("{:.1}K", v as f64 / 1e3)
    } else {
        v.to_string()
    }
}

/// Parses an IB numeric string: strips `C`/`H` prefixes, K/M suffixes and commas.
pub fn parse_ib_number(s: &str) -> Option<f64> {
    let s = s.trim().trim_start_matches(['C', 'H']).replace(',', "");
    let (num, mul) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1e3),
        Some('M') => (&s[..s.len() - 1], 1e6),
        _ => (s.as_str(), 1.0),
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

#[derive(Debug, Clone, Copy)]
pub struct MarketParams {
    pub seed: u64,
    pub frame_interval_ms: u64,
    pub trade_probability: f64,
    pub status_probability: f64,
}

/// The random walk of one conid. Its RNG is seeded from (seed, conid) alone, so a conid's
/// sequence of updates does not depend on what else is subscribed.
struct Walk {
    inst: Arc<Instrument>,
    /// Field 6509 of this conid's frames.
    availability: String,
    /// Nothing changes after the first frame (`--quiet-symbol`).
    quiet: bool,
    rng: ChaCha8Rng,
    book_seed: u64,
    params: MarketParams,
    seq: u64,
    updated: i64,
    bid: i64,
    ask: i64,
    bid_size: u64,
    ask_size: u64,
    last: i64,
    last_size: u64,
    volume: u64,
    open: i64,
    high: i64,
    low: i64,
    prior_close: i64,
    status: LastStatus,
    /// Whether the last `step` produced a trade.
    emit_trade: bool,
}

fn mix(seed: u64, conid: u32) -> u64 {
    // splitmix64 finaliser: decorrelates neighbouring conids.
    let mut z = seed ^ (conid as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Walk {
    fn new(inst: Arc<Instrument>, params: MarketParams, now_ms: i64, availability: &str) -> Self {
        let seed = mix(params.seed, inst.conid);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let base = (inst.base_price / inst.tick_size).round().max(10.0) as i64;
        let wiggle = (base / 200).max(3);
        let prior_close = base;
        let open = (base + rng.random_range(-wiggle..=wiggle)).max(1);
        let last = (open + rng.random_range(-wiggle..=wiggle)).max(1);
        let spread = rng.random_range(1..=2);
        let bid = (last - rng.random_range(0..=1)).max(1);
        let mut w = Self {
            rng,
            book_seed: seed.rotate_left(17),
            params,
            seq: 0,
            updated: now_ms,
            bid,
            ask: bid + spread,
            bid_size: 0,
            ask_size: 0,
            last,
            last_size: 0,
            volume: 0,
            open,
            high: open.max(last) + wiggle / 2,
            low: (open.min(last) - wiggle / 2).max(1),
            prior_close,
            status: LastStatus::Normal,
            emit_trade: false,
            inst,
            availability: availability.to_string(),
            quiet: false,
        };
        w.bid_size = w.quote_size();
        w.ask_size = w.quote_size();
        w.last_size = w.trade_size();
        w.volume = if w.inst.lots {
            w.rng.random_range(200_000..8_000_000)
        } else {
            w.rng.random_range(5_000..250_000)
        };
        w
    }

    fn quote_size(&mut self) -> u64 {
        if self.inst.lots {
            // Lots of 100; now and then a big resting order so commas show up ("1,300").
            if self.rng.random_bool(0.05) {
                self.rng.random_range(1_000..2_500)
            } else {
                self.rng.random_range(1..40)
            }
        } else {
            self.rng.random_range(1..80)
        }
    }

    fn trade_size(&mut self) -> u64 {
        if self.inst.lots {
            if self.rng.random_bool(0.03) {
                self.rng.random_range(1_000..1_500)
            } else {
                self.rng.random_range(1..25)
            }
        } else {
            self.rng.random_range(1..30)
        }
    }

    /// Advances one frame interval.
    fn step(&mut self, now_ms: i64) {
        self.seq += 1;
        self.updated = now_ms.max(self.updated + 1);
        if self.quiet {
            self.emit_trade = false;
            return;
        }
        if self.rng.random_bool(0.7) {
            let drift = self.rng.random_range(-2..=2);
            let spread = if self.rng.random_bool(0.8) { 1 } else { 2 };
            self.bid = (self.bid + drift).max(1);
            self.ask = self.bid + spread;
        }
        if self.rng.random_bool(0.5) {
            self.bid_size = self.quote_size();
        }
        if self.rng.random_bool(0.5) {
            self.ask_size = self.quote_size();
        }
        let trade = match self.status {
            LastStatus::Normal => {
                if self.rng.random_bool(self.params.status_probability) {
                    self.status = if self.rng.random_bool(0.5) {
                        LastStatus::Halted
                    } else {
                        LastStatus::PriorClose
                    };
                    false
                } else {
                    self.rng.random_bool(self.params.trade_probability)
                }
            }
            // Leaving H/C always happens with a trade, so a plain 31 in a delta is a trade.
            LastStatus::Halted | LastStatus::PriorClose => {
                if self.rng.random_bool(0.3) {
                    self.status = LastStatus::Normal;
                    true
                } else {
                    false
                }
            }
        };
        if trade {
            let px = match self.rng.random_range(0..3) {
                0 => self.bid,
                1 => self.ask,
                _ => self.rng.random_range(self.bid..=self.ask),
            };
            let mut size = self.trade_size();
            // A new trade must differ from the previous one, or the delta would not show it.
            if px == self.last && size == self.last_size {
                size += 1;
            }
            self.last = px;
            self.last_size = size;
            self.volume += size * if self.inst.lots { 100 } else { 1 };
            self.high = self.high.max(px);
            self.low = self.low.min(px);
        }
        self.emit_trade = trade;
    }

    /// The last trade's size in shares (stocks) or contracts (futures).
    fn last_size_units(&self) -> u64 {
        if self.inst.lots {
            self.last_size * 100
        } else {
            self.last_size
        }
    }

    fn tick(&self, trade: bool) -> Tick {
        let inst = &self.inst;
        let px = |t: i64| fmt_px(inst, t);
        let tick = inst.tick_size;
        let last_f = self.last as f64 * tick;
        let pc_f = self.prior_close as f64 * tick;
        let mut f: BTreeMap<&'static str, Value> = BTreeMap::new();
        let last_str = match self.status {
            LastStatus::Normal => px(self.last),
            LastStatus::Halted => format!("H{}", px(self.last)),
            LastStatus::PriorClose => format!("C{}", px(self.prior_close)),
        };
        f.insert("31", json!(last_str));
        f.insert("84", json!(px(self.bid)));
        f.insert("86", json!(px(self.ask)));
        f.insert("88", json!(fmt_size(self.bid_size)));
        f.insert("85", json!(fmt_size(self.ask_size)));
        // 7059 is "the number of units traded at the last price" (IB's field list, copied in
        // Voyz/ibind `ibind/client/ibkr_definitions.py`): shares, unlike 88/85, which IB
        // divides by 100 for US stocks.
        f.insert("7059", json!(fmt_size(self.last_size_units())));
        f.insert("7762", json!(self.volume.to_string()));
        f.insert("87", json!(fmt_volume(self.volume)));
        f.insert("70", json!(px(self.high)));
        f.insert("71", json!(px(self.low)));
        f.insert("7295", json!(px(self.open)));
        f.insert("7296", json!(px(self.prior_close)));
        f.insert("7741", json!(px(self.prior_close)));
        f.insert("82", json!(format!("{:.*}", inst.decimals, last_f - pc_f)));
        // 83 is the one field IB sends as a JSON number.
        let pct = ((last_f - pc_f) / pc_f * 10_000.0).round() / 100.0;
        f.insert("83", json!(pct));
        f.insert(
            "7682",
            json!(format!(
                "{:.*}",
                inst.decimals,
                last_f - self.open as f64 * tick
            )),
        );
        let mark = (self.bid + self.ask) as f64 * tick / 2.0;
        f.insert("7635", json!(format!("{:.*}", inst.decimals + 1, mark)));
        f.insert("55", json!(inst.symbol));
        f.insert("6509", json!(self.availability));
        f.insert("6008", json!(inst.conid.to_string()));
        f.insert("6070", json!(inst.sec_type()));
        f.insert(
            "7221",
            json!(match inst.kind {
                SecKind::Stock | SecKind::Future { .. } => inst.exchange.clone(),
            }),
        );
        Tick {
            inst: inst.clone(),
            seq: self.seq,
            updated: self.updated,
            trade,
            status: self.status,
            fields: f,
            // Numeric values of the strings as sent, so the ledger matches what clients parse.
            last_price: parse_ib_number(&px(self.last)).unwrap_or(last_f),
            last_size: self.last_size_units() as f64,
            bid: parse_ib_number(&px(self.bid)).unwrap_or_default(),
            ask: parse_ib_number(&px(self.ask)).unwrap_or_default(),
            bid_size: self.bid_size as f64,
            ask_size: self.ask_size as f64,
            bid_ticks: self.bid,
            ask_ticks: self.ask,
            last_ticks: self.last,
            last_size_raw: self.last_size,
            book_seed: self.book_seed,
        }
    }
}

struct Slot {
    walk: Walk,
    latest: Arc<Tick>,
    /// Connection id → that connection's tick queue.
    subs: HashMap<u64, mpsc::Sender<Arc<Tick>>>,
    running: bool,
}

/// All conids' walks and their tickers.
pub struct Market {
    universe: Arc<Universe>,
    clock: SimClock,
    params: MarketParams,
    slots: Mutex<HashMap<u32, Slot>>,
    shutdown: watch::Receiver<bool>,
    /// Ticks not delivered because a connection's queue was full.
    dropped: std::sync::atomic::AtomicU64,
    /// Field 6509 by symbol (stock ticker or futures root); others get [`AVAILABILITY`].
    availability: HashMap<String, String>,
    /// Symbols whose walk never moves (`--quiet-symbol`).
    quiet: std::collections::HashSet<String>,
}

impl Market {
    pub fn new(
        universe: Arc<Universe>,
        clock: SimClock,
        params: MarketParams,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            universe,
            clock,
            params,
            slots: Mutex::new(HashMap::new()),
            shutdown,
            dropped: Default::default(),
            availability: HashMap::new(),
            quiet: Default::default(),
        }
    }

    /// These symbols never move after their first frame (`--quiet-symbol`).
    pub fn with_quiet(mut self, symbols: impl IntoIterator<Item = String>) -> Self {
        self.quiet.extend(symbols);
        self
    }

    /// Gives the symbols' frames these 6509 codes (`--availability SYMBOL=CODE`).
    pub fn with_availability(mut self, codes: impl IntoIterator<Item = (String, String)>) -> Self {
        self.availability.extend(codes);
        self
    }

    pub fn universe(&self) -> &Universe {
        &self.universe
    }

    fn new_slot(&self, inst: Arc<Instrument>) -> Slot {
        let code = self
            .availability
            .get(&inst.symbol)
            .map_or(AVAILABILITY, String::as_str);
        let quiet = self.quiet.contains(&inst.symbol);
        let mut walk = Walk::new(inst, self.params, self.clock.now_ms(), code);
        walk.quiet = quiet;
        let latest = Arc::new(walk.tick(false));
        Slot {
            walk,
            latest,
            subs: HashMap::new(),
            running: false,
        }
    }

    /// Registers a connection for a conid's updates; starts its ticker if needed. Returns
    /// false for a conid the universe does not know.
    pub fn subscribe(self: &Arc<Self>, conid: u32, conn: u64, tx: mpsc::Sender<Arc<Tick>>) -> bool {
        let Some(inst) = self.universe.get(conid).cloned() else {
            return false;
        };
        let mut g = lock(&self.slots);
        let slot = g.entry(conid).or_insert_with(|| self.new_slot(inst));
        slot.subs.insert(conn, tx);
        if !slot.running {
            slot.running = true;
            let me = self.clone();
            tokio::spawn(async move { me.run_ticker(conid).await });
        }
        true
    }

    pub fn unsubscribe(&self, conid: u32, conn: u64) {
        if let Some(slot) = lock(&self.slots).get_mut(&conid) {
            slot.subs.remove(&conn);
        }
    }

    /// The latest state of a conid for `/iserver/marketdata/snapshot`; steps the walk when no
    /// ticker runs so snapshot-only conids still move.
    pub fn snapshot(&self, conid: u32) -> Option<Arc<Tick>> {
        let inst = self.universe.get(conid)?.clone();
        let mut g = lock(&self.slots);
        let slot = g.entry(conid).or_insert_with(|| self.new_slot(inst));
        let now = self.clock.now_ms();
        if !slot.running && now - slot.latest.updated >= self.params.frame_interval_ms as i64 {
            slot.walk.step(now);
            let trade = slot.walk.emit_trade;
            slot.latest = Arc::new(slot.walk.tick(trade));
        }
        Some(slot.latest.clone())
    }

    /// Bars for `/iserver/marketdata/history`: a seeded walk that ends at the current price.
    /// `bar_ms` is the bar length, `count` the number of bars (oldest first).
    pub fn history(&self, conid: u32, bar_ms: i64, count: usize) -> Option<Value> {
        let latest = self.snapshot(conid)?;
        let inst = latest.inst.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.params.seed ^ bar_ms as u64, conid));
        let now = self.clock.now_ms();
        let end = now - now.rem_euclid(bar_ms);
        let tick = inst.tick_size;
        let mut close = (latest.last_price / tick).round() as i64;
        let step = ((bar_ms as f64 / 60_000.0).sqrt() * 3.0).max(1.0) as i64;
        let mut bars = Vec::with_capacity(count);
        for i in 0..count as i64 {
            let open = (close + rng.random_range(-step..=step)).max(1);
            let high = open.max(close) + rng.random_range(0..=step);
            let low = (open.min(close) - rng.random_range(0..=step)).max(1);
            let vol: u64 = rng.random_range(10..5_000);
            let f = |t: i64| {
                (t as f64 * tick * 10f64.powi(inst.decimals as i32)).round()
                    / 10f64.powi(inst.decimals as i32)
            };
            bars.push(json!({
                "o": f(open), "c": f(close), "h": f(high), "l": f(low),
                "v": vol as f64, "t": end - i * bar_ms,
            }));
            close = open;
        }
        bars.reverse();
        Some(json!({
            "serverId": "20477",
            "symbol": inst.symbol,
            "text": inst.name,
            "priceFactor": 10u64.pow(inst.decimals as u32),
            "startTime": bars.first().map(|b| b["t"].clone()).unwrap_or(Value::Null),
            "barLength": bar_ms / 1000,
            "mdAvailability": "S",
            "mktDataDelay": 0,
            "outsideRth": false,
            "volumeFactor": 1,
            "priceDisplayRule": 1,
            "priceDisplayValue": inst.decimals.to_string(),
            "negativeCapable": false,
            "messageVersion": 2,
            "data": bars,
            "points": count,
            "travelTime": 15,
        }))
    }

    pub fn dropped_ticks(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn run_ticker(self: Arc<Self>, conid: u32) {
        let mut iv = tokio::time::interval(self.clock.real(self.params.frame_interval_ms));
        iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
        iv.tick().await;
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = iv.tick() => {}
                _ = shutdown.changed() => break,
            }
            let mut g = lock(&self.slots);
            let Some(slot) = g.get_mut(&conid) else { break };
            slot.subs.retain(|_, tx| !tx.is_closed());
            if slot.subs.is_empty() {
                slot.running = false;
                break;
            }
            slot.walk.step(self.clock.now_ms());
            let trade = slot.walk.emit_trade;
            let tick = Arc::new(slot.walk.tick(trade));
            slot.latest = tick.clone();
            for tx in slot.subs.values() {
                if tx.try_send(tick.clone()).is_err() {
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_size(1300), "1,300");
        assert_eq!(fmt_size(1234567), "1,234,567");
        assert_eq!(fmt_size(999), "999");
        assert_eq!(fmt_volume(28_912_345), "28.91M");
        assert_eq!(fmt_volume(725_400), "725.4K");
        assert_eq!(parse_ib_number("H189.60"), Some(189.6));
        assert_eq!(parse_ib_number("1,300"), Some(1300.0));
        assert_eq!(parse_ib_number("2.5M"), Some(2_500_000.0));
    }

    #[test]
    fn walk_is_deterministic_and_trades_differ() {
        let u = Universe::build(1_769_342_400_000, 0, 1);
        let inst = u.get(265598).cloned().expect("aapl");
        let p = MarketParams {
            seed: 42,
            frame_interval_ms: 500,
            trade_probability: 0.6,
            status_probability: 0.05,
        };
        let run = || {
            let mut w = Walk::new(inst.clone(), p, 0, AVAILABILITY);
            let mut out = Vec::new();
            let mut prev = (w.last, w.last_size);
            for i in 0..2000 {
                w.step(i * 500);
                let t = w.tick(w.emit_trade);
                if t.trade {
                    assert_ne!((w.last, w.last_size), prev);
                    assert_eq!(t.status, LastStatus::Normal);
                    prev = (w.last, w.last_size);
                }
                out.push(t.fields.get("31").cloned());
            }
            out
        };
        assert_eq!(run(), run());
    }
}
