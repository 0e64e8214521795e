//! The Schema Registry client: schemas by id (cached) for decoding, and the
//! business event's schema registered (or looked up) for encoding. The HTTP
//! is `schema_registry_converter`'s; this adds what the service needs on top:
//! every failure told apart as a schema that is not there (permanent: the
//! record is dead-lettered as `unknown-schema`), a registry that cannot be
//! reached or failed (transient: the batch waits and retries; nothing is
//! dropped or written unframed), or a request the registry refuses
//! (credentials, an incompatible schema: the operator must act).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_schema_by_subject, post_schema};
use schema_registry_converter::avro_common::AvroSchema;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde::{Deserialize, Serialize};

/// How subjects are named (Confluent's `value.subject.name.strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectStrategy {
    /// `<topic>-value`: one subject per topic (Confluent's default).
    #[default]
    TopicName,
    /// The record's full name (`io.resevent.BusinessEvent`) for every topic.
    RecordName,
}

/// Where the registry is and how to talk to it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL, e.g. `https://registry.example.com:8081`; several,
    /// comma-separated, are tried in order. None: no registry (JSON only;
    /// Avro-framed input is dead-lettered as `unknown-schema`).
    pub url: Option<String>,
    /// HTTP basic auth as `user:password` (Confluent's
    /// `basic.auth.user.info`; on Confluent Cloud the API key and secret).
    /// Masked in every log line.
    pub basic_auth_user_info: Option<String>,
    /// A PEM file of the CA that signed the registry's certificate, for
    /// HTTPS with a private CA (the system's roots are trusted as well).
    pub ca_location: Option<PathBuf>,
    /// Register the business event's schema at start (true), or only look
    /// up the subject's latest version and require it to be this schema.
    pub auto_register: bool,
    /// Subject naming for the business event's schema.
    pub subject_name_strategy: SubjectStrategy,
    /// Timeout of one request, in ms.
    pub timeout_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig { url: None, basic_auth_user_info: None, ca_location: None, auto_register: true, subject_name_strategy: SubjectStrategy::TopicName, timeout_ms: 10_000 }
    }
}

impl RegistryConfig {
    /// Remembers the secrets in these settings, so they are masked everywhere.
    pub fn remember_secrets(&self) {
        if let Some((_, password)) = self.basic_auth_user_info.as_deref().and_then(|u| u.split_once(':')) {
            crate::secrets::remember(password);
        }
        for url in self.urls() {
            if let Some(password) = url_password(&url) {
                crate::secrets::remember(&password);
            }
        }
    }

    fn urls(&self) -> Vec<String> {
        self.url.as_deref().unwrap_or("").split(',').map(str::trim).filter(|u| !u.is_empty()).map(|u| u.trim_end_matches('/').to_owned()).collect()
    }

    /// The subject the business event's schema is registered under for `topic`.
    pub fn subject(&self, topic: &str) -> String {
        match self.subject_name_strategy {
            SubjectStrategy::TopicName => format!("{topic}-value"),
            SubjectStrategy::RecordName => "io.resevent.BusinessEvent".into(),
        }
    }
}

/// The password of a `scheme://user:password@host` URL.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split('/').next()?.rsplit_once('@')?.0;
    Some(userinfo.split_once(':')?.1.to_owned())
}

/// Why the registry did not give what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The schema (or subject) is not in the registry: permanent.
    #[error("{0}")]
    NotFound(String),
    /// The registry cannot be reached, timed out or failed (5xx): retry.
    #[error("the schema registry cannot be reached or failed: {0}")]
    Unavailable(String),
    /// The registry refused the request: wrong credentials, or a schema it
    /// finds incompatible or invalid. Retrying the same request cannot help.
    #[error("the schema registry refused the request: {0}")]
    Refused(String),
    /// What the registry returned cannot be used (e.g. not a parseable Avro schema).
    #[error("{0}")]
    Unusable(String),
}

impl RegistryError {
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable(_))
    }

    /// Tells `schema_registry_converter`'s errors apart by what happened,
    /// not by its `retriable` flag, which calls a 500 permanent.
    fn classify(e: &SRCError, doing: &str) -> RegistryError {
        let mut text = format!("{doing}: {}{}", e.error, e.cause.as_deref().map(|c| format!(" ({c})")).unwrap_or_default());
        // The transport's own reasons (a certificate that does not verify, a
        // refused connection) are further down the chain.
        let mut source = std::error::Error::source(e).and_then(std::error::Error::source);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        let has = |s: &str| text.contains(s);
        if has("certificate") || has("handshake") {
            // TLS set up wrong (CA, hostname): the same request fails the same way.
            RegistryError::Refused(format!("{text}; check schema_registry.ca_location and the registry's certificate"))
        } else if has("status 404") {
            RegistryError::NotFound(text)
        } else if has("status 401") || has("status 403") || has("status 409") || has("status 422") {
            RegistryError::Refused(text)
        } else if e.retriable || has("status 5") || has("error sending request") || has("timed out") || has("connect") || has("status 429") {
            RegistryError::Unavailable(text)
        } else if has("status 4") {
            RegistryError::Refused(text)
        } else {
            RegistryError::Unusable(text)
        }
    }
}

/// A connection to the registry, with the schemas it gave cached for the
/// life of the process (a schema id never changes its schema).
pub struct Registry {
    settings: SrSettings,
    /// Caches schemas by id, and shares one request among concurrent asks.
    decoder: AvroDecoder,
    /// The URL(s), for messages.
    shown: String,
}

impl Registry {
    pub fn new(cfg: &RegistryConfig) -> anyhow::Result<Registry> {
        let urls = cfg.urls();
        let Some(first) = urls.first() else { anyhow::bail!("no schema registry URL: give --schema-registry-url URL or schema_registry.url") };
        cfg.remember_secrets();
        let mut builder = SrSettings::new_builder(first.clone());
        for u in &urls[1..] {
            builder.add_url(u.clone());
        }
        if let Some(info) = &cfg.basic_auth_user_info {
            let (user, password) = info.split_once(':').map_or((info.as_str(), None), |(u, p)| (u, Some(p)));
            builder.set_basic_authorization(user, password);
        }
        builder.set_timeout(Duration::from_millis(cfg.timeout_ms.max(1)));
        let mut client = reqwest::Client::builder();
        if let Some(ca) = &cfg.ca_location {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("schema_registry.ca_location {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| anyhow::anyhow!("schema_registry.ca_location {} is not a PEM certificate: {e}", ca.display()))?;
            client = client.add_root_certificate(cert);
        }
        let settings = builder.build_with(client).map_err(|e| anyhow::anyhow!("schema registry client: {e}"))?;
        Ok(Registry { decoder: AvroDecoder::new(settings.clone()), settings, shown: crate::secrets::scrub(&urls.join(",")) })
    }

    /// The registry's URL(s), secrets masked.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// The writer's schema of a framed record.
    pub async fn schema(&self, id: u32) -> Result<Arc<AvroSchema>, RegistryError> {
        match self.decoder.get_schema(id).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let err = RegistryError::classify(&e, &format!("schema id {id} from {}", self.shown));
                if e.cached && err.is_transient() {
                    // The library keeps a failure it thinks permanent (a 500)
                    // in its cache; this one is worth asking again.
                    self.decoder.remove_errors_from_cache();
                }
                Err(match err {
                    RegistryError::NotFound(_) => RegistryError::NotFound(format!("schema id {id} is not in the schema registry at {}", self.shown)),
                    other => other,
                })
            }
        }
    }

    /// The id of `schema` under `subject`: registered (as a new version if
    /// it differs from the latest), or, without auto-registration, found as
    /// the subject's latest version, which must be this very schema.
    pub async fn register(&self, subject: &str, schema: &str, auto_register: bool) -> Result<u32, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
        if auto_register {
            return post_schema(&self.settings, subject.to_owned(), supplied).await.map(|r| r.id).map_err(|e| RegistryError::classify(&e, &format!("registering subject {subject} at {}", self.shown)));
        }
        let strategy = SubjectNameStrategy::RecordNameStrategy(subject.to_owned());
        let latest = get_schema_by_subject(&self.settings, &strategy).await.map_err(|e| match RegistryError::classify(&e, &format!("looking up subject {subject} at {}", self.shown)) {
            RegistryError::NotFound(t) => RegistryError::Refused(format!("{t}; register the schema in schemas/ under {subject}, or turn auto_register on")),
            other => other,
        })?;
        let ours = apache_avro::Schema::parse_str(schema).map_err(|e| RegistryError::Unusable(e.to_string()))?;
        let theirs = apache_avro::Schema::parse_str(&latest.schema).map_err(|e| RegistryError::Unusable(format!("subject {subject}'s latest schema: {e}")))?;
        if ours.canonical_form() != theirs.canonical_form() {
            return Err(RegistryError::Refused(format!(
                "subject {subject}'s latest version (id {}) is not this build's business event schema; register schemas/business-event.avsc under it, or turn auto_register on",
                latest.id
            )));
        }
        Ok(latest.id)
    }
}

/// A Kafka record's key and value with their Avro parts, if any, as JSON.
/// Short-lived (one batch), so the large `Rejected` variant is not boxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Resolved {
    /// Neither key nor value is framed: decode the bytes as they are.
    Plain,
    /// JSON to decode instead of the framed key and/or value (`None`: the original bytes).
    Converted { key: Option<Vec<u8>>, value: Option<Vec<u8>> },
    /// The record can never be decoded (permanent): dead-letter it.
    Rejected(crate::decode::DecodeError),
}

/// Resolves a record's framed key and value through the registry. Only a
/// registry that cannot be reached (or refuses) is an error: the record is
/// then held, never dropped or decoded some other way.
pub async fn resolve(registry: &Registry, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Resolved, RegistryError> {
    let (fk, fv) = (key.and_then(crate::decode::avro::unframe), value.and_then(crate::decode::avro::unframe));
    if fk.is_none() && fv.is_none() {
        return Ok(Resolved::Plain);
    }
    let mut out = (None, None);
    for (which, f) in [(0, fk), (1, fv)] {
        let Some((id, datum)) = f else { continue };
        let schema = match registry.schema(id).await {
            Ok(s) => s,
            Err(e @ (RegistryError::NotFound(_) | RegistryError::Unusable(_))) => {
                return Ok(Resolved::Rejected(crate::decode::DecodeError::SchemaNotFound(e.to_string())));
            }
            Err(e) => return Err(e),
        };
        let value = match crate::decode::avro::read_datum(&schema.parsed, datum) {
            Ok(v) => v,
            Err(reason) => return Ok(Resolved::Rejected(crate::decode::DecodeError::BadAvro { id, reason })),
        };
        if which == 0 {
            let mut json = crate::decode::avro::to_json(&value);
            crate::decode::avro::unwrap_key(&mut json);
            out.0 = Some(serde_json::to_vec(&json).expect("JSON values serialize"));
        } else {
            out.1 = Some(crate::decode::avro::change_stream_json(&value));
        }
    }
    Ok(Resolved::Converted { key: out.0, value: out.1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_and_user_info_are_remembered_as_secrets() {
        assert_eq!(url_password("https://svc:p4ss-word@registry:8081/x").as_deref(), Some("p4ss-word"));
        assert_eq!(url_password("http://registry:8081"), None);
        let cfg = RegistryConfig { url: Some("https://u:url-secret-1@r:1".into()), basic_auth_user_info: Some("key:info-secret-2".into()), ..Default::default() };
        cfg.remember_secrets();
        assert_eq!(crate::secrets::scrub("https://u:url-secret-1@r:1 key:info-secret-2"), "https://u:*****@r:1 key:*****");
    }

    #[test]
    fn subjects_follow_the_strategy() {
        let mut cfg = RegistryConfig::default();
        assert_eq!(cfg.subject("reservation-events"), "reservation-events-value");
        cfg.subject_name_strategy = SubjectStrategy::RecordName;
        assert_eq!(cfg.subject("reservation-events"), "io.resevent.BusinessEvent");
    }

    #[test]
    fn failures_are_told_apart_by_what_happened() {
        let e = |error: &str, retriable| SRCError::new(error, None, retriable);
        assert!(matches!(RegistryError::classify(&e("HTTP request to schema registry failed with status 404 Not Found", false), "x"), RegistryError::NotFound(_)));
        assert!(RegistryError::classify(&e("HTTP request to schema registry failed with status 500 Internal Server Error", false), "x").is_transient());
        assert!(RegistryError::classify(&e("error sending request for url (http://127.0.0.1:1/schemas/ids/1)", false), "x").is_transient());
        assert!(matches!(RegistryError::classify(&e("HTTP request to schema registry failed with status 401 Unauthorized", false), "x"), RegistryError::Refused(_)));
        assert!(matches!(RegistryError::classify(&e("Could not parse schema", false), "x"), RegistryError::Unusable(_)));
    }
}

/// A registry that cannot be reached is retried like a broker; one that
/// refuses the settings stops the instance (see [`crate::fault`]).
impl From<RegistryError> for crate::fault::Fault {
    fn from(e: RegistryError) -> Self {
        use crate::fault::Fault;
        if e.is_transient() { Fault::Registry(e.into()) } else { Fault::Fatal(anyhow::Error::new(e).context("fix the schema registry settings (schema_registry.*) and restart")) }
    }
}
