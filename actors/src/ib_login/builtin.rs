//! The built-in login of the session actor (`[ib.login]`): runs the browser login as a
//! background task when the gateway has no session, so that the actor keeps answering
//! (`ctl status`, `/readyz`) during the minute a login can take, and keeps the failed-login
//! count across runs so that the cap holds for the pod, not for one run.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::config::LoginConfig;
use super::state::FailureGuard;
use super::{Credentials, LoginError, browser};
use crate::config::IbConfig;
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStatus {
    Idle,
    Running,
    /// The last run ended: `ok` or why not.
    Done(String),
}

struct Shared {
    guard: FailureGuard,
    status: LoginStatus,
    started: Option<Instant>,
}

pub struct BuiltinLogin {
    config: LoginConfig,
    gateway_url: String,
    username: String,
    /// Between two runs that did not log in (IB's page is not hammered).
    retry: Duration,
    metrics: Arc<Metrics>,
    shared: Arc<Mutex<Shared>>,
}

impl BuiltinLogin {
    /// `None` unless `[ib.login]` is configured.
    pub fn new(ib: &IbConfig, metrics: Arc<Metrics>) -> Option<Self> {
        let config = ib.login.clone()?;
        let username = config
            .username
            .clone()
            .or_else(|| ib.username.clone())
            .unwrap_or_default();
        let guard = FailureGuard::new(config.max_failed_logins);
        Some(Self {
            gateway_url: ib.gateway_url.clone(),
            username,
            retry: ib.login_retry,
            metrics,
            shared: Arc::new(Mutex::new(Shared {
                guard,
                status: LoginStatus::Idle,
                started: None,
            })),
            config,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why logins stopped (state `login_failed`), if they did.
    pub fn failed_reason(&self) -> Option<String> {
        self.lock().guard.reason()
    }

    /// What to show as the last login outcome.
    pub fn outcome(&self) -> Option<String> {
        match &self.lock().status {
            LoginStatus::Idle => None,
            LoginStatus::Running => Some("running".into()),
            LoginStatus::Done(o) => Some(o.clone()),
        }
    }

    /// Ops fixed the credentials (`ctl reauth`): count failures from zero again.
    pub fn reset(&self) {
        let mut s = self.lock();
        if s.guard.locked() {
            info!("ib login: failed-login count reset by ops");
        }
        s.guard = FailureGuard::new(self.config.max_failed_logins);
        s.started = None;
        self.metrics.ib_login_failures.set(0);
    }

    /// Starts a login unless one is running, logins stopped, or the last one started less
    /// than `login_retry` ago.
    pub fn start(&self) {
        let mut s = self.lock();
        if s.status == LoginStatus::Running
            || s.guard.locked()
            || s.started.is_some_and(|t| t.elapsed() < self.retry)
        {
            return;
        }
        s.status = LoginStatus::Running;
        s.started = Some(Instant::now());
        let mut guard = s.guard.clone();
        drop(s);
        let shared = self.shared.clone();
        let config = self.config.clone();
        let gateway_url = self.gateway_url.clone();
        let username = self.username.clone();
        let metrics = self.metrics.clone();
        info!(username = %username, "no session at the gateway: starting the built-in login");
        tokio::spawn(async move {
            let result = match Credentials::load(&username, &config) {
                Ok(creds) => browser::sso_login(&gateway_url, &config, &creds, &mut guard).await,
                Err(e) => Err(e),
            };
            let (label, outcome) = match &result {
                Ok(()) => ("ok", "ok".to_string()),
                Err(LoginError::LoginFailed(r)) => ("locked", r.clone()),
                Err(e) => ("failed", e.to_string()),
            };
            match &result {
                Ok(()) => info!("ib login: logged in"),
                Err(e) => warn!(error = %e, "ib login: not logged in"),
            }
            metrics.ib_login_attempts.with_label_values(&[label]).inc();
            metrics.ib_login_failures.set(i64::from(guard.failures()));
            let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
            s.guard = guard;
            s.status = LoginStatus::Done(outcome);
            if result.is_ok() {
                // The next loss of the session may log in again at once.
                s.started = None;
            }
        });
    }
}
