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
//! Two intervals can be dirty at once: the one committing (a frozen
//! *generation*: [`WriteBackCache::freeze`]) and the one processing while it
//! commits. A lookup sees the newest state of either, then the store. The
//! committing generation turns clean when its commit is done
//! ([`WriteBackCache::mark_clean`]); a failed commit drops both
//! ([`WriteBackCache::drop_dirty`]), since the interval processing started
//! from the committing one's states.
//!
//! Bounded by an estimate of its bytes (`cache_max_bytes`): clean entries are
//! dropped first; when the dirty ones alone pass the bound, the caller
//! commits early, or waits for the commit under way. No I/O here.

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
    /// The generation that last wrote it. Dirty (must reach the changelog
    /// and the store) while that generation is not committed.
    written: u64,
    /// Estimated memory of the entry, for the bound.
    bytes: usize,
}

/// How many dirty entries a generation holds, and their estimated bytes.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Tally {
    count: usize,
    bytes: usize,
}

/// Per task (input partition number), the reservations cached.
#[derive(Default)]
pub struct WriteBackCache {
    tasks: HashMap<i32, HashMap<String, Entry>>,
    /// The generation writes go to now (the interval processing).
    generation: u64,
    /// Every generation up to this one is committed: its entries are clean.
    committed: u64,
    /// Dirty entries of the current generation, and of the frozen one (the
    /// generation before it, while its commit is under way).
    current: Tally,
    frozen: Tally,
    /// Estimated bytes of all entries.
    total_bytes: usize,
    max_bytes: usize,
}

/// Rough memory of a cached state: the strings, the identities, and the
/// map's own overhead per entry.
fn estimate(id: &str, s: &ReservationState) -> usize {
    96 + id.len() + s.status.as_ref().map_or(0, String::len) + s.fields.iter().flatten().map(String::len).sum::<usize>() + 8 * s.applied.len()
}

impl WriteBackCache {
    pub fn new(max_bytes: usize) -> WriteBackCache {
        WriteBackCache { max_bytes, generation: 1, ..Default::default() }
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
        let (generation, committed) = (self.generation, self.committed);
        let entries = self.tasks.entry(task).or_default();
        match entries.get_mut(id) {
            Some(e) => {
                self.total_bytes = self.total_bytes - e.bytes + bytes;
                if e.written == generation {
                    self.current.bytes = self.current.bytes - e.bytes + bytes;
                } else {
                    if e.written > committed {
                        // Frozen: its state is on its way in the commit; this newer one is the next interval's.
                        self.frozen.bytes -= e.bytes;
                        self.frozen.count -= 1;
                    }
                    self.current.bytes += bytes;
                    self.current.count += 1;
                }
                *e = Entry { state, written: generation, bytes };
            }
            None => {
                entries.insert(id.to_owned(), Entry { state, written: generation, bytes });
                self.total_bytes += bytes;
                self.current.bytes += bytes;
                self.current.count += 1;
            }
        }
    }

    /// Whether the dirty entries of both generations have reached the
    /// bound: time to commit, or to wait for the commit under way.
    pub fn is_full(&self) -> bool {
        self.current.bytes + self.frozen.bytes >= self.max_bytes
    }

    /// Dirty entries of the current generation: what the next commit writes.
    pub fn dirty_count(&self) -> usize {
        self.current.count
    }

    /// The current generation's dirty entries per task, encoded for the
    /// changelog and the store (the same bytes go to both). They stay dirty
    /// until their generation is committed ([`WriteBackCache::mark_clean`])
    /// or given up ([`WriteBackCache::drop_dirty`]). A removed reservation is
    /// `None` (a tombstone).
    pub fn dirty_encoded(&self) -> DirtyStates {
        let generation = self.generation;
        let mut out: DirtyStates = self
            .tasks
            .iter()
            .map(|(&task, entries)| (task, entries.iter().filter(|(_, e)| e.written == generation).map(|(id, e)| (id.clone(), e.state.as_ref().map(crate::state::record::encode))).collect::<Vec<_>>()))
            .filter(|(_, states)| !states.is_empty())
            .collect();
        out.sort_by_key(|(task, _)| *task);
        out
    }

    /// Ends the current generation (its commit begins) and returns it; writes
    /// go to a new one from now on. At most one generation is frozen: call
    /// only once the last one is committed or dropped.
    pub fn freeze(&mut self) -> u64 {
        debug_assert_eq!(self.committed + 1, self.generation, "one generation frozen at a time");
        self.frozen = std::mem::take(&mut self.current);
        self.generation += 1;
        self.generation - 1
    }

    /// After `generation`'s commit: its entries are in the store now (those
    /// written again since stay dirty, in the current generation). Clean
    /// entries beyond the bound are dropped.
    pub fn mark_clean(&mut self, generation: u64) {
        self.committed = self.committed.max(generation);
        if self.committed + 1 == self.generation {
            self.frozen = Tally::default();
        }
        if self.total_bytes > self.max_bytes {
            let committed = self.committed;
            for entries in self.tasks.values_mut() {
                entries.retain(|_, e| e.written > committed);
            }
            self.total_bytes = self.current.bytes + self.frozen.bytes;
        }
    }

    /// After a failed commit or interval: forget every state not committed,
    /// in both generations (the one processing started from the frozen
    /// one's states). Clean entries equal the store and stay.
    pub fn drop_dirty(&mut self) {
        let committed = self.committed;
        for entries in self.tasks.values_mut() {
            entries.retain(|_, e| e.written <= committed);
        }
        self.total_bytes -= self.current.bytes + self.frozen.bytes;
        self.current = Tally::default();
        self.frozen = Tally::default();
        // Nothing is frozen now: the next generation follows the committed one.
        self.committed = self.generation;
        self.generation += 1;
    }

    /// A task moved away: its entries must not serve a later owner's reads.
    /// Call after its dirty entries were committed (or given up).
    pub fn drop_task(&mut self, task: i32) {
        if let Some(entries) = self.tasks.remove(&task) {
            for e in entries.values() {
                self.total_bytes -= e.bytes;
                let tally = if e.written == self.generation {
                    &mut self.current
                } else if e.written > self.committed {
                    &mut self.frozen
                } else {
                    continue;
                };
                tally.bytes -= e.bytes;
                tally.count -= 1;
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

    /// One commit, start to end.
    fn commit(c: &mut WriteBackCache) -> DirtyStates {
        let dirty = c.dirty_encoded();
        let g = c.freeze();
        c.mark_clean(g);
        dirty
    }

    #[test]
    fn a_reservation_changed_twice_is_written_once_with_its_last_state() {
        let mut c = WriteBackCache::new(1 << 20);
        c.put(0, "r1", state("101"));
        c.put(0, "r1", state("202"));
        c.put(1, "r2", state("303"));
        assert_eq!(c.dirty_count(), 2);
        let dirty = commit(&mut c);
        assert_eq!(dirty.len(), 2);
        assert_eq!(dirty[0].1, vec![("r1".to_string(), Some(crate::state::record::encode(&state("202"))))]);
        assert_eq!(c.dirty_count(), 0);
        assert!(c.dirty_encoded().is_empty());
        assert_eq!(c.get(0, "r1"), Some(&state("202")), "a committed state is still served from memory");
    }

    #[test]
    fn the_next_interval_reads_and_overwrites_a_frozen_generation_without_touching_its_commit() {
        let mut c = WriteBackCache::new(1 << 20);
        c.put(0, "r1", state("101"));
        c.put(0, "r2", state("102"));
        let frozen = c.dirty_encoded();
        let g = c.freeze();
        assert_eq!(c.get(0, "r1"), Some(&state("101")), "the committing generation is readable");
        assert_eq!(c.dirty_count(), 0, "nothing written since the freeze");
        c.put(0, "r1", state("201"));
        c.put(0, "r3", state("203"));
        assert_eq!(c.get(0, "r1"), Some(&state("201")), "the newest state wins");
        assert_eq!(c.dirty_count(), 2);
        c.mark_clean(g);
        assert_eq!(frozen[0].1.len(), 2, "the frozen commit kept its own bytes");
        let next = commit(&mut c);
        let mut ids: Vec<&str> = next[0].1.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, vec!["r1", "r3"], "what the next interval wrote is still dirty after the frozen one commits");
        assert_eq!(c.get(0, "r2"), Some(&state("102")));
        assert_eq!((c.current, c.frozen), (Tally::default(), Tally::default()));
    }

    #[test]
    fn a_failed_commit_drops_both_generations_and_keeps_what_was_committed() {
        let mut c = WriteBackCache::new(1 << 20);
        c.put(0, "kept", state("101"));
        commit(&mut c);
        c.put(0, "kept", state("202"));
        c.put(0, "frozen", state("303"));
        c.freeze();
        c.put(0, "next", state("404"));
        c.drop_dirty();
        assert_eq!(c.get(0, "kept"), None, "its committed state is the store's; the cached one was newer");
        assert_eq!((c.get(0, "frozen"), c.get(0, "next")), (None, None));
        assert_eq!((c.dirty_count(), c.current, c.frozen, c.total_bytes), (0, Tally::default(), Tally::default(), 0));
        // And the cache goes on: a new generation commits as usual.
        c.put(0, "after", state("505"));
        assert_eq!(commit(&mut c)[0].1.len(), 1);
    }

    #[test]
    fn full_when_dirty_entries_of_both_generations_reach_the_bound_and_clean_ones_give_way() {
        let mut c = WriteBackCache::new(400);
        c.put(0, "a", state("1"));
        assert!(!c.is_full());
        for i in 0..2 {
            c.put(0, &format!("r{i}"), state("1"));
        }
        let g = c.freeze();
        for i in 2..4 {
            c.put(0, &format!("r{i}"), state("1"));
        }
        assert!(c.is_full(), "the frozen generation still counts");
        c.mark_clean(g);
        assert!(!c.is_full());
        assert_eq!(c.get(0, "a"), None, "clean entries over the bound are dropped");
        assert_eq!(c.get(0, "r3"), Some(&state("1")), "dirty ones never are");
        c.put(3, "x", state("9"));
        c.drop_task(3);
        assert_eq!(c.dirty_count(), 2);
    }
}
