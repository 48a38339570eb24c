//! `/readyz`: ready means this pod's roles work. A connector needs an authenticated IB session;
//! a writer needs Kafka and ClickHouse to answer. Checked every couple of seconds in the
//! background so that a probe never waits on a slow dependency; `/livez` only says the process
//! serves HTTP (a liveness failure restarts the pod, which would not fix Kafka).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marketlane_actors::Role;
use marketlane_actors::config::{ClickHouseConfig, KafkaConfig};
use marketlane_actors::ib_session::{SessionMsg, SessionState};
use marketlane_actors::supervisor::SupervisorMsg;
use ractor::ActorRef;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Shared between the probe loop, `/readyz` and the control socket.
#[derive(Clone, Default)]
pub struct Readiness {
    pub ready: Arc<AtomicBool>,
    pub reason: Arc<Mutex<String>>,
    /// Set by a drain (signal or `ctl drain`): never ready again in this process.
    pub draining: Arc<AtomicBool>,
}

impl Readiness {
    pub fn new() -> Self {
        let r = Self::default();
        r.set(false, "starting");
        r
    }

    pub fn set(&self, ready: bool, reason: &str) {
        self.ready.store(ready, Ordering::Relaxed);
        if let Ok(mut r) = self.reason.lock() {
            if *r != reason {
                tracing::info!(ready, reason, "readiness");
            }
            *r = reason.to_string();
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

pub struct ProbeTargets {
    pub roles: Vec<Role>,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
}

/// Checks the roles every `every` until the process ends.
pub fn spawn(readiness: Readiness, targets: ProbeTargets, every: Duration) {
    tokio::spawn(async move {
        let kafka = kafka_client(&targets.kafka);
        let ch = clickhouse::Client::default()
            .with_url(&targets.clickhouse.url)
            .with_user(&targets.clickhouse.user)
            .with_password(&targets.clickhouse.password)
            .with_validation(false);
        loop {
            if readiness.draining.load(Ordering::Relaxed) {
                readiness.set(false, "draining");
            } else {
                match check(&targets, kafka.clone(), &ch).await {
                    Ok(()) => readiness.set(true, "ready"),
                    Err(why) => readiness.set(false, &why),
                }
            }
            tokio::time::sleep(every).await;
        }
    });
}

fn kafka_client(kafka: &KafkaConfig) -> Option<Arc<BaseConsumer>> {
    marketlane_actors::kafka::client_config(kafka)
        .set("group.id", "marketlane-readiness")
        .create::<BaseConsumer>()
        .ok()
        .map(Arc::new)
}

async fn check(
    t: &ProbeTargets,
    kafka: Option<Arc<BaseConsumer>>,
    ch: &clickhouse::Client,
) -> Result<(), String> {
    if t.roles.contains(&Role::Connector) {
        let (session, failure) = session_state(&t.supervisor).await?;
        if session == SessionState::LoginFailed {
            // Say why: ops must fix the credentials before anything else happens.
            return Err(format!(
                "connector: ib session is login_failed ({})",
                failure.unwrap_or_default()
            ));
        }
        if session != SessionState::Authenticated {
            return Err(format!(
                "connector: ib session is {}, not authenticated",
                session.label()
            ));
        }
    }
    if t.roles.contains(&Role::Writer) {
        let Some(kafka) = kafka else {
            return Err("writer: cannot create a kafka client".into());
        };
        let bootstrap = t.kafka.bootstrap_servers.clone();
        tokio::task::spawn_blocking(move || {
            kafka
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|_| ())
        })
        .await
        .map_err(|e| format!("writer: kafka check: {e}"))?
        .map_err(|e| format!("writer: kafka at {bootstrap} unreachable: {e}"))?;
        tokio::time::timeout(
            Duration::from_secs(3),
            ch.query("SELECT 1").fetch_one::<u8>(),
        )
        .await
        .map_err(|_| format!("writer: clickhouse at {} timed out", t.clickhouse.url))?
        .map_err(|e| format!("writer: clickhouse at {} failing: {e}", t.clickhouse.url))?;
    }
    Ok(())
}

async fn session_state(
    sup: &ActorRef<SupervisorMsg>,
) -> Result<(SessionState, Option<String>), String> {
    let children = ractor::call_t!(sup, SupervisorMsg::Children, 2_000)
        .map_err(|e| format!("supervisor not answering: {e}"))?;
    let cell = children
        .into_iter()
        .filter_map(|c| c.cell)
        .find(|c| c.is_message_type_of::<SessionMsg>() == Some(true))
        .ok_or("connector: the ib session actor is not running")?;
    let session: ActorRef<SessionMsg> = cell.into();
    ractor::call_t!(session, SessionMsg::GetState, 2_000)
        .map(|s| (s.state, s.last_failure))
        .map_err(|e| format!("connector: ib session not answering: {e}"))
}
