//! What both example consumers share: the business event's contract and a
//! feed that delivers each event of the wanted types once.
//!
//! The contract a consuming team relies on:
//! - the record key is the reservation id, so one reservation's events
//!   arrive in order on one partition;
//! - the `eventType` header names the type, so a type the service does not
//!   handle is skipped without decoding the value;
//! - the value is Avro in the Confluent wire format (decoded with the
//!   writer's schema from the registry) or JSON, with the same fields;
//! - delivery is at least once: a repeat carries the same `eventId`, and is
//!   dropped here.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde::Deserialize;

/// A business event, as both wire forms carry it. Fields a consumer does
/// not use may be left out; fields added later are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Event {
    pub event_id: String,
    pub event_type: String,
    pub reservation_id: String,
    pub property_id: Option<String>,
    pub room_number: Option<String>,
    pub previous_room_number: Option<String>,
    pub departure_date: Option<String>,
    pub occurred_at: Option<String>,
}

/// Where to read from; every example takes the same flags.
#[derive(clap::Parser, Debug)]
pub struct FeedArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap_servers: String,
    /// The business topic.
    #[arg(long, default_value = "reservation-events")]
    pub topic: String,
    /// This service's consumer group (its own; never resevent's).
    #[arg(long)]
    pub group: Option<String>,
    /// Schema registry, for Avro events.
    #[arg(long)]
    pub schema_registry_url: Option<String>,
    /// Stop after this many seconds without a record (demos and tests); default: run until killed.
    #[arg(long)]
    pub idle_exit_secs: Option<u64>,
    /// Extra librdkafka settings, KEY=VALUE (repeatable).
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    pub kafka: Vec<String>,
}

/// What a feed did, printed at the end.
#[derive(Debug, Default)]
pub struct FeedCounts {
    pub handled: u64,
    pub skipped_by_header: u64,
    pub repeats_dropped: u64,
}

/// Runs `handle` once per event of the `wanted` types, in order per reservation.
pub fn run_feed(args: &FeedArgs, default_group: &str, wanted: &[&str], mut handle: impl FnMut(&Event)) -> anyhow::Result<FeedCounts> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap_servers)
        .set("group.id", args.group.as_deref().unwrap_or(default_group))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true");
    for kv in &args.kafka {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--kafka {kv:?} is not KEY=VALUE"))?;
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create()?;
    consumer.subscribe(&[&args.topic])?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let decoder = args.schema_registry_url.as_ref().map(|url| AvroDecoder::new(SrSettings::new(url.clone())));
    // Ids of recent events: a repeat follows its original closely (it comes
    // from a retried interval), so a bounded window is enough here. A real
    // service keeps the ids with the effect it had, in the same transaction.
    let mut seen: HashSet<String> = HashSet::new();
    let mut order: VecDeque<String> = VecDeque::new();
    let mut counts = FeedCounts::default();
    let mut last = Instant::now();
    loop {
        if args.idle_exit_secs.is_some_and(|s| last.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = polled?;
        last = Instant::now();
        let event_type = m.headers().and_then(|h| h.iter().find(|h| h.key == "eventType").and_then(|h| h.value));
        if !event_type.is_some_and(|t| wanted.iter().any(|w| w.as_bytes() == t)) {
            counts.skipped_by_header += 1;
            continue;
        }
        let Some(value) = m.payload() else { continue };
        let event: Event = if value.first() == Some(&0) {
            let decoder = decoder.as_ref().ok_or_else(|| anyhow::anyhow!("an Avro event: give --schema-registry-url"))?;
            let decoded = runtime.block_on(decoder.decode(Some(value)))?;
            apache_avro::from_value(&decoded.value)?
        } else {
            serde_json::from_slice(value)?
        };
        if !seen.insert(event.event_id.clone()) {
            counts.repeats_dropped += 1;
            continue;
        }
        order.push_back(event.event_id.clone());
        if order.len() > 100_000 {
            if let Some(old) = order.pop_front() {
                seen.remove(&old);
            }
        }
        handle(&event);
        counts.handled += 1;
    }
    Ok(counts)
}
