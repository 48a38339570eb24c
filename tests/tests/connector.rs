//! The IB connector against the simulator, one behaviour per test, each on the real local
//! stack. Recovery times are printed (`cargo test -- --nocapture` shows them); they are
//! measured, never asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use marketlane_actors::config::SymbolConfig;
use marketlane_protocol::category::TICK;
use marketlane_tests::config::{DaemonConfig, future, stock};
use marketlane_tests::{
    Proc, clickhouse, eventually, free_port, kafka_payloads, marketlane_bin, marketlane_sim_bin,
    output_within, unique, workspace_root,
};
use serde_json::{Value, json};

/// A simulator and a daemon (connector and writer) wired to it, with their own topics.
struct Lane {
    gw: u16,
    http: u16,
    prefix: String,
    db: String,
    sim: Option<Proc>,
    daemon: Proc,
    /// Logs and config, kept under `var/test-runs/` for a look after a failure.
    dir: RunDir,
}

struct RunDir(std::path::PathBuf);

impl RunDir {
    fn new() -> Self {
        let dir = workspace_root()
            .join("var/test-runs")
            .join(unique("connector_"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

/// The default universe: three stocks and two futures.
fn symbols() -> Vec<SymbolConfig> {
    vec![
        stock("AAPL"),
        stock("XOM"),
        stock("CVX"),
        future("CL", "NYMEX"),
        future("GC", "COMEX"),
    ]
}

impl Lane {
    /// `sim_args` are extra simulator flags (`None`: the daemon starts the gateway itself, from
    /// `[ib]` keys that `configure` sets); `configure` adds to a connector-only pod of the
    /// default symbols that leaves drain deadline, control socket and ClickHouse URL to the
    /// daemon's defaults.
    fn start(
        sim_args: Option<&[&str]>,
        gw: u16,
        configure: impl FnOnce(DaemonConfig) -> DaemonConfig,
    ) -> Self {
        let dir = RunDir::new();
        let prefix = format!("{}_", unique("c_"));
        let db = unique("c_");
        let sim = sim_args.map(|extra| {
            let listen = format!("127.0.0.1:{gw}");
            let mut args = vec!["sim", "--listen", listen.as_str(), "--seed", "11"];
            args.extend_from_slice(extra);
            Proc::spawn(&args, &dir.path().join("sim.log")).unwrap()
        });
        let mut c = DaemonConfig::new(&format!("http://127.0.0.1:{gw}"), dir.path()).without(&[
            "drain_deadline_secs",
            "control",
            "clickhouse.url",
            "writer",
        ]);
        c.instance = "conn-test-0".into();
        c.roles = vec!["connector".into()];
        c.symbols = symbols();
        c.kafka_prefix = prefix.clone();
        c.database = db.clone();
        let c = configure(c);
        let config = c.write(&dir.path().join("config.toml"));
        let daemon = Proc::spawn(
            &["run", "--config", config.to_str().unwrap()],
            &dir.path().join("daemon.log"),
        )
        .unwrap();
        Self {
            gw,
            http: c.http_port,
            prefix,
            db,
            sim,
            daemon,
            dir,
        }
    }

    fn topic(&self) -> String {
        format!("{}{TICK}", self.prefix)
    }

    /// Tick rows in Kafka so far.
    fn rows(&self) -> Vec<Value> {
        kafka_payloads(&self.topic())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| serde_json::from_slice(p).ok())
            .collect()
    }

    async fn wait_for_rows(&self, n: usize) {
        let ok = eventually(Duration::from_secs(60), || async { self.rows().len() >= n }).await;
        assert!(
            ok,
            "fewer than {n} tick rows; logs in {}",
            self.dir.path().display()
        );
    }

    /// Waits for the first row ingested after `after_ns` and returns its delay from `t0_ns` in
    /// seconds. `after_ns` is when the daemon had noticed the disruption (a metric said so): a
    /// row ingested before that, e.g. while the fault request was served, is no recovery.
    async fn resumed_after(&self, t0_ns: i64, after_ns: i64, timeout: Duration) -> Option<f64> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            let first = self
                .rows()
                .iter()
                .filter_map(|r| r["ingestion_time"].as_i64())
                .filter(|t| *t > after_ns)
                .min();
            if let Some(t) = first {
                return Some((t - t0_ns) as f64 / 1e9);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Waits until `series` reaches `at_least`; the time (ns) it was seen there.
    async fn noticed(&self, series: &str, at_least: f64, timeout: Duration) -> Option<i64> {
        eventually(timeout, || async { self.metric(series).await >= at_least })
            .await
            .then(marketlane_protocol::now_ns)
    }

    /// Call right after a disruption: waits (each up to `timeout`) until `proof` reaches
    /// `at_least` (the daemon noticed), then for the first row ingested after that, and
    /// returns the seconds from the call to that row. Fails the test if either never comes.
    async fn recovered(&self, proof: &str, at_least: f64, timeout: Duration) -> f64 {
        let t0 = marketlane_protocol::now_ns();
        let noticed = self.noticed(proof, at_least, timeout).await;
        let Some(noticed) = noticed else {
            panic!(
                "{proof} never reached {at_least}; logs in {}",
                self.dir.path().display()
            );
        };
        let resumed = self.resumed_after(t0, noticed, timeout).await;
        resumed.unwrap_or_else(|| panic!("no data after {proof} reached {at_least}"))
    }

    async fn fault(&self, body: Value) {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/sim/fault", self.gw))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "fault {body}: {}", r.status());
    }

    /// The value of one metric line (exact name with labels) on the daemon's /metrics.
    async fn metric(&self, series: &str) -> f64 {
        let Ok(r) = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.http)).await else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(name, _)| *name == series)
            .map(|(_, v)| v.parse::<f64>().unwrap_or(0.0))
            .sum()
    }

    /// The simulator's trades so far, as the row ids the connector must give them.
    async fn ledger_row_ids(&self) -> BTreeSet<String> {
        let entries: Vec<Value> =
            reqwest::get(format!("http://127.0.0.1:{}/sim/ledger/entries", self.gw))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        entries
            .iter()
            .filter(|e| e["kind"] == "trade")
            .map(marketlane_tests::ledger_row_id)
            .collect()
    }

    fn row_ids(&self) -> BTreeSet<String> {
        self.rows()
            .iter()
            .filter_map(|r| r["row_id"].as_str().map(String::from))
            .collect()
    }

    async fn finish(mut self) {
        self.daemon.terminate();
        if let Some(sim) = self.sim.as_mut() {
            sim.terminate();
        }
        let _ = clickhouse(&format!("DROP DATABASE IF EXISTS {}", self.db)).await;
    }
}

/// Simulated minutes between the first and the last trade of `rows`.
fn simulated_minutes(rows: &[Value]) -> f64 {
    let times = || rows.iter().filter_map(|r| r["tick_time"].as_i64());
    match (times().min(), times().max()) {
        (Some(first), Some(end)) => (end - first) as f64 / 60e9,
        _ => 0.0,
    }
}

fn log_has(dir: &Path, file: &str, needle: &str) -> bool {
    std::fs::read_to_string(dir.join(file)).is_ok_and(|t| t.contains(needle))
}

/// IB ends an `smd` silently after 10 minutes unless it is re-sent. 30 simulated minutes
/// (simulator at 30× speed, connector intervals scaled to match): every symbol still streams
/// at the end, and none was ever flagged silent.
#[tokio::test(flavor = "multi_thread")]
async fn thirty_simulated_minutes_without_a_silent_symbol() {
    let gw = free_port();
    let lane = Lane::start(
        Some(&["--speed", "30", "--subscription-expiry-secs", "600"]),
        gw,
        |c| {
            c.ib("tickle_interval", 2.0)
                .ib("resubscribe_interval", 16.0)
                .ib("heartbeat_timeout", 2.0)
                .ib("tic_interval", 1.6)
                .ib("silent_after", 4.0)
        },
    );
    lane.wait_for_rows(10).await;
    // 29 simulated minutes take 58 s at 30×, then longer on a loaded machine: poll for them.
    tokio::time::sleep(Duration::from_secs(55)).await;
    eventually(Duration::from_secs(65), || async {
        simulated_minutes(&lane.rows()) >= 29.0
    })
    .await;
    let rows = lane.rows();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for r in &rows {
        let sym = r["symbol_identifier"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let t = r["tick_time"].as_i64().unwrap_or_default();
        let e = last.entry(sym).or_insert(t);
        *e = (*e).max(t);
    }
    let end = last.values().copied().max().unwrap_or_default();
    let span_min = simulated_minutes(&rows);
    println!(
        "simulated span {span_min:.1} min, rows {}, last trade per symbol: {last:?}",
        rows.len()
    );
    assert!(
        span_min >= 29.0,
        "only {span_min:.1} simulated minutes streamed"
    );
    assert_eq!(last.len(), 5, "symbols that streamed: {last:?}");
    for (sym, t) in &last {
        // Within the last two simulated minutes of the run (4 s of real time).
        assert!(
            end - t < 120_000_000_000,
            "{sym} went silent {} s (sim) before the end",
            (end - t) / 1_000_000_000
        );
    }
    assert_eq!(lane.metric("marketlane_silent_symbols").await, 0.0);
    lane.finish().await;
}

/// A TCP drop without a close frame: the daemon reconnects, re-subscribes, and every trade the
/// simulator sent is a row exactly once (no phantom trade from the new snapshot).
#[tokio::test(flavor = "multi_thread")]
async fn tcp_drop_reconnects_and_resubscribes() {
    let lane = Lane::start(Some(&[]), free_port(), |c| c);
    lane.wait_for_rows(10).await;
    lane.fault(json!({"kind": "drop_tcp"})).await;
    let resumed = lane
        .recovered(
            "marketlane_ws_reconnects_total{reason=\"socket_closed\"}",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    println!("tcp drop: data resumed after {resumed:.2} s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // One ledger snapshot: re-read in the loop, the live ledger would chase the new trades.
    let sent = lane.ledger_row_ids().await;
    let ok = eventually(Duration::from_secs(20), || async {
        sent.is_subset(&lane.row_ids())
    })
    .await;
    // The simulator keeps trading: read Kafka before the ledger, so that every row read was
    // sent before the ledger snapshot.
    let rows = lane.row_ids();
    let ledger = lane.ledger_row_ids().await;
    assert!(
        ok,
        "{} ledger trades missing from Kafka",
        sent.difference(&rows).count()
    );
    assert!(
        rows.is_subset(&ledger),
        "{} rows are not simulator trades",
        rows.difference(&ledger).count()
    );
    lane.finish().await;
}

/// Heartbeats stop while the socket stays open: the watchdog notices and reconnects.
#[tokio::test(flavor = "multi_thread")]
async fn silent_open_socket_is_detected_by_the_heartbeat_watchdog() {
    let lane = Lane::start(Some(&[]), free_port(), |c| c.ib("heartbeat_timeout", 3.0));
    lane.wait_for_rows(5).await;
    lane.fault(json!({"kind": "stop_heartbeats"})).await;
    let resumed = lane
        .recovered(
            "marketlane_ws_reconnects_total{reason=\"heartbeat_timeout\"}",
            1.0,
            Duration::from_secs(40),
        )
        .await;
    println!("stopped heartbeats: data resumed after {resumed:.2} s (watchdog 3 s)");
    lane.finish().await;
}

/// `sts authenticated:false`: the session re-authenticates and the stream resumes in the
/// same process. (`reauth_min_interval` 2 s: the fault comes seconds after the start-up
/// `ssodh/init`, which the default 60 s would make the re-authentication wait for.)
#[tokio::test(flavor = "multi_thread")]
async fn lost_authentication_is_recovered_without_a_restart() {
    let lane = Lane::start(Some(&[]), free_port(), |c| c.ib("reauth_min_interval", 2.0));
    lane.wait_for_rows(5).await;
    let pid = lane.daemon.0.id();
    lane.fault(json!({"kind": "sts_unauthenticated"})).await;
    let resumed = lane
        .recovered(
            "marketlane_ib_requests_total{endpoint=\"/iserver/reauthenticate\",outcome=\"ok\"}",
            1.0,
            Duration::from_secs(40),
        )
        .await;
    println!("sts authenticated:false: data resumed after {resumed:.2} s");
    assert_eq!(lane.daemon.0.id(), pid);
    lane.finish().await;
}

/// A 429 puts the session in the penalty box; it waits it out and recovers.
#[tokio::test(flavor = "multi_thread")]
async fn penalty_box_is_waited_out() {
    let lane = Lane::start(Some(&[]), free_port(), |c| {
        c.ib("tickle_interval", 1.0).ib("penalty_box", 4.0)
    });
    lane.wait_for_rows(5).await;
    lane.fault(json!({"kind": "penalty_box", "seconds": 3.0}))
        .await;
    let boxed = eventually(Duration::from_secs(15), || async {
        lane.metric("marketlane_ib_session_state{state=\"penalty_box\"}")
            .await
            == 1.0
    })
    .await;
    assert!(boxed, "the session never saw the 429");
    let t0 = Instant::now();
    let back = eventually(Duration::from_secs(30), || async {
        lane.metric("marketlane_ib_session_state{state=\"authenticated\"}")
            .await
            == 1.0
    })
    .await;
    println!(
        "penalty box: authenticated again {:.1} s after the 429 was seen",
        t0.elapsed().as_secs_f64()
    );
    assert!(back);
    assert!(
        lane.metric("marketlane_ib_requests_total{endpoint=\"/tickle\",outcome=\"rate_limited\"}")
            .await
            >= 1.0
    );
    lane.finish().await;
}

/// A competing login: the state says so and the daemon does not re-authenticate in a loop.
#[tokio::test(flavor = "multi_thread")]
async fn competing_session_is_reported_not_fought() {
    let lane = Lane::start(Some(&[]), free_port(), |c| c.ib("tickle_interval", 1.0));
    lane.wait_for_rows(3).await;
    lane.fault(json!({"kind": "competing"})).await;
    let seen = eventually(Duration::from_secs(20), || async {
        lane.metric("marketlane_ib_session_state{state=\"competing\"}")
            .await
            == 1.0
    })
    .await;
    assert!(seen, "competing state not reported");
    let reauths = lane
        .metric("marketlane_ib_requests_total{endpoint=\"/iserver/reauthenticate\",outcome=\"ok\"}")
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        lane.metric(
            "marketlane_ib_requests_total{endpoint=\"/iserver/reauthenticate\",outcome=\"ok\"}"
        )
        .await,
        reauths,
        "re-authenticated against a competing session"
    );
    assert_eq!(
        lane.metric("marketlane_ib_session_state{state=\"competing\"}")
            .await,
        1.0
    );
    lane.finish().await;
}

/// Halted (`H`) and prior-close (`C`) last prices are not trades: with many of them, the rows
/// are still exactly the simulator's trades.
#[tokio::test(flavor = "multi_thread")]
async fn halted_and_prior_close_prices_are_not_trades() {
    let lane = Lane::start(Some(&["--status-probability", "0.3"]), free_port(), |c| c);
    lane.wait_for_rows(20).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    lane.fault(json!({"kind": "stop_heartbeats"})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ledger = lane.ledger_row_ids().await;
    let ok = eventually(Duration::from_secs(20), || async {
        ledger.is_subset(&lane.row_ids())
    })
    .await;
    let rows = lane.row_ids();
    assert!(ok, "{} trades missing", ledger.difference(&rows).count());
    // Rows after the freeze may exist only if the watchdog reconnected; compare on the ledger.
    let extra: Vec<_> = rows
        .difference(&lane.ledger_row_ids().await)
        .cloned()
        .collect();
    assert!(
        extra.is_empty(),
        "{} rows that are not trades (halted or closing prices?)",
        extra.len()
    );
    lane.finish().await;
}

/// The daemon starts the gateway itself, runs the login command when there is no brokerage
/// session, and restarts the gateway when it dies.
#[tokio::test(flavor = "multi_thread")]
async fn supervised_gateway_and_login_hook() {
    let gw = free_port();
    let bin = marketlane_sim_bin();
    let listen = format!("127.0.0.1:{gw}");
    let gateway = [
        &bin.display().to_string(),
        "--listen",
        &listen,
        "--auto-login",
        "false",
        "--seed",
        "5",
    ]
    .map(String::from);
    let login = [
        "curl",
        "-sf",
        "-X",
        "POST",
        &format!("http://{listen}/sim/login"),
    ]
    .map(String::from);
    let lane = Lane::start(None, gw, |c| {
        c.ib("login_retry", 1.0)
            .ib("gateway_command", gateway.to_vec())
            .ib("login_command", login.to_vec())
    });
    lane.wait_for_rows(3).await;
    let logins = "marketlane_ib_login_attempts_total{outcome=\"ok\"}";
    assert!(
        lane.noticed(logins, 1.0, Duration::from_secs(20))
            .await
            .is_some(),
        "no login counted"
    );
    // Kill the gateway process behind the daemon's back.
    let killed = std::process::Command::new("pkill")
        .args(["-9", "-f", &format!("sim --listen 127.0.0.1:{gw}")])
        .status()
        .unwrap();
    assert!(killed.success(), "no gateway process to kill");
    // Rows still in the daemon's socket buffer are read after the kill: count from the login.
    let resumed = lane.recovered(logins, 2.0, Duration::from_secs(60)).await;
    println!("gateway killed: data resumed after {resumed:.2} s (restart, login, subscribe)");
    assert!(log_has(
        lane.dir.path(),
        "daemon.log",
        "gateway exited; restarting"
    ));
    lane.finish().await;
}

/// `--record` keeps every frame; `marketlane replay` turns the recording into the same trade
/// rows the daemon produced.
#[tokio::test(flavor = "multi_thread")]
async fn recorded_frames_replay_to_the_same_rows() {
    let gw = free_port();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("frames.jsonl");
    let lane = Lane::start(Some(&[]), gw, |c| {
        c.ib("record_path", record.display().to_string())
    });
    lane.wait_for_rows(15).await;
    lane.fault(json!({"kind": "malformed_frame"})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lane = lane;
    lane.daemon.terminate();
    let live = lane.row_ids();
    let out = output_within(
        std::process::Command::new(marketlane_bin())
            .current_dir(workspace_root())
            .args([
                "replay",
                record.to_str().unwrap(),
                "--instrument",
                "265598=AAPL",
                "--instrument",
                "13977=XOM",
                "--instrument",
                "5932=CVX",
            ]),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut replayed = BTreeSet::new();
    let mut quarantined = BTreeSet::new();
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["category"] == TICK && v.get("row").is_some() {
            replayed.insert(v["row"]["row_id"].as_str().unwrap().to_string());
        }
        if let Some(q) = v.get("quarantined") {
            quarantined.insert(q["reason_code"].as_str().unwrap_or_default().to_string());
        }
    }
    // The stocks' trades (futures were not given to replay) are the same rows, by id.
    let live_stocks: BTreeSet<String> = lane
        .rows()
        .iter()
        .filter(|r| r["symbol_type"] == "stocks")
        .filter_map(|r| r["row_id"].as_str().map(String::from))
        .collect();
    assert!(!live_stocks.is_empty() && live.len() >= live_stocks.len());
    assert_eq!(replayed, live_stocks);
    assert!(quarantined.contains("not_json"), "{quarantined:?}");
    assert!(
        quarantined.contains("unknown_conid"),
        "futures frames without --instrument: {quarantined:?}"
    );
    lane.finish().await;
}

/// The ~01:00 reset drops the brokerage bridge: the session initializes it again and the
/// stream goes on in the same process (`reauth_min_interval` 2 s: see above).
#[tokio::test(flavor = "multi_thread")]
async fn nightly_reset_is_recovered() {
    let lane = Lane::start(Some(&[]), free_port(), |c| {
        c.ib("tickle_interval", 1.0).ib("reauth_min_interval", 2.0)
    });
    lane.wait_for_rows(5).await;
    let inits =
        "marketlane_ib_requests_total{endpoint=\"/iserver/auth/ssodh/init\",outcome=\"ok\"}";
    let before = lane.metric(inits).await;
    lane.fault(json!({"kind": "nightly_reset"})).await;
    let t0 = marketlane_protocol::now_ns();
    let reinit = eventually(Duration::from_secs(30), || async {
        lane.metric(inits).await > before
    })
    .await;
    assert!(reinit, "the bridge was not initialized again");
    let resumed = lane
        .resumed_after(t0, marketlane_protocol::now_ns(), Duration::from_secs(30))
        .await;
    println!("nightly reset: rows after {resumed:?} s");
    assert!(resumed.is_some());
    lane.finish().await;
}

/// IB ends a session after 24 hours (here after 15 s): a new session id, the old sockets
/// closed. The daemon picks up the new session and streams again.
#[tokio::test(flavor = "multi_thread")]
async fn session_expiry_after_its_maximum_age_is_recovered() {
    let lane = Lane::start(Some(&["--max-session-secs", "15"]), free_port(), |c| {
        c.ib("tickle_interval", 1.0)
    });
    lane.wait_for_rows(3).await;
    let started = Instant::now();
    let expired = eventually(Duration::from_secs(40), || async {
        lane.metric("marketlane_ws_reconnects_total{reason=\"socket_closed\"}")
            .await
            >= 1.0
    })
    .await;
    assert!(expired, "the session never expired");
    let t0 = marketlane_protocol::now_ns();
    let resumed = lane.resumed_after(t0, t0, Duration::from_secs(30)).await;
    println!(
        "session max age: expired after {:.1} s, rows again {resumed:?} s later",
        started.elapsed().as_secs_f64()
    );
    assert!(resumed.is_some());
    lane.finish().await;
}

/// A symbol that never streams (here: over the gateway's market-data line cap) is flagged
/// silent, and an unknown symbol is a clear error that names it; the others stream on.
#[tokio::test(flavor = "multi_thread")]
async fn silent_and_unknown_symbols_are_reported() {
    let lane = Lane::start(Some(&["--line-cap", "4"]), free_port(), |mut c| {
        c.symbols.insert(0, stock("NOPE"));
        c.ib("silent_after", 3.0)
    });
    lane.wait_for_rows(5).await;
    let flagged = eventually(Duration::from_secs(30), || async {
        lane.metric("marketlane_silent_symbols").await >= 1.0
    })
    .await;
    assert!(
        flagged,
        "the symbol over the line cap was not flagged silent"
    );
    assert!(
        log_has(lane.dir.path(), "daemon.log", "cannot resolve symbol")
            && log_has(lane.dir.path(), "daemon.log", "NOPE"),
        "no error naming the unknown symbol"
    );
    let symbols: BTreeSet<String> = lane
        .rows()
        .iter()
        .filter_map(|r| r["symbol_identifier"].as_str().map(String::from))
        .collect();
    assert!(symbols.len() >= 3, "streaming symbols: {symbols:?}");
    assert!(!symbols.contains("NOPE"));
    lane.finish().await;
}
