//! Redis ACLs derived from the calculator config (`marketlane redis-acl [--apply]`).
//!
//! - The daemon's user may only write hashes, set their expiry and publish, under its prefix.
//! - Each team's user `<prefix>-team-<team>` may only read keys `<prefix>:<team>:*` and
//!   subscribe to `<prefix>:<team>:updates`; every other key and channel is denied.
//!
//! Passwords are set by SHA-256 (`#<hex>`): the printed rules and the config never carry them.

use fred::prelude::*;
use fred::types::CustomCommand;
use sha2::{Digest, Sha256};

use super::config::CalculatorConfig;
use super::redis::channel;
use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("redis {url}: {message}")]
    Redis { url: String, message: String },
}

/// One `ACL SETUSER`.
#[derive(Debug, Clone, PartialEq)]
pub struct AclUser {
    pub name: String,
    pub rules: Vec<String>,
}

impl std::fmt::Display for AclUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ACL SETUSER {} {}", self.name, self.rules.join(" "))
    }
}

pub fn sha256_hex(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn team_user(prefix: &str, team: &str) -> String {
    format!("{prefix}-team-{team}")
}

/// Commands every client needs to connect and say hello.
const CONNECT: &[&str] = &[
    "+ping",
    "+hello",
    "+auth",
    "+select",
    "+client|setname",
    "+client|id",
];

/// The users of `config`: the daemon's, then one per team.
pub fn users(config: &CalculatorConfig) -> Result<Vec<AclUser>, AclError> {
    config.compile()?;
    let r = &config.redis;
    let prefix = &r.key_prefix;
    if r.password.is_empty() {
        return Err(ConfigError {
            key: "calculators.redis.password".into(),
            message: "empty: set MARKETLANE__CALCULATORS__REDIS__PASSWORD".into(),
        }
        .into());
    }
    let mut daemon = vec![
        "reset".to_string(),
        "on".into(),
        format!("#{}", sha256_hex(&r.password)),
        format!("~{prefix}:*"),
        format!("&{prefix}:*"),
    ];
    daemon.extend(CONNECT.iter().map(|s| s.to_string()));
    daemon.extend(["+hset", "+expire", "+publish"].map(String::from));
    let mut out = vec![AclUser {
        name: r.user.clone(),
        rules: daemon,
    }];
    for (i, team) in config.teams.iter().enumerate() {
        if team.password_sha256.is_empty() {
            return Err(ConfigError {
                key: format!("calculators.teams[{i}].password_sha256"),
                message: format!("team {} has no password hash", team.name),
            }
            .into());
        }
        let mut rules = vec![
            "reset".to_string(),
            "on".into(),
            format!("#{}", team.password_sha256.to_lowercase()),
            format!("%R~{prefix}:{}:*", team.name),
            format!("&{}", channel(prefix, &team.name)),
        ];
        rules.extend(CONNECT.iter().map(|s| s.to_string()));
        rules.extend(
            [
                "+hget",
                "+hmget",
                "+hgetall",
                "+exists",
                "+ttl",
                "+pttl",
                "+type",
                "+subscribe",
                "+unsubscribe",
            ]
            .map(String::from),
        );
        out.push(AclUser {
            name: team_user(prefix, &team.name),
            rules,
        });
    }
    Ok(out)
}

/// Applies `users` through an administrative connection (`admin_url`, e.g. the default user).
/// `url` without its user and password, and every piece of them blanked out of `text`: the
/// admin URL carries the admin password, and client errors may quote the URL.
fn without_credentials(url: &str, text: &str) -> (String, String) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), text.to_string());
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return (url.to_string(), text.to_string());
    };
    let userinfo = &authority[..at];
    let mut text = text.replace(userinfo, "[redacted]");
    for part in userinfo.split(':').filter(|p| p.len() >= 3) {
        text = text.replace(part, "[redacted]");
    }
    (format!("{scheme}://[redacted]@{}", &rest[at + 1..]), text)
}

pub async fn apply(admin_url: &str, users: &[AclUser]) -> Result<(), AclError> {
    let err = |e: fred::error::Error| {
        let (url, message) = without_credentials(admin_url, &e.to_string());
        AclError::Redis { url, message }
    };
    let client = Builder::from_config(Config::from_url(admin_url).map_err(err)?)
        .build()
        .map_err(err)?;
    client.init().await.map_err(err)?;
    for u in users {
        let mut args = vec!["SETUSER".to_string(), u.name.clone()];
        args.extend(u.rules.iter().cloned());
        let () = client
            .custom(CustomCommand::new_static("ACL", None, false), args)
            .await
            .map_err(err)?;
    }
    let _ = client.quit().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calculator::config::{SpecConfig, TeamConfig};

    #[tokio::test]
    async fn apply_errors_never_show_the_admin_password() {
        for url in [
            // Nothing listens on port 1: a connection error.
            "redis://admin:hunter2-admin@127.0.0.1:1/0",
            // Not a URL fred accepts.
            "redis://admin:hunter2-admin@[not-a-host/0",
        ] {
            let e = apply(url, &[]).await.unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("[redacted]"), "{e}");
        }
    }

    #[test]
    fn rules_confine_each_team_to_its_prefix() {
        let mut c = CalculatorConfig::default();
        c.redis.password = "secret".into();
        c.teams = vec![TeamConfig {
            name: "alpha".into(),
            password_sha256: sha256_hex("a"),
            specs: vec![SpecConfig {
                name: "vwap_5m".into(),
                kind: "vwap".into(),
                source: "tick_market_data".into(),
                symbols: vec!["*".into()],
                window_secs: Some(300.0),
                window_ticks: None,
                levels: None,
            }],
        }];
        let users = users(&c).unwrap();
        assert_eq!(users.len(), 2);
        let daemon = users[0].to_string();
        assert!(
            daemon.starts_with("ACL SETUSER marketlane reset on #"),
            "{daemon}"
        );
        assert!(!daemon.contains("secret"));
        assert!(daemon.contains("~ml:* &ml:*"));
        let team = users[1].to_string();
        assert!(
            team.starts_with("ACL SETUSER ml-team-alpha reset on #ca978112"),
            "{team}"
        );
        assert!(team.contains("%R~ml:alpha:* &ml:alpha:updates"), "{team}");
        assert!(!team.contains("+@"), "no command categories: {team}");
        c.teams[0].password_sha256.clear();
        let e = super::users(&c).unwrap_err().to_string();
        assert!(e.contains("calculators.teams[0].password_sha256"), "{e}");
    }
}
