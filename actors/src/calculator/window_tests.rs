//! The incremental windows against the window recomputed from the store: case by case
//! (joining in any order, eviction order, expiry) and over seeded random inputs.

use std::sync::Arc;

use super::config::{Kind, Spec, Window};
use super::engine::{Applied, CalcRow, Engine, Trade, window_rows};
use super::window::{Agg, Key, Rows, Sums};

const S: i64 = 1_000_000_000;

/// The store and one aggregate, fed as `Trades::apply` feeds them (no late-row rule here).
struct Fixture {
    rows: Rows,
    agg: Agg,
    as_of: i64,
}

impl Fixture {
    fn new(window: Window) -> Self {
        Self {
            rows: Rows::new(),
            agg: Agg::new(window),
            as_of: i64::MIN,
        }
    }

    fn add(&mut self, secs: i64, id: &str, price: f64, size: f64) {
        let key: Key = (secs * S, id.into());
        self.as_of = self.as_of.max(key.0);
        self.rows.insert(key.clone(), (price, size));
        self.agg.insert(&self.rows, &key, self.as_of);
    }

    fn members(&self) -> Vec<(f64, f64)> {
        self.agg.members(&self.rows).collect()
    }

    fn recomputed(&self) -> Vec<(f64, f64)> {
        window_rows(&self.rows, self.agg.window, self.as_of)
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn assert_sums_match(got: &Sums, want: &Sums, what: &str) {
    assert_eq!(got.count, want.count, "count {what}");
    assert_eq!(got.sized, want.sized, "sized {what}");
    assert_eq!(got.returns, want.returns, "returns {what}");
    for kind in [
        Kind::Vwap,
        Kind::Sma,
        Kind::Ema,
        Kind::RealizedVolatility,
        Kind::TradeCount,
        Kind::Volume,
    ] {
        match (got.value(kind), want.value(kind)) {
            (None, None) => {}
            (Some(a), Some(b)) => assert!(close(a, b), "{kind:?} {what}: {a} vs {b}"),
            (a, b) => panic!("{kind:?} {what}: {a:?} vs {b:?}"),
        }
    }
}

#[test]
fn a_time_window_lets_rows_go_oldest_first_at_its_exclusive_edge() {
    let mut f = Fixture::new(Window::Time(10 * S));
    f.add(0, "a", 10.0, 1.0);
    f.add(5, "b", 20.0, 1.0);
    f.add(9, "c", 30.0, 2.0);
    assert_eq!(f.members().len(), 3);
    // as_of 10: lower bound 0 is exclusive, so "a" (t = 0) leaves, "b" stays.
    f.add(10, "d", 40.0, 1.0);
    assert_eq!(f.members(), vec![(20.0, 1.0), (30.0, 2.0), (40.0, 1.0)]);
    assert_eq!(f.agg.sums().value(Kind::TradeCount), Some(3.0));
    assert_eq!(
        f.agg.sums().value(Kind::Vwap),
        Some((20.0 + 60.0 + 40.0) / 4.0)
    );
    // A jump past the whole window empties it down to the new row, from exact zeros.
    f.add(100, "e", 50.0, 3.0);
    assert_eq!(f.members(), vec![(50.0, 3.0)]);
    assert_eq!(f.agg.sums().value(Kind::Volume), Some(3.0));
    assert_eq!(f.agg.sums().value(Kind::RealizedVolatility), None);
    assert_eq!(f.members(), f.recomputed());
}

#[test]
fn a_row_arriving_late_inside_the_window_joins_between_its_neighbours() {
    let mut f = Fixture::new(Window::Time(60 * S));
    f.add(1, "a", 100.0, 1.0);
    f.add(3, "c", 121.0, 1.0);
    f.add(2, "b", 110.0, 1.0);
    assert_eq!(f.members(), vec![(100.0, 1.0), (110.0, 1.0), (121.0, 1.0)]);
    let want = Sums::of(f.agg.window, f.recomputed().into_iter());
    assert_sums_match(f.agg.sums(), &want, "after a middle insert");
    assert_eq!(f.agg.sums().returns, 2, "a→c replaced by a→b and b→c");
    // Older than the window's lower bound when it arrives: stored, not a member.
    f.add(70, "d", 130.0, 1.0);
    f.add(5, "old", 1.0, 1.0);
    assert_eq!(f.members(), vec![(130.0, 1.0)]);
    // A new oldest member inside the window becomes its first.
    f.add(20, "e", 125.0, 1.0);
    assert_eq!(f.members(), vec![(125.0, 1.0), (130.0, 1.0)]);
}

#[test]
fn a_tick_window_keeps_the_last_n_and_drops_the_oldest_first() {
    let mut f = Fixture::new(Window::Ticks(3));
    for (i, p) in [10.0, 11.0, 12.0, 13.0].into_iter().enumerate() {
        f.add(i as i64, &format!("r{i}"), p, 1.0);
    }
    assert_eq!(f.members(), vec![(11.0, 1.0), (12.0, 1.0), (13.0, 1.0)]);
    assert_eq!(f.agg.sums().value(Kind::Sma), Some(12.0));
    // EMA seeded with 11, alpha 0.5: 11 → 11.5 → 12.25.
    assert!(close(f.agg.sums().value(Kind::Ema).unwrap(), 12.25));
    // Older than the oldest member of a full window: not a member.
    f.add(0, "r0b", 99.0, 1.0);
    assert_eq!(f.members(), vec![(11.0, 1.0), (12.0, 1.0), (13.0, 1.0)]);
    // Between members: it joins and pushes the oldest out.
    f.add(2, "r2b", 20.0, 1.0);
    assert_eq!(f.members(), vec![(12.0, 1.0), (20.0, 1.0), (13.0, 1.0)]);
    let want = Sums::of(f.agg.window, f.recomputed().into_iter());
    assert_sums_match(f.agg.sums(), &want, "after a middle insert");
}

#[test]
fn zero_sizes_give_no_vwap_and_a_volume_of_exactly_zero() {
    let mut f = Fixture::new(Window::Ticks(2));
    f.add(0, "a", 10.0, 0.1);
    f.add(1, "b", 10.0, 0.2);
    f.add(2, "c", 10.0, 0.0);
    f.add(3, "d", 10.0, 0.0);
    assert_eq!(f.agg.sums().value(Kind::Vwap), None);
    assert_eq!(f.agg.sums().value(Kind::Volume), Some(0.0));
}

use crate::test_rng::XorShift as Rng;

#[test]
fn incremental_windows_equal_recomputed_windows_over_random_inputs() {
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let window = match rng.below(3) {
            0 => Window::Ticks(1 + rng.below(12) as usize),
            _ => Window::Time((1 + rng.below(30) as i64) * S),
        };
        let mut f = Fixture::new(window);
        let mut clock = 0i64;
        for n in 0..200 {
            // Mostly forward in time, sometimes back (late rows), sometimes a jump.
            clock += match rng.below(10) {
                0 => -(rng.below(20) as i64),
                1 => 40,
                _ => rng.below(3) as i64,
            };
            let price = match rng.below(20) {
                0 => 0.0,
                _ => 1.0 + rng.below(100_000) as f64 / 100.0,
            };
            let size = match rng.below(5) {
                0 => 0.0,
                _ => rng.below(1_000) as f64 / 10.0,
            };
            f.add(clock, &format!("r{n}"), price, size);
            assert_eq!(f.members(), f.recomputed(), "members, seed {seed} row {n}");
            let want = Sums::of(window, f.recomputed().into_iter());
            assert_sums_match(f.agg.sums(), &want, &format!("seed {seed} row {n}"));
        }
    }
}

fn spec(name: &str, kind: Kind, window: Window) -> Spec {
    Spec {
        team: "t".into(),
        name: name.into(),
        kind,
        window,
        levels: 0,
        source: marketlane_protocol::category::TICK,
        symbols: vec!["*".into()],
    }
}

/// Through the engine (late-row rule, store pruning, duplicates): `evaluate` (incremental)
/// against `evaluate_at` at the same event time (recomputed from the store).
#[test]
fn the_engine_evaluates_incrementally_what_it_recomputes() {
    let specs = Arc::new(vec![
        spec("vwap", Kind::Vwap, Window::Time(20 * S)),
        spec("sma", Kind::Sma, Window::Ticks(5)),
        spec("ema", Kind::Ema, Window::Ticks(8)),
        spec("vol", Kind::RealizedVolatility, Window::Time(20 * S)),
        spec("count", Kind::TradeCount, Window::Time(7 * S)),
        spec("volume", Kind::Volume, Window::Ticks(3)),
    ]);
    for seed in 1..=50u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut e = Engine::new(specs.clone());
        let mut clock = 0i64;
        let mut sent: Vec<Trade> = Vec::new();
        for n in 0..300 {
            clock += rng.below(4) as i64 - 1;
            let t = if !sent.is_empty() && rng.below(10) == 0 {
                sent[rng.below(sent.len() as u64) as usize].clone()
            } else {
                Trade {
                    row_id: format!("r{n}").into(),
                    symbol: ["A", "B"][rng.below(2) as usize].into(),
                    time: clock * S,
                    price: 1.0 + rng.below(10_000) as f64 / 100.0,
                    size: rng.below(100) as f64,
                    price_unit: "USD".into(),
                    size_unit: "shares".into(),
                }
            };
            let (outcome, _) = e.apply(&CalcRow::Trade(t.clone()));
            if outcome == Applied::New {
                sent.push(t);
            }
            for symbol in ["A", "B"] {
                for i in 0..specs.len() {
                    let Some(inc) = e.evaluate(i, symbol) else {
                        continue;
                    };
                    let re = e.evaluate_at(i, symbol, inc.as_of).unwrap();
                    assert_eq!(inc.as_of, re.as_of);
                    match (inc.value, re.value) {
                        (None, None) => {}
                        (Some(a), Some(b)) => {
                            assert!(
                                close(a, b),
                                "{} seed {seed} row {n}: {a} vs {b}",
                                specs[i].name
                            );
                        }
                        (a, b) => panic!("{} seed {seed} row {n}: {a:?} vs {b:?}", specs[i].name),
                    }
                }
            }
        }
    }
}
