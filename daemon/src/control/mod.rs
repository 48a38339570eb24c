//! Operations: the Unix control socket (`server.rs`, commands in `commands.rs`), the run-time
//! log level (`logging.rs`), the readiness probe (`readiness.rs`) and the redaction of secrets
//! before anything about the config reaches a log (`redact.rs`).

pub mod commands;
pub mod logging;
pub mod readiness;
pub mod redact;
pub mod server;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use commands::Daemon;
pub use logging::LogControl;
pub use readiness::Readiness;

/// Where `marketlane ctl` looks unless told otherwise (`--socket`, `MARKETLANE_CONTROL_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/run/marketlane/control.sock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub enabled: bool,
    /// The Unix socket; its directory is created (mode 0700) if missing, the socket is 0600.
    pub socket: PathBuf,
    /// Peer uids allowed besides the daemon's own (which `kubectl exec` gets anyway).
    pub allowed_uids: Vec<u32>,
    /// Accept `fault` (make an actor panic): for the failure-matrix tests, never in production.
    pub allow_fault_injection: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            socket: PathBuf::from(DEFAULT_SOCKET),
            allowed_uids: Vec::new(),
            allow_fault_injection: false,
        }
    }
}

impl ControlConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.enabled && !self.socket.is_absolute() {
            anyhow::bail!(
                "config control.socket: {:?} must be an absolute path",
                self.socket
            );
        }
        // sun_path holds 108 bytes on Linux, the terminating NUL included.
        if self.socket.as_os_str().len() > 107 {
            anyhow::bail!(
                "config control.socket: {:?} is longer than the 107 bytes a Unix socket path may have",
                self.socket
            );
        }
        Ok(())
    }
}
