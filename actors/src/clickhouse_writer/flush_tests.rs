//! The writer's flush against a fake ClickHouse that counts what it is sent: one offsets
//! insert per flush, carrying this flush's `before` ranges and the previous one's `after`s.

use std::sync::{Arc, Mutex};

use marketlane_protocol::clickhouse::{BatchPhase, ServerVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::clickhouse_writer::batch::StateRecord;
use crate::config::ClickHouseConfig;

/// What the fake server received: each request's URL and body.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, Vec<u8>)>,
    /// Requests whose URL contains this fail once with an exception (then it is cleared).
    fail_next: Option<&'static str>,
}

/// A ClickHouse over HTTP/1.1 that acknowledges every insert (`127.0.0.1:0`).
async fn fake_clickhouse() -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(conn, s.clone()));
        }
    });
    (url, seen)
}

async fn serve(mut conn: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_until(&mut conn, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let url = head.split(' ').nth(1).unwrap_or_default().to_string();
        buf.drain(..head_end + 4);
        let body = if head.contains("transfer-encoding: chunked") {
            let mut body = Vec::new();
            loop {
                let Some(end) = read_until(&mut conn, &mut buf, b"\r\n").await else {
                    return;
                };
                let len =
                    usize::from_str_radix(std::str::from_utf8(&buf[..end]).unwrap(), 16).unwrap();
                buf.drain(..end + 2);
                while buf.len() < len + 2 {
                    if !read_more(&mut conn, &mut buf).await {
                        return;
                    }
                }
                body.extend(buf.drain(..len));
                buf.drain(..2);
                if len == 0 {
                    break body;
                }
            }
        } else {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < len {
                if !read_more(&mut conn, &mut buf).await {
                    return;
                }
            }
            buf.drain(..len).collect()
        };
        let fail = {
            let mut seen = seen.lock().unwrap();
            let fail = seen.fail_next.is_some_and(|f| url.contains(f));
            if fail {
                seen.fail_next = None;
            }
            seen.requests.push((url, body));
            fail
        };
        let reply = if fail {
            let text = "Code: 202, e.displayText() = DB::Exception: Too many simultaneous queries";
            format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
        } else {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_string()
        };
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match conn.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn read_until(conn: &mut TcpStream, buf: &mut Vec<u8>, pat: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(pat.len()).position(|w| w == pat) {
            return Some(i);
        }
        if !read_more(conn, buf).await {
            return None;
        }
    }
}

/// The rows of an offsets insert (RowBinary of `encode_offset_state`).
fn decode_states(mut b: &[u8]) -> Vec<StateRecord> {
    let mut out = Vec::new();
    while !b.is_empty() {
        // A topic name shorter than 128 bytes: its varint length is one byte.
        let len = b[0] as usize;
        b = &b[1 + len..];
        let p = i32::from_le_bytes(b[..4].try_into().unwrap());
        let min = i64::from_le_bytes(b[4..12].try_into().unwrap());
        let max = i64::from_le_bytes(b[12..20].try_into().unwrap());
        let phase = if b[20] == 1 {
            BatchPhase::Before
        } else {
            BatchPhase::After
        };
        b = &b[29..];
        out.push((p, min, max, phase));
    }
    out
}

/// A quarantine writer (no schema needed) whose ClickHouse is the fake at `url`.
fn writer(url: &str) -> WriterState {
    let kafka = KafkaConfig {
        // Never reached: the test feeds the batcher itself; commits fail quietly.
        bootstrap_servers: "127.0.0.1:1".into(),
        ..Default::default()
    };
    let writer = WriterConfig {
        batch_rows: 2,
        ..Default::default()
    };
    let config = ClickHouseConfig {
        url: url.into(),
        ..Default::default()
    };
    let clickhouse = ClickHouse {
        client: clickhouse::Client::default()
            .with_url(url)
            .with_compression(clickhouse::Compression::None)
            .with_validation(false),
        version: ServerVersion::parse("18.16.1").unwrap(),
        config,
    };
    let topic = "t_unqualified".to_string();
    let consumer =
        WriterConsumer::subscribe(&kafka, &writer, &topic, "g", "i", QUARANTINE_PREFETCH_KIB)
            .unwrap();
    let budget = WriterBudget::new();
    WriterState {
        args: WriterArgs {
            kind: WriterKind::Quarantine {
                category: "t".into(),
            },
            kafka,
            writer: writer.clone(),
            clickhouse,
            metrics: Arc::new(Metrics::new()),
            instance: "test".into(),
            budget: budget.clone(),
        },
        budget: budget.share(),
        consumer,
        table: unqualified_table("t"),
        insert_sql: String::new(),
        quarantine_sql: unqualified_insert_statement("t", "marketlane"),
        batcher: Batcher::new(writer.batch_rows, writer.batch_max_age),
        paused: false,
        backoff: Backoff::new(writer.retry_backoff, writer.retry_max_backoff),
        snapshot: WriterSnapshot::default(),
        last_seq: 0,
        retry_paused: Vec::new(),
        pending_schema: None,
        refused: None,
        topic,
    }
}

/// Adds a quarantine record at `offset` of `partition` to its batch.
fn add(w: &mut WriterState, partition: i32, offset: i64) {
    let batch = w.batcher.take(partition, offset, Instant::now());
    batch.quarantine.extend_from_slice(b"record");
    batch.quarantine_count += 1;
}

/// The offsets inserts and the data inserts the fake received since the last call.
fn drain_seen(seen: &Mutex<Seen>) -> (Vec<Vec<StateRecord>>, usize) {
    let requests = std::mem::take(&mut seen.lock().unwrap().requests);
    let (offsets, data): (Vec<_>, Vec<_>) = requests
        .into_iter()
        .partition(|(url, _)| url.contains("writer_offsets"));
    (
        offsets.iter().map(|(_, b)| decode_states(b)).collect(),
        data.len(),
    )
}

#[tokio::test]
async fn a_flush_makes_one_offsets_insert_with_the_previous_after_ranges() {
    use BatchPhase::{After, Before};
    let (url, seen) = fake_clickhouse().await;
    let mut w = writer(&url);
    for p in 0..3 {
        w.batcher.assign(p, None);
    }
    for p in 0..3 {
        add(&mut w, p, 0);
        add(&mut w, p, 1);
    }
    assert!(w.flush_due().await);
    let (offsets, data) = drain_seen(&seen);
    assert_eq!(
        offsets,
        vec![vec![
            (0, 0, 1, Before),
            (1, 0, 1, Before),
            (2, 0, 1, Before)
        ]],
        "one offsets insert, before the data"
    );
    assert_eq!(data, 3, "one data insert per partition");

    // Partition 0 again: its new `before` and the others' `after`, in one insert.
    add(&mut w, 0, 2);
    add(&mut w, 0, 3);
    assert!(w.flush_due().await);
    let (offsets, data) = drain_seen(&seen);
    assert_eq!(
        offsets,
        vec![vec![(0, 2, 3, Before), (1, 0, 1, After), (2, 0, 1, After)]]
    );
    assert_eq!(data, 1);

    // The data insert fails once: its retry sends the data again but no offsets.
    add(&mut w, 1, 2);
    add(&mut w, 1, 3);
    seen.lock().unwrap().fail_next = Some("unqualified");
    assert!(!w.flush_due().await);
    let (offsets, data) = drain_seen(&seen);
    assert_eq!(offsets, vec![vec![(1, 2, 3, Before), (0, 2, 3, After)]]);
    assert_eq!(data, 1);
    assert!(w.flush_due().await);
    assert_eq!(drain_seen(&seen), (vec![], 1));

    // A drain writes the last `after` ranges once; a second has nothing to write.
    w.record_afters().await;
    w.record_afters().await;
    assert_eq!(drain_seen(&seen), (vec![vec![(1, 2, 3, After)]], 0));
    assert_eq!((w.snapshot.flushes, w.snapshot.offset_inserts), (3, 4));
}

/// One level-2 row as the connector puts it on its topic (the benchmark's rows: validated, so
/// the states are set as the normalizers set them).
fn l2_payload(schema: &marketlane_protocol::CategorySchema, i: u64) -> Vec<u8> {
    let (symbols, depth) = (1000, 5);
    let sym = format!("SYM{:04}", i % symbols + 1);
    let side = if (i / (symbols * depth)).is_multiple_of(2) {
        "bid"
    } else {
        "ask"
    };
    let level = (i / symbols) % depth;
    let now = 1_796_463_008_656_573_591 + i as i64;
    let id = marketlane_protocol::row_id(
        "l2_market_data",
        &[
            "ib",
            &sym,
            &(i / 10_000).to_string(),
            side,
            &level.to_string(),
        ],
    );
    let row = serde_json::json!({
        "row_id": id, "source_system_name": "ib", "component_instance_name": "bench-prefill",
        "ingestion_time": now, "exchange_identifier": "NASDAQ", "symbol_identifier": sym,
        "symbol_type": "stocks", "price": 100.0 + (i % 997) as f64 * 0.01,
        "price_unit": "1_USdollar", "size": 100.0 + (i % 13) as f64, "size_unit": "shares",
        "side": side, "level": level, "max_level": depth, "l2_time": now,
    });
    let serde_json::Value::Object(map) = row else {
        unreachable!()
    };
    serde_json::to_vec(&schema.validate(map).unwrap()).unwrap()
}

/// A full batch of level-2 rows holds its encoded rows only (`--nocapture` prints what it held
/// per row before, when the batch kept a copy of every payload, and now).
#[test]
fn a_batch_of_l2_rows_holds_its_encoded_rows_and_no_payloads() {
    let schemas = marketlane_protocol::SchemaSet::load_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas"),
    )
    .unwrap();
    let schema = schemas.get("l2_market_data").unwrap();
    let rows = WriterConfig::default().batch_rows;
    let mut batch = Encoded::default();
    let mut json = 0;
    for i in 0..rows as u64 {
        let payload = l2_payload(schema, i);
        json += payload.len();
        marketlane_protocol::wire_row::encode_json_row(schema, &payload, &mut batch.rows).unwrap();
        batch.row_count += 1;
        batch.index.push(i as i64, 0, batch.rows.len());
    }
    let encoded = batch.rows.len();
    // The index: a row end, an offset and a Kafka time per row (before: a payload end too).
    let (index_now, index_before) = (rows * 24, rows * 32);
    assert_eq!(
        batch.bytes(),
        encoded + index_now,
        "a batch counts (and holds) its encoded rows and index, and no payloads"
    );
    println!(
        "{rows} l2 rows: encoded {} B/row, JSON payload {} B/row; batch bytes() before {} B/row \
         ({} MB), now {} B/row ({} MB); with the row index before {} MB, now {} MB",
        encoded / rows,
        json / rows,
        (encoded + json) / rows,
        (encoded + json) / 1_000_000,
        encoded / rows,
        encoded / 1_000_000,
        (encoded + json + index_before) / 1_000_000,
        (encoded + index_now) / 1_000_000,
    );
}
