//! The tracked entries of a document ([`Tracked`], read by [`TrackedSeed`]
//! in one pass, kept as borrowed [`LeanValue`]s) and their values in the
//! change's types: a field's text (a date as RFC 3339, a room or property as
//! text), an update's delta, and a change's identity without a resume token.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self as de, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::DecodeError;
use super::error::json_error;
use super::lean::{self, Key, LeanValue};
use crate::change::{ChangeId, Delta, DocumentValues, Edit, Field, FieldPaths, InvalidValue, Operation, covers};

/// The tracked entries of one document (or of `updatedFields`): the keys that
/// are tracked paths or ancestors of one, with their values, borrowed from the
/// text they were read from.
#[derive(Debug, Default)]
pub(super) struct Tracked<'de>(pub(super) Vec<(Cow<'de, str>, LeanValue<'de>)>);

impl<'de> Tracked<'de> {
    /// The value at `path`, looking through an ancestor's value when the key
    /// is an ancestor (`updatedFields: {"stay": {...}}` sets `stay.room`).
    /// `Some(None)` means an ancestor was set without the path in it.
    pub(super) fn lookup(&self, path: &str) -> Option<Option<&LeanValue<'de>>> {
        let mut found = None;
        for (k, v) in &self.0 {
            if k == path {
                found = Some(Some(v));
            } else if covers(k, path) {
                let rest = &path[k.len() + 1..];
                found = Some(match v {
                    LeanValue::Object(_) => lean::at_path(v, rest),
                    _ => None,
                });
            }
        }
        found
    }

    /// The document's id (at the id path), if it has one.
    pub(super) fn id(&self, paths: &FieldPaths) -> Option<Result<String, DecodeError>> {
        let v = self.lookup(&paths.id)??;
        Some(lean::id_text(v).map_err(|e| DecodeError::InvalidId(e.0)))
    }

    /// The document's tracked values, each of its type (see [`field_text`]);
    /// `place` names the part of the record it is, for the error. The status
    /// is taken as text whatever it is: an unmapped status is the pipeline's
    /// business (logged and counted), not bad input.
    pub(super) fn values(&self, paths: &FieldPaths, place: &'static str) -> Result<DocumentValues, InvalidValue> {
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
    pub(super) fn into_owned(self) -> Tracked<'static> {
        Tracked(self.0.into_iter().map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned())).collect())
    }

    /// The tracked entries of a document already parsed into a `Value`.
    pub(super) fn from_map(m: &Map<String, Value>, paths: &FieldPaths) -> Tracked<'static> {
        Tracked(m.iter().filter(|(k, _)| paths.relevant(k)).map(|(k, v)| (Cow::Owned(k.clone()), LeanValue::from_value(v))).collect())
    }
}

/// Parses a document given as text (Debezium's `after`) or as a JSON value
/// that holds such text, keeping only the tracked entries.
pub(super) fn document_from_text<'a>(text: &'a str, paths: &FieldPaths, what: &str) -> Result<Option<Tracked<'a>>, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let doc = TrackedSeed(paths).deserialize(&mut de).map_err(|e| DecodeError::Malformed(format!("{what} is not a JSON document: {e}")))?;
    de.end().map_err(|e| DecodeError::Malformed(format!("{what} has trailing data: {e}")))?;
    Ok(doc)
}

/// A document that may arrive as an object or as a string holding one
/// (Debezium writes `after`, `before`, `patch` and `updatedFields` as strings).
pub(super) fn document_from_raw<'a>(raw: &'a RawValue, paths: &FieldPaths, what: &str) -> Result<Option<Tracked<'a>>, DecodeError> {
    let text = raw.get();
    if text.starts_with('"') {
        let inner: String = serde_json::from_str(text).map_err(json_error)?;
        // The entries borrow from `inner`, which ends here.
        Ok(document_from_text(&inner, paths, what)?.map(Tracked::into_owned))
    } else {
        document_from_text(text, paths, what)
    }
}

/// Reads a document keeping only tracked entries; `None` for a JSON null.
pub(super) struct TrackedSeed<'p>(pub(super) &'p FieldPaths);

impl<'de> DeserializeSeed<'de> for TrackedSeed<'_> {
    type Value = Option<Tracked<'de>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TrackedSeed<'_> {
    type Value = Option<Tracked<'de>>;
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
        let mut out = Tracked(Vec::with_capacity(8));
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

/// The transaction a change belongs to, as text for its identity: `lsid`
/// and `txnNumber` when both are there and not null.
pub(super) fn transaction(lsid: Option<&LeanValue>, txn_number: Option<&LeanValue>) -> Option<(String, String)> {
    match (lsid?, txn_number?) {
        (LeanValue::Null, _) | (_, LeanValue::Null) => None,
        (l, t) => Some((l.to_string(), t.to_string())),
    }
}

/// The identity of a change without a resume token (see [`ChangeId`]).
pub(super) fn operation_identity(operation: &Operation, txn: Option<&(String, String)>) -> ChangeId {
    ChangeId::of_operation(operation, txn.map(|(l, t)| (l.as_str(), t.as_str())))
}

/// A tracked field's value as the text resevent keeps: a date as RFC 3339
/// UTC, a room or property as text (a number in decimal). `Ok(None)` for a
/// JSON null. Any other value is an [`InvalidValue`] naming the field, its
/// path and `place`: it would otherwise reach a business event as JSON text
/// where a date or a room is promised.
pub(super) fn field_text(field: Field, v: &LeanValue, path: &str, place: &'static str) -> Result<Option<String>, InvalidValue> {
    if let LeanValue::Null = v {
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
pub(super) fn delta(updated: &Tracked, removed: &[String], paths: &FieldPaths) -> Result<Delta, DecodeError> {
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
