//! Snapshot tables: the latest row per key, fed by a materialized view.

use super::*;
use crate::schema::CategorySchema;

pub fn snapshot_table(category: &str) -> String {
    format!("{category}_snapshot")
}

pub fn snapshot_view(category: &str) -> String {
    format!("{category}_snapshot_mv")
}

/// Column of the snapshot table that orders versions of one key: the event time in ns.
pub const SNAPSHOT_VERSION: &str = "snapshot_version";

/// The sorting key of a snapshot table: the schema's `snapshot_key`. Nullable key fields (the
/// seed's `indicator_identifier`) enter as `ifNull(x, '')`: sorting keys cannot be Nullable.
fn snapshot_order(schema: &CategorySchema) -> Vec<String> {
    schema
        .snapshot_key
        .iter()
        .map(|k| match schema.field(k) {
            Some(f) if f.nullable => format!("ifNull(`{k}`, '')"),
            _ => format!("`{k}`"),
        })
        .collect()
}

/// `CREATE TABLE` of a category's snapshot table: the ingestion columns plus
/// [`SNAPSHOT_VERSION`], a ReplacingMergeTree by the snapshot key that keeps the row with the
/// latest event time. Bounded by the number of keys, so it has no TTL.
pub fn create_snapshot_table(schema: &CategorySchema, opts: &DdlOptions) -> String {
    let cols = snapshot_column_definitions(schema, opts.capabilities);
    format!(
        "CREATE TABLE IF NOT EXISTS `{}`.`{}`\n(\n    {}\n)\nENGINE = ReplacingMergeTree(`{SNAPSHOT_VERSION}`)\nORDER BY ({})\n",
        opts.database,
        snapshot_table(&schema.category),
        cols.join(",\n    "),
        snapshot_order(schema).join(", ")
    )
}

/// Column definitions of a snapshot table: the ingestion columns without the MATERIALIZED
/// `DateTime` companions (18.16 cannot push into a view target that has them), plus the version.
pub fn snapshot_column_definitions(
    schema: &CategorySchema,
    caps: ServerCapabilities,
) -> Vec<String> {
    let mut cols: Vec<String> = column_definitions(schema, caps)
        .into_iter()
        .filter(|c| !c.contains(" MATERIALIZED "))
        .collect();
    cols.push(format!("`{SNAPSHOT_VERSION}` UInt64"));
    cols
}

/// The materialized view that feeds the snapshot table from every insert into the ingestion
/// table. It names its columns, so a schema change recreates it (see [`plan_schema_change`]).
pub fn create_snapshot_view(schema: &CategorySchema, opts: &DdlOptions) -> String {
    let cols: Vec<String> = schema.columns().iter().map(|c| format!("`{c}`")).collect();
    let version = if opts.capabilities.datetime64 {
        format!("toUInt64(toUnixTimestamp64Nano(`{}`))", schema.event_time)
    } else {
        format!("toUInt64(`{}`)", schema.event_time)
    };
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`{mv}` TO `{db}`.`{snap}`\nAS SELECT {cols}, {version} AS `{SNAPSHOT_VERSION}`\nFROM `{db}`.`{src}`\n",
        db = opts.database,
        mv = snapshot_view(&schema.category),
        snap = snapshot_table(&schema.category),
        cols = cols.join(", "),
        src = schema.category,
    )
}

/// The analyst's query for the latest row per key, with `FINAL` (exact; merges at read time).
pub fn snapshot_query_final(schema: &CategorySchema, database: &str) -> String {
    let cols: Vec<String> = schema.columns().iter().map(|c| format!("`{c}`")).collect();
    // Plain key columns: 18.16 rejects the sorting-key expressions again in ORDER BY with FINAL.
    let key: Vec<String> = schema
        .snapshot_key
        .iter()
        .map(|k| format!("`{k}`"))
        .collect();
    format!(
        "SELECT {} FROM `{database}`.`{}` FINAL ORDER BY {}",
        cols.join(", "),
        snapshot_table(&schema.category),
        key.join(", ")
    )
}

/// The same answer with `argMax` per key (no `FINAL`; works on every server and table engine).
pub fn snapshot_query_argmax(schema: &CategorySchema, database: &str) -> String {
    let key: Vec<String> = schema
        .snapshot_key
        .iter()
        .map(|k| format!("`{k}`"))
        .collect();
    let cols: Vec<String> = schema
        .columns()
        .iter()
        .map(|c| {
            if schema.snapshot_key.contains(c) {
                format!("`{c}`")
            } else if schema.field(c).is_some_and(|f| f.nullable) {
                // Aggregates skip NULLs: a plain argMax would return an older non-NULL value
                // where the latest row has none. A tuple is never NULL, so it keeps the NULL.
                format!("tupleElement(argMax(tuple(`{c}`), `{SNAPSHOT_VERSION}`), 1) AS `{c}`")
            } else {
                format!("argMax(`{c}`, `{SNAPSHOT_VERSION}`) AS `{c}`")
            }
        })
        .collect();
    format!(
        "SELECT {} FROM `{database}`.`{}` GROUP BY {} ORDER BY {}",
        cols.join(", "),
        snapshot_table(&schema.category),
        key.join(", "),
        key.join(", ")
    )
}
