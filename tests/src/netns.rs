//! Linux network namespaces for multi-pod tests: every pod (a `marketlane run` process) gets
//! its own namespace and address on a bridge, so a cluster crosses a real network and
//! [`Net::cut`] partitions one pod from everything (its peers, its gateway, Kafka,
//! ClickHouse, Redis).
//!
//! ```text
//!  host netns                                     pod i netns (ml<id>-<tag>-<i>)
//!  bridge mlb<id> 10.77.N.1/24 ── veth mlv<id>p<i> ══ eth0 10.77.N.(10+i)/24, lo, default via .1
//!   10.77.N.1:<kafka|ch|redis> → 127.0.0.1:<port>     127.0.0.1:<kafka port> → 10.77.N.1:<kafka port>
//! ```
//!
//! Kafka advertises `127.0.0.1:<port>` in its metadata, so inside each pod that address
//! forwards over the pod's own link to the bridge address, where a host-side forwarder hands
//! the connection to the host's loopback. ClickHouse and Redis are reached at the bridge
//! address directly ([`Net::clickhouse_url_for_pods`], [`Net::redis_url_for_pods`]).
//!
//! The forwarders are tokio tasks on threads of the test process (a pod's thread enters the
//! pod's namespace first, so its sockets live there), not socat processes: they cannot
//! outlive the test, even when it is killed. Namespaces, veths and the bridge can; a crashed
//! run's leftovers with the same names are removed when the next [`Net::new`] of that tag
//! starts, and [`Drop`] removes everything (also while a panic unwinds).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{Proc, clickhouse_url, command_line, kafka_bootstrap, workspace_root};

/// Where the harness keeps its lock and the owner (pid) of every live network.
const STATE_DIR: &str = "/run/marketlane-netns";
/// First octets of every network: 10.77.N.0/24.
const PREFIX: [u8; 2] = [10, 77];

/// Runs the marketlane binary (the simulator for `["sim", ..]`, see [`command_line`]) with
/// `args` inside the namespace `ns` (`ip netns exec` execs it, so signals reach it), output to
/// `log`. For launchers that outlive a borrow of [`Net`].
pub fn spawn_in_ns(ns: &str, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
    let (bin, args) = command_line(args);
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .args(args)
        .current_dir(workspace_root())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .spawn()
        .context("cannot run ip netns exec")?;
    Ok(Proc(child))
}

/// Whether this process may create namespaces. Prints why not, so a skipped test says so.
pub fn can_run() -> bool {
    match effective_uid() {
        Some(0) => true,
        Some(uid) => {
            eprintln!("skipping: network namespace tests need root (euid is {uid})");
            false
        }
        None => {
            eprintln!("skipping: cannot read the effective uid from /proc/self/status");
            false
        }
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved fs
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `Redis` as the calculators tests find it: `ML_REDIS_URL`, else 127.0.0.1:`ML_REDIS_PORT`.
pub fn redis_url() -> String {
    std::env::var("ML_REDIS_URL").unwrap_or_else(|_| {
        format!(
            "redis://127.0.0.1:{}",
            std::env::var("ML_REDIS_PORT").unwrap_or_else(|_| "6379".into())
        )
    })
}

/// `scheme://[user[:pw]@]host:port[/path]` → (prefix with userinfo, host:port, rest).
fn split_url(url: &str) -> anyhow::Result<(String, SocketAddr, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("url {url:?} has no scheme"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let addr = resolve(hostport)?;
    Ok((format!("{scheme}://{userinfo}"), addr, path.to_string()))
}

/// `host:port` → one IPv4 socket address (`localhost` → 127.0.0.1).
fn resolve(hostport: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {hostport:?}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{hostport:?} has no IPv4 address"))
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Runs `ip ARGS`; fails with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` where failure is fine (removing what may not exist).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

struct Pod {
    ns: String,
    /// The host end of the pod's veth (the pod end is `eth0` inside the namespace).
    veth: String,
    addr: Ipv4Addr,
}

/// A bridge and one namespace per pod; see the module docs.
pub struct Net {
    id: String,
    n: u8,
    bridge: String,
    pods: Vec<Pod>,
    forwarders: Vec<Forwarder>,
    kafka: Vec<SocketAddr>,
    clickhouse: (String, SocketAddr, String),
    redis: (String, SocketAddr, String),
}

impl Net {
    /// Creates the network for `pods` pods. `tag` names it (use the test's name): the
    /// interfaces and namespaces are derived from it, so a rerun after a crash finds and
    /// removes the leftovers, and two tests with different tags never share names. Fails if
    /// a live process (another run of the same test) owns the same tag.
    pub fn new(tag: &str, pods: usize) -> anyhow::Result<Self> {
        if !(1..=200).contains(&pods) {
            bail!("pods must be 1..=200, got {pods}");
        }
        let id = format!("{:06x}", fnv(tag) & 0xff_ffff);
        let clean: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(24)
            .collect();
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("cannot create {STATE_DIR}"))?;
        // One setup at a time: choosing a free 10.77.N and claiming it must not race.
        let lock = File::create(Path::new(STATE_DIR).join("lock"))?;
        lock.lock().context("cannot lock the netns state dir")?;
        let owner = Path::new(STATE_DIR).join(format!("{id}.owner"));
        if let Ok(text) = std::fs::read_to_string(&owner) {
            let pid: u32 = text
                .split_whitespace()
                .next()
                .unwrap_or("")
                .parse()
                .unwrap_or(0);
            if pid != 0 && pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
            {
                bail!("network {tag:?} ({id}) is in use by the live process {pid}");
            }
        }
        remove_leftovers(&id);
        let n = free_octet(fnv(&id))?;
        std::fs::write(&owner, format!("{} {n} {tag}\n", std::process::id()))?;
        let mut net = Self {
            bridge: format!("mlb{id}"),
            id: id.clone(),
            n,
            pods: (0..pods)
                .map(|i| Pod {
                    ns: format!("ml{id}-{clean}-{i}"),
                    veth: format!("mlv{id}p{i}"),
                    addr: Ipv4Addr::new(PREFIX[0], PREFIX[1], n, 10 + i as u8),
                })
                .collect(),
            forwarders: Vec::new(),
            kafka: kafka_bootstrap()
                .split(',')
                .map(|s| resolve(s.trim()))
                .collect::<anyhow::Result<_>>()?,
            clickhouse: split_url(&clickhouse_url())?,
            redis: split_url(&redis_url())?,
        };
        // From here on `net`'s Drop removes whatever was created, even on an error.
        net.build()?;
        drop(lock);
        Ok(net)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let host = self.host_v4();
        let br = self.bridge.clone();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{host}/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for p in &self.pods {
            ip(&["netns", "add", &p.ns])?;
            ip(&[
                "link", "add", &p.veth, "type", "veth", "peer", "name", "eth0", "netns", &p.ns,
            ])?;
            ip(&["link", "set", &p.veth, "master", &br])?;
            ip(&["link", "set", &p.veth, "up"])?;
            ip(&["-n", &p.ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &p.ns,
                "addr",
                "add",
                &format!("{}/24", p.addr),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &p.ns, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &p.ns,
                "route",
                "add",
                "default",
                "via",
                &host.to_string(),
            ])?;
        }
        // Host side: bridge address → the services on the host's loopback.
        let mut routes: Vec<(SocketAddr, SocketAddr)> = self
            .kafka
            .iter()
            .map(|k| (SocketAddr::new(host.into(), k.port()), *k))
            .collect();
        for svc in [self.clickhouse.1, self.redis.1] {
            routes.push((SocketAddr::new(host.into(), svc.port()), svc));
        }
        self.forwarders.push(Forwarder::start(None, routes)?);
        // Pod side: the advertised Kafka address → the bridge, over the pod's own link.
        for i in 0..self.pods.len() {
            let routes = self
                .kafka
                .iter()
                .map(|k| {
                    (
                        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), k.port()),
                        SocketAddr::new(host.into(), k.port()),
                    )
                })
                .collect();
            self.forwarders
                .push(Forwarder::start(Some(self.ns_path(i)), routes)?);
        }
        Ok(())
    }

    fn host_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(PREFIX[0], PREFIX[1], self.n, 1)
    }

    /// The host's address on the bridge (what pods reach the host at).
    pub fn host_addr(&self) -> IpAddr {
        self.host_v4().into()
    }

    /// Pod `i`'s address.
    pub fn pod_addr(&self, i: usize) -> IpAddr {
        self.pods[i].addr.into()
    }

    /// The name of pod `i`'s namespace (for `ip netns exec`).
    pub fn ns_name(&self, i: usize) -> &str {
        &self.pods[i].ns
    }

    /// The bridge's interface name.
    pub fn bridge_name(&self) -> &str {
        &self.bridge
    }

    fn ns_path(&self, i: usize) -> PathBuf {
        Path::new("/run/netns").join(&self.pods[i].ns)
    }

    /// A command that runs `program` inside pod `i`'s namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's own and signals reach it).
    pub fn command_in(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.pods[i].ns]).arg(program);
        c
    }

    /// Runs the marketlane binary (or the simulator, see [`spawn_in_ns`]) with `args` in pod
    /// `i`, output to `log`.
    pub fn spawn_in(&self, i: usize, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
        spawn_in_ns(&self.pods[i].ns, args, log)
    }

    /// Runs `f` on a thread inside pod `i`'s namespace: every socket it opens is the pod's.
    pub fn in_pod<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = self.ns_path(i);
        std::thread::spawn(move || -> anyhow::Result<T> {
            enter_netns(&path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the closure panicked in pod {i}"))?
    }

    /// Runs the future `f()` makes to completion on a current-thread runtime inside pod `i`'s
    /// namespace (async clients: rdkafka, reqwest, fred open their sockets there).
    pub fn run_in_pod<T, Fut>(
        &self,
        i: usize,
        f: impl FnOnce() -> Fut + Send + 'static,
    ) -> anyhow::Result<T>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        self.in_pod(i, move || -> anyhow::Result<T> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(f()))
        })?
    }

    /// Partitions pod `i`: its link goes down, so it reaches nothing and nothing reaches it.
    /// Open connections are not reset; their packets are lost, as in a real partition.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.pods[i].veth, "down"])?;
        Ok(())
    }

    /// Ends the partition of pod `i`.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.pods[i].veth, "up"])?;
        Ok(())
    }

    /// ClickHouse for a pod: the bridge address (forwarded to the host's ClickHouse).
    pub fn clickhouse_url_for_pods(&self) -> String {
        let (prefix, addr, path) = &self.clickhouse;
        format!("{prefix}{}:{}{path}", self.host_v4(), addr.port())
    }

    /// Redis for a pod: the bridge address, with the credentials of `ML_REDIS_URL` if any.
    pub fn redis_url_for_pods(&self) -> String {
        let (prefix, addr, path) = &self.redis;
        format!("{prefix}{}:{}{path}", self.host_v4(), addr.port())
    }

    /// Kafka for a pod: the host's `127.0.0.1:<port>` list, forwarded inside every pod.
    pub fn kafka_bootstrap_for_pods(&self) -> String {
        self.kafka
            .iter()
            .map(|k| format!("127.0.0.1:{}", k.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Makes a host service on `127.0.0.1:port` reachable from the pods at
    /// `host_addr():port` (services the test starts itself can also bind `host_addr()`).
    pub fn expose_host_port(&mut self, port: u16) -> anyhow::Result<()> {
        let route = (
            SocketAddr::new(self.host_addr(), port),
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
        );
        self.forwarders.push(Forwarder::start(None, vec![route])?);
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for f in &mut self.forwarders {
            f.stop();
        }
        remove_leftovers(&self.id);
        let _ = std::fs::remove_file(Path::new(STATE_DIR).join(format!("{}.owner", self.id)));
    }
}

/// Removes every namespace, veth and bridge named for `id`, and kills the processes still
/// inside those namespaces (pods this harness started in an earlier, crashed run).
fn remove_leftovers(id: &str) {
    let ns_prefix = format!("ml{id}-");
    let namespaces: Vec<String> = ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&ns_prefix))
        .map(str::to_owned)
        .collect();
    for ns in &namespaces {
        let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        ip_quiet(&["netns", "del", ns]);
    }
    let links = ip(&["-o", "link", "show"]).unwrap_or_default();
    let veth_prefix = format!("mlv{id}p");
    for link in links.lines() {
        // "7: mlv1a2b3cp0@if2: <…" → "mlv1a2b3cp0"
        let Some(name) = link.split(':').nth(1).map(|s| s.trim()) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(&veth_prefix) {
            ip_quiet(&["link", "del", name]);
        }
    }
    ip_quiet(&["link", "del", &format!("mlb{id}")]);
}

/// A free 10.77.N (no interface holds an address in it), starting from `seed`.
fn free_octet(seed: u64) -> anyhow::Result<u8> {
    let used: BTreeSet<u8> = ip(&["-o", "-4", "addr", "show"])?
        .split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .filter(|a| a.octets()[..2] == PREFIX)
        .map(|a| a.octets()[2])
        .collect();
    // 10.77.1 … 10.77.250
    (0..250u64)
        .map(|k| ((seed + k) % 250 + 1) as u8)
        .find(|n| !used.contains(n))
        .context("every 10.77.N/24 is in use")
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path) -> anyhow::Result<()> {
    // From <sched.h>; declared here so the tests need no libc crate for one call. std links
    // the C library, which provides `setns` (glibc ≥ 2.14, musl ≥ 1.1.9).
    unsafe extern "C" {
        fn setns(fd: i32, nstype: i32) -> i32;
    }
    const CLONE_NEWNET: i32 = 0x4000_0000;
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: `f` is an open namespace file for the duration of the call; setns only reads
    // the descriptor and changes the calling thread's network namespace.
    let rc = unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// TCP forwarders (listen → target) on one thread, optionally inside a namespace.
struct Forwarder {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn start(
        netns: Option<PathBuf>,
        routes: Vec<(SocketAddr, SocketAddr)>,
    ) -> anyhow::Result<Self> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let thread = std::thread::spawn(move || {
            // Sockets belong to the namespace of the thread that creates them, and a
            // current-thread runtime creates every socket (accepts, connects) right here.
            let setup = || -> anyhow::Result<_> {
                if let Some(p) = &netns {
                    enter_netns(p)?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let listeners = routes
                    .iter()
                    .map(|(listen, target)| {
                        let l = std::net::TcpListener::bind(listen)
                            .with_context(|| format!("forwarder cannot bind {listen}"))?;
                        l.set_nonblocking(true)?;
                        Ok((l, *target))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok((rt, listeners))
            };
            let (rt, listeners) = match setup() {
                Ok(x) => {
                    let _ = ready_tx.send(Ok(()));
                    x
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                for (l, target) in listeners {
                    let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                        continue;
                    };
                    tokio::spawn(accept_loop(l, target));
                }
                let _ = stop_rx.await;
            });
            // Dropping the runtime cancels every task: listeners and connections close.
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                bail!("forwarder thread died during setup")
            }
        }
    }

    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(l: tokio::net::TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = l.accept().await else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Whether `addr` accepts a TCP connection within `timeout` (from the calling thread's
/// namespace; use inside [`Net::in_pod`]).
pub fn reachable(addr: SocketAddr, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&addr, timeout).is_ok()
}

/// Whether `addr` accepts a TCP connection before `deadline` passes, trying again after a
/// quick failure: right after [`Net::heal`] the neighbour (ARP) entry of a peer may still be
/// marked failed from the partition, which fails a connect at once.
pub fn reachable_within(addr: SocketAddr, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        if reachable(addr, left.min(Duration::from_secs(1))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `request` on a fresh connection to `addr` and returns everything it answers until it
/// closes or `timeout` passes without data (blocking; for probes inside [`Net::in_pod`]).
pub fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e)
                if !out.is_empty()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                break;
            }
            Err(e) => return Err(e).with_context(|| format!("reading from {addr}")),
        }
    }
    Ok(out)
}
