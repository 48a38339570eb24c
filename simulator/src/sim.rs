//! The state of one gateway (one IB username), shared by its REST handlers, its websocket
//! connections and its background tasks. Every gateway of the process holds the same clock,
//! market and ledger; session, pacer, faults, lines and sockets are its own.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::clock::SimClock;
use crate::config::SimConfig;
use crate::fault::Fault;
use crate::ledger::Ledger;
use crate::lock;
use crate::market::Market;
use crate::session::{AuthStatus, Pacer, Session};

/// Something every open websocket must act on.
#[derive(Debug, Clone)]
pub enum ConnEvent {
    DropTcp,
    Silence,
    /// `sts` args to push; `authenticated:false` also ends the connection's subscriptions.
    Sts(Value),
    NonUtf8,
    Malformed,
    Raw(String),
    /// The SSO session ended or was replaced: sockets of the old session close.
    SessionChanged,
}

#[derive(Debug, Default)]
pub struct HttpFaults {
    pub fail_until: i64,
    pub fail_status: u16,
    pub slow_until: i64,
    pub slow_ms: u64,
}

pub struct Sim {
    /// The process config with this gateway's `listen`, `username` and `account`.
    pub cfg: SimConfig,
    pub clock: SimClock,
    pub market: Arc<Market>,
    pub ledger: Ledger,
    pub session: Mutex<Session>,
    pub pacer: Mutex<Pacer>,
    pub http_faults: Mutex<HttpFaults>,
    pub events: broadcast::Sender<ConnEvent>,
    /// Shared by all gateways: the market keys its subscribers by connection id.
    pub next_conn: Arc<AtomicU64>,
    /// `smd` lines open across all connections (for `--line-cap`).
    pub lines: AtomicUsize,
    pub open_conns: AtomicUsize,
    /// `/iserver/marketdata/history` requests in flight (IB allows 5).
    pub history_inflight: AtomicUsize,
    pub shutdown: watch::Receiver<bool>,
    /// The SSO login page's state (`sso.rs`).
    pub sso_page: Mutex<crate::sso::SsoLogin>,
}

impl Sim {
    /// Runs `f` on the session and tells the websockets what changed.
    pub fn apply<R>(&self, f: impl FnOnce(&mut Session, i64) -> R) -> R {
        let now = self.clock.now_ms();
        let mut s = lock(&self.session);
        let before = (s.status(), s.sso.as_ref().map(|x| x.id.clone()));
        let r = f(&mut s, now);
        let after = (s.status(), s.sso.as_ref().map(|x| x.id.clone()));
        drop(s);
        if before.0 != after.0 {
            tracing::info!(status = ?after.0, "session status changed");
            // No receivers is fine: nobody is connected.
            let _ = self.events.send(ConnEvent::Sts(after.0.sts_args()));
        }
        if before.1 != after.1 {
            let _ = self.events.send(ConnEvent::SessionChanged);
        }
        r
    }

    pub fn status(&self) -> AuthStatus {
        lock(&self.session).status()
    }

    pub fn session_id(&self) -> Option<String> {
        lock(&self.session).sso.as_ref().map(|s| s.id.clone())
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn inject(&self, fault: Fault) {
        tracing::info!(?fault, "injecting fault");
        let now = self.clock.now_ms();
        let secs_ms = |s: f64| (s.max(0.0) * 1000.0) as i64;
        match fault {
            Fault::DropTcp => {
                let _ = self.events.send(ConnEvent::DropTcp);
            }
            Fault::StopHeartbeats => {
                let _ = self.events.send(ConnEvent::Silence);
            }
            Fault::NonUtf8Frame => {
                let _ = self.events.send(ConnEvent::NonUtf8);
            }
            Fault::MalformedFrame => {
                let _ = self.events.send(ConnEvent::Malformed);
            }
            Fault::RawFrame { text } => {
                let _ = self.events.send(ConnEvent::Raw(text));
            }
            Fault::StsUnauthenticated => {
                let changed = self.apply(|s, _| {
                    let was = s.status();
                    s.expire_idle();
                    was != s.status()
                });
                // Already unauthenticated: the frame is the fault, so send it anyway.
                if !changed {
                    let _ = self.events.send(ConnEvent::Sts(self.status().sts_args()));
                }
            }
            Fault::ExpireSession => self.apply(|s, _| s.expire_idle()),
            Fault::NightlyReset => self.apply(|s, _| s.nightly_reset()),
            Fault::Competing { seconds } => {
                let until = seconds.map(|s| now + secs_ms(s));
                self.apply(|s, now| s.competing(now, until))
            }
            Fault::Http5xx { status, seconds } => {
                let mut h = lock(&self.http_faults);
                h.fail_status = if (500..=599).contains(&status) {
                    status
                } else {
                    tracing::warn!(status, "http_5xx status outside 500..=599; using 503");
                    503
                };
                h.fail_until = now + secs_ms(seconds);
            }
            Fault::Slow { millis, seconds } => {
                let mut h = lock(&self.http_faults);
                h.slow_ms = millis;
                h.slow_until = now + secs_ms(seconds);
            }
            Fault::PenaltyBox { seconds } => {
                let ms = seconds.map_or(self.cfg.penalty_box_secs as i64 * 1000, secs_ms);
                lock(&self.pacer).penalty_until = now + ms;
            }
        }
    }
}
