//! `resevent replay`: change events from JSON Lines files (or stdin) through
//! the engine, business events to a writer. The offline main job and the
//! on-call tool: "what would resevent emit for these records?".
//!
//! Owns line framing, batching, progress and reporting of rejected lines.
//! Guarantee: each batch's events are written (and flushed) before its state
//! is committed, so a replay killed midway and re-run on the same state dir
//! repeats at most one batch of events, with the same event ids.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::decode::DecodeError;
use crate::engine::{BatchOutput, Counts, Engine, InputRecord};
use crate::state::store::StateStore;
use crate::timers::StreamClock;

/// The partition name replay keeps its state under.
pub const REPLAY_PARTITION: &str = "replay";
/// Lines per batch: one RocksDB WriteBatch each.
const BATCH_LINES: usize = 2048;
/// The marker keeping replay's stream time between runs on one state dir.
const STREAM_TIME: &str = "stream-time";

/// Options of one replay run.
pub struct ReplayOptions {
    /// Each line is `{"key": K, "value": V}` instead of a bare record value.
    pub keyed: bool,
    /// Where rejected lines go, with their reason, besides stderr.
    pub dead_letters: Option<Box<dyn Write>>,
    /// Print a progress line to stderr at this interval.
    pub progress_every: Duration,
    /// After the input, move stream time to this moment (ms) and fire the
    /// timers due by then (`--until`).
    pub until: Option<i64>,
    /// `--explain`: each event with the row that fired it, each change that
    /// emitted nothing with the reason. The engine must be [`Engine::explaining`].
    pub explain: Option<Explain>,
}

/// How `--explain` writes the changes that emitted nothing.
pub struct Explain {
    /// `--explain=json`: as `{"noEvent": …}` lines on stdout, not on stderr.
    pub json: bool,
    /// Names the row that fired an event (file:line).
    pub rows: crate::pipeline::RowLocator,
}

/// One input: a name for messages and a reader.
pub struct Input {
    pub name: String,
    pub reader: Box<dyn BufRead>,
}

#[derive(Deserialize)]
struct KeyedLine<'a> {
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
}

/// Replays `inputs` in order; returns the summed counts. Lines are numbered
/// across all inputs, and that number is the input position of records
/// without a source position, so a second replay of the same files into the
/// same state dir emits nothing new.
pub fn replay(engine: &Engine, store: &mut StateStore, inputs: Vec<Input>, out: &mut dyn Write, mut opts: ReplayOptions) -> anyhow::Result<Counts> {
    store.open_partition(REPLAY_PARTITION)?;
    if let Some(n) = store.ensure_index(REPLAY_PARTITION, &engine.pipeline)?.filter(|n| *n > 0) {
        eprintln!("replay: the timer index was built again for the pipeline's timer rows ({n} due times)");
    }
    // Stream time goes on from where the last replay into this state dir left it.
    let mut clock = StreamClock(store.marker(REPLAY_PARTITION, STREAM_TIME)?.map(|v| (v ^ (1 << 63)) as i64));
    let mut total = Counts::default();
    let started = Instant::now();
    let mut last_report = started;
    let mut line_no: u64 = 0;
    let mut reported = false;

    for mut input in inputs {
        let first_in_input = line_no + 1;
        while let Some(batch) = read_batch(&mut input, &mut line_no, first_in_input)? {
            let counts = run_batch(engine, store, &input.name, first_in_input, &batch, out, &mut opts, &mut clock)?;
            total.add(&counts);
            if last_report.elapsed() >= opts.progress_every {
                last_report = Instant::now();
                reported = true;
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "replay: {} lines ({:.0}/s), {} events, {} rejected, {} stale, {} duplicate",
                    line_no,
                    line_no as f64 / secs,
                    total.events,
                    total.rejected,
                    total.stale,
                    total.duplicates
                );
            }
        }
    }
    if let Some(until) = opts.until {
        let output = engine.advance(store, REPLAY_PARTITION, &mut clock, until)?;
        let counts = output.counts;
        match &opts.explain {
            Some(explain) => write_explained(&output, &[], "--until", 0, explain, out)?,
            None => write_events(&output, out)?,
        }
        commit(store, output, clock)?;
        total.add(&counts);
    }
    out.flush()?;
    if reported {
        eprintln!("replay: done, {} lines in {:.1}s", line_no, started.elapsed().as_secs_f64());
    }
    Ok(total)
}

/// The next batch of non-blank lines of `input` (up to [`BATCH_LINES`]),
/// each with its number across all inputs; `None` at the input's end.
///
/// Lines are bytes, not text: a line that is not UTF-8 is one rejected
/// record (as the service dead-letters such a record), never the end of the
/// replay. A last line without its newline is a line like any other.
pub(crate) fn read_batch(input: &mut Input, line_no: &mut u64, first_in_input: u64) -> anyhow::Result<Option<Vec<(u64, Vec<u8>)>>> {
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(BATCH_LINES);
    while batch.len() < BATCH_LINES {
        let mut line = Vec::new();
        let n = input.reader.read_until(b'\n', &mut line).with_context(|| format!("reading {} at line {}", input.name, *line_no - first_in_input + 2))?;
        if n == 0 {
            break;
        }
        *line_no += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            batch.push((*line_no, line));
        }
    }
    Ok(if batch.is_empty() { None } else { Some(batch) })
}

/// A batch's lines as input records (`keyed`: `{"key", "value"}` lines),
/// and the lines that are not even a key-value pair, with their kind and reason.
pub(crate) fn frame(batch: &[(u64, Vec<u8>)], keyed: bool) -> (Vec<InputRecord<'_>>, Vec<(u64, &'static str, String)>) {
    let mut records = Vec::with_capacity(batch.len());
    let mut framing_errors: Vec<(u64, &'static str, String)> = Vec::new();
    for (n, line) in batch {
        if keyed {
            let text = match std::str::from_utf8(line) {
                Ok(text) => text,
                Err(e) => {
                    framing_errors.push((*n, "not-utf8", DecodeError::NotUtf8(e.valid_up_to()).to_string()));
                    continue;
                }
            };
            match serde_json::from_str::<KeyedLine>(text) {
                Ok(k) => records.push(InputRecord {
                    key: k.key.map(|r| r.get().as_bytes()).filter(|k| *k != b"null"),
                    value: k.value.map(|r| r.get().as_bytes()).filter(|v| *v != b"null"),
                    offset: *n,
                }),
                Err(e) => framing_errors.push((*n, "not-keyed", format!("not a {{\"key\": …, \"value\": …}} line (--keyed): {e}"))),
            }
        } else {
            records.push(InputRecord { key: None, value: Some(line), offset: *n });
        }
    }
    (records, framing_errors)
}

fn write_events(output: &BatchOutput, out: &mut dyn Write) -> anyhow::Result<()> {
    for (_, event) in &output.events {
        serde_json::to_writer(&mut *out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// `--explain`: each event with an `explain` object (the row that fired it,
/// the transition, the fields that changed), and each change that emitted
/// nothing with its reason (stderr, or stdout as `{"noEvent": …}`).
fn write_explained(output: &BatchOutput, records: &[InputRecord<'_>], name: &str, first_line: u64, explain: &Explain, out: &mut dyn Write) -> anyhow::Result<()> {
    use crate::machine::{Explanation, FiredBy};
    let by_index: std::collections::HashMap<usize, &crate::engine::Explained> = output.explained.iter().map(|e| (e.index, e)).collect();
    let names = |set: crate::pipeline::FieldSet| -> Vec<&'static str> { crate::change::Field::ALL.iter().filter(|f| set.contains(**f)).map(|f| f.name()).collect() };
    for (index, event) in &output.events {
        let mut line = serde_json::to_value(event)?;
        let why = match (event.fired_by, by_index.get(index).map(|e| &e.why)) {
            (Some(FiredBy::Timer(n)), _) => serde_json::json!({"row": explain.rows.locate(FiredBy::Timer(n)), "timer": true}),
            (Some(row), Some(Explanation::Fired { from, to, changed, row_requires, .. })) => serde_json::json!({
                "row": explain.rows.locate(row),
                "from": from.name(),
                "to": to.name(),
                "changed": names(*changed),
                "rowRequires": names(*row_requires),
            }),
            (row, _) => serde_json::json!({"row": row.map(|r| explain.rows.locate(r))}),
        };
        line["explain"] = why;
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    for e in &output.explained {
        let Explanation::NoEvent(reason) = &e.why else { continue };
        let line = records[e.index].offset - first_line + 1;
        let position = e.position.as_deref().unwrap_or("none");
        if explain.json {
            let json = serde_json::json!({"noEvent": {"input": name, "line": line, "reservationId": e.reservation_id, "position": position, "reason": reason.kind(), "detail": reason.to_string()}});
            serde_json::to_writer(&mut *out, &json)?;
            out.write_all(b"\n")?;
        } else {
            eprintln!("{name}:{line}: no event for reservation {} at {position}: {reason}", e.reservation_id);
        }
    }
    out.flush()?;
    Ok(())
}

/// Commits a batch's state with the stream time it reached, in one WriteBatch.
pub(crate) fn commit(store: &StateStore, output: BatchOutput, clock: StreamClock) -> anyhow::Result<()> {
    let mut batch = output.state_batch();
    if let Some(t) = clock.0 {
        batch.mark(STREAM_TIME, (t as u64) ^ (1 << 63));
    }
    store.commit(REPLAY_PARTITION, batch)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_batch(engine: &Engine, store: &StateStore, name: &str, first_line: u64, batch: &[(u64, Vec<u8>)], out: &mut dyn Write, opts: &mut ReplayOptions, clock: &mut StreamClock) -> anyhow::Result<Counts> {
    // Lines that are not even a {key, value} pair are rejected here, by line.
    let (records, framing_errors) = frame(batch, opts.keyed);
    let output = engine.process(store, REPLAY_PARTITION, &records, clock)?;
    match &opts.explain {
        Some(explain) => write_explained(&output, &records, name, first_line, explain, out)?,
        None => write_events(&output, out)?,
    }

    let mut rejects = framing_errors;
    rejects.extend(output.rejected.iter().map(|r| (r.offset, r.error.kind(), r.error.to_string())));
    rejects.sort_by_key(|r| r.0);
    let by_line: std::collections::HashMap<u64, &[u8]> = batch.iter().map(|(n, l)| (*n, l.as_slice())).collect();
    for (n, kind, msg) in &rejects {
        let local = n - first_line + 1;
        eprintln!("{name}:{local}: rejected ({kind}): {msg}");
        if let Some(dl) = opts.dead_letters.as_mut() {
            let line = by_line.get(n).copied().unwrap_or_default();
            // The line byte for byte: as text when it is UTF-8, else in base64.
            let record = match std::str::from_utf8(line) {
                Ok(text) => serde_json::json!({"input": name, "line": local, "kind": kind, "error": msg, "record": text}),
                Err(_) => serde_json::json!({"input": name, "line": local, "kind": kind, "error": msg, "recordBase64": base64(line)}),
            };
            serde_json::to_writer(&mut *dl, &record)?;
            dl.write_all(b"\n")?;
        }
    }
    for (id, status) in &output.unmapped {
        tracing::warn!(reservation = %id, status = ?status, "status missing or not mapped by the pipeline; state left as it was, nothing emitted");
    }
    if output.counts.unmapped > output.unmapped.len() as u64 {
        tracing::warn!(more = output.counts.unmapped - output.unmapped.len() as u64, "more changes with unmapped status in this batch");
    }

    let mut counts = output.counts;
    counts.records += rejects.len() as u64 - output.rejected.len() as u64;
    commit(store, output, *clock)?;
    counts.rejected = rejects.len() as u64;
    Ok(counts)
}

/// Standard base64 with padding (RFC 4648), for a rejected line that is not
/// UTF-8 and so cannot be a JSON string.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_rfc_4648() {
        for (raw, coded) in [(&b""[..], ""), (b"f", "Zg=="), (b"fo", "Zm8="), (b"foo", "Zm9v"), (b"foob", "Zm9vYg=="), (b"\xff\xfe\x00", "//4A")] {
            assert_eq!(super::base64(raw), coded);
        }
    }
}
