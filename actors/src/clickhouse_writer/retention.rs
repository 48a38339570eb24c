//! Retention on servers without TTL (18.16 here): drops the daily partitions of the ingestion
//! and quarantine tables older than `clickhouse.retention_days`, at start and then every
//! `RETENTION_INTERVAL`. On servers with TTL the tables expire rows themselves and this actor
//! only reports that.

use std::sync::Arc;
use std::time::Duration;

use marketlane_protocol::SchemaSet;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;
use tracing::{info, warn};

use super::sink::{ClickHouse, today_utc};

/// How often old partitions are looked for; partitions are daily, so hourly is plenty.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(RactorMessage)]
pub enum RetentionMsg {
    Sweep,
    GetState(RpcReplyPort<RetentionSnapshot>),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionSnapshot {
    /// True when the server expires rows by TTL and this actor does nothing.
    pub ttl: bool,
    pub sweeps: u64,
    pub partitions_dropped: u64,
    pub last_error: Option<String>,
}

#[derive(Clone)]
pub struct RetentionArgs {
    pub clickhouse: ClickHouse,
    pub schemas: Arc<SchemaSet>,
}

pub struct RetentionState {
    args: RetentionArgs,
    snapshot: RetentionSnapshot,
}

pub struct ClickHouseRetention;

impl Actor for ClickHouseRetention {
    type Msg = RetentionMsg;
    type State = RetentionState;
    type Arguments = RetentionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RetentionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ttl = args.clickhouse.version.capabilities().ttl;
        if !ttl {
            let _ = myself.cast(RetentionMsg::Sweep);
        }
        Ok(RetentionState {
            args,
            snapshot: RetentionSnapshot {
                ttl,
                ..Default::default()
            },
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RetentionMsg::Sweep => {
                let ch = &state.args.clickhouse;
                match ch
                    .drop_expired_partitions(&state.args.schemas, today_utc())
                    .await
                {
                    Ok(dropped) => {
                        state.snapshot.partitions_dropped += dropped.len() as u64;
                        state.snapshot.last_error = None;
                        info!(
                            dropped = dropped.len(),
                            days = ch.config.retention_days,
                            "retention sweep"
                        );
                    }
                    // A failed sweep only delays retention: try again at the next interval.
                    Err(e) => {
                        warn!(error = %e, "retention sweep failed");
                        state.snapshot.last_error = Some(e.to_string());
                    }
                }
                state.snapshot.sweeps += 1;
                myself.send_after(RETENTION_INTERVAL, || RetentionMsg::Sweep);
            }
            RetentionMsg::GetState(reply) => {
                let _ = reply.send(state.snapshot.clone());
            }
        }
        Ok(())
    }
}
