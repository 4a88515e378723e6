//! Kafka mode against a real broker (`RAPPORT_TEST_KAFKA`, default 127.0.0.1:9092; start one with
//! `deploy/local/kafka.sh start`, or run `./dev.sh test`). A test that cannot reach the broker
//! fails; none skips. Every test has its own topics, consumer group, data dirs and metrics port,
//! so they run in parallel on one broker; the broker-outage test starts a broker of its own.
//!
//! Children are the real binary (`rapport run`, `produce`, `topics create|check`), stopped with
//! SIGTERM (graceful) or SIGKILL (a crash); every wait polls a condition — the child's `/metrics`
//! or a topic's contents — within a deadline.
//!
//! A Kafka instance consumes its four input topics in an interleaving that differs from run to
//! run, so runs are compared on what does not depend on it (see `kafka_support`): the record
//! accounting, each account's daily buckets and event times, and the alerts that single events
//! raise (negative call, email trouble, deal lost), whose `alert_id`s are hashes of (account,
//! rule, the event's time). The reference is the embedded run (`rapport run --input FILE`) of the
//! same file with the same configuration: one uninterrupted instance, no broker. The configs set
//! `engine.allowed_lateness_secs` to a year and `timer_clock = "event"`, so nothing is late and no
//! timer depends on the wall clock.

mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use kafka_support::*;
use serde_json::Value;

/// Rules that a single event opens (the rest judge accumulated state, which the interleaving of
/// the input topics can change in Kafka mode).
const EVENT_RULES: [&str; 3] = ["negative_call", "email_trouble", "deal_lost"];

/// `tests/fixtures/risk.ndjson` cut at 2026-05-03 (day 61 of the fixture), so that its three
/// risks — a negative call and an unsubscribe on day 50, a renewal closed lost on day 60 — are
/// still inside their rules' windows (30, 30 and 60 days) at the last event, whatever order the
/// topics are consumed in; plus malformed lines. Returns (events, malformed lines).
fn write_risk_input(path: &Path) -> (u64, Vec<Vec<u8>>) {
    let text = std::fs::read_to_string(fixtures().join("risk.ndjson")).unwrap();
    let malformed: Vec<Vec<u8>> = vec![
        b"<html><body>502 Bad Gateway</body></html>".to_vec(),
        br#"{"event_id":"bad-1","account_id":"caller","occurred_at":"2026-04-01T00:00:00Z","type":"call""#.to_vec(),
        br#"{"event_id":"bad-2","account_id":"lost","occurred_at":"next tuesday","type":"deal","deal_id":"x","kind":"renewal","stage":"open"}"#.to_vec(),
        br#"{"event_id":"bad-3","account_id":"unsub","occurred_at":"2026-04-01T00:00:00Z","type":"telepathy"}"#.to_vec(),
    ];
    let mut out = Vec::new();
    let mut events = 0u64;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["occurred_at"].as_str().unwrap() >= "2026-05-03" {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        events += 1;
        if events.is_multiple_of(97) {
            let bad = &malformed[(events / 97 - 1) as usize % malformed.len()];
            out.extend_from_slice(bad);
            out.push(b'\n');
        }
    }
    let inserted = (events / 97) as usize;
    assert!(
        inserted >= malformed.len(),
        "only {inserted} malformed lines"
    );
    std::fs::write(path, out).unwrap();
    let used = (0..inserted)
        .map(|i| malformed[i % malformed.len()].clone())
        .collect();
    (events, used)
}

/// (account, rule, status) → alert_id, of event-triggered alerts in a list of alert records.
fn event_alerts(alerts: &[Value]) -> BTreeMap<(String, String, String), String> {
    let mut m = BTreeMap::new();
    for a in alerts {
        let rule = a["rule"].as_str().unwrap();
        if !EVENT_RULES.contains(&rule) {
            continue;
        }
        let k = (
            a["account_id"].as_str().unwrap().to_owned(),
            rule.to_owned(),
            a["status"].as_str().unwrap().to_owned(),
        );
        let id = a["alert_id"].as_str().unwrap().to_owned();
        if let Some(prev) = m.insert(k.clone(), id.clone()) {
            assert_eq!(prev, id, "{k:?} published with two different alert_ids");
        }
    }
    m
}

fn ndjson(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Test 1: a fixture portfolio sent as JSON, protobuf and Schema-Registry-framed protobuf in
/// turn gives the alerts the embedded run gives, with the same alert_ids; every account gets a
/// health score; outputs are keyed by account; the malformed lines are dead-lettered for the
/// same reasons.
#[test]
fn end_to_end_with_mixed_wire_formats() {
    let brokers = broker();
    let job = Job::new("e2e", &brokers, Settings::default());
    job.create_topics();
    let input = job.path().join("risk.ndjson");
    let (events, malformed) = write_risk_input(&input);
    let total = events + malformed.len() as u64;
    let config = job.config("run");

    // The reference: the embedded run of the same file and config.
    let (reference, ref_out) = job.embedded_reference(&config, &input);
    assert_eq!(
        reference.accounting(),
        [total, events, 0, malformed.len() as u64],
        "embedded reference accounting"
    );
    let ref_alerts = ndjson(&ref_out.join("churn_alerts.ndjson"));
    let want = event_alerts(&ref_alerts);
    let expected: BTreeSet<(String, String, String)> = [
        ("caller", "negative_call"),
        ("unsub", "email_trouble"),
        ("lost", "deal_lost"),
    ]
    .iter()
    .map(|(a, r)| (a.to_string(), r.to_string(), "open".to_string()))
    .collect();
    assert_eq!(
        want.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "the embedded run of the fixture raises exactly these event alerts"
    );

    let sent = job.produce_cli(&input, "mixed");
    assert_eq!(sent, total, "rapport produce sent every line");
    let mut run = job.spawn("run", &config);
    run.wait_records(total);
    let stdout = run.stop();
    assert!(
        stdout.contains(&format!(
            "{total} records this run = {events} folded + 0 duplicates + {} dead-lettered",
            malformed.len()
        )),
        "{stdout}"
    );

    let store = StoreView::open(&job.data("run"));
    assert_equivalent("Kafka run vs embedded run", &store, &reference);

    // Alerts: exactly the event alerts of the embedded run, same ids, keyed by account.
    let alert_recs = read_all(&brokers, &job.topics.alerts);
    let mut alerts = Vec::new();
    for r in &alert_recs {
        let v = r.json();
        assert_eq!(v["type"], "churn_alert", "{v}");
        assert_eq!(
            r.key_str(),
            v["account_id"].as_str().unwrap(),
            "alert keyed by account"
        );
        alerts.push(v);
    }
    let got = event_alerts(&alerts);
    assert_eq!(
        got, want,
        "event alerts on the churn-alerts topic (left) against the embedded run's (right)"
    );
    let state_rules = |list: &[Value]| -> BTreeSet<(String, String, String)> {
        list.iter()
            .filter(|a| !EVENT_RULES.contains(&a["rule"].as_str().unwrap()))
            .map(|a| {
                let s = |k: &str| a[k].as_str().unwrap().to_owned();
                (s("account_id"), s("rule"), s("status"))
            })
            .collect()
    };
    let (k_state, e_state) = (state_rules(&alerts), state_rules(&ref_alerts));
    if k_state != e_state {
        // Not asserted: these rules judge accumulated state at the partition's stream time, the
        // newest event time of any of its four topics. When another topic is read ahead of the
        // usage topic, an account looks idle until its usage catches up, and gone_dark and
        // usage_drop open and resolve on the way (it happens in some runs, more under load).
        eprintln!(
            "state-based alerts differ from the embedded run (order-dependent): kafka {k_state:?}, embedded {e_state:?}"
        );
    }

    // Health scores: at least one per account, keyed by account.
    let mut scored: BTreeMap<String, usize> = BTreeMap::new();
    for r in read_all(&brokers, &job.topics.scores) {
        let v = r.json();
        assert_eq!(v["type"], "health_score_changed", "{v}");
        let a = v["account_id"].as_str().unwrap();
        assert_eq!(r.key_str(), a, "health score keyed by account");
        let score = v["score"].as_u64().expect("score");
        assert!(score <= 100, "{v}");
        *scored.entry(a.to_owned()).or_default() += 1;
    }
    assert_eq!(
        scored.keys().cloned().collect::<BTreeSet<_>>(),
        store.accounts.keys().cloned().collect::<BTreeSet<_>>(),
        "accounts with at least one health_score_changed"
    );
    assert_eq!(
        scored.keys().map(String::as_str).collect::<Vec<_>>(),
        ["caller", "lost", "unsub"]
    );
    assert_outputs_complete("e2e", &brokers, &job.topics, &store);

    // Dead letters: the malformed lines, unchanged, for the reasons the embedded run gives.
    let ref_reasons: BTreeMap<Vec<u8>, String> = ndjson(&ref_out.join("dlq.ndjson"))
        .iter()
        .map(|d| {
            let original = base64::engine::general_purpose::STANDARD
                .decode(d["original_base64"].as_str().unwrap())
                .unwrap();
            (original, d["reason"].as_str().unwrap().to_owned())
        })
        .collect();
    let dlq = dead_letters("e2e", &job, &store);
    let mut got_values: Vec<Vec<u8>> = Vec::new();
    for ((topic, _, _), r) in &dlq {
        assert_eq!(
            topic, &job.topics.usage,
            "produce sends malformed lines to the usage topic"
        );
        let value = r.value.clone().unwrap_or_default();
        assert_eq!(
            r.header("reason").as_ref(),
            ref_reasons.get(&value),
            "reason of {:?}",
            String::from_utf8_lossy(&value)
        );
        got_values.push(value);
    }
    let mut want_values = malformed.clone();
    got_values.sort();
    want_values.sort();
    assert_eq!(got_values, want_values, "dead-lettered values");
    job.delete_topics();
}

/// Test 2: stopped mid-stream with SIGTERM, then killed mid-stream with SIGKILL, then run to the
/// end: no event folded twice or lost (accounting, buckets and event times equal the
/// uninterrupted reference), every output published, repeats only of the same output.
#[test]
fn stopped_and_killed_mid_stream_then_resumed() {
    let brokers = broker();
    let mut client = throttled_consumer(40);
    client.extend(short_session());
    let job = Job::new(
        "restart",
        &brokers,
        Settings {
            partitions: 3,
            batch_max_records: 25,
            client,
            ..Settings::default()
        },
    );
    job.create_topics();
    let input = job.path().join("events.ndjson");
    let (events, bad) = generate(&input, 40, 0.5, 400, 20261123);
    let total = events + bad;
    let config = job.config("run");
    let (reference, _) = job.embedded_reference(&config, &input);
    assert_eq!(reference.counters.records_in, total);
    assert!(reference.counters.duplicates > 0 && reference.counters.dead_lettered > 0);
    assert_eq!(job.produce_small_batches(&input, 20), total);

    let read = |data: &Path| StoreView::open(data).counters.records_in;
    // (a) SIGTERM once a fifth is read.
    let config = job.config("run");
    let mut run = job.spawn("run", &config);
    run.wait_for("a fifth of the input read", DEADLINE, |p| {
        match p.metric("rapport_records_in_total") {
            Some(v) if v as u64 >= total / 5 => Ok(()),
            v => Err(format!("{v:?}")),
        }
    });
    run.stop();
    let after_term = read(&job.data("run"));
    assert!(
        after_term < total,
        "the whole input ({total}) was read before SIGTERM landed: the test's throttle is too weak"
    );
    assert_eq!(
        StoreView::open(&job.data("run")).outbox,
        0,
        "outbox left after SIGTERM"
    );

    // (b) SIGKILL once more than half is read in all.
    let config = job.config("run");
    let mut run = job.spawn("run", &config);
    run.wait_for("more than half the input read", DEADLINE, |p| {
        match p.metric("rapport_records_in_total") {
            Some(v) if after_term + v as u64 >= total * 55 / 100 => Ok(()),
            v => Err(format!("{v:?} after {after_term}")),
        }
    });
    run.sigkill();
    let after_kill = read(&job.data("run"));
    assert!(
        after_term < after_kill && after_kill < total,
        "read {after_term} before SIGTERM, {after_kill} before SIGKILL, of {total}"
    );

    // (c) To the end: this run reads exactly what is left (wait_records fails on more).
    let config = job.config("run");
    let mut run = job.spawn("run", &config);
    run.wait_records(total - after_kill);
    run.stop();
    eprintln!("restart: read {after_term} before SIGTERM, {after_kill} before SIGKILL, of {total}");

    let store = StoreView::open(&job.data("run"));
    assert_equivalent(
        "stopped, killed and resumed vs uninterrupted",
        &store,
        &reference,
    );
    let (scores, alerts) = assert_outputs_complete("restart", &brokers, &job.topics, &store);
    dead_letters("restart", &job, &store);
    eprintln!(
        "restart: {scores} score records for {} changes, {alerts} alert records",
        store.counters.scores_emitted
    );
    job.delete_topics();
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
        .unwrap_or(default)
}

/// Kill -9 chaos in Kafka mode: SIGKILLed at random points (from a printed seed) of the input,
/// restarted each time as the same static member on the same data directory, then run to the
/// end: state equal to the uninterrupted reference, every output published, repeats only of the
/// same output. 20 kills over about 3,000 records by default; the long variant is
/// `RAPPORT_CHAOS_KILLS=20 RAPPORT_CHAOS_ACCOUNTS=4000 cargo test --release --test kafka chaos -- --nocapture`
/// (about a million events).
#[test]
fn kafka_kill_9_at_seeded_points_then_resumed() {
    let brokers = broker();
    let kills = env_or("RAPPORT_CHAOS_KILLS", 20).max(1);
    let accounts = env_or("RAPPORT_CHAOS_ACCOUNTS", 40) as u32;
    let seed = env_or("RAPPORT_CHAOS_SEED", 20261201);
    eprintln!("chaos: RAPPORT_CHAOS_SEED={seed} RAPPORT_CHAOS_KILLS={kills} RAPPORT_CHAOS_ACCOUNTS={accounts}");
    let small = accounts <= 100;
    let mut client = if small { throttled_consumer(40) } else { Vec::new() };
    client.extend(short_session());
    let job = Job::new(
        "chaos",
        &brokers,
        Settings {
            partitions: 3,
            batch_max_records: if small { 25 } else { 5000 },
            client,
            static_members: true,
            ..Settings::default()
        },
    );
    job.create_topics();
    let input = job.path().join("events.ndjson");
    let (events, bad) = generate(&input, accounts, if small { 0.5 } else { 4.0 }, 400, seed);
    let total = events + bad;
    let config = job.config("run");
    let (reference, _) = job.embedded_reference(&config, &input);
    let produced = if small { job.produce_small_batches(&input, 20) } else { job.produce_cli(&input, "json") };
    assert_eq!(produced, total);

    let read = |data: &Path| StoreView::open(data).counters.records_in;
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let mut points: Vec<u64> = (0..kills)
        .map(|_| rand::Rng::random_range(&mut rng, total / 50..total * 95 / 100))
        .collect();
    points.sort_unstable();
    let mut recovery = Vec::new();
    let mut at = Vec::new();
    // A restart restores nothing, except a partition killed after it sent its first changelog
    // records and before the broker had them: its changelog is then empty, indistinguishable
    // from a reset topic, and the partition is read again from its start (same state, outputs
    // again with the same ids). Counted and reported, any other restore fails.
    let mut restores = 0;
    let count_restores = |job: &Job| -> usize {
        let log = std::fs::read_to_string(job.path().join("run.stderr")).unwrap_or_default();
        let all: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Restoring the partition from the changelog"))
            .collect();
        for l in &all {
            assert!(
                l.contains("the changelog is empty but the local state is not") && l.contains("records=0"),
                "a restarted static member restored a partition it had up to date:\n{l}"
            );
        }
        all.len()
    };
    for (i, point) in points.iter().enumerate() {
        let before = if i == 0 { 0 } else { read(&job.data("run")) };
        let config = job.config("run");
        let started = Instant::now();
        let mut run = job.spawn("run", &config);
        // At least one record past the last kill, so every restart is killed after progress.
        let target = (*point).max(before + 1);
        run.wait_for(&format!("kill {i}: {target} of {total} records read"), DEADLINE, |p| {
            match p.metric("rapport_records_in_total") {
                Some(v) if before + v as u64 >= target => Ok(()),
                v => Err(format!("{v:?} after {before}")),
            }
        });
        if i > 0 {
            recovery.push(started.elapsed());
        }
        run.sigkill();
        restores += count_restores(&job);
        at.push(read(&job.data("run")));
    }
    let done = read(&job.data("run"));
    assert!(done < total, "the whole input was read before the last kill");
    let config = job.config("run");
    let mut run = job.spawn("run", &config);
    let left = total - done;
    // Everything left, and with a restore (see above) its partition's records again: until the
    // stored positions are at the end of every input partition.
    run.wait_for(&format!("the {left} records left read"), DEADLINE, |p| {
        match p.metric("rapport_records_in_total") {
            Some(v) if v as u64 >= left => match p.metric("rapport_kafka_consumer_lag") {
                Some(lag) if lag == 0.0 => Ok(()),
                lag => Err(format!("lag {lag:?}")),
            },
            v => Err(format!("{v:?}")),
        }
    });
    run.stop();
    restores += count_restores(&job);

    let store = StoreView::open(&job.data("run"));
    if restores == 0 {
        assert_equivalent("killed at seeded points and resumed vs uninterrupted", &store, &reference);
    } else {
        // A partition read again counts its records again in the accounting; the state is the
        // same all the same.
        let what = "killed at seeded points (with a partition read again) vs uninterrupted";
        let names = |v: &StoreView| v.accounts.keys().cloned().collect::<BTreeSet<_>>();
        assert_eq!(names(&store), names(&reference), "{what}: the accounts with state");
        assert_same_map(&format!("{what}: daily buckets"), &store.buckets(), &reference.buckets());
        assert_same_map(&format!("{what}: first/last event times"), &store.times(), &reference.times());
    }
    let (scores, alerts) = assert_outputs_complete("chaos", &brokers, &job.topics, &store);
    dead_letters("chaos", &job, &store);
    recovery.sort();
    eprintln!(
        "RELIABILITY kill-9 kafka: seed {seed}, {} kills (committed records at each: {at:?}), {restores} restarts re-read a partition killed before its first changelog record arrived, {events} events + {bad} malformed, lost 0, {scores} score and {alerts} alert records (repeats only of the same id), state mismatches 0, restart to progress past the previous kill median {:.1} s, max {:.1} s",
        at.len(),
        recovery.get(recovery.len() / 2).map_or(0.0, |d| d.as_secs_f64()),
        recovery.last().map_or(0.0, |d| d.as_secs_f64()),
    );
    job.delete_topics();
}

/// Test 3: malformed records on every input topic go to the DLQ topic unchanged, with headers
/// saying why and exactly where they came from; the good records after them are processed.
#[test]
fn malformed_records_on_every_topic_are_dead_lettered_with_their_source() {
    let brokers = broker();
    let job = Job::new(
        "dlq",
        &brokers,
        Settings {
            partitions: 2,
            ..Settings::default()
        },
    );
    job.create_topics();
    let t = job.topics.clone();
    let head = |id: &str, ty: &str| {
        format!(
            r#""event_id":"{id}","account_id":"acme","occurred_at":"2026-11-20T10:15:00Z","type":"{ty}""#
        )
    };
    // (topic, key, value, the reason it must be dead-lettered for)
    type Bad<'a> = (&'a str, Option<&'a str>, Option<Vec<u8>>, &'static str);
    let bad: Vec<Bad> = vec![
        (
            t.usage.as_str(),
            Some("acme"),
            Some(b"<html>502 Bad Gateway</html>".to_vec()),
            "not_json",
        ),
        (t.usage.as_str(), None, None, "empty"),
        (
            t.email.as_str(),
            Some("acme"),
            Some(format!("{{{}", head("e-cut", "email")).into_bytes()),
            "truncated",
        ),
        (
            t.call.as_str(),
            Some("acme"),
            Some(vec![0x0a, 0x10, b'c', b'-']),
            "bad_protobuf",
        ),
        (
            t.deal.as_str(),
            Some("acme"),
            Some(vec![0x00, 0x00, 0x01]),
            "bad_framing",
        ),
        (
            t.deal.as_str(),
            None,
            Some(
                format!(
                    r#"{{{},"deal_id":"o-1","kind":"renewal","stage":"closed_won","amount":-5.0}}"#,
                    head("d-neg", "deal")
                )
                .into_bytes(),
            ),
            "out_of_range",
        ),
    ];
    let good: Vec<(&str, String)> = vec![
        (
            t.usage.as_str(),
            format!(
                r#"{{{},"user_id":"u1","feature":"reports","quantity":1}}"#,
                head("g-u", "product_usage")
            ),
        ),
        (
            t.email.as_str(),
            format!(
                r#"{{{},"contact_id":"c1","direction":"inbound","action":"replied"}}"#,
                head("g-e", "email")
            ),
        ),
        (
            t.call.as_str(),
            format!(
                r#"{{{},"contact_id":"c1","outcome":"connected","sentiment":0.4,"duration_s":600}}"#,
                head("g-c", "call")
            ),
        ),
        (
            t.deal.as_str(),
            format!(
                r#"{{{},"deal_id":"o-2","kind":"new_business","stage":"closed_won","amount":1000.0,"currency":"USD"}}"#,
                head("g-d", "deal")
            ),
        ),
    ];
    let producer = producer(&brokers, &[]);
    let mut want: BTreeMap<(String, i32, i64), (Vec<u8>, &str)> = BTreeMap::new();
    for (topic, key, value, reason) in &bad {
        let (p, o) = send_one(&producer, topic, *key, value.as_deref());
        want.insert(
            (topic.to_string(), p, o),
            (value.clone().unwrap_or_default(), *reason),
        );
    }
    for (topic, value) in &good {
        send_one(&producer, topic, Some("acme"), Some(value.as_bytes()));
    }

    let config = job.config("run");
    let mut run = job.spawn("run", &config);
    run.wait_records((bad.len() + good.len()) as u64);
    run.stop();
    let store = StoreView::open(&job.data("run"));
    assert_eq!(
        store.accounting(),
        [10, 4, 0, 6],
        "accounting [read, folded, duplicates, dead-lettered]"
    );

    let dlq = dead_letters("dlq", &job, &store);
    let got: BTreeMap<(String, i32, i64), (Vec<u8>, String)> = dlq
        .iter()
        .map(|(k, r)| {
            let detail = r.header("detail").unwrap_or_default();
            assert!(detail.len() > 10, "{k:?}: detail header {detail:?}");
            (
                k.clone(),
                (
                    r.value.clone().unwrap_or_default(),
                    r.header("reason").unwrap_or_default(),
                ),
            )
        })
        .collect();
    let want: BTreeMap<(String, i32, i64), (Vec<u8>, String)> = want
        .into_iter()
        .map(|(k, (v, r))| (k, (v, r.to_owned())))
        .collect();
    assert_same_map(
        "dead letters by (source_topic, source_partition, source_offset) → (value, reason)",
        &got,
        &want,
    );

    // The good records after the bad ones: one event of each type folded into acme.
    let acme = &store.accounts["acme"];
    let b = store.buckets();
    let day = b
        .iter()
        .find(|((a, _), _)| a == "acme")
        .map(|(_, v)| *v)
        .expect("acme has a bucket");
    assert_eq!(
        (day[0], day[4], day[6], day[9]),
        (1, 1, 1, 400),
        "acme's bucket: one usage event, one reply, one call of sentiment 0.4"
    );
    assert_eq!(acme.arr, 1000.0, "the won deal counts");
    job.delete_topics();
}

/// Test 4: two instances in one consumer group split six partitions and hold disjoint accounts;
/// when one stops, the other takes all six over and rebuilds the moved ones from the earliest
/// offsets, ending with every account equal to the single-instance reference.
#[test]
fn two_instances_split_partitions_and_one_takes_over() {
    let brokers = broker();
    let job = Job::new(
        "group",
        &brokers,
        Settings {
            partitions: 6,
            client: short_session(),
            ..Settings::default()
        },
    );
    job.create_topics();
    let input = job.path().join("events.ndjson");
    let (events, bad) = generate(&input, 60, 0.5, 700, 77);
    let total = events + bad;
    let config_a = job.config("a");
    let config_b = job.config("b");
    let (reference, _) = job.embedded_reference(&config_a, &input);
    let all_accounts = reference.accounts.len();
    assert!(
        reference
            .partition_of
            .values()
            .collect::<BTreeSet<_>>()
            .len()
            == 6,
        "the portfolio spreads over all six partitions"
    );

    // Both join before any input exists, so neither holds state for the other's partitions.
    let mut a = job.spawn("a", &config_a);
    let mut b = job.spawn("b", &config_b);
    let owned = |p: &Proc| p.metric("rapport_kafka_owned_partitions").map(|v| v as u64);
    let wait_split = |a: &mut Proc, b: &mut Proc| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            a.assert_running();
            b.assert_running();
            let (x, y) = (owned(a), owned(b));
            if let (Some(x), Some(y)) = (x, y)
                && x > 0
                && y > 0
                && x + y == 6
            {
                return (x, y);
            }
            assert!(
                Instant::now() < deadline,
                "the two instances did not split the six partitions: owned {x:?} and {y:?}\n{}\n{}",
                a.logs(),
                b.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (owned_a, owned_b) = wait_split(&mut a, &mut b);
    assert_eq!(job.produce_cli(&input, "mixed"), total);

    // Together they read everything once, and hold disjoint accounts.
    let records = |p: &Proc| p.metric("rapport_records_in_total").unwrap_or(-1.0) as i64;
    let deadline = Instant::now() + DEADLINE;
    loop {
        // Each instance's counter is read once per round: reading it again for the check below
        // could see a later value than the one the loop compared.
        let (read_a, read_b) = (records(&a), records(&b));
        if read_a + read_b == total as i64 {
            break;
        }
        a.assert_running();
        b.assert_running();
        assert!(
            read_a + read_b < total as i64 && Instant::now() < deadline,
            "the two instances read {read_a} + {read_b} records of {total}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (owned(&a), owned(&b)),
        (Some(owned_a), Some(owned_b)),
        "no rebalance while reading"
    );
    let accounts = |p: &Proc| p.metric("rapport_accounts_tracked").unwrap_or(-1.0) as i64;
    let (acc_a, acc_b) = (accounts(&a), accounts(&b));
    assert!(
        acc_a > 0 && acc_b > 0 && (acc_a + acc_b) as usize == all_accounts,
        "accounts held: {acc_a} + {acc_b}, of {all_accounts} (an account on both would count twice)"
    );

    // B stops: its store holds only its own partitions' accounts, each equal to the reference.
    b.stop();
    let store_b = StoreView::open(&job.data("b"));
    let parts_b: BTreeSet<u16> = store_b.partition_of.values().copied().collect();
    assert_eq!(
        parts_b.len() as u64,
        owned_b,
        "B's accounts lie in the {owned_b} partitions it owned"
    );
    let mine: BTreeSet<String> = store_b.accounts.keys().cloned().collect();
    assert_eq!(mine.len() as i64, acc_b);
    let theirs: BTreeSet<String> = reference
        .partition_of
        .iter()
        .filter(|(_, p)| parts_b.contains(p))
        .map(|(a, _)| a.clone())
        .collect();
    assert_eq!(
        mine, theirs,
        "B holds every account of its partitions and no other"
    );
    let (got_b, got_t) = store_b.only(&mine);
    let (want_b, want_t) = reference.only(&mine);
    assert_same_map("B's daily buckets", &got_b, &want_b);
    assert_same_map("B's event times", &got_t, &want_t);

    // A takes all six over: B's partitions by restoring them from the changelog B wrote, not by
    // reading their inputs again; its own at once, from its local state.
    a.wait_for("A to own all six partitions", DEADLINE, |p| {
        match owned(p) {
            Some(6) => Ok(()),
            v => Err(format!("{v:?}")),
        }
    });
    let read_by_a = records(&a);
    a.stop();
    let store_a = StoreView::open(&job.data("a"));
    let names: BTreeSet<String> = store_a.accounts.keys().cloned().collect();
    let want: BTreeSet<String> = reference.accounts.keys().cloned().collect();
    assert_eq!(names, want, "the survivor holds every account");
    assert_same_map("the survivor's daily buckets", &store_a.buckets(), &reference.buckets());
    assert_same_map("the survivor's event times", &store_a.times(), &reference.times());
    assert_eq!(
        read_by_a as u64 + store_b.counters.records_in,
        total,
        "every record was read once: A did not read B's partitions again"
    );
    assert_eq!(
        job.restored_partitions("a"),
        parts_b,
        "A restores exactly B's partitions from the changelog:\n{}",
        tail(&job.path().join("a.stderr"), 60)
    );
    job.delete_topics();
}

/// Test 5: the broker (one of this test's own) goes away mid-run and comes back: rapport stays
/// up and healthy meanwhile, then reads the rest; nothing is lost, and it exits 0 on SIGTERM.
#[test]
fn broker_outage_mid_run() {
    broker(); // the shared broker is not used here, but its absence means a broken setup
    let broker_dir = tempfile::Builder::new()
        .prefix("rapport-kafka-outage-broker-")
        .tempdir()
        .unwrap();
    let own = OwnBroker::new(broker_dir.path());
    own.start();
    let brokers = own.address();
    let mut client = throttled_consumer(40);
    client.extend(short_session());
    let job = Job::new(
        "outage",
        &brokers,
        Settings {
            partitions: 2,
            batch_max_records: 25,
            client,
            ..Settings::default()
        },
    );
    job.create_topics();
    let input = job.path().join("events.ndjson");
    let (events, bad) = generate(&input, 40, 0.5, 400, 5150);
    let total = events + bad;
    let config = job.config("run");
    let (reference, _) = job.embedded_reference(&config, &input);
    assert_eq!(job.produce_small_batches(&input, 20), total);

    let mut run = job.spawn("run", &config);
    let port = run.port;
    run.wait_for("a tenth of the input read", DEADLINE, |p| {
        match p.metric("rapport_records_in_total") {
            Some(v) if v as u64 >= total / 10 => Ok(()),
            v => Err(format!("{v:?}")),
        }
    });
    own.stop();
    let at_stop = run.metric("rapport_records_in_total").unwrap() as u64;
    assert!(
        at_stop < total,
        "the whole input was read before the broker stopped: the test's throttle is too weak"
    );

    // The broker is away for a while: rapport stays up, and /healthz says so.
    let away = Instant::now() + Duration::from_secs(5);
    while Instant::now() < away {
        run.assert_running();
        let health = http_get(port, "/healthz").map(|(s, _)| s);
        assert_eq!(
            health,
            Some(200),
            "/healthz while the broker is away\n{}",
            run.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let while_away = run.metric("rapport_records_in_total").unwrap() as u64;
    assert!(
        while_away < total,
        "all {total} records read while the broker was away?"
    );

    let restarting = Instant::now();
    own.start();
    let back = Instant::now();
    run.wait_for(
        &format!("all {total} records read after the broker came back"),
        Duration::from_secs(90),
        |p| match p.metric("rapport_records_in_total") {
            Some(v) if v as u64 == total => Ok(()),
            v => Err(format!("{v:?}")),
        },
    );
    let recovered = back.elapsed();
    run.stop();
    eprintln!(
        "outage: {at_stop} of {total} read when the broker stopped, {while_away} while it was away"
    );
    eprintln!(
        "RELIABILITY broker stopped: broker stopped at {at_stop} of {total} records and away 5 s, /healthz 200 throughout, all read {:.1} s after it answered again (its restart took {:.1} s)",
        recovered.as_secs_f64(),
        back.duration_since(restarting).as_secs_f64()
    );

    let store = StoreView::open(&job.data("run"));
    assert_equivalent(
        "a run across a broker outage vs the reference",
        &store,
        &reference,
    );
    assert_outputs_complete("outage", &brokers, &job.topics, &store);
    dead_letters("outage", &job, &store);
}

/// Test 6: the broker (one of this test's own) is frozen with SIGSTOP for longer than the group's
/// session timeout and the clients' request timeouts, then thawed. Meanwhile rapport stays up,
/// says it is not ready, and does not spin; afterwards it rejoins the group, reads the rest and
/// loses nothing.
#[test]
fn broker_paused_past_session_and_request_timeouts() {
    broker();
    let broker_dir = tempfile::Builder::new()
        .prefix("rapport-kafka-pause-broker-")
        .tempdir()
        .unwrap();
    let own = OwnBroker::new(broker_dir.path());
    own.start();
    let brokers = own.address();
    let mut client = throttled_consumer(40);
    client.extend(short_session());
    let job = Job::new(
        "pause",
        &brokers,
        Settings {
            partitions: 2,
            batch_max_records: 25,
            client,
            ..Settings::default()
        },
    );
    job.create_topics();
    let input = job.path().join("events.ndjson");
    let (events, bad) = generate(&input, 40, 0.5, 400, 5151);
    let total = events + bad;
    let config = job.config("run");
    let (reference, _) = job.embedded_reference(&config, &input);
    assert_eq!(job.produce_small_batches(&input, 20), total);

    let mut run = job.spawn("run", &config);
    let port = run.port;
    run.wait_for("a tenth of the input read and ready", DEADLINE, |p| {
        match (p.metric("rapport_records_in_total"), http_get(port, "/readyz")) {
            (Some(v), Some((200, _))) if v as u64 >= total / 10 => Ok(()),
            v => Err(format!("{v:?}")),
        }
    });
    own.signal("STOP");
    let paused = Instant::now();
    // Not ready once the clients find no broker answering (their request timeouts, then the
    // next statistics); alive all along.
    run.wait_for("/readyz 503 while the broker is frozen", Duration::from_secs(150), |_| {
        match (http_get(port, "/healthz"), http_get(port, "/readyz")) {
            (Some((200, _)), Some((503, _))) => Ok(()),
            v => Err(format!("{v:?}")),
        }
    });
    let degraded_after = paused.elapsed();
    // Frozen past the producer's 30 s request timeout too; waiting, not spinning, meanwhile:
    // rapport uses well under a core, measured over 10 s at least (not ready can come late on
    // a loaded machine, and over a shorter time one 10 ms tick of CPU time is already a lot).
    let (cpu0, t0) = (cpu_seconds(run.pid()), Instant::now());
    run.wait_for("35 s of the frozen broker, 10 s of them measured", Duration::from_secs(60), |_| {
        if paused.elapsed() >= Duration::from_secs(35) && t0.elapsed() >= Duration::from_secs(10) {
            Ok(())
        } else {
            Err("waiting".into())
        }
    });
    let cpu = (cpu_seconds(run.pid()) - cpu0) / t0.elapsed().as_secs_f64();
    assert!(cpu < 0.25, "rapport used {:.0}% of a core while the broker was frozen", cpu * 100.0);
    let frozen = paused.elapsed();
    own.signal("CONT");
    let thawed = Instant::now();

    run.wait_for(
        &format!("all {total} records read and ready after the broker thawed"),
        Duration::from_secs(150),
        |p| match (p.metric("rapport_records_in_total"), http_get(port, "/readyz")) {
            (Some(v), Some((200, _))) if v as u64 == total => Ok(()),
            v => Err(format!("{v:?}")),
        },
    );
    let recovered = thawed.elapsed();
    run.stop();
    eprintln!(
        "RELIABILITY broker SIGSTOP: frozen {:.0} s, not ready after {:.0} s, {:.0}% of a core while frozen, all {total} records read and ready {:.1} s after SIGCONT",
        frozen.as_secs_f64(),
        degraded_after.as_secs_f64(),
        cpu * 100.0,
        recovered.as_secs_f64()
    );

    let store = StoreView::open(&job.data("run"));
    assert_equivalent("a run across a frozen broker vs the reference", &store, &reference);
    assert_outputs_complete("pause", &brokers, &job.topics, &store);
    dead_letters("pause", &job, &store);
}

/// A data directory keeps the topics its state was built from: pointed at other topics, rapport
/// refuses to start with a sentence saying what to do, instead of mixing two topic sets' state.
#[test]
fn a_data_directory_of_another_topic_set_is_refused() {
    let brokers = broker();
    let first = Job::new("topicset-a", &brokers, Settings::default());
    first.create_topics();
    let config = first.config("run");
    let mut run = first.spawn("run", &config);
    run.wait_for("the partitions to be read", DEADLINE, |p| {
        match p.metric("rapport_kafka_owned_partitions") {
            Some(v) if v as u16 == first.settings.partitions => Ok(()),
            v => Err(format!("{v:?}")),
        }
    });
    run.stop();

    let second = Job::new("topicset-b", &brokers, Settings::default());
    second.create_topics();
    let other = second.config("run");
    // The second job's topics, the first job's data directory.
    let text = std::fs::read_to_string(&other).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("data_dir = ") {
                format!("data_dir = \"{}\"", first.data("run").display())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&other, text).unwrap();
    // Waited for within a limit: a rapport that wrongly starts runs until it is stopped (it is
    // killed when the test fails).
    let (stdout, stderr) = (second.path().join("refused.stdout"), second.path().join("refused.stderr"));
    let child = rapport()
        .args(["run", "--quiet", "--config"])
        .arg(&other)
        .env("RAPPORT_TELEMETRY__LISTEN", "")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start rapport run");
    let mut refused = Proc { child, tag: "topicset-b/run".into(), port: 0, stdout, stderr };
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = refused.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "rapport still runs {DEADLINE:?} after it was started on another topic set's state\n{}",
            refused.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = std::fs::read_to_string(&refused.stderr).unwrap_or_default();
    assert!(!status.success(), "rapport started on another topic set's state:\n{said}");
    assert!(
        said.contains("holds state built from the topics")
            && said.contains(&first.topics.usage)
            && said.contains("store.data_dir"),
        "the refusal names the old topics and the fix:\n{said}"
    );
    first.delete_topics();
    second.delete_topics();
}
