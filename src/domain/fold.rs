//! `fold`: the only way an account's engagement state changes.
//!
//! Pure and deterministic: the same state and event give the same state. `late` says whether the
//! event arrived behind its partition's watermark; a late event still counts in the buckets, but
//! does not set the trigger marks that open alerts, so nothing is raised about the past.

use crate::config::Config;
use crate::domain::event::{
    Call, CallOutcome, Deal, DealKind, DealStage, Direction, Email, EmailAction, Event, EventBody,
    ProductUsage, day_of,
};
use crate::domain::state::{
    ADOPTION_DAYS, ARR_HISTORY_DAYS, MAX_OPEN_DEALS, bucket_mut, id_hash, prune_buckets,
    prune_tracked, rel_day, touch,
};
use crate::pb::{AccountState, ArrChange, OpenDeal};

/// Risk topics remembered per account.
const MAX_RISK_TOPICS: usize = 8;
/// ARR changes remembered per account (besides the 400-day window): with more, the oldest are
/// forgotten and net retention is measured against the oldest one kept.
pub const MAX_ARR_CHANGES: usize = 48;
/// Bytes of an open deal's free-text stage kept in the state.
pub const MAX_STAGE_BYTES: usize = 64;

/// `s` cut to at most `max` bytes, at a character boundary.
fn clipped(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Folds one event into the account's state.
pub fn fold(s: &mut AccountState, ev: &Event, late: bool, cfg: &Config) {
    let t = ev.occurred_at_ms;
    if s.first_seen_ms == 0 || t < s.first_seen_ms {
        s.first_seen_ms = t;
    }
    if t > s.max_event_ms {
        if day_of(t) != day_of(s.max_event_ms) {
            let since = rel_day(day_of(t) - (ADOPTION_DAYS - 1));
            prune_tracked(&mut s.user_hash, &mut s.user_day, since);
            prune_tracked(&mut s.feature_hash, &mut s.feature_day, since);
        }
        s.max_event_ms = t;
        prune_buckets(s, day_of(t));
    }
    let day = day_of(t);
    let latest_day = day_of(s.max_event_ms);
    match &ev.body {
        EventBody::ProductUsage(u) => fold_usage(s, u, t, day, latest_day, cfg),
        EventBody::Email(e) => fold_email(s, e, t, day, latest_day, late),
        EventBody::Call(c) => fold_call(s, c, t, day, latest_day, late, cfg),
        EventBody::Deal(d) => fold_deal(s, d, t, late),
    }
}

fn fold_usage(
    s: &mut AccountState,
    u: &ProductUsage,
    t: i64,
    day: i32,
    latest_day: i32,
    cfg: &Config,
) {
    // An outcome (a report delivered, an invoice sent) is usage too, and also counted apart.
    let outcome = u.feature.as_deref().is_some_and(|f| {
        cfg.scorecard
            .components
            .outcome
            .features
            .iter()
            .any(|o| o == f)
    });
    if let Some(b) = bucket_mut(s, day, latest_day) {
        b.usage_events += 1;
        if outcome {
            b.outcome_events += 1;
        }
    }
    // `quantity` is validated but the scorecard counts events: volumes of different features
    // are not comparable units.
    let _ = u.quantity;
    let recent = day > latest_day - ADOPTION_DAYS;
    if let Some(user) = u.user_id.as_deref().filter(|_| recent) {
        touch(
            &mut s.user_hash,
            &mut s.user_day,
            id_hash(user),
            rel_day(day),
        );
    }
    if let Some(feature) = u.feature.as_deref().filter(|_| recent) {
        touch(
            &mut s.feature_hash,
            &mut s.feature_day,
            id_hash(feature),
            rel_day(day),
        );
    }
    s.last_usage_ms = s.last_usage_ms.max(t);
}

fn fold_email(s: &mut AccountState, e: &Email, t: i64, day: i32, latest_day: i32, late: bool) {
    let inbound = e.direction == Some(Direction::Inbound);
    if let Some(b) = bucket_mut(s, day, latest_day) {
        match e.action {
            // An inbound message from the customer is engagement, whatever the platform calls it.
            EmailAction::Sent | EmailAction::Delivered if inbound => b.email_replies += 1,
            EmailAction::Sent => b.emails_out += 1,
            // `delivered` follows `sent` for the same message; counting both would double it.
            EmailAction::Delivered => {}
            EmailAction::Opened => b.email_opens += 1,
            EmailAction::Clicked => b.email_clicks += 1,
            EmailAction::Replied => b.email_replies += 1,
            EmailAction::Bounced | EmailAction::Unsubscribed | EmailAction::Complained => {
                b.email_bad += 1
            }
        }
    }
    if matches!(
        e.action,
        EmailAction::Bounced | EmailAction::Unsubscribed | EmailAction::Complained
    ) && !late
        && t >= s.email_risk_ms
    {
        s.email_risk_ms = t;
        let who = e.contact_id.as_deref().unwrap_or("a contact");
        s.email_risk_detail = format!("Email to {who} {}.", e.action.as_str());
    }
    s.last_email_ms = s.last_email_ms.max(t);
}

fn fold_call(
    s: &mut AccountState,
    c: &Call,
    t: i64,
    day: i32,
    latest_day: i32,
    late: bool,
    cfg: &Config,
) {
    let rule = &cfg.alerts.negative_call;
    let risky: Vec<&str> = c
        .topics
        .iter()
        .filter(|topic| rule.risk_topics.iter().any(|r| r == *topic))
        .map(String::as_str)
        .collect();
    let reached = !matches!(
        c.outcome,
        Some(CallOutcome::NoAnswer | CallOutcome::Voicemail)
    );
    if let Some(b) = bucket_mut(s, day, latest_day) {
        if reached {
            b.calls += 1;
        }
        match c.outcome {
            Some(CallOutcome::MeetingHeld) => b.meetings_held += 1,
            Some(CallOutcome::MeetingCancelled | CallOutcome::MeetingNoShow) => {
                b.meetings_missed += 1
            }
            _ => {}
        }
        if let Some(sent) = c.sentiment {
            b.sentiment_milli_sum += (sent * 1000.0).round() as i32;
            b.sentiment_n += 1;
        }
        b.risk_mentions += risky.len() as u32;
    }
    for topic in &risky {
        match s.risk_topics.iter().position(|x| x == topic) {
            Some(i) => s.risk_topic_ms[i] = s.risk_topic_ms[i].max(t),
            None => {
                if s.risk_topics.len() >= MAX_RISK_TOPICS {
                    let (i, _) = s
                        .risk_topic_ms
                        .iter()
                        .enumerate()
                        .min_by_key(|&(_, m)| *m)
                        .expect("non-empty");
                    s.risk_topics.swap_remove(i);
                    s.risk_topic_ms.swap_remove(i);
                }
                s.risk_topics.push((*topic).to_owned());
                s.risk_topic_ms.push(t);
            }
        }
    }
    let negative = c.sentiment.is_some_and(|x| x <= rule.sentiment_at_most) || !risky.is_empty();
    if negative && !late && t >= s.negative_call_ms {
        s.negative_call_ms = t;
        let mut detail = match c.sentiment {
            Some(x) => format!("Call sentiment {x:.2}"),
            None => "Call".to_owned(),
        };
        if !risky.is_empty() {
            detail.push_str(&format!(" with risk topics: {}", risky.join(", ")));
        }
        detail.push('.');
        s.negative_call_detail = detail;
    }
    s.last_call_ms = s.last_call_ms.max(t);
}

fn fold_deal(s: &mut AccountState, d: &Deal, t: i64, late: bool) {
    s.last_deal_ms = s.last_deal_ms.max(t);
    // Attributes: the latest event (by event time) that carries them wins, late or not.
    if (d.plan.is_some() || d.industry.is_some()) && t >= s.attrs_ms {
        s.attrs_ms = t;
        if let Some(p) = &d.plan {
            s.plan.clone_from(p);
        }
        if let Some(i) = &d.industry {
            s.industry.clone_from(i);
        }
    }
    let pos = s.open_deals.iter().position(|o| o.deal_id == d.deal_id);
    match &d.stage {
        DealStage::Open(stage) => {
            let deal = OpenDeal {
                deal_id: d.deal_id.clone(),
                kind: d.kind.as_str().to_owned(),
                stage: clipped(stage, MAX_STAGE_BYTES),
                amount: d.amount.unwrap_or(0.0),
                close_day: d.close_day.unwrap_or(0),
            };
            match pos {
                Some(i) => s.open_deals[i] = deal,
                None => {
                    if s.open_deals.len() >= MAX_OPEN_DEALS {
                        s.open_deals.remove(0);
                    }
                    s.open_deals.push(deal);
                }
            }
            return;
        }
        DealStage::ClosedWon | DealStage::ClosedLost => {
            if let Some(i) = pos {
                s.open_deals.remove(i);
            }
        }
    }
    let won = d.stage == DealStage::ClosedWon;
    let amount = d.amount.unwrap_or(0.0);
    let before = s.arr;
    let mut loss: Option<String> = None;
    let after = match (d.kind, won) {
        (DealKind::NewBusiness, true) | (DealKind::Expansion, true) => before + amount,
        // A won renewal states the contract's value from now on.
        (DealKind::Renewal, true) if d.amount.is_some() => amount,
        (DealKind::Renewal, true) => before,
        (DealKind::Contraction, true) => {
            loss = Some(format!(
                "Contraction of {} closed won (deal {}).",
                money(amount),
                d.deal_id
            ));
            (before - amount).max(0.0)
        }
        (DealKind::Cancellation, true) => {
            loss = Some(format!("Cancellation closed (deal {}).", d.deal_id));
            0.0
        }
        (DealKind::Renewal, false) => {
            loss = Some(format!("Renewal {} closed lost.", d.deal_id));
            0.0
        }
        // A lost new-business or expansion deal is a missed upsell, not lost revenue; a lost
        // contraction or cancellation means the customer stayed.
        (_, false) => before,
    };
    if let Some(detail) = loss {
        if !late && t >= s.deal_loss_ms {
            s.deal_loss_ms = t;
            s.deal_loss_detail = detail;
        }
    }
    if after != before || !s.has_arr {
        s.has_arr = true;
        s.arr = after;
        s.arr_changes.push(ArrChange {
            at_ms: t,
            arr_after: after,
        });
        // Keep history ordered by time even when a deal event arrives late.
        s.arr_changes.sort_by_key(|c| c.at_ms);
        let horizon = s.max_event_ms - ARR_HISTORY_DAYS as i64 * crate::domain::event::DAY_MS;
        // Keep the last change before the horizon: it is the ARR in force a year ago.
        let keep_from = s
            .arr_changes
            .iter()
            .rposition(|c| c.at_ms <= horizon)
            .unwrap_or(0)
            .max(s.arr_changes.len().saturating_sub(MAX_ARR_CHANGES));
        s.arr_changes.drain(..keep_from);
    }
}

/// "$12,500" — amounts are shown without a currency conversion.
pub fn money(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{}${out}", if n < 0 { "-" } else { "" })
}
