//! Fault injection for the crash tests: `ELF_FAILPOINT_<NAME>_DELAY_MS=n` makes the process
//! sleep `n` ms at the named point, so a test can kill it there (for instance between a
//! checkpoint's shards and its manifest). Unset (always, outside tests), a point costs one
//! environment lookup.

/// Sleeps at failpoint `name` when `ELF_FAILPOINT_<NAME>_DELAY_MS` is set.
pub fn delay(name: &str) {
    let key = format!("ELF_FAILPOINT_{}_DELAY_MS", name.to_ascii_uppercase());
    if let Some(ms) = std::env::var(&key).ok().and_then(|v| v.parse::<u64>().ok()) {
        tracing::warn!(failpoint = name, ms, "failpoint: sleeping");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
