//! The gateway websocket as a supervised child.

use futures_util::future::BoxFuture;
use ractor::{ActorCell, ActorProcessingErr};
use serde_json::Value;

use super::{IbWebsocket, WsArgs, WsMsg};
use crate::names;
use crate::supervisor::{Child, ChildKind, ask_state, spawn_linked};

pub struct WebsocketChild(pub WsArgs);

impl Child for WebsocketChild {
    fn name(&self) -> String {
        names::IB_WEBSOCKET.into()
    }

    fn kind(&self) -> ChildKind {
        ChildKind::Websocket
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, IbWebsocket, self.0.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, WsMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &[
            "connected",
            "subscribed",
            "frames",
            "reconnects",
            "not_realtime_symbols",
        ]
    }
}
