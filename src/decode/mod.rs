//! Decoders: one Kafka record (key and value bytes) in, one normalized
//! [`Change`] (or a typed, permanent [`DecodeError`]) out.
//!
//! Pure: no I/O, no clock, no state. Every form the MongoDB Kafka source
//! connector and Debezium's MongoDB connector write is recognized here:
//! plain JSON, a JSON string holding the JSON, the JsonConverter envelope, all
//! three Extended JSON dialects, full-document-only values and
//! ExtractNewDocumentState-flattened values.
//!
//! Speed matters (every input record passes here), so the value is read in one
//! pass with a visitor that keeps only what resevent tracks: the envelope keys
//! and the mapped document fields. A 1 KB `fullDocument` with a guest profile
//! is skipped over, never built into a tree. What is kept borrows from the
//! record's text (see `lean`), so a typical record allocates little more than
//! the strings of its [`Change`].
//!
//! This file: the formats and the dispatch ([`Decoder`]), and the unwrapping
//! of a value that is a string or a JsonConverter envelope; `envelope` (the
//! one-pass read of the top level), `tracked` (a document's tracked entries
//! and their values in the change's types), `error`,
//! `mongo` and `debezium` (each connector's envelope), `extjson`, `avro`.

pub mod avro;
mod debezium;
pub mod extjson;
mod envelope;
mod error;
mod lean;
mod mongo;
mod tracked;

use serde::de::DeserializeSeed;
use serde_json::Value;

use crate::change::{Change, ChangeId, FieldPaths, Operation};
use envelope::{Envelope, EnvelopeSeed};
pub use error::{DecodeError, Limits, MAX_NESTING_DEPTH};
use error::{json_error, nests_deeper_than};
use tracked::{Tracked, delta, document_from_raw, document_from_text, operation_identity, transaction};

/// Which connector wrote the records. `Auto` tells them apart per record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Recognize each record's format from its shape.
    Auto,
    /// MongoDB Kafka source connector (change-stream documents, or full documents only).
    Mongo,
    /// Debezium MongoDB connector (envelope, or ExtractNewDocumentState-flattened).
    Debezium,
}

/// What a record decodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Change(Change),
    /// A record that is valid but carries no reservation change (a tombstone,
    /// a collection-level event such as `drop`); the reason says which.
    Ignored(&'static str),
}

/// Turns record bytes into changes, for one format and one field mapping.
#[derive(Clone, Debug)]
pub struct Decoder {
    format: Format,
    paths: FieldPaths,
    limits: Limits,
}

impl Decoder {
    pub fn new(format: Format, paths: FieldPaths) -> Self {
        Decoder { format, paths, limits: Limits::default() }
    }

    /// The same decoder with other limits (`max_nesting_depth` is capped at
    /// [`MAX_NESTING_DEPTH`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Limits { max_nesting_depth: limits.max_nesting_depth.min(MAX_NESTING_DEPTH), ..limits };
        self
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Decodes one record. `key` is the record key (Debezium puts a deleted
    /// document's id only there); `value` is `None` for a tombstone.
    pub fn decode(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Decoded, DecodeError> {
        self.decode_with(key, value, false)
    }

    /// As [`Decoder::decode`], but an update's looked-up document (the
    /// MongoDB connector's `fullDocument` with updateLookup) is skipped, not
    /// read: delta first means it matters only for a reservation seen for the
    /// first time, and reading ~1 KB of guest profile per update is most of a
    /// record's cost. Such a change says so (`lookup_deferred`); the caller
    /// decodes the record again with [`Decoder::decode`] when it finds the
    /// reservation unknown.
    pub fn decode_deferring_lookups(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Decoded, DecodeError> {
        self.decode_with(key, value, true)
    }

    fn decode_with(&self, key: Option<&[u8]>, value: Option<&[u8]>, defer: bool) -> Result<Decoded, DecodeError> {
        let Some(value) = value else { return self.tombstone(key) };
        let size = value.len() + key.map_or(0, <[u8]>::len);
        if size > self.limits.max_record_bytes {
            return Err(DecodeError::TooLarge { size, limit: self.limits.max_record_bytes });
        }
        if let [0, a, b, c, d, ..] = value {
            // JSON never starts with a NUL byte; the Confluent wire format does.
            return Err(DecodeError::UnknownSchema(u32::from_be_bytes([*a, *b, *c, *d])));
        }
        let text = std::str::from_utf8(value).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))?;
        let key = match key {
            Some(k) => Some(std::str::from_utf8(k).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))?),
            None => None,
        };
        let mut decoded = self.decode_text(key, text, 0, defer)?;
        if let Decoded::Change(c) = &mut decoded {
            // When it happened is metadata (wallTime, ts_ms), not a mapped
            // field: one that RFC 3339 cannot write is left out, as if absent,
            // rather than rejecting the change or putting it in an event.
            c.occurred_at_ms = c.occurred_at_ms.filter(|ms| crate::time::writable(*ms));
        }
        Ok(decoded)
    }

    /// A record with a null value, judged by its key:
    /// - `{"_id": …}`: the MongoDB source connector with
    ///   `publish.full.document.only.tombstone.on.delete=true` publishes a
    ///   delete this way, keyed by the document key
    ///   (`change.stream.document.key.as.key=true`, its default): that
    ///   tombstone is the delete. Keyed by a resume token (`{"_id": {"_data":
    ///   …}}`, as `output.format.key=schema` or a key that is not the document
    ///   key gives), it names no reservation and is ignored.
    /// - `{"id": "<Extended JSON>"}`: Debezium's tombstone after its delete
    ///   event (the envelope form). It means nothing more.
    /// - `{"id": <plain value>}` (hex text, a string that is not JSON, a
    ///   number): Debezium's key after `ExtractNewDocumentState`, which
    ///   rewrites the key to the plain id. With its default
    ///   `delete.tombstone.handling.mode=tombstone` (Debezium 2.5+; 1.x
    ///   `drop.tombstones=false` with `delete.handling.mode=none`) that
    ///   tombstone is all that is left of the delete, so it is the delete. A
    ///   string id that is itself valid JSON (`"42"`) cannot be told from the
    ///   envelope form and is taken as it.
    ///
    /// With `--format debezium` a `{"_id"}` key is not expected and is ignored;
    /// with `--format mongo` an `{"id"}` key is. A tombstone carries no source
    /// position; the caller orders it by its input position, as it does the
    /// full-document-only and flattened values around it.
    fn tombstone(&self, key: Option<&[u8]>) -> Result<Decoded, DecodeError> {
        const DEBEZIUM: &str = "tombstone after a delete (null value; Debezium's, keyed {\"id\": …})";
        let Some(key) = key.filter(|k| !k.is_empty()) else { return Ok(Decoded::Ignored("tombstone (null value) without a record key")) };
        let text = std::str::from_utf8(key).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))?;
        let Some(document_key) = document_key(text) else {
            return Ok(Decoded::Ignored("tombstone (null value) whose key is not a document key {\"_id\": …}"));
        };
        let Value::Object(m) = &document_key else { unreachable!("document_key returns objects") };
        let id = match (m.get("_id"), m.get("id")) {
            (Some(_), _) if self.format == Format::Debezium => return Ok(Decoded::Ignored(DEBEZIUM)),
            (Some(id), _) if is_resume_token(id) => {
                return Ok(Decoded::Ignored("tombstone (null value) keyed by a change's resume token, not by the document key: it names no reservation"));
            }
            (Some(id), _) => id,
            (None, Some(_)) if self.format == Format::Mongo => return Ok(Decoded::Ignored(DEBEZIUM)),
            (None, Some(Value::String(s))) if serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok() => return Ok(Decoded::Ignored(DEBEZIUM)),
            (None, Some(id)) => id,
            (None, None) => return Ok(Decoded::Ignored("tombstone (null value) whose key holds no _id")),
        };
        let reservation_id = extjson::id_text(id).map_err(|e| DecodeError::InvalidId(format!("tombstone key: {}", e.0)))?;
        Ok(Decoded::Change(Change {
            reservation_id,
            operation: Operation::Delete,
            position: None,
            occurred_at_ms: None,
            snapshot: false,
            identity: ChangeId::of_operation(&Operation::Delete, None),
            lookup_deferred: false,
        }))
    }

    /// Decodes a value given as text; `layers_peeled` counts the string or
    /// JsonConverter layers already peeled off, so a value cannot nest forever.
    fn decode_text(&self, key: Option<&str>, text: &str, layers_peeled: u8, defer: bool) -> Result<Decoded, DecodeError> {
        let trimmed = text.trim_start();
        if nests_deeper_than(trimmed, self.limits.max_nesting_depth) {
            return Err(DecodeError::TooDeep { limit: self.limits.max_nesting_depth });
        }
        match trimmed.as_bytes().first() {
            None => return Err(DecodeError::NotJson("the value is empty".into())),
            Some(b'{') => {}
            Some(b'"') if layers_peeled < 2 => {
                // StringConverter, or JsonConverter without schemas: a JSON string holding the JSON.
                let inner: String = serde_json::from_str(trimmed).map_err(json_error)?;
                return self.decode_text(key, &inner, layers_peeled + 1, defer);
            }
            Some(b'n') if trimmed.trim_end() == "null" => return self.tombstone(key.map(str::as_bytes)),
            Some(_) => {
                let v: Value = serde_json::from_str(trimmed).map_err(json_error)?;
                return Err(DecodeError::NotAChange(format!("the value is a JSON {}, not a document", kind_of(&v))));
            }
        }
        match self.decode_object(key, trimmed, layers_peeled, defer) {
            Err(e) if layers_peeled < 3 => match stringly_change_stream(trimmed) {
                Some(Ok(fixed)) => self.decode_text(key, &fixed, 3, defer),
                Some(Err(split)) => Err(split),
                None => Err(e),
            },
            other => other,
        }
    }

    /// [`Decoder::decode_text`] for text that starts as a JSON object.
    fn decode_object(&self, key: Option<&str>, trimmed: &str, layers_peeled: u8, defer: bool) -> Result<Decoded, DecodeError> {
        let mut de = serde_json::Deserializer::from_str(trimmed);
        let top = EnvelopeSeed { paths: &self.paths, defer_lookup: defer }.deserialize(&mut de).map_err(json_error)?;
        de.end().map_err(json_error)?;

        if let Some(payload) = top.payload.filter(|_| top.schema) {
            // JsonConverter with schemas.enable=true: {"schema": …, "payload": …}.
            if layers_peeled >= 2 {
                return Err(DecodeError::NotAChange("JsonConverter envelopes nested too deep".into()));
            }
            return self.decode_text(key, payload.get(), layers_peeled + 1, defer);
        }
        if top.operation_type.is_some() {
            if self.format == Format::Debezium {
                return Err(DecodeError::WrongFormat { expected: "debezium", found: "MongoDB source connector change" });
            }
            return mongo::decode(top, &self.paths);
        }
        if top.op.is_some() {
            if self.format == Format::Mongo {
                return Err(DecodeError::WrongFormat { expected: "mongo", found: "Debezium envelope" });
            }
            return debezium::decode(top, key, &self.paths);
        }
        if top.document_key.is_some() || top.full_document.is_some() || top.full_document_raw.is_some() || top.update_description.is_some() || top.cluster_time.is_some() {
            return Err(DecodeError::Malformed("a change-stream event (documentKey, fullDocument, clusterTime…) without operationType".into()));
        }
        if top.after.is_some() || top.patch.is_some() {
            return Err(DecodeError::Malformed("a Debezium envelope (after or patch) without op".into()));
        }
        debezium::decode_document(top, key, &self.paths, self.format)
    }
}

/// The MongoDB connector with `output.format.value=schema` (its default
/// `ChangeStream` schema) writes `_id`, `fullDocument`,
/// `fullDocumentBeforeChange`, `documentKey`, `clusterTime` and
/// `updateDescription.updatedFields` as Extended JSON strings and `wallTime`
/// as epoch ms; through the JsonConverter that reaches Kafka as JSON. Read only
/// after the usual reading failed, so it costs nothing on the common path:
/// `Some(Ok(text))` is the record as the connector writes it without a
/// schema, `None` when `text` is no such record. A fragment of a change split
/// by `$changeStreamSplitLargeEvent` is `Some(Err(..))`: resevent does not
/// join fragments, and says so instead of a puzzling "malformed".
fn stringly_change_stream(text: &str) -> Option<Result<String, DecodeError>> {
    let Ok(Value::Object(mut doc)) = serde_json::from_str::<Value>(text) else { return None };
    if !doc.contains_key("operationType") {
        return None;
    }
    if let Some(split) = doc.get("splitEvent") {
        return Some(Err(DecodeError::NotAChange(format!(
            "a fragment ({split}) of a change split by $changeStreamSplitLargeEvent; resevent does not join fragments: \
             keep reservation changes under 16 MB, or project fields away in the connector's pipeline instead of splitting"
        ))));
    }
    let mut changed = false;
    let mut unwrap = |m: &mut serde_json::Map<String, Value>, name: &str| {
        if let Some(Value::String(s)) = m.get(name) {
            if let Ok(parsed @ (Value::Object(_) | Value::Array(_))) = serde_json::from_str::<Value>(s) {
                m.insert(name.into(), parsed);
                changed = true;
            }
        }
    };
    for name in ["_id", "fullDocument", "fullDocumentBeforeChange", "documentKey", "clusterTime"] {
        unwrap(&mut doc, name);
    }
    if let Some(Value::Object(update)) = doc.get_mut("updateDescription") {
        unwrap(update, "updatedFields");
    }
    if !changed {
        return None;
    }
    if let Some(Value::Number(ms)) = doc.get("wallTime") {
        let date = serde_json::json!({ "$date": ms });
        doc.insert("wallTime".into(), date);
    }
    Some(Ok(Value::Object(doc).to_string()))
}

/// A resume token `{"_data": …}`, or a string holding one (the connector's
/// key schema keeps `_id` as Extended JSON text).
fn is_resume_token(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("_data"),
        Value::String(s) => s.trim_start().starts_with('{') && serde_json::from_str::<Value>(s).is_ok_and(|t| t.get("_data").is_some()),
        _ => false,
    }
}

/// A record key as the document it holds, through every form a key arrives
/// in: a JSON object, a JSON string holding one (StringConverter, or
/// JsonConverter without schemas), or a JsonConverter envelope whose payload
/// is either. `None` when the key is no JSON object.
fn document_key(text: &str) -> Option<Value> {
    let mut v: Value = serde_json::from_str(text).ok()?;
    for _ in 0..3 {
        v = match v {
            Value::String(s) => serde_json::from_str(&s).ok()?,
            Value::Object(mut m) if m.contains_key("schema") && m.contains_key("payload") => m.remove("payload").expect("checked"),
            other => return matches!(other, Value::Object(_)).then_some(other),
        };
    }
    None
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests;
