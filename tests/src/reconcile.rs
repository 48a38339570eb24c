//! The ledger ⇄ ClickHouse comparison by row id ([`reconcile_ticks`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use marketlane_protocol::category::TICK;

use crate::clickhouse;
use crate::kafka::kafka_rows;
use crate::sim::LedgerTrade;

/// The ledger ⇄ ClickHouse comparison by row id.
#[derive(Debug, Clone, Default)]
pub struct Reconciliation {
    /// Distinct trades the simulator sent.
    pub emitted: usize,
    /// Of those, outside the allowed gap windows: each must be stored.
    pub counted: usize,
    /// Counted trades not in ClickHouse.
    pub lost: usize,
    /// Trades inside the allowed windows, and how many of them are not stored.
    pub in_gaps: usize,
    pub gap_missing: usize,
    /// `count()` and `uniqExact(row_id)` of the tick table with `FINAL`.
    pub stored: u64,
    pub distinct: u64,
    pub duplicates: u64,
    /// Stored rows that are no trade of the ledger.
    pub phantoms: usize,
    /// Row ids that occur more than once in the tick topic (before any deduplication).
    pub kafka_duplicates: usize,
}

/// Compares ledger trades with the tick table of `db` (and the tick topic) by row id. Trades
/// whose event time falls in one of `gaps` (ms, inclusive) may be missing; every other one
/// must be stored. Waits up to `settle` for the writers to catch up before it reports. One
/// pod or several sharing the lane's table: the comparison is the same.
pub async fn reconcile_ticks(
    db: &str,
    topic: &str,
    trades: &[LedgerTrade],
    gaps: &[(i64, i64)],
    settle: Duration,
) -> anyhow::Result<Reconciliation> {
    let until = Instant::now() + settle;
    loop {
        let r = reconcile_once(db, topic, trades, gaps).await?;
        if r.lost == 0 || Instant::now() >= until {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn reconcile_once(
    db: &str,
    topic: &str,
    trades: &[LedgerTrade],
    gaps: &[(i64, i64)],
) -> anyhow::Result<Reconciliation> {
    let stored: BTreeSet<String> = clickhouse(&format!("SELECT row_id FROM {db}.{TICK} FINAL"))
        .await?
        .lines()
        .map(String::from)
        .collect();
    let counts = clickhouse(&format!(
        "SELECT count(), uniqExact(row_id) FROM {db}.{TICK} FINAL"
    ))
    .await?;
    let mut it = counts.split_whitespace().map(|n| n.parse::<u64>());
    let (count, distinct) = match (it.next(), it.next()) {
        (Some(Ok(c)), Some(Ok(d))) => (c, d),
        _ => bail!("unexpected count answer {counts:?}"),
    };
    let in_gap = |t: &LedgerTrade| {
        gaps.iter()
            .any(|(a, b)| t.updated_ms >= *a && t.updated_ms <= *b)
    };
    let mut r = Reconciliation {
        emitted: trades.len(),
        stored: count,
        distinct,
        duplicates: count.saturating_sub(distinct),
        ..Default::default()
    };
    let ledger_ids: BTreeSet<&str> = trades.iter().map(|t| t.row_id.as_str()).collect();
    for t in trades {
        let here = stored.contains(&t.row_id);
        if in_gap(t) {
            r.in_gaps += 1;
            r.gap_missing += usize::from(!here);
        } else {
            r.counted += 1;
            r.lost += usize::from(!here);
        }
    }
    r.phantoms = stored
        .iter()
        .filter(|id| !ledger_ids.contains(id.as_str()))
        .count();
    let mut in_kafka: BTreeMap<String, usize> = BTreeMap::new();
    for row in kafka_rows(topic) {
        if let Some(id) = row["row_id"].as_str() {
            *in_kafka.entry(id.to_string()).or_default() += 1;
        }
    }
    r.kafka_duplicates = in_kafka.values().filter(|n| **n > 1).count();
    Ok(r)
}

/// The line the lead collects for the closing note.
pub fn fault_row_line(row: &str, name: &str, recovery: Option<f64>, r: &Reconciliation) -> String {
    let recovery = recovery.map_or("never".to_string(), |s| format!("{s:.1}"));
    format!(
        "FAULT-ROW {row} {name} recovery={recovery}s lost={} duplicates={}",
        r.lost, r.duplicates
    )
}
