//! The agent's flow table: 5-tuple flows, and conversations that chain a client's reconnects
//! to the same server port so the clock keeps running across them.
//!
//! Sources feed it either packet by packet (capture replay) or with cumulative snapshots of
//! kernel counters (live); it ages flows with TCP-aware timeouts, tells the source which flows
//! ended (so the kernel map entry can be deleted), and keeps conversations for a gap
//! tolerance after their last flow ended. Memory is bounded: beyond the configured maxima new
//! flows are dropped and counted, never silently.
//!
//! It never decides whether anything is suspicious: detectors read conversations from it.

use std::collections::HashMap;

use sensor_common::{Addr, FlowKey, FlowStats, CLIENT_BY_SYN, CLIENT_HI, CLIENT_LO};

use crate::{config::FlowConfig, flow::record::FlowRecord};

const TCP: u8 = 6;
const UDP: u8 = 17;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// A logical client-server conversation: (client, server, server port, transport).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConvKey {
    pub client: Addr,
    pub server: Addr,
    pub server_port: u16,
    pub proto: u8,
}

/// One conversation's running totals, in client/server orientation.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub key: ConvKey,
    /// First packet of the first flow.
    pub start_ns: u64,
    /// Last packet of any flow.
    pub last_ns: u64,
    /// Packets and bytes sent by the client, and by the server.
    pub client_packets: u64,
    pub client_bytes: u64,
    pub server_packets: u64,
    pub server_bytes: u64,
    /// Flows of this conversation now in the table.
    pub open_flows: u32,
    /// Flows this conversation has had (reconnects + 1).
    pub flows_seen: u64,
    /// When the last flow ended; the conversation ends `conversation_gap` later.
    pub idle_since_ns: Option<u64>,
    /// The most recent flow (its client port, community id).
    pub last_flow: FlowKey,
    pub client_port: u16,
}

impl Conversation {
    pub fn duration_ns(&self) -> u64 {
        self.last_ns.saturating_sub(self.start_ns)
    }

    pub fn total_bytes(&self) -> u64 {
        self.client_bytes + self.server_bytes
    }
}

#[derive(Clone, Debug)]
struct Flow {
    /// Cumulative counters as last applied (kernel snapshot or packet sum).
    stats: FlowStats,
    first_ns: u64,
    last_ns: u64,
    conv: ConvKey,
}

/// What the table counted about itself.
#[derive(Clone, Debug, Default)]
pub struct TableCounters {
    pub flows_created: u64,
    pub flows_ended: u64,
    pub conversations_created: u64,
    pub conversations_ended: u64,
    /// New flows refused because the table was full.
    pub flows_dropped: u64,
    /// New flows refused because the conversation table was full.
    pub conversations_dropped: u64,
    /// Kernel counters that went backwards (the kernel entry was evicted and re-created).
    pub counter_resets: u64,
}

/// What a tick ended.
#[derive(Debug, Default)]
pub struct Ended {
    /// Flows removed from the table, with their final counters; the source deletes them from
    /// its own store.
    pub flows: Vec<FlowRecord>,
    /// Conversations removed after their gap tolerance ran out.
    pub conversations: Vec<Conversation>,
}

pub struct FlowTable {
    cfg: FlowConfig,
    flows: HashMap<FlowKey, Flow>,
    convs: HashMap<ConvKey, Conversation>,
    pub counters: TableCounters,
}

fn conv_key(key: &FlowKey, stats: &FlowStats) -> ConvKey {
    if stats.client == CLIENT_LO {
        ConvKey {
            client: key.addr_lo,
            server: key.addr_hi,
            server_port: key.port_hi,
            proto: key.proto,
        }
    } else {
        ConvKey {
            client: key.addr_hi,
            server: key.addr_lo,
            server_port: key.port_lo,
            proto: key.proto,
        }
    }
}

/// (client packets, client bytes, server packets, server bytes) of cumulative counters.
fn oriented(stats: &FlowStats) -> [u64; 4] {
    let (c, s) = if stats.client == CLIENT_LO {
        (0, 1)
    } else {
        (1, 0)
    };
    [
        stats.packets[c],
        stats.bytes[c],
        stats.packets[s],
        stats.bytes[s],
    ]
}

impl FlowTable {
    pub fn new(cfg: FlowConfig) -> Self {
        FlowTable {
            cfg,
            flows: HashMap::new(),
            convs: HashMap::new(),
            counters: TableCounters::default(),
        }
    }

    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    pub fn conversation_count(&self) -> usize {
        self.convs.len()
    }

    pub fn conversations(&self) -> impl Iterator<Item = &Conversation> {
        self.convs.values()
    }

    pub fn conversation(&self, key: &ConvKey) -> Option<&Conversation> {
        self.convs.get(key)
    }

    /// Flows with their cumulative counters and times (for `--flows` output).
    pub fn flows(&self) -> impl Iterator<Item = (&FlowKey, &FlowStats, u64, u64)> {
        self.flows
            .iter()
            .map(|(k, f)| (k, &f.stats, f.first_ns, f.last_ns))
    }

    /// Adds one packet (replay).
    pub fn add_packet(&mut self, key: &FlowKey, dir: usize, len: u64, tcp_flags: u8, ts: u64) {
        let dir = dir & 1;
        let mut stats = match self.flows.get(key) {
            Some(f) => f.stats,
            None => {
                let mut s = FlowStats {
                    client: if dir == 0 { CLIENT_LO } else { CLIENT_HI },
                    ..FlowStats::default()
                };
                s.first_seen = ts;
                s
            }
        };
        if key.proto == TCP
            && tcp_flags & (SYN | ACK) == SYN
            && stats.client_source != CLIENT_BY_SYN
        {
            stats.client = if dir == 0 { CLIENT_LO } else { CLIENT_HI };
            stats.client_source = CLIENT_BY_SYN;
        }
        stats.packets[dir] += 1;
        stats.bytes[dir] += len;
        stats.tcp_flags |= (tcp_flags as u64) << (dir * 8);
        let first = self.flows.get(key).map_or(ts, |f| f.first_ns.min(ts));
        self.update(key, &stats, first, ts);
    }

    /// Applies cumulative counters for a flow (a kernel snapshot, or a packet sum).
    pub fn update(&mut self, key: &FlowKey, stats: &FlowStats, first_ns: u64, last_ns: u64) {
        let new_conv = conv_key(key, stats);
        let (prev, old_conv) = match self.flows.get(key) {
            Some(f) => (f.stats, Some(f.conv)),
            None => {
                if self.flows.len() >= self.cfg.max_flows {
                    self.counters.flows_dropped += 1;
                    return;
                }
                (FlowStats::default(), None)
            }
        };
        if !self.convs.contains_key(&new_conv) && self.convs.len() >= self.cfg.max_conversations {
            self.counters.conversations_dropped += 1;
            if old_conv.is_none() {
                return;
            }
        }
        let mut delta = {
            let (now, was) = (oriented(stats), oriented(&prev));
            let mut d = [0u64; 4];
            let mut reset = false;
            for i in 0..4 {
                if now[i] < was[i] {
                    reset = true;
                }
                d[i] = now[i].wrapping_sub(was[i]);
            }
            if reset && stats.client == prev.client {
                // The kernel entry was evicted and re-created: its counters restarted.
                self.counters.counter_resets += 1;
                d = now;
            }
            d
        };
        // The client can be learnt late (a SYN after a first packet from the server): move
        // what this flow already contributed to the right conversation.
        if let Some(old) = old_conv.filter(|c| *c != new_conv) {
            let was = oriented(&prev);
            if let Some(c) = self.convs.get_mut(&old) {
                c.client_packets = c.client_packets.saturating_sub(was[0]);
                c.client_bytes = c.client_bytes.saturating_sub(was[1]);
                c.server_packets = c.server_packets.saturating_sub(was[2]);
                c.server_bytes = c.server_bytes.saturating_sub(was[3]);
                c.open_flows = c.open_flows.saturating_sub(1);
                if c.open_flows == 0 {
                    c.idle_since_ns = Some(c.last_ns);
                }
            }
            delta = oriented(stats);
        }
        let gap = self.cfg.conversation_gap.as_nanos();
        let conv = match self.convs.get_mut(&new_conv) {
            Some(c) => {
                // A conversation idle for longer than the gap tolerance starts afresh (it will
                // be ended at the next tick; a new flow must not inherit its clock).
                if c.idle_since_ns
                    .is_some_and(|idle| first_ns > idle.saturating_add(gap))
                    && c.open_flows == 0
                {
                    *c = Self::new_conversation(new_conv, key, first_ns);
                    self.counters.conversations_created += 1;
                }
                c
            }
            None => {
                self.counters.conversations_created += 1;
                self.convs
                    .entry(new_conv)
                    .or_insert_with(|| Self::new_conversation(new_conv, key, first_ns))
            }
        };
        if old_conv != Some(new_conv) {
            conv.open_flows += 1;
            conv.flows_seen += 1;
            conv.idle_since_ns = None;
        }
        conv.client_packets += delta[0];
        conv.client_bytes += delta[1];
        conv.server_packets += delta[2];
        conv.server_bytes += delta[3];
        conv.start_ns = conv.start_ns.min(first_ns);
        conv.last_ns = conv.last_ns.max(last_ns);
        conv.last_flow = *key;
        conv.client_port = if stats.client == CLIENT_LO {
            key.port_lo
        } else {
            key.port_hi
        };
        if old_conv.is_none() {
            self.counters.flows_created += 1;
        }
        let flow = self.flows.entry(*key).or_insert(Flow {
            stats: *stats,
            first_ns,
            last_ns,
            conv: new_conv,
        });
        flow.stats = *stats;
        flow.first_ns = flow.first_ns.min(first_ns);
        flow.last_ns = flow.last_ns.max(last_ns);
        flow.conv = new_conv;
    }

    fn new_conversation(key: ConvKey, flow: &FlowKey, start: u64) -> Conversation {
        Conversation {
            key,
            start_ns: start,
            last_ns: start,
            client_packets: 0,
            client_bytes: 0,
            server_packets: 0,
            server_bytes: 0,
            open_flows: 0,
            flows_seen: 0,
            idle_since_ns: None,
            last_flow: *flow,
            client_port: 0,
        }
    }

    /// The idle timeout that applies to a flow now.
    fn timeout_ns(&self, key: &FlowKey, stats: &FlowStats) -> u64 {
        match key.proto {
            TCP => {
                let (lo, hi) = (
                    (stats.tcp_flags & 0xff) as u8,
                    ((stats.tcp_flags >> 8) & 0xff) as u8,
                );
                if (lo | hi) & RST != 0 || (lo & FIN != 0 && hi & FIN != 0) {
                    self.cfg.tcp_closed_grace.as_nanos()
                } else if (lo | hi) & SYN != 0 && !(lo & ACK != 0 && hi & ACK != 0) {
                    // Handshake seen but never answered in both directions.
                    self.cfg.tcp_unestablished_timeout.as_nanos()
                } else {
                    self.cfg.tcp_idle_timeout.as_nanos()
                }
            }
            UDP => self.cfg.udp_idle_timeout.as_nanos(),
            _ => self.cfg.other_idle_timeout.as_nanos(),
        }
    }

    /// Ends flows idle past their timeout and conversations idle past the gap tolerance.
    pub fn expire(&mut self, now: u64) -> Ended {
        let mut ended = Ended::default();
        let expired: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(k, f)| now.saturating_sub(f.last_ns) >= self.timeout_ns(k, &f.stats))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(f) = self.flows.remove(&key) {
                self.counters.flows_ended += 1;
                if let Some(c) = self.convs.get_mut(&f.conv) {
                    c.open_flows = c.open_flows.saturating_sub(1);
                    if c.open_flows == 0 {
                        c.idle_since_ns = Some(c.last_ns);
                    }
                }
                ended.flows.push(FlowRecord {
                    key,
                    stats: f.stats,
                    start_ns: Some(f.first_ns),
                    end_ns: Some(f.last_ns),
                });
            }
        }
        let gap = self.cfg.conversation_gap.as_nanos();
        let done: Vec<ConvKey> = self
            .convs
            .iter()
            .filter(|(_, c)| {
                c.open_flows == 0
                    && c.idle_since_ns
                        .is_some_and(|idle| now.saturating_sub(idle) > gap)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in done {
            if let Some(c) = self.convs.remove(&key) {
                self.counters.conversations_ended += 1;
                ended.conversations.push(c);
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use sensor_common::ipv4_mapped;

    const S: u64 = 1_000_000_000;

    fn key(cport: u16) -> (FlowKey, usize) {
        FlowKey::canonical(
            &ipv4_mapped([10, 0, 0, 1]),
            cport,
            &ipv4_mapped([10, 0, 0, 2]),
            3333,
            TCP,
        )
    }

    fn table() -> FlowTable {
        FlowTable::new(FlowConfig {
            tcp_idle_timeout: HumanDuration::secs(60),
            conversation_gap: HumanDuration::secs(120),
            ..FlowConfig::default()
        })
    }

    #[test]
    fn reconnects_chain_into_one_conversation() {
        let mut t = table();
        let (k1, d1) = key(40000);
        t.add_packet(&k1, d1, 100, SYN, 0);
        t.add_packet(&k1, 1 - d1, 100, SYN | ACK, S);
        t.add_packet(&k1, d1, 60, RST, 10 * S);
        assert!(
            t.expire(50 * S).flows.iter().any(|f| f.key == k1),
            "reset flow ends after the grace"
        );
        let (k2, d2) = key(40001);
        t.add_packet(&k2, d2, 100, SYN, 100 * S);
        t.add_packet(&k2, 1 - d2, 100, SYN | ACK, 101 * S);
        assert_eq!(t.conversation_count(), 1);
        let c = t.conversations().next().expect("conversation");
        assert_eq!((c.start_ns, c.last_ns, c.flows_seen), (0, 101 * S, 2));
        assert_eq!((c.client_bytes, c.server_bytes), (260, 200));
        assert_eq!(c.client_port, 40001);
    }

    #[test]
    fn a_gap_longer_than_the_tolerance_starts_a_new_conversation() {
        let mut t = table();
        let (k1, d1) = key(40000);
        t.add_packet(&k1, d1, 100, SYN, 0);
        t.add_packet(&k1, d1, 60, RST, S);
        t.expire(40 * S);
        let ended = t.expire(200 * S);
        assert_eq!(ended.conversations.len(), 1);
        let (k2, d2) = key(40001);
        t.add_packet(&k2, d2, 100, SYN, 300 * S);
        assert_eq!(t.conversations().next().map(|c| c.start_ns), Some(300 * S));
    }

    #[test]
    fn kernel_snapshots_apply_deltas_and_survive_counter_resets() {
        let mut t = table();
        let (k, _) = key(40000);
        let mut s = FlowStats {
            client: CLIENT_LO,
            ..FlowStats::default()
        };
        s.packets = [10, 5];
        s.bytes = [1000, 500];
        t.update(&k, &s, 0, 10 * S);
        s.packets = [12, 6];
        s.bytes = [1200, 600];
        t.update(&k, &s, 0, 20 * S);
        s.packets = [1, 0];
        s.bytes = [100, 0];
        t.update(&k, &s, 30 * S, 30 * S);
        let c = t.conversations().next().expect("conversation");
        assert_eq!(
            (c.client_packets, c.client_bytes, c.server_bytes),
            (13, 1300, 600)
        );
        assert_eq!(t.counters.counter_resets, 1);
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_it_drops() {
        let mut t = FlowTable::new(FlowConfig {
            max_flows: 2,
            ..FlowConfig::default()
        });
        for p in 0..5 {
            let (k, d) = key(40000 + p);
            t.add_packet(&k, d, 60, SYN, 0);
        }
        assert_eq!((t.flow_count(), t.counters.flows_dropped), (2, 3));
    }
}
