//! Replaying capture files with the captures' own timestamps: a source for the event loop.
//!
//! The captures are read on a blocking thread of the runtime and handed to the loop in
//! batches of events, so reading and parsing overlap with detection.
//!
//! Two engines count the frames: `kernel` pushes every frame through the loaded XDP program
//! with BPF_PROG_TEST_RUN (so anyone can check the datapath against any capture), `user` runs
//! the agent's own parser. Either way the detection engine sees the same flows:
//! - `user` feeds it packet by packet and ticks it every poll interval of capture time, exactly
//!   as the live sensor polls, so alarms carry the capture time at which they would have fired;
//! - `kernel` cannot be given capture time, so its flows are stamped with the first and last
//!   capture timestamp of their key (computed by the agent's parser, which shares the canonical
//!   key with the kernel) and the engine evaluates them once, at the end of the input.
//!
//! The replay clock never runs backwards: merged captures whose times jump back are counted
//! with their own timestamps but do not rewind aging, and a jump forward ages once, not once
//! per skipped interval.
//!
//! A damaged capture stops being read at the damage; everything read before it is still
//! counted and reported, and the error is returned alongside the result.

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    path::PathBuf,
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use sensor_common::{counter, FlowKey, FlowStats, PayloadEvent, PAYLOAD_MAX};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    flow::{record::FlowRecord, settings::FlowConfig, table::FlowTable},
    source::{
        capture::{CaptureError, CaptureReader, Frame},
        datapath::{Datapath, DatapathError, LoadOptions},
        packet::parse_frame_with,
        Feedback, FlowUpdate, PacketEvent, PayloadCopy, Source, SourceEvent,
    },
};

/// Events per batch handed to the loop: large enough to amortise the channel, small enough
/// that the loop starts at once.
const BATCH_EVENTS: usize = 1024;
/// Batches in flight between the reader and the loop.
const BATCHES_IN_FLIGHT: usize = 16;

/// Largest frame handed to BPF_PROG_TEST_RUN; XDP multi-buffer test runs take up to the
/// linear page plus 17 fragment pages, and 64 KiB covers every GSO frame.
pub const MAX_TEST_RUN_FRAME: usize = 65_535;

/// Kernel payload copies buffered until the end of a kernel-engine replay, at most.
const MAX_BUFFERED_PAYLOADS: usize = 1_000_000;

/// DNS: TCP or UDP with port 53 on either side (the datapath's rule too).
fn is_dns(key: &FlowKey) -> bool {
    (key.proto == 6 || key.proto == 17) && (key.port_lo == 53 || key.port_hi == 53)
}

/// Ethernet header: XDP refuses shorter test frames, and no NIC delivers them.
const ETH_HLEN: usize = 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Kernel,
    User,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Kernel => "kernel",
            EngineKind::User => "user",
        }
    }
}

/// What a replay read and counted.
#[derive(Debug, Default)]
pub struct ReplayOutcome {
    /// Per 5-tuple totals over the whole input (`--flows`).
    pub flows: Vec<FlowRecord>,
    /// Frames read from all captures.
    pub frames: u64,
    /// Frames attributed to a flow.
    pub attributed: u64,
    /// Unattributed frames by reason ([`counter::NAMES`] indices below
    /// [`counter::UNATTRIBUTED_REASONS`]).
    pub unattributed: [u64; counter::UNATTRIBUTED_REASONS as usize],
    /// Kernel flows the agent's parser did not attribute to the same key (0 unless the two
    /// parsers disagree): such flows have no capture timestamps.
    pub unstamped_flows: u64,
    /// Flows created in the kernel but no longer in its map at the end (LRU eviction).
    pub evicted_flows: u64,
    /// Frames whose captured part was shorter than on the wire.
    pub cut_frames: u64,
    /// Frames whose timestamp was earlier than the replay clock (out of order).
    pub time_jumps_back: u64,
    /// Frames the kernel's test run refused for their size (GRO/TSO captures hold frames of
    /// tens of KB; BPF_PROG_TEST_RUN takes a page plus a bounded number of fragments):
    /// counted, not counted by the kernel engine, and the replay goes on (kernel engine).
    pub too_large_for_test_run: u64,
    /// Frames stamped more than [`OUTLIER_NS`] away from the replay clock that the next frame
    /// does not confirm (one frame dated 2106 in a 2018 capture): counted, replayed at the
    /// clock's time, and the clock is not moved.
    pub time_outliers: u64,
    /// Kernel payload copies not kept because too many were buffered (kernel engine).
    pub payloads_dropped: u64,
    /// Errors, one per capture that could not be read to its end.
    pub errors: Vec<CaptureError>,
}

/// How far from the replay clock a frame's time may be before it needs the next frame to
/// confirm it: a real gap (captures of different days, a quiet night) is followed by frames
/// near the new time; a corrupt or forged stamp stands alone.
pub const OUTLIER_NS: u64 = 24 * 3600 * 1_000_000_000;

/// The innermost cause's text: the kernel's answer, without the wrappers that repeat it.
fn root_cause(e: &DatapathError) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Frames up to this size always fit BPF_PROG_TEST_RUN (one page of linear data); a test run
/// that fails on a larger frame is put down to its size.
pub const TEST_RUN_LINEAR_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    // The cause is in the message (innermost text only), not chained: one line, said once.
    #[error("{} frame {frame}: the kernel test run failed: {}", path.display(), root_cause(error))]
    TestRun {
        path: PathBuf,
        /// 1-based number of the frame in its capture.
        frame: u64,
        error: DatapathError,
    },
    #[error("the capture reader stopped unexpectedly: {0}")]
    Reader(String),
}

#[derive(Clone, Copy)]
struct Times {
    first: u64,
    last: u64,
}

/// Which engine counts the frames, and how often (capture time) the engine is ticked.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub engine: EngineKind,
    pub load: LoadOptions,
    pub poll_interval_ns: u64,
    pub progress: bool,
}

struct Progress {
    enabled: bool,
    total: u64,
    done_before: u64,
    last: Instant,
}

impl Progress {
    fn show(&mut self, reader_offset: u64, frames: u64) {
        if !self.enabled || self.last.elapsed().as_millis() < 200 {
            return;
        }
        self.last = Instant::now();
        let done = self.done_before + reader_offset;
        let pct = (done * 100).checked_div(self.total).unwrap_or(100);
        let width = 30;
        let filled = (pct as usize * width / 100).min(width);
        // Never eprint!: it panics when the terminal goes away; a lost progress line is fine.
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {pct:3}% {frames} frames",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.enabled {
            let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(60));
        }
    }
}

/// Capture files as a source: read on a blocking thread, handed over in batches.
pub struct ReplaySource {
    batches: mpsc::Receiver<Vec<SourceEvent>>,
    reader: Option<JoinHandle<Result<ReplayOutcome, ReplayError>>>,
}

impl ReplaySource {
    /// Starts reading `paths` in order. Must be called inside the runtime.
    pub fn start(paths: Vec<PathBuf>, opts: ReplayOptions) -> Self {
        let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
        let reader = tokio::task::spawn_blocking(move || {
            let mut out = Batcher {
                tx,
                batch: Vec::with_capacity(BATCH_EVENTS),
                payloads: BytesMut::new(),
            };
            read_captures(&paths, &opts, &mut out)
        });
        ReplaySource {
            batches: rx,
            reader: Some(reader),
        }
    }

    /// What the reader counted, once the loop has read every batch.
    pub async fn finish(mut self) -> Result<ReplayOutcome, ReplayError> {
        // Whatever the loop did not read (it stopped early) is not needed any more.
        self.batches.close();
        match self.reader.take() {
            Some(reader) => reader
                .await
                .map_err(|e| ReplayError::Reader(e.to_string()))?,
            None => Ok(ReplayOutcome::default()),
        }
    }
}

impl Source for ReplaySource {
    type Error = ReplayError;

    async fn next_batch(&mut self) -> Result<Option<Vec<SourceEvent>>, ReplayError> {
        Ok(self.batches.recv().await)
    }

    /// A capture keeps no kernel state to act on: ended flows and the watch set only matter
    /// to the engine, which already applied them.
    fn feedback(&mut self, _fb: Feedback<'_>) -> Result<(), ReplayError> {
        Ok(())
    }
}

/// Collects events into batches for the loop.
struct Batcher {
    tx: mpsc::Sender<Vec<SourceEvent>>,
    batch: Vec<SourceEvent>,
    /// Payload copies are cut from one shared buffer: one allocation per
    /// [`PAYLOAD_ARENA`] bytes instead of one per packet.
    payloads: BytesMut,
}

/// Bytes of payload copies per shared allocation.
const PAYLOAD_ARENA: usize = 256 * 1024;

impl Batcher {
    /// A copy of `data` that the loop can keep (the frame's buffer is reused).
    fn copy(&mut self, data: &[u8]) -> Bytes {
        if self.payloads.capacity() < data.len() {
            self.payloads = BytesMut::with_capacity(PAYLOAD_ARENA.max(data.len()));
        }
        self.payloads.extend_from_slice(data);
        self.payloads.split().freeze()
    }

    /// Queues one event; false once the loop is gone (nothing more needs reading).
    fn push(&mut self, e: SourceEvent) -> bool {
        self.batch.push(e);
        if self.batch.len() >= BATCH_EVENTS {
            return self.send();
        }
        true
    }

    fn send(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_EVENTS));
        self.tx.blocking_send(batch).is_ok()
    }
}

/// Reads every capture in order, turning frames into events (user engine) or pushing them
/// through the kernel program (kernel engine), with ticks on the capture's clock.
fn read_captures(
    paths: &[PathBuf],
    opts: &ReplayOptions,
    events: &mut Batcher,
) -> Result<ReplayOutcome, ReplayError> {
    let mut out = ReplayOutcome::default();
    let mut kernel = match opts.engine {
        EngineKind::Kernel => Some(Datapath::load(&opts.load)?),
        EngineKind::User => None,
    };
    let user = opts.engine == EngineKind::User;
    let mut times: HashMap<FlowKey, Times> = HashMap::new();
    // Whole-input totals per 5-tuple for `--flows`, independent of the engine's aging. Their
    // roles come from the engine's table (which sees the payload evidence), so this one does
    // not decide any.
    let mut totals = FlowTable::without_roles(FlowConfig {
        max_flows: usize::MAX,
        max_conversations: usize::MAX,
        ..Default::default()
    });
    let mut user_unattributed = [0u64; counter::UNATTRIBUTED_REASONS as usize];
    let mut runts = 0u64;
    let mut kernel_payloads: Vec<(PayloadEvent, u64)> = Vec::new();
    let mut clock: Option<u64> = None;
    // The previous frame's own timestamp, before any outlier correction.
    let mut last_raw: Option<u64> = None;
    let mut next_tick = 0u64;
    let mut progress = Progress {
        enabled: opts.progress && std::io::stderr().is_terminal(),
        total: paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum(),
        done_before: 0,
        last: Instant::now(),
    };
    let mut loop_gone = false;

    'captures: for path in paths {
        let mut reader = match CaptureReader::open(path) {
            Ok(r) => r,
            Err(e) => {
                out.errors.push(e);
                continue;
            }
        };
        // One frame of lookahead, read only to confirm a frame far from the clock.
        let mut ahead = None;
        let mut frame_in_capture = 0u64;
        loop {
            let mut frame = match ahead.take().unwrap_or_else(|| reader.next_frame()) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    out.errors.push(e);
                    break;
                }
            };
            out.frames += 1;
            frame_in_capture += 1;
            progress.show(reader.offset(), out.frames);
            if (frame.data.len() as u64) < frame.wire_len as u64 {
                out.cut_frames += 1;
            }
            // A frame far from the clock moves it only when the frame before or after it is
            // near it too (a merged capture of another day is a run of such frames).
            let raw = frame.ts_ns;
            let near_previous = last_raw.is_some_and(|p: u64| p.abs_diff(raw) <= OUTLIER_NS);
            last_raw = Some(raw);
            if let (Some(now), false) = (clock, near_previous) {
                if frame.ts_ns.abs_diff(now) > OUTLIER_NS {
                    let peeked = reader.next_frame();
                    let confirmed = matches!(&peeked, Ok(Some(n)) if n.ts_ns.abs_diff(frame.ts_ns) <= OUTLIER_NS);
                    ahead = Some(peeked);
                    if !confirmed {
                        out.time_outliers += 1;
                        frame.ts_ns = now;
                    }
                }
            }
            // The replay clock: ticks happen at the first frame at or past each poll boundary.
            let ts = frame.ts_ns;
            match clock {
                Some(now) if ts < now => out.time_jumps_back += 1,
                _ => {
                    clock = Some(ts);
                    if user && ts >= next_tick {
                        if next_tick != 0 && !events.push(SourceEvent::Tick(ts)) {
                            loop_gone = true;
                            break 'captures;
                        }
                        next_tick = ts.saturating_add(opts.poll_interval_ns);
                    }
                }
            }
            let parsed = parse_frame_with(&frame.data, opts.load.settings.decap);
            match &parsed {
                Ok(p) => {
                    let t = times.entry(p.key).or_insert(Times {
                        first: ts,
                        last: ts,
                    });
                    t.first = t.first.min(ts);
                    t.last = t.last.max(ts);
                    if user {
                        let wire_len = frame.wire_len as u64;
                        totals.add_packet(&p.key, p.dir, wire_len, p.tcp_flags, ts);
                        let tunnel = (p.tunnel.kind != 0).then_some(p.tunnel);
                        if let Some(t) = tunnel {
                            if totals.flow_packets(&p.key) == 1 {
                                totals.set_tunnel(&p.key, t);
                            }
                        }
                        // The engine looks at no more than the datapath would copy.
                        let payload = frame
                            .data
                            .get(p.payload_off..)
                            .filter(|d| p.payload_off > 0 && !d.is_empty())
                            .map_or_else(Bytes::new, |d| {
                                events.copy(&d[..d.len().min(PAYLOAD_MAX)])
                            });
                        let event = PacketEvent {
                            key: p.key,
                            dir: p.dir,
                            wire_len,
                            tcp_flags: p.tcp_flags,
                            ts_ns: ts,
                            payload,
                            dns: is_dns(&p.key),
                            // Timed by its length on the wire, as the kernel trace does, even
                            // when the capture cut the bytes.
                            message_size: p.payload_len(frame.wire_len as usize) as u64,
                            tunnel,
                        };
                        if !events.push(SourceEvent::Packet(event)) {
                            loop_gone = true;
                            break 'captures;
                        }
                    }
                }
                Err(reason) => {
                    if user {
                        user_unattributed[*reason as usize] += 1;
                    }
                }
            }
            if let Some(dp) = kernel.as_mut() {
                if frame.data.len() < ETH_HLEN {
                    runts += 1;
                    continue;
                }
                // A frame cut by the capture's snap length is restored to its wire length when
                // every header the datapath reads was captured, so byte counts are the wire's.
                if parsed.is_ok() {
                    pad_to_wire(&mut frame);
                }
                if let Err(e) = dp.test_run_xdp(&frame.data) {
                    if frame.data.len() > TEST_RUN_LINEAR_BYTES {
                        out.too_large_for_test_run += 1;
                        continue;
                    }
                    return Err(ReplayError::TestRun {
                        path: path.clone(),
                        frame: frame_in_capture,
                        error: e,
                    });
                }
                // The ring holds this frame's copy, if any: stamp it with the capture time.
                dp.drain_payloads(|e| {
                    if kernel_payloads.len() < MAX_BUFFERED_PAYLOADS {
                        kernel_payloads.push((*e, ts));
                    } else {
                        out.payloads_dropped += 1;
                    }
                });
            }
        }
        progress.done_before += reader.offset();
    }
    progress.finish();
    if loop_gone {
        return Ok(out);
    }

    let end = clock.unwrap_or(0);
    match kernel.as_mut() {
        Some(dp) => {
            dp.flush_log();
            let counters = dp.counters()?;
            let kflows = dp.flows()?;
            out.unattributed
                .copy_from_slice(&counters[..counter::UNATTRIBUTED_REASONS as usize]);
            out.unattributed[counter::TRUNCATED as usize] += runts;
            out.evicted_flows =
                counters[counter::FLOWS_CREATED as usize].saturating_sub(kflows.len() as u64);
            let mut updates = Vec::with_capacity(kflows.len());
            for (key, stats) in kflows {
                out.attributed += stats.packets[0] + stats.packets[1];
                let tunnel = if stats.tunnel != 0 {
                    dp.tunnel(&key)?
                } else {
                    None
                };
                let t = times.get(&key);
                match t {
                    Some(t) => updates.push(FlowUpdate {
                        key,
                        stats,
                        first_ns: t.first,
                        last_ns: t.last,
                        tunnel: tunnel.map(Box::new),
                    }),
                    None => out.unstamped_flows += 1,
                }
                let stats = FlowStats {
                    first_seen: 0,
                    last_seen: 0,
                    ..stats
                };
                out.flows.push(FlowRecord {
                    key,
                    stats,
                    start_ns: t.map(|t| t.first),
                    end_ns: t.map(|t| t.last),
                    tunnel,
                    host: None,
                });
            }
            let mut alive = events.push(SourceEvent::Flows(updates));
            for (e, ts) in &kernel_payloads {
                alive = alive && events.push(SourceEvent::Payload(PayloadCopy::from_ring(e, *ts)));
            }
        }
        None => {
            out.unattributed = user_unattributed;
            for mut record in totals.flows() {
                out.attributed += record.stats.packets[0] + record.stats.packets[1];
                record.stats.first_seen = 0;
                record.stats.last_seen = 0;
                out.flows.push(record);
            }
        }
    }
    if clock.is_some() {
        events.push(SourceEvent::End(end));
    }
    events.send();
    out.flows.sort_by_key(|f| (f.start_ns, f.key));
    Ok(out)
}

fn pad_to_wire(frame: &mut Frame) {
    let wire = (frame.wire_len as usize).min(MAX_TEST_RUN_FRAME);
    if frame.data.len() < wire {
        frame.data.resize(wire, 0);
    }
}
