//! Kafka as a sink: an idempotent producer (acks=all), keyed by account id with librdkafka's
//! `murmur2_random` partitioner — the Java client's default, so keys land where a Java producer
//! would put them.
//!
//! Each record carries its outbox sequence number as the delivery opaque. The delivery callback
//! marks it done; [`Sink::confirmed`] reports the lowest sequence still outstanding, and the
//! pipeline deletes the outbox only below it. librdkafka retries without a time limit
//! (`message.timeout.ms = 0`), in order — so a broker that is away only delays delivery, and a
//! partition's records never arrive out of order (the changelog depends on it). A record the
//! broker refuses for good (topic gone, not authorized, too large) stops the instance with that
//! reason; it stays in the outbox for the next start.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{info, warn};

use super::seqs::SeqSet;
use super::{OutputKind, Sink, SinkError};
use crate::config::Config;
use crate::pb::OutboxRecord;
use crate::source::kafka::{client_config, redacted};
use crate::telemetry::kafka_stats;

#[derive(Default)]
struct Deliveries {
    /// Delivery reports served so far (acknowledged or failed).
    served: u64,
    /// Acknowledged since the last `settle`, in the order their reports came.
    done: Vec<u64>,
    /// Records the broker refused for good: (sequence, topic, error).
    failed: Vec<(u64, String, String)>,
}

// Sequence numbers travel as the delivery opaque, a `usize`: they must fit it whole.
const _: () = assert!(usize::BITS >= u64::BITS, "rapport's Kafka sink needs a 64-bit target");

/// The longest one `settle` serves delivery reports.
const MAX_SETTLE: Duration = Duration::from_millis(20);

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
    /// The record's outbox sequence number, carried as the opaque itself: no allocation per
    /// record.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let mut d = self.deliveries.lock().unwrap();
        d.served += 1;
        match result {
            Ok(_) => {
                d.done.push(seq as u64);
            }
            Err((e, m)) => {
                use rdkafka::message::Message;
                d.failed.push((seq as u64, m.topic().to_owned(), e.to_string()));
            }
        }
    }
}

pub struct KafkaSink {
    producer: BaseProducer<DeliveryContext>,
    deliveries: Arc<Mutex<Deliveries>>,
    /// Health scores, churn alerts, dead letters, changelog: by `OutputKind`.
    topics: [String; 4],
    /// Sent and not yet delivered, by sequence number.
    in_flight: SeqSet,
    /// The subset of `in_flight` that is not changelog records.
    outputs_in_flight: SeqSet,
    next_seq: u64,
    /// One past the highest output (not changelog) sequence sent.
    next_output_seq: u64,
    /// Set once the broker refused a record for good: every later call fails with it.
    refused: Option<String>,
    /// When a delivery report was last served, or a record sent with nothing in flight.
    last_progress: Instant,
}

/// The producer's librdkafka settings: the shared client ones, rapport's own, then the user's
/// `kafka.producer` tuning (validation refuses the settings the guarantees rest on).
pub fn producer_config(cfg: &Config) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("enable.idempotence", "true")
        .set("statistics.interval.ms", "5000")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // Retry for as long as it takes, in order (idempotence keeps the order).
        .set("message.timeout.ms", "0");
    for (key, v) in &cfg.kafka.producer {
        c.set(key, v);
    }
    c
}

impl KafkaSink {
    pub fn new(cfg: &Config) -> Result<KafkaSink, SinkError> {
        let deliveries = Arc::new(Mutex::new(Deliveries::default()));
        let c = producer_config(cfg);
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
            in_flight: SeqSet::default(),
            outputs_in_flight: SeqSet::default(),
            next_seq: 0,
            next_output_seq: 0,
            refused: None,
            last_progress: Instant::now(),
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
        let mut r = BaseRecord::with_opaque_to(topic, seq as usize).payload(&rec.payload);
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
        for key in [crate::changelog::WRITER_HEADER, crate::changelog::BATCH_HEADER] {
            if let Some(v) = rec.headers.get(key) {
                headers = headers.insert(Header {
                    key,
                    value: Some(v),
                });
            }
        }
        let mut r = BaseRecord::with_opaque_to(topic, seq as usize)
            .key(&rec.key)
            .partition(rec.partition)
            .headers(headers);
        if !tombstone {
            r = r.payload(&rec.payload);
        }
        send_waiting(&self.producer, r)
    }

    /// Serves delivery reports. Returns the lowest undelivered sequence.
    fn settle(&mut self) -> Result<u64, SinkError> {
        if let Some(why) = &self.refused {
            return Err(SinkError::Other(why.clone()));
        }
        // One poll serves one event: the delivery reports of one produce response for one
        // partition. Polled once per turn of the loop, reports came in faster than they were
        // served whenever the loop idled (100 ms per turn): at 50,000 events/s the producer
        // held 54,000 acknowledged records whose reports waited, the outbox stayed over its
        // high-water mark and input stayed paused. Serve them until none is left (bounded, so
        // that a steady stream of reports cannot hold the loop).
        let start = Instant::now();
        loop {
            let before = self.deliveries.lock().unwrap().served;
            self.producer.poll(Duration::ZERO);
            if self.deliveries.lock().unwrap().served == before {
                break;
            }
            self.last_progress = Instant::now();
            if start.elapsed() >= MAX_SETTLE {
                break;
            }
        }
        let (done, failed) = {
            let mut d = self.deliveries.lock().unwrap();
            (std::mem::take(&mut d.done), std::mem::take(&mut d.failed))
        };
        for seq in done {
            self.in_flight.remove(seq);
            self.outputs_in_flight.remove(seq);
        }
        if let Some((_, topic, err)) = failed.first() {
            kafka_stats::produce_failures(failed.len() as u64);
            let why = format!(
                "Kafka refused {} record(s) for good (topic {topic}: {err}). Nothing is lost: they stay in the outbox and are sent again at the next start. Fix the cause (the topic exists, rapport may write to it, records fit the broker's message.max.bytes) and restart.",
                failed.len()
            );
            self.refused = Some(why.clone());
            return Err(SinkError::Other(why));
        }
        Ok(self.in_flight.first().unwrap_or(self.next_seq))
    }

    /// Replaces the producer with a new one made from `cfg`, and returns the sequence numbers
    /// the old one had not had acknowledged, in order: they are to be sent again (the outbox
    /// still holds them). The old producer is dropped with its queue; its reports go nowhere.
    ///
    /// For a producer that librdkafka leaves stuck: after a broker is fenced and comes back, a
    /// leader of -1 learned from a produce response can leave a partition with no leader
    /// however often the metadata is refreshed (librdkafka 2.12, upstream issue 5430), and its
    /// records wait for good. A new client asks for the metadata afresh.
    pub fn restart_producer(&mut self, cfg: &Config) -> Result<Vec<u64>, SinkError> {
        let fresh = KafkaSink::new(cfg)?;
        let mut old = std::mem::take(&mut self.in_flight);
        self.outputs_in_flight = SeqSet::default();
        let mut resend = Vec::with_capacity(old.len());
        while let Some(seq) = old.first() {
            old.remove(seq);
            resend.push(seq);
        }
        // The old producer and its reports go; the sequence bookkeeping stays.
        drop(std::mem::replace(&mut self.producer, fresh.producer));
        self.deliveries = fresh.deliveries;
        self.last_progress = Instant::now();
        Ok(resend)
    }

    /// How long records have been in flight with no delivery report served: zero when none is
    /// in flight.
    pub fn stalled_for(&self) -> Duration {
        if self.in_flight.is_empty() {
            Duration::ZERO
        } else {
            self.last_progress.elapsed()
        }
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
    mut r: BaseRecord<'_, K, P, usize>,
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
                let bytes = back.payload.map_or(0, |p| p.to_bytes().len());
                return Err(SinkError::Other(format!(
                    "cannot produce a {bytes}-byte record to {}: {e}",
                    back.topic
                )));
            }
        }
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, seq: u64, rec: &OutboxRecord) -> Result<(), SinkError> {
        self.produce(seq, rec)?;
        if self.in_flight.is_empty() {
            self.last_progress = Instant::now();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;

    /// Records the (mock) broker holds in `topic`'s partitions `0..n`.
    fn stored(c: &BaseConsumer, topic: &str, n: i32) -> i64 {
        (0..n)
            .map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).map_or(0, |(_, h)| h))
            .sum()
    }

    fn score(seq: u64) -> OutboxRecord {
        OutboxRecord {
            kind: OutputKind::HealthScore as u32,
            key: format!("acct-{seq}"),
            payload: b"{}".to_vec(),
            headers: Default::default(),
            partition: 0,
        }
    }

    /// Calls `confirmed(false)` until nothing is in flight.
    fn settle_all(sink: &mut KafkaSink) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.in_flight() > 0 {
            assert!(Instant::now() < deadline, "{} records never confirmed", sink.in_flight());
            sink.confirmed(false).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_replaced_producer_hands_back_what_it_had_in_flight_and_the_new_one_delivers_it() {
        let mock = MockCluster::new(1).unwrap();
        let mut cfg = Config::defaults();
        cfg.kafka.brokers = mock.bootstrap_servers();
        let topic = cfg.kafka.output_topics.health_scores.clone();
        mock.create_topic(&topic, 2, 1).unwrap();
        let mut sink = KafkaSink::new(&cfg).unwrap();
        for seq in 0..10 {
            sink.send(seq, &score(seq)).unwrap();
        }
        settle_all(&mut sink);
        assert_eq!(sink.stalled_for(), Duration::ZERO, "nothing in flight is no stall");

        // The broker stops answering: what is sent now stays in flight, and the stall shows.
        mock.broker_down(1).unwrap();
        for seq in 10..30 {
            sink.send(seq, &score(seq)).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.stalled_for() < Duration::from_millis(300) {
            assert!(Instant::now() < deadline, "the stall never showed");
            assert_eq!(sink.confirmed(false).unwrap(), 10, "records confirmed by a broker that is down");
            std::thread::sleep(Duration::from_millis(5));
        }

        let again = sink.restart_producer(&cfg).unwrap();
        assert_eq!(again, (10..30).collect::<Vec<u64>>(), "what the old producer had in flight");
        assert_eq!(sink.in_flight(), 0);
        mock.broker_up(1).unwrap();
        for &seq in &again {
            sink.send(seq, &score(seq)).unwrap();
        }
        settle_all(&mut sink);
        assert_eq!(sink.confirmed(false).unwrap(), 30, "every record confirmed by the new producer");
        let watcher: BaseConsumer = client_config(&cfg).create().unwrap();
        let held = stored(&watcher, &topic, 2);
        assert!(held >= 30, "the broker holds {held} of the 30 records");
    }

    #[test]
    fn producer_tuning_goes_over_the_defaults() {
        let mut cfg = Config::defaults();
        assert_eq!(producer_config(&cfg).get("linger.ms"), Some("5"));
        cfg.kafka.producer.insert("linger.ms".into(), "50".into());
        cfg.kafka.producer.insert("batch.num.messages".into(), "100000".into());
        let c = producer_config(&cfg);
        assert_eq!(c.get("linger.ms"), Some("50"));
        assert_eq!(c.get("batch.num.messages"), Some("100000"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn one_settle_serves_every_delivery_report_that_is_ready() {
        const PARTITIONS: i32 = 6;
        const WAVES: u64 = 20;
        const PER_WAVE: u64 = 60;
        let mock = MockCluster::new(1).unwrap();
        let mut cfg = Config::defaults();
        cfg.kafka.brokers = mock.bootstrap_servers();
        let topic = cfg.kafka.output_topics.health_scores.clone();
        mock.create_topic(&topic, PARTITIONS, 1).unwrap();
        let mut sink = KafkaSink::new(&cfg).unwrap();
        let watcher: BaseConsumer = client_config(&cfg).create().unwrap();
        // Waves of records, each acknowledged before the next is sent, and no report served in
        // between: at least one delivery-report event per wave and partition waits in the queue.
        let mut seq = 0u64;
        for _ in 0..WAVES {
            for _ in 0..PER_WAVE {
                let rec = OutboxRecord {
                    kind: OutputKind::HealthScore as u32,
                    key: format!("acct-{seq}"),
                    payload: b"{}".to_vec(),
                    headers: Default::default(),
                    partition: (seq % PARTITIONS as u64) as i32,
                };
                sink.send(seq, &rec).unwrap();
                seq += 1;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while stored(&watcher, &topic, PARTITIONS) < seq as i64 {
                assert!(Instant::now() < deadline, "the mock broker did not take wave ending at {seq}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Every record is on the broker; its last reports may still be on their way. Settling
        // until nothing is in flight takes a turn or a few that serve reports, not one turn per
        // report event (at least WAVES × PARTITIONS of them). Turns that find nothing to serve
        // are not counted: how many pass before the last reports arrive depends on how busy
        // the machine is, not on the sink.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut turns = 0;
        while sink.in_flight() > 0 {
            assert!(Instant::now() < deadline, "{} records never confirmed", sink.in_flight());
            let before = sink.in_flight();
            sink.confirmed(false).unwrap();
            if sink.in_flight() < before {
                turns += 1;
            }
            if sink.in_flight() > 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert!(
            turns <= 10,
            "{turns} turns of the loop served reports of {seq} acknowledged records"
        );
        assert_eq!(sink.confirmed(false).unwrap(), seq);
    }
}
