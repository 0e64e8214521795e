//! From the file's rows to a [`Pipeline`]: each section checked on its own,
//! every problem collected (with its row number and the fix) rather than the
//! first one returned, so one `pipeline check` shows them all.

use std::collections::HashMap;

use super::file::{PipelineFile, PropertyList, RetentionSection, RouteRow, RuleRow, TimerRowFile};
use super::{Allowlist, EventType, FieldSet, Pipeline, Route, Rule, State, TimerRow};
use crate::change::{Field, FieldPaths};
use crate::time::parse_duration;

/// Problems found so far, each a line that names the row and the fix.
type Problems = Vec<String>;

/// The rule indexes of each (from, to) transition, in file order.
type ByTransition = [[Vec<usize>; 4]; 4];

pub(super) fn compile(file: PipelineFile) -> Result<Pipeline, Problems> {
    let mut problems = Problems::new();
    let mut paths = fields(file.fields, &mut problems);
    paths.partial_flattened = partial_flattened(file.input, &mut problems);
    let statuses = statuses(&file.statuses, &mut problems);
    let allowlist = allowlist(file.allowlist.properties, &mut problems);
    let rules = rules(file.rules, &mut problems);
    let by_transition = transitions(&rules, &mut problems);
    let routes = routes(file.routes, &mut problems);
    let timers = timers(file.timers, &mut problems);
    let retention_ms = retention(file.retention, &mut problems);
    if problems.is_empty() { Ok(Pipeline { routes, paths, statuses, allowlist, rules, by_transition, timers, retention_ms }) } else { Err(problems) }
}

fn fields(f: super::file::FieldsSection, problems: &mut Problems) -> FieldPaths {
    let paths = FieldPaths { id: f.id, status: f.status, fields: [f.property, f.room, f.arrival, f.departure], partial_flattened: false };
    for (name, path) in [("id", &paths.id), ("status", &paths.status)].into_iter().chain(Field::ALL.iter().map(|x| (x.name(), &paths.fields[*x as usize]))) {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            problems.push(format!("[fields] {name} = {path:?} is not a document path; write it like \"roomNumber\" or \"stay.room\""));
        }
    }
    paths
}

/// `[input] debezium_flattened_updates`: whether a flattened Debezium
/// update holds only the fields the change set.
fn partial_flattened(input: super::file::InputSection, problems: &mut Problems) -> bool {
    match input.debezium_flattened_updates.as_deref() {
        None | Some("full") => false,
        Some("partial") => true,
        Some(other) => {
            problems.push(format!("[input] debezium_flattened_updates = {other:?}: write \"full\" (capture.mode=change_streams_update_full, the default) or \"partial\" (capture.mode=change_streams)"));
            false
        }
    }
}

fn statuses(file: &std::collections::BTreeMap<String, String>, problems: &mut Problems) -> HashMap<String, State> {
    let mut statuses = HashMap::new();
    for (value, state) in file {
        match State::from_name(state) {
            Some(State::None) => problems.push(format!("[statuses] {value:?} = \"NONE\": NONE means never seen or deleted; map the value to NOT_ARRIVED, IN_HOUSE or DEPARTED, or leave it out")),
            Some(s) => {
                statuses.insert(value.clone(), s);
            }
            None => problems.push(format!("[statuses] {value:?} = {state:?}: unknown state; use NOT_ARRIVED, IN_HOUSE or DEPARTED")),
        }
    }
    if statuses.is_empty() && problems.is_empty() {
        problems.push("[statuses] is empty: map at least one PMS status value to a state, e.g. \"Arrived\" = \"IN_HOUSE\"".into());
    }
    statuses
}

fn allowlist(properties: PropertyList, problems: &mut Problems) -> Allowlist {
    match properties {
        PropertyList::One(s) if s == "*" => Allowlist::Every,
        PropertyList::One(s) => {
            problems.push(format!("[allowlist] properties = {s:?}: write \"*\" for every property, or a list like [{s:?}]"));
            Allowlist::Only(vec![s])
        }
        PropertyList::Many(list) if list.iter().any(|p| p == "*") => Allowlist::Every,
        PropertyList::Many(list) => Allowlist::Only(list),
    }
}

/// Each row on its own: known states, fields and event types. A row with a
/// problem is left out, so the overlap check runs on the rows that parse.
fn rules(rows: Vec<RuleRow>, problems: &mut Problems) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        if let Some(rule) = rule(i + 1, &row, problems) {
            rules.push(rule);
        }
    }
    rules
}

fn rule(n: usize, row: &RuleRow, problems: &mut Problems) -> Option<Rule> {
    let before = problems.len();
    let state = |name: &str, col: &str, problems: &mut Problems| {
        State::from_name(name).or_else(|| {
            problems.push(format!("rule {n}: {col} = {name:?} is not a state; use NONE, NOT_ARRIVED, IN_HOUSE or DEPARTED"));
            None
        })
    };
    let from = state(&row.from, "from", problems);
    let to = state(&row.to, "to", problems);
    let mut changed = FieldSet::default();
    for c in &row.changed {
        match Field::from_name(c) {
            Some(f) => changed.insert(f),
            None if c == "status" => problems.push(format!("rule {n}: changed = [\"status\"]: a status change is what from and to say; remove it from changed")),
            None => problems.push(format!("rule {n}: changed field {c:?} is unknown; use property, room, arrival or departure")),
        }
    }
    let mut emit = Vec::new();
    for e in &row.emit {
        match EventType::from_name(e) {
            Some(t) if emit.contains(&t) => problems.push(format!("rule {n}: emits {e} twice; list each event type once")),
            Some(t) => emit.push(t),
            None => problems.push(format!("rule {n}: event type {e:?} is unknown; use one of {}", EventType::known_names())),
        }
    }
    let (from, to) = (from?, to?);
    (problems.len() == before).then_some(Rule { row: n, from, to, changed, emit })
}

/// Indexes the rules by transition, and rejects the ones that can never
/// match (a delete with changed fields; one shadowed by an earlier row) and
/// pairs of rows that both match one change with no earlier row deciding it.
fn transitions(rules: &[Rule], problems: &mut Problems) -> ByTransition {
    let mut by_transition = ByTransition::default();
    for (idx, rule) in rules.iter().enumerate() {
        let n = rule.row;
        if rule.to == State::None && !rule.changed.is_empty() {
            problems.push(format!("rule {n}: unreachable: a delete (to NONE) changes no field, so changed = {} never holds; remove changed", rule.changed));
            continue;
        }
        let earlier: Vec<&Rule> = by_transition[rule.from as usize][rule.to as usize].iter().map(|&e| &rules[e]).collect();
        if !shadowed(rule, &earlier, problems) {
            overlaps(rule, &earlier, problems);
        }
        by_transition[rule.from as usize][rule.to as usize].push(idx);
    }
    by_transition
}

/// Whether an earlier row of the same transition matches every change `rule`
/// matches (a duplicate, a contradiction, or a broader row above it).
fn shadowed(rule: &Rule, earlier: &[&Rule], problems: &mut Problems) -> bool {
    let n = rule.row;
    let mut shadowed = false;
    for prior in earlier {
        if prior.changed == rule.changed {
            let how = if prior.emit == rule.emit { "duplicates" } else { "contradicts" };
            problems.push(format!("rule {n}: {how} rule {} ({} → {} when {} changed); keep one of them", prior.row, rule.from.name(), rule.to.name(), rule.changed));
            shadowed = true;
        } else if prior.changed.is_subset(rule.changed) {
            problems.push(format!(
                "rule {n}: unreachable: rule {} ({} → {}, changed {}) matches every change rule {n} matches and comes first; move rule {n} above rule {}",
                prior.row,
                rule.from.name(),
                rule.to.name(),
                prior.changed,
                prior.row
            ));
            shadowed = true;
        }
    }
    shadowed
}

/// Two rows that can both match one change (say room and departure both
/// change) need a row above both that decides that change.
fn overlaps(rule: &Rule, earlier: &[&Rule], problems: &mut Problems) {
    let n = rule.row;
    for prior in earlier {
        if rule.changed.is_subset(prior.changed) {
            continue; // a broader row after narrower ones is a fallback, not an overlap
        }
        let both = prior.changed.union(rule.changed);
        let decided = earlier.iter().take_while(|r| r.row < prior.row).any(|r| r.changed.is_subset(both));
        if !decided {
            problems.push(format!(
                "rule {n} overlaps rule {}: a {} → {} change of {} matches both and rule {} would silently win; add a rule for changed = {} above rule {} saying what that change emits",
                prior.row,
                rule.from.name(),
                rule.to.name(),
                both,
                prior.row,
                both,
                prior.row
            ));
        }
    }
}

fn routes(rows: Vec<RouteRow>, problems: &mut Problems) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        let n = i + 1;
        if row.topic.trim().is_empty() {
            problems.push(format!("route {n}: topic is empty; name the topic these events also go to"));
        } else if routes.iter().any(|r| r.topic == row.topic) {
            problems.push(format!("route {n}: topic {:?} is routed twice; list all its event types in one route", row.topic));
        }
        if row.events.is_empty() {
            problems.push(format!("route {n}: events is empty; list the event types that also go to {:?}", row.topic));
        }
        let mut events = Vec::new();
        for e in &row.events {
            match EventType::from_name(e) {
                Some(t) if !events.contains(&t) => events.push(t),
                Some(_) => problems.push(format!("route {n}: lists {e} twice")),
                None => problems.push(format!("route {n}: event type {e:?} is unknown")),
            }
        }
        routes.push(Route { topic: row.topic, events });
    }
    routes
}

fn timers(rows: Vec<TimerRowFile>, problems: &mut Problems) -> Vec<TimerRow> {
    let mut timers: Vec<TimerRow> = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        if let Some(timer) = timer(i + 1, &row, &timers, problems) {
            timers.push(timer);
        }
    }
    timers
}

fn timer(n: usize, row: &TimerRowFile, earlier: &[TimerRow], problems: &mut Problems) -> Option<TimerRow> {
    let event = EventType::from_name(&row.event);
    match event {
        None => problems.push(format!("timer {n}: event type {:?} is unknown; use one of {}", row.event, EventType::known_names())),
        Some(e) if earlier.iter().any(|t| t.event == e) => {
            problems.push(format!("timer {n}: {} has a timer already; one timer row per event type (its eventIds are made from it)", e.name()));
        }
        Some(_) => {}
    }
    let state = match State::from_name(&row.state) {
        Some(State::None) | None => {
            problems.push(format!("timer {n}: state = {:?}: a timer runs while the reservation is NOT_ARRIVED, IN_HOUSE or DEPARTED", row.state));
            None
        }
        s => s,
    };
    let field = match Field::from_name(&row.field) {
        Some(f) if f.is_date() => Some(f),
        _ => {
            problems.push(format!("timer {n}: field = {:?} is not a date; use arrival or departure", row.field));
            None
        }
    };
    let after_ms = parse_duration(&row.after);
    if after_ms.is_none() {
        problems.push(format!("timer {n}: after = {:?} is not a duration; write it like \"1d\", \"12h\", \"1d12h\", \"30m\" or \"-2h\"", row.after));
    }
    Some(TimerRow { row: n, event: event?, state: state?, field: field?, after_ms: after_ms? })
}

fn retention(section: Option<RetentionSection>, problems: &mut Problems) -> Option<i64> {
    let r = section?;
    match parse_duration(&r.after) {
        Some(ms) if ms > 0 => Some(ms),
        _ => {
            problems.push(format!("[retention] after = {:?} is not a positive duration; write it like \"30d\"", r.after));
            None
        }
    }
}
