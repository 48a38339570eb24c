//! Building one pod's lane: topics and tables from the schemas, then the supervised actors of
//! the roles this pod runs.

use std::sync::Arc;

use marketlane_protocol::SchemaSet;
use ractor::{Actor, ActorRef};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::backpressure::InflightLimit;
use crate::clickhouse_writer::{ClickHouse, SinkError, WriterArgs, WriterKind};
use crate::config::{ClickHouseConfig, ConfigError, IbConfig, KafkaConfig, WriterConfig};
use crate::econ::{EconArgs, EconConfig};
use crate::ib_gateway::GatewayArgs;
use crate::ib_session::SessionArgs;
use crate::ib_websocket::WsArgs;
use crate::kafka::ProducerArgs;
use crate::kafka::admin::{TopicError, ensure_topics};
use crate::metrics::Metrics;
use crate::names::{self, ActorNames};
use crate::normalizer::RowEmitter;
use crate::supervisor::{ChildSpec, LaneSupervisor, SupervisorArgs, SupervisorMsg};

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

/// Creates what the lane needs (topics, tables) and starts its supervisor.
pub async fn start(
    config: LaneConfig,
    schemas: Arc<SchemaSet>,
    metrics: Arc<Metrics>,
) -> Result<ActorRef<SupervisorMsg>, LaneError> {
    config.validate()?;
    let topics = ensure_topics(&config.kafka, &schemas).await?;
    info!(count = topics.len(), "kafka topics ready");
    let mut children = Vec::new();
    if config.roles.contains(&Role::Connector) {
        let inflight = InflightLimit::new(config.kafka.max_in_flight_frames);
        let emitter = RowEmitter {
            schemas: schemas.clone(),
            kafka: config.kafka.clone(),
            source_system: config.source_system.clone(),
            instance: config.instance.clone(),
            names: config.names.clone(),
            metrics: metrics.clone(),
        };
        children.push(ChildSpec::Producer(ProducerArgs {
            kafka: config.kafka.clone(),
            metrics: metrics.clone(),
            inflight: inflight.clone(),
        }));
        children.push(ChildSpec::TickNormalizer(emitter.clone()));
        children.push(ChildSpec::L2Normalizer(emitter.clone()));
        children.push(ChildSpec::IndicatorsNormalizer(emitter.clone()));
        children.push(ChildSpec::Websocket(WsArgs {
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
        }));
        if config.econ.url.is_some() {
            let mut econ_emitter = emitter.clone();
            econ_emitter.source_system = config.econ.source_system.clone();
            children.push(ChildSpec::Econ(EconArgs {
                config: config.econ.clone(),
                emitter: econ_emitter,
            }));
        }
        if let Some(command) = config.ib.gateway_command.clone() {
            children.push(ChildSpec::Gateway(GatewayArgs { command }));
        }
        children.push(ChildSpec::Session(SessionArgs {
            ib: config.ib.clone(),
            names: config.names.clone(),
            metrics: metrics.clone(),
            clustered: config.cluster.enabled,
        }));
        if config.cluster.enabled {
            children.push(ChildSpec::Cluster(crate::cluster::ClusterArgs {
                config: config.cluster.clone(),
                instance: config.instance.clone(),
                symbols: config.ib.symbols.iter().map(|s| s.symbol.clone()).collect(),
                names: config.names.clone(),
                metrics: metrics.clone(),
            }));
        }
    }
    if config.roles.contains(&Role::Calculator) {
        calculator_children(&config, &schemas, &metrics, &mut children)?;
    }
    if config.roles.contains(&Role::Writer) {
        let ch = ClickHouse::connect(&config.clickhouse).await?;
        info!(version = %ch.version, "clickhouse connected");
        ch.apply_ddl(&schemas).await?;
        let categories: Vec<String> = if config.writer.categories.is_empty() {
            schemas.iter().map(|s| s.category.clone()).collect()
        } else {
            config.writer.categories.clone()
        };
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
                let name = names::writer(&kind.topic());
                children.push(ChildSpec::Writer(
                    name,
                    WriterArgs {
                        kind,
                        kafka: config.kafka.clone(),
                        writer: config.writer.clone(),
                        clickhouse: ch.clone(),
                        metrics: metrics.clone(),
                        instance: config.instance.clone(),
                    },
                ));
            }
        }
        children.push(ChildSpec::Retention(
            crate::clickhouse_writer::RetentionArgs {
                clickhouse: ch.clone(),
                schemas: schemas.clone(),
            },
        ));
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
    children: &mut Vec<ChildSpec>,
) -> Result<(), LaneError> {
    use crate::calculator::{ConsumerArgs, Shared, WorkerArgs};
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
    };
    let consumers: Vec<String> = sources
        .iter()
        .map(|c| names::calculator_consumer(c))
        .collect();
    let shared = Arc::new(Shared::new(
        config.calculators.clone(),
        specs,
        consumers.clone(),
        emitter,
    ));
    if !config.roles.contains(&Role::Connector) {
        children.push(ChildSpec::Producer(ProducerArgs {
            kafka: config.kafka.clone(),
            metrics: metrics.clone(),
            inflight: InflightLimit::new(config.kafka.max_in_flight_frames),
        }));
    }
    for index in 0..shared.workers.len() {
        children.push(ChildSpec::CalculatorWorker(WorkerArgs {
            index,
            shared: shared.clone(),
        }));
    }
    for (name, category) in consumers.into_iter().zip(sources) {
        let schema = schemas
            .get(category)
            .map_err(|_| LaneError::UnknownCategory(category.to_string()))?;
        children.push(ChildSpec::CalculatorConsumer(
            name,
            ConsumerArgs {
                schema: Arc::new(schema.clone()),
                kafka: config.kafka.clone(),
                shared: shared.clone(),
            },
        ));
    }
    Ok(())
}
