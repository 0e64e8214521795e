//! The README's set-up commands, run as a new user would: the main job must
//! print exactly the busy day's business events (fixtures/busy-day.expected.jsonl,
//! which scripts/busy_day.py derives from the day it writes), and CI must call
//! exactly the README's test command.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The commands of the README's "Set-up on a fresh machine" block, comments stripped.
fn setup_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme.split("## Set-up on a fresh machine").nth(1).expect("README has a set-up section");
    let block = section.split("```sh").nth(1).and_then(|b| b.split("```").next()).expect("the set-up section has a sh block");
    block.lines().map(|l| l.split('#').next().unwrap().trim().to_string()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn the_setup_block_has_two_commands_and_ci_runs_the_test_one() {
    let cmds = setup_commands();
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == format!("exec {}", cmds[1])), ".ci/run must exec {:?}:\n{ci}", cmds[1]);
}

fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}"))).collect()
}

/// The business events scripts/busy_day.py derives from the day it writes
/// (PRODUCT.md's default table applied to its story, not resevent's output).
fn busy_day_expected() -> Vec<serde_json::Value> {
    lines(&std::fs::read_to_string(root().join("fixtures/busy-day.expected.jsonl")).unwrap())
}

#[test]
fn the_main_job_prints_the_busy_days_events() {
    let cmds = setup_commands();
    let out = Command::new("bash").arg("-c").arg(&cmds[0]).current_dir(root()).env("RESEVENT_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{} failed:\n{}", cmds[0], String::from_utf8_lossy(&out.stderr));
    let mut events = lines(&String::from_utf8(out.stdout).unwrap());
    for e in &mut events {
        let id = e.as_object_mut().unwrap().remove("eventId").expect("every event has an eventId");
        assert!(id.as_str().is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())), "eventId {id} is not 32 hex digits");
    }
    let expected = busy_day_expected();
    // The day scripted in scripts/busy_day.py: check-ins, checkouts, room moves,
    // extensions, exactly one accidental checkout undone, three properties.
    let count = |t: &str| expected.iter().filter(|e| e["eventType"] == t).count();
    for t in ["CHECKED_IN", "CHECKED_OUT", "ROOM_CHANGED", "DEPARTURE_CHANGED"] {
        assert!(count(t) > 0, "the expected day has no {t}");
    }
    assert_eq!(count("ACCIDENTAL_CHECKOUT"), 1);
    let props: std::collections::BTreeSet<&str> = expected.iter().map(|e| e["propertyId"].as_str().unwrap()).collect();
    assert_eq!(props.into_iter().collect::<Vec<_>>(), vec!["P-BGO-02", "P-OSL-01", "P-TRD-03"]);
    // Every event, in order, field for field (eventId aside).
    if let Some(i) = (0..events.len().max(expected.len())).find(|&i| events.get(i) != expected.get(i)) {
        let (got, want) = (events.get(i).cloned().unwrap_or_default(), expected.get(i).cloned().unwrap_or_default());
        let fields: std::collections::BTreeSet<&String> = got.as_object().into_iter().chain(want.as_object()).flat_map(|o| o.keys()).collect();
        let differ: Vec<String> = fields.into_iter().filter(|k| got.get(k) != want.get(k)).map(|k| format!("{k}: got {}, expected {}", got.get(k).unwrap_or(&serde_json::Value::Null), want.get(k).unwrap_or(&serde_json::Value::Null))).collect();
        panic!(
            "{} events, {} expected (fixtures/busy-day.expected.jsonl); event {} is the first that differs:\n  {}\n  got      {got}\n  expected {want}",
            events.len(),
            expected.len(),
            i + 1,
            differ.join("\n  ")
        );
    }
}

#[test]
fn the_busy_day_and_its_expected_events_are_what_the_script_writes() {
    let expected = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("busy-day-{}.expected.jsonl", std::process::id()));
    let out = Command::new("python3").arg("scripts/busy_day.py").arg("--seed").arg("2026").arg("--expected").arg(&expected).current_dir(root()).output().expect("python3");
    assert!(out.status.success(), "scripts/busy_day.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == std::fs::read(root().join("fixtures/busy-day.jsonl")).unwrap(), "fixtures/busy-day.jsonl is not what `scripts/busy_day.py --seed 2026` writes");
    assert!(std::fs::read(&expected).unwrap() == std::fs::read(root().join("fixtures/busy-day.expected.jsonl")).unwrap(), "fixtures/busy-day.expected.jsonl is not what `scripts/busy_day.py --seed 2026 --expected FILE` writes");
    let _ = std::fs::remove_file(&expected);
}
