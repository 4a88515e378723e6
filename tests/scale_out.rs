//! Scale-out against the real broker: several `rapport run` processes in one consumer group on
//! one machine, partitions moving between them with their state through the changelog.
//!
//! Each test compares the final state of every account — read from the store of the instance
//! that owned the account's partition at the end — with one uninterrupted embedded run over the
//! same input (order-independently: daily buckets and event times, see `kafka_support`), checks
//! that every score change and open alert of those final states was published (repeats
//! byte-identical), and that every "gone dark" alert published is justified by the input: the
//! account really had no usage between the last usage the alert names and the moment it opened.

mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use kafka_support::*;
use serde_json::Value;

/// What `/status` says of an instance: partition → settled (caught up, every input read to
/// its end).
fn partitions(p: &Proc) -> Option<BTreeMap<u16, bool>> {
    let (code, body) = http_get(p.port, "/status")?;
    if code != 200 {
        return None;
    }
    let v: rapport::app::Status = serde_json::from_str(&body).ok()?;
    Some(v.partitions.iter().map(|x| (x.partition, x.settled())).collect())
}

/// Waits until the instances together own all `n` partitions, each on exactly one, each caught
/// up with no lag; returns each partition's owner (index into `procs`).
fn wait_settled(procs: &mut [&mut Proc], n: u16, what: &str) -> BTreeMap<u16, usize> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stable_since: Option<(Instant, BTreeMap<u16, usize>)> = None;
    loop {
        for p in procs.iter_mut() {
            p.assert_running();
        }
        let views: Vec<Option<BTreeMap<u16, bool>>> =
            procs.iter().map(|p| partitions(p)).collect();
        let mut owner = BTreeMap::new();
        let mut ok = views.iter().all(Option::is_some);
        for (i, v) in views.iter().enumerate() {
            for (part, settled) in v.iter().flatten() {
                ok &= *settled;
                ok &= owner.insert(*part, i).is_none();
            }
        }
        ok &= owner.len() == n as usize;
        if ok {
            // The view is refreshed once a second: hold it for two before trusting it.
            match &stable_since {
                Some((t, o)) if *o == owner && t.elapsed() >= Duration::from_secs(2) => {
                    return owner;
                }
                Some((_, o)) if *o == owner => {}
                _ => stable_since = Some((Instant::now(), owner)),
            }
        } else {
            stable_since = None;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.logs()).collect();
            panic!(
                "{what}: the instances did not settle on all {n} partitions, caught up: {views:?}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One store assembled from several: each account from the store of its partition's owner.
fn assemble(job: &Job, owners: &BTreeMap<u16, String>) -> StoreView {
    let mut views: BTreeMap<String, StoreView> = BTreeMap::new();
    for tag in owners.values() {
        if !views.contains_key(tag) {
            views.insert(tag.clone(), StoreView::open(&job.data(tag)));
        }
    }
    let mut accounts = BTreeMap::new();
    let mut partition_of = BTreeMap::new();
    for (p, tag) in owners {
        let v = &views[tag];
        for (a, q) in &v.partition_of {
            if q == p {
                accounts.insert(a.clone(), v.accounts[a].clone());
                partition_of.insert(a.clone(), *p);
            }
        }
    }
    StoreView {
        counters: Default::default(),
        accounts,
        partition_of,
        outbox: 0,
    }
}

/// The end of every instance's log in the job's directory, for a failure message: which one
/// restored, kept or gave away which partition, and when.
fn instance_logs(job: &Job) -> String {
    let mut logs: Vec<_> = std::fs::read_dir(job.path())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.retain(|p| p.extension().is_some_and(|x| x == "stderr"));
    logs.sort();
    logs.iter()
        .map(|p| format!("--- {}\n{}", p.display(), tail(p, 60)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every open "gone dark" alert published is justified by the input: the account had no usage
/// event after the last usage the alert names and before the alert opened. Returns how many
/// were checked.
fn gone_dark_alerts_are_true(what: &str, job: &Job, input: &Path) -> usize {
    let parse = |s: &str| rapport::codec::time::parse_rfc3339_ms(s).expect("an RFC 3339 time");
    let mut usage: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    // The input holds malformed records too, some not even UTF-8.
    for line in std::fs::read(input).unwrap().split(|b| *b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if v["type"] == "product_usage" {
            if let (Some(a), Some(t)) = (v["account_id"].as_str(), v["occurred_at"].as_str()) {
                if let Some(t) = rapport::codec::time::parse_rfc3339_ms(t) {
                    usage.entry(a.to_owned()).or_default().push(t);
                }
            }
        }
    }
    let mut checked = 0;
    for r in read_all(&job.brokers, &job.topics.alerts) {
        let v = r.json();
        if v["rule"] != "gone_dark" || v["status"] != "open" {
            continue;
        }
        let account = v["account_id"].as_str().unwrap();
        let last = parse(v["evidence"]["last_usage_at"].as_str().expect("last_usage_at"));
        let opened = parse(v["opened_at"].as_str().unwrap());
        let between: Vec<i64> = usage
            .get(account)
            .into_iter()
            .flatten()
            .copied()
            .filter(|t| *t > last && *t < opened)
            .collect();
        assert!(
            between.is_empty(),
            "{what}: false \"gone dark\" alert for {account}: it names its last usage at {last} and opened at {opened}, but the input has usage at {between:?}\n{v}\n{}",
            instance_logs(job)
        );
        checked += 1;
    }
    checked
}

/// The writer ids instance `tag`'s changelog records carry (its store's own, and those its
/// restores gave partitions), read from its store once it has stopped.
fn writer_ids(job: &Job, tag: &str) -> BTreeSet<Vec<u8>> {
    use rapport::store::{Cf, RocksStore, Store, keys};
    let defaults: rapport::config::Config = toml::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/default.toml"
    )))
    .expect("config/default.toml");
    let data = job.data(tag);
    let store = RocksStore::open_at(&data, &defaults.store)
        .unwrap_or_else(|e| panic!("opening the store at {}: {e}", data.display()));
    let mut ids = BTreeSet::new();
    ids.extend(store.get(Cf::Meta, keys::STORE_ID_KEY).unwrap());
    for p in 0..job.settings.partitions {
        ids.extend(store.get(Cf::Meta, &keys::changelog_writer_key(p)).unwrap());
    }
    ids
}

/// The changelog partitions that hold records of one of `writers` on the broker.
fn partitions_written_by(job: &Job, writers: &BTreeSet<Vec<u8>>) -> BTreeSet<u16> {
    read_all(&job.brokers, &job.topics.changelog)
        .iter()
        .filter(|r| {
            r.headers
                .get(rapport::changelog::WRITER_HEADER)
                .is_some_and(|w| writers.contains(w))
        })
        .map(|r| r.partition as u16)
        .collect()
}

fn settings() -> Settings {
    let mut client = throttled_consumer(60);
    client.extend(short_session());
    Settings {
        partitions: 6,
        batch_max_records: 40,
        client,
        // The throttled fetches leave a topic's queue empty for a while between batches; the
        // merge waits for it rather than let the others (and the partition's stream time) run
        // ahead, so that event-time timers fire where the uninterrupted run fires them.
        merge_wait_ms: 30_000,
        ..Settings::default()
    }
}

/// Three instances share six partitions; one is killed with SIGKILL mid-run and its partitions
/// move; then a brand-new instance with an empty data directory joins and takes partitions over
/// from the changelog alone. Final states equal one uninterrupted run's; no output is lost.
#[test]
fn killed_instance_partitions_move_and_a_new_instance_restores_from_the_changelog() {
    let brokers = broker();
    let job = Job::new("scale-kill", &brokers, settings());
    job.create_topics();
    let input = job.path().join("events.ndjson");
    let (events, bad) = generate(&input, 90, 0.6, 500, 4242);
    let total = events + bad;
    let config_a = job.config("a");
    let config_b = job.config("b");
    let config_c = job.config("c");
    let config_d = job.config("d");
    let (reference, _) = job.embedded_reference(&config_a, &input);
    assert_eq!(reference.counters.records_in, total);
    assert_eq!(job.produce_small_batches(&input, 10), total);

    let mut a = job.spawn("a", &config_a);
    let mut b = job.spawn("b", &config_b);
    let mut c = job.spawn("c", &config_c);
    // Mid-run: C has read some of its share, and the three together not yet everything.
    // C's /status view is refreshed once a second, so it can still show no partitions when its
    // first records are already counted: wait for both, and take C's partitions from that look.
    let parts_c: BTreeSet<u16> =
        c.wait_for("C to be part-way through the partitions it owns", DEADLINE, |p| {
            let parts: BTreeSet<u16> =
                partitions(p).unwrap_or_default().keys().copied().collect();
            match p.metric("rapport_records_in_total") {
                Some(v) if v >= 100.0 && !parts.is_empty() => Ok(parts),
                v => Err(format!("records in {v:?}, partitions in /status {parts:?}")),
            }
        });
    let read = |p: &Proc| p.metric("rapport_records_in_total").unwrap_or(0.0) as u64;
    let so_far = read(&a) + read(&b) + read(&c);
    assert!(
        so_far < total,
        "the input ({total}) was read before the kill ({so_far}): the throttle is too weak"
    );
    c.sigkill();
    eprintln!("scale-kill: C killed after {so_far} of {total} records; it owned {parts_c:?}");
    let writers_c = writer_ids(&job, "c");

    // A and B take C's partitions over (restoring them from the changelog C wrote) and finish.
    let killed_at = Instant::now();
    let owners = wait_settled(&mut [&mut a, &mut b], 6, "after the kill");
    eprintln!(
        "scale-kill: all six partitions caught up again {:.1} s after the kill: {owners:?}",
        killed_at.elapsed().as_secs_f64()
    );
    let moved: BTreeSet<u16> = job.restored_partitions("a")
        .union(&job.restored_partitions("b"))
        .copied()
        .collect();
    // A partition is restored when its changelog holds records C wrote. One of C's for which
    // the broker had none yet (C had just been given it, or was killed before its first
    // records were acknowledged) is taken over as it was before C had it: read from its start,
    // or from the taker's own state. That is right too, and not what this checks.
    let written: BTreeSet<u16> = partitions_written_by(&job, &writers_c)
        .intersection(&parts_c)
        .copied()
        .collect();
    assert!(
        !written.is_empty(),
        "none of C's partitions {parts_c:?} has changelog records of C on the broker: C was killed before it published any"
    );
    assert!(
        written.is_subset(&moved),
        "C's partitions with changelog records of C, {written:?} (of {parts_c:?}), were restored from the changelog by A or B (restored: {moved:?})\n{}\n{}",
        a.logs(),
        b.logs()
    );

    // D joins with an empty data directory after everything was read: it gets partitions and
    // restores them from the changelog alone, reading no input at all.
    let mut d = job.spawn("d", &config_d);
    let owners = wait_settled(&mut [&mut a, &mut b, &mut d], 6, "after D joined");
    let parts_d: BTreeSet<u16> = owners.iter().filter(|(_, i)| **i == 2).map(|(p, _)| *p).collect();
    assert!(!parts_d.is_empty(), "D was given partitions: {owners:?}");
    assert_eq!(
        job.restored_partitions("d"),
        parts_d,
        "D restored every partition it holds from the changelog\n{}",
        d.logs()
    );
    assert_eq!(
        read(&d),
        0,
        "D read no input: its state came from the changelog alone\n{}",
        d.logs()
    );
    let tags = ["a", "b", "d"];
    let owners: BTreeMap<u16, String> = owners
        .into_iter()
        .map(|(p, i)| (p, tags[i].to_owned()))
        .collect();
    // D's accounts are served from its store while it runs; stop everyone cleanly.
    d.stop();
    a.stop();
    b.stop();

    let merged = assemble(&job, &owners);
    let names: BTreeSet<String> = merged.accounts.keys().cloned().collect();
    let want: BTreeSet<String> = reference.accounts.keys().cloned().collect();
    assert_eq!(names, want, "the owners together hold every account, each once");
    assert_same_map("daily buckets after the kill and the join", &merged.buckets(), &reference.buckets());
    assert_same_map("event times after the kill and the join", &merged.times(), &reference.times());
    let (scores, alerts) = assert_outputs_cover("scale-kill", &brokers, &job.topics, &merged);
    let dark = gone_dark_alerts_are_true("scale-kill", &job, &input);
    eprintln!("scale-kill: {scores} score records, {alerts} alert records ({dark} gone-dark, all justified)");
    job.delete_topics();
}

/// One instance, then three, then one again during a run (eager rebalancing and static
/// membership this time): the same final state as one uninterrupted run.
#[test]
fn scaling_from_one_to_three_and_back_to_one_keeps_every_account() {
    let brokers = broker();
    let job = Job::new(
        "scale-123",
        &brokers,
        Settings {
            assignment: "eager",
            static_members: true,
            ..settings()
        },
    );
    job.create_topics();
    let input = job.path().join("events.ndjson");
    let (events, bad) = generate(&input, 80, 0.6, 600, 777);
    let total = events + bad;
    let config_a = job.config("a");
    let config_b = job.config("b");
    let config_c = job.config("c");
    let (reference, _) = job.embedded_reference(&config_a, &input);
    assert_eq!(reference.counters.records_in, total);

    // The input in two halves: the first for A alone, the second for the three.
    let text = std::fs::read(&input).unwrap();
    let lines: Vec<&[u8]> = text.strip_suffix(b"\n").unwrap_or(&text).split(|b| *b == b'\n').collect();
    let half = lines.len() / 2;
    let (first, second) = (job.path().join("first.ndjson"), job.path().join("second.ndjson"));
    let write = |path: &Path, part: &[&[u8]]| {
        let mut out = part.join(&b'\n');
        out.push(b'\n');
        std::fs::write(path, out).unwrap();
    };
    write(&first, &lines[..half]);
    write(&second, &lines[half..]);

    let mut a = job.spawn("a", &config_a);
    assert_eq!(job.produce_small_batches(&first, 15), half as u64);
    wait_settled(&mut [&mut a], 6, "A alone");

    let mut b = job.spawn("b", &config_b);
    let mut c = job.spawn("c", &config_c);
    assert_eq!(
        job.produce_small_batches(&second, 15),
        (lines.len() - half) as u64
    );
    let owners = wait_settled(&mut [&mut a, &mut b, &mut c], 6, "three instances");
    let given_away: BTreeSet<u16> = owners.iter().filter(|(_, i)| **i != 0).map(|(p, _)| *p).collect();
    assert!(
        !given_away.is_empty() && given_away.len() < 6,
        "the three instances share the partitions: {owners:?}"
    );
    assert!(
        job.restored_partitions("b")
            .union(&job.restored_partitions("c"))
            .count()
            >= given_away.len(),
        "B and C restored what A gave them from the changelog\n{}\n{}",
        b.logs(),
        c.logs()
    );

    // Back to one: B and C stop; A gets their partitions back, with state they changed since.
    b.stop();
    c.stop();
    wait_settled(&mut [&mut a], 6, "A alone again");
    let back = job.restored_partitions("a");
    assert!(
        given_away.is_subset(&back),
        "A restored the partitions it got back ({given_away:?}) since others wrote their changelog since (restored: {back:?})\n{}",
        a.logs()
    );
    a.stop();

    let store = StoreView::open(&job.data("a"));
    let names: BTreeSet<String> = store.accounts.keys().cloned().collect();
    let want: BTreeSet<String> = reference.accounts.keys().cloned().collect();
    assert_eq!(names, want, "A holds every account at the end");
    assert_same_map("daily buckets after 1 → 3 → 1", &store.buckets(), &reference.buckets());
    assert_same_map("event times after 1 → 3 → 1", &store.times(), &reference.times());
    let (scores, alerts) = assert_outputs_cover("scale-123", &brokers, &job.topics, &store);
    let dark = gone_dark_alerts_are_true("scale-123", &job, &input);
    eprintln!("scale-123: {scores} score records, {alerts} alert records ({dark} gone-dark, all justified)");
    job.delete_topics();
}

/// A static member restarted within the session timeout gets its partitions back without a
/// rebalance, and starts them at once from its local state: nothing is restored.
#[test]
fn a_restarted_static_member_starts_at_once_from_its_local_state() {
    let brokers = broker();
    let job = Job::new(
        "scale-static",
        &brokers,
        Settings {
            static_members: true,
            ..settings()
        },
    );
    job.create_topics();
    let input = job.path().join("events.ndjson");
    let (events, bad) = generate(&input, 40, 0.5, 1000, 99);
    let config = job.config("a");
    assert_eq!(job.produce_small_batches(&input, 50), events + bad);
    let mut a = job.spawn("a", &config);
    wait_settled(&mut [&mut a], 6, "first run");
    a.stop();
    let first_run = std::fs::read_to_string(job.path().join("a.stderr")).unwrap().len();
    let mut a = job.spawn("a", &config);
    wait_settled(&mut [&mut a], 6, "after the restart");
    a.stop();
    let log = std::fs::read_to_string(job.path().join("a.stderr")).unwrap()[first_run..].to_owned();
    let starts_at_once = log
        .lines()
        .filter(|l| l.contains("Local state is up to date with the changelog"))
        .count();
    assert!(
        starts_at_once >= 6,
        "the restarted instance started its six partitions from local state ({starts_at_once} times in the log)\n{log}"
    );
    assert!(
        !log.contains("Restoring the partition from the changelog"),
        "nothing was restored: the changelog was last written by this very store\n{log}"
    );
    job.delete_topics();
}
