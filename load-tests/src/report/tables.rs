//! The report's figures: medians, cell formatting, the steady-state window of a live run and
//! the takeover section.

use std::fmt::Write as _;

use crate::clickhouse as chq;
use crate::live::{LiveResult, Sample};
use crate::takeover::{self, TakeoverResult};

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub(super) fn fmt_s(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| {
        if v < 1.0 {
            format!("{:.0} ms", v * 1000.0)
        } else {
            format!("{v:.2} s")
        }
    })
}

pub(super) fn fmt_n(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.0}"))
}

pub(super) fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// Each value (s, three decimals: the first figures are milliseconds; `–` where it was not
/// reached) of a list of figures.
pub(super) fn each(v: &[Option<f64>]) -> String {
    v.iter()
        .map(|x| x.map_or("–".into(), |x| format!("{x:.3}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Median of the figures that were reached; `None` when any was not (a takeover that did not
/// happen within the limit is not a fast one).
pub(super) fn median_all(v: &[Option<f64>]) -> Option<f64> {
    if v.iter().any(Option::is_none) {
        return None;
    }
    median(v.iter().flatten().copied().collect())
}

/// The rows of the two-pod takeover in the recovery tables (`| recovery | each (s) | median |`).
pub(super) fn takeover_rows(t: &TakeoverResult) -> String {
    let k = &t.kills;
    let fig = |f: fn(&takeover::Kill) -> Option<f64>| k.iter().map(f).collect::<Vec<_>>();
    let rows: [(String, Vec<Option<f64>>); 6] = [
        (
            "two-pod takeover: SIGKILL of pod 1 → the survivor notices (`marketlane_cluster_members` 2 → 1)".into(),
            fig(|k| k.noticed),
        ),
        (
            format!(
                "two-pod takeover: SIGKILL → the survivor holds all {} symbols (`marketlane_cluster_assigned_symbols`)",
                t.config.symbols
            ),
            fig(|k| k.held_all),
        ),
        (
            "two-pod takeover: SIGKILL → the survivor's websocket has frames of every symbol of the killed pod (`ctl status` → `cluster.streaming`, refreshed every 0.5 s)".into(),
            fig(|k| k.streaming),
        ),
        (
            "**two-pod takeover: SIGKILL → every symbol of the killed pod in Kafka again** (tick rows from the survivor, event time after the kill)".into(),
            fig(|k| k.kafka),
        ),
        (
            "two-pod takeover: SIGKILL → the same symbols queryable in ClickHouse (writer daemon, batches ≤0.5 s)".into(),
            fig(|k| k.clickhouse),
        ),
        (
            "two-pod takeover: pod 1 restarted → split settled again (both see 2 members, nothing handed over, every symbol streams from its owner)".into(),
            fig(|k| k.rejoined),
        ),
    ];
    let mut m = String::new();
    for (name, v) in rows {
        let _ = writeln!(m, "| {name} | {} | {} |", each(&v), fmt_s(median_all(&v)));
    }
    m
}

/// The runs one binary made in a `--compare-bin` round (indices into `live` and `stages`).
#[derive(Debug, Clone, Default)]
pub struct Variant {
    pub label: String,
    pub live: Option<usize>,
    pub stage: Option<usize>,
}

/// Steady-window figures of one live run.
pub(super) struct Steady<'a> {
    pub(super) r: &'a LiveResult,
    pub(super) s: Vec<&'a Sample>,
}

impl<'a> Steady<'a> {
    pub(super) fn new(r: &'a LiveResult) -> Self {
        let s = r
            .samples
            .iter()
            .filter(|s| s.t >= r.steady.0 && s.t <= r.steady.1 + 0.5)
            .collect();
        Self { r, s }
    }
    pub(super) fn mean(&self, f: impl Fn(&Sample) -> f64) -> Option<f64> {
        (!self.s.is_empty()).then(|| self.s.iter().map(|s| f(s)).sum::<f64>() / self.s.len() as f64)
    }
    pub(super) fn median(&self, f: impl Fn(&Sample) -> f64) -> Option<f64> {
        median(self.s.iter().map(|s| f(s)).collect())
    }
    pub(super) fn max(&self, f: impl Fn(&Sample) -> f64) -> Option<f64> {
        self.s.iter().map(|s| f(s)).reduce(f64::max)
    }
    pub(super) fn seen(&self, label: &str) -> Vec<chq::Seen> {
        self.r
            .seen
            .get(label)
            .map(|v| {
                v.iter()
                    .filter(|s| s.t >= self.r.steady.0 && s.t <= self.r.steady.1)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }
    pub(super) fn queryable(&self, label: &str, q: f64) -> Option<f64> {
        chq::quantile(&self.seen(label), q)
    }
    /// The daemon's histogram of `sink` over the categories, quantile q.
    pub(super) fn daemon(&self, sink: &str, cats: &[&str], q: f64) -> Option<f64> {
        let mut total: Option<crate::prom::Buckets> = None;
        for ((cat, s), b) in &self.r.hist {
            if s != sink || !cats.contains(&cat.as_str()) {
                continue;
            }
            total = Some(match total {
                None => b.clone(),
                Some(t) => crate::prom::Buckets(
                    t.0.iter()
                        .zip(&b.0)
                        .map(|((le, a), (_, c))| (*le, a + c))
                        .collect(),
                ),
            });
        }
        total.and_then(|b| b.quantile(q))
    }
}

/// `## Two-pod takeover`: the set-up, the figures of every kill and their medians.
pub(super) fn takeover_section(t: &TakeoverResult) -> String {
    let mut m = String::new();
    let c = &t.config;
    let _ = writeln!(m, "\n## Two-pod takeover\n");
    let _ = writeln!(
        m,
        "One simulator serves two gateways (IB users `bench-a` and `bench-b`: one market, one clock, one ledger) with {n} synthetic symbols (`--synthetic-symbols {n} --frame-interval-ms {ms} --unpaced --trade-probability 1 --status-probability 0 --line-cap 100`: every frame carries a trade, so every symbol has a tick row every {ms} ms and \"rows again\" is known to within that). Two daemons `bench-takeover-0` and `bench-takeover-1` run `roles = [\"connector\"]` with `[cluster]` enabled on loopback (both in `peers`, distinct ports, `ib.usernames` by ordinal) and the cluster's defaults (heartbeat every 0.25 s, `heartbeat_timeout` 1.5 s, `line_budget` 100: the survivor can hold all {n}). A third daemon runs `roles = [\"writer\"]` and is never killed: a writer inside the killed pod would add its consumer group's session timeout to the ClickHouse figure and rebalance the group at every restart, which is not the takeover. The split settled {formed:.1} s after the start: pod 0 held {a}, pod 1 held {b} symbols.\n",
        n = c.symbols,
        ms = takeover::FRAME_INTERVAL_MS,
        formed = t.formed,
        a = t.split.0,
        b = t.split.1,
    );
    let _ = writeln!(
        m,
        "Each round ({} in this run): 3 s of steady streaming, SIGKILL of pod 1, the figures below (from the signal), then pod 1 is started again with the same config (a StatefulSet restart without the kubelet's delay) and the split must settle again before the next kill. Logs and configs: `{}`.\n",
        t.kills.len(),
        t.dir.display()
    );
    let _ = writeln!(m, "| recovery | each (s) | median |\n|---|---|---|");
    m.push_str(&takeover_rows(t));
    let _ = writeln!(m);
    for (i, k) in t.kills.iter().enumerate() {
        let _ = writeln!(
            m,
            "- kill {}: pod 1 held {} symbols; the survivor noticed by: {}; after the restart pod 1 took {} symbols back; the survivor quarantined {} rows as `unknown_conid` in the round (frames of symbols it handed back, still in flight after its `umd`).",
            i + 1,
            k.killed_symbols,
            k.noticed_by,
            if k.same_split {
                "the same"
            } else {
                "**other**"
            },
            k.quarantined
        );
    }
    let by_link = t.kills.iter().all(|k| k.noticed_by == "link closed");
    if by_link && !t.kills.is_empty() {
        let _ = writeln!(
            m,
            "\nThe kernel closes a killed process's TCP connections, so the survivor's cluster link closed at once and it noticed without waiting for `heartbeat_timeout` (1.5 s), which only a cut or half-open link needs. The rest of the takeover is the survivor's reassignment, one `smd` per symbol on its open websocket, the first delta frame with a trade, and the Kafka round trip."
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::{each, median, median_all};

    #[test]
    fn a_takeover_figure_missing_in_any_kill_has_no_median() {
        assert_eq!(median_all(&[Some(0.4), Some(0.6), Some(0.5)]), Some(0.5));
        assert_eq!(median_all(&[Some(0.4), None]), None);
        assert_eq!(median_all(&[]), None);
        assert_eq!(each(&[Some(0.0081), None]), "0.008, –");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![f64::NAN, 1.0]), Some(1.0));
    }
}
