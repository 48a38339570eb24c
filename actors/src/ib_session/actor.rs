//! The IB session keepalive actor: an explicit state machine over the gateway's REST session
//! endpoints. It tickles every 60 s, initializes the brokerage session (`ssodh/init`),
//! re-authenticates when the gateway says `authenticated:false`, backs off from a competing
//! session instead of fighting it, and resolves the configured symbols once authenticated.
//! The websocket actor is told when the session is ready and when it is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;
use tracing::{error, info, warn};

use super::state::SessionState;
use crate::config::{IbConfig, SymbolConfig};
use crate::contracts::{self, Instrument};
use crate::ib_client::{IbClient, IbError};
use crate::ib_gateway::GatewayMsg;
use crate::ib_websocket::WsMsg;
use crate::metrics::Metrics;
use crate::names::{ActorNames, IB_GATEWAY, IB_WEBSOCKET};

#[derive(RactorMessage)]
pub enum SessionMsg {
    /// Run one step of the state machine; `generation` drops stale timers.
    Check {
        generation: u64,
    },
    /// The websocket saw `sts authenticated:false`.
    SocketUnauthenticated,
    /// Ops asked for a re-authentication (control socket).
    Reauthenticate,
    /// A (re)started websocket actor asks for the session and instruments again.
    Announce,
    GetState(RpcReplyPort<SessionSnapshot>),
    /// Ops subscribe a symbol at run time (control socket): resolve it and push the new
    /// instrument map to the websocket. Not persisted: a restart goes back to the config.
    AddSymbol(SymbolConfig, RpcReplyPort<Result<SymbolLine, SymbolError>>),
    RemoveSymbol(String, RpcReplyPort<Result<Vec<i64>, SymbolError>>),
    /// Every symbol this session streams, resolved or not.
    Symbols(RpcReplyPort<Vec<SymbolLine>>),
    /// The cluster's share of the configured symbols for this pod (sent every heartbeat; a
    /// repeat of the same set changes nothing). Contracts of every configured symbol stay
    /// resolved, so a takeover only has to send `smd`.
    Assign(BTreeSet<String>),
}

/// One configured or added symbol and what it resolved to.
#[derive(Debug, Clone, Serialize)]
pub struct SymbolLine {
    pub symbol: String,
    pub sec_type: crate::config::SecType,
    pub exchange: Option<String>,
    pub conid: Option<i64>,
    /// Futures: the contract's last trading day (`YYYYMMDD`).
    pub last_trading_day: Option<u32>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SymbolError {
    #[error("{0} is already subscribed")]
    AlreadySubscribed(String),
    #[error("{0} is not subscribed")]
    NotSubscribed(String),
    #[error("the ib session is {0}, not authenticated: cannot resolve contracts now")]
    NotAuthenticated(&'static str),
    #[error("{0}")]
    Resolve(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionSnapshot {
    pub state: SessionState,
    pub seconds_since_last_good_tickle: Option<f64>,
    pub last_failure: Option<String>,
    pub instruments: usize,
    /// Instruments handed to the websocket: the cluster's share (all without a cluster).
    pub streamed_instruments: usize,
    pub unresolved_symbols: BTreeMap<String, String>,
    /// Outcome of the last login command, if one is configured and ran.
    pub last_login_outcome: Option<String>,
}

#[derive(Clone)]
pub struct SessionArgs {
    pub ib: IbConfig,
    pub names: ActorNames,
    pub metrics: Arc<Metrics>,
    /// A cluster assigns the symbols: stream none until it has.
    pub clustered: bool,
}

pub struct SessionActorState {
    client: IbClient,
    names: ActorNames,
    metrics: Arc<Metrics>,
    state: SessionState,
    generation: u64,
    session_id: Option<String>,
    last_good_tickle: Option<Instant>,
    last_failure: Option<String>,
    initialized: bool,
    instruments: Arc<BTreeMap<i64, Instrument>>,
    unresolved: BTreeMap<String, String>,
    last_resolve: Option<Instant>,
    unreachable_since: Option<Instant>,
    /// When the login command last ran and how it went.
    last_login: Option<(Instant, String)>,
    /// The built-in login (`[ib.login]`), run instead of `login_command`.
    login: Option<crate::ib_login::BuiltinLogin>,
    /// The configured symbols plus those added over the control socket.
    symbols: Vec<SymbolConfig>,
    /// With a cluster: the symbols this pod streams (its share, plus symbols added here over
    /// the control socket). `None`: every symbol.
    assigned: Option<BTreeSet<String>>,
    /// Symbols ops added over this pod's control socket (streamed whatever the assignment).
    added_here: BTreeSet<String>,
}

pub struct IbSession;

impl Actor for IbSession {
    type Msg = SessionMsg;
    type State = SessionActorState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let symbols = args.ib.symbols.clone();
        let login = crate::ib_login::BuiltinLogin::new(&args.ib, args.metrics.clone());
        let client = IbClient::new(args.ib, args.metrics.clone())?;
        let _ = myself.cast(SessionMsg::Check { generation: 0 });
        let st = SessionActorState {
            client,
            names: args.names,
            metrics: args.metrics,
            state: SessionState::Starting,
            generation: 0,
            session_id: None,
            last_good_tickle: None,
            last_failure: None,
            initialized: false,
            instruments: Arc::default(),
            unresolved: BTreeMap::new(),
            last_resolve: None,
            unreachable_since: None,
            last_login: None,
            login,
            symbols,
            assigned: args.clustered.then(BTreeSet::new),
            added_here: BTreeSet::new(),
        };
        st.export_state();
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Check { generation } => {
                if generation == state.generation {
                    let next = state.step().await;
                    state.generation += 1;
                    let g = state.generation;
                    myself.send_after(next, move || SessionMsg::Check { generation: g });
                }
            }
            SessionMsg::SocketUnauthenticated | SessionMsg::Reauthenticate => {
                // Ops asking for a re-authentication after `login_failed` have fixed the
                // credentials: count failed logins from zero again.
                if let (SessionMsg::Reauthenticate, Some(login)) = (&msg, &state.login) {
                    login.reset();
                }
                // Re-check now; the state machine decides between reauth and back-off.
                state.initialized =
                    state.initialized && matches!(state.state, SessionState::Authenticated);
                state.generation += 1;
                let _ = myself.cast(SessionMsg::Check {
                    generation: state.generation,
                });
            }
            SessionMsg::Announce => {
                if !state.instruments.is_empty() {
                    state.websocket(WsMsg::Instruments(state.streamed()));
                }
                if let (SessionState::Authenticated, Some(s)) = (&state.state, &state.session_id) {
                    state.websocket(WsMsg::SessionReady { session: s.clone() });
                }
            }
            SessionMsg::GetState(reply) => {
                let _ = reply.send(SessionSnapshot {
                    state: state.state.clone(),
                    seconds_since_last_good_tickle: state
                        .last_good_tickle
                        .map(|t| t.elapsed().as_secs_f64()),
                    last_failure: state.last_failure.clone(),
                    instruments: state.instruments.len(),
                    streamed_instruments: state.streamed().len(),
                    unresolved_symbols: state.unresolved.clone(),
                    last_login_outcome: match &state.login {
                        Some(login) => login.outcome(),
                        None => state.last_login.as_ref().map(|(_, o)| o.clone()),
                    },
                });
            }
            SessionMsg::Assign(symbols) => {
                let assigned: BTreeSet<String> = symbols
                    .into_iter()
                    .chain(state.added_here.iter().cloned())
                    .collect();
                if state.assigned.as_ref() != Some(&assigned) {
                    info!(symbols = assigned.len(), "cluster assignment");
                    state.assigned = Some(assigned);
                    state.websocket(WsMsg::Instruments(state.streamed()));
                }
            }
            SessionMsg::AddSymbol(symbol, reply) => {
                let _ = reply.send(state.add_symbol(symbol).await);
            }
            SessionMsg::RemoveSymbol(symbol, reply) => {
                let _ = reply.send(state.remove_symbol(&symbol));
            }
            SessionMsg::Symbols(reply) => {
                let _ = reply.send(state.symbol_lines());
            }
        }
        Ok(())
    }
}

impl SessionActorState {
    /// The resolved instruments this pod streams: the assigned ones, or all without a cluster.
    fn streamed(&self) -> Arc<BTreeMap<i64, Instrument>> {
        match &self.assigned {
            None => self.instruments.clone(),
            Some(assigned) => Arc::new(
                self.instruments
                    .iter()
                    .filter(|(_, i)| assigned.contains(&i.symbol))
                    .map(|(c, i)| (*c, i.clone()))
                    .collect(),
            ),
        }
    }

    fn symbol_lines(&self) -> Vec<SymbolLine> {
        self.symbols
            .iter()
            .map(|s| {
                let inst = self.instruments.values().find(|i| i.symbol == s.symbol);
                SymbolLine {
                    symbol: s.symbol.clone(),
                    sec_type: s.sec_type,
                    exchange: s.exchange.clone(),
                    conid: inst.map(|i| i.conid),
                    last_trading_day: inst.and_then(|i| i.last_trading_day),
                    error: self.unresolved.get(&s.symbol).cloned(),
                }
            })
            .collect()
    }

    async fn add_symbol(&mut self, symbol: SymbolConfig) -> Result<SymbolLine, SymbolError> {
        if self.symbols.iter().any(|s| s.symbol == symbol.symbol) {
            return Err(SymbolError::AlreadySubscribed(symbol.symbol));
        }
        if self.state != SessionState::Authenticated {
            return Err(SymbolError::NotAuthenticated(self.state.label()));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let resolved = contracts::resolve(&self.client, std::slice::from_ref(&symbol), now, 2)
            .await
            .remove(&symbol.symbol);
        let inst = match resolved {
            Some(Ok(inst)) => inst,
            Some(Err(e)) => return Err(SymbolError::Resolve(e.to_string())),
            None => {
                return Err(SymbolError::Resolve(format!(
                    "{} not resolved",
                    symbol.symbol
                )));
            }
        };
        info!(symbol = %symbol.symbol, conid = inst.conid, "symbol added");
        let mut map = (*self.instruments).clone();
        map.insert(inst.conid, inst.clone());
        self.instruments = Arc::new(map);
        self.symbols.push(symbol.clone());
        self.added_here.insert(symbol.symbol.clone());
        if let Some(assigned) = &mut self.assigned {
            assigned.insert(symbol.symbol.clone());
        }
        self.websocket(WsMsg::Instruments(self.streamed()));
        Ok(SymbolLine {
            symbol: symbol.symbol,
            sec_type: symbol.sec_type,
            exchange: symbol.exchange,
            conid: Some(inst.conid),
            last_trading_day: inst.last_trading_day,
            error: None,
        })
    }

    fn remove_symbol(&mut self, symbol: &str) -> Result<Vec<i64>, SymbolError> {
        let Some(i) = self.symbols.iter().position(|s| s.symbol == symbol) else {
            return Err(SymbolError::NotSubscribed(symbol.to_string()));
        };
        self.symbols.remove(i);
        self.unresolved.remove(symbol);
        self.added_here.remove(symbol);
        if let Some(assigned) = &mut self.assigned {
            assigned.remove(symbol);
        }
        let mut map = (*self.instruments).clone();
        let removed: Vec<i64> = map
            .iter()
            .filter(|(_, inst)| inst.symbol == symbol)
            .map(|(c, _)| *c)
            .collect();
        map.retain(|_, inst| inst.symbol != symbol);
        info!(symbol, ?removed, "symbol removed");
        self.instruments = Arc::new(map);
        self.websocket(WsMsg::Instruments(self.streamed()));
        Ok(removed)
    }

    fn export_state(&self) {
        for s in SessionState::LABELS {
            self.metrics
                .ib_session_state
                .with_label_values(&[s])
                .set(i64::from(self.state.label() == *s));
        }
    }

    fn set_state(&mut self, s: SessionState) {
        if s != self.state {
            info!(
                from = self.state.label(),
                to = s.label(),
                "ib session state"
            );
            self.state = s;
            self.export_state();
        }
    }

    fn websocket(&self, msg: WsMsg) {
        if let Some(ws) = self.names.lookup::<WsMsg>(IB_WEBSOCKET) {
            let _ = ws.cast(msg);
        }
    }

    fn fail(&mut self, state: SessionState, reason: String) {
        warn!(reason = %reason, "ib session: {}", state.label());
        self.last_failure = Some(reason.clone());
        if !matches!(state, SessionState::GatewayUnreachable) {
            self.websocket(WsMsg::SessionLost { reason });
        }
        self.set_state(state);
    }

    /// One step of the state machine; returns when to run the next.
    async fn step(&mut self) -> Duration {
        let tickle_every = self.client.config().tickle_interval;
        let tickle = match self.client.tickle().await {
            Ok(t) => t,
            Err(IbError::NoSession(m)) => {
                self.initialized = false;
                if let Some(reason) = self.login.as_ref().and_then(|l| l.failed_reason()) {
                    self.fail(SessionState::LoginFailed, reason);
                    return Duration::from_secs(5);
                }
                self.fail(SessionState::NeedsLogin, format!("no session: {m}"));
                self.run_login_hook().await;
                return Duration::from_secs(5);
            }
            Err(e @ IbError::RateLimited(_)) => {
                // Probing before IB's penalty box ends only extends it.
                self.fail(SessionState::PenaltyBox, e.to_string());
                return self.client.config().penalty_box;
            }
            Err(e) => {
                self.fail(SessionState::GatewayUnreachable, e.to_string());
                let since = *self.unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(60)
                    && let Some(gw) = self.names.lookup::<GatewayMsg>(IB_GATEWAY)
                {
                    // A supervised gateway that stopped answering is restarted (ibeam does
                    // the same); without one, ops must look.
                    let _ = gw.cast(GatewayMsg::Restart {
                        reason: format!("unreachable for {:?}: {e}", since.elapsed()),
                    });
                    self.unreachable_since = None;
                }
                return Duration::from_secs(2);
            }
        };
        self.unreachable_since = None;
        let status = match tickle.iserver.and_then(|i| i.auth_status) {
            Some(s) => s,
            None => match self.client.auth_status().await {
                Ok(s) => s,
                Err(IbError::NoBridge) => {
                    self.initialized = false;
                    Default::default()
                }
                Err(e) => {
                    self.fail(SessionState::GatewayUnreachable, e.to_string());
                    return Duration::from_secs(2);
                }
            },
        };
        if status.competing {
            // Another login took the username. Fighting back (reauth/force) in a loop would
            // kick the other session and get us kicked in turn: report and wait.
            self.initialized = false;
            self.fail(
                SessionState::Competing,
                format!("competing session: {}", status.message),
            );
            return Duration::from_secs(60);
        }
        if status.authenticated && status.connected {
            self.last_good_tickle = Some(Instant::now());
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.metrics.ib_last_tickle_timestamp.set(now);
            self.initialized = true;
            let was = self.state.clone();
            self.set_state(SessionState::Authenticated);
            let refresh = self.client.config().contract_refresh;
            if self.instruments.is_empty()
                || !self.unresolved.is_empty()
                || self.last_resolve.is_none_or(|t| t.elapsed() >= refresh)
            {
                self.resolve_contracts().await;
            }
            let session = tickle.session.unwrap_or_default();
            if was != SessionState::Authenticated
                || self.session_id.as_deref() != Some(session.as_str())
            {
                self.session_id = Some(session.clone());
                self.websocket(WsMsg::SessionReady { session });
            }
            return tickle_every;
        }
        if !self.initialized {
            self.set_state(SessionState::Initializing);
            match self.client.ssodh_init().await {
                Ok(_) => self.initialized = true,
                Err(e) => self.last_failure = Some(format!("ssodh/init: {e}")),
            }
            return Duration::from_secs(1);
        }
        // Initialized before, not authenticated now: idle expiry, nightly reset, or the
        // socket said so. Re-authenticate, then initialize the bridge again.
        self.fail(
            SessionState::Reauthenticating,
            format!("authenticated:false ({})", status.message),
        );
        if let Err(e) = self.client.reauthenticate().await {
            self.last_failure = Some(format!("reauthenticate: {e}"));
        }
        // The brokerage bridge does not come back by itself after a reset: open it again.
        match self.client.ssodh_init().await {
            Ok(_) => self.initialized = true,
            Err(e) => {
                self.initialized = false;
                self.last_failure = Some(format!("ssodh/init after reauthenticate: {e}"));
            }
        }
        Duration::from_secs(1)
    }

    /// Runs the configured login command (at most once per `login_retry`) and records how it
    /// went: a gateway without a brokerage session needs a human or a helper to log in.
    async fn run_login_hook(&mut self) {
        if let Some(login) = &self.login {
            login.start();
            return;
        }
        let config = self.client.config();
        let Some(cmd) = config.login_command.clone() else {
            return;
        };
        if self
            .last_login
            .as_ref()
            .is_some_and(|(t, _)| t.elapsed() < config.login_retry)
        {
            return;
        }
        info!(command = %cmd[0], "no brokerage session: running the login command");
        let mut run = tokio::process::Command::new(&cmd[0]);
        run.args(&cmd[1..]).kill_on_drop(true);
        // The login helper logs in as this pod's IB user (per StatefulSet ordinal).
        if let Some(user) = &config.username {
            run.env("IB_USERNAME", user);
        }
        let run = run.output();
        let outcome = match tokio::time::timeout(Duration::from_secs(120), run).await {
            Err(_) => "timed out after 120 s".to_string(),
            Ok(Err(e)) => format!("cannot start: {e}"),
            Ok(Ok(out)) if out.status.success() => "ok".to_string(),
            Ok(Ok(out)) => {
                let tail: String = String::from_utf8_lossy(&out.stderr)
                    .chars()
                    .rev()
                    .take(300)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                format!("{}: {}", out.status, tail.trim())
            }
        };
        let label = if outcome == "ok" { "ok" } else { "failed" };
        self.metrics
            .ib_login_attempts
            .with_label_values(&[label])
            .inc();
        info!(outcome = %outcome, "login command finished");
        self.last_login = Some((Instant::now(), outcome));
    }

    async fn resolve_contracts(&mut self) {
        self.last_resolve = Some(Instant::now());
        let symbols = self.symbols.clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let resolved = contracts::resolve(&self.client, &symbols, now, 2).await;
        let mut map = BTreeMap::new();
        self.unresolved.clear();
        for (symbol, r) in resolved {
            match r {
                Ok(inst) => {
                    map.insert(inst.conid, inst);
                }
                Err(e) => {
                    error!(symbol, error = %e, "cannot resolve symbol");
                    self.unresolved.insert(symbol, e.to_string());
                }
            }
        }
        if map.len() != self.instruments.len() || map.keys().ne(self.instruments.keys()) {
            info!(
                resolved = map.len(),
                unresolved = self.unresolved.len(),
                "instruments"
            );
            self.instruments = Arc::new(map);
            self.websocket(WsMsg::Instruments(self.streamed()));
        }
    }
}
