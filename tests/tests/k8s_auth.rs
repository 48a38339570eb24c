//! The Kubernetes ClickHouse users (`k8s/base/clickhouse-users.yaml`) applied to a real
//! ClickHouse the way the image loads them: the stock `users.xml` of the installed package
//! (a `default` user without password from any address, as in the image) plus our file as a
//! `users.d` drop-in, with the passwords' SHA-256 in the environment as the manifests set them.
//! The shared stack's server keeps its own users (other tests log in as its password-less
//! analyst), so this test runs a second, private ClickHouse on free ports and stops it after.
//!
//! It shows: the writer runs as its user and password (tables, inserts, and its offsets in
//! `marketlane_state`); the analyst reads `marketlane` and nothing else; nobody connects from
//! outside the allowed networks, not `default` and not the writer with its password; wrong
//! passwords are refused.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use marketlane_tests::config::WriterConfig;
use marketlane_tests::daemon::{Readyz, wait_readyz};
use marketlane_tests::kafka::tick_row;
use marketlane_tests::{
    Proc, eventually, free_port, kafka_bootstrap, marketlane_bin, unique, workspace_root,
};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const WRITER_PASSWORD: &str = "writer-secret-for-the-test";
const ANALYST_PASSWORD: &str = "analyst-secret-for-the-test";

fn sha256_hex(s: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The users.d file of the ConfigMap, as ClickHouse reads it from its mount.
fn k8s_users_xml() -> String {
    let yaml =
        std::fs::read_to_string(workspace_root().join("k8s/base/clickhouse-users.yaml")).unwrap();
    let body = yaml
        .split_once("marketlane-users.xml: |\n")
        .expect("the ConfigMap holds marketlane-users.xml")
        .1;
    body.lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A private clickhouse-server (killed on drop).
struct PrivateClickHouse {
    child: Child,
    http: u16,
    _dir: tempfile::TempDir,
}

impl PrivateClickHouse {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "data",
            "tmp",
            "log",
            "user_files",
            "format_schemas",
            "users.d",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let (http, tcp) = (free_port(), free_port());
        let config =
            std::fs::read_to_string(workspace_root().join("scripts/clickhouse/config.xml.tmpl"))
                .unwrap()
                .replace("@CH_DIR@", &d.display().to_string())
                .replace("@CH_HTTP_PORT@", &http.to_string())
                .replace("@CH_TCP_PORT@", &tcp.to_string());
        std::fs::write(d.join("config.xml"), config).unwrap();
        // The package's users.xml: what the ClickHouse image ships.
        std::fs::copy("/etc/clickhouse-server/users.xml", d.join("users.xml")).unwrap();
        std::fs::write(d.join("users.d/marketlane-users.xml"), k8s_users_xml()).unwrap();
        std::fs::write(d.join("metrika.xml"), "<yandex/>").unwrap();
        let log = std::fs::File::create(d.join("log/stdout.log")).unwrap();
        let child = Command::new("clickhouse-server")
            .arg(format!("--config-file={}", d.join("config.xml").display()))
            .current_dir(d)
            .env(
                "CLICKHOUSE_WRITER_PASSWORD_SHA256",
                sha256_hex(WRITER_PASSWORD),
            )
            .env(
                "CLICKHOUSE_ANALYST_PASSWORD_SHA256",
                sha256_hex(ANALYST_PASSWORD),
            )
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("clickhouse-server");
        let me = Self {
            child,
            http,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(60), || async {
            reqwest::get(format!("http://127.0.0.1:{http}/ping"))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "private clickhouse-server did not start");
        me
    }

    /// The `users.d` directory the server watches (it reloads a changed file by itself).
    fn users_d(&self) -> PathBuf {
        self._dir.path().join("users.d")
    }

    /// Runs `sql` as `user` from local address `from`: Ok(answer) or Err(server's message).
    async fn query(
        &self,
        from: Ipv4Addr,
        user: &str,
        password: &str,
        sql: &str,
    ) -> Result<String, String> {
        let client = reqwest::Client::builder()
            .local_address(IpAddr::V4(from))
            .build()
            .unwrap();
        let resp = client
            .post(format!("http://127.0.0.1:{}/", self.http))
            .basic_auth(user, Some(password))
            .body(sql.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if ok { Ok(text) } else { Err(text) }
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Another address of the loopback interface, outside every network the users allow: it
/// stands for "any other host".
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn writer_config(dir: &Path, ch_http: u16, prefix: &str, http_port: u16) -> PathBuf {
    let mut c = WriterConfig::new("k8s-auth-writer", Some(prefix), "marketlane", http_port);
    c.clickhouse_url = format!("http://127.0.0.1:{ch_http}");
    c.clickhouse_user = Some("marketlane_writer".into());
    c.group_id = Some(unique("k8s_auth_"));
    c.write(&dir.join("writer.toml"))
}

/// A daemon in the writer role, logged in as the k8s writer user of a private server.
struct RunningWriter {
    proc: Proc,
    log: PathBuf,
    prefix: String,
    t0: i64,
    _dir: tempfile::TempDir,
}

impl RunningWriter {
    /// Starts the writer and waits until it is ready.
    async fn start(ch: &PrivateClickHouse) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("{}_", unique("k8sauth_"));
        let http_port = free_port();
        let config = writer_config(dir.path(), ch.http, &prefix, http_port);
        let log = dir.path().join("writer.log");
        let out = std::fs::File::create(&log).unwrap();
        let proc = Proc(
            Command::new(marketlane_bin())
                .args(["run", "--config", config.to_str().unwrap()])
                .current_dir(workspace_root())
                .env("MARKETLANE__CLICKHOUSE__PASSWORD", WRITER_PASSWORD)
                .stdout(Stdio::from(out.try_clone().unwrap()))
                .stderr(Stdio::from(out))
                .spawn()
                .unwrap(),
        );
        let me = Self {
            proc,
            log,
            prefix,
            t0: marketlane_protocol::now_ns(),
            _dir: dir,
        };
        let ready = wait_readyz(
            &format!("127.0.0.1:{http_port}"),
            Duration::from_secs(60),
            Readyz::ready,
        )
        .await;
        assert!(
            ready.is_ok(),
            "writer not ready ({ready:?}):\n{}",
            me.log_text()
        );
        me
    }

    /// Produces tick rows `range` to the writer's topic and waits for Kafka's acks.
    fn produce(&self, range: std::ops::Range<u64>) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .create()
            .unwrap();
        for i in range {
            let payload = tick_row("k8s-auth", i, self.t0);
            producer
                .send(
                    BaseRecord::to(&format!("{}tick_market_data", self.prefix))
                        .key("AAPL")
                        .payload(&payload),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_k8s_clickhouse_users_let_the_writer_write_the_analyst_read_and_nobody_else_in() {
    let ch = PrivateClickHouse::start().await;

    // Nobody from elsewhere: not the image's default user, not the writer with its password.
    let e = ch
        .query(ELSEWHERE, "default", "", "SELECT 1")
        .await
        .unwrap_err();
    assert!(e.contains("not allowed to connect"), "{e}");
    let e = ch
        .query(ELSEWHERE, "marketlane_writer", WRITER_PASSWORD, "SELECT 1")
        .await
        .unwrap_err();
    assert!(e.contains("not allowed to connect"), "{e}");
    // Wrong passwords are refused.
    for user in ["marketlane_writer", "analyst"] {
        let e = ch
            .query(LOOPBACK, user, "guess", "SELECT 1")
            .await
            .unwrap_err();
        assert!(e.contains("Wrong password"), "{user}: {e}");
    }

    // The writer runs as its user and password: tables, rows, and its offsets.
    let mut writer = RunningWriter::start(&ch).await;
    let prefix = writer.prefix.clone();
    const N: u64 = 50;
    writer.produce(0..N);
    let count = |sql: &'static str| {
        let ch = &ch;
        async move {
            ch.query(LOOPBACK, "analyst", ANALYST_PASSWORD, sql)
                .await
                .map(|t| t.trim().parse::<u64>().unwrap_or(0))
        }
    };
    let landed = eventually(Duration::from_secs(60), || async {
        count("SELECT count() FROM marketlane.tick_market_data FINAL").await == Ok(N)
    })
    .await;
    writer.proc.terminate();
    let text = writer.log_text();
    assert!(landed, "rows did not land as the writer user:\n{text}");
    let offsets = ch
        .query(
            LOOPBACK,
            "marketlane_writer",
            WRITER_PASSWORD,
            &format!(
                "SELECT max(max_offset) FROM marketlane_state.writer_offsets WHERE topic = '{prefix}tick_market_data'"
            ),
        )
        .await;
    assert_eq!(
        offsets.map(|s| s.trim().to_string()),
        Ok((N - 1).to_string()),
        "the writer's offsets"
    );
    assert!(
        !text.contains("insert failed"),
        "the writer had failed inserts as its user:\n{text}"
    );

    // The analyst reads `marketlane` only, and only reads.
    let refused = [
        "SELECT count() FROM marketlane_state.writer_offsets",
        "INSERT INTO marketlane.tick_market_data (row_id) VALUES ('x')",
        "CREATE TABLE marketlane.mine (a UInt8) ENGINE = Memory",
        "DROP TABLE marketlane.tick_market_data",
    ];
    for sql in refused {
        let r = ch.query(LOOPBACK, "analyst", ANALYST_PASSWORD, sql).await;
        assert!(r.is_err(), "the analyst may not run {sql}: {r:?}");
    }
    assert_eq!(
        count("SELECT count() FROM marketlane.tick_market_data_snapshot FINAL").await,
        Ok(1)
    );
    // The ops login stays possible from inside the ClickHouse pod.
    assert!(ch.query(LOOPBACK, "default", "", "SELECT 1").await.is_ok());
}

/// A writer whose grants are taken away while it runs does not retry inside its handler for
/// ever: ClickHouse's refusal fails the writer actor, the supervisor restarts it, and as the
/// refusal persists it escalates: the daemon exits non-zero (Kubernetes restarts the pod, and
/// the crash loop is visible). The rows it could not store stay in Kafka, uncommitted.
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_whose_grants_are_revoked_fails_and_the_daemon_escalates() {
    let ch = PrivateClickHouse::start().await;
    let mut writer = RunningWriter::start(&ch).await;
    writer.produce(0..10);
    let stored = || async {
        ch.query(
            LOOPBACK,
            "analyst",
            ANALYST_PASSWORD,
            "SELECT count() FROM marketlane.tick_market_data FINAL",
        )
        .await
        .map(|t| t.trim().parse::<u64>().unwrap_or(0))
    };
    let landed = eventually(Duration::from_secs(60), || async {
        stored().await == Ok(10)
    })
    .await;
    assert!(landed, "rows did not land:\n{}", writer.log_text());

    // Revoke the writer's use of marketlane_state (its offsets), as a mistaken grant change
    // would, and wait until the server has reloaded its users.
    let xml = k8s_users_xml().replacen("<database>marketlane_state</database>", "", 1);
    std::fs::write(ch.users_d().join("marketlane-users.xml"), xml).unwrap();
    let revoked = eventually(Duration::from_secs(60), || async {
        ch.query(
            LOOPBACK,
            "marketlane_writer",
            WRITER_PASSWORD,
            "SELECT count() FROM marketlane_state.writer_offsets",
        )
        .await
        .is_err()
    })
    .await;
    assert!(revoked, "the server did not reload the changed users file");
    writer.produce(10..20);

    // Restarts cannot cure a refusal: the supervisor escalates and the daemon exits.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = writer.proc.0.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let text = writer.log_text();
    writer.proc.terminate();
    let status = status.unwrap_or_else(|| panic!("the daemon still runs:\n{text}"));
    assert!(!status.success(), "exit {status}:\n{text}");
    assert!(
        text.contains("clickhouse refused writer"),
        "the failure names the refusal:\n{text}"
    );
    let restarts = text.matches("restarting").count();
    println!("refused writer: daemon exited with {status} after {restarts} restart log lines");
    // The second lot was never stored, so it is still in Kafka for the next start.
    assert_eq!(stored().await, Ok(10));
}
