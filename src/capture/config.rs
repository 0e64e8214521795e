//! The configuration of `resevent capture`: one typed struct, layered
//! built-in defaults < config file (`--config FILE`, TOML) < `RESEVENT_*`
//! environment < command-line flags, as `resevent run`'s.
//!
//! Owns parsing, layering, the masked log line and remembering the MongoDB
//! password for the log scrubber; no I/O beyond reading the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::KafkaSettings;

/// The port `resevent capture` serves HTTP on by default: `run`'s plus one,
/// so both run on one host without flags.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9465";

/// Which Extended JSON dialect the published change documents use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum JsonDialect {
    /// Relaxed Extended JSON v2: numbers as JSON numbers, dates as ISO text.
    #[default]
    Relaxed,
    /// Canonical Extended JSON v2: every BSON type kept (`{"$numberInt": "7"}`).
    Canonical,
}

/// Every setting of `resevent capture`. Field docs are the reference.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// MongoDB connection string (a replica set or sharded cluster: change
    /// streams need one). TLS goes through its options (`tls=true&tlsCAFile=…`).
    pub mongo_uri: String,
    /// The database holding the reservations.
    pub database: String,
    /// The reservations collection whose change stream is captured.
    pub collection: String,
    /// The Kafka topic of change events; default `<database>.<collection>`.
    pub topic: Option<String>,
    /// Partitions of the topic when capture creates it; none = the broker's default.
    pub partitions: Option<i32>,
    /// Replication factor of the created topic (-1: the broker's default).
    pub replication_factor: i32,
    /// Create the topic when it is missing.
    pub create_topic: bool,
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub bootstrap_servers: String,
    /// The aggregation pipeline (a JSON array) run in the change stream;
    /// none = pipelines/change-stream.json if present, else the built-in copy of it.
    pub change_stream_pipeline: Option<PathBuf>,
    /// Publish the collection's documents as copy-existing events before
    /// following the stream (only when the topic holds no position yet).
    pub copy_existing: bool,
    /// The collection (in `database`) holding one lease document per captured collection.
    pub lease_collection: String,
    /// How long a lease holder may go without renewing before a standby takes
    /// over, in ms. Renewed every third of it.
    pub lease_ms: u64,
    /// Extended JSON dialect of the published documents.
    pub json: JsonDialect,
    /// Where /healthz, /readyz and /metrics listen; none (`--no-http`) turns it off.
    pub http_addr: Option<String>,
    /// librdkafka settings for every client (`security.protocol`, `sasl.password`, …).
    pub kafka: BTreeMap<String, String>,
    /// librdkafka settings for the consumer that reads the stored position back.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for the producer (`linger.ms`, `compression.type`, …).
    pub producer: BTreeMap<String, String>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            mongo_uri: "mongodb://127.0.0.1:27017/?replicaSet=rs0".into(),
            database: String::new(),
            collection: String::new(),
            topic: None,
            partitions: None,
            replication_factor: -1,
            create_topic: true,
            bootstrap_servers: crate::config::DEFAULT_BOOTSTRAP_SERVERS.into(),
            change_stream_pipeline: None,
            copy_existing: false,
            lease_collection: "resevent_capture_leases".into(),
            lease_ms: 10_000,
            json: JsonDialect::Relaxed,
            http_addr: Some(DEFAULT_HTTP_ADDR.into()),
            kafka: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// Command-line overrides; `None` = not given.
#[derive(Clone, Debug, Default)]
pub struct CaptureOverrides {
    pub mongo_uri: Option<String>,
    pub database: Option<String>,
    pub collection: Option<String>,
    pub topic: Option<String>,
    pub partitions: Option<i32>,
    pub bootstrap_servers: Option<String>,
    pub change_stream_pipeline: Option<PathBuf>,
    pub copy_existing: bool,
    pub lease_ms: Option<u64>,
    pub http_addr: Option<String>,
    pub no_http: bool,
}

impl CaptureConfig {
    /// Layers file, environment and flags over the defaults.
    pub fn load(file: Option<&Path>, env: impl Iterator<Item = (String, String)>, flags: CaptureOverrides) -> anyhow::Result<CaptureConfig> {
        // Settings without a default are absent from the defaults table.
        let kind_without_default = |key: &str| match key {
            "topic" | "change_stream_pipeline" => Some(toml::Value::String(String::new())),
            "partitions" => Some(toml::Value::Integer(0)),
            _ => None,
        };
        let table = crate::config::layered(toml::Table::try_from(CaptureConfig::default())?, file, env, kind_without_default, false)?;
        let mut cfg: CaptureConfig = table.try_into().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let f = flags;
        if let Some(v) = f.mongo_uri {
            cfg.mongo_uri = v;
        }
        if let Some(v) = f.database {
            cfg.database = v;
        }
        if let Some(v) = f.collection {
            cfg.collection = v;
        }
        if f.topic.is_some() {
            cfg.topic = f.topic;
        }
        if f.partitions.is_some() {
            cfg.partitions = f.partitions;
        }
        if let Some(v) = f.bootstrap_servers {
            cfg.bootstrap_servers = v;
        }
        if f.change_stream_pipeline.is_some() {
            cfg.change_stream_pipeline = f.change_stream_pipeline;
        }
        if f.copy_existing {
            cfg.copy_existing = true;
        }
        if let Some(v) = f.lease_ms {
            cfg.lease_ms = v;
        }
        if f.http_addr.is_some() {
            cfg.http_addr = f.http_addr;
        }
        if f.no_http || cfg.http_addr.as_deref() == Some("") {
            cfg.http_addr = None;
        }
        if cfg.topic.as_deref() == Some("") {
            cfg.topic = None;
        }
        if cfg.partitions == Some(0) {
            cfg.partitions = None;
        }
        cfg.remember_secrets();
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.database.is_empty() || self.collection.is_empty() {
            anyhow::bail!("no collection to capture: give --database DB and --collection COLL (or database/collection in the config file, or RESEVENT_DATABASE/RESEVENT_COLLECTION)");
        }
        if self.lease_ms < 300 {
            anyhow::bail!("lease_ms = {} is too short to renew in time; give at least 300", self.lease_ms);
        }
        if let Some(p) = self.partitions.filter(|p| *p < 1) {
            anyhow::bail!("partitions = {p}: give at least 1");
        }
        Ok(())
    }

    /// The topic change events go to.
    pub fn topic(&self) -> String {
        self.topic.clone().unwrap_or_else(|| format!("{}.{}", self.database, self.collection))
    }

    /// The lease document's id: one lease per captured collection.
    pub fn lease_id(&self) -> String {
        format!("{}.{}", self.database, self.collection)
    }

    /// The Kafka client settings, for [`crate::kafka`] (TLS, SASL, the
    /// user's librdkafka settings), as every command's clients are built.
    pub fn kafka_settings(&self) -> KafkaSettings<'_> {
        KafkaSettings { bootstrap_servers: &self.bootstrap_servers, kafka: &self.kafka, consumer: &self.consumer, producer: &self.producer }
    }

    /// Secrets go to the log scrubber: the librdkafka ones by name, and the
    /// password in the MongoDB URI (as written and percent-decoded).
    fn remember_secrets(&self) {
        self.kafka_settings().remember_secrets();
        if let Some(pw) = uri_password(&self.mongo_uri) {
            crate::secrets::remember(&pw);
            crate::secrets::remember(&percent_decode(&pw));
        }
    }

    /// The effective configuration for the start-up log, secrets masked.
    pub fn masked(&self) -> String {
        let mut shown = self.clone();
        if let Some(pw) = uri_password(&shown.mongo_uri) {
            shown.mongo_uri = shown.mongo_uri.replacen(&format!(":{pw}@"), ":*****@", 1);
        }
        crate::config::mask_secrets([&mut shown.kafka, &mut shown.consumer, &mut shown.producer]);
        serde_json::to_string(&shown).unwrap_or_default()
    }
}

/// The password of `mongodb[+srv]://user:password@hosts/…`, as written.
pub fn uri_password(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    // The user info ends at the last '@' before the path (a password may hold '@' only percent-encoded).
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let pw = userinfo.split_once(':')?.1;
    (!pw.is_empty()).then(|| pw.to_string())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
        let file = dir.path().join("capture.toml");
        std::fs::write(&file, "database = \"property\"\ncollection = \"from-file\"\nlease_ms = 5000\n[producer]\n\"linger.ms\" = \"7\"\n").unwrap();
        let cfg = CaptureConfig::load(
            Some(&file),
            env(&[("RESEVENT_COLLECTION", "reservation"), ("RESEVENT_PARTITIONS", "3"), ("RESEVENT_INPUT_TOPICS", "ignored"), ("RESEVENT_KAFKA__SASL_PASSWORD", "pw-from-env")]),
            CaptureOverrides { lease_ms: Some(2000), no_http: true, ..Default::default() },
        )
        .unwrap();
        assert_eq!((cfg.database.as_str(), cfg.collection.as_str(), cfg.partitions, cfg.lease_ms), ("property", "reservation", Some(3), 2000));
        assert_eq!(cfg.topic(), "property.reservation");
        assert_eq!(cfg.producer["linger.ms"], "7");
        assert_eq!(cfg.http_addr, None);
        assert!(!cfg.masked().contains("pw-from-env"));
        assert!(CaptureConfig::load(None, env(&[]), CaptureOverrides::default()).unwrap_err().to_string().contains("--database"));
    }

    #[test]
    fn the_uri_password_is_masked_and_remembered() {
        assert_eq!(uri_password("mongodb://app:s3cr%40t@db1:27017,db2/?replicaSet=rs0").as_deref(), Some("s3cr%40t"));
        assert_eq!(uri_password("mongodb+srv://app@cluster.example.net/"), None);
        assert_eq!(uri_password("mongodb://db1:27017/?tls=true"), None);
        let cfg = CaptureConfig::load(None, env(&[]), CaptureOverrides { mongo_uri: Some("mongodb://app:Hunter2pw@db1/".into()), database: Some("d".into()), collection: Some("c".into()), ..Default::default() }).unwrap();
        assert!(cfg.masked().contains("mongodb://app:*****@db1/"), "{}", cfg.masked());
        assert_eq!(crate::secrets::scrub("connecting to mongodb://app:Hunter2pw@db1/"), "connecting to mongodb://app:*****@db1/");
        assert_eq!(percent_decode("s3cr%40t"), "s3cr@t");
    }
}
