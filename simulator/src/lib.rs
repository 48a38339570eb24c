//! A faithful simulator of the IB Client Portal (CP) gateway, built from
//! `shared/reference/ib-client-portal.md`: REST session endpoints and contract lookup under
//! `/v1/api`, the `/v1/api/ws` websocket with heartbeats and `smd`/`sbd` market data, a
//! session clock, pacing, injectable faults, and a ledger of every trade it sent.
//!
//! The `marketlane-sim` binary (`src/main.rs`) wraps [`run`]; tests call [`spawn`] on
//! `127.0.0.1:0`.

mod clock;
pub mod config;
pub mod econ;
pub mod error;
pub mod fault;
mod http;
pub mod instruments;
pub mod ledger;
pub mod market;
mod session;
mod sim;
mod sso;
mod tls;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub use config::{GatewaySpec, MIN_FRAME_INTERVAL_MS, SimArgs, SimConfig};
pub use error::SimError;
pub use fault::{Fault, ScenarioStep};
pub use ledger::{Ledger, LedgerEntry, LedgerSummary};

use crate::clock::SimClock;
use crate::instruments::Universe;
use crate::market::{Market, MarketParams};
use crate::session::{Pacer, Session};
use crate::sim::{HttpFaults, Sim};

/// Locks a mutex, recovering from poisoning: every critical section leaves consistent state,
/// so a panicked holder (a bug) must not take the whole simulator down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long shutdown waits for websockets to close and the server to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// One gateway of a running simulator: what one IB user's Client Portal gateway is.
pub struct Gateway {
    sim: Arc<Sim>,
    addr: SocketAddr,
    tls: bool,
}

impl Gateway {
    pub fn username(&self) -> &str {
        &self.sim.cfg.username
    }

    pub fn account(&self) -> &str {
        &self.sim.cfg.account
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http(s)://ADDR` (the admin endpoints `/sim/*` live here).
    pub fn root_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `http(s)://ADDR/v1/api`.
    pub fn base_url(&self) -> String {
        format!("{}/v1/api", self.root_url())
    }

    /// `ws(s)://ADDR/v1/api/ws`.
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/api/ws", self.addr)
    }

    /// Injects a fault at this gateway only (its session, its sockets, its REST answers).
    pub fn inject(&self, fault: Fault) {
        self.sim.inject(fault);
    }

    /// The current SSO session id (what `/tickle` returns as `session`).
    pub fn session_id(&self) -> Option<String> {
        self.sim.session_id()
    }

    /// Performs the browser login (for `auto_login: false`); returns the session id.
    pub fn login(&self) -> Option<String> {
        self.sim.apply(|s, now| {
            if s.sso.is_none() {
                s.login(now);
            }
            s.sso.as_ref().map(|x| x.id.clone())
        })
    }

    /// Websockets currently open at this gateway.
    pub fn open_connections(&self) -> usize {
        self.sim.open_conns.load(Ordering::Relaxed)
    }

    /// `smd` lines open at this gateway (what `--line-cap` limits).
    pub fn lines(&self) -> usize {
        self.sim.lines.load(Ordering::Relaxed)
    }

    /// Sim time until which this gateway answers 429 (0: never boxed).
    pub fn penalty_until_ms(&self) -> i64 {
        lock(&self.sim.pacer).penalty_until
    }
}

/// A running simulator: one or more gateways on one sim clock, market and ledger. Dropping it
/// stops the servers without flushing; call [`SimHandle::shutdown`] to flush the ledger. The
/// methods that are not on [`Gateway`] act on the primary (`--listen`) gateway.
pub struct SimHandle {
    /// The primary gateway first, then the `--gateway` ones in the order given.
    gateways: Vec<Gateway>,
    ledger: Ledger,
    clock: SimClock,
    tls: Option<(String, Vec<u8>)>,
    shutdown_tx: watch::Sender<bool>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimHandle {
    /// Every gateway, the primary first.
    pub fn gateways(&self) -> &[Gateway] {
        &self.gateways
    }

    /// The gateway of IB user `username`.
    pub fn gateway(&self, username: &str) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.username() == username)
    }

    /// The `--listen` gateway.
    pub fn primary(&self) -> &Gateway {
        // `spawn` always starts the primary gateway first.
        &self.gateways[0]
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.primary().local_addr()
    }

    /// `http(s)://ADDR/v1/api`.
    pub fn base_url(&self) -> String {
        self.primary().base_url()
    }

    /// `ws(s)://ADDR/v1/api/ws`.
    pub fn ws_url(&self) -> String {
        self.primary().ws_url()
    }

    /// SHA-256 fingerprint of the self-signed certificate (`--tls` only; one for all gateways).
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.0.as_str())
    }

    /// The self-signed certificate, DER (`--tls` only), for clients that pin it.
    pub fn tls_cert_der(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|t| t.1.as_slice())
    }

    /// The in-memory ledger (entries and summary) of every gateway.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Injects a fault at the primary gateway.
    pub fn inject(&self, fault: Fault) {
        self.primary().inject(fault);
    }

    /// The primary gateway's SSO session id (what `/tickle` returns as `session`).
    pub fn session_id(&self) -> Option<String> {
        self.primary().session_id()
    }

    /// The browser login at the primary gateway (for `auto_login: false`).
    pub fn login(&self) -> Option<String> {
        self.primary().login()
    }

    /// Current sim time, Unix ms.
    pub fn sim_time_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Websockets currently open at the primary gateway.
    pub fn open_connections(&self) -> usize {
        self.primary().open_connections()
    }

    fn all_open_connections(&self) -> usize {
        self.gateways.iter().map(Gateway::open_connections).sum()
    }

    /// Stops accepting, closes websockets, waits (bounded) for them, flushes the ledger.
    pub async fn shutdown(mut self) -> Result<LedgerSummary, SimError> {
        let _ = self.shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.all_open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for server in self.servers.drain(..) {
            match tokio::time::timeout_at(deadline, server).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server ended with an error"),
                Ok(_) => {}
                Err(_) => tracing::warn!("server did not stop in time"),
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.ledger.flush()?;
        Ok(self.ledger.summary())
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        for s in self.servers.drain(..) {
            s.abort();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// FNV-1a: a stable per-username seed for the extra gateways' session ids.
fn username_seed(seed: u64, username: &str) -> u64 {
    let h = username.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    seed ^ h
}

/// Binds every gateway's listener and starts the simulator.
pub async fn spawn(config: SimConfig) -> Result<SimHandle, SimError> {
    config.validate()?;
    let scenario = match &config.scenario {
        Some(p) => fault::load_scenario(p)?,
        None => Vec::new(),
    };
    let specs = config.all_gateways();
    if let Some(step) = scenario.iter().find(|s| {
        s.gateway
            .as_ref()
            .is_some_and(|g| !specs.iter().any(|x| &x.username == g))
    }) {
        return Err(SimError::Scenario {
            path: config.scenario.clone().unwrap_or_default(),
            reason: format!(
                "step at {} s names gateway {:?}, which is not configured",
                step.at_secs,
                step.gateway.as_deref().unwrap_or_default()
            ),
        });
    }
    let clock = SimClock::new(config.speed, config.start_time_ms);
    let ledger = Ledger::new(config.ledger_path.as_deref(), config.ledger_memory_limit)?;
    let universe = Arc::new(Universe::build(
        clock.now_ms(),
        config.synthetic_symbols,
        config.seed,
    ));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let market = Arc::new(
        Market::new(
            universe.clone(),
            clock.clone(),
            MarketParams {
                seed: config.seed,
                frame_interval_ms: config.frame_interval_ms,
                trade_probability: config.trade_probability,
                status_probability: config.status_probability,
            },
            shutdown_rx.clone(),
        )
        .with_availability(
            config
                .availability
                .iter()
                .map(|a| (a.symbol.clone(), a.code.clone())),
        )
        .with_quiet(config.quiet_symbols.iter().cloned()),
    );
    let tls = if config.tls {
        let t = tls::generate()?;
        if let Some(path) = &config.tls_cert_out {
            std::fs::write(path, &t.cert_pem)
                .map_err(|e| SimError::Tls(format!("cannot write {}: {e}", path.display())))?;
        }
        Some(t)
    } else {
        None
    };
    let next_conn = Arc::new(AtomicU64::new(0));
    let mut gateways = Vec::with_capacity(specs.len());
    let mut servers = Vec::with_capacity(specs.len());
    let mut tasks = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        // The primary keeps the configured seed, so its session ids are what they always were.
        let session_seed = if i == 0 {
            config.seed
        } else {
            username_seed(config.seed, &spec.username)
        };
        let session = Session::new(
            session_seed,
            config.auto_login,
            config.idle_timeout_secs,
            config.max_session_secs,
            config.competing_grace_secs,
            (config.brokerage_delay_secs * 1000.0) as u64,
            clock.now_ms(),
        );
        let listener = TcpListener::bind(spec.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: spec.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: spec.listen,
            source,
        })?;
        let cfg = SimConfig {
            listen: addr,
            username: spec.username,
            account: spec.account,
            ..config.clone()
        };
        let (events, _) = broadcast::channel(256);
        let sim = Arc::new(Sim {
            cfg,
            clock: clock.clone(),
            market: market.clone(),
            ledger: ledger.clone(),
            session: Mutex::new(session),
            pacer: Mutex::new(Pacer::default()),
            http_faults: Mutex::new(HttpFaults::default()),
            events,
            next_conn: next_conn.clone(),
            lines: AtomicUsize::new(0),
            open_conns: AtomicUsize::new(0),
            history_inflight: AtomicUsize::new(0),
            shutdown: shutdown_rx.clone(),
            sso_page: Mutex::default(),
        });
        let app = http::router(sim.clone());
        let mut stop = shutdown_rx.clone();
        let graceful = async move {
            let _ = stop.changed().await;
        };
        let server = match &tls {
            Some(t) => {
                let l = tls::TlsListener::new(listener, t.acceptor.clone(), shutdown_rx.clone())
                    .map_err(SimError::Serve)?;
                tokio::spawn(
                    async move { axum::serve(l, app).with_graceful_shutdown(graceful).await },
                )
            }
            None => tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(graceful)
                    .await
            }),
        };
        tracing::info!(
            %addr,
            username = %sim.cfg.username,
            account = %sim.cfg.account,
            tls = tls.is_some(),
            fingerprint = tls.as_ref().map(|t| t.fingerprint.as_str()),
            instruments = universe.len(),
            speed = sim.cfg.speed,
            "ib gateway simulator listening"
        );
        tasks.push(tokio::spawn(session_clock(sim.clone())));
        servers.push(server);
        gateways.push(Gateway {
            sim,
            addr,
            tls: tls.is_some(),
        });
    }
    tasks.push(tokio::spawn(ledger_flusher(
        ledger.clone(),
        shutdown_rx.clone(),
    )));
    if !scenario.is_empty() {
        let sims = gateways.iter().map(|g| g.sim.clone()).collect();
        tasks.push(tokio::spawn(run_scenario(sims, clock.clone(), scenario)));
    }
    Ok(SimHandle {
        gateways,
        ledger,
        clock,
        tls: tls.map(|t| (t.fingerprint, t.cert_der)),
        shutdown_tx,
        servers,
        tasks,
    })
}

/// Applies idle timeout, 24 h expiry and competing grace even when no request comes in, so
/// websockets learn about it through `sts`.
async fn session_clock(sim: Arc<Sim>) {
    let mut stop = sim.shutdown.clone();
    loop {
        tokio::select! {
            _ = sim.clock.sleep(1_000) => {}
            _ = stop.changed() => break,
        }
        sim.apply(|s, now| s.check_clock(now));
    }
}

/// Keeps the ledger file current for readers that tail it.
async fn ledger_flusher(ledger: Ledger, mut stop: watch::Receiver<bool>) {
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = ledger.flush()
            && !warned
        {
            tracing::error!(error = %e, "ledger flush failed");
            warned = true;
        }
    }
}

/// `sims[0]` is the primary gateway, where steps without a `gateway` go (`spawn` checked
/// that every named gateway exists).
async fn run_scenario(sims: Vec<Arc<Sim>>, clock: SimClock, steps: Vec<ScenarioStep>) {
    for step in steps {
        let at = (step.at_secs * 1000.0) as i64;
        let wait = at - clock.elapsed_ms();
        if wait > 0 {
            clock.sleep(wait as u64).await;
        }
        let target = match &step.gateway {
            Some(name) => sims.iter().find(|s| &s.cfg.username == name),
            None => sims.first(),
        };
        if let Some(sim) = target {
            sim.inject(step.fault);
        }
    }
}

/// `marketlane-sim`: runs until ctrl-c or SIGTERM, then flushes the ledger.
pub async fn run(args: SimArgs) -> Result<(), SimError> {
    let handle = spawn(args.into()).await?;
    for g in handle.gateways() {
        println!(
            "ib gateway simulator on {} (user {}, account {})",
            g.base_url(),
            g.username(),
            g.account()
        );
    }
    if let Some(fp) = handle.tls_fingerprint() {
        println!("tls certificate sha256 fingerprint: {fp}");
    }
    wait_for_signal().await?;
    tracing::info!("stopping simulator");
    let summary = handle.shutdown().await?;
    tracing::info!(?summary, "simulator stopped; ledger flushed");
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> Result<(), SimError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(SimError::Signal)?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(SimError::Signal),
        _ = term.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Result<(), SimError> {
    tokio::signal::ctrl_c().await.map_err(SimError::Signal)
}
