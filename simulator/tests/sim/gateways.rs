//! Several gateways in one process (`--gateway`): one market, clock and ledger; sessions,
//! pacing, line caps, sockets and faults per gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use marketlane_simulator::{Fault, GatewaySpec, LedgerEntry, SimConfig, SimHandle};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

const XOM: u32 = 13_977;
const FIELDS: [&str; 6] = ["31", "7059", "84", "86", "85", "88"];

/// A gateway's trades: (conid, updated) → (price, size).
type Trades = BTreeMap<(u32, i64), (f64, f64)>;

/// A simulator with the primary gateway (user1) and a second one, user2.
async fn two(tweak: impl FnOnce(&mut SimConfig)) -> SimHandle {
    start(|c| {
        c.speed = 10.0;
        c.gateways = vec![GatewaySpec {
            listen: "127.0.0.1:0".parse().expect("addr"),
            username: "user2".into(),
            account: "DU7654321".into(),
        }];
        tweak(c);
    })
    .await
}

/// A logged-in websocket at gateway `user` (its own cookie jar, like a separate pod).
async fn connect(h: &SimHandle, user: &str) -> Ws {
    let g = h.gateway(user).expect("gateway");
    let session = login_at(&client(), &g.base_url()).await;
    ws_session_at(&g.ws_url(), &session).await
}

/// What a client knows of a conid after each frame: the deltas merged over the first (full)
/// frame, keyed by the frame's `_updated`.
fn states(frames: &[Value]) -> BTreeMap<i64, BTreeMap<String, Value>> {
    let mut state = BTreeMap::new();
    let mut out = BTreeMap::new();
    for f in frames {
        for field in FIELDS {
            if let Some(v) = f.get(field) {
                state.insert(field.to_string(), v.clone());
            }
        }
        out.insert(f["_updated"].as_i64().expect("_updated"), state.clone());
    }
    out
}

/// Waits until the socket ends (a dropped connection or a close); false if it stays open.
async fn ends(ws: &mut Ws, ms: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test]
async fn the_same_conid_carries_the_same_update_on_both_gateways() {
    let h = two(|_| {}).await;
    assert_eq!(h.gateways().len(), 2);
    assert_ne!(h.gateways()[0].local_addr(), h.gateways()[1].local_addr());
    let mut a = connect(&h, "user1").await;
    let mut b = connect(&h, "user2").await;
    send(&mut a, &smd(AAPL, &FIELDS)).await;
    send(&mut b, &smd(AAPL, &FIELDS)).await;
    let (fa, fb) = tokio::join!(
        collect(&mut a, "smd+265598", 1_500),
        collect(&mut b, "smd+265598", 1_500)
    );
    let (sa, sb) = (states(&fa), states(&fb));
    let common: Vec<i64> = sa.keys().filter(|u| sb.contains_key(u)).copied().collect();
    assert!(
        common.len() >= 5,
        "too few common updates: {} of {} / {}",
        common.len(),
        sa.len(),
        sb.len()
    );
    for u in &common {
        assert_eq!(sa[u], sb[u], "update {u} differs between the gateways");
        assert!(sa[u].contains_key("31"), "{:?}", sa[u]);
    }
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_fault_at_one_gateway_leaves_the_other_alone() {
    let h = two(|_| {}).await;
    let (ga, gb) = (
        h.gateway("user1").expect("a"),
        h.gateway("user2").expect("b"),
    );
    assert_ne!(ga.session_id(), gb.session_id(), "one session per user");
    let mut a = connect(&h, "user1").await;
    let mut b = connect(&h, "user2").await;
    send(&mut a, &smd(AAPL, &["31", "84"])).await;
    send(&mut b, &smd(AAPL, &["31", "84"])).await;
    assert!(!collect(&mut a, "smd", 300).await.is_empty());
    assert!(!collect(&mut b, "smd", 300).await.is_empty());

    // The admin endpoint of gateway B acts on B only.
    let r = client()
        .post(format!("{}/sim/fault", gb.root_url()))
        .body(r#"{"kind":"drop_tcp"}"#)
        .send()
        .await
        .expect("fault");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        ends(&mut b, 2_000).await,
        "gateway B's socket was not dropped"
    );
    let after = collect(&mut a, "smd", 500).await;
    assert!(
        !after.is_empty(),
        "gateway A's socket stopped with B's fault"
    );
    assert_eq!(ga.open_connections(), 1);

    // B's session loses authentication; A's stays, and A's socket hears nothing of it.
    gb.inject(Fault::ExpireSession);
    let status = |url: String| async move {
        let v: Value = client()
            .get(url)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        v
    };
    let sb = status(format!("{}/sim/status", gb.root_url())).await;
    let sa = status(format!("{}/sim/status", ga.root_url())).await;
    assert_eq!(
        (sb["username"].as_str(), sb["authenticated"].as_bool()),
        (Some("user2"), Some(false)),
        "{sb}"
    );
    assert_eq!(
        (sa["username"].as_str(), sa["authenticated"].as_bool()),
        (Some("user1"), Some(true)),
        "{sa}"
    );
    assert!(
        collect(&mut a, "sts", 500).await.is_empty(),
        "A got B's sts"
    );

    // A's session id does not open a socket at B: they are different users.
    let (mut x, _) = tokio_tungstenite::connect_async(gb.ws_url())
        .await
        .expect("ws");
    assert_eq!(
        next_json(&mut x, 1_000).await.expect("frame")["message"],
        "waiting for session"
    );
    send(
        &mut x,
        &format!(r#"{{"session":"{}"}}"#, ga.session_id().expect("a session")),
    )
    .await;
    assert_eq!(
        next_json(&mut x, 1_000).await.expect("frame")["message"],
        "waiting for session"
    );
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn pacing_and_the_penalty_box_are_per_gateway() {
    // Real-time clock: two tickles back to back are surely within IB's 1/s tickle window.
    let h = two(|c| {
        c.speed = 1.0;
        c.pacing = true;
    })
    .await;
    let (ga, gb) = (
        h.gateway("user1").expect("a"),
        h.gateway("user2").expect("b"),
    );
    let (ca, cb) = (client(), client());
    assert_eq!(
        post_url(&cb, &format!("{}/tickle", gb.base_url())).await.0,
        200
    );
    assert_eq!(
        post_url(&cb, &format!("{}/tickle", gb.base_url())).await.0,
        429
    );
    assert!(gb.penalty_until_ms() > h.sim_time_ms(), "B is in the box");
    assert_eq!(
        post_url(&cb, &format!("{}/iserver/auth/status", gb.base_url()))
            .await
            .0,
        429
    );
    assert_eq!(ga.penalty_until_ms(), 0, "A is not");
    assert_eq!(
        post_url(&ca, &format!("{}/tickle", ga.base_url())).await.0,
        200
    );
    assert_eq!(
        post_url(&ca, &format!("{}/iserver/auth/status", ga.base_url()))
            .await
            .0,
        200
    );
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_line_cap_is_per_gateway() {
    let h = two(|c| c.line_cap = Some(1)).await;
    let mut a = connect(&h, "user1").await;
    let mut b = connect(&h, "user2").await;
    send(&mut a, &smd(AAPL, &["31"])).await;
    assert!(!collect(&mut a, "smd+265598", 300).await.is_empty());
    send(&mut b, &smd(XOM, &["31"])).await;
    let fb = collect(&mut b, "smd+13977", 300).await;
    assert!(
        !fb.is_empty() && fb.iter().all(|f| f.get("error").is_none()),
        "B's first line refused: {fb:?}"
    );
    send(&mut a, &smd(XOM, &["31"])).await;
    let fa = collect(&mut a, "smd+13977", 300).await;
    assert_eq!(fa.first().map(|f| f["code"].clone()), Some(101.into()));
    assert_eq!(h.gateway("user1").expect("a").lines(), 1);
    assert_eq!(h.gateway("user2").expect("b").lines(), 1);
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn one_ledger_records_which_gateway_sent_each_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.jsonl");
    let p = path.clone();
    let h = two(move |c| c.ledger_path = Some(p)).await;
    let mut a = connect(&h, "user1").await;
    let mut b = connect(&h, "user2").await;
    send(&mut a, &smd(AAPL, &FIELDS)).await;
    send(&mut b, &smd(AAPL, &FIELDS)).await;
    let _ = tokio::join!(collect(&mut a, "smd", 1_500), collect(&mut b, "smd", 1_500));
    drop((a, b));
    let summary = h.shutdown().await.expect("shutdown");
    let text = std::fs::read_to_string(&path).expect("ledger file");
    let lines: Vec<LedgerEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("ledger line"))
        .collect();
    let mut by_gateway: BTreeMap<&str, Trades> = BTreeMap::new();
    for e in &lines {
        if let LedgerEntry::Trade {
            conid,
            updated,
            price,
            size,
            gateway,
            ..
        } = e
        {
            by_gateway
                .entry(gateway.as_str())
                .or_default()
                .insert((*conid, *updated), (*price, *size));
        }
    }
    assert_eq!(
        by_gateway.keys().copied().collect::<Vec<_>>(),
        ["user1", "user2"],
        "trades of both gateways in one file"
    );
    let (ta, tb) = (&by_gateway["user1"], &by_gateway["user2"]);
    let both: Vec<_> = ta.keys().filter(|k| tb.contains_key(k)).collect();
    assert!(!both.is_empty(), "no trade sent by both gateways");
    for k in both {
        assert_eq!(ta[k], tb[k], "trade {k:?} differs between the gateways");
    }
    // Reconciliation's view: a trade sent by both gateways is one (conid, updated).
    let unique: BTreeSet<(u32, i64)> = ta.keys().chain(tb.keys()).copied().collect();
    assert_eq!(summary.unique_trades, unique.len() as u64);
    assert!(summary.trades > summary.unique_trades);
    assert!(
        lines
            .iter()
            .all(|e| ["user1", "user2"].contains(&e.gateway()))
    );
}
