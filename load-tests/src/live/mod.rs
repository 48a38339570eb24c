//! A live run: the simulator at a configured rate → the daemon as production runs it, three
//! processes (connector, writer, calculator: [`daemons`]) → Kafka, ClickHouse, Redis, with
//! ClickHouse's Kafka engine reading the same l2 topic into a same-shape table on the same
//! server. Samples every second: rows/s per stage, each process's RSS and CPU, the latency
//! histograms; polls the tables for event → queryable; injects the websocket drop (at the
//! simulator) and the pod kill (of the connector) when asked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::clickhouse::{self as chq, Ch, Seen};
use crate::measure::{Extra, Window};
use crate::procs::{self, Proc};
use crate::prom::{Buckets, Scrape};

mod config;
pub mod daemons;
mod faults;
use daemons::{Counters, Daemons, PerRole, ROLES, Role};

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
    /// `perf record -g` of the connector, the writer and the calculator processes over the
    /// steady window.
    pub profile: bool,
    /// A ClickHouse outage of this many seconds (0: none), 5 s into the steady window.
    pub outage_secs: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub t: f64,
    /// The stage counters' rates over the last second (rows or frames per second; `lag`, the
    /// writer's consumer lag, as it stands).
    pub rates: Counters,
    pub engine: f64,
    /// The largest VmRSS of the three processes (MB).
    pub rss_mb: f64,
    /// CPU % of the three processes together (100% = one core).
    pub daemon_cpu: f64,
    /// Per process, in [`ROLES`] order: VmRSS (MB) and CPU %.
    pub role_rss_mb: PerRole<f64>,
    pub role_cpu: PerRole<f64>,
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
    /// SIGKILL of the connector → the new connector counts frames again (s).
    pub kill_frames: Vec<f64>,
    /// SIGKILL → the new connector has rows acknowledged by Kafka (s).
    pub kill_kafka: Vec<f64>,
    /// SIGKILL → the writer acknowledged rows from ClickHouse that came after the new
    /// connector's first Kafka acknowledgement (s).
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

pub(crate) const LATENCY: &str = "marketlane_event_to_sink_latency_seconds";
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

pub async fn run(env: &Env, c: &LiveConfig) -> anyhow::Result<LiveResult> {
    let dir = env.work.join(&c.name);
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("bench{}{}_", env.stamp, c.name);
    let db = format!("bench_{}_{}", env.stamp, c.name);
    let engine_db = format!("{db}_engine");
    let gw = procs::free_port()?;
    let proxy = if c.outage_secs > 0 {
        Some(crate::outage::Proxy::start(crate::outage::host_port(&env.ch_url)).await?)
    } else {
        None
    };
    let ch_url = proxy.as_ref().map_or(env.ch_url.clone(), |p| {
        format!("http://127.0.0.1:{}", p.port)
    });
    let shared = config::Shared {
        prefix: prefix.clone(),
        db: db.clone(),
        gw,
        ch_url,
    };
    let result = run_inner(env, c, &dir, &shared, &engine_db, proxy.as_ref()).await;
    drop_engine(&env.ch, &engine_db).await;
    drop_databases(&env.ch, &db).await;
    match crate::kafka::delete_topics_with_prefix(&env.kafka, &prefix).await {
        Ok(n) => println!("bench: {}: dropped {n} topics and the databases", c.name),
        Err(e) => eprintln!("bench: cleanup of topics {prefix}*: {e}"),
    }
    result
}

async fn run_inner(
    env: &Env,
    c: &LiveConfig,
    dir: &std::path::Path,
    shared: &config::Shared,
    engine_db: &str,
    proxy: Option<&crate::outage::Proxy>,
) -> anyhow::Result<LiveResult> {
    let (prefix, db, gw) = (shared.prefix.as_str(), shared.db.as_str(), shared.gw);
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
    let mut daemons = Daemons::start(env, c, dir, shared, &http).await?;
    println!(
        "bench: {}: {} symbols, a frame every {} ms per symbol, book depth {}, {} s (simulator :{gw}, metrics {})",
        c.name,
        c.symbols,
        c.frame_interval_ms,
        c.book_depth,
        c.seconds,
        daemons
            .list
            .iter()
            .map(|d| format!("{} :{}", d.role.name(), d.http))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Streaming: the writer counts rows in ClickHouse.
    let ready_by = Instant::now() + Duration::from_secs(90);
    loop {
        daemons.check(dir)?;
        if let Some(s) = daemons.scrape(&http, Role::Writer).await
            && daemons::counters(Role::Writer, &s).clickhouse > 0.0
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
    let (first, _) = daemons.scrape_all(&http).await;
    let mut last = daemons::counters_all(&first);
    let mut last_scrape = first;
    let mut last_at = Instant::now();
    let mut last_daemon = daemons.usage();
    let mut last_sim = procs::usage(sim.pid()).unwrap_or_default();
    let mut last_machine = procs::machine_cpu().unwrap_or_default();
    let mut last_engine = 0u64;
    let mut hist_start: Option<PerRole<Scrape>> = None;
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
    let mut gap_before: Option<(f64, f64)> = None;
    let mut hist: HashMap<(String, String), Buckets> = HashMap::new();

    while run_start.elapsed().as_secs_f64() < end {
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(last_at.elapsed())).await;
        let t = run_start.elapsed().as_secs_f64();
        daemons.check(dir)?;
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
                let r = faults::pod_kill(env, &mut daemons, dir, &http).await?;
                println!(
                    "bench: {}: SIGKILL of the connector → frames again {:.2} s, Kafka {:.2} s, ClickHouse {:.2} s",
                    c.name, r.0, r.1, r.2
                );
                recovery.kill_frames.push(r.0);
                recovery.kill_kafka.push(r.1);
                recovery.kill_clickhouse.push(r.2);
                // The new connector's counters and CPU start from 0.
                let i = Role::Connector.index();
                last[i] = Default::default();
                last_scrape[i] = Scrape::default();
                last_daemon[i] = Default::default();
            } else {
                if gap_before.is_none()
                    && let Some(s) = daemons.scrape(&http, Role::Connector).await
                {
                    gap_before = Some((
                        s.sum("marketlane_ws_gap_seconds_sum", |_| true),
                        s.sum("marketlane_ws_gap_seconds_count", |_| true),
                    ));
                }
                let (r, fresh_s) = faults::ws_drop(gw, &daemons, &http, fresh.as_ref()).await?;
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
        let (s, all) = daemons.scrape_all(&http).await;
        if !all {
            continue;
        }
        let now = daemons::counters_all(&s);
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        last_at = Instant::now();
        let r = daemons::rates(&now, &last, dt);
        let du = daemons.usage();
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
            daemons::buckets_since(&s, &last_scrape, LATENCY, |l| l.is("sink", sink)).quantile(0.99)
        };
        let role_rss_mb = du.map(|u| u.rss_bytes as f64 / 1048576.0);
        let role_cpu = ROLES.map(|r| {
            let i = r.index();
            100.0 * (du[i].cpu_secs - last_daemon[i].cpu_secs).max(0.0) / dt
        });
        let sample = Sample {
            t,
            rates: r,
            engine: engine_rows.saturating_sub(last_engine) as f64 / dt,
            rss_mb: role_rss_mb.iter().copied().fold(0.0, f64::max),
            daemon_cpu: role_cpu.iter().sum(),
            role_rss_mb,
            role_cpu,
            sim_cpu: 100.0 * (su.cpu_secs - last_sim.cpu_secs).max(0.0) / dt,
            machine_busy: 100.0 * (mc.0 - last_machine.0) / (mc.1 - last_machine.1).max(1e-3),
            p99_kafka: p99("kafka"),
            p99_clickhouse_ack: p99("clickhouse"),
            p99_redis: p99("redis"),
        };
        if t < steady_to + 1.0 {
            println!(
                "t={:>5.1}s frames/s={:<7.0} normalized/s={:<7.0} kafka/s={:<7.0} clickhouse/s={:<7.0} engine/s={:<7.0} calc/s={:<6.0} lag={:<7.0} cpu/rss conn={:.0}%/{:.0}MB writer={:.0}%/{:.0}MB calc={:.0}%/{:.0}MB sim={:.0}% machine={:.0}%",
                sample.t,
                sample.rates.frames,
                sample.rates.normalized,
                sample.rates.kafka,
                sample.rates.clickhouse,
                sample.engine,
                sample.rates.calculator_rows,
                sample.rates.lag,
                sample.role_cpu[0],
                sample.role_rss_mb[0],
                sample.role_cpu[1],
                sample.role_rss_mb[1],
                sample.role_cpu[2],
                sample.role_rss_mb[2],
                sample.sim_cpu,
                sample.machine_busy
            );
        }
        if t >= steady_from && hist_start.is_none() {
            hist_start = Some(s.clone());
            window
                .start(env, db, daemons.pids(), sim.pid(), c.profile, dir)
                .await;
        }
        if t >= steady_to - 0.5 && window.end.is_none() && hist_start.is_some() {
            window.finish(env, db, daemons.pids(), sim.pid()).await;
        }
        if proxy.is_some() && t >= outage_at {
            ex.rss_mb_max_outage = ex
                .rss_mb_max_outage
                .max(sample.role_rss_mb[Role::Writer.index()]);
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
                            daemons::buckets_since(&s, h0, LATENCY, keep),
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
        && let Some(s) = daemons.scrape(&http, Role::Connector).await
    {
        let n = s.sum("marketlane_ws_gap_seconds_count", |_| true) - n0;
        if n > 0.0 {
            recovery.ws_gap_daemon =
                Some((s.sum("marketlane_ws_gap_seconds_sum", |_| true) - sum0) / n);
        }
    }
    if window.end.is_none() && hist_start.is_some() {
        window.finish(env, db, daemons.pids(), sim.pid()).await;
    }
    if c.ws_drops == 0 && c.pod_kills == 0 {
        // Rows of the window still have this long to arrive before they count as missing.
        tokio::time::sleep(Duration::from_secs(DRAIN_GRACE_S)).await;
        window.missing(env, db, prefix, &mut ex).await;
    }
    if proxy.is_some() {
        // A live source keeps the writer's lag above 0 and the counts apart; stop it, so that
        // what Kafka acknowledged can be drained and counted against ClickHouse.
        sim.stop(Duration::from_secs(10));
        ex.outage = Some(
            crate::measure::drain_after_outage(env, db, &daemons, c.outage_secs, &mut ex).await,
        );
    }
    window.into_extra(&mut ex);
    stop.store(true, Ordering::Relaxed);
    let seen = poller.await.unwrap_or_default();
    sim.stop(Duration::from_secs(10));
    daemons.stop(Duration::from_secs(30));
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
