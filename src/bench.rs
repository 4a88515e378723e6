//! `rapport bench kafka`: on the local broker and the same pre-produced topic data, measures a raw
//! librdkafka consume loop (the physical limit), then rapport in Kafka mode processing the same
//! data to completion, then event-to-output latency at a steady input rate of half rapport's
//! measured maximum. Prints one table; ratios are taken within the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::app::{self, WireFormat};
use crate::config::{Config, TimerClock};
use crate::generate::{GenSpec, Portfolio};
use crate::source::kafka::client_config;

/// Input topics of the benchmark hold records stamped with their (past) event time: no
/// time-based retention, or the broker would delete them while they are being read.
const KEEP: &[(&str, &str)] = &[("retention.ms", "-1")];

/// The contenders of `rapport bench kafka`, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Contender {
    /// A librdkafka consumer that reads and discards every record (the physical limit).
    Raw,
    /// rapport in Kafka mode, JSON input.
    KafkaJson,
    /// rapport in Kafka mode, protobuf input.
    KafkaProtobuf,
    /// rapport in embedded mode, the same events from an NDJSON file.
    Embedded,
    /// rapport in embedded mode, the same events from a length-delimited protobuf file.
    EmbeddedProtobuf,
    /// The Kafka Streams peer (benches/peers/kafka-streams), at-least-once.
    StreamsAlos,
    /// The Kafka Streams peer, exactly_once_v2.
    StreamsEos,
}

impl Contender {
    pub const ALL: [Contender; 7] = [
        Contender::Raw,
        Contender::KafkaJson,
        Contender::KafkaProtobuf,
        Contender::Embedded,
        Contender::EmbeddedProtobuf,
        Contender::StreamsAlos,
        Contender::StreamsEos,
    ];

    fn label(self) -> &'static str {
        match self {
            Contender::Raw => "raw librdkafka consume",
            Contender::KafkaJson => "rapport, Kafka mode, JSON",
            Contender::KafkaProtobuf => "rapport, Kafka mode, protobuf",
            Contender::Embedded => "rapport, embedded, NDJSON file",
            Contender::EmbeddedProtobuf => "rapport, embedded, protobuf file",
            Contender::StreamsAlos => "Kafka Streams peer, at-least-once",
            Contender::StreamsEos => "Kafka Streams peer, exactly_once_v2",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Contender::Raw => "raw",
            Contender::KafkaJson => "json",
            Contender::KafkaProtobuf => "protobuf",
            Contender::Embedded => "embedded",
            Contender::EmbeddedProtobuf => "embedded-pb",
            Contender::StreamsAlos => "ks-alos",
            Contender::StreamsEos => "ks-eos",
        }
    }

    fn is_peer(self) -> bool {
        matches!(self, Contender::StreamsAlos | Contender::StreamsEos)
    }

    fn reads_protobuf(self) -> bool {
        self == Contender::KafkaProtobuf
    }

    /// Whether it reads the JSON input topics (every contender but embedded and protobuf).
    fn reads_kafka_json(self) -> bool {
        !matches!(self, Contender::Embedded | Contender::EmbeddedProtobuf | Contender::KafkaProtobuf)
    }

    fn is_embedded(self) -> bool {
        matches!(self, Contender::Embedded | Contender::EmbeddedProtobuf)
    }
}

pub struct KafkaBench {
    pub accounts: usize,
    pub events: u64,
    pub contenders: Vec<Contender>,
    /// Seconds of steady input for each latency measurement (0: none).
    pub latency_seconds: u64,
    /// Input rates of the latency measurements, each contender measured at each; none: half of
    /// rapport's measured maximum.
    pub latency_rate: Vec<f64>,
    /// The Kafka Streams peer's launcher (`benches/peers/kafka-streams/run.sh`).
    pub peer: PathBuf,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Reads every input record with a plain consumer (same group protocol as rapport) and
/// discards it. Returns the seconds from the first record to the last.
pub fn raw_consume(cfg: &Config, total: u64) -> Result<f64> {
    let mut c = client_config(cfg);
    c.set("group.id", format!("{}-raw", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range");
    let consumer: BaseConsumer = c.create()?;
    consumer.subscribe(&cfg.kafka.input_topics.all())?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut first = None;
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < total {
        if Instant::now() > deadline {
            bail!("raw consume read {n} of {total} records in 30 minutes");
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    std::hint::black_box(bytes);
    Ok(first.map_or(0.0, |t| t.elapsed().as_secs_f64()))
}

/// A copy of `base` whose input topics carry `suffix`.
fn with_inputs(base: &Config, suffix: &str) -> Config {
    let mut cfg = base.clone();
    let k = &mut cfg.kafka;
    for t in [
        &mut k.input_topics.product_usage,
        &mut k.input_topics.email,
        &mut k.input_topics.call,
        &mut k.input_topics.deal,
    ] {
        *t = format!("{t}.{suffix}");
    }
    cfg
}

/// A copy of `cfg` with a group, changelog and output topics of its own (`tag`).
fn with_outputs(cfg: &Config, tag: &str) -> Config {
    let mut c = cfg.clone();
    let k = &mut c.kafka;
    let stem = k.input_topics.product_usage.rsplit_once('.').map_or("", |(_, s)| s).to_owned();
    for t in [
        &mut k.output_topics.health_scores,
        &mut k.output_topics.churn_alerts,
        &mut k.output_topics.dlq,
    ] {
        *t = format!("{t}.{stem}-{tag}");
    }
    k.changelog_topic = format!("{}.{stem}-{tag}", k.changelog_topic);
    k.group_id = format!("rapport-{stem}-{tag}");
    c
}

/// The input topics a config names, with their partition count.
fn input_topics(cfg: &Config) -> Vec<(String, i32)> {
    let n = cfg.engine.partitions as i32;
    cfg.kafka.input_topics.all().iter().map(|t| (t.to_string(), n)).collect()
}

/// Every topic a config names.
fn topic_names(cfg: &Config) -> Vec<String> {
    crate::topics::wanted(cfg).into_iter().map(|(t, _)| t).collect()
}

/// The benchmark's events: a generated portfolio, as many days as it takes to reach `events`,
/// ending today (so that a live phase continues it), cut to exactly `events` lines.
fn generate_events(accounts: usize, events: u64, dir: &Path) -> Result<(PathBuf, u64)> {
    // About 1.7 events per account-day at usage_per_day = 1; generate a little more, then cut.
    let per_account_day = 1.5;
    let days = ((events as f64 / accounts as f64 / per_account_day).ceil() as u32).max(1);
    let file = dir.join("events-all.ndjson");
    let start_day = crate::domain::event::day_of(app::wall_now_ms()) - days as i32;
    let p = Portfolio::new(GenSpec {
        accounts,
        days,
        start_day,
        usage_per_day: 1.0,
        ..GenSpec::default()
    });
    app::write_portfolio(&p, &file, 0)?;
    let cut = dir.join("events.ndjson");
    let total = head_lines(&file, &cut, events)?;
    std::fs::remove_file(&file)?;
    Ok((cut, total))
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
) -> Result<(Config, PathBuf, u64)> {
    let mut base = base.clone();
    base.mode = crate::config::Mode::Kafka;
    base.store.data_dir = dir.join("data");
    base.telemetry.listen = String::new();
    base.kafka.output_partitions = base.engine.partitions as u32;
    let cfg = with_outputs(&with_inputs(&base, &format!("bench-{}", app::wall_now_ms())), "run");
    crate::topics::create(&cfg)?;
    let (file, total) = generate_events(accounts, events, dir)?;
    let t0 = Instant::now();
    app::produce(&cfg, &file, format, false)?;
    writeln!(
        out,
        "Produced {total} events ({accounts} accounts) in {:.1} s.",
        t0.elapsed().as_secs_f64()
    )?;
    Ok((cfg, file, total))
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

/// The events of an NDJSON file as a length-delimited protobuf file (in the same order), as
/// `rapport generate --out FILE.pb` writes them.
fn ndjson_to_protobuf(from: &Path, to: &Path) -> Result<u64> {
    use std::io::BufRead;
    let limits = crate::codec::DecodeLimits::NONE;
    let r = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(from)?);
    // The first line that is not an event stops the copy, and is the error.
    let mut bad = None;
    let events = r.split(b'\n').enumerate().map_while(|(i, line)| {
        let ev = line.map_err(anyhow::Error::from).and_then(|l| {
            crate::codec::json::decode_json(&l, &limits).map_err(|e| {
                anyhow::anyhow!("{}: line {} is not a valid event: {}", from.display(), i + 1, e.detail)
            })
        });
        ev.map_err(|e| bad = Some(e)).ok()
    });
    let (n, _) = app::write_events(events, to, 0)?;
    match bad {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// What a finished child process used: CPU seconds (user + system, its waited-for children
/// included) and peak resident memory.
struct Usage {
    cpu_seconds: f64,
    peak_rss: u64,
    exit: Option<i32>,
}

/// A running child's peak resident memory, sampled from its `VmHWM` on a thread of its own
/// until the child exits. (`wait4`'s `ru_maxrss` cannot be used: Linux carries the high-water
/// mark of the forked copy of this process over `exec`, so every child reported at least the
/// harness's own size at the time it was started: 4,161 MiB for a 10,000,000-account run whose
/// process never exceeded 620 MiB, because the harness held the generated portfolio.)
struct PeakRss {
    peak_kib: Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    fn watch(child: &std::process::Child) -> PeakRss {
        let path = format!("/proc/{}/status", child.id());
        let peak_kib = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peak = Arc::clone(&peak_kib);
        let thread = std::thread::spawn(move || {
            // Stops once the file or its VmHWM line is gone: the child exited (a zombie has no
            // memory lines), before its id can be reused.
            while let Some(kib) = std::fs::read_to_string(&path).ok().and_then(|s| vm_hwm_kib(&s)) {
                peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        PeakRss { peak_kib, thread }
    }

    /// The peak in bytes (to be read once the child has exited).
    fn bytes(self) -> u64 {
        let _ = self.thread.join();
        self.peak_kib.load(std::sync::atomic::Ordering::Relaxed) * 1024
    }
}

/// The `VmHWM` (peak resident set) line of a `/proc/<pid>/status`, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reaps `child` (which must not have been waited for) and returns its resource usage; `peak`
/// watched it since it was started.
fn wait_usage(child: &std::process::Child, peak: PeakRss) -> Result<Usage> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own un-reaped child; status and ru are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waiting for a benchmark process");
        }
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Usage {
        cpu_seconds: secs(ru.ru_utime) + secs(ru.ru_stime),
        peak_rss: peak.bytes(),
        exit: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
    })
}

fn terminate(child: &std::process::Child) {
    // SAFETY: signalling our own child by its id.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

/// One contender's measurement.
pub struct Row {
    pub contender: Contender,
    pub events: u64,
    /// From its first record read to its last processed (outputs acknowledged).
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss: u64,
    pub latency: Option<Latency>,
}

impl Row {
    pub fn events_per_second(&self) -> f64 {
        rate(self.events, self.seconds)
    }
}

/// A child process of this executable with a config file of its own.
/// Its configuration is the file alone (RAPPORT_ variables are not passed on).
fn spawn_self(
    args: &[&str],
    cfg: &Config,
    dir: &Path,
    tag: &str,
    stdout: std::process::Stdio,
) -> Result<(std::process::Child, PathBuf)> {
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, toml::to_string(cfg)?)?;
    let log = dir.join(format!("{tag}.log"));
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(args).arg("--config").arg(&path);
    for (k, _) in std::env::vars() {
        if k.starts_with("RAPPORT_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {tag}"))?;
    Ok((child, log))
}

/// The last line of a child's stdout, parsed as JSON.
fn last_json_line(child: &mut std::process::Child) -> Result<serde_json::Value> {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut text)?;
    }
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("reading a result line from {text:?}"))
}

fn run_raw(cfg: &Config, total: u64, dir: &Path) -> Result<Row> {
    let (mut child, log) = spawn_self(
        &["bench", "raw-consume", "--expect", &total.to_string()],
        cfg,
        dir,
        "raw",
        std::process::Stdio::piped(),
    )?;
    let peak = PeakRss::watch(&child);
    let v = last_json_line(&mut child);
    let u = wait_usage(&child, peak)?;
    let v = v.with_context(|| format!("raw consume failed; its log is {}", log.display()))?;
    Ok(Row {
        contender: Contender::Raw,
        events: v["records"].as_u64().unwrap_or(0),
        seconds: v["seconds"].as_f64().unwrap_or(0.0),
        cpu_seconds: u.cpu_seconds,
        peak_rss: u.peak_rss,
        latency: None,
    })
}

/// A rapport instance's endpoint `path`, as text.
fn get(port: u16, path: &str) -> Option<String> {
    ureq::get(format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()
}

/// A metric of a rapport instance's endpoint, summed over its label sets.
fn metric(port: u16, name: &str) -> Option<f64> {
    let text = get(port, "/metrics")?;
    Some(
        text.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// rapport in Kafka mode, a child process, to completion: every record read and every output
/// acknowledged by the broker.
fn run_rapport_kafka(cfg: &Config, contender: Contender, total: u64, dir: &Path) -> Result<Row> {
    let mut c = with_outputs(cfg, contender.tag());
    let port = free_port()?;
    c.telemetry.listen = format!("127.0.0.1:{port}");
    c.store.data_dir = dir.join(format!("data-{}", contender.tag()));
    c.kafka.create_topics = true;
    // Replay: timers on event time, so that the outputs are those of the embedded run.
    c.engine.timer_clock = TimerClock::Event;
    let (mut child, log) = spawn_self(&["run", "--quiet"], &c, dir, contender.tag(), std::process::Stdio::null())?;
    let peak = PeakRss::watch(&child);
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut first = None;
    let done = loop {
        if let Some(status) = child.try_wait()? {
            bail!("rapport ({}) exited early ({status}); its log is {}", contender.tag(), log.display());
        }
        if Instant::now() > deadline {
            terminate(&child);
            bail!("rapport ({}) did not finish within an hour; its log is {}", contender.tag(), log.display());
        }
        let n = metric(port, crate::telemetry::names::RECORDS_IN).unwrap_or(0.0) as u64;
        if n > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if n >= total && metric(port, crate::telemetry::names::OUTBOX_DEPTH) == Some(0.0) {
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    terminate(&child);
    let u = wait_usage(&child, peak)?;
    if u.exit != Some(0) {
        bail!("rapport ({}) did not stop cleanly; its log is {}", contender.tag(), log.display());
    }
    Ok(Row {
        contender,
        events: total,
        seconds: first.map_or(0.0, |f| (done - f).as_secs_f64()),
        cpu_seconds: u.cpu_seconds,
        peak_rss: u.peak_rss,
        latency: None,
    })
}

/// rapport in embedded mode on the events file, a child process, to its end.
fn run_embedded(cfg: &Config, contender: Contender, file: &Path, total: u64, dir: &Path) -> Result<(Row, PathBuf)> {
    let mut c = Config::defaults();
    c.engine = cfg.engine.clone();
    c.engine.timer_clock = TimerClock::Event;
    c.store = cfg.store.clone();
    c.store.data_dir = dir.join(format!("data-{}", contender.tag()));
    c.pipeline = cfg.pipeline.clone();
    c.scorecard = cfg.scorecard.clone();
    c.alerts = cfg.alerts.clone();
    c.telemetry.listen = String::new();
    c.embedded.input = file.display().to_string();
    let outputs = dir.join(format!("out-{}", contender.tag()));
    c.embedded.output_dir = outputs.clone();
    let t0 = Instant::now();
    let (child, log) = spawn_self(&["run", "--quiet"], &c, dir, contender.tag(), std::process::Stdio::null())?;
    let u = wait_usage(&child, PeakRss::watch(&child))?;
    let secs = t0.elapsed().as_secs_f64();
    if u.exit != Some(0) {
        bail!("rapport ({}) failed; its log is {}", contender.tag(), log.display());
    }
    Ok((
        Row {
            contender,
            events: total,
            seconds: secs,
            cpu_seconds: u.cpu_seconds,
            peak_rss: u.peak_rss,
            latency: None,
        },
        outputs,
    ))
}

/// The Kafka Streams peer's command line for `cfg`'s topics.
fn peer_command(peer: &Path, cfg: &Config, contender: Contender, expect: u64, state: &Path) -> std::process::Command {
    let k = &cfg.kafka;
    let guarantee = if contender == Contender::StreamsEos { "exactly_once_v2" } else { "at_least_once" };
    let mut cmd = std::process::Command::new(peer);
    cmd.arg("run")
        .args(["--bootstrap", &k.brokers])
        .args(["--application-id", &k.group_id])
        .args(["--product-usage-topic", &k.input_topics.product_usage])
        .args(["--email-topic", &k.input_topics.email])
        .args(["--call-topic", &k.input_topics.call])
        .args(["--deal-topic", &k.input_topics.deal])
        .args(["--health-topic", &k.output_topics.health_scores])
        .args(["--alerts-topic", &k.output_topics.churn_alerts])
        .args(["--guarantee", guarantee])
        .arg("--state-dir")
        .arg(state)
        .args(["--expect", &expect.to_string()])
        .args(["--timeout", "7200"]);
    cmd
}

fn peer_topics(cfg: &Config, contender: Contender) -> Result<Config> {
    let c = with_outputs(cfg, contender.tag());
    let o = &c.kafka.output_topics;
    let n = c.engine.partitions as i32;
    crate::topics::create_named(&c, &[(o.health_scores.clone(), n), (o.churn_alerts.clone(), n)], &[])?;
    Ok(c)
}

/// The Kafka Streams peer to completion (it exits once it has processed and committed
/// `total` records, and says how long that took from its first record).
fn run_peer(peer: &Path, cfg: &Config, contender: Contender, total: u64, dir: &Path) -> Result<(Row, Config)> {
    let c = peer_topics(cfg, contender)?;
    let log = dir.join(format!("{}.log", contender.tag()));
    let mut child = peer_command(peer, &c, contender, total, &dir.join(format!("state-{}", contender.tag())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting the Kafka Streams peer {}", peer.display()))?;
    let peak = PeakRss::watch(&child);
    let v = last_json_line(&mut child);
    let u = wait_usage(&child, peak)?;
    if u.exit != Some(0) {
        bail!("the Kafka Streams peer ({}) failed; its log is {}", contender.tag(), log.display());
    }
    let v = v.with_context(|| format!("the Kafka Streams peer's log is {}", log.display()))?;
    Ok((
        Row {
            contender,
            events: v["records"].as_u64().unwrap_or(0),
            seconds: v["seconds"].as_f64().unwrap_or(0.0),
            cpu_seconds: u.cpu_seconds,
            peak_rss: u.peak_rss,
            latency: None,
        },
        c,
    ))
}

/// A consumer context for which reaching a partition's end is expected, not an error to log.
struct EndsExpected;

impl rdkafka::ClientContext for EndsExpected {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        if !matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::warn!(error = %error, reason, "Kafka client error while reading back outputs.");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndsExpected {}

/// Every record of a topic, read from its start to its end as of now (committed ones only:
/// the end of a partition is where librdkafka reports it, past any transaction markers).
fn read_topic(cfg: &Config, topic: &str) -> Result<Vec<Vec<u8>>> {
    let mut c = client_config(cfg);
    c.set("group.id", format!("{}-check", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    let reader: BaseConsumer<EndsExpected> = c.create_with_context(EndsExpected)?;
    let md = reader.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut open = std::collections::HashSet::new();
    for p in md.topics().first().map(|t| t.partitions()).unwrap_or(&[]) {
        open.insert(p.id());
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    let mut out = Vec::new();
    if open.is_empty() {
        bail!("topic {topic} has no partitions");
    }
    reader.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while !open.is_empty() {
        if Instant::now() > deadline {
            bail!("reading {topic} to its end took more than 10 minutes");
        }
        match reader.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                if let Some(p) = m.payload() {
                    out.push(p.to_vec());
                }
            }
        }
    }
    Ok(out)
}

/// An alert as the comparison sees it: (account, rule, status, opened_at).
type AlertKey = (String, String, String, String);

fn alert_keys<'a>(records: impl Iterator<Item = &'a [u8]>) -> std::collections::BTreeMap<AlertKey, u32> {
    let mut m = std::collections::BTreeMap::new();
    for r in records {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(r) else { continue };
        let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        *m.entry((s("account_id"), s("rule"), s("status"), s("opened_at"))).or_insert(0) += 1;
    }
    m
}

/// Alerts in `ours` and not in `theirs` and the other way round (repeats of one alert count
/// once: at-least-once may repeat an output).
fn alert_difference(
    ours: &std::collections::BTreeMap<AlertKey, u32>,
    theirs: &std::collections::BTreeMap<AlertKey, u32>,
) -> (Vec<AlertKey>, Vec<AlertKey>) {
    let only_ours = ours.keys().filter(|k| !theirs.contains_key(*k)).cloned().collect();
    let only_theirs = theirs.keys().filter(|k| !ours.contains_key(*k)).cloned().collect();
    (only_ours, only_theirs)
}

#[derive(Debug, Clone)]
pub struct Latency {
    pub rate: f64,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Seconds of input at the measured rate before latency is measured.
const WARM_UP_SECONDS: f64 = 5.0;

/// Replays the benchmark's events, restamped with the wall clock, at `rate` per second to
/// `cfg`'s input topics while a contender runs live on them. One event in a hundred is a probe:
/// the first usage event of a new account, which yields that account's first health score with
/// `as_of` = the event's time. Latency = when the score is read from the output topic − `as_of`.
/// Probes are sent until the first one comes back (the contender is live), then for
/// [`WARM_UP_SECONDS`] at `rate` without being counted, then for `seconds`.
fn latency_phase(cfg: &Config, events: &[crate::domain::event::Event], rate: f64, seconds: u64, alive: &mut dyn FnMut() -> Result<()>) -> Result<Latency> {
    let mut c = client_config(cfg);
    c.set("group.id", format!("{}-latency", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The broker answers a fetch as soon as a record is there; a short wait only adds
        // empty requests to the broker that shares the cores with the contender.
        .set("fetch.wait.max.ms", "100");
    let reader: BaseConsumer = c.create()?;
    reader.subscribe(&[cfg.kafka.output_topics.health_scores.as_str()])?;
    let mut pc = client_config(cfg);
    // The clients' default linger (5 ms), counted in the latency. With none, every event was a
    // produce request of its own: at 5,000 events/s the broker, on the same two cores, took
    // most of a core, and the contenders' p99 went from 25-83 ms to 140-1,150 ms.
    pc.set("partitioner", "murmur2_random").set("linger.ms", "5").set("acks", "all");
    let producer: ThreadedProducer<DefaultProducerContext> = pc.create()?;
    let t = &cfg.kafka.input_topics;
    let send = |i: u64, probe: bool| -> bool {
        let now = app::wall_now_ms();
        let (topic, key, payload) = if probe {
            let account = format!("lat-{i}");
            let line = format!(
                r#"{{"event_id":"lat-{i}","account_id":"{account}","occurred_at":"{}","type":"product_usage","user_id":"u1","feature":"reports.export"}}"#,
                crate::codec::time::format_rfc3339_ms(now)
            );
            (&t.product_usage, account, line.into_bytes())
        } else {
            let mut ev = events[i as usize % events.len()].clone();
            ev.occurred_at_ms = now;
            ev.event_id = format!("live-{i}");
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
        producer.send(r).is_ok()
    };
    // The probe's first score, as (probe number, latency in ms).
    let probe_of = |m: &rdkafka::message::BorrowedMessage<'_>| -> Option<(u64, f64)> {
        let now = app::wall_now_ms();
        let p = m.payload()?;
        memchr::memmem::find(p, b"\"lat-")?;
        let v: serde_json::Value = serde_json::from_slice(p).ok()?;
        if !v["previous_score"].is_null() {
            return None;
        }
        let i = v["account_id"].as_str()?.strip_prefix("lat-")?.parse().ok()?;
        let t = v["as_of"].as_str().and_then(crate::codec::time::parse_rfc3339_ms)?;
        Some((i, (now - t) as f64))
    };
    // Warm-up: one probe every 200 ms until one comes back.
    let warm = Instant::now();
    let mut i = 0u64;
    'warm: loop {
        alive()?;
        if warm.elapsed() > Duration::from_secs(180) {
            bail!("no probe came back within 3 minutes: the contender is not reading its inputs");
        }
        if !send(i, true) {
            continue;
        }
        i += 1;
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(20)) {
                if probe_of(&m).is_some() {
                    break 'warm;
                }
            }
        }
    }
    let first_measured = 1_000_000_000u64;
    // The reader drains the score topic on its own thread, so that what is measured is the
    // contender's delay and not the reader's.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader_thread = {
        let (stop, got) = (Arc::clone(&stop), Arc::clone(&got));
        std::thread::spawn(move || {
            let mut lat_ms: Vec<f64> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(Ok(m)) = reader.poll(Duration::from_millis(20)) else { continue };
                if let Some((i, ms)) = probe_of(&m) {
                    if i >= first_measured {
                        lat_ms.push(ms);
                        got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            lat_ms
        })
    };
    // Then WARM_UP_SECONDS at the measured rate whose probes are not counted: the broker's and
    // the peer's JITs are still compiling when the first probe comes back (without it, a broker
    // just started gave p50 480 ms at 10,000 events/s where a warm one gives 17 ms).
    let warm_n = (rate * WARM_UP_SECONDS) as u64;
    let n = (rate * seconds as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut last_check = Instant::now();
    while sent < warm_n + n {
        let due = start + interval.mul_f64(sent as f64);
        let now = Instant::now();
        if now < due {
            std::thread::sleep((due - now).min(Duration::from_millis(1)));
            continue;
        }
        if last_check.elapsed() > Duration::from_secs(1) {
            alive()?;
            last_check = Instant::now();
        }
        let id = match sent.checked_sub(warm_n) {
            Some(m) => first_measured + m,
            None => first_measured / 2 + sent,
        };
        if send(id, id % 100 == 0) {
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    // The last probes' scores: wait until they are in or 10 s have passed.
    let expected = n.div_ceil(100) as usize;
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_secs(10)
        && got.load(std::sync::atomic::Ordering::Relaxed) < expected
        && !reader_thread.is_finished()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut lat_ms = reader_thread.join().map_err(|_| anyhow::anyhow!("the latency reader panicked"))?;
    if lat_ms.is_empty() {
        bail!("no health scores came back for the latency probes");
    }
    if lat_ms.len() < expected / 2 {
        bail!(
            "only {} of {expected} probes came back: the contender cannot keep up with {rate:.0} events/s",
            lat_ms.len()
        );
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

/// A latency measurement on fresh, empty input topics, with the contender started live on
/// them (rapport: wall-clock timers, as in production).
fn measure_latency(
    b: &KafkaBench,
    base: &Config,
    contender: Contender,
    events: &[crate::domain::event::Event],
    rate: f64,
    dir: &Path,
    topics: &mut Vec<String>,
) -> Result<Latency> {
    // One directory per contender and rate: a store is bound to the topics it was made for.
    let live_dir = dir.join(format!("live-{}-{rate:.0}", contender.tag()));
    std::fs::create_dir_all(&live_dir)?;
    let cfg = with_outputs(
        &with_inputs(base, &format!("live-{}-{}", contender.tag(), app::wall_now_ms())),
        contender.tag(),
    );
    crate::topics::create_named(&cfg, &input_topics(&cfg), &[])?;
    if !contender.is_peer() {
        crate::topics::create(&cfg)?;
    }
    topics.extend(topic_names(&cfg));
    if contender.is_peer() {
        let c = peer_topics(&cfg, contender)?;
        let log = live_dir.join("peer.log");
        let mut child = peer_command(&b.peer, &c, contender, u64::MAX / 2, &live_dir.join("state"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut alive = || -> Result<()> {
            if let Some(s) = child.try_wait()? {
                bail!("the Kafka Streams peer exited ({s}); its log is {}", log.display());
            }
            Ok(())
        };
        let lat = latency_phase(&c, events, rate, b.latency_seconds, &mut alive);
        let _ = child.kill();
        let _ = child.wait();
        lat
    } else {
        let mut c = cfg.clone();
        let port = free_port()?;
        c.telemetry.listen = format!("127.0.0.1:{port}");
        c.store.data_dir = live_dir.join("data");
        c.kafka.create_topics = true;
        c.engine.timer_clock = TimerClock::Wall;
        let (mut child, log) = spawn_self(&["run", "--quiet"], &c, &live_dir, "rapport", std::process::Stdio::null())?;
        let mut alive = || -> Result<()> {
            if let Some(s) = child.try_wait()? {
                bail!("rapport exited during the latency run ({s}); its log is {}", log.display());
            }
            Ok(())
        };
        let lat = latency_phase(&c, events, rate, b.latency_seconds, &mut alive);
        terminate(&child);
        let _ = child.wait();
        lat
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1 << 20) as f64)
}

/// The table of `rows`: ratios to the raw-consume row when there is one.
pub fn table(rows: &[Row]) -> Table {
    let raw = rows.iter().find(|r| r.contender == Contender::Raw).map(Row::events_per_second);
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "contender",
        "events",
        "seconds",
        "events/s",
        "CPU s per M events",
        "peak RSS MiB",
        "latency p50 / p99 ms",
        "ratio to raw",
    ]);
    let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
    for r in rows {
        let eps = r.events_per_second();
        t.add_row(vec![
            Cell::new(r.contender.label()),
            right(r.events.to_string()),
            right(format!("{:.2}", r.seconds)),
            right(format!("{eps:.0}")),
            right(format!("{:.1}", r.cpu_seconds / (r.events.max(1) as f64 / 1e6))),
            right(mib(r.peak_rss)),
            right(r.latency.as_ref().map_or("—".into(), |l| format!("{:.0} / {:.0}", l.p50_ms, l.p99_ms))),
            right(raw.map_or("—".into(), |raw| format!("{:.2}", eps / raw))),
        ]);
    }
    t
}

/// Latency against input rate: one row per contender and rate.
pub fn latency_table(curve: &[(Contender, f64, Option<Latency>)]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_header(vec!["contender", "input events/s", "p50 ms", "p99 ms", "max ms", "probes back"]);
    let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
    for (c, rate, l) in curve {
        let mut cells = vec![Cell::new(c.label()), right(format!("{rate:.0}"))];
        match l {
            Some(l) => cells.extend([
                right(format!("{:.0}", l.p50_ms)),
                right(format!("{:.0}", l.p99_ms)),
                right(format!("{:.0}", l.max_ms)),
                right(l.samples.to_string()),
            ]),
            // (The reason was printed as it happened.)
            None => cells.extend(["—", "—", "—", "not measured"].map(|x| right(x.into()))),
        }
        t.add_row(cells);
    }
    t
}

/// The outcome of one `rapport bench kafka` run.
pub struct KafkaBenchResult {
    pub rows: Vec<Row>,
    /// (contender, alerts only rapport raised, alerts only the contender raised, rapport's count).
    pub alert_checks: Vec<(Contender, usize, usize, usize)>,
}

/// `rapport bench kafka`: on the local broker and the same pre-produced topic data, runs each
/// contender to completion (each with its own group, state and output topics), then measures
/// each one's event-to-output latency at one fixed input rate, and checks that every rapport
/// row and the Kafka Streams peer raised the same alerts as the embedded run.
pub fn kafka(base: &Config, b: &KafkaBench, out: &mut dyn std::io::Write) -> Result<KafkaBenchResult> {
    let mut contenders = b.contenders.clone();
    contenders.sort();
    contenders.dedup();
    if contenders.iter().any(|c| c.is_peer()) && !b.peer.exists() {
        bail!(
            "the Kafka Streams peer's launcher {} does not exist; run from the repository root or pass --peer benches/peers/kafka-streams/run.sh",
            b.peer.display()
        );
    }
    let dir = tempfile::Builder::new().prefix("rapport-bench-").tempdir_in(std::env::temp_dir())?;
    match kafka_in(dir.path(), base, &contenders, b, out) {
        Ok(r) => Ok(r),
        // The logs an error points to are kept.
        Err(e) => {
            let kept = dir.keep();
            Err(e.context(format!("the bench's files are kept in {} (delete it when done)", kept.display())))
        }
    }
}

fn kafka_in(
    dir: &Path,
    base: &Config,
    contenders: &[Contender],
    b: &KafkaBench,
    out: &mut dyn std::io::Write,
) -> Result<KafkaBenchResult> {
    let mut base = base.clone();
    base.mode = crate::config::Mode::Kafka;
    base.telemetry.listen = String::new();
    base.kafka.output_partitions = base.engine.partitions as u32;
    let stamp = app::wall_now_ms();
    let json = with_inputs(&base, &format!("bench-{stamp}"));
    let mut topics = Vec::new();
    let (file, total) = generate_events(b.accounts, b.events, dir)?;
    writeln!(out, "Generated {total} events ({} accounts).", b.accounts)?;
    // Only what a contender reads goes to the broker (embedded alone needs no topic at all).
    let proto = with_inputs(&base, &format!("bench-{stamp}-pb"));
    for (cfg, format, name, wanted) in [
        (&json, WireFormat::Json, "JSON", contenders.iter().any(|c| c.reads_kafka_json())),
        (&proto, WireFormat::Protobuf, "protobuf", contenders.iter().any(|c| c.reads_protobuf())),
    ] {
        if wanted {
            crate::topics::create_named(cfg, &input_topics(cfg), KEEP)?;
            topics.extend(topic_names(cfg));
            let t0 = Instant::now();
            app::produce(cfg, &file, format, true)?;
            writeln!(out, "Produced them as {name} in {:.1} s.", t0.elapsed().as_secs_f64())?;
        }
    }

    let mut rows = Vec::new();
    // The embedded runs' alerts, in contender order: the first is the reference.
    let mut file_alerts: Vec<(Contender, std::collections::BTreeMap<AlertKey, u32>)> = Vec::new();
    let mut to_check: Vec<(Contender, Config)> = Vec::new();
    // Application ids of the peer runs: their internal topics are deleted at the end too.
    let mut peer_apps: Vec<String> = Vec::new();
    for &c in contenders {
        writeln!(out, "Running: {} …", c.label())?;
        let row = match c {
            Contender::Raw => run_raw(&json, total, dir)?,
            Contender::KafkaJson | Contender::KafkaProtobuf => {
                let inputs = if c.reads_protobuf() { &proto } else { &json };
                let row = run_rapport_kafka(inputs, c, total, dir)?;
                let outs = with_outputs(inputs, c.tag());
                topics.extend(topic_names(&outs));
                to_check.push((c, outs));
                row
            }
            Contender::Embedded | Contender::EmbeddedProtobuf => {
                let input = match c {
                    Contender::EmbeddedProtobuf => {
                        let pb = dir.join("events.pb");
                        ndjson_to_protobuf(&file, &pb)?;
                        pb
                    }
                    _ => file.clone(),
                };
                let (row, outputs) = run_embedded(&json, c, &input, total, dir)?;
                let text = std::fs::read(outputs.join("churn_alerts.ndjson"))?;
                file_alerts.push((c, alert_keys(text.split(|&b| b == b'\n').filter(|l| !l.is_empty()))));
                row
            }
            Contender::StreamsAlos | Contender::StreamsEos => {
                let (row, outs) = run_peer(&b.peer, &json, c, total, dir)?;
                topics.extend(topic_names(&outs));
                peer_apps.push(outs.kafka.group_id.clone());
                to_check.push((c, outs));
                row
            }
        };
        writeln!(out, "  {} events in {:.2} s: {:.0} events/s.", row.events, row.seconds, row.events_per_second())?;
        rows.push(row);
    }

    // Alerts: every contender against the embedded run (or, without one, against rapport in
    // Kafka mode on JSON).
    let mut alert_checks = Vec::new();
    let mut file_alerts = file_alerts.into_iter();
    let (mut reference, mut reference_name) = match file_alerts.next() {
        Some((Contender::EmbeddedProtobuf, keys)) => (Some(keys), "rapport's embedded protobuf run"),
        Some((_, keys)) => (Some(keys), "rapport's embedded run"),
        None => (None, ""),
    };
    if reference.is_none() {
        reference_name = "rapport's Kafka-mode JSON run";
        if let Some(i) = to_check.iter().position(|(c, _)| *c == Contender::KafkaJson) {
            let (_, cfg) = to_check.remove(i);
            let recs = read_topic(&cfg, &cfg.kafka.output_topics.churn_alerts)?;
            reference = Some(alert_keys(recs.iter().map(Vec::as_slice)));
        }
    }
    if let Some(reference) = &reference {
        let mut theirs_of: Vec<_> = file_alerts.collect();
        for (c, cfg) in &to_check {
            let recs = read_topic(cfg, &cfg.kafka.output_topics.churn_alerts)?;
            theirs_of.push((*c, alert_keys(recs.iter().map(Vec::as_slice))));
        }
        for (c, theirs) in &theirs_of {
            let (only_ours, only_theirs) = alert_difference(reference, theirs);
            alert_checks.push((*c, only_ours.len(), only_theirs.len(), reference.len()));
            for k in only_ours.iter().take(3) {
                writeln!(out, "  only rapport: {k:?}")?;
            }
            for k in only_theirs.iter().take(3) {
                writeln!(out, "  only {}: {k:?}", c.tag())?;
            }
        }
    }

    // Latency at each fixed rate for every contender that produces outputs.
    let mut curve: Vec<(Contender, f64, Option<Latency>)> = Vec::new();
    if b.latency_seconds > 0 {
        let max = rows
            .iter()
            .find(|r| r.contender == Contender::KafkaJson)
            .map(|r| r.events_per_second());
        let given = if b.latency_rate.is_empty() {
            vec![max.map_or(5000.0, |m| m / 2.0)]
        } else {
            b.latency_rate.clone()
        };
        let rates: Vec<f64> = given.into_iter().map(|r| r.max(100.0)).collect();
        let top = rates.iter().copied().fold(0.0, f64::max);
        use std::io::BufRead;
        // Decoded once for every latency run: decoding each line as it was sent took a tenth of
        // a core at 60,000 events/s, on the cores the contender is measured on.
        let limits = crate::codec::DecodeLimits::NONE;
        let mut events = Vec::new();
        for line in std::io::BufReader::new(std::fs::File::open(&file)?)
            .split(b'\n')
            .take(((top * b.latency_seconds as f64) as usize + 1).min(2_000_000))
        {
            events.extend(crate::codec::json::decode_json(&line?, &limits).ok());
        }
        if events.is_empty() {
            bail!("the benchmark's events hold no valid event to replay for the latency measurement");
        }
        for row in rows.iter_mut() {
            if row.contender == Contender::Raw || row.contender.is_embedded() {
                continue;
            }
            for (i, &rate) in rates.iter().enumerate() {
                writeln!(out, "Latency at {rate:.0} events/s for {} s: {} …", b.latency_seconds, row.contender.label())?;
                match measure_latency(b, &base, row.contender, &events, rate, dir, &mut topics) {
                    Ok(l) => {
                        writeln!(out, "  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} probes).", l.p50_ms, l.p99_ms, l.max_ms, l.samples)?;
                        if i == 0 {
                            row.latency = Some(l.clone());
                        }
                        curve.push((row.contender, rate, Some(l)));
                    }
                    Err(e) => {
                        writeln!(out, "  not measured: {e:#}")?;
                        curve.push((row.contender, rate, None));
                    }
                }
            }
        }
    }

    writeln!(out, "{}", table(&rows))?;
    writeln!(
        out,
        "Seconds: from each contender's first record read to its last one processed with every output acknowledged (embedded: the whole run). CPU: the whole process, start-up included. Latency: event to health-score output read back, at one input rate for all (the first one given)."
    )?;
    if curve.iter().map(|(_, r, _)| r.to_bits()).collect::<std::collections::BTreeSet<_>>().len() > 1 {
        writeln!(out, "{}", latency_table(&curve))?;
    }
    for (c, only_ours, only_theirs, n) in &alert_checks {
        if *only_ours == 0 && *only_theirs == 0 {
            writeln!(out, "Alerts of {}: the same {n} as {reference_name}.", c.label())?;
        } else {
            writeln!(
                out,
                "Alerts of {}: {only_ours} of the {n} of {reference_name} missing, {only_theirs} that it did not raise.",
                c.label()
            )?;
        }
    }
    // Clean-up: the benchmark's topics, and the peer's internal ones (named after its
    // application id, the group id here).
    if !peer_apps.is_empty() {
        let c: BaseConsumer = client_config(&base).create()?;
        if let Ok(md) = c.fetch_metadata(None, Duration::from_secs(10)) {
            for t in md.topics() {
                if peer_apps.iter().any(|a| t.name().starts_with(&format!("{a}-"))) {
                    topics.push(t.name().to_owned());
                }
            }
        }
    }
    topics.sort();
    topics.dedup();
    if !topics.is_empty() {
        if let Err(e) = crate::topics::delete(&base, &topics) {
            writeln!(out, "Could not delete the benchmark's topics: {e}")?;
        }
    }
    Ok(KafkaBenchResult { rows, alert_checks })
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
        let port = free_port()?;
        let mut c = cfg.clone();
        c.store.data_dir = dir.join(format!("data-{tag}"));
        c.telemetry.listen = format!("127.0.0.1:{port}");
        c.kafka.client_id = format!("rapport-bench-{tag}");
        c.kafka.create_topics = false;
        let (child, log) = spawn_self(&["run", "--quiet"], &c, dir, tag, std::process::Stdio::null())?;
        Ok(Instance { child, port, log })
    }

    fn get(&self, path: &str) -> Option<String> {
        get(self.port, path)
    }

    /// A counter or gauge, summed over its label sets.
    fn metric(&self, name: &str) -> Option<f64> {
        metric(self.port, name)
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

// --- rapport bench curve ------------------------------------------------------------------------

/// One point of a curve's CSV: accounts, events, contender tag, events/s, peak RSS MiB.
pub type CurvePoint = (u64, u64, String, f64, f64);

/// The points of a CSV that `bench curve` wrote.
pub fn read_curve_csv(path: &Path) -> Result<Vec<CurvePoint>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || anyhow::anyhow!("{} line {}: expected accounts,events,contender,events_per_second,cpu_seconds_per_million,peak_rss_mib (as `rapport bench curve` writes it)", path.display(), i + 1);
        if f.len() != 6 {
            return Err(bad());
        }
        let num = |s: &str| s.parse::<f64>().map_err(|_| bad());
        points.push((num(f[0])? as u64, num(f[1])? as u64, f[2].to_owned(), num(f[3])?, num(f[5])?));
    }
    Ok(points)
}

/// The curve as an SVG image: for each event count, events/s and peak RSS against accounts
/// (both axes logarithmic), one line per contender.
pub fn plot_curve(points: &[CurvePoint], out: &Path) -> Result<()> {
    use plotters::prelude::*;
    let mut event_counts: Vec<u64> = points.iter().map(|p| p.1).collect();
    event_counts.sort_unstable();
    event_counts.dedup();
    if event_counts.is_empty() {
        bail!("the curve has no points to plot");
    }
    let mut tags: Vec<&str> = Vec::new();
    for p in points {
        if !tags.contains(&p.2.as_str()) {
            tags.push(&p.2);
        }
    }
    let root = SVGBackend::new(out, (1000, 420 * event_counts.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let rows = root.split_evenly((event_counts.len(), 2));
    let span = |v: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = v.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
        (lo / 1.5, hi * 1.5)
    };
    for (row, &events) in event_counts.iter().enumerate() {
        let here: Vec<&CurvePoint> = points.iter().filter(|p| p.1 == events).collect();
        let (a_lo, a_hi) = span(&mut here.iter().map(|p| p.0 as f64));
        for (col, (what, value)) in [
            ("events/s", &(|p: &CurvePoint| p.3) as &dyn Fn(&CurvePoint) -> f64),
            ("peak RSS, MiB", &|p: &CurvePoint| p.4),
        ]
        .into_iter()
        .enumerate()
        {
            let (v_lo, v_hi) = span(&mut here.iter().map(|p| value(p).max(1.0)));
            // Headroom above the highest point for the legend.
            let v_hi = v_hi * 6.0;
            let area = &rows[row * 2 + col];
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{what}, {events} events"), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d((a_lo..a_hi).log_scale(), (v_lo..v_hi).log_scale())?;
            chart
                .configure_mesh()
                .x_desc("accounts")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()?;
            for (i, tag) in tags.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let mut line: Vec<(f64, f64)> = here
                    .iter()
                    .filter(|p| p.2 == *tag)
                    .map(|p| (p.0 as f64, value(p).max(1.0)))
                    .collect();
                line.sort_by(|a, b| a.0.total_cmp(&b.0));
                if line.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                    .label(*tag)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
                chart.draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

pub struct CurveBench {
    pub accounts: Vec<usize>,
    pub events: Vec<u64>,
    pub contenders: Vec<Contender>,
    pub peer: PathBuf,
    pub csv: PathBuf,
    /// Where to draw the curve as SVG (redrawn after every size), if anywhere.
    pub plot: Option<PathBuf>,
}

/// `rapport bench curve`: `bench kafka` (no latency phase) at every size; one table of
/// events/s and peak RSS per contender and size, each contender's throughput also as a ratio to
/// its own at the smallest account count with the same event count; the same figures as CSV.
pub fn curve(base: &Config, c: &CurveBench, out: &mut dyn std::io::Write) -> Result<()> {
    let mut points: Vec<(usize, u64, Vec<Row>)> = Vec::new();
    let mut csv = String::from("accounts,events,contender,events_per_second,cpu_seconds_per_million,peak_rss_mib\n");
    for &events in &c.events {
        for &accounts in &c.accounts {
            writeln!(out, "== {accounts} accounts, {events} events ==")?;
            let b = KafkaBench {
                accounts,
                events,
                contenders: c.contenders.clone(),
                latency_seconds: 0,
                latency_rate: Vec::new(),
                peer: c.peer.clone(),
            };
            let r = kafka(base, &b, out)?;
            for row in &r.rows {
                csv.push_str(&format!(
                    "{accounts},{events},{},{:.0},{:.2},{:.0}\n",
                    row.contender.tag(),
                    row.events_per_second(),
                    row.cpu_seconds / (row.events.max(1) as f64 / 1e6),
                    row.peak_rss as f64 / (1 << 20) as f64
                ));
            }
            std::fs::write(&c.csv, &csv)?;
            if let Some(svg) = &c.plot {
                plot_curve(&read_curve_csv(&c.csv)?, svg)?;
            }
            points.push((accounts, events, r.rows));
        }
    }
    let mut contenders = c.contenders.clone();
    contenders.sort();
    contenders.dedup();
    let mut t = Table::new();
    let mut header = vec!["accounts".to_owned(), "events".to_owned()];
    for k in &contenders {
        header.push(format!("{} events/s (ratio) · RSS MiB", k.tag()));
    }
    t.load_style(UTF8_FULL_CONDENSED).set_header(header);
    let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
    for (accounts, events, rows) in &points {
        let smallest = points
            .iter()
            .filter(|(_, e, _)| e == events)
            .min_by_key(|(a, _, _)| *a)
            .map(|(_, _, r)| r);
        let mut cells = vec![right(accounts.to_string()), right(events.to_string())];
        for k in &contenders {
            let row = rows.iter().find(|r| r.contender == *k);
            let base_eps = smallest
                .and_then(|rs| rs.iter().find(|r| r.contender == *k))
                .map(Row::events_per_second);
            cells.push(right(row.map_or("—".into(), |r| {
                format!(
                    "{:.0} ({}) · {}",
                    r.events_per_second(),
                    base_eps.map_or("—".into(), |b| format!("{:.2}", r.events_per_second() / b)),
                    mib(r.peak_rss)
                )
            })));
        }
        t.add_row(cells);
    }
    writeln!(out, "{t}")?;
    writeln!(
        out,
        "Ratio: events/s against the same contender at the fewest accounts with the same event count. CSV: {}{}",
        c.csv.display(),
        c.plot.as_ref().map_or(String::new(), |p| format!("; plot: {}", p.display()))
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_table_has_a_row_per_contender_and_rate_and_marks_the_unmeasured() {
        let l = |p50_ms, p99_ms, samples| Latency { rate: 0.0, samples, p50_ms, p99_ms, max_ms: p99_ms + 1.0 };
        let curve = vec![
            (Contender::KafkaJson, 10000.0, Some(l(17.0, 49.0, 1500))),
            (Contender::KafkaJson, 30000.0, Some(l(18.0, 87.0, 4500))),
            (Contender::StreamsAlos, 60000.0, None),
        ];
        let text = latency_table(&curve).to_string();
        let rows: Vec<&str> = text.lines().filter(|l| l.contains('┆') && !l.contains("contender")).collect();
        assert_eq!(rows.len(), 3, "{text}");
        assert!(rows[0].contains("10000") && rows[0].contains("49") && rows[0].contains("1500"), "{text}");
        assert!(rows[1].contains("30000") && rows[1].contains("87") && rows[1].contains("4500"), "{text}");
        assert!(rows[2].contains(Contender::StreamsAlos.label()) && rows[2].contains("not measured"), "{text}");
    }

    #[test]
    fn a_curve_csv_is_drawn_with_every_contender_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("c.csv");
        std::fs::write(
            &csv,
            "accounts,events,contender,events_per_second,cpu_seconds_per_million,peak_rss_mib\n\
             10000,1000000,json,319476,5.23,558\n100000,1000000,json,196796,8.50,970\n\
             10000,1000000,ks-alos,23501,57.47,1098\n100000,1000000,ks-alos,29824,54.28,1499\n\
             10000,10000000,json,150000,9.0,900\n",
        )
        .unwrap();
        let points = read_curve_csv(&csv).unwrap();
        assert_eq!(points.len(), 5);
        assert_eq!(points[1], (100000, 1000000, "json".to_owned(), 196796.0, 970.0));
        let svg = dir.path().join("c.svg");
        plot_curve(&points, &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(80)]);
        for label in ["json", "ks-alos", "events/s, 1000000 events", "peak RSS, MiB, 10000000 events"] {
            assert!(text.contains(label), "{label} is not drawn");
        }
        std::fs::write(&csv, "accounts,events\n10000,notanumber,json,1,2,3\n").unwrap();
        let e = read_curve_csv(&csv).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("rapport bench curve"), "{e}");
    }

    #[test]
    fn vm_hwm_is_read_from_proc_status() {
        let status = "Name:\trapport\nVmPeak:\t 2276056 kB\nVmHWM:\t  102972 kB\nVmRSS:\t   90000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(102_972));
        assert_eq!(vm_hwm_kib("Name:\tzombie\nState:\tZ (zombie)\n"), None);
    }

    #[test]
    fn a_childs_peak_is_its_own_not_the_parents_at_fork() {
        // This process holds 256 MiB, touched; a child started now must not be reported that big.
        let big = vec![1u8; 256 << 20];
        // The child lives until the watcher has looked at it (`cat` ends when its stdin is
        // closed): a child that lives a fixed time can be gone before the watcher's first look
        // on a busy machine.
        let mut child = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let peak = PeakRss::watch(&child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while peak.peak_kib.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the watcher never read the child's peak");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(child.stdin.take());
        let u = wait_usage(&child, peak).unwrap();
        assert_eq!(u.exit, Some(0));
        assert!(u.peak_rss > 0, "the child's peak was never sampled");
        assert!(
            u.peak_rss < 64 << 20,
            "a sleeping child reported {} MiB (the parent holds {} MiB)",
            u.peak_rss >> 20,
            big.len() >> 20
        );
        assert_eq!(big.iter().map(|&b| b as u64).sum::<u64>(), big.len() as u64);
    }
}
