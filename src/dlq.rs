//! `resevent dlq`: the operator's tool for dead letters, the records `resevent
//! run` can never process (their layout: [`crate::sink::deadletter`]).
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::sink::deadletter;
use crate::kafka::{EndOfPartition, acknowledged, client_config, group_consumer_config, producer_config, send};
use crate::time::{format_millis, parse_millis};

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
pub enum Outcome {
    Done,
    /// Nothing matched: an empty topic, no such dead letter, no replay mark.
    NothingMatched,
    /// Purge without `--yes`.
    Refused,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::NothingMatched | Outcome::Refused => 1,
        }
    }
}

/// The consumer group whose committed offsets are the replay mark of a dead-letter topic.
pub fn replay_mark_group(dead_letter_topic: &str) -> String {
    format!("{dead_letter_topic}-replayed")
}

/// Runs one dlq command; `env` is the process environment (`RESEVENT_*` settings).
pub async fn run(args: DlqArgs, env: impl Iterator<Item = (String, String)>, out: &mut dyn Write) -> anyhow::Result<Outcome> {
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

/// The dead-letter topic and how to reach it.
struct DeadLetterTopic {
    cfg: DlqSettings,
    name: String,
    partitions: Vec<i32>,
}

impl DeadLetterTopic {
    fn open(cfg: DlqSettings, name: String) -> anyhow::Result<DeadLetterTopic> {
        let probe = DeadLetterTopic { cfg, name, partitions: Vec::new() };
        let partitions = partitions(&probe.consumer()?, &probe.name, &probe.cfg.bootstrap_servers)?
            .ok_or_else(|| anyhow::anyhow!("dead-letter topic {:?} does not exist on {}; check --topic or --input-topic (resevent run creates <input>.dlt when it starts)", probe.name, probe.cfg.bootstrap_servers))?;
        Ok(DeadLetterTopic { partitions, ..probe })
    }

    /// A consumer in the replay-mark group that never subscribes: it reads by
    /// assignment, and only `replay` commits with it.
    fn consumer(&self) -> anyhow::Result<DeadLetterConsumer> {
        let mut c = group_consumer_config(&self.cfg.kafka_settings(), &replay_mark_group(&self.name));
        c.set("enable.partition.eof", "true");
        c.create_with_context(EndOfPartition { what: "dead-letter consumer" }).with_context(|| format!("creating a Kafka consumer for {}", self.cfg.bootstrap_servers))
    }

    /// Reads every partition from its start to its end.
    fn read_all(&self) -> anyhow::Result<Reader> {
        Reader::start(self, self.partitions.iter().map(|&p| (p, Offset::Beginning, None)))
    }

    fn replay_mark(&self, consumer: &DeadLetterConsumer) -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for &p in &self.partitions {
            tpl.add_partition(&self.name, p);
        }
        let group = replay_mark_group(&self.name);
        let committed = tokio::task::block_in_place(|| consumer.committed_offsets(tpl, REQUEST_TIMEOUT))
            .with_context(|| format!("reading the replay mark (offsets of consumer group {group:?}) from {}", self.cfg.bootstrap_servers))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    /// A partition's (first offset, end offset) as the broker reports them (ListOffsets).
    fn watermarks(&self, consumer: &DeadLetterConsumer, partition: i32) -> anyhow::Result<(i64, i64)> {
        tokio::task::block_in_place(|| consumer.fetch_watermarks(&self.name, partition, REQUEST_TIMEOUT))
            .with_context(|| format!("reading the offsets of {}/{partition} from {}", self.name, self.cfg.bootstrap_servers))
    }

    /// The first offset each partition still holds.
    fn start_offsets(&self, consumer: &DeadLetterConsumer) -> anyhow::Result<BTreeMap<i32, i64>> {
        self.partitions.iter().map(|&p| Ok((p, self.watermarks(consumer, p)?.0))).collect()
    }
}

/// Partition ids of a topic, `None` if it does not exist.
fn partitions(consumer: &DeadLetterConsumer, topic: &str, bootstrap: &str) -> anyhow::Result<Option<Vec<i32>>> {
    tokio::task::block_in_place(|| crate::kafka::topics::partition_ids(consumer, topic, REQUEST_TIMEOUT)).with_context(|| format!("reading metadata of topic {topic:?} from {bootstrap}"))
}

type DeadLetterConsumer = StreamConsumer<EndOfPartition>;


/// Reads dead letters in offset order per partition, from a start offset up
/// to a stop offset or, without one, to the end the partition has when
/// reached (EOF).
struct Reader {
    consumer: DeadLetterConsumer,
    topic: String,
    bootstrap: String,
    /// Partitions still being read → the offset to stop before.
    open: BTreeMap<i32, Option<i64>>,
}

impl Reader {
    fn start(topic: &DeadLetterTopic, ranges: impl IntoIterator<Item = (i32, Offset, Option<i64>)>) -> anyhow::Result<Reader> {
        let consumer = topic.consumer()?;
        let mut tpl = TopicPartitionList::new();
        let mut open = BTreeMap::new();
        for (p, from, stop) in ranges {
            tpl.add_partition_offset(&topic.name, p, from)?;
            open.insert(p, stop);
        }
        consumer.assign(&tpl).with_context(|| format!("assigning {} partitions", topic.name))?;
        Ok(Reader { consumer, topic: topic.name.clone(), bootstrap: topic.cfg.bootstrap_servers.clone(), open })
    }

    /// The next dead letter, `None` once every partition is at its end.
    async fn next(&mut self) -> anyhow::Result<Option<BorrowedMessage<'_>>> {
        let Reader { consumer, topic, bootstrap, open } = self;
        let consumer = &*consumer;
        while !open.is_empty() {
            let received = tokio::time::timeout(READ_STALL, consumer.recv())
                .await
                .map_err(|_| anyhow::anyhow!("reading {topic:?}: no record and no end of partition within {READ_STALL:?}; is {bootstrap} reachable?"))?;
            match received {
                Err(KafkaError::PartitionEOF(p)) => {
                    open.remove(&p);
                }
                Err(e) => bail!("reading {topic:?} from {bootstrap}: {e}"),
                Ok(m) => {
                    let p = m.partition();
                    // A partition already at its end: whatever arrives later is not part of this read.
                    let Some(&stop) = open.get(&p) else { continue };
                    if stop.is_some_and(|s| m.offset() >= s) {
                        open.remove(&p);
                        continue;
                    }
                    if stop.is_some_and(|s| m.offset() + 1 >= s) {
                        open.remove(&p);
                    }
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }
}

/// One dead letter as read: the original record plus resevent's headers.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub partition: i32,
    pub offset: i64,
    /// The dead-letter record's own timestamp, when `resevent.time` is missing.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Every header in record order: the original record's, then resevent's.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl<'a> DeadLetter<'a> {
    pub fn from_message<M: Message>(m: &'a M) -> DeadLetter<'a> {
        DeadLetter {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key(),
            value: m.payload(),
            headers: m.headers().map(|h| h.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default(),
        }
    }

    /// A resevent header as text. The last one counts: resevent appends its
    /// headers after the original record's.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().rev().find(|(k, _)| *k == name).and_then(|(_, v)| std::str::from_utf8((*v)?).ok())
    }

    pub fn kind(&self) -> &'a str {
        self.header(deadletter::KIND).unwrap_or("unknown")
    }

    pub fn original_topic(&self) -> Option<&'a str> {
        self.header(deadletter::ORIGINAL_TOPIC)
    }

    pub fn original_position(&self) -> Option<Position> {
        let number = |name| self.header(name)?.parse().ok();
        Some(Position { partition: number(deadletter::ORIGINAL_PARTITION)? as i32, offset: number(deadletter::ORIGINAL_OFFSET)? })
    }

    /// When it was dead-lettered: `resevent.time`, else the record's timestamp.
    pub fn dead_lettered_at(&self) -> Option<i64> {
        self.header(deadletter::TIME).and_then(parse_millis).or(self.timestamp)
    }

    /// The original record's headers: all but resevent's.
    pub fn original_headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + '_ {
        self.headers.iter().copied().filter(|(k, _)| !deadletter::is_resevent_header(k))
    }

    /// The headers a replay of it carries: the original ones (an earlier
    /// replay's trail replaced), then where this replay took it from.
    pub fn replay_headers(&self, dead_letter_topic: &str) -> OwnedHeaders {
        let from = format!("{dead_letter_topic}/{}/{}", self.partition, self.offset);
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (key, value) in self.original_headers().filter(|(k, _)| *k != REPLAYED_FROM) {
            headers = headers.insert(Header { key, value });
        }
        headers.insert(Header { key: REPLAYED_FROM, value: Some(from.as_str()) })
    }
}

/// Which dead letters a replay takes; empty = all.
#[derive(Debug, Default)]
struct Selection {
    kinds: Vec<String>,
    /// Dead-lettered at or after, epoch ms.
    since: Option<i64>,
}

impl Selection {
    fn is_everything(&self) -> bool {
        self.kinds.is_empty() && self.since.is_none()
    }

    fn selects(&self, dl: &DeadLetter<'_>) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == dl.kind())) && self.since.is_none_or(|since| dl.dead_lettered_at().is_some_and(|at| at >= since))
    }
}

/// Counts per (error kind, topic), with the first and last dead-letter time.
#[derive(Debug, Default)]
struct Tally {
    rows: BTreeMap<(String, String), Row>,
    total: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Row {
    count: u64,
    first: Option<i64>,
    last: Option<i64>,
}

impl Tally {
    fn add(&mut self, kind: &str, topic: &str, at: Option<i64>) {
        let row = self.rows.entry((kind.to_string(), topic.to_string())).or_default();
        row.count += 1;
        if let Some(at) = at {
            row.first = Some(row.first.map_or(at, |f| f.min(at)));
            row.last = Some(row.last.map_or(at, |l| l.max(at)));
        }
        self.total += 1;
    }

    /// An aligned table: kind, `topic_heading`, count, and with `times` the first and last dead-letter time.
    fn table(&self, topic_heading: &str, times: bool) -> String {
        let time = |t: Option<i64>| t.map(format_millis).unwrap_or_else(|| "-".into());
        let mut lines = vec![vec!["kind".to_string(), topic_heading.to_string(), "count".to_string()]];
        if times {
            lines[0].extend(["first dead-lettered".to_string(), "last dead-lettered".to_string()]);
        }
        for ((kind, topic), row) in &self.rows {
            let mut line = vec![kind.clone(), topic.clone(), row.count.to_string()];
            if times {
                line.extend([time(row.first), time(row.last)]);
            }
            lines.push(line);
        }
        lines.push(vec!["total".to_string(), String::new(), self.total.to_string()]);
        let columns = lines[0].len();
        let widths: Vec<usize> = (0..columns).map(|c| lines.iter().filter_map(|l| l.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
        let mut text = String::new();
        for line in &lines {
            let cells: Vec<String> = line.iter().enumerate().map(|(c, s)| if c == 2 { format!("{s:>w$}", w = widths[c]) } else { format!("{s:<w$}", w = widths[c]) }).collect();
            text.push_str("  ");
            text.push_str(cells.join("  ").trim_end());
            text.push('\n');
        }
        text
    }
}

async fn list(topic: &DeadLetterTopic, json: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let mark = topic.replay_mark(&topic.consumer()?)?;
    let mut tally = Tally::default();
    let mut replayed = 0u64;
    let mut reader = topic.read_all()?;
    while let Some(m) = reader.next().await? {
        let dl = DeadLetter::from_message(&m);
        tally.add(dl.kind(), dl.original_topic().unwrap_or("-"), dl.dead_lettered_at());
        if mark.get(&dl.partition).is_some_and(|&end| dl.offset < end) {
            replayed += 1;
        }
    }
    let group = replay_mark_group(&topic.name);
    if json {
        let kinds: Vec<serde_json::Value> = tally
            .rows
            .iter()
            .map(|((kind, original), row)| {
                serde_json::json!({"kind": kind, "original_topic": original, "count": row.count, "first": row.first.map(format_millis), "last": row.last.map(format_millis)})
            })
            .collect();
        let doc = serde_json::json!({"topic": topic.name, "partitions": topic.partitions.len(), "total": tally.total, "replayed": replayed, "replay_mark_group": group, "kinds": kinds});
        writeln!(out, "{doc}")?;
    } else if tally.total == 0 {
        writeln!(out, "no dead letters in {} ({} partitions)", topic.name, topic.partitions.len())?;
    } else {
        writeln!(out, "{}: {} dead letters in {} partitions", topic.name, tally.total, topic.partitions.len())?;
        write!(out, "{}", tally.table("original topic", true))?;
        writeln!(out, "{replayed} of them re-injected by a full replay (below the replay mark, consumer group {group}); `resevent dlq purge` can delete those")?;
    }
    Ok(if tally.total == 0 { Outcome::NothingMatched } else { Outcome::Done })
}

async fn show_at(topic: &DeadLetterTopic, at: Position, full: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    if !topic.partitions.contains(&at.partition) {
        bail!("{} has no partition {} (it has {}); `resevent dlq list` shows what it holds", topic.name, at.partition, topic.partitions.len());
    }
    let (first, end) = topic.watermarks(&topic.consumer()?, at.partition)?;
    // Below the first offset it was deleted; an empty partition holds nothing.
    if at.offset >= first && end > first {
        // Past the reported end, start at the last record reported instead: a
        // fetch past the end may get neither records nor the partition's end
        // (Tansu), and Tansu reports as the end its last batch's base offset
        // + 1, so the position may still be in that batch.
        let from = at.offset.min(end - 1);
        let mut reader = Reader::start(topic, [(at.partition, Offset::Offset(from), Some(at.offset + 1))])?;
        while let Some(m) = reader.next().await? {
            if m.offset() == at.offset {
                write!(out, "{}", describe(&topic.name, &DeadLetter::from_message(&m), full))?;
                return Ok(Outcome::Done);
            }
        }
    }
    writeln!(out, "no dead letter at {}/{}:{} (deleted, or past the end)", topic.name, at.partition, at.offset)?;
    Ok(Outcome::NothingMatched)
}

async fn show_original(topic: &DeadLetterTopic, original: Position, full: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let mut found = 0;
    let mut reader = topic.read_all()?;
    while let Some(m) = reader.next().await? {
        let dl = DeadLetter::from_message(&m);
        if dl.original_position() == Some(original) {
            if found > 0 {
                writeln!(out)?;
            }
            write!(out, "{}", describe(&topic.name, &dl, full))?;
            found += 1;
        }
    }
    if found == 0 {
        writeln!(out, "no dead letter in {} came from partition {} offset {} of its original topic", topic.name, original.partition, original.offset)?;
        return Ok(Outcome::NothingMatched);
    }
    Ok(Outcome::Done)
}

/// One dead letter as a person reads it.
fn describe(topic: &str, dl: &DeadLetter<'_>, full: bool) -> String {
    let limit = |n| if full { None } else { Some(n) };
    let mut text = format!("dead letter {topic}/{}:{}\n", dl.partition, dl.offset);
    for name in deadletter::ALL {
        if let Some(value) = dl.header(name) {
            // The original timestamp is epoch milliseconds; show the time too.
            let as_time = (name == deadletter::ORIGINAL_TIMESTAMP).then(|| value.parse().ok()).flatten().map(|ms| format!(" ({})", format_millis(ms)));
            text.push_str(&format!("{name}: {value}{}\n", as_time.unwrap_or_default()));
        }
    }
    if let Some(ms) = dl.timestamp {
        text.push_str(&format!("record timestamp: {}\n", format_millis(ms)));
    }
    let originals: Vec<_> = dl.original_headers().collect();
    text.push_str(&format!("original headers: {}\n", originals.len()));
    for (key, value) in originals {
        text.push_str(&format!("  {key}: {}\n", value.map_or_else(|| "(null)".into(), |v| readable(v, limit(SHOWN_HEADER_BYTES)))));
    }
    for (what, bytes) in [("key", dl.key), ("value", dl.value)] {
        match bytes {
            None => text.push_str(&format!("{what}: (null)\n")),
            Some(b) => text.push_str(&format!("{what} ({} bytes):\n{}\n", b.len(), readable(b, limit(SHOWN_BYTES)))),
        }
    }
    text
}

/// Bytes as a person reads them: UTF-8 text as it is, anything else escaped
/// (`\xNN`); at most `limit` bytes, with a note saying how much was cut.
fn readable(bytes: &[u8], limit: Option<usize>) -> String {
    let shown = &bytes[..limit.unwrap_or(bytes.len()).min(bytes.len())];
    let mut text = if std::str::from_utf8(bytes).is_ok() {
        // The cut may split a character; show the whole ones before it.
        let whole = std::str::from_utf8(shown).map_or_else(|e| e.valid_up_to(), str::len);
        String::from_utf8_lossy(&shown[..whole]).into_owned()
    } else {
        format!("(not UTF-8; escaped) {}", shown.escape_ascii())
    };
    if shown.len() < bytes.len() {
        text.push_str(&format!(" … [truncated: {} of {} bytes shown; --full shows all]", shown.len(), bytes.len()));
    }
    text
}

/// What the first read of a replay found: the work, checked.
#[derive(Debug, Default)]
struct ReplayPlan {
    /// Per partition, the offset after its last selected dead letter: the
    /// second read stops there (for a full replay, that is the partition's end).
    stops: BTreeMap<i32, i64>,
    /// Selected dead letters per (kind, target topic).
    tally: Tally,
    /// Every kind in the topic, to say what there is when nothing matched.
    kinds_present: BTreeSet<String>,
}

/// Where a dead letter goes back to: (topic, partition).
fn replay_target<'a>(dl: &DeadLetter<'a>, to: Option<&'a str>, dead_letter_topic: &str) -> anyhow::Result<(&'a str, i32)> {
    let here = format!("{dead_letter_topic}/{}:{}", dl.partition, dl.offset);
    let topic = match to.or(dl.original_topic()) {
        Some(t) => t,
        None => bail!("dead letter {here} has no {} header (not written by resevent run?); give --to TOPIC", deadletter::ORIGINAL_TOPIC),
    };
    let partition = dl
        .original_position()
        .map(|p| p.partition)
        .ok_or_else(|| anyhow::anyhow!("dead letter {here} has no usable {} header (not written by resevent run?), so its partition is unknown", deadletter::ORIGINAL_PARTITION))?;
    Ok((topic, partition))
}

/// What a replay that failed half-way has done, and the way out.
const INTERRUPTED: &str = "replay interrupted: some dead letters may have been re-injected already, and the replay mark is unchanged; \
replaying again is safe (the same records give the same eventIds)";

async fn plan_replay(topic: &DeadLetterTopic, selection: &Selection, to: Option<&str>) -> anyhow::Result<ReplayPlan> {
    let probe = topic.consumer()?;
    let mut target_partitions: HashMap<String, usize> = HashMap::new();
    let mut plan = ReplayPlan::default();
    let mut reader = topic.read_all()?;
    while let Some(m) = reader.next().await? {
        let dl = DeadLetter::from_message(&m);
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

async fn replay(topic: &DeadLetterTopic, selection: &Selection, to: Option<&str>, dry_run: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    if to == Some(topic.name.as_str()) {
        bail!("--to {} is the dead-letter topic itself; give the topic resevent run reads", topic.name);
    }
    let plan = plan_replay(topic, selection, to).await?;
    if plan.tally.total == 0 {
        let present = plan.kinds_present.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        writeln!(out, "no dead letter in {} matches{}", topic.name, if present.is_empty() { " (it is empty)".to_string() } else { format!(" (kinds present: {present})") })?;
        return Ok(Outcome::NothingMatched);
    }
    if dry_run {
        writeln!(out, "would replay {} dead letters from {} (dry run: nothing produced):", plan.tally.total, topic.name)?;
        write!(out, "{}", plan.tally.table("to topic", false))?;
        return Ok(Outcome::Done);
    }

    let producer: FutureProducer = producer_config(&topic.cfg.kafka_settings()).create().with_context(|| format!("creating a Kafka producer for {}", topic.cfg.bootstrap_servers))?;
    let mut done = Tally::default();
    let mut in_flight = Vec::new();
    let mut reader = Reader::start(topic, plan.stops.iter().map(|(&p, &stop)| (p, Offset::Beginning, Some(stop))))?;
    while let Some(m) = reader.next().await? {
        let dl = DeadLetter::from_message(&m);
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
        return Ok(Outcome::Done);
    }
    let mut mark = TopicPartitionList::new();
    for (&p, &stop) in &plan.stops {
        mark.add_partition_offset(&topic.name, p, Offset::Offset(stop))?;
    }
    tokio::task::block_in_place(|| reader.consumer.commit(&mark, CommitMode::Sync))
        .with_context(|| format!("everything was replayed, but the replay mark (offsets of consumer group {group:?}) was not recorded; replay again to record it"))?;
    let at: Vec<String> = plan.stops.iter().map(|(p, stop)| format!("partition {p}: {stop}")).collect();
    writeln!(out, "replay mark (consumer group {group}) now at {}; `resevent dlq purge` may delete below it", at.join(", "))?;
    Ok(Outcome::Done)
}

async fn purge(topic: &DeadLetterTopic, yes: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let consumer = topic.consumer()?;
    let group = replay_mark_group(&topic.name);
    let mark = topic.replay_mark(&consumer)?;
    if mark.is_empty() {
        writeln!(out, "nothing to purge in {}: no full replay is recorded (consumer group {group} has no offsets); `resevent dlq replay` without --kind or --since records one", topic.name)?;
        return Ok(Outcome::NothingMatched);
    }
    let starts = topic.start_offsets(&consumer)?;
    // Per partition, the offsets [start, mark) that a full replay re-injected and that are still there.
    let deletable: Vec<(i32, i64, i64)> = mark.iter().filter_map(|(&p, &end)| starts.get(&p).filter(|&&start| start < end).map(|&start| (p, start, end))).collect();
    if deletable.is_empty() {
        writeln!(out, "nothing to purge in {}: everything below the replay mark is deleted already", topic.name)?;
        return Ok(Outcome::NothingMatched);
    }
    // Offsets, so exact for dead letters written without transactions (with
    // --guarantee exactly-once a few of them are commit markers).
    let total: i64 = deletable.iter().map(|(_, start, end)| end - start).sum();
    let ranges: Vec<String> = deletable.iter().map(|(p, start, end)| format!("partition {p}: offsets {start} to {}", end - 1)).collect();
    if !yes {
        writeln!(out, "would delete {total} dead letters from {}, all re-injected by a full replay: {}", topic.name, ranges.join("; "))?;
        writeln!(out, "refused: deleting needs --yes (resevent dlq purge --yes)")?;
        return Ok(Outcome::Refused);
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
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter<'a>(headers: Vec<(&'a str, Option<&'a [u8]>)>) -> DeadLetter<'a> {
        DeadLetter { partition: 1, offset: 7, timestamp: Some(1_000), key: Some(b"r-1"), value: Some(b"{}"), headers }
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
        assert_eq!(dl.original_position(), Some(Position { partition: 3, offset: 918 }));
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
