//! Replaying capture files through a flow engine with the captures' own timestamps.
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

use sensor_common::{counter, FlowKey, FlowStats, PayloadEvent};

use crate::{
    alarm::AlarmEvent,
    engine::Engine,
    flow::{record::FlowRecord, table::FlowTable},
    source::datapath::{Datapath, DatapathError, LoadOptions},
    source::{
        capture::{CaptureError, CaptureReader, Frame},
        packet::parse_frame,
    },
};

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
    /// Frames whose timestamp was earlier than the replay clock (merged captures).
    pub time_jumps_back: u64,
    /// Kernel payload copies not kept because too many were buffered (kernel engine).
    pub payloads_dropped: u64,
    /// Errors, one per capture that could not be read to its end.
    pub errors: Vec<CaptureError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("cannot write an alarm: {0}")]
    Sink(#[source] std::io::Error),
}

#[derive(Clone, Copy)]
struct Times {
    first: u64,
    last: u64,
}

/// How often (capture time) the engine is ticked, and where alarm events go.
pub struct ReplayOptions<'a> {
    pub engine: EngineKind,
    pub load: LoadOptions,
    pub poll_interval_ns: u64,
    pub progress: bool,
    pub on_alarm: &'a mut dyn FnMut(&AlarmEvent) -> std::io::Result<()>,
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
        eprint!(
            "\r[{}{}] {pct:3}% {frames} frames",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&self) {
        if self.enabled {
            eprint!("\r{}\r", " ".repeat(60));
        }
    }
}

/// Reads every capture in order into one flow table and one detection engine.
pub fn replay(
    paths: &[PathBuf],
    engine: &mut Engine,
    opts: &mut ReplayOptions,
) -> Result<ReplayOutcome, ReplayError> {
    let mut out = ReplayOutcome::default();
    let mut kernel = match opts.engine {
        EngineKind::Kernel => Some(Datapath::load(&opts.load)?),
        EngineKind::User => None,
    };
    let mut times: HashMap<FlowKey, Times> = HashMap::new();
    // Whole-input totals per 5-tuple for `--flows`, independent of the engine's aging.
    let mut totals = FlowTable::new(crate::flow::settings::FlowConfig {
        max_flows: usize::MAX,
        max_conversations: usize::MAX,
        ..Default::default()
    });
    let mut user_unattributed = [0u64; counter::UNATTRIBUTED_REASONS as usize];
    let mut runts = 0u64;
    let mut kernel_payloads: Vec<(PayloadEvent, u64)> = Vec::new();
    let mut clock: Option<u64> = None;
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

    for path in paths {
        let mut reader = match CaptureReader::open(path) {
            Ok(r) => r,
            Err(e) => {
                out.errors.push(e);
                continue;
            }
        };
        loop {
            let mut frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    out.errors.push(e);
                    break;
                }
            };
            out.frames += 1;
            progress.show(reader.offset(), out.frames);
            if (frame.data.len() as u64) < frame.wire_len as u64 {
                out.cut_frames += 1;
            }
            // The replay clock: ticks happen at the first frame at or past each poll boundary.
            let ts = frame.ts_ns;
            match clock {
                Some(now) if ts < now => out.time_jumps_back += 1,
                _ => {
                    clock = Some(ts);
                    if opts.engine == EngineKind::User && ts >= next_tick {
                        if next_tick != 0 {
                            emit_tick(engine, ts, opts)?;
                        }
                        next_tick = ts.saturating_add(opts.poll_interval_ns);
                    }
                }
            }
            let parsed = parse_frame(&frame.data);
            match &parsed {
                Ok(p) => {
                    let t = times.entry(p.key).or_insert(Times {
                        first: ts,
                        last: ts,
                    });
                    t.first = t.first.min(ts);
                    t.last = t.last.max(ts);
                    if opts.engine == EngineKind::User {
                        totals.add_packet(&p.key, p.dir, frame.wire_len as u64, p.tcp_flags, ts);
                        engine.add_packet(&p.key, p.dir, frame.wire_len as u64, p.tcp_flags, ts);
                        if let Some(payload) = frame
                            .data
                            .get(p.payload_off..)
                            .filter(|d| p.payload_off > 0 && !d.is_empty())
                        {
                            engine.payload(&p.key, p.dir, is_dns(&p.key), payload, ts);
                        }
                        // Timed by its length on the wire, as the kernel trace does, even
                        // when the capture cut the bytes.
                        let size = p.payload_len(frame.wire_len as usize) as u64;
                        if size > 0 {
                            engine.message(&p.key, p.dir, size, ts);
                        }
                    }
                }
                Err(reason) => {
                    if opts.engine == EngineKind::User {
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
                dp.test_run_xdp(&frame.data)?;
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
            for (key, stats) in kflows {
                out.attributed += stats.packets[0] + stats.packets[1];
                let t = times.get(&key);
                match t {
                    Some(t) => engine.update_flow(&key, &stats, t.first, t.last),
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
                });
            }
            for (e, ts) in &kernel_payloads {
                engine.payload_event(e, *ts);
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
        emit_tick(engine, end, opts)?;
        for e in &engine.finish(end) {
            (opts.on_alarm)(e).map_err(ReplayError::Sink)?;
        }
    }
    out.flows.sort_by_key(|f| (f.start_ns, f.key));
    Ok(out)
}

fn emit_tick(engine: &mut Engine, now: u64, opts: &mut ReplayOptions) -> Result<(), ReplayError> {
    let out = engine.tick(now);
    for e in &out.alarms {
        (opts.on_alarm)(e).map_err(ReplayError::Sink)?;
    }
    Ok(())
}

fn pad_to_wire(frame: &mut Frame) {
    let wire = (frame.wire_len as usize).min(MAX_TEST_RUN_FRAME);
    if frame.data.len() < wire {
        frame.data.resize(wire, 0);
    }
}
