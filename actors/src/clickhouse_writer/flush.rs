//! The writer's flush: one offsets insert (the `before` ranges of the batches it sends and
//! the `after` ranges of those the previous flushes landed), the partitions' data inserts in
//! parallel, then the metrics and the advisory commit once all landed (see `batch.rs` for
//! why that is exactly-once).

use bytes::Bytes;
use marketlane_protocol::UnqualifiedRecord;
use marketlane_protocol::clickhouse::{dedup_token, encode_unqualified, unqualified_table};
use tokio::time::Instant;
use tracing::warn;

use super::super::batch::{Batch, StateRecord};
use super::super::consumer::{REFETCH_TIMEOUT, fetch_payloads};
use super::super::sink::{ClickHouse, PoisonRow, SinkError};
use super::{Encoded, WriterState};
use crate::config::KafkaConfig;

/// A flush of at most this many rows goes as one insert where the server has no tokens
/// (always one block, far below `max_insert_block_size`, so a refused row means nothing of it
/// landed). A bigger flush (a backlog, a writer falling behind) sends its partitions in
/// parallel: beside that many rows a part's files cost little, and one insert would be parsed
/// by one server thread (side by side under overload, one merged insert at a time starved the
/// writer on a saturated 2-core box).
const MERGED_INSERT_MAX_ROWS: usize = 32_768;

impl WriterState {
    /// A strictly increasing version for the offsets state of this writer.
    fn next_seq(&mut self) -> u64 {
        let now = marketlane_protocol::now_ns().max(0) as u64;
        self.last_seq = now.max(self.last_seq + 1);
        self.last_seq
    }

    /// Inserts the due partition batches: one offsets insert (their `before` ranges and the
    /// previous flushes' `after` ranges), the data of every partition at once (each with its
    /// token), then the advisory Kafka commit. Returns false (keeping every batch) on failure.
    pub(super) async fn flush_due(&mut self) -> bool {
        let ranges = self.batcher.due_ranges();
        if ranges.is_empty() {
            self.batcher.landed();
            self.backoff.reset();
            self.apply_pending_schema();
            return true;
        }
        let started = Instant::now();
        let ch = self.args.clickhouse.clone();
        // Empty on a retry whose ranges are stored already: only the data is sent again.
        let records = self.batcher.state_records();
        if !records.is_empty()
            && let Err(e) = self.write_states(&records).await
        {
            return self.failed(marketlane_protocol::clickhouse::OFFSETS_TABLE, e);
        }
        let mut bodies = Vec::new();
        for &(p, min, max) in &ranges {
            if let Some(b) = self.batcher.batch_mut(p)
                && !b.inserted
            {
                bodies.push((p, dedup_token(&self.topic, p, min, max), b.data.frozen()));
            }
        }
        let rows_landed = match self.insert_merged(&ch, &bodies).await {
            Ok(landed) => landed,
            Err(e) => return self.failed(&self.table.clone(), e),
        };
        let target = Target {
            ch: &ch,
            insert_sql: &self.insert_sql,
            quarantine_sql: &self.quarantine_sql,
            table: &self.table,
            topic: &self.topic,
            category: self.args.kind.category(),
            instance: &self.args.instance,
            kafka: &self.args.kafka,
            group: &self.snapshot.group,
        };
        // The partitions' inserts are in flight together: their ranges and tokens are their
        // own, so their order does not matter; a failed one is retried alone.
        let batcher = &self.batcher;
        let results =
            futures_util::future::join_all(bodies.into_iter().filter_map(|(p, token, body)| {
                let batch = batcher.batch(p)?;
                Some(async move { (p, target.insert(p, batch, &token, body, rows_landed).await) })
            }))
            .await;
        let mut failure = None;
        for (p, result) in results {
            match result {
                Ok(poisoned) => {
                    if let Some(b) = self.batcher.batch_mut(p) {
                        b.inserted = true;
                        b.data.poisoned = poisoned;
                    }
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some((table, error)) = failure {
            return self.failed(&table, error);
        }
        self.landed(started);
        true
    }

    /// Where the server has no deduplication tokens (before 22.2), the rows of every
    /// partition of a small flush (live cadence, [`MERGED_INSERT_MAX_ROWS`]) go in one insert:
    /// one part in the table and one in its snapshot instead of one per partition (on 18.16 a
    /// part is some 45 files, and parts were most of ClickHouse's CPU at the live cadence). Exactly-once is unchanged there: a replayed
    /// range is dropped as a copy by the table's `row_id` alone, whether it went alone or with
    /// others. With tokens each partition keeps its own insert, since a replay must carry the
    /// same token as the first attempt and the partitions replayed after a rebalance need not
    /// be the ones that went together. Returns whether the rows landed; false also when
    /// ClickHouse refused a row (one block: nothing landed), and each partition then goes
    /// alone and bisects to it.
    async fn insert_merged(
        &self,
        ch: &ClickHouse,
        bodies: &[(i32, String, (Bytes, Bytes))],
    ) -> Result<bool, String> {
        let with_rows: Vec<(i32, Bytes)> = bodies
            .iter()
            .filter(|(_, _, (rows, _))| !rows.is_empty())
            .map(|(p, _, (rows, _))| (*p, rows.clone()))
            .collect();
        let row_count: usize = with_rows
            .iter()
            .filter_map(|(p, _)| self.batcher.batch(*p))
            .map(|b| b.data.row_count)
            .sum();
        if ch.has_dedup_tokens() || with_rows.len() < 2 || row_count > MERGED_INSERT_MAX_ROWS {
            return Ok(false);
        }
        let parts = with_rows.into_iter().map(|(_, rows)| rows).collect();
        match ch.insert_parts(&self.insert_sql, parts, None).await {
            Ok(()) => Ok(true),
            Err(SinkError::Rejected { message, .. }) => {
                warn!(topic = %self.topic, reason = %message,
                    "clickhouse refused a row of a merged insert: each partition goes alone");
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// One insert into the offsets table (all rows under one version: one row per partition).
    async fn write_states(&mut self, records: &[StateRecord]) -> Result<(), String> {
        let seq = self.next_seq();
        self.snapshot.offset_inserts += 1;
        self.args
            .clickhouse
            .write_states(&self.topic, records, seq)
            .await
            .map_err(|e| e.to_string())?;
        self.batcher.recorded(records);
        Ok(())
    }

    /// A drain stores the `after` ranges the last flushes left for the next one, so a clean
    /// restart or hand-over replays nothing. Not needed for exactly-once: without it the next
    /// owner sends those ranges once more with their tokens.
    pub(super) async fn record_afters(&mut self) {
        let records = self.batcher.after_records();
        if records.is_empty() {
            return;
        }
        if let Err(e) = self.write_states(&records).await {
            let table = marketlane_protocol::clickhouse::OFFSETS_TABLE;
            self.args
                .metrics
                .clickhouse_insert_errors
                .with_label_values(&[table])
                .inc();
            warn!(topic = %self.topic, error = %e, "cannot record the landed ranges; the next owner sends them once more");
        }
    }

    /// The flushed batches are recorded: metrics, snapshot, advisory commit, and a reloaded
    /// schema takes over.
    fn landed(&mut self, started: Instant) {
        let metrics = &self.args.metrics;
        let table = self.table.as_str();
        metrics
            .clickhouse_insert_duration
            .with_label_values(&[table])
            .observe(started.elapsed().as_secs_f64());
        let now = marketlane_protocol::now_ns();
        let category = self.args.kind.category();
        let hist = metrics
            .event_to_sink_latency
            .with_label_values(&[category, "clickhouse"]);
        let mut commits = Vec::new();
        for (p, batch) in self.batcher.landed() {
            let Batch { max, data, .. } = batch;
            let rows = (data.row_count - data.poisoned) as u64;
            metrics
                .clickhouse_rows_inserted
                .with_label_values(&[table])
                .inc_by(rows);
            if data.poisoned > 0 {
                metrics
                    .rows_quarantined
                    .with_label_values(&[category, "writer", "rejected_by_clickhouse"])
                    .inc_by(data.poisoned as u64);
            }
            for t in &data.event_times {
                hist.observe((now - t).max(0) as f64 / 1e9);
            }
            self.snapshot.rows_inserted += rows;
            self.snapshot.rows_quarantined += (data.quarantine_count + data.poisoned) as u64;
            self.snapshot.batches += 1;
            commits.push((p, max + 1));
        }
        self.snapshot.flushes += 1;
        self.consumer.commit(&commits);
        self.snapshot.last_error = None;
        self.backoff.reset();
        self.apply_pending_schema();
    }
}

/// Where one flush sends its partitions' batches.
#[derive(Clone, Copy)]
struct Target<'a> {
    ch: &'a ClickHouse,
    insert_sql: &'a str,
    quarantine_sql: &'a str,
    table: &'a str,
    topic: &'a str,
    category: &'a str,
    instance: &'a str,
    /// Where a refused row's payload is read back from (the batch does not keep it).
    kafka: &'a KafkaConfig,
    group: &'a str,
}

impl Target<'_> {
    /// Inserts one partition's batch (rows, then quarantine records with the rows ClickHouse
    /// refused on their own); returns how many it refused, or the failing table and error.
    async fn insert(
        self,
        partition: i32,
        batch: &Batch<Encoded>,
        token: &str,
        (rows, quarantine): (Bytes, Bytes),
        rows_landed: bool,
    ) -> Result<usize, (String, String)> {
        let data = &batch.data;
        let mut poison = Vec::new();
        if data.row_count > 0 && !rows_landed {
            poison = self
                .ch
                .insert_bisecting(self.insert_sql, &rows, &data.index, token)
                .await
                .map_err(|e| (self.table.to_string(), e.to_string()))?;
        }
        if data.quarantine_count == 0 && poison.is_empty() {
            return Ok(0);
        }
        // Rows ClickHouse refused go to quarantine with its reason, inside this batch (rare:
        // only then is the quarantine buffer copied and are payloads read back from Kafka).
        let body = if poison.is_empty() {
            quarantine
        } else {
            let offsets: Vec<i64> = poison.iter().map(|r| r.offset).collect();
            let payloads = fetch_payloads(
                self.kafka,
                self.group,
                self.topic,
                partition,
                &offsets,
                REFETCH_TIMEOUT,
            )
            .await;
            let mut buf = quarantine.to_vec();
            let now = marketlane_protocol::now_ns();
            for (row, payload) in poison.iter().zip(payloads) {
                let rec = self.poison_record(partition, row, payload, now);
                encode_unqualified(&rec, row.at, &mut buf);
            }
            Bytes::from(buf)
        };
        self.ch
            .insert(self.quarantine_sql, body, Some(token))
            .await
            .map_err(|e| (unqualified_table(self.category), e.to_string()))?;
        Ok(poison.len())
    }

    /// The quarantine record of a refused row. A payload that could not be read back (retention
    /// deleted it, Kafka did not answer in time) leaves the record's payload empty and says so
    /// in its reason: the row is still quarantined, with its coordinates.
    fn poison_record(
        self,
        partition: i32,
        row: &PoisonRow,
        payload: Option<Vec<u8>>,
        now: i64,
    ) -> UnqualifiedRecord {
        let (payload, reason) = match payload {
            Some(p) => (p, row.reason.clone()),
            None => (Vec::new(), format!("{}; {PAYLOAD_GONE}", row.reason)),
        };
        let mut rec = UnqualifiedRecord::new(
            self.category,
            "rejected_by_clickhouse",
            reason,
            &payload,
            "unknown",
            self.instance,
            now,
        );
        rec.source_topic = Some(self.topic.to_string());
        rec.source_partition = Some(partition);
        rec.source_offset = Some(row.offset);
        rec
    }
}

/// Appended to a refused row's reason when its payload could not be read back from Kafka.
pub(super) const PAYLOAD_GONE: &str =
    "the payload could not be re-read from kafka (deleted by retention or not readable in time)";

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::ClickHouseConfig;

    #[tokio::test]
    async fn a_payload_that_cannot_be_read_back_still_quarantines_its_row() {
        // Nothing listens there: the read-back gives up within its timeout, it does not hang.
        let kafka = KafkaConfig {
            bootstrap_servers: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let started = Instant::now();
        let payloads =
            fetch_payloads(&kafka, "g", "t", 0, &[13, 150], Duration::from_millis(500)).await;
        assert_eq!(payloads, vec![None, None]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        let config = ClickHouseConfig::default();
        let ch = ClickHouse {
            client: clickhouse::Client::default(),
            version: marketlane_protocol::clickhouse::ServerVersion::parse("18.16.1").unwrap(),
            config,
        };
        let target = Target {
            ch: &ch,
            insert_sql: "",
            quarantine_sql: "",
            table: "tick_market_data",
            topic: "p_tick_market_data",
            category: "tick_market_data",
            instance: "test",
            kafka: &kafka,
            group: "g",
        };
        let row = PoisonRow {
            offset: 13,
            at: 1_700_000_000_000_000_000,
            code: 395,
            reason: "Code: 395. throwIf".into(),
        };
        let gone = target.poison_record(4, &row, None, 7);
        assert_eq!(gone.raw, "");
        assert_eq!(gone.reason_code, "rejected_by_clickhouse");
        assert_eq!(gone.reason, format!("Code: 395. throwIf; {PAYLOAD_GONE}"));
        assert_eq!(
            (
                gone.source_topic.as_deref(),
                gone.source_partition,
                gone.source_offset
            ),
            (Some("p_tick_market_data"), Some(4), Some(13))
        );
        // Read back: the record is the one a kept payload made (the server's reason only).
        let read = target.poison_record(4, &row, Some(br#"{"price":13.5}"#.to_vec()), 7);
        assert_eq!(read.raw, r#"{"price":13.5}"#);
        assert_eq!(read.reason, row.reason);
    }
}
