//! The capture topic: created when missing, and read back at start (the
//! last record of every partition, with its position header).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{CaptureError, KAFKA_TIMEOUT, SETTLE};
use super::config::CaptureConfig;
use super::position::{self, LastRecord, Position};
use crate::config::KafkaSettings;
use crate::kafka::{self, ConnectionContext};

/// Creates the topic if missing; returns its partition count.
pub(super) async fn ensure_topic(cfg: &CaptureConfig, kcfg: &KafkaSettings<'_>, topic: &str) -> anyhow::Result<i32> {
    let client = kafka::client_config(kcfg);
    let probe: BaseConsumer<ConnectionContext> = kafka::topics::probe_config(&kafka::with_settings(&client, kcfg.consumer)).create_with_context(ConnectionContext::default())?;
    let count = |probe: &BaseConsumer<ConnectionContext>| -> anyhow::Result<Option<i32>> {
        let ids = tokio::task::block_in_place(|| kafka::topics::partition_ids(probe, topic, KAFKA_TIMEOUT)).map_err(|e| kafka::explain(format!("reading metadata of {topic:?} from {}: {e}", kcfg.bootstrap_servers), probe.context()))?;
        Ok(ids.map(|ids| ids.len() as i32))
    };
    if let Some(n) = count(&probe)? {
        return Ok(n);
    }
    if !cfg.create_topic {
        anyhow::bail!("topic {topic:?} does not exist and topic creation is off");
    }
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = client.create()?;
    let spec = kafka::topics::TopicSpec { name: topic.to_owned(), partitions: cfg.partitions.unwrap_or(-1), configs: Vec::new() };
    kafka::topics::create(&admin, &[spec], cfg.replication_factor, KAFKA_TIMEOUT).await?;
    let deadline = Instant::now() + KAFKA_TIMEOUT;
    loop {
        if let Some(n) = count(&probe)? {
            tracing::info!(topic, partitions = n, "topic ready");
            return Ok(n);
        }
        anyhow::ensure!(Instant::now() < deadline, "topic {topic:?} was created but has no partitions after {KAFKA_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}


/// The last record of every non-empty partition, with its position header.
pub(super) fn read_last_records(kcfg: &KafkaSettings, topic: &str, partitions: i32) -> anyhow::Result<Vec<LastRecord>> {
    // Connection failures surface earlier, in ensure_topic's probe.
    let consumer: BaseConsumer<kafka::EndOfPartition> = kafka::reader_config(kcfg, "resevent-capture-position").create_with_context(kafka::EndOfPartition { what: "capture read-back" })?;
    let ends = || -> anyhow::Result<Vec<(i64, i64)>> {
        (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, KAFKA_TIMEOUT).map_err(|e| anyhow::anyhow!("reading the offsets of {topic:?} partition {p}: {e}"))).collect()
    };
    // A killed predecessor's last produce requests may still be in the
    // broker's socket (the kernel delivers what the process had written) and
    // be appended after we look. No one else writes to the topic now (we hold
    // the lease), so its end offsets settle once they are in: wait until they
    // stay put for SETTLE. (On Apache Kafka a transactional producer would
    // fence them instead; see lease.rs for why capture does not use one.)
    let deadline = Instant::now() + KAFKA_TIMEOUT;
    let mut offsets = ends()?;
    loop {
        std::thread::sleep(SETTLE);
        let again = ends()?;
        if again == offsets {
            break;
        }
        tracing::info!(before = ?offsets, now = ?again, "the topic's end offsets moved (a predecessor's last records landing); waiting for them to settle");
        anyhow::ensure!(Instant::now() < deadline, "the end offsets of {topic:?} did not settle within {KAFKA_TIMEOUT:?}; is another writer producing to it?");
        offsets = again;
    }
    let mut tpl = TopicPartitionList::new();
    let mut wanted = BTreeMap::new();
    for (p, (low, high)) in offsets.into_iter().enumerate() {
        if high > low {
            tpl.add_partition_offset(topic, p as i32, Offset::Offset(high - 1))?;
            wanted.insert(p as i32, high - 1);
        }
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl)?;
    // Read from there to the end of each partition and keep the last record:
    // with Tansu 0.6 the record at end - 1 was seen not to be the last one
    // (its end offset seems to point into the last batch), and reading on
    // costs nothing where it is.
    let deadline = Instant::now() + KAFKA_TIMEOUT;
    // Per partition: the newest record's offset, position header and value.
    type Newest = (i64, Option<Vec<u8>>, Option<Vec<u8>>);
    let mut newest: BTreeMap<i32, Newest> = BTreeMap::new();
    while !wanted.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "could not read the last records of {topic:?} (partitions {:?}) within {KAFKA_TIMEOUT:?}", wanted.keys().collect::<Vec<_>>());
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = match m {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                if newest.contains_key(&p) {
                    wanted.remove(&p);
                }
                continue;
            }
            Err(e) => anyhow::bail!("reading the last records of {topic:?}: {e}"),
        };
        let header = m.headers().and_then(|h| h.iter().find(|h| h.key == position::HEADER).and_then(|h| h.value.map(<[u8]>::to_vec)));
        if newest.get(&m.partition()).is_none_or(|(o, _, _)| *o < m.offset()) {
            newest.insert(m.partition(), (m.offset(), header, m.payload().map(<[u8]>::to_vec)));
        }
    }
    let mut last = Vec::new();
    for (partition, (_, header, payload)) in newest {
        let Some(header) = header else {
            return Err(CaptureError::Position(position::PositionError::Foreign { partition, why: "no header".into() }).into());
        };
        let position: Position = serde_json::from_slice(&header).map_err(|e| CaptureError::Position(position::PositionError::Foreign { partition, why: e.to_string() }))?;
        let id = payload.and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok()).and_then(|v| v.get("_id").cloned());
        last.push(LastRecord { partition, position, id });
    }
    Ok(last)
}
