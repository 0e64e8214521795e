//! The benchmark baseline for `resevent run`: consume the input and produce
//! the same records to the output topic, with the same client settings, the
//! same batching and the same commit discipline (sends never waited for;
//! every `commit_interval_ms` the interval's sends are sealed into an epoch
//! and its offsets committed once that epoch is acknowledged, while the
//! loop goes on; one interval commits at a time), and no processing. The gap between this and `resevent run`
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
    // The interval committing: its epoch and the offsets to commit once it is acknowledged.
    let mut committing: Option<(u64, BTreeMap<(String, i32), i64>)> = None;
    let acks = collector.wake();
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            _ = shutdown.as_mut() => break,
            m = consumer.recv() => match input::arrived(m) {
                input::Arrived::Record(first) => input::fill_batch(&consumer, vec![first], cfg.max_batch_records, Duration::from_millis(cfg.batch_wait_ms)).await,
                input::Arrived::Error => Vec::new(),
            },
            _ = acks.notified() => Vec::new(),
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
        // The same discipline as `run`: on the interval, off the loop.
        if let Some((epoch, offsets)) = &committing {
            if let Some(acknowledged) = collector.acknowledged(*epoch, false) {
                acknowledged?;
                consumer.commit(&offsets_list(offsets)?, CommitMode::Async)?;
                summary.acknowledged();
                committing = None;
            }
        }
        if committing.is_none() && !pending.is_empty() && last_commit.elapsed() >= interval {
            committing = Some((collector.seal()?, std::mem::take(&mut pending)));
            last_commit = Instant::now();
        }
        if idle.is_some_and(|idle| last_input.elapsed() >= idle) {
            break;
        }
    }
    tokio::task::block_in_place(|| {
        collector.flush()?;
        for epoch in committing.iter().map(|(e, _)| *e).chain([collector.epoch()]) {
            collector.acknowledged(epoch, true).unwrap_or(Ok(()))?;
        }
        Ok::<(), crate::fault::Fault>(())
    })?;
    if let Some((_, mut offsets)) = committing {
        offsets.extend(pending);
        pending = offsets;
    }
    if !pending.is_empty() {
        consumer.commit(&offsets_list(&pending)?, CommitMode::Sync)?;
        summary.acknowledged();
    }
    summary.latency = collector.latency();
    Ok(summary)
}

