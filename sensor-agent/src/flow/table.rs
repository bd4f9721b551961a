//! The agent's flow table: 5-tuple flows, and conversations that chain a client's reconnects
//! to the same server port so the clock keeps running across them.
//!
//! Sources feed it either packet by packet (capture replay) or with cumulative snapshots of
//! kernel counters (live); it ages flows with TCP-aware timeouts, tells the source which flows
//! ended (so the kernel map entry can be deleted), and keeps conversations for a gap
//! tolerance after their last flow ended. Memory is bounded: beyond the configured maxima new
//! flows are dropped and counted, never silently.
//!
//! Layout, for memory and cache (the agent holds up to millions of flows): flows and
//! conversations live in slabs (vectors with free lists), found through hash tables that
//! hold only 4-byte slab indices, hashed with a randomly keyed hasher (the keys come from
//! hostile traffic, so hash flooding must not be predictable). A flow refers to its
//! conversation by index. A snapshot that did not change a flow costs one lookup and a
//! compare, and only changed conversations are re-evaluated (`dirty`).
//!
//! Roles: a flow's client is decided from the strongest evidence at hand ([`crate::flow::roles`]):
//! a SYN (from the kernel's counters or a replayed packet) always wins; payload evidence comes
//! from the engine through [`FlowTable::set_client`]; the port rule, then fan-in (an endpoint
//! that [`FAN_IN_MIN`] clients reached with a SYN on the same port), are applied once, when
//! the flow is created; else the first packet's sender stays client. A flow whose client changes
//! moves, with what it already counted, to the right conversation and keeps its start time; a
//! conversation that only ever held that flow is dropped at once (collected by
//! [`FlowTable::take_abandoned`]), so no alarm is ever raised on the wrong orientation's ghost.
//!
//! Floods ([`admission`]): full, the table evicts the oldest *unanswered* flow (only one side
//! ever sent) to admit another, never an answered one; near full, a sender over its budget of
//! unanswered flows is refused; refusals and evictions are counted with their times for
//! `sensor_degraded`, and the refused keys handed to the source to delete. A kernel entry
//! evicted and re-created re-joins its flow, counted; while the table evicts unanswered
//! flows, answered flows do not idle out.
//!
//! It never decides whether anything is suspicious: detectors read conversations from it,
//! and it never evicts an answered flow.

use std::sync::Arc;

use ahash::RandomState;
use hashbrown::HashTable;
use sensor_common::{
    Addr, FlowKey, FlowStats, TunnelInfo, CLIENT_BY_FIRST_PACKET, CLIENT_BY_SYN, CLIENT_HI,
    CLIENT_LO,
};
use serde::{Deserialize, Serialize};

use crate::{
    flow::host::HostSide,
    flow::record::FlowRecord,
    flow::roles::{self, CLIENT_BY_FAN_IN, CLIENT_BY_PAYLOAD, CLIENT_BY_PORT},
    flow::settings::FlowConfig,
    scoring::periodicity::SampleRing,
};

/// Payload packets of a flow offered as role evidence, at most: a flow whose first payloads
/// say nothing about roles keeps what it has, and costs nothing more.
pub const MAX_ROLE_TRIES: u8 = 8;

/// Distinct clients that must have reached an endpoint with a SYN before it counts as a
/// server by fan-in.
pub const FAN_IN_MIN: u32 = 3;

/// Connections remembered per conversation for periodicity (3 h of a 60 s beacon is 180).
pub const CONNECTION_SAMPLES: usize = 512;

mod admission;
mod snapshot;
pub use snapshot::{ConvSnapshot, FlowSnapshot, KeySnap, TableRestored, TableSnapshot};

const TCP: u8 = 6;
const UDP: u8 = 17;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// A logical client-server conversation: (client, server, server port, transport).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// When the last flow ended; the conversation ends `conversation_gap` later.
    pub idle_since_ns: Option<u64>,
    /// Flows of this conversation now in the table.
    pub open_flows: u32,
    /// Flows this conversation has had (reconnects + 1).
    pub flows_seen: u32,
    /// Client port of the most recent flow.
    pub client_port: u16,
    /// How the most recent flow's client was decided (`FlowStats::client_source` codes,
    /// named by [`roles::client_from`]).
    pub client_from: u8,
    /// Changed since the detectors last looked (cleared by [`FlowTable::clear_dirty`]).
    pub dirty: bool,
    in_use: bool,
    /// Counted in the table's fan-in (a flow of it was opened with a SYN).
    fan_counted: bool,
    /// One of its flows was answered (both sides sent). A conversation that never was holds
    /// only failed attempts: under pressure it is the first to go.
    answered: bool,
    /// Start time and bytes of each answered flow that ended (RITA-style periodicity across
    /// connections); allocated at the first one, bounded.
    pub connections: Option<Box<SampleRing>>,
    /// The tunnel of its most recent tunnelled flow, oriented by that flow's key (see
    /// [`Conversation::tunnel_key`]); boxed: most conversations have none.
    pub tunnel: Option<Box<(FlowKey, TunnelInfo)>>,
    /// The host's side of its most recent flow that has one ([`HostSide`]).
    pub host: Option<Arc<HostSide>>,
}

impl Conversation {
    pub fn duration_ns(&self) -> u64 {
        self.last_ns.saturating_sub(self.start_ns)
    }

    pub fn total_bytes(&self) -> u64 {
        self.client_bytes + self.server_bytes
    }

    /// The most recent flow's key (for its Community ID).
    pub fn last_flow_key(&self) -> FlowKey {
        FlowKey::canonical(
            &self.key.client,
            self.client_port,
            &self.key.server,
            self.key.server_port,
            self.key.proto,
        )
        .0
    }
}

/// One flow: the counters last applied (kernel snapshot or packet sum), compactly.
#[derive(Clone, Debug)]
struct Flow {
    key: FlowKey,
    packets: [u64; 2],
    bytes: [u64; 2],
    first_ns: u64,
    last_ns: u64,
    tcp_flags: u16,
    client: u8,
    client_source: u8,
    /// Payload packets offered as role evidence so far (see [`MAX_ROLE_TRIES`]).
    role_tries: u8,
    in_use: bool,
    /// Both sides have sent (sticky: a re-created kernel entry that restarts with one side's
    /// packets is still the answered flow it was). Only unanswered flows are ever evicted.
    answered: bool,
    /// Which endpoint this unanswered flow is counted under in the per-source budget
    /// (`admission::SIDE_*`), so it is uncounted under the same one.
    counted_side: u8,
    /// Creation number: tells a slab slot's current flow from an earlier one in the eviction
    /// queue.
    born: u32,
    conv: u32,
    /// The tunnel the flow was created in (boxed: most flows have none).
    tunnel: Option<Box<TunnelInfo>>,
    /// Forwarded or the host's own, and its process (shared: one per process).
    host: Option<Arc<HostSide>>,
}

impl Flow {
    fn stats(&self) -> FlowStats {
        FlowStats {
            packets: self.packets,
            bytes: self.bytes,
            tcp_flags: self.tcp_flags as u64,
            client: self.client,
            client_source: self.client_source,
            ..FlowStats::default()
        }
    }

    fn record(&self) -> FlowRecord {
        FlowRecord {
            key: self.key,
            stats: self.stats(),
            start_ns: Some(self.first_ns),
            end_ns: Some(self.last_ns),
            tunnel: self.tunnel.as_deref().copied(),
            host: self.host.clone(),
        }
    }
}

/// What the table counted about itself.
#[derive(Clone, Debug, Default)]
pub struct TableCounters {
    pub flows_created: u64,
    pub flows_ended: u64,
    pub conversations_created: u64,
    pub conversations_ended: u64,
    /// New flows refused because the table was full (of answered flows), or because their
    /// source used up its budget of unanswered flows while the table was near full. Counted
    /// per offer: live, a refused flow's kernel entry is deleted, so it counts again only if
    /// its next packet creates the entry again.
    pub flows_dropped: u64,
    /// Unanswered flows evicted to admit another flow into a full table.
    pub flows_evicted: u64,
    /// Conversations that never had an answered flow, ended early to make room (evicted with
    /// their only flow, or idle while the conversation table was near full).
    pub conversations_evicted: u64,
    /// When the table first (since the engine last cleared it) and last refused or evicted a
    /// flow (the offered flow's time).
    pub first_pressure_ns: Option<u64>,
    pub last_pressure_ns: Option<u64>,
    /// When the table last evicted an unanswered flow: a flood is under way.
    pub last_eviction_ns: Option<u64>,
    /// New flows refused because the conversation table was full.
    pub conversations_dropped: u64,
    /// Kernel entries of known flows that were evicted and re-created (counters went
    /// backwards, or the entry's first packet is later than the last one the table knew).
    /// The packets the old entry counted after the agent's last read of it are lost with it;
    /// the kernel does not say how many, so they are not in any total.
    pub counter_resets: u64,
    /// Of those, re-created entries of answered flows (the established sessions a flood can
    /// push out of the kernel map), and the time they went unobserved in total: from the
    /// last packet the agent saw of the old entry to the first of the new one.
    pub answered_recreated: u64,
    pub unobserved_ns: u64,
    /// Packets and bytes the flows have carried since the table started.
    pub packets: u64,
    pub bytes: u64,
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

/// A slab: values addressed by a stable u32 index, with a free list.
struct Slab<T> {
    items: Vec<T>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }

    fn insert(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = value;
                i
            }
            None => {
                self.items.push(value);
                (self.items.len() - 1) as u32
            }
        }
    }
}

pub struct FlowTable {
    cfg: FlowConfig,
    hasher: RandomState,
    flows: Slab<Flow>,
    flow_index: HashTable<u32>,
    convs: Slab<Conversation>,
    conv_index: HashTable<u32>,
    pub counters: TableCounters,
    /// Conversations dropped because their only flow moved to the other orientation.
    abandoned: Vec<Conversation>,
    /// Fan-in: per server endpoint, the conversations reaching it whose flows were opened
    /// with a SYN (distinct clients: a conversation is one client).
    fan_in: FanIn,
    /// Whether roles are decided from evidence (off for a table that only sums counters and
    /// takes its roles from another: the SYN-or-first-packet rule then stays).
    roles: bool,
    /// Admission under pressure: the eviction queue and per-source budget
    /// ([`admission`]).
    admission: admission::Admission,
}

/// Counters per server endpoint (address, port, transport) in a fixed-size count-min sketch:
/// two rows of [`FAN_IN_SLOTS`] saturating 16-bit counters, indexed by the two halves of a
/// randomly keyed hash, the count being the smaller of the two. Fixed memory (1 MiB,
/// allocated at the first count) however many servers there are; a collision can only make
/// an endpoint look more reached than it is, and both rows must collide for that to matter.
struct FanIn {
    counts: Vec<u16>,
    hasher: RandomState,
}

/// Counters per row of the fan-in sketch.
const FAN_IN_SLOTS: usize = 1 << 18;

impl FanIn {
    fn new() -> Self {
        FanIn {
            counts: Vec::new(),
            hasher: RandomState::new(),
        }
    }

    fn slots(&self, addr: &Addr, port: u16, proto: u8) -> [usize; 2] {
        // One array of words hashes in one pass (a tuple of references hashes field by field).
        let h = self.hasher.hash_one([
            (addr[0] as u64) << 32 | addr[1] as u64,
            (addr[2] as u64) << 32 | addr[3] as u64,
            (port as u64) << 8 | proto as u64,
        ]);
        let mask = FAN_IN_SLOTS as u64 - 1;
        [
            (h & mask) as usize,
            FAN_IN_SLOTS + ((h >> 32) & mask) as usize,
        ]
    }

    fn get(&self, addr: &Addr, port: u16, proto: u8) -> u32 {
        if self.counts.is_empty() {
            return 0;
        }
        let [a, b] = self.slots(addr, port, proto);
        self.counts[a].min(self.counts[b]) as u32
    }

    fn add(&mut self, addr: &Addr, port: u16, proto: u8) {
        if self.counts.is_empty() {
            self.counts = vec![0; 2 * FAN_IN_SLOTS];
        }
        for i in self.slots(addr, port, proto) {
            self.counts[i] = self.counts[i].saturating_add(1);
        }
    }

    fn remove(&mut self, addr: &Addr, port: u16, proto: u8) {
        if self.counts.is_empty() {
            return;
        }
        for i in self.slots(addr, port, proto) {
            // A saturated counter stays: it no longer knows how many it holds.
            if self.counts[i] != u16::MAX {
                self.counts[i] = self.counts[i].saturating_sub(1);
            }
        }
    }
}

fn conv_key(key: &FlowKey, client: u8) -> ConvKey {
    if client == CLIENT_LO {
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

/// (client packets, client bytes, server packets, server bytes).
fn oriented(packets: &[u64; 2], bytes: &[u64; 2], client: u8) -> [u64; 4] {
    let (c, s) = if client == CLIENT_LO { (0, 1) } else { (1, 0) };
    [packets[c], bytes[c], packets[s], bytes[s]]
}

impl FlowTable {
    pub fn new(cfg: FlowConfig) -> Self {
        FlowTable {
            cfg,
            hasher: RandomState::new(),
            flows: Slab::new(),
            flow_index: HashTable::new(),
            convs: Slab::new(),
            conv_index: HashTable::new(),
            counters: TableCounters::default(),
            abandoned: Vec::new(),
            fan_in: FanIn::new(),
            roles: true,
            admission: admission::Admission::new(),
        }
    }

    /// A table that only sums counters per flow and keeps the datapath's own client rule
    /// (a SYN, else the first packet): for totals whose roles come from the engine's table.
    pub fn without_roles(cfg: FlowConfig) -> Self {
        FlowTable {
            roles: false,
            ..Self::new(cfg)
        }
    }

    /// Conversations dropped since the last call because their only flow changed client (the
    /// engine closes their alarms and forgets their labels).
    pub fn take_abandoned(&mut self) -> Vec<Conversation> {
        std::mem::take(&mut self.abandoned)
    }

    /// Like [`FlowTable::orientation`], for a payload of the flow, plus whether that payload
    /// is still wanted as role evidence (the client is not yet decided by a SYN or a payload,
    /// and fewer than [`MAX_ROLE_TRIES`] payloads were offered). Counts the offer.
    pub fn payload_orientation(&mut self, key: &FlowKey) -> Option<(ConvKey, bool, bool)> {
        let i = self.find_flow(key)?;
        let f = &mut self.flows.items[i as usize];
        let wanted = roles::strength(f.client_source) < roles::strength(CLIENT_BY_PAYLOAD)
            && f.role_tries < MAX_ROLE_TRIES;
        if wanted {
            f.role_tries += 1;
        }
        let lo_is_client = f.client == CLIENT_LO;
        Some((self.convs.items[f.conv as usize].key, lo_is_client, wanted))
    }

    /// Decides flow `key`'s client (`CLIENT_LO` or `CLIENT_HI`) from evidence `source`, when
    /// that is stronger than what decided it so far. Returns whether the client changed (the
    /// flow then moved to the other orientation's conversation, keeping its start time).
    pub fn set_client(&mut self, key: &FlowKey, client: u8, source: u8) -> bool {
        let Some(i) = self.find_flow(key) else {
            return false;
        };
        let f = &self.flows.items[i as usize];
        if roles::strength(source) <= roles::strength(f.client_source) {
            return false;
        }
        let moved = f.client != client;
        let stats = f.stats();
        let (first, last) = (f.first_ns, f.last_ns);
        self.apply(key, &stats, (client, source), Some(i), first, last);
        moved
    }

    /// The client of a flow and how it is known, from the counters just read (`stats`) and
    /// what the table decided before (`found`): a SYN always wins, earlier decisions stay,
    /// and a new flow without a SYN is oriented by its ports when they say.
    #[inline]
    fn resolve(&self, key: &FlowKey, stats: &FlowStats, found: Option<u32>) -> (u8, u8) {
        if !self.roles {
            return (stats.client, stats.client_source);
        }
        // A source's own evidence (a SYN, an exporter's initiator) beats weaker decisions.
        let reported = roles::from_source(stats.client_source);
        if let Some(i) = found {
            let f = &self.flows.items[i as usize];
            if reported && roles::strength(stats.client_source) > roles::strength(f.client_source) {
                return (stats.client, stats.client_source);
            }
            return (f.client, f.client_source);
        }
        if reported {
            return (stats.client, stats.client_source);
        }
        // The 5-tuple of an answered conversation's latest flow, back without its flow (a
        // kernel entry re-created after the table let the flow go): the conversation's own
        // record of its client stands, whoever sent the new entry's first packet.
        if let Some(known) = self.client_by_conversation(key) {
            return known;
        }
        if let Some(client) = roles::client_by_port(key) {
            return (client, CLIENT_BY_PORT);
        }
        if let Some(client) = self.client_by_fan_in(key) {
            return (client, CLIENT_BY_FAN_IN);
        }
        (stats.client, CLIENT_BY_FIRST_PACKET)
    }

    /// The client (and how it was known) of an answered conversation whose latest flow had
    /// this 5-tuple, in either orientation.
    fn client_by_conversation(&self, key: &FlowKey) -> Option<(u8, u8)> {
        [CLIENT_LO, CLIENT_HI].into_iter().find_map(|client| {
            let c = &self.convs.items[self.find_conv(&conv_key(key, client))? as usize];
            let port = if client == CLIENT_LO {
                key.port_lo
            } else {
                key.port_hi
            };
            (c.answered && c.client_port == port).then_some((client, c.client_from))
        })
    }

    /// The client by fan-in: the other side of an endpoint that at least [`FAN_IN_MIN`]
    /// clients reached with a SYN on the same port, when nobody reached the other side so.
    fn client_by_fan_in(&self, key: &FlowKey) -> Option<u8> {
        if self.fan_in.counts.is_empty() {
            return None;
        }
        let peers = |addr: &Addr, port: u16| self.fan_in.get(addr, port, key.proto);
        let (lo, hi) = (
            peers(&key.addr_lo, key.port_lo),
            peers(&key.addr_hi, key.port_hi),
        );
        if lo >= FAN_IN_MIN && hi == 0 {
            Some(CLIENT_HI)
        } else if hi >= FAN_IN_MIN && lo == 0 {
            Some(CLIENT_LO)
        } else {
            None
        }
    }

    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    pub fn conversation_count(&self) -> usize {
        self.convs.len()
    }

    pub fn conversations(&self) -> impl Iterator<Item = &Conversation> {
        self.convs.items.iter().filter(|c| c.in_use)
    }

    /// The conversation a flow belongs to and whether its `lo` endpoint is the client.
    pub fn orientation(&self, key: &FlowKey) -> Option<(ConvKey, bool)> {
        let f = &self.flows.items[self.find_flow(key)? as usize];
        Some((self.convs.items[f.conv as usize].key, f.client == CLIENT_LO))
    }

    /// Marks a conversation for evaluation at the next tick (its labels changed).
    pub fn mark_dirty(&mut self, key: &ConvKey) {
        if let Some(i) = self.find_conv(key) {
            self.convs.items[i as usize].dirty = true;
        }
    }

    /// Clears every conversation's `dirty` mark (after the detectors looked at them).
    pub fn clear_dirty(&mut self) {
        for c in self.convs.items.iter_mut() {
            c.dirty = false;
        }
    }

    pub fn conversation(&self, key: &ConvKey) -> Option<&Conversation> {
        self.find_conv(key).map(|i| &self.convs.items[i as usize])
    }

    /// Flows with their cumulative counters and times (for `--flows` output).
    pub fn flows(&self) -> impl Iterator<Item = FlowRecord> + '_ {
        self.flows
            .items
            .iter()
            .filter(|f| f.in_use)
            .map(Flow::record)
    }

    #[inline]
    fn find_flow(&self, key: &FlowKey) -> Option<u32> {
        let items = &self.flows.items;
        self.flow_index
            .find(self.hasher.hash_one(key), |&i| {
                items[i as usize].key == *key
            })
            .copied()
    }

    fn find_conv(&self, key: &ConvKey) -> Option<u32> {
        let items = &self.convs.items;
        self.conv_index
            .find(self.hasher.hash_one(key), |&i| {
                items[i as usize].key == *key
            })
            .copied()
    }

    /// Records the tunnel of a flow created from a decapsulated packet (the datapath's
    /// `TUNNELS` entry, or the user parser's tunnel of the flow's first packet) on the flow and
    /// its conversation. A flow keeps the first tunnel it was given.
    pub fn set_tunnel(&mut self, key: &FlowKey, tunnel: TunnelInfo) {
        let Some(i) = self.find_flow(key) else { return };
        let f = &mut self.flows.items[i as usize];
        if f.tunnel.is_some() {
            return;
        }
        f.tunnel = Some(Box::new(tunnel));
        let c = &mut self.convs.items[f.conv as usize];
        c.tunnel = Some(Box::new((*key, tunnel)));
        c.dirty = true;
    }

    /// Records what the host knows of a flow (live: forwarded or not, its process) on the
    /// flow and its conversation. A later view replaces an earlier one unless it knows less
    /// (an owner found one poll late completes the flow; nothing takes it away again).
    pub fn set_host(&mut self, key: &FlowKey, host: Arc<HostSide>) {
        let Some(i) = self.find_flow(key) else { return };
        let f = &mut self.flows.items[i as usize];
        if f.host.as_ref().is_some_and(|h| h.process.is_some()) && host.process.is_none() {
            return;
        }
        f.host = Some(host.clone());
        let c = &mut self.convs.items[f.conv as usize];
        c.host = Some(host);
        c.dirty = true;
    }

    /// Packets counted for a flow so far (0: not in the table).
    pub fn flow_packets(&self, key: &FlowKey) -> u64 {
        self.find_flow(key).map_or(0, |i| {
            let f = &self.flows.items[i as usize];
            f.packets[0] + f.packets[1]
        })
    }

    /// Adds one packet (replay).
    pub fn add_packet(&mut self, key: &FlowKey, dir: usize, len: u64, tcp_flags: u8, ts: u64) {
        let dir = dir & 1;
        let sender = if dir == 0 { CLIENT_LO } else { CLIENT_HI };
        let mut stats = match self.find_flow(key) {
            Some(i) => {
                let f = &self.flows.items[i as usize];
                FlowStats {
                    first_seen: f.first_ns,
                    ..f.stats()
                }
            }
            None => FlowStats {
                client: sender,
                first_seen: ts,
                ..FlowStats::default()
            },
        };
        if key.proto == TCP
            && tcp_flags & (SYN | ACK) == SYN
            && stats.client_source != CLIENT_BY_SYN
        {
            stats.client = sender;
            stats.client_source = CLIENT_BY_SYN;
        }
        stats.packets[dir] += 1;
        stats.bytes[dir] += len;
        stats.tcp_flags |= (tcp_flags as u64) << (dir * 8);
        self.update(key, &stats, stats.first_seen.min(ts), ts);
    }

    /// Applies cumulative counters for a flow (a kernel snapshot, or a packet sum).
    /// The client comes from the strongest evidence (see [`FlowTable::resolve`]), not
    /// necessarily from `stats.client`.
    pub fn update(&mut self, key: &FlowKey, stats: &FlowStats, first_ns: u64, last_ns: u64) {
        let found = self.find_flow(key);
        let (client, client_source) = self.resolve(key, stats, found);
        if let Some(i) = found {
            let f = &self.flows.items[i as usize];
            // The common case live: an idle flow whose counters did not move (its converted
            // times may still jitter by a jiffy as the clock is re-anchored: ignore that).
            if f.packets == stats.packets
                && f.client == client
                && f.client_source == client_source
                && f.tcp_flags as u64 == stats.tcp_flags
            {
                return;
            }
        } else if !self.admit(key, stats, last_ns) {
            return;
        }
        self.apply(
            key,
            stats,
            (client, client_source),
            found,
            first_ns,
            last_ns,
        );
    }

    /// Applies counters whose client is decided: moves the flow between conversations when
    /// its client changed, adds the deltas, creates the flow if `found` is `None`.
    #[inline(always)]
    fn apply(
        &mut self,
        key: &FlowKey,
        stats: &FlowStats,
        (client, client_source): (u8, u8),
        found: Option<u32>,
        first_ns: u64,
        last_ns: u64,
    ) {
        let new_conv_key = conv_key(key, client);
        let (prev, old_conv, prev_last, was_answered) = match found {
            Some(i) => {
                let f = &self.flows.items[i as usize];
                (
                    (f.packets, f.bytes, f.client),
                    Some(f.conv),
                    f.last_ns,
                    f.answered,
                )
            }
            None => (([0; 2], [0; 2], client), None, 0, false),
        };
        let answered = was_answered || (stats.packets[0] > 0 && stats.packets[1] > 0);
        let now = oriented(&stats.packets, &stats.bytes, client);
        let was = oriented(&prev.0, &prev.1, prev.2);
        let mut delta = [0u64; 4];
        let mut reset = false;
        for i in 0..4 {
            reset |= now[i] < was[i];
            delta[i] = now[i].wrapping_sub(was[i]);
        }
        // The kernel entry was evicted and re-created: its counters restarted, or it began
        // after the last packet the table knew of the old one (when the new entry's counters
        // all passed the old ones before the agent read it). A flow's converted first time is
        // stable while its entry lives (the clock anchor moves only when the wall clock is
        // stepped), and replayed packets never move it forward.
        let recreated = found.is_some() && first_ns > prev_last;
        if (reset || recreated) && client == prev.2 {
            self.counters.counter_resets += 1;
            if was_answered {
                self.counters.answered_recreated += 1;
                self.counters.unobserved_ns += first_ns.saturating_sub(prev_last);
            }
            delta = now;
        }
        // The client can be learnt late (a SYN or a server's message after a first packet
        // from the server): move what this flow already contributed to the right
        // conversation.
        let mut conv_idx = old_conv;
        if let Some(old) = old_conv {
            if self.convs.items[old as usize].key != new_conv_key {
                let c = &mut self.convs.items[old as usize];
                c.client_packets = c.client_packets.saturating_sub(was[0]);
                c.client_bytes = c.client_bytes.saturating_sub(was[1]);
                c.server_packets = c.server_packets.saturating_sub(was[2]);
                c.server_bytes = c.server_bytes.saturating_sub(was[3]);
                c.open_flows = c.open_flows.saturating_sub(1);
                c.dirty = true;
                if c.open_flows == 0 {
                    c.idle_since_ns = Some(c.last_ns);
                }
                // Nothing but this flow ever made it: it was never a conversation.
                if c.open_flows == 0 && c.flows_seen <= 1 {
                    let ghost = self.remove_conv(old);
                    self.counters.conversations_ended += 1;
                    self.abandoned.push(ghost);
                }
                delta = now;
                conv_idx = None;
            }
        }
        let joined = conv_idx.is_none();
        let conv_idx = match conv_idx {
            Some(i) => i,
            None => match self.join_conversation(new_conv_key, first_ns) {
                Some(i) => i,
                None => {
                    self.counters.conversations_dropped += 1;
                    self.refused(key, last_ns);
                    if let Some(i) = found {
                        self.remove_flow(i);
                    }
                    return;
                }
            },
        };
        self.counters.packets += delta[0] + delta[2];
        self.counters.bytes += delta[1] + delta[3];
        let client_port = if client == CLIENT_LO {
            key.port_lo
        } else {
            key.port_hi
        };
        let c = &mut self.convs.items[conv_idx as usize];
        if joined {
            c.open_flows += 1;
            c.flows_seen += 1;
            c.idle_since_ns = None;
        }
        c.client_packets += delta[0];
        c.client_bytes += delta[1];
        c.server_packets += delta[2];
        c.server_bytes += delta[3];
        c.start_ns = c.start_ns.min(first_ns);
        c.last_ns = c.last_ns.max(last_ns);
        c.client_port = client_port;
        c.client_from = client_source;
        c.dirty = true;
        c.answered |= answered;
        if client_source == CLIENT_BY_SYN && !c.fan_counted {
            c.fan_counted = true;
            let (server, port, proto) = (c.key.server, c.key.server_port, c.key.proto);
            self.fan_in.add(&server, port, proto);
        }

        let flow = Flow {
            key: *key,
            packets: stats.packets,
            bytes: stats.bytes,
            first_ns,
            last_ns,
            tcp_flags: stats.tcp_flags as u16,
            client,
            client_source,
            role_tries: 0,
            in_use: true,
            answered,
            counted_side: admission::SIDE_NONE,
            born: 0,
            conv: conv_idx,
            tunnel: None,
            host: None,
        };
        match found {
            Some(i) => {
                let f = &mut self.flows.items[i as usize];
                let first = f.first_ns.min(first_ns);
                let last = f.last_ns.max(last_ns);
                let tunnel = f.tunnel.take();
                let host = f.host.take();
                *f = Flow {
                    first_ns: first,
                    last_ns: last,
                    role_tries: f.role_tries,
                    counted_side: f.counted_side,
                    born: f.born,
                    tunnel,
                    host,
                    ..flow
                };
                if answered && !was_answered {
                    self.uncount(i);
                }
                // A flow that moved to another conversation takes its tunnel along.
                if joined {
                    if let Some(t) = &self.flows.items[i as usize].tunnel {
                        self.convs.items[conv_idx as usize].tunnel = Some(Box::new((*key, **t)));
                    }
                    if let Some(h) = &self.flows.items[i as usize].host {
                        self.convs.items[conv_idx as usize].host = Some(h.clone());
                    }
                }
            }
            None => {
                self.insert_flow(flow);
                self.counters.flows_created += 1;
            }
        }
    }

    /// Puts a new flow in the slab and the index.
    fn insert_flow(&mut self, flow: Flow) -> u32 {
        let key = flow.key;
        let i = self.flows.insert(flow);
        let items = &self.flows.items;
        let hasher = &self.hasher;
        self.flow_index
            .insert_unique(hasher.hash_one(key), i, |&j| {
                hasher.hash_one(items[j as usize].key)
            });
        self.track(i);
        i
    }

    /// Puts a new conversation in the slab and the index.
    fn insert_conv(&mut self, conv: Conversation) -> u32 {
        let key = conv.key;
        let i = self.convs.insert(conv);
        let items = &self.convs.items;
        let hasher = &self.hasher;
        self.conv_index
            .insert_unique(hasher.hash_one(key), i, |&j| {
                hasher.hash_one(items[j as usize].key)
            });
        i
    }

    /// The conversation a new flow starting at `first_ns` joins (created if needed), or
    /// `None` when the conversation table is full.
    #[inline]
    fn join_conversation(&mut self, key: ConvKey, first_ns: u64) -> Option<u32> {
        let gap = self.cfg.conversation_gap.as_nanos();
        if let Some(i) = self.find_conv(&key) {
            let c = &mut self.convs.items[i as usize];
            // A conversation idle for longer than the gap tolerance starts afresh (it would
            // be ended at the next tick; a new flow must not inherit its clock).
            if c.open_flows == 0
                && c.idle_since_ns
                    .is_some_and(|idle| first_ns > idle.saturating_add(gap))
            {
                let counted = c.fan_counted;
                *c = new_conversation(key, first_ns);
                c.fan_counted = counted;
                self.counters.conversations_created += 1;
            }
            return Some(i);
        }
        if self.convs.len() >= self.cfg.max_conversations {
            return None;
        }
        let i = self.insert_conv(new_conversation(key, first_ns));
        self.counters.conversations_created += 1;
        Some(i)
    }

    fn remove_flow(&mut self, i: u32) -> Flow {
        let key = self.flows.items[i as usize].key;
        if let Ok(entry) = self
            .flow_index
            .find_entry(self.hasher.hash_one(key), |&j| j == i)
        {
            entry.remove();
        }
        self.uncount(i);
        let f = &mut self.flows.items[i as usize];
        f.in_use = false;
        self.flows.free.push(i);
        f.clone()
    }

    fn remove_conv(&mut self, i: u32) -> Conversation {
        let key = self.convs.items[i as usize].key;
        if let Ok(entry) = self
            .conv_index
            .find_entry(self.hasher.hash_one(key), |&j| j == i)
        {
            entry.remove();
        }
        let c = &mut self.convs.items[i as usize];
        c.in_use = false;
        self.convs.free.push(i);
        let c = c.clone();
        if c.fan_counted {
            self.fan_in
                .remove(&c.key.server, c.key.server_port, c.key.proto);
        }
        c
    }

    /// The idle timeout that applies to a flow now.
    fn timeout_ns(&self, f: &Flow) -> u64 {
        match f.key.proto {
            TCP => {
                let (lo, hi) = ((f.tcp_flags & 0xff) as u8, (f.tcp_flags >> 8) as u8);
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

    /// Since when a flow counts as idle: its last packet, or for an answered flow that is not
    /// closing, the last time the table evicted an unanswered flow if that is later. Under a
    /// flood the kernel map loses established entries before the agent reads their packets
    /// (see `admission`), so silence then says nothing about the session: it must not idle
    /// out for what the sensor could not see. Refusals alone do not count: a table full of
    /// answered flows must still age them, or it would refuse for ever.
    fn idle_from(&self, f: &Flow) -> u64 {
        let closing = f.key.proto == TCP && {
            let (lo, hi) = ((f.tcp_flags & 0xff) as u8, (f.tcp_flags >> 8) as u8);
            (lo | hi) & RST != 0 || (lo & FIN != 0 && hi & FIN != 0)
        };
        match self.counters.last_eviction_ns {
            Some(p) if f.answered && !closing => f.last_ns.max(p),
            _ => f.last_ns,
        }
    }

    /// Ends flows idle past their timeout and conversations idle past the gap tolerance.
    pub fn expire(&mut self, now: u64) -> Ended {
        let mut ended = Ended {
            // Flows evicted since the last tick ended too: the source forgets them alike.
            flows: std::mem::take(&mut self.admission.evicted),
            conversations: Vec::new(),
        };
        let expired: Vec<u32> = self
            .flows
            .items
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                f.in_use && now.saturating_sub(self.idle_from(f)) >= self.timeout_ns(f)
            })
            .map(|(i, _)| i as u32)
            .collect();
        for i in expired {
            let f = self.remove_flow(i);
            self.leave_conversation(&f);
            ended.flows.push(f.record());
        }
        let gap = self.cfg.conversation_gap.as_nanos();
        // Near full, conversations of failed attempts only do not wait out the gap: a flood
        // outlasting the unanswered flows' timeout must not fill the conversation table.
        let max = self.cfg.max_conversations;
        let crowded = self.convs.len() >= max - max / 8;
        let done: Vec<(u32, bool)> = self
            .convs
            .items
            .iter()
            .enumerate()
            .filter(|(_, c)| c.in_use && c.open_flows == 0)
            .filter_map(|(i, c)| {
                let past_gap = c
                    .idle_since_ns
                    .is_some_and(|idle| now.saturating_sub(idle) > gap);
                (past_gap || (crowded && !c.answered)).then_some((i as u32, past_gap))
            })
            .collect();
        for (i, past_gap) in done {
            ended.conversations.push(self.remove_conv(i));
            self.counters.conversations_ended += 1;
            if !past_gap {
                self.counters.conversations_evicted += 1;
            }
        }
        ended
    }

    /// A flow removed from the table (expired or evicted) leaves its conversation.
    fn leave_conversation(&mut self, f: &Flow) {
        self.counters.flows_ended += 1;
        let c = &mut self.convs.items[f.conv as usize];
        c.open_flows = c.open_flows.saturating_sub(1);
        if c.open_flows == 0 {
            c.idle_since_ns = Some(c.last_ns);
        }
        c.dirty = true;
        // Failed attempts (no answer) are not connections for periodicity, as in RITA.
        if f.answered {
            c.connections
                .get_or_insert_with(|| Box::new(SampleRing::new(CONNECTION_SAMPLES)))
                .push(f.first_ns, f.bytes[0] + f.bytes[1]);
        }
    }
}

fn new_conversation(key: ConvKey, start: u64) -> Conversation {
    Conversation {
        key,
        start_ns: start,
        last_ns: start,
        client_packets: 0,
        client_bytes: 0,
        server_packets: 0,
        server_bytes: 0,
        idle_since_ns: None,
        open_flows: 0,
        flows_seen: 0,
        client_port: 0,
        client_from: CLIENT_BY_FIRST_PACKET,
        dirty: true,
        in_use: true,
        fan_counted: false,
        answered: false,
        connections: None,
        tunnel: None,
        host: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::HumanDuration;
    use sensor_common::ipv4_mapped;

    pub(super) const S: u64 = 1_000_000_000;

    pub(super) fn key(cport: u16) -> (FlowKey, usize) {
        FlowKey::canonical(
            &ipv4_mapped([10, 0, 0, 1]),
            cport,
            &ipv4_mapped([10, 0, 0, 2]),
            3333,
            TCP,
        )
    }

    pub(super) fn table() -> FlowTable {
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

    /// A pool 74.84.128.158:`sport` and a miner 10.0.2.15:`cport`: (key, direction index of
    /// the miner's packets, the miner's `client` code).
    fn miner(cport: u16, sport: u16) -> (FlowKey, usize, u8) {
        let (k, d) = FlowKey::canonical(
            &ipv4_mapped([10, 0, 2, 15]),
            cport,
            &ipv4_mapped([74, 84, 128, 158]),
            sport,
            TCP,
        );
        (k, d, if d == 0 { CLIENT_LO } else { CLIENT_HI })
    }

    fn only_conv(t: &FlowTable) -> (ConvKey, u8, u64) {
        assert_eq!(t.conversation_count(), 1);
        let c = t.conversations().next().expect("conversation");
        (c.key, c.client_from, c.start_ns)
    }

    #[test]
    fn without_a_syn_the_port_rule_names_the_ephemeral_side() {
        let mut t = table();
        let (k, d, _) = miner(53310, 3333);
        // The pool speaks first, mid-stream.
        t.add_packet(&k, 1 - d, 1307, ACK, 0);
        let (key, from, _) = only_conv(&t);
        assert_eq!(key.client, ipv4_mapped([10, 0, 2, 15]));
        assert_eq!(key.server_port, 3333);
        assert_eq!(from, CLIENT_BY_PORT);
        let rec = t.flows().next().expect("flow");
        assert_eq!(rec.stats.client_source, CLIENT_BY_PORT);
        assert_eq!(rec.endpoints().0.port, 53310);
    }

    #[test]
    fn ports_that_say_nothing_leave_the_first_packet() {
        let mut t = table();
        let (k, d, _) = miner(40000, 50000);
        t.add_packet(&k, 1 - d, 100, ACK, 0);
        let (key, from, _) = only_conv(&t);
        assert_eq!(key.client, ipv4_mapped([74, 84, 128, 158]), "first sender");
        assert_eq!(from, CLIENT_BY_FIRST_PACKET);
    }

    #[test]
    fn payload_evidence_moves_the_flow_and_keeps_its_start() {
        let mut t = table();
        let (k, d, miner_code) = miner(40000, 50000);
        t.add_packet(&k, 1 - d, 100, ACK, 5 * S);
        t.add_packet(&k, d, 60, ACK, 6 * S);
        assert_eq!(only_conv(&t).0.client, ipv4_mapped([74, 84, 128, 158]));
        assert!(t.set_client(&k, miner_code, CLIENT_BY_PAYLOAD), "moved");
        let (key, from, start) = only_conv(&t);
        assert_eq!(key.client, ipv4_mapped([10, 0, 2, 15]));
        assert_eq!((from, start), (CLIENT_BY_PAYLOAD, 5 * S));
        let c = t.conversation(&key).expect("conversation");
        assert_eq!(
            (c.client_bytes, c.server_bytes, c.open_flows, c.flows_seen),
            (60, 100, 1, 1)
        );
        let ghosts = t.take_abandoned();
        assert_eq!(
            ghosts.len(),
            1,
            "the wrong orientation's conversation is gone"
        );
        assert_eq!(ghosts[0].key.client, ipv4_mapped([74, 84, 128, 158]));
        // Later packets count in the right orientation, and nothing weaker moves it back.
        t.add_packet(&k, 1 - d, 40, ACK, 7 * S);
        assert!(!t.set_client(&k, miner_code ^ 1, CLIENT_BY_PORT));
        assert!(
            !t.set_client(&k, miner_code ^ 1, CLIENT_BY_PAYLOAD),
            "decided once"
        );
        let c = t.conversation(&key).expect("conversation");
        assert_eq!((c.server_bytes, c.last_ns), (140, 7 * S));
    }

    #[test]
    fn payload_evidence_outranks_the_port_rule_and_confirms_it() {
        let mut t = table();
        let (k, d, miner_code) = miner(53310, 3333);
        t.add_packet(&k, 1 - d, 1307, ACK, 0);
        assert!(
            !t.set_client(&k, miner_code, CLIENT_BY_PAYLOAD),
            "same client"
        );
        assert_eq!(only_conv(&t).1, CLIENT_BY_PAYLOAD);
        assert!(t.take_abandoned().is_empty());
    }

    #[test]
    fn a_later_syn_always_wins() {
        let mut t = table();
        let (k, d, miner_code) = miner(40000, 50000);
        t.add_packet(&k, d, 100, ACK, 0);
        // Payload said the other side is the client ...
        assert!(t.set_client(&k, miner_code ^ 1, CLIENT_BY_PAYLOAD));
        // ... but the miner's SYN (port reuse, a retransmission) settles it.
        t.add_packet(&k, d, 60, SYN, S);
        let (key, from, start) = only_conv(&t);
        assert_eq!(key.client, ipv4_mapped([10, 0, 2, 15]));
        assert_eq!((from, start), (CLIENT_BY_SYN, 0));
        assert!(
            !t.set_client(&k, miner_code ^ 1, CLIENT_BY_PAYLOAD),
            "nothing beats a SYN"
        );
        // A kernel snapshot without a SYN does not undo it either.
        let rec = t.flows().next().expect("flow");
        let stale = FlowStats {
            client: miner_code ^ 1,
            client_source: CLIENT_BY_FIRST_PACKET,
            packets: [rec.stats.packets[0] + 1, rec.stats.packets[1] + 1],
            ..rec.stats
        };
        t.update(&k, &stale, 0, 2 * S);
        assert_eq!(only_conv(&t).0.client, ipv4_mapped([10, 0, 2, 15]));
    }

    #[test]
    fn kernel_snapshots_get_the_same_roles() {
        let mut t = table();
        let (k, d, miner_code) = miner(53310, 3333);
        // The kernel says: the pool sent the first packet.
        let mut s = FlowStats {
            client: miner_code ^ 1,
            client_source: CLIENT_BY_FIRST_PACKET,
            ..FlowStats::default()
        };
        s.packets[1 - d] = 1;
        s.bytes[1 - d] = 1307;
        t.update(&k, &s, 0, S);
        let (key, from, _) = only_conv(&t);
        assert_eq!(
            (key.client, from),
            (ipv4_mapped([10, 0, 2, 15]), CLIENT_BY_PORT)
        );
        assert_eq!(t.conversation(&key).map(|c| c.server_bytes), Some(1307));
        // The same snapshot again changes nothing.
        t.update(&k, &s, 0, S);
        assert_eq!(t.conversation(&key).map(|c| c.server_bytes), Some(1307));
    }

    #[test]
    fn an_endpoint_many_clients_reached_with_a_syn_is_the_server_by_fan_in() {
        let mut t = table();
        let server = ipv4_mapped([10, 0, 0, 2]);
        let flow = |client: u8, cport: u16| {
            FlowKey::canonical(&ipv4_mapped([10, 0, 0, client]), cport, &server, 40333, TCP)
        };
        // Two clients opened with a SYN: not yet enough.
        for c in [11, 12] {
            let (k, d) = flow(c, 50000);
            t.add_packet(&k, d, 60, SYN, 0);
        }
        let (k, d) = flow(20, 50001);
        t.add_packet(&k, 1 - d, 100, ACK, S);
        assert_eq!(
            t.flows()
                .find(|f| f.key == k)
                .map(|f| f.stats.client_source),
            Some(CLIENT_BY_FIRST_PACKET)
        );
        let (k3, d3) = flow(13, 50000);
        t.add_packet(&k3, d3, 60, SYN, 2 * S);
        // Mid-stream, both ports ephemeral, the server speaks first: fan-in names the client.
        let (k, d) = flow(21, 50002);
        t.add_packet(&k, 1 - d, 100, ACK, 3 * S);
        let rec = t.flows().find(|f| f.key == k).expect("flow");
        assert_eq!(rec.stats.client_source, CLIENT_BY_FAN_IN);
        assert_eq!(rec.endpoints().0.addr, ipv4_mapped([10, 0, 0, 21]));
        // Payload evidence outranks it.
        let client_code = rec.stats.client;
        assert!(t.set_client(&k, client_code ^ 1, CLIENT_BY_PAYLOAD));
        // Fan-in is forgotten with the conversations that made it.
        let ended = t.expire(10_000 * S);
        assert!(!ended.conversations.is_empty());
        let server_count = t.fan_in.get(&server, 40333, TCP);
        assert_eq!(server_count, 0);
        let (k, d) = flow(22, 50003);
        t.add_packet(&k, 1 - d, 100, ACK, 10_001 * S);
        assert_eq!(
            t.flows()
                .find(|f| f.key == k)
                .map(|f| f.stats.client_source),
            Some(CLIENT_BY_FIRST_PACKET)
        );
    }

    #[test]
    fn the_fan_in_sketch_counts_up_and_down_and_saturates() {
        let mut f = FanIn {
            counts: Vec::new(),
            hasher: RandomState::new(),
        };
        let a = ipv4_mapped([10, 0, 0, 2]);
        assert_eq!(f.get(&a, 40333, TCP), 0);
        f.remove(&a, 40333, TCP);
        assert!(
            f.counts.is_empty(),
            "nothing allocated before the first count"
        );
        for _ in 0..3 {
            f.add(&a, 40333, TCP);
        }
        assert_eq!(f.get(&a, 40333, TCP), 3);
        assert_eq!(f.get(&a, 40334, TCP), 0, "another port is another endpoint");
        f.remove(&a, 40333, TCP);
        assert_eq!(f.get(&a, 40333, TCP), 2);
        for _ in 0..70_000 {
            f.add(&a, 1, UDP);
        }
        f.remove(&a, 1, UDP);
        assert_eq!(
            f.get(&a, 1, UDP),
            u16::MAX as u32,
            "saturated counters stay"
        );
    }

    #[test]
    fn a_table_without_roles_keeps_the_datapath_rule() {
        let mut t = FlowTable::without_roles(FlowConfig::default());
        let (k, d, _) = miner(53310, 3333);
        t.add_packet(&k, 1 - d, 1307, ACK, 0);
        let rec = t.flows().next().expect("flow");
        assert_eq!(rec.stats.client_source, CLIENT_BY_FIRST_PACKET);
        assert_eq!(rec.endpoints().0.port, 3333, "the first sender");
        t.add_packet(&k, d, 60, SYN, S);
        let rec = t.flows().next().expect("flow");
        assert_eq!(rec.stats.client_source, CLIENT_BY_SYN);
        assert_eq!(rec.endpoints().0.port, 53310);
    }

    #[test]
    fn role_evidence_is_wanted_a_bounded_number_of_times() {
        let mut t = table();
        let (k, d, _) = miner(40000, 50000);
        t.add_packet(&k, d, 100, ACK, 0);
        let wanted: Vec<bool> = (0..MAX_ROLE_TRIES + 2)
            .map(|_| t.payload_orientation(&k).expect("flow").2)
            .collect();
        assert_eq!(
            wanted.iter().filter(|w| **w).count(),
            MAX_ROLE_TRIES as usize
        );
        let (k2, d2, _) = miner(40001, 50000);
        t.add_packet(&k2, d2, 100, SYN, 0);
        assert!(
            !t.payload_orientation(&k2).expect("flow").2,
            "a SYN decided"
        );
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_it_drops() {
        let mut t = FlowTable::new(FlowConfig {
            max_flows: 2,
            ..FlowConfig::default()
        });
        // Unanswered flows make room for newer ones (the oldest goes) ...
        for p in 0..5 {
            let (k, d) = key(40000 + p);
            t.add_packet(&k, d, 60, SYN, 0);
        }
        assert_eq!((t.flow_count(), t.counters.flows_evicted), (2, 3));
        // ... answered ones never do: a full table of them refuses, counted.
        for p in 0..2 {
            let (k, d) = key(40003 + p);
            t.add_packet(&k, 1 - d, 60, SYN | ACK, S);
        }
        let (k, d) = key(40010);
        t.add_packet(&k, d, 60, SYN, 2 * S);
        assert_eq!((t.flow_count(), t.counters.flows_dropped), (2, 1));
        assert_eq!(t.take_refused(), vec![k]);
    }
}
