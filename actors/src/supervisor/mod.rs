//! The lane supervisor: owns every actor of a pod, restarts a failed child with back-off, and
//! escalates (fails itself, so the daemon exits and Kubernetes restarts the pod) when a child
//! keeps failing. Children start in the order `lane.rs` gives (the data path backwards, so
//! that each actor finds its next hop); actors find peers by registered name, so a restarted
//! child needs no re-wiring. The supervisor knows its children only through [`Child`]
//! (`supervisor/child.rs`), implemented beside each actor.

mod child;
mod drain;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use ractor_cluster::RactorMessage;
use tokio::time::Instant;
use tracing::{error, info, warn};

pub use child::{Child, ChildKind, ask_state, spawn_linked};
pub use drain::DrainReport;
pub use status::{ChildStatus, LaneStatus, STATUS_DEADLINE, Snapshot, summary};

use crate::metrics::Metrics;
use crate::names::ActorNames;

/// Restarts allowed in [`RESTART_WINDOW`] before the supervisor escalates.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The first restart's back-off; it doubles with each recent restart, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(RactorMessage)]
pub enum SupervisorMsg {
    Restart(String),
    /// Graceful drain: stop intake, let the normalizers empty their mailboxes, flush the
    /// producer, flush and commit the writers; replies what completed within the deadline.
    Drain(Duration, RpcReplyPort<DrainReport>),
    /// Every child's snapshot, asked concurrently; answered within [`STATUS_DEADLINE`] and a
    /// little, whatever the children do.
    Status(RpcReplyPort<LaneStatus>),
    /// Every child by registered name (control socket: reach an actor by name and kind).
    Children(RpcReplyPort<Vec<ChildCell>>),
}

/// One child of the supervisor; `cell` is `None` while it waits to be restarted.
#[derive(Debug, Clone)]
pub struct ChildCell {
    pub actor: String,
    pub kind: ChildKind,
    pub cell: Option<ActorCell>,
    pub restarts: usize,
}

pub struct SupervisorArgs {
    pub names: ActorNames,
    /// In start order.
    pub children: Vec<Box<dyn Child>>,
    pub metrics: Arc<Metrics>,
}

/// A child and its restart record.
struct Supervised {
    child: Arc<dyn Child>,
    cell: Option<ActorCell>,
    /// Restarts within the last [`RESTART_WINDOW`].
    restarts: VecDeque<Instant>,
    total_restarts: usize,
}

pub struct SupervisorState {
    names: ActorNames,
    metrics: Arc<Metrics>,
    children: Vec<Supervised>,
    by_id: HashMap<ActorId, usize>,
    draining: bool,
}

pub struct LaneSupervisor;

impl Actor for LaneSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            names: args.names,
            metrics: args.metrics,
            children: Vec::new(),
            by_id: HashMap::new(),
            draining: false,
        };
        for child in args.children {
            let child: Arc<dyn Child> = Arc::from(child);
            let cell = child
                .spawn(state.names.name(&child.name()), myself.get_cell())
                .await?;
            state.by_id.insert(cell.get_id(), state.children.len());
            state.children.push(Supervised {
                child,
                cell: Some(cell),
                restarts: VecDeque::new(),
                total_restarts: 0,
            });
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart(actor) => {
                if state.draining {
                    return Ok(());
                }
                let Some(i) = state.children.iter().position(|c| c.child.name() == actor) else {
                    return Ok(());
                };
                let child = state.children[i].child.clone();
                match child
                    .spawn(state.names.name(&actor), myself.get_cell())
                    .await
                {
                    Ok(cell) => {
                        info!(actor, "restarted");
                        state.by_id.insert(cell.get_id(), i);
                        state.children[i].cell = Some(cell);
                    }
                    Err(e) => {
                        warn!(actor, error = %e, "restart failed; trying again");
                        state.schedule_restart(&myself, i, &e.to_string())?;
                    }
                }
            }
            SupervisorMsg::Drain(deadline, reply) => {
                let report = state.drain(deadline).await;
                // The caller may have given up waiting; the drain happened all the same.
                let _ = reply.send(report);
            }
            SupervisorMsg::Status(reply) => {
                // Gathered in a task: the supervisor keeps handling failures meanwhile.
                let asked = state
                    .children
                    .iter()
                    .map(|c| status::Asked {
                        child: c.child.clone(),
                        cell: c.cell.clone(),
                        restarts: c.total_restarts,
                    })
                    .collect();
                tokio::spawn(async move {
                    let _ = reply.send(status::gather(asked, STATUS_DEADLINE).await);
                });
            }
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(
                    state
                        .children
                        .iter()
                        .map(|c| ChildCell {
                            actor: c.child.name(),
                            kind: c.child.kind(),
                            cell: c.cell.clone(),
                            restarts: c.total_restarts,
                        })
                        .collect(),
                );
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        let Some(i) = state.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.children[i].cell = None;
        if state.draining {
            return Ok(());
        }
        state.schedule_restart(&myself, i, &why)
    }
}

/// The wait before the next restart of a child that restarted `recent` times within the
/// window: 100 ms · 2^recent, at most 5 s.
pub fn backoff(recent: usize) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(recent.min(16) as u32))
        .min(MAX_BACKOFF)
}

impl SupervisorState {
    /// Restarts child `i` after [`backoff`], or escalates when it failed more than
    /// [`MAX_RESTARTS`] times in [`RESTART_WINDOW`].
    fn schedule_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        i: usize,
        why: &str,
    ) -> Result<(), ActorProcessingErr> {
        let child = &mut self.children[i];
        let actor = child.child.name();
        let now = Instant::now();
        while child
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            child.restarts.pop_front();
        }
        if child.restarts.len() >= MAX_RESTARTS {
            error!(actor, why, "failing repeatedly; escalating");
            return Err(format!(
                "{actor} failed {} times within {:?} (last: {why})",
                child.restarts.len() + 1,
                RESTART_WINDOW
            )
            .into());
        }
        let backoff = backoff(child.restarts.len());
        child.restarts.push_back(now);
        child.total_restarts += 1;
        self.metrics
            .actor_restarts
            .with_label_values(&[actor.as_str()])
            .inc();
        warn!(actor, why, ?backoff, "restarting");
        myself.send_after(backoff, move || SupervisorMsg::Restart(actor));
        Ok(())
    }
}
