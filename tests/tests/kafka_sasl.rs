//! The daemon's Kafka SASL/SCRAM settings against a real Kafka: a private broker started from
//! the stack's own template (`scripts/kafka/server.properties.tmpl`, whose SASL_PLAINTEXT
//! listener takes SCRAM users) and jars, its SCRAM user created at format time as
//! `scripts/stack` does. The shared stack's broker is left alone (other tests use it; it gets
//! the listener at its next restart). A writer-role daemon that authenticates as that user
//! creates its topics, consumes what the test produces over SCRAM, and stores it in ClickHouse;
//! a wrong password is refused by the broker.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use marketlane_tests::clickhouse::drop_db;
use marketlane_tests::config::WriterConfig;
use marketlane_tests::daemon::{Readyz, wait_readyz};
use marketlane_tests::kafka::tick_row;
use marketlane_tests::{
    Proc, clickhouse, eventually, free_port, marketlane_bin, unique, workspace_root,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const USER: &str = "marketlane";
const PASSWORD: &str = "scram-secret-for-the-test";

fn java() -> String {
    let jdk17 = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java";
    if std::path::Path::new(jdk17).exists() {
        jdk17.into()
    } else {
        "java".into()
    }
}

fn kafka_libs() -> PathBuf {
    let var = std::env::var("ML_VAR_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("var"));
    var.join("kafka/libs")
}

struct PrivateKafka {
    child: Child,
    sasl: u16,
    _dir: tempfile::TempDir,
}

impl PrivateKafka {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).unwrap();
        let (plain, controller, sasl) = (free_port(), free_port(), free_port());
        let props =
            std::fs::read_to_string(workspace_root().join("scripts/kafka/server.properties.tmpl"))
                .unwrap()
                .replace("@KAFKA_DIR@", &d.display().to_string())
                .replace("@KAFKA_PORT@", &plain.to_string())
                .replace("@KAFKA_CONTROLLER_PORT@", &controller.to_string())
                .replace("@KAFKA_SASL_PORT@", &sasl.to_string());
        let config = d.join("server.properties");
        std::fs::write(&config, props).unwrap();
        let cp = format!("{}/*", kafka_libs().display());
        let log4j = format!(
            "-Dlog4j2.configurationFile={}",
            workspace_root()
                .join("scripts/kafka/tools-log4j2.xml")
                .display()
        );
        let format = Command::new(java())
            .args([
                "-Xmx256m",
                &log4j,
                "-cp",
                &cp,
                "kafka.tools.StorageTool",
                "format",
            ])
            .args([
                "-t",
                "MkU3OEVBNTcwNTJENDM2Qg",
                "-c",
                config.to_str().unwrap(),
            ])
            .arg("--add-scram")
            .arg(format!("SCRAM-SHA-512=[name={USER},password={PASSWORD}]"))
            .output()
            .unwrap();
        assert!(
            format.status.success(),
            "format: {}",
            String::from_utf8_lossy(&format.stderr)
        );
        let log = std::fs::File::create(d.join("kafka.log")).unwrap();
        let child = Command::new(java())
            .args([
                "-Xms128m",
                "-Xmx384m",
                "-XX:+UseSerialGC",
                &log4j,
                "-cp",
                &cp,
            ])
            .arg(format!("-Dkafka.logs.dir={}", d.display()))
            .args(["kafka.Kafka", config.to_str().unwrap()])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let me = Self {
            child,
            sasl,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(120), || async {
            let c = me.consumer(PASSWORD);
            tokio::task::spawn_blocking(move || {
                c.fetch_metadata(None, Duration::from_secs(3)).is_ok()
            })
            .await
            .unwrap_or(false)
        })
        .await;
        assert!(up, "private Kafka did not start");
        me
    }

    fn client(&self, password: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", format!("127.0.0.1:{}", self.sasl))
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", USER)
            .set("sasl.password", password);
        c
    }

    fn consumer(&self, password: &str) -> BaseConsumer {
        self.client(password)
            .set("group.id", "probe")
            .create()
            .unwrap()
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_authenticates_to_kafka_with_scram() {
    let kafka = PrivateKafka::start().await;

    // A wrong password is refused by the broker.
    let bad = kafka.consumer("not-the-password");
    let refused =
        tokio::task::spawn_blocking(move || bad.fetch_metadata(None, Duration::from_secs(5)).err())
            .await
            .unwrap();
    assert!(refused.is_some(), "the broker accepted a wrong password");

    // The daemon's SASL settings: topics, consumption, rows in ClickHouse.
    let dir = tempfile::tempdir().unwrap();
    let db = unique("sasl_");
    let http = free_port();
    let password_file = dir.path().join("kafka-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let mut writer_config = WriterConfig::new("sasl-writer", None, &db, http).kafka_keys(&format!(
        "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = {USER:?}\nsasl_password_file = {:?}",
        password_file.display().to_string()
    ));
    writer_config.kafka_bootstrap = format!("127.0.0.1:{}", kafka.sasl);
    let config = writer_config.write(&dir.path().join("writer.toml"));
    let log = dir.path().join("writer.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut writer = Proc(
        Command::new(marketlane_bin())
            .args(["run", "--config", config.to_str().unwrap()])
            .current_dir(workspace_root())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap(),
    );
    let ready = wait_readyz(
        &format!("127.0.0.1:{http}"),
        Duration::from_secs(90),
        Readyz::ready,
    )
    .await;
    assert!(
        ready.is_ok(),
        "writer not ready over SCRAM ({ready:?}):\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let producer: BaseProducer = kafka.client(PASSWORD).create().unwrap();
    let t0 = marketlane_protocol::now_ns();
    const N: u64 = 20;
    for i in 0..N {
        let payload = tick_row("sasl", i, t0);
        producer
            .send(
                BaseRecord::to("tick_market_data")
                    .key("AAPL")
                    .payload(&payload),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let landed = eventually(Duration::from_secs(60), || async {
        clickhouse(&format!("SELECT count() FROM {db}.tick_market_data FINAL"))
            .await
            .is_ok_and(|c| c.trim() == N.to_string())
    })
    .await;
    writer.terminate();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    drop_db(&db).await;
    assert!(landed, "rows did not arrive over SCRAM:\n{text}");
    assert!(
        !text.contains(PASSWORD),
        "the password reached the log:\n{text}"
    );
}
