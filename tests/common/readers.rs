//! What a test reads back from the broker: a topic's records, a consumer
//! group's lag, and the waits built on them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::broker::Broker;

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    /// The record's timestamp (ms): when the producer created it.
    pub timestamp: Option<i64>,
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().expect("a value")).expect("JSON value")
    }
}

impl Broker {
    /// Every record of a topic, per partition in order: (partition, key, value, headers).
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        let consumer: BaseConsumer = self.client().set("group.id", self.name("reader")).set("enable.partition.eof", "true").set("enable.auto.commit", "false").create().unwrap();
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let Some(t) = md.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else { return Vec::new() };
        let parts: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut eof = std::collections::HashSet::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while eof.len() < parts.len() && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(500)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    eof.insert(p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                Some(Ok(m)) => {
                    eof.remove(&m.partition());
                    let headers = m.headers().map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect()).unwrap_or_default();
                    out.push(Record {
                        partition: m.partition(),
                        timestamp: m.timestamp().to_millis(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
            }
        }
        out
    }

    pub fn topic_exists(&self, topic: &str) -> bool {
        let consumer: BaseConsumer = self.client().create().unwrap();
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        md.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    }

    /// A consumer group's lag on `topic`, per partition, as the broker sees
    /// it (what `kafka-consumer-groups --describe` shows): the partition's
    /// end offset less the group's committed offset (the whole partition
    /// when the group committed nothing). Measured at the broker rather than
    /// from the instance's /metrics because in exactly-once mode offsets are
    /// committed inside the producer's transaction, which the consumer's own
    /// statistics never see. Asks without joining the group.
    pub fn group_lag(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = self.client().set("group.id", group).set("enable.auto.commit", "false").create().unwrap();
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let Some(t) = md.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else { panic!("no topic {topic}") };
        let mut tpl = TopicPartitionList::new();
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap_or_else(|e| panic!("committed offsets of {group} on {topic}: {e}"));
        t.partitions()
            .iter()
            .map(|p| {
                let (_, end) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap_or_else(|e| panic!("end offset of {topic}/{}: {e}", p.id()));
                let at = match committed.find_partition(topic, p.id()).map(|e| e.offset()) {
                    Some(Offset::Offset(n)) => n,
                    _ => 0,
                };
                (p.id(), end - at)
            })
            .collect()
    }
}

/// Waits until consumer group `group` has committed every record of
/// `topic` (lag 0 on every partition; see [`Broker::group_lag`]): the input's
/// end, processed and committed. Panics with the lag if it never gets there.
pub fn wait_lag_zero(broker: &Broker, group: &str, topic: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let lag = broker.group_lag(group, topic);
        if !lag.is_empty() && lag.values().all(|l| *l == 0) {
            return;
        }
        assert!(Instant::now() < deadline, "group {group} still lags on {topic} after {within:?} (partition → records not committed): {lag:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `topic` holds at least `n` records, and returns them.
pub fn wait_records(broker: &Broker, topic: &str, n: usize, within: Duration) -> Vec<Record> {
    let deadline = Instant::now() + within;
    loop {
        let records = broker.read_all(topic);
        if records.len() >= n {
            return records;
        }
        assert!(Instant::now() < deadline, "{topic} holds {} records, not {n}, after {within:?}", records.len());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `done` holds for the output topic's events, or panics.
pub fn wait_for(broker: &Broker, topic: &str, within: Duration, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let events: Vec<serde_json::Value> = broker.read_all(topic).iter().map(Record::json).collect();
        if done(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} with {} events ({} distinct ids) on {topic}", events.len(), events.iter().map(|e| e["eventId"].to_string()).collect::<std::collections::HashSet<_>>().len());
        std::thread::sleep(Duration::from_millis(500));
    }
}
