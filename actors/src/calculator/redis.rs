//! Redis output of the calculators: one hash per team, indicator and symbol
//! (`<prefix>:<team>:<indicator>:<symbol>` with `value`, `as_of`, `window`, `computed_at`,
//! `unit`, `kind`), expired as a whole after `key_ttl`, written in one pipeline per flush, and
//! optionally published on the team's channel `<prefix>:<team>:updates`.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::ReconnectPolicy;

use super::config::RedisConfig;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis config: {0}")]
    Config(String),
    /// Redis is down, slow or refused the write: the caller keeps the values and retries.
    #[error("redis write failed (retried): {0}")]
    Write(String),
    #[error("redis write timed out after {0:?} (retried)")]
    Timeout(Duration),
}

/// One value to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub team: String,
    pub indicator: String,
    pub symbol: Arc<str>,
    /// The spec's kind (`vwap`, …).
    pub kind: &'static str,
    /// `indicator_type` of the Kafka row.
    pub indicator_type: &'static str,
    pub window: String,
    pub value: Option<f64>,
    pub unit: String,
    /// Event time of the value (ns).
    pub as_of: i64,
    pub computed_at: i64,
    /// Source category, for the latency metric.
    pub source: &'static str,
}

pub fn key(prefix: &str, team: &str, indicator: &str, symbol: &str) -> String {
    format!("{prefix}:{team}:{indicator}:{symbol}")
}

pub fn channel(prefix: &str, team: &str) -> String {
    format!("{prefix}:{team}:updates")
}

/// How a value is written: a number, or the empty string for an empty window.
pub fn format_value(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

#[derive(Clone)]
pub struct RedisSink {
    client: Client,
    prefix: String,
    ttl_secs: i64,
    publish: bool,
    timeout: Duration,
}

impl RedisSink {
    /// A client that (re)connects in the background with back-off; it does not wait for Redis,
    /// so a calculator starts (and keeps its windows) while Redis is down (failure row 9).
    pub fn connect(config: &RedisConfig, ttl: Duration, publish: bool) -> Result<Self, RedisError> {
        let mut c = Config::from_url(&config.url).map_err(|e| RedisError::Config(e.to_string()))?;
        if !config.user.is_empty() {
            c.username = Some(config.user.clone());
        }
        if !config.password.is_empty() {
            c.password = Some(config.password.clone());
        }
        c.fail_fast = false;
        let client = Builder::from_config(c)
            .with_performance_config(|p| p.default_command_timeout = config.write_timeout)
            .with_connection_config(|cc| {
                cc.connection_timeout = config.write_timeout;
                // Whoami-only clients: the daemon's ACL user needs no CLIENT SETNAME.
                cc.auto_client_setname = false;
                cc.reconnect_on_auth_error = true;
                // Commands sent while disconnected fail after the timeout instead of queueing
                // without bound: the caller keeps the values and retries.
                cc.max_command_buffer_len = 10_000;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()
            .map_err(|e| RedisError::Config(e.to_string()))?;
        client.connect();
        Ok(Self {
            client,
            prefix: config.key_prefix.clone(),
            ttl_secs: ttl.as_secs().max(1) as i64,
            publish,
            timeout: config.write_timeout,
        })
    }

    /// Writes every update in one pipeline (HSET + EXPIRE [+ PUBLISH] per key). All or nothing
    /// from the caller's view: on error every update is kept and written again.
    pub async fn write(&self, updates: &[&Update]) -> Result<(), RedisError> {
        if updates.is_empty() {
            return Ok(());
        }
        let pipeline = self.client.pipeline();
        let queue = async {
            for u in updates {
                let k = key(&self.prefix, &u.team, &u.indicator, &u.symbol);
                let fields: [(&str, String); 6] = [
                    ("value", format_value(u.value)),
                    ("as_of", u.as_of.to_string()),
                    ("window", u.window.clone()),
                    ("computed_at", u.computed_at.to_string()),
                    ("unit", u.unit.clone()),
                    ("kind", u.kind.to_string()),
                ];
                let () = pipeline.hset(&k, fields).await?;
                let () = pipeline.expire(&k, self.ttl_secs, None).await?;
                if self.publish {
                    let msg = serde_json::json!({
                        "key": k,
                        "value": u.value,
                        "as_of": u.as_of,
                        "window": u.window,
                    })
                    .to_string();
                    let () = pipeline
                        .publish(channel(&self.prefix, &u.team), msg)
                        .await?;
                }
            }
            pipeline.all::<Vec<fred::types::Value>>().await
        };
        match tokio::time::timeout(self.timeout, queue).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RedisError::Write(e.to_string())),
            Err(_) => Err(RedisError::Timeout(self.timeout)),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }
}

/// Reads back what the calculators wrote: `marketlane demo` prints live values with it and
/// checks them against ClickHouse.
pub struct RedisReader {
    client: Client,
    prefix: String,
}

impl RedisReader {
    /// Connects (waiting up to 10 s) as `config`'s user.
    pub async fn connect(config: &RedisConfig) -> Result<Self, RedisError> {
        let mut c = Config::from_url(&config.url).map_err(|e| RedisError::Config(e.to_string()))?;
        if !config.user.is_empty() {
            c.username = Some(config.user.clone());
        }
        if !config.password.is_empty() {
            c.password = Some(config.password.clone());
        }
        let client = Builder::from_config(c)
            .with_connection_config(|cc| cc.auto_client_setname = false)
            .build()
            .map_err(|e| RedisError::Config(e.to_string()))?;
        match tokio::time::timeout(Duration::from_secs(10), client.init()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(RedisError::Write(e.to_string())),
            Err(_) => return Err(RedisError::Timeout(Duration::from_secs(10))),
        }
        Ok(Self {
            client,
            prefix: config.key_prefix.clone(),
        })
    }

    /// Every key under the prefix (SCAN, not KEYS: it never blocks the server).
    pub async fn keys(&self) -> Result<Vec<String>, RedisError> {
        use futures_util::TryStreamExt;
        let keys: Vec<fred::types::Key> = self
            .client
            .scan_buffered(format!("{}:*", self.prefix), Some(1_000), None)
            .try_collect()
            .await
            .map_err(|e| RedisError::Write(e.to_string()))?;
        let mut out: Vec<String> = keys
            .iter()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The hash of one value (empty when absent).
    pub async fn value(
        &self,
        team: &str,
        indicator: &str,
        symbol: &str,
    ) -> Result<std::collections::HashMap<String, String>, RedisError> {
        self.client
            .hgetall(key(&self.prefix, team, indicator, symbol))
            .await
            .map_err(|e| RedisError::Write(e.to_string()))
    }
}
