//! Clocks. The engine never reads one (replays run on capture time); the live source, the
//! sinks and the intel refresher do, through these functions, so there is one place that
//! says which clock means what: wall time (ns since the Unix epoch) for records and alarms,
//! CLOCK_MONOTONIC for the kernel's `bpf_ktime_get_ns`, and jiffies for flow timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts `bpf_jiffies64()` values to nanoseconds since the epoch.
///
/// The kernel's HZ is not visible to user space, so it is measured once (jiffies against
/// CLOCK_MONOTONIC over a quarter second, rounded to the nearest configurable HZ); the
/// anchor (a jiffies reading and the wall time at that moment) is renewed at every poll, so
/// wall-clock steps and drift never accumulate. Resolution is one jiffy (4 ms at HZ=250).
#[derive(Clone, Copy, Debug)]
pub struct JiffiesClock {
    pub hz: u64,
    anchor_jiffies: u64,
    anchor_wall_ns: u64,
}

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

    /// A new anchor: `jiffies` is a reading taken now.
    pub fn reanchor(&mut self, jiffies: u64) {
        self.anchor_jiffies = jiffies;
        self.anchor_wall_ns = wall_ns();
    }

    pub fn to_wall_ns(&self, jiffies: u64) -> u64 {
        let per_jiffy = 1_000_000_000 / self.hz;
        if jiffies >= self.anchor_jiffies {
            self.anchor_wall_ns + (jiffies - self.anchor_jiffies) * per_jiffy
        } else {
            self.anchor_wall_ns
                .saturating_sub((self.anchor_jiffies - jiffies) * per_jiffy)
        }
    }

    pub fn anchor_wall_ns(&self) -> u64 {
        self.anchor_wall_ns
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
