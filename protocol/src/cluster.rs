//! Messages between marketlane pods over `ractor_cluster`, encoded with postcard (a documented,
//! stable wire format; bincode is unmaintained). The cluster transport carries them as bytes, so
//! a malformed or newer message is a decode error here, never a panic in the transport.

use serde::{Deserialize, Serialize};

/// Version of the cluster messages; a pod ignores heartbeats of another version (and says so)
/// rather than mis-reading them during a rolling upgrade.
pub const CLUSTER_PROTOCOL_VERSION: u16 = 1;

/// The process group every connector pod's cluster actor joins.
pub const CONNECTOR_GROUP: &str = "marketlane.connectors";

/// What a connector pod tells its peers every heartbeat interval. Every pod computes the same
/// symbol assignment from the same member list, so heartbeats carry only facts, no decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub version: u16,
    /// The pod's instance name (`marketlane-0`): its identity in the assignment.
    pub instance: String,
    /// Random per process start: a restarted pod is a new incarnation of the same instance.
    pub incarnation: u64,
    /// Increases by one per heartbeat of this incarnation.
    pub seq: u64,
    /// `host:port` peers dial to reach this pod's node server.
    pub address: String,
    /// Market-data lines this pod's IB user may hold.
    pub line_budget: u32,
    /// The pod is draining (SIGTERM): peers take its symbols over now.
    pub draining: bool,
    /// Symbols this pod currently receives data for; an old owner keeps a symbol that moves
    /// until the new owner lists it here (make before break).
    pub streaming: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterWireError {
    #[error("cannot decode a cluster message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("cluster protocol version {got}, this pod speaks {CLUSTER_PROTOCOL_VERSION}")]
    Version { got: u16 },
}

impl Heartbeat {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings, integers and vectors into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterWireError> {
        let hb: Heartbeat = postcard::from_bytes(bytes)?;
        if hb.version != CLUSTER_PROTOCOL_VERSION {
            return Err(ClusterWireError::Version { got: hb.version });
        }
        Ok(hb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Heartbeat {
        Heartbeat {
            version: CLUSTER_PROTOCOL_VERSION,
            instance: "marketlane-1".into(),
            incarnation: 0xfeed,
            seq: 42,
            address: "10.0.0.2:4697".into(),
            line_budget: 100,
            draining: false,
            streaming: vec!["AAPL".into(), "CL".into()],
        }
    }

    #[test]
    fn heartbeat_roundtrips() {
        let hb = sample();
        assert_eq!(Heartbeat::decode(&hb.encode()).unwrap(), hb);
    }

    #[test]
    fn garbage_and_other_versions_are_errors_not_panics() {
        assert!(matches!(
            Heartbeat::decode(&[0xff, 0xff, 0xff]),
            Err(ClusterWireError::Decode(_))
        ));
        let truncated = &sample().encode()[..5];
        assert!(Heartbeat::decode(truncated).is_err());
        let newer = Heartbeat {
            version: CLUSTER_PROTOCOL_VERSION + 1,
            ..sample()
        };
        assert!(matches!(
            Heartbeat::decode(&newer.encode()),
            Err(ClusterWireError::Version { got }) if got == CLUSTER_PROTOCOL_VERSION + 1
        ));
    }
}
