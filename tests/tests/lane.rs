//! The lane end to end on the real local stack: simulator → daemon → Kafka → ClickHouse.

use std::collections::BTreeSet;
use std::time::Duration;

use marketlane_actors::config::SymbolConfig;
use marketlane_protocol::UnqualifiedRecord;
use marketlane_tests::config::{DaemonConfig, future, stock};
use marketlane_tests::{
    Proc, clickhouse, eventually, free_port, kafka_payloads, ledger_row_ids, run_marketlane,
    unique, workspace_root,
};

/// A demo still running after this hangs (it streams for seconds, then settles).
const DEMO_LIMIT: Duration = Duration::from_secs(15 * 60);

/// Parses `emitted=N kafka=N clickhouse=N lost=N duplicates=N redis_keys=N redis_check=ok`,
/// the demo's final line.
fn reconciliation_line(stdout: &str) -> Vec<(String, String)> {
    let last = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        last.starts_with("emitted="),
        "the reconciliation is not the final line:\n{stdout}"
    );
    last.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn text<'a>(line: &'a [(String, String)], key: &str) -> &'a str {
    line.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn value(line: &[(String, String)], key: &str) -> u64 {
    text(line, key).parse().unwrap()
}

/// The demo's Redis side: the check passed, and Redis holds a VWAP and a mid for the symbols
/// (a key per symbol and spec, so at least two per symbol that traded).
fn assert_redis_side(stdout: &str, line: &[(String, String)]) {
    assert_eq!(text(line, "redis_check"), "ok", "{stdout}");
    assert!(value(line, "redis_keys") >= 2, "{stdout}");
    // Live values were printed while it ran.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("redis keys=") && l.contains("vwap_60s=")),
        "no live indicator line:\n{stdout}"
    );
}

/// The single run directory a demo wrote under `dir`.
fn run_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let mut runs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.remove(0)
}

async fn stored_row_ids(db: &str) -> BTreeSet<String> {
    clickhouse(&format!("SELECT row_id FROM {db}.tick_market_data FINAL"))
        .await
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_stores_every_emitted_trade_exactly_once() {
    let prefix = unique("t_");
    let db = unique("t_");
    let dir = tempfile::tempdir().unwrap();
    let out = run_marketlane(
        &[
            "demo",
            "--seconds",
            "15",
            "--topic-prefix",
            &format!("{prefix}_"),
            "--database",
            &db,
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        DEMO_LIMIT,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = reconciliation_line(&stdout);
    assert!(value(&line, "emitted") > 20, "{stdout}");
    assert_eq!(value(&line, "clickhouse"), value(&line, "emitted"));
    assert_eq!(value(&line, "kafka"), value(&line, "emitted"));
    assert_eq!((value(&line, "lost"), value(&line, "duplicates")), (0, 0));
    assert_redis_side(&stdout, &line);

    // Independently of the demo's own reconciliation: the ledger's trades, by row id, are
    // exactly the rows of the (fresh) table, as an analyst counts them.
    let expected = ledger_row_ids(&run_dir(dir.path()).join("ledger.jsonl")).unwrap();
    assert_eq!(stored_row_ids(&db).await, expected);
    let counts = clickhouse(&format!(
        "SELECT count(), uniqExact(row_id) FROM {db}.tick_market_data FINAL"
    ))
    .await
    .unwrap();
    assert_eq!(
        counts.trim(),
        format!("{}\t{}", expected.len(), expected.len())
    );
    let in_kafka: BTreeSet<String> = kafka_payloads(&format!("{prefix}_tick_market_data"))
        .unwrap()
        .iter()
        .map(|p| {
            serde_json::from_slice::<serde_json::Value>(p).unwrap()["row_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(expected.is_subset(&in_kafka));
    clickhouse(&format!("DROP DATABASE {db}")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_daemon_mid_run_loses_nothing_outside_the_outage() {
    let prefix = unique("t_");
    let db = unique("t_");
    let dir = tempfile::tempdir().unwrap();
    let out = run_marketlane(
        &[
            "demo",
            "--seconds",
            "30",
            "--kill-daemon-at",
            "12",
            "--topic-prefix",
            &format!("{prefix}_"),
            "--database",
            &db,
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        DEMO_LIMIT,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}");
    assert!(stdout.contains("SIGKILL the daemon"), "{stdout}");
    let line = reconciliation_line(&stdout);
    assert!(value(&line, "emitted") > 20, "{stdout}");
    assert_eq!(
        (value(&line, "lost"), value(&line, "duplicates")),
        (0, 0),
        "{stdout}"
    );
    assert_eq!(
        value(&line, "clickhouse"),
        value(&line, "emitted"),
        "{stdout}"
    );
    // The calculators restarted with the daemon and refilled their windows: every VWAP in
    // Redis still equals its recomputation from ClickHouse.
    assert_redis_side(&stdout, &line);
    // No duplicate anywhere in the table, the outage window included: the batch the killed
    // writer had inserted but not committed was replayed and collapsed.
    let counts = clickhouse(&format!(
        "SELECT count() = uniqExact(row_id), count() FROM {db}.tick_market_data FINAL"
    ))
    .await
    .unwrap();
    assert!(counts.starts_with("1\t"), "{counts}");
    clickhouse(&format!("DROP DATABASE {db}")).await.unwrap();
}

/// A malformed frame, a non-UTF-8 frame and a trade whose size IB sends empty end up in the
/// quarantine topic with their reasons, and trades keep flowing.
#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_and_rows_are_quarantined_and_the_stream_continues() {
    let prefix = format!("{}_", unique("t_"));
    let db = unique("t_");
    let dir = tempfile::tempdir().unwrap();
    let gw = free_port();
    let http = free_port();
    let _sim = Proc::spawn(
        // CVX stays quiet, so no real trade races the bad one (see `faults::row10`).
        &[
            "sim",
            "--listen",
            &format!("127.0.0.1:{gw}"),
            "--seed",
            "7",
            "--quiet-symbol",
            "CVX",
        ],
        &dir.path().join("sim.log"),
    )
    .unwrap();
    // Only the keys an operator must write for one connector + writer pod.
    let mut c = DaemonConfig::new(&format!("http://127.0.0.1:{gw}"), dir.path()).without(&[
        "roles",
        "drain_deadline_secs",
        "control",
        "clickhouse.url",
        "writer",
    ]);
    c.instance = "itest-0".into();
    c.http_port = http;
    c.kafka_prefix = prefix.clone();
    c.database = db.clone();
    let config = c.write(&dir.path().join("config.toml"));
    let mut daemon = Proc::spawn(
        &["run", "--config", config.to_str().unwrap()],
        &dir.path().join("daemon.log"),
    )
    .unwrap();
    let tick_topic = format!("{prefix}tick_market_data");
    let quarantine_topic = format!("{prefix}tick_market_data_unqualified");
    let flowing = eventually(Duration::from_secs(60), || async {
        kafka_payloads(&tick_topic)
            .map(|p| p.len() >= 5)
            .unwrap_or(false)
    })
    .await;
    assert!(
        flowing,
        "no trades reached Kafka: see {}",
        dir.path().display()
    );
    let before = kafka_payloads(&tick_topic).unwrap().len();

    let admin = reqwest::Client::new();
    let fault = |body: serde_json::Value| {
        let admin = admin.clone();
        async move {
            let r = admin
                .post(format!("http://127.0.0.1:{gw}/sim/fault"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{body}: {}", r.status());
        }
    };
    fault(serde_json::json!({"kind": "malformed_frame"})).await;
    fault(serde_json::json!({"kind": "non_utf8_frame"})).await;
    let now_ms = marketlane_protocol::now_ns() / 1_000_000;
    fault(serde_json::json!({"kind": "raw_frame", "text": format!(
        r#"{{"topic":"smd+5932","conid":5932,"_updated":{now_ms},"31":"158.25","7059":""}}"#
    )}))
    .await;

    let seen_reasons = || -> BTreeSet<String> {
        kafka_payloads(&quarantine_topic)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| serde_json::from_slice::<UnqualifiedRecord>(p).ok())
            .filter(|r| !r.reason.is_empty())
            .map(|r| r.reason_code)
            .collect()
    };
    let quarantined = eventually(Duration::from_secs(30), || async {
        let reasons = seen_reasons();
        ["not_json", "not_utf8", "missing_field"]
            .iter()
            .all(|c| reasons.contains(*c))
    })
    .await;
    let reasons = seen_reasons();
    assert!(quarantined, "quarantine reasons seen: {reasons:?}");
    let continued = eventually(Duration::from_secs(30), || async {
        kafka_payloads(&tick_topic)
            .map(|p| p.len() >= before + 5)
            .unwrap_or(false)
    })
    .await;
    assert!(continued, "trades stopped after the bad input");
    // The quarantine writer keeps them in ClickHouse too, with their Kafka coordinates.
    let kept = eventually(Duration::from_secs(30), || async {
        clickhouse(&format!(
            "SELECT count() FROM {db}.tick_market_data_unqualified WHERE source_topic = '{quarantine_topic}'"
        ))
        .await
        .map(|c| c.trim().parse::<u64>().unwrap_or(0) >= 3)
        .unwrap_or(false)
    })
    .await;
    assert!(kept, "quarantine table not filled");
    daemon.terminate();
    clickhouse(&format!("DROP DATABASE {db}")).await.unwrap();
}

/// Trades, book levels (top of book and an `sbd` ladder) and IB's session statistics, from the
/// simulator through the normalizers, Kafka and the writers into each category's snapshot
/// table; the documented analyst queries (`FINAL` and `argMax`) agree on it.
#[tokio::test(flavor = "multi_thread")]
async fn market_categories_reach_their_snapshot_tables_from_the_simulator() {
    use marketlane_protocol::SchemaSet;
    use marketlane_protocol::clickhouse::{snapshot_query_argmax, snapshot_query_final};

    let prefix = format!("{}_", unique("s_"));
    let db = unique("s_");
    let dir = tempfile::tempdir().unwrap();
    let gw = free_port();
    let http = free_port();
    let _sim = Proc::spawn(
        &[
            "sim",
            "--listen",
            &format!("127.0.0.1:{gw}"),
            "--seed",
            "9",
            "--book-depth",
            "5",
        ],
        &dir.path().join("sim.log"),
    )
    .unwrap();
    // AAPL with its ladder; the keys an operator must write, and short writer batches.
    let mut c = DaemonConfig::new(&format!("http://127.0.0.1:{gw}"), dir.path()).without(&[
        "roles",
        "drain_deadline_secs",
        "control",
        "clickhouse.url",
        "writer.group_id",
    ]);
    c.instance = "snapshot-test-0".into();
    c.http_port = http;
    c.symbols = vec![
        SymbolConfig {
            depth: true,
            ..stock("AAPL")
        },
        stock("XOM"),
        future("CL", "NYMEX"),
    ];
    c.kafka_prefix = prefix.clone();
    c.database = db.clone();
    c.batch_max_age_secs = 0.2;
    let config = c.write(&dir.path().join("config.toml"));
    let mut daemon = Proc::spawn(
        &["run", "--config", config.to_str().unwrap()],
        &dir.path().join("daemon.log"),
    )
    .unwrap();
    let count = |sql: String| async move {
        clickhouse(&sql)
            .await
            .map(|c| c.trim().parse::<u64>().unwrap_or(0))
            .unwrap_or(0)
    };
    // Every symbol traded; AAPL's ladder gives 5 levels a side, the others level 1 a side.
    // A symbol's first indicator need not be its volume: wait for the volumes too.
    let volumes = format!(
        "SELECT count() FROM {db}.indicators_market_data_snapshot FINAL WHERE indicator_identifier = 'volume'"
    );
    let filled = eventually(Duration::from_secs(60), || async {
        count(format!("SELECT count() FROM {db}.tick_market_data_snapshot FINAL")).await == 3
            && count(format!("SELECT count() FROM {db}.l2_market_data_snapshot FINAL")).await
                == 14
            && count(format!(
                "SELECT uniqExact(symbol_identifier) FROM {db}.indicators_market_data_snapshot FINAL"
            ))
            .await
                == 3
            && count(volumes.clone()).await == 3
    })
    .await;
    daemon.terminate();
    assert!(
        filled,
        "snapshot tables not filled; logs in {}",
        dir.path().display()
    );
    let levels = clickhouse(&format!(
        "SELECT side, max(level), max(max_level) FROM {db}.l2_market_data_snapshot FINAL WHERE symbol_identifier = 'AAPL' GROUP BY side ORDER BY side"
    ))
    .await
    .unwrap();
    assert_eq!(levels, "ask\t5\t5\nbid\t5\t5\n");
    let volume = count(volumes).await;
    assert_eq!(volume, 3, "one latest volume per symbol");
    let schemas = SchemaSet::load_dir(&workspace_root().join("schemas")).unwrap();
    for category in [
        "tick_market_data",
        "l2_market_data",
        "indicators_market_data",
    ] {
        let schema = schemas.get(category).unwrap();
        let mut final_rows: Vec<String> = clickhouse(&snapshot_query_final(schema, &db))
            .await
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let mut argmax_rows: Vec<String> = clickhouse(&snapshot_query_argmax(schema, &db))
            .await
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        final_rows.sort();
        argmax_rows.sort();
        assert!(!final_rows.is_empty(), "{category}");
        assert_eq!(
            final_rows, argmax_rows,
            "{category}: FINAL and argMax disagree"
        );
    }
    clickhouse(&format!("DROP DATABASE {db}")).await.unwrap();
    let _ = clickhouse(&format!("DROP DATABASE IF EXISTS {db}_state")).await;
}
