//! `resevent dlq` against a real Kafka-protocol broker, next to real `resevent
//! run` processes: the dead letters of a broken id mapping, replayed after the
//! fix, give exactly the events `resevent replay` computes (and replaying
//! again adds no eventId); list, show, dry runs and purge do only what they say.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use resevent::sink::deadletter;
use resevent::dlq::REPLAYED_FROM;

/// `resevent dlq ARGS` against the broker: (exit code, stdout, stderr).
fn dlq(broker: &Broker, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_resevent")).arg("dlq").args(args).args(["--bootstrap-servers", &broker.bootstrap]).env("RESEVENT_LOG", "warn").output().unwrap();
    (out.status.code().expect("an exit code"), String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A header's value; the last one counts, as for resevent.
fn header<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
    r.headers.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn key_and_value(r: &Record) -> (String, String) {
    (r.key.clone().expect("a key"), String::from_utf8(r.value.clone().expect("a value")).expect("UTF-8"))
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Produces one record to one partition.
fn produce_to(broker: &Broker, topic: &str, partition: i32, key: &str, value: &str) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &broker.bootstrap).set("enable.idempotence", "true").create().unwrap();
    producer.send(BaseRecord::to(topic).partition(partition).key(key).payload(value)).map_err(|(e, _)| e).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// A guest checked in as the reservation is first seen: one CHECKED_IN.
fn walk_in(n: u32) -> (String, String) {
    let id = format!("5e7e00000000000000{n:06}");
    let value = format!(
        r#"{{"_id":{{"_data":"82{n:08X}"}},"operationType":"insert","clusterTime":{{"$timestamp":{{"t":1795400000,"i":{n}}}}},"ns":{{"db":"property","coll":"reservation"}},"documentKey":{{"_id":{{"$oid":"{id}"}}}},"fullDocument":{{"_id":{{"$oid":"{id}"}},"propertyId":"P-001","bookingStatus":"Arrived","roomNumber":"101","arrivalDate":{{"$date":1795300000000}},"departureDate":{{"$date":1795500000000}}}}}}"#
    );
    (id, value)
}

fn event_ids(events: &[serde_json::Value]) -> HashSet<String> {
    events.iter().map(|e| e["eventId"].as_str().expect("an eventId").to_string()).collect()
}

#[test]
fn dead_letters_of_a_broken_id_mapping_replayed_after_the_fix_give_the_events_replay_computes() {
    let broker = Broker::start("dlqfix");
    let input = broker.name("raw");
    broker.create_topic(&input, 2, &[]);
    let records = workload(80, 600, 21);
    let expected = replay_events(&records);
    assert!(expected.len() > 100, "workload too small: {} events", expected.len());
    broker.produce(&input, &records);
    let original_partition: BTreeMap<String, i32> = broker.read_all(&input).iter().map(|r| (r.key.clone().unwrap(), r.partition)).collect();

    // The broken mapping: an id field these documents do not have.
    let pipelines = tempfile::tempdir().unwrap();
    let fixed = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/reservations.toml");
    let text = std::fs::read_to_string(fixed).unwrap();
    assert!(text.contains("id = \"_id\""));
    let broken = pipelines.path().join("broken.toml");
    std::fs::write(&broken, text.replace("id = \"_id\"", "id = \"bookingRef\"")).unwrap();

    let app = broker.name("app");
    let out = format!("{app}-events");
    let dlt = format!("{input}.dlt");
    let state = tempfile::tempdir().unwrap();
    let run = Instance::start_with(&broker, &input, &app, state.path(), "broken", &["--pipeline", broken.to_str().unwrap()], &[]);
    let dead = wait_records(&broker, &dlt, records.len(), Duration::from_secs(120));
    assert_eq!(run.terminate(), Some(0));
    // Every record is dead-lettered once, byte for byte, with its reason.
    assert_eq!(sorted(dead.iter().map(key_and_value).collect()), sorted(records.clone()));
    for r in &dead {
        assert_eq!(header(r, deadletter::KIND), Some("missing-id"), "{:?}", r.headers);
        assert_eq!(header(r, deadletter::ORIGINAL_TOPIC), Some(input.as_str()));
    }
    assert!(broker.read_all(&out).is_empty(), "no event from records that could not be decoded");

    // The mapping fixed, the service restarted, the dead letters replayed.
    let run = Instance::start_with(&broker, &input, &app, state.path(), "fixed", &["--pipeline", fixed], &[]);
    let (code, stdout, stderr) = dlq(&broker, &["replay", "--input-topic", &input]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("replayed {} dead letters", records.len())), "{stdout}");
    let got = wait_for(&broker, &out, Duration::from_secs(120), |e| e.len() >= expected.len());
    assert_eq!(got.len(), expected.len(), "one replay, no repeats");
    assert_same_per_reservation(&got, &expected);
    // The re-injected copies: original key, value and partition, only the trail header added.
    let copies: Vec<Record> = broker.read_all(&input).into_iter().filter(|r| header(r, REPLAYED_FROM).is_some()).collect();
    assert_eq!(sorted(copies.iter().map(key_and_value).collect()), sorted(records.clone()));
    for c in &copies {
        assert_eq!(c.partition, original_partition[c.key.as_ref().unwrap()], "a replayed record keeps its partition");
        assert_eq!(c.headers.len(), 1, "resevent's headers are dropped: {:?}", c.headers);
        assert!(header(c, REPLAYED_FROM).unwrap().starts_with(&format!("{dlt}/")));
    }

    // Again: the same records once more, so the same eventIds or none.
    let (code, stdout, stderr) = dlq(&broker, &["replay", "--input-topic", &input]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("replayed {} dead letters", records.len())), "{stdout}");
    // A walk-in behind the second replay in each input partition: once its
    // check-in is out, the partition's replayed records were processed.
    let walk_ins: Vec<(String, String)> = (0..2).map(walk_in).collect();
    for (p, (key, value)) in walk_ins.iter().enumerate() {
        produce_to(&broker, &input, p as i32, key, value);
    }
    let walk_in_ids = event_ids(&replay_events(&walk_ins));
    assert_eq!(walk_in_ids.len(), 2);
    wait_for(&broker, &out, Duration::from_secs(120), |e| walk_in_ids.is_subset(&event_ids(e)));
    // Stopping finishes and acknowledges the batch in hand: the topic is complete now.
    assert_eq!(run.terminate(), Some(0));
    let all: Vec<serde_json::Value> = broker.read_all(&out).iter().map(Record::json).filter(|e| !walk_in_ids.contains(e["eventId"].as_str().unwrap())).collect();
    assert_eq!(event_ids(&all), event_ids(&expected), "the second replay added no new eventId");
    assert_same_per_reservation(&dedup(&all), &expected);
}

#[test]
fn list_show_dry_run_and_purge_do_only_what_they_say() {
    let broker = Broker::start("dlqops");
    let input = broker.name("raw");
    broker.create_topic(&input, 2, &[]);
    // The fixture's bad lines, and the kind `resevent replay` gives each.
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bad-lines.jsonl");
    let scratch = tempfile::tempdir().unwrap();
    let rejected = scratch.path().join("rejected.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_resevent")).arg("replay").arg("--dead-letters").arg(&rejected).arg(fixture).env("RESEVENT_LOG", "error").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().unwrap();
    assert_eq!(status.code(), Some(1), "the fixture has rejected lines");
    let mut bad = Vec::new();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for line in std::fs::read_to_string(&rejected).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        bad.push((format!("bad-{}", r["line"]), r["record"].as_str().unwrap().to_string()));
        *kinds.entry(r["kind"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert!(kinds.len() > 2 && kinds.contains_key("not-json"), "{kinds:?}");
    let n = bad.len();
    broker.produce(&input, &bad);

    let app = broker.name("app");
    let dlt = format!("{input}.dlt");
    let state = tempfile::tempdir().unwrap();
    let run = Instance::start(&broker, &input, &app, state.path(), "a");
    let dead = wait_records(&broker, &dlt, n, Duration::from_secs(120));
    assert_eq!(dead.len(), n);

    // list: the counts by kind are what was dead-lettered.
    let (code, stdout, stderr) = dlq(&broker, &["list", "--input-topic", &input, "--json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let by_kind: BTreeMap<String, u64> = listed["kinds"].as_array().unwrap().iter().map(|k| (k["kind"].as_str().unwrap().to_string(), k["count"].as_u64().unwrap())).collect();
    assert_eq!(by_kind, kinds);
    assert!(listed["kinds"].as_array().unwrap().iter().all(|k| k["original_topic"] == input.as_str() && k["first"].is_string()), "{listed}");
    assert_eq!((listed["total"].as_u64(), listed["replayed"].as_u64()), (Some(n as u64), Some(0)));
    let (code, stdout, _) = dlq(&broker, &["list", "--topic", &dlt]);
    assert_eq!(code, 0);
    assert!(stdout.contains(&format!("{dlt}: {n} dead letters")) && stdout.contains("not-json"), "{stdout}");

    // show: by position in the dead-letter topic (offsets count from 0 in a
    // new topic; the last record of a partition, in its last batch)…
    let partition = dead[0].partition;
    let in_partition: Vec<&Record> = dead.iter().filter(|r| r.partition == partition).collect();
    let (shown, offset) = (in_partition[in_partition.len() - 1], in_partition.len() - 1);
    let (code, stdout, _) = dlq(&broker, &["show", &format!("{partition}:{offset}"), "--input-topic", &input]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains(&format!("{}: {}", deadletter::MESSAGE, header(shown, deadletter::MESSAGE).unwrap())), "{stdout}");
    assert!(stdout.contains(&key_and_value(shown).1), "the original value: {stdout}");
    // …and by the original record's position.
    let last = dead.last().unwrap();
    let original = format!("{}:{}", header(last, deadletter::ORIGINAL_PARTITION).unwrap(), header(last, deadletter::ORIGINAL_OFFSET).unwrap());
    let (code, stdout, _) = dlq(&broker, &["show", "--original", &original, "--input-topic", &input]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains(header(last, deadletter::MESSAGE).unwrap()) && stdout.contains(&key_and_value(last).1), "{stdout}");
    let (code, _, _) = dlq(&broker, &["show", &format!("{partition}:{}", 10 * n), "--input-topic", &input]);
    assert_eq!(code, 1, "no dead letter there");

    // A dry run counts what it would replay, and produces nothing.
    let in_input = broker.read_all(&input).len();
    let (code, stdout, stderr) = dlq(&broker, &["replay", "--dry-run", "--kind", "not-json", "--input-topic", &input]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("would replay {} dead letters", kinds["not-json"])), "{stdout}");
    assert_eq!(broker.read_all(&input).len(), in_input, "a dry run produces nothing");
    let (code, _, _) = dlq(&broker, &["replay", "--dry-run", "--since", "2999-01-01", "--input-topic", &input]);
    assert_eq!(code, 1, "nothing was dead-lettered in 2999");

    // Nothing is purged before a full replay, --yes or not.
    let (code, stdout, _) = dlq(&broker, &["purge", "--yes", "--input-topic", &input]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("no full replay"), "{stdout}");

    // A full replay; the service dead-letters the still-bad records again, above the mark.
    let (code, stdout, stderr) = dlq(&broker, &["replay", "--input-topic", &input]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("replayed {n} dead letters")), "{stdout}");
    let dead = wait_records(&broker, &dlt, 2 * n, Duration::from_secs(120));
    let again: Vec<&Record> = dead.iter().filter(|r| header(r, REPLAYED_FROM).is_some()).collect();
    assert_eq!(sorted(again.iter().map(|r| key_and_value(r)).collect()), sorted(bad.clone()));
    let (_, stdout, _) = dlq(&broker, &["list", "--input-topic", &input, "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((listed["total"].as_u64(), listed["replayed"].as_u64()), (Some(2 * n as u64), Some(n as u64)), "{listed}");

    // purge without --yes refuses and deletes nothing.
    let (code, stdout, _) = dlq(&broker, &["purge", "--input-topic", &input]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains(&format!("would delete {n} dead letters")) && stdout.contains("--yes"), "{stdout}");
    assert_eq!(broker.read_all(&dlt).len(), 2 * n);

    // purge --yes deletes exactly what the full replay re-injected, on a broker with DeleteRecords.
    let (code, stdout, stderr) = dlq(&broker, &["purge", "--yes", "--input-topic", &input]);
    let left = broker.read_all(&dlt);
    if std::env::var("RESEVENT_TEST_BOOTSTRAP").is_err() {
        // Tansu 0.6.0 does not implement DeleteRecords: purge must say so and delete nothing.
        assert_eq!(code, 2, "{stdout}{stderr}");
        assert!(stderr.contains("DeleteRecords") && stderr.contains("nothing was deleted"), "{stderr}");
        assert_eq!(left.len(), 2 * n);
    } else {
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(stdout.contains(&format!("deleted {n} dead letters")), "{stdout}");
        assert_eq!(left.len(), n);
        assert!(left.iter().all(|r| header(r, REPLAYED_FROM).is_some()), "only the records dead-lettered after the replay are left");
    }
    assert_eq!(run.terminate(), Some(0));
}
