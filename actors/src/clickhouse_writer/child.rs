//! The writers and the retention actor as supervised children.

use futures_util::future::BoxFuture;
use ractor::{ActorCell, ActorProcessingErr};
use serde_json::Value;

use super::{
    ClickHouseRetention, ClickHouseWriter, RetentionArgs, RetentionMsg, WriterArgs, WriterMsg,
};
use crate::names;
use crate::supervisor::{Child, ChildKind, ask_state, spawn_linked};

/// The writer of one topic, registered as `clickhouse_writer_<topic>`.
pub struct WriterChild(pub WriterArgs);

impl Child for WriterChild {
    fn name(&self) -> String {
        names::writer(&self.0.kind.topic())
    }

    fn kind(&self) -> ChildKind {
        ChildKind::Writer
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, ClickHouseWriter, self.0.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, WriterMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &[
            "paused",
            "rows_inserted",
            "batches",
            "failed_inserts",
            "retrying",
        ]
    }
}

pub struct RetentionChild(pub RetentionArgs);

impl Child for RetentionChild {
    fn name(&self) -> String {
        names::CLICKHOUSE_RETENTION.into()
    }

    fn kind(&self) -> ChildKind {
        ChildKind::Retention
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, ClickHouseRetention, self.0.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, RetentionMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &["ttl", "sweeps", "partitions_dropped"]
    }
}
