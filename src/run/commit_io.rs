//! The commit coordinator's I/O ([`super::commit::CommitIo`]) over the real
//! clients: the record collector's producer, the RocksDB store and the group
//! consumer. The order of the calls, and so the guarantee, is the
//! coordinator's; this file only does each step.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::commit::{CommitIo, InputPartition};
use super::restore::CHANGELOG_NEXT;
use crate::fault::Fault;
use crate::sink::collector::RecordCollector;
use crate::state::cache::DirtyStates;
use crate::state::store::{StateBatch, StateStore};
use crate::state::task_name;

/// The commit coordinator's I/O, over the real clients.
/// Generic over the consumer's context, so the rebalance callbacks (which
/// see a `BaseConsumer`) and the loop (a `StreamConsumer`) share it.
pub(super) struct ServiceIo<'a, X: ConsumerContext, C: Consumer<X>> {
    pub(super) collector: &'a mut RecordCollector,
    pub(super) store: &'a Mutex<StateStore>,
    pub(super) consumer: &'a C,
    /// Commit offsets synchronously (at revocation and shutdown); otherwise
    /// asynchronously, since the next commit covers a lost one.
    pub(super) sync_offsets: bool,
    context: std::marker::PhantomData<X>,
}

impl<'a, X: ConsumerContext, C: Consumer<X>> ServiceIo<'a, X, C> {
    pub(super) fn new(collector: &'a mut RecordCollector, store: &'a Mutex<StateStore>, consumer: &'a C, sync_offsets: bool) -> Self {
        ServiceIo { collector, store, consumer, sync_offsets, context: std::marker::PhantomData }
    }
}

/// Input offsets as the list librdkafka commits.
pub(super) fn offsets_list(offsets: &BTreeMap<InputPartition, i64>) -> Result<TopicPartitionList, Fault> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), next) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*next)).map_err(|e| Fault::Fatal(e.into()))?;
    }
    Ok(tpl)
}

impl<X: ConsumerContext, C: Consumer<X>> CommitIo for ServiceIo<'_, X, C> {
    fn seal(&mut self) -> Result<u64, Fault> {
        self.collector.seal()
    }

    fn acknowledged(&mut self, epoch: u64, wait: bool) -> Option<Result<(), Fault>> {
        self.collector.acknowledged(epoch, wait)
    }

    fn send_changelog(&mut self, epoch: u64, dirty: &DirtyStates) -> Result<(), Fault> {
        for (task, states) in dirty {
            for (id, record) in states {
                self.collector.send_changelog(epoch, *task, id, record.as_deref())?;
            }
        }
        Ok(())
    }

    fn commit_transaction(&mut self, epoch: u64, offsets: &BTreeMap<InputPartition, i64>) -> Result<(), Fault> {
        let group = self.consumer.group_metadata().ok_or_else(|| Fault::Fatal(anyhow::anyhow!("no consumer group metadata for the transaction")))?;
        self.collector.commit_transaction(epoch, &offsets_list(offsets)?, &group)
    }

    fn changelog_next(&mut self, epoch: u64) -> BTreeMap<i32, u64> {
        self.collector.changelog_next(epoch)
    }

    fn write_state(&mut self, task: i32, states: &[(String, Option<Vec<u8>>)], changelog_next: Option<u64>) -> Result<(), Fault> {
        let mut batch = StateBatch::default();
        for (id, record) in states {
            batch.put_encoded(id.as_bytes(), record.clone());
        }
        if let Some(next) = changelog_next {
            batch.mark(CHANGELOG_NEXT, next);
        }
        self.store.lock().expect("store lock").commit(&task_name(task), batch)?;
        Ok(())
    }

    fn commit_offsets(&mut self, offsets: &BTreeMap<InputPartition, i64>) -> Result<(), Fault> {
        let mode = if self.sync_offsets { CommitMode::Sync } else { CommitMode::Async };
        if let Err(e) = self.consumer.commit(&offsets_list(offsets)?, mode) {
            // Everything before is durable; a later commit covers these offsets.
            tracing::warn!(error = %e, "offset commit failed; the next commit covers it");
        }
        Ok(())
    }

    fn rewind(&mut self, to: &BTreeMap<InputPartition, i64>) -> Result<(), Fault> {
        if let Err(e) = self.collector.abandon() {
            return Err(Fault::Fatal(anyhow::anyhow!("{e}; stopping, so that the next start reads the interval from the committed offset")));
        }
        let owned = self.consumer.assignment().map_err(|e| Fault::Fatal(anyhow::anyhow!("reading the assignment to rewind: {e}")))?;
        for ((topic, p), offset) in to {
            if let Err(e) = self.consumer.seek(topic, *p, Offset::Offset(*offset), Duration::from_secs(10)) {
                if owned.find_partition(topic, *p).is_some() {
                    return Err(Fault::Fatal(anyhow::anyhow!("cannot seek {topic}/{p} back to {offset} to process the interval again: {e}; stopping, so that the next start reads it from the committed offset")));
                }
                tracing::debug!(topic = %topic, partition = p, error = %e, "seek back of a revoked partition; its next owner reads it again");
            }
        }
        Ok(())
    }
}
