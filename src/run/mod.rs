//! `resevent run`: the scaled consumer-group service, shaped like Kafka
//! Streams' runtime for one job.
//!
//! N instances share one consumer group. Partition N of the input is task N:
//! its state lives in the local RocksDB (column family `task/N`) and in
//! partition N of the compacted changelog topic. The pieces, one I/O edge each:
//! - `input`: records from the consumer, in batches;
//! - `sink`: business events, routes, dead letters and changelog records,
//!   sent without waiting ([`crate::sink::collector::RecordCollector`]);
//! - `cache` and `commit`: new states wait in a write-back cache; every
//!   `commit_interval_ms` (and when the cache is full, at revocation and at
//!   shutdown) the coordinator makes the interval durable — outputs
//!   acknowledged, changelog acknowledged, state + checkpoint in one
//!   WriteBatch, then input offsets — or rewinds it ([`commit`] says why this
//!   order survives `kill -9` anywhere);
//! - `restore`: a newly assigned partition is paused and restored from the
//!   changelog on the restore thread, beside processing; it resumes when its
//!   state is current.
//!
//! This file is the loop that ties them together ([`run`]) and the rebalance
//! callbacks. Delivery guarantee: at-least-once with deterministic eventIds
//! (a crash repeats at most the uncommitted interval's events, with the same
//! ids and content; consumers drop repeats by eventId), or exactly-once with
//! one Kafka transaction per interval (`--guarantee exactly-once`).

pub mod commit;
pub mod config;
mod http;
mod input;
pub mod metrics;
pub mod passthrough;
mod recent;
pub mod reload;
pub mod restore;
mod topics;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::engine::{BatchOutput, Counts, Engine, InputRecord};
use crate::registry::{RegistryError, Resolved};
use crate::sink::codec::EventCodec;
use crate::kafka;
use crate::state::store::{self, StateBatch, StateStore};
use crate::state::cache::{CachedState, WriteBackCache};
use crate::state::task_name;
use crate::state::cache::DirtyStates;
use commit::{CommitIo, Committed, Coordinator, InputPartition};
use config::{Guarantee, RunConfig};
use crate::fault::{Backoff, Fault};
use restore::{CHANGELOG_NEXT, RestoreResult, RestoreWorker, Restorer};
use crate::sink::collector::RecordCollector;

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

/// What the loop and the rebalance callbacks share, behind
/// [`ServiceContext::tasks`]. The loop holds the lock while it processes a
/// batch and while it commits, in a blocking section, never across an
/// `.await` and never while it polls the consumer; the callbacks run only
/// inside a poll, so they never wait for it.
struct Tasks {
    /// The interval: cache, progress, clocks. Written by the loop (process,
    /// commit) and the revoke callback (commit, drop a task).
    coordinator: Coordinator,
    /// Every output's producer. Written by the loop and the revoke callback's commit.
    collector: RecordCollector,
    /// Tasks whose state is current and owned here: their records are
    /// processed. Written by the loop (restore done, recovery) and the revoke
    /// callback; read by the status page.
    ready: BTreeSet<i32>,
    /// The input topics assigned here, per task (several input topics share
    /// a task). Written by the rebalance callbacks; read by the loop.
    assigned: BTreeMap<i32, BTreeSet<String>>,
    /// Records of a task still restoring, fetched before its pause took
    /// hold; processed, in order, once it is ready. Written by the loop
    /// (batch grouping) and the revoke callback; taken when the restore ends.
    held: BTreeMap<i32, Vec<OwnedMessage>>,
}

/// The consumer's context: what the loop, the rebalance callbacks, the
/// restore threads' results and the HTTP endpoint share.
///
/// Lock order, where two are held at once: `tasks` first, then `store` or
/// `recent` (never both of those, never the other way round).
struct ServiceContext {
    /// See [`Tasks`].
    tasks: Mutex<Tasks>,
    /// The RocksDB store. Written by the loop (index entries, commits) and
    /// the restore threads; read by the loop and lookups.
    store: Arc<Mutex<StateStore>>,
    /// Restores in flight. Requested by the rebalance callbacks and the loop's
    /// recovery; finished by the loop.
    restores: RestoreWorker,
    /// Prometheus metrics: written by everyone, read by /metrics.
    metrics: Arc<metrics::Metrics>,
    /// The group has assigned partitions (possibly none) at least once.
    /// Written by the assign callback; read by /readyz.
    joined: std::sync::atomic::AtomicBool,
    /// A broker was up at the last statistics report. Written by the
    /// statistics callback; read by /readyz.
    broker_up: std::sync::atomic::AtomicBool,
    /// The last events of each reservation. Written by the loop; read by lookups.
    recent: Mutex<recent::RecentEvents>,
}

impl ClientContext for ServiceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka client error");
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::warn!(facility, ?level, "librdkafka: {message}");
    }

    /// librdkafka's statistics, every `statistics.interval.ms`: lag per
    /// partition and whether a broker is up, for /metrics and /readyz.
    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (&p, part) in &t.partitions {
                if p >= 0 && part.consumer_lag >= 0 {
                    self.metrics.lag(topic, p, part.consumer_lag);
                }
            }
        }
        let up = stats.brokers.values().any(|b| b.state == "UP");
        self.broker_up.store(up, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ConsumerContext for ServiceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        let mut tasks = self.tasks.lock().expect("tasks lock");
        let tasks = &mut *tasks;
        // Kafka Streams commits before it gives partitions away, so the next
        // owner starts where this one stopped and repeats nothing.
        let mut io = ServiceIo { collector: &mut tasks.collector, store: &self.store, consumer, sync_offsets: true };
        match tasks.coordinator.commit(&mut io) {
            Ok(done) => tracing::debug!(?done, "committed before revocation"),
            Err(e) => tracing::warn!(error = %e, "commit before revocation failed; the next owner reads the interval again (same eventIds)"),
        }
        let mut gone = BTreeSet::new();
        for e in tpl.elements() {
            let p = e.partition();
            self.metrics.forget_partition(e.topic(), p);
            if let Some(topics) = tasks.assigned.get_mut(&p) {
                topics.remove(e.topic());
                if topics.is_empty() {
                    tasks.assigned.remove(&p);
                    gone.insert(p);
                }
            }
        }
        for &p in &gone {
            tasks.ready.remove(&p);
            tasks.held.remove(&p);
            tasks.coordinator.drop_task(p);
            tasks.coordinator.progress.forget_task(p);
            self.restores.cancel(p);
        }
        tracing::info!(partitions = ?gone, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.joined.store(true, std::sync::atomic::Ordering::Relaxed);
                let mut tasks = self.tasks.lock().expect("tasks lock");
                let mut to_pause = TopicPartitionList::new();
                let mut to_resume = TopicPartitionList::new();
                let mut new = BTreeSet::new();
                for e in tpl.elements() {
                    let p = e.partition();
                    tasks.assigned.entry(p).or_default().insert(e.topic().to_owned());
                    // librdkafka keeps a partition's pause across a rebalance,
                    // so a ready one is resumed explicitly.
                    let list = if tasks.ready.contains(&p) { &mut to_resume } else { &mut to_pause };
                    let _ = list.add_partition(e.topic(), p);
                    if !tasks.ready.contains(&p) && !self.restores.is_restoring(p) {
                        new.insert(p);
                    }
                }
                // Paused until restored: no record of it is processed against old state.
                if to_pause.count() > 0 {
                    if let Err(e) = consumer.pause(&to_pause) {
                        tracing::warn!(error = %e, "pausing newly assigned partitions");
                    }
                }
                if to_resume.count() > 0 {
                    if let Err(e) = consumer.resume(&to_resume) {
                        tracing::warn!(error = %e, "resuming assigned partitions");
                    }
                }
                for &p in &new {
                    self.restores.request(p);
                }
                tracing::info!(partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<BTreeSet<_>>(), restoring = ?new, "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The commit coordinator's I/O, over the real clients.
struct ServiceIo<'a, C: Consumer<ServiceContext>> {
    collector: &'a mut RecordCollector,
    store: &'a Mutex<StateStore>,
    consumer: &'a C,
    /// Commit offsets synchronously (at revocation and shutdown); otherwise
    /// asynchronously, since the next commit covers a lost one.
    sync_offsets: bool,
}

/// Input offsets as the list librdkafka commits.
pub(super) fn offsets_list(offsets: &BTreeMap<InputPartition, i64>) -> Result<TopicPartitionList, Fault> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), next) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*next)).map_err(|e| Fault::Fatal(e.into()))?;
    }
    Ok(tpl)
}

impl<C: Consumer<ServiceContext>> CommitIo for ServiceIo<'_, C> {
    fn flush_outputs(&mut self) -> Result<(), Fault> {
        self.collector.flush()
    }

    fn send_changelog(&mut self, dirty: &DirtyStates) -> Result<(), Fault> {
        for (task, states) in dirty {
            for (id, record) in states {
                self.collector.send_changelog(*task, id, record.as_deref())?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, offsets: &BTreeMap<InputPartition, i64>) -> Result<BTreeMap<i32, u64>, Fault> {
        if self.collector.is_transactional() {
            let group = self.consumer.group_metadata().ok_or_else(|| Fault::Fatal(anyhow::anyhow!("no consumer group metadata for the transaction")))?;
            self.collector.commit_transaction(&offsets_list(offsets)?, &group)?;
        } else {
            self.collector.flush()?;
        }
        Ok(self.collector.take_changelog_next())
    }

    fn write_state(&mut self, task: i32, states: &[(String, Option<Vec<u8>>)], changelog_next: Option<u64>) -> Result<(), Fault> {
        let mut batch = StateBatch::default();
        for (id, record) in states {
            batch.put_encoded(id.as_bytes(), record.clone());
        }
        if let Some(next) = changelog_next {
            batch.mark(CHANGELOG_NEXT, next);
        }
        self.store.lock().expect("store lock").commit(&task_name(task), batch)?;
        Ok(())
    }

    fn commit_offsets(&mut self, offsets: &BTreeMap<InputPartition, i64>) -> Result<(), Fault> {
        let mode = if self.sync_offsets { CommitMode::Sync } else { CommitMode::Async };
        if let Err(e) = self.consumer.commit(&offsets_list(offsets)?, mode) {
            // Everything before is durable; a later commit covers these offsets.
            tracing::warn!(error = %e, "offset commit failed; the next commit covers it");
        }
        Ok(())
    }

    fn rewind(&mut self, to: &BTreeMap<InputPartition, i64>) -> Result<(), Fault> {
        self.collector.abandon();
        let owned = self.consumer.assignment().map_err(|e| Fault::Fatal(anyhow::anyhow!("reading the assignment to rewind: {e}")))?;
        for ((topic, p), offset) in to {
            if let Err(e) = self.consumer.seek(topic, *p, Offset::Offset(*offset), Duration::from_secs(10)) {
                if owned.find_partition(topic, *p).is_some() {
                    return Err(Fault::Fatal(anyhow::anyhow!("cannot seek {topic}/{p} back to {offset} to process the interval again: {e}; stopping, so that the next start reads it from the committed offset")));
                }
                tracing::debug!(topic = %topic, partition = p, error = %e, "seek back of a revoked partition; its next owner reads it again");
            }
        }
        Ok(())
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
    let latency = Arc::new(Mutex::new(crate::sink::latency::Latency::default()));
    let metrics = Arc::new(metrics::Metrics::new(metrics::LatencyMetric(latency.clone())));
    let mut restorers = Vec::new();
    for _ in 0..RESTORE_THREADS {
        restorers.push(Restorer { store: store.clone(), changelog: cfg.changelog_topic(), consumer: restore_cfg.create_with_context(kafka::EndOfPartition { what: "restore consumer" })?, metrics: Some(metrics.clone()) });
    }
    let (restored_tx, mut restored) = tokio::sync::mpsc::unbounded_channel::<RestoreResult>();
    let restores = RestoreWorker::start(restorers, restored_tx)?;

    let mut producer_cfg = kafka::producer_config(&cfg.kafka_settings());
    if exactly_once {
        // Stable across restarts of this instance (same state dir), so a new
        // incarnation's init_transactions aborts what a killed one left open
        // instead of read_committed consumers waiting out its timeout.
        producer_cfg.set("transactional.id", format!("{}-{}", cfg.application_id, instance_id(&cfg.state_dir)?));
    }
    let collector = tokio::task::block_in_place(|| RecordCollector::with_latency(producer_cfg, cfg.changelog_topic(), latency))?;
    if exactly_once {
        tracing::info!("exactly-once: transactional producer ready; one transaction per commit interval");
    }
    let tasks = Tasks {
        coordinator: Coordinator::new(WriteBackCache::new(cfg.cache_max_bytes), interval, exactly_once),
        collector,
        ready: BTreeSet::new(),
        assigned: BTreeMap::new(),
        held: BTreeMap::new(),
    };

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
    let consumer: StreamConsumer<ServiceContext> = consumer_cfg.create_with_context(context)?;
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = match &cfg.http_addr {
        Some(addr) => {
            let addr: std::net::SocketAddr = addr.parse().map_err(|e| anyhow::anyhow!("http_addr {addr:?} is not host:port: {e}"))?;
            let listener = http::bind(addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "HTTP: / (status page) /healthz /readyz /metrics /reservations/{{id}}");
            let group = http::GroupView { client: base.create().map_err(|e| anyhow::anyhow!("creating the group-describing client: {e}"))?, group_id: cfg.application_id.clone(), input_topics: cfg.input_topics.clone() };
            Some(tokio::spawn(http::serve(listener, consumer.context().clone(), metrics.clone(), group, async {
                let _ = http_stopped.await;
            })))
        }
        None => None,
    };
    consumer.subscribe(&cfg.input_topics.iter().map(String::as_str).collect::<Vec<_>>())?;

    metrics.set_allowlist(engine.pipeline.allowlist.describe());
    let watch = reload::PipelineWatch::new(pipeline_file);
    let mut service = Service { cfg: &cfg, engine, watch, consumer: &consumer, codec, registry, summary: RunSummary::default(), since_log: Counts::default(), last_log: Instant::now() };
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
    let _ = http_stop.send(());
    if let Some(h) = http {
        let _ = h.await;
    }
    let mut summary = std::mem::take(&mut service.summary);
    summary.latency = consumer.context().tasks.lock().expect("tasks lock").collector.latency();
    consumer.unsubscribe();
    drop(consumer);
    outcome?;
    tracing::info!(records = summary.counts.records, events = summary.counts.events, dead_letters = summary.counts.rejected, "stopped");
    Ok(summary)
}

/// The processing loop and what it keeps between iterations.
struct Service<'a> {
    cfg: &'a RunConfig,
    /// Replaced whole when the pipeline file is re-read.
    engine: Engine,
    watch: reload::PipelineWatch,
    consumer: &'a StreamConsumer<ServiceContext>,
    /// How business events are written (JSON, or Avro with registered ids).
    codec: crate::sink::codec::EventCodec,
    /// Resolves Avro-framed input; none = no registry configured.
    registry: Option<Arc<crate::registry::Registry>>,
    summary: RunSummary,
    since_log: Counts,
    last_log: Instant,
}

impl Service<'_> {
    async fn run_loop(&mut self, shutdown: impl Future<Output = ()>, restored: &mut tokio::sync::mpsc::UnboundedReceiver<RestoreResult>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let idle = self.cfg.idle_exit_secs.map(Duration::from_secs);
        let mut last_input = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(self.cfg.retry_initial_backoff_ms), Duration::from_millis(self.cfg.retry_max_backoff_ms));
        let mut failures = 0u32;
        // Records to process before anything new: a restored task's held records.
        let mut carried: Vec<OwnedMessage> = Vec::new();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        loop {
            if self.watch.changed_on_disk() {
                self.reload("the pipeline file changed");
            }
            while let Ok(done) = restored.try_recv() {
                carried.extend(self.on_restored(done)?);
            }
            let batch = if !carried.is_empty() {
                std::mem::take(&mut carried)
            } else {
                let wait = self.until_due().min(Duration::from_millis(500));
                tokio::select! {
                    _ = shutdown.as_mut() => return Ok(()),
                    _ = hangup.recv() => {
                        self.reload("SIGHUP");
                        continue;
                    }
                    done = restored.recv() => {
                        if let Some(done) = done {
                            carried.extend(self.on_restored(done)?);
                        }
                        continue;
                    }
                    m = self.consumer.recv() => match input::arrived(m) {
                        input::Arrived::Record(first) => {
                            last_input = Instant::now();
                            input::fill_batch(self.consumer, vec![first], self.cfg.max_batch_records, Duration::from_millis(self.cfg.batch_wait_ms)).await
                        }
                        input::Arrived::Error => Vec::new(),
                    },
                    _ = tokio::time::sleep(wait) => Vec::new(),
                }
            };
            let mut result = if batch.is_empty() { Ok(()) } else { self.process(&batch).await };
            // On the interval only: committing early when the input looked
            // quiet cut the drain rate from ~70k to ~54k records/s on Tansu
            // (scripts/bench, side by side), for a reason not yet found.
            if result.is_ok() && self.is_due() {
                result = self.commit(false).map(|_| ());
            }
            match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(attempts = failures + 1, "the interval went through after the failure");
                        failures = 0;
                    }
                }
                Err(fault) if fault.is_transient() => {
                    failures += 1;
                    if self.cfg.retry_max_attempts > 0 && failures >= self.cfg.retry_max_attempts {
                        anyhow::bail!("{fault}; gave up after {failures} attempts (retry_max_attempts); the interval is read again at the next start");
                    }
                    carried.clear();
                    self.recover(&fault)?;
                    let wait = backoff.delay(failures);
                    tracing::warn!(attempt = failures, retry_in_ms = wait.as_millis() as u64, error = %fault, "transient failure: the interval was rewound and is processed again");
                    tokio::select! {
                        _ = shutdown.as_mut() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(fault) => return Err(anyhow::Error::new(fault).context("a failure retrying cannot fix")),
            }
            self.log_progress();
            if let Some(idle) = idle {
                if last_input.elapsed() >= idle && carried.is_empty() {
                    tracing::info!(seconds = idle.as_secs(), "no input for the idle limit; stopping");
                    return Ok(());
                }
            }
        }
    }

    /// Re-reads the pipeline file; a file `pipeline check` refuses leaves
    /// the pipeline in force as it is. Called between batches, so the new
    /// one applies from the next change.
    fn reload(&mut self, why: &str) {
        let Some(path) = self.watch.path().map(|p| p.display().to_string()) else {
            tracing::warn!(trigger = why, "the built-in pipeline is in force; there is no file to re-read (give --pipeline FILE)");
            return;
        };
        match self.watch.read() {
            Err(e) => {
                let reason = e.to_string().lines().map(str::trim).collect::<Vec<_>>().join(" ");
                tracing::error!(trigger = why, file = %path, error = %reason, "pipeline reload refused; the pipeline in force is kept");
            }
            Ok(None) => {}
            Ok(Some(new)) => {
                let differences = reload::differences(&self.engine.pipeline, &new);
                if differences.is_empty() {
                    tracing::info!(trigger = why, file = %path, "pipeline re-read: nothing changed");
                    return;
                }
                if new.timer_signature() != self.engine.pipeline.timer_signature() {
                    // The index must list what the new rows arm: committed
                    // first, so that every state is in the store it is built from.
                    if let Err(e) = self.commit(false) {
                        tracing::error!(trigger = why, file = %path, error = %e, "pipeline reload refused: the interval could not be committed before the timer index is rebuilt; the pipeline in force is kept");
                        return;
                    }
                    if let Err(e) = self.rebuild_indexes(&new) {
                        tracing::error!(trigger = why, file = %path, error = %e, "pipeline reload refused: the timer index could not be rebuilt; the pipeline in force is kept");
                        return;
                    }
                }
                let decoder = if new.paths == self.engine.pipeline.paths {
                    self.engine.decoder.clone()
                } else {
                    crate::decode::Decoder::new(self.cfg.format, new.paths.clone()).with_limits(self.cfg.limits())
                };
                self.consumer.context().metrics.set_allowlist(new.allowlist.describe());
                self.engine = Engine::new(new, decoder);
                tracing::info!(trigger = why, file = %path, changes = %differences.join("; "), "pipeline reloaded; in force from the next change");
            }
        }
    }

    /// Builds every ready task's due-time index for `pipeline`'s timer rows.
    fn rebuild_indexes(&self, pipeline: &crate::pipeline::Pipeline) -> Result<(), store::StoreError> {
        let ctx = self.consumer.context();
        let tasks = ctx.tasks.lock().expect("tasks lock");
        let store = ctx.store.lock().expect("store lock");
        for &p in &tasks.ready {
            ensure_task_index(&store, p, pipeline)?;
        }
        Ok(())
    }

    fn is_due(&self) -> bool {
        self.consumer.context().tasks.lock().expect("tasks lock").coordinator.is_due(Instant::now())
    }

    fn until_due(&self) -> Duration {
        self.consumer.context().tasks.lock().expect("tasks lock").coordinator.until_due(Instant::now())
    }

    /// Commits the interval (the coordinator rewinds it on failure).
    fn commit(&mut self, sync_offsets: bool) -> Result<Option<Committed>, Fault> {
        let ctx = self.consumer.context();
        let mut tasks = ctx.tasks.lock().expect("tasks lock");
        let tasks = &mut *tasks;
        let mut io = ServiceIo { collector: &mut tasks.collector, store: &ctx.store, consumer: self.consumer, sync_offsets };
        let done = tokio::task::block_in_place(|| tasks.coordinator.commit(&mut io))?;
        // The index entries the committed intervals used up (a crash before
        // this write leaves them as hints the state finds stale).
        let used = tasks.coordinator.take_used();
        if !used.is_empty() {
            let store = ctx.store.lock().expect("store lock");
            let mut by_task: BTreeMap<i32, StateBatch> = BTreeMap::new();
            for (task, p) in used.iter().filter(|(t, _)| tasks.ready.contains(t)) {
                by_task.entry(*task).or_default().unindex(p);
            }
            for (task, batch) in by_task {
                store.commit(&task_name(task), batch)?;
            }
        }
        if let Some(done) = done {
            self.summary.acknowledged();
            ctx.metrics.committed(done.took.as_secs_f64());
            let (live, stalled) = ctx.store.lock().expect("store lock").health();
            ctx.metrics.store(live, stalled);
            tracing::debug!(states = done.states, partitions = done.partitions, took_ms = done.took.as_millis() as u64, "committed");
        }
        Ok(done)
    }

    /// One batch: decode, apply, send every output without waiting, keep
    /// the new states in the cache. A failure here abandons the interval.
    ///
    /// Avro records are resolved through the registry first, with no lock
    /// held (a slow or unreachable registry must not hold up /readyz or a
    /// lookup); the rest runs under the tasks' lock on a blocking section
    /// (`block_in_place`), so no lock guard is ever held across an `.await`.
    async fn process(&mut self, batch: &[OwnedMessage]) -> Result<(), Fault> {
        let resolved = match &self.registry {
            Some(r) => Some(resolve_all(r, batch).await),
            None => None,
        };
        let ctx = self.consumer.context();
        let tally = tokio::task::block_in_place(|| {
            let mut tasks = ctx.tasks.lock().expect("tasks lock");
            self.process_locked(&mut tasks, batch, resolved)
        })?;
        ctx.metrics.batch(&tally.counts, &tally.by_type, &tally.by_kind);
        self.summary.record_batch(&tally.counts);
        self.since_log.add(&tally.counts);
        Ok(())
    }

    /// [`Service::process`] under the tasks' lock: each ready task's records
    /// through the engine, their outputs sent, their states cached.
    fn process_locked(&self, tasks: &mut Tasks, batch: &[OwnedMessage], resolved: Option<Result<Vec<Resolved>, RegistryError>>) -> Result<BatchTally, Fault> {
        let grouped = group_by_task(tasks, batch);
        let result = (|| {
            // A registry that could not be reached fails the batch before
            // anything of it is applied (the interval is retried, its records held).
            let resolved = resolved.transpose()?;
            let mut tally = BatchTally::default();
            for (&p, members) in &grouped {
                let msgs: Vec<&OwnedMessage> = members.iter().map(|&i| &batch[i]).collect();
                let resolutions: Option<Vec<&Resolved>> = resolved.as_ref().map(|all| members.iter().map(|&i| &all[i]).collect());
                let out = self.run_task(tasks, p, &msgs, resolutions.as_deref())?;
                tally.add(&out);
                self.remember_recent(&out);
                for output in outputs(&self.codec, self.cfg, &self.engine.pipeline.routes, &msgs, &out)? {
                    match output {
                        Output::Event { topic, reservation_id, event_type, payload, source_ms } => tasks.collector.send_event(topic, reservation_id, event_type, &payload, source_ms)?,
                        Output::DeadLetter { topic, letter } => tasks.collector.send_dead_letter(&topic, letter)?,
                    }
                }
                for (id, state) in out.states {
                    tasks.coordinator.cache.put(p, &id, state);
                }
                for id in out.removed {
                    tasks.coordinator.cache.remove(p, &id);
                }
                for m in &msgs {
                    tasks.coordinator.progress.record(m.topic(), p, m.offset());
                }
            }
            Ok::<BatchTally, Fault>(tally)
        })();
        result.map_err(|fault| {
            // Part of the interval is in the cache and on its way out: give
            // it up as a failed commit does, this batch's records included.
            for m in grouped.values().flatten().map(|&i| &batch[i]) {
                tasks.coordinator.progress.record(m.topic(), m.partition(), m.offset());
            }
            let ctx = self.consumer.context();
            let mut io = ServiceIo { collector: &mut tasks.collector, store: &ctx.store, consumer: self.consumer, sync_offsets: false };
            tasks.coordinator.abandon(&mut io, fault)
        })
    }

    /// One task's records through the engine, against the cache and the
    /// store. Records the registry rejected are not decoded; they come back
    /// among the output's rejections. Every index in the output is into `msgs`.
    fn run_task(&self, tasks: &mut Tasks, p: i32, msgs: &[&OwnedMessage], resolved: Option<&[&Resolved]>) -> Result<BatchOutput, Fault> {
        // `records[i]` is `msgs[index_of[i]]`.
        let mut records: Vec<InputRecord> = Vec::with_capacity(msgs.len());
        let mut index_of: Vec<usize> = Vec::with_capacity(msgs.len());
        let mut rejected_early: Vec<(usize, crate::decode::DecodeError)> = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let (key, value) = match resolved.map_or(&Resolved::Plain, |r| r[i]) {
                Resolved::Plain => (m.key(), m.payload()),
                Resolved::Converted { key, value } => (key.as_deref().or(m.key()), value.as_deref().or(m.payload())),
                Resolved::Rejected(e) => {
                    rejected_early.push((i, e.clone()));
                    continue;
                }
            };
            records.push(InputRecord { key, value, offset: m.offset() as u64 });
            index_of.push(i);
        }
        let ctx = self.consumer.context();
        let mut out = {
            let store = ctx.store.lock().expect("store lock");
            let clock = tasks.coordinator.clocks.entry(p).or_default();
            let out = self.engine.process(&CachedState { cache: &tasks.coordinator.cache, task: p, store: &store }, &task_name(p), &records, clock)?;
            // New due times go to the index at once, ahead of the states
            // that armed them (which wait in the cache): an entry whose
            // state is never committed is a stale hint.
            if !out.index.is_empty() {
                let mut batch = StateBatch::default();
                for e in &out.index {
                    batch.index(e);
                }
                store.commit(&task_name(p), batch)?;
            }
            out
        };
        tasks.coordinator.used(p, std::mem::take(&mut out.unindex));
        for (index, _) in out.events.iter_mut() {
            *index = index_of[*index];
        }
        for r in out.rejected.iter_mut() {
            r.index = index_of[r.index];
        }
        for (index, error) in rejected_early {
            out.counts.records += 1;
            out.counts.rejected += 1;
            out.rejected.push(crate::engine::Rejected { index, offset: msgs[index].offset() as u64, error });
        }
        Ok(out)
    }

    /// The task's events, kept for lookups of their reservations.
    fn remember_recent(&self, out: &BatchOutput) {
        if out.events.is_empty() {
            return;
        }
        let mut recent = self.consumer.context().recent.lock().expect("recent lock");
        for (_, e) in &out.events {
            recent.record(&e.reservation_id, recent::RecentEvent { event_type: e.event_type, event_id: e.event_id.clone(), occurred_at: e.occurred_at.clone(), source_position: e.source_position.clone() });
        }
    }

    /// After a rewound failure: a producer that failed for good is replaced
    /// (at-least-once), a store that hit an I/O error is reopened and every
    /// task restored again (without a WAL, reopening may lose its newest
    /// writes, which the changelog still has).
    fn recover(&mut self, fault: &Fault) -> anyhow::Result<()> {
        let ctx = self.consumer.context();
        let mut tasks = ctx.tasks.lock().expect("tasks lock");
        if let Fault::ProducerLost(e) = fault {
            if tasks.collector.is_transactional() {
                anyhow::bail!("{e:#}: another instance has taken over this transactional id, or the producer failed for good; stopping");
            }
            tokio::task::block_in_place(|| tasks.collector.renew())?;
            tracing::warn!("a new producer replaces the one that failed");
        }
        if matches!(fault, Fault::Disk(_)) {
            match ctx.store.lock().expect("store lock").reopen() {
                Ok(()) => tracing::info!(dir = %self.cfg.state_dir.display(), "state store reopened"),
                Err(e) => {
                    tracing::warn!(error = %e, "state store cannot be reopened yet");
                    return Ok(());
                }
            }
            // Every assigned task, ready or restoring: without a WAL the
            // reopened store may lack writes either of them counted on.
            tasks.ready.clear();
            let ready: Vec<i32> = tasks.assigned.keys().copied().collect();
            let mut pause = TopicPartitionList::new();
            for &p in &ready {
                tasks.coordinator.drop_task(p);
                for topic in tasks.assigned.get(&p).into_iter().flatten() {
                    let _ = pause.add_partition(topic, p);
                }
            }
            if pause.count() > 0 {
                self.consumer.pause(&pause)?;
            }
            for p in ready {
                ctx.restores.request(p);
            }
        }
        Ok(())
    }

    /// A restore finished: the task is ready, its partitions resume, and the
    /// records it held come back to be processed first.
    fn on_restored(&mut self, (p, epoch, result): RestoreResult) -> anyhow::Result<Vec<OwnedMessage>> {
        let ctx = self.consumer.context();
        if matches!(&result, Ok(r) if !r.complete) {
            return Ok(Vec::new()); // revoked; a new assignment queued a new restore
        }
        let mut tasks = ctx.tasks.lock().expect("tasks lock");
        // Only the restore wanted now counts: one requested before a revoke
        // (and a new assignment) may have read an older changelog end.
        if !ctx.restores.finish(p, epoch) || !tasks.assigned.contains_key(&p) {
            return Ok(Vec::new());
        }
        match result {
            Ok(r) => {
                // The restore wrote states without index entries: the index
                // is rebuilt when it did, or when it was built for other rows.
                if self.engine.pipeline.has_timers() {
                    let store = ctx.store.lock().expect("store lock");
                    if r.records > 0 {
                        store.forget_index(&task_name(p))?;
                    }
                    ensure_task_index(&store, p, &self.engine.pipeline)?;
                }
                tasks.ready.insert(p);
                let mut resume = TopicPartitionList::new();
                for topic in &tasks.assigned[&p] {
                    let _ = resume.add_partition(topic, p);
                }
                self.consumer.resume(&resume)?;
                tracing::info!(partition = p, records = r.records, rebuilt = r.rebuilt, "partition ready; processing resumed");
                Ok(tasks.held.remove(&p).unwrap_or_default())
            }
            Err(e) => anyhow::bail!("restoring partition {p}: {e:#}; stopping so the instance restarts cleanly"),
        }
    }

    fn log_progress(&mut self) {
        if self.last_log.elapsed() < Duration::from_secs(10) {
            return;
        }
        let secs = self.last_log.elapsed().as_secs_f64();
        let s = &self.since_log;
        tracing::info!(
            records = s.records,
            per_second = (s.records as f64 / secs) as u64,
            events = s.events,
            dead_letters = s.rejected,
            stale = s.stale,
            duplicates = s.duplicates,
            "progress"
        );
        self.last_log = Instant::now();
        self.since_log = Counts::default();
    }
}

/// Groups a batch's records (by index) by task, in input order within
/// each. A task still restoring holds its records; one no longer owned here
/// skips them (its next owner reads them).
fn group_by_task(tasks: &mut Tasks, batch: &[OwnedMessage]) -> BTreeMap<i32, Vec<usize>> {
    let mut by_task: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, m) in batch.iter().enumerate() {
        let p = m.partition();
        if tasks.ready.contains(&p) {
            by_task.entry(p).or_default().push(i);
        } else if tasks.assigned.contains_key(&p) {
            tasks.held.entry(p).or_default().push(m.clone());
        } else {
            tracing::debug!(topic = m.topic(), partition = p, offset = m.offset(), "record of a partition no longer owned; skipped");
        }
    }
    by_task
}

/// Every record's key and value through the registry, in batch order; the
/// first registry failure fails them all (the batch is retried).
async fn resolve_all(registry: &crate::registry::Registry, batch: &[OwnedMessage]) -> Result<Vec<Resolved>, RegistryError> {
    let mut all = Vec::with_capacity(batch.len());
    for m in batch {
        all.push(crate::registry::resolve(registry, m.key(), m.payload()).await?);
    }
    Ok(all)
}

/// What one batch did, for metrics and the summary.
#[derive(Default)]
struct BatchTally {
    counts: Counts,
    by_type: Vec<(&'static str, u64)>,
    by_kind: Vec<(&'static str, u64)>,
}

impl BatchTally {
    fn add(&mut self, out: &BatchOutput) {
        self.counts.add(&out.counts);
        for (_, event) in &out.events {
            match self.by_type.iter_mut().find(|(t, _)| *t == event.event_type) {
                Some((_, n)) => *n += 1,
                None => self.by_type.push((event.event_type, 1)),
            }
        }
        for r in &out.rejected {
            match self.by_kind.iter_mut().find(|(k, _)| *k == r.error.kind()) {
                Some((_, n)) => *n += 1,
                None => self.by_kind.push((r.error.kind(), 1)),
            }
        }
    }
}

/// One record a task's output sends.
enum Output<'a> {
    /// A business event to the business topic or a route.
    Event { topic: &'a str, reservation_id: &'a str, event_type: &'static str, payload: Vec<u8>, source_ms: Option<i64> },
    /// A rejected record, to its input's dead-letter topic.
    DeadLetter { topic: String, letter: crate::sink::deadletter::DeadLetter<'a> },
}

/// The records a task's output sends, in order: each business event to the
/// business topic and to every route that takes its type, then each
/// rejected record to its dead-letter topic. Pure: encoding only.
fn outputs<'a>(codec: &EventCodec, cfg: &'a RunConfig, routes: &'a [crate::pipeline::Route], msgs: &[&'a OwnedMessage], out: &'a BatchOutput) -> Result<Vec<Output<'a>>, Fault> {
    let mut records = Vec::with_capacity(out.events.len() + out.rejected.len());
    for (index, event) in &out.events {
        let encoded = codec.encode(event).map_err(|e| Fault::Fatal(anyhow::anyhow!("encoding a business event: {e}")))?;
        let payload = |topic: &str| codec.payload(&encoded, topic).map(std::borrow::Cow::into_owned).map_err(|e| Fault::Fatal(anyhow::anyhow!(e)));
        let source_ms = msgs[*index].timestamp().to_millis();
        records.push(Output::Event { topic: &cfg.output_topic, reservation_id: &event.reservation_id, event_type: event.event_type, payload: payload(&cfg.output_topic)?, source_ms });
        for route in routes.iter().filter(|r| r.events.iter().any(|t| t.name() == event.event_type)) {
            records.push(Output::Event { topic: &route.topic, reservation_id: &event.reservation_id, event_type: event.event_type, payload: payload(&route.topic)?, source_ms: None });
        }
    }
    for r in &out.rejected {
        let m = msgs[r.index];
        let topic = cfg.dead_letter_topic_for(m.topic());
        tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), kind = r.error.kind(), error = %r.error, dead_letter_topic = %topic, "record rejected; sent to the dead-letter topic");
        records.push(Output::DeadLetter { topic, letter: crate::sink::deadletter::build(m, &r.error) });
    }
    Ok(records)
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

/// Builds task `p`'s due-time index for `pipeline`'s timer rows if it was
/// built for others, and says so.
fn ensure_task_index(store: &StateStore, p: i32, pipeline: &crate::pipeline::Pipeline) -> Result<(), store::StoreError> {
    if let Some(n) = store.ensure_index(&task_name(p), pipeline)? {
        tracing::info!(partition = p, due_times = n, "timer index built for the pipeline's timer rows");
    }
    Ok(())
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
