//! What capture publishes: the MongoDB Kafka source connector's JSON of a
//! change-stream document (`change.stream.full.document=updateLookup`, JSON
//! output), keyed by the document key (`change.stream.document.key.as.key`),
//! so `resevent run` decodes it with the same decoders and fixtures; and the
//! connector's copy-existing events. Also the change-stream pipeline file.
//!
//! Pure: BSON documents in, JSON text out; no I/O but reading the pipeline file.

use std::path::Path;

use mongodb::bson::{Bson, Document, doc};

use super::config::JsonDialect;

/// The pipeline built into the binary: pipelines/change-stream.json as built.
pub const BUILTIN_PIPELINE: &str = include_str!("../../pipelines/change-stream.json");

/// The file looked for when no pipeline is given.
pub const DEFAULT_PIPELINE_PATH: &str = "pipelines/change-stream.json";

/// A document as Extended JSON in the chosen dialect.
pub fn to_json(doc: &Document, dialect: JsonDialect) -> serde_json::Value {
    let b = Bson::Document(doc.clone());
    match dialect {
        JsonDialect::Relaxed => b.into_relaxed_extjson(),
        JsonDialect::Canonical => b.into_canonical_extjson(),
    }
}

/// One change ready to send: the key and value bytes, and what the position
/// logic needs (the value's `_id`, the change's cluster time).
pub struct Outgoing {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The value's `_id`: the resume token of a change, `{_id, copyingData}` of a copy.
    pub id: serde_json::Value,
    /// Seconds of the change's `clusterTime`; none for copies.
    pub cluster_secs: Option<u32>,
    /// When the change happened (unix ms: `wallTime`, else `clusterTime`), for the lag.
    pub event_ms: Option<i64>,
}

/// Why a change-stream document cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("a change-stream document without {0}; the change-stream pipeline must keep _id, operationType and documentKey")]
    Missing(&'static str),
}

/// A change-stream document as the connector publishes it.
pub fn change(doc: &Document, dialect: JsonDialect) -> Result<Outgoing, FormatError> {
    let id = doc.get("_id").ok_or(FormatError::Missing("_id (the resume token)"))?;
    let key = match doc.get("documentKey") {
        Some(Bson::Document(k)) => k.clone(),
        // Collection events (drop, rename, invalidate) have no document key:
        // keyed by their namespace, as the connector does with no key field.
        _ if doc.contains_key("operationType") => doc! {},
        _ => return Err(FormatError::Missing("operationType")),
    };
    let cluster_secs = match doc.get("clusterTime") {
        Some(Bson::Timestamp(t)) => Some(t.time),
        _ => None,
    };
    let event_ms = match doc.get("wallTime") {
        Some(Bson::DateTime(d)) => Some(d.timestamp_millis()),
        _ => cluster_secs.map(|s| i64::from(s) * 1000),
    };
    let value = to_json(doc, dialect);
    let id = value.get("_id").cloned().unwrap_or_else(|| Bson::clone(id).into_relaxed_extjson());
    Ok(Outgoing { key: serde_json::to_vec(&to_json(&key, dialect)).expect("JSON"), value: serde_json::to_vec(&value).expect("JSON"), id, cluster_secs, event_ms })
}

/// An existing document as the connector's copy-existing event.
pub fn copy_existing(document: &Document, db: &str, coll: &str, dialect: JsonDialect) -> Result<Outgoing, FormatError> {
    let doc_id = document.get("_id").ok_or(FormatError::Missing("_id"))?.clone();
    let key = doc! { "_id": doc_id.clone() };
    let event = doc! {
        "_id": { "_id": doc_id, "copyingData": true },
        "operationType": "insert",
        "documentKey": key.clone(),
        "fullDocument": document.clone(),
        "ns": { "db": db, "coll": coll },
    };
    let value = to_json(&event, dialect);
    Ok(Outgoing { key: serde_json::to_vec(&to_json(&key, dialect)).expect("JSON"), id: value["_id"].clone(), value: serde_json::to_vec(&value).expect("JSON"), cluster_secs: None, event_ms: None })
}

/// Reads a change-stream pipeline: a JSON array of stages (Extended JSON allowed).
pub fn parse_pipeline(text: &str, origin: &str) -> anyhow::Result<Vec<Document>> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{origin} is not JSON: {e}"))?;
    let serde_json::Value::Array(stages) = json else { anyhow::bail!("{origin} must hold a JSON array of aggregation stages") };
    stages
        .into_iter()
        .enumerate()
        .map(|(i, s)| match Bson::try_from(s) {
            Ok(Bson::Document(d)) => Ok(d),
            Ok(other) => anyhow::bail!("{origin}: stage {} is {other}, not an object", i + 1),
            Err(e) => anyhow::bail!("{origin}: stage {} is not Extended JSON: {e}", i + 1),
        })
        .collect()
}

/// The pipeline to use and where it came from.
pub fn load_pipeline(explicit: Option<&Path>) -> anyhow::Result<(Vec<Document>, String)> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_PIPELINE_PATH).exists() => DEFAULT_PIPELINE_PATH.into(),
        None => return Ok((parse_pipeline(BUILTIN_PIPELINE, "the built-in change-stream pipeline")?, "built-in".into())),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read change-stream pipeline {}: {e}", path.display()))?;
    Ok((parse_pipeline(&text, &path.display().to_string())?, path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Decoder, Format};
    use crate::pipeline::Pipeline;
    use mongodb::bson::{DateTime, Timestamp, oid::ObjectId};

    fn decoder() -> Decoder {
        let p = Pipeline::builtin();
        Decoder::new(Format::Auto, p.paths.clone())
    }

    #[test]
    fn published_changes_decode_like_the_connectors() {
        let oid = ObjectId::parse_str("6502a1f0c3b7e41d9a0c0001").unwrap();
        let update = doc! {
            "_id": { "_data": "8263A1" },
            "operationType": "update",
            "clusterTime": Timestamp { time: 1795333510, increment: 2 },
            "wallTime": DateTime::from_millis(1795333510000),
            "ns": { "db": "property", "coll": "reservation" },
            "documentKey": { "_id": oid },
            "updateDescription": { "updatedFields": { "bookingStatus": "Arrived", "roomNumber": 305 }, "removedFields": [], "truncatedArrays": [] },
            "fullDocument": { "_id": oid, "propertyId": "P-OSL-01", "bookingStatus": "Arrived", "roomNumber": 305,
                "arrivalDate": DateTime::from_millis(1795305600000), "departureDate": DateTime::from_millis(1795564800000) },
        };
        for dialect in [JsonDialect::Relaxed, JsonDialect::Canonical] {
            let out = change(&update, dialect).unwrap();
            let key: serde_json::Value = serde_json::from_slice(&out.key).unwrap();
            assert_eq!(key, serde_json::json!({"_id": {"$oid": "6502a1f0c3b7e41d9a0c0001"}}));
            assert_eq!(out.cluster_secs, Some(1795333510));
            assert_eq!(out.id, serde_json::json!({"_data": "8263A1"}));
            let decoded = decoder().decode(Some(&out.key), Some(&out.value)).unwrap_or_else(|e| panic!("{dialect:?}: {e}"));
            let text = format!("{decoded:?}");
            assert!(text.contains("6502a1f0c3b7e41d9a0c0001") && text.contains("305") && text.contains("1795333510"), "{dialect:?}: {text}");
        }
    }

    #[test]
    fn copy_existing_events_have_the_connectors_shape() {
        let d = doc! { "_id": "R-1", "bookingStatus": "Arrived", "propertyId": "P-OSL-01", "roomNumber": "12" };
        let out = copy_existing(&d, "property", "reservation", JsonDialect::Relaxed).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.value).unwrap();
        assert_eq!(v["_id"], serde_json::json!({"_id": "R-1", "copyingData": true}));
        assert_eq!(v["operationType"], "insert");
        assert_eq!(v["ns"], serde_json::json!({"db": "property", "coll": "reservation"}));
        assert_eq!(out.key, br#"{"_id":"R-1"}"#);
        let decoded = decoder().decode(Some(&out.key), Some(&out.value)).unwrap();
        assert!(format!("{decoded:?}").contains("R-1"));
    }

    #[test]
    fn the_builtin_pipeline_parses() {
        let stages = parse_pipeline(BUILTIN_PIPELINE, "built-in").unwrap();
        assert!(!stages.is_empty());
        assert!(parse_pipeline("{}", "x").is_err());
    }
}
