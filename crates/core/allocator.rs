//! The process's memory allocator.
//!
//! A proxy's memory comes in storms: ten thousand sessions open, each with TLS and relay
//! buffers, then close. glibc's malloc keeps what such a storm freed (per-thread arenas,
//! fragmented heaps), so RSS stays near its peak for good. jemalloc with background threads
//! purges freed pages on a timer (`dirty_decay_ms`, then `muzzy_decay_ms`) even while the
//! process is idle. jemalloc also replaces `malloc` itself (unprefixed), so the C code linked in
//! (aws-lc, which holds every TLS session's keys and contexts) allocates from it too: otherwise
//! those allocations stay in glibc's per-thread arenas and are not given back.
//! `bench/scale.sh` measures the three choices; docs/RELIABILITY.md has the figures. Build with `--no-default-features` for the system allocator, or
//! `--no-default-features --features mimalloc`.

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its first allocation (the library declares `malloc_conf`
/// weak so that a program can set it; the `MALLOC_CONF` environment variable still overrides
/// it). Background threads purge without waiting for the next allocation; freed pages are
/// returned within about a second.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[unsafe(export_name = "malloc_conf")]
pub static MALLOC_CONF: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
