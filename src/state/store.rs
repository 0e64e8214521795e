//! The state store: one small record per reservation in RocksDB.
//!
//! Each input partition keeps its state in its own column family
//! (`partition/<name>`, e.g. `partition/raw/3`), so a partition can be wiped
//! and rebuilt from the changelog alone, and dropped when it moves to another
//! instance. Next to the reservations, the same column family holds the
//! partition's progress markers (last applied input offset, changelog
//! position), and [`StateStore::commit`] writes both in ONE WriteBatch: state
//! and its offsets are always consistent with each other, whatever point a
//! `kill -9` hits.
//!
//! Durability, two ways:
//! - `replay` writes the WAL (not fsynced): the store is its only copy, and
//!   a process crash (`kill -9`) loses nothing.
//! - `run` disables the WAL, as Kafka Streams does: the changelog topic is
//!   the durable copy, and the store a cache of it. A crash loses the
//!   memtables, state and checkpoint together (both live in the partition's
//!   column family, which RocksDB flushes as one), so the store falls back
//!   to an older, consistent checkpoint, and restore catches it up from the
//!   changelog. A clean stop flushes the memtables ([`StateStore::flush`]).

use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};

use crate::machine::ReservationState;
use crate::pipeline::Pipeline;
use super::record::{decode, encode};
use crate::timers::{self, Due, Pending};

const PARTITION_PREFIX: &str = "partition/";
/// Key prefixes inside a partition's column family.
const RESERVATION: u8 = b'r';
const MARKER: u8 = b'm';
/// The due-time index of timers and retention: `t`, the due time (8 bytes,
/// big-endian with the sign bit flipped, so keys sort by time), what is due
/// (one byte) and the reservation id. Empty values. An entry is a hint: the
/// state decides whether it still holds ([`crate::timers::fire`]), so an
/// entry left behind by a change or a rewound interval only costs a look.
const TIMER: u8 = b't';
/// The marker naming the timer rows the index was built for.
const TIMER_SIGNATURE: &str = "timer-signature";

/// Why the store failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB at {path}: {source}")]
    Rocks { path: PathBuf, source: rocksdb::Error },
    #[error("state record of reservation {id:?} in {partition} is corrupt: {reason}")]
    Corrupt { partition: String, id: String, reason: &'static str },
    #[error("partition {0} is not open in the state store")]
    UnknownPartition(String),
    #[error("the state store at {0} is closed after a failure and not yet reopened")]
    Closed(PathBuf),
}

impl StoreError {
    /// Disk full, I/O errors, lock contention: a retry (after the operator or
    /// the OS fixes it) can succeed. Corruption cannot; that partition must
    /// be rebuilt from the changelog.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Rocks { source, .. } => matches!(
                source.kind(),
                rocksdb::ErrorKind::IOError | rocksdb::ErrorKind::Busy | rocksdb::ErrorKind::TimedOut | rocksdb::ErrorKind::TryAgain | rocksdb::ErrorKind::Incomplete
            ),
            StoreError::Closed(_) => true,
            StoreError::Corrupt { .. } | StoreError::UnknownPartition(_) => false,
        }
    }
}

/// State changes and progress markers of one partition, written atomically.
#[derive(Default)]
pub struct StateBatch {
    /// Keys and values (`None` deletes), in write order (a later write of a key wins).
    puts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// How many reservations the batch writes, for logs.
    pub reservations: usize,
}

impl StateBatch {
    pub fn put(&mut self, id: &str, state: &ReservationState) {
        self.put_encoded(id.as_bytes(), Some(encode(state)));
    }

    /// Writes an already encoded record (a changelog value), or deletes the
    /// reservation when `record` is `None` (a changelog tombstone).
    pub fn put_encoded(&mut self, id: &[u8], record: Option<Vec<u8>>) {
        self.puts.push((reservation_key(id), record));
        self.reservations += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty()
    }

    /// A named progress marker (e.g. `input-offset`), committed with the state.
    pub fn mark(&mut self, name: &str, value: u64) {
        self.puts.push((marker_key(name), Some(value.to_be_bytes().to_vec())));
    }

    /// Adds a due time to the partition's index.
    pub fn index(&mut self, p: &Pending) {
        self.puts.push((timer_key(p), Some(Vec::new())));
    }

    /// Removes a due time from the index (fired, or found stale).
    pub fn unindex(&mut self, p: &Pending) {
        self.puts.push((timer_key(p), None));
    }
}

fn timer_key(p: &Pending) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + p.id.len());
    key.push(TIMER);
    key.extend_from_slice(&((p.due as u64) ^ (1 << 63)).to_be_bytes());
    key.push(p.what.code());
    key.extend_from_slice(p.id.as_bytes());
    key
}

fn parse_timer_key(k: &[u8]) -> Option<Pending> {
    if k.len() < 10 || k[0] != TIMER {
        return None;
    }
    let due = (u64::from_be_bytes(k[1..9].try_into().ok()?) ^ (1 << 63)) as i64;
    let what = Due::from_code(k[9])?;
    Some(Pending { due, what, id: String::from_utf8_lossy(&k[10..]).into_owned() })
}

fn reservation_key(id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 1);
    key.push(RESERVATION);
    key.extend_from_slice(id);
    key
}

fn marker_key(name: &str) -> Vec<u8> {
    let mut key = vec![MARKER];
    key.extend_from_slice(name.as_bytes());
    key
}

/// Memtable memory of the whole store, whatever the number of partitions.
/// With the 64 MB block cache it bounds what RocksDB holds in RAM, so resident
/// memory does not grow with the number of reservations or partitions.
const TOTAL_WRITE_BUFFER_BYTES: usize = 64 << 20;

/// Tuning of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Memtable size per partition before it is flushed to a file.
    pub write_buffer_bytes: usize,
    /// Write no WAL: the caller has a durable copy elsewhere (the changelog).
    pub disable_wal: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { write_buffer_bytes: 32 << 20, disable_wal: false }
    }
}

/// Where the engine reads the stored state of a batch's reservations from:
/// the store itself, or a cache in front of it.
pub trait StateSource {
    fn get_many(&self, partition: &str, ids: &[&str]) -> Result<Vec<Option<ReservationState>>, StoreError>;
    /// The due-time index entries due by `up_to` (ms), earliest first.
    fn due(&self, partition: &str, up_to: i64) -> Result<Vec<Pending>, StoreError>;
}

impl StateSource for StateStore {
    fn get_many(&self, partition: &str, ids: &[&str]) -> Result<Vec<Option<ReservationState>>, StoreError> {
        StateStore::get_many(self, partition, ids)
    }

    fn due(&self, partition: &str, up_to: i64) -> Result<Vec<Pending>, StoreError> {
        StateStore::due(self, partition, up_to)
    }
}

/// The RocksDB database holding every partition's state.
pub struct StateStore {
    /// `None` between a failure that closed it and a successful [`StateStore::reopen`].
    db: Option<DB>,
    path: PathBuf,
    options: Options,
    disable_wal: bool,
}

impl StateStore {
    /// Opens (or creates) the store in `dir`, with every partition it holds.
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        StateStore::open_with(dir, StoreOptions::default())
    }

    pub fn open_with(dir: &Path, tuning: StoreOptions) -> Result<StateStore, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.set_write_buffer_size(tuning.write_buffer_bytes);
        // Memtables of all partitions together: an instance with many
        // partitions flushes the largest instead of holding 32 MB × 2 of each.
        options.set_db_write_buffer_size(TOTAL_WRITE_BUFFER_BYTES.max(tuning.write_buffer_bytes));
        options.set_max_background_jobs(2);
        options.set_max_open_files(512);
        // Point lookups by reservation id only: bloom filters on every file and
        // in the memtable, a hash index inside data blocks, a bounded cache.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_whole_key_filtering(true);
        table.set_data_block_index_type(rocksdb::DataBlockIndexType::BinaryAndHash);
        table.set_block_cache(&Cache::new_lru_cache(64 << 20));
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        options.set_block_based_table_factory(&table);
        options.set_memtable_whole_key_filtering(true);
        options.set_memtable_prefix_bloom_ratio(0.05);
        options.set_level_compaction_dynamic_level_bytes(true);
        let db = Self::open_db(dir, &options)?;
        Ok(StateStore { db: Some(db), path: dir.to_path_buf(), options, disable_wal: tuning.disable_wal })
    }

    /// Opens an existing store for reading only (`resevent state`): works
    /// beside a running instance's lock, and writes nothing.
    pub fn open_read_only(dir: &Path) -> Result<StateStore, StoreError> {
        let options = Options::default();
        let existing = DB::list_cf(&options, dir).map_err(|source| StoreError::Rocks { path: dir.to_path_buf(), source })?;
        let db = DB::open_cf_for_read_only(&options, dir, existing, false).map_err(|source| StoreError::Rocks { path: dir.to_path_buf(), source })?;
        Ok(StateStore { db: Some(db), path: dir.to_path_buf(), options, disable_wal: true })
    }

    fn open_db(dir: &Path, options: &Options) -> Result<DB, StoreError> {
        let existing = DB::list_cf(options, dir).unwrap_or_else(|_| vec!["default".to_string()]);
        let descriptors = existing.iter().map(|name| ColumnFamilyDescriptor::new(name, options.clone()));
        DB::open_cf_descriptors(options, dir, descriptors).map_err(|source| StoreError::Rocks { path: dir.to_path_buf(), source })
    }

    /// Closes and opens the database again: after an I/O failure RocksDB
    /// refuses writes until reopened. With a WAL (replay) every committed
    /// batch is there after it; without one (run) the newest batches may be
    /// gone, with their checkpoint, so the caller restores every partition
    /// from the changelog again. On error the
    /// store stays closed (every call fails with the retryable
    /// [`StoreError::Closed`]) and reopen can be tried again.
    pub fn reopen(&mut self) -> Result<(), StoreError> {
        self.db = None;
        self.db = Some(Self::open_db(&self.path, &self.options)?);
        Ok(())
    }

    fn db(&self) -> Result<&DB, StoreError> {
        self.db.as_ref().ok_or_else(|| StoreError::Closed(self.path.clone()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks { path: self.path.clone(), source }
    }

    /// Partitions that have state here.
    pub fn partitions(&self) -> Vec<String> {
        DB::list_cf(&self.options, &self.path)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|cf| cf.strip_prefix(PARTITION_PREFIX).map(String::from))
            .collect()
    }

    /// Makes sure a partition's column family exists.
    pub fn open_partition(&mut self, partition: &str) -> Result<(), StoreError> {
        let name = format!("{PARTITION_PREFIX}{partition}");
        let db = self.db.as_mut().ok_or_else(|| StoreError::Closed(self.path.clone()))?;
        if db.cf_handle(&name).is_none() {
            db.create_cf(&name, &self.options).map_err(|e| self.rocks(e))?;
        }
        Ok(())
    }

    /// Deletes a partition's state and markers (before a rebuild from the changelog).
    pub fn drop_partition(&mut self, partition: &str) -> Result<(), StoreError> {
        let name = format!("{PARTITION_PREFIX}{partition}");
        let db = self.db.as_mut().ok_or_else(|| StoreError::Closed(self.path.clone()))?;
        if db.cf_handle(&name).is_some() {
            db.drop_cf(&name).map_err(|e| self.rocks(e))?;
        }
        Ok(())
    }

    fn cf(&self, partition: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db()?.cf_handle(&format!("{PARTITION_PREFIX}{partition}")).ok_or_else(|| StoreError::UnknownPartition(partition.into()))
    }

    pub fn get(&self, partition: &str, id: &str) -> Result<Option<ReservationState>, StoreError> {
        let cf = self.cf(partition)?;
        match self.db()?.get_pinned_cf(cf, reservation_key(id.as_bytes())).map_err(|e| self.rocks(e))? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(|reason| StoreError::Corrupt { partition: partition.into(), id: id.into(), reason }),
        }
    }

    /// Looks up many reservations at once (RocksDB MultiGet: one pass over
    /// the memtables and files for the whole batch, much cheaper than a Get each).
    pub fn get_many(&self, partition: &str, ids: &[&str]) -> Result<Vec<Option<ReservationState>>, StoreError> {
        let cf = self.cf(partition)?;
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| reservation_key(id.as_bytes())).collect();
        self.db()?
            .batched_multi_get_cf(cf, &keys, false)
            .into_iter()
            .zip(ids)
            .map(|(r, id)| match r.map_err(|e| self.rocks(e))? {
                None => Ok(None),
                Some(bytes) => decode(&bytes).map(Some).map_err(|reason| StoreError::Corrupt { partition: partition.into(), id: (*id).into(), reason }),
            })
            .collect()
    }

    pub fn marker(&self, partition: &str, name: &str) -> Result<Option<u64>, StoreError> {
        let cf = self.cf(partition)?;
        let v = self.db()?.get_pinned_cf(cf, marker_key(name)).map_err(|e| self.rocks(e))?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(&b[..]).ok()).map(u64::from_be_bytes))
    }

    /// Writes a batch's state changes and markers atomically.
    pub fn commit(&self, partition: &str, batch: StateBatch) -> Result<(), StoreError> {
        let cf = self.cf(partition)?;
        let mut write = WriteBatch::default();
        for (k, v) in &batch.puts {
            match v {
                Some(v) => write.put_cf(cf, k, v),
                None => write.delete_cf(cf, k),
            }
        }
        let mut opts = WriteOptions::default();
        opts.disable_wal(self.disable_wal);
        self.db()?.write_opt(write, &opts).map_err(|e| self.rocks(e))
    }

    /// RocksDB's estimate of the live data of every partition, in bytes, and
    /// whether writes are stalled or stopped now (for /metrics).
    pub fn health(&self) -> (u64, bool) {
        let Ok(db) = self.db() else { return (0, false) };
        let mut live = 0;
        for name in DB::list_cf(&self.options, &self.path).unwrap_or_default() {
            if let Some(cf) = db.cf_handle(&name) {
                live += db.property_int_value_cf(cf, "rocksdb.estimate-live-data-size").ok().flatten().unwrap_or(0);
            }
        }
        let stopped = db.property_int_value("rocksdb.is-write-stopped").ok().flatten().unwrap_or(0) > 0;
        let delayed = db.property_int_value("rocksdb.actual-delayed-write-rate").ok().flatten().unwrap_or(0) > 0;
        (live, stopped || delayed)
    }

    /// Writes every memtable to disk: without a WAL, what a clean stop does
    /// so that the next start needs no restore.
    pub fn flush(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let cfs: Vec<_> = DB::list_cf(&self.options, &self.path).unwrap_or_default();
        for name in cfs {
            if let Some(cf) = db.cf_handle(&name) {
                db.flush_cf(cf).map_err(|e| self.rocks(e))?;
            }
        }
        Ok(())
    }

    /// The index entries due by `up_to` (ms), earliest first.
    pub fn due(&self, partition: &str, up_to: i64) -> Result<Vec<Pending>, StoreError> {
        let cf = self.cf(partition)?;
        let mut out = Vec::new();
        for item in self.db()?.iterator_cf(cf, rocksdb::IteratorMode::From(&[TIMER], rocksdb::Direction::Forward)) {
            let (k, _) = item.map_err(|e| self.rocks(e))?;
            let Some(p) = parse_timer_key(&k) else { break };
            if p.due > up_to {
                break;
            }
            out.push(p);
        }
        Ok(out)
    }

    /// Makes the partition's due-time index match `pipeline`'s timer rows:
    /// when it was built for other rows (or none, or before timers existed),
    /// it is built again from every stored reservation — once per pipeline
    /// change, so that firing never has to scan. `Some(n)`: rebuilt, with `n`
    /// entries. Run when a task becomes ready, and when a reload changes the
    /// rows.
    pub fn ensure_index(&self, partition: &str, pipeline: &Pipeline) -> Result<Option<usize>, StoreError> {
        let signature = pipeline.timer_signature();
        let stored = self.marker(partition, TIMER_SIGNATURE)?;
        // A store that never had timers holds no entries: nothing to rebuild.
        if stored == Some(signature) || (stored.is_none() && signature == Pipeline::untimed_signature()) {
            return Ok(None);
        }
        let cf = self.cf(partition)?;
        let db = self.db()?;
        let mut write = WriteBatch::default();
        write.delete_range_cf(cf, [TIMER], [TIMER + 1]);
        let mut entries = 0;
        for (id, state) in self.reservations(partition)? {
            for p in timers::armed(pipeline, &id, &state) {
                write.put_cf(cf, timer_key(&p), []);
                entries += 1;
            }
        }
        write.put_cf(cf, marker_key(TIMER_SIGNATURE), signature.to_be_bytes());
        let mut opts = WriteOptions::default();
        opts.disable_wal(self.disable_wal);
        db.write_opt(write, &opts).map_err(|e| self.rocks(e))?;
        Ok(Some(entries))
    }

    /// Marks the partition's index as built for no rows, so that the next
    /// [`StateStore::ensure_index`] builds it again (after states were
    /// written without their entries, as a restore writes them).
    pub fn forget_index(&self, partition: &str) -> Result<(), StoreError> {
        let cf = self.cf(partition)?;
        let mut opts = WriteOptions::default();
        opts.disable_wal(self.disable_wal);
        self.db()?.put_cf_opt(cf, marker_key(TIMER_SIGNATURE), 0u64.to_be_bytes(), &opts).map_err(|e| self.rocks(e))
    }

    /// Every reservation of a partition, in key order (for inspection and tests).
    pub fn reservations(&self, partition: &str) -> Result<Vec<(String, ReservationState)>, StoreError> {
        let cf = self.cf(partition)?;
        let mut out = Vec::new();
        for item in self.db()?.prefix_iterator_cf(cf, [RESERVATION]) {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            if k.first() != Some(&RESERVATION) {
                break;
            }
            let id = String::from_utf8_lossy(&k[1..]).into_owned();
            let state = decode(&v).map_err(|reason| StoreError::Corrupt { partition: partition.into(), id: id.clone(), reason })?;
            out.push((id, state));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::EventType;
    use crate::state::record::tests::sample;


    #[test]
    fn the_due_index_lists_what_is_due_in_time_order_and_is_rebuilt_for_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store.open_partition("raw/0").unwrap();
        let mut batch = StateBatch::default();
        for (due, id) in [(5, "b"), (-3, "a"), (5, "a"), (9, "c")] {
            batch.index(&Pending { due, id: id.into(), what: Due::Timer(EventType::NoShow) });
        }
        store.commit("raw/0", batch).unwrap();
        let due: Vec<(i64, String)> = store.due("raw/0", 5).unwrap().into_iter().map(|p| (p.due, p.id)).collect();
        assert_eq!(due, vec![(-3, "a".into()), (5, "a".into()), (5, "b".into())]);
        // Rows in force that the index was not built for: rebuilt from the state.
        let text = crate::pipeline::DEFAULT_PIPELINE.to_string() + "\n[[timer]]\nevent = \"OVERSTAY\"\nstate = \"IN_HOUSE\"\nfield = \"departure\"\nafter = \"12h\"\n";
        let p = Pipeline::parse(&text, "t").unwrap();
        let mut batch = StateBatch::default();
        batch.put("r1", &sample());
        store.commit("raw/0", batch).unwrap();
        assert_eq!(store.ensure_index("raw/0", &p).unwrap(), Some(1));
        assert_eq!(store.ensure_index("raw/0", &p).unwrap(), None, "built for these rows already");
        let due = store.due("raw/0", i64::MAX).unwrap();
        let expected = crate::time::parse_millis("2026-11-24T12:00:00Z").unwrap();
        assert_eq!(due, vec![Pending { due: expected, id: "r1".into(), what: Due::Timer(EventType::Overstay) }]);
        assert_eq!(store.reservations("raw/0").unwrap().len(), 1, "index entries are not reservations");
    }

    #[test]
    fn partitions_are_separate_and_state_and_markers_commit_together() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = StateStore::open(dir.path()).unwrap();
            store.open_partition("raw/0").unwrap();
            store.open_partition("raw/1").unwrap();
            let mut batch = StateBatch::default();
            batch.put("r1", &sample());
            batch.mark("input-offset", 42);
            store.commit("raw/0", batch).unwrap();
            assert_eq!(store.get("raw/1", "r1").unwrap(), None);
        }
        let mut store = StateStore::open(dir.path()).unwrap();
        let mut parts = store.partitions();
        parts.sort();
        assert_eq!(parts, vec!["raw/0".to_string(), "raw/1".to_string()]);
        assert_eq!(store.get("raw/0", "r1").unwrap(), Some(sample()));
        assert_eq!(store.marker("raw/0", "input-offset").unwrap(), Some(42));
        assert_eq!(store.reservations("raw/0").unwrap().len(), 1);
        store.drop_partition("raw/0").unwrap();
        assert!(matches!(store.get("raw/0", "r1"), Err(StoreError::UnknownPartition(_))));
        store.open_partition("raw/0").unwrap();
        assert_eq!(store.get("raw/0", "r1").unwrap(), None);
        assert_eq!(store.marker("raw/0", "input-offset").unwrap(), None);
    }
}

/// How a batch's failure in the store is handled (see [`crate::fault`]): an
/// I/O error reopens the store and retries; anything else stops the instance.
impl From<StoreError> for crate::fault::Fault {
    fn from(e: StoreError) -> Self {
        use crate::fault::Fault;
        if e.is_retryable() { Fault::Disk(e.into()) } else { Fault::Fatal(anyhow::Error::new(e).context("the state store is unusable; delete the state directory to rebuild it from the changelog")) }
    }
}
