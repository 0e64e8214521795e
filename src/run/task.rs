//! A task: one input partition's records of a batch through the engine,
//! against the write-back cache and the store, and the records that output
//! sends ([`outputs`], pure). Kafka Streams' `StreamTask`, for one job.
//!
//! Runs under the task manager's lock, on the stream thread's blocking
//! section; takes the store's lock inside it (the order [`super::task_manager::ServiceContext`] states).

use std::sync::Mutex;

use rdkafka::message::{Message, OwnedMessage};

use super::config::RunConfig;
use super::task_manager::TaskManager;
use crate::engine::{BatchOutput, Counts, Engine, InputRecord};
use crate::fault::Fault;
use crate::registry::Resolved;
use crate::sink::codec::EventCodec;
use crate::state::cache::CachedState;
use crate::state::store::{StateBatch, StateStore};
use crate::state::task_name;

/// One task's records through the engine, against the cache and the
/// store. Records the registry rejected are not decoded; they come back
/// among the output's rejections. Every index in the output is into `msgs`.
pub(super) fn run(engine: &Engine, store: &Mutex<StateStore>, tasks: &mut TaskManager, p: i32, msgs: &[&OwnedMessage], resolved: Option<&[&Resolved]>) -> Result<BatchOutput, Fault> {
    // `records[i]` is `msgs[index_of[i]]`.
    let mut records: Vec<InputRecord> = Vec::with_capacity(msgs.len());
    let mut index_of: Vec<usize> = Vec::with_capacity(msgs.len());
    let mut rejected_early: Vec<(usize, crate::decode::DecodeError)> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let (key, value) = match resolved.map_or(&Resolved::Plain, |r| r[i]) {
            Resolved::Plain => (m.key(), m.payload()),
            Resolved::Converted { key, value } => (key.as_deref().or(m.key()), value.as_deref().or(m.payload())),
            Resolved::Rejected(e) => {
                rejected_early.push((i, e.clone()));
                continue;
            }
        };
        records.push(InputRecord { key, value, offset: m.offset() as u64 });
        index_of.push(i);
    }
    let mut out = {
        let store = store.lock().expect("store lock");
        let clock = tasks.coordinator.clocks.entry(p).or_default();
        let out = engine.process(&CachedState { cache: &tasks.coordinator.cache, task: p, store: &store }, &task_name(p), &records, clock)?;
        // New due times go to the index at once, ahead of the states
        // that armed them (which wait in the cache): an entry whose
        // state is never committed is a stale hint.
        if !out.index.is_empty() {
            let mut batch = StateBatch::default();
            for e in &out.index {
                batch.index(e);
            }
            store.commit(&task_name(p), batch)?;
        }
        out
    };
    tasks.coordinator.used(p, std::mem::take(&mut out.unindex));
    for (index, _) in out.events.iter_mut() {
        *index = index_of[*index];
    }
    for r in out.rejected.iter_mut() {
        r.index = index_of[r.index];
    }
    for (index, error) in rejected_early {
        out.counts.records += 1;
        out.counts.rejected += 1;
        out.rejected.push(crate::engine::Rejected { index, offset: msgs[index].offset() as u64, error });
    }
    Ok(out)
}

/// What one batch did, for metrics and the summary.
#[derive(Default)]
pub(super) struct BatchTally {
    pub(super) counts: Counts,
    pub(super) by_type: Vec<(&'static str, u64)>,
    pub(super) by_kind: Vec<(&'static str, u64)>,
}

impl BatchTally {
    pub(super) fn add(&mut self, out: &BatchOutput) {
        self.counts.add(&out.counts);
        for (_, event) in &out.events {
            match self.by_type.iter_mut().find(|(t, _)| *t == event.event_type) {
                Some((_, n)) => *n += 1,
                None => self.by_type.push((event.event_type, 1)),
            }
        }
        for r in &out.rejected {
            match self.by_kind.iter_mut().find(|(k, _)| *k == r.error.kind()) {
                Some((_, n)) => *n += 1,
                None => self.by_kind.push((r.error.kind(), 1)),
            }
        }
    }
}

/// One record a task's output sends.
pub(super) enum Output<'a> {
    /// A business event to the business topic or a route.
    Event { topic: &'a str, reservation_id: &'a str, event_type: &'static str, payload: Vec<u8>, source_ms: Option<i64> },
    /// A rejected record, to its input's dead-letter topic.
    DeadLetter { topic: String, letter: crate::sink::deadletter::DeadLetter<'a> },
}

/// The records a task's output sends, in order: each business event to the
/// business topic and to every route that takes its type, then each
/// rejected record to its dead-letter topic. Pure: encoding only.
pub(super) fn outputs<'a>(codec: &EventCodec, cfg: &'a RunConfig, routes: &'a [crate::pipeline::Route], msgs: &[&'a OwnedMessage], out: &'a BatchOutput) -> Result<Vec<Output<'a>>, Fault> {
    let mut records = Vec::with_capacity(out.events.len() + out.rejected.len());
    for (index, event) in &out.events {
        let encoded = codec.encode(event).map_err(|e| Fault::Fatal(anyhow::anyhow!("encoding a business event: {e}")))?;
        let payload = |topic: &str| codec.payload(&encoded, topic).map(std::borrow::Cow::into_owned).map_err(|e| Fault::Fatal(anyhow::anyhow!(e)));
        let source_ms = msgs[*index].timestamp().to_millis();
        records.push(Output::Event { topic: &cfg.output_topic, reservation_id: &event.reservation_id, event_type: event.event_type, payload: payload(&cfg.output_topic)?, source_ms });
        for route in routes.iter().filter(|r| r.events.iter().any(|t| t.name() == event.event_type)) {
            records.push(Output::Event { topic: &route.topic, reservation_id: &event.reservation_id, event_type: event.event_type, payload: payload(&route.topic)?, source_ms: None });
        }
    }
    for r in &out.rejected {
        let m = msgs[r.index];
        let topic = cfg.dead_letter_topic_for(m.topic());
        tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), kind = r.error.kind(), error = %r.error, dead_letter_topic = %topic, "record rejected; sent to the dead-letter topic");
        records.push(Output::DeadLetter { topic, letter: crate::sink::deadletter::build(m, &r.error) });
    }
    Ok(records)
}
