//! The gateway calls of one recovery step behind a small seam: the actor runs [`step`] on its
//! `IbClient`, the tests (`step_tests.rs`) on a scripted gateway and paused time. Escalation,
//! gateway restarts and logins stay in the actor (they involve other actors and processes).

use std::time::Duration;

use tokio::time::Instant;

use super::recovery::{Action, Decision, Observation, Recovery};
use crate::ib_client::{IbClient, IbError};

/// What a recovery step asks of the gateway.
pub(crate) trait SessionIo {
    /// `/tickle`, and `auth/status` when the tickle carries none: the observation and the SSO
    /// session id (when the gateway answered with one).
    async fn observe(&mut self) -> (Observation, Option<String>);
    /// `ssodh/init`.
    async fn ssodh_init(&mut self) -> Result<(), String>;
    /// `reauthenticate`.
    async fn reauthenticate(&mut self) -> Result<(), String>;
}

/// One step: what the gateway said, what was decided, and a failed call of the ladder.
#[derive(Debug)]
pub(crate) struct Step {
    pub observation: Observation,
    pub session: Option<String>,
    pub decision: Decision,
    /// The last call of this step that failed (`ssodh/init: …`).
    pub call_failure: Option<String>,
}

/// Looks at the gateway, decides, and makes the ladder's own calls: `ssodh/init`, or
/// `reauthenticate` then `ssodh/init` (the bridge does not come back by itself after a reset).
pub(crate) async fn step(recovery: &mut Recovery, io: &mut impl SessionIo) -> Step {
    let (observation, session) = io.observe().await;
    let decision = recovery.decide(&observation, Instant::now());
    let mut call_failure = None;
    match decision.action {
        Action::Init => {
            if let Err(e) = io.ssodh_init().await {
                call_failure = Some(format!("ssodh/init: {e}"));
            }
        }
        Action::Reauthenticate => {
            if let Err(e) = io.reauthenticate().await {
                call_failure = Some(format!("reauthenticate: {e}"));
            }
            if let Err(e) = io.ssodh_init().await {
                call_failure = Some(format!("ssodh/init after reauthenticate: {e}"));
            }
        }
        _ => {}
    }
    Step {
        observation,
        session,
        decision,
        call_failure,
    }
}

/// Whether the login command may run now: at most once per `login_retry`, except for an
/// escalation (at most once per ladder, minutes apart).
pub(crate) fn login_due(
    last: Option<Instant>,
    now: Instant,
    login_retry: Duration,
    escalation: bool,
) -> bool {
    escalation || last.is_none_or(|t| now.saturating_duration_since(t) >= login_retry)
}

impl SessionIo for IbClient {
    async fn observe(&mut self) -> (Observation, Option<String>) {
        let classify = |e: IbError| match e {
            IbError::NoSession(m) => Observation::NoSession(m),
            IbError::RateLimited(m) => Observation::RateLimited(format!("429 on {m}")),
            IbError::Refused { message, .. } => Observation::Refused(message),
            IbError::Unreachable { message, .. } => Observation::Unresponsive(message),
            // 5xx and unreadable answers: IB restarting its servers (see recovery.rs).
            e @ (IbError::Status { .. } | IbError::BadReply { .. }) => {
                Observation::Maintenance(e.to_string())
            }
            IbError::NoBridge => Observation::Maintenance("no bridge on /tickle".into()),
            // Cannot happen after start-up (the client was built); never a reason to restart.
            IbError::Config(m) => Observation::Unresponsive(m),
        };
        let tickle = match self.tickle().await {
            Ok(t) => t,
            Err(e) => return (classify(e), None),
        };
        let session = tickle.session.clone().unwrap_or_default();
        let status = match tickle.iserver.and_then(|i| i.auth_status) {
            Some(s) => s,
            None => match self.auth_status().await {
                Ok(s) => s,
                // No brokerage bridge yet: not connected, not authenticated.
                Err(IbError::NoBridge) => Default::default(),
                Err(e) => return (classify(e), None),
            },
        };
        let obs = Observation::Status {
            session: session.clone(),
            authenticated: status.authenticated,
            competing: status.competing,
            connected: status.connected,
        };
        (obs, Some(session))
    }

    async fn ssodh_init(&mut self) -> Result<(), String> {
        IbClient::ssodh_init(self)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn reauthenticate(&mut self) -> Result<(), String> {
        IbClient::reauthenticate(self)
            .await
            .map_err(|e| e.to_string())
    }
}
