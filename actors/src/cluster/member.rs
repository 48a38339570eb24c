//! The cluster member: this pod's node in the `ractor_cluster` mesh of connector pods.
//!
//! It runs the node server (cookie challenge/response, TLS when configured), dials the
//! configured peers and dials again whenever a link is gone (ractor_cluster never reconnects by
//! itself), joins the connector process group, and sends a heartbeat to every remote member
//! of the group each `heartbeat_interval`. A peer unheard for `heartbeat_timeout` is gone even
//! if its TCP link still looks open (ractor_cluster has no pong timeout, so a half-open link
//! would otherwise go unnoticed until a TCP write times out). A closed session removes the peer
//! at once, which is what makes a killed pod's symbols move within a second.
//!
//! Trust: peers cannot message this actor. It is not in the advertised process group; its
//! [`ClusterBeacon`] is, and answers only "what is your heartbeat". Each tick this pod asks every
//! remote beacon over that peer's authenticated session, so a heartbeat arrives tied to the
//! node that sent it, and is refused (and counted) when it names another instance than that
//! node, an address outside `peers`, or an instance another live node already speaks for.
//! What it claims is bounded: its line budget to `max_peer_line_budget`, its streaming list
//! to the configured symbols.
//!
//! From the live members every pod computes the same split of the configured symbols
//! ([`assign`]) and tells its IB session its share. A symbol that moves away is released only
//! once its new owner's heartbeat lists it as streaming, or after `handover_timeout`: make
//! before break, so a handover loses nothing and doubles a subscription only for its duration.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketlane_protocol::cluster::{CLUSTER_PROTOCOL_VERSION, CONNECTOR_GROUP, Heartbeat};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeId, NodeServer, NodeServerMessage,
    RactorMessage,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::assignment::{Assignment, Member, assign};
use super::beacon::{BeaconArgs, BeaconMsg, ClusterBeacon, CurrentHeartbeat};
use super::config::ClusterConfig;
use super::tls::ClusterTls;
use crate::ib_session::SessionMsg;
use crate::ib_websocket::WsMsg;
use crate::metrics::Metrics;
use crate::names::{self, ActorNames};
use admission::instance_of;

#[derive(Clone)]
pub struct ClusterArgs {
    pub config: ClusterConfig,
    /// This pod's instance name: its identity in the assignment and its node name.
    pub instance: String,
    /// The configured symbols, in configuration order.
    pub symbols: Vec<String>,
    pub names: ActorNames,
    pub metrics: Arc<Metrics>,
}

/// A heartbeat larger than this is refused unread (a real one lists at most the configured
/// symbols).
const MAX_HEARTBEAT_BYTES: usize = 256 * 1024;

/// Messages of the cluster member, all local (timers, node-server events, the drain, the
/// control socket, the answers to this pod's heartbeat requests): a local message type, so
/// none of them can arrive from the network.
#[derive(RactorMessage)]
pub enum ClusterMsg {
    /// The reply of the beacon of node `node` to this pod's request: its postcard-encoded
    /// [`Heartbeat`].
    Pulled {
        node: NodeId,
        bytes: Vec<u8>,
    },
    /// The heartbeat timer (one chain per actor: never cast it from outside).
    Tick,
    /// Recompute the split now (control socket `rebalance`).
    Reassign,
    /// A node session to the named peer (`name@host`) finished its handshake.
    SessionReady(String),
    /// A node session to the named peer closed.
    SessionClosed(String),
    /// Drain: announce that this pod leaves, and answer once peers stream its symbols (true)
    /// or after the deadline in ms (false).
    Leave(u64, RpcReplyPort<bool>),
    GetState(RpcReplyPort<ClusterSnapshot>),
}

/// One member as this pod sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberLine {
    pub instance: String,
    pub address: String,
    pub line_budget: u32,
    pub draining: bool,
    pub streaming: usize,
    /// Seconds since its last heartbeat (0 for this pod).
    pub heartbeat_age_secs: f64,
    /// This pod.
    pub local: bool,
}

/// The cluster as this pod sees it (control socket `status`, `subscriptions`, tests).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    pub instance: String,
    pub address: String,
    pub members: Vec<MemberLine>,
    /// Symbol → owning instance: the whole assignment.
    pub owner: BTreeMap<String, String>,
    /// Symbols this pod streams (its share plus those still handed over).
    pub held: Vec<String>,
    /// Symbols this pod holds only until their new owner streams them.
    pub handing_over: Vec<String>,
    pub unassigned: Vec<String>,
    /// Symbols with data on this pod's websocket.
    pub streaming: Vec<String>,
    pub draining: bool,
    /// Membership changes this pod has seen (joins, leaves, timeouts).
    pub membership_changes: u64,
    /// Peer heartbeats refused (or claims cut down), by reason.
    pub refused: BTreeMap<String, u64>,
}

struct Peer {
    hb: Heartbeat,
    heard: Instant,
    /// The node (session) it speaks through.
    node: NodeId,
}

pub struct ClusterState {
    args: ClusterArgs,
    server: ActorRef<NodeServerMessage>,
    beacon: ActorRef<BeaconMsg>,
    /// What the beacon answers peers with.
    current: CurrentHeartbeat,
    refused: BTreeMap<String, u64>,
    /// (node, reason) pairs already logged at warn level: a forging peer asks every tick.
    refusals_logged: BTreeSet<(NodeId, &'static str)>,
    myself: ActorRef<ClusterMsg>,
    tls: Option<ClusterTls>,
    group: String,
    incarnation: u64,
    seq: u64,
    started: Instant,
    peers: BTreeMap<String, Peer>,
    /// What this pod last told its session to stream.
    held: BTreeSet<String>,
    /// Symbols moving away, since when.
    releasing: HashMap<String, Instant>,
    assignment: Assignment,
    assigned_once: bool,
    /// Symbols with data on this pod's websocket, seconds since their last frame.
    streaming: Vec<(String, f64)>,
    draining: bool,
    leave: Option<(RpcReplyPort<bool>, Instant)>,
    /// Peer address → when it was last dialled.
    dialled: HashMap<String, Instant>,
    membership_changes: u64,
}

pub struct ClusterMember;

/// Forwards node-server session events to the member.
struct SessionEvents(ActorRef<ClusterMsg>);

fn peer_name(ses: &NodeServerSessionInformation) -> String {
    ses.peer_name
        .as_ref()
        .map(|n| n.name.clone())
        .unwrap_or_default()
}

impl NodeEventSubscription for SessionEvents {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(ClusterMsg::SessionClosed(peer_name(&ses)));
    }
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(ClusterMsg::SessionReady(peer_name(&ses)));
    }
}

impl Actor for ClusterMember {
    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = ClusterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ClusterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cookie = args.config.load_cookie()?;
        let tls = args.config.tls.as_ref().map(ClusterTls::load).transpose()?;
        let encryption = tls
            .as_ref()
            .map(|t| IncomingEncryptionMode::Tls(t.acceptor.clone()));
        let mut server = NodeServer::new(
            args.config.port,
            cookie,
            args.instance.clone(),
            args.config.advertise_host.clone(),
            encryption,
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        );
        if let Some(ip) = args.config.bind {
            server = server.with_listen_addr(ip);
        }
        let (server, _) = Actor::spawn_linked(None, server, (), myself.get_cell()).await?;
        server.cast(NodeServerMessage::SubscribeToEvents {
            id: "marketlane-cluster".into(),
            subscription: Box::new(SessionEvents(myself.clone())),
        })?;
        let group = args.names.name(CONNECTOR_GROUP);
        let current = CurrentHeartbeat::default();
        let (beacon, _) = Actor::spawn_linked(
            None,
            ClusterBeacon,
            BeaconArgs {
                group: group.clone(),
                current: current.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        info!(
            instance = %args.instance,
            address = %args.config.address(),
            peers = ?args.config.peers,
            tls = tls.is_some(),
            "cluster node started"
        );
        args.metrics.cluster_members.set(1);
        let _ = myself.cast(ClusterMsg::Tick);
        Ok(ClusterState {
            server,
            beacon,
            current,
            refused: BTreeMap::new(),
            refusals_logged: BTreeSet::new(),
            myself: myself.clone(),
            tls,
            group,
            incarnation: rand::random(),
            seq: 0,
            started: Instant::now(),
            peers: BTreeMap::new(),
            held: BTreeSet::new(),
            releasing: HashMap::new(),
            assignment: Assignment::default(),
            assigned_once: false,
            streaming: Vec::new(),
            draining: false,
            leave: None,
            dialled: HashMap::new(),
            membership_changes: 0,
            args,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.beacon.stop(Some("cluster member stopped".into()));
        // The next incarnation binds the same port.
        let _ = state
            .server
            .stop_and_wait(Some("cluster member stopped".into()), None)
            .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, e) if cell.get_id() == state.server.get_id() => {
                Err(format!("cluster node server failed: {e}").into())
            }
            SupervisionEvent::ActorTerminated(cell, _, reason)
                if cell.get_id() == state.server.get_id() =>
            {
                Err(format!("cluster node server stopped: {reason:?}").into())
            }
            SupervisionEvent::ActorFailed(cell, e) if cell.get_id() == state.beacon.get_id() => {
                Err(format!("cluster beacon failed: {e}").into())
            }
            _ => Ok(()),
        }
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClusterMsg::Tick => {
                state.tick().await;
                myself.send_after(state.args.config.heartbeat_interval, || ClusterMsg::Tick);
            }
            ClusterMsg::Pulled { node, bytes } => state.on_heartbeat(node, &bytes).await,
            ClusterMsg::Reassign => state.reassign().await,
            ClusterMsg::SessionReady(name) => {
                info!(peer = %name, "cluster link ready");
                // Hear from the new peer without waiting for the next tick.
                state.pull_heartbeats();
            }
            ClusterMsg::SessionClosed(name) => state.on_session_closed(&name).await,
            ClusterMsg::Leave(deadline_ms, reply) => {
                info!(
                    held = state.held.len(),
                    "leaving the cluster: peers take the symbols over"
                );
                state.draining = true;
                state.publish_heartbeat();
                state.reassign().await;
                let deadline = Instant::now() + Duration::from_millis(deadline_ms);
                if state.held.is_empty() {
                    let _ = reply.send(true);
                } else {
                    state.leave = Some((reply, deadline));
                }
            }
            ClusterMsg::GetState(reply) => {
                let _ = reply.send(state.snapshot());
            }
        }
        Ok(())
    }
}

impl ClusterState {
    fn config(&self) -> &ClusterConfig {
        &self.args.config
    }

    async fn tick(&mut self) {
        self.streaming = match self.args.names.lookup::<WsMsg>(names::IB_WEBSOCKET) {
            Some(ws) => ractor::call_t!(ws, WsMsg::Streaming, 500).unwrap_or_default(),
            None => Vec::new(),
        };
        self.expire_silent_peers().await;
        self.publish_heartbeat();
        self.pull_heartbeats();
        self.redial();
        self.reassign().await;
        let leave_due = self
            .leave
            .as_ref()
            .is_some_and(|(_, deadline)| self.held.is_empty() || Instant::now() >= *deadline);
        if leave_due && let Some((reply, _)) = self.leave.take() {
            let done = self.held.is_empty();
            if !done {
                warn!(
                    held = ?self.held,
                    "drain deadline: leaving before peers took every symbol over"
                );
            }
            let _ = reply.send(done);
        }
    }

    fn heartbeat(&mut self) -> Heartbeat {
        self.seq += 1;
        Heartbeat {
            version: CLUSTER_PROTOCOL_VERSION,
            instance: self.args.instance.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
            address: self.config().address(),
            line_budget: self.config().line_budget,
            draining: self.draining,
            streaming: self.fresh(),
        }
    }

    /// Symbols with a frame within `heartbeat_timeout`: what peers may count as taken over
    /// (an old frame of a link that died since proves nothing).
    fn fresh(&self) -> Vec<String> {
        let limit = self.config().heartbeat_timeout.as_secs_f64();
        self.streaming
            .iter()
            .filter(|(_, age)| *age <= limit)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// What the beacon answers from now on.
    fn publish_heartbeat(&mut self) {
        let bytes = self.heartbeat().encode();
        if let Ok(mut current) = self.current.lock() {
            *current = bytes;
        }
    }

    /// Asks every remote beacon for its heartbeat; each answer comes back as `Pulled` with the
    /// node it came through. Requests run beside the actor and time out within one interval.
    fn pull_heartbeats(&self) {
        let timeout_ms = self.config().heartbeat_interval.as_millis().max(50) as u64;
        for cell in ractor::pg::get_members(&self.group) {
            let id = cell.get_id();
            if id.is_local() {
                continue;
            }
            let node = id.node();
            let beacon: ActorRef<BeaconMsg> = cell.into();
            let myself = self.myself.clone();
            tokio::spawn(async move {
                match ractor::call_t!(beacon, BeaconMsg::Heartbeat, timeout_ms) {
                    Ok(bytes) => {
                        let _ = myself.cast(ClusterMsg::Pulled { node, bytes });
                    }
                    // A stale member of a dead node; its session close removes it.
                    Err(e) => debug!(node, error = %e, "no heartbeat from a peer"),
                }
            });
        }
    }

    async fn on_heartbeat(&mut self, node: NodeId, bytes: &[u8]) {
        let Some(hb) = self.admit(node, bytes).await else {
            return;
        };
        let previous = self.peers.get(&hb.instance).map(|p| {
            (
                p.hb.incarnation,
                p.hb.seq,
                p.hb.draining,
                p.hb.streaming.clone(),
            )
        });
        let changed = match previous {
            Some((incarnation, seq, _, _)) if incarnation == hb.incarnation && hb.seq <= seq => {
                return;
            }
            Some((incarnation, _, draining, streaming)) => {
                if incarnation != hb.incarnation {
                    info!(peer = %hb.instance, "peer restarted");
                    self.membership_change("joined");
                }
                if !draining && hb.draining {
                    info!(peer = %hb.instance, "peer is draining");
                    self.membership_change("draining");
                }
                incarnation != hb.incarnation
                    || draining != hb.draining
                    || streaming != hb.streaming
            }
            None => {
                info!(peer = %hb.instance, address = %hb.address, budget = hb.line_budget, "peer joined");
                self.membership_change("joined");
                true
            }
        };
        self.peers.insert(
            hb.instance.clone(),
            Peer {
                hb,
                heard: Instant::now(),
                node,
            },
        );
        if changed {
            self.reassign().await;
        }
    }

    async fn on_session_closed(&mut self, name: &str) {
        let instance = instance_of(name).to_string();
        // Two simultaneous dials leave one session of two: only the last one closing counts.
        let sessions =
            ractor::call_t!(self.server, NodeServerMessage::GetSessions, 500).unwrap_or_default();
        if sessions.values().any(|s| peer_name(s) == name) {
            debug!(peer = %name, "one of two links closed; the other remains");
            return;
        }
        if self.peers.remove(&instance).is_some() {
            warn!(peer = %instance, "cluster link closed: peer gone");
            self.membership_change("left");
            self.reassign().await;
        }
    }

    async fn expire_silent_peers(&mut self) {
        let timeout = self.config().heartbeat_timeout;
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.heard.elapsed() > timeout)
            .map(|(i, _)| i.clone())
            .collect();
        if silent.is_empty() {
            return;
        }
        let sessions =
            ractor::call_t!(self.server, NodeServerMessage::GetSessions, 500).unwrap_or_default();
        for instance in silent {
            warn!(peer = %instance, ?timeout, "no heartbeat: peer gone (link half-open or cut)");
            self.peers.remove(&instance);
            self.membership_change("timed_out");
            // Close the stale link so that the next dial builds a fresh one.
            for s in sessions.values() {
                if instance_of(&peer_name(s)) == instance {
                    s.actor.stop(Some("heartbeat timeout".into()));
                }
            }
        }
    }

    fn redial(&mut self) {
        let me = self.config().address();
        let every = self.config().redial_interval;
        let heard: BTreeSet<&str> = self.peers.values().map(|p| p.hb.address.as_str()).collect();
        let due: Vec<String> = self
            .config()
            .peers
            .iter()
            .filter(|a| **a != me && !heard.contains(a.as_str()))
            .filter(|a| self.dialled.get(*a).is_none_or(|t| t.elapsed() >= every))
            .cloned()
            .collect();
        for address in due {
            self.dialled.insert(address.clone(), Instant::now());
            let server = self.server.clone();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let dial = async {
                    match tls {
                        Some(t) => {
                            ractor_cluster::client_connect_enc(
                                &server,
                                address.as_str(),
                                t.connector,
                                t.server_name,
                            )
                            .await
                        }
                        None => ractor_cluster::client_connect(&server, address.as_str()).await,
                    }
                };
                match tokio::time::timeout(Duration::from_secs(2), dial).await {
                    Ok(Ok(())) => debug!(%address, "dialled peer"),
                    Ok(Err(e)) => debug!(%address, error = ?e, "cannot dial peer"),
                    Err(_) => debug!(%address, "dialling peer timed out"),
                }
            });
        }
    }

    fn membership_change(&mut self, change: &str) {
        self.membership_changes += 1;
        self.args
            .metrics
            .cluster_membership_changes
            .with_label_values(&[change])
            .inc();
    }

    /// Recomputes the split and tells the session this pod's share.
    async fn reassign(&mut self) {
        if !self.assigned_once {
            let expected = self
                .config()
                .peers
                .iter()
                .filter(|a| **a != self.config().address())
                .count();
            if self.peers.len() < expected && self.started.elapsed() < self.config().startup_grace {
                return;
            }
            self.assigned_once = true;
        }
        let mut members: Vec<Member> = self
            .peers
            .values()
            .filter(|p| !p.hb.draining)
            .map(|p| Member {
                instance: p.hb.instance.clone(),
                line_budget: p.hb.line_budget,
            })
            .collect();
        if !self.draining {
            members.push(Member {
                instance: self.args.instance.clone(),
                line_budget: self.config().line_budget,
            });
        }
        let assignment = assign(&self.args.symbols, &members);
        let mine: BTreeSet<String> = assignment
            .symbols_of(&self.args.instance)
            .cloned()
            .collect();
        let mut held = mine.clone();
        let handover = self.config().handover_timeout;
        for symbol in self.held.difference(&mine) {
            let taken = match assignment.owner.get(symbol) {
                Some(owner) => self
                    .peers
                    .get(owner)
                    .is_some_and(|p| p.hb.streaming.contains(symbol)),
                // Nobody has a line for it: nothing to wait for.
                None => true,
            };
            let since = *self
                .releasing
                .entry(symbol.clone())
                .or_insert_with(Instant::now);
            // Only a symbol with data here has anything to lose in a gap.
            let streams_here = self.streaming.iter().any(|(s, _)| s == symbol);
            if !taken && streams_here && since.elapsed() < handover {
                held.insert(symbol.clone());
            } else if !taken && streams_here {
                warn!(symbol = %symbol, "handover timed out; releasing anyway");
            }
        }
        self.releasing
            .retain(|s, _| held.contains(s) && !mine.contains(s));
        if held != self.held {
            let added: Vec<&String> = held.difference(&self.held).collect();
            let released: Vec<&String> = self.held.difference(&held).collect();
            info!(
                ?added,
                ?released,
                held = held.len(),
                handing_over = self.releasing.len(),
                members = members.len(),
                "symbols reassigned"
            );
        }
        if assignment.unassigned != self.assignment.unassigned && !assignment.unassigned.is_empty()
        {
            warn!(unassigned = ?assignment.unassigned, "no live pod has a market-data line for these symbols");
        }
        self.held = held;
        self.assignment = assignment;
        let m = &self.args.metrics;
        m.cluster_members.set(1 + self.peers.len() as i64);
        m.cluster_assigned_symbols.set(self.held.len() as i64);
        m.cluster_unassigned_symbols
            .set(self.assignment.unassigned.len() as i64);
        // Every tick: a restarted session actor learns its share again within one interval.
        if let Some(session) = self.args.names.lookup::<SessionMsg>(names::IB_SESSION) {
            let _ = session.cast(SessionMsg::Assign(self.held.clone()));
        }
    }

    fn snapshot(&self) -> ClusterSnapshot {
        let mut members: Vec<MemberLine> = self
            .peers
            .values()
            .map(|p| MemberLine {
                instance: p.hb.instance.clone(),
                address: p.hb.address.clone(),
                line_budget: p.hb.line_budget,
                draining: p.hb.draining,
                streaming: p.hb.streaming.len(),
                heartbeat_age_secs: p.heard.elapsed().as_secs_f64(),
                local: false,
            })
            .collect();
        members.push(MemberLine {
            instance: self.args.instance.clone(),
            address: self.config().address(),
            line_budget: self.config().line_budget,
            draining: self.draining,
            streaming: self.fresh().len(),
            heartbeat_age_secs: 0.0,
            local: true,
        });
        members.sort_by(|a, b| a.instance.cmp(&b.instance));
        ClusterSnapshot {
            instance: self.args.instance.clone(),
            address: self.config().address(),
            members,
            owner: self.assignment.owner.clone(),
            held: self.held.iter().cloned().collect(),
            handing_over: self.releasing.keys().cloned().collect(),
            unassigned: self.assignment.unassigned.clone(),
            streaming: self.fresh(),
            draining: self.draining,
            membership_changes: self.membership_changes,
            refused: self.refused.clone(),
        }
    }
}

mod admission;
#[cfg(test)]
mod tests;
