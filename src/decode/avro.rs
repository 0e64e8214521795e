//! Avro input: a record in the Confluent wire format (magic byte 0, the
//! schema id, the Avro datum) turned into the JSON its connector writes with
//! a JSON converter, so the one set of decoders reads both. The MongoDB
//! connector's `ChangeStream` schema keeps its Extended JSON parts as
//! strings, passed through here unparsed; Debezium's envelope converts as it
//! is. Pure: the writer's schema comes from [`crate::registry`], which does
//! the HTTP and calls these.

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use serde_json::Value as Json;

/// The Confluent wire format's first byte.
pub const MAGIC: u8 = 0;

/// `datum` framed for the wire: magic byte, schema id, datum.
pub fn frame(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// The schema id and datum of a framed value; `None` when `bytes` is not in
/// the wire format (JSON never starts with a zero byte).
pub fn unframe(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [MAGIC, a, b, c, d, rest @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => None,
    }
}

/// A datum written with `schema`, as a value.
pub fn read_datum(schema: &Schema, datum: &[u8]) -> Result<Avro, String> {
    let mut reader = datum;
    let value = apache_avro::reader::datum::GenericDatumReader::builder(schema).build().and_then(|r| r.read_value(&mut reader)).map_err(|e| e.to_string())?;
    if !reader.is_empty() {
        return Err(format!("{} bytes left over after the datum; the record was not written with this schema", reader.len()));
    }
    Ok(value)
}

/// An Avro value as JSON, the way Kafka Connect's JsonConverter
/// (schemas.enable=false) would have written the same record: records and
/// maps as objects, unions as their branch, enums as their symbol, bytes as
/// text when they are UTF-8 (else as an array of numbers).
pub fn to_json(value: &Avro) -> Json {
    match value {
        Avro::Null => Json::Null,
        Avro::Boolean(b) => Json::Bool(*b),
        Avro::Int(n) | Avro::Date(n) | Avro::TimeMillis(n) => Json::from(*n),
        Avro::Long(n) | Avro::TimeMicros(n) | Avro::TimestampMillis(n) | Avro::TimestampMicros(n) | Avro::TimestampNanos(n) => Json::from(*n),
        Avro::LocalTimestampMillis(n) | Avro::LocalTimestampMicros(n) | Avro::LocalTimestampNanos(n) => Json::from(*n),
        Avro::Float(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number),
        Avro::Double(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Avro::Bytes(b) | Avro::Fixed(_, b) => match std::str::from_utf8(b) {
            Ok(s) => Json::String(s.to_owned()),
            Err(_) => Json::Array(b.iter().map(|x| Json::from(*x)).collect()),
        },
        Avro::String(s) | Avro::Enum(_, s) => Json::String(s.clone()),
        Avro::Uuid(u) => Json::String(u.to_string()),
        Avro::Union(_, inner) => to_json(inner),
        Avro::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Avro::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Avro::Record(fields) => Json::Object(fields.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        other => Json::String(format!("{other:?}")),
    }
}

/// A value record as the JSON its connector writes without a schema. The
/// MongoDB connector's default change-stream schema (`ChangeStream`) keeps
/// the parts whose shape varies as Extended JSON strings — `_id` (the resume
/// token), `fullDocument`, `fullDocumentBeforeChange`, `documentKey`,
/// `clusterTime`, `updateDescription.updatedFields` — and `wallTime` as epoch
/// ms; here their text goes into the output as it is (never parsed only to be
/// printed again: `fullDocument` is most of a record, and the decoder skips it
/// for an update), and `wallTime` becomes `{"$date": ms}`, so the Avro record
/// and its JSON twin decode alike. Text that is not JSON makes the record
/// undecodable, which the decoder reports as a dead letter. A value that is
/// not a change-stream record (no `operationType`) is converted as it is.
pub fn change_stream_json(value: &Avro) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let is_change = matches!(value, Avro::Record(fields) if fields.iter().any(|(k, _)| k == "operationType"));
    if is_change {
        write_change(value, &mut out, 0);
    } else {
        serde_json::to_writer(&mut out, &to_json(value)).expect("JSON values serialize");
    }
    out
}

/// Fields of a change-stream record (depth 0) and of its
/// `updateDescription` (depth 1) that hold Extended JSON text.
fn is_json_text(depth: usize, name: &str) -> bool {
    match depth {
        0 => matches!(name, "_id" | "fullDocument" | "fullDocumentBeforeChange" | "documentKey" | "clusterTime"),
        _ => name == "updatedFields",
    }
}

fn write_change(value: &Avro, out: &mut Vec<u8>, depth: usize) {
    let Avro::Record(fields) = value else {
        serde_json::to_writer(&mut *out, &to_json(value)).expect("JSON values serialize");
        return;
    };
    out.push(b'{');
    for (i, (name, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, name).expect("a string serializes");
        out.push(b':');
        let inner = match v {
            Avro::Union(_, b) => b.as_ref(),
            other => other,
        };
        match inner {
            Avro::String(text) if is_json_text(depth, name) && text.trim_start().starts_with(['{', '[']) => out.extend_from_slice(text.as_bytes()),
            Avro::Long(ms) if depth == 0 && name == "wallTime" => out.extend_from_slice(format!("{{\"$date\":{ms}}}").as_bytes()),
            Avro::Record(_) if depth == 0 && name == "updateDescription" => write_change(inner, out, 1),
            other => serde_json::to_writer(&mut *out, &to_json(other)).expect("JSON values serialize"),
        }
    }
    out.push(b'}');
}

/// A key record the connector wrote as `{"_id": "<Extended JSON>"}`: the id
/// back as JSON when it is a document (`{"$oid": …}`); a plain string id stays.
pub fn unwrap_key(value: &mut Json) {
    if let Some(doc) = value.as_object_mut() {
        if let Some(Json::String(s)) = doc.get("_id") {
            if s.starts_with('{') {
                if let Ok(parsed) = serde_json::from_str::<Json>(s) {
                    doc.insert("_id".into(), parsed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    /// The plain reading of [`change_stream_json`]'s rule on a value tree:
    /// each Extended JSON string parsed back into JSON, `wallTime` as a
    /// `$date`. The reference the direct writer is held to.
    fn unwrap_change_stream(value: &mut Json) {
        let Some(doc) = value.as_object_mut() else { return };
        if !doc.contains_key("operationType") {
            return;
        }
        for name in ["_id", "fullDocument", "fullDocumentBeforeChange", "documentKey", "clusterTime"] {
            unwrap_string(doc, name);
        }
        if let Some(Json::Object(update)) = doc.get_mut("updateDescription") {
            unwrap_string(update, "updatedFields");
        }
        if let Some(Json::Number(ms)) = doc.get("wallTime") {
            let date = serde_json::json!({ "$date": ms });
            doc.insert("wallTime".into(), date);
        }
    }

    fn unwrap_string(doc: &mut Map<String, Json>, name: &str) {
        if let Some(Json::String(s)) = doc.get(name) {
            if let Ok(parsed @ (Json::Object(_) | Json::Array(_))) = serde_json::from_str::<Json>(s) {
                doc.insert(name.into(), parsed);
            }
        }
    }

    #[test]
    fn change_stream_strings_are_put_back_as_json() {
        let mut v = serde_json::json!({
            "_id": "{\"_data\": \"8263\"}", "operationType": "update",
            "documentKey": "{\"_id\": {\"$oid\": \"6502aa\"}}", "fullDocument": null,
            "updateDescription": {"updatedFields": "{\"roomNumber\": \"305\"}", "removedFields": [], "truncatedArrays": []},
            "clusterTime": "{\"$timestamp\": {\"t\": 7, \"i\": 1}}", "wallTime": 1700000000000i64, "txnNumber": null,
        });
        unwrap_change_stream(&mut v);
        assert_eq!(v["_id"]["_data"], "8263");
        assert_eq!(v["documentKey"]["_id"]["$oid"], "6502aa");
        assert_eq!(v["updateDescription"]["updatedFields"]["roomNumber"], "305");
        assert_eq!(v["clusterTime"]["$timestamp"]["t"], 7);
        assert_eq!(v["wallTime"]["$date"], 1700000000000i64);
        let mut key = serde_json::json!({"_id": "{\"$oid\": \"6502aa\"}"});
        unwrap_key(&mut key);
        assert_eq!(key["_id"]["$oid"], "6502aa");
        let mut plain = serde_json::json!({"_id": "R-1"});
        unwrap_key(&mut plain);
        assert_eq!(plain["_id"], "R-1");
    }

    #[test]
    fn the_direct_change_stream_writer_gives_what_parsing_the_strings_gives() {
        let s = |t: &str| Avro::Union(0, Box::new(Avro::String(t.into())));
        let null = || Avro::Union(1, Box::new(Avro::Null));
        let change = Avro::Record(vec![
            ("_id".into(), Avro::String("{\"_data\": \"8263\"}".into())),
            ("operationType".into(), s("update")),
            ("fullDocument".into(), s("{\"_id\": {\"$oid\": \"6502aa\"}, \"roomNumber\": \"305\", \"tags\": [1, {\"b\": 2, \"a\": 1}]}")),
            ("fullDocumentBeforeChange".into(), null()),
            ("ns".into(), Avro::Union(0, Box::new(Avro::Record(vec![("db".into(), Avro::String("property".into())), ("coll".into(), s("reservation"))])))),
            ("documentKey".into(), s("{\"_id\": {\"$oid\": \"6502aa\"}}")),
            (
                "updateDescription".into(),
                Avro::Union(0, Box::new(Avro::Record(vec![("updatedFields".into(), s("{\"roomNumber\": \"305\"}")), ("removedFields".into(), Avro::Union(0, Box::new(Avro::Array(vec![Avro::String("notes".into())]))))]))),
            ),
            ("clusterTime".into(), s("{\"$timestamp\": {\"t\": 7, \"i\": 1}}")),
            ("wallTime".into(), Avro::Union(0, Box::new(Avro::Long(1_700_000_000_000)))),
            ("txnNumber".into(), null()),
            ("note".into(), s("{not json but not one of the connector's JSON fields")),
        ]);
        let mut two_step = to_json(&change);
        unwrap_change_stream(&mut two_step);
        let direct: Json = serde_json::from_slice(&change_stream_json(&change)).unwrap();
        assert_eq!(direct, two_step);
        // Not a change-stream record (a Debezium envelope): plain conversion.
        let envelope = Avro::Record(vec![("op".into(), Avro::String("u".into())), ("after".into(), s("{\"_id\": 1}"))]);
        assert_eq!(serde_json::from_slice::<Json>(&change_stream_json(&envelope)).unwrap(), to_json(&envelope));
    }

    #[test]
    fn framing_is_recognised_only_with_the_magic_byte_and_a_full_id() {
        assert_eq!(unframe(&[0, 0, 0, 1, 2, 9]), Some((258, &[9u8][..])));
        assert_eq!(unframe(b"{\"a\":1}"), None);
        assert_eq!(unframe(&[0, 0, 1]), None);
    }
}
