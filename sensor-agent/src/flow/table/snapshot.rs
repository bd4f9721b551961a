//! The flow table's part of the state file: conversations (with their chaining, roles, start
//! times and connection samples) and the flows in them, so that after a restart a kernel
//! entry of a known 5-tuple re-joins its flow and conversation, and alarm ids (derived from
//! the conversation's start) stay the same.
//!
//! Restoring trusts nothing: a key must be canonical, a role code known, a flow's
//! conversation present, times ordered, the table's capacities kept; what fails is skipped
//! and counted, never half applied.

use sensor_common::{Addr, FlowKey, CLIENT_BY_SYN, CLIENT_HI, CLIENT_LO};
use serde::{Deserialize, Serialize};

use super::{conv_key, new_conversation, ConvKey, Flow, FlowTable, CONNECTION_SAMPLES};
use crate::{flow::roles, scoring::periodicity::SampleRing};

/// A flow key in the state file (the kernel ABI type itself has no serde).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySnap {
    pub lo: Addr,
    pub hi: Addr,
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
}

impl From<&FlowKey> for KeySnap {
    fn from(k: &FlowKey) -> Self {
        KeySnap {
            lo: k.addr_lo,
            hi: k.addr_hi,
            port_lo: k.port_lo,
            port_hi: k.port_hi,
            proto: k.proto,
        }
    }
}

impl KeySnap {
    /// The flow key, if it is in canonical form (as every key the agent made is).
    pub fn key(&self) -> Option<FlowKey> {
        let (k, _) = FlowKey::canonical(&self.lo, self.port_lo, &self.hi, self.port_hi, self.proto);
        (KeySnap::from(&k) == *self).then_some(k)
    }
}

/// One conversation in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvSnapshot {
    pub key: ConvKey,
    pub start_ns: u64,
    pub last_ns: u64,
    /// Client packets, client bytes, server packets, server bytes.
    pub counts: [u64; 4],
    pub idle_since_ns: Option<u64>,
    pub flows_seen: u32,
    pub client_port: u16,
    pub client_from: u8,
    pub fan_counted: bool,
    /// Start and bytes of each answered flow that ended, oldest first.
    pub connections: Vec<(u64, u64)>,
}

/// One flow in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowSnapshot {
    pub key: KeySnap,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub first_ns: u64,
    pub last_ns: u64,
    pub tcp_flags: u16,
    pub client: u8,
    pub client_source: u8,
    pub role_tries: u8,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSnapshot {
    pub conversations: Vec<ConvSnapshot>,
    pub flows: Vec<FlowSnapshot>,
}

/// What a restore took and what it refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableRestored {
    pub conversations: usize,
    pub flows: usize,
    /// Entries refused: invalid, duplicate, orphaned or beyond the table's capacity.
    pub skipped: usize,
}

impl FlowTable {
    /// The table as it is, for the state file.
    pub fn snapshot(&self) -> TableSnapshot {
        let conversations = self
            .conversations()
            .map(|c| ConvSnapshot {
                key: c.key,
                start_ns: c.start_ns,
                last_ns: c.last_ns,
                counts: [
                    c.client_packets,
                    c.client_bytes,
                    c.server_packets,
                    c.server_bytes,
                ],
                idle_since_ns: c.idle_since_ns,
                flows_seen: c.flows_seen,
                client_port: c.client_port,
                client_from: c.client_from,
                fan_counted: c.fan_counted,
                connections: c
                    .connections
                    .as_ref()
                    .map_or_else(Vec::new, |r| r.iter().collect()),
            })
            .collect();
        let flows = self
            .flows
            .items
            .iter()
            .filter(|f| f.in_use)
            .map(|f| FlowSnapshot {
                key: KeySnap::from(&f.key),
                packets: f.packets,
                bytes: f.bytes,
                first_ns: f.first_ns,
                last_ns: f.last_ns,
                tcp_flags: f.tcp_flags,
                client: f.client,
                client_source: f.client_source,
                role_tries: f.role_tries,
            })
            .collect();
        TableSnapshot {
            conversations,
            flows,
        }
    }

    /// Takes a snapshot into this (new, empty) table. Every conversation restored is
    /// evaluated at the next tick; one left without flows ages out from its last packet.
    pub fn restore(&mut self, snap: TableSnapshot) -> TableRestored {
        let mut r = TableRestored::default();
        for c in snap.conversations {
            let valid = c.start_ns <= c.last_ns
                && c.idle_since_ns.is_none_or(|i| i <= c.last_ns)
                && c.flows_seen >= 1
                && self.find_conv(&c.key).is_none()
                && self.convs.len() < self.cfg.max_conversations;
            if !valid {
                r.skipped += 1;
                continue;
            }
            let mut conv = new_conversation(c.key, c.start_ns);
            conv.last_ns = c.last_ns;
            [
                conv.client_packets,
                conv.client_bytes,
                conv.server_packets,
                conv.server_bytes,
            ] = c.counts;
            // Aged from its last packet unless a restored flow keeps it open.
            conv.idle_since_ns = Some(c.idle_since_ns.unwrap_or(c.last_ns));
            conv.flows_seen = c.flows_seen;
            conv.client_port = c.client_port;
            conv.client_from = c.client_from;
            // Not in the file: a conversation whose both sides sent was answered.
            conv.answered = c.counts[0] > 0 && c.counts[2] > 0;
            if !c.connections.is_empty() {
                let mut ring = SampleRing::new(CONNECTION_SAMPLES);
                let skip = c.connections.len().saturating_sub(CONNECTION_SAMPLES);
                for &(t, b) in &c.connections[skip..] {
                    ring.push(t, b);
                }
                conv.connections = Some(Box::new(ring));
            }
            if c.fan_counted {
                conv.fan_counted = true;
                self.fan_in
                    .add(&c.key.server, c.key.server_port, c.key.proto);
            }
            self.insert_conv(conv);
            r.conversations += 1;
        }
        for f in snap.flows {
            let Some(key) = f.key.key() else {
                r.skipped += 1;
                continue;
            };
            let conv = (f.client == CLIENT_LO || f.client == CLIENT_HI)
                .then(|| self.find_conv(&conv_key(&key, f.client)))
                .flatten();
            let known_source = roles::strength(f.client_source) > 1
                || f.client_source == sensor_common::CLIENT_BY_FIRST_PACKET;
            let (Some(conv), true, true, true, true) = (
                conv,
                known_source,
                f.first_ns <= f.last_ns,
                self.find_flow(&key).is_none(),
                self.flows.len() < self.cfg.max_flows,
            ) else {
                r.skipped += 1;
                continue;
            };
            let c = &mut self.convs.items[conv as usize];
            c.open_flows += 1;
            c.idle_since_ns = None;
            if f.client_source == CLIENT_BY_SYN && !c.fan_counted {
                c.fan_counted = true;
                let (server, port, proto) = (c.key.server, c.key.server_port, c.key.proto);
                self.fan_in.add(&server, port, proto);
            }
            self.insert_flow(Flow {
                key,
                packets: f.packets,
                bytes: f.bytes,
                first_ns: f.first_ns,
                last_ns: f.last_ns,
                tcp_flags: f.tcp_flags,
                client: f.client,
                client_source: f.client_source,
                role_tries: f.role_tries,
                in_use: true,
                answered: f.packets[0] > 0 && f.packets[1] > 0,
                counted_side: super::admission::SIDE_NONE,
                born: 0,
                conv,
                // Not in the state file: a live agent reads it again from `TUNNELS`.
                tunnel: None,
                // Not in the state file either: the next poll's view of the host gives it.
                host: None,
            });
            r.flows += 1;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{
        settings::FlowConfig,
        table::tests::{key, table, S},
    };
    use sensor_common::FlowStats;

    /// Two connections of one conversation (the first ended), restored into a new table:
    /// the same conversation, and a re-created kernel entry of the open flow re-joins it.
    #[test]
    fn a_restored_table_keeps_the_chain_and_a_new_kernel_entry_rejoins_it() {
        let mut t = table();
        let (k1, d1) = key(40000);
        t.add_packet(&k1, d1, 100, 0x02, 0);
        t.add_packet(&k1, 1 - d1, 100, 0x12, S);
        t.add_packet(&k1, d1, 60, 0x04, 10 * S);
        t.expire(50 * S);
        let (k2, d2) = key(40001);
        t.add_packet(&k2, d2, 100, 0x02, 60 * S);
        t.add_packet(&k2, 1 - d2, 100, 0x12, 61 * S);
        let snap = t.snapshot();
        let mut back = table();
        let r = back.restore(snap.clone());
        assert_eq!((r.conversations, r.flows, r.skipped), (1, 1, 0));
        assert_eq!(back.snapshot(), snap, "a restore loses nothing");
        let c = back.conversations().next().expect("conversation");
        assert_eq!((c.start_ns, c.flows_seen, c.open_flows), (0, 2, 1));
        assert_eq!(c.connections.as_ref().map(|r| r.len()), Some(1));
        // The kernel lost its entry (agent restart without pinned maps): the new one counts
        // from zero and joins the same flow and conversation.
        let mut fresh = FlowStats {
            client: if d2 == 0 { CLIENT_LO } else { CLIENT_HI },
            ..FlowStats::default()
        };
        fresh.packets[d2] = 1;
        fresh.bytes[d2] = 80;
        back.update(&k2, &fresh, 90 * S, 90 * S);
        assert_eq!(back.conversation_count(), 1);
        let c = back.conversations().next().expect("conversation");
        assert_eq!((c.start_ns, c.last_ns, c.flows_seen), (0, 90 * S, 2));
        assert_eq!(c.client_bytes, 260 + 80);
    }

    #[test]
    fn bad_entries_are_skipped_and_capacities_kept() {
        let mut t = table();
        for p in 0..3 {
            let (k, d) = key(40000 + p);
            t.add_packet(&k, d, 100, 0x02, 0);
        }
        let good = t.snapshot();
        let mut snap = good.clone();
        // A key not in canonical form, an unknown client, a flow without its conversation.
        snap.flows[0].key = KeySnap {
            lo: snap.flows[0].key.hi,
            hi: snap.flows[0].key.lo,
            ..snap.flows[0].key
        };
        snap.flows[1].client = 7;
        snap.conversations.push(ConvSnapshot {
            start_ns: 5,
            last_ns: 4,
            ..snap.conversations[0].clone()
        });
        let mut back = table();
        let r = back.restore(snap);
        assert_eq!((r.conversations, r.flows, r.skipped), (1, 1, 3));
        let mut small = FlowTable::new(FlowConfig {
            max_flows: 2,
            ..FlowConfig::default()
        });
        let r = small.restore(good);
        assert_eq!((r.flows, r.skipped, small.flow_count()), (2, 1, 2));
    }
}
