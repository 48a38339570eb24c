//! The quarantine tables (`<category>_unqualified`): rows that failed their schema or that
//! ClickHouse refused, with the reason and the Kafka coordinates.

use std::fmt::Write as _;

use super::*;

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
