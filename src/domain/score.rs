//! The health score: a weighted scorecard of components, each 0–100, and the drivers that
//! explain a change.
//!
//! A component with no data (no emails in 30 days, say) is left out and its weight is shared
//! among the others in proportion to their own weights, so a quiet channel neither rewards nor
//! punishes an account. Each component's *contribution* is its weight share times its value; the
//! contributions add up to the score, so the drivers of a change (differences of contributions)
//! add up to the change itself.

use std::fmt::Write as _;

use crate::config::{Bands, Config, OutcomeBaseline};
use crate::domain::peers::{self, PeerBook};
use crate::domain::event::{DAY_MS, day_of};
use crate::domain::fold::money;
use crate::domain::state::{active_since, buckets_in, rel_day};
use crate::pb::{AccountState, DayBucket};

/// The scorecard's components, in a fixed order (their index is stored in the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    UsageFrequency,
    UsageTrend,
    Adoption,
    EmailEngagement,
    CallSentiment,
    Commercial,
    Recency,
    Outcome,
}

/// How many components a scorecard has.
pub const N_COMPONENTS: usize = 8;

/// One value per component, `None` where it has no data, in [`COMPONENTS`] order.
pub type Values = [Option<f64>; N_COMPONENTS];

pub const COMPONENTS: [Component; N_COMPONENTS] = [
    Component::UsageFrequency,
    Component::UsageTrend,
    Component::Adoption,
    Component::EmailEngagement,
    Component::CallSentiment,
    Component::Commercial,
    Component::Recency,
    Component::Outcome,
];

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::UsageFrequency => "usage_frequency",
            Component::UsageTrend => "usage_trend",
            Component::Adoption => "adoption",
            Component::EmailEngagement => "email_engagement",
            Component::CallSentiment => "call_sentiment",
            Component::Commercial => "commercial",
            Component::Recency => "recency",
            Component::Outcome => "outcome",
        }
    }

    pub fn weight(self, cfg: &Config) -> f64 {
        let c = &cfg.scorecard.components;
        match self {
            Component::UsageFrequency => c.usage_frequency.weight,
            Component::UsageTrend => c.usage_trend.weight,
            Component::Adoption => c.adoption.weight,
            Component::EmailEngagement => c.email_engagement.weight,
            Component::CallSentiment => c.call_sentiment.weight,
            Component::Commercial => c.commercial.weight,
            Component::Recency => c.recency.weight,
            Component::Outcome => c.outcome.weight,
        }
    }

    /// The component's weight in `c`, to set it (calibration).
    pub fn weight_mut(self, c: &mut crate::config::Components) -> &mut f64 {
        match self {
            Component::UsageFrequency => &mut c.usage_frequency.weight,
            Component::UsageTrend => &mut c.usage_trend.weight,
            Component::Adoption => &mut c.adoption.weight,
            Component::EmailEngagement => &mut c.email_engagement.weight,
            Component::CallSentiment => &mut c.call_sentiment.weight,
            Component::Commercial => &mut c.commercial.weight,
            Component::Recency => &mut c.recency.weight,
            Component::Outcome => &mut c.outcome.weight,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Band {
    Red,
    Yellow,
    Green,
}

impl Band {
    pub fn of(score: u32, bands: &Bands) -> Band {
        if score >= bands.green {
            Band::Green
        } else if score >= bands.yellow {
            Band::Yellow
        } else {
            Band::Red
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Red => "red",
            Band::Yellow => "yellow",
            Band::Green => "green",
        }
    }
}

/// Usage figures the components and the usage-drop rule share.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageWindow {
    /// Usage events in the 7 days ending today.
    pub last7: f64,
    /// Weekly average over the 28 days before those 7.
    pub weekly_avg28: f64,
    /// Whether the account is old enough for the trailing window to be complete.
    pub has_baseline: bool,
}

pub fn usage_window(s: &AccountState, now_ms: i64) -> UsageWindow {
    windows(s, now_ms).usage
}

/// Every windowed sum the scorecard and the rules read, from one pass over the buckets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Windows {
    pub usage: UsageWindow,
    /// Days with usage in the last 28.
    pub active_days28: u32,
    /// Email activity in the last 30 days.
    pub emails_out30: u32,
    pub replies30: u32,
    pub clicks30: u32,
    pub opens30: u32,
    pub email_bad30: u32,
    /// Calls (and missed meetings) in the last 60 days.
    pub calls60: u32,
    pub missed60: u32,
    pub sentiment_milli60: i64,
    pub sentiment_n60: u32,
    pub risk_mentions30: u32,
}

pub fn windows(s: &AccountState, now_ms: i64) -> Windows {
    let today = day_of(now_ms);
    let mut sums = BucketSums::default();
    sums.add_all(s, &s.days, today);
    sums.windows(s, today)
}

/// The sums of [`Windows`] over some of an account's buckets, before the usage ratios.
#[derive(Debug, Clone, Copy, Default)]
struct BucketSums {
    w: Windows,
    last7: u32,
    prior: u32,
}

impl BucketSums {
    /// Adds `days` (a run of the account's buckets, in day order) as seen on `today`.
    fn add_all(&mut self, s: &AccountState, days: &[DayBucket], today: i32) {
        // Buckets are sorted by day: walk back from the newest and stop at the window's start,
        // rather than filtering all 90 days on every evaluation.
        for b in days.iter().rev() {
            let age = today - (s.base_day + b.day as i32);
            if age > 59 {
                break;
            }
            self.add(b, age);
        }
    }

    fn add(&mut self, b: &DayBucket, age: i32) {
        let w = &mut self.w;
        if !(0..=59).contains(&age) {
            return;
        }
        if age < 7 {
            self.last7 += b.usage_events;
        } else if age < 35 {
            self.prior += b.usage_events;
        }
        if age < 28 && b.usage_events > 0 {
            w.active_days28 += 1;
        }
        if age < 30 {
            w.emails_out30 += b.emails_out;
            w.replies30 += b.email_replies;
            w.clicks30 += b.email_clicks;
            w.opens30 += b.email_opens;
            w.email_bad30 += b.email_bad;
            w.risk_mentions30 += b.risk_mentions;
        }
        w.calls60 += b.calls + b.meetings_missed;
        w.missed60 += b.meetings_missed;
        w.sentiment_milli60 += b.sentiment_milli_sum as i64;
        w.sentiment_n60 += b.sentiment_n;
    }

    fn windows(self, s: &AccountState, today: i32) -> Windows {
        let mut w = self.w;
        w.usage = UsageWindow {
            last7: self.last7 as f64,
            weekly_avg28: self.prior as f64 / 4.0,
            has_baseline: s.first_seen_ms > 0 && day_of(s.first_seen_ms) <= today - 34,
        };
        w
    }
}

/// [`windows`] kept between evaluations of one account: the sums over every bucket but the
/// newest, for one day. After an event on the newest day (most of them) evaluation then adds
/// that one bucket instead of walking back 60 days. Lives as long as the account is in a batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowCache {
    /// (today, `base_day`, the newest bucket's offset, the bucket count) the sums were made for:
    /// a new day, a new bucket, a rebase or a prune changes one of them.
    key: Option<(i32, i32, u32, usize)>,
    older: BucketSums,
}

impl WindowCache {
    /// `windows(s, now_ms)`, from the kept sums when they still hold.
    pub fn windows(&mut self, s: &AccountState, now_ms: i64) -> Windows {
        let today = day_of(now_ms);
        let Some((newest, older)) = s.days.split_last() else {
            self.key = None;
            return windows(s, now_ms);
        };
        let key = (today, s.base_day, newest.day, s.days.len());
        if self.key != Some(key) {
            self.older = BucketSums::default();
            self.older.add_all(s, older, today);
            self.key = Some(key);
        }
        let mut sums = self.older;
        sums.add(newest, today - (s.base_day + newest.day as i32));
        sums.windows(s, today)
    }

    /// To be called after folding an event of `day`: an event before the newest bucket's day
    /// may have changed an older bucket, which the key cannot see.
    pub fn folded(&mut self, s: &AccountState, day: i32) {
        if s.days.last().is_none_or(|b| day < s.base_day + b.day as i32) {
            self.key = None;
        }
    }
}

/// The evaluated scorecard of one account at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub score: u32,
    /// Component values, `None` when the component has no data, in [`COMPONENTS`] order.
    pub values: Values,
}

impl Scored {
    /// The values as stored in the state: tenths of a point plus one, 0 for no data.
    pub fn stored(&self) -> Vec<u32> {
        self.values
            .iter()
            .map(|v| v.map_or(0, |v| (v * 10.0).round() as u32 + 1))
            .collect()
    }
}

/// Component values back from their stored form.
pub fn from_stored(stored: &[u32]) -> Values {
    let mut p = [None; N_COMPONENTS];
    for (i, v) in stored.iter().enumerate().take(N_COMPONENTS) {
        p[i] = (*v > 0).then(|| (*v - 1) as f64 / 10.0);
    }
    p
}

fn clamp01(x: f64) -> f64 {
    x.clamp(0.0, 1.0)
}

/// Computes each component's value; `None` when it has no data.
pub fn components(s: &AccountState, now_ms: i64, cfg: &Config, peers: Option<&PeerBook>) -> Values {
    components_with(s, &windows(s, now_ms), now_ms, cfg, peers)
}

/// The raw readings that peer-scored components rank (`None` for the others, or without data).
pub fn raw_readings(s: &AccountState, w: &Windows, now_ms: i64, cfg: &Config) -> Values {
    let mut out = [None; N_COMPONENTS];
    if !cfg.scorecard.peers.enabled() {
        return out;
    }
    let today = day_of(now_ms);
    for (i, c) in COMPONENTS.iter().enumerate() {
        if !peers::peer_scored(*c, cfg) {
            continue;
        }
        out[i] = match c {
            Component::UsageFrequency => (s.last_usage_ms > 0).then_some(w.active_days28 as f64),
            Component::UsageTrend => (s.last_usage_ms > 0
                && w.usage.has_baseline
                && w.usage.weekly_avg28 > 0.0)
                .then(|| w.usage.last7 / w.usage.weekly_avg28),
            Component::Adoption => (s.last_usage_ms > 0).then(|| {
                (active_since(&s.user_day, rel_day(today - 29))
                    + active_since(&s.feature_day, rel_day(today - 29))) as f64
            }),
            Component::Recency => (s.last_usage_ms > 0)
                .then(|| -((now_ms - s.last_usage_ms).max(0) as f64 / DAY_MS as f64)),
            Component::Outcome => (!cfg.scorecard.components.outcome.features.is_empty())
                .then(|| outcome_window(s, now_ms, cfg))
                .filter(|o| o.complete)
                .map(|o| o.count as f64),
            _ => None,
        };
    }
    out
}

pub fn components_with(
    s: &AccountState,
    w: &Windows,
    now_ms: i64,
    cfg: &Config,
    peers: Option<&PeerBook>,
) -> Values {
    let mut out = absolute_components(s, w, now_ms, cfg);
    if let Some(book) = peers {
        rank_against_peers(&mut out, s, &raw_readings(s, w, now_ms, cfg), book, cfg);
    }
    out
}

/// Replaces the values of peer-scored components that have `raw` readings and a reference by
/// the account's percentile among its segment's accounts.
pub fn rank_against_peers(
    values: &mut Values,
    s: &AccountState,
    raw: &Values,
    book: &PeerBook,
    cfg: &Config,
) {
    for (i, c) in COMPONENTS.iter().enumerate() {
        if let (Some(x), Some(l)) = (raw[i], book.levels(s, *c, cfg)) {
            values[i] = Some((100.0 * l.rank(x)).clamp(0.0, 100.0));
        }
    }
}

/// The values of every component against its own targets (no peers).
pub fn absolute_components(s: &AccountState, w: &Windows, now_ms: i64, cfg: &Config) -> Values {
    let c = &cfg.scorecard.components;
    let today = day_of(now_ms);
    let mut out = [None; N_COMPONENTS];

    if s.last_usage_ms > 0 {
        out[0] = Some(
            100.0 * clamp01(w.active_days28 as f64 / c.usage_frequency.target_active_days as f64),
        );
        if w.usage.has_baseline && w.usage.weekly_avg28 > 0.0 {
            // Full marks at or above the baseline, zero at a fifth of it.
            let r = w.usage.last7 / w.usage.weekly_avg28;
            out[1] = Some(100.0 * clamp01((r - 0.2) / 0.8));
        }
        let users = active_since(&s.user_day, rel_day(today - 29)) as f64;
        let features = active_since(&s.feature_day, rel_day(today - 29)) as f64;
        out[2] = Some(
            50.0 * clamp01(users / c.adoption.target_users as f64)
                + 50.0 * clamp01(features / c.adoption.target_features as f64),
        );
        let idle_days = (now_ms - s.last_usage_ms).max(0) as f64 / DAY_MS as f64;
        let (full, zero) = (c.recency.full_days as f64, c.recency.zero_days as f64);
        out[6] = Some(100.0 * clamp01((zero - idle_days) / (zero - full)));
    }

    let engaged = w.replies30 as f64 + w.clicks30 as f64 / 2.0 + w.opens30 as f64 / 4.0;
    // A rate over one or two emails says little: judge it from three, or on trouble.
    if w.emails_out30 >= 3 || w.replies30 > 0 || w.email_bad30 > 0 {
        let rate = engaged / w.emails_out30.max(1) as f64;
        let base = 100.0 * clamp01(rate / c.email_engagement.target_engagement_rate);
        out[3] = Some((base - 20.0 * w.email_bad30 as f64).max(0.0));
    }

    if w.calls60 > 0 || w.sentiment_n60 > 0 {
        let avg = if w.sentiment_n60 > 0 {
            w.sentiment_milli60 as f64 / w.sentiment_n60 as f64 / 1000.0
        } else {
            0.4
        };
        let base = (avg + 1.0) * 50.0;
        out[4] = Some(
            (base - 10.0 * w.missed60 as f64 - 15.0 * w.risk_mentions30 as f64).clamp(0.0, 100.0),
        );
    }

    if s.has_arr {
        let value = if s.arr <= 0.0 {
            0.0
        } else {
            let nrr = net_retention(s, now_ms).unwrap_or(1.0);
            // NRR 110% or more earns full marks, 70% or less nothing.
            let mut v = 100.0 * clamp01((nrr - 0.7) / 0.4);
            if s.open_deals
                .iter()
                .any(|d| d.kind == "contraction" || d.kind == "cancellation")
            {
                v -= 25.0;
            }
            v
        };
        out[5] = Some(value.max(0.0));
    }

    if !c.outcome.features.is_empty()
        && let Some(e) = outcome_expectation(s, &outcome_window(s, now_ms, cfg), cfg)
    {
        out[7] = Some(100.0 * clamp01(e.count as f64 / e.expected));
    }
    out
}

/// Outcome events in the component's window and in the earlier days of the kept history.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutcomeWindow {
    pub count: u32,
    pub earlier: u32,
    /// Days of history before the window (0 for an account younger than the window).
    pub earlier_days: i32,
    /// Whether the account is at least as old as the window.
    pub complete: bool,
}

pub fn outcome_window(s: &AccountState, now_ms: i64, cfg: &Config) -> OutcomeWindow {
    let window = cfg.scorecard.components.outcome.window_days as i32;
    let today = day_of(now_ms);
    let mut w = OutcomeWindow::default();
    if s.first_seen_ms <= 0 {
        return w;
    }
    let age_days = today - day_of(s.first_seen_ms) + 1;
    w.complete = age_days >= window;
    w.earlier_days = (age_days.min(crate::domain::state::BUCKET_DAYS) - window).max(0);
    for b in s.days.iter().rev() {
        let age = today - (s.base_day + b.day as i32);
        if age < 0 {
            continue;
        }
        if age < window {
            w.count += b.outcome_events;
        } else {
            w.earlier += b.outcome_events;
        }
    }
    w
}

/// What an account's outcome count was measured against.
#[derive(Debug, Clone, PartialEq)]
pub enum Basis {
    Plan(String),
    ArrTier(f64),
    Default,
    /// Its own earlier rate, over this many days.
    History(i32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub count: u32,
    /// Outcomes per window that earn full marks (above 0).
    pub expected: f64,
    pub basis: Basis,
}

/// The expectation an account's outcomes are measured against; `None` while the account is
/// younger than the window (or, for `own_history`, than two windows, or with no earlier outcome).
pub fn outcome_expectation(
    s: &AccountState,
    w: &OutcomeWindow,
    cfg: &Config,
) -> Option<Expectation> {
    let o = &cfg.scorecard.components.outcome;
    if !w.complete {
        return None;
    }
    let (expected, basis) = match o.baseline {
        OutcomeBaseline::OwnHistory => {
            if w.earlier_days < o.window_days as i32 || w.earlier == 0 {
                return None;
            }
            let rate = w.earlier as f64 / w.earlier_days as f64 * o.window_days as f64;
            (rate, Basis::History(w.earlier_days))
        }
        OutcomeBaseline::Expectation => {
            if let Some(e) = o.expected_by_plan.get(&s.plan) {
                (*e, Basis::Plan(s.plan.clone()))
            } else if let Some(t) = o
                .expected_by_arr
                .iter()
                .rev()
                .find(|t| s.has_arr && s.arr >= t.arr_from)
            {
                (t.expected, Basis::ArrTier(t.arr_from))
            } else {
                (o.expected, Basis::Default)
            }
        }
    };
    Some(Expectation {
        count: w.count,
        expected,
        basis,
    })
}

/// ARR in force `days` before `now` (the first known ARR for younger accounts).
pub fn arr_at(s: &AccountState, at_ms: i64) -> Option<f64> {
    // The changes are kept in time order (the fold sorts them), so the one in force is found
    // by bisection: this runs at every evaluation, over up to `MAX_ARR_CHANGES` changes.
    let after = s.arr_changes.partition_point(|c| c.at_ms <= at_ms);
    after
        .checked_sub(1)
        .map_or(s.arr_changes.first(), |i| s.arr_changes.get(i))
        .map(|c| c.arr_after)
}

/// Net revenue retention against a year ago.
pub fn net_retention(s: &AccountState, now_ms: i64) -> Option<f64> {
    let ago = arr_at(s, now_ms - 365 * DAY_MS)?;
    (ago > 0.0).then(|| s.arr / ago)
}

/// Gross revenue retention against a year ago: a year-ago ARR less every decrease since.
pub fn gross_retention(s: &AccountState, now_ms: i64) -> Option<f64> {
    let from = now_ms - 365 * DAY_MS;
    let ago = arr_at(s, from)?;
    if ago <= 0.0 {
        return None;
    }
    let mut prev = ago;
    let mut lost = 0.0;
    for c in s.arr_changes.iter().filter(|c| c.at_ms > from) {
        if c.arr_after < prev {
            lost += prev - c.arr_after;
        }
        prev = c.arr_after;
    }
    Some(((ago - lost) / ago).max(0.0))
}

/// The weighted score with proportional redistribution; `None` until at least
/// `scorecard.min_components` components have data (one reading is not a health score).
pub fn score(values: &Values, cfg: &Config) -> Option<Scored> {
    if values.iter().filter(|v| v.is_some()).count() < cfg.scorecard.min_components.max(1) as usize
    {
        return None;
    }
    let total: f64 = COMPONENTS
        .iter()
        .zip(values)
        .filter_map(|(c, v)| v.map(|_| c.weight(cfg)))
        .sum();
    if total <= 0.0 {
        return None;
    }
    let raw: f64 = contributions(values, cfg).iter().sum();
    Some(Scored {
        score: raw.round().clamp(0.0, 100.0) as u32,
        values: *values,
    })
}

/// Each component's contribution in points (0 for a component without data).
pub fn contributions(values: &Values, cfg: &Config) -> [f64; N_COMPONENTS] {
    let total: f64 = COMPONENTS
        .iter()
        .zip(values)
        .filter_map(|(c, v)| v.map(|_| c.weight(cfg)))
        .sum();
    let mut out = [0.0; N_COMPONENTS];
    if total > 0.0 {
        for (i, (c, v)) in COMPONENTS.iter().zip(values).enumerate() {
            if let Some(v) = v {
                out[i] = c.weight(cfg) / total * v;
            }
        }
    }
    out
}

/// One reason a score moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Driver {
    pub signal: &'static str,
    /// Points, rounded to one decimal; negative pulls the score down.
    pub impact: f64,
    pub detail: String,
}

/// Up to three drivers of the move from `previous` (stored component values) to `now`.
/// For a first score, the drivers are the components that cost it the most points.
pub fn drivers(
    s: &AccountState,
    now_ms: i64,
    previous: Option<&Values>,
    current: &Values,
    cfg: &Config,
    peers: Option<&PeerBook>,
) -> Vec<Driver> {
    let now_c = contributions(current, cfg);
    let impacts: Vec<(usize, f64)> = match previous {
        Some(prev) => {
            let prev_c = contributions(prev, cfg);
            (0..N_COMPONENTS).map(|i| (i, now_c[i] - prev_c[i])).collect()
        }
        None => {
            let total: f64 = COMPONENTS
                .iter()
                .zip(current)
                .filter_map(|(c, v)| v.map(|_| c.weight(cfg)))
                .sum();
            (0..N_COMPONENTS)
                .filter_map(|i| {
                    current[i].map(|v| (i, COMPONENTS[i].weight(cfg) / total * (v - 100.0)))
                })
                .collect()
        }
    };
    let mut ranked: Vec<(usize, f64)> = impacts
        .into_iter()
        .filter(|(_, x)| x.abs() >= 0.05)
        .collect();
    // Largest moves first; the component order breaks ties so the output is deterministic.
    ranked.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    ranked
        .into_iter()
        .take(3)
        .map(|(i, impact)| Driver {
            signal: COMPONENTS[i].name(),
            impact: (impact * 10.0).round() / 10.0,
            detail: explain_with_peers(COMPONENTS[i], s, now_ms, cfg, peers),
        })
        .collect()
}

/// [`explain`], plus where the account stands among its peers for a peer-scored component.
pub fn explain_with_peers(
    c: Component,
    s: &AccountState,
    now_ms: i64,
    cfg: &Config,
    peers: Option<&PeerBook>,
) -> String {
    let mut t = explain(c, s, now_ms, cfg);
    let Some(book) = peers.filter(|_| peers::peer_scored(c, cfg)) else {
        return t;
    };
    let seg = peers::segment_of(s, cfg);
    let raw = raw_readings(s, &windows(s, now_ms), now_ms, cfg)[c as usize];
    match (raw, book.levels(s, c, cfg)) {
        (Some(x), Some(l)) => {
            let pct = (100.0 * l.rank(x)).round() as u32;
            let med = l.median();
            let med = if c == Component::Recency { -med } else { med };
            let _ = write!(
                t,
                " That is the {} percentile of {} accounts ({}; median {:.1}).",
                ordinal(pct),
                seg,
                segment_word(cfg),
                med
            );
        }
        _ => {
            let _ = write!(
                t,
                " Too few {seg} accounts to compare with yet: scored on its own targets."
            );
        }
    }
    t
}

fn segment_word(cfg: &Config) -> &'static str {
    match cfg.scorecard.peers.segment {
        crate::config::PeerSegment::Plan => "same plan",
        crate::config::PeerSegment::Industry => "same industry",
        crate::config::PeerSegment::ArrBand => "same ARR band",
    }
}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// A sentence about a component's current reading, with the figures behind it.
pub fn explain(c: Component, s: &AccountState, now_ms: i64, cfg: &Config) -> String {
    let today = day_of(now_ms);
    let k = &cfg.scorecard.components;
    match c {
        Component::UsageFrequency => {
            let active = windows(s, now_ms).active_days28;
            format!(
                "Active on {active} of the last 28 days (target {}).",
                k.usage_frequency.target_active_days
            )
        }
        Component::UsageTrend => {
            let w = usage_window(s, now_ms);
            if !w.has_baseline || w.weekly_avg28 <= 0.0 {
                return "Not enough usage history for a trend yet.".into();
            }
            let change = (w.last7 / w.weekly_avg28 - 1.0) * 100.0;
            let dir = if change < 0.0 { "down" } else { "up" };
            format!(
                "Usage {dir} {:.0}% against its 28-day average ({:.0} events in the last 7 days vs {:.0} a week before).",
                change.abs(),
                w.last7,
                w.weekly_avg28
            )
        }
        Component::Adoption => format!(
            "{} active users and {} features used in the last 30 days (targets {} and {}).",
            active_since(&s.user_day, rel_day(today - 29)),
            active_since(&s.feature_day, rel_day(today - 29)),
            k.adoption.target_users,
            k.adoption.target_features
        ),
        Component::EmailEngagement => {
            let (mut sent, mut replies, mut clicks, mut bad) = (0, 0, 0, 0);
            for b in buckets_in(s, today - 29, today) {
                sent += b.emails_out;
                replies += b.email_replies;
                clicks += b.email_clicks;
                bad += b.email_bad;
            }
            let mut t = format!(
                "{replies} replies and {clicks} clicks to {sent} emails in the last 30 days"
            );
            if bad > 0 {
                t.push_str(&format!("; {bad} bounced, unsubscribed or complained"));
            }
            t.push('.');
            t
        }
        Component::CallSentiment => {
            let (mut sum, mut n, mut calls) = (0i64, 0u32, 0u32);
            for b in buckets_in(s, today - 59, today) {
                sum += b.sentiment_milli_sum as i64;
                n += b.sentiment_n;
                calls += b.calls;
            }
            let mut t = if n > 0 {
                format!(
                    "Average call sentiment {:+.2} over {calls} calls in the last 60 days",
                    sum as f64 / n as f64 / 1000.0
                )
            } else {
                format!("{calls} calls in the last 60 days, no sentiment recorded")
            };
            let recent: Vec<&str> = s
                .risk_topics
                .iter()
                .zip(&s.risk_topic_ms)
                .filter(|(_, t)| **t >= now_ms - 30 * DAY_MS)
                .map(|(x, _)| x.as_str())
                .collect();
            if !recent.is_empty() {
                t.push_str(&format!("; risk topics: {}", recent.join(", ")));
            }
            t.push('.');
            t
        }
        Component::Commercial => {
            let mut t = format!("ARR {}", money(s.arr));
            if let Some(nrr) = net_retention(s, now_ms) {
                t.push_str(&format!(
                    ", net revenue retention {:.0}% against a year ago",
                    nrr * 100.0
                ));
            }
            if let Some(d) = s
                .open_deals
                .iter()
                .find(|d| d.kind == "contraction" || d.kind == "cancellation")
            {
                t.push_str(&format!("; open {} deal {}", d.kind, d.deal_id));
            }
            t.push('.');
            t
        }
        Component::Outcome => {
            let o = &k.outcome;
            let Some(e) = outcome_expectation(s, &outcome_window(s, now_ms, cfg), cfg) else {
                return format!("Not enough history to judge {} yet.", o.label);
            };
            let head = format!(
                "{} {} in the last {} days",
                e.count, o.label, o.window_days
            );
            let fig = |x: f64| {
                if (x - x.round()).abs() < 0.05 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.1}")
                }
            };
            match e.basis {
                Basis::Plan(p) => format!(
                    "{head}; accounts on the {p} plan are expected to reach {}.",
                    fig(e.expected)
                ),
                Basis::ArrTier(from) => format!(
                    "{head}; accounts with ARR from {} are expected to reach {}.",
                    money(from),
                    fig(e.expected)
                ),
                Basis::Default => format!("{head}; the expectation is {}.", fig(e.expected)),
                Basis::History(days) => format!(
                    "{head}, against {} per {} days over the {days} days before.",
                    fig(e.expected),
                    o.window_days
                ),
            }
        }
        Component::Recency => {
            let days = (now_ms - s.last_usage_ms).max(0) / DAY_MS;
            match days {
                0 => "Product used today.".into(),
                1 => "Last product usage 1 day ago.".into(),
                d => format!("Last product usage {d} days ago."),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The kept sums give what a walk over every bucket gives, after each event of a
        /// sequence with late events (older buckets changed, buckets inserted before the
        /// newest, rebases), days skipped (prunes) and evaluations at later moments (timers).
        #[test]
        fn kept_window_sums_equal_a_full_walk(
            steps in proptest::collection::vec((-100i64..4, 0u8..4, 0i64..3), 1..120),
        ) {
            use crate::domain::event::*;
            let cfg = Config::defaults();
            let t0 = 1_700_000_000_000i64;
            let mut s = crate::domain::state::new_state("a", t0);
            let mut cache = WindowCache::default();
            let mut clock = t0;
            for (i, (days, kind, later)) in steps.into_iter().enumerate() {
                let t = clock + days * DAY_MS + (i as i64 % 7) * 3_600_000;
                clock = clock.max(t);
                let body = match kind {
                    0 => EventBody::ProductUsage(ProductUsage {
                        user_id: Some(format!("u{}", i % 5)),
                        feature: Some("reports".into()),
                        quantity: 1.0,
                    }),
                    1 => EventBody::Email(Email {
                        contact_id: None,
                        direction: None,
                        action: if i % 2 == 0 { EmailAction::Sent } else { EmailAction::Replied },
                        campaign: None,
                    }),
                    2 => EventBody::Call(Call {
                        contact_id: None,
                        direction: None,
                        duration_s: None,
                        outcome: Some(CallOutcome::MeetingNoShow),
                        sentiment: Some(0.5),
                        topics: vec![],
                    }),
                    _ => EventBody::Email(Email {
                        contact_id: None,
                        direction: None,
                        action: EmailAction::Bounced,
                        campaign: None,
                    }),
                };
                let ev = Event { event_id: format!("e{i}"), account_id: "a".into(), occurred_at_ms: t, body };
                crate::domain::fold::fold(&mut s, &ev, t < clock - 3_600_000, &cfg);
                cache.folded(&s, day_of(t));
                for now in [clock, clock + later * DAY_MS] {
                    proptest::prop_assert_eq!(
                        format!("{:?}", cache.windows(&s, now)),
                        format!("{:?}", windows(&s, now)),
                        "after event {} at {} (clock {}), evaluated at {}", i, t, clock, now
                    );
                }
            }
        }

        /// Bisection finds the change a scan from the oldest would: the last one at or before
        /// the moment, else the first, ties included.
        #[test]
        fn arr_at_is_the_last_change_at_or_before_the_moment(
            mut times in proptest::collection::vec(0i64..40, 0..30),
            at in -5i64..45,
        ) {
            times.sort();
            let mut s = AccountState::default();
            s.arr_changes = times
                .iter()
                .enumerate()
                .map(|(i, &t)| crate::pb::ArrChange { at_ms: t, arr_after: i as f64 })
                .collect();
            let scanned = s
                .arr_changes
                .iter()
                .rfind(|c| c.at_ms <= at)
                .or(s.arr_changes.first())
                .map(|c| c.arr_after);
            proptest::prop_assert_eq!(arr_at(&s, at), scanned);
        }
    }

    #[test]
    fn redistribution_keeps_scale_and_contributions_sum() {
        let cfg = Config::defaults();
        let mut v = [None; N_COMPONENTS];
        v[0] = Some(80.0);
        v[5] = Some(40.0);
        let s = score(&v, &cfg).unwrap();
        // weights 0.20 and 0.15 → 80*0.2/0.35 + 40*0.15/0.35 = 62.86
        assert_eq!(s.score, 63);
        let total: f64 = contributions(&v, &cfg).iter().sum();
        assert!((total - 62.857).abs() < 0.01);
        assert!(score(&[None; N_COMPONENTS], &cfg).is_none());
    }

    #[test]
    fn drivers_sum_to_the_change() {
        let cfg = Config::defaults();
        let s = crate::domain::state::new_state("a", 0);
        let prev = [
            Some(90.0),
            Some(90.0),
            Some(80.0),
            None,
            None,
            Some(75.0),
            Some(100.0),
            None,
        ];
        let now = [
            Some(50.0),
            Some(20.0),
            Some(70.0),
            None,
            Some(30.0),
            Some(75.0),
            Some(60.0),
            None,
        ];
        let d = drivers(&s, 0, Some(&prev), &now, &cfg, None);
        assert_eq!(d[0].signal, "usage_trend");
        assert!(d.iter().all(|x| x.impact < 0.0));
        let all: f64 = contributions(&now, &cfg).iter().sum::<f64>()
            - contributions(&prev, &cfg).iter().sum::<f64>();
        assert!(all < -20.0);
    }

    #[test]
    fn bands() {
        let b = Config::defaults().scorecard.bands;
        assert_eq!(Band::of(70, &b), Band::Green);
        assert_eq!(Band::of(69, &b), Band::Yellow);
        assert_eq!(Band::of(40, &b), Band::Yellow);
        assert_eq!(Band::of(39, &b), Band::Red);
    }
}
