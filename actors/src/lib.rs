//! The supervised actor tree of marketlane. See ARCHITECTURE.md for the tree, the data path and
//! the failure matrix.

pub mod backpressure;
pub mod calculator;
pub mod clickhouse_writer;
pub mod cluster;
pub mod config;
pub mod contracts;
pub mod econ;
pub mod frame_progress;
#[cfg(test)]
mod fuzz;
pub mod ib_client;
pub mod ib_gateway;
pub mod ib_login;
pub mod ib_session;
pub mod ib_websocket;
pub mod kafka;
pub mod lane;
pub mod loopback;
pub mod metrics;
pub mod names;
pub mod normalizer;
pub mod supervisor;
#[cfg(test)]
mod test_rng;

pub use lane::{LaneConfig, LaneError, Role};
pub use metrics::Metrics;
