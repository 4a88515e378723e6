//! How the process gets its memory from the kernel: set once at start-up, before any thread.
//!
//! Rust's allocations go to mimalloc (`main.rs`); RocksDB's and librdkafka's go to glibc's
//! `malloc`. Two defaults make the kernel zero the same memory again and again:
//!
//! - **Transparent huge pages**: every first touch of an allocator region zeroes 2 MiB. That was
//!   a quarter of the batch loop's time in a profile of Kafka mode at 1,000,000 accounts;
//!   turning them off made embedded runs 6–7% faster.
//! - **glibc's `mmap` threshold and trimming**: an allocation over 32 MiB is always a fresh
//!   `mmap`, and freeing it unmaps it. A batch's RocksDB write batch is one such block (about
//!   100 MB at 100,000 records that each change an account), made and freed at every commit, so
//!   each commit faulted it in page by page again, zeroed. Freed memory at the top of the heap
//!   is handed back as well (`M_TRIM_THRESHOLD`, 128 KiB at first).
//!
//! [`tune`] turns both off. glibc then serves every block of the main thread, where the batch
//! loop runs, from its heap, and keeps what was freed for the next one. (A block over 64 MiB made
//! on another thread, more than one of glibc's per-thread heaps holds, is still mapped on its
//! own.) The process's peak size is unchanged: what glibc keeps is what the process used at its
//! peak. What goes is the zeroing: at 1,000,000 accounts in Kafka mode, a fifth of the page
//! faults (BENCHMARKS.md).

/// What glibc keeps at the top of its heap instead of returning it: the peak working set of a
/// batch (its write batch and RocksDB's memtable blocks) fits many times over.
pub const KEEP_BYTES: usize = 1 << 30;

/// Applies the settings above, each unless its own environment variable is set:
/// `MIMALLOC_ALLOW_THP` keeps transparent huge pages (mimalloc then does what it says), and a
/// `GLIBC_TUNABLES` that sets any `glibc.malloc` tunable keeps glibc's heap as it says.
/// Returns whether glibc's heap settings were applied. Child processes inherit the huge-page
/// flag, not glibc's settings.
pub fn tune() -> bool {
    #[cfg(target_os = "linux")]
    {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            // SAFETY: PR_SET_THP_DISABLE takes integers only and changes no memory of ours.
            unsafe {
                libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
            }
        }
        let heap_set_by_env =
            std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
        if !heap_set_by_env {
            return keep_glibc_heap();
        }
    }
    false
}

/// glibc: no block from `mmap` (every block from the heap), and the heap is not trimmed below
/// [`KEEP_BYTES`]. Returns whether glibc took both settings.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_glibc_heap() -> bool {
    // SAFETY: mallopt takes integers only; glibc applies them under its own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_BYTES as libc::c_int) == 1
    }
}

#[cfg(all(target_os = "linux", not(target_env = "gnu")))]
fn keep_glibc_heap() -> bool {
    false
}
