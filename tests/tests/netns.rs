//! The network-namespace harness of the multi-pod tests (`marketlane_tests::netns`): pods
//! reach each other and the host's services over their own link, and a cut link isolates a
//! pod from all of it. Needs root; run with `--test-threads=1` next to other stack tests.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use marketlane_tests::netns::{Net, can_run, exchange, reachable, reachable_within};
use marketlane_tests::{Proc, eventually, kafka_payloads, unique};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::Value;

/// What a partitioned connect may take before it counts as failed; a link that is up
/// connects in milliseconds.
const CUT: Duration = Duration::from_secs(2);
/// Generous for a connect that must succeed (a loaded machine).
const UP: Duration = Duration::from_secs(10);

/// `GET path` over HTTP/1.0 (the server closes after answering); returns (status, body).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let raw = exchange(addr, req.as_bytes(), UP)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Ok((status, body.to_string()))
}

/// A free port on `ip` (bound, then released for a server to take).
fn free_port_on(ip: std::net::IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether a Kafka broker at `addr` answers an ApiVersions v0 request within `timeout`.
fn kafka_answers(addr: SocketAddr, timeout: Duration) -> bool {
    // size 10 | api_key 18 | api_version 0 | correlation_id 1 | client_id null
    let req = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
    exchange(addr, &req, timeout).is_ok_and(|b| b.len() > 8 && b[4..8] == [0, 0, 0, 1])
}

fn ch_addr(net: &Net) -> SocketAddr {
    let url = net.clickhouse_url_for_pods();
    let hostport = url
        .split("://")
        .nth(1)
        .and_then(|r| r.rsplit('@').next())
        .and_then(|r| r.split('/').next())
        .expect("host:port");
    hostport.parse().expect("clickhouse address")
}

#[test]
fn a_cut_link_isolates_the_pod_and_healing_restores_it() {
    if !can_run() {
        return;
    }
    let net = Net::new("netns_cut", 2).expect("net");
    // A listener inside pod 1, on pod 1's address: connects complete from the backlog.
    let pod1 = net.pod_addr(1);
    let listener = net
        .in_pod(1, move || TcpListener::bind((pod1, 0)))
        .expect("in pod 1")
        .expect("bind in pod 1");
    let target = listener.local_addr().expect("addr");
    let ch = ch_addr(&net);
    // Must connect (retrying a quick failure), or must not within CUT.
    let probe = |i: usize, addr: SocketAddr, t: Duration| {
        net.in_pod(i, move || {
            if t == UP {
                reachable_within(addr, t)
            } else {
                reachable(addr, t)
            }
        })
        .expect("in pod")
    };

    assert!(probe(0, target, UP), "pod 0 cannot reach pod 1 at {target}");
    assert!(probe(0, ch, UP), "pod 0 cannot reach ClickHouse at {ch}");
    // The listener is pod 1's, not the host's loopback.
    assert!(
        !probe(
            0,
            SocketAddr::new([127, 0, 0, 1].into(), target.port()),
            CUT
        ),
        "pod 0's loopback should not have pod 1's listener"
    );

    net.cut(0).expect("cut");
    assert!(
        !probe(0, target, CUT),
        "pod 0 reached pod 1 through a cut link"
    );
    assert!(
        !probe(0, ch, CUT),
        "pod 0 reached ClickHouse through a cut link"
    );
    // The rest of the network is untouched: pod 1 still reaches the host.
    assert!(probe(1, ch, UP), "pod 1 lost ClickHouse when pod 0 was cut");

    net.heal(0).expect("heal");
    assert!(probe(0, target, UP), "pod 0 cannot reach pod 1 after heal");
    assert!(probe(0, ch, UP), "pod 0 cannot reach ClickHouse after heal");
    drop(listener);
}

#[test]
fn kafka_clickhouse_and_redis_work_from_inside_a_pod() {
    if !can_run() {
        return;
    }
    let net = Net::new("netns_services", 1).expect("net");

    // ClickHouse at the bridge address.
    let (status, body) = net
        .in_pod(0, {
            let ch = ch_addr(&net);
            move || http_get(ch, "/?query=SELECT%201")
        })
        .expect("in pod")
        .expect("clickhouse");
    assert_eq!((status, body.trim()), (200, "1"), "clickhouse SELECT 1");

    // Redis at the bridge address.
    let redis = net.redis_url_for_pods();
    let pong = net
        .run_in_pod(0, move || async move {
            use fred::prelude::*;
            let client = Builder::from_config(Config::from_url(&redis)?).build()?;
            client.init().await?;
            let pong: String = client.ping(None).await?;
            client.quit().await?;
            anyhow::Ok(pong)
        })
        .expect("in pod")
        .expect("redis");
    assert_eq!(pong, "PONG");

    // Kafka at the address it advertises (127.0.0.1:<port>), forwarded inside the pod:
    // metadata, topic creation and a produce, all from pod 0.
    let topic = unique("netns_");
    let payload = format!("from pod 0 of {topic}");
    let bootstrap = net.kafka_bootstrap_for_pods();
    let (t, p) = (topic.clone(), payload.clone());
    let brokers = net
        .run_in_pod(0, move || async move {
            let mut cfg = ClientConfig::new();
            cfg.set("bootstrap.servers", &bootstrap);
            let admin: AdminClient<DefaultClientContext> = cfg.create()?;
            let res = admin
                .create_topics(
                    &[NewTopic::new(&t, 1, TopicReplication::Fixed(1))],
                    &AdminOptions::new(),
                )
                .await?;
            for r in res {
                r.map_err(|(name, e)| anyhow::anyhow!("create topic {name}: {e}"))?;
            }
            let producer: FutureProducer = cfg.clone().set("acks", "all").create()?;
            let md = producer
                .client()
                .fetch_metadata(None, Duration::from_secs(10))?;
            let brokers: Vec<String> = md
                .brokers()
                .iter()
                .map(|b| format!("{}:{}", b.host(), b.port()))
                .collect();
            producer
                .send(
                    FutureRecord::to(&t).key("k").payload(&p),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
            anyhow::Ok(brokers)
        })
        .expect("in pod")
        .expect("kafka from the pod");
    assert!(!brokers.is_empty(), "no brokers in the metadata");
    let kafka: SocketAddr = net
        .kafka_bootstrap_for_pods()
        .split(',')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("kafka address");
    assert!(
        net.in_pod(0, move || kafka_answers(kafka, UP))
            .expect("in pod"),
        "the broker does not answer ApiVersions before the cut"
    );
    let got = kafka_payloads(&topic).expect("read back on the host");
    assert_eq!(got, vec![payload.into_bytes()], "the pod's record");

    // Cut, the pod reaches none of them.
    net.cut(0).expect("cut");
    let ch = ch_addr(&net);
    let redis: SocketAddr = SocketAddr::new(net.host_addr(), {
        let url = net.redis_url_for_pods();
        url.rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("redis port")
    });
    let isolated = net
        .in_pod(0, move || {
            // The pod's Kafka forwarder accepts locally, but the broker never answers.
            let kafka_dead = !kafka_answers(kafka, CUT);
            (!reachable(ch, CUT), !reachable(redis, CUT), kafka_dead)
        })
        .expect("in pod");
    assert_eq!(
        isolated,
        (true, true, true),
        "(clickhouse, redis, kafka) cut"
    );
}

#[test]
fn a_simulator_gateway_on_the_bridge_is_reachable_from_a_pod() {
    if !can_run() {
        return;
    }
    let net = Net::new("netns_sim", 1).expect("net");
    let dir = tempfile::tempdir().expect("tempdir");
    let host = net.host_addr();
    // Primary gateway on the host's loopback, user2's gateway on the bridge (`--gateway`).
    let (p1, p2) = (marketlane_tests::free_port(), free_port_on(host));
    let bridge_gw = SocketAddr::new(host, p2);
    let mut sim = Proc::spawn(
        &[
            "sim",
            "--listen",
            &format!("127.0.0.1:{p1}"),
            "--gateway",
            &format!("{bridge_gw}=user2:DU7654321"),
        ],
        &dir.path().join("sim.log"),
    )
    .expect("spawn sim");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let up = rt.block_on(eventually(Duration::from_secs(30), || async move {
        reachable(bridge_gw, Duration::from_secs(1))
    }));
    assert!(
        up,
        "simulator did not start: {}",
        log(&dir.path().join("sim.log"))
    );

    let (status, body) = net
        .in_pod(0, move || http_get(bridge_gw, "/sim/status"))
        .expect("in pod")
        .expect("status from the pod");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["username"], "user2", "{v}");
    // The primary gateway listens on the host's loopback: not the pod's.
    let primary = SocketAddr::new([127, 0, 0, 1].into(), p1);
    assert!(
        !net.in_pod(0, move || reachable(primary, CUT))
            .expect("in pod"),
        "the pod reached the host's loopback"
    );
    net.cut(0).expect("cut");
    assert!(
        !net.in_pod(0, move || reachable(bridge_gw, CUT))
            .expect("in pod"),
        "the pod reached its gateway through a cut link"
    );
    sim.terminate();
}

#[test]
fn spawn_in_runs_the_binary_itself_in_the_pod_and_signals_reach_it() {
    if !can_run() {
        return;
    }
    let net = Net::new("netns_spawn", 2).expect("net");
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = SocketAddr::new(net.pod_addr(1), 5000);
    let logf = dir.path().join("pod1.log");
    let mut pod = net
        .spawn_in(1, &["sim", "--listen", &addr.to_string()], &logf)
        .expect("spawn in pod 1");
    let pid = pod.0.id();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let probe = |a: SocketAddr| net.in_pod(0, move || reachable(a, Duration::from_secs(1)));
    let up = rt.block_on(eventually(Duration::from_secs(30), || {
        let r = probe(addr).unwrap_or(false);
        async move { r }
    }));
    assert!(
        up,
        "pod 1's simulator is not reachable from pod 0: {}",
        log(&logf)
    );

    // `ip netns exec` execs: the child is the simulator process, inside pod 1's namespace.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert_eq!(
        exe.file_name(),
        marketlane_tests::marketlane_sim_bin().file_name(),
        "child {pid} is {}",
        exe.display()
    );
    let pids = Command::new("ip")
        .args(["netns", "pids", net.ns_name(1)])
        .output()
        .expect("ip netns pids");
    let pids = String::from_utf8_lossy(&pids.stdout).into_owned();
    assert!(
        pids.split_whitespace().any(|p| p == pid.to_string()),
        "{pid} not in {pids:?}"
    );
    // The host reaches a pod too (the bridge is the host's).
    assert!(reachable_within(addr, UP), "the host cannot reach pod 1");

    // SIGTERM reaches the simulator, which exits cleanly (a signal death would be `ip`'s).
    pod.terminate();
    let status = pod.0.try_wait().expect("wait").expect("exited");
    assert!(status.success(), "{status}: {}", log(&logf));
}

/// A crashed run (aborted, nothing dropped) leaves namespaces, links and a process inside;
/// the next run with the same tag removes them, works, and leaves nothing behind.
#[test]
fn leftovers_of_a_crashed_run_are_removed() {
    if !can_run() {
        return;
    }
    const TAG: &str = "netns_crash";
    if std::env::var_os("ML_NETNS_CRASH").is_some() {
        // The child: build the network, start a process inside, die without cleaning up.
        let net = Net::new(TAG, 1).expect("net");
        // Not on our stdout: the parent reads it to the end.
        let child = net
            .command_in(0, "sleep")
            .arg("600")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sleep in pod");
        println!(
            "PID {} NS {} BR {}",
            child.id(),
            net.ns_name(0),
            net.bridge_name()
        );
        std::process::abort();
    }
    let out = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "leftovers_of_a_crashed_run_are_removed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ML_NETNS_CRASH", "1")
        .output()
        .expect("crashing child");
    assert!(!out.status.success(), "the child was meant to abort");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The harness prints the test's name on the same line.
    let line = text
        .lines()
        .find_map(|l| l.split_once("PID ").map(|x| x.1))
        .unwrap_or_else(|| panic!("child said: {text}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    let (pid, ns, br) = (w[0], w[2].to_string(), w[4].to_string());
    assert!(
        netns_exists(&ns) && link_exists(&br),
        "the crash left nothing?"
    );

    let net = Net::new(TAG, 1).expect("a new run over the leftovers");
    assert!(!alive(pid), "the crashed run's process {pid} survived");
    let ch = ch_addr(&net);
    assert!(
        net.in_pod(0, move || reachable_within(ch, UP))
            .expect("in pod")
    );
    drop(net);
    assert!(!netns_exists(&ns), "namespace {ns} left after drop");
    assert!(!link_exists(&br), "bridge {br} left after drop");
}

#[test]
fn drop_removes_everything_even_after_a_panic() {
    if !can_run() {
        return;
    }
    let names = std::sync::Mutex::new(None);
    let sleeper = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let net = Net::new("netns_panic", 2).expect("net");
        *names.lock().expect("lock") = Some((
            net.ns_name(0).to_string(),
            net.ns_name(1).to_string(),
            net.bridge_name().to_string(),
        ));
        let child = net.command_in(1, "sleep").arg("600").spawn();
        *sleeper.lock().expect("lock") = Some(child.expect("sleep"));
        panic!("a test failing mid-way (this panic is expected)");
    });
    assert!(r.is_err());
    let mut child = sleeper.into_inner().expect("lock").expect("sleeper");
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the pod's process was not killed: {status}"
    );
    let (ns0, ns1, br) = names.into_inner().expect("lock").expect("names");
    assert!(
        !netns_exists(&ns0) && !netns_exists(&ns1),
        "namespaces left"
    );
    assert!(!link_exists(&br), "bridge left");
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A live (not zombie) process.
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
        .unwrap_or(false)
}

fn log(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
