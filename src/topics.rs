//! Kafka topics: the start-up check that the input topics exist and are co-partitioned, and
//! `rapport topics create`.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;
use crate::source::kafka::client_config;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(
        "cannot reach Kafka at {brokers}: {reason}. Start a broker (deploy/local/kafka.sh start) or fix kafka.brokers (and kafka.client for TLS/SASL)."
    )]
    Unreachable { brokers: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// Partition counts of the given topics (None when a topic does not exist).
pub fn partition_counts(cfg: &Config, topics: &[&str]) -> Result<Vec<Option<usize>>, TopicError> {
    let consumer: BaseConsumer =
        client_config(cfg)
            .create()
            .map_err(|e| TopicError::Unreachable {
                brokers: cfg.kafka.brokers.clone(),
                reason: e.to_string(),
            })?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| TopicError::Unreachable {
            brokers: cfg.kafka.brokers.clone(),
            reason: e.to_string(),
        })?;
    Ok(topics
        .iter()
        .map(|t| {
            md.topics()
                .iter()
                .find(|m| m.name() == *t && m.error().is_none())
                .map(|m| m.partitions().len())
        })
        .collect())
}

/// The topics rapport reads and writes, with the partition count each should have.
pub fn wanted(cfg: &Config) -> Vec<(String, i32)> {
    let k = &cfg.kafka;
    let mut v: Vec<(String, i32)> = k
        .input_topics
        .all()
        .iter()
        .map(|t| (t.to_string(), cfg.engine.partitions as i32))
        .collect();
    let o = &k.output_topics;
    for t in [&o.health_scores, &o.churn_alerts, &o.dlq] {
        v.push((t.clone(), k.output_partitions as i32));
    }
    // Co-partitioned with the inputs: changelog partition p holds account partition p's state.
    v.push((k.changelog_topic.clone(), cfg.engine.partitions as i32));
    v
}

/// Creates the missing topics. Returns (topic, partitions, "created" | "exists" | error).
pub fn create(cfg: &Config) -> Result<Vec<(String, i32, String)>, TopicError> {
    create_named(cfg, &wanted(cfg), &[])
}

/// Creates the missing topics of `wanted` (name, partitions) on the configured broker; the
/// configured changelog topic, if among them, is compacted; the others get `configs`.
pub fn create_named(
    cfg: &Config,
    wanted: &[(String, i32)],
    configs: &[(&str, &str)],
) -> Result<Vec<(String, i32, String)>, TopicError> {
    let names: Vec<&str> = wanted.iter().map(|(t, _)| t.as_str()).collect();
    let existing = partition_counts(cfg, &names)?;
    let admin: AdminClient<DefaultClientContext> =
        client_config(cfg)
            .create()
            .map_err(|e| TopicError::Unreachable {
                brokers: cfg.kafka.brokers.clone(),
                reason: e.to_string(),
            })?;
    let to_create: Vec<NewTopic> = wanted
        .iter()
        .zip(&existing)
        .filter(|(_, e)| e.is_none())
        .map(|((t, p), _)| {
            let topic = NewTopic::new(
                t,
                *p,
                TopicReplication::Fixed(cfg.kafka.replication_factor as i32),
            );
            if *t == cfg.kafka.changelog_topic {
                // Only the latest record of each key is needed to restore; dedup chunks that
                // expire are deleted with tombstones, kept a day for restores in progress.
                topic
                    .set("cleanup.policy", "compact")
                    .set("delete.retention.ms", "86400000")
                    .set("min.compaction.lag.ms", "0")
            } else {
                configs.iter().fold(topic, |t, (k, v)| t.set(k, v))
            }
        })
        .collect();
    let mut results: Vec<(String, i32, String)> = wanted
        .iter()
        .zip(&existing)
        .filter_map(|((t, _), e)| e.map(|n| (t.clone(), n as i32, "exists".to_owned())))
        .collect();
    if !to_create.is_empty() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TopicError::Invalid(e.to_string()))?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let out = rt
            .block_on(admin.create_topics(&to_create, &opts))
            .map_err(|e| TopicError::Unreachable {
                brokers: cfg.kafka.brokers.clone(),
                reason: e.to_string(),
            })?;
        for r in out {
            match r {
                Ok(t) => {
                    let p = wanted.iter().find(|(w, _)| *w == t).map_or(0, |(_, p)| *p);
                    results.push((t, p, "created".to_owned()));
                }
                // Another instance created it at the same moment: it exists, which is all
                // we wanted (its partition count is checked like any other's).
                Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let p = wanted.iter().find(|(w, _)| *w == t).map_or(0, |(_, p)| *p);
                    results.push((t, p, "exists".to_owned()));
                }
                Err((t, e)) => results.push((t, 0, format!("failed: {e}"))),
            }
        }
        wait_visible(cfg, &results)?;
    }
    results.sort();
    Ok(results)
}

/// Deletes topics (those that do not exist are ignored): benchmark clean-up.
pub fn delete(cfg: &Config, names: &[String]) -> Result<(), TopicError> {
    let unreachable = |e: rdkafka::error::KafkaError| TopicError::Unreachable {
        brokers: cfg.kafka.brokers.clone(),
        reason: e.to_string(),
    };
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create().map_err(unreachable)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TopicError::Invalid(e.to_string()))?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    rt.block_on(admin.delete_topics(&names, &opts)).map_err(unreachable)?;
    Ok(())
}

/// Waits until the broker's metadata shows every topic just created with all its partitions:
/// the create call returns before metadata catches up, and whatever runs next (a check, an
/// instance starting) would otherwise find a topic "missing".
fn wait_visible(cfg: &Config, results: &[(String, i32, String)]) -> Result<(), TopicError> {
    let created: Vec<(&str, usize)> = results
        .iter()
        .filter(|r| r.2 == "created")
        .map(|r| (r.0.as_str(), r.1 as usize))
        .collect();
    let names: Vec<&str> = created.iter().map(|c| c.0).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = partition_counts(cfg, &names)?;
        if counts.iter().zip(&created).all(|(n, c)| *n == Some(c.1)) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(TopicError::Invalid(format!(
                "the broker created {} but its metadata still does not show all their partitions after 30 s; check the broker's log, then run `rapport topics check`.",
                names.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks that the input topics exist and share one partition count equal to
/// `engine.partitions`; creates missing topics first when `kafka.create_topics` is set.
pub fn check(cfg: &Config) -> Result<(), TopicError> {
    if cfg.kafka.create_topics {
        for (t, _, status) in create(cfg)? {
            if status.starts_with("failed") {
                return Err(TopicError::Invalid(format!(
                    "could not create topic {t}: {status}"
                )));
            }
        }
    }
    let inputs = cfg.kafka.input_topics.all();
    let counts = partition_counts(cfg, &inputs)?;
    for (t, c) in inputs.iter().zip(&counts) {
        if c.is_none() {
            return Err(TopicError::Invalid(format!(
                "input topic {t} does not exist; create the topics with `rapport topics create --config FILE`, or set kafka.create_topics = true."
            )));
        }
    }
    let first = counts[0].unwrap_or(0);
    if counts.iter().any(|c| *c != Some(first)) {
        let list: Vec<String> = inputs
            .iter()
            .zip(&counts)
            .map(|(t, c)| format!("{t}: {}", c.unwrap_or(0)))
            .collect();
        return Err(TopicError::Invalid(format!(
            "the input topics are not co-partitioned ({}); all four must have the same partition count so that an account's events meet on one instance. Repartition them to one count.",
            list.join(", ")
        )));
    }
    if first != cfg.engine.partitions as usize {
        return Err(TopicError::Invalid(format!(
            "the input topics have {first} partitions but engine.partitions is {}; set engine.partitions = {first}.",
            cfg.engine.partitions
        )));
    }
    let changelog = cfg.kafka.changelog_topic.as_str();
    match partition_counts(cfg, &[changelog])?[0] {
        None => {
            return Err(TopicError::Invalid(format!(
                "the changelog topic {changelog} does not exist; create the topics with `rapport topics create --config FILE`, or set kafka.create_topics = true."
            )));
        }
        Some(n) if n != first => {
            return Err(TopicError::Invalid(format!(
                "the changelog topic {changelog} has {n} partitions but the input topics have {first}; it must be co-partitioned with them. Create it anew with {first} partitions (cleanup.policy=compact)."
            )));
        }
        Some(_) => {}
    }
    Ok(())
}
