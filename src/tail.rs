//! `resevent tail`: what a consuming team runs to see its feed. Reads a
//! business topic and prints each event as one JSON line, whether it was
//! written as JSON or as Avro (recognised by the wire format's magic byte,
//! decoded with the writer's schema from the registry).
//!
//! It reads by assignment, never joining a consumer group, and commits
//! nothing: tailing a topic changes nothing for anyone.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::registry::Registry;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
resevent tail --bootstrap-servers kafka:9092 --topic reservation-events\n  \
resevent tail --topic reservation-events --from-beginning --event-type CHECKED_OUT\n  \
resevent tail --topic key-service-events --schema-registry-url http://registry:8081 --reservation 6502f1c2a1b2c3d4e5f60718\n  \
resevent tail --config resevent.toml --topic reservation-events --from-beginning --exit-at-end | jq .\n\n\
Each line is one event as JSON, as PRODUCT.md shows it, whatever the topic's format. Records that\n\
cannot be decoded are reported on stderr with their partition and offset, and skipped.\n\
Connection settings as for `resevent run`: --bootstrap-servers, bootstrap_servers, [kafka] and\n\
[schema_registry] of --config, RESEVENT_* environment.\n\n\
Exit status: 0 done (stopped, or --exit-at-end reached the end), 2 could not run.")]
pub struct TailArgs {
    /// The business topic to read.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// Config file of `resevent run` (TOML): its connection and registry settings are used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers [default: from --config or RESEVENT_BOOTSTRAP_SERVERS, else 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap_servers: Option<String>,
    /// Start at the oldest record kept, instead of printing only new ones.
    #[arg(long)]
    pub from_beginning: bool,
    /// Only events of these types (comma-separated), chosen by the eventType header without decoding.
    #[arg(long, value_name = "TYPE[,TYPE]", value_delimiter = ',')]
    pub event_type: Vec<String>,
    /// Only this reservation's events (by the record key).
    #[arg(long, value_name = "ID")]
    pub reservation: Option<String>,
    /// Schema registry for Avro records [default: schema_registry.url of --config or RESEVENT_SCHEMA_REGISTRY__URL].
    #[arg(long, value_name = "URL")]
    pub schema_registry_url: Option<String>,
    /// Stop once every partition is read to its end.
    #[arg(long)]
    pub exit_at_end: bool,
    /// Stop after printing this many events.
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,
}

/// What `tail` takes from `run`'s configuration (its `--config` file and
/// `RESEVENT_*` environment): how to reach the broker and the registry.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default)]
struct TailSettings {
    bootstrap_servers: String,
    schema_registry: crate::registry::RegistryConfig,
    kafka: std::collections::BTreeMap<String, String>,
    consumer: std::collections::BTreeMap<String, String>,
    producer: std::collections::BTreeMap<String, String>,
}

impl Default for TailSettings {
    fn default() -> Self {
        TailSettings {
            bootstrap_servers: crate::config::DEFAULT_BOOTSTRAP_SERVERS.into(),
            schema_registry: Default::default(),
            kafka: Default::default(),
            consumer: Default::default(),
            producer: Default::default(),
        }
    }
}

/// What `tail` printed and skipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TailCounts {
    pub printed: u64,
    pub filtered: u64,
    pub undecodable: u64,
}

/// Runs until `--exit-at-end`/`--max-events` says stop, or forever.
pub async fn run(args: &TailArgs, env: impl Iterator<Item = (String, String)>, out: &mut impl Write) -> anyhow::Result<TailCounts> {
    let mut cfg: TailSettings = crate::config::load_part(args.config.as_deref(), env, |_| None, true)?;
    if let Some(servers) = &args.bootstrap_servers {
        cfg.bootstrap_servers = servers.clone();
    }
    if let Some(url) = &args.schema_registry_url {
        cfg.schema_registry.url = Some(url.clone());
    }
    let kafka = crate::config::KafkaSettings { bootstrap_servers: &cfg.bootstrap_servers, kafka: &cfg.kafka, consumer: &cfg.consumer, producer: &cfg.producer };
    kafka.remember_secrets();
    cfg.schema_registry.remember_secrets();
    let registry = match &cfg.schema_registry.url {
        Some(_) => Some(Registry::new(&cfg.schema_registry)?),
        None => None,
    };
    let (consumer, partitions) = assign(args, &kafka)?;
    eprintln!("resevent tail: reading {} ({} partitions) from the {}", args.topic, partitions.len(), if args.from_beginning { "beginning" } else { "end" });
    let types = event_types(args);
    let mut counts = TailCounts::default();
    // Partitions read to their end (librdkafka's end-of-partition event,
    // taken back when a record arrives after it), for --exit-at-end.
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    loop {
        if args.exit_at_end && at_end.len() == partitions.len() {
            break;
        }
        if args.max_events.is_some_and(|m| counts.printed >= m) {
            break;
        }
        let Some(polled) = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200))) else { continue };
        let m = match polled {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
                continue;
            }
            Err(e) => {
                eprintln!("resevent tail: {}", crate::secrets::scrub(&e.to_string()));
                continue;
            }
        };
        let (p, offset) = (m.partition(), m.offset());
        at_end.remove(&p);
        if !wanted(args, &types, &m) {
            counts.filtered += 1;
            continue;
        }
        match decode_event(registry.as_ref(), m.payload()).await {
            Ok(v) => {
                writeln!(out, "{v}")?;
                counts.printed += 1;
            }
            Err(e) => {
                eprintln!("resevent tail: {}/{p} offset {offset}: {e}; skipped", args.topic);
                counts.undecodable += 1;
            }
        }
    }
    out.flush()?;
    Ok(counts)
}

/// A consumer of no group, assigned every partition of the topic at its
/// beginning or end; and those partitions.
fn assign(args: &TailArgs, kafka: &crate::config::KafkaSettings<'_>) -> anyhow::Result<(BaseConsumer<crate::kafka::ConnectionContext>, Vec<i32>)> {
    let consumer: BaseConsumer<crate::kafka::ConnectionContext> = crate::kafka::reader_config(kafka, &format!("resevent-tail-{}", std::process::id()))
        .set("auto.offset.reset", if args.from_beginning { "earliest" } else { "latest" })
        .create_with_context(crate::kafka::ConnectionContext::default())
        .context("creating the Kafka consumer")?;
    let partitions = tokio::task::block_in_place(|| crate::kafka::topics::partition_ids(&consumer, &args.topic, Duration::from_secs(10)))
        .map_err(|e| crate::kafka::explain(format!("reading the partitions of {}: {e}", args.topic), consumer.context()))?
        .ok_or_else(|| anyhow::anyhow!("topic {} does not exist (or has no partitions) on {}", args.topic, kafka.bootstrap_servers))?;
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(&args.topic, p, if args.from_beginning { Offset::Beginning } else { Offset::End })?;
    }
    consumer.assign(&tpl)?;
    Ok((consumer, partitions))
}

/// `--event-type`'s types; one this build does not know is named on stderr
/// (perhaps a type newer than this build; perhaps a typo).
fn event_types(args: &TailArgs) -> BTreeSet<&str> {
    let types: BTreeSet<&str> = args.event_type.iter().map(String::as_str).collect();
    for t in &types {
        if crate::pipeline::EventType::from_name(t).is_none() {
            eprintln!("resevent tail: --event-type {t} is not a type this build knows ({}); only records whose eventType header says {t} are printed", crate::pipeline::EventType::known_names());
        }
    }
    types
}

/// Whether a record passes `--event-type` (by its `eventType` header) and
/// `--reservation` (by its key).
fn wanted(args: &TailArgs, types: &BTreeSet<&str>, m: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    if !types.is_empty() {
        let event_type = m.headers().and_then(|h| h.iter().find(|h| h.key == "eventType").and_then(|h| h.value));
        if !event_type.is_some_and(|t| std::str::from_utf8(t).is_ok_and(|t| types.contains(t))) {
            return false;
        }
    }
    args.reservation.as_ref().is_none_or(|id| m.key() == Some(id.as_bytes()))
}

/// One business event's value as JSON, from either wire form.
pub async fn decode_event(registry: Option<&Registry>, value: Option<&[u8]>) -> anyhow::Result<serde_json::Value> {
    let value = value.context("the record has no value")?;
    if let Some((id, datum)) = crate::decode::avro::unframe(value) {
        let Some(registry) = registry else { anyhow::bail!("the value is Avro (schema id {id}); give --schema-registry-url to decode it") };
        let schema = registry.schema(id).await?;
        let v = crate::decode::avro::read_datum(&schema.parsed, datum).map_err(|e| anyhow::anyhow!("not a datum of schema {id}: {e}"))?;
        return Ok(crate::decode::avro::to_json(&v));
    }
    serde_json::from_slice(value).context("the value is neither Avro in the wire format nor JSON")
}
