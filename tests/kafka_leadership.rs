//! Topic leadership unavailable: a two-node Kafka cluster of this test's own
//! (`deploy/local/cluster.sh`: node 1 broker and controller, node 2 broker only, loopback, ports
//! and data of its own) holds every partition with one replica. Partition 1 of each input topic
//! and of the health-score topic lives on node 2; everything else (the other partitions, the
//! alerts, the DLQ, the changelog and the group coordinator's `__consumer_offsets`) on node 1.
//! Node 2 is killed with SIGKILL part-way through the input, so those five partitions have no
//! leader at all while the controller and the rest of the cluster stay up, and it is started
//! again after the consumer session and request timeouts have passed.
//!
//! Meanwhile rapport must stay alive (`/healthz` 200), say it is not ready and why (`/readyz`
//! 503 naming the leaderless partitions, `rapport_kafka_partitions_leaderless` of the reader and
//! of the producer), keep reading the partitions that do have a leader to their end while the
//! scores for the leaderless output partition wait in the outbox, and wait without spinning.
//! Afterwards it reads the rest and ends equal to the embedded reference run, with every output
//! published.
//!
//! Needs `java` (17+) and the jars `deploy/local/kafka.sh fetch` caches; it does not use the
//! shared broker of the other Kafka tests, and stops only the nodes it started.

mod kafka_support;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_support::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The node that holds partition 1 of every input topic, and is killed.
const VICTIM: u32 = 2;

/// A cluster of `deploy/local/cluster.sh` for one test: its own data dir and ports, stopped (by
/// the pids the script recorded) when dropped, also when the test fails.
struct Cluster {
    dir: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Cluster {
    fn new(parent: &Path) -> Cluster {
        Cluster {
            dir: parent.join("cluster"),
            port: free_port_run(3),
            log: parent.join("cluster-sh.log"),
        }
    }

    /// Both nodes' client listeners (node N on PORT+2(N-1), the controller on PORT+1).
    fn brokers(&self) -> String {
        format!("127.0.0.1:{},127.0.0.1:{}", self.port, self.port + 2)
    }

    fn script(&self, args: &[&str]) -> Result<(), String> {
        let log = File::options().create(true).append(true).open(&self.log).unwrap();
        let status = Command::new(repo().join("deploy/local/cluster.sh"))
            .args(args)
            .env("RAPPORT_CLUSTER_NODES", "2")
            .env("RAPPORT_CLUSTER_PORT", self.port.to_string())
            .env("RAPPORT_CLUSTER_DIR", &self.dir)
            .env("RAPPORT_KAFKA_HEAP", "512m")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .map_err(|e| format!("cannot run deploy/local/cluster.sh: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "deploy/local/cluster.sh {args:?} failed ({status}):\n{}\nnode 1 log:\n{}\nnode 2 log:\n{}",
                tail(&self.log, 30),
                tail(&self.dir.join("node-1/kafka.log"), 30),
                tail(&self.dir.join("node-2/kafka.log"), 30)
            ))
        }
    }

    fn run(&self, args: &[&str]) {
        self.script(args).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = self.script(&["stop"]);
        }
    }
}

/// The first of `n` consecutive free ports on 127.0.0.1.
fn free_port_run(n: u16) -> u16 {
    for _ in 0..200 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = first.local_addr().unwrap().port();
        if p <= 65535 - n && (1..n).all(|i| TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1");
}

/// Creates the job's topics with explicit replica assignments: input partition 1 on node 2,
/// everything else on node 1 (the changelog compacted, as `rapport topics create` makes it).
fn create_topics(job: &Job) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &job.brokers)
        .create()
        .unwrap();
    let p = job.settings.partitions as usize;
    let inputs: Vec<Vec<i32>> = (0..p).map(|i| vec![if i == 1 { VICTIM as i32 } else { 1 }]).collect();
    let node1: Vec<Vec<i32>> = (0..p).map(|_| vec![1]).collect();
    let in_slices: Vec<&[i32]> = inputs.iter().map(Vec::as_slice).collect();
    let n1_slices: Vec<&[i32]> = node1.iter().map(Vec::as_slice).collect();
    let t = &job.topics;
    let mut topics: Vec<NewTopic> = t
        .inputs()
        .iter()
        .map(|name| NewTopic::new(name, p as i32, TopicReplication::Variable(&in_slices)))
        .collect();
    // The health scores' partition 1 too: its records wait in the outbox meanwhile.
    topics.push(NewTopic::new(&t.scores, p as i32, TopicReplication::Variable(&in_slices)));
    for name in [&t.alerts, &t.dlq] {
        topics.push(NewTopic::new(name, p as i32, TopicReplication::Variable(&n1_slices)));
    }
    topics.push(
        NewTopic::new(&t.changelog, p as i32, TopicReplication::Variable(&n1_slices))
            .set("cleanup.policy", "compact")
            .set("delete.retention.ms", "86400000")
            .set("min.compaction.lag.ms", "0"),
    );
    let out = runtime()
        .block_on(admin.create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .expect("create topics");
    for r in out {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
    // Visible with a leader on every partition before anything uses them.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &job.brokers)
        .create()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        let ready = t.all().iter().all(|name| {
            md.topics().iter().any(|m| {
                m.name() == *name
                    && m.partitions().len() == p
                    && m.partitions().iter().all(|x| x.leader() >= 1)
            })
        });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the topics did not get leaders");
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = job.config("topics");
    rapport_ok(rapport().args(["topics", "check", "--config"]).arg(&config), "rapport topics check");
}

/// The samples of a metric at `port` by label set (`{k="v",…}` parsed into a map).
fn samples(port: u16, name: &str) -> Option<Vec<(BTreeMap<String, String>, f64)>> {
    let (status, body) = http_get(port, "/metrics")?;
    if status != 200 {
        return None;
    }
    let mut out = Vec::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let mut m = BTreeMap::new();
        for kv in labels.split(',').filter(|s| !s.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                m.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
        out.push((m, value.trim().parse().unwrap_or(f64::NAN)));
    }
    Some(out)
}

fn labeled(port: u16, name: &str, key: &str, value: &str) -> Option<f64> {
    samples(port, name)?
        .into_iter()
        .find(|(l, _)| l.get(key).map(String::as_str) == Some(value))
        .map(|(_, v)| v)
}

/// Records on each input partition (their end offsets; nothing else writes to them).
fn records_by_partition(job: &Job) -> BTreeMap<i32, u64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &job.brokers)
        .create()
        .unwrap();
    let mut m = BTreeMap::new();
    for t in job.topics.inputs() {
        for p in 0..job.settings.partitions as i32 {
            let (lo, hi) = c.fetch_watermarks(t, p, Duration::from_secs(10)).unwrap();
            *m.entry(p).or_default() += (hi - lo) as u64;
        }
    }
    m
}

#[test]
fn partitions_without_a_leader_wait_and_resume() {
    let root = tempfile::Builder::new()
        .prefix("rapport-kafka-leadership-")
        .tempdir()
        .unwrap();
    let cluster = Cluster::new(root.path());
    let t_start = Instant::now();
    cluster.run(&["start"]);
    eprintln!("leadership: cluster of 2 nodes up in {:.1} s at {}", t_start.elapsed().as_secs_f64(), cluster.brokers());

    let mut client = throttled_consumer(40);
    client.extend(short_session());
    let job = Job::new(
        "leader",
        &cluster.brokers(),
        Settings {
            partitions: 3,
            batch_max_records: 25,
            client,
            ..Settings::default()
        },
    );
    create_topics(&job);
    let input = job.path().join("events.ndjson");
    let (events, bad) = generate(&input, 40, 0.5, 400, 4242);
    let total = events + bad;
    let config = job.config("run");
    let (reference, _) = job.embedded_reference(&config, &input);
    assert_eq!(job.produce_small_batches(&input, 20), total);
    let by_partition = records_by_partition(&job);
    assert_eq!(by_partition.values().sum::<u64>(), total);
    let on_victim = by_partition[&1];
    assert!(on_victim > 0 && on_victim < total, "records by partition: {by_partition:?}");
    let leaderless_names: Vec<String> = job.topics.inputs().iter().map(|t| format!("{t}/1")).collect();

    let mut run = job.spawn("run", &config);
    let port = run.port;
    run.wait_for("a tenth of the input read", DEADLINE, |p| match p.metric("rapport_records_in_total") {
        Some(v) if v as u64 >= total / 10 => Ok(()),
        v => Err(format!("{v:?}")),
    });
    let rebalances = run.metric("rapport_kafka_rebalances_total").unwrap();
    cluster.run(&["kill-node", &VICTIM.to_string()]);
    let killed = Instant::now();
    let at_kill = run.metric("rapport_records_in_total").unwrap() as u64;

    // Not ready, naming the four partitions without a leader; alive all along.
    let why = run.wait_for("/readyz 503 naming the leaderless partitions", Duration::from_secs(120), |p| {
        let health = http_get(port, "/healthz");
        if health.as_ref().map(|h| h.0) != Some(200) {
            panic!("/healthz while partitions have no leader: {health:?}\n{}", p.logs());
        }
        let gauge = labeled(port, "rapport_kafka_partitions_leaderless", "client", "consumer");
        match (http_get(port, "/readyz"), gauge) {
            (Some((503, body)), Some(n))
                if n == leaderless_names.len() as f64
                    && leaderless_names.iter().all(|t| body.contains(t.as_str())) =>
            {
                Ok(body)
            }
            v => Err(format!("{v:?}")),
        }
    });
    let degraded_after = killed.elapsed();
    eprintln!("leadership: /readyz said {:?} {:.1} s after the kill", why.trim(), degraded_after.as_secs_f64());

    // The partitions that have a leader are read to their end meanwhile.
    let mut led: Vec<(String, String)> = Vec::new();
    for t in job.topics.inputs() {
        for p in [0, 2] {
            led.push((t.to_owned(), p.to_string()));
        }
    }
    run.wait_for("the partitions on node 1 read to their end", Duration::from_secs(120), |p| {
        let lags = samples(port, "rapport_kafka_consumer_lag").ok_or("no metrics")?;
        let behind: Vec<String> = led
            .iter()
            .filter(|(t, part)| {
                !lags.iter().any(|(l, v)| {
                    l.get("topic") == Some(t) && l.get("partition") == Some(part) && *v == 0.0
                })
            })
            .map(|(t, part)| format!("{t}/{part}"))
            .collect();
        let read = p.metric("rapport_records_in_total").unwrap_or(0.0) as u64;
        if behind.is_empty() && read >= total - on_victim {
            Ok(())
        } else {
            Err(format!("behind: {behind:?}, read {read}"))
        }
    });
    let caught_up_after = killed.elapsed();
    let while_down = run.metric("rapport_records_in_total").unwrap() as u64;
    assert!(
        while_down < total,
        "all {total} records read while partition 1 had no leader: node 2 was killed too late (at {at_kill})"
    );

    // Down past the 6 s session and the 30 s request timeouts, for at least 15 s after the rest
    // was read: only waiting is left, and it must not spin.
    let hold = Duration::from_secs(40).max(caught_up_after + Duration::from_secs(15));
    let scores_1 = format!("{}/1", job.topics.scores);
    let (mut output_named, mut producer_gauge, mut outbox) = (false, 0.0f64, 0.0f64);
    let (cpu0, t0) = (cpu_seconds(run.pid()), Instant::now());
    run.wait_for("the leaderless period to pass", hold + Duration::from_secs(30), |_| {
        if let Some(g) = labeled(port, "rapport_kafka_partitions_leaderless", "client", "producer") {
            producer_gauge = producer_gauge.max(g);
        }
        outbox = outbox.max(kafka_support::metric(port, "rapport_outbox_depth").unwrap_or(0.0));
        match (http_get(port, "/healthz"), http_get(port, "/readyz")) {
            (Some((200, _)), Some((503, body))) => {
                output_named |= body.contains(&scores_1);
                // The producer's gauge is waited for too: it was read before /readyz, so in the
                // round where /readyz first names the output partition it can still show the
                // statistics before.
                if killed.elapsed() >= hold && output_named && producer_gauge > 0.0 {
                    Ok(())
                } else {
                    Err(format!("waiting: producer's leaderless gauge up to {producer_gauge}, /readyz {body:?}"))
                }
            }
            v => panic!("while node 2 is down: /healthz and /readyz said {v:?}"),
        }
    });
    let cpu = (cpu_seconds(run.pid()) - cpu0) / t0.elapsed().as_secs_f64();
    assert_eq!(producer_gauge, 1.0, "the producer's leaderless partitions ({scores_1})");
    assert!(outbox > 0.0, "no output waited in the outbox while {scores_1} had no leader");
    assert!(cpu < 0.25, "rapport used {:.0}% of a core while waiting for a leader", cpu * 100.0);
    assert_eq!(
        run.metric("rapport_records_in_total").unwrap() as u64,
        while_down,
        "records read while only leaderless partitions had any left"
    );
    assert_eq!(
        run.metric("rapport_kafka_rebalances_total").unwrap(),
        rebalances,
        "the group (its coordinator on node 1) did not rebalance"
    );
    assert_eq!(run.metric("rapport_kafka_owned_partitions"), Some(3.0));
    let down = killed.elapsed();

    let restarting = Instant::now();
    cluster.run(&["start-node", &VICTIM.to_string()]);
    let back = Instant::now();
    run.wait_for(
        &format!("all {total} records read and ready after node 2 came back"),
        Duration::from_secs(120),
        |p| {
            let gauge = p.metric("rapport_kafka_partitions_leaderless");
            match (p.metric("rapport_records_in_total"), http_get(port, "/readyz"), gauge) {
                (Some(v), Some((200, _)), Some(g)) if v as u64 == total && g == 0.0 => Ok(()),
                v => Err(format!("{v:?}")),
            }
        },
    );
    let recovered = back.elapsed();
    let stdout = run.stop();
    assert!(stdout.contains(&format!("{total} records this run")), "{stdout}");

    let store = StoreView::open(&job.data("run"));
    assert_equivalent("a run across leaderless input partitions vs the reference", &store, &reference);
    let (scores, alerts) = assert_outputs_complete("leadership", &job.brokers, &job.topics, &store);
    dead_letters("leadership", &job, &store);
    eprintln!(
        "RELIABILITY leadership: SIGKILL of node 2 (sole replica of partition 1 of the 4 input topics, {on_victim} of {total} records, and of the scores topic) at {at_kill} read, down {:.0} s; not ready naming the leaderless partitions after {:.1} s; outbox up to {outbox} records; partitions with a leader read to their end {:.1} s after the kill; {:.0}% of a core while waiting; {events} events + {bad} malformed, lost 0, state mismatches 0, {scores} score and {alerts} alert records (repeats only of the same id); all read and ready {:.1} s after node 2 answered again (its restart took {:.1} s)",
        down.as_secs_f64(),
        degraded_after.as_secs_f64(),
        caught_up_after.as_secs_f64(),
        cpu * 100.0,
        recovered.as_secs_f64(),
        back.duration_since(restarting).as_secs_f64()
    );
}
