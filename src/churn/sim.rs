//! Synthetic churn histories: portfolios in which churn follows a known (hidden) rule, so that
//! `rapport calibrate` and `rapport evaluate` can be checked against the truth.
//!
//! Every account has a plan (`starter`, `growth`, `enterprise`, carried by its first deal), users
//! who log in most days, email and call activity, and **outcome** events (`report_delivered`) at
//! a rate that is its plan's expectation times its *value factor*. What makes an account churn:
//!
//! - [`ChurnRule::Outcome`]: an account that gets little value (outcomes far below its plan's
//!   expectation, which it does from its first day) churns, after at least three months of it,
//!   with probability 0.75; the others rarely churn (3%, at random). Churners keep logging in until
//!   five weeks before they cancel; then their usage falls to about a third.
//! - [`ChurnRule::Random`]: every account churns with probability 0.2 at a random day, whatever
//!   it does; nothing in the events predicts it.
//!
//! A churn is a `cancellation` deal `closed_won` on the churn day; the account sends nothing after
//! it. Deterministic: one ChaCha8 stream per `(seed, account)`, events sorted by time, then
//! account, then their order of generation.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};

use crate::domain::event::{
    Call, CallOutcome, DAY_MS, Deal, DealKind, DealStage, Direction, Email, EmailAction, Event,
    EventBody, ProductUsage,
};

/// The product-usage feature that is the outcome in these histories.
pub const OUTCOME_FEATURE: &str = "report_delivered";

/// Plans: name, outcomes per 28 days the plan implies, ARR, share of accounts.
pub const PLANS: [(&str, f64, f64, f64); 3] = [
    ("starter", 4.0, 6_000.0, 0.5),
    ("growth", 14.0, 24_000.0, 0.35),
    ("enterprise", 40.0, 120_000.0, 0.15),
];

const FEATURES: [&str; 6] = ["dashboard", "search", "export", "alerts", "api", "settings"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChurnRule {
    /// Churn follows outcome volume far below the plan's expectation.
    Outcome,
    /// Churn is random: nothing predicts it.
    Random,
}

#[derive(Debug, Clone)]
pub struct SimSpec {
    pub accounts: usize,
    pub days: u32,
    pub seed: u64,
    pub rule: ChurnRule,
    /// UTC day number of the first day.
    pub start_day: i32,
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            accounts: 1_000,
            days: 270,
            seed: 7,
            rule: ChurnRule::Outcome,
            start_day: crate::generate::DEFAULT_START_DAY,
        }
    }
}

/// What the simulation decided for one account (the truth the reports are checked against).
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    pub account_id: String,
    pub plan: &'static str,
    /// Outcomes delivered as a share of the plan's expectation.
    pub value: f64,
    /// Day index (from the start) of the cancellation, if it churns.
    pub churn_day: Option<u32>,
}

/// The scorecard settings that name the simulation's outcome feature and plan expectations,
/// as TOML to merge over the defaults (weights unchanged: the outcome has weight 0 in them).
pub fn outcome_scorecard_toml() -> String {
    let plans: Vec<String> = PLANS
        .iter()
        .map(|(p, e, _, _)| format!("{p} = {e}"))
        .collect();
    format!(
        "[scorecard.components.outcome]\nfeatures = [\"{OUTCOME_FEATURE}\"]\nlabel = \"reports delivered\"\nexpected_by_plan = {{ {} }}\n",
        plans.join(", ")
    )
}

fn account_rng(seed: u64, i: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The truth for every account, in account order.
pub fn truths(spec: &SimSpec) -> Vec<Truth> {
    (0..spec.accounts).map(|i| profile(spec, i).0).collect()
}

struct Profile {
    plan: usize,
    users: u32,
    usage_per_day: f64,
    value: f64,
    churn_day: Option<u32>,
    /// Usage falls from this day on (churners under the outcome rule).
    fade_from: Option<u32>,
}

fn profile(spec: &SimSpec, i: usize) -> (Truth, Profile, ChaCha8Rng) {
    let mut rng = account_rng(spec.seed, i);
    let u: f64 = rng.random();
    let plan = if u < PLANS[0].3 {
        0
    } else if u < PLANS[0].3 + PLANS[1].3 {
        1
    } else {
        2
    };
    let users = rng.random_range(3..=12);
    let usage_per_day = rng.random_range(1.5..4.0);
    let low_value = rng.random_bool(0.3);
    let value = if low_value {
        rng.random_range(0.05..0.25)
    } else {
        rng.random_range(0.8..1.4)
    };
    let last = spec.days.saturating_sub(20).max(61);
    let (churn_day, fade_from) = match spec.rule {
        ChurnRule::Outcome => {
            if low_value && rng.random_bool(0.75) {
                let d = rng.random_range(95.min(last - 1)..last);
                (Some(d), Some(d.saturating_sub(35)))
            } else if rng.random_bool(0.03) {
                (Some(rng.random_range(60..last)), None)
            } else {
                (None, None)
            }
        }
        ChurnRule::Random => {
            if rng.random_bool(0.2) {
                (Some(rng.random_range(60..last)), None)
            } else {
                (None, None)
            }
        }
    };
    let truth = Truth {
        account_id: format!("acct-{i:06}"),
        plan: PLANS[plan].0,
        value,
        churn_day,
    };
    let p = Profile {
        plan,
        users,
        usage_per_day,
        value,
        churn_day,
        fade_from,
    };
    (truth, p, rng)
}

/// Every event of the history, in time order.
pub fn events(spec: &SimSpec) -> Vec<Event> {
    let mut all: Vec<(i64, usize, u32, Event)> = Vec::new();
    for i in 0..spec.accounts {
        let (truth, p, mut rng) = profile(spec, i);
        let id = truth.account_id;
        let mut seq = 0u32;
        let mut push = |all: &mut Vec<(i64, usize, u32, Event)>, at: i64, body: EventBody| {
            seq += 1;
            all.push((
                at,
                i,
                seq,
                Event {
                    event_id: format!("{id}-{seq}"),
                    account_id: id.clone(),
                    occurred_at_ms: at,
                    body,
                },
            ));
        };
        let day_ms = |d: u32| (spec.start_day as i64 + d as i64) * DAY_MS;
        let (plan, expected, arr, _) = PLANS[p.plan];
        push(
            &mut all,
            day_ms(0) + 9 * 3_600_000,
            EventBody::Deal(Deal {
                deal_id: format!("{id}-new"),
                kind: DealKind::NewBusiness,
                stage: DealStage::ClosedWon,
                amount: Some(arr),
                currency: Some("USD".into()),
                close_day: Some(spec.start_day),
                plan: Some(plan.to_owned()),
                industry: None,
            }),
        );
        let end = p.churn_day.unwrap_or(spec.days);
        let outcome_rate = Poisson::new(expected / 28.0 * p.value).ok();
        for d in 0..end {
            let weekend = (spec.start_day + d as i32 + 4).rem_euclid(7) >= 5;
            let mut rate = p.usage_per_day * if weekend { 0.4 } else { 1.0 };
            if p.fade_from.is_some_and(|f| d >= f) {
                rate *= 0.3;
            }
            let n = Poisson::new(rate).map_or(0, |x| x.sample(&mut rng) as u32);
            for _ in 0..n {
                let at = day_ms(d) + rng.random_range(7 * 3_600_000..20 * 3_600_000);
                let user = rng.random_range(0..p.users);
                let feature = FEATURES[rng.random_range(0..FEATURES.len())];
                push(
                    &mut all,
                    at,
                    EventBody::ProductUsage(ProductUsage {
                        user_id: Some(format!("u{user}")),
                        feature: Some(feature.to_owned()),
                        quantity: 1.0,
                    }),
                );
            }
            let k = outcome_rate.map_or(0, |x| x.sample(&mut rng) as u32);
            for _ in 0..k {
                let at = day_ms(d) + rng.random_range(8 * 3_600_000..18 * 3_600_000);
                push(
                    &mut all,
                    at,
                    EventBody::ProductUsage(ProductUsage {
                        user_id: Some(format!("u{}", rng.random_range(0..p.users))),
                        feature: Some(OUTCOME_FEATURE.to_owned()),
                        quantity: 1.0,
                    }),
                );
            }
            if d % 7 == 3 {
                let at = day_ms(d) + 10 * 3_600_000;
                let email = |action| {
                    EventBody::Email(Email {
                        contact_id: Some("c1".into()),
                        direction: Some(Direction::Outbound),
                        action,
                        campaign: None,
                    })
                };
                push(&mut all, at, email(EmailAction::Sent));
                if rng.random_bool(0.6) {
                    push(&mut all, at + 3_600_000, email(EmailAction::Opened));
                }
                if rng.random_bool(0.25) {
                    push(&mut all, at + 7_200_000, email(EmailAction::Replied));
                }
            }
            if d % 30 == 11 {
                let sentiment: f64 = (0.3 + rng.random_range(-0.3..0.3f64)).clamp(-1.0, 1.0);
                push(
                    &mut all,
                    day_ms(d) + 15 * 3_600_000,
                    EventBody::Call(Call {
                        contact_id: Some("c1".into()),
                        direction: Some(Direction::Outbound),
                        duration_s: Some(1_200.0),
                        outcome: Some(CallOutcome::MeetingHeld),
                        sentiment: Some((sentiment * 100.0).round() / 100.0),
                        topics: Vec::new(),
                    }),
                );
            }
        }
        if let Some(c) = p.churn_day {
            push(
                &mut all,
                day_ms(c) + 12 * 3_600_000,
                EventBody::Deal(Deal {
                    deal_id: format!("{id}-cancel"),
                    kind: DealKind::Cancellation,
                    stage: DealStage::ClosedWon,
                    amount: Some(0.0),
                    currency: Some("USD".into()),
                    close_day: Some(spec.start_day + c as i32),
                    plan: None,
                    industry: None,
                }),
            );
        }
    }
    all.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    all.into_iter().map(|x| x.3).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_spec_same_history_and_churn_follows_the_rule() {
        let spec = SimSpec {
            accounts: 300,
            days: 200,
            ..SimSpec::default()
        };
        let a = events(&spec);
        assert_eq!(a, events(&spec));
        assert!(a.windows(2).all(|w| w[0].occurred_at_ms <= w[1].occurred_at_ms));
        let t = truths(&spec);
        let churn_rate = |low: bool| {
            let g: Vec<&Truth> = t.iter().filter(|x| (x.value < 0.5) == low).collect();
            g.iter().filter(|x| x.churn_day.is_some()).count() as f64 / g.len() as f64
        };
        assert!(churn_rate(true) > 0.5, "low-value accounts churn");
        assert!(churn_rate(false) < 0.1, "the others mostly stay");
        // Nothing after a cancellation.
        for x in t.iter().filter(|x| x.churn_day.is_some()) {
            let last = a.iter().rev().find(|e| e.account_id == x.account_id).unwrap();
            assert!(matches!(&last.body, EventBody::Deal(d) if d.kind == DealKind::Cancellation));
        }
    }
}
