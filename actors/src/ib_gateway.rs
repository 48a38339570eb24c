//! The gateway process actor: when `ib.gateway_command` is set, the daemon starts the Client
//! Portal gateway as a child process and restarts it when it exits (back-off 1 s · 2^n ≤ 30 s),
//! when its port refuses connections for `ib.gateway_dead_after`, or when the session's
//! re-authentication ladder is exhausted (ibeam kills the gateway then too). Never for IB's
//! maintenance (500/503): a restart destroys the login.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

#[derive(RactorMessage)]
pub enum GatewayMsg {
    Start,
    /// The child `generation` exited.
    Exited {
        generation: u64,
        status: String,
    },
    /// The session actor found the gateway dead (port refusing) or beyond re-authentication:
    /// kill and start it again.
    Restart {
        reason: String,
    },
    GetState(RpcReplyPort<GatewaySnapshot>),
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewaySnapshot {
    pub running: bool,
    pub pid: Option<u32>,
    pub starts: u64,
    pub last_exit: Option<String>,
    pub seconds_up: Option<f64>,
}

#[derive(Clone)]
pub struct GatewayArgs {
    pub command: Vec<String>,
}

pub struct GatewayState {
    command: Vec<String>,
    generation: u64,
    kill: Option<oneshot::Sender<()>>,
    pid: Option<u32>,
    started_at: Option<Instant>,
    starts: u64,
    failures_in_a_row: u32,
    last_exit: Option<String>,
}

pub struct GatewayProcess;

impl Actor for GatewayProcess {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: GatewayArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(GatewayMsg::Start);
        Ok(GatewayState {
            command: args.command,
            generation: 0,
            kill: None,
            pid: None,
            started_at: None,
            starts: 0,
            failures_in_a_row: 0,
            last_exit: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(kill) = state.kill.take() {
            let _ = kill.send(());
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::Start => {
                if state.kill.is_none() {
                    state.start(&myself);
                }
            }
            GatewayMsg::Exited { generation, status } => {
                if generation != state.generation {
                    return Ok(());
                }
                state.kill = None;
                state.pid = None;
                // A gateway that ran for a while before exiting starts again at once.
                if state
                    .started_at
                    .is_some_and(|t| t.elapsed() > Duration::from_secs(60))
                {
                    state.failures_in_a_row = 0;
                }
                let backoff = Duration::from_secs(1) * 2u32.pow(state.failures_in_a_row.min(5));
                let backoff = backoff.min(Duration::from_secs(30));
                state.failures_in_a_row += 1;
                warn!(status, ?backoff, "gateway exited; restarting");
                state.last_exit = Some(status);
                myself.send_after(backoff, || GatewayMsg::Start);
            }
            GatewayMsg::Restart { reason } => {
                warn!(reason, "restarting the gateway");
                if let Some(kill) = state.kill.take() {
                    let _ = kill.send(());
                } else {
                    state.start(&myself);
                }
            }
            GatewayMsg::GetState(reply) => {
                let _ = reply.send(GatewaySnapshot {
                    running: state.kill.is_some(),
                    pid: state.pid,
                    starts: state.starts,
                    last_exit: state.last_exit.clone(),
                    seconds_up: state.started_at.map(|t| t.elapsed().as_secs_f64()),
                });
            }
        }
        Ok(())
    }
}

impl GatewayState {
    fn start(&mut self, myself: &ActorRef<GatewayMsg>) {
        self.generation += 1;
        let generation = self.generation;
        let spawned = tokio::process::Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                error!(command = %self.command[0], error = %e, "cannot start the gateway");
                let _ = myself.cast(GatewayMsg::Exited {
                    generation,
                    status: format!("cannot start: {e}"),
                });
                return;
            }
        };
        self.pid = child.id();
        self.starts += 1;
        self.started_at = Some(Instant::now());
        info!(pid = ?self.pid, command = %self.command.join(" "), "gateway started");
        let (kill, killed) = oneshot::channel();
        self.kill = Some(kill);
        let me = myself.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s.map_or_else(|e| e.to_string(), |s| s.to_string()),
                _ = killed => {
                    let _ = child.kill().await;
                    "killed by marketlane".to_string()
                }
            };
            let _ = me.cast(GatewayMsg::Exited { generation, status });
        });
    }
}

/// The gateway process as a supervised child.
pub struct GatewayChild(pub GatewayArgs);

impl crate::supervisor::Child for GatewayChild {
    fn name(&self) -> String {
        crate::names::IB_GATEWAY.into()
    }

    fn kind(&self) -> crate::supervisor::ChildKind {
        crate::supervisor::ChildKind::Gateway
    }

    fn spawn(
        &self,
        name: String,
        sup: ractor::ActorCell,
    ) -> futures_util::future::BoxFuture<'_, Result<ractor::ActorCell, ActorProcessingErr>> {
        crate::supervisor::spawn_linked(name, GatewayProcess, self.0.clone(), sup)
    }

    fn snapshot(
        &self,
        cell: ractor::ActorCell,
    ) -> futures_util::future::BoxFuture<'static, Result<serde_json::Value, String>> {
        crate::supervisor::ask_state(cell, GatewayMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &["running", "pid", "starts", "seconds_up", "last_exit"]
    }
}
