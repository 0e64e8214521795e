//! The dead-letter record: what `resevent run` writes for a record it can
//! never process, and what `resevent dlq` reads back.
//!
//! A dead letter carries the original record's key, value and headers byte
//! for byte (so a re-injected record is the record that failed), plus these
//! headers, all UTF-8 text. This layout is a contract with operators' tools:
//! add headers, never rename one. [`build`] makes one; [`StoredDeadLetter`]
//! reads one back by these names (for `dlq`); the one size limit is here too.

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

/// One dead letter as read back (`resevent dlq`): the original record plus
/// resevent's headers, borrowed from the consumed message.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter<'a> {
    pub partition: i32,
    pub offset: i64,
    /// The dead-letter record's own timestamp, when `resevent.time` is missing.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Every header in record order: the original record's, then resevent's.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl<'a> StoredDeadLetter<'a> {
    pub fn from_message<M: Message>(m: &'a M) -> StoredDeadLetter<'a> {
        StoredDeadLetter {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key(),
            value: m.payload(),
            headers: m.headers().map(|h| h.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default(),
        }
    }

    /// A resevent header as text. The last one counts: resevent appends its
    /// headers after the original record's.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().rev().find(|(k, _)| *k == name).and_then(|(_, v)| std::str::from_utf8((*v)?).ok())
    }

    pub fn kind(&self) -> &'a str {
        self.header(KIND).unwrap_or("unknown")
    }

    pub fn original_topic(&self) -> Option<&'a str> {
        self.header(ORIGINAL_TOPIC)
    }

    /// The original record's (partition, offset).
    pub fn original_position(&self) -> Option<(i32, i64)> {
        Some((self.header(ORIGINAL_PARTITION)?.parse().ok()?, self.header(ORIGINAL_OFFSET)?.parse().ok()?))
    }

    /// When it was dead-lettered: `resevent.time`, else the record's timestamp.
    pub fn dead_lettered_at(&self) -> Option<i64> {
        self.header(TIME).and_then(crate::time::parse_millis).or(self.timestamp)
    }

    /// The original record's headers: all but resevent's.
    pub fn original_headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + '_ {
        self.headers.iter().copied().filter(|(k, _)| !is_resevent_header(k))
    }

    /// The headers a replay of it carries: the original ones (an earlier
    /// replay's trail replaced), then where this replay took it from.
    pub fn replay_headers(&self, dead_letter_topic: &str) -> OwnedHeaders {
        let from = format!("{dead_letter_topic}/{}/{}", self.partition, self.offset);
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (key, value) in self.original_headers().filter(|(k, _)| *k != REPLAYED_FROM) {
            headers = headers.insert(Header { key, value });
        }
        headers.insert(Header { key: REPLAYED_FROM, value: Some(from.as_str()) })
    }
}
