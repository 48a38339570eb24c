//! Golden tests: the fixed input of `tests/golden/calculators/` through the engine, against the
//! hand-checked values of `expected.toml` (window edges, out-of-order rows, an empty window,
//! an empty book side, a replayed duplicate range, a late row).

use std::path::PathBuf;
use std::sync::Arc;

use marketlane_protocol::SchemaSet;
use marketlane_protocol::category::{L2, TICK};
use serde::Deserialize;

use super::config::{CalculatorConfig, TeamConfig};
use super::consumer::from_row;
use super::engine::{Applied, CalcRow, Engine};

const T0: i64 = 1_767_225_600_000_000_000;
const S: i64 = 1_000_000_000;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/calculators")
}

#[derive(Deserialize)]
struct Teams {
    teams: Vec<TeamConfig>,
}

#[derive(Deserialize)]
struct Expected {
    checkpoint: Vec<Check>,
    #[serde(rename = "final")]
    finals: Vec<Check>,
}

#[derive(Deserialize, Debug)]
struct Check {
    #[serde(default)]
    after: usize,
    #[serde(default)]
    at_secs: Option<i64>,
    team: String,
    indicator: String,
    symbol: String,
    as_of_secs: i64,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    empty: bool,
}

fn engine() -> Engine {
    let text = std::fs::read_to_string(dir().join("specs.toml")).unwrap();
    let teams: Teams = toml::from_str(&text).unwrap();
    let config = CalculatorConfig {
        teams: teams.teams,
        ..Default::default()
    };
    config.validate().unwrap();
    Engine::new(Arc::new(config.compile().unwrap()))
}

/// The input rows, validated against the category schemas as the consumer does.
fn input() -> Vec<CalcRow> {
    let schemas =
        SchemaSet::load_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")).unwrap();
    std::fs::read_to_string(dir().join("input.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let category = if line.contains("\"l2_time\"") {
                L2
            } else {
                TICK
            };
            let schema = schemas.get(category).unwrap();
            let row = schema.validate_json(line.as_bytes()).unwrap();
            from_row(category, &row).unwrap()
        })
        .collect()
}

fn expected() -> Expected {
    toml::from_str(&std::fs::read_to_string(dir().join("expected.toml")).unwrap()).unwrap()
}

fn check(engine: &Engine, c: &Check) {
    let i = engine
        .specs()
        .iter()
        .position(|s| s.team == c.team && s.name == c.indicator)
        .unwrap_or_else(|| panic!("no spec {}/{}", c.team, c.indicator));
    let v = match c.at_secs {
        Some(at) => engine.evaluate_at(i, &c.symbol, T0 + at * S),
        None => engine.evaluate(i, &c.symbol),
    }
    .unwrap_or_else(|| panic!("no value for {c:?}"));
    assert_eq!(v.as_of, T0 + c.as_of_secs * S, "as_of of {c:?}");
    if c.empty {
        assert_eq!(v.value, None, "{c:?}");
    } else {
        let want = c
            .value
            .unwrap_or_else(|| panic!("{c:?} has neither value nor empty"));
        let got = v.value.unwrap_or_else(|| panic!("{c:?}: empty"));
        assert!((got - want).abs() < 1e-9, "{c:?}: got {got}");
    }
}

#[test]
fn golden_values_at_every_checkpoint_and_at_the_end() {
    let rows = input();
    let expected = expected();
    let mut e = engine();
    let mut checked = 0;
    for (n, row) in rows.iter().enumerate() {
        e.apply(row);
        for c in expected.checkpoint.iter().filter(|c| c.after == n + 1) {
            check(&e, c);
            checked += 1;
        }
    }
    assert_eq!(checked, expected.checkpoint.len());
    for c in &expected.finals {
        check(&e, c);
    }
}

#[test]
fn replayed_range_and_late_row_are_ignored() {
    let rows = input();
    let mut e = engine();
    let outcomes: Vec<Applied> = rows.iter().map(|r| e.apply(r).0).collect();
    // Lines 18–23 replay earlier rows, line 24 is older than every window, line 12 is older
    // than the book level it would replace.
    assert!(
        outcomes[..17]
            .iter()
            .enumerate()
            .all(|(i, o)| i == 11 || *o == Applied::New)
    );
    assert_eq!(outcomes[11], Applied::Late);
    assert!(
        outcomes[17..].iter().all(|o| *o != Applied::New),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[23], Applied::Late);
}

#[test]
fn every_spec_has_a_final_golden_value() {
    let e = engine();
    let expected = expected();
    for s in e.specs() {
        assert!(
            expected
                .finals
                .iter()
                .any(|c| c.team == s.team && c.indicator == s.name),
            "{}/{} has no final value in expected.toml",
            s.team,
            s.name
        );
    }
}

/// All (spec, symbol) values of an engine.
fn values(e: &Engine, symbols: &[&str]) -> Vec<(usize, String, Option<super::engine::Value>)> {
    let mut out = Vec::new();
    for i in 0..e.specs().len() {
        for s in symbols {
            out.push((i, s.to_string(), e.evaluate(i, s)));
        }
    }
    out
}

#[test]
fn a_restart_that_refills_its_windows_equals_an_uninterrupted_run() {
    let rows = input();
    let symbols = ["AAPL", "CLZ6", "NGZ6"];
    let mut uninterrupted = engine();
    for r in &rows {
        uninterrupted.apply(r);
    }
    // The restarted engine refills from the first 13 rows, then reads on (the consumer's
    // warm start); one that starts at the resume point without refilling gets other values.
    let mut restarted = engine();
    let mut cold = engine();
    for r in &rows[..13] {
        restarted.apply(r);
    }
    for r in &rows[13..] {
        restarted.apply(r);
        cold.apply(r);
    }
    assert_eq!(
        values(&restarted, &symbols),
        values(&uninterrupted, &symbols)
    );
    assert_ne!(values(&cold, &symbols), values(&uninterrupted, &symbols));
}

/// A partition that leaves and comes back: forgetting a symbol's trades drops its tick values
/// (nothing stale is evaluated) and leaves its book alone; refilling the same rows gives the
/// uninterrupted values again.
#[test]
fn forgetting_a_moved_symbol_and_refilling_it_equals_an_uninterrupted_run() {
    let rows = input();
    let symbols = ["AAPL", "CLZ6", "NGZ6"];
    let mut uninterrupted = engine();
    for r in &rows {
        uninterrupted.apply(r);
    }
    let mut moved = engine();
    for r in &rows {
        moved.apply(r);
    }
    moved.forget(TICK, "CLZ6");
    let specs = moved.specs().to_vec();
    for (i, spec) in specs.iter().enumerate() {
        let v = moved.evaluate(i, "CLZ6");
        if spec.source == TICK {
            assert!(v.is_none(), "{} kept a value after forget", spec.name);
        } else if spec.matches("CLZ6") {
            assert_eq!(v, uninterrupted.evaluate(i, "CLZ6"), "{}", spec.name);
        }
    }
    for r in rows
        .iter()
        .filter(|r| matches!(r, CalcRow::Trade(t) if &*t.symbol == "CLZ6"))
    {
        moved.apply(r);
    }
    assert_eq!(values(&moved, &symbols), values(&uninterrupted, &symbols));
    moved.forget(L2, "CLZ6");
    moved.forget(TICK, "CLZ6");
    assert_eq!(moved.symbols(), 2, "a symbol with nothing left is dropped");
}
