//! A live run: the simulator at a configured rate → the daemon (connector, writer, calculator)
//! → Kafka, ClickHouse, Redis, with ClickHouse's Kafka engine reading the same l2 topic into a
//! same-shape table on the same server. Samples every second: rows/s per stage, the daemon's
//! RSS and CPU, the latency histograms; polls the tables for event → queryable; injects the
//! websocket drop and the pod kill when asked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::clickhouse::{self as chq, Ch, Seen};
use crate::measure::{Extra, Window};
use crate::procs::{self, Proc, Usage};
use crate::prom::{Buckets, Scrape};

mod config;
use config::config_toml;

#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub name: String,
    pub symbols: u32,
    pub frame_interval_ms: u64,
    pub book_depth: usize,
    pub trade_probability: f64,
    pub seconds: u64,
    /// Seconds before the steady window starts (connect, subscribe, first batches).
    pub warmup: u64,
    pub ws_drops: u32,
    pub pod_kills: u32,
    pub engine: bool,
    /// `perf record -g` of the daemon over the steady window.
    pub profile: bool,
    /// A ClickHouse outage of this many seconds (0: none), 5 s into the steady window.
    pub outage_secs: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub t: f64,
    pub frames: f64,
    pub normalized: f64,
    pub kafka: f64,
    pub clickhouse: f64,
    pub calculator_rows: f64,
    pub redis_writes: f64,
    pub engine: f64,
    pub lag: f64,
    pub rss_mb: f64,
    pub daemon_cpu: f64,
    pub sim_cpu: f64,
    pub machine_busy: f64,
    pub p99_kafka: Option<f64>,
    pub p99_clickhouse_ack: Option<f64>,
    pub p99_redis: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Fault → first frame counted after the reconnect (s).
    pub ws_resume: Vec<f64>,
    /// The daemon's own `marketlane_ws_gap_seconds` (mean over the drops).
    pub ws_gap_daemon: Option<f64>,
    /// SIGKILL → the new process counts frames again (s).
    pub kill_frames: Vec<f64>,
    /// SIGKILL → the new process has rows acknowledged by Kafka (s).
    pub kill_kafka: Vec<f64>,
    /// SIGKILL → the new process has rows acknowledged by ClickHouse (s).
    pub kill_clickhouse: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct LiveResult {
    pub config: LiveConfig,
    pub samples: Vec<Sample>,
    /// Event → queryable, polled: marketlane's l2 and tick tables, the engine's l2 table.
    pub seen: HashMap<&'static str, Vec<Seen>>,
    /// The daemon's histograms over the steady window: (category, sink) → buckets.
    pub hist: HashMap<(String, String), Buckets>,
    pub recovery: Recovery,
    pub steady: (f64, f64),
    pub dir: PathBuf,
    /// Figures taken from outside the daemon (analyst counts, stack CPU, profile, outage).
    pub extra: Extra,
}

pub struct Env {
    pub bin: PathBuf,
    pub kafka: String,
    pub ch: Ch,
    pub ch_url: String,
    pub server_version: String,
    pub stamp: String,
    pub work: PathBuf,
}

pub(crate) async fn scrape(http: &reqwest::Client, port: u16) -> Option<Scrape> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_millis(800))
        .send()
        .await
        .ok()?;
    Some(Scrape::parse(&r.text().await.ok()?))
}

/// The stage counters of one scrape.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    frames: f64,
    normalized: f64,
    kafka: f64,
    clickhouse: f64,
    calculator_rows: f64,
    redis_writes: f64,
    lag: f64,
    reconnects: f64,
}

fn counters(s: &Scrape) -> Counters {
    let qualified =
        |l: &crate::prom::Labels| !l.get("topic").unwrap_or("").ends_with("_unqualified");
    Counters {
        frames: s.sum("marketlane_ws_frames_total", |_| true),
        normalized: s.sum("marketlane_rows_normalized_total", |_| true),
        kafka: s.sum("marketlane_kafka_produced_total", qualified),
        clickhouse: s.sum("marketlane_clickhouse_rows_inserted_total", |l| {
            !l.get("table").unwrap_or("").ends_with("_unqualified")
        }),
        calculator_rows: s.sum("marketlane_calculator_rows_total", |l| {
            l.is("outcome", "applied")
        }),
        redis_writes: s.sum("marketlane_redis_writes_total", |l| l.is("outcome", "ok")),
        lag: s.sum("marketlane_consumer_lag", |_| true),
        reconnects: s.sum("marketlane_ws_reconnects_total", |_| true),
    }
}

const LATENCY: &str = "marketlane_event_to_sink_latency_seconds";
/// Seconds the rows of the steady window have to reach ClickHouse after it before they count
/// as never arrived.
pub const DRAIN_GRACE_S: u64 = 10;
/// `kafka_max_block_size` of the engine in the live runs (a block per poll round, flushed when
/// full or at the server's `stream_flush_interval_ms`).
pub const LIVE_ENGINE_BLOCK: u64 = 65_536;

/// The engine's settings as its users tune it: one consumer per partition and the block size.
pub fn engine_settings(partitions: usize, block: u64) -> String {
    format!(", kafka_num_consumers = {partitions}, kafka_max_block_size = {block}")
}

fn sink_buckets(s: &Scrape, sink: &str) -> Buckets {
    s.buckets(LATENCY, |l| l.is("sink", sink))
}

/// Creates the engine's database (marketlane's DDL, so the same tables and snapshot view), a
/// Kafka table over `topic` and a materialized view into the same-shape l2 table.
pub async fn create_engine(
    env: &Env,
    engine_db: &str,
    topic: &str,
    group: &str,
    settings: &str,
) -> anyhow::Result<()> {
    let ddl = procs::command_output(
        env.bin.to_str().unwrap_or("marketlane"),
        &[
            "schema",
            "ddl",
            "--server-version",
            &env.server_version,
            "--database",
            engine_db,
            "--dir",
            procs::repo_root()
                .join("schemas")
                .to_str()
                .unwrap_or("schemas"),
        ],
    );
    if !ddl.contains("CREATE TABLE") {
        bail!("marketlane schema ddl failed: {ddl}");
    }
    env.ch.script(&ddl).await.context("engine ddl")?;
    let cols = env
        .ch
        .query(&format!(
            "SELECT name, type, default_kind, default_expression FROM system.columns \
             WHERE database = '{engine_db}' AND table = 'l2_market_data' FORMAT TabSeparatedRaw"
        ))
        .await?;
    // The Kafka table has the columns a message carries; the view also computes the target's
    // MATERIALIZED columns (18.16 expects them from a view: "Expected column …_dt").
    let mut defs = Vec::new();
    let mut names = Vec::new();
    for line in cols.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, ty, kind, expr] = f.as_slice() else {
            continue;
        };
        if *kind == "MATERIALIZED" {
            names.push(format!("{expr} AS `{name}`"));
        } else {
            defs.push(format!("`{name}` {ty}"));
            names.push(format!("`{name}`"));
        }
    }
    env.ch
        .query(&format!(
            "CREATE TABLE `{engine_db}`.kafka_l2 ({}) ENGINE = Kafka SETTINGS \
             kafka_broker_list = '{}', kafka_topic_list = '{topic}', \
             kafka_group_name = '{group}', kafka_format = 'JSONEachRow'{settings}",
            defs.join(", "),
            env.kafka
        ))
        .await?;
    env.ch
        .query(&format!(
            "CREATE MATERIALIZED VIEW `{engine_db}`.kafka_l2_mv TO `{engine_db}`.l2_market_data \
             AS SELECT {} FROM `{engine_db}`.kafka_l2",
            names.join(", ")
        ))
        .await?;
    Ok(())
}

/// Stops the engine consuming (its Kafka table goes first) and drops its database.
pub async fn drop_engine(ch: &Ch, engine_db: &str) {
    for s in [
        format!("DROP TABLE IF EXISTS `{engine_db}`.kafka_l2_mv"),
        format!("DROP TABLE IF EXISTS `{engine_db}`.kafka_l2"),
        format!("DROP DATABASE IF EXISTS `{engine_db}`"),
        format!("DROP DATABASE IF EXISTS `{engine_db}_state`"),
    ] {
        if let Err(e) = ch.query(&s).await {
            eprintln!("bench: cleanup: {e}");
        }
    }
}

async fn drop_databases(ch: &Ch, db: &str) {
    for d in [db.to_string(), format!("{db}_state")] {
        if let Err(e) = ch.query(&format!("DROP DATABASE IF EXISTS `{d}`")).await {
            eprintln!("bench: cleanup: {e}");
        }
    }
}

fn spawn_daemon(env: &Env, config: &Path, dir: &Path, n: u32) -> anyhow::Result<Proc> {
    Proc::spawn(
        &env.bin,
        "daemon",
        &[
            "run".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        &dir.join(format!("daemon-{n}.log")),
    )
}

pub async fn run(env: &Env, c: &LiveConfig) -> anyhow::Result<LiveResult> {
    let dir = env.work.join(&c.name);
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("bench{}{}_", env.stamp, c.name);
    let db = format!("bench_{}_{}", env.stamp, c.name);
    let engine_db = format!("{db}_engine");
    let gw = procs::free_port()?;
    let http_port = procs::free_port()?;
    let config_path = dir.join("config.toml");
    let proxy = if c.outage_secs > 0 {
        Some(crate::outage::Proxy::start(crate::outage::host_port(&env.ch_url)).await?)
    } else {
        None
    };
    let ch_url = proxy.as_ref().map_or(env.ch_url.clone(), |p| {
        format!("http://127.0.0.1:{}", p.port)
    });
    std::fs::write(
        &config_path,
        config_toml(env, c, &prefix, &db, gw, http_port, &ch_url)?,
    )?;
    let result = run_inner(
        env,
        c,
        &dir,
        &config_path,
        &prefix,
        &db,
        &engine_db,
        gw,
        http_port,
        proxy.as_ref(),
    )
    .await;
    drop_engine(&env.ch, &engine_db).await;
    drop_databases(&env.ch, &db).await;
    match crate::kafka::delete_topics_with_prefix(&env.kafka, &prefix).await {
        Ok(n) => println!("bench: {}: dropped {n} topics and the databases", c.name),
        Err(e) => eprintln!("bench: cleanup of topics {prefix}*: {e}"),
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_inner(
    env: &Env,
    c: &LiveConfig,
    dir: &Path,
    config_path: &Path,
    prefix: &str,
    db: &str,
    engine_db: &str,
    gw: u16,
    http_port: u16,
    proxy: Option<&crate::outage::Proxy>,
) -> anyhow::Result<LiveResult> {
    let http = reqwest::Client::new();
    let mut ex = Extra::default();
    let mut sim = Proc::spawn(
        &procs::sim_bin(&env.bin),
        "simulator",
        &[
            "--listen".into(),
            format!("127.0.0.1:{gw}"),
            "--seed".into(),
            "42".into(),
            "--synthetic-symbols".into(),
            c.symbols.to_string(),
            "--frame-interval-ms".into(),
            c.frame_interval_ms.to_string(),
            "--unpaced".into(),
            "--book-depth".into(),
            c.book_depth.to_string(),
            "--trade-probability".into(),
            c.trade_probability.to_string(),
        ],
        &dir.join("simulator.log"),
    )?;
    let mut daemon = spawn_daemon(env, config_path, dir, 0)?;
    println!(
        "bench: {}: {} symbols, a frame every {} ms per symbol, book depth {}, {} s (simulator :{gw}, metrics :{http_port})",
        c.name, c.symbols, c.frame_interval_ms, c.book_depth, c.seconds
    );
    // Streaming: the daemon counts rows in ClickHouse.
    let ready_by = Instant::now() + Duration::from_secs(90);
    loop {
        if daemon.exited() {
            bail!(
                "the daemon exited at start; see {}",
                dir.join("daemon-0.log").display()
            );
        }
        if let Some(s) = scrape(&http, http_port).await
            && counters(&s).clickhouse > 0.0
        {
            break;
        }
        if Instant::now() > ready_by {
            bail!(
                "no rows reached ClickHouse within 90 s; see {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if c.engine {
        let topic = format!("{prefix}l2_market_data");
        let parts = crate::measure::partitions(&env.kafka, &topic)?.len().max(1);
        ex.engine_settings = engine_settings(parts, LIVE_ENGINE_BLOCK);
        create_engine(
            env,
            engine_db,
            &topic,
            &format!("{prefix}engine"),
            &ex.engine_settings,
        )
        .await?;
    }
    let fresh = if c.ws_drops > 0 {
        Some(crate::measure::FreshWatch::start(&env.kafka, prefix)?)
    } else {
        None
    };
    let mut window = Window::default();
    let run_start = Instant::now();
    let run_start_ns = marketlane_protocol::now_ns();

    // The queryable poller.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tables: Vec<(&'static str, String, &'static str)> = vec![
        ("marketlane l2", format!("`{db}`.l2_market_data"), "l2_time"),
        (
            "marketlane tick",
            format!("`{db}`.tick_market_data"),
            "tick_time",
        ),
    ];
    if c.engine {
        tables.push((
            "engine l2",
            format!("`{engine_db}`.l2_market_data"),
            "l2_time",
        ));
    }
    let poller = {
        let ch = env.ch.clone();
        let stop = stop.clone();
        let tables = tables.clone();
        tokio::spawn(async move {
            let mut prev: HashMap<&'static str, (i64, HashMap<i64, u64>)> = HashMap::new();
            let mut seen: HashMap<&'static str, Vec<Seen>> = HashMap::new();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tick = Instant::now();
                for (label, table, col) in &tables {
                    let at = marketlane_protocol::now_ns();
                    let now = match ch.slots(table, col, run_start_ns).await {
                        Ok(now) => now,
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("bench: queryable poll of {table}: {e}");
                            }
                            errors += 1;
                            continue;
                        }
                    };
                    if let Some((prev_at, before)) = prev.get(label) {
                        let new = chq::appeared(before, &now);
                        seen.entry(label).or_default().extend(chq::observe(
                            &new,
                            *prev_at,
                            at,
                            run_start_ns,
                        ));
                    }
                    prev.insert(label, (at, now));
                }
                tokio::time::sleep(chq::POLL.saturating_sub(tick.elapsed())).await;
            }
            seen
        })
    };

    let mut samples = Vec::new();
    let mut recovery = Recovery::default();
    let first = scrape(&http, http_port).await.unwrap_or_default();
    let mut last = counters(&first);
    let mut last_scrape = first;
    let mut last_at = Instant::now();
    let mut last_daemon = procs::usage(daemon.pid()).unwrap_or_default();
    let mut last_sim = procs::usage(sim.pid()).unwrap_or_default();
    let mut last_machine = procs::machine_cpu().unwrap_or_default();
    let mut last_engine = 0u64;
    let mut hist_start: Option<Scrape> = None;
    let steady_from = c.warmup as f64;
    let steady_to = c.seconds as f64;
    // Faults go after the steady window, spaced 12 s apart.
    let faults_at: Vec<(f64, bool)> = (0..c.ws_drops)
        .map(|i| (steady_to + 4.0 + 12.0 * f64::from(i), false))
        .chain((0..c.pod_kills).map(|i| (steady_to + 4.0 + 12.0 * f64::from(c.ws_drops + i), true)))
        .collect();
    let outage_at = steady_from + 5.0;
    let end = faults_at.last().map_or(steady_to, |(t, _)| t + 12.0);
    let mut next_fault = 0;
    let mut kills = 0;
    let mut gap_before: Option<(f64, f64)> = None;
    let mut hist: HashMap<(String, String), Buckets> = HashMap::new();

    while run_start.elapsed().as_secs_f64() < end {
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(last_at.elapsed())).await;
        let t = run_start.elapsed().as_secs_f64();
        if daemon.exited() {
            bail!("the daemon exited; see {}", dir.display());
        }
        if sim.exited() {
            bail!(
                "the simulator exited; see {}",
                dir.join("simulator.log").display()
            );
        }
        if let Some(p) = proxy {
            let down = t >= outage_at && t < outage_at + c.outage_secs as f64;
            p.set_up(!down);
        }
        if let Some(&(at, kill)) = faults_at.get(next_fault)
            && t >= at
        {
            next_fault += 1;
            if kill {
                kills += 1;
                let r =
                    pod_kill(env, &mut daemon, config_path, dir, kills, http_port, &http).await?;
                println!(
                    "bench: {}: SIGKILL → frames again {:.2} s, Kafka {:.2} s, ClickHouse {:.2} s",
                    c.name, r.0, r.1, r.2
                );
                recovery.kill_frames.push(r.0);
                recovery.kill_kafka.push(r.1);
                recovery.kill_clickhouse.push(r.2);
                last = Counters::default();
                last_scrape = Scrape::default();
                last_daemon = Usage::default();
            } else {
                if gap_before.is_none()
                    && let Some(s) = scrape(&http, http_port).await
                {
                    gap_before = Some((
                        s.sum("marketlane_ws_gap_seconds_sum", |_| true),
                        s.sum("marketlane_ws_gap_seconds_count", |_| true),
                    ));
                }
                let (r, fresh_s) = ws_drop(gw, http_port, &http, fresh.as_ref()).await?;
                println!(
                    "bench: {}: websocket drop → frames again {r:.2} s, fresh market data in Kafka {}",
                    c.name,
                    fresh_s.map_or("–".into(), |x| format!("{x:.2} s"))
                );
                recovery.ws_resume.push(r);
                ex.ws_fresh.push(fresh_s);
            }
            last_at = Instant::now();
            continue;
        }
        let Some(s) = scrape(&http, http_port).await else {
            continue;
        };
        let now = counters(&s);
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        last_at = Instant::now();
        let rate = |a: f64, b: f64| if a >= b { (a - b) / dt } else { a / dt };
        let du = procs::usage(daemon.pid()).unwrap_or_default();
        let su = procs::usage(sim.pid()).unwrap_or_default();
        let mc = procs::machine_cpu().unwrap_or_default();
        let engine_rows = if c.engine {
            env.ch
                .count(&format!("`{engine_db}`.l2_market_data"))
                .await
                .unwrap_or(last_engine)
        } else {
            0
        };
        let p99 = |sink: &str| {
            sink_buckets(&s, sink)
                .since(&sink_buckets(&last_scrape, sink))
                .quantile(0.99)
        };
        let sample = Sample {
            t,
            frames: rate(now.frames, last.frames),
            normalized: rate(now.normalized, last.normalized),
            kafka: rate(now.kafka, last.kafka),
            clickhouse: rate(now.clickhouse, last.clickhouse),
            calculator_rows: rate(now.calculator_rows, last.calculator_rows),
            redis_writes: rate(now.redis_writes, last.redis_writes),
            engine: engine_rows.saturating_sub(last_engine) as f64 / dt,
            lag: now.lag,
            rss_mb: du.rss_bytes as f64 / 1048576.0,
            daemon_cpu: 100.0 * (du.cpu_secs - last_daemon.cpu_secs).max(0.0) / dt,
            sim_cpu: 100.0 * (su.cpu_secs - last_sim.cpu_secs).max(0.0) / dt,
            machine_busy: 100.0 * (mc.0 - last_machine.0) / (mc.1 - last_machine.1).max(1e-3),
            p99_kafka: p99("kafka"),
            p99_clickhouse_ack: p99("clickhouse"),
            p99_redis: p99("redis"),
        };
        if t < steady_to + 1.0 {
            println!(
                "t={:>5.1}s frames/s={:<7.0} normalized/s={:<7.0} kafka/s={:<7.0} clickhouse/s={:<7.0} engine/s={:<7.0} calc/s={:<6.0} lag={:<7.0} rss={:.0}MB cpu daemon={:.0}% sim={:.0}% machine={:.0}%",
                sample.t,
                sample.frames,
                sample.normalized,
                sample.kafka,
                sample.clickhouse,
                sample.engine,
                sample.calculator_rows,
                sample.lag,
                sample.rss_mb,
                sample.daemon_cpu,
                sample.sim_cpu,
                sample.machine_busy
            );
        }
        if t >= steady_from && hist_start.is_none() {
            hist_start = Some(s.clone());
            window
                .start(env, db, daemon.pid(), sim.pid(), c.profile, dir)
                .await;
        }
        if t >= steady_to - 0.5 && window.end.is_none() && hist_start.is_some() {
            window.finish(env, db, daemon.pid(), sim.pid()).await;
        }
        if proxy.is_some() && t >= outage_at {
            ex.rss_mb_max_outage = ex.rss_mb_max_outage.max(sample.rss_mb);
        }
        if t <= steady_to + 0.5 {
            if let Some(h0) = &hist_start {
                for sink in ["kafka", "clickhouse", "redis"] {
                    for cat in [
                        "tick_market_data",
                        "l2_market_data",
                        "indicators_market_data",
                    ] {
                        let keep =
                            |l: &crate::prom::Labels| l.is("sink", sink) && l.is("category", cat);
                        hist.insert(
                            (cat.to_string(), sink.to_string()),
                            s.buckets(LATENCY, keep).since(&h0.buckets(LATENCY, keep)),
                        );
                    }
                }
            }
            samples.push(sample);
        }
        last = now;
        last_scrape = s;
        last_daemon = du;
        last_sim = su;
        last_machine = mc;
        last_engine = engine_rows;
    }
    if let Some((sum0, n0)) = gap_before
        && let Some(s) = scrape(&http, http_port).await
    {
        let n = s.sum("marketlane_ws_gap_seconds_count", |_| true) - n0;
        if n > 0.0 {
            recovery.ws_gap_daemon =
                Some((s.sum("marketlane_ws_gap_seconds_sum", |_| true) - sum0) / n);
        }
    }
    if window.end.is_none() && hist_start.is_some() {
        window.finish(env, db, daemon.pid(), sim.pid()).await;
    }
    if c.ws_drops == 0 && c.pod_kills == 0 {
        // Rows of the window still have this long to arrive before they count as missing.
        tokio::time::sleep(Duration::from_secs(DRAIN_GRACE_S)).await;
        window.missing(env, db, prefix, &mut ex).await;
    }
    if proxy.is_some() {
        ex.outage = Some(
            crate::measure::drain_after_outage(env, db, http_port, &daemon, c.outage_secs, &mut ex)
                .await,
        );
    }
    window.into_extra(&mut ex);
    stop.store(true, Ordering::Relaxed);
    let seen = poller.await.unwrap_or_default();
    sim.stop(Duration::from_secs(10));
    daemon.stop(Duration::from_secs(30));
    Ok(LiveResult {
        config: c.clone(),
        samples,
        seen,
        hist,
        recovery,
        steady: (steady_from, steady_to),
        dir: dir.to_path_buf(),
        extra: ex,
    })
}

/// `drop_tcp` at the simulator; the time until the daemon counts frames again after it saw the
/// drop (its reconnect counter moved).
async fn ws_drop(
    gw: u16,
    http_port: u16,
    http: &reqwest::Client,
    fresh: Option<&crate::measure::FreshWatch>,
) -> anyhow::Result<(f64, Option<f64>)> {
    let before = scrape(http, http_port)
        .await
        .map(|s| counters(&s))
        .unwrap_or_default();
    let at = Instant::now();
    let at_ns = marketlane_protocol::now_ns();
    http.post(format!("http://127.0.0.1:{gw}/sim/fault"))
        .body(r#"{"kind":"drop_tcp"}"#)
        .header("content-type", "application/json")
        .send()
        .await?
        .error_for_status()?;
    let mut reconnected_frames: Option<f64> = None;
    while at.elapsed() < Duration::from_secs(30) {
        if let Some(s) = scrape(http, http_port).await {
            let c = counters(&s);
            match reconnected_frames {
                None if c.reconnects > before.reconnects => reconnected_frames = Some(c.frames),
                Some(f) if c.frames > f => {
                    let frames = at.elapsed().as_secs_f64();
                    let Some(w) = fresh else {
                        return Ok((frames, None));
                    };
                    // The first row in Kafka whose event time is after the drop: market data
                    // resumed (a snapshot re-sent after the reconnect carries older times).
                    while at.elapsed() < Duration::from_secs(30) {
                        if w.newest_event_ns.load(Ordering::Relaxed) > at_ns {
                            return Ok((frames, Some(at.elapsed().as_secs_f64())));
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    return Ok((frames, None));
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no data within 30 s of a websocket drop")
}

/// SIGKILL of the daemon and an immediate start of a new one (what the pod's restart does,
/// without the kubelet's delay): seconds until the new process counts frames, has rows
/// acknowledged by Kafka, and by ClickHouse.
async fn pod_kill(
    env: &Env,
    daemon: &mut Proc,
    config: &Path,
    dir: &Path,
    n: u32,
    http_port: u16,
    http: &reqwest::Client,
) -> anyhow::Result<(f64, f64, f64)> {
    let at = Instant::now();
    daemon.kill_now();
    *daemon = spawn_daemon(env, config, dir, n)?;
    let (mut frames, mut kafka) = (None, None);
    while at.elapsed() < Duration::from_secs(60) {
        if let Some(s) = scrape(http, http_port).await {
            let c = counters(&s);
            let t = at.elapsed().as_secs_f64();
            if frames.is_none() && c.frames > 0.0 {
                frames = Some(t);
            }
            if kafka.is_none() && c.kafka > 0.0 {
                kafka = Some(t);
            }
            if c.clickhouse > 0.0 {
                return Ok((frames.unwrap_or(t), kafka.unwrap_or(t), t));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "the restarted daemon did not stream within 60 s; see {}",
        dir.display()
    )
}
