//! Free space under the store: rapport stops consuming *before* RocksDB runs out of disk.
//!
//! A write that fails for lack of space leaves RocksDB in a background-error state and the batch
//! half-applied in memory; a restart is then the only clean way on. So the run loops check the
//! free space of `store.data_dir`'s filesystem (at most every 100 ms) and, below
//! `store.min_free_mb`, stop reading input: one error line says where and how much, the gauge
//! `rapport_store_disk_low` is 1 and `/readyz` answers 503. They go on by themselves once there is
//! room again (files deleted, volume grown). Nothing is read, so nothing is lost; what was
//! committed stays committed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::telemetry::names::{STORE_DISK_LOW, STORE_FREE_BYTES};

/// Bytes available to an unprivileged writer on the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Watches the free space of the store's filesystem.
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    checked: Option<Instant>,
    low: bool,
}

impl DiskGuard {
    pub fn new(dir: &Path, min_free_mb: u64) -> DiskGuard {
        DiskGuard {
            dir: dir.to_owned(),
            min_free: min_free_mb.saturating_mul(1 << 20),
            checked: None,
            low: false,
        }
    }

    /// Whether there is room to go on; looks at the filesystem at most every 100 ms (answers
    /// from the last look in between). A filesystem that cannot be asked counts as having room:
    /// the store's own errors then say what is wrong.
    pub fn has_room(&mut self) -> bool {
        if self.min_free == 0 {
            return true;
        }
        if self.checked.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return !self.low;
        }
        self.checked = Some(Instant::now());
        let Ok(free) = available_bytes(&self.dir) else {
            return true;
        };
        metrics::gauge!(STORE_FREE_BYTES).set(free as f64);
        let low = free < self.min_free;
        if low != self.low {
            metrics::gauge!(STORE_DISK_LOW).set(if low { 1.0 } else { 0.0 });
            if low {
                tracing::error!(
                    data_dir = %self.dir.display(),
                    free_mb = free >> 20,
                    min_free_mb = self.min_free >> 20,
                    "the filesystem of store.data_dir is nearly full: input is paused until it has store.min_free_mb free again (delete files or grow the volume); nothing is lost meanwhile"
                );
            } else {
                tracing::info!(free_mb = free >> 20, "store.data_dir has room again: input resumes");
            }
        }
        self.low = low;
        !low
    }

    pub fn is_low(&self) -> bool {
        self.low
    }
}

/// Whether a store error is the disk being full (for the sentence that tells what to do).
pub fn is_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if x.to_string().contains("No space left on device") {
            return true;
        }
        cur = x.source();
    }
    false
}
