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

/// Runs `marketlane ARGS` to completion.
pub fn run_marketlane(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(marketlane_bin())
        .args(args)
        .current_dir(workspace_root())
        .output()
        .with_context(|| format!("cannot run {}", marketlane_bin().display()))
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
