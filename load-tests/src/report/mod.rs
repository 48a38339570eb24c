//! The report: `report.md` with the command, machine, versions, the target table and every
//! figure, CSV time series, and PNG plots drawn by `load-tests/plot.py` (matplotlib).

mod compare;
mod csv;
mod tables;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::clickhouse as chq;
use crate::live::daemons::ROLES;
use crate::live::{Env, LiveResult, Sample};
use crate::procs;
use crate::stage::StageRun;
use crate::takeover::{self, TakeoverResult};

use tables::*;
pub use tables::{Variant, median};

pub struct Report {
    pub live: Vec<LiveResult>,
    pub stages: Vec<StageRun>,
    /// `--compare-bin`: which runs each binary made, in run order.
    pub variants: Vec<Variant>,
    /// The two-pod takeover (`--parts takeover`).
    pub takeover: Option<TakeoverResult>,
    /// Git state and how the `rate` run's offered rate was chosen (`summary.json`).
    pub notes: crate::summary::Notes,
    out: PathBuf,
    header: String,
}

impl Report {
    pub fn new(args: &crate::Args, env: &Env, out: &Path, run: &str) -> Self {
        let argv: Vec<String> = std::env::args().collect();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .next()
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
            })
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or("unknown".into(), |kb| format!("{:.1} GiB", kb / 1048576.0));
        let root = procs::repo_root();
        let git = procs::command_output(
            "git",
            &[
                "-C",
                root.to_str().unwrap_or("."),
                "rev-parse",
                "--short",
                "HEAD",
            ],
        );
        let dirty = procs::command_output(
            "git",
            &[
                "-C",
                root.to_str().unwrap_or("."),
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
        );
        let stack = procs::command_output(
            root.join("scripts/stack")
                .to_str()
                .unwrap_or("scripts/stack"),
            &["status"],
        );
        let (_, rdk) = rdkafka::util::get_rdkafka_version();
        let mut h = String::new();
        let _ = writeln!(
            h,
            "# marketlane benchmark {run} ({})\n",
            if args.quick { "quick" } else { "full" }
        );
        let _ = writeln!(
            h,
            "Command: `{}` (from the repository root, under `flock /tmp/marketlane-stack.lock`; `make bench` / `make bench-quick` run it).\n",
            argv.iter()
                .skip(1)
                .fold("marketlane-bench".to_string(), |a, b| a + " " + b)
        );
        let _ = writeln!(h, "| | |\n|---|---|");
        let _ = writeln!(
            h,
            "| machine | {cpu}, {} cores, {mem}, kernel {} |",
            procs::command_output("nproc", &[]),
            procs::command_output("uname", &["-r"])
        );
        let _ = writeln!(
            h,
            "| marketlane | git {git}{} (release build `{}`) |",
            if dirty.is_empty() {
                ""
            } else {
                " + uncommitted changes of the shared tree"
            },
            env.bin.display()
        );
        let _ = writeln!(
            h,
            "| rustc | {} |",
            procs::command_output("rustc", &["--version"])
        );
        let _ = writeln!(h, "| librdkafka (marketlane, driver) | {rdk} |");
        let _ = writeln!(
            h,
            "| ClickHouse | {} (its Kafka engine bundles its own librdkafka) |",
            env.server_version
        );
        let _ = writeln!(
            h,
            "| Kafka / Redis | {} |",
            stack
                .lines()
                .filter(|l| l.starts_with("kafka") || l.starts_with("redis"))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let _ = writeln!(
            h,
            "| load during the run | other engineers may build and test on the same 2 cores: see the machine CPU column |"
        );
        Self {
            live: Vec::new(),
            stages: Vec::new(),
            variants: Vec::new(),
            takeover: None,
            notes: crate::summary::Notes::default(),
            out: out.to_path_buf(),
            header: h,
        }
    }

    pub fn write(&self) -> anyhow::Result<PathBuf> {
        self.write_csvs()?;
        let plot = procs::repo_root().join("load-tests/plot.py");
        let plotted = std::process::Command::new("python3")
            .arg(&plot)
            .arg(&self.out)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !plotted {
            eprintln!(
                "bench: plots failed (python3 -m pip install matplotlib); the CSVs are written"
            );
        }
        let mut m = self.header.clone();
        // With --compare-bin the targets are read on the `after` runs (`--bin`) only.
        let after_live: Vec<usize> = self
            .variants
            .iter()
            .filter(|v| v.label == "after")
            .filter_map(|v| v.live)
            .collect();
        let by = |n: &str| {
            self.live
                .iter()
                .enumerate()
                .find(|(i, r)| {
                    r.config.name == n
                        || (after_live.contains(i) && r.config.name.starts_with(&format!("{n}_")))
                })
                .map(|(_, r)| Steady::new(r))
        };
        let stages: Vec<&StageRun> = if self.variants.is_empty() {
            self.stages.iter().collect()
        } else {
            self.variants
                .iter()
                .filter(|v| v.label == "after")
                .filter_map(|v| v.stage.and_then(|i| self.stages.get(i)))
                .collect()
        };
        let rate = by("rate");
        let max = by("max");
        let rec = by("recovery");

        if !self.variants.is_empty() {
            m.push_str(&self.side_by_side());
        }
        m.push_str(&crate::summary::section(
            &self.notes,
            &self.live,
            &self.stages,
            self.takeover.as_ref(),
        ));

        // Targets.
        let _ = writeln!(m, "\n## Targets\n");
        if !self.variants.is_empty() {
            let _ = writeln!(m, "Read on the `after` runs (`--bin`) only.\n");
        }
        let _ = writeln!(m, "| target | measured | |\n|---|---|---|");
        let e2e = [rate.as_ref(), max.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.mean(|x| x.rates.clickhouse))
            .reduce(f64::max);
        let stage_ml = median(stages.iter().map(|s| s.marketlane.sustained).collect());
        // (the writer streams batches, so its rate once streaming is its stage capacity)
        let _ = writeln!(
            m,
            "| ≥100,000 rows/s sustained end to end | simulator → ClickHouse: {} rows/s (best live run, mean of the steady window); Kafka → ClickHouse stage alone: {} rows/s (median of the stage runs) | {} |",
            fmt_n(e2e),
            fmt_n(stage_ml),
            met(e2e.map(|x| x >= 100_000.0))
        );
        if let Some(s) = &rate {
            let achieved = s.mean(|x| x.rates.clickhouse);
            let q = [
                s.queryable("marketlane l2", 0.99),
                s.queryable("marketlane tick", 0.99),
            ]
            .into_iter()
            .flatten()
            .reduce(f64::max);
            let _ = writeln!(
                m,
                "| at 50,000 rows/s: p99 event→ClickHouse-queryable ≤1.5 s | {} at {} rows/s (polled, worse of l2 and tick) | {}{} |",
                fmt_s(q),
                fmt_n(achieved),
                met(q.map(|v| v <= 1.5)),
                if achieved.is_some_and(|a| a < 45_000.0) {
                    " (below the rate)"
                } else {
                    ""
                }
            );
            let r = s.daemon("redis", &["tick_market_data", "l2_market_data"], 0.99);
            let _ = writeln!(
                m,
                "| at 50,000 rows/s: p99 event→Redis ≤100 ms | {} (daemon histogram, as_of → Redis write acknowledged) | {} |",
                fmt_s(r),
                met(r.map(|v| v <= 0.1))
            );
        }
        let ratio = median(
            stages
                .iter()
                .map(|s| s.marketlane.rows_per_sec / s.engine.rows_per_sec)
                .collect(),
        );
        let _ = writeln!(
            m,
            "| ≥1.5× the Kafka engine's rows/s, same topic and server | {} (median over {} stage runs, rows/s from consumption start to the last row queryable) | {} |",
            ratio.map_or("–".into(), |r| format!("{r:.2}×")),
            stages.len(),
            met(ratio.map(|r| r >= 1.5))
        );
        // Every run the targets read (in a comparison, every `after` run), not only the first.
        let rss = self
            .live
            .iter()
            .enumerate()
            .filter(|(i, _)| self.variants.is_empty() || after_live.contains(i))
            .filter_map(|(_, r)| Steady::new(r).max(|x| x.rss_mb))
            .reduce(f64::max);
        let _ = writeln!(
            m,
            "| daemon RSS ≤150 MB at 1,000 symbols | {} MB (highest sample of the live runs, the largest of the three processes) | {} |",
            fmt_n(rss),
            met(rss.map(|v| v <= 150.0))
        );
        if let Some(s) = &rec {
            let w = median(s.r.recovery.ws_resume.clone());
            let _ = writeln!(
                m,
                "| websocket drop → data resumes ≤2 s | {} (median of {}; daemon's `marketlane_ws_gap_seconds` mean {}) | {} |",
                fmt_s(w),
                s.r.recovery.ws_resume.len(),
                fmt_s(s.r.recovery.ws_gap_daemon),
                met(w.map(|v| v <= 2.0))
            );
        }
        if let Some(t) = &self.takeover {
            let kafka: Vec<Option<f64>> = t.kills.iter().map(|k| k.kafka).collect();
            let missed = kafka.iter().filter(|x| x.is_none()).count();
            let worst = kafka.iter().flatten().copied().reduce(f64::max);
            let of = |f: fn(&takeover::Kill) -> Option<f64>| {
                fmt_s(median_all(&t.kills.iter().map(f).collect::<Vec<_>>()))
            };
            let _ = writeln!(
                m,
                "| pod kill → symbols taken over ≤3 s (two pods) | {} from SIGKILL until every symbol of the killed pod has rows from the survivor in Kafka (median of {} kill{}, worst {}{}); the survivor noticed after {} and held all {} symbols after {} | {} |",
                fmt_s(median(kafka.iter().flatten().copied().collect())),
                kafka.len(),
                if kafka.len() == 1 { "" } else { "s" },
                fmt_s(worst),
                if missed > 0 {
                    format!(", {missed} not within 60 s")
                } else {
                    String::new()
                },
                of(|k| k.noticed),
                t.config.symbols,
                of(|k| k.held_all),
                met(if kafka.is_empty() {
                    None
                } else {
                    median_all(&kafka).map(|v| v <= 3.0).or(Some(false))
                })
            );
        } else if let Some(s) = &rec {
            let k = median(s.r.recovery.kill_frames.clone());
            let _ = writeln!(
                m,
                "| pod kill → symbols taken over ≤3 s (two pods) | two-pod takeover not run in this report (`--parts takeover`). Single pod, SIGKILL of the connector process → new connector streaming: frames {}, Kafka {}, ClickHouse {} (medians of {}) | not measured |",
                fmt_s(k),
                fmt_s(median(s.r.recovery.kill_kafka.clone())),
                fmt_s(median(s.r.recovery.kill_clickhouse.clone())),
                s.r.recovery.kill_frames.len()
            );
        }

        // Live runs.
        for s in [rate.as_ref(), max.as_ref(), rec.as_ref()]
            .into_iter()
            .flatten()
        {
            let c = &s.r.config;
            let _ = writeln!(m, "\n## Live run `{}`\n", c.name);
            let _ = writeln!(
                m,
                "Simulator: {} symbols (`--synthetic-symbols {}`), each subscribed with its book (`smd` + `sbd`), a frame every {} ms per symbol (`--frame-interval-ms {} --unpaced`), `--book-depth {}`, `--trade-probability {}`. Daemon roles connector, writer, calculator (vwap 60 s on every tick symbol, mid on every book); ClickHouse's Kafka engine {}. Steady window {:.0}–{:.0} s after the first rows reached ClickHouse.\n",
                c.symbols,
                c.symbols,
                c.frame_interval_ms,
                c.frame_interval_ms,
                c.book_depth,
                c.trade_probability,
                if c.engine {
                    "reads the same l2 topic into a same-shape table"
                } else {
                    "off"
                },
                s.r.steady.0,
                s.r.steady.1
            );
            let _ = writeln!(m, "Logs and configs of the run: `{}`.\n", s.r.dir.display());
            let _ = writeln!(
                m,
                "| stage | rows/s mean | rows/s median of 1 s samples |\n|---|---|---|"
            );
            type Col = (&'static str, fn(&Sample) -> f64);
            let cols: [Col; 7] = [
                ("websocket frames (smd + sbd)", |x| x.rates.frames),
                ("rows normalized", |x| x.rates.normalized),
                ("rows acknowledged by Kafka", |x| x.rates.kafka),
                ("rows acknowledged by ClickHouse (all categories)", |x| {
                    x.rates.clickhouse
                }),
                ("Kafka engine rows into its l2 table", |x| x.engine),
                ("rows read by the calculators", |x| x.rates.calculator_rows),
                ("Redis pipeline writes", |x| x.rates.redis_writes),
            ];
            for (name, f) in cols {
                let _ = writeln!(
                    m,
                    "| {name} | {} | {} |",
                    fmt_n(s.mean(f)),
                    fmt_n(s.median(f))
                );
            }
            let per_role: Vec<String> = ROLES
                .iter()
                .map(|r| {
                    let i = r.index();
                    format!(
                        "{} RSS median {} MB, max {} MB, CPU median {}%",
                        r.name(),
                        fmt_n(s.median(|x| x.role_rss_mb[i])),
                        fmt_n(s.max(|x| x.role_rss_mb[i])),
                        fmt_n(s.median(|x| x.role_cpu[i]))
                    )
                })
                .collect();
            let _ = writeln!(
                m,
                "\nResources (1 s samples over the steady window, the daemon as three processes): {}; all three CPU median {}% (200% = both cores); simulator CPU {}%; whole machine busy {}%; writer consumer lag at the end {}.\n",
                per_role.join("; "),
                fmt_n(s.median(|x| x.daemon_cpu)),
                fmt_n(s.median(|x| x.sim_cpu)),
                fmt_n(s.median(|x| x.machine_busy)),
                fmt_n(s.s.last().map(|x| x.rates.lag))
            );
            let _ = writeln!(
                m,
                "| latency | p50 | p99 | p99.9 | rows |\n|---|---|---|---|---|"
            );
            for label in ["marketlane l2", "marketlane tick", "engine l2"] {
                let seen = s.seen(label);
                if seen.is_empty() {
                    continue;
                }
                let _ = writeln!(
                    m,
                    "| event → queryable, {label} (polled every 250 ms) | {} | {} | {} | {} |",
                    fmt_s(chq::quantile(&seen, 0.5)),
                    fmt_s(chq::quantile(&seen, 0.99)),
                    fmt_s(chq::quantile(&seen, 0.999)),
                    seen.iter().map(|x| x.count).sum::<u64>()
                );
            }
            let all = [
                "tick_market_data",
                "l2_market_data",
                "indicators_market_data",
            ];
            for (sink, what, cats) in [
                ("kafka", "event → Kafka acknowledged (daemon)", &all[..]),
                (
                    "clickhouse",
                    "event → ClickHouse acknowledged (daemon)",
                    &all[..],
                ),
                ("redis", "event → Redis written (daemon)", &all[..2]),
            ] {
                let _ = writeln!(
                    m,
                    "| {what} | {} | {} | {} | |",
                    fmt_s(s.daemon(sink, cats, 0.5)),
                    fmt_s(s.daemon(sink, cats, 0.99)),
                    fmt_s(s.daemon(sink, cats, 0.999))
                );
            }
            let _ = writeln!(
                m,
                "\n![throughput]({n}-throughput.png)\n![latency]({n}-latency.png)\n",
                n = c.name
            );
            let rcv = &s.r.recovery;
            if !rcv.ws_resume.is_empty() || !rcv.kill_frames.is_empty() {
                let list = |v: &[f64]| {
                    v.iter()
                        .map(|x| format!("{x:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let _ = writeln!(m, "| recovery | each (s) | median |\n|---|---|---|");
                let _ = writeln!(
                    m,
                    "| websocket drop (`/sim/fault drop_tcp`) → frames counted again | {} | {} |",
                    list(&rcv.ws_resume),
                    fmt_s(median(rcv.ws_resume.clone()))
                );
                let _ = writeln!(
                    m,
                    "| SIGKILL + immediate restart of the connector → frames counted | {} | {} |",
                    list(&rcv.kill_frames),
                    fmt_s(median(rcv.kill_frames.clone()))
                );
                let _ = writeln!(
                    m,
                    "| SIGKILL + immediate restart of the connector → rows acknowledged by Kafka | {} | {} |",
                    list(&rcv.kill_kafka),
                    fmt_s(median(rcv.kill_kafka.clone()))
                );
                let _ = writeln!(
                    m,
                    "| SIGKILL + immediate restart of the connector → the writer has new rows acknowledged by ClickHouse | {} | {} |",
                    list(&rcv.kill_clickhouse),
                    fmt_s(median(rcv.kill_clickhouse.clone()))
                );
                match &self.takeover {
                    Some(t) => m.push_str(&takeover_rows(t)),
                    None => {
                        let _ = writeln!(
                            m,
                            "| two-pod takeover (pod kill → the other pod streams its symbols) | not run in this report (`--parts takeover`) | – |"
                        );
                    }
                }
            }
        }

        if let Some(t) = &self.takeover {
            m.push_str(&takeover_section(t));
        }

        if !self.stages.is_empty() {
            let _ = writeln!(
                m,
                "\n## Kafka → ClickHouse stage: marketlane's writer vs ClickHouse's Kafka engine\n"
            );
            let _ = writeln!(
                m,
                "Each run pre-fills a fresh 3-partition topic with {} valid `l2_market_data` rows (JSON, lz4, the daemon's producer settings), then drains it into a fresh database twice, one after the other on the same server: marketlane (`roles = [\"writer\"]`, defaults: {}, offsets in ClickHouse) and the Kafka engine (`ENGINE = Kafka`, JSONEachRow, with the settings its users tune (below), a materialized view into marketlane's own DDL for the table, so both feed the same table and snapshot view). The order alternates between runs. *From start* = rows / (last row queryable − start of consumption, which includes creating the tables and joining the group, for both): the ratio uses it, because the engine makes its rows queryable in one or a few big blocks (it polls until its block is full or `stream_flush_interval_ms`, 7.5 s, passes), so its *once streaming* rate (rows / (last − first row queryable)) is not meaningful. CPU: ClickHouse server and daemon seconds during the drain.\n",
                self.stages.first().map_or(0, |s| s.rows),
                writer_defaults()
            );
            let _ = writeln!(
                m,
                "| run | first | produce rows/s | marketlane rows/s (once streaming / from start) | engine rows/s (once streaming / from start) | ratio (from start) | CPU s marketlane (daemon + ClickHouse) | CPU s engine (ClickHouse) |\n|---|---|---|---|---|---|---|---|"
            );
            for (i, s) in self.stages.iter().enumerate() {
                let _ = writeln!(
                    m,
                    "| {i} | {} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2}× | {:.1} + {:.1} | {:.1} |",
                    if s.engine_first {
                        "engine"
                    } else {
                        "marketlane"
                    },
                    s.produce_rows_per_sec,
                    s.marketlane.sustained,
                    s.marketlane.rows_per_sec,
                    s.engine.sustained,
                    s.engine.rows_per_sec,
                    s.marketlane.rows_per_sec / s.engine.rows_per_sec,
                    s.marketlane.daemon_cpu,
                    s.marketlane.ch_cpu,
                    s.engine.ch_cpu
                );
            }
            let _ = writeln!(
                m,
                "| median | | | {} / {} | {} / {} | {} | | |",
                fmt_n(median(
                    self.stages.iter().map(|s| s.marketlane.sustained).collect()
                )),
                fmt_n(median(
                    self.stages
                        .iter()
                        .map(|s| s.marketlane.rows_per_sec)
                        .collect()
                )),
                fmt_n(median(
                    self.stages.iter().map(|s| s.engine.sustained).collect()
                )),
                fmt_n(median(
                    self.stages.iter().map(|s| s.engine.rows_per_sec).collect()
                )),
                ratio.map_or("–".into(), |r| format!("{r:.2}×")),
            );
        }

        let _ = writeln!(m, "\n## Method\n");
        let _ = writeln!(
            m,
            "- The daemon runs as three processes, one per role (connector, writer, calculator), as deployed. Rows/s per stage are differences of the counters (`/metrics`) of the process that owns each stage between 1 s scrapes, summed where a stage spans processes (Kafka acks: connector + calculator); *mean* is over the steady window. RSS and CPU come from each process's `/proc/<pid>`; machine busy from `/proc/stat`."
        );
        let _ = writeln!(
            m,
            "- Event → queryable is measured from outside: every 250 ms the driver counts each table's rows per 100 ms slot of event time (`l2_time`, `tick_time`: the simulator's `_updated`, ms); rows that appear in a slot between two polls get latency = midpoint of the polls − middle of the slot (±175 ms). The same poller reads marketlane's table and the engine's."
        );
        let _ = writeln!(
            m,
            "- Event → Kafka and → Redis are the daemon's `marketlane_event_to_sink_latency_seconds` histograms (buckets 1 ms … 30 s, interpolated), differenced over the steady window."
        );
        let _ = writeln!(
            m,
            "- Websocket drop: `POST /sim/fault {{\"kind\":\"drop_tcp\"}}`, then the driver polls `/metrics` every 20 ms: time until the frame counter moves after the reconnect counter did. Pod kill: SIGKILL of the connector process and an immediate start of its config (writer and calculator keep running); times until the new connector counts frames and Kafka acks, and until the writer's ClickHouse acks move past their count at that first Kafka ack."
        );
        if self.takeover.is_some() {
            let _ = writeln!(
                m,
                "- Two-pod takeover: right after the SIGKILL (and the reap) of pod 1 the driver polls, concurrently, the survivor's `/metrics` every 20 ms (members, assigned symbols), its `ctl status` every 50 ms (`cluster.streaming`), a Kafka consumer of the tick topic (assigned from the end before the first kill; `fetch.wait.max.ms` 10) every 20 ms for rows whose `component_instance_name` is the survivor and whose `tick_time` is after the kill, and ClickHouse every 100 ms for the same. Every figure is seconds from the signal; one not reached within 60 s is `–`. How the survivor noticed comes from which of its `marketlane_cluster_membership_changes_total` labels moved (`left`: the link closed; `timed_out`: no heartbeat for `heartbeat_timeout`)."
            );
        }
        let _ = writeln!(
            m,
            "- Throughput and latency plots per live run; CSVs (`live-*.csv`, `seen-*.csv`{}) hold every sample.",
            if self.takeover.is_some() {
                ", `takeover.csv`: one line per kill"
            } else {
                ""
            }
        );
        let path = self.out.join("report.md");
        std::fs::write(&path, m)?;
        Ok(path)
    }
}

/// The writer's batching defaults as the stage drains use them.
fn writer_defaults() -> String {
    let w = marketlane_actors::config::WriterConfig::default();
    format!(
        "batches of ≤{} rows or {} ms, all of them cut once the writers of the process together hold {} MiB (`buffer_bytes`)",
        w.batch_rows,
        w.batch_max_age.as_millis(),
        w.buffer_bytes >> 20
    )
}
