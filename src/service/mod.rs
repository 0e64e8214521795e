//! `resevent run`: the scaled consumer-group service.
//!
//! N instances share one consumer group. Partition N of the input is task N:
//! its state lives in the local RocksDB (column family `task/N`) and in
//! partition N of the compacted changelog topic. A newly assigned partition is
//! restored from the changelog before any of its records is processed (inside
//! the rebalance callback, so no record of it can arrive first).
//!
//! Delivery guarantee (at-least-once, deterministic event ids), per batch:
//! 1. compute everything (decode, table, events, new states) — no writes;
//! 2. produce business events and dead letters, await all acknowledgements;
//! 3. produce the changelog records, await all acknowledgements;
//! 4. commit state + changelog checkpoint + input offsets in one WriteBatch;
//! 5. commit the consumer offsets.
//!
//! A `kill -9` anywhere re-reads at most the uncommitted batch. Events are
//! acknowledged before the changelog that reflects them, so a state restored
//! from the changelog never hides an event that was not written: a change the
//! restored state already holds was emitted before. Repeats carry the same
//! eventId; consumers drop them by it.
//!
//! Exactly-once (`--guarantee exactly-once`): steps 2, 3 and the input offsets
//! are one Kafka transaction; step 4 follows its commit (a crash in between
//! leaves the local checkpoint behind the changelog, which restore catches up).
//!
//! Restore runs inside the rebalance callback, which blocks this consumer's
//! poll: a restore longer than `max.poll.interval.ms` (300 s by default) would
//! cost the instance its membership; raise it for very large partitions.

pub mod config;
pub mod fault;
pub mod latency;
pub mod passthrough;
pub mod restore;
mod topics;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::engine::{Counts, Engine, InputRecord};
use crate::store::{self, StateBatch, StateStore};
use config::{Guarantee, RunConfig};
use fault::{Backoff, Fault};
use restore::{CHANGELOG_NEXT, Restorer, task_name};

/// Timeout of transaction calls (exactly-once).
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished run did.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub counts: Counts,
    /// Input record timestamp → its batch's business events acknowledged.
    pub latency: latency::Latency,
    pub batches: u64,
    /// When the first and the last batch were done, for a busy-time rate.
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

    /// Records per second between the first and the last batch.
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

/// Collects the next batch: starts with `carried` (records received while a
/// batch was being retried) or else waits for a first record (or shutdown,
/// or `idle` without input), then takes what arrives within `wait`, up to
/// `max`. `None` = stop.
async fn next_batch<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    carried: Vec<OwnedMessage>,
    max: usize,
    wait: Duration,
    idle: Option<Duration>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<Vec<OwnedMessage>> {
    if !carried.is_empty() {
        return Some(fill_batch(consumer, carried, max, wait).await);
    }
    let idle_for = idle.unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let first = loop {
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            m = tokio::time::timeout(idle_for, consumer.recv()) => match m {
                Err(_) => {
                    tracing::info!(seconds = idle_for.as_secs(), "no input for the idle limit; stopping");
                    return None;
                }
                Ok(Ok(m)) => break m.detach(),
                Ok(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            }
        }
    };
    Some(fill_batch(consumer, vec![first], max, wait).await)
}

/// Adds what arrives within `wait` to `batch`, up to `max` records.
async fn fill_batch<C: ConsumerContext + 'static>(consumer: &StreamConsumer<C>, mut batch: Vec<OwnedMessage>, max: usize, wait: Duration) -> Vec<OwnedMessage> {
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => batch.push(m.detach()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

/// Rebalance handling: restore on assign, forget on revoke.
struct ServiceContext {
    restorer: Restorer,
    /// Tasks whose state is current and owned here.
    ready: Mutex<HashSet<i32>>,
    /// A restore that failed; the main loop stops the service with it.
    failure: Mutex<Option<String>>,
}

impl ServiceContext {
    /// A restore that failed in the rebalance callback stops the service here.
    fn check_restores(&self) -> anyhow::Result<()> {
        match self.failure.lock().expect("failure lock").take() {
            Some(f) => anyhow::bail!("{f}; stopping so the instance restarts cleanly"),
            None => Ok(()),
        }
    }
}

impl ClientContext for ServiceContext {}

impl ConsumerContext for ServiceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Batches complete before the next poll, so nothing is in flight:
            // the revoked tasks' state is committed and flushed already.
            let mut ready = self.ready.lock().expect("ready lock");
            for e in tpl.elements() {
                ready.remove(&e.partition());
            }
            tracing::info!(partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // librdkafka keeps a partition's pause across a rebalance: one
                // paused during a retry would never deliver again. A batch
                // still being retried runs first; what arrives meanwhile follows it.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "resuming newly assigned partitions");
                }
                let parts: std::collections::BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "partitions assigned");
                for p in parts {
                    if self.ready.lock().expect("ready lock").contains(&p) {
                        continue;
                    }
                    match self.restorer.restore(p) {
                        Ok(_) => {
                            self.ready.lock().expect("ready lock").insert(p);
                        }
                        Err(e) => {
                            tracing::error!(partition = p, error = %e, "restore failed");
                            *self.failure.lock().expect("failure lock") = Some(format!("restoring partition {p}: {e:#}"));
                        }
                    }
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

pub(crate) fn client_config(cfg: &RunConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    c
}

/// `base` with a settings map laid over it.
fn with_settings(base: &ClientConfig, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = base.clone();
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// The group consumer `run` and the passthrough share: the user's settings,
/// then manual offset handling (offsets advance only after a batch is done).
pub(crate) fn group_consumer_config(cfg: &RunConfig, group_id: &str) -> ClientConfig {
    let mut c = with_settings(&client_config(cfg), &cfg.consumer);
    c.set("group.id", group_id).set("enable.auto.commit", "false").set("enable.auto.offset.store", "false").set("auto.offset.reset", "earliest");
    c
}

/// The producer `run` and the passthrough share: idempotent (order kept per
/// partition across retries), acks=all, a short linger; the user's settings win.
pub(crate) fn producer_config(cfg: &RunConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
    // A dead letter carries the original record, however large it was.
    c.set("message.max.bytes", (topics::DEAD_LETTER_MAX_BYTES + (1 << 20)).to_string());
    with_settings(&c, &cfg.producer)
}

/// Runs the service until `shutdown` resolves; then finishes the batch in
/// hand, commits, leaves the group and returns.
pub async fn run(cfg: RunConfig, engine: Engine, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunSummary> {
    tracing::info!(config = %cfg.masked(), "resevent run starting");
    let base = client_config(&cfg);
    let routed: Vec<String> = engine.pipeline.routes.iter().map(|r| r.topic.clone()).collect();
    let partitions = topics::prepare(&cfg, &routed, &base).await?;
    tracing::info!(input = ?cfg.input_topics, partitions, changelog = %cfg.changelog_topic(), output = %cfg.output_topic, "topics ready");

    std::fs::create_dir_all(&cfg.state_dir)?;
    let store = Arc::new(Mutex::new(StateStore::open_with(&cfg.state_dir, store::StoreOptions { write_buffer_bytes: cfg.state_write_buffer_bytes })?));

    let mut restore_cfg = with_settings(&base, &cfg.consumer);
    // A short fetch wait: restore ends on the empty fetch at the partition's end.
    restore_cfg.set("enable.partition.eof", "true").set("fetch.wait.max.ms", "50").set("enable.auto.commit", "false").set("group.id", format!("{}-restore", cfg.application_id));
    // Only read_committed is safe for a changelog written transactionally.
    restore_cfg.set("isolation.level", "read_committed");
    // Changelog records are small (~100 bytes): librdkafka's 1 MB per
    // partition fetch is ~10,000 of them a round trip; take more at once.
    if !cfg.consumer.contains_key("max.partition.fetch.bytes") {
        restore_cfg.set("max.partition.fetch.bytes", (16 << 20).to_string());
    }
    let restorer = Restorer { store: store.clone(), changelog: cfg.changelog_topic(), consumer: restore_cfg.create_with_context(restore::RestoreContext)? };
    let context = ServiceContext { restorer, ready: Mutex::new(HashSet::new()), failure: Mutex::new(None) };

    let mut consumer_cfg = group_consumer_config(&cfg, &cfg.application_id);
    if !cfg.consumer.contains_key("partition.assignment.strategy") {
        // Several input topics must be co-partitioned (partition N of each on one
        // instance): the range assignor guarantees that; one topic can rebalance
        // incrementally.
        consumer_cfg.set("partition.assignment.strategy", if cfg.input_topics.len() > 1 { "range" } else { "cooperative-sticky" });
    }
    if cfg.processing_guarantee == Guarantee::ExactlyOnce {
        consumer_cfg.set("isolation.level", "read_committed");
    }
    let consumer: StreamConsumer<ServiceContext> = consumer_cfg.create_with_context(context)?;
    let mut producer_cfg = producer_config(&cfg);
    if cfg.processing_guarantee == Guarantee::ExactlyOnce {
        // Stable across restarts of this instance (same state dir), so a new
        // incarnation's init_transactions aborts what a killed one left open
        // instead of read_committed consumers waiting out its timeout.
        producer_cfg.set("transactional.id", format!("{}-{}", cfg.application_id, instance_id(&cfg.state_dir)?));
    }
    let mut producer: FutureProducer = producer_cfg.create()?;
    if cfg.processing_guarantee == Guarantee::ExactlyOnce {
        tokio::task::block_in_place(|| {
            use rdkafka::producer::Producer;
            producer.init_transactions(TXN_TIMEOUT)
        })
        .map_err(|e| anyhow::anyhow!("exactly-once needs a broker with transactions: {e}"))?;
        tracing::info!("exactly-once: transactional producer ready");
    }

    let topics: Vec<&str> = cfg.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;

    let mut summary = RunSummary::default();
    let mut last_log = Instant::now();
    let mut since_log = Counts::default();
    let idle = cfg.idle_exit_secs.map(Duration::from_secs);
    let mut retry = Retry {
        backoff: Backoff::new(Duration::from_millis(cfg.retry_initial_backoff_ms), Duration::from_millis(cfg.retry_max_backoff_ms)),
        max_attempts: cfg.retry_max_attempts,
        carried: Vec::new(),
    };
    tokio::pin!(shutdown);
    while let Some(batch) = next_batch(&consumer, std::mem::take(&mut retry.carried), cfg.max_batch_records, Duration::from_millis(cfg.batch_wait_ms), idle, &mut shutdown).await {
        consumer.context().check_restores()?;
        let Some(counts) = process_with_retry(&cfg, &engine, &store, &consumer, (&mut producer, &producer_cfg), &batch, &mut summary.latency, &mut retry, &mut shutdown).await? else {
            tracing::info!("stopped while retrying a batch; it is read again at the next start");
            break;
        };
        summary.record_batch(&counts);
        since_log.add(&counts);
        if last_log.elapsed() >= Duration::from_secs(10) {
            let secs = last_log.elapsed().as_secs_f64();
            tracing::info!(
                records = since_log.records,
                per_second = (since_log.records as f64 / secs) as u64,
                events = since_log.events,
                dead_letters = since_log.rejected,
                stale = since_log.stale,
                duplicates = since_log.duplicates,
                "progress"
            );
            last_log = Instant::now();
            since_log = Counts::default();
        }
    }
    consumer.context().check_restores()?;

    tracing::info!("shutting down: committing offsets and leaving the group");
    // At-least-once committed after every batch already, this narrows nothing but
    // the async window; exactly-once commits offsets only inside transactions.
    if cfg.processing_guarantee == Guarantee::AtLeastOnce {
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit");
        }
    }
    producer_flush(&producer);
    consumer.unsubscribe();
    drop(consumer);
    tracing::info!(records = summary.counts.records, events = summary.counts.events, dead_letters = summary.counts.rejected, "stopped");
    Ok(summary)
}

fn producer_flush(producer: &FutureProducer) {
    use rdkafka::producer::Producer;
    if let Err(e) = producer.flush(Duration::from_secs(30)) {
        tracing::warn!(error = %e, "producer flush at shutdown");
    }
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

/// Sends a record, waiting for queue space when the producer is full.
pub(crate) async fn send(producer: &FutureProducer, mut record: FutureRecord<'_, [u8], [u8]>) -> Result<DeliveryFuture, Fault> {
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, r)) => return Err(Fault::kafka(e, &format!("producing to {}", r.topic))),
        }
    }
}

/// Awaits acknowledgements; returns the highest offset per partition.
pub(crate) async fn acknowledged(futures: Vec<DeliveryFuture>, what: &str) -> Result<BTreeMap<i32, i64>, Fault> {
    let mut last = BTreeMap::new();
    for f in futures {
        match f.await {
            Ok(Ok(d)) => {
                let e = last.entry(d.partition).or_insert(d.offset);
                *e = (*e).max(d.offset);
            }
            Ok(Err((e, _))) => return Err(Fault::kafka(e, &format!("{what} not acknowledged"))),
            Err(_) => return Err(Fault::Broker(anyhow::anyhow!("{what}: the producer dropped the delivery report"))),
        }
    }
    Ok(last)
}

/// The batch's events are acknowledged now: each record's latency is now
/// minus its timestamp (producer create time, or broker append time).
pub(crate) fn record_latency(latency: &mut latency::Latency, batch: &[OwnedMessage]) {
    let now = crate::time::now_millis();
    for m in batch {
        if let Some(ts) = m.timestamp().to_millis() {
            latency.record(now - ts);
        }
    }
}

/// How transient failures are retried, and what arrived meanwhile.
struct Retry {
    backoff: Backoff,
    max_attempts: u32,
    /// Records received while the input was paused (fetched before the
    /// pause); they follow the retried batch, so they start the next one.
    carried: Vec<OwnedMessage>,
}

/// Processes a batch; on a transient failure pauses the whole input (a
/// reservation's changes must apply in order, so nothing may overtake the
/// failed batch), waits with backoff while still serving the group, and
/// retries the same records until they go through. `None`: shutdown came
/// first; the batch was not committed and is read again at the next start.
#[allow(clippy::too_many_arguments)]
async fn process_with_retry(
    cfg: &RunConfig,
    engine: &Engine,
    store: &Arc<Mutex<StateStore>>,
    consumer: &StreamConsumer<ServiceContext>,
    (producer, producer_cfg): (&mut FutureProducer, &ClientConfig),
    batch: &[OwnedMessage],
    latency: &mut latency::Latency,
    retry: &mut Retry,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<Option<Counts>> {
    let mut attempt = 0u32;
    let mut paused = false;
    let first_failure = Instant::now();
    loop {
        let fault = match process_batch(cfg, engine, store, consumer, producer, batch, latency).await {
            Ok(counts) => {
                if paused {
                    let assignment = consumer.assignment()?;
                    consumer.resume(&assignment)?;
                    tracing::info!(attempts = attempt + 1, seconds = first_failure.elapsed().as_secs(), "batch went through; input resumed");
                }
                return Ok(Some(counts));
            }
            Err(f) if f.is_transient() => f,
            Err(f) => return Err(anyhow::Error::new(f).context("a failure retrying cannot fix")),
        };
        attempt += 1;
        if retry.max_attempts > 0 && attempt >= retry.max_attempts {
            anyhow::bail!("{fault}; gave up after {attempt} attempts (retry_max_attempts); the batch is read again at the next start");
        }
        if !paused {
            consumer.pause(&consumer.assignment()?)?;
            paused = true;
        }
        let wait = retry.backoff.delay(attempt);
        tracing::warn!(attempt, retry_in_ms = wait.as_millis() as u64, records = batch.len(), error = %fault, "transient failure: input paused, the same batch is retried");
        // Serve the consumer while waiting (rebalance callbacks, the poll
        // interval); keep whatever it still delivers, in order.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => return Ok(None),
                m = tokio::time::timeout_at(deadline, consumer.recv()) => match m {
                    Err(_) => break,
                    Ok(Ok(m)) => retry.carried.push(m.detach()),
                    Ok(Err(e)) => tracing::debug!(error = %e, "consumer error while paused"),
                }
            }
        }
        consumer.context().check_restores()?;
        if let Fault::ProducerLost(e) = &fault {
            if cfg.processing_guarantee == Guarantee::ExactlyOnce {
                anyhow::bail!("{e:#}: another instance has taken over this transactional id, or the producer failed for good; stopping");
            }
            // Whatever the old one did not get acknowledged is sent again with the batch.
            *producer = producer_cfg.create()?;
            tracing::warn!("a new producer replaces the one that failed");
        }
        if matches!(fault, Fault::Disk(_)) {
            // RocksDB refuses writes after an I/O error until reopened.
            match store.lock().expect("store lock").reopen() {
                Ok(()) => tracing::info!(dir = %cfg.state_dir.display(), "state store reopened"),
                Err(e) => tracing::warn!(error = %e, "state store cannot be reopened yet"),
            }
        }
    }
}

/// One batch, at-least-once (or exactly-once) as the module header says.
/// Permanent record failures become dead letters inside; what fails here is
/// the batch's I/O, and nothing of the batch is committed then.
async fn process_batch(
    cfg: &RunConfig,
    engine: &Engine,
    store: &Arc<Mutex<StateStore>>,
    consumer: &StreamConsumer<ServiceContext>,
    producer: &FutureProducer,
    batch: &[OwnedMessage],
    latency: &mut latency::Latency,
) -> Result<Counts, Fault> {
    let ready = consumer.context().ready.lock().expect("ready lock").clone();
    // Group by task (partition number), keeping input order within each.
    let mut by_task: BTreeMap<i32, Vec<&OwnedMessage>> = BTreeMap::new();
    for m in batch {
        if ready.contains(&m.partition()) {
            by_task.entry(m.partition()).or_default().push(m);
        } else {
            // Only possible for a partition revoked while its records were queued.
            tracing::debug!(topic = m.topic(), partition = m.partition(), offset = m.offset(), "record of a partition no longer owned; skipped");
        }
    }

    // 1. Compute everything; nothing is written yet.
    let mut counts = Counts::default();
    let mut outputs = Vec::new();
    {
        let store = store.lock().expect("store lock");
        for (&p, msgs) in &by_task {
            let records: Vec<InputRecord> = msgs.iter().map(|m| InputRecord { key: m.key(), value: m.payload(), offset: m.offset() as u64 }).collect();
            let out = engine.process(&store, &task_name(p), &records)?;
            counts.add(&out.counts);
            outputs.push((p, out));
        }
    }
    let exactly_once = cfg.processing_guarantee == Guarantee::ExactlyOnce;
    if exactly_once {
        tokio::task::block_in_place(|| {
            use rdkafka::producer::Producer;
            producer.begin_transaction()
        })
        .map_err(|e| Fault::kafka(e, "beginning a transaction"))?;
        if let Err(failed) = deliver(cfg, engine, store, consumer, producer, &by_task, &outputs, batch, latency).await {
            // Nothing of an aborted transaction is visible to read_committed
            // consumers; the retry starts a new one.
            let aborted = tokio::task::block_in_place(|| {
                use rdkafka::producer::Producer;
                producer.abort_transaction(TXN_TIMEOUT)
            });
            return Err(match aborted {
                Ok(()) => failed,
                Err(e) => Fault::Fatal(anyhow::anyhow!("{failed}; and aborting the transaction failed too: {e}")),
            });
        }
    } else {
        deliver(cfg, engine, store, consumer, producer, &by_task, &outputs, batch, latency).await?;
    }
    Ok(counts)
}

/// A dead letter for `m`: its key, value and headers unchanged, plus the
/// reason and where it came from (the header names are `crate::deadletter`'s).
fn dead_letter<'a>(m: &'a OwnedMessage, topic: &'a str, error: &crate::decode::DecodeError) -> FutureRecord<'a, [u8], [u8]> {
    use crate::deadletter as dl;
    let mut headers = OwnedHeaders::new();
    if let Some(h) = m.headers() {
        use rdkafka::message::Headers;
        for h in h.iter() {
            headers = headers.insert(Header { key: h.key, value: h.value });
        }
    }
    // Header values are copied in, so temporaries serve.
    headers = headers
        .insert(Header { key: dl::KIND, value: Some(error.kind()) })
        .insert(Header { key: dl::MESSAGE, value: Some(&error.to_string()) })
        .insert(Header { key: dl::ORIGINAL_TOPIC, value: Some(m.topic()) })
        .insert(Header { key: dl::ORIGINAL_PARTITION, value: Some(&m.partition().to_string()) })
        .insert(Header { key: dl::ORIGINAL_OFFSET, value: Some(&m.offset().to_string()) });
    if let Some(timestamp) = m.timestamp().to_millis() {
        headers = headers.insert(Header { key: dl::ORIGINAL_TIMESTAMP, value: Some(&timestamp.to_string()) });
    }
    headers = headers
        .insert(Header { key: dl::VERSION, value: Some(env!("CARGO_PKG_VERSION")) })
        .insert(Header { key: dl::TIME, value: Some(&crate::time::format_millis(crate::time::now_millis())) });
    let value = m.payload();
    let omitted = value.filter(|v| v.len() > dl::DEAD_LETTER_MAX_VALUE_BYTES).map(|v| format!("{} bytes, over the dead-letter limit of {}; read it from the original topic at the offset above", v.len(), dl::DEAD_LETTER_MAX_VALUE_BYTES));
    if let Some(why) = &omitted {
        headers = headers.insert(Header { key: dl::VALUE_OMITTED, value: Some(why.as_str()) });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(m.partition()).headers(headers);
    if let Some(k) = m.key() {
        record = record.key(k);
    }
    if let Some(v) = value.filter(|_| omitted.is_none()) {
        record = record.payload(v);
    }
    record
}

/// Steps 2–5 of the module header for a computed batch.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    cfg: &RunConfig,
    engine: &Engine,
    store: &Arc<Mutex<StateStore>>,
    consumer: &StreamConsumer<ServiceContext>,
    producer: &FutureProducer,
    by_task: &BTreeMap<i32, Vec<&OwnedMessage>>,
    outputs: &[(i32, crate::engine::BatchOutput)],
    batch: &[OwnedMessage],
    latency: &mut latency::Latency,
) -> Result<(), Fault> {
    let exactly_once = cfg.processing_guarantee == Guarantee::ExactlyOnce;
    // 2. Business events and dead letters, acknowledged first.
    let mut futures = Vec::new();
    for (p, out) in outputs {
        let msgs = &by_task[p];
        for (_, event) in &out.events {
            let payload = serde_json::to_vec(event).map_err(|e| Fault::Fatal(e.into()))?;
            let headers = OwnedHeaders::new().insert(Header { key: "eventType", value: Some(event.event_type) });
            let record = FutureRecord::to(&cfg.output_topic).key(event.reservation_id.as_bytes()).payload(&payload[..]).headers(headers.clone());
            futures.push(send(producer, record).await?);
            for route in engine.pipeline.routes.iter().filter(|r| r.events.iter().any(|t| t.name() == event.event_type)) {
                let record = FutureRecord::to(&route.topic).key(event.reservation_id.as_bytes()).payload(&payload[..]).headers(headers.clone());
                futures.push(send(producer, record).await?);
            }
        }
        for r in &out.rejected {
            let m = msgs[r.index];
            let dlt = cfg.dead_letter_topic_for(m.topic());
            tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), kind = r.error.kind(), error = %r.error, dead_letter_topic = %dlt, "record rejected; sent to the dead-letter topic");
            futures.push(send(producer, dead_letter(m, &dlt, &r.error)).await?);
        }
    }
    let mut event_futures = Some(futures);
    if !exactly_once {
        acknowledged(event_futures.take().unwrap_or_default(), "business event or dead letter").await?;
        record_latency(latency, batch);
    }

    // 3. Changelog, acknowledged before the state that depends on it.
    let changelog = cfg.changelog_topic();
    let mut futures = Vec::new();
    // Encoded once: the same bytes go to the changelog and into the WriteBatch.
    let mut encoded: BTreeMap<i32, Vec<(&str, Vec<u8>)>> = BTreeMap::new();
    for (p, out) in outputs {
        encoded.insert(*p, out.states.iter().map(|(id, state)| (id.as_str(), store::encode(state))).collect());
    }
    for (p, records) in &encoded {
        for (id, value) in records {
            futures.push(send(producer, FutureRecord::to(&changelog).partition(*p).key(id.as_bytes()).payload(&value[..])).await?);
        }
    }
    let mut commit = TopicPartitionList::new();
    let mut next_offsets: BTreeMap<i32, BTreeMap<&str, i64>> = BTreeMap::new();
    for (p, _) in outputs {
        let next_by_topic = next_offsets.entry(*p).or_default();
        for m in &by_task[p] {
            let e = next_by_topic.entry(m.topic()).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        for (topic, next) in next_by_topic.iter() {
            commit.add_partition_offset(topic, *p, Offset::Offset(*next)).map_err(|e| Fault::Fatal(e.into()))?;
        }
    }
    if exactly_once {
        // Events, dead letters, changelog and input offsets commit together or
        // not at all; read_committed consumers never see an aborted batch.
        let group = consumer.group_metadata().ok_or_else(|| Fault::Fatal(anyhow::anyhow!("no consumer group metadata for the transaction")))?;
        tokio::task::block_in_place(|| {
            use rdkafka::producer::Producer;
            producer.send_offsets_to_transaction(&commit, &group, TXN_TIMEOUT)?;
            producer.commit_transaction(TXN_TIMEOUT)
        })
        .map_err(|e| Fault::kafka(e, "committing the transaction"))?;
        acknowledged(event_futures.take().unwrap_or_default(), "business event or dead letter").await?;
        record_latency(latency, batch);
    }
    let changelog_last = acknowledged(futures, "changelog record").await?;

    // 4. State with its checkpoint and input offsets, one WriteBatch per task.
    {
        let store = store.lock().expect("store lock");
        for (p, records) in encoded {
            let mut sb = StateBatch::default();
            for (id, value) in records {
                sb.put_encoded(id.as_bytes(), Some(value));
            }
            if let Some(last) = changelog_last.get(&p) {
                // In a transaction the commit marker follows the last record.
                sb.mark(CHANGELOG_NEXT, (*last + 1) as u64);
            }
            for (topic, next) in &next_offsets[&p] {
                sb.mark(&format!("input-offset/{topic}"), *next as u64);
            }
            if !sb.is_empty() {
                store.commit(&task_name(p), sb)?;
            }
        }
    }
    // 5. Consumer offsets (at-least-once; exactly-once sent them in the transaction).
    if !exactly_once && commit.count() > 0 {
        if let Err(e) = consumer.commit(&commit, CommitMode::Async) {
            tracing::warn!(error = %e, "offset commit failed; the next commit covers it");
        }
    }
    Ok(())
}
