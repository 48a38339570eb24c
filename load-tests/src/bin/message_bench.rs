//! `marketlane-message-bench`: what one Kafka message per row costs against several rows per
//! message, side by side in one run on the real local broker (`scripts/stack up kafka`). The
//! lane produces one message per row (a topic implements a category schema, row by row); this
//! measures what a message per frame (its rows as JSON lines, the format ClickHouse's Kafka
//! engine also reads) would save, to weigh that change of the topics' contract.
//!
//! Each side produces the same level-2 rows (written by the connector's `write_typed`) with the
//! connector's producer settings (its `producer_config` of the default config: idempotent,
//! `acks=all`, lz4, `linger.ms` 20) to a fresh topic at a live rate (40,000 rows/s by default),
//! waits for every acknowledgement, then reads the topic back with one consumer and splits the
//! lines. Prints CPU µs per row of this process
//! while producing, of the broker over the produce, and of this process while consuming, rounds
//! alternating, the medians and the ratios. Run (with `scripts/stack up kafka`):
//! `marketlane-message-bench [rows a round] [rows a message] [rows/s]`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use marketlane_actors::config::KafkaConfig;
use marketlane_actors::kafka::producer::producer_config;
use marketlane_protocol::{Scalar, SchemaSet};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

// The driver's `/proc` readings and the stack's pid files (this binary uses two of them).
#[allow(dead_code)]
#[path = "../procs.rs"]
mod procs;

const BOOTSTRAP: &str = "127.0.0.1:9092";
const PARTITIONS: i32 = 6;
const SYMBOLS: usize = 1_000;
const ROUNDS: usize = 4;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU seconds of a process (all threads).
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    procs::usage(pid)
        .map(|u| u.cpu_secs)
        .with_context(|| format!("no /proc/{pid}/stat"))
}

/// `n` level-2 rows of `SYMBOLS` symbols as the connector writes them: (key, JSON).
fn rows(n: usize) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let schemas = SchemaSet::load_dir(&dir)?;
    let l2 = schemas.get("l2_market_data")?;
    let mut out = Vec::with_capacity(n);
    let mut missing = Vec::new();
    for i in 0..n {
        let symbol = format!("SYM{:04}", i % SYMBOLS);
        let id = format!("{:08x}-8d0e-5a7b-9a0e-{:012x}", i, i * 7919);
        let level = (i % 5) as u64 + 1;
        let row: Vec<(&str, Scalar)> = vec![
            ("row_id", Scalar::Str(&id)),
            ("source_system_name", Scalar::Str("ib")),
            ("component_instance_name", Scalar::Str("marketlane-0")),
            (
                "ingestion_time",
                Scalar::I64(1_764_944_000_123_456_789 + i as i64),
            ),
            ("exchange_identifier", Scalar::Null),
            ("symbol_identifier", Scalar::Str(&symbol)),
            ("symbol_type", Scalar::Str("futures")),
            ("price", Scalar::f64(70.0 + (i % 400) as f64 / 100.0)),
            ("price_unit", Scalar::Str("1_USdollar")),
            ("size", Scalar::f64((i % 37) as f64 + 1.0)),
            ("size_unit", Scalar::Str("1_contracts")),
            ("side", Scalar::Str(if i % 2 == 0 { "bid" } else { "ask" })),
            ("level", Scalar::U64(level)),
            ("max_level", Scalar::U64(5)),
            ("l2_time", Scalar::I64(1_764_944_000_123 + i as i64)),
        ];
        let mut json = Vec::with_capacity(512);
        l2.write_typed(&row, &mut json, &mut missing)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push((symbol, json));
    }
    Ok(out)
}

/// CPU µs per row of one side: producing (this process), the broker, consuming (this process).
struct Costs {
    produce: f64,
    broker: f64,
    consume: f64,
}

fn run(
    rows: &[(String, Vec<u8>)],
    per_message: usize,
    rate: usize,
    topic: &str,
    broker: u32,
) -> anyhow::Result<Costs> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .create()?;
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for r in rt.block_on(admin.create_topics([&new], &AdminOptions::new()))? {
        r.map_err(|(t, e)| anyhow::anyhow!("cannot create {t}: {e}"))?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let me = std::process::id();

    // The connector's producer, as configured by default.
    let producer: ThreadedProducer<DefaultProducerContext> = producer_config(&KafkaConfig {
        bootstrap_servers: BOOTSTRAP.into(),
        ..KafkaConfig::default()
    })
    .create()?;
    let (me0, broker0) = (cpu_secs(me)?, cpu_secs(broker)?);
    // Rows of one symbol share a message, as the rows of one frame would.
    let mut by_symbol: std::collections::BTreeMap<&str, Vec<&[u8]>> = Default::default();
    let mut payload = Vec::new();
    let mut messages = 0u64;
    // Paced as the connector produces live: `rate` rows a second in 10 ms steps (librdkafka's
    // batches, and so the broker's requests, are as small as live ones, not a backlog's).
    let start = Instant::now();
    for (i, (key, json)) in rows.iter().enumerate() {
        if i % (rate / 100).max(1) == 0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let group = by_symbol.entry(key.as_str()).or_default();
        group.push(json);
        if group.len() < per_message {
            continue;
        }
        payload.clear();
        for (i, r) in group.drain(..).enumerate() {
            if i > 0 {
                payload.push(b'\n');
            }
            payload.extend_from_slice(r);
        }
        let mut record = BaseRecord::to(topic).key(key.as_str()).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    // The queue is full: wait for acknowledgements, as the connector does.
                    std::thread::sleep(Duration::from_millis(1));
                    record = back;
                }
            }
        }
        messages += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    let (me1, broker1) = (cpu_secs(me)?, cpu_secs(broker)?);
    drop(producer);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let (mut read_rows, mut read_messages, mut bytes) = (0usize, 0u64, 0usize);
    let me2 = cpu_secs(me)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while read_messages < messages {
        if Instant::now() > deadline {
            bail!("read {read_messages} of {messages} messages of {topic} in 300 s");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                read_messages += 1;
                for line in m.payload().unwrap_or_default().split(|b| *b == b'\n') {
                    bytes += line.len();
                    read_rows += 1;
                }
            }
            Some(Err(e)) => bail!("consumer error: {e}"),
            None => {}
        }
    }
    let me3 = cpu_secs(me)?;
    drop(consumer);
    // A symbol's last rows short of a full message stay unsent.
    let n = SYMBOLS * (rows.len() / SYMBOLS / per_message * per_message);
    anyhow::ensure!(read_rows == n, "read {read_rows} rows, produced {n}");
    anyhow::ensure!(bytes > 0, "empty payloads");
    rt.block_on(admin.delete_topics(&[topic], &AdminOptions::new()))?;
    let per_row = |s: f64| s * 1e6 / n as f64;
    Ok(Costs {
        produce: per_row(me1 - me0),
        broker: per_row(broker1 - broker0),
        consume: per_row(me3 - me2),
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(700_000);
    let per_message: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(7);
    let rate: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(40_000);
    anyhow::ensure!(per_message > 1, "rows a message must be more than 1");
    anyhow::ensure!(
        n.is_multiple_of(SYMBOLS),
        "rows a round must be a multiple of {SYMBOLS}"
    );
    let broker = procs::pid_of("kafka").context("no broker pid file (scripts/stack up kafka)")?;
    let rows = rows(n)?;
    println!(
        "message-bench: {n} level-2 rows ({} bytes of JSON on average) of {SYMBOLS} symbols, \
         {PARTITIONS} partitions, produced at {rate} rows/s, a row a message vs {per_message} \
         rows a message, {ROUNDS} rounds alternating; CPU µs per row (reading back: at once, \
         after the produce)",
        rows.iter().map(|r| r.1.len()).sum::<usize>() / n
    );
    let stamp = std::process::id();
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let sides = if round % 2 == 0 {
            [1, per_message]
        } else {
            [per_message, 1]
        };
        for k in sides {
            let c = run(
                &rows,
                k,
                rate,
                &format!("message-bench-{stamp}-{round}-{k}"),
                broker,
            )?;
            println!(
                "round {round}: {k:>2} a message: produce {:.2} | broker {:.2} | consume {:.2}",
                c.produce, c.broker, c.consume
            );
            if k == 1 { one.push(c) } else { many.push(c) }
        }
    }
    let med = |v: &[Costs], f: fn(&Costs) -> f64| median(v.iter().map(f).collect());
    for (name, f) in [
        ("produce", (|c: &Costs| c.produce) as fn(&Costs) -> f64),
        ("broker", |c: &Costs| c.broker),
        ("consume", |c: &Costs| c.consume),
        ("all three", |c: &Costs| c.produce + c.broker + c.consume),
    ] {
        let (a, b) = (med(&one, f), med(&many, f));
        println!(
            "median {name}: a row a message {a:.2}, {per_message} rows a message {b:.2}; ratio {:.2}",
            b / a
        );
    }
    Ok(())
}
