//! `summary.json` (the headline figures, null where a part did not run or a figure was not
//! reached) and the report's sections about them: how each was measured, the CPU of every
//! process apart, the ClickHouse outage, the engine's settings, the profile.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::clickhouse::Seen;
use crate::live::daemons::ROLES;
use crate::live::{LiveResult, engine_settings};
use crate::prom::Buckets;
use crate::report::median;
use crate::stage::StageRun;
use crate::takeover::TakeoverResult;

/// What the driver knows about the run beyond the parts' results.
#[derive(Debug, Clone, Default)]
pub struct Notes {
    pub git_commit: String,
    pub git_dirty: bool,
    pub symbols: u32,
    /// How the offered rate of the `rate` run was chosen.
    pub rate_choice: String,
}

/// The latency quantile over rows seen (latency, count) and `missing` rows that never arrived:
/// None when the quantile falls among the missing ones.
pub fn quantile_with_missing(seen: &[Seen], missing: u64, q: f64) -> Option<f64> {
    let total: u64 = seen.iter().map(|s| s.count).sum::<u64>() + missing;
    if total == 0 {
        return None;
    }
    let mut v: Vec<(f64, u64)> = seen.iter().map(|s| (s.latency, s.count)).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (l, c) in v {
        acc += c;
        if acc >= rank {
            return Some(l);
        }
    }
    None
}

/// Fraction of a histogram's observations above its top finite bound.
pub fn above_top(b: &Buckets) -> Option<f64> {
    let total = b.count();
    let finite =
        b.0.iter()
            .filter(|(le, _)| le.is_finite())
            .map(|(_, c)| *c)
            .fold(0.0, f64::max);
    (total > 0.0).then(|| (total - finite) / total)
}

/// The quantile of a histogram, None when it falls above the top finite bound.
pub fn hist_quantile(b: &Buckets, q: f64) -> Option<f64> {
    if above_top(b)? > 1.0 - q {
        return None;
    }
    b.quantile(q)
}

fn run<'a>(live: &'a [LiveResult], name: &str) -> Option<&'a LiveResult> {
    live.iter().find(|r| r.config.name == name)
}

/// Event → queryable of marketlane's source rows over the steady window (outside poller).
fn seen(r: &LiveResult) -> Vec<Seen> {
    ["marketlane l2", "marketlane tick"]
        .iter()
        .filter_map(|l| r.seen.get(l))
        .flatten()
        .filter(|s| s.t >= r.steady.0 && s.t <= r.steady.1)
        .copied()
        .collect()
}

fn redis_hist(r: &LiveResult) -> Option<Buckets> {
    let mut total: Option<Buckets> = None;
    for ((cat, sink), b) in &r.hist {
        if sink != "redis" || cat == "indicators_market_data" {
            continue;
        }
        total = Some(match total {
            None => b.clone(),
            Some(t) => Buckets(
                t.0.iter()
                    .zip(&b.0)
                    .map(|((le, a), (_, c))| (*le, a + c))
                    .collect(),
            ),
        });
    }
    total
}

fn stage_ratio(stages: &[StageRun], f: impl Fn(&StageRun) -> Option<f64>) -> Option<f64> {
    median(stages.iter().filter_map(f).collect())
}

pub fn engine_ratio(stages: &[StageRun]) -> Option<f64> {
    stage_ratio(stages, |s| {
        (s.engine.rows_per_sec > 0.0).then(|| s.marketlane.rows_per_sec / s.engine.rows_per_sec)
    })
}

/// Daemon CPU per row ÷ the engine's ClickHouse CPU per row (same rows).
pub fn engine_cpu_ratio(stages: &[StageRun]) -> Option<f64> {
    stage_ratio(stages, |s| {
        (s.engine.ch_cpu > 0.0).then(|| s.marketlane.daemon_cpu / s.engine.ch_cpu)
    })
}

fn ws_fresh(live: &[LiveResult]) -> Vec<Option<f64>> {
    live.iter()
        .flat_map(|r| r.extra.ws_fresh.iter().copied())
        .collect()
}

pub fn summary(
    notes: &Notes,
    live: &[LiveResult],
    stages: &[StageRun],
    takeover: Option<&TakeoverResult>,
) -> Value {
    let rate = run(live, "rate");
    let max = run(live, "max");
    let latency_run = rate;
    let p99_ch = latency_run
        .and_then(|r| quantile_with_missing(&seen(r), r.extra.missing().unwrap_or(0), 0.99));
    let p99_redis = latency_run
        .and_then(redis_hist)
        .and_then(|b| hist_quantile(&b, 0.99));
    // Conservative: the largest of the three processes' max VmRSS (`rss_mb` is per sample
    // already the largest of the three).
    let rss = max
        .filter(|_| notes.symbols == 1000)
        .and_then(|r| r.samples.iter().map(|s| s.rss_mb).reduce(f64::max));
    let fresh = ws_fresh(live);
    let ws_max = if fresh.is_empty() || fresh.iter().any(Option::is_none) {
        None
    } else {
        fresh.iter().flatten().copied().reduce(f64::max)
    };
    json!({
        "e2e_rows_per_s": max.and_then(|r| r.extra.e2e_rows_per_s()),
        "daemon_cpu_us_per_row": rate.or(max).and_then(|r| r.extra.daemon_us_per_row()),
        "p99_event_to_clickhouse_s": p99_ch,
        "p99_event_to_redis_s": p99_redis,
        "rss_mb_max_1000_symbols": rss,
        "engine_ratio": engine_ratio(stages),
        "engine_cpu_ratio": engine_cpu_ratio(stages),
        "ws_resume_s_max": ws_max,
        "takeover_cut_link_s_max": takeover.and_then(TakeoverResult::cut_link_max),
        "git_commit": notes.git_commit,
        "git_dirty": notes.git_dirty,
    })
}

fn f(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn secs(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.3}"))
}

/// `## Headline figures`: summary.json with targets and how each was measured.
pub fn section(
    notes: &Notes,
    live: &[LiveResult],
    stages: &[StageRun],
    takeover: Option<&TakeoverResult>,
) -> String {
    let s = summary(notes, live, stages, takeover);
    let g = |k: &str| s[k].as_f64();
    let mut m = String::new();
    let _ = writeln!(m, "\n## Headline figures (`summary.json`)\n");
    let _ = writeln!(
        m,
        "git {}{}. `–` / null: the part did not run, or the figure was not reached (see its row).\n",
        notes.git_commit,
        if notes.git_dirty {
            " **with uncommitted changes (`--allow-dirty`)**"
        } else {
            ", clean tree"
        }
    );
    let _ = writeln!(m, "| key | value | target | how |\n|---|---|---|---|");
    let rows: [(&str, String, &str, &str); 9] = [
        (
            "e2e_rows_per_s",
            f(g("e2e_rows_per_s"), 0),
            "≥100,000",
            "`max` run: distinct source rows (`count(DISTINCT row_id) … FINAL`, l2 + tick; indicators apart) in ClickHouse at the end minus at the start of the steady window, ÷ its seconds: the lane's sustainable maximum, simulator → ClickHouse",
        ),
        (
            "daemon_cpu_us_per_row",
            f(g("daemon_cpu_us_per_row"), 1),
            "≤5",
            "`rate` run: CPU seconds of the connector process + the writer process (`/proc/<pid>/stat`, each its own process as deployed) over the steady window ÷ distinct source rows into ClickHouse in it; the calculator process's CPU per row is apart in the table below",
        ),
        (
            "p99_event_to_clickhouse_s",
            secs(g("p99_event_to_clickhouse_s")),
            "≤1.5",
            "`rate` run: event → queryable polled from outside (l2 + tick); rows produced to Kafka in the window but not in ClickHouse by the end count as never arrived (null when the p99 falls among them)",
        ),
        (
            "p99_event_to_redis_s",
            secs(g("p99_event_to_redis_s")),
            "≤0.1",
            "`rate` run: the daemon's histogram (tick + l2 sources); null when the p99 lies above its top finite bucket (30 s)",
        ),
        (
            "rss_mb_max_1000_symbols",
            f(g("rss_mb_max_1000_symbols"), 0),
            "≤150",
            "`max` run at 1,000 symbols: the largest of the three processes' (connector, writer, calculator) max VmRSS over the 1 s samples; each process's max in the table below",
        ),
        (
            "engine_ratio",
            f(g("engine_ratio"), 2),
            "≥1.5",
            "`stage`: marketlane rows/s ÷ Kafka engine rows/s (from start), median of the runs",
        ),
        (
            "engine_cpu_ratio",
            f(g("engine_cpu_ratio"), 2),
            "≤1",
            "`stage`: daemon CPU per row ÷ ClickHouse CPU per row of the engine's drain, median",
        ),
        (
            "ws_resume_s_max",
            secs(g("ws_resume_s_max")),
            "≤2",
            "`recovery`: websocket drop → first row in Kafka with an event time after the drop; null when any drop did not resume within 30 s",
        ),
        (
            "takeover_cut_link_s_max",
            secs(g("takeover_cut_link_s_max")),
            "≤3",
            "`takeover`: link cut → the moved symbols in Kafka again, max",
        ),
    ];
    for (k, v, t, how) in rows {
        let _ = writeln!(m, "| `{k}` | {v} | {t} | {how} |");
    }
    if !notes.rate_choice.is_empty() {
        let _ = writeln!(
            m,
            "\nOffered rate of the `rate` run: {}\n",
            notes.rate_choice
        );
    }
    m.push_str(&live_details(live));
    m.push_str(&stage_details(stages));
    m
}

/// CPU per source row and max VmRSS of each daemon process (the daemon runs as three, one per
/// role, as deployed): the calculator's share is here, not in `daemon_cpu_us_per_row`.
fn per_process(live: &[LiveResult]) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "\nPer daemon process over the steady window: CPU s and µs per distinct source row into ClickHouse; VmRSS max (MB) over the run's 1 s samples. The calculator's µs per row is apart from `daemon_cpu_us_per_row` (connector + writer); `rss_mb_max_1000_symbols` is the largest of the three RSS columns.\n"
    );
    let mut head = String::from("| run |");
    for role in ROLES {
        let n = role.name();
        let _ = write!(head, " {n} CPU s | {n} µs/row |");
    }
    for role in ROLES {
        let _ = write!(head, " {} RSS max MB |", role.name());
    }
    let _ = writeln!(m, "{head}\n|---{}", "|---".repeat(9) + "|");
    for r in live.iter().filter(|r| r.extra.analyst.is_some()) {
        let e = &r.extra;
        let mut row = format!("| {} |", r.config.name);
        for role in ROLES {
            let _ = write!(
                row,
                " {} | {} |",
                f(e.role_cpu(role), 1),
                f(e.role_us_per_row(role), 2)
            );
        }
        for role in ROLES {
            let max = r
                .samples
                .iter()
                .map(|s| s.role_rss_mb[role.index()])
                .reduce(f64::max);
            let _ = write!(row, " {} |", f(max, 0));
        }
        let _ = writeln!(m, "{row}");
    }
    m
}

fn live_details(live: &[LiveResult]) -> String {
    let mut m = String::new();
    if live.iter().any(|r| r.extra.analyst.is_some()) {
        let _ = writeln!(
            m,
            "\n### Rows as an analyst counts them, and CPU of every process apart (steady windows)\n"
        );
        let _ = writeln!(
            m,
            "| run | source rows/s into ClickHouse (distinct, FINAL) | indicator rows/s | connector + writer CPU s | µs per row (connector + writer) | simulator CPU s | ClickHouse CPU s | Kafka CPU s | window s | rows produced in the window / in ClickHouse after {} s / never arrived |\n|---|---|---|---|---|---|---|---|---|---|",
            crate::live::DRAIN_GRACE_S
        );
        for r in live.iter().filter(|r| r.extra.analyst.is_some()) {
            let e = &r.extra;
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
                r.config.name,
                f(e.e2e_rows_per_s(), 0),
                f(e.indicators_per_s(), 0),
                f(e.daemon_cpu_s(), 1),
                f(e.daemon_us_per_row(), 1),
                f(e.sim_cpu_s, 1),
                f(e.stack.clickhouse, 1),
                f(e.stack.kafka, 1),
                f(e.analyst.map(|a| a.2), 1),
                e.produced_in_window.map_or("–".into(), |x| x.to_string()),
                e.arrived_in_window.map_or("–".into(), |x| x.to_string()),
                e.missing().map_or("–".into(), |x| x.to_string()),
            );
        }
        m.push_str(&per_process(live));
        if let Some(r) = run(live, "rate") {
            let seen = seen(r);
            let missing = r.extra.missing().unwrap_or(0);
            let _ = writeln!(
                m,
                "\n`rate` event → queryable (l2 + tick, polled from outside) counting the {missing} rows that never arrived: p50 {}, p99 {}, p99.9 {} s (– = among the rows that never arrived).",
                secs(quantile_with_missing(&seen, missing, 0.5)),
                secs(quantile_with_missing(&seen, missing, 0.99)),
                secs(quantile_with_missing(&seen, missing, 0.999)),
            );
            if let Some(b) = redis_hist(r) {
                let _ = writeln!(
                    m,
                    "Daemon histogram event → Redis: {:.2}% of {} observations above its top finite bucket (30 s){}.",
                    above_top(&b).unwrap_or(0.0) * 100.0,
                    b.count(),
                    if above_top(&b).unwrap_or(0.0) > 0.0 {
                        ": the histogram's top bucket is hit, so its quantiles above that share are unknown"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    let fresh = ws_fresh(live);
    if !fresh.is_empty() {
        let v: Vec<f64> = fresh.iter().flatten().copied().collect();
        let _ = writeln!(
            m,
            "\n### Websocket drop → market data resumed\n\n{} drops; each (s): {}; median {}, max {} (`–`: no fresh row within 30 s). Counted to the first row in Kafka (l2 or tick topic, read from its end by the driver) whose event time is after the drop, not to any frame.\n",
            fresh.len(),
            fresh
                .iter()
                .map(|x| secs(*x))
                .collect::<Vec<_>>()
                .join(", "),
            secs(median(v.clone())),
            if fresh.iter().any(Option::is_none) {
                "– (a drop did not resume)".to_string()
            } else {
                secs(v.iter().copied().reduce(f64::max))
            }
        );
    }
    for r in live {
        if let Some(o) = &r.extra.outage {
            let _ = writeln!(
                m,
                "\n### ClickHouse outage of {} s at the `rate` load\n\nThe daemon's `clickhouse.url` points at a TCP proxy in the driver; for {} s it cut every connection and refused new ones (the shared server kept running). Writer process RSS max from the outage to the end of the drain: **{:.0} MB** (target ≤200). After the run the simulator was stopped; the writer's lag was 0, with the connector's count settled, {} later (lag then {:.0}). Source rows acknowledged by Kafka {:.0}, distinct in ClickHouse {}: **rows lost {}** (target 0; `–`: not drained within the limit, so unknown).\n",
                o.outage_secs,
                o.outage_secs,
                o.rss_mb_max,
                o.drained_after
                    .map_or("not within the limit".into(), |x| format!("{x:.0} s")),
                o.lag_at_end,
                o.kafka_rows,
                match &o.clickhouse_rows {
                    Ok(n) => n.to_string(),
                    Err(e) => format!("– (the count failed: {e})"),
                },
                o.lost().map_or("–".into(), |x| format!("{x:.0}")),
            );
        }
    }
    for r in live {
        if let Some(p) = &r.extra.profile {
            let _ = writeln!(
                m,
                "\n### Profiles of the connector, the writer and the calculator processes (`{}` run, steady window)\n\n`perf record -g -F 499 -p <pid>` of each (the connector reads the websocket, normalizes and produces to Kafka; the writer consumes Kafka and inserts into ClickHouse; the calculator consumes Kafka, updates its windows and writes Redis), then `perf report --no-children --sort dso,symbol` (self time; lines ≥0.5%):\n\n```\n{p}\n```\n",
                r.config.name
            );
        }
    }
    m
}

fn stage_details(stages: &[StageRun]) -> String {
    let mut m = String::new();
    let Some(first) = stages.first() else {
        return m;
    };
    let _ = writeln!(
        m,
        "\n### Kafka engine as its users run it; CPU per million rows\n\nEngine table settings on the backlog: `{}` (`kafka_num_consumers` = the topic's partitions; `kafka_max_block_size` = `max_insert_block_size`, the default ClickHouse's documentation gives it, a full block per flush on a backlog); in the live runs `{}`. The local server is ClickHouse 18.16: it accepts `kafka_num_consumers` and `kafka_max_block_size` and refuses `kafka_flush_interval_ms`, `kafka_poll_max_batch_size`, `kafka_poll_timeout_ms`, `kafka_thread_per_consumer`, `kafka_skip_broken_messages` and a table-level `stream_flush_interval_ms` (\"Unknown setting … for storage Kafka\", checked against this server); its flush interval is the server profile's `stream_flush_interval_ms` (7,500 ms, left as it is on the shared server). Docs: <https://clickhouse.com/docs/en/engines/table-engines/integrations/kafka> (settings), <https://github.com/ClickHouse/ClickHouse/issues/2169> (`stream_flush_interval_ms` from the default profile).\n",
        first.engine_settings.trim_start_matches(", "),
        engine_settings(3, crate::live::LIVE_ENGINE_BLOCK).trim_start_matches(", ")
    );
    let _ = writeln!(
        m,
        "| run | rows (distinct marketlane / engine) | marketlane rows/s | engine rows/s | daemon CPU s / M rows | ClickHouse CPU s / M rows during marketlane | ClickHouse CPU s / M rows during the engine | marketlane total / engine |\n|---|---|---|---|---|---|---|---|"
    );
    for (i, s) in stages.iter().enumerate() {
        let (d, cm, ce) = s.cpu_per_million();
        let _ = writeln!(
            m,
            "| {i} | {} ({} / {}) | {:.0} | {:.0} | {d:.1} | {cm:.1} | {ce:.1} | {} |",
            s.rows,
            s.marketlane.distinct,
            s.engine.distinct,
            s.marketlane.rows_per_sec,
            s.engine.rows_per_sec,
            if ce > 0.0 {
                format!("{:.2}×", (d + cm) / ce)
            } else {
                "–".into()
            }
        );
    }
    let (r, c) = (engine_ratio(stages), engine_cpu_ratio(stages));
    let mut verdict = Vec::new();
    if let Some(r) = r.filter(|r| *r < 1.5) {
        verdict.push(format!(
            "marketlane drains at {r:.2}× the engine's rows/s (target ≥1.5×)"
        ));
    }
    if let Some(c) = c.filter(|c| *c > 1.0) {
        verdict.push(format!(
            "marketlane's daemon spends {c:.2}× the CPU per row the engine's ClickHouse does (target ≤1×; the profile shows where the daemon's time goes), and ClickHouse still parses marketlane's inserts on top"
        ));
    }
    if !verdict.is_empty() {
        let _ = writeln!(m, "\n**Where marketlane loses:** {}.\n", verdict.join("; "));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(v: &[(f64, u64)]) -> Vec<Seen> {
        v.iter()
            .map(|&(latency, count)| Seen {
                t: 1.0,
                latency,
                count,
            })
            .collect()
    }

    #[test]
    fn rows_that_never_arrived_push_the_quantile_out() {
        let s = seen(&[(0.2, 98), (0.5, 1)]);
        assert_eq!(quantile_with_missing(&s, 0, 0.99), Some(0.5));
        assert_eq!(quantile_with_missing(&s, 1, 0.99), Some(0.5));
        assert_eq!(quantile_with_missing(&s, 2, 0.99), None);
        assert_eq!(quantile_with_missing(&[], 0, 0.99), None);
    }

    #[test]
    fn a_quantile_in_the_top_bucket_is_unknown() {
        let b = Buckets(vec![(0.1, 90.0), (30.0, 99.0), (f64::INFINITY, 100.0)]);
        assert_eq!(above_top(&b), Some(0.01));
        assert!(hist_quantile(&b, 0.99).is_some());
        assert_eq!(hist_quantile(&b, 0.999), None);
        let hit = Buckets(vec![(0.1, 50.0), (30.0, 90.0), (f64::INFINITY, 100.0)]);
        assert_eq!(hist_quantile(&hit, 0.99), None);
    }
}
