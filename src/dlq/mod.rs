//! `resevent dlq`: the operator's tool for dead letters, the records `resevent
//! run` can never process (their layout: [`crate::sink::deadletter`]).
//! This file: the arguments, the settings and the dispatch; `read` (the
//! topic reader), `list` (list and show), `replay` (replay and purge).
//!
//! What each path guarantees:
//! - `list` and `show` only read. They assign the dead-letter topic's
//!   partitions (no group membership, nothing committed) and read each
//!   partition from its start to the end it has when the reader gets there:
//!   partition EOF, not ListOffsets, which on Tansu reports the last batch's
//!   base offset + 1 instead of the high watermark.
//! - `replay` re-injects dead letters: the original key, value and headers
//!   byte for byte, to the original topic (or `--to`) and the original
//!   partition number, so a reservation's changes stay in the partition, and
//!   the task, that holds its state; the timestamp is new. resevent's headers
//!   are dropped and one `resevent.replayed.from` added. The topic is read twice: once to plan
//!   (what matches, every target checked, where each partition ends), then to
//!   produce exactly that range. So a wrong target stops the replay before
//!   anything is produced, and records dead-lettered again while the replay
//!   runs are not replayed in a loop. The producer is idempotent with
//!   acks=all, and counts are printed only once every record is acknowledged.
//!   An interrupted or repeated replay re-injects some records again: harmless,
//!   as their events carry the same deterministic eventIds and the service
//!   treats a change no newer than the state as stale.
//! - A full replay (no filter, not a dry run) then records the *replay mark*:
//!   per partition, the offset after the last record it replayed, as the
//!   committed offsets of the consumer group `<dead-letter topic>-replayed`.
//!   That is durable on the broker and visible to every Kafka tool (the
//!   group's lag counts what no full replay has covered). It is committed
//!   after every acknowledgement, so it never covers a record that was not
//!   re-injected.
//! - `purge` deletes records (Kafka DeleteRecords) only below the replay mark,
//!   and only with `--yes`. A broker without DeleteRecords (Tansu 0.6.0) makes
//!   it fail with that reason; the start offsets are re-read to say whether
//!   anything was deleted.
//!
//! Must not: join a consumer group, commit anything but the replay mark, or
//! delete anything at or above it.

mod list;
mod read;
mod replay;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::bail;

use crate::time::parse_millis;
use list::{list, show_at, show_original};
use read::DeadLetterTopic;
use replay::{Selection, purge, replay};

/// The one header a replayed record carries beyond the original's.
pub use crate::sink::deadletter::REPLAYED_FROM;

/// Broker requests (metadata, offsets, commits, DeleteRecords).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A read that gets neither a record nor a partition's end for this long has
/// lost the broker.
const READ_STALL: Duration = Duration::from_secs(30);
/// Replayed records in flight before their acknowledgements are awaited; bounds memory.
const ACK_CHUNK: usize = 10_000;
/// How much of a key or value `show` prints without `--full`.
const SHOWN_BYTES: usize = 4096;
/// How much of an original header's value `show` prints without `--full`.
const SHOWN_HEADER_BYTES: usize = 256;

/// Help heading of the options every dlq command takes.
const TOPIC_AND_CONNECTION: &str = "Dead-letter topic and connection (any dlq command)";

/// `resevent dlq`: which dead-letter topic, how to reach it, and what to do.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
resevent dlq list --bootstrap-servers kafka:9092 --input-topic property.reservation\n  \
resevent dlq list --config resevent.toml --json\n  \
resevent dlq show 0:1742 --input-topic property.reservation\n  \
resevent dlq show --original 3:918 --input-topic property.reservation\n  \
resevent dlq replay --config resevent.toml --dry-run --kind missing-id,not-json\n  \
resevent dlq replay --config resevent.toml       a full replay: also moves the replay mark\n  \
resevent dlq purge --config resevent.toml --yes  delete what a full replay re-injected\n\n\
The dead-letter topic is --topic, else the dead-letter topic of the input topic (--input-topic, or\n\
input_topics of --config / RESEVENT_INPUT_TOPICS): <input>.dlt, or dead_letter_topic of the config.\n\
Connection settings as for `resevent run`: --bootstrap-servers, bootstrap_servers and [kafka],\n\
[consumer], [producer] of --config, RESEVENT_* environment.\n\n\
Exit status: 0 done, 1 nothing matched or refused (purge without --yes), 2 could not run.")]
pub struct DlqArgs {
    /// Config file of `resevent run` (TOML): its connection settings and topics are used.
    #[arg(long, value_name = "FILE", global = true, help_heading = TOPIC_AND_CONNECTION)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers [default: from --config or RESEVENT_BOOTSTRAP_SERVERS, else 127.0.0.1:9092].
    #[arg(long, value_name = "HOST:PORT", global = true, help_heading = TOPIC_AND_CONNECTION)]
    pub bootstrap_servers: Option<String>,
    /// The dead-letter topic itself.
    #[arg(long, value_name = "TOPIC", global = true, conflicts_with = "input_topic", help_heading = TOPIC_AND_CONNECTION)]
    pub topic: Option<String>,
    /// The input topic whose dead letters to use (its dead-letter topic is <TOPIC>.dlt unless the config names another).
    #[arg(long, value_name = "TOPIC", global = true, help_heading = TOPIC_AND_CONNECTION)]
    pub input_topic: Option<String>,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// Summarize the dead letters by error kind: count, first and last dead-letter time, original topic.
    ///
    /// Reads the whole topic, commits nothing.
    #[command(after_help = "Exit status: 0 listed, 1 the topic is empty, 2 could not run.")]
    List {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one dead letter: resevent's headers (the reason among them), the original headers, key and value.
    ///
    /// Text is printed as it is, other bytes escaped (\xNN).
    #[command(after_help = "Examples:\n  resevent dlq show 0:1742 --input-topic property.reservation\n  \
resevent dlq show --original 3:918 --input-topic property.reservation --full\n\n\
Exit status: 0 shown, 1 no such dead letter, 2 could not run.")]
    Show {
        /// Its position in the dead-letter topic.
        #[arg(value_name = "PARTITION:OFFSET", required_unless_present = "original", conflicts_with = "original")]
        position: Option<Position>,
        /// Find it by the original record's position instead (every dead letter of that record).
        #[arg(long, value_name = "PARTITION:OFFSET")]
        original: Option<Position>,
        /// Print keys, values and headers whole, however long.
        #[arg(long)]
        full: bool,
    },
    /// Re-inject dead letters into their original topic (or --to), then report counts per kind.
    ///
    /// Each record keeps its key, value, original headers and partition number (it gets a new
    /// timestamp); resevent's headers are replaced by
    /// resevent.replayed.from = <dead-letter topic>/<partition>/<offset>.
    /// Every record is acknowledged (idempotent producer, acks=all) before counts are printed.
    /// Replaying again is safe: the events come out with the same eventIds, which consumers
    /// drop as repeats, and a change no newer than a reservation's state is ignored as stale.
    /// A replay without --kind or --since records how far it got (the replay mark: offsets of
    /// the consumer group <dead-letter topic>-replayed), which is what purge may delete.
    #[command(after_help = "Examples:\n  resevent dlq replay --input-topic property.reservation --dry-run\n  \
resevent dlq replay --config resevent.toml --kind missing-id --since 2026-11-22T08:00:00Z\n  \
resevent dlq replay --input-topic property.reservation --to property.reservation.retry\n\n\
Exit status: 0 replayed (or would be), 1 nothing matched, 2 could not run (nothing is produced\n\
when a target topic is missing or lacks a partition).")]
    Replay {
        /// Produce to this topic instead of each record's original topic (it needs the same partition numbers).
        #[arg(long, value_name = "TOPIC")]
        to: Option<String>,
        /// Only dead letters of these kinds (repeatable or comma-separated, e.g. missing-id,not-json).
        #[arg(long = "kind", value_name = "KIND", value_delimiter = ',')]
        kinds: Vec<String>,
        /// Only dead letters written at or after this time (RFC 3339, e.g. 2026-11-22T08:00:00Z, or a date).
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<i64>,
        /// Print what would be replayed; produce nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete the dead letters a full replay re-injected (below the replay mark).
    ///
    /// Without --yes it prints what it would delete and exits 1. Needs a broker with
    /// DeleteRecords (Tansu 0.6.0 has none; there, dead letters leave by retention only).
    #[command(after_help = "Exit status: 0 deleted, 1 nothing to delete or refused (no --yes), 2 could not run\n\
(e.g. the broker has no DeleteRecords).")]
    Purge {
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

/// A record's place in a topic: `PARTITION:OFFSET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not PARTITION:OFFSET, e.g. 0:1742");
        let (p, o) = s.split_once(':').ok_or_else(bad)?;
        let (partition, offset) = (p.trim().parse().map_err(|_| bad())?, o.trim().parse().map_err(|_| bad())?);
        if partition < 0 || offset < 0 {
            return Err(bad());
        }
        Ok(Position { partition, offset })
    }
}

fn parse_since(s: &str) -> Result<i64, String> {
    parse_millis(s).ok_or_else(|| format!("{s:?} is not an RFC 3339 time such as 2026-11-22T08:00:00Z (or a date, 2026-11-22)"))
}

/// How a dlq command ended; `main` turns it into the exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Done,
    /// Nothing matched: an empty topic, no such dead letter, no replay mark.
    NothingMatched,
    /// Purge without `--yes`.
    Refused,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Done => 0,
            Verdict::NothingMatched | Verdict::Refused => 1,
        }
    }
}

/// The consumer group whose committed offsets are the replay mark of a dead-letter topic.
pub fn replay_mark_group(dead_letter_topic: &str) -> String {
    format!("{dead_letter_topic}-replayed")
}

/// Runs one dlq command; `env` is the process environment (`RESEVENT_*` settings).
pub async fn run(args: DlqArgs, env: impl Iterator<Item = (String, String)>, out: &mut dyn Write) -> anyhow::Result<Verdict> {
    let (cfg, name) = settings(&args, env)?;
    let topic = DeadLetterTopic::open(cfg, name)?;
    match args.command {
        DlqCommand::List { json } => list(&topic, json, out).await,
        DlqCommand::Show { position, original, full } => match (position, original) {
            (Some(at), _) => show_at(&topic, at, full, out).await,
            (None, Some(original)) => show_original(&topic, original, full, out).await,
            (None, None) => bail!("which dead letter? give PARTITION:OFFSET, or --original PARTITION:OFFSET"),
        },
        DlqCommand::Replay { to, kinds, since, dry_run } => replay(&topic, &Selection { kinds, since }, to.as_deref(), dry_run, out).await,
        DlqCommand::Purge { yes } => purge(&topic, yes, out).await,
    }
}

/// What `dlq` takes from `run`'s configuration (its `--config` file and
/// `RESEVENT_*` environment): how to reach the broker, and which dead-letter
/// topic `run` writes to. The rest of that configuration is `run`'s.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default)]
struct DlqSettings {
    bootstrap_servers: String,
    input_topics: Vec<String>,
    dead_letter_topic: Option<String>,
    kafka: BTreeMap<String, String>,
    consumer: BTreeMap<String, String>,
    producer: BTreeMap<String, String>,
}

impl Default for DlqSettings {
    fn default() -> Self {
        DlqSettings {
            bootstrap_servers: crate::config::DEFAULT_BOOTSTRAP_SERVERS.into(),
            input_topics: Vec::new(),
            dead_letter_topic: None,
            kafka: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

impl DlqSettings {
    fn kafka_settings(&self) -> crate::config::KafkaSettings<'_> {
        crate::config::KafkaSettings { bootstrap_servers: &self.bootstrap_servers, kafka: &self.kafka, consumer: &self.consumer, producer: &self.producer }
    }
}

/// The settings `resevent run` would use, and the dead-letter topic.
fn settings(args: &DlqArgs, env: impl Iterator<Item = (String, String)>) -> anyhow::Result<(DlqSettings, String)> {
    let without_default = |key: &str| (key == "dead_letter_topic").then(|| toml::Value::String(String::new()));
    let mut cfg: DlqSettings = crate::config::load_part(args.config.as_deref(), env, without_default, false)?;
    if let Some(servers) = &args.bootstrap_servers {
        cfg.bootstrap_servers = servers.clone();
    }
    if cfg.dead_letter_topic.as_deref() == Some("") {
        cfg.dead_letter_topic = None;
    }
    cfg.kafka_settings().remember_secrets();
    if let Some(topic) = &args.topic {
        return Ok((cfg, topic.clone()));
    }
    if let Some(input) = &args.input_topic {
        cfg.input_topics = vec![input.clone()];
    }
    let dead_letter_topics: BTreeSet<String> = cfg.input_topics.iter().map(|t| crate::sink::deadletter::topic_for(t, cfg.dead_letter_topic.as_deref())).collect();
    let mut names = dead_letter_topics.into_iter();
    match (names.next(), names.next()) {
        (Some(only), None) => Ok((cfg, only)),
        (None, _) => bail!("no dead-letter topic to read: give --topic DEAD_LETTER_TOPIC, or --input-topic TOPIC (input_topics in the config file, or RESEVENT_INPUT_TOPICS)"),
        _ => bail!(
            "the settings name several input topics ({}) with different dead-letter topics; choose one with --input-topic TOPIC or --topic DEAD_LETTER_TOPIC",
            cfg.input_topics.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::list::{Tally, readable};
    use rdkafka::message::Headers;
    use super::*;
    use crate::sink::deadletter::{self, StoredDeadLetter};

    fn dead_letter<'a>(headers: Vec<(&'a str, Option<&'a [u8]>)>) -> StoredDeadLetter<'a> {
        StoredDeadLetter { partition: 1, offset: 7, timestamp: Some(1_000), key: Some(b"r-1"), value: Some(b"{}"), headers }
    }

    #[test]
    fn resevent_headers_are_read_from_the_last_occurrence_and_kept_apart_from_the_original_ones() {
        let dl = dead_letter(vec![
            ("traceparent", Some(b"00-abc")),
            (deadletter::KIND, Some(b"spoofed-by-the-producer")),
            (REPLAYED_FROM, Some(b"x.dlt/0/1")),
            (deadletter::KIND, Some(b"missing-id")),
            (deadletter::ORIGINAL_PARTITION, Some(b"3")),
            (deadletter::ORIGINAL_OFFSET, Some(b"918")),
            (deadletter::TIME, Some(b"2026-11-22T08:00:00Z")),
        ]);
        assert_eq!(dl.kind(), "missing-id");
        assert_eq!(dl.original_position(), Some((3, 918)));
        assert_eq!(dl.dead_lettered_at(), parse_millis("2026-11-22T08:00:00Z"));
        let original: Vec<&str> = dl.original_headers().map(|(k, _)| k).collect();
        assert_eq!(original, ["traceparent", REPLAYED_FROM], "an earlier replay's trail is one of the original headers");
    }

    #[test]
    fn a_replay_keeps_the_original_headers_and_replaces_the_trail() {
        let dl = dead_letter(vec![("traceparent", Some(b"00-abc")), ("empty", None), (REPLAYED_FROM, Some(b"x.dlt/0/1")), (deadletter::KIND, Some(b"not-json"))]);
        let headers = dl.replay_headers("x.dlt");
        let got: Vec<(String, Option<Vec<u8>>)> = headers.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect();
        assert_eq!(got, vec![("traceparent".into(), Some(b"00-abc".to_vec())), ("empty".into(), None), (REPLAYED_FROM.into(), Some(b"x.dlt/1/7".to_vec()))]);
    }

    #[test]
    fn dead_letter_time_falls_back_to_the_record_timestamp() {
        let dl = dead_letter(vec![(deadletter::TIME, Some(b"not a time"))]);
        assert_eq!(dl.dead_lettered_at(), Some(1_000));
    }

    #[test]
    fn selection_by_kind_and_time() {
        let old = dead_letter(vec![(deadletter::KIND, Some(b"not-json")), (deadletter::TIME, Some(b"2026-11-21T00:00:00Z"))]);
        let new = dead_letter(vec![(deadletter::KIND, Some(b"missing-id")), (deadletter::TIME, Some(b"2026-11-23T00:00:00Z"))]);
        let all = Selection::default();
        assert!(all.is_everything() && all.selects(&old) && all.selects(&new));
        let kinds = Selection { kinds: vec!["missing-id".into(), "too-large".into()], since: None };
        assert!(!kinds.selects(&old) && kinds.selects(&new));
        let since = Selection { kinds: Vec::new(), since: parse_millis("2026-11-22") };
        assert!(!since.is_everything() && !since.selects(&old) && since.selects(&new));
    }

    #[test]
    fn positions_parse_and_bad_ones_say_the_form() {
        assert_eq!("3:918".parse(), Ok(Position { partition: 3, offset: 918 }));
        for bad in ["3", "3:", "a:1", "-1:0", "1:2:3"] {
            assert!(bad.parse::<Position>().unwrap_err().contains("PARTITION:OFFSET"), "{bad}");
        }
        assert!(parse_since("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn bytes_print_as_text_or_escaped_and_long_ones_are_cut_with_a_note() {
        assert_eq!(readable(b"plain text", None), "plain text");
        assert_eq!(readable(b"\xff\x00ab", None), "(not UTF-8; escaped) \\xff\\x00ab");
        let cut = readable("aé".repeat(10).as_bytes(), Some(4));
        assert_eq!(cut, "aéa … [truncated: 4 of 30 bytes shown; --full shows all]");
        assert_eq!(readable("é".as_bytes(), Some(1)), " … [truncated: 1 of 2 bytes shown; --full shows all]");
    }

    #[test]
    fn tally_counts_per_kind_and_topic_with_first_and_last_time() {
        let mut t = Tally::default();
        t.add("not-json", "raw", Some(3_000));
        t.add("not-json", "raw", Some(1_000));
        t.add("missing-id", "raw", None);
        assert_eq!(t.total, 3);
        let row = t.rows[&("not-json".to_string(), "raw".to_string())];
        assert_eq!((row.count, row.first, row.last), (2, Some(1_000), Some(3_000)));
        let table = t.table("original topic", true);
        assert!(table.contains("not-json    raw                 2  1970-01-01T00:00:01Z"), "{table}");
        assert!(table.lines().last().unwrap().trim_end().ends_with('3'), "{table}");
    }
}
