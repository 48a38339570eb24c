//! The gateway websocket (`ib_websocket/{actor.rs,connection.rs,liveness.rs,recorder.rs,released.rs}`).
pub mod actor;
mod child;
pub mod connection;
pub mod liveness;
pub mod recorder;
pub mod released;
pub mod unacked;

pub use actor::{IbWebsocket, WsArgs, WsMsg, WsSnapshot};
pub use child::WebsocketChild;

#[cfg(test)]
mod liveness_tests;
