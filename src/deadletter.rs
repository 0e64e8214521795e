//! The dead-letter record: what `resevent run` writes for a record it can
//! never process, and what `resevent dlq` reads back.
//!
//! A dead letter carries the original record's key, value and headers byte
//! for byte (so a re-injected record is the record that failed), plus these
//! headers, all UTF-8 text. This layout is a contract with operators' tools:
//! add headers, never rename one.

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
