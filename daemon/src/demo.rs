//! `marketlane demo`: the whole lane end to end against the simulator. It starts the simulator
//! (`marketlane-sim`, found beside this executable) and the daemon (this binary) as child
//! processes, prints one status line per second with
//! rows/s per stage and the consumer lag, stops the simulator, waits for the lane to catch up,
//! and prints the reconciliation `emitted=N kafka=N clickhouse=N lost=0 duplicates=0`.
//!
//! The daemon also runs the calculator role with a small spec set (team `demo`: a 60 s VWAP of
//! the trades and the level-1 mid of every symbol), so the demo shows the lane's second sink:
//! a few live values from Redis every five seconds, and at the end `redis_keys=N
//! redis_check=ok|failed` on the reconciliation line, where the check recomputes every VWAP in
//! Redis from the ClickHouse tick rows of its window (and wants its `as_of` to be the symbol's
//! last stored trade).
//!
//! `--kill-daemon-at SECS` SIGKILLs the daemon mid-run and starts it again: the trades of the
//! outage (from five seconds before the kill until the new daemon streams again) are what the
//! seed accepts to lose; they are reported apart and left out of the counted line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use marketlane_actors::calculator::redis::RedisReader;
use marketlane_actors::clickhouse_writer::ClickHouse;
use marketlane_protocol::category::TICK;

use crate::config::Config;
use crate::reconcile::{self, Reconciliation};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long the simulator streams.
    #[arg(long, env = "DEMO_SECONDS", default_value_t = 60)]
    pub seconds: u64,
    /// Where the run keeps its config, ledger and logs.
    #[arg(long, default_value = "var/demo")]
    pub dir: PathBuf,
    /// The schema directory.
    #[arg(long, default_value = "schemas")]
    pub schemas_dir: PathBuf,
    /// Kafka bootstrap servers of the local stack.
    #[arg(long, env = "ML_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka: String,
    /// ClickHouse HTTP URL of the local stack.
    #[arg(
        long,
        env = "ML_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse: String,
    /// ClickHouse database (analysts query it).
    #[arg(long, default_value = "marketlane")]
    pub database: String,
    /// Prefix of the Kafka topics (tests give each run its own).
    #[arg(long, default_value = "")]
    pub topic_prefix: String,
    /// SIGKILL the daemon after this many seconds and start it again.
    #[arg(long)]
    pub kill_daemon_at: Option<u64>,
    /// Simulator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// How long to wait for the lane to catch up after the simulator stops.
    #[arg(long, default_value_t = 60)]
    pub settle_seconds: u64,
    /// Redis of the local stack (default: 127.0.0.1 on `ML_REDIS_PORT`, else 6379); the
    /// calculators write as its `default` user unless `MARKETLANE__CALCULATORS__REDIS__*`
    /// say otherwise.
    #[arg(long, env = "ML_REDIS_URL")]
    pub redis: Option<String>,
}

/// The demo's indicator team and its specs.
const TEAM: &str = "demo";
const VWAP: &str = "vwap_60s";
const VWAP_WINDOW_SECS: i64 = 60;
const MID: &str = "mid";

/// What a demo run ends with; the demo succeeds only if both hold.
pub struct DemoOutcome {
    pub reconciliation: Reconciliation,
    pub redis: RedisCheck,
}

impl DemoOutcome {
    pub fn ok(&self) -> bool {
        let r = &self.reconciliation;
        r.lost == 0
            && r.duplicates == 0
            && r.emitted > 0
            && r.clickhouse == r.emitted as u64
            && self.redis.ok()
    }
}

/// The Redis side of the final line: every VWAP in Redis against its recomputation.
#[derive(Debug, Default)]
pub struct RedisCheck {
    pub keys: usize,
    /// Symbols with trades in ClickHouse (each needs a current, right VWAP).
    pub symbols: usize,
    pub matching: usize,
    /// Why a symbol did not match (empty when all did).
    pub problems: Vec<String>,
}

impl RedisCheck {
    pub fn ok(&self) -> bool {
        self.symbols > 0 && self.matching == self.symbols && self.problems.is_empty()
    }
}

impl std::fmt::Display for RedisCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "redis_keys={} redis_check={}",
            self.keys,
            if self.ok() { "ok" } else { "failed" }
        )
    }
}

/// How far before a SIGKILL the outage window starts (see `--kill-daemon-at`).
const KILL_MARGIN_MS: i64 = 5_000;

const STOCKS: &[&str] = &[
    "AAPL", "XOM", "CVX", "COP", "OXY", "SLB", "USO", "XLE", "GLD",
];
const FUTURES: &[(&str, &str)] = &[
    ("CL", "NYMEX"),
    ("NG", "NYMEX"),
    ("RB", "NYMEX"),
    ("GC", "COMEX"),
    ("HG", "COMEX"),
    ("ZC", "CBOT"),
];

fn free_port() -> anyhow::Result<u16> {
    Ok(marketlane_actors::loopback::listen_port()?)
}

/// Where `marketlane-sim` is expected: beside this executable (cargo builds both into the
/// same directory; the production image ships without it).
pub fn sim_bin_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the marketlane executable")?;
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    Ok(dir.join("marketlane-sim"))
}

/// `marketlane-sim` beside this executable, or an error that says how to build it.
fn sim_bin() -> anyhow::Result<PathBuf> {
    let sim = sim_bin_path()?;
    if !sim.is_file() {
        bail!(
            "the demo needs the simulator binary {} (build both with `cargo build --bin marketlane --bin marketlane-sim`, or run `make demo`)",
            sim.display()
        );
    }
    Ok(sim)
}

struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, args: &[String], log: &Path) -> anyhow::Result<Self> {
        Self::spawn_exe(name, &std::env::current_exe()?, args, log)
    }

    fn spawn_exe(
        name: &'static str,
        exe: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(exe)
            .args(args)
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        Ok(Self { name, child })
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status();
    }

    fn stop(&mut self, grace: Duration) {
        self.signal("TERM");
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sums of the daemon metrics the status line shows.
#[derive(Debug, Default, Clone)]
struct Counters {
    frames: f64,
    normalized: f64,
    kafka: f64,
    clickhouse: f64,
    quarantined: f64,
    lag: f64,
    connected: bool,
}

fn scrape(port: u16) -> Option<Counters> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let mut c = Counters::default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        let metric = name.split('{').next().unwrap_or(name);
        match metric {
            "marketlane_ws_frames_total" if name.contains("topic=\"smd\"") => c.frames += v,
            "marketlane_rows_normalized_total" => c.normalized += v,
            "marketlane_kafka_produced_total" if !name.contains("_unqualified") => c.kafka += v,
            "marketlane_clickhouse_rows_inserted_total" => c.clickhouse += v,
            "marketlane_rows_quarantined_total" => c.quarantined += v,
            "marketlane_consumer_lag" => c.lag += v,
            "marketlane_ws_connected" => c.connected = v > 0.0,
            _ => {}
        }
    }
    Some(c)
}

fn write_config(
    args: &DemoArgs,
    dir: &Path,
    run: &str,
    gateway_port: u16,
    http_port: u16,
) -> anyhow::Result<PathBuf> {
    let mut symbols = String::new();
    for s in STOCKS {
        symbols.push_str(&format!(
            "[[ib.symbols]]\nsymbol = \"{s}\"\nsec_type = \"stock\"\n\n"
        ));
    }
    for (root, exch) in FUTURES {
        symbols.push_str(&format!(
            "[[ib.symbols]]\nsymbol = \"{root}\"\nsec_type = \"future\"\nexchange = \"{exch}\"\n\n"
        ));
    }
    let text = format!(
        r#"# Written by `marketlane demo`.
instance = "marketlane-demo-0"
schemas_dir = "{schemas}"
roles = ["connector", "writer", "calculator"]

[http]
listen = "127.0.0.1:{http_port}"

[ib]
gateway_url = "http://127.0.0.1:{gateway_port}"

[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"

[clickhouse]
url = "{ch}"
database = "{db}"

[writer]
batch_max_age = 0.5

[econ]
url = "http://127.0.0.1:{gateway_port}/econ/releases"
poll_interval = 2.0

# The calculator role: one team, a VWAP of the trades and the mid of the book, every symbol.
[calculators]
group_id = "{key_prefix}-calculators"
coalesce_interval = 0.2
checkpoint_interval = 1.0
key_ttl = 900
warm_restart_lookback = 120

[calculators.redis]
url = "{redis}"
user = "default"
key_prefix = "{key_prefix}"

[[calculators.teams]]
name = "{TEAM}"

[[calculators.teams.specs]]
name = "{VWAP}"
kind = "vwap"
source = "tick_market_data"
symbols = ["*"]
window_secs = {VWAP_WINDOW_SECS}

[[calculators.teams.specs]]
name = "{MID}"
kind = "mid"
source = "l2_market_data"
symbols = ["*"]

{symbols}"#,
        schemas = args.schemas_dir.canonicalize()?.display(),
        kafka = args.kafka,
        prefix = args.topic_prefix,
        ch = args.clickhouse,
        db = args.database,
        redis = redis_url(args),
        key_prefix = key_prefix(args, run),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn redis_url(args: &DemoArgs) -> String {
    args.redis.clone().unwrap_or_else(|| {
        format!(
            "redis://127.0.0.1:{}",
            std::env::var("ML_REDIS_PORT").unwrap_or_else(|_| "6379".into())
        )
    })
}

/// Keys of this run only: `demo-<topic prefix>-<run>` in letters, digits, `_` and `-`.
fn key_prefix(args: &DemoArgs, run: &str) -> String {
    let mut p = format!("demo-{}{run}", args.topic_prefix);
    p.retain(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    p.to_ascii_lowercase()
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<DemoOutcome> {
    // Before anything is created: without the simulator there is no demo.
    let sim_exe = sim_bin()?;
    let run = chrono_free_stamp();
    let dir = args.dir.join(&run);
    std::fs::create_dir_all(&dir)?;
    let gateway_port = free_port()?;
    let http_port = free_port()?;
    let config_path = write_config(&args, &dir, &run, gateway_port, http_port)?;
    let config = Config::load(Some(&config_path), std::iter::empty::<(String, String)>())?;
    let redis = RedisReader::connect(&config.calculators.redis)
        .await
        .with_context(|| format!("cannot reach redis at {}", config.calculators.redis.url))?;
    let ledger = dir.join("ledger.jsonl");
    println!(
        "demo: run {run}: logs, config and ledger in {}",
        dir.display()
    );
    let mut sim = Proc::spawn_exe(
        "simulator",
        &sim_exe,
        &[
            "--listen".into(),
            format!("127.0.0.1:{gateway_port}"),
            "--seed".into(),
            args.seed.to_string(),
            "--ledger".into(),
            ledger.display().to_string(),
        ],
        &dir.join("simulator.log"),
    )?;
    let daemon_args = vec![
        "run".to_string(),
        "--config".into(),
        config_path.display().to_string(),
    ];
    let mut daemon = Proc::spawn("daemon", &daemon_args, &dir.join("daemon.log"))?;
    let started = Instant::now();
    let mut last = Counters::default();
    let mut last_at = Instant::now();
    let mut outage: Option<(i64, Option<i64>)> = None;
    let mut restarts = 0;
    println!(
        "demo: streaming {} symbols for {} s (simulator on :{gateway_port}, metrics on :{http_port})",
        STOCKS.len() + FUTURES.len(),
        args.seconds
    );
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(Some(status)) = daemon.child.try_wait() {
            bail!(
                "the daemon exited with {status}; see {}",
                dir.join("daemon.log").display()
            );
        }
        if let Some(at) = args.kill_daemon_at
            && restarts == 0
            && started.elapsed() >= Duration::from_secs(at)
        {
            println!(
                "demo: SIGKILL the daemon at {} s and start it again",
                started.elapsed().as_secs()
            );
            daemon.signal("KILL");
            let _ = daemon.child.wait();
            // Frames the killed daemon had read but Kafka had not yet acknowledged are part of
            // the outage; on a busy machine that tail can be seconds long.
            outage = Some((now_ms() - KILL_MARGIN_MS, None));
            let log = dir.join("daemon-restarted.log");
            daemon = Proc::spawn("daemon", &daemon_args, &log)?;
            restarts += 1;
            last = Counters::default();
        }
        let Some(c) = scrape(http_port) else {
            println!("t={:>3}s daemon starting", started.elapsed().as_secs());
            continue;
        };
        if let Some((from, None)) = outage
            && c.connected
            && c.frames > 0.0
        {
            outage = Some((from, Some(now_ms() + 1_000)));
        }
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        let rate = |now: f64, before: f64| ((now - before).max(0.0) / dt).round();
        println!(
            "t={:>3}s frames/s={:<5} normalized/s={:<5} kafka/s={:<5} clickhouse/s={:<5} lag={:<5} quarantined={}",
            started.elapsed().as_secs(),
            rate(c.frames, last.frames),
            rate(c.normalized, last.normalized),
            rate(c.kafka, last.kafka),
            rate(c.clickhouse, last.clickhouse),
            c.lag,
            c.quarantined,
        );
        last = c;
        last_at = Instant::now();
        if started.elapsed().as_secs().is_multiple_of(5) {
            print_live_values(&redis).await;
        }
    }
    println!("demo: stopping the simulator (it flushes its ledger)");
    sim.stop(Duration::from_secs(10));
    let exclude = outage.map(|(from, to)| (from, to.unwrap_or_else(now_ms)));
    if let Some((a, b)) = exclude {
        println!(
            "demo: outage window {:.1} s left out of the counts",
            (b - a) as f64 / 1e3
        );
    }
    let deadline = Instant::now() + Duration::from_secs(args.settle_seconds);
    let result = loop {
        let r = reconcile::reconcile(&config, &ledger, exclude).await?;
        // The count and the row ids are two queries: an insert between them can leave the
        // count behind with nothing lost, so wait until the count agrees too.
        let settled = r.lost == 0 && r.duplicates == 0 && r.clickhouse == r.emitted as u64;
        if settled || Instant::now() >= deadline {
            break r;
        }
        println!("demo: waiting for the lane to catch up ({r})");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    // Redis: the calculators have seen every stored trade once each VWAP's as_of is the
    // symbol's last trade; until then (or the deadline) the check is repeated.
    let check = loop {
        let check = redis_check(&config, &redis).await?;
        if check.ok() || Instant::now() >= deadline {
            break check;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    print_live_values(&redis).await;
    for p in check.problems.iter().take(10) {
        println!("redis check: {p}");
    }
    println!("demo: stopping the daemon (SIGTERM, drain)");
    daemon.stop(Duration::from_secs(30));
    if result.excluded > 0 {
        println!(
            "outage: {} trades emitted in the window, {} of them stored anyway (not counted below)",
            result.excluded, result.excluded_stored
        );
    }
    println!(
        "analyst query: clickhouse-client --port 9000 --query \"SELECT symbol_identifier, count() AS trades, argMax(price, tick_time) AS last_price, max(tick_time) AS last_trade FROM {db}.tick_market_data FINAL GROUP BY symbol_identifier ORDER BY symbol_identifier\"",
        db = args.database
    );
    println!(
        "quant read: redis-cli HGETALL {}:{TEAM}:{VWAP}:AAPL",
        config.calculators.redis.key_prefix
    );
    println!("{result} {check}");
    Ok(DemoOutcome {
        reconciliation: result,
        redis: check,
    })
}

/// A few live values: the VWAP and mid of the first three symbols Redis has.
async fn print_live_values(redis: &RedisReader) {
    let Ok(keys) = redis.keys().await else {
        println!("      redis unreachable");
        return;
    };
    let symbols: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.rsplit_once(&format!(":{TEAM}:{VWAP}:")).map(|(_, s)| s))
        .take(3)
        .collect();
    let mut line = format!("      redis keys={}", keys.len());
    for s in symbols {
        let value = |h: &std::collections::HashMap<String, String>| {
            h.get("value")
                .and_then(|v| v.parse::<f64>().ok())
                .map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
        };
        let vwap = redis.value(TEAM, VWAP, s).await.unwrap_or_default();
        let mid = redis.value(TEAM, MID, s).await.unwrap_or_default();
        line.push_str(&format!(
            "  {s} {VWAP}={} {MID}={}",
            value(&vwap),
            value(&mid)
        ));
    }
    println!("{line}");
}

/// Recomputes each symbol's VWAP from the ClickHouse tick rows of the window that ends at the
/// `as_of` Redis holds, and compares (relative 1e-9: the sums run in another order).
async fn redis_check(config: &Config, redis: &RedisReader) -> anyhow::Result<RedisCheck> {
    let ch = ClickHouse::connect(&config.clickhouse).await?;
    let db = &config.clickhouse.database;
    let t = if ch.version.capabilities().datetime64 {
        "toUnixTimestamp64Nano(tick_time)"
    } else {
        "tick_time"
    };
    let mut check = RedisCheck {
        keys: redis.keys().await?.len(),
        ..Default::default()
    };
    let last = ch
        .query_tsv(&format!(
            "SELECT symbol_identifier, max({t}) FROM `{db}`.`{TICK}` FINAL GROUP BY symbol_identifier ORDER BY symbol_identifier"
        ))
        .await?;
    let window = VWAP_WINDOW_SECS * 1_000_000_000;
    for row in last {
        let [symbol, max] = row.as_slice() else {
            continue;
        };
        check.symbols += 1;
        let h = redis.value(TEAM, VWAP, symbol).await?;
        let as_of = h.get("as_of").and_then(|v| v.parse::<i64>().ok());
        let value = h.get("value").and_then(|v| v.parse::<f64>().ok());
        let (Some(as_of), Some(value)) = (as_of, value) else {
            check
                .problems
                .push(format!("{symbol}: no vwap in redis ({h:?})"));
            continue;
        };
        if max.parse::<i64>().ok() != Some(as_of) {
            check.problems.push(format!(
                "{symbol}: redis as_of {as_of}, last stored trade {max}"
            ));
            continue;
        }
        let symbol_sql = symbol.replace(['\\', '\''], "");
        let want = ch
            .query_tsv(&format!(
                "SELECT sum(price * size) / sum(size) FROM `{db}`.`{TICK}` FINAL WHERE symbol_identifier = '{symbol_sql}' AND {t} > {} AND {t} <= {as_of}",
                as_of - window
            ))
            .await?;
        let want: Option<f64> = want
            .first()
            .and_then(|r| r.first())
            .and_then(|v| v.parse().ok());
        match want {
            Some(w) if (w - value).abs() <= 1e-9 * w.abs().max(1.0) => check.matching += 1,
            _ => check.problems.push(format!(
                "{symbol}: redis vwap {value} at {as_of}, clickhouse rows of its window give {want:?}"
            )),
        }
    }
    Ok(check)
}

fn now_ms() -> i64 {
    marketlane_protocol::now_ns() / 1_000_000
}

/// A sortable run name from the wall clock, e.g. `20261125-121314`.
fn chrono_free_stamp() -> String {
    let secs = now_ms() / 1000;
    let day = marketlane_actors::contracts::yyyymmdd(secs);
    let tod = secs.rem_euclid(86_400);
    format!("{day}-{:02}{:02}{:02}", tod / 3600, tod / 60 % 60, tod % 60)
}
