//! The default table row by row, the rules around it, and properties over
//! arbitrary sequences of changes.

use super::*;
use crate::change::{ChangeId, Delta, DocumentValues, Edit};
use crate::pipeline::Allowlist;
use proptest::prelude::*;

const NA: &str = "Not Arrived";
const IN: &str = "Arrived";
const OUT: &str = "Departure";

fn doc(status: &str, room: &str, departure: &str) -> DocumentValues {
    DocumentValues {
        status: Some(status.into()),
        fields: [Some("P-OSL-01".into()), Some(room.into()), Some("2026-11-20T00:00:00Z".into()), Some(departure.into())],
    }
}

fn state(status: &str, room: &str, departure: &str, t: u32) -> ReservationState {
    let d = doc(status, room, departure);
    let st = Pipeline::builtin().statuses[status];
    ReservationState { state: st, status: d.status, fields: d.fields, position: Some(SourcePosition::Cluster { t, i: 0 }), applied: vec![ChangeId(u64::from(t))], changed_at_ms: Some(i64::from(t) * 1000), ..Default::default() }
}

/// A change known by what it does (as Debezium's are), outside any transaction.
fn change(op: Operation, t: u32) -> Change {
    let identity = ChangeId::of_operation(&op, None);
    Change { reservation_id: "r1".into(), operation: op, position: Some(SourcePosition::Cluster { t, i: 0 }), occurred_at_ms: Some(i64::from(t) * 1000), snapshot: false, identity, lookup_deferred: false }
}

/// The same, with a resume token of its own (as the MongoDB connector's are).
fn token_change(op: Operation, t: u32, token: &str) -> Change {
    Change { identity: ChangeId::of(&[b"resume-token", token.as_bytes()]), ..change(op, t) }
}

fn unset(room: bool, departure: bool) -> Operation {
    let e = |b: bool| if b { Edit::Remove } else { Edit::Keep };
    Operation::Update { delta: Delta { status: Edit::Keep, fields: [Edit::Keep, e(room), Edit::Keep, e(departure)] }, lookup: None }
}

/// An update as the connector with `updateLookup` writes it: the delta and the looked-up document.
fn with_lookup(op: Operation, lookup: DocumentValues) -> Operation {
    match op {
        Operation::Update { delta, .. } => Operation::Update { delta, lookup: Some(Ok(lookup)) },
        other => other,
    }
}

/// Applies changes in order from `prev`; returns every event and the final state.
fn sequence(prev: Option<ReservationState>, changes: &[Change]) -> (Vec<BusinessEvent>, Option<ReservationState>) {
    let p = Pipeline::builtin();
    let mut state = prev;
    let mut out = Vec::new();
    for c in changes {
        match apply(&p, state.as_ref(), c) {
            Outcome::Applied { state: s, events } => {
                state = Some(s);
                out.extend(events);
            }
            Outcome::Unmapped { state: s, .. } => state = Some(s),
            Outcome::Stale | Outcome::Duplicate | Outcome::Invalid(_) => {}
        }
    }
    (out, state)
}

fn set(status: Option<&str>, room: Option<&str>, departure: Option<&str>) -> Operation {
    let e = |v: Option<&str>| v.map_or(Edit::Keep, |v| Edit::Set(v.into()));
    Operation::Update { delta: Delta { status: e(status), fields: [Edit::Keep, e(room), Edit::Keep, e(departure)] }, lookup: None }
}

fn events(prev: Option<&ReservationState>, c: &Change) -> Vec<BusinessEvent> {
    match apply(&Pipeline::builtin(), prev, c) {
        Outcome::Applied { events, .. } => events,
        other => panic!("expected Applied, got {other:?}"),
    }
}

fn types(prev: Option<&ReservationState>, c: &Change) -> Vec<&'static str> {
    events(prev, c).iter().map(|e| e.event_type).collect()
}

const D1: &str = "2026-11-24T00:00:00Z";
const D2: &str = "2026-11-25T00:00:00Z";

#[test]
fn every_row_of_the_default_table() {
    let ins = |s| Operation::Insert(doc(s, "101", D1));
    // (row, previous state, change, expected event types)
    let rows: Vec<(&str, Option<ReservationState>, Operation, Vec<&str>)> = vec![
        ("NONE → NOT_ARRIVED", None, ins(NA), vec![]),
        ("NONE → DEPARTED", None, ins(OUT), vec![]),
        ("NONE → IN_HOUSE (walk-in)", None, ins(IN), vec!["CHECKED_IN"]),
        ("NOT_ARRIVED → IN_HOUSE", Some(state(NA, "101", D1, 1)), set(Some(IN), None, None), vec!["CHECKED_IN"]),
        ("IN_HOUSE → IN_HOUSE, room", Some(state(IN, "101", D1, 1)), set(None, Some("305"), None), vec!["ROOM_CHANGED"]),
        ("IN_HOUSE → IN_HOUSE, departure", Some(state(IN, "101", D1, 1)), set(None, None, Some(D2)), vec!["DEPARTURE_CHANGED"]),
        ("IN_HOUSE → IN_HOUSE, both", Some(state(IN, "101", D1, 1)), set(None, Some("305"), Some(D2)), vec!["ROOM_CHANGED", "DEPARTURE_CHANGED"]),
        ("IN_HOUSE → DEPARTED", Some(state(IN, "101", D1, 1)), set(Some(OUT), None, None), vec!["CHECKED_OUT"]),
        ("DEPARTED → IN_HOUSE", Some(state(OUT, "101", D1, 1)), set(Some(IN), None, None), vec!["ACCIDENTAL_CHECKOUT"]),
        ("IN_HOUSE → NOT_ARRIVED", Some(state(IN, "101", D1, 1)), set(Some(NA), None, None), vec!["CHECKIN_REVERSED"]),
        ("NOT_ARRIVED → DEPARTED", Some(state(NA, "101", D1, 1)), set(Some(OUT), None, None), vec!["CHECKED_OUT"]),
        ("IN_HOUSE → deleted", Some(state(IN, "101", D1, 1)), Operation::Delete, vec!["CHECKED_OUT"]),
        ("NOT_ARRIVED edits", Some(state(NA, "101", D1, 1)), set(None, Some("305"), Some(D2)), vec![]),
        ("DEPARTED → DEPARTED", Some(state(OUT, "101", D1, 1)), set(Some(OUT), Some("305"), None), vec![]),
        ("IN_HOUSE, other fields", Some(state(IN, "101", D1, 1)), set(Some(IN), None, None), vec![]),
        ("NOT_ARRIVED → deleted", Some(state(NA, "101", D1, 1)), Operation::Delete, vec![]),
        ("DEPARTED → deleted", Some(state(OUT, "101", D1, 1)), Operation::Delete, vec![]),
        ("NONE → deleted", None, Operation::Delete, vec![]),
        ("IN_HOUSE replaced in house, same values", Some(state(IN, "101", D1, 1)), Operation::Replace(doc(IN, "101", D1)), vec![]),
        ("IN_HOUSE replaced with a new room", Some(state(IN, "101", D1, 1)), Operation::Replace(doc(IN, "202", D1)), vec!["ROOM_CHANGED"]),
    ];
    for (row, prev, op, expected) in rows {
        assert_eq!(types(prev.as_ref(), &change(op, 5)), expected, "row {row}");
    }
}

#[test]
fn room_and_departure_events_carry_previous_values_and_the_state_after() {
    let prev = state(IN, "101", D1, 1);
    let evs = events(Some(&prev), &change(set(None, Some("305"), Some(D2)), 5));
    for e in &evs {
        assert_eq!(e.room_number.as_deref(), Some("305"));
        assert_eq!(e.departure_date.as_deref(), Some(D2));
        assert_eq!(e.previous_room_number.as_deref(), Some("101"));
        assert_eq!(e.previous_departure_date.as_deref(), Some(D1));
        assert_eq!(e.booking_status.as_deref(), Some(IN));
        assert_eq!(e.previous_booking_status.as_deref(), Some(IN));
        assert_eq!(e.source_position.as_deref(), Some("5:0"));
        assert_eq!(e.occurred_at.as_deref(), Some("1970-01-01T00:00:05Z"));
    }
    let only_room = events(Some(&prev), &change(set(None, Some("305"), None), 5));
    assert_eq!(only_room[0].previous_departure_date, None, "departure did not change");
}

#[test]
fn a_delete_reports_the_last_known_reservation() {
    let prev = state(IN, "101", D1, 1);
    let e = &events(Some(&prev), &change(Operation::Delete, 5))[0];
    assert_eq!(e.booking_status, None);
    assert_eq!(e.previous_booking_status.as_deref(), Some(IN));
    assert_eq!(e.room_number.as_deref(), Some("101"));
    assert_eq!(e.property_id.as_deref(), Some("P-OSL-01"));
}

#[test]
fn stale_and_duplicate_changes_do_nothing() {
    let p = Pipeline::builtin();
    let prev = state(IN, "101", D1, 5);
    let checkout = change(set(Some(OUT), None, None), 5);
    let Outcome::Applied { state: after, .. } = apply(&p, Some(&prev), &checkout) else { panic!("another change at the same position applies") };
    assert_eq!(apply(&p, Some(&after), &checkout), Outcome::Duplicate, "the very same change again");
    assert_eq!(apply(&p, Some(&prev), &change(set(Some(OUT), None, None), 4)), Outcome::Stale, "older position");
    // A state stored before identities were kept: any change at its position counts as applied.
    let legacy = ReservationState { applied: Vec::new(), ..prev.clone() };
    assert_eq!(apply(&p, Some(&legacy), &checkout), Outcome::Duplicate);
    // A delete keeps its position: an older change replayed after it stays stale.
    let Outcome::Applied { state: tomb, .. } = apply(&p, Some(&prev), &change(Operation::Delete, 6)) else { panic!() };
    assert_eq!(tomb.state, State::None);
    assert_eq!(tomb.position, Some(SourcePosition::Cluster { t: 6, i: 0 }));
    assert_eq!(apply(&p, Some(&tomb), &change(Operation::Insert(doc(IN, "101", D1)), 3)), Outcome::Stale);
    // Same second, higher increment is newer.
    let mut c = change(set(Some(OUT), None, None), 5);
    c.position = Some(SourcePosition::Cluster { t: 5, i: 1 });
    assert_eq!(types(Some(&prev), &c), vec!["CHECKED_OUT"]);
}

#[test]
fn snapshots_and_copy_existing_only_seed() {
    let mut c = change(Operation::Insert(doc(IN, "101", D1)), 5);
    c.snapshot = true;
    let Outcome::Applied { state, events } = apply(&Pipeline::builtin(), None, &c) else { panic!() };
    assert!(events.is_empty());
    assert_eq!(state.state, State::InHouse);
    // The next real change is judged against the seeded state.
    assert_eq!(types(Some(&state), &change(set(Some(OUT), None, None), 6)), vec!["CHECKED_OUT"]);
}

#[test]
fn a_copy_existing_seed_never_overwrites_state_from_the_change_stream() {
    let p = Pipeline::builtin();
    let prev = state(IN, "101", D1, 5);
    let mut seed = change(Operation::Insert(doc(NA, "101", D1)), 0);
    seed.snapshot = true;
    seed.position = Some(SourcePosition::Input(1));
    assert_eq!(apply(&p, Some(&prev), &seed), Outcome::Stale);
    // ... but it seeds an unknown reservation, and a stream change follows it.
    let Outcome::Applied { state, .. } = apply(&p, None, &seed) else { panic!() };
    assert_eq!(types(Some(&state), &change(set(Some(IN), None, None), 6)), vec!["CHECKED_IN"]);
}

#[test]
fn the_delta_wins_over_a_later_looked_up_document() {
    // Last night's room change, read by a connector catching up after the
    // morning's checkout: fullDocument already says Departure, room 410.
    let prev = state(IN, "101", D1, 1);
    let later = doc(OUT, "410", D2);
    let op = Operation::Update { delta: Delta { fields: [Edit::Keep, Edit::Set("305".into()), Edit::Keep, Edit::Keep], ..Default::default() }, lookup: Some(Ok(later)) };
    let Outcome::Applied { state, events } = apply(&Pipeline::builtin(), Some(&prev), &change(op, 5)) else { panic!() };
    assert_eq!(events.iter().map(|e| e.event_type).collect::<Vec<_>>(), vec!["ROOM_CHANGED"]);
    assert_eq!(state.state, State::InHouse);
    assert_eq!(state.get(Field::Room), Some("305"));
    assert_eq!(state.get(Field::Departure), Some(D1));
}

#[test]
fn a_looked_up_document_seeds_only_a_first_seen_reservation() {
    let op = Operation::Update { delta: Delta { fields: [Edit::Keep, Edit::Set("305".into()), Edit::Keep, Edit::Keep], ..Default::default() }, lookup: Some(Ok(doc(IN, "410", D2))) };
    let Outcome::Applied { state, events } = apply(&Pipeline::builtin(), None, &change(op, 5)) else { panic!() };
    assert_eq!(events.iter().map(|e| e.event_type).collect::<Vec<_>>(), vec!["CHECKED_IN"]);
    assert_eq!(state.get(Field::Room), Some("305"));
    assert_eq!(state.get(Field::Departure), Some(D2));

    // A known reservation missing its departure does not take it from the
    // lookup: a field the delta does not name keeps its stored value, even empty.
    let prev = state_without_departure();
    let op = Operation::Update { delta: Delta { fields: [Edit::Keep, Edit::Set("305".into()), Edit::Keep, Edit::Keep], ..Default::default() }, lookup: Some(Ok(doc(IN, "999", D2))) };
    let Outcome::Applied { state, events } = apply(&Pipeline::builtin(), Some(&prev), &change(op, 5)) else { panic!() };
    assert_eq!(events.iter().map(|e| e.event_type).collect::<Vec<_>>(), vec!["ROOM_CHANGED"]);
    assert_eq!(state.get(Field::Departure), None);
    assert_eq!(state.get(Field::Room), Some("305"));
}

#[test]
fn a_room_set_after_it_was_empty_is_a_room_change() {
    let mut no_room = doc(IN, "7", D1);
    let with_room = |r: &str| DocumentValues { fields: [Some("P-OSL-01".into()), Some(r.into()), Some("2026-11-20T00:00:00Z".into()), Some(D1.into())], ..doc(IN, r, D1) };
    no_room.fields[Field::Room as usize] = None;
    // Checked in to room 7, room removed, room 8 set (each update with its looked-up document).
    let (events, state) = sequence(
        None,
        &[
            token_change(Operation::Insert(with_room("7")), 1, "a"),
            token_change(with_lookup(unset(true, false), no_room.clone()), 2, "b"),
            token_change(with_lookup(set(None, Some("8"), None), with_room("8")), 3, "c"),
        ],
    );
    let got: Vec<_> = events.iter().map(|e| (e.event_type, e.room_number.as_deref(), e.previous_room_number.as_deref())).collect();
    assert_eq!(got, vec![("CHECKED_IN", Some("7"), None), ("ROOM_CHANGED", None, Some("7")), ("ROOM_CHANGED", Some("8"), None)]);
    assert_eq!(state.unwrap().get(Field::Room), Some("8"));

    // Inserted without a room; a later update sets it, while the connector lags:
    // the lookup already shows room 8, the check-in must not.
    let (events, _) = sequence(None, &[token_change(Operation::Insert(no_room), 1, "a"), token_change(with_lookup(set(None, Some("8"), None), with_room("8")), 2, "b")]);
    let got: Vec<_> = events.iter().map(|e| (e.event_type, e.room_number.as_deref(), e.previous_room_number.as_deref())).collect();
    assert_eq!(got, vec![("CHECKED_IN", None, None), ("ROOM_CHANGED", Some("8"), None)]);
}

#[test]
fn every_change_of_one_transaction_applies_once() {
    // A front-desk transaction checks the guest in, then assigns the room:
    // both changes carry the commit's cluster time.
    let reserved = { let mut d = doc(NA, "x", D1); d.fields[Field::Room as usize] = None; d };
    let insert = token_change(Operation::Insert(reserved), 1, "t0");
    let check_in = token_change(set(Some(IN), None, None), 9, "t1");
    let assign = token_change(set(None, Some("305"), None), 9, "t2");
    let (events, stored) = sequence(None, &[insert.clone(), check_in.clone(), assign.clone()]);
    assert_eq!(events.iter().map(|e| e.event_type).collect::<Vec<_>>(), vec!["CHECKED_IN", "ROOM_CHANGED"]);
    let stored = stored.unwrap();
    assert_eq!(stored.applied.len(), 2, "both identities kept at the shared position");
    // A connector restart re-delivers the whole transaction, and a late older change arrives: nothing.
    let (again, after) = sequence(Some(stored.clone()), &[check_in, assign, insert]);
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(after.unwrap(), stored);
    // The next position drops the identities of the old one.
    let (_, next) = sequence(Some(stored), &[token_change(set(None, None, Some(D2)), 10, "t3")]);
    assert_eq!(next.unwrap().applied.len(), 1);

    // Two room moves and a stay extension in one transaction are three events with distinct ids.
    let prev = state(IN, "101", D1, 1);
    let (events, _) = sequence(Some(prev), &[change(set(None, Some("202"), None), 5), change(set(None, Some("303"), None), 5), change(set(None, None, Some(D2)), 5)]);
    assert_eq!(events.iter().map(|e| e.event_type).collect::<Vec<_>>(), vec!["ROOM_CHANGED", "ROOM_CHANGED", "DEPARTURE_CHANGED"]);
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), 3);
}

fn state_without_departure() -> ReservationState {
    let mut s = state(IN, "101", D1, 1);
    s.fields[Field::Departure as usize] = None;
    s
}

#[test]
fn the_allowlist_filters_events_but_not_state() {
    let mut p = Pipeline::builtin();
    p.allowlist = Allowlist::Only(vec!["P-BGO-02".into()]);
    let Outcome::Applied { state, events } = apply(&p, None, &change(Operation::Insert(doc(IN, "101", D1)), 5)) else { panic!() };
    assert!(events.is_empty());
    assert_eq!(state.state, State::InHouse);
    // The property is added later: its next change gets correct events.
    p.allowlist = Allowlist::Only(vec!["P-OSL-01".into()]);
    let Outcome::Applied { events, .. } = apply(&p, Some(&state), &change(set(Some(OUT), None, None), 6)) else { panic!() };
    assert_eq!(events[0].event_type, "CHECKED_OUT");
}

#[test]
fn unmapped_or_missing_status_leaves_state_as_it_was() {
    let p = Pipeline::builtin();
    let prev = state(IN, "101", D1, 1);
    let Outcome::Unmapped { status, state: kept } = apply(&p, Some(&prev), &change(set(Some("Cancelled"), Some("305"), None), 5)) else { panic!() };
    assert_eq!(status.as_deref(), Some("Cancelled"));
    let c = change(set(Some("Cancelled"), Some("305"), None), 5);
    assert_eq!(kept, ReservationState { position: Some(SourcePosition::Cluster { t: 5, i: 0 }), applied: vec![c.identity], ..prev.clone() });
    // An older change replayed after it is still stale.
    assert_eq!(apply(&p, Some(&kept), &change(set(Some(OUT), None, None), 4)), Outcome::Stale);
    let mut nostatus = doc(IN, "101", D1);
    nostatus.status = None;
    assert!(matches!(apply(&p, None, &change(Operation::Insert(nostatus), 5)), Outcome::Unmapped { status: None, .. }));
}

#[test]
fn event_ids_are_deterministic_and_distinct() {
    let prev = state(IN, "101", D1, 1);
    let c = change(set(None, Some("305"), Some(D2)), 5);
    let a = events(Some(&prev), &c);
    let b = events(Some(&prev), &c);
    assert_eq!(a, b);
    assert_ne!(a[0].event_id, a[1].event_id, "two types from one change");
    let later = events(Some(&prev), &change(set(None, Some("305"), Some(D2)), 6));
    assert_ne!(a[0].event_id, later[0].event_id, "same type, different change");
    assert_eq!(a[0].event_id.len(), 32);
}

// ---- properties over arbitrary sequences ----

/// A small universe so sequences revisit the same reservations and values.
fn arb_change(statuses: Vec<&'static str>) -> impl Strategy<Value = Change> {
    let status = prop::sample::select(statuses);
    let room = prop::sample::select(vec!["101", "202", "303"]);
    let dep = prop::sample::select(vec![D1, D2]);
    let op = prop_oneof![
        (status.clone(), room.clone(), dep.clone()).prop_map(|(s, r, d)| Operation::Insert(doc(s, r, d))),
        (status.clone(), room.clone(), dep.clone()).prop_map(|(s, r, d)| Operation::Replace(doc(s, r, d))),
        (prop::option::of(status), prop::option::of(room), prop::option::of(dep)).prop_map(|(s, r, d)| set(s, r, d)),
        Just(Operation::Delete),
    ];
    // Positions from a small range, so that several changes share one (a
    // transaction's changes all carry the commit's cluster time).
    (prop::sample::select(vec!["a", "b", "c"]), op, 1u32..40, any::<bool>()).prop_map(|(id, op, t, snap)| Change {
        reservation_id: id.into(),
        identity: ChangeId::of_operation(&op, None),
        operation: op,
        position: Some(SourcePosition::Cluster { t, i: 0 }),
        occurred_at_ms: None,
        snapshot: snap && t % 7 == 0,
        lookup_deferred: false,
    })
}

/// Runs changes through the machine over an in-memory map of states.
fn run(states: &mut std::collections::BTreeMap<String, ReservationState>, changes: &[Change]) -> Vec<BusinessEvent> {
    let p = Pipeline::builtin();
    let mut out = Vec::new();
    for c in changes {
        match apply(&p, states.get(&c.reservation_id), c) {
            Outcome::Applied { state, events } => {
                states.insert(c.reservation_id.clone(), state);
                out.extend(events);
            }
            Outcome::Unmapped { state, .. } => {
                states.insert(c.reservation_id.clone(), state);
            }
            Outcome::Stale | Outcome::Duplicate | Outcome::Invalid(_) => {}
        }
    }
    out
}

proptest! {
    #[test]
    fn replaying_a_sequence_again_emits_nothing(changes in prop::collection::vec(arb_change(vec![NA, IN, OUT, "Cancelled"]), 0..60)) {
        let mut states = Default::default();
        run(&mut states, &changes);
        let before = states.clone();
        prop_assert!(run(&mut states, &changes).is_empty());
        prop_assert_eq!(states, before);
    }

    #[test]
    fn duplicates_and_stale_changes_change_nothing(changes in prop::collection::vec(arb_change(vec![NA, IN, OUT, "Cancelled"]), 0..60)) {
        // Keep, per reservation, the changes newer than every earlier one, and
        // those at the newest position that are not a repeat of one kept there.
        let mut newest: std::collections::HashMap<String, (SourcePosition, Vec<ChangeId>)> = Default::default();
        let mut deduped = Vec::new();
        for c in &changes {
            let pos = c.position.unwrap();
            let keep = match newest.get_mut(&c.reservation_id) {
                None => true,
                Some((n, ids)) if pos == *n => !ids.contains(&c.identity),
                Some((n, _)) => pos.is_after(*n),
            };
            if keep {
                let entry = newest.entry(c.reservation_id.clone()).or_insert((pos, Vec::new()));
                if entry.0 != pos {
                    *entry = (pos, Vec::new());
                }
                entry.1.push(c.identity);
                deduped.push(c.clone());
            }
        }
        let (mut a, mut b) = (Default::default(), Default::default());
        let ea = run(&mut a, &changes);
        let eb = run(&mut b, &deduped);
        prop_assert_eq!(a, b);
        prop_assert_eq!(ea, eb);
    }
}

/// An update's delta over tracked fields: keep, set to a value, or remove.
fn arb_delta() -> impl Strategy<Value = Delta> {
    let edit = |values: Vec<&'static str>| prop_oneof![Just(Edit::Keep), Just(Edit::Remove), prop::sample::select(values).prop_map(|v| Edit::Set(v.into()))];
    (edit(vec![NA, IN, OUT]), edit(vec!["101", "202"]), edit(vec![D1, D2])).prop_map(|(status, room, dep)| Delta { status, fields: [Edit::Keep, room, Edit::Keep, dep] })
}

fn arb_values() -> impl Strategy<Value = DocumentValues> {
    let opt = |values: Vec<&'static str>| prop::option::of(prop::sample::select(values).prop_map(String::from));
    (opt(vec![NA, IN, OUT]), opt(vec!["101", "202"]), opt(vec![D1, D2]))
        .prop_map(|(status, room, dep)| DocumentValues { status, fields: [Some("P-OSL-01".into()), room, Some("2026-11-20T00:00:00Z".into()), dep] })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For any stored state, delta and looked-up document, the fields reported
    /// as changed are exactly those whose delta value differs from the stored
    /// one, and the new state is the stored one with the delta applied.
    #[test]
    fn an_update_reports_exactly_what_its_delta_changed(stored in arb_values(), delta in arb_delta(), lookup in prop::option::of(arb_values())) {
        let p = Pipeline::builtin();
        let Some(st) = stored.status.as_deref().map(|s| p.statuses[s]) else { return Ok(()) };
        let prev = ReservationState { state: st, status: stored.status.clone(), fields: stored.fields.clone(), position: Some(SourcePosition::Cluster { t: 1, i: 0 }), applied: vec![ChangeId(1)], ..Default::default() };
        let c = change(Operation::Update { delta: delta.clone(), lookup: lookup.map(Ok) }, 2);
        let expect = |before: &Option<String>, e: &Edit| match e {
            Edit::Keep => before.clone(),
            Edit::Remove => None,
            Edit::Set(v) => Some(v.clone()),
        };
        let new_status = expect(&stored.status, &delta.status);
        let new_room = expect(&stored.fields[Field::Room as usize], &delta.fields[Field::Room as usize]);
        let new_dep = expect(&stored.fields[Field::Departure as usize], &delta.fields[Field::Departure as usize]);
        match apply(&p, Some(&prev), &c) {
            Outcome::Applied { state, events } => {
                prop_assert_eq!(&state.status, &new_status);
                prop_assert_eq!(&state.fields[Field::Room as usize], &new_room);
                prop_assert_eq!(&state.fields[Field::Departure as usize], &new_dep);
                if st == State::InHouse && state.state == State::InHouse {
                    let room_changed = new_room != stored.fields[Field::Room as usize];
                    let dep_changed = new_dep != stored.fields[Field::Departure as usize];
                    let types: Vec<_> = events.iter().map(|e| e.event_type).collect();
                    let mut expected = Vec::new();
                    if room_changed { expected.push("ROOM_CHANGED"); }
                    if dep_changed { expected.push("DEPARTURE_CHANGED"); }
                    prop_assert_eq!(types, expected);
                    for e in &events {
                        prop_assert_eq!(&e.previous_room_number, if room_changed { &stored.fields[Field::Room as usize] } else { &None });
                        prop_assert_eq!(&e.previous_departure_date, if dep_changed { &stored.fields[Field::Departure as usize] } else { &None });
                    }
                }
            }
            Outcome::Unmapped { .. } => prop_assert!(new_status.is_none()),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    /// Replaying any prefix of a stream with transactions (changes sharing a
    /// position) emits nothing new and changes no state.
    #[test]
    fn replaying_any_prefix_emits_nothing(changes in prop::collection::vec(arb_change(vec![NA, IN, OUT]), 0..60), cut in any::<prop::sample::Index>()) {
        let mut states = Default::default();
        run(&mut states, &changes);
        let before = states.clone();
        let prefix = &changes[..cut.index(changes.len() + 1)];
        prop_assert!(run(&mut states, prefix).is_empty());
        prop_assert_eq!(states, before);
    }
}

#[test]
fn a_tombstone_delete_keeps_the_source_position_so_earlier_changes_stay_stale() {
    let p = Pipeline::builtin();
    let insert = token_change(Operation::Insert(doc(IN, "412", "2026-11-23T00:00:00Z")), 5, "a");
    let Outcome::Applied { state: seated, .. } = apply(&p, None, &insert) else { panic!("applies") };
    // A tombstone: known only by its input offset.
    let tombstone = Change { position: Some(SourcePosition::Input(2)), occurred_at_ms: None, ..change(Operation::Delete, 0) };
    let Outcome::Applied { state: deleted, events } = apply(&p, Some(&seated), &tombstone) else { panic!("applies") };
    assert_eq!(events.iter().map(|e| e.event_type).collect::<Vec<_>>(), vec!["CHECKED_OUT"]);
    assert_eq!(deleted.position, Some(SourcePosition::Cluster { t: 5, i: 0 }), "the cluster position stays");
    // The insert, read again (a replay, a connector restart): a duplicate, not a new guest.
    assert_eq!(apply(&p, Some(&deleted), &insert), Outcome::Duplicate);
    assert_eq!(apply(&p, Some(&deleted), &token_change(Operation::Insert(doc(IN, "412", "2026-11-23T00:00:00Z")), 4, "b")), Outcome::Stale);
    // A new insert after the delete applies.
    let again = token_change(Operation::Insert(doc(IN, "415", "2026-11-23T00:00:00Z")), 6, "c");
    assert!(matches!(apply(&p, Some(&deleted), &again), Outcome::Applied { events, .. } if events[0].event_type == "CHECKED_IN"));
}

#[test]
fn a_bad_looked_up_document_rejects_only_the_change_that_needs_it() {
    use crate::change::InvalidValue;
    let p = Pipeline::builtin();
    let bad = InvalidValue { field: Field::Room, path: "roomNumber".into(), place: "fullDocument", value: "{\"a\":1}".into(), expected: "a room number" };
    let mut c = change(set(Some("Arrived"), None, None), 9);
    let Operation::Update { lookup, .. } = &mut c.operation else { unreachable!() };
    *lookup = Some(Err(bad.clone()));
    // First seen: the looked-up document is the only seed there is.
    assert_eq!(apply(&p, None, &c), Outcome::Invalid(bad));
    // Known: the delta alone applies and the lookup is never read.
    let (_, known) = sequence(None, &[change(Operation::Insert(doc(NA, "101", D1)), 5)]);
    assert!(matches!(apply(&p, known.as_ref(), &c), Outcome::Applied { .. }));
}
