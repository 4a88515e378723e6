//! A store whose disk fills up: `rapport run` with its data directory on a size-limited tmpfs
//! pauses its input before RocksDB runs out of space (error line, `rapport_store_disk_low` 1,
//! `/readyz` 503), goes on by itself once the filesystem is grown, and ends with exactly the
//! state of a run on a roomy disk. Needs root to mount the tmpfs (CI runs as root): without it
//! the test fails, it does not skip.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rapport::config::Config;
use rapport::store::{Cf, RocksStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_rapport");

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs at {} failed ({}): this suite needs root (CI runs as root)",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
    fn grow(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {} failed", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn states(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut cfg = Config::defaults();
    cfg.store.data_dir = dir.to_owned();
    let store = RocksStore::open(&cfg.store).expect("the store opens");
    let mut rows = Vec::new();
    store
        .scan(Cf::State, &[], &mut |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    rows
}

fn run(config: &Path, input: &Path, dir: &Path, data: &Path) -> std::process::Child {
    Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(dir.join("out"))
        .arg("--data-dir")
        .arg(data)
        .arg("--quiet")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap()
}

/// Polls `what` every 20 ms until it holds; fails after `secs`.
fn wait_for(secs: u64, why: &str, mut what: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !what() {
        assert!(Instant::now() < deadline, "timed out waiting for {why}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_disk_pauses_input_and_a_grown_one_resumes_it_losing_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("events.ndjson");
    let g = Command::new(BIN)
        .args(["generate", "--accounts", "3000", "--days", "90", "--bad-every", "5000", "--out"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(g.status.success());
    let config = tmp.path().join("rapport.toml");
    std::fs::write(
        &config,
        "[telemetry]\nlisten = \"127.0.0.1:0\"\n[store]\nmin_free_mb = 12\nwrite_buffer_mb = 2\nblock_cache_mb = 8\n",
    )
    .unwrap();

    // On a roomy disk.
    let roomy = tmp.path().join("roomy");
    std::fs::create_dir_all(&roomy).unwrap();
    let st = run(&config, &input, &roomy, &roomy.join("data")).wait().unwrap();
    assert!(st.success(), "{}", std::fs::read_to_string(roomy.join("stderr")).unwrap());

    // On 16 MiB: input pauses once less than 12 MiB are free.
    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("mnt"), "16m");
    let mut child = run(&config, &input, &small, &fs.0.join("data"));
    let log = || std::fs::read_to_string(small.join("stderr")).unwrap_or_default();
    let mut addr = String::new();
    wait_for(30, "the telemetry address", || {
        addr = log()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .unwrap_or_default()
            .to_owned();
        !addr.is_empty()
    });
    wait_for(60, "the disk-low pause", || {
        assert!(child.try_wait().unwrap().is_none(), "rapport ended on a full disk:\n{}", log());
        get(&addr, "/metrics").lines().any(|l| l == "rapport_store_disk_low 1")
    });
    let said = log();
    assert!(
        said.contains("nearly full") && said.contains("store.min_free_mb") && said.contains("grow the volume"),
        "{said}"
    );
    let ready = get(&addr, "/readyz");
    assert!(ready.lines().next().unwrap_or_default().contains(" 503"), "ready while paused: {ready}");
    // Paused means no input is read: the committed position stays put while it lasts.
    let metric = |name: &str| -> f64 {
        get(&addr, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(-1.0)
    };
    let records = metric("rapport_records_in_total ");
    let paused_at = Instant::now();
    wait_for(5, "a second of pause", || paused_at.elapsed() > Duration::from_secs(1));
    assert_eq!(metric("rapport_records_in_total "), records, "input was read while paused");

    let paused_for = paused_at.elapsed();
    fs.grow("1g");
    let grown = Instant::now();
    wait_for(30, "input to resume", || log().contains("input resumes"));
    let resumed_after = grown.elapsed();
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", log());
    assert!(log().contains("input resumes"), "{}", log());
    let out = std::fs::read_to_string(small.join("stdout")).unwrap();
    let accounting = out.lines().find(|l| l.starts_with("Accounting: ")).unwrap_or_default();
    assert!(accounting.ends_with('✓'), "{out}");

    // The same state as on the roomy disk, byte for byte; the store reopens cleanly.
    let want = states(&roomy.join("data"));
    assert!(want.len() >= 3000);
    assert!(want == states(&fs.0.join("data")), "states differ after the pause");
    eprintln!(
        "RELIABILITY disk full: 16 MiB tmpfs, paused below 12 MiB free ({:.1} s observed), resumed {:.2} s after the volume grew, {} account states identical to a roomy run, accounting balanced",
        paused_for.as_secs_f64(),
        resumed_after.as_secs_f64(),
        want.len()
    );
}
