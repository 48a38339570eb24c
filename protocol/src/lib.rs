//! Wire types of marketlane, shared by the actors, the daemon and the tests:
//! - [`schema`]: category schemas loaded from `schemas/` (topics, validation, DDL source);
//! - [`row`]: category rows, deterministic row ids, quarantine records;
//! - [`typed_row`]: the connector's rows as borrowed typed values, checked and written in one pass;
//! - [`clickhouse`]: version-aware DDL and RowBinary encoding;
//! - [`wire_row`]: a row's wire JSON straight to RowBinary (the ClickHouse writer's path);
//! - [`ib`]: Interactive Brokers Client Portal messages and value parsers;
//! - [`cluster`]: heartbeats between connector pods;
//! - [`control`]: the control socket's requests and replies.

pub mod clickhouse;
pub mod cluster;
pub mod control;
pub mod ib;
pub mod row;
pub mod schema;
pub mod typed_row;
pub mod wire_row;

pub use row::{RowError, RowMap, UnqualifiedRecord, row_id, tick_row_id};
pub use schema::{CategorySchema, Dtype, FieldSpec, SchemaError, SchemaSet};
pub use typed_row::{RowId, Scalar, TypedRow};

/// Well-known category names (the schemas may define more).
pub mod category {
    pub const TICK: &str = "tick_market_data";
    pub const L2: &str = "l2_market_data";
    pub const INDICATORS: &str = "indicators_market_data";
    pub const NUMERIC_ECONOMIC: &str = "numeric_economic_data";
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
