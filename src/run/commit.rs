//! The commit coordinator: when an interval ends, and the order in which it
//! becomes durable — Kafka Streams' commit, for one job.
//!
//! Records are processed and their outputs sent without waiting; new states
//! wait in the [`WriteBackCache`]. Every `commit_interval_ms`, when the cache
//! is full, at revocation and at shutdown, [`Coordinator::commit`] makes the
//! interval durable, in this order:
//!
//! at-least-once
//! 1. every business event, route and dead letter sent is acknowledged;
//! 2. the interval's dirty states go to the changelog and are acknowledged;
//! 3. each task's states and changelog checkpoint are written to RocksDB in
//!    one WriteBatch;
//! 4. the input offsets are committed.
//!
//! exactly-once: the interval is one transaction; step 2's records and the
//! input offsets join it, the transaction commits, then step 3.
//!
//! Why this order survives `kill -9` anywhere: offsets move only after
//! everything before them is durable, so a crash re-reads the interval and
//! emits its events again with the same eventIds. The changelog is written
//! only after the events it reflects are acknowledged, so a state restored
//! from it never hides an event that was never written. A local store behind
//! the changelog is caught up by restore.
//!
//! A failure anywhere rewinds the interval: the dirty states are dropped,
//! the input is sought back to where the interval began, and the same
//! records are processed again (eventIds repeat; nothing is lost, and each
//! reservation's events keep their order). The I/O comes in through
//! [`CommitIo`], so this ordering is unit-tested without a broker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::state::cache::{DirtyStates, WriteBackCache};
use crate::fault::Fault;
use crate::timers::{Pending, StreamClock};

/// An input partition: (topic, partition).
pub type InputPartition = (String, i32);

/// Where each input partition stands in the current interval.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Offset of the first record processed in this interval: where a rewind seeks back to.
    pub start: BTreeMap<InputPartition, i64>,
    /// The offset to commit: the last record processed, plus one.
    pub next: BTreeMap<InputPartition, i64>,
}

impl Progress {
    pub fn record(&mut self, topic: &str, partition: i32, offset: i64) {
        let key = (topic.to_owned(), partition);
        match self.next.get_mut(&key) {
            Some(n) => *n = (*n).max(offset + 1),
            None => {
                self.start.insert(key.clone(), offset);
                self.next.insert(key, offset + 1);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// Forgets a partition (revoked, its interval committed or given up).
    pub fn forget_task(&mut self, task: i32) {
        self.start.retain(|(_, p), _| *p != task);
        self.next.retain(|(_, p), _| *p != task);
    }
}


/// The I/O a commit needs, one method a step. Blocking: a commit also runs
/// inside the rebalance callback (revocation), which cannot await; the
/// service's loop calls it through `block_in_place`.
pub trait CommitIo {
    /// At-least-once step 1: every record sent so far is acknowledged.
    fn flush_outputs(&mut self) -> Result<(), Fault>;
    /// Step 2: sends the dirty states to the changelog (not waiting).
    fn send_changelog(&mut self, dirty: &DirtyStates) -> Result<(), Fault>;
    /// Ends step 2: at-least-once waits for the changelog's
    /// acknowledgements; exactly-once commits the transaction with `offsets`.
    /// Returns, per task, the changelog offset its state is complete up to.
    fn finish(&mut self, offsets: &BTreeMap<InputPartition, i64>) -> Result<BTreeMap<i32, u64>, Fault>;
    /// Step 3: one task's states and changelog checkpoint, in one WriteBatch.
    fn write_state(&mut self, task: i32, states: &[(String, Option<Vec<u8>>)], changelog_next: Option<u64>) -> Result<(), Fault>;
    /// At-least-once step 4.
    fn commit_offsets(&mut self, offsets: &BTreeMap<InputPartition, i64>) -> Result<(), Fault>;
    /// After a failure: abandon what was sent (abort the transaction) and
    /// seek each partition back to `to`. An error here (a partition still
    /// owned that cannot be sought back) must stop the instance: going on
    /// would skip the interval's records.
    fn rewind(&mut self, to: &BTreeMap<InputPartition, i64>) -> Result<(), Fault>;
}

/// What a commit did, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub states: usize,
    pub partitions: usize,
    pub took: Duration,
}

pub struct Coordinator {
    pub cache: WriteBackCache,
    pub progress: Progress,
    /// Stream time of each task, as this interval moved it; a rewind puts
    /// back what the last commit saw, since the same records move it again.
    pub clocks: BTreeMap<i32, StreamClock>,
    committed_clocks: BTreeMap<i32, StreamClock>,
    /// Due-time index entries this interval used up: deleted once its
    /// states are committed ([`Coordinator::take_used`]), kept on a rewind
    /// (the timers fire again when the interval is processed again).
    used: Vec<(i32, Pending)>,
    interval: Duration,
    exactly_once: bool,
    last_commit: Instant,
}

impl Coordinator {
    pub fn new(cache: WriteBackCache, interval: Duration, exactly_once: bool) -> Coordinator {
        Coordinator {
            cache,
            progress: Progress::default(),
            clocks: BTreeMap::new(),
            committed_clocks: BTreeMap::new(),
            used: Vec::new(),
            interval,
            exactly_once,
            last_commit: Instant::now(),
        }
    }

    /// Index entries a batch of task `task` used up.
    pub fn used(&mut self, task: i32, entries: Vec<Pending>) {
        self.used.extend(entries.into_iter().map(|p| (task, p)));
    }

    /// The used entries of the intervals committed so far, to delete.
    pub fn take_used(&mut self) -> Vec<(i32, Pending)> {
        std::mem::take(&mut self.used)
    }

    /// A task moved away: its stream time goes with it.
    pub fn drop_task(&mut self, task: i32) {
        self.cache.drop_task(task);
        self.clocks.remove(&task);
        self.committed_clocks.remove(&task);
        self.used.retain(|(t, _)| *t != task);
    }

    /// Whether the interval should end now: its time is up (and there is
    /// something to commit), or the cache is full.
    pub fn is_due(&self, now: Instant) -> bool {
        self.cache.is_full() || (!self.progress.is_empty() && now.duration_since(self.last_commit) >= self.interval)
    }

    /// How long until the interval's time is up (for a loop that waits for input).
    pub fn until_due(&self, now: Instant) -> Duration {
        self.interval.saturating_sub(now.duration_since(self.last_commit))
    }

    /// Makes the interval durable in the module header's order, or rewinds
    /// it. `Ok(None)`: there was nothing to commit.
    pub fn commit(&mut self, io: &mut impl CommitIo) -> Result<Option<Committed>, Fault> {
        let started = Instant::now();
        if self.progress.is_empty() && self.cache.dirty_count() == 0 {
            self.last_commit = started;
            return Ok(None);
        }
        let dirty = self.cache.dirty_encoded();
        match self.make_durable(io, &dirty) {
            Ok(()) => {
                self.cache.mark_clean();
                self.committed_clocks = self.clocks.clone();
                let done = Committed { states: dirty.iter().map(|(_, s)| s.len()).sum(), partitions: self.progress.next.len(), took: started.elapsed() };
                self.progress = Progress::default();
                self.last_commit = Instant::now();
                Ok(Some(done))
            }
            Err(fault) => Err(self.abandon(io, fault)),
        }
    }

    /// Gives the interval up after `fault`: seeks every partition back to
    /// where the interval began, drops its states, and returns the fault (a
    /// fatal one if the seek back failed). A caller that failed midway
    /// through a batch records the batch's records in `progress` first, so
    /// they are sought back too.
    pub fn abandon(&mut self, io: &mut impl CommitIo, fault: Fault) -> Fault {
        let rewound = io.rewind(&self.progress.start);
        self.cache.drop_dirty();
        self.clocks = self.committed_clocks.clone();
        // Entries used since the last commit are still needed: the rewound
        // records fire their timers again.
        self.used.clear();
        self.progress = Progress::default();
        self.last_commit = Instant::now();
        match rewound {
            Ok(()) => fault,
            Err(fatal) => Fault::Fatal(anyhow::anyhow!("{fault}; then {fatal}")),
        }
    }

    fn make_durable(&mut self, io: &mut impl CommitIo, dirty: &DirtyStates) -> Result<(), Fault> {
        if !self.exactly_once {
            io.flush_outputs()?;
        }
        io.send_changelog(dirty)?;
        let changelog_next = io.finish(&self.progress.next)?;
        for (task, states) in dirty {
            io.write_state(*task, states, changelog_next.get(task).copied())?;
        }
        if !self.exactly_once && !self.progress.is_empty() {
            io.commit_offsets(&self.progress.next)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::ReservationState;

    /// Records the calls in order; fails the step named in `fail_at`.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail_at: Option<&'static str>,
        /// The seek back fails too.
        fail_rewind: bool,
    }

    impl Recorder {
        fn step(&mut self, name: String, kind: &'static str) -> Result<(), Fault> {
            self.calls.push(name);
            if self.fail_at == Some(kind) { Err(Fault::Broker(anyhow::anyhow!("{kind} failed"))) } else { Ok(()) }
        }
    }

    impl CommitIo for Recorder {
        fn flush_outputs(&mut self) -> Result<(), Fault> {
            self.step("flush outputs".into(), "flush")
        }
        fn send_changelog(&mut self, dirty: &DirtyStates) -> Result<(), Fault> {
            let n: usize = dirty.iter().map(|(_, s)| s.len()).sum();
            self.step(format!("changelog {n}"), "changelog")
        }
        fn finish(&mut self, offsets: &BTreeMap<InputPartition, i64>) -> Result<BTreeMap<i32, u64>, Fault> {
            self.step(format!("finish {offsets:?}"), "finish")?;
            Ok([(0, 17)].into())
        }
        fn write_state(&mut self, task: i32, states: &[(String, Option<Vec<u8>>)], next: Option<u64>) -> Result<(), Fault> {
            self.step(format!("state {task} {} {next:?}", states.len()), "state")
        }
        fn commit_offsets(&mut self, offsets: &BTreeMap<InputPartition, i64>) -> Result<(), Fault> {
            self.step(format!("offsets {offsets:?}"), "offsets")
        }
        fn rewind(&mut self, to: &BTreeMap<InputPartition, i64>) -> Result<(), Fault> {
            self.calls.push(format!("rewind {to:?}"));
            if self.fail_rewind { Err(Fault::Broker(anyhow::anyhow!("seek failed"))) } else { Ok(()) }
        }
    }

    fn interval(exactly_once: bool) -> Coordinator {
        let mut c = Coordinator::new(WriteBackCache::new(1 << 20), Duration::from_secs(3600), exactly_once);
        for (offset, id) in [(10, "a"), (11, "b"), (12, "a")] {
            c.progress.record("raw", 0, offset);
            c.cache.put(0, id, ReservationState::default());
        }
        c
    }

    fn run(c: &mut Coordinator, io: &mut Recorder) -> Result<Option<Committed>, Fault> {
        c.commit(io)
    }

    #[test]
    fn at_least_once_acknowledges_outputs_then_changelog_then_state_then_offsets() {
        let mut c = interval(false);
        let mut io = Recorder::default();
        let done = run(&mut c, &mut io).unwrap().unwrap();
        assert_eq!(io.calls, vec!["flush outputs", "changelog 2", "finish {(\"raw\", 0): 13}", "state 0 2 Some(17)", "offsets {(\"raw\", 0): 13}"]);
        assert_eq!(done.states, 2, "a reservation changed twice is written once");
        assert!(c.progress.is_empty() && c.cache.dirty_count() == 0);
        // Nothing new: nothing to do.
        let mut io = Recorder::default();
        assert_eq!(run(&mut c, &mut io).unwrap(), None);
        assert!(io.calls.is_empty());
    }

    #[test]
    fn exactly_once_commits_the_transaction_with_the_offsets_before_the_state() {
        let mut c = interval(true);
        let mut io = Recorder::default();
        run(&mut c, &mut io).unwrap();
        assert_eq!(io.calls, vec!["changelog 2", "finish {(\"raw\", 0): 13}", "state 0 2 Some(17)"]);
    }

    #[test]
    fn a_failure_at_any_step_rewinds_the_interval_and_nothing_after_it_happens() {
        for (fail_at, before) in [("flush", 1), ("changelog", 2), ("finish", 3), ("state", 4), ("offsets", 5)] {
            let mut c = interval(false);
            let mut io = Recorder { fail_at: Some(fail_at), ..Default::default() };
            assert!(run(&mut c, &mut io).is_err());
            assert_eq!(io.calls.len(), before + 1, "{fail_at}: {:?}", io.calls);
            assert_eq!(io.calls.last().unwrap(), "rewind {(\"raw\", 0): 10}", "{fail_at}: back to the interval's first record");
            assert!(c.progress.is_empty(), "{fail_at}");
            assert_eq!(c.cache.dirty_count(), 0, "{fail_at}: the uncommitted states are dropped");
            assert_eq!(c.cache.get(0, "a"), None, "{fail_at}");
        }
    }

    #[test]
    fn a_rewind_that_cannot_seek_back_stops_the_instance() {
        let mut c = interval(false);
        let mut io = Recorder { fail_at: Some("flush"), fail_rewind: true, ..Default::default() };
        let err = c.commit(&mut io).unwrap_err();
        assert!(!err.is_transient(), "{err}");
    }

    #[test]
    fn due_when_the_interval_is_up_or_the_cache_is_full() {
        let now = Instant::now();
        let mut c = Coordinator::new(WriteBackCache::new(1000), Duration::from_millis(100), false);
        assert!(!c.is_due(now + Duration::from_secs(1)), "nothing to commit");
        c.progress.record("raw", 0, 1);
        assert!(!c.is_due(c.last_commit + Duration::from_millis(50)));
        assert!(c.is_due(c.last_commit + Duration::from_millis(100)));
        let mut full = Coordinator::new(WriteBackCache::new(50), Duration::from_secs(3600), false);
        full.cache.put(0, "r", ReservationState::default());
        assert!(full.is_due(full.last_commit), "a full cache commits early");
    }

    #[test]
    fn progress_rewinds_to_the_first_record_and_commits_past_the_last() {
        let mut p = Progress::default();
        p.record("raw", 3, 40);
        p.record("raw", 3, 41);
        p.record("other", 3, 7);
        p.record("raw", 4, 9);
        assert_eq!(p.start[&("raw".to_string(), 3)], 40);
        assert_eq!(p.next[&("raw".to_string(), 3)], 42);
        p.forget_task(3);
        assert_eq!(p.next.keys().cloned().collect::<Vec<_>>(), vec![("raw".to_string(), 4)]);
    }
}
