//! The changelog's guarantee, tested on generated event sequences without a broker (the Kafka
//! paths are in `tests/scale_out.rs`):
//! - a changelog record is handed to the sink only once every output committed before it is
//!   delivered, and never for a partition that is not open;
//! - restoring a partition from any prefix of its changelog (the writer may die at any record)
//!   and then reading its inputs on from the restored positions ends in byte-identical state:
//!   states, timers, dedup marks and positions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rapport::changelog::{BATCH_HEADER, Changelog, RestoreBuffer, Restored, TOMBSTONE_HEADER, WRITER_HEADER};
use rapport::config::Config;
use rapport::generate::{GenSpec, Portfolio, malformed_records};
use rapport::pb::OutboxRecord;
use rapport::pipeline::Pipeline;
use rapport::sink::{OutputKind, Sink, SinkError};
use rapport::source::{InputBatch, RecordMeta};
use rapport::store::keys::{partition_for, partition_range};
use rapport::store::{Cf, MemoryStore, Store};

const PARTITIONS: u16 = 4;

/// (partition, line) of a small generated portfolio with malformed records mixed in.
fn log() -> &'static Vec<(u16, Vec<u8>)> {
    static LOG: OnceLock<Vec<(u16, Vec<u8>)>> = OnceLock::new();
    LOG.get_or_init(|| {
        let p = Portfolio::new(GenSpec {
            accounts: 30,
            days: 60,
            seed: 11,
            usage_per_day: 2.0,
            duplicate_rate: 0.02,
            ..GenSpec::default()
        });
        let bad = malformed_records(5);
        let mut lines = Vec::new();
        for (i, ev) in p.events().enumerate() {
            let mut l = Vec::new();
            rapport::codec::json::encode_event(&ev, &mut l);
            lines.push((partition_for(&ev.account_id, PARTITIONS), l));
            if i % 89 == 0 {
                lines.push(((i % 4) as u16, bad[(i / 89) % bad.len()].1.clone()));
            }
        }
        lines
    })
}

fn config() -> Arc<Config> {
    let mut c = Config::defaults();
    c.engine.partitions = PARTITIONS;
    // Peer-relative levels on, with every segment big enough: the properties cover them too.
    c.scorecard.peers.components = vec!["usage_frequency".into(), "adoption".into(), "recency".into()];
    c.scorecard.peers.min_peers = 1;
    Arc::new(c)
}

/// One input "topic partition" per account partition.
fn source_key(p: u16) -> String {
    format!("kafka:in:{p}")
}

fn changelog() -> Changelog {
    changelog_of([7; 16])
}

fn changelog_of(writer: [u8; 16]) -> Changelog {
    Changelog {
        writer,
        sources_of: (0..PARTITIONS).map(|p| vec![source_key(p)]).collect(),
        writers: Vec::new(),
    }
}

/// Each record with its partition's own offset, as a Kafka source would hand it out.
fn with_offsets() -> Vec<(u16, u64, &'static [u8])> {
    let mut next = [0u64; PARTITIONS as usize];
    log()
        .iter()
        .map(|(p, l)| {
            let o = next[*p as usize];
            next[*p as usize] += 1;
            (*p, o, l.as_slice())
        })
        .collect()
}

fn batch_of(recs: &[(u16, u64, &[u8])]) -> InputBatch {
    let mut b = InputBatch::default();
    for (p, o, l) in recs {
        let start = b.buf.len();
        b.buf.extend_from_slice(l);
        b.records.push(RecordMeta {
            source: *p as u32,
            offset: *o,
            next: o + 1,
            start,
            end: b.buf.len(),
            partition: Some(*p),
            oversized: None,
        });
    }
    b
}

/// A sink whose deliveries the test decides; it checks the gate's rule on every send.
#[derive(Default)]
struct GateSink {
    sent: Vec<(u64, OutboxRecord)>,
    in_flight: BTreeSet<u64>,
    outputs_in_flight: BTreeSet<u64>,
    next: u64,
    next_output: u64,
    violations: Vec<String>,
}

impl GateSink {
    fn deliver_some(&mut self, rng: &mut impl Rng) {
        let done: Vec<u64> = self
            .in_flight
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.6))
            .collect();
        for s in done {
            self.in_flight.remove(&s);
            self.outputs_in_flight.remove(&s);
        }
    }
}

impl Sink for GateSink {
    fn send(&mut self, seq: u64, rec: &OutboxRecord) -> Result<(), SinkError> {
        if rec.kind == OutputKind::Changelog as u32 {
            if let Some(o) = self.outputs_in_flight.iter().next().filter(|o| **o < seq) {
                self.violations.push(format!(
                    "changelog record {seq} sent while output {o} was not delivered"
                ));
            }
        } else {
            self.outputs_in_flight.insert(seq);
            self.next_output = self.next_output.max(seq + 1);
        }
        self.in_flight.insert(seq);
        self.next = self.next.max(seq + 1);
        self.sent.push((seq, rec.clone()));
        Ok(())
    }

    fn confirmed(&mut self, wait: bool) -> Result<u64, SinkError> {
        if wait {
            self.in_flight.clear();
            self.outputs_in_flight.clear();
        }
        Ok(self.in_flight.first().copied().unwrap_or(self.next))
    }

    fn outputs_confirmed(&mut self) -> Result<u64, SinkError> {
        Ok(self
            .outputs_in_flight
            .first()
            .copied()
            .unwrap_or(self.next_output))
    }
}

fn dump_partition(store: &MemoryStore, p: u16) -> Vec<BTreeMap<Vec<u8>, Vec<u8>>> {
    let (lo, hi) = partition_range(p);
    let mut v: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = [Cf::State, Cf::Timers, Cf::Dedup]
        .iter()
        .map(|cf| {
            store
                .dump(*cf)
                .into_iter()
                .filter(|(k, _)| k.as_slice() >= lo.as_slice() && k.as_slice() < hi.as_slice())
                .collect()
        })
        .collect();
    v.push(
        store
            .dump(Cf::Offsets)
            .into_iter()
            .filter(|(k, _)| k.as_slice() == source_key(p).as_bytes())
            .collect(),
    );
    v
}

/// The writer: every record in batches of random sizes, deliveries at random; partition
/// `held` is never opened. Returns the store and the sink.
fn write(seed: u64, held: u16) -> (Arc<MemoryStore>, GateSink) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let store = Arc::new(MemoryStore::new());
    let st: Arc<dyn Store> = store.clone();
    let mut p = Pipeline::open(config(), st).unwrap();
    p.enable_changelog(changelog()).unwrap();
    for q in (0..PARTITIONS).filter(|q| *q != held) {
        p.open_changelog(q);
    }
    let sources: Vec<String> = (0..PARTITIONS).map(source_key).collect();
    let recs = with_offsets();
    let mut sink = GateSink::default();
    let mut at = 0;
    while at < recs.len() {
        let to = (at + rng.random_range(1..300)).min(recs.len());
        p.process(&batch_of(&recs[at..to]), &sources, None, &mut sink)
            .unwrap();
        sink.deliver_some(&mut rng);
        p.settle(&mut sink).unwrap();
        at = to;
    }
    p.finish(&mut sink).unwrap();
    (store, sink)
}

/// Partition `p`'s changelog as a broker would hold it (uncompacted), in publication order.
fn published(sink: &GateSink, p: u16) -> Vec<Restored> {
    sink.sent
        .iter()
        .filter(|(_, r)| r.kind == OutputKind::Changelog as u32 && r.partition == p as i32)
        .map(|(_, r)| Restored {
            key: r.key.clone(),
            value: (!r.headers.contains_key(TOMBSTONE_HEADER)).then(|| r.payload.clone()),
            writer: r.headers[WRITER_HEADER].as_slice().try_into().ok(),
            batch: u64::from_be_bytes(r.headers[BATCH_HEADER].as_slice().try_into().unwrap()),
        })
        .collect()
}

/// Restores partition `p` into a fresh store from the first `cut` records of its changelog, then
/// reads its inputs on from the restored position. Returns the store.
fn restore_then_resume(changelog_records: &[Restored], p: u16, cut: usize) -> Arc<MemoryStore> {
    restore_then_resume_as([8; 16], changelog_records, p, cut).0
}

/// [`restore_then_resume`] by a store with changelog writer id `writer`; also returns what it
/// published.
fn restore_then_resume_as(
    writer: [u8; 16],
    changelog_records: &[Restored],
    p: u16,
    cut: usize,
) -> (Arc<MemoryStore>, GateSink) {
    restore_then_resume_on(Arc::new(MemoryStore::new()), writer, changelog_records, p, cut)
}

/// [`restore_then_resume_as`] into an existing store (an instance that wrote the partition
/// before, got it back, and finds someone else wrote its changelog since).
fn restore_then_resume_on(
    store: Arc<MemoryStore>,
    writer: [u8; 16],
    changelog_records: &[Restored],
    p: u16,
    cut: usize,
) -> (Arc<MemoryStore>, GateSink) {
    let st: Arc<dyn Store> = store.clone();
    let mut pipe = Pipeline::open(config(), st).unwrap();
    pipe.enable_changelog(changelog_of(writer)).unwrap();
    pipe.begin_restore(p).unwrap();
    let mut buf = RestoreBuffer::default();
    for r in &changelog_records[..cut] {
        if let Some(group) = buf.push(r.clone()) {
            pipe.apply_restored(p, &group).unwrap();
        }
    }
    pipe.end_restore(p).unwrap();
    let from = pipe
        .partition_positions(p)
        .into_iter()
        .find_map(|(_, v)| v)
        .unwrap_or(0);
    let rest: Vec<(u16, u64, &[u8])> = with_offsets()
        .into_iter()
        .filter(|(q, o, _)| *q == p && *o >= from)
        .collect();
    let sources: Vec<String> = (0..PARTITIONS).map(source_key).collect();
    let mut sink = GateSink::default();
    // Small batches: many checkpoints, so a restore can stop at any of them.
    for chunk in rest.chunks(13) {
        pipe.process(&batch_of(chunk), &sources, None, &mut sink)
            .unwrap();
    }
    pipe.finish(&mut sink).unwrap();
    (store, sink)
}

#[test]
fn the_log_spreads_over_every_partition_and_the_changelog_has_every_kind_of_record() {
    let (_, sink) = write(1, PARTITIONS);
    for p in 0..PARTITIONS {
        let recs = published(&sink, p);
        assert!(recs.iter().any(|r| r.key.starts_with("s:")), "states of {p}");
        assert!(recs.iter().any(|r| r.key.starts_with("d:")), "dedup chunks of {p}");
        assert!(recs.last().is_some_and(|r| r.key.starts_with("c:")), "a checkpoint closes {p}");
    }
    assert!(sink.violations.is_empty(), "{:?}", &sink.violations[..sink.violations.len().min(5)]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]

    #[test]
    fn changelog_records_wait_for_their_outputs_and_for_their_partition(seed in any::<u64>(), held in 0..PARTITIONS) {
        let (_, sink) = write(seed, held);
        prop_assert!(sink.violations.is_empty(), "{} violations, the first: {:?}", sink.violations.len(), &sink.violations[..sink.violations.len().min(5)]);
        prop_assert!(
            !sink.sent.iter().any(|(_, r)| r.kind == OutputKind::Changelog as u32 && r.partition == held as i32),
            "a record of held partition {} was published", held
        );
    }

    #[test]
    fn a_restore_from_any_prefix_then_reading_on_ends_in_the_same_state(
        seed in any::<u64>(),
        p in 0..PARTITIONS,
        cut_share in 0.0f64..=1.0,
    ) {
        let (store, sink) = write(seed, PARTITIONS);
        let recs = published(&sink, p);
        let cut = ((recs.len() as f64) * cut_share).round() as usize;
        let restored = restore_then_resume(&recs, p, cut);
        let want = dump_partition(&store, p);
        let got = dump_partition(&restored, p);
        prop_assert!(!want[0].is_empty());
        for (i, what) in ["states", "timers", "dedup marks", "positions"].iter().enumerate() {
            prop_assert!(got[i] == want[i], "{} of partition {} differ after a restore from {} of {} records", what, p, cut, recs.len());
        }
    }
}

/// A first writer's changelog of partition `p`, cut after any record (it died there), then what
/// a second writer published after restoring that, cut too. Returns (the first writer's store,
/// its state of `p` uninterrupted, the log, a description of the cut).
fn torn_then_taken_over(
    seed: u64,
    p: u16,
    cut_share: f64,
    second_share: f64,
) -> (Arc<MemoryStore>, Vec<BTreeMap<Vec<u8>, Vec<u8>>>, Vec<Restored>, String) {
    let (store, sink) = write(seed, PARTITIONS);
    let want = dump_partition(&store, p);
    let first = published(&sink, p);
    let cut = ((first.len() as f64) * cut_share).round() as usize;
    let (_, second_sink) = restore_then_resume_as([9; 16], &first, p, cut);
    let second = published(&second_sink, p);
    let mut log = first[..cut].to_vec();
    log.extend_from_slice(&second[..((second.len() as f64) * second_share).round() as usize]);
    let what = format!("partition {p}, first writer cut after {cut} of {} records", first.len());
    (store, want, log, what)
}

fn same_state(got: &MemoryStore, want: &[BTreeMap<Vec<u8>, Vec<u8>>], p: u16, what: &str) -> Result<(), TestCaseError> {
    let got = dump_partition(got, p);
    for (i, part) in ["states", "timers", "dedup marks", "positions"].iter().enumerate() {
        prop_assert!(got[i] == want[i], "{} differ: {}", part, what);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// The writer dies after any record; a second instance restores what made it, reads on and
    /// writes; a third restores at any point of that — the first writer's torn batch included,
    /// followed by some of the second writer's checkpoints — reads on, and must hold the state
    /// of the uninterrupted run.
    #[test]
    fn a_torn_batch_of_a_dead_writer_is_never_applied_whatever_follows_it(
        seed in any::<u64>(),
        p in 0..PARTITIONS,
        cut_share in 0.0f64..=1.0,
        second_share in 0.0f64..=1.0,
    ) {
        let (_, want, log, what) = torn_then_taken_over(seed, p, cut_share, second_share);
        let third = restore_then_resume(&log, p, log.len());
        same_state(&third, &want, p, &what)?;
    }

    /// As above, then the first writer comes back on its old store, restores (the changelog
    /// moved on) and writes on; a fourth restores from the whole log. The torn batch must stay
    /// out even though the same store later writes checkpoints of higher batches.
    #[test]
    fn a_torn_batch_stays_out_when_its_writer_comes_back(
        seed in any::<u64>(),
        p in 0..PARTITIONS,
        cut_share in 0.0f64..=1.0,
        second_share in 0.0f64..=1.0,
    ) {
        let (store, want, mut log, what) = torn_then_taken_over(seed, p, cut_share, second_share);
        // The first writer again, on its own store (same store id, outbox numbering goes on).
        let (_, third_sink) = restore_then_resume_on(store, [7; 16], &log, p, log.len());
        log.extend(published(&third_sink, p));
        let fourth = restore_then_resume(&log, p, log.len());
        same_state(&fourth, &want, p, &what)?;
    }
}

/// A batch with more new dedup marks on one partition than one chunk record may hold: the
/// marks go out in several chunks, each within `MAX_CHUNK_MARKS` (so within the broker's
/// record size limit whatever the batch size), and a restore from them holds every mark.
#[test]
fn a_large_batch_splits_its_dedup_marks_into_chunks_a_restore_takes_back_whole() {
    use rapport::pipeline::MAX_CHUNK_MARKS;
    let p = Portfolio::new(GenSpec {
        accounts: 800,
        days: 60,
        seed: 5,
        usage_per_day: 4.0,
        ..GenSpec::default()
    });
    let mut lines = Vec::new();
    for ev in p.events() {
        if partition_for(&ev.account_id, PARTITIONS) == 0 {
            let mut l = Vec::new();
            rapport::codec::json::encode_event(&ev, &mut l);
            lines.push(l);
        }
        if lines.len() == MAX_CHUNK_MARKS * 2 + 100 {
            break;
        }
    }
    assert_eq!(lines.len(), MAX_CHUNK_MARKS * 2 + 100, "the portfolio is large enough");
    let recs: Vec<(u16, u64, &[u8])> = lines.iter().enumerate().map(|(o, l)| (0, o as u64, l.as_slice())).collect();
    let store = Arc::new(MemoryStore::new());
    let st: Arc<dyn Store> = store.clone();
    let mut pipe = Pipeline::open(config(), st).unwrap();
    pipe.enable_changelog(changelog()).unwrap();
    pipe.open_changelog(0);
    let sources: Vec<String> = (0..PARTITIONS).map(source_key).collect();
    let mut sink = GateSink::default();
    let report = pipe.process(&batch_of(&recs), &sources, None, &mut sink).unwrap();
    pipe.finish(&mut sink).unwrap();

    let log = published(&sink, 0);
    let chunks: Vec<usize> = log
        .iter()
        .filter(|r| r.key.starts_with("d:"))
        .map(|r| {
            use prost::Message;
            let c = rapport::pb::DedupChunk::decode(r.value.as_deref().unwrap()).unwrap();
            rapport::changelog::chunk_marks(&c).count()
        })
        .collect();
    assert!(chunks.len() >= 3, "marks in {} chunk(s): {chunks:?}", chunks.len());
    assert!(chunks.iter().all(|&n| n <= MAX_CHUNK_MARKS), "chunk sizes {chunks:?}");
    let keys: BTreeSet<&str> = log.iter().filter(|r| r.key.starts_with("d:")).map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), chunks.len(), "every chunk has a key of its own (compaction keeps them all)");
    let marks = store.dump(Cf::Dedup).len();
    assert_eq!(chunks.iter().sum::<usize>() as u64, report.folded, "one mark per folded event");
    assert_eq!(marks as u64, report.folded);

    let restored = Arc::new(MemoryStore::new());
    let st: Arc<dyn Store> = restored.clone();
    let mut pipe = Pipeline::open(config(), st).unwrap();
    pipe.enable_changelog(changelog_of([8; 16])).unwrap();
    pipe.begin_restore(0).unwrap();
    let mut buf = RestoreBuffer::default();
    for r in &log {
        if let Some(group) = buf.push(r.clone()) {
            pipe.apply_restored(0, &group).unwrap();
        }
    }
    pipe.end_restore(0).unwrap();
    assert_eq!(dump_partition(&restored, 0), dump_partition(&store, 0), "states, timers, dedup marks and positions");
}

/// A replaced producer's unacknowledged rows are sent again from the outbox
/// (`Pipeline::resend`): outputs and the changelog records of open partitions go straight to the
/// new sink, in order; a partition held since keeps its changelog records back in the gate, in
/// sequence order before its later ones, until it is opened again.
#[test]
fn rows_sent_again_after_a_producer_is_replaced_keep_a_held_partition_back() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut p = Pipeline::open(config(), store).unwrap();
    p.enable_changelog(changelog()).unwrap();
    for q in 0..PARTITIONS {
        p.open_changelog(q);
    }
    let sources: Vec<String> = (0..PARTITIONS).map(source_key).collect();
    let recs = with_offsets();
    let mut old = GateSink::default();
    // Batch 1: its outputs delivered, so its changelog records go out; none acknowledged.
    p.process(&batch_of(&recs[..400]), &sources, None, &mut old).unwrap();
    old.in_flight.clear();
    old.outputs_in_flight.clear();
    p.settle(&mut old).unwrap();
    // Batch 2: its outputs sent, not acknowledged; its changelog records wait in the gate.
    p.process(&batch_of(&recs[400..800]), &sources, None, &mut old).unwrap();
    let gated_before = p.changelog_pending();
    assert!(gated_before > 0, "batch 2's changelog records wait for its outputs");
    let unacked: Vec<u64> = old.in_flight.iter().copied().collect();
    let row = |seq: u64| old.sent.iter().rev().find(|(s, _)| *s == seq).map(|(_, r)| r.clone()).unwrap();
    let is_held_changelog =
        |r: &OutboxRecord| r.kind == OutputKind::Changelog as u32 && r.partition == 0;
    let held_rows = unacked.iter().filter(|s| is_held_changelog(&row(**s))).count();
    assert!(held_rows > 0, "partition 0 had changelog records in flight");

    p.hold_changelog(0);
    let mut fresh = GateSink::default();
    let sent = p.resend(&mut fresh, &unacked).unwrap();
    let want: Vec<(u64, OutboxRecord)> = unacked
        .iter()
        .map(|&s| (s, row(s)))
        .filter(|(_, r)| !is_held_changelog(r))
        .collect();
    assert_eq!(sent, want.len());
    assert_eq!(fresh.sent, want, "the rows sent again, in order, as they were sent the first time");
    assert_eq!(p.changelog_pending(), gated_before + held_rows, "the held partition's rows are back in the gate");

    // Opened again, the partition's rows go out in sequence order, the older ones first.
    p.open_changelog(0);
    p.finish(&mut fresh).unwrap();
    let p0: Vec<u64> = fresh
        .sent
        .iter()
        .filter(|(_, r)| is_held_changelog(r))
        .map(|(s, _)| *s)
        .collect();
    assert!(p0.len() >= held_rows, "partition 0's rows published once it opened");
    assert!(p0.windows(2).all(|w| w[0] < w[1]), "partition 0's rows out of order: {p0:?}");
    assert!(fresh.violations.is_empty(), "{:?}", fresh.violations);
    assert_eq!(p.changelog_pending(), 0);
}
