//! `marketlane-bench`: the load driver of marketlane. It runs the simulator at a
//! configured rate against the daemon and the real local stack, measures rows/s per stage,
//! latencies, RSS and CPU, recovery times, and ClickHouse's own Kafka engine on the same topic
//! and server, and writes a markdown report with PNG plots to `load-tests/results/<run>/`.
//!
//! Figures are printed and written, never asserted: see `load-tests/README.md`.

mod clickhouse;
mod kafka;
mod live;
mod measure;
mod outage;
mod procs;
mod prom;
mod report;
mod stage;
mod summary;
mod takeover;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

use crate::live::{Env, LiveConfig};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "marketlane-bench",
    about = "marketlane load tests and benchmarks"
)]
pub struct Args {
    /// Short runs: one stage run, one drop, one kill and one two-pod takeover.
    #[arg(long)]
    pub quick: bool,
    /// The release binary.
    #[arg(long, env = "MARKETLANE_BIN")]
    pub bin: Option<PathBuf>,
    /// Synthetic symbols SYM0001… streamed by the simulator, each with its book ladder.
    #[arg(long, default_value_t = 1000)]
    pub symbols: u32,
    /// Frame interval per symbol (ms) of the latency run. Default: after the `max` run, the
    /// interval that offers 50,000 rows/s or 90% of the sustainable maximum if that is lower,
    /// found by short calibration runs;
    /// 400 ms (≈50,000 rows/s at 1,000 symbols and depth 5) without it.
    #[arg(long)]
    pub rate_interval_ms: Option<u64>,
    /// Frame interval per symbol (ms) of the run that pushes as hard as the simulator can.
    #[arg(long, default_value_t = 50)]
    pub max_interval_ms: u64,
    #[arg(long, default_value_t = 5)]
    pub book_depth: usize,
    #[arg(long, default_value_t = 0.6)]
    pub trade_probability: f64,
    /// Length of the steady window of each live run (s); default 60, 25 with --quick.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Rows pre-filled into the topic of each stage run; default 2,000,000, 500,000 with --quick.
    #[arg(long)]
    pub stage_rows: Option<u64>,
    /// Stage runs (writer vs Kafka engine, order alternating); default 3, 1 with --quick.
    #[arg(long)]
    pub stage_runs: Option<usize>,
    /// Websocket drops and pod kills of the recovery run, and pod kills of the two-pod
    /// takeover; default 3, 1 with --quick.
    #[arg(long)]
    pub faults: Option<u32>,
    /// Synthetic symbols of the two-pod takeover (one pod's line budget is 100: the survivor
    /// must be able to hold them all).
    #[arg(long, default_value_t = 80)]
    pub takeover_symbols: u32,
    /// Cuts of one pod's link in the two-pod takeover (network namespaces, as root; 0 skips).
    #[arg(long, default_value_t = 5)]
    pub takeover_cuts: u32,
    /// Websocket drops of the recovery run; default 10, 3 with --quick.
    #[arg(long)]
    pub ws_drops: Option<u32>,
    /// Seconds of the ClickHouse outage of the `outage` part; default 60, 20 with --quick.
    #[arg(long)]
    pub outage_secs: Option<u64>,
    /// `perf record -g` of the connector, the writer and the calculator processes, each apart,
    /// over the `rate` run's steady window; the top of each `perf report --no-children` goes
    /// into the report.
    #[arg(long)]
    pub profile: bool,
    /// Run on a tree with uncommitted changes (the report and summary.json say so).
    #[arg(long)]
    pub allow_dirty: bool,
    /// Which parts to run (comma-separated): max, rate, recovery, outage, stage, takeover
    /// (run in that order: `max` finds the sustainable rate the latency run offers).
    #[arg(
        long,
        default_value = "max,rate,recovery,outage,stage,takeover",
        value_delimiter = ','
    )]
    pub parts: Vec<String>,
    /// Leave the Kafka engine out of the live runs.
    #[arg(long)]
    pub no_engine: bool,
    #[arg(long, env = "ML_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka: String,
    #[arg(
        long,
        env = "ML_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse: String,
    /// A second daemon binary, e.g. a copy of the release build from before a change: the
    /// `rate` and `stage` parts then run with it (`before`) and with `--bin` (`after`),
    /// alternately, `--rounds` times, and the report compares the two side by side.
    #[arg(long)]
    pub compare_bin: Option<PathBuf>,
    /// Rounds of the comparison (`before` then `after` in even rounds, the other way round in
    /// odd ones).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Where the report goes (a directory per run is made inside).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn default_bin() -> PathBuf {
    // As the Makefile: CARGO_TARGET_DIR, else the shared cache dir, else the clone's target/.
    let shared = PathBuf::from("/var/cache/marketlane/target");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            if shared.is_dir() {
                shared
            } else {
                procs::repo_root().join("target")
            }
        });
    target.join("release/marketlane")
}

const DEFAULT_RATE_INTERVAL_MS: u64 = 400;
/// Offered rate of the latency run when the lane sustains it.
const LATENCY_RATE: f64 = 50_000.0;
/// Steady seconds of a run that measures the rate a frame interval offers.
const CALIBRATION_SECONDS: u64 = 10;
/// Calibration runs at most before the latency run.
const CALIBRATIONS: usize = 3;

/// Mean rows normalized per second over a run's steady window.
fn normalized_rate(r: &live::LiveResult) -> Option<f64> {
    let v: Vec<f64> = r
        .samples
        .iter()
        .filter(|x| x.t >= r.steady.0 && x.t <= r.steady.1)
        .map(|x| x.rates.normalized)
        .collect();
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    (mean > 0.0).then_some(mean)
}

/// The rate the latency run should offer: 50,000 rows/s, or 90% of the `max` run's sustainable
/// maximum when that is lower (latency is only meaningful at a rate the lane holds), with the
/// reason; `Err` says why there is none.
fn latency_target(max: Option<&live::LiveResult>) -> Result<(f64, String), String> {
    let r = max.filter(|r| r.config.name == "max").ok_or_else(|| {
        "the `max` run did not run, so the lane's sustainable rate is not known".to_string()
    })?;
    let sustained = r
        .extra
        .e2e_rows_per_s()
        .filter(|x| *x > 0.0)
        .ok_or_else(|| "the `max` run gave no sustainable rate".to_string())?;
    Ok(if 0.9 * sustained < LATENCY_RATE {
        (
            0.9 * sustained,
            format!(
                "**below 50,000 rows/s**: the lane sustains {sustained:.0} rows/s (`max` run, simulator → ClickHouse, distinct rows), so the latency run offers 90% of that"
            ),
        )
    } else {
        (
            LATENCY_RATE,
            format!("50,000 rows/s (the lane sustains {sustained:.0} rows/s in the `max` run)"),
        )
    })
}

/// The frame interval that offers `target` rows/s when `interval_ms` offered `rate`: the rate is
/// inversely proportional to the interval, give or take the rows a frame carries.
fn scaled_interval(interval_ms: u64, rate: f64, target: f64) -> u64 {
    ((interval_ms as f64 * rate / target).ceil() as u64).max(1)
}

/// The latency run's frame interval: `--rate-interval-ms`, else the interval that offers
/// [`latency_target`]. The `max` run gives a first guess only (the simulator falls behind at its
/// short interval, and a frame carries more rows the longer the interval, since it holds the
/// fields that changed), so short calibration runs measure the rate the guess offers and scale
/// the interval, until one is within 10% of the target (at most [`CALIBRATIONS`]). Also the
/// sentence saying which.
async fn rate_interval(
    args: &Args,
    env: &Env,
    base: &LiveConfig,
    max: Option<&live::LiveResult>,
) -> anyhow::Result<(u64, String)> {
    if let Some(ms) = args.rate_interval_ms {
        return Ok((ms, format!("`--rate-interval-ms {ms}` (given).")));
    }
    let fallback = |why: &str| {
        (
            DEFAULT_RATE_INTERVAL_MS,
            format!("{DEFAULT_RATE_INTERVAL_MS} ms per symbol (≈50,000 rows/s): {why}."),
        )
    };
    let (target, why) = match latency_target(max) {
        Ok(t) => t,
        Err(e) => return Ok(fallback(&e)),
    };
    let Some((max_ms, max_rate)) =
        max.and_then(|r| Some((r.config.frame_interval_ms, normalized_rate(r)?)))
    else {
        return Ok(fallback("the `max` run normalized no rows"));
    };
    let mut ms = scaled_interval(max_ms, max_rate, target);
    let mut steps = Vec::new();
    for n in 0..CALIBRATIONS {
        let cal = LiveConfig {
            name: format!("calibrate{n}"),
            frame_interval_ms: ms,
            seconds: base.warmup + CALIBRATION_SECONDS,
            engine: false,
            ..base.clone()
        };
        let Some(rate) = normalized_rate(&live::run(env, &cal).await?) else {
            steps.push(format!("{ms} ms: no rows"));
            break;
        };
        steps.push(format!("{ms} ms: {rate:.0} rows/s"));
        if (rate / target - 1.0).abs() <= 0.1 {
            break;
        }
        ms = scaled_interval(ms, rate, target);
    }
    Ok((
        ms,
        format!(
            "{ms} ms per symbol, to offer ≈ {target:.0} rows/s (calibration runs of {CALIBRATION_SECONDS} s, rows normalized per second: {}): {why}.",
            steps.join("; ")
        ),
    ))
}

/// The commit of the tree the driver was built from and whether it has uncommitted changes
/// (tracked files only: new results are untracked).
fn git_state() -> (String, bool) {
    let root = procs::repo_root();
    let root = root.to_str().unwrap_or(".");
    let commit = procs::command_output("git", &["-C", root, "rev-parse", "HEAD"]);
    let dirty = procs::command_output(
        "git",
        &["-C", root, "status", "--porcelain", "--untracked-files=no"],
    );
    (commit, !dirty.is_empty())
}

fn stamp() -> String {
    let secs = marketlane_protocol::now_ns() / 1_000_000_000;
    let days = secs.div_euclid(86_400);
    // Civil date from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let tod = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = args.bin.clone().unwrap_or_else(default_bin);
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --bin marketlane`",
            bin.display()
        );
    }
    let (git_commit, git_dirty) = git_state();
    if git_dirty && !args.allow_dirty {
        bail!(
            "the tree has uncommitted changes: commit them (summary.json names the commit) or pass --allow-dirty"
        );
    }
    let ch = clickhouse::Ch::new(&args.clickhouse);
    let server_version = ch.version().await;
    if server_version.starts_with("unknown") {
        bail!(
            "ClickHouse is not answering at {} (scripts/stack up): {server_version}",
            args.clickhouse
        );
    }
    let run = stamp();
    let profile = if args.quick { "quick" } else { "full" };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| procs::repo_root().join("load-tests/results"))
        .join(format!("{run}-{profile}"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let work = procs::repo_root().join("var/bench").join(&run);
    std::fs::create_dir_all(&work)?;
    let mut env = Env {
        bin,
        kafka: args.kafka.clone(),
        ch,
        ch_url: args.clickhouse.clone(),
        server_version,
        stamp: run.replace('-', ""),
        work,
    };
    let seconds = args.seconds.unwrap_or(if args.quick { 25 } else { 60 });
    let faults = args.faults.unwrap_or(if args.quick { 1 } else { 3 });
    let stage_rows = args
        .stage_rows
        .unwrap_or(if args.quick { 500_000 } else { 2_000_000 });
    let stage_runs = args.stage_runs.unwrap_or(if args.quick { 1 } else { 3 });
    let part = |p: &str| args.parts.iter().any(|x| x == p);
    let warmup = if args.quick { 6 } else { 10 };
    let ws_drops = args.ws_drops.unwrap_or(if args.quick { 3 } else { 10 });
    let outage_secs = args.outage_secs.unwrap_or(if args.quick { 20 } else { 60 });
    let base = LiveConfig {
        name: String::new(),
        symbols: args.symbols,
        frame_interval_ms: args.rate_interval_ms.unwrap_or(DEFAULT_RATE_INTERVAL_MS),
        book_depth: args.book_depth,
        trade_probability: args.trade_probability,
        seconds: seconds + warmup,
        warmup,
        ws_drops: 0,
        pod_kills: 0,
        engine: !args.no_engine,
        profile: false,
        outage_secs: 0,
    };
    let mut report = report::Report::new(&args, &env, &out, &run);
    report.notes = summary::Notes {
        git_commit,
        git_dirty,
        symbols: args.symbols,
        rate_choice: String::new(),
    };
    if let Some(before) = args.compare_bin.clone() {
        if !before.exists() {
            bail!("--compare-bin {} not found", before.display());
        }
        let after = env.bin.clone();
        // Two copies of one build would measure only the machine's noise as a change.
        if std::fs::read(&before)? == std::fs::read(&after)? {
            bail!(
                "--compare-bin {} is the same binary as --bin {}: nothing to compare (did the release build fail?)",
                before.display(),
                after.display()
            );
        }
        for round in 0..args.rounds {
            // The side that runs second meets a busier stack (the first run's rows in Kafka
            // and ClickHouse): the order alternates, so neither side always pays for it.
            let order = if round % 2 == 0 {
                [("before", &before), ("after", &after)]
            } else {
                [("after", &after), ("before", &before)]
            };
            for (label, bin) in order {
                env.bin = bin.clone();
                let mut variant = report::Variant {
                    label: label.to_string(),
                    ..Default::default()
                };
                if part("rate") {
                    let c = LiveConfig {
                        name: format!("rate_{label}{round}"),
                        ..base.clone()
                    };
                    variant.live = Some(report.live.len());
                    report.live.push(live::run(&env, &c).await?);
                }
                if part("stage") {
                    // Same drain order for both binaries within a round.
                    let n = round * 2 + usize::from(label == "after");
                    variant.stage = Some(report.stages.len());
                    report
                        .stages
                        .push(stage::run(&env, stage_rows, n, round % 2 == 0).await?);
                }
                report.variants.push(variant);
            }
        }
        env.bin = after;
        let path = report.write()?;
        println!("bench: report in {}", path.display());
        return Ok(());
    }
    if part("max") {
        let c = LiveConfig {
            name: "max".into(),
            frame_interval_ms: args.max_interval_ms,
            seconds: seconds.min(40) + warmup,
            ..base.clone()
        };
        report.live.push(live::run(&env, &c).await?);
    }
    let (rate_interval, choice) = if part("rate") || part("outage") {
        rate_interval(&args, &env, &base, report.live.last()).await?
    } else {
        (DEFAULT_RATE_INTERVAL_MS, String::new())
    };
    report.notes.rate_choice = choice;
    if part("rate") {
        let c = LiveConfig {
            name: "rate".into(),
            frame_interval_ms: rate_interval,
            profile: args.profile,
            ..base.clone()
        };
        report.live.push(live::run(&env, &c).await?);
    }
    if part("recovery") {
        let c = LiveConfig {
            name: "recovery".into(),
            frame_interval_ms: 500,
            seconds: warmup + 5,
            ws_drops,
            pod_kills: faults,
            engine: false,
            ..base.clone()
        };
        report.live.push(live::run(&env, &c).await?);
    }
    if part("outage") {
        let c = LiveConfig {
            name: "outage".into(),
            frame_interval_ms: rate_interval,
            seconds: warmup + 5 + outage_secs + 5,
            engine: false,
            outage_secs,
            ..base.clone()
        };
        report.live.push(live::run(&env, &c).await?);
    }
    if part("takeover") {
        let c = takeover::TakeoverConfig {
            symbols: args.takeover_symbols,
            kills: faults,
            cuts: args.takeover_cuts,
        };
        report.takeover = Some(takeover::run(&env, &c).await?);
    }
    if part("stage") {
        for n in 0..stage_runs {
            report
                .stages
                .push(stage::run(&env, stage_rows, n, n % 2 == 0).await?);
        }
    }
    let path = report.write()?;
    println!("bench: report in {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::scaled_interval;

    #[test]
    fn an_interval_scales_with_the_rate_it_offered() {
        // A calibration run at 174 ms offered 81,011 rows/s; 28,191 rows/s need 501 ms (the
        // next run there measured 28,760).
        assert_eq!(scaled_interval(174, 81_011.0, 28_191.0), 501);
        assert_eq!(scaled_interval(500, 10_000.0, 20_000.0), 250);
        assert_eq!(scaled_interval(1, 1.0, 1e9), 1);
    }
}
