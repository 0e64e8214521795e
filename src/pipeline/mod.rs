//! The pipeline file: field mapping, status values, property allowlist and the
//! state-machine table, read from TOML and checked once into a typed
//! [`Pipeline`].
//!
//! Owns every rule about what a valid table is; a bad file is an error that
//! names the row and the fix. It does not apply the table (that is
//! `machine`) and does no I/O beyond reading the file it is given.
//!
//! - this file: the table's vocabulary (states, event types, field sets, the
//!   allowlist), the checked [`Pipeline`] and `describe`;
//! - `file`: the TOML rows as serde reads them, still text;
//! - `check`: rows to [`Pipeline`], one section at a time, every problem
//!   collected with its row number and fix.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::path::Path;

use crate::change::Field;
use crate::change::FieldPaths;
use crate::time::format_duration;

mod check;
mod file;

/// The pipeline built into the binary, used when no file is found.
pub const DEFAULT_PIPELINE: &str = include_str!("../../pipelines/reservations.toml");

/// A reservation's state in the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Never seen, or deleted.
    #[default]
    None = 0,
    NotArrived = 1,
    InHouse = 2,
    Departed = 3,
}

impl State {
    pub const ALL: [State; 4] = [State::None, State::NotArrived, State::InHouse, State::Departed];

    pub fn name(self) -> &'static str {
        match self {
            State::None => "NONE",
            State::NotArrived => "NOT_ARRIVED",
            State::InHouse => "IN_HOUSE",
            State::Departed => "DEPARTED",
        }
    }

    pub fn from_name(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn from_u8(b: u8) -> Option<State> {
        State::ALL.get(usize::from(b)).copied()
    }
}

/// A business event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    CheckedIn,
    RoomChanged,
    DepartureChanged,
    CheckedOut,
    AccidentalCheckout,
    CheckinReversed,
    /// Fired by a timer: the guest did not arrive (`[[timer]]` rows).
    NoShow,
    /// Fired by a timer: the guest stayed past the departure date.
    Overstay,
}

impl EventType {
    /// In the order of the Avro enum's symbols after UNKNOWN (new types are
    /// appended, never inserted: the symbols' order is part of the schema).
    pub const ALL: [EventType; 8] = [
        EventType::CheckedIn,
        EventType::RoomChanged,
        EventType::DepartureChanged,
        EventType::CheckedOut,
        EventType::AccidentalCheckout,
        EventType::CheckinReversed,
        EventType::NoShow,
        EventType::Overstay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventType::CheckedIn => "CHECKED_IN",
            EventType::RoomChanged => "ROOM_CHANGED",
            EventType::DepartureChanged => "DEPARTURE_CHANGED",
            EventType::CheckedOut => "CHECKED_OUT",
            EventType::AccidentalCheckout => "ACCIDENTAL_CHECKOUT",
            EventType::CheckinReversed => "CHECKIN_REVERSED",
            EventType::NoShow => "NO_SHOW",
            EventType::Overstay => "OVERSTAY",
        }
    }

    /// Every event type's name, comma-separated, for messages that list them.
    pub fn known_names() -> String {
        EventType::ALL.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.name() == name)
    }

    /// A stable one-byte code (the position in [`EventType::ALL`]), for
    /// stored state.
    pub fn code(self) -> u8 {
        EventType::ALL.iter().position(|t| *t == self).expect("every type is in ALL") as u8
    }

    pub fn from_code(code: u8) -> Option<EventType> {
        EventType::ALL.get(usize::from(code)).copied()
    }
}

/// A set of tracked fields, as a bit mask over `Field as usize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FieldSet(u8);

impl FieldSet {
    pub fn insert(&mut self, f: Field) {
        self.0 |= 1 << f as u8;
    }
    pub fn contains(self, f: Field) -> bool {
        self.0 & (1 << f as u8) != 0
    }
    pub fn is_subset(self, other: FieldSet) -> bool {
        self.0 & !other.0 == 0
    }
    pub fn union(self, other: FieldSet) -> FieldSet {
        FieldSet(self.0 | other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    fn names(self) -> Vec<&'static str> {
        Field::ALL.into_iter().filter(|f| self.contains(*f)).map(Field::name).collect()
    }
}

impl fmt::Display for FieldSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.names().join(", "))
    }
}

/// Which properties get business events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowlist {
    Every,
    Only(Vec<String>),
}

impl Allowlist {
    /// As a person reads it: `every property`, or the list.
    pub fn describe(&self) -> String {
        match self {
            Allowlist::Every => "every property".into(),
            Allowlist::Only(l) if l.is_empty() => "no property".into(),
            Allowlist::Only(l) => l.join(", "),
        }
    }

    pub fn allows(&self, property: Option<&str>) -> bool {
        match self {
            Allowlist::Every => true,
            Allowlist::Only(list) => property.is_some_and(|p| list.iter().any(|x| x == p)),
        }
    }

    /// `*` or a comma-separated list, as `--allow-properties` takes it.
    pub fn parse_list(text: &str) -> Allowlist {
        let items: Vec<String> = text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        if items.iter().any(|i| i == "*") { Allowlist::Every } else { Allowlist::Only(items) }
    }
}

/// One checked row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-based position in the file, for messages.
    pub row: usize,
    pub from: State,
    pub to: State,
    pub changed: FieldSet,
    pub emit: Vec<EventType>,
}

/// Extra routing: events of these types also go to `topic`, besides the
/// business topic that carries every event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub topic: String,
    pub events: Vec<EventType>,
}

/// A timer row: `event` fires once stream time reaches the stored date
/// `field` plus `after`, while the reservation is in `state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerRow {
    /// 1-based position among the `[[timer]]` rows, for messages.
    pub row: usize,
    pub event: EventType,
    pub state: State,
    /// A date field: arrival or departure.
    pub field: Field,
    /// Milliseconds after the date (negative: before it).
    pub after_ms: i64,
}

/// The checked pipeline.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// Timer rows in file order; each event type at most once.
    pub timers: Vec<TimerRow>,
    /// A departed or deleted reservation is removed from state this long
    /// (stream time) after the change that departed or deleted it.
    pub retention_ms: Option<i64>,
    /// Extra topics for some event types, in file order.
    pub routes: Vec<Route>,
    pub paths: FieldPaths,
    /// PMS status value → state.
    pub statuses: HashMap<String, State>,
    pub allowlist: Allowlist,
    /// All rules in file order (for `show`).
    pub rules: Vec<Rule>,
    /// Row indexes into `rules` for each (from, to), in file order.
    by_transition: [[Vec<usize>; 4]; 4],
}

impl Pipeline {
    /// The first rule for this transition whose `changed` fields all changed.
    pub fn rule_for(&self, from: State, to: State, changed: FieldSet) -> Option<&Rule> {
        self.by_transition[from as usize][to as usize].iter().map(|&i| &self.rules[i]).find(|r| r.changed.is_subset(changed))
    }

    /// Whether anything runs on stream time (timers or retention).
    pub fn has_timers(&self) -> bool {
        !self.timers.is_empty() || self.retention_ms.is_some()
    }

    /// What the due-time index depends on, as one number: the index built for
    /// one signature is rebuilt when the pipeline in force has another.
    pub fn timer_signature(&self) -> u64 {
        Self::signature_of(&self.timers, self.retention_ms)
    }

    /// The signature of a pipeline without timer rows or retention: what a
    /// store that never had timers was (implicitly) built for.
    pub fn untimed_signature() -> u64 {
        Self::signature_of(&[], None)
    }

    fn signature_of(timers: &[TimerRow], retention_ms: Option<i64>) -> u64 {
        let mut text = String::new();
        for t in timers {
            let _ = write!(text, "{}:{}:{}:{};", t.event.name(), t.state.name(), t.field.name(), t.after_ms);
        }
        let _ = write!(text, "retention:{retention_ms:?}");
        let digest = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes());
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    pub fn builtin() -> Pipeline {
        Pipeline::parse(DEFAULT_PIPELINE, "built-in pipeline").expect("the built-in pipeline is valid (tested)")
    }

    /// Reads and checks a pipeline file.
    pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Pipeline::parse(&text, &path.display().to_string())
    }

    /// Parses and checks pipeline text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Pipeline, PipelineError> {
        let file = toml::from_str::<file::PipelineFile>(text).map_err(|e| PipelineError::Syntax { origin: origin.into(), reason: e.to_string() })?;
        check::compile(file).map_err(|problems| PipelineError::Invalid { origin: origin.into(), problems })
    }

    /// The table as a person reads it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let p = &self.paths;
        let _ = writeln!(out, "Fields: id={} status={} property={} room={} arrival={} departure={}", p.id, p.status, p.fields[0], p.fields[1], p.fields[2], p.fields[3]);
        let statuses: BTreeMap<_, _> = self.statuses.iter().collect();
        let _ = writeln!(out, "Statuses: {}", statuses.iter().map(|(k, v)| format!("{k:?} → {}", v.name())).collect::<Vec<_>>().join(", "));
        let _ = match &self.allowlist {
            Allowlist::Every => writeln!(out, "Events for: every property"),
            Allowlist::Only(l) => writeln!(out, "Events for: {}", l.join(", ")),
        };
        let _ = writeln!(out, "\n{:>3}  {:<12} {:<12} {:<22} emits", "row", "from", "to", "when changed");
        for r in &self.rules {
            let when = if r.changed.is_empty() { "(any change)".to_string() } else { r.changed.names().join(" and ") };
            let emits = if r.emit.is_empty() { "nothing (state is recorded)".to_string() } else { r.emit.iter().map(|e| e.name()).collect::<Vec<_>>().join(" then ") };
            let _ = writeln!(out, "{:>3}  {:<12} {:<12} {:<22} {}", r.row, r.from.name(), r.to.name(), when, emits);
        }
        let _ = writeln!(out, "\nFor each change the first matching row decides; a change no row matches emits nothing.");
        for r in &self.routes {
            let _ = writeln!(out, "Also to topic {}: {}", r.topic, r.events.iter().map(|e| e.name()).collect::<Vec<_>>().join(", "));
        }
        for t in &self.timers {
            let _ = writeln!(out, "Timer {}: {} while {}, when stream time reaches {} {}", t.row, t.event.name(), t.state.name(), t.field.name(), format_offset(t.after_ms));
        }
        if let Some(r) = self.retention_ms {
            let _ = writeln!(out, "Retention: a departed or deleted reservation leaves state {} after that change (stream time)", format_duration(r));
        }
        out
    }
}

/// Why a pipeline file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot read pipeline file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{origin} is not a valid pipeline file: {reason}")]
    Syntax { origin: String, reason: String },
    #[error("{origin} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid { origin: String, problems: Vec<String> },
}

fn format_offset(ms: i64) -> String {
    if ms < 0 { format!("- {}", &format_duration(ms)[1..]) } else { format!("+ {}", format_duration(ms)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_rules(rules: &str) -> Result<Pipeline, PipelineError> {
        let text = format!("[fields]\n[statuses]\n\"Arrived\" = \"IN_HOUSE\"\n{rules}");
        Pipeline::parse(&text, "test.toml")
    }

    fn problems(rules: &str) -> String {
        match with_rules(rules) {
            Ok(_) => panic!("expected the pipeline to be rejected:\n{rules}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_builtin_pipeline_is_valid_and_matches_the_product_table() {
        let p = Pipeline::builtin();
        assert_eq!(p.rules.len(), 12);
        assert_eq!(p.paths, FieldPaths::default());
        assert_eq!(p.statuses.get("Arrived"), Some(&State::InHouse));
        assert_eq!(p.allowlist, Allowlist::Every);
    }

    #[test]
    fn unknown_states_and_event_types_name_the_row() {
        let e = problems("[[rule]]\nfrom = \"NONE\"\nto = \"CHECKED_IN\"\nemit = []\n");
        assert!(e.contains("rule 1: to = \"CHECKED_IN\" is not a state"), "{e}");
        let e = problems("[[rule]]\nfrom = \"NONE\"\nto = \"IN_HOUSE\"\nemit = [\"CHECKIN\"]\n");
        assert!(e.contains("rule 1: event type \"CHECKIN\" is unknown"), "{e}");
        let e = problems("[[rule]]\nfrom = \"IN_HOUSE\"\nto = \"IN_HOUSE\"\nchanged = [\"rooom\"]\nemit = []\n");
        assert!(e.contains("changed field \"rooom\" is unknown"), "{e}");
    }

    #[test]
    fn duplicate_and_contradicting_rows_are_rejected() {
        let row = "[[rule]]\nfrom = \"NONE\"\nto = \"IN_HOUSE\"\nemit = [\"CHECKED_IN\"]\n";
        let e = problems(&format!("{row}{row}"));
        assert!(e.contains("rule 2: duplicates rule 1"), "{e}");
        let e = problems(&format!("{row}[[rule]]\nfrom = \"NONE\"\nto = \"IN_HOUSE\"\nemit = []\n"));
        assert!(e.contains("rule 2: contradicts rule 1"), "{e}");
    }

    #[test]
    fn a_row_behind_a_broader_row_is_unreachable() {
        let e = problems(
            "[[rule]]\nfrom = \"IN_HOUSE\"\nto = \"IN_HOUSE\"\nemit = []\n[[rule]]\nfrom = \"IN_HOUSE\"\nto = \"IN_HOUSE\"\nchanged = [\"room\"]\nemit = [\"ROOM_CHANGED\"]\n",
        );
        assert!(e.contains("rule 2: unreachable: rule 1"), "{e}");
        let e = problems("[[rule]]\nfrom = \"IN_HOUSE\"\nto = \"NONE\"\nchanged = [\"room\"]\nemit = [\"CHECKED_OUT\"]\n");
        assert!(e.contains("rule 1: unreachable: a delete"), "{e}");
    }

    #[test]
    fn overlapping_rows_need_a_row_that_decides_both() {
        let room = "[[rule]]\nfrom = \"IN_HOUSE\"\nto = \"IN_HOUSE\"\nchanged = [\"room\"]\nemit = [\"ROOM_CHANGED\"]\n";
        let dep = "[[rule]]\nfrom = \"IN_HOUSE\"\nto = \"IN_HOUSE\"\nchanged = [\"departure\"]\nemit = [\"DEPARTURE_CHANGED\"]\n";
        let e = problems(&format!("{room}{dep}"));
        assert!(e.contains("rule 2 overlaps rule 1"), "{e}");
        assert!(e.contains("add a rule for changed = [room, departure]"), "{e}");
        let both = "[[rule]]\nfrom = \"IN_HOUSE\"\nto = \"IN_HOUSE\"\nchanged = [\"room\", \"departure\"]\nemit = [\"ROOM_CHANGED\", \"DEPARTURE_CHANGED\"]\n";
        assert!(with_rules(&format!("{both}{room}{dep}")).is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_statuses_are_rejected() {
        let e = Pipeline::parse("[fields]\nroom_number = \"x\"\n[statuses]\n", "t").unwrap_err().to_string();
        assert!(e.contains("unknown field `room_number`"), "{e}");
        let e = Pipeline::parse("[fields]\n[statuses]\n\"Arrived\" = \"INHOUSE\"\n", "t").unwrap_err().to_string();
        assert!(e.contains("\"Arrived\" = \"INHOUSE\": unknown state"), "{e}");
    }

    #[test]
    fn first_matching_row_decides() {
        let p = Pipeline::builtin();
        let mut both = FieldSet::default();
        both.insert(Field::Room);
        both.insert(Field::Departure);
        let r = p.rule_for(State::InHouse, State::InHouse, both).unwrap();
        assert_eq!(r.emit, vec![EventType::RoomChanged, EventType::DepartureChanged]);
        let mut arrival = FieldSet::default();
        arrival.insert(Field::Arrival);
        assert!(p.rule_for(State::InHouse, State::InHouse, arrival).is_none());
    }

    #[test]
    fn routes_are_checked() {
        let ok = with_rules("[[route]]\ntopic = \"purge\"\nevents = [\"CHECKED_OUT\"]\n").unwrap();
        assert_eq!(ok.routes, vec![Route { topic: "purge".into(), events: vec![EventType::CheckedOut] }]);
        let e = problems("[[route]]\ntopic = \"purge\"\nevents = [\"CHECKOUT\"]\n[[route]]\ntopic = \"purge\"\nevents = []\n");
        assert!(e.contains("route 1: event type \"CHECKOUT\" is unknown"), "{e}");
        assert!(e.contains("route 2: topic \"purge\" is routed twice"), "{e}");
        assert!(e.contains("route 2: events is empty"), "{e}");
    }

    #[test]
    fn timers_and_retention_are_checked() {
        let ok = with_rules("[[timer]]\nevent = \"NO_SHOW\"\nstate = \"NOT_ARRIVED\"\nfield = \"arrival\"\nafter = \"1d\"\n[retention]\nafter = \"30d\"\n").unwrap();
        assert_eq!(ok.timers, vec![TimerRow { row: 1, event: EventType::NoShow, state: State::NotArrived, field: Field::Arrival, after_ms: 86_400_000 }]);
        assert_eq!(ok.retention_ms, Some(30 * 86_400_000));
        assert!(ok.describe().contains("Timer 1: NO_SHOW while NOT_ARRIVED, when stream time reaches arrival + 1d"), "{}", ok.describe());
        let e = problems(
            "[[timer]]\nevent = \"NOSHOW\"\nstate = \"NONE\"\nfield = \"room\"\nafter = \"1 day\"\n\
             [[timer]]\nevent = \"OVERSTAY\"\nstate = \"IN_HOUSE\"\nfield = \"departure\"\nafter = \"12h\"\n\
             [[timer]]\nevent = \"OVERSTAY\"\nstate = \"IN_HOUSE\"\nfield = \"departure\"\nafter = \"1d\"\n[retention]\nafter = \"0s\"\n",
        );
        for want in ["timer 1: event type \"NOSHOW\" is unknown", "timer 1: state = \"NONE\"", "timer 1: field = \"room\" is not a date", "timer 1: after = \"1 day\"", "timer 3: OVERSTAY has a timer already", "[retention] after = \"0s\""] {
            assert!(e.contains(want), "{want}: {e}");
        }
        assert_ne!(ok.timer_signature(), Pipeline::builtin().timer_signature());
        assert_eq!(Pipeline::builtin().timer_signature(), Pipeline::untimed_signature());
    }


    #[test]
    fn allowlist_parsing() {
        assert_eq!(Allowlist::parse_list("*"), Allowlist::Every);
        assert_eq!(Allowlist::parse_list("P1, P2,"), Allowlist::Only(vec!["P1".into(), "P2".into()]));
        assert!(!Allowlist::parse_list("P1").allows(Some("P2")));
        assert!(!Allowlist::parse_list("P1").allows(None));
    }
}

/// A row of the pipeline file, by its 1-based position among the rows of its
/// kind: what fired an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FiredBy {
    /// A `[[rule]]` row.
    Rule(usize),
    /// A `[[timer]]` row.
    Timer(usize),
}

/// Where a pipeline file's rows are: the line of each `[[rule]]` and
/// `[[timer]]` header, to name the row that fired an event as `file:line`.
#[derive(Clone, Debug, Default)]
pub struct RowLocator {
    /// The file, as given; `None`: the built-in pipeline.
    pub file: Option<std::path::PathBuf>,
    rule_lines: Vec<usize>,
    timer_lines: Vec<usize>,
}

impl RowLocator {
    /// Reads `file` for its row headers (a file it cannot read names rows by number only).
    pub fn new(file: Option<&Path>) -> RowLocator {
        let text = file.and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        RowLocator { file: file.map(Path::to_path_buf), rule_lines: header_lines(&text, "rule"), timer_lines: header_lines(&text, "timer") }
    }

    /// `file:line [[rule]] #n`, or without the line when the file does not
    /// write the row as a header (an inline array, the built-in pipeline).
    pub fn locate(&self, fired: FiredBy) -> String {
        let (kind, n, lines) = match fired {
            FiredBy::Rule(n) => ("rule", n, &self.rule_lines),
            FiredBy::Timer(n) => ("timer", n, &self.timer_lines),
        };
        let file = self.file.as_ref().map_or_else(|| "built-in pipeline".to_string(), |f| f.display().to_string());
        match lines.get(n.wrapping_sub(1)) {
            Some(line) => format!("{file}:{line} [[{kind}]] #{n}"),
            None => format!("{file} [[{kind}]] #{n}"),
        }
    }
}

/// The 1-based line numbers of the `[[table]]` headers in TOML text.
fn header_lines(text: &str, table: &str) -> Vec<usize> {
    let header = format!("[[{table}]]");
    text.lines().enumerate().filter(|(_, l)| l.trim_start().starts_with(&header)).map(|(i, _)| i + 1).collect()
}

#[cfg(test)]
mod row_tests {
    #[test]
    fn rows_are_found_by_their_headers() {
        let text = "[statuses]\n\"Arrived\" = \"IN_HOUSE\"\n\n[[rule]]\nfrom = \"a\"\n  [[rule]]\n[[timer]]\n[[rule]] # third\n";
        assert_eq!(super::header_lines(text, "rule"), vec![4, 6, 8]);
        assert_eq!(super::header_lines(text, "timer"), vec![7]);
    }
}
