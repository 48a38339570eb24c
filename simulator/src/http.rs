//! REST endpoints under `/v1/api` (also mounted at `/v1/portal`, which ibeam uses) and the
//! admin endpoints under `/sim`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::fault::Fault;
use crate::lock;
use crate::market::AVAILABILITY;
use crate::session::AuthStatus;
use crate::sim::Sim;
use crate::ws;

type S = State<Arc<Sim>>;

/// Error answers, shaped like the gateway's.
#[derive(Debug)]
pub enum ApiError {
    /// No SSO session (not logged in): 401 `{"error":"no session"}`.
    NoSession,
    /// SSO session but no brokerage bridge (`ssodh/init` not done): 400.
    NoBridge,
    /// Bridge up but not authenticated (idle timeout, competing, sts fault).
    NotAuthenticated,
    BadRequest(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::NoSession => (StatusCode::UNAUTHORIZED, json!({"error": "no session"})),
            Self::NoBridge => (
                StatusCode::BAD_REQUEST,
                json!({"error": "Bad Request: no bridge", "statusCode": 400}),
            ),
            Self::NotAuthenticated => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "not authenticated", "statusCode": 401}),
            ),
            Self::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                json!({"error": m, "statusCode": 400}),
            ),
        };
        (status, Json(body)).into_response()
    }
}

fn require_sso(sim: &Sim) -> Result<(), ApiError> {
    if lock(&sim.session).sso.is_some() {
        Ok(())
    } else {
        Err(ApiError::NoSession)
    }
}

/// `/iserver/*` needs the SSO session, the bridge and authentication.
fn require_iserver(sim: &Sim) -> Result<AuthStatus, ApiError> {
    let s = lock(&sim.session);
    if s.sso.is_none() {
        return Err(ApiError::NoSession);
    }
    let st = s.status();
    if !st.connected {
        return Err(ApiError::NoBridge);
    }
    if !st.authenticated {
        return Err(ApiError::NotAuthenticated);
    }
    Ok(st)
}

pub fn router(sim: Arc<Sim>) -> Router {
    let api = Router::new()
        .route("/tickle", any(tickle))
        .route("/iserver/auth/status", any(auth_status))
        .route("/iserver/reauthenticate", any(reauthenticate))
        .route("/iserver/auth/ssodh/init", any(ssodh_init))
        .route("/sso/validate", any(sso_validate))
        .route("/logout", any(logout))
        .route("/iserver/accounts", get(accounts))
        .route("/iserver/marketdata/snapshot", get(snapshot))
        .route(
            "/iserver/marketdata/{conid}/unsubscribe",
            any(unsubscribe_one),
        )
        .route("/iserver/marketdata/unsubscribe", post(unsubscribe_body))
        .route("/iserver/marketdata/unsubscribeall", any(unsubscribe_all))
        .route("/iserver/secdef/search", any(secdef_search))
        .route("/iserver/marketdata/history", get(history))
        .route("/trsrv/stocks", get(trsrv_stocks))
        .route("/trsrv/futures", get(trsrv_futures))
        .route("/ws", get(ws_upgrade))
        .layer(middleware::from_fn_with_state(sim.clone(), gate));
    let admin = Router::new()
        .route("/sim/fault", post(admin_fault))
        .route("/sim/login", post(admin_login))
        .route("/sim/ledger/summary", get(admin_ledger_summary))
        .route("/sim/ledger/entries", get(admin_ledger_entries))
        .route("/sim/status", get(admin_status))
        .route("/econ/releases", get(econ_releases));
    Router::new()
        .nest("/v1/api", api.clone())
        .nest("/v1/portal", api)
        .merge(admin)
        .merge(crate::sso::routes())
        .with_state(sim)
}

/// The methods IB documents for the session endpoints (D5 swagger; the reference's table in
/// `shared/reference/ib-client-portal.md` §1). Other endpoints route by method already.
fn documented_methods(path: &str) -> Option<&'static [Method]> {
    const POST: &[Method] = &[Method::POST];
    const GET: &[Method] = &[Method::GET];
    let tail = path
        .strip_prefix("/v1/api")
        .or_else(|| path.strip_prefix("/v1/portal"))
        .unwrap_or(path);
    match tail {
        "/tickle"
        | "/iserver/auth/status"
        | "/iserver/reauthenticate"
        | "/iserver/auth/ssodh/init"
        | "/logout" => Some(POST),
        "/sso/validate" => Some(GET),
        _ => None,
    }
}

/// A POST that states no length (neither `Content-Length` nor chunked).
fn post_without_length(req: &Request) -> bool {
    req.method() == Method::POST
        && !req.headers().contains_key(header::CONTENT_LENGTH)
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// The gateway's own cookie on every API answer of a logged-in gateway: `x-sess-uuid`,
/// `HttpOnly`, path `/v1/api` (machdat/broker-gateway `docs/research/ibkr-cpapi-websockets-
/// findings.md`: set by `/tickle`, path `/v1/api`; gabrielbussolo/ibkr-api-gateway: set on
/// `/v1/api/trsrv/stocks`). IB marks it `secure` even over plain http; here `Secure` only
/// over TLS, because a cookie jar never sends a Secure cookie back over http and the
/// simulator runs plain http in most tests.
fn set_gateway_cookie(sim: &Sim, path: &str, resp: &mut Response) {
    let Some(uuid) = lock(&sim.session).sso.as_ref().map(|s| s.sess_uuid.clone()) else {
        return;
    };
    let prefix = if path.starts_with("/v1/portal") {
        "/v1/portal"
    } else {
        "/v1/api"
    };
    let secure = if sim.cfg.tls { "; Secure" } else { "" };
    let cookie = format!("x-sess-uuid={uuid}; Path={prefix}{secure}; HttpOnly");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Runs before every gateway request: undocumented methods (405) and POSTs without a length
/// (411) when configured, injected 5xx / slowness, pacing and the penalty box, then the
/// session clock (the request itself resets the idle timer). Every answer of a logged-in
/// gateway carries its cookie.
async fn gate(State(sim): S, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut resp = gated(&sim, req, next).await;
    set_gateway_cookie(&sim, &path, &mut resp);
    resp
}

async fn gated(sim: &Arc<Sim>, req: Request, next: Next) -> Response {
    if sim.cfg.strict_methods
        && let Some(allowed) = documented_methods(req.uri().path())
        && !allowed.contains(req.method())
    {
        let allow = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let mut resp = (
            StatusCode::METHOD_NOT_ALLOWED,
            Json(json!({"error": "Method Not Allowed", "statusCode": 405})),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    }
    if post_without_length(&req) {
        lock(&sim.session).calls.posts_without_length += 1;
        if sim.cfg.require_content_length {
            return (
                StatusCode::LENGTH_REQUIRED,
                Json(json!({"error": "Length Required", "statusCode": 411})),
            )
                .into_response();
        }
    }
    let now = sim.clock.now_ms();
    let (fail, slow) = {
        let h = lock(&sim.http_faults);
        (
            (now < h.fail_until).then_some(h.fail_status),
            (now < h.slow_until).then_some(h.slow_ms),
        )
    };
    if let Some(status) = fail {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (
            code,
            Json(
                json!({"error": code.canonical_reason().unwrap_or("error"), "statusCode": status}),
            ),
        )
            .into_response();
    }
    if let Some(ms) = slow {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let admitted = {
        let mut p = lock(&sim.pacer);
        if sim.cfg.pacing {
            p.admit(
                req.uri().path(),
                now,
                sim.cfg.penalty_box_secs as i64 * 1000,
            )
        } else {
            // An injected penalty box applies even with pacing off.
            now >= p.penalty_until
        }
    };
    if !admitted {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": "Too Many Requests", "statusCode": 429})),
        )
            .into_response();
    }
    sim.apply(|s, now| {
        // The clock first, so a request after the idle timeout does not revive the session.
        s.check_clock(now);
        s.touch(now);
    });
    next.run(req).await
}

fn count(sim: &Sim, what: &str) {
    lock(&sim.session).calls.count(what);
}

async fn tickle(State(sim): S) -> Result<Response, ApiError> {
    count(&sim, "tickle");
    let now = sim.clock.now_ms();
    let s = lock(&sim.session);
    let Some(sso) = s.sso.clone() else {
        return Err(ApiError::NoSession);
    };
    let st = s.status();
    let body = json!({
        "session": sso.id,
        "ssoExpires": s.sso_expires_in(now),
        "collission": false,
        "userId": 1,
        "hmds": {"error": "no bridge"},
        "iserver": {"authStatus": st.to_json()},
    });
    drop(s);
    // The gateway's cookie is set by `gate`, on every answer.
    Ok(Json(body).into_response())
}

async fn auth_status(State(sim): S) -> Result<Json<Value>, ApiError> {
    count(&sim, "auth_status");
    require_sso(&sim)?;
    Ok(Json(sim.status().to_json()))
}

#[derive(Debug, Deserialize, Default)]
struct ForceQuery {
    force: Option<bool>,
}

/// Answers `{"message":"triggered"}` as clients observe; authentication comes back after the
/// brokerage delay.
async fn reauthenticate(
    State(sim): S,
    Query(q): Query<ForceQuery>,
) -> Result<Json<Value>, ApiError> {
    let force = q.force.unwrap_or(false);
    count(&sim, "reauthenticate");
    if force {
        count(&sim, "reauthenticate_force");
    }
    require_sso(&sim)?;
    sim.apply(|s, now| s.reauthenticate(force, now));
    Ok(Json(json!({"message": "triggered"})))
}

#[derive(Debug, Deserialize)]
struct InitBody {
    #[serde(default)]
    compete: Option<bool>,
}

async fn ssodh_init(State(sim): S, method: Method, body: Bytes) -> Result<Json<Value>, ApiError> {
    {
        let mut s = lock(&sim.session);
        s.calls.count("ssodh_init");
        let recorded = serde_json::from_slice::<Value>(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        s.calls.ssodh_init_bodies.push_back(recorded);
        while s.calls.ssodh_init_bodies.len() > 20 {
            s.calls.ssodh_init_bodies.pop_front();
        }
    }
    require_sso(&sim)?;
    // ibind posts {"publish":true,"compete":true}; an empty body competes too.
    let compete = if method == Method::POST && !body.is_empty() {
        serde_json::from_slice::<InitBody>(&body)
            .map_err(|e| ApiError::BadRequest(format!("bad ssodh/init body: {e}")))?
            .compete
            .unwrap_or(true)
    } else {
        true
    };
    if compete {
        count(&sim, "ssodh_init_compete");
    }
    sim.apply(|s, now| s.ssodh_init(compete, now));
    Ok(Json(sim.status().to_json()))
}

async fn sso_validate(State(sim): S) -> Result<Json<Value>, ApiError> {
    let now = sim.clock.now_ms();
    let s = lock(&sim.session);
    let Some(sso) = s.sso.clone() else {
        return Err(ApiError::NoSession);
    };
    Ok(Json(json!({
        "USER_ID": 1,
        "USER_NAME": sim.cfg.username,
        "RESULT": true,
        "AUTH_TIME": sso.login_ms,
        "LOGIN_TYPE": 2,
        "expire": s.sso_expires_in(now),
    })))
}

/// Both documented shapes at once: `confirmed` (spec) and `status` (what ibeam checks).
async fn logout(State(sim): S) -> Result<Json<Value>, ApiError> {
    count(&sim, "logout");
    require_sso(&sim)?;
    sim.apply(|s, now| s.logout(now));
    Ok(Json(json!({"confirmed": true, "status": true})))
}

async fn accounts(State(sim): S) -> Result<Json<Value>, ApiError> {
    let st = require_iserver(&sim)?;
    if st.competing {
        // Authenticated but competing: the gateway answers an empty object.
        return Ok(Json(json!({})));
    }
    let a = &sim.cfg.account;
    Ok(Json(
        json!({"accounts": [a], "aliases": {}, "selectedAccount": a}),
    ))
}

#[derive(Debug, Deserialize)]
struct SnapshotQuery {
    conids: Option<String>,
    fields: Option<String>,
}

/// The first request for a conid is a pre-flight answering only `conid`/`conidEx`.
async fn snapshot(State(sim): S, Query(q): Query<SnapshotQuery>) -> Result<Json<Value>, ApiError> {
    require_iserver(&sim)?;
    let conids = parse_conids(q.conids.as_deref().unwrap_or(""))?;
    let fields: Vec<String> = q
        .fields
        .as_deref()
        .unwrap_or("31,84,86")
        .split(',')
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    let mut out = Vec::new();
    for (conid, conid_ex) in conids {
        if sim.market.universe().get(conid).is_none() {
            continue;
        }
        let first = lock(&sim.session).preflight.insert(conid);
        if first {
            out.push(json!({"conid": conid, "conidEx": conid_ex}));
            continue;
        }
        let Some(tick) = sim.market.snapshot(conid) else {
            continue;
        };
        let mut m = serde_json::Map::new();
        for f in &fields {
            if let Some(v) = tick.fields.get(f.as_str()) {
                m.insert(f.clone(), v.clone());
            }
        }
        let code = tick.fields.get("6509").cloned();
        m.insert("6509".into(), code.unwrap_or_else(|| json!(AVAILABILITY)));
        m.insert("conid".into(), json!(conid));
        m.insert("conidEx".into(), json!(conid_ex));
        m.insert("_updated".into(), json!(tick.updated));
        m.insert("server_id".into(), json!("q0"));
        m.insert("6119".into(), json!("q0"));
        out.push(Value::Object(m));
    }
    Ok(Json(Value::Array(out)))
}

fn parse_conids(s: &str) -> Result<Vec<(u32, String)>, ApiError> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let base = c.split('@').next().unwrap_or(c);
            base.parse::<u32>()
                .map(|n| (n, c.to_string()))
                .map_err(|_| ApiError::BadRequest(format!("bad conid {c:?}")))
        })
        .collect()
}

async fn unsubscribe_one(
    State(sim): S,
    Path(conid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_iserver(&sim)?;
    let conid: u32 = conid
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("bad conid {conid:?}")))?;
    let had = lock(&sim.session).preflight.remove(&conid);
    Ok(Json(json!({"confirmed": had})))
}

#[derive(Debug, Deserialize)]
struct UnsubBody {
    conid: u32,
}

async fn unsubscribe_body(State(sim): S, body: Bytes) -> Result<Json<Value>, ApiError> {
    require_iserver(&sim)?;
    let b: UnsubBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("bad unsubscribe body: {e}")))?;
    let had = lock(&sim.session).preflight.remove(&b.conid);
    Ok(Json(json!({"success": had})))
}

async fn unsubscribe_all(State(sim): S) -> Result<Json<Value>, ApiError> {
    require_iserver(&sim)?;
    lock(&sim.session).preflight.clear();
    Ok(Json(json!({"confirmed": true})))
}

#[derive(Debug, Deserialize, Default)]
struct SearchParams {
    symbol: Option<String>,
    #[serde(default, deserialize_with = "bool_or_string")]
    name: Option<bool>,
    #[serde(rename = "secType")]
    sec_type: Option<String>,
}

/// Query strings carry `name=false` as text; JSON bodies as a bool.
fn bool_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(match v {
        Some(Value::Bool(b)) => Some(b),
        Some(Value::String(s)) => Some(s.eq_ignore_ascii_case("true")),
        _ => None,
    })
}

async fn secdef_search(
    State(sim): S,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require_iserver(&sim)?;
    let p: SearchParams = if method == Method::POST && !body.is_empty() {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("bad secdef/search body: {e}")))?
    } else {
        let v = serde_json::to_value(&q).unwrap_or_default();
        serde_json::from_value(v)
            .map_err(|e| ApiError::BadRequest(format!("bad secdef/search query: {e}")))?
    };
    let Some(symbol) = p.symbol.filter(|s| !s.trim().is_empty()) else {
        return Err(ApiError::BadRequest("symbol required".into()));
    };
    Ok(Json(sim.market.universe().secdef_search(
        &symbol,
        p.name.unwrap_or(false),
        p.sec_type.as_deref(),
        sim.clock.now_ms(),
    )))
}

/// Parses IB durations: `30s`, `5min`, `1h`, `2d`, `1w`, `1m` (month), `1y`; `min` before `m`.
fn parse_span(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok()?;
    let unit_ms = match unit {
        "s" | "sec" | "secs" => 1_000,
        "min" | "mins" => 60_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "w" | "week" | "weeks" => 7 * 86_400_000,
        "m" | "month" | "months" => 30 * 86_400_000,
        "y" | "year" | "years" => 365 * 86_400_000,
        _ => return None,
    };
    (n > 0).then_some(n * unit_ms)
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    conid: Option<String>,
    period: Option<String>,
    bar: Option<String>,
}

/// Decrements the in-flight history count however the request ends.
struct Inflight<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `/iserver/marketdata/history`: at most 5 concurrent requests; a 6th gets 429 (no
/// penalty box). Answers after `history_delay_ms` (wall clock), like a farm round-trip.
async fn history(State(sim): S, Query(q): Query<HistoryQuery>) -> Result<Response, ApiError> {
    require_iserver(&sim)?;
    let conid = q
        .conid
        .as_deref()
        .and_then(|c| c.split('@').next())
        .and_then(|c| c.parse::<u32>().ok())
        .ok_or_else(|| ApiError::BadRequest("conid required".into()))?;
    let bar = q.bar.as_deref().unwrap_or("1min");
    let bar_ms = parse_span(bar).ok_or_else(|| ApiError::BadRequest(format!("bad bar {bar:?}")))?;
    let period = q.period.as_deref().unwrap_or("1d");
    let period_ms =
        parse_span(period).ok_or_else(|| ApiError::BadRequest(format!("bad period {period:?}")))?;
    let taken = sim
        .history_inflight
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _guard = Inflight(&sim.history_inflight);
    if taken >= HISTORY_CONCURRENCY {
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": "Too Many Requests", "statusCode": 429})),
        )
            .into_response());
    }
    tokio::time::sleep(Duration::from_millis(sim.cfg.history_delay_ms)).await;
    let count = (period_ms / bar_ms).clamp(1, 1000) as usize;
    let body = sim
        .market
        .history(conid, bar_ms, count)
        .ok_or_else(|| ApiError::BadRequest(format!("unknown conid {conid}")))?;
    Ok(Json(body).into_response())
}

/// IB: `marketdata/history` allows 5 concurrent requests.
const HISTORY_CONCURRENCY: usize = 5;

#[derive(Debug, Deserialize)]
struct SymbolsQuery {
    symbols: Option<String>,
}

async fn trsrv_stocks(
    State(sim): S,
    Query(q): Query<SymbolsQuery>,
) -> Result<Json<Value>, ApiError> {
    require_sso(&sim)?;
    Ok(Json(
        sim.market
            .universe()
            .trsrv_stocks(q.symbols.as_deref().unwrap_or("")),
    ))
}

async fn trsrv_futures(
    State(sim): S,
    Query(q): Query<SymbolsQuery>,
) -> Result<Json<Value>, ApiError> {
    require_sso(&sim)?;
    Ok(Json(sim.market.universe().trsrv_futures(
        q.symbols.as_deref().unwrap_or(""),
        sim.clock.now_ms(),
    )))
}

/// Cookies a websocket upgrade carried: the gateway's own `x-sess-uuid`, or (a client
/// mistake) the tickle session id under that name.
fn record_upgrade_cookies(sim: &Sim, headers: &HeaderMap) {
    let mut s = lock(&sim.session);
    let (uuid, id) = match &s.sso {
        Some(sso) => (sso.sess_uuid.clone(), sso.id.clone()),
        None => (String::new(), String::new()),
    };
    let sent: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';').map(|p| p.trim().to_string()))
        .filter_map(|p| p.strip_prefix("x-sess-uuid=").map(str::to_owned))
        .collect();
    s.calls.ws_upgrades += 1;
    if !uuid.is_empty() && sent.contains(&uuid) {
        s.calls.ws_upgrades_with_gateway_cookie += 1;
    }
    if !id.is_empty() && sent.contains(&id) {
        s.calls.ws_upgrades_with_session_as_sess_uuid += 1;
    }
}

async fn ws_upgrade(State(sim): S, headers: HeaderMap, up: WebSocketUpgrade) -> Response {
    record_upgrade_cookies(&sim, &headers);
    let pre_auth = ws::cookie_session(&sim, &headers);
    up.on_upgrade(move |socket| ws::run(sim, socket, pre_auth))
}

async fn admin_fault(State(sim): S, body: Bytes) -> Response {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(f) => {
            sim.inject(f);
            Json(json!({"ok": true})).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": format!("bad fault: {e}")})),
        )
            .into_response(),
    }
}

/// The browser login (needed when `--auto-login=false`, or after a logout without it).
async fn admin_login(State(sim): S) -> Json<Value> {
    let id = sim.apply(|s, now| {
        if s.sso.is_none() {
            s.login(now);
        }
        s.sso.as_ref().map(|x| x.id.clone())
    });
    Json(json!({"ok": true, "session": id}))
}

async fn admin_ledger_summary(State(sim): S) -> Json<Value> {
    Json(serde_json::to_value(sim.ledger.summary()).unwrap_or_default())
}

async fn admin_ledger_entries(State(sim): S) -> Json<Value> {
    Json(serde_json::to_value(sim.ledger.entries()).unwrap_or_default())
}

/// The economic release feed (not part of the IB gateway; the platform's second source).
async fn econ_releases(State(sim): S) -> Json<Value> {
    Json(crate::econ::releases_at(sim.cfg.seed, sim.clock.now_ms()))
}

async fn admin_status(State(sim): S) -> Json<Value> {
    let now = sim.clock.now_ms();
    let s = lock(&sim.session);
    let st = s.status();
    Json(json!({
        "sim_time_ms": now,
        "username": sim.cfg.username,
        "account": sim.cfg.account,
        "session": s.sso.as_ref().map(|x| x.id.clone()),
        "authenticated": st.authenticated,
        "connected": st.connected,
        "competing": st.competing,
        "penalty_until": lock(&sim.pacer).penalty_until,
        "open_connections": sim.open_conns.load(std::sync::atomic::Ordering::Relaxed),
        "lines": sim.lines.load(std::sync::atomic::Ordering::Relaxed),
        "dropped_ticks": sim.market.dropped_ticks(),
        "calls": serde_json::to_value(&s.calls).unwrap_or_default(),
    }))
}
