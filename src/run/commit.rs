//! The commit coordinator: when an interval ends, and the order in which it
//! becomes durable — Kafka Streams' commit, for one job.
//!
//! Records are processed and their outputs sent without waiting; new states
//! wait in the [`WriteBackCache`]. Every `commit_interval_ms`, when the cache
//! is full, at revocation and at shutdown, the interval ends and is made
//! durable, in this order:
//!
//! at-least-once
//! 1. every business event, route and dead letter it sent is acknowledged;
//! 2. its dirty states go to the changelog and are acknowledged;
//! 3. each task's states and changelog checkpoint are written to RocksDB in
//!    one WriteBatch;
//! 4. its input offsets are committed.
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
//! **Off the processing path** (at-least-once). The loop does not wait for
//! the acknowledgements: [`Coordinator::begin`] ends the interval (its sends
//! are sealed into their own epoch, its states frozen in the cache) and
//! [`Coordinator::advance`] takes each step as soon as the one before it is
//! acknowledged, while the next interval is processed. At most one interval
//! is committing; its states stay readable in the cache's frozen generation
//! until its WriteBatch is done. The next interval's outputs may reach the
//! broker before the committing one's changelog: that breaks nothing above,
//! since each changelog record reflects only events of its own interval,
//! which were acknowledged before it was sent. When the next interval is due
//! while one is still committing, processing goes on until the cache bound,
//! then waits for the commit (the loop counts that wait as a `cache-full`
//! pause). Exactly-once commits synchronously: a transaction's records
//! cannot be sent while the last one commits.
//!
//! A failure anywhere rewinds every interval not committed — the committing
//! one and the one processing: the dirty states of both are dropped, the
//! input is sought back to where the committing interval began, and the same
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

/// The I/O a commit needs, one method a step. Blocking where it waits: a
/// commit also runs inside the rebalance callback (revocation), which
/// cannot await; the service's loop calls it through `block_in_place`.
pub trait CommitIo {
    /// Ends the current epoch of sends: what is sent from now on belongs to
    /// the next interval. Returns the epoch ended.
    fn seal(&mut self) -> Result<u64, Fault>;
    /// Whether every record sent in `epoch` is acknowledged: `None` while
    /// some are in flight, the first failure as soon as one is reported.
    /// With `wait`, blocks until it is one or the other.
    fn acknowledged(&mut self, epoch: u64, wait: bool) -> Option<Result<(), Fault>>;
    /// Step 2: sends the dirty states to the changelog, in `epoch` (not waiting).
    fn send_changelog(&mut self, epoch: u64, dirty: &DirtyStates) -> Result<(), Fault>;
    /// Exactly-once: commits the transaction (every record of `epoch`) with `offsets`.
    fn commit_transaction(&mut self, epoch: u64, offsets: &BTreeMap<InputPartition, i64>) -> Result<(), Fault>;
    /// Per task, the changelog offset `epoch`'s states are complete up to.
    fn changelog_next(&mut self, epoch: u64) -> BTreeMap<i32, u64>;
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
    /// From the interval's end to its offsets committed.
    pub took: Duration,
    /// Of that, how long the processing loop spent on it (sealing, encoding,
    /// queueing the changelog, the WriteBatch, and any wait).
    pub paused: Duration,
}

/// What one [`Coordinator::step`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// The commits it finished (at most two: the one under way, and one begun and done at once).
    pub committed: Vec<Committed>,
    /// How long it waited for the commit under way with the cache at its bound.
    pub waited: Option<Duration>,
}

/// The interval whose commit is under way while the next one is processed.
struct InFlight {
    /// Its sends' epoch, and its states' cache generation.
    epoch: u64,
    generation: u64,
    dirty: DirtyStates,
    progress: Progress,
    /// Stream time as the interval left it.
    clocks: BTreeMap<i32, StreamClock>,
    /// Due-time index entries it used up.
    used: Vec<(i32, Pending)>,
    /// Step 1 is done and step 2's records are queued.
    changelog_sent: bool,
    started: Instant,
    paused: Duration,
}

pub struct Coordinator {
    pub cache: WriteBackCache,
    /// The interval processing now.
    pub progress: Progress,
    /// Stream time of each task, as the intervals not yet committed moved
    /// it; a rewind puts back what the last commit saw, since the same
    /// records move it again.
    pub clocks: BTreeMap<i32, StreamClock>,
    committed_clocks: BTreeMap<i32, StreamClock>,
    /// Due-time index entries the interval processing used up.
    used: Vec<(i32, Pending)>,
    /// Those of committed intervals, to delete ([`Coordinator::take_used`]).
    /// A rewind keeps the entries (the timers fire again when the interval
    /// is processed again).
    used_committed: Vec<(i32, Pending)>,
    committing: Option<InFlight>,
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
            used_committed: Vec::new(),
            committing: None,
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
        std::mem::take(&mut self.used_committed)
    }

    /// A task moved away: its stream time goes with it. Called when no
    /// commit is under way (a revocation commits first).
    pub fn drop_task(&mut self, task: i32) {
        debug_assert!(self.committing.is_none(), "a task dropped during a commit");
        self.cache.drop_task(task);
        self.clocks.remove(&task);
        self.committed_clocks.remove(&task);
        self.used.retain(|(t, _)| *t != task);
        self.used_committed.retain(|(t, _)| *t != task);
    }

    /// Whether the interval should end now: its time is up (and there is
    /// something to commit), or the cache is full.
    pub fn is_due(&self, now: Instant) -> bool {
        self.cache.is_full() || (!self.progress.is_empty() && now.duration_since(self.last_commit) >= self.interval)
    }

    /// How long a loop waiting for input may sleep before the commit needs
    /// it: until the interval's time is up; `None` when no time will make it
    /// due (nothing processed since the last commit), or while a commit is
    /// under way (its acknowledgements wake the loop, and the next interval
    /// cannot begin before it ends).
    pub fn until_due(&self, now: Instant) -> Option<Duration> {
        (self.committing.is_none() && !self.progress.is_empty()).then(|| self.interval.saturating_sub(now.duration_since(self.last_commit)))
    }

    /// An interval's commit is under way.
    pub fn is_committing(&self) -> bool {
        self.committing.is_some()
    }

    /// The commit's part of one turn of the processing loop, waiting only
    /// where it must. At-least-once: carries the commit under way as far as
    /// its acknowledgements allow, and ends the interval when it is due; an
    /// interval due while the last one still commits goes on processing,
    /// and only when the cache is full as well is the commit waited for
    /// (returned as `waited`, a `cache-full` pause, and not counted again in
    /// that commit's `paused`). Exactly-once commits while the loop waits:
    /// the next transaction's records cannot go out before this one commits.
    pub fn step(&mut self, io: &mut impl CommitIo, now: Instant) -> Result<Step, Fault> {
        let mut step = Step::default();
        if self.exactly_once {
            if self.is_due(now) {
                step.committed.extend(self.commit(io)?);
            }
            return Ok(step);
        }
        step.committed.extend(self.advance(io, false)?);
        if self.is_due(now) {
            if self.is_committing() && self.cache.is_full() {
                let started = Instant::now();
                let done = self.advance(io, true)?;
                let waited = started.elapsed();
                step.committed.extend(done.map(|d| Committed { paused: d.paused.saturating_sub(waited), ..d }));
                step.waited = Some(waited);
            }
            if !self.is_committing() {
                step.committed.extend(self.begin(io, false)?);
            }
        }
        Ok(step)
    }

    /// Makes everything processed durable, waiting for it: the commit under
    /// way, then the current interval. Or rewinds both. `Ok(None)`: there
    /// was nothing to commit. For revocation, shutdown and exactly-once.
    pub fn commit(&mut self, io: &mut impl CommitIo) -> Result<Option<Committed>, Fault> {
        let earlier = self.advance(io, true)?;
        let done = self.begin(io, true)?;
        self.last_commit = Instant::now();
        Ok(done.or(earlier))
    }

    /// Ends the interval: seals its sends, freezes its states and starts
    /// its commit, which [`Coordinator::advance`] carries on (with `wait`,
    /// to its end). Call only when no commit is under way. `Ok(Some)`: the
    /// commit is done already; `Ok(None)`: under way, or nothing to commit.
    pub fn begin(&mut self, io: &mut impl CommitIo, wait: bool) -> Result<Option<Committed>, Fault> {
        debug_assert!(self.committing.is_none(), "one interval commits at a time");
        let started = Instant::now();
        self.last_commit = started;
        if self.progress.is_empty() && self.cache.dirty_count() == 0 {
            return Ok(None);
        }
        let epoch = match io.seal() {
            Ok(epoch) => epoch,
            Err(fault) => return Err(self.abandon(io, fault)),
        };
        let dirty = self.cache.dirty_encoded();
        let generation = self.cache.freeze();
        self.committing = Some(InFlight {
            epoch,
            generation,
            dirty,
            progress: std::mem::take(&mut self.progress),
            clocks: self.clocks.clone(),
            used: std::mem::take(&mut self.used),
            changelog_sent: false,
            started,
            paused: started.elapsed(),
        });
        self.advance(io, wait)
    }

    /// Takes the commit under way as far as its acknowledgements allow (with
    /// `wait`, to its end). `Ok(Some)`: it is done; `Ok(None)`: still under
    /// way, or none is. A failure rewinds every interval not committed.
    pub fn advance(&mut self, io: &mut impl CommitIo, wait: bool) -> Result<Option<Committed>, Fault> {
        let Some(flight) = self.committing.as_mut() else { return Ok(None) };
        let started = Instant::now();
        let done = steps(flight, io, wait, self.exactly_once);
        flight.paused += started.elapsed();
        match done {
            Ok(false) => Ok(None),
            Ok(true) => {
                let flight = self.committing.take().expect("a commit under way");
                self.cache.mark_clean(flight.generation);
                self.committed_clocks = flight.clocks;
                self.used_committed.extend(flight.used);
                let states = flight.dirty.iter().map(|(_, s)| s.len()).sum();
                Ok(Some(Committed { states, partitions: flight.progress.next.len(), took: flight.started.elapsed(), paused: flight.paused }))
            }
            Err(fault) => Err(self.abandon(io, fault)),
        }
    }

    /// Gives up every interval not committed after `fault`: seeks each
    /// partition back to where the earliest of them began, drops their
    /// states, and returns the fault (a fatal one if the seek back failed).
    /// A caller that failed midway through a batch records the batch's
    /// records in `progress` first, so they are sought back too.
    pub fn abandon(&mut self, io: &mut impl CommitIo, fault: Fault) -> Fault {
        let mut to = std::mem::take(&mut self.progress).start;
        if let Some(flight) = self.committing.take() {
            // The committing interval began earlier on every partition it read.
            to.extend(flight.progress.start);
        }
        let rewound = io.rewind(&to);
        self.cache.drop_dirty();
        self.clocks = self.committed_clocks.clone();
        // Entries used since the last commit are still needed: the rewound
        // records fire their timers again.
        self.used.clear();
        self.last_commit = Instant::now();
        match rewound {
            Ok(()) => fault,
            Err(fatal) => Fault::Fatal(anyhow::anyhow!("{fault}; then {fatal}")),
        }
    }
}

/// The steps of `flight`'s commit that its acknowledgements allow, in the
/// module header's order. `Ok(true)`: all done.
fn steps(flight: &mut InFlight, io: &mut impl CommitIo, wait: bool, exactly_once: bool) -> Result<bool, Fault> {
    if exactly_once {
        io.send_changelog(flight.epoch, &flight.dirty)?;
        io.commit_transaction(flight.epoch, &flight.progress.next)?;
    } else {
        if !flight.changelog_sent {
            // Step 1: the interval's outputs.
            match io.acknowledged(flight.epoch, wait) {
                None => return Ok(false),
                Some(outputs) => outputs?,
            }
            io.send_changelog(flight.epoch, &flight.dirty)?;
            flight.changelog_sent = true;
        }
        // Step 2: its changelog records (the last of the epoch).
        match io.acknowledged(flight.epoch, wait) {
            None => return Ok(false),
            Some(changelog) => changelog?,
        }
    }
    let changelog_next = io.changelog_next(flight.epoch);
    for (task, states) in &flight.dirty {
        io.write_state(*task, states, changelog_next.get(task).copied())?;
    }
    if !exactly_once && !flight.progress.is_empty() {
        io.commit_offsets(&flight.progress.next)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::ReservationState;

    /// Records the calls in order; fails the step named in `fail_at`.
    /// Acknowledgements are in only when `acked` (or when waited for).
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail_at: Option<&'static str>,
        /// The seek back fails too.
        fail_rewind: bool,
        acked: bool,
        epoch: u64,
        /// Epochs whose changelog was sent: their next acknowledgement is the changelog's.
        changelog_sent: Vec<u64>,
    }

    impl Recorder {
        fn step(&mut self, name: String, kind: &'static str) -> Result<(), Fault> {
            self.calls.push(name);
            if self.fail_at == Some(kind) { Err(Fault::Broker(anyhow::anyhow!("{kind} failed"))) } else { Ok(()) }
        }
    }

    impl CommitIo for Recorder {
        fn seal(&mut self) -> Result<u64, Fault> {
            self.epoch += 1;
            self.step(format!("seal {}", self.epoch - 1), "seal")?;
            Ok(self.epoch - 1)
        }
        fn acknowledged(&mut self, epoch: u64, wait: bool) -> Option<Result<(), Fault>> {
            if !wait && !self.acked {
                return None;
            }
            let (what, kind) = if self.changelog_sent.contains(&epoch) { ("changelog", "changelog acks") } else { ("outputs", "output acks") };
            Some(self.step(format!("{what} {epoch} acknowledged"), kind))
        }
        fn send_changelog(&mut self, epoch: u64, dirty: &DirtyStates) -> Result<(), Fault> {
            self.changelog_sent.push(epoch);
            let n: usize = dirty.iter().map(|(_, s)| s.len()).sum();
            self.step(format!("changelog {epoch}: {n}"), "changelog")
        }
        fn commit_transaction(&mut self, epoch: u64, offsets: &BTreeMap<InputPartition, i64>) -> Result<(), Fault> {
            self.step(format!("transaction {epoch} {offsets:?}"), "transaction")
        }
        /// Only partition 0 has a changelog position in this double.
        fn changelog_next(&mut self, _epoch: u64) -> BTreeMap<i32, u64> {
            [(0, 17)].into()
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

    fn state(room: &str) -> ReservationState {
        ReservationState { fields: [None, Some(room.into()), None, None], ..Default::default() }
    }

    /// Records `(partition, offset, reservation)` into the interval processing.
    fn process(c: &mut Coordinator, records: &[(i32, i64, &str)]) {
        for &(p, offset, id) in records {
            c.progress.record("raw", p, offset);
            c.cache.put(p, id, state(&offset.to_string()));
        }
    }

    fn interval(exactly_once: bool) -> Coordinator {
        let mut c = Coordinator::new(WriteBackCache::new(1 << 20), Duration::from_secs(3600), exactly_once);
        process(&mut c, &[(0, 10, "a"), (0, 11, "b"), (0, 12, "a")]);
        c
    }

    #[test]
    fn at_least_once_acknowledges_outputs_then_changelog_then_state_then_offsets() {
        let mut c = interval(false);
        let mut io = Recorder::default();
        let done = c.commit(&mut io).unwrap().unwrap();
        assert_eq!(io.calls, vec!["seal 0", "outputs 0 acknowledged", "changelog 0: 2", "changelog 0 acknowledged", "state 0 2 Some(17)", "offsets {(\"raw\", 0): 13}"]);
        assert_eq!(done.states, 2, "a reservation changed twice is written once");
        assert!(c.progress.is_empty() && c.cache.dirty_count() == 0 && !c.is_committing());
        // Nothing new: nothing to do.
        let mut io = Recorder::default();
        assert_eq!(c.commit(&mut io).unwrap(), None);
        assert!(io.calls.is_empty());
    }

    #[test]
    fn exactly_once_commits_the_transaction_with_the_offsets_before_the_state() {
        let mut c = interval(true);
        let mut io = Recorder::default();
        c.commit(&mut io).unwrap();
        assert_eq!(io.calls, vec!["seal 0", "changelog 0: 2", "transaction 0 {(\"raw\", 0): 13}", "state 0 2 Some(17)"]);
    }

    #[test]
    fn a_failure_at_any_step_rewinds_the_interval_and_nothing_after_it_happens() {
        for (fail_at, before) in [("seal", 0), ("output acks", 1), ("changelog", 2), ("changelog acks", 3), ("state", 4), ("offsets", 5)] {
            let mut c = interval(false);
            let mut io = Recorder { fail_at: Some(fail_at), ..Default::default() };
            assert!(c.commit(&mut io).is_err());
            assert_eq!(io.calls.len(), before + 2, "{fail_at}: {:?}", io.calls);
            assert_eq!(io.calls.last().unwrap(), "rewind {(\"raw\", 0): 10}", "{fail_at}: back to the interval's first record");
            assert!(c.progress.is_empty() && !c.is_committing(), "{fail_at}");
            assert_eq!(c.cache.dirty_count(), 0, "{fail_at}: the uncommitted states are dropped");
            assert_eq!(c.cache.get(0, "a"), None, "{fail_at}");
        }
    }

    #[test]
    fn a_rewind_that_cannot_seek_back_stops_the_instance() {
        let mut c = interval(false);
        let mut io = Recorder { fail_at: Some("output acks"), fail_rewind: true, ..Default::default() };
        let err = c.commit(&mut io).unwrap_err();
        assert!(!err.is_transient(), "{err}");
    }

    #[test]
    fn the_next_interval_is_processed_while_the_last_commits_and_each_commits_only_its_own() {
        let mut c = interval(false);
        let mut io = Recorder::default();
        assert_eq!(c.begin(&mut io, false).unwrap(), None, "under way: the outputs are not acknowledged yet");
        assert_eq!(io.calls, vec!["seal 0"]);
        // The next interval reads the committing one's state and goes on.
        assert_eq!(c.cache.get(0, "a"), Some(&state("12")));
        process(&mut c, &[(0, 13, "a"), (1, 5, "c")]);
        assert_eq!(c.advance(&mut io, false).unwrap(), None, "still nothing acknowledged");
        io.acked = true;
        let first = c.advance(&mut io, false).unwrap().expect("acknowledged: the commit ends");
        assert_eq!(first.states, 2);
        assert_eq!(io.calls[1..], ["outputs 0 acknowledged", "changelog 0: 2", "changelog 0 acknowledged", "state 0 2 Some(17)", "offsets {(\"raw\", 0): 13}"], "only the first interval's offsets");
        assert_eq!(c.cache.dirty_count(), 2, "the next interval's states wait for their own commit");
        assert_eq!(c.cache.get(0, "a"), Some(&state("13")));
        io.calls.clear();
        let second = c.commit(&mut io).unwrap().unwrap();
        assert_eq!(second.states, 2);
        assert_eq!(io.calls, vec!["seal 1", "outputs 1 acknowledged", "changelog 1: 2", "changelog 1 acknowledged", "state 0 1 Some(17)", "state 1 1 None", "offsets {(\"raw\", 0): 14, (\"raw\", 1): 6}"]);
    }

    #[test]
    fn a_failure_in_the_committing_interval_rewinds_the_one_processing_too() {
        for fail_at in ["output acks", "changelog", "changelog acks", "state"] {
            let mut c = interval(false);
            c.clocks.insert(0, StreamClock::default());
            let mut io = Recorder { fail_at: Some(fail_at), ..Default::default() };
            assert_eq!(c.begin(&mut io, false).unwrap(), None);
            process(&mut c, &[(0, 13, "a"), (1, 5, "c")]);
            c.clocks.insert(1, StreamClock::default());
            io.acked = true;
            assert!(c.advance(&mut io, false).is_err(), "{fail_at}");
            assert_eq!(io.calls.last().unwrap(), "rewind {(\"raw\", 0): 10, (\"raw\", 1): 5}", "{fail_at}: each partition back to the earliest record not committed");
            assert!(!io.calls.iter().any(|c| c.starts_with("offsets")), "{fail_at}");
            assert!(!c.is_committing() && c.progress.is_empty(), "{fail_at}");
            assert_eq!((c.cache.get(0, "a"), c.cache.get(1, "c"), c.cache.dirty_count()), (None, None, 0), "{fail_at}: both generations dropped");
            assert_eq!(c.clocks.keys().collect::<Vec<_>>(), Vec::<&i32>::new(), "{fail_at}: stream time back to the last commit's");
        }
    }

    #[test]
    fn a_processing_failure_while_an_interval_commits_rewinds_both() {
        let mut c = interval(false);
        let mut io = Recorder::default();
        c.begin(&mut io, false).unwrap();
        process(&mut c, &[(0, 13, "b"), (0, 14, "d")]);
        let fault = c.abandon(&mut io, Fault::Broker(anyhow::anyhow!("a batch failed")));
        assert!(fault.is_transient());
        assert_eq!(io.calls, vec!["seal 0", "rewind {(\"raw\", 0): 10}"]);
        assert_eq!((c.cache.get(0, "b"), c.cache.get(0, "d"), c.is_committing()), (None, None, false));
        // What comes next commits from a clean start.
        process(&mut c, &[(0, 10, "a")]);
        io.calls.clear();
        c.commit(&mut io).unwrap().unwrap();
        assert_eq!(io.calls.last().unwrap(), "offsets {(\"raw\", 0): 11}");
    }

    #[test]
    fn a_step_overlaps_at_least_once_and_waits_only_when_the_cache_is_full() {
        // A 1 ms interval: due at every step once something was processed.
        let mut c = Coordinator::new(WriteBackCache::new(1 << 20), Duration::from_millis(1), false);
        process(&mut c, &[(0, 10, "a")]);
        let mut io = Recorder::default();
        let later = || Instant::now() + Duration::from_millis(5);
        let step = c.step(&mut io, later()).unwrap();
        assert_eq!((step.committed.len(), step.waited, c.is_committing()), (0, None, true), "begun, not waited for");
        assert_eq!(c.until_due(Instant::now()), None, "the acknowledgements wake the loop, not a timer");
        // Due again while the first commits, the cache not full: processing goes on.
        process(&mut c, &[(0, 11, "b")]);
        let step = c.step(&mut io, later()).unwrap();
        assert_eq!((step.committed.len(), step.waited), (0, None));
        assert_eq!(io.calls, vec!["seal 0"], "nothing waited for, nothing begun");
        // The cache at its bound: the step waits for the commit under way, then begins the next.
        let mut full = Coordinator::new(WriteBackCache::new(200), Duration::from_millis(1), false);
        process(&mut full, &[(0, 10, "a")]);
        let mut io = Recorder::default();
        full.step(&mut io, later()).unwrap();
        process(&mut full, &[(0, 11, "b"), (0, 12, "c")]);
        assert!(full.cache.is_full());
        let step = full.step(&mut io, later()).unwrap();
        assert!(step.waited.is_some(), "a cache-full wait");
        assert_eq!(step.committed.len(), 1, "the first interval committed");
        assert!(full.is_committing(), "and the next begun");
        assert_eq!(io.calls.iter().filter(|c| c.starts_with("seal")).count(), 2);
    }

    #[test]
    fn an_exactly_once_step_commits_while_the_loop_waits() {
        let mut c = Coordinator::new(WriteBackCache::new(1 << 20), Duration::from_millis(1), true);
        process(&mut c, &[(0, 10, "a")]);
        let mut io = Recorder::default();
        let step = c.step(&mut io, Instant::now() + Duration::from_millis(5)).unwrap();
        assert_eq!((step.committed.len(), step.waited, c.is_committing()), (1, None, false));
        assert_eq!(io.calls, vec!["seal 0", "changelog 0: 1", "transaction 0 {(\"raw\", 0): 11}", "state 0 1 Some(17)"]);
    }

    #[test]
    fn due_when_the_interval_is_up_or_the_cache_is_full() {
        let now = Instant::now();
        let mut c = Coordinator::new(WriteBackCache::new(1000), Duration::from_millis(100), false);
        assert!(!c.is_due(now + Duration::from_secs(1)), "nothing to commit");
        c.progress.record("raw", 0, 1);
        assert!(!c.is_due(c.last_commit + Duration::from_millis(50)));
        assert!(c.is_due(c.last_commit + Duration::from_millis(100)));
        assert_eq!(c.until_due(c.last_commit + Duration::from_millis(30)), Some(Duration::from_millis(70)));
        assert_eq!(Coordinator::new(WriteBackCache::new(1000), Duration::from_millis(100), false).until_due(now + Duration::from_secs(1)), None, "nothing processed: no time makes it due, so an idle loop does not wake for it");
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
