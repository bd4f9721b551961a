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
    collections::{HashSet, VecDeque},
    ffi::CString,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::{XdpLink, XdpMode},
        TcAttachType,
    },
};
use sensor_common::{counter, FlowKey, PayloadEvent, TraceEvent};
use tokio::{io::unix::AsyncFd, sync::watch, time::MissedTickBehavior};

use crate::{
    clock::{monotonic_ns, wall_ns, JiffiesClock},
    source::{
        datapath::{batch, read_ring, Datapath, DatapathError, LoadOptions},
        pins::{self, PinDir, PinError},
        process::{HostStats, HostView},
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
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("cannot pin the link attached to {iface}: {reason}")]
    PinLink { iface: String, reason: String },
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
    /// When the last poll started (its duration is measured up to the end of its evaluation).
    pub poll_started: Option<std::time::Instant>,
}

impl Default for LiveStats {
    fn default() -> Self {
        LiveStats {
            kernel_flows: 0,
            watch_refused: 0,
            ring_records_dropped: 0,
            counters: [0; counter::COUNT as usize],
            poll_started: None,
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
    /// Where the datapath is pinned ([`LiveSource::start`]'s `pin_root`).
    pins: Option<PinDir>,
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
    /// Wall time of the poll under way, on the flows' clock.
    poll_now_ns: u64,
    poll_interval: Duration,
    stop: Option<watch::Receiver<bool>>,
    /// Asked to stop: the last poll is under way or done.
    stopped: bool,
    /// Tunnelled flows whose `TUNNELS` entry was handed on: each is read once, not at every
    /// poll (forgotten when the flow ends).
    tunnels_sent: HashSet<FlowKey>,
    /// The host's view of its flows (forwarded or its own, socket owners), when asked for.
    host: Option<HostView>,
    /// Jiffies at the start of the previous poll (flows first seen since are new to `host`).
    host_since: u64,
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
    ///
    /// With a `pin_root`, the maps, programs and links are pinned under it
    /// ([`crate::source::pins`]): what an earlier agent pinned there for the same interfaces
    /// and layout is taken over (its flows, counters and clock anchor go on, its links get
    /// this agent's programs atomically), and everything stays attached after this process
    /// exits until [`PinDir::remove`] or `sensor-agent detach`.
    pub fn start(
        ifaces: &[String],
        egress: bool,
        load: &LoadOptions,
        poll_interval: Duration,
        pin_root: Option<&Path>,
    ) -> Result<Self, LiveError> {
        for iface in ifaces {
            check_iface(iface)?;
        }
        let mut load = load.clone();
        let pins = match pin_root {
            Some(root) if !ifaces.is_empty() => {
                let prepared = pins::prepare(root, ifaces, &load)?;
                load.pin_dir = Some(prepared.dir.path().to_path_buf());
                if prepared.resumed {
                    log::info!(
                        "resuming the kernel state pinned in {}",
                        prepared.dir.path().display()
                    );
                }
                Some(prepared.dir)
            }
            _ => None,
        };
        let mut dp = Datapath::load(&load)?;
        let mut attachments = Vec::new();
        for iface in ifaces {
            let mode = attach_xdp(&mut dp, iface, pins.as_ref())?;
            match &pins {
                // An earlier run counted egress and this one does not: its link would go on
                // counting what nobody asked for.
                Some(dir) if !egress && dir.tc_link(iface).exists() => {
                    let link = dir.tc_link(iface);
                    std::fs::remove_file(&link).map_err(|e| LiveError::AttachTc {
                        iface: iface.clone(),
                        reason: format!(
                            "cannot remove the earlier egress link {}: {e}",
                            link.display()
                        ),
                    })?;
                    log::info!("{iface}: egress is off; detached the earlier run's egress program");
                }
                _ => {}
            }
            if egress {
                attach_tc(&mut dp, iface, pins.as_ref())?;
            }
            attachments.push(Attachment {
                iface: iface.clone(),
                mode,
                egress,
            });
        }
        if let Some(dir) = &pins {
            dp.pin_programs(dir.path(), egress)?;
        }
        // The anchor saved with the maps converts their jiffies exactly as before a restart;
        // fresh maps get a new one, saved with them.
        let (hz, j, wall) = dp.clock_anchor()?;
        let clock = match JiffiesClock::from_anchor(hz, j, wall) {
            Some(clock) => clock,
            None => {
                let clock = JiffiesClock::calibrate(|| dp.jiffies())?;
                dp.set_clock_anchor(clock.anchor())?;
                clock
            }
        };
        Ok(LiveSource {
            dp,
            clock,
            attachments,
            pins,
            trace_budget: 64,
            stats: LiveStats::default(),
            shared: Arc::default(),
            rings: None,
            pending_payloads: VecDeque::new(),
            pending_traces: VecDeque::new(),
            poll: None,
            walk: None,
            poll_now_ns: 0,
            poll_interval,
            stop: None,
            stopped: false,
            tunnels_sent: HashSet::new(),
            host: None,
            host_since: 0,
        })
    }

    /// Tells the engine, for each new flow, whether it is this host's and which process owns
    /// it ([`crate::source::process`]).
    pub fn set_host_view(&mut self, view: HostView) {
        self.host = Some(view);
    }

    /// The host view's counts, when there is one.
    pub fn host_stats(&self) -> Option<HostStats> {
        self.host.as_ref().map(|h| h.stats.clone())
    }

    /// Where this run pinned the datapath, if it did.
    pub fn pin_dir(&self) -> Option<&PinDir> {
        self.pins.as_ref()
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
            if let Some(moved) = self.clock.follow(j) {
                log::warn!(
                    "the wall clock moved by {:.3} s against the kernel's; flow times follow it from now on",
                    moved as f64 / 1e9
                );
                self.dp.set_clock_anchor(self.clock.anchor())?;
            }
            self.poll_now_ns = self.clock.to_wall_ns(j);
            if let Some(h) = self.host.as_mut() {
                self.host_since = h.begin_poll(j);
            }
            self.stats.kernel_flows = 0;
            self.stats.poll_started = Some(std::time::Instant::now());
            self.walk = Some(batch::Walk::new());
        }
        let clock = self.clock;
        if let Some(walk) = self.walk.as_mut() {
            if let Some((keys, values)) = self.dp.next_flow_batch(walk)? {
                self.stats.kernel_flows += keys.len();
                let mut flows = Vec::with_capacity(keys.len());
                for (key, stats) in keys.iter().zip(values) {
                    // One lookup per tunnelled flow, at the first poll that sees it.
                    let tunnel = if stats.tunnel != 0 && self.tunnels_sent.insert(*key) {
                        self.dp.tunnel(key)?.map(Box::new)
                    } else {
                        None
                    };
                    flows.push(FlowUpdate {
                        key: *key,
                        stats: *stats,
                        first_ns: clock.to_wall_ns(stats.first_seen),
                        last_ns: clock.to_wall_ns(stats.last_seen),
                        tunnel,
                    });
                }
                let mut events = vec![SourceEvent::Flows(flows)];
                if let Some(h) = self.host.as_mut() {
                    let host = h.join(self.host_since, keys, values);
                    if !host.is_empty() {
                        events.push(SourceEvent::Host(host));
                    }
                }
                return Ok(events);
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
        events.push(SourceEvent::Tick(self.poll_now_ns));
        self.stats.counters = self.dp.counters()?;
        *self.shared.lock().unwrap_or_else(PoisonError::into_inner) = self.stats.clone();
        Ok(events)
    }

    /// Acts on the engine's decisions: forgets ended flows and mirrors the watch set.
    pub fn apply(&mut self, fb: Feedback<'_>) -> Result<(), LiveError> {
        if !fb.ended.is_empty() {
            self.dp.delete_flows(fb.ended)?;
            for key in fb.ended {
                self.tunnels_sent.remove(key);
            }
            if let Some(h) = self.host.as_mut() {
                h.ended(fb.ended);
            }
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

/// Attaches XDP to `iface`: through the link an earlier agent pinned, if there is one (its
/// program is swapped for ours atomically, so no packet goes uncounted), else afresh (native
/// mode, falling back to generic), pinning the new link. Returns the mode.
fn attach_xdp(
    dp: &mut Datapath,
    iface: &str,
    pins: Option<&PinDir>,
) -> Result<&'static str, LiveError> {
    let xdp = dp.xdp()?;
    if let Some(dir) = pins {
        let path = dir.xdp_link(iface);
        if take_over(iface, "XDP", &path, |l: XdpLink| {
            xdp.attach_to_link(l).map(drop)
        }) {
            return Ok("resumed");
        }
    }
    let attach = |xdp: &mut aya::programs::Xdp| -> Result<_, LiveError> {
        match xdp.attach(iface, XdpMode::Driver) {
            Ok(id) => Ok((id, "native")),
            Err(native) => {
                // Not every driver has native XDP (lo, many virtual NICs): generic mode
                // sees the same packets a little later in the stack.
                let native = native.to_string();
                let id = xdp
                    .attach(iface, XdpMode::Skb)
                    .map_err(|g| LiveError::AttachXdp {
                        iface: iface.to_string(),
                        native: native.clone(),
                        generic: g.to_string(),
                    })?;
                log::warn!(
                    "{iface}: native XDP unavailable ({native}); attached in generic (skb) mode"
                );
                Ok((id, "generic"))
            }
        }
    };
    let (id, mode) = attach(xdp)?;
    if let Some(dir) = pins {
        let link = xdp.take_link(id).map_err(|e| pin_failed(iface, e))?;
        if !pin_link(iface, link, &dir.xdp_link(iface))? {
            // A netlink attachment (kernels before 5.9) cannot be pinned, and letting go of it
            // detached it: attach again, for this process's lifetime only.
            log::warn!("{iface}: this kernel attaches XDP without BPF links; the datapath detaches when the agent stops");
            attach(xdp)?;
        }
    }
    Ok(mode)
}

/// Attaches the TC egress program to `iface`, through a pinned link as [`attach_xdp`] does.
fn attach_tc(dp: &mut Datapath, iface: &str, pins: Option<&PinDir>) -> Result<(), LiveError> {
    let tc_err = |reason: String| LiveError::AttachTc {
        iface: iface.to_string(),
        reason,
    };
    // Kernels >= 6.6 attach through TCX links, which need no qdisc and vanish with the
    // program. Older kernels need clsact; an existing one is fine (it is left in place on
    // exit, as other tools may share it).
    if !tcx_available() {
        let _ = tc::qdisc_add_clsact(iface);
    }
    let prog = dp.tc_egress()?;
    if let Some(dir) = pins {
        let path = dir.tc_link(iface);
        if take_over(iface, "egress", &path, |l: SchedClassifierLink| {
            prog.attach_to_link(l).map(drop)
        }) {
            return Ok(());
        }
    }
    let id = prog
        .attach(iface, TcAttachType::Egress)
        .map_err(|e| tc_err(e.to_string()))?;
    if let Some(dir) = pins {
        let link = prog.take_link(id).map_err(|e| pin_failed(iface, e))?;
        if !pin_link(iface, link, &dir.tc_link(iface))? {
            log::warn!("{iface}: this kernel attaches TC without BPF links (before 6.6); the egress program detaches when the agent stops");
            prog.attach(iface, TcAttachType::Egress)
                .map_err(|e| tc_err(e.to_string()))?;
        }
    }
    Ok(())
}

/// Hands the link an earlier agent pinned at `path` to `attach` (which swaps our program in).
/// On failure the pin is removed, so the caller attaches afresh; says whether it worked.
fn take_over<L>(
    iface: &str,
    hook: &str,
    path: &Path,
    attach: impl FnOnce(L) -> Result<(), aya::programs::ProgramError>,
) -> bool
where
    L: TryFrom<FdLink, Error = aya::programs::links::LinkError>,
{
    if !path.exists() {
        return false;
    }
    let taken = PinnedLink::from_pin(path)
        .and_then(|p| L::try_from(FdLink::from(p)))
        .map_err(|e| e.to_string())
        .and_then(|l| attach(l).map_err(|e| e.to_string()));
    match taken {
        Ok(()) => true,
        Err(e) => {
            log::warn!(
                "{iface}: cannot take over the pinned {hook} link {} ({e}); attaching afresh",
                path.display()
            );
            let _ = std::fs::remove_file(path);
            false
        }
    }
}

/// Pins a link just made at `path`; `false` if it is not a BPF link (netlink attachments
/// cannot be pinned; converting it let go of it).
fn pin_link<L>(iface: &str, link: L, path: &Path) -> Result<bool, LiveError>
where
    FdLink: TryFrom<L>,
{
    match FdLink::try_from(link) {
        Ok(fd) => {
            fd.pin(path).map_err(|e| pin_failed(iface, e))?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

fn pin_failed(iface: &str, e: impl std::fmt::Display) -> LiveError {
    LiveError::PinLink {
        iface: iface.to_string(),
        reason: e.to_string(),
    }
}

/// Whether aya attaches TC programs through TCX (Linux >= 6.6), as `SchedClassifier::attach`
/// does for ingress and egress.
pub fn tcx_available() -> bool {
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
