//! Probes and logs of a live daemon: `/livez` and `/readyz` follow the pod's role (a connector
//! is ready only with an authenticated IB session), and no configured secret reaches the logs,
//! whether the daemon runs, changes its log level, or fails on a wrong password.

use std::time::Duration;

use marketlane_tests::config::{DaemonConfig, stock};
use marketlane_tests::daemon::wait_readyz;
use marketlane_tests::{Proc, eventually, free_port, output_within, unique, workspace_root};

const CH_SECRET: &str = "ch-Secr3t-7f3a9c";
const COOKIE_SECRET: &str = "cluster-c00kie-51d2";

async fn get(url: String) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_follow_the_role_and_no_secret_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (gw, http) = (free_port(), free_port());
    let mut sim = Proc::spawn(
        &["sim", "--listen", &format!("127.0.0.1:{gw}"), "--seed", "9"],
        &dir.path().join("sim.log"),
    )
    .unwrap();
    let prefix = format!("{}_", unique("t_"));
    // A connector-only pod, debug logs as JSON, with a ClickHouse password in the file (and no
    // database, drain deadline or writer settings: the daemon's defaults).
    let mut c = DaemonConfig::new(&format!("http://127.0.0.1:{gw}"), dir.path())
        .without(&[
            "drain_deadline_secs",
            "clickhouse.url",
            "clickhouse.database",
            "writer",
        ])
        .with_toml("log.level", "debug")
        .with_toml("log.json", true)
        // Tickle often so that the loss of the gateway shows within seconds.
        .ib("tickle_interval", 2)
        .with_toml("clickhouse.password", CH_SECRET);
    c.instance = "ops-0".into();
    c.roles = vec!["connector".into()];
    c.http_port = http;
    c.control_socket = dir.path().join("control.sock");
    c.symbols = vec![stock("XOM")];
    c.kafka_prefix = prefix.clone();
    let config = c.write(&dir.path().join("config.toml"));
    let log_path = dir.path().join("daemon.log");
    let mut daemon =
        Proc::spawn(&["run", "--config", config.to_str().unwrap()], &log_path).unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let base = format!("http://127.0.0.1:{http}");
    assert!(
        eventually(Duration::from_secs(30), || async {
            get(format!("{base}/livez")).await.0 == 200
        })
        .await,
        "livez: {}",
        log()
    );
    let http_addr = c.http_addr();
    let ready = wait_readyz(&http_addr, Duration::from_secs(60), |r| r.status == 200).await;
    assert!(ready.is_ok(), "never ready: {ready:?} {}", log());
    // More logging at trace level for a moment, then back.
    let ctl = |args: &[&str]| {
        output_within(
            std::process::Command::new(marketlane_tests::marketlane_bin())
                .args([
                    "ctl",
                    "--socket",
                    dir.path().join("control.sock").to_str().unwrap(),
                ])
                .args(args),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    assert!(ctl(&["log-level", "trace"]).status.success());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(ctl(&["log-level", "debug"]).status.success());

    // The gateway goes away: the connector is not ready and says why; it stays alive.
    sim.terminate();
    let unready = wait_readyz(&http_addr, Duration::from_secs(30), |r| {
        r.status == 503 && r.body.contains("ib session")
    })
    .await;
    assert!(
        unready.is_ok(),
        "still ready without a gateway: {unready:?}"
    );
    assert_eq!(get(format!("{base}/livez")).await.0, 200);
    daemon.terminate();
    let text = log();
    assert!(
        text.contains(r#"\"password\":\"[redacted]\""#) || text.contains("[redacted]"),
        "config not logged: {text}"
    );
    assert!(!text.contains(CH_SECRET), "secret in the log");

    // A writer with a wrong ClickHouse password (from the environment) and a cluster cookie:
    // it fails to start, saying why, without echoing either.
    let fail_log = dir.path().join("fail.log");
    let out = output_within(
        std::process::Command::new(marketlane_tests::marketlane_bin())
            .args(["run", "--config", config.to_str().unwrap()])
            .env("MARKETLANE__ROLES", "[\"writer\"]")
            .env("MARKETLANE__CLICKHOUSE__PASSWORD", CH_SECRET)
            .env("MARKETLANE__CONTROL__ENABLED", "false")
            .env("MARKETLANE_CLUSTER_COOKIE", COOKIE_SECRET)
            .current_dir(workspace_root()),
        Duration::from_secs(120),
    )
    .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&fail_log, &all).unwrap();
    assert!(
        !out.status.success(),
        "started with a wrong password: {all}"
    );
    assert!(all.to_lowercase().contains("clickhouse"), "{all}");
    for secret in [CH_SECRET, COOKIE_SECRET] {
        assert!(
            !all.contains(secret),
            "secret {secret} in the output: {all}"
        );
    }
    // Credentials in a URL are refused before anything could log them.
    let out = output_within(
        std::process::Command::new(marketlane_tests::marketlane_bin())
            .args(["run", "--config", config.to_str().unwrap()])
            .env(
                "MARKETLANE__CLICKHOUSE__URL",
                format!("http://writer:{CH_SECRET}@127.0.0.1:8123"),
            )
            .current_dir(workspace_root()),
        Duration::from_secs(120),
    )
    .unwrap();
    let all = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(all.contains("clickhouse.url"), "{all}");
    assert!(!all.contains(CH_SECRET), "{all}");
}
