//! Crash recovery through the real binary: a `rapport run` child is killed with SIGKILL at several
//! points of a large input, restarted on the same data and output directories each time, and run
//! to completion. The result must equal an uninterrupted run of the same input:
//! - the `state` column family byte for byte (and the timers, input positions and partition
//!   clocks), and the persisted record accounting;
//! - every output of the uninterrupted run delivered, and nothing else: repeats only with the same
//!   identity (health scores by `change_id`, alerts by (`alert_id`, `status`), dead letters by
//!   (`source`, `offset`)) and the same bytes;
//! - every output file ending in a complete JSON line.
//!
//! Kills are placed by condition, not by time: the child is killed once its `health_scores.ndjson`
//! has grown past a threshold, a different one for each kill. The thresholds are random points of
//! the uninterrupted run's output, drawn from a seed that the test prints, so a failure can be
//! replayed: 20 kills over 3,000 accounts (about 1.2 million events) by default; other seeds,
//! counts and sizes with `RAPPORT_CHAOS_SEED=… RAPPORT_CHAOS_KILLS=… RAPPORT_CHAOS_ACCOUNTS=…
//! cargo test --release --test crash -- --nocapture` (it prints the RELIABILITY.md row).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use rand::{Rng, SeedableRng};
use rapport::config::Config;
use rapport::pb::Counters;
use rapport::store::keys::COUNTERS_KEY;
use rapport::store::{Cf, RocksStore, Store};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rapport");
const OUTPUTS: [&str; 3] = ["health_scores.ndjson", "churn_alerts.ndjson", "dlq.ndjson"];

struct Job {
    config: PathBuf,
    input: PathBuf,
    dir: PathBuf,
}

impl Job {
    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts `rapport run`; its stdout and stderr go to `<dir>/<tag>.stdout|stderr`.
    fn spawn(&self, tag: &str) -> Child {
        std::fs::create_dir_all(&self.dir).unwrap();
        Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--input")
            .arg(&self.input)
            .arg("--output")
            .arg(self.out())
            .arg("--data-dir")
            .arg(self.data())
            .arg("--quiet")
            .stdin(Stdio::null())
            .stdout(File::create(self.dir.join(format!("{tag}.stdout"))).unwrap())
            .stderr(File::create(self.dir.join(format!("{tag}.stderr"))).unwrap())
            .spawn()
            .expect("start rapport run")
    }

    fn log(&self, tag: &str, stream: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{tag}.{stream}"))).unwrap_or_default()
    }

    /// Runs to completion; returns its stdout.
    fn run_to_end(&self, tag: &str) -> String {
        let status = self.spawn(tag).wait().unwrap();
        let stderr = self.log(tag, "stderr");
        assert!(
            status.success(),
            "{tag}: rapport run failed ({status}):\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{tag}:\n{stderr}");
        let stdout = self.log(tag, "stdout");
        let accounting = stdout
            .lines()
            .find(|l| l.starts_with("Accounting: "))
            .unwrap_or_default();
        assert!(
            accounting.ends_with('✓'),
            "{tag}: summary without a balanced accounting line:\n{stdout}"
        );
        stdout
    }
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Starts a child and SIGKILLs it as soon as its health_scores.ndjson is larger than `threshold`
/// bytes. Fails if the child ends by itself first, or if the file stops growing for 90 s.
/// Also returns how long the restarted child took to add its first output (its recovery time).
fn kill_past(job: &Job, tag: &str, threshold: u64) -> (u64, Option<Duration>) {
    let scores = job.out().join(OUTPUTS[0]);
    let before = size(&scores);
    let started = Instant::now();
    let mut recovered = None;
    let mut child = job.spawn(tag);
    // A deadline for progress, not for the whole way to the threshold: one child may have to
    // write most of the output, which takes longer on a slower machine.
    const STALL: Duration = Duration::from_secs(90);
    let mut deadline = Instant::now() + STALL;
    let mut last = before;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{tag}: the child ended ({status}) before health_scores.ndjson passed {threshold} bytes (it has {}):\n{}",
                size(&scores),
                job.log(tag, "stderr")
            );
        }
        let now = size(&scores);
        if now > before && recovered.is_none() {
            recovered = Some(started.elapsed());
        }
        if now != last {
            last = now;
            deadline = Instant::now() + STALL;
        }
        if now > threshold {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let stderr = job.log(tag, "stderr");
            assert!(!stderr.contains("panicked"), "{tag}:\n{stderr}");
            return (now, recovered);
        }
        assert!(
            Instant::now() < deadline,
            "{tag}: health_scores.ndjson stuck at {now} bytes for {STALL:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An output line's identity, as a subscriber deduplicates it.
fn identity(file: &str, v: &Value) -> String {
    match file {
        "health_scores.ndjson" => format!("score {}", v["change_id"].as_str().expect("change_id")),
        "churn_alerts.ndjson" => format!(
            "alert {} {}",
            v["alert_id"].as_str().expect("alert_id"),
            v["status"].as_str().expect("status")
        ),
        _ => format!(
            "dead letter {} @{}",
            v["source"].as_str().expect("source"),
            v["offset"].as_u64().expect("offset")
        ),
    }
}

/// Each output file's lines, checked to be complete JSON lines, as (identity, line) in order.
fn outputs(job: &Job) -> BTreeMap<&'static str, Vec<(String, Vec<u8>)>> {
    let mut all = BTreeMap::new();
    for file in OUTPUTS {
        let path = job.out().join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.is_empty() || bytes.ends_with(b"\n"),
            "{} does not end in a complete line: …{:?}",
            path.display(),
            String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(80)..])
        );
        let lines = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: Value = serde_json::from_slice(l).unwrap_or_else(|e| {
                    panic!(
                        "{}: not a JSON line ({e}): {}",
                        path.display(),
                        String::from_utf8_lossy(l)
                    )
                });
                (identity(file, &v), l.to_vec())
            })
            .collect();
        all.insert(file, lines);
    }
    all
}

type Cfs = BTreeMap<&'static str, Vec<(Vec<u8>, Vec<u8>)>>;

/// What must survive a crash exactly: the column families that hold state, and the counters.
fn durable(job: &Job, cfg: &Config) -> (Cfs, Counters, usize) {
    let store = RocksStore::open_at(&job.data(), &cfg.store).unwrap();
    let scan = |cf: Cf| {
        let mut rows = Vec::new();
        store
            .scan(cf, &[], &mut |k, v| {
                rows.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        rows
    };
    let mut cfs = Cfs::new();
    cfs.insert("state", scan(Cf::State));
    cfs.insert("timers", scan(Cf::Timers));
    cfs.insert("offsets", scan(Cf::Offsets));
    // Partition clocks (the counters are compared on their own, below).
    let meta = scan(Cf::Meta)
        .into_iter()
        .filter(|(k, _)| k.starts_with(b"clock/"))
        .collect();
    cfs.insert("meta clocks", meta);
    let counters = Counters::decode(
        store
            .get(Cf::Meta, COUNTERS_KEY)
            .unwrap()
            .expect("counters stored")
            .as_slice(),
    )
    .unwrap();
    let outbox = scan(Cf::Outbox).len();
    (cfs, counters, outbox)
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
        .unwrap_or(default)
}

#[test]
fn killed_and_restarted_runs_equal_an_uninterrupted_run() {
    let kills = env_or("RAPPORT_CHAOS_KILLS", 20).max(1) as usize;
    let accounts = env_or("RAPPORT_CHAOS_ACCOUNTS", 3000);
    let seed = env_or("RAPPORT_CHAOS_SEED", 20261201);
    eprintln!("chaos: RAPPORT_CHAOS_SEED={seed} RAPPORT_CHAOS_KILLS={kills} RAPPORT_CHAOS_ACCOUNTS={accounts}");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("rapport.toml");
    std::fs::write(&config, "[telemetry]\nlisten = \"\"\n").unwrap();
    let cfg = Config::load(Some(&config)).unwrap();

    // The input: a generated portfolio with malformed records mixed in.
    let input = tmp.path().join("events.ndjson");
    let generated = Command::new(BIN)
        .args([
            "generate",
            "--accounts",
            &accounts.to_string(),
            "--days",
            "90",
            "--seed",
            "20261120",
            "--bad-every",
            "5000",
            "--out",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let said = String::from_utf8_lossy(&generated.stdout);
    let nums: Vec<u64> = said
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (events, malformed) = (nums[0], nums[1]);
    assert!(events >= 300_000, "{said}");
    assert!(malformed > 0, "{said}");

    // The uninterrupted run.
    let reference = Job {
        config: config.clone(),
        input: input.clone(),
        dir: tmp.path().join("reference"),
    };
    reference.run_to_end("run");
    let final_size = size(&reference.out().join(OUTPUTS[0]));
    assert!(
        final_size > 1_000_000,
        "health_scores.ndjson is only {final_size} bytes"
    );

    // The crashed run: killed once its first scores are out, then at random points (from the
    // seed) of the uninterrupted run's score output; restarted on the same directories each
    // time. A point the output has already passed (repeats after a restart make it grow faster)
    // moves to the next byte, so every restart is killed after it wrote something.
    let crashed = Job {
        config: config.clone(),
        input: input.clone(),
        dir: tmp.path().join("crashed"),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut thresholds: Vec<u64> = (1..kills)
        .map(|_| rng.random_range(final_size / 100..final_size * 95 / 100))
        .collect();
    thresholds.push(0);
    thresholds.sort_unstable();
    let mut at = Vec::new();
    let mut recovery = Vec::new();
    for (i, &t) in thresholds.iter().enumerate() {
        let t = t.max(size(&crashed.out().join(OUTPUTS[0])));
        let (bytes, took) = kill_past(&crashed, &format!("kill-{i}"), t);
        at.push(bytes);
        // The first start has nothing to recover from.
        if i > 0 {
            recovery.extend(took);
        }
    }
    let last = crashed.run_to_end("final");
    eprintln!("killed with health_scores.ndjson at {at:?} bytes of {final_size}");
    recovery.sort();
    let ms = |d: Option<&Duration>| d.map_or(0, |d| d.as_millis());
    assert!(last.contains("Accounting: "), "{last}");

    // (a) The same state, timers, positions and clocks; (b) the same counters.
    let (want_cfs, want_counters, want_outbox) = durable(&reference, &cfg);
    let (got_cfs, got_counters, got_outbox) = durable(&crashed, &cfg);
    assert_eq!(
        want_counters.records_in,
        events + malformed,
        "the uninterrupted run read every line"
    );
    assert_eq!(
        want_counters.folded + want_counters.duplicates + want_counters.dead_lettered,
        want_counters.records_in
    );
    assert_eq!(want_counters.dead_lettered, malformed);
    assert!(
        want_cfs["state"].len() >= 3000,
        "{} account states",
        want_cfs["state"].len()
    );
    for (cf, want) in &want_cfs {
        let got = &got_cfs[cf];
        if got != want {
            let first = want
                .iter()
                .zip(got)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(got.len()));
            let key = |rows: &Vec<(Vec<u8>, Vec<u8>)>| {
                rows.get(first)
                    .map(|r| String::from_utf8_lossy(&r.0).into_owned())
            };
            panic!(
                "the {cf} column family differs after the crashes: {} rows vs {} uninterrupted; first difference at row {first} (key {:?}, uninterrupted {:?})",
                got.len(),
                want.len(),
                key(got),
                key(want)
            );
        }
    }
    assert_eq!(
        got_counters, want_counters,
        "persisted counters (left: crashed, right: uninterrupted)"
    );
    assert_eq!(
        (want_outbox, got_outbox),
        (0, 0),
        "outbox rows left after a completed run"
    );

    // (c) Every output delivered; repeats only of the same output, byte for byte.
    let want = outputs(&reference);
    let got = outputs(&crashed);
    let mut repeats = 0;
    for file in OUTPUTS {
        let mut by_id: HashMap<&str, &[u8]> = HashMap::new();
        for (id, line) in &want[file] {
            assert!(
                by_id.insert(id, line).is_none(),
                "{file}: the uninterrupted run emitted {id} twice"
            );
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (id, line) in &got[file] {
            match by_id.get(id.as_str()) {
                None => panic!(
                    "{file}: the crashed run emitted {id}, which the uninterrupted run did not"
                ),
                Some(w) => assert!(
                    *w == line.as_slice(),
                    "{file}: {id} differs between the runs:\n  crashed:       {}\n  uninterrupted: {}",
                    String::from_utf8_lossy(line),
                    String::from_utf8_lossy(w)
                ),
            }
            *seen.entry(id).or_default() += 1;
        }
        let missing: Vec<&String> = want[file]
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !seen.contains_key(id.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{file}: {} outputs of the uninterrupted run never reached the crashed run's output, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        repeats += seen.values().map(|n| n - 1).sum::<usize>();
    }
    eprintln!(
        "{} outputs, {repeats} delivered again after a crash",
        want.values().map(Vec::len).sum::<usize>()
    );
    // The line RELIABILITY.md's table is filled from.
    eprintln!(
        "RELIABILITY kill-9 embedded: seed {seed}, {} kills, {} events + {} malformed, lost 0, repeated outputs (same id) {repeats}, state mismatches 0, recovery to first output median {} ms, max {} ms",
        at.len(),
        events,
        malformed,
        ms(recovery.get(recovery.len() / 2)),
        ms(recovery.last())
    );
}
