//! Bad input through the real binary: a corpus of malformed records (one or more of every kind an
//! NDJSON file can hold) interleaved with good events. `rapport run` must finish normally, send
//! each malformed record to `dlq.ndjson` with the right reason, its byte offset in the input and
//! its original bytes, and account for every record in its summary. Configuration mistakes and a
//! missing input stop it with one sentence naming what to change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rapport");
/// `engine.max_record_bytes` in config/default.toml.
const MAX_RECORD: usize = 65_536;

/// The configuration of every run here: the defaults, with no metrics port bound.
const CONFIG: &str = "[telemetry]\nlisten = \"\"\n";

/// One line of the corpus.
struct Line {
    /// What it is, for messages.
    what: String,
    /// The dead-letter reason it must get; `None` for a good event.
    reason: Option<&'static str>,
    bytes: Vec<u8>,
    /// Its line ending (`\n`, `\r\n`, or nothing on the last line).
    end: &'static [u8],
}

fn head(id: &str, account: &str, ty: &str) -> String {
    format!(
        r#""event_id":"{id}","account_id":"{account}","occurred_at":"2026-11-20T10:15:00Z","type":"{ty}""#
    )
}

fn obj(fields: &str) -> Vec<u8> {
    format!("{{{fields}}}").into_bytes()
}

/// Every kind of malformed record, with the reason it must be dead-lettered for.
fn malformed() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let usage = |id: &str, rest: &str| {
        obj(&format!(
            "{},\"user_id\":\"u1\",\"feature\":\"api.call\"{rest}",
            head(id, "acct-1", "product_usage")
        ))
    };
    let call = |id: &str, rest: &str| {
        obj(&format!(
            "{},\"contact_id\":\"c1\",\"outcome\":\"connected\"{rest}",
            head(id, "acct-2", "call")
        ))
    };
    let email = |id: &str, rest: &str| {
        obj(&format!(
            "{},\"contact_id\":\"c1\",\"direction\":\"outbound\"{rest}",
            head(id, "acct-3", "email")
        ))
    };
    let deal = |id: &str, rest: &str| {
        obj(&format!(
            "{},\"deal_id\":\"opp-9\"{rest}",
            head(id, "acct-1", "deal")
        ))
    };

    let whole = usage("b-cut", ",\"quantity\":3");
    let cut = whole[..whole.len() * 2 / 3].to_vec();

    // A valid event padded (in an unknown field) to exactly `len` bytes.
    let padded = |id: &str, len: usize| {
        let mut v = usage(id, ",\"quantity\":1,\"note\":\"");
        let pad = len - v.len() - 2;
        v.resize(v.len() + pad, b'x');
        v.extend_from_slice(b"\"}");
        assert_eq!(v.len(), len);
        v
    };

    let mut bad_utf8 = format!(
        "{{{},\"user_id\":\"u",
        head("b-utf8", "acct-1", "product_usage")
    )
    .into_bytes();
    bad_utf8.extend_from_slice(b"\xff\xfe\"}");
    let mut overlong = format!(
        "{{{},\"feature\":\"",
        head("b-overlong", "acct-1", "product_usage")
    )
    .into_bytes();
    overlong.extend_from_slice(b"\xc0\xaf\"}"); // an overlong encoding of '/'

    let deep_arrays = {
        let mut v = usage("b-deep", ",\"extra\":").to_vec();
        v.pop(); // reopen the object
        v.extend(std::iter::repeat_n(b'[', 10_000));
        v.extend(std::iter::repeat_n(b']', 10_000));
        v.push(b'}');
        v
    };
    let deep_objects = format!(
        "{{{},\"extra\":{}1{}}}",
        head("b-deep-obj", "acct-1", "product_usage"),
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000)
    )
    .into_bytes();

    vec![
        ("an empty line", "empty", Vec::new()),
        ("a line of blanks and tabs", "empty", b"  \t  ".to_vec()),
        ("a missing colon", "not_json", br#"{"event_id" "b-colon","account_id":"acct-1"}"#.to_vec()),
        ("a trailing comma", "not_json", obj(&format!("{},", head("b-comma", "acct-1", "product_usage")))),
        ("two objects on one line", "not_json", [usage("b-two", ""), usage("b-two-2", "")].concat()),
        ("a record cut off", "truncated", cut),
        ("a string quantity", "wrong_type", usage("b-qty-str", ",\"quantity\":\"three\"")),
        ("a numeric account_id", "wrong_type", br#"{"event_id":"b-acct-num","account_id":42,"occurred_at":"2026-11-20T10:15:00Z","type":"product_usage"}"#.to_vec()),
        ("a JSON array", "wrong_type", b"[1,2,3]".to_vec()),
        ("topics as a string", "wrong_type", call("b-topics", ",\"sentiment\":-0.2,\"topics\":\"pricing\"")),
        ("no account_id", "missing_field", br#"{"event_id":"b-no-acct","occurred_at":"2026-11-20T10:15:00Z","type":"product_usage","quantity":1}"#.to_vec()),
        ("an empty event_id", "missing_field", obj(&head("", "acct-1", "product_usage"))),
        ("an email without action", "missing_field", email("b-no-action", ",\"campaign\":\"qbr-invite\"")),
        ("a deal without deal_id", "missing_field", obj(&format!("{},\"kind\":\"renewal\",\"stage\":\"closed_won\"", head("b-no-deal", "acct-1", "deal")))),
        ("a null type", "missing_field", br#"{"event_id":"b-null-type","account_id":"acct-1","occurred_at":"2026-11-20T10:15:00Z","type":null}"#.to_vec()),
        ("month 13", "bad_timestamp", br#"{"event_id":"b-ts","account_id":"acct-1","occurred_at":"2026-13-45T25:61:00Z","type":"product_usage"}"#.to_vec()),
        ("a time in words", "bad_timestamp", br#"{"event_id":"b-ts-words","account_id":"acct-1","occurred_at":"yesterday","type":"product_usage"}"#.to_vec()),
        ("a bad close_date", "bad_timestamp", deal("b-close", ",\"kind\":\"renewal\",\"stage\":\"proposal\",\"close_date\":\"31/01/2027\"")),
        ("an unknown type", "unknown_type", obj(&format!("{},\"body\":\"hi\"", head("b-sms", "acct-1", "sms")))),
        ("a NaN quantity", "non_finite", usage("b-nan", ",\"quantity\":NaN")),
        ("an Infinity sentiment", "non_finite", call("b-inf", ",\"sentiment\":Infinity")),
        ("a -Infinity amount", "non_finite", deal("b-neg-inf", ",\"kind\":\"expansion\",\"stage\":\"closed_won\",\"amount\":-Infinity")),
        ("a duration of 1e400", "non_finite", call("b-1e400", ",\"duration_s\":1e400")),
        ("a negative duration", "out_of_range", call("b-neg-dur", ",\"duration_s\":-30,\"sentiment\":0.2")),
        ("a negative quantity", "out_of_range", usage("b-neg-qty", ",\"quantity\":-1")),
        ("a negative amount", "out_of_range", deal("b-neg-amt", ",\"kind\":\"renewal\",\"stage\":\"closed_won\",\"amount\":-5")),
        ("sentiment 1.5", "out_of_range", call("b-sent-hi", ",\"sentiment\":1.5")),
        ("sentiment -1.01", "out_of_range", call("b-sent-lo", ",\"sentiment\":-1.01")),
        ("a 100,000-byte record", "too_large", padded("b-huge", 100_000)),
        ("a record one byte over the limit", "too_large", padded("b-over", MAX_RECORD + 1)),
        ("invalid UTF-8 in a string", "invalid_utf8", bad_utf8),
        ("an overlong UTF-8 encoding", "invalid_utf8", overlong),
        ("arrays nested 10,000 deep", "too_deep", deep_arrays),
        ("objects nested 10,000 deep", "too_deep", deep_objects),
        ("an unknown email action", "unknown_enum", email("b-action", ",\"action\":\"teleported\"")),
        ("an unknown call outcome", "unknown_enum", obj(&format!("{},\"outcome\":\"exploded\"", head("b-outcome", "acct-2", "call")))),
        ("an unknown deal kind", "unknown_enum", deal("b-kind", ",\"kind\":\"merger\",\"stage\":\"closed_won\"")),
        ("an unknown direction", "unknown_enum", email("b-dir", ",\"action\":\"sent\",\"direction\":\"sideways\"")),
        ("a 300-byte event_id", "field_too_long", obj(&head(&"e".repeat(300), "acct-1", "product_usage"))),
        ("a 257-byte user_id", "field_too_long", obj(&format!("{},\"user_id\":\"{}\"", head("b-user", "acct-1", "product_usage"), "u".repeat(257)))),
    ]
}

/// A good product-usage event, the n-th (times increase with n).
fn good(n: usize) -> Vec<u8> {
    let account = ["acct-1", "acct-2", "acct-3"][n % 3];
    format!(
        r#"{{"event_id":"g-{n}","account_id":"{account}","occurred_at":"2026-11-20T{:02}:{:02}:00Z","type":"product_usage","user_id":"u{}","feature":"reports.export","quantity":1}}"#,
        8 + n / 60,
        n % 60,
        n % 5
    )
    .into_bytes()
}

/// The corpus: a good event, then each malformed record followed by a good one; a few special
/// good lines (an unknown field, a CRLF ending, exactly the size limit, a duplicate); and a
/// record cut off at the end of the file, with no newline.
fn corpus() -> Vec<Line> {
    let line = |what: &str, reason: Option<&'static str>, bytes: Vec<u8>| Line {
        what: what.to_owned(),
        reason,
        bytes,
        end: b"\n",
    };
    let mut v = vec![line("good event 0", None, good(0))];
    let mut n = 1;
    for (i, (what, reason, bytes)) in malformed().into_iter().enumerate() {
        v.push(line(what, Some(reason), bytes));
        v.push(line(&format!("good event {n}"), None, good(n)));
        n += 1;
        match i {
            3 => {
                let mut ev = good(n);
                ev.pop();
                ev.extend_from_slice(br#","crm_extra":{"tier":"gold","seats":[1,2,3]},"x":null}"#);
                v.push(line("a good event with unknown fields", None, ev));
                n += 1;
            }
            7 => {
                v.push(Line {
                    end: b"\r\n",
                    ..line("a good event ending in CRLF", None, good(n))
                });
                n += 1;
            }
            11 => {
                let mut ev = good(n);
                ev.pop();
                ev.extend_from_slice(br#","note":""#);
                let pad = MAX_RECORD - ev.len() - 2;
                ev.resize(ev.len() + pad, b'y');
                ev.extend_from_slice(b"\"}");
                assert_eq!(ev.len(), MAX_RECORD);
                v.push(line("a good event of exactly max_record_bytes", None, ev));
                n += 1;
            }
            20 => v.push(line(
                "a repeat of good event 5 (same event_id)",
                None,
                good(5),
            )),
            _ => {}
        }
    }
    let mut cut = good(n);
    cut.truncate(cut.len() - 10);
    v.push(Line {
        end: b"",
        ..line(
            "a record cut off at the end of the file",
            Some("truncated"),
            cut,
        )
    });
    v
}

fn write_config(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, toml).unwrap();
    p
}

fn run(config: &Path, input: &Path, dir: &Path) -> Output {
    Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(dir.join("out"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--quiet")
        .output()
        .unwrap()
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_malformed_record_is_dead_lettered_with_its_reason_offset_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus();
    let kinds: std::collections::BTreeSet<&str> = corpus.iter().filter_map(|l| l.reason).collect();
    assert!(
        kinds.len() >= 13,
        "the corpus covers {} reasons",
        kinds.len()
    );

    // Write it, remembering each record's byte offset.
    let input = dir.path().join("events.ndjson");
    let mut file = Vec::new();
    let mut offsets = Vec::new();
    for l in &corpus {
        offsets.push(file.len() as u64);
        file.extend_from_slice(&l.bytes);
        file.extend_from_slice(l.end);
    }
    std::fs::write(&input, &file).unwrap();

    let config = write_config(dir.path(), "rapport.toml", CONFIG);
    let out = run(&config, &input, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = stderr_of(&out);
    assert!(
        out.status.success(),
        "rapport run failed ({}):\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "panic output:\n{stderr}"
    );

    // The dead-letter output, by offset.
    let dlq = std::fs::read(dir.path().join("out/dlq.ndjson")).unwrap();
    assert!(dlq.ends_with(b"\n"), "dlq.ndjson ends in a partial line");
    let mut by_offset: BTreeMap<u64, Value> = BTreeMap::new();
    for l in dlq.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(l).expect("each dead letter is one JSON line");
        let off = v["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset: {v}"));
        assert!(
            by_offset.insert(off, v).is_none(),
            "offset {off} dead-lettered twice"
        );
    }
    let source = format!("file:{}", std::fs::canonicalize(&input).unwrap().display());
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut problems = Vec::new();
    for (l, &off) in corpus.iter().zip(&offsets) {
        let Some(want) = l.reason else {
            if let Some(v) = by_offset.get(&off) {
                problems.push(format!(
                    "{} (offset {off}) was dead-lettered as {}: {}",
                    l.what, v["reason"], v["detail"]
                ));
            }
            continue;
        };
        let Some(v) = by_offset.get(&off) else {
            problems.push(format!(
                "{} (offset {off}) is missing from dlq.ndjson",
                l.what
            ));
            continue;
        };
        if v["reason"] != want {
            problems.push(format!(
                "{} (offset {off}): reason {}, want {want:?} ({})",
                l.what, v["reason"], v["detail"]
            ));
        }
        assert_eq!(v["type"], "dead_letter", "{}", l.what);
        assert_eq!(v["source"].as_str(), Some(source.as_str()), "{}", l.what);
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(
            detail.len() > 20 && detail.ends_with('.'),
            "{}: the detail is not a sentence: {detail:?}",
            l.what
        );
        let original = b64
            .decode(v["original_base64"].as_str().expect("original_base64"))
            .unwrap();
        if l.bytes.len() > MAX_RECORD {
            // Only the first max_record_bytes are kept; the length says how long it was.
            assert_eq!(
                original.as_slice(),
                &l.bytes[..MAX_RECORD],
                "{}: the kept prefix",
                l.what
            );
            assert_eq!(
                v["original_length"].as_u64(),
                Some(l.bytes.len() as u64),
                "{}",
                l.what
            );
        } else {
            assert!(
                original == l.bytes,
                "{}: original bytes differ: {:?}",
                l.what,
                String::from_utf8_lossy(&original)
            );
            assert!(v.get("original_length").is_none(), "{}", l.what);
        }
        match std::str::from_utf8(&original) {
            Ok(text) => assert_eq!(v["original"].as_str(), Some(text), "{}", l.what),
            Err(_) => assert!(
                v.get("original").is_none(),
                "{}: text of invalid UTF-8",
                l.what
            ),
        }
    }
    let expected_dlq = corpus.iter().filter(|l| l.reason.is_some()).count();
    assert!(
        problems.is_empty(),
        "{} of {expected_dlq} malformed records went wrong:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(
        by_offset.len(),
        expected_dlq,
        "dead letters at offsets that hold no malformed record"
    );

    // Accounting: every record read is folded, a duplicate or dead-lettered.
    let read = corpus.len();
    let duplicates = 1;
    let folded = read - expected_dlq - duplicates;
    let want = format!(
        "Accounting: {read} read = {folded} folded + {duplicates} duplicates + {expected_dlq} dead-lettered ✓"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == want),
        "want the line\n{want}\nin the summary:\n{stdout}"
    );

    // The good events were folded: their accounts have state.
    for account in ["acct-1", "acct-2", "acct-3"] {
        let o = Command::new(BIN)
            .args(["inspect", account, "--json", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "inspect {account}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

/// A line of text in an NDJSON file that is not JSON (an HTML error page pasted into the log, as
/// `rapport::generate::malformed_records` makes for `not_json`) is reported as `not_json`: a line
/// of an NDJSON file cannot be a protobuf message, so `bad_protobuf` would send whoever reads the
/// dead letters looking for the wrong problem.
#[test]
fn text_that_is_not_json_in_an_ndjson_file_is_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let (_, html) = rapport::generate::malformed_records(7)
        .into_iter()
        .find(|(k, _)| *k == "not_json")
        .unwrap();
    let lines: Vec<Vec<u8>> = vec![html, b"hello world".to_vec(), b"ok".to_vec()];
    let mut file = Vec::new();
    let mut offsets = Vec::new();
    for l in &lines {
        offsets.push(file.len() as u64);
        file.extend_from_slice(l);
        file.push(b'\n');
    }
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, &file).unwrap();
    let config = write_config(dir.path(), "rapport.toml", CONFIG);
    let out = run(&config, &input, dir.path());
    assert!(out.status.success(), "{}", stderr_of(&out));
    let dlq = std::fs::read_to_string(dir.path().join("out/dlq.ndjson")).unwrap();
    let got: Vec<(u64, String)> = dlq
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            (
                v["offset"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = offsets
        .iter()
        .map(|&o| (o, "not_json".to_owned()))
        .collect();
    assert_eq!(got, want);
}

/// A configuration error: exit status non-zero, nothing on stdout, one line on stderr that
/// contains every one of `needles`.
fn assert_one_line_error(o: &Output, needles: &[&str]) {
    let stderr = stderr_of(o);
    assert!(
        !o.status.success(),
        "exit status {} for a bad start-up; stderr: {stderr}",
        o.status
    );
    assert!(
        o.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let text = stderr.trim();
    assert_eq!(
        text.lines().count(),
        1,
        "want a one-line error, got:\n{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    for n in needles {
        assert!(text.contains(n), "the error does not mention {n:?}: {text}");
    }
}

#[test]
fn an_unknown_config_key_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, [good(0), b"\n".to_vec()].concat()).unwrap();
    let config = write_config(
        dir.path(),
        "typo.toml",
        &format!("[engine]\npartitons = 3\n{CONFIG}"),
    );
    let o = run(&config, &input, dir.path());
    assert_one_line_error(&o, &["partitons", "typo.toml"]);
    assert!(
        !dir.path().join("data").exists(),
        "a store was created despite the bad configuration"
    );
}

#[test]
fn weights_that_do_not_sum_to_one_stop_start_up_saying_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, [good(0), b"\n".to_vec()].concat()).unwrap();
    let config = write_config(
        dir.path(),
        "weights.toml",
        &format!("[scorecard.components.recency]\nweight = 0.5\n{CONFIG}"),
    );
    let o = run(&config, &input, dir.path());
    assert_one_line_error(&o, &["1.400", "scorecard.components", "weight"]);
}

#[test]
fn a_missing_input_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "rapport.toml", CONFIG);
    let missing = dir.path().join("no-such-events.ndjson");
    let o = run(&config, &missing, dir.path());
    assert_one_line_error(&o, &["cannot read input", &missing.display().to_string()]);
}

#[test]
fn bad_thresholds_and_an_unreachable_broker_stop_start_up_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, [good(0), b"\n".to_vec()].concat()).unwrap();
    for (name, toml, needles) in [
        (
            "ratios.toml",
            "[alerts.usage_drop]\ndrop_ratio = 0.9\nresolve_ratio = 0.5\n",
            &["alerts.usage_drop", "drop_ratio = 0.9", "resolve_ratio = 0.5"][..],
        ),
        ("bands.toml", "[scorecard.bands]\ngreen = 30\n", &["scorecard.bands", "yellow < green"][..]),
        (
            "outcome.toml",
            "[scorecard.components.outcome]\nweight = 0.1\n[scorecard.components.recency]\nweight = 0.0\n",
            &["scorecard.components.outcome.features", "outcome"][..],
        ),
        (
            "peers.toml",
            "[scorecard.peers]\ncomponents = [\"commercial\"]\n",
            &["scorecard.peers.components", "commercial"][..],
        ),
    ] {
        let config = write_config(dir.path(), name, &format!("{toml}{CONFIG}"));
        let o = run(&config, &input, dir.path());
        assert_one_line_error(&o, needles);
    }
    // Kafka mode against a port nobody listens on: refused at start with what to do.
    let config = write_config(
        dir.path(),
        "kafka.toml",
        &format!("mode = \"kafka\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\n{CONFIG}"),
    );
    let o = Command::new(BIN)
        .args(["run", "--quiet", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("kafka-data"))
        .output()
        .unwrap();
    assert_one_line_error(&o, &["cannot reach Kafka at 127.0.0.1:1", "kafka.brokers"]);
}

/// The `Throughput:` figure of a run's summary, in events/s.
fn throughput(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Throughput: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no throughput in:\n{stdout}"))
}

/// Bad input at volume: 10,000 malformed records of every kind above, spread evenly through a
/// generated portfolio of about 400,000 good events. Every one is dead-lettered with its reason,
/// every record is accounted for, and the good events give the same state as without them.
#[test]
fn ten_thousand_malformed_records_among_good_traffic_are_all_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.ndjson");
    let g = Command::new(BIN)
        .args(["generate", "--accounts", "1000", "--days", "90", "--out"])
        .arg(&clean)
        .output()
        .unwrap();
    assert!(g.status.success());
    let good = std::fs::read(&clean).unwrap();
    let lines: Vec<&[u8]> = good.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let bad = malformed();
    const N: usize = 10_000;
    let every = lines.len() / N;
    assert!(every >= 2, "too few good events ({}) for {N} bad ones", lines.len());
    let mut mixed = Vec::with_capacity(good.len() + N * 2048);
    let mut want: BTreeMap<&str, usize> = BTreeMap::new();
    let mut placed = 0;
    for (i, l) in lines.iter().enumerate() {
        mixed.extend_from_slice(l);
        mixed.push(b'\n');
        if placed < N && (i + 1) % every == 0 {
            let (_, reason, bytes) = &bad[placed % bad.len()];
            mixed.extend_from_slice(bytes);
            mixed.push(b'\n');
            *want.entry(reason).or_default() += 1;
            placed += 1;
        }
    }
    assert_eq!(placed, N);
    assert!(want.len() >= 12, "{} kinds", want.len());
    let input = dir.path().join("mixed.ndjson");
    std::fs::write(&input, &mixed).unwrap();

    let config = write_config(dir.path(), "rapport.toml", CONFIG);
    let reference_dir = dir.path().join("clean-run");
    let reference = run(&config, &clean, &reference_dir);
    assert!(reference.status.success(), "{}", stderr_of(&reference));
    let mixed_dir = dir.path().join("mixed-run");
    let out = run(&config, &input, &mixed_dir);
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let accounting = stdout.lines().find(|l| l.starts_with("Accounting: ")).unwrap_or_default();
    assert!(
        accounting.ends_with('✓') && accounting.contains(&format!("{N} dead-lettered")),
        "{stdout}"
    );

    let dlq = std::fs::read(mixed_dir.join("out/dlq.ndjson")).unwrap();
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for l in dlq.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(l).expect("each dead letter is one JSON line");
        let reason = v["reason"].as_str().unwrap_or_else(|| panic!("no reason: {v}"));
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "no detail: {v}");
        *got.entry(reason.to_owned()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = want.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    assert_eq!(got, want, "dead letters by reason");
    // The good events' outputs are those of the clean run.
    for f in ["health_scores.ndjson", "churn_alerts.ndjson"] {
        let a = std::fs::read(reference_dir.join("out").join(f)).unwrap();
        let b = std::fs::read(mixed_dir.join("out").join(f)).unwrap();
        assert!(a == b, "{f} differs with the malformed records mixed in");
    }
    eprintln!(
        "RELIABILITY bad input: {N} malformed records of {} kinds among {} good events, all dead-lettered with their reason, outputs identical to the clean run; this run's throughput {:.0} events/s vs {:.0} clean ({:.2})",
        got.len(),
        lines.len(),
        throughput(&stdout),
        throughput(&String::from_utf8_lossy(&reference.stdout)),
        throughput(&stdout) / throughput(&String::from_utf8_lossy(&reference.stdout))
    );
}
