//! How a business event becomes a record value: JSON (PRODUCT.md's form)
//! or Avro (`schemas/business-event.avsc`) framed with the schema id
//! registered for each topic's subject. Pure.

use apache_avro::types::Value as Avro;

use crate::decode::avro::frame;
use crate::machine::BusinessEvent;

/// The business event's schema, as kept in `schemas/`.
pub const BUSINESS_EVENT_SCHEMA: &str = include_str!("../../schemas/business-event.avsc");

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
    use crate::decode::avro::{read_datum, to_json, unframe};
    use apache_avro::Schema;

    fn business_event_schema() -> Schema {
        Schema::parse_str(BUSINESS_EVENT_SCHEMA).expect("schemas/business-event.avsc is valid Avro")
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
            fired_by: None,
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
}
