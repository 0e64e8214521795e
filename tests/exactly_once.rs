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

    // The second half comes only after the kill, so the kill lands
    // mid-stream however fast the first instance is. The first half is there
    // at once, and transactions come by volume: a 16 KiB cache bound commits
    // one after each batch (at most 200 records) that takes the changed
    // reservations past ~80, dozens over the first half. The kill follows
    // the tenth within milliseconds, in the middle of the next one, with its
    // events sent. (A machine that gets through the whole first half before
    // that is killed once it has: the test then proves less, but passes or
    // fails on the same assertions; it never waits on speed.)
    let (first_half, second_half) = records.split_at(records.len() / 2);
    broker.produce(&input, first_half);
    let env = [env.as_slice(), &[("RESEVENT_MAX_BATCH_RECORDS", "200"), ("RESEVENT_CACHE_MAX_BYTES", "16384")]].concat();
    let first = Instance::start_with(&broker, &input, &app, state.path(), "a", &args, &env);
    first.wait_log("exactly-once: transactional producer ready", 1, Duration::from_secs(60));
    let http = first.http_addr();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (commits, processed) = loop {
        let scrape = http_get(&http, "/metrics").1;
        let (commits, processed) = (metric_sum(&scrape, "resevent_commit_duration_seconds_count"), metric_sum(&scrape, "resevent_records_consumed_total"));
        if commits >= 10.0 || processed >= first_half.len() as f64 {
            break (commits, processed);
        }
        assert!(std::time::Instant::now() < deadline, "no progress: {commits} transactions committed, {processed} records processed");
        std::thread::sleep(Duration::from_millis(10));
    };
    first.kill9();
    eprintln!("killed after {commits} transactions committed, {processed} records processed");
    let before_restart = broker.read_all(&out).len();
    assert!(before_restart < expected.len(), "the kill must land mid-stream ({before_restart} of {} events out)", expected.len());
    broker.produce(&input, second_half);

    let second = Instance::start_with(&broker, &input, &app, state.path(), "b", &args, &env);
    wait_for(&broker, &out, Duration::from_secs(120), |e| e.len() >= expected.len());
    // "Not even later": the input's end is processed and committed (lag 0),
    // and the only writer stops cleanly before the last read, so nothing
    // can come after it.
    wait_lag_zero(&broker, &app, &input, Duration::from_secs(120));
    assert_eq!(second.terminate(), Some(0));
    let got = broker.read_all(&out).iter().map(Record::json).collect::<Vec<_>>();
    assert_eq!(got.len(), expected.len(), "no repeat at all, not even later");
    assert_eq!(dedup(&got).len(), got.len());
    assert_same_per_reservation(&got, &expected);
}
