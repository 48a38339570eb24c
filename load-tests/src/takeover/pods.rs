//! The takeover's processes: a pod (a daemon) with its status watch, and the configs of the
//! pods and of the writer.

use crate::live::Env;
use crate::procs::{self, Proc};
use crate::prom::Scrape;
use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use super::{COOKIE, LIMIT, USERS};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One daemon process of a fixed config, restartable (logs `<name>-<n>.log`).
pub(super) struct Pod {
    pub(super) name: String,
    pub(super) config: PathBuf,
    /// Where its metrics listen (the pod's own address inside a network namespace).
    pub(super) host: String,
    /// The network namespace it runs in (cut-link runs).
    pub(super) ns: Option<String>,
    pub(super) http: u16,
    pub(super) sock: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) proc: Option<Proc>,
    pub(super) runs: u32,
}

impl Pod {
    pub(super) fn start(&mut self, env: &Env) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{}-{}.log", self.name, self.runs));
        self.runs += 1;
        let run = [
            "run".to_string(),
            "--config".into(),
            self.config.display().to_string(),
        ];
        self.proc = Some(match &self.ns {
            // `ip netns exec` execs the daemon: signals reach it.
            Some(ns) => {
                let mut args = vec!["netns".into(), "exec".into(), ns.clone()];
                args.push(env.bin.display().to_string());
                args.extend(run);
                Proc::spawn(Path::new("ip"), &self.name, &args, &log)?
            }
            None => Proc::spawn(&env.bin, &self.name, &run, &log)?,
        });
        Ok(())
    }

    pub(super) fn exited(&mut self) -> bool {
        self.proc.as_mut().is_none_or(Proc::exited)
    }

    /// SIGKILL (the child's own `kill`, no helper process) and reap.
    pub(super) fn sigkill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    pub(super) async fn scrape(&self, http: &reqwest::Client) -> Option<Scrape> {
        let r = http
            .get(format!("http://{}:{}/metrics", self.host, self.http))
            .timeout(Duration::from_millis(800))
            .send()
            .await
            .ok()?;
        Some(Scrape::parse(&r.text().await.ok()?))
    }

    pub(super) async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<f64> {
        Some(self.scrape(http).await?.sum(name, |_| true))
    }

    /// `ctl status` over the control socket: the `result.cluster` object.
    pub(super) async fn cluster(&self) -> Option<Value> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let ask = async {
            let mut s = tokio::net::UnixStream::connect(&self.sock).await.ok()?;
            s.write_all(b"{\"v\":1,\"id\":1,\"cmd\":\"status\",\"args\":{}}\n")
                .await
                .ok()?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).await.ok()?;
            let mut v: Value = serde_json::from_str(&line).ok()?;
            Some(v["result"]["cluster"].take())
        };
        tokio::time::timeout(Duration::from_secs(5), ask)
            .await
            .ok()
            .flatten()
            .filter(|c| c.is_object())
    }
}

pub(super) fn set(v: &Value, key: &str) -> BTreeSet<String> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The newest tick row of every (instance, symbol) in the tick topic, by event time (ns), as a
/// consumer sees them.
#[derive(Default)]
pub(super) struct Watch {
    pub(super) latest: Mutex<HashMap<(String, String), i64>>,
    pub(super) stop: AtomicBool,
}

impl Watch {
    /// Does `instance` have a row of every symbol of `which` newer than `after_ns`?
    pub(super) fn all_from(&self, instance: &str, which: &BTreeSet<String>, after_ns: i64) -> bool {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        which.iter().all(|s| {
            latest
                .get(&(instance.to_string(), s.clone()))
                .is_some_and(|t| *t > after_ns)
        })
    }

    /// The newest event time of any row (ns).
    pub(super) fn newest(&self) -> Option<i64> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.values().copied().max()
    }
}

/// Reads `topic` from its end on a thread until `watch.stop`: every row's instance, symbol and
/// event time.
pub(super) fn spawn_watch(
    bootstrap: &str,
    group: &str,
    topic: &str,
    watch: Arc<Watch>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "1")
        .create()?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("metadata of the tick topic")?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::End)?;
        }
    }
    if tpl.count() == 0 {
        bail!("topic {topic} has no partitions");
    }
    consumer.assign(&tpl)?;
    Ok(std::thread::spawn(move || {
        while !watch.stop.load(Ordering::Relaxed) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let Some(row) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<Value>(p).ok())
            else {
                continue;
            };
            let (Some(instance), Some(symbol), Some(t)) = (
                row["component_instance_name"].as_str(),
                row["symbol_identifier"].as_str(),
                row["tick_time"].as_i64(),
            ) else {
                continue;
            };
            let mut latest = watch.latest.lock().unwrap_or_else(|e| e.into_inner());
            let e = latest
                .entry((instance.to_string(), symbol.to_string()))
                .or_insert(t);
            *e = (*e).max(t);
        }
    }))
}

/// Polls `check` every `every` until it holds: seconds since `t0`, or `None` after `LIMIT`.
pub(super) async fn until<F, Fut>(t0: Instant, every: Duration, mut check: F) -> Option<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    while t0.elapsed() < LIMIT {
        if check().await {
            return Some(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// Where the pods are: loopback, or each in its own network namespace (cut-link runs).
#[derive(Clone)]
pub(super) struct Addrs {
    /// The gateways (simulator) and ClickHouse as the pods reach them.
    pub(super) host: String,
    pub(super) kafka: String,
    pub(super) ch_url: String,
    pub(super) pods: [String; 2],
}

#[allow(clippy::too_many_arguments)]
pub(super) fn pod_config(
    a: &Addrs,
    i: usize,
    prefix: &str,
    db: &str,
    gw: u16,
    http: u16,
    sock: &Path,
    nodes: [u16; 2],
    symbols: u32,
) -> anyhow::Result<String> {
    let schemas = procs::repo_root().join("schemas").canonicalize()?;
    let peers: Vec<String> = (0..2)
        .map(|j| format!("{}:{}", a.pods[j], nodes[j]))
        .collect();
    let mut s = format!(
        r#"# Written by marketlane-bench (takeover): connector pod {i} of two.
instance = "bench-takeover-{i}"
roles = ["connector"]
schemas_dir = "{schemas}"

[http]
listen = "{me}:{http}"

[control]
socket = "{sock}"

[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"

[clickhouse]
url = "{ch}"
database = "{db}"

[cluster]
enabled = true
port = {port}
bind = "{me}"
advertise_host = "{me}"
peers = {peers:?}
cookie = "{COOKIE}"

[ib]
gateway_url = "http://{host}:{gw}"
usernames = {users:?}

"#,
        schemas = schemas.display(),
        sock = sock.display(),
        kafka = a.kafka,
        ch = a.ch_url,
        port = nodes[i],
        users = USERS,
        me = a.pods[i],
        host = a.host,
    );
    for n in 1..=symbols {
        s.push_str(&format!(
            "[[ib.symbols]]\nsymbol = \"SYM{n:04}\"\nsec_type = \"stock\"\n"
        ));
    }
    Ok(s)
}

pub(super) fn writer_config(
    env: &Env,
    prefix: &str,
    db: &str,
    http: u16,
    sock: &Path,
) -> anyhow::Result<String> {
    Ok(format!(
        r#"# Written by marketlane-bench (takeover): the writer, never killed.
instance = "bench-takeover-writer"
roles = ["writer"]
schemas_dir = "{schemas}"

[http]
listen = "127.0.0.1:{http}"

[control]
socket = "{sock}"

[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"

[clickhouse]
url = "{ch}"
database = "{db}"

[writer]
group_id = "{prefix}writer"
"#,
        schemas = procs::repo_root().join("schemas").canonicalize()?.display(),
        sock = sock.display(),
        kafka = env.kafka,
        ch = env.ch_url,
    ))
}
