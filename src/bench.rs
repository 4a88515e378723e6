//! `rapport bench kafka`: on the local broker and the same pre-produced topic data, measures a raw
//! librdkafka consume loop (the physical limit), then rapport in Kafka mode processing the same
//! data to completion, then event-to-output latency at a steady input rate of half rapport's
//! measured maximum. Prints one table; ratios are taken within the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::app::{self, RunOptions, Shutdown, WireFormat};
use crate::config::{Config, TimerClock};
use crate::generate::{GenSpec, Portfolio};
use crate::source::kafka::client_config;

pub struct KafkaBench {
    pub accounts: usize,
    pub events: u64,
    pub format: WireFormat,
    pub latency_seconds: u64,
    /// Input rate of the latency phase; default half of rapport's measured maximum.
    pub latency_rate: Option<f64>,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Reads every input record with a plain consumer (same group protocol as rapport) and
/// discards it.
fn raw_consume(cfg: &Config, total: u64) -> Result<f64> {
    let mut c = client_config(cfg);
    c.set("group.id", format!("{}-raw", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range");
    let consumer: BaseConsumer = c.create()?;
    consumer.subscribe(&cfg.kafka.input_topics.all())?;
    let start = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < total {
        if start.elapsed() > Duration::from_secs(900) {
            bail!("raw consume read {n} of {total} records in 15 minutes");
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            bytes += m.payload().map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    std::hint::black_box(bytes);
    Ok(start.elapsed().as_secs_f64())
}

/// Fresh, uniquely named topics on the configured broker, a generated portfolio cut to
/// `events`, produced to the inputs. Returns the config, the events file and its record count.
fn prepare(
    base: &Config,
    accounts: usize,
    events: u64,
    format: WireFormat,
    dir: &Path,
    out: &mut dyn std::io::Write,
) -> Result<(Config, std::path::PathBuf, u64)> {
    let stamp = app::wall_now_ms();
    let mut cfg = base.clone();
    cfg.mode = crate::config::Mode::Kafka;
    let suffix = format!("bench-{stamp}");
    let k = &mut cfg.kafka;
    for t in [
        &mut k.input_topics.product_usage,
        &mut k.input_topics.email,
        &mut k.input_topics.call,
        &mut k.input_topics.deal,
    ] {
        *t = format!("{t}.{suffix}");
    }
    for t in [
        &mut k.output_topics.health_scores,
        &mut k.output_topics.churn_alerts,
        &mut k.output_topics.dlq,
    ] {
        *t = format!("{t}.{suffix}");
    }
    k.changelog_topic = format!("{}.{suffix}", k.changelog_topic);
    k.group_id = format!("rapport-{suffix}");
    k.output_partitions = cfg.engine.partitions as u32;
    cfg.store.data_dir = dir.join("data");
    cfg.telemetry.listen = String::new();
    crate::topics::create(&cfg)?;

    // The data: a generated portfolio, as many days as it takes to reach the event count.
    // About 1.7 events per account-day at usage_per_day = 1; generate a little more, then cut.
    let per_account_day = 1.5;
    let days = ((events as f64 / accounts as f64 / per_account_day).ceil() as u32).max(1);
    let file = dir.join("events.ndjson");
    // The timeline ends today, so that the live phase continues it (no burst of "gone dark").
    let start_day = crate::domain::event::day_of(stamp) - days as i32;
    let p = Portfolio::new(GenSpec {
        accounts,
        days,
        start_day,
        usage_per_day: 1.0,
        ..GenSpec::default()
    });
    app::write_portfolio(&p, &file, 0)?;
    let truncated = dir.join("events-cut.ndjson");
    let total = head_lines(&file, &truncated, events)?;
    let t0 = Instant::now();
    app::produce(&cfg, &truncated, format)?;
    writeln!(
        out,
        "Produced {total} events ({accounts} accounts) in {:.1} s.",
        t0.elapsed().as_secs_f64()
    )?;
    Ok((cfg, truncated, total))
}

pub fn kafka(base: &Config, b: &KafkaBench, out: &mut dyn std::io::Write) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("rapport-bench-")
        .tempdir()?;
    let (cfg, truncated, total) = prepare(base, b.accounts, b.events, b.format, dir.path(), out)?;

    let raw_secs = raw_consume(&cfg, total)?;
    let raw = rate(total, raw_secs);

    // rapport to completion, in this process.
    let cfg = Arc::new(cfg);
    let opts = RunOptions {
        progress: false,
        shutdown: Shutdown::after_records(total),
        health: None,
    };
    let summary = app::run_kafka(Arc::clone(&cfg), &opts)?;
    let ours = rate(summary.records, summary.seconds);

    // Latency at half of rapport's maximum rate.
    let lat = latency(&cfg, &truncated, b.latency_rate.unwrap_or((ours / 2.0).max(100.0)), b.latency_seconds)?;

    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "contender",
        "events",
        "seconds",
        "events/s",
        "ratio to raw",
    ]);
    for (name, n, secs) in [
        ("raw librdkafka consume", total, raw_secs),
        ("rapport, Kafka mode", summary.records, summary.seconds),
    ] {
        let r = rate(n, secs);
        t.add_row(vec![
            Cell::new(name),
            Cell::new(n).set_alignment(CellAlignment::Right),
            Cell::new(format!("{secs:.2}")).set_alignment(CellAlignment::Right),
            Cell::new(format!("{r:.0}")).set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.2}", r / raw)).set_alignment(CellAlignment::Right),
        ]);
    }
    writeln!(out, "{t}")?;
    writeln!(
        out,
        "Latency, event to health-score output, at {:.0} events/s for {} s ({} samples): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms.",
        lat.rate, b.latency_seconds, lat.samples, lat.p50_ms, lat.p99_ms, lat.max_ms
    )?;
    Ok(())
}

fn head_lines(from: &Path, to: &Path, n: u64) -> Result<u64> {
    use std::io::{BufRead, Write};
    let r = std::io::BufReader::new(std::fs::File::open(from)?);
    let mut w = std::io::BufWriter::new(std::fs::File::create(to)?);
    let mut count = 0;
    for line in r.split(b'\n') {
        if count >= n {
            break;
        }
        w.write_all(&line?)?;
        w.write_all(b"\n")?;
        count += 1;
    }
    w.flush()?;
    Ok(count)
}

struct Latency {
    rate: f64,
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Replays the benchmark's events, restamped with the wall clock, at `rate` per second while
/// rapport runs live. One event in a hundred is a probe: the first usage event of a new account,
/// which yields that account's first health score with `as_of` = the event's time. Latency =
/// when the score is read from the output topic − `as_of`.
fn latency(cfg: &Arc<Config>, events: &Path, rate: f64, seconds: u64) -> Result<Latency> {
    use std::io::BufRead;
    let lines: Vec<Vec<u8>> = std::io::BufReader::new(std::fs::File::open(events)?)
        .split(b'\n')
        .take((rate * seconds as f64) as usize + 1)
        .collect::<std::io::Result<_>>()?;
    let limits = crate::codec::DecodeLimits { max_record_bytes: usize::MAX, max_id_bytes: usize::MAX };
    // Live settings: wall-clock timers, small batches come as they are.
    let mut live = (**cfg).clone();
    live.engine.timer_clock = TimerClock::Wall;
    let live = Arc::new(live);
    let shutdown = Shutdown::new();
    let health = Arc::new(crate::telemetry::http::Health::default());
    let runner = {
        let (live, shutdown, health) = (Arc::clone(&live), shutdown.clone(), Arc::clone(&health));
        std::thread::spawn(move || {
            app::run_kafka(live, &RunOptions { progress: false, shutdown, health: Some(health) })
        })
    };
    // Start measuring once rapport owns its partitions and has caught up with them.
    let ready_by = Instant::now() + Duration::from_secs(120);
    while !health.ready.load(std::sync::atomic::Ordering::Relaxed) {
        if Instant::now() > ready_by {
            shutdown.trigger();
            bail!("rapport did not catch up within 2 minutes before the latency run");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Read the score topic from its current end.
    let mut c = client_config(cfg);
    c.set("group.id", format!("{}-latency", cfg.kafka.group_id))
        .set("enable.auto.commit", "false");
    let reader: BaseConsumer = c.create()?;
    let topic = &cfg.kafka.output_topics.health_scores;
    let md = reader.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::End)?;
    }
    reader.assign(&tpl)?;
    // Let the reader and rapport settle on their positions before sending.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(3) {
        reader.poll(Duration::from_millis(100));
    }

    let mut pc = client_config(cfg);
    pc.set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .set("acks", "all");
    let producer: ThreadedProducer<DefaultProducerContext> = pc.create()?;
    let n = (rate * seconds as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut sent = 0u64;
    // The reader runs on its own thread, draining the score topic as fast as it fills, so that
    // what is measured is rapport's delay and not the reader's.
    let stop_reading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader_thread = {
        let stop = Arc::clone(&stop_reading);
        std::thread::spawn(move || {
            let mut lat_ms: Vec<f64> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) else { continue };
                let now = app::wall_now_ms();
                let Some(p) = m.payload() else { continue };
                // Cheap filter before parsing: only probes' first scores count.
                if memchr::memmem::find(p, b"\"lat-").is_none() {
                    continue;
                }
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(p) {
                    if v["previous_score"].is_null() {
                        if let Some(t) = v["as_of"].as_str().and_then(crate::codec::time::parse_rfc3339_ms) {
                            lat_ms.push((now - t) as f64);
                        }
                    }
                }
            }
            lat_ms
        })
    };
    while sent < n {
        let due = start + interval * sent as u32;
        if Instant::now() < due {
            std::hint::spin_loop();
            continue;
        }
        let now = app::wall_now_ms();
        let t = &cfg.kafka.input_topics;
        let (topic, key, payload) = if sent % 100 == 0 {
            let account = format!("lat-{sent}");
            let line = format!(
                r#"{{"event_id":"lat-{sent}","account_id":"{account}","occurred_at":"{}","type":"product_usage","user_id":"u1","feature":"reports.export"}}"#,
                crate::codec::time::format_rfc3339_ms(now)
            );
            (&t.product_usage, account, line.into_bytes())
        } else {
            let Ok(mut ev) = crate::codec::json::decode_json(&lines[sent as usize % lines.len()], &limits) else {
                sent += 1;
                continue;
            };
            ev.occurred_at_ms = now;
            ev.event_id = format!("live-{sent}");
            let mut buf = Vec::with_capacity(256);
            crate::codec::json::encode_event(&ev, &mut buf);
            let topic = match ev.body {
                crate::domain::event::EventBody::ProductUsage(_) => &t.product_usage,
                crate::domain::event::EventBody::Email(_) => &t.email,
                crate::domain::event::EventBody::Call(_) => &t.call,
                crate::domain::event::EventBody::Deal(_) => &t.deal,
            };
            (topic, ev.account_id, buf)
        };
        let r: BaseRecord<'_, String, Vec<u8>> = BaseRecord::to(topic).key(&key).payload(&payload);
        if producer.send(r).is_ok() {
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    // Give the last probes time to come back.
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_reading.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut lat_ms = reader_thread.join().map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    shutdown.trigger();
    runner
        .join()
        .map_err(|_| anyhow::anyhow!("the rapport thread panicked"))?
        .context("rapport (latency run)")?;
    if lat_ms.is_empty() {
        bail!("no health scores came back for the latency probes");
    }
    lat_ms.sort_by(f64::total_cmp);
    let q = |x: f64| lat_ms[((lat_ms.len() - 1) as f64 * x).round() as usize];
    Ok(Latency {
        rate,
        samples: lat_ms.len(),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        max_ms: *lat_ms.last().unwrap(),
    })
}

// --- rapport bench scale ------------------------------------------------------------------------

pub struct ScaleBench {
    pub accounts: usize,
    pub events: u64,
    /// Instance counts to measure, e.g. [1, 2, 3].
    pub instances: Vec<usize>,
    /// `kafka.session_timeout_ms` of the instances (bounds the failover time).
    pub session_timeout_ms: u64,
}

/// One `rapport run` child process of this executable: its own data dir, metrics port and log.
struct Instance {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Instance {
    fn spawn(cfg: &Config, dir: &Path, tag: &str) -> Result<Instance> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut c = cfg.clone();
        c.store.data_dir = dir.join(format!("data-{tag}"));
        c.telemetry.listen = format!("127.0.0.1:{port}");
        c.kafka.client_id = format!("rapport-bench-{tag}");
        c.kafka.create_topics = false;
        let path = dir.join(format!("{tag}.toml"));
        std::fs::write(&path, toml::to_string(&c)?)?;
        let log = dir.join(format!("{tag}.log"));
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["run", "--quiet", "--config"]).arg(&path);
        // The child's configuration is the file alone.
        for (k, _) in std::env::vars() {
            if k.starts_with("RAPPORT_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting a rapport instance")?;
        Ok(Instance { child, port, log })
    }

    fn get(&self, path: &str) -> Option<String> {
        ureq::get(format!("http://127.0.0.1:{}{path}", self.port))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    }

    /// A counter or gauge, summed over its label sets.
    fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics")?;
        Some(
            text.lines()
                .filter(|l| l.split([' ', '{']).next() == Some(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Partitions this instance reads and has read to the end, with no lag.
    fn caught_up(&self) -> Vec<u16> {
        self.get("/status")
            .and_then(|t| serde_json::from_str::<app::Status>(&t).ok())
            .map(|s| s.partitions.iter().filter(|p| p.settled()).map(|p| p.partition).collect())
            .unwrap_or_default()
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "a rapport instance exited ({status}); its log is {}",
                self.log.display()
            );
        }
        Ok(())
    }

    fn stop(mut self) -> Result<()> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait()?;
        if !status.success() {
            bail!("a rapport instance stopped with {status}; its log is {}", self.log.display());
        }
        Ok(())
    }

    fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// Polls `done` every 100 ms for at most 30 minutes, checking that every instance is alive.
fn wait_until(
    instances: &mut [Instance],
    what: &str,
    mut done: impl FnMut(&[Instance]) -> bool,
) -> Result<f64> {
    let t0 = Instant::now();
    loop {
        for i in instances.iter_mut() {
            i.alive()?;
        }
        if done(instances) {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("{what}: not reached in 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_caught_up(instances: &[Instance], n: u16) -> bool {
    let mut seen: Vec<u16> = instances.iter().flat_map(Instance::caught_up).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len() == n as usize
}

/// Sums "Partition restored" log lines: (accounts, records, megabytes, longest restore seconds).
fn restored_from_log(log: &Path) -> (u64, u64, f64, f64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let field = |l: &str, k: &str| -> f64 {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(|v| v.trim_matches('"').parse().unwrap_or(0.0))
            .unwrap_or(0.0)
    };
    let mut sum = (0u64, 0u64, 0.0f64, 0.0f64);
    for l in text.lines().filter(|l| l.contains("Partition restored from the changelog")) {
        sum.0 += field(l, "accounts=") as u64;
        sum.1 += field(l, "records=") as u64;
        sum.2 += field(l, "megabytes=");
        sum.3 = sum.3.max(field(l, "seconds="));
    }
    sum
}

/// `rapport bench scale`: the same pre-produced events processed to completion by 1, 2, 3 …
/// instances in one group (each count a group and changelog of its own); then the restore of
/// everything the single instance wrote, by a new instance with an empty data directory; then
/// the time from a SIGKILL of one of the largest group's instances to all partitions caught up
/// again on the others.
pub fn scale(base: &Config, b: &ScaleBench, out: &mut dyn std::io::Write) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("rapport-bench-scale-")
        .tempdir()?;
    let (cfg, _file, total) =
        prepare(base, b.accounts, b.events, WireFormat::Json, dir.path(), out)?;
    let n = cfg.engine.partitions;
    let mut rows = Vec::new();
    let mut restore = None;
    let mut failover = None;
    let largest = b.instances.iter().copied().max().unwrap_or(1);
    for &count in &b.instances {
        let mut c = cfg.clone();
        c.kafka.group_id = format!("{}-x{count}", cfg.kafka.group_id);
        c.kafka.changelog_topic = format!("{}-x{count}", cfg.kafka.changelog_topic);
        c.kafka.session_timeout_ms = b.session_timeout_ms;
        crate::topics::create(&c)?;
        let phase = dir.path().join(format!("x{count}"));
        std::fs::create_dir_all(&phase)?;
        let mut instances = (0..count)
            .map(|i| Instance::spawn(&c, &phase, &format!("i{i}")))
            .collect::<Result<Vec<_>>>()?;
        let secs = wait_until(&mut instances, "every event read", |is| {
            is.iter()
                .map(|i| i.metric(crate::telemetry::names::RECORDS_IN).unwrap_or(0.0))
                .sum::<f64>()
                >= total as f64
        })?;
        writeln!(out, "{count} instance(s): {total} events in {secs:.1} s.")?;
        rows.push((count, secs));
        if count == largest && count > 1 {
            // Every instance holds partitions before one of them dies.
            wait_until(&mut instances, "all partitions caught up, on every instance", |is| {
                all_caught_up(is, n) && is.iter().all(|i| !i.caught_up().is_empty())
            })?;
            instances.remove(0).kill()?;
            let secs = wait_until(&mut instances, "the killed instance's partitions caught up elsewhere", |is| {
                all_caught_up(is, n)
            })?;
            failover = Some(secs);
        }
        for i in instances {
            i.stop()?;
        }
        if count == 1 {
            // A new instance, empty data directory, same group: everything from the changelog.
            let mut fresh = vec![Instance::spawn(&c, &phase, "restore")?];
            let secs = wait_until(&mut fresh, "the restore", |is| all_caught_up(is, n))?;
            let (accounts, records, mb, longest) = restored_from_log(&fresh[0].log);
            restore = Some((secs, accounts, records, mb, longest));
            fresh.pop().expect("one").stop()?;
        }
    }

    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "instances",
        "events",
        "seconds",
        "events/s",
        "ratio to 1 instance",
    ]);
    let one = rows.iter().find(|(c, _)| *c == 1).map(|(_, s)| rate(total, *s));
    for (count, secs) in &rows {
        let r = rate(total, *secs);
        t.add_row(vec![
            Cell::new(count).set_alignment(CellAlignment::Right),
            Cell::new(total).set_alignment(CellAlignment::Right),
            Cell::new(format!("{secs:.1}")).set_alignment(CellAlignment::Right),
            Cell::new(format!("{r:.0}")).set_alignment(CellAlignment::Right),
            Cell::new(one.map_or("—".into(), |o| format!("{:.2}", r / o)))
                .set_alignment(CellAlignment::Right),
        ]);
    }
    writeln!(out, "{t}")?;
    writeln!(
        out,
        "Seconds include start-up and joining the group; the machine's cores are shared by every instance and the broker."
    )?;
    if let Some((secs, accounts, records, mb, longest)) = restore {
        // The partitions restore side by side through one consumer: the longest one is the
        // restore's own duration; the rest of `secs` is start-up, joining and checking.
        writeln!(
            out,
            "Restore by a new instance with an empty data directory: {accounts} accounts, {records} changelog records, {mb:.1} MB. Restoring took {longest:.1} s: {:.0} accounts/s, {:.0} records/s, {:.1} MB/s; start to every partition caught up: {secs:.1} s.",
            rate(accounts, longest),
            rate(records, longest),
            mb / longest.max(1e-9)
        )?;
    }
    if let Some(secs) = failover {
        writeln!(
            out,
            "Failover: SIGKILL of one of {largest} instances to all partitions caught up again elsewhere: {secs:.1} s (kafka.session_timeout_ms = {} bounds how soon the group notices).",
            b.session_timeout_ms
        )?;
    }
    Ok(())
}
