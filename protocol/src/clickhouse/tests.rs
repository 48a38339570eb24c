use super::*;
use crate::schema::SchemaSet;
use serde_json::json;
use std::path::Path;

fn schemas() -> SchemaSet {
    SchemaSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")).unwrap()
}

fn opts(version: &str) -> DdlOptions {
    DdlOptions {
        database: "marketlane".into(),
        retention_days: 3,
        capabilities: ServerVersion::parse(version).unwrap().capabilities(),
    }
}

#[test]
fn versions_parse_and_gate_features() {
    let old = ServerVersion::parse("18.16.1").unwrap();
    assert_eq!(old.to_string(), "18.16.1");
    let c = old.capabilities();
    assert!(!c.datetime64 && !c.ttl && !c.low_cardinality && !c.insert_deduplication_token);
    let new = ServerVersion::parse("25.8.2.29\n").unwrap().capabilities();
    assert!(new.datetime64 && new.ttl && new.low_cardinality && new.insert_deduplication_token);
    assert!(ServerVersion::parse("banana").is_none());
}

#[test]
fn legacy_ddl_uses_int64_companions_and_no_ttl() {
    let s = schemas();
    let ddl = create_ingestion_table(s.get("tick_market_data").unwrap(), &opts("18.16.1"));
    assert!(ddl.contains("`tick_time` Int64"), "{ddl}");
    assert!(
        ddl.contains("`tick_time_dt` DateTime MATERIALIZED"),
        "{ddl}"
    );
    // Event time, not ingestion time: every copy of a row shares its partition.
    assert!(
        ddl.contains("PARTITION BY toYYYYMMDD(tick_time_dt)"),
        "{ddl}"
    );
    assert!(!ddl.contains("TTL") && !ddl.contains("LowCardinality") && !ddl.contains("DateTime64"));
    assert!(
        ddl.contains("ORDER BY (`source_system_name`, `symbol_identifier`, `tick_time`, `row_id`)")
    );
}

#[test]
fn repartitioning_copies_into_event_time_partitions_and_keeps_the_old_table() {
    let s = schemas();
    let schema = s.get("tick_market_data").unwrap();
    let st = repartition_statements(schema, &opts("18.16.1"));
    assert_eq!(st.len(), 4);
    assert!(
        st[1].starts_with(
            "CREATE TABLE IF NOT EXISTS `marketlane`.`tick_market_data__repartition`\n"
        ),
        "{}",
        st[1]
    );
    assert!(st[1].contains("PARTITION BY toYYYYMMDD(tick_time_dt)"));
    assert!(st[2].contains("SELECT `row_id`, `source_system_name`") && !st[2].contains("_dt`"));
    assert_eq!(
        st[3],
        "RENAME TABLE `marketlane`.`tick_market_data` TO `marketlane`.`tick_market_data__by_ingestion_day`, `marketlane`.`tick_market_data__repartition` TO `marketlane`.`tick_market_data`"
    );
    assert!(
        !st.iter()
            .any(|s| s.contains("DROP TABLE IF EXISTS `marketlane`.`tick_market_data`"))
    );
}

#[test]
fn modern_ddl_uses_datetime64_lowcardinality_ttl() {
    let s = schemas();
    let ddl = create_ingestion_table(s.get("l2_market_data").unwrap(), &opts("25.8.1"));
    assert!(ddl.contains("`l2_time` DateTime64(9, 'UTC')"), "{ddl}");
    assert!(ddl.contains("`side` LowCardinality(String)"), "{ddl}");
    assert!(
        ddl.contains("`exchange_identifier` LowCardinality(Nullable(String))"),
        "{ddl}"
    );
    assert!(ddl.contains("`exchange_identifier_state` Enum8('ok' = 1, 'missing' = 2)"));
    assert!(
        ddl.contains("PARTITION BY toYYYYMMDD(toDateTime(l2_time))"),
        "{ddl}"
    );
    assert!(
        ddl.contains("TTL toDateTime(l2_time) + INTERVAL 3 DAY"),
        "{ddl}"
    );
    assert!(!ddl.contains("_dt`"));
}

#[test]
fn row_binary_matches_hand_encoding() {
    let s = schemas();
    let schema = s.get("l2_market_data").unwrap();
    let row = schema
        .validate(
            json!({
                "row_id": "r", "source_system_name": "ib", "component_instance_name": "p",
                "ingestion_time": 2, "symbol_identifier": "S", "symbol_type": "stocks",
                "price": 1.5, "price_unit": "u", "size": 2.0, "size_unit": "v",
                "side": "ask", "level": 1, "max_level": 300, "l2_time": 3
            })
            .as_object()
            .unwrap()
            .clone(),
        )
        .unwrap();
    let mut buf = Vec::new();
    encode_row_binary(schema, &row, &mut buf).unwrap();
    let mut want = vec![1, b'r', 2, b'i', b'b', 1, b'p'];
    want.extend_from_slice(&2i64.to_le_bytes());
    want.push(1); // exchange_identifier: NULL
    want.extend_from_slice(&[1, b'S']);
    want.extend_from_slice(&[0, 6]);
    want.extend_from_slice(b"stocks");
    want.extend_from_slice(&1.5f64.to_le_bytes());
    want.extend_from_slice(&[1, b'u']);
    want.extend_from_slice(&2.0f64.to_le_bytes());
    want.extend_from_slice(&[1, b'v', 3]);
    want.extend_from_slice(b"ask");
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(&300u32.to_le_bytes());
    want.extend_from_slice(&3i64.to_le_bytes());
    want.extend_from_slice(&[2, 1]); // states: exchange missing, symbol_type ok
    assert_eq!(buf, want);
    let stmt = insert_statement(schema, "db");
    assert!(stmt.starts_with("INSERT INTO `db`.`l2_market_data` (`row_id`, `source_system_name`"));
    assert!(stmt.ends_with("`symbol_type_state`) FORMAT RowBinary"));
}

#[test]
fn unqualified_tables_for_both_flavours() {
    let legacy = create_unqualified_table("tick_market_data", &opts("18.16.1"));
    assert!(
        legacy.contains("`tick_market_data_unqualified`"),
        "{legacy}"
    );
    assert!(
        legacy.contains("`quarantined_at_dt` DateTime MATERIALIZED"),
        "{legacy}"
    );
    assert!(!legacy.contains("TTL"));
    let modern = create_unqualified_table("tick_market_data", &opts("24.3.1"));
    assert!(
        modern.contains("`ingestion_time` DateTime64(9, 'UTC')"),
        "{modern}"
    );
    assert!(
        modern.contains("TTL toDateTime(quarantined_at) + INTERVAL 3 DAY"),
        "{modern}"
    );
    let rec = crate::row::UnqualifiedRecord::new("t", "c", "r".into(), b"x", "ib", "p", 7);
    let mut buf = Vec::new();
    encode_unqualified(&rec, 9, &mut buf);
    let mut want = vec![1, b't', 1, b'c', 1, b'r', 1, b'x', 4];
    want.extend_from_slice(b"utf8");
    want.extend_from_slice(&[2, b'i', b'b', 1, b'p']);
    want.extend_from_slice(&7i64.to_le_bytes());
    want.push(0);
    want.extend_from_slice(&(-1i32).to_le_bytes());
    want.extend_from_slice(&(-1i64).to_le_bytes());
    want.extend_from_slice(&9i64.to_le_bytes());
    assert_eq!(buf, want);
    let stmt = unqualified_insert_statement("t", "db");
    assert!(stmt.contains("`db`.`t_unqualified` (`category`"), "{stmt}");
}

#[test]
fn snapshot_tables_views_and_queries_follow_the_snapshot_key() {
    let s = schemas();
    let ind = s.get("indicators_market_data").unwrap();
    let legacy = create_snapshot_table(ind, &opts("18.16.1"));
    assert!(
        legacy.contains("ORDER BY (`source_system_name`, `symbol_identifier`, ifNull(`indicator_identifier`, ''))"),
        "{legacy}"
    );
    assert!(
        legacy.contains("ReplacingMergeTree(`snapshot_version`)")
            && !legacy.contains("MATERIALIZED")
    );
    let view = create_snapshot_view(ind, &opts("18.16.1"));
    assert!(
        view.contains("toUInt64(`market_event_time`) AS `snapshot_version`"),
        "{view}"
    );
    let modern = create_snapshot_view(ind, &opts("26.1.1"));
    assert!(
        modern.contains("toUnixTimestamp64Nano(`market_event_time`)"),
        "{modern}"
    );
    let l2 = s.get("l2_market_data").unwrap();
    let q = snapshot_query_argmax(l2, "db");
    assert!(
        q.contains("argMax(`price`, `snapshot_version`) AS `price`"),
        "{q}"
    );
    assert!(
        q.contains("GROUP BY `source_system_name`, `symbol_identifier`, `side`, `level`"),
        "{q}"
    );
    assert!(snapshot_query_final(l2, "db").contains("`db`.`l2_market_data_snapshot` FINAL"));
}

#[test]
fn offsets_state_and_dedup_token() {
    assert_eq!(dedup_token("p_tick", 2, 10, 19), "p_tick-2-10-19");
    let ddl = create_offsets_table(&opts("18.16.1"));
    assert!(ddl.contains("`marketlane_state`.`writer_offsets`"), "{ddl}");
    let mut buf = Vec::new();
    encode_offset_state("t", 1, (5, 9), BatchPhase::After, 7, &mut buf);
    let mut want = vec![1, b't'];
    want.extend_from_slice(&1i32.to_le_bytes());
    want.extend_from_slice(&5i64.to_le_bytes());
    want.extend_from_slice(&9i64.to_le_bytes());
    want.push(2);
    want.extend_from_slice(&7u64.to_le_bytes());
    assert_eq!(buf, want);
    assert!(offsets_query("db", "it's").contains("'it\\'s'"));
}

#[test]
fn analyst_access_only_where_sql_access_control_exists() {
    assert!(analyst_access(&opts("18.16.1")).is_empty());
    let sql = analyst_access(&opts("26.1.1")).join(";");
    assert!(
        sql.contains("GRANT SELECT ON `marketlane`.* TO `marketlane_analyst`"),
        "{sql}"
    );
    assert!(!sql.contains("marketlane_state"));
    let all = create_all(schemas().iter(), &opts("26.1.1"));
    assert_eq!(all.len(), 3 + 4 * 4 + 4);
}

#[test]
fn schema_growth_adds_columns_and_refuses_removals() {
    let s = schemas();
    let tick = s.get("tick_market_data").unwrap();
    let o = opts("18.16.1");
    let mut existing: Vec<String> = tick.columns();
    existing.push("tick_time_dt".into());
    existing.push("ingestion_time_dt".into());
    assert!(
        plan_schema_change(tick, "tick_market_data", &existing, &o)
            .unwrap()
            .is_empty()
    );
    existing.retain(|c| c != "size_unit");
    let add = plan_schema_change(tick, "tick_market_data", &existing, &o).unwrap();
    assert_eq!(
        add,
        ["ALTER TABLE `marketlane`.`tick_market_data` ADD COLUMN `size_unit` String"]
    );
    existing.push("venue".into());
    let err = plan_schema_change(tick, "tick_market_data", &existing, &o).unwrap_err();
    assert!(
        err.to_string().contains("column venue") && err.to_string().contains("refused"),
        "{err}"
    );
    let mut snap = tick.columns();
    snap.push(SNAPSHOT_VERSION.into());
    assert!(
        plan_schema_change(tick, "tick_market_data_snapshot", &snap, &o)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn long_strings_use_multi_byte_lengths_and_errors_leave_buffer_intact() {
    let mut buf = Vec::new();
    put_string(&mut buf, &"x".repeat(300));
    assert_eq!(&buf[..2], &[0xac, 0x02]);
    let s = schemas();
    let schema = s.get("tick_market_data").unwrap();
    let mut buf = vec![9];
    let bad = json!({"row_id": "r", "source_system_name": 5})
        .as_object()
        .unwrap()
        .clone();
    assert!(encode_row_binary(schema, &bad, &mut buf).is_err());
    assert_eq!(buf, vec![9]);
}
