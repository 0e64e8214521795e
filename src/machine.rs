//! The state machine: `(previous state, change) -> (new state, business events)`.
//!
//! A pure function of the pipeline, the stored state and one normalized
//! change. It imports nothing from tokio, rdkafka, rocksdb or mongodb, reads no
//! clock and does no I/O, so the same input always gives the same output —
//! which is what makes replays, retries and crash recovery safe.
//!
//! The rules around the table (PRODUCT.md) live here: stale and duplicate
//! changes do nothing (a duplicate is told by position and, at an equal
//! position, by the change's identity, since a transaction's changes share
//! one position); snapshots only seed; an update is exactly its delta, and a
//! looked-up full document only seeds a reservation seen for the first time;
//! the allowlist filters emission, never state; event ids are deterministic.

use serde::Serialize;
use sha2::{Digest, Sha256};

use std::cmp::Ordering;

use crate::change::{Change, ChangeId, DocumentValues, Edit, Field, InvalidValue, Operation, SourcePosition};
use crate::pipeline::{EventType, FieldSet, Pipeline, State};
use crate::time;

/// What resevent remembers about one reservation between changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservationState {
    /// The table's state; `State::None` after a delete (a tombstone that keeps
    /// the position, so an older change replayed later stays stale).
    pub state: State,
    /// The raw PMS status value, as business events carry it.
    pub status: Option<String>,
    /// Indexed by `Field as usize`.
    pub fields: [Option<String>; 4],
    /// The newest source position applied; `None` only if no change so far had one.
    pub position: Option<SourcePosition>,
    /// The identities of the changes applied at `position`, in arrival order.
    /// Usually one; several when one transaction changed this reservation
    /// more than once. Emptied when the position moves on. Stored and sent to
    /// the changelog with the state, so a restart in the middle of a
    /// transaction still tells its applied changes from the rest.
    pub applied: Vec<ChangeId>,
    /// The event time (ms) of the last change applied, when it had one:
    /// where retention counts from.
    pub changed_at_ms: Option<i64>,
    /// The timers fired for this reservation: (event type, due time), the
    /// newest 16 kept, so a timer fires once per due time even when a state
    /// or a date comes back to one that fired.
    pub fired: Vec<(EventType, i64)>,
}

impl ReservationState {
    pub fn get(&self, f: Field) -> Option<&str> {
        self.fields[f as usize].as_deref()
    }

    fn values(&self) -> DocumentValues {
        DocumentValues { status: self.status.clone(), fields: self.fields.clone() }
    }
}

/// A business event, in the JSON shape of PRODUCT.md (the Avro schema has the
/// same fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BusinessEvent {
    pub event_id: String,
    pub event_type: &'static str,
    pub reservation_id: String,
    pub property_id: Option<String>,
    pub booking_status: Option<String>,
    pub previous_booking_status: Option<String>,
    pub room_number: Option<String>,
    /// Set only when this change moved the room.
    pub previous_room_number: Option<String>,
    pub arrival_date: Option<String>,
    pub departure_date: Option<String>,
    /// Set only when this change moved the departure date.
    pub previous_departure_date: Option<String>,
    pub occurred_at: Option<String>,
    pub source_position: Option<String>,
    /// The pipeline row that emitted it (for `pipeline diff`); not part of the event.
    #[serde(skip)]
    pub fired_by: Option<FiredBy>,
}

pub use crate::pipeline::FiredBy;

/// What one change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The change is older than the stored position (a stale replay).
    /// Nothing changes, nothing is emitted.
    Stale,
    /// This very change was already applied (same position, same identity):
    /// a re-delivery. Nothing changes, nothing is emitted.
    Duplicate,
    /// The document's status is missing or not mapped by the pipeline. The
    /// stored values stay as they were and nothing is emitted; callers log and
    /// count it (a PMS may add a status before the pipeline knows it). Only
    /// the position advances (`state`), so an older change replayed after this
    /// one is still recognized as stale.
    Unmapped { status: Option<String>, state: ReservationState },
    /// The new state to store, and the events to emit, in order.
    Applied { state: ReservationState, events: Vec<BusinessEvent> },
    /// An update of a reservation seen for the first time, whose looked-up
    /// document (the only seed there is) holds a bad value. Nothing changes;
    /// callers reject the record as they reject a bad record at decode time.
    Invalid(InvalidValue),
}

/// Applies one change to a reservation's stored state.
pub fn apply(pipeline: &Pipeline, prev: Option<&ReservationState>, change: &Change) -> Outcome {
    let mut applied = match order(prev, change) {
        Ok(applied) => applied,
        Err(outcome) => return outcome,
    };
    let live = prev.filter(|p| p.state != State::None);
    let values = match &change.operation {
        Operation::Insert(doc) | Operation::Replace(doc) => Some(doc.clone()),
        Operation::Update { delta, lookup } => {
            // Delta first, fully: for a known reservation the update is its
            // delta and nothing else. The looked-up document is the document
            // when the connector read it, possibly later than this change, so
            // it only seeds a reservation seen for the first time; it never
            // fills a value the stored state lacks (that would hide the change
            // that sets it, and put a later moment into this change's events).
            let mut v = match live {
                Some(p) => p.values(),
                None => match lookup {
                    Some(Ok(doc)) => doc.clone(),
                    // The seed is needed and holds a bad value: rejected,
                    // the stored state stays as it was.
                    Some(Err(bad)) => return Outcome::Invalid(bad.clone()),
                    None => DocumentValues::default(),
                },
            };
            edit(&mut v.status, &delta.status);
            for f in Field::ALL {
                edit(&mut v.fields[f as usize], &delta.fields[f as usize]);
            }
            Some(v)
        }
        Operation::Delete => None,
    };

    let mut position = change.position.or(prev.and_then(|p| p.position));
    // A delete known only by its input position (a tombstone) over a state
    // that has a source position keeps that position, with the delete among
    // the changes applied at it: an input offset cannot be ordered against a
    // cluster time, so storing it would let a replay of the changes before the
    // delete apply again.
    if let (Operation::Delete, Some(SourcePosition::Input(_)), Some(stored @ SourcePosition::Cluster { .. })) = (&change.operation, change.position, prev.and_then(|p| p.position)) {
        position = Some(stored);
        applied = prev.map(|p| p.applied.clone()).unwrap_or_default();
        if !applied.contains(&change.identity) {
            applied.push(change.identity);
        }
    }
    let changed_at_ms = change.occurred_at_ms.or(prev.and_then(|p| p.changed_at_ms));
    let fired = prev.map(|p| p.fired.clone()).unwrap_or_default();
    let new = match values {
        None => ReservationState { state: State::None, status: None, fields: Default::default(), position, applied, changed_at_ms, fired },
        Some(v) => {
            let Some(state) = v.status.as_deref().and_then(|s| pipeline.statuses.get(s)).copied() else {
                let kept = ReservationState { position, applied, ..prev.cloned().unwrap_or_default() };
                return Outcome::Unmapped { status: v.status, state: kept };
            };
            ReservationState { state, status: v.status, fields: v.fields, position, applied, changed_at_ms, fired }
        }
    };
    if change.snapshot {
        return Outcome::Applied { state: new, events: Vec::new() };
    }

    let (from, changed) = transition(live, &new);
    let events = events(pipeline, change, live, &new, from, changed);
    Outcome::Applied { state: new, events }
}

/// The state a change moves from (`live`: the stored state, unless deleted)
/// and the tracked fields it changed: what the table is looked up by. A
/// delete changes no field.
fn transition(live: Option<&ReservationState>, new: &ReservationState) -> (State, FieldSet) {
    let from = live.map_or(State::None, |p| p.state);
    let mut changed = FieldSet::default();
    if new.state != State::None {
        for f in Field::ALL {
            if live.and_then(|p| p.get(f)) != new.get(f) {
                changed.insert(f);
            }
        }
    }
    (from, changed)
}

/// The events the table's rule for (from → new state, changed) emits, if the
/// allowlist lets the reservation's property through.
fn events(pipeline: &Pipeline, change: &Change, live: Option<&ReservationState>, new: &ReservationState, from: State, changed: FieldSet) -> Vec<BusinessEvent> {
    match pipeline.rule_for(from, new.state, changed) {
        None => Vec::new(),
        Some(rule) => {
            // After a delete the event describes the reservation as last known.
            let current = if new.state == State::None { live.unwrap_or(new) } else { new };
            if !pipeline.allowlist.allows(current.get(Field::Property)) {
                Vec::new()
            } else {
                let previous = |f: Field| if changed.contains(f) { live.and_then(|p| p.fields[f as usize].clone()) } else { None };
                rule.emit
                    .iter()
                    .map(|&t| BusinessEvent {
                        event_id: event_id(&change.reservation_id, change.position, change.identity, t, new),
                        event_type: t.name(),
                        reservation_id: change.reservation_id.clone(),
                        property_id: current.fields[Field::Property as usize].clone(),
                        booking_status: new.status.clone(),
                        previous_booking_status: live.and_then(|p| p.status.clone()),
                        room_number: current.fields[Field::Room as usize].clone(),
                        previous_room_number: previous(Field::Room),
                        arrival_date: current.fields[Field::Arrival as usize].clone(),
                        departure_date: current.fields[Field::Departure as usize].clone(),
                        previous_departure_date: previous(Field::Departure),
                        occurred_at: change.occurred_at_ms.map(time::format_millis),
                        source_position: change.position.map(|p| p.to_string()),
                        fired_by: Some(FiredBy::Rule(rule.row)),
                    })
                    .collect()
            }
        }
    }
}

/// Where the change sits against the stored position: whether it applies
/// (`Err`: stale or a duplicate), and which identities the new state
/// remembers at its position.
fn order(prev: Option<&ReservationState>, change: &Change) -> Result<Vec<ChangeId>, Outcome> {
    let mut applied = vec![change.identity];
    if let (Some(new), Some(stored)) = (change.position, prev.and_then(|p| p.position)) {
        // A copy-existing record has only its input position. It cannot be
        // ordered against a change stream position, and the stream's changes
        // are what made the stored state, so such a seed never overwrites it
        // (a re-read of the copy after the stream must change nothing).
        if change.snapshot && matches!((new, stored), (SourcePosition::Input(_), SourcePosition::Cluster { .. })) {
            return Err(Outcome::Stale);
        }
        match new.compare(stored) {
            Some(Ordering::Less) => return Err(Outcome::Stale),
            Some(Ordering::Equal) => {
                let seen = prev.map_or(&[][..], |p| p.applied.as_slice());
                // No identities at a stored position: a state written before
                // identities were kept. Any change there counts as applied,
                // as it did then, so an upgrade re-emits nothing.
                if seen.is_empty() || seen.contains(&change.identity) {
                    return Err(Outcome::Duplicate);
                }
                // Another change of the same transaction: it applies, and the
                // position keeps every identity applied at it.
                applied = seen.iter().copied().chain([change.identity]).collect();
            }
            Some(Ordering::Greater) | None => {}
        }
    }
    Ok(applied)
}

fn edit(slot: &mut Option<String>, e: &Edit) {
    match e {
        Edit::Keep => {}
        Edit::Set(v) => *slot = Some(v.clone()),
        Edit::Remove => *slot = None,
    }
}

/// The same change under the same rule always gets the same id: a hash of
/// the reservation, the change's source position, its identity (two changes
/// of one transaction share a position) and the event type (a change emits
/// each type at most once). A change without a position (callers give every
/// change one; this is the fallback) hashes the state it produced.
pub fn event_id(reservation_id: &str, position: Option<SourcePosition>, identity: ChangeId, t: EventType, new: &ReservationState) -> String {
    let mut h = Sha256::new();
    h.update(reservation_id.as_bytes());
    h.update([0x1f]);
    match position {
        Some(SourcePosition::Cluster { t, i }) => {
            h.update(t.to_be_bytes());
            h.update(i.to_be_bytes());
        }
        Some(SourcePosition::Input(n)) => {
            h.update(b"offset");
            h.update(n.to_be_bytes());
        }
        None => h.update(format!("unpositioned {:?} {:?} {:?}", new.state, new.status, new.fields).as_bytes()),
    }
    h.update([0x1f]);
    h.update(identity.0.to_be_bytes());
    h.update([0x1f]);
    h.update(t.name().as_bytes());
    let digest = h.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests;

/// Why a change emitted what it did (`replay --explain`): worked out from the
/// same inputs as [`apply`] and its outcome, so it cannot disagree with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Explanation {
    /// A row fired: the transition and the fields that changed (the row's
    /// own `changed` is what made it match).
    Fired { from: State, to: State, changed: FieldSet, row: usize, row_requires: FieldSet },
    /// Nothing was emitted, and why.
    NoEvent(NoEvent),
}

/// The reasons a change emits nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoEvent {
    /// Older than the stored position, which it lost to.
    Stale { stored: Option<String> },
    /// This very change was applied already, at the stored position.
    Duplicate { stored: Option<String> },
    /// The status is missing, or a value the pipeline does not map.
    StatusNotMapped { status: Option<String> },
    /// A row matched, but the reservation's property is not in the allowlist.
    PropertyNotAllowed { property: Option<String>, row: usize },
    /// No row for this transition (with these fields changed).
    NoRow { from: State, to: State, changed: FieldSet },
    /// Same state, and none of the fields the table watches changed.
    NothingWatchedChanged { state: State },
    /// The row for this transition emits nothing.
    RowEmitsNothing { from: State, to: State, row: usize },
    /// A delete (or removal) of a reservation that was not there.
    NoDocument,
    /// A snapshot (copy-existing, Debezium `r`) seeds state and emits nothing.
    Snapshot,
    /// The record is rejected (dead-lettered) for a bad value.
    Invalid,
}

impl NoEvent {
    /// The reason's kind, as `--explain=json` writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            NoEvent::Stale { .. } => "stale",
            NoEvent::Duplicate { .. } => "duplicate",
            NoEvent::StatusNotMapped { .. } => "status-not-mapped",
            NoEvent::PropertyNotAllowed { .. } => "property-not-allowed",
            NoEvent::NoRow { .. } => "no-row",
            NoEvent::NothingWatchedChanged { .. } => "nothing-watched-changed",
            NoEvent::RowEmitsNothing { .. } => "row-emits-nothing",
            NoEvent::NoDocument => "no-document",
            NoEvent::Snapshot => "snapshot",
            NoEvent::Invalid => "invalid-value",
        }
    }
}

impl std::fmt::Display for NoEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pos = |p: &Option<String>| p.clone().unwrap_or_else(|| "none".into());
        match self {
            NoEvent::Stale { stored } => write!(f, "stale: older than the stored position {}", pos(stored)),
            NoEvent::Duplicate { stored } => write!(f, "duplicate: already applied at the stored position {}", pos(stored)),
            NoEvent::StatusNotMapped { status: Some(s) } => write!(f, "status {s:?} is not mapped by the pipeline ([statuses])"),
            NoEvent::StatusNotMapped { status: None } => write!(f, "the document has no status"),
            NoEvent::PropertyNotAllowed { property, row } => write!(f, "property {} is not in the allowlist (rule #{row} matched)", property.as_deref().unwrap_or("(none)")),
            NoEvent::NoRow { from, to, changed } => write!(f, "no row for {} → {} with {} changed", from.name(), to.name(), fields_text(*changed)),
            NoEvent::NothingWatchedChanged { state } => write!(f, "still {}, and none of the fields the table watches changed", state.name()),
            NoEvent::RowEmitsNothing { from, to, row } => write!(f, "rule #{row} for {} → {} emits nothing", from.name(), to.name()),
            NoEvent::NoDocument => write!(f, "about no document: a delete of a reservation that was not there"),
            NoEvent::Snapshot => write!(f, "a snapshot record: it seeds the state and emits nothing"),
            NoEvent::Invalid => write!(f, "rejected for a bad value"),
        }
    }
}

/// The fields of a set, by name (`room, departure`; `no field`).
pub fn fields_text(set: FieldSet) -> String {
    let names: Vec<&str> = Field::ALL.iter().filter(|f| set.contains(**f)).map(|f| f.name()).collect();
    if names.is_empty() { "no field".into() } else { names.join(", ") }
}

/// The explanation of `outcome`, which [`apply`] gave for `change` over `prev`.
pub fn explain(pipeline: &Pipeline, prev: Option<&ReservationState>, change: &Change, outcome: &Outcome) -> Explanation {
    let stored = || prev.and_then(|p| p.position).map(|p| p.to_string());
    let new = match outcome {
        Outcome::Stale => return Explanation::NoEvent(NoEvent::Stale { stored: stored() }),
        Outcome::Duplicate => return Explanation::NoEvent(NoEvent::Duplicate { stored: stored() }),
        Outcome::Unmapped { status, .. } => return Explanation::NoEvent(NoEvent::StatusNotMapped { status: status.clone() }),
        Outcome::Invalid(_) => return Explanation::NoEvent(NoEvent::Invalid),
        Outcome::Applied { state, .. } => state,
    };
    if change.snapshot {
        return Explanation::NoEvent(NoEvent::Snapshot);
    }
    let live = prev.filter(|p| p.state != State::None);
    let (from, changed) = transition(live, new);
    match pipeline.rule_for(from, new.state, changed) {
        None if from == State::None && new.state == State::None => Explanation::NoEvent(NoEvent::NoDocument),
        None if from == new.state && changed.is_empty() => Explanation::NoEvent(NoEvent::NothingWatchedChanged { state: from }),
        None => Explanation::NoEvent(NoEvent::NoRow { from, to: new.state, changed }),
        Some(rule) if rule.emit.is_empty() => Explanation::NoEvent(NoEvent::RowEmitsNothing { from, to: new.state, row: rule.row }),
        Some(rule) => {
            let current = if new.state == State::None { live.unwrap_or(new) } else { new };
            if pipeline.allowlist.allows(current.get(Field::Property)) {
                Explanation::Fired { from, to: new.state, changed, row: rule.row, row_requires: rule.changed }
            } else {
                Explanation::NoEvent(NoEvent::PropertyNotAllowed { property: current.get(Field::Property).map(str::to_owned), row: rule.row })
            }
        }
    }
}
