//! ClickHouse side of a category schema: the DDL for the server version in use, and the
//! RowBinary encoding of validated rows.
//!
//! Production runs current ClickHouse; the machines here run Debian's 18.16. The DDL is generated
//! for what the detected server supports: `DateTime64(9,'UTC')`, `LowCardinality`, TTL on modern
//! servers; `Int64` nanoseconds with a `DateTime` companion column and plain `String` on old
//! ones. RowBinary bytes are the same for `Int64` and `DateTime64(9)`, so one encoder serves both.

use std::fmt::Write as _;

use serde_json::Value;

use crate::row::{RowMap, STATE_MISSING, STATE_OK};
use crate::schema::{CategorySchema, Dtype, FieldSpec, ROW_ID, STATE_SUFFIX};

/// Suffix of the `DateTime` companion column of a timestamp on servers without DateTime64.
pub const DATETIME_COMPANION_SUFFIX: &str = "_dt";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl ServerVersion {
    /// Parses the output of `SELECT version()`, e.g. `18.16.1` or `25.8.2.29`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.trim().split('.').map(|p| p.parse::<u32>().ok());
        Some(Self {
            major: it.next()??,
            minor: it.next()??,
            patch: it.next().flatten().unwrap_or(0),
        })
    }

    const fn at_least(self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }

    /// What this server supports, by the release that introduced each feature.
    pub fn capabilities(self) -> ServerCapabilities {
        ServerCapabilities {
            datetime64: self.at_least(20, 1),
            low_cardinality: self.at_least(19, 3),
            ttl: self.at_least(19, 6),
            sql_access_control: self.at_least(20, 4),
            insert_deduplication_token: self.at_least(22, 2),
            nullable_low_cardinality: self.at_least(19, 3),
        }
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerCapabilities {
    pub datetime64: bool,
    pub low_cardinality: bool,
    pub ttl: bool,
    pub sql_access_control: bool,
    pub insert_deduplication_token: bool,
    pub nullable_low_cardinality: bool,
}

/// Options of the generated DDL.
#[derive(Debug, Clone)]
pub struct DdlOptions {
    pub database: String,
    pub retention_days: u32,
    pub capabilities: ServerCapabilities,
}

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

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("column {column}: cannot encode {value} as {dtype}")]
pub struct EncodeError {
    pub column: String,
    pub value: String,
    pub dtype: String,
}

fn put_leb128(buf: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

pub(crate) fn put_string(buf: &mut Vec<u8>, s: &str) {
    put_leb128(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Appends one validated row (see [`CategorySchema::validate`]) to `buf` in RowBinary, in the
/// column order of [`insert_statement`]. On error `buf` is left as it was.
pub fn encode_row_binary(
    schema: &CategorySchema,
    row: &RowMap,
    buf: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    let result = encode_inner(schema, row, buf);
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

fn encode_inner(
    schema: &CategorySchema,
    row: &RowMap,
    buf: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let err = |column: &str, value: &Value, dtype: &str| EncodeError {
        column: column.to_string(),
        value: value.to_string(),
        dtype: dtype.to_string(),
    };
    match row.get(ROW_ID) {
        Some(Value::String(id)) => put_string(buf, id),
        other => return Err(err(ROW_ID, other.unwrap_or(&Value::Null), "String")),
    }
    for f in &schema.fields {
        let v = row.get(&f.name).unwrap_or(&Value::Null);
        if f.nullable {
            if v.is_null() {
                buf.push(1);
                continue;
            }
            buf.push(0);
        }
        match f.dtype {
            Dtype::String => put_string(buf, v.as_str().ok_or_else(|| err(&f.name, v, "String"))?),
            Dtype::Float64 => {
                let x = v.as_f64().ok_or_else(|| err(&f.name, v, "Float64"))?;
                buf.extend_from_slice(&x.to_le_bytes());
            }
            Dtype::Int64 | Dtype::Timestamp => {
                let x = v.as_i64().ok_or_else(|| err(&f.name, v, "Int64"))?;
                buf.extend_from_slice(&x.to_le_bytes());
            }
            Dtype::UInt32 => {
                let x = v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| err(&f.name, v, "UInt32"))?;
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    for f in schema.fields.iter().filter(|f| f.nullable) {
        let column = format!("{}{STATE_SUFFIX}", f.name);
        let v = row.get(&column).unwrap_or(&Value::Null);
        let code = v
            .as_str()
            .and_then(state_code)
            .ok_or_else(|| err(&column, v, STATE_TYPE))?;
        buf.push(code);
    }
    Ok(())
}

/// The RowBinary code of a `<field>_state` value (the column is an `Enum8`).
pub(crate) fn state_code(state: &str) -> Option<u8> {
    match state {
        STATE_OK => Some(1),
        STATE_MISSING => Some(2),
        _ => None,
    }
}

/// Name of the quarantine table of a category.
pub fn unqualified_table(category: &str) -> String {
    format!("{category}{}", crate::schema::UNQUALIFIED_SUFFIX)
}

/// Columns of every `<category>_unqualified` table, in RowBinary order.
const UNQUALIFIED_COLUMNS: &[(&str, &str)] = &[
    ("category", "String"),
    ("reason_code", "String"),
    ("reason", "String"),
    ("raw", "String"),
    ("raw_encoding", "String"),
    ("source_system_name", "String"),
    ("component_instance_name", "String"),
    ("ingestion_time", "TIMESTAMP"),
    ("source_topic", "String"),
    ("source_partition", "Int32"),
    ("source_offset", "Int64"),
    ("quarantined_at", "TIMESTAMP"),
];

/// `CREATE TABLE` of a category's quarantine table. Keyed by the Kafka coordinates the record
/// was read from, so a replayed quarantine record collapses like a replayed row.
pub fn create_unqualified_table(category: &str, opts: &DdlOptions) -> String {
    let caps = opts.capabilities;
    let ts = if caps.datetime64 {
        "DateTime64(9, 'UTC')"
    } else {
        "Int64"
    };
    let mut cols: Vec<String> = UNQUALIFIED_COLUMNS
        .iter()
        .map(|(n, t)| format!("`{n}` {}", if *t == "TIMESTAMP" { ts } else { t }))
        .collect();
    if !caps.datetime64 {
        for (n, t) in UNQUALIFIED_COLUMNS {
            if *t == "TIMESTAMP" {
                cols.push(format!(
                    "`{n}{DATETIME_COMPANION_SUFFIX}` DateTime MATERIALIZED toDateTime(intDiv({n}, 1000000000))"
                ));
            }
        }
    }
    let at = datetime_expr("quarantined_at", caps);
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS `{}`.`{}`\n(\n    {}\n)\nENGINE = ReplacingMergeTree()\nPARTITION BY toYYYYMMDD({at})\nORDER BY (`source_topic`, `source_partition`, `source_offset`)\n",
        opts.database,
        unqualified_table(category),
        cols.join(",\n    ")
    );
    if caps.ttl {
        let _ = writeln!(sql, "TTL {at} + INTERVAL {} DAY", opts.retention_days);
    }
    if caps.insert_deduplication_token {
        let _ = writeln!(sql, "SETTINGS non_replicated_deduplication_window = 1000");
    }
    sql
}

pub fn unqualified_insert_statement(category: &str, database: &str) -> String {
    let cols: Vec<String> = UNQUALIFIED_COLUMNS
        .iter()
        .map(|(c, _)| format!("`{c}`"))
        .collect();
    format!(
        "INSERT INTO `{database}`.`{}` ({}) FORMAT RowBinary",
        unqualified_table(category),
        cols.join(", ")
    )
}

/// Appends a quarantine record in RowBinary, in the order of [`unqualified_insert_statement`].
/// Missing Kafka coordinates are written as empty topic and -1.
pub fn encode_unqualified(
    rec: &crate::row::UnqualifiedRecord,
    quarantined_at: i64,
    buf: &mut Vec<u8>,
) {
    put_string(buf, &rec.category);
    put_string(buf, &rec.reason_code);
    put_string(buf, &rec.reason);
    put_string(buf, &rec.raw);
    put_string(
        buf,
        match rec.raw_encoding {
            crate::row::RawEncoding::Utf8 => "utf8",
            crate::row::RawEncoding::Base64 => "base64",
        },
    );
    put_string(buf, &rec.source_system_name);
    put_string(buf, &rec.component_instance_name);
    buf.extend_from_slice(&rec.ingestion_time.to_le_bytes());
    put_string(buf, rec.source_topic.as_deref().unwrap_or_default());
    buf.extend_from_slice(&rec.source_partition.unwrap_or(-1).to_le_bytes());
    buf.extend_from_slice(&rec.source_offset.unwrap_or(-1).to_le_bytes());
    buf.extend_from_slice(&quarantined_at.to_le_bytes());
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

// ---------------------------------------------------------------- writer offsets (state) ---

/// The writers' own database. It holds the per-partition offsets table and is kept apart from
/// the analysts' database, because 18.16 can restrict a users.xml user only by database.
pub fn state_database(database: &str) -> String {
    format!("{database}_state")
}

/// Per-partition state of the writers: the offset range of the last batch and whether its
/// insert was acknowledged (`after`) or only about to be sent (`before`). The writer seeks to it
/// on partition assignment; Kafka's committed offsets are advisory.
pub const OFFSETS_TABLE: &str = "writer_offsets";

/// Whether a batch's range was written before its insert or after ClickHouse acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPhase {
    Before = 1,
    After = 2,
}

pub fn create_offsets_table(opts: &DdlOptions) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{}`.`{OFFSETS_TABLE}`\n(\n    `topic` String,\n    `partition` Int32,\n    \
         `min_offset` Int64,\n    `max_offset` Int64,\n    `phase` Enum8('before' = 1, 'after' = 2),\n    \
         `seq` UInt64\n)\nENGINE = ReplacingMergeTree(seq)\nORDER BY (`topic`, `partition`)\n",
        state_database(&opts.database)
    )
}

pub fn offsets_insert_statement(database: &str) -> String {
    format!(
        "INSERT INTO `{}`.`{OFFSETS_TABLE}` (`topic`, `partition`, `min_offset`, `max_offset`, `phase`, `seq`) FORMAT RowBinary",
        state_database(database)
    )
}

/// Appends one offsets-state row in RowBinary. `seq` orders the rows of a partition (the
/// latest wins); the writer uses the wall clock in nanoseconds, made strictly increasing.
pub fn encode_offset_state(
    topic: &str,
    partition: i32,
    range: (i64, i64),
    phase: BatchPhase,
    seq: u64,
    buf: &mut Vec<u8>,
) {
    put_string(buf, topic);
    buf.extend_from_slice(&partition.to_le_bytes());
    buf.extend_from_slice(&range.0.to_le_bytes());
    buf.extend_from_slice(&range.1.to_le_bytes());
    buf.push(phase as u8);
    buf.extend_from_slice(&seq.to_le_bytes());
}

/// The latest state per partition of `topic`: `partition, min_offset, max_offset, phase`.
pub fn offsets_query(database: &str, topic: &str) -> String {
    format!(
        "SELECT `partition`, argMax(`min_offset`, `seq`), argMax(`max_offset`, `seq`), \
         toString(argMax(`phase`, `seq`)) FROM `{}`.`{OFFSETS_TABLE}` WHERE `topic` = '{}' \
         GROUP BY `partition`",
        state_database(database),
        topic.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// The `insert_deduplication_token` of a batch (clickhouse-kafka-connect's scheme): a replayed
/// batch cut at the same offsets gets the same token and the server drops it.
pub fn dedup_token(topic: &str, partition: i32, min_offset: i64, max_offset: i64) -> String {
    format!("{topic}-{partition}-{min_offset}-{max_offset}")
}

// ------------------------------------------------------------------------------ snapshots ---

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

// ------------------------------------------------------------------------- analyst access ---

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

// ---------------------------------------------------------------------------- schema growth ---

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaChangeError {
    #[error(
        "table {table} has column {column}, which schema {schema_file} no longer defines: \
         removing a field is refused. Put the field back (nullable if producers stop filling it); \
         dropping a column is the seed's 6-month shrink procedure, done by a human after \
         every consumer stopped reading it"
    )]
    FieldRemoved {
        table: String,
        column: String,
        schema_file: String,
    },
}

/// The `ALTER TABLE … ADD COLUMN` statements that bring `table` (an ingestion or snapshot
/// table of `schema`) from its `existing` column names to the schema. Rows written before read
/// the column's default. A column the schema no longer has is an error, never a drop.
pub fn plan_schema_change(
    schema: &CategorySchema,
    table: &str,
    existing: &[String],
    opts: &DdlOptions,
) -> Result<Vec<String>, SchemaChangeError> {
    let wanted = schema.columns();
    for col in existing {
        let generated = col == SNAPSHOT_VERSION
            || col
                .strip_suffix(DATETIME_COMPANION_SUFFIX)
                .is_some_and(|base| wanted.iter().any(|w| w == base));
        if !generated && !wanted.contains(col) {
            return Err(SchemaChangeError::FieldRemoved {
                table: table.to_string(),
                column: col.clone(),
                schema_file: schema.source.display().to_string(),
            });
        }
    }
    let defs = if table == snapshot_table(&schema.category) {
        snapshot_column_definitions(schema, opts.capabilities)
    } else {
        column_definitions(schema, opts.capabilities)
    };
    let mut out = Vec::new();
    for def in defs {
        // A definition starts with the backquoted column name.
        let name = def.split('`').nth(1).unwrap_or_default();
        if !existing.iter().any(|e| e == name) {
            out.push(format!(
                "ALTER TABLE `{}`.`{table}` ADD COLUMN {def}",
                opts.database
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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
        assert!(
            !ddl.contains("TTL") && !ddl.contains("LowCardinality") && !ddl.contains("DateTime64")
        );
        assert!(ddl.contains(
            "ORDER BY (`source_system_name`, `symbol_identifier`, `tick_time`, `row_id`)"
        ));
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
        assert!(
            stmt.starts_with("INSERT INTO `db`.`l2_market_data` (`row_id`, `source_system_name`")
        );
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
}
