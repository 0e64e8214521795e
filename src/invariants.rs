//! The promises resevent keeps whatever bytes arrive, as code: the property
//! tests below and the fuzz target (`fuzz/`, see README "Fuzzing") both hold
//! the decoders and the engine to them.
//!
//! - No panic, whatever the bytes.
//! - Every business event has RFC 3339 UTC dates or null, a non-empty
//!   reservation id, and a room number that is text, not JSON (no `{`, `[`).
//! - A rejected record leaves the state as it was.
//!
//! State lives in a map here ([`MemoryState`]), not RocksDB: the properties
//! are about the decoders and the engine, and a map runs them thousands of
//! times a second.

use std::collections::BTreeMap;

use crate::change::FieldPaths;
use crate::decode::{Decoder, Format};
use crate::engine::{Engine, InputRecord};
use crate::machine::{BusinessEvent, ReservationState};
use crate::pipeline::Pipeline;
use crate::state::store::{StateSource, StoreError};
use crate::timers::{Pending, StreamClock};

/// Reservation states in memory, for the checks.
#[derive(Default)]
pub struct MemoryState(pub BTreeMap<String, ReservationState>);

impl StateSource for MemoryState {
    fn get_many(&self, _partition: &str, ids: &[&str]) -> Result<Vec<Option<ReservationState>>, StoreError> {
        Ok(ids.iter().map(|id| self.0.get(*id).cloned()).collect())
    }

    /// The default table has no timers, so nothing is ever due.
    fn due(&self, _partition: &str, _up_to: i64) -> Result<Vec<Pending>, StoreError> {
        Ok(Vec::new())
    }
}

/// What is wrong with `event`, if anything.
pub fn event_problem(event: &BusinessEvent) -> Option<String> {
    if event.reservation_id.is_empty() {
        return Some("empty reservationId".into());
    }
    let dates = [
        ("arrivalDate", &event.arrival_date),
        ("departureDate", &event.departure_date),
        ("previousDepartureDate", &event.previous_departure_date),
        ("occurredAt", &event.occurred_at),
    ];
    for (name, value) in dates {
        if let Some(text) = value {
            // RFC 3339 UTC as resevent writes it: it reads back, and writes the same.
            let ok = crate::time::parse_millis(text).is_some_and(|ms| crate::time::format_millis(ms) == *text) && text.ends_with('Z');
            if !ok {
                return Some(format!("{name} {text:?} is not RFC 3339 UTC"));
            }
        }
    }
    for (name, value) in [("roomNumber", &event.room_number), ("previousRoomNumber", &event.previous_room_number), ("propertyId", &event.property_id)] {
        if value.as_deref().is_some_and(|t| t.contains(['{', '['])) {
            return Some(format!("{name} {value:?} is JSON, not text"));
        }
    }
    None
}

/// The engine of the default pipeline, as `replay` builds it.
pub fn default_engine(format: Format) -> Engine {
    Engine::new(Pipeline::builtin(), Decoder::new(format, FieldPaths::default()))
}

/// Runs `records` (key, value) through `engine` one at a time over
/// `state`, checking every promise above after each. Returns the events, or
/// the first broken promise.
pub fn run_checked(engine: &Engine, state: &mut MemoryState, records: &[(Option<&[u8]>, Option<&[u8]>)]) -> Result<Vec<BusinessEvent>, String> {
    let mut clock = StreamClock::default();
    let mut events = Vec::new();
    for (offset, (key, value)) in records.iter().enumerate() {
        let record = [InputRecord { key: *key, value: *value, offset: offset as u64 + 1 }];
        let out = engine.process(&*state, "check", &record, &mut clock).map_err(|e| format!("record {offset}: the store failed: {e}"))?;
        if !out.rejected.is_empty() && (!out.states.is_empty() || !out.removed.is_empty() || !out.events.is_empty()) {
            return Err(format!("record {offset} was rejected ({}) yet changed the state or emitted", out.rejected[0].error));
        }
        for (_, event) in &out.events {
            if let Some(problem) = event_problem(event) {
                return Err(format!("record {offset}: {problem} in {event:?}"));
            }
        }
        for (id, s) in out.states {
            state.0.insert(id, s);
        }
        for id in out.removed {
            state.0.remove(&id);
        }
        events.extend(out.events.into_iter().map(|(_, e)| e));
    }
    Ok(events)
}

/// The fuzz target's body: `data` is records, one per line; a line that
/// starts with a tab is `key<TAB>value` (the key up to the second tab), and
/// a line that is `~` alone is a tombstone. Every format is tried. Panics on
/// a broken promise, which is what a fuzzer looks for.
pub fn fuzz_one(data: &[u8]) {
    let records: Vec<(Option<&[u8]>, Option<&[u8]>)> = data
        .split(|b| *b == b'\n')
        .map(|line| {
            if line == b"~" {
                (None, None)
            } else if let Some(rest) = line.strip_prefix(b"\t") {
                match rest.iter().position(|b| *b == b'\t') {
                    Some(at) => (Some(&rest[..at]), Some(&rest[at + 1..])),
                    None => (Some(rest), None),
                }
            } else {
                (None, Some(line))
            }
        })
        .collect();
    for format in [Format::Auto, Format::Mongo, Format::Debezium] {
        if let Err(problem) = run_checked(&default_engine(format), &mut MemoryState::default(), &records) {
            panic!("{format:?}: {problem}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// Every line of the fixtures: real connector formats to mutate.
    fn fixture_lines() -> Vec<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "jsonl") && !p.to_string_lossy().contains(".expected.")).collect();
        names.sort();
        names.iter().flat_map(|p| std::fs::read_to_string(p).unwrap().lines().map(String::from).collect::<Vec<_>>()).filter(|l| !l.trim().is_empty()).collect()
    }

    /// Values a broken PMS or a hand-edited file puts in a field: every
    /// Extended JSON wrapper with good and bad insides, and plain JSON.
    fn odd_value() -> impl Strategy<Value = Value> {
        let number = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            Just(json!(1e20)),
            Just(json!(-1e20)),
            Just(json!(253_402_300_800_000i64)),
            Just(json!(1_795_392_000_000i64)),
        ]
        .boxed();
        let text = prop_oneof![
            Just("2026-11-24T00:00:00Z".to_string()),
            Just("2026-02-30".to_string()),
            Just("99999999999999999999999".to_string()),
            Just("abc".to_string()),
            Just("{\"a\": 1}".to_string()),
            Just("[1]".to_string()),
            ".{0,12}",
        ]
        .boxed();
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number.clone(),
            text.clone().prop_map(Value::String),
            number.clone().prop_map(|n| json!({"$date": n})),
            text.clone().prop_map(|t| json!({"$date": t})),
            text.clone().prop_map(|t| json!({"$date": {"$numberLong": t}})),
            text.clone().prop_map(|t| json!({"$numberLong": t})),
            text.clone().prop_map(|t| json!({"$numberDecimal": t})),
            text.clone().prop_map(|t| json!({"$numberInt": t})),
            text.clone().prop_map(|t| json!({"$oid": t})),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array), (".{0,4}", inner).prop_map(|(k, v)| json!({ k: v }))]
        })
    }

    const MAPPED: [&str; 6] = ["propertyId", "roomNumber", "arrivalDate", "departureDate", "bookingStatus", "wallTime"];

    /// Replaces mapped fields' values wherever they are (documents,
    /// `updatedFields`, Debezium's JSON strings), the n-th occurrence by
    /// `values[n % len]` when bit n of `mask` is set.
    fn mutate(v: &mut Value, values: &[Value], mask: u64, n: &mut usize) {
        match v {
            Value::Object(m) => {
                for (k, child) in m.iter_mut() {
                    if MAPPED.contains(&k.as_str()) {
                        if mask >> (*n % 64) & 1 == 1 {
                            *child = values[*n % values.len()].clone();
                        }
                        *n += 1;
                    } else {
                        mutate(child, values, mask, n);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|c| mutate(c, values, mask, n)),
            Value::String(s) if s.starts_with('{') => {
                if let Ok(mut inner) = serde_json::from_str::<Value>(s) {
                    mutate(&mut inner, values, mask, n);
                    *s = inner.to_string();
                }
            }
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// Fixture lines with their mapped fields swapped for odd values:
        /// whatever is accepted keeps every promise.
        #[test]
        fn odd_values_in_real_formats_never_break_a_promise(
            picks in prop::collection::vec(any::<prop::sample::Index>(), 1..12),
            values in prop::collection::vec(odd_value(), 1..6),
            masks in prop::collection::vec(any::<u64>(), 12),
        ) {
            let lines = fixture_lines();
            let mut records = Vec::new();
            for (i, pick) in picks.iter().enumerate() {
                let line = pick.get(&lines);
                let mut v: Value = match serde_json::from_str(line) { Ok(v) => v, Err(_) => { records.push(line.clone().into_bytes()); continue } };
                mutate(&mut v, &values, masks[i % masks.len()], &mut 0);
                // Keyed fixtures hold {"key", "value"}; the value is the record.
                let record = match (v.get("key"), v.get("value")) {
                    (Some(_), Some(value)) => value.to_string(),
                    _ => v.to_string(),
                };
                records.push(record.into_bytes());
            }
            let input: Vec<(Option<&[u8]>, Option<&[u8]>)> = records.iter().map(|r| (None, Some(r.as_slice()))).collect();
            for format in [Format::Auto, Format::Debezium] {
                if let Err(problem) = run_checked(&default_engine(format), &mut MemoryState::default(), &input) {
                    prop_assert!(false, "{}", problem);
                }
            }
        }

        /// Fixture lines cut and flipped at the byte level.
        #[test]
        fn damaged_bytes_never_break_a_promise(
            picks in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
            damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let lines = fixture_lines();
            let mut data = Vec::new();
            for pick in &picks {
                data.extend_from_slice(pick.get(&lines).as_bytes());
                data.push(b'\n');
            }
            for (at, byte, how) in &damage {
                let i = at.index(data.len());
                match how {
                    0 => data[i] = *byte,
                    1 => { data.insert(i, *byte); }
                    _ => data.truncate(i.max(1)),
                }
            }
            fuzz_one(&data);
        }
    }

    #[test]
    fn the_checks_catch_what_they_claim_to() {
        // A check that cannot fail proves nothing: each promise is broken once here.
        let event = |room: &str, date: &str| BusinessEvent {
            event_id: "e".into(),
            event_type: "CHECKED_IN",
            reservation_id: "r".into(),
            property_id: None,
            booking_status: None,
            previous_booking_status: None,
            room_number: Some(room.into()),
            previous_room_number: None,
            arrival_date: Some(date.into()),
            departure_date: None,
            previous_departure_date: None,
            occurred_at: None,
            source_position: None,
            fired_by: None,
        };
        assert_eq!(event_problem(&event("305", "2026-11-24T00:00:00Z")), None);
        assert!(event_problem(&event("{\"a\":1}", "2026-11-24T00:00:00Z")).is_some());
        assert!(event_problem(&event("305", "{\"$date\":1}")).is_some());
        assert!(event_problem(&event("305", "292278994-08-17T07:12:55.807Z")).is_some());
        assert!(event_problem(&BusinessEvent { reservation_id: String::new(), ..event("305", "2026-11-24T00:00:00Z") }).is_some());
    }

    #[test]
    fn every_fixture_keeps_every_promise() {
        // Keyed lines ({"key", "value"}) give both parts, as `replay --keyed` does.
        let parts: Vec<(Option<String>, Option<String>)> = fixture_lines()
            .iter()
            .map(|l| match serde_json::from_str::<Value>(l) {
                Ok(v) if v.get("value").is_some() && v.as_object().is_some_and(|m| m.len() <= 2) => {
                    let text = |p: &Value| (!p.is_null()).then(|| p.to_string());
                    (v.get("key").and_then(text), text(&v["value"]))
                }
                _ => (None, Some(l.clone())),
            })
            .collect();
        let records: Vec<(Option<&[u8]>, Option<&[u8]>)> = parts.iter().map(|(k, v)| (k.as_deref().map(str::as_bytes), v.as_deref().map(str::as_bytes))).collect();
        let events = run_checked(&default_engine(Format::Auto), &mut MemoryState::default(), &records).unwrap();
        assert!(events.len() > 20, "the fixtures give events: {}", events.len());
    }
}
