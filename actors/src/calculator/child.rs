//! The calculator workers and consumers as supervised children.

use futures_util::future::BoxFuture;
use ractor::{ActorCell, ActorProcessingErr};
use serde_json::Value;

use super::{
    CalculatorConsumer, CalculatorWorker, ConsumerArgs, ConsumerMsg, WorkerArgs, WorkerMsg,
};
use crate::names;
use crate::supervisor::{Child, ChildKind, ask_state, spawn_linked};

/// Worker `index`, registered as `calculator_worker_<index>`.
pub struct WorkerChild(pub WorkerArgs);

impl Child for WorkerChild {
    fn name(&self) -> String {
        names::calculator_worker(self.0.index)
    }

    fn kind(&self) -> ChildKind {
        ChildKind::CalculatorWorker
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, CalculatorWorker, self.0.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, WorkerMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &["symbols", "values_computed", "keys_written", "pending_keys"]
    }
}

/// The consumer of one source category, registered as `calculator_consumer_<category>`.
pub struct ConsumerChild(pub ConsumerArgs);

impl Child for ConsumerChild {
    fn name(&self) -> String {
        names::calculator_consumer(&self.0.schema.category)
    }

    fn kind(&self) -> ChildKind {
        ChildKind::CalculatorConsumer
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, CalculatorConsumer, self.0.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, ConsumerMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &["positions", "rows", "refill_rows", "last_checkpoint_ok"]
    }
}
