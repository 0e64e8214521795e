//! The input edge: records from the consumer, in batches.
//!
//! A batch is what arrived within `batch_wait_ms` of its first record, up to
//! `max_batch_records`; it is a unit of decoding and state lookup (one
//! MultiGet), not of durability, which the commit interval decides. Pausing
//! and seeking belong to the service loop, which knows why.

use std::time::Duration;

use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, OwnedMessage};

/// Adds what arrives within `wait` to `batch`, up to `max` records.
pub async fn fill_batch<C: ConsumerContext + 'static>(consumer: &StreamConsumer<C>, mut batch: Vec<OwnedMessage>, max: usize, wait: Duration) -> Vec<OwnedMessage> {
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => batch.push(m.detach()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

/// What one wait for input brought.
pub enum Arrived {
    /// A record (the first of a batch).
    Record(OwnedMessage),
    /// A consumer error, already logged.
    Error,
}

/// One record from the consumer, or an error.
pub fn arrived(m: Result<BorrowedMessage<'_>, rdkafka::error::KafkaError>) -> Arrived {
    match m {
        Ok(m) => Arrived::Record(m.detach()),
        Err(e) => {
            tracing::warn!(error = %e, "consumer error");
            Arrived::Error
        }
    }
}
