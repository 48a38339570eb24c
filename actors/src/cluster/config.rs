//! `[cluster]`: how connector pods find and trust each other.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, humantime_secs};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Off: this pod streams every configured symbol on its own.
    pub enabled: bool,
    /// Port of this pod's node server.
    pub port: u16,
    /// Address the node server binds (all interfaces by default).
    pub bind: Option<std::net::IpAddr>,
    /// Host name or address peers dial to reach this pod, e.g. the StatefulSet's stable DNS
    /// name `marketlane-0.marketlane.trading.svc.cluster.local`. Written exactly like this pod's
    /// entry in `peers`, so a pod recognises itself there.
    pub advertise_host: String,
    /// Every pod's `host:port`, this pod included (it skips itself). In Kubernetes the
    /// headless-service names of the StatefulSet's pods; names are resolved at every dial.
    pub peers: Vec<String>,
    /// Shared secret of the nodes' challenge/response; from a Kubernetes secret through
    /// `MARKETLANE__CLUSTER__COOKIE` or `cookie_file`.
    pub cookie: String,
    pub cookie_file: Option<PathBuf>,
    /// Encrypt and mutually authenticate pod links (PEM files).
    pub tls: Option<ClusterTlsConfig>,
    /// Market-data lines this pod's IB user may hold (IB's default is 100).
    pub line_budget: u32,
    /// The most lines a peer's heartbeat may claim (a larger claim counts as this many);
    /// unset: this pod's own `line_budget` (pods of one StatefulSet have the same).
    pub max_peer_line_budget: Option<u32>,
    #[serde(with = "humantime_secs")]
    pub heartbeat_interval: Duration,
    /// A peer unheard for this long is gone (half-open links never close by themselves).
    /// 1.5 s (six heartbeats) keeps a cut link's takeover under 3 s. It is a suspicion that
    /// costs little when wrong: the takeover is make-before-break, so a pod that was only
    /// stalled (a busy scheduler, a slow disk) keeps streaming while the other subscribes its
    /// symbols too, both pods' rows carry the same ids and collapse, and the symbols move back
    /// once its heartbeats arrive again. Only the IB lines are doubled meanwhile.
    #[serde(with = "humantime_secs")]
    pub heartbeat_timeout: Duration,
    /// How often an unconnected peer is dialled again.
    #[serde(with = "humantime_secs")]
    pub redial_interval: Duration,
    /// A symbol moving to another pod is released once that pod streams it, or after this
    /// (longer than the websocket watchdog, so a new owner whose socket died during a
    /// partition has reconnected before the old one lets go).
    #[serde(with = "humantime_secs")]
    pub handover_timeout: Duration,
    /// After start, wait this long for peers before taking symbols alone.
    #[serde(with = "humantime_secs")]
    pub startup_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// This pod's certificate chain and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signed every pod's certificate (peers must present one).
    pub ca: PathBuf,
    /// The name peers' certificates are issued for (one certificate name for the StatefulSet).
    pub server_name: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 4697,
            bind: None,
            advertise_host: String::new(),
            peers: Vec::new(),
            cookie: String::new(),
            cookie_file: None,
            tls: None,
            line_budget: 100,
            max_peer_line_budget: None,
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_millis(1_500),
            redial_interval: Duration::from_secs(1),
            handover_timeout: Duration::from_secs(30),
            startup_grace: Duration::from_secs(2),
        }
    }
}

/// The cookie is the only secret between a stranger and the cluster when TLS is off: at least
/// 256 bits (e.g. `openssl rand -hex 32` gives 64 characters).
pub const MIN_COOKIE_BYTES: usize = 32;

fn short_cookie(len: usize) -> String {
    format!("{len} bytes; at least {MIN_COOKIE_BYTES} are required (e.g. `openssl rand -hex 32`)")
}

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: format!("cluster.{key}"),
        message: message.into(),
    }
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.advertise_host.trim().is_empty() {
            return Err(bad(
                "advertise_host",
                "empty: peers need a host name or address to dial",
            ));
        }
        if self.cookie.is_empty() && self.cookie_file.is_none() {
            return Err(bad(
                "cookie",
                "empty: set cluster.cookie (e.g. from a secret) or cluster.cookie_file",
            ));
        }
        if self.cookie_file.is_none() && self.cookie.len() < MIN_COOKIE_BYTES {
            return Err(bad("cookie", short_cookie(self.cookie.len())));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let ok = p
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(bad(
                    &format!("peers[{i}]"),
                    format!("{p:?} is not host:port"),
                ));
            }
        }
        if self.line_budget == 0 {
            return Err(bad("line_budget", "must be at least 1"));
        }
        if self.heartbeat_interval < Duration::from_millis(50) {
            return Err(bad("heartbeat_interval", "must be at least 0.05 s"));
        }
        if self.heartbeat_timeout < self.heartbeat_interval * 2 {
            return Err(bad(
                "heartbeat_timeout",
                "must be at least two heartbeat intervals",
            ));
        }
        if let Some(tls) = &self.tls
            && tls.server_name.trim().is_empty()
        {
            return Err(bad("tls.server_name", "empty"));
        }
        Ok(())
    }

    /// The most lines a peer may claim.
    pub fn max_peer_line_budget(&self) -> u32 {
        self.max_peer_line_budget.unwrap_or(self.line_budget)
    }

    /// This pod as its peers list it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.advertise_host, self.port)
    }

    /// The cookie, read from `cookie_file` when set (a mounted secret).
    pub fn load_cookie(&self) -> Result<String, ConfigError> {
        match &self.cookie_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad("cookie_file", format!("{}: {e}", path.display())))?;
                let cookie = text.trim().to_string();
                if cookie.is_empty() {
                    return Err(bad("cookie_file", format!("{} is empty", path.display())));
                }
                if cookie.len() < MIN_COOKIE_BYTES {
                    return Err(bad(
                        "cookie_file",
                        format!("{}: {}", path.display(), short_cookie(cookie.len())),
                    ));
                }
                Ok(cookie)
            }
            None => Ok(self.cookie.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> ClusterConfig {
        ClusterConfig {
            enabled: true,
            advertise_host: "10.0.0.1".into(),
            cookie: "s3cret-cookie-of-at-least-32-bytes!".into(),
            peers: vec!["10.0.0.1:4697".into(), "10.0.0.2:4697".into()],
            ..Default::default()
        }
    }

    #[test]
    fn off_by_default_and_a_complete_config_validates() {
        ClusterConfig::default().validate().unwrap();
        enabled().validate().unwrap();
        assert_eq!(enabled().address(), "10.0.0.1:4697");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(ClusterConfig, &str)> = vec![
            (
                ClusterConfig {
                    cookie: String::new(),
                    ..enabled()
                },
                "cluster.cookie",
            ),
            (
                ClusterConfig {
                    cookie: "s3cret-cookie".into(),
                    ..enabled()
                },
                "cluster.cookie",
            ),
            (
                ClusterConfig {
                    advertise_host: " ".into(),
                    ..enabled()
                },
                "cluster.advertise_host",
            ),
            (
                ClusterConfig {
                    peers: vec!["10.0.0.2".into()],
                    ..enabled()
                },
                "cluster.peers[0]",
            ),
            (
                ClusterConfig {
                    line_budget: 0,
                    ..enabled()
                },
                "cluster.line_budget",
            ),
            (
                ClusterConfig {
                    heartbeat_timeout: Duration::from_millis(400),
                    ..enabled()
                },
                "cluster.heartbeat_timeout",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(config.validate().unwrap_err().key, key);
        }
    }

    #[test]
    fn the_cookie_comes_from_its_file_when_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie");
        std::fs::write(&path, "from-the-secret-of-at-least-32-bytes\n").unwrap();
        let c = ClusterConfig {
            cookie_file: Some(path.clone()),
            ..enabled()
        };
        assert_eq!(
            c.load_cookie().unwrap(),
            "from-the-secret-of-at-least-32-bytes"
        );
        std::fs::write(&path, "short\n").unwrap();
        assert_eq!(c.load_cookie().unwrap_err().key, "cluster.cookie_file");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(c.load_cookie().unwrap_err().key, "cluster.cookie_file");
    }
}
