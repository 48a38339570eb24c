//! The ClickHouse writers (`clickhouse_writer/{actor.rs,sink.rs}`).
pub mod actor;
pub mod sink;

pub use actor::{ClickHouseWriter, WriterArgs, WriterKind, WriterMsg, WriterSnapshot};
pub use sink::{ClickHouse, SinkError};
