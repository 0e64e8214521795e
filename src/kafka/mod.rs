//! The Kafka edge, written once for every command: client settings built
//! from [`KafkaSettings`] (`run`, its passthrough baseline, `capture`, `dlq`,
//! `tail`), the client contexts ([`context`]), topic probes and creation
//! ([`topics`]), and the send helpers the one-off tools use.
//!
//! Owns how the user's librdkafka settings layer over resevent's own; no
//! processing here. The service's hot path sends through
//! `sink::collector::RecordCollector`, which never waits per record.

use std::collections::BTreeMap;
use std::time::Duration;


use rdkafka::config::ClientConfig;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::config::KafkaSettings;

pub mod context;
pub mod topics;

pub use context::{ConnectionContext, EndOfPartition, explain};
use crate::fault::Fault;

/// `max.message.bytes` of a created dead-letter topic, and what the producer
/// accepts: a dead letter carries the original record, which may be large.
pub const DEAD_LETTER_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Every client: the bootstrap servers and the `[kafka]` settings.
pub fn client_config(cfg: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    // rust-rdkafka takes librdkafka's log level from the `log` crate, which
    // resevent does not use (tracing); without this, TLS and login failures
    // would never be reported.
    c.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    c.set("bootstrap.servers", cfg.bootstrap_servers);
    for (k, v) in cfg.kafka {
        c.set(k, v);
    }
    c
}

/// `base` with a settings map laid over it.
pub fn with_settings(base: &ClientConfig, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = base.clone();
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// A group consumer: the user's settings, then manual offset handling
/// (offsets advance only when a commit says the outputs are durable).
pub fn group_consumer_config(cfg: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut c = with_settings(&client_config(cfg), cfg.consumer);
    c.set("group.id", group_id).set("enable.auto.commit", "false").set("enable.auto.offset.store", "false").set("auto.offset.reset", "earliest");
    c
}

/// An assign-only consumer (no group membership), for restore and for tools
/// that read a topic without joining anything.
pub fn reader_config(cfg: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut c = with_settings(&client_config(cfg), cfg.consumer);
    c.set("group.id", group_id).set("enable.auto.commit", "false").set("enable.partition.eof", "true");
    c
}

/// The producer: idempotent (order kept per partition across retries),
/// acks=all, a short linger; the user's settings win.
pub fn producer_config(cfg: &KafkaSettings) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
    // A dead letter carries the original record, however large it was.
    c.set("message.max.bytes", (DEAD_LETTER_MAX_MESSAGE_BYTES + (1 << 20)).to_string());
    with_settings(&c, cfg.producer)
}

/// Sends a record, waiting (without blocking the thread) for queue space
/// when the producer is full.
pub async fn send(producer: &FutureProducer, mut record: FutureRecord<'_, [u8], [u8]>) -> Result<DeliveryFuture, Fault> {
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, r)) => return Err(Fault::kafka(e, &format!("producing to {}", r.topic))),
        }
    }
}

/// Awaits acknowledgements; returns the highest offset per partition.
pub async fn acknowledged(futures: Vec<DeliveryFuture>, what: &str) -> Result<BTreeMap<i32, i64>, Fault> {
    let mut last = BTreeMap::new();
    for f in futures {
        match f.await {
            Ok(Ok(d)) => {
                let e = last.entry(d.partition).or_insert(d.offset);
                *e = (*e).max(d.offset);
            }
            Ok(Err((e, _))) => return Err(Fault::kafka(e, &format!("{what} not acknowledged"))),
            Err(_) => return Err(Fault::Broker(anyhow::anyhow!("{what}: the producer dropped the delivery report"))),
        }
    }
    Ok(last)
}

