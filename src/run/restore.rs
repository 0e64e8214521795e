//! Restoring a task's state from its changelog partition when the partition
//! is assigned to this instance: beside processing, on a thread of its own
//! ([`RestoreWorker`]), like Kafka Streams' state updater. The newly assigned
//! input partition stays paused until its state is current; the consumer
//! keeps polling and the other partitions keep flowing, so a restore longer
//! than `max.poll.interval.ms` costs no membership. A partition revoked
//! while restoring stops its restore at the next poll.
//!
//! The local state of task N carries `changelog-next`: the changelog offset
//! up to which it is complete, written in the same WriteBatch as the state.
//! If that checkpoint lies within the changelog's current offsets, only the
//! tail is read (another instance may have written it meanwhile); otherwise
//! (no state, a lost disk, a recreated changelog) the task's state is wiped
//! and rebuilt from the start. Restoration ends at partition EOF once the
//! fetch position has reached the end offset captured when it began — never
//! by waiting for a record at end-1, which compaction or transaction markers
//! may have removed. (The end offset is a lower bound only: Tansu 0.6 reports
//! the last batch's base offset + 1 from ListOffsets, so the checkpoint is the
//! position at EOF, which the fetch response gets right on every broker.)

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::EndOfPartition;
use crate::state::record;
use crate::state::store::{StateBatch, StateStore};
use crate::state::task_name;

/// The store marker holding the next changelog offset a task's state lacks.
pub const CHANGELOG_NEXT: &str = "changelog-next";
/// Records per WriteBatch while restoring.
const RESTORE_BATCH: usize = 20_000;
/// How long a restore may see no progress before it gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// What a restore did, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub records: u64,
    /// Whether the local state was wiped first.
    pub rebuilt: bool,
    /// False when the restore stopped early because the partition was revoked.
    pub complete: bool,
}

pub struct Restorer {
    pub store: Arc<Mutex<StateStore>>,
    pub changelog: String,
    /// An assign-only consumer (no group), `enable.partition.eof=true`.
    pub consumer: BaseConsumer<EndOfPartition>,
    /// Restore progress for /metrics, updated per WriteBatch.
    pub metrics: Option<Arc<super::metrics::Metrics>>,
}


impl Restorer {
    /// Brings task `partition`'s local state up to the changelog's current
    /// end, unless `wanted` turns false first (the partition was revoked).
    pub fn restore(&self, partition: i32, wanted: &dyn Fn() -> bool) -> anyhow::Result<Restored> {
        let name = task_name(partition);
        let (low, high) = self.watermarks(partition)?;
        let high = self.end_offset(partition, low, high);
        let (start, rebuilt) = self.start_point(partition, &name, low, high)?;
        if start >= high {
            if rebuilt {
                let mut batch = StateBatch::default();
                batch.mark(CHANGELOG_NEXT, high);
                self.store.lock().expect("store lock").commit(&name, batch)?;
            }
            tracing::info!(partition, changelog_end = high, "state is current");
            return Ok(Restored { records: 0, rebuilt, complete: true });
        }

        tracing::info!(partition, from = start, to = high, rebuilt, "restoring state from the changelog");
        if let Some(m) = &self.metrics {
            m.restore_progress(partition, high - start, 0);
        }
        let started = Instant::now();
        let Some((records, next, batch)) = self.read_changelog(partition, &name, start, high, wanted)? else {
            return Ok(Restored { records: 0, rebuilt, complete: false });
        };
        self.write(partition, &name, batch, next, 0)?;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        tracing::info!(partition, records, seconds = format!("{secs:.2}"), per_second = (records as f64 / secs) as u64, "restored");
        Ok(Restored { records, rebuilt, complete: true })
    }

    /// Writes a batch of restored states with its checkpoint (the changelog
    /// offset after them) in one WriteBatch, and reports the progress.
    fn write(&self, partition: i32, name: &str, mut batch: StateBatch, next: u64, remaining: u64) -> anyhow::Result<()> {
        batch.mark(CHANGELOG_NEXT, next);
        let n = batch.reservations as u64;
        self.store.lock().expect("store lock").commit(name, batch)?;
        if let Some(m) = &self.metrics {
            m.restore_progress(partition, remaining, n);
        }
        Ok(())
    }

    /// The changelog partition's low and high watermarks. The broker may be
    /// coming back from an outage: asks again until the stall limit.
    fn watermarks(&self, partition: i32) -> anyhow::Result<(u64, u64)> {
        let asked = Instant::now();
        loop {
            match self.consumer.fetch_watermarks(&self.changelog, partition, Duration::from_secs(10)) {
                Ok((low, high)) => return Ok((low.max(0) as u64, high.max(0) as u64)),
                Err(e) if asked.elapsed() < STALL_LIMIT => tracing::warn!(partition, error = %e, "cannot read changelog offsets yet; retrying"),
                Err(e) => anyhow::bail!("cannot read offsets of changelog {}/{partition} for {}s: {e}", self.changelog, STALL_LIMIT.as_secs()),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Where the restore starts: the local checkpoint when it lies within
    /// the changelog, else the changelog's start over a wiped partition.
    /// Returns (start offset, whether the local state was wiped).
    fn start_point(&self, partition: i32, name: &str, low: u64, high: u64) -> anyhow::Result<(u64, bool)> {
        let mut store = self.store.lock().expect("store lock");
        store.open_partition(name)?;
        match store.marker(name, CHANGELOG_NEXT)? {
            Some(next) if (low..=high).contains(&next) => Ok((next, false)),
            other => {
                if let Some(next) = other {
                    tracing::warn!(partition, checkpoint = next, low, high, "local state does not fit the changelog; wiping it and rebuilding from the changelog");
                }
                store.drop_partition(name)?;
                store.open_partition(name)?;
                Ok((low, true))
            }
        }
    }

    /// Reads the changelog from `start` to `high` into the store, a
    /// WriteBatch (with its checkpoint) every `RESTORE_BATCH` reservations.
    /// Returns the records read, the next offset and the last, unwritten
    /// batch; `None` when `wanted` turned false (revoked).
    fn read_changelog(&self, partition: i32, name: &str, start: u64, high: u64, wanted: &dyn Fn() -> bool) -> anyhow::Result<Option<(u64, u64, StateBatch)>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.changelog, partition, Offset::Offset(start as i64))?;
        self.consumer.assign(&tpl)?;
        let started = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_log = Instant::now();
        let mut records = 0u64;
        let mut next = start;
        let mut batch = StateBatch::default();
        let result = loop {
            if !wanted() {
                // Revoked (or requested anew): stop without writing what is
                // in hand; the batches written so far are consistent with
                // their checkpoint, and a later restore continues from it.
                self.consumer.unassign()?;
                tracing::info!(partition, records, "restore stopped: the partition was revoked");
                return Ok(None);
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    // The fetch position, not the last record: compaction and
                    // transaction markers leave gaps before the end.
                    let position = self.fetch_position(partition).unwrap_or(next);
                    if position >= high {
                        next = position;
                        break Ok(());
                    }
                }
                // Connection trouble (often reported late, from an outage
                // already over) is retried by the client; only a stall ends the restore.
                Some(Err(e)) => tracing::warn!(partition, error = %e, "changelog consumer error; still restoring"),
                Some(Ok(m)) => {
                    let offset = m.offset() as u64;
                    let key = m.key().unwrap_or_default();
                    let value = m.payload().map(<[u8]>::to_vec);
                    if let Some(v) = &value {
                        if let Err(reason) = record::decode(v) {
                            break Err(anyhow::anyhow!("changelog {}/{partition} offset {offset}: {reason}; is another application writing to it?", self.changelog));
                        }
                    }
                    batch.put_encoded(key, value);
                    records += 1;
                    next = offset + 1;
                    last_progress = Instant::now();
                    if batch.reservations >= RESTORE_BATCH && wanted() {
                        self.write(partition, name, std::mem::take(&mut batch), next, high.saturating_sub(next))?;
                    }
                }
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                last_log = Instant::now();
                let secs = started.elapsed().as_secs_f64();
                tracing::info!(partition, records, per_second = (records as f64 / secs) as u64, remaining = high.saturating_sub(next), "restoring");
            }
            if last_progress.elapsed() > STALL_LIMIT {
                break Err(anyhow::anyhow!("restore of partition {partition} made no progress for {}s at changelog offset {next} of {high}", STALL_LIMIT.as_secs()));
            }
        };
        self.consumer.unassign()?;
        result?;
        Ok(Some((records, next, batch)))
    }

    /// The changelog partition's end offset: `high` as ListOffsets reported
    /// it, or beyond, as a read from `high - 1` to the partition's end shows.
    /// On Kafka they agree; Tansu reports its last batch's base offset + 1,
    /// and a checkpoint past that would look inconsistent and cost a full
    /// rebuild at every assignment. The read is at most the last batch.
    fn end_offset(&self, partition: i32, low: u64, high: u64) -> u64 {
        if high <= low {
            return high;
        }
        let mut tpl = TopicPartitionList::new();
        if tpl.add_partition_offset(&self.changelog, partition, Offset::Offset(high as i64 - 1)).is_err() || self.consumer.assign(&tpl).is_err() {
            return high;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut end = high;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    end = self.fetch_position(partition).unwrap_or(high).max(high);
                    break;
                }
                Some(Ok(m)) => end = end.max(m.offset() as u64 + 1),
                _ => {}
            }
        }
        let _ = self.consumer.unassign();
        if end != high {
            tracing::debug!(partition, reported = high, end, "changelog end is past the reported high watermark");
        }
        end
    }

    fn fetch_position(&self, partition: i32) -> Option<u64> {
        let tpl = self.consumer.position().ok()?;
        match tpl.find_partition(&self.changelog, partition)?.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        }
    }
}

/// What a restore came to, for the service loop: the partition, the
/// request's epoch, and the outcome.
pub type RestoreResult = (i32, u64, anyhow::Result<Restored>);

/// Which restores are wanted, and which run. Every request of a partition
/// gets a new epoch; a restore whose epoch is no longer the partition's
/// (revoked, or revoked and assigned again meanwhile) stops without writing
/// and its result is ignored. At most one restore of a partition runs at a
/// time, so a stale one never writes beside its successor.
#[derive(Default)]
struct Requests {
    /// Partition → the epoch of the restore that is wanted now.
    wanted: HashMap<i32, u64>,
    /// Partitions a thread is restoring right now.
    running: HashSet<i32>,
    next_epoch: u64,
}

/// Restores on threads of their own (a small pool, each thread with its own
/// changelog consumer), in the order partitions were assigned: a long
/// restore of one partition does not hold up a short one of another.
pub struct RestoreWorker {
    /// `None` once stopping.
    queue: Option<mpsc::Sender<(i32, u64)>>,
    requests: Arc<(Mutex<Requests>, Condvar)>,
    /// Joined on drop: each thread owns a Kafka client, which must be gone
    /// before the process exits.
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for RestoreWorker {
    fn drop(&mut self) {
        self.requests.0.lock().expect("requests lock").wanted.clear();
        self.requests.1.notify_all();
        self.queue = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl RestoreWorker {
    /// Starts one thread per restorer; finished restores arrive on `done`.
    pub fn start(restorers: Vec<Restorer>, done: tokio::sync::mpsc::UnboundedSender<RestoreResult>) -> std::io::Result<RestoreWorker> {
        let (queue, incoming) = mpsc::channel::<(i32, u64)>();
        let incoming = Arc::new(Mutex::new(incoming));
        let requests: Arc<(Mutex<Requests>, Condvar)> = Arc::default();
        let mut threads = Vec::new();
        for (n, restorer) in restorers.into_iter().enumerate() {
            let (incoming, requests, done) = (incoming.clone(), requests.clone(), done.clone());
            threads.push(std::thread::Builder::new().name(format!("restore-{n}")).spawn(move || {
                loop {
                    // The lock is held only while waiting for the next request.
                    let Ok((p, epoch)) = incoming.lock().expect("queue lock").recv() else { break };
                    let current = || requests.0.lock().expect("requests lock").wanted.get(&p) == Some(&epoch);
                    {
                        // Wait out a stale restore of the same partition (it
                        // stops at its next poll), unless this one is stale too.
                        let (lock, cv) = &*requests;
                        let mut r = lock.lock().expect("requests lock");
                        while r.running.contains(&p) && r.wanted.get(&p) == Some(&epoch) {
                            r = cv.wait(r).expect("requests lock");
                        }
                        if r.wanted.get(&p) != Some(&epoch) {
                            continue;
                        }
                        r.running.insert(p);
                    }
                    let result = restorer.restore(p, &current);
                    requests.0.lock().expect("requests lock").running.remove(&p);
                    requests.1.notify_all();
                    if done.send((p, epoch, result)).is_err() {
                        break; // the service has stopped
                    }
                }
            })?);
        }
        Ok(RestoreWorker { queue: Some(queue), requests, threads })
    }

    /// Queues a restore of `partition` (a new epoch: an older restore of it
    /// stops and its result no longer counts).
    pub fn request(&self, partition: i32) {
        let epoch = {
            let mut r = self.requests.0.lock().expect("requests lock");
            r.next_epoch += 1;
            let e = r.next_epoch;
            r.wanted.insert(partition, e);
            e
        };
        self.requests.1.notify_all();
        if let Some(q) = &self.queue {
            let _ = q.send((partition, epoch));
        }
    }

    /// The partition was revoked: stop or skip its restore.
    pub fn cancel(&self, partition: i32) {
        self.requests.0.lock().expect("requests lock").wanted.remove(&partition);
        self.requests.1.notify_all();
    }

    /// Whether a restore of `partition` is wanted (queued or running).
    pub fn is_restoring(&self, partition: i32) -> bool {
        self.requests.0.lock().expect("requests lock").wanted.contains_key(&partition)
    }

    /// Takes a finished restore's result if it is the one wanted now; a
    /// stale one (an older epoch) is `false` and must be ignored.
    pub fn finish(&self, partition: i32, epoch: u64) -> bool {
        let mut r = self.requests.0.lock().expect("requests lock");
        if r.wanted.get(&partition) == Some(&epoch) {
            r.wanted.remove(&partition);
            true
        } else {
            false
        }
    }
}
