//! Peer-relative levels: a component scored as the account's percentile among the accounts of
//! its segment (plan, industry or ARR band) instead of against fixed targets.
//!
//! Each account partition keeps a [`PeerBook`]. During a *period* (`scorecard.peers.period_days`
//! of its stream time) every account adds its raw reading (active days, users + features,
//! outcomes, …) once, at its first evaluation of the period, to a DDSketch per segment and
//! component (`sketches-ddsketch`: relative error 1% on every quantile; insertion order does not
//! change a sketch, and sketches of several partitions merge exactly). When the partition's stream
//! time enters the next period, the sketches become the **reference**: 101 quantiles (0%, 1%, …,
//! 100%) per segment and component, against which the next period's readings are ranked. So:
//!
//! - an account's percentile depends only on the partition's events in order, never on batching
//!   or on other partitions: replays give the same scores;
//! - the reference is last period's distribution of the accounts that were evaluated in it
//!   (accounts with activity or a due timer), ranked with the error of the 101 quantiles (one
//!   percentile point) on top of the sketch's 1%;
//! - a segment with fewer than `min_peers` accounts in the reference is scored on the component's
//!   own targets, and the driver says so.
//!
//! The book rides with the partition's clock in the store and in every changelog checkpoint, so a
//! restored partition ranks exactly as its previous owner would have.

use std::collections::BTreeMap;

use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::config::{Config, PeerSegment};
use crate::domain::event::day_of;
use crate::domain::score::{Component, N_COMPONENTS};
use crate::pb::{self, AccountState};

/// Quantiles kept per reference: 0%, 1%, …, 100%.
const LEVELS: usize = 101;

/// Segment × component, as stored: the segment name and the component's index.
type Key = (String, u32);

/// A segment's reference distribution for one component.
#[derive(Debug, Clone, PartialEq)]
pub struct Levels {
    pub count: u64,
    /// `LEVELS` quantiles, ascending.
    pub quantiles: Vec<f64>,
}

impl Levels {
    /// The share (0–1) of the reference at or below `x`, ties counted half.
    pub fn rank(&self, x: f64) -> f64 {
        let below = self.quantiles.iter().filter(|q| **q < x).count() as f64;
        let equal = self.quantiles.iter().filter(|q| **q == x).count() as f64;
        (below + equal / 2.0) / self.quantiles.len().max(1) as f64
    }
    pub fn median(&self) -> f64 {
        self.quantiles.get(LEVELS / 2).copied().unwrap_or(0.0)
    }
}

/// One partition's reference levels and the sketches of the period being built.
#[derive(Clone, Default)]
pub struct PeerBook {
    /// The period being built (stream day / period_days); the reference is of the one before.
    pub period: i64,
    pub reference: BTreeMap<Key, Levels>,
    building: BTreeMap<Key, DDSketch>,
}

fn sketch() -> DDSketch {
    DDSketch::new(SketchConfig::defaults())
}

impl std::fmt::Debug for PeerBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerBook")
            .field("period", &self.period)
            .field("reference", &self.reference)
            .field("building", &self.building.len())
            .finish()
    }
}

/// The segment an account belongs to.
pub fn segment_of(s: &AccountState, cfg: &Config) -> String {
    let p = &cfg.scorecard.peers;
    let named = |x: &str| {
        if x.is_empty() {
            "unknown".to_owned()
        } else {
            x.to_owned()
        }
    };
    match p.segment {
        PeerSegment::Plan => named(&s.plan),
        PeerSegment::Industry => named(&s.industry),
        PeerSegment::ArrBand => {
            if !s.has_arr {
                return "unknown".to_owned();
            }
            match p.arr_bands.iter().rposition(|b| s.arr >= *b) {
                Some(i) => format!("ARR from {}", crate::domain::fold::money(p.arr_bands[i])),
                None => format!("ARR below {}", crate::domain::fold::money(p.arr_bands.first().copied().unwrap_or(0.0))),
            }
        }
    }
}

/// Which components are peer-scored.
pub fn peer_scored(c: Component, cfg: &Config) -> bool {
    cfg.scorecard.peers.components.iter().any(|n| n == c.name())
}

impl PeerBook {
    /// Moves to the period of `now_ms`: a finished period's sketches become the reference.
    pub fn advance(&mut self, now_ms: i64, cfg: &Config) {
        let period = period_of(now_ms, cfg);
        if period <= self.period {
            return;
        }
        if period == self.period + 1 || !self.building.is_empty() {
            self.reference = std::mem::take(&mut self.building)
                .into_iter()
                .map(|(k, s)| {
                    let quantiles = (0..LEVELS)
                        .map(|i| s.quantile(i as f64 / (LEVELS - 1) as f64).ok().flatten().unwrap_or(0.0))
                        .collect();
                    (
                        k,
                        Levels {
                            count: s.count() as u64,
                            quantiles,
                        },
                    )
                })
                .collect();
        }
        self.period = period;
    }

    /// The reference levels of `s`'s segment for component `c`, if it has enough peers.
    pub fn levels(&self, s: &AccountState, c: Component, cfg: &Config) -> Option<&Levels> {
        let idx = c as u32;
        self.reference
            .get(&(segment_of(s, cfg), idx))
            .filter(|l| l.count >= cfg.scorecard.peers.min_peers as u64)
    }

    /// Adds the account's raw readings to this period's sketches, once per period.
    /// `raw` holds the readings in component order (`None`: no data or not peer-scored).
    pub fn contribute(
        &mut self,
        s: &mut AccountState,
        raw: &[Option<f64>; N_COMPONENTS],
        cfg: &Config,
    ) -> bool {
        let mark = self.period + 1;
        if s.peer_period == mark || raw.iter().all(Option::is_none) {
            return false;
        }
        s.peer_period = mark;
        let seg = segment_of(s, cfg);
        for (i, v) in raw.iter().enumerate() {
            if let Some(v) = v {
                self.building
                    .entry((seg.clone(), i as u32))
                    .or_insert_with(sketch)
                    .add(*v);
            }
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.period == 0 && self.reference.is_empty() && self.building.is_empty()
    }

    pub fn to_proto(&self) -> pb::PeerBook {
        pb::PeerBook {
            period: self.period,
            reference: self
                .reference
                .iter()
                .map(|((seg, c), l)| pb::PeerLevels {
                    segment: seg.clone(),
                    component: *c,
                    count: l.count,
                    quantiles: l.quantiles.clone(),
                })
                .collect(),
            building: self
                .building
                .iter()
                .map(|((seg, c), s)| pb::PeerSketch {
                    segment: seg.clone(),
                    component: *c,
                    ddsketch: s.to_java_bytes(),
                })
                .collect(),
        }
    }

    /// The book back from its stored form; unreadable sketches are dropped (they only cost the
    /// period being built).
    pub fn from_proto(p: &pb::PeerBook) -> PeerBook {
        PeerBook {
            period: p.period,
            reference: p
                .reference
                .iter()
                .map(|l| {
                    (
                        (l.segment.clone(), l.component),
                        Levels {
                            count: l.count,
                            quantiles: l.quantiles.clone(),
                        },
                    )
                })
                .collect(),
            building: p
                .building
                .iter()
                .filter_map(|s| {
                    DDSketch::from_java_bytes(&s.ddsketch)
                        .ok()
                        .map(|d| ((s.segment.clone(), s.component), d))
                })
                .collect(),
        }
    }
}

pub fn period_of(now_ms: i64, cfg: &Config) -> i64 {
    (day_of(now_ms) as i64).div_euclid(cfg.scorecard.peers.period_days.max(1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::state::new_state;

    fn cfg() -> Config {
        let mut c = Config::defaults();
        c.scorecard.peers.components = vec!["usage_frequency".into()];
        c.scorecard.peers.min_peers = 3;
        c
    }

    fn readings(x: f64) -> [Option<f64>; N_COMPONENTS] {
        let mut r = [None; N_COMPONENTS];
        r[Component::UsageFrequency as usize] = Some(x);
        r
    }

    #[test]
    fn a_period_becomes_the_next_ones_reference_and_accounts_count_once() {
        let cfg = cfg();
        let day = crate::domain::event::DAY_MS;
        let mut book = PeerBook::default();
        let t0 = 20_000 * day;
        book.advance(t0, &cfg);
        let mut states: Vec<AccountState> = (0..10).map(|i| new_state(&format!("a{i}"), t0)).collect();
        for (i, s) in states.iter_mut().enumerate() {
            s.plan = "growth".into();
            assert!(book.contribute(s, &readings(i as f64 * 2.0), &cfg));
            // A second evaluation in the same period adds nothing.
            assert!(!book.contribute(s, &readings(99.0), &cfg));
        }
        assert!(book.levels(&states[0], Component::UsageFrequency, &cfg).is_none(), "no reference yet");
        book.advance(t0 + 7 * day, &cfg);
        let l = book.levels(&states[0], Component::UsageFrequency, &cfg).expect("reference");
        assert_eq!(l.count, 10);
        assert!(l.rank(0.0) < l.rank(9.0) && l.rank(9.0) < l.rank(18.0));
        assert!((l.rank(9.0) - 0.5).abs() < 0.06, "{}", l.rank(9.0));
        assert!((l.median() - 9.0).abs() <= 9.0 * 0.25 + 1.0);
        // Another segment has no reference; stored and read back, the book is the same.
        let mut other = new_state("b", t0);
        other.plan = "starter".into();
        assert!(book.levels(&other, Component::UsageFrequency, &cfg).is_none());
        let back = PeerBook::from_proto(&book.to_proto());
        assert_eq!(back.to_proto(), book.to_proto());
    }

    #[test]
    fn insertion_order_does_not_change_the_sketches() {
        let cfg = cfg();
        let mut a = PeerBook::default();
        let mut b = PeerBook::default();
        let vals: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64).collect();
        for (book, order) in [(&mut a, vals.clone()), (&mut b, vals.iter().rev().copied().collect())] {
            for (i, v) in order.iter().enumerate() {
                let mut s = new_state(&format!("x{i}"), 0);
                book.contribute(&mut s, &readings(*v), &cfg);
            }
        }
        a.advance(30 * crate::domain::event::DAY_MS, &cfg);
        b.advance(30 * crate::domain::event::DAY_MS, &cfg);
        assert_eq!(a.reference, b.reference);
    }
}
