//! Every metric name, in one place. The README's metric table is checked against [`ALL`].

/// (name, type, labels, meaning)
pub type MetricDoc = (&'static str, &'static str, &'static str, &'static str);

pub const EVENTS_IN: &str = "rapport_events_in_total";
pub const RECORDS_IN: &str = "rapport_records_in_total";
pub const RECORDS_REJECTED: &str = "rapport_records_rejected_total";
pub const EVENTS_DUPLICATE: &str = "rapport_events_duplicate_total";
pub const EVENTS_LATE: &str = "rapport_events_late_total";
pub const BATCH_COMMIT_SECONDS: &str = "rapport_batch_commit_seconds";
pub const BATCH_RECORDS: &str = "rapport_batch_records";
pub const BATCH_WRITE_BYTES: &str = "rapport_batch_write_bytes";
pub const EVENT_TIME_LAG_SECONDS: &str = "rapport_event_time_lag_seconds";
pub const ACCOUNTS_TRACKED: &str = "rapport_accounts_tracked";
pub const ACCOUNTS_BY_BAND: &str = "rapport_accounts_by_band";
pub const SCORE_CHANGES: &str = "rapport_score_changes_total";
pub const ALERTS: &str = "rapport_alerts_total";
pub const TIMERS_FIRED: &str = "rapport_timers_fired_total";
pub const TIMERS_SCHEDULED: &str = "rapport_timers_scheduled";
pub const OUTBOX_DEPTH: &str = "rapport_outbox_depth";
pub const ERRORS: &str = "rapport_errors_total";
pub const ROCKSDB_MEMORY_BYTES: &str = "rapport_rocksdb_memory_bytes";
pub const ROCKSDB_WRITE_STOPPED: &str = "rapport_rocksdb_write_stopped";
pub const ROCKSDB_DELAYED_WRITE_RATE: &str = "rapport_rocksdb_delayed_write_rate_bytes";
pub const ROCKSDB_PENDING_COMPACTION: &str = "rapport_rocksdb_pending_compaction_bytes";
pub const STORE_DISK_LOW: &str = "rapport_store_disk_low";
pub const STORE_FREE_BYTES: &str = "rapport_store_free_bytes";

pub const KAFKA_CONSUMER_LAG: &str = "rapport_kafka_consumer_lag";
pub const KAFKA_BROKER_RTT_SECONDS: &str = "rapport_kafka_broker_rtt_seconds";
pub const KAFKA_BROKERS_UP: &str = "rapport_kafka_brokers_up";
pub const KAFKA_PARTITIONS_LEADERLESS: &str = "rapport_kafka_partitions_leaderless";
pub const KAFKA_REBALANCES: &str = "rapport_kafka_rebalances_total";
pub const KAFKA_PAUSED_PARTITIONS: &str = "rapport_kafka_paused_partitions";
pub const KAFKA_MERGE_WAITS_EXPIRED: &str = "rapport_kafka_merge_waits_expired_total";
pub const KAFKA_PRODUCE_ERRORS: &str = "rapport_kafka_produce_errors_total";
pub const KAFKA_OWNED_PARTITIONS: &str = "rapport_kafka_owned_partitions";
pub const RESTORE_RECORDS: &str = "rapport_restore_records_total";
pub const RESTORE_ACCOUNTS: &str = "rapport_restore_accounts_total";
pub const RESTORE_SECONDS: &str = "rapport_restore_seconds";
pub const RESTORING_PARTITIONS: &str = "rapport_restoring_partitions";
pub const RESTORE_REMAINING_RECORDS: &str = "rapport_restore_remaining_records";
pub const CHANGELOG_PENDING: &str = "rapport_changelog_pending_records";

pub const ALL: &[MetricDoc] = &[
    (
        EVENTS_IN,
        "counter",
        "type",
        "Events folded into state, by event type.",
    ),
    (
        RECORDS_IN,
        "counter",
        "",
        "Input records read (folded + duplicates + dead-lettered).",
    ),
    (
        RECORDS_REJECTED,
        "counter",
        "reason",
        "Records sent to the dead-letter output, by reason code.",
    ),
    (
        EVENTS_DUPLICATE,
        "counter",
        "",
        "Events ignored because their event_id was already folded.",
    ),
    (
        EVENTS_LATE,
        "counter",
        "",
        "Events behind their partition's watermark (folded, no alerts about the past).",
    ),
    (
        BATCH_COMMIT_SECONDS,
        "histogram",
        "",
        "Time to commit one batch to RocksDB.",
    ),
    (BATCH_RECORDS, "histogram", "", "Records per batch."),
    (
        BATCH_WRITE_BYTES,
        "histogram",
        "",
        "Bytes written to RocksDB per batch.",
    ),
    (
        EVENT_TIME_LAG_SECONDS,
        "gauge",
        "",
        "Wall clock minus the newest event time processed.",
    ),
    (ACCOUNTS_TRACKED, "gauge", "", "Accounts with state."),
    (
        ACCOUNTS_BY_BAND,
        "gauge",
        "band",
        "Accounts by the band of their latest score (green, yellow, red).",
    ),
    (
        SCORE_CHANGES,
        "counter",
        "",
        "Health-score changes emitted.",
    ),
    (
        ALERTS,
        "counter",
        "rule,status",
        "Churn alert transitions, by rule and status (open, resolved).",
    ),
    (
        TIMERS_FIRED,
        "counter",
        "",
        "Account timers fired (inactivity checks).",
    ),
    (
        TIMERS_SCHEDULED,
        "gauge",
        "",
        "Account timers waiting to fire.",
    ),
    (
        OUTBOX_DEPTH,
        "gauge",
        "",
        "Outputs committed but not yet confirmed by the sink.",
    ),
    (
        ERRORS,
        "counter",
        "stage,error_code",
        "Errors, by stage and a small fixed set of codes.",
    ),
    (
        KAFKA_CONSUMER_LAG,
        "gauge",
        "topic,partition",
        "Records behind the end of each input partition read here (end offset minus next to process).",
    ),
    (
        KAFKA_BROKER_RTT_SECONDS,
        "gauge",
        "client,broker",
        "Average broker round-trip time.",
    ),
    (
        KAFKA_BROKERS_UP,
        "gauge",
        "client",
        "Brokers the client has a working connection to (librdkafka's state UP), from its last statistics (every 5 s); 0 while the brokers are down, paused or unreachable (the input reader's 0 makes the instance not ready).",
    ),
    (
        KAFKA_PARTITIONS_LEADERLESS,
        "gauge",
        "client",
        "Partitions without a leader (every replica down) among those the input reader is assigned or the producer writes, from the client's last statistics (every 5 s); either above 0 makes the instance not ready; those partitions wait (input unread, outputs in the outbox) while the others go on.",
    ),
    (
        KAFKA_REBALANCES,
        "counter",
        "",
        "Consumer group rebalances (assignments and revocations).",
    ),
    (
        KAFKA_PAUSED_PARTITIONS,
        "gauge",
        "",
        "Input partitions paused for backpressure.",
    ),
    (
        KAFKA_MERGE_WAITS_EXPIRED,
        "counter",
        "",
        "Times the time-ordered merge of a partition's input topics stopped waiting for an empty one and went on without it (its events may then arrive behind the others').",
    ),
    (
        KAFKA_PRODUCE_ERRORS,
        "counter",
        "",
        "Records Kafka refused for good; rapport stops at the first (they stay in the outbox for the next start).",
    ),
    (
        KAFKA_OWNED_PARTITIONS,
        "gauge",
        "",
        "Account partitions being read by this instance (given by the group and ready).",
    ),
    (
        RESTORE_RECORDS,
        "counter",
        "",
        "Changelog records read back into the store by restores.",
    ),
    (
        RESTORE_ACCOUNTS,
        "counter",
        "",
        "Account states restored from the changelog.",
    ),
    (
        RESTORE_SECONDS,
        "histogram",
        "",
        "Time to restore one partition from the changelog.",
    ),
    (
        RESTORING_PARTITIONS,
        "gauge",
        "",
        "Partitions being restored from the changelog now (their timers and alerts wait).",
    ),
    (
        RESTORE_REMAINING_RECORDS,
        "gauge",
        "",
        "Changelog records still to read by the restores in progress.",
    ),
    (
        CHANGELOG_PENDING,
        "gauge",
        "",
        "Changelog records committed and waiting to be published (behind their outputs).",
    ),
    (
        ROCKSDB_MEMORY_BYTES,
        "gauge",
        "kind",
        "RocksDB memory: block_cache, memtables, table_readers.",
    ),
    (
        STORE_DISK_LOW,
        "gauge",
        "",
        "1 while input is paused because the store's filesystem has less than store.min_free_mb free.",
    ),
    (
        STORE_FREE_BYTES,
        "gauge",
        "",
        "Free bytes on the store's filesystem (checked at most every 100 ms while input is read).",
    ),
    (
        ROCKSDB_WRITE_STOPPED,
        "gauge",
        "",
        "1 while RocksDB stops writes (memtables or level-0 files waiting for flush or compaction).",
    ),
    (
        ROCKSDB_DELAYED_WRITE_RATE,
        "gauge",
        "",
        "The rate RocksDB throttles writes to, bytes/s; 0 when it does not.",
    ),
    (
        ROCKSDB_PENDING_COMPACTION,
        "gauge",
        "",
        "Bytes RocksDB estimates compaction has to rewrite.",
    ),
];

/// The metric reference as a Markdown table (README.md holds a copy; a test keeps them equal).
pub fn markdown_table() -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for (name, kind, labels, help) in ALL {
        let labels = if labels.is_empty() { "—".to_owned() } else { format!("`{}`", labels.replace(',', "`, `")) };
        out.push_str(&format!("| `{name}` | {kind} | {labels} | {help} |\n"));
    }
    out
}
