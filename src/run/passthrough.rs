//! The benchmark baseline for `resevent run`: consume the input and produce
//! the same records to the output topic, with the same client settings, the
//! same batching and the same commit discipline (sends never waited for;
//! every `commit_interval_ms` the producer is flushed and the offsets
//! committed), and no processing. The gap between this and `resevent run`
//! is what decoding, the table, the state store and the changelog cost.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::Message;

use super::RunSummary;
use super::commit_io::offsets_list;
use super::config::RunConfig;
use super::input;
use crate::sink::collector::RecordCollector;
use crate::engine::Counts;
use crate::kafka;

pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunSummary> {
    let consumer: StreamConsumer<DefaultConsumerContext> = kafka::group_consumer_config(&cfg.kafka_settings(), &format!("{}-passthrough", cfg.application_id)).create()?;
    let mut collector = tokio::task::block_in_place(|| RecordCollector::new(kafka::producer_config(&cfg.kafka_settings()), String::new()))?;
    consumer.subscribe(&cfg.input_topics.iter().map(String::as_str).collect::<Vec<_>>())?;

    let mut summary = RunSummary::default();
    let idle = cfg.idle_exit_secs.map(Duration::from_secs);
    let interval = Duration::from_millis(cfg.commit_interval());
    let mut last_commit = Instant::now();
    let mut last_input = Instant::now();
    let mut pending: BTreeMap<(String, i32), i64> = BTreeMap::new();
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            _ = shutdown.as_mut() => break,
            m = consumer.recv() => match input::arrived(m) {
                input::Arrived::Record(first) => input::fill_batch(&consumer, vec![first], cfg.max_batch_records, Duration::from_millis(cfg.batch_wait_ms)).await,
                input::Arrived::Error => Vec::new(),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => Vec::new(),
        };
        if !batch.is_empty() {
            last_input = Instant::now();
        }
        // A full producer queue blocks the send until a delivery makes room.
        tokio::task::block_in_place(|| {
            for m in &batch {
                collector.send_copy(&cfg.output_topic, m.key(), m.payload(), None, m.timestamp().to_millis())?;
                pending.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
            }
            Ok::<(), crate::fault::Fault>(())
        })?;
        if !batch.is_empty() {
            summary.record_batch(&Counts { records: batch.len() as u64, ..Counts::default() });
        }
        // The same discipline as `run`: on the interval.
        if !pending.is_empty() && last_commit.elapsed() >= interval {
            tokio::task::block_in_place(|| collector.flush())?;
            consumer.commit(&offsets_list(&std::mem::take(&mut pending))?, CommitMode::Async)?;
            summary.acknowledged();
            last_commit = Instant::now();
        }
        if idle.is_some_and(|idle| last_input.elapsed() >= idle) {
            break;
        }
    }
    tokio::task::block_in_place(|| collector.flush())?;
    if !pending.is_empty() {
        consumer.commit(&offsets_list(&pending)?, CommitMode::Sync)?;
        summary.acknowledged();
    }
    summary.latency = collector.latency();
    Ok(summary)
}

