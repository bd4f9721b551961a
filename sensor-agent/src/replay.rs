//! Replaying capture files through a flow engine with the captures' own timestamps.
//!
//! Two engines produce the same flow table: `kernel` pushes every frame through the loaded
//! XDP program with BPF_PROG_TEST_RUN (so anyone can check the datapath against any capture),
//! `user` runs the agent's own parser. The kernel cannot be given capture time, so kernel
//! flows are stamped with the first and last capture timestamp of their key as computed by the
//! agent's parser, which shares the canonical key with the kernel.
//!
//! A damaged capture stops being read at the damage; everything read before it is still
//! counted and reported, and the error is returned alongside the result.

use std::{collections::HashMap, path::PathBuf};

use sensor_common::{
    counter, FlowKey, FlowStats, CLIENT_BY_FIRST_PACKET, CLIENT_BY_SYN, CLIENT_HI, CLIENT_LO,
};

use crate::{
    datapath::{Datapath, DatapathError, LoadOptions},
    flow::record::FlowRecord,
    source::{
        capture::{CaptureError, CaptureReader, Frame},
        packet::parse_frame,
    },
};

/// Largest frame handed to BPF_PROG_TEST_RUN; XDP multi-buffer test runs take up to the
/// linear page plus 17 fragment pages, and 64 KiB covers every GSO frame.
pub const MAX_TEST_RUN_FRAME: usize = 65_535;

/// Ethernet header: XDP refuses shorter test frames, and no NIC delivers them.
const ETH_HLEN: usize = 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Kernel,
    User,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Kernel => "kernel",
            Engine::User => "user",
        }
    }
}

/// What a replay read and counted.
#[derive(Debug, Default)]
pub struct ReplayOutcome {
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
    /// Errors, one per capture that could not be read to its end.
    pub errors: Vec<CaptureError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

#[derive(Clone, Copy)]
struct Times {
    first: u64,
    last: u64,
}

/// Reads every capture in order into one flow table.
pub fn replay(
    paths: &[PathBuf],
    engine: Engine,
    load: &LoadOptions,
) -> Result<ReplayOutcome, ReplayError> {
    let mut out = ReplayOutcome::default();
    let mut kernel = match engine {
        Engine::Kernel => Some(Datapath::load(load)?),
        Engine::User => None,
    };
    let mut times: HashMap<FlowKey, Times> = HashMap::new();
    let mut user_flows: HashMap<FlowKey, FlowStats> = HashMap::new();
    let mut user_unattributed = [0u64; counter::UNATTRIBUTED_REASONS as usize];
    let mut runts = 0u64;

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
            if (frame.data.len() as u64) < frame.wire_len as u64 {
                out.cut_frames += 1;
            }
            let parsed = parse_frame(&frame.data);
            match &parsed {
                Ok(p) => {
                    let t = times.entry(p.key).or_insert(Times {
                        first: frame.ts_ns,
                        last: frame.ts_ns,
                    });
                    t.first = t.first.min(frame.ts_ns);
                    t.last = t.last.max(frame.ts_ns);
                    if engine == Engine::User {
                        add_to_flow(
                            user_flows.entry(p.key).or_default(),
                            p.dir,
                            frame.wire_len as u64,
                            p.tcp_flags,
                            frame.ts_ns,
                        );
                    }
                }
                Err(reason) => {
                    if engine == Engine::User {
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
            }
        }
    }

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
                if t.is_none() {
                    out.unstamped_flows += 1;
                }
                out.flows.push(FlowRecord {
                    key,
                    stats,
                    start_ns: t.map(|t| t.first),
                    end_ns: t.map(|t| t.last),
                });
            }
        }
        None => {
            out.unattributed = user_unattributed;
            for (key, mut stats) in user_flows {
                out.attributed += stats.packets[0] + stats.packets[1];
                let t = times.get(&key);
                // The user engine keeps capture time in the same fields the kernel fills with
                // jiffies; records carry them as start/end instead.
                stats.first_seen = 0;
                stats.last_seen = 0;
                out.flows.push(FlowRecord {
                    key,
                    stats,
                    start_ns: t.map(|t| t.first),
                    end_ns: t.map(|t| t.last),
                });
            }
        }
    }
    out.flows.sort_by_key(|f| (f.start_ns, f.key));
    Ok(out)
}

fn pad_to_wire(frame: &mut Frame) {
    let wire = (frame.wire_len as usize).min(MAX_TEST_RUN_FRAME);
    if frame.data.len() < wire {
        frame.data.resize(wire, 0);
    }
}

/// The user engine's equivalent of the datapath's per-packet update.
fn add_to_flow(stats: &mut FlowStats, dir: usize, len: u64, tcp_flags: u8, ts: u64) {
    let syn_only = tcp_flags & 0x12 == 0x02
        && (stats.packets[0] + stats.packets[1] == 0 || stats.client_source != CLIENT_BY_SYN);
    let client = if dir == 0 { CLIENT_LO } else { CLIENT_HI };
    if stats.packets[0] + stats.packets[1] == 0 {
        stats.first_seen = ts;
        stats.client = client;
        stats.client_source = CLIENT_BY_FIRST_PACKET;
    }
    if syn_only {
        stats.client = client;
        stats.client_source = CLIENT_BY_SYN;
    }
    stats.packets[dir] += 1;
    stats.bytes[dir] += len;
    stats.last_seen = ts;
    stats.tcp_flags |= (tcp_flags as u64) << (dir * 8);
}
