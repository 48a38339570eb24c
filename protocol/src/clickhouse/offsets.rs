//! The writers' exactly-once state: per-partition offset ranges kept in ClickHouse.

use super::*;

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
