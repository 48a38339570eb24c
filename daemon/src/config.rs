//! The daemon's configuration: typed, with defaults, then a TOML file, then environment
//! variables (`MARKETLANE__SECTION__KEY=value`, e.g. `MARKETLANE__KAFKA__BOOTSTRAP_SERVERS`).
//! Unknown keys are errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use marketlane_actors::config::{ClickHouseConfig, IbConfig, KafkaConfig, WriterConfig};
use marketlane_actors::names::ActorNames;
use marketlane_actors::{LaneConfig, Role};
use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "MARKETLANE__";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `component_instance_name` of every row; defaults to the pod's hostname.
    pub instance: String,
    pub source_system: String,
    pub roles: Vec<Role>,
    pub schemas_dir: PathBuf,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub ib: IbConfig,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub writer: WriterConfig,
    /// The economic release feed connector (with the connector role, when `econ.url` is set).
    pub econ: marketlane_actors::econ::EconConfig,
    /// Rolling Redis calculators (role `calculator`): Redis, teams and their indicator specs.
    pub calculators: marketlane_actors::calculator::CalculatorConfig,
    /// Seconds a SIGTERM drain may take before the daemon exits anyway.
    pub drain_deadline_secs: u64,
    pub control: crate::control::ControlConfig,
    /// Connector pods splitting the symbols over a ractor_cluster (off by default).
    pub cluster: marketlane_actors::cluster::ClusterConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `/metrics`, `/livez`, `/readyz`.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `info,marketlane_actors=debug`.
    pub level: String,
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            json: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance: std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| "marketlane-0".into()),
            source_system: "ib".into(),
            roles: vec![Role::Connector, Role::Writer],
            schemas_dir: PathBuf::from("schemas"),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            ib: IbConfig::default(),
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            writer: WriterConfig::default(),
            econ: Default::default(),
            calculators: Default::default(),
            drain_deadline_secs: 25,
            control: Default::default(),
            cluster: Default::default(),
        }
    }
}

/// Parses an environment value as the TOML value it looks like (number, bool, array, table),
/// falling back to a string.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

impl Config {
    /// Defaults, then `file` (if any), then the environment `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut value = toml::Value::try_from(Config::default()).context("default config")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            let file_value: toml::Value = toml::from_str(&text)
                .with_context(|| format!("config {} is not valid TOML", path.display()))?;
            merge(&mut value, file_value);
        }
        for (key, raw) in env {
            let Some(path) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            let mut over = env_value(&raw);
            for p in parts.iter().rev() {
                let mut t = toml::Table::new();
                t.insert(p.clone(), over);
                over = toml::Value::Table(t);
            }
            merge(&mut value, over);
        }
        let mut config: Config = serde_path_to_error::deserialize(value)
            .map_err(|e| anyhow::anyhow!("config {}: {}", e.path(), e.inner().message()))?;
        config.ib.resolve_username(&config.instance)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.instance.trim().is_empty() {
            bail!("config instance: empty");
        }
        if self.roles.is_empty() {
            bail!("config roles: at least one of connector, writer");
        }
        self.lane().validate()?;
        self.control.validate()?;
        // An error message may quote the URL; credentials belong in user/password.
        if crate::control::redact::strip_url_userinfo(&self.clickhouse.url).is_some() {
            bail!(
                "config clickhouse.url: put credentials in clickhouse.user and clickhouse.password, not in the URL"
            );
        }
        Ok(())
    }

    pub fn lane(&self) -> LaneConfig {
        LaneConfig {
            instance: self.instance.clone(),
            source_system: self.source_system.clone(),
            roles: self.roles.clone(),
            ib: self.ib.clone(),
            kafka: self.kafka.clone(),
            clickhouse: self.clickhouse.clone(),
            writer: self.writer.clone(),
            econ: self.econ.clone(),
            calculators: self.calculators.clone(),
            cluster: self.cluster.clone(),
            names: ActorNames::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The writer and calculator workloads' configs load with the environment their pods get,
    /// run only their role, and the calculator one holds the two-replica group setup.
    #[test]
    fn the_processor_configs_load_with_the_environment_the_pods_get() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/base/config");
        let writer = Config::load(
            Some(&dir.join("writer.toml")),
            env(&[
                ("POD_NAME", "marketlane-writer-1"),
                ("MARKETLANE__CLICKHOUSE__PASSWORD", "from-the-secret"),
                ("MARKETLANE__KAFKA__SASL_PASSWORD", "kafka-secret"),
            ]),
        )
        .unwrap();
        assert_eq!(writer.roles, vec![Role::Writer]);
        assert_eq!(writer.kafka.partitions, 6);
        assert_eq!(writer.kafka.sasl_password, "kafka-secret");
        let calc = Config::load(
            Some(&dir.join("calculator.toml")),
            env(&[
                ("POD_NAME", "marketlane-calculator-0"),
                ("MARKETLANE__KAFKA__SASL_PASSWORD", "kafka-secret"),
                (
                    "MARKETLANE__CALCULATORS__REDIS__PASSWORD",
                    "from-the-secret",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(calc.roles, vec![Role::Calculator]);
        assert_eq!(calc.calculators.redis.password, "from-the-secret");
        assert_eq!(calc.kafka.sasl_password, "kafka-secret");
        assert!(!calc.calculators.compile().unwrap().is_empty());
    }

    #[test]
    fn the_statefulset_config_loads_with_the_environment_the_pods_get() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/base/config/marketlane.toml");
        let c = Config::load(
            Some(&path),
            env(&[
                ("MARKETLANE__INSTANCE", "marketlane-1"),
                (
                    "MARKETLANE__CLUSTER__ADVERTISE_HOST",
                    "marketlane-1.marketlane-headless",
                ),
                ("MARKETLANE__CLUSTER__COOKIE", "from-the-secret"),
                (
                    "MARKETLANE__KAFKA__SASL_PASSWORD",
                    "from-the-kafkauser-secret",
                ),
            ]),
        )
        .unwrap();
        assert!(c.cluster.enabled);
        assert_eq!(c.kafka.security_protocol, "sasl_plaintext");
        assert_eq!(
            c.kafka.sasl_password().unwrap(),
            "from-the-kafkauser-secret"
        );
        assert_eq!(
            c.cluster.address(),
            c.cluster.peers[1],
            "a pod finds itself in peers"
        );
        assert_eq!(c.ib.username.as_deref(), Some("trader-paper"));
        // Without the secret the pod refuses to start, naming the key.
        let e = Config::load(
            Some(&path),
            env(&[
                ("MARKETLANE__INSTANCE", "marketlane-0"),
                (
                    "MARKETLANE__CLUSTER__ADVERTISE_HOST",
                    "marketlane-0.marketlane-headless",
                ),
                (
                    "MARKETLANE__KAFKA__SASL_PASSWORD",
                    "from-the-kafkauser-secret",
                ),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster.cookie"), "{e}");
    }

    #[test]
    fn defaults_then_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "instance = 'pod-a'\n[kafka]\nbootstrap_servers = 'file:9092'\npartitions = 6\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("MARKETLANE__KAFKA__PARTITIONS", "12"),
                ("MARKETLANE__WRITER__BATCH_MAX_AGE", "0.25"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.instance, "pod-a");
        assert_eq!(c.kafka.bootstrap_servers, "file:9092");
        assert_eq!(c.kafka.partitions, 12);
        assert_eq!(c.writer.batch_max_age.as_millis(), 250);
        assert_eq!(c.clickhouse.database, "marketlane");
    }

    #[test]
    fn unknown_keys_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[kafka]\nbootstrap = 'x'\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("bootstrap"), "{err}");
        let err = Config::load(None, env(&[("MARKETLANE__COLOUR", "red")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn invalid_values_are_errors() {
        let err = Config::load(None, env(&[("MARKETLANE__KAFKA__PARTITIONS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.partitions"), "{err}");
        let err = Config::load(None, env(&[("MARKETLANE__KAFKA__PARTITIONS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("partitions"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "roles = [").unwrap();
        assert!(Config::load(Some(&path), env(&[])).is_err());
    }
}
