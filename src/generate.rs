//! Synthetic customer portfolios: deterministic event streams for `rapport demo`, `rapport
//! generate`, the tests and the benchmarks, plus one malformed record per dead-letter reason.
//!
//! A [`Portfolio`] is a set of accounts, each given an [`Archetype`] (healthy, goes dark, loses
//! its renewal, …) that decides how its usage, email, call and deal events evolve over the
//! timeline. [`Portfolio::events`] yields every event of every account in event-time order, one
//! day at a time, so memory is bounded by one day's events however long the timeline is.
//!
//! Determinism: the same [`GenSpec`] gives the same events, byte for byte. Every random choice
//! comes from a ChaCha8 stream seeded from `(seed, account)` (the account's profile) or
//! `(seed, account, day)` (that account's events of that day), never from a clock or a shared
//! stream, so an account-day looks the same whatever else is generated around it.
//!
//! Shapes are chosen so the engine's alert rules separate the archetypes cleanly: the first 45
//! days of every established account are normal (the 28-day usage baseline exists before anything
//! goes wrong), day-to-day usage noise is small enough that a healthy account never halves its
//! weekly volume, and only the archetypes that are meant to raise an alert produce its signal
//! (risk topics, bounces, lost renewals, …).

use chrono::NaiveDate;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::domain::event::{
    Call, CallOutcome, DAY_MS, Deal, DealKind, DealStage, Direction, Email, EmailAction, Event,
    EventBody, ProductUsage,
};

/// The UTC day number of 2026-07-01, the default first day of the timeline.
pub const DEFAULT_START_DAY: i32 = match NaiveDate::from_ymd_opt(2026, 7, 1) {
    Some(d) => d.to_epoch_days(),
    None => panic!("2026-07-01 is a valid date"),
};

/// Days at the start of the timeline during which every established account behaves normally,
/// so that trailing baselines (28 days of usage before the last 7) exist before any signal.
pub const NORMAL_DAYS: u32 = 45;

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;
const SECOND_MS: i64 = 1_000;

/// How an account behaves over the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Archetype {
    Healthy,
    Expanding,
    SlowDecline,
    SuddenDrop,
    GoesDark,
    NegativeCall,
    EmailTrouble,
    LostRenewal,
    Newcomer,
}

impl Archetype {
    pub const ALL: [Archetype; 9] = [
        Archetype::Healthy,
        Archetype::Expanding,
        Archetype::SlowDecline,
        Archetype::SuddenDrop,
        Archetype::GoesDark,
        Archetype::NegativeCall,
        Archetype::EmailTrouble,
        Archetype::LostRenewal,
        Archetype::Newcomer,
    ];

    /// Share of a portfolio, in thousandths (sums to 1000), in the order of [`Archetype::ALL`].
    const MIX_PER_MILLE: [usize; 9] = [550, 80, 100, 60, 60, 50, 40, 30, 30];

    pub fn name(self) -> &'static str {
        match self {
            Archetype::Healthy => "healthy",
            Archetype::Expanding => "expanding",
            Archetype::SlowDecline => "slow_decline",
            Archetype::SuddenDrop => "sudden_drop",
            Archetype::GoesDark => "goes_dark",
            Archetype::NegativeCall => "negative_call",
            Archetype::EmailTrouble => "email_trouble",
            Archetype::LostRenewal => "lost_renewal",
            Archetype::Newcomer => "newcomer",
        }
    }

    /// The inverse of [`Archetype::name`].
    pub fn parse(s: &str) -> Option<Archetype> {
        Archetype::ALL.into_iter().find(|a| a.name() == s)
    }

    pub fn description(self) -> &'static str {
        match self {
            Archetype::Healthy => "steady usage, engaged contacts, positive calls; renews",
            Archetype::Expanding => {
                "usage, users and features grow; an expansion deal closes mid-timeline"
            }
            Archetype::SlowDecline => {
                "usage and active users decline steadily to about 30% by the end"
            }
            Archetype::SuddenDrop => {
                "steady, then usage falls to about 10% from a day in the second half"
            }
            Archetype::GoesDark => {
                "steady, then no product usage and no email replies at all, at least 20 days before the end"
            }
            Archetype::NegativeCall => {
                "a call with sentiment around -0.7 about pricing or a competitor; usage slightly down"
            }
            Archetype::EmailTrouble => {
                "emails bounce, a contact unsubscribes and may complain in the second half"
            }
            Archetype::LostRenewal => {
                "usage declines from mid-timeline; the renewal is lost or closes with a contraction"
            }
            Archetype::Newcomer => {
                "signs up during the first half of the timeline and ramps up through onboarding"
            }
        }
    }
}

impl std::fmt::Display for Archetype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenSpec {
    /// Number of accounts in the portfolio.
    pub accounts: usize,
    /// Length of the timeline in days.
    pub days: u32,
    /// UTC day number of the first day.
    pub start_day: i32,
    /// Everything random derives from this.
    pub seed: u64,
    /// Mean product_usage events per healthy account per day.
    pub usage_per_day: f64,
    /// Fraction of events re-emitted with the same `event_id` and `occurred_at`, as an
    /// at-least-once producer would. The copy comes later in the stream but, as the stream is in
    /// event-time order, right after its original (or after other events of the same
    /// millisecond). Duplicates are drawn after everything else, so this rate changes nothing
    /// but the copies.
    pub duplicate_rate: f64,
}

impl Default for GenSpec {
    fn default() -> GenSpec {
        GenSpec {
            accounts: 1000,
            days: 120,
            start_day: DEFAULT_START_DAY,
            seed: 42,
            usage_per_day: 4.0,
            duplicate_rate: 0.002,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed vocabularies. Events carry these as owned Strings (the Event type owns its fields); the
// generator itself only stores indexes into these tables.

/// Product features an account may use; the quantity bound is per event.
const FEATURES: [(&str, u16); 16] = [
    ("dashboards.view", 1),
    ("reports.export", 3),
    ("reports.schedule", 1),
    ("alerts.create", 1),
    ("api.call", 10),
    ("integrations.sync", 1),
    ("search.query", 1),
    ("workflows.run", 1),
    ("users.invite", 1),
    ("comments.create", 1),
    ("files.upload", 5),
    ("segments.build", 1),
    ("notebooks.edit", 1),
    ("billing.view", 1),
    ("settings.update", 1),
    ("sso.login", 1),
];

const MAX_FEATURES: usize = 12;
const MAX_USERS: usize = 15;
const USER_IDS: [&str; MAX_USERS] = [
    "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9", "u10", "u11", "u12", "u13", "u14", "u15",
];
const CONTACT_IDS: [&str; 6] = ["c1", "c2", "c3", "c4", "c5", "c6"];

const CAMPAIGNS: [&str; 10] = [
    "onboarding",
    "renewal-reminder",
    "health-check",
    "product-update",
    "qbr-invite",
    "webinar-invite",
    "feature-announcement",
    "newsletter",
    "customer-survey",
    "training-invite",
];
const CAMPAIGN_ONBOARDING: u8 = 0;
const CAMPAIGN_RENEWAL: u8 = 1;
const CAMPAIGN_HEALTH_CHECK: u8 = 2;
/// Campaigns from this index on are the everyday ones.
const CAMPAIGN_GENERAL: u8 = 3;

/// Call topic sets. Index 0 is "no topics"; from `BENIGN_FROM` to `RISK_FROM` are ordinary
/// conversations; from `RISK_FROM` on, each set holds a topic the negative-call rule treats as a
/// risk.
const TOPIC_SETS: [&[&str]; 17] = [
    &[],
    &["onboarding"],
    &["roadmap"],
    &["training"],
    &["integration", "api"],
    &["support"],
    &["qbr"],
    &["feature_request"],
    &["renewal"],
    &["reporting", "dashboards"],
    &["success_plan"],
    &["renewal", "budget"],
    &["pricing", "competitor"],
    &["cancellation", "pricing"],
    &["competitor", "downgrade"],
    &["churn", "budget"],
    &["pricing", "downgrade", "competitor"],
];
const BENIGN_FROM: u8 = 1;
const RISK_FROM: u8 = 12;

/// Open stages of a renewal, by days left to its close date: > 120, > 60, > 21, else.
const OPEN_STAGES: [&str; 4] = ["discovery", "proposal", "negotiation", "commit"];

// ---------------------------------------------------------------------------------------------
// Seeds.

const TAG_MIX: u64 = 0x6d69_7801;
const TAG_PROFILE: u64 = 0x7072_6f66;
const TAG_DAY: u64 = 0x6461_7973;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for one independent random stream, from the portfolio seed and a coordinate.
fn derive(seed: u64, tag: u64, a: u64, b: u64) -> u64 {
    splitmix(splitmix(splitmix(seed ^ tag) ^ a) ^ b.rotate_left(32))
}

fn rng_for(seed: u64, tag: u64, a: u64, b: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, tag, a, b))
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn round_to(x: f64, step: f64) -> f64 {
    (x / step).round() * step
}

// ---------------------------------------------------------------------------------------------
// Account profiles: everything about an account that does not change day to day.

/// How the renewal that closes inside the timeline ends.
#[derive(Debug, Clone, Copy)]
enum RenewalEnd {
    /// Closed won, at the ARR of the day times this uplift.
    Won { uplift: f64 },
    /// Closed lost.
    Lost,
    /// Closed won at a reduced amount, with a contraction deal closed won for the difference.
    Contracted { contraction: f64 },
}

#[derive(Debug, Clone)]
struct Profile {
    archetype: Archetype,
    /// First active day (offset into the timeline); 0 for established accounts.
    start: i32,
    /// Usage multiplier around 1 (bigger and smaller teams).
    activity: f64,
    users: u8,
    user_cap: u8,
    features: [u8; MAX_FEATURES],
    n_features: u8,
    feature_cap: u8,
    contacts: u8,
    /// Where the account's working window opens, in ms into the UTC day (06:00–14:00).
    work_ms: i64,
    /// Time of day of the new-business deal on the start day.
    nb_ms: i64,
    /// ARR at the start of the timeline.
    arr: f64,
    /// Close day (offset; <= start) of the new-business deal.
    nb_close: i32,
    /// Close day (offset) of the renewal; may lie beyond the timeline.
    renewal_close: i32,
    renewal_end: RenewalEnd,
    /// The archetype's turning point (offset), `i32::MAX` when it has none.
    onset: i32,
    /// Expanding: expansion opened / closed. EmailTrouble: unsubscribe / complaint day.
    day2: i32,
    day3: i32,
    /// Expanding: the expansion's ARR.
    expansion: f64,
}

/// One day's shape of an account's behaviour.
struct Shape {
    /// Multiplier of the usage rate.
    usage: f64,
    users: usize,
    features: usize,
    /// Multiplier of email open/click/reply rates; 0 means no engagement at all.
    engagement: f64,
    /// Mean call sentiment.
    mood: f64,
    /// Dark: only unanswered calls.
    dark: bool,
}

fn progress(d: i32, from: i32, to: i32) -> f64 {
    if to <= from {
        return if d >= from { 1.0 } else { 0.0 };
    }
    ((d - from) as f64 / (to - from) as f64).clamp(0.0, 1.0)
}

impl Profile {
    fn shape(&self, d: i32, days: i32) -> Shape {
        let users = self.users as f64;
        let nf = self.n_features as f64;
        let after = d >= self.onset;
        let mut s = Shape {
            usage: 1.0,
            users: self.users as usize,
            features: self.n_features as usize,
            engagement: 1.0,
            mood: 0.5,
            dark: false,
        };
        let decline = |s: &mut Shape, f: f64| {
            s.usage = f;
            s.users = (users * f).round() as usize;
            s.features = (nf * (0.4 + 0.6 * f)).round() as usize;
            s.engagement = 0.3 + 0.7 * f;
        };
        match self.archetype {
            Archetype::Healthy => {}
            Archetype::Expanding => {
                let g = if after {
                    progress(d, self.onset, days - 1)
                } else {
                    0.0
                };
                s.usage = 1.0 + 0.8 * g;
                s.users = ((users * (1.0 + 0.6 * g)).round() as usize).min(self.user_cap as usize);
                s.features = ((nf + 3.0 * g).round() as usize).min(self.feature_cap as usize);
                s.engagement = 1.1;
                s.mood = 0.6;
            }
            Archetype::SlowDecline => {
                if after {
                    let g = progress(d, self.onset, days - 1);
                    decline(&mut s, 1.0 - 0.7 * g);
                    s.mood = 0.5 - 0.4 * g;
                }
            }
            Archetype::SuddenDrop => {
                if after {
                    decline(&mut s, 0.1);
                    s.mood = 0.05;
                }
            }
            Archetype::GoesDark => {
                if after {
                    s.usage = 0.0;
                    s.users = 0;
                    s.engagement = 0.0;
                    s.dark = true;
                }
            }
            Archetype::NegativeCall => {
                if after {
                    decline(&mut s, 0.8);
                    s.mood = 0.0;
                }
            }
            Archetype::EmailTrouble => {
                if after {
                    s.engagement = 0.6;
                    s.mood = 0.4;
                }
            }
            Archetype::LostRenewal => {
                if after {
                    let f = if d >= self.renewal_close {
                        0.3
                    } else {
                        1.0 - 0.6 * progress(d, self.onset, self.renewal_close)
                    };
                    decline(&mut s, f);
                    s.mood = 0.5 - 0.45 * progress(d, self.onset, self.renewal_close);
                }
            }
            Archetype::Newcomer => {
                let g = progress(d, self.start, self.start + 21);
                s.usage = 0.3 + 0.7 * g;
                s.users = (users * (0.4 + 0.6 * g)).round() as usize;
                s.features = (nf * (0.5 + 0.5 * g)).round() as usize;
                s.engagement = 1.2;
                s.mood = 0.55;
            }
        }
        s.users = s.users.clamp(1, MAX_USERS);
        s.features = s.features.clamp(1, MAX_FEATURES);
        s
    }

    /// ARR on day `d` (after an expansion, the expanded amount).
    fn arr_on(&self, d: i32) -> f64 {
        if self.archetype == Archetype::Expanding && d >= self.day3 {
            self.arr + self.expansion
        } else {
            self.arr
        }
    }
}

fn stage_for(days_left: i32) -> u8 {
    match days_left {
        l if l > 120 => 0,
        l if l > 60 => 1,
        l if l > 21 => 2,
        _ => 3,
    }
}

/// Archetype of each account: exact quotas (largest remainder), every archetype present once
/// the portfolio has 12 accounts or more, shuffled by the seed.
fn assign_archetypes(n: usize, seed: u64) -> Vec<Archetype> {
    let mut counts = [0usize; 9];
    let mut rems = [0usize; 9];
    for k in 0..9 {
        counts[k] = n * Archetype::MIX_PER_MILLE[k] / 1000;
        rems[k] = n * Archetype::MIX_PER_MILLE[k] % 1000;
    }
    let mut left = n - counts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..9).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(rems[k])); // stable: ties by index
    for &k in order.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[k] += 1;
        left -= 1;
    }
    if n >= 12 {
        for k in 1..9 {
            if counts[k] == 0 {
                counts[k] = 1;
                counts[0] -= 1;
            }
        }
    }
    let mut all = Vec::with_capacity(n);
    for (a, &count) in Archetype::ALL.iter().zip(&counts) {
        all.extend(std::iter::repeat_n(*a, count));
    }
    all.shuffle(&mut rng_for(seed, TAG_MIX, 0, 0));
    all
}

fn make_profile(spec: &GenSpec, i: usize, archetype: Archetype) -> Profile {
    let mut rng = rng_for(spec.seed, TAG_PROFILE, i as u64, 0);
    let days = spec.days.max(1) as i32;
    let last = days - 1;
    let normal_days = (NORMAL_DAYS as i32).min(days / 2);
    let second_half = normal_days.max(days / 2);
    // A day in [lo, hi] (hi raised to lo on short timelines), inside the timeline.
    let pick =
        |rng: &mut ChaCha8Rng, lo: i32, hi: i32| rng.random_range(lo..=hi.max(lo)).clamp(0, last);

    let start = if archetype == Archetype::Newcomer {
        pick(&mut rng, 1, days / 2 - 1)
    } else {
        0
    };
    let onset = match archetype {
        Archetype::Healthy | Archetype::Newcomer => i32::MAX,
        Archetype::Expanding | Archetype::SlowDecline => normal_days,
        Archetype::SuddenDrop => pick(&mut rng, second_half, days - 10),
        Archetype::GoesDark => pick(&mut rng, second_half, days - 20),
        Archetype::NegativeCall => pick(&mut rng, second_half, days - 7),
        Archetype::EmailTrouble => pick(&mut rng, second_half, days - 15),
        Archetype::LostRenewal => second_half,
    };
    let (mut day2, mut day3) = (i32::MAX, i32::MAX);
    match archetype {
        Archetype::Expanding => {
            day3 = pick(&mut rng, normal_days.max(days * 45 / 100), days * 60 / 100);
            day2 = (day3 - pick(&mut rng, 10, 25)).max(1).min(day3);
        }
        Archetype::EmailTrouble => {
            day2 = (onset + pick(&mut rng, 2, 6)).min(last);
            day3 = if rng.random_bool(0.6) {
                (onset + pick(&mut rng, 5, 12)).min(last)
            } else {
                i32::MAX
            };
        }
        _ => {}
    }
    let renewal_close = match archetype {
        Archetype::Newcomer => start + 365,
        Archetype::Healthy | Archetype::Expanding => {
            if rng.random_bool(0.7) {
                rng.random_range(days * 7 / 10..=(days - 2).max(days * 7 / 10))
            } else {
                rng.random_range(days + 10..=days + 200)
            }
        }
        Archetype::LostRenewal => {
            let lo = (onset + 14).max(days * 7 / 10);
            rng.random_range(lo..=(days - 3).max(lo)).min(last)
        }
        _ => rng.random_range(days + 10..=days + 150),
    };
    let nb_close = if archetype == Archetype::Newcomer {
        start
    } else {
        (renewal_close - 365).min(0)
    };

    let arr = round_to(
        (30_000f64.ln() + 0.7 * normal(&mut rng))
            .exp()
            .clamp(3_000.0, 1_000_000.0),
        100.0,
    );
    let renewal_end = if archetype == Archetype::LostRenewal {
        if rng.random_bool(0.65) {
            RenewalEnd::Lost
        } else {
            RenewalEnd::Contracted {
                contraction: round_to(arr * rng.random_range(0.3..0.6), 100.0),
            }
        }
    } else {
        RenewalEnd::Won {
            uplift: rng.random_range(1.0..1.08),
        }
    };
    let expansion = if archetype == Archetype::Expanding {
        round_to(arr * rng.random_range(0.2..0.6), 100.0)
    } else {
        0.0
    };

    let users = if archetype == Archetype::Expanding {
        rng.random_range(3..=10u8)
    } else {
        rng.random_range(3..=MAX_USERS as u8)
    };
    let user_cap = if archetype == Archetype::Expanding {
        ((users as f64 * 1.6).round() as u8).min(MAX_USERS as u8)
    } else {
        users
    };
    let mut all_features: [u8; FEATURES.len()] = std::array::from_fn(|k| k as u8);
    all_features.shuffle(&mut rng);
    let mut features = [0u8; MAX_FEATURES];
    features.copy_from_slice(&all_features[..MAX_FEATURES]);
    let n_features = if archetype == Archetype::Expanding {
        rng.random_range(2..=9u8)
    } else {
        rng.random_range(2..=MAX_FEATURES as u8)
    };
    let feature_cap = if archetype == Archetype::Expanding {
        n_features + 3
    } else {
        n_features
    };
    let contacts = rng.random_range(2..=CONTACT_IDS.len() as u8);
    let work_ms = rng.random_range(6 * HOUR_MS..=14 * HOUR_MS) / MINUTE_MS * MINUTE_MS;
    let nb_ms = if archetype == Archetype::Newcomer {
        work_ms - 30 * MINUTE_MS
    } else {
        0
    };
    let activity = rng.random_range(0.75..1.25);

    Profile {
        archetype,
        start,
        activity,
        users,
        user_cap,
        features,
        n_features,
        feature_cap,
        contacts,
        work_ms,
        nb_ms,
        arr,
        nb_close,
        renewal_close,
        renewal_end,
        onset,
        day2,
        day3,
        expansion,
    }
}

// ---------------------------------------------------------------------------------------------
// Pending events: a compact, copyable form that is sorted per day and only turned into an
// `Event` (with its Strings) when the iterator hands it out.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DealSlot {
    NewBusiness,
    Renewal,
    Expansion,
    Contraction,
}

impl DealSlot {
    fn suffix(self) -> &'static str {
        match self {
            DealSlot::NewBusiness => "new",
            DealSlot::Renewal => "renewal",
            DealSlot::Expansion => "expansion",
            DealSlot::Contraction => "contraction",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    Open(u8),
    Won,
    Lost,
}

#[derive(Debug, Clone, Copy)]
enum What {
    Usage {
        user: u8,
        feature: u8,
        quantity: u16,
    },
    Email {
        contact: u8,
        action: EmailAction,
        campaign: u8,
    },
    Call {
        contact: u8,
        inbound: bool,
        outcome: CallOutcome,
        /// Seconds; negative means absent.
        duration_s: i32,
        /// Hundredths; `i8::MIN` means absent.
        sentiment: i8,
        topics: u8,
    },
    Deal {
        slot: DealSlot,
        kind: DealKind,
        stage: Stage,
        amount: f64,
        close: i32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    at_ms: i64,
    account: u32,
    /// Per-account running number: the `<n>` of the event id.
    seq: u32,
    what: What,
}

/// Emits one account's events of one day.
struct DayCtx<'a> {
    p: &'a Profile,
    rng: ChaCha8Rng,
    account: u32,
    /// Start of the day, ms since the epoch.
    day_ms: i64,
    /// Earliest time of day for ordinary events (after the new-business deal on the start day).
    lo: i64,
    out: &'a mut Vec<Pending>,
}

impl DayCtx<'_> {
    fn push(&mut self, t: i64, what: What) {
        let t = t.clamp(0, DAY_MS - 1);
        self.out.push(Pending {
            at_ms: self.day_ms + t,
            account: self.account,
            seq: 0,
            what,
        });
    }

    /// A time in the account's working hours (8 h from its window opening).
    fn work_time(&mut self) -> i64 {
        let t = self.p.work_ms + self.rng.random_range(0..8 * HOUR_MS);
        t.max(self.lo)
    }

    /// Product usage: 90% inside a 10 h working window, the rest anywhere in the day.
    fn usage_time(&mut self) -> i64 {
        let t = if self.rng.random::<f32>() < 0.9 {
            self.p.work_ms + self.rng.random_range(0..10 * HOUR_MS)
        } else {
            self.rng.random_range(0..DAY_MS)
        };
        if t < self.lo {
            self.lo + self.rng.random_range(0..DAY_MS - self.lo)
        } else {
            t
        }
    }

    fn deal(
        &mut self,
        t: i64,
        slot: DealSlot,
        kind: DealKind,
        stage: Stage,
        amount: f64,
        close: i32,
    ) {
        self.push(
            t,
            What::Deal {
                slot,
                kind,
                stage,
                amount: round_to(amount, 100.0),
                close,
            },
        );
    }

    fn deals(&mut self, d: i32) {
        let p = self.p;
        let rc = p.renewal_close;
        if d == p.start {
            self.deal(
                p.nb_ms,
                DealSlot::NewBusiness,
                DealKind::NewBusiness,
                Stage::Won,
                p.arr,
                p.nb_close,
            );
            if d < rc {
                let stage = Stage::Open(stage_for(rc - d));
                self.deal(
                    p.nb_ms + SECOND_MS,
                    DealSlot::Renewal,
                    DealKind::Renewal,
                    stage,
                    p.arr_on(d),
                    rc,
                );
            }
        } else if d < rc
            && (stage_for(rc - d) != stage_for(rc - d + 1)
                || (p.archetype == Archetype::Expanding && d == p.day3))
        {
            // The renewal moves a stage (or is re-forecast after an expansion).
            let t = self.work_time();
            let stage = Stage::Open(stage_for(rc - d));
            self.deal(
                t,
                DealSlot::Renewal,
                DealKind::Renewal,
                stage,
                p.arr_on(d),
                rc,
            );
        }
        if p.archetype == Archetype::Expanding {
            if d == p.day2 {
                let t = self.work_time();
                self.deal(
                    t,
                    DealSlot::Expansion,
                    DealKind::Expansion,
                    Stage::Open(1),
                    p.expansion,
                    p.day3,
                );
            }
            if d == p.day3 {
                let t = self.work_time();
                self.deal(
                    t,
                    DealSlot::Expansion,
                    DealKind::Expansion,
                    Stage::Won,
                    p.expansion,
                    p.day3,
                );
            }
        }
        if let RenewalEnd::Contracted { contraction } = p.renewal_end
            && d == (rc - 10).max(p.start)
        {
            let t = self.work_time();
            self.deal(
                t,
                DealSlot::Contraction,
                DealKind::Contraction,
                Stage::Open(2),
                contraction,
                rc,
            );
        }
        if d == rc && d > p.start {
            let t = self.work_time();
            match p.renewal_end {
                RenewalEnd::Won { uplift } => {
                    let amount = p.arr_on(d) * uplift;
                    self.deal(
                        t,
                        DealSlot::Renewal,
                        DealKind::Renewal,
                        Stage::Won,
                        amount,
                        rc,
                    );
                }
                RenewalEnd::Lost => {
                    self.deal(
                        t,
                        DealSlot::Renewal,
                        DealKind::Renewal,
                        Stage::Lost,
                        p.arr,
                        rc,
                    );
                }
                RenewalEnd::Contracted { contraction } => {
                    let kind = DealKind::Contraction;
                    self.deal(t, DealSlot::Contraction, kind, Stage::Won, contraction, rc);
                    let amount = p.arr - contraction;
                    self.deal(
                        t + SECOND_MS,
                        DealSlot::Renewal,
                        DealKind::Renewal,
                        Stage::Won,
                        amount,
                        rc,
                    );
                }
            }
        }
    }

    fn usage(&mut self, shape: &Shape, weekend: bool, per_day: f64) {
        if shape.usage <= 0.0 {
            return;
        }
        // Small day-to-day noise on top of a weekly rhythm (weekday 1.3, weekend 0.25: the week
        // averages 1.0): real accounts are burstier, but a healthy account must not look like it
        // halved its weekly volume by chance.
        let rhythm = if weekend { 0.25 } else { 1.3 };
        let noise = (1.0 + 0.15 * normal(&mut self.rng)).max(0.0);
        let lambda = per_day * self.p.activity * rhythm * shape.usage * noise;
        let n = (lambda + self.rng.random::<f64>()) as usize; // randomized rounding: mean lambda
        for _ in 0..n {
            let t = self.usage_time();
            // Squared uniforms favour the first users and features: power users and core features.
            let u = self.rng.random::<f64>();
            let user = ((u * u) * shape.users as f64) as u8;
            let v = self.rng.random::<f64>();
            let feature = self.p.features[((v * v) * shape.features as f64) as usize];
            let max_q = FEATURES[feature as usize].1;
            let quantity = if max_q > 1 {
                self.rng.random_range(1..=max_q)
            } else {
                1
            };
            self.push(
                t,
                What::Usage {
                    user,
                    feature,
                    quantity,
                },
            );
        }
    }

    fn email(&mut self, action: EmailAction, t: i64, contact: u8, campaign: u8) {
        self.push(
            t,
            What::Email {
                contact,
                action,
                campaign,
            },
        );
    }

    /// One outbound email and what became of it.
    fn send(&mut self, contact: u8, campaign: u8, engagement: f64, end: Option<EmailAction>) {
        let t0 = self.work_time();
        self.email(EmailAction::Sent, t0, contact, campaign);
        if end == Some(EmailAction::Bounced) {
            let t = t0 + self.rng.random_range(SECOND_MS..60 * SECOND_MS);
            self.email(EmailAction::Bounced, t, contact, campaign);
            return;
        }
        let t1 = t0 + self.rng.random_range(SECOND_MS..20 * SECOND_MS);
        self.email(EmailAction::Delivered, t1, contact, campaign);
        match end {
            Some(EmailAction::Complained) => {
                let t = t1 + self.rng.random_range(10 * MINUTE_MS..4 * HOUR_MS);
                self.email(EmailAction::Complained, t, contact, campaign);
            }
            Some(EmailAction::Unsubscribed) => {
                let t2 = t1 + self.rng.random_range(MINUTE_MS..5 * HOUR_MS);
                self.email(EmailAction::Opened, t2, contact, campaign);
                let t = t2 + self.rng.random_range(5 * SECOND_MS..2 * MINUTE_MS);
                self.email(EmailAction::Unsubscribed, t, contact, campaign);
            }
            _ => {
                // B2B customer-success mail: ~45% opened, a quarter of opens clicked, ~8% replied.
                if engagement > 0.0 && self.rng.random_bool((0.45 * engagement).min(0.95)) {
                    let t2 = t1 + self.rng.random_range(MINUTE_MS..5 * HOUR_MS);
                    self.email(EmailAction::Opened, t2, contact, campaign);
                    if self.rng.random_bool(0.25) {
                        let t = t2 + self.rng.random_range(3 * SECOND_MS..10 * MINUTE_MS);
                        self.email(EmailAction::Clicked, t, contact, campaign);
                    }
                    if self.rng.random_bool((0.18 * engagement).min(0.9)) {
                        let t = t2 + self.rng.random_range(2 * MINUTE_MS..3 * HOUR_MS);
                        self.email(EmailAction::Replied, t, contact, campaign);
                    }
                }
            }
        }
    }

    fn emails(&mut self, d: i32, shape: &Shape, weekend: bool) {
        let p = self.p;
        let trouble = p.archetype == Archetype::EmailTrouble;
        // The scripted trouble happens whatever the weekday.
        if trouble && d == p.onset {
            let c = self.rng.random_range(0..p.contacts);
            self.send(
                c,
                CAMPAIGN_GENERAL + 1,
                shape.engagement,
                Some(EmailAction::Bounced),
            );
        }
        if trouble && d == p.day2 {
            let c = self.rng.random_range(0..p.contacts);
            self.send(
                c,
                CAMPAIGN_GENERAL,
                shape.engagement,
                Some(EmailAction::Unsubscribed),
            );
        }
        if trouble && d == p.day3 {
            let c = self.rng.random_range(0..p.contacts);
            self.send(
                c,
                CAMPAIGN_GENERAL + 4,
                shape.engagement,
                Some(EmailAction::Complained),
            );
        }
        if weekend {
            return;
        }
        let onboarding = d - p.start < 14 && p.archetype == Archetype::Newcomer;
        let rate = if onboarding { 0.5 } else { 0.3 };
        if !self.rng.random_bool(rate) {
            return;
        }
        let contact = self.rng.random_range(0..p.contacts);
        let campaign = if onboarding {
            CAMPAIGN_ONBOARDING
        } else if (0..60).contains(&(p.renewal_close - d)) && self.rng.random_bool(0.3) {
            CAMPAIGN_RENEWAL
        } else if shape.dark {
            CAMPAIGN_HEALTH_CHECK
        } else {
            self.rng
                .random_range(CAMPAIGN_GENERAL..CAMPAIGNS.len() as u8)
        };
        let end = if trouble && d > p.onset && self.rng.random_bool(0.2) {
            Some(EmailAction::Bounced)
        } else {
            None
        };
        self.send(contact, campaign, shape.engagement, end);
    }

    fn call(
        &mut self,
        t: i64,
        inbound: bool,
        outcome: CallOutcome,
        duration_s: i32,
        sentiment: i8,
        topics: u8,
    ) {
        let contact = self.rng.random_range(0..self.p.contacts);
        self.push(
            t,
            What::Call {
                contact,
                inbound,
                outcome,
                duration_s,
                sentiment,
                topics,
            },
        );
    }

    fn calls(&mut self, d: i32, shape: &Shape, weekend: bool) {
        let p = self.p;
        if p.archetype == Archetype::NegativeCall && d == p.onset {
            let t = self.work_time();
            let outcome = if self.rng.random_bool(0.5) {
                CallOutcome::MeetingHeld
            } else {
                CallOutcome::Connected
            };
            let inbound = self.rng.random_bool(0.5);
            let duration = self.rng.random_range(900..=2700);
            let sentiment = self.rng.random_range(-85..=-55i8);
            // Mostly the textbook pair; sometimes another risk conversation.
            let topics = if self.rng.random_bool(0.5) {
                RISK_FROM
            } else {
                self.rng.random_range(RISK_FROM..TOPIC_SETS.len() as u8)
            };
            self.call(t, inbound, outcome, duration, sentiment, topics);
        }
        if weekend {
            return;
        }
        let rate = if shape.dark { 0.15 } else { 0.08 };
        if !self.rng.random_bool(rate) {
            return;
        }
        let t = self.work_time();
        if shape.dark {
            // Nobody picks up.
            let (outcome, duration) = if self.rng.random_bool(0.6) {
                (CallOutcome::NoAnswer, 0)
            } else {
                (CallOutcome::Voicemail, self.rng.random_range(20..=90))
            };
            self.call(t, false, outcome, duration, i8::MIN, 0);
            return;
        }
        let inbound = self.rng.random_bool(0.2);
        let r = self.rng.random::<f64>();
        let (outcome, duration) = match r {
            r if r < 0.42 => (CallOutcome::Connected, self.rng.random_range(240..=2400)),
            r if r < 0.72 => (CallOutcome::MeetingHeld, self.rng.random_range(1200..=3600)),
            r if r < 0.84 => (CallOutcome::NoAnswer, 0),
            r if r < 0.93 => (CallOutcome::Voicemail, self.rng.random_range(20..=90)),
            r if r < 0.97 => (CallOutcome::MeetingCancelled, -1),
            _ => (CallOutcome::MeetingNoShow, -1),
        };
        let talked = matches!(outcome, CallOutcome::Connected | CallOutcome::MeetingHeld);
        let (sentiment, topics) = if talked {
            // Floor at -0.35: ordinary calls never reach the negative-call rule's -0.5.
            let s = (shape.mood + 0.2 * normal(&mut self.rng)).clamp(-0.35, 1.0);
            let topics = self.rng.random_range(BENIGN_FROM..RISK_FROM);
            ((s * 100.0).round() as i8, topics)
        } else {
            (i8::MIN, 0)
        };
        self.call(t, inbound, outcome, duration, sentiment, topics);
    }
}

// ---------------------------------------------------------------------------------------------

/// A synthetic portfolio of accounts; see the module docs.
pub struct Portfolio {
    spec: GenSpec,
    ids: Vec<String>,
    profiles: Vec<Profile>,
}

impl Portfolio {
    pub fn new(spec: GenSpec) -> Portfolio {
        let archetypes = assign_archetypes(spec.accounts, spec.seed);
        let ids = (0..spec.accounts).map(|i| format!("acct-{i:06}")).collect();
        let profiles = archetypes
            .iter()
            .enumerate()
            .map(|(i, &a)| make_profile(&spec, i, a))
            .collect();
        Portfolio {
            spec,
            ids,
            profiles,
        }
    }

    pub fn spec(&self) -> &GenSpec {
        &self.spec
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of account `i`: `acct-000042` style, stable for a given index.
    pub fn account_id(&self, i: usize) -> String {
        self.ids[i].clone()
    }

    pub fn archetype(&self, i: usize) -> Archetype {
        self.profiles[i].archetype
    }

    /// UTC day of account `i`'s first event (its new-business deal).
    pub fn first_day(&self, i: usize) -> i32 {
        self.spec.start_day + self.profiles[i].start
    }

    /// UTC day on which account `i`'s archetype starts to show (the drop, the dark day, the
    /// negative call, the first bounce, the decline), if it has such a day in the timeline.
    pub fn onset_day(&self, i: usize) -> Option<i32> {
        let p = &self.profiles[i];
        (p.onset < self.spec.days as i32).then_some(self.spec.start_day + p.onset)
    }

    /// UTC close day of account `i`'s renewal deal (may lie after the timeline).
    pub fn renewal_close_day(&self, i: usize) -> i32 {
        self.spec.start_day + self.profiles[i].renewal_close
    }

    /// All events of all accounts, `occurred_at` non-decreasing, generated one day at a time.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        Events {
            portfolio: self,
            day: 0,
            buf: Vec::new(),
            order: Vec::new(),
            pos: 0,
            scratch: Vec::new(),
            next_seq: vec![1; self.profiles.len()],
        }
    }

    /// Appends account `a`'s events of day offset `d`, numbered from `*seq`, with duplicates.
    fn account_day(
        &self,
        a: usize,
        d: i32,
        seq: &mut u32,
        scratch: &mut Vec<Pending>,
        out: &mut Vec<Pending>,
    ) {
        let p = &self.profiles[a];
        if d < p.start {
            return;
        }
        let days = self.spec.days as i32;
        let day = self.spec.start_day + d;
        // 1970-01-01 was a Thursday; 0 = Monday.
        let weekend = (day + 3).rem_euclid(7) >= 5;
        scratch.clear();
        let mut cx = DayCtx {
            p,
            rng: rng_for(self.spec.seed, TAG_DAY, a as u64, d as u64),
            account: a as u32,
            day_ms: day as i64 * DAY_MS,
            lo: if d == p.start {
                p.nb_ms + 2 * SECOND_MS
            } else {
                0
            },
            out: scratch,
        };
        let shape = p.shape(d, days);
        cx.deals(d);
        cx.usage(&shape, weekend, self.spec.usage_per_day);
        cx.emails(d, &shape, weekend);
        cx.calls(d, &shape, weekend);
        let mut rng = cx.rng;
        // Stable: events at the same millisecond keep their causal order (sent before bounced).
        scratch.sort_by_key(|e| e.at_ms);
        let rate = self.spec.duplicate_rate;
        for e in scratch.iter_mut() {
            e.seq = *seq;
            *seq += 1;
            out.push(*e);
            // Drawn after the day's events, so the duplicate rate does not change them.
            if rate > 0.0 && rng.random::<f64>() < rate {
                out.push(*e); // the same event again: same id, same time
            }
        }
    }

    fn materialize(&self, e: &Pending) -> Event {
        let account_id = &self.ids[e.account as usize];
        let prefix = match e.what {
            What::Usage { .. } => b'u',
            What::Email { .. } => b'e',
            What::Call { .. } => b'c',
            What::Deal { .. } => b'd',
        };
        let event_id = event_id(prefix, account_id, e.seq);
        let body = match e.what {
            What::Usage {
                user,
                feature,
                quantity,
            } => EventBody::ProductUsage(ProductUsage {
                user_id: Some(USER_IDS[user as usize].to_owned()),
                feature: Some(FEATURES[feature as usize].0.to_owned()),
                quantity: quantity as f64,
            }),
            What::Email {
                contact,
                action,
                campaign,
            } => EventBody::Email(Email {
                contact_id: Some(CONTACT_IDS[contact as usize].to_owned()),
                direction: Some(Direction::Outbound),
                action,
                campaign: Some(CAMPAIGNS[campaign as usize].to_owned()),
            }),
            What::Call {
                contact,
                inbound,
                outcome,
                duration_s,
                sentiment,
                topics,
            } => EventBody::Call(Call {
                contact_id: Some(CONTACT_IDS[contact as usize].to_owned()),
                direction: Some(if inbound {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                }),
                duration_s: (duration_s >= 0).then_some(duration_s as f64),
                outcome: Some(outcome),
                sentiment: (sentiment != i8::MIN).then(|| sentiment as f64 / 100.0),
                topics: TOPIC_SETS[topics as usize]
                    .iter()
                    .map(|t| (*t).to_owned())
                    .collect(),
            }),
            What::Deal {
                slot,
                kind,
                stage,
                amount,
                close,
            } => EventBody::Deal(Deal {
                deal_id: format!("opp-{:06}-{}", e.account, slot.suffix()),
                kind,
                stage: match stage {
                    Stage::Open(s) => DealStage::Open(OPEN_STAGES[s as usize].to_owned()),
                    Stage::Won => DealStage::ClosedWon,
                    Stage::Lost => DealStage::ClosedLost,
                },
                amount: Some(amount),
                currency: Some("USD".to_owned()),
                close_day: Some(self.spec.start_day + close),
                plan: None,
                industry: None,
            }),
        };
        Event {
            event_id,
            account_id: account_id.clone(),
            occurred_at_ms: e.at_ms,
            body,
        }
    }
}

/// `<prefix>-<account_id>-<seq>`, assembled on the stack so the String is one allocation and
/// one copy (this runs once per event).
fn event_id(prefix: u8, account_id: &str, seq: u32) -> String {
    let mut buf = [0u8; 64];
    let acct = account_id.as_bytes();
    if acct.len() > buf.len() - 13 {
        return format!("{}-{account_id}-{seq}", prefix as char);
    }
    buf[0] = prefix;
    buf[1] = b'-';
    buf[2..2 + acct.len()].copy_from_slice(acct);
    let mut len = 2 + acct.len();
    buf[len] = b'-';
    len += 1;
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = seq;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let nd = digits.len() - i;
    buf[len..len + nd].copy_from_slice(&digits[i..]);
    len += nd;
    // Account ids are ASCII (made by `Portfolio::new`), the rest is ASCII too.
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// The iterator behind [`Portfolio::events`]: one day of pending events at a time.
struct Events<'a> {
    portfolio: &'a Portfolio,
    /// Next day offset to generate.
    day: u32,
    /// The day's events, account after account, each account's in time order.
    buf: Vec<Pending>,
    /// The day's order: `(ms into the day) << 37 | index into buf`, sorted.
    order: Vec<u64>,
    pos: usize,
    scratch: Vec<Pending>,
    /// Per account, the number of its next event.
    next_seq: Vec<u32>,
}

const INDEX_BITS: u32 = 37;

impl Events<'_> {
    fn fill_day(&mut self) {
        let p = self.portfolio;
        self.buf.clear();
        self.order.clear();
        self.pos = 0;
        for a in 0..p.profiles.len() {
            let seq = &mut self.next_seq[a];
            p.account_day(a, self.day as i32, seq, &mut self.scratch, &mut self.buf);
        }
        // Sorting packed (time, index) keys rather than the events themselves: cheaper, and since
        // `buf` is in (account, seq) order with each duplicate right after its original, the
        // result is the (time, account, seq) order. A duplicate thus comes right after its
        // original, or after other events of the same millisecond: later, at the same event time.
        let day_ms = (p.spec.start_day as i64 + self.day as i64) * DAY_MS;
        assert!(
            (self.buf.len() as u64) < 1 << INDEX_BITS,
            "too many events in one day"
        );
        self.order.extend(
            self.buf
                .iter()
                .enumerate()
                .map(|(i, e)| ((e.at_ms - day_ms) as u64) << INDEX_BITS | i as u64),
        );
        self.order.sort_unstable();
        self.day += 1;
    }
}

impl Iterator for Events<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        while self.pos >= self.order.len() {
            if self.day >= self.portfolio.spec.days {
                return None;
            }
            self.fill_day();
        }
        let i = (self.order[self.pos] & ((1 << INDEX_BITS) - 1)) as usize;
        self.pos += 1;
        Some(self.portfolio.materialize(&self.buf[i]))
    }
}

// ---------------------------------------------------------------------------------------------

/// Size of the `too_large` record: over any sane per-record limit, well under a Kafka message max.
pub const TOO_LARGE_BYTES: usize = 200 * 1024;
/// Array nesting of the `too_deep` record.
pub const TOO_DEEP_LEVELS: usize = 10_000;

/// Malformed input records, one per kind, as raw bytes (no trailing newline), each labelled with
/// the dead-letter reason code the decoder should give. Each record has exactly that one defect;
/// `seed` varies the ids and times so that many distinct records can be made.
pub fn malformed_records(seed: u64) -> Vec<(&'static str, Vec<u8>)> {
    let account = format!("acct-{:06}", seed % 1_000_000);
    let at = format!("2026-07-01T10:{:02}:{:02}Z", (seed / 60) % 60, seed % 60);
    let head = |kind: &str, ty: &str| {
        format!(
            r#""event_id":"bad-{seed}-{kind}","account_id":"{account}","occurred_at":"{at}","type":"{ty}""#
        )
    };
    let usage = |kind: &str, rest: &str| {
        format!(
            r#"{{{},"user_id":"u1","feature":"api.call"{rest}}}"#,
            head(kind, "product_usage")
        )
        .into_bytes()
    };

    let valid = usage("truncated", r#","quantity":3"#);
    let truncated = valid[..valid.len() * 2 / 3].to_vec();

    let mut too_large = usage("too_large", r#","quantity":1,"note":""#);
    too_large.pop(); // the closing brace: the `note` string is still open
    let pad = TOO_LARGE_BYTES - too_large.len() - 2;
    too_large.resize(too_large.len() + pad, b'x');
    too_large.extend_from_slice(b"\"}");

    let mut invalid_utf8 = format!(
        r#"{{{},"user_id":"u"#,
        head("invalid_utf8", "product_usage")
    )
    .into_bytes();
    invalid_utf8.extend_from_slice(b"\xff\xfe\xfd");
    invalid_utf8.extend_from_slice(br#"","feature":"api.call","quantity":1}"#);

    let mut too_deep = usage("too_deep", r#","quantity":1,"extra":"#);
    too_deep.pop(); // the closing brace
    too_deep.resize(too_deep.len() + TOO_DEEP_LEVELS, b'[');
    too_deep.resize(too_deep.len() + TOO_DEEP_LEVELS, b']');
    too_deep.push(b'}');

    let missing = format!(
        r#"{{"event_id":"bad-{seed}-missing_field","occurred_at":"{at}","type":"product_usage","user_id":"u1","quantity":1}}"#
    );
    let bad_ts = format!(
        r#"{{"event_id":"bad-{seed}-bad_timestamp","account_id":"{account}","occurred_at":"2026-13-45T25:61:00Z","type":"product_usage","quantity":1}}"#
    );

    vec![
        ("not_json", format!("<html><body>503 Service Unavailable (request {seed})</body></html>").into_bytes()),
        ("truncated", truncated),
        ("wrong_type", usage("wrong_type", r#","quantity":"three""#)),
        ("missing_field", missing.into_bytes()),
        ("bad_timestamp", bad_ts.into_bytes()),
        ("unknown_type", format!(r#"{{{},"mood":"curious"}}"#, head("unknown_type", "telepathy")).into_bytes()),
        ("non_finite", usage("non_finite", r#","quantity":NaN"#)),
        (
            "out_of_range",
            format!(
                r#"{{{},"contact_id":"c1","direction":"inbound","duration_s":-30,"outcome":"connected","sentiment":0.2,"topics":["support"]}}"#,
                head("out_of_range", "call")
            )
            .into_bytes(),
        ),
        ("too_large", too_large),
        ("invalid_utf8", invalid_utf8),
        ("empty", Vec::new()),
        ("too_deep", too_deep),
        (
            "unknown_enum",
            format!(
                r#"{{{},"contact_id":"c1","direction":"outbound","action":"teleported","campaign":"qbr-invite"}}"#,
                head("unknown_enum", "email")
            )
            .into_bytes(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::day_of;
    use std::collections::{HashMap, HashSet};

    fn small(accounts: usize, seed: u64) -> GenSpec {
        GenSpec {
            accounts,
            seed,
            ..GenSpec::default()
        }
    }

    /// Events with duplicates removed, grouped per account index.
    fn per_account(p: &Portfolio) -> Vec<Vec<Event>> {
        let index: HashMap<String, usize> = (0..p.len()).map(|i| (p.account_id(i), i)).collect();
        let mut seen = HashSet::new();
        let mut out = vec![Vec::new(); p.len()];
        for e in p.events() {
            if seen.insert(e.event_id.clone()) {
                out[index[&e.account_id]].push(e);
            }
        }
        out
    }

    /// Per day offset: (usage events, usage quantity).
    fn daily_usage(p: &Portfolio, events: &[Event]) -> Vec<(f64, f64)> {
        let mut days = vec![(0.0, 0.0); p.spec().days as usize];
        for e in events {
            if let EventBody::ProductUsage(u) = &e.body {
                let d = (day_of(e.occurred_at_ms) - p.spec().start_day) as usize;
                days[d].0 += 1.0;
                days[d].1 += u.quantity;
            }
        }
        days
    }

    /// The engine's usage-drop rule on day offset `end` (exclusive): the usage events of the
    /// last 7 days below 50% of the weekly average of the 28 days before. (The engine counts
    /// events; quantities are noisier, with `api.call` batches of 1–10.)
    fn usage_drop(days: &[(f64, f64)], end: usize) -> bool {
        let sum = |r: std::ops::Range<usize>| -> f64 { days[r].iter().map(|d| d.0).sum() };
        sum(end - 7..end) < 0.5 * sum(end - 35..end - 7) / 4.0
    }

    #[test]
    fn default_start_day_is_2026_07_01() {
        assert_eq!(DEFAULT_START_DAY, 20_635);
        assert_eq!(GenSpec::default().start_day, DEFAULT_START_DAY);
    }

    #[test]
    fn same_spec_same_events_other_seed_other_events() {
        let spec = small(150, 7);
        let a: Vec<Event> = Portfolio::new(spec.clone()).events().collect();
        let b: Vec<Event> = Portfolio::new(spec.clone()).events().collect();
        assert!(a.len() > 50_000, "{}", a.len());
        assert_eq!(a, b);
        let c: Vec<Event> = Portfolio::new(small(150, 8)).events().collect();
        assert_ne!(a, c);
    }

    #[test]
    fn odd_specs_stay_ordered_and_a_portfolio_replays_the_same() {
        for (accounts, days) in [(0, 120), (5, 0), (3, 1), (30, 10), (40, 60), (20, 400)] {
            let p = Portfolio::new(GenSpec {
                accounts,
                days,
                ..small(0, 21)
            });
            let a: Vec<Event> = p.events().collect();
            assert!(
                a.windows(2)
                    .all(|w| w[0].occurred_at_ms <= w[1].occurred_at_ms)
            );
            let end = p.spec().start_day + days as i32;
            assert!(a.iter().all(|e| day_of(e.occurred_at_ms) < end));
            if accounts > 0 && days > 0 {
                assert!(a.len() >= accounts);
            }
            let b: Vec<Event> = p.events().collect();
            assert_eq!(a, b, "{accounts} accounts, {days} days");
        }
    }

    #[test]
    fn duplicate_rate_does_not_change_the_other_events() {
        let with: Vec<Event> = Portfolio::new(GenSpec {
            duplicate_rate: 0.05,
            ..small(60, 3)
        })
        .events()
        .collect();
        let without: Vec<Event> = Portfolio::new(GenSpec {
            duplicate_rate: 0.0,
            ..small(60, 3)
        })
        .events()
        .collect();
        let mut seen = HashSet::new();
        let deduped: Vec<Event> = with
            .into_iter()
            .filter(|e| seen.insert(e.event_id.clone()))
            .collect();
        assert_eq!(deduped, without);
    }

    #[test]
    fn occurred_at_is_non_decreasing_and_inside_the_timeline() {
        let p = Portfolio::new(small(300, 1));
        let spec = p.spec();
        let mut last = i64::MIN;
        let mut n = 0;
        for e in p.events() {
            assert!(e.occurred_at_ms >= last, "{} goes back in time", e.event_id);
            last = e.occurred_at_ms;
            let d = day_of(e.occurred_at_ms);
            assert!(d >= spec.start_day && d < spec.start_day + spec.days as i32);
            n += 1;
        }
        assert!(n > 100_000);
    }

    #[test]
    fn event_ids_are_unique_except_duplicates_which_are_identical_and_adjacent_in_time() {
        let p = Portfolio::new(GenSpec {
            duplicate_rate: 0.01,
            ..small(200, 5)
        });
        let mut first: HashMap<String, Event> = HashMap::new();
        let (mut total, mut dups) = (0usize, 0usize);
        for e in p.events() {
            total += 1;
            assert!(
                e.event_id
                    .starts_with(&format!("{}-{}-", &e.event_id[..1], e.account_id))
            );
            match first.get(&e.event_id) {
                Some(orig) => {
                    dups += 1;
                    assert_eq!(orig, &e, "a duplicate must be the same event");
                }
                None => {
                    first.insert(e.event_id.clone(), e);
                }
            }
        }
        let rate = dups as f64 / (total - dups) as f64;
        assert!((0.008..0.012).contains(&rate), "duplicate rate {rate}");
        // Default rate: some duplicates, still rare.
        let p = Portfolio::new(small(200, 5));
        let mut ids = HashSet::new();
        let (mut total, mut dups) = (0usize, 0usize);
        for e in p.events() {
            total += 1;
            if !ids.insert(e.event_id) {
                dups += 1;
            }
        }
        assert!(
            dups > 0 && (dups as f64) < 0.004 * total as f64,
            "{dups} of {total}"
        );
    }

    #[test]
    fn archetype_mix_follows_the_quotas() {
        let p = Portfolio::new(small(1000, 42));
        let mut counts: HashMap<Archetype, usize> = HashMap::new();
        for i in 0..p.len() {
            *counts.entry(p.archetype(i)).or_default() += 1;
        }
        for (k, a) in Archetype::ALL.iter().enumerate() {
            assert_eq!(counts[a], Archetype::MIX_PER_MILLE[k], "{a}");
            assert_eq!(Archetype::parse(a.name()), Some(*a));
            assert!(!a.description().is_empty());
        }
        // Small portfolios still show every archetype, and the seed decides who is what.
        let p = Portfolio::new(small(20, 42));
        let present: HashSet<Archetype> = (0..20).map(|i| p.archetype(i)).collect();
        assert_eq!(present.len(), 9);
        let q = Portfolio::new(small(20, 43));
        assert!((0..20).any(|i| p.archetype(i) != q.archetype(i)));
        // Odd sizes add up.
        for n in [0, 1, 5, 11, 12, 999, 1001] {
            assert_eq!(assign_archetypes(n, 1).len(), n);
        }
    }

    #[test]
    fn every_account_starts_with_a_new_business_deal_and_has_an_open_renewal() {
        let p = Portfolio::new(small(300, 11));
        let spec = p.spec().clone();
        for (i, events) in per_account(&p).iter().enumerate() {
            let first = &events[0];
            assert_eq!(day_of(first.occurred_at_ms), p.first_day(i));
            match &first.body {
                EventBody::Deal(d) => {
                    assert_eq!(d.kind, DealKind::NewBusiness);
                    assert_eq!(d.stage, DealStage::ClosedWon);
                    assert!(d.amount.unwrap() >= 3000.0);
                    assert!(d.close_day.unwrap() <= p.first_day(i));
                }
                other => panic!("{} starts with {other:?}", p.account_id(i)),
            }
            let renewal_open = events.iter().any(|e| {
                matches!(&e.body, EventBody::Deal(d) if d.kind == DealKind::Renewal
                    && matches!(d.stage, DealStage::Open(_)))
            });
            assert!(renewal_open, "{}", p.account_id(i));
            if p.archetype(i) == Archetype::Newcomer {
                assert!(
                    p.first_day(i) > spec.start_day
                        && p.first_day(i) < spec.start_day + spec.days as i32 / 2
                );
            } else {
                assert_eq!(p.first_day(i), spec.start_day);
            }
            let users: HashSet<_> = events
                .iter()
                .filter_map(|e| match &e.body {
                    EventBody::ProductUsage(u) => u.user_id.clone(),
                    _ => None,
                })
                .collect();
            assert!((1..=15).contains(&users.len()));
        }
    }

    #[test]
    fn goes_dark_accounts_have_no_usage_and_no_replies_in_their_last_20_days() {
        let p = Portfolio::new(small(400, 2));
        let days = p.spec().days as usize;
        let mut checked = 0;
        for (i, events) in per_account(&p).iter().enumerate() {
            if p.archetype(i) != Archetype::GoesDark {
                continue;
            }
            checked += 1;
            let daily = daily_usage(&p, events);
            assert!(
                daily[..45].iter().filter(|d| d.0 > 0.0).count() > 35,
                "{} was never active",
                p.account_id(i)
            );
            assert!(
                daily[days - 20..].iter().all(|d| d.0 == 0.0),
                "{} used the product",
                p.account_id(i)
            );
            let dark = p.onset_day(i).unwrap();
            assert!(dark <= p.spec().start_day + days as i32 - 20);
            for e in events.iter().filter(|e| day_of(e.occurred_at_ms) >= dark) {
                match &e.body {
                    EventBody::ProductUsage(_) => panic!("usage after going dark"),
                    EventBody::Email(m) => assert!(matches!(
                        m.action,
                        EmailAction::Sent | EmailAction::Delivered
                    )),
                    EventBody::Call(c) => assert!(c.sentiment.is_none()),
                    EventBody::Deal(_) => {}
                }
            }
        }
        assert!(checked >= 20);
    }

    #[test]
    fn sudden_drop_accounts_trip_the_usage_drop_rule_and_healthy_ones_never_do() {
        let p = Portfolio::new(small(500, 9));
        let days = p.spec().days as usize;
        let (mut drops, mut healthy) = (0, 0);
        for (i, events) in per_account(&p).iter().enumerate() {
            let daily = daily_usage(&p, events);
            match p.archetype(i) {
                Archetype::SuddenDrop => {
                    drops += 1;
                    // Against the normal weeks before the drop...
                    let last7: f64 = daily[days - 7..].iter().map(|d| d.0).sum();
                    let normal: f64 = daily[..42].iter().map(|d| d.0).sum::<f64>() / 6.0;
                    assert!(
                        last7 < 0.5 * normal,
                        "{}: {last7} vs {normal}/week",
                        p.account_id(i)
                    );
                    // ...and by the engine's rule a week after the drop.
                    let onset = (p.onset_day(i).unwrap() - p.spec().start_day) as usize;
                    assert!(onset >= NORMAL_DAYS as usize && onset + 10 <= days);
                    assert!(!usage_drop(&daily, onset), "{}", p.account_id(i));
                    assert!(usage_drop(&daily, onset + 7), "{}", p.account_id(i));
                }
                Archetype::Healthy => {
                    healthy += 1;
                    for end in 35..=days {
                        assert!(
                            !usage_drop(&daily, end),
                            "{} drops on day {end}",
                            p.account_id(i)
                        );
                    }
                    // Never 14 days without usage.
                    assert!(daily.windows(14).all(|w| w.iter().any(|d| d.0 > 0.0)));
                }
                _ => {}
            }
        }
        assert!(drops >= 20 && healthy >= 200);
    }

    #[test]
    fn healthy_accounts_raise_no_alert_signals() {
        let p = Portfolio::new(small(400, 4));
        const RISK: [&str; 6] = [
            "cancel",
            "cancellation",
            "competitor",
            "pricing",
            "churn",
            "downgrade",
        ];
        for (i, events) in per_account(&p).iter().enumerate() {
            if !matches!(
                p.archetype(i),
                Archetype::Healthy | Archetype::Expanding | Archetype::Newcomer
            ) {
                continue;
            }
            for e in events {
                match &e.body {
                    EventBody::Call(c) => {
                        assert!(c.sentiment.is_none_or(|s| s > -0.5), "{e:?}");
                        assert!(
                            c.topics.iter().all(|t| !RISK.contains(&t.as_str())),
                            "{e:?}"
                        );
                    }
                    EventBody::Email(m) => assert!(!matches!(
                        m.action,
                        EmailAction::Bounced | EmailAction::Unsubscribed | EmailAction::Complained
                    )),
                    EventBody::Deal(d) => {
                        assert!(d.stage != DealStage::ClosedLost);
                        assert!(!matches!(
                            d.kind,
                            DealKind::Contraction | DealKind::Cancellation
                        ));
                    }
                    EventBody::ProductUsage(_) => {}
                }
            }
        }
    }

    #[test]
    fn each_archetype_shows_its_signature() {
        let p = Portfolio::new(small(600, 13));
        let spec = p.spec().clone();
        let days = spec.days as usize;
        let half = spec.start_day + spec.days as i32 / 2;
        for (i, events) in per_account(&p).iter().enumerate() {
            let id = p.account_id(i);
            let daily = daily_usage(&p, events);
            let weekly = |r: std::ops::Range<usize>| {
                let n = r.len() as f64;
                daily[r].iter().map(|d| d.0).sum::<f64>() / n * 7.0
            };
            let deal = |kind: DealKind, stage: DealStage| {
                events.iter().any(
                    |e| matches!(&e.body, EventBody::Deal(d) if d.kind == kind && d.stage == stage),
                )
            };
            match p.archetype(i) {
                Archetype::Healthy => {
                    let r = weekly(days - 28..days) / weekly(0..45);
                    assert!((0.75..1.3).contains(&r), "{id}: {r}");
                }
                Archetype::Expanding => {
                    assert!(deal(DealKind::Expansion, DealStage::ClosedWon), "{id}");
                    assert!(weekly(days - 14..days) > 1.4 * weekly(0..45), "{id}");
                }
                Archetype::SlowDecline => {
                    let r = weekly(days - 14..days) / weekly(0..45);
                    assert!((0.15..0.5).contains(&r), "{id}: {r}");
                }
                Archetype::NegativeCall => {
                    let bad = events.iter().any(|e| {
                        day_of(e.occurred_at_ms) >= half
                            && matches!(&e.body, EventBody::Call(c) if c.sentiment.unwrap_or(0.0) <= -0.5
                                && c.topics.iter().any(|t| t == "pricing" || t == "competitor" || t == "churn"))
                    });
                    assert!(bad, "{id}");
                }
                Archetype::EmailTrouble => {
                    let trouble: Vec<EmailAction> = events
                        .iter()
                        .filter(|e| day_of(e.occurred_at_ms) >= half)
                        .filter_map(|e| match &e.body {
                            EventBody::Email(m) => Some(m.action),
                            _ => None,
                        })
                        .collect();
                    assert!(trouble.contains(&EmailAction::Bounced), "{id}");
                    assert!(trouble.contains(&EmailAction::Unsubscribed), "{id}");
                }
                Archetype::LostRenewal => {
                    let lost = deal(DealKind::Renewal, DealStage::ClosedLost)
                        || deal(DealKind::Contraction, DealStage::ClosedWon);
                    assert!(lost, "{id}");
                    assert!(weekly(days - 14..days) < 0.6 * weekly(0..45), "{id}");
                }
                Archetype::Newcomer => {
                    assert!(day_of(events[0].occurred_at_ms) > spec.start_day);
                }
                Archetype::SuddenDrop | Archetype::GoesDark => {}
            }
        }
    }

    #[test]
    fn weekdays_are_busier_than_weekends_and_features_come_from_the_list() {
        let p = Portfolio::new(small(100, 6));
        let (mut weekday, mut weekend) = (0usize, 0usize);
        let names: HashSet<&str> = FEATURES.iter().map(|f| f.0).collect();
        for e in p.events() {
            if let EventBody::ProductUsage(u) = &e.body {
                assert!(names.contains(u.feature.as_deref().unwrap()));
                if (day_of(e.occurred_at_ms) + 3).rem_euclid(7) >= 5 {
                    weekend += 1;
                } else {
                    weekday += 1;
                }
            }
        }
        // Per day: weekday 1.3 against weekend 0.25.
        assert!(
            weekday as f64 / 5.0 > 3.0 * weekend as f64 / 2.0,
            "{weekday} {weekend}"
        );
    }

    #[test]
    fn malformed_records_cover_every_reason() {
        let recs = malformed_records(7);
        let kinds: Vec<&str> = recs.iter().map(|r| r.0).collect();
        assert_eq!(
            kinds,
            [
                "not_json",
                "truncated",
                "wrong_type",
                "missing_field",
                "bad_timestamp",
                "unknown_type",
                "non_finite",
                "out_of_range",
                "too_large",
                "invalid_utf8",
                "empty",
                "too_deep",
                "unknown_enum"
            ]
        );
        let get = |k: &str| recs.iter().find(|r| r.0 == k).unwrap().1.clone();
        let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b);
        for (kind, bytes) in &recs {
            assert!(!bytes.contains(&b'\n'), "{kind}");
        }
        // Well-formed JSON whose content is wrong.
        for k in [
            "wrong_type",
            "missing_field",
            "bad_timestamp",
            "unknown_type",
            "out_of_range",
            "unknown_enum",
            "too_large",
        ] {
            let v = parse(&get(k)).unwrap_or_else(|e| panic!("{k}: {e}"));
            assert_eq!(v["event_id"], format!("bad-7-{k}"), "{k}");
        }
        let v = parse(&get("missing_field")).unwrap();
        assert!(v.get("account_id").is_none());
        assert!(parse(&get("wrong_type")).unwrap()["quantity"].is_string());
        assert_eq!(parse(&get("unknown_enum")).unwrap()["action"], "teleported");
        assert_eq!(parse(&get("out_of_range")).unwrap()["duration_s"], -30);
        assert_eq!(get("too_large").len(), TOO_LARGE_BYTES);
        // Broken JSON, each in its own way.
        assert_eq!(
            parse(&get("not_json")).unwrap_err().classify(),
            serde_json::error::Category::Syntax
        );
        assert_eq!(
            parse(&get("truncated")).unwrap_err().classify(),
            serde_json::error::Category::Eof
        );
        assert!(
            String::from_utf8(get("non_finite"))
                .unwrap()
                .contains(":NaN}")
        );
        assert!(parse(&get("non_finite")).is_err());
        assert!(std::str::from_utf8(&get("invalid_utf8")).is_err());
        assert!(get("empty").is_empty());
        let deep = get("too_deep");
        assert!(
            deep.windows(TOO_DEEP_LEVELS)
                .any(|w| w.iter().all(|&b| b == b'['))
        );
        assert!(
            parse(&deep)
                .unwrap_err()
                .to_string()
                .contains("recursion limit")
        );
        // The seed varies the records.
        let other = malformed_records(8);
        assert!(
            recs.iter()
                .zip(&other)
                .filter(|(a, _)| a.0 != "empty")
                .all(|(a, b)| a.1 != b.1)
        );
    }
}
