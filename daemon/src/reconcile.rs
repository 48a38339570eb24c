//! `marketlane reconcile`: compares the simulator's ledger of emitted trades with what reached
//! Kafka and ClickHouse, by row id. ClickHouse is counted as an analyst sees it: `count()` with
//! `FINAL` and distinct row ids.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use marketlane_actors::clickhouse_writer::ClickHouse;
use marketlane_protocol::category::TICK;
use marketlane_protocol::tick_row_id;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::config::Config;

/// One ledger line of the simulator (only trades are reconciled here).
#[derive(Deserialize)]
struct LedgerLine {
    kind: String,
    conid: i64,
    updated: i64,
    /// Price and size of the trade as sent: part of its row id (`tick_row_id`).
    #[serde(default)]
    price: Option<f64>,
    #[serde(default)]
    size: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    pub emitted: usize,
    pub kafka: usize,
    pub clickhouse: u64,
    pub clickhouse_distinct: u64,
    pub lost: usize,
    pub duplicates: u64,
    /// Trades inside an excluded window (a deliberate outage), reported apart.
    pub excluded: usize,
    pub excluded_stored: usize,
}

impl std::fmt::Display for Reconciliation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "emitted={} kafka={} clickhouse={} lost={} duplicates={}",
            self.emitted, self.kafka, self.clickhouse, self.lost, self.duplicates
        )
    }
}

/// A time window `[from_ms, to_ms]` of source event time to leave out (an outage).
pub type Window = (i64, i64);

/// Expected tick row ids of the ledger, split into counted and excluded (inside a window).
fn expected(
    ledger: &Path,
    source: &str,
    exclude: Option<Window>,
) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>, i64, i64)> {
    let text = std::fs::read_to_string(ledger)
        .with_context(|| format!("cannot read ledger {}", ledger.display()))?;
    let mut counted = BTreeSet::new();
    let mut excluded = BTreeSet::new();
    let (mut min, mut max) = (i64::MAX, i64::MIN);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: LedgerLine =
            serde_json::from_str(line).with_context(|| format!("ledger line {}: {line}", i + 1))?;
        if e.kind != "trade" {
            continue;
        }
        let id = tick_row_id(source, e.conid, e.updated, e.price, e.size, None);
        min = min.min(e.updated);
        max = max.max(e.updated);
        if exclude.is_some_and(|(a, b)| e.updated >= a && e.updated <= b) {
            excluded.insert(id);
        } else {
            counted.insert(id);
        }
    }
    Ok((counted, excluded, min, max))
}

/// Every row id in the tick topic (read from the beginning of every partition).
fn kafka_row_ids(config: &Config) -> anyhow::Result<HashMap<String, u32>> {
    let topic = config.kafka.topic(TICK);
    let consumer: BaseConsumer = marketlane_actors::kafka::client_config(&config.kafka)
        .set("group.id", "marketlane-reconcile")
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut high = HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (lo, hi) = consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(10))?;
            if hi > lo {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
                high.insert(p.id(), hi);
            }
        }
    }
    let mut ids = HashMap::new();
    if high.is_empty() {
        return Ok(ids);
    }
    consumer.assign(&tpl)?;
    let mut done: HashMap<i32, bool> = high.keys().map(|p| (*p, false)).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while done.values().any(|d| !d) && std::time::Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg?;
        if msg.offset() + 1 >= high[&msg.partition()] {
            done.insert(msg.partition(), true);
        }
        if let Some(payload) = msg.payload()
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload)
            && let Some(id) = v.get("row_id").and_then(|x| x.as_str())
        {
            *ids.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    Ok(ids)
}

pub async fn reconcile(
    config: &Config,
    ledger: &Path,
    exclude: Option<Window>,
) -> anyhow::Result<Reconciliation> {
    let (counted, excluded, min_ms, max_ms) = expected(ledger, &config.source_system, exclude)?;
    let kafka_cfg = config.clone();
    let in_kafka = tokio::task::spawn_blocking(move || kafka_row_ids(&kafka_cfg)).await??;
    let ch = ClickHouse::connect(&config.clickhouse).await?;
    let db = &config.clickhouse.database;
    let t = if ch.version.capabilities().datetime64 {
        "toUnixTimestamp64Nano(tick_time)"
    } else {
        "tick_time"
    };
    let (from, to) = (
        min_ms.saturating_mul(1_000_000),
        max_ms.saturating_mul(1_000_000),
    );
    let mut filter = format!(
        "source_system_name = '{}' AND {t} BETWEEN {from} AND {to}",
        config.source_system.replace('\'', "")
    );
    if let Some((a, b)) = exclude {
        filter.push_str(&format!(
            " AND NOT ({t} BETWEEN {} AND {})",
            a.saturating_mul(1_000_000),
            b.saturating_mul(1_000_000)
        ));
    }
    let (count_final, distinct): (u64, u64) = if counted.is_empty() && excluded.is_empty() {
        (0, 0)
    } else {
        ch.client
            .query(&format!(
                "SELECT count(), uniqExact(row_id) FROM `{db}`.`{TICK}` FINAL WHERE {filter}"
            ))
            .fetch_one()
            .await
            .context("count in clickhouse")?
    };
    let stored: BTreeSet<String> = if counted.is_empty() && excluded.is_empty() {
        BTreeSet::new()
    } else {
        let all = format!(
            "source_system_name = '{}' AND {t} BETWEEN {from} AND {to}",
            config.source_system.replace('\'', "")
        );
        ch.client
            .query(&format!(
                "SELECT row_id FROM `{db}`.`{TICK}` FINAL WHERE {all}"
            ))
            .fetch_all::<String>()
            .await
            .context("row ids in clickhouse")?
            .into_iter()
            .collect()
    };
    let kafka = counted
        .iter()
        .filter(|id| in_kafka.contains_key(*id))
        .count();
    let lost = counted.iter().filter(|id| !stored.contains(*id)).count();
    Ok(Reconciliation {
        emitted: counted.len(),
        kafka,
        clickhouse: count_final,
        clickhouse_distinct: distinct,
        lost,
        duplicates: count_final.saturating_sub(distinct),
        excluded: excluded.len(),
        excluded_stored: excluded.iter().filter(|id| stored.contains(*id)).count(),
    })
}
