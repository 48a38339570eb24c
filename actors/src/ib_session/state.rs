//! States of the IB session keepalive.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Starting,
    /// No SSO session: a human (or the login hook) must log in through the gateway's page.
    NeedsLogin,
    /// Logged in; `ssodh/init` opens the brokerage session.
    Initializing,
    Authenticated,
    /// `authenticated:false` after an idle expiry, a nightly reset or a socket `sts`.
    Reauthenticating,
    /// Another session uses this username: we stop and report instead of fighting.
    Competing,
    /// 429: IB's penalty box; we wait it out.
    PenaltyBox,
    /// HTTP 500/503 or unreadable answers: IB's servers are restarting; we wait.
    Maintenance,
    GatewayUnreachable,
    /// The built-in login stopped after `ib.login.max_failed_logins` refused logins (or IB
    /// locked the account): no more tries until ops fix it and `ctl reauth`.
    LoginFailed,
}

impl SessionState {
    pub const LABELS: &'static [&'static str] = &[
        "starting",
        "needs_login",
        "initializing",
        "authenticated",
        "reauthenticating",
        "competing",
        "penalty_box",
        "maintenance",
        "gateway_unreachable",
        "login_failed",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::NeedsLogin => "needs_login",
            Self::Initializing => "initializing",
            Self::Authenticated => "authenticated",
            Self::Reauthenticating => "reauthenticating",
            Self::Competing => "competing",
            Self::PenaltyBox => "penalty_box",
            Self::Maintenance => "maintenance",
            Self::GatewayUnreachable => "gateway_unreachable",
            Self::LoginFailed => "login_failed",
        }
    }
}
