//! Only one capture writes per collection: a lease document in MongoDB
//! (`<database>.<lease_collection>`, `_id` = `<database>.<collection>`),
//! held by the instance whose `owner` it names.
//!
//! No wall clock is compared across machines: the holder bumps `version`
//! every third of the lease; a standby that sees the same (owner, version)
//! for a whole lease on its own monotonic clock takes the lease with a
//! compare-and-swap on that version. The holder stops publishing when a
//! lease has passed on *its* clock since its last successful renewal,
//! which is no later than the standby's takeover (the standby began
//! counting after that renewal). What this cannot stop is a produce
//! request already on the wire when the holder stalls; real Kafka would
//! fence it with a transactional producer, which Tansu (the test broker)
//! does not implement faithfully, so capture relies on the lease instead:
//! a request that left before the lease ran out has long been written when
//! the standby reads the topic's position a lease later.
//!
//! Owns the lease document only; knows nothing of Kafka.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::{Collection, options::ReturnDocument};

/// MongoDB's duplicate-key error: someone else inserted the lease first.
const DUPLICATE_KEY: i32 = 11000;

pub struct Lease {
    /// The lease collection, with majority writes: a lease (or a remembered
    /// start) that a failover rolled back could let two instances write.
    coll: Collection<Document>,
    /// `<database>.<collection>`: one lease per captured collection.
    id: String,
    /// This process: host, pid and a random part, so a restarted process is a new owner.
    pub owner: String,
    /// How long a holder may go without renewing.
    pub length: Duration,
    /// The version this process last wrote, while it holds the lease.
    version: AtomicI64,
    /// When this process last renewed successfully (its own clock).
    renewed: Mutex<Instant>,
    /// Another instance holds the lease now.
    lost: AtomicBool,
}

/// What a standby saw of the current holder.
#[derive(Clone, Debug, PartialEq)]
pub struct Holder {
    pub owner: String,
    pub version: i64,
}

impl Lease {
    pub fn new(coll: Collection<Document>, id: String, length: Duration) -> Lease {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let owner = format!("{host}:{}:{nonce:08x}", std::process::id());
        Lease { coll, id, owner, length, version: AtomicI64::new(0), renewed: Mutex::new(Instant::now()), lost: AtomicBool::new(false) }
    }

    /// The current holder, if a lease document exists.
    pub async fn holder(&self) -> mongodb::error::Result<Option<Holder>> {
        let d = self.coll.find_one(doc! { "_id": &self.id }).await?;
        Ok(d.map(|d| Holder { owner: d.get_str("owner").unwrap_or("").to_string(), version: version_of(&d) }))
    }

    /// Tries once to take the lease: free (no document), or held by `seen`
    /// whose version has not moved for a whole lease. True when taken.
    pub async fn try_take(&self, seen: Option<&Holder>) -> mongodb::error::Result<bool> {
        let now = DateTime::now();
        let taken = match seen {
            None => match self.coll.insert_one(doc! { "_id": &self.id, "owner": &self.owner, "version": 1_i64, "renewedAt": now }).await {
                Ok(_) => Some(1),
                Err(e) if is_duplicate_key(&e) => None,
                Err(e) => return Err(e),
            },
            Some(h) => {
                let next = h.version + 1;
                let r = self
                    .coll
                    .find_one_and_update(doc! { "_id": &self.id, "owner": &h.owner, "version": h.version }, doc! { "$set": { "owner": &self.owner, "version": next, "renewedAt": now } })
                    .return_document(ReturnDocument::After)
                    .await?;
                r.map(|_| next)
            }
        };
        if let Some(v) = taken {
            self.version.store(v, Ordering::SeqCst);
            *self.renewed.lock().expect("lease lock") = Instant::now();
        }
        Ok(taken.is_some())
    }

    /// Renews the held lease. Ok(false): another instance holds it now.
    /// Renews the held lease. Ok(false): another instance holds it now.
    /// Called by one task only (`keep`).
    pub async fn renew(&self) -> mongodb::error::Result<bool> {
        let started = Instant::now();
        let version = self.version.load(Ordering::SeqCst);
        let r = self
            .coll
            .update_one(doc! { "_id": &self.id, "owner": &self.owner, "version": version }, doc! { "$set": { "version": version + 1, "renewedAt": DateTime::now() } })
            .await?;
        if r.matched_count == 1 {
            self.version.store(version + 1, Ordering::SeqCst);
            // From when the request left: the standby may have seen the old version just before.
            *self.renewed.lock().expect("lease lock") = started;
            Ok(true)
        } else {
            self.lost.store(true, Ordering::SeqCst);
            Ok(false)
        }
    }

    /// Renews every third of the lease until dropped (run it as a task).
    pub async fn keep(self: std::sync::Arc<Self>) {
        let mut every = tokio::time::interval(self.length / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            match self.renew().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!("another instance holds the lease now");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the lease; trying again"),
            }
        }
    }

    /// Whether this process may publish: it holds the lease and renewed it
    /// less than a lease ago (its own clock).
    pub fn usable(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && Instant::now() < *self.renewed.lock().expect("lease lock") + self.length
    }

    /// Remembers where a fresh stream for `topic` began, before anything is
    /// published: until the topic holds a record (and with it a position in
    /// its header), this is the only trace of that start, and a restart
    /// without it would begin at "now" and lose the changes in between.
    /// `None` forgets it (a copy is starting: a restart copies again).
    pub async fn store_start(&self, topic: &str, after: Option<&serde_json::Value>) -> anyhow::Result<()> {
        let update = match after {
            Some(t) => doc! { "$set": { "start": { "topic": topic, "after": Bson::try_from(t.clone())? } } },
            None => doc! { "$unset": { "start": "" } },
        };
        let r = self.coll.update_one(doc! { "_id": &self.id, "owner": &self.owner }, update).await?;
        anyhow::ensure!(r.matched_count == 1, "the lease was taken by another instance while starting");
        Ok(())
    }

    /// Where a fresh stream for `topic` began, if remembered.
    pub async fn stored_start(&self, topic: &str) -> mongodb::error::Result<Option<serde_json::Value>> {
        let d = self.coll.find_one(doc! { "_id": &self.id }).await?;
        Ok(d.and_then(|d| d.get_document("start").ok().cloned())
            .filter(|s| s.get_str("topic").ok() == Some(topic))
            .and_then(|s| s.get("after").cloned())
            .map(Bson::into_relaxed_extjson))
    }

    /// Gives the lease up (a clean stop), so a standby takes over at once.
    pub async fn release(&self) -> mongodb::error::Result<()> {
        self.coll.delete_one(doc! { "_id": &self.id, "owner": &self.owner }).await.map(|_| ())
    }
}

fn version_of(d: &Document) -> i64 {
    match d.get("version") {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => e.to_string().contains("E11000"),
    }
}
