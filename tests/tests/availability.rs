//! Market-data availability (IB field 6509) and the opening quote, against the simulator and
//! the real local stack (Kafka, ClickHouse): a delayed symbol's rows land in
//! `<category>_unqualified` with reason `not_realtime` while real-time symbols flow, and
//! `ctl subscriptions` shows each symbol's availability; a quiet symbol's first-frame quote is
//! in `l2_market_data_snapshot`; a full frame after a re-sent `smd` doubles no trade (IB's
//! behaviour there is not documented, so both ways).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use marketlane_protocol::category::TICK;
use marketlane_tests::harness::{Lane, SimBuilder};
use marketlane_tests::{clickhouse, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

/// The sum of the series of `name` whose labels contain every `label="value"` pair.
async fn series(lane: &Lane, name: &str, labels: &[(&str, &str)]) -> f64 {
    lane.daemon
        .metrics()
        .await
        .0
        .iter()
        .filter(|(s, _)| s.split('{').next() == Some(name))
        .filter(|(s, _)| {
            labels
                .iter()
                .all(|(k, v)| s.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Symbols of the rows kept in `<category>_unqualified` with reason `not_realtime`.
async fn not_realtime_symbols(db: &str, category: &str) -> BTreeSet<String> {
    clickhouse(&format!(
        "SELECT raw FROM {db}.{category}_unqualified WHERE reason_code = 'not_realtime'"
    ))
    .await
    .unwrap_or_default()
    .lines()
    .filter_map(|l| {
        // TSV escapes the JSON's backslashes; the raw rows carry none.
        let v: Value = serde_json::from_str(l).ok()?;
        Some(v["symbol_identifier"].as_str()?.to_string())
    })
    .collect()
}

async fn stored_symbols(db: &str, table: &str) -> BTreeSet<String> {
    clickhouse(&format!(
        "SELECT DISTINCT symbol_identifier FROM {db}.{table} FINAL"
    ))
    .await
    .unwrap_or_default()
    .lines()
    .map(String::from)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn delayed_symbols_go_to_unqualified_and_show_their_availability() {
    // XOM delayed (`DPB`, as a live user without the subscription gets it), CL frozen (`ZB`);
    // AAPL and CVX real-time. The first frame comes twice, as at IB (the simulator's default).
    let lane = Lane::start(
        "availability_",
        SimBuilder::new(21).args(&["--availability", "XOM=DPB", "--availability", "CL=ZB"]),
        |c| c,
    )
    .unwrap();
    let db = lane.db().to_string();
    let ok = eventually(WAIT, || async {
        not_realtime_symbols(&db, "tick_market_data").await
            == BTreeSet::from(["CL".to_string(), "XOM".to_string()])
            && not_realtime_symbols(&db, "l2_market_data").await.len() == 2
            && stored_symbols(&db, TICK).await
                == BTreeSet::from(["AAPL".to_string(), "CVX".to_string()])
    })
    .await;
    assert!(
        ok,
        "tick unqualified: {:?}, l2 unqualified: {:?}, tick table: {:?}; logs in {}",
        not_realtime_symbols(&db, "tick_market_data").await,
        not_realtime_symbols(&db, "l2_market_data").await,
        stored_symbols(&db, TICK).await,
        lane.dir.display()
    );
    // No row of a delayed or frozen symbol in any real-time table.
    for table in [
        "tick_market_data",
        "l2_market_data",
        "l2_market_data_snapshot",
        "indicators_market_data",
    ] {
        let stored = stored_symbols(&db, table).await;
        assert!(
            !stored.contains("XOM") && !stored.contains("CL"),
            "{table}: {stored:?}"
        );
    }
    // Every trade of the ledger (real-time symbols only) is in the tick table.
    let trades = lane.sim.ledger_trades().unwrap();
    assert!(
        trades
            .iter()
            .all(|t| t.symbol == "AAPL" || t.symbol == "CVX")
    );

    let reply = lane.daemon.ctl("subscriptions", json!({})).await.unwrap();
    let by_symbol = |s: &str| -> (Value, Value) {
        let line = reply["result"]["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["symbol"] == s)
            .unwrap_or_else(|| panic!("{s} in {reply}"))
            .clone();
        (line["availability"].clone(), line["market_data"].clone())
    };
    assert_eq!(by_symbol("XOM"), (json!("DPB"), json!("delayed")));
    assert_eq!(by_symbol("CL"), (json!("ZB"), json!("frozen")));
    assert_eq!(by_symbol("AAPL"), (json!("RpB"), json!("realtime")));
    let ws = lane.daemon.actor_status("ib_websocket").await.unwrap();
    assert_eq!(ws["state"]["not_realtime_symbols"], json!(["CL", "XOM"]));
    assert!(
        ws["summary"]
            .as_str()
            .unwrap()
            .contains("not_realtime_symbols=2"),
        "{ws}"
    );

    for (symbol, availability) in [("XOM", "delayed"), ("CL", "frozen"), ("AAPL", "realtime")] {
        let labels = [("symbol", symbol), ("availability", availability)];
        let v = series(&lane, "marketlane_market_data_availability", &labels).await;
        assert_eq!(v, 1.0, "{symbol} {availability}");
    }
    assert!(
        series(
            &lane,
            "marketlane_not_realtime_rows_total",
            &[("category", "tick_market_data"), ("symbol", "XOM")]
        )
        .await
            > 0.0
    );
    assert_eq!(
        series(
            &lane,
            "marketlane_not_realtime_rows_total",
            &[("symbol", "AAPL")]
        )
        .await,
        0.0
    );
    let _ = clickhouse(&format!("DROP DATABASE {db}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_symbols_opening_quote_is_in_the_snapshot_table() {
    // CVX never moves after its first frame: IB sends only changes, so the first frame is
    // all there is. Its quote must be the current level 1.
    let lane = Lane::start(
        "opening_quote_",
        SimBuilder::new(22).args(&["--quiet-symbol", "CVX"]),
        |c| c,
    )
    .unwrap();
    let db = lane.db().to_string();
    let query = format!(
        "SELECT side, price, size FROM {db}.l2_market_data_snapshot FINAL \
         WHERE symbol_identifier = 'CVX' AND level = 1 ORDER BY side"
    );
    let until = Instant::now() + WAIT;
    let mut got = String::new();
    while Instant::now() < until {
        got = clickhouse(&query).await.unwrap_or_default();
        if got.lines().count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        got.lines().count(),
        2,
        "CVX level 1: {got:?}; logs in {}",
        lane.dir.display()
    );
    // The values are those of the first (and only) frame, as the simulator's ledger has them.
    // The running simulator flushes its ledger once a second: the quote may reach ClickHouse
    // before it reaches the file, so wait for it there too.
    let until = Instant::now() + WAIT;
    let quote: Value = loop {
        let ledger = std::fs::read_to_string(&lane.sim.ledger).unwrap_or_default();
        let found = ledger
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["kind"] == "quote" && v["conid"] == 5932);
        match found {
            Some(q) => break q,
            None if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            None => panic!(
                "CVX's opening quote is not in the ledger {}",
                lane.sim.ledger.display()
            ),
        }
    };
    let num = |v: &Value| v.as_f64().unwrap();
    let want = vec![
        (
            "ask".to_string(),
            num(&quote["ask"]),
            num(&quote["ask_size"]),
        ),
        (
            "bid".to_string(),
            num(&quote["bid"]),
            num(&quote["bid_size"]),
        ),
    ];
    let rows: Vec<(String, f64, f64)> = got
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (
                c[0].to_string(),
                c[1].parse().unwrap(),
                c[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, want);
    // Nothing moved: one quote per first frame (and per resubscription), never another
    // value; no trade of CVX, in the ledger or the table.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ledger = std::fs::read_to_string(&lane.sim.ledger).unwrap();
    let quotes: BTreeSet<String> = ledger
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "quote" && v["conid"] == 5932)
        .map(|v| {
            format!(
                "{} {} {} {}",
                v["bid"], v["ask"], v["bid_size"], v["ask_size"]
            )
        })
        .collect();
    assert_eq!(quotes.len(), 1, "CVX moved: {quotes:?}");
    assert!(
        lane.sim
            .ledger_trades()
            .unwrap()
            .iter()
            .all(|t| t.symbol != "CVX")
    );
    assert!(!stored_symbols(&db, TICK).await.contains("CVX"));
    let _ = clickhouse(&format!("DROP DATABASE {db}")).await;
}

/// The connector re-sends every `smd` each 2 s here. With `full_frame`, the simulator answers
/// each re-send with a full frame that repeats the last trade: the stored trades must still be
/// exactly the ledger's, by row id.
async fn resent_smd_doubles_no_trade(full_frame: bool) {
    let mut args = vec!["--trade-probability", "0.3"];
    if full_frame {
        args.push("--smd-resend-full-frame");
    }
    let record = std::env::temp_dir().join(format!(
        "{}.jsonl",
        marketlane_tests::unique("resend_frames_")
    ));
    let record_path = record.display().to_string();
    let mut lane = Lane::start(
        if full_frame {
            "resend_full_"
        } else {
            "resend_"
        },
        SimBuilder::new(23).args(&args),
        |c| {
            c.ib("resubscribe_interval", 2.0)
                .ib("record_path", record_path.as_str())
        },
    )
    .unwrap();
    let db = lane.db().to_string();
    // Long enough for several re-sends per symbol.
    tokio::time::sleep(Duration::from_secs(15)).await;
    lane.sim.stop();
    let expected: BTreeSet<String> = lane
        .sim
        .ledger_trades()
        .unwrap()
        .iter()
        .map(|t| t.row_id.clone())
        .collect();
    assert!(expected.len() > 10, "too few trades: {}", expected.len());
    let until = Instant::now() + WAIT;
    let mut stored = BTreeSet::new();
    while Instant::now() < until {
        stored = clickhouse(&format!("SELECT row_id FROM {db}.{TICK} FINAL"))
            .await
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        if stored.len() >= expected.len() {
            // A little longer: a doubled trade would arrive with the others.
            tokio::time::sleep(Duration::from_secs(2)).await;
            stored = clickhouse(&format!("SELECT row_id FROM {db}.{TICK} FINAL"))
                .await
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect();
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let phantoms: Vec<_> = stored.difference(&expected).collect();
    let lost: Vec<_> = expected.difference(&stored).collect();
    println!(
        "resend full_frame={full_frame}: ledger {} trades, stored {}, phantoms {}, lost {}",
        expected.len(),
        stored.len(),
        phantoms.len(),
        lost.len()
    );
    assert!(
        phantoms.is_empty() && lost.is_empty(),
        "phantoms {phantoms:?}, lost {lost:?}; logs in {}",
        lane.dir.display()
    );
    // No row id twice in Kafka either (before any deduplication).
    let ids: Vec<String> = lane
        .kafka_ticks()
        .iter()
        .map(|r| r["row_id"].as_str().unwrap().to_string())
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "a trade produced twice");
    // The frames the daemon received: full ones carry 55 (the symbol), which IB sends once.
    let mut full_frames: std::collections::BTreeMap<i64, usize> = Default::default();
    for line in std::fs::read_to_string(&record).unwrap().lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let Some(text) = rec["text"].as_str() else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        if frame.get("55").is_some() {
            let conid = frame["conid"].as_i64().unwrap_or_default();
            *full_frames.entry(conid).or_default() += 1;
        }
    }
    println!("full frames per conid: {full_frames:?}");
    assert_eq!(full_frames.len(), 4, "{full_frames:?}");
    for n in full_frames.values() {
        if full_frame {
            assert!(
                *n >= 4,
                "first frame twice, then one per re-send: {full_frames:?}"
            );
        } else {
            assert_eq!(*n, 2, "the first frame twice, no more: {full_frames:?}");
        }
    }
    let _ = std::fs::remove_file(&record);
    let _ = clickhouse(&format!("DROP DATABASE {db}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_frame_after_a_resent_smd_doubles_no_trade() {
    resent_smd_doubles_no_trade(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resent_smd_without_a_full_frame_loses_no_trade() {
    resent_smd_doubles_no_trade(false).await;
}
