//! Golden portfolios: small hand-made NDJSON inputs under `tests/fixtures/` whose alerts and final
//! score bands are known by construction from the rules (`src/domain/alert.rs`) and the scorecard
//! (`config/default.toml`). Each `NAME.ndjson` has a `NAME.expected.json` holding:
//! - `alerts`: every (account_id, rule, status) transition, in the order they happen per account;
//! - `bands`: each account's final band (of its last emitted score, and as `rapport inspect` sees it);
//! - `accounting`: the run's record accounting (read = folded + duplicates + dead-lettered);
//! - `notes`: why, account by account, with the arithmetic;
//! - `partitions` (optional): the account partition each account must land on.
//!
//! Every fixture runs the real binary with `NAME.toml` (or `golden.toml`) as its configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rapport");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What a run produced, in the shape of an expected.json.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Per account, its alert transitions (rule, status) in output order.
    alerts: BTreeMap<String, Vec<(String, String)>>,
    /// Per account, the band of its last emitted score.
    bands: BTreeMap<String, String>,
    /// read, folded, duplicates, dead-lettered.
    accounting: [u64; 4],
}

fn expected(name: &str) -> (Outcome, Value) {
    let path = fixtures().join(format!("{name}.expected.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut alerts: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for t in v["alerts"].as_array().expect("alerts") {
        let s = |i: usize| t[i].as_str().expect("[account, rule, status]").to_owned();
        alerts.entry(s(0)).or_default().push((s(1), s(2)));
    }
    let bands = v["bands"]
        .as_object()
        .expect("bands")
        .iter()
        .map(|(k, b)| (k.clone(), b.as_str().unwrap().to_owned()))
        .collect();
    let a = &v["accounting"];
    let n = |k: &str| a[k].as_u64().unwrap_or_else(|| panic!("accounting.{k}"));
    let accounting = [n("read"), n("folded"), n("duplicates"), n("dead_lettered")];
    (
        Outcome {
            alerts,
            bands,
            accounting,
        },
        v,
    )
}

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a partial line",
        path.display()
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// "Accounting: 600 read = 550 folded + 50 duplicates + 0 dead-lettered ✓" → the four numbers.
fn accounting(stdout: &str) -> [u64; 4] {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Accounting: "))
        .unwrap_or_else(|| panic!("no accounting line in the summary:\n{stdout}"));
    assert!(line.ends_with('✓'), "{line}");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 4, "{line}");
    [nums[0], nums[1], nums[2], nums[3]]
}

fn run_fixture(name: &str) {
    let (want, raw) = expected(name);
    let dir = tempfile::tempdir().unwrap();
    let config = match fixtures().join(format!("{name}.toml")) {
        p if p.exists() => p,
        _ => fixtures().join("golden.toml"),
    };
    let (out, data) = (dir.path().join("out"), dir.path().join("data"));
    let run = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--input")
        .arg(fixtures().join(format!("{name}.ndjson")))
        .arg("--output")
        .arg(&out)
        .arg("--data-dir")
        .arg(&data)
        .arg("--quiet")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "{name}: rapport run failed ({})\n{stderr}",
        run.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let mut got = Outcome {
        alerts: BTreeMap::new(),
        bands: BTreeMap::new(),
        accounting: accounting(&stdout),
    };
    for a in lines(&out.join("churn_alerts.ndjson")) {
        got.alerts
            .entry(a["account_id"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                a["rule"].as_str().unwrap().to_owned(),
                a["status"].as_str().unwrap().to_owned(),
            ));
    }
    for s in lines(&out.join("health_scores.ndjson")) {
        got.bands.insert(
            s["account_id"].as_str().unwrap().to_owned(),
            s["band"].as_str().unwrap().to_owned(),
        );
    }
    assert!(
        lines(&out.join("dlq.ndjson")).is_empty(),
        "{name}: the fixture is all valid events"
    );
    assert_eq!(
        got, want,
        "{name}: the run differs from {name}.expected.json (left: the run, right: expected). Why each account should do what it does:\n{:#}",
        raw["notes"]
    );

    // The store agrees with the outputs: `rapport inspect` shows the same band and no open alert
    // that the outputs have resolved.
    for (account, band) in &want.bands {
        let inspect = Command::new(BIN)
            .args(["inspect", account, "--json", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            inspect.status.success(),
            "inspect {account}: {}",
            String::from_utf8_lossy(&inspect.stderr)
        );
        let v: Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(
            v["band"].as_str(),
            Some(band.as_str()),
            "{name}: inspect {account}: {v:#}"
        );
        let mut open: Vec<&str> = v["open_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["rule"].as_str().unwrap())
            .collect();
        let mut still_open: Vec<&str> = Vec::new();
        for (rule, status) in want.alerts.get(account).into_iter().flatten() {
            match status.as_str() {
                "open" => still_open.push(rule),
                _ => still_open.retain(|r| r != rule),
            }
        }
        open.sort();
        still_open.sort();
        assert_eq!(
            open, still_open,
            "{name}: open alerts of {account} in the store"
        );
        if let Some(p) = raw["partitions"].get(account) {
            assert_eq!(v["partition"], *p, "{name}: partition of {account}");
        }
    }
}

/// An account goes dark while another keeps the partition's clock moving (usage_drop, score_drop,
/// gone_dark open); a steady account raises nothing; an account whose every event arrives twice is
/// not double-counted (no usage_drop: its deduplicated baseline is under the rule's minimum).
#[test]
fn dark() {
    run_fixture("dark");
}

/// A negative call about pricing and a competitor, an unsubscribe, a lost renewal: each opens its
/// alert; the call's and the email's resolve when the clock passes their 30-day windows.
#[test]
fn risk() {
    run_fixture("risk");
}

/// Timers fire on the account's own partition clock: an account alone in its partition is not
/// evaluated again after its last event, however far other partitions' clocks move.
#[test]
fn partitions() {
    for (account, p) in [("initech", 6), ("umbrella", 6), ("wonka", 2)] {
        assert_eq!(
            rapport::store::keys::partition_for(account, 12),
            p,
            "{account}"
        );
    }
    run_fixture("partitions");
}

/// An account that stays dark keeps its usage_drop alert open after its trailing baseline falls
/// under `alerts.usage_drop.min_weekly_baseline`: the rule can no longer judge it, which is not
/// the same as its usage recovering.
#[test]
fn dark_long() {
    run_fixture("dark_long");
}
