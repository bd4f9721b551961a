//! The live source: the datapath attached to network interfaces.
//!
//! It attaches XDP to each interface (native mode, falling back to generic with the reason
//! logged) and optionally the TC egress program. Two kinds of reading run side by side on
//! the agent's tokio runtime:
//! - the kernel flow map is read with batched lookups on the poll interval, its jiffies
//!   converted to wall-clock time;
//! - the payload and trace ring buffers are read through `AsyncFd` as soon as the kernel
//!   writes to them (woken on data, not polled), so a burst between two polls does not fill
//!   them. What they hold is handed on at the next poll, after the flows, so every copy finds
//!   its flow (and its orientation) in the table, exactly as when the rings were read at the
//!   poll.
//!
//! The engine's decisions come back as [`Feedback`]: the flows it ended are deleted from the
//! kernel map, and its watch set is mirrored into the kernel's watch map (fresh trace budgets
//! every poll). Dropping the source detaches everything (aya's links detach on drop).
//!
//! It must never block the runtime for long (one batched map read per poll), never lose a
//! ring record silently (what it cannot keep is counted), and never decide anything about a
//! flow.

use std::{
    collections::VecDeque,
    ffi::CString,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{tc, xdp::XdpMode, TcAttachType},
};
use sensor_common::{counter, PayloadEvent, TraceEvent};
use tokio::{io::unix::AsyncFd, sync::watch, time::MissedTickBehavior};

use crate::{
    clock::{monotonic_ns, wall_ns, JiffiesClock},
    source::{
        datapath::{batch, read_ring, Datapath, DatapathError, LoadOptions},
        Feedback, FlowUpdate, MessageEvent, PayloadCopy, Source, SourceEvent,
    },
};

/// Ring records kept between two polls, at most, per ring: beyond this a burst is dropped
/// and counted rather than growing without bound (the kernel ring itself is the first buffer).
const MAX_PENDING_RECORDS: usize = 1 << 18;

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
    #[error("cannot watch a ring buffer for data: {0}")]
    Ring(std::io::Error),
}

/// How XDP ended up attached to an interface.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
    pub egress: bool,
}

/// What the live source counted, for the status line and the summary.
#[derive(Clone, Debug)]
pub struct LiveStats {
    /// Flows in the kernel map at the last poll.
    pub kernel_flows: usize,
    /// Watched flows the kernel's watch map refused (full).
    pub watch_refused: u64,
    /// Ring records dropped because [`MAX_PENDING_RECORDS`] were waiting for the next poll.
    pub ring_records_dropped: u64,
    /// The datapath's counters ([`sensor_common::counter`]) at the last poll.
    pub counters: [u64; counter::COUNT as usize],
}

impl Default for LiveStats {
    fn default() -> Self {
        LiveStats {
            kernel_flows: 0,
            watch_refused: 0,
            ring_records_dropped: 0,
            counters: [0; counter::COUNT as usize],
        }
    }
}

/// The ring buffers, read as soon as they have data.
struct Rings {
    payloads: AsyncFd<RingBuf<MapData>>,
    traces: AsyncFd<RingBuf<MapData>>,
}

pub struct LiveSource {
    pub dp: Datapath,
    pub clock: JiffiesClock,
    pub attachments: Vec<Attachment>,
    /// Messages each watched flow may trace between two polls (`capture.trace_messages`; 0:
    /// no kernel tracing).
    pub trace_budget: u64,
    stats: LiveStats,
    /// A copy of `stats` as of the last poll, for a presenter on another task.
    shared: Arc<Mutex<LiveStats>>,
    /// Present once [`LiveSource::watch_rings`] ran inside the runtime; without it the rings
    /// are drained at each poll.
    rings: Option<Rings>,
    pending_payloads: VecDeque<PayloadEvent>,
    pending_traces: VecDeque<TraceEvent>,
    poll: Option<tokio::time::Interval>,
    /// The poll under way: the flow map is handed on one kernel batch at a time, so a million
    /// flows never sit in memory twice.
    walk: Option<batch::Walk>,
    poll_interval: Duration,
    stop: Option<watch::Receiver<bool>>,
    /// Asked to stop: the last poll is under way or done.
    stopped: bool,
}

fn check_iface(iface: &str) -> Result<(), LiveError> {
    let c = CString::new(iface).map_err(|_| LiveError::NoSuchInterface(iface.to_string()))?;
    // SAFETY: c is a valid NUL-terminated string.
    if iface.len() >= 16 || unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        return Err(LiveError::NoSuchInterface(iface.to_string()));
    }
    Ok(())
}

/// Reads every record waiting in `ring` into `pending`, counting what does not fit.
fn drain_ring<T: aya::Pod>(
    ring: &mut RingBuf<MapData>,
    pending: &mut VecDeque<T>,
    dropped: &mut u64,
) {
    read_ring(ring, |record: &T| keep(pending, *record, dropped));
}

/// Queues a ring record for the next poll, or counts it when [`MAX_PENDING_RECORDS`] wait.
fn keep<T>(pending: &mut VecDeque<T>, record: T, dropped: &mut u64) {
    if pending.len() < MAX_PENDING_RECORDS {
        pending.push_back(record);
    } else {
        *dropped += 1;
    }
}

impl LiveSource {
    /// Loads the datapath, attaches it to `ifaces` (none: loaded only, as benchmarks use it)
    /// and calibrates the clock. Polls every `poll_interval` once it runs as a [`Source`].
    pub fn start(
        ifaces: &[String],
        egress: bool,
        load: &LoadOptions,
        poll_interval: Duration,
    ) -> Result<Self, LiveError> {
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
            stats: LiveStats::default(),
            shared: Arc::default(),
            rings: None,
            pending_payloads: VecDeque::new(),
            pending_traces: VecDeque::new(),
            poll: None,
            walk: None,
            poll_interval,
            stop: None,
            stopped: false,
        })
    }

    /// Ends the source once `stop` turns true (Ctrl-C, SIGTERM or `--duration`, decided by the
    /// caller): one last poll, then no more batches.
    pub fn stop_on(&mut self, stop: watch::Receiver<bool>) {
        self.stop = Some(stop);
    }

    /// Registers the ring buffers with the runtime's reactor. Must run inside the runtime.
    pub fn watch_rings(&mut self) -> Result<(), LiveError> {
        let (Some(payloads), Some(traces)) =
            (self.dp.take_payload_ring(), self.dp.take_trace_ring())
        else {
            return Ok(());
        };
        // SAFETY: a RingBuf owns its map's file descriptor (and its mmap) for as long as it
        // lives and always reports that same descriptor; the AsyncFd owns the RingBuf.
        // Readable interest only: the kernel writes the ring, the agent only reads it.
        let register = |ring| unsafe {
            AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
                .map_err(|e| LiveError::Ring(e.into()))
        };
        self.rings = Some(Rings {
            payloads: register(payloads)?,
            traces: register(traces)?,
        });
        Ok(())
    }

    pub fn stats(&self) -> LiveStats {
        self.stats.clone()
    }

    /// The stats as of the last poll, readable while the loop runs.
    pub fn shared_stats(&self) -> Arc<Mutex<LiveStats>> {
        self.shared.clone()
    }

    /// The next step of a poll, starting one if none is under way: the kernel's flows one
    /// batch at a time (wall-clock times), then, as the poll's last step, every payload copy
    /// and traced message read since the last poll and a tick at the poll's time. Whether the
    /// poll is complete is `events.last()` being a [`SourceEvent::Tick`].
    pub fn poll_step(&mut self) -> Result<Vec<SourceEvent>, LiveError> {
        if self.walk.is_none() {
            let j = self.dp.jiffies()?;
            self.clock.reanchor(j);
            self.stats.kernel_flows = 0;
            self.walk = Some(batch::Walk::new());
        }
        let clock = self.clock;
        if let Some(walk) = self.walk.as_mut() {
            if let Some((keys, values)) = self.dp.next_flow_batch(walk)? {
                self.stats.kernel_flows += keys.len();
                let flows = keys
                    .iter()
                    .zip(values)
                    .map(|(key, stats)| FlowUpdate {
                        key: *key,
                        stats: *stats,
                        first_ns: clock.to_wall_ns(stats.first_seen),
                        last_ns: clock.to_wall_ns(stats.last_seen),
                    })
                    .collect();
                return Ok(vec![SourceEvent::Flows(flows)]);
            }
        }
        self.walk = None;
        // What arrived since the reactor last woke us.
        match self.rings.as_mut() {
            Some(r) => {
                drain_ring(
                    r.payloads.get_mut(),
                    &mut self.pending_payloads,
                    &mut self.stats.ring_records_dropped,
                );
                drain_ring(
                    r.traces.get_mut(),
                    &mut self.pending_traces,
                    &mut self.stats.ring_records_dropped,
                );
            }
            None => {
                let (p, t) = (&mut self.pending_payloads, &mut self.pending_traces);
                let dropped = &mut self.stats.ring_records_dropped;
                self.dp.drain_payloads(|e| keep(p, *e, dropped));
                self.dp.drain_traces(|e| keep(t, *e, dropped));
            }
        }
        let mut events =
            Vec::with_capacity(1 + self.pending_payloads.len() + self.pending_traces.len());
        for e in self.pending_payloads.drain(..) {
            events.push(SourceEvent::Payload(PayloadCopy::from_ring(
                &e,
                clock.to_wall_ns(e.jiffies),
            )));
        }
        // Trace times are CLOCK_MONOTONIC (bpf_ktime_get_ns); the offset to wall time is taken
        // now, so a wall-clock step moves later messages, never earlier ones apart.
        let mono_to_wall = wall_ns() as i128 - monotonic_ns() as i128;
        for e in self.pending_traces.drain(..) {
            events.push(SourceEvent::Message(MessageEvent {
                key: e.key,
                dir: e.dir as usize,
                size: u64::from(e.payload_len),
                ts_ns: (e.ktime_ns as i128 + mono_to_wall).max(0) as u64,
            }));
        }
        events.push(SourceEvent::Tick(clock.anchor_wall_ns()));
        self.stats.counters = self.dp.counters()?;
        *self.shared.lock().unwrap_or_else(PoisonError::into_inner) = self.stats.clone();
        Ok(events)
    }

    /// Acts on the engine's decisions: forgets ended flows and mirrors the watch set.
    pub fn apply(&mut self, fb: Feedback<'_>) -> Result<(), LiveError> {
        if !fb.ended.is_empty() {
            self.dp.delete_flows(fb.ended)?;
        }
        if self.trace_budget > 0 {
            // Fresh budgets for the flows already watched, then the new ones.
            self.dp.rearm(fb.watch_kept, self.trace_budget)?;
            let taken = self.dp.watch(fb.watch_added, self.trace_budget)?;
            self.stats.watch_refused += (fb.watch_added.len() - taken) as u64;
            self.dp.unwatch(fb.watch_removed)?;
        }
        self.dp.flush_log();
        Ok(())
    }
}

impl Source for LiveSource {
    type Error = LiveError;

    async fn next_batch(&mut self) -> Result<Option<Vec<SourceEvent>>, LiveError> {
        if self.walk.is_some() {
            // A poll under way goes on at once: its flows, then its tick.
            return self.poll_step().map(Some);
        }
        if self.stopped {
            return Ok(None);
        }
        if self.poll.is_none() {
            // The first tick of an interval fires at once: the first poll is one interval
            // after the start, as before.
            let mut poll = tokio::time::interval_at(
                tokio::time::Instant::now() + self.poll_interval,
                self.poll_interval,
            );
            poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
            self.poll = Some(poll);
        }
        loop {
            if self.stop.as_ref().is_some_and(|s| *s.borrow()) {
                // One last poll, so what the kernel counted since the previous one is judged
                // and its alarms delivered before the agent exits.
                self.stopped = true;
                break;
            }
            let stats = &mut self.stats.ring_records_dropped;
            let (pending_p, pending_t) = (&mut self.pending_payloads, &mut self.pending_traces);
            let Some(poll) = self.poll.as_mut() else {
                return Ok(None);
            };
            let stop_rx = &mut self.stop;
            let stop = async {
                match stop_rx.as_mut() {
                    Some(s) => {
                        // A closed channel means nobody can ask us to stop any more.
                        if s.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            match self.rings.as_mut() {
                Some(rings) => {
                    tokio::select! {
                        _ = poll.tick() => break,
                        () = stop => continue,
                        guard = rings.payloads.readable_mut() => {
                            let mut guard = guard.map_err(LiveError::Ring)?;
                            drain_ring(guard.get_inner_mut(), pending_p, stats);
                            guard.clear_ready();
                        }
                        guard = rings.traces.readable_mut() => {
                            let mut guard = guard.map_err(LiveError::Ring)?;
                            drain_ring(guard.get_inner_mut(), pending_t, stats);
                            guard.clear_ready();
                        }
                    }
                }
                None => {
                    tokio::select! {
                        _ = poll.tick() => break,
                        () = stop => continue,
                    }
                }
            }
        }
        self.poll_step().map(Some)
    }

    fn feedback(&mut self, fb: Feedback<'_>) -> Result<(), LiveError> {
        self.apply(fb)
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
