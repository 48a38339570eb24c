//! Allocator options that differ from their defaults, set before the runtime starts.
//!
//! Purge delay: mimalloc v3 keeps freed pages committed for 1 s (v2 kept them 10 ms) before
//! it gives them back to the OS. A writer frees a whole batch at every flush and the
//! calculator its hand-overs, so under load RSS held a second of freed batches on top of the
//! live ones. At 10 ms, side by side at the `rate` load: writer RSS max 0.92×, calculator
//! 0.94×, CPU per row 0.98× (noise); at the `max` load writer RSS max 143 MB against 160.

//!
//! glibc arenas: Rust allocates through mimalloc, but librdkafka (C) through glibc's malloc,
//! which gives busy threads arenas of their own (up to 8 per core), each keeping what was
//! freed in it; librdkafka runs a thread per broker per client. Two arenas, side by side at a
//! frame every 50 ms per symbol (two rounds): writer RSS max 0.93× (155 → 144 MB),
//! calculator 0.95×, connector + writer CPU per row 0.93× (noise).

use libmimalloc_sys::{mi_option_set, mi_option_t};

/// `mi_option_purge_delay` in mimalloc's `include/mimalloc.h` (v2 and v3), which the bindings
/// do not name; [`tests::the_index_is_the_purge_delay`] holds it to its documented default.
const PURGE_DELAY: mi_option_t = 15;
/// Milliseconds (mimalloc v2's default).
const PURGE_DELAY_MS: std::ffi::c_long = 10;
/// mimalloc reads its options from `MIMALLOC_<OPTION>` variables; one that ops set wins.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// glibc's arenas at most; `MALLOC_ARENA_MAX`, which glibc reads itself, wins.
const ARENA_MAX: i32 = 2;
const ARENA_MAX_ENV: &str = "MALLOC_ARENA_MAX";

pub fn tune() {
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads it when it next purges.
        unsafe { mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
    }
    if std::env::var_os(ARENA_MAX_ENV).is_none() && !limit_arenas() {
        eprintln!("marketlane: mallopt(M_ARENA_MAX, {ARENA_MAX}) refused; glibc's default applies");
    }
}

/// Whether glibc took the arena limit (always, unless this is not glibc).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_arenas() -> bool {
    // SAFETY: sets a malloc parameter; called before any thread of ours is started.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_arenas() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use libmimalloc_sys::mi_option_get;

    /// The purge delay in effect (ms).
    fn purge_delay_ms() -> std::ffi::c_long {
        // SAFETY: reads a plain integer option.
        unsafe { mi_option_get(PURGE_DELAY) }
    }

    /// The option at this index defaults to mimalloc v3's documented purge delay (1000 ms),
    /// so a new mimalloc that renumbers its options fails here instead of setting another.
    /// Then `tune` sets it (the test binary's environment has no override).
    #[test]
    fn the_index_is_the_purge_delay() {
        assert!(std::env::var_os(PURGE_DELAY_ENV).is_none());
        assert_eq!(
            purge_delay_ms(),
            1000,
            "option {PURGE_DELAY} is not the purge delay"
        );
        tune();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }

    /// glibc takes the arena limit (`mallopt` answers 1; 0 for a parameter it does not know).
    #[test]
    fn glibc_takes_the_arena_limit() {
        assert!(limit_arenas());
    }
}
