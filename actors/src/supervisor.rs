//! The lane supervisor: owns every actor of a pod, restarts a failed child with back-off, and
//! escalates (fails itself, so the daemon exits and Kubernetes restarts the pod) when a child
//! keeps failing. Start order follows the data path backwards (producer, normalizers,
//! websocket, session) so that each actor finds its next hop; actors find peers by registered
//! name, so a restarted child needs no re-wiring.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use ractor_cluster::RactorMessage;
use serde::Serialize;
use tracing::{error, info, warn};

use crate::clickhouse_writer::{ClickHouseWriter, WriterArgs, WriterMsg, WriterSnapshot};
use crate::econ::{EconArgs, EconMsg, EconPoller, EconSnapshot};
use crate::ib_gateway::{GatewayArgs, GatewayMsg, GatewayProcess, GatewaySnapshot};
use crate::ib_session::{IbSession, SessionArgs, SessionMsg, SessionSnapshot};
use crate::ib_websocket::{IbWebsocket, WsArgs, WsMsg, WsSnapshot};
use crate::kafka::{KafkaProducer, ProducerArgs, ProducerMsg, ProducerSnapshot};
use crate::metrics::Metrics;
use crate::names::{self, ActorNames};
use crate::normalizer::{
    IndicatorsNormalizer, L2Normalizer, NormalizerMsg, NormalizerSnapshot, RowEmitter,
    TickNormalizer,
};

/// Restarts allowed in [`RESTART_WINDOW`] before the supervisor escalates.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// How to (re)start one child. Built once at start, so the size of the variants is no concern.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
pub enum ChildSpec {
    Producer(ProducerArgs),
    TickNormalizer(RowEmitter),
    L2Normalizer(RowEmitter),
    IndicatorsNormalizer(RowEmitter),
    Websocket(WsArgs),
    Session(SessionArgs),
    Gateway(GatewayArgs),
    Econ(EconArgs),
    Writer(String, WriterArgs),
    Retention(crate::clickhouse_writer::RetentionArgs),
    CalculatorWorker(crate::calculator::WorkerArgs),
    CalculatorConsumer(String, crate::calculator::ConsumerArgs),
    Cluster(crate::cluster::ClusterArgs),
}

impl ChildSpec {
    /// The registered name, without the lane prefix.
    pub fn actor(&self) -> String {
        match self {
            Self::Producer(_) => names::KAFKA_PRODUCER.into(),
            Self::TickNormalizer(_) => names::TICK_NORMALIZER.into(),
            Self::L2Normalizer(_) => names::L2_NORMALIZER.into(),
            Self::IndicatorsNormalizer(_) => names::INDICATORS_NORMALIZER.into(),
            Self::Websocket(_) => names::IB_WEBSOCKET.into(),
            Self::Session(_) => names::IB_SESSION.into(),
            Self::Gateway(_) => names::IB_GATEWAY.into(),
            Self::Econ(_) => names::ECON_POLLER.into(),
            Self::Writer(name, _) => name.clone(),
            Self::Retention(_) => names::CLICKHOUSE_RETENTION.into(),
            Self::CalculatorWorker(a) => names::calculator_worker(a.index),
            Self::CalculatorConsumer(name, _) => name.clone(),
            Self::Cluster(_) => names::CLUSTER.into(),
        }
    }

    async fn spawn(
        &self,
        names: &ActorNames,
        sup: ActorCell,
    ) -> Result<ActorCell, ActorProcessingErr> {
        let name = Some(names.name(&self.actor()));
        let cell = match self.clone() {
            Self::Producer(a) => Actor::spawn_linked(name, KafkaProducer, a, sup)
                .await?
                .0
                .get_cell(),
            Self::TickNormalizer(a) => Actor::spawn_linked(name, TickNormalizer::new(), a, sup)
                .await?
                .0
                .get_cell(),
            Self::L2Normalizer(a) => Actor::spawn_linked(name, L2Normalizer::new(), a, sup)
                .await?
                .0
                .get_cell(),
            Self::IndicatorsNormalizer(a) => {
                Actor::spawn_linked(name, IndicatorsNormalizer::new(), a, sup)
                    .await?
                    .0
                    .get_cell()
            }
            Self::Websocket(a) => Actor::spawn_linked(name, IbWebsocket, a, sup)
                .await?
                .0
                .get_cell(),
            Self::Econ(a) => Actor::spawn_linked(name, EconPoller, a, sup)
                .await?
                .0
                .get_cell(),
            Self::Gateway(a) => Actor::spawn_linked(name, GatewayProcess, a, sup)
                .await?
                .0
                .get_cell(),
            Self::Session(a) => Actor::spawn_linked(name, IbSession, a, sup)
                .await?
                .0
                .get_cell(),
            Self::Writer(_, a) => Actor::spawn_linked(name, ClickHouseWriter, a, sup)
                .await?
                .0
                .get_cell(),
            Self::Retention(a) => {
                Actor::spawn_linked(name, crate::clickhouse_writer::ClickHouseRetention, a, sup)
                    .await?
                    .0
                    .get_cell()
            }
            Self::CalculatorWorker(a) => {
                Actor::spawn_linked(name, crate::calculator::CalculatorWorker, a, sup)
                    .await?
                    .0
                    .get_cell()
            }
            Self::CalculatorConsumer(_, a) => {
                Actor::spawn_linked(name, crate::calculator::CalculatorConsumer, a, sup)
                    .await?
                    .0
                    .get_cell()
            }
            Self::Cluster(a) => Actor::spawn_linked(name, crate::cluster::ClusterMember, a, sup)
                .await?
                .0
                .get_cell(),
        };
        Ok(cell)
    }
}

#[derive(RactorMessage)]
pub enum SupervisorMsg {
    Restart(String),
    /// Graceful drain: stop intake, let the normalizers empty their mailboxes, flush the
    /// producer, flush and commit the writers; replies what completed within the deadline.
    Drain(Duration, RpcReplyPort<DrainReport>),
    Status(RpcReplyPort<LaneStatus>),
    /// Every child by registered name (control socket: reach an actor by name, tell its kind
    /// with `ActorCell::is_message_type_of`).
    Children(RpcReplyPort<Vec<ChildCell>>),
}

/// One child of the supervisor; `cell` is `None` while it waits to be restarted.
#[derive(Debug, Clone)]
pub struct ChildCell {
    pub actor: String,
    pub cell: Option<ActorCell>,
    pub restarts: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainReport {
    /// Peers streamed this pod's symbols before it stopped its own (true without a cluster).
    pub handed_over: bool,
    pub producer_flushed: bool,
    pub writers_flushed: bool,
    pub seconds: f64,
    /// What the deadline cut short, one entry per step or actor (empty after a full drain):
    /// the daemon then exits non-zero so the restart is not mistaken for a clean one.
    pub left: Vec<String>,
}

impl DrainReport {
    /// Every row the pod had was flushed and committed (a missing hand-over only costs the
    /// interval until a peer subscribes, it loses nothing this pod holds).
    pub fn complete(&self) -> bool {
        self.producer_flushed && self.writers_flushed
    }
}

/// The observable state of the whole tree (control socket `status`, tests).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LaneStatus {
    pub gateway: Option<GatewaySnapshot>,
    pub econ: Option<EconSnapshot>,
    pub session: Option<SessionSnapshot>,
    pub websocket: Option<WsSnapshot>,
    pub normalizers: Vec<NormalizerSnapshot>,
    pub producer: Option<ProducerSnapshot>,
    pub writers: Vec<WriterSnapshot>,
    pub retention: Option<crate::clickhouse_writer::RetentionSnapshot>,
    pub calculator_workers: Vec<crate::calculator::WorkerSnapshot>,
    pub calculator_consumers: Vec<crate::calculator::ConsumerSnapshot>,
    pub cluster: Option<crate::cluster::ClusterSnapshot>,
    pub restarts: HashMap<String, usize>,
}

pub struct SupervisorArgs {
    pub names: ActorNames,
    pub children: Vec<ChildSpec>,
    pub metrics: Arc<Metrics>,
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    restarts: VecDeque<Instant>,
    total_restarts: usize,
}

pub struct SupervisorState {
    names: ActorNames,
    metrics: Arc<Metrics>,
    children: Vec<Child>,
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
        for spec in args.children {
            let cell = spec.spawn(&state.names, myself.get_cell()).await?;
            state.by_id.insert(cell.get_id(), state.children.len());
            state.children.push(Child {
                spec,
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
                let Some(i) = state.children.iter().position(|c| c.spec.actor() == actor) else {
                    return Ok(());
                };
                match state.children[i]
                    .spec
                    .spawn(&state.names, myself.get_cell())
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
                let _ = reply.send(report);
            }
            SupervisorMsg::Status(reply) => {
                let _ = reply.send(state.status().await);
            }
            SupervisorMsg::Children(reply) => {
                let _ = reply.send(
                    state
                        .children
                        .iter()
                        .map(|c| ChildCell {
                            actor: c.spec.actor(),
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

impl SupervisorState {
    /// Restarts child `i` after a back-off that doubles with recent restarts (100 ms … 5 s),
    /// or escalates when it failed more than [`MAX_RESTARTS`] times in [`RESTART_WINDOW`].
    fn schedule_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        i: usize,
        why: &str,
    ) -> Result<(), ActorProcessingErr> {
        let child = &mut self.children[i];
        let actor = child.spec.actor();
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
        let backoff = (Duration::from_millis(100) * 2u32.pow(child.restarts.len() as u32))
            .min(Duration::from_secs(5));
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

    fn cell_of(&self, actor: &str) -> Option<ActorCell> {
        self.children
            .iter()
            .find(|c| c.spec.actor() == actor)
            .and_then(|c| c.cell.clone())
    }

    async fn drain(&mut self, deadline: Duration) -> DrainReport {
        let started = Instant::now();
        self.draining = true;
        info!(?deadline, "draining");
        let left = |s: Instant| deadline.saturating_sub(s.elapsed());
        // 0. Leave the cluster: peers subscribe this pod's symbols while it still streams
        //    them, so a rolling restart loses nothing.
        let mut handed_over = true;
        if let Some(cell) = self.cell_of(names::CLUSTER) {
            let c: ActorRef<crate::cluster::ClusterMsg> = cell.into();
            let wait = left(started).mul_f64(0.5);
            handed_over = matches!(
                ractor::call_t!(
                    c,
                    crate::cluster::ClusterMsg::Leave,
                    wait.as_millis() as u64 + 1_000,
                    wait.as_millis() as u64
                ),
                Ok(true)
            );
        }
        // 1. Stop intake.
        for actor in [names::IB_SESSION, names::IB_WEBSOCKET] {
            if let Some(cell) = self.cell_of(actor) {
                cell.stop(Some("drain".into()));
            }
        }
        let mut unfinished = Vec::new();
        if !handed_over {
            unfinished.push("cluster: peers did not take the symbols over".to_string());
        }
        // 2. A call is answered after every message queued before it: the normalizers have
        //    handed all their rows to the producer once they answer.
        for c in &self.children {
            if let (
                ChildSpec::TickNormalizer(_)
                | ChildSpec::L2Normalizer(_)
                | ChildSpec::IndicatorsNormalizer(_),
                Some(cell),
            ) = (&c.spec, &c.cell)
            {
                let n: ActorRef<NormalizerMsg> = cell.clone().into();
                if ractor::call_t!(n, NormalizerMsg::GetState, left(started).as_millis() as u64)
                    .is_err()
                {
                    unfinished.push(format!("{}: mailbox not emptied", c.spec.actor()));
                }
            }
        }
        // 2b. The calculator workers compute and produce what they hold (and write Redis).
        for c in &self.children {
            if let (ChildSpec::CalculatorWorker(_), Some(cell)) = (&c.spec, &c.cell) {
                let w: ActorRef<crate::calculator::WorkerMsg> = cell.clone().into();
                let _ = ractor::call_t!(
                    w,
                    crate::calculator::WorkerMsg::Barrier,
                    left(started).as_millis() as u64
                );
            }
        }
        // 3. Flush the producer.
        let mut producer_flushed = true;
        if let Some(cell) = self.cell_of(names::KAFKA_PRODUCER) {
            let p: ActorRef<ProducerMsg> = cell.into();
            let wait = left(started);
            producer_flushed = matches!(
                ractor::call_t!(p, ProducerMsg::Flush, wait.as_millis() as u64 + 500, wait),
                Ok(true)
            );
            if !producer_flushed {
                let in_flight = ractor::call_t!(p, ProducerMsg::GetState, 1_000)
                    .map(|s| s.in_flight_frames.to_string())
                    .unwrap_or_else(|_| "unknown".into());
                unfinished.push(format!(
                    "{}: not flushed, frames not acknowledged by Kafka: {in_flight}",
                    names::KAFKA_PRODUCER
                ));
            }
        }
        // 4. Flush and commit the writers.
        let mut writers_flushed = true;
        for c in &self.children {
            if let (ChildSpec::Writer(..), Some(cell)) = (&c.spec, &c.cell) {
                let w: ActorRef<WriterMsg> = cell.clone().into();
                let _ = w.cast(WriterMsg::Pause);
                let ok = ractor::call_t!(w, WriterMsg::Drain, left(started).as_millis() as u64);
                if !matches!(ok, Ok(true)) {
                    writers_flushed = false;
                    unfinished.push(format!(
                        "{}: batches not inserted and committed",
                        c.spec.actor()
                    ));
                }
            }
        }
        DrainReport {
            handed_over,
            producer_flushed,
            writers_flushed,
            seconds: started.elapsed().as_secs_f64(),
            left: unfinished,
        }
    }

    async fn status(&self) -> LaneStatus {
        const T: u64 = 2_000;
        let mut st = LaneStatus::default();
        for c in &self.children {
            st.restarts.insert(c.spec.actor(), c.total_restarts);
            let Some(cell) = c.cell.clone() else {
                continue;
            };
            match &c.spec {
                ChildSpec::Econ(_) => {
                    let r: ActorRef<EconMsg> = cell.into();
                    st.econ = ractor::call_t!(r, EconMsg::GetState, T).ok();
                }
                ChildSpec::Gateway(_) => {
                    let r: ActorRef<GatewayMsg> = cell.into();
                    st.gateway = ractor::call_t!(r, GatewayMsg::GetState, T).ok();
                }
                ChildSpec::Session(_) => {
                    let r: ActorRef<SessionMsg> = cell.into();
                    st.session = ractor::call_t!(r, SessionMsg::GetState, T).ok();
                }
                ChildSpec::Websocket(_) => {
                    let r: ActorRef<WsMsg> = cell.into();
                    st.websocket = ractor::call_t!(r, WsMsg::GetState, T).ok();
                }
                ChildSpec::TickNormalizer(_)
                | ChildSpec::L2Normalizer(_)
                | ChildSpec::IndicatorsNormalizer(_) => {
                    let r: ActorRef<NormalizerMsg> = cell.into();
                    st.normalizers
                        .extend(ractor::call_t!(r, NormalizerMsg::GetState, T).ok());
                }
                ChildSpec::Producer(_) => {
                    let r: ActorRef<ProducerMsg> = cell.into();
                    st.producer = ractor::call_t!(r, ProducerMsg::GetState, T).ok();
                }
                ChildSpec::Writer(..) => {
                    let r: ActorRef<WriterMsg> = cell.into();
                    st.writers
                        .extend(ractor::call_t!(r, WriterMsg::GetState, T).ok());
                }
                ChildSpec::Retention(_) => {
                    let r: ActorRef<crate::clickhouse_writer::RetentionMsg> = cell.into();
                    st.retention =
                        ractor::call_t!(r, crate::clickhouse_writer::RetentionMsg::GetState, T)
                            .ok();
                }
                ChildSpec::CalculatorWorker(_) => {
                    let r: ActorRef<crate::calculator::WorkerMsg> = cell.into();
                    st.calculator_workers
                        .extend(ractor::call_t!(r, crate::calculator::WorkerMsg::GetState, T).ok());
                }
                ChildSpec::CalculatorConsumer(..) => {
                    let r: ActorRef<crate::calculator::ConsumerMsg> = cell.into();
                    st.calculator_consumers.extend(
                        ractor::call_t!(r, crate::calculator::ConsumerMsg::GetState, T).ok(),
                    );
                }
                ChildSpec::Cluster(_) => {
                    let r: ActorRef<crate::cluster::ClusterMsg> = cell.into();
                    st.cluster = ractor::call_t!(r, crate::cluster::ClusterMsg::GetState, T).ok();
                }
            }
        }
        st
    }
}
