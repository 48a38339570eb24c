//! Helpers shared by the in-process tests: spawn a simulator, log in, talk websocket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use marketlane_simulator::{SimConfig, SimHandle, spawn};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const AAPL: u32 = 265_598;

/// A simulator with pacing off (tests run requests back to back) and the given tweaks.
pub async fn start(tweak: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut cfg = SimConfig {
        pacing: false,
        seed: 7,
        ..SimConfig::default()
    };
    tweak(&mut cfg);
    spawn(cfg).await.expect("spawn simulator")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

pub async fn post(c: &reqwest::Client, h: &SimHandle, path: &str) -> (u16, Value) {
    let r = c
        .post(format!("{}{path}", h.base_url()))
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn get(c: &reqwest::Client, h: &SimHandle, path: &str) -> (u16, Value) {
    let r = c
        .get(format!("{}{path}", h.base_url()))
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// POST `url`; (status, JSON body or Null).
pub async fn post_url(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.post(url).send().await.expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// tickle + ssodh/init: a ready brokerage session. Returns the session id.
pub async fn login(c: &reqwest::Client, h: &SimHandle) -> String {
    login_at(c, &h.base_url()).await
}

/// [`login`] at the gateway whose `/v1/api` is `base`.
pub async fn login_at(c: &reqwest::Client, base: &str) -> String {
    let (s, t) = post_url(c, &format!("{base}/tickle")).await;
    assert_eq!(s, 200, "{t}");
    let (s, b) = post_url(c, &format!("{base}/iserver/auth/ssodh/init")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["authenticated"], true, "{b}");
    t["session"].as_str().expect("session").to_string()
}

/// A websocket authenticated by the `{"session":…}` first frame, greeting consumed.
pub async fn ws_session(h: &SimHandle, session: &str) -> Ws {
    ws_session_at(&h.ws_url(), session).await
}

/// [`ws_session`] at the websocket `url`.
pub async fn ws_session_at(url: &str, session: &str) -> Ws {
    let (mut ws, _) = connect_async(url).await.expect("ws connect");
    let first = next_json(&mut ws, 2_000).await.expect("waiting frame");
    assert_eq!(first["message"], "waiting for session");
    send(&mut ws, &format!(r#"{{"session":"{session}"}}"#)).await;
    for topic in ["system", "act", "sts"] {
        let v = next_json(&mut ws, 1_000).await.expect("greeting");
        assert_eq!(v["topic"], topic, "{v}");
    }
    ws
}

/// A websocket authenticated by a Cookie header.
pub async fn ws_cookie(h: &SimHandle, cookie: &str) -> Ws {
    let mut req = h.ws_url().into_client_request().expect("request");
    req.headers_mut()
        .insert("cookie", cookie.parse().expect("header"));
    let (ws, _) = connect_async(req).await.expect("ws connect");
    ws
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("ws send");
}

/// The next frame, raw; `None` on timeout or end of stream.
pub async fn next_msg(ws: &mut Ws, timeout_ms: u64) -> Option<Message> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), ws.next()).await {
        Ok(Some(Ok(m))) => Some(m),
        _ => None,
    }
}

/// The next text frame parsed as JSON (pings skipped).
pub async fn next_json(ws: &mut Ws, timeout_ms: u64) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = tokio::time::timeout(left, ws.next()).await.ok()??.ok()?;
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).ok(),
            Message::Ping(_) | Message::Pong(_) => continue,
            _ => return None,
        }
    }
}

/// Frames whose topic starts with `prefix`, collected for `ms`.
pub async fn collect(ws: &mut Ws, prefix: &str, ms: u64) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return out;
        }
        match next_json(ws, left.as_millis() as u64).await {
            Some(v) => {
                if v["topic"].as_str().is_some_and(|t| t.starts_with(prefix)) {
                    out.push(v);
                }
            }
            None => return out,
        }
    }
}

pub fn smd(conid: u32, fields: &[&str]) -> String {
    let f: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
    format!("smd+{conid}+{{\"fields\":[{}]}}", f.join(","))
}

/// Numeric value of an IB string (prefix, commas, K/M).
pub fn num(v: &Value) -> Option<f64> {
    marketlane_simulator::market::parse_ib_number(v.as_str()?)
}

pub fn is_trade_frame(v: &Value) -> bool {
    let plain_31 = v
        .get("31")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.starts_with(['H', 'C']));
    let prefixed = v
        .get("31")
        .and_then(Value::as_str)
        .is_some_and(|s| s.starts_with(['H', 'C']));
    !prefixed && (plain_31 || v.get("7059").is_some())
}
