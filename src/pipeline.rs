//! The batch loop: decode → dedup → fold/evaluate (with timers) → one atomic write → publish.
//!
//! One [`Pipeline::process`] call handles one batch of input records and ends with exactly one
//! [`Store::commit`] holding the new states, dedup marks, timers, partition clocks, input
//! positions, counters and outbox records. Only after that commit are the batch's outputs handed
//! to the sink; the outbox rows are deleted (in the *next* commit) once the sink confirms them.
//! A crash anywhere therefore loses nothing and folds nothing twice: the state and the positions
//! move together, and unconfirmed outputs are published again, with the same ids, on restart.
//!
//! Events are evaluated one at a time, in input order, and timers fire between events when a
//! partition's stream time passes them, so the result does not depend on where batches begin
//! and end.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use prost::Message;

use crate::codec::output::{OutputFormat, encode_alert, encode_score};
use crate::codec::{DecodeLimits, Reason, Rejection};
use crate::config::{Config, TimerClock};
use crate::domain::event::{Event, day_of};
use crate::domain::score::{Band, WindowCache};
use crate::domain::state::{self, StateError};
use crate::domain::{AlertStatus, Output, evaluate_with, fold};
use crate::domain::peers::PeerBook;
use crate::pb::{AccountState, Counters, OutboxRecord, PartitionClock, SourcePosition};
use crate::sink::{OutputKind, Sink, SinkError};
use crate::source::InputBatch;
use crate::store::cache::KeyHash;
use crate::changelog::Changelog;
use crate::store::keys::{
    self, COUNTERS_KEY, DEDUP_KEY_LEN, OUTBOX_NEXT_KEY, PARTITIONS_KEY, STORE_ID_KEY,
    changelog_behind_key, changelog_sent_key, clock_key,
    dedup_hash, dedup_key_of, outbox_key, parse_outbox_key, parse_timer_key, state_key_into,
    timer_key,
};
use crate::store::{Cf, StateCache, Store, StoreError, WriteSet};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("account state for {account}: {source}")]
    State { account: String, source: StateError },
    #[error("{0}")]
    Refused(String),
}

/// The wall clock, for timers fired by it, and the partitions allowed to fire.
#[derive(Debug, Clone, Copy)]
pub struct WallClock<'a> {
    pub now_ms: i64,
    pub partitions: &'a [u16],
}

/// What one batch did, for metrics, logs and progress.
#[derive(Debug, Default, Clone)]
pub struct BatchReport {
    pub records: u64,
    pub folded: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    /// Folded events by type: product_usage, email, call, deal.
    pub by_type: [u64; 4],
    pub rejected_by_reason: HashMap<Reason, u64>,
    pub scores: u64,
    /// Alert transitions by (rule, status).
    pub alerts: HashMap<(&'static str, &'static str), u64>,
    pub timers_fired: u64,
    pub commit_seconds: f64,
    pub write_bytes: usize,
    pub late: u64,
}

/// An account a batch works on.
struct Entry {
    state: Box<AccountState>,
    partition: u16,
    /// The timer as stored, to delete its key when it moves.
    stored_timer: i64,
    band_before: Option<Band>,
    existed: bool,
    dirty: bool,
    /// The state as written into the batch's write set, once the batch is done with it.
    written: Option<Written>,
    /// The state's windowed sums, kept between its evaluations in this batch.
    windows: WindowCache,
}

/// What the batch's write needs of a state, noted while the state is still in the CPU's cache:
/// states are far too many to stay there until the end of a batch, and going back to each one
/// for its encoding, timer and band cost more than everything else done with it.
#[derive(Clone, Copy)]
struct Written {
    /// Index of the state's put in the write set.
    op: usize,
    /// First bytes of the key, for sorting the puts.
    prefix: u128,
    timer: i64,
    band: Option<Band>,
    /// Cache weight of the state.
    weight: usize,
}

const NO_EVENT: u32 = u32::MAX;
/// The most dedup marks in one changelog chunk record: about 320 KB (16-byte hash and a day
/// each), well under the 1 MB that Kafka takes by default whatever `pipeline.batch_max_records`.
pub const MAX_CHUNK_MARKS: usize = 16_384;

/// The accounts of one batch: entries in a vector, found by state key through `index`. Events
/// are matched to their entry once, before the fold, so the fold itself does no lookups.
#[derive(Default)]
struct Work {
    index: HashMap<Box<[u8]>, u32, KeyHash>,
    /// `None`: an account the store does not have (yet), created by its first folded event.
    slots: Vec<Option<Entry>>,
    /// Per slot, the index of the batch's last decoded event of the account, or `NO_EVENT`.
    last_event: Vec<u32>,
}

impl Work {
    fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.last_event.clear();
    }

    /// The slot of `key`, added (empty) if the batch has none yet.
    fn slot(&mut self, key: &[u8]) -> (u32, bool) {
        if let Some(&i) = self.index.get(key) {
            return (i, false);
        }
        let i = self.slots.len() as u32;
        self.index.insert(key.into(), i);
        self.slots.push(None);
        self.last_event.push(NO_EVENT);
        (i, true)
    }
}

/// How many events ahead the batch loop asks for an account's state (its fixed part); two
/// events ahead it also asks for the buffers folding and scoring read, which takes the fixed
/// part to be in cache by then. (6 and 2 measured best of the few tried: 3 and 1 gave about
/// half the gain.)
const PREFETCH_AHEAD: usize = 6;

/// Asks the CPU to bring `s` into cache: its fixed part, and with `deep` the parts of its
/// buffers that folding and scoring read. A hint only: it changes nothing but timing.
#[inline]
fn prefetch_state(s: &AccountState, deep: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        fn fetch<T>(p: *const T) {
            // SAFETY: a prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
        }
        fn fetch_bytes<T>(p: *const T, bytes: usize) {
            for off in (0..bytes).step_by(64) {
                fetch((p as *const u8).wrapping_add(off));
            }
        }
        fn fetch_slice<T>(v: &[T]) {
            fetch_bytes(v.as_ptr(), std::mem::size_of_val(v));
        }
        if !deep {
            fetch_bytes(s as *const AccountState, std::mem::size_of::<AccountState>());
            return;
        }
        // The newest buckets (scored walking back from the newest), the ARR history and the
        // open deals, the tracked users and features.
        fetch_slice(&s.days[s.days.len().saturating_sub(8)..]);
        fetch_slice(&s.arr_changes);
        for d in &s.open_deals {
            fetch(d.kind.as_ptr());
        }
        fetch_slice(&s.user_day);
        fetch_slice(&s.feature_day);
        // The score's daily highs and lows (three buffers, read whole for the score-drop rule),
        // and the alert rules' open alerts and cooldowns.
        fetch_slice(&s.score_day);
        fetch_slice(&s.score_max);
        fetch_slice(&s.score_min);
        fetch_slice(&s.open_alerts);
        fetch_slice(&s.cooldowns);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, deep);
}

/// A batch's buffers, kept from batch to batch: allocating them afresh for every batch showed
/// up in profiles as page faults (the allocator hands freed memory back to the system).
#[derive(Default)]
struct Scratch {
    decoded: Vec<Result<(Event, u16), Rejection>>,
    /// Each decoded event's dedup key as (partition, hash): integers sort faster than bytes.
    dkeys: Vec<(u16, u128)>,
    /// Decoded-event indexes in key order, ties in event order.
    order: Vec<u32>,
    /// The batch's distinct dedup keys, in key order, as stored.
    distinct: Vec<[u8; DEDUP_KEY_LEN]>,
    /// Each event's index into `distinct`.
    mark_of: Vec<u32>,
    /// The latest mark (UTC day) of each distinct key.
    mark: Vec<Option<i32>>,
    /// The mark each event writes, if it is folded.
    new_mark: Vec<Option<i32>>,
    /// Each event's slot in the batch's `Work`.
    slot_of: Vec<u32>,
    /// State keys the cache did not have, with their slots.
    misses: Vec<(Vec<u8>, u32)>,
    outbox: Vec<OutboxRecord>,
}

impl Scratch {
    fn clear(&mut self) {
        self.decoded.clear();
        self.dkeys.clear();
        self.order.clear();
        self.distinct.clear();
        self.mark_of.clear();
        self.mark.clear();
        self.new_mark.clear();
        self.slot_of.clear();
        self.misses.clear();
        self.outbox.clear();
    }
}

/// The first 16 bytes of a key as a big-endian integer (zero-padded): comparing these orders
/// keys as their bytes do, up to ties.
fn key_prefix(k: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = k.len().min(16);
    b[..n].copy_from_slice(&k[..n]);
    u128::from_be_bytes(b)
}

pub struct Pipeline {
    cfg: Arc<Config>,
    store: Arc<dyn Store>,
    limits: DecodeLimits,
    format: OutputFormat,
    /// Input records are JSON only (NDJSON files); otherwise the format is detected per record.
    json_only: bool,
    /// Stream time (max event time) per account partition; 0 before the first event.
    clocks: Vec<i64>,
    /// Peer-relative levels per account partition (stored with its clock).
    peers: Vec<PeerBook>,
    /// Due timers per partition, in (due, account) order — the in-memory copy of `timers`.
    timers: Vec<BTreeSet<(i64, String)>>,
    counters: Counters,
    positions: HashMap<String, u64>,
    next_seq: u64,
    /// Outbox rows below this are confirmed by the sink.
    confirmed: u64,
    /// Confirmed rows not yet deleted from the outbox (deleted in the next commit).
    delete_from: u64,
    /// Committed account states kept between batches.
    cache: StateCache,
    /// The write of the last batch, cleared and reused.
    write_set: WriteSet,
    /// The accounts of the last batch (emptied), kept for their tables.
    work: Work,
    scratch: Scratch,
    /// Set in Kafka mode: every batch also writes the changelog (see [`crate::changelog`]).
    changelog: Option<Changelog>,
    /// Changelog records committed and not yet handed to the sink, in sequence order. Each is
    /// sent once every output committed before it is delivered, and only for open partitions.
    /// A queue: each pump looks only at the records it may send, from the front.
    gate: VecDeque<(u64, OutboxRecord)>,
    /// Partitions whose changelog records may not be published (yet): not owned, or not yet
    /// verified as ours since start-up.
    held: BTreeSet<u16>,
    /// Partitions this store has ever sent a changelog record of (`cl_sent/` in `meta`).
    sent_changelog: BTreeSet<u16>,
    /// The highest sequence number handed to the sink.
    last_sent: Option<u64>,
    /// The highest sequence number of an output (not a changelog record) handed to the sink.
    last_output: Option<u64>,
    /// Set when handing rows to the sink failed: which rows it has is then unknown, so nothing
    /// more is published or deleted by this pipeline (a restart publishes the outbox again).
    poisoned: bool,
}

fn type_index(ev: &Event) -> usize {
    use crate::domain::event::EventBody::*;
    match ev.body {
        ProductUsage(_) => 0,
        Email(_) => 1,
        Call(_) => 2,
        Deal(_) => 3,
    }
}

impl Pipeline {
    /// Loads clocks, timers, counters and positions from the store and checks that the store was
    /// written with the same partition count.
    pub fn open(cfg: Arc<Config>, store: Arc<dyn Store>) -> Result<Pipeline, PipelineError> {
        let n = cfg.engine.partitions;
        match store.get(Cf::Meta, PARTITIONS_KEY)? {
            Some(v) => {
                let stored = u16::from_le_bytes(v.get(..2).unwrap_or(&[0, 0]).try_into().unwrap());
                if stored != n {
                    return Err(PipelineError::Refused(format!(
                        "the store was built with {stored} account partitions but engine.partitions is {n}; set engine.partitions = {stored}, or rebuild the state for the new count with `rapport replay` into a new data directory."
                    )));
                }
            }
            None => {
                let mut w = WriteSet::default();
                w.put(Cf::Meta, PARTITIONS_KEY, &n.to_le_bytes());
                store.commit(&w)?;
            }
        }
        let mut clocks = vec![0i64; n as usize];
        let mut peers = vec![PeerBook::default(); n as usize];
        for (p, c) in clocks.iter_mut().enumerate() {
            if let Some(v) = store.get(Cf::Meta, &clock_key(p as u16))? {
                if let Ok(pc) = PartitionClock::decode(v.as_slice()) {
                    *c = pc.stream_time_ms;
                    if let Some(b) = &pc.peers {
                        peers[p] = PeerBook::from_proto(b);
                    }
                }
            }
        }
        let counters = match store.get(Cf::Meta, COUNTERS_KEY)? {
            Some(v) => Counters::decode(v.as_slice()).unwrap_or_default(),
            None => Counters::default(),
        };
        let mut timers = vec![BTreeSet::new(); n as usize];
        store.scan(Cf::Timers, &[], &mut |k, _| {
            if let Some((p, due, acct)) = parse_timer_key(k) {
                if let Some(t) = timers.get_mut(p as usize) {
                    t.insert((due, acct.to_owned()));
                }
            }
            true
        })?;
        let mut positions = HashMap::new();
        store.scan(Cf::Offsets, &[], &mut |k, v| {
            if let (Ok(key), Ok(pos)) = (std::str::from_utf8(k), SourcePosition::decode(v)) {
                positions.insert(key.to_owned(), pos.next);
            }
            true
        })?;
        let (mut first, mut last) = (None, None);
        store.scan(Cf::Outbox, &[], &mut |k, _| {
            if let Some(seq) = parse_outbox_key(k) {
                first.get_or_insert(seq);
                last = Some(seq);
            }
            true
        })?;
        // Sequence numbers never go back, even when the outbox is empty: a sink may still hold
        // the numbers it was given before a restart.
        let stored_next = store
            .get(Cf::Meta, OUTBOX_NEXT_KEY)?
            .and_then(|v| {
                v.get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            })
            .unwrap_or(0);
        let next_seq = last.map_or(0, |l| l + 1).max(stored_next);
        let cfg_cache_bytes = cfg.pipeline.state_cache_mb << 20;
        let confirmed = first.unwrap_or(next_seq);
        Ok(Pipeline {
            limits: DecodeLimits {
                max_record_bytes: cfg.engine.max_record_bytes,
                max_id_bytes: cfg.engine.max_id_bytes,
            },
            format: OutputFormat::Json,
            json_only: false,
            cfg,
            store,
            clocks,
            peers,
            timers,
            counters,
            positions,
            next_seq,
            confirmed,
            delete_from: confirmed,
            cache: StateCache::new(cfg_cache_bytes),
            write_set: WriteSet::default(),
            work: Work::default(),
            scratch: Scratch::default(),
            changelog: None,
            gate: VecDeque::new(),
            held: BTreeSet::new(),
            sent_changelog: BTreeSet::new(),
            last_sent: None,
            last_output: None,
            poisoned: false,
        })
    }

    /// Refuses a store whose state was built from other Kafka topics than `topics` (its input
    /// topics and changelog); a store without any records the topics for next time.
    pub fn check_topics(&self, topics: &[&str], data_dir: &std::path::Path) -> Result<(), PipelineError> {
        let want = topics.join(",");
        match self.store.get(Cf::Meta, keys::TOPICS_KEY)? {
            Some(v) if v == want.as_bytes() => Ok(()),
            Some(v) => Err(PipelineError::Refused(format!(
                "the data directory {} holds state built from the topics {} but this configuration reads {want}; point store.data_dir at a new directory for the new topics (its state is rebuilt from their changelog or their input), or configure the old topic names again.",
                data_dir.display(),
                String::from_utf8_lossy(&v)
            ))),
            None => {
                let mut w = WriteSet::default();
                w.put(Cf::Meta, keys::TOPICS_KEY, want.as_bytes());
                self.store.commit(&w)?;
                Ok(())
            }
        }
    }

    /// This store's id (created with the store): the writer of its changelog records.
    pub fn store_id(&self) -> Result<[u8; 16], PipelineError> {
        if let Some(v) = self.store.get(Cf::Meta, STORE_ID_KEY)? {
            if let Ok(id) = <[u8; 16]>::try_from(v.as_slice()) {
                return Ok(id);
            }
        }
        use rand::RngCore;
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let mut w = WriteSet::default();
        w.put(Cf::Meta, STORE_ID_KEY, &id);
        self.store.commit(&w)?;
        Ok(id)
    }

    /// Turns the changelog on. Every partition starts held: its changelog records (including
    /// those an earlier run left in the outbox) wait until [`open_changelog`](Self::open_changelog).
    pub fn enable_changelog(&mut self, mut changelog: Changelog) -> Result<(), PipelineError> {
        self.held = (0..self.cfg.engine.partitions).collect();
        changelog.writers = (0..self.cfg.engine.partitions)
            .map(|p| {
                Ok(self
                    .store
                    .get(Cf::Meta, &keys::changelog_writer_key(p))?
                    .and_then(|v| <[u8; 16]>::try_from(v.as_slice()).ok())
                    .unwrap_or(changelog.writer))
            })
            .collect::<Result<_, PipelineError>>()?;
        self.changelog = Some(changelog);
        Ok(())
    }

    /// The writer id partition `p`'s changelog records carry (see [`Changelog::writers`]).
    pub fn writer_of(&self, p: u16) -> Option<[u8; 16]> {
        self.changelog.as_ref().map(|c| c.writer_of(p))
    }

    /// Lets partition `p`'s changelog records be published: it is ours and its changelog is
    /// known to have been written by us alone since our local state was written.
    pub fn open_changelog(&mut self, p: u16) {
        self.held.remove(&p);
    }

    /// Partition `p` may not be ours any more (its assignment was lost): its changelog records
    /// wait, unpublished, until it comes back and its changelog is found untouched since
    /// ([`open_changelog`](Self::open_changelog)) or is given up
    /// ([`close_changelog`](Self::close_changelog)).
    pub fn hold_changelog(&mut self, p: u16) {
        self.held.insert(p);
    }

    /// Partition `p` is no longer ours: its unpublished changelog records are dropped (the new
    /// owner reads the inputs again from the last published checkpoint). If any were dropped, the
    /// partition's local state is marked as ahead of its changelog, so that it is restored
    /// before it is used here again. Returns how many were dropped.
    pub fn close_changelog(&mut self, p: u16) -> Result<usize, PipelineError> {
        self.held.insert(p);
        let before = self.gate.len();
        self.gate.retain(|(_, r)| r.partition != p as i32);
        let dropped = before - self.gate.len();
        // After a failed hand-over some of the partition's rows may not even be in the gate.
        if dropped > 0 || self.poisoned {
            let mut w = WriteSet::default();
            w.put(Cf::Meta, &changelog_behind_key(p), &[]);
            self.store.commit(&w)?;
        }
        Ok(dropped)
    }

    /// Whether partition `p`'s local state may be ahead of its changelog (see
    /// [`close_changelog`](Self::close_changelog)).
    pub fn changelog_behind(&self, p: u16) -> Result<bool, PipelineError> {
        Ok(self.store.get(Cf::Meta, &changelog_behind_key(p))?.is_some())
    }

    /// Whether this store holds any input position of partition `p`.
    pub fn has_positions(&self, p: u16) -> bool {
        self.changelog.as_ref().is_some_and(|c| {
            c.sources_of
                .get(p as usize)
                .is_some_and(|keys| keys.iter().any(|k| self.positions.contains_key(k)))
        })
    }

    /// Unpublished changelog records, all partitions.
    pub fn changelog_pending(&self) -> usize {
        self.gate.len()
    }

    /// Whether partition `p`'s changelog has records of this store still to publish while none
    /// was ever sent: an empty changelog is then exactly as new as the local state was before
    /// its first batch, and the local state is newer.
    pub fn changelog_never_sent(&self, p: u16) -> Result<bool, PipelineError> {
        Ok(self.gate.iter().any(|(_, r)| r.partition == p as i32)
            && !self.sent_changelog.contains(&p)
            && self.store.get(Cf::Meta, &changelog_sent_key(p))?.is_none())
    }

    /// Drops partition `p`'s local state (states, dedup marks, timers, positions, clock) ahead
    /// of a restore from the changelog. The partition stays marked as behind until
    /// [`end_restore`](Self::end_restore), so that a crash half-way restores it again.
    pub fn begin_restore(&mut self, p: u16) -> Result<(), PipelineError> {
        self.close_changelog(p)?;
        let mut w = WriteSet::default();
        let (lo, hi) = keys::partition_range(p);
        // The accounts leaving with the partition's local state leave the tallies too.
        self.tally_partition(p, -1)?;
        w.put(Cf::Meta, COUNTERS_KEY, &self.counters.encode_to_vec());
        for cf in [Cf::State, Cf::Dedup, Cf::Timers] {
            w.delete_range(cf, &lo, &hi);
        }
        let next = keys::chunk_prefix(p + 1);
        w.delete_range(Cf::Meta, &keys::chunk_prefix(p), &next);
        for k in self.sources_of(p) {
            w.delete(Cf::Offsets, k.as_bytes());
            self.positions.remove(&k);
        }
        w.delete(Cf::Meta, &clock_key(p));
        w.put(Cf::Meta, &changelog_behind_key(p), &[]);
        // A new writer identity for the partition: nothing this store wrote for it before (a
        // batch it may have left torn) can be completed by what it writes from now on.
        let writer = {
            use rand::RngCore;
            let mut id = [0u8; 16];
            rand::rng().fill_bytes(&mut id);
            id
        };
        w.put(Cf::Meta, &keys::changelog_writer_key(p), &writer);
        self.store.commit(&w)?;
        if let Some(cl) = self.changelog.as_mut() {
            if let Some(slot) = cl.writers.get_mut(p as usize) {
                *slot = writer;
            }
        }
        self.timers[p as usize].clear();
        self.clocks[p as usize] = 0;
        self.peers[p as usize] = PeerBook::default();
        self.forget_cached_states(&[p]);
        Ok(())
    }

    /// Removes (`by` = -1) partition `p`'s stored accounts from the account and band tallies of
    /// the counters (`end_restore` adds the restored ones back).
    fn tally_partition(&mut self, p: u16, by: i64) -> Result<(), PipelineError> {
        let (lo, hi) = keys::partition_range(p);
        let bands = self.cfg.scorecard.bands.clone();
        let counters = &mut self.counters;
        self.store.scan(Cf::State, &lo, &mut |k, v| {
            if k >= hi.as_slice() {
                return false;
            }
            if let Ok(s) = state::decode(v) {
                counters.accounts = counters.accounts.saturating_add_signed(by);
                bump_band(counters, s.scored.then(|| Band::of(s.emitted_score, &bands)), by);
            }
            true
        })?;
        Ok(())
    }

    fn sources_of(&self, p: u16) -> Vec<String> {
        self.changelog
            .as_ref()
            .and_then(|c| c.sources_of.get(p as usize).cloned())
            .unwrap_or_default()
    }

    /// Writes records read back from partition `p`'s changelog into the store: a group that a
    /// checkpoint closes (see [`crate::changelog::RestoreBuffer`]), in log order. Returns the
    /// number of account states written.
    pub fn apply_restored(
        &mut self,
        p: u16,
        records: &[crate::changelog::Restored],
    ) -> Result<u64, PipelineError> {
        use crate::changelog::{Key, parse_key};
        let mut w = WriteSet::default();
        let mut states = 0u64;
        for r in records {
            let Some(key) = parse_key(&r.key) else {
                continue;
            };
            match (key, &r.value) {
                (Key::State(account), Some(v)) => {
                    // Timers are indexed once the last version of every state is in
                    // (`end_restore`): an account's state may come several times.
                    w.put(Cf::State, &keys::state_key(p, account), v);
                    states += 1;
                }
                (Key::Chunk { day }, Some(v)) => {
                    let Ok(chunk) = crate::pb::DedupChunk::decode(v.as_slice()) else {
                        continue;
                    };
                    for (hash, d) in crate::changelog::chunk_marks(&chunk) {
                        w.put(Cf::Dedup, &dedup_key_of(p, hash), &d.to_le_bytes());
                    }
                    w.put(Cf::Meta, &keys::chunk_key(p, day, &r.key), &[]);
                }
                (Key::Chunk { day }, None) => {
                    w.delete(Cf::Meta, &keys::chunk_key(p, day, &r.key));
                }
                (Key::Checkpoint, Some(v)) => {
                    let Ok(c) = crate::pb::PartitionCheckpoint::decode(v.as_slice()) else {
                        continue;
                    };
                    for (k, next) in &c.positions {
                        w.put(
                            Cf::Offsets,
                            k.as_bytes(),
                            &SourcePosition { next: *next }.encode_to_vec(),
                        );
                        self.positions.insert(k.clone(), *next);
                    }
                    w.put(
                        Cf::Meta,
                        &clock_key(p),
                        &PartitionClock {
                            stream_time_ms: c.stream_time_ms,
                            peers: c.peers.clone(),
                        }
                        .encode_to_vec(),
                    );
                    self.clocks[p as usize] = c.stream_time_ms;
                    self.peers[p as usize] =
                        c.peers.as_ref().map(PeerBook::from_proto).unwrap_or_default();
                }
                _ => {}
            }
            if w.len() > 4096 {
                self.store.commit(&w)?;
                w.clear();
            }
        }
        self.store.commit(&w)?;
        Ok(states)
    }

    /// Ends a restore: checks every restored state, indexes their timers, and lets the
    /// partition's changelog be published. Returns the number of accounts restored.
    pub fn end_restore(&mut self, p: u16) -> Result<u64, PipelineError> {
        let (lo, hi) = keys::partition_range(p);
        let timers = &mut self.timers[p as usize];
        timers.clear();
        let mut w = WriteSet::default();
        let mut bad = None;
        let mut accounts = 0u64;
        let bands = self.cfg.scorecard.bands.clone();
        let counters = &mut self.counters;
        self.store.scan(Cf::State, &lo, &mut |k, v| {
            if k >= hi.as_slice() {
                return false;
            }
            let Some((_, acct)) = keys::parse_state_key(k) else {
                return true;
            };
            match state::decode(v) {
                Ok(s) => {
                    accounts += 1;
                    counters.accounts += 1;
                    bump_band(counters, s.scored.then(|| Band::of(s.emitted_score, &bands)), 1);
                    if s.timer_due_ms != 0 {
                        w.put(Cf::Timers, &timer_key(p, s.timer_due_ms, acct), &[]);
                        timers.insert((s.timer_due_ms, acct.to_owned()));
                    }
                    true
                }
                Err(e) => {
                    bad = Some((acct.to_owned(), e));
                    false
                }
            }
        })?;
        if let Some((account, source)) = bad {
            return Err(PipelineError::State { account, source });
        }
        w.put(Cf::Meta, COUNTERS_KEY, &self.counters.encode_to_vec());
        w.delete(Cf::Meta, &changelog_behind_key(p));
        self.store.commit(&w)?;
        self.open_changelog(p);
        Ok(accounts)
    }

    /// The stored input positions of partition `p` (after a restore: the checkpoint's).
    pub fn partition_positions(&self, p: u16) -> Vec<(String, Option<u64>)> {
        self.sources_of(p)
            .into_iter()
            .map(|k| {
                let v = self.positions.get(&k).copied();
                (k, v)
            })
            .collect()
    }

    pub fn set_output_format(&mut self, f: OutputFormat) {
        self.format = f;
    }

    /// Treats every input record as JSON (NDJSON files), so that text that is not JSON is
    /// reported as `not_json` rather than as a bad protobuf message.
    pub fn set_json_only(&mut self, yes: bool) {
        self.json_only = yes;
    }

    /// Stored input positions, by source key.
    pub fn positions(&self) -> &HashMap<String, u64> {
        &self.positions
    }

    /// Cumulative record accounting of this store.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Outputs committed but not yet confirmed by the sink.
    pub fn outbox_depth(&self) -> u64 {
        self.next_seq - self.confirmed
    }

    /// Highest stream time over all partitions.
    pub fn stream_time(&self) -> i64 {
        self.clocks.iter().copied().max().unwrap_or(0)
    }

    /// Publishes outbox rows left by an earlier run (committed, never confirmed), waits for the
    /// sink to confirm them, and deletes them.
    pub fn drain_outbox(&mut self, sink: &mut dyn Sink) -> Result<u64, PipelineError> {
        let mut recs = Vec::new();
        self.store.scan(Cf::Outbox, &[], &mut |k, v| {
            if let (Some(seq), Ok(r)) = (parse_outbox_key(k), OutboxRecord::decode(v)) {
                recs.push((seq, r));
            }
            true
        })?;
        let n = recs.len() as u64;
        for (seq, r) in recs {
            if self.changelog.is_some() && r.kind == OutputKind::Changelog as u32 {
                // Held until the partition is known to be ours, its changelog untouched by others.
                self.gate.push_back((seq, r));
            } else {
                sink.send(seq, &r)?;
                self.last_sent = Some(seq);
                self.last_output = Some(seq);
            }
        }
        self.pump(sink, true)?;
        self.flush_deletes()?;
        Ok(n)
    }

    /// Sends these outbox rows again, in the order given: rows a replaced sink had sent and not
    /// had acknowledged (see [`KafkaSink::restart_producer`](crate::sink::kafka::KafkaSink::restart_producer)).
    /// They were let through once, so they skip the gate, except the changelog records of a
    /// partition held since: those go back into the gate, in sequence order, and wait there
    /// like the partition's other records. A row no longer in the outbox was confirmed
    /// meanwhile and is skipped. Returns the number sent.
    pub fn resend(&mut self, sink: &mut dyn Sink, seqs: &[u64]) -> Result<usize, PipelineError> {
        let mut sent = 0;
        for &seq in seqs {
            let Some(v) = self.store.get(Cf::Outbox, &outbox_key(seq))? else {
                continue;
            };
            let Ok(rec) = OutboxRecord::decode(v.as_slice()) else {
                continue;
            };
            if rec.kind == OutputKind::Changelog as u32 && self.held.contains(&(rec.partition as u16)) {
                let at = self.gate.partition_point(|(s, _)| *s < seq);
                self.gate.insert(at, (seq, rec));
                continue;
            }
            self.send_or_poison(sink, seq, &rec)?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Hands one row to the sink; a sink that fails poisons the pipeline (what it had taken is
    /// unknown, so only a restart from the outbox is safe).
    fn send_or_poison(&mut self, sink: &mut dyn Sink, seq: u64, rec: &OutboxRecord) -> Result<(), PipelineError> {
        sink.send(seq, rec).map_err(|e| {
            self.poisoned = true;
            e.into()
        })
    }

    /// Hands the changelog records that may go now to the sink, and moves `confirmed` up to the
    /// first row not yet delivered. A changelog record may go once every output (and dead
    /// letter) committed before it is delivered, and only if its partition is not held. Records
    /// of one partition go in sequence order, and the idempotent producer keeps that order on
    /// the partition. With `wait`, repeats until nothing more can go.
    fn pump(&mut self, sink: &mut dyn Sink, wait: bool) -> Result<(), PipelineError> {
        if self.poisoned {
            return Err(poisoned());
        }
        loop {
            let (c, outputs) = match sink.confirmed(wait).and_then(|c| Ok((c, sink.outputs_confirmed()?))) {
                Ok(x) => x,
                Err(e) => {
                    self.poisoned = true;
                    return Err(e.into());
                }
            };
            // Below this, every output is delivered (no output in flight: everything).
            let bound = if self.last_output.is_none_or(|l| outputs > l) {
                u64::MAX
            } else {
                outputs
            };
            let all_delivered = self.last_sent.is_none_or(|l| c > l);
            let mut first_sent: Option<u64> = None;
            // The gate is in sequence order, so the records that may go are a prefix of it (those
            // below `bound`), less the held partitions' ones. Only that prefix is looked at: the
            // rest can hold a batch's worth of records, and this runs at every turn of the loop
            // while the outbox drains.
            let mut kept: Vec<(u64, OutboxRecord)> = Vec::new();
            let mut failed = None;
            while self.gate.front().is_some_and(|(seq, _)| *seq < bound) {
                let (seq, rec) = self.gate.pop_front().expect("front checked above");
                let p = rec.partition as u16;
                if self.held.contains(&p) {
                    kept.push((seq, rec));
                    continue;
                }
                if !self.sent_changelog.contains(&p) {
                    // Durably noted before the record can reach the broker.
                    let mut w = WriteSet::default();
                    w.put(Cf::Meta, &changelog_sent_key(p), &[]);
                    if let Err(e) = self.store.commit(&w) {
                        kept.push((seq, rec));
                        failed = Some(SinkError::Other(format!(
                            "cannot note the changelog's first send in the store: {e}"
                        )));
                        break;
                    }
                    self.sent_changelog.insert(p);
                }
                if let Err(e) = sink.send(seq, &rec) {
                    kept.push((seq, rec));
                    failed = Some(e);
                    break;
                }
                self.last_sent = Some(self.last_sent.map_or(seq, |l| l.max(seq)));
                first_sent.get_or_insert(seq);
            }
            // What was looked at and stays goes back in front, in its order.
            for r in kept.into_iter().rev() {
                self.gate.push_front(r);
            }
            if let Some(e) = failed {
                self.poisoned = true;
                return Err(e.into());
            }
            let base = if all_delivered { self.next_seq } else { c };
            let lowest = [Some(base), first_sent, self.gate.front().map(|(s, _)| *s)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(base);
            self.confirmed = self.confirmed.max(lowest);
            if !(wait && first_sent.is_some()) {
                return Ok(());
            }
        }
    }

    /// Collects the sink's confirmations without waiting and deletes the confirmed outbox rows
    /// (for idle moments between batches).
    pub fn settle(&mut self, sink: &mut dyn Sink) -> Result<(), PipelineError> {
        self.pump(sink, false)?;
        self.flush_deletes()
    }

    /// Waits for the sink to confirm everything and deletes the confirmed outbox rows.
    /// Changelog records of held partitions stay unpublished (and in the outbox).
    pub fn finish(&mut self, sink: &mut dyn Sink) -> Result<(), PipelineError> {
        self.pump(sink, true)?;
        self.flush_deletes()
    }

    fn flush_deletes(&mut self) -> Result<(), PipelineError> {
        if self.confirmed > self.delete_from {
            let mut w = WriteSet::default();
            w.delete_range(
                Cf::Outbox,
                &outbox_key(self.delete_from),
                &outbox_key(self.confirmed),
            );
            self.store.commit(&w)?;
            self.delete_from = self.confirmed;
        }
        Ok(())
    }

    /// Processes one batch: exactly one commit, then the batch's outputs go to the sink.
    /// `sources` names the batch's source indexes; `wall` fires wall-clock timers (when
    /// `engine.timer_clock = "wall"`) of the partitions it lists — those caught up with their input.
    pub fn process(
        &mut self,
        batch: &InputBatch,
        sources: &[String],
        wall: Option<WallClock<'_>>,
        sink: &mut dyn Sink,
    ) -> Result<BatchReport, PipelineError> {
        let cfg = Arc::clone(&self.cfg);
        let n = cfg.engine.partitions;
        let mut report = BatchReport {
            records: batch.records.len() as u64,
            ..Default::default()
        };
        let mut x = std::mem::take(&mut self.scratch);
        x.clear();
        let mut work = std::mem::take(&mut self.work);
        work.clear();
        let mut w = std::mem::take(&mut self.write_set);
        w.clear();

        // 1. Decode every record.
        x.decoded.extend(batch.records.iter().map(|r| {
            if let Some(len) = r.oversized {
                return Err(Rejection {
                    reason: Reason::TooLarge,
                    detail: format!(
                        "The record is {len} bytes, over the {} byte limit (engine.max_record_bytes); only its first bytes are kept here.",
                        cfg.engine.max_record_bytes
                    ),
                });
            }
            let bytes = batch.bytes(r);
            // A line of an NDJSON file is JSON or nothing; Kafka records may be protobuf.
            let ev = if self.json_only {
                crate::codec::json::decode_json(bytes, &self.limits)?
            } else {
                crate::codec::decode(bytes, &self.limits)?
            };
            let p = r.partition.unwrap_or_else(|| keys::partition_for(&ev.account_id, n));
            Ok((ev, p))
        }));
        let decoded = &x.decoded;

        // 2. Look up the batch's dedup marks (one batched read) and account states (the cache
        //    first, one batched read for the rest).
        // Each event's dedup key, and the index of that key among the batch's distinct keys:
        // marks are then looked up and recorded by index, without hashing.
        x.dkeys.extend(
            decoded
                .iter()
                .flatten()
                .map(|(ev, p)| (*p, dedup_hash(&ev.account_id, &ev.event_id))),
        );
        let dkeys = &x.dkeys;
        x.order.extend(0..dkeys.len() as u32);
        // Ties in event order, so that two marks of one key are written in the order they were
        // made (the later one wins).
        x.order.sort_unstable_by_key(|&i| (dkeys[i as usize], i));
        x.mark_of.resize(dkeys.len(), 0);
        let mut last = None;
        for &i in &x.order {
            let k = dkeys[i as usize];
            if last != Some(k) {
                x.distinct.push(dedup_key_of(k.0, k.1));
                last = Some(k);
            }
            x.mark_of[i as usize] = x.distinct.len() as u32 - 1;
        }
        // The latest mark of each distinct key: from the store, then from this batch's events.
        x.mark.resize(x.distinct.len(), None);
        {
            let distinct: Vec<&[u8]> = x.distinct.iter().map(|k| &k[..]).collect();
            let mark = &mut x.mark;
            self.store.multi_get(Cf::Dedup, &distinct, &mut |i, v| {
                if let Some(v) = v.and_then(|v| v.get(..4)) {
                    mark[i] = Some(i32::from_le_bytes(v.try_into().unwrap()));
                }
            })?;
        }
        x.new_mark.resize(dkeys.len(), None);

        // Each event's account: from the cache if it has it, else (below) from the store.
        let mut key_buf: Vec<u8> = Vec::with_capacity(64);
        for (ev_i, (ev, p)) in decoded.iter().flatten().enumerate() {
            state_key_into(*p, &ev.account_id, &mut key_buf);
            let (slot, new) = work.slot(&key_buf);
            if new {
                match self.cache.take(&key_buf) {
                    Some(s) => work.slots[slot as usize] = Some(entry_of(s, *p, &cfg, true)),
                    None => x.misses.push((key_buf.clone(), slot)),
                }
            }
            work.last_event[slot as usize] = ev_i as u32;
            x.slot_of.push(slot);
        }
        x.misses.sort_unstable();
        let miss_keys: Vec<&[u8]> = x.misses.iter().map(|(k, _)| k.as_slice()).collect();
        let mut load_err = None;
        self.store.multi_get(Cf::State, &miss_keys, &mut |i, v| {
            if let Some(v) = v {
                match state::decode(v) {
                    Ok(s) => {
                        let p = keys::parse_state_key(miss_keys[i]).map_or(0, |(p, _)| p);
                        work.slots[x.misses[i].1 as usize] =
                            Some(entry_of(Box::new(s), p, &cfg, true));
                    }
                    Err(e) => load_err = Some((miss_keys[i].to_vec(), e)),
                }
            }
        })?;
        if let Some((k, e)) = load_err {
            let account = keys::parse_state_key(&k).map_or(String::new(), |(_, a)| a.to_owned());
            return Err(PipelineError::State { account, source: e });
        }
        drop(miss_keys);

        // 3. Fold and evaluate, record by record, in input order.
        // Outputs in the order they happen (dead letters, score changes, alerts interleaved), so
        // the published sequence does not depend on where batches begin and end.
        let mut outbox = std::mem::take(&mut x.outbox);
        let mut clocks_dirty = vec![false; n as usize];
        let peers_on = cfg.scorecard.peers.enabled();
        let mut last_pos: Vec<Option<u64>> = vec![None; sources.len()];
        let lateness = cfg.engine.allowed_lateness_secs as i64 * 1000;
        let retention = cfg.engine.dedup_retention_days as i32;
        let mut ev_i = 0;
        let mut outs = Vec::new();
        for (r, d) in batch.records.iter().zip(decoded) {
            last_pos[r.source as usize] = Some(r.next);
            let (ev, p) = match d {
                Err(rej) => {
                    report.dead_lettered += 1;
                    *report.rejected_by_reason.entry(rej.reason).or_default() += 1;
                    outbox.push(dead_letter(
                        batch.bytes(r),
                        rej,
                        &sources[r.source as usize],
                        r,
                    ));
                    continue;
                }
                Ok((ev, p)) => (ev, *p),
            };
            let this = ev_i;
            ev_i += 1;
            // The account states of the next events are usually not in cache: ask for them
            // now, so that they arrive while this event is folded.
            for (ahead, deep) in [(PREFETCH_AHEAD, false), (2, true)] {
                if let Some(&slot) = x.slot_of.get(this + ahead) {
                    if let Some(e) = &work.slots[slot as usize] {
                        prefetch_state(&e.state, deep);
                    }
                }
            }
            let m = x.mark_of[this] as usize;
            let stream = self.clocks[p as usize].max(ev.occurred_at_ms);
            let horizon = day_of(stream) - retention;
            // The latest mark of this id, from earlier in this batch or else from the store. The
            // same retention rule applies to both, so batching cannot change the verdict.
            if x.mark[m].is_some_and(|day| day >= horizon) {
                report.duplicates += 1;
                continue;
            }
            x.mark[m] = Some(day_of(ev.occurred_at_ms));
            x.new_mark[this] = Some(day_of(ev.occurred_at_ms));

            // Timers due before this event fire first: event time, as the log says.
            if cfg.engine.timer_clock == TimerClock::Event {
                self.fire_timers(p, stream, this as u32, &mut work, &mut w, &mut outbox, &mut report)?;
            }
            if stream != self.clocks[p as usize] {
                self.clocks[p as usize] = stream;
                clocks_dirty[p as usize] = true;
            }
            let late = ev.occurred_at_ms < stream - lateness;
            report.late += late as u64;
            let slot = x.slot_of[this] as usize;
            let e = work.slots[slot].get_or_insert_with(|| Entry {
                state: Box::new(state::new_state(&ev.account_id, ev.occurred_at_ms)),
                partition: p,
                stored_timer: 0,
                band_before: None,
                existed: false,
                dirty: false,
                written: None,
                windows: WindowCache::default(),
            });
            fold(&mut e.state, ev, late, &cfg);
            e.windows.folded(&e.state, day_of(ev.occurred_at_ms));
            let book = peers_on.then(|| &mut self.peers[p as usize]);
            let next = evaluate_with(&mut e.state, stream, &cfg, book, &mut outs, &mut e.windows);
            e.dirty = true;
            reschedule(&mut self.timers[p as usize], e, next);
            if work.last_event[slot] == this as u32 {
                state_key_into(p, &ev.account_id, &mut key_buf);
                write_state(&mut w, &key_buf, e, &cfg);
            }
            for o in outs.drain(..) {
                self.emit(p, o, &mut outbox, &mut report);
            }
            report.folded += 1;
            report.by_type[type_index(ev)] += 1;
        }
        if cfg.engine.timer_clock == TimerClock::Wall {
            if let Some(wc) = wall {
                for &p in wc.partitions.iter().filter(|p| **p < n) {
                    self.fire_timers(p, wc.now_ms, NO_EVENT, &mut work, &mut w, &mut outbox, &mut report)?;
                }
            }
        }

        // 5. One atomic write.
        // The states whose last event was a duplicate (the rest are written already).
        for (key, &slot) in &work.index {
            if let Some(e) = work.slots[slot as usize].as_mut() {
                if e.dirty && e.written.is_none() {
                    write_state(&mut w, key, e, &cfg);
                }
            }
        }
        // The changelog gets every state written (before the puts are reordered below: `op`
        // indexes refer to the order they were made in).
        let mut cl_rows: Vec<OutboxRecord> = Vec::new();
        let mut touched: BTreeSet<u16> = BTreeSet::new();
        if let Some(cl) = &self.changelog {
            for e in work.slots.iter().flatten() {
                if let Some(wr) = e.written {
                    let op = &w.ops[wr.op];
                    let account = std::str::from_utf8(&w.key(op)[2..]).expect("state keys hold UTF-8 ids");
                    cl_rows.push(cl.state(e.partition, self.next_seq, account, w.value(op)));
                    touched.insert(e.partition);
                }
            }
            touched.extend(batch.records.iter().filter_map(|r| r.partition));
        }
        // States go in key order, and so do dedup marks: RocksDB's skip-list memtable then
        // finds each insert position next to the previous one instead of searching from the
        // top, which makes inserts several times cheaper.
        let mut puts: Vec<(u128, u32)> = work
            .slots
            .iter()
            .flatten()
            .filter_map(|e| e.written.map(|wr| (wr.prefix, wr.op as u32)))
            .collect();
        puts.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| w.key(&w.ops[a.1 as usize]).cmp(w.key(&w.ops[b.1 as usize])))
        });
        let order: Vec<u32> = puts.iter().map(|&(_, op)| op).collect();
        w.reorder_from(0, &order);
        // Timers that moved: the old key deleted, the new one put, in key order too.
        let mut timer_ops: Vec<(Vec<u8>, bool)> = Vec::new();
        for (key, &slot) in &work.index {
            let Some(e) = work.slots[slot as usize].as_ref() else {
                continue;
            };
            let Some(wr) = e.written else { continue };
            let account = std::str::from_utf8(&key[2..]).expect("state keys hold UTF-8 ids");
            if wr.timer != e.stored_timer {
                if e.stored_timer != 0 {
                    timer_ops.push((timer_key(e.partition, e.stored_timer, account), false));
                }
                if wr.timer != 0 {
                    timer_ops.push((timer_key(e.partition, wr.timer, account), true));
                }
            }
            if !e.existed {
                self.counters.accounts += 1;
            }
            if wr.band != e.band_before {
                bump_band(&mut self.counters, e.band_before, -1);
                bump_band(&mut self.counters, wr.band, 1);
            }
        }
        // Keys are unique here: each account moves only its own timer, once.
        timer_ops.sort_unstable();
        for (key, put) in &timer_ops {
            match put {
                true => w.put(Cf::Timers, key, &[]),
                false => w.delete(Cf::Timers, key),
            }
        }
        for &i in &x.order {
            if let Some(day) = x.new_mark[i as usize] {
                let key = &x.distinct[x.mark_of[i as usize] as usize];
                w.put(Cf::Dedup, key, &day.to_le_bytes());
            }
        }
        if let Some(cl) = &self.changelog {
            // One chunk per partition with the marks this batch added, and tombstones for the
            // chunks whose every mark has left the dedup window.
            // A partition's marks go in chunks of at most `MAX_CHUNK_MARKS`, so that a large
            // batch cannot make a record over the broker's size limit.
            let mut chunks: std::collections::BTreeMap<u16, Vec<crate::pb::DedupChunk>> = Default::default();
            for &i in &x.order {
                if let Some(day) = x.new_mark[i as usize] {
                    let (p, hash) = x.dkeys[i as usize];
                    let list = chunks.entry(p).or_default();
                    if list.last().is_none_or(|c| c.days.len() >= MAX_CHUNK_MARKS) {
                        list.push(Default::default());
                    }
                    let c = list.last_mut().expect("pushed above");
                    c.hashes.extend_from_slice(&hash.to_be_bytes());
                    c.days.push(day);
                }
            }
            for (p, list) in &chunks {
                for (part, c) in list.iter().enumerate() {
                    let day = c.days.iter().copied().max().unwrap_or(0);
                    let key = crate::changelog::chunk_key(day, &cl.writer_of(*p), self.next_seq, part);
                    w.put(Cf::Meta, &keys::chunk_key(*p, day, &key), &[]);
                    cl_rows.push(cl.chunk(*p, self.next_seq, key, c));
                }
            }
            for &p in &touched {
                let horizon = day_of(self.clocks[p as usize]) - retention;
                let prefix = keys::chunk_prefix(p);
                let mut expired = Vec::new();
                self.store.scan(Cf::Meta, &prefix, &mut |k, _| {
                    match keys::parse_chunk_key(p, k) {
                        Some((day, key)) if day < horizon => {
                            expired.push((k.to_vec(), key.to_owned()));
                            true
                        }
                        _ => false,
                    }
                })?;
                for (meta_key, key) in expired {
                    w.delete(Cf::Meta, &meta_key);
                    cl_rows.push(cl.tombstone(p, self.next_seq, key));
                }
            }
        }
        if peers_on {
            // The books change with every evaluation: stored with the clocks of the partitions
            // this batch touched.
            for &p in &touched {
                clocks_dirty[p as usize] = true;
            }
        }
        for (p, _) in clocks_dirty.iter().enumerate().filter(|(_, d)| **d) {
            let c = PartitionClock {
                stream_time_ms: self.clocks[p],
                peers: self.peer_proto(p),
            };
            w.put(Cf::Meta, &clock_key(p as u16), &c.encode_to_vec());
        }
        for (src, next) in last_pos.iter().enumerate() {
            let Some(next) = *next else { continue };
            let key = &sources[src];
            w.put(
                Cf::Offsets,
                key.as_bytes(),
                &SourcePosition { next }.encode_to_vec(),
            );
            match self.positions.get_mut(key) {
                Some(pos) => *pos = next,
                None => {
                    self.positions.insert(key.clone(), next);
                }
            }
        }
        if let Some(cl) = &self.changelog {
            // Last: a restore applies only what a checkpoint follows.
            for &p in &touched {
                let positions = cl.sources_of[p as usize]
                    .iter()
                    .filter_map(|k| self.positions.get(k).map(|v| (k.clone(), *v)))
                    .collect();
                let c = crate::pb::PartitionCheckpoint {
                    positions,
                    stream_time_ms: self.clocks[p as usize],
                    peers: self.peer_proto(p as usize),
                };
                cl_rows.push(cl.checkpoint(p, self.next_seq, &c));
            }
        }
        outbox.append(&mut cl_rows);
        self.counters.records_in += report.records;
        self.counters.folded += report.folded;
        self.counters.duplicates += report.duplicates;
        self.counters.dead_lettered += report.dead_lettered;
        self.counters.scores_emitted += report.scores;
        self.counters.timers_fired += report.timers_fired;
        w.put(Cf::Meta, COUNTERS_KEY, &self.counters.encode_to_vec());
        let first_seq = self.next_seq;
        for (i, rec) in outbox.iter().enumerate() {
            w.put_with(Cf::Outbox, &outbox_key(first_seq + i as u64), |buf| {
                rec.encode_raw(buf)
            });
        }
        if self.confirmed > self.delete_from {
            w.delete_range(
                Cf::Outbox,
                &outbox_key(self.delete_from),
                &outbox_key(self.confirmed),
            );
        }
        w.put(
            Cf::Meta,
            OUTBOX_NEXT_KEY,
            &(first_seq + outbox.len() as u64).to_le_bytes(),
        );
        report.write_bytes = w.bytes();
        let t0 = Instant::now();
        self.store.commit(&w)?;
        report.commit_seconds = t0.elapsed().as_secs_f64();
        self.delete_from = self.confirmed;
        self.next_seq += outbox.len() as u64;
        // The buffers are kept for the next batch (they grow to a batch's size once).
        self.write_set = w;
        // Committed: only now may the batch's states be seen by later batches through the cache.
        for (key, slot) in work.index.drain() {
            if let Some(e) = work.slots[slot as usize].take() {
                let weight = match e.written {
                    Some(wr) => wr.weight,
                    None => state_weight(&key, &e.state),
                };
                self.cache.put(key, e.state, weight);
            }
        }
        self.work = work;

        // 6. Publish (changelog records through the gate); confirmed rows are deleted with the
        //    next commit.
        if self.poisoned {
            return Err(poisoned());
        }
        for (i, rec) in outbox.drain(..).enumerate() {
            let seq = first_seq + i as u64;
            if rec.kind == OutputKind::Changelog as u32 {
                self.gate.push_back((seq, rec));
            } else {
                self.send_or_poison(sink, seq, &rec)?;
                self.last_sent = Some(seq);
                self.last_output = Some(seq);
            }
        }
        self.pump(sink, false)?;
        if let Some(min_clock) = self.clocks.iter().filter(|&&c| c > 0).min() {
            self.store
                .set_dedup_horizon(day_of(*min_clock) - retention - 1);
        }
        outbox.clear();
        x.outbox = outbox;
        self.scratch = x;
        Ok(report)
    }

    /// Forgets the cached states of these account partitions: to be called when their state may
    /// have changed in the store behind the pipeline's back (restored from elsewhere after a
    /// rebalance), so that the next batch reads it from the store.
    pub fn forget_cached_states(&mut self, partitions: &[u16]) {
        self.cache.forget(|k| {
            k.get(..2)
                .is_some_and(|p| partitions.contains(&u16::from_be_bytes([p[0], p[1]])))
        });
    }

    /// Encodes one engine output into an outbox record.
    fn emit(
        &mut self,
        p: u16,
        o: Output,
        outbox: &mut Vec<OutboxRecord>,
        report: &mut BatchReport,
    ) {
        let mut payload = Vec::with_capacity(512);
        let (kind, account) = match o {
            Output::Score(c) => {
                report.scores += 1;
                encode_score(&c, self.format, &mut payload);
                (OutputKind::HealthScore, c.account_id)
            }
            Output::Alert(a) => {
                *report
                    .alerts
                    .entry((a.rule.name(), a.status.as_str()))
                    .or_default() += 1;
                match a.status {
                    AlertStatus::Open => self.counters.alerts_opened += 1,
                    AlertStatus::Resolved => self.counters.alerts_resolved += 1,
                }
                encode_alert(&a, self.format, &mut payload);
                (OutputKind::ChurnAlert, a.account_id)
            }
        };
        outbox.push(OutboxRecord {
            kind: kind as u32,
            key: account,
            payload,
            headers: HashMap::new(),
            partition: p as i32,
        });
    }

    /// Fires partition `p`'s timers due at or before `up_to`, in (due, account) order, before
    /// decoded event number `before` (`NO_EVENT`: after the batch's last).
    #[allow(clippy::too_many_arguments)]
    fn fire_timers(
        &mut self,
        p: u16,
        up_to: i64,
        before: u32,
        work: &mut Work,
        w: &mut WriteSet,
        outbox: &mut Vec<OutboxRecord>,
        report: &mut BatchReport,
    ) -> Result<(), PipelineError> {
        let mut key = Vec::new();
        let mut outs = Vec::new();
        loop {
            let Some((due, acct)) = self.timers[p as usize].first() else {
                break;
            };
            let due = *due;
            if due > up_to {
                break;
            }
            state_key_into(p, acct, &mut key);
            let (_, acct) = self.timers[p as usize].pop_first().expect("present");
            let (slot, _) = work.slot(&key);
            let slot = slot as usize;
            if work.slots[slot].is_none() {
                let s = match self.cache.take(&key) {
                    Some(s) => s,
                    None => match self.store.get(Cf::State, &key)? {
                        // Not in the store: an account this batch creates (its timer cannot be
                        // due yet), or a stale timer.
                        None => continue,
                        Some(v) => Box::new(state::decode(&v).map_err(|source| {
                            PipelineError::State {
                                account: acct.clone(),
                                source,
                            }
                        })?),
                    },
                };
                work.slots[slot] = Some(entry_of(s, p, &self.cfg, true));
            }
            let e = work.slots[slot].as_mut().expect("just filled");
            if e.state.timer_due_ms != due {
                continue;
            }
            e.state.timer_due_ms = 0;
            let book = self.cfg.scorecard.peers.enabled().then(|| &mut self.peers[p as usize]);
            let next = evaluate_with(&mut e.state, due, &self.cfg, book, &mut outs, &mut e.windows);
            e.dirty = true;
            reschedule(&mut self.timers[p as usize], e, next);
            // Written now if the batch has no later event for the account (else that event will).
            let last = work.last_event[slot];
            if last == NO_EVENT || last < before {
                write_state(w, &key, e, &self.cfg);
            }
            for o in outs.drain(..) {
                self.emit(p, o, outbox, report);
            }
            report.timers_fired += 1;
        }
        Ok(())
    }

    /// Partition `p`'s peer book as stored (nothing when peers are not used).
    fn peer_proto(&self, p: usize) -> Option<crate::pb::PeerBook> {
        let b = self.peers.get(p)?;
        (!b.is_empty()).then(|| b.to_proto())
    }

    /// Number of scheduled timers.
    pub fn timer_count(&self) -> usize {
        self.timers.iter().map(BTreeSet::len).sum()
    }
}

/// Encodes the entry's state into the write set (again, if it was written before and changed
/// since) and notes what the rest of the write needs of it.
fn write_state(w: &mut WriteSet, key: &[u8], e: &mut Entry, cfg: &Config) {
    // `encode_raw`: `encode` would first walk the whole state once more only to check a
    // capacity that a Vec does not have.
    let op = match e.written {
        Some(wr) => {
            w.replace_value_with(wr.op, |buf| e.state.encode_raw(buf));
            wr.op
        }
        None => w.put_with(Cf::State, key, |buf| e.state.encode_raw(buf)),
    };
    e.written = Some(Written {
        op,
        prefix: key_prefix(key),
        timer: e.state.timer_due_ms,
        band: e
            .state
            .scored
            .then(|| Band::of(e.state.emitted_score, &cfg.scorecard.bands)),
        weight: state_weight(key, &e.state),
    });
}

fn state_weight(key: &[u8], s: &AccountState) -> usize {
    crate::store::cache::state_bytes(s) + key.len()
}

fn entry_of(s: Box<AccountState>, p: u16, cfg: &Config, existed: bool) -> Entry {
    Entry {
        stored_timer: s.timer_due_ms,
        band_before: s
            .scored
            .then(|| Band::of(s.emitted_score, &cfg.scorecard.bands)),
        state: s,
        partition: p,
        existed,
        dirty: false,
        written: None,
        windows: WindowCache::default(),
    }
}

/// Sets the account's timer to `next`, lazily: an earlier timer already set is kept, since firing
/// early only re-evaluates the account (and reschedules it) — which saves moving the timer on
/// every event of a busy account.
fn reschedule(timers: &mut BTreeSet<(i64, String)>, e: &mut Entry, next: Option<i64>) {
    let current = e.state.timer_due_ms;
    if current != 0 && next.is_none_or(|n| current <= n) {
        return;
    }
    let next = next.unwrap_or(0);
    if current != 0 {
        timers.remove(&(current, e.state.account_id.clone()));
    }
    if next != 0 {
        timers.insert((next, e.state.account_id.clone()));
    }
    e.state.timer_due_ms = next;
}

fn poisoned() -> PipelineError {
    PipelineError::Refused(
        "an earlier hand-over to the sink failed, so what it holds is unknown; nothing more is published or deleted until a restart publishes the outbox again".into(),
    )
}

fn bump_band(c: &mut Counters, band: Option<Band>, by: i64) {
    let slot = match band {
        Some(Band::Green) => &mut c.band_green,
        Some(Band::Yellow) => &mut c.band_yellow,
        Some(Band::Red) => &mut c.band_red,
        None => return,
    };
    *slot = slot.saturating_add_signed(by);
}

fn dead_letter(
    bytes: &[u8],
    rej: &Rejection,
    source: &str,
    r: &crate::source::RecordMeta,
) -> OutboxRecord {
    let mut headers: HashMap<String, Vec<u8>> = HashMap::new();
    headers.insert("reason".into(), rej.reason.code().as_bytes().to_vec());
    headers.insert("detail".into(), rej.detail.as_bytes().to_vec());
    headers.insert("source".into(), source.as_bytes().to_vec());
    headers.insert(
        "partition".into(),
        r.partition
            .map_or(-1, |p| p as i32)
            .to_string()
            .into_bytes(),
    );
    headers.insert("offset".into(), r.offset.to_string().into_bytes());
    if let Some(len) = r.oversized {
        headers.insert("original_length".into(), len.to_string().into_bytes());
    }
    OutboxRecord {
        kind: OutputKind::DeadLetter as u32,
        key: source.to_owned(),
        payload: bytes.to_vec(),
        headers,
        partition: r.partition.map_or(-1, |p| p as i32),
    }
}
