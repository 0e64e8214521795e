//! The task manager: which tasks (input partitions) this instance owns,
//! which are ready, which still restore, and what the rebalance callbacks do
//! with them. Kafka Streams' `TaskManager`, with the consumer's context
//! ([`ServiceContext`]) as the place everything shared lives.
//!
//! Guarantee at a revocation: the interval is committed before the
//! partitions go (the next owner repeats nothing); if that commit fails, the
//! next owner reads the interval again from the committed offsets, with the
//! same eventIds (at-least-once).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};

use super::commit::Coordinator;
use super::commit_io::ServiceIo;
use super::restore::RestoreWorker;
use super::{metrics, recent};
use crate::sink::collector::RecordCollector;
use crate::state::store::{self, StateStore};
use crate::state::task_name;

/// What the loop and the rebalance callbacks share, behind
/// [`ServiceContext::tasks`]. The loop holds the lock while it processes a
/// batch and while it commits, in a blocking section, never across an
/// `.await` and never while it polls the consumer; the callbacks run only
/// inside a poll, so they never wait for it.
pub(super) struct TaskManager {
    /// The interval: cache, progress, clocks. Written by the loop (process,
    /// commit) and the revoke callback (commit, drop a task).
    pub(super) coordinator: Coordinator,
    /// Every output's producer. Written by the loop and the revoke callback's commit.
    pub(super) collector: RecordCollector,
    /// Tasks whose state is current and owned here: their records are
    /// processed. Written by the loop (restore done, recovery) and the revoke
    /// callback; read by the status page.
    pub(super) ready: BTreeSet<i32>,
    /// The input topics assigned here, per task (several input topics share
    /// a task). Written by the rebalance callbacks; read by the loop.
    pub(super) assigned: BTreeMap<i32, BTreeSet<String>>,
    /// Records of a task still restoring, fetched before its pause took
    /// hold; processed, in order, once it is ready. Written by the loop
    /// (batch grouping) and the revoke callback; taken when the restore ends.
    pub(super) held: BTreeMap<i32, Vec<OwnedMessage>>,
}

/// The consumer's context: what the loop, the rebalance callbacks, the
/// restore threads' results and the HTTP endpoint share.
///
/// Lock order, where two are held at once: `tasks` first, then `store` or
/// `recent` (never both of those, never the other way round).
pub(super) struct ServiceContext {
    /// See [`TaskManager`].
    pub(super) tasks: Mutex<TaskManager>,
    /// The RocksDB store. Written by the loop (index entries, commits) and
    /// the restore threads; read by the loop and lookups.
    pub(super) store: Arc<Mutex<StateStore>>,
    /// Restores in flight. Requested by the rebalance callbacks and the loop's
    /// recovery; finished by the loop.
    pub(super) restores: RestoreWorker,
    /// Prometheus metrics: written by everyone, read by /metrics.
    pub(super) metrics: Arc<metrics::Metrics>,
    /// The group has assigned partitions (possibly none) at least once.
    /// Written by the assign callback; read by /readyz.
    pub(super) joined: std::sync::atomic::AtomicBool,
    /// A broker was up at the last statistics report. Written by the
    /// statistics callback; read by /readyz.
    pub(super) broker_up: std::sync::atomic::AtomicBool,
    /// The last events of each reservation. Written by the loop; read by lookups.
    pub(super) recent: Mutex<recent::RecentEvents>,
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
        let mut io = ServiceIo::new(&mut tasks.collector, &self.store, consumer, true);
        let started = std::time::Instant::now();
        let committed = tasks.coordinator.commit(&mut io);
        self.metrics.paused(metrics::Pause::Revocation, started.elapsed().as_secs_f64());
        match committed {
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

/// Groups a batch's records (by index) by task, in input order within
/// each. A task still restoring holds its records; one no longer owned here
/// skips them (its next owner reads them).
pub(super) fn group_by_task(tasks: &mut TaskManager, batch: &[OwnedMessage]) -> BTreeMap<i32, Vec<usize>> {
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

/// Builds task `p`'s due-time index for `pipeline`'s timer rows if it was
/// built for others, and says so.
pub(super) fn ensure_task_index(store: &StateStore, p: i32, pipeline: &crate::pipeline::Pipeline) -> Result<(), store::StoreError> {
    if let Some(n) = store.ensure_index(&task_name(p), pipeline)? {
        tracing::info!(partition = p, due_times = n, "timer index built for the pipeline's timer rows");
    }
    Ok(())
}
