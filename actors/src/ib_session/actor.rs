//! The IB session keepalive actor: it tickles every 60 s and acts on what the gateway says as
//! `recovery.rs` decides (initialize the brokerage session, wait for IB to bring it up,
//! re-authenticate at a bounded pace, wait out maintenance and the penalty box, report a
//! competing session instead of fighting it, restart a dead gateway, run the login command),
//! and resolves the configured symbols once authenticated. The websocket actor is told when
//! the session is ready, and to close only when no SSO session is left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;
use tracing::{error, info, warn};

use super::recovery::{Action, Observation, Recovery, RecoveryConfig};
use super::state::SessionState;
use crate::config::{IbConfig, SymbolConfig};
use crate::contracts::{self, Instrument};
use crate::ib_client::IbClient;
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
    /// Seconds since the last `ssodh/init`/`reauthenticate` while IB has not yet brought the
    /// brokerage session up (30–90 s is normal).
    pub waiting_for_brokerage_secs: Option<f64>,
    /// Re-authentications in the current recovery (the gateway restarts after
    /// `ib.reauth_attempts`).
    pub reauth_attempts: u32,
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
    /// What to call when, apart from the I/O (`recovery.rs`).
    recovery: Recovery,
    reauth_attempts: u32,
    /// IB said `authenticated:false` (or no session) since the websocket was last told the
    /// session is ready: IB ended the socket's subscriptions, so it must subscribe again once
    /// authenticated. A 429, maintenance or a slow gateway say nothing about the brokerage
    /// session: re-subscribing then would make the normalizers take the next delta for a
    /// snapshot and drop its trade.
    brokerage_lost: bool,
    instruments: Arc<BTreeMap<i64, Instrument>>,
    unresolved: BTreeMap<String, String>,
    last_resolve: Option<Instant>,
    /// When the login command last ran and how it went (tokio's clock: tests pause it).
    last_login: Option<(tokio::time::Instant, String)>,
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
        let recovery = Recovery::new(RecoveryConfig::from_ib(&args.ib));
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
            recovery,
            reauth_attempts: 0,
            brokerage_lost: false,
            instruments: Arc::default(),
            unresolved: BTreeMap::new(),
            last_resolve: None,
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
                // Look now. The state machine decides whether a call is due: a socket's
                // nudges never bring a re-authentication closer than `reauth_min_interval`;
                // ops asking (`ctl reauth`) do.
                if matches!(msg, SessionMsg::Reauthenticate) {
                    state.recovery.request_now();
                } else if state.state == SessionState::PenaltyBox {
                    // A look before the box ends only extends it.
                    return Ok(());
                }
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
                    waiting_for_brokerage_secs: state
                        .recovery
                        .waiting_for(tokio::time::Instant::now())
                        .map(|d| d.as_secs_f64()),
                    reauth_attempts: state.reauth_attempts,
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

    /// One step of the state machine; returns when to run the next.
    async fn step(&mut self) -> Duration {
        let super::io::Step {
            observation: obs,
            session,
            mut decision,
            call_failure,
        } = super::io::step(&mut self.recovery, &mut self.client).await;
        if matches!(
            obs,
            Observation::Status {
                authenticated: false,
                ..
            } | Observation::NoSession(_)
        ) {
            self.brokerage_lost = true;
        }
        if decision.action == Action::Login
            && let Some(reason) = self.login.as_ref().and_then(|l| l.failed_reason())
        {
            // The built-in login gave up (refused logins, a locked account): no more tries
            // until ops fix it and `ctl reauth`.
            decision.state = SessionState::LoginFailed;
            decision.action = Action::None;
            decision.reason = Some(reason);
        }
        self.reauth_attempts = self.recovery.attempts();
        if let Some(reason) = &decision.reason {
            self.last_failure = Some(reason.clone());
            if decision.state != self.state || decision.action != Action::None {
                warn!(reason = %reason, action = ?decision.action, "ib session: {}", decision.state.label());
            }
        }
        if call_failure.is_some() {
            self.last_failure = call_failure;
        }
        match decision.action {
            // `ssodh/init` and `reauthenticate` were called by `io::step`.
            Action::None | Action::Init | Action::Reauthenticate => {}
            Action::Escalate => self.escalate(decision.reason.clone()).await,
            Action::RestartGateway => {
                if let Some(gw) = self.names.lookup::<GatewayMsg>(IB_GATEWAY) {
                    let _ = gw.cast(GatewayMsg::Restart {
                        reason: decision.reason.clone().unwrap_or_default(),
                    });
                }
            }
            Action::Login => self.run_login_hook(false).await,
        }
        let was = self.state.clone();
        self.set_state(decision.state.clone());
        match decision.state {
            SessionState::Authenticated => self.on_authenticated(session).await,
            // Without an SSO session nothing the websocket holds can work (the gateway closes
            // its sockets): tell it to close and wait. Every other state leaves the socket
            // alone: it may still stream (a brokerage start, maintenance, a 429 on REST, a
            // competitor that has not taken over yet), and it re-subscribes when the session
            // is authenticated again.
            SessionState::NeedsLogin | SessionState::LoginFailed
                if !matches!(was, SessionState::NeedsLogin | SessionState::LoginFailed) =>
            {
                self.websocket(WsMsg::SessionLost {
                    reason: decision.reason.clone().unwrap_or_default(),
                });
                self.session_id = None;
            }
            _ => {}
        }
        decision.next
    }

    async fn on_authenticated(&mut self, session: Option<String>) {
        self.last_good_tickle = Some(Instant::now());
        self.last_failure = None;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics.ib_last_tickle_timestamp.set(now);
        let refresh = self.client.config().contract_refresh;
        if self.instruments.is_empty()
            || !self.unresolved.is_empty()
            || self.last_resolve.is_none_or(|t| t.elapsed() >= refresh)
        {
            self.resolve_contracts().await;
        }
        let session = session.unwrap_or_default();
        if self.brokerage_lost || self.session_id.as_deref() != Some(session.as_str()) {
            self.brokerage_lost = false;
            self.session_id = Some(session.clone());
            self.websocket(WsMsg::SessionReady { session });
        }
    }

    /// The ladder is exhausted (ibeam kills the gateway; its next cycle starts it and logs
    /// in): logout, restart a supervised gateway, run the login command.
    async fn escalate(&mut self, reason: Option<String>) {
        let reason = reason.unwrap_or_default();
        error!(reason = %reason, "ib session: re-authentication failed; escalating");
        if let Err(e) = self.client.logout().await {
            warn!(error = %e, "logout before the gateway restart failed");
        }
        let gateway = self.names.lookup::<GatewayMsg>(IB_GATEWAY);
        if let Some(gw) = &gateway {
            let _ = gw.cast(GatewayMsg::Restart {
                reason: reason.clone(),
            });
        }
        let has_login = self.login.is_some() || self.client.config().login_command.is_some();
        if has_login {
            self.run_login_hook(true).await;
        }
        if gateway.is_none() && !has_login {
            self.last_failure = Some(format!(
                "{reason}; no ib.gateway_command or ib.login_command: ops must log in"
            ));
        }
    }

    /// Runs the configured login command (at most once per `login_retry`) and records how it
    /// went: a gateway without a brokerage session needs a human or a helper to log in.
    async fn run_login_hook(&mut self, escalation: bool) {
        if let Some(login) = &self.login {
            login.start();
            return;
        }
        let config = self.client.config();
        let Some(cmd) = config.login_command.clone() else {
            return;
        };
        // An escalation comes at most once per ladder (minutes apart), so it does not wait
        // for `login_retry`.
        let last = self.last_login.as_ref().map(|(t, _)| *t);
        if !super::io::login_due(
            last,
            tokio::time::Instant::now(),
            config.login_retry,
            escalation,
        ) {
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
        self.last_login = Some((tokio::time::Instant::now(), outcome));
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
