//! `resevent pipeline diff OLD NEW [FILES…]`: the same input replayed under
//! two pipeline files, and what the change of table does to the events.
//!
//! The input is read once; each batch goes through both engines, each with a
//! fresh state of its own (both start empty), exactly as `replay` runs it.
//! An event *differs* when the other side has no event with the same
//! reservation, source position and event type and the same content
//! (everything but `eventId`). Events are matched across batches, so an
//! event one side emits a batch later than the other (a timer) is no
//! difference. Lines that cannot be decoded are reported once, as `replay`
//! reports them, and are not differences.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::engine::{BatchOutput, Engine};
use crate::machine::{BusinessEvent, FiredBy};
use crate::pipeline::RowLocator;
use crate::replay::{self, Input, REPLAY_PARTITION};
use crate::state::store::StateStore;
use crate::timers::StreamClock;

/// How many reservations the report for people shows differences of.
const SHOWN_RESERVATIONS: usize = 20;

/// One side of the comparison: a pipeline and the file it came from.
pub struct Side {
    pub engine: Engine,
    pub file: PathBuf,
    /// To name the row (file:line) that fired an event.
    rows: RowLocator,
}

impl Side {
    pub fn new(engine: Engine, file: PathBuf) -> Side {
        Side { engine, rows: RowLocator::new(Some(&file)), file }
    }

    fn locate(&self, fired: Option<FiredBy>) -> String {
        fired.map_or_else(|| "no row".into(), |f| self.rows.locate(f))
    }
}

pub struct DiffOptions {
    pub keyed: bool,
    /// `--until`, as replay: after the input, stream time moves here and due timers fire.
    pub until: Option<i64>,
    /// One JSON line per differing event instead of the report for people.
    pub json: bool,
    pub progress_every: Duration,
}

/// (reservation, source position, event type): what an event is about.
type Key = (String, Option<String>, &'static str);

/// An event of one side, kept to compare: the event with its `eventId` and
/// row taken out (what is compared), and those two.
struct Emitted {
    content: BusinessEvent,
    event_id: String,
    fired_by: Option<FiredBy>,
}

impl Emitted {
    fn json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(&self.content).unwrap_or_default();
        if let Some(m) = json.as_object_mut() {
            m.insert("eventId".into(), self.event_id.clone().into());
        }
        json
    }

    fn content_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(&self.content).unwrap_or_default();
        if let Some(m) = json.as_object_mut() {
            m.remove("eventId");
        }
        json
    }
}

/// Events of each side the other side has not (yet) matched.
#[derive(Default)]
struct Unmatched {
    old: HashMap<Key, Vec<Emitted>>,
    new: HashMap<Key, Vec<Emitted>>,
}

impl Unmatched {
    /// An event of one side: it cancels an equal one the other side emitted,
    /// or waits for one.
    fn offer(mine: &mut HashMap<Key, Vec<Emitted>>, theirs: &mut HashMap<Key, Vec<Emitted>>, key: Key, event: Emitted) {
        if let Some(list) = theirs.get_mut(&key) {
            if let Some(i) = list.iter().position(|e| e.content == event.content) {
                list.swap_remove(i);
                if list.is_empty() {
                    theirs.remove(&key);
                }
                return;
            }
        }
        mine.entry(key).or_default().push(event);
    }

    fn add(&mut self, old: BatchOutput, new: BatchOutput) {
        for (_, e) in old.events {
            let (key, event) = emitted(e);
            Unmatched::offer(&mut self.old, &mut self.new, key, event);
        }
        for (_, e) in new.events {
            let (key, event) = emitted(e);
            Unmatched::offer(&mut self.new, &mut self.old, key, event);
        }
    }
}

fn emitted(mut e: BusinessEvent) -> (Key, Emitted) {
    let key = (e.reservation_id.clone(), e.source_position.clone(), e.event_type);
    let event_id = std::mem::take(&mut e.event_id);
    let fired_by = e.fired_by.take();
    (key, Emitted { content: e, event_id, fired_by })
}

/// What differs, per key: only the old side's events, only the new side's, or both (changed).
struct Differences {
    /// Sorted by key.
    keys: Vec<(Key, Vec<Emitted>, Vec<Emitted>)>,
}

impl Differences {
    fn from(mut unmatched: Unmatched) -> Differences {
        let keys: BTreeSet<Key> = unmatched.old.keys().chain(unmatched.new.keys()).cloned().collect();
        let keys = keys
            .into_iter()
            .map(|k| {
                let old = unmatched.old.remove(&k).unwrap_or_default();
                let new = unmatched.new.remove(&k).unwrap_or_default();
                (k, old, new)
            })
            .collect();
        Differences { keys }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Per event type: (added, removed, changed). A key with events on both
    /// sides counts its pairs as changed, the rest as added or removed.
    fn summary(&self) -> BTreeMap<&'static str, (usize, usize, usize)> {
        let mut by_type: BTreeMap<&'static str, (usize, usize, usize)> = BTreeMap::new();
        for ((_, _, t), old, new) in &self.keys {
            let e = by_type.entry(t).or_default();
            let changed = old.len().min(new.len());
            e.0 += new.len() - changed;
            e.1 += old.len() - changed;
            e.2 += changed;
        }
        by_type
    }
}

/// Replays `inputs` under both sides; writes the differences to `out`.
/// Returns whether anything differs.
pub fn diff(old: &Side, new: &Side, inputs: Vec<Input>, out: &mut dyn Write, opts: &DiffOptions) -> anyhow::Result<bool> {
    let dirs = (tempfile::Builder::new().prefix("resevent-diff-old-").tempdir()?, tempfile::Builder::new().prefix("resevent-diff-new-").tempdir()?);
    let mut stores = (StateStore::open(dirs.0.path()).context("opening the old side's state")?, StateStore::open(dirs.1.path()).context("opening the new side's state")?);
    for (store, side) in [(&mut stores.0, old), (&mut stores.1, new)] {
        store.open_partition(REPLAY_PARTITION)?;
        store.ensure_index(REPLAY_PARTITION, &side.engine.pipeline)?;
    }
    let mut clocks = (StreamClock::default(), StreamClock::default());
    let same_fields = old.engine.pipeline.paths == new.engine.pipeline.paths;
    let mut unmatched = Unmatched::default();
    let (started, mut last_report) = (Instant::now(), Instant::now());
    let (mut line_no, mut rejected) = (0u64, 0u64);
    for mut input in inputs {
        let first_in_input = line_no + 1;
        while let Some(batch) = replay::read_batch(&mut input, &mut line_no, first_in_input)? {
            let (records, framing) = replay::frame(&batch, opts.keyed);
            // Decoded once when both sides map the same fields; then the two
            // sides share nothing but the input: one thread each.
            let shared = same_fields.then(|| old.engine.decode(&records));
            let run = |side: &Side, store: &StateStore, clock: &mut StreamClock| -> anyhow::Result<BatchOutput> {
                let out = match &shared {
                    Some((changes, decoded)) => {
                        let seed = BatchOutput { counts: decoded.counts, rejected: decoded.rejected.clone(), ..Default::default() };
                        side.engine.process_decoded(store, REPLAY_PARTITION, &records, changes, seed, clock)?
                    }
                    None => side.engine.process(store, REPLAY_PARTITION, &records, clock)?,
                };
                let mut out = out;
                let events = std::mem::take(&mut out.events);
                let rejected = std::mem::take(&mut out.rejected);
                replay::commit(store, out, *clock)?;
                Ok(BatchOutput { events, rejected, ..Default::default() })
            };
            let (a, b) = std::thread::scope(|s| {
                let (store, clock) = (&stores.0, &mut clocks.0);
                let old_side = s.spawn(|| run(old, store, clock));
                let b = run(new, &stores.1, &mut clocks.1);
                (old_side.join().expect("the old side's thread"), b)
            });
            let (a, b) = (a?, b?);
            // Each line rejected is reported once, whichever side (or both) rejected it.
            let mut reasons: BTreeMap<u64, (&'static str, String)> = framing.into_iter().map(|(n, kind, msg)| (n, (kind, msg))).collect();
            for r in a.rejected.iter().chain(&b.rejected) {
                reasons.entry(r.offset).or_insert_with(|| (r.error.kind(), r.error.to_string()));
            }
            for (n, (kind, msg)) in &reasons {
                eprintln!("{}:{}: rejected ({kind}): {msg}", input.name, n - first_in_input + 1);
            }
            rejected += reasons.len() as u64;
            unmatched.add(a, b);
            if last_report.elapsed() >= opts.progress_every {
                last_report = Instant::now();
                let pending = unmatched.old.len() + unmatched.new.len();
                eprintln!("pipeline diff: {line_no} lines ({:.0}/s), {pending} events differ so far", line_no as f64 / started.elapsed().as_secs_f64());
            }
        }
    }
    if let Some(until) = opts.until {
        let a = old.engine.advance(&stores.0, REPLAY_PARTITION, &mut clocks.0, until)?;
        let b = new.engine.advance(&stores.1, REPLAY_PARTITION, &mut clocks.1, until)?;
        unmatched.add(a, b);
    }
    let differences = Differences::from(unmatched);
    if opts.json {
        write_json(&differences, out)?;
    } else {
        write_report(old, new, &differences, line_no, rejected, out)?;
    }
    out.flush()?;
    Ok(!differences.is_empty())
}

/// `--json`: one line per differing event, the old side's first for each key.
fn write_json(d: &Differences, out: &mut dyn Write) -> anyhow::Result<()> {
    for (_, old, new) in &d.keys {
        for (side, events) in [("old", old), ("new", new)] {
            for e in events {
                serde_json::to_writer(&mut *out, &serde_json::json!({"side": side, "event": e.json()}))?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

/// The report for people: a summary per event type, then the first
/// reservations' differences, each naming the row that fired it.
fn write_report(old: &Side, new: &Side, d: &Differences, lines: u64, rejected: u64, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "pipeline diff: {} → {}, {lines} input lines ({rejected} rejected on either side, not compared)", old.file.display(), new.file.display())?;
    if d.is_empty() {
        writeln!(out, "no differences: both tables emit the same events")?;
        return Ok(());
    }
    let reservations: BTreeSet<&str> = d.keys.iter().map(|((r, _, _), _, _)| r.as_str()).collect();
    writeln!(out, "\n{:<24} {:>8} {:>8} {:>8}", "event type", "added", "removed", "changed")?;
    for (t, (added, removed, changed)) in d.summary() {
        writeln!(out, "{t:<24} {added:>8} {removed:>8} {changed:>8}")?;
    }
    writeln!(out, "\n{} reservation(s) touched; the first {}:", reservations.len(), reservations.len().min(SHOWN_RESERVATIONS))?;
    let shown: BTreeSet<&str> = reservations.into_iter().take(SHOWN_RESERVATIONS).collect();
    let mut current = "";
    for ((reservation, position, t), olds, news) in d.keys.iter().filter(|((r, _, _), _, _)| shown.contains(r.as_str())) {
        if reservation != current {
            writeln!(out, "\nreservation {reservation}")?;
            current = reservation;
        }
        let at = position.as_deref().unwrap_or("no position");
        let pairs = olds.len().min(news.len());
        for (o, n) in olds.iter().zip(news) {
            writeln!(out, "  ~ {t} at {at}: {} (old: {}; new: {})", changed_fields(&o.content_json(), &n.content_json()), old.locate(o.fired_by), new.locate(n.fired_by))?;
        }
        for o in &olds[pairs..] {
            writeln!(out, "  - {t} at {at}, only under the old table ({})", old.locate(o.fired_by))?;
        }
        for n in &news[pairs..] {
            writeln!(out, "  + {t} at {at}, only under the new table ({})", new.locate(n.fired_by))?;
        }
    }
    Ok(())
}

/// `field: old → new` for each field the two contents differ in.
fn changed_fields(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else { return format!("{old} → {new}") };
    let fields: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    let null = serde_json::Value::Null;
    fields
        .into_iter()
        .filter(|f| o.get(*f) != n.get(*f))
        .map(|f| format!("{f}: {} → {}", o.get(f).unwrap_or(&null), n.get(f).unwrap_or(&null)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_events_cancel_across_sides_and_batches() {
        let event = |id: &str, room: &str| emitted(BusinessEvent { event_id: id.into(), event_type: "CHECKED_IN", reservation_id: "r1".into(), room_number: Some(room.into()), source_position: Some("1:1".into()), ..blank() });
        let mut u = Unmatched::default();
        let (key, e) = event("a", "101");
        Unmatched::offer(&mut u.old, &mut u.new, key, e);
        assert_eq!(u.old.len(), 1);
        // The new side emits the same content later, under another eventId: no difference.
        let (key, e) = event("b", "101");
        Unmatched::offer(&mut u.new, &mut u.old, key, e);
        assert!(u.old.is_empty() && u.new.is_empty());
        let (key, e) = event("c", "101");
        Unmatched::offer(&mut u.old, &mut u.new, key, e);
        let (key, e) = event("d", "202");
        Unmatched::offer(&mut u.new, &mut u.old, key, e);
        let d = Differences::from(u);
        assert_eq!(d.summary()["CHECKED_IN"], (0, 0, 1), "the same key with other content is one change");
        assert_eq!(changed_fields(&d.keys[0].1[0].content_json(), &d.keys[0].2[0].content_json()), "roomNumber: \"101\" → \"202\"");
        assert_eq!(d.keys[0].2[0].json()["eventId"], "d");
    }

    fn blank() -> BusinessEvent {
        BusinessEvent {
            event_id: String::new(),
            event_type: "",
            reservation_id: String::new(),
            property_id: None,
            booking_status: None,
            previous_booking_status: None,
            room_number: None,
            previous_room_number: None,
            arrival_date: None,
            departure_date: None,
            previous_departure_date: None,
            occurred_at: None,
            source_position: None,
            fired_by: None,
        }
    }
}
