//! One task per websocket (`/v1/api/ws`): authentication, the greeting, heartbeats, `tic`,
//! `smd`/`umd`/`sbd`/`ubd`, per-connection deltas over the shared ticks, and the faults that
//! act on open sockets. Subscriptions belong to the connection and die with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::{HeaderMap, header};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::SimConfig;
use crate::ledger::LedgerEntry;
use crate::lock;
use crate::market::{AVAILABILITY, Tick, parse_ib_number};
use crate::session::{SERVER_NAME, SERVER_VERSION};
use crate::sim::{ConnEvent, Sim};

/// Ticks queued per connection. Tickers of conids subscribed together fire together, so this
/// must hold a burst of one tick per subscribed conid (3000 conids measured: no drops).
/// Beyond it a stuck reader misses updates (its next delta then carries everything that
/// changed meanwhile) instead of growing memory; `/sim/status` counts them as dropped_ticks.
const TICK_QUEUE: usize = 16_384;
/// IB's heartbeat period (sim time).
const HB_MS: u64 = 10_000;
/// Fields of an `smd` that names none.
const DEFAULT_FIELDS: [&str; 3] = ["31", "84", "86"];

/// The session id a websocket upgrade authenticates with through its cookies: `x-sess-uuid`
/// (set by `/tickle`) or ibind's `api={"session":"<id>"}`.
pub fn cookie_session(sim: &Sim, headers: &HeaderMap) -> Option<String> {
    let s = lock(&sim.session);
    let sso = s.sso.as_ref()?;
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(';') {
            let Some((k, val)) = part.trim().split_once('=') else {
                continue;
            };
            let val = val.trim();
            match k.trim() {
                "x-sess-uuid" if val == sso.sess_uuid || val == sso.id => {
                    return Some(sso.id.clone());
                }
                "api" => {
                    let decoded = percent_decode(val);
                    let ok = serde_json::from_str::<Value>(&decoded)
                        .ok()
                        .and_then(|j| j.get("session").and_then(Value::as_str).map(str::to_owned))
                        .is_some_and(|id| id == sso.id);
                    if ok {
                        return Some(sso.id.clone());
                    }
                }
                _ => {}
            }
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Sub {
    conid_ex: String,
    fields: Vec<String>,
    /// What this connection last sent per field: deltas are computed against it.
    last_sent: HashMap<String, Value>,
    first_sent: bool,
    /// A re-sent `smd` asked for a full frame (`--smd-resend-full-frame`).
    full_pending: bool,
    expires_at: Option<i64>,
    server_id: String,
}

/// A message to send and the ledger lines it stands for once sent.
struct Out {
    msg: Message,
    ledger: Vec<LedgerEntry>,
}

enum End {
    /// Send a close frame, then end.
    Close(u16, &'static str),
    /// End without a close frame: the TCP connection just goes away.
    Drop,
    /// The peer is gone.
    Gone,
}

#[derive(Default)]
struct Step {
    out: Vec<Out>,
    end: Option<End>,
}

impl Step {
    fn send(msg: Message) -> Self {
        Self {
            out: vec![Out {
                msg,
                ledger: Vec::new(),
            }],
            end: None,
        }
    }

    fn end(e: End) -> Self {
        Self {
            out: Vec::new(),
            end: Some(e),
        }
    }
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

struct Conn {
    sim: Arc<Sim>,
    id: u64,
    session: Option<String>,
    /// `stop_heartbeats`: the socket stays open but nothing more is sent.
    silenced: bool,
    subs: HashMap<u32, Sub>,
    /// conid → account of an `sbd`.
    books: HashMap<u32, String>,
    tick_tx: mpsc::Sender<Arc<Tick>>,
    next_q: u32,
}

pub async fn run(sim: Arc<Sim>, socket: WebSocket, pre_auth: Option<String>) {
    let id = sim.next_conn_id();
    sim.open_conns.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(
        conn = id,
        authenticated = pre_auth.is_some(),
        "websocket open"
    );
    let (mut sink, mut stream) = socket.split();
    let (tick_tx, mut tick_rx) = mpsc::channel(TICK_QUEUE);
    let mut events = sim.events.subscribe();
    let mut shutdown = sim.shutdown.clone();
    let period = sim.clock.real(HB_MS);
    let mut hb = tokio::time::interval_at(Instant::now() + period, period);
    hb.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn = Conn {
        sim: sim.clone(),
        id,
        session: None,
        silenced: false,
        subs: HashMap::new(),
        books: HashMap::new(),
        tick_tx,
        next_q: 0,
    };
    let mut step = match pre_auth {
        Some(s) => {
            conn.session = Some(s);
            conn.greeting()
        }
        None => Step::send(text(json!({"message": "waiting for session"}))),
    };
    loop {
        let mut alive = true;
        for o in step.out.drain(..) {
            if sink.send(o.msg).await.is_err() {
                alive = false;
                break;
            }
            for e in o.ledger {
                sim.ledger.record(e);
            }
        }
        match step.end {
            Some(End::Close(code, reason)) if alive => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                break;
            }
            Some(_) => break,
            None if !alive => break,
            None => {}
        }
        step = tokio::select! {
            m = stream.next() => match m {
                Some(Ok(m)) => conn.on_message(m),
                _ => Step::end(End::Gone),
            },
            Some(t) = tick_rx.recv() => conn.on_tick(&t),
            _ = hb.tick() => conn.on_hb(),
            ev = events.recv() => match ev {
                Ok(ev) => conn.on_event(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(conn = id, missed = n, "connection missed fault events");
                    Step::default()
                }
                Err(broadcast::error::RecvError::Closed) => Step::end(End::Gone),
            },
            _ = shutdown.changed() => Step::end(End::Close(1001, "shutdown")),
        };
    }
    conn.clear_all();
    sim.open_conns.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(conn = id, "websocket closed");
    // Dropping both halves drops the socket: with End::Drop that is a bare TCP close.
    drop(sink);
    drop(stream);
}

impl Conn {
    fn greeting(&self) -> Step {
        let cfg = &self.sim.cfg;
        let acct = cfg.account.clone();
        let mut s = Step::default();
        for v in [
            json!({"topic": "system", "success": cfg.username, "isFT": false, "isPaper": cfg.paper}),
            json!({"topic": "act", "args": {
                "accounts": [acct],
                "acctProps": {acct.clone(): {"hasChildAccounts": false, "supportsCashQty": true, "supportsFractions": false}},
                "aliases": {acct.clone(): acct},
                "allowFeatures": {},
                "chartPeriods": {},
                "groups": [],
                "profiles": [],
                "selectedAccount": acct,
                "serverInfo": {"serverName": SERVER_NAME, "serverVersion": SERVER_VERSION},
                "sessionId": self.session,
                "isFT": false,
                "isPaper": cfg.paper,
            }}),
            json!({"topic": "sts", "args": self.sim.status().sts_args()}),
        ] {
            s.out.push(Out {
                msg: text(v),
                ledger: Vec::new(),
            });
        }
        s
    }

    fn on_message(&mut self, m: Message) -> Step {
        match m {
            Message::Text(t) => self.on_text(t.as_str()),
            Message::Binary(b) => match std::str::from_utf8(&b) {
                Ok(t) => self.on_text(t),
                Err(_) => Step::default(),
            },
            Message::Close(_) => Step::end(End::Gone),
            Message::Ping(_) | Message::Pong(_) => Step::default(),
        }
    }

    fn on_text(&mut self, t: &str) -> Step {
        let t = t.trim();
        if self.session.is_none() {
            let id = serde_json::from_str::<Value>(t)
                .ok()
                .and_then(|v| v.get("session").and_then(Value::as_str).map(str::to_owned));
            if let Some(id) = id
                && self.sim.session_id().as_deref() == Some(id.as_str())
            {
                self.session = Some(id);
                return self.greeting();
            }
            return Step::send(text(json!({"message": "waiting for session"})));
        }
        if self.silenced {
            return Step::default();
        }
        if t == "tic" {
            let last = lock(&self.sim.session).last_request_ms;
            let mut s = Step::default();
            for _ in 0..self.sim.cfg.tic_replies.max(1) {
                s.out.push(Out {
                    msg: text(json!({"topic": "tic", "alive": true, "id": self.session, "lastAccessed": last})),
                    ledger: Vec::new(),
                });
            }
            return s;
        }
        if t == "ech+hb" {
            return Step::send(text(
                json!({"topic": "ech+hb", "alive": true, "hb": self.sim.clock.now_ms()}),
            ));
        }
        if let Some(rest) = t.strip_prefix("smd+") {
            return self.on_smd(rest);
        }
        if let Some(rest) = t.strip_prefix("umd+") {
            self.on_umd(rest);
        } else if let Some(rest) = t.strip_prefix("sbd+") {
            self.on_sbd(rest);
        } else if let Some(rest) = t.strip_prefix("ubd+") {
            self.on_ubd(rest);
        } else if !t.starts_with('{') {
            tracing::debug!(conn = self.id, frame = t, "ignoring unknown client frame");
        }
        Step::default()
    }

    /// `smd+CONID[@EXCH]+{"fields":[...]}`. No ack: the first data frame confirms it.
    fn on_smd(&mut self, rest: &str) -> Step {
        let (target, args) = rest.split_once('+').unwrap_or((rest, ""));
        let Ok(conid) = target.split('@').next().unwrap_or("").parse::<u32>() else {
            tracing::debug!(conn = self.id, target, "smd with a bad conid");
            return Step::default();
        };
        let args: Value = if args.trim().is_empty() {
            json!({})
        } else {
            match serde_json::from_str(args) {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(conn = self.id, error = %e, "smd with bad json args");
                    return Step::default();
                }
            }
        };
        let mut fields: Vec<String> = args
            .get("fields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| match f {
                        Value::String(s) => Some(s.trim().to_string()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let now = self.sim.clock.now_ms();
        let expiry = self.sim.cfg.subscription_expiry_secs;
        let expires_at = (expiry > 0).then(|| now + expiry as i64 * 1000);
        if let Some(sub) = self.subs.get_mut(&conid) {
            // A re-send refreshes the timer and may add fields [IB's docs: re-request before
            // the expiry]. Whether it also brings a full frame is not documented: only with
            // `--smd-resend-full-frame`.
            sub.expires_at = expires_at;
            sub.full_pending |= self.sim.cfg.smd_resend_full_frame;
            for f in fields {
                if !sub.fields.contains(&f) {
                    sub.fields.push(f);
                }
            }
            return Step::default();
        }
        if !self.sim.status().authenticated {
            tracing::debug!(
                conn = self.id,
                conid,
                "smd while not authenticated: no data"
            );
            return Step::default();
        }
        if self.sim.market.universe().get(conid).is_none() {
            tracing::debug!(conn = self.id, conid, "smd for an unknown conid: no data");
            return Step::default();
        }
        if let Some(cap) = self.sim.cfg.line_cap {
            let taken = self
                .sim
                .lines
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < cap).then_some(n + 1)
                });
            if taken.is_err() {
                return Step::send(text(json!({
                    "topic": format!("smd+{conid}"),
                    "error": format!("max number of market data lines ({cap}) reached"),
                    "code": 101,
                })));
            }
        } else {
            self.sim.lines.fetch_add(1, Ordering::SeqCst);
        }
        if fields.is_empty() {
            fields = DEFAULT_FIELDS.iter().map(|f| f.to_string()).collect();
        }
        let mut dedup = Vec::with_capacity(fields.len());
        for f in fields {
            if !dedup.contains(&f) {
                dedup.push(f);
            }
        }
        let q = format!("q{}", self.next_q);
        self.next_q += 1;
        self.subs.insert(
            conid,
            Sub {
                conid_ex: target.to_string(),
                fields: dedup,
                last_sent: HashMap::new(),
                first_sent: false,
                full_pending: false,
                expires_at,
                server_id: q,
            },
        );
        if !self.books.contains_key(&conid) {
            self.sim
                .market
                .subscribe(conid, self.id, self.tick_tx.clone());
        }
        Step::default()
    }

    fn on_umd(&mut self, rest: &str) {
        let target = rest.split('+').next().unwrap_or("");
        if let Ok(conid) = target.split('@').next().unwrap_or("").parse::<u32>() {
            self.drop_sub(conid);
        }
    }

    fn drop_sub(&mut self, conid: u32) {
        if self.subs.remove(&conid).is_some() {
            self.sim.lines.fetch_sub(1, Ordering::SeqCst);
            if !self.books.contains_key(&conid) {
                self.sim.market.unsubscribe(conid, self.id);
            }
        }
    }

    /// `sbd+ACCT+CONID[+EXCH]`.
    fn on_sbd(&mut self, rest: &str) {
        let mut parts = rest.split('+');
        let acct = parts.next().unwrap_or("").to_string();
        let Some(Ok(conid)) = parts.next().map(|c| c.trim().parse::<u32>()) else {
            tracing::debug!(conn = self.id, rest, "sbd with a bad conid");
            return;
        };
        if !self.sim.status().authenticated || self.sim.market.universe().get(conid).is_none() {
            return;
        }
        if self.books.insert(conid, acct).is_none() && !self.subs.contains_key(&conid) {
            self.sim
                .market
                .subscribe(conid, self.id, self.tick_tx.clone());
        }
    }

    /// `ubd+ACCT`: ends every ladder of that account.
    fn on_ubd(&mut self, rest: &str) {
        let acct = rest.split('+').next().unwrap_or("");
        let gone: Vec<u32> = self
            .books
            .iter()
            .filter(|(_, a)| a.as_str() == acct)
            .map(|(c, _)| *c)
            .collect();
        for conid in gone {
            self.books.remove(&conid);
            if !self.subs.contains_key(&conid) {
                self.sim.market.unsubscribe(conid, self.id);
            }
        }
    }

    fn clear_all(&mut self) {
        let conids: Vec<u32> = self.subs.keys().chain(self.books.keys()).copied().collect();
        self.sim.lines.fetch_sub(self.subs.len(), Ordering::SeqCst);
        self.subs.clear();
        self.books.clear();
        for c in conids {
            self.sim.market.unsubscribe(c, self.id);
        }
    }

    fn on_hb(&self) -> Step {
        if self.session.is_none() || self.silenced {
            return Step::default();
        }
        Step::send(text(
            json!({"topic": "system", "hb": self.sim.clock.now_ms()}),
        ))
    }

    fn on_tick(&mut self, t: &Tick) -> Step {
        let mut step = Step::default();
        if self.silenced {
            return step;
        }
        let conid = t.conid();
        let now = self.sim.clock.now_ms();
        if self
            .subs
            .get(&conid)
            .is_some_and(|s| s.expires_at.is_some_and(|e| now >= e))
        {
            // IB ends an un-refreshed subscription silently.
            tracing::debug!(conn = self.id, conid, "smd subscription expired");
            self.drop_sub(conid);
        }
        if let Some(sub) = self.subs.get_mut(&conid) {
            let first = !sub.first_sent;
            if let Some(o) = frame(sub, t, self.id, &self.sim.cfg) {
                if first && self.sim.cfg.repeat_first_frame {
                    step.out.push(Out {
                        msg: o.msg.clone(),
                        ledger: Vec::new(),
                    });
                }
                step.out.push(o);
            }
        }
        if let Some(acct) = self.books.get(&conid) {
            let data = t.ladder(self.sim.cfg.book_depth);
            let levels = data.len();
            step.out.push(Out {
                msg: text(json!({"topic": format!("sbd+{acct}+{conid}"), "data": data})),
                ledger: vec![LedgerEntry::Book {
                    conid,
                    updated: t.updated,
                    levels,
                    conn: self.id,
                    gateway: self.sim.cfg.username.clone(),
                }],
            });
        }
        step
    }

    fn on_event(&mut self, ev: ConnEvent) -> Step {
        match ev {
            ConnEvent::DropTcp => Step::end(End::Drop),
            ConnEvent::Silence => {
                self.silenced = true;
                Step::default()
            }
            ConnEvent::Sts(args) => {
                if self.session.is_none() || self.silenced {
                    return Step::default();
                }
                if args.get("authenticated") == Some(&Value::Bool(false)) {
                    // Market data stops with the brokerage session; the client re-subscribes.
                    self.clear_all();
                }
                Step::send(text(json!({"topic": "sts", "args": args})))
            }
            ConnEvent::NonUtf8 if !self.silenced => Step::send(Message::Binary(
                vec![b'{', b'"', b't', 0xff, 0xfe, 0xc3, 0x28, b'"', b'}'].into(),
            )),
            // A frame cut off mid-value, as a truncated write would leave it.
            ConnEvent::Malformed if !self.silenced => {
                Step::send(Message::Text(r#"{"topic":"smd+265598","31":"189.6"#.into()))
            }
            ConnEvent::Raw(text) if !self.silenced => Step::send(Message::Text(text.into())),
            ConnEvent::NonUtf8 | ConnEvent::Malformed | ConnEvent::Raw(_) => Step::default(),
            ConnEvent::SessionChanged => {
                if self.session.is_some() && self.session != self.sim.session_id() {
                    Step::end(End::Close(1000, "session ended"))
                } else {
                    Step::default()
                }
            }
        }
    }
}

/// The frame of one tick for one subscription: full the first time (and after a re-sent `smd`
/// with `--smd-resend-full-frame`), then only what changed since this connection's previous
/// frame. `None` when nothing changed.
fn frame(sub: &mut Sub, t: &Tick, conn: u64, cfg: &SimConfig) -> Option<Out> {
    let mut m = serde_json::Map::new();
    let first = !sub.first_sent;
    let full = first || sub.full_pending;
    let mut trade_field = false;
    let mut quote_field = false;
    let mut prefixed_last = false;
    for f in &sub.fields {
        let Some(v) = t.fields.get(f.as_str()) else {
            continue;
        };
        let prev = sub.last_sent.get(f);
        let differs = prev != Some(v);
        if !full && !differs {
            continue;
        }
        // A field's first appearance (added by a re-send) is not a change of value, nor is a
        // full frame's repeat of an unchanged one.
        let changed = prev.is_some() && differs;
        match f.as_str() {
            "31" => {
                let s = v.as_str().unwrap_or("");
                if s.starts_with(['H', 'C']) {
                    prefixed_last = true;
                } else if changed {
                    trade_field = true;
                }
            }
            "7059" if changed => trade_field = true,
            "84" | "86" | "85" | "88" => quote_field = true,
            _ => {}
        }
        m.insert(f.clone(), v.clone());
    }
    if !full && m.is_empty() {
        return None;
    }
    for (k, v) in &m {
        sub.last_sent.insert(k.clone(), v.clone());
    }
    // Full frames carry 6509 even when it was not requested (IB's example frame and the live
    // recordings have it); after that it comes only when it changes and was requested.
    let availability = t
        .fields
        .get("6509")
        .and_then(Value::as_str)
        .unwrap_or(AVAILABILITY);
    if full {
        m.insert("6509".into(), json!(availability));
    }
    sub.first_sent = true;
    sub.full_pending = false;
    let conid = t.conid();
    m.insert("_updated".into(), json!(t.updated));
    // Deltas without conid/conidEx occur [O1; O3]; the topic still names the conid. The
    // choice hangs on the tick so that it is reproducible under a seed.
    if first || !t.draw(cfg.conidless_probability) {
        m.insert("conid".into(), json!(conid));
        m.insert("conidEx".into(), json!(sub.conid_ex));
    }
    m.insert("server_id".into(), json!(sub.server_id));
    m.insert("6119".into(), json!(sub.server_id));
    m.insert("topic".into(), json!(format!("smd+{conid}")));
    // The ledger holds what the connector must store in the real-time tables: nothing of a
    // symbol whose data is not real-time.
    let realtime = availability.starts_with('R');
    let mut ledger = Vec::new();
    if realtime {
        if !first && trade_field && !prefixed_last {
            let price = t
                .fields
                .get("31")
                .and_then(Value::as_str)
                .and_then(parse_ib_number)
                .unwrap_or(t.last_price);
            ledger.push(LedgerEntry::Trade {
                conid,
                symbol: t.inst.symbol.clone(),
                updated: t.updated,
                price,
                size: t.last_size,
                conn,
                gateway: cfg.username.clone(),
            });
        }
        if quote_field {
            ledger.push(LedgerEntry::Quote {
                conid,
                updated: t.updated,
                bid: t.bid,
                ask: t.ask,
                bid_size: t.bid_size,
                ask_size: t.ask_size,
                conn,
                gateway: cfg.username.clone(),
            });
        }
    }
    Some(Out {
        msg: text(Value::Object(m)),
        ledger,
    })
}
