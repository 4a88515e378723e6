//! Per-account state: the protobuf `AccountState` with the bounded windows the engine keeps.
//!
//! The state is the protobuf message itself (`pb::AccountState`), so what is folded is exactly
//! what is stored: no second representation to keep in sync. Every collection in it is bounded
//! (90 daily buckets, 64 users, 64 features, 31 score days, 16 open deals with stages cut to 64
//! bytes, 48 ARR changes, 8 risk topics, one open alert and cooldown per rule). A typical account
//! encodes to under 2 KiB; whatever the input, a state stays under [`MAX_STATE_BYTES`] with the
//! default `engine.max_id_bytes` (256), as `tests/state_bounds.rs` checks on adversarial events.

use prost::Message;

use crate::pb::{AccountState, DayBucket};

/// Version written into every stored state. A store holding a newer version is refused.
pub const STATE_VERSION: u32 = 1;
/// Days of daily buckets kept, counted back from the account's latest event day.
pub const BUCKET_DAYS: i32 = 90;
/// Distinct users and features remembered per account (least recently active evicted first).
pub const MAX_TRACKED: usize = 64;
/// Days of ARR history kept (a year ago plus slack).
pub const ARR_HISTORY_DAYS: i32 = 400;
/// Days of score history kept.
pub const SCORE_DAYS: i32 = 31;
/// Open deals remembered per account.
pub const MAX_OPEN_DEALS: usize = 16;
/// The most an account's encoded state can take with ids of up to 256 bytes.
pub const MAX_STATE_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("stored account state is not valid protobuf: {0}")]
    Corrupt(#[from] prost::DecodeError),
    #[error(
        "stored account state has version {found}, newer than this build understands ({STATE_VERSION}); run a newer rapport or rebuild the state with `rapport replay`"
    )]
    TooNew { found: u32 },
}

pub fn new_state(account_id: &str, first_seen_ms: i64) -> AccountState {
    AccountState {
        version: STATE_VERSION,
        account_id: account_id.to_owned(),
        first_seen_ms,
        ..Default::default()
    }
}

pub fn encode(state: &AccountState, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(state.encoded_len());
    state.encode(out).expect("Vec grows as needed");
}

pub fn decode(bytes: &[u8]) -> Result<AccountState, StateError> {
    let s = AccountState::decode(bytes)?;
    if s.version > STATE_VERSION {
        return Err(StateError::TooNew { found: s.version });
    }
    Ok(s)
}

/// The bucket for `day`, created if needed; `None` when the day is older than the kept window.
pub fn bucket_mut(state: &mut AccountState, day: i32, latest_day: i32) -> Option<&mut DayBucket> {
    let oldest = latest_day - (BUCKET_DAYS - 1);
    if day < oldest {
        return None;
    }
    if state.days.is_empty() {
        state.base_day = day;
    }
    if day < state.base_day {
        // Rebase so every offset stays non-negative.
        let shift = (state.base_day - day) as u32;
        for b in &mut state.days {
            b.day += shift;
        }
        state.base_day = day;
    }
    let off = (day - state.base_day) as u32;
    // Most events land on the newest day: look there first. Searching from the middle instead
    // reads several cache lines of a state that is usually not in cache.
    let n = state.days.len();
    if n > 0 && state.days[n - 1].day == off {
        return Some(&mut state.days[n - 1]);
    }
    let idx = match state.days.binary_search_by_key(&off, |b| b.day) {
        Ok(i) => i,
        Err(i) => {
            state.days.insert(
                i,
                DayBucket {
                    day: off,
                    ..Default::default()
                },
            );
            i
        }
    };
    Some(&mut state.days[idx])
}

/// Drops buckets older than the window ending at `latest_day` and rebases offsets.
pub fn prune_buckets(state: &mut AccountState, latest_day: i32) {
    let oldest = latest_day - (BUCKET_DAYS - 1);
    if state.days.is_empty() || state.base_day >= oldest {
        return;
    }
    let cut = (oldest - state.base_day) as u32;
    state.days.retain(|b| b.day >= cut);
    if let Some(first) = state.days.first().map(|b| b.day) {
        for b in &mut state.days {
            b.day -= first;
        }
        state.base_day += first as i32;
    } else {
        state.base_day = oldest;
    }
}

/// Iterates buckets whose absolute day lies in `[from, to]`.
pub fn buckets_in(state: &AccountState, from: i32, to: i32) -> impl Iterator<Item = &DayBucket> {
    let base = state.base_day;
    state.days.iter().filter(move |b| {
        let d = base + b.day as i32;
        d >= from && d <= to
    })
}

/// Day numbers stored in the state count from 2020-01-01, so they stay two-byte varints.
pub const EPOCH_DAY: i32 = 18_262;

/// A UTC day number as stored in `user_day`, `feature_day` and `score_day`.
pub fn rel_day(day: i32) -> i32 {
    day - EPOCH_DAY
}

/// Days a user or feature stays in the adoption tables after its last activity.
pub const ADOPTION_DAYS: i32 = 30;

/// Drops users and features not active within the adoption window ending at `day` (stored form).
pub fn prune_tracked(hashes: &mut Vec<u32>, days: &mut Vec<i32>, since: i32) {
    let mut i = 0;
    while i < hashes.len() {
        if days[i] < since {
            hashes.swap_remove(i);
            days.swap_remove(i);
        } else {
            i += 1;
        }
    }
}

/// Records that `hash` was active on `day` in a bounded (hash, last day) table.
pub fn touch(hashes: &mut Vec<u32>, days: &mut Vec<i32>, hash: u32, day: i32) {
    if let Some(i) = hashes.iter().position(|&h| h == hash) {
        if days[i] < day {
            days[i] = day;
        }
        return;
    }
    if hashes.len() >= MAX_TRACKED {
        // Evict the least recently active; ties go to the lowest index, which is deterministic.
        let (i, &d) = days
            .iter()
            .enumerate()
            .min_by_key(|&(_, d)| *d)
            .expect("non-empty");
        if d >= day {
            return;
        }
        hashes.swap_remove(i);
        days.swap_remove(i);
    }
    hashes.push(hash);
    days.push(day);
}

/// How many tracked hashes were active on or after `since_day`.
pub fn active_since(days: &[i32], since_day: i32) -> u32 {
    days.iter().filter(|&&d| d >= since_day).count() as u32
}

/// A 32-bit hash of an id, for the distinct-user and distinct-feature tables.
pub fn id_hash(s: &str) -> u32 {
    xxhash_rust::xxh3::xxh3_64(s.as_bytes()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_rebase_and_prune() {
        let mut s = new_state("a", 0);
        bucket_mut(&mut s, 100, 100).unwrap().usage_events += 1;
        bucket_mut(&mut s, 95, 100).unwrap().usage_events += 2;
        bucket_mut(&mut s, 120, 120).unwrap().usage_events += 3;
        assert_eq!(s.base_day, 95);
        let total: u32 = buckets_in(&s, 0, 1000).map(|b| b.usage_events).sum();
        assert_eq!(total, 6);
        assert!(
            bucket_mut(&mut s, 20, 120).is_none(),
            "older than 90 days is refused"
        );
        prune_buckets(&mut s, 190);
        assert_eq!(
            buckets_in(&s, 0, 1000).map(|b| b.usage_events).sum::<u32>(),
            3,
            "day 120 is kept"
        );
        prune_buckets(&mut s, 210);
        assert_eq!(
            buckets_in(&s, 0, 1000).map(|b| b.usage_events).sum::<u32>(),
            0
        );
        bucket_mut(&mut s, 150, 210).unwrap().usage_events += 1;
        assert_eq!(buckets_in(&s, 150, 150).count(), 1);
    }

    #[test]
    fn touch_is_bounded_and_keeps_recent() {
        let (mut h, mut d) = (vec![], vec![]);
        for i in 0..200u32 {
            touch(&mut h, &mut d, i, i as i32);
        }
        assert_eq!(h.len(), MAX_TRACKED);
        assert_eq!(
            active_since(&d, 200 - MAX_TRACKED as i32),
            MAX_TRACKED as u32
        );
    }

    #[test]
    fn newer_version_is_refused() {
        let mut s = new_state("a", 0);
        s.version = STATE_VERSION + 1;
        let mut buf = vec![];
        encode(&s, &mut buf);
        assert!(matches!(decode(&buf), Err(StateError::TooNew { .. })));
    }
}
