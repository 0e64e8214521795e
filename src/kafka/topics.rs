//! Topics: how many partitions a topic has (or that it does not exist), and
//! creating the ones a command needs. Every command asks the same way.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext};

/// The partition ids of `topic`, `None` if it does not exist (or has no
/// partitions). Ask through a consumer made with
/// `allow.auto.create.topics=false` ([`probe_config`]): a producer-type
/// metadata request lets brokers that auto-create topics create the very
/// topic being checked, with their default partition count. Blocking (up to
/// `timeout`); call it from `block_in_place` on a runtime thread. On failure
/// the error says why, with librdkafka's last report when the context keeps one.
pub fn partition_ids<C: ConsumerContext, K: Consumer<C>>(probe: &K, topic: &str, timeout: Duration) -> Result<Option<Vec<i32>>, rdkafka::error::KafkaError> {
    let md = probe.fetch_metadata(Some(topic), timeout)?;
    Ok(md.topics().iter().find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()).map(|t| t.partitions().iter().map(|p| p.id()).collect()))
}

/// `base` for a metadata probe that never creates what it asks about.
pub fn probe_config(base: &rdkafka::ClientConfig) -> rdkafka::ClientConfig {
    let mut c = base.clone();
    c.set("allow.auto.create.topics", "false");
    c
}

/// A topic to create: its name, partitions (-1: the broker's default) and configs.
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub configs: Vec<(&'static str, String)>,
}

/// Creates `specs` (each one that exists already is fine: another instance
/// may create it at the same moment). Logs each creation.
pub async fn create(admin: &AdminClient<DefaultClientContext>, specs: &[TopicSpec], replication_factor: i32, timeout: Duration) -> anyhow::Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let topics: Vec<NewTopic> = specs
        .iter()
        .map(|s| {
            let mut t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication_factor));
            for (k, v) in &s.configs {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    for result in admin.create_topics(&topics, &AdminOptions::new().operation_timeout(Some(timeout))).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => tracing::info!(topic = %name, "topic created meanwhile by another instance"),
            Err((name, code)) => anyhow::bail!("cannot create topic {name:?}: {code}"),
        }
    }
    Ok(())
}
