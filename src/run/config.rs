//! The configuration of `resevent run`: one typed struct, layered
//! built-in defaults < config file (`--config FILE`, TOML) < `RESEVENT_*`
//! environment < command-line flags.
//!
//! Owns parsing, layering and the masked log line; no Kafka I/O here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::KafkaSettings;
use crate::decode::Format;

/// What a crash may cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// A crash repeats the uncommitted batch's events, with the same eventIds.
    #[default]
    AtLeastOnce,
    /// Kafka transactions: events, changelog and offsets commit together
    /// (consumers read with isolation.level=read_committed).
    ExactlyOnce,
}

/// How business events are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// JSON objects (PRODUCT.md's form).
    #[default]
    Json,
    /// Avro (schemas/business-event.avsc) in the Confluent wire format; needs a schema registry.
    Avro,
}

/// Every setting of `resevent run`. Field docs are the reference.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub bootstrap_servers: String,
    /// Topics of change events. Several topics must have the same partition
    /// count: partition N of each is handled by the same task, with one state.
    pub input_topics: Vec<String>,
    /// The consumer group, and the prefix of internal topics
    /// (`<application_id>-reservation-state-changelog`).
    pub application_id: String,
    /// Where RocksDB keeps state (one column family per partition).
    pub state_dir: PathBuf,
    /// Pipeline file; none = pipelines/reservations.toml if present, else built-in.
    pub pipeline: Option<PathBuf>,
    /// The business topic: every event, keyed by reservation id, in order per reservation.
    pub output_topic: String,
    /// Input format (auto tells the connectors apart per record).
    pub format: Format,
    /// Business events as `json` (default) or `avro` (through the schema registry).
    pub output_format: OutputFormat,
    /// The Confluent-compatible Schema Registry: for Avro output, and for
    /// Avro input (recognised per record by the wire format's magic byte).
    pub schema_registry: crate::registry::RegistryConfig,
    /// at-least-once (default) or exactly-once (Kafka transactions).
    pub processing_guarantee: Guarantee,
    /// Create missing changelog and business topics at start.
    pub create_topics: bool,
    /// `retention.ms` of created business topics (24 h, as the original deployment).
    pub output_retention_ms: i64,
    /// `retention.bytes` of created business topics (1 GiB per partition).
    pub output_retention_bytes: i64,
    /// Replication factor of created topics (-1: the broker's default).
    pub replication_factor: i32,
    /// At most this many records per processing batch.
    pub max_batch_records: usize,
    /// How long to wait to fill a batch once its first record arrived, in ms.
    pub batch_wait_ms: u64,
    /// How often the processed interval is made durable (outputs and changelog
    /// acknowledged, state written, input offsets committed), in ms. Business
    /// events are sent as records are processed, whatever this is; it bounds
    /// what a crash repeats (at-least-once) or how long read_committed
    /// consumers wait (exactly-once). Default: 1000 at-least-once (Kafka
    /// Streams uses 30 s; a shorter interval costs little here, since a commit
    /// is a flush and one WriteBatch, and repeats less after a crash), 100
    /// exactly-once (as Kafka Streams: consumers see events only at commit).
    pub commit_interval_ms: Option<u64>,
    /// Bound of the write-back cache of new states between commits (an
    /// estimate of its memory, in bytes); when its changed states reach it the
    /// interval commits early. Default 32 MiB.
    pub cache_max_bytes: usize,
    /// Stop after this many seconds without input (batch jobs, benchmarks); none = run until signalled.
    pub idle_exit_secs: Option<u64>,
    /// Where records that can never be processed go, with the reason in
    /// headers; none = `<input-topic>.dlt` for each input topic.
    pub dead_letter_topic: Option<String>,
    /// A record (key + value) larger than this is dead-lettered as `too-large`.
    pub max_record_bytes: usize,
    /// A value nesting objects/arrays deeper than this (at most 128) is dead-lettered as `too-deep`.
    pub max_nesting_depth: usize,
    /// First wait before retrying after a transient failure (broker, disk), in ms;
    /// doubled per attempt, with jitter, up to `retry_max_backoff_ms`.
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    /// Give up (exit non-zero, for the orchestrator to restart) after this many
    /// attempts at one batch; 0 = retry until it works or the instance is stopped.
    pub retry_max_attempts: u32,
    /// RocksDB memtable size per partition, in bytes.
    pub state_write_buffer_bytes: usize,
    /// Where the operations endpoint listens (/healthz, /readyz, /metrics,
    /// /reservations/{id}); none (`--no-http`) turns it off.
    pub http_addr: Option<String>,
    /// librdkafka settings for every client (e.g. `security.protocol`,
    /// `sasl.password`), passed through as given.
    pub kafka: BTreeMap<String, String>,
    /// librdkafka settings for the consumers only (e.g. `session.timeout.ms`).
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for the producer only (e.g. `linger.ms`, `compression.type`).
    pub producer: BTreeMap<String, String>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            bootstrap_servers: crate::config::DEFAULT_BOOTSTRAP_SERVERS.into(),
            input_topics: Vec::new(),
            application_id: "resevent".into(),
            state_dir: PathBuf::from("resevent-state"),
            pipeline: None,
            output_topic: "reservation-events".into(),
            format: Format::Auto,
            output_format: OutputFormat::Json,
            schema_registry: Default::default(),
            processing_guarantee: Guarantee::AtLeastOnce,
            create_topics: true,
            output_retention_ms: 24 * 3600 * 1000,
            output_retention_bytes: 1 << 30,
            replication_factor: -1,
            max_batch_records: 5000,
            batch_wait_ms: 20,
            commit_interval_ms: None,
            cache_max_bytes: 32 << 20,
            idle_exit_secs: None,
            dead_letter_topic: None,
            max_record_bytes: 1 << 20,
            max_nesting_depth: 64,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 30_000,
            retry_max_attempts: 0,
            state_write_buffer_bytes: 32 << 20,
            http_addr: Some(super::http::DEFAULT_ADDR.into()),
            kafka: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// The command-line flags of `resevent run`, written once: clap reads them
/// (`#[command(flatten)]` in main.rs) and [`RunConfig::load`] lays them over
/// the file and environment. `None` = not given.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap_servers: Option<String>,
    /// Topic of change events (repeatable; several must have equal partition counts).
    #[arg(long = "input-topic", value_name = "TOPIC")]
    pub input_topics: Vec<String>,
    /// Consumer group and prefix of internal topics [default: resevent].
    #[arg(long, value_name = "ID")]
    pub application_id: Option<String>,
    /// RocksDB state directory [default: resevent-state].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Pipeline file [default: pipelines/reservations.toml if present, else built-in].
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// Business topic [default: reservation-events].
    #[arg(long, value_name = "TOPIC")]
    pub output_topic: Option<String>,
    /// Input format [default: auto]. Avro input (Confluent wire format) is recognised per
    /// record whatever this says, and decoded through --schema-registry-url.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Business events as json [default] or avro (schemas/business-event.avsc, Confluent wire
    /// format, the schema registered under <topic>-value at start; needs --schema-registry-url).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub output_format: Option<OutputFormat>,
    /// Confluent-compatible Schema Registry, for Avro output and Avro input. Basic auth, a CA
    /// file and the subject strategy go in [schema_registry] of --config or
    /// RESEVENT_SCHEMA_REGISTRY__<KEY>.
    #[arg(long, value_name = "URL")]
    pub schema_registry_url: Option<String>,
    /// Do not create missing changelog or business topics; fail instead.
    #[arg(long)]
    pub no_create_topics: bool,
    /// at-least-once (default: repeats after a crash carry the same eventId) or
    /// exactly-once (Kafka transactions; consumers must read with isolation.level=read_committed).
    #[arg(long = "guarantee", value_enum, value_name = "GUARANTEE")]
    pub processing_guarantee: Option<Guarantee>,
    /// Stop after this many seconds without input, printing a JSON summary (batch jobs, benchmarks).
    #[arg(long, value_name = "SECS")]
    pub idle_exit_secs: Option<u64>,
    /// Where to serve /healthz, /readyz, /metrics (Prometheus) and
    /// /reservations/{id} [default: 127.0.0.1:9464; port 0 picks a free one, logged at start].
    #[arg(long, value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// Serve no HTTP endpoint.
    #[arg(long, conflicts_with = "http_addr")]
    pub no_http: bool,
}

impl RunConfig {
    /// Layers file, environment and flags over the defaults.
    pub fn load(file: Option<&Path>, env: impl Iterator<Item = (String, String)>, flags: Overrides) -> anyhow::Result<RunConfig> {
        let kind_without_default = |key: &str| match key {
            "pipeline" | "dead_letter_topic" => Some(toml::Value::String(String::new())),
            "idle_exit_secs" | "commit_interval_ms" => Some(toml::Value::Integer(0)),
            _ => None,
        };
        let table = crate::config::layered(toml::Table::try_from(RunConfig::default())?, file, env, kind_without_default, true)?;
        let mut cfg: RunConfig = table.try_into().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if let Some(v) = flags.bootstrap_servers {
            cfg.bootstrap_servers = v;
        }
        if !flags.input_topics.is_empty() {
            cfg.input_topics = flags.input_topics;
        }
        if let Some(v) = flags.application_id {
            cfg.application_id = v;
        }
        if let Some(v) = flags.state_dir {
            cfg.state_dir = v;
        }
        if let Some(v) = flags.pipeline {
            cfg.pipeline = Some(v);
        }
        if let Some(v) = flags.output_topic {
            cfg.output_topic = v;
        }
        if let Some(v) = flags.format {
            cfg.format = v;
        }
        if let Some(v) = flags.output_format {
            cfg.output_format = v;
        }
        if let Some(v) = flags.schema_registry_url {
            cfg.schema_registry.url = Some(v);
        }
        if flags.no_create_topics {
            cfg.create_topics = false;
        }
        if let Some(g) = flags.processing_guarantee {
            cfg.processing_guarantee = g;
        }
        if flags.http_addr.is_some() {
            cfg.http_addr = flags.http_addr;
        }
        if flags.no_http || cfg.http_addr.as_deref() == Some("") {
            cfg.http_addr = None;
        }
        if flags.idle_exit_secs.is_some() {
            cfg.idle_exit_secs = flags.idle_exit_secs;
        }
        cfg.validate()?;
        cfg.kafka_settings().remember_secrets();
        cfg.schema_registry.remember_secrets();
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.input_topics.is_empty() {
            anyhow::bail!("no input topic: give --input-topic TOPIC (repeatable), input_topics in the config file, or RESEVENT_INPUT_TOPICS");
        }
        if self.input_topics.contains(&self.output_topic) {
            anyhow::bail!("output topic {:?} is also an input topic; events would be read back as changes", self.output_topic);
        }
        if self.commit_interval_ms == Some(0) || self.cache_max_bytes == 0 {
            anyhow::bail!("commit_interval_ms and cache_max_bytes must be at least 1");
        }
        if self.application_id.is_empty() || self.max_batch_records == 0 {
            anyhow::bail!("application_id must not be empty and max_batch_records must be at least 1");
        }
        if self.max_nesting_depth == 0 || self.max_nesting_depth > crate::decode::MAX_NESTING_DEPTH {
            anyhow::bail!("max_nesting_depth = {} is out of range; give 1 to {}", self.max_nesting_depth, crate::decode::MAX_NESTING_DEPTH);
        }
        if self.retry_initial_backoff_ms == 0 || self.retry_max_backoff_ms < self.retry_initial_backoff_ms {
            anyhow::bail!("retry_initial_backoff_ms must be at least 1 and retry_max_backoff_ms at least retry_initial_backoff_ms");
        }
        if self.output_format == OutputFormat::Avro && self.schema_registry.url.is_none() {
            anyhow::bail!("--output-format avro needs a schema registry: give --schema-registry-url URL, schema_registry.url in the config file, or RESEVENT_SCHEMA_REGISTRY__URL");
        }
        if let Some(dlt) = self.dead_letter_topic.as_deref() {
            if self.input_topics.iter().any(|t| t == dlt) || dlt == self.output_topic {
                anyhow::bail!("dead_letter_topic {dlt:?} is also an input or the output topic; give a topic of its own");
            }
        }
        Ok(())
    }

    /// The commit interval in effect, in ms (see `commit_interval_ms`).
    pub fn commit_interval(&self) -> u64 {
        self.commit_interval_ms.unwrap_or(match self.processing_guarantee {
            Guarantee::AtLeastOnce => 1000,
            Guarantee::ExactlyOnce => 100,
        })
    }

    /// The dead-letter topic of an input topic.
    pub fn dead_letter_topic_for(&self, input: &str) -> String {
        crate::sink::deadletter::topic_for(input, self.dead_letter_topic.as_deref())
    }

    /// The decoder limits these settings give.
    pub fn limits(&self) -> crate::decode::Limits {
        crate::decode::Limits { max_record_bytes: self.max_record_bytes, max_nesting_depth: self.max_nesting_depth }
    }

    /// The Kafka client settings, for [`crate::kafka`].
    pub fn kafka_settings(&self) -> KafkaSettings<'_> {
        KafkaSettings { bootstrap_servers: &self.bootstrap_servers, kafka: &self.kafka, consumer: &self.consumer, producer: &self.producer }
    }

    /// The compacted changelog topic of the state store.
    pub fn changelog_topic(&self) -> String {
        format!("{}-reservation-state-changelog", self.application_id)
    }

    /// The effective configuration for the start-up log, secrets masked.
    pub fn masked(&self) -> String {
        let mut shown = self.clone();
        crate::config::mask_secrets([&mut shown.kafka, &mut shown.consumer, &mut shown.producer]);
        if let Some(info) = shown.schema_registry.basic_auth_user_info.as_mut() {
            *info = format!("{}:*****", info.split(':').next().unwrap_or(""));
        }
        crate::secrets::scrub(&serde_json::to_string(&shown).unwrap_or_default())
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn layers_defaults_file_environment_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("resevent.toml");
        std::fs::write(&file, "input_topics = [\"a\"]\napplication_id = \"from-file\"\noutput_topic = \"file-out\"\n[kafka]\n\"sasl.password\" = \"hunter2\"\n\"linger.ms\" = \"7\"\n").unwrap();
        let flags = Overrides { output_topic: Some("flag-out".into()), ..Default::default() };
        let cfg = RunConfig::load(Some(&file), env(&[("RESEVENT_APPLICATION_ID", "from-env"), ("RESEVENT_MAX_BATCH_RECORDS", "9"), ("RESEVENT_CONSUMER__SESSION_TIMEOUT_MS", "6000")]), flags).unwrap();
        assert_eq!(cfg.input_topics, vec!["a"]);
        assert_eq!(cfg.application_id, "from-env");
        assert_eq!(cfg.output_topic, "flag-out");
        assert_eq!(cfg.max_batch_records, 9);
        assert_eq!(cfg.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(cfg.kafka.get("linger.ms").map(String::as_str), Some("7"));
        assert_eq!(cfg.consumer.get("session.timeout.ms").map(String::as_str), Some("6000"));
        assert_eq!(cfg.changelog_topic(), "from-env-reservation-state-changelog");
        let masked = cfg.masked();
        assert!(!masked.contains("hunter2") && masked.contains("*****"), "{masked}");
    }

    #[test]
    fn clear_errors_for_missing_or_wrong_settings() {
        let e = RunConfig::load(None, env(&[]), Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("--input-topic"), "{e}");
        let e = RunConfig::load(None, env(&[("RESEVENT_INPUT_TOPICS", "a"), ("RESEVENT_MAX_BATCH_RECORDS", "many")]), Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("RESEVENT_MAX_BATCH_RECORDS=\"many\" is not a whole number"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "input_topic = \"a\"\n").unwrap();
        let e = RunConfig::load(Some(&file), env(&[]), Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("unknown field `input_topic`"), "{e}");
    }
}
