use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use marketlane_simulator::Fault;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::ProtocolError};

use crate::common::*;

/// Frames on `ws` until `pred` matches one (or `ms` pass).
async fn wait_for(ws: &mut Ws, ms: u64, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        let v = next_json(ws, left.as_millis() as u64).await?;
        if pred(&v) {
            return Some(v);
        }
    }
}

#[tokio::test]
async fn drop_tcp_without_close_frame() {
    let h = start(|c| c.speed = 10.0).await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31"])).await;
    assert!(!collect(&mut ws, "smd", 200).await.is_empty());
    h.inject(Fault::DropTcp);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        assert!(Instant::now() < deadline, "socket not dropped");
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) => panic!("got a close frame"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))))
            | Ok(None) => break,
            Ok(Some(Err(e))) => {
                let s = e.to_string();
                assert!(!s.contains("close"), "unexpected error {s}");
                break;
            }
            Err(_) => panic!("no drop within 2 s"),
        }
    }
    // A new connection works, without the old subscriptions.
    let mut ws = ws_session(&h, &session).await;
    assert!(collect(&mut ws, "smd", 300).await.is_empty());
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn stop_heartbeats_keeps_socket_open_but_silent() {
    let h = start(|c| c.speed = 20.0).await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31", "84"])).await;
    assert!(
        wait_for(&mut ws, 1_500, |v| v["hb"].is_i64())
            .await
            .is_some()
    );
    h.inject(Fault::StopHeartbeats);
    let _ = collect(&mut ws, "", 100).await;
    send(&mut ws, "tic").await;
    // 1.5 s real = 30 s sim: three heartbeats would have come.
    assert!(next_msg(&mut ws, 1_500).await.is_none(), "silent");
    assert_eq!(h.open_connections(), 1, "still open");
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn sts_unauthenticated_then_reauth() {
    let h = start(|c| c.speed = 10.0).await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    send(&mut ws, &smd(AAPL, &["31", "84"])).await;
    assert!(!collect(&mut ws, "smd", 200).await.is_empty());
    h.inject(Fault::StsUnauthenticated);
    let sts = wait_for(&mut ws, 1_000, |v| v["topic"] == "sts")
        .await
        .expect("sts");
    assert_eq!(sts["args"]["authenticated"], false);
    let _ = collect(&mut ws, "smd", 100).await;
    assert!(collect(&mut ws, "smd", 300).await.is_empty(), "data stops");
    let (s, _) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!(s, 401);
    let (s, _) = post(&c, &h, "/iserver/reauthenticate").await;
    assert_eq!(s, 200);
    let sts = wait_for(&mut ws, 1_000, |v| v["topic"] == "sts")
        .await
        .expect("sts");
    assert_eq!(sts["args"]["authenticated"], true);
    let (s, _) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!(s, 200);
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn expire_session_and_idle_timeout() {
    // Idle timeout of 10 s sim is 500 ms real at speed 20.
    let h = start(|c| {
        c.speed = 20.0;
        c.idle_timeout_secs = 10;
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    h.inject(Fault::ExpireSession);
    let (_, b) = post(&c, &h, "/iserver/auth/status").await;
    assert_eq!(
        (b["connected"].clone(), b["authenticated"].clone()),
        (json!(true), json!(false))
    );
    let (s, _) = post(&c, &h, "/iserver/reauthenticate").await;
    assert_eq!(s, 200);
    let (_, b) = post(&c, &h, "/iserver/auth/status").await;
    assert_eq!(b["authenticated"], true);

    // Now the real idle timeout: no requests for > 10 s sim.
    let mut ws = ws_session(&h, &session).await;
    let sts = wait_for(&mut ws, 1_500, |v| v["topic"] == "sts")
        .await
        .expect("sts");
    assert_eq!(sts["args"]["authenticated"], false);
    assert_eq!(sts["args"]["connected"], true);
    let (_, b) = post(&c, &h, "/iserver/auth/status").await;
    assert_eq!(b["authenticated"], false);
    let (_, b) = post(&c, &h, "/iserver/auth/ssodh/init").await;
    assert_eq!(b["authenticated"], true);
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn nightly_reset_needs_ssodh_init() {
    let h = start(|_| {}).await;
    let c = client();
    login(&c, &h).await;
    h.inject(Fault::NightlyReset);
    let (s, b) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!(s, 400, "{b}");
    login(&c, &h).await;
    let (s, _) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!(s, 200);
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn competing_session() {
    // Grace of 5 s sim = 500 ms real at speed 10.
    let h = start(|c| {
        c.speed = 10.0;
        c.competing_grace_secs = 5;
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    h.inject(Fault::Competing { seconds: None });
    let (_, t) = post(&c, &h, "/tickle").await;
    assert_eq!(t["iserver"]["authStatus"]["competing"], true);
    let (s, b) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!((s, b), (200, json!({})));
    let first = wait_for(&mut ws, 1_000, |v| v["topic"] == "sts")
        .await
        .expect("sts");
    assert_eq!(first["args"]["competing"], true);
    let lost = wait_for(&mut ws, 1_500, |v| v["topic"] == "sts")
        .await
        .expect("sts");
    assert_eq!(lost["args"]["authenticated"], false);
    let (s, _) = post(&c, &h, "/iserver/reauthenticate?force=true").await;
    assert_eq!(s, 200);
    let (_, b) = post(&c, &h, "/iserver/auth/status").await;
    assert_eq!(
        (b["authenticated"].clone(), b["competing"].clone()),
        (json!(true), json!(false))
    );
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn http_5xx_slow_and_penalty_via_admin() {
    // speed 10: 5 s sim of 503 = 500 ms real.
    let h = start(|c| c.speed = 10.0).await;
    let c = client();
    login(&c, &h).await;
    let admin = format!("http://{}/sim/fault", h.local_addr());
    let r = c
        .post(&admin)
        .json(&json!({"kind": "http_5xx", "status": 503, "seconds": 5}))
        .send()
        .await
        .expect("fault");
    assert_eq!(r.status(), 200);
    let (s, _) = post(&c, &h, "/tickle").await;
    assert_eq!(s, 503);
    let (s, _) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!(s, 503);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (s, _) = post(&c, &h, "/tickle").await;
    assert_eq!(s, 200);

    h.inject(Fault::Slow {
        millis: 300,
        seconds: 1000.0,
    });
    let t0 = Instant::now();
    let (s, _) = post(&c, &h, "/tickle").await;
    assert_eq!(s, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    h.inject(Fault::Slow {
        millis: 0,
        seconds: 0.0,
    });

    let r = c
        .post(&admin)
        .json(&json!({"kind": "penalty_box", "seconds": 8}))
        .send()
        .await
        .expect("fault");
    assert_eq!(r.status(), 200);
    let (s, _) = post(&c, &h, "/tickle").await;
    assert_eq!(s, 429);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (s, _) = post(&c, &h, "/tickle").await;
    assert_eq!(s, 200);

    let r = c
        .post(&admin)
        .json(&json!({"kind": "nope"}))
        .send()
        .await
        .expect("fault");
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!("http://{}/sim/ledger/summary", h.local_addr()))
        .send()
        .await
        .expect("summary");
    let b: Value = r.json().await.expect("json");
    assert!(b.get("trades").is_some() && b.get("unique_trades").is_some());
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn scenario_file_injects_on_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("scenario.json");
    std::fs::write(
        &p,
        r#"[{"at_secs": 5, "fault": {"kind": "http_5xx", "status": 500, "seconds": 600}}]"#,
    )
    .expect("write");
    // speed 10: the fault lands 500 ms after start.
    let h = start(move |c| {
        c.speed = 10.0;
        c.scenario = Some(p);
    })
    .await;
    let c = client();
    let (s, _) = post(&c, &h, "/tickle").await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (s, _) = post(&c, &h, "/tickle").await;
    assert_eq!(s, 500);
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn sso_expiry_replaces_session_and_closes_sockets() {
    // A 24 h session shortened to 20 s sim = 1 s real.
    let h = start(|c| {
        c.speed = 20.0;
        c.max_session_secs = 20;
    })
    .await;
    let c = client();
    let session = login(&c, &h).await;
    let mut ws = ws_session(&h, &session).await;
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match next_msg(&mut ws, 2_000).await {
            Some(Message::Close(_)) | None => {
                closed = true;
                break;
            }
            Some(_) => {}
        }
    }
    assert!(closed, "old session's socket closes");
    assert_ne!(h.session_id(), Some(session));
    let (s, _) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!(s, 400, "new SSO session has no bridge yet");
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn tls_with_pinned_certificate() {
    let h = start(|c| c.tls = true).await;
    let fp = h.tls_fingerprint().expect("fingerprint").to_string();
    assert_eq!(fp.split(':').count(), 32);
    let der = h.tls_cert_der().expect("cert").to_vec();
    assert!(h.base_url().starts_with("https://"));

    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(&der).expect("cert")])
        .cookie_store(true)
        .build()
        .expect("client");
    let session = login(&c, &h).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .expect("root");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        h.ws_url(),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(cfg))),
    )
    .await
    .expect("wss connect");
    assert_eq!(
        next_json(&mut ws, 1000).await.expect("frame")["message"],
        "waiting for session"
    );
    send(&mut ws, &format!(r#"{{"session":"{session}"}}"#)).await;
    assert_eq!(
        next_json(&mut ws, 1000).await.expect("system")["topic"],
        "system"
    );
    h.shutdown().await.expect("shutdown");
}
