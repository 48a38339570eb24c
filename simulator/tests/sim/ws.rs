use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

#[tokio::test]
async fn auth_greeting_heartbeat_tic() {
    // speed 20: the 10 s heartbeat comes every 500 ms real.
    let h = start(|c| c.speed = 20.0).await;
    let c = client();
    let session = login(&c, &h).await;

    // No auth: waiting for session, also in reply to anything else.
    let (mut ws, _) = tokio_tungstenite::connect_async(h.ws_url())
        .await
        .expect("connect");
    assert_eq!(
        next_json(&mut ws, 1000).await.expect("frame")["message"],
        "waiting for session"
    );
    send(&mut ws, "tic").await;
    assert_eq!(
        next_json(&mut ws, 1000).await.expect("frame")["message"],
        "waiting for session"
    );
    send(&mut ws, r#"{"session":"wrong"}"#).await;
    assert_eq!(
        next_json(&mut ws, 1000).await.expect("frame")["message"],
        "waiting for session"
    );

    // The session frame: system, act, sts within 250 ms.
    let t0 = Instant::now();
    send(&mut ws, &format!(r#"{{"session":"{session}"}}"#)).await;
    let sys = next_json(&mut ws, 250).await.expect("system");
    let act = next_json(&mut ws, 250).await.expect("act");
    let sts = next_json(&mut ws, 250).await.expect("sts");
    assert!(t0.elapsed() < Duration::from_millis(250));
    assert_eq!(sys["topic"], "system");
    assert_eq!(sys["success"], "user1");
    assert_eq!(act["topic"], "act");
    assert_eq!(act["args"]["selectedAccount"], "DU1234567");
    assert_eq!(sts["args"]["authenticated"], true);
    assert_eq!(sts["args"]["competing"], false);

    let hb = next_json(&mut ws, 1500).await.expect("hb");
    assert_eq!(hb["topic"], "system");
    assert!(hb["hb"].is_i64(), "{hb}");

    send(&mut ws, "tic").await;
    let mut got = None;
    for _ in 0..3 {
        let v = next_json(&mut ws, 1000).await.expect("frame");
        if v["topic"] == "tic" {
            got = Some(v);
            break;
        }
    }
    let tic = got.expect("tic reply");
    assert_eq!(tic["alive"], true);
    assert_eq!(tic["id"].as_str(), Some(session.as_str()));
    assert!(tic["lastAccessed"].is_i64());
    send(&mut ws, "ech+hb").await;
    let e = collect(&mut ws, "ech+hb", 300).await;
    assert_eq!(e.len(), 1);

    // Cookie auth: ibind's api={"session":…} and the x-sess-uuid cookie.
    let mut ws2 = ws_cookie(&h, &format!(r#"api={{"session":"{session}"}}"#)).await;
    assert_eq!(
        next_json(&mut ws2, 500).await.expect("system")["topic"],
        "system"
    );
    let r = c
        .post(format!("{}/tickle", h.base_url()))
        .send()
        .await
        .expect("tickle");
    let set = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    let pair = set.split(';').next().expect("pair").to_string();
    let mut ws3 = ws_cookie(&h, &pair).await;
    assert_eq!(
        next_json(&mut ws3, 500).await.expect("system")["topic"],
        "system"
    );
    h.shutdown().await.expect("shutdown");
}

/// Checks the frames one connection received against the ledger lines for it.
fn check_frames_against_ledger(
    frames: &[Value],
    ledger: &[marketlane_simulator::LedgerEntry],
    conn: u64,
) {
    use marketlane_simulator::LedgerEntry;
    assert!(frames.len() > 5, "too few frames: {}", frames.len());
    let trades: Vec<(i64, f64, f64)> = ledger
        .iter()
        .filter_map(|e| match e {
            LedgerEntry::Trade {
                updated,
                price,
                size,
                conn: c,
                ..
            } if *c == conn => Some((*updated, *price, *size)),
            _ => None,
        })
        .collect();
    let mut last_31 = None;
    let mut last_7059 = None;
    let mut expected = Vec::new();
    let mut prev_updated = 0;
    for (i, f) in frames.iter().enumerate() {
        let updated = f["_updated"].as_i64().expect("_updated");
        assert!(updated > prev_updated, "_updated strictly increasing");
        prev_updated = updated;
        if let Some(v) = f.get("31") {
            last_31 = num(v);
        }
        if let Some(v) = f.get("7059") {
            last_7059 = num(v);
        }
        if i > 0 && is_trade_frame(f) {
            expected.push((updated, last_31.expect("price"), last_7059.expect("size")));
        }
    }
    // The ledger records a frame when it is sent; the client stops reading before its socket
    // closes, so frames sent after its last read may be in the ledger only.
    let sent_while_reading: Vec<(i64, f64, f64)> = trades
        .iter()
        .filter(|t| t.0 <= prev_updated)
        .copied()
        .collect();
    assert_eq!(
        expected, sent_while_reading,
        "ledger trades = delta frames carrying a trade"
    );
    // The first frame is never ledgered.
    let first = frames[0]["_updated"].as_i64().expect("_updated");
    assert!(!trades.iter().any(|t| t.0 == first));
}

#[tokio::test]
async fn smd_full_then_delta_matches_ledger() {
    // speed 10: a 500 ms sim frame interval is 50 ms real.
    let h = start(|c| {
        // One first frame: these checks read the deltas (the repeat has its own test).
        c.repeat_first_frame = false;
        c.speed = 10.0;
        c.status_probability = 0.05;
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    let fields = [
        "31", "84", "85", "86", "88", "7059", "55", "83", "87", "7762", "70", "71", "7295", "7296",
        "7741", "82", "7635",
    ];
    send(&mut ws, &smd(AAPL, &fields)).await;
    let frames = collect(&mut ws, &format!("smd+{AAPL}"), 2_000).await;
    let first = &frames[0];
    for f in fields {
        assert!(first.get(f).is_some(), "first frame lacks {f}: {first}");
    }
    for k in [
        "_updated",
        "conid",
        "conidEx",
        "server_id",
        "6119",
        "6509",
        "topic",
    ] {
        assert!(first.get(k).is_some(), "first frame lacks {k}");
    }
    assert_eq!(first["conid"], AAPL);
    assert_eq!(first["conidEx"], AAPL.to_string());
    assert_eq!(first["6509"], "RpB");
    assert!(first["83"].is_number());
    for f in fields.iter().filter(|f| **f != "83") {
        assert!(first[*f].is_string(), "{f} must be a string: {first}");
    }
    // Deltas: never the unchanging symbol, always the meta fields.
    for d in &frames[1..] {
        assert!(d.get("55").is_none(), "delta repeats 55: {d}");
        for k in ["_updated", "conid", "conidEx", "server_id", "6119", "topic"] {
            assert!(d.get(k).is_some(), "delta lacks {k}");
        }
    }
    assert!(frames[1..].iter().any(is_trade_frame), "some trades");
    // Let the in-flight frames land in the ledger, then compare.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(100)).await;
    check_frames_against_ledger(&frames, &h.ledger().entries(), 1);
    let quotes = h
        .ledger()
        .entries()
        .iter()
        .filter(|e| matches!(e, marketlane_simulator::LedgerEntry::Quote { .. }))
        .count();
    assert!(quotes > 0);
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn two_clients_share_updates() {
    let h = start(|c| {
        // One first frame: these checks read the deltas (the repeat has its own test).
        c.repeat_first_frame = false;
        c.speed = 10.0;
        c.trade_probability = 0.9;
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let (_, fut) = get(&c, &h, "/trsrv/futures?symbols=CL").await;
    let cl = fut["CL"][0]["conid"].as_u64().expect("front month") as u32;
    let mut a = ws_session(&h, &session).await;
    let mut b = ws_session(&h, &session).await;
    let fields = ["31", "7059", "84", "86"];
    send(&mut a, &smd(cl, &fields)).await;
    send(&mut b, &smd(cl, &fields)).await;
    let topic = format!("smd+{cl}");
    let (fa, fb) = tokio::join!(
        collect(&mut a, &topic, 1_500),
        collect(&mut b, &topic, 1_500)
    );
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ledger = h.ledger().entries();
    check_frames_against_ledger(&fa, &ledger, 1);
    check_frames_against_ledger(&fb, &ledger, 2);
    let ua: std::collections::BTreeSet<i64> = fa[1..]
        .iter()
        .filter(|f| is_trade_frame(f))
        .map(|f| f["_updated"].as_i64().unwrap_or(0))
        .collect();
    let ub: std::collections::BTreeSet<i64> = fb[1..]
        .iter()
        .filter(|f| is_trade_frame(f))
        .map(|f| f["_updated"].as_i64().unwrap_or(0))
        .collect();
    let common = ua.intersection(&ub).count();
    assert!(common >= 5, "same trades, same _updated: {common}");
    // Where both saw a trade at the same _updated, they saw the same price and size.
    for u in ua.intersection(&ub) {
        let pa: Vec<_> = ledger.iter().filter(|e| e.updated() == *u).collect();
        assert_eq!(
            pa.iter()
                .filter(|e| matches!(e, marketlane_simulator::LedgerEntry::Trade { .. }))
                .count(),
            2
        );
    }
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn subscription_expires_without_resend() {
    // Expiry 5 s sim = 250 ms real at speed 20.
    let h = start(|c| {
        c.speed = 20.0;
        c.subscription_expiry_secs = 5;
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31", "84", "86", "55"])).await;
    let early = collect(&mut ws, "smd", 200).await;
    assert!(!early.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Drain what was in flight, then silence.
    let _ = collect(&mut ws, "smd", 100).await;
    let late = collect(&mut ws, "smd", 500).await;
    assert!(
        late.is_empty(),
        "expired subscription still sends: {}",
        late.len()
    );
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn resend_keeps_subscription_alive_without_new_full_frame() {
    let h = start(|c| {
        // One first frame: these checks read the deltas (the repeat has its own test).
        c.repeat_first_frame = false;
        c.speed = 20.0;
        c.subscription_expiry_secs = 10;
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31", "84", "86", "55"])).await;
    let mut frames = Vec::new();
    // 800 ms real = 16 s sim, re-sending every ~2 s sim; the last re-send adds field 7295.
    // Without re-sends the subscription would end after 10 s sim (500 ms real).
    for i in 0..8 {
        frames.extend(collect(&mut ws, "smd", 100).await);
        let extra: &[&str] = if i == 7 { &["7295"] } else { &[] };
        let mut f = vec!["31", "84"];
        f.extend_from_slice(extra);
        send(&mut ws, &smd(AAPL, &f)).await;
    }
    let tail = collect(&mut ws, "smd", 300).await;
    assert!(!tail.is_empty(), "alive after 16 s sim");
    frames.extend(tail);
    let full = frames.iter().filter(|f| f.get("55").is_some()).count();
    assert_eq!(full, 1, "only the very first frame is full");
    assert!(
        frames.iter().any(|f| f.get("7295").is_some()),
        "added field shows up"
    );
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn subscriptions_lost_on_reconnect() {
    let h = start(|c| c.speed = 10.0).await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31", "84"])).await;
    assert!(!collect(&mut ws, "smd", 300).await.is_empty());
    ws.close(None).await.expect("close");
    drop(ws);
    let mut ws = ws_session(&h, &session).await;
    let frames = collect(&mut ws, "smd", 500).await;
    assert!(
        frames.is_empty(),
        "a new connection starts without subscriptions"
    );
    // umd ends a subscription too.
    send(&mut ws, &smd(AAPL, &["31"])).await;
    assert!(!collect(&mut ws, "smd", 300).await.is_empty());
    send(&mut ws, &format!("umd+{AAPL}+{{}}")).await;
    let _ = collect(&mut ws, "smd", 100).await;
    assert!(collect(&mut ws, "smd", 300).await.is_empty());
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn book_ladder_and_ledger() {
    let h = start(|c| c.speed = 10.0).await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &format!("sbd+DU1234567+{AAPL}")).await;
    let books = collect(&mut ws, "sbd", 400).await;
    assert!(!books.is_empty());
    let b = &books[0];
    assert_eq!(b["topic"], format!("sbd+DU1234567+{AAPL}"));
    let rows = b["data"].as_array().expect("data");
    assert!(rows.len() >= 10);
    assert_eq!(rows.iter().filter(|r| r.get("bid").is_some()).count(), 5);
    assert_eq!(rows.iter().filter(|r| r.get("ask").is_some()).count(), 5);
    assert_eq!(rows.iter().filter(|r| r["focus"] == 1).count(), 1, "{b}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["row"], i);
        assert!(r["price"].is_string());
        if let Some(s) = r.get("bid") {
            assert!(s.is_string());
        }
    }
    send(&mut ws, "ubd+DU1234567").await;
    let _ = collect(&mut ws, "sbd", 100).await;
    assert!(collect(&mut ws, "sbd", 300).await.is_empty());
    let summary = h.ledger().summary();
    assert!(summary.books as usize >= books.len());
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn line_cap() {
    let h = start(|c| c.line_cap = Some(2)).await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31"])).await;
    send(&mut ws, &smd(13_977, &["31"])).await;
    send(&mut ws, &smd(5_932, &["31"])).await;
    let mut err = None;
    for _ in 0..10 {
        match next_json(&mut ws, 1_500).await {
            Some(v) if v.get("error").is_some() => {
                err = Some(v);
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    let err = err.expect("over-cap error frame");
    assert_eq!(err["topic"], "smd+5932");
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn ledger_file_flushed_on_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.jsonl");
    let p2 = path.clone();
    let h = start(move |c| {
        c.speed = 10.0;
        c.ledger_path = Some(p2);
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31", "7059", "84", "86"])).await;
    let _ = collect(&mut ws, "smd", 500).await;
    let entries = h.ledger().entries();
    drop(ws);
    let summary = h.shutdown().await.expect("shutdown");
    let text = std::fs::read_to_string(&path).expect("ledger file");
    let lines: Vec<marketlane_simulator::LedgerEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("ledger line"))
        .collect();
    assert!(lines.len() >= entries.len());
    assert_eq!(
        lines.len() as u64,
        summary.trades + summary.quotes + summary.books
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(r#"{"kind":"trade","conid":265598,"symbol":"AAPL","updated":"#))
    );
}

#[tokio::test]
async fn non_text_frames_are_not_json() {
    // Guard for the helpers: a binary frame is surfaced as a raw message.
    let h = start(|_| {}).await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    h.inject(marketlane_simulator::Fault::NonUtf8Frame);
    match next_msg(&mut ws, 1000).await {
        Some(Message::Binary(b)) => assert!(std::str::from_utf8(&b).is_err()),
        other => panic!("expected a binary frame, got {other:?}"),
    }
    h.inject(marketlane_simulator::Fault::MalformedFrame);
    match next_msg(&mut ws, 1000).await {
        Some(Message::Text(t)) => assert!(serde_json::from_str::<Value>(t.as_str()).is_err()),
        other => panic!("expected a text frame, got {other:?}"),
    }
    let raw = r#"{"topic":"smd+265598","conid":265598,"_updated":1,"31":"1.5","7059":""}"#;
    h.inject(marketlane_simulator::Fault::RawFrame { text: raw.into() });
    match next_msg(&mut ws, 1000).await {
        Some(Message::Text(t)) => assert_eq!(t.as_str(), raw),
        other => panic!("expected the raw frame, got {other:?}"),
    }
    h.shutdown().await.expect("shutdown");
}

/// `--smd-resend-full-frame`: a re-sent `smd` brings a full frame (the symbol, 55, again) that
/// repeats the last trade but is no ledgered trade; `--repeat-first-frame`: the first frame
/// twice, with one `_updated`; `--availability`: the symbol's 6509, and no ledger line for a
/// symbol whose data is not real-time.
#[tokio::test]
async fn resend_full_frame_repeat_and_availability_options() {
    let h = start(|c| {
        c.speed = 20.0;
        c.trade_probability = 0.9;
        c.status_probability = 0.0;
        c.smd_resend_full_frame = true;
        c.repeat_first_frame = true;
        c.availability = vec!["XOM=DPB".parse().expect("spec")];
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31", "84", "86", "55", "7059"])).await;
    const XOM: u32 = 13_977;
    send(&mut ws, &smd(XOM, &["31", "84", "86", "55", "7059"])).await;
    let mut frames = collect(&mut ws, "smd", 300).await;
    send(&mut ws, &smd(AAPL, &["31"])).await;
    frames.extend(collect(&mut ws, "smd", 300).await);
    let aapl: Vec<&Value> = frames.iter().filter(|f| f["conid"] == AAPL).collect();
    let xom: Vec<&Value> = frames.iter().filter(|f| f["conid"] == XOM).collect();
    assert_eq!(aapl[0], aapl[1], "the first frame twice");
    assert_eq!(aapl[0]["6509"], "RpB");
    assert_eq!(xom[0]["6509"], "DPB");
    let full = aapl.iter().filter(|f| f.get("55").is_some()).count();
    assert_eq!(
        full, 3,
        "first frame, its repeat, and the frame after the re-send"
    );
    drop(ws);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let entries = h.ledger().entries();
    assert!(
        entries.iter().all(|e| e.conid() != XOM),
        "a delayed symbol is not ledgered"
    );
    // A full frame is a ledgered trade only if its last price or size differ from what the
    // connection was sent before; the first frame (and its repeat) never.
    let traded: Vec<i64> = entries
        .iter()
        .filter_map(|e| match e {
            marketlane_simulator::LedgerEntry::Trade { updated, .. } => Some(*updated),
            _ => None,
        })
        .collect();
    let mut last: (Option<Value>, Option<Value>) = (None, None);
    for (i, f) in aapl.iter().enumerate() {
        let now = (f.get("31").cloned(), f.get("7059").cloned());
        let differs = (now.0.is_some() && now.0 != last.0) || (now.1.is_some() && now.1 != last.1);
        let ledgered = traded.contains(&f["_updated"].as_i64().unwrap());
        if i < 2 {
            assert!(!ledgered, "first frame ledgered");
        } else if f.get("55").is_some() {
            assert_eq!(ledgered, differs, "full frame {f}");
        }
        last = (now.0.or(last.0), now.1.or(last.1));
    }
    h.shutdown().await.expect("shutdown");
}
