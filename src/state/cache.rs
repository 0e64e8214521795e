//! The write-back cache in front of RocksDB: Kafka Streams' record cache.
//!
//! Between two commits, the new state of every reservation a task changed
//! lives here (dirty), not in RocksDB and not on the changelog. A commit
//! writes each dirty reservation once, however often it changed in the
//! interval, then keeps it as a clean entry so a hot reservation is read from
//! memory, not by a MultiGet. A failed interval drops the dirty entries: the
//! store still holds the last committed state, which is what a rewind
//! processes the interval again against.
//!
//! Bounded by an estimate of its bytes (`cache_max_bytes`): clean entries are
//! dropped first; when the dirty ones alone pass the bound, the caller
//! commits early. No I/O here.

use std::collections::HashMap;

use crate::machine::ReservationState;
use crate::state::store::{StateSource, StateStore, StoreError};

/// Encoded states per task, as the changelog and the store take them.
/// Per task, each dirty reservation's record (`None`: removed, a tombstone).
pub type DirtyStates = Vec<(i32, Vec<(String, Option<Vec<u8>>)>)>;

/// The engine's view of a task's state: the write-back cache first, the
/// store for what the cache lacks (one MultiGet for all of them).
pub struct CachedState<'a> {
    pub cache: &'a WriteBackCache,
    pub task: i32,
    pub store: &'a StateStore,
}

impl StateSource for CachedState<'_> {
    fn get_many(&self, partition: &str, ids: &[&str]) -> Result<Vec<Option<ReservationState>>, StoreError> {
        let mut out: Vec<Option<ReservationState>> = Vec::with_capacity(ids.len());
        let mut missing: Vec<(usize, &str)> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match self.cache.lookup(self.task, id) {
                Some(s) => out.push(s.cloned()),
                None => {
                    out.push(None);
                    missing.push((i, id));
                }
            }
        }
        if !missing.is_empty() {
            let keys: Vec<&str> = missing.iter().map(|(_, id)| *id).collect();
            for ((i, _), state) in missing.iter().zip(self.store.get_many(partition, &keys)?) {
                out[*i] = state;
            }
        }
        Ok(out)
    }

    /// The store's index: what this interval used up is still listed there
    /// until the commit, and [`crate::timers::fire`] finds it stale.
    fn due(&self, partition: &str, up_to: i64) -> Result<Vec<crate::timers::Pending>, StoreError> {
        self.store.due(partition, up_to)
    }
}

/// One cached reservation.
struct Entry {
    /// `None`: removed (retention); the commit deletes it from the store and
    /// writes a tombstone to the changelog.
    state: Option<ReservationState>,
    /// Changed since the last commit: must reach the changelog and the store.
    dirty: bool,
    /// Estimated memory of the entry, for the bound.
    bytes: usize,
}

/// Per task (input partition number), the reservations cached.
#[derive(Default)]
pub struct WriteBackCache {
    tasks: HashMap<i32, HashMap<String, Entry>>,
    /// Estimated bytes of the dirty entries, and of all entries.
    dirty_bytes: usize,
    total_bytes: usize,
    dirty_count: usize,
    max_bytes: usize,
}

/// Rough memory of a cached state: the strings, the identities, and the
/// map's own overhead per entry.
fn estimate(id: &str, s: &ReservationState) -> usize {
    96 + id.len() + s.status.as_ref().map_or(0, String::len) + s.fields.iter().flatten().map(String::len).sum::<usize>() + 8 * s.applied.len()
}

impl WriteBackCache {
    pub fn new(max_bytes: usize) -> WriteBackCache {
        WriteBackCache { max_bytes, ..Default::default() }
    }

    /// The cached state of a reservation, dirty or clean.
    pub fn get(&self, task: i32, id: &str) -> Option<&ReservationState> {
        self.lookup(task, id).flatten()
    }

    /// What the cache knows of a reservation: `Some(None)` when it was
    /// removed in this interval (the store may still hold it).
    pub fn lookup(&self, task: i32, id: &str) -> Option<Option<&ReservationState>> {
        self.tasks.get(&task)?.get(id).map(|e| e.state.as_ref())
    }

    /// Removes a reservation at the next commit (retention).
    pub fn remove(&mut self, task: i32, id: &str) {
        self.set(task, id, None);
    }

    /// A reservation's new state, to be written at the next commit.
    pub fn put(&mut self, task: i32, id: &str, state: ReservationState) {
        self.set(task, id, Some(state));
    }

    fn set(&mut self, task: i32, id: &str, state: Option<ReservationState>) {
        let bytes = state.as_ref().map_or(96 + id.len(), |s| estimate(id, s));
        let entries = self.tasks.entry(task).or_default();
        match entries.get_mut(id) {
            Some(e) => {
                self.total_bytes = self.total_bytes - e.bytes + bytes;
                if e.dirty {
                    self.dirty_bytes = self.dirty_bytes - e.bytes + bytes;
                } else {
                    self.dirty_bytes += bytes;
                    self.dirty_count += 1;
                }
                *e = Entry { state, dirty: true, bytes };
            }
            None => {
                entries.insert(id.to_owned(), Entry { state, dirty: true, bytes });
                self.total_bytes += bytes;
                self.dirty_bytes += bytes;
                self.dirty_count += 1;
            }
        }
    }

    /// Whether the dirty entries alone have reached the bound: time to commit.
    pub fn is_full(&self) -> bool {
        self.dirty_bytes >= self.max_bytes
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty_count
    }

    /// The dirty entries per task, encoded for the changelog and the store
    /// (the same bytes go to both). The entries stay dirty until
    /// [`WriteBackCache::mark_clean`] or [`WriteBackCache::drop_dirty`].
    /// A removed reservation is `None` (a tombstone).
    pub fn dirty_encoded(&self) -> DirtyStates {
        let mut out: DirtyStates = self
            .tasks
            .iter()
            .map(|(&task, entries)| (task, entries.iter().filter(|(_, e)| e.dirty).map(|(id, e)| (id.clone(), e.state.as_ref().map(crate::state::record::encode))).collect::<Vec<_>>()))
            .filter(|(_, states)| !states.is_empty())
            .collect();
        out.sort_by_key(|(task, _)| *task);
        out
    }

    /// After a commit: the dirty entries are in the store now. Clean entries
    /// beyond the bound are dropped.
    pub fn mark_clean(&mut self) {
        for entries in self.tasks.values_mut() {
            for e in entries.values_mut() {
                e.dirty = false;
            }
        }
        self.dirty_bytes = 0;
        self.dirty_count = 0;
        if self.total_bytes > self.max_bytes {
            self.tasks.clear();
            self.total_bytes = 0;
        }
    }

    /// After a failed interval: forget every state not committed. Clean
    /// entries equal the store and stay.
    pub fn drop_dirty(&mut self) {
        for entries in self.tasks.values_mut() {
            entries.retain(|_, e| !e.dirty);
        }
        self.total_bytes -= self.dirty_bytes;
        self.dirty_bytes = 0;
        self.dirty_count = 0;
    }

    /// A task moved away: its entries must not serve a later owner's reads.
    /// Call after its dirty entries were committed (or given up).
    pub fn drop_task(&mut self, task: i32) {
        if let Some(entries) = self.tasks.remove(&task) {
            for e in entries.values() {
                self.total_bytes -= e.bytes;
                if e.dirty {
                    self.dirty_bytes -= e.bytes;
                    self.dirty_count -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::State;

    fn state(room: &str) -> ReservationState {
        ReservationState { state: State::InHouse, status: Some("Arrived".into()), fields: [None, Some(room.into()), None, None], ..Default::default() }
    }

    #[test]
    fn a_reservation_changed_twice_is_written_once_with_its_last_state() {
        let mut c = WriteBackCache::new(1 << 20);
        c.put(0, "r1", state("101"));
        c.put(0, "r1", state("202"));
        c.put(1, "r2", state("303"));
        assert_eq!(c.dirty_count(), 2);
        let dirty = c.dirty_encoded();
        assert_eq!(dirty.len(), 2);
        assert_eq!(dirty[0].1, vec![("r1".to_string(), Some(crate::state::record::encode(&state("202"))))]);
        c.mark_clean();
        assert_eq!(c.dirty_count(), 0);
        assert!(c.dirty_encoded().is_empty());
        assert_eq!(c.get(0, "r1"), Some(&state("202")), "a committed state is still served from memory");
    }

    #[test]
    fn a_failed_interval_forgets_only_what_was_not_committed() {
        let mut c = WriteBackCache::new(1 << 20);
        c.put(0, "kept", state("101"));
        c.mark_clean();
        c.put(0, "kept", state("202"));
        c.put(0, "new", state("303"));
        c.drop_dirty();
        assert_eq!(c.get(0, "kept"), None, "its committed state is the store's; the cached one was newer");
        assert_eq!(c.get(0, "new"), None);
        assert_eq!((c.dirty_count(), c.dirty_bytes, c.total_bytes), (0, 0, 0));
    }

    #[test]
    fn full_when_dirty_entries_reach_the_bound_and_clean_ones_give_way() {
        let mut c = WriteBackCache::new(400);
        c.put(0, "a", state("1"));
        assert!(!c.is_full());
        for i in 0..4 {
            c.put(0, &format!("r{i}"), state("1"));
        }
        assert!(c.is_full());
        c.mark_clean();
        assert!(!c.is_full());
        assert_eq!(c.get(0, "a"), None, "clean entries over the bound are dropped");
        c.put(3, "x", state("9"));
        c.drop_task(3);
        assert_eq!((c.dirty_count(), c.dirty_bytes), (0, 0));
    }
}
