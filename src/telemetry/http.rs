//! The operations endpoint: `/metrics` (Prometheus text), `/healthz` (the process is alive and
//! its loop is turning), `/readyz` (caught up with its input and able to write) and `/status`
//! (JSON: the partitions this instance owns, their phase, positions, lag and restore progress).
//!
//! It binds to loopback by default (`telemetry.listen`), runs on a small tokio runtime of its
//! own, and stops when the process does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What the endpoint reports; the pipeline flips these.
#[derive(Debug, Default)]
pub struct Health {
    /// Caught up with the input (or finished it) and committing normally.
    pub ready: AtomicBool,
    /// Why not ready, when not (the body of a 503 from `/readyz`).
    pub not_ready_reason: std::sync::Mutex<String>,
    /// Set when the loop has stopped on an error.
    pub failed: AtomicBool,
    /// What `/status` shows (Kafka mode: partitions, positions, lag, restores).
    pub status: std::sync::Mutex<serde_json::Value>,
}

impl Health {
    /// Ready, or not ready for `reason`.
    pub fn set_ready(&self, reason: Option<String>) {
        self.ready.store(reason.is_none(), Ordering::Relaxed);
        *self.not_ready_reason.lock().unwrap() = reason.unwrap_or_default();
    }
}

/// Installs the global Prometheus recorder (once per process) and returns its handle.
pub fn install_recorder() -> Option<PrometheusHandle> {
    let secs = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let sizes = [1.0, 16.0, 128.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0];
    let bytes = [1e3, 1e4, 1e5, 1e6, 4e6, 1.6e7, 6.4e7];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &secs)
        .ok()?
        .set_buckets_for_metric(Matcher::Full(super::names::BATCH_RECORDS.into()), &sizes)
        .ok()?
        .set_buckets_for_metric(
            Matcher::Full(super::names::BATCH_WRITE_BYTES.into()),
            &bytes,
        )
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    super::describe();
    super::init_series();
    Some(handle)
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
}

async fn render_metrics(State(s): State<AppState>) -> String {
    s.metrics.run_upkeep();
    s.metrics.render()
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.failed.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "failed\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn status(State(s): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = s.health.status.lock().unwrap().to_string();
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    if s.health.failed.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the run loop stopped on an error\n".into())
    } else if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n".into())
    } else {
        let reason = s.health.not_ready_reason.lock().unwrap();
        if reason.is_empty() {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n"))
        }
    }
}

/// Binds `addr` and serves the endpoint on a background thread. Returns the bound address
/// (useful with port 0).
pub fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for /metrics: {e}. Set telemetry.listen to a free address, or \"\" to disable the endpoint."),
        )
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(AppState { metrics, health });
    std::thread::Builder::new()
        .name("rapport-http".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app).await;
            });
        })?;
    Ok(bound)
}
