//! Kafka as the tests see it: the stack's bootstrap address, every payload of a topic, and
//! topic clean-up.

use std::time::{Duration, Instant};

use anyhow::bail;
use marketlane_protocol::category::TICK;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseProducer;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

use crate::unique;

pub fn kafka_bootstrap() -> String {
    std::env::var("ML_KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        format!(
            "127.0.0.1:{}",
            std::env::var("ML_KAFKA_PORT").unwrap_or_else(|_| "9092".into())
        )
    })
}

/// Every message payload of `topic` (all partitions, from the beginning to the current end).
pub fn kafka_payloads(topic: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", unique("test_reader_"))
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0usize;
    let mut ends = std::collections::HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (lo, hi) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if hi > lo {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                ends.insert(p.id(), hi);
                remaining += 1;
            }
        }
    }
    let mut out = Vec::new();
    if remaining == 0 {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while remaining > 0 && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m?;
            out.push(m.payload().unwrap_or_default().to_vec());
            if m.offset() + 1 == ends[&m.partition()] {
                remaining -= 1;
            }
        }
    }
    Ok(out)
}

/// Rows of a topic as JSON (tick rows: `kafka_rows(&lane.tick_topic())`).
pub fn kafka_rows(topic: &str) -> Vec<Value> {
    kafka_payloads(topic)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| serde_json::from_slice(p).ok())
        .collect()
}

/// Deletes every topic whose name starts with `prefix` (non-empty).
pub async fn delete_topics(prefix: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    if prefix.is_empty() {
        bail!("refusing to delete every topic");
    }
    let config = {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", kafka_bootstrap());
        c
    };
    let consumer: BaseConsumer = config.create()?;
    let md = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let topics: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    admin
        .delete_topics(
            &refs,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    Ok(())
}

/// One valid tick row as the connector writes it (AAPL at 1.5, `tick_time` `t0 + i` ns), with
/// a row id of `tag` and `i`: for tests that feed a writer directly.
pub fn tick_row(tag: &str, i: u64, t0: i64) -> Vec<u8> {
    let row = serde_json::json!({
        "row_id": marketlane_protocol::row_id(TICK, &[tag, &i.to_string()]),
        "source_system_name": "ib", "component_instance_name": "p", "ingestion_time": t0,
        "exchange_identifier": "SMART", "symbol_identifier": "AAPL", "symbol_type": "stocks",
        "price": 1.5, "price_unit": "1_USdollar", "size": 1.0, "size_unit": "100_shares",
        "tick_time": t0 + i as i64,
    });
    serde_json::to_vec(&row).expect("a JSON value serializes")
}

/// An idempotent producer to the stack's Kafka (5 ms linger).
pub fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("a Kafka producer")
}
