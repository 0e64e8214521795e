//! `resevent run` against a real Kafka-protocol broker, as real processes:
//! end to end against replay, scale-out with kill -9, a crash loop, a lost
//! disk, a partition-count mismatch, and MongoDB's transactions and
//! tombstone deletes across a restart.

mod common;

use std::time::Duration;

use common::*;
use resevent::state::task_name;
use resevent::state::store::StateStore;

#[test]
fn end_to_end_the_business_topic_holds_what_replay_emits() {
    let broker = Broker::start("e2e");
    let input = broker.name("raw");
    broker.create_topic(&input, 4, &[]);
    let records = workload(300, 4000, 11);
    let expected = replay_events(&records);
    // Bad records mixed in (the fixture's rejected lines) go to the dead-letter topic.
    let bad_lines: Vec<String> = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bad-lines.jsonl")).unwrap().lines().map(String::from).collect();
    let rejected: Vec<usize> = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bad-lines.rejected")).unwrap().lines().filter(|l| !l.trim().is_empty()).map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    let bad: Vec<(String, String)> = rejected.iter().map(|n| (format!("bad-{n}"), bad_lines[n - 1].clone())).collect();
    let mut mixed = records.clone();
    for (i, b) in bad.iter().enumerate() {
        mixed.insert(i * 300 + 7, b.clone());
    }
    broker.produce(&input, &mixed);
    assert!(expected.len() > 1000, "workload too small: {} events", expected.len());

    let app = broker.name("app");
    let state = tempfile::tempdir().unwrap();
    // The default pipeline plus a route: checkouts also go to their own topic.
    let checkouts = broker.name("checkouts");
    let pipeline = state.path().join("pipeline.toml");
    let default = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/reservations.toml")).unwrap();
    std::fs::write(&pipeline, format!("{default}\n[[route]]\ntopic = \"{checkouts}\"\nevents = [\"CHECKED_OUT\"]\n")).unwrap();
    let instance = Instance::start_with(&broker, &input, &app, state.path(), "a", &["--pipeline", pipeline.to_str().unwrap()], &[]);
    let out = format!("{app}-events");
    wait_for(&broker, &out, Duration::from_secs(120), |e| e.len() >= expected.len());
    assert_eq!(instance.terminate(), Some(0), "SIGTERM exits 0");

    let records_out = broker.read_all(&out);
    let got: Vec<serde_json::Value> = records_out.iter().map(Record::json).collect();
    assert_eq!(got.len(), expected.len(), "no repeats on a clean run");
    assert_same_per_reservation(&got, &expected);
    for r in &records_out {
        let e = r.json();
        assert_eq!(r.key.as_deref(), e["reservationId"].as_str(), "keyed by reservation id");
        assert!(r.headers.iter().any(|(k, v)| k == "eventType" && Some(v.as_str()) == e["eventType"].as_str()), "eventType header");
    }
    // Every bad record is in the dead-letter topic once, byte for byte, with its reason.
    let dlt = broker.read_all(&format!("{input}.dlt"));
    let mut dead: Vec<(String, String)> = dlt.iter().map(|r| (r.key.clone().unwrap(), String::from_utf8(r.value.clone().unwrap()).unwrap())).collect();
    dead.sort();
    let mut bad_sorted = bad.clone();
    bad_sorted.sort();
    assert_eq!(dead, bad_sorted);
    for r in &dlt {
        let h: std::collections::HashMap<_, _> = r.headers.iter().cloned().collect();
        assert!(!h["resevent.error.kind"].is_empty() && !h["resevent.error.message"].is_empty(), "{h:?}");
        assert_eq!(h["resevent.original.topic"], input);
        assert!(h["resevent.original.offset"].parse::<i64>().is_ok());
    }
    // The route carries exactly the checkouts, in order per reservation.
    let routed: Vec<serde_json::Value> = broker.read_all(&checkouts).iter().map(Record::json).collect();
    let expected_checkouts: Vec<serde_json::Value> = expected.iter().filter(|e| e["eventType"] == "CHECKED_OUT").cloned().collect();
    assert!(!expected_checkouts.is_empty());
    assert_same_per_reservation(&routed, &expected_checkouts);
    // The changelog holds every reservation's final state, as replay computes
    // it, one partition per input partition, keyed by id.
    let changelog = broker.read_all(&format!("{app}-reservation-state-changelog"));
    assert!(changelog.iter().all(|r| r.key.is_some() && r.partition < 4));
    let mut last: std::collections::BTreeMap<String, resevent::machine::ReservationState> = Default::default();
    for r in &changelog {
        last.insert(r.key.clone().unwrap(), resevent::state::record::decode(r.value.as_deref().expect("no tombstones here")).expect("a state record"));
    }
    let replayed = replay_state(&records);
    assert_eq!(last.len(), replayed.len(), "one changelog key per reservation");
    assert!(last == replayed, "the changelog's last states differ from replay's");

    // History straight from the topic: `tail --raw` writes the input as
    // replay reads it, and replaying that file gives what `run` emitted.
    let history = state.path().join("history.jsonl");
    let tail = std::process::Command::new(env!("CARGO_BIN_EXE_resevent"))
        .args(["tail", "--raw", "--keyed", "--from-beginning", "--bootstrap-servers", &broker.bootstrap, "--topic", &input])
        .env("RESEVENT_LOG", "warn")
        .stdout(std::fs::File::create(&history).unwrap())
        .output()
        .unwrap();
    assert_eq!(tail.status.code(), Some(0), "{}", String::from_utf8_lossy(&tail.stderr));
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_resevent")).args(["replay", "--keyed"]).arg(&history).env("RESEVENT_LOG", "warn").output().unwrap();
    let from_history: Vec<serde_json::Value> = String::from_utf8_lossy(&replay.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(from_history.len(), got.len(), "replay of tail --raw's file emits as many events as run did");
    assert_same_per_reservation(&from_history, &got);
}

#[test]
fn scale_out_then_kill_9_and_restart_loses_nothing() {
    let broker = Broker::start("scale");
    let input = broker.name("raw");
    broker.create_topic(&input, 4, &[]);
    let records = workload(500, 20_000, 12);
    let expected = replay_events(&records);
    let app = broker.name("app");
    let out = format!("{app}-events");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();

    // Records arrive while instances join, one at a time.
    let third = records.len() / 3;
    broker.produce(&input, &records[..third]);
    let a = Instance::start(&broker, &input, &app, dirs[0].path(), "a");
    wait_for(&broker, &out, Duration::from_secs(120), |e| !e.is_empty());
    let b = Instance::start(&broker, &input, &app, dirs[1].path(), "b");
    broker.produce(&input, &records[third..2 * third]);
    // Each kill and join happens once the group has visibly rebalanced onto
    // the newcomer: it logged its assignment and a restored partition.
    b.wait_log("partition ready", 1, Duration::from_secs(60));
    let c = Instance::start(&broker, &input, &app, dirs[2].path(), "c");
    c.wait_log("partition ready", 1, Duration::from_secs(60));
    b.kill9();
    broker.produce(&input, &records[2 * third..]);
    let b = Instance::start(&broker, &input, &app, dirs[1].path(), "b2");
    b.wait_log("partitions assigned", 1, Duration::from_secs(60));

    let got = wait_for(&broker, &out, Duration::from_secs(180), |e| dedup(e).len() >= expected.len());
    let unique = dedup(&got);
    assert_eq!(unique.len(), expected.len());
    assert_same_per_reservation(&unique, &expected);
    // Stop one at a time, each once the survivors have taken its partitions
    // over (a real Kafka has no need; Tansu wedges on overlapping leaves).
    let mut left = vec![a, b, c];
    while let Some(i) = left.pop() {
        let assigned: Vec<usize> = left.iter().map(|s| s.log_count("partitions assigned")).collect();
        assert_eq!(i.terminate(), Some(0));
        for (s, n) in left.iter().zip(assigned) {
            s.wait_log("partitions assigned", n + 1, Duration::from_secs(60));
        }
    }
}

#[test]
fn crash_loop_with_kill_9_converges_to_replay_and_the_changelog_rebuilds_replays_state() {
    let broker = Broker::start("crash");
    let input = broker.name("raw");
    broker.create_topic(&input, 4, &[]);
    let records = workload(2000, 100_000, 13);
    let expected = replay_events(&records);
    let app = broker.name("app");
    let out = format!("{app}-events");
    let state = tempfile::tempdir().unwrap();

    // Changes flow in for ~30 s while instances are killed with SIGKILL at
    // pseudo-random moments and restarted on the same state dir. A 100 ms
    // commit interval, shorter than a commit's acknowledgements take on the
    // test broker, keeps one interval committing while the next is
    // processed much of the time, so many kills land in an overlap.
    let fast = [("RESEVENT_COMMIT_INTERVAL_MS", "100")];
    std::thread::scope(|s| {
        s.spawn(|| {
            for chunk in records.chunks(3000) {
                broker.produce(&input, chunk);
                std::thread::sleep(Duration::from_millis(900));
            }
        });
        let mut rng = resevent::workload::Rng::new(99);
        for round in 0..6 {
            let i = Instance::start_with(&broker, &input, &app, state.path(), &format!("r{round}"), &[], &fast);
            std::thread::sleep(Duration::from_millis(3000 + rng.below(5000)));
            i.kill9();
        }
    });
    let last = Instance::start_with(&broker, &input, &app, state.path(), "last", &[], &fast);
    let got = wait_for(&broker, &out, Duration::from_secs(300), |e| dedup(e).len() >= expected.len());
    assert_eq!(last.terminate(), Some(0));
    let unique = dedup(&got);
    assert_eq!(unique.len(), expected.len());
    assert_same_per_reservation(&unique, &expected);

    // State rebuilt from the changelog alone (empty state dir) equals replay's state.
    let rebuilt = tempfile::tempdir().unwrap();
    let r = Instance::start(&broker, &input, &app, rebuilt.path(), "rebuild");
    r.wait_log("restored partition=", 4, Duration::from_secs(120));
    assert_eq!(r.terminate(), Some(0));
    let store = StateStore::open(rebuilt.path()).unwrap();
    let mut from_changelog = std::collections::BTreeMap::new();
    for p in 0..4 {
        for (id, s) in store.reservations(&task_name(p)).unwrap() {
            assert!(from_changelog.insert(id, s).is_none(), "a reservation in two partitions");
        }
    }
    let from_replay = replay_state(&records);
    assert_eq!(from_changelog.len(), 2000);
    assert!(from_changelog == from_replay, "state rebuilt from the changelog differs from replay's");
}

/// The default table with timers that fall due within the workload's span
/// (its clock moves one second per thousand changes): a no-show at the
/// arrival date itself, an overstay a day before departure, and an hour's
/// retention, which only the records moving stream time two days on reach.
fn timed_pipeline(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/reservations.toml")).unwrap()
        + "\n[[timer]]\nevent = \"NO_SHOW\"\nstate = \"NOT_ARRIVED\"\nfield = \"arrival\"\nafter = \"0s\"\n\
           [[timer]]\nevent = \"OVERSTAY\"\nstate = \"IN_HOUSE\"\nfield = \"departure\"\nafter = \"-1d\"\n\
           [retention]\nafter = \"1h\"\n";
    let path = dir.join("timed.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn timers_fire_on_each_partitions_stream_time_as_replay_fires_them_through_a_kill_and_a_lost_state_dir() {
    let broker = Broker::start("timers");
    let input = broker.name("raw");
    broker.create_topic(&input, 2, &[]);
    let records = workload(300, 12_000, 17);
    let app = broker.name("app");
    let out = format!("{app}-events");
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let pipeline = timed_pipeline(files.path());
    let args = ["--pipeline", pipeline.to_str().unwrap()];

    broker.produce(&input, &records[..6000]);
    let a = Instance::start_with(&broker, &input, &app, state.path(), "a", &args, &[]);
    wait_for(&broker, &out, Duration::from_secs(120), |e| e.iter().any(|e| e["eventType"] == "NO_SHOW"));
    a.kill9();
    // The rest, into an instance that lost its disk: state and the timer
    // index come back from the changelog.
    broker.produce(&input, &records[6000..]);
    // Then, on each partition, a new reservation two days later: stream time
    // jumps, the timers due by then fire, and the departed leave the state.
    let t = 1_795_300_000u64 + 2 * 86_400;
    for p in 0..2 {
        let id = format!("clock-{p}");
        let insert = format!(
            r#"{{"_id": {{"_data": "82{t:08X}00000001{p:02}"}}, "operationType": "insert", "clusterTime": {{"$timestamp": {{"t": {t}, "i": 1}}}}, "wallTime": {{"$date": {ms}}}, "fullDocument": {{"_id": "{id}", "propertyId": "P-000", "bookingStatus": "Not Arrived", "roomNumber": "1", "arrivalDate": {{"$date": {later}}}, "departureDate": {{"$date": {later}}}}}, "ns": {{"db": "property", "coll": "reservation"}}, "documentKey": {{"_id": "{id}"}}}}"#,
            ms = t * 1000,
            later = (t + 30 * 86_400) * 1000
        );
        broker.produce_to(&input, Some(p), &[(Some(id.into_bytes()), Some(insert.into_bytes()))]);
    }
    std::fs::remove_dir_all(state.path()).unwrap();
    let b = Instance::start_with(&broker, &input, &app, state.path(), "b", &args, &[]);

    // Stream time is per input partition: replay each partition's records
    // alone, as the service sees them.
    let mut by_partition: std::collections::BTreeMap<i32, Vec<String>> = Default::default();
    for r in broker.read_all(&input) {
        by_partition.entry(r.partition).or_default().push(String::from_utf8(r.value.unwrap()).unwrap());
    }
    let mut expected = Vec::new();
    for values in by_partition.values() {
        let file = files.path().join("part.jsonl");
        std::fs::write(&file, values.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_resevent")).args(["replay", "--pipeline", pipeline.to_str().unwrap()]).arg(&file).env("RESEVENT_LOG", "warn").output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        expected.extend(String::from_utf8(run.stdout).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()));
    }
    let count = |events: &[serde_json::Value], t: &str| events.iter().filter(|e| e["eventType"] == t).count();
    assert!(count(&expected, "NO_SHOW") > 10 && count(&expected, "OVERSTAY") > 10, "the workload arms timers that fall due");

    let got = wait_for(&broker, &out, Duration::from_secs(180), |e| dedup(e).len() >= expected.len());
    let log = std::fs::read_to_string(&b.log).unwrap();
    assert_eq!(b.terminate(), Some(0));
    let unique = dedup(&got);
    assert_eq!(unique.len(), expected.len(), "no eventId replay does not emit");
    assert_same_per_reservation(&unique, &expected);
    assert!(log.contains("timer index built"), "the restored partitions' index was built from their state");
    // Retention tombstoned departed reservations in the changelog.
    let changelog = broker.read_all(&format!("{app}-reservation-state-changelog"));
    let tombstones = changelog.iter().filter(|r| r.value.is_none()).count();
    assert!(tombstones > 0, "retention writes tombstones ({} changelog records)", changelog.len());
}

#[test]
fn a_lost_state_dir_is_rebuilt_from_the_changelog() {
    let broker = Broker::start("lostdisk");
    let input = broker.name("raw");
    broker.create_topic(&input, 2, &[]);
    let records = workload(200, 6000, 14);
    let expected = replay_events(&records);
    let app = broker.name("app");
    let out = format!("{app}-events");
    let state = tempfile::tempdir().unwrap();
    let half = records.len() / 2;

    broker.produce(&input, &records[..half]);
    let first = replay_events(&records[..half]);
    let i = Instance::start(&broker, &input, &app, state.path(), "a");
    wait_for(&broker, &out, Duration::from_secs(120), |e| dedup(e).len() >= first.len());
    assert_eq!(i.terminate(), Some(0));

    std::fs::remove_dir_all(state.path()).unwrap();
    broker.produce(&input, &records[half..]);
    let i = Instance::start(&broker, &input, &app, state.path(), "b");
    let got = wait_for(&broker, &out, Duration::from_secs(120), |e| dedup(e).len() >= expected.len());
    assert_eq!(i.terminate(), Some(0));
    let unique = dedup(&got);
    // Without the changelog, the second half would be judged against no state
    // (check-outs of guests never seen checked in, walk-ins instead of room moves).
    assert_same_per_reservation(&unique, &expected);
    assert_eq!(unique.len(), expected.len());
}

#[test]
fn a_changelog_partitioned_unlike_the_input_stops_start_up_with_a_clear_error() {
    let broker = Broker::start("mismatch");
    let input = broker.name("raw");
    broker.create_topic(&input, 4, &[]);
    broker.produce(&input, &workload(10, 50, 15));
    let app = broker.name("app");
    broker.create_topic(&format!("{app}-reservation-state-changelog"), 2, &[("cleanup.policy", "compact")]);
    let state = tempfile::tempdir().unwrap();
    let (code, log) = Instance::start(&broker, &input, &app, state.path(), "a").wait_exit(Duration::from_secs(60));
    assert_ne!(code, Some(0));
    assert!(log.contains("has 2 partitions but the input has 4"), "{log}");
    assert!(!broker.topic_exists(&format!("{app}-events")), "nothing was created or consumed");
}

/// A fixture's lines as Kafka records: each record keyed by its document key
/// (`{"_id": …}`, as the MongoDB connector keys them), and its hand-derived
/// events without their ids.
fn fixture_records(name: &str) -> (Vec<RawRecord>, Vec<serde_json::Value>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/");
    let text = std::fs::read_to_string(format!("{dir}{name}.jsonl")).unwrap();
    let records = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            match v.get("key") {
                // A keyed line: {"key": K, "value": V}; a string K is the key's text.
                Some(k) if v.get("value").is_some() => {
                    let key = k.as_str().map_or_else(|| k.to_string(), String::from);
                    (Some(key.into_bytes()), (!v["value"].is_null()).then(|| v["value"].to_string().into_bytes()))
                }
                _ => (Some(serde_json::json!({"_id": v["documentKey"]["_id"]}).to_string().into_bytes()), Some(l.as_bytes().to_vec())),
            }
        })
        .collect();
    let expected = std::fs::read_to_string(format!("{dir}{name}.expected.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (records, expected)
}

fn without_ids(events: &[serde_json::Value]) -> Vec<serde_json::Value> {
    events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.as_object_mut().unwrap().remove("eventId");
            e
        })
        .collect()
}

#[test]
fn a_restart_in_the_middle_of_a_transaction_applies_the_rest_and_tombstones_delete() {
    let broker = Broker::start("txn");
    let input = broker.name("raw");
    broker.create_topic(&input, 1, &[]);
    let app = broker.name("app");
    let out = format!("{app}-events");
    let state = tempfile::tempdir().unwrap();
    let (records, expected) = fixture_records("mongo-transactions");
    assert_eq!(expected.len(), 10);

    // Up to the first change of the check-in transaction (line 7): 6 events.
    broker.produce_raw(&input, &records[..7]);
    let i = Instance::start(&broker, &input, &app, state.path(), "a");
    wait_for(&broker, &out, Duration::from_secs(120), |e| dedup(e).len() >= 6);
    assert_eq!(i.terminate(), Some(0));

    // The local state is lost: the transaction's applied changes must come
    // back from the changelog, so its second change applies and its
    // re-delivered first one does not.
    std::fs::remove_dir_all(state.path()).unwrap();
    broker.produce_raw(&input, &records[7..]);
    let i = Instance::start(&broker, &input, &app, state.path(), "b");
    // The last expected event comes from the last record of the one
    // partition, so once it is there every record has been processed.
    wait_for(&broker, &out, Duration::from_secs(120), |e| e.last().is_some_and(|l| l["eventType"] == "CHECKED_OUT"));
    assert_eq!(i.terminate(), Some(0));
    let all = broker.read_all(&out).iter().map(Record::json).collect::<Vec<_>>();
    assert_eq!(without_ids(&dedup(&all)), expected);

    // Deletes published as tombstones (full-document-only), through Kafka.
    let tomb_input = broker.name("fulldoc");
    broker.create_topic(&tomb_input, 1, &[]);
    let (records, expected) = fixture_records("mongo-tombstones.keyed");
    assert!(records.iter().any(|(_, v)| v.is_none()), "the fixture has tombstones");
    broker.produce_raw(&tomb_input, &records);
    let app2 = broker.name("app2");
    let out2 = format!("{app2}-events");
    let state2 = tempfile::tempdir().unwrap();
    let i = Instance::start(&broker, &tomb_input, &app2, state2.path(), "c");
    wait_for(&broker, &out2, Duration::from_secs(120), |e| e.iter().any(|x| x["sourcePosition"] == "offset:6"));
    assert_eq!(i.terminate(), Some(0));
    let got: Vec<serde_json::Value> = broker.read_all(&out2).iter().map(Record::json).collect();
    // Ordered by their Kafka offsets, which are the fixture's line numbers less one.
    let shifted: Vec<serde_json::Value> = expected
        .iter()
        .map(|e| {
            let mut e = e.clone();
            let n: u64 = e["sourcePosition"].as_str().unwrap().strip_prefix("offset:").unwrap().parse().unwrap();
            e["sourcePosition"] = format!("offset:{}", n - 1).into();
            e
        })
        .collect();
    assert_eq!(without_ids(&got), shifted);
}

/// The UTC time (ms) of the first log line holding `pattern`.
fn logged_at(log: &str, pattern: &str) -> i64 {
    let line = log.lines().find(|l| l.contains(pattern)).unwrap_or_else(|| panic!("{pattern:?} not in the log"));
    let stamp = line.split_whitespace().next().unwrap();
    resevent::time::parse_millis(stamp).unwrap_or_else(|| panic!("no time in {line}"))
}

#[test]
fn a_restore_longer_than_the_poll_interval_keeps_membership_while_other_partitions_flow() {
    use resevent::change::{ChangeId, SourcePosition};
    use resevent::machine::ReservationState;
    use resevent::pipeline::State;
    let broker = Broker::start("longrestore");
    let input = broker.name("raw");
    broker.create_topic(&input, 2, &[]);
    let app = broker.name("app");
    let changelog = format!("{app}-reservation-state-changelog");
    broker.create_topic(&changelog, 2, &[("cleanup.policy", "compact")]);
    // Partition 0's changelog: 1.5 million guests in house, in room 101 —
    // about 3 s to restore here, twice the poll interval below, so a faster
    // machine still restores for longer than the interval.
    const N: usize = 1_500_000;
    let in_house = ReservationState {
        state: State::InHouse,
        status: Some("Arrived".into()),
        fields: [Some("P-OSL-01".into()), Some("101".into()), None, None],
        position: Some(SourcePosition::Cluster { t: 1_795_000_000, i: 1 }),
        applied: vec![ChangeId(1)],
        ..Default::default()
    };
    let value = resevent::state::record::encode(&in_house);
    let states: Vec<RawRecord> = (0..N).map(|i| (Some(format!("bulk-{i}").into_bytes()), Some(value.clone()))).collect();
    broker.produce_to(&changelog, Some(0), &states);
    drop(states);
    // A room move that only the restored state makes a ROOM_CHANGED (on
    // partition 0), and a walk-in on partition 1, whose restore is empty.
    let change = |id: &str, body: &str| (Some(id.as_bytes().to_vec()), Some(body.as_bytes().to_vec()));
    let room_move = r#"{"_id": {"_data": "826A"}, "operationType": "update", "clusterTime": {"$timestamp": {"t": 1795000100, "i": 1}}, "documentKey": {"_id": "bulk-7"}, "updateDescription": {"updatedFields": {"roomNumber": "202"}, "removedFields": []}}"#;
    let walk_in = r#"{"_id": {"_data": "826B"}, "operationType": "insert", "clusterTime": {"$timestamp": {"t": 1795000100, "i": 2}}, "documentKey": {"_id": "walkin-1"}, "fullDocument": {"_id": "walkin-1", "propertyId": "P-OSL-01", "bookingStatus": "Arrived", "roomNumber": "7"}}"#;
    broker.produce_to(&input, Some(0), &[change("bulk-7", room_move)]);
    broker.produce_to(&input, Some(1), &[change("walkin-1", walk_in)]);

    let dir = tempfile::tempdir().unwrap();
    // A poll interval far below the restore's duration (librdkafka wants the
    // session timeout no longer than it).
    let poll = [("RESEVENT_CONSUMER__MAX_POLL_INTERVAL_MS", "1500"), ("RESEVENT_CONSUMER__SESSION_TIMEOUT_MS", "1500"), ("RESEVENT_CONSUMER__HEARTBEAT_INTERVAL_MS", "300")];
    let i = Instance::start_with(&broker, &input, &app, dir.path(), "a", &[], &poll);
    let out = format!("{app}-events");
    // /readyz says 503 while partition 0 restores, and why; 200 after.
    let http = i.http_addr();
    i.wait_log("restoring state from the changelog partition=0", 1, Duration::from_secs(60));
    let (status, why) = http_get(&http, "/readyz");
    assert_eq!((status, why.trim()), (503, "not ready: restoring partitions [0]"));
    assert_eq!(http_get(&http, "/healthz").0, 200, "alive while not ready");
    i.wait_log("restored partition=0", 1, Duration::from_secs(300));
    i.wait_log("partition ready; processing resumed partition=0", 1, Duration::from_secs(10));
    assert_eq!(http_get(&http, "/readyz").0, 200);
    wait_for(&broker, &out, Duration::from_secs(60), |e| e.len() >= 2);
    let log = std::fs::read_to_string(&i.log).unwrap();
    assert_eq!(i.terminate(), Some(0));

    let events = broker.read_all(&out);
    let json: Vec<serde_json::Value> = events.iter().map(Record::json).collect();
    let types: Vec<(&str, &str)> = json.iter().map(|e| (e["reservationId"].as_str().unwrap(), e["eventType"].as_str().unwrap())).collect();
    assert!(types.contains(&("walkin-1", "CHECKED_IN")), "{types:?}");
    let moved = json.iter().find(|e| e["reservationId"] == "bulk-7").expect("the room move, judged against restored state");
    assert_eq!((moved["eventType"].as_str(), moved["previousRoomNumber"].as_str(), moved["roomNumber"].as_str()), (Some("ROOM_CHANGED"), Some("101"), Some("202")));
    // The walk-in went out while partition 0 was still restoring.
    let walk_in_sent = events.iter().zip(&json).find(|(_, e)| e["reservationId"] == "walkin-1").unwrap().0.timestamp.unwrap();
    let restore_started = logged_at(&log, "restoring state from the changelog partition=0");
    let restore_done = logged_at(&log, "restored partition=0");
    assert!(walk_in_sent < restore_done, "partition 1's event at {walk_in_sent}, partition 0 restored at {restore_done}");
    assert!(restore_done - restore_started > 1500, "the restore ({} ms) must outlast max.poll.interval.ms for this test to mean anything", restore_done - restore_started);
    // Membership kept: assigned once, never revoked, never out of the poll interval.
    assert_eq!(log.matches("partitions assigned").count(), 1, "{log}");
    assert!(!log.contains("partitions revoked partitions={0") && !log.contains("maximum poll interval"), "{log}");
    assert!(log.contains(&format!("records={N}")), "every changelog record restored");
}

/// The events `resevent replay` emits for `values` on top of the state in
/// `state_dir`, with the allowlist `allow`.
fn replay_with(state_dir: &std::path::Path, allow: &str, values: &[(String, String)]) -> Vec<serde_json::Value> {
    let input = state_dir.with_extension("jsonl");
    std::fs::write(&input, values.iter().map(|(_, v)| format!("{v}\n")).collect::<String>()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_resevent"))
        .args(["replay", "--allow-properties", allow, "--state-dir"])
        .arg(state_dir)
        .arg(&input)
        .env("RESEVENT_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_allowlist_changes_without_a_restart_and_a_broken_file_is_refused() {
    let broker = Broker::start("reload");
    let input = broker.name("raw");
    // One partition: a part's last record (a walk-in that is always allowed)
    // shows the whole part was processed before the file changes.
    broker.create_topic(&input, 1, &[]);
    let records = workload(150, 10_000, 23);
    let sentinel = |n: usize, property: &str| {
        let id = format!("sentinel-{n}");
        (id.clone(), format!(r#"{{"_id": {{"_data": "82S{n}"}}, "operationType": "insert", "clusterTime": {{"$timestamp": {{"t": 1795300000, "i": {n}}}}}, "documentKey": {{"_id": "{id}"}}, "fullDocument": {{"_id": "{id}", "propertyId": "{property}", "bookingStatus": "Arrived", "roomNumber": "1"}}}}"#))
    };
    let mut parts: Vec<Vec<(String, String)>> = records.chunks(2000).map(<[_]>::to_vec).collect();
    for (n, property) in [(1, "P-001"), (2, "P-001"), (3, "P-001"), (4, "P-002"), (5, "P-001")] {
        parts[n - 1].push(sentinel(n, property));
    }
    let default = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/reservations.toml")).unwrap();
    assert!(default.contains("properties = \"*\""));
    let with_allowlist = |list: &str| default.replace("properties = \"*\"", &format!("properties = [{list}]"));
    // The file as a mounted Kubernetes ConfigMap lays it out: pipeline.toml ->
    // ..data/pipeline.toml, ..data -> ..<timestamp>/ (kubelet swaps ..data on
    // an update). Edits in place go through the links.
    let dir = tempfile::tempdir().unwrap();
    let version = |name: &str, text: &str| {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("pipeline.toml"), text).unwrap();
    };
    version("..2026_12_08_00_00_00.1", &with_allowlist("\"P-001\""));
    std::os::unix::fs::symlink("..2026_12_08_00_00_00.1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/pipeline.toml", dir.path().join("pipeline.toml")).unwrap();
    let file = dir.path().join("pipeline.toml");

    // What replay says for each part, with the allowlist in force then.
    let replay_state = tempfile::tempdir().unwrap();
    let replay_dir = replay_state.path().join("state");
    let lists = ["P-001", "P-001,P-002", "P-001,P-002", "P-002", "P-001"];
    let expected: Vec<serde_json::Value> = parts.iter().zip(lists).flat_map(|(part, list)| replay_with(&replay_dir, list, part)).collect();
    assert!(expected.iter().any(|e| e["propertyId"] == "P-002" && e["eventType"] != "CHECKED_IN"), "a P-002 guest known before it was allowed");

    let app = broker.name("app");
    let out = format!("{app}-events");
    let state = tempfile::tempdir().unwrap();
    let i = Instance::start_with(&broker, &input, &app, state.path(), "a", &["--pipeline", file.to_str().unwrap()], &[]);
    let part_done = |n: usize| wait_for(&broker, &out, Duration::from_secs(120), move |e| e.iter().any(|x| x["reservationId"] == format!("sentinel-{n}").as_str()));

    broker.produce(&input, &parts[0]);
    part_done(1);
    // A property added: its next changes emit, judged against the state kept meanwhile.
    std::fs::write(&file, with_allowlist("\"P-001\", \"P-002\"")).unwrap();
    i.wait_log("pipeline reloaded", 1, Duration::from_secs(30));
    broker.produce(&input, &parts[1]);
    part_done(2);
    // A broken file is refused, and the list in force stays.
    let broken = with_allowlist("\"P-003\"").replace("emit = [\"ACCIDENTAL_CHECKOUT\"]", "emit = [\"NO_SUCH_EVENT\"]");
    assert!(broken.contains("NO_SUCH_EVENT"));
    std::fs::write(&file, broken).unwrap();
    i.wait_log("pipeline reload refused", 1, Duration::from_secs(30));
    broker.produce(&input, &parts[2]);
    part_done(3);
    // A property removed, on SIGHUP alone: the file keeps its old modification time.
    let before = std::fs::metadata(&file).unwrap().modified().unwrap();
    // Written aside with the old time, then renamed over the file, so the
    // service's once-a-second look can never see the new text with a new time.
    let current = dir.path().join("..2026_12_08_00_00_00.1").join("pipeline.toml");
    let aside = current.with_extension("toml.new");
    std::fs::write(&aside, with_allowlist("\"P-002\"")).unwrap();
    std::fs::File::options().write(true).open(&aside).unwrap().set_modified(before).unwrap();
    std::fs::rename(&aside, &current).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(std::fs::read_to_string(&i.log).unwrap().matches("pipeline reloaded").count(), 1, "not re-read without a change or a signal");
    assert!(std::process::Command::new("kill").args(["-HUP", &i.pid().to_string()]).status().unwrap().success());
    i.wait_log("pipeline reloaded", 2, Duration::from_secs(30));
    broker.produce(&input, &parts[3]);
    part_done(4);
    // A ConfigMap update exactly as kubelet does it: the new version in a new
    // directory (here even with the old file's time), then ..data swapped to
    // it by a rename. No signal: the watcher sees the file the path resolves to change.
    version("..2026_12_08_00_05_00.2", &with_allowlist("\"P-001\""));
    std::fs::File::options().write(true).open(dir.path().join("..2026_12_08_00_05_00.2/pipeline.toml")).unwrap().set_modified(before).unwrap();
    std::os::unix::fs::symlink("..2026_12_08_00_05_00.2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    i.wait_log("pipeline reloaded", 3, Duration::from_secs(30));
    broker.produce(&input, &parts[4]);
    part_done(5);
    let log = std::fs::read_to_string(&i.log).unwrap();
    assert_eq!(i.terminate(), Some(0));
    assert!(log.contains("SIGHUP") && log.contains("allowlist: added [\"P-002\"]") && log.contains("allowlist: removed [\"P-001\"]"), "{log}");

    let got = dedup(&broker.read_all(&out).iter().map(Record::json).collect::<Vec<_>>());
    assert_same_per_reservation(&got, &expected);
    assert_eq!(got.len(), expected.len());
}

/// Every sample of a metric in a Prometheus text scrape, with its labels.
fn samples(scrape: &str, name: &str) -> Vec<(std::collections::HashMap<String, String>, f64)> {
    let parsed = prometheus_parse::Scrape::parse(scrape.lines().map(|l| Ok(l.to_string()))).expect("a Prometheus text exposition");
    parsed
        .samples
        .into_iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), v)
        })
        .collect()
}

#[test]
fn metrics_and_lookups_report_what_the_instance_did() {
    let broker = Broker::start("ops");
    let input = broker.name("raw");
    broker.create_topic(&input, 2, &[]);
    let records = workload(120, 3000, 37);
    let expected = replay_events(&records);
    let final_state = replay_state(&records);
    let app = broker.name("app");
    let out = format!("{app}-events");
    let state = tempfile::tempdir().unwrap();
    let i = Instance::start(&broker, &input, &app, state.path(), "a");
    let http = i.http_addr();
    assert_eq!(http_get(&http, "/healthz").0, 200);
    let ready = std::time::Instant::now();
    while http_get(&http, "/readyz").0 != 200 {
        assert!(ready.elapsed() < Duration::from_secs(60), "never ready: {}", http_get(&http, "/readyz").1);
        std::thread::sleep(Duration::from_millis(200));
    }
    let consumed = |scrape: &str| samples(scrape, "resevent_records_consumed_total").first().map_or(0.0, |s| s.1);
    assert_eq!(consumed(&http_get(&http, "/metrics").1), 0.0);

    broker.produce(&input, &records);
    wait_for(&broker, &out, Duration::from_secs(120), |e| dedup(e).len() >= expected.len());
    // Counted exactly once each, and the lag drains to 0 once the feed stops.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let scrape = loop {
        let (status, scrape) = http_get(&http, "/metrics");
        assert_eq!(status, 200);
        let lag = samples(&scrape, "resevent_consumer_lag");
        if consumed(&scrape) == records.len() as f64 && lag.len() == 2 && lag.iter().all(|(_, v)| *v == 0.0) {
            break scrape;
        }
        assert!(std::time::Instant::now() < deadline, "records consumed {} of {}, lag {lag:?}", consumed(&scrape), records.len());
        std::thread::sleep(Duration::from_millis(500));
    };
    for t in ["CHECKED_IN", "ROOM_CHANGED", "CHECKED_OUT"] {
        let want = expected.iter().filter(|e| e["eventType"] == t).count() as f64;
        let got = samples(&scrape, "resevent_business_events_total").into_iter().find(|(l, _)| l.get("event_type").map(String::as_str) == Some(t)).map(|s| s.1);
        assert_eq!(got, Some(want), "{t}");
    }
    assert!(scrape.contains("resevent_event_latency_seconds_bucket"), "{scrape}");
    assert!(scrape.contains("resevent_commit_duration_seconds_count"));
    // Every commit the loop waited for is a pause; a commit at revocation or
    // shutdown is not counted as the loop's, so there are no more loop pauses
    // for commits than commits.
    let count = |series: &str| scrape.lines().find_map(|l| l.strip_prefix(series)).map_or(0.0, |v| v.trim().parse::<f64>().unwrap());
    let commits = count("resevent_commit_duration_seconds_count ");
    let waited = count("resevent_processing_paused_seconds_count{reason=\"commit\"} ") + count("resevent_processing_paused_seconds_count{reason=\"cache-full\"} ");
    assert!(waited >= 1.0 && waited <= commits, "{waited} pauses for commits, {commits} commits:\n{scrape}");
    assert!(count("resevent_processing_paused_seconds_count{reason=\"restore\"} ") >= 2.0, "each of the two partitions handed over after its restore:\n{scrape}");
    // A reservation as replay left it; one never seen is a 404 that says why.
    for (id, s) in final_state.iter().take(5) {
        let (status, body) = http_get(&http, &format!("/reservations/{id}"));
        assert_eq!(status, 200, "{body}");
        let got: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(got["state"].as_str(), Some(s.state.name()), "{id}");
        assert_eq!(got["bookingStatus"].as_str(), s.status.as_deref(), "{id}");
        assert_eq!(got["roomNumber"].as_str(), s.get(resevent::change::Field::Room), "{id}");
        assert_eq!(got["departureDate"].as_str(), s.get(resevent::change::Field::Departure), "{id}");
        assert_eq!(got["sourcePosition"].as_str(), s.position.map(|p| p.to_string()).as_deref(), "{id}");
        // The last events it caused: the tail of replay's events for it, in order.
        let mine: Vec<&serde_json::Value> = expected.iter().filter(|e| e["reservationId"] == id.as_str()).collect();
        let last: Vec<(&str, &str)> = got["lastEvents"].as_array().unwrap().iter().map(|e| (e["eventType"].as_str().unwrap(), e["eventId"].as_str().unwrap())).collect();
        let tail: Vec<(&str, &str)> = mine[mine.len().saturating_sub(last.len())..].iter().map(|e| (e["eventType"].as_str().unwrap(), e["eventId"].as_str().unwrap())).collect();
        assert_eq!(last.len(), mine.len().min(5), "{id}");
        assert_eq!(last, tail, "{id}");
        for e in got["lastEvents"].as_array().unwrap() {
            assert!(e["firedBy"].as_str().is_some_and(|r| r.contains("[[rule]] #")), "each last event names the row that fired it: {e}");
        }
    }
    let (status, body) = http_get(&http, "/reservations/never-seen");
    assert_eq!(status, 404);
    assert!(body.contains("another member"), "{body}");
    let why: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(why["partitionsHere"], serde_json::json!([0, 1]), "{body}");
    assert_eq!(why["groupMembers"].as_array().map(Vec::len), Some(1), "the group's one member, described by the broker: {body}");

    // The status page, as a browser renders it.
    let page = chromium_dom(&format!("http://{http}/"));
    assert!(page.contains(&format!("<b id=\"records\">{}</b>", records.len())), "{page}");
    assert_eq!(page.matches("<td>processing</td>").count(), 2, "both partitions shown as processing: {page}");
    assert!(page.contains("every property") && page.contains("CHECKED_IN") && page.contains("<polyline"), "{page}");
    let drawn = page.split("points=\"").skip(1).map(|rest| rest.split('"').next().unwrap_or("").split_whitespace().count()).max().unwrap_or(0);
    assert!(drawn >= 2, "the chart has a line after a few seconds of traffic (its longest has {drawn} points): {page}");
    assert!(page.contains("<table id=\"paused\">") && page.contains("<td>commit</td>"), "the commit's pauses on the page: {page}");
    // Its figures move with traffic (these are the same reservations' older
    // changes again: counted, stale, changing no state).
    let more = workload(30, 400, 99);
    broker.produce(&input, &more);
    let total = records.len() + more.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !chromium_dom(&format!("http://{http}/")).contains(&format!("<b id=\"records\">{total}</b>")) {
        assert!(std::time::Instant::now() < deadline, "the page never showed {total} records");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The lookup box finds a reservation.
    let (id, s) = final_state.iter().find(|(id, s)| s.get(resevent::change::Field::Room).is_some() && expected.iter().any(|e| e["reservationId"] == id.as_str())).unwrap();
    let url = format!("http://{http}/?id={id}");
    let found = chromium_dom(&url);
    assert!(found.contains("id=\"lookup\"") && found.contains(id.as_str()), "{found}");
    assert!(found.contains(&format!("<td>{}</td>", s.get(resevent::change::Field::Room).unwrap())), "the room as replay left it: {found}");
    assert!(found.contains("<table id=\"last-events\">") && found.contains("[[rule]] #"), "its last events as a table, each with the row that fired it: {found}");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    chromium(&["--window-size=1000,1400", &format!("--screenshot={}", shot.display()), &url]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a page with content, not a blank one: {} bytes at {}", png.len(), shot.display());
    println!("status page screenshot: {}", shot.display());
    assert_eq!(i.terminate(), Some(0));
}

/// Runs headless Chromium (Debian's `chromium`, which scripts/test installs;
/// or $RESEVENT_CHROMIUM) with `args`; returns its stdout.
fn chromium(args: &[&str]) -> String {
    let bin = std::env::var("RESEVENT_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&bin)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin} ({e}); scripts/test installs Debian's chromium, or set RESEVENT_CHROMIUM"));
    assert!(out.status.success(), "{bin} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM of `url` after Chromium loaded it.
fn chromium_dom(url: &str) -> String {
    chromium(&["--dump-dom", url])
}
