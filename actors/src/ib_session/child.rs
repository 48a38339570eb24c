//! The IB session keepalive as a supervised child.

use futures_util::future::BoxFuture;
use ractor::{ActorCell, ActorProcessingErr};
use serde_json::Value;

use super::{IbSession, SessionArgs, SessionMsg};
use crate::names;
use crate::supervisor::{Child, ChildKind, ask_state, spawn_linked};

pub struct SessionChild(pub SessionArgs);

impl Child for SessionChild {
    fn name(&self) -> String {
        names::IB_SESSION.into()
    }

    fn kind(&self) -> ChildKind {
        ChildKind::Session
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, IbSession, self.0.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, SessionMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &[
            "state",
            "instruments",
            "seconds_since_last_good_tickle",
            "waiting_for_brokerage_secs",
            "reauth_attempts",
        ]
    }
}
