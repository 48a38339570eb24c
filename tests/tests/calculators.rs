//! The rolling calculators on the real stack: the golden rows go into fresh Kafka topics, the
//! daemon (role `calculator`) computes the indicators, and Redis ends up with the golden values,
//! with expiry and per-team ACLs. The daemon is SIGKILLed mid-stream and restarted: the values
//! equal those of an uninterrupted run (the golden ones).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use fred::prelude::*;
use marketlane_actors::calculator::acl::sha256_hex;
use marketlane_tests::config::DaemonConfig;
use marketlane_tests::redis::redis_url;
use marketlane_tests::{
    Proc, eventually, free_port, kafka_bootstrap, kafka_payloads, run_marketlane, unique,
    workspace_root,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::json;

const T0: i64 = 1_767_225_600_000_000_000;
const S: i64 = 1_000_000_000;
/// The daemon is killed after this many input lines (see tests/golden/calculators/README.md).
const SPLIT: usize = 13;

#[derive(Deserialize)]
struct Expected {
    #[serde(rename = "final")]
    finals: Vec<Final>,
}

#[derive(Deserialize, Debug)]
struct Final {
    team: String,
    indicator: String,
    symbol: String,
    as_of_secs: i64,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    empty: bool,
}

fn golden() -> std::path::PathBuf {
    workspace_root().join("tests/golden/calculators")
}

/// The golden input lines and the values they end in.
fn golden_input() -> (Vec<String>, Expected) {
    let lines = std::fs::read_to_string(golden().join("input.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    let expected =
        toml::from_str(&std::fs::read_to_string(golden().join("expected.toml")).unwrap()).unwrap();
    (lines, expected)
}

/// `marketlane redis-acl --apply` for the daemon of `config`: its own and the teams' users.
fn apply_acls(config: &Path) {
    let out = run_marketlane(
        &["redis-acl", "--config", config.to_str().unwrap(), "--apply"],
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "redis-acl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn redis(user: Option<(&str, &str)>) -> anyhow::Result<Client> {
    let mut config = Config::from_url(&redis_url())?;
    if let Some((u, p)) = user {
        config.username = Some(u.into());
        config.password = Some(p.into());
    }
    let client = Builder::from_config(config).build()?;
    client.init().await?;
    Ok(client)
}

struct Setup {
    prefix: String,
    key_prefix: String,
    daemon: DaemonConfig,
    /// Where `daemon` is written.
    config: std::path::PathBuf,
    group: String,
    passwords: HashMap<&'static str, String>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    setup_with(&redis_url(), None)
}

/// `redis`: the URL the daemon writes to; `user`: (user, password) instead of its own ACL user.
fn setup_with(redis: &str, user: Option<(&str, &str)>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let id = unique("c");
    let prefix = format!("{id}_");
    let key_prefix = id.replace('_', "-");
    let group = format!("{id}_calc");
    let passwords: HashMap<&'static str, String> = [
        ("daemon", format!("d-{id}")),
        ("alpha", format!("a-{id}")),
        ("beta", format!("b-{id}")),
    ]
    .into();
    // The golden specs with each team's own password.
    let mut specs: toml::Table =
        toml::from_str(&std::fs::read_to_string(golden().join("specs.toml")).unwrap()).unwrap();
    let mut teams = specs.remove("teams").unwrap();
    for team in teams.as_array_mut().unwrap() {
        let team = team.as_table_mut().unwrap();
        let name = team["name"].as_str().unwrap().to_string();
        team.insert(
            "password_sha256".into(),
            sha256_hex(&passwords[name.as_str()]).into(),
        );
    }
    let calculators = json!({
        "group_id": group,
        "coalesce_interval": 0.05,
        "checkpoint_interval": 0.5,
        "key_ttl": 600,
        "publish": true,
        "redis": {
            "url": redis,
            "user": user.map_or(format!("{key_prefix}-daemon"), |u| u.0.to_string()),
            "password": user.map_or(passwords["daemon"].clone(), |u| u.1.to_string()),
            "key_prefix": key_prefix,
        },
        "teams": teams,
    });
    // A calculator-only pod: no gateway, ClickHouse or schemas.
    let mut daemon = DaemonConfig::new("http://unused", dir.path())
        .without(&[
            "schemas_dir",
            "drain_deadline_secs",
            "ib",
            "clickhouse",
            "writer",
        ])
        .with_toml("kafka.partitions", 3)
        .with_toml(
            "calculators",
            toml::Value::try_from(calculators).expect("calculators as TOML"),
        );
    daemon.instance = "calc-test".into();
    daemon.roles = vec!["calculator".into()];
    daemon.control_socket = dir.path().join("ctl.sock");
    daemon.kafka_prefix = prefix.clone();
    let config = daemon.write(&dir.path().join("marketlane.toml"));
    Setup {
        prefix,
        key_prefix,
        daemon,
        config,
        group,
        passwords,
        _dir: dir,
    }
}

/// Produces input lines `range` to their category topics, keyed by symbol.
async fn produce(prefix: &str, lines: &[String]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let topic = if v.get("l2_time").is_some() {
            format!("{prefix}l2_market_data")
        } else {
            format!("{prefix}tick_market_data")
        };
        let key = v["symbol_identifier"].as_str().unwrap().to_string();
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(line),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Sum of the offsets `group` committed on `topic`.
fn committed(group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .map(|t| {
            t.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// AUTH then `command` over a plain connection; what Redis answered within a second.
async fn raw(user: &str, password: &str, command: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = std::env::var("ML_REDIS_PORT").unwrap_or_else(|_| "6379".into());
    let mut conn = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    conn.write_all(format!("AUTH {user} {password}\r\n{command}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, conn.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn spawn(config: &Path, log: &Path) -> Proc {
    Proc::spawn(&["run", "--config", config.to_str().unwrap()], log).unwrap()
}

async fn hash(admin: &Client, key: &str) -> HashMap<String, String> {
    admin.hgetall(key).await.unwrap_or_default()
}

fn matches(h: &HashMap<String, String>, f: &Final) -> bool {
    if h.get("as_of").and_then(|s| s.parse::<i64>().ok()) != Some(T0 + f.as_of_secs * S) {
        return false;
    }
    let Some(v) = h.get("value") else {
        return false;
    };
    if f.empty {
        return v.is_empty();
    }
    match (v.parse::<f64>(), f.value) {
        (Ok(got), Some(want)) => (got - want).abs() < 1e-9,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calculators_write_the_golden_values_with_ttl_and_acls_across_a_restart() {
    let s = setup();
    let (lines, expected) = golden_input();
    apply_acls(&s.config);
    let admin = redis(None).await.unwrap();
    let key = |team: &str, ind: &str, sym: &str| format!("{}:{team}:{ind}:{sym}", s.key_prefix);
    let logs = tempfile::tempdir().unwrap();

    // Run 1: the first part of the input, until its values are in Redis and checkpointed.
    let mut daemon = spawn(&s.config, &logs.path().join("run1.log"));
    let tick_topic = format!("{}tick_market_data", s.prefix);
    // The daemon creates the topics; wait for them before producing.
    assert!(
        eventually(Duration::from_secs(60), || async {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", kafka_bootstrap())
                .create()
                .unwrap();
            c.fetch_metadata(Some(&tick_topic), Duration::from_secs(2))
                .map(|m| m.topics().iter().any(|t| t.partitions().len() == 3))
                .unwrap_or(false)
        })
        .await,
        "topics not created: {}",
        std::fs::read_to_string(logs.path().join("run1.log")).unwrap_or_default()
    );
    produce(&s.prefix, &lines[..SPLIT]).await;
    let ticks_in_part1 = lines[..SPLIT]
        .iter()
        .filter(|l| l.contains("\"tick_time\""))
        .count() as i64;
    let first = key("alpha", "vwap_60s", "AAPL");
    assert!(
        eventually(Duration::from_secs(60), || async {
            hash(&admin, &first).await.get("value").map(String::as_str)
                == Some("101.33333333333333")
                && committed(&s.group, &tick_topic) == ticks_in_part1
        })
        .await,
        "part 1 not computed and checkpointed: {:?}, committed {}\nstatus (consumers, workers): {}\n{}",
        hash(&admin, &first).await,
        committed(&s.group, &tick_topic),
        // Where a stalled run stopped: the consumers' positions and the workers' counts.
        ctl_status(&s.daemon.control_socket)
            .await
            .map(|v| v["actors"].to_string())
            .unwrap_or_default(),
        std::fs::read_to_string(logs.path().join("run1.log")).unwrap_or_default()
    );
    // SIGKILL mid-stream.
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();

    // A team subscribes to its channel before the rest arrives.
    let alpha_pw = s.passwords["alpha"].clone();
    let alpha_user = format!("{}-team-alpha", s.key_prefix);
    let alpha_sub = redis(Some((&alpha_user, &alpha_pw))).await.unwrap();
    let mut messages = alpha_sub.message_rx();
    alpha_sub
        .subscribe(format!("{}:alpha:updates", s.key_prefix))
        .await
        .unwrap();

    // Run 2: the rest of the input (new values and a replayed range).
    produce(&s.prefix, &lines[SPLIT..]).await;
    let _daemon = spawn(&s.config, &logs.path().join("run2.log"));
    let all_final = eventually(Duration::from_secs(60), || async {
        for f in &expected.finals {
            if !matches(
                &hash(&admin, &key(&f.team, &f.indicator, &f.symbol)).await,
                f,
            ) {
                return false;
            }
        }
        true
    })
    .await;
    if !all_final {
        for f in &expected.finals {
            let h = hash(&admin, &key(&f.team, &f.indicator, &f.symbol)).await;
            eprintln!("{f:?} → {h:?} ok={}", matches(&h, f));
        }
        panic!(
            "values differ from the golden ones\n{}",
            std::fs::read_to_string(logs.path().join("run2.log")).unwrap_or_default()
        );
    }

    // Layout and expiry.
    for f in &expected.finals {
        let k = key(&f.team, &f.indicator, &f.symbol);
        let h = hash(&admin, &k).await;
        for field in ["value", "as_of", "window", "computed_at", "unit", "kind"] {
            assert!(h.contains_key(field), "{k}: no {field} in {h:?}");
        }
        let ttl: i64 = admin.ttl(&k).await.unwrap();
        assert!(ttl > 0 && ttl <= 600, "{k}: ttl {ttl}");
    }
    assert_eq!(
        hash(&admin, &key("alpha", "vwap_60s", "AAPL")).await["window"],
        "60s"
    );

    // The team's channel carried updates.
    let msg = tokio::time::timeout(Duration::from_secs(10), messages.recv())
        .await
        .expect("an update on the team channel")
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&msg.value.as_string().unwrap_or_default()).unwrap();
    assert!(
        body["key"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:alpha:", s.key_prefix)),
        "{body}"
    );

    // ACLs: alpha reads its own keys only, writes nothing, and may not listen to beta.
    let alpha = redis(Some((&alpha_user, &alpha_pw))).await.unwrap();
    let own: HashMap<String, String> = alpha
        .hgetall(key("alpha", "vwap_60s", "AAPL"))
        .await
        .unwrap();
    assert!(!own.is_empty());
    let denied: Result<HashMap<String, String>, _> =
        alpha.hgetall(key("beta", "mid", "CLZ6")).await;
    assert!(
        denied.unwrap_err().to_string().contains("NOPERM"),
        "alpha read beta's key"
    );
    let write: Result<i64, _> = alpha
        .hset(key("alpha", "vwap_60s", "AAPL"), ("value", "0"))
        .await;
    assert!(write.is_err(), "alpha could write");
    // fred does not surface a refused SUBSCRIBE; ask over a plain connection.
    let refused = raw(
        &alpha_user,
        &alpha_pw,
        &format!("SUBSCRIBE {}:beta:updates", s.key_prefix),
    )
    .await;
    assert!(
        refused.contains("NOPERM"),
        "alpha subscribed to beta's channel: {refused}"
    );
    let allowed = raw(
        &alpha_user,
        &alpha_pw,
        &format!("SUBSCRIBE {}:alpha:updates", s.key_prefix),
    )
    .await;
    assert!(
        allowed.contains("subscribe") && !allowed.contains("NOPERM"),
        "{allowed}"
    );
    let beta_user = format!("{}-team-beta", s.key_prefix);
    let beta = redis(Some((&beta_user, &s.passwords["beta"])))
        .await
        .unwrap();
    let mid: HashMap<String, String> = beta.hgetall(key("beta", "mid", "CLZ6")).await.unwrap();
    assert_eq!(mid["value"], "69.95");
    let wrong = redis(Some((&beta_user, "not-the-password"))).await;
    assert!(wrong.is_err(), "a wrong password was accepted");

    // Every value also went to Kafka as an indicators_market_data row (produced independently
    // of the Redis write, so maybe after it).
    let indicator_rows = || -> Vec<serde_json::Value> {
        kafka_payloads(&format!("{}indicators_market_data", s.prefix))
            .unwrap()
            .iter()
            .map(|p| serde_json::from_slice(p).unwrap())
            .collect()
    };
    let is_final_vwap = |r: &serde_json::Value| {
        r["indicator_identifier"] == "alpha:vwap_60s"
            && r["symbol_identifier"] == "AAPL"
            && r["market_event_time"] == T0 + 70 * S
    };
    eventually(Duration::from_secs(30), || async {
        indicator_rows().iter().any(is_final_vwap)
    })
    .await;
    let rows = indicator_rows();
    let vwap = rows
        .iter()
        .find(|r| is_final_vwap(r))
        .unwrap_or_else(|| panic!("no final vwap row among {} rows", rows.len()));
    assert!((vwap["indicator_value"].as_f64().unwrap() - 102.14285714285714).abs() < 1e-9);
    assert_eq!(vwap["source_system_name"], "marketlane");
    assert_eq!(vwap["indicator_type"], "moving_average");

    // Clean up what lives outside the test's prefix namespace: the ACL users and the keys.
    for c in [&alpha, &beta, &alpha_sub] {
        let _ = c.quit().await;
    }
    let keys: Vec<String> = expected
        .finals
        .iter()
        .map(|f| key(&f.team, &f.indicator, &f.symbol))
        .collect();
    let _: i64 = admin.del(keys).await.unwrap_or(0);
    let users = [
        format!("{}-daemon", s.key_prefix),
        alpha_user.clone(),
        beta_user.clone(),
    ];
    let mut args = vec!["DELUSER".to_string()];
    args.extend(users);
    let _: i64 = admin
        .custom(
            fred::types::CustomCommand::new_static("ACL", None, false),
            args,
        )
        .await
        .unwrap_or(0);
}

/// Failure row 9: Redis is down while the rows arrive. The daemon keeps its windows and the
/// pending values, retries, and writes the golden values once Redis is there.
#[tokio::test(flavor = "multi_thread")]
async fn values_reach_redis_once_it_comes_back() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let s = setup_with(&url, Some(("default", "")));
    let (lines, expected) = golden_input();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("run.log");
    let mut daemon = spawn(&s.config, &log);
    let tick_topic = format!("{}tick_market_data", s.prefix);
    assert!(
        eventually(Duration::from_secs(60), || async {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", kafka_bootstrap())
                .create()
                .unwrap();
            c.fetch_metadata(Some(&tick_topic), Duration::from_secs(2))
                .map(|m| m.topics().iter().any(|t| t.partitions().len() == 3))
                .unwrap_or(false)
        })
        .await
    );
    produce(&s.prefix, &lines).await;
    // Redis is down: the values wait, nothing is committed, the daemon stays up.
    let failed = eventually(Duration::from_secs(30), || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("redis write failed"))
    })
    .await;
    assert!(daemon.0.try_wait().unwrap().is_none(), "daemon exited");
    assert_eq!(committed(&s.group, &tick_topic), 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(failed, "{text}");
    let data = tempfile::tempdir().unwrap();
    let mut redis_server = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(data.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let admin = async {
        for _ in 0..50 {
            let mut c = Config::from_url(&url).unwrap();
            c.fail_fast = true;
            if let Ok(client) = Builder::from_config(c).build()
                && client.init().await.is_ok()
            {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not start");
    }
    .await;
    let key = |f: &Final| format!("{}:{}:{}:{}", s.key_prefix, f.team, f.indicator, f.symbol);
    let ok = eventually(Duration::from_secs(30), || async {
        for f in &expected.finals {
            if !matches(&hash(&admin, &key(f)).await, f) {
                return false;
            }
        }
        committed(&s.group, &tick_topic) > 0
    })
    .await;
    let _ = redis_server.kill();
    let _ = redis_server.wait();
    assert!(
        ok,
        "values not written after Redis came back\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The `status` of the daemon listening on `socket` (its `result`).
async fn ctl_status(socket: &Path) -> Option<serde_json::Value> {
    ctl(socket, "status", serde_json::Value::Null)
        .await
        .map(|v| v["result"].clone())
}

/// Partitions of `topic` the calculator consumer of the daemon on `socket` holds.
async fn held_partitions(socket: &Path, topic: &str) -> Vec<i64> {
    let Some(status) = ctl_status(socket).await else {
        return Vec::new();
    };
    let mut held: Vec<i64> = status["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"]["topic"] == topic && a["state"]["group_instance"].is_string())
        .flat_map(|a| {
            a["state"]["positions"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(p, _)| p.parse().ok())
                .collect::<Vec<i64>>()
        })
        .collect();
    held.sort_unstable();
    held
}

/// Every value one engine computes, fed the input in order and evaluated after each row:
/// (key suffix `team:indicator:symbol`, as_of) → the values it takes (rows of the same event
/// time change a value without moving its as_of). A pod that refills correctly writes only
/// values of this set, whatever prefix of a symbol's rows it has seen.
fn single_engine_values(lines: &[String]) -> HashMap<(String, i64), Vec<Option<f64>>> {
    use marketlane_actors::calculator::CalculatorConfig;
    use marketlane_actors::calculator::config::TeamConfig;
    use marketlane_actors::calculator::consumer::parse;
    use marketlane_actors::calculator::engine::Engine;
    #[derive(Deserialize)]
    struct Teams {
        teams: Vec<TeamConfig>,
    }
    let teams: Teams =
        toml::from_str(&std::fs::read_to_string(golden().join("specs.toml")).unwrap()).unwrap();
    let config = CalculatorConfig {
        teams: teams.teams,
        ..Default::default()
    };
    let mut engine = Engine::new(std::sync::Arc::new(config.compile().unwrap()));
    let schemas =
        marketlane_protocol::SchemaSet::load_dir(&workspace_root().join("schemas")).unwrap();
    let mut out = HashMap::new();
    for line in lines {
        let category = if line.contains("\"l2_time\"") {
            "l2_market_data"
        } else {
            "tick_market_data"
        };
        let row = parse(schemas.get(category).unwrap(), line.as_bytes()).unwrap();
        let (_, touched) = engine.apply(&row);
        for i in touched {
            let spec = &engine.specs()[i];
            let id = format!("{}:{}:{}", spec.team, spec.name, row.symbol());
            if let Some(v) = engine.evaluate(i, row.symbol()) {
                out.entry((id, v.as_of))
                    .or_insert_with(Vec::new)
                    .push(v.value);
            }
        }
    }
    out
}

/// Two calculator pods split the partitions (a consumer group) and write exactly the golden
/// values one pod writes; one is SIGKILLed mid-stream, the other takes its partitions over
/// (refilling their windows from the look-back first), and every value either pod ever wrote
/// (their PUBLISHed updates) is one a single engine computes on the same input.
#[tokio::test(flavor = "multi_thread")]
async fn two_calculator_pods_split_the_partitions_and_one_takes_over_after_a_kill() {
    let s = setup();
    let (lines, expected) = golden_input();
    let possible = single_engine_values(&lines);
    apply_acls(&s.config);
    // Pod b: the same lane, its own name (static member id), port and control socket; a short
    // session timeout so that the kill moves the partitions quickly.
    let dir = s.config.parent().unwrap();
    let pod_a = s.daemon.clone().with_toml("calculators.session_timeout", 6);
    pod_a.write(&s.config);
    let sock_a = pod_a.control_socket.clone();
    let mut pod_b = pod_a.sharing("calc-test-b", dir);
    pod_b.control_socket = dir.join("ctl-b.sock");
    let sock_b = pod_b.control_socket.clone();
    let config_b = pod_b.write(&dir.join("pod-b.toml"));

    let admin = redis(None).await.unwrap();
    // Room for every update of the run: a lagging receiver would lose some unchecked.
    let updates = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .with_performance_config(|p| p.broadcast_channel_capacity = 100_000)
        .build()
        .unwrap();
    updates.init().await.unwrap();
    let mut messages = updates.message_rx();
    for team in ["alpha", "beta"] {
        updates
            .subscribe(format!("{}:{team}:updates", s.key_prefix))
            .await
            .unwrap();
    }
    let logs = tempfile::tempdir().unwrap();
    let log_a = logs.path().join("a.log");
    let log_b = logs.path().join("b.log");
    let mut pod_a = spawn(&s.config, &log_a);
    let _pod_b = spawn(&config_b, &log_b);
    let tick_topic = format!("{}tick_market_data", s.prefix);
    let logs_of = || {
        format!(
            "--- a\n{}\n--- b\n{}",
            std::fs::read_to_string(&log_a).unwrap_or_default(),
            std::fs::read_to_string(&log_b).unwrap_or_default()
        )
    };
    // Both pods hold a share of the tick topic's three partitions before any row arrives.
    let split = eventually(Duration::from_secs(90), || async {
        let a = held_partitions(&sock_a, &tick_topic).await;
        let b = held_partitions(&sock_b, &tick_topic).await;
        !a.is_empty() && !b.is_empty() && a.len() + b.len() == 3
    })
    .await;
    assert!(
        split,
        "partitions not split: a {:?} b {:?}\n{}",
        held_partitions(&sock_a, &tick_topic).await,
        held_partitions(&sock_b, &tick_topic).await,
        logs_of()
    );
    let held_by_a = held_partitions(&sock_a, &tick_topic).await;

    produce(&s.prefix, &lines[..SPLIT]).await;
    let ticks_in_part1 = lines[..SPLIT]
        .iter()
        .filter(|l| l.contains("\"tick_time\""))
        .count() as i64;
    let key = |team: &str, ind: &str, sym: &str| format!("{}:{team}:{ind}:{sym}", s.key_prefix);
    let first = key("alpha", "vwap_60s", "AAPL");
    assert!(
        eventually(Duration::from_secs(60), || async {
            hash(&admin, &first).await.get("value").map(String::as_str)
                == Some("101.33333333333333")
                && committed(&s.group, &tick_topic) == ticks_in_part1
        })
        .await,
        "part 1 not computed and checkpointed by the two pods\n{}",
        logs_of()
    );

    // SIGKILL pod a mid-stream; the rest of the input arrives while its partitions move.
    let _ = pod_a.0.kill();
    let _ = pod_a.0.wait();
    produce(&s.prefix, &lines[SPLIT..]).await;
    let taken_over = eventually(Duration::from_secs(90), || async {
        held_partitions(&sock_b, &tick_topic).await.len() == 3
    })
    .await;
    assert!(
        taken_over,
        "pod b did not take a's partitions {held_by_a:?}\n{}",
        logs_of()
    );
    let all_final = eventually(Duration::from_secs(60), || async {
        for f in &expected.finals {
            if !matches(
                &hash(&admin, &key(&f.team, &f.indicator, &f.symbol)).await,
                f,
            ) {
                return false;
            }
        }
        true
    })
    .await;
    if !all_final {
        for f in &expected.finals {
            let h = hash(&admin, &key(&f.team, &f.indicator, &f.symbol)).await;
            eprintln!("{f:?} → {h:?} ok={}", matches(&h, f));
        }
        panic!("values differ from the golden ones\n{}", logs_of());
    }

    // Every value written by either pod, before and after the kill, is one the single engine
    // computes: no value from a partly refilled window.
    let mut seen = 0;
    while let Ok(msg) = tokio::time::timeout(Duration::from_secs(2), messages.recv()).await {
        let msg = msg.expect("no update lost by the subscriber");
        let body: serde_json::Value =
            serde_json::from_str(&msg.value.as_string().unwrap_or_default()).unwrap();
        let k = body["key"].as_str().unwrap();
        let id = k.strip_prefix(&format!("{}:", s.key_prefix)).unwrap();
        let as_of = body["as_of"].as_i64().unwrap();
        let got = body["value"].as_f64();
        let want = possible.get(&(id.to_string(), as_of));
        let same = want.into_iter().flatten().any(|w| match (w, got) {
            (Some(w), Some(g)) => (w - g).abs() < 1e-9,
            (None, None) => true,
            _ => false,
        });
        assert!(
            same,
            "{k} at {as_of}: a pod wrote {got:?}, one engine computes {want:?}\n{}",
            logs_of()
        );
        seen += 1;
    }
    assert!(seen >= expected.finals.len(), "only {seen} updates seen");
}

/// One control-socket request `cmd` with `args` to the daemon on `socket`: the whole reply.
async fn ctl(socket: &Path, cmd: &str, args: serde_json::Value) -> Option<serde_json::Value> {
    marketlane_tests::daemon::ctl_at(socket, cmd, args)
        .await
        .ok()
}

/// A partition that goes silent while Kafka holds rows for it (librdkafka lost the resume:
/// the control `fault` kind `stall` pauses the tick consumer's partitions behind its back) is
/// found by the consumer's stall check, resumed and read again: the second half of the golden
/// input still ends in the golden values, and the stall is counted. Without the check the tick
/// values would stay at those of the first half.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_partition_is_found_and_read_again() {
    let s = setup();
    s.daemon
        .clone()
        .with_toml("control.allow_fault_injection", true)
        .with_toml("calculators.stall_after", 2)
        .write(&s.config);
    let (lines, expected) = golden_input();
    apply_acls(&s.config);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("run.log");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut daemon = spawn(&s.config, &log);
    let socket = s.daemon.control_socket.clone();
    let tick_topic = format!("{}tick_market_data", s.prefix);
    let held = eventually(Duration::from_secs(60), || async {
        held_partitions(&socket, &tick_topic).await.len() == 3
    })
    .await;
    assert!(
        held,
        "the tick consumer never held its partitions\n{}",
        text()
    );
    produce(&s.prefix, &lines[..SPLIT]).await;
    let first = eventually(Duration::from_secs(30), || async {
        committed(&s.group, &tick_topic) > 0
    })
    .await;
    assert!(first, "no checkpoint after the first rows\n{}", text());

    let reply = ctl(
        &socket,
        "fault",
        json!({"actor": "calculator_consumer_tick_market_data", "kind": "stall"}),
    )
    .await
    .expect("ctl fault");
    assert_eq!(reply["ok"], true, "{reply}");
    produce(&s.prefix, &lines[SPLIT..]).await;

    let admin = redis(None).await.unwrap();
    let key = |f: &Final| format!("{}:{}:{}:{}", s.key_prefix, f.team, f.indicator, f.symbol);
    let ok = eventually(Duration::from_secs(45), || async {
        for f in &expected.finals {
            if !matches(&hash(&admin, &key(f)).await, f) {
                return false;
            }
        }
        true
    })
    .await;
    let scrape = marketlane_tests::daemon::scrape_metrics(&s.daemon.http_addr())
        .await
        .expect("the calculator's /metrics");
    // A process of one role runs one worker by default, not one per CPU.
    let workers = scrape.get("marketlane_runtime_worker_threads");
    let stalls = scrape.sum_with(
        "marketlane_consumer_stalls_total",
        &format!("topic=\"{tick_topic}\""),
    );
    let status = ctl_status(&socket).await;
    daemon.terminate();
    assert!(
        ok,
        "the golden values were not reached after the stall\n{status:#?}\n{}",
        text()
    );
    assert!(stalls >= 1.0, "no stall counted ({stalls})\n{}", text());
    assert_eq!(workers, 1.0, "worker threads of a calculator-only process");
}
