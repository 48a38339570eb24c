//! Figures taken from outside the daemon: rows as an analyst counts them (distinct `row_id`,
//! `FINAL`), the CPU of ClickHouse and Kafka from their pid files, rows produced to Kafka in a
//! time window (offsets for times), the first fresh market-data row in Kafka after a websocket
//! drop, and `perf` profiles of the connector, the writer and the calculator processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::clickhouse::Ch;
use crate::live::Env;
use crate::live::daemons::{Daemons, PerRole, Role};
use crate::outage::OutageResult;
use crate::procs;

/// Source categories (market data from the websocket) and the derived one.
pub const SOURCE: [(&str, &str); 2] = [
    ("l2_market_data", "l2_time"),
    ("tick_market_data", "tick_time"),
];
pub const INDICATORS: &str = "indicators_market_data";

pub fn clickhouse_pid() -> Option<u32> {
    procs::pid_of("clickhouse")
}

/// CPU seconds so far of ClickHouse and Kafka (None where the pid file or process is missing).
#[derive(Debug, Clone, Copy, Default)]
pub struct StackCpu {
    pub clickhouse: Option<f64>,
    pub kafka: Option<f64>,
}

pub fn stack_cpu() -> StackCpu {
    let cpu = |s| procs::pid_of(s).and_then(procs::usage).map(|u| u.cpu_secs);
    StackCpu {
        clickhouse: cpu("clickhouse"),
        kafka: cpu("kafka"),
    }
}

impl StackCpu {
    pub fn since(&self, earlier: &StackCpu) -> StackCpu {
        let d = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        StackCpu {
            clickhouse: d(self.clickhouse, earlier.clickhouse),
            kafka: d(self.kafka, earlier.kafka),
        }
    }
}

/// Rows as an analyst counts them: distinct `row_id` with `FINAL`, source categories together
/// and indicators apart. `where_` filters (e.g. an ingestion-time window), may be empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct Analyst {
    pub source: u64,
    pub indicators: u64,
}

async fn distinct(ch: &Ch, table: &str, where_: &str) -> anyhow::Result<u64> {
    let w = if where_.is_empty() {
        String::new()
    } else {
        format!(" WHERE {where_}")
    };
    Ok(ch
        .query(&format!(
            "SELECT count(DISTINCT row_id) FROM {table} FINAL{w}"
        ))
        .await?
        .trim()
        .parse()
        .unwrap_or(0))
}

pub async fn analyst(ch: &Ch, db: &str, where_: &str) -> anyhow::Result<Analyst> {
    let mut source = 0;
    for (cat, _) in SOURCE {
        source += distinct(ch, &format!("`{db}`.{cat}"), where_).await?;
    }
    // The indicator table exists once a calculator wrote; none yet reads as 0.
    let indicators = distinct(ch, &format!("`{db}`.{INDICATORS}"), where_)
        .await
        .unwrap_or(0);
    Ok(Analyst { source, indicators })
}

fn consumer(bootstrap: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "1")
        .create()?)
}

pub fn partitions(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<i32>> {
    let c = consumer(bootstrap, "marketlane-bench-meta")?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic}"))?;
    Ok(md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Messages of `topics` whose Kafka timestamp (the producer's create time) lies in
/// [from_ms, to_ms): the difference of the offsets for the two times, over all partitions.
pub fn produced_between(
    bootstrap: &str,
    topics: &[String],
    from_ms: i64,
    to_ms: i64,
) -> anyhow::Result<u64> {
    let c = consumer(bootstrap, "marketlane-bench-meta")?;
    let at = |ms: i64| -> anyhow::Result<i64> {
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            for p in partitions(bootstrap, t)? {
                tpl.add_partition_offset(t, p, Offset::Offset(ms))?;
            }
        }
        let found = c.offsets_for_times(tpl, Duration::from_secs(10))?;
        let mut sum = 0i64;
        for e in found.elements() {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                // No message at or after the time: the partition's end.
                _ => {
                    c.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))?
                        .1
                }
            };
            sum += o;
        }
        Ok(sum)
    };
    Ok((at(to_ms)? - at(from_ms)?).max(0) as u64)
}

/// Reads the source topics from their end on a thread and keeps the newest event time (ns)
/// seen: the first row with an event time after a websocket drop is market data resumed.
pub struct FreshWatch {
    pub newest_event_ns: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The event time of a row without parsing the whole JSON: the digits after `"<col>":`.
fn event_ns(payload: &[u8], col: &str) -> Option<i64> {
    let s = std::str::from_utf8(payload).ok()?;
    let key = format!("\"{col}\":");
    let at = s.find(&key)? + key.len();
    let digits: String = s[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl FreshWatch {
    pub fn start(bootstrap: &str, prefix: &str) -> anyhow::Result<Self> {
        let c = consumer(bootstrap, &format!("{prefix}freshwatch"))?;
        let mut tpl = TopicPartitionList::new();
        for (cat, _) in SOURCE {
            let topic = format!("{prefix}{cat}");
            for p in partitions(bootstrap, &topic)? {
                tpl.add_partition_offset(&topic, p, Offset::End)?;
            }
        }
        c.assign(&tpl)?;
        let newest = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (newest.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Some(Ok(m)) = c.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let col = if m.topic().ends_with("l2_market_data") {
                    "l2_time"
                } else {
                    "tick_time"
                };
                if let Some(t) = m.payload().and_then(|p| event_ns(p, col)) {
                    n.fetch_max(t, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            newest_event_ns: newest,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FreshWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `perf record -g` of one process until [`Profiler::finish`].
pub struct Profiler {
    child: Child,
    data: PathBuf,
}

impl Profiler {
    /// Records into `<dir>/perf-<name>.data`.
    pub fn start(pid: u32, dir: &Path, name: &str) -> anyhow::Result<Self> {
        let data = dir.join(format!("perf-{name}.data"));
        let child = Command::new("perf")
            .args(["record", "-g", "-F", "499", "-o"])
            .arg(&data)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                dir.join(format!("perf-record-{name}.log")),
            )?))
            .spawn()
            .context("cannot start perf (apt-get install linux-perf)")?;
        Ok(Self { child, data })
    }

    /// Stops the recording (SIGINT, as perf expects) and returns the top of
    /// `perf report --no-children` (self time per symbol).
    pub fn finish(mut self, lines: usize) -> String {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let out = Command::new("perf")
            .args([
                "report",
                "--no-children",
                "--stdio",
                "-g",
                "none",
                "--percent-limit",
                "0.5",
                "--sort",
                "dso,symbol",
                "-i",
            ])
            .arg(&self.data)
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .take(lines)
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("perf report failed: {e}"),
        }
    }
}

/// Figures of one live run taken from outside the daemon.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Distinct rows in ClickHouse at the start and the end of the steady window, and the
    /// seconds between the two counts.
    pub analyst: Option<(Analyst, Analyst, f64)>,
    /// CPU seconds over the same span: each daemon process (connector, writer, calculator),
    /// the simulator, ClickHouse and Kafka.
    pub role_cpu_s: Option<PerRole<f64>>,
    pub sim_cpu_s: Option<f64>,
    pub stack: StackCpu,
    /// Source rows the daemon produced to Kafka during the window (Kafka timestamps), and how
    /// many of them (by `ingestion_time`) were in ClickHouse `DRAIN_GRACE_S` after it.
    pub produced_in_window: Option<u64>,
    pub arrived_in_window: Option<u64>,
    /// The top of `perf report --no-children` over the window, the connector's then the
    /// writer's.
    pub profile: Option<String>,
    /// Websocket drop → first row in Kafka with an event time after the drop (s).
    pub ws_fresh: Vec<Option<f64>>,
    pub outage: Option<OutageResult>,
    pub rss_mb_max_outage: f64,
    /// The Kafka engine's table settings in this run.
    pub engine_settings: String,
}

impl Extra {
    /// Rows of the window that never reached ClickHouse by the end.
    pub fn missing(&self) -> Option<u64> {
        Some(
            self.produced_in_window?
                .saturating_sub(self.arrived_in_window?),
        )
    }
    /// Distinct source rows per second into ClickHouse over the window.
    pub fn e2e_rows_per_s(&self) -> Option<f64> {
        let (a, b, secs) = self.analyst?;
        (secs > 0.0).then(|| b.source.saturating_sub(a.source) as f64 / secs)
    }
    pub fn indicators_per_s(&self) -> Option<f64> {
        let (a, b, secs) = self.analyst?;
        (secs > 0.0).then(|| b.indicators.saturating_sub(a.indicators) as f64 / secs)
    }
    /// CPU seconds of the connector and the writer together: the target's "connector + writer".
    pub fn daemon_cpu_s(&self) -> Option<f64> {
        let c = self.role_cpu_s?;
        Some(c[Role::Connector.index()] + c[Role::Writer.index()])
    }
    pub fn role_cpu(&self, role: Role) -> Option<f64> {
        Some(self.role_cpu_s?[role.index()])
    }
    fn us_per_source_row(&self, cpu_s: Option<f64>) -> Option<f64> {
        let (a, b, _) = self.analyst?;
        let rows = b.source.saturating_sub(a.source);
        (rows > 0).then(|| cpu_s.unwrap_or(0.0) * 1e6 / rows as f64)
    }
    /// Connector + writer CPU µs per distinct source row into ClickHouse over the window.
    pub fn daemon_us_per_row(&self) -> Option<f64> {
        self.us_per_source_row(self.daemon_cpu_s())
    }
    /// One process's CPU µs per distinct source row into ClickHouse over the window.
    pub fn role_us_per_row(&self, role: Role) -> Option<f64> {
        self.us_per_source_row(self.role_cpu(role))
    }
}

/// One end of the window: when, distinct rows, CPU seconds of the three daemon processes and
/// the simulator, and of the stack.
type Mark = (
    std::time::Instant,
    i64,
    Analyst,
    PerRole<f64>,
    f64,
    StackCpu,
);

/// The steady window of a live run, measured from outside at its start and end.
#[derive(Default)]
pub struct Window {
    start: Option<Mark>,
    pub end: Option<Mark>,
    profilers: Vec<(Role, Profiler)>,
    profile: Vec<String>,
}

async fn mark(env: &Env, db: &str, daemons: PerRole<u32>, sim: u32) -> Mark {
    let (at, ns) = (std::time::Instant::now(), marketlane_protocol::now_ns());
    let cpu = |p| procs::usage(p).map_or(0.0, |u| u.cpu_secs);
    let (d, s, st) = (daemons.map(cpu), cpu(sim), stack_cpu());
    let a = analyst(&env.ch, db, "").await.unwrap_or_default();
    (at, ns, a, d, s, st)
}

impl Window {
    /// `profile`: `perf record` of the connector process (websocket → Kafka, the hot path of a
    /// row), of the writer process (Kafka → ClickHouse) and of the calculator process (Kafka →
    /// Redis), each apart.
    pub async fn start(
        &mut self,
        env: &Env,
        db: &str,
        daemons: PerRole<u32>,
        sim: u32,
        profile: bool,
        dir: &Path,
    ) {
        self.start = Some(mark(env, db, daemons, sim).await);
        if profile {
            for role in [Role::Connector, Role::Writer, Role::Calculator] {
                match Profiler::start(daemons[role.index()], dir, role.name()) {
                    Ok(p) => self.profilers.push((role, p)),
                    Err(e) => self
                        .profile
                        .push(format!("{}: no profile: {e:#}", role.name())),
                }
            }
        }
    }

    pub async fn finish(&mut self, env: &Env, db: &str, daemons: PerRole<u32>, sim: u32) {
        self.end = Some(mark(env, db, daemons, sim).await);
        for (role, p) in self.profilers.drain(..) {
            self.profile
                .push(format!("{} process:\n{}", role.name(), p.finish(45)));
        }
    }

    /// Rows produced to Kafka during the window vs those of them in ClickHouse now.
    pub async fn missing(&self, env: &Env, db: &str, prefix: &str, ex: &mut Extra) {
        let (Some(s), Some(e)) = (&self.start, &self.end) else {
            return;
        };
        let topics: Vec<String> = SOURCE.iter().map(|(c, _)| format!("{prefix}{c}")).collect();
        let (bootstrap, from, to) = (env.kafka.clone(), s.1 / 1_000_000, e.1 / 1_000_000);
        ex.produced_in_window =
            tokio::task::spawn_blocking(move || produced_between(&bootstrap, &topics, from, to))
                .await
                .ok()
                .and_then(Result::ok);
        let w = format!(
            "ingestion_time >= {} AND ingestion_time < {}",
            from * 1_000_000,
            to * 1_000_000
        );
        ex.arrived_in_window = analyst(&env.ch, db, &w).await.ok().map(|a| a.source);
    }

    pub fn into_extra(self, ex: &mut Extra) {
        if let (Some(s), Some(e)) = (&self.start, &self.end) {
            ex.analyst = Some((s.2, e.2, (e.0 - s.0).as_secs_f64()));
            ex.role_cpu_s = Some([0, 1, 2].map(|i| e.3[i] - s.3[i]));
            ex.sim_cpu_s = Some(e.4 - s.4);
            ex.stack = e.5.since(&s.5);
        }
        ex.profile = (!self.profile.is_empty()).then(|| self.profile.join("\n\n"));
    }
}

/// After the outage, with the source stopped: waits until the connector's produced counter
/// holds still and the writer's consumer lag is 0 (at most `2 × outage + 30` s), following the
/// writer process's RSS (the one that holds what ClickHouse refused), then counts source rows
/// in Kafka (the connector's counter) and in ClickHouse (distinct, `FINAL`) until the two agree
/// or the ClickHouse count holds still.
pub async fn drain_after_outage(
    env: &Env,
    db: &str,
    daemons: &Daemons,
    outage_secs: u64,
    ex: &mut Extra,
) -> OutageResult {
    let http = reqwest::Client::new();
    let at = std::time::Instant::now();
    let limit = Duration::from_secs(2 * outage_secs + 30);
    let mut r = OutageResult {
        outage_secs,
        rss_mb_max: 0.0,
        drained_after: None,
        lag_at_end: 0.0,
        kafka_rows: 0.0,
        clickhouse_rows: Err("not counted".into()),
    };
    let source = |l: &crate::prom::Labels| {
        let t = l.get("topic").unwrap_or("");
        SOURCE.iter().any(|(c, _)| t.ends_with(c))
    };
    let mut produced_before = f64::NAN;
    loop {
        if let Some(u) = procs::usage(daemons.get(Role::Writer).proc.pid()) {
            ex.rss_mb_max_outage = ex.rss_mb_max_outage.max(u.rss_bytes as f64 / 1048576.0);
        }
        let produced = daemons
            .scrape(&http, Role::Connector)
            .await
            .map(|c| c.sum("marketlane_kafka_produced_total", source));
        if let Some(s) = daemons.scrape(&http, Role::Writer).await {
            r.lag_at_end = s.sum("marketlane_consumer_lag", |l| {
                l.get("group").unwrap_or("").contains("writer") && source(l)
            });
            let settled = produced.is_some_and(|p| p == produced_before);
            if settled && r.lag_at_end == 0.0 {
                r.drained_after = Some(at.elapsed().as_secs_f64());
                break;
            }
        }
        produced_before = produced.unwrap_or(f64::NAN);
        if at.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(s) = daemons.scrape(&http, Role::Connector).await {
        r.kafka_rows = s.sum("marketlane_kafka_produced_total", source);
    }
    // Lag 0 says the writer has read every row; its last batch lands with the flush after
    // that. A failed count is reported as such, never as 0 rows.
    let mut held = 0;
    let mut last = None;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        r.clickhouse_rows = analyst(&env.ch, db, "")
            .await
            .map(|a| a.source)
            .map_err(|e| format!("{e:#}"));
        let now = r.clickhouse_rows.as_ref().ok().copied();
        if r.drained_after.is_none() || now.is_some_and(|n| n as f64 >= r.kafka_rows) {
            break;
        }
        held = if now.is_some() && now == last {
            held + 1
        } else {
            0
        };
        if held >= 3 || std::time::Instant::now() > until {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    r.rss_mb_max = ex.rss_mb_max_outage;
    r
}

#[cfg(test)]
mod tests {
    use super::event_ns;

    #[test]
    fn event_time_is_read_from_the_payload() {
        let p = br#"{"symbol_identifier":"SYM0001","l2_time": 1733356800123456789,"side":"bid"}"#;
        assert_eq!(event_ns(p, "l2_time"), Some(1_733_356_800_123_456_789));
        assert_eq!(event_ns(p, "tick_time"), None);
        assert_eq!(event_ns(br#"{"l2_time":null}"#, "l2_time"), None);
    }
}
