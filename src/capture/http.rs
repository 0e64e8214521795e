//! The operations endpoint of `resevent capture` (axum, on `--http-addr`,
//! 127.0.0.1:9465 by default; `--no-http` turns it off), as `resevent run`'s:
//! - `GET /healthz`: the process is alive;
//! - `GET /readyz`: 200 while this instance holds the lease and follows the
//!   stream; 503 with the reason while starting, copying or on standby;
//! - `GET /metrics`: Prometheus text (prometheus-client): changes published,
//!   capture lag, resume-token age, whether this instance is the active one.
//!
//! Reads only what the capture loop shares through [`CaptureMetrics`].

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(String, String)>;

/// Every metric of capture, registered once, and its readiness.
pub struct CaptureMetrics {
    registry: Registry,
    published: Family<Labels, Counter>,
    lag: Gauge<f64, AtomicU64>,
    token_age: Gauge<f64, AtomicU64>,
    active: Gauge,
    /// Unix ms of the change the durable checkpoint names (0 = none yet).
    durable_event_ms: AtomicI64,
    /// Ok(what it does) when ready, Err(why not) otherwise.
    readiness: Mutex<Result<String, String>>,
}

impl Default for CaptureMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("resevent_capture");
        let m = CaptureMetrics {
            registry: Registry::default(),
            published: Family::default(),
            lag: Gauge::default(),
            token_age: Gauge::default(),
            active: Gauge::default(),
            durable_event_ms: AtomicI64::new(0),
            readiness: Mutex::new(Err("starting".into())),
        };
        registry.register("changes_published", "Change events acknowledged by the broker, by kind (change, copy)", m.published.clone());
        registry.register_with_unit("lag", "Cluster wall time of the last acknowledged change to its acknowledgement", Unit::Seconds, m.lag.clone());
        registry.register_with_unit(
            "resume_token_age",
            "Age of the stored resume token (the change it names); when it nears the oplog window, a restart could no longer resume",
            Unit::Seconds,
            m.token_age.clone(),
        );
        registry.register("active", "1 while this instance holds the collection's lease and publishes, 0 on standby", m.active.clone());
        CaptureMetrics { registry, ..m }
    }
}

impl CaptureMetrics {
    /// A batch of acknowledgements: how many of each kind, and the lag of the newest change.
    pub fn acknowledged(&self, changes: u64, copies: u64, lag_ms: Option<i64>) {
        if changes > 0 {
            self.published.get_or_create(&vec![("kind".into(), "change".into())]).inc_by(changes);
        }
        if copies > 0 {
            self.published.get_or_create(&vec![("kind".into(), "copy".into())]).inc_by(copies);
        }
        if let Some(ms) = lag_ms {
            self.lag.set(ms.max(0) as f64 / 1000.0);
        }
    }

    /// The durable checkpoint now names a change of this time (unix ms).
    pub fn durable_at(&self, event_ms: i64) {
        self.durable_event_ms.store(event_ms, Ordering::Relaxed);
    }

    pub fn set_active(&self, active: bool) {
        self.active.set(i64::from(active));
    }

    pub fn set_ready(&self, state: Result<String, String>) {
        *self.readiness.lock().expect("readiness lock") = state;
    }

    pub fn readiness(&self) -> Result<String, String> {
        self.readiness.lock().expect("readiness lock").clone()
    }

    pub fn render(&self) -> String {
        let at = self.durable_event_ms.load(Ordering::Relaxed);
        if at > 0 {
            self.token_age.set((now_ms() - at).max(0) as f64 / 1000.0);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Binds before serving, so a port in use is an error at start-up.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot serve HTTP on {addr}: {e}; give another --http-addr, or --no-http"))
}

/// Serves until `shutdown` resolves.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<CaptureMetrics>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::warn!(error = %e, "HTTP server stopped");
    }
}

async fn readyz(State(m): State<Arc<CaptureMetrics>>) -> Response {
    match m.readiness() {
        Ok(what) => (StatusCode::OK, format!("{what}\n")).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics_text(State(m): State<Arc<CaptureMetrics>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render()).into_response()
}
