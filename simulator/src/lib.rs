//! A faithful simulator of the IB Client Portal (CP) gateway, built from
//! `shared/reference/ib-client-portal.md`: REST session endpoints and contract lookup under
//! `/v1/api`, the `/v1/api/ws` websocket with heartbeats and `smd`/`sbd` market data, a
//! session clock, pacing, injectable faults, and a ledger of every trade it sent.
//!
//! The daemon wires [`run`] as `marketlane sim`; tests call [`spawn`] on `127.0.0.1:0`.

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
mod tls;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub use config::{MIN_FRAME_INTERVAL_MS, SimArgs, SimConfig};
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

/// A running simulator. Dropping it stops the server without flushing; call
/// [`SimHandle::shutdown`] to flush the ledger.
pub struct SimHandle {
    sim: Arc<Sim>,
    addr: SocketAddr,
    tls: Option<(String, Vec<u8>)>,
    shutdown_tx: watch::Sender<bool>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http(s)://ADDR/v1/api`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/v1/api", self.addr)
    }

    /// `ws(s)://ADDR/v1/api/ws`.
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/api/ws", self.addr)
    }

    /// SHA-256 fingerprint of the self-signed certificate (`--tls` only).
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.0.as_str())
    }

    /// The self-signed certificate, DER (`--tls` only), for clients that pin it.
    pub fn tls_cert_der(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|t| t.1.as_slice())
    }

    /// The in-memory ledger (entries and summary).
    pub fn ledger(&self) -> &Ledger {
        &self.sim.ledger
    }

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

    /// Current sim time, Unix ms.
    pub fn sim_time_ms(&self) -> i64 {
        self.sim.clock.now_ms()
    }

    /// Websockets currently open.
    pub fn open_connections(&self) -> usize {
        self.sim.open_conns.load(Ordering::Relaxed)
    }

    /// Stops accepting, closes websockets, waits (bounded) for them, flushes the ledger.
    pub async fn shutdown(mut self) -> Result<LedgerSummary, SimError> {
        let _ = self.shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.sim.open_conns.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(server) = self.server.take() {
            match tokio::time::timeout_at(deadline, server).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server ended with an error"),
                Ok(_) => {}
                Err(_) => tracing::warn!("server did not stop in time"),
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.sim.ledger.flush()?;
        Ok(self.sim.ledger.summary())
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(s) = self.server.take() {
            s.abort();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Binds the listener and starts the simulator.
pub async fn spawn(config: SimConfig) -> Result<SimHandle, SimError> {
    config.validate()?;
    let scenario = match &config.scenario {
        Some(p) => fault::load_scenario(p)?,
        None => Vec::new(),
    };
    let clock = SimClock::new(config.speed, config.start_time_ms);
    let ledger = Ledger::new(config.ledger_path.as_deref(), config.ledger_memory_limit)?;
    let universe = Arc::new(Universe::build(
        clock.now_ms(),
        config.synthetic_symbols,
        config.seed,
    ));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let market = Arc::new(Market::new(
        universe.clone(),
        clock.clone(),
        MarketParams {
            seed: config.seed,
            frame_interval_ms: config.frame_interval_ms,
            trade_probability: config.trade_probability,
            status_probability: config.status_probability,
        },
        shutdown_rx.clone(),
    ));
    let session = Session::new(
        config.seed,
        config.auto_login,
        config.idle_timeout_secs,
        config.max_session_secs,
        config.competing_grace_secs,
        clock.now_ms(),
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: config.listen,
        source,
    })?;
    let tls = if config.tls {
        Some(tls::generate()?)
    } else {
        None
    };
    let (events, _) = broadcast::channel(256);
    let sim = Arc::new(Sim {
        cfg: config,
        clock,
        market,
        ledger,
        session: Mutex::new(session),
        pacer: Mutex::new(Pacer::default()),
        http_faults: Mutex::new(HttpFaults::default()),
        events,
        next_conn: AtomicU64::new(0),
        lines: AtomicUsize::new(0),
        open_conns: AtomicUsize::new(0),
        history_inflight: AtomicUsize::new(0),
        shutdown: shutdown_rx.clone(),
    });
    let app = http::router(sim.clone());
    let mut stop = shutdown_rx.clone();
    let graceful = async move {
        let _ = stop.changed().await;
    };
    let (server, tls_info) = match tls {
        Some(t) => {
            let l = tls::TlsListener::new(listener, t.acceptor, shutdown_rx.clone())
                .map_err(SimError::Serve)?;
            let server =
                tokio::spawn(
                    async move { axum::serve(l, app).with_graceful_shutdown(graceful).await },
                );
            (server, Some((t.fingerprint, t.cert_der)))
        }
        None => {
            let server = tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(graceful)
                    .await
            });
            (server, None)
        }
    };
    tracing::info!(
        %addr,
        tls = tls_info.is_some(),
        fingerprint = tls_info.as_ref().map(|t| t.0.as_str()),
        instruments = universe.len(),
        speed = sim.cfg.speed,
        "ib gateway simulator listening"
    );
    let mut tasks = vec![
        tokio::spawn(session_clock(sim.clone())),
        tokio::spawn(ledger_flusher(sim.clone())),
    ];
    if !scenario.is_empty() {
        tasks.push(tokio::spawn(run_scenario(sim.clone(), scenario)));
    }
    Ok(SimHandle {
        sim,
        addr,
        tls: tls_info,
        shutdown_tx,
        server: Some(server),
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
async fn ledger_flusher(sim: Arc<Sim>) {
    let mut stop = sim.shutdown.clone();
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = sim.ledger.flush()
            && !warned
        {
            tracing::error!(error = %e, "ledger flush failed");
            warned = true;
        }
    }
}

async fn run_scenario(sim: Arc<Sim>, steps: Vec<ScenarioStep>) {
    for step in steps {
        let at = (step.at_secs * 1000.0) as i64;
        let wait = at - sim.clock.elapsed_ms();
        if wait > 0 {
            sim.clock.sleep(wait as u64).await;
        }
        sim.inject(step.fault);
    }
}

/// `marketlane sim`: runs until ctrl-c or SIGTERM, then flushes the ledger.
pub async fn run(args: SimArgs) -> Result<(), SimError> {
    let handle = spawn(args.into()).await?;
    println!("ib gateway simulator on {}", handle.base_url());
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
