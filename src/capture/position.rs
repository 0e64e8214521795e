//! Where capture stands, stored in the topic itself: every published record
//! carries a header with its sequence number and the last *durable*
//! checkpoint (a resume token before which everything was acknowledged).
//! Pure: no Kafka or MongoDB I/O here; `mod.rs` reads the records back and
//! hands them to [`ResumePlan::from_last_records`].
//!
//! Why the topic and not a file or a MongoDB document: the header is written
//! in the same produce request as the change it describes, so the position
//! can never say more (or less) than what is on the topic — there is no
//! second write to lose between the two.
//!
//! The guarantees, path by path:
//! - Within a partition the idempotent producer (acks=all) keeps a prefix:
//!   if record n is on the partition, every record sent before it to that
//!   partition is too, once, in order.
//! - Across partitions there is no such order: at a kill -9, partition 0 may
//!   hold records up to seq 100 while seqs 96–99, sent to partition 1, were
//!   never written. So the resume point is not the newest record but the
//!   newest *durable checkpoint* any record carries: all records up to its
//!   seq were acknowledged before that record was sent.
//! - Changes after the checkpoint are replayed by the change stream in the
//!   same order (same pipeline, same collection), so they get the same seqs
//!   again; one whose seq is at or below its partition's last seq is already
//!   there and is skipped, the rest are published. None lost, none repeated.
//!   The change at a partition's last seq must be the very change stored
//!   there (same resume token); if not, the stream replayed differently (the
//!   pipeline or the partition count changed) and capture stops.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The header holding a record's [`Position`].
pub const HEADER: &str = "resevent-capture-position";

/// What each published record says about the capture (the header's JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// This record's sequence number: 1, 2, 3… across restarts and takeovers.
    pub seq: u64,
    /// The topic's partition count when it was sent (seqs map to partitions by key hash).
    pub partitions: i32,
    /// Everything up to here was acknowledged before this record was sent.
    pub durable: Checkpoint,
}

/// A point to restart from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Every record with a seq up to this one is on the topic.
    pub seq: u64,
    /// Resume the change stream right after this token (`{"_data": …}` as
    /// Extended JSON); none while `copying`.
    pub resume_after: Option<serde_json::Value>,
    /// A copy of the existing documents was under way (it is started over).
    #[serde(default)]
    pub copying: bool,
    /// Seconds of the cluster time of the change at `resume_after`, for the
    /// resume-token age metric; 0 when unknown.
    #[serde(default)]
    pub cluster_secs: u32,
}

impl Checkpoint {
    /// Later checkpoints first by seq; at one seq, the end of a copy (which
    /// names the stream's start) is later than its last copied document.
    fn rank(&self) -> (u64, bool) {
        (self.seq, !self.copying)
    }
}

/// The last record of one partition, as read back at start.
#[derive(Clone, Debug)]
pub struct LastRecord {
    pub partition: i32,
    pub position: Position,
    /// The record value's `_id` (a change's resume token; a copy's `{_id, copyingData}`).
    pub id: Option<serde_json::Value>,
}

/// How to start, from what the topic holds.
#[derive(Clone, Debug, PartialEq)]
pub enum ResumePlan {
    /// The topic holds no position: start the stream now (after a copy, if asked).
    Fresh,
    /// A copy of the existing documents was cut short: do it again, then follow
    /// the stream from where the new copy began. Copy events only seed state,
    /// so their repeats change nothing downstream.
    RestartCopy { next_seq: u64 },
    /// Resume after `after` with seq `next_seq`; skip a replayed change whose
    /// seq is at or below its partition's entry in `published`.
    Resume { after: serde_json::Value, next_seq: u64, cluster_secs: u32, published: BTreeMap<i32, (u64, Option<serde_json::Value>)> },
}

/// Why the topic's records give no plan.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PositionError {
    #[error("partition {partition} of the topic ends with a record without a valid {HEADER} header ({why}); it was not written by resevent capture. Capture into a topic of its own, or start with --restart-from now|copy")]
    Foreign { partition: i32, why: String },
    #[error("the topic's records were written with {stored} partitions, it has {now} now; a change's partition follows from its key and the count, so the stored position cannot be matched. Start with --restart-from now|copy")]
    PartitionsChanged { stored: i32, now: i32 },
}

impl ResumePlan {
    /// The plan from the last record of every non-empty partition.
    pub fn from_last_records(last: &[LastRecord], partitions_now: i32) -> Result<ResumePlan, PositionError> {
        let Some(newest) = last.iter().max_by_key(|r| r.position.durable.rank()) else {
            return Ok(ResumePlan::Fresh);
        };
        if let Some(r) = last.iter().find(|r| r.position.partitions != partitions_now) {
            return Err(PositionError::PartitionsChanged { stored: r.position.partitions, now: partitions_now });
        }
        let max_seq = last.iter().map(|r| r.position.seq).max().unwrap_or(0);
        let d = &newest.position.durable;
        match (&d.resume_after, d.copying) {
            (Some(after), false) => Ok(ResumePlan::Resume {
                after: after.clone(),
                next_seq: d.seq + 1,
                cluster_secs: d.cluster_secs,
                published: last.iter().map(|r| (r.partition, (r.position.seq, r.id.clone()))).collect(),
            }),
            _ => Ok(ResumePlan::RestartCopy { next_seq: max_seq + 1 }),
        }
    }
}

/// What to do with a replayed change of seq `seq` going to `partition`.
#[derive(Debug, PartialEq)]
pub enum Replayed {
    Publish,
    /// Already on the topic.
    Skip,
    /// At the partition's last seq but not the change stored there.
    Diverged { stored: Option<serde_json::Value> },
}

pub fn replayed(published: &BTreeMap<i32, (u64, Option<serde_json::Value>)>, partition: i32, seq: u64, id: &serde_json::Value) -> Replayed {
    match published.get(&partition) {
        Some((last, stored)) if seq == *last && stored.as_ref() != Some(id) => Replayed::Diverged { stored: stored.clone() },
        Some((last, _)) if seq <= *last => Replayed::Skip,
        _ => Replayed::Publish,
    }
}

/// Kafka's default partitioner for keyed records (murmur2 of the key bytes,
/// as the Java client and librdkafka's `murmur2_random`), so a change lands
/// where the MongoDB Kafka connector would have put it.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(partition: i32, seq: u64, durable: u64, after: Option<&str>, copying: bool) -> LastRecord {
        LastRecord {
            partition,
            position: Position { seq, partitions: 3, durable: Checkpoint { seq: durable, resume_after: after.map(|t| json!({"_data": t})), copying, cluster_secs: 0 } },
            id: Some(json!({"_data": format!("tok{seq}")})),
        }
    }

    #[test]
    fn kafka_murmur2_partitions() {
        // Values of Kafka's Utils.murmur2 (its unit tests and the Java client).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
        assert_eq!(murmur2(b"abc") as i32, 479470107);
        assert!((0..3).contains(&partition_for(b"{\"_id\":\"x\"}", 3)));
    }

    #[test]
    fn an_empty_topic_is_a_fresh_start() {
        assert_eq!(ResumePlan::from_last_records(&[], 3), Ok(ResumePlan::Fresh));
    }

    #[test]
    fn resumes_from_the_newest_durable_checkpoint_and_skips_what_each_partition_holds() {
        // Partition 0 got up to seq 100 (acknowledged up to 95 when it was sent);
        // partition 1's last is 97; partition 2's last is old.
        let last = [rec(0, 100, 95, Some("t95"), false), rec(1, 97, 96, Some("t96"), false), rec(2, 40, 39, Some("t39"), false)];
        let plan = ResumePlan::from_last_records(&last, 3).unwrap();
        let ResumePlan::Resume { after, next_seq, published, .. } = plan else { panic!("{plan:?}") };
        assert_eq!((after, next_seq), (json!({"_data": "t96"}), 97));
        assert_eq!(replayed(&published, 1, 97, &json!({"_data": "tok97"})), Replayed::Skip);
        assert_eq!(replayed(&published, 0, 98, &json!({"_data": "tok98"})), Replayed::Skip);
        assert_eq!(replayed(&published, 1, 98, &json!({"_data": "tok98"})), Replayed::Publish);
        assert_eq!(replayed(&published, 2, 99, &json!({"_data": "tok99"})), Replayed::Publish);
        assert!(matches!(replayed(&published, 0, 100, &json!({"_data": "other"})), Replayed::Diverged { .. }));
    }

    #[test]
    fn a_cut_short_copy_starts_over_and_a_finished_one_resumes_the_stream() {
        let cut = [rec(0, 10, 8, None, true), rec(1, 9, 7, None, true)];
        assert_eq!(ResumePlan::from_last_records(&cut, 3), Ok(ResumePlan::RestartCopy { next_seq: 11 }));
        // The copy ended at seq 10 (checkpoint names the stream start), one change followed.
        let done = [rec(0, 10, 9, None, true), rec(1, 11, 10, Some("start"), false)];
        assert!(matches!(ResumePlan::from_last_records(&done, 3), Ok(ResumePlan::Resume { next_seq: 11, .. })));
    }

    #[test]
    fn a_changed_partition_count_stops() {
        let last = [rec(0, 10, 9, Some("t"), false)];
        assert_eq!(ResumePlan::from_last_records(&last, 6), Err(PositionError::PartitionsChanged { stored: 3, now: 6 }));
    }
}
