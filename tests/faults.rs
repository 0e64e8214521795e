//! Bad input and faults against a real broker and real `resevent run`
//! processes: a poison-pill suite mixed into a valid stream, the broker gone
//! for 30 s mid-stream, and the state directory made unwritable mid-stream
//! until the store has failed. In each: nothing lost, no eventId with two
//! contents, no restart.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use common::*;

/// A MongoDB source connector insert of a reservation that arrives in house
/// (one CHECKED_IN by the default table), with `id` and `room` as raw JSON
/// and `dates` the arrival/departure values, so each dialect can be written.
fn insert(id: &str, room: &str, arrival: &str, departure: &str, t: u64) -> String {
    format!(
        r#"{{"_id": {{"_data": "82{t:08X}"}}, "operationType": "insert", "clusterTime": {{"$timestamp": {{"t": {t}, "i": 1}}}}, "fullDocument": {{"_id": {id}, "propertyId": "P-OSL-01", "bookingStatus": "Arrived", "roomNumber": {room}, "arrivalDate": {arrival}, "departureDate": {departure}, "guest": {{"firstName": "Ada"}}}}, "ns": {{"db": "property", "coll": "reservation"}}, "documentKey": {{"_id": {id}}}}}"#
    )
}

/// Records that look odd but are valid in the connectors' formats: each must
/// be processed (one CHECKED_IN for its reservation), never dead-lettered.
/// (name, reservation id as resevent reports it, record value)
fn odd_but_valid() -> Vec<(&'static str, String, Option<String>)> {
    let t = 1_795_300_000;
    let legacy = (r#"{"$date": 1795132800000}"#, r#"{"$date": 1795392000000}"#);
    vec![
        ("legacy dates", "odd-legacy".into(), Some(insert(r#""odd-legacy""#, r#""412""#, legacy.0, legacy.1, t))),
        ("canonical dates", "odd-canonical".into(), Some(insert(r#""odd-canonical""#, r#""412""#, r#"{"$date": {"$numberLong": "1795132800000"}}"#, r#"{"$date": {"$numberLong": "1795392000000"}}"#, t))),
        ("relaxed ISO dates", "odd-relaxed".into(), Some(insert(r#""odd-relaxed""#, r#""412""#, r#"{"$date": "2026-11-21T00:00:00Z"}"#, r#"{"$date": "2026-11-24T00:00:00.000Z"}"#, t))),
        ("plain string dates", "odd-plain".into(), Some(insert(r#""odd-plain""#, r#""412""#, r#""2026-11-21""#, r#""2026-11-24""#, t))),
        ("room as a number", "odd-room-number".into(), Some(insert(r#""odd-room-number""#, "412", legacy.0, legacy.1, t))),
        ("room as canonical $numberInt", "odd-room-int".into(), Some(insert(r#""odd-room-int""#, r#"{"$numberInt": "412"}"#, legacy.0, legacy.1, t))),
        ("ObjectId id", "6502a1f0c3b7e41d9a0affff".into(), Some(insert(r#"{"$oid": "6502a1f0c3b7e41d9a0affff"}"#, r#""412""#, legacy.0, legacy.1, t))),
        ("numeric id", "90210".into(), Some(insert("90210", r#""412""#, legacy.0, legacy.1, t))),
        ("$numberLong id", "90211".into(), Some(insert(r#"{"$numberLong": "90211"}"#, r#""412""#, legacy.0, legacy.1, t))),
        ("a JSON string holding the event", "odd-wrapped".into(), Some(serde_json::to_string(&insert(r#""odd-wrapped""#, r#""412""#, legacy.0, legacy.1, t)).unwrap())),
        ("JsonConverter envelope", "odd-envelope".into(), Some(format!(r#"{{"schema": {{"type": "string", "optional": false}}, "payload": {}}}"#, serde_json::to_string(&insert(r#""odd-envelope""#, r#""412""#, legacy.0, legacy.1, t)).unwrap()))),
        // A Kafka null value is a tombstone (Debezium writes one after each
        // delete): valid, carries no change, emits nothing.
        ("null value (tombstone)", String::new(), None),
    ]
}

/// A bad record: (name, record key, record value, the dead-letter kind it must get).
type Pill = (&'static str, Option<Vec<u8>>, Option<Vec<u8>>, &'static str);

/// Bad records of every kind, each with the dead-letter kind it must get.
fn poison_pills() -> Vec<Pill> {
    let t = 1_795_300_000;
    let good = insert(r#""bad-x""#, r#""412""#, r#"{"$date": 1795132800000}"#, r#"{"$date": 1795392000000}"#, t);
    let text = |name: &'static str, value: &str, kind: &'static str| (name, Some(format!("bad-{name}").into_bytes()), Some(value.as_bytes().to_vec()), kind);
    let deep = format!(r#"{{"operationType": "insert", "fullDocument": {{"x": {}{}}}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!(r#"{{"operationType": "insert", "documentKey": {{"_id": "bad-huge"}}, "fullDocument": {{"_id": "bad-huge", "blob": "{}"}}}}"#, "x".repeat(10 << 20));
    let ts = r#""clusterTime": {"$timestamp": {"t": 1795300000, "i": 1}}"#;
    vec![
        text("not JSON", "reservation 42 checked in", "not-json"),
        ("invalid UTF-8", Some(b"bad-utf8".to_vec()), Some(vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']), "not-utf8"),
        text("truncated JSON", &good[..good.len() / 2], "not-json"),
        text("empty value", "", "not-json"),
        text("10 MB value", &huge, "too-large"),
        text("10,000-deep nesting", &deep, "too-deep"),
        text("a JSON number", "42", "not-a-change"),
        text("a JSON array", r#"[{"operationType": "insert"}]"#, "not-a-change"),
        text("an empty object", "{}", "not-a-change"),
        text("a string holding garbage", r#""not json inside""#, "not-json"),
        text("missing documentKey and _id", &format!(r#"{{"operationType": "delete", {ts}}}"#), "missing-id"),
        text("documentKey without _id", &format!(r#"{{"operationType": "delete", "documentKey": {{"reservation": "r1"}}, {ts}}}"#), "missing-id"),
        text("id null", &format!(r#"{{"operationType": "delete", "documentKey": {{"_id": null}}, {ts}}}"#), "invalid-id"),
        text("id an array", &format!(r#"{{"operationType": "delete", "documentKey": {{"_id": [1, 2]}}, {ts}}}"#), "invalid-id"),
        text("id a boolean", &format!(r#"{{"operationType": "delete", "documentKey": {{"_id": true}}, {ts}}}"#), "invalid-id"),
        text("unknown operationType", &format!(r#"{{"operationType": "upsert", "documentKey": {{"_id": "r1"}}, {ts}}}"#), "unknown-operation"),
        text("operationType a number", &format!(r#"{{"operationType": 2, "documentKey": {{"_id": "r1"}}, {ts}}}"#), "malformed"),
        text("insert without fullDocument", &format!(r#"{{"operationType": "insert", "documentKey": {{"_id": "r1"}}, {ts}}}"#), "malformed"),
        text("update without updateDescription", &format!(r#"{{"operationType": "update", "documentKey": {{"_id": "r1"}}, {ts}}}"#), "malformed"),
        text("clusterTime seconds as a word", r#"{"operationType": "delete", "documentKey": {"_id": "r1"}, "clusterTime": {"$timestamp": {"t": "soon", "i": 1}}}"#, "malformed"),
        text("change-stream fields without operationType", &format!(r#"{{"documentKey": {{"_id": "r1"}}, {ts}}}"#), "malformed"),
        ("Avro with an unknown schema id", Some(b"bad-avro".to_vec()), Some(vec![0, 0, 0, 0x30, 0x39, 0x02, 0x0c, b'r', b'e', b's', b'-', b'1']), "unknown-schema"),
        text("Debezium after a broken string", r#"{"op": "c", "after": "{\"_id\": {\"$oid\": ", "source": {"ts_ms": 1795300000000, "ord": 1}}"#, "malformed"),
        text("Debezium unknown op", r#"{"op": "x", "after": "{\"_id\": \"r1\"}", "source": {"ts_ms": 1795300000000, "ord": 1}}"#, "unknown-operation"),
        text("Debezium after without op", r#"{"after": "{\"_id\": \"r1\"}", "source": {"ts_ms": 1795300000000}}"#, "malformed"),
        text("JsonConverter envelope around a number", r#"{"schema": {"type": "int32"}, "payload": 42}"#, "not-a-change"),
        ("key not UTF-8", Some(vec![0xc3, 0x28]), Some(good.clone().into_bytes()), "not-utf8"),
        // Values of the wrong type in mapped fields: never in an event.
        text("a $date that is no number", &insert(r#""bad-date-abc""#, r#""412""#, r#"{"$date": 1795132800000}"#, r#"{"$date": {"$numberLong": "abc"}}"#, t), "invalid-value"),
        text("a $date past year 9999", &insert(r#""bad-date-big""#, r#""412""#, r#"{"$date": 1795132800000}"#, r#"{"$date": {"$numberLong": "99999999999999999999999"}}"#, t), "invalid-value"),
        text("a $date of 1e20 ms", &insert(r#""bad-date-1e20""#, r#""412""#, r#"{"$date": 1e20}"#, r#"{"$date": 1795392000000}"#, t), "invalid-value"),
        text("a room that is a document", &insert(r#""bad-room-doc""#, r#"{"a": 1}"#, r#"{"$date": 1795132800000}"#, r#"{"$date": 1795392000000}"#, t), "invalid-value"),
        text("a room that is an array", &insert(r#""bad-room-array""#, "[412]", r#"{"$date": 1795132800000}"#, r#"{"$date": 1795392000000}"#, t), "invalid-value"),
        text("an update setting a boolean date", &format!(r#"{{"operationType": "update", "documentKey": {{"_id": "bad-upd"}}, {ts}, "updateDescription": {{"updatedFields": {{"departureDate": true}}, "removedFields": []}}}}"#), "invalid-value"),
    ]
}

#[test]
fn poison_pills_go_to_the_dead_letter_topic_and_valid_records_give_replays_events() {
    let broker = Broker::start("poison");
    let input = broker.name("raw");
    broker.create_topic(&input, 3, &[]);
    let valid = workload(200, 3000, 21);
    let odd = odd_but_valid();
    let pills = poison_pills();
    assert!(pills.len() >= 33, "the suite tries at least 33 kinds of bad input");

    // The stream: the workload with odd-but-valid and bad records spread through it.
    let mut stream: Vec<RawRecord> = valid.iter().map(|(k, v)| (Some(k.clone().into_bytes()), Some(v.clone().into_bytes()))).collect();
    let mut at = 5;
    for (name, id, value) in &odd {
        let key = if id.is_empty() { format!("odd-{name}") } else { id.clone() };
        stream.insert(at.min(stream.len()), (Some(key.into_bytes()), value.clone().map(String::into_bytes)));
        at += 97;
    }
    for (_, key, value, _) in &pills {
        stream.insert(at.min(stream.len()), (key.clone(), value.clone()));
        at += 89;
    }
    broker.produce_raw(&input, &stream);

    // What replay computes for the valid records alone (tombstones carry nothing).
    let mut replayable = valid.clone();
    replayable.extend(odd.iter().filter_map(|(_, id, v)| v.clone().map(|v| (id.clone(), v))));
    let expected = replay_events(&replayable);

    let app = broker.name("app");
    let state = tempfile::tempdir().unwrap();
    let instance = Instance::start(&broker, &input, &app, state.path(), "a");
    let out = format!("{app}-events");
    let got = wait_for(&broker, &out, Duration::from_secs(120), |e| e.len() >= expected.len());
    let dlt = wait_records(&broker, &format!("{input}.dlt"), pills.len(), Duration::from_secs(60));
    assert!(instance.is_running(), "the service never stops or restarts on bad input");
    assert_eq!(instance.terminate(), Some(0));

    assert_same_per_reservation(&got, &expected);
    // Each odd-but-valid record was processed: its reservation checked in once.
    for (name, id, value) in &odd {
        if value.is_some() {
            let n = got.iter().filter(|e| e["reservationId"] == id.as_str() && e["eventType"] == "CHECKED_IN").count();
            assert_eq!(n, 1, "{name}: reservation {id} should have one CHECKED_IN, got {n}");
        }
    }
    // Each bad record is in the dead-letter topic once, byte for byte, with its kind.
    assert_eq!(dlt.len(), pills.len(), "one dead letter per bad record, no more");
    let by_value: HashMap<Vec<u8>, &Record> = dlt.iter().map(|r| (r.value.clone().unwrap_or_default(), r)).collect();
    let mut wrong = Vec::new();
    for (name, _, value, kind) in &pills {
        let Some(r) = by_value.get(value.as_deref().unwrap_or_default()) else {
            wrong.push(format!("{name}: not in the dead-letter topic"));
            continue;
        };
        let h: BTreeMap<&str, &str> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if h.get("resevent.error.kind") != Some(kind) {
            wrong.push(format!("{name}: kind {:?}, expected {kind} ({:?})", h.get("resevent.error.kind"), h.get("resevent.error.message")));
        }
        for header in ["resevent.error.message", "resevent.original.partition", "resevent.original.offset", "resevent.original.timestamp", "resevent.version", "resevent.time"] {
            if h.get(header).is_none_or(|v| v.is_empty()) {
                wrong.push(format!("{name}: no {header} header"));
            }
        }
        if h.get("resevent.original.topic") != Some(&input.as_str()) {
            wrong.push(format!("{name}: original topic {:?}", h.get("resevent.original.topic")));
        }
    }
    assert!(wrong.is_empty(), "dead letters:\n  {}", wrong.join("\n  "));
}

#[test]
fn broker_gone_for_30_seconds_mid_stream_loses_nothing() {
    let (broker, proxy) = Broker::start_behind_proxy("outage");
    let input = broker.name("raw");
    broker.create_topic(&input, 4, &[]);
    let records = workload(300, 24_000, 31);
    let (first, rest) = records.split_at(4_000);
    broker.produce(&input, first);
    let expected = replay_events(&records);

    let app = broker.name("app");
    let state = tempfile::tempdir().unwrap();
    // A 10 s delivery timeout makes the outage fail deliveries. The commit
    // interval is as long as the outage, so an interval falls due while the
    // broker is gone whenever the cut comes: the retry path runs even on a
    // machine fast enough to have drained `rest` before the cut (a shorter
    // interval let that machine commit everything first, and the outage
    // then found nothing to fail). The commit that falls due seals its
    // interval while the rest of the input goes on being processed into the
    // next: the outage fails the one committing with the next in flight,
    // and both are rewound.
    let env = [
        ("RESEVENT_MAX_BATCH_RECORDS", "20"),
        ("RESEVENT_PRODUCER__MESSAGE_TIMEOUT_MS", "10000"),
        ("RESEVENT_RETRY_MAX_BACKOFF_MS", "4000"),
        ("RESEVENT_COMMIT_INTERVAL_MS", "30000"),
    ];
    let instance = Instance::start_with(&broker, &input, &app, state.path(), "a", &[], &env);
    let out = format!("{app}-events");
    wait_for(&broker, &out, Duration::from_secs(60), |e| !e.is_empty());
    // The rest arrives, and the broker goes away while it is being processed.
    broker.produce(&input, rest);
    proxy.cut();
    std::thread::sleep(Duration::from_secs(30));
    assert!(instance.is_running(), "resevent waits out the outage");
    proxy.restore();

    assert_replays_events_without_restart(&broker, &out, &instance, &expected);
    // The outage failed a commit, by one of two paths, and the service
    // recovered from it: the interval is rewound and retried until it goes
    // through, or (when the group session timed out during the outage) the
    // commit before revocation fails and the partitions, assigned again,
    // are read from the last committed offsets.
    // The events can all be on the topic before the recovery is logged
    // (they were sent before the failed commit), so the recovery is waited for.
    let recovered = |log: &str| {
        let retried = log.contains("transient failure") && log.contains("the interval went through after the failure");
        let revoked = log.contains("commit before revocation failed") && log.matches("partitions assigned").count() >= 2;
        retried || revoked
    };
    instance.wait_until(Duration::from_secs(120), "a commit failed by the outage and the recovery from it", recovered);
    assert_eq!(instance.terminate(), Some(0));
}

/// Waits until the business topic holds every event replay computes, then
/// asserts: nothing lost, no eventId replay does not emit, any repeat with the
/// same content (`dedup` asserts that), and the instance never stopped.
fn assert_replays_events_without_restart(broker: &Broker, out: &str, instance: &Instance, expected: &[serde_json::Value]) {
    let got = wait_for(broker, out, Duration::from_secs(240), |e| dedup(e).len() >= expected.len());
    assert!(instance.is_running(), "no restart");
    let got = dedup(&got);
    assert_eq!(got.len(), expected.len(), "no eventId that replay does not emit");
    assert_same_per_reservation(&got, expected);
}

/// Makes a directory unwritable (no new files) even for root, or writable again.
fn set_writable(dir: &Path, writable: bool) {
    use std::os::unix::fs::PermissionsExt;
    let root = std::fs::read_to_string("/proc/self/status").unwrap().lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if root {
        // Root ignores permission bits; the immutable attribute binds it too.
        let status = std::process::Command::new("chattr").arg(if writable { "-i" } else { "+i" }).arg(dir).status().expect("chattr (e2fsprogs) is needed to make a directory unwritable for root");
        assert!(status.success(), "chattr failed on {}; this test needs a filesystem with the immutable attribute", dir.display());
    } else {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(if writable { 0o755 } else { 0o555 })).unwrap();
    }
}

#[test]
fn an_unwritable_state_directory_loses_nothing() {
    let broker = Broker::start("readonly");
    let input = broker.name("raw");
    broker.create_topic(&input, 2, &[]);
    let records = workload(300, 12_000, 41);
    let (first, rest) = records.split_at(2_000);
    broker.produce(&input, first);
    let expected = replay_events(&records);

    let app = broker.name("app");
    let state = tempfile::tempdir().unwrap();
    // The store must fail while its directory is unwritable, whatever the
    // machine's speed. Commits come by volume, not only by time: a 16 KiB
    // cache bound commits every ~80 changed reservations (~100 records), so
    // the rest's 10,000 records write on the order of 8,000 states (about a
    // megabyte), and a 64 KB memtable (RocksDB's smallest) fills and needs a
    // new file on disk long before they are done. That flush fails; RocksDB
    // then refuses writes, and the commit's write fails as a state store
    // fault that rewinds and retries the interval.
    let env = [
        ("RESEVENT_MAX_BATCH_RECORDS", "20"),
        ("RESEVENT_CACHE_MAX_BYTES", "16384"),
        ("RESEVENT_STATE_WRITE_BUFFER_BYTES", "65536"),
        ("RESEVENT_RETRY_MAX_BACKOFF_MS", "2000"),
    ];
    let instance = Instance::start_with(&broker, &input, &app, state.path(), "a", &[], &env);
    let out = format!("{app}-events");
    wait_for(&broker, &out, Duration::from_secs(60), |e| !e.is_empty());
    set_writable(state.path(), false);
    let fixed = Writable(state.path());
    broker.produce(&input, rest);
    // The directory stays unwritable until the store has visibly failed.
    let failure = wait_for_store_failure(&broker, &instance, &app, &input);
    assert!(instance.is_running(), "a state store fault does not stop the service");
    drop(fixed);
    // Writable again: the store is reopened, its partitions restored from
    // the changelog, and the interval goes through.
    instance.wait_log("state store reopened", 1, Duration::from_secs(120));
    assert_replays_events_without_restart(&broker, &out, &instance, &expected);
    instance.wait_log("the interval went through after the failure", 1, Duration::from_secs(60));
    assert_eq!(instance.terminate(), Some(0));
    eprintln!("the store failed as intended: {failure}");
    // The state it kept through the outage is replay's.
    let store = resevent::state::store::StateStore::open(state.path()).unwrap();
    let mut kept = std::collections::BTreeMap::new();
    for p in 0..2 {
        kept.extend(store.reservations(&resevent::state::task_name(p)).unwrap());
    }
    assert!(kept == replay_state(&records), "the state after the outage differs from replay's");
}

/// Waits for the log line of a state store fault that rewound the interval
/// (a "transient failure" naming the state store) and returns it. Panics if
/// the instance commits the whole input without one (the store never
/// failed, so the test would prove nothing), or after a generous wait.
fn wait_for_store_failure(broker: &Broker, instance: &Instance, app: &str, input: &str) -> String {
    let failure = |log: &str| log.lines().find(|l| l.contains("transient failure") && l.contains("error=state store: ")).map(String::from);
    let within = Duration::from_secs(180);
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(line) = failure(&instance.text()) {
            return line;
        }
        let lag = broker.group_lag(app, input);
        // Read after the lag: a failure logged before everything was committed is seen.
        if let Some(line) = failure(&instance.text()) {
            return line;
        }
        assert!(lag.values().any(|l| *l > 0), "the state store never failed: every input record was processed and committed while the state directory was unwritable; log {}", instance.log.display());
        assert!(instance.is_running(), "resevent stopped; log {}", instance.log.display());
        assert!(std::time::Instant::now() < deadline, "no state store fault logged within {within:?} of the state directory becoming unwritable (lag {lag:?}); log {}", instance.log.display());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Makes the directory writable again when dropped, even if the test fails.
struct Writable<'a>(&'a Path);

impl Drop for Writable<'_> {
    fn drop(&mut self) {
        set_writable(self.0, true);
    }
}
