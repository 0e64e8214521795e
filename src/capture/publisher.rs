//! The publisher: each change sent with its position header, in sequence
//! order, and the newest checkpoint whose records are all acknowledged
//! (what a restart resumes after: none lost, none repeated).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use futures_util::FutureExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::CaptureError;
use super::format::Outgoing;
use super::http::{CaptureMetrics, now_ms};
use super::position::{self, Checkpoint, Position, Replayed};
use crate::kafka;

/// Sends records with their position header and tracks which are acknowledged.
pub(super) struct Publisher<'a> {
    pub(super) producer: &'a FutureProducer,
    pub(super) topic: &'a str,
    pub(super) partitions: i32,
    pub(super) metrics: Arc<CaptureMetrics>,
    /// The seq the next record gets (0: not started).
    pub(super) next_seq: u64,
    /// The newest checkpoint whose records are all acknowledged.
    pub(super) durable: Checkpoint,
    /// Sent, in seq order: the checkpoint each completes, its event time
    /// (unix ms, for the lag), whether a copy, and its delivery (none when
    /// it was on the topic already).
    pub(super) in_flight: VecDeque<(Checkpoint, Option<i64>, bool, Delivery)>,
    /// Records acknowledged by this process.
    pub(super) published: u64,
}

impl<'a> Publisher<'a> {
    pub(super) fn new(producer: &'a FutureProducer, topic: &'a str, partitions: i32, metrics: Arc<CaptureMetrics>) -> Self {
        Publisher { producer, topic, partitions, metrics, next_seq: 0, durable: Checkpoint { seq: 0, resume_after: None, copying: false, cluster_secs: 0 }, in_flight: VecDeque::new(), published: 0 }
    }

    pub(super) fn start(&mut self, next_seq: u64, durable: Checkpoint) {
        debug_assert!(self.in_flight.is_empty());
        self.next_seq = next_seq;
        self.durable = durable;
    }

    pub(super) async fn publish_copy(&mut self, out: Outgoing) -> anyhow::Result<()> {
        let seq = self.next_seq;
        let done = Checkpoint { seq, resume_after: None, copying: true, cluster_secs: self.durable.cluster_secs };
        self.send(out, seq, done, true).await
    }

    pub(super) async fn publish_change(&mut self, out: Outgoing, replay: &mut BTreeMap<i32, (u64, Option<serde_json::Value>)>) -> anyhow::Result<()> {
        let seq = self.next_seq;
        let done = Checkpoint { seq, resume_after: Some(out.id.clone()), copying: false, cluster_secs: out.cluster_secs.unwrap_or(self.durable.cluster_secs) };
        if !replay.is_empty() {
            let partition = position::partition_for(&out.key, self.partitions);
            match position::replayed(replay, partition, seq, &out.id) {
                Replayed::Publish => {}
                Replayed::Skip => {
                    tracing::debug!(seq, partition, "replayed change already on the topic; skipped");
                    self.next_seq += 1;
                    self.in_flight.push_back((done, None, false, Delivery::AlreadyThere));
                    return Ok(());
                }
                Replayed::Diverged { stored } => {
                    return Err(CaptureError::Diverged { partition, seq, stored: stored.map(|s| s.to_string()).unwrap_or_default(), got: out.id.to_string() }.into());
                }
            }
            // Past every partition's last record: nothing more to compare.
            if replay.values().all(|(last, _)| *last < seq) {
                replay.clear();
            }
        }
        self.send(out, seq, done, false).await
    }

    pub(super) async fn send(&mut self, out: Outgoing, seq: u64, done: Checkpoint, copy: bool) -> anyhow::Result<()> {
        self.drain()?;
        let position = Position { seq, partitions: self.partitions, durable: self.durable.clone() };
        let header = serde_json::to_vec(&position).expect("JSON");
        let partition = position::partition_for(&out.key, self.partitions);
        let record = FutureRecord::to(self.topic)
            .partition(partition)
            .key(out.key.as_slice())
            .payload(out.value.as_slice())
            .headers(OwnedHeaders::new().insert(Header { key: position::HEADER, value: Some(header.as_slice()) }));
        let delivery = kafka::send(self.producer, record).await.map_err(|f| anyhow::anyhow!("{f}"))?;
        self.next_seq = seq + 1;
        self.in_flight.push_back((done, out.event_ms, copy, Delivery::Pending(delivery)));
        Ok(())
    }

    /// Moves the durable checkpoint over the acknowledged front of what was sent.
    pub(super) fn drain(&mut self) -> anyhow::Result<()> {
        let (mut changes, mut copies, mut lag) = (0, 0, None);
        while let Some((_, _, _, delivery)) = self.in_flight.front_mut() {
            if let Delivery::Pending(d) = delivery {
                match d.now_or_never() {
                    None => break,
                    Some(Ok(Ok(_))) => *delivery = Delivery::Acked,
                    Some(Ok(Err((e, _)))) => anyhow::bail!("the broker did not acknowledge a change event: {e}"),
                    Some(Err(_)) => anyhow::bail!("the producer dropped a change event's delivery report"),
                }
            }
            let (done, event_ms, copy, delivery) = self.in_flight.pop_front().expect("front");
            if matches!(delivery, Delivery::Acked) {
                if copy {
                    copies += 1;
                } else {
                    changes += 1;
                }
                if let Some(ms) = event_ms {
                    lag = Some(now_ms() - ms);
                }
            }
            self.durable = done;
        }
        if changes + copies > 0 {
            self.published += changes + copies;
            self.metrics.acknowledged(changes, copies, lag);
            self.metrics.durable_at(i64::from(self.durable.cluster_secs) * 1000);
        }
        Ok(())
    }

    /// Waits until everything sent is acknowledged.
    pub(super) async fn flush(&mut self) -> anyhow::Result<()> {
        for (_, _, _, delivery) in self.in_flight.iter_mut() {
            if let Delivery::Pending(d) = delivery {
                match d.await {
                    Ok(Ok(_)) => *delivery = Delivery::Acked,
                    Ok(Err((e, _))) => anyhow::bail!("the broker did not acknowledge a change event: {e}"),
                    Err(_) => anyhow::bail!("the producer dropped a change event's delivery report"),
                }
            }
        }
        self.drain()
    }
}

/// Where a sent record stands.
pub(super) enum Delivery {
    Pending(DeliveryFuture),
    Acked,
    /// A replayed change found on the topic already: not sent again.
    AlreadyThere,
}
