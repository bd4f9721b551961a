//! Stitching aggregate records back into flows, on the records' own clock.
//!
//! Exporters cut a flow into records: AWS and GCP one direction per aggregation interval
//! (1 to 10 minutes), Azure one update per connection every few minutes, NetFlow by active
//! timeout. The [`Stitcher`] joins the records of one 5-tuple (both directions: the canonical
//! [`FlowKey`]) into one flow while the gap between them stays within `gap_ns`, and hands the
//! engine what the datapath would have counted: the flow's cumulative packets, bytes and TCP
//! flags per direction, its first record's start and last record's end
//! ([`crate::source::FlowUpdate`], as a kernel snapshot is). The engine then ages, chains and
//! judges these flows exactly as it does packets.
//!
//! The client comes from the evidence a record carries, strongest kept: a SYN without ACK in
//! a record's TCP flags names its sender (a SYN-ACK names its receiver), `syn`; an exporter
//! that tracked the connection names its initiator, `exporter`; else the sender of the first
//! record, which the engine's flow table corrects with its port and fan-in rules
//! (`flow::roles`). Records of a flow from a second observation point (both VMs of a flow
//! report it) are counted once, from the first point that reported the flow.
//!
//! Ticks: the stitcher says when the engine must evaluate, every `tick_ns` of record time,
//! before the first item at or past each boundary, so alarms carry the records' time. The
//! flows it keeps are those the engine keeps: the event loop's feedback ([`Stitcher::ended`])
//! removes the flows the engine ended, as the live source deletes kernel entries, so the
//! counters handed over stay cumulative for the engine's own flow.
//!
//! It is fed in time order (a file source sorts; a collector receives in order) and never
//! reads a clock.

use std::collections::HashMap;

use ahash::RandomState;
use sensor_common::{
    FlowKey, FlowStats, CLIENT_BY_FIRST_PACKET, CLIENT_BY_SYN, CLIENT_HI, CLIENT_LO,
};

use crate::{
    flow::roles::{self, CLIENT_BY_EXPORTER},
    source::{
        records::{Aggregate, Initiator},
        FlowUpdate,
    },
};

const TCP: u8 = 6;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// How records are joined and how often the engine evaluates.
#[derive(Clone, Copy, Debug)]
pub struct StitchConfig {
    /// Records of a 5-tuple further apart than this start a new flow.
    pub gap_ns: u64,
    /// Record time between two evaluations.
    pub tick_ns: u64,
}

/// What the stitcher counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StitchCounters {
    pub records: u64,
    /// Records of a flow already reported by another observation point (not counted twice).
    pub duplicates: u64,
    /// Flows stitched (a 5-tuple's records after a gap longer than the tolerance count anew).
    pub flows: u64,
    /// Records that arrived after the gap tolerance and started their 5-tuple's flow anew.
    pub restarted: u64,
    /// Items earlier than the stitcher's clock (out-of-order input): used, the clock kept.
    pub time_jumps_back: u64,
}

struct Stitched {
    observer: u64,
    stats: FlowStats,
    first_ns: u64,
    last_ns: u64,
}

pub struct Stitcher {
    cfg: StitchConfig,
    flows: HashMap<FlowKey, Stitched, RandomState>,
    clock: Option<u64>,
    next_tick: u64,
    /// Latest record end or item time seen: the end of the input.
    latest: u64,
    pub counters: StitchCounters,
}

fn sender(dir: usize) -> u8 {
    if dir == 0 {
        CLIENT_LO
    } else {
        CLIENT_HI
    }
}

impl Stitcher {
    pub fn new(cfg: StitchConfig) -> Self {
        Stitcher {
            cfg,
            flows: HashMap::with_hasher(RandomState::new()),
            clock: None,
            next_tick: 0,
            latest: 0,
            counters: StitchCounters::default(),
        }
    }

    /// Flows held (the engine's, mirrored).
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Advances the clock to an item at `t`; returns the time of a tick the engine must
    /// evaluate before that item, when a tick boundary was crossed (none before the first).
    pub fn advance(&mut self, t: u64) -> Option<u64> {
        self.latest = self.latest.max(t);
        match self.clock {
            Some(now) if t < now => {
                self.counters.time_jumps_back += 1;
                None
            }
            prev => {
                self.clock = Some(t);
                if t < self.next_tick {
                    return None;
                }
                self.next_tick = t.saturating_add(self.cfg.tick_ns);
                prev.map(|_| t)
            }
        }
    }

    /// The end of the input so far: the latest record end or item time.
    pub fn latest(&self) -> u64 {
        self.latest
    }

    /// Joins one record into its flow; the flow's cumulative counters for the engine, or
    /// `None` for a record another observation point already reports.
    pub fn push(&mut self, a: &Aggregate) -> Option<FlowUpdate> {
        self.counters.records += 1;
        self.latest = self.latest.max(a.end_ns);
        let (key, dir) = FlowKey::canonical(&a.src, a.src_port, &a.dst, a.dst_port, a.proto);
        let gap = self.cfg.gap_ns;
        let fresh = || Stitched {
            observer: a.observer,
            stats: FlowStats {
                client: sender(dir),
                client_source: CLIENT_BY_FIRST_PACKET,
                ..FlowStats::default()
            },
            first_ns: a.start_ns,
            last_ns: a.end_ns,
        };
        let f = match self.flows.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let f = e.into_mut();
                if f.observer != a.observer {
                    self.counters.duplicates += 1;
                    return None;
                }
                if a.start_ns > f.last_ns.saturating_add(gap) {
                    self.counters.restarted += 1;
                    self.counters.flows += 1;
                    *f = fresh();
                }
                f
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                self.counters.flows += 1;
                e.insert(fresh())
            }
        };
        let rev = 1 - dir;
        let s = &mut f.stats;
        s.packets[dir] = s.packets[dir].saturating_add(a.packets);
        s.bytes[dir] = s.bytes[dir].saturating_add(a.bytes);
        s.packets[rev] = s.packets[rev].saturating_add(a.rev_packets);
        s.bytes[rev] = s.bytes[rev].saturating_add(a.rev_bytes);
        s.tcp_flags |=
            u64::from(a.tcp_flags) << (dir * 8) | u64::from(a.rev_tcp_flags) << (rev * 8);
        let mut evidence = None;
        if a.proto == TCP {
            // A SYN without ACK names its sender; a SYN-ACK its receiver.
            for (flags, from) in [(a.tcp_flags, dir), (a.rev_tcp_flags, rev)] {
                match flags & (SYN | ACK) {
                    SYN => evidence = Some((sender(from), CLIENT_BY_SYN)),
                    x if x == SYN | ACK => evidence = Some((sender(1 - from), CLIENT_BY_SYN)),
                    _ => {}
                }
            }
        }
        if evidence.is_none() && a.initiator == Initiator::Src {
            evidence = Some((sender(dir), CLIENT_BY_EXPORTER));
        }
        if let Some((client, source)) = evidence {
            if roles::strength(source) > roles::strength(s.client_source) {
                s.client = client;
                s.client_source = source;
            }
        }
        f.first_ns = f.first_ns.min(a.start_ns);
        f.last_ns = f.last_ns.max(a.end_ns);
        Some(FlowUpdate {
            key,
            stats: f.stats,
            first_ns: f.first_ns,
            last_ns: f.last_ns,
            tunnel: None,
        })
    }

    /// Forgets flows the engine ended (its feedback): their next records start new flows.
    pub fn ended(&mut self, keys: &[FlowKey]) {
        for k in keys {
            self.flows.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::ipv4_mapped;

    const S: u64 = 1_000_000_000;

    fn rec(from_client: bool, start: u64, packets: u64, flags: u8) -> Aggregate {
        let (c, s) = (ipv4_mapped([10, 0, 0, 5]), ipv4_mapped([203, 0, 113, 7]));
        let (src, dst, sp, dp) = if from_client {
            (c, s, 50000, 4000)
        } else {
            (s, c, 4000, 50000)
        };
        Aggregate {
            src,
            dst,
            src_port: sp,
            dst_port: dp,
            proto: TCP,
            packets,
            bytes: packets * 100,
            start_ns: start * S,
            end_ns: (start + 50) * S,
            tcp_flags: flags,
            observer: 1,
            ..Aggregate::default()
        }
    }

    fn stitcher() -> Stitcher {
        Stitcher::new(StitchConfig {
            gap_ns: 120 * S,
            tick_ns: 60 * S,
        })
    }

    #[test]
    fn records_join_both_directions_and_a_syn_ack_names_the_client() {
        let mut st = stitcher();
        // The server's record first: without flags it would be the client.
        let u = st.push(&rec(false, 0, 2, 0)).expect("update");
        let client_is_server = u.stats.client;
        let u = st.push(&rec(false, 60, 3, SYN | ACK)).expect("update");
        assert_ne!(
            u.stats.client, client_is_server,
            "SYN-ACK names its receiver"
        );
        assert_eq!(u.stats.client_source, CLIENT_BY_SYN);
        let u = st.push(&rec(true, 60, 4, SYN)).expect("update");
        let total: u64 = u.stats.packets.iter().sum();
        assert_eq!(total, 9);
        assert_eq!((u.first_ns, u.last_ns), (0, 110 * S));
        assert_eq!(
            u.stats.tcp_flags.count_ones(),
            3,
            "flags merged per direction"
        );
        // Another interface reporting the same flow is not counted again.
        let mut dup = rec(true, 60, 4, 0);
        dup.observer = 2;
        assert!(st.push(&dup).is_none());
        // After a gap beyond the tolerance the 5-tuple starts a new flow.
        let u = st.push(&rec(true, 400, 1, 0)).expect("update");
        assert_eq!(u.first_ns, 400 * S);
        assert_eq!(st.counters.restarted, 1);
        assert_eq!(st.counters.duplicates, 1);
        // The engine ended it: the next record starts afresh too.
        st.ended(&[u.key]);
        assert!(st.is_empty());
    }

    #[test]
    fn ticks_fall_on_record_time_boundaries() {
        let mut st = stitcher();
        assert_eq!(st.advance(10 * S), None, "no tick before the first item");
        assert_eq!(st.advance(30 * S), None);
        assert_eq!(st.advance(70 * S), Some(70 * S));
        assert_eq!(st.advance(50 * S), None);
        assert_eq!(st.counters.time_jumps_back, 1);
        assert_eq!(st.advance(500 * S), Some(500 * S), "a jump ticks once");
    }
}
