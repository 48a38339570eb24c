//! The IB session against a simulator that behaves like IB where the connector used to hurt:
//! a brokerage session that takes 90 s to come up after `ssodh/init`, a 5-minute maintenance
//! window answering 503, a competing login that ends, the penalty box. Every count of calls
//! is read at the simulator (`/sim/status` → `calls`), not from the connector's own metrics.
//!
//! Time: the simulator runs 10× faster than real time and the connector's session timers are
//! scaled by the same factor (`SCALED`: tickle, auth wait, re-authentication interval, gateway
//! dead time, heartbeat, `smd` refresh), so IB's 90 s and 5 minutes are lived through in 9 s
//! and 30 s with every ratio the product has at its defaults.

use std::path::Path;
use std::time::{Duration, Instant};

use marketlane_tests::harness::{Daemon, DaemonConfig, Sim, SimBuilder, kafka_rows, run_dir};
use marketlane_tests::{eventually, free_port, marketlane_sim_bin};
use serde_json::{Value, json};

/// The connector's defaults divided by the simulator's speed (10): tickle 60 s, auth_wait
/// 120 s, reauth_min_interval 60 s, gateway_dead_after 60 s, heartbeat 20 s (hb every 10 s),
/// tic 50 s, resubscribe 8 min (IB's expiry 10 min).
const SCALED: &[(&str, f64)] = &[
    ("tickle_interval", 6.0),
    ("auth_wait", 12.0),
    ("reauth_min_interval", 6.0),
    ("gateway_dead_after", 6.0),
    // hb comes every second here; 5 missed ones (not 2) so a loaded machine's scheduling
    // jitter is not taken for a dead socket.
    ("heartbeat_timeout", 5.0),
    ("tic_interval", 5.0),
    ("resubscribe_interval", 48.0),
    ("silent_after", 30.0),
];

fn connector(gateway_url: &str, dir: &Path, scaled: bool) -> DaemonConfig {
    let mut c = DaemonConfig::new(gateway_url, dir);
    c.roles = vec!["connector".into()];
    if scaled {
        for (k, v) in SCALED {
            c = c.ib(k, *v);
        }
    }
    c
}

/// `/sim/status` of the gateway at `port`.
async fn sim_status(port: u16) -> Value {
    match reqwest::get(format!("http://127.0.0.1:{port}/sim/status")).await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

fn calls(status: &Value, what: &str) -> u64 {
    status["calls"]["counts"][what].as_u64().unwrap_or(0)
}

async fn fault(port: u16, body: Value) {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/sim/fault"))
        .json(&body)
        .send()
        .await
        .expect("fault request");
    assert!(r.status().is_success(), "fault {body}: {}", r.status());
}

fn tick_topic(c: &DaemonConfig) -> String {
    format!("{}tick_market_data", c.kafka_prefix)
}

/// Tick rows ingested (by the connector) after `after_ns`.
fn rows_after(c: &DaemonConfig, after_ns: i64) -> usize {
    kafka_rows(&tick_topic(c))
        .iter()
        .filter(|r| r["ingestion_time"].as_i64().is_some_and(|t| t > after_ns))
        .count()
}

async fn wait_rows_after(daemon: &Daemon, after_ns: i64, timeout: Duration) {
    let ok = eventually(timeout, || async {
        rows_after(&daemon.config, after_ns) >= 3
    })
    .await;
    assert!(ok, "no rows after the disruption:\n{}", daemon.log());
}

async fn wait_state(daemon: &Daemon, state: &str, timeout: Duration) {
    let series = format!("marketlane_ib_session_state{{state=\"{state}\"}}");
    let ok = eventually(timeout, || async { daemon.metric(&series).await == 1.0 }).await;
    assert!(ok, "the session never was {state}:\n{}", daemon.log());
}

fn assert_never_competed(status: &Value) {
    assert_eq!(
        calls(status, "ssodh_init_compete"),
        0,
        "{}",
        status["calls"]
    );
    assert_eq!(
        calls(status, "reauthenticate_force"),
        0,
        "{}",
        status["calls"]
    );
    let bodies = status["calls"]["ssodh_init_bodies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!bodies.is_empty(), "no ssodh/init body recorded");
    for b in &bodies {
        assert_eq!(b["compete"], false, "ssodh/init body {b}");
        assert_eq!(b["publish"], true, "ssodh/init body {b}");
    }
}

async fn finish(mut daemon: Daemon, mut sim: Option<Sim>) {
    daemon.sigterm(Duration::from_secs(30));
    if let Some(s) = sim.as_mut() {
        s.stop();
    }
    marketlane_tests::harness::drop_lane_data(&daemon.config).await;
}

/// IB starts the brokerage session 30–90 s after `ssodh/init`. Here it takes 90 (simulated)
/// seconds, at start and after the nightly reset: each start costs one call (the first an
/// `ssodh/init`, the reset one `reauthenticate` + `ssodh/init`), never a re-authentication
/// while IB is still starting, and the open websocket is kept (no new upgrade, no reconnect)
/// and streams again once the session is up. Every `ssodh/init` says `compete:false`; every
/// empty POST has a length (the simulator answers 411 otherwise); the websocket handshake
/// sends the gateway's own `x-sess-uuid`, never the tickle session under that name.
#[tokio::test(flavor = "multi_thread")]
async fn a_ninety_second_brokerage_start_costs_at_most_one_reauthenticate_and_keeps_the_websocket()
{
    let dir = run_dir("session90_");
    let sim = SimBuilder::new(31)
        .args(&[
            "--speed",
            "10",
            "--brokerage-delay-secs",
            "90",
            "--require-content-length",
        ])
        .spawn(&dir)
        .expect("simulator");
    let port = sim.port;
    let daemon = Daemon::spawn(connector(&sim.gateway_url(), &dir, true), &dir).expect("daemon");
    let started = Instant::now();
    wait_rows_after(&daemon, 0, Duration::from_secs(90)).await;
    println!(
        "first rows {:.1} s after start (brokerage start: 90 sim s = 9 s)",
        started.elapsed().as_secs_f64()
    );
    let at_start = sim_status(port).await;
    assert_eq!(calls(&at_start, "ssodh_init"), 1, "{}", at_start["calls"]);
    assert_eq!(
        calls(&at_start, "reauthenticate"),
        0,
        "{}",
        at_start["calls"]
    );
    let upgrades = at_start["calls"]["ws_upgrades"].as_u64().unwrap_or(0);
    let reconnects = daemon.metrics().await.sum("marketlane_ws_reconnects_total");

    // The ~01:00 reset: the bridge is gone, and coming back takes another 90 sim seconds.
    fault(port, json!({"kind": "nightly_reset"})).await;
    let t0 = marketlane_protocol::now_ns();
    wait_state(&daemon, "reauthenticating", Duration::from_secs(20)).await;
    wait_state(&daemon, "authenticated", Duration::from_secs(60)).await;
    wait_rows_after(
        &daemon,
        marketlane_protocol::now_ns(),
        Duration::from_secs(60),
    )
    .await;
    println!(
        "nightly reset: rows again {:.1} s later",
        (marketlane_protocol::now_ns() - t0) as f64 / 1e9
    );
    let after = sim_status(port).await;
    println!("simulator calls: {}", after["calls"]);
    let reauths = calls(&after, "reauthenticate") - calls(&at_start, "reauthenticate");
    let inits = calls(&after, "ssodh_init") - calls(&at_start, "ssodh_init");
    assert!(
        reauths <= 1,
        "{reauths} re-authentications for one brokerage start"
    );
    assert!(inits <= 1, "{inits} ssodh/init for one brokerage start");
    assert_eq!(
        after["calls"]["ws_upgrades"].as_u64().unwrap_or(0),
        upgrades,
        "the websocket was opened again"
    );
    assert_eq!(
        daemon.metrics().await.sum("marketlane_ws_reconnects_total"),
        reconnects,
        "the websocket reconnected"
    );
    assert_never_competed(&after);
    assert_eq!(after["calls"]["posts_without_length"], 0);
    assert!(after["calls"]["ws_upgrades_with_gateway_cookie"].as_u64() >= Some(1));
    assert_eq!(after["calls"]["ws_upgrades_with_session_as_sess_uuid"], 0);
    finish(daemon, Some(sim)).await;
}

/// Five (simulated) minutes of 503 from the gateway (IB's servers restarting): the session
/// says `maintenance` and waits. The supervised gateway is not restarted although the window
/// is five times `gateway_dead_after` (its port keeps accepting), the login command never
/// runs, and the stream comes back on the same gateway process.
#[tokio::test(flavor = "multi_thread")]
async fn a_five_minute_503_window_ends_with_the_same_gateway_and_no_login() {
    let dir = run_dir("session503_");
    let gw = free_port();
    let bin = marketlane_sim_bin();
    let mut config = connector(&format!("http://127.0.0.1:{gw}"), &dir, true);
    config = config
        .ib(
            "gateway_command",
            toml::Value::Array(
                [
                    bin.display().to_string().as_str(),
                    "--listen",
                    &format!("127.0.0.1:{gw}"),
                    "--speed",
                    "10",
                    "--seed",
                    "33",
                ]
                .iter()
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
            ),
        )
        .ib(
            "login_command",
            toml::Value::Array(
                [
                    "curl",
                    "-sf",
                    "-X",
                    "POST",
                    &format!("http://127.0.0.1:{gw}/sim/login"),
                ]
                .iter()
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
            ),
        );
    let daemon = Daemon::spawn(config, &dir).expect("daemon");
    wait_rows_after(&daemon, 0, Duration::from_secs(90)).await;
    let before = sim_status(gw).await;
    let tickles_before = calls(&before, "tickle");
    fault(
        gw,
        json!({"kind": "http_5xx", "status": 503, "seconds": 300.0}),
    )
    .await;
    let t0 = Instant::now();
    wait_state(&daemon, "maintenance", Duration::from_secs(20)).await;
    // The window lasts 30 s of real time; look at the gateway process all along.
    let mut states = std::collections::BTreeSet::new();
    while t0.elapsed() < Duration::from_secs(28) {
        let m = daemon.metrics().await;
        for s in [
            "maintenance",
            "gateway_unreachable",
            "needs_login",
            "reauthenticating",
        ] {
            if m.get(&format!("marketlane_ib_session_state{{state=\"{s}\"}}")) == 1.0 {
                states.insert(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let end_ns = marketlane_protocol::now_ns();
    wait_state(&daemon, "authenticated", Duration::from_secs(60)).await;
    wait_rows_after(&daemon, end_ns, Duration::from_secs(60)).await;
    println!(
        "503 window: states seen {states:?}; rows again {:.1} s after it began",
        t0.elapsed().as_secs_f64()
    );
    let after = sim_status(gw).await;
    println!("simulator calls: {}", after["calls"]);
    let log = daemon.log();
    assert_eq!(
        log.matches("gateway started").count(),
        1,
        "the gateway was restarted:\n{log}"
    );
    assert!(!log.contains("restarting the gateway"), "{log}");
    // Counters live in the gateway process: a restarted one would have started over.
    assert!(
        calls(&after, "tickle") > tickles_before,
        "{}",
        after["calls"]
    );
    assert_eq!(
        daemon
            .metrics()
            .await
            .sum("marketlane_ib_login_attempts_total"),
        0.0,
        "the login command ran"
    );
    assert_eq!(calls(&after, "logout"), 0);
    assert!(!states.contains("needs_login"), "{states:?}");
    finish(daemon, None).await;
}

/// Another login of the same user holds the session for 10 s, then logs out. The connector
/// reports `competing`, calls nothing while it lasts, and then takes the session back with a
/// plain re-authentication (`compete:false`, no `force`) on the same websocket.
/// `reauth_min_interval` is 5 s here: with the default 60 s the take-back would wait for a
/// minute after the start-up `ssodh/init`.
#[tokio::test(flavor = "multi_thread")]
async fn a_competing_session_that_ends_is_followed_without_kicking_anybody() {
    let dir = run_dir("sessioncompete_");
    let sim = SimBuilder::new(32).spawn(&dir).expect("simulator");
    let port = sim.port;
    let config = connector(&sim.gateway_url(), &dir, false)
        .ib("tickle_interval", 1.0)
        .ib("reauth_min_interval", 5.0);
    let daemon = Daemon::spawn(config, &dir).expect("daemon");
    wait_rows_after(&daemon, 0, Duration::from_secs(60)).await;
    let before = sim_status(port).await;
    let upgrades = before["calls"]["ws_upgrades"].as_u64().unwrap_or(0);
    fault(port, json!({"kind": "competing", "seconds": 10.0})).await;
    wait_state(&daemon, "competing", Duration::from_secs(10)).await;
    let during = sim_status(port).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = sim_status(port).await;
    assert_eq!(
        (calls(&still, "reauthenticate"), calls(&still, "ssodh_init")),
        (
            calls(&during, "reauthenticate"),
            calls(&during, "ssodh_init")
        ),
        "called the gateway while another session held it"
    );
    let ended_ns = marketlane_protocol::now_ns() + 5_000_000_000;
    wait_state(&daemon, "authenticated", Duration::from_secs(40)).await;
    wait_rows_after(&daemon, ended_ns, Duration::from_secs(40)).await;
    let after = sim_status(port).await;
    println!("simulator calls: {}", after["calls"]);
    assert!(calls(&after, "reauthenticate") > calls(&still, "reauthenticate"));
    assert_never_competed(&after);
    assert_eq!(
        after["calls"]["ws_upgrades"].as_u64().unwrap_or(0),
        upgrades,
        "the websocket was opened again"
    );
    finish(daemon, Some(sim)).await;
}

/// A 429 on `/tickle` (IB's penalty box) concerns REST only: the websocket stays open and
/// keeps streaming while the session waits the box out.
#[tokio::test(flavor = "multi_thread")]
async fn the_penalty_box_does_not_close_the_websocket() {
    let dir = run_dir("sessionpenalty_");
    let sim = SimBuilder::new(34).spawn(&dir).expect("simulator");
    let port = sim.port;
    let config = connector(&sim.gateway_url(), &dir, false)
        .ib("tickle_interval", 1.0)
        .ib("penalty_box", 20.0);
    let daemon = Daemon::spawn(config, &dir).expect("daemon");
    wait_rows_after(&daemon, 0, Duration::from_secs(60)).await;
    let reconnects = daemon.metrics().await.sum("marketlane_ws_reconnects_total");
    fault(port, json!({"kind": "penalty_box", "seconds": 20.0})).await;
    wait_state(&daemon, "penalty_box", Duration::from_secs(10)).await;
    let boxed_ns = marketlane_protocol::now_ns();
    wait_rows_after(&daemon, boxed_ns, Duration::from_secs(10)).await;
    assert_eq!(
        daemon
            .metric("marketlane_ib_session_state{state=\"penalty_box\"}")
            .await,
        1.0,
        "rows must come while the session is still in the box"
    );
    assert_eq!(
        daemon.metrics().await.sum("marketlane_ws_reconnects_total"),
        reconnects,
        "the websocket was closed for a 429 on REST"
    );
    finish(daemon, Some(sim)).await;
}

/// A gateway over TLS with its own certificate: the daemon verifies it against `ib.ca_file`
/// (no `accept_invalid_certs`) for REST and the websocket, and the gateway's `Secure` cookie
/// goes back on the `wss://` handshake.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_certificate_is_verified_with_the_ca_file() {
    let dir = run_dir("sessiontls_");
    let pem = dir.join("gateway.pem");
    let sim = SimBuilder::new(35)
        .args(&["--tls", "--tls-cert-out", pem.to_str().expect("path")])
        .spawn(&dir)
        .expect("simulator");
    let port = sim.port;
    let ok = eventually(Duration::from_secs(20), || async { pem.is_file() }).await;
    assert!(ok, "the simulator wrote no certificate");
    let config = connector(&format!("https://127.0.0.1:{port}"), &dir, false)
        .ib("accept_invalid_certs", false)
        .ib("ca_file", pem.display().to_string());
    let daemon = Daemon::spawn(config, &dir).expect("daemon");
    wait_rows_after(&daemon, 0, Duration::from_secs(60)).await;
    let status: Value = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client")
        .get(format!("https://127.0.0.1:{port}/sim/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    println!("simulator calls: {}", status["calls"]);
    assert!(status["calls"]["ws_upgrades_with_gateway_cookie"].as_u64() >= Some(1));
    assert_eq!(status["calls"]["ws_upgrades_with_session_as_sess_uuid"], 0);
    finish(daemon, Some(sim)).await;
}
