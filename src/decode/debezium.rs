//! Debezium's MongoDB connector, and values that are the document itself.
//!
//! The envelope: `op` c/u/d/r, `after`/`before` as JSON strings of Extended
//! JSON, `updateDescription` (its `updatedFields` a JSON string), the 1.x
//! oplog-era `patch`/`filter`, `source.ts_ms` + `source.ord` (the cluster time),
//! and the key `{"id": "<Extended JSON of _id>"}`, the only place a delete's id
//! is. Also the document-only values: ExtractNewDocumentState's flattened form
//! (`__op`, `__deleted`, `__source_ts_ms`, `__source_ord` when added) and the
//! source connector's `publish.full.document.only`.

use serde_json::Value;

use super::lean::{self, LeanValue};
use super::{Tracked, DecodeError, Decoded, Format, Envelope, delta, extjson};
use crate::change::FieldPaths;
use crate::change::{Change, Operation, SourcePosition};

pub(super) fn decode(top: Envelope<'_>, key: Option<&str>, paths: &FieldPaths) -> Result<Decoded, DecodeError> {
    let op = match &top.op {
        Some(LeanValue::Str(s)) => s.as_ref(),
        Some(other) => return Err(DecodeError::Malformed(format!("op is {other}, not a string"))),
        None => unreachable!("debezium::decode is called only with an op"),
    };
    let after = match top.after {
        Some(raw) => super::document_from_raw(raw, paths, "after")?,
        None => None,
    };
    let source = top.source.as_ref();
    let snapshot_flag = source.and_then(|s| s.get("snapshot")).is_some_and(|s| match s {
        LeanValue::Str(s) => !s.is_empty() && s != "false",
        LeanValue::Bool(b) => *b,
        _ => false,
    });
    let need_after = |what: &str| -> Result<_, DecodeError> {
        after.as_ref().ok_or_else(|| DecodeError::Malformed(format!("{what} without an after document")))?.values(paths, "after").map_err(DecodeError::InvalidValue)
    };
    let (operation, snapshot) = match op {
        "c" => (Operation::Insert(need_after("a create (op c)")?), snapshot_flag),
        "r" => (Operation::Insert(need_after("a snapshot read (op r)")?), true),
        "u" => (update(&top, after.as_ref(), paths)?, snapshot_flag),
        "d" => (Operation::Delete, snapshot_flag),
        "t" | "m" => return Ok(Decoded::Ignored("Debezium truncate or message event (op t or m)")),
        other => return Err(DecodeError::UnknownOperation(format!("{other:?}"))),
    };

    let reservation_id = match after.as_ref().and_then(|d| d.id(paths)) {
        Some(id) => id?,
        None => match before_or_filter_id(&top, paths)? {
            Some(id) => id,
            None => key_id(key)?.ok_or_else(|| {
                DecodeError::MissingId(format!("a Debezium {op:?} event whose after/before lack {:?} and with no record key {{\"id\": …}} (replay with --keyed to pass keys)", paths.id))
            })?,
        },
    };
    let ts_ms = source.and_then(|s| s.get("ts_ms")).and_then(lv_as_i64);
    let ord = source.and_then(|s| s.get("ord")).and_then(lv_as_i64).unwrap_or(0);
    let position = ts_ms.and_then(|ms| cluster_position(ms, ord));
    // Debezium carries no resume token: a change is its op, what it did
    // and its transaction (all of a transaction's changes share ts_ms and ord).
    let txn = super::transaction(source.and_then(|s| s.get("lsid")), source.and_then(|s| s.get("txnNumber")));
    let identity = super::operation_identity(&operation, txn.as_ref());
    Ok(Decoded::Change(Change { reservation_id, operation, position, occurred_at_ms: ts_ms, snapshot, identity, lookup_deferred: false }))
}

/// Debezium's `source.ts_ms` is the cluster time's seconds × 1000 and `ord`
/// its increment, so together they are the same order the source connector's
/// `clusterTime` gives. (Debezium 3.4 fills `ts_ms` from `wallTime` when the
/// server sends one; its seconds still order changes, and `ord` the changes
/// within a second.)
/// Snapshot reads of newer Debezium versions carry `ord = -1`; they sort
/// before every change of the same second.
fn cluster_position(ts_ms: i64, ord: i64) -> Option<SourcePosition> {
    Some(SourcePosition::Cluster { t: u32::try_from(ts_ms.div_euclid(1000)).ok()?, i: u32::try_from(ord.max(0)).ok()? })
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        other => extjson::date_millis(other),
    }
}

/// [`as_i64`] over an `LeanValue`.
fn lv_as_i64(v: &LeanValue) -> Option<i64> {
    match v {
        LeanValue::Number(n) => n.as_i64(),
        LeanValue::Str(s) => s.parse().ok(),
        other => lean::date_millis(other),
    }
}

fn update(top: &Envelope<'_>, after: Option<&Tracked<'_>>, paths: &FieldPaths) -> Result<Operation, DecodeError> {
    let lookup = after.map(|d| d.values(paths, "after"));
    if let Some(raw) = top.update_description.filter(|r| r.get() != "null") {
        let ud: Value = serde_json::from_str(raw.get()).map_err(super::json_error)?;
        let Value::Object(ud) = ud else {
            return Err(DecodeError::Malformed("updateDescription is not a document".into()));
        };
        let updated = match ud.get("updatedFields") {
            Some(Value::String(s)) => super::document_from_text(s, paths, "updateDescription.updatedFields")?.unwrap_or_default(),
            Some(Value::Object(m)) => Tracked::from_map(m, paths),
            Some(Value::Null) | None => Tracked::default(),
            Some(other) => return Err(DecodeError::Malformed(format!("updatedFields is {other}, not a document"))),
        };
        let removed_raw = ud.get("removedFields").map(|v| serde_json::value::to_raw_value(v).expect("a Value always serializes"));
        let removed = super::mongo::removed_fields(removed_raw.as_deref())?;
        return Ok(Operation::Update { delta: delta(&updated, &removed, paths)?, lookup });
    }
    if let Some(raw) = top.patch.filter(|r| r.get() != "null") {
        return patch(raw, paths);
    }
    // Change-streams capture of a replace: op u with the whole new document.
    match lookup {
        Some(doc) => Ok(Operation::Replace(doc.map_err(DecodeError::InvalidValue)?)),
        None => Err(DecodeError::Malformed("an update (op u) with neither updateDescription, patch nor after".into())),
    }
}

/// Debezium 1.x (oplog capture) `patch`: `{"$set": …, "$unset": …}`, the
/// `$v: 2` diff form `{"diff": {"u": …, "i": …, "d": …}}`, or a whole
/// replacement document.
fn patch(raw: &serde_json::value::RawValue, paths: &FieldPaths) -> Result<Operation, DecodeError> {
    let v: Value = match serde_json::from_str(raw.get()).map_err(super::json_error)? {
        Value::String(s) => serde_json::from_str(&s).map_err(|e| DecodeError::Malformed(format!("patch is not a JSON document: {e}")))?,
        v => v,
    };
    let Value::Object(m) = v else { return Err(DecodeError::Malformed("patch is not a document".into())) };
    let pick = |doc: Option<&Value>| -> Tracked<'static> {
        match doc {
            Some(Value::Object(d)) => Tracked::from_map(d, paths),
            _ => Tracked::default(),
        }
    };
    let keys = |doc: Option<&Value>| -> Vec<String> {
        match doc {
            Some(Value::Object(d)) => d.keys().cloned().collect(),
            _ => Vec::new(),
        }
    };
    if m.contains_key("$set") || m.contains_key("$unset") {
        return Ok(Operation::Update { delta: delta(&pick(m.get("$set")), &keys(m.get("$unset")), paths)?, lookup: None });
    }
    if let Some(Value::Object(diff)) = m.get("diff") {
        let mut set = pick(diff.get("u"));
        set.0.extend(pick(diff.get("i")).0);
        return Ok(Operation::Update { delta: delta(&set, &keys(diff.get("d")), paths)?, lookup: None });
    }
    if m.keys().any(|k| k.starts_with('$')) {
        return Err(DecodeError::Malformed(format!("patch uses operators resevent does not read: {}", m.keys().cloned().collect::<Vec<_>>().join(", "))));
    }
    Ok(Operation::Replace(pick(Some(&Value::Object(m))).values(paths, "patch").map_err(DecodeError::InvalidValue)?))
}

fn before_or_filter_id(top: &Envelope<'_>, paths: &FieldPaths) -> Result<Option<String>, DecodeError> {
    for (raw, what) in [(top.before, "before"), (top.filter, "filter")] {
        if let Some(raw) = raw {
            if let Some(id) = super::document_from_raw(raw, paths, what)?.and_then(|d| d.id(paths)) {
                return id.map(Some);
            }
        }
    }
    Ok(None)
}

/// The id from a Debezium record key: `{"id": "<Extended JSON>"}`, possibly
/// inside a JsonConverter envelope. A string id's key holds it quoted
/// (`"\"R-1\""`); an unquoted one is taken as written.
fn key_id(key: Option<&str>) -> Result<Option<String>, DecodeError> {
    let Some(key) = key else { return Ok(None) };
    let mut v: Value = match serde_json::from_str(key) {
        Ok(v) => v,
        Err(_) => return Ok(Some(key.to_owned()).filter(|k| !k.is_empty())),
    };
    if let Value::Object(m) = &mut v {
        if m.contains_key("schema") {
            if let Some(p) = m.remove("payload") {
                v = p;
            }
        }
    }
    let id = match &v {
        Value::Object(m) => match m.get("id").or_else(|| m.get("_id")) {
            Some(id) => id.clone(),
            None => return Ok(None),
        },
        Value::Null => return Ok(None),
        other => other.clone(),
    };
    let id = match id {
        Value::String(s) => serde_json::from_str::<Value>(&s).unwrap_or(Value::String(s)),
        other => other,
    };
    extjson::id_text(&id).map(Some).map_err(|e| DecodeError::InvalidId(format!("record key: {}", e.0)))
}

/// A value that is the document itself: Debezium's ExtractNewDocumentState
/// output, or the source connector's `publish.full.document.only`. Without
/// `add.fields` such a record has no source position; the caller gives it the
/// record's input position.
pub(super) fn decode_document(top: Envelope<'_>, key: Option<&str>, paths: &FieldPaths, format: Format) -> Result<Decoded, DecodeError> {
    let flat = &top.flat;
    if top.document.0.is_empty() && flat.is_empty() {
        return Err(DecodeError::NotAChange(format!(
            "no operationType (MongoDB source connector), no op (Debezium) and none of the mapped fields ({}) at top level",
            paths.all().collect::<Vec<_>>().join(", ")
        )));
    }
    if !flat.is_empty() && format == Format::Mongo {
        return Err(DecodeError::WrongFormat { expected: "mongo", found: "Debezium ExtractNewDocumentState" });
    }
    let truthy = |v: Option<&Value>| matches!(v, Some(Value::Bool(true))) || v.and_then(Value::as_str) == Some("true");
    let op = flat.get("__op").and_then(Value::as_str);
    let deleted = truthy(flat.get("__deleted")) || op == Some("d");
    let snapshot = op == Some("r") || flat.get("__source_snapshot").and_then(Value::as_str).is_some_and(|s| !s.is_empty() && s != "false");
    let reservation_id = match top.document.id(paths) {
        Some(id) => id?,
        None => key_id(key)?.ok_or_else(|| DecodeError::MissingId(format!("the document has no {:?} and the record no key", paths.id)))?,
    };
    let operation = if deleted {
        Operation::Delete
    } else if paths.partial_flattened {
        // capture.mode=change_streams: the fields the change set, plus _id;
        // the rest is kept as it was. (A removed field simply vanishes from
        // this form, so a removal cannot be seen.)
        Operation::Update { delta: delta(&top.document, &[], paths)?, lookup: None }
    } else {
        Operation::Replace(top.document.values(paths, "document").map_err(DecodeError::InvalidValue)?)
    };
    let ts_ms = flat.get("__source_ts_ms").and_then(as_i64);
    let position = match (ts_ms, flat.get("__source_ord").and_then(as_i64)) {
        (Some(ms), Some(ord)) => cluster_position(ms, ord),
        _ => None,
    };
    let occurred_at_ms = ts_ms.or_else(|| flat.get("__ts_ms").and_then(as_i64));
    // With `add.fields=source.ts_ms,source.ord` the changes of one transaction
    // share a position; the document each one left (and the transaction, if
    // `source.lsid,source.txnNumber` are added too) tells them apart.
    let txn = match (flat.get("__source_lsid"), flat.get("__source_txnNumber")) {
        (Some(l), Some(t)) if !l.is_null() && !t.is_null() => Some((super::extjson::canonical_text(l), super::extjson::canonical_text(t))),
        _ => None,
    };
    let identity = super::operation_identity(&operation, txn.as_ref());
    Ok(Decoded::Change(Change { reservation_id, operation, position, occurred_at_ms, snapshot, identity, lookup_deferred: false }))
}
