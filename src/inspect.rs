//! One reservation's stored state as JSON, for the on-call: `resevent state
//! get` and `state dump` read it from a state directory.
//!
//! Reads only; never opens the store for writing. An instance running on
//! the same directory keeps its newest states in memory until its next
//! flush (the store has no WAL; the changelog is the durable copy), so a
//! live instance's directory shows them as of its last flush.

use std::io::Write;
use std::path::Path;

use crate::state::reservation_json;
use crate::state::store::StateStore;

fn open(dir: &Path) -> anyhow::Result<StateStore> {
    if !dir.join("CURRENT").exists() {
        anyhow::bail!("{} holds no resevent state (no RocksDB CURRENT file); give the --state-dir of an instance", dir.display());
    }
    Ok(StateStore::open_read_only(dir)?)
}

/// Every partition holding `id`, with its state (normally one).
pub fn get(dir: &Path, id: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let store = open(dir)?;
    let mut parts = store.partitions();
    parts.sort();
    let mut out = Vec::new();
    for p in parts {
        if let Some(s) = store.get(&p, id)? {
            out.push(reservation_json(id, &p, &s));
        }
    }
    Ok(out)
}

/// Writes every stored reservation as one JSON line, partition by
/// partition, in id order; returns how many.
pub fn dump(dir: &Path, out: &mut dyn Write) -> anyhow::Result<u64> {
    let store = open(dir)?;
    let mut parts = store.partitions();
    parts.sort();
    let mut n = 0;
    for p in parts {
        for (id, s) in store.reservations(&p)? {
            serde_json::to_writer(&mut *out, &reservation_json(&id, &p, &s))?;
            out.write_all(b"\n")?;
            n += 1;
        }
    }
    out.flush()?;
    Ok(n)
}
