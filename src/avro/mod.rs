//! Avro through a Confluent-compatible Schema Registry, on both sides.
//!
//! - Out: business events as Avro (`schemas/business-event.avsc`) in the
//!   Confluent wire format — magic byte 0, the schema id as 4 bytes big
//!   endian, the Avro binary datum ([`frame`], [`EventCodec`]).
//! - In: change events the MongoDB connector (`output.format.value=schema`
//!   with the AvroConverter) or Debezium (AvroConverter) wrote, recognised by
//!   the magic byte, decoded with the writer's schema fetched by id
//!   ([`registry::Registry`]) and turned into the JSON those connectors write
//!   with a JSON converter ([`to_json`], [`unwrap_change_stream`]), so the
//!   one set of decoders handles both.
//!
//! Pure except for `registry`, which does the HTTP.

pub mod registry;

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use serde_json::Value as Json;

use crate::machine::BusinessEvent;

/// The business event's schema, as kept in `schemas/`.
pub const BUSINESS_EVENT_SCHEMA: &str = include_str!("../../schemas/business-event.avsc");

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
pub async fn resolve(registry: &registry::Registry, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Resolved, registry::RegistryError> {
    let (fk, fv) = (key.and_then(unframe), value.and_then(unframe));
    if fk.is_none() && fv.is_none() {
        return Ok(Resolved::Plain);
    }
    let mut out = (None, None);
    for (which, f) in [(0, fk), (1, fv)] {
        let Some((id, datum)) = f else { continue };
        let schema = match registry.schema(id).await {
            Ok(s) => s,
            Err(e @ (registry::RegistryError::NotFound(_) | registry::RegistryError::Unusable(_))) => {
                return Ok(Resolved::Rejected(crate::decode::DecodeError::SchemaNotFound(e.to_string())));
            }
            Err(e) => return Err(e),
        };
        let value = match read_datum(&schema.parsed, datum) {
            Ok(v) => v,
            Err(reason) => return Ok(Resolved::Rejected(crate::decode::DecodeError::BadAvro { id, reason })),
        };
        if which == 0 {
            let mut json = to_json(&value);
            unwrap_key(&mut json);
            out.0 = Some(serde_json::to_vec(&json).expect("JSON values serialize"));
        } else {
            out.1 = Some(change_stream_json(&value));
        }
    }
    Ok(Resolved::Converted { key: out.0, value: out.1 })
}

/// How business events are written: JSON (the default) or Avro framed with
/// the schema id registered for each topic's subject.
#[derive(Clone, Debug)]
pub enum EventCodec {
    Json,
    Avro {
        /// The schema id for each topic events go to (one subject per topic
        /// under TopicNameStrategy; all the same under RecordNameStrategy).
        ids: std::collections::HashMap<String, u32>,
    },
}

impl EventCodec {
    /// The value bytes of `event`, encoded once for every topic it goes to.
    pub fn encode(&self, event: &BusinessEvent) -> Result<Encoded, String> {
        match self {
            EventCodec::Json => serde_json::to_vec(event).map(Encoded::Json).map_err(|e| e.to_string()),
            EventCodec::Avro { .. } => Ok(Encoded::Avro(encode_event(event))),
        }
    }

    /// The record value for `topic`.
    pub fn payload<'a>(&self, encoded: &'a Encoded, topic: &str) -> Result<std::borrow::Cow<'a, [u8]>, String> {
        Ok(match (self, encoded) {
            (_, Encoded::Json(b)) => std::borrow::Cow::Borrowed(b.as_slice()),
            (EventCodec::Avro { ids }, Encoded::Avro(datum)) => {
                let id = ids.get(topic).ok_or_else(|| format!("no schema id registered for topic {topic}"))?;
                std::borrow::Cow::Owned(frame(*id, datum))
            }
            (EventCodec::Json, Encoded::Avro(_)) => return Err("an Avro datum for a JSON codec".into()),
        })
    }
}

/// An event encoded once, before framing per topic.
pub enum Encoded {
    Json(Vec<u8>),
    Avro(Vec<u8>),
}

/// `e` as an Avro binary datum of `schemas/business-event.avsc`, written
/// directly: the schema is flat (strings, an enum, optional strings), and
/// this runs once per event on the hot path. A test holds it byte for byte
/// to apache-avro's own encoding of [`event_to_avro`].
pub fn encode_event(e: &BusinessEvent) -> Vec<u8> {
    fn long(out: &mut Vec<u8>, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        long(out, s.len() as i64);
        out.extend_from_slice(s.as_bytes());
    }
    fn optional(out: &mut Vec<u8>, s: &Option<String>) {
        match s {
            None => long(out, 0),
            Some(s) => {
                long(out, 1);
                string(out, s);
            }
        }
    }
    let mut out = Vec::with_capacity(256);
    string(&mut out, &e.event_id);
    long(&mut out, i64::from(event_type_index(e.event_type)));
    string(&mut out, &e.reservation_id);
    for field in [&e.property_id, &e.booking_status, &e.previous_booking_status, &e.room_number, &e.previous_room_number, &e.arrival_date, &e.departure_date, &e.previous_departure_date, &e.occurred_at, &e.source_position] {
        optional(&mut out, field);
    }
    out
}

/// The index of an event type among the schema's enum symbols.
fn event_type_index(name: &str) -> u32 {
    // Symbol 0 is UNKNOWN; the rest follow EventType::ALL's order (tested).
    crate::pipeline::EventType::ALL.iter().position(|t| t.name() == name).map_or(0, |i| i as u32 + 1)
}

fn opt(v: &Option<String>) -> Avro {
    match v {
        None => Avro::Union(0, Box::new(Avro::Null)),
        Some(s) => Avro::Union(1, Box::new(Avro::String(s.clone()))),
    }
}

/// A business event as a value of `schemas/business-event.avsc`.
pub fn event_to_avro(e: &BusinessEvent) -> Avro {
    Avro::Record(vec![
        ("eventId".into(), Avro::String(e.event_id.clone())),
        ("eventType".into(), Avro::Enum(event_type_index(e.event_type), e.event_type.to_owned())),
        ("reservationId".into(), Avro::String(e.reservation_id.clone())),
        ("propertyId".into(), opt(&e.property_id)),
        ("bookingStatus".into(), opt(&e.booking_status)),
        ("previousBookingStatus".into(), opt(&e.previous_booking_status)),
        ("roomNumber".into(), opt(&e.room_number)),
        ("previousRoomNumber".into(), opt(&e.previous_room_number)),
        ("arrivalDate".into(), opt(&e.arrival_date)),
        ("departureDate".into(), opt(&e.departure_date)),
        ("previousDepartureDate".into(), opt(&e.previous_departure_date)),
        ("occurredAt".into(), opt(&e.occurred_at)),
        ("sourcePosition".into(), opt(&e.source_position)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn business_event_schema() -> Schema {
        Schema::parse_str(BUSINESS_EVENT_SCHEMA).expect("schemas/business-event.avsc is valid Avro")
    }

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

    fn event() -> BusinessEvent {
        BusinessEvent {
            event_id: "e1".into(),
            event_type: "ROOM_CHANGED",
            reservation_id: "6502aa".into(),
            property_id: Some("P-OSL-01".into()),
            booking_status: Some("Arrived".into()),
            previous_booking_status: Some("Arrived".into()),
            room_number: Some("305".into()),
            previous_room_number: Some("101".into()),
            arrival_date: Some("2026-11-20T00:00:00Z".into()),
            departure_date: Some("2026-11-24T00:00:00Z".into()),
            previous_departure_date: None,
            occurred_at: Some("2026-11-21T09:14:03.120Z".into()),
            source_position: Some("7303:4".into()),
        }
    }

    #[test]
    fn the_schema_names_every_field_of_the_json_event_and_every_event_type() {
        let schema = business_event_schema();
        let Schema::Record(record) = &schema else { panic!("a record") };
        let json = serde_json::to_value(event()).unwrap();
        let json_fields: Vec<&String> = json.as_object().unwrap().keys().collect();
        let avro_fields: Vec<&String> = record.fields.iter().map(|f| &f.name).collect();
        assert_eq!(avro_fields.len(), json_fields.len());
        for f in json_fields {
            assert!(avro_fields.contains(&f), "{f} missing from schemas/business-event.avsc");
        }
        let Schema::Enum(types) = &record.fields[1].schema else { panic!("eventType is an enum") };
        assert_eq!(types.symbols[0], "UNKNOWN");
        assert_eq!(types.default.as_deref(), Some("UNKNOWN"));
        for (i, t) in crate::pipeline::EventType::ALL.iter().enumerate() {
            assert_eq!(types.symbols[i + 1], t.name(), "symbol order");
        }
    }

    #[test]
    fn an_event_round_trips_through_the_wire_format_and_reads_as_its_json_form() {
        let schema = business_event_schema();
        let codec = EventCodec::Avro { ids: [("out".to_string(), 7u32)].into() };
        let encoded = codec.encode(&event()).unwrap();
        let payload = codec.payload(&encoded, "out").unwrap();
        assert_eq!(&payload[..5], &[0, 0, 0, 0, 7]);
        let (id, datum) = unframe(&payload).unwrap();
        assert_eq!(id, 7);
        let back = to_json(&read_datum(&schema, datum).unwrap());
        assert_eq!(back, serde_json::to_value(event()).unwrap());
        assert!(codec.payload(&encoded, "elsewhere").is_err());
    }

    #[test]
    fn the_direct_encoding_is_apache_avros_byte_for_byte() {
        let schema = business_event_schema();
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build().unwrap();
        let mut e = event();
        for (i, t) in crate::pipeline::EventType::ALL.iter().enumerate() {
            e.event_type = t.name();
            e.previous_room_number = (i % 2 == 0).then(|| "1".repeat(i * 30));
            e.event_id = "x".repeat(i * 40);
            assert_eq!(encode_event(&e), writer.write_value_to_vec(event_to_avro(&e)).unwrap(), "{}", t.name());
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
