//! The sinks: business events (and their routes), dead letters and changelog
//! records, all through one producer that never waits per record — Kafka
//! Streams' `RecordCollector`.
//!
//! A send only queues the record. Acknowledgements arrive on the producer's
//! own thread ([`CollectorContext::delivery`]), which counts them per
//! *epoch* (the sends of one commit interval), remembers each epoch's first
//! failure and its changelog's highest acknowledged offset per partition, and
//! records each business event's latency. The commit coordinator seals an
//! epoch when its interval ends ([`RecordCollector::seal`]) and asks whether
//! it is acknowledged ([`RecordCollector::acknowledged`]) without waiting,
//! while the next interval's records go out in the next epoch; a failure
//! there rewinds the interval. When the epoch it waits for is complete, the
//! delivery wakes the loop ([`RecordCollector::wake`]).
//!
//! Every call blocks the calling thread (they also run in the rebalance
//! callback); the service loop makes them through `block_in_place`. A send
//! that finds the producer's queue full waits for the producer's own signal
//! that there is room again, a delivery ([`Room`]), as Kafka Streams'
//! collector blocks in `send` (`max.block.ms`).
//!
//! Order: one idempotent producer keeps the order of records within each
//! partition across its retries, so a reservation's events (keyed, one
//! partition) arrive in the order they were sent.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use tokio::sync::Notify;

use crate::fault::Fault;
use super::latency::Latency;
use crate::sink::deadletter::DeadLetter;

/// How long a flush or a transaction call may take before the interval is
/// given up as failed (and rewound). Within it, librdkafka keeps retrying.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Epochs whose acknowledgements are counted apart. At most two are live
/// (the interval committing and the one processing); the others are
/// abandoned ones whose records may still be in flight (a broker outage
/// rewinds once per retry), and a slot is reused only once its records are
/// all reported ([`RecordCollector::seal`]).
const EPOCH_SLOTS: usize = 64;
/// The delivery opaque: the epoch's slot in the top bits, below it what the
/// record was, so its acknowledgement counts right.
const SLOT_SHIFT: u32 = 57;
const CHANGELOG: usize = 0;
const UNTIMED: usize = 1;
/// A business event whose source record has a timestamp `t` (ms) is sent
/// with `TIMED_BASE + t`.
const TIMED_BASE: usize = 2;

/// What the producer's delivery callbacks learn about one epoch's records.
#[derive(Default)]
struct Epoch {
    /// Records sent and not yet reported. Counted up before the send, so a
    /// report never finds it at zero.
    pending: AtomicUsize,
    /// The epoch's first send that failed, and to which topic. Written before
    /// `pending` is counted down, so whoever sees zero sees the failure too.
    first_error: Mutex<Option<(KafkaError, String)>>,
    /// Per changelog partition, the offset after the highest acknowledged record.
    changelog_next: Mutex<BTreeMap<i32, u64>>,
}

/// What the producer's delivery callbacks learn, written on the producer's
/// own thread and read by the collector.
pub struct CollectorContext {
    epochs: [Epoch; EPOCH_SLOTS],
    /// The slot (plus one) the coordinator waits for; 0: none. Its last
    /// report, or a failure in it, wakes [`CollectorContext::wake`].
    watched: AtomicUsize,
    wake: Arc<Notify>,
    /// Source record timestamp → business event acknowledged (shared with /metrics).
    latency: Arc<Mutex<Latency>>,
    /// Written by every delivery, waited on by a send that found the queue full.
    room: Room,
}

/// Room in the producer's queue: each delivery frees a slot and wakes a
/// sender waiting for one. Costs a delivery one atomic load while nobody waits.
#[derive(Default)]
struct Room {
    /// A sender is waiting (set by it, read by the delivery callback).
    waiting: AtomicBool,
    lock: Mutex<()>,
    freed: Condvar,
}

impl Room {
    /// Called by the delivery callback, on the producer's thread.
    fn freed(&self) {
        if self.waiting.load(Ordering::Acquire) {
            let _guard = self.lock.lock().expect("room lock");
            self.freed.notify_all();
        }
    }

    /// Waits until a delivery frees room, at most `max` (a delivery between
    /// the full queue and this wait is not lost for longer than that).
    fn wait(&self, max: Duration) {
        let guard = self.lock.lock().expect("room lock");
        self.waiting.store(true, Ordering::Release);
        let _ = self.freed.wait_timeout(guard, max).expect("room lock");
        self.waiting.store(false, Ordering::Release);
    }
}

impl ClientContext for CollectorContext {}

impl ProducerContext for CollectorContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let slot = opaque >> SLOT_SHIFT;
        let epoch = &self.epochs[slot];
        let failed = match result {
            Ok(m) => {
                match opaque & ((1 << SLOT_SHIFT) - 1) {
                    CHANGELOG => {
                        let mut next = epoch.changelog_next.lock().expect("changelog lock");
                        let e = next.entry(m.partition()).or_insert(0);
                        *e = (*e).max(m.offset() as u64 + 1);
                    }
                    UNTIMED => {}
                    t => self.latency.lock().expect("latency lock").record(crate::time::now_millis() - (t - TIMED_BASE) as i64),
                }
                false
            }
            Err((e, m)) => {
                let mut first = epoch.first_error.lock().expect("error lock");
                if first.is_none() {
                    *first = Some((e.clone(), m.topic().to_owned()));
                }
                true
            }
        };
        let last = epoch.pending.fetch_sub(1, Ordering::AcqRel) == 1;
        if (last || failed) && self.watched.load(Ordering::Acquire) == slot + 1 {
            self.wake.notify_one();
        }
        self.room.freed();
    }
}

/// Queues `record` in `epoch`; when the producer's queue is full, waits for
/// a delivery to make room. The one back-pressured send of every output.
fn queue(producer: &ThreadedProducer<CollectorContext>, epoch: u64, mut record: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), Fault> {
    record.delivery_opaque |= slot(epoch) << SLOT_SHIFT;
    let pending = &producer.context().epochs[slot(epoch)].pending;
    pending.fetch_add(1, Ordering::AcqRel);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.context().room.wait(Duration::from_millis(10));
            }
            Err((e, r)) => {
                pending.fetch_sub(1, Ordering::AcqRel);
                return Err(Fault::kafka(e, &format!("producing to {}", r.topic)));
            }
        }
    }
}

/// One producer for every output, sending without waiting.
pub struct RecordCollector {
    producer: ThreadedProducer<CollectorContext>,
    /// The epoch this collector's sends belong to: one per commit interval.
    epoch: u64,
    /// To build a new producer when the old one failed for good.
    config: ClientConfig,
    changelog: String,
    transactional: bool,
    /// A transaction is open (exactly-once: begun at the interval's first send).
    in_transaction: bool,
}

fn context(latency: Arc<Mutex<Latency>>, wake: Arc<Notify>) -> CollectorContext {
    CollectorContext { epochs: std::array::from_fn(|_| Epoch::default()), watched: AtomicUsize::new(0), wake, latency, room: Room::default() }
}

fn slot(epoch: u64) -> usize {
    (epoch % EPOCH_SLOTS as u64) as usize
}

impl RecordCollector {
    /// `config` with `transactional.id` set makes an exactly-once collector.
    pub fn new(config: ClientConfig, changelog: String) -> anyhow::Result<RecordCollector> {
        RecordCollector::with_latency(config, changelog, Arc::default())
    }

    /// As `new`, recording latencies into `latency` (which /metrics reads).
    pub fn with_latency(config: ClientConfig, changelog: String, latency: Arc<Mutex<Latency>>) -> anyhow::Result<RecordCollector> {
        RecordCollector::create(config, changelog, latency, Arc::default(), 0)
    }

    fn create(config: ClientConfig, changelog: String, latency: Arc<Mutex<Latency>>, wake: Arc<Notify>, epoch: u64) -> anyhow::Result<RecordCollector> {
        let transactional = config.get("transactional.id").is_some();
        let producer: ThreadedProducer<CollectorContext> = config.create_with_context(context(latency, wake))?;
        if transactional {
            producer.init_transactions(FLUSH_TIMEOUT).map_err(|e| anyhow::anyhow!("exactly-once needs a broker with transactions: {e}"))?;
        }
        Ok(RecordCollector { producer, epoch, config, changelog, transactional, in_transaction: false })
    }

    /// Replaces a producer that failed for good (at-least-once only; what it
    /// had not delivered is sent again by the rewound interval). The new one
    /// starts a new epoch.
    pub fn renew(&mut self) -> anyhow::Result<()> {
        let ctx = self.producer.context();
        let (latency, wake) = (ctx.latency.clone(), ctx.wake.clone());
        *self = RecordCollector::create(self.config.clone(), std::mem::take(&mut self.changelog), latency, wake, self.epoch + 1)?;
        Ok(())
    }

    /// Woken when the epoch the coordinator waits for ([`Self::acknowledged`])
    /// is complete or one of its records failed. Held by the loop, which
    /// selects on it beside its input.
    pub fn wake(&self) -> Arc<Notify> {
        self.producer.context().wake.clone()
    }

    /// The epoch the sends go to now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Ends the current epoch (an interval's sends) and returns it; what is
    /// sent from now on belongs to the next epoch whose slot is free (a slot
    /// still holding an abandoned epoch's records in flight is skipped; if
    /// every one is, the next is waited for: their reports come within
    /// `message.timeout.ms`).
    pub fn seal(&mut self) -> Result<u64, Fault> {
        let sealed = self.epoch;
        let ctx = self.producer.context();
        let free = |e: u64| ctx.epochs[slot(e)].pending.load(Ordering::Acquire) == 0;
        let next = match (sealed + 1..sealed + EPOCH_SLOTS as u64).find(|&e| free(e)) {
            Some(e) => e,
            None => {
                let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
                while !free(sealed + 1) {
                    if std::time::Instant::now() >= deadline {
                        return Err(Fault::Broker(anyhow::anyhow!("records of {EPOCH_SLOTS} abandoned intervals still unreported after {}s", FLUSH_TIMEOUT.as_secs())));
                    }
                    ctx.room.wait(Duration::from_millis(10));
                }
                sealed + 1
            }
        };
        let epoch = &ctx.epochs[slot(next)];
        epoch.first_error.lock().expect("error lock").take();
        epoch.changelog_next.lock().expect("changelog lock").clear();
        self.epoch = next;
        Ok(sealed)
    }

    /// Whether every record of `epoch` is acknowledged: `None` while some
    /// are in flight (and the collector's wake is armed for this epoch);
    /// the first failure among them as soon as one is reported. With
    /// `wait`, blocks until it is one or the other (at most the flush
    /// timeout, then a failure).
    pub fn acknowledged(&self, epoch: u64, wait: bool) -> Option<Result<(), Fault>> {
        let ctx = self.producer.context();
        let e = &ctx.epochs[slot(epoch)];
        let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
        loop {
            // Armed before the check: a last report between the two still wakes.
            ctx.watched.store(slot(epoch) + 1, Ordering::Release);
            let done = e.pending.load(Ordering::Acquire) == 0;
            if let Some((err, topic)) = e.first_error.lock().expect("error lock").take() {
                return Some(Err(Fault::kafka(err, &format!("a record to {topic} was not acknowledged"))));
            }
            if done {
                ctx.watched.store(0, Ordering::Release);
                return Some(Ok(()));
            }
            if !wait {
                return None;
            }
            if std::time::Instant::now() >= deadline {
                return Some(Err(Fault::Broker(anyhow::anyhow!("outputs not acknowledged within {}s", FLUSH_TIMEOUT.as_secs()))));
            }
            ctx.room.wait(Duration::from_millis(10));
        }
    }

    /// Exactly-once: the interval's transaction is open (begun at its first send).
    fn ensure_transaction(&mut self) -> Result<(), Fault> {
        if self.transactional && !self.in_transaction {
            self.producer.begin_transaction().map_err(|e| Fault::kafka(e, "beginning a transaction"))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Queues `record`; when the producer's queue is full, waits for a
    /// delivery to make room (the one back-pressured send of every output).
    fn send(&mut self, record: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), Fault> {
        self.ensure_transaction()?;
        queue(&self.producer, self.epoch, record)
    }

    /// A business event (JSON `payload`) to `topic`, keyed by reservation,
    /// with the `eventType` header. `source_ms`: the input record's timestamp,
    /// for the latency histogram.
    pub fn send_event(&mut self, topic: &str, reservation_id: &str, event_type: &str, payload: &[u8], source_ms: Option<i64>) -> Result<(), Fault> {
        let headers = OwnedHeaders::new().insert(Header { key: "eventType", value: Some(event_type) });
        self.send_copy(topic, Some(reservation_id.as_bytes()), Some(payload), Some(headers), source_ms)
    }

    /// A copy of a record to another topic (routes, the passthrough), not timed unless `source_ms`.
    pub fn send_copy(&mut self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>, headers: Option<OwnedHeaders>, source_ms: Option<i64>) -> Result<(), Fault> {
        let opaque = source_ms.filter(|t| *t >= 0).map_or(UNTIMED, |t| TIMED_BASE + t as usize);
        let mut r: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, opaque);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(v) = value {
            r = r.payload(v);
        }
        if let Some(h) = headers {
            r = r.headers(h);
        }
        self.send(r)
    }

    /// A dead letter, to the same partition number as its original.
    pub fn send_dead_letter(&mut self, topic: &str, dl: DeadLetter<'_>) -> Result<(), Fault> {
        let mut r: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, UNTIMED).partition(dl.partition).headers(dl.headers);
        if let Some(k) = dl.key {
            r = r.key(k);
        }
        if let Some(v) = dl.value {
            r = r.payload(v);
        }
        self.send(r)
    }

    /// A reservation's state to its task's changelog partition, inside the
    /// commit of `epoch` (its outputs are acknowledged already), counted in
    /// that epoch. `None` writes a tombstone: the reservation left the state
    /// (retention).
    pub fn send_changelog(&mut self, epoch: u64, partition: i32, id: &str, record: Option<&[u8]>) -> Result<(), Fault> {
        self.ensure_transaction()?;
        let mut r: BaseRecord<'_, [u8], [u8], _> = BaseRecord::with_opaque_to(&self.changelog, CHANGELOG).partition(partition).key(id.as_bytes());
        if let Some(record) = record {
            r = r.payload(record);
        }
        queue(&self.producer, epoch, r)
    }

    /// Waits until everything sent, in every epoch, is reported (shutdown,
    /// the benchmark's end).
    pub fn flush(&mut self) -> Result<(), Fault> {
        self.producer.flush(FLUSH_TIMEOUT).map_err(|e| Fault::kafka(e, &format!("outputs not acknowledged within {}s", FLUSH_TIMEOUT.as_secs())))
    }

    /// The changelog offsets `epoch`'s acknowledged records reached.
    pub fn changelog_next(&self, epoch: u64) -> BTreeMap<i32, u64> {
        std::mem::take(&mut *self.producer.context().epochs[slot(epoch)].changelog_next.lock().expect("changelog lock"))
    }

    /// Exactly-once: commits the interval's transaction with the input
    /// offsets. A send of the interval that failed fails it before anything
    /// commits (the caller aborts and rewinds). A commit that timed out is
    /// retried, as librdkafka requires; one that needs an abort is a
    /// transient fault (abort, rewind); anything else stops the instance,
    /// whose next start resolves the transaction in `init_transactions`.
    /// Once the commit succeeded, nothing fails it.
    pub fn commit_transaction(&mut self, epoch: u64, offsets: &TopicPartitionList, group: &ConsumerGroupMetadata) -> Result<(), Fault> {
        if let Some(Err(failed)) = self.acknowledged(epoch, false) {
            return Err(failed);
        }
        self.ensure_transaction()?;
        self.producer.send_offsets_to_transaction(offsets, group, FLUSH_TIMEOUT).map_err(|e| transaction_fault(e, "sending the input offsets to the transaction"))?;
        let mut attempt = 0;
        loop {
            match self.producer.commit_transaction(FLUSH_TIMEOUT) {
                Ok(()) => break,
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(attempt, error = %e, "committing the transaction; retrying");
                }
                Err(e) => return Err(transaction_fault(e, "committing the transaction")),
            }
        }
        self.in_transaction = false;
        Ok(())
    }

    /// Abandons every interval not committed: aborts an open transaction
    /// (read_committed consumers never see it) and lets the purged records'
    /// reports arrive; then moves to a new epoch, so that the failures and
    /// acknowledgements of the abandoned ones count for nothing.
    pub fn abandon(&mut self) -> Result<(), Fault> {
        if self.in_transaction {
            if let Err(e) = self.producer.abort_transaction(FLUSH_TIMEOUT) {
                tracing::warn!(error = %e, "aborting the transaction");
            }
            self.in_transaction = false;
            let _ = self.producer.flush(Duration::from_secs(5));
        }
        self.producer.context().watched.store(0, Ordering::Release);
        self.seal().map(|_| ())
    }

    /// The latency histogram so far.
    pub fn latency(&self) -> Latency {
        self.producer.context().latency.lock().expect("latency lock").clone()
    }


    /// Whether this collector writes transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }
}

/// A transaction call's failure: one that needs an abort is transient (the
/// interval is aborted and processed again); a fatal one loses the producer;
/// anything else cannot be resolved here and stops the instance.
fn transaction_fault(e: KafkaError, doing: &str) -> Fault {
    match &e {
        KafkaError::Transaction(t) if t.txn_requires_abort() => Fault::Broker(anyhow::anyhow!("{doing}: {e}")),
        KafkaError::Transaction(t) if t.is_fatal() => Fault::ProducerLost(anyhow::anyhow!("{doing}: {e}")),
        _ => Fault::Fatal(anyhow::anyhow!("{doing}: {e}; the next start resolves the open transaction")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector whose records can never be delivered: no broker listens
    /// on port 1, and librdkafka gives up on each record after 300 ms.
    fn unreachable() -> RecordCollector {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1").set("message.timeout.ms", "300").set("linger.ms", "0");
        RecordCollector::new(config, "changelog".into()).unwrap()
    }

    #[test]
    fn each_epoch_answers_for_its_own_records_only() {
        let mut c = unreachable();
        let first = c.epoch();
        c.send_event("out", "r1", "CHECKED_IN", b"{}", None).unwrap();
        assert!(c.acknowledged(first, false).is_none(), "a record in flight: not acknowledged yet, and no waiting");
        let sealed = c.seal().unwrap();
        assert_eq!(sealed, first);
        // The next epoch has sent nothing: acknowledged at once, whatever the first one's fate.
        assert!(matches!(c.acknowledged(c.epoch(), false), Some(Ok(()))));
        // The sealed epoch's record fails (no broker): its epoch says so, with the topic.
        let failed = c.acknowledged(first, true).expect("waited for").unwrap_err();
        assert!(failed.to_string().contains("out"), "{failed}");
        // A failure of an abandoned epoch never reaches the epochs after it.
        c.send_copy("out", None, Some(b"x"), None, None).unwrap();
        let second = c.epoch();
        c.abandon().unwrap();
        assert_ne!(c.epoch(), second, "abandoning moves to a new epoch");
        assert!(matches!(c.acknowledged(c.epoch(), true), Some(Ok(()))), "the new epoch is clean");
        assert!(c.acknowledged(second, true).unwrap().is_err(), "the abandoned one failed on its own");
    }

    #[test]
    fn an_undelivered_changelog_record_fails_its_epoch_and_gives_no_offset() {
        let mut c = unreachable();
        let epoch = c.seal().unwrap() + 1;
        assert_eq!(c.epoch(), epoch);
        c.send_changelog(epoch, 0, "r1", Some(b"state")).unwrap();
        assert!(c.acknowledged(epoch, true).unwrap().is_err(), "undeliverable here");
        assert!(c.changelog_next(epoch).is_empty(), "nothing acknowledged, no offset");
    }
}
