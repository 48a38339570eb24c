//! Configuration of the rolling calculators: Redis, coalescing, warm restart, and one list of
//! indicator specs per team. `CalculatorConfig::compile` validates it into [`Spec`]s; every
//! error names the spec it is about (`calculators.teams[0].specs[1] (alpha/vwap_5m)`).

use std::time::Duration;

use marketlane_protocol::category::{L2, TICK};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, humantime_secs};

/// Default flush cadence: 10–20 ms keeps event → Redis well under 100 ms while a key
/// changing on every trade is still written about 65 times a second, not per trade.
pub const DEFAULT_COALESCE_INTERVAL: Duration = Duration::from_millis(15);

/// The range `coalesce_interval` may take: below 1 ms a flush per key per row is what it
/// costs; above 1 s the values are too stale for the teams.
pub const COALESCE_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(1);

/// The `[calculators]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalculatorConfig {
    pub redis: RedisConfig,
    /// Consumer group of every calculator pod: they split the partitions of the source topics,
    /// and its committed offsets mark where the last owner of a partition left off.
    pub group_id: String,
    /// A pod unheard for this long loses its partitions to the others (a restarted pod that
    /// rejoins within it gets them back without a rebalance: static membership).
    #[serde(with = "humantime_secs")]
    pub session_timeout: Duration,
    /// Per-symbol workers; a symbol always goes to the same worker (hash of the symbol).
    pub workers: usize,
    /// Row batches a worker may have queued before the consumer stops polling Kafka.
    pub max_queued_batches: usize,
    /// Flush cadence of a worker: the values a flush computes are written to Redis at most once
    /// per key per interval (the values in between are coalesced). It bounds the latency a
    /// value adds on its way to Redis; 1 ms to 1 s, 15 ms by default.
    #[serde(with = "humantime_secs")]
    pub coalesce_interval: Duration,
    /// Expiry of every key (the seed: 60 minutes). Redis 7.0 expires whole keys only.
    #[serde(with = "humantime_secs")]
    pub key_ttl: Duration,
    /// Also PUBLISH every update on the team's channel `<prefix>:<team>:updates`.
    pub publish: bool,
    /// How far back in Kafka (message time) a (re)started calculator reads to refill its
    /// windows. At least the longest time window; tick windows need it to cover N ticks of
    /// the slowest symbol.
    #[serde(with = "humantime_secs")]
    pub warm_restart_lookback: Duration,
    /// Offsets are committed (after Redis has every value they produced) this often.
    #[serde(with = "humantime_secs")]
    pub checkpoint_interval: Duration,
    /// A held partition that delivers nothing for this long while Kafka holds rows past its
    /// position counts as stalled (checked at each checkpoint): it is resumed and sought back
    /// to its position. librdkafka can lose a resume that races its own assignment work
    /// (confluentinc/librdkafka#5591), which leaves a partition paused for good and silent.
    #[serde(with = "humantime_secs")]
    pub stall_after: Duration,
    pub teams: Vec<TeamConfig>,
}

impl Default for CalculatorConfig {
    fn default() -> Self {
        Self {
            redis: RedisConfig::default(),
            group_id: "marketlane-calculators".into(),
            session_timeout: Duration::from_secs(10),
            workers: 4,
            max_queued_batches: 64,
            coalesce_interval: DEFAULT_COALESCE_INTERVAL,
            key_ttl: Duration::from_secs(3600),
            publish: false,
            warm_restart_lookback: Duration::from_secs(15 * 60),
            checkpoint_interval: Duration::from_secs(5),
            stall_after: Duration::from_secs(30),
            teams: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    /// The daemon's own ACL user (writes `<prefix>:*`, publishes `<prefix>:*`).
    pub user: String,
    /// Its password (set it through `MARKETLANE__CALCULATORS__REDIS__PASSWORD`).
    pub password: String,
    /// First part of every key and channel.
    pub key_prefix: String,
    /// One pipelined write gets this long before it counts as failed and is retried.
    #[serde(with = "humantime_secs")]
    pub write_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            user: "marketlane".into(),
            password: String::new(),
            key_prefix: "ml".into(),
            write_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    /// Lowercase letters, digits, `_` and `-`: it becomes part of keys, channels and the ACL user.
    pub name: String,
    /// SHA-256 (hex) of the team's Redis password; `marketlane redis-acl` sets it with `#<hash>`,
    /// so the config never holds the password itself.
    #[serde(default)]
    pub password_sha256: String,
    #[serde(default)]
    pub specs: Vec<SpecConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecConfig {
    /// Output name: the `<indicator>` of the Redis key, e.g. `vwap_5m`.
    pub name: String,
    /// vwap, sma, ema, realized_volatility, trade_count, volume (ticks); mid, spread,
    /// book_imbalance (level 2).
    pub kind: String,
    /// Source category: tick_market_data or l2_market_data.
    pub source: String,
    /// Exact symbols or globs (`*`, `?`), e.g. `["AAPL", "CL*"]`.
    pub symbols: Vec<String>,
    /// Time window in seconds (event time) …
    #[serde(default)]
    pub window_secs: Option<f64>,
    /// … or the last N trades.
    #[serde(default)]
    pub window_ticks: Option<u32>,
    /// book_imbalance: levels 1..=N of each side.
    #[serde(default)]
    pub levels: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Vwap,
    Sma,
    Ema,
    RealizedVolatility,
    TradeCount,
    Volume,
    Mid,
    Spread,
    BookImbalance,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "vwap" => Self::Vwap,
            "sma" => Self::Sma,
            "ema" => Self::Ema,
            "realized_volatility" => Self::RealizedVolatility,
            "trade_count" => Self::TradeCount,
            "volume" => Self::Volume,
            "mid" => Self::Mid,
            "spread" => Self::Spread,
            "book_imbalance" => Self::BookImbalance,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Vwap => "vwap",
            Self::Sma => "sma",
            Self::Ema => "ema",
            Self::RealizedVolatility => "realized_volatility",
            Self::TradeCount => "trade_count",
            Self::Volume => "volume",
            Self::Mid => "mid",
            Self::Spread => "spread",
            Self::BookImbalance => "book_imbalance",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Self::Mid | Self::Spread | Self::BookImbalance => L2,
            _ => TICK,
        }
    }

    /// `indicator_type` of the indicators_market_data rows.
    pub fn indicator_type(self) -> &'static str {
        match self {
            Self::Vwap | Self::Sma | Self::Ema => "moving_average",
            Self::RealizedVolatility => "volatility",
            Self::TradeCount | Self::Volume => "window_statistic",
            Self::Mid | Self::Spread | Self::BookImbalance => "book_statistic",
        }
    }
}

/// Which rows an indicator sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Trades with `as_of - ns < tick_time <= as_of` (lower bound exclusive).
    Time(i64),
    /// The last N trades by (tick_time, row_id).
    Ticks(usize),
    /// The latest state of the book.
    Book,
}

impl Window {
    /// The `window` field of the Redis hash: `300s`, `20ticks`, `book`.
    pub fn label(self) -> String {
        match self {
            Self::Time(ns) => {
                let s = ns as f64 / 1e9;
                format!("{s}s")
            }
            Self::Ticks(n) => format!("{n}ticks"),
            Self::Book => "book".into(),
        }
    }
}

/// A validated spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub team: String,
    pub name: String,
    pub kind: Kind,
    pub window: Window,
    pub levels: usize,
    pub source: &'static str,
    pub symbols: Vec<String>,
}

impl Spec {
    pub fn matches(&self, symbol: &str) -> bool {
        self.symbols.iter().any(|g| glob_match(g, symbol))
    }
}

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Names that go into keys, channels and ACL rules: no glob or separator characters.
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl CalculatorConfig {
    /// Validates the section and returns the specs of every team.
    pub fn compile(&self) -> Result<Vec<Spec>, ConfigError> {
        let r = &self.redis;
        if !r.url.starts_with("redis://") && !r.url.starts_with("rediss://") {
            return Err(bad(
                "calculators.redis.url",
                format!("{:?} is not a redis:// URL", r.url),
            ));
        }
        if !is_plain_name(&r.key_prefix) {
            return Err(bad(
                "calculators.redis.key_prefix",
                "lowercase letters, digits, _ and - only",
            ));
        }
        if r.user.trim().is_empty() {
            return Err(bad("calculators.redis.user", "empty"));
        }
        if self.workers == 0 {
            return Err(bad("calculators.workers", "must be at least 1"));
        }
        if self.max_queued_batches == 0 {
            return Err(bad("calculators.max_queued_batches", "must be at least 1"));
        }
        if !COALESCE_INTERVAL_RANGE.contains(&self.coalesce_interval) {
            return Err(bad(
                "calculators.coalesce_interval",
                format!(
                    "{:?} is outside 1 ms ..= 1 s (15 ms by default)",
                    self.coalesce_interval
                ),
            ));
        }
        if self.key_ttl < Duration::from_secs(1) {
            return Err(bad("calculators.key_ttl", "must be at least 1 s"));
        }
        if self.checkpoint_interval.is_zero() {
            return Err(bad("calculators.checkpoint_interval", "must be positive"));
        }
        let mut specs = Vec::new();
        let mut teams = std::collections::HashSet::new();
        for (ti, team) in self.teams.iter().enumerate() {
            let tkey = format!("calculators.teams[{ti}]");
            if !is_plain_name(&team.name) {
                return Err(bad(
                    &format!("{tkey}.name"),
                    format!("{:?}: lowercase letters, digits, _ and - only", team.name),
                ));
            }
            if !teams.insert(team.name.clone()) {
                return Err(bad(
                    &format!("{tkey}.name"),
                    format!("team {} is listed twice", team.name),
                ));
            }
            if !team.password_sha256.is_empty()
                && (team.password_sha256.len() != 64
                    || !team.password_sha256.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(bad(
                    &format!("{tkey}.password_sha256"),
                    "must be 64 hex digits (sha256 of the password)",
                ));
            }
            let mut names = std::collections::HashSet::new();
            for (si, s) in team.specs.iter().enumerate() {
                let key = format!("{tkey}.specs[{si}] ({}/{})", team.name, s.name);
                specs.push(compile_spec(&team.name, s, &key)?);
                if !names.insert(s.name.clone()) {
                    return Err(bad(&key, "output name used twice in this team"));
                }
            }
        }
        Ok(specs)
    }

    /// The longest time window of any spec (the minimum warm-restart look-back).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let specs = self.compile()?;
        let longest = specs
            .iter()
            .filter_map(|s| match s.window {
                Window::Time(ns) => Some(ns),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        if (self.warm_restart_lookback.as_nanos() as i64) < longest {
            return Err(bad(
                "calculators.warm_restart_lookback",
                format!(
                    "{:?} is shorter than the longest time window ({} s)",
                    self.warm_restart_lookback,
                    longest as f64 / 1e9
                ),
            ));
        }
        if self.stall_after < Duration::from_secs(1) {
            return Err(bad(
                "calculators.stall_after",
                format!("{:?} is under 1 s", self.stall_after),
            ));
        }
        // The broker's group.min/max.session.timeout.ms defaults (6 s to 30 min).
        if !(Duration::from_secs(6)..=Duration::from_secs(1800)).contains(&self.session_timeout) {
            return Err(bad(
                "calculators.session_timeout",
                format!("{:?} is not within 6 s and 30 min", self.session_timeout),
            ));
        }
        Ok(())
    }
}

fn compile_spec(team: &str, s: &SpecConfig, key: &str) -> Result<Spec, ConfigError> {
    if !is_plain_name(&s.name) {
        return Err(bad(
            key,
            format!("name {:?}: lowercase letters, digits, _ and - only", s.name),
        ));
    }
    let kind = Kind::parse(&s.kind).ok_or_else(|| {
        bad(
            key,
            format!(
                "unknown kind {:?} (vwap, sma, ema, realized_volatility, trade_count, volume, \
                 mid, spread, book_imbalance)",
                s.kind
            ),
        )
    })?;
    if s.source != TICK && s.source != L2 {
        return Err(bad(
            key,
            format!("unknown source category {:?} ({TICK} or {L2})", s.source),
        ));
    }
    if s.source != kind.source() {
        return Err(bad(
            key,
            format!("{} reads {}, not {}", s.kind, kind.source(), s.source),
        ));
    }
    if s.symbols.is_empty() || s.symbols.iter().any(|g| g.trim().is_empty()) {
        return Err(bad(key, "symbols: at least one non-empty symbol or glob"));
    }
    let window = match (kind.source(), s.window_secs, s.window_ticks) {
        (L2, None, None) => Window::Book,
        (L2, _, _) => {
            return Err(bad(
                key,
                format!("{} reads the latest book and takes no window", s.kind),
            ));
        }
        (_, Some(_), Some(_)) => {
            return Err(bad(key, "window_secs and window_ticks are exclusive"));
        }
        (_, None, None) => return Err(bad(key, "needs window_secs or window_ticks")),
        (_, Some(secs), None) => {
            if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
                return Err(bad(
                    key,
                    format!("window_secs {secs} must be in (0, 86400]"),
                ));
            }
            if kind == Kind::Ema {
                return Err(bad(key, "ema needs window_ticks (alpha = 2 / (N + 1))"));
            }
            Window::Time((secs * 1e9).round() as i64)
        }
        (_, None, Some(n)) => {
            if n == 0 || n > 100_000 {
                return Err(bad(key, format!("window_ticks {n} must be in 1..=100000")));
            }
            Window::Ticks(n as usize)
        }
    };
    let levels = match (kind, s.levels) {
        (Kind::BookImbalance, Some(n)) if (1..=100).contains(&n) => n as usize,
        (Kind::BookImbalance, Some(n)) => {
            return Err(bad(key, format!("levels {n} must be in 1..=100")));
        }
        (Kind::BookImbalance, None) => return Err(bad(key, "book_imbalance needs levels")),
        (_, Some(_)) => return Err(bad(key, "levels is for book_imbalance only")),
        (_, None) => 1,
    };
    Ok(Spec {
        team: team.to_string(),
        name: s.name.clone(),
        kind,
        window,
        levels,
        source: kind.source(),
        symbols: s.symbols.clone(),
    })
}

/// `*` matches any run of characters, `?` one character; everything else literally.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, source: &str) -> SpecConfig {
        SpecConfig {
            name: "x".into(),
            kind: kind.into(),
            source: source.into(),
            symbols: vec!["AAPL".into()],
            window_secs: Some(60.0),
            window_ticks: None,
            levels: None,
        }
    }

    fn config(s: SpecConfig) -> CalculatorConfig {
        CalculatorConfig {
            teams: vec![TeamConfig {
                name: "alpha".into(),
                password_sha256: String::new(),
                specs: vec![s],
            }],
            ..Default::default()
        }
    }

    fn err(s: SpecConfig) -> ConfigError {
        config(s).validate().unwrap_err()
    }

    #[test]
    fn globs() {
        assert!(glob_match("CL*", "CLZ6"));
        assert!(glob_match("*", "AAPL"));
        assert!(glob_match("A?PL", "AAPL"));
        assert!(!glob_match("CL*", "NGZ6"));
        assert!(!glob_match("AAPL", "AAPLX"));
        assert!(glob_match("*Z6", "CLZ6"));
    }

    #[test]
    fn bad_specs_name_the_spec() {
        let e = err(spec("macd", TICK));
        assert_eq!(e.key, "calculators.teams[0].specs[0] (alpha/x)");
        assert!(e.message.contains("unknown kind \"macd\""), "{e}");
        let e = err(spec("vwap", "trades"));
        assert!(e.message.contains("unknown source category"), "{e}");
        let e = err(spec("mid", TICK));
        assert!(e.message.contains("reads l2_market_data"), "{e}");
        let mut s = spec("vwap", TICK);
        s.window_secs = Some(-1.0);
        assert!(err(s).message.contains("window_secs -1"));
        let mut s = spec("sma", TICK);
        s.window_ticks = Some(5);
        assert!(err(s).message.contains("exclusive"));
        let mut s = spec("sma", TICK);
        s.window_secs = None;
        assert!(err(s).message.contains("needs window"));
        let mut s = spec("sma", TICK);
        s.window_secs = None;
        s.window_ticks = Some(0);
        assert!(err(s).message.contains("window_ticks 0"));
        assert!(
            err(spec("ema", TICK))
                .message
                .contains("ema needs window_ticks")
        );
        let mut s = spec("book_imbalance", L2);
        s.window_secs = None;
        assert!(err(s).message.contains("needs levels"));
        let mut s = spec("vwap", TICK);
        s.window_secs = Some(7200.0);
        assert_eq!(err(s).key, "calculators.warm_restart_lookback");
    }

    #[test]
    fn good_specs_compile() {
        let mut s = spec("book_imbalance", L2);
        s.window_secs = None;
        s.levels = Some(3);
        let specs = config(s).compile().unwrap();
        assert_eq!(specs[0].window, Window::Book);
        assert_eq!(specs[0].levels, 3);
        let specs = config(spec("vwap", TICK)).compile().unwrap();
        assert_eq!(specs[0].window, Window::Time(60_000_000_000));
        assert_eq!(specs[0].window.label(), "60s");
    }

    #[test]
    fn coalesce_interval_is_bounded() {
        let mut c = config(spec("vwap", TICK));
        assert_eq!(c.coalesce_interval, Duration::from_millis(15));
        for ok in [1, 10, 20, 1000] {
            c.coalesce_interval = Duration::from_millis(ok);
            c.validate().unwrap();
        }
        for bad in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_millis(1001),
        ] {
            c.coalesce_interval = bad;
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, "calculators.coalesce_interval");
            assert!(e.message.contains("outside 1 ms"), "{e}");
        }
    }

    #[test]
    fn team_names_are_checked() {
        let mut c = config(spec("vwap", TICK));
        c.teams[0].name = "Alpha*".into();
        assert_eq!(c.validate().unwrap_err().key, "calculators.teams[0].name");
    }
}
