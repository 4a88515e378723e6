//! Model tests of the engine and the batch loop on generated event sequences:
//! - the same records in any batching give the same state and the same outputs;
//! - a run that crashes after any batch (before or after its outputs reach the sink) and
//!   resumes from the store equals an uninterrupted run: same state, every output present,
//!   repeats only with the same ids;
//! - a replay from scratch equals the live state.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use rapport::config::Config;
use rapport::generate::{GenSpec, Portfolio, malformed_records};
use rapport::pb::OutboxRecord;
use rapport::pipeline::Pipeline;
use rapport::sink::{Sink, SinkError};
use rapport::source::{InputBatch, RecordMeta};
use rapport::store::{Cf, MemoryStore, Store};

/// The input log: NDJSON lines of a small generated portfolio with malformed records mixed in.
fn log() -> &'static Vec<Vec<u8>> {
    static LOG: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let p = Portfolio::new(GenSpec {
            accounts: 40,
            days: 75,
            seed: 7,
            usage_per_day: 3.0,
            duplicate_rate: 0.01,
            ..GenSpec::default()
        });
        let bad = malformed_records(3);
        let mut lines = Vec::new();
        for (i, ev) in p.events().enumerate() {
            let mut l = Vec::new();
            rapport::codec::json::encode_event(&ev, &mut l);
            lines.push(l);
            if i % 97 == 0 {
                lines.push(bad[(i / 97) % bad.len()].1.clone());
            }
        }
        lines
    })
}

fn config() -> Arc<Config> {
    let mut c = Config::defaults();
    c.engine.partitions = 4;
    // Peer-relative levels on, with every segment big enough: the properties cover them too.
    c.scorecard.peers.components = vec!["usage_frequency".into(), "adoption".into(), "recency".into()];
    c.scorecard.peers.min_peers = 1;
    Arc::new(c)
}

/// A sink that keeps what it was sent; it can be told to fail, like a process dying mid-publish.
#[derive(Default)]
struct VecSink {
    got: Vec<OutboxRecord>,
    sent_through: u64,
    fail_sends: bool,
}

impl Sink for VecSink {
    fn send(&mut self, seq: u64, rec: &OutboxRecord) -> Result<(), SinkError> {
        if self.fail_sends {
            return Err(SinkError::Other("simulated crash".into()));
        }
        self.got.push(rec.clone());
        self.sent_through = seq + 1;
        Ok(())
    }
    fn confirmed(&mut self, _wait: bool) -> Result<u64, SinkError> {
        if self.fail_sends {
            return Err(SinkError::Other("simulated crash".into()));
        }
        Ok(self.sent_through)
    }
}

const SOURCE: &str = "file:model";

fn batch_of(lines: &[Vec<u8>], from: usize, to: usize) -> InputBatch {
    let mut b = InputBatch::default();
    for (i, l) in lines.iter().enumerate().take(to).skip(from) {
        let start = b.buf.len();
        b.buf.extend_from_slice(l);
        b.records.push(RecordMeta {
            source: 0,
            offset: i as u64,
            next: i as u64 + 1,
            start,
            end: b.buf.len(),
            partition: None,
            oversized: None,
        });
    }
    b
}

/// Runs `lines` from the store's stored position through a pipeline in batches of the given
/// sizes (cycled). Stops after `stop_after` batches when given; `fail_last` makes the last of
/// those batches fail while publishing, after its commit.
fn run(
    store: &Arc<MemoryStore>,
    sink: &mut VecSink,
    sizes: &[usize],
    stop_after: Option<usize>,
    fail_last: bool,
) -> bool {
    let lines = log();
    let cfg = config();
    let st: Arc<dyn Store> = store.clone();
    let mut p = Pipeline::open(cfg, st).unwrap();
    sink.fail_sends = false;
    p.drain_outbox(sink).unwrap();
    let mut pos = p.positions().get(SOURCE).copied().unwrap_or(0) as usize;
    let sources = vec![SOURCE.to_owned()];
    let mut n = 0;
    while pos < lines.len() {
        let size = sizes[n % sizes.len()].max(1);
        let to = (pos + size).min(lines.len());
        let last = stop_after.is_some_and(|s| n + 1 == s);
        sink.fail_sends = last && fail_last;
        let r = p.process(&batch_of(lines, pos, to), &sources, None, sink);
        if sink.fail_sends {
            assert!(r.is_err());
            return false;
        }
        r.unwrap();
        pos = to;
        n += 1;
        if last {
            return false;
        }
    }
    p.finish(sink).unwrap();
    true
}

type Dump = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;

fn dump(store: &MemoryStore) -> Dump {
    [
        Cf::State,
        Cf::Dedup,
        Cf::Timers,
        Cf::Offsets,
        Cf::Meta,
        Cf::Outbox,
    ]
    .iter()
    .map(|cf| store.dump(*cf))
    .collect()
}

fn baseline() -> &'static (Dump, Vec<OutboxRecord>) {
    static B: OnceLock<(Dump, Vec<OutboxRecord>)> = OnceLock::new();
    B.get_or_init(|| {
        let store = Arc::new(MemoryStore::new());
        let mut sink = VecSink::default();
        assert!(run(&store, &mut sink, &[512], None, false));
        (dump(&store), sink.got)
    })
}

/// An output's identity: change_id / alert_id+status for scores and alerts, source offset for
/// dead letters.
fn identity(r: &OutboxRecord) -> String {
    if r.kind == 2 {
        return format!("dlq:{}", String::from_utf8_lossy(&r.headers["offset"]));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    match v["type"].as_str().unwrap() {
        "health_score_changed" => format!("score:{}", v["change_id"]),
        _ => format!("alert:{}:{}", v["alert_id"], v["status"]),
    }
}

#[test]
fn the_log_exercises_the_engine() {
    let (_, outputs) = baseline();
    let ids: Vec<String> = outputs.iter().map(identity).collect();
    assert!(
        ids.iter().any(|i| i.starts_with("dlq:")),
        "dead letters present"
    );
    assert!(
        ids.iter().filter(|i| i.starts_with("alert:")).count() >= 5,
        "alerts present: {ids:?}"
    );
    assert!(ids.iter().filter(|i| i.starts_with("score:")).count() >= 40);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "an uninterrupted run emits each output once"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn any_batching_gives_the_same_state_and_outputs(sizes in prop::collection::vec(1usize..400, 1..6)) {
        let (want_state, want_out) = baseline();
        let store = Arc::new(MemoryStore::new());
        let mut sink = VecSink::default();
        prop_assert!(run(&store, &mut sink, &sizes, None, false));
        prop_assert!(&dump(&store) == want_state, "state differs for batch sizes {:?}", sizes);
        prop_assert!(&sink.got == want_out, "outputs differ for batch sizes {:?}", sizes);
    }

    #[test]
    fn a_crash_after_any_batch_then_resume_equals_an_uninterrupted_run(
        sizes in prop::collection::vec(1usize..300, 1..4),
        crashes in prop::collection::vec((1usize..25, any::<bool>()), 1..4),
    ) {
        let (want_state, want_out) = baseline();
        let store = Arc::new(MemoryStore::new());
        let mut sink = VecSink::default();
        for (after, mid_publish) in &crashes {
            if run(&store, &mut sink, &sizes, Some(*after), *mid_publish) {
                break;
            }
        }
        run(&store, &mut sink, &sizes, None, false);
        prop_assert!(&dump(&store) == want_state, "state differs after crashes {:?}", crashes);
        // Every output is there; repeats carry the same ids; nothing new appears.
        let want: Vec<String> = want_out.iter().map(identity).collect();
        let mut seen = HashSet::new();
        let got: Vec<String> = sink.got.iter().map(identity).filter(|i| seen.insert(i.clone())).collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn replay_from_scratch_equals_the_live_state() {
    let (live, _) = baseline();
    // A live run that processed the log in small batches, then a rebuild from the log alone.
    let store = Arc::new(MemoryStore::new());
    let mut sink = VecSink::default();
    run(&store, &mut sink, &[7, 130, 41], None, false);
    let rebuilt = Arc::new(MemoryStore::new());
    run(&rebuilt, &mut VecSink::default(), &[4096], None, false);
    assert!(dump(&store) == dump(&rebuilt));
    assert!(&dump(&rebuilt) == live);
}

#[test]
fn every_record_is_accounted_for() {
    let store = Arc::new(MemoryStore::new());
    let mut sink = VecSink::default();
    run(&store, &mut sink, &[333], None, false);
    let st: Arc<dyn Store> = store.clone();
    let p = Pipeline::open(config(), st).unwrap();
    let c = p.counters();
    assert_eq!(c.records_in, log().len() as u64);
    assert_eq!(c.folded + c.duplicates + c.dead_lettered, c.records_in);
    assert!(c.duplicates > 0 && c.dead_lettered > 0);
    assert_eq!(c.band_green + c.band_yellow + c.band_red, c.accounts);
}
