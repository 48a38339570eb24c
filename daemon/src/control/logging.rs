//! Logs: `tracing` to stderr, text or JSON (`log.json`), with a filter that the control
//! socket's `log-level` replaces at run time.

use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
}

impl LogControl {
    /// Installs the global subscriber. `RUST_LOG` wins over `level` at start, as usual.
    pub fn init(level: &str, json: bool) -> Self {
        let (filter, start) = match std::env::var("RUST_LOG") {
            Ok(v) if EnvFilter::try_new(&v).is_ok() => (EnvFilter::new(&v), v),
            _ => match EnvFilter::try_new(level) {
                Ok(f) => (f, level.to_string()),
                Err(_) => (EnvFilter::new("info"), "info".to_string()),
            },
        };
        let (filter, handle) = reload::Layer::new(filter);
        let registry = tracing_subscriber::registry().with(filter);
        // The span fields (actor, symbol, category, cmd) go with every event in both formats.
        let _ = if json {
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_target(false)
                        .with_current_span(true)
                        .with_span_list(false),
                )
                .try_init()
        } else {
            // Colours only for a person at a terminal: log files and collectors get plain text.
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
                )
                .try_init()
        };
        Self {
            handle,
            current: Arc::new(Mutex::new(start)),
        }
    }

    pub fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Replaces the filter; returns the previous one. A filter that does not parse is an
    /// error naming it, and the old filter stays.
    pub fn set(&self, level: &str) -> Result<String, String> {
        let filter =
            EnvFilter::try_new(level).map_err(|e| format!("{level:?} is not a log filter: {e}"))?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))?;
        let mut current = self
            .current
            .lock()
            .map_err(|_| "log filter lock poisoned".to_string())?;
        Ok(std::mem::replace(&mut *current, level.to_string()))
    }
}
