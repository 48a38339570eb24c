//! What the supervisor needs of a child: a name, a kind, a way to (re)start it linked to the
//! supervisor, and its observable snapshot. Each actor implements [`Child`] beside its own
//! code (`<actor>/child.rs`), so adding an actor means one impl there and one line in
//! `lane.rs`; the supervisor and the control socket know no actor type.

use futures_util::future::BoxFuture;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use serde_json::Value;

/// What a child is, for the control socket (`kind` of `ctl status`) and the drain, which
/// handles some kinds in a fixed order (leave the cluster, stop intake, empty the
/// normalizers, flush the producer, flush the writers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    Session,
    Websocket,
    Normalizer,
    Producer,
    Writer,
    Retention,
    Gateway,
    Econ,
    Cluster,
    CalculatorConsumer,
    CalculatorWorker,
}

impl ChildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Websocket => "websocket",
            Self::Normalizer => "normalizer",
            Self::Producer => "producer",
            Self::Writer => "writer",
            Self::Retention => "retention",
            Self::Gateway => "gateway",
            Self::Econ => "econ",
            Self::Cluster => "cluster",
            Self::CalculatorConsumer => "calculator_consumer",
            Self::CalculatorWorker => "calculator_worker",
        }
    }
}

impl std::fmt::Display for ChildKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One supervised actor, built once at start with everything it needs to start again.
pub trait Child: Send + Sync + 'static {
    /// The registered name without the lane prefix (`kafka_producer`,
    /// `clickhouse_writer_<topic>`); unique within a lane.
    fn name(&self) -> String;

    fn kind(&self) -> ChildKind;

    /// Starts the actor registered as `name`, linked to the supervisor `sup` (its failure or
    /// stop reaches the supervisor as a supervision event).
    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>>;

    /// The actor's own snapshot (its `GetState` answer) as JSON. Unbounded: the caller gives
    /// all children one deadline together.
    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>>;

    /// The snapshot fields `ctl status` shows first in the actor's one-line summary (empty:
    /// its first few scalar fields).
    fn summary_keys(&self) -> &'static [&'static str] {
        &[]
    }
}

/// [`Child::spawn`] for an actor whose arguments are a clone of what the child holds.
pub fn spawn_linked<A: Actor>(
    name: String,
    actor: A,
    args: A::Arguments,
    sup: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, ActorProcessingErr>> {
    Box::pin(async move {
        let (r, _) = Actor::spawn_linked(Some(name), actor, args, sup).await?;
        Ok(r.get_cell())
    })
}

/// [`Child::snapshot`] for an actor answering `msg` (its `GetState` variant) with a
/// serializable snapshot.
pub fn ask_state<M, S>(
    cell: ActorCell,
    msg: fn(RpcReplyPort<S>) -> M,
) -> BoxFuture<'static, Result<Value, String>>
where
    M: ractor::Message,
    S: Serialize + Send + 'static,
{
    Box::pin(async move {
        let r: ActorRef<M> = cell.into();
        match r.call(msg, None).await {
            Ok(CallResult::Success(s)) => serde_json::to_value(s).map_err(|e| e.to_string()),
            Ok(CallResult::Timeout) => Err("timed out".into()),
            Ok(CallResult::SenderError) => Err("stopped before answering".into()),
            Err(e) => Err(format!("not reachable: {e}")),
        }
    })
}
