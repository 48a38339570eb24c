//! Fuzzing on stable Rust, without cargo-fuzz: a seeded mutator (bit flips, random and
//! "interesting" bytes, deletions, duplications, splices of the seed corpus) feeds every parser
//! that reads untrusted input, for a time budget per target. Nothing may panic; a panic fails
//! the test and prints the input (hex) that caused it.
//!
//! Budget: `MARKETLANE_FUZZ_SECS` per target (default 2 s, which `make test` runs);
//! `make fuzz` gives each target minutes in a release build (millions of inputs) and prints
//! how many each ran. `MARKETLANE_FUZZ_SEED` replays a run.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Tokens that steer the mutator into the parsers' edge cases.
const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"-1",
    b"1e309",
    b"-0",
    b"NaN",
    b"\\u0000",
    b"\\ud800",
    b"9223372036854775808",
    b"18446744073709551616",
    b"\xff\xfe",
    b"+",
    b"\n",
    b"=",
    b"'''",
    b"[[",
];

fn budget() -> Duration {
    let secs = std::env::var("MARKETLANE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut input = corpus[rng.random_range(0..corpus.len())].clone();
    for _ in 0..rng.random_range(1..=8) {
        let len = input.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let token = INTERESTING[rng.random_range(0..INTERESTING.len())];
                input.splice(i..i, token.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                let copy = input[a..b].to_vec();
                let at = rng.random_range(0..=input.len());
                input.splice(at..at, copy);
            }
            5 => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let at = rng.random_range(0..=len);
                    input.splice(at..at, other[a..].iter().copied());
                }
            }
            6 => {
                let n = rng.random_range(0..16);
                let at = rng.random_range(0..=len);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                input.splice(at..at, bytes);
            }
            _ => {
                // A long run: sizes the parsers must bound.
                let at = rng.random_range(0..=len);
                let run = vec![b"9a\"{["[rng.random_range(0..5)]; rng.random_range(0..4096)];
                input.splice(at..at, run);
            }
        }
    }
    input
}

/// Runs `target` on mutants of `corpus` for the budget; returns how many inputs it ran.
fn fuzz(name: &str, corpus: &[&[u8]], target: impl Fn(&[u8])) -> u64 {
    let seed = std::env::var("MARKETLANE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d61_726b_6574);
    let mut rng = StdRng::seed_from_u64(seed);
    let corpus: Vec<Vec<u8>> = corpus.iter().map(|c| c.to_vec()).collect();
    for c in &corpus {
        target(c);
    }
    let started = Instant::now();
    let until = started + budget();
    let mut runs = 0u64;
    while Instant::now() < until {
        for _ in 0..256 {
            let input = mutate(&mut rng, &corpus);
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&input))) {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!("fuzz {name}: panic on input (hex) {hex}");
                resume_unwind(panic);
            }
            runs += 1;
        }
    }
    println!(
        "fuzz {name}: {runs} inputs in {:.1}s (seed {seed}), no panic",
        started.elapsed().as_secs_f64()
    );
    runs
}

#[test]
fn fuzz_websocket_frames() {
    use marketlane_protocol::ib::parse_frame;
    let runs = fuzz(
        "frames",
        &[
            br#"{"topic":"smd+265598","conid":265598,"_updated":1712000000000,"31":"189.70","7059":"100","7762":"1,200","84":"C189.69"}"#,
            br#"{"topic":"sbd+DU1+265598","data":[{"row":0,"focus":0,"price":"189.70","ask":"300"},{"row":2,"focus":0,"price":"189.60","bid":"1,200"}]}"#,
            br#"{"topic":"system","hb":1712000000000}"#,
            br#"{"topic":"sts","args":{"authenticated":true,"competing":false,"connected":true}}"#,
            br#"{"message":"waiting for session"}"#,
            b"tic",
        ],
        |input| {
            let _ = parse_frame(input);
        },
    );
    assert!(runs > 0);
}

#[test]
fn fuzz_control_requests() {
    use marketlane_protocol::control::{Command, Request};
    let runs = fuzz(
        "control",
        &[
            br#"{"v":1,"id":7,"cmd":"pause","args":{"actor":"tick_market_data"}}"#,
            br#"{"v":1,"cmd":"status"}"#,
            br#"{"v":1,"id":2,"cmd":"drain","args":{"deadline_secs":30}}"#,
            br#"{"v":1,"id":3,"cmd":"subscribe","args":{"symbol":"CL","sec_type":"future","exchange":"NYMEX"}}"#,
            br#"{"v":1,"cmd":"log-level","args":{"level":"info,marketlane_actors=debug"}}"#,
            br#"{"v":1,"cmd":"fault","args":{"actor":"tick_market_data","kind":"panic"}}"#,
        ],
        |input| {
            if let Ok(req) = serde_json::from_slice::<Request>(input) {
                let _ = Command::parse(&req);
            }
        },
    );
    assert!(runs > 0);
}

#[test]
fn fuzz_cluster_heartbeats() {
    use marketlane_protocol::cluster::{CLUSTER_PROTOCOL_VERSION, Heartbeat};
    let hb = Heartbeat {
        version: CLUSTER_PROTOCOL_VERSION,
        instance: "marketlane-1".into(),
        incarnation: 0xfeed,
        seq: 42,
        address: "10.0.0.2:4697".into(),
        line_budget: 100,
        draining: false,
        streaming: vec!["AAPL".into(), "CL".into()],
    }
    .encode();
    let runs = fuzz("cluster", &[&hb, &[]], |input| {
        let _ = Heartbeat::decode(input);
    });
    assert!(runs > 0);
}

#[test]
fn fuzz_econ_feed() {
    use serde_json::Value;
    let runs = fuzz(
        "econ",
        &[
            br#"{"releases":[{"publisher":"EIA","release":"wpsr","release_time_ms":1712000000000,"fields":[{"field":"crude_stocks","value":"-1.2","unit":"1_million_barrels"},{"field":"utilization","value":90.5,"unit":"percent"}]}]}"#,
            br#"{"releases":[]}"#,
        ],
        |input| {
            let Ok(feed) = serde_json::from_slice::<Value>(input) else {
                return;
            };
            let releases = feed.get("releases").and_then(Value::as_array);
            for release in releases.into_iter().flatten() {
                let fields = release.get("fields").and_then(Value::as_array);
                for field in fields.into_iter().flatten() {
                    let _ = crate::econ::poller::read_field(release, field);
                }
            }
        },
    );
    assert!(runs > 0);
}

#[test]
fn fuzz_schema_files() {
    use marketlane_protocol::schema::CategorySchema;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let files: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let corpus: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let path = dir.join("fuzzed.toml");
    let runs = fuzz("schemas", &corpus, |input| {
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = CategorySchema::from_toml(&path, text);
        }
    });
    assert!(runs > 0);
}
