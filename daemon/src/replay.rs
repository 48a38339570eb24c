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
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// What a replay printed, and what it could not.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub frames: u64,
    /// Rows and quarantine records the normalizers handed over.
    pub handed_over: u64,
    pub printed: u64,
    /// Lines that could not be written (e.g. a closed pipe) or decoded.
    pub failed: u64,
}

/// Where the printer writes: stdout in the binary, a buffer in tests.
type Sink = Box<dyn Write + Send + Sync>;

/// Prints what the normalizers hand to "Kafka". It never fails: a line it cannot write is
/// counted, so the replay can end (and exit non-zero) instead of leaving rows in a mailbox.
struct Printer;

#[derive(Default)]
struct PrintCounts {
    handed_over: AtomicU64,
    printed: AtomicU64,
    failed: AtomicU64,
}

struct PrinterState {
    out: std::io::BufWriter<Sink>,
    counts: Arc<PrintCounts>,
    /// Lines in the buffer: printed only once a flush has written them.
    pending: u64,
}

impl PrinterState {
    fn flush(&mut self) -> bool {
        let ok = self.out.flush().is_ok();
        let counter = if ok {
            &self.counts.printed
        } else {
            &self.counts.failed
        };
        counter.fetch_add(std::mem::take(&mut self.pending), Ordering::Relaxed);
        ok
    }
}

impl Actor for Printer {
    type Msg = ProducerMsg;
    type State = PrinterState;
    type Arguments = (Sink, Arc<PrintCounts>);

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        (out, counts): (Sink, Arc<PrintCounts>),
    ) -> Result<PrinterState, ActorProcessingErr> {
        Ok(PrinterState {
            out: std::io::BufWriter::with_capacity(1 << 16, out),
            counts,
            pending: 0,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut PrinterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ProducerMsg::ProduceAll(batch) | ProducerMsg::Resend(batch, _) => {
                for p in batch.take() {
                    state.print(p);
                }
            }
            // The replay's barrier: everything handed over before it is written out.
            ProducerMsg::Flush(_, reply) => {
                let _ = reply.send(state.flush());
            }
            ProducerMsg::GetState(reply) => {
                let _ = reply.send(Default::default());
            }
            // Only the Kafka producer's own delivery reports send it, and only the control
            // socket's fault injection the other.
            ProducerMsg::Failed(_) | ProducerMsg::InjectPanic => {}
        }
        Ok(())
    }
}

impl PrinterState {
    /// Writes one handed-over message as a line (counted as printed once flushed).
    fn print(&mut self, p: marketlane_actors::kafka::Produce) {
        self.counts.handed_over.fetch_add(1, Ordering::Relaxed);
        let line = serde_json::from_slice::<serde_json::Value>(&p.payload).map(|value| {
            if p.topic
                .ends_with(marketlane_protocol::schema::UNQUALIFIED_SUFFIX)
            {
                serde_json::json!({"category": &*p.category, "quarantined": value})
            } else {
                serde_json::json!({"category": &*p.category, "row": value})
            }
        });
        match line.map(|l| writeln!(self.out, "{l}")) {
            Ok(Ok(())) => self.pending += 1,
            Ok(Err(_)) => {
                // The buffer may hold what was not written: count it lost too.
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
                self.flush();
            }
            Err(_) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One frame of the input: a recording line or a raw frame; `None` for a blank line.
fn frame_of(line: &[u8], index: usize) -> Option<(i64, Vec<u8>)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match serde_json::from_slice::<RecordedFrame>(line) {
        Ok(rec) if rec.text.is_some() || rec.base64.is_some() => {
            Some((rec.received_ns, rec.bytes()))
        }
        _ => Some((i64::try_from(index).unwrap_or(0) * 1_000_000, line.to_vec())),
    }
}

/// Frames read ahead of the normalizers at most: the input is streamed, never held whole.
const SYNC_EVERY: u64 = 256;

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let report = replay_to(
        &args,
        std::io::BufReader::new(file),
        Box::new(std::io::stdout()),
    )
    .await?;
    if report.failed > 0 || report.printed != report.handed_over {
        bail!(
            "replay printed {} of {} rows ({} could not be written) from {} frames",
            report.printed,
            report.handed_over,
            report.failed,
            report.frames
        );
    }
    Ok(())
}

/// Feeds the frames of `input` through the normalizers and prints every row to `out`.
pub async fn replay_to(
    args: &ReplayArgs,
    mut input: impl std::io::BufRead,
    out: Sink,
) -> anyhow::Result<ReplayReport> {
    let schemas = Arc::new(SchemaSet::load_dir(&args.schemas_dir)?);
    let instruments: BTreeMap<i64, Instrument> = args
        .instruments
        .iter()
        .map(|s| parse_instrument(s).map(|i| (i.conid, i)))
        .collect::<anyhow::Result<_>>()?;
    let names = ActorNames::new(format!("replay_{}_", std::process::id()));
    let emitter = RowEmitter {
        schemas,
        kafka: KafkaConfig::default(),
        source_system: args.source_system.clone(),
        instance: args.instance.clone(),
        names: names.clone(),
        metrics: Arc::new(Metrics::new()),
        progress: Default::default(),
    };
    let counts = Arc::new(PrintCounts::default());
    let (printer, _) = Actor::spawn(
        Some(names.name(names::KAFKA_PRODUCER)),
        Printer,
        (out, counts.clone()),
    )
    .await?;
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
    let mut frames = 0u64;
    let mut line = Vec::new();
    for index in 0.. {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        if n == 0 {
            break;
        }
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let Some((received_ns, data)) = frame_of(line, index) else {
            continue;
        };
        frames += 1;
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
                        number: 0,
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
                        number: 0,
                    })?;
                }
            }
            Ok(_) => {}
        }
        if frames.is_multiple_of(SYNC_EVERY) {
            drained(&normalizers, &printer).await?;
        }
    }
    drained(&normalizers, &printer).await?;
    // Waited for: the names are free again for another replay in this process.
    for n in normalizers {
        n.stop_and_wait(None, None).await?;
    }
    printer.stop_and_wait(None, None).await?;
    Ok(ReplayReport {
        frames,
        handed_over: counts.handed_over.load(Ordering::Relaxed),
        printed: counts.printed.load(Ordering::Relaxed),
        failed: counts.failed.load(Ordering::Relaxed),
    })
}

/// Returns once every frame cast so far is normalized and its rows are written out. Calls are
/// answered after every earlier message, and without a timeout: a large book takes as long as
/// it takes, and nothing is left in a mailbox.
async fn drained(
    normalizers: &[ActorRef<NormalizerMsg>],
    printer: &ActorRef<ProducerMsg>,
) -> anyhow::Result<()> {
    for n in normalizers {
        ractor::call!(n, NormalizerMsg::GetState)?;
    }
    ractor::call!(printer, ProducerMsg::Flush, Duration::ZERO)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A writer shared with the test, or one whose pipe is closed.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>, bool);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.1 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn args() -> ReplayArgs {
        ReplayArgs {
            file: PathBuf::from("book.jsonl"),
            instruments: vec!["265598=AAPL".into()],
            schemas_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas"),
            source_system: "ib".into(),
            instance: "replay".into(),
        }
    }

    /// A BookTrader ladder of `levels` rows, one frame.
    fn big_book(levels: usize) -> Vec<u8> {
        let rows: Vec<String> = (0..levels)
            .map(|i| {
                format!(
                    r#"{{"row":{i},"focus":0,"price":"{}.{:02}","bid":"{}"}}"#,
                    100 + i / 100,
                    i % 100,
                    i % 900 + 1
                )
            })
            .collect();
        format!(
            "{{\"topic\":\"sbd+DU1+265598\",\"data\":[{}]}}\n",
            rows.join(",")
        )
        .into_bytes()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_large_book_prints_every_row_and_a_closed_pipe_is_a_failure() {
        // Size-independent mechanism (no timeout, streamed input); `marketlane replay` was run
        // by hand on a 300k-level book as well (all rows printed).
        let levels = 20_000;
        let input = big_book(levels);
        let out = Shared::default();
        let report = replay_to(&args(), &input[..], Box::new(out.clone()))
            .await
            .unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let rows = text.lines().filter(|l| l.contains(r#""row":{"#)).count() as u64;
        assert_eq!(report.frames, 1);
        assert!(report.printed >= levels as u64, "{report:?}");
        assert_eq!(report.printed, report.handed_over, "{report:?}");
        assert_eq!(
            rows, report.printed,
            "every handed-over line is in the output"
        );
        assert_eq!(report.failed, 0);

        let closed = Shared(Default::default(), true);
        let report = replay_to(&args(), &big_book(10)[..], Box::new(closed))
            .await
            .unwrap();
        assert!(report.failed > 0 && report.printed == 0, "{report:?}");
    }

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
