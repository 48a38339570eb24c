//! Golden test of the three normalizers: the real-frame corpus (`tests/fixtures/ib-real/`) and
//! a seeded stream of generated frames (every value quirk the parsers know, bad values, escaped
//! strings, numbers as JSON numbers, ladders, frames out of order or without `_updated`) go
//! through the tick, l2 and indicators normalizers; every message they hand to Kafka must be
//! byte for byte what `tests/golden/normalizers/` pinned (quarantine records without their
//! `ingestion_time`, which is the wall clock). The corpus is kept whole, the generated stream
//! as one SHA-256 prefix per message, so a change names the first message that differs.
//!
//! `MARKETLANE_BLESS=1 cargo test -p marketlane-actors golden` rewrites the files: only for a
//! change of the rows that is meant.

use std::fmt::Write as _;
use std::path::PathBuf;

use marketlane_protocol::UnqualifiedRecord;
use marketlane_protocol::ib::{InboundFrame, parse_frame};
use sha2::Digest as _;

use super::testkit::{Harness, aapl};
use super::{IndicatorsNormalizer, L2Normalizer, TickNormalizer};
use crate::config::SecType;
use crate::contracts::Instrument;
use crate::kafka::Produce;
use crate::names::{INDICATORS_NORMALIZER, L2_NORMALIZER, TICK_NORMALIZER};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/normalizers")
}

fn instruments() -> Vec<Instrument> {
    let stock = |conid: i64, symbol: &str| Instrument {
        symbol: symbol.into(),
        conid,
        ..aapl()
    };
    let cl = Instrument {
        symbol: "CLZ6".into(),
        conid: 495_512_552,
        sec_type: SecType::Future,
        exchange: "NYMEX".into(),
        last_trading_day: Some(20_261_119),
        price_unit: "1_USdollar".into(),
        size_unit: "1_contracts".into(),
        depth: true,
    };
    vec![
        aapl(),
        stock(8314, "IBM"),
        stock(272_093, "MSFT"),
        stock(107_113_386, "META"),
        stock(208_813_720, "GOOGL"),
        stock(3_691_937, "AMZN"),
        cl,
    ]
}

/// One produced message as the golden file holds it.
fn line(p: &Produce) -> String {
    let payload = if p.topic.ends_with("_unqualified") {
        let mut rec: UnqualifiedRecord = serde_json::from_slice(&p.payload).expect("record");
        rec.ingestion_time = 0;
        serde_json::to_string(&rec).expect("record")
    } else {
        String::from_utf8(p.payload.to_vec()).expect("utf-8 row")
    };
    let key = std::str::from_utf8(&p.key).expect("utf-8 key");
    format!("{}\t{key}\t{payload}", p.topic)
}

struct Three {
    tick: Harness,
    l2: Harness,
    ind: Harness,
}

impl Three {
    async fn start() -> Self {
        Self {
            tick: Harness::start_with(TickNormalizer::new(), TICK_NORMALIZER, instruments()).await,
            l2: Harness::start_with(L2Normalizer::new(), L2_NORMALIZER, instruments()).await,
            ind: Harness::start_with(
                IndicatorsNormalizer::new(),
                INDICATORS_NORMALIZER,
                instruments(),
            )
            .await,
        }
    }

    /// The messages of one frame: tick's, then l2's, then indicators'.
    async fn feed(&self, text: &str, received_ns: i64) -> Vec<String> {
        match parse_frame(text.as_bytes()) {
            Ok(InboundFrame::MarketData(_) | InboundFrame::Book(_)) => {}
            _ => return Vec::new(),
        }
        let mut out = Vec::new();
        for h in [&self.tick, &self.l2, &self.ind] {
            out.extend(h.feed(text, received_ns).await.iter().map(line));
        }
        out
    }

    fn stop(&self) {
        for h in [&self.tick, &self.l2, &self.ind] {
            h.stop();
        }
    }
}

use crate::test_rng::XorShift as Gen;

/// A price near `base`, on a 0.01 tick.
trait Price {
    fn price(&mut self, base: f64) -> f64;
}

impl Price for Gen {
    fn price(&mut self, base: f64) -> f64 {
        let ticks = self.below(400) as f64 - 200.0;
        ((base + ticks * 0.01) * 100.0).round() / 100.0
    }
}

/// A JSON value of a price-like field with IB's quirks.
fn quirky_price(g: &mut Gen, p: f64) -> String {
    match g.below(40) {
        0 => format!("\"C{p}\""),
        1 => format!("\"H{p}\""),
        2 => "\"\"".into(),
        3 => "\"1x9\"".into(),
        4 => format!("{p}"),
        5 => {
            let escaped = format!("{p:.3}").replace('1', "\\u0031");
            format!("\"{escaped}\"")
        }
        6 => "true".into(),
        7 => "null".into(),
        8 => format!("\"  {p:.2} \""),
        9 => "[1]".into(),
        10 => format!("\"1,{p:07.2}\""),
        11 => format!("{p}e0"),
        _ => format!("\"{p:.2}\""),
    }
}

fn quirky_size(g: &mut Gen) -> String {
    match g.below(30) {
        0 => "\"\"".into(),
        1 => "\"lots\"".into(),
        2 => format!("{}", g.below(50)),
        3 => format!("\"{},{:03}\"", 1 + g.below(9), g.below(1000)),
        4 => format!("{}.5", g.below(9)),
        5 => "{\"a\":1}".into(),
        _ => format!("\"{}\"", 1 + g.below(900)),
    }
}

fn smd(g: &mut Gen, conid: i64, updated: &mut i64, base: f64) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !g.chance(5) {
        parts.push(format!("\"conid\":{conid}"));
    }
    let topic_conid = if g.chance(3) { 1 } else { conid };
    parts.push(format!("\"topic\":\"smd+{topic_conid}\""));
    match g.below(20) {
        0 => {}
        1 => parts.push(format!("\"_updated\":{}", *updated - 5)),
        2 => parts.push(format!("\"_updated\":{updated}")),
        3 => parts.push(format!("\"_updated\":\"{}\"", *updated + 1)),
        4 if g.chance(10) => parts.push("\"_updated\":\"soon\"".into()),
        _ => {
            *updated += 1 + g.below(900) as i64;
            parts.push(format!("\"_updated\":{updated}"));
        }
    }
    if g.chance(8) {
        let a = g.pick(&["RpB", "RpB", "RPB", "DPB", "ZB", "R", "\"\"", "Yp", "N"]);
        if a == "\"\"" {
            parts.push("\"6509\":\"\"".into());
        } else {
            parts.push(format!("\"6509\":\"{a}\""));
        }
    }
    let p = g.price(base);
    if g.chance(45) {
        parts.push(format!("\"31\":{}", quirky_price(g, p)));
    }
    if g.chance(35) {
        parts.push(format!("\"7059\":{}", quirky_size(g)));
    }
    for f in ["84", "86"] {
        if g.chance(40) {
            let q = g.price(base);
            let v = if g.chance(90) {
                format!("\"{q:.2}\"")
            } else {
                quirky_price(g, q)
            };
            parts.push(format!("\"{f}\":{v}"));
        }
    }
    for f in ["88", "85"] {
        if g.chance(30) {
            parts.push(format!("\"{f}\":{}", quirky_size(g)));
        }
    }
    if g.chance(20) {
        parts.push(format!("\"7762\":\"{}\"", 1000 + g.below(10_000_000)));
    }
    if g.chance(10) {
        let v = g.pick(&[
            "\"1.2M\"",
            "\"350K\"",
            "\"1,234\"",
            "\"2.5B\"",
            "\"9k\"",
            "\"xM\"",
        ]);
        parts.push(format!("\"87\":{v}"));
    }
    for f in ["7295", "70", "71", "7296", "7741", "82", "7635", "7682"] {
        if g.chance(6) {
            parts.push(format!("\"{f}\":{}", quirky_price(g, p)));
        }
    }
    if g.chance(8) {
        let v = (g.below(2000) as f64 - 1000.0) / 100.0;
        parts.push(format!("\"83\":{v}"));
    }
    if g.chance(4) {
        parts.push(format!("\"7697\":\"{}\"", g.below(100_000)));
    }
    if g.chance(30) {
        parts.push("\"6119\":\"q2\",\"server_id\":\"q2\"".into());
        parts.push(format!("\"conidEx\":\"{conid}\""));
    }
    if g.chance(3) {
        parts.push("\"\\u0033\\u0031\":\"101.5\"".into());
    }
    // IB sends keys in any order.
    for i in (1..parts.len()).rev() {
        let j = g.below(i as u64 + 1) as usize;
        parts.swap(i, j);
    }
    format!("{{{}}}", parts.join(","))
}

fn sbd(g: &mut Gen, conid: i64, base: f64) -> String {
    let mut rows = Vec::new();
    let n = g.below(12);
    for r in 0..n {
        let p = g.price(base);
        let price = match g.below(25) {
            0 => "\"x\"".to_string(),
            1 => format!("\"{} @ {p:.2}\"", g.below(9)),
            2 => format!("{p}"),
            _ => format!("\"{p:.2}\""),
        };
        let mut row = format!("{{\"row\":{r},\"focus\":{},", u64::from(r == n / 2));
        if !g.chance(2) {
            row.push_str(&format!("\"price\":{price},"));
        }
        match g.below(3) {
            0 => row.push_str(&format!("\"bid\":{}", quirky_size(g))),
            1 => row.push_str(&format!("\"ask\":{}", quirky_size(g))),
            _ => row.push_str("\"x\":0"),
        }
        row.push('}');
        rows.push(row);
    }
    format!(
        "{{\"topic\":\"sbd+DU1+{conid}\",\"data\":[{}]}}",
        rows.join(",")
    )
}

/// The generated stream: `(frame, received_ns)`.
fn generated(count: usize) -> Vec<(String, i64)> {
    let mut g = Gen(0x6d61_726b_6574_6c61);
    let conids: [(i64, f64); 5] = [
        (265_598, 189.6),
        (8314, 140.25),
        (495_512_552, 70.1),
        (272_093, 417.5),
        (999, 10.0),
    ];
    let mut updated = [1_777_552_200_000i64; 5];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let k = g.below(conids.len() as u64) as usize;
        let (conid, base) = conids[k];
        let text = if g.chance(12) {
            sbd(&mut g, conid, base)
        } else {
            smd(&mut g, conid, &mut updated[k], base)
        };
        out.push((text, 1_777_552_200_000_000_000 + i as i64 * 1_000_003));
    }
    out
}

fn corpus() -> Vec<(String, i64)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ib-real");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("corpus file");
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push((l.to_string(), out.len() as i64 * 1_000_000 + 7));
        }
        // Each file is a new session: the same frames again, now real-time.
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            let l = l.replace("\"DPB\"", "\"RpB\"");
            out.push((l, out.len() as i64 * 1_000_000 + 7));
        }
    }
    out
}

async fn run(frames: &[(String, i64)], hashed: bool) -> String {
    let three = Three::start().await;
    let mut out = String::new();
    for (i, (text, received_ns)) in frames.iter().enumerate() {
        for l in three.feed(text, *received_ns).await {
            if hashed {
                let digest = sha2::Sha256::digest(l.as_bytes());
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                let _ = writeln!(out, "{i} {hex}");
            } else {
                let _ = writeln!(out, "{i}\t{l}");
            }
        }
    }
    three.stop();
    out
}

fn check(name: &str, got: &str, frames: &[(String, i64)]) {
    let path = dir().join(name);
    if std::env::var_os("MARKETLANE_BLESS").is_some() {
        std::fs::create_dir_all(dir()).expect("golden dir");
        std::fs::write(&path, got).expect("golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).expect("golden file (MARKETLANE_BLESS=1 makes it)");
    if want == got {
        return;
    }
    let first = want
        .lines()
        .zip(got.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(want.lines().count().min(got.lines().count()));
    let at = |s: &str| s.lines().nth(first).unwrap_or("<none>").to_string();
    let frame_of = |l: &str| -> Option<usize> { l.split([' ', '\t']).next()?.parse().ok() };
    let frame = frame_of(&at(got)).or(frame_of(&at(&want)));
    panic!(
        "{name}: message {first} differs\n want: {}\n  got: {}\nframe: {:?}",
        at(&want),
        at(got),
        frame.and_then(|f| frames.get(f))
    );
}

#[tokio::test]
async fn rows_of_the_real_corpus_are_unchanged() {
    let frames = corpus();
    let got = run(&frames, false).await;
    assert!(got.lines().count() > 20, "{got}");
    check("ib-real.tsv", &got, &frames);
}

#[tokio::test]
async fn rows_of_generated_frames_are_unchanged() {
    let frames = generated(4000);
    let got = run(&frames, true).await;
    // The stream exercises rows and quarantine of every category.
    assert!(got.lines().count() > 4000, "{}", got.lines().count());
    check("generated.txt", &got, &frames);
}
