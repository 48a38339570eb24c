//! Building one pod's lane: topics and tables from the schemas, then the supervised actors of
//! the roles this pod runs.

use std::sync::Arc;
use std::time::Duration;

use marketlane_protocol::SchemaSet;
use ractor::{Actor, ActorRef};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::backpressure::InflightLimit;
use crate::clickhouse_writer::{
    ClickHouse, RetentionArgs, RetentionChild, SinkError, WriterArgs, WriterBudget, WriterChild,
    WriterKind,
};
use crate::config::{ClickHouseConfig, ConfigError, IbConfig, KafkaConfig, WriterConfig};
use crate::econ::{EconArgs, EconChild, EconConfig};
use crate::ib_gateway::{GatewayArgs, GatewayChild};
use crate::ib_session::{SessionArgs, SessionChild};
use crate::ib_websocket::{WebsocketChild, WsArgs};
use crate::kafka::admin::{TopicError, ensure_topics};
use crate::kafka::{ProducerArgs, ProducerChild};
use crate::metrics::Metrics;
use crate::names::{self, ActorNames};
use crate::normalizer::{NormalizerChild, RowEmitter, indicators, l2, tick};
use crate::supervisor::{Child, LaneSupervisor, SupervisorArgs, SupervisorMsg};

/// What a pod does. Both by default; a deployment may split them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// IB session, websocket, normalizers, Kafka producer.
    Connector,
    /// Kafka → ClickHouse writers.
    Writer,
    /// Kafka → rolling indicators → Redis (and indicator rows back to Kafka).
    Calculator,
}

#[derive(Debug, Clone)]
pub struct LaneConfig {
    /// `component_instance_name` of the rows, e.g. the pod name `marketlane-0`.
    pub instance: String,
    pub source_system: String,
    pub roles: Vec<Role>,
    pub ib: IbConfig,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub writer: WriterConfig,
    /// The economic release feed connector (runs with the connector role when `url` is set).
    pub econ: EconConfig,
    pub calculators: crate::calculator::CalculatorConfig,
    /// Connector pods splitting the symbols (with the connector role, when enabled).
    pub cluster: crate::cluster::ClusterConfig,
    /// Registered-name prefix (tests running two lanes in one process).
    pub names: ActorNames,
}

#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error(transparent)]
    ClickHouse(#[from] SinkError),
    #[error("writer category {0} is not defined in the schemas")]
    UnknownCategory(String),
    #[error("cannot start the lane: {0}")]
    Spawn(String),
}

impl LaneConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.ib.validate()?;
        self.kafka.validate()?;
        self.clickhouse.validate()?;
        self.writer.validate()?;
        self.econ.validate()?;
        self.cluster.validate()?;
        self.calculators.validate()
    }
}

/// Longest wait between two start-up attempts.
const STARTUP_RETRY_MAX: Duration = Duration::from_secs(10);

/// Retries `attempt` while it fails with a transient error (a broker or server that is down
/// or restarting), with back-off from 0.5 s up to 10 s; any other error is returned at once.
/// An outage at start-up is rows 7 and 8 of the failure matrix, not a reason for a crash loop:
/// the pod stays unready (`/readyz`: starting) and says in the log what it waits for.
async fn until_up<T, E, F, Fut>(
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) => {
                warn!(what, error = %e, retry_in = ?wait, "not reachable at start-up; waiting");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(STARTUP_RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates what the lane needs (topics, tables) and starts its supervisor.
pub async fn start(
    config: LaneConfig,
    schemas: Arc<SchemaSet>,
    metrics: Arc<Metrics>,
) -> Result<ActorRef<SupervisorMsg>, LaneError> {
    config.validate()?;
    let topics = until_up("kafka topics", TopicError::is_transient, || {
        ensure_topics(&config.kafka, &schemas)
    })
    .await?;
    info!(count = topics.len(), "kafka topics ready");
    // In start order: the data path backwards, so that each actor finds its next hop.
    let mut children: Vec<Box<dyn Child>> = Vec::new();
    if config.roles.contains(&Role::Connector) {
        let inflight = InflightLimit::new(config.kafka.max_in_flight_frames);
        let emitter = RowEmitter {
            schemas: schemas.clone(),
            kafka: config.kafka.clone(),
            source_system: config.source_system.clone(),
            instance: config.instance.clone(),
            names: config.names.clone(),
            metrics: metrics.clone(),
            progress: Default::default(),
        };
        children.push(Box::new(ProducerChild(ProducerArgs {
            kafka: config.kafka.clone(),
            metrics: metrics.clone(),
            inflight: inflight.clone(),
        })));
        children.push(Box::new(NormalizerChild::<tick::Trades>::new(
            emitter.clone(),
        )));
        children.push(Box::new(NormalizerChild::<l2::Books>::new(emitter.clone())));
        children.push(Box::new(NormalizerChild::<indicators::Statistics>::new(
            emitter.clone(),
        )));
        children.push(Box::new(WebsocketChild(WsArgs {
            ib: config.ib.clone(),
            names: config.names.clone(),
            normalizers: [
                names::TICK_NORMALIZER,
                names::L2_NORMALIZER,
                names::INDICATORS_NORMALIZER,
            ]
            .map(String::from)
            .to_vec(),
            emitter: emitter.clone(),
            metrics: metrics.clone(),
            inflight,
        })));
        if config.econ.url.is_some() {
            let mut econ_emitter = emitter.clone();
            econ_emitter.source_system = config.econ.source_system.clone();
            children.push(Box::new(EconChild(EconArgs {
                config: config.econ.clone(),
                emitter: econ_emitter,
                clickhouse: Some(config.clickhouse.clone()),
            })));
        }
        if let Some(command) = config.ib.gateway_command.clone() {
            children.push(Box::new(GatewayChild(GatewayArgs { command })));
        }
        children.push(Box::new(SessionChild(SessionArgs {
            ib: config.ib.clone(),
            names: config.names.clone(),
            metrics: metrics.clone(),
            clustered: config.cluster.enabled,
        })));
        if config.cluster.enabled {
            children.push(Box::new(crate::cluster::ClusterChild(
                crate::cluster::ClusterArgs {
                    config: config.cluster.clone(),
                    instance: config.instance.clone(),
                    symbols: config.ib.symbols.iter().map(|s| s.symbol.clone()).collect(),
                    names: config.names.clone(),
                    metrics: metrics.clone(),
                },
            )));
        }
    }
    if config.roles.contains(&Role::Calculator) {
        calculator_children(&config, &schemas, &metrics, &mut children)?;
    }
    if config.roles.contains(&Role::Writer) {
        let ch = until_up("clickhouse", SinkError::is_transient, || async {
            let ch = ClickHouse::connect(&config.clickhouse).await?;
            ch.apply_ddl(&schemas).await?;
            Ok(ch)
        })
        .await?;
        info!(version = %ch.version, "clickhouse connected, tables ready");
        let categories: Vec<String> = if config.writer.categories.is_empty() {
            schemas.iter().map(|s| s.category.clone()).collect()
        } else {
            config.writer.categories.clone()
        };
        // One memory bound for all the writers of this process (`writer.buffer_bytes`).
        let budget = WriterBudget::new();
        for category in categories {
            let schema = schemas
                .get(&category)
                .map_err(|_| LaneError::UnknownCategory(category.clone()))?;
            let kinds = [
                WriterKind::Category(Arc::new(schema.clone())),
                WriterKind::Quarantine {
                    category: category.clone(),
                },
            ];
            for kind in kinds {
                children.push(Box::new(WriterChild(WriterArgs {
                    kind,
                    kafka: config.kafka.clone(),
                    writer: config.writer.clone(),
                    clickhouse: ch.clone(),
                    metrics: metrics.clone(),
                    instance: config.instance.clone(),
                    budget: budget.clone(),
                })));
            }
        }
        children.push(Box::new(RetentionChild(RetentionArgs {
            clickhouse: ch.clone(),
            schemas: schemas.clone(),
        })));
    }
    let (sup, _) = Actor::spawn(
        Some(config.names.name("lane_supervisor")),
        LaneSupervisor,
        SupervisorArgs {
            names: config.names.clone(),
            children,
            metrics,
        },
    )
    .await
    .map_err(|e| LaneError::Spawn(e.to_string()))?;
    Ok(sup)
}

/// The calculator workers, then one consumer per source topic the specs read (workers first,
/// so the consumers find them); plus a producer for the indicator rows when this pod runs no
/// connector.
fn calculator_children(
    config: &LaneConfig,
    schemas: &Arc<SchemaSet>,
    metrics: &Arc<Metrics>,
    children: &mut Vec<Box<dyn Child>>,
) -> Result<(), LaneError> {
    use crate::calculator::{ConsumerArgs, ConsumerChild, Shared, WorkerArgs, WorkerChild};
    let specs = config.calculators.compile()?;
    if specs.is_empty() {
        info!("calculator role without specs: no calculators started");
        return Ok(());
    }
    let mut sources: Vec<&'static str> = specs.iter().map(|s| s.source).collect();
    sources.sort_unstable();
    sources.dedup();
    let emitter = RowEmitter {
        schemas: schemas.clone(),
        kafka: config.kafka.clone(),
        source_system: config.source_system.clone(),
        instance: config.instance.clone(),
        names: config.names.clone(),
        metrics: metrics.clone(),
        progress: Default::default(),
    };
    let consumers: Vec<String> = sources
        .iter()
        .map(|c| names::calculator_consumer(c))
        .collect();
    let shared = Arc::new(Shared::new(
        config.calculators.clone(),
        specs,
        consumers,
        emitter,
    ));
    if !config.roles.contains(&Role::Connector) {
        children.push(Box::new(ProducerChild(ProducerArgs {
            kafka: config.kafka.clone(),
            metrics: metrics.clone(),
            inflight: InflightLimit::new(config.kafka.max_in_flight_frames),
        })));
    }
    for index in 0..shared.workers.len() {
        children.push(Box::new(WorkerChild(WorkerArgs {
            index,
            shared: shared.clone(),
        })));
    }
    for category in sources {
        let schema = schemas
            .get(category)
            .map_err(|_| LaneError::UnknownCategory(category.to_string()))?;
        children.push(Box::new(ConsumerChild(ConsumerArgs {
            schema: Arc::new(schema.clone()),
            kafka: config.kafka.clone(),
            shared: shared.clone(),
        })));
    }
    Ok(())
}

#[cfg(test)]
mod startup_tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum E {
        Down,
        Broken,
    }

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    #[tokio::test]
    async fn start_up_waits_out_an_outage_but_not_a_broken_config() {
        let mut calls = 0;
        let r = until_up(
            "kafka",
            |e| *e == E::Down,
            || {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err(E::Down) } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(r, Ok(3), "two outages waited out (0.5 s + 1 s)");
        let mut calls = 0;
        let r: Result<(), E> = until_up(
            "kafka",
            |e| *e == E::Down,
            || {
                calls += 1;
                async { Err(E::Broken) }
            },
        )
        .await;
        assert_eq!((r, calls), (Err(E::Broken), 1), "a permanent error at once");
    }
}
