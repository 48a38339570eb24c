//! The metric spec (ARCHITECTURE.md section 4) against the code and a live daemon: every metric
//! defined in `actors/src/metrics.rs` is in the spec and every spec row is defined; every family
//! a running daemon exposes has the spec's type and exactly its labels; `promtool check metrics`
//! accepts the live scrape.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use marketlane_tests::config::{DaemonConfig, stock};
use marketlane_tests::{
    Proc, clickhouse, eventually, free_port, output_within, unique, workspace_root,
};

#[derive(Debug, Clone, PartialEq)]
struct Spec {
    kind: String,
    labels: BTreeSet<String>,
}

fn spec() -> BTreeMap<String, Spec> {
    let arch = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).unwrap();
    let section = arch
        .split("## 4. Metrics")
        .nth(1)
        .expect("section 4")
        .split("\n## ")
        .next()
        .unwrap();
    let mut out = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `marketlane_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let labels = cells[3]
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        out.insert(
            name,
            Spec {
                kind: cells[2].to_string(),
                labels,
            },
        );
    }
    assert!(out.len() >= 20, "spec table not found or short: {out:?}");
    out
}

#[test]
fn every_defined_metric_is_in_the_spec_and_back() {
    let spec = spec();
    let src = std::fs::read_to_string(workspace_root().join("actors/src/metrics.rs")).unwrap();
    let defined: BTreeSet<String> = src
        .split('"')
        .filter(|s| {
            s.starts_with("marketlane_")
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(String::from)
        .collect();
    let documented: BTreeSet<String> = spec.keys().cloned().collect();
    let undocumented: Vec<_> = defined.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&defined).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "defined but not in ARCHITECTURE.md section 4: {undocumented:?}; in the spec but not defined: {missing:?}"
    );
}

/// `# TYPE` and the label names of every sample, by family.
fn parse_exposition(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut types = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            types.insert(
                it.next().unwrap().to_string(),
                (it.next().unwrap().to_string(), BTreeSet::new()),
            );
        }
    }
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = l.find(['{', ' ']).unwrap();
        let sample = &l[..name_end];
        let family = types
            .keys()
            .filter(|f| sample.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample without TYPE: {l}"))
            .clone();
        if let Some(labels) = l[name_end..].strip_prefix('{') {
            let labels = &labels[..labels.rfind('}').unwrap()];
            for pair in labels.split("\",") {
                let key = pair.split('=').next().unwrap().trim().to_string();
                if key != "le" && !key.is_empty() {
                    types.get_mut(&family).unwrap().1.insert(key);
                }
            }
        }
    }
    types
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_daemon_exposes_exactly_the_spec_and_promtool_accepts_it() {
    let spec = spec();
    let prefix = format!("{}_", unique("t_"));
    let db = unique("t_");
    let dir = tempfile::tempdir().unwrap();
    let (gw, http) = (free_port(), free_port());
    let _sim = Proc::spawn(
        &["sim", "--listen", &format!("127.0.0.1:{gw}"), "--seed", "5"],
        &dir.path().join("sim.log"),
    )
    .unwrap();
    // One connector + writer pod with only the keys an operator must write, no control socket.
    let mut c = DaemonConfig::new(&format!("http://127.0.0.1:{gw}"), dir.path())
        .without(&[
            "roles",
            "drain_deadline_secs",
            "control.socket",
            "clickhouse.url",
            "writer",
        ])
        .with_toml("control.enabled", false);
    c.instance = "spec-0".into();
    c.http_port = http;
    c.symbols = vec![stock("AAPL"), stock("XOM")];
    c.kafka_prefix = prefix.clone();
    c.database = db.clone();
    let config = c.write(&dir.path().join("config.toml"));
    let mut daemon = Proc::spawn(
        &["run", "--config", config.to_str().unwrap()],
        &dir.path().join("daemon.log"),
    )
    .unwrap();
    let scrape = || async move {
        reqwest::get(format!("http://127.0.0.1:{http}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    // Wait until rows went the whole way, so that the data-path families have samples
    // (the writers export their lag on assignment, then every 2 s, beside the inserts).
    let flowed = eventually(Duration::from_secs(90), || async {
        scrape().await.is_some_and(|t| {
            t.contains("marketlane_clickhouse_rows_inserted_total{")
                && t.contains("marketlane_consumer_lag{")
        })
    })
    .await;
    let log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(flowed, "no rows reached ClickHouse: {}", log());
    let text = scrape().await.unwrap();
    daemon.terminate();
    let _ = clickhouse(&format!("DROP DATABASE IF EXISTS {db}")).await;

    let exposed = parse_exposition(&text);
    let mut problems = Vec::new();
    for (family, (kind, labels)) in &exposed {
        match spec.get(family) {
            None => problems.push(format!("{family} is exposed but not in the spec")),
            Some(s) => {
                if &s.kind != kind {
                    problems.push(format!("{family}: type {kind}, spec says {}", s.kind));
                }
                // A family with samples carries all its labels on each of them.
                let has_samples = text
                    .lines()
                    .any(|l| l.starts_with(family.as_str()) && !l.starts_with('#'));
                if has_samples && &s.labels != labels {
                    problems.push(format!(
                        "{family}: labels {labels:?}, spec says {:?}",
                        s.labels
                    ));
                }
            }
        }
    }
    // Families without labels are always exposed; the data path must have filled these.
    let must: Vec<&String> = spec
        .iter()
        .filter(|(_, s)| s.labels.is_empty())
        .map(|(n, _)| n)
        .chain(
            [
                "marketlane_ib_session_state",
                "marketlane_ws_frames_total",
                "marketlane_rows_normalized_total",
                "marketlane_kafka_produced_total",
                "marketlane_kafka_produce_latency_seconds",
                "marketlane_consumer_lag",
                "marketlane_clickhouse_rows_inserted_total",
                "marketlane_clickhouse_insert_duration_seconds",
                "marketlane_event_to_sink_latency_seconds",
                "marketlane_subscriptions",
            ]
            .iter()
            .filter_map(|n| spec.get_key_value(*n).map(|(k, _)| k)),
        )
        .collect();
    for name in must {
        if !exposed.contains_key(name) {
            problems.push(format!("{name} is in the spec but not exposed"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\n\n{text}");

    // promtool (Debian's prometheus package; `make ops-deps` installs it) on the live scrape.
    // The scrape goes in from a file: a pipe written here could block on a hung promtool.
    let mut scrape = tempfile::tempfile().unwrap();
    {
        use std::io::{Seek, Write};
        scrape.write_all(text.as_bytes()).unwrap();
        scrape.rewind().unwrap();
    }
    let out = output_within(
        Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::from(scrape)),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("promtool (Debian's prometheus package, make ops-deps): {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
