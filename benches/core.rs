//! Core engine benchmark: decode + state machine + state through the
//! write-back cache, committed to RocksDB (no WAL) once per ~100k events, as
//! `resevent run` does; ~1 KB connector events, 1M distinct reservations, one
//! thread. Compared in
//! the same run with decode-only (serde_json parsing the same lines into a
//! `Value`), the floor any JSON consumer pays.
//!
//!   scripts/bench-core                                   # criterion figures, then the side-by-side table
//!   RESEVENT_BENCH_RESERVATIONS=100000 scripts/bench-core   # smaller state
//!   RESEVENT_BENCH_QUICK=1 scripts/bench-core                # only the side-by-side table

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use resevent::decode::{Decoder, Format};
use resevent::engine::{Engine, InputRecord};
use resevent::pipeline::Pipeline;
use resevent::state::cache::{CachedState, WriteBackCache};
use resevent::state::store::{StateBatch, StateStore, StoreOptions};
use resevent::workload::Workload;

/// mimalloc: the engine allocates many small, short-lived strings per record,
/// and glibc's malloc was a fifth of the core benchmark's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 2048;
const PARTITION: &str = "bench/0";
/// Batches per commit: ~100k events, about what `resevent run` processes in
/// its default 1 s commit interval.
const COMMIT_EVERY: usize = 50;

/// The service's hot path without its network: states read through the
/// write-back cache, written to RocksDB (no WAL) once per commit interval.
struct Bench {
    engine: Engine,
    store: StateStore,
    cache: WriteBackCache,
    since_commit: usize,
    workload: Workload,
    offset: u64,
    clock: resevent::timers::StreamClock,
    _dir: tempfile::TempDir,
}

impl Bench {
    /// A store already holding `reservations` reservations.
    fn new(reservations: u64) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open_with(dir.path(), StoreOptions { disable_wal: true, ..StoreOptions::default() }).unwrap();
        store.open_partition(PARTITION).unwrap();
        let pipeline = Pipeline::builtin();
        let engine = Engine::new(pipeline.clone(), Decoder::new(Format::Auto, pipeline.paths.clone()));
        let mut b = Bench { engine, store, cache: WriteBackCache::new(32 << 20), since_commit: 0, workload: Workload::new(reservations, 7), offset: 0, clock: Default::default(), _dir: dir };
        let started = Instant::now();
        let mut loaded = 0;
        while loaded < reservations {
            let batch = b.next_batch();
            loaded += batch.len() as u64;
            b.process(&batch);
        }
        eprintln!("loaded {reservations} reservations in {:.1}s", started.elapsed().as_secs_f64());
        b
    }

    fn next_batch(&mut self) -> Vec<String> {
        (0..BATCH).map(|_| self.workload.next_event().1).collect()
    }

    /// One batch through decode, the table and one RocksDB WriteBatch.
    fn process(&mut self, lines: &[String]) -> usize {
        self.process_timed(lines).0
    }

    /// Also returns the time spent in the RocksDB commit.
    fn process_timed(&mut self, lines: &[String]) -> (usize, Duration) {
        let records: Vec<InputRecord> = lines
            .iter()
            .map(|l| {
                self.offset += 1;
                InputRecord { key: None, value: Some(l.as_bytes()), offset: self.offset }
            })
            .collect();
        let out = self.engine.process(&CachedState { cache: &self.cache, task: 0, store: &self.store }, PARTITION, &records, &mut self.clock).unwrap();
        assert_eq!(out.counts.rejected, 0);
        let n = out.events.len();
        for (id, state) in out.states {
            self.cache.put(0, &id, state);
        }
        self.since_commit += 1;
        let t = Instant::now();
        if self.since_commit >= COMMIT_EVERY || self.cache.is_full() {
            let mut batch = StateBatch::default();
            for (_, states) in self.cache.dirty_encoded() {
                for (id, record) in states {
                    batch.put_encoded(id.as_bytes(), record);
                }
            }
            let generation = self.cache.freeze();
            self.store.commit(PARTITION, batch).unwrap();
            self.cache.mark_clean(generation);
            self.since_commit = 0;
        }
        (n, t.elapsed())
    }
}

fn decode_only(lines: &[String]) -> usize {
    lines.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap().as_object().map_or(0, |m| m.len())).sum()
}

fn reservations() -> u64 {
    std::env::var("RESEVENT_BENCH_RESERVATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

fn main() {
    let mut bench = Bench::new(reservations());
    if std::env::var_os("RESEVENT_BENCH_QUICK").is_none() {
        criterion_figures(&mut bench);
    }
    side_by_side(&mut bench);
}

fn criterion_figures(bench: &mut Bench) {
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(10));
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("decode+table+rocksdb", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = bench.next_batch();
                let t = Instant::now();
                std::hint::black_box(bench.process(&batch));
                total += t.elapsed();
            }
            total
        })
    });
    let sample = bench.next_batch();
    g.bench_function("decode-only (serde_json::Value)", |b| b.iter(|| std::hint::black_box(decode_only(&sample))));
    g.finish();
    c.final_summary();
}

fn side_by_side(bench: &mut Bench) {
    let sample = bench.next_batch();
    // Side by side, interleaved so machine noise hits both alike.
    let (mut core, mut base, mut commit, mut ours) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let rounds: usize = std::env::var("RESEVENT_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    for _ in 0..rounds {
        let batch = bench.next_batch();
        let t = Instant::now();
        std::hint::black_box(decode_only(&batch));
        base += t.elapsed();
        let t = Instant::now();
        for l in &batch {
            std::hint::black_box(bench.engine.decoder.decode(None, Some(l.as_bytes())).unwrap());
        }
        ours += t.elapsed();
        let t = Instant::now();
        let (events, c) = bench.process_timed(&batch);
        std::hint::black_box(events);
        core += t.elapsed();
        commit += c;
    }
    let n = (rounds * BATCH) as f64;
    let bytes: usize = sample.iter().map(String::len).sum();
    let (core_rate, base_rate) = (n / core.as_secs_f64(), n / base.as_secs_f64());
    println!("\nside by side, {} events of ~{} bytes, {} reservations in state, one thread:", rounds * BATCH, bytes / sample.len(), reservations());
    println!("  decode + table + RocksDB   {:>10.0} events/s", core_rate);
    println!("  decode-only (serde_json)   {:>10.0} events/s", base_rate);
    println!("  ratio                      {:>10.0}% of decode-only", 100.0 * core_rate / base_rate);
    println!("  (resevent's decoder alone: {:.0} events/s)", n / ours.as_secs_f64());
    println!("  (RocksDB WriteBatch commits, one per {COMMIT_EVERY} batches: {:.0}% of the core time)", 100.0 * commit.as_secs_f64() / core.as_secs_f64());
}
