//! The set of outbox sequence numbers a sink has in flight.
//!
//! Every record produced is inserted once and removed once, at its delivery report: two
//! operations per record, for each of the two sets the Kafka sink keeps, at up to hundreds of
//! thousands of records per second. A `BTreeSet` made each one a walk down a tree much larger
//! than the CPU caches. The numbers in flight are dense, though: they all lie between the lowest
//! undelivered one and the newest, a span the outbox's high-water mark bounds (consumption
//! pauses above it). So they are kept as one flag per number of that span, from the lowest in
//! flight on: insert, remove and the lowest number are O(1) (amortized), and the memory is a
//! byte per number of the span.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct SeqSet {
    /// The number `flags[0]` stands for.
    base: u64,
    /// Whether `base + i` is in the set. Empty when the set is; otherwise its first and last
    /// flags are set.
    flags: VecDeque<bool>,
    len: usize,
}

impl SeqSet {
    /// Adds `seq`; false if it was in the set already.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.len == 0 {
            self.flags.clear();
            self.base = seq;
        }
        if seq < self.base {
            let gap = (self.base - seq) as usize;
            self.flags.reserve(gap);
            for _ in 0..gap {
                self.flags.push_front(false);
            }
            self.base = seq;
        }
        let i = (seq - self.base) as usize;
        if i >= self.flags.len() {
            self.flags.resize(i + 1, false);
        }
        if self.flags[i] {
            return false;
        }
        self.flags[i] = true;
        self.len += 1;
        true
    }

    /// Takes `seq` out; false if it was not in the set.
    pub fn remove(&mut self, seq: u64) -> bool {
        let Some(i) = seq.checked_sub(self.base) else {
            return false;
        };
        match usize::try_from(i).ok().and_then(|i| self.flags.get_mut(i)) {
            Some(f) if *f => *f = false,
            _ => return false,
        }
        self.len -= 1;
        while self.flags.front() == Some(&false) {
            self.flags.pop_front();
            self.base += 1;
        }
        while self.flags.back() == Some(&false) {
            self.flags.pop_back();
        }
        true
    }

    /// The lowest number in the set.
    pub fn first(&self) -> Option<u64> {
        (self.len > 0).then_some(self.base)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Numbers from a small range, so that inserts below the lowest, repeats and removals of
        // absent numbers all happen often.
        prop_oneof![(0u64..200).prop_map(Op::Insert), (0u64..200).prop_map(Op::Remove)]
    }

    proptest! {
        #[test]
        fn behaves_as_a_btreeset(ops in proptest::collection::vec(op(), 0..400)) {
            let mut s = SeqSet::default();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(n) => prop_assert_eq!(s.insert(n), model.insert(n)),
                    Op::Remove(n) => prop_assert_eq!(s.remove(n), model.remove(&n)),
                }
                prop_assert_eq!(s.first(), model.first().copied());
                prop_assert_eq!(s.len(), model.len());
                prop_assert_eq!(s.is_empty(), model.is_empty());
                // The span kept is that of the numbers in the set, no more.
                let span = match (model.first(), model.last()) {
                    (Some(a), Some(b)) => (b - a + 1) as usize,
                    _ => 0,
                };
                prop_assert_eq!(s.flags.len(), span);
            }
        }
    }

    #[test]
    fn delivered_out_of_order_the_lowest_waits_for_the_oldest() {
        let mut s = SeqSet::default();
        for n in 10..20 {
            s.insert(n);
        }
        // A changelog record of an earlier batch, sent after the outputs of a later one.
        s.insert(4);
        for n in 11..20 {
            s.remove(n);
        }
        assert_eq!(s.first(), Some(4));
        s.remove(4);
        assert_eq!(s.first(), Some(10));
        s.remove(10);
        assert_eq!(s.first(), None);
        assert!(s.flags.is_empty());
    }
}
