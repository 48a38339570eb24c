//! The ClickHouse writers on the real local stack (ClickHouse 18.16 here): every category into
//! its ingestion, quarantine and snapshot tables, exactly-once across replays and SIGKILLs,
//! schema growth, retention and the read-only analyst.
//!
//! l2 and indicators rows are produced into Kafka by the test (valid category rows), as are tick
//! and economic rows here: these tests are about the writer, not the connectors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use marketlane_protocol::wire_row::encode_json_row;
use marketlane_protocol::{CategorySchema, Dtype, SchemaSet, row_id};
use marketlane_tests::clickhouse::{drop_db, lines, scalar};
use marketlane_tests::config::WriterConfig;
use marketlane_tests::daemon::{scrape_metrics, wait_readyz};
use marketlane_tests::kafka::producer;
use marketlane_tests::{
    Proc, clickhouse, clickhouse_url, eventually, free_port, run_marketlane, unique, workspace_root,
};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Map, Value, json};

fn schemas() -> SchemaSet {
    SchemaSet::load_dir(&workspace_root().join("schemas")).unwrap()
}

/// A writer-only daemon config (`roles = ["writer"]`).
#[allow(clippy::too_many_arguments)]
fn writer_config(
    dir: &Path,
    name: &str,
    prefix: &str,
    db: &str,
    group: &str,
    categories: &[&str],
    schemas_dir: &Path,
    http_port: u16,
) -> PathBuf {
    let mut c =
        WriterConfig::new("writer-test", Some(prefix), db, http_port).categories(categories);
    c.schemas_dir = schemas_dir.to_path_buf();
    c.partitions = 3;
    c.group_id = Some(group.into());
    c.batch_rows = Some(300);
    c.write(&dir.join(format!("{name}.toml")))
}

/// Starts `marketlane run` with `config` and waits until it is ready (topics and tables exist).
async fn start_writer(config: &Path, log: &Path, http_port: u16) -> Proc {
    let mut p = Proc::spawn(&["run", "-c", config.to_str().unwrap()], log).unwrap();
    // A writer that exited will never be ready: stop waiting then.
    let mut exited = false;
    let ready = wait_readyz(
        &format!("127.0.0.1:{http_port}"),
        Duration::from_secs(60),
        |r| {
            exited = !r.ready() && matches!(p.0.try_wait(), Ok(Some(_)));
            exited || r.ready()
        },
    )
    .await;
    assert!(
        ready.is_ok() && !exited,
        "writer not ready ({ready:?}, exited: {exited}):\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    p
}

fn produce(p: &BaseProducer, topic: &str, rows: &[(String, Vec<u8>)]) {
    for (key, payload) in rows {
        loop {
            match p.send(BaseRecord::to(topic).key(key).payload(payload)) {
                Ok(()) => break,
                Err((_, _)) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// A valid row of `schema`, number `i`: key fields cycle through `keys` values, the event time
/// grows with `i`, so the latest row of a key is the one with the largest `i`.
fn sample_row(schema: &CategorySchema, i: u64, keys: u64, t0: i64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "row_id".into(),
        json!(row_id(&schema.category, &["test", &i.to_string()])),
    );
    for f in &schema.fields {
        let in_key = schema.snapshot_key.contains(&f.name);
        let v = match f.dtype {
            Dtype::String if f.name == "source_system_name" => json!("test"),
            Dtype::String if !f.allowed.is_empty() => {
                json!(f.allowed[(i % f.allowed.len() as u64) as usize])
            }
            Dtype::String if in_key => json!(format!("{}_{}", f.name, i % keys)),
            Dtype::String => json!(format!("{}_v", f.name)),
            Dtype::Float64 => json!(i as f64 + 0.5),
            Dtype::Int64 => json!(i),
            Dtype::UInt32 => json!(i % keys + 1),
            Dtype::Timestamp => json!(t0 + i as i64 * 1_000),
        };
        m.insert(f.name.clone(), v);
    }
    m
}

fn key_of(schema: &CategorySchema, row: &Map<String, Value>) -> String {
    schema
        .snapshot_key
        .iter()
        .map(|k| row[k].to_string())
        .collect::<Vec<_>>()
        .join("|")
}

/// Everything an analyst can see of a category, as sorted text, to compare before and after.
async fn table_contents(db: &str, schema: &CategorySchema) -> (Vec<String>, Vec<String>, u64) {
    let c = &schema.category;
    let cols: Vec<String> = schema.columns();
    let main = lines(&format!(
        "SELECT {} FROM {db}.{c} FINAL ORDER BY row_id",
        cols.join(", ")
    ))
    .await;
    let snap = lines(&marketlane_protocol::clickhouse::snapshot_query_final(
        schema, db,
    ))
    .await;
    let unq = scalar(&format!(
        "SELECT count() FROM (SELECT * FROM {db}.{c}_unqualified FINAL)"
    ))
    .await;
    (main, snap, unq)
}

/// Inserts ClickHouse took into `db.table` so far: each insert is a block with the table's
/// next number (one partition per insert here) and merges keep the highest. 18.16 has no
/// `system.query_log`; this is the measure of inserts per flush the tests print.
async fn inserts_into(db: &str, table: &str) -> u64 {
    scalar(&format!(
        "SELECT max(max_block_number) FROM system.parts WHERE database = '{db}' AND table = '{table}'"
    ))
    .await
}

/// Rows the running writer inserted into the ingestion tables, from its `/metrics`.
async fn rows_inserted(http_port: u16, schemas: &SchemaSet) -> u64 {
    let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{http_port}/metrics")).await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    schemas
        .iter()
        .filter_map(|s| {
            let prefix = format!(
                "marketlane_clickhouse_rows_inserted_total{{table=\"{}\"}} ",
                s.category
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .sum::<f64>() as u64
}

/// The running writer's consumer lag on `topic` from its `/metrics`, summed over the
/// partitions; `None` until all `partitions` are exported.
async fn consumer_lag(http_port: u16, topic: &str, partitions: usize) -> Option<u64> {
    let metrics = scrape_metrics(&format!("127.0.0.1:{http_port}")).await?;
    let label = format!("topic=\"{topic}\"");
    let lags: Vec<f64> = metrics
        .0
        .iter()
        .filter(|(s, _)| s.starts_with("marketlane_consumer_lag{") && s.contains(&label))
        .map(|(_, v)| *v)
        .collect();
    (lags.len() == partitions).then(|| lags.iter().sum::<f64>() as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_category_reaches_its_snapshot_table_and_a_replay_changes_nothing() {
    let schemas = schemas();
    let prefix = format!("{}_", unique("ch_"));
    let db = unique("ch_");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cats: Vec<&str> = schemas.iter().map(|s| s.category.as_str()).collect();
    let cfg = writer_config(
        dir.path(),
        "w1",
        &prefix,
        &db,
        &unique("g1_"),
        &cats,
        &workspace_root().join("schemas"),
        port,
    );
    let mut w = start_writer(&cfg, &dir.path().join("w1.log"), port).await;
    let p = producer();
    let t0 = marketlane_protocol::now_ns();
    const N: u64 = 400;
    const KEYS: u64 = 7;
    let mut latest: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for schema in schemas.iter() {
        let mut rows = Vec::new();
        let mut last = BTreeMap::new();
        for i in 0..N {
            let row = sample_row(schema, i, KEYS, t0);
            last.insert(
                key_of(schema, &row),
                row["row_id"].as_str().unwrap().to_string(),
            );
            rows.push((i.to_string(), serde_json::to_vec(&row).unwrap()));
        }
        // A poison row: the writer quarantines it with its Kafka coordinates.
        rows.push(("bad".into(), b"{not json".to_vec()));
        produce(&p, &format!("{prefix}{}", schema.category), &rows);
        latest.insert(schema.category.clone(), last);
    }
    for schema in schemas.iter() {
        let c = &schema.category;
        let done = eventually(Duration::from_secs(60), || async {
            scalar(&format!("SELECT count() FROM {db}.{c} FINAL")).await == N
                && scalar(&format!("SELECT count() FROM {db}.{c}_unqualified")).await == 1
        })
        .await;
        assert!(done, "{c}: rows did not arrive");
        // The snapshot holds exactly the latest row per key, by FINAL and by argMax alike.
        let want: BTreeSet<String> = latest[c].values().cloned().collect();
        let snap: BTreeSet<String> = lines(&format!("SELECT row_id FROM {db}.{c}_snapshot FINAL"))
            .await
            .into_iter()
            .collect();
        assert_eq!(snap, want, "{c}: snapshot");
        let final_q = lines(&marketlane_protocol::clickhouse::snapshot_query_final(
            schema, &db,
        ))
        .await;
        let argmax_q = lines(&marketlane_protocol::clickhouse::snapshot_query_argmax(
            schema, &db,
        ))
        .await;
        assert_eq!(final_q.len(), want.len(), "{c}");
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(final_q),
            sorted(argmax_q),
            "{c}: FINAL and argMax disagree"
        );
        let coords = clickhouse(&format!(
            "SELECT source_topic, source_offset >= 0, reason_code FROM {db}.{c}_unqualified"
        ))
        .await
        .unwrap();
        assert_eq!(coords.trim(), format!("{prefix}{c}\t1\tnot_json"), "{c}");
    }
    let mut data_inserts = 0;
    for schema in schemas.iter() {
        let c = &schema.category;
        data_inserts += inserts_into(&db, c).await;
        data_inserts += inserts_into(&db, &format!("{c}_unqualified")).await;
    }
    println!(
        "inserts: offsets table {}, ingestion and quarantine tables {data_inserts}",
        inserts_into(&format!("{db}_state"), "writer_offsets").await
    );
    let mut before = BTreeMap::new();
    for schema in schemas.iter() {
        before.insert(schema.category.clone(), table_contents(&db, schema).await);
    }
    w.terminate();

    // 1. A fresh consumer group: Kafka has no offsets for it, the writer starts where the
    //    offsets table says, and nothing is inserted again (not even physically).
    let cfg2 = writer_config(
        dir.path(),
        "w2",
        &prefix,
        &db,
        &unique("g2_"),
        &cats,
        &workspace_root().join("schemas"),
        port,
    );
    let mut w2 = start_writer(&cfg2, &dir.path().join("w2.log"), port).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    for schema in schemas.iter() {
        let c = &schema.category;
        assert_eq!(
            table_contents(&db, schema).await,
            before[c],
            "{c}: fresh group"
        );
    }
    assert_eq!(
        rows_inserted(port, &schemas).await,
        0,
        "a fresh group re-inserted rows"
    );
    w2.terminate();

    // 2. The offsets state lost as well: the whole topics are replayed from offset 0 and
    //    collapse in the ReplacingMergeTree; what an analyst reads (FINAL) is unchanged.
    clickhouse(&format!("TRUNCATE TABLE {db}_state.writer_offsets"))
        .await
        .unwrap();
    let cfg3 = writer_config(
        dir.path(),
        "w3",
        &prefix,
        &db,
        &unique("g3_"),
        &cats,
        &workspace_root().join("schemas"),
        port,
    );
    let mut w3 = start_writer(&cfg3, &dir.path().join("w3.log"), port).await;
    let replayed = eventually(Duration::from_secs(60), || async {
        rows_inserted(port, &schemas).await >= 4 * N
    })
    .await;
    assert!(replayed, "the replay did not happen");
    for schema in schemas.iter() {
        let c = &schema.category;
        assert_eq!(
            table_contents(&db, schema).await,
            before[c],
            "{c}: replay from 0"
        );
    }
    w3.terminate();
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_writer_mid_batch_ten_times_keeps_every_row_once() {
    let schemas = schemas();
    let tick = schemas.get("tick_market_data").unwrap().clone();
    let prefix = format!("{}_", unique("k_"));
    let db = unique("k_");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let topic = format!("{prefix}tick_market_data");
    let schemas_dir = workspace_root().join("schemas");
    let cfg = |n: usize| {
        writer_config(
            dir.path(),
            &format!("k{n}"),
            &prefix,
            &db,
            // Kafka commits are advisory: every restart may even use a fresh group.
            &unique(&format!("kg{n}_")),
            &["tick_market_data"],
            &schemas_dir,
            port,
        )
    };
    let mut w = start_writer(&cfg(0), &dir.path().join("k0.log"), port).await;
    // Load: a producer thread writes rows continuously while the writer is killed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer_thread = {
        let stop = stop.clone();
        let topic = topic.clone();
        let tick = tick.clone();
        std::thread::spawn(move || {
            let p = producer();
            let t0 = marketlane_protocol::now_ns();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rows: Vec<(String, Vec<u8>)> = (i..i + 200)
                    .map(|j| {
                        let row = sample_row(&tick, j, 50, t0);
                        (j.to_string(), serde_json::to_vec(&row).unwrap())
                    })
                    .collect();
                produce(&p, &topic, &rows);
                i += 200;
                std::thread::sleep(Duration::from_millis(40));
            }
            i
        })
    };
    let mut replays = 0;
    for cycle in 1..=10u64 {
        // Kill at varying points of the batch cycle (batches are cut every 0.2 s or 300 rows).
        tokio::time::sleep(Duration::from_millis(1_500 + cycle * 137 % 700)).await;
        let _ = w.0.kill();
        let _ = w.0.wait();
        let log = dir.path().join(format!("k{}.log", cycle - 1));
        replays += std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("partition assigned") && l.contains("Some("))
            .count();
        w = start_writer(
            &cfg(cycle as usize),
            &dir.path().join(format!("k{cycle}.log")),
            port,
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let emitted = producer_thread.join().unwrap();
    let done = eventually(Duration::from_secs(90), || async {
        scalar(&format!("SELECT count() FROM {db}.tick_market_data FINAL")).await >= emitted
    })
    .await;
    let counts = clickhouse(&format!(
        "SELECT count(), uniqExact(row_id), min(price), max(price) FROM {db}.tick_market_data FINAL"
    ))
    .await
    .unwrap();
    let physical = scalar(&format!("SELECT count() FROM {db}.tick_market_data")).await;
    println!(
        "inserts: offsets table {}, tick table {}, tick quarantine table {}",
        inserts_into(&format!("{db}_state"), "writer_offsets").await,
        inserts_into(&db, "tick_market_data").await,
        inserts_into(&db, "tick_market_data_unqualified").await
    );
    println!(
        "emitted={emitted} stored(FINAL)={} physical={physical} restarts_with_replayed_range={replays}",
        counts.trim()
    );
    assert!(done, "not every row arrived: {counts}");
    assert_eq!(
        counts.trim(),
        format!("{emitted}\t{emitted}\t0.5\t{}", emitted as f64 - 0.5),
        "every emitted row once"
    );
    // A kill under load falls between a batch's data insert and the next flush's offsets
    // insert (which would record its `after`): the restart re-sends that range once, and the
    // counts above show it stored once. Without such restarts the test proves nothing.
    assert!(replays > 0, "no restart re-sent a range");
    w.terminate();
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn analyst_reads_but_cannot_insert_alter_or_read_the_offsets() {
    // The analyst of scripts/clickhouse/users.xml.tmpl may read `marketlane` and
    // `marketlane_it` (this test's database) only.
    let db = "marketlane_it";
    drop_db(db).await;
    let out = run_marketlane(
        &[
            "schema",
            "ddl",
            "--server-version",
            "18.16.1",
            "--database",
            db,
        ],
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(out.status.success());
    for stmt in String::from_utf8(out.stdout).unwrap().split(";\n") {
        let stmt: String = stmt
            .lines()
            .filter(|l| !l.starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if !stmt.trim().is_empty() {
            clickhouse(&stmt).await.unwrap();
        }
    }
    clickhouse(&format!(
        "INSERT INTO {db}_state.writer_offsets VALUES ('t', 0, 0, 9, 'after', 1)"
    ))
    .await
    .unwrap();
    let as_analyst = |sql: String| async move {
        let resp = reqwest::Client::new()
            .post(format!("{}/?user=analyst", clickhouse_url()))
            .body(sql)
            .send()
            .await
            .unwrap();
        let ok = resp.status().is_success();
        (ok, resp.text().await.unwrap())
    };
    for table in [
        "tick_market_data",
        "tick_market_data_snapshot",
        "l2_market_data_unqualified",
    ] {
        let (ok, text) = as_analyst(format!("SELECT count() FROM {db}.{table}")).await;
        assert!(ok, "analyst cannot read {table}: {text}");
    }
    let denied = [
        format!("INSERT INTO {db}.tick_market_data (row_id) VALUES ('x')"),
        format!("ALTER TABLE {db}.tick_market_data ADD COLUMN x String"),
        format!("ALTER TABLE {db}.tick_market_data DELETE WHERE 1"),
        format!("DROP TABLE {db}.tick_market_data"),
        format!("SELECT * FROM {db}_state.writer_offsets"),
        format!("CREATE TABLE {db}.x (a String) ENGINE = Memory"),
    ];
    for sql in denied {
        let (ok, text) = as_analyst(sql.clone()).await;
        assert!(!ok, "analyst was allowed: {sql}");
        assert!(
            text.contains("readonly")
                || text.contains("Access denied")
                || text.contains("ACCESS_DENIED"),
            "{sql}: {text}"
        );
    }
    assert_eq!(
        scalar(&format!("SELECT count() FROM {db}.tick_market_data")).await,
        0
    );
    drop_db(db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_growth_adds_a_column_and_a_removed_field_is_refused() {
    let prefix = format!("{}_", unique("s_"));
    let db = unique("s_");
    let dir = tempfile::tempdir().unwrap();
    let sdir = dir.path().join("schemas");
    std::fs::create_dir(&sdir).unwrap();
    for e in std::fs::read_dir(workspace_root().join("schemas")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), sdir.join(e.file_name())).unwrap();
    }
    let port = free_port();
    let topic = format!("{prefix}tick_market_data");
    let cfg = |n: &str| {
        writer_config(
            dir.path(),
            n,
            &prefix,
            &db,
            "schema-growth",
            &["tick_market_data"],
            &sdir,
            port,
        )
    };
    let mut w = start_writer(&cfg("a"), &dir.path().join("a.log"), port).await;
    let tick = SchemaSet::load_dir(&sdir)
        .unwrap()
        .get("tick_market_data")
        .unwrap()
        .clone();
    let t0 = marketlane_protocol::now_ns();
    let p = producer();
    let old: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| {
            (
                i.to_string(),
                serde_json::to_vec(&sample_row(&tick, i, 5, t0)).unwrap(),
            )
        })
        .collect();
    produce(&p, &topic, &old);
    assert!(
        eventually(Duration::from_secs(30), || async {
            scalar(&format!("SELECT count() FROM {db}.tick_market_data FINAL")).await == 50
        })
        .await
    );
    w.terminate();

    // Grow: a new nullable field in the schema file.
    let path = sdir.join("tick_market_data.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[[field]]\nname = \"trade_condition\"\ndtype = \"string\"\nnullable = true\ndescription = \"test field\"\n"),
    )
    .unwrap();
    let mut w = start_writer(&cfg("b"), &dir.path().join("b.log"), port).await;
    for table in ["tick_market_data", "tick_market_data_snapshot"] {
        let cols = clickhouse(&format!(
            "SELECT name FROM system.columns WHERE database = '{db}' AND table = '{table}' AND name LIKE 'trade_condition%' ORDER BY name"
        ))
        .await
        .unwrap();
        assert_eq!(cols, "trade_condition\ntrade_condition_state\n", "{table}");
    }
    let grown = SchemaSet::load_dir(&sdir)
        .unwrap()
        .get("tick_market_data")
        .unwrap()
        .clone();
    let new: Vec<(String, Vec<u8>)> = (50..80)
        .map(|i| {
            let mut row = sample_row(&grown, i, 5, t0);
            row.insert("trade_condition".into(), json!("odd_lot"));
            (i.to_string(), serde_json::to_vec(&row).unwrap())
        })
        .collect();
    produce(&p, &topic, &new);
    assert!(
        eventually(Duration::from_secs(30), || async {
            scalar(&format!("SELECT count() FROM {db}.tick_market_data FINAL")).await == 80
        })
        .await,
        "rows stopped flowing after the schema grew"
    );
    let by_value = clickhouse(&format!(
        "SELECT ifNull(trade_condition, 'NULL') AS c, count() FROM {db}.tick_market_data FINAL GROUP BY c ORDER BY c"
    ))
    .await
    .unwrap();
    assert_eq!(
        by_value, "NULL\t50\nodd_lot\t30\n",
        "old rows read the default"
    );
    let snap = scalar(&format!(
        "SELECT countIf(trade_condition = 'odd_lot') FROM {db}.tick_market_data_snapshot FINAL"
    ))
    .await;
    assert_eq!(snap, 5, "the snapshot view carries the new column");
    w.terminate();

    // Shrink: a removed field is refused with an explanation, and nothing is changed.
    let text = std::fs::read_to_string(&path).unwrap();
    let shrunk = text.replace(
        "[[field]]\nname = \"size_unit\"\ndtype = \"string\"\nlow_cardinality = true\ndescription = \"amount_name, e.g. 100_shares, 1_contracts\"\n",
        "",
    );
    assert_ne!(shrunk, text);
    std::fs::write(&path, shrunk).unwrap();
    let out = run_marketlane(
        &["run", "-c", cfg("c").to_str().unwrap()],
        Duration::from_secs(120),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("column size_unit") && stderr.contains("removing a field is refused"),
        "{stderr}"
    );
    assert_eq!(
        scalar(&format!(
            "SELECT count() FROM system.columns WHERE database = '{db}' AND name = 'size_unit' AND table IN ('tick_market_data', 'tick_market_data_snapshot')"
        ))
        .await,
        2
    );
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_partitions_older_than_the_configured_days() {
    let prefix = format!("{}_", unique("r_"));
    let db = unique("r_");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = writer_config(
        dir.path(),
        "r",
        &prefix,
        &db,
        "retention",
        &["numeric_economic_data"],
        &workspace_root().join("schemas"),
        port,
    );
    // Tables first (a writer start), then rows released today, 2 days ago and 5 days ago, all
    // ingested now: retention goes by the event day, which is the partition.
    let mut w = start_writer(&cfg, &dir.path().join("r0.log"), port).await;
    w.terminate();
    let day = 86_400_000_000_000i64;
    let now = marketlane_protocol::now_ns();
    for (i, age) in [0i64, 2, 5].iter().enumerate() {
        clickhouse(&format!(
            "INSERT INTO {db}.numeric_economic_data (row_id, source_system_name, component_instance_name, ingestion_time, publisher_identifier, release_identifier, release_time, release_field, release_field_value, release_field_value_unit) VALUES ('r{i}', 's', 'c', {now}, 'EIA', 'weekly', {}, 'f', 1, 'u')",
            now - age * day
        ))
        .await
        .unwrap();
    }
    let mut w = start_writer(&cfg, &dir.path().join("r1.log"), port).await;
    let swept = eventually(Duration::from_secs(30), || async {
        scalar(&format!("SELECT count() FROM {db}.numeric_economic_data")).await == 2
    })
    .await;
    let left = clickhouse(&format!(
        "SELECT row_id FROM {db}.numeric_economic_data ORDER BY row_id"
    ))
    .await
    .unwrap();
    assert!(swept, "{left}");
    assert_eq!(
        left, "r0\nr1\n",
        "default 3 days: the 5-day-old partition is dropped"
    );
    w.terminate();
    drop_db(&db).await;
}

/// Partitions `log` says its writer was assigned (`partition assigned … partition=N`).
fn assigned_in_log(log: &Path) -> BTreeSet<i64> {
    assigned_in_log_of(log, "")
}

/// Partitions of topics containing `topic` that `log` says its writers were assigned.
fn assigned_in_log_of(log: &Path, topic: &str) -> BTreeSet<i64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("partition assigned"))
        .filter_map(|l| {
            // `… partition assigned topic=… partition=N next=…` (plain text: not a terminal).
            let fields = l.split("partition assigned").nth(1)?;
            if !fields.contains(topic) {
                return None;
            }
            let n = fields.split(" partition=").nth(1)?;
            n.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Two writer processes of one lane split the topic's partitions (the writer's own consumer
/// group, static members); one is SIGKILLed mid-batch under load, the other takes its
/// partitions over from the offsets table, and every emitted row is stored exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_writer_processes_split_partitions_and_a_kill_mid_batch_keeps_every_row_once() {
    let schemas = schemas();
    let tick = schemas.get("tick_market_data").unwrap().clone();
    let prefix = format!("{}_", unique("w2_"));
    let db = unique("w2_");
    let group = unique("w2g_");
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("{prefix}tick_market_data");
    let schemas_dir = workspace_root().join("schemas");
    let cfg = |name: &str, port: u16| {
        let path = writer_config(
            dir.path(),
            name,
            &prefix,
            &db,
            &group,
            &["tick_market_data"],
            &schemas_dir,
            port,
        );
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                "instance = \"writer-test\"",
                &format!("instance = \"{name}\""),
            )
            .replace("[writer]\n", "[writer]\nsession_timeout = 6\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let (port_a, port_b) = (free_port(), free_port());
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = start_writer(&cfg("writer-a", port_a), &log_a, port_a).await;
    let mut b = start_writer(&cfg("writer-b", port_b), &log_b, port_b).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer_thread = {
        let stop = stop.clone();
        let topic = topic.clone();
        let tick = tick.clone();
        std::thread::spawn(move || {
            let p = producer();
            let t0 = marketlane_protocol::now_ns();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rows: Vec<(String, Vec<u8>)> = (i..i + 200)
                    .map(|j| {
                        let row = sample_row(&tick, j, 50, t0);
                        (j.to_string(), serde_json::to_vec(&row).unwrap())
                    })
                    .collect();
                produce(&p, &topic, &rows);
                i += 200;
                std::thread::sleep(Duration::from_millis(40));
            }
            i
        })
    };
    // Both hold a share of the three partitions, and both insert.
    let split = eventually(Duration::from_secs(60), || async {
        let (pa, pb) = (assigned_in_log(&log_a), assigned_in_log(&log_b));
        !pa.is_empty() && !pb.is_empty() && pa.union(&pb).count() == 3
    })
    .await;
    assert!(
        split,
        "partitions not split: a {:?} b {:?}\n{}",
        assigned_in_log(&log_a),
        assigned_in_log(&log_b),
        std::fs::read_to_string(&log_b).unwrap_or_default()
    );
    let held_by_b = assigned_in_log(&log_b);
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    // Kill b mid-batch (batches are cut every 0.2 s or 300 rows under continuous load).
    let _ = b.0.kill();
    let _ = b.0.wait();
    let taken_over = eventually(Duration::from_secs(60), || async {
        assigned_in_log(&log_a).is_superset(&held_by_b)
    })
    .await;
    assert!(
        taken_over,
        "a did not take b's partitions {held_by_b:?}: a has {:?}",
        assigned_in_log(&log_a)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let emitted = producer_thread.join().unwrap();
    let done = eventually(Duration::from_secs(90), || async {
        scalar(&format!("SELECT count() FROM {db}.tick_market_data FINAL")).await >= emitted
    })
    .await;
    let counts = clickhouse(&format!(
        "SELECT count(), uniqExact(row_id), min(price), max(price) FROM {db}.tick_market_data FINAL"
    ))
    .await
    .unwrap();
    println!("emitted={emitted} stored(FINAL)={}", counts.trim());
    assert!(done, "not every row arrived: {counts}");
    assert_eq!(
        counts.trim(),
        format!("{emitted}\t{emitted}\t0.5\t{}", emitted as f64 - 0.5),
        "every emitted row once"
    );
    a.terminate();
    drop_db(&db).await;
}

/// Rows `i0..i0 + n` of `schema` to its topic.
fn produce_rows(p: &BaseProducer, prefix: &str, schema: &CategorySchema, i0: u64, n: u64, t0: i64) {
    let rows: Vec<(String, Vec<u8>)> = (i0..i0 + n)
        .map(|i| {
            let row = sample_row(schema, i, 7, t0);
            (key_of(schema, &row), serde_json::to_vec(&row).unwrap())
        })
        .collect();
    produce(p, &format!("{prefix}{}", schema.topic()), &rows);
}

/// A writer's batches together hold at most `writer.buffer_bytes`: past it every batch is cut
/// and flushed, long before their age (60 s here) and their row count (50,000) would cut
/// them, and exactly-once holds across those cuts (a SIGTERM drain then lands the rest once).
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_flushes_all_its_batches_when_together_they_reach_its_buffer_bytes() {
    let schemas = schemas();
    let l2 = schemas.get("l2_market_data").unwrap().clone();
    let prefix = format!("{}_", unique("bb_"));
    let db = unique("bb_");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut c =
        WriterConfig::new("writer-test", Some(&prefix), &db, port).categories(&["l2_market_data"]);
    c.partitions = 3;
    c.group_id = Some(unique("bbg_"));
    c.batch_max_age_secs = 60.0;
    c.buffer_bytes = Some(65_536);
    let path = dir.path().join("buffer.toml");
    c.write(&path);
    let log = dir.path().join("buffer.log");
    let mut w = start_writer(&path, &log, port).await;
    let t0 = marketlane_protocol::now_ns();
    produce_rows(&producer(), &prefix, &l2, 0, 3_000, t0);
    let count =
        || async { scalar(&format!("SELECT count() FROM {db}.l2_market_data FINAL")).await };
    // About 130 bytes a row encoded: 64 KiB is some 500 rows, so all but the last cut's
    // remainder lands in several flushes well within the batches' age.
    let landed = eventually(Duration::from_secs(30), || async { count().await >= 2_000 }).await;
    let inserts = inserts_into(&db, "l2_market_data").await;
    let early = count().await;
    // A drain lands what the writer has read: it must have read every row first.
    let topic = format!("{prefix}l2_market_data");
    let read_all = eventually(Duration::from_secs(30), || async {
        consumer_lag(port, &topic, 3).await == Some(0)
    })
    .await;
    w.terminate();
    assert!(read_all, "the writer did not read all 3000 rows");
    assert!(
        landed,
        "{early} of 3000 rows landed before the batches' age: the writer-wide bound cut nothing\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        inserts >= 4,
        "{inserts} inserts for 3000 rows under a 64 KiB bound"
    );
    // The drain lands the rest, and nothing twice.
    assert!(
        eventually(Duration::from_secs(30), || async { count().await == 3_000 }).await,
        "{} rows after the drain, 3000 produced\n{}",
        count().await,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let distinct = scalar(&format!(
        "SELECT uniqExact(row_id) FROM {db}.l2_market_data FINAL"
    ))
    .await;
    assert_eq!(distinct, 3_000);
    eprintln!("buffer bound: {early} rows landed before any age cut, in {inserts} inserts");
    drop_db(&db).await;
}

/// `writer.buffer_bytes` bounds the writers of a process together. The level-2 writer reads
/// rows worth 60% of it and holds them (their age limit is 60 s); then the tick writer reads
/// rows worth 60% of it, which take the process past the bound: the tick writer cuts and
/// flushes long before its batches' age. With a bound per writer neither would insert before
/// 60 s. A SIGTERM drain then lands the rest, each row once.
#[tokio::test(flavor = "multi_thread")]
async fn the_writers_of_a_process_share_one_buffer_bound() {
    const BOUND: u64 = 256 * 1024;
    let schemas = schemas();
    let l2 = schemas.get("l2_market_data").unwrap().clone();
    let tick = schemas.get("tick_market_data").unwrap().clone();
    // What a writer counts per row: its encoded bytes and 32 bytes of bookkeeping.
    let per_row = |schema: &CategorySchema| {
        let row = sample_row(schema, 0, 7, marketlane_protocol::now_ns());
        let mut buf = Vec::new();
        encode_json_row(schema, &serde_json::to_vec(&row).unwrap(), &mut buf).unwrap();
        buf.len() as u64 + 32
    };
    let l2_rows = BOUND * 6 / 10 / per_row(&l2);
    let tick_rows = BOUND * 6 / 10 / per_row(&tick);
    let prefix = format!("{}_", unique("sb_"));
    let db = unique("sb_");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut c = WriterConfig::new("writer-test", Some(&prefix), &db, port)
        .categories(&["l2_market_data", "tick_market_data"]);
    c.partitions = 3;
    c.group_id = Some(unique("sbg_"));
    c.batch_max_age_secs = 60.0;
    c.buffer_bytes = Some(BOUND as i64);
    let path = dir.path().join("shared.toml");
    c.write(&path);
    let log = dir.path().join("shared.log");
    let mut w = start_writer(&path, &log, port).await;
    let count = |table: &'static str| {
        let db = db.clone();
        async move { scalar(&format!("SELECT count() FROM {db}.{table} FINAL")).await }
    };
    let t0 = marketlane_protocol::now_ns();
    let p = producer();
    produce_rows(&p, &prefix, &l2, 0, l2_rows, t0);
    let l2_topic = format!("{prefix}l2_market_data");
    let l2_held = eventually(Duration::from_secs(30), || async {
        consumer_lag(port, &l2_topic, 3).await == Some(0)
    })
    .await;
    produce_rows(&p, &prefix, &tick, 0, tick_rows, t0);
    let tick_landed = eventually(Duration::from_secs(30), || async {
        count("tick_market_data").await >= tick_rows / 2
    })
    .await;
    let (early_tick, early_l2) = (
        count("tick_market_data").await,
        count("l2_market_data").await,
    );
    w.terminate();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        l2_held,
        "the writer did not read the {l2_rows} level-2 rows"
    );
    assert!(
        tick_landed,
        "{early_tick} of {tick_rows} tick rows landed before the batches' age: the level-2 \
         writer's {l2_rows} rows held were not counted against the same bound\n{}",
        logs()
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            count("tick_market_data").await == tick_rows && count("l2_market_data").await == l2_rows
        })
        .await,
        "after the drain: {} of {tick_rows} tick rows, {} of {l2_rows} level-2 rows\n{}",
        count("tick_market_data").await,
        count("l2_market_data").await,
        logs()
    );
    for table in ["tick_market_data", "l2_market_data"] {
        let distinct = scalar(&format!("SELECT uniqExact(row_id) FROM {db}.{table} FINAL")).await;
        assert_eq!(distinct, count(table).await, "{table}: a row stored twice");
    }
    eprintln!(
        "shared bound: {early_tick} of {tick_rows} tick rows landed early, {early_l2} of {l2_rows} level-2 rows"
    );
    drop_db(&db).await;
}

/// One failing table holds only its own writer. Two writer processes share both topics; the
/// tick table goes away (inserts fail and are retried with the tick partitions paused) and the
/// level-2 writers keep inserting. Then one process is SIGKILLed: both groups rebalance, and
/// the retrying tick writer of the survivor still serves its group, so the survivor's level-2
/// writer gets the dead one's partitions and their rows arrive (with one group for all
/// writers and a writer that stops polling while it retries, that rebalance waited for the
/// retry to end, and the level-2 rows with it). When the table is back, every tick row is
/// stored exactly once, the dead process's half-done batches included.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_table_holds_only_its_own_writer_and_its_group_still_rebalances() {
    let schemas = schemas();
    let tick = schemas.get("tick_market_data").unwrap().clone();
    let l2 = schemas.get("l2_market_data").unwrap().clone();
    let prefix = format!("{}_", unique("ft_"));
    let db = unique("ft_");
    let group = unique("ftg_");
    let dir = tempfile::tempdir().unwrap();
    let schemas_dir = workspace_root().join("schemas");
    let cfg = |name: &str, port: u16| {
        let path = writer_config(
            dir.path(),
            name,
            &prefix,
            &db,
            &group,
            &["tick_market_data", "l2_market_data"],
            &schemas_dir,
            port,
        );
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                "instance = \"writer-test\"",
                &format!("instance = \"{name}\""),
            )
            .replace("[writer]\n", "[writer]\nsession_timeout = 6\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let (port_a, port_b) = (free_port(), free_port());
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = start_writer(&cfg("fail-a", port_a), &log_a, port_a).await;
    let mut b = start_writer(&cfg("fail-b", port_b), &log_b, port_b).await;
    let split = eventually(Duration::from_secs(60), || async {
        let l2_a = assigned_in_log_of(&log_a, "l2_market_data");
        let l2_b = assigned_in_log_of(&log_b, "l2_market_data");
        !l2_b.is_empty() && l2_a.union(&l2_b).count() == 3
    })
    .await;
    assert!(split, "level-2 partitions not split");
    let l2_of_b = assigned_in_log_of(&log_b, "l2_market_data");
    let p = producer();
    let t0 = marketlane_protocol::now_ns();
    produce_rows(&p, &prefix, &tick, 0, 300, t0);
    produce_rows(&p, &prefix, &l2, 0, 300, t0);
    let count = |table: &'static str| {
        let db = db.clone();
        async move { scalar(&format!("SELECT count() FROM {db}.{table} FINAL")).await }
    };
    assert!(
        eventually(Duration::from_secs(60), || async {
            count("tick_market_data").await == 300 && count("l2_market_data").await == 300
        })
        .await,
        "first rows not stored"
    );

    // The tick table goes away: both tick writers fail and retry.
    clickhouse(&format!(
        "RENAME TABLE {db}.tick_market_data TO {db}.tick_market_data_away"
    ))
    .await
    .unwrap();
    produce_rows(&p, &prefix, &tick, 300, 300, t0);
    produce_rows(&p, &prefix, &l2, 300, 300, t0);
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(&log_a).is_ok_and(|t| t.contains("insert failed"))
                && count("l2_market_data").await == 600
        })
        .await,
        "the level-2 writer was held by the failing tick table\n{}",
        std::fs::read_to_string(&log_a).unwrap_or_default()
    );

    // b dies while the tick writers retry: its level-2 partitions move to a.
    let _ = b.0.kill();
    let _ = b.0.wait();
    produce_rows(&p, &prefix, &l2, 600, 300, t0);
    let moved = eventually(Duration::from_secs(90), || async {
        assigned_in_log_of(&log_a, "l2_market_data").is_superset(&l2_of_b)
            && count("l2_market_data").await == 900
    })
    .await;
    assert!(
        moved,
        "b's level-2 partitions {l2_of_b:?} did not move to a during the tick retry: a has {:?}, {} rows\n{}",
        assigned_in_log_of(&log_a, "l2_market_data"),
        count("l2_market_data").await,
        std::fs::read_to_string(&log_a).unwrap_or_default()
    );
    assert_eq!(
        scalar(&format!("SELECT count() FROM {db}.tick_market_data_away")).await,
        300,
        "nothing was inserted while the table was away"
    );

    // The table comes back: every tick row once.
    clickhouse(&format!(
        "RENAME TABLE {db}.tick_market_data_away TO {db}.tick_market_data"
    ))
    .await
    .unwrap();
    let done = eventually(Duration::from_secs(90), || async {
        count("tick_market_data").await == 600
    })
    .await;
    let counts = clickhouse(&format!(
        "SELECT count(), uniqExact(row_id) FROM {db}.tick_market_data FINAL"
    ))
    .await
    .unwrap();
    assert!(
        done,
        "tick rows after the table came back: {counts}\n{}",
        std::fs::read_to_string(&log_a).unwrap_or_default()
    );
    assert_eq!(counts.trim(), "600\t600");
    a.terminate();
    drop_db(&db).await;
}

/// Failure-matrix row "poison batch": rows that are valid for the schema but that ClickHouse
/// refuses (here a `throwIf` check the test adds to the table after the writer started, as
/// ops would add a CHECK constraint on a current server) make the whole batch fail. The
/// writer bisects the batch down to those rows, quarantines them with the server's reason and
/// their Kafka coordinates, and inserts every other row exactly once; the lane goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_clickhouse_rejects_is_bisected_to_its_poison_rows() {
    let schemas = schemas();
    let schema = schemas.get("tick_market_data").unwrap();
    let prefix = format!("{}_", unique("pb_"));
    let db = unique("pb_");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = writer_config(
        dir.path(),
        "pb",
        &prefix,
        &db,
        &unique("gpb_"),
        &["tick_market_data"],
        &workspace_root().join("schemas"),
        port,
    );
    let log = dir.path().join("pb.log");
    let mut w = start_writer(&cfg, &log, port).await;
    // sample_row gives row i the price i + 0.5: rows 13 and 150 are refused by the server.
    clickhouse(&format!(
        "ALTER TABLE {db}.tick_market_data ADD COLUMN poison_check UInt8 \
         MATERIALIZED throwIf(price = 13.5 OR price = 150.5)"
    ))
    .await
    .unwrap();
    const N: u64 = 200;
    let t0 = marketlane_protocol::now_ns();
    let rows: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            let row = sample_row(schema, i, 3, t0);
            // One partition: the batch holds all rows, so both poison rows share it.
            ("k".to_string(), serde_json::to_vec(&row).unwrap())
        })
        .collect();
    produce(&producer(), &format!("{prefix}tick_market_data"), &rows);
    let landed = eventually(Duration::from_secs(60), || async {
        scalar(&format!("SELECT count() FROM {db}.tick_market_data")).await == N - 2
            && scalar(&format!(
                "SELECT count() FROM {db}.tick_market_data_unqualified"
            ))
            .await
                == 2
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(landed, "poison rows not isolated:\n{text}");
    // Every good row once (no FINAL: the bisection inserted nothing twice).
    assert_eq!(
        scalar(&format!(
            "SELECT uniqExact(row_id) FROM {db}.tick_market_data"
        ))
        .await,
        N - 2
    );
    // The raw payload is compared byte for byte (as hex, so no TSV escaping is in the way):
    // the writer keeps no payloads and reads a refused row's back from Kafka by its offset.
    let quarantined = lines(&format!(
        "SELECT reason_code, source_offset, raw_encoding, hex(raw), reason \
         FROM {db}.tick_market_data_unqualified ORDER BY source_offset"
    ))
    .await;
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    for (line, offset) in quarantined.iter().zip([13, 150]) {
        println!(
            "  poison batch: quarantined {}",
            line.chars().take(120).collect::<String>()
        );
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f[0], "rejected_by_clickhouse", "{line}");
        assert_eq!(f[1], offset.to_string(), "{line}");
        let original: String = rows[offset].1.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(
            (f[2], f[3]),
            ("utf8", original.as_str()),
            "the raw payload is the refused row's JSON: {line}"
        );
        assert!(f[4].contains("throwIf"), "the server's reason: {line}");
        assert!(
            !f[4].contains("re-read"),
            "the payload was read back: {line}"
        );
    }
    // The stream goes on after the poison batch.
    let more: Vec<(String, Vec<u8>)> = (N..N + 20)
        .map(|i| {
            (
                "k".to_string(),
                serde_json::to_vec(&sample_row(schema, i, 3, t0)).unwrap(),
            )
        })
        .collect();
    produce(&producer(), &format!("{prefix}tick_market_data"), &more);
    let after = eventually(Duration::from_secs(60), || async {
        scalar(&format!("SELECT count() FROM {db}.tick_market_data")).await == N + 18
    })
    .await;
    assert!(after, "rows after the poison batch did not land");
    w.terminate();
    drop_db(&db).await;
}

/// Where the server has no insert deduplication tokens (before 22.2, like the local 18.16),
/// one flush sends the rows of all its partitions in one insert: one part instead of one per
/// partition. A row ClickHouse refuses fails that insert whole (nothing lands), and each
/// partition then goes alone and is bisected to its poison rows: every good row still lands
/// exactly once. With tokens each partition keeps its own insert.
#[tokio::test(flavor = "multi_thread")]
async fn a_flush_sends_its_partitions_in_one_insert_where_the_server_has_no_tokens() {
    let schemas = schemas();
    let schema = schemas.get("tick_market_data").unwrap();
    let prefix = format!("{}_", unique("mi_"));
    let db = unique("mi_");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut c = WriterConfig::new("writer-test", Some(&prefix), &db, port)
        .categories(&["tick_market_data"]);
    c.partitions = 3;
    c.group_id = Some(unique("gmi_"));
    // Long enough that one burst of rows is in all three batches before the first is cut.
    c.batch_max_age_secs = 2.0;
    let cfg = c.write(&dir.path().join("mi.toml"));
    let log = dir.path().join("mi.log");
    let mut w = start_writer(&cfg, &log, port).await;
    let tokens = scalar(
        "SELECT toUInt32(splitByChar('.', version())[1]) * 1000 \
         + toUInt32(splitByChar('.', version())[2]) >= 22002",
    )
    .await
        == 1;
    let topic = format!("{prefix}tick_market_data");
    let t0 = marketlane_protocol::now_ns();
    // 30 keys: the rows spread over the three partitions.
    let burst = |from: u64, n: u64| -> Vec<(String, Vec<u8>)> {
        (from..from + n)
            .map(|i| {
                let row = sample_row(schema, i, 30, t0);
                (key_of(schema, &row), serde_json::to_vec(&row).unwrap())
            })
            .collect()
    };
    produce(&producer(), &topic, &burst(0, 300));
    let first = eventually(Duration::from_secs(30), || async {
        scalar(&format!("SELECT count() FROM {db}.tick_market_data")).await == 300
    })
    .await;
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(first, "300 rows did not land:\n{}", text());
    let partitions_used = lines(&format!(
        "SELECT count() FROM {db}_state.writer_offsets GROUP BY `partition`"
    ))
    .await
    .len() as u64;
    assert!(
        partitions_used >= 2,
        "the rows did not spread over the partitions"
    );
    let inserts = inserts_into(&db, "tick_market_data").await;
    let want = if tokens { partitions_used } else { 1 };
    assert_eq!(
        inserts, want,
        "inserts of one flush over {partitions_used} partitions (server tokens: {tokens})"
    );
    // Two rows the server refuses (prices 313.5 and 350.5), in a second burst over the
    // partitions: the merged insert fails whole, each partition is bisected.
    clickhouse(&format!(
        "ALTER TABLE {db}.tick_market_data ADD COLUMN poison_check UInt8 \
         MATERIALIZED throwIf(price = 313.5 OR price = 350.5)"
    ))
    .await
    .unwrap();
    produce(&producer(), &topic, &burst(300, 100));
    let second = eventually(Duration::from_secs(60), || async {
        scalar(&format!("SELECT count() FROM {db}.tick_market_data")).await == 398
            && scalar(&format!(
                "SELECT count() FROM {db}.tick_market_data_unqualified"
            ))
            .await
                == 2
    })
    .await;
    assert!(
        second,
        "poison rows of a merged insert not isolated:\n{}",
        text()
    );
    // No FINAL: nothing was inserted twice.
    assert_eq!(
        scalar(&format!(
            "SELECT uniqExact(row_id) FROM {db}.tick_market_data"
        ))
        .await,
        398
    );
    eprintln!(
        "merged inserts: {inserts} insert(s) for a flush over {partitions_used} partitions (server tokens: {tokens})"
    );
    w.terminate();
    drop_db(&db).await;
}

/// Ingestion tables are partitioned by event day, so two copies of one row (a replay or a
/// second pod across midnight UTC) merge into one; a table made before (partitioned by
/// ingestion day) is moved at start, with every row, and the old one is kept aside. Merges
/// never cross partitions (`FINAL` at read time may, depending on the server and its
/// settings), so the test counts stored rows after `OPTIMIZE … FINAL`.
#[tokio::test(flavor = "multi_thread")]
async fn copies_of_a_row_across_midnight_collapse_and_old_tables_are_repartitioned() {
    let schemas = schemas();
    let schema = schemas.get("tick_market_data").unwrap();
    let prefix = format!("{}_", unique("pt_"));
    let db = unique("pt_");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = writer_config(
        dir.path(),
        "pt",
        &prefix,
        &db,
        &unique("gpt_"),
        &["tick_market_data"],
        &workspace_root().join("schemas"),
        port,
    );
    // An old deployment's table: the same columns, partitioned by the ingestion day.
    clickhouse(&format!("CREATE DATABASE {db}")).await.unwrap();
    let new_ddl = marketlane_protocol::clickhouse::create_ingestion_table(
        schema,
        &marketlane_protocol::clickhouse::DdlOptions {
            database: db.clone(),
            retention_days: 3,
            capabilities: marketlane_protocol::clickhouse::ServerVersion::parse("18.16.1")
                .unwrap()
                .capabilities(),
        },
    );
    let old_ddl = new_ddl.replace(
        "PARTITION BY toYYYYMMDD(tick_time_dt)",
        "PARTITION BY toYYYYMMDD(ingestion_time_dt)",
    );
    assert_ne!(old_ddl, new_ddl);
    clickhouse(&old_ddl).await.unwrap();
    let day = 86_400_000_000_000i64;
    let t = marketlane_protocol::now_ns() - day;
    let cols = schema.columns().join(", ");
    let row = |id: &str, ingested: i64| {
        format!(
            "('{id}', 'ib', 'p', {ingested}, 'SMART', 'AAPL', 'stocks', 1.5, '1_USdollar', 2, '100_shares', {t})"
        )
    };
    // One row stored twice, ingested on two days (a replay across midnight): the old layout
    // keeps both copies for good, merges or not.
    clickhouse(&format!(
        "INSERT INTO {db}.tick_market_data ({cols}) VALUES {}, {}, {}",
        row("dup", t),
        row("dup", t + day),
        row("other", t)
    ))
    .await
    .unwrap();
    assert_eq!(
        merged_count(&db).await,
        3,
        "the old layout does not collapse across partitions"
    );
    let mut w = start_writer(&cfg, &dir.path().join("pt.log"), port).await;
    let key = lines(&format!(
        "SELECT partition_key FROM system.tables WHERE database = '{db}' AND name = 'tick_market_data'"
    ))
    .await;
    assert_eq!(key, vec!["toYYYYMMDD(tick_time_dt)".to_string()]);
    assert_eq!(
        merged_count(&db).await,
        2,
        "moved to event-day partitions, the two copies collapse"
    );
    assert_eq!(
        scalar(&format!(
            "SELECT count() FROM {db}.tick_market_data__by_ingestion_day"
        ))
        .await,
        3,
        "the old table is kept aside"
    );
    // New copies of a row ingested on two days land in one partition and collapse.
    clickhouse(&format!(
        "INSERT INTO {db}.tick_market_data ({cols}) VALUES {}, {}",
        row("again", t),
        row("again", t + 2 * day)
    ))
    .await
    .unwrap();
    assert_eq!(merged_count(&db).await, 3);
    // Rows keep reaching the snapshot through the recreated view.
    let p = producer();
    let rows: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                "k".to_string(),
                serde_json::to_vec(&sample_row(schema, i, 1, t)).unwrap(),
            )
        })
        .collect();
    produce(&p, &format!("{prefix}tick_market_data"), &rows);
    let flowing = eventually(Duration::from_secs(60), || async {
        scalar(&format!("SELECT uniqExact(row_id) FROM {db}.tick_market_data")).await == 8
            && scalar(&format!(
                "SELECT count() FROM {db}.tick_market_data_snapshot FINAL WHERE source_system_name = 'test'"
            ))
            .await
                == 1
    })
    .await;
    assert!(
        flowing,
        "rows do not reach the moved table and its snapshot"
    );
    w.terminate();
    drop_db(&db).await;
}

/// Rows stored in the tick table once every partition is fully merged.
async fn merged_count(db: &str) -> u64 {
    clickhouse(&format!("OPTIMIZE TABLE {db}.tick_market_data FINAL"))
        .await
        .unwrap();
    scalar(&format!("SELECT count() FROM {db}.tick_market_data")).await
}

/// A partition the writer has no stored state for starts where librdkafka would start it:
/// at the group's committed offset, or at the earliest one without a commit. The writer seeks
/// there itself after resuming the partition (a resume alone leaves librdkafka's fetcher
/// asleep until its next timer), so this pins that the explicit seek keeps the old start.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_without_stored_state_starts_at_the_group_commit_or_the_earliest() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let schemas = schemas();
    let l2 = schemas.get("l2_market_data").unwrap().clone();
    let prefix = format!("{}_", unique("cs_"));
    let db = unique("cs_");
    let group = unique("csg_");
    let topic = format!("{prefix}l2_market_data");
    let bootstrap = marketlane_tests::kafka::kafka_bootstrap();
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &bootstrap);
    let admin: AdminClient<DefaultClientContext> = cfg.create().unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let t0 = marketlane_protocol::now_ns();
    produce_rows(&producer(), &prefix, &l2, 0, 3_000, t0);
    // Partitions 0 and 1 committed halfway by the writer's group, partition 2 not at all.
    let committer: BaseConsumer = cfg
        .clone()
        .set("group.id", format!("{group}.{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut commits = TopicPartitionList::new();
    let mut expected = 0;
    for p in 0..3 {
        let (low, high) = committer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .unwrap();
        assert!(high - low > 10, "partition {p} holds {} rows", high - low);
        if p < 2 {
            let half = low + (high - low) / 2;
            commits
                .add_partition_offset(&topic, p, Offset::Offset(half))
                .unwrap();
            expected += high - half;
        } else {
            expected += high - low;
        }
    }
    committer.commit(&commits, CommitMode::Sync).unwrap();
    drop(committer);

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = writer_config(
        dir.path(),
        "commit-start",
        &prefix,
        &db,
        &group,
        &["l2_market_data"],
        &workspace_root().join("schemas"),
        port,
    );
    let log = dir.path().join("commit-start.log");
    let mut w = start_writer(&path, &log, port).await;
    let read_all = eventually(Duration::from_secs(60), || async {
        consumer_lag(port, &topic, 3).await == Some(0)
    })
    .await;
    let count = || async {
        scalar(&format!(
            "SELECT uniqExact(row_id) FROM {db}.l2_market_data FINAL"
        ))
        .await
    };
    let landed = eventually(Duration::from_secs(30), || async {
        count().await >= expected as u64
    })
    .await;
    // Nothing before the commits either, however long one waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = count().await;
    let lag = consumer_lag(port, &topic, 3).await;
    w.terminate();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        read_all,
        "the writer did not read to the end (lag {lag:?}, {rows} of {expected} rows landed)\n{log_text}"
    );
    assert!(landed, "{rows} of {expected} rows landed\n{log_text}");
    assert_eq!(
        rows, expected as u64,
        "rows before the group's commits were written\n{log_text}"
    );
    drop_db(&db).await;
    let _ = marketlane_tests::kafka::delete_topics(&prefix).await;
}

/// A writer partition that goes silent while Kafka holds rows for it (librdkafka lost the
/// resume: the control `fault` kind `stall` pauses the writer's partitions behind its back) is
/// found by the writer's stall check, resumed and read again: every row lands, once, and the
/// stall is counted. Without the check the second half would never be read.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_writer_partition_is_found_and_read_again() {
    let schemas = schemas();
    let tick = schemas.get("tick_market_data").unwrap().clone();
    let prefix = format!("{}_", unique("st_"));
    let db = unique("st_");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = writer_config(
        dir.path(),
        "stall",
        &prefix,
        &db,
        &unique("stg_"),
        &["tick_market_data"],
        &workspace_root().join("schemas"),
        port,
    );
    let socket = dir.path().join("stall.sock");
    let mut cfg: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["writer"]
        .as_table_mut()
        .unwrap()
        .insert("stall_after".into(), 2.into());
    cfg.insert(
        "control".into(),
        toml::Value::Table(toml::Table::from_iter([
            ("socket".to_string(), socket.display().to_string().into()),
            ("allow_fault_injection".to_string(), true.into()),
        ])),
    );
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let log = dir.path().join("stall.log");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut w = start_writer(&path, &log, port).await;
    let topic = format!("{prefix}{}", tick.topic());
    let count = || async {
        scalar(&format!(
            "SELECT uniqExact(row_id) FROM {db}.tick_market_data FINAL"
        ))
        .await
    };
    let t0 = marketlane_protocol::now_ns();
    let p = producer();
    produce_rows(&p, &prefix, &tick, 0, 600, t0);
    let first = eventually(Duration::from_secs(60), || async { count().await >= 600 }).await;
    assert!(first, "the first rows did not land\n{}", text());

    let reply = marketlane_tests::daemon::ctl_at(
        &socket,
        "fault",
        json!({"actor": "clickhouse_writer_tick_market_data", "kind": "stall"}),
    )
    .await
    .expect("ctl fault");
    assert_eq!(reply["ok"], true, "{reply}");
    produce_rows(&p, &prefix, &tick, 600, 600, t0);
    let all = eventually(Duration::from_secs(60), || async { count().await >= 1200 }).await;
    let rows = count().await;
    let total = scalar(&format!("SELECT count() FROM {db}.tick_market_data FINAL")).await;
    let scrape = scrape_metrics(&format!("127.0.0.1:{port}"))
        .await
        .expect("the writer's /metrics");
    let stalls = scrape.sum_with(
        "marketlane_consumer_stalls_total",
        &format!("topic=\"{topic}\""),
    );
    w.terminate();
    assert!(
        all,
        "{rows} of 1200 rows landed after the stall\n{}",
        text()
    );
    assert_eq!((rows, total), (1200, 1200), "every row once\n{}", text());
    assert!(stalls >= 1.0, "no stall counted ({stalls})\n{}", text());
    drop_db(&db).await;
    let _ = marketlane_tests::kafka::delete_topics(&prefix).await;
}
