//! Start-up checks and creation of the topics `resevent run` uses: input
//! partition counts agree, the changelog is partitioned like the input and
//! compacted, the business (and routed) topics exist with their retention,
//! and each input has its dead-letter topic `<input>.dlt`.
//!
//! Runs once, before anything is consumed: a mismatch stops the service with
//! an error that names the topics and the fix.

use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::config::RunConfig;
use crate::kafka::ConnectionContext;
use crate::kafka::topics::{self, TopicSpec};

const TIMEOUT: Duration = Duration::from_secs(15);

/// Partition count of a topic, `None` if it does not exist.
fn partitions(probe: &BaseConsumer<ConnectionContext>, topic: &str) -> anyhow::Result<Option<usize>> {
    let ids = topics::partition_ids(probe, topic, TIMEOUT).map_err(|e| {
        // librdkafka queues the reason (a TLS handshake, a refused login)
        // as an error event; serve it so the message can say why.
        for _ in 0..5 {
            let _ = probe.poll(Duration::from_millis(100));
        }
        crate::kafka::explain(format!("cannot read metadata of topic {topic:?} from the brokers: {e}"), probe.context())
    })?;
    Ok(ids.map(|ids| ids.len()))
}

/// Checks and creates topics; returns the input partition count.
/// `routed` are the pipeline's extra event topics, created like the business topic.
pub async fn prepare(cfg: &RunConfig, routed: &[String], client: &ClientConfig) -> anyhow::Result<usize> {
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let probe: BaseConsumer<ConnectionContext> = topics::probe_config(client).create_with_context(ConnectionContext::default())?;
    let mut count = None;
    for topic in &cfg.input_topics {
        let n = partitions(&probe, topic)?.ok_or_else(|| anyhow::anyhow!("input topic {topic:?} does not exist on {}; create it, or check --input-topic", cfg.bootstrap_servers))?;
        match count {
            None => count = Some((topic.clone(), n)),
            Some((ref first, m)) if m != n => anyhow::bail!(
                "input topics {first:?} ({m} partitions) and {topic:?} ({n} partitions) differ; partition N of every input topic is one task with one state, so their partition counts must be equal"
            ),
            Some(_) => {}
        }
    }
    let (_, n) = count.expect("validated: at least one input topic");

    let changelog = cfg.changelog_topic();
    let mut to_create = Vec::new();
    match partitions(&probe, &changelog)? {
        Some(m) if m != n => anyhow::bail!(
            "changelog topic {changelog:?} has {m} partitions but the input has {n}; state of input partition N lives in changelog partition N, so they must match. \
             If the input was repartitioned on purpose, delete {changelog:?} and the state dir (state is rebuilt from the input), or use a new --application-id"
        ),
        Some(_) => {}
        None if cfg.create_topics => to_create.push(TopicSpec { name: changelog.clone(), partitions: n as i32, configs: vec![("cleanup.policy", "compact".to_string())] }),
        None => anyhow::bail!("changelog topic {changelog:?} does not exist and topic creation is off; create it compacted with {n} partitions"),
    }
    for topic in std::iter::once(&cfg.output_topic).chain(routed) {
        match partitions(&probe, topic)? {
            Some(_) => {}
            None if cfg.create_topics => to_create.push(TopicSpec {
                name: topic.clone(),
                partitions: n as i32,
                configs: vec![("retention.ms", cfg.output_retention_ms.to_string()), ("retention.bytes", cfg.output_retention_bytes.to_string()), ("cleanup.policy", "delete".to_string())],
            }),
            None => anyhow::bail!("business topic {topic:?} does not exist and topic creation is off"),
        }
    }
    // Dead letters keep the broker's default retention: someone must look at
    // them. They carry the original bytes, so they take records as large as
    // any input may hold (the oversized ones are why some are here).
    let mut dead_letter_topics: Vec<String> = cfg.input_topics.iter().map(|t| cfg.dead_letter_topic_for(t)).collect();
    dead_letter_topics.dedup();
    for dlt in dead_letter_topics {
        match partitions(&probe, &dlt)? {
            // A dead letter goes to its original's partition number, so a
            // replay re-injects each partition's records in their order.
            Some(m) if m < n => anyhow::bail!("dead-letter topic {dlt:?} has {m} partitions, fewer than the input's {n}; add partitions to it or name another with dead_letter_topic"),
            Some(_) => {}
            None if cfg.create_topics => to_create.push(TopicSpec { name: dlt, partitions: n as i32, configs: vec![("max.message.bytes", crate::kafka::DEAD_LETTER_MAX_MESSAGE_BYTES.to_string())] }),
            None => anyhow::bail!("dead-letter topic {dlt:?} does not exist and topic creation is off"),
        }
    }
    topics::create(&admin, &to_create, cfg.replication_factor, TIMEOUT).await?;
    Ok(n)
}

