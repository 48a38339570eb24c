//! The only actor of this pod that peers can message: it answers a peer's request for this
//! pod's current heartbeat and does nothing else. The cluster member itself is not in the
//! advertised process group (ractor_cluster delivers remote messages only to advertised
//! actors), so its commands (leave, tick, session events) cannot arrive from the network, and
//! a peer's state reaches this pod only as the reply to a request this pod sent over that
//! peer's own authenticated session, which ties it to the peer's node name.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;

/// What a peer may send to this pod.
#[derive(RactorClusterMessage)]
pub enum BeaconMsg {
    /// This pod's current heartbeat, postcard-encoded ([`marketlane_protocol::cluster::Heartbeat`]).
    #[rpc]
    Heartbeat(RpcReplyPort<Vec<u8>>),
}

/// The heartbeat the member last encoded; the beacon only reads it.
pub type CurrentHeartbeat = Arc<Mutex<Vec<u8>>>;

pub struct ClusterBeacon;

pub struct BeaconArgs {
    pub group: String,
    pub current: CurrentHeartbeat,
}

impl Actor for ClusterBeacon {
    type Msg = BeaconMsg;
    type State = BeaconArgs;
    type Arguments = BeaconArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: BeaconArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(args.group.clone(), vec![myself.get_cell()]);
        Ok(args)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::leave(state.group.clone(), vec![myself.get_cell()]);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BeaconMsg::Heartbeat(reply) => {
                let bytes = state.current.lock().map(|b| b.clone()).unwrap_or_default();
                let _ = reply.send(bytes);
            }
        }
        Ok(())
    }
}
