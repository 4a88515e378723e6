//! `fold`: sequences of valid events folded into per-account state and evaluated.
//!
//! The fuzzer's bytes are read (with `arbitrary`) as a list of steps: events about a handful of
//! accounts with short ids from small alphabets (so accounts, users, features, deals, plans and
//! topics collide), at times within about 300 days of 2026-07-01 (UTC day 20635), either in
//! any order or only forwards; and "ticks" that move the stream clock on without an event. The
//! events are valid as the decoder would produce them (non-empty strings, finite non-negative
//! numbers, sentiment in [-1, 1], lower-cased topics).
//!
//! Each sequence is driven the way `pipeline.rs` drives it, under two configurations:
//! `Config::defaults()`, and the defaults with `usage_frequency` and `outcome` scored against
//! peers (`min_peers = 1`, outcome feature `export`) with one `PeerBook` for all accounts. Per
//! event: the stream clock is the max of the clock and the event time; timers due by then fire
//! first (`evaluate` at their due time); the event is `late` if older than the clock minus
//! `engine.allowed_lateness_secs`; then `fold` and `evaluate` at the clock.
//!
//! Checks: nothing panics; after every step each touched state encodes with `state::encode`
//! and decodes with `state::decode` back to an equal state, within `state::MAX_STATE_BYTES`;
//! every score in an output (score, previous score, alert health score, component values, the
//! `opened_score` evidence) is within 0..=100, and component values and driver impacts are finite.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rapport::config::Config;
use rapport::domain::engine::{Output, evaluate};
use rapport::domain::event::{
    Call, CallOutcome, DAY_MS, Deal, DealKind, DealStage, Direction, Email, EmailAction, Event,
    EventBody, ProductUsage,
};
use rapport::domain::fold::fold;
use rapport::domain::peers::PeerBook;
use rapport::domain::state::{self, MAX_STATE_BYTES, new_state};
use rapport::pb::AccountState;

/// 2026-07-01 as a UTC day number.
const BASE_DAY: i64 = 20_635;
const BASE_MS: i64 = BASE_DAY * DAY_MS;
/// Events are placed within this many days either side of `BASE_DAY`.
const SPAN_DAYS: i64 = 300;
const MAX_STEPS: usize = 256;

static CONFIGS: LazyLock<[Config; 2]> = LazyLock::new(|| {
    let plain = Config::defaults();
    let mut peers = Config::defaults();
    peers.scorecard.peers.components = vec!["usage_frequency".into(), "outcome".into()];
    peers.scorecard.peers.min_peers = 1;
    peers.scorecard.components.outcome.features = vec!["export".into()];
    for c in [&plain, &peers] {
        c.validate().expect("fuzz configuration is valid");
    }
    assert!(peers.scorecard.peers.enabled());
    [plain, peers]
});

const ACCOUNTS: [&str; 5] = ["a", "b", "acme", "ab", "é"];
const NAMES: [&str; 8] = ["u1", "u2", "export", "reports", "x", "ünï", "growth", "starter"];
const TOPICS: [&str; 8] = [
    "pricing", "competitor", "churn", "cancel", "downgrade", "cancellation", "roadmap", "onboarding",
];
const STAGES: [&str; 3] = ["discovery", "proposal", "negotiation"];

/// A short id from a small alphabet, or `x<n>` for the rest of the byte range (so the bounded
/// tables — 64 users, 64 features, 16 open deals — can overflow).
#[derive(Debug, Clone, Copy, Arbitrary)]
struct Sym(u8);

impl Sym {
    fn name(self) -> String {
        match NAMES.get(self.0 as usize) {
            Some(s) => (*s).to_owned(),
            None => format!("x{}", self.0),
        }
    }
}

/// A finite number >= 0, as the decoder lets through.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Num {
    Int(u16),
    Frac(u32, u8),
    Bits(u64),
}

impl Num {
    fn value(self) -> f64 {
        match self {
            Num::Int(n) => f64::from(n),
            Num::Frac(n, d) => f64::from(n) / (f64::from(d) + 1.0),
            Num::Bits(b) => {
                let x = f64::from_bits(b).abs();
                if x.is_finite() { x } else { 0.0 }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Dir {
    In,
    Out,
}

impl Dir {
    fn get(self) -> Direction {
        match self {
            Dir::In => Direction::Inbound,
            Dir::Out => Direction::Outbound,
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
enum Stage {
    Named(u8),
    /// Long free text, multi-byte characters included, to cross the 64-byte cut.
    Long(u8, bool),
    Won,
    Lost,
}

#[derive(Debug, Clone, Arbitrary)]
enum Body {
    Usage {
        user: Option<Sym>,
        feature: Option<Sym>,
        quantity: Option<Num>,
    },
    Email {
        contact: Option<Sym>,
        direction: Option<Dir>,
        action: u8,
        campaign: Option<Sym>,
    },
    Call {
        contact: Option<Sym>,
        direction: Option<Dir>,
        duration: Option<Num>,
        outcome: Option<u8>,
        sentiment: Option<i16>,
        topics: Vec<u8>,
    },
    Deal {
        deal: u8,
        kind: u8,
        stage: Stage,
        amount: Option<Num>,
        close_in_days: Option<i16>,
        plan: Option<Sym>,
        industry: Option<Sym>,
    },
}

#[derive(Debug, Clone, Arbitrary)]
enum Step {
    Event {
        account: u8,
        /// Days from `BASE_DAY` (any order), or days after the previous event (forwards only).
        day: i16,
        ms_in_day: u32,
        body: Body,
    },
    /// The stream clock moves on by this many hours (timers fire).
    Tick { hours: u16 },
}

#[derive(Debug)]
struct Input {
    forwards_only: bool,
    steps: Vec<Step>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let forwards_only = u.arbitrary()?;
        let mut steps = Vec::new();
        while steps.len() < MAX_STEPS && !u.is_empty() {
            steps.push(u.arbitrary()?);
        }
        Ok(Input {
            forwards_only,
            steps,
        })
    }
}

fn pick<T: Copy>(xs: &[T], i: u8) -> T {
    xs[i as usize % xs.len()]
}

fn body_of(b: &Body) -> EventBody {
    match b {
        Body::Usage {
            user,
            feature,
            quantity,
        } => EventBody::ProductUsage(ProductUsage {
            user_id: user.map(Sym::name),
            feature: feature.map(Sym::name),
            quantity: quantity.map_or(1.0, Num::value),
        }),
        Body::Email {
            contact,
            direction,
            action,
            campaign,
        } => EventBody::Email(Email {
            contact_id: contact.map(Sym::name),
            direction: direction.map(Dir::get),
            action: pick(
                &[
                    EmailAction::Sent,
                    EmailAction::Delivered,
                    EmailAction::Opened,
                    EmailAction::Clicked,
                    EmailAction::Replied,
                    EmailAction::Bounced,
                    EmailAction::Unsubscribed,
                    EmailAction::Complained,
                ],
                *action,
            ),
            campaign: campaign.map(Sym::name),
        }),
        Body::Call {
            contact,
            direction,
            duration,
            outcome,
            sentiment,
            topics,
        } => EventBody::Call(Call {
            contact_id: contact.map(Sym::name),
            direction: direction.map(Dir::get),
            duration_s: duration.map(Num::value),
            outcome: outcome.map(|o| {
                pick(
                    &[
                        CallOutcome::Connected,
                        CallOutcome::NoAnswer,
                        CallOutcome::Voicemail,
                        CallOutcome::MeetingHeld,
                        CallOutcome::MeetingCancelled,
                        CallOutcome::MeetingNoShow,
                    ],
                    o,
                )
            }),
            sentiment: sentiment.map(|s| (f64::from(s) / 1000.0).clamp(-1.0, 1.0)),
            topics: topics
                .iter()
                .take(12)
                .map(|&t| match TOPICS.get(t as usize) {
                    Some(s) => (*s).to_owned(),
                    None => format!("t{}", t % 16),
                })
                .collect(),
        }),
        Body::Deal {
            deal,
            kind,
            stage,
            amount,
            close_in_days,
            plan,
            industry,
        } => EventBody::Deal(Deal {
            deal_id: format!("d{}", deal % 24),
            kind: pick(
                &[
                    DealKind::NewBusiness,
                    DealKind::Renewal,
                    DealKind::Expansion,
                    DealKind::Contraction,
                    DealKind::Cancellation,
                ],
                *kind,
            ),
            stage: match stage {
                Stage::Named(i) => DealStage::Open(pick(&STAGES, *i).to_owned()),
                Stage::Long(n, wide) => DealStage::Open(if *wide { "é" } else { "s" }.repeat(*n as usize + 1)),
                Stage::Won => DealStage::ClosedWon,
                Stage::Lost => DealStage::ClosedLost,
            },
            amount: amount.map(Num::value),
            currency: Some("USD".to_owned()),
            close_day: close_in_days.map(|d| (BASE_DAY + i64::from(d) % 400) as i32),
            plan: plan.map(|p| pick(&["growth", "starter", "enterprise"], p.0).to_owned()),
            industry: industry.map(|i| pick(&["saas", "retail"], i.0).to_owned()),
        }),
    }
}

fn check_outputs(outs: &[Output]) {
    for o in outs {
        match o {
            Output::Score(s) => {
                assert!(s.score <= 100, "score {} out of range: {s:?}", s.score);
                if let Some(p) = s.previous_score {
                    assert!(p <= 100, "previous score {p} out of range: {s:?}");
                }
                for (name, v) in &s.components {
                    assert!(
                        v.is_finite() && (0.0..=100.0).contains(v),
                        "component {name} = {v} out of 0..=100: {s:?}"
                    );
                }
                for d in &s.drivers {
                    assert!(d.impact.is_finite(), "driver impact not finite: {s:?}");
                }
            }
            Output::Alert(a) => {
                assert!(a.health_score <= 100, "alert health score {} out of range: {a:?}", a.health_score);
                for (k, v) in &a.evidence {
                    if k == "opened_score" {
                        let n: u32 = v.parse().expect("opened_score is a number");
                        assert!(n <= 100, "opened_score {n} out of range: {a:?}");
                    }
                }
            }
        }
    }
}

fn check_state(s: &AccountState, buf: &mut Vec<u8>) {
    state::encode(s, buf);
    assert!(
        buf.len() <= MAX_STATE_BYTES,
        "state of {} encodes to {} bytes, over MAX_STATE_BYTES",
        s.account_id,
        buf.len()
    );
    let back = state::decode(buf).expect("an encoded state decodes");
    assert_eq!(&back, s, "state changed through encode/decode");
}

struct Account {
    state: AccountState,
    /// Its timer, as `pipeline::reschedule` keeps it (0: none).
    due: i64,
}

fn reschedule(a: &mut Account, next: Option<i64>) {
    // Same rule as the pipeline: an earlier timer already set stays.
    if a.due != 0 && next.is_none_or(|n| a.due <= n) {
        return;
    }
    a.due = next.unwrap_or(0);
    a.state.timer_due_ms = a.due;
}

fn run(input: &Input, cfg: &Config) {
    let lateness = cfg.engine.allowed_lateness_secs as i64 * 1000;
    let mut book = cfg.scorecard.peers.enabled().then(PeerBook::default);
    let mut accounts: BTreeMap<&'static str, Account> = BTreeMap::new();
    let mut clock = i64::MIN;
    let mut prev_t = BASE_MS - SPAN_DAYS * DAY_MS;
    let mut outs = Vec::new();
    let mut buf = Vec::new();

    // Timers due at or before `until`, earliest first, evaluated at their due time.
    let fire = |accounts: &mut BTreeMap<&'static str, Account>,
                book: &mut Option<PeerBook>,
                outs: &mut Vec<Output>,
                buf: &mut Vec<u8>,
                until: i64| {
        for _ in 0..1024 {
            let Some((&id, _)) = accounts
                .iter()
                .filter(|(_, a)| a.due != 0 && a.due <= until)
                .min_by_key(|(id, a)| (a.due, **id))
            else {
                return;
            };
            let a = accounts.get_mut(id).expect("present");
            let due = a.due;
            a.due = 0;
            a.state.timer_due_ms = 0;
            outs.clear();
            let next = evaluate(&mut a.state, due, cfg, book.as_mut(), outs);
            check_outputs(outs);
            reschedule(a, next);
            check_state(&a.state, buf);
        }
    };

    for (i, step) in input.steps.iter().enumerate() {
        match step {
            Step::Tick { hours } => {
                if clock == i64::MIN {
                    continue;
                }
                clock += i64::from(*hours % (24 * 60)) * 3_600_000;
                fire(&mut accounts, &mut book, &mut outs, &mut buf, clock);
            }
            Step::Event {
                account,
                day,
                ms_in_day,
                body,
            } => {
                let in_day = i64::from(*ms_in_day) % DAY_MS;
                let t = if input.forwards_only {
                    let t = prev_t + i64::from(day.unsigned_abs() % 3) * DAY_MS + in_day;
                    t.min(BASE_MS + SPAN_DAYS * DAY_MS)
                } else {
                    BASE_MS + (i64::from(*day) % (SPAN_DAYS + 1)) * DAY_MS + in_day
                };
                prev_t = t;
                let account_id = pick(&ACCOUNTS, *account);
                let ev = Event {
                    event_id: format!("e{i}"),
                    account_id: account_id.to_owned(),
                    occurred_at_ms: t,
                    body: body_of(body),
                };
                let stream = clock.max(t);
                fire(&mut accounts, &mut book, &mut outs, &mut buf, stream);
                clock = stream;
                let late = ev.occurred_at_ms < stream - lateness;
                let a = accounts.entry(account_id).or_insert_with(|| Account {
                    state: new_state(account_id, ev.occurred_at_ms),
                    due: 0,
                });
                fold(&mut a.state, &ev, late, cfg);
                outs.clear();
                let next = evaluate(&mut a.state, stream, cfg, book.as_mut(), &mut outs);
                check_outputs(&outs);
                reschedule(a, next);
                check_state(&a.state, &mut buf);
            }
        }
    }
    if let Some(book) = &book {
        // The book as stored in checkpoints reads back the same.
        let p = book.to_proto();
        assert_eq!(PeerBook::from_proto(&p).to_proto(), p, "peer book changed through its proto form");
    }
}

fuzz_target!(|input: Input| {
    for cfg in CONFIGS.iter() {
        run(&input, cfg);
    }
});
