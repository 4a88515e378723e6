//! Configuration: the embedded `config/default.toml`, then a file, then `RAPPORT_*` variables.
//!
//! Every struct denies unknown keys (a typo is an error, not a silent default), and
//! [`Config::validate`] cross-checks values at start-up so that a mistake stops the process with a
//! sentence a person can act on.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

/// The defaults, compiled in so that `rapport demo` needs no file on disk.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}. Check the path given to --config.")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// "embedded" (NDJSON files in and out) or "kafka" (topics in and out).
    pub mode: Mode,
    /// Event time, partitions, dedup and record limits.
    pub engine: EngineConfig,
    /// Health-score components, weights and bands.
    pub scorecard: Scorecard,
    /// Churn alert rules.
    pub alerts: AlertRules,
    /// RocksDB location and memory.
    pub store: StoreConfig,
    /// Batch sizes.
    pub pipeline: PipelineConfig,
    /// NDJSON files in and out (the embedded default).
    pub embedded: EmbeddedConfig,
    /// Metrics endpoint and logs.
    pub telemetry: TelemetryConfig,
    /// Kafka source and sink (mode = "kafka").
    pub kafka: KafkaConfig,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Embedded,
    Kafka,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, "host:port,host:port".
    pub brokers: String,
    /// Consumer group of all rapport instances of one deployment.
    pub group_id: String,
    /// Client id reported to the brokers.
    pub client_id: String,
    /// Input topics; they must have the same partition count (co-partitioned), equal to engine.partitions.
    pub input_topics: InputTopics,
    /// Output topics.
    pub output_topics: OutputTopics,
    /// Create missing topics at start-up (otherwise `rapport topics create` does it).
    pub create_topics: bool,
    /// Partitions of the output topics when rapport creates them.
    pub output_partitions: u32,
    /// Replication factor of the topics rapport creates.
    pub replication_factor: u32,
    /// Pause consumption when this many outputs wait for the broker's acknowledgement...
    pub outbox_high_water: u64,
    /// ...and resume below this many.
    pub outbox_low_water: u64,
    /// "json" (the contract) or "protobuf" (`rapport.v1.HealthScoreChanged`, `ChurnAlert`).
    pub output_format: String,
    /// Records of one partition's four topics are processed in record-timestamp order; a topic
    /// with nothing fetched holds the others back until it is read to its end, or for at most
    /// this long spent waiting for it (time processing other records does not count).
    pub merge_wait_ms: u64,
    /// Compacted topic that every committed batch's changed account states, dedup marks and
    /// input positions are written to (co-partitioned with the inputs), so that a partition's
    /// state can be restored on whichever instance is given it.
    pub changelog_topic: String,
    /// Static group membership: a stable id per instance (e.g. the pod name). An instance that
    /// restarts within `session_timeout_ms` gets its partitions back without a rebalance.
    /// Empty: dynamic membership.
    pub group_instance_id: String,
    /// How long the group waits for a silent instance before moving its partitions.
    pub session_timeout_ms: u64,
    /// "cooperative" (incremental rebalancing: only the partitions that move stop) or "eager"
    /// (every partition is revoked and reassigned on each rebalance).
    pub assignment: String,
    /// Extra librdkafka settings for both consumer and producer, passed through as they are
    /// (TLS and SASL: "security.protocol", "ssl.ca.location", "sasl.mechanism", "sasl.username",
    /// "sasl.password", ...). Values of keys that look secret are never logged.
    pub client: std::collections::BTreeMap<String, String>,
    /// librdkafka settings of the producer only (outputs and changelog), applied over rapport's
    /// own defaults (`linger.ms`, `compression.type`, `batch.num.messages`, ...). The settings
    /// its guarantees rest on are refused (see [`PRODUCER_FIXED`]).
    pub producer: std::collections::BTreeMap<String, String>,
    /// librdkafka settings of the input reader only (`fetch.*`, `queued.*`, ...), applied over
    /// rapport's own defaults; the ones in [`CONSUMER_FIXED`] are refused.
    pub consumer: std::collections::BTreeMap<String, String>,
}

/// Producer settings that rapport's delivery guarantees depend on: idempotent, acknowledged
/// by every in-sync replica, retried without a deadline, and partitioned as Java clients do
/// (which co-partitioning with the inputs relies on).
pub const PRODUCER_FIXED: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
    "transactional.id",
];

/// Consumer settings that rapport's positions depend on: they are kept in its store, so the
/// group's own offset handling stays off.
pub const CONSUMER_FIXED: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputTopics {
    pub product_usage: String,
    pub email: String,
    pub call: String,
    pub deal: String,
}

impl InputTopics {
    pub fn all(&self) -> [&str; 4] {
        [&self.product_usage, &self.email, &self.call, &self.deal]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputTopics {
    pub health_scores: String,
    pub churn_alerts: String,
    pub dlq: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimerClock {
    /// Timers fire when a partition's stream time (max event time) passes them: replay-exact.
    Event,
    /// Timers fire when the wall clock passes them: live operation on idle topics.
    Wall,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Number of account partitions; equal to the input topics' partition count in Kafka mode.
    pub partitions: u16,
    /// An event older than its partition's stream time minus this is late: folded, but it
    /// raises no alert about the past.
    pub allowed_lateness_secs: u64,
    /// A repeated `event_id` of the same account within this many days is counted and ignored.
    pub dedup_retention_days: u32,
    /// Which clock fires inactivity timers.
    pub timer_clock: TimerClock,
    /// Records larger than this go to the dead-letter output.
    pub max_record_bytes: usize,
    /// Ids (`event_id`, `account_id`, ...) longer than this go to the dead-letter output.
    pub max_id_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scorecard {
    /// Emit a score change when the score moves at least this many points or changes band.
    pub min_score_delta: u32,
    /// An account is scored once this many components have data.
    pub min_components: u32,
    pub bands: Bands,
    pub components: Components,
    pub peers: Peers,
}

/// Components scored as the account's percentile within its segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    /// Components scored against peers: any of usage_frequency, usage_trend, adoption, recency,
    /// outcome. Empty: none.
    pub components: Vec<String>,
    /// What makes accounts peers.
    pub segment: PeerSegment,
    /// ARR band edges (ascending) when `segment = "arr_band"`.
    pub arr_bands: Vec<f64>,
    /// Days of a period: readings of one period are the reference of the next.
    pub period_days: u32,
    /// Below this many accounts in the reference, a segment's accounts are scored on the
    /// component's own targets.
    pub min_peers: u32,
}

impl Peers {
    /// Whether any component is scored against peers (peer books are kept only then).
    pub fn enabled(&self) -> bool {
        !self.components.is_empty()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PeerSegment {
    Plan,
    Industry,
    ArrBand,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bands {
    /// Scores at or above this are green.
    pub green: u32,
    /// Scores at or above this (and below green) are yellow; below it, red.
    pub yellow: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Components {
    pub usage_frequency: UsageFrequency,
    pub usage_trend: Weighted,
    pub adoption: Adoption,
    pub email_engagement: EmailEngagement,
    pub call_sentiment: Weighted,
    pub commercial: Weighted,
    pub recency: Recency,
    pub outcome: Outcome,
}

/// The outcome component: how much value the account gets out of the product, counted as the
/// product-usage events of the named outcome features, against what its plan or ARR tier (or its
/// own history) implies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub weight: f64,
    /// `product_usage` features that are outcomes ("report_delivered", "invoice_sent").
    pub features: Vec<String>,
    /// How drivers name the outcomes, plural: "reports delivered".
    pub label: String,
    /// Days over which outcomes are counted.
    pub window_days: u32,
    /// What the count is measured against.
    pub baseline: OutcomeBaseline,
    /// Outcomes per window that earn full marks when no plan or ARR tier below applies.
    pub expected: f64,
    /// Per plan (the `plan` of the account's deal events): outcomes per window for full marks.
    pub expected_by_plan: std::collections::BTreeMap<String, f64>,
    /// Per ARR tier, by the tier's lowest ARR; the highest tier at or below the account's ARR
    /// applies (used when no plan entry does).
    pub expected_by_arr: Vec<ArrTier>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeBaseline {
    /// The configured expectation (by plan, ARR tier or `expected`).
    Expectation,
    /// The account's own rate over the earlier days of its 90-day history.
    OwnHistory,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArrTier {
    pub arr_from: f64,
    pub expected: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Weighted {
    /// Share of the score (all weights sum to 1; 0 turns the component off).
    pub weight: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UsageFrequency {
    pub weight: f64,
    /// Active days out of the last 28 that earn full marks.
    pub target_active_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Adoption {
    pub weight: f64,
    /// Distinct active users in 30 days that earn full marks for users.
    pub target_users: u32,
    /// Distinct features used in 30 days that earn full marks for features.
    pub target_features: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmailEngagement {
    pub weight: f64,
    /// (replies + clicks/2 + opens/4) per outbound email that earns full marks.
    pub target_engagement_rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recency {
    pub weight: f64,
    /// Usage within this many days earns full marks.
    pub full_days: u32,
    /// No usage for this many days scores zero.
    pub zero_days: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertRules {
    /// State-based rules (usage drop, gone dark, score drop, renewal at risk) wait until an
    /// account has been seen for this many days.
    pub min_account_age_days: u32,
    pub usage_drop: UsageDropRule,
    pub gone_dark: GoneDarkRule,
    pub negative_call: NegativeCallRule,
    pub email_trouble: WindowRule,
    pub renewal_at_risk: RenewalRule,
    pub deal_lost: WindowRule,
    pub score_drop: ScoreDropRule,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UsageDropRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Opens when the last 7 days' usage is below this share of the trailing 28-day weekly average.
    pub drop_ratio: f64,
    /// Resolves when it is back above this share.
    pub resolve_ratio: f64,
    /// Accounts averaging fewer usage events a week are not judged.
    pub min_weekly_baseline: f64,
    /// Days after a resolution before the rule may open again.
    pub cooldown_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GoneDarkRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Opens after this many days without product usage.
    pub days: u32,
    pub cooldown_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NegativeCallRule {
    pub enabled: bool,
    pub severity: Severity,
    /// A call at or below this sentiment (-1..1) is negative.
    pub sentiment_at_most: f64,
    /// A call that mentions one of these topics is negative too.
    pub risk_topics: Vec<String>,
    /// The alert stays open this many days after the last negative call.
    pub window_days: u32,
    pub cooldown_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowRule {
    pub enabled: bool,
    pub severity: Severity,
    /// The alert stays open this many days after the triggering event.
    pub window_days: u32,
    pub cooldown_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RenewalRule {
    pub enabled: bool,
    pub severity: Severity,
    /// An open renewal closing within this many days...
    pub within_days: u32,
    /// ...while the score is below this, opens the alert.
    pub score_below: u32,
    pub cooldown_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScoreDropRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Opens when the score is this many points below its highest in `window_days`, or falls into red.
    pub points: u32,
    pub window_days: u32,
    /// Resolves when the drop is under this many points and the score is out of red.
    pub resolve_points: u32,
    pub cooldown_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// RocksDB directory.
    pub data_dir: PathBuf,
    /// RocksDB block cache, MiB.
    pub block_cache_mb: usize,
    /// RocksDB write buffer of the `state` and `dedup` column families, MiB (the others get a
    /// quarter of it); up to two per column family are in memory at once.
    pub write_buffer_mb: usize,
    /// fsync the write-ahead log on every batch (survives power loss; a process crash is
    /// survived either way).
    pub sync_writes: bool,
    /// Input is paused while the store's filesystem has less than this free (0: never).
    pub min_free_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Records per batch (one atomic write each).
    pub batch_max_records: usize,
    /// Longest wait to fill a batch when input is slow, milliseconds.
    pub batch_max_ms: u64,
    /// Decoded account states kept in memory between batches, MiB (0: none). Only committed
    /// states are cached; a hit saves a RocksDB lookup and a protobuf decode.
    pub state_cache_mb: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Input: an NDJSON or length-delimited protobuf (`.pb` / `.binpb`) file, a directory (its
    /// event files in name order) or "-" (NDJSON on stdin).
    pub input: String,
    /// Where `health_scores.ndjson`, `churn_alerts.ndjson` and `dlq.ndjson` are written.
    pub output_dir: PathBuf,
    /// Keep reading a growing file instead of stopping at its end.
    pub follow: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`; empty disables the endpoint.
    pub listen: String,
    /// "human" or "json".
    pub log_format: String,
}

impl Config {
    /// The compiled-in defaults.
    pub fn defaults() -> Config {
        Self::figment(None)
            .extract()
            .expect("config/default.toml is valid")
    }

    fn figment(file: Option<&Path>) -> Figment {
        let mut f = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            f = f.merge(Toml::file_exact(path));
        }
        // Only RAPPORT_MODE and RAPPORT_<SECTION>__<KEY>: other RAPPORT_* variables (the test
        // harness's, the local broker script's) are not configuration.
        f.merge(
            Env::prefixed("RAPPORT_")
                .filter(|k| k.as_str().contains("__") || k.as_str().eq_ignore_ascii_case("mode"))
                .split("__"),
        )
    }

    /// Defaults, then `file`, then `RAPPORT_*` environment variables; then [`validate`](Self::validate).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(path) = file {
            std::fs::metadata(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
        }
        let cfg: Config = Self::figment(file).extract().map_err(|e| {
            let where_ = file.map(|p| format!(" in {}", p.display())).unwrap_or_default();
            // figment prefixes key paths with its profile name ("default."), which is not a
            // key anyone wrote.
            let path: Vec<&str> = e.path.iter().map(String::as_str).filter(|p| *p != "default").collect();
            let key = if path.is_empty() { String::new() } else { format!(" at `{}`", path.join(".")) };
            ConfigError::Parse(format!(
                "configuration error{where_}{key}: {}. Compare with config/default.toml, which lists every key.",
                e.kind
            ))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-checks that serde cannot express. Each error is one actionable sentence.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        let c = &self.scorecard.components;
        let weights = [
            ("usage_frequency", c.usage_frequency.weight),
            ("usage_trend", c.usage_trend.weight),
            ("adoption", c.adoption.weight),
            ("email_engagement", c.email_engagement.weight),
            ("call_sentiment", c.call_sentiment.weight),
            ("commercial", c.commercial.weight),
            ("recency", c.recency.weight),
            ("outcome", c.outcome.weight),
        ];
        for (name, w) in weights {
            if !w.is_finite() || w < 0.0 {
                return bad(format!(
                    "scorecard.components.{name}.weight is {w}; weights must be numbers of 0 or more."
                ));
            }
        }
        let sum: f64 = weights.iter().map(|(_, w)| w).sum();
        if (sum - 1.0).abs() > 0.001 {
            return bad(format!(
                "the scorecard weights sum to {sum:.3}, not 1; adjust scorecard.components.*.weight so they add up to 1."
            ));
        }
        let b = &self.scorecard.bands;
        if !(b.yellow < b.green && b.green <= 100) {
            return bad(format!(
                "scorecard.bands must satisfy yellow < green <= 100, but yellow = {} and green = {}.",
                b.yellow, b.green
            ));
        }
        if self.scorecard.min_components == 0 || self.scorecard.min_components > 8 {
            return bad(format!(
                "scorecard.min_components is {}; it must be between 1 and 8 (the number of components).",
                self.scorecard.min_components
            ));
        }
        if c.recency.full_days >= c.recency.zero_days {
            return bad(format!(
                "scorecard.components.recency.full_days ({}) must be less than zero_days ({}).",
                c.recency.full_days, c.recency.zero_days
            ));
        }
        if c.usage_frequency.target_active_days == 0 || c.usage_frequency.target_active_days > 28 {
            return bad(
                "scorecard.components.usage_frequency.target_active_days must be between 1 and 28."
                    .into(),
            );
        }
        if c.adoption.target_users == 0 || c.adoption.target_features == 0 {
            return bad("scorecard.components.adoption targets must be at least 1.".into());
        }
        if !(c.email_engagement.target_engagement_rate > 0.0) {
            return bad(
                "scorecard.components.email_engagement.target_engagement_rate must be above 0."
                    .into(),
            );
        }
        let o = &c.outcome;
        if o.weight > 0.0 && o.features.is_empty() {
            return bad(format!(
                "scorecard.components.outcome.weight is {} but no outcome features are named; list the product_usage features that are outcomes in scorecard.components.outcome.features, or set the weight to 0.",
                o.weight
            ));
        }
        if o.window_days == 0 || o.window_days > 45 {
            return bad(format!(
                "scorecard.components.outcome.window_days is {}; it must be between 1 and 45 (the 90-day history must hold the window twice for `own_history`).",
                o.window_days
            ));
        }
        let expectations = std::iter::once(("expected".to_owned(), o.expected))
            .chain(o.expected_by_plan.iter().map(|(k, v)| (format!("expected_by_plan.{k}"), *v)))
            .chain(o.expected_by_arr.iter().map(|t| (format!("expected_by_arr (arr_from = {})", t.arr_from), t.expected)));
        for (name, v) in expectations {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!(
                    "scorecard.components.outcome.{name} is {v}; an expectation must be a number of outcomes above 0."
                ));
            }
        }
        if o.expected_by_arr.windows(2).any(|w| !(w[0].arr_from < w[1].arr_from)) {
            return bad("scorecard.components.outcome.expected_by_arr must be sorted by arr_from, lowest first, without repeats.".into());
        }
        let peers = &self.scorecard.peers;
        const PEERABLE: [&str; 5] = ["usage_frequency", "usage_trend", "adoption", "recency", "outcome"];
        if let Some(bad_name) = peers.components.iter().find(|n| !PEERABLE.contains(&n.as_str())) {
            return bad(format!(
                "scorecard.peers.components names \"{bad_name}\"; only usage and outcome components can be scored against peers: {}.",
                PEERABLE.join(", ")
            ));
        }
        if peers.period_days == 0 || peers.period_days > 31 {
            return bad(format!("scorecard.peers.period_days is {}; it must be between 1 and 31.", peers.period_days));
        }
        if peers.segment == PeerSegment::ArrBand
            && (peers.arr_bands.is_empty() || peers.arr_bands.windows(2).any(|w| !(w[0] < w[1])))
        {
            return bad("scorecard.peers.segment is \"arr_band\": list ascending band edges in scorecard.peers.arr_bands, e.g. [10000, 50000, 200000].".into());
        }
        let a = &self.alerts;
        let u = &a.usage_drop;
        if !(u.drop_ratio > 0.0 && u.drop_ratio < u.resolve_ratio && u.resolve_ratio <= 1.0) {
            return bad(format!(
                "alerts.usage_drop needs 0 < drop_ratio < resolve_ratio <= 1, but drop_ratio = {} and resolve_ratio = {}.",
                u.drop_ratio, u.resolve_ratio
            ));
        }
        if a.gone_dark.days == 0 {
            return bad("alerts.gone_dark.days must be at least 1.".into());
        }
        if !(-1.0..=1.0).contains(&a.negative_call.sentiment_at_most) {
            return bad(format!(
                "alerts.negative_call.sentiment_at_most is {}; sentiment runs from -1 to 1.",
                a.negative_call.sentiment_at_most
            ));
        }
        if a.renewal_at_risk.score_below > 100 {
            return bad("alerts.renewal_at_risk.score_below must be between 0 and 100.".into());
        }
        if a.score_drop.points == 0 || a.score_drop.resolve_points > a.score_drop.points {
            return bad(format!(
                "alerts.score_drop needs 0 < resolve_points <= points, but points = {} and resolve_points = {}.",
                a.score_drop.points, a.score_drop.resolve_points
            ));
        }
        if a.score_drop.window_days == 0 || a.score_drop.window_days > 31 {
            return bad("alerts.score_drop.window_days must be between 1 and 31 (score history keeps 31 days).".into());
        }
        if self.engine.partitions == 0 {
            return bad("engine.partitions must be at least 1.".into());
        }
        if self.engine.max_record_bytes < 256 {
            return bad("engine.max_record_bytes must be at least 256.".into());
        }
        if self.pipeline.batch_max_records == 0 {
            return bad("pipeline.batch_max_records must be at least 1.".into());
        }
        if !matches!(self.telemetry.log_format.as_str(), "human" | "json") {
            return bad(format!(
                "telemetry.log_format is \"{}\"; use \"human\" or \"json\".",
                self.telemetry.log_format
            ));
        }
        let k = &self.kafka;
        if self.mode == Mode::Kafka {
            if k.brokers.trim().is_empty() {
                return bad("kafka.brokers is empty; set it to the bootstrap servers, e.g. \"127.0.0.1:9092\".".into());
            }
            let inputs = k.input_topics.all();
            for (i, t) in inputs.iter().enumerate() {
                if t.is_empty() || inputs[..i].contains(t) {
                    return bad(format!(
                        "kafka.input_topics must name four different, non-empty topics; \"{t}\" is empty or repeated."
                    ));
                }
            }
            if k.changelog_topic.is_empty()
                || inputs.contains(&k.changelog_topic.as_str())
                || [&k.output_topics.health_scores, &k.output_topics.churn_alerts, &k.output_topics.dlq]
                    .contains(&&k.changelog_topic)
            {
                return bad(format!(
                    "kafka.changelog_topic is \"{}\"; it must be a topic of its own (not empty, not an input or output topic), e.g. \"rapport.changelog\".",
                    k.changelog_topic
                ));
            }
            if !matches!(k.assignment.as_str(), "cooperative" | "eager") {
                return bad(format!(
                    "kafka.assignment is \"{}\"; use \"cooperative\" or \"eager\".",
                    k.assignment
                ));
            }
            if !(6000..=1_800_000).contains(&k.session_timeout_ms) {
                return bad(format!(
                    "kafka.session_timeout_ms is {}; the brokers accept 6000 to 1800000 by default (45000 is Kafka's own default).",
                    k.session_timeout_ms
                ));
            }
            if !(k.outbox_low_water < k.outbox_high_water) {
                return bad(format!(
                    "kafka.outbox_low_water ({}) must be below kafka.outbox_high_water ({}).",
                    k.outbox_low_water, k.outbox_high_water
                ));
            }
        }
        if !matches!(k.output_format.as_str(), "json" | "protobuf") {
            return bad(format!(
                "kafka.output_format is \"{}\"; use \"json\" or \"protobuf\".",
                k.output_format
            ));
        }
        let own_keys = |key: &str| {
            matches!(
                key,
                "group.id"
                    | "group.instance.id"
                    | "partition.assignment.strategy"
                    | "session.timeout.ms"
                    | "bootstrap.servers"
            )
        };
        for (table, keys) in [("client", &k.client), ("producer", &k.producer), ("consumer", &k.consumer)] {
            for key in keys.keys() {
                if own_keys(key) {
                    return bad(format!(
                        "kafka.{table}.\"{key}\" is set by rapport itself; use the kafka section's own keys (brokers, group_id, group_instance_id, session_timeout_ms, assignment) instead."
                    ));
                }
                if table != "consumer" && PRODUCER_FIXED.contains(&key.as_str()) {
                    return bad(format!(
                        "kafka.{table}.\"{key}\" cannot be changed: rapport's outputs and changelog rely on an idempotent producer that waits for every in-sync replica, retries without a deadline and partitions as Java clients do. Remove the key."
                    ));
                }
                if table != "producer" && CONSUMER_FIXED.contains(&key.as_str()) {
                    return bad(format!(
                        "kafka.{table}.\"{key}\" cannot be changed: rapport keeps its input positions in its own store, with the state they belong to. Remove the key."
                    ));
                }
            }
        }
        if !self.telemetry.listen.is_empty()
            && self
                .telemetry
                .listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return bad(format!(
                "telemetry.listen is \"{}\", which is not an address such as 127.0.0.1:9464 (or \"\" to disable).",
                self.telemetry.listen
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        Config::load(Some(&p))
    }

    #[test]
    fn defaults_are_valid() {
        Config::defaults().validate().unwrap();
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = with("[engine]\npartitons = 3\n").unwrap_err().to_string();
        assert!(e.contains("partitons"), "{e}");
    }

    #[test]
    fn weights_must_sum_to_one() {
        let e = with("[scorecard.components.recency]\nweight = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sum to 1.400"), "{e}");
    }

    #[test]
    fn bands_must_be_ordered() {
        let e = with("[scorecard.bands]\ngreen = 30\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("yellow < green"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = with("[engine]\npartitions = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("partitions"), "{e}");
    }

    #[test]
    fn unrelated_rapport_variables_are_not_configuration() {
        // SAFETY: no other test reads these variables.
        unsafe { std::env::set_var("RAPPORT_TEST_SOMETHING_ELSE", "x") };
        let r = Config::load(None);
        unsafe { std::env::remove_var("RAPPORT_TEST_SOMETHING_ELSE") };
        r.unwrap();
    }

    #[test]
    fn producer_and_consumer_tables_refuse_what_the_guarantees_rest_on() {
        let c = with("[kafka.producer]\n\"linger.ms\" = \"20\"\n[kafka.consumer]\n\"fetch.min.bytes\" = \"1000\"\n").unwrap();
        assert_eq!(c.kafka.producer["linger.ms"], "20");
        assert_eq!(c.kafka.consumer["fetch.min.bytes"], "1000");
        for (toml, says) in [
            ("[kafka.producer]\n\"acks\" = \"1\"\n", "kafka.producer.\"acks\" cannot be changed"),
            ("[kafka.client]\n\"enable.idempotence\" = \"false\"\n", "kafka.client.\"enable.idempotence\" cannot be changed"),
            ("[kafka.consumer]\n\"enable.auto.commit\" = \"true\"\n", "kafka.consumer.\"enable.auto.commit\" cannot be changed"),
            ("[kafka.consumer]\n\"group.id\" = \"x\"\n", "use the kafka section's own keys"),
        ] {
            let e = with(toml).unwrap_err().to_string();
            assert!(e.contains(says), "{toml}: {e}");
        }
        // A consumer-only key in the producer's table is librdkafka's to judge, not refused here.
        with("[kafka.producer]\n\"fetch.min.bytes\" = \"1\"\n").unwrap();
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = Config::load(Some(Path::new("/nonexistent/rapport.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/rapport.toml"), "{e}");
    }
}
