//! Waiting on readiness: every test that must wait for something to happen (a port accepting,
//! a line in a file, a count reached) polls the condition itself against a deadline instead of
//! sleeping a fixed time and hoping. A fixed sleep is either too short on a loaded machine (the
//! test flakes) or too long everywhere (the suite crawls); a polled condition returns as soon
//! as it holds and fails with a message naming what never happened.
//!
//! What must never happen: waiting forever (every wait has a deadline), or a timeout that
//! does not say what was awaited.

use std::time::{Duration, Instant};

/// Between two checks: short, so a condition that holds is seen at once, without spinning a
/// core that the tested processes need.
const POLL: Duration = Duration::from_millis(20);

/// Polls `ready` until it returns true (`Ok`) or `timeout` has passed (`Err` naming `what`).
/// The condition is checked once more at the deadline, so a slow first check still counts.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        // Polling interval, not synchronisation: the condition above decides.
        std::thread::sleep(POLL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds_and_names_what_never_did() {
        let mut n = 0;
        assert_eq!(
            wait_until(Duration::from_secs(5), "three checks", || {
                n += 1;
                n >= 3
            }),
            Ok(())
        );
        assert_eq!(n, 3);
        let e = wait_until(Duration::from_millis(50), "never", || false).unwrap_err();
        assert!(e.contains("waiting for never"), "{e}");
    }
}
