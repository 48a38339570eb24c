//! The unattended IB login (`ib_login/{config,state,totp,browser,builtin}.rs`): headless
//! Chromium through the Client Portal gateway's SSO page, the way Voyz/ibeam logs in, with a
//! TOTP, push or external-command second factor and a cap on failed logins (IB locks an
//! account after repeated failures). Used by `marketlane login` and, with `[ib.login]`, by
//! the session actor when the gateway has no session.

pub mod browser;
pub mod builtin;
pub mod config;
pub mod state;
pub mod totp;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use builtin::BuiltinLogin;
pub use config::{LoginConfig, SecondFactor, Selectors};
pub use state::FailureGuard;

use crate::config::IbConfig;
use crate::ib_client::{IbClient, IbError};
use crate::metrics::Metrics;
use totp::TotpCode;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// A secret file is missing or unusable (never retryable without a fix).
    #[error("secret file {path}: {message}")]
    Secret { path: String, message: String },
    /// chromedriver or the browser failed (retryable).
    #[error("browser: {0}")]
    Browser(String),
    /// The page did not load or answer as expected (retryable; not a refused login).
    #[error("login page: {0}")]
    Page(String),
    /// The second factor could not be given (no code, push not approved).
    #[error("second factor: {0}")]
    SecondFactor(String),
    /// Logins stopped: `max_failed_logins` refused logins in a row, or IB locked the account.
    #[error("{0}")]
    LoginFailed(String),
    /// "Client login succeeds", but `/iserver/auth/status` did not become authenticated.
    #[error("logged in, but the brokerage session is not authenticated: {0}")]
    NotAuthenticated(String),
}

/// A secret read from a file. No `Debug` or `Display`: it cannot end up in a log by accident.
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// What a login needs besides the config; read from files at every login (Secrets rotate).
pub struct Credentials {
    pub username: String,
    pub password: Password,
    pub totp: Option<TotpCode>,
}

impl Credentials {
    pub fn load(username: &str, cfg: &LoginConfig) -> Result<Self, LoginError> {
        if username.trim().is_empty() {
            return Err(LoginError::Secret {
                path: "ib.login.username".into(),
                message: "no IB username (ib.login.username or ib.username)".into(),
            });
        }
        let username = username.trim();
        let password = Password(read_secret(&per_user(&cfg.password_file, username))?);
        let totp = match (&cfg.totp_secret_file, cfg.second_factor()) {
            (Some(path), SecondFactor::Totp) => {
                Some(TotpCode::from_file(&per_user(path, username))?)
            }
            _ => None,
        };
        Ok(Self {
            username: username.to_string(),
            password,
            totp,
        })
    }
}

/// `{username}` in a secret's path is the pod's IB user: one Secret with a key per user serves
/// every ordinal of a StatefulSet (`/run/secrets/ib/{username}.password`).
pub fn per_user(path: &Path, username: &str) -> std::path::PathBuf {
    let text = path.to_string_lossy();
    if text.contains("{username}") {
        text.replace("{username}", username).into()
    } else {
        path.to_path_buf()
    }
}

/// A file's content without the trailing newline that editors and `kubectl create secret
/// --from-file` leave. The content is never part of an error.
pub fn read_secret(path: &Path) -> Result<String, LoginError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoginError::Secret {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let text = text.trim_end_matches(['\n', '\r']).to_string();
    if text.is_empty() {
        return Err(LoginError::Secret {
            path: path.display().to_string(),
            message: "empty".into(),
        });
    }
    Ok(text)
}

/// After the SSO login: waits until `/iserver/auth/status` says authenticated and connected,
/// opening the brokerage session with one `ssodh/init` if the gateway has none (ibeam's
/// strategy does the same after its browser login). Polls once a second up to `wait`.
pub async fn confirm_authenticated(
    gateway_url: &str,
    wait: Duration,
    metrics: Arc<Metrics>,
) -> Result<(), LoginError> {
    let ib = IbConfig {
        gateway_url: gateway_url.to_string(),
        ..IbConfig::default()
    };
    let client =
        IbClient::new(ib, metrics).map_err(|e| LoginError::NotAuthenticated(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut init_sent = false;
    loop {
        let last;
        let needs_init = match client.auth_status().await {
            Ok(s) if s.authenticated && s.connected && !s.competing => return Ok(()),
            Ok(s) => {
                last = format!(
                    "authenticated={} connected={} competing={} {}",
                    s.authenticated, s.connected, s.competing, s.message
                );
                !s.connected || !s.authenticated
            }
            Err(IbError::NoBridge) => {
                last = "no bridge".into();
                true
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        };
        if needs_init && !init_sent {
            init_sent = true;
            if let Err(e) = client.ssodh_init().await {
                tracing::warn!(error = %e, "ssodh/init after the login");
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LoginError::NotAuthenticated(format!(
                "after {wait:?}: {last}"
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_read_per_user_without_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alice.password"), "s3cret \n").unwrap();
        std::fs::write(dir.path().join("alice.totp"), "GEZDGNBVGY3TQOJQ\r\n").unwrap();
        let cfg = LoginConfig {
            password_file: dir.path().join("{username}.password"),
            totp_secret_file: Some(dir.path().join("{username}.totp")),
            ..LoginConfig::default()
        };
        let c = Credentials::load(" alice ", &cfg).unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.password.expose(), "s3cret ");
        assert!(c.totp.is_some());
        let e = Credentials::load("bob", &cfg).err().unwrap();
        assert!(e.to_string().contains("bob.password"), "{e}");
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let e = read_secret(&dir.path().join("empty")).unwrap_err();
        assert!(e.to_string().ends_with("empty"), "{e}");
        assert!(Credentials::load("  ", &cfg).is_err());
    }
}
