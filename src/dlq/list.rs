//! `dlq list` and `dlq show`: read only, nothing committed.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::bail;
use rdkafka::message::Message;

use rdkafka::Offset;

use super::read::{DeadLetterTopic, Reader};
use super::{Position, SHOWN_BYTES, SHOWN_HEADER_BYTES, Verdict, replay_mark_group};
use crate::sink::deadletter::{self, StoredDeadLetter};
use crate::time::format_millis;

/// Counts per (error kind, topic), with the first and last dead-letter time.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) rows: BTreeMap<(String, String), Row>,
    pub(super) total: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Row {
    pub(super) count: u64,
    pub(super) first: Option<i64>,
    pub(super) last: Option<i64>,
}

impl Tally {
    pub(super) fn add(&mut self, kind: &str, topic: &str, at: Option<i64>) {
        let row = self.rows.entry((kind.to_string(), topic.to_string())).or_default();
        row.count += 1;
        if let Some(at) = at {
            row.first = Some(row.first.map_or(at, |f| f.min(at)));
            row.last = Some(row.last.map_or(at, |l| l.max(at)));
        }
        self.total += 1;
    }

    /// An aligned table: kind, `topic_heading`, count, and with `times` the first and last dead-letter time.
    pub(super) fn table(&self, topic_heading: &str, times: bool) -> String {
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

pub(super) async fn list(topic: &DeadLetterTopic, json: bool, out: &mut dyn Write) -> anyhow::Result<Verdict> {
    let mark = topic.replay_mark(&topic.consumer()?)?;
    let mut tally = Tally::default();
    let mut replayed = 0u64;
    let mut reader = topic.read_all()?;
    while let Some(m) = reader.next().await? {
        let dl = StoredDeadLetter::from_message(&m);
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
    Ok(if tally.total == 0 { Verdict::NothingMatched } else { Verdict::Done })
}

pub(super) async fn show_at(topic: &DeadLetterTopic, at: Position, full: bool, out: &mut dyn Write) -> anyhow::Result<Verdict> {
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
                write!(out, "{}", describe(&topic.name, &StoredDeadLetter::from_message(&m), full))?;
                return Ok(Verdict::Done);
            }
        }
    }
    writeln!(out, "no dead letter at {}/{}:{} (deleted, or past the end)", topic.name, at.partition, at.offset)?;
    Ok(Verdict::NothingMatched)
}

pub(super) async fn show_original(topic: &DeadLetterTopic, original: Position, full: bool, out: &mut dyn Write) -> anyhow::Result<Verdict> {
    let mut found = 0;
    let mut reader = topic.read_all()?;
    while let Some(m) = reader.next().await? {
        let dl = StoredDeadLetter::from_message(&m);
        if dl.original_position() == Some((original.partition, original.offset)) {
            if found > 0 {
                writeln!(out)?;
            }
            write!(out, "{}", describe(&topic.name, &dl, full))?;
            found += 1;
        }
    }
    if found == 0 {
        writeln!(out, "no dead letter in {} came from partition {} offset {} of its original topic", topic.name, original.partition, original.offset)?;
        return Ok(Verdict::NothingMatched);
    }
    Ok(Verdict::Done)
}

/// One dead letter as a person reads it.
pub(super) fn describe(topic: &str, dl: &StoredDeadLetter<'_>, full: bool) -> String {
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
pub(super) fn readable(bytes: &[u8], limit: Option<usize>) -> String {
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
