//! The sinks: business events (and their routes), dead letters and changelog
//! records, all through one producer that never waits per record — Kafka
//! Streams' `RecordCollector`.
//!
//! A send only queues the record. Acknowledgements arrive on the producer's
//! own thread ([`CollectorContext::delivery`]), which remembers the first
//! failure, the changelog's highest acknowledged offset per partition and
//! each business event's latency. The commit coordinator asks for them at
//! [`RecordCollector::flush`]; a failure there rewinds the interval.
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
use std::sync::atomic::{AtomicBool, Ordering};
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

use crate::fault::Fault;
use super::latency::Latency;
use crate::sink::deadletter::DeadLetter;

/// How long a flush or a transaction call may take before the interval is
/// given up as failed (and rewound). Within it, librdkafka keeps retrying.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The delivery opaque: what a record was, so its acknowledgement counts right.
const CHANGELOG: usize = 0;
const UNTIMED: usize = 1;
/// A business event whose source record has a timestamp `t` (ms) is sent
/// with `TIMED_BASE + t`.
const TIMED_BASE: usize = 2;

/// What the producer's delivery callbacks learn between two flushes.
pub struct CollectorContext {
    /// The first send that failed since the last flush, and to which topic.
    first_error: Mutex<Option<(KafkaError, String)>>,
    /// Per changelog partition, the offset after the highest acknowledged record.
    changelog_next: Mutex<BTreeMap<i32, u64>>,
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
        match result {
            Ok(m) => match opaque {
                CHANGELOG => {
                    let mut next = self.changelog_next.lock().expect("changelog lock");
                    let e = next.entry(m.partition()).or_insert(0);
                    *e = (*e).max(m.offset() as u64 + 1);
                }
                UNTIMED => {}
                t => self.latency.lock().expect("latency lock").record(crate::time::now_millis() - (t - TIMED_BASE) as i64),
            },
            Err((e, m)) => {
                let mut first = self.first_error.lock().expect("error lock");
                if first.is_none() {
                    *first = Some((e.clone(), m.topic().to_owned()));
                }
            }
        }
        self.room.freed();
    }
}

/// Queues `record`; when the producer's queue is full, waits for a delivery
/// to make room. The one back-pressured send of every output.
fn queue(producer: &ThreadedProducer<CollectorContext>, mut record: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), Fault> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.context().room.wait(Duration::from_millis(10));
            }
            Err((e, r)) => return Err(Fault::kafka(e, &format!("producing to {}", r.topic))),
        }
    }
}

/// One producer for every output, sending without waiting.
pub struct RecordCollector {
    producer: ThreadedProducer<CollectorContext>,
    /// To build a new producer when the old one failed for good.
    config: ClientConfig,
    changelog: String,
    transactional: bool,
    /// A transaction is open (exactly-once: begun at the interval's first send).
    in_transaction: bool,
}

fn context(latency: Arc<Mutex<Latency>>) -> CollectorContext {
    CollectorContext { first_error: Mutex::new(None), changelog_next: Mutex::new(BTreeMap::new()), latency, room: Room::default() }
}

impl RecordCollector {
    /// `config` with `transactional.id` set makes an exactly-once collector.
    pub fn new(config: ClientConfig, changelog: String) -> anyhow::Result<RecordCollector> {
        RecordCollector::with_latency(config, changelog, Arc::default())
    }

    /// As `new`, recording latencies into `latency` (which /metrics reads).
    pub fn with_latency(config: ClientConfig, changelog: String, latency: Arc<Mutex<Latency>>) -> anyhow::Result<RecordCollector> {
        let transactional = config.get("transactional.id").is_some();
        let producer: ThreadedProducer<CollectorContext> = config.create_with_context(context(latency))?;
        if transactional {
            producer.init_transactions(FLUSH_TIMEOUT).map_err(|e| anyhow::anyhow!("exactly-once needs a broker with transactions: {e}"))?;
        }
        Ok(RecordCollector { producer, config, changelog, transactional, in_transaction: false })
    }

    /// Replaces a producer that failed for good (at-least-once only; what it
    /// had not delivered is sent again by the rewound interval).
    pub fn renew(&mut self) -> anyhow::Result<()> {
        let latency = self.producer.context().latency.clone();
        *self = RecordCollector::with_latency(self.config.clone(), std::mem::take(&mut self.changelog), latency)?;
        Ok(())
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
        queue(&self.producer, record)
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

    /// A reservation's state to its task's changelog partition, inside a
    /// commit (the outputs before it are acknowledged already). `None`
    /// writes a tombstone: the reservation left the state (retention).
    pub fn send_changelog(&mut self, partition: i32, id: &str, record: Option<&[u8]>) -> Result<(), Fault> {
        self.ensure_transaction()?;
        let mut r: BaseRecord<'_, [u8], [u8], _> = BaseRecord::with_opaque_to(&self.changelog, CHANGELOG).partition(partition).key(id.as_bytes());
        if let Some(record) = record {
            r = r.payload(record);
        }
        queue(&self.producer, r)
    }

    /// Waits until everything sent is acknowledged; the first failure since
    /// the last flush, if any, is the interval's.
    pub fn flush(&mut self) -> Result<(), Fault> {
        let flushed = self.producer.flush(FLUSH_TIMEOUT);
        self.take_error()?;
        flushed.map_err(|e| Fault::kafka(e, &format!("outputs not acknowledged within {}s", FLUSH_TIMEOUT.as_secs())))
    }

    fn take_error(&self) -> Result<(), Fault> {
        match self.producer.context().first_error.lock().expect("error lock").take() {
            Some((e, topic)) => Err(Fault::kafka(e, &format!("a record to {topic} was not acknowledged"))),
            None => Ok(()),
        }
    }

    /// The changelog offsets acknowledged since the last call.
    pub fn take_changelog_next(&self) -> BTreeMap<i32, u64> {
        std::mem::take(&mut *self.producer.context().changelog_next.lock().expect("changelog lock"))
    }

    /// Exactly-once: commits the interval's transaction with the input
    /// offsets. A send of the interval that failed fails it before anything
    /// commits (the caller aborts and rewinds). A commit that timed out is
    /// retried, as librdkafka requires; one that needs an abort is a
    /// transient fault (abort, rewind); anything else stops the instance,
    /// whose next start resolves the transaction in `init_transactions`.
    /// Once the commit succeeded, nothing fails it.
    pub fn commit_transaction(&mut self, offsets: &TopicPartitionList, group: &ConsumerGroupMetadata) -> Result<(), Fault> {
        self.take_error()?;
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
        // Every record of the transaction was delivered; what is left are
        // reports of records an earlier abort purged.
        let _ = self.take_error();
        Ok(())
    }

    /// Abandons the interval: aborts an open transaction (read_committed
    /// consumers never see it), lets the purged records' reports arrive, and
    /// forgets failures already reported.
    pub fn abandon(&mut self) {
        if self.in_transaction {
            if let Err(e) = self.producer.abort_transaction(FLUSH_TIMEOUT) {
                tracing::warn!(error = %e, "aborting the transaction");
            }
            self.in_transaction = false;
            let _ = self.producer.flush(Duration::from_secs(5));
        }
        let _ = self.take_error();
        self.take_changelog_next();
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
