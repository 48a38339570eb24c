//! The release-feed poller: every `poll_interval` it reads the feed, turns each field of each
//! release into a `numeric_economic_data` row, and hands new rows to the producer. A feed
//! repeats its recent releases, so rows are deduplicated on publisher + release + field +
//! release time: in memory (the last [`SEEN_CAPACITY`] ids), filled at start from the row ids
//! ClickHouse already holds, so a restarted poller does not emit the feed's recent releases
//! again. A release re-emitted anyway (ClickHouse unreachable at start, or rows still on their
//! way through Kafka) has the same row id and release time, hence the same event-day
//! partition, and collapses there. A field that cannot be read is quarantined; the others
//! still flow.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use marketlane_protocol::category::NUMERIC_ECONOMIC;
use marketlane_protocol::{RowMap, row_id};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::EconConfig;
use crate::backpressure::Inflight;
use crate::normalizer::{Emitted, RowEmitter};

/// Row ids remembered to skip releases the feed repeats.
pub const SEEN_CAPACITY: usize = 100_000;

#[derive(RactorMessage)]
pub enum EconMsg {
    Poll,
    GetState(RpcReplyPort<EconSnapshot>),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EconSnapshot {
    pub url: String,
    pub polls: u64,
    pub rows: u64,
    pub repeated: u64,
    pub quarantined: u64,
    pub last_error: Option<String>,
    /// Row ids recovered from ClickHouse at start (None: not recovered, see the log).
    pub recovered: Option<u64>,
}

#[derive(Clone)]
pub struct EconArgs {
    pub config: EconConfig,
    pub emitter: RowEmitter,
    /// Where the rows land: the seen-set is recovered from there at start.
    pub clickhouse: Option<crate::config::ClickHouseConfig>,
}

pub struct EconState {
    url: String,
    interval: Duration,
    http: reqwest::Client,
    emitter: RowEmitter,
    seen: HashSet<String>,
    order: VecDeque<String>,
    snapshot: EconSnapshot,
}

pub struct EconPoller;

impl Actor for EconPoller {
    type Msg = EconMsg;
    type State = EconState;
    type Arguments = EconArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: EconArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let url = args.config.url.clone().unwrap_or_default();
        let http = reqwest::Client::builder()
            .timeout(args.config.request_timeout)
            .user_agent("marketlane")
            .build()?;
        let mut state = EconState {
            snapshot: EconSnapshot {
                url: url.clone(),
                ..Default::default()
            },
            url,
            interval: args.config.poll_interval,
            http,
            emitter: args.emitter,
            seen: HashSet::new(),
            order: VecDeque::new(),
        };
        if let Some(ch) = &args.clickhouse {
            match recover_seen(ch, &state.emitter.source_system).await {
                Ok(ids) => {
                    state.snapshot.recovered = Some(ids.len() as u64);
                    // Oldest first, so the newest stay when the capacity evicts.
                    for id in ids.into_iter().rev() {
                        state.remember(id);
                    }
                }
                Err(e) => warn!(
                    error = %e,
                    "cannot recover the releases already stored; repeats collapse in ClickHouse"
                ),
            }
        }
        let _ = myself.cast(EconMsg::Poll);
        info!(url = %state.url, recovered = ?state.snapshot.recovered, "economic release poller started");
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EconMsg::Poll => {
                state.snapshot.polls += 1;
                match state.fetch().await {
                    Ok(feed) => {
                        state.snapshot.last_error = None;
                        state.on_feed(&feed).await;
                    }
                    Err(e) => {
                        warn!(url = %state.url, error = %e, "release feed unavailable; polling again");
                        state.snapshot.last_error = Some(e);
                    }
                }
                myself.send_after(state.interval, || EconMsg::Poll);
            }
            EconMsg::GetState(reply) => {
                let _ = reply.send(state.snapshot.clone());
            }
        }
        Ok(())
    }
}

/// The newest [`SEEN_CAPACITY`] row ids of this source in ClickHouse, newest first.
async fn recover_seen(
    config: &crate::config::ClickHouseConfig,
    source: &str,
) -> Result<Vec<String>, crate::clickhouse_writer::SinkError> {
    let ch = crate::clickhouse_writer::ClickHouse::connect(config).await?;
    let source = source.replace('\\', "\\\\").replace('\'', "\\'");
    let sql = format!(
        "SELECT row_id FROM `{}`.`{NUMERIC_ECONOMIC}` WHERE source_system_name = '{source}' \
         ORDER BY release_time DESC LIMIT {SEEN_CAPACITY}",
        ch.config.database
    );
    // A first start has no table yet: nothing to recover.
    match ch.query_tsv(&sql).await {
        Ok(rows) => Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect()),
        Err(e) if e.to_string().contains("Code: 60") || e.to_string().contains("Code: 81") => {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// One field of one release, read from the feed.
#[derive(Debug, PartialEq)]
pub(crate) struct FieldValue<'a> {
    publisher: &'a str,
    release: &'a str,
    release_time_ms: i64,
    field: &'a str,
    value: f64,
    unit: &'a str,
}

/// Reads one field entry of a release; the error says what is wrong with it.
pub(crate) fn read_field<'a>(
    release: &'a Value,
    field: &'a Value,
) -> Result<FieldValue<'a>, String> {
    let text = |v: &'a Value, key: &str| -> Result<&'a str, String> {
        v.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| format!("missing {key}"))
    };
    let release_time_ms = release
        .get("release_time_ms")
        .and_then(Value::as_i64)
        .filter(|t| *t >= 0)
        .ok_or("missing or negative release_time_ms")?;
    let raw = field.get("value").ok_or("missing value")?;
    let value = marketlane_protocol::ib::parse_number("value", raw).map_err(|e| e.to_string())?;
    Ok(FieldValue {
        publisher: text(release, "publisher")?,
        release: text(release, "release")?,
        release_time_ms,
        field: text(field, "field")?,
        value,
        unit: text(field, "unit")?,
    })
}

impl EconState {
    async fn fetch(&self) -> Result<Value, String> {
        let resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{} from {}", resp.status(), self.url));
        }
        resp.json::<Value>()
            .await
            .map_err(|e| format!("not JSON: {e}"))
    }

    fn remember(&mut self, id: String) {
        if self.order.len() >= SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.clone());
        self.order.push_back(id);
    }

    async fn on_feed(&mut self, feed: &Value) {
        let none = Inflight::none();
        let Some(releases) = feed.get("releases").and_then(Value::as_array) else {
            self.snapshot.quarantined += 1;
            let raw = serde_json::to_vec(feed).unwrap_or_default();
            self.emitter
                .quarantine(
                    NUMERIC_ECONOMIC,
                    "malformed_feed",
                    "no releases array".into(),
                    &raw,
                    &none,
                )
                .await;
            return;
        };
        for release in releases {
            let fields = release
                .get("fields")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for field in &fields {
                let f = match read_field(release, field) {
                    Ok(f) => f,
                    Err(reason) => {
                        let raw = serde_json::to_vec(&json!({"release": release.get("release"), "release_time_ms": release.get("release_time_ms"), "publisher": release.get("publisher"), "field": field})).unwrap_or_default();
                        let key = format!("{raw:?}");
                        if self.seen.contains(&key) {
                            continue;
                        }
                        self.remember(key);
                        self.snapshot.quarantined += 1;
                        self.emitter
                            .quarantine(NUMERIC_ECONOMIC, "bad_value", reason, &raw, &none)
                            .await;
                        continue;
                    }
                };
                let id = row_id(
                    NUMERIC_ECONOMIC,
                    &[
                        f.publisher,
                        f.release,
                        f.field,
                        &f.release_time_ms.to_string(),
                    ],
                );
                if self.seen.contains(&id) {
                    self.snapshot.repeated += 1;
                    continue;
                }
                let release_time = f.release_time_ms.saturating_mul(1_000_000);
                let mut row = RowMap::new();
                row.insert("row_id".into(), json!(id));
                row.insert(
                    "source_system_name".into(),
                    json!(self.emitter.source_system),
                );
                row.insert(
                    "component_instance_name".into(),
                    json!(self.emitter.instance),
                );
                row.insert(
                    "ingestion_time".into(),
                    json!(marketlane_protocol::now_ns()),
                );
                row.insert("publisher_identifier".into(), json!(f.publisher));
                row.insert("release_identifier".into(), json!(f.release));
                row.insert("release_time".into(), json!(release_time));
                row.insert("release_field".into(), json!(f.field));
                row.insert("release_field_value".into(), json!(f.value));
                row.insert("release_field_value_unit".into(), json!(f.unit));
                match self
                    .emitter
                    .emit(NUMERIC_ECONOMIC, row, release_time, &none)
                    .await
                {
                    Emitted::Row => self.snapshot.rows += 1,
                    Emitted::Quarantined => self.snapshot.quarantined += 1,
                }
                self.remember(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_with_their_quirks_or_refused_with_a_reason() {
        let release = json!({"publisher": "EIA", "release": "weekly", "release_time_ms": 5});
        let stocks =
            json!({"field": "Crude-Oil Stocks", "value": "430,112", "unit": "1000_barrels"});
        let ok = read_field(&release, &stocks).unwrap();
        assert_eq!(
            (ok.value, ok.release_time_ms, ok.field),
            (430_112.0, 5, "Crude-Oil Stocks")
        );
        let utilization = json!({"field": "U", "value": 90.5, "unit": "1_percent"});
        assert_eq!(read_field(&release, &utilization).unwrap().value, 90.5);
        for (field, why) in [
            (json!({"field": "x", "value": "n/a", "unit": "u"}), "value"),
            (json!({"field": "x", "unit": "u"}), "missing value"),
            (json!({"value": "1", "unit": "u"}), "missing field"),
            (json!({"field": "x", "value": "1"}), "missing unit"),
        ] {
            let err = read_field(&release, &field).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let undated = json!({"publisher": "EIA", "release": "weekly"});
        assert!(read_field(&undated, &json!({"field": "x", "value": "1", "unit": "u"})).is_err());
    }
}
