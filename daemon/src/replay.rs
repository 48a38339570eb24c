//! `marketlane replay FILE`: feeds recorded (or hand-written) websocket frames through the same
//! frame parser, normalizers and schema validation as the daemon, and prints the resulting
//! rows as JSON lines `{"category":…,"row":{…}}` and the quarantined frames and rows as
//! `{"category":…,"quarantined":{…}}`. Nothing is sent to Kafka: the stage after the
//! normalizers is a printer registered under the producer's name.
//!
//! A line of FILE is either a recording (`{"received_ns":…,"text":…}` or `"base64"`, as
//! `ib.record_path` writes them) or one raw frame as the gateway sends it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use marketlane_actors::Metrics;
use marketlane_actors::backpressure::Inflight;
use marketlane_actors::config::{KafkaConfig, SecType};
use marketlane_actors::contracts::Instrument;
use marketlane_actors::ib_websocket::recorder::RecordedFrame;
use marketlane_actors::kafka::ProducerMsg;
use marketlane_actors::names::{self, ActorNames};
use marketlane_actors::normalizer::{
    IndicatorsNormalizer, L2Normalizer, NormalizerMsg, RowEmitter, TickNormalizer,
};
use marketlane_protocol::SchemaSet;
use marketlane_protocol::category::TICK;
use marketlane_protocol::ib::{InboundFrame, parse_frame};
use ractor::{Actor, ActorProcessingErr, ActorRef};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Frames, one per line.
    pub file: PathBuf,
    /// The instruments of the frames: `CONID=SYMBOL`, `CONID=SYMBOL:stock` or
    /// `CONID=SYMBOL:future:EXCHANGE` (repeatable).
    #[arg(long = "instrument", value_name = "CONID=SYMBOL[:KIND[:EXCHANGE]]")]
    pub instruments: Vec<String>,
    #[arg(long, default_value = "schemas")]
    pub schemas_dir: PathBuf,
    #[arg(long, default_value = "ib")]
    pub source_system: String,
    #[arg(long, default_value = "replay")]
    pub instance: String,
}

fn parse_instrument(spec: &str) -> anyhow::Result<Instrument> {
    let (conid, rest) = spec
        .split_once('=')
        .with_context(|| format!("--instrument {spec:?}: expected CONID=SYMBOL"))?;
    let conid: i64 = conid
        .trim()
        .parse()
        .with_context(|| format!("--instrument {spec:?}: {conid:?} is not a conid"))?;
    let mut parts = rest.split(':');
    let symbol = parts.next().unwrap_or_default().trim().to_string();
    if symbol.is_empty() {
        bail!("--instrument {spec:?}: empty symbol");
    }
    let (sec_type, exchange) = match (parts.next(), parts.next()) {
        (None | Some("stock"), None) => (SecType::Stock, "SMART".to_string()),
        (Some("stock"), Some(e)) => (SecType::Stock, e.to_string()),
        (Some("future"), Some(e)) => (SecType::Future, e.to_string()),
        (Some(k), _) => bail!("--instrument {spec:?}: kind {k:?} is not stock or future:EXCHANGE"),
        (None, Some(_)) => unreachable!("split yields parts in order"),
    };
    Ok(Instrument {
        symbol,
        conid,
        sec_type,
        exchange,
        last_trading_day: None,
        price_unit: "1_USdollar".into(),
        size_unit: match sec_type {
            SecType::Stock => "100_shares".into(),
            SecType::Future => "1_contracts".into(),
        },
        depth: true,
    })
}

/// Prints what the normalizers hand to "Kafka".
struct Printer;

impl Actor for Printer {
    type Msg = ProducerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let ProducerMsg::Produce(p) = msg {
            let value: serde_json::Value = serde_json::from_slice(&p.payload)?;
            let line = if p
                .topic
                .ends_with(marketlane_protocol::schema::UNQUALIFIED_SUFFIX)
            {
                serde_json::json!({"category": p.category, "quarantined": value})
            } else {
                serde_json::json!({"category": p.category, "row": value})
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

fn frames(path: &Path) -> anyhow::Result<Vec<(i64, Vec<u8>)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let fallback_time = i64::try_from(i).unwrap_or(0) * 1_000_000;
        match serde_json::from_slice::<RecordedFrame>(line) {
            Ok(rec) if rec.text.is_some() || rec.base64.is_some() => {
                out.push((rec.received_ns, rec.bytes()));
            }
            _ => out.push((fallback_time, line.to_vec())),
        }
    }
    Ok(out)
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let schemas = Arc::new(SchemaSet::load_dir(&args.schemas_dir)?);
    let instruments: BTreeMap<i64, Instrument> = args
        .instruments
        .iter()
        .map(|s| parse_instrument(s).map(|i| (i.conid, i)))
        .collect::<anyhow::Result<_>>()?;
    let frames = frames(&args.file)?;
    let names = ActorNames::new(format!("replay_{}_", std::process::id()));
    let emitter = RowEmitter {
        schemas,
        kafka: KafkaConfig::default(),
        source_system: args.source_system.clone(),
        instance: args.instance.clone(),
        names: names.clone(),
        metrics: Arc::new(Metrics::new()),
    };
    let (printer, _) = Actor::spawn(Some(names.name(names::KAFKA_PRODUCER)), Printer, ()).await?;
    let normalizers: Vec<ActorRef<NormalizerMsg>> = vec![
        Actor::spawn(
            Some(names.name(names::TICK_NORMALIZER)),
            TickNormalizer::new(),
            emitter.clone(),
        )
        .await?
        .0,
        Actor::spawn(
            Some(names.name(names::L2_NORMALIZER)),
            L2Normalizer::new(),
            emitter.clone(),
        )
        .await?
        .0,
        Actor::spawn(
            Some(names.name(names::INDICATORS_NORMALIZER)),
            IndicatorsNormalizer::new(),
            emitter.clone(),
        )
        .await?
        .0,
    ];
    let map = Arc::new(instruments);
    let conids: Vec<i64> = map.keys().copied().collect();
    for n in &normalizers {
        n.cast(NormalizerMsg::Instruments(map.clone()))?;
        // A recording starts at a subscription: the first frame of each conid is a snapshot.
        n.cast(NormalizerMsg::Resubscribed(conids.clone()))?;
    }
    let permit = Inflight::none();
    for (received_ns, data) in frames {
        match parse_frame(&data) {
            Err(e) => {
                emitter
                    .quarantine(TICK, e.code(), e.to_string(), &data, &permit)
                    .await;
            }
            Ok(InboundFrame::MarketData(md)) => {
                let frame = Arc::new(md);
                for n in &normalizers {
                    n.cast(NormalizerMsg::MarketData {
                        frame: frame.clone(),
                        received_ns,
                        permit: permit.clone(),
                    })?;
                }
            }
            Ok(InboundFrame::Book(b)) => {
                let frame = Arc::new(b);
                for n in &normalizers {
                    n.cast(NormalizerMsg::Book {
                        frame: frame.clone(),
                        received_ns,
                        permit: permit.clone(),
                    })?;
                }
            }
            Ok(_) => {}
        }
    }
    // Calls are answered after every earlier message: all rows are printed once these return.
    for n in &normalizers {
        ractor::call_t!(n, NormalizerMsg::GetState, 10_000)?;
    }
    ractor::call_t!(printer, ProducerMsg::GetState, 10_000).ok();
    for n in normalizers {
        n.stop(None);
    }
    printer.stop(None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instrument_specs() {
        let i = parse_instrument("265598=AAPL").unwrap();
        assert_eq!(
            (i.conid, i.symbol.as_str(), i.sec_type),
            (265_598, "AAPL", SecType::Stock)
        );
        let f = parse_instrument("1=CL:future:NYMEX").unwrap();
        assert_eq!(
            (f.sec_type, f.exchange.as_str(), f.size_unit.as_str()),
            (SecType::Future, "NYMEX", "1_contracts")
        );
        assert!(parse_instrument("AAPL").is_err());
        assert!(parse_instrument("x=AAPL").is_err());
        assert!(parse_instrument("1=CL:option").is_err());
    }
}
