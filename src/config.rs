//! What every command's configuration shares: how a config file (TOML) and
//! the `RESEVENT_*` environment lie over built-in defaults, the Kafka client
//! settings each configuration carries ([`KafkaSettings`]), and how secrets
//! among them are remembered for the log scrubber and masked for display.
//!
//! Vocabulary: no Kafka client is built here (that is [`crate::kafka`]); the
//! only I/O is reading the config file.

use std::collections::BTreeMap;
use std::path::Path;

/// Where every command looks for a broker when it is told nothing else.
pub const DEFAULT_BOOTSTRAP_SERVERS: &str = "127.0.0.1:9092";

/// The Kafka side of a command's configuration, borrowed from it: what
/// [`crate::kafka`] builds every client from (bootstrap servers, then the
/// user's librdkafka settings for every client, consumers and producers).
#[derive(Clone, Copy, Debug)]
pub struct KafkaSettings<'a> {
    pub bootstrap_servers: &'a str,
    /// librdkafka settings for every client (`security.protocol`, `sasl.password`…).
    pub kafka: &'a BTreeMap<String, String>,
    /// librdkafka settings for consumers only.
    pub consumer: &'a BTreeMap<String, String>,
    /// librdkafka settings for producers only.
    pub producer: &'a BTreeMap<String, String>,
}

impl KafkaSettings<'_> {
    /// Gives every secret among the settings (by name: `sasl.password`,
    /// `ssl.key.password`…) to the log scrubber.
    pub fn remember_secrets(&self) {
        for (k, v) in self.kafka.iter().chain(self.consumer.iter()).chain(self.producer.iter()) {
            if crate::secrets::is_secret(k) {
                crate::secrets::remember(v);
            }
        }
    }
}

/// Replaces the value of every secret setting in `maps` with `*****`, for a
/// configuration shown in the log.
pub fn mask_secrets<'m>(maps: impl IntoIterator<Item = &'m mut BTreeMap<String, String>>) {
    for map in maps {
        for (k, v) in map.iter_mut() {
            if crate::secrets::is_secret(k) {
                *v = "*****".into();
            }
        }
    }
}

/// A configuration read from `run`'s config file and environment by a tool
/// that needs only part of it (`dlq`, `tail`): `T`'s defaults with the file
/// and the `RESEVENT_*` environment laid over them. `T` must not deny
/// unknown fields: the settings it lacks belong to `run` and are ignored.
/// `kind_without_default` as for [`layered`].
pub fn load_part<T>(file: Option<&Path>, env: impl Iterator<Item = (String, String)>, kind_without_default: impl Fn(&str) -> Option<toml::Value>, schema_registry: bool) -> anyhow::Result<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Default,
{
    let table = layered(toml::Table::try_from(T::default())?, file, env, kind_without_default, schema_registry)?;
    table.try_into().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

/// The settings table of a config: `defaults` with the config file (TOML)
/// and then the `RESEVENT_*` environment laid over it. `RESEVENT_KAFKA__`,
/// `CONSUMER__` and `PRODUCER__` fill those librdkafka maps (underscores
/// become dots); with `schema_registry`, `RESEVENT_SCHEMA_REGISTRY__<KEY>`
/// fills `[schema_registry]`. Any other `RESEVENT_<KEY>` sets `<key>` when
/// the defaults have it, or `kind_without_default` gives its kind (settings
/// without a default are absent from `defaults`); the rest (RESEVENT_LOG, a
/// setting of another command) is left alone. Shared by every command.
pub fn layered(
    mut table: toml::Table,
    file: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
    kind_without_default: impl Fn(&str) -> Option<toml::Value>,
    schema_registry: bool,
) -> anyhow::Result<toml::Table> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let from_file: toml::Table = toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {} is not valid TOML: {e}", path.display()))?;
        merge(&mut table, from_file);
    }
    let mut from_env = toml::Table::new();
    for (k, v) in env {
        let Some(name) = k.strip_prefix("RESEVENT_") else { continue };
        if let Some((section, setting)) = name.split_once("__").filter(|(s, _)| matches!(*s, "KAFKA" | "CONSUMER" | "PRODUCER")) {
            // RESEVENT_CONSUMER__SESSION_TIMEOUT_MS=6000 → consumer."session.timeout.ms"
            let key = setting.to_ascii_lowercase().replace('_', ".");
            let table = from_env.entry(section.to_ascii_lowercase()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table.as_table_mut().expect("a table").insert(key, toml::Value::String(v));
            continue;
        }
        if let Some(setting) = name.strip_prefix("SCHEMA_REGISTRY__").filter(|_| schema_registry) {
            // RESEVENT_SCHEMA_REGISTRY__BASIC_AUTH_USER_INFO=u:p → schema_registry.basic_auth_user_info
            let key = setting.to_ascii_lowercase();
            let value = match key.as_str() {
                "auto_register" => toml::Value::Boolean(v.parse().map_err(|_| anyhow::anyhow!("{k}={v:?} is not true or false"))?),
                "timeout_ms" => toml::Value::Integer(v.parse().map_err(|_| anyhow::anyhow!("{k}={v:?} is not a whole number"))?),
                _ => toml::Value::String(v),
            };
            let table = from_env.entry("schema_registry").or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table.as_table_mut().expect("a table").insert(key, value);
            continue;
        }
        let key = name.to_ascii_lowercase();
        let Some(kind) = table.get(&key).cloned().or_else(|| kind_without_default(&key)) else {
            continue; // RESEVENT_LOG and friends belong to other parts
        };
        let value = match kind {
            toml::Value::Array(_) => toml::Value::Array(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| toml::Value::String(s.into())).collect()),
            toml::Value::Integer(_) => toml::Value::Integer(v.parse().map_err(|_| anyhow::anyhow!("{k}={v:?} is not a whole number"))?),
            toml::Value::Boolean(_) => toml::Value::Boolean(v.parse().map_err(|_| anyhow::anyhow!("{k}={v:?} is not true or false"))?),
            _ => toml::Value::String(v),
        };
        from_env.insert(key, value);
    }
    merge(&mut table, from_env);
    Ok(table)
}

/// Overlays `over` on `base`, merging nested tables (the `kafka` map).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}
