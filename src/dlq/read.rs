//! Reading the dead-letter topic: assigned partitions (no group), each read
//! from a start to the end it has when the reader gets there (partition EOF),
//! and the replay mark's committed offsets.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{DlqSettings, READ_STALL, REQUEST_TIMEOUT, replay_mark_group};
use crate::kafka::{EndOfPartition, group_consumer_config};

/// The dead-letter topic and how to reach it.
pub(super) struct DeadLetterTopic {
    pub(super) cfg: DlqSettings,
    pub(super) name: String,
    pub(super) partitions: Vec<i32>,
}

impl DeadLetterTopic {
    pub(super) fn open(cfg: DlqSettings, name: String) -> anyhow::Result<DeadLetterTopic> {
        let probe = DeadLetterTopic { cfg, name, partitions: Vec::new() };
        let partitions = partitions(&probe.consumer()?, &probe.name, &probe.cfg.bootstrap_servers)?
            .ok_or_else(|| anyhow::anyhow!("dead-letter topic {:?} does not exist on {}; check --topic or --input-topic (resevent run creates <input>.dlt when it starts)", probe.name, probe.cfg.bootstrap_servers))?;
        Ok(DeadLetterTopic { partitions, ..probe })
    }

    /// A consumer in the replay-mark group that never subscribes: it reads by
    /// assignment, and only `replay` commits with it.
    pub(super) fn consumer(&self) -> anyhow::Result<DeadLetterConsumer> {
        let mut c = group_consumer_config(&self.cfg.kafka_settings(), &replay_mark_group(&self.name));
        c.set("enable.partition.eof", "true");
        c.create_with_context(EndOfPartition { what: "dead-letter consumer" }).with_context(|| format!("creating a Kafka consumer for {}", self.cfg.bootstrap_servers))
    }

    /// Reads every partition from its start to its end.
    pub(super) fn read_all(&self) -> anyhow::Result<Reader> {
        Reader::start(self, self.partitions.iter().map(|&p| (p, Offset::Beginning, None)))
    }

    pub(super) fn replay_mark(&self, consumer: &DeadLetterConsumer) -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for &p in &self.partitions {
            tpl.add_partition(&self.name, p);
        }
        let group = replay_mark_group(&self.name);
        let committed = tokio::task::block_in_place(|| consumer.committed_offsets(tpl, REQUEST_TIMEOUT))
            .with_context(|| format!("reading the replay mark (offsets of consumer group {group:?}) from {}", self.cfg.bootstrap_servers))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    /// A partition's (first offset, end offset) as the broker reports them (ListOffsets).
    pub(super) fn watermarks(&self, consumer: &DeadLetterConsumer, partition: i32) -> anyhow::Result<(i64, i64)> {
        tokio::task::block_in_place(|| consumer.fetch_watermarks(&self.name, partition, REQUEST_TIMEOUT))
            .with_context(|| format!("reading the offsets of {}/{partition} from {}", self.name, self.cfg.bootstrap_servers))
    }

    /// The first offset each partition still holds.
    pub(super) fn start_offsets(&self, consumer: &DeadLetterConsumer) -> anyhow::Result<BTreeMap<i32, i64>> {
        self.partitions.iter().map(|&p| Ok((p, self.watermarks(consumer, p)?.0))).collect()
    }
}

/// Partition ids of a topic, `None` if it does not exist.
pub(super) fn partitions(consumer: &DeadLetterConsumer, topic: &str, bootstrap: &str) -> anyhow::Result<Option<Vec<i32>>> {
    tokio::task::block_in_place(|| crate::kafka::topics::partition_ids(consumer, topic, REQUEST_TIMEOUT)).with_context(|| format!("reading metadata of topic {topic:?} from {bootstrap}"))
}

pub(super) type DeadLetterConsumer = StreamConsumer<EndOfPartition>;


/// Reads dead letters in offset order per partition, from a start offset up
/// to a stop offset or, without one, to the end the partition has when
/// reached (EOF).
pub(super) struct Reader {
    pub(super) consumer: DeadLetterConsumer,
    topic: String,
    bootstrap: String,
    /// Partitions still being read → the offset to stop before.
    open: BTreeMap<i32, Option<i64>>,
}

impl Reader {
    pub(super) fn start(topic: &DeadLetterTopic, ranges: impl IntoIterator<Item = (i32, Offset, Option<i64>)>) -> anyhow::Result<Reader> {
        let consumer = topic.consumer()?;
        let mut tpl = TopicPartitionList::new();
        let mut open = BTreeMap::new();
        for (p, from, stop) in ranges {
            tpl.add_partition_offset(&topic.name, p, from)?;
            open.insert(p, stop);
        }
        consumer.assign(&tpl).with_context(|| format!("assigning {} partitions", topic.name))?;
        Ok(Reader { consumer, topic: topic.name.clone(), bootstrap: topic.cfg.bootstrap_servers.clone(), open })
    }

    /// The next dead letter, `None` once every partition is at its end.
    pub(super) async fn next(&mut self) -> anyhow::Result<Option<BorrowedMessage<'_>>> {
        let Reader { consumer, topic, bootstrap, open } = self;
        let consumer = &*consumer;
        while !open.is_empty() {
            let received = tokio::time::timeout(READ_STALL, consumer.recv())
                .await
                .map_err(|_| anyhow::anyhow!("reading {topic:?}: no record and no end of partition within {READ_STALL:?}; is {bootstrap} reachable?"))?;
            match received {
                Err(KafkaError::PartitionEOF(p)) => {
                    open.remove(&p);
                }
                Err(e) => bail!("reading {topic:?} from {bootstrap}: {e}"),
                Ok(m) => {
                    let p = m.partition();
                    // A partition already at its end: whatever arrives later is not part of this read.
                    let Some(&stop) = open.get(&p) else { continue };
                    if stop.is_some_and(|s| m.offset() >= s) {
                        open.remove(&p);
                        continue;
                    }
                    if stop.is_some_and(|s| m.offset() + 1 >= s) {
                        open.remove(&p);
                    }
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }
}
