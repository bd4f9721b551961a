//! The live source: the datapath attached to network interfaces, read periodically.
//!
//! It attaches XDP to each interface (native mode, falling back to generic with the reason
//! logged) and optionally the TC egress program, reads the kernel flow map with batched
//! lookups, converts kernel jiffies to wall-clock time, and deletes the flows the agent has
//! ended. Dropping it detaches everything (aya's links detach on drop).

use std::ffi::CString;

use aya::programs::{tc, xdp::XdpMode, TcAttachType};
use sensor_common::FlowKey;

use crate::{
    alarm::AlarmEvent,
    clock::{monotonic_ns, wall_ns, JiffiesClock},
    engine::Engine,
    flow::record::FlowRecord,
    source::datapath::{Datapath, DatapathError, LoadOptions},
};

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("cannot attach XDP to {iface}: native mode failed ({native}), generic mode failed ({generic})")]
    AttachXdp {
        iface: String,
        native: String,
        generic: String,
    },
    #[error("cannot attach the TC egress program to {iface}: {reason}")]
    AttachTc { iface: String, reason: String },
    #[error("no default route: name an interface with --iface")]
    NoDefaultRoute,
}

/// How XDP ended up attached to an interface.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
    pub egress: bool,
}

/// What one poll cycle produced.
pub struct PollResult {
    /// Flows in the kernel map at this poll.
    pub kernel_flows: usize,
    pub events: Vec<AlarmEvent>,
    pub ended: Vec<FlowRecord>,
}

pub struct LiveSource {
    pub dp: Datapath,
    pub clock: JiffiesClock,
    pub attachments: Vec<Attachment>,
    /// Messages each watched flow may trace between two polls (`capture.trace_messages`; 0:
    /// no kernel tracing).
    pub trace_budget: u64,
    /// Watched flows the kernel's watch map refused (full).
    pub watch_refused: u64,
}

fn check_iface(iface: &str) -> Result<(), LiveError> {
    let c = CString::new(iface).map_err(|_| LiveError::NoSuchInterface(iface.to_string()))?;
    // SAFETY: c is a valid NUL-terminated string.
    if iface.len() >= 16 || unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        return Err(LiveError::NoSuchInterface(iface.to_string()));
    }
    Ok(())
}

impl LiveSource {
    /// Loads the datapath, attaches it to `ifaces` (none: loaded only, as benchmarks use it)
    /// and calibrates the clock.
    pub fn start(ifaces: &[String], egress: bool, load: &LoadOptions) -> Result<Self, LiveError> {
        let mut dp = Datapath::load(load)?;
        let mut attachments = Vec::new();
        for iface in ifaces {
            check_iface(iface)?;
            let xdp = dp.xdp()?;
            let mode = match xdp.attach(iface, XdpMode::Driver) {
                Ok(_) => "native",
                Err(native) => {
                    // Not every driver has native XDP (lo, many virtual NICs): generic mode
                    // sees the same packets a little later in the stack.
                    let native = native.to_string();
                    xdp.attach(iface, XdpMode::Skb)
                        .map_err(|g| LiveError::AttachXdp {
                            iface: iface.clone(),
                            native: native.clone(),
                            generic: g.to_string(),
                        })?;
                    log::warn!("{iface}: native XDP unavailable ({native}); attached in generic (skb) mode");
                    "generic"
                }
            };
            if egress {
                // Kernels >= 6.6 attach through TCX links, which need no qdisc and vanish with
                // the program. Older kernels need clsact; an existing one is fine (it is left
                // in place on exit, as other tools may share it).
                if !tcx_available() {
                    let _ = tc::qdisc_add_clsact(iface);
                }
                dp.tc_egress()?
                    .attach(iface, TcAttachType::Egress)
                    .map_err(|e| LiveError::AttachTc {
                        iface: iface.clone(),
                        reason: e.to_string(),
                    })?;
            }
            attachments.push(Attachment {
                iface: iface.clone(),
                mode,
                egress,
            });
        }
        let clock = JiffiesClock::calibrate(|| dp.jiffies())?;
        Ok(LiveSource {
            dp,
            clock,
            attachments,
            trace_budget: 64,
            watch_refused: 0,
        })
    }

    /// One poll cycle: reads every kernel flow (batched), feeds the engine with wall-clock
    /// times, evaluates, and deletes from the kernel the flows the engine ended. Returns the
    /// alarm events and the ended flows.
    pub fn poll_into(&mut self, engine: &mut Engine) -> Result<PollResult, LiveError> {
        let j = self.dp.jiffies()?;
        self.clock.reanchor(j);
        let clock = self.clock;
        let mut kernel_flows = 0;
        self.dp.for_each_flow_batch(|keys, values| {
            kernel_flows += keys.len();
            for (key, stats) in keys.iter().zip(values) {
                engine.update_flow(
                    key,
                    stats,
                    clock.to_wall_ns(stats.first_seen),
                    clock.to_wall_ns(stats.last_seen),
                );
            }
        })?;
        // After the flows, so every copy finds its flow (and orientation) in the table.
        self.dp
            .drain_payloads(|e| engine.payload_event(e, clock.to_wall_ns(e.jiffies)));
        // Trace times are CLOCK_MONOTONIC (bpf_ktime_get_ns); the offset to wall time is taken
        // now, so a wall-clock step moves later messages, never earlier ones apart.
        let mono_to_wall = wall_ns() as i128 - monotonic_ns() as i128;
        self.dp.drain_traces(|e| {
            let ts = (e.ktime_ns as i128 + mono_to_wall).max(0) as u64;
            engine.message(&e.key, e.dir as usize, u64::from(e.payload_len), ts);
        });
        let out = engine.tick(clock.anchor_wall_ns());
        let (events, ended) = (out.alarms, out.ended);
        if !ended.is_empty() {
            let keys: Vec<FlowKey> = ended.iter().map(|f| f.key).collect();
            self.dp.delete_flows(&keys)?;
        }
        if self.trace_budget > 0 {
            let (added, removed) = (out.watch.added, out.watch.removed);
            // Fresh budgets for the flows already watched, then the new ones.
            self.dp.rearm(&out.watch.kept, self.trace_budget)?;
            let taken = self.dp.watch(&added, self.trace_budget)?;
            self.watch_refused += (added.len() - taken) as u64;
            self.dp.unwatch(&removed)?;
        }
        self.dp.flush_log();
        Ok(PollResult {
            kernel_flows,
            events,
            ended,
        })
    }
}

/// Whether aya attaches TC programs through TCX (Linux >= 6.6), as `SchedClassifier::attach`
/// does for ingress and egress.
fn tcx_available() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}

/// The interface of the IPv4 default route (then IPv6), from /proc.
pub fn default_route_interface() -> Result<String, LiveError> {
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
                return Ok(f[0].to_string());
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 10
                && f[0] == "00000000000000000000000000000000"
                && f[1] == "00"
                && f[9] != "lo"
            {
                return Ok(f[9].to_string());
            }
        }
    }
    Err(LiveError::NoDefaultRoute)
}
