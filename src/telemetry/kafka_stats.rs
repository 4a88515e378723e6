//! librdkafka's statistics and client events as metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

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

/// Brokers UP in the last statistics of the consumer and of the producer; -1 before any.
static BROKERS_UP: [AtomicI64; 2] = [AtomicI64::new(-1), AtomicI64::new(-1)];

/// Whether the input reader can reach a broker, as far as its last statistics say (true before
/// the first statistics: nothing says otherwise yet). The reader's, because it fetches from the
/// partition leaders all the time; an idle producer connects to the brokers only when it has
/// something to send, so its count says nothing then (a producer that cannot deliver shows as
/// outbox backlog).
pub fn brokers_reachable() -> bool {
    BROKERS_UP[0].load(Ordering::Relaxed) != 0
}

/// `topic/partition` of the partitions without a leader in the last statistics of the consumer
/// and of the producer, sorted.
static LEADERLESS: [Mutex<Vec<String>>; 2] = [Mutex::new(Vec::new()), Mutex::new(Vec::new())];

/// The input partitions this instance reads that have no leader now, as far as the input
/// reader's last statistics say (`topic/partition`, sorted): the brokers are up but the cluster
/// has no replica to serve them (all of their replicas are down). librdkafka keeps asking for
/// their leader with backoff and resumes them when one is elected; the rest go on meanwhile.
pub fn leaderless_inputs() -> Vec<String> {
    LEADERLESS[0].lock().unwrap().clone()
}

/// The partitions the producer writes (outputs, DLQ, changelog) that have no leader now, as far
/// as its last statistics say. Records for them wait in librdkafka's queue (it retries without
/// a time limit, `message.timeout.ms = 0`) and in the outbox until a leader is elected.
pub fn leaderless_outputs() -> Vec<String> {
    LEADERLESS[1].lock().unwrap().clone()
}

/// Partitions of the client's topics without a leader (-1): for the consumer the ones it was
/// assigned (desired), for the producer every partition of the topics it writes. The
/// per-topic pseudo-partition -1 (librdkafka's unassigned queue) is not a partition.
fn leaderless(s: &Statistics, client: &'static str) -> Vec<String> {
    let mut v: Vec<String> = s
        .topics
        .values()
        .flat_map(|t| {
            t.partitions
                .values()
                .filter(|p| p.partition >= 0 && p.leader < 0 && (client != "consumer" || p.desired))
                .map(|p| format!("{}/{}", t.topic, p.partition))
        })
        .collect();
    v.sort();
    v
}

fn record_brokers(s: &Statistics, client: &'static str) {
    let up = s
        .brokers
        .values()
        .filter(|b| b.nodeid >= 0 && b.state == "UP")
        .count();
    gauge!(KAFKA_BROKERS_UP, "client" => client).set(up as f64);
    let slot = if client == "consumer" { 0 } else { 1 };
    BROKERS_UP[slot].store(up as i64, Ordering::Relaxed);
    let without = leaderless(s, client);
    gauge!(KAFKA_PARTITIONS_LEADERLESS, "client" => client).set(without.len() as f64);
    if without.len() != LEADERLESS[slot].lock().unwrap().len() {
        if without.is_empty() {
            tracing::info!(client, "Every partition has a leader again.");
        } else {
            warn!(client, partitions = %without.join(","), "Partitions without a leader: their replicas are all down; librdkafka asks for a leader with backoff, the other partitions go on.");
        }
    }
    *LEADERLESS[slot].lock().unwrap() = without;
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

/// How often one kind of client error (stage and code) is logged at most; every one is counted.
/// While the brokers are down, a poll loop hears the same error every few milliseconds.
const CLIENT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// When one kind of client error was last logged, and how many came since without a line.
type Logged = Option<(Instant, u64)>;

/// Per stage and code, what [`Logged`] says.
static CLIENT_ERRORS_LOGGED: Mutex<[[Logged; ERROR_CODES.len()]; ERROR_STAGES.len()]> =
    Mutex::new([[None; ERROR_CODES.len()]; ERROR_STAGES.len()]);

/// A client-level error (broker down, authentication failed, ...). librdkafka retries by itself.
/// Each is counted in `rapport_errors_total`; the log gets one line per stage and code every
/// [`CLIENT_ERROR_LOG_EVERY`] at most, saying how many it left out.
pub fn client_error(stage: &'static str, e: &KafkaError, reason: &str) {
    let code = match e.rdkafka_error_code() {
        Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) => "brokers_down",
        Some(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure) => "transport",
        Some(rdkafka::types::RDKafkaErrorCode::Authentication) => "authentication",
        _ => "kafka",
    };
    counter!(ERRORS, "stage" => stage, "error_code" => code).increment(1);
    if let Some(repeats) = log_now(stage, code, Instant::now()) {
        warn!(stage, code, error = %e, reason, repeats, "Kafka client error; librdkafka retries with backoff.");
    }
}

/// Whether this error of `stage` and `code` is to be logged at `now`; if so, how many of the
/// same were left out since the last line.
fn log_now(stage: &str, code: &str, now: Instant) -> Option<u64> {
    let s = ERROR_STAGES.iter().position(|x| *x == stage).unwrap_or(0);
    let c = ERROR_CODES.iter().position(|x| *x == code).unwrap_or(ERROR_CODES.len() - 1);
    let mut logged = CLIENT_ERRORS_LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    match &mut logged[s][c] {
        Some((at, skipped)) if now.duration_since(*at) < CLIENT_ERROR_LOG_EVERY => {
            *skipped += 1;
            None
        }
        slot => {
            let repeats = slot.map_or(0, |(_, skipped)| skipped);
            *slot = Some((now, 0));
            Some(repeats)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_client_error_is_logged_once_per_interval_with_the_count_left_out() {
        // A stage and code no other unit test reports.
        let (stage, code) = ("restore", "authentication");
        let t0 = Instant::now();
        assert_eq!(log_now(stage, code, t0), Some(0), "the first is logged");
        for ms in [5, 10, 4_000, 9_999] {
            assert_eq!(log_now(stage, code, t0 + Duration::from_millis(ms)), None, "at +{ms} ms");
        }
        // Another kind is logged on its own schedule.
        assert_eq!(log_now("restore", "transport", t0 + Duration::from_millis(20)), Some(0));
        assert_eq!(log_now(stage, code, t0 + CLIENT_ERROR_LOG_EVERY), Some(4), "four were left out");
        assert_eq!(log_now(stage, code, t0 + CLIENT_ERROR_LOG_EVERY + Duration::from_millis(1)), None);
        assert_eq!(log_now(stage, code, t0 + 3 * CLIENT_ERROR_LOG_EVERY), Some(1));
    }
}
