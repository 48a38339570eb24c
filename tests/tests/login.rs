//! The unattended login: `marketlane login` in headless Chromium (Debian's chromium and
//! chromedriver, installed by `scripts/chromium`) against the simulator's SSO page, and the
//! daemon's built-in login (`[ib.login]`) taking a pod from `needs_login` to streaming
//! without a person, or stopping in `login_failed` before IB would lock the account.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use marketlane_tests::harness::{DaemonConfig, Lane, SimBuilder};
use marketlane_tests::run_marketlane;
use serde_json::{Value, json};

const PASSWORD: &str = "correct-horse-7";
/// base32 of "12345678901234567890" (the RFC 6238 test key), as an authenticator app shows it.
const TOTP_SECRET: &str = "GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ";
/// Another valid secret: its codes are wrong for the simulator's.
const OTHER_TOTP_SECRET: &str = "JBSWY3DPEHPK3PXP";

struct Secrets {
    password: PathBuf,
    wrong_password: PathBuf,
    totp: PathBuf,
    wrong_totp: PathBuf,
}

fn secrets(dir: &Path) -> Secrets {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{text}\n")).expect("write a secret file");
        p
    };
    Secrets {
        password: write("password", PASSWORD),
        wrong_password: write("wrong-password", "Tr0ub4dor&3"),
        totp: write("totp", TOTP_SECRET),
        wrong_totp: write("wrong-totp", OTHER_TOTP_SECRET),
    }
}

/// A simulator without a browser login yet, whose SSO page wants the password and a TOTP.
fn start_sim(dir: &Path, s: &Secrets, extra: &[&str]) -> marketlane_tests::harness::Sim {
    let mut args = vec![
        "--auto-login",
        "false",
        "--password-file",
        s.password.to_str().unwrap(),
        "--totp-secret-file",
        s.totp.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    SimBuilder::new(3)
        .args(&args)
        .spawn(dir)
        .expect("start the simulator")
}

fn login(gateway: &str, password: &Path, totp: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "login",
        "--gateway-url",
        gateway,
        "--username",
        "user1",
        "--password-file",
        password.to_str().unwrap(),
        "--totp-secret-file",
        totp.to_str().unwrap(),
        "--auth-wait",
        "30",
    ];
    args.extend_from_slice(extra);
    let out = run_marketlane(&args, Duration::from_secs(240)).expect("run marketlane login");
    println!(
        "marketlane login {extra:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains(PASSWORD),
        "the password appeared in the output"
    );
    out
}

async fn get(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

async fn sso(gateway: &str) -> Value {
    get(&format!("{gateway}/sim/sso")).await
}

async fn authenticated(gateway: &str) -> bool {
    let r = reqwest::Client::new()
        .post(format!("{gateway}/v1/api/iserver/auth/status"))
        .header("Content-Length", "0")
        .send()
        .await
        .expect("auth/status");
    let v: Value = r.json().await.unwrap_or_default();
    v["authenticated"] == true && v["connected"] == true
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Password, paper toggle and TOTP: exit 0 once `/iserver/auth/status` is authenticated.
/// Without `--paper` the paper user's page answers with IB's wrong-mode message, and the
/// login switches the toggle and submits again (as ibeam does) without counting a failure.
#[tokio::test(flavor = "multi_thread")]
async fn login_succeeds_with_password_and_totp() {
    let dir = tempfile::tempdir().unwrap();
    let s = secrets(dir.path());
    let sim = start_sim(dir.path(), &s, &[]);
    let gw = sim.gateway_url();
    assert!(!authenticated(&gw).await, "authenticated before any login");

    let out = login(&gw, &s.password, &s.totp, &["--paper"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged in"));
    assert!(authenticated(&gw).await);
    let st = sso(&gw).await;
    assert_eq!(st["logins"], 1, "{st}");
    assert_eq!(st["attempts"], 1, "{st}");

    // Log out, then log in without --paper: one more submission for the mode switch.
    reqwest::Client::new()
        .post(format!("{gw}/v1/api/logout"))
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert!(!authenticated(&gw).await);
    let out = login(&gw, &s.password, &s.totp, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(authenticated(&gw).await);
    let st = sso(&gw).await;
    assert_eq!(st["logins"], 2, "{st}");
    assert_eq!(st["attempts"], 3, "{st}");
    assert_eq!(st["failed"], 0, "{st}");
}

/// A wrong password is recognized from IB's error alert and stops the login (here after
/// one refusal) with the reason; the gateway stays without a session.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = secrets(dir.path());
    let sim = start_sim(dir.path(), &s, &[]);
    let gw = sim.gateway_url();
    let out = login(
        &gw,
        &s.wrong_password,
        &s.totp,
        &["--paper", "--max-failed-logins", "1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("login_failed"), "{err}");
    assert!(err.contains("wrong username or password"), "{err}");
    assert!(
        err.contains("Invalid username password combination"),
        "{err}"
    );
    assert!(!authenticated(&gw).await);
    assert_eq!(sso(&gw).await["failed"], 1);
}

/// A wrong TOTP code (a valid secret, but not the account's) is a wrong second factor.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_totp_fails_as_a_wrong_second_factor() {
    let dir = tempfile::tempdir().unwrap();
    let s = secrets(dir.path());
    let sim = start_sim(dir.path(), &s, &[]);
    let gw = sim.gateway_url();
    let out = login(
        &gw,
        &s.password,
        &s.wrong_totp,
        &["--paper", "--max-failed-logins", "1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("wrong second factor"), "{err}");
    assert!(!authenticated(&gw).await);
    let st = sso(&gw).await;
    assert_eq!(
        (st["attempts"].as_u64(), st["failed"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );
}

/// Three refusals in a row and the login stops (`login_failed`, exit 2), before the
/// simulated IB locks the account at its fifth: the right password still works afterwards.
/// When IB itself reports the lock, the login stops at once.
#[tokio::test(flavor = "multi_thread")]
async fn login_stops_after_three_failures_before_ib_locks_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let s = secrets(dir.path());
    let sim = start_sim(dir.path(), &s, &["--sso-lock-after", "5"]);
    let gw = sim.gateway_url();
    let out = login(&gw, &s.wrong_password, &s.totp, &["--paper"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("login_failed: 3 failed logins in a row (max_failed_logins = 3)"),
        "{err}"
    );
    let st = sso(&gw).await;
    assert_eq!(st["attempts"], 3, "exactly three submissions: {st}");
    assert_eq!(st["locked"], false, "{st}");
    let out = login(&gw, &s.password, &s.totp, &["--paper"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A gateway whose IB locks after two refusals: the second answer says so, and the
    // login stops there instead of trying a third time.
    let dir = tempfile::tempdir().unwrap();
    let s = secrets(dir.path());
    let sim = start_sim(dir.path(), &s, &["--sso-lock-after", "2"]);
    let gw = sim.gateway_url();
    let out = login(&gw, &s.wrong_password, &s.totp, &["--paper"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("IB reports the account locked"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sso(&gw).await["attempts"], 2);
}

/// IB Key push: the login waits for the approval on the phone, resending the notification
/// (ibeam's `NotificationResendTwoFaHandler`); one nobody approves ends the run as "not
/// approved", which is not a refused login.
#[tokio::test(flavor = "multi_thread")]
async fn push_notification_is_waited_for_and_resent() {
    let dir = tempfile::tempdir().unwrap();
    let s = secrets(dir.path());
    let sim = start_sim(dir.path(), &s, &["--sso-push"]);
    let gw = sim.gateway_url();
    // The phone approves once the first resend arrived.
    let approver = {
        let gw = gw.clone();
        tokio::spawn(async move {
            loop {
                let st = sso(&gw).await;
                if st["push_sent"].as_u64() >= Some(2) && st["push_pending"] == true {
                    let r: Value = reqwest::Client::new()
                        .post(format!("{gw}/sim/sso/approve"))
                        .header("Content-Length", "0")
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(r["approved"], true);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let run = |extra: &'static [&'static str]| {
        let (gw, pw, totp) = (gw.clone(), s.password.clone(), s.totp.clone());
        tokio::task::spawn_blocking(move || login(&gw, &pw, &totp, extra))
    };
    let out = run(&[
        "--paper",
        "--second-factor",
        "push",
        "--push-resend-after",
        "3",
        "--push-resends",
        "2",
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    approver.await.unwrap();
    let st = sso(&gw).await;
    assert_eq!(
        (st["push_sent"].as_u64(), st["logins"].as_u64()),
        (Some(2), Some(1)),
        "{st}"
    );

    reqwest::Client::new()
        .post(format!("{gw}/v1/api/logout"))
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    let out = run(&[
        "--paper",
        "--second-factor",
        "push",
        "--push-resend-after",
        "1",
        "--push-resends",
        "1",
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not approved"), "{}", stderr(&out));
    let st = sso(&gw).await;
    assert_eq!(
        (st["push_sent"].as_u64(), st["failed"].as_u64()),
        (Some(4), Some(0)),
        "{st}"
    );
}

/// `[ib.login]` with the secrets' files, a paper account and a 30 s page timeout.
fn with_login(c: DaemonConfig, s: &Secrets, password: &Path) -> DaemonConfig {
    c.with_toml("ib.login.password_file", password.display().to_string())
        .with_toml("ib.login.totp_secret_file", s.totp.display().to_string())
        .with_toml("ib.login.paper", true)
        .with_toml("ib.login.page_timeout", 30)
}

/// `[ib.login]`: the pod goes from `needs_login` to streaming without a person.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_logs_in_by_itself() {
    let secret_dir = tempfile::tempdir().unwrap();
    let s = secrets(secret_dir.path());
    let sim = SimBuilder::new(3).args(&[
        "--auto-login",
        "false",
        "--password-file",
        s.password.to_str().unwrap(),
        "--totp-secret-file",
        s.totp.to_str().unwrap(),
    ]);
    let started = Instant::now();
    let lane = Lane::start("login", sim, |c| {
        with_login(c.ib("username", "user1"), &s, &s.password)
    })
    .expect("start lane");
    lane.wait_streaming(1, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lane.daemon.log()));
    println!(
        "needs_login → streaming by the built-in login in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let gw = lane.sim.gateway_url();
    assert_eq!(sso(&gw).await["logins"], 1);
    assert_eq!(
        lane.daemon
            .metric("marketlane_ib_login_attempts_total{outcome=\"ok\"}")
            .await,
        1.0
    );
    let session = lane
        .daemon
        .actor_status("ib_session")
        .await
        .expect("session");
    assert_eq!(session["state"]["last_login_outcome"], "ok", "{session}");
    assert!(lane.daemon.log().contains("starting the built-in login"));
    lane.cleanup().await;
}

/// A wrong password in the Secret: three refused logins, then `login_failed` in the control
/// socket, the state metric and `/readyz`, and no fourth try. Fixing the file and
/// `ctl reauth` logs in.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_stops_in_login_failed_and_resumes_after_ctl_reauth() {
    let secret_dir = tempfile::tempdir().unwrap();
    let s = secrets(secret_dir.path());
    let in_use = secret_dir.path().join("mounted-password");
    std::fs::copy(&s.wrong_password, &in_use).unwrap();
    let sim = SimBuilder::new(3).args(&[
        "--auto-login",
        "false",
        "--password-file",
        s.password.to_str().unwrap(),
        "--totp-secret-file",
        s.totp.to_str().unwrap(),
    ]);
    let lane = Lane::start("loginfail", sim, |c| {
        with_login(c.ib("username", "user1"), &s, &in_use)
    })
    .expect("start lane");
    let gw = lane.sim.gateway_url();
    let until = Instant::now() + Duration::from_secs(180);
    let session = loop {
        let st = lane.daemon.actor_status("ib_session").await;
        if let Some(st) = st.filter(|s| s["state"]["state"] == "login_failed") {
            break st;
        }
        assert!(
            Instant::now() < until,
            "no login_failed\n{}",
            lane.daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let failure = session["state"]["last_failure"]
        .as_str()
        .unwrap_or_default();
    assert!(failure.contains("3 failed logins"), "{session}");
    assert_eq!(
        lane.daemon
            .metric("marketlane_ib_session_state{state=\"login_failed\"}")
            .await,
        1.0
    );
    assert_eq!(
        lane.daemon.metric("marketlane_ib_login_failures").await,
        3.0
    );
    // `/readyz` serves the result of a background check that runs every couple of seconds:
    // wait for the check after the state change.
    // Every answer on the way is "not ready" too.
    let readyz = lane
        .daemon
        .wait_readyz(Duration::from_secs(15), |r| {
            assert_eq!(r.status, 503, "{r:?}");
            r.body.contains("login_failed")
        })
        .await;
    assert!(readyz.is_ok(), "readyz: {readyz:?}");
    // No more tries while stopped (the session checks every 5 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(sso(&gw).await["attempts"], 3);

    std::fs::copy(&s.password, &in_use).unwrap();
    let r = lane.daemon.ctl("reauth", json!({})).await.unwrap();
    assert_eq!(r["ok"], true, "{r}");
    lane.wait_streaming(1, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lane.daemon.log()));
    assert_eq!(sso(&gw).await["logins"], 1);
    assert_eq!(
        lane.daemon.metric("marketlane_ib_login_failures").await,
        0.0
    );
    lane.cleanup().await;
}
