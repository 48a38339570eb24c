//! The daemon's HTTP endpoints: `/metrics` (Prometheus text), `/livez`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use marketlane_actors::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// Set once the lane has started (topics and tables exist, actors are up).
    pub ready: Arc<AtomicBool>,
    /// Why the pod is not ready (`control::readiness`), for the `/readyz` body.
    pub ready_reason: Arc<std::sync::Mutex<String>>,
}

async fn metrics(
    State(s): State<HttpState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, String) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        let why = s.ready_reason.lock().map(|r| r.clone()).unwrap_or_default();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
    }
}

/// Binds and serves in the background; returns the bound address.
pub async fn serve(listen: SocketAddr, state: HttpState) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for /metrics"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(addr)
}
