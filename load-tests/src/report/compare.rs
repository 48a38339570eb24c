//! `--compare-bin`: the side-by-side table of two binaries.

use std::fmt::Write as _;

use crate::live::daemons::Role;
use crate::stage::StageRun;

use super::tables::{Steady, median};
use super::{Report, Variant};

/// The source categories (indicator rows are apart).
const SOURCES: [&str; 2] = ["tick_market_data", "l2_market_data"];

impl Report {
    /// `--compare-bin`: each figure for `before` and `after` (median over the rounds, each
    /// run in brackets) and the ratio after / before.
    pub(super) fn side_by_side(&self) -> String {
        type Figure<'r> = (&'r str, Box<dyn Fn(&Variant) -> Option<f64> + 'r>);
        let live = |f: fn(&Steady<'_>) -> Option<f64>| {
            move |v: &Variant| v.live.and_then(|i| f(&Steady::new(&self.live[i])))
        };
        let stage =
            |f: fn(&StageRun) -> f64| move |v: &Variant| v.stage.map(|i| f(&self.stages[i]));
        let figures: Vec<Figure<'_>> = vec![
            (
                "rate: rows normalized /s (mean)",
                Box::new(live(|s| s.mean(|x| x.rates.normalized))),
            ),
            (
                "rate: rows acknowledged by Kafka /s",
                Box::new(live(|s| s.mean(|x| x.rates.kafka))),
            ),
            (
                "rate: rows acknowledged by ClickHouse /s",
                Box::new(live(|s| s.mean(|x| x.rates.clickhouse))),
            ),
            (
                "rate: rows read by the calculators /s",
                Box::new(live(|s| s.mean(|x| x.rates.calculator_rows))),
            ),
            (
                "rate: connector + writer CPU µs per source row into ClickHouse",
                Box::new(live(|s| s.r.extra.daemon_us_per_row())),
            ),
            (
                "rate: calculator CPU µs per source row into ClickHouse",
                Box::new(live(|s| s.r.extra.role_us_per_row(Role::Calculator))),
            ),
            (
                "rate: connector + writer CPU µs per row normalized",
                Box::new(live(|s| {
                    let rows = s.mean(|x| x.rates.normalized)?;
                    let cpu = s.mean(|x| x.role_cpu[0] + x.role_cpu[1])?;
                    (rows > 0.0).then_some(cpu / 100.0 * 1e6 / rows)
                })),
            ),
            // A change that saves CPU by waiting longer shows here, in the same rounds.
            (
                "rate: p99 event → Kafka acknowledged, s (daemon)",
                Box::new(live(|s| s.daemon("kafka", &SOURCES, 0.99))),
            ),
            (
                "rate: p99 event → Redis written, s (daemon)",
                Box::new(live(|s| s.daemon("redis", &SOURCES, 0.99))),
            ),
            (
                "rate: p99 event → queryable, marketlane l2, s (polled)",
                Box::new(live(|s| s.queryable("marketlane l2", 0.99))),
            ),
            (
                "rate: connector CPU % (median)",
                Box::new(live(|s| s.median(|x| x.role_cpu[0]))),
            ),
            (
                "rate: writer CPU % (median)",
                Box::new(live(|s| s.median(|x| x.role_cpu[1]))),
            ),
            (
                "rate: calculator CPU % (median)",
                Box::new(live(|s| s.median(|x| x.role_cpu[2]))),
            ),
            (
                "rate: connector RSS MB (max)",
                Box::new(live(|s| s.max(|x| x.role_rss_mb[0]))),
            ),
            (
                "rate: writer RSS MB (max)",
                Box::new(live(|s| s.max(|x| x.role_rss_mb[1]))),
            ),
            (
                "rate: calculator RSS MB (max)",
                Box::new(live(|s| s.max(|x| x.role_rss_mb[2]))),
            ),
            (
                "rate: writer consumer lag at the end",
                Box::new(live(|s| s.s.last().map(|x| x.rates.lag))),
            ),
            (
                "rate: machine busy % (control)",
                Box::new(live(|s| s.median(|x| x.machine_busy))),
            ),
            (
                "stage: marketlane rows/s (from start)",
                Box::new(stage(|r| r.marketlane.rows_per_sec)),
            ),
            (
                "stage: marketlane rows/s (once streaming)",
                Box::new(stage(|r| r.marketlane.sustained)),
            ),
            (
                "stage: daemon CPU µs per row",
                Box::new(stage(|r| {
                    r.marketlane.daemon_cpu / r.rows.max(1) as f64 * 1e6
                })),
            ),
            (
                "stage: ClickHouse CPU s (marketlane's drain)",
                Box::new(stage(|r| r.marketlane.ch_cpu)),
            ),
            (
                "stage: Kafka engine rows/s from start (control)",
                Box::new(stage(|r| r.engine.rows_per_sec)),
            ),
        ];
        let mut m = String::new();
        let rounds = self.variants.len() / 2;
        let _ = writeln!(
            m,
            "\n## Side by side: `before` (`--compare-bin`) vs `after` (`--bin`)\n\n\
             {rounds} rounds on the same stack and machine (the parts chosen by `--parts`), \
             `before` first in even rounds and `after` first in odd ones (the second run of a \
             round meets the first one's rows in Kafka and ClickHouse). Median over the rounds, each run in brackets; \
             ratio = after / before. The machine is shared: read the ratios, not the absolute \
             figures.\n"
        );
        let _ = writeln!(
            m,
            "| figure | before | after | after / before |\n|---|---|---|---|"
        );
        for (name, f) in &figures {
            let of = |label: &str| -> Vec<f64> {
                self.variants
                    .iter()
                    .filter(|v| v.label == label)
                    .filter_map(f)
                    .collect()
            };
            let (b, a) = (of("before"), of("after"));
            if b.is_empty() && a.is_empty() {
                continue;
            }
            // Seconds and small figures keep their milliseconds.
            let fmt = |x: f64, whole: usize| {
                if x.abs() < 10.0 {
                    format!("{x:.3}")
                } else {
                    format!("{x:.whole$}")
                }
            };
            let cell = |v: &[f64]| {
                let each: Vec<String> = v.iter().map(|x| fmt(*x, 1)).collect();
                let mid = median(v.to_vec()).map_or("–".into(), |x| fmt(x, 0));
                format!("{mid} ({})", each.join(", "))
            };
            let ratio = match (median(b.clone()), median(a.clone())) {
                (Some(b), Some(a)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            let _ = writeln!(m, "| {name} | {} | {} | {ratio} |", cell(&b), cell(&a));
        }
        m
    }
}
