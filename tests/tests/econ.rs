//! The second connector: economic releases polled over HTTP from the simulator's feed, into
//! `numeric_economic_data` (ingestion and snapshot tables), deduplicated on publisher +
//! release + field + release time although the feed repeats every release several times.

use std::collections::BTreeSet;
use std::time::Duration;

use marketlane_protocol::category::NUMERIC_ECONOMIC;
use marketlane_protocol::row_id;
use marketlane_tests::config::DaemonConfig;
use marketlane_tests::{
    Proc, clickhouse, eventually, free_port, kafka_payloads, unique, workspace_root,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn releases_reach_clickhouse_once_each_and_the_snapshot_holds_the_latest() {
    // Logs and config stay under var/test-runs/ for a look after a failure.
    let dir = workspace_root().join("var/test-runs").join(unique("econ_"));
    std::fs::create_dir_all(&dir).unwrap();
    let gw = free_port();
    let http = free_port();
    let prefix = format!("{}_", unique("e_"));
    let db = unique("e_");
    // 20× speed: a release every 0.5 s of real time.
    let _sim = Proc::spawn(
        &[
            "sim",
            "--listen",
            &format!("127.0.0.1:{gw}"),
            "--speed",
            "20",
            "--seed",
            "3",
        ],
        &dir.join("sim.log"),
    )
    .unwrap();
    // Only the keys of an economic-feed pod: no IB symbols, roles, control socket, drain
    // deadline, ClickHouse URL or writer group (the daemon's defaults).
    let mut c = DaemonConfig::new(&format!("http://127.0.0.1:{gw}"), &dir)
        .without(&[
            "roles",
            "drain_deadline_secs",
            "control",
            "ib.symbols",
            "clickhouse.url",
            "writer.group_id",
        ])
        .with_toml("econ.url", format!("http://127.0.0.1:{gw}/econ/releases"))
        .with_toml("econ.poll_interval", 0.3);
    c.instance = "econ-test-0".into();
    c.http_port = http;
    c.kafka_prefix = prefix.clone();
    c.database = db.clone();
    c.batch_max_age_secs = 0.2;
    let config = c.write(&dir.join("config.toml"));
    let mut daemon = Proc::spawn(
        &["run", "--config", config.to_str().unwrap()],
        &dir.join("daemon.log"),
    )
    .unwrap();
    // Let several releases come and go, each seen in several polls.
    let enough = eventually(Duration::from_secs(60), || async {
        clickhouse(&format!(
            "SELECT count() FROM {db}.numeric_economic_data FINAL"
        ))
        .await
        .map(|c| c.trim().parse::<u64>().unwrap_or(0) >= 40)
        .unwrap_or(false)
    })
    .await;
    assert!(enough, "fewer than 40 rows; logs in {}", dir.display());
    // Every field of every release in the feed now (but the newest, which may not have been
    // polled yet) becomes a row.
    let feed: Value = reqwest::get(format!("http://127.0.0.1:{gw}/econ/releases"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let releases = feed["releases"].as_array().unwrap();
    let newest = releases
        .iter()
        .filter_map(|r| r["release_time_ms"].as_i64())
        .max()
        .unwrap();
    let mut expected = BTreeSet::new();
    for r in releases
        .iter()
        .filter(|r| r["release_time_ms"].as_i64() < Some(newest))
    {
        for f in r["fields"].as_array().unwrap() {
            expected.insert(row_id(
                NUMERIC_ECONOMIC,
                &[
                    r["publisher"].as_str().unwrap(),
                    r["release"].as_str().unwrap(),
                    f["field"].as_str().unwrap(),
                    &r["release_time_ms"].to_string(),
                ],
            ));
        }
    }
    let stored = || async {
        clickhouse(&format!(
            "SELECT row_id FROM {db}.numeric_economic_data FINAL"
        ))
        .await
        .unwrap()
        .lines()
        .map(String::from)
        .collect::<BTreeSet<String>>()
    };
    let all = eventually(Duration::from_secs(30), || async {
        expected.is_subset(&stored().await)
    })
    .await;
    daemon.terminate();
    let missing = expected.difference(&stored().await).count();
    assert!(
        all,
        "{missing} of {} release fields missing",
        expected.len()
    );
    let checked = expected.len();
    assert!(checked >= 10, "only {checked} fields checked");
    // Once each: no duplicate after FINAL, and the poller did not produce repeats to Kafka.
    let counts = clickhouse(&format!(
        "SELECT count(), uniqExact(row_id) FROM {db}.numeric_economic_data FINAL"
    ))
    .await
    .unwrap();
    let (n, u) = counts.trim().split_once('\t').unwrap();
    assert_eq!(n, u, "duplicates after FINAL");
    let payloads = kafka_payloads(&format!("{prefix}numeric_economic_data")).unwrap();
    let ids: BTreeSet<String> = payloads
        .iter()
        .map(|p| {
            serde_json::from_slice::<Value>(p).unwrap()["row_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ids.len(),
        payloads.len(),
        "the poller produced a repeated release again"
    );
    // A restarted poller recovers what ClickHouse holds and does not emit those releases
    // again although the feed still repeats them: once it has polled a few times (new
    // releases reach ClickHouse), every row id ClickHouse had before the restart is in Kafka
    // once. (A release still on its way through Kafka at the restart may be emitted again;
    // it collapses in its event-day partition, which the FINAL count below shows.)
    let stored_before = stored().await;
    let before = stored_before.len();
    let log2 = dir.join("daemon-2.log");
    let mut daemon = Proc::spawn(&["run", "--config", config.to_str().unwrap()], &log2).unwrap();
    let polled = eventually(Duration::from_secs(60), || async {
        stored().await.len() >= before + 10
    })
    .await;
    daemon.terminate();
    let text = std::fs::read_to_string(&log2).unwrap_or_default();
    assert!(polled, "no new release after the restart:\n{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log that is not a terminal:\n{text}"
    );
    assert!(
        text.contains(&format!("recovered=Some({before})")),
        "the seen-set was not recovered:\n{text}"
    );
    let mut in_kafka: std::collections::BTreeMap<String, usize> = Default::default();
    let payloads = kafka_payloads(&format!("{prefix}numeric_economic_data")).unwrap();
    for p in &payloads {
        let id = serde_json::from_slice::<Value>(p).unwrap()["row_id"]
            .as_str()
            .unwrap()
            .to_string();
        *in_kafka.entry(id).or_default() += 1;
    }
    let again: Vec<&String> = stored_before
        .iter()
        .filter(|id| in_kafka.get(*id).copied() != Some(1))
        .collect();
    println!(
        "  econ restart: {before} rows recovered; Kafka {} messages, {} distinct",
        payloads.len(),
        in_kafka.len()
    );
    assert!(
        again.is_empty(),
        "{} releases stored before the restart were emitted again",
        again.len()
    );
    let counts = clickhouse(&format!(
        "SELECT count(), uniqExact(row_id) FROM {db}.numeric_economic_data FINAL"
    ))
    .await
    .unwrap();
    let (n, u) = counts.trim().split_once('\t').unwrap();
    assert_eq!(n, u, "duplicates after FINAL across the restart");
    // The snapshot holds one row per field: the latest release's value.
    let snap = clickhouse(&format!(
        "SELECT release_field, toString(release_field_value) FROM {db}.numeric_economic_data_snapshot FINAL ORDER BY release_field"
    ))
    .await
    .unwrap();
    assert_eq!(snap.lines().count(), 5, "{snap}");
    let latest_stored = clickhouse(&format!(
        "SELECT release_field, toString(argMax(release_field_value, release_time)) FROM {db}.numeric_economic_data FINAL GROUP BY release_field ORDER BY release_field"
    ))
    .await
    .unwrap();
    assert_eq!(snap, latest_stored);
    assert!(
        clickhouse(&format!(
            "SELECT count() FROM {db}.numeric_economic_data FINAL WHERE source_system_name = 'econ_feed' AND publisher_identifier = 'EIA' AND release_field_value_unit != ''"
        ))
        .await
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap()
            >= 40
    );
    clickhouse(&format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
    clickhouse(&format!("DROP DATABASE IF EXISTS {db}_state"))
        .await
        .unwrap();
}
