//! What went wrong with a batch, and what to do about it.
//!
//! Two kinds of failure, told apart here and nowhere else:
//! - **permanent** failures of one record (it can never be processed as it
//!   is) are not faults of the batch at all: the engine turns them into dead
//!   letters (`DecodeError`, every variant permanent) and the batch goes on;
//! - **transient** failures of the batch's I/O (broker unreachable, a delivery
//!   timed out, the state directory unwritable) pause the input and retry the
//!   same batch, in order, with backoff ([`Backoff`]); nothing is skipped, so a
//!   reservation's changes still apply in order;
//! - what neither retrying nor dead-lettering can fix (authorization refused,
//!   a fenced or fatally failed producer, a corrupt state record) stops the
//!   instance with the reason, for the operator.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The broker: retry the batch after a pause.
    #[error("broker: {0:#}")]
    Broker(anyhow::Error),
    /// The schema registry cannot be reached or failed: retry the batch
    /// after a pause (its records are held, never dropped or written unframed).
    #[error("schema registry: {0:#}")]
    Registry(anyhow::Error),
    /// The state directory: reopen the store, then retry the batch.
    #[error("state store: {0:#}")]
    Disk(anyhow::Error),
    /// The producer instance failed for good (fenced, or a fatal idempotence
    /// error, as after deliveries timed out in an outage): at-least-once
    /// creates a new producer and retries; exactly-once stops, since a fenced
    /// transactional producer means another instance took its place.
    #[error("producer: {0:#}")]
    ProducerLost(anyhow::Error),
    /// Stop the instance.
    #[error("{0:#}")]
    Fatal(anyhow::Error),
}

impl Fault {
    pub fn is_transient(&self) -> bool {
        !matches!(self, Fault::Fatal(_))
    }

    /// A Kafka client error, classified.
    pub fn kafka(e: KafkaError, doing: &str) -> Fault {
        let lost = producer_lost(&e);
        let transient = kafka_is_transient(&e);
        let e = anyhow::anyhow!("{doing}: {e}");
        if lost {
            Fault::ProducerLost(e)
        } else if transient {
            Fault::Broker(e)
        } else {
            Fault::Fatal(e)
        }
    }
}

fn producer_lost(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        _ => matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::Fatal)),
    }
}

/// Whether retrying can help: everything but configuration, authorization,
/// size and fatal-producer errors, which the same request hits again.
fn kafka_is_transient(e: &KafkaError) -> bool {
    if let KafkaError::Transaction(t) = e {
        return !t.is_fatal();
    }
    !matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::Fatal
        )
    ) && !matches!(e, KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_))
}

/// Exponential backoff with jitter: attempt n waits a random time between
/// half and all of `initial × 2^(n-1)`, capped at `max`. The jitter keeps N
/// replicas that failed together from hammering a recovering broker in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
        Backoff { initial, max, seed }
    }

    /// The wait before retry number `attempt` (1-based).
    pub fn delay(&mut self, attempt: u32) -> Duration {
        let ceiling = self.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(self.max);
        // xorshift: cheap, and good enough to spread retries.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = ceiling / 2;
        half + Duration::from_nanos(self.seed % (half.as_nanos() as u64).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for (attempt, ceiling_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1600), (6, 2000), (40, 2000)] {
            let d = b.delay(attempt);
            let ceiling = Duration::from_millis(ceiling_ms);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
        }
        let spread: std::collections::HashSet<Duration> = (0..20).map(|_| b.delay(3)).collect();
        assert!(spread.len() > 10, "jitter should spread the waits: {spread:?}");
    }

    #[test]
    fn kafka_errors_are_told_apart() {
        assert!(kafka_is_transient(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
        assert!(kafka_is_transient(&KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(kafka_is_transient(&KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas)));
        assert!(!kafka_is_transient(&KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(!kafka_is_transient(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(matches!(Fault::kafka(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal), "producing"), Fault::ProducerLost(_)));
        assert!(matches!(Fault::kafka(KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced), "producing"), Fault::ProducerLost(_)));
        assert!(matches!(Fault::kafka(KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed), "producing"), Fault::Fatal(_)));
    }
}
