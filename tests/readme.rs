//! The README's set-up commands, run as a new user would: the main job must
//! print the busy day's business events, and CI must call exactly the README's
//! test command.

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

#[test]
fn the_main_job_prints_the_busy_days_events() {
    let cmds = setup_commands();
    let out = Command::new("bash").arg("-c").arg(&cmds[0]).current_dir(root()).env("RESEVENT_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{} failed:\n{}", cmds[0], String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let count = |t: &str| events.iter().filter(|e| e["eventType"] == t).count();
    // The day scripted in scripts/busy_day.py: check-ins, checkouts, room moves,
    // extensions, exactly one accidental checkout undone.
    for t in ["CHECKED_IN", "CHECKED_OUT", "ROOM_CHANGED", "DEPARTURE_CHANGED"] {
        assert!(count(t) > 0, "no {t} in {} events", events.len());
    }
    assert_eq!(count("ACCIDENTAL_CHECKOUT"), 1);
    let props: std::collections::BTreeSet<&str> = events.iter().map(|e| e["propertyId"].as_str().unwrap()).collect();
    assert_eq!(props.into_iter().collect::<Vec<_>>(), vec!["P-BGO-02", "P-OSL-01", "P-TRD-03"]);
}
