//! `resevent run`: the scaled consumer-group service, in Kafka Streams'
//! anatomy for one job.
//!
//! N instances share one consumer group. Partition N of the input is task N:
//! its state lives in the local RocksDB (column family `partition/task/N`)
//! and in partition N of the compacted changelog topic. The rooms, each
//! calling only the ones below it:
//!
//! | file | Kafka Streams | what it does |
//! |---|---|---|
//! | this file | `KafkaStreams` | wires the clients, runs the stream thread, shuts down |
//! | `stream_thread` | `StreamThread` | the poll loop: batches, commit on the interval, reload, recovery |
//! | `task_manager` | `TaskManager` | owned, ready and restoring tasks; the rebalance callbacks; the shared context |
//! | `task` | `StreamTask` | one partition's records through the engine; the pure `outputs` |
//! | `commit` | the commit in `TaskExecutor` | the interval made durable, or rewound (`CommitIo`) |
//! | `commit_io` | `RecordCollector` + `ProcessorStateManager` | `CommitIo` over the producer, RocksDB and the consumer |
//! | `restore` | `StoreChangelogReader` | a new task restored from the changelog beside processing |
//! | `input`, `topics`, `reload`, `recent` | | batches from the consumer; topic checks; the pipeline re-read; recent events for lookups |
//! | `metrics`, `http` | | Prometheus figures; /, /healthz, /readyz, /metrics, /reservations/{id} |
//! | `config`, `passthrough` | `StreamsConfig` | settings; the benchmark's baseline over the same loop |
//!
//! Outputs go out through [`crate::sink::collector::RecordCollector`] without
//! waiting; new states wait in a write-back cache; every `commit_interval_ms`
//! (and when the cache is full, at revocation and at shutdown) the
//! coordinator makes the interval durable — outputs acknowledged, changelog
//! acknowledged, state + checkpoint in one WriteBatch, then input offsets —
//! or rewinds it ([`commit`] says why this order survives `kill -9` anywhere).
//!
//! Delivery guarantee: at-least-once with deterministic eventIds (a crash
//! repeats at most the uncommitted interval's events, with the same ids and
//! content; consumers drop repeats by eventId), or exactly-once with one
//! Kafka transaction per interval (`--guarantee exactly-once`).

pub mod commit;
mod commit_io;
pub mod config;
mod http;
mod input;
pub mod metrics;
pub mod passthrough;
mod recent;
pub mod reload;
pub mod restore;
mod stream_thread;
mod task;
mod task_manager;
mod topics;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};

use crate::engine::{Counts, Engine};
use crate::fault::Backoff;
use crate::kafka;
use crate::sink::collector::RecordCollector;
use crate::state::cache::WriteBackCache;
use crate::state::store::{self, StateStore};
use commit::Coordinator;
use config::{Guarantee, RunConfig};
use restore::{RestoreResult, RestoreWorker, Restorer};
use stream_thread::StreamThread;
use task_manager::{ServiceContext, TaskManager};

/// Restores that run at once. Two: a partition with a long restore does not
/// hold up the others; more would mostly compete for the same disk and core.
const RESTORE_THREADS: usize = 2;

/// What a finished run did.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub counts: Counts,
    /// Input record timestamp → its business event acknowledged.
    pub latency: crate::sink::latency::Latency,
    pub batches: u64,
    /// When the first batch was processed and the last output acknowledged,
    /// for a busy-time rate.
    pub first_batch: Option<Instant>,
    pub last_batch: Option<Instant>,
}

impl RunSummary {
    fn record_batch(&mut self, counts: &Counts) {
        self.counts.add(counts);
        self.batches += 1;
        let now = Instant::now();
        self.first_batch.get_or_insert(now);
        self.last_batch = Some(now);
    }

    /// Everything processed so far is acknowledged now.
    fn acknowledged(&mut self) {
        if self.first_batch.is_some() {
            self.last_batch = Some(Instant::now());
        }
    }

    /// Records per second between the first batch and the last acknowledgement.
    pub fn busy_rate(&self) -> Option<f64> {
        let secs = self.last_batch?.duration_since(self.first_batch?).as_secs_f64();
        (secs > 0.0).then(|| self.counts.records as f64 / secs)
    }

    /// One JSON line for scripts and benchmarks.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "records": self.counts.records,
            "events": self.counts.events,
            "rejected": self.counts.rejected,
            "batches": self.batches,
            "busy_seconds": self.last_batch.zip(self.first_batch).map(|(l, f)| l.duration_since(f).as_secs_f64()),
            "records_per_second": self.busy_rate().map(f64::round),
            "latency_ms": {
                "p50": self.latency.quantile(0.5),
                "p99": self.latency.quantile(0.99),
                "max": (self.latency.count() > 0).then(|| self.latency.max_ms()),
            },
        })
        .to_string()
    }
}

/// Runs the service until `shutdown` resolves; then commits what was
/// processed, leaves the group and returns. `pipeline_file` is where the
/// engine's pipeline came from (`None`: built in), re-read on SIGHUP or when
/// it changes.
pub async fn run(cfg: RunConfig, engine: Engine, pipeline_file: Option<std::path::PathBuf>, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunSummary> {
    tracing::info!(config = %cfg.masked(), "resevent run starting");
    let mut shutdown = std::pin::pin!(shutdown);
    let base = kafka::client_config(&cfg.kafka_settings());
    let routed: Vec<String> = engine.pipeline.routes.iter().map(|r| r.topic.clone()).collect();
    let registry = match &cfg.schema_registry.url {
        Some(_) => Some(Arc::new(crate::registry::Registry::new(&cfg.schema_registry)?)),
        None => None,
    };
    let mut event_topics = vec![cfg.output_topic.clone()];
    event_topics.extend(routed.iter().cloned());
    let codec = match (cfg.output_format, &registry) {
        (config::OutputFormat::Avro, Some(r)) => match event_codec(&cfg, r, &event_topics, shutdown.as_mut()).await? {
            Some(codec) => codec,
            None => return Ok(RunSummary::default()),
        },
        _ => crate::sink::codec::EventCodec::Json,
    };
    let partitions = topics::prepare(&cfg, &routed, &base).await?;
    let exactly_once = cfg.processing_guarantee == Guarantee::ExactlyOnce;
    let interval = Duration::from_millis(cfg.commit_interval());
    tracing::info!(input = ?cfg.input_topics, partitions, changelog = %cfg.changelog_topic(), output = %cfg.output_topic, commit_interval_ms = interval.as_millis() as u64, "topics ready");

    std::fs::create_dir_all(&cfg.state_dir)?;
    // No WAL: the changelog is the durable copy (see `store`).
    let tuning = store::StoreOptions { write_buffer_bytes: cfg.state_write_buffer_bytes, disable_wal: true };
    let store = Arc::new(Mutex::new(StateStore::open_with(&cfg.state_dir, tuning)?));

    let latency = Arc::new(Mutex::new(crate::sink::latency::Latency::default()));
    let metrics = Arc::new(metrics::Metrics::new(metrics::LatencyMetric(latency.clone())));
    let (restores, mut restored) = start_restores(&cfg, &store, &metrics)?;
    let collector = tokio::task::block_in_place(|| RecordCollector::with_latency(producer_config(&cfg, exactly_once)?, cfg.changelog_topic(), latency))?;
    if exactly_once {
        tracing::info!("exactly-once: transactional producer ready; one transaction per commit interval");
    }
    let acks = collector.wake();
    let tasks = TaskManager {
        coordinator: Coordinator::new(WriteBackCache::new(cfg.cache_max_bytes), interval, exactly_once),
        collector,
        ready: BTreeSet::new(),
        assigned: BTreeMap::new(),
        held: BTreeMap::new(),
    };

    let context = ServiceContext {
        tasks: Mutex::new(tasks),
        store: store.clone(),
        restores,
        metrics: metrics.clone(),
        joined: false.into(),
        // Start-up just talked to the broker (topic checks); statistics keep it current.
        broker_up: true.into(),
        recent: Mutex::default(),
    };
    let consumer: StreamConsumer<ServiceContext> = group_consumer_config(&cfg, exactly_once).create_with_context(context)?;
    let http = start_http(&cfg, &base, &consumer, &metrics).await?;
    consumer.subscribe(&cfg.input_topics.iter().map(String::as_str).collect::<Vec<_>>())?;

    metrics.set_allowlist(engine.pipeline.allowlist.describe());
    let rows = crate::pipeline::RowLocator::new(pipeline_file.as_deref());
    let watch = reload::PipelineWatch::new(pipeline_file);
    let mut service = StreamThread { cfg: &cfg, engine, watch, consumer: &consumer, codec, registry, summary: RunSummary::default(), since_log: Counts::default(), last_log: Instant::now(), acks, rows };
    let outcome = service.run_loop(shutdown.as_mut(), &mut restored).await;

    tracing::info!("shutting down: committing and leaving the group");
    // (A commit that did something marks the summary's end; the idle wait
    // before an idle exit is not busy time.)
    let final_commit = service.commit(true);
    if let Err(e) = &final_commit {
        tracing::warn!(error = %e, "final commit failed; the next start reads the interval again (same eventIds)");
    }
    if let Err(e) = store.lock().expect("store lock").flush() {
        tracing::warn!(error = %e, "flushing the state store; the next start catches it up from the changelog");
    }
    if let Some((stop, served)) = http {
        let _ = stop.send(());
        let _ = served.await;
    }
    let mut summary = std::mem::take(&mut service.summary);
    summary.latency = consumer.context().tasks.lock().expect("tasks lock").collector.latency();
    consumer.unsubscribe();
    drop(consumer);
    outcome?;
    tracing::info!(records = summary.counts.records, events = summary.counts.events, dead_letters = summary.counts.rejected, "stopped");
    Ok(summary)
}

/// The restore threads, each with its own changelog reader, and the channel
/// their results come back on.
fn start_restores(cfg: &RunConfig, store: &Arc<Mutex<StateStore>>, metrics: &Arc<metrics::Metrics>) -> anyhow::Result<(RestoreWorker, tokio::sync::mpsc::UnboundedReceiver<RestoreResult>)> {
    let mut restore_cfg = kafka::reader_config(&cfg.kafka_settings(), &format!("{}-restore", cfg.application_id));
    // A short fetch wait: restore ends on the empty fetch at the partition's end.
    restore_cfg.set("fetch.wait.max.ms", "50");
    // Only read_committed is safe for a changelog written transactionally.
    restore_cfg.set("isolation.level", "read_committed");
    // Changelog records are small (~100 bytes): librdkafka's 1 MB per
    // partition fetch is ~10,000 of them a round trip; take more at once.
    if !cfg.consumer.contains_key("max.partition.fetch.bytes") {
        restore_cfg.set("max.partition.fetch.bytes", (16 << 20).to_string());
    }
    let mut restorers = Vec::new();
    for _ in 0..RESTORE_THREADS {
        restorers.push(Restorer { store: store.clone(), changelog: cfg.changelog_topic(), consumer: restore_cfg.create_with_context(kafka::EndOfPartition { what: "restore consumer" })?, metrics: Some(metrics.clone()) });
    }
    let (restored_tx, restored) = tokio::sync::mpsc::unbounded_channel::<RestoreResult>();
    Ok((RestoreWorker::start(restorers, restored_tx)?, restored))
}

/// The record collector's producer: transactional under exactly-once.
fn producer_config(cfg: &RunConfig, exactly_once: bool) -> anyhow::Result<rdkafka::ClientConfig> {
    let mut producer_cfg = kafka::producer_config(&cfg.kafka_settings());
    if exactly_once {
        // Stable across restarts of this instance (same state dir), so a new
        // incarnation's init_transactions aborts what a killed one left open
        // instead of read_committed consumers waiting out its timeout.
        producer_cfg.set("transactional.id", format!("{}-{}", cfg.application_id, instance_id(&cfg.state_dir)?));
    }
    Ok(producer_cfg)
}

/// The group consumer of the input topics.
fn group_consumer_config(cfg: &RunConfig, exactly_once: bool) -> rdkafka::ClientConfig {
    let mut consumer_cfg = kafka::group_consumer_config(&cfg.kafka_settings(), &cfg.application_id);
    if !cfg.consumer.contains_key("partition.assignment.strategy") {
        // Several input topics must be co-partitioned (partition N of each on one
        // instance): the range assignor guarantees that; one topic can rebalance
        // incrementally.
        consumer_cfg.set("partition.assignment.strategy", if cfg.input_topics.len() > 1 { "range" } else { "cooperative-sticky" });
    }
    if exactly_once {
        consumer_cfg.set("isolation.level", "read_committed");
    }
    if !cfg.consumer.contains_key("statistics.interval.ms") && !cfg.kafka.contains_key("statistics.interval.ms") {
        // Lag and broker state for /metrics and /readyz.
        consumer_cfg.set("statistics.interval.ms", "5000");
    }
    consumer_cfg
}

/// The HTTP endpoint, when `http_addr` is set: served on its own task until
/// the returned sender is used (or dropped).
async fn start_http(cfg: &RunConfig, base: &rdkafka::ClientConfig, consumer: &StreamConsumer<ServiceContext>, metrics: &Arc<metrics::Metrics>) -> anyhow::Result<Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>> {
    let Some(addr) = &cfg.http_addr else { return Ok(None) };
    let addr: std::net::SocketAddr = addr.parse().map_err(|e| anyhow::anyhow!("http_addr {addr:?} is not host:port: {e}"))?;
    let listener = http::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP: / (status page) /healthz /readyz /metrics /reservations/{{id}}");
    let group = http::GroupView { client: base.create().map_err(|e| anyhow::anyhow!("creating the group-describing client: {e}"))?, group_id: cfg.application_id.clone(), input_topics: cfg.input_topics.clone() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(http::serve(listener, consumer.context().clone(), metrics.clone(), group, async {
        let _ = stopped.await;
    }));
    Ok(Some((stop, served)))
}

/// The Avro codec of business events: the schema registered (or looked up)
/// under each topic's subject. A registry that cannot be reached is waited
/// for, with backoff, before anything is consumed; one that refuses stops the
/// start with its reason. `None`: shut down while waiting.
async fn event_codec(cfg: &RunConfig, registry: &crate::registry::Registry, topics: &[String], mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>) -> anyhow::Result<Option<crate::sink::codec::EventCodec>> {
    let mut backoff = Backoff::new(Duration::from_millis(cfg.retry_initial_backoff_ms), Duration::from_millis(cfg.retry_max_backoff_ms));
    let mut ids = std::collections::HashMap::new();
    for topic in topics {
        let subject = cfg.schema_registry.subject(topic);
        let mut attempt = 0u32;
        let id = loop {
            match registry.register(&subject, crate::sink::codec::BUSINESS_EVENT_SCHEMA, cfg.schema_registry.auto_register).await {
                Ok(id) => break id,
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    let wait = backoff.delay(attempt);
                    tracing::warn!(registry = %registry.url(), subject = %subject, attempt, retry_in_ms = wait.as_millis() as u64, error = %e, "schema registry unavailable at start; nothing is consumed until the event schema is registered");
                    tokio::select! {
                        _ = shutdown.as_mut() => return Ok(None),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => anyhow::bail!("{e}"),
            }
        };
        tracing::info!(registry = %registry.url(), subject = %subject, schema_id = id, topic = %topic, "business events written as Avro");
        ids.insert(topic.clone(), id);
    }
    Ok(Some(crate::sink::codec::EventCodec::Avro { ids }))
}

/// This instance's stable id, kept in the state dir.
fn instance_id(state_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = state_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_string());
        }
    }
    use sha2::Digest;
    let seed = format!("{:?} {} {:?}", std::time::SystemTime::now(), std::process::id(), state_dir);
    let id: String = sha2::Sha256::digest(seed.as_bytes())[..6].iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &id)?;
    Ok(id)
}
