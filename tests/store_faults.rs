//! A damaged or foreign data directory is refused at start with what to do, never opened as an
//! empty store and never half-used: a truncated table file, a table file with flipped bytes, a
//! CURRENT file naming a missing manifest, a store format from a newer rapport, an account state
//! of a newer version, and a directory another process holds. (A data directory of another
//! Kafka topic set is refused too: `tests/kafka.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use rapport::config::Config;
use rapport::store::keys::FORMAT_KEY;
use rapport::store::{Cf, RocksStore, Store, WriteSet};

const BIN: &str = env!("CARGO_BIN_EXE_rapport");

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    input: PathBuf,
}

/// A small input and a data directory it was run into.
fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let input = dir.join("events.ndjson");
    let g = Command::new(BIN)
        .args(["generate", "--accounts", "300", "--days", "60", "--out"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(g.status.success());
    let config = dir.join("rapport.toml");
    std::fs::write(&config, "[telemetry]\nlisten = \"\"\n").unwrap();
    let w = World {
        _tmp: tmp,
        dir,
        config,
        input,
    };
    let (ok, said) = w.run(&w.input, "data");
    assert!(ok, "{said}");
    w
}

impl World {
    fn data(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// A copy of the good data directory to damage.
    fn copy(&self, name: &str) -> PathBuf {
        let to = self.data(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(self.data("data")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    }
    /// `rapport run` on `data`; (succeeded, stderr).
    fn run(&self, input: &Path, data: &str) -> (bool, String) {
        let out = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(self.dir.join(format!("out-{data}")))
            .arg("--data-dir")
            .arg(self.data(data))
            .arg("--quiet")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!said.contains("panicked"), "{said}");
        (out.status.success(), said)
    }
    fn refused(&self, data: &str, wants: &[&str]) -> String {
        let files_before = std::fs::read_dir(self.data(data)).unwrap().count();
        let (ok, said) = self.run(&self.input, data);
        assert!(!ok, "rapport started on the {data} directory:\n{said}");
        for w in wants {
            assert!(said.contains(w), "{data}: {w:?} missing from:\n{said}");
        }
        assert!(
            std::fs::read_dir(self.data(data)).unwrap().count() >= files_before,
            "{data}: files went missing from the refused directory"
        );
        said
    }
}

fn largest_table(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a table file")
}

fn open(dir: &Path) -> RocksStore {
    let mut cfg = Config::defaults();
    cfg.store.data_dir = dir.to_owned();
    RocksStore::open(&cfg.store).unwrap()
}

const DAMAGED: &[&str] = &["the store is damaged", "rapport replay"];

#[test]
fn damaged_and_foreign_data_directories_are_refused_with_what_to_do() {
    let w = world();

    // A table file cut short.
    let d = w.copy("truncated");
    let t = largest_table(&d);
    let len = std::fs::metadata(&t).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&t).unwrap().set_len(len / 2).unwrap();
    w.refused("truncated", DAMAGED);

    // A table file with flipped bytes (same size).
    let d = w.copy("flipped");
    let t = largest_table(&d);
    let mut b = std::fs::read(&t).unwrap();
    for i in (1000..b.len().saturating_sub(2000)).step_by(997) {
        b[i] ^= 0xff;
    }
    std::fs::write(&t, b).unwrap();
    let said = w.refused("flipped", DAMAGED);
    assert!(!said.contains("another rapport process"), "{said}");

    // CURRENT names a manifest that is not there.
    let d = w.copy("no-manifest");
    std::fs::write(d.join("CURRENT"), "MANIFEST-999999\n").unwrap();
    w.refused("no-manifest", DAMAGED);

    // A store format from a newer rapport.
    let d = w.copy("newer-format");
    {
        let s = open(&d);
        let mut ws = WriteSet::default();
        ws.put(Cf::Meta, FORMAT_KEY, &99u32.to_le_bytes());
        s.commit(&ws).unwrap();
    }
    w.refused("newer-format", &["written by a newer rapport", "store format 99"]);

    // An account state of a newer version: refused when the account's next event comes.
    let d = w.copy("newer-state");
    let account = {
        let s = open(&d);
        let mut first = None;
        s.scan(Cf::State, &[], &mut |k, v| {
            first = Some((k.to_vec(), v.to_vec()));
            false
        })
        .unwrap();
        let (k, v) = first.expect("a state");
        let mut st = rapport::pb::AccountState::decode(v.as_slice()).unwrap();
        st.version = 99;
        let mut ws = WriteSet::default();
        ws.put(Cf::State, &k, &st.encode_to_vec());
        s.commit(&ws).unwrap();
        st.account_id
    };
    // The same events again under another file name: a new source, read from its start.
    let again = w.dir.join("again.ndjson");
    std::fs::copy(&w.input, &again).unwrap();
    let (ok, said) = w.run(&again, "newer-state");
    assert!(!ok, "{said}");
    assert!(
        said.contains("version 99") && said.contains("newer than this build") && said.contains(&account),
        "{said}"
    );

    // A directory another process has open.
    let d = w.copy("locked");
    let holder = open(&d);
    w.refused("locked", &["another rapport process is using it", "--data-dir"]);
    drop(holder);
    // Released, the same directory opens and runs.
    let (ok, said) = w.run(&w.input, "locked");
    assert!(ok, "{said}");
}
