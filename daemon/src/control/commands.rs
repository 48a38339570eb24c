//! What each control command does. One function per command; each returns the reply's
//! `result` or an error with its code. Actors are reached through the supervisor's child list
//! and told apart by their message type, so a restarted actor is found again.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marketlane_actors::Role;
use marketlane_actors::calculator::consumer::ConsumerMsg;
use marketlane_actors::clickhouse_writer::WriterMsg;
use marketlane_actors::cluster::{ClusterMsg, ClusterSnapshot};
use marketlane_actors::config::{SecType as IbSecType, SymbolConfig};
use marketlane_actors::ib_session::SessionMsg;
use marketlane_actors::ib_session::actor::SymbolError;
use marketlane_actors::ib_websocket::WsMsg;
use marketlane_actors::kafka::producer::ProducerMsg;
use marketlane_actors::names;
use marketlane_actors::normalizer::NormalizerMsg;
use marketlane_actors::supervisor::{
    ChildCell, ChildKind, STATUS_DEADLINE, Snapshot, SupervisorMsg,
};
use marketlane_protocol::SchemaSet;
use marketlane_protocol::control::{
    ActorStatus, Command, ErrorCode, FaultKind, SecType, StatusResult,
};
use marketlane_protocol::ib::Availability;
use ractor::ActorRef;
use serde::Serialize;
use serde_json::{Value, json};
use tracing::info;

use super::{LogControl, Readiness};

/// How long one actor may take to answer `GetState`.
const STATE_TIMEOUT_MS: u64 = 2_000;
/// Resolving a contract is a REST round trip or two, rate-limited.
const RESOLVE_TIMEOUT_MS: u64 = 20_000;

pub type CmdResult = Result<Value, (ErrorCode, String)>;

fn err<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, (ErrorCode, String)> {
    Err((code, message.into()))
}

/// What the control socket can reach in the running daemon.
pub struct Daemon {
    pub supervisor: ActorRef<SupervisorMsg>,
    pub instance: String,
    pub roles: Vec<Role>,
    pub schemas_dir: PathBuf,
    /// The schemas the lane runs with (topics, tables, validation).
    pub schemas: Mutex<Arc<SchemaSet>>,
    pub log: LogControl,
    pub readiness: Readiness,
    pub drain_deadline: Duration,
    pub allow_fault_injection: bool,
}

fn to_json(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Daemon {
    pub async fn execute(&self, command: Command) -> CmdResult {
        match command {
            Command::Status => self.status().await,
            Command::Subscriptions => self.subscriptions().await,
            Command::Subscribe {
                symbol,
                sec_type,
                exchange,
            } => self.subscribe(symbol, sec_type, exchange).await,
            Command::Unsubscribe { symbol } => self.unsubscribe(symbol).await,
            Command::Rebalance => self.rebalance().await,
            Command::Reauth => self.reauth().await,
            Command::Pause { actor } => self.pause_resume(&actor, true).await,
            Command::Resume { actor } => self.pause_resume(&actor, false).await,
            Command::Drain { deadline_secs } => self.drain(deadline_secs).await,
            Command::ReloadSchemas => self.reload_schemas(),
            Command::LogLevel { level } => self.log_level(level),
            Command::Fault { actor, kind } => self.fault(&actor, kind).await,
        }
    }

    async fn children(&self) -> Result<Vec<ChildCell>, (ErrorCode, String)> {
        ractor::call_t!(self.supervisor, SupervisorMsg::Children, STATE_TIMEOUT_MS).or_else(|e| {
            err(
                ErrorCode::Timeout,
                format!("the lane supervisor did not answer (busy draining or stuck): {e}"),
            )
        })
    }

    fn roles(&self) -> Vec<String> {
        self.roles
            .iter()
            .map(|r| match r {
                Role::Connector => "connector".to_string(),
                Role::Writer => "writer".to_string(),
                Role::Calculator => "calculator".to_string(),
            })
            .collect()
    }

    async fn status(&self) -> CmdResult {
        // The supervisor answers within its status deadline whatever its children do.
        let timeout = STATUS_DEADLINE.as_millis() as u64 + STATE_TIMEOUT_MS;
        let lane =
            ractor::call_t!(self.supervisor, SupervisorMsg::Status, timeout).or_else(|e| {
                err(
                    ErrorCode::Timeout,
                    format!("the lane supervisor did not answer (busy draining or stuck): {e}"),
                )
            })?;
        let cluster = lane
            .children
            .iter()
            .find(|c| c.kind == ChildKind::Cluster)
            .and_then(|c| c.snapshot.state().cloned());
        let actors = lane
            .children
            .into_iter()
            .map(|c| ActorStatus {
                alive: c.snapshot != Snapshot::Restarting,
                state: match c.snapshot {
                    Snapshot::State(v) => v,
                    Snapshot::NoAnswer(_) | Snapshot::Restarting => Value::Null,
                },
                actor: c.actor,
                kind: c.kind.as_str().into(),
                restarts: c.restarts,
                summary: c.summary,
            })
            .collect();
        Ok(to_json(StatusResult {
            instance: self.instance.clone(),
            roles: self.roles(),
            ready: self.readiness.is_ready(),
            ready_reason: self.readiness.reason(),
            draining: self.readiness.draining.load(Ordering::Relaxed),
            log_level: self.log.current(),
            cluster,
            actors,
        }))
    }

    async fn session(&self) -> Result<ActorRef<SessionMsg>, (ErrorCode, String)> {
        if !self.roles.contains(&Role::Connector) {
            return err(
                ErrorCode::Unavailable,
                format!(
                    "this pod runs no connector (roles: {})",
                    self.roles().join(",")
                ),
            );
        }
        let children = self.children().await?;
        let child = children
            .into_iter()
            .find(|c| c.actor == names::IB_SESSION)
            .ok_or((
                ErrorCode::Unavailable,
                "no ib session in this pod".to_string(),
            ))?;
        match child.cell {
            Some(cell) => Ok(cell.into()),
            None => err(
                ErrorCode::Unavailable,
                "the ib session actor is restarting or stopped (drained?)",
            ),
        }
    }

    async fn subscriptions(&self) -> CmdResult {
        let session = self.session().await?;
        let symbols = ractor::call_t!(session, SessionMsg::Symbols, STATE_TIMEOUT_MS)
            .or_else(|e| err(ErrorCode::Timeout, format!("ib session: {e}")))?;
        let symbols = self.with_availability(to_json(symbols)).await;
        Ok(match self.cluster().await {
            Some(cluster) => json!({
                "instance": self.instance,
                "cluster": cluster,
                "note": "symbols: contracts this pod resolved; cluster.owner: which pod streams each",
                "symbols": symbols,
            }),
            None => json!({
                "instance": self.instance,
                "cluster": null,
                "note": "no cluster configured: this pod's subscriptions only",
                "symbols": symbols,
            }),
        })
    }

    /// Adds each symbol's market-data availability (field 6509, as the websocket last received
    /// it) to the session's symbol lines: `availability` is IB's code (`RpB`, `DPB`, …) and
    /// `market_data` its meaning (`realtime`, `delayed`, …); both null before the symbol's
    /// first full frame (or while this pod does not stream it).
    async fn with_availability(&self, mut symbols: Value) -> Value {
        let mut codes = serde_json::Map::new();
        if let Ok(children) = self.children().await
            && let Some(cell) = children
                .into_iter()
                .find(|c| c.actor == names::IB_WEBSOCKET)
                .and_then(|c| c.cell)
        {
            let ws: ActorRef<WsMsg> = cell.into();
            if let Ok(st) = ractor::call_t!(ws, WsMsg::GetState, STATE_TIMEOUT_MS) {
                codes = st
                    .availability
                    .into_iter()
                    .map(|(s, c)| (s, Value::String(c)))
                    .collect();
            }
        }
        if let Value::Array(lines) = &mut symbols {
            for line in lines.iter_mut() {
                let Value::Object(m) = line else { continue };
                let code = m
                    .get("symbol")
                    .and_then(Value::as_str)
                    .and_then(|s| codes.get(s))
                    .cloned()
                    .unwrap_or(Value::Null);
                let label = code
                    .as_str()
                    .map(|c| Availability::parse(&Value::String(c.into())))
                    .and_then(|a| a.map(|a| Value::String(a.label().into())))
                    .unwrap_or(Value::Null);
                m.insert("availability".into(), code);
                m.insert("market_data".into(), label);
            }
        }
        symbols
    }

    /// The cluster member's view, if this pod runs one.
    async fn cluster(&self) -> Option<ClusterSnapshot> {
        let r = self.cluster_member().await.ok()??;
        ractor::call_t!(r, ClusterMsg::GetState, STATE_TIMEOUT_MS).ok()
    }

    /// The live cluster member of this pod; `None` without a cluster (or while it restarts).
    async fn cluster_member(&self) -> Result<Option<ActorRef<ClusterMsg>>, (ErrorCode, String)> {
        Ok(self
            .children()
            .await?
            .into_iter()
            .find(|c| c.actor == names::CLUSTER)
            .and_then(|c| c.cell)
            .map(ActorRef::from))
    }

    async fn subscribe(
        &self,
        symbol: String,
        sec_type: SecType,
        exchange: Option<String>,
    ) -> CmdResult {
        let session = self.session().await?;
        let config = SymbolConfig {
            symbol,
            sec_type: match sec_type {
                SecType::Stock => IbSecType::Stock,
                SecType::Future => IbSecType::Future,
            },
            exchange,
            depth: false,
        };
        let r = ractor::call_t!(session, SessionMsg::AddSymbol, RESOLVE_TIMEOUT_MS, config)
            .or_else(|e| err(ErrorCode::Timeout, format!("ib session: {e}")))?;
        r.map(to_json).map_err(symbol_error)
    }

    async fn unsubscribe(&self, symbol: String) -> CmdResult {
        let session = self.session().await?;
        let r = ractor::call_t!(
            session,
            SessionMsg::RemoveSymbol,
            STATE_TIMEOUT_MS,
            symbol.clone()
        )
        .or_else(|e| err(ErrorCode::Timeout, format!("ib session: {e}")))?;
        r.map(|conids| json!({"symbol": symbol, "unsubscribed_conids": conids}))
            .map_err(symbol_error)
    }

    async fn rebalance(&self) -> CmdResult {
        if let Some(r) = self.cluster_member().await? {
            // The split is a function of the live members: recompute it now and report it.
            r.cast(ClusterMsg::Reassign)
                .or_else(|e| err(ErrorCode::Failed, format!("cluster: {e}")))?;
            let snap = ractor::call_t!(r, ClusterMsg::GetState, STATE_TIMEOUT_MS)
                .or_else(|e| err(ErrorCode::Timeout, format!("cluster: {e}")))?;
            let mut per_member = std::collections::BTreeMap::<String, usize>::new();
            for owner in snap.owner.values() {
                *per_member.entry(owner.clone()).or_default() += 1;
            }
            return Ok(json!({
                "instance": self.instance,
                "symbols_per_member": per_member,
                "held": snap.held.len(),
                "handing_over": snap.handing_over,
                "unassigned": snap.unassigned,
            }));
        }
        let mut local = 0;
        if let Ok(session) = self.session().await
            && let Ok(symbols) = ractor::call_t!(session, SessionMsg::Symbols, STATE_TIMEOUT_MS)
        {
            local = symbols.len();
        }
        err(
            ErrorCode::Unavailable,
            format!(
                "no cluster configured: nothing to rebalance ({} streams all {local} of its symbols itself)",
                self.instance
            ),
        )
    }

    async fn reauth(&self) -> CmdResult {
        let session = self.session().await?;
        let before = ractor::call_t!(session, SessionMsg::GetState, STATE_TIMEOUT_MS)
            .map(|s| s.state.label())
            .unwrap_or("unknown");
        session
            .cast(SessionMsg::Reauthenticate)
            .or_else(|e| err(ErrorCode::Failed, format!("ib session: {e}")))?;
        info!(
            state_before = before,
            "re-authentication requested over the control socket"
        );
        Ok(json!({"requested": true, "state_before": before}))
    }

    async fn fault(&self, actor: &str, kind: FaultKind) -> CmdResult {
        if !self.allow_fault_injection {
            return err(
                ErrorCode::Unavailable,
                "fault injection is off (control.allow_fault_injection = false)",
            );
        }
        let children = self.children().await?;
        let Some(child) = children.iter().find(|c| c.actor == actor) else {
            return err(
                ErrorCode::NotFound,
                format!("no actor named {actor:?} in this pod"),
            );
        };
        let Some(cell) = child.cell.clone() else {
            return err(
                ErrorCode::Unavailable,
                format!("{actor} is restarting; try again"),
            );
        };
        let sent = match (kind, child.kind) {
            (FaultKind::Panic, ChildKind::Normalizer) => ActorRef::<NormalizerMsg>::from(cell)
                .cast(NormalizerMsg::InjectPanic)
                .map_err(|e| e.to_string()),
            (FaultKind::Panic, ChildKind::Writer) => ActorRef::<WriterMsg>::from(cell)
                .cast(WriterMsg::InjectPanic)
                .map_err(|e| e.to_string()),
            (FaultKind::Panic, ChildKind::Producer) => ActorRef::<ProducerMsg>::from(cell)
                .cast(ProducerMsg::InjectPanic)
                .map_err(|e| e.to_string()),
            (FaultKind::Stall, ChildKind::Writer) => ActorRef::<WriterMsg>::from(cell)
                .cast(WriterMsg::InjectStall)
                .map_err(|e| e.to_string()),
            (FaultKind::Stall, ChildKind::CalculatorConsumer) => {
                ActorRef::<ConsumerMsg>::from(cell)
                    .cast(ConsumerMsg::InjectStall)
                    .map_err(|e| e.to_string())
            }
            (FaultKind::Panic, other) => {
                return err(
                    ErrorCode::BadArgs,
                    format!(
                        "{actor} is a {other}; a panic reaches normalizers, writers and the producer"
                    ),
                );
            }
            (FaultKind::Stall, other) => {
                return err(
                    ErrorCode::BadArgs,
                    format!(
                        "{actor} is a {other}; a stall reaches writers and calculator consumers"
                    ),
                );
            }
        };
        sent.or_else(|e| err(ErrorCode::Failed, format!("{actor}: {e}")))?;
        let kind = match kind {
            FaultKind::Panic => "panic",
            FaultKind::Stall => "stall",
        };
        tracing::warn!(actor, kind, "fault injected over the control socket");
        Ok(json!({"actor": actor, "kind": kind, "restarts_before": child.restarts}))
    }

    async fn pause_resume(&self, actor: &str, pause: bool) -> CmdResult {
        let children = self.children().await?;
        let wanted = [actor.to_string(), names::writer(actor)];
        let Some(child) = children.iter().find(|c| wanted.contains(&c.actor)) else {
            let writers: Vec<&str> = children
                .iter()
                .filter(|c| c.actor.starts_with("clickhouse_writer_"))
                .map(|c| c.actor.as_str())
                .collect();
            return err(
                ErrorCode::NotFound,
                format!(
                    "no writer or calculator named {actor:?} in this pod; writers: {}",
                    if writers.is_empty() {
                        "none".to_string()
                    } else {
                        writers.join(", ")
                    }
                ),
            );
        };
        let Some(cell) = child.cell.clone() else {
            return err(
                ErrorCode::Unavailable,
                format!("{} is restarting; try again", child.actor),
            );
        };
        match child.kind {
            ChildKind::Writer => {
                let w: ActorRef<WriterMsg> = cell.into();
                w.cast(if pause {
                    WriterMsg::Pause
                } else {
                    WriterMsg::Resume
                })
                .or_else(|e| err(ErrorCode::Failed, format!("{}: {e}", child.actor)))?;
                // Answered after the pause/resume: the state shows it took effect.
                let st = ractor::call_t!(w, WriterMsg::GetState, STATE_TIMEOUT_MS)
                    .or_else(|e| err(ErrorCode::Timeout, format!("{}: {e}", child.actor)))?;
                info!(actor = %child.actor, paused = st.paused, "writer paused/resumed over the control socket");
                Ok(json!({"actor": child.actor, "kind": "writer", "paused": st.paused}))
            }
            kind => err(
                ErrorCode::BadArgs,
                format!(
                    "{} is a {kind}; only writers and calculators can be paused",
                    child.actor
                ),
            ),
        }
    }

    async fn drain(&self, deadline_secs: Option<f64>) -> CmdResult {
        if self.readiness.draining.swap(true, Ordering::SeqCst) {
            return err(ErrorCode::Unavailable, "already drained or draining");
        }
        self.readiness.set(false, "draining");
        let deadline = deadline_secs
            .map(Duration::from_secs_f64)
            .unwrap_or(self.drain_deadline);
        info!(?deadline, "drain requested over the control socket");
        let report = ractor::call_t!(
            self.supervisor,
            SupervisorMsg::Drain,
            deadline.as_millis() as u64 + 2_000,
            deadline
        )
        .or_else(|e| err(ErrorCode::Timeout, format!("drain: {e}")))?;
        let mut v = to_json(report);
        if let Value::Object(m) = &mut v {
            m.insert(
                "note".into(),
                "intake stopped, writers flushed and paused; the pod stays up unready until restarted"
                    .into(),
            );
        }
        Ok(v)
    }

    fn reload_schemas(&self) -> CmdResult {
        let loaded = SchemaSet::load_dir(&self.schemas_dir).map_err(|e| {
            (
                ErrorCode::Failed,
                format!(
                    "schemas in {} do not validate, nothing changed: {e}",
                    self.schemas_dir.display()
                ),
            )
        })?;
        let running = self
            .schemas
            .lock()
            .map(|s| s.clone())
            .map_err(|_| (ErrorCode::Failed, "schema lock poisoned".to_string()))?;
        let names =
            |s: &SchemaSet| -> BTreeSet<String> { s.iter().map(|c| c.category.clone()).collect() };
        let (old, new) = (names(&running), names(&loaded));
        let added: Vec<&String> = new.difference(&old).collect();
        let removed: Vec<&String> = old.difference(&new).collect();
        let changed: Vec<&String> = new
            .intersection(&old)
            .filter(|c| {
                let (a, b) = (running.get(c).ok(), loaded.get(c).ok());
                // `source` is the file path; only the schema itself counts.
                a.map(|a| (&a.fields, &a.sort_key, &a.event_time, &a.kafka_key))
                    != b.map(|b| (&b.fields, &b.sort_key, &b.event_time, &b.kafka_key))
            })
            .collect();
        info!(?added, ?removed, ?changed, "schemas reloaded and validated");
        Ok(json!({
            "dir": self.schemas_dir.display().to_string(),
            "categories": new.len(),
            "added": added,
            "removed": removed,
            "changed": changed,
            "applied": false,
            "note": "validated against the running set; the running lane keeps its schemas until restarted (no writer hook for live schema growth in this build)",
        }))
    }

    fn log_level(&self, level: Option<String>) -> CmdResult {
        match level {
            None => Ok(json!({"level": self.log.current()})),
            Some(level) => {
                let previous = self
                    .log
                    .set(&level)
                    .map_err(|e| (ErrorCode::BadArgs, format!("log-level: {e}")))?;
                info!(previous, level, "log level changed over the control socket");
                Ok(json!({"previous": previous, "level": level}))
            }
        }
    }
}

fn symbol_error(e: SymbolError) -> (ErrorCode, String) {
    let code = match e {
        SymbolError::AlreadySubscribed(_) | SymbolError::Resolve(_) => ErrorCode::Failed,
        SymbolError::NotSubscribed(_) => ErrorCode::NotFound,
        SymbolError::NotAuthenticated(_) => ErrorCode::Unavailable,
    };
    (code, e.to_string())
}
