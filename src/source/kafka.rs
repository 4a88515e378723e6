//! Kafka as a source: the consumer group decides which account partitions are ours; a second,
//! groupless consumer reads the four co-partitioned input topics of those partitions.
//!
//! **Membership.** The group's consumer subscribes to the changelog topic alone (it has one
//! partition per account partition): being given changelog partition `p` means owning account
//! partition `p`, with all four input topics' partition `p`. That keeps every account's events
//! on one instance whatever the assignor, so the cooperative (incremental) protocol and static
//! membership (`group.instance.id`) can be used: a rebalance stops only the partitions that
//! move, and a restarted instance gets its own back. The group's consumer never reads: its
//! partitions are paused as soon as they are assigned.
//!
//! **Reading.** A partition the group gives us is not read until the run loop *activates* it —
//! at once if our local state is up to date with its changelog, after a restore otherwise
//! ([`crate::changelog`]). Activation assigns its four topic partitions to the reading consumer
//! at the positions stored with the state. Positions live in RocksDB with the state (column
//! family `offsets`); they are committed to the group too, asynchronously, only so that
//! standard lag tooling sees progress: a failed commit there is a warning.
//!
//! **Revocation** runs inside the group consumer's poll, on the pipeline's thread, between
//! batches: the revoke hook publishes what the partition's committed batches still owe the
//! changelog, the partition stops counting as ours at once, and its records still waiting in
//! the batch being filled are dropped (the new owner reads them from the changelog's
//! checkpoint). Its local state stays here: it may come back.

use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tracing::{info, warn};

use super::{InputBatch, Poll, RecordMeta, Source, SourceError};
use crate::config::Config;
use crate::telemetry::kafka_stats;

/// The position key of a topic partition.
pub fn position_key(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}:{partition}")
}

/// Where reading one active input topic partition stands.
#[derive(Debug, Clone)]
pub struct InputLag {
    pub topic: String,
    pub partition: i32,
    /// The next offset to process.
    pub next: Option<i64>,
    /// The end of the partition (high watermark).
    pub high: Option<i64>,
}

impl InputLag {
    /// Records between the next to process and the end, when both are known.
    pub fn lag(&self) -> Option<i64> {
        Some((self.high? - self.next?).max(0))
    }
}

/// Called inside a revocation, before the partitions stop being ours; the flag says the
/// assignment was *lost* (our session expired: another instance may own them already).
pub type RevokeHook = Box<dyn FnMut(&[u16], bool) + Send>;

/// What rebalances did, shared between the consumer's callbacks and the source.
#[derive(Default)]
pub struct Ownership {
    /// Partitions the group has given us (read or not yet).
    pub group: BTreeSet<u16>,
    /// Partitions being read: activated after their state was found up to date or restored.
    pub owned: BTreeSet<u16>,
    /// Partitions the group gave us since the run loop last looked, in order.
    pub assigned: Vec<u16>,
    /// Partitions the group took away since the run loop last looked.
    pub revoked: Vec<u16>,
    /// (topic, partition) that reached the end of the log since activation.
    pub at_end: HashSet<(String, i32)>,
    /// Where each active (topic, partition) started: the stored position, or None (earliest).
    pub start: HashMap<(String, i32), Option<i64>>,
    /// Set when a revocation happened during the current poll.
    pub revoked_since_poll: bool,
    pub rebalances: u64,
    /// Set once the group has assigned us partitions (a non-empty assignment) for the first time.
    pub joined: bool,
}

pub struct MemberContext {
    pub ownership: Arc<Mutex<Ownership>>,
    on_revoke: Mutex<Option<RevokeHook>>,
}

/// The reading consumer's context: statistics and errors only.
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn stats(&self, stats: Statistics) {
        kafka_stats::record_consumer(&stats);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::telemetry::kafka_stats::client_error("consume", &error, reason);
    }
}

impl ConsumerContext for ReaderContext {}

impl ClientContext for MemberContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::telemetry::kafka_stats::client_error("consume", &error, reason);
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> BTreeSet<u16> {
    tpl.elements().iter().map(|e| e.partition() as u16).collect()
}

impl ConsumerContext for MemberContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    warn!(error = %e, "Taking the group's assignment failed.");
                }
                // This consumer only holds membership; nothing is read through it.
                let _ = consumer.pause(tpl);
                let parts = partitions_of(tpl);
                let mut own = self.ownership.lock().unwrap();
                own.rebalances += 1;
                // The cooperative protocol's first round may give nothing yet: only a real
                // assignment tells which partitions are not ours.
                own.joined |= !parts.is_empty();
                for p in &parts {
                    if own.group.insert(*p) {
                        own.assigned.push(*p);
                    }
                }
                drop(own);
                info!(partitions = ?parts, cooperative, "Partitions assigned by the group.");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts: Vec<u16> = partitions_of(tpl).into_iter().collect();
                let lost = consumer.assignment_lost();
                // Publish what the partitions still owe their changelog while they are ours.
                if let Some(hook) = self.on_revoke.lock().unwrap().as_mut() {
                    hook(&parts, lost);
                }
                let mut own = self.ownership.lock().unwrap();
                own.rebalances += 1;
                own.revoked_since_poll = true;
                for p in &parts {
                    own.group.remove(p);
                    own.owned.remove(p);
                    own.assigned.retain(|a| a != p);
                    own.revoked.push(*p);
                }
                own.at_end.retain(|(_, p)| !parts.contains(&(*p as u16)));
                drop(own);
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    warn!(error = %e, "Giving partitions back to the group failed.");
                }
                if lost {
                    warn!(partitions = ?parts, "Partitions lost (the group stopped hearing from us); their unpublished changelog is dropped and they are restored if they come back.");
                } else {
                    info!(partitions = ?parts, "Partitions revoked; their committed state stays here.");
                }
            }
            _ => {
                warn!(error = ?err, "Rebalance error.");
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                let mut own = self.ownership.lock().unwrap();
                let all: Vec<u16> = own.group.iter().copied().collect();
                own.group.clear();
                own.owned.clear();
                own.assigned.clear();
                own.revoked.extend(all);
                own.revoked_since_poll = true;
            }
        }
        crate::telemetry::kafka_stats::rebalanced();
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Only lag dashboards read the group's offsets; ours are in RocksDB.
            warn!(error = %e, "Committing offsets to the consumer group failed (positions are safe in the store).");
        }
    }
}

/// librdkafka settings shared by consumer and producer, from the config.
pub fn client_config(cfg: &Config) -> ClientConfig {
    let k = &cfg.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    c.set("client.id", &k.client_id);
    c.set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS);
    c.set("metadata.recovery.rebootstrap.trigger.ms", REBOOTSTRAP_AFTER_MS);
    for (key, v) in &k.client {
        c.set(key, v);
    }
    c
}

/// How often every client refreshes the cluster's metadata (librdkafka's default: 5 minutes).
/// A broker that has just restarted can answer a metadata request before it has loaded its
/// partitions ("unknown partition"); librdkafka then leaves those partitions unserved until
/// the next periodic refresh. A broker outage test once stalled for its whole 90 s that way
/// right after the broker came back. `kafka.client` may still set it.
pub const METADATA_REFRESH_MS: &str = "10000";

/// How long a client goes without a usable metadata answer before it starts again from
/// `kafka.brokers` (librdkafka's default: 5 minutes). A broker thawed after a freeze, or just
/// restarted, is fenced by its controller until it registers again, and a metadata answer it
/// gives meanwhile lists no broker at all; librdkafka 2.12 then forgets every broker it knew,
/// and with none left it neither finds the group coordinator nor refreshes a partition leader
/// until it bootstraps again. Our frozen-broker test sat "not ready" for its whole 150 s that
/// way, the group consumer repeating "no broker available for coordinator query". With this,
/// such a client is back within seconds; while every broker is really down it reconnects to
/// the same addresses, which costs one connection attempt per interval. `kafka.client` may
/// still set it.
pub const REBOOTSTRAP_AFTER_MS: &str = "10000";

/// Whether a librdkafka setting holds a secret (its value is never logged).
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas",
        "ssl.key",
        "token",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// The settings as they may be logged: secret values replaced.
pub fn redacted(c: &ClientConfig) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = c
        .config_map()
        .iter()
        .map(|(k, val)| {
            (
                k.to_string(),
                if is_secret(k) {
                    "********".to_owned()
                } else {
                    val.to_string()
                },
            )
        })
        .collect();
    v.sort();
    v
}

pub struct KafkaSource {
    /// The group member (subscribed to the changelog topic; reads nothing).
    member: BaseConsumer<MemberContext>,
    /// Reads the input topic partitions of the active account partitions (manual assignment).
    consumer: BaseConsumer<ReaderContext>,
    keys: Vec<String>,
    index: HashMap<(String, i32), u32>,
    topics: Vec<String>,
    changelog_topic: String,
    ownership: Arc<Mutex<Ownership>>,
    /// Partitions paused for backpressure.
    paused: bool,
    last_group_commit: Instant,
    /// Latest position handed out per key index, for the group commit.
    handed: FxHashMap<u32, i64>,
    /// Next offset to fetch per key index (what is buffered counts as fetched).
    fetched: FxHashMap<u32, i64>,
    /// Fetched records not yet handed out, per key index.
    pending: Vec<std::collections::VecDeque<Pending>>,
    buffered: usize,
    /// Each partition's merge waiting for an empty topic: since when, and whether the wait has
    /// expired (counted once per wait).
    blocked_since: HashMap<u16, Blocked>,
    /// When the last poll returned: the time between polls (processing) does not count as
    /// waiting for a topic (its records may be queued in librdkafka all along).
    last_poll_end: Option<Instant>,
    /// Topic partitions (key index) whose fetching is paused because their buffer is full: the
    /// fetcher then brings what the merge waits for instead of more of what it has plenty of
    /// (Kafka Streams' buffered.records.per.partition).
    full: BTreeSet<u32>,
    /// The last poll handed out nothing though records were buffered: every partition's merge
    /// waits for a topic. The next poll then waits for records instead of returning at once.
    starved: bool,
    merge_wait: Duration,
    /// End offsets read from the broker when a partition was activated, per key index:
    /// librdkafka's cached watermarks may still be the ones from an earlier time the partition
    /// was ours, far behind, and would make it look read to its end (merging and wall-clock
    /// timers would then run ahead of data not fetched yet).
    known_high: FxHashMap<u32, i64>,
    /// Topic partitions (key index) activated and not yet heard from: no record fetched since.
    /// While the broker holds records of one of them, the merge waits for it up to
    /// `FIRST_FETCH_WAIT` rather than `merge_wait`: a partition's four topics start fetching
    /// together, and on a loaded machine a first fetch can take longer than the merge's wait
    /// (the other topics' later events would then run ahead of it, and their timers with them).
    first_fetch: FxHashSet<u32>,
    /// Topic partitions (key index) whose fetching (re)started without a record from them since:
    /// activated, or resumed after their buffer was full while the other topics went on
    /// fetching; with when. Until the fetcher has been to the broker for one of them,
    /// librdkafka's cached watermarks are the ones from before: an empty queue then looks read
    /// to its end while the broker may hold records produced since, and the merge would hand
    /// out the other topics' later records ahead of them (their event-time timers with them: a
    /// "gone dark" alert for an account whose usage has not been fetched yet). Such a topic
    /// holds the merge back for `unheard_grace`; still unheard then, its end offset is asked of
    /// the broker (`verify_ends`). (A backpressure pause stops every topic's fetching at once,
    /// so their watermarks stay as old as each other's.)
    unheard: FxHashMap<u32, Instant>,
    /// How long an empty, unheard topic partition holds its partition's merge back: long
    /// enough for a fetch round trip, within `merge_wait`.
    unheard_grace: Duration,
    /// When an expired merge wait was last logged (at most one warning per 10 s).
    last_expiry_warning: Option<Instant>,
    /// Account partitions per input topic (key index = topic index × this + partition).
    partitions: u32,
}

/// How long librdkafka waits before fetching a partition again once its local queue is over
/// `queued.min.messages` (its default, 1000 ms, counts the one consumer queue that every
/// partition is forwarded to: while a batch is processed the queue fills, and every partition
/// then stops being fetched for a second, which left rapport waiting for its input most of the
/// time while catching up).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The input reader's librdkafka settings where `kafka.client` does not set them (and
/// `kafka.consumer` may still change them).
/// - `fetch.queue.backoff.ms`: see [`FETCH_QUEUE_BACKOFF_MS`].
/// - `fetch.min.bytes` / `fetch.wait.max.ms`: live, the broker answers a fetch when it holds
///   100 kB for it or 5 ms have passed, instead of at every record (librdkafka's 1 byte). At
///   30,000 events/s that took rapport's CPU from 9.1-9.4 to 7.5-7.9 s and the broker's from
///   11.6 to 8.8-9.3 s over the same 15 s, for 0-5 ms more at the median; catching up, every
///   fetch is full anyway. Idle, a fetch comes back every 5 ms instead of every 500 ms.
const READER_DEFAULTS: &[(&str, &str)] = &[
    ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
    ("fetch.min.bytes", "100000"),
    ("fetch.wait.max.ms", "5"),
];

/// The merge's longest wait (in poll) for a topic partition's first records after activation,
/// while the broker holds some.
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(10);

/// How long a topic partition whose fetching just (re)started waits for the fetcher's word
/// while its queue is empty and its cached watermarks say it has nothing more, before the broker
/// is asked for its end offset instead: two of the reader's fetch waits (the fetch in flight,
/// then the one that includes it) and 100 ms for the round trips, but never more than
/// `kafka.merge_wait_ms`.
fn unheard_grace(cfg: &Config) -> Duration {
    let fetch_wait_ms: u64 = reader_config(cfg)
        .get("fetch.wait.max.ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    Duration::from_millis(2 * fetch_wait_ms + 100).min(Duration::from_millis(cfg.kafka.merge_wait_ms))
}

/// A poll lingers for more records while the broker holds at least `max` / this many records
/// not fetched yet.
const LINGER_BEHIND_DIVISOR: i64 = 4;

/// The input reader's settings: the shared client ones, rapport's own, [`READER_DEFAULTS`] where
/// `kafka.client` does not set them, then the user's `kafka.consumer` tuning.
pub fn reader_config(cfg: &Config) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("group.id", format!("{}-reader", cfg.kafka.group_id))
        .set("statistics.interval.ms", "5000")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (key, v) in READER_DEFAULTS {
        if !cfg.kafka.client.contains_key(*key) {
            c.set(*key, *v);
        }
    }
    for (key, v) in &cfg.kafka.consumer {
        c.set(key, v);
    }
    c
}

/// The group consumer's settings: membership (static when `group_instance_id` is set), the
/// rebalance protocol, and no reading.
pub fn member_config(cfg: &Config) -> ClientConfig {
    let k = &cfg.kafka;
    let mut c = client_config(cfg);
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set(
            "partition.assignment.strategy",
            if k.assignment == "cooperative" {
                "cooperative-sticky"
            } else {
                "range"
            },
        )
        // It never reads; keep what it might prefetch before its pause tiny.
        .set("queued.max.messages.kbytes", "64")
        .set("max.partition.fetch.bytes", "65536");
    if !k.group_instance_id.is_empty() {
        c.set("group.instance.id", &k.group_instance_id);
    }
    c
}

impl KafkaSource {
    pub fn new(cfg: &Config) -> Result<KafkaSource, SourceError> {
        let ownership = Arc::new(Mutex::new(Ownership::default()));
        let m = member_config(cfg);
        info!(settings = ?redacted(&m), "Joining the consumer group.");
        let member: BaseConsumer<MemberContext> = m
            .create_with_context(MemberContext {
                ownership: Arc::clone(&ownership),
                on_revoke: Mutex::new(None),
            })
            .map_err(|e| {
                SourceError::Config(format!(
                    "cannot create the Kafka consumer: {e}. Check the kafka section of the config."
                ))
            })?;
        let consumer: BaseConsumer<ReaderContext> =
            reader_config(cfg).create_with_context(ReaderContext).map_err(|e| {
                SourceError::Config(format!(
                    "cannot create the Kafka consumer: {e}. Check the kafka section of the config."
                ))
            })?;
        let topics: Vec<String> = cfg
            .kafka
            .input_topics
            .all()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut keys = Vec::new();
        let mut index = HashMap::new();
        for t in &topics {
            for p in 0..cfg.engine.partitions as i32 {
                index.insert((t.clone(), p), keys.len() as u32);
                keys.push(position_key(t, p));
            }
        }
        let n_keys = keys.len();
        Ok(KafkaSource {
            member,
            consumer,
            keys,
            index,
            topics,
            changelog_topic: cfg.kafka.changelog_topic.clone(),
            ownership,
            paused: false,
            last_group_commit: Instant::now(),
            handed: FxHashMap::default(),
            fetched: FxHashMap::default(),
            pending: (0..n_keys)
                .map(|_| std::collections::VecDeque::new())
                .collect(),
            buffered: 0,
            blocked_since: HashMap::new(),
            last_poll_end: None,
            starved: false,
            full: BTreeSet::new(),
            merge_wait: Duration::from_millis(cfg.kafka.merge_wait_ms),
            known_high: FxHashMap::default(),
            first_fetch: FxHashSet::default(),
            unheard: FxHashMap::default(),
            unheard_grace: unheard_grace(cfg),
            last_expiry_warning: None,
            partitions: cfg.engine.partitions as u32,
        })
    }

    pub fn ownership(&self) -> Arc<Mutex<Ownership>> {
        Arc::clone(&self.ownership)
    }

    /// Sets what runs inside a revocation, before the partitions stop being ours.
    pub fn set_revoke_hook(&self, hook: RevokeHook) {
        *self.member.context().on_revoke.lock().unwrap() = Some(hook);
    }

    /// The position keys of account partition `p`'s input topic partitions.
    pub fn keys_of(&self, p: u16) -> Vec<String> {
        self.topics.iter().map(|t| position_key(t, p as i32)).collect()
    }

    /// The broker's end offsets of these partitions' input topics, by key index, in one
    /// request (a watermark query per topic partition took about 250 ms each, so activating
    /// six partitions of four topics took six seconds). Missing: the broker did not answer;
    /// librdkafka's cached watermarks are relied on then.
    pub fn end_offsets(&self, partitions: &[u16]) -> FxHashMap<u32, i64> {
        let idxs: Vec<u32> = partitions
            .iter()
            .flat_map(|&p| self.topics.iter().filter_map(move |t| self.index_of(t, p as i32)))
            .collect();
        self.end_offsets_of(&idxs)
    }

    /// The broker's end offsets of these topic partitions (by key index), in one request.
    fn end_offsets_of(&self, idxs: &[u32]) -> FxHashMap<u32, i64> {
        let mut tpl = TopicPartitionList::new();
        for &idx in idxs {
            let (t, p) = split_key(&self.keys[idx as usize]);
            let _ = tpl.add_partition_offset(t, p, Offset::End);
        }
        let mut ends = FxHashMap::default();
        if tpl.count() == 0 {
            return ends;
        }
        match self.consumer.offsets_for_times(tpl, Duration::from_secs(5)) {
            Ok(got) => {
                for e in got.elements() {
                    match (e.error(), e.offset(), self.index_of(e.topic(), e.partition())) {
                        (Ok(()), Offset::Offset(high), Some(idx)) => {
                            ends.insert(idx, high);
                        }
                        (Err(err), _, _) => {
                            warn!(topic = e.topic(), partition = e.partition(), error = %err, "Cannot read the end offset of an input partition; relying on librdkafka's.");
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "Cannot read the end offsets of input partitions; relying on librdkafka's.");
            }
        }
        ends
    }

    /// Starts reading partition `p` from `positions` (position key → next offset; a missing
    /// key starts at the earliest offset).
    ///
    /// The reading consumer's assignment only ever changes incrementally, one partition's four
    /// topic partitions at a time: replacing the whole assignment stops and restarts every
    /// partition, and librdkafka 2.12 can abort when stops overlap (its issue 5573).
    pub fn activate(&mut self, p: u16, positions: &[(String, Option<u64>)], ends: &FxHashMap<u32, i64>) {
        let mut own = self.ownership.lock().unwrap();
        if !own.group.contains(&p) {
            return;
        }
        own.owned.insert(p);
        // A merge wait left from an earlier time this partition was ours must not count now:
        // it would let the other topics run ahead of one not fetched yet.
        self.blocked_since.remove(&p);
        let mut tpl = TopicPartitionList::new();
        let mut still_paused = BTreeSet::new();
        for t in &self.topics {
            let tp = (t.clone(), p as i32);
            let key = position_key(t, p as i32);
            let start = positions
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| *v)
                .map(|v| v as i64);
            own.at_end.remove(&tp);
            own.start.insert(tp.clone(), start);
            if let Some(&idx) = self.index.get(&tp) {
                self.unheard.insert(idx, Instant::now());
                self.fetched.remove(&idx);
                self.handed.remove(&idx);
                self.buffered -= self.pending[idx as usize].len();
                self.pending[idx as usize].clear();
                if self.full.remove(&idx) {
                    still_paused.insert(idx);
                }
                match ends.get(&idx) {
                    Some(&high) => {
                        self.known_high.insert(idx, high);
                        self.first_fetch.insert(idx);
                    }
                    None => {
                        self.known_high.remove(&idx);
                    }
                }
            }
            let _ = tpl.add_partition_offset(t, p as i32, start.map_or(Offset::Beginning, Offset::Offset));
        }
        drop(own);
        // librdkafka keeps a partition's pause across unassigning and assigning it again: one
        // paused for a full buffer would never be fetched again. Resumed before the assignment
        // (a pause or resume right after one can make librdkafka forget the start offset).
        self.pause_fetching(&still_paused, false);
        self.unassign_where(|q| q == p);
        // Never assigned while paused: the caller waits until consumption resumes (a pause
        // right after an assignment can make librdkafka forget the start offset).
        if let Err(e) = self.consumer.incremental_assign(&tpl) {
            warn!(partition = p, error = %e, "Assigning input partitions failed.");
        }
        let list: Vec<String> = positions
            .iter()
            .map(|(k, v)| format!("{k}@{}", v.map_or("earliest".to_owned(), |v| v.to_string())))
            .collect();
        info!(partition = p, positions = %list.join(", "), "Partition active; reading from the positions stored with its state.");
    }

    /// Removes the reading consumer's topic partitions whose account partition `gone` says.
    fn unassign_where(&mut self, gone: impl Fn(u16) -> bool) {
        let Ok(a) = self.consumer.assignment() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for e in a.elements() {
            if gone(e.partition() as u16) {
                tpl.add_partition(e.topic(), e.partition());
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.incremental_unassign(&tpl) {
                warn!(error = %e, "Unassigning input partitions failed.");
            }
        }
    }

    /// Stops reading the partitions the group took away (the revocation itself already
    /// stopped their records from being handed out).
    fn drop_revoked(&mut self) {
        let owned = self.ownership.lock().unwrap().owned.clone();
        let keys = &self.keys;
        let gone = |idx: &u32| !owned.contains(&(split_key(&keys[*idx as usize]).1 as u16));
        for (idx, q) in self.pending.iter_mut().enumerate() {
            if gone(&(idx as u32)) && !q.is_empty() {
                self.buffered -= q.len();
                q.clear();
            }
        }
        self.fetched.retain(|i, _| !gone(i));
        self.handed.retain(|i, _| !gone(i));
        self.blocked_since.retain(|p, _| owned.contains(p));
        self.known_high.retain(|i, _| !gone(i));
        self.first_fetch.retain(|i| !gone(i));
        self.unheard.retain(|i, _| !gone(i));
        // Resumed before they are unassigned: librdkafka would keep them paused, and the next
        // time they are ours they would never be fetched (see `activate`).
        let paused: BTreeSet<u32> = self.full.iter().copied().filter(|i| gone(i)).collect();
        self.pause_fetching(&paused, false);
        self.full.retain(|i| !gone(i));
        self.unassign_where(|p| !owned.contains(&p));
    }

    /// Active partitions whose every input topic has been read to its end since activation:
    /// their timers may fire on the wall clock (no false "gone dark" while catching up).
    pub fn caught_up(&self) -> Vec<u16> {
        let mut own = self.ownership.lock().unwrap();
        let owned: Vec<u16> = own.owned.iter().copied().collect();
        for p in owned {
            for t in &self.topics {
                let tp = (t.clone(), p as i32);
                if own.at_end.contains(&tp) {
                    continue;
                }
                // The watermarks librdkafka cached from its last fetch response: no round trip
                // (a ListOffsets request would queue behind the long-polling fetch).
                let Some((low, high)) = self.watermarks(t, p as i32) else {
                    continue;
                };
                if high < 0 {
                    continue;
                }
                let idx = self.index.get(&tp).copied();
                let next = idx
                    .and_then(|i| self.handed.get(&i).copied())
                    .or_else(|| own.start.get(&tp).copied().flatten())
                    .unwrap_or(low);
                if next >= high {
                    own.at_end.insert(tp);
                }
            }
        }
        own.owned
            .iter()
            .copied()
            .filter(|p| {
                self.topics
                    .iter()
                    .all(|t| own.at_end.contains(&(t.clone(), *p as i32)))
            })
            .collect()
    }

    /// Per active (topic, partition): the next offset to process and the cached high watermark.
    pub fn lag(&self) -> Vec<InputLag> {
        let own = self.ownership.lock().unwrap();
        let mut v = Vec::new();
        for p in &own.owned {
            for t in &self.topics {
                let tp = (t.clone(), *p as i32);
                let marks = self.watermarks(t, *p as i32);
                let next = self
                    .index
                    .get(&tp)
                    .and_then(|i| self.handed.get(i).copied())
                    .or_else(|| own.start.get(&tp).copied().flatten())
                    .or(marks.map(|(low, _)| low));
                v.push(InputLag {
                    topic: t.clone(),
                    partition: *p as i32,
                    next,
                    high: marks.map(|(_, h)| h),
                });
            }
        }
        v
    }

    /// Pauses or resumes every active partition (backpressure from the outbox).
    pub fn set_paused(&mut self, paused: bool) {
        if paused == self.paused {
            return;
        }
        if let Ok(a) = self.consumer.assignment() {
            let r = if paused {
                self.consumer.pause(&a)
            } else {
                self.consumer.resume(&a)
            };
            if let Err(e) = r {
                warn!(error = %e, "Pausing or resuming partitions failed.");
                return;
            }
            crate::telemetry::kafka_stats::paused_partitions(if paused { a.count() } else { 0 });
        }
        self.paused = paused;
        if !paused {
            let full = std::mem::take(&mut self.full);
            self.pause_fetching(&full, true);
            self.full = full;
        }
        if paused {
            warn!(
                "Outbox above its high-water mark: consumption paused until the broker acknowledges outputs."
            );
        } else {
            info!("Outbox below its low-water mark: consumption resumed.");
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Commits the handed-out positions to the group (asynchronously, for lag tooling).
    pub fn commit_to_group(&mut self, force: bool) {
        if self.handed.is_empty()
            || (!force && self.last_group_commit.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        let owned = self.ownership.lock().unwrap().owned.clone();
        for (idx, next) in &self.handed {
            let key = &self.keys[*idx as usize];
            let (topic, p) = split_key(key);
            if owned.contains(&(p as u16)) {
                let _ = tpl.add_partition_offset(topic, p, Offset::Offset(*next));
            }
        }
        self.last_group_commit = Instant::now();
        if tpl.count() > 0 {
            // Always asynchronous, even at shutdown: these offsets only feed lag dashboards, and
            // a synchronous commit can wait a long time for a coordinator that just moved.
            if let Err(e) = self.member.commit(&tpl, CommitMode::Async) {
                warn!(error = %e, "Committing offsets to the consumer group failed (positions are safe in the store).");
            }
        }
    }

    /// Joins the group (subscribes its consumer to the changelog topic).
    pub fn subscribe(&self) -> Result<(), SourceError> {
        self.member
            .subscribe(&[self.changelog_topic.as_str()])
            .map_err(|e| {
                SourceError::Config(format!(
                    "cannot join the group through topic {}: {e}",
                    self.changelog_topic
                ))
            })
    }

    /// Serves the group consumer: rebalance callbacks run here.
    pub fn serve_group(&mut self, wait: Duration) {
        // It is paused and reads nothing; whatever arrives is dropped.
        let _ = self.member.poll(wait);
        if self.ownership.lock().unwrap().revoked_since_poll {
            self.drop_revoked();
        }
    }

    /// Leaves the group cleanly (a static member stays in it until its session times out, so
    /// that its restart does not move its partitions).
    pub fn close(&mut self) {
        self.commit_to_group(true);
        // Serves the commit's reply, then the revocation the unsubscribe causes.
        let _ = self.member.poll(Duration::from_millis(200));
        self.member.unsubscribe();
        let _ = self.member.poll(Duration::from_millis(100));
    }
}

/// librdkafka's cached (low, high) watermarks of a partition, when known.
fn cached_watermarks(
    c: &BaseConsumer<ReaderContext>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime; the topic string outlives
    // the call; librdkafka only writes the two out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            c.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low, high))
}

fn split_key(key: &str) -> (&str, i32) {
    let rest = key.strip_prefix("kafka:").unwrap_or(key);
    let (t, p) = rest.rsplit_once(':').unwrap_or((rest, "0"));
    (t, p.parse().unwrap_or(0))
}

impl Source for KafkaSource {
    fn sources(&self) -> &[String] {
        &self.keys
    }

    fn resume(&mut self, _positions: &HashMap<String, u64>) -> Result<(), SourceError> {
        // Positions are applied per partition when it is activated.
        self.subscribe()
    }

    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
        batch: &mut InputBatch,
    ) -> Result<Poll, SourceError> {
        let deadline = Instant::now() + wait;
        if let Some(end) = self.last_poll_end {
            let outside = end.elapsed();
            for b in self.blocked_since.values_mut() {
                b.since += outside;
            }
        }
        self.ownership.lock().unwrap().revoked_since_poll = false;
        self.serve_group(Duration::ZERO);
        // 1. Fetch into the per-topic-partition queues. Once something is buffered, more is
        //    waited for (briefly, within the batch's time budget) only while the broker holds
        //    many records not fetched yet (a quarter of `max`): catching up, batches fill to
        //    `max` instead of handing out each fetch response's few hundred records; live, a
        //    batch goes as soon as the fetched records are in. (Following the live end there is
        //    nearly always some record the broker has and we have not: waiting for it kept every
        //    live batch for the whole `pipeline.batch_max_ms`.)
        //    Whatever librdkafka has ready is taken even past `max`: its queue is one line for
        //    every partition, and a topic the merge waits for may have its records queued behind
        //    the others'; taking only `max` each turn would starve it. A topic partition whose
        //    buffer holds `max` records is paused until it is down to half (`limit_buffers`).
        let mut linger = false;
        let linger_behind = (max as i64 / LINGER_BEHIND_DIVISOR).max(1);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = if self.buffered == 0 || self.starved {
                left
            } else if linger && self.buffered < max {
                left.min(Duration::from_millis(2))
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(timeout) {
                None => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    if self.starved {
                        continue;
                    }
                    if self.buffered >= max {
                        break;
                    }
                    if self.buffered > 0 {
                        linger = self.behind_by(linger_behind);
                        if !linger {
                            break;
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    crate::telemetry::kafka_stats::client_error("consume", &e, "poll");
                    if self.buffered == 0 && Instant::now() >= deadline {
                        break;
                    }
                }
                Some(Ok(m)) => {
                    let Some(idx) = self.index_of(m.topic(), m.partition()) else {
                        continue;
                    };
                    if self.fetched.get(&idx).is_some_and(|&f| m.offset() < f) {
                        continue; // fetched again after a pause: already buffered
                    }
                    self.fetched.insert(idx, m.offset() + 1);
                    // Checked first: a hash lookup per record only while some partition
                    // awaits its first one.
                    if !self.first_fetch.is_empty() {
                        self.first_fetch.remove(&idx);
                    }
                    if !self.unheard.is_empty() {
                        self.unheard.remove(&idx);
                    }
                    self.starved = false;
                    self.pending[idx as usize].push_back(Pending {
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis().unwrap_or(i64::MIN),
                        payload: m.payload().unwrap_or(&[]).to_vec(),
                    });
                    self.buffered += 1;
                }
            }
        }
        self.limit_buffers(max);
        // Records of partitions revoked during this poll belong to their new owner now.
        let own = self.ownership.lock().unwrap();
        let owned = own.owned.clone();
        let revoked = own.revoked_since_poll;
        drop(own);
        if revoked {
            for (idx, q) in self.pending.iter_mut().enumerate() {
                if !owned.contains(&(split_key(&self.keys[idx]).1 as u16)) {
                    self.buffered -= q.len();
                    q.clear();
                }
            }
            let keys = &self.keys;
            self.handed
                .retain(|idx, _| owned.contains(&(split_key(&keys[*idx as usize]).1 as u16)));
            self.fetched
                .retain(|idx, _| owned.contains(&(split_key(&keys[*idx as usize]).1 as u16)));
        }
        // 2. Hand out each partition's records in event-time order across its four topics.
        for p in owned {
            self.merge_partition(p, max, batch);
            if batch.records.len() >= max {
                break;
            }
        }
        self.limit_buffers(max);
        self.starved = batch.records.is_empty() && self.buffered > 0;
        self.last_poll_end = Some(Instant::now());
        Ok(if batch.records.is_empty() {
            Poll::Idle
        } else {
            Poll::Records
        })
    }
}

/// A partition's merge waiting for an empty topic.
struct Blocked {
    since: Instant,
    expired: bool,
}

/// A fetched record waiting for its turn in the time-ordered merge.
struct Pending {
    offset: i64,
    timestamp: i64,
    payload: Vec<u8>,
}

impl KafkaSource {
    /// Moves partition `p`'s buffered records into `batch`, oldest record timestamp first across
    /// the four input topics — what Kafka Streams does for a task's partitions. A topic whose
    /// queue is empty holds the others back until it is read to its end, or for at most
    /// `kafka.merge_wait_ms` of polling (then its later records are processed as they come);
    /// right after activation, until its first records are in, for at most `FIRST_FETCH_WAIT`.
    fn merge_partition(&mut self, p: u16, max: usize, batch: &mut InputBatch) {
        let idxs: Vec<u32> = self
            .topics
            .iter()
            .filter_map(|t| self.index_of(t, p as i32))
            .collect();
        // Whether each topic's queue may still get records: watermarks and fetch positions do
        // not change while records are handed out, so each is asked once per merge.
        let mut drained: [Option<bool>; 4] = [None; 4];
        loop {
            if batch.records.len() >= max {
                return;
            }
            let mut best: Option<u32> = None;
            let mut blocked = false;
            let mut first = false;
            // An empty topic whose cached watermarks cannot be trusted yet (see `unheard`).
            let mut unheard = false;
            // Unheard topics whose grace is over: their end offsets are asked of the broker.
            let mut unverified: Vec<u32> = Vec::new();
            for (j, &idx) in idxs.iter().enumerate() {
                match self.pending[idx as usize].front() {
                    Some(r) => {
                        if best.is_none_or(|b| r.timestamp < self.pending[b as usize][0].timestamp)
                        {
                            best = Some(idx);
                        }
                    }
                    None => {
                        if !*drained[j].get_or_insert_with(|| self.drained(idx)) {
                            blocked = true;
                            first |= self.first_fetch.contains(&idx);
                        } else if let Some(since) = self.unheard.get(&idx) {
                            if since.elapsed() < self.unheard_grace {
                                unheard = true;
                            } else {
                                // Still nothing from the fetcher: ask the broker instead.
                                unheard = true;
                                unverified.push(idx);
                            }
                        }
                    }
                }
            }
            let Some(idx) = best else {
                self.blocked_since.remove(&p);
                return;
            };
            if !unverified.is_empty() && !blocked {
                self.verify_ends(&unverified);
                drained = [None; 4];
                continue;
            }
            if unheard && !blocked {
                // Waits for the fetcher's next word on that topic; no merge wait is counted.
                return;
            }
            if blocked {
                let merge_wait = self.merge_wait;
                let b = self.blocked_since.entry(p).or_insert_with(|| Blocked {
                    since: Instant::now(),
                    expired: false,
                });
                let wait = if first { FIRST_FETCH_WAIT.max(merge_wait) } else { merge_wait };
                if b.since.elapsed() < wait {
                    return;
                }
                if !std::mem::replace(&mut b.expired, true) {
                    metrics::counter!(crate::telemetry::names::KAFKA_MERGE_WAITS_EXPIRED).increment(1);
                    if self.last_expiry_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        warn!(
                            partition = p,
                            waited_ms = wait.as_millis() as u64,
                            "An input topic of this partition stayed empty though it may have records not fetched yet; going on with the other topics (its events may arrive behind theirs in event time). Raise kafka.merge_wait_ms if this repeats."
                        );
                        self.last_expiry_warning = Some(Instant::now());
                    }
                }
            } else {
                self.blocked_since.remove(&p);
            }
            let r = self.pending[idx as usize].pop_front().expect("non-empty");
            self.buffered -= 1;
            let start = batch.buf.len();
            batch.buf.extend_from_slice(&r.payload);
            batch.records.push(RecordMeta {
                source: idx,
                offset: r.offset as u64,
                next: r.offset as u64 + 1,
                start,
                end: batch.buf.len(),
                partition: Some(p),
                oversized: None,
            });
            self.handed.insert(idx, r.offset + 1);
        }
    }

    /// Pauses fetching the topic partitions whose buffer holds `max` records, and resumes
    /// those paused that are down to half of it.
    fn limit_buffers(&mut self, max: usize) {
        let max = max.max(2);
        let over: BTreeSet<u32> = (0..self.pending.len() as u32)
            .filter(|&i| self.pending[i as usize].len() >= max && !self.full.contains(&i))
            .collect();
        let under: BTreeSet<u32> = self
            .full
            .iter()
            .copied()
            .filter(|&i| self.pending[i as usize].len() <= max / 2)
            .collect();
        if !over.is_empty() {
            self.pause_fetching(&over, true);
            self.full.extend(over);
        }
        if !under.is_empty() {
            if !self.paused {
                let now = Instant::now();
                self.unheard.extend(under.iter().map(|&i| (i, now)));
            }
            self.pause_fetching(&under, false);
            self.full.retain(|i| !under.contains(i));
        }
    }

    /// Pauses (or resumes) fetching these topic partitions, unless all are paused for
    /// backpressure (then the global resume re-applies the per-partition pauses).
    fn pause_fetching(&self, idxs: &BTreeSet<u32>, pause: bool) {
        if self.paused || idxs.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for &i in idxs {
            let (topic, p) = split_key(&self.keys[i as usize]);
            tpl.add_partition(topic, p);
        }
        let r = if pause { self.consumer.pause(&tpl) } else { self.consumer.resume(&tpl) };
        if let Err(e) = r {
            warn!(error = %e, "Pausing or resuming a full input partition failed.");
        }
    }

    /// The key index of an input topic partition (no allocation: called per record).
    fn index_of(&self, topic: &str, partition: i32) -> Option<u32> {
        let t = self.topics.iter().position(|t| t == topic)? as u32;
        (partition >= 0 && (partition as u32) < self.partitions).then(|| t * self.partitions + partition as u32)
    }

    /// Whether the broker holds at least `at_least` records of the active partitions that we
    /// have not fetched yet (catching up, not following the live end).
    fn behind_by(&self, at_least: i64) -> bool {
        let owned: Vec<u16> = self.ownership.lock().unwrap().owned.iter().copied().collect();
        let mut behind = 0i64;
        for p in owned {
            for idx in self.topics.iter().filter_map(|t| self.index_of(t, p as i32)) {
                behind += self.unfetched(idx).unwrap_or(0);
                if behind >= at_least {
                    return true;
                }
            }
        }
        false
    }

    /// librdkafka's cached (low, high) watermarks, the high one at least what the broker said
    /// when the partition was activated.
    fn watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        let (low, high) = cached_watermarks(&self.consumer, topic, partition)?;
        let known = self
            .index_of(topic, partition)
            .and_then(|i| self.known_high.get(&i))
            .copied()
            .unwrap_or(high);
        Some((low, high.max(known)))
    }

    /// Asks the broker for the end offsets of topic partitions still unheard after their grace:
    /// librdkafka's cached watermarks for them may be from before records produced since (the
    /// fetcher has not been to the broker for them yet, or its answer is late on a loaded
    /// machine), and trusting them would let the other topics' later records, and the event-time
    /// timers they move, run ahead of records not fetched yet. What the broker says becomes the
    /// floor of their high watermark: a topic with records to fetch then holds the merge back
    /// like any other, for `FIRST_FETCH_WAIT` or `kafka.merge_wait_ms` at most. A topic the
    /// broker does not answer for is judged by the cached watermarks, as before.
    fn verify_ends(&mut self, idxs: &[u32]) {
        let ends = self.end_offsets_of(idxs);
        for &idx in idxs {
            self.unheard.remove(&idx);
            if let Some(&high) = ends.get(&idx) {
                let floor = self.known_high.entry(idx).or_insert(high);
                *floor = (*floor).max(high);
                if self.unfetched(idx).is_some_and(|n| n > 0) && !self.fetched.contains_key(&idx) {
                    self.first_fetch.insert(idx);
                }
            }
        }
    }

    /// Whether a topic partition has nothing more to give right now: everything up to its high
    /// watermark has been fetched.
    fn drained(&self, idx: u32) -> bool {
        self.unfetched(idx).is_some_and(|n| n == 0)
    }

    /// How many records of a topic partition the broker holds beyond what has been fetched
    /// (None: its watermarks are not known yet).
    fn unfetched(&self, idx: u32) -> Option<i64> {
        let (topic, p) = split_key(&self.keys[idx as usize]);
        let (low, high) = self.watermarks(topic, p)?;
        let own = self.ownership.lock().unwrap();
        let next = self
            .fetched
            .get(&idx)
            .copied()
            .or_else(|| own.start.get(&(topic.to_owned(), p)).copied().flatten())
            .unwrap_or(low);
        Some((high - next).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records' payloads and timestamps, in milliseconds after this, are the same number.
    const T0: i64 = 1_780_000_000_000;

    /// A mock cluster holding rapport's topics with one partition each, and a config for it.
    fn mock_world() -> (rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>, Config) {
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        let mut cfg = Config::defaults();
        cfg.kafka.brokers = mock.bootstrap_servers();
        cfg.engine.partitions = 1;
        for t in cfg.kafka.input_topics.all() {
            mock.create_topic(t, 1, 1).unwrap();
        }
        mock.create_topic(&cfg.kafka.changelog_topic, 1, 1).unwrap();
        (mock, cfg)
    }

    /// Sends a record whose payload is `ts` and whose timestamp is `T0 + ts`.
    fn send_at(producer: &rdkafka::producer::BaseProducer, topic: &str, ts: i64) {
        let payload = ts.to_string();
        producer
            .send(rdkafka::producer::BaseRecord::to(topic).key("acct").payload(&payload).timestamp(T0 + ts))
            .unwrap();
    }

    /// The numbers a batch's records carry, in order.
    fn numbers(batch: &InputBatch) -> impl Iterator<Item = i64> + '_ {
        batch
            .records
            .iter()
            .map(|r| std::str::from_utf8(batch.bytes(r)).unwrap().parse::<i64>().unwrap())
    }

    /// Records of a topic produced while its fetching was paused (its buffer full) come out of
    /// the merge in time order with the other topics' records: its queue running empty right
    /// after the resume does not count as read to its end, since librdkafka's watermarks for
    /// it are still the ones from before the pause.
    #[test]
    fn records_produced_while_a_topic_is_paused_are_merged_in_time_order() {
        use rdkafka::producer::{BaseProducer, Producer};
        const MAX: usize = 40;
        let (_mock, cfg) = mock_world();
        let (usage, email) = (
            cfg.kafka.input_topics.product_usage.clone(),
            cfg.kafka.input_topics.email.clone(),
        );
        let producer: BaseProducer = client_config(&cfg).create().unwrap();
        let send = |topic: &str, ts: i64| send_at(&producer, topic, ts);
        // Usage at even milliseconds 0..200, email at odd ones 1..799.
        for i in 0..100 {
            send(&usage, 2 * i);
        }
        for i in 0..400 {
            send(&email, 2 * i + 1);
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let mut src = KafkaSource::new(&cfg).unwrap();
        src.ownership.lock().unwrap().group.insert(0);
        let ends = src.end_offsets(&[0]);
        let positions: Vec<(String, Option<u64>)> = src.keys_of(0).into_iter().map(|k| (k, None)).collect();
        src.activate(0, &positions, &ends);
        let u = src.index_of(&usage, 0).unwrap();

        let mut out: Vec<i64> = Vec::new();
        let mut late_sent = false;
        let mut batch = InputBatch::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.len() < 520 {
            assert!(Instant::now() < deadline, "only {} of 520 records came out: {out:?}", out.len());
            batch.clear();
            src.poll(MAX, Duration::from_millis(50), &mut batch).unwrap();
            out.extend(numbers(&batch));
            if !late_sent && src.full.contains(&u) {
                // While usage is paused: twenty more usage records, 200..238 ms, behind most
                // of the email already fetched.
                for i in 100..120 {
                    send(&usage, 2 * i);
                }
                producer.flush(Duration::from_secs(10)).unwrap();
                late_sent = true;
            }
        }
        assert!(late_sent, "the usage topic's buffer never filled and paused");
        let disorder: Vec<(i64, i64)> = out.windows(2).filter(|w| w[1] < w[0]).map(|w| (w[0], w[1])).collect();
        assert!(disorder.is_empty(), "records out of time order (earlier after later): {disorder:?}");
    }

    /// librdkafka keeps a topic partition paused across unassigning and assigning it again: one
    /// paused for a full buffer when its partition was revoked is resumed, and its records are
    /// read when the partition comes back.
    #[test]
    fn a_topic_partition_paused_when_its_partition_was_revoked_is_read_when_it_comes_back() {
        use rdkafka::producer::{BaseProducer, Producer};
        let (_mock, cfg) = mock_world();
        let usage = cfg.kafka.input_topics.product_usage.clone();
        let producer: BaseProducer = client_config(&cfg).create().unwrap();
        for i in 0..50 {
            send_at(&producer, &usage, i);
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let mut src = KafkaSource::new(&cfg).unwrap();
        src.ownership.lock().unwrap().group.insert(0);
        let positions: Vec<(String, Option<u64>)> = src.keys_of(0).into_iter().map(|k| (k, None)).collect();
        let ends = src.end_offsets(&[0]);
        src.activate(0, &positions, &ends);
        // Its buffer full: paused; then the partition is revoked, and given back.
        let u = src.index_of(&usage, 0).unwrap();
        let one = BTreeSet::from([u]);
        src.pause_fetching(&one, true);
        src.full.insert(u);
        src.ownership.lock().unwrap().owned.remove(&0);
        src.drop_revoked();
        let ends = src.end_offsets(&[0]);
        src.activate(0, &positions, &ends);

        let mut out: Vec<i64> = Vec::new();
        let mut batch = InputBatch::default();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < 50 {
            assert!(Instant::now() < deadline, "only {} of 50 records came out: {out:?}", out.len());
            batch.clear();
            src.poll(40, Duration::from_millis(50), &mut batch).unwrap();
            out.extend(numbers(&batch));
        }
        assert_eq!(out, (0..50).collect::<Vec<i64>>());
    }

    /// A topic partition the fetcher has not been back to since records were produced to it (its
    /// cached watermarks say it is read to its end) does not let the other topics' later records
    /// go ahead once its grace is over: the broker is asked, says it holds records, and the
    /// merge waits for them.
    #[test]
    fn a_topic_the_fetcher_has_not_been_back_to_is_asked_of_the_broker() {
        use rdkafka::producer::{BaseProducer, Producer};
        let (_mock, mut cfg) = mock_world();
        cfg.kafka.merge_wait_ms = 30_000;
        let (usage, email) = (
            cfg.kafka.input_topics.product_usage.clone(),
            cfg.kafka.input_topics.email.clone(),
        );
        let mut src = KafkaSource::new(&cfg).unwrap();
        src.ownership.lock().unwrap().group.insert(0);
        let ends = src.end_offsets(&[0]);
        let positions: Vec<(String, Option<u64>)> = src.keys_of(0).into_iter().map(|k| (k, None)).collect();
        src.activate(0, &positions, &ends);

        // Every (empty) topic fetched once, so that librdkafka has watermarks for them.
        let mut batch = InputBatch::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        while src.topics.iter().any(|t| cached_watermarks(&src.consumer, t, 0).is_none()) {
            assert!(Instant::now() < deadline, "the fetcher never reported on the empty topics");
            src.poll(40, Duration::from_millis(20), &mut batch).unwrap();
            assert!(batch.records.is_empty());
        }
        // The fetcher stays away from usage, whose records are then older than all of email's.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&usage, 0);
        src.consumer.pause(&tpl).unwrap();
        let producer: BaseProducer = client_config(&cfg).create().unwrap();
        let send = |topic: &str, ts: i64| send_at(&producer, topic, ts);
        for i in 0..20 {
            send(&usage, i);
        }
        for i in 0..20 {
            send(&email, 100 + i);
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let mut out: Vec<i64> = Vec::new();
        let take = |batch: &InputBatch, out: &mut Vec<i64>| out.extend(numbers(batch));
        // Well past the grace, with the email records fetched: nothing may come out yet.
        let until = Instant::now() + src.unheard_grace * 3 + Duration::from_millis(500);
        while Instant::now() < until {
            batch.clear();
            src.poll(40, Duration::from_millis(20), &mut batch).unwrap();
            take(&batch, &mut out);
        }
        assert!(src.pending[src.index_of(&email, 0).unwrap() as usize].len() + out.len() > 0, "email was never fetched");
        assert!(out.is_empty(), "email records went ahead of usage records the broker held: {out:?}");
        src.consumer.resume(&tpl).unwrap();
        while out.len() < 40 {
            assert!(Instant::now() < deadline, "only {} of 40 records came out: {out:?}", out.len());
            batch.clear();
            src.poll(40, Duration::from_millis(50), &mut batch).unwrap();
            take(&batch, &mut out);
        }
        let want: Vec<i64> = (0..20).chain(100..120).collect();
        assert_eq!(out, want, "usage first, then email, each in order");
    }

    #[test]
    fn every_client_refreshes_metadata_often_unless_the_client_table_says_otherwise() {
        let mut cfg = Config::defaults();
        for c in [client_config(&cfg), reader_config(&cfg), member_config(&cfg)] {
            assert_eq!(c.get("topic.metadata.refresh.interval.ms"), Some(METADATA_REFRESH_MS));
            assert_eq!(c.get("metadata.recovery.rebootstrap.trigger.ms"), Some(REBOOTSTRAP_AFTER_MS));
        }
        cfg.kafka.client.insert("topic.metadata.refresh.interval.ms".into(), "60000".into());
        assert_eq!(reader_config(&cfg).get("topic.metadata.refresh.interval.ms"), Some("60000"));
    }

    #[test]
    fn the_reader_takes_its_defaults_then_the_client_table_then_the_consumer_table() {
        let mut cfg = Config::defaults();
        let c = reader_config(&cfg);
        assert_eq!(c.get("fetch.min.bytes"), Some("100000"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some(FETCH_QUEUE_BACKOFF_MS));
        cfg.kafka.client.insert("fetch.min.bytes".into(), "1".into());
        cfg.kafka.consumer.insert("fetch.wait.max.ms".into(), "50".into());
        let c = reader_config(&cfg);
        assert_eq!(c.get("fetch.min.bytes"), Some("1"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        // The consumer table is the reader's alone: the group member does not take it.
        assert_eq!(member_config(&cfg).get("fetch.wait.max.ms"), None);
    }

    #[test]
    fn secrets_are_redacted_and_the_rest_is_shown() {
        let mut cfg = Config::defaults();
        cfg.kafka
            .client
            .insert("sasl.password".into(), "hunter2".into());
        cfg.kafka
            .client
            .insert("ssl.key.password".into(), "k3y".into());
        cfg.kafka
            .client
            .insert("sasl.username".into(), "rapport".into());
        let shown = format!("{:?}", redacted(&client_config(&cfg)));
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(
            shown.contains("rapport") && shown.contains("127.0.0.1:9092"),
            "{shown}"
        );
    }

    #[test]
    fn position_keys_round_trip() {
        assert_eq!(
            split_key(&position_key("engagement.email", 7)),
            ("engagement.email", 7)
        );
    }
}
