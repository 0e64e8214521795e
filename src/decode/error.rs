//! What can be wrong with a record ([`DecodeError`], each kind permanent)
//! and the bounds on what one record may cost ([`Limits`]).

use crate::change::InvalidValue;

/// Why a record cannot be processed. Every variant is permanent: the same
/// bytes fail the same way on every retry, so the record belongs in the
/// dead-letter path, never in a retry loop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the value is not UTF-8 text (byte {0} is invalid); connectors write JSON as UTF-8, so check the producer's value.converter")]
    NotUtf8(usize),
    #[error("the value is not valid JSON: {0}")]
    NotJson(String),
    #[error("the value is not a change event: {0}")]
    NotAChange(String),
    #[error("no reservation id: {0}")]
    MissingId(String),
    #[error("the reservation id is unusable: {0}")]
    InvalidId(String),
    #[error("unknown operation {0}; expected insert, update, replace or delete (MongoDB) or c, u, d, r (Debezium)")]
    UnknownOperation(String),
    #[error("malformed change event: {0}")]
    Malformed(String),
    /// A mapped field holds a value of the wrong type (see [`InvalidValue`]).
    #[error("invalid value: {0}")]
    InvalidValue(InvalidValue),
    #[error("this is a {found} record but --format {expected} was given; use --format auto or the matching format")]
    WrongFormat { expected: &'static str, found: &'static str },
    #[error("the record is {size} bytes, over the limit of {limit}; raise max_record_bytes if such records are legitimate")]
    TooLarge { size: usize, limit: usize },
    #[error("the value nests deeper than {limit} levels; raise max_nesting_depth (at most 128) if such records are legitimate")]
    TooDeep { limit: usize },
    #[error(
        "the value is in the Confluent Schema Registry wire format (magic byte 0, schema id {0}), and no schema registry is configured \
         to resolve that schema; point the connector's value.converter at JSON, or configure a registry"
    )]
    UnknownSchema(u32),
    /// The registry has no schema of this id (it answered 404), or what it
    /// has cannot be used.
    #[error("{0}")]
    SchemaNotFound(String),
    /// The bytes after the wire-format header are not a datum of the schema they name.
    #[error("the value is framed for schema id {id} but is not a datum of that schema: {reason}")]
    BadAvro { id: u32, reason: String },
}

impl DecodeError {
    /// A short, stable name for logs, counters and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotUtf8(_) => "not-utf8",
            DecodeError::NotJson(_) => "not-json",
            DecodeError::NotAChange(_) => "not-a-change",
            DecodeError::MissingId(_) => "missing-id",
            DecodeError::InvalidId(_) => "invalid-id",
            DecodeError::UnknownOperation(_) => "unknown-operation",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::InvalidValue(_) => "invalid-value",
            DecodeError::WrongFormat { .. } => "wrong-format",
            DecodeError::TooLarge { .. } => "too-large",
            DecodeError::TooDeep { .. } => "too-deep",
            DecodeError::UnknownSchema(_) | DecodeError::SchemaNotFound(_) => "unknown-schema",
            DecodeError::BadAvro { .. } => "bad-avro",
        }
    }

    /// Decode errors never go away by retrying the same bytes.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

pub(super) fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError::NotJson(e.to_string())
}

/// Bounds on what one record may cost. A record beyond them is rejected
/// (dead-lettered by the service) with that reason, before it is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Key plus value, in bytes.
    pub max_record_bytes: usize,
    /// Objects and arrays inside each other, counting the outermost as 1.
    pub max_nesting_depth: usize,
}

/// serde_json refuses deeper values anyway (its recursion limit).
pub const MAX_NESTING_DEPTH: usize = 128;

impl Default for Limits {
    /// 1 MiB: a reservation change event is a few KB; MongoDB's own document
    /// limit is 16 MiB, so raise it if full documents carry large blobs.
    /// 64 levels: far beyond any reservation document, far below a stack risk.
    fn default() -> Self {
        Limits { max_record_bytes: 1 << 20, max_nesting_depth: 64 }
    }
}

/// Whether `text`, as JSON, nests objects and arrays deeper than `limit`.
pub(super) fn nests_deeper_than(text: &str, limit: usize) -> bool {
    let bytes = text.as_bytes();
    // Nesting deeper than `limit` needs more than `limit` opening brackets.
    // Counting them (strings included: an overcount only costs the exact
    // scan) vectorizes; a typical event has a dozen, so the exact scan,
    // a branch per byte, runs only for the rare record with many.
    let openers = bytes.iter().fold(0usize, |n, &b| n + usize::from((b == b'{') | (b == b'[')));
    if openers <= limit {
        return false;
    }
    // One pass, strings skipped; stops at the first excess.
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}
