//! The session's recovery decisions, apart from any I/O: given what the gateway answered (an
//! [`Observation`]) and the time, which state the session is in, what to call, and when to
//! look again. The actor (`actor.rs`) does the calls; tests drive this on paused time.
//!
//! How IB behaves, and what follows from it:
//! - After `ssodh/init` (or `reauthenticate`) IB brings the brokerage session up
//!   asynchronously, 30–90 s later (`shared/reference/ib-client-portal.md`, "Observed";
//!   Voyz/ibeam polls up to 120 × 1 s after each re-authentication:
//!   `ibeam/src/handlers/strategy_handler.py` `_repeatedly_check_status`,
//!   `IBEAM_MAX_STATUS_CHECK_RETRIES = 120` in `ibeam/src/var.py`). Calling again meanwhile
//!   starts it over, so after a call we only poll, with back-off, for `auth_wait`, and never
//!   call more than once per `reauth_min_interval` on one SSO session.
//! - The ladder is ibeam's (`_post_authentication` → `_repeatedly_reauthenticate`, at most
//!   `IBEAM_MAX_REAUTHENTICATE_RETRIES = 3`, then `kill_gateway`, and its next maintenance
//!   cycle starts the gateway and logs in): `ssodh/init` once, then up to `reauth_attempts`
//!   re-authentications each waited out, then escalate (logout, gateway restart, login).
//! - HTTP 500/503 and answers that are not JSON are IB restarting its servers (nightly reset,
//!   weekend maintenance; ibeam logs "One of reasons for this error is IBKR server restart" and
//!   "We may need to wait until the servers are ready", `ibeam/src/handlers/http_handler.py`).
//!   We wait: no call, no restart, and the time does not count against `auth_wait`.
//! - A gateway is restarted only when its port refuses connections for `gateway_dead_after`
//!   (its process exiting is the gateway actor's business).
//! - A competing session (another login of the same user) is reported, not fought: no call
//!   while IB says `competing:true` (unless `ib.compete`); when the other session ends the
//!   ladder resumes with `compete:false` and without `force`.

use std::time::Duration;

use tokio::time::Instant;

use super::state::SessionState;

/// What one look at the gateway said.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// An SSO session exists; its brokerage status.
    Status {
        /// `/tickle`'s `session`.
        session: String,
        authenticated: bool,
        competing: bool,
        connected: bool,
    },
    /// 401 or `{"error":"no session"}`: nobody is logged in at the gateway.
    NoSession(String),
    /// 5xx or an unreadable answer: IB's servers are restarting.
    Maintenance(String),
    /// 429: IB's penalty box.
    RateLimited(String),
    /// The gateway's port refused the connection.
    Refused(String),
    /// Timed out or failed after connecting: the gateway is there but not answering.
    Unresponsive(String),
}

/// What the actor should call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// `ssodh/init`: open the brokerage bridge of this SSO session.
    Init,
    /// `reauthenticate`, then `ssodh/init` (a reset also drops the bridge).
    Reauthenticate,
    /// The ladder is exhausted: logout, restart a supervised gateway, run the login command.
    Escalate,
    /// The gateway's port refused connections for `gateway_dead_after`.
    RestartGateway,
    /// No SSO session: run the login command (it keeps its own `login_retry`).
    Login,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: SessionState,
    pub action: Action,
    /// When to look again.
    pub next: Duration,
    /// Why, for `last_failure` and the log (`None` when all is well).
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    pub tickle_interval: Duration,
    pub auth_wait: Duration,
    pub reauth_min_interval: Duration,
    pub reauth_attempts: u32,
    pub gateway_dead_after: Duration,
    pub penalty_box: Duration,
    pub compete: bool,
}

impl RecoveryConfig {
    pub fn from_ib(ib: &crate::config::IbConfig) -> Self {
        Self {
            tickle_interval: ib.tickle_interval,
            auth_wait: ib.auth_wait,
            reauth_min_interval: ib.reauth_min_interval,
            reauth_attempts: ib.reauth_attempts,
            gateway_dead_after: ib.gateway_dead_after,
            penalty_box: ib.penalty_box,
            compete: ib.compete,
        }
    }
}

/// Longest pause between two status polls while waiting for the brokerage session (or the
/// tickle interval, if shorter).
const MAX_POLL: Duration = Duration::from_secs(10);
/// Longest pause between two looks during maintenance (or the tickle interval, if shorter).
const MAX_MAINTENANCE_POLL: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Recovery {
    cfg: RecoveryConfig,
    /// The SSO session the counters below belong to; a new login starts them over.
    session: Option<String>,
    /// `ssodh/init` was called on this SSO session.
    initialized: bool,
    /// The last `ssodh/init` or `reauthenticate` on this SSO session.
    last_call: Option<Instant>,
    /// Since when we wait for `authenticated:true` after that call.
    waiting_since: Option<Instant>,
    /// Re-authentications in this episode (reset once authenticated).
    attempts: u32,
    /// Polls (or maintenance looks) since the last call, for the back-off.
    polls: u32,
    refused_since: Option<Instant>,
}

impl Recovery {
    pub fn new(cfg: RecoveryConfig) -> Self {
        Self {
            cfg,
            session: None,
            initialized: false,
            last_call: None,
            waiting_since: None,
            attempts: 0,
            polls: 0,
            refused_since: None,
        }
    }

    /// Ops asked for a re-authentication (`ctl reauth`): the next look may call at once.
    pub fn request_now(&mut self) {
        self.last_call = None;
        self.waiting_since = None;
    }

    /// Re-authentications in the current episode.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long we have been waiting for the brokerage session after a call.
    pub fn waiting_for(&self, now: Instant) -> Option<Duration> {
        self.waiting_since.map(|t| now.saturating_duration_since(t))
    }

    fn backoff(&mut self, cap: Duration) -> Duration {
        let d = Duration::from_secs(1) * 2u32.saturating_pow(self.polls.min(10));
        self.polls = self.polls.saturating_add(1);
        d.min(cap)
    }

    fn forget_session(&mut self) {
        self.session = None;
        self.initialized = false;
        self.last_call = None;
        self.waiting_since = None;
        self.attempts = 0;
        self.polls = 0;
    }

    pub fn decide(&mut self, obs: &Observation, now: Instant) -> Decision {
        let decision = |state, action, next, reason: Option<String>| Decision {
            state,
            action,
            next,
            reason,
        };
        match obs {
            Observation::Refused(e) => {
                let since = *self.refused_since.get_or_insert(now);
                let down = now.saturating_duration_since(since);
                if down >= self.cfg.gateway_dead_after {
                    self.refused_since = None;
                    self.forget_session();
                    return decision(
                        SessionState::GatewayUnreachable,
                        Action::RestartGateway,
                        Duration::from_secs(2),
                        Some(format!("gateway refused connections for {down:?}: {e}")),
                    );
                }
                decision(
                    SessionState::GatewayUnreachable,
                    Action::None,
                    Duration::from_secs(2),
                    Some(e.clone()),
                )
            }
            Observation::Unresponsive(e) => {
                // The port accepted: a busy or hung gateway, not a dead one.
                self.refused_since = None;
                decision(
                    SessionState::GatewayUnreachable,
                    Action::None,
                    Duration::from_secs(2),
                    Some(e.clone()),
                )
            }
            Observation::Maintenance(e) => {
                self.refused_since = None;
                // Time in maintenance says nothing about the brokerage session: the wait
                // starts over when IB answers again.
                if self.waiting_since.is_some() {
                    self.waiting_since = Some(now);
                }
                let next = self.backoff(MAX_MAINTENANCE_POLL.min(self.cfg.tickle_interval));
                decision(
                    SessionState::Maintenance,
                    Action::None,
                    next,
                    Some(e.clone()),
                )
            }
            Observation::RateLimited(e) => decision(
                SessionState::PenaltyBox,
                Action::None,
                self.cfg.penalty_box,
                Some(e.clone()),
            ),
            Observation::NoSession(e) => {
                self.refused_since = None;
                self.forget_session();
                decision(
                    SessionState::NeedsLogin,
                    Action::Login,
                    Duration::from_secs(5),
                    Some(format!("no session: {e}")),
                )
            }
            Observation::Status {
                session,
                authenticated,
                competing,
                connected,
            } => {
                self.refused_since = None;
                if self.session.as_deref() != Some(session.as_str()) {
                    // A new login: its brokerage session has seen no call yet.
                    self.forget_session();
                    self.session = Some(session.clone());
                }
                if *competing && !self.cfg.compete {
                    // Someone else holds the user. Whatever we call would kick them (or get
                    // us kicked back): report, and look again at the tickle pace.
                    self.waiting_since = None;
                    self.attempts = 0;
                    self.polls = 0;
                    return decision(
                        SessionState::Competing,
                        Action::None,
                        self.cfg.tickle_interval,
                        Some("competing session: another login of this user holds it".into()),
                    );
                }
                if *authenticated && *connected && !*competing {
                    self.initialized = true;
                    self.waiting_since = None;
                    self.attempts = 0;
                    self.polls = 0;
                    return decision(
                        SessionState::Authenticated,
                        Action::None,
                        self.cfg.tickle_interval,
                        None,
                    );
                }
                self.recover(now, *authenticated, *connected)
            }
        }
    }

    /// Not (yet) authenticated on a live SSO session: wait for the last call, or climb.
    fn recover(&mut self, now: Instant, authenticated: bool, connected: bool) -> Decision {
        // Waiting after `ssodh/init` (or before the first one) is the brokerage start; any
        // other wait follows a lost authentication.
        let starting = self.attempts == 0 && (self.waiting_since.is_some() || !self.initialized);
        let waiting_state = if starting {
            SessionState::Initializing
        } else {
            SessionState::Reauthenticating
        };
        let what = format!("authenticated:{authenticated} connected:{connected}");
        if let Some(since) = self.waiting_since {
            let waited = now.saturating_duration_since(since);
            if waited < self.cfg.auth_wait {
                let cap = MAX_POLL.min(self.cfg.tickle_interval);
                let next = self.backoff(cap).min(self.cfg.auth_wait - waited);
                return Decision {
                    state: waiting_state,
                    action: Action::None,
                    next: next.max(Duration::from_millis(100)),
                    reason: Some(format!(
                        "waiting for the brokerage session ({what}, {:.0} s of {:.0} s)",
                        waited.as_secs_f64(),
                        self.cfg.auth_wait.as_secs_f64()
                    )),
                };
            }
        }
        if let Some(last) = self.last_call {
            let since = now.saturating_duration_since(last);
            if since < self.cfg.reauth_min_interval {
                return Decision {
                    state: waiting_state,
                    action: Action::None,
                    next: (self.cfg.reauth_min_interval - since).min(MAX_POLL),
                    reason: Some(format!(
                        "{what}; next re-authentication in {:.0} s",
                        (self.cfg.reauth_min_interval - since).as_secs_f64()
                    )),
                };
            }
        }
        let (state, action, reason) = if !self.initialized {
            self.initialized = true;
            (
                SessionState::Initializing,
                Action::Init,
                format!("{what}: opening the brokerage session (ssodh/init)"),
            )
        } else if self.attempts < self.cfg.reauth_attempts {
            self.attempts += 1;
            (
                SessionState::Reauthenticating,
                Action::Reauthenticate,
                format!(
                    "{what}: re-authenticating ({} of {})",
                    self.attempts, self.cfg.reauth_attempts
                ),
            )
        } else {
            let tried = self.attempts;
            self.attempts = 0;
            self.initialized = false;
            (
                SessionState::Reauthenticating,
                Action::Escalate,
                format!(
                    "{what} after {tried} re-authentications: restarting the gateway and logging in"
                ),
            )
        };
        self.last_call = Some(now);
        self.waiting_since = (action != Action::Escalate).then_some(now);
        self.polls = 0;
        Decision {
            state,
            action,
            next: self.backoff(MAX_POLL),
            reason: Some(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RecoveryConfig {
        RecoveryConfig {
            tickle_interval: Duration::from_secs(60),
            auth_wait: Duration::from_secs(120),
            reauth_min_interval: Duration::from_secs(60),
            reauth_attempts: 3,
            gateway_dead_after: Duration::from_secs(60),
            penalty_box: Duration::from_secs(600),
            compete: false,
        }
    }

    fn status(authenticated: bool, competing: bool, connected: bool) -> Observation {
        Observation::Status {
            session: "s1".into(),
            authenticated,
            competing,
            connected,
        }
    }

    /// Runs the machine as the actor does (look, act, sleep `next`) for `for_`, feeding it
    /// `obs(elapsed)`; returns the actions taken with their times.
    async fn drive(
        r: &mut Recovery,
        for_: Duration,
        mut obs: impl FnMut(Duration) -> Observation,
    ) -> Vec<(Duration, Action, SessionState)> {
        let start = Instant::now();
        let mut out = Vec::new();
        while start.elapsed() < for_ {
            let d = r.decide(&obs(start.elapsed()), Instant::now());
            if d.action != Action::None {
                out.push((start.elapsed(), d.action, d.state.clone()));
            }
            tokio::time::sleep(d.next).await;
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_ninety_second_brokerage_start_costs_one_init_and_no_reauthentication() {
        let mut r = Recovery::new(cfg());
        let calls = drive(&mut r, Duration::from_secs(300), |t| {
            if t < Duration::from_secs(90) {
                status(false, false, t > Duration::from_secs(1))
            } else {
                status(true, false, true)
            }
        })
        .await;
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].1, Action::Init);
        let last = r.decide(&status(true, false, true), Instant::now());
        assert_eq!(last.state, SessionState::Authenticated);
    }

    #[tokio::test(start_paused = true)]
    async fn polls_back_off_while_waiting() {
        let mut r = Recovery::new(cfg());
        let mut looks = 0;
        drive(&mut r, Duration::from_secs(100), |_| {
            looks += 1;
            status(false, false, true)
        })
        .await;
        // 1, 2, 4, 8, then every 10 s: about a dozen looks in 100 s, not a hundred.
        assert!((8..=16).contains(&looks), "{looks} status looks in 100 s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_ladder_is_init_then_three_spaced_reauthentications_then_escalation() {
        let mut r = Recovery::new(cfg());
        let calls = drive(&mut r, Duration::from_secs(1000), |_| {
            status(false, false, true)
        })
        .await;
        let actions: Vec<Action> = calls.iter().map(|c| c.1).collect();
        assert_eq!(
            &actions[..5],
            &[
                Action::Init,
                Action::Reauthenticate,
                Action::Reauthenticate,
                Action::Reauthenticate,
                Action::Escalate
            ],
            "{calls:?}"
        );
        for w in calls.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!(
                gap >= Duration::from_secs(60),
                "calls {gap:?} apart: {calls:?}"
            );
        }
        // Each rung is waited out for auth_wait before the next.
        assert!(calls[1].0 - calls[0].0 >= Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_authentication_is_reauthenticated_at_once_but_not_again_within_the_interval() {
        let mut r = Recovery::new(cfg());
        assert_eq!(
            r.decide(&status(false, false, false), Instant::now())
                .action,
            Action::Init
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            r.decide(&status(true, false, true), Instant::now()).state,
            SessionState::Authenticated
        );
        // Idle expiry 10 s later: within reauth_min_interval of the init, so it waits.
        tokio::time::advance(Duration::from_secs(10)).await;
        let d = r.decide(&status(false, false, true), Instant::now());
        assert_eq!(d.action, Action::None);
        assert_eq!(d.state, SessionState::Reauthenticating);
        tokio::time::advance(Duration::from_secs(21)).await;
        let d = r.decide(&status(false, false, true), Instant::now());
        assert_eq!(d.action, Action::Reauthenticate);
        // The websocket nudging us every 2 s changes nothing.
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(2)).await;
            assert_eq!(
                r.decide(&status(false, false, true), Instant::now()).action,
                Action::None
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn maintenance_is_waited_out_without_a_call_or_a_restart() {
        let mut r = Recovery::new(cfg());
        r.decide(&status(true, false, true), Instant::now());
        let calls = drive(&mut r, Duration::from_secs(600), |t| {
            if t < Duration::from_secs(300) {
                Observation::Maintenance("503 Service Unavailable".into())
            } else {
                status(true, false, true)
            }
        })
        .await;
        assert!(calls.is_empty(), "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn maintenance_during_a_wait_does_not_count_against_it() {
        let mut r = Recovery::new(cfg());
        assert_eq!(
            r.decide(&status(false, false, true), Instant::now()).action,
            Action::Init
        );
        let calls = drive(&mut r, Duration::from_secs(400), |t| {
            if t < Duration::from_secs(300) {
                Observation::Maintenance("500".into())
            } else if t < Duration::from_secs(380) {
                status(false, false, true)
            } else {
                status(true, false, true)
            }
        })
        .await;
        assert!(calls.is_empty(), "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_refusing_port_restarts_the_gateway_after_the_dead_period() {
        let mut r = Recovery::new(cfg());
        let calls = drive(&mut r, Duration::from_secs(59), |_| {
            Observation::Unresponsive("timed out".into())
        })
        .await;
        assert!(calls.is_empty());
        let calls = drive(&mut r, Duration::from_secs(70), |_| {
            Observation::Refused("connection refused".into())
        })
        .await;
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].1, Action::RestartGateway);
        assert!(calls[0].0 >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_competing_session_is_not_fought_and_its_end_resumes_without_force() {
        let mut r = Recovery::new(cfg());
        r.decide(&status(true, false, true), Instant::now());
        let calls = drive(&mut r, Duration::from_secs(600), |t| {
            if t < Duration::from_secs(300) {
                status(false, true, true)
            } else if t < Duration::from_secs(320) {
                status(false, false, true)
            } else {
                status(true, false, true)
            }
        })
        .await;
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].1, Action::Reauthenticate);
        assert!(calls[0].0 >= Duration::from_secs(300));
        assert_eq!(calls[0].2, SessionState::Reauthenticating);
        let mut fighting = Recovery::new(RecoveryConfig {
            compete: true,
            ..cfg()
        });
        fighting.decide(&status(true, false, true), Instant::now());
        let d = fighting.decide(&status(false, true, true), Instant::now());
        assert_eq!(
            d.action,
            Action::Reauthenticate,
            "ib.compete = true fights back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_login_may_init_at_once_and_no_session_asks_for_a_login() {
        let mut r = Recovery::new(cfg());
        assert_eq!(
            r.decide(&status(false, false, false), Instant::now())
                .action,
            Action::Init
        );
        let d = r.decide(&Observation::NoSession("401".into()), Instant::now());
        assert_eq!(
            (d.state, d.action),
            (SessionState::NeedsLogin, Action::Login)
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let fresh = Observation::Status {
            session: "s2".into(),
            authenticated: false,
            competing: false,
            connected: false,
        };
        assert_eq!(r.decide(&fresh, Instant::now()).action, Action::Init);
    }

    #[tokio::test(start_paused = true)]
    async fn ops_can_ask_for_a_reauthentication_now() {
        let mut r = Recovery::new(cfg());
        r.decide(&status(false, false, true), Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            r.decide(&status(false, false, true), Instant::now()).action,
            Action::None
        );
        r.request_now();
        assert_eq!(
            r.decide(&status(false, false, true), Instant::now()).action,
            Action::Reauthenticate
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_penalty_box_is_waited_out() {
        let mut r = Recovery::new(cfg());
        let d = r.decide(&Observation::RateLimited("/tickle".into()), Instant::now());
        assert_eq!(d.state, SessionState::PenaltyBox);
        assert_eq!(d.next, Duration::from_secs(600));
        assert_eq!(d.action, Action::None);
    }
}
