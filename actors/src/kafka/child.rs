//! The Kafka producer as a supervised child.

use futures_util::future::BoxFuture;
use ractor::{ActorCell, ActorProcessingErr};
use serde_json::Value;

use super::{KafkaProducer, ProducerArgs, ProducerMsg};
use crate::names;
use crate::supervisor::{Child, ChildKind, ask_state, spawn_linked};

pub struct ProducerChild(pub ProducerArgs);

impl Child for ProducerChild {
    fn name(&self) -> String {
        names::KAFKA_PRODUCER.into()
    }

    fn kind(&self) -> ChildKind {
        ChildKind::Producer
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, KafkaProducer, self.0.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, ProducerMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &["produced", "acknowledged", "in_flight_frames"]
    }
}
