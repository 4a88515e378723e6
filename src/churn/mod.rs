//! Judging a scorecard against churn history: `rapport evaluate` and `rapport calibrate`.
//!
//! A history is a set of events (NDJSON files in the input contract) in which churn is marked by
//! `cancellation` deals that are `closed_won` (the cancellation went through). [`replay`] folds it
//! in event-time order with the engine's own `fold` and `evaluate` (timers included, so "gone
//! dark" fires as it would live) and, every `every_days` from the end of a warm-up, records each
//! live account's component values and score: an [`Observation`]. An observation is labelled
//! *churns* when the account cancels within `horizon_days` after it; observation dates whose
//! horizon runs past the end of the history are not taken (their label is unknown).
//!
//! The replay is one stream with one clock (the merge of every partition), where a running
//! instance has one clock per partition; the two see the same events at the same event times,
//! so scores agree except for which moment a timer of a quiet account fires in a busy batch.

pub mod report;
pub mod sim;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result};

use crate::codec::DecodeLimits;
use crate::config::Config;
use crate::domain::engine::{AlertStatus, Output, evaluate};
use crate::domain::event::{DAY_MS, DealKind, DealStage, Event, EventBody, day_of};
use crate::domain::fold::fold;
use crate::domain::score::{self, Values};
use crate::domain::state::new_state;
use crate::pb::AccountState;
use crate::source::file::FileSource;
use crate::source::{Poll, Source};

/// When and how far ahead to look.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOpts {
    /// Days between observation dates.
    pub every_days: u32,
    /// An observation is labelled *churns* when the account cancels within this many days.
    pub horizon_days: u32,
    /// Days after the history's first event before the first observation (baselines form).
    pub warmup_days: u32,
}

impl Default for ReplayOpts {
    fn default() -> Self {
        ReplayOpts {
            every_days: 7,
            horizon_days: 90,
            warmup_days: 35,
        }
    }
}

/// One account at one observation date.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Index into [`Replayed::accounts`].
    pub account: u32,
    /// UTC day number of the observation (taken at its midnight).
    pub day: i32,
    pub values: Values,
    /// `None` until the account has enough components to be scored.
    pub score: Option<u32>,
    /// Cancels within the horizon after `day`.
    pub churns: bool,
}

/// An alert that opened during the replay.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertOpened {
    pub account: u32,
    pub at_ms: i64,
    pub rule: &'static str,
}

/// Everything [`replay`] learnt from a history.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    pub accounts: Vec<String>,
    /// First event of each account.
    pub first_ms: Vec<i64>,
    /// Its last event (a churner's is its cancellation).
    pub last_ms: Vec<i64>,
    /// When it churned, if it did.
    pub churn_ms: Vec<Option<i64>>,
    pub observations: Vec<Observation>,
    pub alerts: Vec<AlertOpened>,
    /// The history's first and last event.
    pub start_ms: i64,
    pub end_ms: i64,
    pub events: u64,
    pub duplicates: u64,
    pub opts: ReplayOpts,
}

impl Replayed {
    pub fn churners(&self) -> usize {
        self.churn_ms.iter().filter(|c| c.is_some()).count()
    }
    /// Distinct observation dates, in order.
    pub fn observation_days(&self) -> Vec<i32> {
        let mut d: Vec<i32> = self.observations.iter().map(|o| o.day).collect();
        d.dedup();
        d
    }
}

/// Reads a history: NDJSON files (or a directory of them, as `rapport run` reads it). Records that
/// are not valid events are counted and skipped, as the dead-letter output would take them.
pub fn read_history(inputs: &[impl AsRef<Path>], cfg: &Config) -> Result<(Vec<Event>, u64)> {
    let limits = DecodeLimits {
        max_record_bytes: cfg.engine.max_record_bytes,
        max_id_bytes: cfg.engine.max_id_bytes,
    };
    let mut files = Vec::new();
    for input in inputs {
        files.extend(crate::source::file::input_files(input.as_ref())?);
    }
    if files.is_empty() {
        anyhow::bail!("no history given: pass NDJSON files of events (or a directory of them) with churn marked by closed_won cancellation deals.");
    }
    let (mut events, mut rejected) = (Vec::new(), 0u64);
    let mut batch = crate::source::InputBatch::default();
    for f in files {
        // The same reader as `rapport run`: NDJSON lines, or length-delimited protobuf in .pb.
        let mut src = FileSource::open(&f.display().to_string(), false, cfg.engine.max_record_bytes)
            .with_context(|| format!("cannot read the history file {}; pass an existing NDJSON file", f.display()))?;
        loop {
            batch.clear();
            let poll = src
                .poll(10_000, std::time::Duration::ZERO, &mut batch)
                .with_context(|| format!("reading the history file {}", f.display()))?;
            for r in &batch.records {
                let rec = batch.bytes(r);
                if r.oversized.is_some() {
                    rejected += 1;
                    continue;
                }
                if rec.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match crate::codec::decode(rec, &limits) {
                    Ok(ev) => events.push(ev),
                    Err(_) => rejected += 1,
                }
            }
            if poll != Poll::Records {
                break;
            }
        }
    }
    Ok((events, rejected))
}

fn is_churn(ev: &Event) -> bool {
    matches!(&ev.body, EventBody::Deal(d) if d.kind == DealKind::Cancellation && d.stage == DealStage::ClosedWon)
}

struct Replay<'c> {
    cfg: &'c Config,
    ids: HashMap<String, u32>,
    states: Vec<AccountState>,
    timers: BTreeSet<(i64, u32)>,
    out: Replayed,
    outs: Vec<Output>,
    /// One book for the whole history (one partition).
    peers: crate::domain::peers::PeerBook,
}

impl Replay<'_> {
    fn evaluated(&mut self, a: u32, now_ms: i64) {
        let s = &mut self.states[a as usize];
        let book = self.cfg.scorecard.peers.enabled().then_some(&mut self.peers);
        let next = evaluate(s, now_ms, self.cfg, book, &mut self.outs);
        if s.timer_due_ms != 0 {
            self.timers.remove(&(s.timer_due_ms, a));
        }
        s.timer_due_ms = next.unwrap_or(0);
        if let Some(t) = next {
            self.timers.insert((t, a));
        }
        let churned = self.out.churn_ms[a as usize].is_some_and(|c| c < now_ms);
        for o in self.outs.drain(..) {
            if let Output::Alert(x) = o
                && x.status == AlertStatus::Open
                && !churned
            {
                self.out.alerts.push(AlertOpened {
                    account: a,
                    at_ms: x.opened_at_ms,
                    rule: x.rule.name(),
                });
            }
        }
    }

    fn fire_timers(&mut self, up_to: i64) {
        while let Some(&(due, a)) = self.timers.first() {
            if due > up_to {
                break;
            }
            self.timers.pop_first();
            self.states[a as usize].timer_due_ms = 0;
            self.evaluated(a, due);
        }
    }

    fn observe(&mut self, day: i32) {
        let at = day as i64 * DAY_MS;
        for (a, s) in self.states.iter().enumerate() {
            if self.out.churn_ms[a].is_some() || self.out.first_ms[a] >= at {
                continue;
            }
            let book = self.cfg.scorecard.peers.enabled().then_some(&self.peers);
            let values = score::components(s, at, self.cfg, book);
            let score = score::score(&values, self.cfg).map(|x| x.score);
            self.out.observations.push(Observation {
                account: a as u32,
                day,
                values,
                score,
                churns: false,
            });
        }
    }
}

/// Replays a history (in any order: it is sorted by event time here) and takes observations.
pub fn replay(mut events: Vec<Event>, cfg: &Config, opts: ReplayOpts) -> Replayed {
    // Ties are broken by account and event id, so the input's order does not matter.
    events.sort_unstable_by(|a, b| {
        (a.occurred_at_ms, &a.account_id, &a.event_id).cmp(&(b.occurred_at_ms, &b.account_id, &b.event_id))
    });
    let mut r = Replay {
        cfg,
        ids: HashMap::new(),
        states: Vec::new(),
        timers: BTreeSet::new(),
        out: Replayed {
            opts,
            ..Replayed::default()
        },
        outs: Vec::new(),
        peers: Default::default(),
    };
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return r.out;
    };
    r.out.start_ms = first.occurred_at_ms;
    r.out.end_ms = last.occurred_at_ms;
    let first_obs = day_of(first.occurred_at_ms) + opts.warmup_days as i32;
    let last_obs = day_of(last.occurred_at_ms) - opts.horizon_days as i32;
    let every = opts.every_days.max(1) as i32;
    let mut next_obs = first_obs;
    let mut seen: HashSet<String> = HashSet::new();
    for ev in &events {
        while next_obs <= last_obs && (next_obs as i64 * DAY_MS) <= ev.occurred_at_ms {
            r.fire_timers(next_obs as i64 * DAY_MS - 1);
            r.observe(next_obs);
            next_obs += every;
        }
        if !seen.insert(ev.event_id.clone()) {
            r.out.duplicates += 1;
            continue;
        }
        r.out.events += 1;
        r.fire_timers(ev.occurred_at_ms);
        let a = match r.ids.get(&ev.account_id) {
            Some(a) => *a,
            None => {
                let a = r.states.len() as u32;
                r.ids.insert(ev.account_id.clone(), a);
                r.states.push(new_state(&ev.account_id, ev.occurred_at_ms));
                r.out.accounts.push(ev.account_id.clone());
                r.out.first_ms.push(ev.occurred_at_ms);
                r.out.last_ms.push(ev.occurred_at_ms);
                r.out.churn_ms.push(None);
                a
            }
        };
        let i = a as usize;
        r.out.last_ms[i] = ev.occurred_at_ms;
        if is_churn(ev) && r.out.churn_ms[i].is_none() {
            r.out.churn_ms[i] = Some(ev.occurred_at_ms);
        }
        fold(&mut r.states[i], ev, false, cfg);
        r.evaluated(a, ev.occurred_at_ms);
    }
    while next_obs <= last_obs {
        r.fire_timers(next_obs as i64 * DAY_MS - 1);
        r.observe(next_obs);
        next_obs += every;
    }
    // Labels, now that every churn is known.
    let horizon = opts.horizon_days as i64 * DAY_MS;
    let churn = std::mem::take(&mut r.out.churn_ms);
    for o in &mut r.out.observations {
        let at = o.day as i64 * DAY_MS;
        o.churns = churn[o.account as usize].is_some_and(|c| c > at && c <= at + horizon);
    }
    r.out.churn_ms = churn;
    r.out
}
