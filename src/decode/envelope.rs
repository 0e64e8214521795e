//! The one-pass serde visitor over a record value's top level: the envelope
//! keys that decide its format ([`Envelope`]), and the tracked document
//! entries found there (full-document-only and flattened values); every
//! other value is skipped unread.

use std::fmt;

use serde::de::{self as de, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::lean::{Key, LeanValue};
use super::tracked::{Tracked, TrackedSeed};
use crate::change::FieldPaths;

/// The top-level keys of a record value that decide its format, and the
/// tracked document entries found at top level (full-document-only and
/// flattened values are the document itself). Everything borrows from the
/// record's text: raw parts are slices of it, values `LeanValue`s over it.
#[derive(Default)]
pub(super) struct Envelope<'de> {
    pub(super) id: Option<LeanValue<'de>>,
    pub(super) operation_type: Option<LeanValue<'de>>,
    /// `Some(None)` when present and null.
    pub(super) full_document: Option<Option<Tracked<'de>>>,
    /// An update's looked-up `fullDocument`, skipped over unread (see
    /// [`Decoder::decode_deferring_lookups`]).
    pub(super) full_document_raw: Option<&'de RawValue>,
    pub(super) document_key: Option<LeanValue<'de>>,
    pub(super) update_description: Option<&'de RawValue>,
    pub(super) cluster_time: Option<LeanValue<'de>>,
    pub(super) wall_time: Option<LeanValue<'de>>,
    /// The transaction of a change made in one (`lsid`, `txnNumber`).
    pub(super) lsid: Option<LeanValue<'de>>,
    pub(super) txn_number: Option<LeanValue<'de>>,
    pub(super) op: Option<LeanValue<'de>>,
    pub(super) after: Option<&'de RawValue>,
    pub(super) before: Option<&'de RawValue>,
    pub(super) source: Option<LeanValue<'de>>,
    pub(super) patch: Option<&'de RawValue>,
    pub(super) filter: Option<&'de RawValue>,
    pub(super) schema: bool,
    pub(super) payload: Option<&'de RawValue>,
    /// ExtractNewDocumentState's added fields (`__op`, `__deleted`, `__source_*`).
    pub(super) flat: Map<String, Value>,
    pub(super) document: Tracked<'de>,
}

/// The fields ExtractNewDocumentState adds with `add.fields` and
/// `delete.handling.mode=rewrite` (`__deleted`).
pub(super) const FLAT_KEYS: [&str; 8] = ["__op", "__deleted", "__source_ts_ms", "__source_ord", "__source_snapshot", "__ts_ms", "__source_lsid", "__source_txnNumber"];

/// The field paths, and whether an update's looked-up `fullDocument` may be
/// skipped (left as raw text) when `operationType` is known to be `update`
/// before it (the connector writes `operationType` first).
pub(super) struct EnvelopeSeed<'p> {
    pub(super) paths: &'p FieldPaths,
    /// An update's `fullDocument` may stay raw text (the lookup deferred).
    pub(super) defer_lookup: bool,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Envelope<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Envelope<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Envelope<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a change event document")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut top = Envelope::default();
        while let Some(Key(owned_key)) = map.next_key::<Key>()? {
            let key = owned_key.as_ref();
            match key {
                "fullDocument" if self.defer_lookup && matches!(&top.operation_type, Some(LeanValue::Str(op)) if op == "update") => top.full_document_raw = Some(map.next_value()?),
                "fullDocument" => top.full_document = Some(map.next_value_seed(TrackedSeed(self.paths))?),
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
                    let tracked = self.paths.relevant(key);
                    let flat = FLAT_KEYS.contains(&key);
                    if slot.is_none() && !tracked && !flat {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let v: LeanValue<'de> = map.next_value()?;
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
