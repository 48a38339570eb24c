//! The corpus of real Client Portal frames (`tests/fixtures/ib-real/`, sources in its
//! `SOURCES.md`) through `marketlane replay`: the same parser and normalizers as the daemon.
//! Each test asserts the rows (and quarantine records) the frames give. No local stack needed.

use std::collections::BTreeMap;
use std::time::Duration;

use marketlane_protocol::ib::{AuthStatus, Availability, LastPrice, field, parse_last_price};
use marketlane_tests::{run_marketlane, workspace_root};
use serde_json::Value;

/// `marketlane replay FILE --instrument …`: the printed lines, as JSON.
fn replay(file: &str, instruments: &[&str]) -> Vec<Value> {
    let path = workspace_root().join("tests/fixtures/ib-real").join(file);
    let path = path.to_str().unwrap().to_string();
    let mut args = vec!["replay", path.as_str()];
    for i in instruments {
        args.extend(["--instrument", i]);
    }
    let out = run_marketlane(&args, Duration::from_secs(60)).unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(category, reason_code)` → count of the quarantined records; rows count as `row`.
fn outcomes(lines: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        let category = l["category"].as_str().unwrap().to_string();
        let what = match l.get("quarantined") {
            Some(q) => q["reason_code"].as_str().unwrap().to_string(),
            None => "row".to_string(),
        };
        *m.entry((category, what)).or_default() += 1;
    }
    m
}

/// The row a `not_realtime` record keeps.
fn kept_row(line: &Value) -> Value {
    serde_json::from_str(line["quarantined"]["raw"].as_str().unwrap()).unwrap()
}

fn key(c: &str, r: &str) -> (String, String) {
    (c.to_string(), r.to_string())
}

/// A live account without a US market-data subscription (machdat/broker-gateway, AAPL,
/// 2026-04-30): every frame says `DPB`, delayed, in the first frame only. Nothing reaches a
/// real-time table; every row the frames would give is kept as `not_realtime`, the repeated
/// first frame (same `_updated`) gives nothing, and the first frame's last trade only seeds.
#[test]
fn delayed_aapl_frames_give_no_realtime_row() {
    let lines = replay("machdat-smd-single-2026-04-30.jsonl", &["265598=AAPL"]);
    let got = outcomes(&lines);
    let want: BTreeMap<_, _> = [
        (key("tick_market_data", "not_realtime"), 4),
        (key("l2_market_data", "not_realtime"), 8),
        (key("indicators_market_data", "not_realtime"), 3),
    ]
    .into();
    assert_eq!(got, want, "{lines:#?}");
    let trades: Vec<f64> = lines
        .iter()
        .filter(|l| l["category"] == "tick_market_data")
        .map(|l| kept_row(l)["price"].as_f64().unwrap())
        .collect();
    assert_eq!(trades, vec![271.68, 271.74, 271.73, 271.71]);
    // The opening quote is the first l2 record: bid 271.55, ask 271.66 at the first `_updated`.
    let first_quote: Vec<Value> = lines
        .iter()
        .filter(|l| l["category"] == "l2_market_data")
        .take(2)
        .map(kept_row)
        .collect();
    let mut sides: Vec<(String, f64, i64)> = first_quote
        .iter()
        .map(|r| {
            (
                r["side"].as_str().unwrap().to_string(),
                r["price"].as_f64().unwrap(),
                r["l2_time"].as_i64().unwrap(),
            )
        })
        .collect();
    sides.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        sides,
        vec![
            ("ask".into(), 271.66, 1_777_552_110_061_000_000),
            ("bid".into(), 271.55, 1_777_552_110_061_000_000)
        ]
    );
    let change: Vec<f64> = lines
        .iter()
        .filter(|l| l["category"] == "indicators_market_data")
        .map(|l| kept_row(l)["indicator_value"].as_f64().unwrap())
        .collect();
    assert_eq!(change, vec![0.56, 0.58, 0.57], "83 is a JSON number at IB");
    for l in &lines {
        let reason = l["quarantined"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("AAPL") && reason.contains("DPB"),
            "{reason}"
        );
    }
}

/// Five symbols subscribed at once (same recording session): each first frame comes twice;
/// the availability of each conid is kept across its deltas.
#[test]
fn five_delayed_symbols_keep_their_availability_across_deltas() {
    let lines = replay(
        "machdat-smd-multi-2026-04-30.jsonl",
        &[
            "265598=AAPL",
            "272093=MSFT",
            "3691937=AMZN",
            "208813720=GOOGL",
            "107113386=META",
        ],
    );
    assert!(
        lines
            .iter()
            .all(|l| l["quarantined"]["reason_code"] == "not_realtime"),
        "{lines:#?}"
    );
    let got = outcomes(&lines);
    // Trades in deltas: GOOGL 374.90, MSFT 417.89 and 417.70, META 606.00, AAPL 271.79 and
    // 271.80. Quotes: 5 opening quotes and 7 quote deltas, two sides each. Statistics (83):
    // 5 opening values and 5 deltas.
    let want: BTreeMap<_, _> = [
        (key("tick_market_data", "not_realtime"), 6),
        (key("l2_market_data", "not_realtime"), 24),
        (key("indicators_market_data", "not_realtime"), 10),
    ]
    .into();
    assert_eq!(got, want);
}

/// IB's own example frame (Web API documentation): real-time (`RpB`), bid and ask sizes that
/// IB divides by 100 for US stocks. Its quote gives level-1 rows at once; its last trade only
/// seeds.
#[test]
fn documented_realtime_frame_gives_the_opening_quote() {
    let lines = replay("ib-docs-smd-example.jsonl", &["8314=XYZ"]);
    assert_eq!(
        outcomes(&lines),
        [(key("l2_market_data", "row"), 2)].into(),
        "{lines:#?}"
    );
    let mut rows: Vec<(String, f64, f64, String)> = lines
        .iter()
        .map(|l| {
            let r = &l["row"];
            (
                r["side"].as_str().unwrap().to_string(),
                r["price"].as_f64().unwrap(),
                r["size"].as_f64().unwrap(),
                r["size_unit"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rows,
        vec![
            ("ask".into(), 189.61, 500.0, "100_shares".into()),
            ("bid".into(), 189.56, 200.0, "100_shares".into()),
        ]
    );
    assert_eq!(lines[0]["row"]["l2_time"], 1_712_596_911_593_000_000_i64);
}

fn fixture(file: &str) -> Value {
    let path = workspace_root().join("tests/fixtures/ib-real").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A live gateway's `/iserver/auth/status`: healthy as the session actor judges it.
#[test]
fn real_auth_status_is_a_healthy_session() {
    let st: AuthStatus =
        serde_json::from_value(fixture("machdat-rest-auth-status-2026-04-25.json")).unwrap();
    assert!(st.is_healthy(), "{st:?}");
    assert_eq!(st.established, Some(true));
    assert_eq!(st.fail.as_deref(), Some(""));
}

/// A Saturday snapshot: frozen (`ZB`) prices are no real-time data, and a contract without
/// data says `N/A`, which no price parser may take for a number.
#[test]
fn real_snapshot_says_frozen_and_na() {
    let answer = fixture("machdat-rest-snapshot-2026-04-25.json");
    let items = answer.as_array().unwrap();
    let codes: Vec<Option<(String, bool, &str)>> = items
        .iter()
        .map(|i| {
            i.get(field::AVAILABILITY)
                .and_then(Availability::parse)
                .map(|a| (a.code().to_string(), a.is_realtime(), a.label()))
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            Some(("ZB".into(), false, "frozen")),
            Some(("ZB".into(), false, "frozen")),
            None
        ]
    );
    assert_eq!(
        parse_last_price(&items[0]["31"]).unwrap(),
        LastPrice::Trade(270.90)
    );
    assert!(
        parse_last_price(&items[2]["31"]).is_err(),
        "N/A is no price"
    );
}
