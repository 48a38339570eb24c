//! `marketlane-frame-bench`: what one market-data frame costs the connector before any row is
//! made, side by side in one run: IB's real `smd` frames (`tests/fixtures/ib-real/*.jsonl`)
//! parsed and merged into a replay base the way the connector did it (`BTreeMap<String, Value>`:
//! the old `parse_frame` parsed straight into it, and the replay store copied each field into
//! its base) and the way it does now (`parse_frame` into `Fields`, merged with `insert`).
//! Prints nanoseconds and heap allocations per frame for each, rounds alternating, and the
//! ratios. Run: `cargo run --release -p marketlane-load-tests --bin marketlane-frame-bench`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use marketlane_protocol::ib::{Fields, InboundFrame, parse_frame};
use serde_json::Value;

/// Counts heap allocations (this binary only), so "allocations per frame" is measured.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, which is `System.alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The old path: the frame into a sorted map of owned Strings and Values, its metadata keys
/// removed, every field copied into the conid's replay base.
fn old_path(text: &str, base: &mut BTreeMap<String, Value>) -> usize {
    let mut obj: BTreeMap<String, Value> = serde_json::from_str(text).expect("corpus frame");
    for meta in ["topic", "conid", "_updated", "conidEx", "server_id"] {
        obj.remove(meta);
    }
    for (k, v) in &obj {
        base.insert(k.clone(), v.clone());
    }
    obj.len()
}

/// The current path: `parse_frame` into [`Fields`], every field merged into the base.
fn new_path(text: &str, base: &mut Fields) -> usize {
    let Ok(InboundFrame::MarketData(md)) = parse_frame(text.as_bytes()) else {
        panic!("corpus frame is no market data: {text}");
    };
    for (k, v) in md.fields.iter() {
        base.insert(k, v.clone());
    }
    md.fields.len()
}

/// ns and allocations per frame over `n` frames of the corpus.
fn measure(corpus: &[String], n: usize, mut one: impl FnMut(&str) -> usize) -> (f64, f64) {
    let mut fields = 0;
    let allocs = ALLOCATIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    for text in corpus.iter().cycle().take(n) {
        fields += one(text);
    }
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    let allocs = (ALLOCATIONS.load(Ordering::Relaxed) - allocs) as f64 / n as f64;
    std::hint::black_box(fields);
    (ns, allocs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ib-real");
    let mut corpus = Vec::new();
    for entry in std::fs::read_dir(&root)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            corpus.extend(
                std::fs::read_to_string(&path)?
                    .lines()
                    .filter(|l| l.contains(r#""topic":"smd"#))
                    .map(str::to_string),
            );
        }
    }
    anyhow::ensure!(!corpus.is_empty(), "no smd frames in {}", root.display());
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(500_000);
    let rounds = 5;
    println!(
        "frame-bench: {} real smd frames ({}), {n} frames a round, {rounds} rounds alternating",
        corpus.len(),
        root.display()
    );
    let (mut old_ns, mut old_allocs, mut new_ns, mut new_allocs) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let mut old_base = BTreeMap::new();
        let (ns, allocs) = measure(&corpus, n, |t| old_path(t, &mut old_base));
        old_ns.push(ns);
        old_allocs.push(allocs);
        let mut new_base = Fields::new();
        let (ns, allocs) = measure(&corpus, n, |t| new_path(t, &mut new_base));
        new_ns.push(ns);
        new_allocs.push(allocs);
        println!(
            "round {round}: BTreeMap<String, Value> {:.0} ns {:.1} allocations | Fields {:.0} ns {:.1} allocations (per frame)",
            old_ns[round], old_allocs[round], new_ns[round], new_allocs[round]
        );
    }
    let (on, oa, nn, na) = (
        median(old_ns),
        median(old_allocs),
        median(new_ns),
        median(new_allocs),
    );
    println!(
        "median per frame: BTreeMap<String, Value> {on:.0} ns, {oa:.1} allocations; Fields {nn:.0} ns, {na:.1} allocations; time ratio new/old {:.2}, allocations ratio {:.2}",
        nn / on,
        na / oa
    );
    Ok(())
}
