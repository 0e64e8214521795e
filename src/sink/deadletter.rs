//! The dead-letter record: what `resevent run` writes for a record it can
//! never process, and what `resevent dlq` reads back.
//!
//! A dead letter carries the original record's key, value and headers byte
//! for byte (so a re-injected record is the record that failed), plus these
//! headers, all UTF-8 text. This layout is a contract with operators' tools:
//! add headers, never rename one. [`build`] makes one; `dlq` reads them back
//! by these names; the one size limit is here too.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::decode::DecodeError;

/// Stable error kind, e.g. `not-json`, `missing-id`, `too-large` (see `DecodeError::kind`).
pub const KIND: &str = "resevent.error.kind";
/// A person-readable reason that names the input and the fix.
pub const MESSAGE: &str = "resevent.error.message";
/// Where the record was read: topic, partition, offset.
pub const ORIGINAL_TOPIC: &str = "resevent.original.topic";
pub const ORIGINAL_PARTITION: &str = "resevent.original.partition";
pub const ORIGINAL_OFFSET: &str = "resevent.original.offset";
/// The original record's timestamp, milliseconds since the epoch (absent if it had none).
pub const ORIGINAL_TIMESTAMP: &str = "resevent.original.timestamp";
/// The resevent version that dead-lettered it.
pub const VERSION: &str = "resevent.version";
/// When it was dead-lettered, RFC 3339 UTC.
pub const TIME: &str = "resevent.time";

/// Set (to the original value's size and why) only when the original value
/// was too large to carry: over `DEAD_LETTER_MAX_VALUE_BYTES`, the value is
/// left out and the record must be fetched from the original topic by offset.
pub const VALUE_OMITTED: &str = "resevent.original.value.omitted";


/// The largest original value a dead letter carries (the dead-letter topic is
/// created with `max.message.bytes` of 64 MiB; headers and key need room too).
pub const DEAD_LETTER_MAX_VALUE_BYTES: usize = 63 << 20;

/// On a record `resevent dlq replay` re-injected: `<dead-letter topic>/<partition>/<offset>`
/// of the dead letter it came from, so the trail stays visible.
pub const REPLAYED_FROM: &str = "resevent.replayed.from";

/// Every header resevent adds to a dead letter; a re-injected record drops these and keeps the rest.
pub const ALL: [&str; 9] = [KIND, MESSAGE, ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, ORIGINAL_TIMESTAMP, VERSION, TIME, VALUE_OMITTED];

/// Whether a header is one resevent added (as opposed to one of the original record's).
pub fn is_resevent_header(key: &str) -> bool {
    ALL.contains(&key)
}

/// The dead-letter topic of an input topic: `configured` if set, else `<input>.dlt`.
pub fn topic_for(input: &str, configured: Option<&str>) -> String {
    match configured {
        Some(t) => t.to_string(),
        None => format!("{input}.dlt"),
    }
}

/// A dead letter ready to send: the original key and value (the value left
/// out, with a header saying why, past [`DEAD_LETTER_MAX_VALUE_BYTES`]), the
/// original headers plus resevent's, to the original partition number.
pub struct DeadLetter<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: OwnedHeaders,
    pub partition: i32,
}

/// The dead letter of record `m`, which failed with `error`.
pub fn build<'a>(m: &'a impl Message, error: &DecodeError) -> DeadLetter<'a> {
    let mut headers = OwnedHeaders::new();
    if let Some(h) = m.headers() {
        for h in h.iter() {
            headers = headers.insert(Header { key: h.key, value: h.value });
        }
    }
    // Header values are copied in, so temporaries serve.
    headers = headers
        .insert(Header { key: KIND, value: Some(error.kind()) })
        .insert(Header { key: MESSAGE, value: Some(&error.to_string()) })
        .insert(Header { key: ORIGINAL_TOPIC, value: Some(m.topic()) })
        .insert(Header { key: ORIGINAL_PARTITION, value: Some(&m.partition().to_string()) })
        .insert(Header { key: ORIGINAL_OFFSET, value: Some(&m.offset().to_string()) });
    if let Some(timestamp) = m.timestamp().to_millis() {
        headers = headers.insert(Header { key: ORIGINAL_TIMESTAMP, value: Some(&timestamp.to_string()) });
    }
    headers = headers
        .insert(Header { key: VERSION, value: Some(env!("CARGO_PKG_VERSION")) })
        .insert(Header { key: TIME, value: Some(&crate::time::format_millis(crate::time::now_millis())) });
    let value = m.payload();
    let omitted = value.filter(|v| v.len() > DEAD_LETTER_MAX_VALUE_BYTES).map(|v| format!("{} bytes, over the dead-letter limit of {}; read it from the original topic at the offset above", v.len(), DEAD_LETTER_MAX_VALUE_BYTES));
    if let Some(why) = &omitted {
        headers = headers.insert(Header { key: VALUE_OMITTED, value: Some(why.as_str()) });
    }
    DeadLetter { key: m.key(), value: value.filter(|_| omitted.is_none()), headers, partition: m.partition() }
}
