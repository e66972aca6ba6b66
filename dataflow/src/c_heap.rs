//! glibc's malloc settings for the C side of the job (librdkafka and its codecs).
//!
//! Rust allocates through jemalloc, but librdkafka allocates through glibc's malloc, and its
//! fetch and decompression buffers are large. glibc serves an allocation above its mmap
//! threshold (128 KiB at start) with a mapping of its own, returned to the system when freed,
//! but it raises the threshold to the size of every such block freed: after the first fetch
//! buffers come and go, later ones are carved out of the per-thread arenas, which keep the
//! freed space. Holding the threshold at 128 KiB lowers the 10M-record run's peak RSS at
//! `-w 2` from about 197 to 179 MiB for about 3% more CPU (README, "Memory against history").
//!
//! This is the only module of the workspace that allows `unsafe` (one FFI call).

/// The threshold held fixed: glibc's own starting value.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Holds glibc's mmap threshold fixed, unless `MALLOC_MMAP_THRESHOLD_` already set it. Call
/// first thing in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn hold_mmap_threshold() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    // SAFETY: `mallopt` takes two integers and only changes a tuning parameter of glibc's
    // allocator under the allocator's own lock; it reads and writes no memory of ours, and
    // every allocation made before or after stays valid (the threshold decides only how
    // later blocks are obtained). It returns 0 on an invalid value, which 128 KiB is not.
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    debug_assert_eq!(set, 1, "mallopt(M_MMAP_THRESHOLD) refused {MMAP_THRESHOLD}");
}

/// Other C libraries keep their own behaviour.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn hold_mmap_threshold() {}
