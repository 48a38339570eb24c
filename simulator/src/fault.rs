//! Faults, injectable by `POST /sim/fault`, `SimHandle::inject` and the scenario file.
//! Durations (`seconds`) are sim time; `slow.millis` is wall-clock delay, because it targets
//! the client's real read timeouts.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::SimError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Close every websocket's TCP connection without a close frame.
    DropTcp,
    /// Every open websocket goes silent (no hb, data, or replies) but stays open.
    StopHeartbeats,
    /// The brokerage session loses authentication; websockets get `sts authenticated:false`.
    StsUnauthenticated,
    /// The idle timeout fires now.
    ExpireSession,
    /// The ~01:00 /iserver reset: the bridge is gone until the next `ssodh/init`.
    NightlyReset,
    /// Another login of the same user: `competing:true`, then `authenticated:false`. With
    /// `seconds`, the other session logs out after that long (sim time) and this gateway's
    /// client may take the brokerage session back without kicking anybody.
    Competing {
        #[serde(default)]
        seconds: Option<f64>,
    },
    /// REST and websocket upgrades answer `status` (500 or 503) for `seconds`: IB's servers
    /// restarting (nightly reset, weekend maintenance; ibeam reads 500 as "IBKR server
    /// restart" and 503 as "servers are not ready", `ibeam/src/handlers/http_handler.py`).
    #[serde(rename = "http_5xx")]
    Http5xx {
        #[serde(default = "default_5xx")]
        status: u16,
        seconds: f64,
    },
    /// Every REST response is delayed by `millis` (wall clock) for `seconds` (sim time).
    Slow { millis: u64, seconds: f64 },
    /// One binary frame with invalid UTF-8 on every websocket.
    NonUtf8Frame,
    /// One text frame that is not valid JSON on every websocket.
    MalformedFrame,
    /// One text frame with exactly `text` on every websocket (tests craft odd but
    /// real-shaped frames with it, e.g. a trade whose size IB sends empty).
    RawFrame { text: String },
    /// The client lands in the 429 penalty box (default: the configured length).
    PenaltyBox {
        #[serde(default)]
        seconds: Option<f64>,
    },
}

fn default_5xx() -> u16 {
    503
}

/// One scenario step: inject `fault` `at_secs` sim seconds after start, at the gateway of
/// username `gateway` (default: the primary `--listen` gateway).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioStep {
    pub at_secs: f64,
    pub fault: Fault,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

pub fn load_scenario(path: &Path) -> Result<Vec<ScenarioStep>, SimError> {
    let err = |reason: String| SimError::Scenario {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut steps: Vec<ScenarioStep> =
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    if let Some(s) = steps
        .iter()
        .find(|s| !(s.at_secs.is_finite() && s.at_secs >= 0.0))
    {
        return Err(err(format!("at_secs must be >= 0, got {}", s.at_secs)));
    }
    steps.sort_by(|a, b| a.at_secs.total_cmp(&b.at_secs));
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names() {
        let f: Fault = serde_json::from_str(r#"{"kind":"http_5xx","seconds":3}"#).expect("parse");
        assert_eq!(
            f,
            Fault::Http5xx {
                status: 503,
                seconds: 3.0
            }
        );
        let f: Fault = serde_json::from_str(r#"{"kind":"competing"}"#).expect("parse");
        assert_eq!(f, Fault::Competing { seconds: None });
        let f: Fault = serde_json::from_str(r#"{"kind":"competing","seconds":30}"#).expect("parse");
        assert_eq!(
            f,
            Fault::Competing {
                seconds: Some(30.0)
            }
        );
        let f: Fault = serde_json::from_str(r#"{"kind":"non_utf8_frame"}"#).expect("parse");
        assert_eq!(f, Fault::NonUtf8Frame);
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"nope"}"#).is_err());
    }

    #[test]
    fn scenario_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s.json");
        std::fs::write(
            &p,
            r#"[{"at_secs":5,"fault":{"kind":"drop_tcp"},"gateway":"user2"},{"at_secs":1,"fault":{"kind":"slow","millis":10,"seconds":2}}]"#,
        )
        .expect("write");
        let s = load_scenario(&p).expect("load");
        assert_eq!(s[0].at_secs, 1.0);
        assert_eq!(s[1].fault, Fault::DropTcp);
        assert_eq!(s[1].gateway.as_deref(), Some("user2"));
        assert_eq!(s[0].gateway, None);
    }
}
