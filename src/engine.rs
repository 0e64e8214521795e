//! One batch of input records through decode, the state machine and the
//! store's current state, into events and a state batch — the step `replay`
//! and the Kafka service share.
//!
//! The engine computes; it does not write. The caller decides the order of
//! side effects (produce events and changelog, await acknowledgements, then
//! commit state with offsets), which is where delivery guarantees are made.

use std::collections::HashMap;

use crate::change::SourcePosition;
use crate::decode::{DecodeError, Decoded, Decoder};
use crate::machine::{self, BusinessEvent, Outcome, ReservationState};
use crate::pipeline::{Pipeline, State};
use crate::store::{StateBatch, StateSource, StoreError};
#[cfg(test)]
use crate::store::StateStore;

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
    /// Reservations whose status the pipeline does not map (id, status), for
    /// one log line per batch.
    pub unmapped: Vec<(String, Option<String>)>,
    pub counts: Counts,
}

impl BatchOutput {
    /// The batch's state changes, ready for [`crate::store::StateStore::commit`].
    pub fn state_batch(&self) -> StateBatch {
        let mut batch = StateBatch::default();
        for (id, state) in &self.states {
            batch.put(id, state);
        }
        batch
    }
}

/// The pure processing step, configured once.
pub struct Engine {
    pub pipeline: Pipeline,
    pub decoder: Decoder,
}

impl Engine {
    pub fn new(pipeline: Pipeline, decoder: Decoder) -> Engine {
        Engine { pipeline, decoder }
    }

    /// Processes a batch against the partition's stored state. Reads from the
    /// store (or a cache in front of it); writes nothing.
    pub fn process<S: StateSource + ?Sized>(&self, store: &S, partition: &str, records: &[InputRecord<'_>]) -> Result<BatchOutput, StoreError> {
        let mut out = BatchOutput::default();
        // Decode everything first, so the stored states can be read in one MultiGet.
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

        // The batch's working set: stored state of each reservation it touches,
        // then updated in input order. `None` = not in the store.
        let mut slots: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
        let mut ids: Vec<&str> = Vec::new();
        for (_, c) in &changes {
            slots.entry(c.reservation_id.as_str()).or_insert_with(|| {
                ids.push(c.reservation_id.as_str());
                ids.len() - 1
            });
        }
        let mut current: Vec<Option<ReservationState>> = store.get_many(partition, &ids)?;
        let mut changed = vec![false; ids.len()];

        for (index, change) in &changes {
            let slot = slots[change.reservation_id.as_str()];
            let read_in_full;
            let change = if change.lookup_deferred && current[slot].as_ref().is_none_or(|s| s.state == State::None) {
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
            match machine::apply(&self.pipeline, current[slot].as_ref(), change) {
                Outcome::Stale => out.counts.stale += 1,
                Outcome::Duplicate => out.counts.duplicates += 1,
                Outcome::Unmapped { status, state } => {
                    out.counts.unmapped += 1;
                    if out.unmapped.len() < 10 {
                        out.unmapped.push((change.reservation_id.clone(), status));
                    }
                    current[slot] = Some(state);
                    changed[slot] = true;
                }
                Outcome::Applied { state, events } => {
                    out.counts.events += events.len() as u64;
                    out.events.extend(events.into_iter().map(|e| (*index, e)));
                    current[slot] = Some(state);
                    changed[slot] = true;
                }
            }
        }
        out.states = ids
            .iter()
            .zip(current)
            .zip(changed)
            .filter_map(|((id, state), changed)| if changed { state.map(|s| (id.to_string(), s)) } else { None })
            .collect();
        Ok(out)
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

    /// Runs `lines` through the engine and a fresh store, cut into batches at
    /// `cuts`; returns the events and the final state of every reservation.
    fn run(lines: &[String], cuts: &[usize], store: Option<&mut StateStore>) -> (Vec<BusinessEvent>, Vec<(String, ReservationState)>) {
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
        let e = engine();
        let mut events = Vec::new();
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
            let out = e.process(store, PART, &records).unwrap();
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
                Outcome::Stale | Outcome::Duplicate => {}
            }
        }
        assert!(expected.iter().any(|ev| ev.event_type == "ROOM_CHANGED"));
        assert_eq!(events, expected);
        assert_eq!(states, reference.into_iter().collect::<Vec<_>>());
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
