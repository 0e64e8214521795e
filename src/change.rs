//! The normalized change: the one shape every decoder produces and the state
//! machine consumes, whatever connector wrote the record.
//!
//! Owns the vocabulary shared by decoders, the table and the store (fields,
//! operations, source positions). No parsing and no I/O here.

use std::fmt;

/// The reservation fields resevent tracks, besides its id and status. Their
/// document paths come from the pipeline file, since every PMS names them
/// differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Property = 0,
    Room = 1,
    Arrival = 2,
    Departure = 3,
}

impl Field {
    pub const ALL: [Field; 4] = [Field::Property, Field::Room, Field::Arrival, Field::Departure];

    /// The name used in pipeline files (`changed = ["room"]`) and messages.
    pub fn name(self) -> &'static str {
        match self {
            Field::Property => "property",
            Field::Room => "room",
            Field::Arrival => "arrival",
            Field::Departure => "departure",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether values of this field are dates (normalized to RFC 3339 UTC).
    pub fn is_date(self) -> bool {
        matches!(self, Field::Arrival | Field::Departure)
    }
}

/// Where the tracked values live in a reservation document (dotted paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPaths {
    pub id: String,
    pub status: String,
    /// Indexed by `Field as usize`.
    pub fields: [String; 4],
    /// A Debezium ExtractNewDocumentState document that is not a delete is
    /// a partial update (`[input] debezium_flattened_updates = "partial"`,
    /// for `capture.mode=change_streams`): the fields it holds are set, the
    /// others kept. Otherwise (`"full"`) it is the whole document.
    pub partial_flattened: bool,
}

impl Default for FieldPaths {
    fn default() -> Self {
        FieldPaths {
            id: "_id".into(),
            status: "bookingStatus".into(),
            fields: ["propertyId".into(), "roomNumber".into(), "arrivalDate".into(), "departureDate".into()],
            partial_flattened: false,
        }
    }
}

impl FieldPaths {
    pub(crate) fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str()).chain(std::iter::once(self.status.as_str())).chain(self.fields.iter().map(String::as_str))
    }

    /// Whether a document key (or an `updatedFields` dotted path) can hold a
    /// tracked value: it is a tracked path or a prefix of one.
    pub(crate) fn relevant(&self, key: &str) -> bool {
        // Asked for every key of every document; a plain loop, not `all()`'s
        // chained iterator, which did not optimize as well.
        covers(key, &self.id) || covers(key, &self.status) || self.fields.iter().any(|p| covers(key, p))
    }
}

/// Whether `key` is `path` or an ancestor of it (`stay` covers `stay.room`).
pub(crate) fn covers(key: &str, path: &str) -> bool {
    path == key || (path.len() > key.len() && path.starts_with(key) && path.as_bytes()[key.len()] == b'.')
}

/// The reservation's values as a document states them, already normalized to
/// text (numbers in decimal, dates in RFC 3339 UTC). `None` = absent or null.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocumentValues {
    /// The raw PMS status value (`"Arrived"`), before the pipeline maps it.
    pub status: Option<String>,
    /// Indexed by `Field as usize`.
    pub fields: [Option<String>; 4],
}

impl DocumentValues {
    pub fn get(&self, field: Field) -> Option<&str> {
        self.fields[field as usize].as_deref()
    }
}

/// What an update does to one tracked value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Edit {
    /// The update does not touch it.
    #[default]
    Keep,
    /// `updatedFields` sets it (a JSON null counts as removal).
    Set(String),
    /// `removedFields` (or a null) removes it.
    Remove,
}

/// An update's delta, restricted to what resevent tracks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub status: Edit,
    /// Indexed by `Field as usize`.
    pub fields: [Edit; 4],
}

/// A mapped field holding a value that is not of its type: a date that is
/// not a date MongoDB can store and RFC 3339 can write, a room or property
/// that is a document, an array or a boolean. Such a value must never reach a
/// business event, so the change that carries it is rejected (dead-lettered,
/// kind `invalid-value`) and the stored state stays as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidValue {
    pub field: Field,
    /// The field's path in the document (`stay.room`), as the pipeline maps it.
    pub path: String,
    /// Which part of the record held it: `document`, `fullDocument`,
    /// `updatedFields`, …
    pub place: &'static str,
    /// The value as compact JSON, shortened to [`InvalidValue::SHOWN`] characters.
    pub value: String,
    /// What the field accepts, for the message.
    pub expected: &'static str,
}

impl InvalidValue {
    /// How much of a bad value a message quotes.
    pub const SHOWN: usize = 80;

    /// `text` cut to [`InvalidValue::SHOWN`] characters, marked when cut.
    pub fn shorten(text: &str) -> String {
        match text.char_indices().nth(Self::SHOWN) {
            Some((at, _)) => format!("{}…", &text[..at]),
            None => text.to_owned(),
        }
    }
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} in {}) is {}, not {}", self.field.name(), self.path, self.place, self.value, self.expected)
    }
}

/// What happened to the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A new document, as it was at the change.
    Insert(DocumentValues),
    /// The whole document replaced, as it was at the change.
    Replace(DocumentValues),
    /// A delta; `lookup` is the full document looked up later (updateLookup,
    /// Debezium `after`), which may be newer than the change. It is read only
    /// to seed a reservation seen for the first time, so a bad value in it is
    /// kept as the error it is (`Err`) and rejects the change only then.
    Update { delta: Delta, lookup: Option<Result<DocumentValues, InvalidValue>> },
    /// The document is gone.
    Delete,
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Insert(_) => "insert",
            Operation::Replace(_) => "replace",
            Operation::Update { .. } => "update",
            Operation::Delete => "delete",
        }
    }
}

/// Where a change sits in the order of changes to its reservation.
///
/// `Cluster` is MongoDB's cluster time (seconds, increment): the connector's
/// `clusterTime`, and Debezium's `source.ts_ms / 1000` with `source.ord`, which
/// are the same pair. `Input` is the position of the record in its input
/// (Kafka offset, or line number in `replay`), used only for records that carry
/// no source position at all (full-document-only values): it still makes a
/// re-read of the same input a no-op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourcePosition {
    Cluster { t: u32, i: u32 },
    Input(u64),
}

impl SourcePosition {
    /// Whether `self` comes after `stored`. Positions of different kinds cannot
    /// be ordered; the newer record wins, which is what a connector switch
    /// (say, to full-document-only output) needs.
    pub fn is_after(self, stored: SourcePosition) -> bool {
        !matches!(self.compare(stored), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal))
    }

    /// How `self` orders against `other`: `None` when they are of different
    /// kinds and cannot be ordered.
    pub fn compare(self, other: SourcePosition) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (SourcePosition::Cluster { t, i }, SourcePosition::Cluster { t: ot, i: oi }) => Some((t, i).cmp(&(ot, oi))),
            (SourcePosition::Input(a), SourcePosition::Input(b)) => Some(a.cmp(&b)),
            _ => None,
        }
    }
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourcePosition::Cluster { t, i } => write!(f, "{t}:{i}"),
            SourcePosition::Input(n) => write!(f, "offset:{n}"),
        }
    }
}

/// What tells one change apart from another at the same source position.
///
/// The changes of one multi-document transaction all carry the commit's
/// cluster time, so the position alone cannot tell a re-delivered change from
/// the next statement of the same transaction. The MongoDB connector's resume
/// token (`_id`) is unique per change; Debezium carries none, so its identity
/// is the operation, what it changed (the delta, or the inserted document, as
/// resevent reads them) and the transaction (`lsid`, `txnNumber`).
///
/// A 64-bit digest (the first 8 bytes of SHA-256 over those parts), stable
/// across versions and machines because it is stored with the state and in
/// the changelog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChangeId(pub u64);

impl ChangeId {
    /// The digest of `parts`, each length-prefixed so that no two different
    /// part lists hash the same bytes.
    pub fn of(parts: &[&[u8]]) -> ChangeId {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        let d = h.finalize();
        ChangeId(u64::from_be_bytes(d[..8].try_into().expect("SHA-256 has 32 bytes")))
    }

    /// The identity of a change that carries no token of its own: its
    /// operation as resevent reads it (tracked values only, so the same change
    /// written in another JSON dialect is the same change) and its
    /// transaction, when it has one.
    pub fn of_operation(operation: &Operation, txn: Option<(&str, &str)>) -> ChangeId {
        let mut buf: Vec<u8> = Vec::with_capacity(128);
        let text = |buf: &mut Vec<u8>, v: Option<&str>| match v {
            None => buf.push(0),
            Some(s) => {
                buf.push(1);
                buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
                buf.extend_from_slice(s.as_bytes());
            }
        };
        let edit = |buf: &mut Vec<u8>, e: &Edit| match e {
            Edit::Keep => buf.push(0),
            Edit::Remove => buf.push(1),
            Edit::Set(s) => {
                buf.push(2);
                buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
                buf.extend_from_slice(s.as_bytes());
            }
        };
        match operation {
            Operation::Insert(d) | Operation::Replace(d) => {
                buf.push(if matches!(operation, Operation::Insert(_)) { b'i' } else { b'r' });
                text(&mut buf, d.status.as_deref());
                for f in &d.fields {
                    text(&mut buf, f.as_deref());
                }
            }
            Operation::Update { delta, .. } => {
                // The looked-up document is left out on purpose: it is read
                // when the connector gets to the change, so a re-delivery may
                // carry a different one.
                buf.push(b'u');
                edit(&mut buf, &delta.status);
                for e in &delta.fields {
                    edit(&mut buf, e);
                }
            }
            Operation::Delete => buf.push(b'd'),
        }
        match txn {
            Some((lsid, txn_number)) => ChangeId::of(&[b"op", &buf, lsid.as_bytes(), txn_number.as_bytes()]),
            None => ChangeId::of(&[b"op", &buf]),
        }
    }
}

/// One change to one reservation, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The document's `_id` as text (ObjectId hex, string, decimal number).
    pub reservation_id: String,
    pub operation: Operation,
    /// `None` when the record carries none; the caller fills in an `Input`
    /// position before the state machine sees it.
    pub position: Option<SourcePosition>,
    /// When the change happened (epoch ms): `wallTime`, cluster time or
    /// Debezium's `source.ts_ms`.
    pub occurred_at_ms: Option<i64>,
    /// A snapshot read (Debezium `op: r`) or copy-existing record: it seeds
    /// state and emits nothing.
    pub snapshot: bool,
    /// Tells this change apart from others at the same position (see [`ChangeId`]).
    pub identity: ChangeId,
    /// An update whose looked-up document was left unread
    /// (`Decoder::decode_deferring_lookups`): `lookup` is `None` here but the
    /// record has one, which a reservation seen for the first time needs.
    pub lookup_deferred: bool,
}
