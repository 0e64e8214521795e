//! Client contexts: what resevent does with librdkafka's errors and logs.
//!
//! - [`ConnectionContext`]: reports connection errors (TLS handshakes,
//!   logins, unreachable brokers) through the log and keeps the last one, so
//!   a failing call can say why;
//! - [`EndOfPartition`]: for readers that stop at a partition's end (restore,
//!   `dlq`, capture's read-back), where librdkafka's PartitionEOF "error" is
//!   how they know they are done, not something to log.

use std::sync::Mutex;

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;

/// A client context that reports librdkafka's connection errors (TLS
/// handshakes, authentication, unreachable brokers) through the log, and
/// keeps the last one so a failing call can say why it failed.
#[derive(Default)]
pub struct ConnectionContext {
    last_error: Mutex<Option<String>>,
}

impl ConnectionContext {
    /// The last error librdkafka reported, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }
}

impl ClientContext for ConnectionContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka client error");
        // "All brokers are down" follows the failure that says why; keep that one.
        let mut last = self.last_error.lock().expect("error lock");
        if last.is_none() || error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            *last = Some(format!("{error}: {reason}"));
        }
    }

    /// librdkafka reports connection failures (a TLS handshake, a SASL
    /// login) in its log, from its own threads, before any call returns.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::warn!(facility, "librdkafka: {message}");
                *self.last_error.lock().expect("error lock") = Some(message.to_owned());
            }
            L::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            _ => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ConnectionContext {}

/// `what` failed; with librdkafka's last reported error, which usually says why
/// (a certificate that did not verify, a refused login).
pub fn explain(what: String, context: &ConnectionContext) -> anyhow::Error {
    match context.last_error() {
        Some(why) => anyhow::anyhow!("{what}; the client last reported: {why}"),
        None => anyhow::anyhow!("{what}"),
    }
}

/// A reader that stops at the end of its partitions: PartitionEOF (which
/// librdkafka also reports as a global error, once per fetch that finds
/// nothing new) goes to debug; every other error is logged as `what`'s.
pub struct EndOfPartition {
    /// Names the reader in its log lines ("restore consumer", "dead-letter consumer").
    pub what: &'static str,
}

impl ClientContext for EndOfPartition {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) || reason.contains("end of partition") {
            tracing::debug!(reader = self.what, %reason, "partition end");
        } else {
            tracing::warn!(reader = self.what, error = %error, %reason, "Kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndOfPartition {}
