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

/// Variables of this binary outside the config tree (command-line defaults and the tests'
/// binary path); any other `MARKETLANE_…` with a single underscore is a typo the daemon would
/// otherwise ignore (e.g. `MARKETLANE_REDIS_PASSWORD`).
pub const OTHER_ENV: [&str; 3] = [
    "MARKETLANE_REDIS_ADMIN_URL",
    "MARKETLANE_CONTROL_SOCKET",
    "MARKETLANE_BIN",
];

/// A `MARKETLANE…` variable that no part of the daemon reads, with what was probably meant.
pub fn ignored_env_var(name: &str) -> Option<String> {
    if !name.starts_with("MARKETLANE") || name.starts_with(ENV_PREFIX) || OTHER_ENV.contains(&name)
    {
        return None;
    }
    let rest = name
        .trim_start_matches("MARKETLANE")
        .trim_start_matches('_');
    Some(format!(
        "{name} is not read by marketlane; config keys are {ENV_PREFIX}SECTION__KEY (two underscores between parts, e.g. {ENV_PREFIX}{})",
        rest.replace('_', "__")
    ))
}

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
    pub runtime: RuntimeConfig,
}

/// The async runtime the daemon's actors run on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Tokio worker threads. 0 (default): one per role the process runs, at most one per CPU
    /// it may use. Not tokio's one per CPU: pods run without a CPU limit, so that would be one
    /// per core of the node, and a role's steady load is under a core (librdkafka's and
    /// ClickHouse's I/O run on their own threads). Side by side at 31,000 rows/s on two
    /// shared cores, one worker instead of two cut the connector's and writer's CPU per row by
    /// about 12% and the p99 from event to Kafka by a third (`load-tests/README.md`).
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// The worker threads for a process running `roles`, with `cpus` CPUs available.
    pub fn workers(&self, roles: usize, cpus: usize) -> usize {
        match self.worker_threads {
            0 => roles.clamp(1, cpus.max(1)),
            n => n,
        }
    }
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
            runtime: RuntimeConfig::default(),
        }
    }
}

/// Parses an environment value as the TOML value it looks like (number, bool, array, table),
/// falling back to a string. Only for keys whose type is not a string: a string key takes its
/// value verbatim ([`Config::load`]), so a password such as `12345678` or `'abc'` stays as given.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// The value at `path` in `tree`, if any.
fn lookup<'a>(tree: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    path.iter().try_fold(tree, |v, k| v.get(k.as_str()))
}

/// `over` nested under `path` as a table.
fn nest(path: &[String], over: toml::Value) -> toml::Value {
    path.iter().rev().fold(over, |over, p| {
        let mut t = toml::Table::new();
        t.insert(p.clone(), over);
        toml::Value::Table(t)
    })
}

/// One `MARKETLANE__…` variable on its way into the config.
struct EnvOverride {
    name: String,
    path: Vec<String>,
    raw: String,
    /// Taken as a TOML value (the key is not a string); otherwise verbatim.
    parsed: bool,
}

impl EnvOverride {
    fn value(&self) -> toml::Value {
        if self.parsed {
            env_value(&self.raw)
        } else {
            toml::Value::String(self.raw.clone())
        }
    }
}

/// `message` with every value that came from the environment blanked out: a typo'd number is
/// cheap to find again, a password in a log is not.
fn redact_env_values(message: &str, env: &[EnvOverride]) -> String {
    let mut out = message.to_string();
    // Verbatim (string) values only: they are where secrets live, and blanking a short number
    // would garble the message.
    for e in env {
        if !e.parsed && e.raw.len() >= 3 {
            out = out.replace(&e.raw, "<redacted>");
        }
    }
    out
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
    ///
    /// An environment value is taken verbatim when its key is a string (in the defaults or the
    /// file, or, for keys without a default such as `ib.username`, when a string is accepted
    /// there); otherwise it is read as the TOML value it looks like (`12`, `true`, `["a"]`).
    /// No value from the file or the environment is quoted in an error: they hold secrets.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut value = toml::Value::try_from(Config::default()).context("default config")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            // toml's Display quotes the offending line, which may hold a secret: position only.
            let file_value: toml::Value = toml::from_str(&text).map_err(|e| {
                let at = e
                    .span()
                    .map(|s| {
                        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                        format!(" (line {line})")
                    })
                    .unwrap_or_default();
                anyhow::anyhow!(
                    "config {} is not valid TOML{at}: {}",
                    path.display(),
                    e.message()
                )
            })?;
            merge(&mut value, file_value);
        }
        let mut env: Vec<EnvOverride> = env
            .into_iter()
            .filter_map(|(name, raw)| {
                // Before logging is set up (its level is in this config): straight to stderr.
                if let Some(why) = ignored_env_var(&name) {
                    eprintln!("warning: {why}");
                }
                let path: Vec<String> = name
                    .strip_prefix(ENV_PREFIX)?
                    .split("__")
                    .map(str::to_lowercase)
                    .collect();
                let parsed = match lookup(&value, &path) {
                    Some(toml::Value::String(_)) => false,
                    Some(_) => true,
                    // No default (an `Option`): try verbatim first, see below.
                    None => false,
                };
                Some(EnvOverride {
                    name,
                    path,
                    raw,
                    parsed,
                })
            })
            .collect();
        // A key without a default takes the string if its type accepts one, else the parsed
        // value: at most one retry per such key, each after an error at exactly its path.
        loop {
            let mut merged = value.clone();
            for e in &env {
                merge(&mut merged, nest(&e.path, e.value()));
            }
            match serde_path_to_error::deserialize::<_, Config>(merged) {
                Ok(mut config) => {
                    config.ib.resolve_username(&config.instance)?;
                    config
                        .validate()
                        .map_err(|e| anyhow::anyhow!(redact_env_values(&format!("{e:#}"), &env)))?;
                    return Ok(config);
                }
                Err(err) => {
                    let at = err.path().to_string();
                    let retry = env.iter_mut().find(|e| {
                        !e.parsed && e.path.join(".") == at && lookup(&value, &e.path).is_none()
                    });
                    if let Some(e) = retry {
                        e.parsed = true;
                        continue;
                    }
                    let from = env
                        .iter()
                        .find(|e| at.starts_with(&e.path.join(".")))
                        .map(|e| format!(" (from {})", e.name))
                        .unwrap_or_default();
                    let message = redact_env_values(err.inner().message(), &env);
                    bail!("config {at}{from}: {message}");
                }
            }
        }
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
        if self.runtime.worker_threads > 256 {
            bail!(
                "config runtime.worker_threads: {} is more than 256 (0 means one per role)",
                self.runtime.worker_threads
            );
        }
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
                (
                    "MARKETLANE__CLUSTER__COOKIE",
                    "from-the-secret-of-at-least-32-bytes",
                ),
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
        // The built-in login drives the gateway sidecar's chromedriver with this pod's files
        // from the mounted marketlane-ib-users secret.
        let login =
            c.ib.login
                .as_ref()
                .expect("[ib.login] in the StatefulSet's config");
        assert_eq!(
            login.webdriver_url.as_deref(),
            Some("http://127.0.0.1:9515")
        );
        assert_eq!(
            marketlane_actors::ib_login::per_user(&login.password_file, "trader-paper"),
            Path::new("/etc/marketlane/ib-users/trader-paper.password")
        );
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
    fn worker_threads_default_to_one_per_role_within_the_cpus() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.runtime.worker_threads, 0);
        // One role per process as deployed: one worker, whatever the node's size.
        assert_eq!(c.runtime.workers(1, 64), 1);
        assert_eq!(c.runtime.workers(3, 64), 3);
        assert_eq!(c.runtime.workers(3, 2), 2);
        let c = Config::load(None, env(&[("MARKETLANE__RUNTIME__WORKER_THREADS", "4")])).unwrap();
        assert_eq!(c.runtime.workers(1, 2), 4);
        let err = Config::load(
            None,
            env(&[("MARKETLANE__RUNTIME__WORKER_THREADS", "1000")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("runtime.worker_threads"), "{err}");
        let err = Config::load(None, env(&[("MARKETLANE__RUNTIME__WORKER_THREADS", "two")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("worker_threads"), "{err}");
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
    fn string_keys_take_environment_values_verbatim() {
        let c = Config::load(
            None,
            env(&[
                ("MARKETLANE__CLICKHOUSE__PASSWORD", "12345678"),
                ("MARKETLANE__CALCULATORS__REDIS__PASSWORD", "'abc'"),
                ("MARKETLANE__IB__USERNAME", "true"),
                ("MARKETLANE__LOG__LEVEL", "[info]"),
                ("MARKETLANE__KAFKA__PARTITIONS", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(c.clickhouse.password, "12345678");
        assert_eq!(c.calculators.redis.password, "'abc'");
        // No default (an Option<String>): a string is accepted, so it stays one.
        assert_eq!(c.ib.username.as_deref(), Some("true"));
        assert_eq!(c.log.level, "[info]");
        assert_eq!(c.kafka.partitions, 7);
    }

    #[test]
    fn errors_never_quote_a_secret() {
        // A bad TOML file with a secret on the offending line.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[clickhouse]\npassword = \"hunter2-in-a-file\n").unwrap();
        let e = format!("{:#}", Config::load(Some(&path), env(&[])).unwrap_err());
        assert!(e.contains("line 2") && !e.contains("hunter2"), "{e}");
        // A validation error while a secret is set from the environment.
        let e = format!(
            "{:#}",
            Config::load(
                None,
                env(&[
                    (
                        "MARKETLANE__CLICKHOUSE__URL",
                        "http://u:hunter2-in-env@ch:8123"
                    ),
                    ("MARKETLANE__CLICKHOUSE__PASSWORD", "hunter2-in-env"),
                ]),
            )
            .unwrap_err()
        );
        assert!(
            e.contains("clickhouse.url") && !e.contains("hunter2"),
            "{e}"
        );
    }

    /// Every environment variable the Kubernetes manifests (base and overlays) give the
    /// daemon, loaded through this loader: one the daemon would ignore (a single underscore,
    /// a misspelt key) fails here instead of leaving a pod without its password.
    #[test]
    fn every_env_var_of_the_k8s_manifests_reaches_the_config() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s");
        let mut names = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    // Both `- name: X` and `{name: X, value: …}` forms.
                    for part in text.split("name:").skip(1) {
                        let name: String = part
                            .trim_start()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if name.starts_with("MARKETLANE") {
                            names.push((name, path.display().to_string()));
                        }
                    }
                }
            }
        }
        assert!(
            names
                .iter()
                .any(|(n, _)| n == "MARKETLANE__CLICKHOUSE__PASSWORD"),
            "the scan finds the manifests' variables: {names:?}"
        );
        for (name, file) in &names {
            assert_eq!(ignored_env_var(name), None, "{file}");
        }
        // All at once, with secret-sized placeholder values, through the StatefulSet's config:
        // an unknown key is an error naming it; a known one must change the loaded config.
        let path = root.join("base/config/marketlane.toml");
        let placeholder = "placeholder-secret-value-of-40-bytes-long!";
        for (name, file) in names.iter().filter(|(n, _)| n.starts_with(ENV_PREFIX)) {
            let mut vars = env(&[
                (
                    "MARKETLANE__CLUSTER__ADVERTISE_HOST",
                    "marketlane-0.marketlane-headless",
                ),
                ("MARKETLANE__CLUSTER__COOKIE", placeholder),
                // The StatefulSet's config authenticates to Kafka with SCRAM.
                ("MARKETLANE__KAFKA__SASL_PASSWORD", placeholder),
            ]);
            let value = if name.ends_with("__JSON") {
                "true"
            } else {
                placeholder
            };
            let value = if name.ends_with("__LEVEL") {
                "debug"
            } else {
                value
            };
            vars.push((name.clone(), value.to_string()));
            let c = Config::load(Some(&path), vars)
                .unwrap_or_else(|e| panic!("{name} ({file}): {e:#}"));
            let key: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_lowercase)
                .collect();
            let loaded = toml::Value::try_from(&c).unwrap();
            assert_eq!(
                lookup(&loaded, &key).map(|v| v.to_string().trim_matches('"').to_string()),
                Some(value.to_string()),
                "{name} ({file}) must set {}",
                key.join(".")
            );
        }
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
