//! `resevent capture` against a real MongoDB-protocol server (SecantusDB,
//! `RESEVENT_SECANTUS`, installed by scripts/test) and a real Kafka-protocol
//! broker (see common/): end to end with `resevent run`, exactly once across
//! kill -9 and takeover, copy-existing without a gap, and a clear stop when
//! the stored resume token cannot be used. Writes go through the `mongodb`
//! driver, as an application's would. Also the connector configs and the
//! compose file, which describe the same deployment without resevent capture.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Broker, Instance, KillOnDrop, Record, free_port, http_get, metric_sum, spawn_listening, wait_metric, wait_records};
use futures_util::StreamExt;
use mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A SecantusDB server (single-node replica set `secantus`, in memory).
struct Mongo {
    _process: KillOnDrop,
    uri: String,
}

impl Mongo {
    fn start(tag: &str, args: &[&str]) -> Mongo {
        Mongo::start_with_options(tag, args, "directConnection=true")
    }

    /// With `options` in the connection string (TLS settings, timeouts).
    fn start_with_options(tag: &str, args: &[&str], options: &str) -> Mongo {
        let bin = std::env::var("RESEVENT_SECANTUS").unwrap_or_else(|_| panic!("this test needs RESEVENT_SECANTUS, the secantusd-py of PyPI secantusdb (scripts/test installs it)"));
        let port = free_port();
        let log = std::env::temp_dir().join(format!("secantus-{tag}-{}.log", std::process::id()));
        let mut cmd = Command::new(&bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--storage-path", ":memory:"]).args(args);
        Mongo { _process: KillOnDrop(spawn_listening(cmd, port, &log, Duration::from_secs(60))), uri: format!("mongodb://127.0.0.1:{port}/?{options}") }
    }

    fn client(&self, rt: &tokio::runtime::Runtime) -> mongodb::Client {
        rt.block_on(mongodb::Client::with_uri_str(&self.uri)).unwrap()
    }
}

/// `resevent capture` of property.reservation into `topic` (a 1.5 s lease,
/// 3 partitions), as common's [`Instance`]: its log, waits and signals.
fn start_capture(mongo: &Mongo, broker: &Broker, topic: &str, tag: &str, args: &[&str]) -> Instance {
    start_capture_uri(&mongo.uri, broker, topic, tag, args)
}

fn start_capture_uri(uri: &str, broker: &Broker, topic: &str, tag: &str, args: &[&str]) -> Instance {
    let log = std::env::temp_dir().join(format!("{}-capture-{tag}.log", broker.name(topic)));
    let mut argv = vec!["capture", "--mongo-uri", uri, "--database", "property", "--collection", "reservation", "--topic", topic, "--bootstrap-servers", &broker.bootstrap];
    argv.extend(["--lease-ms", "1500", "--partitions", "3"]);
    argv.extend_from_slice(args);
    Instance::spawn(&argv, &[], log)
}

/// Changes a capture process published (acknowledged by the broker) since it started.
const PUBLISHED: &str = "resevent_capture_changes_published_total";

fn pipeline() -> Vec<Document> {
    let text = std::fs::read_to_string(root().join("pipelines/change-stream.json")).unwrap();
    resevent::capture::format::parse_pipeline(&text, "change-stream.json").unwrap()
}

/// The truth: every change the pipeline lets through, in the database's
/// order, as (document key JSON, resume token JSON), seen by a change stream
/// of the test's own opened before the writes.
struct Truth {
    watcher: std::thread::JoinHandle<Vec<(String, Value)>>,
    uri: String,
    /// The marker reservation whose insert ends the truth.
    end: ObjectId,
    ending: Arc<AtomicBool>,
}

fn watch_truth(mongo: &Mongo) -> Truth {
    let (uri, end, ending) = (mongo.uri.clone(), ObjectId::new(), Arc::new(AtomicBool::new(false)));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (watch_uri, ending_seen) = (uri.clone(), ending.clone());
    let watcher = std::thread::spawn(move || {
        let rt = rt();
        rt.block_on(async move {
            let client = mongodb::Client::with_uri_str(&watch_uri).await.unwrap();
            let coll = client.database("property").collection::<Document>("reservation");
            let mut stream = coll.watch().pipeline(pipeline()).await.unwrap().with_type::<Document>();
            ready_tx.send(()).unwrap();
            let mut out = Vec::new();
            let mut ending_since: Option<Instant> = None;
            loop {
                match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
                    Ok(Some(Ok(d))) => {
                        let key = d.get_document("documentKey").unwrap();
                        let last = key.get_object_id("_id").is_ok_and(|id| id == end);
                        out.push((mongodb::bson::Bson::Document(key.clone()).into_relaxed_extjson().to_string(), mongodb::bson::Bson::Document(d.get_document("_id").unwrap().clone()).into_relaxed_extjson()));
                        if last {
                            return out;
                        }
                    }
                    Ok(Some(Err(e))) => panic!("truth stream: {e}"),
                    Ok(None) => panic!("the truth stream ended before its end marker"),
                    Err(_) if ending_seen.load(Ordering::SeqCst) => {
                        let since = *ending_since.get_or_insert_with(Instant::now);
                        assert!(since.elapsed() < Duration::from_secs(120), "the truth stream did not see its end marker within 120s");
                    }
                    Err(_) => {}
                }
            }
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).expect("the truth stream opened");
    Truth { watcher, uri, end, ending }
}

impl Truth {
    /// Ends the truth with a change of its own, after every write of the
    /// test: the insert of a marker reservation, which capture publishes
    /// too. Returns every change up to and including it; once the topic holds
    /// that last change, capture has reached the input's end.
    fn finish(self) -> Vec<(String, Value)> {
        self.ending.store(true, Ordering::SeqCst);
        let rt = rt();
        let client = rt.block_on(mongodb::Client::with_uri_str(&self.uri)).unwrap();
        let coll = client.database("property").collection::<Document>("reservation");
        rt.block_on(async { coll.insert_one(reservation(self.end, "Not Arrived", 0, "P-END")).await }).unwrap();
        self.watcher.join().unwrap()
    }
}

/// A reservation document.
fn reservation(id: ObjectId, status: &str, room: u32, property: &str) -> Document {
    doc! {
        "_id": id, "propertyId": property, "bookingStatus": status, "roomNumber": room.to_string(),
        "arrivalDate": DateTime::from_millis(1795305600000), "departureDate": DateTime::from_millis(1795564800000), "adults": 2,
    }
}

/// `n` writes over `reservations` reservations as fast as the driver goes:
/// inserts first, then status moves, room moves, departure changes, writes
/// of untracked fields (which the pipeline drops), and a few deletes. With
/// `pause` = (k, go), it stops after k writes until `go` says so (or is dropped).
fn write_workload(uri: &str, reservations: usize, n: usize, seed: u64, pause: Option<(usize, std::sync::mpsc::Receiver<()>)>) {
    let rt = rt();
    let client = rt.block_on(mongodb::Client::with_uri_str(uri)).unwrap();
    let coll = client.database("property").collection::<Document>("reservation");
    let mut rng = seed.max(1);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let ids: Vec<ObjectId> = (0..reservations).map(|_| ObjectId::new()).collect();
    let mut alive = vec![false; reservations];
    rt.block_on(async {
        for i in 0..n {
            if let Some((at, go)) = &pause {
                if i == *at {
                    let _ = tokio::task::block_in_place(|| go.recv());
                }
            }
            let r = (next() % reservations as u64) as usize;
            let id = ids[r];
            if !alive[r] {
                coll.insert_one(reservation(id, "Not Arrived", 100 + r as u32, "P-OSL-01")).await.unwrap();
                alive[r] = true;
                continue;
            }
            let update = match next() % 20 {
                0 => {
                    coll.delete_one(doc! {"_id": id}).await.unwrap();
                    alive[r] = false;
                    continue;
                }
                1..=5 => {
                    let status = ["Not Arrived", "Arrived", "Departure"][(next() % 3) as usize];
                    doc! {"$set": {"bookingStatus": status}}
                }
                6..=8 => doc! {"$set": {"roomNumber": (100 + next() % 400).to_string()}},
                9..=10 => doc! {"$set": {"departureDate": DateTime::from_millis(1795564800000 + (next() % 5) as i64 * 86_400_000)}},
                _ => doc! {"$set": {"notes": format!("write {i}")}},
            };
            coll.update_one(doc! {"_id": id}, update).await.unwrap();
        }
    });
}

/// The topic's records as (key, value `_id`), with each record's value.
fn captured(broker: &Broker, topic: &str) -> Vec<(String, Value, Value)> {
    broker
        .read_all(topic)
        .iter()
        .map(|r: &Record| {
            let v = r.json();
            let key: Value = serde_json::from_str(r.key.as_deref().expect("a key")).unwrap();
            let mut v = v;
            // Where it came from, for the failure messages.
            v["__partition"] = json!(r.partition);
            v["__position"] = json!(r.headers.iter().find(|(k, _)| k == "resevent-capture-position").map(|(_, h)| h.clone()));
            (key.to_string(), v["_id"].clone(), v)
        })
        .collect()
}

/// Asserts the topic holds exactly the truth's changes, each once, in the
/// database's order per document key (the order a consumer relies on).
fn assert_exactly_once(got: &[(String, Value, Value)], truth: &[(String, Value)]) {
    let mut seen = BTreeSet::new();
    let repeats: Vec<String> = got.iter().filter(|(_, id, _)| !seen.insert(id.to_string())).map(|(_, id, _)| id.to_string()).collect();
    for r in repeats.iter().take(3) {
        for (_, id, v) in got.iter().filter(|(_, id, _)| &id.to_string() == r) {
            eprintln!("repeat {id}: partition {} position {}", v["__partition"], v["__position"]);
        }
    }
    assert!(repeats.is_empty(), "{} changes published more than once, e.g. {:?}", repeats.len(), &repeats[..repeats.len().min(3)]);
    let wanted: BTreeSet<String> = truth.iter().map(|(_, t)| t.to_string()).collect();
    let missing: Vec<&String> = wanted.difference(&seen).collect();
    let extra: Vec<&String> = seen.difference(&wanted).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{} changes missing (e.g. {:?}), {} not in the database's stream (e.g. {:?})", missing.len(), missing.first(), extra.len(), extra.first());
    let per_key = |items: Vec<(String, String)>| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, t) in items {
            m.entry(k).or_default().push(t);
        }
        m
    };
    let got_order = per_key(got.iter().map(|(k, id, _)| (k.clone(), id.to_string())).collect());
    let truth_order = per_key(truth.iter().map(|(k, t)| (k.clone(), t.to_string())).collect());
    for (k, order) in &truth_order {
        assert_eq!(got_order.get(k), Some(order), "changes of {k} out of the database's order");
    }
}

/// Waits until the topic holds every change of `truth` (whose last one is
/// its end marker: see [`Truth::finish`]) and at least `copies`
/// copy-existing records: capture has reached the input's end. A capture
/// publishes its stream in order, so a repeat of an earlier change would be
/// there by then; stopping it cleanly afterwards (which flushes what it
/// sent) leaves nothing to come later.
fn wait_captured_all(broker: &Broker, topic: &str, truth: &[(String, Value)], copies: usize, within: Duration) {
    let wanted: BTreeSet<String> = truth.iter().map(|(_, t)| t.to_string()).collect();
    let deadline = Instant::now() + within;
    loop {
        let got = captured(broker, topic);
        let (copied, live): (Vec<_>, Vec<_>) = got.iter().partition(|(_, id, _)| id["copyingData"] == json!(true));
        let live: BTreeSet<String> = live.iter().map(|(_, id, _)| id.to_string()).collect();
        let missing = wanted.difference(&live).count();
        if missing == 0 && copied.len() >= copies {
            return;
        }
        assert!(Instant::now() < deadline, "after {within:?}, {missing} of {} changes and {} of {copies} copies not published to {topic}", wanted.len(), copies.saturating_sub(copied.len()));
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn capture_then_run_turns_driver_writes_into_business_events() {
    let broker = Broker::start("capture-e2e");
    let mongo = Mongo::start("e2e", &[]);
    let topic = broker.name("property.reservation");
    let capture = start_capture(&mongo, &broker, &topic, "e2e", &[]);
    capture.wait_log("following the change stream", 1, Duration::from_secs(60));
    let addr = capture.http_addr();

    let rt = rt();
    let client = mongo.client(&rt);
    let coll = client.database("property").collection::<Document>("reservation");
    let (a, b) = (ObjectId::new(), ObjectId::new());
    rt.block_on(async {
        coll.insert_one(reservation(a, "Not Arrived", 101, "P-OSL-01")).await.unwrap();
        coll.update_one(doc! {"_id": a}, doc! {"$set": {"bookingStatus": "Arrived"}}).await.unwrap();
        coll.update_one(doc! {"_id": a}, doc! {"$set": {"loyaltyPoints": 40210}}).await.unwrap(); // untracked: not captured
        coll.update_one(doc! {"_id": a}, doc! {"$set": {"roomNumber": "305"}}).await.unwrap();
        coll.update_one(doc! {"_id": a}, doc! {"$set": {"bookingStatus": "Departure"}}).await.unwrap();
        coll.insert_one(reservation(b, "Arrived", 202, "P-BGO-02")).await.unwrap();
        coll.delete_one(doc! {"_id": b}).await.unwrap();
    });
    // The delete is the last write: once capture has published (and the
    // broker acknowledged) six changes, the topic holds what it will hold.
    wait_metric(&addr, PUBLISHED, 6.0, Duration::from_secs(30));
    let got = captured(&broker, &topic);
    let ops: Vec<&str> = got.iter().map(|(_, _, v)| v["operationType"].as_str().unwrap()).collect();
    assert_eq!(got.len(), 6, "{ops:?}");
    assert!(got.iter().all(|(_, _, v)| v["updateDescription"]["updatedFields"].get("loyaltyPoints").is_none()), "an untracked field's update was captured");
    for (key, id, v) in &got {
        assert_eq!(*key, json!({"_id": v["documentKey"]["_id"]}).to_string(), "keyed by the document key");
        assert!(id["_data"].is_string() && v["clusterTime"]["$timestamp"].is_object() && v["ns"] == json!({"db": "property", "coll": "reservation"}), "{v}");
    }
    // The topic is read partition by partition: find a's insert rather than take the first record.
    let insert = got.iter().find(|(_, _, v)| v["operationType"] == "insert" && v["documentKey"]["_id"] == json!({"$oid": a.to_hex()})).expect("a's insert");
    assert_eq!(insert.2["fullDocument"]["roomNumber"], "101");

    let dir = tempfile::tempdir().unwrap();
    let run = Instance::start(&broker, &topic, &broker.name("app"), dir.path(), "e2e-run");
    let events = common::wait_for(&broker, &format!("{}-events", broker.name("app")), Duration::from_secs(90), |e| e.len() >= 5);
    let types = |id: &ObjectId| events.iter().filter(|e| e["reservationId"] == id.to_hex()).map(|e| e["eventType"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(types(&a), ["CHECKED_IN", "ROOM_CHANGED", "CHECKED_OUT"]);
    assert_eq!(types(&b), ["CHECKED_IN", "CHECKED_OUT"]);
    let room = events.iter().find(|e| e["eventType"] == "ROOM_CHANGED").unwrap();
    assert_eq!((room["roomNumber"].as_str(), room["previousRoomNumber"].as_str(), room["propertyId"].as_str()), (Some("305"), Some("101"), Some("P-OSL-01")));
    drop(run);

    let (status, _) = http_get(&addr, "/readyz");
    assert_eq!(status, 200);
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(metrics.contains("resevent_capture_changes_published_total{kind=\"change\"} 6"), "{metrics}");
    for m in ["resevent_capture_lag_seconds", "resevent_capture_resume_token_age_seconds", "resevent_capture_active 1"] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }
    assert_eq!(capture.terminate(), Some(0));
    // Stopped, it can publish nothing more: still the six.
    assert_eq!(broker.read_all(&topic).len(), 6, "no change published twice");
}

#[test]
fn kill_9_at_random_points_loses_and_repeats_nothing() {
    let broker = Broker::start("capture-kill");
    let mongo = Mongo::start("kill", &[]);
    let topic = broker.name("property.reservation");
    let truth = watch_truth(&mongo);
    let mut capture = start_capture(&mongo, &broker, &topic, "kill", &[]);
    capture.wait_log("following the change stream", 1, Duration::from_secs(60));

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("workload seed {seed}");
    let writes = 4000;
    let uri = mongo.uri.clone();
    let writer = std::thread::spawn(move || write_workload(&uri, 300, writes, seed, None));
    let mut rng = seed | 1;
    let mut kills = 0;
    // Kills while the writes go on, each at a random point of the running
    // capture's progress: after it published 1 to 300 changes. At least four
    // in all: once the writes are over, the rest come as soon as a capture
    // follows the stream (during its catch-up, or with nothing left to do).
    let deadline = Instant::now() + Duration::from_secs(300);
    while !writer.is_finished() || kills < 4 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let point = 1 + (rng >> 33) % 300;
        let addr = capture.http_addr();
        while !writer.is_finished() && metric_sum(&http_get(&addr, "/metrics").1, PUBLISHED) < point as f64 {
            assert!(Instant::now() < deadline, "the writes and kills did not end within 300s ({kills} kills); log {}", capture.log.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        capture.kill9();
        kills += 1;
        capture = start_capture(&mongo, &broker, &topic, &format!("kill-{kills}"), &[]);
        capture.wait_log("following the change stream", 1, Duration::from_secs(60));
    }
    writer.join().unwrap();
    let truth = truth.finish();
    wait_captured_all(&broker, &topic, &truth, 0, Duration::from_secs(120));
    assert_eq!(capture.terminate(), Some(0));
    let got = captured(&broker, &topic);
    eprintln!("{} writes, {} changes captured, {kills} kills", writes, truth.len());
    assert_exactly_once(&got, &truth);
}

#[test]
fn copy_existing_then_live_changes_without_gap_or_repeat() {
    let broker = Broker::start("capture-copy");
    let mongo = Mongo::start("copy", &[]);
    let topic = broker.name("property.reservation");
    let rt = rt();
    let client = mongo.client(&rt);
    let coll = client.database("property").collection::<Document>("reservation");
    let existing: Vec<ObjectId> = (0..1500).map(|_| ObjectId::new()).collect();
    rt.block_on(async { coll.insert_many(existing.iter().enumerate().map(|(i, id)| reservation(*id, if i % 3 == 0 { "Arrived" } else { "Not Arrived" }, i as u32, "P-OSL-01"))).await }).unwrap();

    let truth = watch_truth(&mongo);
    let capture = start_capture(&mongo, &broker, &topic, "copy", &["--copy-existing"]);
    capture.wait_log("copying the existing documents", 1, Duration::from_secs(60));
    // Live changes while the copy runs and after it: to copied documents and new ones.
    rt.block_on(async {
        for (i, id) in existing.iter().enumerate().step_by(7) {
            coll.update_one(doc! {"_id": id}, doc! {"$set": {"bookingStatus": "Departure", "roomNumber": format!("{i}b")}}).await.unwrap();
        }
        for i in 0..100 {
            coll.insert_one(reservation(ObjectId::new(), "Arrived", 900 + i, "P-TRD-03")).await.unwrap();
        }
    });
    let truth = truth.finish();
    wait_captured_all(&broker, &topic, &truth, existing.len(), Duration::from_secs(120));
    let log = capture.text();
    assert_eq!(capture.terminate(), Some(0));
    let got = captured(&broker, &topic);
    let (copies, live): (Vec<_>, Vec<_>) = got.into_iter().partition(|(_, id, _)| id["copyingData"] == json!(true));
    let copied: BTreeSet<String> = copies.iter().map(|(_, id, _)| id["_id"]["$oid"].as_str().unwrap().to_string()).collect();
    assert_eq!(copies.len(), existing.len(), "each existing document copied once");
    assert_eq!(copied, existing.iter().map(|o| o.to_hex()).collect::<BTreeSet<_>>());
    assert!(copies.iter().all(|(_, _, v)| v["operationType"] == "insert" && v["fullDocument"]["_id"]["$oid"].is_string()));
    assert_exactly_once(&live, &truth);
    // The updates, the inserts, and the truth's end marker.
    assert_eq!(live.len(), existing.len().div_ceil(7) + 100 + 1);
    assert!(log.contains("copy finished"));
    // A restart keeps its place: no second copy. A copy would come before
    // the stream is followed, and a change written after that comes after
    // anything the restart publishes; once it is in the topic, a clean stop
    // leaves nothing to come later.
    let again = start_capture(&mongo, &broker, &topic, "copy-again", &["--copy-existing"]);
    again.wait_log("following the change stream", 1, Duration::from_secs(60));
    let last = ObjectId::new();
    rt.block_on(async { coll.insert_one(reservation(last, "Arrived", 999, "P-TRD-03")).await }).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !captured(&broker, &topic).iter().any(|(_, _, v)| v["documentKey"]["_id"] == json!({"$oid": last.to_hex()})) {
        assert!(Instant::now() < deadline, "the change after the restart was not published within 60s; log {}", again.log.display());
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = again.text();
    assert_eq!(again.terminate(), Some(0));
    assert!(!log.contains("copying the existing documents"), "{log}");
    assert_eq!(captured(&broker, &topic).len(), existing.len() + truth.len() + 1, "after the restart, only the new change");
}

#[test]
fn a_standby_takes_over_from_the_stored_token() {
    let broker = Broker::start("capture-standby");
    let mongo = Mongo::start("standby", &[]);
    let topic = broker.name("property.reservation");
    let truth = watch_truth(&mongo);
    let first = start_capture(&mongo, &broker, &topic, "first", &[]);
    first.wait_log("following the change stream", 1, Duration::from_secs(60));
    let second = start_capture(&mongo, &broker, &topic, "second", &[]);
    second.wait_log("standby: another instance holds the lease", 1, Duration::from_secs(60));
    let standby_addr = second.http_addr();
    assert_eq!(http_get(&standby_addr, "/readyz").0, 503);
    assert_eq!(metric_sum(&http_get(&standby_addr, "/metrics").1, "resevent_capture_active"), 0.0, "the standby publishes nothing");

    // The writer stops halfway until the kill: changes before it, while no
    // instance captures (the lease is running out), and after the takeover.
    let (killed, kill_seen) = std::sync::mpsc::channel();
    let uri = mongo.uri.clone();
    let writer = std::thread::spawn(move || write_workload(&uri, 100, 2000, 7, Some((1000, kill_seen))));
    // Killed after some progress: 50 changes published (the first 1000
    // writes insert nearly all of the 100 reservations, each a change).
    wait_records(&broker, &topic, 50, Duration::from_secs(60));
    first.kill9();
    let before_kill = broker.read_all(&topic).len();
    killed.send(()).unwrap();
    second.wait_log("following the change stream", 1, Duration::from_secs(60));
    writer.join().unwrap();
    let truth = truth.finish();
    wait_captured_all(&broker, &topic, &truth, 0, Duration::from_secs(120));
    let log = second.text();
    assert!(log.contains("resume after"), "the standby resumed from the stored token:\n{log}");
    assert_eq!(http_get(&standby_addr, "/readyz").0, 200);
    let by_standby = metric_sum(&http_get(&standby_addr, "/metrics").1, PUBLISHED);
    assert!(by_standby > 0.0, "the standby published the changes written after the kill");
    assert_eq!(second.terminate(), Some(0));
    // Exactly once across the takeover: each change once, in the database's order per document.
    let got = captured(&broker, &topic);
    eprintln!("{} changes: {before_kill} published before the kill, {by_standby} by the standby", truth.len());
    assert_exactly_once(&got, &truth);
}

/// A record as a previous capture would have left it, with its position header.
fn plant_position(broker: &Broker, topic: &str, token: Value) {
    broker.create_topic(topic, 3, &[]);
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new().set("bootstrap.servers", &broker.bootstrap).create().unwrap();
    let header = json!({"seq": 1, "partitions": 3, "durable": {"seq": 1, "resumeAfter": token.clone(), "copying": false}}).to_string();
    let value = json!({"_id": token, "operationType": "insert", "documentKey": {"_id": "R-1"}, "fullDocument": {"_id": "R-1", "bookingStatus": "Arrived"}}).to_string();
    producer
        .send(BaseRecord::to(topic).partition(0).key(r#"{"_id":"R-1"}"#).payload(&value).headers(OwnedHeaders::new().insert(Header { key: "resevent-capture-position", value: Some(&header) })))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_gone_or_bogus_resume_token_stops_with_a_clear_error_and_publishes_nothing() {
    let broker = Broker::start("capture-token");
    // Bogus: a token that is not this server's (a real MongoDB's, from the fixtures).
    let mongo = Mongo::start("bogus", &[]);
    let topic = broker.name("bogus");
    plant_position(&broker, &topic, json!({"_data": "826B028BE8000000012B022C0100296E5A10048C2D41A67E5B4F0B9D3E2A1C5F7B9E0146645F696400646502A1F0C3B7E41D9A0C00010004"}));
    let rt = rt();
    let coll = mongo.client(&rt).database("property").collection::<Document>("reservation");
    rt.block_on(async { coll.insert_one(reservation(ObjectId::new(), "Arrived", 1, "P-OSL-01")).await }).unwrap();
    let c = start_capture(&mongo, &broker, &topic, "bogus", &[]);
    let (code, log) = c.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("cannot resume the change stream after the stored resume token") && log.contains("--restart-from"), "{log}");
    assert_eq!(broker.read_all(&topic).len(), 1, "nothing published");

    // Gone: the oplog (capped at 50 entries here) moved past the stored token.
    let small = Mongo::start("gone", &["--oplog-max-entries", "50"]);
    let topic = broker.name("gone");
    let c = start_capture(&small, &broker, &topic, "gone", &[]);
    c.wait_log("following the change stream", 1, Duration::from_secs(60));
    let coll = small.client(&rt).database("property").collection::<Document>("reservation");
    let ids: Vec<ObjectId> = (0..3).map(|_| ObjectId::new()).collect();
    rt.block_on(async {
        for id in &ids {
            coll.insert_one(reservation(*id, "Not Arrived", 1, "P-OSL-01")).await.unwrap();
        }
    });
    wait_records(&broker, &topic, 3, Duration::from_secs(30));
    assert_eq!(c.terminate(), Some(0));
    // Past the oplog's cap (SecantusDB prunes every 1000 entries): untracked writes.
    rt.block_on(async {
        for i in 0..1100 {
            coll.update_one(doc! {"_id": ids[i % 3]}, doc! {"$set": {"notes": i.to_string()}}).await.unwrap();
        }
    });
    let c = start_capture(&small, &broker, &topic, "gone-again", &[]);
    let (code, log) = c.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("no longer be in the oplog") && log.contains("--restart-from copy"), "{log}");
    assert_eq!(broker.read_all(&topic).len(), 3, "nothing published");

    // The documented way on: a full copy, then the stream.
    let c = start_capture(&small, &broker, &topic, "gone-copy", &["--restart-from", "copy"]);
    c.wait_log("following the change stream", 1, Duration::from_secs(60));
    wait_records(&broker, &topic, 6, Duration::from_secs(30));
    // Stopped, it can publish nothing more: the three changes and their three copies.
    assert_eq!(c.terminate(), Some(0));
    let got = captured(&broker, &topic);
    assert_eq!(got.len(), 6);
    assert_eq!(got.iter().filter(|(_, id, _)| id["copyingData"] == json!(true)).count(), 3);
}

#[test]
fn capture_reaches_mongodb_over_tls_and_refuses_an_unknown_ca() {
    let broker = Broker::start("capture-tls");
    let certs = common::Certs::make();
    let tls = ["--tls-cert-file", &certs.path("broker.pem"), "--tls-key-file", &certs.path("broker.key")];
    let mongo = Mongo::start_with_options("tls", &tls, &format!("directConnection=true&tls=true&tlsCAFile={}", certs.path("ca.pem")));
    let topic = broker.name("tls");
    let c = start_capture(&mongo, &broker, &topic, "tls", &[]);
    c.wait_log("following the change stream", 1, Duration::from_secs(60));
    let rt = rt();
    let coll = mongo.client(&rt).database("property").collection::<Document>("reservation");
    rt.block_on(async { coll.insert_one(reservation(ObjectId::new(), "Arrived", 7, "P-OSL-01")).await }).unwrap();
    wait_records(&broker, &topic, 1, Duration::from_secs(30));
    assert_eq!(c.terminate(), Some(0));
    assert_eq!(broker.read_all(&topic).len(), 1);

    // A server certificate the given CA did not sign: a clear failure, nothing published.
    let untrusted = mongo.uri.replace(&certs.path("ca.pem"), &certs.path("other-ca.pem")) + "&serverSelectionTimeoutMS=3000";
    let topic = broker.name("tls-untrusted");
    let c = start_capture_uri(&untrusted, &broker, &topic, "tls-untrusted", &[]);
    let (code, log) = c.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.to_ascii_lowercase().contains("certificate"), "{log}");
}

#[test]
fn the_connector_configs_carry_the_same_pipeline_as_capture() {
    let read = |p: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))).unwrap_or_else(|e| panic!("{p} is not JSON: {e}")) };
    let ours = read("pipelines/change-stream.json");
    let mongo = read("pipelines/mongo-source-connector.json");
    let c = &mongo["config"];
    assert_eq!(c["connector.class"], "com.mongodb.kafka.connect.MongoSourceConnector");
    let theirs: Value = serde_json::from_str(c["pipeline"].as_str().expect("pipeline is a JSON string")).unwrap();
    assert_eq!(theirs, ours, "mongo-source-connector.json's pipeline differs from change-stream.json");
    assert_eq!(c["change.stream.full.document"], "updateLookup");
    assert!(c["topic.prefix"].is_string());
    assert_eq!(c["output.format.value"], "json");
    assert_eq!(c["change.stream.document.key.as.key"], "true");
    let debezium = read("pipelines/debezium-mongodb-connector.json");
    let d = &debezium["config"];
    assert_eq!(d["connector.class"], "io.debezium.connector.mongodb.MongoDbConnector");
    let theirs: Value = serde_json::from_str(d["cursor.pipeline"].as_str().expect("cursor.pipeline is a JSON string")).unwrap();
    assert_eq!(theirs, ours, "debezium-mongodb-connector.json's pipeline differs from change-stream.json");
    // The pipeline names every tracked field of the default pipeline file.
    let text = ours.to_string();
    let table: toml::Table = toml::from_str(&std::fs::read_to_string(root().join("pipelines/reservations.toml")).unwrap()).unwrap();
    for (name, field) in table["fields"].as_table().unwrap() {
        if name != "id" {
            let top = field.as_str().unwrap().split('.').next().unwrap();
            assert!(text.contains(&format!("\"{top}\"")), "change-stream.json does not let updates of {top} ({name}) through");
        }
    }
}

#[test]
fn docker_compose_file_is_valid_and_everything_it_uses_exists() {
    let bin = std::env::var("RESEVENT_DOCKER_COMPOSE").unwrap_or_else(|_| "docker-compose".into());
    let out = Command::new(&bin)
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin} (Debian's docker-compose; scripts/test installs it): {e}"));
    assert!(out.status.success(), "docker-compose config failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let mut used = Vec::new();
    for line in text.lines() {
        let l = line.trim().trim_start_matches("- ").trim();
        // Bind mounts (./x:/y[:ro]), build contexts and dockerfiles.
        if let Some(p) = l.strip_prefix("./").map(|rest| rest.split(':').next().unwrap().trim_matches('"')) {
            used.push(p.to_string());
        }
        for k in ["context:", "dockerfile:"] {
            if let Some(p) = l.strip_prefix(k) {
                used.push(p.trim().trim_matches('"').trim_start_matches("./").to_string());
            }
        }
    }
    assert!(used.iter().any(|p| p.starts_with("pipelines")), "the compose file mounts pipelines/: {used:?}");
    assert!(used.iter().any(|p| p == "Dockerfile"), "the compose file builds from the Dockerfile: {used:?}");
    for p in &used {
        let p = if p.is_empty() { "." } else { p.as_str() };
        assert!(root().join(p).exists(), "docker-compose.yml uses {p}, which does not exist");
    }
    let config = String::from_utf8_lossy(&out.stdout);
    for service in ["kafka", "schema-registry", "mongo", "connect", "capture", "run"] {
        assert!(config.contains(&format!("  {service}:")), "no {service} service:\n{config}");
    }
    let _ = Path::new(".");

    // The image builds: every file the source compiles in (include_str!) is
    // under a directory the Dockerfile copies into the build stage.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let copied: Vec<&str> = dockerfile.lines().filter_map(|l| l.strip_prefix("COPY ")).filter(|l| !l.starts_with("--from")).flat_map(|l| l.split_whitespace().rev().skip(1)).collect();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let code = std::fs::read_to_string(&path).unwrap();
            for piece in code.split("include_str!(\"").skip(1) {
                let rel = piece.split('"').next().unwrap();
                let file = path.parent().unwrap().join(rel).canonicalize().unwrap_or_else(|e| panic!("{} includes {rel}: {e}", path.display()));
                let top = file.strip_prefix(root().canonicalize().unwrap()).unwrap().components().next().unwrap().as_os_str().to_str().unwrap().to_string();
                assert!(copied.contains(&top.as_str()), "{} compiles in {rel}, but the Dockerfile copies no {top}/ into the build stage (COPY lines: {copied:?})", path.display());
            }
        }
    }
}
