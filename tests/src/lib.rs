//! Helpers of the integration tests. The tests run against the real local stack that
//! `scripts/stack up` starts (Kafka, ClickHouse, Redis on loopback) and the `marketlane`
//! binary; every test uses its own topic prefix and ClickHouse database.

pub mod clickhouse;
pub mod config;
pub mod daemon;
pub mod harness;
pub mod kafka;
pub mod lane;
pub mod netns;
pub mod process;
pub mod reconcile;
pub mod redis;
pub mod sim;
pub mod stack;

// The names tests have always imported from the crate root; the lane helpers are under
// `harness`.
pub use clickhouse::{clickhouse, clickhouse_url};
pub use kafka::{kafka_bootstrap, kafka_payloads};
pub use process::{Proc, output_within, run_marketlane};
pub use sim::{ledger_row_id, ledger_row_ids, ledger_trades};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The daemon binary: `MARKETLANE_BIN` (set by `make test`) or the debug build.
pub fn marketlane_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MARKETLANE_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    target.join("debug/marketlane")
}

/// The simulator binary: `MARKETLANE_SIM_BIN`, or `marketlane-sim` beside [`marketlane_bin`]
/// (`cargo build --bin marketlane --bin marketlane-sim` puts both in one directory).
pub fn marketlane_sim_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MARKETLANE_SIM_BIN") {
        return PathBuf::from(p);
    }
    marketlane_bin().with_file_name("marketlane-sim")
}

/// The binary and arguments of a command line as the suite writes it: `["sim", FLAGS..]` is
/// the simulator (`marketlane-sim FLAGS..`), anything else the daemon (`marketlane ARGS..`).
/// Tests keep spelling the simulator as the `sim` command they have always used.
pub fn command_line<'a>(args: &'a [&'a str]) -> (PathBuf, &'a [&'a str]) {
    match args.split_first() {
        Some((&"sim", rest)) => (marketlane_sim_bin(), rest),
        _ => (marketlane_bin(), args),
    }
}

/// A name unique to this test run: `prefix` + process id + time.
pub fn unique(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{prefix}{}_{}", std::process::id(), t % 1_000_000_000)
}

/// A loopback port for a process the test starts to listen on (see
/// [`marketlane_actors::loopback::listen_port`]).
pub fn free_port() -> u16 {
    marketlane_actors::loopback::listen_port().expect("a free loopback port")
}

/// `var/test-runs/<prefix><unique>`: logs, configs and ledgers, kept for a look after a failure.
pub fn run_dir(prefix: &str) -> PathBuf {
    let dir = workspace_root().join("var/test-runs").join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("create the run directory");
    dir
}

/// Waits until `check` returns true or the timeout passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}
