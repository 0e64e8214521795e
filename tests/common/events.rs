//! Business events: the built-in workload, what `resevent replay` makes of
//! it, and comparing event lists as a consumer sees them.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

/// `events` change events of the built-in workload (~1 KB MongoDB source
/// connector events) for `reservations` reservations in flight: (key, value).
pub fn workload(reservations: u64, events: usize, seed: u64) -> Vec<(String, String)> {
    let mut w = resevent::workload::Workload::new(reservations, seed);
    (0..events).map(|_| w.next_event()).collect()
}

/// The events `resevent replay` emits for the same record values, in order.
pub fn replay_events(values: &[(String, String)]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, values.iter().map(|(_, v)| format!("{v}\n")).collect::<String>()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resevent")).arg("replay").arg(&input).env("RESEVENT_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every reservation's state after `resevent replay` of the same record values.
pub fn replay_state(values: &[(String, String)]) -> BTreeMap<String, resevent::machine::ReservationState> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, values.iter().map(|(_, v)| format!("{v}\n")).collect::<String>()).unwrap();
    let st = dir.path().join("state");
    let status = Command::new(env!("CARGO_BIN_EXE_resevent")).arg("replay").arg("--state-dir").arg(&st).arg(&input).env("RESEVENT_LOG", "warn").stdout(std::process::Stdio::null()).status().unwrap();
    assert!(status.success());
    let store = resevent::state::store::StateStore::open(&st).unwrap();
    store.reservations(resevent::replay::REPLAY_PARTITION).unwrap().into_iter().collect()
}

/// Events grouped by reservation, in order.
pub fn per_reservation(events: &[serde_json::Value]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut m: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for e in events {
        m.entry(e["reservationId"].as_str().unwrap().to_string()).or_default().push(e.clone());
    }
    m
}

/// Drops repeats by eventId as a consumer does, asserting that every repeat
/// has the same content as the first.
pub fn dedup(events: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut seen: HashMap<String, serde_json::Value> = HashMap::new();
    let mut out = Vec::new();
    for e in events {
        let id = e["eventId"].as_str().unwrap().to_string();
        match seen.get(&id) {
            Some(first) => assert_eq!(first, e, "a repeat of {id} differs in content"),
            None => {
                seen.insert(id, e.clone());
                out.push(e.clone());
            }
        }
    }
    out
}

/// Asserts two event lists hold the same events in the same order for every
/// reservation; on failure names the first reservation that differs, briefly.
pub fn assert_same_per_reservation(got: &[serde_json::Value], expected: &[serde_json::Value]) {
    let (g, e) = (per_reservation(got), per_reservation(expected));
    let brief = |v: &[serde_json::Value]| v.iter().map(|x| format!("{}@{}", x["eventType"].as_str().unwrap_or("?"), x["sourcePosition"].as_str().unwrap_or("?"))).collect::<Vec<_>>().join(" ");
    let mut bad = Vec::new();
    for id in g.keys().chain(e.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (a, b) = (g.get(id).map(Vec::as_slice).unwrap_or_default(), e.get(id).map(Vec::as_slice).unwrap_or_default());
        if a != b {
            bad.push(format!("reservation {id}:\n    got      {}\n    expected {}", brief(a), brief(b)));
        }
    }
    assert!(bad.is_empty(), "{} of {} reservations differ ({} events got, {} expected); first ones:\n  {}", bad.len(), e.len(), got.len(), expected.len(), bad.iter().take(3).cloned().collect::<Vec<_>>().join("\n  "));
}
