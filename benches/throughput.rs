//! Embedded throughput on generated data, against a baseline measured in the same run:
//!
//! - `read_and_decode`: read the NDJSON file line by line and decode/validate every record —
//!   the floor under any engine that must look at each event;
//! - `end_to_end`: the whole embedded job (decode, dedup, fold, score, alerts, one RocksDB
//!   write per batch, outputs to NDJSON) on a fresh store.
//!
//! Sizes: `RAPPORT_BENCH_ACCOUNTS` (default 100000) and `RAPPORT_BENCH_DAYS` (default 10).
//! Run with `./dev.sh bench`.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rapport::app::{RunOptions, Shutdown, run_embedded, write_portfolio};
use rapport::codec::{DecodeLimits, decode};
use rapport::config::Config;
use rapport::generate::{GenSpec, Portfolio};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn data() -> (tempfile::TempDir, PathBuf, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.ndjson");
    let accounts = env("RAPPORT_BENCH_ACCOUNTS", 100_000);
    let days = env("RAPPORT_BENCH_DAYS", 10) as u32;
    let p = Portfolio::new(GenSpec {
        accounts,
        days,
        usage_per_day: 1.0,
        ..GenSpec::default()
    });
    let (n, _) = write_portfolio(&p, &path, 0).unwrap();
    eprintln!(
        "bench data: {n} events, {accounts} accounts, {days} days, {} bytes",
        std::fs::metadata(&path).unwrap().len()
    );
    (dir, path, n)
}

fn bench(c: &mut Criterion) {
    let (dir, path, n) = data();
    let mut g = c.benchmark_group("embedded");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(20));

    g.bench_function("read_and_decode", |b| {
        let limits = DecodeLimits {
            max_record_bytes: 65536,
            max_id_bytes: 256,
        };
        b.iter(|| {
            let f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path).unwrap());
            let mut ok = 0u64;
            for line in f.split(b'\n') {
                ok += decode(&line.unwrap(), &limits).is_ok() as u64;
            }
            assert_eq!(ok, n);
        })
    });

    let mut run = 0;
    g.bench_function("end_to_end", |b| {
        b.iter(|| {
            run += 1;
            let mut cfg = Config::defaults();
            cfg.embedded.input = path.display().to_string();
            cfg.store.data_dir = dir.path().join(format!("data-{run}"));
            cfg.embedded.output_dir = dir.path().join(format!("out-{run}"));
            let opts = RunOptions {
                progress: false,
                shutdown: Shutdown::new(),
                health: None,
            };
            let s = run_embedded(Arc::new(cfg.clone()), &opts).unwrap();
            assert_eq!(s.records, n);
            let _ = std::fs::remove_dir_all(&cfg.store.data_dir);
            let _ = std::fs::remove_dir_all(&cfg.embedded.output_dir);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
