//! A read-through cache of decoded account states, bounded in bytes (`store.state_cache_mb`).
//!
//! It only ever holds *committed* states, so a crash or a failed commit cannot make it lie: a
//! batch takes the states it needs out of the cache (they are then in no one else's hands) and
//! the pipeline puts them back only after the batch's commit has succeeded. A batch that fails
//! simply loses its entries; they are read from the store again next time.
//!
//! Eviction is CLOCK-like ("second chance"): every put marks the entry as recently used; when the
//! cache is over its budget, a sweep evicts entries not used since the previous sweep and clears
//! the mark of the others. A sweep walks the whole table, so it frees a tenth of the budget at a
//! time to stay rare.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use smallvec::SmallVec;

use crate::pb::AccountState;

/// A hasher for short byte keys (state keys, dedup keys): xxh3 per `write`, much cheaper than
/// SipHash for keys that are never chosen by an attacker in a position to flood one bucket
/// (account ids come from our own producers, and dedup keys are already hashes).
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_usize(&mut self, n: usize) {
        // The length prefix `Hash for [u8]` writes: folded in cheaply.
        self.0 = self.0.rotate_left(5) ^ n as u64;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type KeyHash = BuildHasherDefault<KeyHasher>;

struct Slot {
    // Boxed: states move between the cache and a batch's working set twice per batch, and a
    // pointer moves cheaper than the state's several hundred bytes; the table stays compact.
    state: Box<AccountState>,
    bytes: u32,
    used: bool,
}

/// A state key, held in the table's own slot when it is short (a partition and an account id of
/// up to 14 bytes): a table of a million states is far larger than the CPU caches, and a key in
/// an allocation of its own cost one more cache miss at every lookup that compared it.
type Key = SmallVec<[u8; 16]>;

pub struct StateCache {
    budget: usize,
    used_bytes: usize,
    map: HashMap<Key, Slot, KeyHash>,
}

/// Fixed cost of one cached entry beyond the state's own heap data: the table slot, the key and
/// the allocator's rounding.
const ENTRY_OVERHEAD: usize = 64;

/// Approximate heap footprint of a decoded state, for the cache's byte budget. Computed from
/// the state's own fields only (lengths and capacities), without following pointers into the
/// small collections: it runs for every state a batch touches.
pub fn state_bytes(s: &AccountState) -> usize {
    use std::mem::size_of;
    // Strings and small records behind the few-element collections, on average.
    const SMALL: usize = 48;
    size_of::<AccountState>()
        + s.account_id.capacity()
        + s.days.capacity() * size_of::<crate::pb::DayBucket>()
        + (s.user_hash.capacity() + s.feature_hash.capacity()) * 4
        + (s.user_day.capacity() + s.feature_day.capacity()) * 4
        + s.negative_call_detail.capacity()
        + s.email_risk_detail.capacity()
        + s.deal_loss_detail.capacity()
        + s.risk_topics.capacity() * (size_of::<String>() + SMALL)
        + s.risk_topic_ms.capacity() * 8
        + s.open_deals.capacity() * (size_of::<crate::pb::OpenDeal>() + SMALL)
        + s.arr_changes.capacity() * size_of::<crate::pb::ArrChange>()
        + s.emitted_components.capacity() * 4
        + (s.score_day.capacity() + s.score_max.capacity() + s.score_min.capacity()) * 4
        + s.open_alerts.capacity() * (size_of::<crate::pb::OpenAlert>() + SMALL)
        + s.cooldowns.capacity() * (size_of::<crate::pb::Cooldown>() + SMALL)
}

impl StateCache {
    /// A cache holding at most about `budget` bytes of states; 0 disables it.
    pub fn new(budget: usize) -> StateCache {
        StateCache {
            budget,
            used_bytes: 0,
            map: HashMap::default(),
        }
    }

    /// Takes the committed state stored under `key` out of the cache.
    pub fn take(&mut self, key: &[u8]) -> Option<Box<AccountState>> {
        let slot = self.map.remove(key)?;
        self.used_bytes -= slot.bytes as usize;
        Some(slot.state)
    }

    /// Puts a committed state into the cache, evicting others if it is over its budget.
    /// `weight` is the state's size as [`state_bytes`] (plus the key length) gives it, which the
    /// caller may have noted while the state was at hand. A key too long to be held inline keeps
    /// its own allocation.
    pub fn put(&mut self, key: Box<[u8]>, state: Box<AccountState>, weight: usize) {
        if self.budget == 0 {
            return;
        }
        let bytes = (weight + ENTRY_OVERHEAD).min(u32::MAX as usize) as u32;
        let slot = Slot {
            state,
            bytes,
            used: true,
        };
        if let Some(old) = self.map.insert(Key::from_vec(key.into_vec()), slot) {
            self.used_bytes -= old.bytes as usize;
        }
        self.used_bytes += bytes as usize;
        if self.used_bytes > self.budget {
            self.sweep();
        }
    }

    /// Evicts entries not used since the last sweep until a tenth of the budget is free (or,
    /// when every entry was used, whatever a second pass finds).
    fn sweep(&mut self) {
        let target = self.budget - self.budget / 10;
        for _ in 0..2 {
            let mut used_bytes = self.used_bytes;
            self.map.retain(|_, slot| {
                if used_bytes <= target {
                    return true;
                }
                if slot.used {
                    slot.used = false;
                    return true;
                }
                used_bytes -= slot.bytes as usize;
                false
            });
            self.used_bytes = used_bytes;
            if self.used_bytes <= target {
                break;
            }
        }
    }

    /// Forgets every cached state whose key `doomed` picks (partitions whose state may have
    /// been changed behind the pipeline's back, e.g. restored after a rebalance).
    pub fn forget(&mut self, doomed: impl Fn(&[u8]) -> bool) {
        let mut used_bytes = self.used_bytes;
        self.map.retain(|k, slot| {
            if doomed(k) {
                used_bytes -= slot.bytes as usize;
                false
            } else {
                true
            }
        });
        self.used_bytes = used_bytes;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held (estimated).
    pub fn bytes(&self) -> usize {
        self.used_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::state::new_state;

    #[test]
    fn take_removes_and_put_restores() {
        let mut c = StateCache::new(1 << 20);
        c.put(b"k1".to_vec().into(), Box::new(new_state("a", 1)), 100);
        let s = c.take(b"k1").unwrap();
        assert_eq!(s.account_id, "a");
        assert!(c.take(b"k1").is_none(), "a taken state is not in the cache");
        assert_eq!(c.bytes(), 0);
        c.put(b"k1".to_vec().into(), s, 100);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn stays_within_budget_and_keeps_recently_used() {
        let weight = state_bytes(&new_state("acct-0000", 0)) + 5;
        let one = weight + ENTRY_OVERHEAD;
        let mut c = StateCache::new(one * 100);
        for i in 0..1000 {
            let key = format!("k{i:04}").into_bytes().into_boxed_slice();
            c.put(key, Box::new(new_state("acct-0000", i)), weight);
            assert!(c.bytes() <= one * 100);
            // k0000 is used all the time: it survives every sweep.
            let s = c.take(b"k0000").unwrap();
            c.put(b"k0000".to_vec().into(), s, weight);
        }
        assert!(c.len() <= 100 && c.len() >= 80, "{}", c.len());
        assert!(c.take(b"k0999").is_some(), "the newest entry is kept");
    }

    #[test]
    fn a_second_put_of_a_key_replaces_its_entry() {
        let mut c = StateCache::new(1 << 20);
        c.put(b"k1".to_vec().into(), Box::new(new_state("a", 1)), 100);
        c.put(b"k2".to_vec().into(), Box::new(new_state("b", 1)), 100);
        c.put(b"k1".to_vec().into(), Box::new(new_state("c", 1)), 300);
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), 100 + 300 + 2 * ENTRY_OVERHEAD);
        assert_eq!(c.take(b"k1").unwrap().account_id, "c");
        assert_eq!(c.take(b"k2").unwrap().account_id, "b");
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn zero_budget_caches_nothing() {
        let mut c = StateCache::new(0);
        c.put(b"k".to_vec().into(), Box::new(new_state("a", 1)), 100);
        assert!(c.is_empty());
    }
}
