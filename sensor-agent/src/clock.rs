//! Clocks. The engine never reads one (replays run on capture time); the live source, the
//! sinks and the intel refresher do, through these functions, so there is one place that
//! says which clock means what: wall time (ns since the Unix epoch) for records and alarms,
//! CLOCK_MONOTONIC for the kernel's `bpf_ktime_get_ns`, and jiffies for flow timestamps.
//! It also says how wall time is written: the RFC 3339 forms of records, alarms, sinks and
//! intel reports, so every timestamp the agent prints comes from one calendar (the `time`
//! crate's) and the forms cannot drift apart. Nothing here ever parses a timestamp or decides
//! which clock a caller should read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::{
    format_description::BorrowedFormatItem, macros::format_description, OffsetDateTime,
    PrimitiveDateTime,
};

/// Converts `bpf_jiffies64()` values to nanoseconds since the epoch.
///
/// The kernel's HZ is not visible to user space, so it is measured once (jiffies against
/// CLOCK_MONOTONIC over a quarter second, rounded to the nearest configurable HZ). The anchor
/// (a jiffies reading and the wall time at that moment) is kept for as long as the kernel
/// maps it converts: jiffies advance with CLOCK_MONOTONIC, which NTP disciplines, so a fixed
/// anchor stays within a jiffy of the wall clock until the wall clock is stepped, and only a
/// step (see [`JiffiesClock::follow`]) moves it. A fixed anchor is what makes a flow's start
/// the same nanosecond in every agent that reads the same map, before and after a restart.
/// Resolution is one jiffy (4 ms at HZ=250).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JiffiesClock {
    pub hz: u64,
    anchor_jiffies: u64,
    anchor_wall_ns: u64,
}

/// A wall clock further than this from what the anchor predicts was stepped (settimeofday,
/// an NTP step, a VM resumed): far beyond a jiffy and the reading's jitter.
const STEP_NS: u64 = 100_000_000;

impl JiffiesClock {
    /// Measures HZ from two readings of `jiffies` (the datapath's `bpf_jiffies64()`) a quarter
    /// second apart.
    pub fn calibrate<E>(mut jiffies: impl FnMut() -> Result<u64, E>) -> Result<Self, E> {
        let t0 = monotonic_ns();
        let j0 = jiffies()?;
        std::thread::sleep(Duration::from_millis(250));
        let t1 = monotonic_ns();
        let j1 = jiffies()?;
        let measured = (j1 - j0) as f64 * 1e9 / (t1 - t0).max(1) as f64;
        let hz = [100u64, 250, 300, 1000]
            .into_iter()
            .min_by(|a, b| {
                (*a as f64 - measured)
                    .abs()
                    .total_cmp(&(*b as f64 - measured).abs())
            })
            .unwrap_or(250);
        log::info!("kernel HZ measured {measured:.0}, using {hz}");
        Ok(JiffiesClock {
            hz,
            anchor_jiffies: j1,
            anchor_wall_ns: wall_ns(),
        })
    }

    /// A clock from an anchor saved earlier ([`JiffiesClock::anchor`]); `None` if it is not
    /// one (HZ unknown or no anchor set).
    pub fn from_anchor(hz: u64, anchor_jiffies: u64, anchor_wall_ns: u64) -> Option<Self> {
        ([100, 250, 300, 1000].contains(&hz) && anchor_jiffies != 0 && anchor_wall_ns != 0)
            .then_some(JiffiesClock {
                hz,
                anchor_jiffies,
                anchor_wall_ns,
            })
    }

    /// `(hz, anchor jiffies, anchor wall ns)`, to save beside the maps.
    pub fn anchor(&self) -> (u64, u64, u64) {
        (self.hz, self.anchor_jiffies, self.anchor_wall_ns)
    }

    /// Checks the anchor against a `jiffies` reading taken now. If the wall clock was stepped
    /// since the anchor was set, re-anchors and returns how far the wall clock moved (ns,
    /// signed); otherwise keeps the anchor (so conversions stay identical) and returns `None`.
    pub fn follow(&mut self, jiffies: u64) -> Option<i64> {
        let now = wall_ns();
        let predicted = self.to_wall_ns(jiffies);
        let moved = now as i128 - predicted as i128;
        if moved.unsigned_abs() > u128::from(STEP_NS) {
            self.anchor_jiffies = jiffies;
            self.anchor_wall_ns = now;
            Some(moved.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
        } else {
            None
        }
    }

    /// Nanoseconds per jiffy as the kernel counts them (TICK_NSEC: rounded, so HZ=300 is
    /// exact over months).
    fn tick_ns(&self) -> u64 {
        (1_000_000_000 + self.hz / 2) / self.hz
    }

    pub fn to_wall_ns(&self, jiffies: u64) -> u64 {
        let per_jiffy = self.tick_ns();
        if jiffies >= self.anchor_jiffies {
            self.anchor_wall_ns + (jiffies - self.anchor_jiffies) * per_jiffy
        } else {
            self.anchor_wall_ns
                .saturating_sub((self.anchor_jiffies - jiffies) * per_jiffy)
        }
    }
}

pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `2021-06-10T15:41:22.384993Z`: microseconds, always six digits, always `Z`. The form of
/// flow records, alarms and RFC 5424 syslog timestamps (which allow at most six digits).
pub const RFC3339_MICROS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// `2024-05-01T12:34:56.789Z`: milliseconds, always three digits, always `Z`.
pub const RFC3339_MILLIS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `2023-11-14T22:13:20Z`: whole seconds, always `Z`.
pub const RFC3339_SECONDS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// `ns` since the Unix epoch in UTC. Past the last instant a four-digit year can write
/// (9999-12-31T23:59:59.999999999Z) the time is clamped to it: RFC 3339 has no way to write a
/// later one, and a timestamp must never make its writer fail.
pub fn utc_from_nanos(ns: i128) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ns)
        .unwrap_or_else(|_| PrimitiveDateTime::MAX.assume_utc())
}

/// `t` written in `layout`. Formatting an `OffsetDateTime` into a `String` cannot fail: the
/// value carries every component a layout can name and writing to memory has no I/O error;
/// the empty string only stands in for that impossible case so no timestamp can panic.
pub fn format_utc(t: OffsetDateTime, layout: &[BorrowedFormatItem<'_>]) -> String {
    t.format(layout).unwrap_or_default()
}

/// [`RFC3339_MICROS`] of `ns` since the Unix epoch.
pub fn rfc3339_micros(ns: u64) -> String {
    format_utc(utc_from_nanos(i128::from(ns)), RFC3339_MICROS)
}

/// [`RFC3339_SECONDS`] of `ns` since the Unix epoch.
pub fn rfc3339_seconds(ns: u64) -> String {
    format_utc(utc_from_nanos(i128::from(ns)), RFC3339_SECONDS)
}

/// [`RFC3339_MILLIS`] of a time given as its distance from the Unix epoch.
pub fn rfc3339_millis(since_epoch: Duration) -> String {
    let ns = i128::try_from(since_epoch.as_nanos()).unwrap_or(i128::MAX);
    format_utc(utc_from_nanos(ns), RFC3339_MILLIS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forms are the ones the agent always wrote (SIEM parsers and stored alarms depend on
    /// them byte for byte): humantime's for micros and seconds, and the sinks' own for millis.
    #[test]
    fn rfc3339_forms_are_unchanged() {
        const S: u64 = 1_000_000_000;
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_623_339_682 * S + 384_993_999),
            "2021-06-10T15:41:22.384993Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400 * S + 5_000),
            "2000-02-29T00:00:00.000005Z"
        );
        assert_eq!(rfc3339_micros(u64::MAX), "2554-07-21T23:34:33.709551Z");
        assert_eq!(
            rfc3339_seconds(1_700_000_000 * S + 999_999_999),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339_millis(Duration::new(1_709_251_199, 999_999_999)),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_millis(Duration::from_secs(4_107_542_400)),
            "2100-03-01T00:00:00.000Z"
        );
        // Past year 9999: clamped, never a panic.
        assert_eq!(
            rfc3339_millis(Duration::from_secs(u64::MAX)),
            "9999-12-31T23:59:59.999Z"
        );
        let mut rng = fastrand::Rng::with_seed(0x3339);
        for _ in 0..20_000 {
            let ns = rng.u64(..);
            let t = UNIX_EPOCH + Duration::from_nanos(ns);
            assert_eq!(
                rfc3339_micros(ns),
                humantime::format_rfc3339_micros(t).to_string()
            );
            assert_eq!(
                rfc3339_seconds(ns),
                humantime::format_rfc3339_seconds(t).to_string()
            );
        }
    }
}
