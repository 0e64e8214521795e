//! `resevent capture`: reads a MongoDB collection's change stream (through
//! the official `mongodb` driver) and publishes each change to Kafka in the
//! MongoDB Kafka source connector's JSON format, keyed by the document key,
//! so `resevent run` consumes it unchanged.
//!
//! The pieces: `config` (layered settings), `format` (change document →
//! record), `position` (where capture stands, stored in the records'
//! headers, and how to resume exactly from it), `lease` (one writer per
//! collection), `http` (health, readiness, metrics), `publisher` (sends
//! with the position header, tracks what is acknowledged), `topic` (created
//! when missing, read back at start). This file wires them to MongoDB and
//! Kafka: the lease wait, the resume plan, the stream loop, and the stream's
//! errors told apart. It processes no reservation logic.

pub mod config;
pub mod format;
pub mod http;
pub mod lease;
pub mod position;
mod publisher;
mod topic;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::{Bson, Document, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::error::ErrorKind;
use mongodb::options::FullDocumentType;
use rdkafka::producer::FutureProducer;

use self::config::CaptureConfig;
use self::http::{CaptureMetrics, now_ms};
use self::lease::Lease;
use self::position::{Checkpoint, ResumePlan};
use self::publisher::Publisher;
use self::topic::{ensure_topic, read_last_records};
use crate::kafka;

/// Kafka metadata and read-back requests.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the topic's end offsets must stay put before its last records
/// are read back (see `read_last_records`).
const SETTLE: Duration = Duration::from_secs(1);

/// Where to start instead of the stored position (`--restart-from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RestartFrom {
    /// Follow the stream from now on: changes since the stored position are NOT published.
    Now,
    /// Publish every document again as copy-existing events, then follow the stream.
    Copy,
}

/// Failures that a restart alone does not fix.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "cannot resume the change stream after the stored resume token {token}: the server said \"{reason}\". \
The changes after it may no longer be in the oplog (or the token is not one of this deployment's), so capture stopped and published nothing. \
Nothing is skipped silently: to go on, either start over with a full copy (`resevent capture … --restart-from copy`: every document \
is published again as a copy-existing event, which only seeds state downstream, then the stream is followed), or accept the gap \
(`resevent capture … --restart-from now`). See README, \"When the resume token is gone\""
    )]
    ResumeImpossible { token: String, reason: String },
    #[error("{0}")]
    Position(#[from] position::PositionError),
    #[error(
        "the change stream replayed differently from what the topic holds: partition {partition} ends at seq {seq} with change {stored}, \
but the stream's change at that seq is {got}. Did the change-stream pipeline change? Start with --restart-from now|copy"
    )]
    Diverged { partition: i32, seq: u64, stored: String, got: String },
    #[error("the lease on {0} was lost (another instance took over, or it could not be renewed in time); stopping so that only one instance writes")]
    LeaseLost(String),
}

impl CaptureError {
    /// The process exit status: 3 for a position that cannot be resumed from
    /// (an operator must choose), 2 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CaptureError::ResumeImpossible { .. } | CaptureError::Position(_) | CaptureError::Diverged { .. } => 3,
            CaptureError::LeaseLost(_) => 2,
        }
    }
}

/// Runs capture until `shutdown` resolves (or an error).
pub async fn run(cfg: CaptureConfig, restart_from: Option<RestartFrom>, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    tracing::info!(config = %cfg.masked(), "capture starting");
    let (pipeline, origin) = format::load_pipeline(cfg.change_stream_pipeline.as_deref())?;
    tracing::info!(pipeline = %origin, stages = pipeline.len(), "change-stream pipeline loaded");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let metrics = Arc::new(CaptureMetrics::default());
    if let Some(addr) = &cfg.http_addr {
        let addr: std::net::SocketAddr = addr.parse().with_context(|| format!("http_addr {addr:?} is not HOST:PORT"))?;
        let listener = http::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "HTTP: /healthz /readyz /metrics");
        let mut rx = stop_rx.clone();
        tokio::spawn(http::serve(listener, metrics.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }

    let client = mongodb::Client::with_uri_str(&cfg.mongo_uri).await.context("reading the MongoDB connection string")?;
    let db = client.database(&cfg.database);
    let coll = db.collection::<Document>(&cfg.collection);
    let kcfg = cfg.kafka_settings();
    let topic = cfg.topic();
    let partitions = ensure_topic(&cfg, &kcfg, &topic).await?;
    let producer: FutureProducer = kafka::producer_config(&kcfg).create().context("creating the Kafka producer")?;

    let lease = Lease::new(db.collection_with_options(&cfg.lease_collection, mongodb::options::CollectionOptions::builder().write_concern(mongodb::options::WriteConcern::majority()).build()), cfg.lease_id(), Duration::from_millis(cfg.lease_ms));
    if !acquire(&lease, &metrics, stop_rx.clone()).await? {
        return Ok(());
    }
    let lease = Arc::new(lease);
    let keeper = tokio::spawn(lease.clone().keep());
    tracing::info!(owner = %lease.owner, lease = %cfg.lease_id(), "lease acquired: this instance captures");
    metrics.set_active(true);

    let result = capture(&cfg, &coll, pipeline, &producer, &topic, partitions, &lease, &metrics, restart_from, stop_rx).await;
    keeper.abort();
    metrics.set_active(false);
    match &result {
        // A clean stop hands over at once; after a failure the lease runs out.
        Ok(()) => {
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "could not release the lease; a standby takes over when it runs out");
            }
        }
        Err(e) if e.downcast_ref::<CaptureError>().is_some() => {
            let _ = lease.release().await;
        }
        Err(_) => {}
    }
    result
}

/// Waits as a standby until the lease is ours. False if stopped first.
async fn acquire(lease: &Lease, metrics: &CaptureMetrics, mut stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<bool> {
    let poll = (lease.length / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    // The holder and version last seen, and since when (our clock).
    let mut seen: Option<(lease::Holder, Instant)> = None;
    loop {
        let holder = lease.holder().await.context("reading the capture lease from MongoDB")?;
        let taken = match holder {
            None => lease.try_take(None).await?,
            Some(h) => match &seen {
                Some((s, since)) if *s == h => since.elapsed() >= lease.length && lease.try_take(Some(&h)).await?,
                _ => {
                    if seen.as_ref().is_none_or(|(s, _)| s.owner != h.owner) {
                        tracing::info!(holder = %h.owner, "standby: another instance holds the lease; waiting for it to stop renewing");
                        metrics.set_ready(Err(format!("standby: the lease is held by {}", h.owner)));
                    }
                    seen = Some((h, Instant::now()));
                    false
                }
            },
        };
        if taken {
            return Ok(true);
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.wait_for(|s| *s) => return Ok(false),
        }
    }
}

/// The active part: read the position back, open the stream, copy if asked, publish.
#[allow(clippy::too_many_arguments)]
async fn capture(
    cfg: &CaptureConfig,
    coll: &mongodb::Collection<Document>,
    pipeline: Vec<Document>,
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    lease: &Lease,
    metrics: &Arc<CaptureMetrics>,
    restart_from: Option<RestartFrom>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (plan, max_seq) = resume_plan(cfg, topic, partitions, lease, metrics, restart_from).await?;
    tracing::info!(plan = ?plan_summary(&plan), "position read back");

    let watch = coll.watch().pipeline(pipeline).full_document(FullDocumentType::UpdateLookup);
    let mut publisher = Publisher::new(producer, topic, partitions, metrics.clone());
    let mut replay = BTreeMap::new();
    let (mut stream, copy): (ChangeStream<Document>, bool) = match plan {
        ResumePlan::Resume { after, next_seq, cluster_secs, published } => {
            let token = to_resume_token(&after)?;
            let stream = match watch.resume_after(token).await {
                Ok(s) => s.with_type::<Document>(),
                Err(e) => return Err(classify_open_error(e, &after)),
            };
            publisher.start(next_seq, Checkpoint { seq: next_seq - 1, resume_after: Some(after), copying: false, cluster_secs });
            replay = published;
            (stream, false)
        }
        ResumePlan::Fresh | ResumePlan::RestartCopy { .. } => {
            let copy = matches!(plan, ResumePlan::RestartCopy { .. }) || (restart_from.is_none() && cfg.copy_existing);
            // The stream is opened before any copy, so that what changes
            // while the copy runs is in the stream: no gap.
            let stream = watch.await.context("opening the change stream")?.with_type::<Document>();
            (stream, copy)
        }
    };
    if publisher.next_seq == 0 {
        let start = stream.resume_token().ok_or_else(|| anyhow::anyhow!("the server gave no resume token for the new change stream (postBatchResumeToken; MongoDB 4.0.7 or later has it); cannot store a position"))?;
        let start = token_json(&start)?;
        let secs = (now_ms() / 1000) as u32;
        lease.store_start(topic, if copy { None } else { Some(&start) }).await?;
        if copy {
            publisher.start(max_seq + 1, Checkpoint { seq: max_seq, resume_after: None, copying: true, cluster_secs: secs });
            copy_existing(cfg, coll, &mut publisher, lease, metrics).await?;
            publisher.flush().await?;
        }
        let seq = publisher.next_seq.max(max_seq + 1) - 1;
        publisher.start(seq + 1, Checkpoint { seq, resume_after: Some(start), copying: false, cluster_secs: secs });
    }
    metrics.durable_at(i64::from(publisher.durable.cluster_secs) * 1000);
    metrics.set_ready(Ok(format!("active: following the change stream of {}.{} into {topic}", cfg.database, cfg.collection)));
    tracing::info!(next_seq = publisher.next_seq, "following the change stream");

    follow(cfg, &mut stream, &mut publisher, lease, &mut replay, &mut stop).await?;
    tracing::info!("stopping: waiting for the broker to acknowledge what was sent");
    publisher.flush().await?;
    tracing::info!(published = publisher.published, "capture stopped");
    Ok(())
}

/// Where this start begins: the position read back from the topic (or
/// the lease, before anything was published), unless `--restart-from` says
/// otherwise. Returns the plan and the highest sequence number published.
async fn resume_plan(cfg: &CaptureConfig, topic: &str, partitions: i32, lease: &Lease, metrics: &CaptureMetrics, restart_from: Option<RestartFrom>) -> anyhow::Result<(ResumePlan, u64)> {
    metrics.set_ready(Err("reading the stored position back from the topic".into()));
    let last = {
        let (cfg, topic) = (cfg.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || read_last_records(&cfg.kafka_settings(), &topic, partitions)).await??
    };
    let max_seq = last.iter().map(|r| r.position.seq).max().unwrap_or(0);
    let plan = match restart_from {
        Some(RestartFrom::Now) => {
            tracing::warn!("--restart-from now: the stored position is ignored; changes between it and now are not published");
            ResumePlan::Fresh
        }
        Some(RestartFrom::Copy) => ResumePlan::RestartCopy { next_seq: max_seq + 1 },
        None => match ResumePlan::from_last_records(&last, partitions).map_err(CaptureError::from)? {
            // Nothing published yet: a stream started before may be remembered in the lease.
            ResumePlan::Fresh => match lease.stored_start(topic).await.context("reading the lease")? {
                Some(after) => ResumePlan::Resume { after, next_seq: 1, cluster_secs: 0, published: BTreeMap::new() },
                None => ResumePlan::Fresh,
            },
            plan => plan,
        },
    };
    Ok((plan, max_seq))
}

/// Publishes each change the stream delivers until `stop`; every 100 ms
/// drains acknowledgements and checks the lease is still this instance's.
async fn follow(cfg: &CaptureConfig, stream: &mut ChangeStream<Document>, publisher: &mut Publisher<'_>, lease: &Lease, replay: &mut BTreeMap<i32, (u64, Option<serde_json::Value>)>, stop: &mut tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {
                publisher.drain()?;
                if !lease.usable() {
                    return Err(CaptureError::LeaseLost(cfg.lease_id()).into());
                }
            }
            next = stream.next() => {
                let Some(change) = next else { anyhow::bail!("the change stream ended (the collection was dropped or renamed?)") };
                let change = change.map_err(|e| classify_stream_error(e, publisher.durable.resume_after.as_ref()))?;
                if !lease.usable() {
                    return Err(CaptureError::LeaseLost(cfg.lease_id()).into());
                }
                let out = format::change(&change, cfg.json)?;
                publisher.publish_change(out, replay).await?;
            }
        }
    }
    Ok(())
}

/// Publishes every document of the collection as a copy-existing event.
async fn copy_existing(cfg: &CaptureConfig, coll: &mongodb::Collection<Document>, publisher: &mut Publisher<'_>, lease: &Lease, metrics: &CaptureMetrics) -> anyhow::Result<()> {
    metrics.set_ready(Err("copying the existing documents".into()));
    tracing::info!("copying the existing documents");
    let mut cursor = coll.find(doc! {}).sort(doc! { "_id": 1 }).await.context("reading the collection for the copy")?;
    let mut n = 0u64;
    while let Some(d) = cursor.try_next().await.context("reading the collection for the copy")? {
        if !lease.usable() {
            return Err(CaptureError::LeaseLost(cfg.lease_id()).into());
        }
        let out = format::copy_existing(&d, &cfg.database, &cfg.collection, cfg.json)?;
        publisher.publish_copy(out).await?;
        n += 1;
    }
    tracing::info!(documents = n, "copy finished");
    Ok(())
}

/// The token as the driver takes it.
fn to_resume_token(json: &serde_json::Value) -> anyhow::Result<ResumeToken> {
    let bson = Bson::try_from(json.clone()).map_err(|e| anyhow::anyhow!("stored resume token {json} is not Extended JSON: {e}"))?;
    let Bson::Document(d) = bson else { anyhow::bail!("stored resume token {json} is not a document") };
    let bytes = mongodb::bson::to_vec(&d)?;
    mongodb::bson::from_slice(&bytes).map_err(|e| anyhow::anyhow!("stored resume token {json} is not a resume token: {e}"))
}

/// The token as stored (relaxed Extended JSON).
fn token_json(token: &ResumeToken) -> anyhow::Result<serde_json::Value> {
    Ok(mongodb::bson::to_bson(token)?.into_relaxed_extjson())
}

/// Server errors that mean "this token cannot be resumed from".
fn token_unusable(e: &mongodb::error::Error) -> Option<String> {
    // 286 ChangeStreamHistoryLost, 280 ChangeStreamFatalError, 260 InvalidResumeToken, 9 FailedToParse (a token it cannot read).
    const CODES: [i32; 4] = [286, 280, 260, 9];
    match e.kind.as_ref() {
        ErrorKind::Command(c) if CODES.contains(&c.code) || c.message.contains("resume") => Some(format!("{} ({}, code {})", c.message, c.code_name, c.code)),
        _ if e.to_string().contains("may no longer be in the oplog") => Some(e.to_string()),
        _ => None,
    }
}

fn classify_open_error(e: mongodb::error::Error, token: &serde_json::Value) -> anyhow::Error {
    match token_unusable(&e) {
        Some(reason) => CaptureError::ResumeImpossible { token: token.to_string(), reason }.into(),
        None => anyhow::Error::from(e).context("opening the change stream"),
    }
}

/// A failure while following: the driver resumes by itself after network
/// errors; if that resume finds the history gone, the same advice applies.
fn classify_stream_error(e: mongodb::error::Error, durable: Option<&serde_json::Value>) -> anyhow::Error {
    match token_unusable(&e) {
        Some(reason) => CaptureError::ResumeImpossible { token: durable.map(|t| t.to_string()).unwrap_or_default(), reason }.into(),
        None => anyhow::Error::from(e).context("reading the change stream"),
    }
}

fn plan_summary(plan: &ResumePlan) -> String {
    match plan {
        ResumePlan::Fresh => "no stored position: starting the stream now".into(),
        ResumePlan::RestartCopy { next_seq } => format!("copy of the existing documents (again) from seq {next_seq}"),
        ResumePlan::Resume { after, next_seq, published, .. } => format!("resume after {after} at seq {next_seq}; last seqs per partition {:?}", published.iter().map(|(p, (s, _))| (*p, *s)).collect::<Vec<_>>()),
    }
}

