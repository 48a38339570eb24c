//! Drives headless Chromium through the gateway's SSO page over WebDriver (fantoccini and
//! Debian's chromedriver), the way ibeam's `login_handler.py` drives it with Selenium: fill
//! username and password, pick live or paper, submit, answer the second factor, skip the
//! IB Key promotion, and read the outcome off the page.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use super::config::{LoginConfig, SecondFactor, Selectors};
use super::state::{FailureGuard, Next, Observation, Rejection, Stage, next};
use super::{Credentials, LoginError};

/// How often the page is looked at while waiting for an answer.
const POLL: Duration = Duration::from_millis(250);

/// A WebDriver session, with the chromedriver this login started (if any). Closing the
/// session ends the browser; dropping the child kills chromedriver.
struct Browser {
    client: Client,
    _driver: Option<Child>,
}

impl Browser {
    async fn start(cfg: &LoginConfig) -> Result<Self, LoginError> {
        let (url, driver) = match &cfg.webdriver_url {
            Some(url) => (url.clone(), None),
            None => {
                let port = free_port()?;
                let child = Command::new(&cfg.chromedriver)
                    .arg(format!("--port={port}"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| {
                        LoginError::Browser(format!(
                            "cannot start {}: {e} (Debian: apt-get install chromium chromium-driver)",
                            cfg.chromedriver.display()
                        ))
                    })?;
                (format!("http://127.0.0.1:{port}"), Some(child))
            }
        };
        let mut chrome = json!({
            // ibeam `login/driver.py`: headless, no sandbox (containers), incognito (a clean
            // second-factor choice every time), and the gateway's self-signed certificate.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--incognito", "--ignore-certificate-errors", "--disable-extensions"],
        });
        if let Some(bin) = &cfg.chromium {
            chrome["binary"] = json!(bin.display().to_string());
        }
        let mut caps = serde_json::Map::new();
        caps.insert("acceptInsecureCerts".into(), json!(true));
        caps.insert("goog:chromeOptions".into(), chrome);
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);
        // chromedriver needs a moment to listen after it starts.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            match builder.connect(&url).await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() < deadline && driver.is_some() => {
                    tracing::debug!(error = %e, "webdriver not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(LoginError::Browser(format!(
                        "no webdriver session at {url}: {e}"
                    )));
                }
            }
        };
        Ok(Self {
            client,
            _driver: driver,
        })
    }

    async fn close(self) {
        if let Err(e) = self.client.close().await {
            warn!(error = %e, "closing the browser");
        }
    }
}

fn free_port() -> Result<u16, LoginError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| LoginError::Browser(format!("no free port for chromedriver: {e}")))
}

fn wd(what: &str) -> impl FnOnce(fantoccini::error::CmdError) -> LoginError + '_ {
    move |e| LoginError::Browser(format!("{what}: {e}"))
}

/// One script returns everything a decision needs, so a look costs one round trip.
const OBSERVE: &str = r#"
const s = arguments[0];
const q = (sel) => { try { return Array.from(document.querySelectorAll(sel)); } catch (e) { return []; } };
const vis = (el) => !!el && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
const text = document.body ? (document.body.innerText || '') : '';
const err = q(s.error).find((el) => vis(el) && (el.innerText || '').trim().length > 0);
return {
  success: text.includes(s.success_text),
  error: err ? err.innerText.trim() : null,
  code_input: s.code_inputs.find((sel) => q(sel).some(vis)) || null,
  notification: q(s.notification).some(vis),
  promo: q(s.ibkey_promo).some(vis),
};
"#;

async fn observe(client: &Client, sel: &Selectors) -> Result<Observation, LoginError> {
    let v = client
        .execute(OBSERVE, vec![json!(sel)])
        .await
        .map_err(wd("reading the login page"))?;
    serde_json::from_value(v)
        .map_err(|e| LoginError::Browser(format!("unexpected page observation: {e}")))
}

/// Clicks the first visible element of `selector` (by script: IB's page overlays some of
/// its controls, which a WebDriver click refuses).
async fn click(client: &Client, selector: &str) -> Result<bool, LoginError> {
    let v = client
        .execute(
            "const el = Array.from(document.querySelectorAll(arguments[0])).find((e) => e.getClientRects().length > 0) || document.querySelector(arguments[0]); if (!el) return false; el.click(); return true;",
            vec![json!(selector)],
        )
        .await
        .map_err(wd("clicking"))?;
    Ok(v == Value::Bool(true))
}

async fn type_into(client: &Client, selector: &str, text: &str) -> Result<(), LoginError> {
    let el = client
        .find(Locator::Css(selector))
        .await
        .map_err(|e| LoginError::Page(format!("no {selector} on the login page: {e}")))?;
    el.clear().await.map_err(wd("clearing a field"))?;
    el.send_keys(text).await.map_err(wd("typing"))
}

/// The outcome of one attempt that did not raise an error.
enum Attempt {
    LoggedIn,
    Rejected(Rejection, String),
    Locked(String),
}

/// Logs in through the SSO page, retrying refused attempts until `guard` locks. Returns
/// once the page says "Client login succeeds".
pub async fn sso_login(
    gateway_url: &str,
    cfg: &LoginConfig,
    creds: &Credentials,
    guard: &mut FailureGuard,
) -> Result<(), LoginError> {
    if let Some(reason) = guard.reason() {
        return Err(LoginError::LoginFailed(reason));
    }
    let url = format!("{}{}", gateway_url.trim_end_matches('/'), cfg.route);
    let browser = Browser::start(cfg).await?;
    let result = async {
        loop {
            match attempt(&browser.client, &url, cfg, creds).await? {
                Attempt::LoggedIn => {
                    guard.succeeded();
                    return Ok(());
                }
                Attempt::Locked(text) => {
                    guard.lock_by_ib(text);
                }
                Attempt::Rejected(kind, text) => {
                    warn!(failures = guard.failures() + 1, max = guard.max(), reason = %text, "ib login refused: {}", kind.label());
                    guard.record(format!("{}: {text}", kind.label()));
                    if !guard.locked() && kind == Rejection::SecondFactor {
                        // A code is good for one 30 s period: the next try needs the next one.
                        let left = 30 - super::totp::unix_now() % 30;
                        tokio::time::sleep(Duration::from_secs(left) + Duration::from_millis(200))
                            .await;
                    }
                }
            }
            if let Some(reason) = guard.reason() {
                return Err(LoginError::LoginFailed(reason));
            }
        }
    }
    .await;
    browser.close().await;
    result
}

async fn attempt(
    client: &Client,
    url: &str,
    cfg: &LoginConfig,
    creds: &Credentials,
) -> Result<Attempt, LoginError> {
    let sel = &cfg.selectors;
    info!(url, username = %creds.username, paper = cfg.paper, "ib login: loading the sso page");
    client
        .goto(url)
        .await
        .map_err(|e| LoginError::Page(format!("cannot load {url}: {e}")))?;
    let page = tokio::time::timeout(cfg.page_timeout, async {
        loop {
            if client.find(Locator::Css(&sel.username)).await.is_ok() {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    if page.is_err() {
        return Err(LoginError::Page(format!(
            "no {} on {url} after {:?} (is it IB's login page? set ib.login.selectors)",
            sel.username, cfg.page_timeout
        )));
    }
    set_mode(client, sel, cfg.paper).await?;
    type_into(client, &sel.username, &creds.username).await?;
    type_into(client, &sel.password, creds.password.expose()).await?;
    if !click(client, &sel.submit).await? {
        return Err(LoginError::Page(format!(
            "no submit button {} on the login page",
            sel.submit
        )));
    }
    let mut stage = Stage::Credentials;
    let mut mode_switched = false;
    let mut deadline = tokio::time::Instant::now() + cfg.page_timeout;
    loop {
        let obs = observe(client, sel).await?;
        match next(stage, &obs, mode_switched) {
            Next::Success => {
                info!("ib login: the page says {:?}", sel.success_text);
                return Ok(Attempt::LoggedIn);
            }
            Next::Rejected(kind, text) => return Ok(Attempt::Rejected(kind, text)),
            Next::Locked(text) => return Ok(Attempt::Locked(text)),
            Next::SwitchMode => {
                info!("ib login: IB asks for the other live/paper mode; switching");
                mode_switched = true;
                click(client, &sel.paper_toggle).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                click(client, &sel.submit).await?;
                deadline = tokio::time::Instant::now() + cfg.page_timeout;
            }
            Next::SkipPromo => {
                click(client, &sel.ibkey_promo).await?;
            }
            Next::EnterCode(input) => {
                let code = second_factor_code(cfg, creds).await?;
                info!(input = %input, "ib login: submitting the second factor");
                type_into(client, &input, &code).await?;
                // ibeam submits the code with RETURN.
                let el = client
                    .find(Locator::Css(&input))
                    .await
                    .map_err(wd("finding the code input"))?;
                el.send_keys("\u{E007}")
                    .await
                    .map_err(wd("submitting the code"))?;
                stage = Stage::CodeSubmitted;
                deadline = tokio::time::Instant::now() + cfg.page_timeout;
            }
            Next::AwaitPush => {
                if cfg.second_factor() != SecondFactor::Push {
                    return Err(LoginError::SecondFactor(
                        "IB sent a push notification, but ib.login.second_factor is not \"push\""
                            .into(),
                    ));
                }
                return await_push(client, cfg).await;
            }
            Next::Wait => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LoginError::Page(format!(
                "no answer from the login page within {:?} ({})",
                cfg.page_timeout,
                match stage {
                    Stage::Credentials => "after the password",
                    Stage::CodeSubmitted => "after the second factor",
                    Stage::Push => "waiting for the push approval",
                }
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Puts the page's live/paper switch where it must be: the checkbox is checked for paper.
async fn set_mode(client: &Client, sel: &Selectors, paper: bool) -> Result<(), LoginError> {
    let checked = client
        .execute(
            "const c = document.querySelector(arguments[0]); return c ? !!c.checked : null;",
            vec![json!(sel.paper_checkbox)],
        )
        .await
        .map_err(wd("reading the paper switch"))?;
    let needs_click = match checked {
        Value::Bool(c) => c != paper,
        // No checkbox to read: click only to leave the default (live) mode, as ibeam does.
        _ => paper,
    };
    if needs_click && !click(client, &sel.paper_toggle).await? {
        return Err(LoginError::Page(format!(
            "no live/paper switch {} on the login page",
            sel.paper_toggle
        )));
    }
    Ok(())
}

async fn second_factor_code(cfg: &LoginConfig, creds: &Credentials) -> Result<String, LoginError> {
    match (&creds.totp, cfg.second_factor()) {
        (Some(totp), SecondFactor::Totp) => Ok(totp.fresh_code().await),
        (_, SecondFactor::Command) => {
            let cmd = cfg.code_command.as_deref().unwrap_or_default();
            code_from_command(cmd, &creds.username, cfg.code_command_timeout).await
        }
        (_, SecondFactor::Push) => Err(LoginError::SecondFactor(
            "IB asks for a code, but ib.login.second_factor is \"push\"".into(),
        )),
        _ => Err(LoginError::SecondFactor(
            "IB asks for a second-factor code, but none is configured (ib.login.totp_secret_file or code_command)"
                .into(),
        )),
    }
}

/// Runs the external command and takes the code from its stdout (digits only, as ibeam's
/// `STRICT_TWO_FA_CODE` insists).
pub async fn code_from_command(
    cmd: &[String],
    username: &str,
    timeout: Duration,
) -> Result<String, LoginError> {
    let Some((program, args)) = cmd.split_first() else {
        return Err(LoginError::SecondFactor("empty code command".into()));
    };
    let run = Command::new(program)
        .args(args)
        .env("IB_USERNAME", username)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| {
            LoginError::SecondFactor(format!("{program} gave no code within {timeout:?}"))
        })?
        .map_err(|e| LoginError::SecondFactor(format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        return Err(LoginError::SecondFactor(format!(
            "{program} failed ({})",
            out.status
        )));
    }
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if code.is_empty() || !code.chars().all(|c| c.is_ascii_digit()) {
        return Err(LoginError::SecondFactor(format!(
            "{program} printed no code of digits ({} characters)",
            code.len()
        )));
    }
    Ok(code)
}

/// ibeam's `NotificationResendTwoFaHandler`: wait for the approval, resend, give up after
/// the configured resends. A push that nobody approved is not a refused login.
async fn await_push(client: &Client, cfg: &LoginConfig) -> Result<Attempt, LoginError> {
    let sel = &cfg.selectors;
    for round in 0..=cfg.push_resends {
        if round > 0 {
            info!(round, "ib login: resending the push notification");
            click(client, &sel.notification_resend).await?;
        }
        let until = tokio::time::Instant::now() + cfg.push_resend_after;
        while tokio::time::Instant::now() < until {
            let obs = observe(client, sel).await?;
            match next(Stage::Push, &obs, true) {
                Next::Success => return Ok(Attempt::LoggedIn),
                Next::Rejected(kind, text) => return Ok(Attempt::Rejected(kind, text)),
                Next::Locked(text) => return Ok(Attempt::Locked(text)),
                Next::SkipPromo => {
                    click(client, &sel.ibkey_promo).await?;
                }
                _ => {}
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Err(LoginError::SecondFactor(format!(
        "the push notification was not approved ({} resends)",
        cfg.push_resends
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_code_command_gives_digits_or_a_clear_error() {
        let t = Duration::from_secs(5);
        let sh = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        assert_eq!(
            code_from_command(&sh("echo \" 123456\""), "u", t)
                .await
                .unwrap(),
            "123456"
        );
        let e = code_from_command(&sh("echo $IB_USERNAME; exit 0"), "user7", t)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no code of digits"), "{e}");
        let e = code_from_command(&sh("exit 3"), "u", t).await.unwrap_err();
        assert!(e.to_string().contains("failed"), "{e}");
        let e = code_from_command(&sh("sleep 5"), "u", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no code within"), "{e}");
    }
}
