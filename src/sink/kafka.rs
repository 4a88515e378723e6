//! Kafka as a sink: an idempotent producer (acks=all), keyed by account id with librdkafka's
//! `murmur2_random` partitioner — the Java client's default, so keys land where a Java producer
//! would put them.
//!
//! Each record carries its outbox sequence number as the delivery opaque. The delivery callback
//! marks it done; [`Sink::confirmed`] reports the lowest sequence still outstanding, and the
//! pipeline deletes the outbox only below it. A record whose delivery failed (after librdkafka's
//! own retries, `message.timeout.ms`) is sent again with the same payload: outputs are
//! at-least-once and keep their ids.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{info, warn};

use super::{OutputKind, Sink, SinkError};
use crate::config::Config;
use crate::pb::OutboxRecord;
use crate::source::kafka::{client_config, redacted};
use crate::telemetry::kafka_stats;

#[derive(Default)]
struct Deliveries {
    done: BTreeSet<u64>,
    /// Records whose delivery failed, copied from the delivery report to be sent again.
    failed: Vec<(u64, Failed)>,
    last_error: Option<String>,
}

/// A record to send again, as the delivery report returned it (the rare path: the common one keeps
/// no copy of what it sent).
pub struct Failed {
    topic: String,
    key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    /// The partition it went to (changelog records name theirs), or -1.
    partition: i32,
}

pub struct DeliveryContext {
    deliveries: Arc<Mutex<Deliveries>>,
}

impl ClientContext for DeliveryContext {
    fn stats(&self, stats: Statistics) {
        kafka_stats::record_producer(&stats);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        kafka_stats::client_error("produce", &error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        let mut d = self.deliveries.lock().unwrap();
        match result {
            Ok(_) => {
                d.done.insert(*seq);
            }
            Err((e, m)) => {
                use rdkafka::message::{Headers, Message};
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_owned(), x.value.unwrap_or(&[]).to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                d.failed.push((
                    *seq,
                    Failed {
                        topic: m.topic().to_owned(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers,
                        partition: m.partition(),
                    },
                ));
                d.last_error = Some(e.to_string());
            }
        }
    }
}

pub struct KafkaSink {
    producer: BaseProducer<DeliveryContext>,
    deliveries: Arc<Mutex<Deliveries>>,
    /// Health scores, churn alerts, dead letters, changelog: by `OutputKind`.
    topics: [String; 4],
    /// Sent and not yet delivered, by sequence number (kept to resend on failure).
    in_flight: BTreeSet<u64>,
    /// The subset of `in_flight` that is not changelog records.
    outputs_in_flight: BTreeSet<u64>,
    next_seq: u64,
    /// One past the highest output (not changelog) sequence sent.
    next_output_seq: u64,
}

impl KafkaSink {
    pub fn new(cfg: &Config) -> Result<KafkaSink, SinkError> {
        let deliveries = Arc::new(Mutex::new(Deliveries::default()));
        let mut c = client_config(cfg);
        c.set("enable.idempotence", "true")
            .set("statistics.interval.ms", "5000")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "60000");
        info!(settings = ?redacted(&c), "Starting the Kafka producer.");
        let producer = c
            .create_with_context(DeliveryContext {
                deliveries: Arc::clone(&deliveries),
            })
            .map_err(|e| {
                SinkError::Other(format!(
                    "cannot create the Kafka producer: {e}. Check the kafka section of the config."
                ))
            })?;
        let t = &cfg.kafka.output_topics;
        Ok(KafkaSink {
            producer,
            deliveries,
            topics: [
                t.health_scores.clone(),
                t.churn_alerts.clone(),
                t.dlq.clone(),
                cfg.kafka.changelog_topic.clone(),
            ],
            in_flight: BTreeSet::new(),
            outputs_in_flight: BTreeSet::new(),
            next_seq: 0,
            next_output_seq: 0,
        })
    }

    fn produce(&mut self, seq: u64, rec: &OutboxRecord) -> Result<(), SinkError> {
        let kind = OutputKind::from_u32(rec.kind).ok_or_else(|| {
            SinkError::Other(format!("outbox record {seq} has unknown kind {}", rec.kind))
        })?;
        let topic = &self.topics[kind as usize];
        if kind == OutputKind::Changelog {
            return self.produce_changelog(seq, rec);
        }
        // Dead letters carry why and where from: reason, detail, source_topic,
        // source_partition, source_offset (and original_length when truncated).
        let mut headers = OwnedHeaders::new();
        let mut names: Vec<&String> = rec.headers.keys().collect();
        names.sort();
        for k in names {
            let v = &rec.headers[k];
            let (key, value): (&str, Vec<u8>) = match k.as_str() {
                "source" => {
                    let s = String::from_utf8_lossy(v);
                    let topic = s
                        .strip_prefix("kafka:")
                        .and_then(|r| r.rsplit_once(':').map(|(t, _)| t.to_owned()))
                        .unwrap_or_else(|| s.into_owned());
                    ("source_topic", topic.into_bytes())
                }
                "partition" => ("source_partition", v.clone()),
                "offset" => ("source_offset", v.clone()),
                other => (other, v.clone()),
            };
            headers = headers.insert(Header {
                key,
                value: Some(&value),
            });
        }
        let mut r = BaseRecord::with_opaque_to(topic, Box::new(seq)).payload(&rec.payload);
        if !rec.headers.is_empty() {
            r = r.headers(headers);
        }
        // Dead letters keep their source partition as the key's partition when known.
        if !rec.key.is_empty() {
            r = r.key(&rec.key);
        }
        send_waiting(&self.producer, r)
    }

    /// A changelog record goes to the account partition's own changelog partition, keyed by its
    /// changelog key, with its writer header; a tombstone has no value.
    fn produce_changelog(&mut self, seq: u64, rec: &OutboxRecord) -> Result<(), SinkError> {
        let topic = &self.topics[OutputKind::Changelog as usize];
        let tombstone = rec
            .headers
            .contains_key(crate::changelog::TOMBSTONE_HEADER);
        let mut headers = OwnedHeaders::new();
        if let Some(w) = rec.headers.get(crate::changelog::WRITER_HEADER) {
            headers = headers.insert(Header {
                key: crate::changelog::WRITER_HEADER,
                value: Some(w),
            });
        }
        let mut r = BaseRecord::with_opaque_to(topic, Box::new(seq))
            .key(&rec.key)
            .partition(rec.partition)
            .headers(headers);
        if !tombstone {
            r = r.payload(&rec.payload);
        }
        send_waiting(&self.producer, r)
    }

    /// Serves delivery reports; resends failures. Returns the lowest undelivered sequence.
    fn settle(&mut self) -> Result<u64, SinkError> {
        self.producer.poll(Duration::ZERO);
        let (done, failed, err) = {
            let mut d = self.deliveries.lock().unwrap();
            (
                std::mem::take(&mut d.done),
                std::mem::take(&mut d.failed),
                d.last_error.take(),
            )
        };
        for seq in done {
            self.in_flight.remove(&seq);
            self.outputs_in_flight.remove(&seq);
        }
        if !failed.is_empty() {
            kafka_stats::produce_failures(failed.len() as u64);
            warn!(
                records = failed.len(),
                error = err.as_deref().unwrap_or(""),
                "Delivery to Kafka failed; sending again."
            );
            for (seq, f) in failed {
                self.resend(seq, &f)?;
            }
        }
        Ok(self.in_flight.first().copied().unwrap_or(self.next_seq))
    }

    fn resend(&mut self, seq: u64, f: &Failed) -> Result<(), SinkError> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &f.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut r = BaseRecord::with_opaque_to(&f.topic, Box::new(seq)).headers(headers);
        if let Some(v) = &f.payload {
            r = r.payload(v);
        }
        if let Some(k) = &f.key {
            r = r.key(k);
        }
        if f.partition >= 0 {
            r = r.partition(f.partition);
        }
        send_waiting(&self.producer, r)
    }

    /// Records handed to the producer and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// Hands a record to librdkafka; while its queue is full, serves delivery reports until there is
/// room.
fn send_waiting<K, P>(
    producer: &BaseProducer<DeliveryContext>,
    mut r: BaseRecord<'_, K, P, Box<u64>>,
) -> Result<(), SinkError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(r) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                r = back;
                producer.poll(Duration::from_millis(50));
            }
            Err((e, back)) => {
                return Err(SinkError::Other(format!("cannot produce to {}: {e}", back.topic)));
            }
        }
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, seq: u64, rec: &OutboxRecord) -> Result<(), SinkError> {
        self.produce(seq, rec)?;
        self.in_flight.insert(seq);
        self.next_seq = self.next_seq.max(seq + 1);
        if rec.kind != OutputKind::Changelog as u32 {
            self.outputs_in_flight.insert(seq);
            self.next_output_seq = self.next_output_seq.max(seq + 1);
        }
        Ok(())
    }

    fn outputs_confirmed(&mut self) -> Result<u64, SinkError> {
        self.settle()?;
        Ok(self
            .outputs_in_flight
            .first()
            .copied()
            .unwrap_or(self.next_output_seq))
    }

    fn confirmed(&mut self, wait: bool) -> Result<u64, SinkError> {
        if !wait {
            return self.settle();
        }
        // Waits until everything is acknowledged; a broker that stays away keeps us here,
        // which is what a graceful shutdown must do to lose nothing (the outbox keeps the rest
        // for the next start if the process is killed meanwhile).
        let start = Instant::now();
        let mut warned = false;
        loop {
            let c = self.settle()?;
            if self.in_flight.is_empty() {
                return Ok(c);
            }
            let _ = self.producer.flush(Duration::from_millis(500));
            if !warned && start.elapsed() > Duration::from_secs(10) {
                warn!(
                    pending = self.in_flight.len(),
                    "Waiting for Kafka to acknowledge outputs before stopping."
                );
                warned = true;
            }
        }
    }
}
