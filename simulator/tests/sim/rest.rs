use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn session_endpoints_and_errors_before_bridge() {
    let h = start(|_| {}).await;
    let c = client();

    let r = c
        .post(format!("{}/tickle", h.base_url()))
        .send()
        .await
        .expect("tickle");
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(cookie.starts_with("x-sess-uuid="), "{cookie}");
    let t: serde_json::Value = r.json().await.expect("json");
    assert_eq!(t["collission"], false);
    assert_eq!(t["session"].as_str(), h.session_id().as_deref());
    assert!(t["ssoExpires"].is_i64());
    assert_eq!(t["hmds"]["error"], "no bridge");
    let auth = &t["iserver"]["authStatus"];
    for k in [
        "authenticated",
        "competing",
        "connected",
        "message",
        "MAC",
        "serverInfo",
    ] {
        assert!(auth.get(k).is_some(), "authStatus lacks {k}: {auth}");
    }
    assert_eq!(auth["authenticated"], false);

    // No brokerage session yet: /iserver answers 400 no bridge.
    let (s, b) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!(s, 400);
    assert!(
        b["error"].as_str().is_some_and(|e| e.contains("no bridge")),
        "{b}"
    );
    let (s, b) = post(&c, &h, "/iserver/auth/status").await;
    assert_eq!(s, 200);
    assert_eq!(
        (b["connected"].clone(), b["authenticated"].clone()),
        (json!(false), json!(false))
    );

    let (s, b) = post(&c, &h, "/iserver/auth/ssodh/init").await;
    assert_eq!(s, 200);
    assert_eq!(b["authenticated"], true);
    assert_eq!(b["connected"], true);
    for k in [
        "competing",
        "message",
        "fail",
        "prompts",
        "established",
        "MAC",
        "serverInfo",
    ] {
        assert!(b.get(k).is_some(), "status lacks {k}: {b}");
    }

    let (s, b) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!(s, 200);
    assert_eq!(
        b,
        json!({"accounts": ["DU1234567"], "aliases": {}, "selectedAccount": "DU1234567"})
    );

    let (s, b) = get(&c, &h, "/sso/validate").await;
    assert_eq!(s, 200);
    for k in [
        "USER_ID",
        "USER_NAME",
        "RESULT",
        "AUTH_TIME",
        "LOGIN_TYPE",
        "expire",
    ] {
        assert!(b.get(k).is_some(), "validate lacks {k}: {b}");
    }
    assert_eq!(b["USER_NAME"], "user1");

    let (s, b) = post(&c, &h, "/iserver/reauthenticate").await;
    assert_eq!((s, b), (200, json!({"message": "triggered"})));

    // The /v1/portal mount that ibeam uses.
    let r = c
        .post(format!("http://{}/v1/portal/tickle", h.local_addr()))
        .send()
        .await
        .expect("portal");
    assert_eq!(r.status(), 200);

    let (s, b) = post(&c, &h, "/logout").await;
    assert_eq!(s, 200);
    assert_eq!(b["confirmed"], true);
    // auto-login: a fresh SSO session exists, but the bridge is gone.
    let (s, _) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!(s, 400);
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn before_login_no_session() {
    let h = start(|c| c.auto_login = false).await;
    let c = client();
    let (s, b) = post(&c, &h, "/tickle").await;
    assert_eq!((s, b), (401, json!({"error": "no session"})));
    let (s, _) = get(&c, &h, "/iserver/accounts").await;
    assert_eq!(s, 401);
    let (s, _) = get(&c, &h, "/trsrv/stocks?symbols=AAPL").await;
    assert_eq!(s, 401);

    let r = c
        .post(format!("http://{}/sim/login", h.local_addr()))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 200);
    let session = login(&c, &h).await;
    assert_eq!(Some(session), h.session_id());
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn contract_lookup() {
    let h = start(|c| c.synthetic_symbols = 3).await;
    let c = client();
    login(&c, &h).await;

    let (s, b) = get(&c, &h, "/trsrv/stocks?symbols=AAPL,XOM,SYM0002,NOPE").await;
    assert_eq!(s, 200);
    assert_eq!(b["AAPL"][0]["contracts"][0]["conid"], AAPL);
    assert_eq!(b["AAPL"][0]["assetClass"], "STK");
    assert_eq!(b["AAPL"][0]["contracts"][0]["isUS"], true);
    assert_eq!(b["SYM0002"][0]["contracts"][0]["conid"], 900_002);
    assert_eq!(b["NOPE"], json!([]));

    let (s, b) = get(&c, &h, "/trsrv/futures?symbols=CL,NG,ZZ").await;
    assert_eq!(s, 200);
    let cl = b["CL"].as_array().expect("CL list");
    assert!(cl.len() >= 2, "front and next month: {b}");
    let e0 = cl[0]["expirationDate"].as_u64().expect("expiration");
    let e1 = cl[1]["expirationDate"].as_u64().expect("expiration");
    assert!(e0 < e1);
    for k in [
        "symbol",
        "conid",
        "underlyingConid",
        "expirationDate",
        "ltd",
    ] {
        assert!(cl[0].get(k).is_some(), "{k}");
    }
    assert_eq!(b["ZZ"], json!([]));

    let (s, b) = get(
        &c,
        &h,
        "/iserver/secdef/search?symbol=AAPL&name=false&secType=STK",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b[0]["conid"], AAPL);
    for k in [
        "companyHeader",
        "companyName",
        "symbol",
        "description",
        "sections",
    ] {
        assert!(b[0].get(k).is_some(), "{k}");
    }
    let r = c
        .post(format!("{}/iserver/secdef/search", h.base_url()))
        .json(&json!({"symbol": "CL", "name": false, "secType": "FUT"}))
        .send()
        .await
        .expect("search");
    let b: serde_json::Value = r.json().await.expect("json");
    assert_eq!(b[0]["sections"][0]["secType"], "FUT");
    let (_, b) = get(&c, &h, "/iserver/secdef/search?symbol=NOPE").await;
    assert_eq!(b, json!([]));
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn snapshot_preflight_then_data() {
    let h = start(|_| {}).await;
    let c = client();
    login(&c, &h).await;
    let path = format!("/iserver/marketdata/snapshot?conids={AAPL}&fields=31,84,86,83");
    let (s, b) = get(&c, &h, &path).await;
    assert_eq!(s, 200);
    assert_eq!(b, json!([{"conid": AAPL, "conidEx": AAPL.to_string()}]));
    let (_, b) = get(&c, &h, &path).await;
    let row = &b[0];
    assert!(row["31"].is_string() && row["84"].is_string(), "{row}");
    assert!(row["83"].is_number(), "{row}");
    assert!(row["_updated"].is_i64());
    let (s, b) = post(&c, &h, &format!("/iserver/marketdata/{AAPL}/unsubscribe")).await;
    assert_eq!((s, b), (200, json!({"confirmed": true})));
    let (_, b) = get(&c, &h, &path).await;
    assert_eq!(
        b[0].as_object().map(|o| o.len()),
        Some(2),
        "pre-flight again: {b}"
    );
    let (s, b) = get(&c, &h, "/iserver/marketdata/unsubscribeall").await;
    assert_eq!((s, b), (200, json!({"confirmed": true})));
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn pacing_429_and_penalty_box() {
    // A 1 s penalty box (10 min at IB) keeps the test short.
    let h = start(|c| {
        c.pacing = true;
        c.penalty_box_secs = 1;
    })
    .await;
    let c = client();
    // Two tickles within 1 s breach tickle's 1/s.
    let (s1, _) = post(&c, &h, "/tickle").await;
    let (s2, b) = post(&c, &h, "/tickle").await;
    assert_eq!(s1, 200);
    assert_eq!(s2, 429, "{b}");
    // The penalty box answers 429 to everything.
    let (s, _) = post(&c, &h, "/iserver/auth/status").await;
    assert_eq!(s, 429);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let (s, _) = post(&c, &h, "/iserver/auth/status").await;
    assert_eq!(s, 200);
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn pacing_global_limit() {
    let h = start(|c| c.pacing = true).await;
    let c = client();
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(post(&c, &h, "/iserver/auth/status").await.0);
    }
    assert_eq!(&codes[..10], &[200; 10]);
    assert_eq!(codes[10], 429);
    h.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn history_bars_and_sixth_concurrent_429() {
    let h = start(|c| c.history_delay_ms = 400).await;
    let c = client();
    login(&c, &h).await;
    let path = format!("/iserver/marketdata/history?conid={AAPL}&period=1h&bar=5min");
    let reqs: Vec<_> = (0..6).map(|_| get(&c, &h, &path)).collect();
    let res = futures_util::future::join_all(reqs).await;
    let mut codes: Vec<u16> = res.iter().map(|r| r.0).collect();
    codes.sort();
    assert_eq!(codes, vec![200, 200, 200, 200, 200, 429]);
    let ok = res.iter().find(|r| r.0 == 200).map(|r| &r.1).expect("ok");
    let data = ok["data"].as_array().expect("data");
    assert_eq!(data.len(), 12);
    for k in ["o", "c", "h", "l", "v", "t"] {
        assert!(data[0].get(k).is_some(), "{k}");
    }
    assert!(data[0]["t"].as_i64() < data[11]["t"].as_i64());
    // Slots free again afterwards.
    let (s, _) = get(&c, &h, &path).await;
    assert_eq!(s, 200);
    h.shutdown().await.expect("shutdown");
}

/// A raw HTTP/1.1 request (no client adds headers behind the test's back); the status code.
async fn raw_status(h: &marketlane_simulator::SimHandle, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(h.local_addr())
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"))
}

#[tokio::test]
async fn undocumented_methods_lengthless_posts_and_the_gateways_cookie() {
    let h = start(|c| c.require_content_length = true).await;
    let c = client();
    // IB documents POST /tickle and GET /sso/validate.
    let r = c
        .get(format!("{}/tickle", h.base_url()))
        .send()
        .await
        .expect("get tickle");
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let (s, _) = post(&c, &h, "/sso/validate").await;
    assert_eq!(s, 405);
    // An empty POST must say its length.
    let bare = "POST /v1/api/tickle HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&h, bare).await, 411);
    let sized = "POST /v1/api/tickle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&h, sized).await, 200);
    // The gateway's own cookie, IB-shaped, on any API answer (not only /tickle).
    let r = c
        .get(format!("{}/trsrv/stocks?symbols=AAPL", h.base_url()))
        .send()
        .await
        .expect("stocks");
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let value = cookie
        .strip_prefix("x-sess-uuid=")
        .and_then(|c| c.split(';').next())
        .unwrap_or_default();
    assert_eq!(value.split('.').count(), 4, "{cookie}");
    assert!(
        cookie.contains("Path=/v1/api") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert_ne!(
        Some(value.to_string()),
        h.session_id(),
        "x-sess-uuid is not the session"
    );

    // Without the strict options both pass.
    let lax = start(|c| c.strict_methods = false).await;
    let r = c
        .get(format!("{}/tickle", lax.base_url()))
        .send()
        .await
        .expect("get tickle");
    assert_eq!(r.status(), 200);
    assert_eq!(raw_status(&lax, bare).await, 200);
}

#[tokio::test]
async fn the_brokerage_session_comes_up_after_the_delay() {
    let h = start(|c| c.brokerage_delay_secs = 1.0).await;
    let c = client();
    let (s, _) = post(&c, &h, "/tickle").await;
    assert_eq!(s, 200);
    let (s, b) = post(&c, &h, "/iserver/auth/ssodh/init").await;
    assert_eq!(s, 200);
    assert_eq!(b["authenticated"], false, "{b}");
    assert_eq!(b["connected"], true, "{b}");
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let (_, b) = post(&c, &h, "/iserver/auth/status").await;
    assert_eq!(b["authenticated"], true, "{b}");
}
