//! `marketlane run`: the daemon itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use marketlane_actors::Metrics;
use marketlane_actors::supervisor::{DrainReport, SupervisorMsg};
use marketlane_protocol::SchemaSet;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::control::{self, Daemon, LogControl, Readiness, readiness};
use crate::http::{self, HttpState};

pub async fn run(config: Config, log: LogControl) -> anyhow::Result<()> {
    // Secrets never reach a log: the effective config is logged with them redacted.
    info!(config = %control::redact::redacted(&config), "config");
    let schemas = Arc::new(
        SchemaSet::load_dir(&config.schemas_dir)
            .with_context(|| format!("schemas in {}", config.schemas_dir.display()))?,
    );
    let metrics = Arc::new(Metrics::new());
    // Without a cluster this pod is its only member.
    metrics.cluster_members.set(1);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    metrics.runtime_worker_threads.set(workers as i64);
    let readiness = Readiness::new();
    let addr = http::serve(
        config.http.listen,
        HttpState {
            metrics: metrics.clone(),
            ready: readiness.ready.clone(),
            ready_reason: readiness.reason.clone(),
        },
    )
    .await?;
    info!(%addr, instance = %config.instance, roles = ?config.roles, workers, "marketlane starting");
    let supervisor = marketlane_actors::lane::start(config.lane(), schemas.clone(), metrics)
        .await
        .context("cannot start the lane")?;
    readiness::spawn(
        readiness.clone(),
        readiness::ProbeTargets {
            roles: config.roles.clone(),
            supervisor: supervisor.clone(),
            kafka: config.kafka.clone(),
            clickhouse: config.clickhouse.clone(),
        },
        Duration::from_secs(2),
    );
    let daemon = Arc::new(Daemon {
        supervisor: supervisor.clone(),
        instance: config.instance.clone(),
        roles: config.roles.clone(),
        schemas_dir: config.schemas_dir.clone(),
        schemas: std::sync::Mutex::new(schemas),
        log,
        readiness: readiness.clone(),
        drain_deadline: Duration::from_secs(config.drain_deadline_secs),
        allow_fault_injection: config.control.allow_fault_injection,
    });
    // The control socket is for ops; a pod that cannot bind it still streams data.
    let socket = if config.control.enabled {
        match control::server::serve(&config.control, daemon).await {
            Ok(p) => Some(p),
            Err(e) => {
                error!(error = format!("{e:#}"), "control socket unavailable");
                None
            }
        }
    } else {
        None
    };
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
    let already_drained = readiness.draining.swap(true, Ordering::SeqCst);
    readiness.set(false, "draining");
    let deadline = Duration::from_secs(config.drain_deadline_secs);
    let outcome = if already_drained {
        info!("already drained over the control socket");
        Ok(())
    } else {
        let report = ractor::call_t!(
            supervisor,
            SupervisorMsg::Drain,
            deadline.as_millis() as u64 + 1_000,
            deadline
        );
        drain_outcome(report.map_err(|e| e.to_string()), deadline)
    };
    if let Some(p) = &socket {
        control::server::remove(p);
    }
    supervisor.stop(Some("shutdown".into()));
    // A drain cut short by its deadline left rows unflushed or uncommitted: nothing is lost
    // (Kafka and the offsets table replay them), but the exit says so, for the orchestrator
    // and for whoever reads the pod's last status.
    outcome
}

/// Logs the drain and turns one that did not finish within `deadline` into an error naming
/// what was left.
fn drain_outcome(report: Result<DrainReport, String>, deadline: Duration) -> anyhow::Result<()> {
    match report {
        Ok(report) if report.complete() => {
            if report.left.is_empty() {
                info!(?report, "drained");
            } else {
                warn!(?report, left = ?report.left, "drained; not everything was handed over");
            }
            Ok(())
        }
        Ok(report) => {
            error!(?report, left = ?report.left, ?deadline, "drain did not finish within the deadline");
            anyhow::bail!(
                "drain did not finish within {deadline:?}; left: {}",
                report.left.join("; ")
            )
        }
        Err(e) => {
            error!(error = %e, ?deadline, "drain did not finish within the deadline");
            anyhow::bail!("drain did not finish within {deadline:?}: {e}")
        }
    }
}

async fn handle_exit(cell: ractor::ActorCell) {
    while !matches!(
        cell.get_status(),
        ractor::ActorStatus::Stopped | ractor::ActorStatus::Stopping
    ) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_cut_short_is_an_error_naming_what_was_left() {
        let d = Duration::from_secs(1);
        let full = DrainReport {
            handed_over: true,
            producer_flushed: true,
            writers_flushed: true,
            seconds: 0.2,
            left: vec![],
        };
        assert!(drain_outcome(Ok(full.clone()), d).is_ok());
        let no_handover = DrainReport {
            handed_over: false,
            left: vec!["cluster: peers did not take the symbols over".into()],
            ..full.clone()
        };
        assert!(drain_outcome(Ok(no_handover), d).is_ok());
        let cut = DrainReport {
            writers_flushed: false,
            left: vec!["clickhouse_writer_x: batches not inserted and committed".into()],
            ..full
        };
        let e = drain_outcome(Ok(cut), d).unwrap_err().to_string();
        assert!(e.contains("clickhouse_writer_x"), "{e}");
        assert!(drain_outcome(Err("timeout".into()), d).is_err());
    }
}
