//! The gateway's SSO login page (`/sso/Login?forwardTo=22&RL=1&ip2loc=on`), for connectors
//! that log in unattended the way Voyz/ibeam does. The page has the shape IB's page has as
//! ibeam and public login scripts know it; what happens behind the page's script is
//! simplified (see `authenticator`).
//!
//! Sources: ibeam@993d3d9 `ibeam/src/var.py` (`ROUTE_AUTH`, the element targets) and
//! `ibeam/src/handlers/login_handler.py` (website "version 2": `name=username`, error
//! `.xyz-errormessage`; the error texts it reacts to; the paper-mode message); a 2026 capture
//! of the page quoted by a public login script (ids `xyz-field-username`,
//! `xyz-field-password`, checkbox `toggle1` checked for paper, code inputs
//! `xyz-field-{silver,gold,temp,bronze}-response`, silver = authenticator-app code);
//! michaeljherrmann/ib-gateway-service `server/auth/Authenticator.js` (the page posts to
//! `/sso/Authenticator`, then a form to `/sso/Dispatcher` whose body is
//! "Client login succeeds"; IB's answer flags `reached_max_login`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Form, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use totp_rs::{Algorithm, Builder, Secret};

use crate::lock;
use crate::sim::Sim;

type S = State<Arc<Sim>>;

/// ibeam `login_handler.py` counts this text as a failed login.
const WRONG_PASSWORD: &str = "Invalid username password combination";
/// IB's text for a refused second factor is not published; connectors must not depend on
/// it (ours classifies by the step it was shown at).
const WRONG_CODE: &str = "Invalid security code. Please try again.";
/// ibeam `login_handler.py` switches the live/paper toggle on exactly this text.
const PAPER_USER_IN_LIVE_MODE: &str = "You have selected the Live Account Mode, but the specified user is a Paper Trading user. Please select the correct Login mode.";
/// After IB's `reached_max_login` (ib-gateway-service); the wording of the lock is unknown.
const LOCKED: &str = "Invalid username and password combination, reached max limit: the account is locked. Contact IBKR client services.";

/// The login page's server side for one gateway (one IB user).
#[derive(Debug, Default)]
pub struct SsoLogin {
    /// Submissions of the credentials form.
    pub attempts: u32,
    /// Refused passwords and codes in a row (a success resets it).
    pub failed: u32,
    pub locked: bool,
    pub logins: u32,
    /// Credentials accepted, second factor pending: the page's token.
    pending: Option<String>,
    /// Login complete: the token the page posts to `/sso/Dispatcher`.
    granted: Option<String>,
    /// Push notifications sent (the first and every resend) and whether one was approved.
    pub push_sent: u32,
    push_approved: bool,
}

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/sso/Login", get(page))
        .route("/sso/Authenticator", post(authenticator))
        .route("/sso/Dispatcher", post(dispatcher))
        .route("/sim/sso", get(status))
        .route("/sim/sso/approve", post(approve))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

#[derive(Debug, Deserialize)]
struct AuthForm {
    #[serde(rename = "ACTION")]
    action: String,
    #[serde(rename = "USER", default)]
    user: String,
    #[serde(rename = "PASSWORD", default)]
    password: String,
    /// 1 live, 2 paper.
    #[serde(rename = "LOGINTYPE", default)]
    login_type: String,
    #[serde(rename = "RESPONSE", default)]
    response: String,
    #[serde(rename = "TOKEN", default)]
    token: String,
}

/// The page's script talks to this. The push actions (`POLLPUSH`, `RESENDPUSH`) are the
/// simulator's own: how IB's page learns of an approval is not published. IB runs SRP-6 here (ib-gateway-service:
/// `ACTION=INIT`/`COMPLETEAUTH` with `A`, `M1`, then `COMPLETEAUTH_1`/`COMPLETETWOFACT`,
/// answers in XML); the simulator takes the password as is and answers JSON, because a
/// browser-driving connector only sees the page, never this exchange.
async fn authenticator(State(sim): S, Form(f): Form<AuthForm>) -> Json<Value> {
    let cfg = &sim.cfg;
    let mut st = lock(&sim.sso_page);
    if st.locked {
        return Json(json!({"error": LOCKED}));
    }
    let refuse = |st: &mut SsoLogin, text: &str| {
        st.failed += 1;
        st.pending = None;
        if st.failed >= cfg.sso_lock_after {
            st.locked = true;
            tracing::warn!(failed = st.failed, "sso: account locked");
            return Json(json!({"error": LOCKED}));
        }
        Json(json!({"error": text}))
    };
    match f.action.as_str() {
        "COMPLETEAUTH" => {
            st.attempts += 1;
            let user_ok = f.user.trim().eq_ignore_ascii_case(&cfg.username);
            let password_ok = match expected_password(cfg) {
                Some(p) => f.password == p,
                // Without --password-file any password is taken (the default, auto-login).
                None => !f.password.is_empty(),
            };
            if !(user_ok && password_ok) {
                return refuse(&mut st, WRONG_PASSWORD);
            }
            if cfg.paper && f.login_type != "2" {
                // Not a failed login: ibeam switches the toggle and submits again.
                return Json(json!({"error": PAPER_USER_IN_LIVE_MODE}));
            }
            let token = new_token();
            if cfg.sso_push {
                st.pending = Some(token.clone());
                st.push_sent += 1;
                st.push_approved = false;
                Json(json!({"push": true, "token": token}))
            } else if cfg.totp_secret_file.is_some() {
                st.pending = Some(token.clone());
                Json(json!({"two_factor": true, "token": token}))
            } else {
                st.granted = Some(token.clone());
                Json(json!({"token": token}))
            }
        }
        // The page polls while the notification waits for the phone; a resend sends another.
        "POLLPUSH" | "RESENDPUSH" => {
            if st.pending.as_deref() != Some(f.token.as_str()) || f.token.is_empty() {
                return Json(json!({"error": "Session expired. Please log in again."}));
            }
            if f.action == "RESENDPUSH" {
                st.push_sent += 1;
                return Json(json!({"pending": true}));
            }
            if !st.push_approved {
                return Json(json!({"pending": true}));
            }
            st.pending = None;
            st.push_approved = false;
            st.granted = Some(f.token);
            Json(json!({"token": st.granted.clone()}))
        }
        "COMPLETETWOFACT" => {
            if st.pending.as_deref() != Some(f.token.as_str()) || f.token.is_empty() {
                return Json(json!({"error": "Session expired. Please log in again."}));
            }
            if !code_ok(cfg, f.response.trim()) {
                return refuse(&mut st, WRONG_CODE);
            }
            st.pending = None;
            st.granted = Some(f.token);
            Json(json!({"token": st.granted.clone()}))
        }
        other => Json(json!({"error": format!("unknown ACTION {other:?}")})),
    }
}

#[derive(Debug, Deserialize)]
struct DispatchForm {
    #[serde(default)]
    token: String,
}

/// The page's final form post: the SSO session exists from here on (the brokerage session
/// still needs `ssodh/init`, as at IB).
async fn dispatcher(State(sim): S, Form(f): Form<DispatchForm>) -> Response {
    {
        let mut st = lock(&sim.sso_page);
        if f.token.is_empty() || st.granted.as_deref() != Some(f.token.as_str()) {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                "Login session expired. Please log in again.",
            )
                .into_response();
        }
        st.granted = None;
        st.failed = 0;
        st.logins += 1;
    }
    sim.apply(|s, now| s.login(now));
    tracing::info!(username = %sim.cfg.username, "sso: client login succeeds");
    "Client login succeeds".into_response()
}

/// The phone approves the pending push notification.
async fn approve(State(sim): S) -> Json<Value> {
    let mut st = lock(&sim.sso_page);
    let pending = st.pending.is_some() && sim.cfg.sso_push;
    st.push_approved = pending;
    Json(json!({"approved": pending}))
}

async fn status(State(sim): S) -> Json<Value> {
    let st = lock(&sim.sso_page);
    Json(json!({
        "attempts": st.attempts,
        "failed": st.failed,
        "locked": st.locked,
        "logins": st.logins,
        "lock_after": sim.cfg.sso_lock_after,
        "second_factor": sim.cfg.totp_secret_file.is_some() || sim.cfg.sso_push,
        "push_sent": st.push_sent,
        "push_pending": st.pending.is_some() && sim.cfg.sso_push,
    }))
}

/// Read at every submission, as a password change at IB would apply at once.
fn expected_password(cfg: &crate::config::SimConfig) -> Option<String> {
    let path = cfg.password_file.as_ref()?;
    match std::fs::read_to_string(path) {
        Ok(p) => Some(p.trim_end_matches(['\n', '\r']).to_string()),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "sso: cannot read the password file");
            // Nothing matches an unreadable password: refuse rather than accept anything.
            Some("\u{0}unreadable".into())
        }
    }
}

/// RFC 6238 codes of the configured secret, accepting one step either way (the RFC's
/// recommended skew; IB's tolerance is not published). Wall clock, not sim time: the code
/// comes from a phone or a TOTP library on the real clock.
fn code_ok(cfg: &crate::config::SimConfig, code: &str) -> bool {
    let Some(path) = &cfg.totp_secret_file else {
        return true;
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let Ok(secret) = Secret::try_from_base32(cleaned.trim_end_matches('=')) else {
        return false;
    };
    let totp = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret)
        .build_noncompliant();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    totp.check(code, now).is_some()
}

fn new_token() -> String {
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

/// The page. Element ids, names and classes are IB's (see the module comment); the script
/// is the simulator's.
const PAGE: &str = r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Client Portal Login</title>
<style>.xyz-errormessage{color:#c00}</style></head>
<body><div class="login">
<form id="xyz-form-login" class="xyzform xyzform-login" autocomplete="off" novalidate>
  <div class="form-group"><input id="xyz-field-username" name="username" type="text" class="form-control" placeholder="Username"></div>
  <div class="form-group"><input id="xyz-field-password" name="password" type="password" class="form-control" placeholder="Password"></div>
  <div class="xyz-toggle"><input type="checkbox" id="toggle1" style="display:none"><label for="toggle1">Paper</label></div>
  <button type="submit" class="btn btn-lg btn-primary xyz-button-login">Login</button>
</form>
<div id="twofactbase" class="xyzblock-twofact" style="display:none">
  <form id="xyz-form-twofact" autocomplete="off" novalidate>
    <label for="xyz-field-silver-response">Mobile Authenticator App Code</label>
    <input id="xyz-field-silver-response" name="silver-response" type="text" inputmode="numeric" autocomplete="one-time-code" class="form-control">
    <button type="submit" class="btn btn-lg btn-primary">Verify</button>
  </form>
</div>
<div class="login-step-notification" style="display:none">
  <p>Check your mobile device: approve the IB Key notification to log in.</p>
  <a href="#" onclick="resendNotification(); return false;">Resend notification</a>
</div>
<div class="xyz-errormessage" style="display:none"></div>
<form id="xyz-form-dispatch" method="POST" action="/sso/Dispatcher" style="display:none">
  <input type="hidden" name="token"><input type="hidden" name="forwardTo" value="22">
</form>
</div>
<script>
const $ = (s) => document.querySelector(s);
const err = $('.xyz-errormessage');
let token = '';
function showError(t) { err.textContent = t; err.style.display = 'block'; }
function hideError() { err.textContent = ''; err.style.display = 'none'; }
async function post(fields) {
  const r = await fetch('/sso/Authenticator', {method: 'POST',
    headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: new URLSearchParams(fields)});
  return r.json();
}
function dispatch(t) { const f = $('#xyz-form-dispatch'); f.token.value = t; f.submit(); }
$('#xyz-form-login').addEventListener('submit', async (e) => {
  e.preventDefault(); hideError();
  const a = await post({ACTION: 'COMPLETEAUTH', USER: $('#xyz-field-username').value,
    PASSWORD: $('#xyz-field-password').value, LOGINTYPE: $('#toggle1').checked ? '2' : '1'});
  if (a.error) { showError(a.error); return; }
  token = a.token;
  if (a.push) {
    $('#xyz-form-login').style.display = 'none';
    $('.login-step-notification').style.display = 'block';
    pollPush();
    return;
  }
  if (a.two_factor) {
    $('#xyz-form-login').style.display = 'none';
    $('#twofactbase').style.display = 'block';
    $('#xyz-field-silver-response').focus();
    return;
  }
  dispatch(token);
});
async function pollPush() {
  const a = await post({ACTION: 'POLLPUSH', TOKEN: token});
  if (a.error) { showError(a.error); return; }
  if (a.token) { dispatch(a.token); return; }
  setTimeout(pollPush, 500);
}
function resendNotification() { post({ACTION: 'RESENDPUSH', TOKEN: token}); }
$('#xyz-form-twofact').addEventListener('submit', async (e) => {
  e.preventDefault(); hideError();
  const a = await post({ACTION: 'COMPLETETWOFACT', TOKEN: token, RESPONSE: $('#xyz-field-silver-response').value});
  if (a.error) { showError(a.error); return; }
  dispatch(a.token);
});
</script></body></html>
"##;
