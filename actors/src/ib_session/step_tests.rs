//! The session's timing on paused time: `io::step` on a scripted gateway, run as the actor runs
//! it (a step, then a timer for `next`). Tickle cadence, the wait after a call, the pace of
//! re-authentications, the penalty box, a dead gateway, and the login command's retry.

use std::time::Duration;

use tokio::time::Instant;

use super::io::{SessionIo, Step, login_due, step};
use super::recovery::{Action, Observation, Recovery, RecoveryConfig};
use super::state::SessionState;

const SEC: Duration = Duration::from_secs(1);

fn cfg() -> RecoveryConfig {
    RecoveryConfig {
        tickle_interval: 60 * SEC,
        auth_wait: 120 * SEC,
        reauth_min_interval: 60 * SEC,
        reauth_attempts: 3,
        gateway_dead_after: 60 * SEC,
        penalty_box: 600 * SEC,
        compete: false,
    }
}

/// A call to the gateway and when (since the start).
type Call = (Duration, &'static str);

/// The gateway's answer at a moment, given the calls so far.
type Script = Box<dyn FnMut(Duration, &[Call]) -> Observation>;

/// What the gateway answers at each moment (since the start), and every call made, by time.
struct Gateway {
    start: Instant,
    script: Script,
    calls: Vec<Call>,
    fail_reauthenticate: bool,
}

impl Gateway {
    fn new(script: impl FnMut(Duration, &[Call]) -> Observation + 'static) -> Self {
        Self {
            start: Instant::now(),
            script: Box::new(script),
            calls: Vec::new(),
            fail_reauthenticate: false,
        }
    }

    fn at(&self) -> Duration {
        self.start.elapsed()
    }

    fn times(&self, call: &str) -> Vec<u64> {
        self.calls
            .iter()
            .filter(|(_, c)| *c == call)
            .map(|(t, _)| t.as_secs())
            .collect()
    }
}

impl SessionIo for Gateway {
    async fn observe(&mut self) -> (Observation, Option<String>) {
        let at = self.at();
        self.calls.push((at, "tickle"));
        let obs = (self.script)(at, &self.calls);
        let session = match &obs {
            Observation::Status { session, .. } => Some(session.clone()),
            _ => None,
        };
        (obs, session)
    }

    async fn ssodh_init(&mut self) -> Result<(), String> {
        self.calls.push((self.at(), "ssodh_init"));
        Ok(())
    }

    async fn reauthenticate(&mut self) -> Result<(), String> {
        self.calls.push((self.at(), "reauthenticate"));
        if self.fail_reauthenticate {
            return Err("500 Internal Server Error".into());
        }
        Ok(())
    }
}

fn status(authenticated: bool) -> Observation {
    Observation::Status {
        session: "s1".into(),
        authenticated,
        competing: false,
        connected: true,
    }
}

/// Runs the actor's loop (step, then sleep `next`) for `for_`; returns the steps taken.
async fn run(r: &mut Recovery, gw: &mut Gateway, for_: Duration) -> Vec<(u64, Step)> {
    let mut steps = Vec::new();
    while gw.at() < for_ {
        let s = step(r, gw).await;
        let next = s.decision.next;
        steps.push((gw.at().as_secs(), s));
        tokio::time::sleep(next).await;
    }
    steps
}

/// The time of the last call to `call` at or before `at`.
fn last_call(calls: &[Call], call: &str) -> Option<Duration> {
    calls
        .iter()
        .rev()
        .find(|(_, c)| *c == call)
        .map(|(t, _)| *t)
}

#[tokio::test(start_paused = true)]
async fn an_authenticated_session_is_tickled_at_the_tickle_interval_and_nothing_else() {
    let mut r = Recovery::new(cfg());
    let mut gw = Gateway::new(|_, _| status(true));
    let steps = run(&mut r, &mut gw, 300 * SEC).await;
    assert_eq!(gw.times("tickle"), vec![0, 60, 120, 180, 240]);
    assert_eq!(gw.calls.len(), 5, "{:?}", gw.calls);
    assert!(
        steps
            .iter()
            .all(|(_, s)| s.decision.state == SessionState::Authenticated)
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_authentication_costs_one_reauthenticate_and_init_then_polls_until_ib_is_back() {
    let mut r = Recovery::new(cfg());
    // Authenticated until 90 s; IB brings the brokerage session back 70 s after the call.
    let mut gw = Gateway::new(|at, calls| {
        let back = last_call(calls, "reauthenticate").is_some_and(|t| at >= t + 70 * SEC);
        status(at < 90 * SEC || back)
    });
    let steps = run(&mut r, &mut gw, 600 * SEC).await;
    // Lost at 90 s, seen at the 120 s tickle: reauthenticate then ssodh/init, once.
    assert_eq!(gw.times("reauthenticate"), vec![120]);
    assert_eq!(gw.times("ssodh_init"), vec![120]);
    let order: Vec<&str> = gw.calls.iter().map(|(_, c)| *c).collect();
    let i = order.iter().position(|c| *c == "reauthenticate").unwrap();
    assert_eq!(order[i + 1], "ssodh_init");
    // While waiting, looks come with back-off capped at 10 s, never a tickle interval apart.
    let looks = gw.times("tickle");
    let waiting: Vec<u64> = looks
        .iter()
        .copied()
        .filter(|t| (120..=190).contains(t))
        .collect();
    assert!(waiting.windows(2).all(|w| w[1] - w[0] <= 10), "{looks:?}");
    // Back at the first look ≥ 190 s, then the tickle cadence again.
    let back = steps
        .iter()
        .find(|(t, s)| *t > 120 && s.decision.state == SessionState::Authenticated)
        .map(|(t, _)| *t)
        .unwrap();
    assert!((190..=200).contains(&back), "{back}");
    let after: Vec<u64> = looks.iter().copied().filter(|t| *t >= back).collect();
    assert!(after.windows(2).all(|w| w[1] - w[0] == 60), "{after:?}");
}

#[tokio::test(start_paused = true)]
async fn reauthentications_are_spaced_and_the_ladder_escalates_after_the_attempts() {
    let mut r = Recovery::new(cfg());
    // Authenticated once at the start, then never again.
    let mut gw = Gateway::new(|at, _| status(at.is_zero()));
    // Until just after the escalation (the next ladder would start with `ssodh/init` again).
    let steps = run(&mut r, &mut gw, 430 * SEC).await;
    let reauths = gw.times("reauthenticate");
    assert_eq!(reauths.len(), 3, "{:?}", gw.calls);
    // Each waited out for auth_wait, and never closer than reauth_min_interval.
    assert!(
        reauths.windows(2).all(|w| w[1] - w[0] >= 120),
        "{reauths:?}"
    );
    let escalated: Vec<u64> = steps
        .iter()
        .filter(|(_, s)| s.decision.action == Action::Escalate)
        .map(|(t, _)| *t)
        .collect();
    assert!(!escalated.is_empty(), "no escalation");
    assert!(
        escalated[0] >= reauths[2] + 120,
        "escalated at {escalated:?} after {reauths:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_reauthenticate_is_reported_and_the_bridge_is_still_opened() {
    let mut r = Recovery::new(cfg());
    let mut gw = Gateway::new(|at, _| status(at.is_zero()));
    gw.fail_reauthenticate = true;
    let steps = run(&mut r, &mut gw, 61 * SEC).await;
    let (_, s) = steps
        .iter()
        .find(|(_, s)| s.decision.action == Action::Reauthenticate)
        .unwrap();
    assert_eq!(
        s.call_failure.as_deref(),
        Some("reauthenticate: 500 Internal Server Error")
    );
    assert_eq!(gw.times("ssodh_init"), gw.times("reauthenticate"));
}

#[tokio::test(start_paused = true)]
async fn the_penalty_box_is_waited_out_without_a_single_look() {
    let mut r = Recovery::new(cfg());
    // A 429 on the 60 s tickle only.
    let mut gw = Gateway::new(|at, _| {
        if (60 * SEC..61 * SEC).contains(&at) {
            Observation::RateLimited("/tickle".into())
        } else {
            status(true)
        }
    });
    let steps = run(&mut r, &mut gw, 700 * SEC).await;
    assert_eq!(gw.times("tickle"), vec![0, 60, 660]);
    assert_eq!(steps[1].1.decision.state, SessionState::PenaltyBox);
    assert_eq!(steps[2].1.decision.state, SessionState::Authenticated);
    assert_eq!(gw.calls.len(), 3, "no call from the box: {:?}", gw.calls);
}

#[tokio::test(start_paused = true)]
async fn only_a_port_refusing_for_gateway_dead_after_restarts_the_gateway() {
    let mut r = Recovery::new(cfg());
    // Refused from 0 to 40 s, unresponsive (a hung gateway) 40–50 s, refused again after.
    let mut gw = Gateway::new(|at, _| {
        if (40 * SEC..50 * SEC).contains(&at) {
            Observation::Unresponsive("timed out".into())
        } else {
            Observation::Refused("connection refused".into())
        }
    });
    let steps = run(&mut r, &mut gw, 120 * SEC).await;
    let restarts: Vec<u64> = steps
        .iter()
        .filter(|(_, s)| s.decision.action == Action::RestartGateway)
        .map(|(t, _)| *t)
        .collect();
    // The refusals before the hang do not count: 60 s from the first refusal after it.
    assert_eq!(restarts.first().copied(), Some(110), "{restarts:?}");
    assert!(
        steps
            .iter()
            .all(|(_, s)| s.decision.state == SessionState::GatewayUnreachable)
    );
    assert!(gw.calls.iter().all(|(_, c)| *c == "tickle"));
}

#[tokio::test(start_paused = true)]
async fn the_login_command_runs_at_most_once_per_login_retry_unless_escalating() {
    let retry = 300 * SEC;
    let start = Instant::now();
    assert!(login_due(None, start, retry, false), "never ran: due");
    tokio::time::advance(299 * SEC).await;
    assert!(!login_due(Some(start), Instant::now(), retry, false));
    assert!(login_due(Some(start), Instant::now(), retry, true));
    tokio::time::advance(SEC).await;
    assert!(login_due(Some(start), Instant::now(), retry, false));
}

#[tokio::test(start_paused = true)]
async fn no_session_asks_for_a_login_every_five_seconds_without_a_call() {
    let mut r = Recovery::new(cfg());
    let mut gw = Gateway::new(|_, _| Observation::NoSession("no session".into()));
    let steps = run(&mut r, &mut gw, 20 * SEC).await;
    assert_eq!(gw.times("tickle"), vec![0, 5, 10, 15]);
    assert!(
        steps.iter().all(|(_, s)| s.decision.action == Action::Login
            && s.decision.state == SessionState::NeedsLogin)
    );
    assert!(gw.calls.iter().all(|(_, c)| *c == "tickle"));
}
