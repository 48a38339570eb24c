//! The daemon's `/metrics` text, read the way the benchmark needs it: sums of counters over
//! label filters, and histogram buckets whose differences between two scrapes give the
//! latency distribution of that interval.

use std::collections::BTreeMap;

/// One sample line: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// One scrape: every sample line.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((head, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (head, Vec::new()),
            };
            samples.push((name.to_string(), labels, v));
        }
        Self { samples }
    }

    /// Sum of `name` over the samples whose labels satisfy `keep`.
    pub fn sum(&self, name: &str, keep: impl Fn(&Labels) -> bool) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && keep(&Labels(l)))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Cumulative buckets (upper bound → count) of histogram `name`, summed over the series
    /// whose labels satisfy `keep`.
    pub fn buckets(&self, name: &str, keep: impl Fn(&Labels) -> bool) -> Buckets {
        let bucket = format!("{name}_bucket");
        let mut out = BTreeMap::new();
        for (n, l, v) in &self.samples {
            if *n != bucket || !keep(&Labels(l)) {
                continue;
            }
            let labels = Labels(l);
            let Some(le) = labels.get("le") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(x) => x,
                    Err(_) => continue,
                }
            };
            *out.entry(OrdF64(le)).or_insert(0.0) += v;
        }
        Buckets(out.into_iter().map(|(k, v)| (k.0, v)).collect())
    }
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let Some(end) = after.find('"') else { break };
        out.push((
            k.trim_start_matches(',').trim().to_string(),
            after[..end].to_string(),
        ));
        rest = &after[end + 1..];
    }
    out
}

pub struct Labels<'a>(&'a [(String, String)]);

impl<'a> Labels<'a> {
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Cumulative histogram buckets, ascending upper bounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// `self − earlier`: the observations made between two scrapes.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, c)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (le, (c - before).max(0.0))
                })
                .collect(),
        )
    }

    /// Both sets of observations (one histogram that spans processes). Where one has a bound
    /// the other lacks, the other's count is its cumulative count at the next lower bound.
    pub fn plus(&self, other: &Buckets) -> Buckets {
        let at = |b: &Buckets, le: f64| {
            b.0.iter()
                .take_while(|(l, _)| *l <= le)
                .last()
                .map_or(0.0, |(_, c)| *c)
        };
        let mut bounds: Vec<f64> = self.0.iter().chain(&other.0).map(|(l, _)| *l).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        Buckets(
            bounds
                .into_iter()
                .map(|le| (le, at(self, le) + at(other, le)))
                .collect(),
        )
    }

    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }

    /// The q-quantile, interpolated linearly inside its bucket (Prometheus'
    /// `histogram_quantile`); the last finite bound when it falls in `+Inf`. None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(le, c) in &self.0 {
            if c >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = c - below;
                let frac = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * frac);
            }
            lower = le;
            below = c;
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x y
marketlane_kafka_produced_total{topic="b_tick_market_data"} 10
marketlane_kafka_produced_total{topic="b_tick_market_data_unqualified"} 3
marketlane_kafka_produced_total{topic="b_l2_market_data"} 5
lat_bucket{category="tick",sink="kafka",le="0.1"} 2
lat_bucket{category="tick",sink="kafka",le="1"} 8
lat_bucket{category="tick",sink="kafka",le="+Inf"} 10
lat_bucket{category="l2",sink="kafka",le="0.1"} 10
lat_bucket{category="l2",sink="kafka",le="1"} 10
lat_bucket{category="l2",sink="kafka",le="+Inf"} 10
lat_bucket{category="l2",sink="redis",le="0.1"} 100
lat_bucket{category="l2",sink="redis",le="1"} 100
lat_bucket{category="l2",sink="redis",le="+Inf"} 100
"#;

    #[test]
    fn sums_counters_over_a_label_filter() {
        let s = Scrape::parse(TEXT);
        let kept = s.sum("marketlane_kafka_produced_total", |l| {
            !l.get("topic").unwrap_or("").ends_with("_unqualified")
        });
        assert_eq!(kept, 15.0);
    }

    #[test]
    fn histogram_buckets_sum_series_and_interpolate() {
        let s = Scrape::parse(TEXT);
        let b = s.buckets("lat", |l| l.is("sink", "kafka"));
        assert_eq!(b.0, vec![(0.1, 12.0), (1.0, 18.0), (f64::INFINITY, 20.0)]);
        // rank 10 of 20 lies in the first bucket: 10/12 of 0.1.
        let p50 = b.quantile(0.5).unwrap();
        assert!((p50 - 0.1 * 10.0 / 12.0).abs() < 1e-9, "{p50}");
        // rank 19.8 is past the last finite bound.
        assert_eq!(b.quantile(0.99), Some(1.0));
    }

    #[test]
    fn difference_of_two_scrapes_is_the_interval() {
        let a = Buckets(vec![(0.1, 5.0), (1.0, 5.0), (f64::INFINITY, 5.0)]);
        let b = Buckets(vec![(0.1, 5.0), (1.0, 9.0), (f64::INFINITY, 9.0)]);
        let d = b.since(&a);
        assert_eq!(d.count(), 4.0);
        // Every new observation is in (0.1, 1]: the median is inside that bucket.
        let p50 = d.quantile(0.5).unwrap();
        assert!(p50 > 0.1 && p50 <= 1.0, "{p50}");
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn histograms_of_two_processes_add_up() {
        let a = Buckets(vec![(0.1, 5.0), (f64::INFINITY, 6.0)]);
        let b = Buckets(vec![(0.1, 1.0), (1.0, 3.0), (f64::INFINITY, 3.0)]);
        assert_eq!(
            a.plus(&b).0,
            vec![(0.1, 6.0), (1.0, 8.0), (f64::INFINITY, 9.0)]
        );
        assert_eq!(Buckets::default().plus(&b), b);
    }
}
