//! `marketlane-row-bench`: what writing one connector row costs, side by side in one run: a
//! level-2 row checked against its schema and written to its wire JSON from borrowed typed
//! values (`CategorySchema::write_typed`, the connector's path) and the same row built as a
//! `serde_json::Map` and passed through `check` + `write_json` (the general path, which the
//! connector used before). Both write the same bytes (checked here). Prints nanoseconds per row
//! for each, rounds alternating, and the ratio. Run:
//! `cargo run --release -p marketlane-load-tests --bin marketlane-row-bench [rows a round]`.

use std::path::Path;
use std::time::Instant;

use marketlane_protocol::{RowMap, Scalar, SchemaSet};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let schemas = SchemaSet::load_dir(&dir)?;
    let l2 = schemas.get("l2_market_data")?;
    // A book level as the l2 normalizer writes it (the exchange is unknown: a null and its
    // `_state` column).
    let row: Vec<(&str, Scalar)> = vec![
        (
            "row_id",
            Scalar::Str("0b6f3c3e-8d0e-5a7b-9a0e-6f1f2a3b4c5d"),
        ),
        ("source_system_name", Scalar::Str("ib")),
        ("component_instance_name", Scalar::Str("marketlane-0")),
        ("ingestion_time", Scalar::I64(1_764_944_000_123_456_789)),
        ("exchange_identifier", Scalar::Null),
        ("symbol_identifier", Scalar::Str("CLZ6")),
        ("symbol_type", Scalar::Str("futures")),
        ("price", Scalar::f64(70.13)),
        ("price_unit", Scalar::Str("1_USdollar")),
        ("size", Scalar::f64(4.0)),
        ("size_unit", Scalar::Str("1_contracts")),
        ("side", Scalar::Str("bid")),
        ("level", Scalar::U64(1)),
        ("max_level", Scalar::U64(5)),
        ("l2_time", Scalar::I64(1_764_944_000_123)),
    ];
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let (mut typed_out, mut map_out, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    l2.write_typed(&row, &mut typed_out, &mut missing)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let map = |row: &[(&str, Scalar)]| -> RowMap {
        row.iter()
            .map(|(k, v)| (k.to_string(), v.to_value()))
            .collect()
    };
    l2.write_json(&map(&row), &mut map_out);
    anyhow::ensure!(typed_out == map_out, "the two paths write different bytes");
    println!(
        "row-bench: one level-2 row ({} bytes of JSON), {n} rows a round, 5 rounds alternating",
        typed_out.len()
    );
    let (mut typed_ns, mut map_ns) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let started = Instant::now();
        for _ in 0..n {
            typed_out.clear();
            missing.clear();
            let _ = l2.write_typed(std::hint::black_box(&row), &mut typed_out, &mut missing);
        }
        typed_ns.push(started.elapsed().as_nanos() as f64 / n as f64);
        let started = Instant::now();
        for _ in 0..n {
            map_out.clear();
            let m = map(std::hint::black_box(&row));
            if l2.check(&m).is_ok() {
                l2.write_json(&m, &mut map_out);
            }
        }
        map_ns.push(started.elapsed().as_nanos() as f64 / n as f64);
        println!(
            "round {round}: typed {:.0} ns | map {:.0} ns (per row)",
            typed_ns[round], map_ns[round]
        );
    }
    let (t, m) = (median(typed_ns), median(map_ns));
    println!(
        "median per row: typed {t:.0} ns, map {m:.0} ns; ratio typed/map {:.2}",
        t / m
    );
    Ok(())
}
