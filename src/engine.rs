//! One batch of input records through decode, the state machine and the
//! store's current state, into events and a state batch — the step `replay`
//! and the Kafka service share.
//!
//! The engine computes; it does not write. The caller decides the order of
//! side effects (produce events and changelog, await acknowledgements, then
//! commit state with offsets), which is where delivery guarantees are made.

use std::collections::{HashMap, HashSet};

use crate::change::{Change, SourcePosition};
use crate::decode::{DecodeError, Decoded, Decoder};
use crate::machine::{self, BusinessEvent, Outcome, ReservationState};
use crate::pipeline::{Pipeline, State};
use crate::state::store::{StateBatch, StateSource, StoreError};
use crate::timers::{self, Fired, Pending, StreamClock};
#[cfg(test)]
use crate::state::store::StateStore;

/// One input record: its bytes and its position in the input (the Kafka
/// offset, or the line number in `replay`).
#[derive(Clone, Copy, Debug)]
pub struct InputRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub offset: u64,
}

/// A record that could not be decoded: where it was and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Index of the record in the batch.
    pub index: usize,
    pub offset: u64,
    pub error: DecodeError,
}

/// Counters for one batch, summed by callers for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub records: u64,
    pub changes: u64,
    pub stale: u64,
    /// Changes already applied (same position and identity): re-deliveries.
    pub duplicates: u64,
    pub unmapped: u64,
    pub ignored: u64,
    pub rejected: u64,
    pub events: u64,
    /// Timers that fired (their events are counted in `events` too).
    pub timers: u64,
    /// Reservations removed by retention.
    pub retired: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.records += o.records;
        self.changes += o.changes;
        self.stale += o.stale;
        self.duplicates += o.duplicates;
        self.unmapped += o.unmapped;
        self.ignored += o.ignored;
        self.rejected += o.rejected;
        self.events += o.events;
        self.timers += o.timers;
        self.retired += o.retired;
    }
}

/// What a batch produced. Nothing is written yet.
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// Events in input order, each with the index of the record that caused it.
    pub events: Vec<(usize, BusinessEvent)>,
    pub rejected: Vec<Rejected>,
    /// The final state of every reservation the batch changed, in the order
    /// they were first touched (what the state batch and the changelog hold).
    pub states: Vec<(String, ReservationState)>,
    /// Reservations removed by retention (in neither `states` nor the store
    /// afterwards; the changelog gets a tombstone).
    pub removed: Vec<String>,
    /// Due times the batch armed, for the index.
    pub index: Vec<Pending>,
    /// Index entries the batch used up (fired, or found stale), to delete
    /// once the states they changed are committed.
    pub unindex: Vec<Pending>,
    /// Reservations whose status the pipeline does not map (id, status), for
    /// one log line per batch.
    pub unmapped: Vec<(String, Option<String>)>,
    pub counts: Counts,
    /// With [`Engine::explaining`]: why each change emitted what it did.
    pub explained: Vec<Explained>,
}

/// One change's explanation, with the record it came from.
#[derive(Debug, Clone)]
pub struct Explained {
    /// Index of the record in the batch.
    pub index: usize,
    pub reservation_id: String,
    pub position: Option<String>,
    pub why: machine::Explanation,
}

impl BatchOutput {
    /// The batch's state changes and index entries, ready for
    /// [`crate::state::store::StateStore::commit`].
    pub fn state_batch(&self) -> StateBatch {
        let mut batch = StateBatch::default();
        for (id, state) in &self.states {
            batch.put(id, state);
        }
        for id in &self.removed {
            batch.put_encoded(id.as_bytes(), None);
        }
        for p in &self.index {
            batch.index(p);
        }
        for p in &self.unindex {
            batch.unindex(p);
        }
        batch
    }
}

/// The reservations a batch works on: their state before the batch (read in
/// one MultiGet), then as the batch changes them.
struct Working {
    slots: HashMap<String, usize>,
    ids: Vec<String>,
    current: Vec<Option<ReservationState>>,
    changed: Vec<bool>,
}

impl Working {
    fn new() -> Working {
        Working { slots: HashMap::new(), ids: Vec::new(), current: Vec::new(), changed: Vec::new() }
    }

    fn slot(&self, id: &str) -> usize {
        self.slots[id]
    }

    /// Reads the reservations not yet in the working set.
    fn load<S: StateSource + ?Sized>(&mut self, store: &S, partition: &str, ids: &[&str]) -> Result<(), StoreError> {
        // Slots in first-touched order: the order `states` reports them in.
        let first = self.ids.len();
        for &id in ids {
            if !self.slots.contains_key(id) {
                self.slots.insert(id.to_string(), self.ids.len());
                self.ids.push(id.to_string());
            }
        }
        if self.ids.len() == first {
            return Ok(());
        }
        let missing: Vec<&str> = self.ids[first..].iter().map(String::as_str).collect();
        let states = store.get_many(partition, &missing)?;
        self.current.extend(states);
        self.changed.resize(self.ids.len(), false);
        Ok(())
    }
}

/// The pure processing step, configured once.
pub struct Engine {
    pub pipeline: Pipeline,
    pub decoder: Decoder,
    /// Record why each change emitted what it did ([`BatchOutput::explained`]).
    pub explain: bool,
}

impl Engine {
    pub fn new(pipeline: Pipeline, decoder: Decoder) -> Engine {
        Engine { pipeline, decoder, explain: false }
    }

    /// As `new`, recording an explanation of every change (`replay --explain`).
    pub fn explaining(mut self) -> Engine {
        self.explain = true;
        self
    }

    /// Processes a batch against the partition's stored state. Reads from the
    /// store (or a cache in front of it); writes nothing. `clock` is the
    /// partition's stream time, moved by the batch's event times; with timer
    /// rows or retention in the pipeline, what falls due fires on the way
    /// (see [`crate::timers`]).
    pub fn process<S: StateSource + ?Sized>(&self, store: &S, partition: &str, records: &[InputRecord<'_>], clock: &mut StreamClock) -> Result<BatchOutput, StoreError> {
        let mut out = BatchOutput::default();
        let changes = self.decode_all(records, &mut out);
        self.process_decoded(store, partition, records, &changes, out, clock)
    }

    /// The first half of [`Engine::process`], for a caller that runs the
    /// same records through several engines with the same decoder
    /// (`pipeline diff`): the changes with their record index, and an
    /// output holding the counts and rejections so far.
    pub fn decode(&self, records: &[InputRecord<'_>]) -> (Vec<(usize, Change)>, BatchOutput) {
        let mut out = BatchOutput::default();
        let changes = self.decode_all(records, &mut out);
        (changes, out)
    }

    /// The second half of [`Engine::process`]: `changes` (from
    /// [`Engine::decode`] of `records`) applied, into `out`.
    pub fn process_decoded<S: StateSource + ?Sized>(&self, store: &S, partition: &str, records: &[InputRecord<'_>], changes: &[(usize, Change)], mut out: BatchOutput, clock: &mut StreamClock) -> Result<BatchOutput, StoreError> {

        // The batch's working set: stored state of each reservation it touches,
        // then updated in input order. `None` = not in the store.
        let mut w = Working::new();
        let touched: Vec<&str> = changes.iter().map(|(_, c)| c.reservation_id.as_str()).collect();
        w.load(store, partition, &touched)?;
        let timed = self.pipeline.has_timers();
        // Due times armed by this batch, not yet in the store's index.
        let mut armed_here: Vec<Pending> = Vec::new();

        for (index, change) in changes {
            if timed {
                if let Some(t) = change.occurred_at_ms {
                    if clock.advance(t) {
                        self.fire_due(store, partition, t, *index, &mut w, &mut armed_here, &mut out)?;
                    }
                }
            }
            let slot = w.slot(&change.reservation_id);
            let read_in_full;
            let change = if change.lookup_deferred && w.current[slot].as_ref().is_none_or(|s| s.state == State::None) {
                // First seen: the looked-up document seeds it, so read it now.
                let rec = &records[*index];
                read_in_full = match self.decoder.decode(rec.key, rec.value) {
                    Ok(Decoded::Change(mut full)) => {
                        full.position = change.position;
                        full
                    }
                    _ => change.clone(),
                };
                &read_in_full
            } else {
                change
            };
            let outcome = machine::apply(&self.pipeline, w.current[slot].as_ref(), change);
            if self.explain {
                let why = machine::explain(&self.pipeline, w.current[slot].as_ref(), change, &outcome);
                out.explained.push(Explained { index: *index, reservation_id: change.reservation_id.clone(), position: change.position.map(|p| p.to_string()), why });
            }
            match outcome {
                Outcome::Stale => out.counts.stale += 1,
                Outcome::Duplicate => out.counts.duplicates += 1,
                Outcome::Invalid(bad) => {
                    // Rejected as a decode error is: dead-lettered, state untouched.
                    out.counts.changes -= 1;
                    out.counts.rejected += 1;
                    out.rejected.push(Rejected { index: *index, offset: records[*index].offset, error: DecodeError::InvalidValue(bad) });
                }
                Outcome::Unmapped { status, state } => {
                    out.counts.unmapped += 1;
                    if out.unmapped.len() < 10 {
                        out.unmapped.push((change.reservation_id.clone(), status));
                    }
                    w.current[slot] = Some(state);
                    w.changed[slot] = true;
                }
                Outcome::Applied { mut state, events } => {
                    out.counts.events += events.len() as u64;
                    out.events.extend(events.into_iter().map(|e| (*index, e)));
                    let due_now = if timed { self.arm(change, clock, &mut state, &mut armed_here, &mut out) } else { Vec::new() };
                    w.current[slot] = Some(state);
                    w.changed[slot] = true;
                    // Armed by this change and due already: it fires right after it.
                    for p in due_now {
                        self.fire_one(&p, slot, *index, &mut w, &mut out);
                    }
                }
            }
        }
        Ok(self.finish(w, out))
    }

    /// Decodes every record first, so the stored states can be read in one
    /// MultiGet; counts what is ignored and keeps what is rejected in `out`.
    /// Returns the changes with their record index.
    fn decode_all(&self, records: &[InputRecord<'_>], out: &mut BatchOutput) -> Vec<(usize, Change)> {
        let mut changes = Vec::with_capacity(records.len());
        for (index, rec) in records.iter().enumerate() {
            out.counts.records += 1;
            match self.decoder.decode_deferring_lookups(rec.key, rec.value) {
                Ok(Decoded::Change(mut c)) => {
                    // A record without a source position is ordered by its input position.
                    c.position.get_or_insert(SourcePosition::Input(rec.offset));
                    changes.push((index, c));
                }
                Ok(Decoded::Ignored(_)) => out.counts.ignored += 1,
                Err(error) => {
                    out.counts.rejected += 1;
                    out.rejected.push(Rejected { index, offset: rec.offset, error });
                }
            }
        }
        out.counts.changes = changes.len() as u64;
        changes
    }

    /// The due times `state` arms (timer rows and retention): later ones go
    /// to the index (and `armed_here`); ones already due are returned, in
    /// firing order, to fire right after the change. A snapshot's past ones
    /// count as fired, silently, as its own transitions emit nothing.
    fn arm(&self, change: &Change, clock: &StreamClock, state: &mut ReservationState, armed_here: &mut Vec<Pending>, out: &mut BatchOutput) -> Vec<Pending> {
        let mut due_now = Vec::new();
        for p in timers::armed(&self.pipeline, &change.reservation_id, state) {
            if clock.0.is_some_and(|now| p.due <= now) {
                if let (true, timers::Due::Timer(t)) = (change.snapshot, p.what) {
                    state.fired.push((t, p.due));
                } else {
                    due_now.push(p);
                }
            } else {
                out.index.push(p.clone());
                armed_here.push(p);
            }
        }
        due_now.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        due_now
    }

    /// Moves stream time to `until` after the input (`replay --until`), firing
    /// what falls due; the events carry record index 0.
    pub fn advance<S: StateSource + ?Sized>(&self, store: &S, partition: &str, clock: &mut StreamClock, until: i64) -> Result<BatchOutput, StoreError> {
        let mut out = BatchOutput::default();
        let mut w = Working::new();
        if self.pipeline.has_timers() && clock.advance(until) {
            self.fire_due(store, partition, until, 0, &mut w, &mut Vec::new(), &mut out)?;
        }
        Ok(self.finish(w, out))
    }

    fn finish(&self, w: Working, mut out: BatchOutput) -> BatchOutput {
        // Rejected at decode, or later when an unread lookup was needed: in input order.
        out.rejected.sort_by_key(|r| r.index);
        for ((id, state), changed) in w.ids.into_iter().zip(w.current).zip(w.changed) {
            match (changed, state) {
                (true, Some(s)) => out.states.push((id, s)),
                (true, None) => out.removed.push(id),
                (false, _) => {}
            }
        }
        out
    }

    /// Fires, in order, everything due by `now`: the store's index entries
    /// and what this batch armed. `cause` is the index of the record whose
    /// event time moved stream time.
    #[allow(clippy::too_many_arguments)]
    fn fire_due<S: StateSource + ?Sized>(&self, store: &S, partition: &str, now: i64, cause: usize, w: &mut Working, armed_here: &mut Vec<Pending>, out: &mut BatchOutput) -> Result<(), StoreError> {
        let mut due: Vec<Pending> = store.due(partition, now)?;
        let (ready, later): (Vec<Pending>, Vec<Pending>) = std::mem::take(armed_here).into_iter().partition(|p| p.due <= now);
        *armed_here = later;
        due.extend(ready);
        let mut seen = HashSet::new();
        due.retain(|p| seen.insert(p.clone()));
        if due.is_empty() {
            return Ok(());
        }
        due.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let ids: Vec<&str> = due.iter().map(|p| p.id.as_str()).collect();
        w.load(store, partition, &ids)?;
        for p in due {
            let slot = w.slot(&p.id);
            self.fire_one(&p, slot, cause, w, out);
            out.unindex.push(p);
        }
        Ok(())
    }

    fn fire_one(&self, p: &Pending, slot: usize, cause: usize, w: &mut Working, out: &mut BatchOutput) {
        match timers::fire(&self.pipeline, p, w.current[slot].as_ref()) {
            Fired::Stale => {}
            Fired::Timer { state, event } => {
                out.counts.timers += 1;
                if let Some(e) = event {
                    out.counts.events += 1;
                    out.events.push((cause, e));
                }
                w.current[slot] = Some(state);
                w.changed[slot] = true;
            }
            Fired::Remove => {
                out.counts.retired += 1;
                w.current[slot] = None;
                w.changed[slot] = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Decoder, Format};
    use crate::workload::Workload;
    use proptest::prelude::*;

    const PART: &str = "t/0";

    fn engine() -> Engine {
        let p = Pipeline::builtin();
        Engine::new(p.clone(), Decoder::new(Format::Auto, p.paths.clone()))
    }

    /// The default table with timers that fire within the workload's short
    /// span: a no-show at the arrival date itself, an overstay a day before
    /// departure (so an extension re-arms it), and a one-second retention.
    fn timed_engine() -> Engine {
        let text = crate::pipeline::DEFAULT_PIPELINE.to_string()
            + "\n[[timer]]\nevent = \"NO_SHOW\"\nstate = \"NOT_ARRIVED\"\nfield = \"arrival\"\nafter = \"0s\"\n\
               [[timer]]\nevent = \"OVERSTAY\"\nstate = \"IN_HOUSE\"\nfield = \"departure\"\nafter = \"-1d\"\n\
               [retention]\nafter = \"1s\"\n";
        let p = Pipeline::parse(&text, "timed").unwrap();
        Engine::new(p.clone(), Decoder::new(Format::Auto, p.paths.clone()))
    }

    /// Runs `lines` through the engine and a fresh store, cut into batches at
    /// `cuts`; returns the events and the final state of every reservation.
    fn run(lines: &[String], cuts: &[usize], store: Option<&mut StateStore>) -> (Vec<BusinessEvent>, Vec<(String, ReservationState)>) {
        run_with(&engine(), lines, cuts, store)
    }

    fn run_with(e: &Engine, lines: &[String], cuts: &[usize], store: Option<&mut StateStore>) -> (Vec<BusinessEvent>, Vec<(String, ReservationState)>) {
        let dir = tempfile::tempdir().unwrap();
        let mut own;
        let store = match store {
            Some(s) => s,
            None => {
                own = StateStore::open(dir.path()).unwrap();
                &mut own
            }
        };
        store.open_partition(PART).unwrap();
        store.ensure_index(PART, &e.pipeline).unwrap();
        let mut events = Vec::new();
        let mut clock = StreamClock::default();
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (lines.len() + 1)).collect();
        bounds.push(lines.len());
        bounds.sort();
        for end in bounds {
            let records: Vec<InputRecord> = lines[start..end]
                .iter()
                .enumerate()
                .map(|(i, l)| InputRecord { key: None, value: Some(l.as_bytes()), offset: (start + i) as u64 })
                .collect();
            let out = e.process(store, PART, &records, &mut clock).unwrap();
            events.extend(out.events.iter().map(|(_, ev)| ev.clone()));
            store.commit(PART, out.state_batch()).unwrap();
            start = end;
        }
        (events, store.reservations(PART).unwrap())
    }

    /// A realistic stream with some records repeated later (connector replays).
    fn stream(n: usize, repeats: &[usize]) -> Vec<String> {
        let mut w = Workload::new(12, 3);
        let mut lines: Vec<String> = (0..n).map(|_| w.next_event().1).collect();
        for r in repeats {
            if !lines.is_empty() {
                let l = lines[r % lines.len()].clone();
                lines.push(l);
            }
        }
        lines
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn output_does_not_depend_on_how_input_is_cut_into_batches(n in 0usize..150, repeats in prop::collection::vec(any::<usize>(), 0..20), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
            let lines = stream(n, &repeats);
            let whole = run(&lines, &[], None);
            let cut = run(&lines, &cuts, None);
            prop_assert_eq!(whole, cut);
        }

        #[test]
        fn timers_do_not_depend_on_how_input_is_cut_into_batches(n in 0usize..400, repeats in prop::collection::vec(any::<usize>(), 0..20), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
            let lines = stream(n, &repeats);
            let e = timed_engine();
            let whole = run_with(&e, &lines, &[], None);
            let cut = run_with(&e, &lines, &cuts, None);
            prop_assert_eq!(whole, cut);
        }

        #[test]
        fn replaying_timers_into_the_same_store_fires_nothing_again(n in 0usize..400, cuts in prop::collection::vec(any::<usize>(), 0..6)) {
            let lines = stream(n, &[]);
            let e = timed_engine();
            let dir = tempfile::tempdir().unwrap();
            let mut store = StateStore::open(dir.path()).unwrap();
            let (_, first) = run_with(&e, &lines, &cuts, Some(&mut store));
            let (again, second) = run_with(&e, &lines, &[], Some(&mut store));
            prop_assert!(again.is_empty(), "{:?}", again.iter().map(|e| e.event_type).collect::<Vec<_>>());
            prop_assert_eq!(first, second);
        }

        #[test]
        fn replaying_into_the_same_store_emits_nothing(n in 0usize..150, repeats in prop::collection::vec(any::<usize>(), 0..20), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
            let lines = stream(n, &repeats);
            let dir = tempfile::tempdir().unwrap();
            let mut store = StateStore::open(dir.path()).unwrap();
            let (_, first) = run(&lines, &cuts, Some(&mut store));
            let (again, second) = run(&lines, &[], Some(&mut store));
            prop_assert!(again.is_empty());
            prop_assert_eq!(first, second);
        }
    }

    #[test]
    fn leaving_lookups_unread_until_needed_changes_nothing() {
        // Starting mid-stream, so many reservations are first seen by an
        // update, whose looked-up document must seed them.
        let lines: Vec<String> = stream(3000, &[]).split_off(1000);
        let (events, states) = run(&lines, &[250, 1200], None);
        // The reference: every record decoded in full, applied in order.
        let e = engine();
        let mut reference: std::collections::BTreeMap<String, ReservationState> = Default::default();
        let mut expected = Vec::new();
        for (n, l) in lines.iter().enumerate() {
            let Ok(Decoded::Change(mut c)) = e.decoder.decode(None, Some(l.as_bytes())) else { continue };
            c.position.get_or_insert(SourcePosition::Input(n as u64));
            match machine::apply(&e.pipeline, reference.get(&c.reservation_id), &c) {
                Outcome::Applied { state, events } => {
                    reference.insert(c.reservation_id.clone(), state);
                    expected.extend(events);
                }
                Outcome::Unmapped { state, .. } => {
                    reference.insert(c.reservation_id.clone(), state);
                }
                Outcome::Stale | Outcome::Duplicate | Outcome::Invalid(_) => {}
            }
        }
        assert!(expected.iter().any(|ev| ev.event_type == "ROOM_CHANGED"));
        assert_eq!(events, expected);
        assert_eq!(states, reference.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn timers_fire_in_the_workload_and_retention_removes_departed_reservations() {
        // 3000 events over 12 reservations: three seconds of stream time.
        let lines = stream(3000, &[]);
        let (events, states) = run_with(&timed_engine(), &lines, &[700, 1900], None);
        let count = |t: &str| events.iter().filter(|e| e.event_type == t).count();
        assert!(count("NO_SHOW") > 0 && count("OVERSTAY") > 0, "no-shows {}, overstays {}", count("NO_SHOW"), count("OVERSTAY"));
        // Each timer event once per (reservation, type, due): its id says so.
        let ids: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids.len(), events.len(), "no event twice");
        assert_eq!(states.len(), 12, "no reservation departed for a second at a time");
        // Stream time moved a minute on (`replay --until`): every departed
        // reservation is a second past its departure, and leaves the state.
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        let e = timed_engine();
        let (_, before) = run_with(&e, &lines, &[], Some(&mut store));
        let departed = before.iter().filter(|(_, s)| s.state == State::Departed).count();
        assert!(departed > 0 && departed < before.len(), "{departed} departed");
        let last = before.iter().filter_map(|(_, s)| s.changed_at_ms).max().unwrap();
        let out = e.advance(&store, PART, &mut StreamClock::default(), last + 60_000).unwrap();
        assert_eq!((out.counts.retired as usize, out.removed.len()), (departed, departed));
        store.commit(PART, out.state_batch()).unwrap();
        let after = store.reservations(PART).unwrap();
        assert_eq!(after.len(), before.len() - departed);
        assert!(after.iter().all(|(_, s)| s.state != State::Departed));
        assert!(store.due(PART, last + 60_000).unwrap().iter().all(|p| p.what != timers::Due::Retention), "used entries leave the index");
    }

    #[test]
    fn repeated_records_emit_once() {
        let lines = stream(200, &[]);
        let (events, _) = run(&lines, &[], None);
        let mut doubled = lines.clone();
        doubled.extend(lines.iter().cloned());
        let (events2, _) = run(&doubled, &[57, 300], None);
        assert!(!events.is_empty());
        assert_eq!(events, events2);
    }
}
