//! Telemetry: metric names, one event struct per thing that happens (its `emit` writes the log
//! line and bumps the metrics together, once per batch), tracing setup, and the HTTP endpoint.

pub mod http;
pub mod kafka_stats;
pub mod names;

use metrics::{counter, gauge, histogram};
use tracing::{debug, warn};

use crate::pb::Counters;
use crate::pipeline::BatchReport;
use names::*;

/// Sets up `tracing`: human-readable by default, JSON on request; `RUST_LOG` filters.
pub fn init_logs(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only on a terminal: log files and collectors get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        b.json().try_init()
    } else {
        b.compact().try_init()
    };
}

const TYPES: [&str; 4] = ["product_usage", "email", "call", "deal"];

/// A batch was committed.
pub struct BatchCommitted<'a> {
    pub report: &'a BatchReport,
    pub counters: &'a Counters,
    pub outbox_depth: u64,
    pub timers_scheduled: usize,
    /// Newest event time processed, ms (0 if none).
    pub stream_time_ms: i64,
    pub wall_now_ms: i64,
}

impl BatchCommitted<'_> {
    pub fn emit(&self) {
        let r = self.report;
        counter!(RECORDS_IN).increment(r.records);
        for (i, t) in TYPES.iter().enumerate() {
            if r.by_type[i] > 0 {
                counter!(EVENTS_IN, "type" => *t).increment(r.by_type[i]);
            }
        }
        for (reason, n) in &r.rejected_by_reason {
            counter!(RECORDS_REJECTED, "reason" => reason.code()).increment(*n);
        }
        if r.rejected_by_reason.values().sum::<u64>() > 0 {
            warn!(
                records = r.dead_lettered,
                "Records sent to the dead-letter output."
            );
        }
        counter!(EVENTS_DUPLICATE).increment(r.duplicates);
        counter!(EVENTS_LATE).increment(r.late);
        counter!(SCORE_CHANGES).increment(r.scores);
        counter!(TIMERS_FIRED).increment(r.timers_fired);
        for ((rule, status), n) in &r.alerts {
            counter!(ALERTS, "rule" => *rule, "status" => *status).increment(*n);
        }
        histogram!(BATCH_COMMIT_SECONDS).record(r.commit_seconds);
        histogram!(BATCH_RECORDS).record(r.records as f64);
        histogram!(BATCH_WRITE_BYTES).record(r.write_bytes as f64);
        gauge!(OUTBOX_DEPTH).set(self.outbox_depth as f64);
        gauge!(TIMERS_SCHEDULED).set(self.timers_scheduled as f64);
        gauge!(ACCOUNTS_TRACKED).set(self.counters.accounts as f64);
        gauge!(ACCOUNTS_BY_BAND, "band" => "green").set(self.counters.band_green as f64);
        gauge!(ACCOUNTS_BY_BAND, "band" => "yellow").set(self.counters.band_yellow as f64);
        gauge!(ACCOUNTS_BY_BAND, "band" => "red").set(self.counters.band_red as f64);
        if self.stream_time_ms > 0 {
            gauge!(EVENT_TIME_LAG_SECONDS)
                .set((self.wall_now_ms - self.stream_time_ms) as f64 / 1000.0);
        }
        debug!(
            records = r.records,
            folded = r.folded,
            duplicates = r.duplicates,
            dead_lettered = r.dead_lettered,
            scores = r.scores,
            write_bytes = r.write_bytes,
            commit_ms = r.commit_seconds * 1000.0,
            "Batch committed."
        );
    }
}

/// Something failed; `code` is one of a small fixed set.
pub struct ErrorOccurred<'a> {
    pub stage: &'static str,
    pub code: &'static str,
    pub message: &'a str,
}

impl ErrorOccurred<'_> {
    pub fn emit(&self) {
        counter!(ERRORS, "stage" => self.stage, "error_code" => self.code).increment(1);
        tracing::error!(stage = self.stage, code = self.code, "{}", self.message);
    }
}

/// RocksDB's memory, sampled now and then.
pub fn record_store_memory(parts: &[(&'static str, u64)]) {
    for (kind, bytes) in parts {
        gauge!(ROCKSDB_MEMORY_BYTES, "kind" => *kind).set(*bytes as f64);
    }
}

/// RocksDB's write stalls (sampled with the memory).
pub fn record_write_pressure(w: &crate::store::WritePressure) {
    gauge!(ROCKSDB_WRITE_STOPPED).set(if w.stopped { 1.0 } else { 0.0 });
    gauge!(ROCKSDB_DELAYED_WRITE_RATE).set(w.delayed_write_rate as f64);
    gauge!(ROCKSDB_PENDING_COMPACTION).set(w.pending_compaction_bytes as f64);
}

/// Creates every series whose labels are known in advance at zero, so that dashboards and
/// alert rules see a 0 (and `rate()` works) before the first event of a kind ever happens.
pub fn init_series() {
    for (name, kind, labels, _) in ALL {
        if labels.is_empty() {
            match *kind {
                "counter" => counter!(*name).absolute(0),
                "gauge" => gauge!(*name).set(0.0),
                _ => {}
            }
        }
    }
    for t in TYPES {
        counter!(EVENTS_IN, "type" => t).absolute(0);
    }
    for r in crate::codec::Reason::ALL {
        counter!(RECORDS_REJECTED, "reason" => r.code()).absolute(0);
    }
    for rule in crate::domain::alert::RULES {
        for status in ["open", "resolved"] {
            counter!(ALERTS, "rule" => rule.name(), "status" => status).absolute(0);
        }
    }
    for band in ["green", "yellow", "red"] {
        gauge!(ACCOUNTS_BY_BAND, "band" => band).set(0.0);
    }
    for stage in kafka_stats::ERROR_STAGES {
        for code in kafka_stats::ERROR_CODES {
            counter!(ERRORS, "stage" => stage, "error_code" => code).absolute(0);
        }
    }
}

/// Registers each metric's description with the recorder.
pub fn describe() {
    for (name, kind, _, help) in ALL {
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            "gauge" => metrics::describe_gauge!(*name, *help),
            _ => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// A partition's restore from the changelog began.
pub struct RestoreStarted {
    pub partition: u16,
    pub records: u64,
}

impl RestoreStarted {
    pub fn emit(&self) {
        tracing::info!(partition = self.partition, records = self.records, "Restore started.");
    }
}

/// Records read back from the changelog were written to the store.
pub struct RestoreApplied {
    pub records: u64,
    pub states: u64,
}

impl RestoreApplied {
    pub fn emit(&self) {
        counter!(RESTORE_RECORDS).increment(self.records);
        counter!(RESTORE_ACCOUNTS).increment(self.states);
    }
}

/// A partition's restore finished.
pub struct RestoreFinished {
    pub partition: u16,
    pub accounts: u64,
    pub stats: crate::source::changelog::RestoreStats,
}

impl RestoreFinished {
    pub fn emit(&self) {
        let s = &self.stats;
        histogram!(RESTORE_SECONDS).record(s.seconds);
        let per_s = |n: u64| if s.seconds > 0.0 { n as f64 / s.seconds } else { 0.0 };
        tracing::info!(
            partition = self.partition,
            accounts = self.accounts,
            records = s.records,
            megabytes = format!("{:.1}", s.bytes as f64 / 1e6),
            seconds = format!("{:.2}", s.seconds),
            records_per_second = per_s(s.records) as u64,
            megabytes_per_second = format!("{:.1}", per_s(s.bytes) / 1e6),
            left_out_incomplete = s.incomplete,
            "Partition restored from the changelog; reading its inputs from the restored positions."
        );
    }
}

/// Restores in progress: (partition, read, total), set about once per loop.
pub fn restore_progress(restoring: &[(u16, u64, u64)]) {
    gauge!(RESTORING_PARTITIONS).set(restoring.len() as f64);
    let left: u64 = restoring.iter().map(|(_, r, t)| t.saturating_sub(*r)).sum();
    gauge!(RESTORE_REMAINING_RECORDS).set(left as f64);
}
