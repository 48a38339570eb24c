//! Helpers of the integration tests. The tests run against the real local stack that
//! `scripts/stack up` starts (Kafka, ClickHouse, Redis on loopback) and the `marketlane`
//! binary; every test uses its own topic prefix and ClickHouse database.

pub mod harness;
pub mod netns;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

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

pub fn kafka_bootstrap() -> String {
    std::env::var("ML_KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        format!(
            "127.0.0.1:{}",
            std::env::var("ML_KAFKA_PORT").unwrap_or_else(|_| "9092".into())
        )
    })
}

pub fn clickhouse_url() -> String {
    std::env::var("ML_CLICKHOUSE_URL").unwrap_or_else(|_| {
        format!(
            "http://127.0.0.1:{}",
            std::env::var("ML_CH_HTTP_PORT").unwrap_or_else(|_| "8123".into())
        )
    })
}

/// A name unique to this test run: `prefix` + process id + time.
pub fn unique(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{prefix}{}_{}", std::process::id(), t % 1_000_000_000)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs `marketlane ARGS` to completion, killed after `limit` (see [`output_within`]).
pub fn run_marketlane(args: &[&str], limit: Duration) -> anyhow::Result<Output> {
    output_within(
        Command::new(marketlane_bin())
            .args(args)
            .current_dir(workspace_root()),
        limit,
    )
    .with_context(|| format!("cannot run {}", marketlane_bin().display()))
}

/// [`Command::output`] with a deadline: a command still running after `limit` is killed and
/// the answer is a `TimedOut` error that names it and quotes what it printed, so a hung child
/// fails its test instead of holding the suite forever. Stdin is left as `cmd` has it.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    let until = Instant::now() + limit;
    // Its own process group: a timeout kills what the command started too (the demo's
    // simulator and daemon).
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    // Read both pipes on threads: a child blocked on a full pipe would never exit.
    fn drain(pipe: Option<impl Read + Send + 'static>) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&buf);
        let reader = std::thread::spawn(move || {
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => lock(&into).extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
        (buf, reader)
    }
    fn lock(b: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
        b.lock().unwrap_or_else(|e| e.into_inner())
    }
    let (stdout, out_reader) = drain(child.stdout.take());
    let (stderr, err_reader) = drain(child.stderr.take());
    let take = |b: &Mutex<Vec<u8>>| std::mem::take(&mut *lock(b));
    // Program and arguments only: the environment may carry secrets.
    let named = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let timed_out = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "`{named}` {what} within {limit:?}; stdout: {}; stderr: {}",
                String::from_utf8_lossy(&take(&stdout)),
                String::from_utf8_lossy(&take(&stderr))
            ),
        )
    };
    let group = child.id();
    let kill_group = || {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
    };
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= until {
            kill_group();
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out("did not exit"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A grandchild may hold the pipes open after the child exited.
    while !(out_reader.is_finished() && err_reader.is_finished()) {
        if Instant::now() >= until {
            kill_group();
            return Err(timed_out("exited but its output did not close"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Output {
        status,
        stdout: take(&stdout),
        stderr: take(&stderr),
    })
}

/// A child process that is killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let child = Command::new(marketlane_bin())
            .args(args)
            .current_dir(workspace_root())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()?;
        Ok(Self(child))
    }

    pub fn terminate(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a query on the local ClickHouse over HTTP and returns its TSV answer.
pub async fn clickhouse(sql: &str) -> anyhow::Result<String> {
    let resp = reqwest::Client::new()
        .post(clickhouse_url())
        .body(sql.to_string())
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("clickhouse {status}: {text}\nquery: {sql}");
    }
    Ok(text)
}

/// Every message payload of `topic` (all partitions, from the beginning to the current end).
pub fn kafka_payloads(topic: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", unique("test_reader_"))
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0usize;
    let mut ends = std::collections::HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (lo, hi) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if hi > lo {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                ends.insert(p.id(), hi);
                remaining += 1;
            }
        }
    }
    let mut out = Vec::new();
    if remaining == 0 {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while remaining > 0 && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m?;
            out.push(m.payload().unwrap_or_default().to_vec());
            if m.offset() + 1 == ends[&m.partition()] {
                remaining -= 1;
            }
        }
    }
    Ok(out)
}

/// The `(conid, updated)` pairs of the trades in a simulator ledger.
/// The row id the connector must give a ledger trade line (`marketlane_protocol::tick_row_id`:
/// conid, IB's `_updated`, and the trade's price and size, which the ledger records as sent).
pub fn ledger_row_id(line: &serde_json::Value) -> String {
    marketlane_protocol::tick_row_id(
        "ib",
        line["conid"].as_i64().unwrap_or_default(),
        line["updated"].as_i64().unwrap_or_default(),
        line["price"].as_f64(),
        line["size"].as_f64(),
        None,
    )
}

/// The row ids of every trade of a ledger file.
pub fn ledger_row_ids(ledger: &Path) -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(ledger)?;
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["kind"] == "trade" {
            out.insert(ledger_row_id(&v));
        }
    }
    Ok(out)
}

pub fn ledger_trades(ledger: &Path) -> anyhow::Result<BTreeSet<(i64, i64)>> {
    let text = std::fs::read_to_string(ledger)?;
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["kind"] == "trade" {
            out.insert((
                v["conid"].as_i64().unwrap_or_default(),
                v["updated"].as_i64().unwrap_or_default(),
            ));
        }
    }
    Ok(out)
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
