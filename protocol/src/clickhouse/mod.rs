//! ClickHouse side of a category schema: the DDL for the server version in use, and the
//! RowBinary encoding of validated rows.
//!
//! Production runs current ClickHouse; the machines here run Debian's 18.16. The DDL is generated
//! for what the detected server supports: `DateTime64(9,'UTC')`, `LowCardinality`, TTL on modern
//! servers; `Int64` nanoseconds with a `DateTime` companion column and plain `String` on old
//! ones. RowBinary bytes are the same for `Int64` and `DateTime64(9)`, so one encoder serves both.
//!
//! One file per idea: [`ddl`] (ingestion tables, `create_all`, analyst access), [`rowbinary`]
//! (RowBinary primitives; rows themselves are encoded by [`crate::wire_row`]), [`quarantine`]
//! (`<category>_unqualified` tables), [`offsets`] (the writers' exactly-once state),
//! [`snapshot`] (latest row per key) and [`migrate`] (schema growth).

mod ddl;
mod migrate;
mod offsets;
mod quarantine;
mod rowbinary;
mod snapshot;
#[cfg(test)]
mod tests;

pub use ddl::*;
pub use migrate::*;
pub use offsets::*;
pub use quarantine::*;
pub use rowbinary::*;
pub use snapshot::*;

/// Suffix of the `DateTime` companion column of a timestamp on servers without DateTime64.
pub const DATETIME_COMPANION_SUFFIX: &str = "_dt";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl ServerVersion {
    /// Parses the output of `SELECT version()`, e.g. `18.16.1` or `25.8.2.29`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.trim().split('.').map(|p| p.parse::<u32>().ok());
        Some(Self {
            major: it.next()??,
            minor: it.next()??,
            patch: it.next().flatten().unwrap_or(0),
        })
    }

    const fn at_least(self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }

    /// What this server supports, by the release that introduced each feature.
    pub fn capabilities(self) -> ServerCapabilities {
        ServerCapabilities {
            datetime64: self.at_least(20, 1),
            low_cardinality: self.at_least(19, 3),
            ttl: self.at_least(19, 6),
            sql_access_control: self.at_least(20, 4),
            insert_deduplication_token: self.at_least(22, 2),
            nullable_low_cardinality: self.at_least(19, 3),
        }
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerCapabilities {
    pub datetime64: bool,
    pub low_cardinality: bool,
    pub ttl: bool,
    pub sql_access_control: bool,
    pub insert_deduplication_token: bool,
    pub nullable_low_cardinality: bool,
}

/// Options of the generated DDL.
#[derive(Debug, Clone)]
pub struct DdlOptions {
    pub database: String,
    pub retention_days: u32,
    pub capabilities: ServerCapabilities,
}
