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

/// What happened to the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A new document, as it was at the change.
    Insert(DocumentValues),
    /// The whole document replaced, as it was at the change.
    Replace(DocumentValues),
    /// A delta; `lookup` is the full document looked up later (updateLookup,
    /// Debezium `after`), which may be newer than the change.
    Update { delta: Delta, lookup: Option<DocumentValues> },
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
        match (self, stored) {
            (SourcePosition::Cluster { t, i }, SourcePosition::Cluster { t: st, i: si }) => (t, i) > (st, si),
            (SourcePosition::Input(a), SourcePosition::Input(b)) => a > b,
            _ => true,
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
}
