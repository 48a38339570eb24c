//! The supervisor with fake children on paused time: back-off, escalation, the restart
//! window, and a status that a silent child cannot hold up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;

/// What a fake child does.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Answers `GetState`; fails when told.
    Steady,
    /// Fails right after every start.
    FailsAtStart,
    /// Keeps every `GetState` reply port without answering.
    Silent,
}

#[derive(Clone)]
struct FakeArgs {
    behaviour: Behaviour,
    /// When each incarnation started.
    starts: Arc<Mutex<Vec<Instant>>>,
}

#[derive(RactorMessage)]
enum FakeMsg {
    GetState(RpcReplyPort<Value>),
    Fail,
}

struct Fake;

impl Actor for Fake {
    type Msg = FakeMsg;
    type State = (FakeArgs, Vec<RpcReplyPort<Value>>);
    type Arguments = FakeArgs;

    async fn pre_start(
        &self,
        _: ActorRef<FakeMsg>,
        args: FakeArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.starts.lock().unwrap().push(Instant::now());
        Ok((args, Vec::new()))
    }

    async fn post_start(
        &self,
        _: ActorRef<FakeMsg>,
        (args, _): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if args.behaviour == Behaviour::FailsAtStart {
            return Err("fails at start".into());
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<FakeMsg>,
        msg: FakeMsg,
        (args, held): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FakeMsg::GetState(reply) if args.behaviour == Behaviour::Silent => held.push(reply),
            FakeMsg::GetState(reply) => {
                let starts = args.starts.lock().unwrap().len();
                let _ = reply.send(json!({"starts": starts, "last_error": null}));
            }
            FakeMsg::Fail => return Err("told to fail".into()),
        }
        Ok(())
    }
}

struct FakeChild {
    name: &'static str,
    args: FakeArgs,
}

impl FakeChild {
    fn build(
        name: &'static str,
        behaviour: Behaviour,
    ) -> (Box<dyn Child>, Arc<Mutex<Vec<Instant>>>) {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let child = FakeChild {
            name,
            args: FakeArgs {
                behaviour,
                starts: starts.clone(),
            },
        };
        (Box::new(child), starts)
    }
}

impl Child for FakeChild {
    fn name(&self) -> String {
        self.name.into()
    }

    fn kind(&self) -> ChildKind {
        ChildKind::Econ
    }

    fn spawn(
        &self,
        name: String,
        sup: ActorCell,
    ) -> BoxFuture<'_, Result<ActorCell, ActorProcessingErr>> {
        spawn_linked(name, Fake, self.args.clone(), sup)
    }

    fn snapshot(&self, cell: ActorCell) -> BoxFuture<'static, Result<Value, String>> {
        ask_state(cell, FakeMsg::GetState)
    }

    fn summary_keys(&self) -> &'static [&'static str] {
        &["starts"]
    }
}

/// The supervisor's parent in the tests: reports how the supervisor ended.
struct Probe;

impl Actor for Probe {
    type Msg = ();
    type State = mpsc::UnboundedSender<String>;
    type Arguments = mpsc::UnboundedSender<String>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        evt: SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(_, e) => {
                let _ = tx.send(format!("failed: {e}"));
            }
            SupervisionEvent::ActorTerminated(..) => {
                let _ = tx.send("stopped".into());
            }
            _ => {}
        }
        Ok(())
    }
}

/// A supervisor (registered names prefixed with `prefix`, unique per test: the registry is
/// process-wide) over `children`, and how it ends.
async fn supervise(
    prefix: &str,
    children: Vec<Box<dyn Child>>,
) -> (
    ActorRef<SupervisorMsg>,
    Arc<Metrics>,
    mpsc::UnboundedReceiver<String>,
) {
    let (tx, ended) = mpsc::unbounded_channel();
    let (probe, _) = Actor::spawn(None, Probe, tx).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let (sup, _) = Actor::spawn_linked(
        Some(format!("{prefix}lane_supervisor")),
        LaneSupervisor,
        SupervisorArgs {
            names: ActorNames::new(prefix),
            children,
            metrics: metrics.clone(),
        },
        probe.get_cell(),
    )
    .await
    .unwrap();
    (sup, metrics, ended)
}

fn gaps(starts: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    let s = starts.lock().unwrap();
    s.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The live cell of `actor` once the supervisor has (re)started it.
async fn live(sup: &ActorRef<SupervisorMsg>, actor: &str) -> ActorCell {
    for _ in 0..1_000 {
        let children = ractor::call!(sup, SupervisorMsg::Children).unwrap();
        if let Some(cell) = children
            .into_iter()
            .find(|c| c.actor == actor)
            .and_then(|c| c.cell)
        {
            return cell;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{actor} never came back");
}

#[test]
fn backoff_doubles_from_100_ms_up_to_5_s() {
    let ms: Vec<u128> = (0..8).map(|n| backoff(n).as_millis()).collect();
    assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    assert_eq!(backoff(usize::MAX), MAX_BACKOFF);
}

#[tokio::test(start_paused = true)]
async fn a_failing_child_is_restarted_with_backoff_then_the_supervisor_escalates() {
    let (steady, steady_starts) = FakeChild::build("steady", Behaviour::Steady);
    let (flaky, flaky_starts) = FakeChild::build("flaky", Behaviour::FailsAtStart);
    let (sup, metrics, mut ended) = supervise("t_escalate_", vec![steady, flaky]).await;

    let end = tokio::time::timeout(Duration::from_secs(60), ended.recv())
        .await
        .expect("the supervisor escalates within the window")
        .unwrap();
    assert!(
        end.starts_with("failed: flaky failed 6 times within 60s"),
        "{end}"
    );
    // The first start and MAX_RESTARTS restarts, each after the back-off of its rank.
    let expected: Vec<Duration> = (0..MAX_RESTARTS).map(backoff).collect();
    let got = gaps(&flaky_starts);
    assert_eq!(got.len(), MAX_RESTARTS, "{got:?}");
    for (g, e) in got.iter().zip(&expected) {
        assert!(
            *g >= *e && *g < *e + Duration::from_millis(50),
            "{got:?} vs {expected:?}"
        );
    }
    assert_eq!(
        steady_starts.lock().unwrap().len(),
        1,
        "its sibling is never restarted"
    );
    let restarts = metrics.actor_restarts.with_label_values(&["flaky"]).get();
    assert_eq!(restarts, MAX_RESTARTS as u64);
    assert!(sup.get_status() != ractor::ActorStatus::Running);
}

#[tokio::test(start_paused = true)]
async fn failures_spread_wider_than_the_window_never_escalate() {
    let (steady, starts) = FakeChild::build("steady", Behaviour::Steady);
    let (sup, metrics, mut ended) = supervise("t_window_", vec![steady]).await;
    // MAX_RESTARTS failures close together, then one more after the window: each earlier one
    // has left it, so the child restarts after the first back-off again.
    for _ in 0..MAX_RESTARTS {
        let cell = live(&sup, "steady").await;
        ActorRef::<FakeMsg>::from(cell).cast(FakeMsg::Fail).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    live(&sup, "steady").await;
    tokio::time::sleep(RESTART_WINDOW + Duration::from_secs(1)).await;
    let cell = live(&sup, "steady").await;
    ActorRef::<FakeMsg>::from(cell).cast(FakeMsg::Fail).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    live(&sup, "steady").await;

    assert!(ended.try_recv().is_err(), "the supervisor still runs");
    let got = gaps(&starts);
    assert_eq!(got.len(), MAX_RESTARTS + 1, "{got:?}");
    let last = got[MAX_RESTARTS];
    assert!(
        last >= RESTART_WINDOW + backoff(0) && last < RESTART_WINDOW + Duration::from_secs(2),
        "{got:?}"
    );
    let restarts = metrics.actor_restarts.with_label_values(&["steady"]).get();
    assert_eq!(restarts, (MAX_RESTARTS + 1) as u64);
    let children = ractor::call!(sup, SupervisorMsg::Children).unwrap();
    assert_eq!(children[0].restarts, MAX_RESTARTS + 1);
}

#[tokio::test(start_paused = true)]
async fn status_shows_a_silent_child_as_such_without_delaying_the_others() {
    let (a, _) = FakeChild::build("answers", Behaviour::Steady);
    let (s1, _) = FakeChild::build("silent_1", Behaviour::Silent);
    let (s2, _) = FakeChild::build("silent_2", Behaviour::Silent);
    let (down, _) = FakeChild::build("down", Behaviour::FailsAtStart);
    let (sup, _, _ended) = supervise("t_status_", vec![a, s1, s2, down]).await;

    let asked = Instant::now();
    let status = ractor::call!(sup, SupervisorMsg::Status).unwrap();
    let took = asked.elapsed();
    // One deadline for all: two silent children cost it once, not twice.
    assert!(
        took >= STATUS_DEADLINE && took < STATUS_DEADLINE + Duration::from_millis(100),
        "{took:?}"
    );
    let names: Vec<&str> = status.children.iter().map(|c| c.actor.as_str()).collect();
    assert_eq!(
        names,
        ["answers", "silent_1", "silent_2", "down"],
        "start order"
    );
    let answers = status.child("answers").unwrap();
    assert_eq!(
        answers.snapshot,
        Snapshot::State(json!({"starts": 1, "last_error": null}))
    );
    assert_eq!(answers.summary, "starts=1");
    assert_eq!(answers.kind, ChildKind::Econ);
    for silent in ["silent_1", "silent_2"] {
        let c = status.child(silent).unwrap();
        assert!(matches!(c.snapshot, Snapshot::NoAnswer(_)), "{c:?}");
        assert!(c.summary.starts_with("no answer"), "{}", c.summary);
    }
    // Failed at start and waiting out its back-off (or just restarted and failed again).
    let down = status.child("down").unwrap();
    assert!(down.restarts >= 1, "{down:?}");

    // The supervisor kept handling messages while the status was gathered.
    let children = ractor::call!(sup, SupervisorMsg::Children).unwrap();
    assert_eq!(children.len(), 4);
}
