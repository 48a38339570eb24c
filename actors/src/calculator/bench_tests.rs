//! A micro-benchmark of the calculator's row path (parse + apply), run by hand:
//! `cargo test -p marketlane-actors calculator::bench_tests -- --ignored --nocapture`.
//! It prints figures instead of asserting a time: timings depend on the machine and the
//! build profile, so only a side-by-side run of two builds says anything.

use std::sync::Arc;
use std::time::Instant;

use marketlane_protocol::SchemaSet;
use marketlane_protocol::category::{L2, TICK};

use super::compact::Interner;
use super::config::{Kind, Spec, Window};
use super::consumer::parse_interned;
use super::engine::{BookLevel, CalcRow, Engine, Trade};
use super::window::Key;

const T0: i64 = 1_767_225_600_000_000_000;
const MS: i64 = 1_000_000;
const ROWS: usize = 200_000;
const SYMBOLS: usize = 1_000;

fn spec(name: &str, kind: Kind, window: Window, source: &'static str, levels: usize) -> Spec {
    Spec {
        team: "bench".into(),
        name: name.into(),
        kind,
        window,
        levels,
        source,
        symbols: vec!["*".into()],
    }
}

fn specs() -> Arc<Vec<Spec>> {
    let s = 1_000 * MS;
    Arc::new(vec![
        spec("vwap_60s", Kind::Vwap, Window::Time(60 * s), TICK, 0),
        spec(
            "vol_60s",
            Kind::RealizedVolatility,
            Window::Time(60 * s),
            TICK,
            0,
        ),
        spec("count_60s", Kind::TradeCount, Window::Time(60 * s), TICK, 0),
        spec("sma_20", Kind::Sma, Window::Ticks(20), TICK, 0),
        spec("ema_20", Kind::Ema, Window::Ticks(20), TICK, 0),
        spec("volume_100", Kind::Volume, Window::Ticks(100), TICK, 0),
        spec("mid", Kind::Mid, Window::Book, L2, 0),
        spec("spread", Kind::Spread, Window::Book, L2, 0),
        spec("imbalance_5", Kind::BookImbalance, Window::Book, L2, 5),
    ])
}

/// Half trades, half book levels, over `SYMBOLS` symbols, 2 ms apart, as the connector
/// writes them (every column, UUID row ids).
fn payloads() -> Vec<(bool, Vec<u8>)> {
    (0..ROWS)
        .map(|n| {
            let symbol = format!("SYM{:04}", n % SYMBOLS);
            let time = T0 + n as i64 * 2 * MS;
            let price = 100.0 + (n % 97) as f64 / 8.0;
            let id = marketlane_protocol::row_id(TICK, &[&symbol, &n.to_string()]);
            let tick = n % 2 == 0;
            let row = if tick {
                serde_json::json!({
                    "row_id": id, "source_system_name": "ib",
                    "component_instance_name": "bench", "ingestion_time": time,
                    "exchange_identifier": "SMART", "symbol_identifier": symbol,
                    "symbol_type": "stocks", "price": price, "price_unit": "1_USdollar",
                    "size": (n % 13) as f64, "size_unit": "100_shares", "tick_time": time
                })
            } else {
                serde_json::json!({
                    "row_id": id, "source_system_name": "ib",
                    "component_instance_name": "bench", "ingestion_time": time,
                    "exchange_identifier": "SMART", "symbol_identifier": symbol,
                    "symbol_type": "stocks", "price": price, "price_unit": "1_USdollar",
                    "size": (n % 13) as f64, "size_unit": "100_shares",
                    "side": if n % 4 == 1 { "bid" } else { "ask" },
                    "level": 1 + (n / 4) % 10, "max_level": 10, "l2_time": time
                })
            };
            (tick, row.to_string().into_bytes())
        })
        .collect()
}

#[test]
#[ignore = "a benchmark: run by hand with --ignored --nocapture"]
fn bench_parse_and_apply() {
    let schemas = SchemaSet::load_dir(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas"),
    )
    .unwrap();
    let (tick, l2) = (schemas.get(TICK).unwrap(), schemas.get(L2).unwrap());
    let payloads = payloads();
    println!(
        "size_of: Trade {} BookLevel {} CalcRow {} window Key {}",
        size_of::<Trade>(),
        size_of::<BookLevel>(),
        size_of::<CalcRow>(),
        size_of::<Key>()
    );
    for round in 1..=3 {
        let mut interner = Interner::default();
        let started = Instant::now();
        let rows: Vec<CalcRow> = payloads
            .iter()
            .map(|(is_tick, p)| {
                parse_interned(if *is_tick { tick } else { l2 }, p, &mut interner).unwrap()
            })
            .collect();
        let parsed = started.elapsed();
        let mut engine = Engine::new(specs());
        let mut touched = Vec::new();
        let started = Instant::now();
        for row in &rows {
            engine.apply_into(row, &mut touched);
        }
        let applied = started.elapsed();
        let ns = |d: std::time::Duration| d.as_nanos() as f64 / ROWS as f64;
        println!(
            "round {round}: {ROWS} rows, parse {:.0} ns/row, apply {:.0} ns/row, total {:.0} ns/row, rows held {}",
            ns(parsed),
            ns(applied),
            ns(parsed + applied),
            engine.rows_held()
        );
    }
}
