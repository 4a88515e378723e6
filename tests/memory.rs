//! glibc's heap as `rapport::memory::tune` leaves it: a large block freed on the main thread and
//! allocated again is served from memory already faulted in, not mapped and zeroed afresh (each
//! batch's RocksDB write batch is such a block). Without a test harness, so that it runs on the
//! main thread, as the batch loop does.

use std::process::ExitCode;

/// Minor page faults of the calling thread so far.
fn minor_faults() -> i64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
        u.ru_minflt
    }
}

/// Allocates `bytes` with glibc's malloc, writes every page, frees it; returns the minor faults
/// that took.
fn touch_block(bytes: usize) -> i64 {
    let before = minor_faults();
    // SAFETY: the block is written within its size and freed once.
    unsafe {
        let p = libc::malloc(bytes) as *mut u8;
        assert!(!p.is_null(), "malloc({bytes}) failed");
        for i in (0..bytes).step_by(4096) {
            p.add(i).write_volatile(1);
        }
        libc::free(p as *mut libc::c_void);
    }
    minor_faults() - before
}

fn main() -> ExitCode {
    println!("running 1 test");
    if !rapport::memory::tune() {
        eprintln!("test a_large_block_freed_and_allocated_again_is_not_zeroed_again ... FAILED: glibc refused the heap settings");
        return ExitCode::FAILURE;
    }
    let bytes = 96 << 20;
    let pages = (bytes / 4096) as i64;
    let first = touch_block(bytes);
    // Without the settings each round is a fresh mmap: every page faults again.
    let again: i64 = (0..3).map(|_| touch_block(bytes)).sum();
    if again >= pages / 10 {
        eprintln!(
            "test a_large_block_freed_and_allocated_again_is_not_zeroed_again ... FAILED: three more rounds of a {bytes}-byte block took {again} page faults ({pages} pages each; the first took {first})"
        );
        return ExitCode::FAILURE;
    }
    println!("test a_large_block_freed_and_allocated_again_is_not_zeroed_again ... ok ({first} page faults the first time, {again} in three more rounds)");
    ExitCode::SUCCESS
}
