//! Two connector pods in their own network namespaces (failure-matrix rows 6 and 12, and a
//! partition): each pod is a `marketlane run` process with its own address on a bridge, its
//! own IB gateway (one simulator process serving two IB users over one market, so both pods
//! see the same trades with the same row ids), and the real Kafka, ClickHouse and Redis of the
//! stack reached over the pod's own link. The pods form a ractor_cluster, split the symbols,
//! and take each other's over. Every test ends with the ledger reconciliation and prints
//! `FAULT-ROW <n> <name> recovery=<secs>s lost=<n> duplicates=<n>` (run with `--nocapture`);
//! recovery times are printed, never asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketlane_actors::cluster::{ClusterConfig, Member, assign};
use marketlane_actors::config::{SecType, SymbolConfig};
use marketlane_protocol::cluster::{CLUSTER_PROTOCOL_VERSION, CONNECTOR_GROUP, Heartbeat};
use marketlane_tests::harness::{
    Daemon, DaemonConfig, Launcher, Reconciliation, Sim, SimBuilder, drop_lane_data,
    fault_row_line, kafka_rows, now_ms, reconcile_ticks, run_dir, stack_shared_lock,
};
use marketlane_tests::netns::{self, Net};
use marketlane_tests::{clickhouse, eventually, free_port, output_within};

const SEED: u64 = 23;
const COOKIE: &str = "cluster-test-cookie-of-32-bytes-or-more";
/// "Never recovered".
const TIMEOUT: Duration = Duration::from_secs(90);
/// Trades a run must have seen before it is reconciled, and of those, after its last fault.
const MIN_TRADES: usize = 150;
const MIN_TRADES_AFTER: usize = 40;
/// Two pods starting on a loaded machine, then the split's handover (up to 30 s).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Whether pods `<prefix>-0` and `<prefix>-1` both get symbols. The names are random, and
/// rendezvous hashing gives all eight symbols to one of two pods in about one start of 128: a
/// valid split, but one that leaves these tests nothing to move, so they draw other names.
fn both_pods_stream(prefix: &str) -> bool {
    let members: Vec<Member> = (0..2)
        .map(|i| Member {
            instance: format!("{prefix}-{i}"),
            line_budget: ClusterConfig::default().line_budget,
        })
        .collect();
    let names: Vec<String> = symbols().into_iter().map(|s| s.symbol).collect();
    let split = assign(&names, &members);
    members
        .iter()
        .all(|m| split.symbols_of(&m.instance).next().is_some())
}

/// The names of a CI run whose start never settled: pod 0 held all eight symbols, pod 1 none.
#[test]
fn names_that_give_one_pod_every_symbol_are_drawn_again() {
    assert!(!both_pods_stream("f18161_751903233"));
    assert!(both_pods_stream("f18161_751903234"));
}

fn symbols() -> Vec<SymbolConfig> {
    let stock = |s: &str| SymbolConfig {
        symbol: s.into(),
        sec_type: SecType::Stock,
        exchange: None,
        depth: false,
    };
    let future = |s: &str, x: &str| SymbolConfig {
        symbol: s.into(),
        sec_type: SecType::Future,
        exchange: Some(x.into()),
        depth: false,
    };
    vec![
        stock("AAPL"),
        stock("XOM"),
        stock("CVX"),
        stock("COP"),
        stock("OXY"),
        stock("SLB"),
        future("CL", "NYMEX"),
        future("GC", "COMEX"),
    ]
}

/// Two pods, their gateways (one simulator, two IB users) and the network between them.
struct Cluster {
    /// A shared hold on the stack lock: no fault row takes a service down under the pods.
    _stack: std::fs::File,
    net: Net,
    sim: Sim,
    pods: Vec<Daemon>,
    started: Instant,
}

impl Cluster {
    async fn start(tag: &str) -> Self {
        let stack = stack_shared_lock(Duration::from_secs(600)).expect("stack lock");
        let dir = run_dir(&format!("cluster_{tag}_"));
        let mut net = Net::new(tag, 2).expect("network namespaces");
        let gw = [free_port(), free_port()];
        let sim = SimBuilder {
            port: Some(gw[0]),
            ..SimBuilder::new(SEED)
        }
        .username("trader-live")
        .args(&[
            "--gateway",
            &format!("127.0.0.1:{}=trader-paper:DU7654321", gw[1]),
        ])
        .spawn(&dir)
        .expect("simulator");
        for port in gw {
            net.expose_host_port(port)
                .expect("gateway reachable from the pods");
        }
        let peers: Vec<String> = (0..2)
            .map(|i| format!("{}:4697", net.pod_addr(i)))
            .collect();
        let base = loop {
            let base = DaemonConfig::new("http://unused", &dir);
            if both_pods_stream(&base.database) {
                break base;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let mut pods = Vec::new();
        for (i, port) in gw.iter().enumerate() {
            let mut c = base.sharing(&format!("{}-{i}", base.database), &dir);
            c.gateway_url = format!("http://{}:{port}", net.host_addr());
            c.symbols = symbols();
            c.http_host = net.pod_addr(i).to_string();
            c.clickhouse_url = net.clickhouse_url_for_pods();
            let c = c
                .with_toml("cluster.enabled", true)
                .with_toml("cluster.advertise_host", net.pod_addr(i).to_string())
                .with_toml("cluster.peers", peers.clone())
                .with_toml("cluster.cookie", COOKIE)
                .with_toml("cluster.heartbeat_timeout", 3.0)
                .ib("usernames", vec!["trader-live", "trader-paper"]);
            let launcher: Launcher = {
                let ns = net.ns_name(i).to_string();
                Arc::new(move |args: &[&str], log: &Path| netns::spawn_in_ns(&ns, args, log))
            };
            pods.push(Daemon::spawn_with(c, &dir, Some(launcher)).expect("pod"));
        }
        let cluster = Self {
            _stack: stack,
            net,
            sim,
            pods,
            started: Instant::now(),
        };
        // Members and data alone can be seen mid-handover (after the start-up grace); the tests
        // read the split right after this, so wait for it to settle too.
        cluster
            .wait_within(
                START_TIMEOUT,
                "both pods see each other, every symbol streams, and the split is settled",
                |c| {
                    Box::pin(async move {
                        c.members_everywhere(2).await
                            && c.all_symbols_stored().await
                            && c.split_settled().await
                    })
                },
            )
            .await;
        cluster
    }

    fn db(&self) -> &str {
        &self.pods[0].config.database
    }

    fn tick_topic(&self) -> String {
        format!("{}tick_market_data", self.pods[0].config.kafka_prefix)
    }

    fn logs(&self) -> String {
        self.pods
            .iter()
            .map(|p| format!("==== {}\n{}", p.config.instance, tail(&p.log(), 60)))
            .collect()
    }

    async fn wait<F>(&self, what: &str, check: F) -> f64
    where
        F: for<'a> Fn(
            &'a Self,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>,
    {
        self.wait_within(TIMEOUT, what, check).await
    }

    async fn wait_within<F>(&self, timeout: Duration, what: &str, check: F) -> f64
    where
        F: for<'a> Fn(
            &'a Self,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>,
    {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if check(self).await {
                return started.elapsed().as_secs_f64();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not within {timeout:?}: {what}\n{}", self.logs());
    }

    async fn members_everywhere(&self, n: usize) -> bool {
        for p in &self.pods {
            if p.metric("marketlane_cluster_members").await != n as f64 {
                return false;
            }
        }
        true
    }

    /// The symbols pod `i` streams by its own account (`ctl status` → cluster.held).
    async fn held(&self, i: usize) -> BTreeSet<String> {
        let Some(cluster) = self.cluster_status(i).await else {
            return BTreeSet::new();
        };
        symbol_list(&cluster["held"])
    }

    /// Pod `i`'s `ctl status` → cluster (`None`: no answer).
    async fn cluster_status(&self, i: usize) -> Option<serde_json::Value> {
        let reply = self.pods[i]
            .ctl("status", serde_json::Value::Null)
            .await
            .ok()?;
        Some(reply["result"]["cluster"].clone()).filter(|c| c.is_object())
    }

    /// Each pod holds a share of its own, the shares are disjoint and cover every symbol, and
    /// neither pod is still handing a symbol over (`held` includes those).
    async fn split_settled(&self) -> bool {
        let mut shares = Vec::new();
        for i in 0..2 {
            let Some(cluster) = self.cluster_status(i).await else {
                return false;
            };
            let held = symbol_list(&cluster["held"]);
            if held.is_empty() || !symbol_list(&cluster["handing_over"]).is_empty() {
                return false;
            }
            shares.push(held);
        }
        let all: BTreeSet<String> = symbols().into_iter().map(|s| s.symbol).collect();
        shares[0].is_disjoint(&shares[1]) && &shares[0] | &shares[1] == all
    }

    async fn stored_symbols(&self, after_ms: i64) -> BTreeSet<String> {
        clickhouse(&format!(
            "SELECT DISTINCT symbol_identifier FROM {}.tick_market_data WHERE tick_time > {}",
            self.db(),
            after_ms * 1_000_000
        ))
        .await
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default()
    }

    async fn all_symbols_stored(&self) -> bool {
        self.stored_symbols(0).await.len() == symbols().len()
    }

    /// Of the last trades (ms) Kafka holds of each symbol of `which` from rows ingested by
    /// `before_ms`, the earliest (`None`: a symbol has none). Kafka keys by symbol and the
    /// producer is idempotent: a symbol's trades up to its last one there are all there.
    fn last_in_kafka(&self, which: &BTreeSet<String>, before_ms: i64) -> Option<i64> {
        let before_ns = before_ms * 1_000_000;
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        for r in kafka_rows(&self.tick_topic()) {
            let (Some(symbol), Some(t), Some(ingested)) = (
                r["symbol_identifier"].as_str(),
                r["tick_time"].as_i64(),
                r["ingestion_time"].as_i64(),
            ) else {
                continue;
            };
            if which.contains(symbol) && ingested <= before_ns {
                let e = last.entry(symbol.to_string()).or_insert(t);
                *e = (*e).max(t);
            }
        }
        if last.len() < which.len() {
            return None;
        }
        last.values().min().map(|t| t / 1_000_000)
    }

    /// Seconds until every symbol of `which` has a trade newer than `after_ms` in Kafka: the
    /// connector's takeover, before any writer's.
    async fn resumed_in_kafka(&self, which: &BTreeSet<String>, after_ms: i64) -> f64 {
        let which = which.clone();
        let topic = self.tick_topic();
        self.wait("the moved symbols reach Kafka again", move |_| {
            let (which, topic) = (which.clone(), topic.clone());
            Box::pin(async move {
                let after_ns = after_ms * 1_000_000;
                let seen: BTreeSet<String> = kafka_rows(&topic)
                    .iter()
                    .filter(|r| r["tick_time"].as_i64().is_some_and(|t| t > after_ns))
                    .filter_map(|r| r["symbol_identifier"].as_str().map(String::from))
                    .collect();
                seen.is_superset(&which)
            })
        })
        .await
    }

    /// Seconds until every symbol of `which` has a trade newer than `after_ms` in ClickHouse.
    async fn resumed(&self, which: &BTreeSet<String>, after_ms: i64) -> f64 {
        let which = which.clone();
        self.wait("the moved symbols stream again", move |c| {
            let which = which.clone();
            Box::pin(async move { c.stored_symbols(after_ms).await.is_superset(&which) })
        })
        .await
    }

    /// Stops the simulator (the ledger is complete then) and reconciles; trades of `gaps` may
    /// be missing.
    async fn finish(
        &mut self,
        row: &str,
        name: &str,
        recovery: f64,
        gaps: &[(i64, i64)],
    ) -> Reconciliation {
        // The market trades at random: a quick takeover on a quiet stretch can leave too few
        // trades to show anything, above all after the fault, so the run goes on until there
        // are enough (the trade rate, not the test's pace, decides when).
        let after_ms = gaps.iter().map(|g| g.1).max().unwrap_or(0);
        self.wait("the market has traded enough to reconcile", |c| {
            Box::pin(async move {
                c.sim.ledger_trades().is_ok_and(|t| {
                    t.len() > MIN_TRADES
                        && t.iter().filter(|t| t.updated_ms > after_ms).count() >= MIN_TRADES_AFTER
                })
            })
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        for p in &mut self.pods {
            assert!(
                p.exited().is_none(),
                "{} exited:\n{}",
                p.config.instance,
                p.log()
            );
        }
        self.sim.stop();
        let trades = self.sim.ledger_trades().expect("ledger");
        let r = reconcile_ticks(
            self.db(),
            &self.tick_topic(),
            &trades,
            gaps,
            Duration::from_secs(60),
        )
        .await
        .expect("reconcile");
        println!("{}", fault_row_line(row, name, Some(recovery), &r));
        println!(
            "  row {row}: emitted={} counted={} stored={} distinct={} gap_trades={} gap_missing={} phantoms={} kafka_duplicates={} ran={:.0}s",
            r.emitted,
            r.counted,
            r.stored,
            r.distinct,
            r.in_gaps,
            r.gap_missing,
            r.phantoms,
            r.kafka_duplicates,
            self.started.elapsed().as_secs_f64()
        );
        assert!(
            r.emitted > MIN_TRADES,
            "too little load to show anything: {r:?}"
        );
        assert_eq!(
            r.lost,
            0,
            "trades lost outside the allowed window: {r:?}\n{}",
            self.logs()
        );
        assert_eq!(r.duplicates, 0, "rows stored twice after FINAL: {r:?}");
        assert_eq!(r.phantoms, 0, "rows that no gateway sent: {r:?}");
        r
    }

    async fn cleanup(mut self) {
        for p in &mut self.pods {
            p.sigterm(Duration::from_secs(30));
        }
        drop_lane_data(&self.pods[0].config).await;
    }
}

/// The old, all-remote shape of the cluster member's messages: what a forged peer sends.
/// Variant names are the wire tags.
#[derive(ractor_cluster::RactorClusterMessage)]
enum ForgedMsg {
    Heartbeat(Vec<u8>),
    Tick,
    Reassign,
    SessionClosed(String),
    #[rpc]
    Leave(u64, ractor::RpcReplyPort<bool>),
}

/// The forged peer's own beacon: it answers the pods' heartbeat requests with whatever
/// heartbeat the test puts in.
#[derive(ractor_cluster::RactorClusterMessage)]
enum ForgedBeaconMsg {
    #[rpc]
    Heartbeat(ractor::RpcReplyPort<Vec<u8>>),
}

struct ForgedBeacon;

impl ractor::Actor for ForgedBeacon {
    type Msg = ForgedBeaconMsg;
    type State = Arc<std::sync::Mutex<Vec<u8>>>;
    type Arguments = Arc<std::sync::Mutex<Vec<u8>>>;

    async fn pre_start(
        &self,
        myself: ractor::ActorRef<Self::Msg>,
        forged: Self::Arguments,
    ) -> Result<Self::State, ractor::ActorProcessingErr> {
        ractor::pg::join(CONNECTOR_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(forged)
    }

    async fn handle(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        msg: Self::Msg,
        forged: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        let ForgedBeaconMsg::Heartbeat(reply) = msg;
        let _ = reply.send(forged.lock().unwrap().clone());
        Ok(())
    }
}

/// A forged peer: this test process, a second node with the right cookie but no pod's
/// identity, dials pod 0 and for 20 s sends what the old message type allowed (leave,
/// session closed, extra ticks, pushed heartbeats) and answers pod 0's heartbeat requests
/// with forged heartbeats: pod 1's identity, pod 1's address under its own name with a huge
/// line budget claiming every symbol, an address outside `peers`. Pod 0 refuses and counts
/// them, keeps its members and its share, never drains, and no trade is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_peer_with_the_cookie_does_not_stop_the_data() {
    if !netns::can_run() {
        return;
    }
    let mut c = Cluster::start("forge").await;
    let before = (c.held(0).await, c.held(1).await);
    let instance1 = c.pods[1].config.instance.clone();
    let address1 = format!("{}:4697", c.net.pod_addr(1));
    let all: Vec<String> = symbols().into_iter().map(|s| s.symbol).collect();
    let forged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let heartbeat = |instance: &str, address: &str, budget: u32, seq: u64| Heartbeat {
        version: CLUSTER_PROTOCOL_VERSION,
        instance: instance.into(),
        incarnation: 7,
        seq,
        address: address.into(),
        line_budget: budget,
        draining: false,
        streaming: all.clone(),
    };

    // The forged node: the right cookie, its own name, listening on the host's bridge address.
    let port = free_port();
    let server = ractor_cluster::NodeServer::new(
        port,
        COOKIE.into(),
        "intruder".into(),
        c.net.host_addr().to_string(),
        None,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    );
    let (server, _) = ractor::Actor::spawn(None, server, ()).await.expect("node");
    let (beacon, _) = ractor::Actor::spawn(None, ForgedBeacon, forged.clone())
        .await
        .expect("beacon");
    ractor_cluster::client_connect(&server, format!("{}:4697", c.net.pod_addr(0)).as_str())
        .await
        .expect("dial pod 0");
    let targets = {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let remote: Vec<ractor::ActorCell> = ractor::pg::get_members(&CONNECTOR_GROUP.into())
                .into_iter()
                .filter(|m| !m.get_id().is_local())
                .collect();
            if !remote.is_empty() || Instant::now() > until {
                break remote;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(
        !targets.is_empty(),
        "the forged node authenticated and sees pod 0's group"
    );

    let attack = Instant::now();
    let mut seq = 0;
    let mut leave_answered = 0;
    while attack.elapsed() < Duration::from_secs(20) {
        seq += 1;
        let phase = (seq / 20) % 3;
        *forged.lock().unwrap() = match phase {
            0 => heartbeat(&instance1, &address1, 100, seq),
            1 => heartbeat("intruder", &address1, 1_000_000, seq),
            _ => heartbeat("intruder", "10.255.0.9:4697", 100, seq),
        }
        .encode();
        for t in &targets {
            let peer: ractor::ActorRef<ForgedMsg> = t.clone().into();
            let _ = peer.cast(ForgedMsg::Tick);
            let _ = peer.cast(ForgedMsg::Reassign);
            let _ = peer.cast(ForgedMsg::SessionClosed(format!(
                "{instance1}@{}",
                c.net.pod_addr(1)
            )));
            let _ = peer.cast(ForgedMsg::Heartbeat(
                heartbeat(&instance1, &address1, 1_000_000, seq).encode(),
            ));
            if seq % 10 == 0 && ractor::call_t!(peer, ForgedMsg::Leave, 200, 0).is_ok() {
                leave_answered += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = c.cluster_status(0).await.expect("pod 0 answers");
    println!("  forged peer: pod 0 refused {}", status["refused"]);
    assert_eq!(leave_answered, 0, "a remote Leave reached the member");
    assert_eq!(status["draining"], false, "{status}");
    for reason in ["identity", "duplicate", "address"] {
        assert!(
            status["refused"][reason].as_u64().unwrap_or(0) > 0,
            "no {reason} refusal: {status}"
        );
    }
    let members: Vec<String> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["instance"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(!members.iter().any(|m| m == "intruder"), "{members:?}");
    assert_eq!(
        (c.held(0).await, c.held(1).await),
        before,
        "the split moved under the forged peer"
    );
    let refused_metric = c.pods[0]
        .metrics()
        .await
        .sum("marketlane_cluster_heartbeats_refused_total");
    assert!(refused_metric > 0.0, "not counted: {refused_metric}");
    beacon.stop(None);
    server.stop(None);
    // No gap allowed: every trade of the whole run is in ClickHouse exactly once.
    let recovery = attack.elapsed().as_secs_f64();
    c.finish("forged", "forged_peer", recovery, &[]).await;
    c.cleanup().await;
}

/// A JSON list of symbol names.
fn symbol_list(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Row 6: a connector pod is SIGKILLed; the survivor takes its symbols over (within its line
/// budget) and only the interval until then is missing.
#[tokio::test(flavor = "multi_thread")]
async fn row06_a_killed_pods_symbols_are_taken_over() {
    if !netns::can_run() {
        return;
    }
    let mut c = Cluster::start("kill").await;
    let (zero, one) = (c.held(0).await, c.held(1).await);
    assert!(
        !zero.is_empty() && !one.is_empty(),
        "no split: {zero:?} / {one:?}"
    );
    assert!(
        zero.is_disjoint(&one),
        "both pods stream {:?}",
        zero.intersection(&one).collect::<Vec<_>>()
    );
    assert_eq!(zero.len() + one.len(), symbols().len());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let killed = now_ms();
    let since = Instant::now();
    c.pods[1].kill();
    // Frames the killed pod had read but Kafka had not acknowledged die with it (the seed
    // accepts losing the takeover interval), and on a busy machine that tail can be seconds
    // long: the allowed gap starts after the last of its trades Kafka holds (if Kafka lacks a
    // symbol, 5 s before the kill).
    let lost_from = c
        .last_in_kafka(&one, killed)
        .map_or(killed - 5_000, |t| t + 1);
    let taken = c
        .wait("pod 0 holds every symbol", |c| {
            Box::pin(async move { c.held(0).await.len() == symbols().len() })
        })
        .await;
    let in_kafka = c.resumed_in_kafka(&one, killed).await.max(taken);
    let recovery = since.elapsed().as_secs_f64();
    // Until the data resumed.
    let gap = (lost_from, now_ms());
    // In ClickHouse once the consumer group gives the dead pod's writer partitions to the
    // survivor (the writers' session timeout, 10 s).
    let stored = c.resumed(&one, killed).await;
    println!(
        "  row 6: symbols of the killed pod {one:?}: subscribed by the survivor after {taken:.2}s, \
         in Kafka after {in_kafka:.2}s, in ClickHouse after {:.2}s",
        since.elapsed().as_secs_f64().min(in_kafka + stored)
    );
    let r = c.finish("6", "pod_kill", recovery, &[gap]).await;
    assert!(
        r.gap_missing < r.in_gaps.max(1),
        "every trade of the window is missing: {r:?}"
    );
    c.cleanup().await;
}

/// A partition: pod 0's link goes down (no FIN, no RST: a half-open link); pod 1 notices by
/// the missing heartbeats, takes the symbols over, and after the heal the split returns with
/// no gap (make before break).
#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_pod_is_replaced_and_rejoins_after_the_heal() {
    if !netns::can_run() {
        return;
    }
    let mut c = Cluster::start("part").await;
    let zero = c.held(0).await;
    let split: BTreeMap<usize, usize> = [(0, zero.len()), (1, c.held(1).await.len())].into();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let cut = now_ms();
    let since = Instant::now();
    c.net.cut(0).expect("cut");
    let taken = c
        .wait("pod 1 holds every symbol", |c| {
            Box::pin(async move { c.held(1).await.len() == symbols().len() })
        })
        .await;
    let resumed = c.resumed_in_kafka(&zero, cut).await.max(taken);
    let recovery = since.elapsed().as_secs_f64();
    let gap = (cut - 1_000, now_ms());
    println!("  partition: pod 1 took {zero:?} over after {taken:.2}s, data after {resumed:.2}s");
    tokio::time::sleep(Duration::from_secs(4)).await;

    c.net.heal(0).expect("heal");
    let healed = Instant::now();
    let rejoined = c
        .wait(
            "the pods see each other again and split the symbols as before",
            move |c| {
                let split = split.clone();
                Box::pin(async move {
                    c.members_everywhere(2).await
                        && c.held(0).await.len() == split[&0]
                        && c.held(1).await.len() == split[&1]
                })
            },
        )
        .await;
    println!(
        "  partition healed: split restored after {rejoined:.2}s ({:.2}s)",
        healed.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.finish("6", "partition", recovery, &[gap]).await;
    c.cleanup().await;
}

/// Row 12 with two pods: a rolling restart under load (SIGTERM pod 0, start it, then pod 1).
/// The draining pod hands its symbols over before it stops its own subscriptions, so nothing
/// is lost: the reconciliation allows no gap at all.
#[tokio::test(flavor = "multi_thread")]
async fn row12_a_rolling_restart_of_both_pods_loses_nothing() {
    if !netns::can_run() {
        return;
    }
    let mut c = Cluster::start("roll").await;
    let split = (c.held(0).await.len(), c.held(1).await.len());
    let mut handovers = Vec::new();
    for i in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let since = Instant::now();
        let (status, drained) = c.pods[i].sigterm(Duration::from_secs(40));
        assert!(
            status.is_some_and(|s| s.success()),
            "pod {i} did not drain and exit: {status:?}\n{}",
            c.pods[i].log()
        );
        let other = 1 - i;
        assert_eq!(
            c.held(other).await.len(),
            symbols().len(),
            "pod {other} must hold every symbol while pod {i} is away"
        );
        c.pods[i].start().expect("restart");
        let back = c
            .wait(
                "the restarted pod rejoins and the split returns",
                move |c| {
                    Box::pin(async move {
                        c.members_everywhere(2).await
                            && c.held(0).await.len() == split.0
                            && c.held(1).await.len() == split.1
                    })
                },
            )
            .await;
        println!(
            "  row 12: pod {i} drained in {drained:.2}s, back in the split {back:.2}s after its start ({:.2}s in all)",
            since.elapsed().as_secs_f64()
        );
        handovers.push(drained);
    }
    let worst = handovers.iter().copied().fold(0.0, f64::max);
    c.finish("12", "rolling_restart", worst, &[]).await;
    c.cleanup().await;
}

/// Writes a CA and one certificate for every pod (`marketlane-cluster`, server and client
/// use) with openssl, as an operator's cert-manager would; returns the `[cluster.tls]` TOML.
fn cluster_certificates(dir: &Path) -> toml::Table {
    let run = |args: &[&str]| {
        let out = output_within(
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir),
            Duration::from_secs(30),
        )
        .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:marketlane-cluster\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=marketlane test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=marketlane-cluster",
        "-keyout",
        "pod.key",
        "-out",
        "pod.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "pod.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "pod.pem",
    ]);
    let file = |name: &str| toml::Value::from(dir.join(name).display().to_string());
    toml::Table::from_iter([
        ("cert".to_string(), file("pod.pem")),
        ("key".to_string(), file("pod.key")),
        ("ca".to_string(), file("ca.pem")),
        ("server_name".to_string(), "marketlane-cluster".into()),
    ])
}

/// Pod links with mutual TLS form the cluster; a pod with the wrong cookie (same CA, so TLS
/// succeeds) is refused and never becomes a member.
#[tokio::test(flavor = "multi_thread")]
async fn tls_links_form_the_cluster_and_a_wrong_cookie_is_refused() {
    let _stack = stack_shared_lock(Duration::from_secs(600)).expect("stack lock");
    let dir = run_dir("cluster_tls_");
    let tls = cluster_certificates(&dir);
    let gw = [free_port(), free_port(), free_port()];
    let mut sim = SimBuilder {
        port: Some(gw[0]),
        ..SimBuilder::new(SEED)
    }
    .username("trader-live")
    .args(&[
        "--gateway",
        &format!("127.0.0.1:{}=trader-paper:DU7654321", gw[1]),
        "--gateway",
        &format!("127.0.0.1:{}=intruder:DU0000001", gw[2]),
    ])
    .spawn(&dir)
    .expect("simulator");
    let node = [free_port(), free_port(), free_port()];
    let peers: Vec<String> = node[..2].iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let base = DaemonConfig::new("http://unused", &dir);
    let mut pods = Vec::new();
    for i in 0..3 {
        let mut c = base.sharing(&format!("{}-{i}", base.database), &dir);
        c.roles = vec!["connector".into()];
        c.gateway_url = format!("http://127.0.0.1:{}", gw[i]);
        c.symbols = symbols();
        let cookie = if i < 2 {
            COOKIE
        } else {
            "a-wrong-cookie-but-long-enough-to-start"
        };
        let c = c
            .with_toml("cluster.enabled", true)
            .with_toml("cluster.port", i64::from(node[i]))
            .with_toml("cluster.advertise_host", "127.0.0.1")
            .with_toml("cluster.peers", peers.clone())
            .with_toml("cluster.cookie", cookie)
            .with_toml("cluster.tls", tls.clone());
        pods.push(Daemon::spawn(c, &dir).expect("pod"));
    }
    let members = |i: usize| pods[i].metric("marketlane_cluster_members");
    let started = Instant::now();
    while !(members(0).await == 2.0 && members(1).await == 2.0) {
        assert!(
            started.elapsed() < TIMEOUT,
            "the TLS pods did not form a cluster:\n{}\n{}",
            tail(&pods[0].log(), 40),
            tail(&pods[1].log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "  tls: two pods formed a cluster over mutual TLS in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    // The intruder dials both for a while (every redial interval) and is refused each time.
    // A failed scrape is no sample (it is not zero members); most must succeed.
    let samples = 16;
    let mut scraped = [0; 3];
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, want, what) in [
            (2, 1.0, "the wrong cookie joined"),
            (0, 2.0, "the TLS pair lost a member"),
            (1, 2.0, "the TLS pair lost a member"),
        ] {
            let Some(n) = pods[i].try_metric("marketlane_cluster_members").await else {
                continue;
            };
            scraped[i] += 1;
            assert_eq!(n, want, "{what} (pod {i}):\n{}", tail(&pods[i].log(), 40));
        }
    }
    assert!(
        scraped.iter().all(|n| *n >= samples * 3 / 4),
        "too few scrapes answered: {scraped:?} of {samples}"
    );
    // `assigned` counts a symbol being handed over on both pods: wait for the handover.
    let assigned = || async {
        let mut n = 0.0;
        for p in &pods[..2] {
            n += p.try_metric("marketlane_cluster_assigned_symbols").await?;
        }
        Some(n as usize)
    };
    let split = eventually(Duration::from_secs(60), || async {
        assigned().await == Some(symbols().len())
    })
    .await;
    assert!(
        split,
        "the TLS pair splits every symbol between them: {:?} assigned",
        assigned().await
    );
    for p in &mut pods {
        p.sigterm(Duration::from_secs(30));
    }
    sim.stop();
    drop_lane_data(&base).await;
}
