//! Avro through a Schema Registry, end to end on the real broker: business
//! events out as Avro, read back by `resevent tail` and by Confluent's own
//! Python client; Avro change events in, shaped as the MongoDB connector and
//! Debezium write them, giving the events of their JSON twins; a registry
//! outage at start and mid-stream; and schema evolution both ways.
//! The registry is the test double in `common/registry.rs` (none can be
//! installed here); everything else is real.

mod common;

use std::process::Command;
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use common::registry::Registry;
use common::*;
use serde_json::{Value, json};

const MONGO_VALUE: &str = include_str!("../fixtures/avro/mongo-change-stream.avsc");
const MONGO_KEY: &str = include_str!("../fixtures/avro/mongo-key.avsc");
const DEBEZIUM_VALUE: &str = include_str!("../fixtures/avro/debezium-envelope.avsc");
const DEBEZIUM_KEY: &str = include_str!("../fixtures/avro/debezium-key.avsc");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn av(json: Value) -> Avro {
    Avro::try_from(json).unwrap()
}

/// A datum of `schema` (`value` resolved to it first: union branches, defaults).
fn write(schema: &Schema, value: Avro) -> Vec<u8> {
    let value = value.resolve(schema).expect("value fits the schema");
    apache_avro::writer::datum::GenericDatumWriter::builder(schema).build().unwrap().write_value_to_vec(value).unwrap()
}

/// A datum written with `writer`, read as `reader` would see it.
fn read(writer: &Schema, reader: &Schema, datum: &[u8]) -> Value {
    let r = apache_avro::reader::datum::GenericDatumReader::builder(writer).reader_schema(reader).build().unwrap();
    resevent::decode::avro::to_json(&r.read_value(&mut &datum[..]).unwrap())
}

/// `datum` in the Confluent wire format.
fn framed(id: u32, schema: &Schema, value: Avro) -> Vec<u8> {
    let datum = write(schema, value);
    let mut out = vec![0u8];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&datum);
    out
}

/// A MongoDB connector change event (JSON, as with the JsonConverter) in
/// the shape its default Avro schema gives it: the varying parts as
/// Extended JSON strings, wallTime as epoch ms.
fn mongo_as_avro(change: &Value) -> Avro {
    let text = |v: &Value| if v.is_null() { Value::Null } else { Value::String(v.to_string()) };
    let wall = match &change["wallTime"]["$date"] {
        Value::Number(n) => json!(n),
        Value::Object(o) => json!(o["$numberLong"].as_str().unwrap().parse::<i64>().unwrap()),
        _ => Value::Null,
    };
    let update = match change.get("updateDescription") {
        Some(u) if !u.is_null() => json!({
            "updatedFields": text(&u["updatedFields"]),
            "removedFields": u.get("removedFields").cloned().unwrap_or(json!([])),
            "truncatedArrays": [],
            "disambiguatedPaths": null,
        }),
        _ => Value::Null,
    };
    let v = json!({
        "_id": change["_id"].to_string(),
        "operationType": change["operationType"],
        "fullDocumentBeforeChange": null,
        "fullDocument": text(change.get("fullDocument").unwrap_or(&Value::Null)),
        "ns": change.get("ns").cloned().unwrap_or(Value::Null),
        "to": null,
        "documentKey": text(change.get("documentKey").unwrap_or(&Value::Null)),
        "updateDescription": update,
        "clusterTime": text(change.get("clusterTime").unwrap_or(&Value::Null)),
        "wallTime": wall,
        "txnNumber": change.get("txnNumber").cloned().unwrap_or(Value::Null),
        "lsid": null,
    });
    av(v)
}

/// The connector's key record: the document key's _id as text.
fn mongo_key_as_avro(change: &Value) -> Avro {
    let id = &change["documentKey"]["_id"];
    let text = match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    av(json!({ "_id": text }))
}

/// `resevent replay` of a fixture: the events of the JSON twin, eventIds included.
fn replay_file(name: &str) -> Vec<Value> {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let keyed = name.contains(".keyed.");
    let out = Command::new(env!("CARGO_BIN_EXE_resevent")).arg("replay").args(keyed.then_some("--keyed")).arg(&path).env("RESEVENT_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    lines(&String::from_utf8(out.stdout).unwrap())
}

fn python() -> String {
    std::env::var("RESEVENT_PYTHON").unwrap_or_else(|_| panic!("this test needs RESEVENT_PYTHON, a Python with confluent-kafka and fastavro (scripts/test installs them)"))
}

/// `resevent tail` of a whole topic, as JSON values.
fn tail(broker: &Broker, topic: &str, registry: &str, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_resevent"))
        .args(["tail", "--bootstrap-servers", &broker.bootstrap, "--topic", topic, "--from-beginning", "--exit-at-end", "--schema-registry-url", registry])
        .args(extra)
        .env("RESEVENT_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "tail failed: {}", String::from_utf8_lossy(&out.stderr));
    lines(&String::from_utf8(out.stdout).unwrap())
}

#[test]
fn avro_out_reads_back_through_tail_and_confluents_python_client_as_replay_emits() {
    let broker = Broker::start("avro-out");
    let registry = Registry::start();
    let input = broker.name("raw");
    broker.create_topic(&input, 4, &[]);
    let records = workload(200, 2500, 21);
    let expected = replay_events(&records);
    broker.produce(&input, &records);
    let app = broker.name("app");
    let state = tempfile::tempdir().unwrap();
    let instance = Instance::start_with(&broker, &input, &app, state.path(), "a", &["--output-format", "avro", "--schema-registry-url", &registry.url()], &[]);
    let out = format!("{app}-events");
    let raw = wait_records(&broker, &out, expected.len(), Duration::from_secs(120));
    assert_eq!(instance.terminate(), Some(0));

    // One version under the topic's subject: this build's schemas/ file.
    let ids = registry.versions(&format!("{out}-value"));
    assert_eq!(ids.len(), 1, "{ids:?}");
    let ours = Schema::parse_str(include_str!("../schemas/business-event.avsc")).unwrap();
    assert_eq!(Schema::parse_str(&registry.schema(ids[0]).unwrap()).unwrap().canonical_form(), ours.canonical_form());
    // Every value framed: magic byte 0, then that id.
    let mut avro_bytes = 0usize;
    for r in &raw {
        let v = r.value.as_deref().unwrap();
        assert_eq!(v[0], 0, "magic byte");
        assert_eq!(u32::from_be_bytes(v[1..5].try_into().unwrap()), ids[0]);
        avro_bytes += v.len();
    }
    let json_bytes: usize = expected.iter().map(|e| serde_json::to_vec(e).unwrap().len()).sum();
    eprintln!("bytes per business event: Avro {:.1}, JSON {:.1} ({} events)", avro_bytes as f64 / raw.len() as f64, json_bytes as f64 / expected.len() as f64, raw.len());
    assert!(avro_bytes < json_bytes, "Avro ({avro_bytes} B) should be smaller than JSON ({json_bytes} B)");

    // resevent's own tail: the same events replay emits.
    let tailed = tail(&broker, &out, &registry.url(), &[]);
    assert_eq!(tailed.len(), expected.len());
    assert_same_per_reservation(&tailed, &expected);
    // Filters: by type (header) and by reservation (key).
    let checkouts = tail(&broker, &out, &registry.url(), &["--event-type", "CHECKED_OUT"]);
    let expected_checkouts: Vec<Value> = expected.iter().filter(|e| e["eventType"] == "CHECKED_OUT").cloned().collect();
    assert!(!checkouts.is_empty());
    assert_same_per_reservation(&checkouts, &expected_checkouts);
    let one = expected[0]["reservationId"].as_str().unwrap();
    let mine = tail(&broker, &out, &registry.url(), &["--reservation", one]);
    assert_eq!(mine, per_reservation(&expected)[one]);

    // Confluent's Python client with fastavro, which nobody here wrote.
    let py = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/avro_consumer.py"))
        .args([&broker.bootstrap, &out, &registry.url(), &expected.len().to_string(), "90"])
        .output()
        .unwrap();
    assert!(py.status.success(), "python consumer: {}", String::from_utf8_lossy(&py.stderr));
    let mut decoded = lines(&String::from_utf8(py.stdout).unwrap());
    for e in &mut decoded {
        let o = e.as_object_mut().unwrap();
        let header = o.remove("_header_eventType").unwrap();
        let key = o.remove("_key").unwrap();
        assert_eq!(header, o["eventType"], "eventType header");
        assert_eq!(key, o["reservationId"], "keyed by reservation");
    }
    assert_same_per_reservation(&decoded, &expected);

    // The example consumers downstream (examples/), each in a group of its
    // own. A repeat of one checkout, as a retried interval writes it, reaches
    // both; each acts once per event and skips the types it does not handle.
    let checkout = raw.iter().find(|r| r.headers.iter().any(|(k, v)| k == "eventType" && v == "CHECKED_OUT")).unwrap();
    broker.produce_with_headers(&out, checkout.key.as_deref().unwrap().as_bytes(), checkout.value.as_deref().unwrap(), &checkout.headers);
    let example = |name: &str| {
        let bin = std::path::Path::new(env!("CARGO_BIN_EXE_resevent")).parent().unwrap().join("examples").join(name);
        let run = Command::new(&bin)
            .args(["--bootstrap-servers", &broker.bootstrap, "--topic", &out, "--group", &broker.name(name), "--schema-registry-url", &registry.url(), "--idle-exit-secs", "15", "--kafka", "session.timeout.ms=6000"])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (cargo test builds the examples)", bin.display()));
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
        (lines(&String::from_utf8(run.stdout).unwrap()), String::from_utf8(run.stderr).unwrap())
    };
    // What the contract asks of each, from replay's events.
    let key_actions: Vec<(String, String, Value)> = expected
        .iter()
        .flat_map(|e| {
            let id = e["reservationId"].as_str().unwrap().to_string();
            let act = |a: &str, room: &Value| (id.clone(), a.to_string(), room.clone());
            match e["eventType"].as_str().unwrap() {
                "CHECKED_IN" | "ACCIDENTAL_CHECKOUT" => vec![act("ISSUE_KEY", &e["roomNumber"])],
                "ROOM_CHANGED" => vec![act("REVOKE_KEY", &e["previousRoomNumber"]), act("ISSUE_KEY", &e["roomNumber"])],
                "DEPARTURE_CHANGED" => vec![act("UPDATE_EXPIRY", &e["roomNumber"])],
                "CHECKED_OUT" | "CHECKIN_REVERSED" => vec![act("REVOKE_KEY", &e["roomNumber"])],
                _ => vec![],
            }
        })
        .collect();
    let (keys, log) = example("key_service");
    let mut got: Vec<(String, String, Value)> = keys.iter().map(|a| (a["reservationId"].as_str().unwrap().to_string(), a["action"].as_str().unwrap().to_string(), a["room"].clone())).collect();
    let mut want = key_actions.clone();
    // Order holds per reservation (one partition each); compare per reservation.
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want, "key_service's actions");
    assert!(log.contains("1 repeats dropped"), "{log}");
    let documents: Vec<(String, String)> = expected
        .iter()
        .filter_map(|e| match e["eventType"].as_str().unwrap() {
            "CHECKED_OUT" => Some((e["reservationId"].as_str().unwrap().to_string(), "SCHEDULE_DELETION".to_string())),
            "ACCIDENTAL_CHECKOUT" => Some((e["reservationId"].as_str().unwrap().to_string(), "CANCEL_DELETION".to_string())),
            _ => None,
        })
        .collect();
    let (docs, log) = example("id_documents");
    let mut got: Vec<(String, String)> = docs.iter().map(|a| (a["reservationId"].as_str().unwrap().to_string(), a["action"].as_str().unwrap().to_string())).collect();
    let mut want = documents;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want, "id_documents' actions");
    assert!(log.contains("1 repeats dropped"), "{log}");
    let skipped: u64 = log.split(", ").find_map(|p| p.strip_suffix(" skipped by header")).unwrap().parse().unwrap();
    assert_eq!(skipped as usize, expected.len() - want.len(), "every other type skipped by its header: {log}");
}

#[test]
fn avro_input_from_either_connector_gives_the_events_of_its_json_twin() {
    let broker = Broker::start("avro-in");
    // A registry that wants basic auth, as Confluent Cloud's does.
    let registry = Registry::start_with_auth("svc-resevent:reg-Secret-77");
    let auth = [("RESEVENT_SCHEMA_REGISTRY__BASIC_AUTH_USER_INFO", "svc-resevent:reg-Secret-77")];

    // The MongoDB connector, output.format.key/value=schema with the AvroConverter.
    let mongo_topic = broker.name("mongo");
    broker.create_topic(&mongo_topic, 1, &[]);
    let (mv, mk) = (Schema::parse_str(MONGO_VALUE).unwrap(), Schema::parse_str(MONGO_KEY).unwrap());
    let (mv_id, mk_id) = (registry.register(&format!("{mongo_topic}-value"), MONGO_VALUE), registry.register(&format!("{mongo_topic}-key"), MONGO_KEY));
    let changes = lines(&fixture("mongo-canonical.jsonl"));
    let mut mongo_records: Vec<RawRecord> = changes.iter().map(|c| (Some(framed(mk_id, &mk, mongo_key_as_avro(c))), Some(framed(mv_id, &mv, mongo_as_avro(c))))).collect();
    // Two that can never decode: a schema id the registry never gave, and
    // bytes that are not a datum of the schema they name.
    mongo_records.push((Some(b"ghost".to_vec()), Some(vec![0, 0, 0, 3, 231, 2, 4])));
    mongo_records.push((Some(b"garbled".to_vec()), Some(vec![0, 0, 0, 0, mv_id as u8, 0xff, 0xff, 0xff])));
    broker.produce_raw(&mongo_topic, &mongo_records);

    // Debezium's MongoDB connector with the AvroConverter (tombstones included).
    let dbz_topic = broker.name("debezium");
    broker.create_topic(&dbz_topic, 1, &[]);
    let (dv, dk) = (Schema::parse_str(DEBEZIUM_VALUE).unwrap(), Schema::parse_str(DEBEZIUM_KEY).unwrap());
    let (dv_id, dk_id) = (registry.register(&format!("{dbz_topic}-value"), DEBEZIUM_VALUE), registry.register(&format!("{dbz_topic}-key"), DEBEZIUM_KEY));
    let keyed = lines(&fixture("debezium.keyed.jsonl"));
    let dbz_records: Vec<RawRecord> = keyed
        .iter()
        .map(|r| (Some(framed(dk_id, &dk, av(r["key"].clone()))), (!r["value"].is_null()).then(|| framed(dv_id, &dv, av(r["value"].clone())))))
        .collect();
    broker.produce_raw(&dbz_topic, &dbz_records);

    let url = registry.url();
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (app1, app2) = (broker.name("mongo-app"), broker.name("dbz-app"));
    let i1 = Instance::start_with(&broker, &mongo_topic, &app1, s1.path(), "m", &["--schema-registry-url", &url], &auth);
    let i2 = Instance::start_with(&broker, &dbz_topic, &app2, s2.path(), "d", &["--schema-registry-url", &url], &auth);
    let logs = [i1.log.clone(), i2.log.clone()];
    for (app, twin, instance) in [(&app1, "mongo-canonical.jsonl", i1), (&app2, "debezium.keyed.jsonl", i2)] {
        let expected = replay_file(twin);
        assert!(!expected.is_empty());
        let got = wait_for(&broker, &format!("{app}-events"), Duration::from_secs(90), |e| e.len() >= expected.len());
        assert_eq!(instance.terminate(), Some(0));
        assert_eq!(got, expected, "{twin}: the Avro records give exactly the JSON twin's events");
    }
    // The two undecodable records are dead letters, original bytes and reason kept.
    let dead = broker.read_all(&format!("{mongo_topic}.dlt"));
    assert_eq!(dead.len(), 2, "{dead:?}");
    let kind = |r: &Record| r.headers.iter().find(|(k, _)| k == "resevent.error.kind").map(|(_, v)| v.clone()).unwrap();
    assert_eq!(kind(&dead[0]), "unknown-schema");
    assert_eq!(dead[0].value.as_deref(), Some(&[0u8, 0, 0, 3, 231, 2, 4][..]));
    assert!(dead[0].headers.iter().any(|(k, v)| k == "resevent.error.message" && v.contains("999")), "{:?}", dead[0].headers);
    assert_eq!(kind(&dead[1]), "bad-avro");
    assert!(broker.read_all(&format!("{dbz_topic}.dlt")).is_empty());
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("svc-resevent:*****") && !text.contains("reg-Secret-77"), "the registry password is masked: {}", log.display());
    }
}

#[test]
fn a_registry_that_refuses_the_credentials_stops_start_up_with_the_reason_and_no_secret() {
    let broker = Broker::start("avro-auth");
    let registry = Registry::start_with_auth("svc:right-password");
    let input = broker.name("raw");
    broker.create_topic(&input, 1, &[]);
    let state = tempfile::tempdir().unwrap();
    let app = broker.name("app");
    let url = format!("http://svc:url-Secret-12@127.0.0.1:{}", registry.port);
    let instance = Instance::start_with(&broker, &input, &app, state.path(), "a", &["--output-format", "avro", "--schema-registry-url", &url], &[("RESEVENT_SCHEMA_REGISTRY__BASIC_AUTH_USER_INFO", "svc:wrong-Secret-34")]);
    let (code, log) = instance.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("refused") && log.contains("401"), "the reason is named: {log}");
    assert!(!log.contains("wrong-Secret-34") && !log.contains("url-Secret-12"), "no secret printed: {log}");
    assert!(!broker.topic_exists(&format!("{app}-events")), "nothing written");
}

#[test]
fn a_registry_outage_at_start_and_mid_stream_holds_records_and_loses_none() {
    let broker = Broker::start("avro-outage");
    let mut registry = Registry::start();
    let input = broker.name("raw");
    broker.create_topic(&input, 2, &[]);
    let records = workload(60, 600, 33);
    let (first, second) = records.split_at(300);
    let expected_first = replay_events(first);
    let expected_all = replay_events(&records);
    assert!(expected_all.len() > expected_first.len());

    // Down at start: nothing is consumed until the event schema is registered.
    registry.stop();
    broker.produce(&input, first);
    let app = broker.name("app");
    let state = tempfile::tempdir().unwrap();
    let out = format!("{app}-events");
    let instance = Instance::start_with(&broker, &input, &app, state.path(), "a", &["--output-format", "avro", "--schema-registry-url", &registry.url()], &[("RESEVENT_RETRY_MAX_BACKOFF_MS", "1000")]);
    instance.wait_log("schema registry unavailable at start", 2, Duration::from_secs(60));
    assert!(broker.read_all(&out).is_empty(), "nothing written while the registry is down (in particular nothing unframed)");
    registry.resume();
    wait_records(&broker, &out, expected_first.len(), Duration::from_secs(90));

    // Down mid-stream: the second half arrives as Avro under a schema id this
    // instance has never fetched; it waits, dead-letters nothing, drops nothing.
    let schema = Schema::parse_str(MONGO_VALUE).unwrap();
    let id = registry.register(&format!("{input}-value"), MONGO_VALUE);
    registry.stop();
    let avro: Vec<RawRecord> = second.iter().map(|(k, v)| (Some(k.clone().into_bytes()), Some(framed(id, &schema, mongo_as_avro(&serde_json::from_str(v).unwrap()))))).collect();
    broker.produce_raw(&input, &avro);
    instance.wait_log("transient failure", 2, Duration::from_secs(60));
    assert_eq!(broker.read_all(&out).len(), expected_first.len(), "nothing of the held records went out");
    registry.resume();
    let raw = wait_records(&broker, &out, expected_all.len(), Duration::from_secs(120));
    assert_eq!(instance.terminate(), Some(0));
    assert!(broker.read_all(&format!("{input}.dlt")).is_empty(), "an outage is no reason to dead-letter");
    assert!(raw.iter().all(|r| r.value.as_deref().is_some_and(|v| v[0] == 0)), "every event framed");
    let got = tail(&broker, &out, &registry.url(), &[]);
    assert_same_per_reservation(&dedup(&got), &expected_all);
}

/// The next version of the event schema as the rules in schemas/README.md
/// allow it: an optional field with a default, and an event type appended.
fn next_version() -> String {
    let mut v: Value = serde_json::from_str(include_str!("../schemas/business-event.avsc")).unwrap();
    v["fields"].as_array_mut().unwrap().push(json!({"name": "bookingChannel", "type": ["null", "string"], "default": null}));
    v["fields"][1]["type"]["symbols"].as_array_mut().unwrap().push(json!("LATE_CHECKOUT"));
    v.to_string()
}

#[test]
fn schemas_evolve_both_ways_and_the_rules_are_enforced() {
    use apache_avro::schema_compatibility::SchemaCompatibility;
    let current = Schema::parse_str(include_str!("../schemas/business-event.avsc")).unwrap();
    // Every schema against its previous version kept in schemas/history/.
    let history = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/history"));
    let mut checked = 0;
    for entry in std::fs::read_dir(history).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let (stem, _) = name.rsplit_once(".v").expect("history files are <schema>.v<N>.avsc");
        let now = Schema::parse_str(&std::fs::read_to_string(history.parent().unwrap().join(format!("{stem}.avsc"))).unwrap()).unwrap();
        let before = Schema::parse_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        SchemaCompatibility::mutual_read(&before, &now).unwrap_or_else(|e| panic!("schemas/{stem}.avsc is not backward and forward compatible with {name}: {e}"));
        checked += 1;
    }
    assert!(checked >= 1, "schemas/history holds the published versions");

    // A reader with the current schema reads what the next version writes, and the reverse.
    let next = Schema::parse_str(&next_version()).unwrap();
    SchemaCompatibility::mutual_read(&current, &next).unwrap();
    let written_by_next = av(json!({"eventId": "e9", "eventType": "LATE_CHECKOUT", "reservationId": "r9", "propertyId": "P-1", "bookingChannel": "web"}));
    let got = read(&next, &current, &write(&next, written_by_next));
    assert_eq!(got["eventType"], "UNKNOWN", "an unknown type reads as the enum's default");
    assert_eq!(got["propertyId"], "P-1");
    assert!(got.get("bookingChannel").is_none());
    let event = resevent::machine::BusinessEvent { event_id: "e1".into(), event_type: "CHECKED_IN", reservation_id: "r1".into(), property_id: Some("P-1".into()), booking_status: Some("Arrived".into()), previous_booking_status: None, room_number: Some("7".into()), previous_room_number: None, arrival_date: None, departure_date: None, previous_departure_date: None, occurred_at: None, source_position: Some("1:1".into()), fired_by: None };
    let written_by_current = resevent::sink::codec::encode_event(&event);
    let got = read(&current, &next, &written_by_current);
    assert_eq!(got["bookingChannel"], Value::Null, "a new field reads as its default");
    assert_eq!(got["eventType"], "CHECKED_IN");
    assert_eq!(got["roomNumber"], "7");

    // Changes the rules forbid are caught: a new required field, a renamed one.
    let mut required: Value = serde_json::from_str(include_str!("../schemas/business-event.avsc")).unwrap();
    required["fields"].as_array_mut().unwrap().push(json!({"name": "hotelChain", "type": "string"}));
    assert!(SchemaCompatibility::mutual_read(&current, &Schema::parse_str(&required.to_string()).unwrap()).is_err());
    let mut renamed: Value = serde_json::from_str(include_str!("../schemas/business-event.avsc")).unwrap();
    renamed["fields"][2]["name"] = json!("bookingId");
    assert!(SchemaCompatibility::mutual_read(&current, &Schema::parse_str(&renamed.to_string()).unwrap()).is_err());
}

#[test]
fn without_auto_registration_the_subject_must_already_hold_this_schema() {
    let broker = Broker::start("avro-lookup");
    let registry = Registry::start();
    let input = broker.name("raw");
    broker.create_topic(&input, 1, &[]);
    let records = workload(10, 60, 5);
    let expected = replay_events(&records);
    broker.produce(&input, &records);
    let no_auto = [("RESEVENT_SCHEMA_REGISTRY__AUTO_REGISTER", "false"), ("RESEVENT_SCHEMA_REGISTRY__SUBJECT_NAME_STRATEGY", "record-name")];
    let args = ["--output-format", "avro", "--schema-registry-url", &registry.url()];

    // The subject (RecordNameStrategy: the record's full name) is empty: refused, with the fix.
    let state = tempfile::tempdir().unwrap();
    let app = broker.name("refused");
    let (code, log) = Instance::start_with(&broker, &input, &app, state.path(), "a", &args, &no_auto).wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("io.resevent.BusinessEvent") && log.contains("auto_register"), "{log}");
    assert!(registry.versions("io.resevent.BusinessEvent").is_empty(), "nothing registered");

    // Registered beforehand (as a platform team would): looked up and used as is.
    let id = registry.register("io.resevent.BusinessEvent", include_str!("../schemas/business-event.avsc"));
    let app = broker.name("looked-up");
    let instance = Instance::start_with(&broker, &input, &app, state.path(), "b", &args, &no_auto);
    let raw = wait_records(&broker, &format!("{app}-events"), expected.len(), Duration::from_secs(60));
    assert_eq!(instance.terminate(), Some(0));
    assert!(raw.iter().all(|r| r.value.as_deref().unwrap()[..5] == [0, 0, 0, 0, id as u8]), "framed with the looked-up id");
    assert_eq!(registry.versions("io.resevent.BusinessEvent"), vec![id], "no new version");
    assert!(registry.versions(&format!("{app}-events-value")).is_empty(), "no topic subject under RecordNameStrategy");
}

#[test]
fn the_registry_over_https_with_a_private_ca() {
    let broker = Broker::start("avro-https");
    let registry = Registry::start();
    let certs = Certs::make();
    // The registry double behind a TLS terminator, with a certificate of the test CA.
    let (_front, port) = tls_front(&certs, registry.port, "registry");
    let url = format!("https://127.0.0.1:{port}");
    let input = broker.name("raw");
    broker.create_topic(&input, 1, &[]);
    let records = workload(10, 60, 9);
    let expected = replay_events(&records);
    broker.produce(&input, &records);
    let args = ["--output-format", "avro", "--schema-registry-url", &url];
    let state = tempfile::tempdir().unwrap();

    // A CA that did not sign the registry's certificate: refused, and said why.
    let app = broker.name("wrong-ca");
    let other = certs.path("other-ca.pem");
    let instance = Instance::start_with(&broker, &input, &app, state.path(), "a", &args, &[("RESEVENT_SCHEMA_REGISTRY__CA_LOCATION", &other)]);
    let (code, log) = instance.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.to_lowercase().contains("certificate"), "names the certificate problem: {log}");

    // The right CA: events out as Avro, readable by tail over the same HTTPS.
    let app = broker.name("right-ca");
    let ca = certs.path("ca.pem");
    let instance = Instance::start_with(&broker, &input, &app, state.path(), "b", &args, &[("RESEVENT_SCHEMA_REGISTRY__CA_LOCATION", &ca)]);
    wait_records(&broker, &format!("{app}-events"), expected.len(), Duration::from_secs(60));
    assert_eq!(instance.terminate(), Some(0));
    let out = Command::new(env!("CARGO_BIN_EXE_resevent"))
        .args(["tail", "--bootstrap-servers", &broker.bootstrap, "--topic", &format!("{app}-events"), "--from-beginning", "--exit-at-end", "--schema-registry-url", &url])
        .env("RESEVENT_SCHEMA_REGISTRY__CA_LOCATION", &ca)
        .env("RESEVENT_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines(&String::from_utf8(out.stdout).unwrap()), expected);
}
