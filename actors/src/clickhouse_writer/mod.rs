//! The ClickHouse writers and the retention actor for servers without TTL (`retention.rs`):
//! `actor.rs` (the writer actor, its messages and encoding), `flush.rs` (its flush), `batch.rs`
//! (the pure exactly-once state machine: positions, cuts, replays, offsets records),
//! `consumer.rs` (the Kafka side), `sink.rs` (the ClickHouse side) and `budget.rs` (the memory
//! bound of a process's writers together).
pub mod actor;
mod batch;
mod budget;
mod child;
mod consumer;
pub mod retention;
pub mod sink;

pub use actor::{ClickHouseWriter, WriterArgs, WriterKind, WriterMsg, WriterSnapshot};
pub use budget::WriterBudget;
pub use child::{RetentionChild, WriterChild};
pub use retention::{ClickHouseRetention, RetentionArgs, RetentionMsg, RetentionSnapshot};
pub use sink::{ClickHouse, SinkError};

use marketlane_protocol::SchemaSet;

use crate::names::{self, ActorNames};

/// ClickHouse exception codes worth another try: too many queries or connections, a socket
/// or network error, memory pressure, a replica in read-only mode.
const TRANSIENT_CODES: &[u32] = &[159, 202, 203, 209, 210, 241, 242, 425];

/// The exception code in a ClickHouse error text (`Code: 193, e.displayText() …` on 18.16,
/// `Code: 516. DB::Exception …` on current servers).
fn exception_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// ClickHouse exception codes that say this writer may not do what it does (unknown user,
/// wrong or missing password, address not allowed, no access to the database or table, a
/// read-only user): no retry cures them, a person must fix the credentials or the grants.
const REFUSAL_CODES: &[u32] = &[164, 192, 193, 194, 195, 291, 497, 516];

/// Whether a ClickHouse error text is a refusal of this writer's credentials or grants.
pub fn is_refusal(message: &str) -> bool {
    exception_code(message).is_some_and(|c| REFUSAL_CODES.contains(&c))
}

impl SinkError {
    /// The server could not be reached or is overloaded: worth another try. An exception the
    /// server raised on purpose (a wrong password, an unknown user, a bad statement) and a
    /// schema change a human must make are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Server { message, .. } => {
                exception_code(message).is_none_or(|c| TRANSIENT_CODES.contains(&c))
            }
            _ => false,
        }
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

#[cfg(test)]
mod transient_tests {
    use super::*;

    fn server(message: &str) -> SinkError {
        SinkError::Server {
            url: "http://clickhouse:8123".into(),
            message: message.into(),
        }
    }

    #[test]
    fn refusals_of_credentials_or_grants_are_told_apart() {
        // 18.16 and current servers word them differently; the code decides.
        assert!(is_refusal(
            "Code: 291, e.displayText() = DB::Exception: Access denied to database marketlane_state for user marketlane_writer"
        ));
        assert!(is_refusal(
            "Code: 516. DB::Exception: marketlane_writer: Authentication failed: password is incorrect"
        ));
        assert!(is_refusal(
            "Code: 497. DB::Exception: marketlane_writer: Not enough privileges"
        ));
        assert!(!is_refusal(
            "Code: 60. DB::Exception: Table marketlane.tick_market_data doesn't exist"
        ));
        assert!(!is_refusal("Code: 252. DB::Exception: Too many parts"));
        assert!(!is_refusal(
            "error trying to connect: tcp connect error: Connection refused"
        ));
    }

    #[test]
    fn an_outage_is_retried_and_a_refusal_is_not() {
        assert!(
            server("error trying to connect: tcp connect error: Connection refused").is_transient()
        );
        assert!(server("bad response: Code: 202, e.displayText() = DB::Exception: Too many simultaneous queries").is_transient());
        assert!(!server("bad response: Code: 193, e.displayText() = DB::Exception: Wrong password for user default").is_transient());
        assert!(
            !server("bad response: Code: 516. DB::Exception: default: Authentication failed")
                .is_transient()
        );
        assert_eq!(exception_code("Code: 516. DB::Exception"), Some(516));
        assert_eq!(exception_code("connection reset"), None);
    }
}
