//! The ClickHouse writers (`clickhouse_writer/{actor.rs,sink.rs}`) and the retention actor
//! for servers without TTL (`retention.rs`).
pub mod actor;
pub mod retention;
pub mod sink;

pub use actor::{ClickHouseWriter, WriterArgs, WriterKind, WriterMsg, WriterSnapshot};
pub use retention::{ClickHouseRetention, RetentionArgs, RetentionMsg, RetentionSnapshot};
pub use sink::{ClickHouse, SinkError};

use marketlane_protocol::SchemaSet;

use crate::names::{self, ActorNames};

impl SinkError {
    /// The server is down, overloaded or refused the request: worth another try. A schema
    /// change a human must make, or an answer that cannot be read, is not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Server { .. })
    }
}

/// `reload-schemas` for ClickHouse: brings the tables up to the schema files (`ADD COLUMN`; a
/// removed field is refused before anything changes), then hands each running category writer
/// its new schema. The writer flushes what it holds under the old schema before it switches.
/// Returns the DDL statements that ran.
pub async fn reload_schemas(
    clickhouse: &ClickHouse,
    schemas: &SchemaSet,
    actor_names: &ActorNames,
) -> Result<Vec<String>, SinkError> {
    let ran = clickhouse.sync_schemas(schemas).await?;
    for schema in schemas.iter() {
        let name = names::writer(&schema.topic());
        if let Some(w) = actor_names.lookup::<WriterMsg>(&name) {
            let _ = ractor::call_t!(
                w,
                WriterMsg::ReloadSchema,
                30_000,
                std::sync::Arc::new(schema.clone())
            );
        }
    }
    Ok(ran)
}
