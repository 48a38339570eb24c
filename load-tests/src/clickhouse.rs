//! ClickHouse over HTTP for the benchmark: statements, counts, and the event → queryable
//! latency measured from outside, by polling the tables.
//!
//! Every `POLL` the poller counts a table's rows per 100 ms of event time. Rows that a poll sees
//! in an event-time slot but the previous poll did not became queryable between the two polls:
//! their latency is (midpoint of the two polls) − (middle of their slot). The error is at most
//! half the poll period plus half a slot (±175 ms at the defaults), the same for marketlane's
//! tables and the Kafka engine's.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};

/// Width of an event-time slot, ns.
pub const SLOT_NS: i64 = 100_000_000;
/// Time between two polls of one table.
pub const POLL: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Ch {
    http: reqwest::Client,
    url: String,
}

impl Ch {
    pub fn new(url: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            url: url.trim_end_matches('/').to_string(),
        }
    }

    pub async fn query(&self, sql: &str) -> anyhow::Result<String> {
        let resp = self
            .http
            .post(format!("{}/", self.url))
            .body(sql.to_string())
            .send()
            .await
            .with_context(|| format!("clickhouse at {} unreachable", self.url))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("clickhouse answered {status} to {sql:?}: {}", text.trim());
        }
        Ok(text)
    }

    /// Runs a script of `;`-terminated statements (e.g. `marketlane schema ddl` output).
    pub async fn script(&self, script: &str) -> anyhow::Result<()> {
        let mut stmt = String::new();
        for line in script.lines() {
            if line.trim_start().starts_with("--") {
                continue;
            }
            stmt.push_str(line);
            stmt.push('\n');
            if line.trim_end().ends_with(';') {
                let s = stmt.trim().trim_end_matches(';').to_string();
                stmt.clear();
                if !s.is_empty() {
                    self.query(&s).await?;
                }
            }
        }
        Ok(())
    }

    pub async fn count(&self, table: &str) -> anyhow::Result<u64> {
        Ok(self
            .query(&format!("SELECT count() FROM {table}"))
            .await?
            .trim()
            .parse()
            .unwrap_or(0))
    }

    pub async fn version(&self) -> String {
        self.query("SELECT version()")
            .await
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// Rows per event-time slot of `table` with event time at or after `since_ns`.
    pub async fn slots(
        &self,
        table: &str,
        time_col: &str,
        since_ns: i64,
    ) -> anyhow::Result<HashMap<i64, u64>> {
        let text = self
            .query(&format!(
                "SELECT intDiv({time_col}, {SLOT_NS}) AS s, count() FROM {table} \
                 WHERE {time_col} >= {since_ns} GROUP BY s FORMAT TabSeparated"
            ))
            .await?;
        let mut out = HashMap::new();
        for line in text.lines() {
            let mut it = line.split('\t');
            if let (Some(s), Some(c)) = (it.next(), it.next())
                && let (Ok(s), Ok(c)) = (s.parse(), c.parse())
            {
                out.insert(s, c);
            }
        }
        Ok(out)
    }
}

/// Rows that appeared between two polls: (slot, how many).
pub fn appeared(before: &HashMap<i64, u64>, now: &HashMap<i64, u64>) -> Vec<(i64, u64)> {
    let mut out: Vec<(i64, u64)> = now
        .iter()
        .filter_map(|(s, c)| {
            let d = c.saturating_sub(before.get(s).copied().unwrap_or(0));
            (d > 0).then_some((*s, d))
        })
        .collect();
    out.sort_unstable();
    out
}

/// One observation of the queryable poller: at `t` (s since the run began), `count` rows
/// became queryable with latency `latency` (s).
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub t: f64,
    pub latency: f64,
    pub count: u64,
}

/// Turns the rows that appeared between polls at `prev_ns` and `now_ns` into observations.
pub fn observe(appeared: &[(i64, u64)], prev_ns: i64, now_ns: i64, run_start_ns: i64) -> Vec<Seen> {
    let visible = prev_ns + (now_ns - prev_ns) / 2;
    appeared
        .iter()
        .map(|&(slot, count)| Seen {
            t: (visible - run_start_ns) as f64 / 1e9,
            latency: ((visible - (slot * SLOT_NS + SLOT_NS / 2)) as f64 / 1e9).max(0.0),
            count,
        })
        .collect()
}

/// Weighted quantile of observations (exact over the recorded latencies).
pub fn quantile(seen: &[Seen], q: f64) -> Option<f64> {
    crate::summary::quantile_with_missing(seen, 0, q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_rows_of_a_slot_count_as_appeared() {
        let before = HashMap::from([(10, 5), (11, 2)]);
        let now = HashMap::from([(10, 5), (11, 7), (12, 3)]);
        assert_eq!(appeared(&before, &now), vec![(11, 5), (12, 3)]);
    }

    #[test]
    fn latency_is_poll_midpoint_minus_slot_middle() {
        // Slot 10 = [1.0 s, 1.1 s) of event time; polls at 1.5 s and 1.75 s.
        let seen = observe(&[(10, 4)], 1_500_000_000, 1_750_000_000, 0);
        assert_eq!(seen.len(), 1);
        assert!((seen[0].latency - (1.625 - 1.05)).abs() < 1e-9);
        assert!((seen[0].t - 1.625).abs() < 1e-9);
        assert_eq!(seen[0].count, 4);
    }

    #[test]
    fn weighted_quantiles() {
        let seen = [
            Seen {
                t: 0.0,
                latency: 0.2,
                count: 98,
            },
            Seen {
                t: 0.0,
                latency: 3.0,
                count: 2,
            },
        ];
        assert_eq!(quantile(&seen, 0.5), Some(0.2));
        assert_eq!(quantile(&seen, 0.98), Some(0.2));
        assert_eq!(quantile(&seen, 0.99), Some(3.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
