//! The ClickHouse side of the writer: server version detection, DDL and schema growth, the
//! per-partition offsets state, RowBinary inserts with deduplication tokens, and retention by
//! partition drop on servers without TTL.

use std::collections::BTreeMap;

use marketlane_protocol::clickhouse::{
    self as ch, BatchPhase, DdlOptions, SchemaChangeError, ServerVersion,
};
use marketlane_protocol::{CategorySchema, SchemaSet};
use tracing::{info, warn};

use crate::config::ClickHouseConfig;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Retryable: the server is down, overloaded or refused the request.
    #[error("clickhouse at {url} unreachable or failing: {message}")]
    Server { url: String, message: String },
    #[error("clickhouse returned an unreadable version {0:?}")]
    Version(String),
    #[error("ddl failed: {message}\n{statement}")]
    Ddl { statement: String, message: String },
    /// Not retryable: a human must fix the schema file.
    #[error(transparent)]
    SchemaChange(#[from] SchemaChangeError),
    #[error("clickhouse answered {query:?} with an unreadable line {line:?}")]
    Answer { query: String, line: String },
    /// Not retryable as is: the server refused the content of the rows (a value it cannot
    /// store, a constraint). The batch is bisected to the rows that cause it.
    #[error("clickhouse at {url} rejected the rows (code {code}): {message}")]
    Rejected {
        url: String,
        code: u32,
        message: String,
    },
}

/// ClickHouse error codes that say the inserted *data* is unacceptable, whatever the server's
/// state: a retry of the same rows fails the same way. Anything else (down, overloaded, too
/// many parts, access, missing table) is the server's state and is retried unchanged.
const CONTENT_ERROR_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF (a row shorter than its columns)
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (a `throwIf` check in a column expression)
    469, // VIOLATED_CONSTRAINT (a table CONSTRAINT … CHECK)
];

/// Where each row of a batch's RowBinary buffer ends, with its Kafka offset and time: what
/// bisecting a rejected batch needs to insert halves and to quarantine a single row. Kept
/// beside the batch while it waits for its insert. The raw payloads are not kept (they were
/// most of a batch's memory): a refused row's payload is read back from Kafka by its offset.
#[derive(Debug, Default)]
pub struct RowIndex {
    ends: Vec<usize>,
    offsets: Vec<i64>,
    /// Kafka timestamps (ns): a quarantined row's `quarantined_at`, stable across replays.
    times: Vec<i64>,
}

impl RowIndex {
    /// Records a row that ends at `rows_len` in the batch buffer.
    pub fn push(&mut self, offset: i64, kafka_time_ns: i64, rows_len: usize) {
        self.ends.push(rows_len);
        self.offsets.push(offset);
        self.times.push(kafka_time_ns);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Byte range of rows `[lo, hi)` in the batch buffer.
    fn bytes(&self, lo: usize, hi: usize) -> std::ops::Range<usize> {
        let start = if lo == 0 { 0 } else { self.ends[lo - 1] };
        start..self.ends[hi - 1]
    }
}

/// A row ClickHouse refused on its own, with the server's reason. Its payload is not here:
/// the caller reads it back from Kafka at `offset`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoisonRow {
    pub offset: i64,
    /// The row's Kafka timestamp (ns).
    pub at: i64,
    pub code: u32,
    pub reason: String,
}

/// The stored state of one partition (see [`ch::OFFSETS_TABLE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    pub min_offset: i64,
    pub max_offset: i64,
    pub phase: BatchPhase,
}

/// A connected ClickHouse: the client and what the server supports.
#[derive(Clone)]
pub struct ClickHouse {
    pub client: clickhouse::Client,
    pub version: ServerVersion,
    pub config: ClickHouseConfig,
}

impl ClickHouse {
    /// Connects and detects the server version. Validation of row types is off: the writer
    /// encodes RowBinary itself from the schema, and 18.16 cannot answer the crate's checks.
    pub async fn connect(config: &ClickHouseConfig) -> Result<Self, SinkError> {
        let client = clickhouse::Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            .with_password(&config.password)
            .with_compression(if config.lz4() {
                clickhouse::Compression::Lz4
            } else {
                clickhouse::Compression::None
            })
            .with_validation(false);
        let raw: String = client
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(|e| SinkError::Server {
                url: config.url.clone(),
                message: e.to_string(),
            })?;
        let version = ServerVersion::parse(&raw).ok_or(SinkError::Version(raw))?;
        Ok(Self {
            client,
            version,
            config: config.clone(),
        })
    }

    pub fn ddl_options(&self) -> DdlOptions {
        DdlOptions {
            database: self.config.database.clone(),
            retention_days: self.config.retention_days,
            capabilities: self.version.capabilities(),
        }
    }

    fn server_err(&self, e: clickhouse::error::Error) -> SinkError {
        SinkError::Server {
            url: self.config.url.clone(),
            message: e.to_string(),
        }
    }

    async fn ddl(&self, statement: &str) -> Result<(), SinkError> {
        self.client
            .query(statement)
            .execute()
            .await
            .map_err(|e| SinkError::Ddl {
                statement: statement.to_string(),
                message: e.to_string(),
            })
    }

    /// Runs a query and returns its rows as tab-separated fields.
    pub async fn query_tsv(&self, sql: &str) -> Result<Vec<Vec<String>>, SinkError> {
        let bytes = self
            .client
            .query(sql)
            .fetch_bytes("TabSeparated")
            .map_err(|e| self.server_err(e))?
            .collect()
            .await
            .map_err(|e| self.server_err(e))?;
        Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(String::from).collect())
            .collect())
    }

    /// Creates the databases, the offsets table, every category's tables and snapshot view and
    /// (modern servers) the analyst role, then brings existing tables up to the schemas.
    pub async fn apply_ddl(&self, schemas: &SchemaSet) -> Result<Vec<String>, SinkError> {
        // Views last: 18.16 analyses a view's query even when it exists, so the columns it
        // names must be there (schema growth) first.
        let (views, tables): (Vec<String>, Vec<String>) =
            ch::create_all(schemas.iter(), &self.ddl_options())
                .into_iter()
                .partition(|s| s.starts_with("CREATE MATERIALIZED VIEW"));
        for statement in tables {
            let access = ["CREATE ROLE", "CREATE USER", "GRANT"]
                .iter()
                .any(|p| statement.starts_with(p));
            match self.ddl(&statement).await {
                // The writer's user may lack access management: the analyst role is then
                // created by ops from `marketlane schema ddl`; the data path does not need it.
                Err(e) if access => warn!(error = %e, "cannot create the analyst access"),
                r => r?,
            }
        }
        let ran = self.sync_schemas(schemas).await?;
        for statement in views {
            self.ddl(&statement).await?;
        }
        Ok(ran)
    }

    /// Schema growth (start and `reload-schemas`): a field added to a schema file becomes an
    /// `ADD COLUMN` on the ingestion and snapshot tables (old rows read the default) and the
    /// snapshot view is recreated with it. A removed field is refused with an explanation before
    /// anything changes. Returns the statements it ran.
    pub async fn sync_schemas(&self, schemas: &SchemaSet) -> Result<Vec<String>, SinkError> {
        let opts = self.ddl_options();
        let mut plan: Vec<(&CategorySchema, Vec<String>)> = Vec::new();
        for schema in schemas.iter() {
            let mut alters = Vec::new();
            for table in [
                schema.category.clone(),
                ch::snapshot_table(&schema.category),
            ] {
                let existing = self.columns(&table).await?;
                if existing.is_empty() {
                    // A category new since start: create its tables as at start.
                    alters.extend([
                        ch::create_ingestion_table(schema, &opts),
                        ch::create_unqualified_table(&schema.category, &opts),
                        ch::create_snapshot_table(schema, &opts),
                    ]);
                    break;
                }
                alters.extend(ch::plan_schema_change(schema, &table, &existing, &opts)?);
            }
            // Tables made before event-time partitions: moved once (see the protocol's
            // `repartition_statements`); the view is recreated below with the growth.
            if self.partitioned_by_ingestion_time(&schema.category).await? {
                warn!(
                    category = %schema.category,
                    kept_as = %ch::legacy_partitioned_table(&schema.category),
                    "ingestion table partitioned by ingestion day: moving it to event-day \
                     partitions; the old table is kept, drop it once checked"
                );
                alters.extend(ch::repartition_statements(schema, &opts));
            }
            if !alters.is_empty() {
                plan.push((schema, alters));
            }
        }
        let mut ran = Vec::new();
        for (schema, alters) in plan {
            for a in alters {
                info!(category = %schema.category, statement = %a, "schema grew");
                self.ddl(&a).await?;
                ran.push(a);
            }
            // The view names its columns: recreate it so the new column reaches the snapshot.
            // Rows inserted between the two statements miss the snapshot until the next row of
            // their key; the writers call this before they start consuming.
            let drop = format!(
                "DROP TABLE IF EXISTS `{}`.`{}`",
                opts.database,
                ch::snapshot_view(&schema.category)
            );
            self.ddl(&drop).await?;
            let create = ch::create_snapshot_view(schema, &opts);
            self.ddl(&create).await?;
            ran.push(drop);
            ran.push(create);
        }
        Ok(ran)
    }

    /// The ingestion table exists and its partition key is the day of `ingestion_time`.
    async fn partitioned_by_ingestion_time(&self, table: &str) -> Result<bool, SinkError> {
        let sql = format!(
            "SELECT partition_key FROM system.tables WHERE database = '{}' AND name = '{table}'",
            self.config.database
        );
        Ok(self
            .query_tsv(&sql)
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .any(|key| key.contains("ingestion_time")))
    }

    async fn columns(&self, table: &str) -> Result<Vec<String>, SinkError> {
        let sql = format!(
            "SELECT name FROM system.columns WHERE database = '{}' AND table = '{table}'",
            self.config.database
        );
        Ok(self
            .query_tsv(&sql)
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect())
    }

    /// Sends one RowBinary batch; returns only once ClickHouse has acknowledged it. With a
    /// token (servers that support it), a batch the table has already seen is dropped.
    pub async fn insert(
        &self,
        statement: &str,
        rows: bytes::Bytes,
        dedup_token: Option<&str>,
    ) -> Result<(), SinkError> {
        self.insert_parts(statement, vec![rows], dedup_token).await
    }

    /// Whether the server drops a repeated insert by its `insert_deduplication_token`
    /// (22.2 and later).
    pub fn has_dedup_tokens(&self) -> bool {
        self.version.capabilities().insert_deduplication_token
    }

    /// Several bodies as one insert (one block, so one part, and all or nothing while they
    /// stay under `max_insert_block_size` rows): the bodies are sent one after another, not
    /// copied together.
    pub async fn insert_parts(
        &self,
        statement: &str,
        parts: Vec<bytes::Bytes>,
        dedup_token: Option<&str>,
    ) -> Result<(), SinkError> {
        let mut insert = self.client.insert_formatted_with(statement.to_string());
        if let Some(token) = dedup_token
            && self.has_dedup_tokens()
        {
            insert = insert.with_setting("insert_deduplication_token", token);
        }
        let classify = |e: clickhouse::error::Error| {
            let message = e.to_string();
            match super::exception_code(&message) {
                Some(code) if CONTENT_ERROR_CODES.contains(&code) => SinkError::Rejected {
                    url: self.config.url.clone(),
                    code,
                    message,
                },
                _ => SinkError::Server {
                    url: self.config.url.clone(),
                    message,
                },
            }
        };
        for part in parts {
            insert.send(part).await.map_err(classify)?;
        }
        insert.end().await.map_err(classify)
    }

    /// Inserts a batch; when ClickHouse rejects it for its content, bisects it down to the
    /// rows it refuses on their own and returns those (the rest is inserted). Deterministic:
    /// the same batch splits the same way, and each part carries its own token
    /// (`<token>-<first offset>-<last offset>`), so a batch replayed after a crash lands
    /// exactly once on servers with tokens and collapses under `FINAL` on the others. An
    /// error that is the server's state (down, overloaded) stops the bisection and is
    /// returned: the caller retries the whole batch.
    pub async fn insert_bisecting(
        &self,
        statement: &str,
        rows: &bytes::Bytes,
        index: &RowIndex,
        token: &str,
    ) -> Result<Vec<PoisonRow>, SinkError> {
        // `Bytes` clones and slices share the batch buffer: no copy per attempt.
        let first = match self.insert(statement, rows.clone(), Some(token)).await {
            Ok(()) => return Ok(Vec::new()),
            Err(SinkError::Rejected { code, message, .. }) if !index.is_empty() => (code, message),
            Err(e) => return Err(e),
        };
        warn!(
            rows = index.len(),
            reason = %first.1,
            "clickhouse rejected a batch for its content: bisecting to the rows it refuses"
        );
        let mut poison = Vec::new();
        // Ranges [lo, hi) known to be rejected, with the server's reason; depth first so
        // the rows come out in offset order.
        let mut rejected = vec![(0, index.len(), first)];
        while let Some((lo, hi, (code, reason))) = rejected.pop() {
            if hi - lo == 1 {
                poison.push(PoisonRow {
                    offset: index.offsets[lo],
                    at: index.times[lo],
                    code,
                    reason,
                });
                continue;
            }
            let mid = lo + (hi - lo) / 2;
            let mut halves = Vec::new();
            for (a, b) in [(lo, mid), (mid, hi)] {
                let part_token = format!("{token}-{}-{}", index.offsets[a], index.offsets[b - 1]);
                let part = rows.slice(index.bytes(a, b));
                match self.insert(statement, part, Some(&part_token)).await {
                    Ok(()) => {}
                    Err(SinkError::Rejected { code, message, .. }) => {
                        halves.push((a, b, (code, message)))
                    }
                    Err(e) => return Err(e),
                }
            }
            // Second half pushed first: the first half is examined first.
            rejected.extend(halves.into_iter().rev());
        }
        Ok(poison)
    }

    /// The stored state of every partition of `topic` that has one.
    pub async fn partition_states(
        &self,
        topic: &str,
    ) -> Result<BTreeMap<i32, PartitionState>, SinkError> {
        let sql = ch::offsets_query(&self.config.database, topic);
        let mut out = BTreeMap::new();
        for row in self.query_tsv(&sql).await? {
            let bad = || SinkError::Answer {
                query: sql.clone(),
                line: row.join("\t"),
            };
            let [p, min, max, phase] = row.as_slice() else {
                return Err(bad());
            };
            let phase = match phase.as_str() {
                "before" => BatchPhase::Before,
                "after" => BatchPhase::After,
                _ => return Err(bad()),
            };
            out.insert(
                p.parse().map_err(|_| bad())?,
                PartitionState {
                    min_offset: min.parse().map_err(|_| bad())?,
                    max_offset: max.parse().map_err(|_| bad())?,
                    phase,
                },
            );
        }
        Ok(out)
    }

    /// Records the states of a set of partitions in one insert, all under version `seq`
    /// (the reading side takes the row of the highest version per partition).
    pub async fn write_states(
        &self,
        topic: &str,
        records: &[(i32, i64, i64, BatchPhase)],
        seq: u64,
    ) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(records.len() * 48);
        for &(p, min, max, phase) in records {
            ch::encode_offset_state(topic, p, (min, max), phase, seq, &mut buf);
        }
        self.insert(
            &ch::offsets_insert_statement(&self.config.database),
            buf.into(),
            None,
        )
        .await
    }

    /// Retention on servers without TTL: drops the daily partitions of the ingestion and
    /// quarantine tables older than `retention_days` before `today` (`YYYYMMDD`, UTC). Returns
    /// the `table partition` pairs it dropped.
    pub async fn drop_expired_partitions(
        &self,
        schemas: &SchemaSet,
        today: u32,
    ) -> Result<Vec<String>, SinkError> {
        let cutoff = yyyymmdd_minus_days(today, self.config.retention_days);
        let tables: Vec<String> = schemas
            .iter()
            .flat_map(|s| [s.category.clone(), ch::unqualified_table(&s.category)])
            .map(|t| format!("'{t}'"))
            .collect();
        let sql = format!(
            "SELECT DISTINCT table, partition FROM system.parts WHERE active AND database = '{}' \
             AND table IN ({}) AND toUInt32OrZero(partition) BETWEEN 1 AND {}",
            self.config.database,
            tables.join(", "),
            cutoff.saturating_sub(1)
        );
        let mut dropped = Vec::new();
        for row in self.query_tsv(&sql).await? {
            let [table, partition] = row.as_slice() else {
                continue;
            };
            let stmt = format!(
                "ALTER TABLE `{}`.`{table}` DROP PARTITION {partition}",
                self.config.database
            );
            self.ddl(&stmt).await?;
            info!(table, partition, "retention: dropped partition");
            dropped.push(format!("{table} {partition}"));
        }
        Ok(dropped)
    }
}

/// `YYYYMMDD` `days` days before `day` (proleptic Gregorian, UTC); a date before year 1 is 0,
/// older than every partition (never a wrapped, far-future date that would expire them all).
pub fn yyyymmdd_minus_days(day: u32, days: u32) -> u32 {
    let (y, m, d) = (day / 10_000, day / 100 % 100, day % 100);
    let n = days_from_civil(y as i64, m as i64, d as i64) - days as i64;
    let (y, m, d) = civil_from_days(n);
    if y < 1 {
        return 0;
    }
    u32::try_from(y * 10_000 + m * 100 + d).unwrap_or(u32::MAX)
}

/// Today as `YYYYMMDD`, UTC.
pub fn today_utc() -> u32 {
    let days = marketlane_protocol::now_ns().div_euclid(86_400 * 1_000_000_000);
    let (y, m, d) = civil_from_days(days);
    (y as u32) * 10_000 + (m as u32) * 100 + d as u32
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_rejections_are_told_from_server_trouble() {
        let legacy = "bad response: Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero, e.what() = DB::Exception";
        assert_eq!(super::super::exception_code(legacy), Some(395));
        let modern = "bad response: Code: 469. DB::Exception: Constraint `c` for table t is violated. (VIOLATED_CONSTRAINT)";
        assert_eq!(super::super::exception_code(modern), Some(469));
        assert!(CONTENT_ERROR_CODES.contains(&395) && !CONTENT_ERROR_CODES.contains(&252));
    }

    #[test]
    fn the_row_index_slices_rows() {
        let mut ix = RowIndex::default();
        ix.push(10, 1, 3);
        ix.push(11, 1, 7);
        ix.push(12, 1, 8);
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.bytes(0, 1), 0..3);
        assert_eq!(ix.bytes(1, 3), 3..8);
        assert_eq!(ix.bytes(0, 3), 0..8);
    }

    #[test]
    fn dates_step_back_over_months_and_leap_years() {
        assert_eq!(yyyymmdd_minus_days(20261125, 3), 20261122);
        assert_eq!(yyyymmdd_minus_days(20260302, 3), 20260227);
        assert_eq!(yyyymmdd_minus_days(20240301, 1), 20240229);
        assert_eq!(yyyymmdd_minus_days(20270101, 1), 20261231);
        // Far beyond any accepted retention: before year 1 is 0, never a wrapped future date.
        assert_eq!(yyyymmdd_minus_days(20261204, 999_999), 0);
        assert_eq!(yyyymmdd_minus_days(20261204, u32::MAX), 0);
        assert!(today_utc() > 20250101);
    }
}
