//! Per-account state size is bounded whatever the input: thousands of valid events built to grow
//! one account's state (new users and features every time, ids at the 256-byte limit, open deals
//! with long free-text stages, ARR changing on every event, risk topics, bounces, alerts) never
//! take its encoded state past `MAX_STATE_BYTES`.

use proptest::prelude::*;
use rapport::config::Config;
use rapport::domain::engine::evaluate;
use rapport::domain::event::{
    Call, CallOutcome, DAY_MS, Deal, DealKind, DealStage, Direction, Email, EmailAction, Event,
    EventBody, ProductUsage,
};
use rapport::domain::fold::fold;
use rapport::domain::peers::PeerBook;
use rapport::domain::state::{self, MAX_STATE_BYTES};

const START_MS: i64 = 20_635 * DAY_MS;

/// A 256-byte id that differs in its first bytes (`n`).
fn long_id(prefix: &str, n: u32) -> String {
    let head = format!("{prefix}{n}-");
    format!("{head}{}", "x".repeat(256 - head.len()))
}

fn body(kind: u8, n: u32, stage_len: usize) -> EventBody {
    match kind % 6 {
        0 | 1 => EventBody::ProductUsage(ProductUsage {
            user_id: Some(long_id("u", n)),
            feature: Some(long_id("f", n)),
            quantity: 1.0,
        }),
        2 => EventBody::Email(Email {
            contact_id: Some(long_id("c", n)),
            direction: Some(Direction::Outbound),
            action: [EmailAction::Sent, EmailAction::Bounced, EmailAction::Replied][n as usize % 3],
            campaign: Some(long_id("k", n)),
        }),
        3 => EventBody::Call(Call {
            contact_id: Some(long_id("c", n)),
            direction: Some(Direction::Inbound),
            duration_s: Some(60.0),
            outcome: Some(CallOutcome::Connected),
            sentiment: Some(-0.9),
            topics: vec!["pricing".into(), "competitor".into(), "cancel".into(), long_id("t", n)],
        }),
        4 => EventBody::Deal(Deal {
            deal_id: long_id("d", n),
            kind: DealKind::Renewal,
            stage: DealStage::Open("s".repeat(stage_len)),
            amount: Some(1000.0 + n as f64),
            currency: Some("USD".into()),
            close_day: Some(20_700),
            plan: Some(long_id("p", n)),
            industry: Some(long_id("i", n)),
        }),
        _ => EventBody::Deal(Deal {
            deal_id: long_id("w", n),
            kind: [DealKind::Expansion, DealKind::Contraction, DealKind::NewBusiness][n as usize % 3],
            stage: DealStage::ClosedWon,
            amount: Some(10.0 + n as f64),
            currency: None,
            close_day: None,
            plan: None,
            industry: None,
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn an_accounts_state_stays_bounded(
        kinds in prop::collection::vec(any::<u8>(), 3000..6000),
        minutes in prop::collection::vec(0i64..600, 3000..6000),
        stage_len in 0usize..60_000,
        // Events minutes apart (ARR changes pile up inside the 400-day window) or days apart.
        spread in prop::sample::select(vec![2i64, 30, 600]),
    ) {
        let mut cfg = Config::defaults();
        cfg.scorecard.components.outcome.features = vec![long_id("f", 1)];
        cfg.scorecard.peers.components = vec!["usage_frequency".into(), "outcome".into()];
        cfg.scorecard.peers.min_peers = 1;
        let mut s = state::new_state(&long_id("a", 0), START_MS);
        let mut book = PeerBook::default();
        let mut out = Vec::new();
        let mut t = START_MS;
        let mut largest = 0;
        for (n, (k, m)) in kinds.iter().zip(&minutes).enumerate() {
            t += (m % spread) * 60_000;
            let ev = Event {
                event_id: long_id("e", n as u32),
                account_id: s.account_id.clone(),
                occurred_at_ms: t,
                body: body(*k, n as u32, stage_len),
            };
            fold(&mut s, &ev, false, &cfg);
            evaluate(&mut s, t, &cfg, Some(&mut book), &mut out);
            out.clear();
            let mut bytes = Vec::new();
            state::encode(&s, &mut bytes);
            largest = largest.max(bytes.len());
        }
        prop_assert!(largest <= MAX_STATE_BYTES, "state grew to {largest} bytes");
    }
}
