//! Exactly-once mode against a broker that honours transaction aborts
//! (noida-db; Tansu commits transactions but shows aborted records to
//! read_committed consumers, so it cannot test this). A `kill -9` in the middle
//! of the stream must leave no repeat at all for a read_committed consumer.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn kill_9_mid_stream_leaves_no_repeat_for_read_committed_consumers() {
    let broker = Broker::start_transactional("eos");
    let input = broker.name("raw");
    broker.create_topic(&input, 2, &[]);
    let records = workload(400, 20_000, 21);
    let expected = replay_events(&records);
    let app = broker.name("app");
    let out = format!("{app}-events");
    let state = tempfile::tempdir().unwrap();
    let args = ["--guarantee", "exactly-once"];
    // noida-db's cooperative-sticky groups do not assign, and it does not expire a
    // killed member's session; range and static membership (the restarted
    // instance takes its own place back at once, as a StatefulSet pod would) work.
    let env = [("RESEVENT_CONSUMER__PARTITION_ASSIGNMENT_STRATEGY", "range"), ("RESEVENT_CONSUMER__GROUP_INSTANCE_ID", "eos-instance-0")];

    // The feeder holds the second half back until the kill, so the kill lands
    // mid-stream however fast the first instance is.
    let (killed, kill_seen) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let (broker, input, records) = (&broker, &input, &records);
        s.spawn(move || {
            for (n, chunk) in records.chunks(1000).enumerate() {
                if n == records.len() / 2000 {
                    let _ = kill_seen.recv();
                }
                broker.produce(&input, chunk);
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        let first = Instance::start_with(&broker, &input, &app, state.path(), "a", &args, &env);
        first.wait_log("exactly-once: transactional producer ready", 1, Duration::from_secs(60));
        wait_for(&broker, &out, Duration::from_secs(60), |e| !e.is_empty());
        std::thread::sleep(Duration::from_millis(1500));
        first.kill9();
        killed.send(()).unwrap();
    });
    let before_restart = broker.read_all(&out).len();
    assert!(before_restart < expected.len(), "the kill must land mid-stream ({before_restart} of {} events out)", expected.len());

    let second = Instance::start_with(&broker, &input, &app, state.path(), "b", &args, &env);
    let got = wait_for(&broker, &out, Duration::from_secs(120), |e| e.len() >= expected.len());
    std::thread::sleep(Duration::from_secs(2));
    let got_after = broker.read_all(&out).iter().map(Record::json).collect::<Vec<_>>();
    assert_eq!(second.terminate(), Some(0));
    assert_eq!(got.len(), expected.len());
    assert_eq!(got_after.len(), expected.len(), "no repeat at all, not even later");
    assert_eq!(dedup(&got_after).len(), got_after.len());
    assert_same_per_reservation(&got_after, &expected);
}
