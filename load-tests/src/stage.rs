//! The Kafka → ClickHouse stage on a pre-filled topic, marketlane's writer and ClickHouse's
//! Kafka engine one after the other on the same topic and server: rows/s of each, and the CPU
//! each needed (the daemon's and the ClickHouse server's).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::live::{Env, create_engine, drop_engine};
use crate::procs::{self, Proc};

#[derive(Debug, Clone, Copy, Default)]
pub struct Drain {
    /// Rows over (last row queryable − consumption started).
    pub rows_per_sec: f64,
    /// Rows over (last row − first row queryable): the rate once it streams.
    pub sustained: f64,
    /// CPU seconds of the ClickHouse server during the drain.
    pub ch_cpu: f64,
    /// CPU seconds of the daemon (zero for the engine).
    pub daemon_cpu: f64,
    pub secs: f64,
    /// Distinct `row_id` with `FINAL` once all rows were counted (an analyst's count).
    pub distinct: u64,
}

#[derive(Debug, Clone, Default)]
pub struct StageRun {
    pub rows: u64,
    pub produce_rows_per_sec: f64,
    pub marketlane: Drain,
    pub engine: Drain,
    pub engine_first: bool,
    /// The engine's table settings.
    pub engine_settings: String,
}

impl StageRun {
    /// CPU seconds per million rows: daemon, ClickHouse during marketlane's drain, ClickHouse
    /// during the engine's.
    pub fn cpu_per_million(&self) -> (f64, f64, f64) {
        let m = self.rows.max(1) as f64 / 1e6;
        (
            self.marketlane.daemon_cpu / m,
            self.marketlane.ch_cpu / m,
            self.engine.ch_cpu / m,
        )
    }
}

async fn distinct(env: &Env, table: &str) -> u64 {
    env.ch
        .query(&format!("SELECT count(DISTINCT row_id) FROM {table} FINAL"))
        .await
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn ch_pid() -> Option<u32> {
    crate::measure::clickhouse_pid()
}

/// `kafka_max_block_size` of the engine on the backlog: ClickHouse's documentation sets its
/// default to `max_insert_block_size` (1,048,576 rows), the block a backlog fills at once.
pub const STAGE_ENGINE_BLOCK: u64 = 1_048_576;

fn cpu(pid: Option<u32>) -> f64 {
    pid.and_then(procs::usage).map_or(0.0, |u| u.cpu_secs)
}

/// Polls `table` until it holds `rows`; returns (first row seen, all rows seen) since `start`.
async fn wait_rows(
    env: &Env,
    table: &str,
    rows: u64,
    start: Instant,
    timeout: Duration,
) -> anyhow::Result<(f64, f64)> {
    let mut first = None;
    loop {
        let n = env.ch.count(table).await.unwrap_or(0);
        let t = start.elapsed().as_secs_f64();
        if n > 0 && first.is_none() {
            first = Some(t);
        }
        if n >= rows {
            return Ok((first.unwrap_or(t), t));
        }
        if start.elapsed() > timeout {
            bail!("{table} holds {n} of {rows} rows after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn drain(rows: u64, first: f64, last: f64, ch_cpu: f64, daemon_cpu: f64) -> Drain {
    Drain {
        rows_per_sec: rows as f64 / last.max(1e-3),
        sustained: rows as f64 / (last - first).max(1e-3),
        ch_cpu,
        daemon_cpu,
        secs: last,
        distinct: 0,
    }
}

async fn engine_drain(
    env: &Env,
    prefix: &str,
    topic: &str,
    rows: u64,
    settings: &str,
) -> anyhow::Result<Drain> {
    let engine_db = format!("{}engine", prefix.trim_end_matches('_'));
    let chp = ch_pid();
    let cpu0 = cpu(chp);
    let group = format!("{prefix}engine");
    let (bootstrap, t, g) = (env.kafka.clone(), topic.to_string(), group.clone());
    tokio::task::spawn_blocking(move || crate::kafka::commit_beginning(&bootstrap, &g, &t))
        .await??;
    let start = Instant::now();
    let r = async {
        create_engine(env, &engine_db, topic, &group, settings).await?;
        wait_rows(
            env,
            &format!("`{engine_db}`.l2_market_data"),
            rows,
            start,
            Duration::from_secs(600),
        )
        .await
    }
    .await;
    let ch_cpu = cpu(chp) - cpu0;
    let n = distinct(env, &format!("`{engine_db}`.l2_market_data")).await;
    drop_engine(&env.ch, &engine_db).await;
    let (first, last) = r?;
    Ok(Drain {
        distinct: n,
        ..drain(rows, first, last, ch_cpu, 0.0)
    })
}

async fn marketlane_drain(
    env: &Env,
    dir: &Path,
    prefix: &str,
    rows: u64,
    n: usize,
) -> anyhow::Result<Drain> {
    let db = format!("{}ml", prefix.trim_end_matches('_'));
    let http_port = procs::free_port()?;
    let config = dir.join(format!("writer-{n}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"instance = "bench-writer"
roles = ["writer"]
schemas_dir = "{schemas}"
[http]
listen = "127.0.0.1:{http_port}"
[control]
socket = "{sock}"
[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"
[clickhouse]
url = "{ch}"
database = "{db}"
[writer]
categories = ["l2_market_data"]
group_id = "{prefix}writer"
"#,
            schemas = procs::repo_root().join("schemas").canonicalize()?.display(),
            sock = dir.join(format!("writer-{n}.sock")).display(),
            kafka = env.kafka,
            ch = env.ch_url,
        ),
    )?;
    let chp = ch_pid();
    let cpu0 = cpu(chp);
    let start = Instant::now();
    let mut daemon = Proc::spawn(
        &env.bin,
        "writer",
        &[
            "run".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        &dir.join(format!("writer-{n}.log")),
    )?;
    let pid = daemon.pid();
    let table = format!("`{db}`.l2_market_data");
    // The daemon creates the table: count() fails until then, which reads as 0 rows.
    let r = wait_rows(env, &table, rows, start, Duration::from_secs(600)).await;
    let daemon_cpu = cpu(Some(pid));
    let ch_cpu = cpu(chp) - cpu0;
    daemon.stop(Duration::from_secs(30));
    let uniq = distinct(env, &table).await;
    for d in [db.clone(), format!("{db}_state")] {
        let _ = env
            .ch
            .query(&format!("DROP DATABASE IF EXISTS `{d}`"))
            .await;
    }
    let (first, last) = r?;
    Ok(Drain {
        distinct: uniq,
        ..drain(rows, first, last, ch_cpu, daemon_cpu)
    })
}

/// One stage run: a fresh topic of `rows` l2 rows, drained by both, in the given order.
pub async fn run(env: &Env, rows: u64, n: usize, engine_first: bool) -> anyhow::Result<StageRun> {
    let dir = env.work.join("stage");
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("bench{}s{n}_", env.stamp);
    let topic = format!("{prefix}l2_market_data");
    let schemas = marketlane_protocol::SchemaSet::load_dir(&procs::repo_root().join("schemas"))?;
    let schema = schemas.get("l2_market_data")?.clone();
    let result = async {
        crate::kafka::create_topics(&env.kafka, std::slice::from_ref(&topic), 3).await?;
        let (bootstrap, t) = (env.kafka.clone(), topic.clone());
        let produce = tokio::task::spawn_blocking(move || {
            crate::kafka::prefill_l2(&bootstrap, &t, &schema, rows)
        })
        .await??;
        println!("bench: stage {n}: {rows} l2 rows in {topic} ({produce:.0} rows/s produced)");
        let parts = crate::measure::partitions(&env.kafka, &topic)?.len().max(1);
        let mut run = StageRun {
            rows,
            produce_rows_per_sec: produce,
            engine_first,
            engine_settings: crate::live::engine_settings(parts, STAGE_ENGINE_BLOCK),
            ..Default::default()
        };
        for engine in [engine_first, !engine_first] {
            if engine {
                run.engine =
                    engine_drain(env, &prefix, &topic, rows, &run.engine_settings).await?;
                println!(
                    "bench: stage {n}: Kafka engine  {:>8.0} rows/s ({:.0} once streaming), {:.1} s, ClickHouse CPU {:.1} s",
                    run.engine.rows_per_sec, run.engine.sustained, run.engine.secs, run.engine.ch_cpu
                );
            } else {
                run.marketlane = marketlane_drain(env, &dir, &prefix, rows, n).await?;
                println!(
                    "bench: stage {n}: marketlane    {:>8.0} rows/s ({:.0} once streaming), {:.1} s, ClickHouse CPU {:.1} s, daemon CPU {:.1} s",
                    run.marketlane.rows_per_sec, run.marketlane.sustained, run.marketlane.secs,
                    run.marketlane.ch_cpu, run.marketlane.daemon_cpu
                );
            }
        }
        Ok::<_, anyhow::Error>(run)
    }
    .await;
    if let Err(e) = crate::kafka::delete_topics_with_prefix(&env.kafka, &prefix).await {
        eprintln!("bench: cleanup of topics {prefix}*: {e}");
    }
    result
}
