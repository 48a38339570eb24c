//! Creates the category topics and their `_unqualified` twins from the schemas.

use std::time::Duration;

use marketlane_protocol::SchemaSet;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka admin client: {0}")]
    Client(rdkafka::error::KafkaError),
    #[error("cannot create topic {topic}: {code:?}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Broker-side conditions that pass: a broker down, restarting or electing a controller.
fn transient_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
    )
}

impl TopicError {
    /// Worth another try: the brokers are down or restarting. An authentication failure, a
    /// bad client config or a refused topic are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Client(e) => e.rdkafka_error_code().is_some_and(transient_code),
            Self::Create { code, .. } => transient_code(*code),
        }
    }
}

/// Creates every topic the schemas define (idempotent: existing topics are left alone).
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    schemas: &SchemaSet,
) -> Result<Vec<String>, TopicError> {
    let admin: AdminClient<DefaultClientContext> = super::client_config(kafka)
        .create()
        .map_err(TopicError::Client)?;
    let names: Vec<String> = schemas.topics().iter().map(|t| kafka.topic(t)).collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                kafka.partitions,
                TopicReplication::Fixed(kafka.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(topics.iter(), &opts)
        .await
        .map_err(TopicError::Client)?;
    for r in results {
        if let Err((topic, code)) = r
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(TopicError::Create { topic, code });
        }
    }
    Ok(names)
}
