//! librdkafka's statistics and client events as metrics.

use metrics::{counter, gauge};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use tracing::warn;

use super::names::*;

/// Consumer lag per topic partition and broker round-trip times.
pub fn record_consumer(s: &Statistics) {
    for (topic, t) in &s.topics {
        for (p, part) in &t.partitions {
            if *p < 0 || part.consumer_lag < 0 {
                continue;
            }
            gauge!(KAFKA_CONSUMER_LAG, "topic" => topic.clone(), "partition" => p.to_string())
                .set(part.consumer_lag as f64);
        }
    }
    record_brokers(s, "consumer");
}

pub fn record_producer(s: &Statistics) {
    record_brokers(s, "producer");
}

fn record_brokers(s: &Statistics, client: &'static str) {
    for (name, b) in &s.brokers {
        if b.nodeid < 0 {
            continue;
        }
        if let Some(rtt) = &b.rtt {
            gauge!(KAFKA_BROKER_RTT_SECONDS, "client" => client, "broker" => name.clone())
                .set(rtt.avg as f64 / 1e6);
        }
    }
}

/// A client-level error (broker down, authentication failed, ...). librdkafka retries by itself.
pub fn client_error(stage: &'static str, e: &KafkaError, reason: &str) {
    let code = match e.rdkafka_error_code() {
        Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) => "brokers_down",
        Some(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure) => "transport",
        Some(rdkafka::types::RDKafkaErrorCode::Authentication) => "authentication",
        _ => "kafka",
    };
    counter!(ERRORS, "stage" => stage, "error_code" => code).increment(1);
    warn!(stage, code, error = %e, reason, "Kafka client error; librdkafka retries with backoff.");
}

pub fn rebalanced() {
    counter!(KAFKA_REBALANCES).increment(1);
}

pub fn paused_partitions(n: usize) {
    gauge!(KAFKA_PAUSED_PARTITIONS).set(n as f64);
}

pub fn produce_failures(n: u64) {
    counter!(KAFKA_PRODUCE_ERRORS).increment(n);
}
