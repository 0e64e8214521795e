//! The operations endpoint of `resevent run` (axum, on `--http-addr`,
//! 127.0.0.1:9464 by default; `--no-http` turns it off):
//! - `GET /healthz`: the process is alive;
//! - `GET /readyz`: 200 only when every assigned partition is restored and
//!   a broker is reachable, else 503 with the reason;
//! - `GET /metrics`: Prometheus text format (see `metrics`);
//! - `GET /reservations/{id}`: one reservation's state, when a partition
//!   owned here holds it;
//! - `GET /`: a status page for people (server-rendered HTML, an inline SVG
//!   chart, a reload every 5 s; no build step, no external asset).
//!
//! Reads only what the service loop shares; holds its locks for a lookup's
//! length, on blocking threads (the loop may hold them across a commit), and
//! never across an await.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::task_manager::ServiceContext;
use super::metrics::{Board, Metrics};
use crate::state::task_name;

#[derive(Clone)]
struct Shared {
    ctx: Arc<ServiceContext>,
    metrics: Arc<Metrics>,
    group: Arc<GroupView>,
}

/// Who else is in the consumer group, for a lookup this instance cannot
/// answer: DescribeGroups through a client of its own (never the service's
/// consumer, which only the loop polls).
pub struct GroupView {
    pub client: rdkafka::consumer::BaseConsumer,
    pub group_id: String,
    pub input_topics: Vec<String>,
}

impl GroupView {
    /// The group's members and, where the broker says, the input partitions
    /// each owns.
    fn members(&self) -> Result<Vec<serde_json::Value>, String> {
        use rdkafka::consumer::Consumer;
        let list = self.client.fetch_group_list(Some(&self.group_id), std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let Some(group) = list.groups().iter().find(|g| g.name() == self.group_id) else { return Ok(Vec::new()) };
        Ok(group
            .members()
            .iter()
            .map(|m| {
                let owned = m.assignment().and_then(parse_assignment).map(|a| a.into_iter().filter(|(t, _)| self.input_topics.contains(t)).flat_map(|(_, ps)| ps).collect::<std::collections::BTreeSet<i32>>());
                serde_json::json!({"memberId": m.id(), "clientId": m.client_id(), "host": m.client_host(), "partitions": owned})
            })
            .collect())
    }
}

/// A consumer group member's assignment (Kafka's ConsumerProtocol
/// Assignment: version, then per topic its name and partitions, then user
/// data): the partitions per topic, or `None` when it is absent or garbled.
fn parse_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn int16(b: &mut &[u8]) -> Option<i16> {
        take(b, 2).map(|x| i16::from_be_bytes([x[0], x[1]]))
    }
    fn int32(b: &mut &[u8]) -> Option<i32> {
        take(b, 4).map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    }
    if bytes.is_empty() {
        return None;
    }
    let mut b = bytes;
    let _version = int16(&mut b)?;
    let topics = int32(&mut b)?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(int16(&mut b)?).ok()?;
        let name = String::from_utf8(take(&mut b, len)?.to_vec()).ok()?;
        let n = int32(&mut b)?;
        let mut parts = Vec::new();
        for _ in 0..n.max(0) {
            parts.push(int32(&mut b)?);
        }
        out.push((name, parts));
    }
    Some(out)
}

/// Serves until `shutdown` resolves. Binding happens before this returns,
/// so a port in use is an error at start-up, not later.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot serve HTTP on {addr}: {e}; give another --http-addr, or --no-http"))
}

pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<ServiceContext>, metrics: Arc<Metrics>, group: GroupView, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let app = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/reservations/{id}", get(reservation))
        .with_state(Shared { ctx, metrics, group: Arc::new(group) });
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::warn!(error = %e, "HTTP server stopped");
    }
}

async fn readyz(State(s): State<Shared>) -> Response {
    // The service loop may hold its lock for a commit's length: wait for it
    // on a blocking thread, never on a runtime worker (the loop's own
    // timers need those).
    match tokio::task::spawn_blocking(move || s.ctx.readiness()).await {
        Ok(Ok(why)) => (StatusCode::OK, format!("{why}\n")).into_response(),
        Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response()
}

async fn reservation(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let found = tokio::task::spawn_blocking(move || {
        let found = s.ctx.lookup(&id)?;
        Ok::<_, anyhow::Error>(match found {
            Some(json) => Ok(json),
            None => {
                let here: Vec<i32> = s.ctx.tasks.lock().expect("tasks lock").assigned.keys().copied().collect();
                Err(not_here(&id, &here, s.group.members()))
            }
        })
    })
    .await;
    match found {
        Ok(Ok(Ok(json))) => (StatusCode::OK, axum::Json(json)).into_response(),
        Ok(Ok(Err(json))) => (StatusCode::NOT_FOUND, axum::Json(json)).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// A lookup this instance cannot answer: what it owns, and who else is in
/// the group. Which partition a reservation belongs to follows from its
/// change events' record key, which the connector chose (and which is not
/// the reservation id), so the owner is one of the other members; where the
/// broker reports assignments, each member's partitions are listed.
fn not_here(id: &str, here: &[i32], members: Result<Vec<serde_json::Value>, String>) -> serde_json::Value {
    let (members, members_error) = match members {
        Ok(m) => (serde_json::Value::from(m), serde_json::Value::Null),
        Err(e) => (serde_json::Value::Null, serde_json::Value::from(e)),
    };
    serde_json::json!({
        "reservationId": id,
        "found": false,
        "why": "no partition owned by this instance holds it: it belongs to a partition another member of the group owns (ask it: GET /reservations/{id} on that member), or it was never seen",
        "partitionsHere": here,
        "groupMembers": members,
        "groupMembersError": members_error,
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
        let found = {
            let tasks = self.tasks.lock().expect("tasks lock");
            let mut found = None;
            for &p in &tasks.ready {
                let partition = task_name(p);
                if let Some(s) = tasks.coordinator.cache.get(p, id) {
                    found = Some(crate::state::reservation_json(id, &partition, s));
                    break;
                }
                if let Some(s) = self.store.lock().expect("store lock").get(&partition, id)? {
                    found = Some(crate::state::reservation_json(id, &partition, &s));
                    break;
                }
            }
            found
        };
        Ok(found.map(|mut j| {
            // What it caused since this instance started (kept in memory, bounded).
            let recent = self.recent.lock().expect("recent lock").of(id);
            j["lastEvents"] = serde_json::to_value(recent).unwrap_or_default();
            j
        }))
    }
}

/// The default address: loopback, the port Prometheus exporters commonly leave free.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

#[derive(serde::Deserialize)]
struct PageQuery {
    id: Option<String>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One colour per event type, in the order they are first drawn.
const COLOURS: [&str; 8] = ["#2b6cb0", "#c05621", "#2f855a", "#b83280", "#6b46c1", "#c53030", "#319795", "#718096"];

async fn status_page(State(s): State<Shared>, Query(q): Query<PageQuery>) -> Response {
    let lookup = match q.id.as_deref().map(str::trim).filter(|i| !i.is_empty()) {
        Some(id) => {
            let (ctx, id2) = (s.ctx.clone(), id.to_string());
            Some((id.to_string(), tokio::task::spawn_blocking(move || ctx.lookup(&id2)).await))
        }
        None => None,
    };
    s.metrics.sample();
    let ctx = s.ctx.clone();
    // On a blocking thread, as /readyz does.
    let Ok((ready, assigned, ready_set)) = tokio::task::spawn_blocking(move || {
        let ready = ctx.readiness();
        let t = ctx.tasks.lock().expect("tasks lock");
        (ready, t.assigned.keys().copied().collect::<Vec<i32>>(), t.ready.clone())
    })
    .await
    else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "status unavailable\n").into_response();
    };
    let b = s.metrics.board.lock().expect("board lock");
    let mut html = String::with_capacity(16 << 10);
    html.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>resevent status</title><style>body{font:14px system-ui,sans-serif;margin:24px;color:#1a202c}table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #cbd5e0;padding:4px 10px;text-align:left}th{background:#edf2f7}.ok{color:#2f855a}.no{color:#c53030}h2{margin:18px 0 6px;font-size:16px}code{background:#edf2f7;padding:1px 4px}</style></head><body>");
    html.push_str("<h1>resevent</h1>");
    match &ready {
        Ok(w) => html.push_str(&format!("<p class=\"ok\" id=\"ready\">{}</p>", esc(w))),
        Err(w) => html.push_str(&format!("<p class=\"no\" id=\"ready\">{}</p>", esc(w))),
    }
    html.push_str(&format!("<p>Records processed: <b id=\"records\">{}</b> &middot; business events: <b id=\"events\">{}</b> &middot; allowlist in force: <b id=\"allowlist\">{}</b></p>", b.records, b.events.values().sum::<u64>(), esc(&b.allowlist)));

    partitions_table(&mut html, &b, &assigned, &ready_set);

    rates(&mut html, &b);

    dead_letters_table(&mut html, &b);
    paused_table(&mut html, &b);
    drop(b);

    html.push_str("<h2>Look up a reservation</h2><form method=\"get\" action=\"/\"><input name=\"id\" size=\"30\" placeholder=\"reservation id\"> <button>Look up</button></form>");
    if let Some((id, found)) = lookup {
        lookup_result(&mut html, &id, found);
    }
    html.push_str("<p style=\"color:#718096\">Raw figures: <a href=\"/metrics\">/metrics</a> &middot; <a href=\"/readyz\">/readyz</a>. This page reloads every 5 s.</p>");
    // Reload for live figures, but not while someone is typing an id.
    html.push_str("<script>setTimeout(function(){if(!document.activeElement||document.activeElement.name!=='id'){location.reload()}},5000)</script></body></html>");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// Each assigned partition: processing or restoring, its lag, what its
/// restore still has to read.
fn partitions_table(html: &mut String, b: &Board, assigned: &[i32], ready_set: &std::collections::BTreeSet<i32>) {
    html.push_str("<h2>Partitions</h2><table id=\"partitions\"><tr><th>partition</th><th>state</th><th>lag</th><th>restore remaining</th></tr>");
    if assigned.is_empty() {
        html.push_str("<tr><td colspan=\"4\">none assigned</td></tr>");
    }
    for p in assigned {
        let lag: i64 = b.lag.iter().filter(|((_, q), _)| q == p).map(|(_, l)| *l).sum();
        let state = if ready_set.contains(p) { "processing" } else { "restoring" };
        let remaining = b.restore_remaining.get(p).copied().unwrap_or(0);
        html.push_str(&format!("<tr><td>{p}</td><td>{state}</td><td>{lag}</td><td>{remaining}</td></tr>"));
    }
    html.push_str("</table>");

}

/// Business events per second by type, from the sampled history: a chart
/// and a table.
fn rates(html: &mut String, b: &Board) {
    // Events per second by type, from the sampled history.
    html.push_str("<h2>Business events per second, last 10 minutes</h2>");
    let types: Vec<&'static str> = b.events.keys().copied().collect();
    let (w, h) = (640.0_f64, 160.0_f64);
    let points: Vec<(f64, Vec<f64>)> = b
        .history
        .iter()
        .zip(b.history.iter().skip(1))
        .map(|((t0, c0), (t1, c1))| {
            let dt = (t1 - t0).max(1e-3);
            (*t1, types.iter().map(|t| (c1.get(t).copied().unwrap_or(0) - c0.get(t).copied().unwrap_or(0)) as f64 / dt).collect())
        })
        .collect();
    let max = points.iter().flat_map(|(_, v)| v.iter().copied()).fold(1.0_f64, f64::max);
    // The window grows with the run, from one minute to ten: a short run
    // fills the chart from the left instead of being squeezed into a corner.
    let t_last = points.last().map_or(0.0, |p| p.0);
    let window = (t_last - points.first().map_or(0.0, |p| p.0)).clamp(60.0, 600.0);
    let x = |t: f64| (t - (t_last - window)) / window * (w - 20.0) + 10.0;
    html.push_str(&format!("<svg id=\"chart\" width=\"{w}\" height=\"{}\" style=\"border:1px solid #cbd5e0\">", h + 20.0));
    for i in 0..types.len() {
        let pts: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), h - v[i] / max * (h - 10.0))).collect();
        html.push_str(&format!("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>", COLOURS[i % COLOURS.len()], pts.join(" ")));
        // A lone point draws no line: show it as a dot.
        if let [(t, v)] = points.as_slice() {
            html.push_str(&format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>", x(*t), h - v[i] / max * (h - 10.0), COLOURS[i % COLOURS.len()]));
        }
    }
    html.push_str(&format!("<text x=\"10\" y=\"{}\" font-size=\"11\">peak {max:.0}/s; the last {:.0} s</text></svg>", h + 15.0, window));
    html.push_str("<table id=\"rates\"><tr><th>event type</th><th>per second now</th><th>total</th></tr>");
    for (i, t) in types.iter().enumerate() {
        let now = points.last().map_or(0.0, |(_, v)| v[i]);
        html.push_str(&format!("<tr><td style=\"color:{}\">&#9632; {t}</td><td>{now:.1}</td><td>{}</td></tr>", COLOURS[i % COLOURS.len()], b.events[t]));
    }
    html.push_str("</table>");

}

fn dead_letters_table(html: &mut String, b: &Board) {
    html.push_str("<h2>Dead letters by kind</h2><table id=\"dead\"><tr><th>kind</th><th>records</th></tr>");
    if b.dead_letters.is_empty() {
        html.push_str("<tr><td colspan=\"2\">none</td></tr>");
    }
    for (k, n) in &b.dead_letters {
        html.push_str(&format!("<tr><td>{k}</td><td>{n}</td></tr>"));
    }
    html.push_str("</table>");
}

/// How long the loop could not process, by reason: the commit's pause is
/// the figure to watch (it does not depend on the broker's speed).
fn paused_table(html: &mut String, b: &Board) {
    html.push_str("<h2>Processing paused</h2><table id=\"paused\"><tr><th>reason</th><th>times</th><th>in all</th><th>mean</th><th>longest</th></tr>");
    if b.paused.is_empty() {
        html.push_str("<tr><td colspan=\"5\">not yet</td></tr>");
    }
    for (why, (n, total, longest)) in &b.paused {
        let mean_ms = total * 1000.0 / (*n).max(1) as f64;
        html.push_str(&format!("<tr><td>{why}</td><td>{n}</td><td>{total:.2} s</td><td>{mean_ms:.1} ms</td><td>{:.1} ms</td></tr>", longest * 1000.0));
    }
    html.push_str("</table>");
}

/// The answer to the page's lookup form.
fn lookup_result(html: &mut String, id: &str, found: Result<anyhow::Result<Option<serde_json::Value>>, tokio::task::JoinError>) {
    match found {
        Ok(Ok(Some(j))) => {
            html.push_str(&format!("<table id=\"lookup\"><tr><th colspan=\"2\">{}</th></tr>", esc(id)));
            if let Some(o) = j.as_object() {
                for (k, v) in o.iter().filter(|(k, _)| *k != "lastEvents") {
                    let v = v.as_str().map_or_else(|| v.to_string(), String::from);
                    html.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v)));
                }
            }
            html.push_str("</table>");
            // Its last events, oldest first, each with the row that fired it.
            let events = j.get("lastEvents").and_then(|e| e.as_array()).cloned().unwrap_or_default();
            html.push_str("<h3>Last events</h3><table id=\"last-events\"><tr><th>type</th><th>occurred at</th><th>source position</th><th>fired by</th><th>eventId</th></tr>");
            if events.is_empty() {
                html.push_str("<tr><td colspan=\"5\">none since this instance started</td></tr>");
            }
            for e in &events {
                let cell = |k: &str| esc(e.get(k).and_then(|v| v.as_str()).unwrap_or("—"));
                html.push_str(&format!("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", cell("eventType"), cell("occurredAt"), cell("sourcePosition"), cell("firedBy"), cell("eventId")));
            }
            html.push_str("</table>");
        }
        Ok(Ok(None)) => html.push_str(&format!("<p id=\"lookup\">{} is not held by a partition of this instance; another member may own its partition (GET /reservations/{} lists the group's members).</p>", esc(id), esc(id))),
        Ok(Err(e)) => html.push_str(&format!("<p id=\"lookup\" class=\"no\">lookup failed: {}</p>", esc(&e.to_string()))),
        Err(e) => html.push_str(&format!("<p id=\"lookup\" class=\"no\">lookup failed: {}</p>", esc(&e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_assignment;

    #[test]
    fn a_consumer_protocol_assignment_gives_each_topics_partitions() {
        // version 1; two topics: "raw" [0, 3] and "x" []; user data of 2 bytes.
        let mut b = vec![0, 1, 0, 0, 0, 2];
        b.extend([0, 3, b'r', b'a', b'w', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3]);
        b.extend([0, 1, b'x', 0, 0, 0, 0]);
        b.extend([0, 0, 0, 2, 9, 9]);
        assert_eq!(parse_assignment(&b), Some(vec![("raw".into(), vec![0, 3]), ("x".into(), vec![])]));
        assert_eq!(parse_assignment(&[]), None, "absent (Tansu sends none)");
        assert_eq!(parse_assignment(&b[..9]), None, "cut short");
    }
}
