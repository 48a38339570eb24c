use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the simulator. None of them is retryable by the simulator itself: they are
/// configuration or environment problems the operator has to fix.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator config: {0}")]
    InvalidConfig(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open ledger {path}: {source}")]
    LedgerOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write ledger: {0}")]
    LedgerWrite(std::io::Error),
    #[error("bad scenario file {path}: {reason}")]
    Scenario { path: PathBuf, reason: String },
    #[error("tls setup failed: {0}")]
    Tls(String),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}
