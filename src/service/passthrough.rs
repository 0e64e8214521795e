//! The benchmark baseline for `resevent run`: consume the input and produce
//! the same records to the output topic, with the same client settings,
//! batching and acknowledgement discipline, and no processing. The gap
//! between this and `resevent run` is what decoding, the table and the state
//! store cost.

use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::config::RunConfig;
use super::{RunSummary, acknowledged, group_consumer_config, next_batch, producer_config, record_latency, send};
use crate::engine::Counts;

pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunSummary> {
    // The same client settings as `run`, so the comparison measures processing only.
    let consumer: StreamConsumer<DefaultConsumerContext> = group_consumer_config(&cfg, &format!("{}-passthrough", cfg.application_id)).create()?;
    let producer_cfg = producer_config(&cfg);
    let producer: FutureProducer = producer_cfg.create()?;
    consumer.subscribe(&cfg.input_topics.iter().map(String::as_str).collect::<Vec<_>>())?;

    let mut summary = RunSummary::default();
    let idle = cfg.idle_exit_secs.map(Duration::from_secs);
    tokio::pin!(shutdown);
    while let Some(batch) = next_batch(&consumer, Vec::new(), cfg.max_batch_records, Duration::from_millis(cfg.batch_wait_ms), idle, &mut shutdown).await {
        let mut futures = Vec::with_capacity(batch.len());
        let mut commit = TopicPartitionList::new();
        for m in &batch {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&cfg.output_topic);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(v) = m.payload() {
                record = record.payload(v);
            }
            futures.push(send(&producer, record).await?);
            commit.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))?;
        }
        acknowledged(futures, "passthrough record").await?;
        record_latency(&mut summary.latency, &batch);
        consumer.commit(&commit, CommitMode::Async)?;
        summary.record_batch(&Counts { records: batch.len() as u64, ..Counts::default() });
    }
    Ok(summary)
}
