//! Test support for the normalizers: an in-process stand-in for the Kafka producer that
//! records what it is handed, and a normalizer wired to it under unique names.

use std::path::Path;
use std::sync::{Arc, Mutex};

use marketlane_protocol::SchemaSet;
use marketlane_protocol::ib::{InboundFrame, parse_frame};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::{InstrumentMap, NormalizerMsg, RowEmitter};
use crate::backpressure::Inflight;
use crate::config::{KafkaConfig, SecType};
use crate::contracts::Instrument;
use crate::kafka::{Produce, ProducerMsg};
use crate::metrics::Metrics;
use crate::names::{ActorNames, KAFKA_PRODUCER};

pub struct FakeProducer;

impl Actor for FakeProducer {
    type Msg = ProducerMsg;
    type State = Arc<Mutex<Vec<Produce>>>;
    type Arguments = Arc<Mutex<Vec<Produce>>>;
    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        sink: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(sink)
    }
    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        sink: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let ProducerMsg::ProduceAll(batch) = msg {
            sink.lock().map_err(|e| e.to_string())?.extend(batch.take());
        }
        Ok(())
    }
}

pub fn aapl() -> Instrument {
    Instrument {
        symbol: "AAPL".into(),
        conid: 265_598,
        sec_type: SecType::Stock,
        exchange: "SMART".into(),
        last_trading_day: None,
        price_unit: "1_USdollar".into(),
        size_unit: "100_shares".into(),
        depth: true,
    }
}

/// A normalizer under test, its fake producer and what it produced.
pub struct Harness {
    pub normalizer: ActorRef<NormalizerMsg>,
    pub producer: ActorRef<ProducerMsg>,
    pub sink: Arc<Mutex<Vec<Produce>>>,
    pub metrics: Arc<Metrics>,
}

impl Harness {
    pub async fn start<A>(actor: A, tag: &str) -> Self
    where
        A: Actor<Msg = NormalizerMsg, Arguments = RowEmitter>,
    {
        Self::start_with(actor, tag, vec![aapl()]).await
    }

    /// A normalizer streaming `instruments` (all re-subscribed: their first frame seeds).
    pub async fn start_with<A>(actor: A, tag: &str, instruments: Vec<Instrument>) -> Self
    where
        A: Actor<Msg = NormalizerMsg, Arguments = RowEmitter>,
    {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let names = ActorNames::new(format!("{tag}_{}_{n}_", std::process::id()));
        let sink = Arc::new(Mutex::new(Vec::new()));
        let (producer, _) =
            Actor::spawn(Some(names.name(KAFKA_PRODUCER)), FakeProducer, sink.clone())
                .await
                .expect("fake producer");
        let schemas =
            SchemaSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas"))
                .expect("schemas");
        let metrics = Arc::new(Metrics::new());
        let emitter = RowEmitter {
            schemas: Arc::new(schemas),
            kafka: KafkaConfig::default(),
            source_system: "ib".into(),
            instance: "marketlane-0".into(),
            names: names.clone(),
            metrics: metrics.clone(),
            progress: Default::default(),
        };
        let (normalizer, _) = Actor::spawn(Some(names.name(tag)), actor, emitter)
            .await
            .expect("normalizer");
        let conids: Vec<i64> = instruments.iter().map(|i| i.conid).collect();
        let map: InstrumentMap = Arc::new(instruments.into_iter().map(|i| (i.conid, i)).collect());
        normalizer
            .cast(NormalizerMsg::Instruments(map))
            .expect("cast");
        normalizer
            .cast(NormalizerMsg::Resubscribed(conids))
            .expect("cast");
        Self {
            normalizer,
            producer,
            sink,
            metrics,
        }
    }

    /// Feeds one websocket frame and returns what it produced (rows and quarantine records).
    pub async fn feed(&self, text: &str, received_ns: i64) -> Vec<Produce> {
        let msg = match parse_frame(text.as_bytes()).expect("parsable test frame") {
            InboundFrame::MarketData(md) => NormalizerMsg::MarketData {
                frame: Arc::new(md),
                received_ns,
                permit: Inflight::none(),
                number: 0,
            },
            InboundFrame::Book(b) => NormalizerMsg::Book {
                frame: Arc::new(b),
                received_ns,
                permit: Inflight::none(),
                number: 0,
            },
            other => panic!("not a market-data frame: {other:?}"),
        };
        self.normalizer.cast(msg).expect("cast");
        // A call is answered after the frame: everything has been handed over by then.
        ractor::call_t!(self.normalizer, NormalizerMsg::GetState, 1000).expect("state");
        self.sink.lock().expect("sink").drain(..).collect()
    }

    pub fn stop(&self) {
        self.normalizer.stop(None);
        self.producer.stop(None);
    }
}

/// The JSON payload of a produced message.
pub fn json(p: &Produce) -> serde_json::Value {
    serde_json::from_slice(&p.payload).expect("json payload")
}
