//! The commands, wired from the parts: `run`, `demo`, `generate`, `inspect`, `replay`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::config::Config;
use crate::domain::alert::Rule;
use crate::domain::score::{self, Band};
use crate::domain::state;
use crate::pb::{AccountState, Counters};
use crate::pipeline::{Pipeline, WallClock};
use crate::sink::file::FileSink;
use crate::source::file::FileSource;
use crate::source::{InputBatch, Poll, Source};
use crate::store::keys::{parse_state_key, partition_for, state_key};
use crate::store::{Cf, RocksStore, Store};
use crate::telemetry::http::Health;
use crate::telemetry::{self, BatchCommitted};

/// Asks the loop to stop: set by SIGINT/SIGTERM, by a test, or after a number of records (for
/// benchmarks).
#[derive(Clone)]
pub struct Shutdown(Arc<AtomicBool>, Arc<std::sync::atomic::AtomicU64>);

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown(Arc::default(), Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)))
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }
    /// Stops the run once it has read `n` records.
    pub fn after_records(n: u64) -> Shutdown {
        let s = Shutdown::default();
        s.1.store(n, Ordering::SeqCst);
        s
    }
    /// Called by the loop with the records read so far.
    pub fn note_records(&self, n: u64) {
        if n >= self.1.load(Ordering::Relaxed) {
            self.trigger();
        }
    }
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Triggers on SIGINT or SIGTERM.
    pub fn on_signals(&self) {
        let me = self.clone();
        std::thread::Builder::new()
            .name("rapport-signals".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                });
                info!("Shutdown requested: finishing the batch in flight and flushing outputs.");
                me.trigger();
            })
            .expect("signal thread");
    }
}

pub fn wall_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How a run went.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    /// This run's record accounting.
    pub records: u64,
    pub folded: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub rejected_by_reason: HashMap<&'static str, u64>,
    pub scores: u64,
    pub alerts: HashMap<(&'static str, &'static str), u64>,
    pub seconds: f64,
    /// Outputs re-published from an earlier, interrupted run.
    pub republished: u64,
    /// The store's cumulative accounting (all runs).
    pub totals: Counters,
    pub stopped_by_signal: bool,
}

impl RunSummary {
    /// Adds one batch's accounting.
    pub fn add(&mut self, report: &crate::pipeline::BatchReport) {
        self.records += report.records;
        self.folded += report.folded;
        self.duplicates += report.duplicates;
        self.dead_lettered += report.dead_lettered;
        self.scores += report.scores;
        for (r, n) in &report.rejected_by_reason {
            *self.rejected_by_reason.entry(r.code()).or_default() += n;
        }
        for (k, n) in &report.alerts {
            *self.alerts.entry(*k).or_default() += n;
        }
    }

    pub fn events_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.records as f64 / self.seconds
        } else {
            0.0
        }
    }
}

pub struct RunOptions {
    pub progress: bool,
    pub shutdown: Shutdown,
    pub health: Option<Arc<Health>>,
}

/// Runs the embedded job: NDJSON in, RocksDB state, NDJSON out. A finite input ends the run once
/// everything is committed and flushed.
pub fn run_embedded(cfg: Arc<Config>, opts: &RunOptions) -> Result<RunSummary> {
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(&cfg.store)?);
    let mut pipeline = Pipeline::open(Arc::clone(&cfg), Arc::clone(&store))?;
    let mut source = FileSource::open(
        &cfg.embedded.input,
        cfg.embedded.follow,
        cfg.engine.max_record_bytes,
    )?;
    // A line of an NDJSON file is JSON or nothing; a .pb file's records are protobuf (or JSON).
    pipeline.set_json_only(!source.reads_protobuf());
    source.resume(pipeline.positions())?;
    let mut sink = FileSink::open(&cfg.embedded.output_dir)?;
    let mut summary = RunSummary {
        republished: pipeline.drain_outbox(&mut sink)?,
        ..Default::default()
    };
    let sources = source.sources().to_vec();

    let bar = if opts.progress {
        let b = match source.progress() {
            Some((done, total)) => {
                let b = ProgressBar::new(total);
                b.set_position(done);
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{bar:40}] {bytes}/{total_bytes} {msg} (eta {eta})",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                b
            }
            None => ProgressBar::new_spinner(),
        };
        Some(b)
    } else {
        None
    };

    let start = Instant::now();
    let all_partitions: Vec<u16> = (0..cfg.engine.partitions).collect();
    let mut batch = InputBatch::default();
    let mut last_mem = Instant::now() - Duration::from_secs(60);
    let wait = Duration::from_millis(cfg.pipeline.batch_max_ms);
    let mut disk = crate::store::disk::DiskGuard::new(&cfg.store.data_dir, cfg.store.min_free_mb);
    loop {
        if opts.shutdown.is_triggered() {
            summary.stopped_by_signal = true;
            break;
        }
        if !disk.has_room() {
            // Nothing is read while the disk is nearly full; not ready meanwhile.
            if let Some(h) = &opts.health {
                h.set_ready(Some(DISK_LOW.into()));
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        batch.clear();
        let poll = source.poll(cfg.pipeline.batch_max_records, wait, &mut batch)?;
        if poll == Poll::End {
            break;
        }
        if let Some(h) = &opts.health {
            h.set_ready((poll != Poll::Idle).then(|| "catching up with the input".to_owned()));
        }
        let now = wall_now_ms();
        let wall = WallClock {
            now_ms: now,
            partitions: &all_partitions,
        };
        let report = pipeline.process(&batch, &sources, Some(wall), &mut sink)?;
        summary.add(&report);
        opts.shutdown.note_records(summary.records);
        BatchCommitted {
            report: &report,
            counters: pipeline.counters(),
            outbox_depth: pipeline.outbox_depth(),
            timers_scheduled: pipeline.timer_count(),
            stream_time_ms: pipeline.stream_time(),
            wall_now_ms: now,
        }
        .emit();
        if last_mem.elapsed() > Duration::from_secs(5) {
            telemetry::record_store_memory(&store.memory_bytes());
            telemetry::record_write_pressure(&store.write_pressure());
            last_mem = Instant::now();
        }
        if let Some(b) = &bar {
            if let Some((done, _)) = source.progress() {
                b.set_position(done);
            }
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            b.set_message(format!("{:.0} events/s", summary.records as f64 / secs));
        }
    }
    pipeline.finish(&mut sink)?;
    store.flush()?;
    if let Some(h) = &opts.health {
        h.set_ready(None);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    summary.seconds = start.elapsed().as_secs_f64();
    summary.totals = pipeline.counters().clone();
    Ok(summary)
}

/// The pipeline and its sink, shared with the revoke hook (which runs inside the consumer's
/// poll, on this same thread, while the loop holds neither).
struct Engine {
    pipeline: Pipeline,
    sink: crate::sink::kafka::KafkaSink,
}

/// How long the changelog records of a partition whose assignment was lost wait for it to come
/// back (published if its changelog is untouched since) before they are dropped.
/// Why input is not read while the store's filesystem is nearly full (`/readyz`).
const DISK_LOW: &str = "the store's filesystem is below store.min_free_mb: input paused";

const HELD_GRACE: Duration = Duration::from_secs(60);

/// A partition's way from "given by the group" to "being read".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartitionPhase {
    /// To check against its changelog (again, if the broker did not answer the first time).
    ToCheck,
    /// Reading the changelog's last record: who wrote it?
    Checking,
    /// Local state dropped; the changelog read is to start (again).
    ToRestore { reason: &'static str },
    /// Ready to be read, waiting for consumption to resume (backpressure): a partition is never
    /// assigned paused, which librdkafka can answer by forgetting its start offset.
    ToActivate,
    /// Reading the changelog into the store.
    Restoring { total: u64, started_ms: i64 },
}

/// Runs the job against Kafka: the consumer group decides which account partitions are ours,
/// each is checked against its changelog (restored from it when our local state is missing or
/// older) and then read, with RocksDB state and outputs through the outbox to an idempotent
/// producer. Runs until SIGINT/SIGTERM, then finishes the batch in flight, waits for the broker
/// to acknowledge every output and changelog record, leaves the group and exits.
pub fn run_kafka(cfg: Arc<Config>, opts: &RunOptions) -> Result<RunSummary> {
    use crate::changelog::Changelog;
    use crate::config::TimerClock;
    use crate::sink::kafka::KafkaSink;
    use crate::source::changelog::{ChangelogReader, Found};
    use crate::source::kafka::KafkaSource;
    use std::collections::BTreeMap;

    crate::topics::check(&cfg)?;
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(&cfg.store)?);
    let mut pipeline = Pipeline::open(Arc::clone(&cfg), Arc::clone(&store))?;
    if cfg.kafka.output_format == "protobuf" {
        pipeline.set_output_format(crate::codec::output::OutputFormat::Protobuf);
    }
    let mut topics: Vec<&str> = cfg.kafka.input_topics.all().to_vec();
    topics.push(&cfg.kafka.changelog_topic);
    pipeline.check_topics(&topics, &cfg.store.data_dir)?;
    let mut source = KafkaSource::new(&cfg)?;
    let store_id = pipeline.store_id()?;
    pipeline.enable_changelog(Changelog {
        writer: store_id,
        sources_of: (0..cfg.engine.partitions).map(|p| source.keys_of(p)).collect(),
        writers: Vec::new(),
    })?;
    let mut sink = KafkaSink::new(&cfg)?;
    let mut summary = RunSummary {
        republished: pipeline.drain_outbox(&mut sink)?,
        ..Default::default()
    };
    if summary.republished > 0 {
        info!(
            records = summary.republished,
            "Outputs left unacknowledged by the last run were published again (changelog records wait until their partitions are ours)."
        );
    }
    let engine = Arc::new(std::sync::Mutex::new(Engine { pipeline, sink }));
    let hook_engine = Arc::clone(&engine);
    source.set_revoke_hook(Box::new(move |parts: &[u16], lost: bool| {
        let mut e = hook_engine.lock().unwrap();
        let Engine { pipeline, sink } = &mut *e;
        if lost {
            // Another instance may own them already and be writing their changelog: publish
            // nothing of theirs now. Their records wait; if they come back with their changelog
            // untouched, the records go out, otherwise they are dropped (see the loop).
            for p in parts {
                pipeline.hold_changelog(*p);
            }
            return;
        }
        // Hand the partitions over complete: their outputs delivered, their changelog written.
        if let Err(err) = pipeline.finish(sink) {
            tracing::warn!(error = %err, "Could not publish everything before giving partitions up; their new owner reads again from the last checkpoint.");
        }
        for p in parts {
            if let Err(err) = pipeline.close_changelog(*p) {
                tracing::error!(partition = p, error = %err, "Could not mark the partition's changelog as behind.");
            }
        }
    }));
    let mut reader = ChangelogReader::new(&cfg)?;
    source.resume(&HashMap::new())?;
    let sources = source.sources().to_vec();
    let ownership = source.ownership();
    let mut phases: BTreeMap<u16, PartitionPhase> = BTreeMap::new();
    let mut startup_settled = false;
    // When each partition the group took away went; see HELD_GRACE.
    let mut gone_since: HashMap<u16, Instant> = HashMap::new();
    let mut found = Vec::new();

    let start = Instant::now();
    let mut batch = InputBatch::default();
    let wait = Duration::from_millis(cfg.pipeline.batch_max_ms);
    let mut last_idle_commit = Instant::now();
    let mut last_mem = Instant::now() - Duration::from_secs(60);
    let mut last_restore_log = Instant::now();
    let mut last_broker_warning = Instant::now() - Duration::from_secs(60);
    // Since when every check or restore the changelog reader tried has failed.
    let mut reader_failing_since: Option<Instant> = None;
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    let input_topics: Vec<String> =
        cfg.kafka.input_topics.all().iter().map(|t| t.to_string()).collect();
    let mut disk = crate::store::disk::DiskGuard::new(&cfg.store.data_dir, cfg.store.min_free_mb);
    loop {
        if opts.shutdown.is_triggered() {
            summary.stopped_by_signal = true;
            break;
        }
        // Backpressure: stop reading while the broker is not taking our outputs, or while the
        // store's disk is nearly full.
        let depth = engine.lock().unwrap().pipeline.outbox_depth();
        if depth >= cfg.kafka.outbox_high_water || !disk.has_room() {
            source.set_paused(true);
        } else if depth <= cfg.kafka.outbox_low_water {
            source.set_paused(false);
        }
        batch.clear();
        // While restoring, poll briefly so that restores and active partitions share the loop.
        let poll_wait = if reader.is_idle() { wait } else { Duration::from_millis(5) };
        source.poll(cfg.pipeline.batch_max_records, poll_wait, &mut batch)?;

        // What the group did during the poll.
        let (assigned, revoked, joined, group) = {
            let mut own = ownership.lock().unwrap();
            (
                std::mem::take(&mut own.assigned),
                std::mem::take(&mut own.revoked),
                own.joined,
                own.group.clone(),
            )
        };
        {
            let mut e = engine.lock().unwrap();
            for p in &revoked {
                crate::telemetry::kafka_stats::clear_lag(&input_topics, *p);
                reader.cancel(*p);
                if phases.remove(p).is_some() {
                    info!(partition = p, "Partition revoked before it was ready; its restore is abandoned.");
                }
                // Changelog records still held (a lost assignment) wait a while for the
                // partition to come back before they are given up.
                gone_since.insert(*p, Instant::now());
            }
            gone_since.retain(|p, _| !group.contains(p));
            let expired: Vec<u16> = gone_since
                .iter()
                .filter(|(_, t)| t.elapsed() >= HELD_GRACE)
                .map(|(p, _)| *p)
                .collect();
            for p in expired {
                gone_since.remove(&p);
                e.pipeline.close_changelog(p)?;
            }
            if joined && !startup_settled {
                // Changelog records an earlier run left for partitions that are not ours now
                // are dropped; those partitions are restored if they come back.
                for p in 0..cfg.engine.partitions {
                    if !group.contains(&p) {
                        e.pipeline.close_changelog(p)?;
                    }
                }
                startup_settled = true;
            }
        }
        for p in assigned {
            phases.insert(p, PartitionPhase::ToCheck);
        }
        // Checks and restores that need the broker now; a broker that does not answer leaves
        // them for the next turn of the loop (the partition stays unread meanwhile).
        for (p, phase) in phases.iter_mut() {
            match *phase {
                PartitionPhase::ToCheck => match reader.check_tail(*p) {
                    Ok(()) => {
                        reader_failing_since = None;
                        *phase = PartitionPhase::Checking;
                    }
                    Err(e) => {
                        reader_failing_since.get_or_insert_with(Instant::now);
                        broker_trouble(&mut last_broker_warning, *p, &e);
                    }
                },
                PartitionPhase::ToRestore { reason } => match reader.restore(*p) {
                    Ok(total) => {
                        reader_failing_since = None;
                        info!(partition = p, records = total, reason, "Restoring the partition from the changelog; its timers and alerts wait until it is done.");
                        crate::telemetry::RestoreStarted { partition: *p, records: total }.emit();
                        *phase = PartitionPhase::Restoring {
                            total,
                            started_ms: wall_now_ms(),
                        };
                    }
                    Err(e) => {
                        reader_failing_since.get_or_insert_with(Instant::now);
                        broker_trouble(&mut last_broker_warning, *p, &e);
                    }
                },
                _ => {}
            }
        }
        // A changelog reader that has reached no broker for a while, while the group (which
        // just gave us these partitions) does, may be one that librdkafka left with no broker
        // at all: a broker that was frozen or restarted answers with an empty broker list until
        // it is registered again, and an idle client then has nothing left to ask. A new one
        // bootstraps from `kafka.brokers`. Only an idle reader is replaced: nothing is lost.
        if reader_failing_since.is_some_and(|t| t.elapsed() >= READER_RECREATE_AFTER) && reader.is_idle() {
            match ChangelogReader::new(&cfg) {
                Ok(fresh) => {
                    tracing::warn!(seconds = READER_RECREATE_AFTER.as_secs(), "The changelog reader reached no broker for this long; starting a new one.");
                    reader = fresh;
                }
                Err(e) => tracing::warn!(error = %e, "Cannot start a new changelog reader; keeping the old one."),
            }
            reader_failing_since = None;
        }
        if !reader.is_idle() {
            let budget = if batch.records.is_empty() {
                Duration::from_millis(200)
            } else {
                Duration::from_millis(20)
            };
            reader.step(budget, &mut found);
        }
        for f in found.drain(..) {
            let mut e = engine.lock().unwrap();
            let pipeline = &mut e.pipeline;
            match f {
                Found::Tail(p, writer, empty) => {
                    if phases.get(&p) != Some(&PartitionPhase::Checking) {
                        continue;
                    }
                    let behind = pipeline.changelog_behind(p)?;
                    let ours = writer.is_some() && writer == pipeline.writer_of(p);
                    let fresh = empty && !pipeline.has_positions(p);
                    // Killed before its first changelog record went out: the local state is
                    // the only copy, and newer than the (empty) changelog.
                    let unsent = empty && pipeline.changelog_never_sent(p)?;
                    if !behind && (ours || fresh || unsent) {
                        pipeline.open_changelog(p);
                        drop(e);
                        info!(partition = p, "Local state is up to date with the changelog; starting at once.");
                        phases.insert(p, PartitionPhase::ToActivate);
                    } else {
                        let why = if behind {
                            "the local state was left ahead of its changelog"
                        } else if empty {
                            "the changelog is empty but the local state is not"
                        } else if writer.is_some() {
                            "another instance wrote the changelog since"
                        } else {
                            "there is no local state"
                        };
                        pipeline.begin_restore(p)?;
                        phases.insert(p, PartitionPhase::ToRestore { reason: why });
                    }
                }
                Found::Group(p, records) => {
                    if !matches!(phases.get(&p), Some(PartitionPhase::Restoring { .. })) {
                        continue;
                    }
                    let states = pipeline.apply_restored(p, &records)?;
                    crate::telemetry::RestoreApplied {
                        records: records.len() as u64,
                        states,
                    }
                    .emit();
                }
                Found::Done(p, stats) => {
                    if !matches!(phases.get(&p), Some(PartitionPhase::Restoring { .. })) {
                        continue;
                    }
                    let accounts = pipeline.end_restore(p)?;
                    drop(e);
                    crate::telemetry::RestoreFinished {
                        partition: p,
                        accounts,
                        stats,
                    }
                    .emit();
                    phases.insert(p, PartitionPhase::ToActivate);
                }
            }
        }
        if !source.is_paused() {
            let ready: Vec<u16> = phases
                .iter()
                .filter(|(_, ph)| **ph == PartitionPhase::ToActivate)
                .map(|(p, _)| *p)
                .collect();
            let ends = source.end_offsets(&ready);
            for p in ready {
                phases.remove(&p);
                let positions = engine.lock().unwrap().pipeline.partition_positions(p);
                source.activate(p, &positions, &ends);
            }
        }
        let restoring: Vec<(u16, u64, u64)> = reader
            .progress()
            .iter()
            .filter(|r| r.restoring)
            .map(|r| (r.partition, r.read, r.total))
            .collect();
        crate::telemetry::restore_progress(&restoring);
        if !restoring.is_empty() && last_restore_log.elapsed() >= Duration::from_secs(5) {
            for (p, read, total) in &restoring {
                let rate = phases.get(p).and_then(|ph| match ph {
                    PartitionPhase::Restoring { started_ms, .. } => {
                        let secs = (wall_now_ms() - started_ms) as f64 / 1000.0;
                        (secs > 0.0).then(|| *read as f64 / secs)
                    }
                    _ => None,
                });
                info!(partition = p, read, total, records_per_second = rate.unwrap_or(0.0) as u64, "Restoring from the changelog.");
            }
            last_restore_log = Instant::now();
        }

        let caught_up = source.caught_up();
        let owned = ownership.lock().unwrap().owned.len();
        metrics::gauge!(crate::telemetry::names::KAFKA_OWNED_PARTITIONS).set(owned as f64);
        // Once a second: the lag gauges and the /status view, from one look at the positions.
        let lag = (last_lag.elapsed() >= Duration::from_secs(1)).then(|| {
            last_lag = Instant::now();
            source.lag()
        });
        if let Some(lag) = &lag {
            crate::telemetry::kafka_stats::record_lag(lag);
        }
        if let Some(h) = &opts.health {
            let leaderless = crate::telemetry::kafka_stats::leaderless_inputs();
            let leaderless_out = crate::telemetry::kafka_stats::leaderless_outputs();
            let not_ready = if group.is_empty() {
                Some("no partitions given by the consumer group yet".to_owned())
            } else if disk.is_low() {
                Some(DISK_LOW.to_owned())
            } else if !crate::telemetry::kafka_stats::brokers_reachable() {
                Some("the input reader reaches no Kafka broker".to_owned())
            } else if !leaderless.is_empty() || !leaderless_out.is_empty() {
                let mut why = Vec::new();
                if !leaderless.is_empty() {
                    why.push(format!(
                        "{} input partition(s) without a leader: {} (the others are read)",
                        leaderless.len(),
                        leaderless.join(", ")
                    ));
                }
                if !leaderless_out.is_empty() {
                    why.push(format!(
                        "{} output partition(s) without a leader: {} (their records wait in the outbox)",
                        leaderless_out.len(),
                        leaderless_out.join(", ")
                    ));
                }
                Some(why.join("; "))
            } else if owned != group.len() || !phases.is_empty() {
                Some(format!(
                    "{} of {} partitions given by the group are being restored or activated",
                    group.len() - owned.min(group.len()),
                    group.len()
                ))
            } else if caught_up.len() != owned {
                Some(format!("catching up: {} of {owned} partitions at the end of their input", caught_up.len()))
            } else {
                None
            };
            h.set_ready(not_ready);
            if let Some(lag) = &lag {
                let status = kafka_status(&cfg, lag, &group, &caught_up, &phases, &reader, depth);
                *h.status.lock().unwrap() = serde_json::to_value(status).unwrap_or_default();
            }
        }
        let now = wall_now_ms();
        // Idle: fire wall-clock timers of caught-up partitions about once a second.
        let idle_tick = batch.records.is_empty()
            && cfg.engine.timer_clock == TimerClock::Wall
            && !caught_up.is_empty()
            && last_idle_commit.elapsed() >= Duration::from_secs(1);
        let mut e = engine.lock().unwrap();
        let Engine { pipeline, sink } = &mut *e;
        unstick_producer(&cfg, pipeline, sink, !group.is_empty())?;
        if batch.records.is_empty() && !idle_tick {
            pipeline.settle(sink)?;
            // Deliveries confirmed while idle: the gauges show them now, not at the next batch.
            metrics::gauge!(crate::telemetry::names::OUTBOX_DEPTH).set(pipeline.outbox_depth() as f64);
            metrics::gauge!(crate::telemetry::names::CHANGELOG_PENDING)
                .set(pipeline.changelog_pending() as f64);
            continue;
        }
        last_idle_commit = Instant::now();
        let wall = WallClock {
            now_ms: now,
            partitions: &caught_up,
        };
        let report = pipeline.process(&batch, &sources, Some(wall), sink)?;
        summary.add(&report);
        opts.shutdown.note_records(summary.records);
        BatchCommitted {
            report: &report,
            counters: pipeline.counters(),
            outbox_depth: pipeline.outbox_depth(),
            timers_scheduled: pipeline.timer_count(),
            stream_time_ms: pipeline.stream_time(),
            wall_now_ms: now,
        }
        .emit();
        metrics::gauge!(crate::telemetry::names::CHANGELOG_PENDING)
            .set(pipeline.changelog_pending() as f64);
        drop(e);
        source.commit_to_group(false);
        if last_mem.elapsed() > Duration::from_secs(5) {
            telemetry::record_store_memory(&store.memory_bytes());
            telemetry::record_write_pressure(&store.write_pressure());
            last_mem = Instant::now();
        }
    }
    info!("Stopping: waiting for Kafka to acknowledge every output and changelog record.");
    {
        let mut e = engine.lock().unwrap();
        let Engine { pipeline, sink } = &mut *e;
        // What is in flight first, with a stuck producer replaced as in the loop; then the
        // changelog records the last acknowledgements let through.
        let waiting = Instant::now();
        let mut warned = false;
        loop {
            pipeline.settle(sink)?;
            if sink.in_flight() == 0 {
                break;
            }
            unstick_producer(&cfg, pipeline, sink, true)?;
            if !warned && waiting.elapsed() > Duration::from_secs(10) {
                tracing::warn!(pending = sink.in_flight(), "Waiting for Kafka to acknowledge outputs before stopping.");
                warned = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        pipeline.finish(sink)?;
        summary.totals = pipeline.counters().clone();
    }
    source.close();
    store.flush()?;
    summary.seconds = start.elapsed().as_secs_f64();
    info!(
        records = summary.records,
        folded = summary.folded,
        duplicates = summary.duplicates,
        dead_lettered = summary.dead_lettered,
        "Stopped cleanly."
    );
    Ok(summary)
}

/// How long every check or restore of the changelog reader fails before a new reader is made.
const READER_RECREATE_AFTER: Duration = Duration::from_secs(30);

/// How long records stay in flight with no acknowledgement, while the input side reaches the
/// cluster, before a new producer is made (see [`unstick_producer`]).
const PRODUCER_RECREATE_AFTER: Duration = Duration::from_secs(20);

/// Replaces a producer that has had records in flight and no delivery report for
/// [`PRODUCER_RECREATE_AFTER`] while the input reader reaches a broker and every input
/// partition has a leader: the cluster answers, the producer does not. librdkafka can leave a
/// producer so after a broker was fenced and came back (see `KafkaSink::restart_producer`).
/// What the old producer had in flight is sent again from the outbox (at-least-once, same ids).
/// `group_ok`: the input reader holds partitions (the input side is known to work).
fn unstick_producer(
    cfg: &Config,
    pipeline: &mut Pipeline,
    sink: &mut crate::sink::kafka::KafkaSink,
    group_ok: bool,
) -> Result<()> {
    use crate::telemetry::kafka_stats::{brokers_reachable, leaderless_inputs};
    if sink.stalled_for() < PRODUCER_RECREATE_AFTER
        || !group_ok
        || !brokers_reachable()
        || !leaderless_inputs().is_empty()
    {
        return Ok(());
    }
    let pending = sink.in_flight();
    let again = sink.restart_producer(cfg)?;
    let sent = pipeline.resend(sink, &again)?;
    tracing::warn!(
        seconds = PRODUCER_RECREATE_AFTER.as_secs(),
        pending,
        resent = sent,
        "No output or changelog record was acknowledged for this long while the input side reached the cluster; started a new producer and sent the unacknowledged records again."
    );
    Ok(())
}

/// A check or restore could not reach the broker: said at most every 10 s.
fn broker_trouble(last: &mut Instant, p: u16, e: &dyn std::fmt::Display) {
    if last.elapsed() >= Duration::from_secs(10) {
        tracing::warn!(partition = p, error = %e, "Cannot read the changelog yet; trying again.");
        *last = Instant::now();
    }
}

/// What `/status` shows of a Kafka-mode instance (its JSON); `rapport status`, `rapport bench
/// scale` and the tests read it back with the same type.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub mode: String,
    pub group_id: String,
    pub group_instance_id: String,
    pub client_id: String,
    pub assignment: String,
    pub outbox_depth: u64,
    /// Every partition the group gave the instance.
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PartitionStatus {
    pub partition: u16,
    /// checking, restoring, catching_up or caught_up.
    pub phase: String,
    pub inputs: Vec<InputStatus>,
    pub restore: Option<RestoreStatus>,
}

impl PartitionStatus {
    /// Caught up, and every input read to its current end.
    pub fn settled(&self) -> bool {
        self.phase == "caught_up"
            && !self.inputs.is_empty()
            && self.inputs.iter().all(|i| i.lag == Some(0))
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InputStatus {
    pub topic: String,
    pub next_offset: Option<i64>,
    pub high_watermark: Option<i64>,
    pub lag: Option<i64>,
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct RestoreStatus {
    pub read: u64,
    pub total: u64,
}

fn kafka_status(
    cfg: &Config,
    lag: &[crate::source::kafka::InputLag],
    group: &std::collections::BTreeSet<u16>,
    caught_up: &[u16],
    phases: &std::collections::BTreeMap<u16, PartitionPhase>,
    reader: &crate::source::changelog::ChangelogReader,
    outbox_depth: u64,
) -> Status {
    let progress = reader.progress();
    let partitions = group
        .iter()
        .map(|p| {
            let phase = match phases.get(p) {
                Some(PartitionPhase::ToCheck | PartitionPhase::Checking) => "checking",
                Some(PartitionPhase::ToRestore { .. } | PartitionPhase::Restoring { .. }) => {
                    "restoring"
                }
                Some(PartitionPhase::ToActivate) => "catching_up",
                None if caught_up.contains(p) => "caught_up",
                None => "catching_up",
            };
            PartitionStatus {
                partition: *p,
                phase: phase.to_owned(),
                inputs: lag
                    .iter()
                    .filter(|i| i.partition == *p as i32)
                    .map(|i| InputStatus {
                        topic: i.topic.clone(),
                        next_offset: i.next,
                        high_watermark: i.high,
                        lag: i.lag(),
                    })
                    .collect(),
                restore: progress
                    .iter()
                    .find(|r| r.partition == *p && r.restoring)
                    .map(|r| RestoreStatus {
                        read: r.read,
                        total: r.total,
                    }),
            }
        })
        .collect();
    Status {
        mode: "kafka".into(),
        group_id: cfg.kafka.group_id.clone(),
        group_instance_id: cfg.kafka.group_instance_id.clone(),
        client_id: cfg.kafka.client_id.clone(),
        assignment: cfg.kafka.assignment.clone(),
        outbox_depth,
        partitions,
    }
}

/// One account as `inspect` and the demo's risk table show it.
pub struct AccountView {
    pub state: AccountState,
    pub partition: u16,
}

/// Reads one account's state.
pub fn load_account(store: &dyn Store, cfg: &Config, account: &str) -> Result<Option<AccountView>> {
    let p = partition_for(account, cfg.engine.partitions);
    match store.get(Cf::State, &state_key(p, account))? {
        Some(v) => Ok(Some(AccountView {
            state: state::decode(&v)?,
            partition: p,
        })),
        None => Ok(None),
    }
}

/// Visits every account state.
pub fn for_each_account(store: &dyn Store, mut f: impl FnMut(u16, AccountState)) -> Result<()> {
    let mut err = None;
    store.scan(Cf::State, &[], &mut |k, v| {
        match state::decode(v) {
            Ok(s) => f(parse_state_key(k).map_or(0, |(p, _)| p), s),
            Err(e) => {
                err = Some(e);
                return false;
            }
        }
        true
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    Ok(())
}

/// What an account of partition `p` is scored with: the partition's stream time and, when
/// components are scored against peers, its peer book (both stored as its clock).
pub fn scoring_context(
    store: &dyn Store,
    p: u16,
    cfg: &Config,
) -> (i64, Option<crate::domain::peers::PeerBook>) {
    use prost::Message;
    let clock = store
        .get(Cf::Meta, &crate::store::keys::clock_key(p))
        .ok()
        .flatten()
        .and_then(|v| crate::pb::PartitionClock::decode(v.as_slice()).ok())
        .unwrap_or_default();
    let book = cfg.scorecard.peers.enabled().then(|| {
        clock
            .peers
            .as_ref()
            .map(crate::domain::peers::PeerBook::from_proto)
            .unwrap_or_default()
    });
    (clock.stream_time_ms, book)
}

/// The drivers of an account's current score: what costs it points, in points.
pub fn current_drivers(
    s: &AccountState,
    now_ms: i64,
    cfg: &Config,
    peers: Option<&crate::domain::peers::PeerBook>,
) -> Vec<score::Driver> {
    let values = score::components(s, now_ms, cfg, peers);
    score::drivers(s, now_ms, None, &values, cfg, peers)
}

/// `rapport inspect ACCOUNT`: state, score, components, drivers and open alerts.
pub fn inspect(cfg: &Config, account: &str, json: bool, out: &mut dyn Write) -> Result<bool> {
    let store = RocksStore::open(&cfg.store)?;
    let Some(view) = load_account(&store, cfg, account)? else {
        writeln!(
            out,
            "No state for account \"{account}\" in {}.",
            cfg.store.data_dir.display()
        )?;
        return Ok(false);
    };
    let s = &view.state;
    let (as_of, book) = scoring_context(&store, view.partition, cfg);
    let now = as_of.max(s.max_event_ms);
    let peers = book.as_ref();
    let values = score::components(s, now, cfg, peers);
    let drivers = current_drivers(s, now, cfg, peers);
    let band = Band::of(s.current_score, &cfg.scorecard.bands);
    if json {
        let v = serde_json::json!({
            "account_id": s.account_id,
            "partition": view.partition,
            "as_of": crate::codec::time::format_rfc3339_ms(now),
            "score": s.current_score,
            "band": band.as_str(),
            "last_emitted_score": s.scored.then_some(s.emitted_score),
            "components": score::COMPONENTS.iter().zip(values).filter_map(|(c, v)| v.map(|v| (c.name().to_owned(), serde_json::json!((v * 10.0).round() / 10.0)))).collect::<serde_json::Map<_, _>>(),
            "drivers": drivers.iter().map(|d| serde_json::json!({"signal": d.signal, "impact": d.impact, "detail": d.detail})).collect::<Vec<_>>(),
            "open_alerts": s.open_alerts.iter().map(|a| serde_json::json!({"alert_id": alert_id_of(s, a), "rule": a.rule, "severity": a.severity, "opened_at": crate::codec::time::format_rfc3339_ms(a.opened_ms), "opened_score": a.opened_score})).collect::<Vec<_>>(),
            "arr": s.arr,
            "net_revenue_retention": score::net_retention(s, now),
            "gross_revenue_retention": score::gross_retention(s, now),
            "first_seen": crate::codec::time::format_rfc3339_ms(s.first_seen_ms),
            "last_event": crate::codec::time::format_rfc3339_ms(s.max_event_ms),
            "state_bytes": prost::Message::encoded_len(s),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(true);
    }
    writeln!(
        out,
        "Account {}  —  health {} ({}) as of {}",
        s.account_id,
        s.current_score,
        band.as_str(),
        crate::codec::time::format_rfc3339_ms(now)
    )?;
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_header(vec!["component", "value", "weight", "reading"]);
    for (c, v) in score::COMPONENTS.iter().zip(values) {
        t.add_row(vec![
            Cell::new(c.name()),
            Cell::new(v.map_or("no data".into(), |v| format!("{v:.0}")))
                .set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.2}", c.weight(cfg))).set_alignment(CellAlignment::Right),
            Cell::new(score::explain(*c, s, now, cfg)),
        ]);
    }
    writeln!(out, "{t}")?;
    writeln!(out, "What costs it points:")?;
    for d in &drivers {
        writeln!(out, "  {:+6.1}  {:<17} {}", d.impact, d.signal, d.detail)?;
    }
    if s.open_alerts.is_empty() {
        writeln!(out, "Open alerts: none")?;
    } else {
        writeln!(out, "Open alerts:")?;
        for a in &s.open_alerts {
            writeln!(
                out,
                "  [{}] {} since {} (score then {})  alert_id {}",
                a.severity,
                a.rule,
                crate::codec::time::format_day(crate::domain::event::day_of(a.opened_ms)),
                a.opened_score,
                alert_id_of(s, a)
            )?;
        }
    }
    let nrr = score::net_retention(s, now).map_or("n/a".into(), |x| format!("{:.0}%", x * 100.0));
    let grr = score::gross_retention(s, now).map_or("n/a".into(), |x| format!("{:.0}%", x * 100.0));
    writeln!(
        out,
        "ARR {}  NRR {nrr}  GRR {grr}",
        crate::domain::fold::money(s.arr)
    )?;
    Ok(true)
}

fn alert_id_of(s: &AccountState, a: &crate::pb::OpenAlert) -> String {
    Rule::parse(&a.rule)
        .map(|r| crate::domain::alert::alert_id(&s.account_id, r, a.episode_start_ms))
        .unwrap_or_default()
}

/// Prints the accounting, throughput, alerts and the most at-risk accounts.
pub fn print_summary(
    cfg: &Config,
    summary: &RunSummary,
    store: &dyn Store,
    labels: Option<&dyn Fn(&str) -> String>,
    out: &mut dyn Write,
) -> Result<Option<String>> {
    let s = summary;
    let accounted = s.folded + s.duplicates + s.dead_lettered;
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_header(vec!["records", "count"]);
    let row = |t: &mut Table, k: &str, v: u64| {
        t.add_row(vec![
            Cell::new(k),
            Cell::new(v).set_alignment(CellAlignment::Right),
        ]);
    };
    row(&mut t, "read", s.records);
    row(&mut t, "folded into state", s.folded);
    row(&mut t, "duplicates ignored", s.duplicates);
    row(&mut t, "dead-lettered", s.dead_lettered);
    let mut reasons: Vec<_> = s.rejected_by_reason.iter().collect();
    reasons.sort();
    for (r, n) in reasons {
        row(&mut t, &format!("  {r}"), *n);
    }
    writeln!(out, "{t}")?;
    writeln!(
        out,
        "Accounting: {} read = {} folded + {} duplicates + {} dead-lettered {}",
        s.records,
        s.folded,
        s.duplicates,
        s.dead_lettered,
        if accounted == s.records {
            "✓"
        } else {
            "✗ MISMATCH"
        }
    )?;
    writeln!(
        out,
        "Throughput: {:.0} events/s ({} records in {:.2} s); {} score changes emitted.",
        s.events_per_second(),
        s.records,
        s.seconds,
        s.scores
    )?;

    let mut by_rule: Vec<(Rule, u64, u64)> = crate::domain::alert::RULES
        .iter()
        .map(|r| {
            (
                *r,
                s.alerts.get(&(r.name(), "open")).copied().unwrap_or(0),
                s.alerts.get(&(r.name(), "resolved")).copied().unwrap_or(0),
            )
        })
        .collect();
    by_rule.retain(|(_, o, r)| o + r > 0);
    // Open alerts now, and the riskiest accounts.
    let mut open_now: HashMap<String, u64> = HashMap::new();
    // Streams over every account, keeping only the riskiest few: a store may hold millions.
    let riskier = |a: &AccountState, b: &AccountState| {
        a.current_score
            .cmp(&b.current_score)
            .then(b.open_alerts.len().cmp(&a.open_alerts.len()))
            .then(a.account_id.cmp(&b.account_id))
    };
    let mut accounts: Vec<(u16, AccountState)> = Vec::new();
    let mut bands = [0u64; 3];
    let mut total = 0u64;
    for_each_account(store, |p, st| {
        total += 1;
        for a in &st.open_alerts {
            *open_now.entry(a.rule.clone()).or_default() += 1;
        }
        if st.scored {
            bands[Band::of(st.current_score, &cfg.scorecard.bands) as usize] += 1;
            accounts.push((p, st));
            if accounts.len() > 64 {
                accounts.sort_by(|a, b| riskier(&a.1, &b.1));
                accounts.truncate(10);
            }
        }
    })?;
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "alert rule",
        "opened",
        "resolved",
        "open now",
    ]);
    for (r, o, res) in &by_rule {
        t.add_row(vec![
            Cell::new(r.name()),
            Cell::new(o).set_alignment(CellAlignment::Right),
            Cell::new(res).set_alignment(CellAlignment::Right),
            Cell::new(open_now.get(r.name()).copied().unwrap_or(0))
                .set_alignment(CellAlignment::Right),
        ]);
    }
    writeln!(out, "\nChurn alerts")?;
    writeln!(out, "{t}")?;
    writeln!(
        out,
        "Accounts: {} — green {}, yellow {}, red {}",
        total,
        bands[Band::Green as usize],
        bands[Band::Yellow as usize],
        bands[Band::Red as usize]
    )?;

    // Most at risk: lowest score first, then most open alerts.
    accounts.sort_by(|a, b| riskier(&a.1, &b.1));
    let mut t = Table::new();
    let mut header = vec![
        "account",
        "score",
        "band",
        "open alerts",
        "top drivers (points)",
    ];
    if labels.is_some() {
        header.insert(1, "planted behaviour");
    }
    t.load_style(UTF8_FULL_CONDENSED).set_header(header);
    for (p, st) in accounts.iter().filter(|(_, s)| s.scored).take(10) {
        let (as_of, book) = scoring_context(store, *p, cfg);
        let now = as_of.max(st.max_event_ms);
        let drivers = current_drivers(st, now, cfg, book.as_ref());
        let top: Vec<String> = drivers
            .iter()
            .take(2)
            .map(|d| format!("{:+.0} {}", d.impact, d.detail))
            .collect();
        let alerts: Vec<&str> = st.open_alerts.iter().map(|a| a.rule.as_str()).collect();
        let mut row = vec![
            Cell::new(&st.account_id),
            Cell::new(st.current_score).set_alignment(CellAlignment::Right),
            Cell::new(Band::of(st.current_score, &cfg.scorecard.bands).as_str()),
            Cell::new(if alerts.is_empty() {
                "—".to_owned()
            } else {
                alerts.join(", ")
            }),
            Cell::new(top.join("\n")),
        ];
        if let Some(l) = labels {
            row.insert(1, Cell::new(l(&st.account_id)));
        }
        t.add_row(row);
    }
    writeln!(out, "\nMost at-risk accounts")?;
    writeln!(out, "{t}")?;
    Ok(accounts.iter().find(|(_, s)| s.scored).map(|(_, s)| s.account_id.clone()))
}

/// `rapport replay`: rebuilds every account's state from the input log into a fresh store, then
/// swaps it in (the previous directory is kept beside it as `<data_dir>.previous`).
pub fn replay(cfg: &Config, opts: &RunOptions) -> Result<RunSummary> {
    let live = cfg.store.data_dir.clone();
    let fresh = sibling(&live, "replay-in-progress");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).with_context(|| format!("removing {}", fresh.display()))?;
    }
    let mut c = cfg.clone();
    c.store.data_dir = fresh.clone();
    c.embedded.follow = false;
    let summary = run_embedded(Arc::new(c), opts)?;
    if summary.stopped_by_signal {
        bail!(
            "replay interrupted; the live store at {} is unchanged",
            live.display()
        );
    }
    let previous = sibling(&live, "previous");
    if previous.exists() {
        std::fs::remove_dir_all(&previous)?;
    }
    if live.exists() {
        std::fs::rename(&live, &previous)?;
    }
    std::fs::rename(&fresh, &live)?;
    Ok(summary)
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// Writes a generated portfolio as NDJSON, with a malformed record after every `bad_every`
/// events (0: none). Returns (events written, malformed written).
pub fn write_portfolio(
    portfolio: &crate::generate::Portfolio,
    path: &Path,
    bad_every: u64,
) -> Result<(u64, u64)> {
    write_events(portfolio.events(), path, bad_every)
}

/// Writes events in the input contract, with one malformed record after every `bad_every`
/// events (0: none); returns (events, malformed records) written. The file's extension picks the
/// format: `.pb` / `.binpb` length-delimited protobuf, anything else NDJSON.
pub fn write_events(
    events: impl IntoIterator<Item = crate::domain::event::Event>,
    path: &Path,
    bad_every: u64,
) -> Result<(u64, u64)> {
    use crate::source::file::{FileFormat, format_of};
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let format = format_of(path);
    let bad = crate::generate::malformed_records(7);
    let (mut n, mut nbad) = (0u64, 0u64);
    let mut rec = Vec::with_capacity(512);
    let write = |w: &mut std::io::BufWriter<std::fs::File>, rec: &[u8]| -> std::io::Result<()> {
        match format {
            FileFormat::Ndjson => {
                w.write_all(rec)?;
                w.write_all(b"\n")
            }
            FileFormat::Protobuf => crate::source::file::write_delimited(w, rec),
        }
    };
    for ev in events {
        match format {
            FileFormat::Ndjson => {
                rec.clear();
                crate::codec::json::encode_event(&ev, &mut rec);
            }
            FileFormat::Protobuf => rec = crate::codec::proto::encode_event(&ev),
        }
        write(&mut w, &rec)?;
        n += 1;
        if bad_every > 0 && n % bad_every == 0 {
            let (_, bad_rec) = &bad[(nbad as usize) % bad.len()];
            write(&mut w, bad_rec)?;
            nbad += 1;
        }
    }
    w.flush()?;
    Ok((n, nbad))
}

/// How `produce` encodes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    /// The JSON contract.
    Json,
    /// `rapport.v1.Event` protobuf.
    Protobuf,
    /// JSON, protobuf and Schema-Registry-framed protobuf in turn.
    Mixed,
}

/// `rapport produce`: sends an NDJSON file of events to the input topics (each event to its
/// type's topic, keyed by account id, partitioned as a Java client would). Lines that are not
/// valid events are sent as they are to the product-usage topic, so that dead-letter handling
/// can be exercised. With `event_time`, each event's record timestamp is its `occurred_at` (as
/// event-sourcing producers set it; then the time-ordered merge of a partition's four topics
/// is event-time order), else the time it is sent. Returns the number of records sent.
pub fn produce(cfg: &Config, input: &Path, format: WireFormat, event_time: bool) -> Result<u64> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use std::io::BufRead;
    let mut c = crate::source::kafka::client_config(cfg);
    c.set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("acks", "all");
    let producer: ThreadedProducer<DefaultProducerContext> = c.create()?;
    let f = std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?,
    );
    let limits = crate::codec::DecodeLimits::NONE;
    let t = &cfg.kafka.input_topics;
    let mut n = 0u64;
    for line in f.split(b'\n') {
        let line = line?;
        let mut stamp = None;
        let (topic, key, payload): (&str, Option<String>, Vec<u8>) =
            match crate::codec::json::decode_json(&line, &limits) {
                Ok(ev) => {
                    let topic = match ev.body {
                        crate::domain::event::EventBody::ProductUsage(_) => &t.product_usage,
                        crate::domain::event::EventBody::Email(_) => &t.email,
                        crate::domain::event::EventBody::Call(_) => &t.call,
                        crate::domain::event::EventBody::Deal(_) => &t.deal,
                    };
                    let payload = match (format, n % 3) {
                        (WireFormat::Json, _) | (WireFormat::Mixed, 0) => line.clone(),
                        (WireFormat::Protobuf, _) | (WireFormat::Mixed, 1) => {
                            crate::codec::proto::encode_event(&ev)
                        }
                        _ => crate::codec::proto::frame_confluent(
                            1,
                            true,
                            &crate::codec::proto::encode_event(&ev),
                        ),
                    };
                    stamp = event_time.then_some(ev.occurred_at_ms);
                    (topic.as_str(), Some(ev.account_id), payload)
                }
                Err(_) => (t.product_usage.as_str(), None, line.clone()),
            };
        loop {
            let mut r: BaseRecord<'_, String, Vec<u8>> = BaseRecord::to(topic).payload(&payload);
            if let Some(k) = &key {
                r = r.key(k);
            }
            if let Some(t) = stamp {
                r = r.timestamp(t);
            }
            match producer.send(r) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("cannot produce to {topic}: {e}"),
            }
        }
        n += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(n)
}

/// Reads `/status` of a running instance.
pub fn fetch_status(url: &str) -> Result<String> {
    let url = format!("{}/status", url.trim_end_matches('/'));
    let mut r = ureq::get(&url).call().with_context(|| {
        format!("cannot read {url}: is rapport running there? (its address is telemetry.listen)")
    })?;
    Ok(r.body_mut().read_to_string()?)
}

/// `/status` as tables: the instance, then one row per partition and input topic.
pub fn status_table(body: &str) -> Result<String> {
    if serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v.is_null()) {
        return Ok("This instance reports no partitions yet (starting, or not in Kafka mode).\n".into());
    }
    let v: Status = serde_json::from_str(body).context("/status did not answer its JSON")?;
    let mut out = format!(
        "group {} · instance {} · {} rebalancing · outbox {}\n",
        v.group_id,
        if v.group_instance_id.is_empty() { "(dynamic member)" } else { &v.group_instance_id },
        v.assignment,
        v.outbox_depth
    );
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "partition", "phase", "topic", "next offset", "end", "lag", "restore",
    ]);
    let num = |x: Option<i64>| x.map_or("—".to_owned(), |n| n.to_string());
    for p in &v.partitions {
        let restore = match p.restore {
            Some(r) if r.total > 0 => {
                format!("{} / {} ({:.0}%)", r.read, r.total, 100.0 * r.read as f64 / r.total as f64)
            }
            _ => String::new(),
        };
        // One row per input topic; the partition's own columns on its first.
        let rows = p.inputs.len().max(1);
        for i in 0..rows {
            let input = p.inputs.get(i);
            let first = i == 0;
            t.add_row(vec![
                Cell::new(if first { p.partition.to_string() } else { String::new() }),
                Cell::new(if first { p.phase.as_str() } else { "" }),
                Cell::new(input.map_or("", |x| x.topic.as_str())),
                Cell::new(input.map_or(String::new(), |x| num(x.next_offset))).set_alignment(CellAlignment::Right),
                Cell::new(input.map_or(String::new(), |x| num(x.high_watermark))).set_alignment(CellAlignment::Right),
                Cell::new(input.map_or(String::new(), |x| num(x.lag))).set_alignment(CellAlignment::Right),
                Cell::new(if first { restore.clone() } else { String::new() }),
            ]);
        }
    }
    out.push_str(&t.to_string());
    out.push('\n');
    Ok(out)
}
