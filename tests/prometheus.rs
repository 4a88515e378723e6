//! The operations kit against the real things: `promtool` checks the shipped scrape config and
//! alert rules and runs their unit tests; a real Prometheus server (Debian's `prometheus`)
//! loads the rules and scrapes a running Kafka-mode rapport that has read, dead-lettered,
//! restored a partition from the changelog and committed batches; its HTTP API must then hold
//! every metric of the code's list with exactly the documented labels, and every metric name
//! the Grafana dashboard and the alert rules query.

mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_support::*;
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

/// Runs a tool that `./dev.sh test` installs; a missing one fails the test with the fix.
fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed: `apt-get install prometheus` (./dev.sh test installs it)"
    );
    Command::new(name)
}

fn run_ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned()
        + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_config_and_rules_and_every_rule_unit_test_passes() {
    let dir = deploy("prometheus");
    let mut c = tool("promtool");
    c.current_dir(&dir).args(["check", "config", "prometheus.yml"]);
    run_ok(c, "promtool check config");
    let mut c = tool("promtool");
    c.current_dir(&dir).args(["check", "rules", "rapport-rules.yml"]);
    let said = run_ok(c, "promtool check rules");
    assert!(said.contains("SUCCESS"), "{said}");
    let mut c = tool("promtool");
    c.current_dir(&dir).args(["test", "rules", "rapport-rules_test.yml"]);
    let said = run_ok(c, "promtool test rules");
    assert!(said.contains("SUCCESS"), "{said}");
    // Every alert has a unit test that names it.
    let rules = std::fs::read_to_string(dir.join("rapport-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("rapport-rules_test.yml")).unwrap();
    for alert in alert_names(&rules) {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alert {alert} has no unit test in rapport-rules_test.yml"
        );
        let runbook = std::fs::read_to_string(repo().join("deploy/RUNBOOK.md")).unwrap();
        assert!(
            runbook.contains(&format!("## {alert}")),
            "alert {alert} has no section in deploy/RUNBOOK.md"
        );
    }
}

fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|a| a.trim().to_owned())
        .collect()
}

/// Every `rapport_…` identifier in a text (queries of a dashboard or of rules).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("rapport_") {
        let start = i + at;
        let boundary = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Every `expr` of a Grafana dashboard, whatever the nesting.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target_port: u16) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: rapport\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
                rules = deploy("prometheus/rapport-rules.yml").display()
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, log }
    }

    fn api(&self, path_and_query: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path_and_query}", self.port);
        let body = ureq::get(&url).call().ok()?.body_mut().read_to_string().ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    fn alive(&mut self) {
        if let Some(s) = self.child.try_wait().unwrap() {
            panic!("prometheus exited ({s}):\n{}", tail(&self.log, 30));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The series Prometheus holds of rapport: name → the label sets (without job and instance).
fn series(prom: &Prometheus) -> BTreeMap<String, BTreeSet<BTreeSet<String>>> {
    let mut m: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    // match[]={__name__=~"rapport_.+"}
    let q = "/api/v1/series?match%5B%5D=%7B__name__%3D~%22rapport_.%2B%22%7D";
    for s in prom.api(q).and_then(|d| d.as_array().cloned()).unwrap_or_default() {
        let Some(obj) = s.as_object() else { continue };
        let name = obj["__name__"].as_str().unwrap_or_default().to_owned();
        let labels = obj
            .keys()
            .filter(|k| !matches!(k.as_str(), "__name__" | "job" | "instance"))
            .cloned()
            .collect();
        m.entry(name).or_default().insert(labels);
    }
    m
}

/// What the code's list says Prometheus must show: series name → labels.
fn expected() -> BTreeMap<String, BTreeSet<String>> {
    let mut m = BTreeMap::new();
    for (name, kind, labels, _) in rapport::telemetry::names::ALL {
        let mut l: BTreeSet<String> = labels
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if *kind == "histogram" {
            l.insert("le".into());
            m.insert(format!("{name}_bucket"), l);
        } else {
            m.insert((*name).to_owned(), l);
        }
    }
    m
}

#[test]
fn a_real_prometheus_scrapes_every_documented_series_and_finds_what_dashboard_and_rules_query() {
    let brokers = broker();
    let job = Job::new("prom", &brokers, Settings::default());
    job.create_topics();
    let input = job.path().join("events.ndjson");
    let (events, bad) = generate(&input, 30, 0.5, 150, 5150);
    let total = events + bad;
    assert!(bad > 0, "the input has malformed records for the dead-letter series");

    // A reads everything and stops; B, with an empty data dir, restores A's partitions from
    // the changelog, then reads new events.
    let config_a = job.config("a");
    let config_b = job.config("b");
    assert_eq!(job.produce_small_batches(&input, 100), total);
    let mut a = job.spawn("a", &config_a);
    a.wait_records(total);
    a.stop();
    let mut b = job.spawn("b", &config_b);
    b.wait_for("B to restore A's partitions", DEADLINE, |p| {
        match p.metric("rapport_restore_accounts_total") {
            Some(v) if v > 0.0 => Ok(()),
            v => Err(format!("{v:?}")),
        }
    });
    let more = job.path().join("more.ndjson");
    let (more_events, more_bad) = generate(&more, 10, 0.5, 50, 99);
    job.produce_small_batches(&more, 50);
    b.wait_records(more_events + more_bad);

    let prom_dir = job.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let mut prom = Prometheus::start(&prom_dir, b.port);
    let want = expected();
    let deadline = Instant::now() + Duration::from_secs(90);
    let got = loop {
        prom.alive();
        b.assert_running();
        let got = series(&prom);
        if want.keys().all(|k| got.contains_key(k)) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    // Every documented metric, with exactly its documented labels.
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "Prometheus has no series of {missing:?} (it has {:?})\nprometheus log:\n{}",
        got.keys().collect::<Vec<_>>(),
        tail(&prom.log, 20)
    );
    for (name, labels) in &want {
        for set in &got[name] {
            assert_eq!(set, labels, "{name}: labels scraped vs documented");
        }
    }
    let undocumented: Vec<&String> = got
        .keys()
        .filter(|k| {
            let base = k
                .strip_suffix("_bucket")
                .or_else(|| k.strip_suffix("_sum"))
                .or_else(|| k.strip_suffix("_count"))
                .unwrap_or(k);
            !want.contains_key(*k) && !want.contains_key(&format!("{base}_bucket"))
        })
        .collect();
    assert!(undocumented.is_empty(), "series not in the metric list: {undocumented:?}");

    // The real server loaded every alert rule.
    let rules_text = std::fs::read_to_string(deploy("prometheus/rapport-rules.yml")).unwrap();
    let loaded: BTreeSet<String> = prom
        .api("/api/v1/rules")
        .and_then(|d| d["groups"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    for alert in alert_names(&rules_text) {
        assert!(loaded.contains(&alert), "Prometheus did not load rule {alert}: {loaded:?}");
    }

    // Every metric the dashboard and the rules query is one Prometheus found.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/rapport.json")).unwrap())
            .expect("deploy/grafana/rapport.json is JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "the dashboard has its queries ({})", queries.len());
    for (what, names) in [
        ("deploy/grafana/rapport.json", metric_names(&queries.join("\n"))),
        ("deploy/prometheus/rapport-rules.yml", metric_names(&rules_text)),
    ] {
        assert!(!names.is_empty(), "{what} queries rapport metrics");
        for n in names {
            assert!(
                got.contains_key(&n),
                "{what} queries {n}, which Prometheus did not find in a running rapport"
            );
        }
    }
    b.stop();
    job.delete_topics();
}
