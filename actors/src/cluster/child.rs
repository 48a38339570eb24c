//! The cluster member as a supervised child.

use futures_util::future::BoxFuture;
use ractor::{ActorCell, ActorProcessingErr};
use serde_json::Value;

use super::{ClusterArgs, ClusterMember, ClusterMsg};
use crate::names;
use crate::supervisor::{Child, ChildKind, ask_state, spawn_linked};

pub struct ClusterChild(pub ClusterArgs);

impl Child for ClusterChild {
    fn name(&self) -> String {
        names::CLUSTER.into()
    }

    fn kind(&self) -> ChildKind {
        ChildKind::Cluster
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, ClusterMember, self.0.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, ClusterMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &["members", "held", "handing_over", "unassigned", "draining"]
    }
}
