//! What `resevent run` reports to Prometheus (`GET /metrics`), through the
//! `prometheus-client` crate.
//!
//! Updated once per batch, per commit, per restore step or per librdkafka
//! statistics report — never per record — and labelled only with bounded
//! values (event types, error kinds, partition numbers). No I/O here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::sink::latency::Latency;
use crate::engine::Counts;

type Labels = Vec<(String, String)>;

fn label(k: &str, v: impl ToString) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// What the status page shows beyond /metrics: totals and a short history.
#[derive(Default)]
pub struct Board {
    pub records: u64,
    pub events: BTreeMap<&'static str, u64>,
    pub dead_letters: BTreeMap<&'static str, u64>,
    pub lag: BTreeMap<(String, i32), i64>,
    pub restore_remaining: BTreeMap<i32, u64>,
    /// The allowlist in force, as text.
    pub allowlist: String,
    /// (seconds since start, cumulative events by type), one every `SAMPLE` at most.
    pub history: VecDeque<(f64, BTreeMap<&'static str, u64>)>,
    /// Pauses of the processing loop by reason: (how many, seconds in all, the longest).
    pub paused: BTreeMap<&'static str, (u64, f64, f64)>,
}

/// Why the processing loop could not take the next batch. The loop does
/// one thing at a time, so each of these is time no record is processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// The loop's own part of one commit: sealing the interval, queueing its
    /// changelog records, the WriteBatch (at-least-once, the acknowledgements
    /// are awaited while records flow); under exactly-once, the whole commit.
    Commit,
    /// The cache reached its bound while an interval was still committing,
    /// and the loop waited for that commit.
    CacheFull,
    /// Partitions were revoked; the revoke callback committed first (inside a poll).
    Revocation,
    /// A restored task was handed over: its timer index built, its partitions resumed.
    Restore,
}

impl Pause {
    pub fn label(self) -> &'static str {
        match self {
            Pause::Commit => "commit",
            Pause::CacheFull => "cache-full",
            Pause::Revocation => "revocation",
            Pause::Restore => "restore",
        }
    }
}

/// How often the events-per-second history takes a sample, and how many it
/// keeps (10 minutes): one a second, so the chart has points from the first
/// seconds of a run.
const SAMPLE: Duration = Duration::from_secs(1);
const HISTORY: usize = 600;

/// Every metric of the service, registered once.
pub struct Metrics {
    pub board: Mutex<Board>,
    started: Instant,
    pub registry: Registry,
    records_consumed: Counter,
    business_events: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    changes_suppressed: Family<Labels, Counter>,
    timers_fired: Counter,
    reservations_retired: Counter,
    consumer_lag: Family<Labels, Gauge>,
    restore_remaining: Family<Labels, Gauge>,
    restored_records: Counter,
    batch_records: Histogram,
    commit_seconds: Histogram,
    paused_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    state_live_bytes: Gauge,
    write_stalls: Gauge,
}

/// The collector's latency histogram (record timestamp → business event
/// acknowledged), exported as a Prometheus histogram when scraped.
#[derive(Clone)]
pub struct LatencyMetric(pub Arc<Mutex<Latency>>);

impl std::fmt::Debug for LatencyMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LatencyMetric")
    }
}

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BOUNDS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl EncodeMetric for LatencyMetric {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let l = self.0.lock().expect("latency lock");
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(LATENCY_BOUNDS.len() + 1);
        let mut below = 0;
        for bound in LATENCY_BOUNDS {
            let upto = l.count_at_most((bound * 1000.0) as u64);
            buckets.push((bound, upto - below));
            below = upto;
        }
        buckets.push((f64::MAX, l.count() - below));
        encoder.encode_histogram::<NoLabelSet>(l.sum_ms() as f64 / 1000.0, l.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Metrics {
    pub fn new(latency: LatencyMetric) -> Metrics {
        let mut registry = Registry::with_prefix("resevent");
        let m = Metrics {
            board: Mutex::default(),
            started: Instant::now(),
            records_consumed: Counter::default(),
            business_events: Family::default(),
            dead_letters: Family::default(),
            changes_suppressed: Family::default(),
            timers_fired: Counter::default(),
            reservations_retired: Counter::default(),
            consumer_lag: Family::default(),
            restore_remaining: Family::default(),
            restored_records: Counter::default(),
            batch_records: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 3.0, 10)),
            paused_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 3.0, 11))),
            state_live_bytes: Gauge::default(),
            write_stalls: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("records_consumed", "Input records processed", m.records_consumed.clone());
        registry.register("business_events", "Business events sent, by type", m.business_events.clone());
        registry.register("dead_letters", "Records sent to the dead-letter topic, by error kind", m.dead_letters.clone());
        registry.register("changes_suppressed", "Changes that did nothing: stale (older than the stored position) or duplicate (already applied)", m.changes_suppressed.clone());
        registry.register("timers_fired", "Timers ([[timer]] rows) that fired on stream time; their events count in business_events too", m.timers_fired.clone());
        registry.register("reservations_retired", "Reservations removed from state by retention", m.reservations_retired.clone());
        registry.register("consumer_lag", "Input records not yet committed, per partition (librdkafka statistics)", m.consumer_lag.clone());
        registry.register("restore_remaining_records", "Changelog records a restoring partition still has to read", m.restore_remaining.clone());
        registry.register("restored_records", "Changelog records restored", m.restored_records.clone());
        registry.register("batch_records", "Records per processed batch", m.batch_records.clone());
        registry.register_with_unit("commit_duration", "How long a commit of the interval took", Unit::Seconds, m.commit_seconds.clone());
        registry.register_with_unit(
            "processing_paused",
            "How long the processing loop could not process, by reason: commit (the interval), cache-full (an early commit), revocation, restore (a task's hand-over)",
            Unit::Seconds,
            m.paused_seconds.clone(),
        );
        registry.register_with_unit("state_live_data", "RocksDB live data size of the state store", Unit::Bytes, m.state_live_bytes.clone());
        registry.register("state_write_stalls", "1 while RocksDB stalls or stops writes, else 0", m.write_stalls.clone());
        registry.register_with_unit("event_latency", "Input record timestamp to its business event acknowledged", Unit::Seconds, latency);
        // The history starts at zero, so the first burst of traffic shows as a rate.
        m.board.lock().expect("board lock").history.push_back((0.0, BTreeMap::new()));
        Metrics { registry, ..m }
    }

    /// One processed batch's counters.
    pub fn batch(&self, c: &Counts, events_by_type: &[(&'static str, u64)], dead_by_kind: &[(&'static str, u64)]) {
        self.records_consumed.inc_by(c.records);
        self.batch_records.observe(c.records as f64);
        for (t, n) in events_by_type {
            self.business_events.get_or_create(&label("event_type", t)).inc_by(*n);
        }
        for (k, n) in dead_by_kind {
            self.dead_letters.get_or_create(&label("kind", k)).inc_by(*n);
        }
        if c.stale > 0 {
            self.changes_suppressed.get_or_create(&label("reason", "stale")).inc_by(c.stale);
        }
        if c.duplicates > 0 {
            self.changes_suppressed.get_or_create(&label("reason", "duplicate")).inc_by(c.duplicates);
        }
        self.timers_fired.inc_by(c.timers);
        self.reservations_retired.inc_by(c.retired);
        let mut b = self.board.lock().expect("board lock");
        b.records += c.records;
        for (t, n) in events_by_type {
            *b.events.entry(t).or_default() += n;
        }
        for (k, n) in dead_by_kind {
            *b.dead_letters.entry(k).or_default() += n;
        }
        drop(b);
        self.sample();
    }

    /// Adds a point to the events history if the last is `SAMPLE` old.
    pub fn sample(&self) {
        let now = self.started.elapsed().as_secs_f64();
        let mut b = self.board.lock().expect("board lock");
        if b.history.back().is_none_or(|(t, _)| now - t >= SAMPLE.as_secs_f64()) {
            let point = b.events.clone();
            b.history.push_back((now, point));
            if b.history.len() > HISTORY {
                b.history.pop_front();
            }
        }
    }

    pub fn set_allowlist(&self, text: String) {
        self.board.lock().expect("board lock").allowlist = text;
    }

    pub fn committed(&self, seconds: f64) {
        self.commit_seconds.observe(seconds);
    }

    /// The loop was paused for `seconds`, for `why`.
    pub fn paused(&self, why: Pause, seconds: f64) {
        self.paused_seconds.get_or_create(&label("reason", why.label())).observe(seconds);
        let mut b = self.board.lock().expect("board lock");
        let (n, total, longest) = b.paused.entry(why.label()).or_default();
        *n += 1;
        *total += seconds;
        *longest = longest.max(seconds);
    }

    pub fn lag(&self, topic: &str, partition: i32, lag: i64) {
        let labels = vec![("topic".to_string(), topic.to_string()), ("partition".to_string(), partition.to_string())];
        self.consumer_lag.get_or_create(&labels).set(lag.max(0));
        self.board.lock().expect("board lock").lag.insert((topic.to_string(), partition), lag.max(0));
    }

    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let labels = vec![("topic".to_string(), topic.to_string()), ("partition".to_string(), partition.to_string())];
        self.consumer_lag.remove(&labels);
        self.board.lock().expect("board lock").lag.remove(&(topic.to_string(), partition));
    }

    pub fn restore_progress(&self, partition: i32, remaining: u64, newly_restored: u64) {
        self.restore_remaining.get_or_create(&label("partition", partition)).set(remaining as i64);
        self.restored_records.inc_by(newly_restored);
        self.board.lock().expect("board lock").restore_remaining.insert(partition, remaining);
    }

    pub fn store(&self, live_bytes: u64, stalled: bool) {
        self.state_live_bytes.set(live_bytes as i64);
        self.write_stalls.set(i64::from(stalled));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
