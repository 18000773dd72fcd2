//! The wall clock, read in one place (the protocol crate takes time as an argument).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Unix time in seconds.
pub fn now_secs() -> u64 {
    now_us() / 1_000_000
}
