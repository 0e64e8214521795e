//! The operations endpoint of `resevent run` (axum, on `--http-addr`,
//! 127.0.0.1:9464 by default; `--no-http` turns it off):
//! - `GET /healthz`: the process is alive;
//! - `GET /readyz`: 200 only when every assigned partition is restored and
//!   a broker is reachable, else 503 with the reason;
//! - `GET /metrics`: Prometheus text format (see `metrics`);
//! - `GET /reservations/{id}`: one reservation's state, when a partition
//!   owned here holds it.
//!
//! Reads only what the service loop shares; holds its locks for a lookup's
//! length and never across an await.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ServiceContext;
use super::metrics::Metrics;
use super::restore::task_name;

#[derive(Clone)]
struct Shared {
    ctx: Arc<ServiceContext>,
    metrics: Arc<Metrics>,
}

/// Serves until `shutdown` resolves. Binding happens before this returns,
/// so a port in use is an error at start-up, not later.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot serve HTTP on {addr}: {e}; give another --http-addr, or --no-http"))
}

pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<ServiceContext>, metrics: Arc<Metrics>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/reservations/{id}", get(reservation))
        .with_state(Shared { ctx, metrics });
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::warn!(error = %e, "HTTP server stopped");
    }
}

async fn readyz(State(s): State<Shared>) -> Response {
    match s.ctx.readiness() {
        Ok(why) => (StatusCode::OK, format!("{why}\n")).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response()
}

async fn reservation(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let found = tokio::task::spawn_blocking(move || s.ctx.lookup(&id).map(|r| (id, r))).await;
    match found {
        Ok(Ok((_, Some(json)))) => (StatusCode::OK, axum::Json(json)).into_response(),
        Ok(Ok((id, None))) => (StatusCode::NOT_FOUND, axum::Json(not_here(&id))).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn not_here(id: &str) -> serde_json::Value {
    serde_json::json!({
        "reservationId": id,
        "found": false,
        "why": "no partition owned by this instance holds it: it may belong to a partition another member of the group owns (ask each instance, or read the changelog), or it was never seen",
    })
}

impl ServiceContext {
    /// Why this instance is or is not ready to serve its partitions.
    pub(super) fn readiness(&self) -> Result<String, String> {
        use std::sync::atomic::Ordering;
        if !self.joined.load(Ordering::Relaxed) {
            return Err("not ready: no partitions assigned by the group yet".into());
        }
        if !self.broker_up.load(Ordering::Relaxed) {
            return Err("not ready: no broker reachable".into());
        }
        let tasks = self.tasks.lock().expect("tasks lock");
        let restoring: Vec<i32> = tasks.assigned.keys().filter(|p| !tasks.ready.contains(p)).copied().collect();
        if restoring.is_empty() {
            Ok(format!("ready: partitions {:?}", tasks.ready))
        } else {
            Err(format!("not ready: restoring partitions {restoring:?}"))
        }
    }

    /// One reservation's state, from the write-back cache or the store of a
    /// partition that is ready here.
    pub(super) fn lookup(&self, id: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let tasks = self.tasks.lock().expect("tasks lock");
        for &p in &tasks.ready {
            let partition = task_name(p);
            if let Some(s) = tasks.coordinator.cache.get(p, id) {
                return Ok(Some(crate::lookup::reservation_json(id, &partition, s)));
            }
            if let Some(s) = self.store.lock().expect("store lock").get(&partition, id)? {
                return Ok(Some(crate::lookup::reservation_json(id, &partition, &s)));
            }
        }
        Ok(None)
    }
}

/// The default address: loopback, the port Prometheus exporters commonly leave free.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";
