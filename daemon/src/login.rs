//! `marketlane login`: logs the gateway in unattended (headless Chromium on its SSO page),
//! then waits until `/iserver/auth/status` says authenticated. Exit 0 when it does, 2 when
//! logins must stop (`login_failed`: refused `--max-failed-logins` times, or IB locked the
//! account), 1 for anything a later try may fix (gateway down, page timeout, browser).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use marketlane_actors::Metrics;
use marketlane_actors::ib_login::{
    self, Credentials, FailureGuard, LoginConfig, LoginError, SecondFactor,
};

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The gateway, e.g. https://localhost:5000 (its SSO page is under it).
    #[arg(long)]
    gateway_url: String,
    /// The IB username.
    #[arg(long, env = "IB_USERNAME")]
    username: String,
    /// File holding the password (a mounted Secret); never pass it on the command line.
    #[arg(long)]
    password_file: PathBuf,
    /// File holding the base32 TOTP secret (IB's Mobile Authenticator App).
    #[arg(long)]
    totp_secret_file: Option<PathBuf>,
    /// totp (default with --totp-secret-file), push (IB Key approval), command, none.
    #[arg(long, value_parser = parse_second_factor)]
    second_factor: Option<SecondFactor>,
    /// For --second-factor command: a program that prints the code (gets IB_USERNAME).
    #[arg(long)]
    code_command: Option<PathBuf>,
    /// Log in to the paper account.
    #[arg(long)]
    paper: bool,
    /// Refused logins before giving up (IB locks accounts after repeated failures).
    #[arg(long, default_value_t = 3)]
    max_failed_logins: u32,
    /// Use a running chromedriver instead of starting one.
    #[arg(long)]
    webdriver_url: Option<String>,
    #[arg(long, default_value = "chromedriver")]
    chromedriver: PathBuf,
    /// The browser binary (default: chromedriver's, /usr/bin/chromium on Debian).
    #[arg(long)]
    chromium: Option<PathBuf>,
    /// Push: seconds to wait for the approval before each resend.
    #[arg(long, default_value_t = 30)]
    push_resend_after: u64,
    /// Push: resends before giving up.
    #[arg(long, default_value_t = 3)]
    push_resends: u32,
    /// Seconds each page step may take.
    #[arg(long, default_value_t = 30)]
    page_timeout: u64,
    /// Seconds to wait for /iserver/auth/status to say authenticated after the login.
    #[arg(long, default_value_t = 120)]
    auth_wait: u64,
}

fn parse_second_factor(s: &str) -> Result<SecondFactor, String> {
    match s {
        "totp" => Ok(SecondFactor::Totp),
        "push" => Ok(SecondFactor::Push),
        "command" => Ok(SecondFactor::Command),
        "none" => Ok(SecondFactor::None),
        _ => Err(format!("{s:?}: expected totp, push, command or none")),
    }
}

pub async fn run(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let cfg = LoginConfig {
        username: Some(args.username.clone()),
        password_file: args.password_file,
        second_factor: args.second_factor,
        totp_secret_file: args.totp_secret_file,
        code_command: args.code_command.map(|p| vec![p.display().to_string()]),
        paper: args.paper,
        max_failed_logins: args.max_failed_logins,
        webdriver_url: args.webdriver_url,
        chromedriver: args.chromedriver,
        chromium: args.chromium,
        page_timeout: Duration::from_secs(args.page_timeout),
        push_resend_after: Duration::from_secs(args.push_resend_after),
        push_resends: args.push_resends,
        auth_wait: Duration::from_secs(args.auth_wait),
        ..LoginConfig::default()
    };
    cfg.validate()?;
    let result = async {
        let creds = Credentials::load(&args.username, &cfg)?;
        let mut guard = FailureGuard::new(cfg.max_failed_logins);
        ib_login::browser::sso_login(&args.gateway_url, &cfg, &creds, &mut guard).await?;
        ib_login::confirm_authenticated(&args.gateway_url, cfg.auth_wait, Arc::new(Metrics::new()))
            .await
    }
    .await;
    match result {
        Ok(()) => {
            println!(
                "logged in: {} is authenticated at {}",
                args.username, args.gateway_url
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ LoginError::LoginFailed(_)) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}
