use serde_json::Value;

use crate::common::*;

/// Frames with the time-dependent meta fields removed.
fn content(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .map(|f| {
            let mut f = f.clone();
            if let Some(o) = f.as_object_mut() {
                o.remove("_updated");
            }
            f
        })
        .collect()
}

#[tokio::test]
async fn same_seed_same_market() {
    let run = || async {
        let h = start(|c| {
            c.speed = 10.0;
            c.seed = 99;
        })
        .await;
        let c = client();
        let session = login(&c, &h).await;
        let mut ws = ws_session(&h, &session).await;
        send(
            &mut ws,
            &smd(13_977, &["31", "84", "86", "85", "88", "7059"]),
        )
        .await;
        let frames = collect(&mut ws, "smd", 600).await;
        h.shutdown().await.expect("shutdown");
        content(&frames)
    };
    let (a, b) = tokio::join!(run(), run());
    let n = a.len().min(b.len());
    assert!(n >= 5);
    assert_eq!(a[..n], b[..n]);
}

#[tokio::test]
async fn halted_and_prior_close_prices_are_not_trades() {
    let h = start(|c| {
        // One first frame: these checks read the deltas (the repeat has its own test).
        c.repeat_first_frame = false;
        c.speed = 10.0;
        c.status_probability = 0.3;
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31", "7059", "84", "86"])).await;
    let frames = collect(&mut ws, "smd", 1_500).await;
    drop(ws);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let prefixed: Vec<&Value> = frames[1..]
        .iter()
        .filter(|f| f["31"].as_str().is_some_and(|s| s.starts_with(['H', 'C'])))
        .collect();
    assert!(!prefixed.is_empty(), "some H/C prices");
    for f in &prefixed {
        assert!(
            f.get("7059").is_none(),
            "H/C frame carries no new size: {f}"
        );
    }
    let trade_updates: Vec<i64> = h.ledger().trades().iter().map(|e| e.updated()).collect();
    for f in &prefixed {
        let u = f["_updated"].as_i64().unwrap_or(0);
        assert!(!trade_updates.contains(&u), "H/C frame ledgered");
    }
    let expected = frames[1..].iter().filter(|f| is_trade_frame(f)).count();
    // The ledger records a frame when it is sent; the client stops reading before its socket
    // closes, so frames sent after its last read may be in the ledger only.
    let last_read = frames
        .last()
        .and_then(|f| f["_updated"].as_i64())
        .unwrap_or(0);
    let sent_while_reading = trade_updates.iter().filter(|u| **u <= last_read).count();
    assert_eq!(expected, sent_while_reading);
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn synthetic_symbols_stream() {
    let h = start(|c| {
        c.speed = 10.0;
        c.synthetic_symbols = 50;
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    for conid in 900_001..=900_050u32 {
        send(&mut ws, &smd(conid, &["31", "84", "86", "7059", "55"])).await;
    }
    let frames = collect(&mut ws, "smd", 700).await;
    let conids: std::collections::BTreeSet<u64> =
        frames.iter().filter_map(|f| f["conid"].as_u64()).collect();
    assert_eq!(conids.len(), 50);
    assert!(frames.iter().any(|f| f["55"] == "SYM0050"));
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn conidless_deltas_keep_topic() {
    let h = start(|c| {
        c.speed = 10.0;
        c.conidless_probability = 0.5;
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31", "84", "86"])).await;
    let frames = collect(&mut ws, "smd", 800).await;
    assert!(frames[0].get("conid").is_some(), "first frame keeps conid");
    let without = frames.iter().filter(|f| f.get("conid").is_none()).count();
    assert!(
        without > 0 && without < frames.len(),
        "{without} of {}",
        frames.len()
    );
    assert!(frames.iter().all(|f| f["topic"] == format!("smd+{AAPL}")));
    h.shutdown().await.expect("shutdown");
}
