//! Churn alert rules: each looks at the state (and the score just computed) and says whether its
//! condition holds, does not hold, or sits in between (hysteresis: leave the alert as it is).
//!
//! Rules are conditions on state, not on single events, which gives every alert the same
//! lifecycle: it opens when its condition starts to hold (unless the rule is cooling down after
//! its last episode) and resolves when the condition clears. Re-evaluating an unchanged account
//! therefore never fires anything twice.

use crate::config::{Config, Severity};
use crate::domain::event::{DAY_MS, day_of};
use crate::domain::fold::money;
use crate::domain::score::Windows;
use crate::pb::AccountState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    UsageDrop,
    GoneDark,
    NegativeCall,
    EmailTrouble,
    RenewalAtRisk,
    DealLost,
    ScoreDrop,
}

pub const RULES: [Rule; 7] = [
    Rule::UsageDrop,
    Rule::GoneDark,
    Rule::NegativeCall,
    Rule::EmailTrouble,
    Rule::RenewalAtRisk,
    Rule::DealLost,
    Rule::ScoreDrop,
];

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::UsageDrop => "usage_drop",
            Rule::GoneDark => "gone_dark",
            Rule::NegativeCall => "negative_call",
            Rule::EmailTrouble => "email_trouble",
            Rule::RenewalAtRisk => "renewal_at_risk",
            Rule::DealLost => "deal_lost",
            Rule::ScoreDrop => "score_drop",
        }
    }

    pub fn parse(name: &str) -> Option<Rule> {
        RULES.iter().copied().find(|r| r.name() == name)
    }

    /// (enabled, severity, cooldown days)
    pub fn settings(self, cfg: &Config) -> (bool, Severity, u32) {
        let a = &cfg.alerts;
        match self {
            Rule::UsageDrop => (
                a.usage_drop.enabled,
                a.usage_drop.severity,
                a.usage_drop.cooldown_days,
            ),
            Rule::GoneDark => (
                a.gone_dark.enabled,
                a.gone_dark.severity,
                a.gone_dark.cooldown_days,
            ),
            Rule::NegativeCall => (
                a.negative_call.enabled,
                a.negative_call.severity,
                a.negative_call.cooldown_days,
            ),
            Rule::EmailTrouble => (
                a.email_trouble.enabled,
                a.email_trouble.severity,
                a.email_trouble.cooldown_days,
            ),
            Rule::RenewalAtRisk => (
                a.renewal_at_risk.enabled,
                a.renewal_at_risk.severity,
                a.renewal_at_risk.cooldown_days,
            ),
            Rule::DealLost => (
                a.deal_lost.enabled,
                a.deal_lost.severity,
                a.deal_lost.cooldown_days,
            ),
            Rule::ScoreDrop => (
                a.score_drop.enabled,
                a.score_drop.severity,
                a.score_drop.cooldown_days,
            ),
        }
    }
}

/// The condition holds: what opens the alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// When this episode began; with the account and rule it makes the `alert_id`.
    pub episode_start_ms: i64,
    pub evidence: Vec<(&'static str, String)>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Firing(Firing),
    Clear,
    /// Between the open and resolve thresholds: leave the alert as it is.
    Hold,
}

/// Evaluates one rule. `score` is the score just computed, `max_recent` the highest score of the
/// score-drop window.
pub fn check(
    rule: Rule,
    s: &AccountState,
    w: &Windows,
    now_ms: i64,
    score: u32,
    max_recent: u32,
    cfg: &Config,
) -> Check {
    verdict(rule, s, w, now_ms, score, max_recent, cfg, true)
}

/// [`check`], with the evidence and message of a firing rule left empty unless `explain`: most
/// evaluations of a firing rule find its alert already open and need only the verdict, while the
/// sentences cost more than the rule itself.
#[allow(clippy::too_many_arguments)]
pub fn verdict(
    rule: Rule,
    s: &AccountState,
    w: &Windows,
    now_ms: i64,
    score: u32,
    max_recent: u32,
    cfg: &Config,
    explain: bool,
) -> Check {
    let firing = |episode_start_ms: i64,
                  describe: &dyn Fn() -> (Vec<(&'static str, String)>, String)| {
        let (evidence, message) = if explain {
            describe()
        } else {
            (Vec::new(), String::new())
        };
        Check::Firing(Firing {
            episode_start_ms,
            evidence,
            message,
        })
    };
    let a = &cfg.alerts;
    let old_enough = now_ms - s.first_seen_ms >= a.min_account_age_days as i64 * DAY_MS;
    match rule {
        Rule::UsageDrop => {
            let r = &a.usage_drop;
            let w = w.usage;
            if !w.has_baseline {
                return Check::Clear;
            }
            if w.weekly_avg28 < r.min_weekly_baseline {
                // Too little usage to judge a drop: open nothing, and keep an open alert open
                // unless usage is back at a healthy level (a dark account's baseline thins out
                // without it having recovered).
                return if w.last7 >= r.min_weekly_baseline * r.resolve_ratio {
                    Check::Clear
                } else {
                    Check::Hold
                };
            }
            let ratio = w.last7 / w.weekly_avg28;
            if ratio < r.drop_ratio {
                let pct = (1.0 - ratio) * 100.0;
                firing(now_ms, &|| {
                    (
                        vec![
                            ("usage_last_7d", format!("{:.0}", w.last7)),
                            ("weekly_average_28d", format!("{:.1}", w.weekly_avg28)),
                            ("change_pct", format!("{:.0}", -pct)),
                        ],
                        format!(
                            "Product usage down {pct:.0}% against its 28-day average: {:.0} events in the last 7 days vs {:.0} a week before.",
                            w.last7, w.weekly_avg28
                        ),
                    )
                })
            } else if ratio >= r.resolve_ratio {
                Check::Clear
            } else {
                Check::Hold
            }
        }
        Rule::GoneDark => {
            let days = a.gone_dark.days as i64;
            let _ = w;
            if s.last_usage_ms == 0 || !old_enough {
                return Check::Clear;
            }
            let idle = now_ms - s.last_usage_ms;
            if idle >= days * DAY_MS {
                firing(s.last_usage_ms + days * DAY_MS, &|| {
                    (
                        vec![
                            (
                                "last_usage_at",
                                crate::codec::time::format_rfc3339_ms(s.last_usage_ms),
                            ),
                            ("days_without_usage", (idle / DAY_MS).to_string()),
                        ],
                        format!(
                            "No product usage for {} days (since {}).",
                            idle / DAY_MS,
                            crate::codec::time::format_day(day_of(s.last_usage_ms))
                        ),
                    )
                })
            } else {
                Check::Clear
            }
        }
        Rule::NegativeCall => window(
            s.negative_call_ms,
            &s.negative_call_detail,
            a.negative_call.window_days,
            now_ms,
            "call",
            explain,
        ),
        Rule::EmailTrouble => window(
            s.email_risk_ms,
            &s.email_risk_detail,
            a.email_trouble.window_days,
            now_ms,
            "email",
            explain,
        ),
        Rule::DealLost => window(
            s.deal_loss_ms,
            &s.deal_loss_detail,
            a.deal_lost.window_days,
            now_ms,
            "deal",
            explain,
        ),
        Rule::RenewalAtRisk => {
            let r = &a.renewal_at_risk;
            let today = day_of(now_ms);
            let renewal = s
                .open_deals
                .iter()
                .filter(|d| {
                    d.kind == "renewal"
                        && d.close_day >= today
                        && d.close_day <= today + r.within_days as i32
                })
                .min_by_key(|d| d.close_day);
            match renewal {
                Some(d) if old_enough && score < r.score_below => firing(now_ms, &|| {
                    (
                        vec![
                            ("deal_id", d.deal_id.clone()),
                            ("renewal_date", crate::codec::time::format_day(d.close_day)),
                            ("days_to_renewal", (d.close_day - today).to_string()),
                            ("arr", format!("{:.0}", s.arr)),
                        ],
                        format!(
                            "Renewal {} worth {} is due in {} days and the health score is {score}.",
                            d.deal_id,
                            money(if d.amount > 0.0 { d.amount } else { s.arr }),
                            d.close_day - today
                        ),
                    )
                }),
                // Leave some room above the threshold before calling the risk gone.
                Some(_) if score < r.score_below + 5 => Check::Hold,
                _ => Check::Clear,
            }
        }
        Rule::ScoreDrop => {
            let r = &a.score_drop;
            if !old_enough {
                return Check::Clear;
            }
            let yellow = cfg.scorecard.bands.yellow;
            let drop = max_recent.saturating_sub(score);
            let into_red = score < yellow && max_recent >= yellow;
            if drop >= r.points || into_red {
                firing(now_ms, &|| {
                    (
                        vec![
                            ("score", score.to_string()),
                            ("highest_recent", max_recent.to_string()),
                            ("window_days", r.window_days.to_string()),
                        ],
                        if into_red {
                            format!(
                                "Health score fell into red: {score}, down from {max_recent} within {} days.",
                                r.window_days
                            )
                        } else {
                            format!(
                                "Health score dropped {drop} points within {} days: {max_recent} → {score}.",
                                r.window_days
                            )
                        },
                    )
                })
            } else if drop < r.resolve_points && score >= yellow {
                Check::Clear
            } else {
                Check::Hold
            }
        }
    }
}

fn window(
    trigger_ms: i64,
    detail: &str,
    days: u32,
    now_ms: i64,
    what: &'static str,
    explain: bool,
) -> Check {
    if trigger_ms > 0 && now_ms >= trigger_ms && now_ms - trigger_ms < days as i64 * DAY_MS {
        Check::Firing(Firing {
            episode_start_ms: trigger_ms,
            evidence: if explain {
                vec![
                    ("at", crate::codec::time::format_rfc3339_ms(trigger_ms)),
                    ("source", what.to_owned()),
                ]
            } else {
                Vec::new()
            },
            message: if explain {
                detail.to_owned()
            } else {
                String::new()
            },
        })
    } else {
        Check::Clear
    }
}

/// The deterministic id of an alert episode: the same account, rule and episode start always give
/// the same id, so a subscriber can deduplicate repeated deliveries.
pub fn alert_id(account_id: &str, rule: Rule, episode_start_ms: i64) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(account_id.as_bytes());
    h.update(&[0]);
    h.update(rule.name().as_bytes());
    h.update(&episode_start_ms.to_be_bytes());
    format!("{:032x}", h.digest128())
}

impl Rule {
    /// What the rule watches, for resolution messages.
    pub fn condition(self) -> &'static str {
        match self {
            Rule::UsageDrop => "product usage is back near its 28-day average",
            Rule::GoneDark => "product usage has resumed",
            Rule::NegativeCall => "no negative call within the rule's window",
            Rule::EmailTrouble => "no bounce, unsubscribe or complaint within the rule's window",
            Rule::RenewalAtRisk => {
                "the renewal is no longer at risk (score recovered, or the renewal closed)"
            }
            Rule::DealLost => "the lost deal is past the rule's window",
            Rule::ScoreDrop => "the health score has recovered",
        }
    }
}
