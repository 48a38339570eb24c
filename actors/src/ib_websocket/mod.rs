//! The gateway websocket (`ib_websocket/{actor.rs,connection.rs}`).
pub mod actor;
pub mod connection;

pub use actor::{IbWebsocket, WsArgs, WsMsg, WsSnapshot};
