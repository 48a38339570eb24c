//! DDL of the ingestion tables for the detected server generation, `create_all`, and the
//! analysts' access.

use std::fmt::Write as _;

use super::*;
use crate::schema::{CategorySchema, Dtype, FieldSpec, ROW_ID};

fn column_type(field: &FieldSpec, caps: ServerCapabilities) -> String {
    let base = match field.dtype {
        Dtype::String => "String".to_string(),
        Dtype::Float64 => "Float64".to_string(),
        Dtype::Int64 => "Int64".to_string(),
        Dtype::UInt32 => "UInt32".to_string(),
        Dtype::Timestamp if caps.datetime64 => "DateTime64(9, 'UTC')".to_string(),
        Dtype::Timestamp => "Int64".to_string(),
    };
    let base = if field.nullable {
        format!("Nullable({base})")
    } else {
        base
    };
    if field.low_cardinality
        && caps.low_cardinality
        && (!field.nullable || caps.nullable_low_cardinality)
    {
        format!("LowCardinality({base})")
    } else {
        base
    }
}

const STATE_TYPE: &str = "Enum8('ok' = 1, 'missing' = 2)";

/// The expression giving the `DateTime` of a timestamp column on this server.
pub fn datetime_expr(column: &str, caps: ServerCapabilities) -> String {
    if caps.datetime64 {
        format!("toDateTime({column})")
    } else {
        format!("{column}{DATETIME_COMPANION_SUFFIX}")
    }
}

/// Column definitions (name and type, one per line) of a category's ingestion table.
pub fn column_definitions(schema: &CategorySchema, caps: ServerCapabilities) -> Vec<String> {
    let mut cols = vec![format!("`{ROW_ID}` String")];
    for f in &schema.fields {
        cols.push(format!("`{}` {}", f.name, column_type(f, caps)));
    }
    for f in &schema.fields {
        if let Some(state) = f.state_column() {
            cols.push(format!("`{state}` {STATE_TYPE}"));
        }
    }
    if !caps.datetime64 {
        for f in schema.fields.iter().filter(|f| f.dtype == Dtype::Timestamp) {
            cols.push(format!(
                "`{name}{DATETIME_COMPANION_SUFFIX}` DateTime MATERIALIZED toDateTime(intDiv({name}, 1000000000))",
                name = f.name
            ));
        }
    }
    cols
}

/// The partition key of a category's ingestion table: the UTC day of its **event time**.
/// ReplacingMergeTree collapses duplicates only within a partition, and `FINAL` does not merge
/// across partitions; a row id is derived from the source event, which fixes its event time,
/// so every copy of a row (a replay, a second pod during a handover, a re-emitted release)
/// lands in the same partition whatever the producer's clock said at ingestion. (Partitioned
/// by `ingestion_time`, a replay across midnight UTC kept both copies for good.)
pub fn ingestion_partition_key(schema: &CategorySchema, caps: ServerCapabilities) -> String {
    format!("toYYYYMMDD({})", datetime_expr(&schema.event_time, caps))
}

/// Name under which [`repartition_statements`] keeps an ingestion table partitioned by the
/// day of `ingestion_time` (the layout before event-time partitions).
pub fn legacy_partitioned_table(category: &str) -> String {
    format!("{category}__by_ingestion_day")
}

/// Moves an existing ingestion table to event-time partitions (a partition key cannot be
/// altered): a new table is created beside it, every row copied (with the row's own columns;
/// `DateTime` companions are recomputed), and the two are swapped in one `RENAME`. The old
/// table is kept as [`legacy_partitioned_table`], never dropped here: rows another pod's
/// writer inserted into it during the copy are still there, and ops drop it once they have
/// checked (`marketlane` logs the statements). The snapshot view is recreated by the caller.
pub fn repartition_statements(schema: &CategorySchema, opts: &DdlOptions) -> Vec<String> {
    let db = &opts.database;
    let cat = &schema.category;
    let tmp = format!("{cat}__repartition");
    let create = create_ingestion_table(schema, opts).replacen(
        &format!("`{db}`.`{cat}`\n"),
        &format!("`{db}`.`{tmp}`\n"),
        1,
    );
    let cols: Vec<String> = schema.columns().iter().map(|c| format!("`{c}`")).collect();
    let cols = cols.join(", ");
    vec![
        format!("DROP TABLE IF EXISTS `{db}`.`{tmp}`"),
        create,
        format!("INSERT INTO `{db}`.`{tmp}` ({cols}) SELECT {cols} FROM `{db}`.`{cat}`"),
        format!(
            "RENAME TABLE `{db}`.`{cat}` TO `{db}`.`{old}`, `{db}`.`{tmp}` TO `{db}`.`{cat}`",
            old = legacy_partitioned_table(cat)
        ),
    ]
}

/// `CREATE TABLE` of the ingestion table of a category: a ReplacingMergeTree whose sorting key
/// ends in `row_id`, so a replayed row collapses into the original on merge and with `FINAL`,
/// partitioned by event day ([`ingestion_partition_key`]).
pub fn create_ingestion_table(schema: &CategorySchema, opts: &DdlOptions) -> String {
    let caps = opts.capabilities;
    let mut sql = String::new();
    let _ = writeln!(
        sql,
        "CREATE TABLE IF NOT EXISTS `{}`.`{}`\n(",
        opts.database, schema.category
    );
    let cols = column_definitions(schema, caps);
    for (i, c) in cols.iter().enumerate() {
        let sep = if i + 1 == cols.len() { "" } else { "," };
        let _ = writeln!(sql, "    {c}{sep}");
    }
    // Retention follows the partitions: by event day (TTL here, partition drops on 18.16).
    let event_dt = datetime_expr(&schema.event_time, caps);
    let mut order: Vec<String> = schema.sort_key.iter().map(|k| format!("`{k}`")).collect();
    order.push(format!("`{ROW_ID}`"));
    let _ = writeln!(sql, ")\nENGINE = ReplacingMergeTree()");
    let _ = writeln!(
        sql,
        "PARTITION BY {}",
        ingestion_partition_key(schema, caps)
    );
    let _ = writeln!(sql, "ORDER BY ({})", order.join(", "));
    if caps.ttl {
        let _ = writeln!(sql, "TTL {event_dt} + INTERVAL {} DAY", opts.retention_days);
    }
    if caps.insert_deduplication_token {
        // Lets a retried batch with the same deduplication token be dropped by the server.
        let _ = writeln!(
            sql,
            "SETTINGS index_granularity = 8192, non_replicated_deduplication_window = 1000"
        );
    } else {
        let _ = writeln!(sql, "SETTINGS index_granularity = 8192");
    }
    sql
}

/// The `INSERT` statement matching [`encode_row_binary`]'s column order.
pub fn insert_statement(schema: &CategorySchema, database: &str) -> String {
    let cols: Vec<String> = schema.columns().iter().map(|c| format!("`{c}`")).collect();
    format!(
        "INSERT INTO `{database}`.`{}` ({}) FORMAT RowBinary",
        schema.category,
        cols.join(", ")
    )
}

/// All DDL statements: the databases, the writers' offsets table, each category's ingestion,
/// quarantine and snapshot tables with the snapshot view, and (on servers with SQL access
/// control) the analyst role, user and grants.
pub fn create_all<'a>(
    schemas: impl IntoIterator<Item = &'a CategorySchema>,
    opts: &DdlOptions,
) -> Vec<String> {
    let mut out = vec![
        format!("CREATE DATABASE IF NOT EXISTS `{}`", opts.database),
        format!(
            "CREATE DATABASE IF NOT EXISTS `{}`",
            state_database(&opts.database)
        ),
        create_offsets_table(opts),
    ];
    for s in schemas {
        out.push(create_ingestion_table(s, opts));
        out.push(create_unqualified_table(&s.category, opts));
        out.push(create_snapshot_table(s, opts));
        out.push(create_snapshot_view(s, opts));
    }
    out.extend(analyst_access(opts));
    out
}

/// The role analysts get on servers with SQL access control (users.xml on older ones).
pub const ANALYST_ROLE: &str = "marketlane_analyst";
/// The analyst user: no password and loopback only, like the users.xml one of the local stack;
/// ops give it a password and hosts with `ALTER USER` where it is reached from elsewhere.
pub const ANALYST_USER: &str = "analyst";

/// Role, grants and user: SELECT on the analysts' database and nothing else (the writers'
/// offsets live in [`state_database`], which the role cannot see). Empty on servers without SQL
/// access control: there the analyst is defined in users.xml.
pub fn analyst_access(opts: &DdlOptions) -> Vec<String> {
    if !opts.capabilities.sql_access_control {
        return Vec::new();
    }
    vec![
        format!("CREATE ROLE IF NOT EXISTS `{ANALYST_ROLE}`"),
        format!("GRANT SELECT ON `{}`.* TO `{ANALYST_ROLE}`", opts.database),
        format!(
            "CREATE USER IF NOT EXISTS `{ANALYST_USER}` IDENTIFIED WITH no_password HOST LOCAL DEFAULT ROLE `{ANALYST_ROLE}`"
        ),
        format!("GRANT `{ANALYST_ROLE}` TO `{ANALYST_USER}`"),
    ]
}
