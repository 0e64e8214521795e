//! `dlq replay` (plan, then re-inject exactly that range, then the replay
//! mark) and `dlq purge` (below the mark only). The guarantees are in
//! [`super`]'s header.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::list::Tally;
use super::read::{DeadLetterTopic, Reader, partitions};
use super::{ACK_CHUNK, REQUEST_TIMEOUT, Verdict, replay_mark_group};
use crate::kafka::{acknowledged, client_config, producer_config, send};
use crate::sink::deadletter::{self, StoredDeadLetter};

/// Which dead letters a replay takes; empty = all.
#[derive(Debug, Default)]
pub(super) struct Selection {
    pub(super) kinds: Vec<String>,
    /// Dead-lettered at or after, epoch ms.
    pub(super) since: Option<i64>,
}

impl Selection {
    pub(super) fn is_everything(&self) -> bool {
        self.kinds.is_empty() && self.since.is_none()
    }

    pub(super) fn selects(&self, dl: &StoredDeadLetter<'_>) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == dl.kind())) && self.since.is_none_or(|since| dl.dead_lettered_at().is_some_and(|at| at >= since))
    }
}

/// What the first read of a replay found: the work, checked.
#[derive(Debug, Default)]
pub(super) struct ReplayPlan {
    /// Per partition, the offset after its last selected dead letter: the
    /// second read stops there (for a full replay, that is the partition's end).
    stops: BTreeMap<i32, i64>,
    /// Selected dead letters per (kind, target topic).
    tally: Tally,
    /// Every kind in the topic, to say what there is when nothing matched.
    kinds_present: BTreeSet<String>,
}

/// Where a dead letter goes back to: (topic, partition).
pub(super) fn replay_target<'a>(dl: &StoredDeadLetter<'a>, to: Option<&'a str>, dead_letter_topic: &str) -> anyhow::Result<(&'a str, i32)> {
    let here = format!("{dead_letter_topic}/{}:{}", dl.partition, dl.offset);
    let topic = match to.or(dl.original_topic()) {
        Some(t) => t,
        None => bail!("dead letter {here} has no {} header (not written by resevent run?); give --to TOPIC", deadletter::ORIGINAL_TOPIC),
    };
    let partition = dl
        .original_position()
        .map(|(partition, _)| partition)
        .ok_or_else(|| anyhow::anyhow!("dead letter {here} has no usable {} header (not written by resevent run?), so its partition is unknown", deadletter::ORIGINAL_PARTITION))?;
    Ok((topic, partition))
}

/// What a replay that failed half-way has done, and the way out.
pub(super) const INTERRUPTED: &str = "replay interrupted: some dead letters may have been re-injected already, and the replay mark is unchanged; \
replaying again is safe (the same records give the same eventIds)";

pub(super) async fn plan_replay(topic: &DeadLetterTopic, selection: &Selection, to: Option<&str>) -> anyhow::Result<ReplayPlan> {
    let probe = topic.consumer()?;
    let mut target_partitions: HashMap<String, usize> = HashMap::new();
    let mut plan = ReplayPlan::default();
    let mut reader = topic.read_all()?;
    while let Some(m) = reader.next().await? {
        let dl = StoredDeadLetter::from_message(&m);
        plan.kinds_present.insert(dl.kind().to_string());
        if !selection.selects(&dl) {
            continue;
        }
        if let Some(why) = dl.header(deadletter::VALUE_OMITTED) {
            bail!(
                "dead letter {}/{}:{} carries no value (the original was {why}); it cannot be re-injected from here: leave it out with --kind or --since, \
                 or copy the original record from its topic",
                topic.name,
                dl.partition,
                dl.offset
            );
        }
        let (target, partition) = replay_target(&dl, to, &topic.name)?;
        let count = match target_partitions.get(target) {
            Some(&n) => n,
            None => {
                let n = partitions(&probe, target, &topic.cfg.bootstrap_servers)?
                    .ok_or_else(|| anyhow::anyhow!("replay target topic {target:?} does not exist on {}; create it, or choose another with --to", topic.cfg.bootstrap_servers))?
                    .len();
                target_partitions.insert(target.to_string(), n);
                n
            }
        };
        if partition as usize >= count {
            bail!(
                "dead letter {}/{}:{} came from partition {partition}, but {target:?} has {count} partitions. A replayed record keeps its partition \
                 (a reservation's changes stay with the task holding its state): replay to a topic with at least {} partitions",
                topic.name,
                dl.partition,
                dl.offset,
                partition + 1
            );
        }
        plan.stops.insert(dl.partition, dl.offset + 1);
        plan.tally.add(dl.kind(), target, dl.dead_lettered_at());
    }
    Ok(plan)
}

pub(super) async fn replay(topic: &DeadLetterTopic, selection: &Selection, to: Option<&str>, dry_run: bool, out: &mut dyn Write) -> anyhow::Result<Verdict> {
    if to == Some(topic.name.as_str()) {
        bail!("--to {} is the dead-letter topic itself; give the topic resevent run reads", topic.name);
    }
    let plan = plan_replay(topic, selection, to).await?;
    if plan.tally.total == 0 {
        let present = plan.kinds_present.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        writeln!(out, "no dead letter in {} matches{}", topic.name, if present.is_empty() { " (it is empty)".to_string() } else { format!(" (kinds present: {present})") })?;
        return Ok(Verdict::NothingMatched);
    }
    if dry_run {
        writeln!(out, "would replay {} dead letters from {} (dry run: nothing produced):", plan.tally.total, topic.name)?;
        write!(out, "{}", plan.tally.table("to topic", false))?;
        return Ok(Verdict::Done);
    }

    let producer: FutureProducer = producer_config(&topic.cfg.kafka_settings()).create().with_context(|| format!("creating a Kafka producer for {}", topic.cfg.bootstrap_servers))?;
    let mut done = Tally::default();
    let mut in_flight = Vec::new();
    let mut reader = Reader::start(topic, plan.stops.iter().map(|(&p, &stop)| (p, Offset::Beginning, Some(stop))))?;
    while let Some(m) = reader.next().await? {
        let dl = StoredDeadLetter::from_message(&m);
        if !selection.selects(&dl) {
            continue;
        }
        let (target, partition) = replay_target(&dl, to, &topic.name)?;
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(target).partition(partition).headers(dl.replay_headers(&topic.name));
        if let Some(key) = dl.key {
            record = record.key(key);
        }
        if let Some(value) = dl.value {
            record = record.payload(value);
        }
        in_flight.push(send(&producer, record).await.context(INTERRUPTED)?);
        done.add(dl.kind(), target, dl.dead_lettered_at());
        if in_flight.len() >= ACK_CHUNK {
            acknowledged(std::mem::take(&mut in_flight), "replayed dead letter").await.context(INTERRUPTED)?;
        }
    }
    acknowledged(in_flight, "replayed dead letter").await.context(INTERRUPTED)?;
    writeln!(out, "replayed {} dead letters from {}, every one acknowledged:", done.total, topic.name)?;
    write!(out, "{}", done.table("to topic", false))?;

    let group = replay_mark_group(&topic.name);
    if !selection.is_everything() {
        writeln!(out, "replay mark unchanged: only a replay without --kind or --since marks dead letters as replayed (for purge)")?;
        return Ok(Verdict::Done);
    }
    let mut mark = TopicPartitionList::new();
    for (&p, &stop) in &plan.stops {
        mark.add_partition_offset(&topic.name, p, Offset::Offset(stop))?;
    }
    tokio::task::block_in_place(|| reader.consumer.commit(&mark, CommitMode::Sync))
        .with_context(|| format!("everything was replayed, but the replay mark (offsets of consumer group {group:?}) was not recorded; replay again to record it"))?;
    let at: Vec<String> = plan.stops.iter().map(|(p, stop)| format!("partition {p}: {stop}")).collect();
    writeln!(out, "replay mark (consumer group {group}) now at {}; `resevent dlq purge` may delete below it", at.join(", "))?;
    Ok(Verdict::Done)
}

pub(super) async fn purge(topic: &DeadLetterTopic, yes: bool, out: &mut dyn Write) -> anyhow::Result<Verdict> {
    let consumer = topic.consumer()?;
    let group = replay_mark_group(&topic.name);
    let mark = topic.replay_mark(&consumer)?;
    if mark.is_empty() {
        writeln!(out, "nothing to purge in {}: no full replay is recorded (consumer group {group} has no offsets); `resevent dlq replay` without --kind or --since records one", topic.name)?;
        return Ok(Verdict::NothingMatched);
    }
    let starts = topic.start_offsets(&consumer)?;
    // Per partition, the offsets [start, mark) that a full replay re-injected and that are still there.
    let deletable: Vec<(i32, i64, i64)> = mark.iter().filter_map(|(&p, &end)| starts.get(&p).filter(|&&start| start < end).map(|&start| (p, start, end))).collect();
    if deletable.is_empty() {
        writeln!(out, "nothing to purge in {}: everything below the replay mark is deleted already", topic.name)?;
        return Ok(Verdict::NothingMatched);
    }
    // Offsets, so exact for dead letters written without transactions (with
    // --guarantee exactly-once a few of them are commit markers).
    let total: i64 = deletable.iter().map(|(_, start, end)| end - start).sum();
    let ranges: Vec<String> = deletable.iter().map(|(p, start, end)| format!("partition {p}: offsets {start} to {}", end - 1)).collect();
    if !yes {
        writeln!(out, "would delete {total} dead letters from {}, all re-injected by a full replay: {}", topic.name, ranges.join("; "))?;
        writeln!(out, "refused: deleting needs --yes (resevent dlq purge --yes)")?;
        return Ok(Verdict::Refused);
    }

    let mut request = TopicPartitionList::new();
    for &(p, _, end) in &deletable {
        request.add_partition_offset(&topic.name, p, Offset::Offset(end))?;
    }
    let admin: AdminClient<DefaultClientContext> = client_config(&topic.cfg.kafka_settings()).create().with_context(|| format!("creating a Kafka admin client for {}", topic.cfg.bootstrap_servers))?;
    let result = admin.delete_records(&request, &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT))).await;
    let failed: Vec<String> = match &result {
        Err(e) => vec![e.to_string()],
        Ok(tpl) => tpl
            .elements()
            .iter()
            .filter_map(|e| e.error().err().map(|err| format!("partition {}: {}", e.partition(), err.rdkafka_error_code().map_or_else(|| err.to_string(), |code| code.to_string()))))
            .collect(),
    };
    if !failed.is_empty() {
        let what_happened = match topic.start_offsets(&consumer) {
            Ok(now) if now == starts => "nothing was deleted (the start offsets are unchanged)".to_string(),
            Ok(now) => format!("the start offsets are now {now:?} (were {starts:?})"),
            Err(_) => "whether anything was deleted is unknown (the start offsets could not be read again)".to_string(),
        };
        bail!(
            "{} was not purged: the broker at {} failed DeleteRecords ({}); {what_happened}. Not every Kafka-protocol broker implements DeleteRecords: \
             Tansu 0.6.0 does not and drops the connection, seen here as a transport failure; there, dead letters leave only by the topic's retention.ms. \
             The replay mark is kept, so a purge against a broker with DeleteRecords deletes the same records",
            topic.name,
            topic.cfg.bootstrap_servers,
            failed.join("; ")
        );
    }
    writeln!(out, "deleted {total} dead letters from {}, all re-injected by a full replay: {}", topic.name, ranges.join("; "))?;
    Ok(Verdict::Done)
}
