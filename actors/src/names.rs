//! Registered names of the actors of one lane. Actors find each other by name at send time, so
//! a restarted actor is found again without re-wiring its peers. The prefix keeps two lanes in
//! one process (tests) apart.

use ractor::{ActorRef, registry};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActorNames {
    prefix: String,
}

impl ActorNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn name(&self, actor: &str) -> String {
        format!("{}{actor}", self.prefix)
    }

    /// The live actor registered under `actor`, if any.
    pub fn lookup<M: ractor::Message>(&self, actor: &str) -> Option<ActorRef<M>> {
        registry::where_is(self.name(actor)).map(ActorRef::from)
    }
}

pub const IB_SESSION: &str = "ib_session";
pub const IB_GATEWAY: &str = "ib_gateway";
pub const CLUSTER: &str = "cluster";
pub const ECON_POLLER: &str = "econ_poller";
pub const IB_WEBSOCKET: &str = "ib_websocket";
pub const KAFKA_PRODUCER: &str = "kafka_producer";
pub const CLICKHOUSE_RETENTION: &str = "clickhouse_retention";
pub const TICK_NORMALIZER: &str = "normalizer_tick_market_data";
pub const L2_NORMALIZER: &str = "normalizer_l2_market_data";
pub const INDICATORS_NORMALIZER: &str = "normalizer_indicators_market_data";

pub fn writer(category: &str) -> String {
    format!("clickhouse_writer_{category}")
}

pub fn calculator_consumer(category: &str) -> String {
    format!("calculator_consumer_{category}")
}

pub fn calculator_worker(index: usize) -> String {
    format!("calculator_worker_{index}")
}
