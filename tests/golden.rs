//! Golden tests: every fixture in fixtures/ through the real `resevent replay`
//! binary, compared with the business events derived by hand (the
//! `.expected.jsonl` files, written from PRODUCT.md's table, not from this
//! code's output).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn replay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resevent"))
        .current_dir(root())
        .env("RESEVENT_LOG", "warn")
        .arg("replay")
        .args(args)
        .output()
        .expect("run resevent replay")
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes).lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}"))).collect()
}

/// Every fixture input with hand-derived events. An input without its
/// `.expected.jsonl` fails here: a missing golden file must not pass as "no
/// events expected". (`busy-day.jsonl`, the demo's generated day, has none.)
fn fixture_inputs() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.ends_with(".jsonl") && !name.contains(".expected.") && !name.starts_with("bad-") && name != "busy-day.jsonl"
        })
        .collect();
    out.sort();
    let missing: Vec<_> = out.iter().map(|p| expected_path(p)).filter(|p| !p.exists()).collect();
    assert!(missing.is_empty(), "fixtures without their hand-derived events: {missing:?}");
    out
}

fn expected_path(input: &Path) -> PathBuf {
    input.with_file_name(input.file_name().unwrap().to_string_lossy().replace(".jsonl", ".expected.jsonl"))
}

fn args_for(input: &Path) -> Vec<String> {
    let name = input.file_name().unwrap().to_string_lossy().to_string();
    let mut args = Vec::new();
    if name.contains(".keyed.") {
        args.push("--keyed".to_string());
    }
    // `<stem>.args`: more replay arguments, one per line (a pipeline with
    // timers, `--until`); a path under fixtures/ is taken from the repository.
    if let Ok(extra) = std::fs::read_to_string(input.with_file_name(name.replace(".jsonl", ".args"))) {
        for a in extra.lines().map(str::trim).filter(|a| !a.is_empty()) {
            args.push(if a.starts_with("fixtures/") { root().join(a).to_string_lossy().to_string() } else { a.to_string() });
        }
    }
    args.push(input.to_string_lossy().to_string());
    args
}

#[test]
fn every_fixture_gives_its_hand_derived_events() {
    let inputs = fixture_inputs();
    assert!(inputs.len() >= 13, "expected a fixture per format, found {inputs:?}");
    let mut failures = Vec::new();
    for input in &inputs {
        let args = args_for(input);
        let out = replay(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            failures.push(format!("{}: exit {:?}\n{stderr}", input.display(), out.status.code()));
            continue;
        }
        let mut got = lines(&out.stdout);
        for e in &mut got {
            let id = e.as_object_mut().unwrap().remove("eventId").expect("every event has an eventId");
            assert_eq!(id.as_str().map(str::len), Some(32), "eventId is 32 hex digits");
        }
        let expected = lines(&std::fs::read(expected_path(input)).unwrap());
        if got != expected {
            failures.push(format!(
                "{}:\n  expected:\n    {}\n  got:\n    {}",
                input.display(),
                expected.iter().map(Value::to_string).collect::<Vec<_>>().join("\n    "),
                got.iter().map(Value::to_string).collect::<Vec<_>>().join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{} fixture(s) differ:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn a_second_replay_into_the_same_state_dir_emits_nothing_and_ids_are_stable() {
    for input in fixture_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = args_for(&input);
        args.splice(0..0, ["--state-dir".to_string(), dir.path().to_string_lossy().to_string()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let first = replay(&argv);
        assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
        let second = replay(&argv);
        assert!(second.status.success());
        assert!(lines(&second.stdout).is_empty(), "{}: second replay emitted {}", input.display(), String::from_utf8_lossy(&second.stdout));
        // A fresh state dir gives the same events with the same ids.
        let fresh = replay(&args_for(&input).iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(lines(&fresh.stdout), lines(&first.stdout), "{}", input.display());
        let ids: std::collections::HashSet<String> = lines(&first.stdout).iter().map(|e| e["eventId"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids.len(), lines(&first.stdout).len(), "{}: event ids must be unique", input.display());
    }
}

/// Replays `fixtures/<stem>.jsonl` with a dead-letter file and checks it
/// against the hand-written `<stem>.rejected` (a line number per rejected
/// line, optionally followed by the kind it must get) and
/// `<stem>.expected.jsonl` (the events of the valid lines around them).
fn assert_rejected_as_listed(stem: &str) {
    let dead = tempfile::NamedTempFile::new().unwrap();
    let input_name = format!("fixtures/{stem}.jsonl");
    let out = replay(&["--dead-letters", dead.path().to_str().unwrap(), &input_name]);
    assert_eq!(out.status.code(), Some(1), "exit status 1 says lines were rejected");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected: Vec<(u64, Option<String>)> = std::fs::read_to_string(root().join(format!("fixtures/{stem}.rejected")))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next().unwrap().parse().unwrap(), parts.next().map(String::from))
        })
        .collect();
    let mut reported: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{input_name}:")))
        .map(|rest| rest.split(':').next().unwrap().parse().unwrap())
        .collect();
    reported.sort();
    assert_eq!(reported, expected.iter().map(|e| e.0).collect::<Vec<_>>(), "stderr:\n{stderr}");
    // Every rejected line is in the dead-letter file with its original text, kind and reason.
    let dls = lines(&std::fs::read(dead.path()).unwrap());
    assert_eq!(dls.len(), expected.len());
    let input: Vec<String> = std::fs::read_to_string(root().join(&input_name)).unwrap().lines().map(String::from).collect();
    for (dl, (n, kind)) in dls.iter().zip(&expected) {
        assert_eq!(dl["line"].as_u64(), Some(*n));
        assert_eq!(dl["record"].as_str().unwrap(), input[*n as usize - 1]);
        assert!(!dl["error"].as_str().unwrap().is_empty());
        if let Some(kind) = kind {
            assert_eq!(dl["kind"].as_str(), Some(kind.as_str()), "line {n}: {}", dl["error"]);
        }
    }
    // The valid lines still produced their events.
    let expected_events = lines(&std::fs::read(root().join(format!("fixtures/{stem}.expected.jsonl"))).unwrap());
    let mut got = lines(&out.stdout);
    got.iter_mut().for_each(|e| {
        e.as_object_mut().unwrap().remove("eventId");
    });
    assert_eq!(got, expected_events);
}

#[test]
fn bad_lines_are_reported_by_number_and_the_rest_goes_on() {
    assert_rejected_as_listed("bad-lines");
}

#[test]
fn bad_values_are_rejected_and_never_reach_an_event() {
    // Dates that are no date (not a number, past year 9999 or before year 0,
    // a boolean, a decimal, an ObjectId) and rooms that are a document or an
    // array, each rejected as invalid-value; the reservation's state stays as
    // it was (A's later room change is from 101, B's later insert checks in
    // from nothing).
    assert_rejected_as_listed("bad-values");
    let dead = tempfile::NamedTempFile::new().unwrap();
    let out = replay(&["--dead-letters", dead.path().to_str().unwrap(), "fixtures/bad-values.jsonl"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The message names the field, its path in the document and the value.
    assert!(stderr.contains(r#"fixtures/bad-values.jsonl:2: rejected (invalid-value): invalid value: departure (departureDate in fullDocument) is {"$date":{"$numberLong":"abc"}}, not a date"#), "{stderr}");
    assert!(stderr.contains(r#"fixtures/bad-values.jsonl:7: rejected (invalid-value): invalid value: room (roomNumber in updatedFields) is [305], not a room number"#), "{stderr}");
}

#[test]
fn replay_reads_bytes_a_line_that_is_not_utf8_or_too_long_is_one_rejected_line() {
    let good: Vec<String> = std::fs::read_to_string(root().join("fixtures/bad-lines.jsonl")).unwrap().lines().map(String::from).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bytes.jsonl");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"{\"operationType\": \"insert\", \"x\": \"\xff\xfe\"}\n"); // 1: not UTF-8
    bytes.extend_from_slice(good[0].as_bytes()); // 2: insert A
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(format!("{{\"blob\": \"{}\"}}\n", "x".repeat(2 << 20)).as_bytes()); // 3: over max_record_bytes
    bytes.extend_from_slice(b"\xc3\x28\n"); // 4: not UTF-8 again
    bytes.extend_from_slice(good[6].as_bytes()); // 5: A checks in, the last line without its newline
    std::fs::write(&file, &bytes).unwrap();
    let dead = dir.path().join("dead.jsonl");
    for keyed in [false, true] {
        let input = if keyed {
            // The same lines as {"key", "value"} lines; the broken ones stay broken.
            let keyed_file = dir.path().join("bytes.keyed.jsonl");
            let mut k = Vec::new();
            for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                match std::str::from_utf8(line) {
                    Ok(text) => k.extend_from_slice(format!("{{\"key\": null, \"value\": {text}}}").as_bytes()),
                    Err(_) => k.extend_from_slice(line),
                }
                if i < 4 {
                    k.push(b'\n');
                }
            }
            std::fs::write(&keyed_file, &k).unwrap();
            keyed_file
        } else {
            file.clone()
        };
        let mut args = vec!["--dead-letters", dead.to_str().unwrap()];
        if keyed {
            args.push("--keyed");
        }
        args.push(input.to_str().unwrap());
        let out = replay(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "keyed {keyed}: {stderr}");
        let events = lines(&out.stdout);
        assert_eq!(events.iter().map(|e| e["eventType"].as_str().unwrap()).collect::<Vec<_>>(), ["CHECKED_IN"], "keyed {keyed}: {stderr}");
        let dls = lines(&std::fs::read(&dead).unwrap());
        let got: Vec<(u64, &str)> = dls.iter().map(|d| (d["line"].as_u64().unwrap(), d["kind"].as_str().unwrap())).collect();
        assert_eq!(got, [(1, "not-utf8"), (3, "too-large"), (4, "not-utf8")], "keyed {keyed}: {stderr}");
        // Byte for byte: the lines that are not UTF-8 in base64.
        let original: Vec<&[u8]> = std::fs::read(&input).unwrap().leak().split(|b| *b == b'\n').collect();
        for d in &dls {
            let n = d["line"].as_u64().unwrap() as usize;
            match d["record"].as_str() {
                Some(text) => assert_eq!(text.as_bytes(), original[n - 1]),
                None => assert_eq!(base64_decode(d["recordBase64"].as_str().unwrap()), original[n - 1]),
            }
        }
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".bytes().position(|a| a == c).unwrap() as u32;
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let digits: Vec<u32> = chunk.iter().filter(|c| **c != b'=').map(|c| value(*c)).collect();
        let n = digits.iter().enumerate().fold(0u32, |n, (i, d)| n | d << (18 - 6 * i));
        out.extend((0..digits.len() - 1).map(|i| (n >> (16 - 8 * i)) as u8));
    }
    out
}

fn diff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resevent")).current_dir(root()).env("RESEVENT_LOG", "warn").args(["pipeline", "diff"]).args(args).output().expect("run resevent pipeline diff")
}

/// An event line of `diff --json` without its `eventId` (the ids are hashes;
/// the expected files give everything else, worked out by hand).
fn without_event_id(mut line: Value) -> Value {
    line["event"].as_object_mut().expect("an event").remove("eventId");
    line
}

#[test]
fn pipeline_diff_gives_the_hand_derived_differences_of_each_table_change() {
    let same = diff(&["pipelines/reservations.toml", "pipelines/reservations.toml", "fixtures/diff/changes.jsonl", "--json"]);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stderr));
    assert!(same.stdout.is_empty(), "the same table differs from itself: {}", String::from_utf8_lossy(&same.stdout));
    for case in ["extra-row", "row-removed", "statuses", "allowlist"] {
        let new = format!("fixtures/diff/{case}.toml");
        let out = diff(&["pipelines/reservations.toml", &new, "fixtures/diff/changes.jsonl", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{case}: {}", String::from_utf8_lossy(&out.stderr));
        let mut got: Vec<Value> = lines(&out.stdout).into_iter().map(without_event_id).collect();
        let mut expected = lines(&std::fs::read(root().join(format!("fixtures/diff/{case}.expected.jsonl"))).unwrap());
        let key = |v: &Value| (v["side"].to_string(), v["event"]["sourcePosition"].to_string(), v["event"]["eventType"].to_string());
        got.sort_by_key(key);
        expected.sort_by_key(key);
        assert_eq!(got, expected, "{case}");
    }
    // For people: the row that fired each event, by file and line.
    let report = diff(&["pipelines/reservations.toml", "fixtures/diff/statuses.toml", "fixtures/diff/changes.jsonl"]);
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(text.contains("- CHECKED_OUT at 1795340004:1, only under the old table (pipelines/reservations.toml:76 [[rule]] #8)"), "{text}");
    assert!(text.contains("+ CHECKIN_REVERSED at 1795340004:1, only under the new table (fixtures/diff/statuses.toml:88 [[rule]] #10)"), "{text}");
}

#[test]
fn pipeline_diff_stops_on_a_table_that_fails_its_check_and_reports_a_bad_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(root().join("pipelines/reservations.toml")).unwrap().replace("emit = [\"ACCIDENTAL_CHECKOUT\"]", "emit = [\"ACCIDENTAL_CHECKOUT_TYPO\"]");
    std::fs::write(&bad, text).unwrap();
    let out = diff(&["pipelines/reservations.toml", bad.to_str().unwrap(), "fixtures/diff/changes.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rule 9: event type \"ACCIDENTAL_CHECKOUT_TYPO\" is unknown"), "{}", String::from_utf8_lossy(&out.stderr));

    let input = dir.path().join("input.jsonl");
    let mut changes = std::fs::read(root().join("fixtures/diff/changes.jsonl")).unwrap();
    changes.extend_from_slice(b"{\"not\": \"a change\"}\n");
    std::fs::write(&input, changes).unwrap();
    let out = diff(&["pipelines/reservations.toml", "pipelines/reservations.toml", input.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "a bad line is no difference");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(":8: rejected").count(), 1, "reported once, as replay reports it: {stderr}");
}

/// The reasons `replay --explain` documents (README, `resevent replay --help`).
const NO_EVENT_KINDS: [&str; 10] = ["stale", "duplicate", "status-not-mapped", "property-not-allowed", "no-row", "nothing-watched-changed", "row-emits-nothing", "no-document", "snapshot", "invalid-value"];

#[test]
fn replay_explain_names_an_existing_row_for_every_event_and_a_documented_reason_for_every_silent_change() {
    let out = replay(&["--explain=json", "fixtures/busy-day.jsonl"]);
    let table: Vec<String> = std::fs::read_to_string(root().join("pipelines/reservations.toml")).unwrap().lines().map(String::from).collect();
    let (mut events, mut silent) = (0, 0);
    for line in lines(&out.stdout) {
        if let Some(no) = line.get("noEvent") {
            silent += 1;
            let kind = no["reason"].as_str().unwrap();
            assert!(NO_EVENT_KINDS.contains(&kind), "undocumented reason {kind}: {line}");
            assert!(no["line"].as_u64().is_some() && no["reservationId"].is_string() && !no["detail"].as_str().unwrap().is_empty(), "{line}");
            continue;
        }
        events += 1;
        let row = line["explain"]["row"].as_str().unwrap_or_else(|| panic!("an event without its row: {line}"));
        let (file, rest) = row.split_once(':').unwrap();
        assert_eq!(file, "pipelines/reservations.toml", "{row}");
        let number: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
        assert!(table[number - 1].trim_start().starts_with("[[rule]]"), "{row}: line {number} is {:?}, not a row", table[number - 1]);
        assert!(line["explain"]["from"].is_string() && line["explain"]["to"].is_string(), "{line}");
    }
    assert!(events > 50 && silent > 10, "{events} events, {silent} silent changes");

    // The stale and duplicate lines of a fixture, and a status the table does not map.
    let reasons = |args: &[&str]| -> Vec<(u64, String)> {
        lines(&replay(args).stdout).iter().filter_map(|l| l.get("noEvent")).map(|n| (n["line"].as_u64().unwrap(), n["reason"].as_str().unwrap().to_string())).collect()
    };
    let relaxed = reasons(&["--explain=json", "fixtures/mongo-relaxed.jsonl"]);
    assert!(relaxed.contains(&(7, "stale".into())) && relaxed.contains(&(11, "duplicate".into())), "{relaxed:?}");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("unmapped.jsonl");
    std::fs::write(&input, r#"{"_id": {"_data": "826B0000010000000129"}, "operationType": "insert", "clusterTime": {"$timestamp": {"t": 1795340000, "i": 1}}, "fullDocument": {"_id": "u1", "propertyId": "P-1", "bookingStatus": "Cancelled"}, "ns": {"db": "property", "coll": "reservation"}, "documentKey": {"_id": "u1"}}"#.to_string() + "\n").unwrap();
    assert_eq!(reasons(&["--explain=json", input.to_str().unwrap()]), vec![(1, "status-not-mapped".to_string())]);
    // Without =json the reasons go to stderr, naming the line, the reservation and the position.
    let text = replay(&["--explain", "fixtures/mongo-relaxed.jsonl"]);
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.contains("fixtures/mongo-relaxed.jsonl:7: no event for reservation 6502a1f0c3b7e41d9a0c0002 at 1795334400:1: stale: older than the stored position"), "{stderr}");
}

#[test]
fn pipeline_check_rejects_a_bad_table_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(root().join("pipelines/reservations.toml")).unwrap().replace("emit = [\"ACCIDENTAL_CHECKOUT\"]", "emit = [\"ACCIDENTAL_CHECKOUT_TYPO\"]");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resevent")).args(["pipeline", "check"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rule 9: event type \"ACCIDENTAL_CHECKOUT_TYPO\" is unknown"), "{stderr}");

    let ok = Command::new(env!("CARGO_BIN_EXE_resevent")).args(["pipeline", "check", "pipelines/reservations.toml"]).current_dir(root()).output().unwrap();
    assert!(ok.status.success());
    let show = Command::new(env!("CARGO_BIN_EXE_resevent")).args(["pipeline", "show"]).current_dir(root()).output().unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("IN_HOUSE     IN_HOUSE     room and departure     ROOM_CHANGED then DEPARTURE_CHANGED"), "{text}");
}

#[test]
fn state_get_and_dump_show_what_a_replay_stored() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    assert!(replay(&["--state-dir", state, "fixtures/mongo-transactions.jsonl"]).status.success());
    let state_cmd = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_resevent")).env("RESEVENT_LOG", "warn").arg("state").args(args).args(["--state-dir", state]).output().unwrap();
    // The story's ends, from fixtures/README.md: A in room 9 until the 24th,
    // B checked out of 214, C in 305.
    let expected = [
        ("6502a1f0c3b7e41d9a300001", "IN_HOUSE", "Arrived", "9", "2026-11-24T00:00:00Z", "1795300700:2", 2),
        ("6502a1f0c3b7e41d9a300002", "DEPARTED", "Departure", "214", "2026-11-24T00:00:00Z", "1795300800:1", 1),
        ("6502a1f0c3b7e41d9a300003", "IN_HOUSE", "Arrived", "305", "2026-11-25T00:00:00Z", "1795300600:1", 2),
    ];
    for (id, st, status, room, departure, position, changes) in expected {
        let out = state_cmd(&["get", id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got = lines(&out.stdout);
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(
            (r["state"].as_str(), r["bookingStatus"].as_str(), r["roomNumber"].as_str(), r["departureDate"].as_str(), r["sourcePosition"].as_str(), r["changesAtPosition"].as_u64()),
            (Some(st), Some(status), Some(room), Some(departure), Some(position), Some(changes)),
            "{id}"
        );
    }
    let missing = state_cmd(&["get", "no-such-reservation"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-reservation"));
    let dump = state_cmd(&["dump"]);
    assert!(dump.status.success());
    let ids: Vec<String> = lines(&dump.stdout).iter().map(|r| r["reservationId"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, expected.iter().map(|e| e.0.to_string()).collect::<Vec<_>>());
    // A directory that holds no state is named in a clear error.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resevent")).args(["state", "dump", "--state-dir"]).arg(empty.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no resevent state"));
}
