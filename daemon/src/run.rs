//! `marketlane run`: the daemon itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use marketlane_actors::Metrics;
use marketlane_actors::supervisor::SupervisorMsg;
use marketlane_protocol::SchemaSet;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::http::{self, HttpState};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let schemas = Arc::new(
        SchemaSet::load_dir(&config.schemas_dir)
            .with_context(|| format!("schemas in {}", config.schemas_dir.display()))?,
    );
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let addr = http::serve(
        config.http.listen,
        HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
    )
    .await?;
    info!(%addr, instance = %config.instance, roles = ?config.roles, "marketlane starting");
    let supervisor = marketlane_actors::lane::start(config.lane(), schemas, metrics)
        .await
        .context("cannot start the lane")?;
    ready.store(true, Ordering::Relaxed);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let handle = supervisor.get_cell();
    let exited = tokio::spawn(async move { handle_exit(handle).await });
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
        r = exited => {
            error!(?r, "the lane supervisor stopped: exiting so the pod restarts");
            anyhow::bail!("lane supervisor stopped");
        }
    }
    ready.store(false, Ordering::Relaxed);
    let deadline = Duration::from_secs(config.drain_deadline_secs);
    match ractor::call_t!(
        supervisor,
        SupervisorMsg::Drain,
        deadline.as_millis() as u64 + 1_000,
        deadline
    ) {
        Ok(report) => info!(?report, "drained"),
        Err(e) => warn!(error = %e, "drain did not finish within the deadline"),
    }
    supervisor.stop(Some("shutdown".into()));
    Ok(())
}

async fn handle_exit(cell: ractor::ActorCell) {
    while !matches!(
        cell.get_status(),
        ractor::ActorStatus::Stopped | ractor::ActorStatus::Stopping
    ) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
