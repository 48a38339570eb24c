//! Kafka: the producer actor of the connector and the topic set-up derived from the schemas.

pub mod admin;
mod child;
pub mod producer;
pub mod rebalance;
pub mod stall;

pub use child::ProducerChild;
pub use producer::{Handover, KafkaProducer, Produce, ProducerArgs, ProducerMsg, ProducerSnapshot};

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
    // Authentication and encryption (Strimzi: a `KafkaUser` with SCRAM-SHA-512 on a listener
    // with `authentication: scram-sha-512`). `validate` has checked these values.
    c.set("security.protocol", &kafka.security_protocol);
    if kafka.security_protocol.starts_with("sasl") {
        c.set("sasl.mechanism", &kafka.sasl_mechanism)
            .set("sasl.username", &kafka.sasl_username)
            .set("sasl.password", kafka.sasl_password().unwrap_or_default());
    }
    if let Some(ca) = &kafka.ssl_ca_location {
        c.set("ssl.ca.location", ca.display().to_string());
    }
    c
}

/// A consumer in group `group` with static membership (`group.instance.id` = `instance`, unique
/// per consumer: pod name and topic), cooperative-sticky assignment (a rebalance moves only the
/// partitions that change owner) and manual commits.
///
/// Static membership: a restarted pod rejoins under the same id within `session_timeout` and
/// gets its partitions back without a rebalance of the group; a pod that stays away loses them
/// after `session_timeout`. `max.poll.interval.ms` stays librdkafka's 5 minutes: consumers poll
/// (with their partitions paused) while they wait for a sink, so only a stuck actor exceeds it.
pub fn group_consumer_config(
    kafka: &KafkaConfig,
    group: &str,
    instance: &str,
    session_timeout: std::time::Duration,
) -> ClientConfig {
    let mut c = client_config(kafka);
    c.set("group.id", group)
        .set("group.instance.id", instance)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        // A third of the session: two lost heartbeats are not yet a departure.
        .set(
            "heartbeat.interval.ms",
            (session_timeout.as_millis() / 3).max(100).to_string(),
        )
        .set("max.poll.interval.ms", "300000");
    c
}
