//! Rolling calculators: per-team indicator specs computed on the tick and level-2 rows of
//! Kafka, written to Redis for the quant teams and produced back to Kafka as
//! `indicators_market_data` rows.
//!
//! ```text
//! calculator_consumer_<topic> ──rows by symbol hash (permits)──▶ calculator_worker_<i> ──▶ Redis
//!                                                                        └──▶ KafkaProducer
//! ```
//!
//! Why not ractor's factory: its bounded queue discards messages when full, and a discarded
//! row would corrupt a window; here a full worker makes the consumer stop polling instead.
//! Routing is key-persistent all the same (a symbol always lands on the same worker).

pub mod acl;
mod child;
pub mod compact;
pub mod config;
pub mod consumer;
pub mod engine;
pub mod redis;
pub mod window;
pub mod worker;

#[cfg(test)]
mod bench_tests;
#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod window_tests;

use std::sync::Arc;

use tokio::sync::Semaphore;

pub use child::{ConsumerChild, WorkerChild};
pub use config::{CalculatorConfig, Spec};
pub use consumer::{CalculatorConsumer, ConsumerArgs, ConsumerMsg, ConsumerSnapshot};
pub use worker::{CalculatorWorker, WorkerArgs, WorkerMsg, WorkerSnapshot};

use crate::metrics::Metrics;
use crate::names::ActorNames;
use crate::normalizer::RowEmitter;

/// What the consumers and workers of one lane share; it outlives their restarts.
pub struct Shared {
    pub config: CalculatorConfig,
    pub specs: Arc<Vec<Spec>>,
    /// Registered names of the workers, by index.
    pub workers: Vec<String>,
    /// Registered names of the consumers.
    pub consumers: Vec<String>,
    /// One pool per worker: batches it may have queued.
    pub permits: Vec<Arc<Semaphore>>,
    /// Produces the indicator rows (source system `marketlane`).
    pub emitter: RowEmitter,
    pub names: ActorNames,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(
        config: CalculatorConfig,
        specs: Vec<Spec>,
        consumers: Vec<String>,
        mut emitter: RowEmitter,
    ) -> Self {
        let workers = (0..config.workers)
            .map(crate::names::calculator_worker)
            .collect();
        let permits = (0..config.workers)
            .map(|_| Arc::new(Semaphore::new(config.max_queued_batches)))
            .collect();
        emitter.source_system = "marketlane".into();
        Self {
            specs: Arc::new(specs),
            workers,
            consumers,
            permits,
            names: emitter.names.clone(),
            metrics: emitter.metrics.clone(),
            emitter,
            config,
        }
    }
}
