//! One simulator and one daemon ([`Lane`]): what the single-pod fault rows ask of them, and
//! the clean-up of everything a lane created outside its run directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use fred::prelude::*;
use marketlane_protocol::category::TICK;
use serde_json::Value;

use crate::clickhouse::{clickhouse, tick_time_ns};
use crate::config::{Calculators, DaemonConfig};
use crate::daemon::Daemon;
use crate::kafka::{delete_topics, kafka_rows};
use crate::reconcile::{Reconciliation, reconcile_ticks};
use crate::redis::{redis_client, redis_hash};
use crate::run_dir;
use crate::sim::{Sim, SimBuilder};

/// Where a recovery is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Kafka,
    ClickHouse,
    Redis,
}

/// Redis against ClickHouse after the lane settled: for every symbol, the calculator's
/// `as_of` is the symbol's last stored trade and its trade count is the stored trades of the
/// window.
#[derive(Debug, Clone, Default)]
pub struct RedisCheck {
    pub symbols: usize,
    pub current: usize,
    /// `symbol: what differs`.
    pub stale: Vec<String>,
}

/// One simulator and one daemon (single-pod rows of the failure matrix).
pub struct Lane {
    pub dir: PathBuf,
    pub sim: Sim,
    pub daemon: Daemon,
}

impl Lane {
    /// Spawns the simulator, then the daemon from `configure(DaemonConfig::new(..))`.
    pub fn start(
        name: &str,
        sim: SimBuilder,
        configure: impl FnOnce(DaemonConfig) -> DaemonConfig,
    ) -> anyhow::Result<Self> {
        let dir = run_dir(name);
        let sim = sim.spawn(&dir)?;
        let config = configure(DaemonConfig::new(&sim.gateway_url(), &dir));
        let daemon = Daemon::spawn(config, &dir)?;
        Ok(Self { dir, sim, daemon })
    }

    pub fn db(&self) -> &str {
        &self.daemon.config.database
    }

    pub fn tick_topic(&self) -> String {
        format!("{}{TICK}", self.daemon.config.kafka_prefix)
    }

    pub fn topic(&self, category: &str) -> String {
        format!("{}{category}", self.daemon.config.kafka_prefix)
    }

    /// Tick rows in Kafka so far.
    pub fn kafka_ticks(&self) -> Vec<Value> {
        kafka_rows(&self.tick_topic())
    }

    async fn tick_time_ns(&self) -> anyhow::Result<&'static str> {
        tick_time_ns(self.db()).await
    }

    /// Symbols with stored trades, and how many each (`FINAL`).
    pub async fn stored_per_symbol(&self) -> BTreeMap<String, u64> {
        let Ok(text) = clickhouse(&format!(
            "SELECT symbol_identifier, count() FROM {}.{TICK} FINAL GROUP BY symbol_identifier",
            self.db()
        ))
        .await
        else {
            return BTreeMap::new();
        };
        text.lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(s, n)| (s.to_string(), n.parse().unwrap_or(0)))
            .collect()
    }

    /// How many configured symbols trade: a quiet one (`--quiet-symbol`) never does, so it is
    /// never stored and has no indicator.
    pub fn trading_symbols(&self) -> usize {
        self.daemon
            .config
            .symbols
            .iter()
            .filter(|s| !self.sim.quiet.contains(&s.symbol))
            .count()
    }

    /// Waits until every trading symbol has `per_symbol` trades in ClickHouse (and, with
    /// calculators, a value in Redis).
    pub async fn wait_streaming(&self, per_symbol: u64, timeout: Duration) -> anyhow::Result<()> {
        let want = self.trading_symbols();
        let until = Instant::now() + timeout;
        loop {
            let stored = self.stored_per_symbol().await;
            let enough = stored.len() >= want && stored.values().all(|n| *n >= per_symbol);
            let redis = match &self.daemon.config.calculators {
                None => true,
                Some(c) => {
                    let mut all = enough;
                    for s in stored.keys() {
                        all &= !redis_hash(&c.key(Calculators::TRADE_COUNT, s))
                            .await
                            .is_empty();
                    }
                    all
                }
            };
            if enough && redis {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!(
                    "not streaming after {timeout:?}: stored {stored:?}; logs in {}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Polls `sink` until a trade with event time after `after_ms` is there; the seconds from
    /// `since` until then (`None`: not within `timeout`).
    pub async fn first_after(
        &self,
        sink: Sink,
        after_ms: i64,
        since: Instant,
        timeout: Duration,
    ) -> Option<f64> {
        let after_ns = after_ms.saturating_mul(1_000_000);
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            let seen = match sink {
                Sink::Kafka => self
                    .kafka_ticks()
                    .iter()
                    .any(|r| r["tick_time"].as_i64().is_some_and(|t| t > after_ns)),
                Sink::ClickHouse => match self.tick_time_ns().await {
                    Ok(t) => clickhouse(&format!(
                        "SELECT count() FROM {}.{TICK} WHERE {t} > {after_ns}",
                        self.db()
                    ))
                    .await
                    .is_ok_and(|c| c.trim().parse::<u64>().unwrap_or(0) > 0),
                    Err(_) => false,
                },
                Sink::Redis => {
                    let mut any = false;
                    if let Some(c) = &self.daemon.config.calculators {
                        for s in self.stored_per_symbol().await.keys() {
                            let h = redis_hash(&c.key(Calculators::TRADE_COUNT, s)).await;
                            any |= h
                                .get("as_of")
                                .and_then(|v| v.parse::<i64>().ok())
                                .is_some_and(|t| t > after_ns);
                        }
                    }
                    any
                }
            };
            if seen {
                return Some(since.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }

    /// Compares the ledger file with the tick table. Call after [`Sim::stop`] (the ledger is
    /// complete then). Trades whose event time falls in one of `gaps` (ms, inclusive) may be
    /// missing; every other one must be stored. Waits up to `settle` for the writers to catch
    /// up before it reports.
    pub async fn reconcile(
        &self,
        gaps: &[(i64, i64)],
        settle: Duration,
    ) -> anyhow::Result<Reconciliation> {
        let trades = self.sim.ledger_trades()?;
        reconcile_ticks(self.db(), &self.tick_topic(), &trades, gaps, settle).await
    }

    /// Waits up to `timeout` until Redis is current for every stored symbol (see
    /// [`RedisCheck`]); the last comparison.
    pub async fn redis_current(&self, timeout: Duration) -> anyhow::Result<RedisCheck> {
        let Some(calc) = self.daemon.config.calculators.clone() else {
            bail!("this lane runs no calculators");
        };
        let until = Instant::now() + timeout;
        loop {
            let check = self.redis_check_once(&calc).await?;
            if check.stale.is_empty() || Instant::now() >= until {
                return Ok(check);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn redis_check_once(&self, calc: &Calculators) -> anyhow::Result<RedisCheck> {
        let t = self.tick_time_ns().await?;
        let db = self.db();
        let last = clickhouse(&format!(
            "SELECT symbol_identifier, max({t}) FROM {db}.{TICK} FINAL GROUP BY symbol_identifier"
        ))
        .await?;
        let window_ns = (calc.window_secs * 1e9) as i64;
        let mut check = RedisCheck::default();
        for line in last.lines() {
            let Some((symbol, max)) = line.split_once('\t') else {
                continue;
            };
            let max: i64 = max.parse()?;
            check.symbols += 1;
            let in_window = clickhouse(&format!(
                "SELECT count() FROM {db}.{TICK} FINAL WHERE symbol_identifier = '{symbol}' AND {t} > {} AND {t} <= {max}",
                max - window_ns
            ))
            .await?;
            let want_count: f64 = in_window.trim().parse()?;
            let h = redis_hash(&calc.key(Calculators::TRADE_COUNT, symbol)).await;
            let as_of = h.get("as_of").and_then(|v| v.parse::<i64>().ok());
            let value = h.get("value").and_then(|v| v.parse::<f64>().ok());
            if as_of == Some(max) && value == Some(want_count) {
                check.current += 1;
            } else {
                check.stale.push(format!(
                    "{symbol}: redis as_of={as_of:?} count={value:?}, clickhouse last={max} count={want_count}"
                ));
            }
        }
        Ok(check)
    }

    /// Stops the daemon (SIGTERM) and the simulator, then drops the database, the offsets
    /// database, the topics and the Redis keys of this lane.
    pub async fn cleanup(mut self) {
        self.daemon.sigterm(Duration::from_secs(40));
        self.sim.stop();
        drop_lane_data(&self.daemon.config).await;
    }
}

/// Drops everything a lane of `config` created outside its run directory.
pub async fn drop_lane_data(config: &DaemonConfig) {
    let db = &config.database;
    for d in [db.clone(), format!("{db}_state")] {
        let sql = format!("DROP DATABASE IF EXISTS {d}");
        match tokio::time::timeout(Duration::from_secs(60), clickhouse(&sql)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("cannot drop database {d}: {e:#}"),
            Err(_) => eprintln!("cannot drop database {d}: no answer within 60 s"),
        }
    }
    match tokio::time::timeout(Duration::from_secs(60), delete_topics(&config.kafka_prefix)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("cannot delete the topics {}*: {e:#}", config.kafka_prefix),
        Err(_) => eprintln!(
            "cannot delete the topics {}*: timed out",
            config.kafka_prefix
        ),
    }
    if let Some(c) = &config.calculators
        && let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(10), redis_client()).await
    {
        let keys: Vec<String> = client
            .custom(
                fred::types::CustomCommand::new_static("KEYS", None, false),
                vec![format!("{}:*", c.key_prefix)],
            )
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: i64 = client.del(keys).await.unwrap_or(0);
        }
        let _ = client.quit().await;
    }
}
