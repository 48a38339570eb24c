//! The two-pod takeover: two connector pods in a `ractor_cluster` (one IB user each, both
//! gateways served by one simulator over one market) split the symbols; pod 1 is SIGKILLed and
//! the driver measures, from the kill, when the survivor notices, when it holds every symbol,
//! when its websocket has frames of the killed pod's symbols, and when those symbols have rows
//! from the survivor in Kafka and in ClickHouse again. Pod 1 is then restarted, the split
//! settles back, and the next kill follows.
//!
//! The pods run the connector only; one more daemon runs the writer and is not killed with
//! them, so the ClickHouse figure shows the connector's takeover plus the writer's batching,
//! not a Kafka consumer-group rebalance after a writer died with the pod. After the kills the
//! writer itself is SIGKILLed and restarted at once under the same name: with static group
//! membership it takes its partitions back without a rebalance, and the figure is how soon
//! ClickHouse has rows of every symbol from after the kill.
//!
//! Cut link (`cuts`, as root): the same two pods, each in its own network namespace on a
//! bridge (`marketlane_tests::netns`); pod 1's link is set down, so it reaches nothing and
//! nothing reaches it, and no TCP connection closes: the survivor only learns it from the
//! missing heartbeats. The figure is the time from the cut until the survivor has a row in
//! Kafka of every symbol pod 1 held; the link is healed and the split settles before the next
//! cut.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::live::Env;
use crate::procs::{self, Proc};

mod pods;
use pods::*;

/// Frame interval per symbol (ms): every frame carries a trade (`--trade-probability 1`), so a
/// symbol has a tick row every 250 ms and "rows again" is known to within that.
pub const FRAME_INTERVAL_MS: u64 = 250;
/// A figure not reached within this is reported as missing.
const LIMIT: Duration = Duration::from_secs(60);
/// The split must settle within this after a start or restart.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
/// A symbol streams when its latest row in Kafka is at most this old (event time).
const FRESH_NS: i64 = 3_000_000_000;
const COOKIE: &str = "marketlane-bench-cluster-cookie-32-bytes";
const USERS: [&str; 2] = ["bench-a", "bench-b"];

#[derive(Debug, Clone)]
pub struct TakeoverConfig {
    pub symbols: u32,
    pub kills: u32,
    /// Cuts of pod 1's link (network namespaces; needs root).
    pub cuts: u32,
}

/// One cut of pod 1's link: seconds from the cut until each figure, `None` if not within 60 s.
#[derive(Debug, Clone, Default)]
pub struct Cut {
    pub moved_symbols: usize,
    /// The survivor's `marketlane_cluster_members` went from 2 to 1 (heartbeat timeout).
    pub noticed: Option<f64>,
    /// The survivor has a tick row in Kafka of every symbol pod 1 held, with an event time
    /// after the cut: the takeover figure.
    pub kafka: Option<f64>,
    /// The same rows queryable in ClickHouse.
    pub clickhouse: Option<f64>,
    /// Link healed → the split settled again.
    pub rejoined: Option<f64>,
}

/// One SIGKILL of pod 1: seconds from the signal until each figure, `None` if not within 60 s.
#[derive(Debug, Clone, Default)]
pub struct Kill {
    /// Symbols pod 1 held when it was killed.
    pub killed_symbols: usize,
    /// The survivor's `marketlane_cluster_members` went from 2 to 1.
    pub noticed: Option<f64>,
    /// Which of the survivor's membership-change counters moved: `left` (the link closed) or
    /// `timed_out` (no heartbeat for `heartbeat_timeout`).
    pub noticed_by: String,
    /// The survivor's `marketlane_cluster_assigned_symbols` reached every symbol.
    pub held_all: Option<f64>,
    /// The survivor's websocket has a frame of every symbol of the killed pod (`ctl status`,
    /// `cluster.streaming`, refreshed every heartbeat interval).
    pub streaming: Option<f64>,
    /// Every symbol of the killed pod has a tick row from the survivor in Kafka with an event
    /// time after the kill (a consumer of the topic sees it).
    pub kafka: Option<f64>,
    /// The same rows are queryable in ClickHouse (through the writer daemon).
    pub clickhouse: Option<f64>,
    /// Pod 1 restarted (right after the figures) → both pods see each other, the split is
    /// disjoint and complete, nothing is being handed over, every symbol streams from its owner.
    pub rejoined: Option<f64>,
    /// The restarted pod took back the same symbols (rendezvous hashing).
    pub same_split: bool,
    /// Rows the survivor quarantined as `unknown_conid` from just before the kill until the
    /// split settled again: frames of symbols it released still in flight after its `umd`.
    pub quarantined: f64,
}

#[derive(Debug, Clone)]
pub struct TakeoverResult {
    pub config: TakeoverConfig,
    pub kills: Vec<Kill>,
    /// Symbols each pod held in the first split.
    pub split: (usize, usize),
    /// Start of all processes → first settled split (s).
    pub formed: f64,
    /// SIGKILL of the writer daemon, restarted at once under the same name (static member) →
    /// ClickHouse has rows of every symbol with an event time after the kill (s).
    pub writer_catch_up: Option<f64>,
    /// The cut-link samples (empty when not run), and why they were not run.
    pub cuts: Vec<Cut>,
    pub cuts_skipped: Option<String>,
    pub dir: PathBuf,
}

impl TakeoverResult {
    /// The slowest cut-link takeover (`takeover_cut_link_s_max`); `None` if none ran or any
    /// missed the 60 s limit.
    pub fn cut_link_max(&self) -> Option<f64> {
        if self.cuts.is_empty() {
            return None;
        }
        self.cuts
            .iter()
            .map(|c| c.kafka)
            .try_fold(0.0f64, |m, x| x.map(|x| m.max(x)))
    }
}

struct Run<'a> {
    env: &'a Env,
    http: reqwest::Client,
    pods: [Pod; 2],
    writer: Pod,
    symbols: BTreeSet<String>,
    watch: Arc<Watch>,
    db: String,
    /// ClickHouse's expression for the tick table's event time in ns (Int64 on 18.16).
    tick_ns: String,
}

impl Run<'_> {
    fn check_alive(&mut self, dir: &Path) -> anyhow::Result<()> {
        for p in self.pods.iter_mut().chain([&mut self.writer]) {
            if p.proc.is_some() && p.exited() {
                bail!("{} exited; see its log in {}", p.name, dir.display());
            }
        }
        Ok(())
    }

    /// The held sets of both pods once the split is settled: both see two members, the shares
    /// are non-empty, disjoint and complete, nothing is handed over, and every symbol has a
    /// fresh row in Kafka (newer than `since_ns` too) from the pod that holds it.
    async fn settled(&self, since_ns: i64) -> Option<[BTreeSet<String>; 2]> {
        let mut held: [BTreeSet<String>; 2] = Default::default();
        for (i, p) in self.pods.iter().enumerate() {
            if p.metric(&self.http, "marketlane_cluster_members").await != Some(2.0) {
                return None;
            }
            let c = p.cluster().await?;
            if !set(&c, "handing_over").is_empty() {
                return None;
            }
            held[i] = set(&c, "held");
        }
        let complete = held[0].union(&held[1]).cloned().collect::<BTreeSet<_>>() == self.symbols;
        if held.iter().any(BTreeSet::is_empty) || !held[0].is_disjoint(&held[1]) || !complete {
            return None;
        }
        let fresh = (marketlane_protocol::now_ns() - FRESH_NS).max(since_ns);
        for (i, p) in self.pods.iter().enumerate() {
            if !self.watch.all_from(&p.name, &held[i], fresh) {
                return None;
            }
        }
        Some(held)
    }

    /// Waits for a settled split that still holds 2 s later: the held sets and the seconds from
    /// `t0` (a start or restart) until it was first seen. Only rows produced after `t0` count, so
    /// the last rows of a killed pod do not pass for its restarted successor's.
    async fn settle(
        &mut self,
        t0: Instant,
        dir: &Path,
    ) -> anyhow::Result<([BTreeSet<String>; 2], f64)> {
        let since_ns = marketlane_protocol::now_ns() - t0.elapsed().as_nanos() as i64;
        while t0.elapsed() < SETTLE_LIMIT {
            self.check_alive(dir)?;
            if let Some(a) = self.settled(since_ns).await {
                let at = t0.elapsed().as_secs_f64();
                tokio::time::sleep(Duration::from_secs(2)).await;
                if self.settled(since_ns).await.as_ref() == Some(&a) {
                    return Ok((a, at));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the two pods did not settle on a split within {SETTLE_LIMIT:?}; see {}",
            dir.display()
        )
    }

    async fn stored_from(&self, instance: &str, which: &BTreeSet<String>, after_ns: i64) -> bool {
        let q = format!(
            "SELECT DISTINCT symbol_identifier FROM `{}`.tick_market_data \
             WHERE component_instance_name = '{instance}' AND {} > {after_ns} FORMAT TabSeparated",
            self.db, self.tick_ns
        );
        match self.env.ch.query(&q).await {
            Ok(text) => {
                let seen: BTreeSet<&str> = text.lines().map(str::trim).collect();
                which.iter().all(|s| seen.contains(s.as_str()))
            }
            Err(_) => false,
        }
    }

    /// ClickHouse has a row of every symbol with an event time after `after_ns` (any pod).
    async fn stored_all_after(&self, after_ns: i64) -> bool {
        let q = format!(
            "SELECT DISTINCT symbol_identifier FROM `{}`.tick_market_data \
             WHERE {} > {after_ns} FORMAT TabSeparated",
            self.db, self.tick_ns
        );
        match self.env.ch.query(&q).await {
            Ok(text) => {
                let seen: BTreeSet<&str> = text.lines().map(str::trim).collect();
                self.symbols.iter().all(|s| seen.contains(s.as_str()))
            }
            Err(_) => false,
        }
    }

    /// SIGKILL of the writer daemon and an immediate restart under the same name: seconds
    /// until ClickHouse has rows of every symbol from after the kill.
    async fn writer_restart(&mut self) -> anyhow::Result<Option<f64>> {
        let t0 = Instant::now();
        self.writer.sigkill();
        let dead_ns = marketlane_protocol::now_ns();
        self.writer.start(self.env)?;
        let me: &Self = self;
        Ok(until(t0, Duration::from_millis(100), move || async move {
            me.stored_all_after(dead_ns).await
        })
        .await)
    }

    /// Cuts pod 1's link and measures the takeover by pod 0; heals it and waits for the split.
    async fn cut(
        &mut self,
        net: &marketlane_tests::netns::Net,
        moved: &BTreeSet<String>,
        dir: &Path,
    ) -> anyhow::Result<(Cut, [BTreeSet<String>; 2])> {
        let t0 = Instant::now();
        net.cut(1)?;
        let cut_ns = marketlane_protocol::now_ns();
        let me: &Self = self;
        let (survivor, http, watch) = (&me.pods[0], &me.http, &*me.watch);
        let fast = Duration::from_millis(20);
        let (noticed, kafka, clickhouse) = tokio::join!(
            until(t0, fast, move || async move {
                survivor.metric(http, "marketlane_cluster_members").await == Some(1.0)
            }),
            until(t0, fast, move || async move {
                watch.all_from(&survivor.name, moved, cut_ns)
            }),
            until(t0, Duration::from_millis(100), move || async move {
                me.stored_from(&survivor.name, moved, cut_ns).await
            }),
        );
        let healed = Instant::now();
        net.heal(1)?;
        let (held, rejoined) = self.settle(healed, dir).await?;
        Ok((
            Cut {
                moved_symbols: moved.len(),
                noticed,
                kafka,
                clickhouse,
                rejoined: Some(rejoined),
            },
            held,
        ))
    }

    /// The survivor's quarantined rows of conids it no longer subscribes.
    async fn unknown_conid(&self) -> f64 {
        self.pods[0].scrape(&self.http).await.map_or(0.0, |s| {
            s.sum("marketlane_rows_quarantined_total", |l| {
                l.is("reason", "unknown_conid")
            })
        })
    }

    /// Changes counted by the survivor's `marketlane_cluster_membership_changes_total`, by label.
    async fn changes(&self) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        if let Some(s) = self.pods[0].scrape(&self.http).await {
            for change in ["left", "timed_out", "joined", "draining"] {
                out.insert(
                    change.to_string(),
                    s.sum("marketlane_cluster_membership_changes_total", |l| {
                        l.is("change", change)
                    }),
                );
            }
        }
        out
    }

    /// SIGKILL pod 1 and measure the takeover by pod 0.
    async fn kill(&mut self, killed: &BTreeSet<String>) -> Kill {
        let all = self.symbols.len() as f64;
        let before = self.changes().await;
        let t0 = Instant::now();
        self.pods[1].sigkill();
        // Reaped: rows with a later event time can only come from the survivor.
        let dead_ns = marketlane_protocol::now_ns();
        let me: &Self = self;
        let (survivor, http, watch) = (&me.pods[0], &me.http, &*me.watch);
        let fast = Duration::from_millis(20);
        let (noticed, held_all, streaming, kafka, clickhouse) = tokio::join!(
            until(t0, fast, move || async move {
                survivor.metric(http, "marketlane_cluster_members").await == Some(1.0)
            }),
            until(t0, fast, move || async move {
                survivor
                    .metric(http, "marketlane_cluster_assigned_symbols")
                    .await
                    == Some(all)
            }),
            until(t0, Duration::from_millis(50), move || async move {
                survivor
                    .cluster()
                    .await
                    .is_some_and(|c| set(&c, "streaming").is_superset(killed))
            }),
            until(t0, fast, move || async move {
                watch.all_from(&survivor.name, killed, dead_ns)
            }),
            until(t0, Duration::from_millis(100), move || async move {
                me.stored_from(&survivor.name, killed, dead_ns).await
            }),
        );
        let after = self.changes().await;
        let moved = |k: &str| after.get(k).unwrap_or(&0.0) > before.get(k).unwrap_or(&0.0);
        let noticed_by = match (moved("left"), moved("timed_out")) {
            (true, false) => "link closed",
            (false, true) => "heartbeat timeout",
            (true, true) => "link closed and heartbeat timeout",
            (false, false) => "unknown",
        };
        Kill {
            killed_symbols: killed.len(),
            noticed,
            noticed_by: noticed_by.into(),
            held_all,
            streaming,
            kafka,
            clickhouse,
            rejoined: None,
            same_split: false,
            quarantined: 0.0,
        }
    }
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.2} s"))
}

pub async fn run(env: &Env, c: &TakeoverConfig) -> anyhow::Result<TakeoverResult> {
    let dir = env.work.join("takeover");
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("bench{}takeover_", env.stamp);
    let db = format!("bench_{}_takeover", env.stamp);
    let mut r = run_inner(env, c, &dir, &prefix, &db, None).await;
    if let Ok(result) = &mut r {
        if c.cuts == 0 {
            result.cuts_skipped = Some("not asked for (--takeover-cuts 0)".into());
        } else if !marketlane_tests::netns::can_run() {
            result.cuts_skipped = Some("network namespaces need root".into());
        } else {
            let cut_dir = dir.join("cut");
            std::fs::create_dir_all(&cut_dir)?;
            let cut_prefix = format!("{prefix}cut_");
            let cut_db = format!("{db}_cut");
            let net = marketlane_tests::netns::Net::new("tko", 2)?;
            match run_inner(env, c, &cut_dir, &cut_prefix, &cut_db, Some(net)).await {
                Ok(cut) => result.cuts = cut.cuts,
                Err(e) => result.cuts_skipped = Some(format!("failed: {e:#}")),
            }
            cleanup(env, &cut_prefix, &cut_db).await;
        }
    }
    cleanup(env, &prefix, &db).await;
    r
}

async fn cleanup(env: &Env, prefix: &str, db: &str) {
    for d in [db.to_string(), format!("{db}_state")] {
        if let Err(e) = env
            .ch
            .query(&format!("DROP DATABASE IF EXISTS `{d}`"))
            .await
        {
            eprintln!("bench: cleanup: {e}");
        }
    }
    match crate::kafka::delete_topics_with_prefix(&env.kafka, prefix).await {
        Ok(n) => println!("bench: takeover: dropped {n} topics and the databases"),
        Err(e) => eprintln!("bench: cleanup of topics {prefix}*: {e}"),
    }
}

async fn run_inner(
    env: &Env,
    c: &TakeoverConfig,
    dir: &Path,
    prefix: &str,
    db: &str,
    mut net: Option<marketlane_tests::netns::Net>,
) -> anyhow::Result<TakeoverResult> {
    if c.symbols > 100 {
        eprintln!(
            "bench: takeover: {} symbols exceed one pod's line budget (100): the survivor cannot hold them all",
            c.symbols
        );
    }
    let gw = [procs::free_port()?, procs::free_port()?];
    let nodes = [procs::free_port()?, procs::free_port()?];
    let mut sim = Proc::spawn(
        &procs::sim_bin(&env.bin),
        "simulator",
        &[
            "--listen".into(),
            format!("127.0.0.1:{}", gw[0]),
            "--username".into(),
            USERS[0].into(),
            "--account".into(),
            "DU1234567".into(),
            "--gateway".into(),
            format!("127.0.0.1:{}={}:DU7654321", gw[1], USERS[1]),
            "--seed".into(),
            "42".into(),
            "--synthetic-symbols".into(),
            c.symbols.to_string(),
            "--frame-interval-ms".into(),
            FRAME_INTERVAL_MS.to_string(),
            "--unpaced".into(),
            "--trade-probability".into(),
            "1".into(),
            "--status-probability".into(),
            "0".into(),
            "--line-cap".into(),
            "100".into(),
        ],
        &dir.join("simulator.log"),
    )?;
    let addrs = match &mut net {
        None => Addrs {
            host: "127.0.0.1".into(),
            kafka: env.kafka.clone(),
            ch_url: env.ch_url.clone(),
            pods: ["127.0.0.1".into(), "127.0.0.1".into()],
        },
        Some(net) => {
            for port in gw {
                net.expose_host_port(port)?;
            }
            Addrs {
                host: net.host_addr().to_string(),
                kafka: net.kafka_bootstrap_for_pods(),
                ch_url: net.clickhouse_url_for_pods(),
                pods: [net.pod_addr(0).to_string(), net.pod_addr(1).to_string()],
            }
        }
    };
    let ns = |i: usize| net.as_ref().map(|n| n.ns_name(i).to_string());
    let pod = |name: &str,
               host: &str,
               ns: Option<String>,
               text: &dyn Fn(u16, &Path) -> anyhow::Result<String>| {
        let http = procs::free_port()?;
        let sock = dir.join(format!("{name}.sock"));
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text(http, &sock)?)?;
        Ok::<_, anyhow::Error>(Pod {
            name: name.to_string(),
            config,
            host: host.to_string(),
            ns,
            http,
            sock,
            dir: dir.to_path_buf(),
            proc: None,
            runs: 0,
        })
    };
    let pods = [
        pod("bench-takeover-0", &addrs.pods[0], ns(0), &|h, s| {
            pod_config(&addrs, 0, prefix, db, gw[0], h, s, nodes, c.symbols)
        })?,
        pod("bench-takeover-1", &addrs.pods[1], ns(1), &|h, s| {
            pod_config(&addrs, 1, prefix, db, gw[1], h, s, nodes, c.symbols)
        })?,
    ];
    // The writer stays on the host: a cut partitions a connector pod only.
    let writer = pod("bench-takeover-writer", "127.0.0.1", None, &|h, s| {
        writer_config(env, prefix, db, h, s)
    })?;
    let mut run = Run {
        env,
        http: reqwest::Client::new(),
        pods,
        writer,
        symbols: (1..=c.symbols).map(|n| format!("SYM{n:04}")).collect(),
        watch: Arc::new(Watch::default()),
        db: db.to_string(),
        tick_ns: "tick_time".into(),
    };
    let started = Instant::now();
    for p in &mut run.pods {
        p.start(env)?;
    }
    println!(
        "bench: takeover: {} symbols, two connector pods (cluster ports {} and {}, gateways :{} and :{}), {} kills of pod 1",
        c.symbols, nodes[0], nodes[1], gw[0], gw[1], c.kills
    );
    // Rows in Kafka from both pods: the tick topic exists; then the watcher and the writer.
    let topic = format!("{prefix}tick_market_data");
    loop {
        run.check_alive(dir)?;
        if sim.exited() {
            bail!(
                "the simulator exited; see {}",
                dir.join("simulator.log").display()
            );
        }
        let mut both = true;
        for p in &run.pods {
            let produced = p
                .scrape(&run.http)
                .await
                .map_or(0.0, |s| s.sum("marketlane_kafka_produced_total", |_| true));
            both &= produced > 0.0;
        }
        if both {
            break;
        }
        if started.elapsed() > SETTLE_LIMIT {
            bail!(
                "the pods produced nothing to Kafka within {SETTLE_LIMIT:?}; see {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let watcher = spawn_watch(
        &env.kafka,
        &format!("{prefix}watch"),
        &topic,
        run.watch.clone(),
    )?;
    run.writer.start(env)?;
    let result = measure(&mut run, c, dir, started, net.as_ref()).await;
    run.watch.stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || watcher.join()).await;
    for p in run.pods.iter_mut().chain([&mut run.writer]) {
        if let Some(mut proc) = p.proc.take() {
            proc.stop(Duration::from_secs(30));
        }
    }
    sim.stop(Duration::from_secs(10));
    result
}

async fn measure(
    run: &mut Run<'_>,
    c: &TakeoverConfig,
    dir: &Path,
    started: Instant,
    net: Option<&marketlane_tests::netns::Net>,
) -> anyhow::Result<TakeoverResult> {
    let (mut held, formed) = run.settle(started, dir).await?;
    // The writer has made the tables: which type does the event time have?
    let ty = run
        .env
        .ch
        .query(&format!(
            "SELECT type FROM system.columns WHERE database = '{}' \
             AND table = 'tick_market_data' AND name = 'tick_time'",
            run.db
        ))
        .await
        .unwrap_or_default();
    if ty.trim().starts_with("DateTime64") {
        run.tick_ns = "toUnixTimestamp64Nano(tick_time)".into();
    }
    let split = (held[0].len(), held[1].len());
    let skew = run
        .watch
        .newest()
        .map(|t| (marketlane_protocol::now_ns() - t) as f64 / 1e9);
    println!(
        "bench: takeover: split settled after {formed:.1} s: pod 0 holds {}, pod 1 holds {} (newest tick row {} old)",
        split.0,
        split.1,
        skew.map_or("–".into(), |s| format!("{s:.2} s"))
    );
    if let Some(net) = net {
        let mut cuts = Vec::new();
        for n in 0..c.cuts {
            tokio::time::sleep(Duration::from_secs(3)).await;
            run.check_alive(dir)?;
            let moved = held[1].clone();
            let (cut, again) = run.cut(net, &moved, dir).await?;
            held = again;
            println!(
                "bench: takeover cut {}: link of pod 1 ({} symbols) down → survivor noticed {}, first row of every moved symbol in Kafka {}, in ClickHouse {}; healed → split settled again after {}",
                n + 1,
                cut.moved_symbols,
                fmt(cut.noticed),
                fmt(cut.kafka),
                fmt(cut.clickhouse),
                fmt(cut.rejoined)
            );
            cuts.push(cut);
        }
        return Ok(TakeoverResult {
            config: c.clone(),
            kills: Vec::new(),
            split: (held[0].len(), held[1].len()),
            formed,
            writer_catch_up: None,
            cuts,
            cuts_skipped: None,
            dir: dir.to_path_buf(),
        });
    }
    let mut kills = Vec::new();
    for n in 0..c.kills {
        // Steady streaming before the kill.
        tokio::time::sleep(Duration::from_secs(3)).await;
        run.check_alive(dir)?;
        let killed = held[1].clone();
        let quarantined = run.unknown_conid().await;
        let mut k = run.kill(&killed).await;
        println!(
            "bench: takeover {}: SIGKILL of pod 1 ({} symbols) → survivor noticed {} ({}), holds all {} {}, frames of all on its websocket {}, all in Kafka {}, in ClickHouse {}",
            n + 1,
            k.killed_symbols,
            fmt(k.noticed),
            k.noticed_by,
            run.symbols.len(),
            fmt(k.held_all),
            fmt(k.streaming),
            fmt(k.kafka),
            fmt(k.clickhouse)
        );
        // Restart pod 1 (what the StatefulSet does, without the kubelet's delay) and wait for
        // the split to settle again.
        let restart = Instant::now();
        run.pods[1].start(run.env)?;
        let (again, rejoined) = run.settle(restart, dir).await?;
        held = again;
        k.rejoined = Some(rejoined);
        k.same_split = held[1] == killed;
        k.quarantined = run.unknown_conid().await - quarantined;
        println!(
            "bench: takeover {}: pod 1 restarted → split settled again after {} ({}the same symbols); the survivor quarantined {} rows as unknown_conid",
            n + 1,
            fmt(k.rejoined),
            if k.same_split { "" } else { "not " },
            k.quarantined
        );
        kills.push(k);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writer_catch_up = run.writer_restart().await?;
    println!(
        "bench: takeover: SIGKILL of the writer, restarted at once under the same name (static member) → ClickHouse has rows of every symbol from after the kill {}",
        fmt(writer_catch_up)
    );
    Ok(TakeoverResult {
        config: c.clone(),
        kills,
        split,
        formed,
        writer_catch_up,
        cuts: Vec::new(),
        cuts_skipped: None,
        dir: dir.to_path_buf(),
    })
}
