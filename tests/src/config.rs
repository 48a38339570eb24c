//! The daemon config builder ([`DaemonConfig`]): the TOML every integration test gives the
//! daemon, with fresh names per test.

use std::path::{Path, PathBuf};

use marketlane_actors::config::{SecType, SymbolConfig};
use marketlane_protocol::category::TICK;
use serde_json::json;

use crate::redis::redis_url;
use crate::{free_port, kafka_bootstrap, unique, workspace_root};

/// A stock routed via SMART, without the ladder.
pub fn stock(symbol: &str) -> SymbolConfig {
    SymbolConfig {
        symbol: symbol.into(),
        sec_type: SecType::Stock,
        exchange: None,
        depth: false,
    }
}

/// A future by root symbol and its exchange (the front month streams).
pub fn future(symbol: &str, exchange: &str) -> SymbolConfig {
    SymbolConfig {
        symbol: symbol.into(),
        sec_type: SecType::Future,
        exchange: Some(exchange.into()),
        depth: false,
    }
}

/// The steady-load universe: three stocks and a future.
pub fn steady_symbols() -> Vec<SymbolConfig> {
    vec![
        stock("AAPL"),
        stock("XOM"),
        stock("CVX"),
        future("CL", "NYMEX"),
    ]
}

/// The `[calculators]` section the suite uses: trade count and VWAP over 30 s on every tick
/// symbol, written to the stack's Redis as the `default` user under `key_prefix`.
#[derive(Debug, Clone)]
pub struct Calculators {
    pub key_prefix: String,
    pub group_id: String,
    pub team: String,
    pub window_secs: f64,
}

impl Calculators {
    pub const TRADE_COUNT: &'static str = "trades_30s";
    pub const VWAP: &'static str = "vwap_30s";

    /// Redis key of `indicator` for `symbol`.
    pub fn key(&self, indicator: &str, symbol: &str) -> String {
        format!("{}:{}:{indicator}:{symbol}", self.key_prefix, self.team)
    }

    fn to_toml(&self) -> toml::Value {
        let spec = |name: &str, kind: &str| {
            json!({
                "name": name, "kind": kind, "source": TICK, "symbols": ["*"],
                "window_secs": self.window_secs,
            })
        };
        let v = json!({
            "group_id": self.group_id,
            "coalesce_interval": 0.1,
            "checkpoint_interval": 1.0,
            "key_ttl": 900,
            "warm_restart_lookback": 300,
            "redis": {
                "url": redis_url(), "user": "default", "password": "",
                "key_prefix": self.key_prefix,
            },
            "teams": [{
                "name": self.team,
                "specs": [spec(Self::TRADE_COUNT, "trade_count"), spec(Self::VWAP, "vwap")],
            }],
        });
        toml::Value::try_from(v).expect("calculator config as TOML")
    }
}

/// One daemon's config. [`DaemonConfig::new`] gives fresh names (topic prefix, database,
/// groups, ports, socket); [`DaemonConfig::sharing`] gives a second pod of the same lane.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub instance: String,
    /// `connector`, `writer`, `calculator`.
    pub roles: Vec<String>,
    pub gateway_url: String,
    pub symbols: Vec<SymbolConfig>,
    /// More `[ib]` keys, e.g. `heartbeat_timeout = 3.0`.
    pub ib: toml::Table,
    pub kafka_prefix: String,
    pub database: String,
    pub writer_group: String,
    pub calculators: Option<Calculators>,
    /// Where `/metrics` listens (a pod's own address in a network namespace).
    pub http_host: String,
    pub http_port: u16,
    /// ClickHouse as the daemon reaches it (the bridge address from a network namespace).
    pub clickhouse_url: String,
    pub control_socket: PathBuf,
    pub drain_deadline_secs: u64,
    pub batch_max_age_secs: f64,
    pub schemas_dir: PathBuf,
    /// Dotted paths ([`DaemonConfig::without`]) taken out of the generated config before
    /// `extra` is merged: those settings are left to the daemon's defaults.
    pub omit: Vec<String>,
    /// Merged over everything else last (e.g. a `[cluster]` section).
    pub extra: toml::Table,
}

impl DaemonConfig {
    /// A connector + writer pod with fresh names; the control socket lives in `dir`.
    pub fn new(gateway_url: &str, dir: &Path) -> Self {
        let id = unique("f");
        Self {
            instance: format!("{id}-0"),
            roles: vec!["connector".into(), "writer".into()],
            gateway_url: gateway_url.into(),
            symbols: steady_symbols(),
            ib: toml::Table::new(),
            kafka_prefix: format!("{id}_"),
            database: id.clone(),
            writer_group: format!("{id}_writer"),
            calculators: None,
            http_host: "127.0.0.1".into(),
            http_port: free_port(),
            clickhouse_url: crate::clickhouse_url(),
            control_socket: dir.join(format!("{id}-0.sock")),
            drain_deadline_secs: 25,
            batch_max_age_secs: 0.3,
            schemas_dir: workspace_root().join("schemas"),
            omit: Vec::new(),
            extra: toml::Table::new(),
        }
    }

    /// Another pod of the same lane (same topics, database, groups, Redis prefix), with its
    /// own instance name, ports and socket.
    pub fn sharing(&self, instance: &str, dir: &Path) -> Self {
        let mut c = self.clone();
        c.instance = instance.into();
        c.http_port = free_port();
        c.control_socket = dir.join(format!("{instance}.sock"));
        c
    }

    /// Adds the `calculator` role with the suite's specs.
    pub fn with_calculators(mut self) -> Self {
        if !self.roles.iter().any(|r| r == "calculator") {
            self.roles.push("calculator".into());
        }
        self.calculators = Some(Calculators {
            key_prefix: self.database.replace('_', "-"),
            group_id: format!("{}_calc", self.database),
            team: "faults".into(),
            window_secs: 30.0,
        });
        self
    }

    /// Sets an `[ib]` key (numbers, strings, booleans).
    pub fn ib(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.ib.insert(key.into(), value.into());
        self
    }

    /// Leaves keys or whole sections out (dotted paths: `"writer"`, `"clickhouse.url"`,
    /// `"ib.symbols"`), so the daemon's defaults apply: for tests whose meaning is "as a pod
    /// configured with only these keys". A path the builder does not write is a mistake and
    /// panics when the config is rendered. [`DaemonConfig::with_toml`] still applies on top.
    pub fn without(mut self, paths: &[&str]) -> Self {
        self.omit.extend(paths.iter().map(|p| p.to_string()));
        self
    }

    /// Sets the key at a dotted path (`"econ.poll_interval"`, `"log.json"`, `"calculators"`)
    /// to `value`, for settings the builder does not model; merged over everything else last.
    /// The daemon refuses unknown keys, so a misspelt path fails
    /// the test.
    pub fn with_toml(mut self, path: &str, value: impl Into<toml::Value>) -> Self {
        let over = path.rsplit('.').fold(value.into(), |v, key| {
            toml::Value::Table(toml::Table::from_iter([(key.to_string(), v)]))
        });
        if let toml::Value::Table(t) = over {
            merge(&mut self.extra, t);
        }
        self
    }

    /// `host:port` of `/metrics`, `/livez` and `/readyz`.
    pub fn http_addr(&self) -> String {
        format!("{}:{}", self.http_host, self.http_port)
    }

    /// Writes the config to `path` and returns it.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.to_toml()).expect("write the daemon config");
        path.to_path_buf()
    }

    pub fn to_toml(&self) -> String {
        let mut ib = toml::Table::new();
        ib.insert("gateway_url".into(), self.gateway_url.clone().into());
        ib.insert(
            "symbols".into(),
            toml::Value::try_from(&self.symbols).expect("symbols as TOML"),
        );
        merge(&mut ib, self.ib.clone());
        let mut root = toml::Table::new();
        root.insert("instance".into(), self.instance.clone().into());
        root.insert(
            "schemas_dir".into(),
            self.schemas_dir.display().to_string().into(),
        );
        root.insert(
            "roles".into(),
            toml::Value::Array(self.roles.iter().map(|r| r.clone().into()).collect()),
        );
        root.insert(
            "drain_deadline_secs".into(),
            (self.drain_deadline_secs as i64).into(),
        );
        let table = |pairs: Vec<(&str, toml::Value)>| {
            toml::Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        };
        root.insert(
            "http".into(),
            table(vec![(
                "listen",
                format!("{}:{}", self.http_host, self.http_port).into(),
            )]),
        );
        root.insert(
            "control".into(),
            table(vec![(
                "socket",
                self.control_socket.display().to_string().into(),
            )]),
        );
        root.insert("ib".into(), toml::Value::Table(ib));
        root.insert(
            "kafka".into(),
            table(vec![
                ("bootstrap_servers", kafka_bootstrap().into()),
                ("topic_prefix", self.kafka_prefix.clone().into()),
            ]),
        );
        root.insert(
            "clickhouse".into(),
            table(vec![
                ("url", self.clickhouse_url.clone().into()),
                ("database", self.database.clone().into()),
            ]),
        );
        root.insert(
            "writer".into(),
            table(vec![
                ("group_id", self.writer_group.clone().into()),
                ("batch_max_age", self.batch_max_age_secs.into()),
            ]),
        );
        if let Some(c) = &self.calculators {
            root.insert("calculators".into(), c.to_toml());
        }
        for path in &self.omit {
            if !remove(&mut root, path) {
                panic!("without({path:?}): the builder writes no such key");
            }
        }
        merge(&mut root, self.extra.clone());
        toml::to_string(&root).expect("config as TOML")
    }
}

/// Removes the key at a dotted path; false when there is none.
fn remove(table: &mut toml::Table, path: &str) -> bool {
    match path.split_once('.') {
        None => table.remove(path).is_some(),
        Some((head, rest)) => match table.get_mut(head) {
            Some(toml::Value::Table(t)) => remove(t, rest),
            _ => false,
        },
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// A writer-only daemon (`roles = ["writer"]`) of rows the test produces itself: no `[ib]`,
/// no `[control]`, and only the keys set here, so that the TOML reads as the test meant it.
/// `None` fields are left out (the daemon's default applies).
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub instance: String,
    pub schemas_dir: PathBuf,
    pub http_port: u16,
    pub drain_deadline_secs: i64,
    /// `[kafka] bootstrap_servers`, `topic_prefix` and `partitions`.
    pub kafka_bootstrap: String,
    pub kafka_prefix: Option<String>,
    pub partitions: i64,
    /// More `[kafka]` keys (e.g. SASL settings).
    pub kafka: toml::Table,
    pub clickhouse_url: String,
    pub clickhouse_user: Option<String>,
    pub database: String,
    pub categories: Vec<String>,
    pub group_id: Option<String>,
    pub batch_rows: Option<i64>,
    /// `writer.buffer_bytes`: what the writers of the process hold together.
    pub buffer_bytes: Option<i64>,
    pub batch_max_age_secs: f64,
}

impl WriterConfig {
    /// The stack's Kafka and ClickHouse, the repository's schemas, one partition, a 5 s drain
    /// and 0.2 s batches; every name as given.
    pub fn new(instance: &str, kafka_prefix: Option<&str>, database: &str, http_port: u16) -> Self {
        Self {
            instance: instance.into(),
            schemas_dir: workspace_root().join("schemas"),
            http_port,
            drain_deadline_secs: 5,
            kafka_bootstrap: kafka_bootstrap(),
            kafka_prefix: kafka_prefix.map(String::from),
            partitions: 1,
            kafka: toml::Table::new(),
            clickhouse_url: crate::clickhouse_url(),
            clickhouse_user: None,
            database: database.into(),
            categories: vec![TICK.into()],
            group_id: None,
            batch_rows: None,
            buffer_bytes: None,
            batch_max_age_secs: 0.2,
        }
    }

    pub fn categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(|c| c.to_string()).collect();
        self
    }

    /// Merges a TOML fragment into `[kafka]` (e.g. `security_protocol = "sasl_plaintext"`).
    pub fn kafka_keys(mut self, fragment: &str) -> Self {
        let t: toml::Table = toml::from_str(fragment).expect("kafka keys are valid TOML");
        merge(&mut self.kafka, t);
        self
    }

    pub fn to_toml(&self) -> String {
        let mut kafka = toml::Table::new();
        kafka.insert(
            "bootstrap_servers".into(),
            self.kafka_bootstrap.clone().into(),
        );
        if let Some(p) = &self.kafka_prefix {
            kafka.insert("topic_prefix".into(), p.clone().into());
        }
        kafka.insert("partitions".into(), self.partitions.into());
        merge(&mut kafka, self.kafka.clone());
        let mut clickhouse = toml::Table::new();
        clickhouse.insert("url".into(), self.clickhouse_url.clone().into());
        if let Some(u) = &self.clickhouse_user {
            clickhouse.insert("user".into(), u.clone().into());
        }
        clickhouse.insert("database".into(), self.database.clone().into());
        let mut writer = toml::Table::new();
        writer.insert(
            "categories".into(),
            toml::Value::Array(self.categories.iter().map(|c| c.clone().into()).collect()),
        );
        if let Some(g) = &self.group_id {
            writer.insert("group_id".into(), g.clone().into());
        }
        if let Some(n) = self.batch_rows {
            writer.insert("batch_rows".into(), n.into());
        }
        if let Some(n) = self.buffer_bytes {
            writer.insert("buffer_bytes".into(), n.into());
        }
        writer.insert("batch_max_age".into(), self.batch_max_age_secs.into());
        let mut http = toml::Table::new();
        http.insert(
            "listen".into(),
            format!("127.0.0.1:{}", self.http_port).into(),
        );
        let mut root = toml::Table::new();
        root.insert("instance".into(), self.instance.clone().into());
        root.insert("roles".into(), toml::Value::Array(vec!["writer".into()]));
        root.insert(
            "schemas_dir".into(),
            self.schemas_dir.display().to_string().into(),
        );
        root.insert(
            "drain_deadline_secs".into(),
            self.drain_deadline_secs.into(),
        );
        root.insert("http".into(), toml::Value::Table(http));
        root.insert("kafka".into(), toml::Value::Table(kafka));
        root.insert("clickhouse".into(), toml::Value::Table(clickhouse));
        root.insert("writer".into(), toml::Value::Table(writer));
        toml::to_string(&root).expect("writer config as TOML")
    }

    /// Writes the config to `path` and returns it.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.to_toml()).expect("write the writer config");
        path.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builder writes the same keys and values as the inline TOML it replaced (the
    /// writer of `tests/tests/clickhouse.rs`).
    #[test]
    fn writer_config_is_the_inline_toml_it_replaced() {
        let mut c = WriterConfig::new("writer-test", Some("p_"), "db1", 9999)
            .categories(&["tick_market_data", "l2_market_data"]);
        c.partitions = 3;
        c.group_id = Some("g1".into());
        c.batch_rows = Some(300);
        let inline = format!(
            r#"instance = "writer-test"
roles = ["writer"]
schemas_dir = {schemas:?}
drain_deadline_secs = 5
[http]
listen = "127.0.0.1:9999"
[kafka]
bootstrap_servers = {kafka:?}
topic_prefix = "p_"
partitions = 3
[clickhouse]
url = {ch:?}
database = "db1"
[writer]
categories = ["tick_market_data", "l2_market_data"]
group_id = "g1"
batch_rows = 300
batch_max_age = 0.2
"#,
            schemas = workspace_root().join("schemas").display().to_string(),
            kafka = kafka_bootstrap(),
            ch = crate::clickhouse_url(),
        );
        let want: toml::Table = toml::from_str(&inline).expect("inline");
        let got: toml::Table = toml::from_str(&c.to_toml()).expect("built");
        assert_eq!(got, want);
    }

    /// Without a prefix, group, batch size or buffer bound those keys are absent; SASL keys land in `[kafka]`.
    #[test]
    fn writer_config_leaves_unset_keys_out() {
        let c = WriterConfig::new("sasl-writer", None, "db", 1)
            .kafka_keys("security_protocol = \"sasl_plaintext\"");
        let t: toml::Table = toml::from_str(&c.to_toml()).expect("built");
        let kafka = t["kafka"].as_table().expect("kafka");
        assert!(!kafka.contains_key("topic_prefix"));
        assert_eq!(kafka["security_protocol"].as_str(), Some("sasl_plaintext"));
        let writer = t["writer"].as_table().expect("writer");
        for key in ["group_id", "batch_rows", "buffer_bytes"] {
            assert!(!writer.contains_key(key), "{key} written though unset");
        }
    }

    /// `without` takes keys and sections out, `with_toml` adds keys the builder does not
    /// model, and both leave every other key as the builder writes it.
    #[test]
    fn daemon_config_leaves_out_and_adds_keys() {
        let dir = Path::new("/tmp");
        let full: toml::Table =
            toml::from_str(&DaemonConfig::new("http://gw", dir).to_toml()).expect("full");
        let c = DaemonConfig::new("http://gw", dir)
            .without(&["roles", "writer", "clickhouse.url", "ib.symbols"])
            .with_toml("econ.poll_interval", 0.3)
            .with_toml("kafka.partitions", 3)
            .with_toml("clickhouse.password", "pw");
        let t: toml::Table = toml::from_str(&c.to_toml()).expect("built");
        assert!(!t.contains_key("roles") && !t.contains_key("writer"));
        assert!(!t["ib"].as_table().expect("ib").contains_key("symbols"));
        assert!(!t["clickhouse"].as_table().expect("ch").contains_key("url"));
        assert_eq!(t["econ"]["poll_interval"].as_float(), Some(0.3));
        assert_eq!(t["kafka"]["partitions"].as_integer(), Some(3));
        assert_eq!(t["clickhouse"]["password"].as_str(), Some("pw"));
        // Every other key as in the full config (names aside: they are fresh per config).
        for key in ["schemas_dir", "drain_deadline_secs"] {
            assert_eq!(t[key], full[key], "{key}");
        }
        assert!(t["clickhouse"].get("database").is_some());
        assert_eq!(
            t["kafka"]["bootstrap_servers"],
            full["kafka"]["bootstrap_servers"]
        );
    }

    #[test]
    #[should_panic(expected = "clickhouse.ulr")]
    fn daemon_config_refuses_to_leave_out_a_key_it_does_not_write() {
        DaemonConfig::new("http://gw", Path::new("/tmp"))
            .without(&["clickhouse.ulr"])
            .to_toml();
    }
}
