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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use prost::Message;

use crate::codec::output::{OutputFormat, encode_alert, encode_score};
use crate::codec::{DecodeLimits, Reason, Rejection};
use crate::config::{Config, TimerClock};
use crate::domain::event::{Event, day_of};
use crate::domain::score::Band;
use crate::domain::state::{self, StateError};
use crate::domain::{AlertStatus, Output, evaluate, fold};
use crate::pb::{AccountState, Counters, OutboxRecord, PartitionClock, SourcePosition};
use crate::sink::{OutputKind, Sink, SinkError};
use crate::source::InputBatch;
use crate::store::cache::KeyHash;
use crate::store::keys::{
    self, COUNTERS_KEY, DEDUP_KEY_LEN, OUTBOX_NEXT_KEY, PARTITIONS_KEY, clock_key,
    dedup_key_array, outbox_key, parse_outbox_key, parse_timer_key, state_key_into, timer_key,
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

struct Entry {
    state: AccountState,
    partition: u16,
    /// The timer as stored, to delete its key when it moves.
    stored_timer: i64,
    band_before: Option<Band>,
    existed: bool,
    dirty: bool,
}

/// The accounts a batch works on, by state key.
type Entries = HashMap<Box<[u8]>, Entry, KeyHash>;

pub struct Pipeline {
    cfg: Arc<Config>,
    store: Arc<dyn Store>,
    limits: DecodeLimits,
    format: OutputFormat,
    /// Input records are JSON only (NDJSON files); otherwise the format is detected per record.
    json_only: bool,
    /// Stream time (max event time) per account partition; 0 before the first event.
    clocks: Vec<i64>,
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
        for (p, c) in clocks.iter_mut().enumerate() {
            if let Some(v) = store.get(Cf::Meta, &clock_key(p as u16))? {
                *c = PartitionClock::decode(v.as_slice())
                    .map(|c| c.stream_time_ms)
                    .unwrap_or(0);
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
            timers,
            counters,
            positions,
            next_seq,
            confirmed,
            delete_from: confirmed,
            cache: StateCache::new(cfg_cache_bytes),
            write_set: WriteSet::default(),
        })
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
        for (seq, r) in &recs {
            sink.send(*seq, r)?;
        }
        let n = recs.len() as u64;
        self.confirmed = self.confirmed.max(sink.confirmed(true)?);
        self.flush_deletes()?;
        Ok(n)
    }

    /// Collects the sink's confirmations without waiting and deletes the confirmed outbox rows
    /// (for idle moments between batches).
    pub fn settle(&mut self, sink: &mut dyn Sink) -> Result<(), PipelineError> {
        self.confirmed = self.confirmed.max(sink.confirmed(false)?);
        self.flush_deletes()
    }

    /// Waits for the sink to confirm everything and deletes the confirmed outbox rows.
    pub fn finish(&mut self, sink: &mut dyn Sink) -> Result<(), PipelineError> {
        self.confirmed = self.confirmed.max(sink.confirmed(true)?);
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

        // 1. Decode every record.
        let decoded: Vec<Result<(Event, u16), Rejection>> = batch
            .records
            .iter()
            .map(|r| {
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
            })
            .collect();

        // 2. Look up the batch's dedup marks (one batched read) and account states (the cache
        //    first, one batched read for the rest).
        // Each event's dedup key, in event order, and the index of that key among the batch's
        // distinct keys: marks are then looked up and recorded by index, without hashing.
        let dkeys: Vec<[u8; DEDUP_KEY_LEN]> = decoded
            .iter()
            .flatten()
            .map(|(ev, p)| dedup_key_array(*p, &ev.account_id, &ev.event_id))
            .collect();
        let mut order: Vec<u32> = (0..dkeys.len() as u32).collect();
        order.sort_unstable_by_key(|&i| dkeys[i as usize]);
        let mut distinct: Vec<&[u8]> = Vec::with_capacity(order.len());
        let mut slot_of = vec![0u32; dkeys.len()];
        for &i in &order {
            let k = &dkeys[i as usize][..];
            if distinct.last() != Some(&k) {
                distinct.push(k);
            }
            slot_of[i as usize] = distinct.len() as u32 - 1;
        }
        // The latest mark of each distinct key: from the store, then from this batch's events.
        let mut mark: Vec<Option<i32>> = vec![None; distinct.len()];
        self.store.multi_get(Cf::Dedup, &distinct, &mut |i, v| {
            if let Some(v) = v.and_then(|v| v.get(..4)) {
                mark[i] = Some(i32::from_le_bytes(v.try_into().unwrap()));
            }
        })?;

        let mut entries: Entries = HashMap::with_capacity_and_hasher(dkeys.len(), KeyHash::default());
        let mut key_buf: Vec<u8> = Vec::with_capacity(64);
        let mut misses: Vec<Vec<u8>> = Vec::new();
        for (ev, p) in decoded.iter().flatten() {
            state_key_into(*p, &ev.account_id, &mut key_buf);
            if entries.contains_key(key_buf.as_slice()) {
                continue;
            }
            match self.cache.take(&key_buf) {
                Some((k, s)) => {
                    entries.insert(k, entry_of(s, *p, &cfg, true));
                }
                None => misses.push(key_buf.clone()),
            }
        }
        misses.sort_unstable();
        misses.dedup();
        let miss_keys: Vec<&[u8]> = misses.iter().map(Vec::as_slice).collect();
        let mut load_err = None;
        self.store.multi_get(Cf::State, &miss_keys, &mut |i, v| {
            if let Some(v) = v {
                match state::decode(v) {
                    Ok(s) => {
                        let p = keys::parse_state_key(miss_keys[i]).map_or(0, |(p, _)| p);
                        entries.insert(miss_keys[i].into(), entry_of(s, p, &cfg, true));
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
        drop(misses);

        // 3. Fold and evaluate, record by record, in input order.
        // Outputs in the order they happen (dead letters, score changes, alerts interleaved), so
        // the published sequence does not depend on where batches begin and end.
        let mut outbox: Vec<OutboxRecord> = Vec::new();
        let mut new_marks: Vec<(u32, i32)> = Vec::new();
        let mut clocks_dirty = vec![false; n as usize];
        let mut last_pos: Vec<Option<u64>> = vec![None; sources.len()];
        let lateness = cfg.engine.allowed_lateness_secs as i64 * 1000;
        let retention = cfg.engine.dedup_retention_days as i32;
        let mut ev_i = 0;
        let mut outs = Vec::new();
        for (r, d) in batch.records.iter().zip(&decoded) {
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
            let slot = slot_of[ev_i] as usize;
            ev_i += 1;
            let stream = self.clocks[p as usize].max(ev.occurred_at_ms);
            let horizon = day_of(stream) - retention;
            // The latest mark of this id, from earlier in this batch or else from the store. The
            // same retention rule applies to both, so batching cannot change the verdict.
            if mark[slot].is_some_and(|day| day >= horizon) {
                report.duplicates += 1;
                continue;
            }
            mark[slot] = Some(day_of(ev.occurred_at_ms));
            new_marks.push((ev_i as u32 - 1, day_of(ev.occurred_at_ms)));

            // Timers due before this event fire first: event time, as the log says.
            if cfg.engine.timer_clock == TimerClock::Event {
                self.fire_timers(p, stream, &mut entries, &mut outbox, &mut report)?;
            }
            if stream != self.clocks[p as usize] {
                self.clocks[p as usize] = stream;
                clocks_dirty[p as usize] = true;
            }
            let late = ev.occurred_at_ms < stream - lateness;
            report.late += late as u64;
            state_key_into(p, &ev.account_id, &mut key_buf);
            let e = match entries.get_mut(key_buf.as_slice()) {
                Some(e) => e,
                None => entries.entry(key_buf.as_slice().into()).or_insert(Entry {
                    state: state::new_state(&ev.account_id, ev.occurred_at_ms),
                    partition: p,
                    stored_timer: 0,
                    band_before: None,
                    existed: false,
                    dirty: false,
                }),
            };
            fold(&mut e.state, ev, late, &cfg);
            let next = evaluate(&mut e.state, stream, &cfg, &mut outs);
            e.dirty = true;
            reschedule(&mut self.timers[p as usize], e, next);
            for o in outs.drain(..) {
                self.emit(p, o, &mut outbox, &mut report);
            }
            report.folded += 1;
            report.by_type[type_index(ev)] += 1;
        }
        if cfg.engine.timer_clock == TimerClock::Wall {
            if let Some(w) = wall {
                for &p in w.partitions.iter().filter(|p| **p < n) {
                    self.fire_timers(p, w.now_ms, &mut entries, &mut outbox, &mut report)?;
                }
            }
        }

        // 5. One atomic write.
        // States and dedup marks go in key order: RocksDB's skip-list memtable then finds each
        // insert position next to the previous one instead of searching from the top, which
        // makes inserts several times cheaper. (Two marks of one key keep their event order.)
        let mut w = std::mem::take(&mut self.write_set);
        w.clear();
        let mut dirty: Vec<(&[u8], &Entry)> = entries
            .iter()
            .filter(|(_, e)| e.dirty)
            .map(|(k, e)| (&k[..], e))
            .collect();
        dirty.sort_unstable_by_key(|(k, _)| *k);
        for (key, e) in dirty {
            w.put_with(Cf::State, key, |buf| {
                e.state.encode(buf).expect("Vec grows")
            });
            if e.state.timer_due_ms != e.stored_timer {
                if e.stored_timer != 0 {
                    w.delete(
                        Cf::Timers,
                        &timer_key(e.partition, e.stored_timer, &e.state.account_id),
                    );
                }
                if e.state.timer_due_ms != 0 {
                    w.put(
                        Cf::Timers,
                        &timer_key(e.partition, e.state.timer_due_ms, &e.state.account_id),
                        &[],
                    );
                }
            }
            if !e.existed {
                self.counters.accounts += 1;
            }
            let after = e
                .state
                .scored
                .then(|| Band::of(e.state.emitted_score, &cfg.scorecard.bands));
            if after != e.band_before {
                bump_band(&mut self.counters, e.band_before, -1);
                bump_band(&mut self.counters, after, 1);
            }
        }
        new_marks.sort_by_key(|&(i, _)| dkeys[i as usize]);
        for (i, day) in new_marks {
            w.put(Cf::Dedup, &dkeys[i as usize], &day.to_le_bytes());
        }
        for (p, _) in clocks_dirty.iter().enumerate().filter(|(_, d)| **d) {
            let c = PartitionClock {
                stream_time_ms: self.clocks[p],
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
                rec.encode(buf).expect("Vec grows")
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
        for (key, e) in entries.drain() {
            self.cache.put(key, e.state);
        }

        // 6. Publish; confirmed rows are deleted with the next commit.
        for (i, rec) in outbox.iter().enumerate() {
            sink.send(first_seq + i as u64, rec)?;
        }
        self.confirmed = self.confirmed.max(sink.confirmed(false)?);
        if let Some(min_clock) = self.clocks.iter().filter(|&&c| c > 0).min() {
            self.store
                .set_dedup_horizon(day_of(*min_clock) - retention - 1);
        }
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

    /// Fires partition `p`'s timers due at or before `up_to`, in (due, account) order.
    fn fire_timers(
        &mut self,
        p: u16,
        up_to: i64,
        entries: &mut Entries,
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
            if !entries.contains_key(key.as_slice()) {
                let s = match self.cache.take(&key) {
                    Some((k, s)) => {
                        entries.insert(k, entry_of(s, p, &self.cfg, true));
                        None
                    }
                    None => match self.store.get(Cf::State, &key)? {
                        None => continue,
                        Some(v) => Some(state::decode(&v).map_err(|source| {
                            PipelineError::State {
                                account: acct.clone(),
                                source,
                            }
                        })?),
                    },
                };
                if let Some(s) = s {
                    entries.insert(key.as_slice().into(), entry_of(s, p, &self.cfg, true));
                }
            }
            let e = entries.get_mut(key.as_slice()).expect("just inserted");
            if e.state.timer_due_ms != due {
                continue;
            }
            e.state.timer_due_ms = 0;
            let next = evaluate(&mut e.state, due, &self.cfg, &mut outs);
            e.dirty = true;
            reschedule(&mut self.timers[p as usize], e, next);
            for o in outs.drain(..) {
                self.emit(p, o, outbox, report);
            }
            report.timers_fired += 1;
        }
        Ok(())
    }

    /// Number of scheduled timers.
    pub fn timer_count(&self) -> usize {
        self.timers.iter().map(BTreeSet::len).sum()
    }
}

fn entry_of(s: AccountState, p: u16, cfg: &Config, existed: bool) -> Entry {
    Entry {
        stored_timer: s.timer_due_ms,
        band_before: s
            .scored
            .then(|| Band::of(s.emitted_score, &cfg.scorecard.bands)),
        state: s,
        partition: p,
        existed,
        dirty: false,
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
