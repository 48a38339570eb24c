//! The gateway's session clock: the SSO (browser) login, the brokerage bridge opened by
//! `ssodh/init`, idle timeout, 24 h expiry, nightly reset and competing sessions. Plus
//! request pacing and its penalty box. All times are sim ms.
//!
//! The brokerage session comes up `brokerage_delay` after `ssodh/init` or `reauthenticate`,
//! not at once: at IB it takes 30–90 s (`shared/reference/ib-client-portal.md`, "Observed";
//! machdat/broker-gateway `docs/runbooks/cpgateway-session-resume.md`), which is why ibeam
//! polls the status up to 120 × 1 s after each call (`ibeam/src/handlers/strategy_handler.py`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

pub const SERVER_NAME: &str = "JifN19053";
pub const SERVER_VERSION: &str = "Build 10.25.0p, Dec 5, 2023 12:07:29 PM";
const MAC: &str = "98:F2:B3:23:BF:A0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sso {
    /// The `session` returned by `/tickle`, accepted by the websocket.
    pub id: String,
    /// Value of the gateway's own `x-sess-uuid` cookie (set on API answers; not the tickle
    /// session), shaped as a real gateway's: `0.34467b5c.1695377857.47099b9d`
    /// (gabrielbussolo/ibkr-api-gateway README, a `curl -i` of `/v1/api/trsrv/stocks`).
    pub sess_uuid: String,
    pub login_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bridge {
    /// No brokerage session: `/iserver/*` answers `400 no bridge`.
    None,
    Up {
        authenticated: bool,
        competing: bool,
        /// When `competing` turned on; `authenticated` drops after the grace period.
        competing_since: Option<i64>,
        /// When the competing session ends (it logs out); `None`: it stays.
        competing_until: Option<i64>,
        /// A brokerage start under way: `authenticated` turns true at this sim time.
        up_at: Option<i64>,
    },
}

/// What clients asked of the session endpoints: the tests count calls here, at the gateway,
/// instead of trusting the client's own account.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Calls {
    /// Per endpoint: `ssodh_init`, `ssodh_init_compete` (with `compete:true`),
    /// `reauthenticate`, `reauthenticate_force`, `logout`, `tickle`, `auth_status`.
    pub counts: BTreeMap<String, u64>,
    /// The bodies of the last `ssodh/init` calls (at most 20), as sent.
    pub ssodh_init_bodies: VecDeque<Value>,
    /// Websocket upgrades; those whose `Cookie` carried the gateway's `x-sess-uuid`; those
    /// that sent the tickle session id as `x-sess-uuid` (a client mistake).
    pub ws_upgrades: u64,
    pub ws_upgrades_with_gateway_cookie: u64,
    pub ws_upgrades_with_session_as_sess_uuid: u64,
    /// Empty POSTs without `Content-Length` (answered 411 with `--require-content-length`).
    pub posts_without_length: u64,
}

impl Calls {
    pub fn count(&mut self, what: &str) {
        *self.counts.entry(what.to_string()).or_default() += 1;
    }
}

/// What `auth/status`, `tickle` and `sts` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthStatus {
    pub authenticated: bool,
    pub competing: bool,
    pub connected: bool,
}

impl AuthStatus {
    pub fn to_json(self) -> Value {
        json!({
            "authenticated": self.authenticated,
            "competing": self.competing,
            "connected": self.connected,
            "message": "",
            "MAC": MAC,
            "serverInfo": {"serverName": SERVER_NAME, "serverVersion": SERVER_VERSION},
            "fail": "",
            "prompts": [],
            "established": self.authenticated && self.connected,
        })
    }

    pub fn sts_args(self) -> Value {
        json!({
            "authenticated": self.authenticated,
            "competing": self.competing,
            "connected": self.connected,
            "established": self.authenticated && self.connected,
            "message": "",
            "fail": "",
            "serverName": SERVER_NAME,
            "serverVersion": SERVER_VERSION,
        })
    }
}

#[derive(Debug)]
pub struct Session {
    pub sso: Option<Sso>,
    pub bridge: Bridge,
    pub last_request_ms: i64,
    /// Conids whose snapshot pre-flight was answered.
    pub preflight: HashSet<u32>,
    pub calls: Calls,
    idle_ms: i64,
    max_ms: i64,
    competing_grace_ms: i64,
    brokerage_delay_ms: i64,
    auto_login: bool,
    rng: ChaCha8Rng,
}

impl Session {
    pub fn new(
        seed: u64,
        auto_login: bool,
        idle_secs: u64,
        max_secs: u64,
        competing_grace_secs: u64,
        brokerage_delay_ms: u64,
        now: i64,
    ) -> Self {
        let mut s = Self {
            sso: None,
            bridge: Bridge::None,
            last_request_ms: now,
            preflight: HashSet::new(),
            calls: Calls::default(),
            idle_ms: idle_secs as i64 * 1000,
            max_ms: max_secs as i64 * 1000,
            competing_grace_ms: competing_grace_secs as i64 * 1000,
            brokerage_delay_ms: brokerage_delay_ms as i64,
            auto_login,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5e55_1011),
        };
        if auto_login {
            s.login(now);
        }
        s
    }

    /// A browser (SSO) login: a new session id; the brokerage bridge still needs `ssodh/init`.
    pub fn login(&mut self, now: i64) {
        let id: String = (0..32)
            .map(|_| char::from_digit(self.rng.random_range(0..16), 16).unwrap_or('0'))
            .collect();
        let (a, b): (u32, u32) = (self.rng.random(), self.rng.random());
        let sess_uuid = format!("0.{a:08x}.{}.{b:08x}", now.max(0) / 1000);
        self.sso = Some(Sso {
            id,
            sess_uuid,
            login_ms: now,
        });
        self.bridge = Bridge::None;
        self.preflight.clear();
        self.last_request_ms = now;
    }

    pub fn status(&self) -> AuthStatus {
        match (self.sso.is_some(), self.bridge) {
            (
                true,
                Bridge::Up {
                    authenticated,
                    competing,
                    ..
                },
            ) => AuthStatus {
                authenticated,
                competing,
                connected: true,
            },
            _ => AuthStatus {
                authenticated: false,
                competing: false,
                connected: false,
            },
        }
    }

    pub fn sso_expires_in(&self, now: i64) -> i64 {
        self.sso
            .as_ref()
            .map(|s| (s.login_ms + self.max_ms - now).max(0))
            .unwrap_or(0)
    }

    /// Applies the clock: 24 h expiry, idle timeout, the end of a competing grace period,
    /// the end of a competing session, a brokerage start that completes.
    pub fn check_clock(&mut self, now: i64) {
        if let Some(sso) = &self.sso
            && now - sso.login_ms >= self.max_ms
        {
            self.end_sso(now);
        }
        if let Bridge::Up {
            authenticated,
            competing,
            competing_since,
            competing_until,
            up_at,
        } = &mut self.bridge
        {
            if let Some(at) = *up_at
                && now >= at
            {
                *up_at = None;
                *authenticated = !*competing;
                // The start counts as activity: the idle clock starts now.
                self.last_request_ms = now;
            }
            if *authenticated && now - self.last_request_ms >= self.idle_ms {
                *authenticated = false;
            }
            if let Some(since) = *competing_since
                && now - since >= self.competing_grace_ms
            {
                *authenticated = false;
                *competing_since = None;
            }
            if let Some(until) = *competing_until
                && now >= until
            {
                // The other session logged out. IB does not hand the brokerage session back
                // by itself [?]: this gateway stays unauthenticated until its client calls
                // `reauthenticate` or `ssodh/init` (without kicking anybody now).
                *competing = false;
                *competing_since = None;
                *competing_until = None;
                *authenticated = false;
            }
        }
    }

    /// The SSO session ends; with auto-login a fresh browser login takes its place.
    fn end_sso(&mut self, now: i64) {
        self.sso = None;
        self.bridge = Bridge::None;
        self.preflight.clear();
        if self.auto_login {
            self.login(now);
        }
    }

    pub fn touch(&mut self, now: i64) {
        self.last_request_ms = now;
    }

    /// When a brokerage start begun now completes (`None`: at once).
    fn start_at(&self, now: i64) -> Option<i64> {
        (self.brokerage_delay_ms > 0).then_some(now + self.brokerage_delay_ms)
    }

    /// `ssodh/init`: opens (or re-opens) the brokerage session; `compete` kicks a competitor
    /// ("determines if other brokerage sessions should be disconnected", Voyz/ibind
    /// `session_mixin.py`). The session is authenticated after the brokerage delay; a call
    /// while a start is under way does not restart it.
    pub fn ssodh_init(&mut self, compete: bool, now: i64) {
        if self.sso.is_none() {
            return;
        }
        let (was_competing, until, pending, authed) = match self.bridge {
            Bridge::Up {
                competing,
                competing_until,
                up_at,
                authenticated,
                ..
            } => (competing, competing_until, up_at, authenticated),
            Bridge::None => (false, None, None, false),
        };
        let competing = was_competing && !compete;
        let up_at = if competing || authed {
            None
        } else {
            pending.or(self.start_at(now))
        };
        self.bridge = Bridge::Up {
            authenticated: !competing && (authed || up_at.is_none()),
            competing,
            competing_since: None,
            competing_until: if competing { until } else { None },
            up_at,
        };
    }

    /// `reauthenticate`: restores authentication of an existing bridge (after the brokerage
    /// delay); `force` kicks a competitor. Without a bridge it opens one, as the gateway does
    /// after a reset.
    pub fn reauthenticate(&mut self, force: bool, now: i64) {
        if self.sso.is_none() {
            return;
        }
        let start = self.start_at(now);
        match &mut self.bridge {
            Bridge::Up {
                authenticated,
                competing,
                competing_since,
                competing_until,
                up_at,
            } => {
                if *competing && force {
                    *competing = false;
                    *competing_since = None;
                    *competing_until = None;
                }
                if !*competing && !*authenticated && up_at.is_none() {
                    match start {
                        Some(at) => *up_at = Some(at),
                        None => *authenticated = true,
                    }
                }
            }
            Bridge::None => self.ssodh_init(false, now),
        }
    }

    pub fn logout(&mut self, now: i64) {
        self.end_sso(now);
    }

    pub fn expire_idle(&mut self) {
        if let Bridge::Up { authenticated, .. } = &mut self.bridge {
            *authenticated = false;
        }
    }

    /// IB's ~01:00 reset of /iserver: the bridge is gone until the next `ssodh/init`.
    pub fn nightly_reset(&mut self) {
        self.bridge = Bridge::None;
        self.preflight.clear();
    }

    /// Another login of the same user: `competing:true` now, `authenticated:false` after
    /// the grace period (machdat/broker-gateway `docs/runbooks/cpgateway-troubleshooting.md`
    /// §4: `competing:true` soon followed by `authenticated:false`); with `until`, the other
    /// session logs out then.
    pub fn competing(&mut self, now: i64, until: Option<i64>) {
        if let Bridge::Up {
            competing,
            competing_since,
            competing_until,
            up_at,
            ..
        } = &mut self.bridge
        {
            *competing = true;
            *competing_since = Some(now);
            *competing_until = until;
            *up_at = None;
        }
    }
}

/// Sliding windows over sim time: global 10/s, tickle 1/s, snapshot 10/s, validate 1/min.
#[derive(Debug, Default)]
pub struct Pacer {
    windows: HashMap<&'static str, VecDeque<i64>>,
    pub penalty_until: i64,
}

/// Which limits a request path falls under: (key, max requests, window ms).
fn limits(path: &str) -> Vec<(&'static str, usize, i64)> {
    let mut l = vec![("global", 10, 1_000)];
    if path.ends_with("/tickle") {
        l.push(("tickle", 1, 1_000));
    } else if path.ends_with("/iserver/marketdata/snapshot") {
        l.push(("snapshot", 10, 1_000));
    } else if path.ends_with("/sso/validate") {
        l.push(("validate", 1, 60_000));
    }
    l
}

impl Pacer {
    /// Counts a request; `false` means 429 (and, for a fresh breach, the penalty box).
    pub fn admit(&mut self, path: &str, now: i64, penalty_ms: i64) -> bool {
        if now < self.penalty_until {
            return false;
        }
        let lims = limits(path);
        let mut breach = false;
        for (key, max, window) in &lims {
            let q = self.windows.entry(key).or_default();
            while q.front().is_some_and(|t| now - *t >= *window) {
                q.pop_front();
            }
            if q.len() >= *max {
                breach = true;
            }
        }
        if breach {
            tracing::warn!(path, "pacing limit breached: penalty box");
            self.penalty_until = now + penalty_ms;
            return false;
        }
        for (key, _, _) in &lims {
            self.windows.entry(key).or_default().push_back(now);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let mut s = Session::new(1, true, 300, 86_400, 2, 0, 0);
        assert!(s.sso.is_some());
        assert!(!s.status().connected);
        s.ssodh_init(true, 0);
        assert!(s.status().authenticated);
        s.check_clock(299_000);
        assert!(s.status().authenticated);
        s.check_clock(300_000);
        let st = s.status();
        assert!(st.connected && !st.authenticated);
        s.reauthenticate(false, 300_000);
        assert!(s.status().authenticated);
        s.touch(400_000);
        s.competing(400_000, None);
        assert!(s.status().competing && s.status().authenticated);
        s.check_clock(402_000);
        assert!(!s.status().authenticated);
        s.reauthenticate(true, 402_000);
        assert!(s.status().authenticated && !s.status().competing);
        let id = s.sso.clone().map(|x| x.id);
        s.check_clock(86_400_000);
        assert_ne!(s.sso.clone().map(|x| x.id), id);
        assert!(!s.status().connected);
    }

    #[test]
    fn the_brokerage_session_comes_up_after_the_delay_and_a_repeated_call_does_not_restart_it() {
        let mut s = Session::new(1, true, 300, 86_400, 2, 90_000, 0);
        let uuid = s.sso.clone().map(|x| x.sess_uuid).unwrap_or_default();
        assert!(
            uuid.starts_with("0.") && uuid.split('.').count() == 4,
            "{uuid}"
        );
        s.ssodh_init(false, 0);
        assert!(s.status().connected && !s.status().authenticated);
        s.ssodh_init(false, 60_000);
        s.check_clock(89_999);
        assert!(!s.status().authenticated);
        s.check_clock(90_000);
        assert!(s.status().authenticated);
        // An idle expiry: reauthenticate starts the brokerage session again, with the delay.
        s.expire_idle();
        s.reauthenticate(false, 100_000);
        s.check_clock(150_000);
        assert!(!s.status().authenticated);
        s.check_clock(190_000);
        assert!(s.status().authenticated);
    }

    #[test]
    fn a_competing_session_that_ends_leaves_this_one_to_reauthenticate_without_force() {
        let mut s = Session::new(1, true, 300, 86_400, 2, 0, 0);
        s.ssodh_init(false, 0);
        s.competing(10_000, Some(40_000));
        s.touch(13_000);
        s.check_clock(13_000);
        assert!(s.status().competing && !s.status().authenticated);
        // Neither a plain reauthenticate nor ssodh/init without compete kicks it.
        s.reauthenticate(false, 20_000);
        s.ssodh_init(false, 20_000);
        assert!(s.status().competing && !s.status().authenticated);
        s.touch(40_000);
        s.check_clock(40_000);
        assert!(!s.status().competing && !s.status().authenticated);
        s.reauthenticate(false, 41_000);
        assert!(s.status().authenticated);
    }

    #[test]
    fn pacing() {
        let mut p = Pacer::default();
        assert!(p.admit("/v1/api/tickle", 0, 600_000));
        assert!(!p.admit("/v1/api/tickle", 500, 600_000));
        assert!(!p.admit("/v1/api/iserver/accounts", 599_000, 600_000));
        assert!(p.admit("/v1/api/iserver/accounts", 601_000, 600_000));
    }
}
