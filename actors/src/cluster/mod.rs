//! The cluster of connector pods: IB allows one brokerage session per username, so two pods
//! (two usernames) split the configured symbols and take each other's over when one goes.

mod assignment;
mod beacon;
mod child;
mod config;
mod member;
mod tls;

pub use assignment::{Assignment, Member, assign};
pub use beacon::{BeaconMsg, ClusterBeacon};
pub use child::ClusterChild;
pub use config::{ClusterConfig, ClusterTlsConfig};
pub use member::{ClusterArgs, ClusterMember, ClusterMsg, ClusterSnapshot, MemberLine};
pub use tls::{ClusterTls, ClusterTlsError};
