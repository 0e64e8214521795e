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
use crate::pipeline::Pipeline;
use crate::store::{StateBatch, StateStore, StoreError};

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
    /// The batch's state changes, ready for [`StateStore::commit`].
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
    /// store; writes nothing.
    pub fn process(&self, store: &StateStore, partition: &str, records: &[InputRecord<'_>]) -> Result<BatchOutput, StoreError> {
        let mut out = BatchOutput::default();
        // States changed earlier in this batch shadow the store.
        let mut touched: HashMap<String, usize> = HashMap::new();
        for (index, rec) in records.iter().enumerate() {
            out.counts.records += 1;
            let mut change = match self.decoder.decode(rec.key, rec.value) {
                Ok(Decoded::Change(c)) => c,
                Ok(Decoded::Ignored(_)) => {
                    out.counts.ignored += 1;
                    continue;
                }
                Err(error) => {
                    out.counts.rejected += 1;
                    out.rejected.push(Rejected { index, offset: rec.offset, error });
                    continue;
                }
            };
            out.counts.changes += 1;
            // A record without a source position is ordered by its input position.
            change.position.get_or_insert(SourcePosition::Input(rec.offset));

            let slot = touched.get(&change.reservation_id).copied();
            let prev = match slot {
                Some(i) => Some(out.states[i].1.clone()),
                None => store.get(partition, &change.reservation_id)?,
            };
            match machine::apply(&self.pipeline, prev.as_ref(), &change) {
                Outcome::Stale => out.counts.stale += 1,
                Outcome::Unmapped { status, state } => {
                    out.counts.unmapped += 1;
                    if out.unmapped.len() < 10 {
                        out.unmapped.push((change.reservation_id.clone(), status));
                    }
                    remember(&mut out.states, &mut touched, slot, change.reservation_id, state);
                }
                Outcome::Applied { state, events } => {
                    out.counts.events += events.len() as u64;
                    out.events.extend(events.into_iter().map(|e| (index, e)));
                    remember(&mut out.states, &mut touched, slot, change.reservation_id, state);
                }
            }
        }
        Ok(out)
    }
}

/// Records a reservation's new state in the batch, first-touch order.
fn remember(states: &mut Vec<(String, ReservationState)>, touched: &mut HashMap<String, usize>, slot: Option<usize>, id: String, state: ReservationState) {
    match slot {
        Some(i) => states[i].1 = state,
        None => {
            touched.insert(id.clone(), states.len());
            states.push((id, state));
        }
    }
}
