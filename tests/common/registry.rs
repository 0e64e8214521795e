//! A Confluent-compatible Schema Registry test double: the one stand-in the
//! tests use, because nothing installable here provides a registry. It keeps
//! subjects, versions and ids in memory and implements what resevent and the
//! Confluent clients call:
//! - `POST /subjects/{s}/versions` (register; the same schema gets the same
//!   id everywhere; a new version must pass the subject's compatibility check);
//! - `POST /subjects/{s}` (look a schema up under a subject);
//! - `GET /schemas/ids/{id}`, `GET /subjects`, `GET /subjects/{s}/versions`,
//!   `GET /subjects/{s}/versions/{latest|n}`;
//! - `PUT /config/{s}` and `POST /compatibility/subjects/{s}/versions/latest`.
//!
//! Compatibility is checked with apache-avro's schema resolution rules
//! (BACKWARD by default, as Confluent's). It can be stopped and started again
//! on the same port, keeping what it holds, to play an outage.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

#[derive(Default)]
struct Held {
    /// id → schema text, as registered.
    schemas: Vec<String>,
    /// subject → ids of its versions, oldest first.
    subjects: BTreeMap<String, Vec<u32>>,
    /// subject → compatibility level (BACKWARD when absent).
    levels: BTreeMap<String, String>,
    /// Required `user:password`, if any.
    basic_auth: Option<String>,
    /// Requests served, for tests that count them.
    requests: u64,
}

type Shared = Arc<Mutex<Held>>;

pub struct Registry {
    held: Shared,
    pub port: u16,
    stop: Option<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Registry {
    /// A registry on a free loopback port.
    pub fn start() -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Registry { held: Shared::default(), port, stop: None };
        r.resume();
        r
    }

    /// A registry that requires HTTP basic auth.
    pub fn start_with_auth(user_info: &str) -> Registry {
        let r = Registry::start();
        r.held.lock().unwrap().basic_auth = Some(user_info.to_string());
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops answering (connections refused) until `resume`.
    pub fn stop(&mut self) {
        if let Some((tx, handle)) = self.stop.take() {
            let _ = tx.send(());
            handle.join().unwrap();
        }
    }

    /// Answers again on the same port, with everything it held.
    pub fn resume(&mut self) {
        assert!(self.stop.is_none(), "already running");
        let held = self.held.clone();
        let port = self.port;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = loop {
                    match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                        Ok(l) => break l,
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    }
                };
                ready_tx.send(()).unwrap();
                let app = axum::Router::new()
                    .route("/subjects", get(subjects))
                    .route("/subjects/{subject}", post(lookup))
                    .route("/subjects/{subject}/versions", post(register).get(versions))
                    .route("/subjects/{subject}/versions/{version}", get(version))
                    .route("/schemas/ids/{id}", get(by_id))
                    .route("/config/{subject}", put(set_level))
                    .route("/compatibility/subjects/{subject}/versions/latest", post(check))
                    .with_state(held);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        ready_rx.recv().unwrap();
        self.stop = Some((tx, handle));
    }

    /// The ids registered under a subject, oldest first.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.held.lock().unwrap().subjects.get(subject).cloned().unwrap_or_default()
    }

    /// The schema text of an id.
    pub fn schema(&self, id: u32) -> Option<String> {
        self.held.lock().unwrap().schemas.get(id as usize - 1).cloned()
    }

    /// Registers a schema directly (as a connector would have), returning its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        let mut h = self.held.lock().unwrap();
        register_in(&mut h, subject, schema).expect("compatible")
    }

    pub fn requests(&self) -> u64 {
        self.held.lock().unwrap().requests
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    (status, Json(json!({"error_code": code, "message": message.into()}))).into_response()
}

/// Counts the request and checks basic auth.
#[allow(clippy::result_large_err)]
fn admit<'a>(held: &'a Shared, headers: &HeaderMap) -> Result<std::sync::MutexGuard<'a, Held>, Response> {
    let mut h = held.lock().unwrap();
    h.requests += 1;
    if let Some(expected) = &h.basic_auth {
        use base64_like::encode;
        let want = format!("Basic {}", encode(expected.as_bytes()));
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return Err(error(StatusCode::UNAUTHORIZED, 40101, "Unauthorized"));
        }
    }
    Ok(h)
}

/// Whether `new` may follow `old` under `level`.
fn compatible(level: &str, old: &Schema, new: &Schema) -> bool {
    let backward = || SchemaCompatibility::can_read(old, new).is_ok();
    let forward = || SchemaCompatibility::can_read(new, old).is_ok();
    match level.trim_end_matches("_TRANSITIVE") {
        "NONE" => true,
        "FORWARD" => forward(),
        "FULL" => backward() && forward(),
        _ => backward(),
    }
}

#[allow(clippy::result_large_err)]
fn register_in(h: &mut Held, subject: &str, text: &str) -> Result<u32, Response> {
    let new = Schema::parse_str(text).map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, 42201, format!("Invalid schema: {e}")))?;
    let canonical = new.canonical_form();
    let existing = h.schemas.iter().position(|s| Schema::parse_str(s).ok().map(|s| s.canonical_form()).as_ref() == Some(&canonical)).map(|i| i as u32 + 1);
    let versions = h.subjects.get(subject).cloned().unwrap_or_default();
    if let Some(id) = existing.filter(|id| versions.contains(id)) {
        return Ok(id);
    }
    let level = h.levels.get(subject).cloned().unwrap_or_else(|| "BACKWARD".into());
    if let Some(&latest) = versions.last() {
        let old = Schema::parse_str(&h.schemas[latest as usize - 1]).unwrap();
        if !compatible(&level, &old, &new) {
            return Err(error(StatusCode::CONFLICT, 409, format!("Schema being registered is incompatible with an earlier schema for subject \"{subject}\" ({level})")));
        }
    }
    let id = match existing {
        Some(id) => id,
        None => {
            h.schemas.push(text.to_string());
            h.schemas.len() as u32
        }
    };
    h.subjects.entry(subject.to_string()).or_default().push(id);
    Ok(id)
}

async fn register(State(held): State<Shared>, Path(subject): Path<String>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let mut h = match admit(&held, &headers) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let Some(text) = body.get("schema").and_then(Value::as_str) else { return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "no schema") };
    if body.get("schemaType").and_then(Value::as_str).is_some_and(|t| t != "AVRO") {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "only AVRO here");
    }
    match register_in(&mut h, &subject, text) {
        Ok(id) => Json(json!({"id": id})).into_response(),
        Err(r) => r,
    }
}

async fn lookup(State(held): State<Shared>, Path(subject): Path<String>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let h = match admit(&held, &headers) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let text = body.get("schema").and_then(Value::as_str).unwrap_or("");
    let Ok(wanted) = Schema::parse_str(text).map(|s| s.canonical_form()) else { return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid schema") };
    let Some(versions) = h.subjects.get(&subject) else { return error(StatusCode::NOT_FOUND, 40401, "Subject not found") };
    for (i, &id) in versions.iter().enumerate() {
        let s = &h.schemas[id as usize - 1];
        if Schema::parse_str(s).map(|s| s.canonical_form()).ok().as_deref() == Some(wanted.as_str()) {
            return Json(json!({"subject": subject, "id": id, "version": i + 1, "schema": s})).into_response();
        }
    }
    error(StatusCode::NOT_FOUND, 40403, "Schema not found")
}

async fn subjects(State(held): State<Shared>, headers: HeaderMap) -> Response {
    match admit(&held, &headers) {
        Ok(h) => Json(h.subjects.keys().cloned().collect::<Vec<_>>()).into_response(),
        Err(r) => r,
    }
}

async fn versions(State(held): State<Shared>, Path(subject): Path<String>, headers: HeaderMap) -> Response {
    let h = match admit(&held, &headers) {
        Ok(h) => h,
        Err(r) => return r,
    };
    match h.subjects.get(&subject) {
        Some(v) => Json((1..=v.len()).collect::<Vec<_>>()).into_response(),
        None => error(StatusCode::NOT_FOUND, 40401, "Subject not found"),
    }
}

async fn version(State(held): State<Shared>, Path((subject, version)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let h = match admit(&held, &headers) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let Some(versions) = h.subjects.get(&subject) else { return error(StatusCode::NOT_FOUND, 40401, "Subject not found") };
    let n = if version == "latest" { versions.len() } else { version.parse().unwrap_or(0) };
    match n.checked_sub(1).and_then(|i| versions.get(i)) {
        Some(&id) => Json(json!({"subject": subject, "version": n, "id": id, "schema": h.schemas[id as usize - 1]})).into_response(),
        None => error(StatusCode::NOT_FOUND, 40402, "Version not found"),
    }
}

async fn by_id(State(held): State<Shared>, Path(id): Path<u32>, headers: HeaderMap) -> Response {
    let h = match admit(&held, &headers) {
        Ok(h) => h,
        Err(r) => return r,
    };
    match id.checked_sub(1).and_then(|i| h.schemas.get(i as usize)) {
        Some(s) => Json(json!({"schema": s})).into_response(),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn set_level(State(held): State<Shared>, Path(subject): Path<String>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let mut h = match admit(&held, &headers) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let level = body.get("compatibility").and_then(Value::as_str).unwrap_or("BACKWARD").to_string();
    h.levels.insert(subject, level.clone());
    Json(json!({"compatibility": level})).into_response()
}

async fn check(State(held): State<Shared>, Path(subject): Path<String>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let h = match admit(&held, &headers) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let Ok(new) = Schema::parse_str(body.get("schema").and_then(Value::as_str).unwrap_or("")) else { return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid schema") };
    let level = h.levels.get(&subject).cloned().unwrap_or_else(|| "BACKWARD".into());
    let ok = match h.subjects.get(&subject).and_then(|v| v.last()) {
        Some(&id) => compatible(&level, &Schema::parse_str(&h.schemas[id as usize - 1]).unwrap(), &new),
        None => true,
    };
    Json(json!({"is_compatible": ok})).into_response()
}

/// Base64 for the basic-auth header (no crate for four lines).
mod base64_like {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
