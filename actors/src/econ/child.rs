//! The economic release poller as a supervised child.

use futures_util::future::BoxFuture;
use ractor::{ActorCell, ActorProcessingErr};
use serde_json::Value;

use super::{EconArgs, EconMsg, EconPoller};
use crate::names;
use crate::supervisor::{Child, ChildKind, ask_state, spawn_linked};

pub struct EconChild(pub EconArgs);

impl Child for EconChild {
    fn name(&self) -> String {
        names::ECON_POLLER.into()
    }

    fn kind(&self) -> ChildKind {
        ChildKind::Econ
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, EconPoller, self.0.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, EconMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &["polls", "rows", "repeated", "quarantined"]
    }
}
