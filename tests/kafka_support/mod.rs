//! Helpers for the Kafka tests (`tests/kafka.rs`): the broker they run against, one disposable
//! job per test (its own topics, consumer group, data dirs, config file and metrics port), child
//! `rapport` processes that are stopped by signal and never outlive a failed test, the `/metrics`
//! endpoint read by polling, producers and readers of real topics, and the order-independent view
//! of a store that Kafka runs are compared on.
//!
//! Why order-independent: a Kafka instance consumes its four input topics in an interleaving
//! that changes from run to run, so two correct runs do not hold byte-identical states. What does
//! not depend on that interleaving (with `engine.allowed_lateness_secs` large, so that nothing is
//! late, and no event older than the 90 days of buckets an account keeps) is compared: the record
//! accounting, each account's daily buckets, and its first/last event times.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rapport::pb::{AccountState, Counters};
use rapport::store::keys::COUNTERS_KEY;
use rapport::store::{Cf, RocksStore, Store};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

pub const BIN: &str = env!("CARGO_BIN_EXE_rapport");

/// How long the polls below wait for a condition before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polling interval of every wait.
const TICK: Duration = Duration::from_millis(20);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

// --- the broker ----------------------------------------------------------------------------

/// The shared test broker (`RAPPORT_TEST_KAFKA`, default 127.0.0.1:9092), checked once: a test
/// that cannot reach it fails, saying how to start one.
pub fn broker() -> String {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let addr = std::env::var("RAPPORT_TEST_KAFKA")
                .ok()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "127.0.0.1:9092".to_owned());
            reachable(&addr, Duration::from_secs(10))
                .map(|()| addr.clone())
                .map_err(|e| {
                    format!(
                        "cannot reach the Kafka broker at {addr} (RAPPORT_TEST_KAFKA): {e}.\n\
                         The Kafka tests run against a real broker and never skip. Start one with \
                         `deploy/local/kafka.sh start` (then `cargo test --release --test kafka`), \
                         or run `./dev.sh test`, which starts it for you."
                    )
                })
        })
        .clone()
        .unwrap_or_else(|msg| panic!("{msg}"))
}

/// Ok once the broker at `addr` answers a metadata request within `timeout`.
pub fn reachable(addr: &str, timeout: Duration) -> Result<(), String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("log_level", "0")
        .create()
        .map_err(|e| e.to_string())?;
    c.fetch_metadata(None, timeout)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A broker of its own for one test (`deploy/local/kafka.sh` with its own data dir and ports),
/// stopped when dropped.
pub struct OwnBroker {
    pub dir: PathBuf,
    pub port: u16,
    pub controller_port: u16,
    log: PathBuf,
}

impl OwnBroker {
    /// Picks two consecutive free ports and a data dir under `parent`; does not start anything.
    pub fn new(parent: &Path) -> OwnBroker {
        let (port, controller_port) = free_port_pair();
        OwnBroker {
            dir: parent.join("broker"),
            port,
            controller_port,
            log: parent.join("kafka-sh.log"),
        }
    }

    /// Unused (no `--sasl`), but kafka.sh wants it distinct from the other two.
    fn sasl_port(&self) -> u16 {
        self.controller_port.checked_add(1).unwrap_or(self.port - 1)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, cmd: &str) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let status = Command::new(repo().join("deploy/local/kafka.sh"))
            .arg(cmd)
            .env("RAPPORT_KAFKA_PORT", self.port.to_string())
            .env(
                "RAPPORT_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env("RAPPORT_KAFKA_SASL_PORT", self.sasl_port().to_string())
            .env("RAPPORT_KAFKA_DIR", &self.dir)
            .env("RAPPORT_KAFKA_HEAP", "384m")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .map_err(|e| format!("cannot run deploy/local/kafka.sh: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "deploy/local/kafka.sh {cmd} failed ({status}):\n{}\nbroker log:\n{}",
                tail(&self.log, 30),
                tail(&self.dir.join("kafka.log"), 40)
            ))
        }
    }

    /// Starts the broker (first time: formats its storage) and waits until it answers.
    pub fn start(&self) {
        self.script("start").unwrap_or_else(|e| panic!("{e}"));
        reachable(&self.address(), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("own broker at {} does not answer: {e}", self.address()));
    }

    /// The broker's process id (from the pid file kafka.sh keeps).
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("kafka.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid file in {}", self.dir.display()))
    }

    /// Sends the broker a signal (STOP, CONT) by its id.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} of the broker failed");
    }

    /// Stops the broker cleanly (SIGTERM, waits for it to exit).
    pub fn stop(&self) {
        self.script("stop").unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = self.script("stop");
        }
    }
}

// --- ports, processes, metrics ------------------------------------------------------------------

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two free consecutive ports (a broker's client and controller listeners).
fn free_port_pair() -> (u16, u16) {
    for _ in 0..200 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65535 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return (p, p + 1);
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1");
}

/// `rapport` with an environment of our making: the `RAPPORT_*` variables of the test process
/// (`RAPPORT_TEST_KAFKA`, `RAPPORT_KAFKA_PORT`, …) are not configuration for the child.
pub fn rapport() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RAPPORT_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Runs a short `rapport` command to completion; fails the test if it fails. Returns stdout.
pub fn rapport_ok(c: &mut Command, what: &str) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start rapport: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{what}:\n{stderr}");
    stdout
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A `rapport run` child. Dropped while still running (a failing test), it is killed.
pub struct Proc {
    pub child: Child,
    pub tag: String,
    /// Its metrics endpoint's port (on 127.0.0.1), as it logged it.
    pub port: u16,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks for a graceful stop, as an operator or Kubernetes would.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "{}: kill -TERM {} failed",
            self.tag,
            self.pid()
        );
    }

    /// SIGKILL: a crash at an arbitrary point.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn logs(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr (last lines) ---\n{}",
            self.tag,
            tail(&self.stdout, 20),
            self.tag,
            tail(&self.stderr, 60)
        )
    }

    /// Fails the test (with the child's logs) when the child has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited unexpectedly ({status})\n{}",
                self.tag,
                self.logs()
            );
        }
    }

    /// Waits for the child to exit by itself within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let logs = self.logs();
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {within:?} of being asked to stop\n{logs}",
                    self.tag
                );
            }
            std::thread::sleep(TICK);
        }
    }

    /// SIGTERM, then expects a clean exit (status 0, no panic) within 30 s. Returns stdout.
    pub fn stop(&mut self) -> String {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(30));
        let logs = self.logs();
        assert!(
            status.success(),
            "{} exited with {status} on SIGTERM\n{logs}",
            self.tag
        );
        assert!(!logs.contains("panicked"), "{logs}");
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// A metric of this child (summed over its label sets), or None when the endpoint does not
    /// answer; a metric not yet recorded reads 0.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric(self.port, name)
    }

    /// Polls `cond` until it returns Some, checking that the child is still running; fails
    /// after `within` with `what` and the last observation.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut cond: impl FnMut(&Proc) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            self.assert_running();
            match cond(self) {
                Ok(v) => return v,
                Err(last) => {
                    if Instant::now() > deadline {
                        panic!(
                            "{}: timed out after {within:?} waiting for {what} (last seen: {last})\n{}",
                            self.tag,
                            self.logs()
                        );
                    }
                }
            }
            std::thread::sleep(TICK);
        }
    }

    /// Waits until this child has read `n` records (`rapport_records_in_total`, this process).
    pub fn wait_records(&mut self, n: u64) {
        self.wait_for(
            &format!("rapport_records_in_total = {n}"),
            DEADLINE,
            |p| match p.metric("rapport_records_in_total") {
                Some(v) if v as u64 == n => Ok(()),
                Some(v) if v as u64 > n => panic!(
                    "{}: read {v} records, more than the {n} expected\n{}",
                    p.tag,
                    p.logs()
                ),
                v => Err(format!("{v:?}")),
            },
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET `path` on 127.0.0.1:`port`: (status, body), or None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Some((status, body))
}

/// The sum of a metric's samples in the Prometheus text at `port`'s `/metrics`.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (status, body) = http_get(port, "/metrics")?;
    if status != 200 {
        return None;
    }
    let mut sum = 0.0;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let metric_name = series.split('{').next().unwrap_or("");
        if metric_name == name {
            sum += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Some(sum)
}

// --- one test's job: topics, group, config, dirs ---------------------------------------------

/// Input and output topic names of one job.
#[derive(Debug, Clone)]
pub struct Topics {
    pub usage: String,
    pub email: String,
    pub call: String,
    pub deal: String,
    pub scores: String,
    pub alerts: String,
    pub dlq: String,
    pub changelog: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        let t = |s: &str| format!("{prefix}.{s}");
        Topics {
            usage: t("product_usage"),
            email: t("email"),
            call: t("call"),
            deal: t("deal"),
            scores: t("health_scores"),
            alerts: t("churn_alerts"),
            dlq: t("dlq"),
            changelog: t("changelog"),
        }
    }

    pub fn inputs(&self) -> [&str; 4] {
        [&self.usage, &self.email, &self.call, &self.deal]
    }

    pub fn all(&self) -> Vec<&str> {
        let mut v = self.inputs().to_vec();
        v.extend([
            self.scores.as_str(),
            self.alerts.as_str(),
            self.dlq.as_str(),
            self.changelog.as_str(),
        ]);
        v
    }

    /// The input topic of an event type.
    pub fn for_type(&self, ty: &str) -> Option<&str> {
        match ty {
            "product_usage" => Some(&self.usage),
            "email" => Some(&self.email),
            "call" => Some(&self.call),
            "deal" => Some(&self.deal),
            _ => None,
        }
    }
}

/// What varies between the tests' configurations.
#[derive(Debug, Clone)]
pub struct Settings {
    pub partitions: u16,
    pub batch_max_records: usize,
    pub sync_writes: bool,
    /// Extra librdkafka settings (`[kafka.client]`).
    pub client: Vec<(&'static str, String)>,
    /// `kafka.assignment`: "cooperative" or "eager".
    pub assignment: &'static str,
    /// Static membership: each instance's tag is its `kafka.group_instance_id`.
    pub static_members: bool,
    /// `engine.timer_clock`.
    pub timer_clock: &'static str,
    /// `kafka.merge_wait_ms`.
    pub merge_wait_ms: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            partitions: 3,
            batch_max_records: 500,
            sync_writes: false,
            client: Vec::new(),
            assignment: "cooperative",
            static_members: false,
            timer_clock: "event",
            merge_wait_ms: 250,
        }
    }
}

/// Consumer settings that make the broker hand out about one producer batch per fetch, every
/// `wait_ms`: the broker holds each fetch until `fetch.wait.max.ms` (the minimum size is never
/// reached) and returns one batch (the per-partition limit is one byte). This makes a run take
/// seconds instead of milliseconds, so that it can be interrupted part-way by condition.
pub fn throttled_consumer(wait_ms: u32) -> Vec<(&'static str, String)> {
    vec![
        ("fetch.min.bytes", "100000000".into()),
        ("fetch.wait.max.ms", wait_ms.to_string()),
        ("fetch.message.max.bytes", "1".into()),
    ]
}

/// Group settings for tests that kill an instance: heartbeats every 500 ms (every job's config
/// also sets `kafka.session_timeout_ms = 6000`, the broker's minimum, instead of the 45 s
/// default), so a killed instance's partitions move, or come back to it, quickly.
pub fn short_session() -> Vec<(&'static str, String)> {
    vec![("heartbeat.interval.ms", "500".into())]
}

/// One test's disposable world on a broker.
pub struct Job {
    pub name: String,
    pub brokers: String,
    pub topics: Topics,
    pub group: String,
    pub dir: tempfile::TempDir,
    pub settings: Settings,
}

impl Job {
    /// Unique topic names, consumer group and directory for test `name`.
    pub fn new(name: &str, brokers: &str, settings: Settings) -> Job {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("rt-{name}-{}-{:x}", std::process::id(), nanos % (1 << 40));
        Job {
            name: name.to_owned(),
            brokers: brokers.to_owned(),
            topics: Topics::new(&prefix),
            group: format!("{prefix}-group"),
            dir: tempfile::Builder::new()
                .prefix(&format!("rapport-kafka-{name}-"))
                .tempdir()
                .unwrap(),
            settings,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the config file of instance `tag` (its own data dir, the job's topics and group)
    /// and returns its path. The metrics endpoint listens on port 0: each process started with
    /// it gets a free port from the system, which [`Job::spawn`] reads from its log (a port
    /// picked here and bound later by the child could be taken in between).
    pub fn config(&self, tag: &str) -> PathBuf {
        let s = &self.settings;
        let t = &self.topics;
        let mut client = String::new();
        for (k, v) in &s.client {
            client.push_str(&format!("\"{k}\" = \"{v}\"\n"));
        }
        let toml = format!(
            r#"# {name}/{tag}: written by tests/kafka.rs
mode = "kafka"

[engine]
partitions = {partitions}
# The input topics are consumed in an order that varies from run to run: nothing may count as late.
allowed_lateness_secs = 31536000
dedup_retention_days = 3650
timer_clock = "{timer_clock}"

[store]
data_dir = "{data}"
sync_writes = {sync}

[pipeline]
batch_max_records = {batch}
batch_max_ms = 50

[telemetry]
listen = "127.0.0.1:0"

[kafka]
brokers = "{brokers}"
group_id = "{group}"
client_id = "rapport-test-{tag}"
create_topics = false
output_partitions = {partitions}
replication_factor = 1
changelog_topic = "{changelog}"
session_timeout_ms = 6000
assignment = "{assignment}"
group_instance_id = "{instance}"
merge_wait_ms = {merge_wait}

[kafka.input_topics]
product_usage = "{usage}"
email = "{email}"
call = "{call}"
deal = "{deal}"

[kafka.output_topics]
health_scores = "{scores}"
churn_alerts = "{alerts}"
dlq = "{dlq}"

[kafka.client]
{client}"#,
            name = self.name,
            partitions = s.partitions,
            data = self.data(tag).display(),
            sync = s.sync_writes,
            batch = s.batch_max_records,
            brokers = self.brokers,
            group = self.group,
            usage = t.usage,
            email = t.email,
            call = t.call,
            deal = t.deal,
            scores = t.scores,
            alerts = t.alerts,
            dlq = t.dlq,
            changelog = t.changelog,
            assignment = s.assignment,
            instance = if s.static_members { tag } else { "" },
            timer_clock = s.timer_clock,
            merge_wait = s.merge_wait_ms,
        );
        let path = self.path().join(format!("{tag}.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// The partitions instance `tag` restored from the changelog, as its log says.
    pub fn restored_partitions(&self, tag: &str) -> BTreeSet<u16> {
        let log = std::fs::read_to_string(self.path().join(format!("{tag}.stderr")))
            .unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("Restoring the partition from the changelog"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("partition=")?.parse().ok())
            })
            .collect()
    }

    pub fn data(&self, tag: &str) -> PathBuf {
        self.path().join(format!("data-{tag}"))
    }

    /// `rapport topics create` for the job's topics (then `topics check`).
    pub fn create_topics(&self) {
        let config = self.config("topics");
        let out = rapport_ok(
            rapport()
                .args(["topics", "create", "--config"])
                .arg(&config),
            "rapport topics create",
        );
        for t in self.topics.all() {
            assert!(out.contains(t), "topic {t} missing from:\n{out}");
        }
        rapport_ok(
            rapport().args(["topics", "check", "--config"]).arg(&config),
            "rapport topics check",
        );
    }

    /// Starts `rapport run --config <tag>.toml` (Kafka mode); logs to `<tag>.stdout|stderr`.
    /// Each start of one tag appends to the same logs. Returns once the child has logged the
    /// address of its metrics endpoint (the port the system gave it), which [`Proc::port`] holds.
    pub fn spawn(&self, tag: &str, config: &Path) -> Proc {
        let stdout = self.path().join(format!("{tag}.stdout"));
        let stderr = self.path().join(format!("{tag}.stderr"));
        let open = |p: &Path| File::options().create(true).append(true).open(p).unwrap();
        // This start's lines come after what earlier starts of the tag logged.
        let logged_before = std::fs::metadata(&stderr).map_or(0, |m| m.len() as usize);
        let child = rapport()
            .args(["run", "--quiet", "--config"])
            .arg(config)
            .stdout(open(&stdout))
            .stderr(open(&stderr))
            .spawn()
            .expect("start rapport run");
        let mut p = Proc {
            child,
            tag: format!("{}/{tag}", self.name),
            port: 0,
            stdout,
            stderr,
        };
        p.port = p.wait_for("the address of the metrics endpoint in the log", DEADLINE, |p| {
            let log = std::fs::read(&p.stderr).unwrap_or_default();
            let log = String::from_utf8_lossy(log.get(logged_before..).unwrap_or_default());
            log.lines()
                .filter(|l| l.contains("Serving /metrics"))
                .flat_map(str::split_whitespace)
                .find_map(|w| w.strip_prefix("address=")?.parse::<SocketAddr>().ok())
                .map(|a| a.port())
                .ok_or_else(|| "not logged yet".to_owned())
        });
        p
    }

    /// `rapport produce --format F` of an NDJSON file; returns the records sent.
    pub fn produce_cli(&self, input: &Path, format: &str) -> u64 {
        let config = self.config("produce");
        let out = rapport_ok(
            rapport()
                .args(["produce", "--config"])
                .arg(&config)
                .arg("--input")
                .arg(input)
                .args(["--format", format]),
            "rapport produce",
        );
        out.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("rapport produce said: {out}"))
    }

    /// Sends each line of an NDJSON file as JSON to its type's input topic, keyed by account id,
    /// in small producer batches (`batch` records at most); lines that are not events go
    /// unkeyed to the product-usage topic. Returns the records sent.
    pub fn produce_small_batches(&self, input: &Path, batch: usize) -> u64 {
        let text = std::fs::read(input).unwrap();
        let mut recs: Vec<(String, Option<String>, Vec<u8>)> = Vec::new();
        for line in text.split(|&b| b == b'\n') {
            let v: Option<serde_json::Value> = serde_json::from_slice(line).ok();
            let routed = v.as_ref().and_then(|v| {
                let topic = self.topics.for_type(v["type"].as_str()?)?;
                Some((topic.to_owned(), v["account_id"].as_str()?.to_owned()))
            });
            match routed {
                Some((topic, key)) => recs.push((topic, Some(key), line.to_vec())),
                None => recs.push((self.topics.usage.clone(), None, line.to_vec())),
            }
        }
        // split() yields an empty piece after the final newline: not a record.
        if text.ends_with(b"\n") {
            recs.pop();
        }
        let producer = producer(
            &self.brokers,
            &[
                ("linger.ms", "0".into()),
                ("batch.num.messages", batch.to_string()),
            ],
        );
        let n = recs.len() as u64;
        let rt = runtime();
        rt.block_on(async {
            let mut pending = Vec::with_capacity(recs.len());
            for (topic, key, payload) in &recs {
                let mut r = FutureRecord::to(topic).payload(payload);
                if let Some(k) = key {
                    r = r.key(k);
                }
                loop {
                    match producer.send_result(r) {
                        Ok(f) => {
                            pending.push(f);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            r = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => panic!("producing to {topic}: {e}"),
                    }
                }
            }
            for f in pending {
                f.await
                    .expect("delivery report")
                    .unwrap_or_else(|(e, _)| panic!("producing to the input topics: {e}"));
            }
        });
        n
    }

    /// Deletes the job's topics (at the end of a passing test; a failing one keeps them).
    pub fn delete_topics(&self) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap();
        let names = self.topics.all();
        let _ = runtime().block_on(admin.delete_topics(
            &names,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ));
    }

    /// The embedded run (`rapport run --input FILE`) of the same config file, as the reference:
    /// one uninterrupted instance, no broker. Returns its store view and output directory.
    pub fn embedded_reference(&self, config: &Path, input: &Path) -> (StoreView, PathBuf) {
        let dir = self.path().join("embedded");
        let (out, data) = (dir.join("out"), dir.join("data"));
        let stdout = rapport_ok(
            rapport()
                .args(["run", "--quiet", "--config"])
                .arg(config)
                .arg("--input")
                .arg(input)
                .arg("--output")
                .arg(&out)
                .arg("--data-dir")
                .arg(&data)
                .env("RAPPORT_MODE", "embedded")
                .env("RAPPORT_TELEMETRY__LISTEN", ""),
            "the embedded reference run",
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("Accounting: ") && l.ends_with('✓')),
            "embedded run without a balanced accounting line:\n{stdout}"
        );
        (StoreView::open(&data), out)
    }
}

// --- producing and reading topics -----------------------------------------------------------

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn producer(brokers: &str, extra: &[(&str, String)]) -> FutureProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("acks", "all");
    for (k, v) in extra {
        c.set(*k, v);
    }
    c.create().expect("producer")
}

/// Sends one record and returns where it landed: (partition, offset).
pub fn send_one(
    p: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    payload: Option<&[u8]>,
) -> (i32, i64) {
    let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
    if let Some(k) = key {
        r = r.key(k);
    }
    if let Some(v) = payload {
        r = r.payload(v);
    }
    let d = runtime()
        .block_on(p.send(r, Duration::from_secs(30)))
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    (d.partition, d.offset)
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

impl Rec {
    pub fn json(&self) -> serde_json::Value {
        let v = self.value.as_deref().unwrap_or_default();
        serde_json::from_slice(v).unwrap_or_else(|e| {
            panic!(
                "output record at {}@{} is not JSON ({e}): {}",
                self.partition,
                self.offset,
                String::from_utf8_lossy(v)
            )
        })
    }
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }
    pub fn header(&self, k: &str) -> Option<String> {
        self.headers
            .get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Every record of `topic` up to its current end (high watermarks read now), with a fresh
/// consumer assigned to all partitions from the beginning.
pub fn read_all(brokers: &str, topic: &str) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("rapport-test-reader-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let parts = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    assert!(
        parts > 0,
        "topic {topic} has no partitions (does it exist?)"
    );
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..parts as i32 {
        let (low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    c.assign(&tpl).unwrap();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ends
        .iter()
        .any(|(p, h)| next.get(p).copied().unwrap_or(0) < *h)
    {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: stuck at {next:?}, ends {ends:?}"
        );
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                if m.offset() >= ends[&m.partition()] {
                    continue;
                }
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(hd.key.to_owned(), hd.value.unwrap_or_default().to_vec());
                    }
                }
                next.insert(m.partition(), m.offset() + 1);
                out.push(Rec {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
    }
    out
}

// --- inputs -----------------------------------------------------------------------------------

/// `rapport generate` into `path`; returns (events, malformed).
pub fn generate(
    path: &Path,
    accounts: u32,
    usage_per_day: f64,
    bad_every: u64,
    seed: u64,
) -> (u64, u64) {
    let said = rapport_ok(
        rapport()
            .arg("generate")
            .args(["--accounts", &accounts.to_string()])
            .args(["--days", "60"])
            .args(["--usage-per-day", &usage_per_day.to_string()])
            .args(["--bad-every", &bad_every.to_string()])
            .args(["--seed", &seed.to_string()])
            .arg("--out")
            .arg(path),
        "rapport generate",
    );
    let nums: Vec<u64> = said
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

// --- the store, order-independently -------------------------------------------------------------

/// A daily bucket's counts, in `DayBucket` field order (usage events, emails out, opens, clicks,
/// replies, bad, calls, meetings held, meetings missed, sentiment milli-sum, sentiment n, risk
/// mentions).
pub type Bucket = [i64; 12];

/// Daily buckets by (account, UTC day).
pub type Buckets = BTreeMap<(String, i32), Bucket>;

/// Per account: first seen, last event, last usage, email, call and deal times (ms).
pub type Times = BTreeMap<String, [i64; 6]>;

/// What a store holds, read after its process stopped.
pub struct StoreView {
    pub counters: Counters,
    pub accounts: BTreeMap<String, AccountState>,
    /// Account partition of each account, as its state key says.
    pub partition_of: BTreeMap<String, u16>,
    pub outbox: usize,
}

impl StoreView {
    pub fn open(data: &Path) -> StoreView {
        // The compiled-in defaults, read without Config::defaults(), which would also read the
        // test process's RAPPORT_* variables (RAPPORT_TEST_KAFKA is not configuration).
        let defaults: rapport::config::Config = toml::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/default.toml"
        )))
        .expect("config/default.toml");
        let cfg = defaults.store;
        let store = RocksStore::open_at(data, &cfg)
            .unwrap_or_else(|e| panic!("opening the store at {}: {e}", data.display()));
        let counters = store
            .get(Cf::Meta, COUNTERS_KEY)
            .unwrap()
            .map(|v| Counters::decode(v.as_slice()).unwrap())
            .unwrap_or_default();
        let mut accounts = BTreeMap::new();
        let mut partition_of = BTreeMap::new();
        store
            .scan(Cf::State, &[], &mut |k, v| {
                let s = rapport::domain::state::decode(v).expect("state decodes");
                if let Some((p, a)) = rapport::store::keys::parse_state_key(k) {
                    partition_of.insert(a.to_owned(), p);
                }
                accounts.insert(s.account_id.clone(), s);
                true
            })
            .unwrap();
        let mut outbox = 0;
        store
            .scan(Cf::Outbox, &[], &mut |_, _| {
                outbox += 1;
                true
            })
            .unwrap();
        StoreView {
            counters,
            accounts,
            partition_of,
            outbox,
        }
    }

    /// (records read, folded, duplicates, dead-lettered).
    pub fn accounting(&self) -> [u64; 4] {
        let c = &self.counters;
        [c.records_in, c.folded, c.duplicates, c.dead_lettered]
    }

    /// Every account's non-empty daily buckets, by (account, UTC day).
    pub fn buckets(&self) -> Buckets {
        let mut m = BTreeMap::new();
        for (a, s) in &self.accounts {
            for b in &s.days {
                let v: Bucket = [
                    b.usage_events as i64,
                    b.emails_out as i64,
                    b.email_opens as i64,
                    b.email_clicks as i64,
                    b.email_replies as i64,
                    b.email_bad as i64,
                    b.calls as i64,
                    b.meetings_held as i64,
                    b.meetings_missed as i64,
                    b.sentiment_milli_sum as i64,
                    b.sentiment_n as i64,
                    b.risk_mentions as i64,
                ];
                if v != [0; 12] {
                    m.insert((a.clone(), s.base_day + b.day as i32), v);
                }
            }
        }
        m
    }

    /// Per account: first seen, last event, last usage, email, call and deal times (ms).
    pub fn times(&self) -> Times {
        self.accounts
            .iter()
            .map(|(a, s)| {
                (
                    a.clone(),
                    [
                        s.first_seen_ms,
                        s.max_event_ms,
                        s.last_usage_ms,
                        s.last_email_ms,
                        s.last_call_ms,
                        s.last_deal_ms,
                    ],
                )
            })
            .collect()
    }

    /// Restricted to some accounts.
    pub fn only(&self, keep: &BTreeSet<String>) -> (Buckets, Times) {
        let b = self
            .buckets()
            .into_iter()
            .filter(|((a, _), _)| keep.contains(a))
            .collect();
        let t = self
            .times()
            .into_iter()
            .filter(|(a, _)| keep.contains(a))
            .collect();
        (b, t)
    }
}

/// Fails with the first difference when two maps differ.
pub fn assert_same_map<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    got: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) {
    if got == want {
        return;
    }
    let missing: Vec<&K> = want
        .keys()
        .filter(|k| !got.contains_key(k))
        .take(5)
        .collect();
    let extra: Vec<&K> = got
        .keys()
        .filter(|k| !want.contains_key(k))
        .take(5)
        .collect();
    let differ: Vec<String> = want
        .iter()
        .filter_map(|(k, w)| {
            got.get(k)
                .filter(|g| *g != w)
                .map(|g| format!("{k:?}: got {g:?}, want {w:?}"))
        })
        .take(5)
        .collect();
    panic!(
        "{what} differ ({} entries vs {} expected): missing {missing:?}, unexpected {extra:?}, different {differ:#?}",
        got.len(),
        want.len()
    );
}

/// Compares a Kafka-mode store with the reference on everything order-independent.
pub fn assert_equivalent(what: &str, got: &StoreView, want: &StoreView) {
    assert_eq!(
        got.accounting(),
        want.accounting(),
        "{what}: record accounting [read, folded, duplicates, dead-lettered] (left: this run, right: the reference)"
    );
    let names = |v: &StoreView| v.accounts.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(names(got), names(want), "{what}: the accounts with state");
    assert_same_map(
        &format!("{what}: daily buckets"),
        &got.buckets(),
        &want.buckets(),
    );
    assert_same_map(
        &format!("{what}: first/last event times"),
        &got.times(),
        &want.times(),
    );
    assert_eq!(got.outbox, 0, "{what}: outbox rows left after a clean stop");
}

/// The outputs of a run, checked against the final store: every health-score change each
/// account emitted (`change_id`s of its 1st..n-th change) and an `open` record of every alert
/// still open are on the output topics; repeated deliveries are byte-identical; records are keyed
/// by account. Returns (score records, alert records) read.
pub fn assert_outputs_complete(
    what: &str,
    brokers: &str,
    topics: &Topics,
    store: &StoreView,
) -> (usize, usize) {
    check_outputs(what, brokers, topics, store, true)
}

/// [`assert_outputs_complete`] for a store assembled from several instances' (whose counters
/// do not describe it): everything but the comparison with the counters.
pub fn assert_outputs_cover(
    what: &str,
    brokers: &str,
    topics: &Topics,
    store: &StoreView,
) -> (usize, usize) {
    check_outputs(what, brokers, topics, store, false)
}

fn check_outputs(
    what: &str,
    brokers: &str,
    topics: &Topics,
    store: &StoreView,
    counters: bool,
) -> (usize, usize) {
    use rapport::domain::alert::{Rule, alert_id};
    use rapport::domain::engine::change_id;

    let scores = read_all(brokers, &topics.scores);
    let mut by_change: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in &scores {
        let v = r.json();
        let id = v["change_id"].as_str().expect("change_id").to_owned();
        assert_eq!(
            r.key_str(),
            v["account_id"].as_str().unwrap(),
            "{what}: health score keyed by its account"
        );
        let bytes = r.value.clone().unwrap_or_default();
        if let Some(prev) = by_change.insert(id.clone(), bytes.clone()) {
            assert!(
                prev == bytes,
                "{what}: change_id {id} delivered twice with different contents:\n  {}\n  {}",
                String::from_utf8_lossy(&prev),
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    let mut want_changes = BTreeSet::new();
    for (a, s) in &store.accounts {
        for seq in 1..=s.emit_seq {
            want_changes.insert(change_id(a, seq));
        }
    }
    let got_changes: BTreeSet<String> = by_change.keys().cloned().collect();
    let missing = want_changes.difference(&got_changes).count();
    let extra = got_changes.difference(&want_changes).count();
    assert!(
        missing == 0 && extra == 0,
        "{what}: {missing} health-score changes the store counts were never published, {extra} published that it does not count ({} records read)",
        scores.len()
    );

    let alerts = read_all(brokers, &topics.alerts);
    let mut by_alert: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
    for r in &alerts {
        let v = r.json();
        let id = (
            v["alert_id"].as_str().expect("alert_id").to_owned(),
            v["status"].as_str().expect("status").to_owned(),
        );
        assert_eq!(
            r.key_str(),
            v["account_id"].as_str().unwrap(),
            "{what}: alert keyed by its account"
        );
        let bytes = r.value.clone().unwrap_or_default();
        if let Some(prev) = by_alert.insert(id.clone(), bytes.clone()) {
            assert!(
                prev == bytes,
                "{what}: alert {id:?} delivered twice with different contents:\n  {}\n  {}",
                String::from_utf8_lossy(&prev),
                String::from_utf8_lossy(&bytes)
            );
        }
    }
    for (a, s) in &store.accounts {
        for o in &s.open_alerts {
            let id = alert_id(a, Rule::parse(&o.rule).unwrap(), o.episode_start_ms);
            assert!(
                by_alert.contains_key(&(id.clone(), "open".to_owned())),
                "{what}: alert {} of {a} is open in the store but its open record {id} was never published",
                o.rule
            );
        }
    }
    let opened = by_alert.keys().filter(|(_, s)| s == "open").count() as u64;
    let resolved = by_alert.keys().filter(|(_, s)| s == "resolved").count() as u64;
    if !counters {
        return (scores.len(), alerts.len());
    }
    assert_eq!(
        (opened, resolved),
        (store.counters.alerts_opened, store.counters.alerts_resolved),
        "{what}: distinct alert records published (open, resolved) against the store's counters"
    );
    (scores.len(), alerts.len())
}

/// Dead letters on the DLQ topic: repeats of one source record are identical, and there are as
/// many distinct source records as the store dead-lettered. Returns them by (topic, partition,
/// offset).
pub fn dead_letters(what: &str, job: &Job, store: &StoreView) -> BTreeMap<(String, i32, i64), Rec> {
    let mut m: BTreeMap<(String, i32, i64), Rec> = BTreeMap::new();
    for r in read_all(&job.brokers, &job.topics.dlq) {
        let k = (
            r.header("source_topic").expect("source_topic header"),
            r.header("source_partition")
                .expect("source_partition header")
                .parse()
                .expect("source_partition is a number"),
            r.header("source_offset")
                .expect("source_offset header")
                .parse()
                .expect("source_offset is a number"),
        );
        if let Some(prev) = m.get(&k) {
            assert!(
                prev.value == r.value && prev.headers == r.headers,
                "{what}: dead letter of {k:?} delivered twice, differently"
            );
        }
        m.insert(k, r);
    }
    assert_eq!(
        m.len() as u64,
        store.counters.dead_lettered,
        "{what}: distinct dead letters on the DLQ topic against the store's count"
    );
    m
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}
