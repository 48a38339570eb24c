//! Kafka: the producer actor of the connector and the topic set-up derived from the schemas.

pub mod admin;
pub mod producer;

pub use producer::{KafkaProducer, Produce, ProducerArgs, ProducerMsg, ProducerSnapshot};

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// The client settings shared by producers, consumers and the admin client.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", "marketlane")
        // The broker may be restarting (failure row 7): keep reconnecting quickly.
        .set("reconnect.backoff.max.ms", "2000")
        .set("log_level", "4");
    c
}
