//! Which peer heartbeats the member believes: a heartbeat is tied to the authenticated node
//! session it came through, names that node's instance and a configured address, speaks for no
//! instance another live node holds, and claims at most `max_peer_line_budget` lines and only
//! configured symbols. Every refusal is counted by reason.

use std::collections::BTreeSet;

use marketlane_protocol::cluster::Heartbeat;
use ractor_cluster::{NodeId, NodeServerMessage};
use tracing::{debug, warn};

use super::{ClusterState, MAX_HEARTBEAT_BYTES, peer_name};

/// Bounds what a peer's heartbeat claims: at most `max_budget` lines, and only configured
/// symbols, each once, in its streaming list (a peer cannot make this pod wait on others).
/// True when the budget was cut.
pub(super) fn bound_claims(hb: &mut Heartbeat, max_budget: u32, symbols: &[String]) -> bool {
    let mut seen = BTreeSet::new();
    hb.streaming
        .retain(|s| symbols.contains(s) && seen.insert(s.clone()));
    let cut = hb.line_budget > max_budget;
    hb.line_budget = hb.line_budget.min(max_budget);
    cut
}

/// The instance part of a node name `instance@host`.
pub(super) fn instance_of(node_name: &str) -> &str {
    node_name.split('@').next().unwrap_or(node_name)
}

impl ClusterState {
    /// Counts (and logs once per node and reason) a refused heartbeat or a cut-down claim.
    pub(super) fn refuse(&mut self, node: NodeId, reason: &'static str, detail: &str) {
        *self.refused.entry(reason.to_string()).or_default() += 1;
        self.args
            .metrics
            .cluster_heartbeats_refused
            .with_label_values(&[reason])
            .inc();
        if self.refusals_logged.insert((node, reason)) {
            warn!(node, reason, "{detail}");
        } else {
            debug!(node, reason, "{detail}");
        }
    }

    /// Checks a heartbeat against the node it came through and bounds its claims; `None` when
    /// it is refused.
    pub(super) async fn admit(&mut self, node: NodeId, bytes: &[u8]) -> Option<Heartbeat> {
        if bytes.len() > MAX_HEARTBEAT_BYTES {
            self.refuse(node, "too_large", &format!("{} bytes", bytes.len()));
            return None;
        }
        let mut hb = match Heartbeat::decode(bytes) {
            Ok(hb) => hb,
            Err(e) => {
                self.refuse(
                    node,
                    "undecodable",
                    &format!("ignoring a cluster heartbeat: {e}"),
                );
                return None;
            }
        };
        let sessions =
            ractor::call_t!(self.server, NodeServerMessage::GetSessions, 500).unwrap_or_default();
        let Some(session) = sessions.get(&node) else {
            debug!(node, "heartbeat of a node whose session has closed");
            return None;
        };
        let node_name = peer_name(session);
        if hb.instance != instance_of(&node_name) || hb.instance == self.args.instance {
            self.refuse(
                node,
                "identity",
                &format!(
                    "node {node_name:?} sent a heartbeat for instance {:?}; refused",
                    hb.instance
                ),
            );
            return None;
        }
        let me = self.config().address();
        if hb.address == me
            || (!self.config().peers.is_empty() && !self.config().peers.contains(&hb.address))
        {
            self.refuse(
                node,
                "address",
                &format!(
                    "{} claims address {:?}, not one of cluster.peers; refused",
                    hb.instance, hb.address
                ),
            );
            return None;
        }
        // One live node per instance and per address.
        if let Some(p) = self.peers.values().find(|p| {
            (p.hb.instance == hb.instance || p.hb.address == hb.address)
                && p.node != node
                && sessions.contains_key(&p.node)
        }) {
            let other = p.hb.instance.clone();
            self.refuse(
                node,
                "duplicate",
                &format!(
                    "node {node_name:?} speaks for {} at {}, which live member {other} already holds; refused",
                    hb.instance, hb.address
                ),
            );
            return None;
        }
        let max = self.config().max_peer_line_budget();
        let claimed = hb.line_budget;
        if bound_claims(&mut hb, max, &self.args.symbols) {
            self.refuse(
                node,
                "budget",
                &format!(
                    "{} claims {claimed} market-data lines; counted as {max} (cluster.max_peer_line_budget)",
                    hb.instance
                ),
            );
        }
        Some(hb)
    }
}
