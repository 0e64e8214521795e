//! `resevent tail`: what a consuming team runs to see its feed. Reads a
//! business topic and prints each event as one JSON line, whether it was
//! written as JSON or as Avro (recognised by the wire format's magic byte,
//! decoded with the writer's schema from the registry).
//!
//! With `--raw` it reads an *input* topic instead and writes each record as
//! `replay` reads it (one value per line, or `{"key", "value"}` lines with
//! `--keyed`), so that `replay`, `pipeline diff` and the golden tests run on
//! what really arrived.
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
With --raw the topic is an input topic (change events), and each record is written as `resevent replay`\n\
reads it: its value on one line, or {\"key\": K, \"value\": V} with --keyed (V null for a tombstone). An\n\
Avro record is written as the JSON resevent decodes it into (and stderr says so). --raw stops at the\n\
end of every partition unless --follow; --since and --until choose records by their timestamp:\n  \
resevent tail --raw --topic property.reservation --keyed --since 2026-11-24T00:00:00Z > history.jsonl\n  \
resevent replay --keyed history.jsonl\n\n\
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
    /// Write an input topic's records as `resevent replay` reads them, not business events.
    #[arg(long)]
    pub raw: bool,
    /// With --raw: {"key": K, "value": V} lines (what `replay --keyed` reads; Debezium deletes need the key).
    #[arg(long, requires = "raw")]
    pub keyed: bool,
    /// Start at the first record with a timestamp at or after this moment (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "from_beginning")]
    pub since: Option<i64>,
    /// Leave out records with a timestamp after this moment (RFC 3339); stop once every partition is past it.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<i64>,
    /// With --raw: keep reading new records after the end instead of stopping there.
    #[arg(long, requires = "raw")]
    pub follow: bool,
}

fn parse_time(text: &str) -> Result<i64, String> {
    crate::time::parse_millis(text).ok_or_else(|| format!("{text:?} is not an RFC 3339 time; write it like 2026-11-25T00:00:00Z"))
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
    /// --raw: Avro records written as the JSON they decode into.
    pub converted: u64,
    /// --raw without --keyed: tombstones, which a value-only line cannot carry.
    pub tombstones: u64,
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
    let from = match args.since {
        Some(t) => format!("first record at or after {}", crate::time::format_millis(t)),
        None if args.from_beginning => "beginning".into(),
        None => "end".into(),
    };
    eprintln!("resevent tail: reading {} ({} partitions) from the {from}{}", args.topic, partitions.len(), if args.raw { ", records as replay reads them" } else { "" });
    let types = event_types(args);
    let mut counts = TailCounts::default();
    // Partitions read to their end (librdkafka's end-of-partition event,
    // taken back when a record arrives after it), for --exit-at-end; and
    // those past --until.
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let mut past_until: BTreeSet<i32> = BTreeSet::new();
    let stop_at_end = args.exit_at_end || (args.raw && !args.follow);
    let (started, mut last_report) = (std::time::Instant::now(), std::time::Instant::now());
    loop {
        if stop_at_end && at_end.union(&past_until).count() == partitions.len() {
            break;
        }
        if args.until.is_some() && past_until.len() == partitions.len() {
            break;
        }
        if args.raw && last_report.elapsed() >= Duration::from_secs(5) {
            last_report = std::time::Instant::now();
            eprintln!("resevent tail: {} records written ({:.0}/s)", counts.printed, counts.printed as f64 / started.elapsed().as_secs_f64());
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
        if let (Some(until), Some(t)) = (args.until, m.timestamp().to_millis()) {
            if t > until {
                past_until.insert(p);
                counts.filtered += 1;
                continue;
            }
        }
        if args.raw {
            match raw_line(args.keyed, registry.as_ref(), &m).await {
                Ok(Raw::Line { text, converted }) => {
                    writeln!(out, "{text}")?;
                    counts.printed += 1;
                    counts.converted += u64::from(converted);
                }
                Ok(Raw::Tombstone) => counts.tombstones += 1,
                Err(e) => {
                    eprintln!("resevent tail: {}/{p} offset {offset}: {e}; skipped", args.topic);
                    counts.undecodable += 1;
                }
            }
            continue;
        }
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
    if args.raw {
        eprintln!("resevent tail: {} records written", counts.printed);
        if counts.converted > 0 {
            eprintln!("resevent tail: {} of them were Avro and are written as the JSON resevent decodes them into", counts.converted);
        }
        if counts.tombstones > 0 {
            eprintln!("resevent tail: {} tombstones (null values) left out: a value-only line cannot carry them; give --keyed", counts.tombstones);
        }
    }
    Ok(counts)
}

/// What `--raw` writes for one record.
enum Raw {
    Line { text: String, converted: bool },
    /// A null value without --keyed.
    Tombstone,
}

/// One input record as `replay` reads it: the value's JSON on one line, or
/// `{"key": K, "value": V}`. Avro (the Confluent wire format) is converted
/// through the registry exactly as `run` converts it before decoding.
async fn raw_line(keyed: bool, registry: Option<&Registry>, m: &rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<Raw> {
    let (mut key, mut value) = (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec));
    let framed = key.as_deref().and_then(crate::decode::avro::unframe).is_some() || value.as_deref().and_then(crate::decode::avro::unframe).is_some();
    if framed {
        let Some(registry) = registry else { anyhow::bail!("the record is Avro; give --schema-registry-url to write it as JSON") };
        match crate::registry::resolve(registry, m.key(), m.payload()).await? {
            crate::registry::Resolved::Plain => {}
            crate::registry::Resolved::Converted { key: k, value: v } => {
                key = k.or(key);
                value = v.or(value);
            }
            crate::registry::Resolved::Rejected(e) => anyhow::bail!("{e}"),
        }
    }
    let value_json = match &value {
        Some(v) => Some(one_line(v).context("the value")?),
        None if keyed => None,
        None => return Ok(Raw::Tombstone),
    };
    let text = if keyed {
        // A key that is not JSON (a bare id) is written as a JSON string.
        let key_json = match &key {
            Some(k) => one_line(k).or_else(|_| Ok::<_, anyhow::Error>(serde_json::to_string(&String::from_utf8_lossy(k))?))?,
            None => "null".into(),
        };
        format!("{{\"key\": {key_json}, \"value\": {}}}", value_json.as_deref().unwrap_or("null"))
    } else {
        value_json.expect("not a tombstone")
    };
    Ok(Raw::Line { text, converted: framed })
}

/// JSON bytes as one line: as they are when they are one line already,
/// else re-written without the line breaks (the value is the same JSON).
fn one_line(bytes: &[u8]) -> anyhow::Result<String> {
    let text = std::str::from_utf8(bytes).map_err(|e| anyhow::anyhow!("not UTF-8 (byte {}); replay cannot read it as a line", e.valid_up_to()))?;
    let raw: &serde_json::value::RawValue = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("not JSON: {e}"))?;
    if !raw.get().contains(['\n', '\r']) {
        return Ok(raw.get().to_owned());
    }
    let v: serde_json::Value = serde_json::from_str(text)?;
    Ok(v.to_string())
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
        let start = match args.since {
            Some(t) => Offset::Offset(t),
            None if args.from_beginning => Offset::Beginning,
            None => Offset::End,
        };
        tpl.add_partition_offset(&args.topic, p, start)?;
    }
    if args.since.is_some() {
        // Timestamps to offsets: the first record at or after the time (the end where there is none).
        tpl = tokio::task::block_in_place(|| consumer.offsets_for_times(tpl, Duration::from_secs(10))).map_err(|e| anyhow::anyhow!("finding the offsets of --since in {}: {e}", args.topic))?;
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
