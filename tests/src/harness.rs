//! A reusable lane for fault and cluster tests: a simulator ([`SimBuilder`] → [`Sim`]), one or
//! more daemons ([`DaemonConfig`] → [`Daemon`]), and what the tests ask of them: metrics,
//! control-socket calls, Kafka and ClickHouse rows, the ledger reconciliation and the Redis
//! check. [`Lane`] is the common single-pod shape (one simulator, one daemon); a cluster test
//! builds several [`DaemonConfig`]s on one simulator with [`DaemonConfig::sharing`].
//!
//! Every lane gets its own topic prefix, ClickHouse database, consumer groups and Redis key
//! prefix, and [`Lane::cleanup`] drops them. Logs and configs stay in `var/test-runs/<name>`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fred::prelude::*;
use marketlane_actors::config::{SecType, SymbolConfig};
use marketlane_protocol::category::TICK;
use serde_json::{Value, json};

use crate::{Proc, clickhouse, free_port, kafka_bootstrap, kafka_payloads, unique, workspace_root};

/// Source event times of the simulator are wall-clock milliseconds (speed 1).
pub fn now_ms() -> i64 {
    marketlane_protocol::now_ns() / 1_000_000
}

pub fn redis_url() -> String {
    format!(
        "redis://127.0.0.1:{}",
        std::env::var("ML_REDIS_PORT").unwrap_or_else(|_| "6379".into())
    )
}

/// The steady-load universe: three stocks and a future.
pub fn steady_symbols() -> Vec<SymbolConfig> {
    let stock = |s: &str| SymbolConfig {
        symbol: s.into(),
        sec_type: SecType::Stock,
        exchange: None,
        depth: false,
    };
    vec![
        stock("AAPL"),
        stock("XOM"),
        stock("CVX"),
        SymbolConfig {
            symbol: "CL".into(),
            sec_type: SecType::Future,
            exchange: Some("NYMEX".into()),
            depth: false,
        },
    ]
}

/// `var/test-runs/<prefix><unique>`: logs, configs and ledgers, kept for a look after a failure.
pub fn run_dir(prefix: &str) -> PathBuf {
    let dir = workspace_root().join("var/test-runs").join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("create the run directory");
    dir
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

// ------------------------------------------------------------------------------ simulator ---

/// Flags of `marketlane sim`; the ledger always goes to `<dir>/ledger.jsonl`.
#[derive(Debug, Clone)]
pub struct SimBuilder {
    pub seed: u64,
    pub port: Option<u16>,
    pub username: Option<String>,
    /// More flags, e.g. `--subscription-expiry-secs 10`.
    pub args: Vec<String>,
}

impl SimBuilder {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            port: None,
            username: None,
            args: Vec::new(),
        }
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn username(mut self, username: &str) -> Self {
        self.username = Some(username.into());
        self
    }

    pub fn spawn(self, dir: &Path) -> anyhow::Result<Sim> {
        let port = self.port.unwrap_or_else(free_port);
        let ledger = dir.join("ledger.jsonl");
        let mut args = vec![
            "sim".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--seed".into(),
            self.seed.to_string(),
            "--ledger".into(),
            ledger.display().to_string(),
        ];
        if let Some(u) = &self.username {
            args.extend(["--username".into(), u.clone()]);
        }
        args.extend(self.args.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = dir.join("sim.log");
        let proc = Proc::spawn(&refs, &log)?;
        Ok(Sim {
            port,
            ledger,
            log,
            proc,
        })
    }
}

/// A running simulator.
pub struct Sim {
    pub port: u16,
    pub ledger: PathBuf,
    pub log: PathBuf,
    proc: Proc,
}

/// One trade of the ledger, with the row id the connector must give it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LedgerTrade {
    pub updated_ms: i64,
    pub conid: i64,
    pub symbol: String,
    pub row_id: String,
}

impl Sim {
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `POST /sim/fault` with `body` (see `simulator/src/fault.rs`).
    pub async fn fault(&self, body: Value) -> anyhow::Result<()> {
        self.post("/sim/fault", Some(body)).await.map(|_| ())
    }

    /// POSTs to a simulator path (`/sim/login`, `/v1/api/logout`, …) and returns its JSON.
    pub async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = reqwest::Client::new().post(format!("{}{path}", self.gateway_url()));
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {path} {body:?}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// SIGTERM: the simulator closes its sockets and flushes the ledger file.
    pub fn stop(&mut self) {
        self.proc.terminate();
    }

    /// Every distinct trade of the ledger file (complete after [`Sim::stop`]; while running,
    /// up to the last second's flush).
    pub fn ledger_trades(&self) -> anyhow::Result<Vec<LedgerTrade>> {
        let text = std::fs::read_to_string(&self.ledger)
            .with_context(|| format!("cannot read {}", self.ledger.display()))?;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)?;
            if v["kind"] != "trade" {
                continue;
            }
            let conid = v["conid"].as_i64().unwrap_or_default();
            let updated_ms = v["updated"].as_i64().unwrap_or_default();
            if !seen.insert((conid, updated_ms)) {
                continue;
            }
            out.push(LedgerTrade {
                updated_ms,
                conid,
                symbol: v["symbol"].as_str().unwrap_or_default().to_string(),
                row_id: crate::ledger_row_id(&v),
            });
        }
        out.sort();
        Ok(out)
    }
}

// ------------------------------------------------------------------------- daemon config ---

/// The `[calculators]` section the suite uses: trade count and VWAP over 30 s on every tick
/// symbol, written to the stack's Redis as the `default` user under `key_prefix`.
#[derive(Debug, Clone)]
pub struct Calculators {
    pub key_prefix: String,
    pub group_id: String,
    pub team: String,
    pub window_secs: f64,
}

impl Calculators {
    pub const TRADE_COUNT: &'static str = "trades_30s";
    pub const VWAP: &'static str = "vwap_30s";

    /// Redis key of `indicator` for `symbol`.
    pub fn key(&self, indicator: &str, symbol: &str) -> String {
        format!("{}:{}:{indicator}:{symbol}", self.key_prefix, self.team)
    }

    fn to_toml(&self) -> toml::Value {
        let spec = |name: &str, kind: &str| {
            json!({
                "name": name, "kind": kind, "source": TICK, "symbols": ["*"],
                "window_secs": self.window_secs,
            })
        };
        let v = json!({
            "group_id": self.group_id,
            "coalesce_interval": 0.1,
            "checkpoint_interval": 1.0,
            "key_ttl": 900,
            "warm_restart_lookback": 300,
            "redis": {
                "url": redis_url(), "user": "default", "password": "",
                "key_prefix": self.key_prefix,
            },
            "teams": [{
                "name": self.team,
                "specs": [spec(Self::TRADE_COUNT, "trade_count"), spec(Self::VWAP, "vwap")],
            }],
        });
        toml::Value::try_from(v).expect("calculator config as TOML")
    }
}

/// One daemon's config. [`DaemonConfig::new`] gives fresh names (topic prefix, database,
/// groups, ports, socket); [`DaemonConfig::sharing`] gives a second pod of the same lane.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub instance: String,
    /// `connector`, `writer`, `calculator`.
    pub roles: Vec<String>,
    pub gateway_url: String,
    pub symbols: Vec<SymbolConfig>,
    /// More `[ib]` keys, e.g. `heartbeat_timeout = 3.0`.
    pub ib: toml::Table,
    pub kafka_prefix: String,
    pub database: String,
    pub writer_group: String,
    pub calculators: Option<Calculators>,
    /// Where `/metrics` listens (a pod's own address in a network namespace).
    pub http_host: String,
    pub http_port: u16,
    /// ClickHouse as the daemon reaches it (the bridge address from a network namespace).
    pub clickhouse_url: String,
    pub control_socket: PathBuf,
    pub drain_deadline_secs: u64,
    pub batch_max_age_secs: f64,
    /// Merged over everything else last (e.g. a `[cluster]` section).
    pub extra: toml::Table,
}

impl DaemonConfig {
    /// A connector + writer pod with fresh names; the control socket lives in `dir`.
    pub fn new(gateway_url: &str, dir: &Path) -> Self {
        let id = unique("f");
        Self {
            instance: format!("{id}-0"),
            roles: vec!["connector".into(), "writer".into()],
            gateway_url: gateway_url.into(),
            symbols: steady_symbols(),
            ib: toml::Table::new(),
            kafka_prefix: format!("{id}_"),
            database: id.clone(),
            writer_group: format!("{id}_writer"),
            calculators: None,
            http_host: "127.0.0.1".into(),
            http_port: free_port(),
            clickhouse_url: crate::clickhouse_url(),
            control_socket: dir.join(format!("{id}-0.sock")),
            drain_deadline_secs: 25,
            batch_max_age_secs: 0.3,
            extra: toml::Table::new(),
        }
    }

    /// Another pod of the same lane (same topics, database, groups, Redis prefix), with its
    /// own instance name, ports and socket.
    pub fn sharing(&self, instance: &str, dir: &Path) -> Self {
        let mut c = self.clone();
        c.instance = instance.into();
        c.http_port = free_port();
        c.control_socket = dir.join(format!("{instance}.sock"));
        c
    }

    /// Adds the `calculator` role with the suite's specs.
    pub fn with_calculators(mut self) -> Self {
        if !self.roles.iter().any(|r| r == "calculator") {
            self.roles.push("calculator".into());
        }
        self.calculators = Some(Calculators {
            key_prefix: self.database.replace('_', "-"),
            group_id: format!("{}_calc", self.database),
            team: "faults".into(),
            window_secs: 30.0,
        });
        self
    }

    /// Sets an `[ib]` key (numbers, strings, booleans).
    pub fn ib(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.ib.insert(key.into(), value.into());
        self
    }

    /// Merges a TOML fragment over the generated config.
    pub fn extra(mut self, fragment: &str) -> Self {
        let t: toml::Table = toml::from_str(fragment).expect("extra config is valid TOML");
        merge(&mut self.extra, t);
        self
    }

    pub fn to_toml(&self) -> String {
        let mut ib = toml::Table::new();
        ib.insert("gateway_url".into(), self.gateway_url.clone().into());
        ib.insert(
            "symbols".into(),
            toml::Value::try_from(&self.symbols).expect("symbols as TOML"),
        );
        merge(&mut ib, self.ib.clone());
        let mut root = toml::Table::new();
        root.insert("instance".into(), self.instance.clone().into());
        root.insert(
            "schemas_dir".into(),
            workspace_root()
                .join("schemas")
                .display()
                .to_string()
                .into(),
        );
        root.insert(
            "roles".into(),
            toml::Value::Array(self.roles.iter().map(|r| r.clone().into()).collect()),
        );
        root.insert(
            "drain_deadline_secs".into(),
            (self.drain_deadline_secs as i64).into(),
        );
        let table = |pairs: Vec<(&str, toml::Value)>| {
            toml::Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        };
        root.insert(
            "http".into(),
            table(vec![(
                "listen",
                format!("{}:{}", self.http_host, self.http_port).into(),
            )]),
        );
        root.insert(
            "control".into(),
            table(vec![(
                "socket",
                self.control_socket.display().to_string().into(),
            )]),
        );
        root.insert("ib".into(), toml::Value::Table(ib));
        root.insert(
            "kafka".into(),
            table(vec![
                ("bootstrap_servers", kafka_bootstrap().into()),
                ("topic_prefix", self.kafka_prefix.clone().into()),
            ]),
        );
        root.insert(
            "clickhouse".into(),
            table(vec![
                ("url", self.clickhouse_url.clone().into()),
                ("database", self.database.clone().into()),
            ]),
        );
        root.insert(
            "writer".into(),
            table(vec![
                ("group_id", self.writer_group.clone().into()),
                ("batch_max_age", self.batch_max_age_secs.into()),
            ]),
        );
        if let Some(c) = &self.calculators {
            root.insert("calculators".into(), c.to_toml());
        }
        merge(&mut root, self.extra.clone());
        toml::to_string(&root).expect("config as TOML")
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

// -------------------------------------------------------------------------------- daemon ---

/// A daemon process of one config; it can be stopped and started again (logs `daemon-<n>.log`).
pub struct Daemon {
    pub config: DaemonConfig,
    pub config_path: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
    runs: u32,
    launcher: Option<Launcher>,
}

/// Starts `marketlane ARGS` with its output in a log (e.g. inside a network namespace:
/// [`crate::netns::Net::spawn_in`]).
pub type Launcher = std::sync::Arc<dyn Fn(&[&str], &Path) -> anyhow::Result<Proc> + Send + Sync>;

impl Daemon {
    pub fn spawn(config: DaemonConfig, dir: &Path) -> anyhow::Result<Self> {
        Self::spawn_with(config, dir, None)
    }

    /// Like [`Daemon::spawn`], started (and restarted) by `launcher`.
    pub fn spawn_with(
        config: DaemonConfig,
        dir: &Path,
        launcher: Option<Launcher>,
    ) -> anyhow::Result<Self> {
        let config_path = dir.join(format!("{}.toml", config.instance));
        std::fs::write(&config_path, config.to_toml())?;
        let mut d = Self {
            config,
            config_path,
            dir: dir.to_path_buf(),
            proc: None,
            runs: 0,
            launcher,
        };
        d.start()?;
        Ok(d)
    }

    /// Starts the daemon (again) with the same config.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        let log = self
            .dir
            .join(format!("{}-{}.log", self.config.instance, self.runs));
        let args = [
            "run",
            "--config",
            self.config_path.to_str().unwrap_or_default(),
        ];
        self.proc = Some(match &self.launcher {
            Some(launch) => launch(&args, &log)?,
            None => Proc::spawn(&args, &log)?,
        });
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.0.id())
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc
            .as_mut()
            .and_then(|p| p.0.try_wait().ok().flatten())
    }

    /// SIGTERM and wait up to `timeout` for the drain to end the process; its exit status
    /// (`None`: still running, then SIGKILLed) and how long it took.
    pub fn sigterm(&mut self, timeout: Duration) -> (Option<ExitStatus>, f64) {
        let started = Instant::now();
        let Some(mut p) = self.proc.take() else {
            return (None, 0.0);
        };
        signal(p.0.id(), "TERM");
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = p.0.try_wait() {
                return (Some(status), started.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(p);
        (None, started.elapsed().as_secs_f64())
    }

    /// SIGKILL (the process is reaped).
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Every log of this daemon, oldest run first.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("{}-{n}.log", self.config.instance)))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n----- restarted -----\n")
    }

    pub async fn metrics(&self) -> Metrics {
        let url = format!(
            "http://{}:{}/metrics",
            self.config.http_host, self.config.http_port
        );
        let text = match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Metrics::parse(&text)
    }

    /// [`Daemon::metrics`], `None` when the scrape failed (no answer, an error status, a cut
    /// body) instead of no series: for checks where a failed scrape must not read as zeros.
    pub async fn try_metrics(&self) -> Option<Metrics> {
        let url = format!(
            "http://{}:{}/metrics",
            self.config.http_host, self.config.http_port
        );
        let r = reqwest::get(url).await.ok()?.error_for_status().ok()?;
        Some(Metrics::parse(&r.text().await.ok()?))
    }

    /// One series by its exact text, e.g. `marketlane_ws_connected` or
    /// `marketlane_ib_session_state{state="authenticated"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics().await.get(series)
    }

    /// [`Daemon::metric`], `None` when the scrape failed.
    pub async fn try_metric(&self, series: &str) -> Option<f64> {
        Some(self.try_metrics().await?.get(series))
    }

    /// `/readyz` answered 200.
    pub async fn ready(&self) -> bool {
        reqwest::get(format!(
            "http://{}:{}/readyz",
            self.config.http_host, self.config.http_port
        ))
        .await
        .is_ok_and(|r| r.status().is_success())
    }

    /// One control-socket request; the whole reply (`ok`, `result` or `error`).
    pub async fn ctl(&self, cmd: &str, args: Value) -> anyhow::Result<Value> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut stream = tokio::net::UnixStream::connect(&self.config.control_socket)
            .await
            .with_context(|| format!("connect {}", self.config.control_socket.display()))?;
        let line = json!({"v": 1, "id": 1, "cmd": cmd, "args": args}).to_string() + "\n";
        stream.write_all(line.as_bytes()).await?;
        let mut reply = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stream).read_line(&mut reply),
        )
        .await
        .context("control socket reply timed out")??;
        Ok(serde_json::from_str(&reply)?)
    }

    /// The `status` result's actor entry `name` (`ib_session`, `ib_websocket`, …).
    pub async fn actor_status(&self, name: &str) -> Option<Value> {
        let reply = self.ctl("status", json!({})).await.ok()?;
        reply["result"]["actors"]
            .as_array()?
            .iter()
            .find(|a| a["actor"] == name)
            .cloned()
    }
}

/// A scrape of `/metrics`: `(series, value)` with the series as printed (name and labels).
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .map(|(s, v)| (s.to_string(), v.parse().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// The series with exactly this text (0 when absent).
    pub fn get(&self, series: &str) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| s == series)
            .map(|(_, v)| v)
            .sum()
    }

    /// Every series of metric `name`, all labels summed.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| s.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }
}

// ------------------------------------------------------------------------- stack outages ---

/// The lock every user of the shared stack takes around stopping a service.
pub const STACK_LOCK: &str = "/tmp/marketlane-stack.lock";

/// The exclusive [`STACK_LOCK`] around taking one stack service down and up again. Take it
/// before the lane starts ([`StackOutage::lock`]): another engineer's benchmark may hold the
/// lock for minutes, and a lane should not stream for that long before its fault.
/// [`StackOutage::kill`] SIGKILLs the service; [`StackOutage::restore`] (or, if the test fails
/// first, `Drop`) brings it back with `scripts/stack up`; the lock is released when the value
/// is dropped, after the service is healthy again.
pub struct StackOutage {
    pub service: &'static str,
    /// Seconds spent waiting for the lock.
    pub waited: f64,
    killed: bool,
    restored: bool,
    _lock: File,
}

fn stack(args: &[&str]) -> anyhow::Result<String> {
    // A SIGKILLed Kafka reloads every partition of every test run: on a busy machine that
    // takes longer than the script's default 120 s wait, after which it stops the service again.
    let timeout = std::env::var("ML_STACK_TIMEOUT").unwrap_or_else(|_| "600".into());
    let out = Command::new(workspace_root().join("scripts/stack"))
        .args(args)
        .env("ML_STACK_TIMEOUT", timeout)
        .current_dir(workspace_root())
        .output()
        .context("cannot run scripts/stack")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("scripts/stack {}: {}\n{text}", args.join(" "), out.status);
    }
    Ok(text)
}

impl StackOutage {
    /// Waits up to `timeout` for the exclusive lock (blocking the thread).
    pub fn lock(service: &'static str, timeout: Duration) -> anyhow::Result<Self> {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(STACK_LOCK)
            .with_context(|| format!("open {STACK_LOCK}"))?;
        let started = Instant::now();
        let mut told = false;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < timeout => {
                    if !told {
                        eprintln!("waiting for {STACK_LOCK} (held by another user of the stack)");
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    bail!("{STACK_LOCK} still held by someone else after {timeout:?}")
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("lock {STACK_LOCK}"));
                }
            }
        }
        Ok(Self {
            service,
            waited: started.elapsed().as_secs_f64(),
            killed: false,
            restored: false,
            _lock: lock,
        })
    }

    /// SIGKILLs the service (`scripts/stack kill SERVICE`).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.killed = true;
        stack(&["kill", self.service]).map(|_| ())
    }

    /// `scripts/stack up SERVICE` (waits until healthy); how long that took. Retried for up
    /// to 5 minutes: `up` refuses while something else listens on the service's port (any
    /// address), and the stack must not stay down because of that.
    pub fn restore(&mut self) -> anyhow::Result<f64> {
        let started = Instant::now();
        loop {
            match stack(&["up", self.service]) {
                Ok(_) => {
                    self.restored = true;
                    return Ok(started.elapsed().as_secs_f64());
                }
                Err(e) if started.elapsed() < Duration::from_secs(300) => {
                    eprintln!("{} not up yet, retrying in 5 s: {e:#}", self.service);
                    std::thread::sleep(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A shared hold on [`STACK_LOCK`] for tests that need the stack up throughout (e.g. a
/// cluster test): no fault row takes a service down while it is held.
pub fn stack_shared_lock(timeout: Duration) -> anyhow::Result<File> {
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(STACK_LOCK)
        .with_context(|| format!("open {STACK_LOCK}"))?;
    let started = Instant::now();
    loop {
        match lock.try_lock_shared() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!("{STACK_LOCK} held exclusively by someone else after {timeout:?}")
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("lock {STACK_LOCK}"));
            }
        }
    }
}

impl Drop for StackOutage {
    fn drop(&mut self) {
        if self.killed
            && !self.restored
            && let Err(e) = self.restore()
        {
            eprintln!("could not bring {} back up: {e:#}", self.service);
        }
    }
}

// ---------------------------------------------------------------------------------- lane ---

/// Where a recovery is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Kafka,
    ClickHouse,
    Redis,
}

/// The ledger ⇄ ClickHouse comparison by row id.
#[derive(Debug, Clone, Default)]
pub struct Reconciliation {
    /// Distinct trades the simulator sent.
    pub emitted: usize,
    /// Of those, outside the allowed gap windows: each must be stored.
    pub counted: usize,
    /// Counted trades not in ClickHouse.
    pub lost: usize,
    /// Trades inside the allowed windows, and how many of them are not stored.
    pub in_gaps: usize,
    pub gap_missing: usize,
    /// `count()` and `uniqExact(row_id)` of the tick table with `FINAL`.
    pub stored: u64,
    pub distinct: u64,
    pub duplicates: u64,
    /// Stored rows that are no trade of the ledger.
    pub phantoms: usize,
    /// Row ids that occur more than once in the tick topic (before any deduplication).
    pub kafka_duplicates: usize,
}

/// Redis against ClickHouse after the lane settled: for every symbol, the calculator's
/// `as_of` is the symbol's last stored trade and its trade count is the stored trades of the
/// window.
#[derive(Debug, Clone, Default)]
pub struct RedisCheck {
    pub symbols: usize,
    pub current: usize,
    /// `symbol: what differs`.
    pub stale: Vec<String>,
}

/// One simulator and one daemon (single-pod rows of the failure matrix).
pub struct Lane {
    pub dir: PathBuf,
    pub sim: Sim,
    pub daemon: Daemon,
}

impl Lane {
    /// Spawns the simulator, then the daemon from `configure(DaemonConfig::new(..))`.
    pub fn start(
        name: &str,
        sim: SimBuilder,
        configure: impl FnOnce(DaemonConfig) -> DaemonConfig,
    ) -> anyhow::Result<Self> {
        let dir = run_dir(name);
        let sim = sim.spawn(&dir)?;
        let config = configure(DaemonConfig::new(&sim.gateway_url(), &dir));
        let daemon = Daemon::spawn(config, &dir)?;
        Ok(Self { dir, sim, daemon })
    }

    pub fn db(&self) -> &str {
        &self.daemon.config.database
    }

    pub fn tick_topic(&self) -> String {
        format!("{}{TICK}", self.daemon.config.kafka_prefix)
    }

    pub fn topic(&self, category: &str) -> String {
        format!("{}{category}", self.daemon.config.kafka_prefix)
    }

    /// Tick rows in Kafka so far.
    pub fn kafka_ticks(&self) -> Vec<Value> {
        kafka_rows(&self.tick_topic())
    }

    async fn tick_time_ns(&self) -> anyhow::Result<&'static str> {
        tick_time_ns(self.db()).await
    }

    /// Symbols with stored trades, and how many each (`FINAL`).
    pub async fn stored_per_symbol(&self) -> BTreeMap<String, u64> {
        let Ok(text) = clickhouse(&format!(
            "SELECT symbol_identifier, count() FROM {}.{TICK} FINAL GROUP BY symbol_identifier",
            self.db()
        ))
        .await
        else {
            return BTreeMap::new();
        };
        text.lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(s, n)| (s.to_string(), n.parse().unwrap_or(0)))
            .collect()
    }

    /// Waits until every configured symbol has `per_symbol` trades in ClickHouse (and, with
    /// calculators, a value in Redis).
    pub async fn wait_streaming(&self, per_symbol: u64, timeout: Duration) -> anyhow::Result<()> {
        let want = self.daemon.config.symbols.len();
        let until = Instant::now() + timeout;
        loop {
            let stored = self.stored_per_symbol().await;
            let enough = stored.len() >= want && stored.values().all(|n| *n >= per_symbol);
            let redis = match &self.daemon.config.calculators {
                None => true,
                Some(c) => {
                    let mut all = enough;
                    for s in stored.keys() {
                        all &= !redis_hash(&c.key(Calculators::TRADE_COUNT, s))
                            .await
                            .is_empty();
                    }
                    all
                }
            };
            if enough && redis {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!(
                    "not streaming after {timeout:?}: stored {stored:?}; logs in {}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Polls `sink` until a trade with event time after `after_ms` is there; the seconds from
    /// `since` until then (`None`: not within `timeout`).
    pub async fn first_after(
        &self,
        sink: Sink,
        after_ms: i64,
        since: Instant,
        timeout: Duration,
    ) -> Option<f64> {
        let after_ns = after_ms.saturating_mul(1_000_000);
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            let seen = match sink {
                Sink::Kafka => self
                    .kafka_ticks()
                    .iter()
                    .any(|r| r["tick_time"].as_i64().is_some_and(|t| t > after_ns)),
                Sink::ClickHouse => match self.tick_time_ns().await {
                    Ok(t) => clickhouse(&format!(
                        "SELECT count() FROM {}.{TICK} WHERE {t} > {after_ns}",
                        self.db()
                    ))
                    .await
                    .is_ok_and(|c| c.trim().parse::<u64>().unwrap_or(0) > 0),
                    Err(_) => false,
                },
                Sink::Redis => {
                    let mut any = false;
                    if let Some(c) = &self.daemon.config.calculators {
                        for s in self.stored_per_symbol().await.keys() {
                            let h = redis_hash(&c.key(Calculators::TRADE_COUNT, s)).await;
                            any |= h
                                .get("as_of")
                                .and_then(|v| v.parse::<i64>().ok())
                                .is_some_and(|t| t > after_ns);
                        }
                    }
                    any
                }
            };
            if seen {
                return Some(since.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }

    /// Compares the ledger file with the tick table. Call after [`Sim::stop`] (the ledger is
    /// complete then). Trades whose event time falls in one of `gaps` (ms, inclusive) may be
    /// missing; every other one must be stored. Waits up to `settle` for the writers to catch
    /// up before it reports.
    pub async fn reconcile(
        &self,
        gaps: &[(i64, i64)],
        settle: Duration,
    ) -> anyhow::Result<Reconciliation> {
        let trades = self.sim.ledger_trades()?;
        reconcile_ticks(self.db(), &self.tick_topic(), &trades, gaps, settle).await
    }

    /// Waits up to `timeout` until Redis is current for every stored symbol (see
    /// [`RedisCheck`]); the last comparison.
    pub async fn redis_current(&self, timeout: Duration) -> anyhow::Result<RedisCheck> {
        let Some(calc) = self.daemon.config.calculators.clone() else {
            bail!("this lane runs no calculators");
        };
        let until = Instant::now() + timeout;
        loop {
            let check = self.redis_check_once(&calc).await?;
            if check.stale.is_empty() || Instant::now() >= until {
                return Ok(check);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn redis_check_once(&self, calc: &Calculators) -> anyhow::Result<RedisCheck> {
        let t = self.tick_time_ns().await?;
        let db = self.db();
        let last = clickhouse(&format!(
            "SELECT symbol_identifier, max({t}) FROM {db}.{TICK} FINAL GROUP BY symbol_identifier"
        ))
        .await?;
        let window_ns = (calc.window_secs * 1e9) as i64;
        let mut check = RedisCheck::default();
        for line in last.lines() {
            let Some((symbol, max)) = line.split_once('\t') else {
                continue;
            };
            let max: i64 = max.parse()?;
            check.symbols += 1;
            let in_window = clickhouse(&format!(
                "SELECT count() FROM {db}.{TICK} FINAL WHERE symbol_identifier = '{symbol}' AND {t} > {} AND {t} <= {max}",
                max - window_ns
            ))
            .await?;
            let want_count: f64 = in_window.trim().parse()?;
            let h = redis_hash(&calc.key(Calculators::TRADE_COUNT, symbol)).await;
            let as_of = h.get("as_of").and_then(|v| v.parse::<i64>().ok());
            let value = h.get("value").and_then(|v| v.parse::<f64>().ok());
            if as_of == Some(max) && value == Some(want_count) {
                check.current += 1;
            } else {
                check.stale.push(format!(
                    "{symbol}: redis as_of={as_of:?} count={value:?}, clickhouse last={max} count={want_count}"
                ));
            }
        }
        Ok(check)
    }

    /// Stops the daemon (SIGTERM) and the simulator, then drops the database, the offsets
    /// database, the topics and the Redis keys of this lane.
    pub async fn cleanup(mut self) {
        self.daemon.sigterm(Duration::from_secs(40));
        self.sim.stop();
        drop_lane_data(&self.daemon.config).await;
    }
}

/// Rows of a topic as JSON (tick rows: `kafka_rows(&lane.tick_topic())`).
pub fn kafka_rows(topic: &str) -> Vec<Value> {
    kafka_payloads(topic)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| serde_json::from_slice(p).ok())
        .collect()
}

/// The tick table's event time in ns, on 18.16 (`Int64`) and current servers.
pub async fn tick_time_ns(db: &str) -> anyhow::Result<&'static str> {
    let t = clickhouse(&format!(
        "SELECT type FROM system.columns WHERE database = '{db}' AND table = '{TICK}' AND name = 'tick_time'"
    ))
    .await?;
    Ok(if t.trim().starts_with("DateTime64") {
        "toUnixTimestamp64Nano(tick_time)"
    } else {
        "tick_time"
    })
}

/// Compares ledger trades with the tick table of `db` (and the tick topic) by row id. Trades
/// whose event time falls in one of `gaps` (ms, inclusive) may be missing; every other one
/// must be stored. Waits up to `settle` for the writers to catch up before it reports. One
/// pod or several sharing the lane's table: the comparison is the same.
pub async fn reconcile_ticks(
    db: &str,
    topic: &str,
    trades: &[LedgerTrade],
    gaps: &[(i64, i64)],
    settle: Duration,
) -> anyhow::Result<Reconciliation> {
    let until = Instant::now() + settle;
    loop {
        let r = reconcile_once(db, topic, trades, gaps).await?;
        if r.lost == 0 || Instant::now() >= until {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn reconcile_once(
    db: &str,
    topic: &str,
    trades: &[LedgerTrade],
    gaps: &[(i64, i64)],
) -> anyhow::Result<Reconciliation> {
    let stored: BTreeSet<String> = clickhouse(&format!("SELECT row_id FROM {db}.{TICK} FINAL"))
        .await?
        .lines()
        .map(String::from)
        .collect();
    let counts = clickhouse(&format!(
        "SELECT count(), uniqExact(row_id) FROM {db}.{TICK} FINAL"
    ))
    .await?;
    let mut it = counts.split_whitespace().map(|n| n.parse::<u64>());
    let (count, distinct) = match (it.next(), it.next()) {
        (Some(Ok(c)), Some(Ok(d))) => (c, d),
        _ => bail!("unexpected count answer {counts:?}"),
    };
    let in_gap = |t: &LedgerTrade| {
        gaps.iter()
            .any(|(a, b)| t.updated_ms >= *a && t.updated_ms <= *b)
    };
    let mut r = Reconciliation {
        emitted: trades.len(),
        stored: count,
        distinct,
        duplicates: count.saturating_sub(distinct),
        ..Default::default()
    };
    let ledger_ids: BTreeSet<&str> = trades.iter().map(|t| t.row_id.as_str()).collect();
    for t in trades {
        let here = stored.contains(&t.row_id);
        if in_gap(t) {
            r.in_gaps += 1;
            r.gap_missing += usize::from(!here);
        } else {
            r.counted += 1;
            r.lost += usize::from(!here);
        }
    }
    r.phantoms = stored
        .iter()
        .filter(|id| !ledger_ids.contains(id.as_str()))
        .count();
    let mut in_kafka: BTreeMap<String, usize> = BTreeMap::new();
    for row in kafka_rows(topic) {
        if let Some(id) = row["row_id"].as_str() {
            *in_kafka.entry(id.to_string()).or_default() += 1;
        }
    }
    r.kafka_duplicates = in_kafka.values().filter(|n| **n > 1).count();
    Ok(r)
}

/// Drops everything a lane of `config` created outside its run directory.
pub async fn drop_lane_data(config: &DaemonConfig) {
    let db = &config.database;
    for d in [db.clone(), format!("{db}_state")] {
        let sql = format!("DROP DATABASE IF EXISTS {d}");
        match tokio::time::timeout(Duration::from_secs(60), clickhouse(&sql)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("cannot drop database {d}: {e:#}"),
            Err(_) => eprintln!("cannot drop database {d}: no answer within 60 s"),
        }
    }
    match tokio::time::timeout(Duration::from_secs(60), delete_topics(&config.kafka_prefix)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("cannot delete the topics {}*: {e:#}", config.kafka_prefix),
        Err(_) => eprintln!(
            "cannot delete the topics {}*: timed out",
            config.kafka_prefix
        ),
    }
    if let Some(c) = &config.calculators
        && let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(10), redis_client()).await
    {
        let keys: Vec<String> = client
            .custom(
                fred::types::CustomCommand::new_static("KEYS", None, false),
                vec![format!("{}:*", c.key_prefix)],
            )
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: i64 = client.del(keys).await.unwrap_or(0);
        }
        let _ = client.quit().await;
    }
}

/// Deletes every topic whose name starts with `prefix` (non-empty).
pub async fn delete_topics(prefix: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    if prefix.is_empty() {
        bail!("refusing to delete every topic");
    }
    let config = {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", kafka_bootstrap());
        c
    };
    let consumer: BaseConsumer = config.create()?;
    let md = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let topics: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    admin
        .delete_topics(
            &refs,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    Ok(())
}

async fn redis_client() -> anyhow::Result<Client> {
    let mut config = Config::from_url(&redis_url())?;
    config.fail_fast = true;
    let client = Builder::from_config(config).build()?;
    client.init().await?;
    Ok(client)
}

/// `HGETALL key` on the stack's Redis (empty when Redis is down or the key is absent).
pub async fn redis_hash(key: &str) -> BTreeMap<String, String> {
    let Ok(client) = redis_client().await else {
        return BTreeMap::new();
    };
    let h: BTreeMap<String, String> = client
        .hgetall::<std::collections::HashMap<String, String>, _>(key)
        .await
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    let _ = client.quit().await;
    h
}

/// The line the lead collects for the closing note.
pub fn fault_row_line(row: &str, name: &str, recovery: Option<f64>, r: &Reconciliation) -> String {
    let recovery = recovery.map_or("never".to_string(), |s| format!("{s:.1}"));
    format!(
        "FAULT-ROW {row} {name} recovery={recovery}s lost={} duplicates={}",
        r.lost, r.duplicates
    )
}
