//! The MongoDB Kafka source connector's change-stream documents.
//!
//! `operationType` insert / replace / update / delete, `documentKey`,
//! `fullDocument` (present on updates only with `updateLookup`, and then
//! possibly later than the change), `updateDescription`, `clusterTime`,
//! `wallTime`, and copy-existing records (`_id: {"_id": …, "copyingData": true}`).

use serde_json::Value;
use serde_json::value::RawValue;

use super::lean::{self, LeanValue};
use super::{Tracked, DecodeError, Decoded, Envelope, delta};
use crate::change::FieldPaths;
use crate::change::{Change, ChangeId, Operation, SourcePosition};

/// Change-stream events about the collection or database, not a document.
/// They are valid input that changes no reservation.
const COLLECTION_EVENTS: [&str; 11] = [
    "drop",
    "rename",
    "dropDatabase",
    "invalidate",
    "create",
    "createIndexes",
    "dropIndexes",
    "modify",
    "shardCollection",
    "refineCollectionShardKey",
    "reshardCollection",
];

pub(super) fn decode(top: Envelope<'_>, paths: &FieldPaths) -> Result<Decoded, DecodeError> {
    let op = match &top.operation_type {
        Some(LeanValue::Str(s)) => s.as_ref(),
        Some(other) => return Err(DecodeError::Malformed(format!("operationType is {other}, not a string"))),
        None => unreachable!("mongo::decode is called only with an operationType"),
    };
    if COLLECTION_EVENTS.contains(&op) {
        return Ok(Decoded::Ignored("collection-level change-stream event (drop, rename, invalidate, …)"));
    }
    let full = top.full_document.as_ref().and_then(Option::as_ref);
    // An update's looked-up document left unread (decode_deferring_lookups).
    let lookup_deferred = top.full_document_raw.is_some_and(|raw| raw.get() != "null");
    let doc_values = |what: &str| -> Result<_, DecodeError> {
        full.ok_or_else(|| DecodeError::Malformed(format!("{what} event without fullDocument")))?.values(paths, "fullDocument").map_err(DecodeError::InvalidValue)
    };
    let operation = match op {
        "insert" => Operation::Insert(doc_values("an insert")?),
        "replace" => Operation::Replace(doc_values("a replace")?),
        "update" => {
            let raw = top
                .update_description
                .ok_or_else(|| DecodeError::Malformed("an update event without updateDescription".into()))?;
            let ud: UpdateDescription = serde_json::from_str(raw.get())
                .map_err(|e| DecodeError::Malformed(format!("updateDescription is not {{updatedFields, removedFields}}: {e}")))?;
            let updated = match &ud.updated_fields {
                Some(raw) => super::document_from_raw(raw, paths, "updateDescription.updatedFields")?.unwrap_or_default(),
                None => Tracked::default(),
            };
            let removed = removed_fields(ud.removed_fields)?;
            Operation::Update { delta: delta(&updated, &removed, paths)?, lookup: full.map(|d| d.values(paths, "fullDocument")) }
        }
        "delete" => Operation::Delete,
        other => return Err(DecodeError::UnknownOperation(format!("{other:?}"))),
    };

    let copying = top.id.as_ref().is_some_and(|id| matches!(id.get("copyingData"), Some(LeanValue::Bool(true))) || id.get("copyingData").and_then(LeanValue::as_str) == Some("true"));
    let reservation_id = match reservation_id(&top, full, paths, copying) {
        // A documentKey without the id (a pipeline projected it away): the
        // unread document may still hold it.
        Err(DecodeError::MissingId(_)) if lookup_deferred => {
            let doc = super::document_from_raw(top.full_document_raw.expect("deferred"), paths, "fullDocument")?;
            reservation_id(&top, doc.as_ref(), paths, copying)?
        }
        other => other?,
    };
    let cluster_time = match &top.cluster_time {
        Some(v) => Some(lean::timestamp(v).ok_or_else(|| DecodeError::Malformed(format!("clusterTime {v} is not a BSON timestamp {{\"$timestamp\": {{\"t\": …, \"i\": …}}}}")))?),
        None => None,
    };
    let position = cluster_time.or_else(|| top.id.as_ref().and_then(lean::resume_token_time)).map(|(t, i)| SourcePosition::Cluster { t, i });
    let occurred_at_ms = top
        .wall_time
        .as_ref()
        .and_then(lean::date_millis)
        .or_else(|| match position {
            Some(SourcePosition::Cluster { t, .. }) => Some(i64::from(t) * 1000),
            _ => None,
        });
    // The resume token is unique per change, transactions included, and the
    // same on every re-delivery. Without one (a pipeline that projected `_id`
    // away), the change is known by what it did and its transaction.
    let identity = match top.id.as_ref() {
        Some(token) => match token.get("_data").and_then(LeanValue::as_str) {
            Some(data) => ChangeId::of(&[b"resume-token", data.as_bytes()]),
            None => ChangeId::of(&[b"resume-token", token.to_string().as_bytes()]),
        },
        None => super::operation_identity(&operation, super::transaction(top.lsid.as_ref(), top.txn_number.as_ref()).as_ref()),
    };
    Ok(Decoded::Change(Change { reservation_id, operation, position, occurred_at_ms, snapshot: copying, identity, lookup_deferred }))
}

/// Borrowed parts of the record's text, not copies.
#[derive(serde::Deserialize)]
struct UpdateDescription<'a> {
    #[serde(rename = "updatedFields", borrow)]
    updated_fields: Option<&'a RawValue>,
    #[serde(rename = "removedFields", borrow)]
    removed_fields: Option<&'a RawValue>,
}

/// `removedFields`: an array of dotted paths, or (Debezium) a string holding one.
pub(super) fn removed_fields(raw: Option<&RawValue>) -> Result<Vec<String>, DecodeError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let v: Value = serde_json::from_str(raw.get()).map_err(super::json_error)?;
    let v = match v {
        Value::String(s) => serde_json::from_str(&s).map_err(|e| DecodeError::Malformed(format!("removedFields string is not a JSON array: {e}")))?,
        v => v,
    };
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                other => Err(DecodeError::Malformed(format!("removedFields holds {other}, not a field path"))),
            })
            .collect(),
        other => Err(DecodeError::Malformed(format!("removedFields is {other}, not an array"))),
    }
}

fn reservation_id(top: &Envelope<'_>, full: Option<&Tracked<'_>>, paths: &FieldPaths, copying: bool) -> Result<String, DecodeError> {
    if let Some(key) = &top.document_key {
        if !matches!(key, LeanValue::Object(_)) {
            return Err(DecodeError::Malformed(format!("documentKey is {key}, not a document")));
        }
        if let Some(v) = lean::at_path(key, &paths.id) {
            return lean::id_text(v).map_err(|e| DecodeError::InvalidId(e.0));
        }
    }
    if let Some(id) = full.and_then(|d| d.id(paths)) {
        return id;
    }
    if copying {
        // Copy-existing records carry the document's id inside their own _id.
        if let Some(v) = top.id.as_ref().and_then(|id| id.get("_id")) {
            return lean::id_text(v).map_err(|e| DecodeError::InvalidId(e.0));
        }
    }
    Err(DecodeError::MissingId(format!("neither documentKey nor fullDocument holds {:?}", paths.id)))
}
