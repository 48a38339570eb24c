//! Typed configuration of the actors. Every struct has defaults, rejects unknown keys (the
//! error names the key), and a `validate` that says which value is wrong.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// What kind of instrument a configured symbol is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecType {
    /// A stock, routed via SMART unless an exchange is given.
    Stock,
    /// A future by root symbol and exchange; the front month is selected.
    Future,
}

/// A symbol to stream, as ops write it in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymbolConfig {
    pub symbol: String,
    #[serde(default = "default_sec_type")]
    pub sec_type: SecType,
    /// SMART for stocks by default; the listing exchange for futures (NYMEX, COMEX, CBOT, CME).
    #[serde(default)]
    pub exchange: Option<String>,
    /// Also stream the BookTrader ladder (needs a level-2 subscription at IB).
    #[serde(default)]
    pub depth: bool,
}

fn default_sec_type() -> SecType {
    SecType::Stock
}

/// The IB Client Portal gateway this pod talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IbConfig {
    /// Base URL of the gateway, e.g. `https://localhost:5000` (the REST API is under `/v1/api`).
    pub gateway_url: String,
    /// Accept the gateway's self-signed certificate (the gateway only listens on localhost).
    pub accept_invalid_certs: bool,
    /// `/tickle` period; IB wants one at least every few minutes, we use 60 s.
    #[serde(with = "humantime_secs")]
    pub tickle_interval: Duration,
    /// The server sends `hb` every 10 s; two missed periods mean a dead socket.
    #[serde(with = "humantime_secs")]
    pub heartbeat_timeout: Duration,
    /// Client `tic` period (IB: at least every minute).
    #[serde(with = "humantime_secs")]
    pub tic_interval: Duration,
    /// Re-send every `smd` before IB silently ends it (10–15 min).
    #[serde(with = "humantime_secs")]
    pub resubscribe_interval: Duration,
    /// Request timeout of REST calls.
    #[serde(with = "humantime_secs")]
    pub request_timeout: Duration,
    /// Market-data fields requested with every `smd`.
    pub fields: Vec<String>,
    pub symbols: Vec<SymbolConfig>,
    /// A subscribed symbol without a frame for this long is flagged silent and re-requested.
    #[serde(with = "humantime_secs")]
    pub silent_after: Duration,
    /// How long to wait after a 429 before trying again (IB's penalty box: 10 minutes).
    #[serde(with = "humantime_secs")]
    pub penalty_box: Duration,
    /// Re-resolve contracts this often, to roll futures before their last trading day.
    #[serde(with = "humantime_secs")]
    pub contract_refresh: Duration,
    /// Start and supervise the gateway as a child process (e.g. `["bin/run.sh", "root/conf.yaml"]`).
    pub gateway_command: Option<Vec<String>>,
    /// Run when the gateway has no brokerage session (an ibeam-style login helper); its
    /// outcome is recorded in the session state. At most once per `login_retry`.
    pub login_command: Option<Vec<String>>,
    #[serde(with = "humantime_secs")]
    pub login_retry: Duration,
    /// Append every raw websocket frame with its receive time to this file (`marketlane
    /// replay` reads it).
    pub record_path: Option<std::path::PathBuf>,
    /// The IB user this pod's gateway logs in as (given to `login_command` as `IB_USERNAME`).
    /// IB allows one brokerage session per user, so every connector pod needs its own.
    pub username: Option<String>,
    /// One IB user per StatefulSet ordinal (`marketlane-0` takes the first); sets `username`.
    pub usernames: Vec<String>,
    /// After `ssodh/init` or a re-authentication, how long to wait for `authenticated:true`
    /// before the next rung of the recovery ladder. IB brings the brokerage session up
    /// asynchronously, 30–90 s after the call.
    #[serde(with = "humantime_secs")]
    pub auth_wait: Duration,
    /// At most one `reauthenticate`/`ssodh/init` per this interval on one SSO session: calling
    /// again while IB is still starting the brokerage session starts it over.
    #[serde(with = "humantime_secs")]
    pub reauth_min_interval: Duration,
    /// Re-authentications (each waited out for `auth_wait`) before the gateway is restarted
    /// and the login command runs (ibeam: 3).
    pub reauth_attempts: u32,
    /// A supervised gateway whose port refuses connections this long is restarted. HTTP
    /// 500/503 and unreadable answers are IB's maintenance, never a reason to restart.
    #[serde(with = "humantime_secs")]
    pub gateway_dead_after: Duration,
    /// `compete` of `ssodh/init` (and `force` of `reauthenticate`): `true` kicks another
    /// session of the same user (a person's TWS or portal login). Off by default.
    pub compete: bool,
    /// PEM file with the certificate (or its CA) the gateway serves; when set, REST and the
    /// websocket verify the gateway against it instead of `accept_invalid_certs`.
    pub ca_file: Option<PathBuf>,
    /// The built-in unattended login (`[ib.login]`), run instead of `login_command`.
    pub login: Option<crate::ib_login::LoginConfig>,
}

impl Default for IbConfig {
    fn default() -> Self {
        Self {
            gateway_url: "https://localhost:5000".into(),
            accept_invalid_certs: true,
            tickle_interval: Duration::from_secs(60),
            heartbeat_timeout: Duration::from_secs(20),
            tic_interval: Duration::from_secs(50),
            resubscribe_interval: Duration::from_secs(8 * 60),
            request_timeout: Duration::from_secs(10),
            fields: [
                "31", "55", "70", "71", "82", "83", "84", "85", "86", "87", "88", "6509", "7059",
                "7295", "7296", "7635", "7741", "7762",
            ]
            .map(String::from)
            .to_vec(),
            symbols: Vec::new(),
            silent_after: Duration::from_secs(120),
            penalty_box: Duration::from_secs(600),
            contract_refresh: Duration::from_secs(6 * 3600),
            gateway_command: None,
            login_command: None,
            login_retry: Duration::from_secs(300),
            record_path: None,
            username: None,
            usernames: Vec::new(),
            auth_wait: Duration::from_secs(120),
            reauth_min_interval: Duration::from_secs(60),
            reauth_attempts: 3,
            gateway_dead_after: Duration::from_secs(60),
            compete: false,
            ca_file: None,
            login: None,
        }
    }
}

impl IbConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.gateway_url.starts_with("http://") || self.gateway_url.starts_with("https://")) {
            return Err(bad(
                "ib.gateway_url",
                format!("{:?} is not an http(s) URL", self.gateway_url),
            ));
        }
        if self.tickle_interval < Duration::from_secs(1) {
            return Err(bad(
                "ib.tickle_interval",
                "IB allows one /tickle per second",
            ));
        }
        if self.resubscribe_interval >= Duration::from_secs(9 * 60) {
            return Err(bad(
                "ib.resubscribe_interval",
                "must be under 9 minutes: IB ends smd subscriptions after 10 minutes",
            ));
        }
        if self.heartbeat_timeout < Duration::from_millis(100) {
            return Err(bad("ib.heartbeat_timeout", "must be at least 0.1 s"));
        }
        if self.auth_wait < Duration::from_secs(1) {
            return Err(bad(
                "ib.auth_wait",
                "must be at least 1 s (IB takes 30-90 s to start a brokerage session)",
            ));
        }
        if self.reauth_min_interval < Duration::from_secs(1) {
            return Err(bad("ib.reauth_min_interval", "must be at least 1 s"));
        }
        if self.reauth_attempts == 0 {
            return Err(bad("ib.reauth_attempts", "must be at least 1"));
        }
        if self.gateway_dead_after < Duration::from_secs(1) {
            return Err(bad("ib.gateway_dead_after", "must be at least 1 s"));
        }
        if let Some(f) = &self.ca_file
            && !f.is_file()
        {
            return Err(bad(
                "ib.ca_file",
                format!("{} is not a readable file", f.display()),
            ));
        }
        for (key, cmd) in [
            ("ib.gateway_command", &self.gateway_command),
            ("ib.login_command", &self.login_command),
        ] {
            if cmd
                .as_ref()
                .is_some_and(|c| c.is_empty() || c[0].trim().is_empty())
            {
                return Err(bad(key, "an empty command; leave it out instead"));
            }
        }
        if let Some(login) = &self.login {
            if self.login_command.is_some() {
                return Err(bad(
                    "ib.login",
                    "both [ib.login] and ib.login_command are set; keep one",
                ));
            }
            login.validate()?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.symbols.iter().enumerate() {
            if s.symbol.trim().is_empty() {
                return Err(bad(&format!("ib.symbols[{i}].symbol"), "empty symbol"));
            }
            if !seen.insert(s.symbol.clone()) {
                return Err(bad(
                    &format!("ib.symbols[{i}].symbol"),
                    format!("{} is listed twice", s.symbol),
                ));
            }
            if s.sec_type == SecType::Future && s.exchange.is_none() {
                return Err(bad(
                    &format!("ib.symbols[{i}].exchange"),
                    format!("future {} needs its exchange (e.g. NYMEX)", s.symbol),
                ));
            }
        }
        Ok(())
    }

    /// Sets `username` from `usernames` by the ordinal that ends `instance` (`marketlane-1` → 1).
    pub fn resolve_username(&mut self, instance: &str) -> Result<(), ConfigError> {
        if self.usernames.is_empty() {
            return Ok(());
        }
        let ordinal = instance
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse::<usize>().ok())
            .ok_or_else(|| {
                bad(
                    "ib.usernames",
                    format!("instance {instance:?} has no StatefulSet ordinal (name-N)"),
                )
            })?;
        let user = self.usernames.get(ordinal).ok_or_else(|| {
            bad(
                "ib.usernames",
                format!(
                    "{} users for ordinal {ordinal} of {instance}: IB allows one session per user",
                    self.usernames.len()
                ),
            )
        })?;
        self.username = Some(user.clone());
        Ok(())
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("{}/v1/api{path}", self.gateway_url.trim_end_matches('/'))
    }

    pub fn websocket_url(&self) -> String {
        let base = self.gateway_url.trim_end_matches('/');
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", base.trim_start_matches("http://"))
        };
        format!("{ws}/v1/api/ws")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// Prepended to every category topic (tests use a fresh prefix each).
    pub topic_prefix: String,
    /// Partitions of each topic the daemon creates (default 6): the most pods of one role
    /// (writers, calculators) that can share a topic's load. It applies when a topic is
    /// created; an existing topic keeps its count. Growing a topic later
    /// (`kafka-topics --alter --partitions`) changes `murmur2(key) % partitions`, so most
    /// symbols move to another partition: their new rows land there while their older rows
    /// stay behind, per-symbol order across the move is lost, and a calculator refilling the
    /// new partition does not see the old rows. Exactly-once into ClickHouse holds (it is per
    /// partition and offset range). Grow it during a pause of the connectors, after which
    /// calculator windows fill again within their length.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Websocket frames whose rows Kafka has not yet acknowledged; past this the connector
    /// stops reading the socket instead of growing memory (backpressure, failure row 7).
    pub max_in_flight_frames: usize,
    /// How long the producer waits to fill a batch (`linger.ms`). 20 ms, not librdkafka's 5:
    /// side by side at 28,000 rows/s it cut the connector's, writer's and calculator's CPU per
    /// row by about 6% and Kafka's by a quarter (fewer, larger produce and fetch requests),
    /// with no change to event → Redis that the run could see.
    pub linger_ms: u32,
    pub compression: String,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl` (librdkafka's
    /// `security.protocol`).
    pub security_protocol: String,
    /// `SCRAM-SHA-512` (default; Strimzi's `scram-sha-512` users), `SCRAM-SHA-256` or `PLAIN`.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    /// `MARKETLANE__KAFKA__SASL_PASSWORD`, or `sasl_password_file` (a mounted secret).
    pub sasl_password: String,
    pub sasl_password_file: Option<std::path::PathBuf>,
    /// CA bundle (PEM) that signed the brokers' certificates (`ssl`, `sasl_ssl`; Strimzi's
    /// `<cluster>-cluster-ca-cert` secret). Absent: the system's roots.
    pub ssl_ca_location: Option<std::path::PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 6,
            replication_factor: 1,
            max_in_flight_frames: 4_096,
            linger_ms: 20,
            compression: "lz4".into(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            sasl_password_file: None,
            ssl_ca_location: None,
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(bad("kafka.bootstrap_servers", "empty"));
        }
        if self.partitions < 1 {
            return Err(bad("kafka.partitions", "must be at least 1"));
        }
        if self.replication_factor < 1 {
            return Err(bad("kafka.replication_factor", "must be at least 1"));
        }
        if self.max_in_flight_frames < 1 {
            return Err(bad("kafka.max_in_flight_frames", "must be at least 1"));
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return Err(bad(
                "kafka.compression",
                format!(
                    "{:?} is not one of none, gzip, snappy, lz4, zstd",
                    self.compression
                ),
            ));
        }
        let protocol = self.security_protocol.as_str();
        if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol) {
            return Err(bad(
                "kafka.security_protocol",
                format!("{protocol:?} is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"),
            ));
        }
        if protocol.starts_with("sasl") {
            if !["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"].contains(&self.sasl_mechanism.as_str())
            {
                return Err(bad(
                    "kafka.sasl_mechanism",
                    format!(
                        "{:?} is not one of SCRAM-SHA-512, SCRAM-SHA-256, PLAIN",
                        self.sasl_mechanism
                    ),
                ));
            }
            if self.sasl_username.trim().is_empty() {
                return Err(bad("kafka.sasl_username", format!("empty with {protocol}")));
            }
            self.sasl_password()?;
        }
        if let Some(ca) = &self.ssl_ca_location
            && !ca.is_file()
        {
            return Err(bad(
                "kafka.ssl_ca_location",
                format!("{} is not a readable file", ca.display()),
            ));
        }
        Ok(())
    }

    /// The SASL password: `sasl_password_file`'s content (one trailing newline dropped) when
    /// set, else `sasl_password`. Never echoed in an error.
    pub fn sasl_password(&self) -> Result<String, ConfigError> {
        let password = match &self.sasl_password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    bad(
                        "kafka.sasl_password_file",
                        format!("{}: {}", path.display(), e.kind()),
                    )
                })?;
                text.strip_suffix('\n').unwrap_or(&text).to_string()
            }
            None => self.sasl_password.clone(),
        };
        if password.is_empty() {
            return Err(bad(
                "kafka.sasl_password",
                "empty: set MARKETLANE__KAFKA__SASL_PASSWORD or kafka.sasl_password_file",
            ));
        }
        Ok(password)
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    pub url: String,
    pub user: String,
    pub password: String,
    pub database: String,
    pub retention_days: u32,
    /// Compression of the writers' inserts.
    pub compression: ClickHouseCompression,
}

/// `clickhouse.compression`: `lz4` (ClickHouse's native blocks) saves bandwidth between
/// hosts and costs CPU on both ends; on loopback it only costs CPU. `auto`, the default, is
/// `none` when the URL's host is a loopback address or `localhost` and `lz4` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClickHouseCompression {
    #[default]
    Auto,
    None,
    Lz4,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            user: "default".into(),
            password: String::new(),
            database: "marketlane".into(),
            retention_days: 3,
            compression: ClickHouseCompression::Auto,
        }
    }
}

impl ClickHouseConfig {
    /// Whether inserts are LZ4-compressed (`compression`, with `auto` resolved by the URL).
    pub fn lz4(&self) -> bool {
        match self.compression {
            ClickHouseCompression::None => false,
            ClickHouseCompression::Lz4 => true,
            ClickHouseCompression::Auto => !self.is_loopback(),
        }
    }

    fn is_loopback(&self) -> bool {
        let rest = self.url.split("://").nth(1).unwrap_or_default();
        let authority = rest.split('/').next().unwrap_or_default();
        // Credentials before `@` are never part of the host.
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        let host = match host_port.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host_port.split(':').next().unwrap_or_default(),
        };
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Accepted `clickhouse.retention_days`: at least a day, at most ten years (beyond that the
/// cutoff date leaves the calendar's range and nothing is gained).
pub const RETENTION_DAYS: std::ops::RangeInclusive<u32> = 1..=3650;

impl ClickHouseConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.starts_with("http://") && !self.url.starts_with("https://") {
            return Err(bad(
                "clickhouse.url",
                // Only the scheme: the rest may hold credentials.
                format!(
                    "scheme {:?} is not http or https",
                    self.url.split("://").next().unwrap_or_default()
                ),
            ));
        }
        let ident =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident(&self.database) {
            return Err(bad(
                "clickhouse.database",
                format!("{:?} must be letters, digits and _", self.database),
            ));
        }
        if !RETENTION_DAYS.contains(&self.retention_days) {
            return Err(bad(
                "clickhouse.retention_days",
                format!(
                    "{} is outside {}..={} (days; the TTL and the partition sweep count in days)",
                    self.retention_days,
                    RETENTION_DAYS.start(),
                    RETENTION_DAYS.end()
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// Categories to write; empty means every category of the schemas.
    pub categories: Vec<String>,
    /// A batch is cut at this many rows, …
    pub batch_rows: usize,
    /// … when it holds this many bytes (encoded rows and quarantine records, and 32 bytes of
    /// bookkeeping per row: a bound for large rows; `batch_rows` level-2 rows take about
    /// 34 MB, so with the defaults a backlog's level-2 batches are cut at the process's bound
    /// below, and its inserts stay large) …
    pub batch_bytes: usize,
    /// … with every other batch of every writer of the process when all of them together hold
    /// this many bytes (what bounds the writers' memory when they catch up on a backlog or
    /// wait for ClickHouse, whatever their topics and partitions; a writer cuts on it once it
    /// holds a sixteenth of it, so one whose batches wait for a retry leaves the others
    /// inserting batches of some size: the process holds at most this plus a sixteenth per
    /// writer). Larger inserts cost ClickHouse less CPU per row: draining a backlog of 2 M
    /// level-2 rows took it about a quarter less CPU at 32 MiB than at 8 MiB …
    pub buffer_bytes: usize,
    /// … or when its first row is this old.
    #[serde(with = "humantime_secs")]
    pub batch_max_age: Duration,
    /// Prefix of the writers' consumer groups: each writer has its own,
    /// `<group_id>.<topic>`, shared by that writer on every pod.
    pub group_id: String,
    /// A writer unheard for this long loses its partitions to the same writer on other pods
    /// (a restarted pod that rejoins within it gets them back without a rebalance).
    #[serde(with = "humantime_secs")]
    pub session_timeout: Duration,
    /// First back-off after a failed insert; doubles up to `retry_max_backoff`.
    #[serde(with = "humantime_secs")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_secs")]
    pub retry_max_backoff: Duration,
    /// A held partition whose position has not moved for this long while Kafka holds rows
    /// past it counts as stalled (checked with the lag, every 2 s; never while a failed insert
    /// is retried or the writer is paused): it is resumed and sought back to its position, as
    /// the calculators do (`calculators.stall_after`).
    #[serde(with = "humantime_secs")]
    pub stall_after: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            categories: Vec::new(),
            batch_rows: 200_000,
            batch_bytes: 32 * 1024 * 1024,
            buffer_bytes: 32 * 1024 * 1024,
            batch_max_age: Duration::from_millis(500),
            group_id: "marketlane-clickhouse-writer".into(),
            session_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(200),
            retry_max_backoff: Duration::from_secs(10),
            stall_after: Duration::from_secs(30),
        }
    }
}

impl WriterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_rows == 0 {
            return Err(bad("writer.batch_rows", "must be at least 1"));
        }
        if self.batch_bytes < 64 * 1024 {
            return Err(bad("writer.batch_bytes", "must be at least 65536"));
        }
        if self.buffer_bytes < 64 * 1024 {
            return Err(bad("writer.buffer_bytes", "must be at least 65536"));
        }
        if self.batch_max_age.is_zero() {
            return Err(bad("writer.batch_max_age", "must be positive"));
        }
        if self.group_id.trim().is_empty() {
            return Err(bad("writer.group_id", "empty"));
        }
        if self.stall_after < Duration::from_secs(1) {
            return Err(bad(
                "writer.stall_after",
                format!("{:?} is under 1 s", self.stall_after),
            ));
        }
        // The broker's group.min/max.session.timeout.ms defaults (6 s to 30 min).
        if !(Duration::from_secs(6)..=Duration::from_secs(1800)).contains(&self.session_timeout) {
            return Err(bad(
                "writer.session_timeout",
                format!("{:?} is not within 6 s and 30 min", self.session_timeout),
            ));
        }
        Ok(())
    }

    /// The consumer group of the writer of `topic`.
    pub fn group_of(&self, topic: &str) -> String {
        format!("{}.{topic}", self.group_id)
    }
}

/// Where the process writes what it may need after a restart (none yet besides logs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    pub schemas_dir: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            schemas_dir: PathBuf::from("schemas"),
        }
    }
}

/// Durations in config files are written in seconds (fractions allowed: `0.5`).
pub mod humantime_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
