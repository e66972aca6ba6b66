//! The job's heap: jemalloc serves the whole process, librdkafka and its codecs included.
//!
//! librdkafka allocates every fetched message on its broker thread and the workers free it, a
//! few million times a second. Under glibc's malloc each of those frees took the broker
//! thread's arena lock (the per-thread cache holds only a handful of blocks), so the two sides
//! contended for it; jemalloc returns a block freed on another thread in batches. jemalloc
//! keeps freed pages for reuse for a while before it returns them to the system: librdkafka's
//! large fetch and decompression buffers come and go, so that delay is held at one second
//! instead of ten. On 10M records at default flags the peak is then within 8 MiB of glibc's
//! malloc (165 against 157 MiB); with ten seconds it was 15-30 MiB above it.

/// How long jemalloc keeps freed pages before it returns them to the system (its default is 10 s).
const DIRTY_DECAY_MS: isize = 1_000;

/// Sets jemalloc's decay for every arena, existing and future, unless `MALLOC_CONF` already
/// configures jemalloc. Call first thing in `main`, before any thread starts.
pub fn set_decay() {
    if std::env::var_os("MALLOC_CONF").is_some() {
        return;
    }
    // `arenas.dirty_decay_ms` is the default of arenas created later; the arena index 4096
    // (`MALLCTL_ARENAS_ALL`) applies the setting to every arena that exists now.
    for name in [
        &b"arenas.dirty_decay_ms\0"[..],
        b"arena.4096.dirty_decay_ms\0",
    ] {
        // SAFETY: both settings are an `ssize_t` in jemalloc, which `isize` is on every
        // platform Rust and jemalloc share; `name` is NUL-terminated, as `raw::write` requires.
        // Writing them only changes when jemalloc purges freed pages: every allocation made
        // before or after stays valid.
        let set = unsafe { tikv_jemalloc_ctl::raw::write(name, DIRTY_DECAY_MS) };
        debug_assert!(set.is_ok(), "jemalloc refused a decay setting: {set:?}");
    }
}
