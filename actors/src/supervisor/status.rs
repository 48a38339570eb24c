//! The lane's observable state: every child's snapshot, asked of all children at once under
//! one deadline, so a child that does not answer costs the deadline once and delays no other.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use ractor::ActorCell;
use serde::Serialize;
use serde_json::Value;

use super::child::{Child, ChildKind};

/// How long all children together may take to answer a status request.
pub const STATUS_DEADLINE: Duration = Duration::from_secs(2);

/// The observable state of the whole tree (control socket `status`, tests), in start order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LaneStatus {
    pub children: Vec<ChildStatus>,
}

impl LaneStatus {
    pub fn child(&self, actor: &str) -> Option<&ChildStatus> {
        self.children.iter().find(|c| c.actor == actor)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChildStatus {
    /// Registered name without the lane prefix.
    pub actor: String,
    pub kind: ChildKind,
    pub restarts: usize,
    pub snapshot: Snapshot,
    /// One line of the fields ops look at first (`ctl status` table).
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "detail")]
pub enum Snapshot {
    /// The actor's `GetState` answer.
    State(Value),
    /// Alive, but no answer within the deadline, or an error instead of one.
    NoAnswer(String),
    /// Failed or stopped; the supervisor waits to restart it.
    Restarting,
}

impl Snapshot {
    pub fn state(&self) -> Option<&Value> {
        match self {
            Self::State(v) => Some(v),
            _ => None,
        }
    }
}

/// One child as the supervisor holds it when a status is asked for.
pub(super) struct Asked {
    pub child: Arc<dyn Child>,
    pub cell: Option<ActorCell>,
    pub restarts: usize,
}

/// Asks every live child for its snapshot concurrently; whatever has not answered at
/// `deadline` shows as [`Snapshot::NoAnswer`].
pub(super) async fn gather(children: Vec<Asked>, deadline: Duration) -> LaneStatus {
    let until = tokio::time::Instant::now() + deadline;
    let asks = children.into_iter().map(|a| async move {
        let snapshot = match a.cell {
            None => Snapshot::Restarting,
            Some(cell) => match tokio::time::timeout_at(until, a.child.snapshot(cell)).await {
                Ok(Ok(v)) => Snapshot::State(v),
                Ok(Err(e)) => Snapshot::NoAnswer(e),
                Err(_) => Snapshot::NoAnswer(format!("no answer within {deadline:?}")),
            },
        };
        ChildStatus {
            actor: a.child.name(),
            kind: a.child.kind(),
            restarts: a.restarts,
            summary: summary(a.child.summary_keys(), &snapshot),
            snapshot,
        }
    });
    LaneStatus {
        children: join_all(asks).await,
    }
}

/// `key=value` of the `keys` present in the snapshot (or its first four scalars), then its
/// last error if it has one.
pub fn summary(keys: &[&str], snapshot: &Snapshot) -> String {
    let map = match snapshot {
        Snapshot::Restarting => return "waiting to be restarted".into(),
        Snapshot::NoAnswer(why) => return format!("no answer: {why}"),
        Snapshot::State(Value::Object(map)) => map,
        Snapshot::State(other) => return other.to_string(),
    };
    let fmt = |v: &Value| match v {
        Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or_default()),
        Value::String(s) => s.clone(),
        Value::Object(m) => m.len().to_string(),
        Value::Array(a) => a.len().to_string(),
        other => other.to_string(),
    };
    let mut parts: Vec<String> = keys
        .iter()
        .filter_map(|k| map.get(*k).filter(|v| !v.is_null()).map(|v| (k, v)))
        .map(|(k, v)| format!("{k}={}", fmt(v)))
        .collect();
    if parts.is_empty() {
        parts = map
            .iter()
            .filter(|(_, v)| v.is_number() || v.is_boolean() || v.is_string())
            .take(4)
            .map(|(k, v)| format!("{k}={}", fmt(v)))
            .collect();
    }
    if let Some(Value::String(e)) = map.get("last_error").or(map.get("last_failure")) {
        parts.push(format!("last_error={e:?}"));
    }
    parts.join(" ")
}
