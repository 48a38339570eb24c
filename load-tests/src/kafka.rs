//! Kafka for the benchmark: topic creation and deletion, and pre-filling a topic with valid
//! category rows so that the Kafka → ClickHouse stage can be driven (and compared with the
//! ClickHouse Kafka engine) without the simulator in front of it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use marketlane_protocol::{CategorySchema, RowMap, row_id};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

pub async fn create_topics(
    bootstrap: &str,
    topics: &[String],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin = admin(bootstrap)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("cannot create topic {t}: {e}"),
        }
    }
    Ok(())
}

/// Deletes every topic whose name starts with `prefix` (the run's own topics).
pub async fn delete_topics_with_prefix(bootstrap: &str, prefix: &str) -> anyhow::Result<usize> {
    if prefix.is_empty() {
        bail!("refusing to delete topics with an empty prefix");
    }
    let admin = admin(bootstrap)?;
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .context("kafka metadata")?;
    let names: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin.delete_topics(&refs, &AdminOptions::new()).await?;
    Ok(names.len())
}

/// Commits offset 0 of every partition of `topic` for `group`, so that a consumer of that group
/// starts at the beginning. ClickHouse 18.16's Kafka engine has no offset-reset setting per table
/// and its librdkafka resets to the end: without this it would skip a pre-filled topic.
pub fn commit_beginning(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(0))?;
        }
    }
    if tpl.count() == 0 {
        bail!("topic {topic} has no partitions");
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

/// One valid `l2_market_data` row (validated by the schema, so the states are set exactly as
/// the normalizers set them), as the JSON marketlane puts on the topic.
pub fn l2_row(
    schema: &CategorySchema,
    i: u64,
    symbols: u64,
    depth: u64,
    now_ns: i64,
) -> anyhow::Result<(String, Vec<u8>)> {
    let sym = format!("SYM{:04}", i % symbols + 1);
    let tick = i / (symbols * depth * 2);
    let level = (i / symbols) % depth;
    let side = if (i / (symbols * depth)).is_multiple_of(2) {
        "bid"
    } else {
        "ask"
    };
    let price = 100.0 + (i % 997) as f64 * 0.01;
    let id = row_id(
        "l2_market_data",
        &[
            "ib",
            &sym,
            &tick.to_string(),
            side,
            &level.to_string(),
            "bench",
        ],
    );
    let row = json!({
        "row_id": id,
        "source_system_name": "ib",
        "component_instance_name": "bench-prefill",
        "ingestion_time": now_ns,
        "exchange_identifier": "NASDAQ",
        "symbol_identifier": sym,
        "symbol_type": "stocks",
        "price": price,
        "price_unit": "1_USdollar",
        "size": 100.0 + (i % 13) as f64,
        "size_unit": "shares",
        "side": side,
        "level": level as i64,
        "max_level": depth as i64,
        "l2_time": now_ns,
    });
    let Value::Object(map) = row else {
        bail!("not an object")
    };
    let valid: RowMap = schema
        .validate(map)
        .map_err(|e| anyhow::anyhow!("prefill row is not a valid l2 row: {e}"))?;
    Ok((sym, serde_json::to_vec(&valid)?))
}

/// Produces `rows` l2 rows to `topic` with the daemon's producer settings (idempotent, acks=all,
/// lz4) and waits for every acknowledgement. Returns rows/s of the producer.
pub fn prefill_l2(
    bootstrap: &str,
    topic: &str,
    schema: &CategorySchema,
    rows: u64,
) -> anyhow::Result<f64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?;
    let started = Instant::now();
    for i in 0..rows {
        let (key, payload) = l2_row(schema, i, 1000, 5, marketlane_protocol::now_ns())?;
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("cannot produce to {topic}: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("prefill flush")?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> CategorySchema {
        let dir = crate::procs::repo_root().join("schemas");
        marketlane_protocol::SchemaSet::load_dir(&dir)
            .unwrap()
            .get("l2_market_data")
            .unwrap()
            .clone()
    }

    #[test]
    fn prefill_rows_are_valid_and_distinct() {
        let s = schema();
        let (k0, a) = l2_row(&s, 0, 1000, 5, 1).unwrap();
        let (_, b) = l2_row(&s, 1000, 1000, 5, 1).unwrap();
        assert_eq!(k0, "SYM0001");
        let a: serde_json::Value = serde_json::from_slice(&a).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_ne!(a["row_id"], b["row_id"]);
        assert_eq!(a["level"], 0);
        assert_eq!(b["level"], 1);
        assert_eq!(a["exchange_identifier_state"], "ok");
    }
}
