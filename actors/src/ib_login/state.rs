//! The login's decisions, apart from the browser so that they can be tested without one:
//! what a look at the page means at each stage, and when to stop trying.

use serde::{Deserialize, Serialize};

/// One look at the page (taken by a single script in the browser).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Observation {
    /// The success text is on the page.
    pub success: bool,
    /// The text of a visible error alert.
    pub error: Option<String>,
    /// The first visible second-factor code input (its selector).
    pub code_input: Option<String>,
    /// The push-notification step is visible.
    pub notification: bool,
    /// IB's "IB Key" promotion screen, which must be skipped.
    pub promo: bool,
}

/// Where the attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Username and password submitted.
    Credentials,
    /// A code was typed into the second-factor input and submitted.
    CodeSubmitted,
    /// Waiting for the push notification to be approved.
    Push,
}

/// Which input IB refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    Credentials,
    SecondFactor,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Self::Credentials => "wrong username or password",
            Self::SecondFactor => "wrong second factor",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Success,
    /// Nothing decisive yet.
    Wait,
    /// The page asks for a code in this input.
    EnterCode(String),
    /// The page waits for a push approval.
    AwaitPush,
    SkipPromo,
    /// IB says the user is a paper (or live) user in the other mode: switch and resubmit,
    /// as ibeam's `step_paper_toggle` does. Not a failed login.
    SwitchMode,
    Rejected(Rejection, String),
    /// IB says the account is locked: stop at once, whatever the counter says.
    Locked(String),
}

/// What the page means at `stage`. An error shown after a code was submitted is a wrong
/// second factor whatever its wording (IB's text for it is not published); before that it
/// is a wrong username or password (ibeam counts "Invalid username password combination"
/// and "failed").
pub fn next(stage: Stage, obs: &Observation, mode_switched: bool) -> Next {
    if obs.success {
        return Next::Success;
    }
    if let Some(text) = obs
        .error
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let low = text.to_ascii_lowercase();
        // ib-gateway-service (michaeljherrmann) reads `reached_max_login` from IB's
        // Authenticator answer: "Invalid username and password combination, reached max
        // limit". "locked" covers the wording of a locked account.
        if low.contains("locked") || low.contains("max limit") || low.contains("reached max") {
            return Next::Locked(text.to_string());
        }
        // ibeam `login_handler.py`: "You have selected the Live Account Mode, but the
        // specified user is a Paper Trading user. Please select the correct Login mode."
        if low.contains("login mode") && !mode_switched && stage == Stage::Credentials {
            return Next::SwitchMode;
        }
        let rejection = match stage {
            Stage::Credentials => Rejection::Credentials,
            Stage::CodeSubmitted | Stage::Push => Rejection::SecondFactor,
        };
        return Next::Rejected(rejection, text.to_string());
    }
    if obs.promo {
        return Next::SkipPromo;
    }
    match stage {
        Stage::Credentials => {
            if let Some(sel) = &obs.code_input {
                return Next::EnterCode(sel.clone());
            }
            if obs.notification {
                return Next::AwaitPush;
            }
            Next::Wait
        }
        Stage::CodeSubmitted | Stage::Push => Next::Wait,
    }
}

/// Counts failed logins in a row (wrong password or second factor; not timeouts or an
/// unreachable gateway, which IB does not count either). At `max` it locks: no more tries
/// until ops reset it (`ctl reauth`) or the process restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureGuard {
    max: u32,
    failures: u32,
    last: Option<String>,
    locked_by_ib: bool,
}

impl FailureGuard {
    pub fn new(max: u32) -> Self {
        Self {
            max: max.max(1),
            failures: 0,
            last: None,
            locked_by_ib: false,
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// Records a refused login; true when no further try is allowed.
    pub fn record(&mut self, reason: String) -> bool {
        self.failures += 1;
        self.last = Some(reason);
        self.locked()
    }

    /// IB itself said the account is locked.
    pub fn lock_by_ib(&mut self, reason: String) {
        self.failures += 1;
        self.last = Some(reason);
        self.locked_by_ib = true;
    }

    pub fn locked(&self) -> bool {
        self.locked_by_ib || self.failures >= self.max
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.last = None;
        self.locked_by_ib = false;
    }

    /// Why logins stopped, for `ctl status`, `/readyz` and the exit message.
    pub fn reason(&self) -> Option<String> {
        if !self.locked() {
            return None;
        }
        let last = self.last.as_deref().unwrap_or("unknown");
        Some(if self.locked_by_ib {
            format!(
                "login_failed: IB reports the account locked ({last}); unlock it at IB before the \
                 next try (a daemon: `marketlane ctl reauth`)"
            )
        } else {
            format!(
                "login_failed: {} failed logins in a row (max_failed_logins = {}), last: {last}; \
                 logins stopped because IB locks accounts after repeated failures: fix the \
                 credentials before the next try (a daemon: `marketlane ctl reauth`)",
                self.failures, self.max
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs() -> Observation {
        Observation::default()
    }

    #[test]
    fn an_error_before_the_code_is_a_wrong_password_after_it_a_wrong_code() {
        let o = Observation {
            error: Some("Invalid username password combination".into()),
            ..obs()
        };
        assert_eq!(
            next(Stage::Credentials, &o, false),
            Next::Rejected(
                Rejection::Credentials,
                "Invalid username password combination".into()
            )
        );
        let o = Observation {
            error: Some("Some new wording".into()),
            code_input: Some("#xyz-field-silver-response".into()),
            ..obs()
        };
        assert!(matches!(
            next(Stage::CodeSubmitted, &o, false),
            Next::Rejected(Rejection::SecondFactor, _)
        ));
    }

    #[test]
    fn success_wins_and_blank_errors_are_ignored() {
        let o = Observation {
            success: true,
            error: Some("stale".into()),
            ..obs()
        };
        assert_eq!(next(Stage::CodeSubmitted, &o, false), Next::Success);
        let o = Observation {
            error: Some("  ".into()),
            ..obs()
        };
        assert_eq!(next(Stage::Credentials, &o, false), Next::Wait);
    }

    #[test]
    fn second_factor_prompts_are_answered_once() {
        let o = Observation {
            code_input: Some("#xyz-field-bronze-response".into()),
            ..obs()
        };
        assert_eq!(
            next(Stage::Credentials, &o, false),
            Next::EnterCode("#xyz-field-bronze-response".into())
        );
        // After submitting, the input stays on the page until IB answers: wait, not retype.
        assert_eq!(next(Stage::CodeSubmitted, &o, false), Next::Wait);
        let o = Observation {
            notification: true,
            ..obs()
        };
        assert_eq!(next(Stage::Credentials, &o, false), Next::AwaitPush);
        let o = Observation {
            promo: true,
            ..obs()
        };
        assert_eq!(next(Stage::CodeSubmitted, &o, false), Next::SkipPromo);
    }

    #[test]
    fn wrong_mode_switches_once_and_lock_texts_stop() {
        let text = "You have selected the Live Account Mode, but the specified user is a Paper \
                    Trading user. Please select the correct Login mode.";
        let o = Observation {
            error: Some(text.into()),
            ..obs()
        };
        assert_eq!(next(Stage::Credentials, &o, false), Next::SwitchMode);
        assert!(matches!(
            next(Stage::Credentials, &o, true),
            Next::Rejected(Rejection::Credentials, _)
        ));
        let o = Observation {
            error: Some("Invalid username and password combination, reached max limit".into()),
            ..obs()
        };
        assert!(matches!(
            next(Stage::Credentials, &o, false),
            Next::Locked(_)
        ));
    }

    #[test]
    fn the_guard_locks_at_max_and_a_success_resets_it() {
        let mut g = FailureGuard::new(3);
        assert!(!g.record("wrong username or password".into()));
        assert!(!g.record("wrong username or password".into()));
        assert!(g.reason().is_none());
        assert!(g.record("wrong second factor".into()));
        assert!(g.locked());
        let why = g.reason().unwrap();
        assert!(why.starts_with("login_failed: 3 failed logins"), "{why}");
        assert!(why.contains("wrong second factor"), "{why}");
        g.succeeded();
        assert!(!g.locked() && g.failures() == 0);
        g.lock_by_ib("account locked".into());
        assert!(g.locked());
        assert!(g.reason().unwrap().contains("locked"));
        assert_eq!(FailureGuard::new(0).max(), 1);
    }
}
