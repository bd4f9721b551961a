//! Reading what an agent wrote: alarm files (JSON lines) and the times in them, against the
//! wall clock of the test.

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

/// Wall time now, in ns since the epoch (the alarms' clock).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An alarm's RFC 3339 time in ns since the epoch; panics naming a malformed one.
pub fn ts_ns(rfc3339: &str) -> u64 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("timestamp {rfc3339:?}: {e}"))
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Every alarm in a JSON-lines file (none while it does not exist yet); panics naming a line
/// that is not JSON.
pub fn read_alarms(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alarm line {l:?}: {e}")))
        .collect()
}
