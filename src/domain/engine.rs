//! `evaluate`: score an account at `now`, move its alerts through their lifecycle, decide what to
//! emit, and say when the account must be looked at again if nothing happens (its timer).
//!
//! Evaluation runs after every folded event and every fired timer, never per batch, so the
//! outputs do not depend on how the input was batched.

use crate::config::{Config, Severity};
use crate::domain::alert::{self, Check, RULES, Rule};
use crate::domain::event::{DAY_MS, day_of};
use crate::domain::peers::PeerBook;
use crate::domain::score::{self, Band, COMPONENTS, Driver, WindowCache};
use crate::domain::state::{SCORE_DAYS, rel_day};
use crate::pb::{AccountState, Cooldown, OpenAlert};

/// A health-score change to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreChange {
    pub account_id: String,
    pub score: u32,
    pub previous_score: Option<u32>,
    pub band: Band,
    pub previous_band: Option<Band>,
    /// (component, value) for the components with data.
    pub components: Vec<(&'static str, f64)>,
    pub drivers: Vec<Driver>,
    pub as_of_ms: i64,
    pub change_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    Open,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Open => "open",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// An alert opening or resolving.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertChange {
    pub alert_id: String,
    pub account_id: String,
    pub rule: Rule,
    pub severity: String,
    pub status: AlertStatus,
    pub opened_at_ms: i64,
    pub resolved_at_ms: Option<i64>,
    pub health_score: u32,
    pub evidence: Vec<(String, String)>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Score(ScoreChange),
    Alert(AlertChange),
}

/// Evaluates the account at `now_ms`, appends what is to be emitted to `out`, and returns the
/// time of its next check (its timer), if any.
///
/// With peer-scored components, `peers` is the account partition's book: it is moved to the
/// period of `now_ms` first, and the account's readings join it (once per period) after.
pub fn evaluate(
    s: &mut AccountState,
    now_ms: i64,
    cfg: &Config,
    peers: Option<&mut PeerBook>,
    out: &mut Vec<Output>,
) -> Option<i64> {
    evaluate_with(s, now_ms, cfg, peers, out, &mut WindowCache::default())
}

/// [`evaluate`], with the account's windowed sums kept in `windows` from one evaluation to the
/// next (see [`WindowCache`]); the batch loop keeps one per account in the batch.
pub fn evaluate_with(
    s: &mut AccountState,
    now_ms: i64,
    cfg: &Config,
    mut peers: Option<&mut PeerBook>,
    out: &mut Vec<Output>,
    windows: &mut WindowCache,
) -> Option<i64> {
    let w = windows.windows(s, now_ms);
    let mut values = score::absolute_components(s, &w, now_ms, cfg);
    if let Some(book) = peers.as_deref_mut() {
        // One reading serves both the ranking and the period's sketches.
        let raw = score::raw_readings(s, &w, now_ms, cfg);
        book.advance(now_ms, cfg);
        score::rank_against_peers(&mut values, s, &raw, book, cfg);
        book.contribute(s, &raw, cfg);
    }
    let peers = peers.as_deref();
    let Some(scored) = score::score(&values, cfg) else {
        return next_check(s, now_ms, cfg);
    };
    let sc = scored.score;
    let today = day_of(now_ms);

    // Daily high and low of the score, for the score-drop rule.
    let rd = rel_day(today);
    match s.score_day.last() {
        Some(&d) if d == rd => {
            let i = s.score_day.len() - 1;
            s.score_max[i] = s.score_max[i].max(sc);
            s.score_min[i] = s.score_min[i].min(sc);
        }
        Some(&d) if d > rd => {}
        _ => {
            s.score_day.push(rd);
            s.score_max.push(sc);
            s.score_min.push(sc);
        }
    }
    let keep_from = s
        .score_day
        .iter()
        .position(|&d| d > rd - SCORE_DAYS)
        .unwrap_or(s.score_day.len());
    if keep_from > 0 {
        s.score_day.drain(..keep_from);
        s.score_max.drain(..keep_from);
        s.score_min.drain(..keep_from);
    }
    let window = cfg.alerts.score_drop.window_days as i32;
    let max_recent = s
        .score_day
        .iter()
        .zip(&s.score_max)
        .filter(|(d, _)| **d > rd - window)
        .map(|(_, m)| *m)
        .max()
        .unwrap_or(sc);
    s.current_score = sc;

    // The score change first, then the alerts it explains.
    let bands = &cfg.scorecard.bands;
    let band = Band::of(sc, bands);
    let emit = if !s.scored {
        true
    } else {
        let prev_band = Band::of(s.emitted_score, bands);
        sc.abs_diff(s.emitted_score) >= cfg.scorecard.min_score_delta || band != prev_band
    };
    if emit {
        let previous: Option<score::Values> =
            s.scored.then(|| score::from_stored(&s.emitted_components));
        let drivers = score::drivers(s, now_ms, previous.as_ref(), &values, cfg, peers);
        s.emit_seq += 1;
        out.push(Output::Score(ScoreChange {
            account_id: s.account_id.clone(),
            score: sc,
            previous_score: s.scored.then_some(s.emitted_score),
            band,
            previous_band: s.scored.then(|| Band::of(s.emitted_score, bands)),
            components: COMPONENTS
                .iter()
                .zip(values)
                .filter_map(|(c, v)| v.map(|v| (c.name(), (v * 10.0).round() / 10.0)))
                .collect(),
            drivers,
            as_of_ms: now_ms,
            change_id: change_id(&s.account_id, s.emit_seq),
        }));
        s.scored = true;
        s.emitted_score = sc;
        s.emitted_components = scored.stored();
    }

    s.cooldowns.retain(|c| c.until_ms > now_ms);
    for rule in RULES {
        let (enabled, severity, cooldown_days) = rule.settings(cfg);
        if !enabled {
            continue;
        }
        let open_idx = s.open_alerts.iter().position(|a| a.rule == rule.name());
        match (
            alert::verdict(rule, s, &w, now_ms, sc, max_recent, cfg, false),
            open_idx,
        ) {
            (Check::Firing(_), None) => {
                if s.cooldowns.iter().any(|c| c.rule == rule.name()) {
                    continue;
                }
                // Opening: now the evidence and the message are needed.
                let Check::Firing(f) = alert::check(rule, s, &w, now_ms, sc, max_recent, cfg)
                else {
                    unreachable!("the same rule on the same state gives the same verdict")
                };
                let id = alert::alert_id(&s.account_id, rule, f.episode_start_ms);
                let evidence: Vec<(String, String)> = f
                    .evidence
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
                let sev = escalate(rule, severity, &w);
                s.open_alerts.push(OpenAlert {
                    rule: rule.name().to_owned(),
                    episode_start_ms: f.episode_start_ms,
                    opened_ms: now_ms,
                    severity: sev.as_str().to_owned(),
                    opened_score: sc,
                });
                out.push(Output::Alert(AlertChange {
                    alert_id: id,
                    account_id: s.account_id.clone(),
                    rule,
                    severity: sev.as_str().to_owned(),
                    status: AlertStatus::Open,
                    opened_at_ms: now_ms,
                    resolved_at_ms: None,
                    health_score: sc,
                    evidence,
                    message: f.message,
                }));
            }
            (Check::Clear, Some(i)) => {
                let a = s.open_alerts.remove(i);
                let days = (now_ms - a.opened_ms) / DAY_MS;
                let evidence = vec![
                    ("opened_score".to_owned(), a.opened_score.to_string()),
                    ("open_days".to_owned(), days.to_string()),
                ];
                out.push(Output::Alert(AlertChange {
                    alert_id: alert::alert_id(&s.account_id, rule, a.episode_start_ms),
                    account_id: s.account_id.clone(),
                    rule,
                    severity: a.severity,
                    status: AlertStatus::Resolved,
                    opened_at_ms: a.opened_ms,
                    resolved_at_ms: Some(now_ms),
                    health_score: sc,
                    evidence,
                    message: format!(
                        "Resolved after {days} days: {}; health score {} (was {} when opened).",
                        rule.condition(),
                        sc,
                        a.opened_score
                    ),
                }));
                s.cooldowns.push(Cooldown {
                    rule: rule.name().to_owned(),
                    until_ms: now_ms + cooldown_days as i64 * DAY_MS,
                });
            }
            _ => {}
        }
    }
    next_check(s, now_ms, cfg)
}

/// A renewal at risk with little time left, or usage that has all but stopped, is more urgent
/// than the rule's configured severity.
fn escalate(rule: Rule, sev: Severity, w: &score::Windows) -> Severity {
    match rule {
        Rule::UsageDrop => {
            let w = w.usage;
            if w.weekly_avg28 > 0.0 && w.last7 / w.weekly_avg28 < 0.2 {
                return sev.max(Severity::Critical);
            }
            sev
        }
        _ => sev,
    }
}

/// When nothing else happens, the next moment at which the account's score or alerts can change:
/// milestones of silence, the end of alert windows, a renewal entering its window.
fn next_check(s: &AccountState, now_ms: i64, cfg: &Config) -> Option<i64> {
    let a = &cfg.alerts;
    let mut due: Option<i64> = None;
    let mut consider = |t: i64| {
        if t > now_ms && due.is_none_or(|d| t < d) {
            due = Some(t);
        }
    };
    if s.last_usage_ms > 0 {
        for days in [
            7,
            a.gone_dark.days,
            21,
            cfg.scorecard.components.recency.zero_days,
        ] {
            consider(s.last_usage_ms + days as i64 * DAY_MS);
        }
    }
    for (t, days) in [
        (s.negative_call_ms, a.negative_call.window_days),
        (s.email_risk_ms, a.email_trouble.window_days),
        (s.deal_loss_ms, a.deal_lost.window_days),
    ] {
        if t > 0 {
            consider(t + days as i64 * DAY_MS);
        }
    }
    for d in s
        .open_deals
        .iter()
        .filter(|d| d.kind == "renewal" && d.close_day != 0)
    {
        consider((d.close_day as i64 - a.renewal_at_risk.within_days as i64) * DAY_MS);
        consider((d.close_day as i64 + 1) * DAY_MS);
    }
    due
}

/// The deterministic id of a score change: the account's n-th emitted change.
pub fn change_id(account_id: &str, seq: u32) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(account_id.as_bytes());
    h.update(&[0xff]);
    h.update(&seq.to_be_bytes());
    format!("{:032x}", h.digest128())
}
