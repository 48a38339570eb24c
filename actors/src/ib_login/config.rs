//! `[ib.login]`: the built-in unattended login (headless Chromium on the gateway's SSO page).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, humantime_secs};

/// How the second factor is answered when IB's page asks for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactor {
    /// No second factor expected: a page asking for one fails the login.
    None,
    /// RFC 6238 codes from `totp_secret_file` (IB's "Mobile Authenticator App").
    Totp,
    /// IB Key push notification: wait for the approval on the phone, resending it.
    Push,
    /// `code_command` prints the code on stdout (SMS relays, vaults).
    Command,
}

/// CSS selectors of IB's SSO page. The defaults are ibeam's (`ibeam/src/var.py` and the
/// website "version 2" targets in `ibeam/src/handlers/login_handler.py`, Voyz/ibeam@993d3d9),
/// widened where public login scripts captured a newer page (code fields
/// `#xyz-field-{silver,gold,temp}-response` besides ibeam's bronze one). IB changes its page
/// now and then: every one can be overridden.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Selectors {
    /// ibeam v2 `USER_NAME_EL` = `NAME@@username`.
    pub username: String,
    /// ibeam `PASSWORD_EL` = `NAME@@password`.
    pub password: String,
    /// ibeam `SUBMIT_EL` = `CSS_SELECTOR@@.btn.btn-lg.xyz-button-login`.
    pub submit: String,
    /// ibeam `LIVE_PAPER_TOGGLE_EL` = `FOR@@label[for=toggle1]` (clicked to switch mode).
    pub paper_toggle: String,
    /// The checkbox behind that label: checked means paper (a 2026 capture of the page).
    pub paper_checkbox: String,
    /// ibeam v2 `ERROR_EL` = `CSS_SELECTOR@@.xyz-errormessage` (v1: `.alert.alert-danger`).
    pub error: String,
    /// ibeam `SUCCESS_EL_TEXT` = `Client login succeeds` (the body of `/sso/Dispatcher`).
    pub success_text: String,
    /// Second-factor code inputs, tried in order; the first visible one is used (ibeam
    /// `TWO_FA_INPUT_EL_ID` = `ID@@xyz-field-bronze-response`).
    pub code_inputs: Vec<String>,
    /// ibeam `TWO_FA_NOTIFICATION_EL` = `CLASS_NAME@@login-step-notification`.
    pub notification: String,
    /// ibeam `NOTIFICATION_RESEND_EL` = `a[onclick*='resendNotification()']`.
    pub notification_resend: String,
    /// ibeam `IBKEY_PROMO_EL_CLASS` = `CLASS_NAME@@ibkey-promo-skip`.
    pub ibkey_promo: String,
}

impl Default for Selectors {
    fn default() -> Self {
        Self {
            username: "input[name=\"username\"]".into(),
            password: "input[name=\"password\"]".into(),
            submit: ".btn.btn-lg.xyz-button-login".into(),
            paper_toggle: "label[for=\"toggle1\"]".into(),
            paper_checkbox: "#toggle1".into(),
            error: ".xyz-errormessage, .alert.alert-danger.margin-top-10".into(),
            success_text: "Client login succeeds".into(),
            code_inputs: [
                "#xyz-field-silver-response",
                "#xyz-field-gold-response",
                "#xyz-field-temp-response",
                "#xyz-field-bronze-response",
            ]
            .map(String::from)
            .to_vec(),
            notification: ".login-step-notification".into(),
            notification_resend: "a[onclick*='resendNotification()']".into(),
            ibkey_promo: ".ibkey-promo-skip".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// The IB user; absent: `ib.username` (set per StatefulSet ordinal by `ib.usernames`).
    pub username: Option<String>,
    /// File holding the password (a mounted Secret); read at every login, never logged.
    /// `{username}` in the path is the pod's IB user (one Secret key per user).
    pub password_file: PathBuf,
    /// Absent: `totp` when `totp_secret_file` is set, else `none`.
    pub second_factor: Option<SecondFactor>,
    /// File holding the base32 TOTP secret (shown by IB when the authenticator app is added).
    pub totp_secret_file: Option<PathBuf>,
    /// For `second_factor = "command"`: prints the code on stdout (gets `IB_USERNAME`).
    pub code_command: Option<Vec<String>>,
    /// Log in to the paper account (IB's live/paper toggle on the page).
    pub paper: bool,
    /// Failed logins in a row (wrong password or second factor) before the login stops in
    /// state `login_failed`: IB locks an account after repeated failures.
    pub max_failed_logins: u32,
    /// A running chromedriver (e.g. in the gateway sidecar: `http://127.0.0.1:9515`); absent:
    /// `chromedriver` is started for each login.
    pub webdriver_url: Option<String>,
    pub chromedriver: PathBuf,
    /// The browser binary; absent: chromedriver's default (`/usr/bin/chromium` on Debian).
    pub chromium: Option<PathBuf>,
    /// The SSO page under the gateway URL (ibeam `ROUTE_AUTH`).
    pub route: String,
    /// How long each page step may take (load, answer to a submit).
    #[serde(with = "humantime_secs")]
    pub page_timeout: Duration,
    /// Push: how long to wait for the approval before each resend (ibeam: 10 s resends).
    #[serde(with = "humantime_secs")]
    pub push_resend_after: Duration,
    /// Push: resends before giving up (ibeam `NOTIFICATION_RESEND_RETRIES` = 10).
    pub push_resends: u32,
    /// The code command's deadline (ibeam's external request handler waits 300 s).
    #[serde(with = "humantime_secs")]
    pub code_command_timeout: Duration,
    /// After "Client login succeeds", how long `marketlane login` waits for
    /// `/iserver/auth/status` to say authenticated.
    #[serde(with = "humantime_secs")]
    pub auth_wait: Duration,
    pub selectors: Selectors,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            username: None,
            password_file: PathBuf::new(),
            second_factor: None,
            totp_secret_file: None,
            code_command: None,
            paper: false,
            max_failed_logins: 3,
            webdriver_url: None,
            chromedriver: "chromedriver".into(),
            chromium: None,
            route: "/sso/Login?forwardTo=22&RL=1&ip2loc=on".into(),
            page_timeout: Duration::from_secs(30),
            push_resend_after: Duration::from_secs(30),
            push_resends: 3,
            code_command_timeout: Duration::from_secs(300),
            auth_wait: Duration::from_secs(120),
            selectors: Selectors::default(),
        }
    }
}

impl LoginConfig {
    pub fn second_factor(&self) -> SecondFactor {
        self.second_factor
            .unwrap_or(if self.totp_secret_file.is_some() {
                SecondFactor::Totp
            } else {
                SecondFactor::None
            })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError {
            key: format!("ib.login.{key}"),
            message: message.into(),
        };
        if self.password_file.as_os_str().is_empty() {
            return Err(bad(
                "password_file",
                "required: the file holding the IB password",
            ));
        }
        if self.max_failed_logins == 0 {
            return Err(bad(
                "max_failed_logins",
                "must be at least 1 (IB locks accounts after repeated failures)",
            ));
        }
        if !self.route.starts_with('/') {
            return Err(bad("route", "must start with /"));
        }
        match self.second_factor() {
            SecondFactor::Totp if self.totp_secret_file.is_none() => {
                return Err(bad(
                    "totp_secret_file",
                    "second_factor = \"totp\" needs the secret's file",
                ));
            }
            SecondFactor::Command
                if self
                    .code_command
                    .as_ref()
                    .is_none_or(|c| c.is_empty() || c[0].trim().is_empty()) =>
            {
                return Err(bad(
                    "code_command",
                    "second_factor = \"command\" needs the command",
                ));
            }
            _ => {}
        }
        if self.selectors.code_inputs.is_empty() {
            return Err(bad("selectors.code_inputs", "at least one selector"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IbConfig;

    fn ib(toml_text: &str) -> Result<IbConfig, String> {
        let ib: IbConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        ib.validate().map_err(|e| e.to_string())?;
        Ok(ib)
    }

    #[test]
    fn login_section_parses_with_ibeam_defaults() {
        let ib = ib("[login]\npassword_file = \"/run/secrets/ib/password\"\ntotp_secret_file = \"/run/secrets/ib/totp\"\npaper = true\n[login.selectors]\nsubmit = \"button.login\"\n").unwrap();
        let login = ib.login.unwrap();
        assert_eq!(login.second_factor(), SecondFactor::Totp);
        assert_eq!(login.max_failed_logins, 3);
        assert_eq!(login.route, "/sso/Login?forwardTo=22&RL=1&ip2loc=on");
        assert_eq!(login.selectors.submit, "button.login");
        assert_eq!(login.selectors.password, "input[name=\"password\"]");
        assert!(login.paper);
    }

    #[test]
    fn bad_login_sections_name_the_key() {
        let e = ib("[login]\ntotp_secret_file = \"/t\"\n").unwrap_err();
        assert!(e.contains("ib.login.password_file"), "{e}");
        let e = ib("[login]\npassword_file = \"/p\"\nsecond_factor = \"totp\"\n").unwrap_err();
        assert!(e.contains("ib.login.totp_secret_file"), "{e}");
        let e = ib("[login]\npassword_file = \"/p\"\nsecond_factor = \"command\"\n").unwrap_err();
        assert!(e.contains("ib.login.code_command"), "{e}");
        let e = ib("[login]\npassword_file = \"/p\"\nmax_failed_logins = 0\n").unwrap_err();
        assert!(e.contains("ib.login.max_failed_logins"), "{e}");
        let e =
            ib("login_command = [\"/bin/login\"]\n[login]\npassword_file = \"/p\"\n").unwrap_err();
        assert!(e.contains("ib.login:"), "{e}");
        let e = ib("[login]\npassword_file = \"/p\"\npasword = \"x\"\n").unwrap_err();
        assert!(e.contains("pasword"), "{e}");
    }
}
