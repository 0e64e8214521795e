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

pub mod avro;
mod debezium;
pub mod extjson;
mod lean;
mod mongo;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::change::{Change, ChangeId, Delta, DocumentValues, Edit, Field, FieldPaths, InvalidValue, Operation, covers};
use lean::Lv;

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

/// Why a record cannot be processed. Every variant is permanent: the same
/// bytes fail the same way on every retry, so the record belongs in the
/// dead-letter path, never in a retry loop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the value is not UTF-8 text (byte {0} is invalid); connectors write JSON as UTF-8, so check the producer's value.converter")]
    NotUtf8(usize),
    #[error("the value is not valid JSON: {0}")]
    NotJson(String),
    #[error("the value is not a change event: {0}")]
    NotAChange(String),
    #[error("no reservation id: {0}")]
    MissingId(String),
    #[error("the reservation id is unusable: {0}")]
    InvalidId(String),
    #[error("unknown operation {0}; expected insert, update, replace or delete (MongoDB) or c, u, d, r (Debezium)")]
    UnknownOperation(String),
    #[error("malformed change event: {0}")]
    Malformed(String),
    /// A mapped field holds a value of the wrong type (see [`InvalidValue`]).
    #[error("invalid value: {0}")]
    InvalidValue(InvalidValue),
    #[error("this is a {found} record but --format {expected} was given; use --format auto or the matching format")]
    WrongFormat { expected: &'static str, found: &'static str },
    #[error("the record is {size} bytes, over the limit of {limit}; raise max_record_bytes if such records are legitimate")]
    TooLarge { size: usize, limit: usize },
    #[error("the value nests deeper than {limit} levels; raise max_nesting_depth (at most 128) if such records are legitimate")]
    TooDeep { limit: usize },
    #[error(
        "the value is in the Confluent Schema Registry wire format (magic byte 0, schema id {0}), and no schema registry is configured \
         to resolve that schema; point the connector's value.converter at JSON, or configure a registry"
    )]
    UnknownSchema(u32),
    /// The registry has no schema of this id (it answered 404), or what it
    /// has cannot be used.
    #[error("{0}")]
    SchemaNotFound(String),
    /// The bytes after the wire-format header are not a datum of the schema they name.
    #[error("the value is framed for schema id {id} but is not a datum of that schema: {reason}")]
    BadAvro { id: u32, reason: String },
}

impl DecodeError {
    /// A short, stable name for logs, counters and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotUtf8(_) => "not-utf8",
            DecodeError::NotJson(_) => "not-json",
            DecodeError::NotAChange(_) => "not-a-change",
            DecodeError::MissingId(_) => "missing-id",
            DecodeError::InvalidId(_) => "invalid-id",
            DecodeError::UnknownOperation(_) => "unknown-operation",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::InvalidValue(_) => "invalid-value",
            DecodeError::WrongFormat { .. } => "wrong-format",
            DecodeError::TooLarge { .. } => "too-large",
            DecodeError::TooDeep { .. } => "too-deep",
            DecodeError::UnknownSchema(_) | DecodeError::SchemaNotFound(_) => "unknown-schema",
            DecodeError::BadAvro { .. } => "bad-avro",
        }
    }

    /// Decode errors never go away by retrying the same bytes.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError::NotJson(e.to_string())
}

/// What a record decodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Change(Change),
    /// A record that is valid but carries no reservation change (a tombstone,
    /// a collection-level event such as `drop`); the reason says which.
    Ignored(&'static str),
}

/// Bounds on what one record may cost. A record beyond them is rejected
/// (dead-lettered by the service) with that reason, before it is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Key plus value, in bytes.
    pub max_record_bytes: usize,
    /// Objects and arrays inside each other, counting the outermost as 1.
    pub max_nesting_depth: usize,
}

/// serde_json refuses deeper values anyway (its recursion limit).
pub const MAX_NESTING_DEPTH: usize = 128;

impl Default for Limits {
    /// 1 MiB: a reservation change event is a few KB; MongoDB's own document
    /// limit is 16 MiB, so raise it if full documents carry large blobs.
    /// 64 levels: far beyond any reservation document, far below a stack risk.
    fn default() -> Self {
        Limits { max_record_bytes: 1 << 20, max_nesting_depth: 64 }
    }
}

/// Whether `text`, as JSON, nests objects and arrays deeper than `limit`.
fn nests_deeper_than(text: &str, limit: usize) -> bool {
    let bytes = text.as_bytes();
    // Nesting deeper than `limit` needs more than `limit` opening brackets.
    // Counting them (strings included: an overcount only costs the exact
    // scan) vectorizes; a typical event has a dozen, so the exact scan,
    // a branch per byte, runs only for the rare record with many.
    let openers = bytes.iter().fold(0usize, |n, &b| n + usize::from((b == b'{') | (b == b'[')));
    if openers <= limit {
        return false;
    }
    // One pass, strings skipped; stops at the first excess.
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
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

    /// Decodes a value given as text; `unwrapped` counts the string or
    /// JsonConverter layers already peeled off, so a value cannot nest forever.
    fn decode_text(&self, key: Option<&str>, text: &str, unwrapped: u8, defer: bool) -> Result<Decoded, DecodeError> {
        let trimmed = text.trim_start();
        if nests_deeper_than(trimmed, self.limits.max_nesting_depth) {
            return Err(DecodeError::TooDeep { limit: self.limits.max_nesting_depth });
        }
        match trimmed.as_bytes().first() {
            None => return Err(DecodeError::NotJson("the value is empty".into())),
            Some(b'{') => {}
            Some(b'"') if unwrapped < 2 => {
                // StringConverter, or JsonConverter without schemas: a JSON string holding the JSON.
                let inner: String = serde_json::from_str(trimmed).map_err(json_error)?;
                return self.decode_text(key, &inner, unwrapped + 1, defer);
            }
            Some(b'n') if trimmed.trim_end() == "null" => return self.tombstone(key.map(str::as_bytes)),
            Some(_) => {
                let v: Value = serde_json::from_str(trimmed).map_err(json_error)?;
                return Err(DecodeError::NotAChange(format!("the value is a JSON {}, not a document", kind_of(&v))));
            }
        }
        match self.decode_object(key, trimmed, unwrapped, defer) {
            Err(e) if unwrapped < 3 => match stringly_change_stream(trimmed) {
                Some(Ok(fixed)) => self.decode_text(key, &fixed, 3, defer),
                Some(Err(split)) => Err(split),
                None => Err(e),
            },
            other => other,
        }
    }

    /// [`Decoder::decode_text`] for text that starts as a JSON object.
    fn decode_object(&self, key: Option<&str>, trimmed: &str, unwrapped: u8, defer: bool) -> Result<Decoded, DecodeError> {
        let mut de = serde_json::Deserializer::from_str(trimmed);
        let top = TopSeed(&self.paths, defer).deserialize(&mut de).map_err(json_error)?;
        de.end().map_err(json_error)?;

        if let Some(payload) = top.payload.filter(|_| top.schema) {
            // JsonConverter with schemas.enable=true: {"schema": …, "payload": …}.
            if unwrapped >= 2 {
                return Err(DecodeError::NotAChange("JsonConverter envelopes nested too deep".into()));
            }
            return self.decode_text(key, payload.get(), unwrapped + 1, defer);
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

/// The tracked entries of one document (or of `updatedFields`): the keys that
/// are tracked paths or ancestors of one, with their values, borrowed from the
/// text they were read from.
#[derive(Debug, Default)]
struct Captured<'de>(Vec<(Cow<'de, str>, Lv<'de>)>);

impl<'de> Captured<'de> {
    /// The value at `path`, looking through an ancestor's value when the key
    /// is an ancestor (`updatedFields: {"stay": {...}}` sets `stay.room`).
    /// `Some(None)` means an ancestor was set without the path in it.
    fn lookup(&self, path: &str) -> Option<Option<&Lv<'de>>> {
        let mut found = None;
        for (k, v) in &self.0 {
            if k == path {
                found = Some(Some(v));
            } else if covers(k, path) {
                let rest = &path[k.len() + 1..];
                found = Some(match v {
                    Lv::Object(_) => lean::at_path(v, rest),
                    _ => None,
                });
            }
        }
        found
    }

    /// The document's id (at the id path), if it has one.
    fn id(&self, paths: &FieldPaths) -> Option<Result<String, DecodeError>> {
        let v = self.lookup(&paths.id)??;
        Some(lean::id_text(v).map_err(|e| DecodeError::InvalidId(e.0)))
    }

    /// The document's tracked values, each of its type (see [`field_text`]);
    /// `place` names the part of the record it is, for the error. The status
    /// is taken as text whatever it is: an unmapped status is the pipeline's
    /// business (logged and counted), not bad input.
    fn values(&self, paths: &FieldPaths, place: &'static str) -> Result<DocumentValues, InvalidValue> {
        let status = self.lookup(&paths.status).flatten().and_then(lean::scalar_text);
        let mut fields: [Option<String>; 4] = Default::default();
        for f in Field::ALL {
            let path = &paths.fields[f as usize];
            fields[f as usize] = match self.lookup(path).flatten() {
                Some(v) => field_text(f, v, path, place)?,
                None => None,
            };
        }
        Ok(DocumentValues { status, fields })
    }

    /// Detaches the entries from the text they were read from.
    fn into_owned(self) -> Captured<'static> {
        Captured(self.0.into_iter().map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned())).collect())
    }

    /// The tracked entries of a document already parsed into a `Value`.
    fn from_map(m: &Map<String, Value>, paths: &FieldPaths) -> Captured<'static> {
        Captured(m.iter().filter(|(k, _)| paths.relevant(k)).map(|(k, v)| (Cow::Owned(k.clone()), Lv::from_value(v))).collect())
    }
}

/// The transaction a change belongs to, as text for its identity: `lsid`
/// and `txnNumber` when both are there and not null.
fn transaction(lsid: Option<&Lv>, txn_number: Option<&Lv>) -> Option<(String, String)> {
    match (lsid?, txn_number?) {
        (Lv::Null, _) | (_, Lv::Null) => None,
        (l, t) => Some((l.to_string(), t.to_string())),
    }
}

/// The identity of a change without a resume token (see [`ChangeId`]).
fn operation_identity(operation: &Operation, txn: Option<&(String, String)>) -> ChangeId {
    ChangeId::of_operation(operation, txn.map(|(l, t)| (l.as_str(), t.as_str())))
}

/// A tracked field's value as the text resevent keeps: a date as RFC 3339
/// UTC, a room or property as text (a number in decimal). `Ok(None)` for a
/// JSON null. Any other value is an [`InvalidValue`] naming the field, its
/// path and `place`: it would otherwise reach a business event as JSON text
/// where a date or a room is promised.
fn field_text(field: Field, v: &Lv, path: &str, place: &'static str) -> Result<Option<String>, InvalidValue> {
    if let Lv::Null = v {
        return Ok(None);
    }
    let (text, expected) = match field {
        Field::Arrival | Field::Departure => (lean::strict_date_millis(v).map(crate::time::format_millis), lean::DATE_EXPECTED),
        Field::Room => (lean::strict_text(v, false), lean::ROOM_EXPECTED),
        Field::Property => (lean::strict_text(v, true), lean::PROPERTY_EXPECTED),
    };
    match text {
        Some(t) => Ok(Some(t)),
        None => Err(InvalidValue { field, path: path.to_owned(), place, value: InvalidValue::shorten(&v.to_string()), expected }),
    }
}

/// Builds a delta from `updatedFields` entries and `removedFields` paths. A
/// tracked field that `updatedFields` sets to a value of the wrong type
/// rejects the whole change (the delta cannot be applied without either
/// storing the bad value or silently dropping the edit).
fn delta(updated: &Captured, removed: &[String], paths: &FieldPaths) -> Result<Delta, DecodeError> {
    let mut delta = Delta::default();
    if removed.iter().any(|r| covers(r, &paths.status)) {
        delta.status = Edit::Remove;
    } else if let Some(v) = updated.lookup(&paths.status) {
        delta.status = v.and_then(lean::scalar_text).map_or(Edit::Remove, Edit::Set);
    }
    for f in Field::ALL {
        let path = &paths.fields[f as usize];
        if removed.iter().any(|r| covers(r, path)) {
            delta.fields[f as usize] = Edit::Remove;
        } else if let Some(v) = updated.lookup(path) {
            let text = match v {
                Some(v) => field_text(f, v, path, "updatedFields").map_err(DecodeError::InvalidValue)?,
                None => None,
            };
            delta.fields[f as usize] = text.map_or(Edit::Remove, Edit::Set);
        }
    }
    Ok(delta)
}

/// Parses a document given as text (Debezium's `after`) or as a JSON value
/// that holds such text, keeping only the tracked entries.
fn document_from_text<'a>(text: &'a str, paths: &FieldPaths, what: &str) -> Result<Option<Captured<'a>>, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let doc = CaptureSeed(paths).deserialize(&mut de).map_err(|e| DecodeError::Malformed(format!("{what} is not a JSON document: {e}")))?;
    de.end().map_err(|e| DecodeError::Malformed(format!("{what} has trailing data: {e}")))?;
    Ok(doc)
}

/// A document that may arrive as an object or as a string holding one
/// (Debezium writes `after`, `before`, `patch` and `updatedFields` as strings).
fn document_from_raw<'a>(raw: &'a RawValue, paths: &FieldPaths, what: &str) -> Result<Option<Captured<'a>>, DecodeError> {
    let text = raw.get();
    if text.starts_with('"') {
        let inner: String = serde_json::from_str(text).map_err(json_error)?;
        // The entries borrow from `inner`, which ends here.
        Ok(document_from_text(&inner, paths, what)?.map(Captured::into_owned))
    } else {
        document_from_text(text, paths, what)
    }
}

/// The top-level keys of a record value that decide its format, and the
/// tracked document entries found at top level (full-document-only and
/// flattened values are the document itself). Everything borrows from the
/// record's text: raw parts are slices of it, values `Lv`s over it.
#[derive(Default)]
struct Top<'de> {
    id: Option<Lv<'de>>,
    operation_type: Option<Lv<'de>>,
    /// `Some(None)` when present and null.
    full_document: Option<Option<Captured<'de>>>,
    /// An update's looked-up `fullDocument`, skipped over unread (see
    /// [`Decoder::decode_deferring_lookups`]).
    full_document_raw: Option<&'de RawValue>,
    document_key: Option<Lv<'de>>,
    update_description: Option<&'de RawValue>,
    cluster_time: Option<Lv<'de>>,
    wall_time: Option<Lv<'de>>,
    /// The transaction of a change made in one (`lsid`, `txnNumber`).
    lsid: Option<Lv<'de>>,
    txn_number: Option<Lv<'de>>,
    op: Option<Lv<'de>>,
    after: Option<&'de RawValue>,
    before: Option<&'de RawValue>,
    source: Option<Lv<'de>>,
    patch: Option<&'de RawValue>,
    filter: Option<&'de RawValue>,
    schema: bool,
    payload: Option<&'de RawValue>,
    /// ExtractNewDocumentState's added fields (`__op`, `__deleted`, `__source_*`).
    flat: Map<String, Value>,
    document: Captured<'de>,
}

/// A map key, borrowed when the input allows it (no escapes), so skipped keys
/// cost no allocation.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The fields ExtractNewDocumentState adds with `add.fields` and
/// `delete.handling.mode=rewrite` (`__deleted`).
const FLAT_KEYS: [&str; 8] = ["__op", "__deleted", "__source_ts_ms", "__source_ord", "__source_snapshot", "__ts_ms", "__source_lsid", "__source_txnNumber"];

/// The field paths, and whether an update's looked-up `fullDocument` may be
/// skipped (left as raw text) when `operationType` is known to be `update`
/// before it (the connector writes `operationType` first).
struct TopSeed<'p>(&'p FieldPaths, bool);

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = Top<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Top<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a change event document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut top = Top::default();
        while let Some(Key(owned_key)) = map.next_key::<Key>()? {
            let key = owned_key.as_ref();
            match key {
                "fullDocument" if self.1 && matches!(&top.operation_type, Some(Lv::Str(op)) if op == "update") => top.full_document_raw = Some(map.next_value()?),
                "fullDocument" => top.full_document = Some(map.next_value_seed(CaptureSeed(self.0))?),
                "updateDescription" => top.update_description = Some(map.next_value()?),
                "after" => top.after = Some(map.next_value()?),
                "before" => top.before = Some(map.next_value()?),
                "patch" => top.patch = Some(map.next_value()?),
                "filter" => top.filter = Some(map.next_value()?),
                "payload" => top.payload = Some(map.next_value()?),
                "schema" => {
                    map.next_value::<IgnoredAny>()?;
                    top.schema = true;
                }
                _ => {
                    let slot = match key {
                        "_id" => Some(&mut top.id),
                        "operationType" => Some(&mut top.operation_type),
                        "documentKey" => Some(&mut top.document_key),
                        "clusterTime" => Some(&mut top.cluster_time),
                        "wallTime" => Some(&mut top.wall_time),
                        "lsid" => Some(&mut top.lsid),
                        "txnNumber" => Some(&mut top.txn_number),
                        "op" => Some(&mut top.op),
                        "source" => Some(&mut top.source),
                        _ => None,
                    };
                    let tracked = self.0.relevant(key);
                    let flat = FLAT_KEYS.contains(&key);
                    if slot.is_none() && !tracked && !flat {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let v: Lv<'de> = map.next_value()?;
                    if flat {
                        top.flat.insert(key.to_owned(), v.to_value());
                    }
                    match slot {
                        Some(slot) => {
                            if tracked {
                                top.document.0.push((owned_key.clone(), v.clone()));
                            }
                            *slot = Some(v);
                        }
                        None if tracked => top.document.0.push((owned_key, v)),
                        None => {}
                    }
                }
            }
        }
        Ok(top)
    }
}

/// Reads a document keeping only tracked entries; `None` for a JSON null.
struct CaptureSeed<'p>(&'p FieldPaths);

impl<'de> DeserializeSeed<'de> for CaptureSeed<'_> {
    type Value = Option<Captured<'de>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CaptureSeed<'_> {
    type Value = Option<Captured<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a document or null")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Room for the six default paths up front: growing 0 → 4 → 8 was two
        // allocations per document.
        let mut out = Captured(Vec::with_capacity(8));
        while let Some(Key(key)) = map.next_key::<Key>()? {
            if self.0.relevant(&key) {
                out.0.push((key, map.next_value()?));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests;
