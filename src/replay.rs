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

use crate::engine::{BatchOutput, Counts, Engine, InputRecord};
use crate::store::StateStore;
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

    for input in inputs {
        let mut lines = input.reader.lines();
        let first_in_input = line_no + 1;
        let mut done = false;
        while !done {
            let mut batch: Vec<(u64, String)> = Vec::with_capacity(BATCH_LINES);
            while batch.len() < BATCH_LINES {
                match lines.next() {
                    None => {
                        done = true;
                        break;
                    }
                    Some(line) => {
                        line_no += 1;
                        let line = line.with_context(|| format!("reading {} at line {}", input.name, line_no - first_in_input + 1))?;
                        if !line.trim().is_empty() {
                            batch.push((line_no, line));
                        }
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
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
        write_events(&output, out)?;
        commit(store, output, clock)?;
        total.add(&counts);
    }
    out.flush()?;
    if reported {
        eprintln!("replay: done, {} lines in {:.1}s", line_no, started.elapsed().as_secs_f64());
    }
    Ok(total)
}

fn write_events(output: &BatchOutput, out: &mut dyn Write) -> anyhow::Result<()> {
    for (_, event) in &output.events {
        serde_json::to_writer(&mut *out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Commits a batch's state with the stream time it reached, in one WriteBatch.
fn commit(store: &StateStore, output: BatchOutput, clock: StreamClock) -> anyhow::Result<()> {
    let mut batch = output.state_batch();
    if let Some(t) = clock.0 {
        batch.mark(STREAM_TIME, (t as u64) ^ (1 << 63));
    }
    store.commit(REPLAY_PARTITION, batch)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_batch(engine: &Engine, store: &StateStore, name: &str, first_line: u64, batch: &[(u64, String)], out: &mut dyn Write, opts: &mut ReplayOptions, clock: &mut StreamClock) -> anyhow::Result<Counts> {
    let mut records = Vec::with_capacity(batch.len());
    // Lines that are not even a {key, value} pair are rejected here, by line.
    let mut framing_errors: Vec<(u64, String)> = Vec::new();
    for (n, line) in batch {
        if opts.keyed {
            match serde_json::from_str::<KeyedLine>(line) {
                Ok(k) => records.push(InputRecord {
                    key: k.key.map(|r| r.get().as_bytes()).filter(|k| *k != b"null"),
                    value: k.value.map(|r| r.get().as_bytes()).filter(|v| *v != b"null"),
                    offset: *n,
                }),
                Err(e) => framing_errors.push((*n, format!("not a {{\"key\": …, \"value\": …}} line (--keyed): {e}"))),
            }
        } else {
            records.push(InputRecord { key: None, value: Some(line.as_bytes()), offset: *n });
        }
    }
    let output = engine.process(store, REPLAY_PARTITION, &records, clock)?;
    write_events(&output, out)?;

    let mut rejects: Vec<(u64, &'static str, String)> = framing_errors.into_iter().map(|(n, msg)| (n, "not-keyed", msg)).collect();
    rejects.extend(output.rejected.iter().map(|r| (r.offset, r.error.kind(), r.error.to_string())));
    rejects.sort_by_key(|r| r.0);
    let by_line: std::collections::HashMap<u64, &str> = batch.iter().map(|(n, l)| (*n, l.as_str())).collect();
    for (n, kind, msg) in &rejects {
        let local = n - first_line + 1;
        eprintln!("{name}:{local}: rejected ({kind}): {msg}");
        if let Some(dl) = opts.dead_letters.as_mut() {
            let record = serde_json::json!({"input": name, "line": local, "kind": kind, "error": msg, "record": by_line.get(n).copied().unwrap_or_default()});
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
