//! The second source of the platform: numeric economic releases (EIA-weekly-report style)
//! polled over HTTP into `numeric_economic_data`. "A new source is only a new connector": it
//! shares the schemas, the row emitter, the producer and the writers with the IB connector.

mod child;
pub mod poller;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use child::EconChild;
pub use poller::{EconArgs, EconMsg, EconPoller, EconSnapshot};

use crate::config::{ConfigError, humantime_secs};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EconConfig {
    /// The release feed (JSON); unset = no economic connector in this pod.
    pub url: Option<String>,
    /// `source_system_name` of its rows.
    pub source_system: String,
    #[serde(with = "humantime_secs")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_secs")]
    pub request_timeout: Duration,
}

impl Default for EconConfig {
    fn default() -> Self {
        Self {
            url: None,
            source_system: "econ_feed".into(),
            poll_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl EconConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError {
                key: "econ.url".into(),
                message: format!("{url:?} is not an http(s) URL"),
            });
        }
        if self.poll_interval < Duration::from_millis(100) {
            return Err(ConfigError {
                key: "econ.poll_interval".into(),
                message: "must be at least 0.1 s".into(),
            });
        }
        Ok(())
    }
}
