//! The stream thread: the poll loop. It takes batches from the consumer (or
//! a restored task's held records first), hands each task its records
//! ([`super::task`]), commits on the interval, reloads the pipeline, and
//! recovers from a failure by rewinding the interval. Kafka Streams'
//! `StreamThread`, one per instance.
//!
//! No lock guard is held across an `.await`: processing and commits run under
//! the task manager's lock inside `block_in_place`, and the registry is asked
//! before that lock is taken.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};

use super::commit::Committed;
use super::commit_io::ServiceIo;
use super::config::RunConfig;
use super::metrics::Pause;
use super::restore::RestoreResult;
use super::task_manager::{ServiceContext, TaskManager, ensure_task_index, group_by_task};
use super::{RunSummary, input, recent, reload, task};
use crate::engine::{BatchOutput, Counts, Engine};
use crate::fault::{Backoff, Fault};
use crate::registry::{RegistryError, Resolved};
use crate::state::store::{self, StateBatch};
use crate::state::task_name;

/// The longest the loop waits for input before it looks again (reload, idle exit).
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// The processing loop and what it keeps between iterations.
pub(super) struct StreamThread<'a> {
    pub(super) cfg: &'a RunConfig,
    /// Replaced whole when the pipeline file is re-read.
    pub(super) engine: Engine,
    pub(super) watch: reload::PipelineWatch,
    pub(super) consumer: &'a StreamConsumer<ServiceContext>,
    /// How business events are written (JSON, or Avro with registered ids).
    pub(super) codec: crate::sink::codec::EventCodec,
    /// Resolves Avro-framed input; none = no registry configured.
    pub(super) registry: Option<Arc<crate::registry::Registry>>,
    pub(super) summary: RunSummary,
    pub(super) since_log: Counts,
    pub(super) last_log: Instant,
    /// Names the row that fired an event, for lookups; re-read with the pipeline.
    pub(super) rows: crate::pipeline::RowLocator,
    /// Woken by the producer when the committing interval's records are
    /// acknowledged (or one failed): the commit's next step is due.
    pub(super) acks: Arc<tokio::sync::Notify>,
}

impl StreamThread<'_> {
    pub(super) async fn run_loop(&mut self, shutdown: impl Future<Output = ()>, restored: &mut tokio::sync::mpsc::UnboundedReceiver<RestoreResult>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let idle = self.cfg.idle_exit_secs.map(Duration::from_secs);
        let mut last_input = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(self.cfg.retry_initial_backoff_ms), Duration::from_millis(self.cfg.retry_max_backoff_ms));
        let mut failures = 0u32;
        // Records to process before anything new: a restored task's held records.
        let mut released: Vec<OwnedMessage> = Vec::new();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        loop {
            if self.watch.changed_on_disk() {
                self.reload("the pipeline file changed");
            }
            while let Ok(done) = restored.try_recv() {
                released.extend(self.hand_over(done)?);
            }
            let batch = if !released.is_empty() {
                std::mem::take(&mut released)
            } else {
                let wait = self.until_due();
                tokio::select! {
                    _ = shutdown.as_mut() => return Ok(()),
                    _ = hangup.recv() => {
                        self.reload("SIGHUP");
                        continue;
                    }
                    done = restored.recv() => {
                        if let Some(done) = done {
                            released.extend(self.hand_over(done)?);
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
                    _ = self.acks.notified() => Vec::new(),
                    _ = tokio::time::sleep(wait) => Vec::new(),
                }
            };
            let mut result = if batch.is_empty() { Ok(()) } else { self.process(&batch).await };
            // On the interval (or the cache bound) only: committing early
            // when the input looked quiet cut the drain rate from ~70k to
            // ~54k records/s on Tansu (scripts/bench, side by side), for a
            // reason not yet found.
            if result.is_ok() {
                result = self.step_commit();
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
                    released.clear();
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
                if last_input.elapsed() >= idle && released.is_empty() {
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
                self.rows = crate::pipeline::RowLocator::new(self.watch.path());
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

    /// How long the loop may wait for input: until the interval is due, or
    /// the poll's bound while a commit's acknowledgements (which wake it) are awaited.
    fn until_due(&self) -> Duration {
        let due = self.consumer.context().tasks.lock().expect("tasks lock").coordinator.until_due(Instant::now());
        due.unwrap_or(IDLE_WAIT).min(IDLE_WAIT)
    }

    /// The commit's part of one turn of the loop ([`super::commit::Coordinator::step`]).
    fn step_commit(&mut self) -> Result<(), Fault> {
        let ctx = self.consumer.context();
        let mut guard = ctx.tasks.lock().expect("tasks lock");
        let tasks = &mut *guard;
        let mut io = ServiceIo::new(&mut tasks.collector, &ctx.store, self.consumer, false);
        let step = tokio::task::block_in_place(|| tasks.coordinator.step(&mut io, Instant::now()))?;
        drop(guard);
        if let Some(waited) = step.waited {
            ctx.metrics.paused(Pause::CacheFull, waited.as_secs_f64());
        }
        for done in step.committed {
            self.committed(done)?;
        }
        Ok(())
    }

    /// Commits everything processed, waiting for it (the coordinator
    /// rewinds it on failure): at shutdown and before the timer index is
    /// rebuilt.
    pub(super) fn commit(&mut self, sync_offsets: bool) -> Result<Option<Committed>, Fault> {
        let ctx = self.consumer.context();
        let mut guard = ctx.tasks.lock().expect("tasks lock");
        let tasks = &mut *guard;
        let mut io = ServiceIo::new(&mut tasks.collector, &ctx.store, self.consumer, sync_offsets);
        let done = tokio::task::block_in_place(|| tasks.coordinator.commit(&mut io))?;
        drop(guard);
        if let Some(done) = done {
            self.committed(done)?;
        }
        Ok(done)
    }

    /// After a commit: the index entries the committed intervals used up are
    /// deleted (a crash before this write leaves them as hints the state
    /// finds stale), and the commit is counted and logged.
    fn committed(&mut self, done: Committed) -> Result<(), Fault> {
        let ctx = self.consumer.context();
        {
            let mut tasks = ctx.tasks.lock().expect("tasks lock");
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
        }
        self.summary.acknowledged();
        ctx.metrics.committed(done.took.as_secs_f64());
        ctx.metrics.paused(Pause::Commit, done.paused.as_secs_f64());
        let (live, stalled) = ctx.store.lock().expect("store lock").health();
        ctx.metrics.store(live, stalled);
        tracing::debug!(states = done.states, partitions = done.partitions, took_ms = done.took.as_millis() as u64, paused_ms = done.paused.as_millis() as u64, "committed");
        Ok(())
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

    /// [`StreamThread::process`] under the tasks' lock: each ready task's records
    /// through the engine, their outputs sent, their states cached.
    fn process_locked(&self, tasks: &mut TaskManager, batch: &[OwnedMessage], resolved: Option<Result<Vec<Resolved>, RegistryError>>) -> Result<task::BatchTally, Fault> {
        let grouped = group_by_task(tasks, batch);
        let result = (|| {
            // A registry that could not be reached fails the batch before
            // anything of it is applied (the interval is retried, its records held).
            let resolved = resolved.transpose()?;
            let mut tally = task::BatchTally::default();
            for (&p, members) in &grouped {
                let msgs: Vec<&OwnedMessage> = members.iter().map(|&i| &batch[i]).collect();
                let resolutions: Option<Vec<&Resolved>> = resolved.as_ref().map(|all| members.iter().map(|&i| &all[i]).collect());
                let out = task::run(&self.engine, &self.consumer.context().store, tasks, p, &msgs, resolutions.as_deref())?;
                tally.add(&out);
                self.remember_recent(&out);
                for output in task::outputs(&self.codec, self.cfg, &self.engine.pipeline.routes, &msgs, &out)? {
                    match output {
                        task::Output::Event { topic, reservation_id, event_type, payload, source_ms } => tasks.collector.send_event(topic, reservation_id, event_type, &payload, source_ms)?,
                        task::Output::DeadLetter { topic, letter } => tasks.collector.send_dead_letter(&topic, letter)?,
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
            Ok::<task::BatchTally, Fault>(tally)
        })();
        result.map_err(|fault| {
            // Part of the interval is in the cache and on its way out: give
            // it up as a failed commit does, this batch's records included.
            for m in grouped.values().flatten().map(|&i| &batch[i]) {
                tasks.coordinator.progress.record(m.topic(), m.partition(), m.offset());
            }
            let ctx = self.consumer.context();
            let mut io = ServiceIo::new(&mut tasks.collector, &ctx.store, self.consumer, false);
            tasks.coordinator.abandon(&mut io, fault)
        })
    }

    /// The task's events, kept for lookups of their reservations.
    fn remember_recent(&self, out: &BatchOutput) {
        if out.events.is_empty() {
            return;
        }
        let mut recent = self.consumer.context().recent.lock().expect("recent lock");
        for (_, e) in &out.events {
            let fired_by = e.fired_by.map(|f| self.rows.locate(f));
            recent.record(&e.reservation_id, recent::RecentEvent { event_type: e.event_type, event_id: e.event_id.clone(), occurred_at: e.occurred_at.clone(), source_position: e.source_position.clone(), fired_by });
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

    /// [`Self::on_restored`], timed as a pause of the loop.
    fn hand_over(&mut self, done: RestoreResult) -> anyhow::Result<Vec<OwnedMessage>> {
        let started = Instant::now();
        let released = self.on_restored(done);
        self.consumer.context().metrics.paused(Pause::Restore, started.elapsed().as_secs_f64());
        released
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

/// Every record's key and value through the registry, in batch order; the
/// first registry failure fails them all (the batch is retried).
async fn resolve_all(registry: &crate::registry::Registry, batch: &[OwnedMessage]) -> Result<Vec<Resolved>, RegistryError> {
    let mut all = Vec::with_capacity(batch.len());
    for m in batch {
        all.push(crate::registry::resolve(registry, m.key(), m.payload()).await?);
    }
    Ok(all)
}
