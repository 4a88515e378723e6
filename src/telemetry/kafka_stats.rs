//! librdkafka's statistics and client events as metrics.

use metrics::{counter, gauge};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use tracing::warn;

use super::names::*;

/// Broker round-trip times of a consumer. (Consumer lag is [`record_lag`]'s: librdkafka's own
/// is measured from offsets committed to the group, which rapport's reader never commits.)
pub fn record_consumer(s: &Statistics) {
    record_brokers(s, "consumer");
}

/// Consumer lag per input topic partition: its end offset minus the next offset to process.
pub fn record_lag(inputs: &[crate::source::kafka::InputLag]) {
    for i in inputs {
        if let Some(lag) = i.lag() {
            gauge!(KAFKA_CONSUMER_LAG, "topic" => i.topic.clone(), "partition" => i.partition.to_string())
                .set(lag as f64);
        }
    }
}

/// A partition that is no longer read here lags nothing here.
pub fn clear_lag(topics: &[String], partition: u16) {
    for t in topics {
        gauge!(KAFKA_CONSUMER_LAG, "topic" => t.clone(), "partition" => partition.to_string())
            .set(0.0);
    }
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

/// The stages and codes of `rapport_errors_total`: a small fixed set, so that every series can
/// exist (at zero) from the start.
pub const ERROR_STAGES: [&str; 3] = ["consume", "produce", "restore"];
pub const ERROR_CODES: [&str; 4] = ["brokers_down", "transport", "authentication", "kafka"];

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
