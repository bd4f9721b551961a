//! Admission into a full flow table, so that a flood of flows nobody answers (spoofed SYNs,
//! scans) can neither push established sessions out nor keep new ones from coming in.
//!
//! A flow is *answered* once both sides have sent; the mark is sticky, so a session whose
//! kernel entry a flood evicted and whose next packet re-created it is still the answered
//! flow it was. Near full (at least 7/8 of `flow.max_flows`):
//!
//! 1. a new unanswered flow is refused when its sender already has
//!    `flow.unanswered_per_source` unanswered flows in the table (counted per address in a
//!    fixed-size sketch), so one source cannot take the table;
//! 2. full, the oldest unanswered flow is evicted to admit the new one, answered or not (a
//!    queue in admission order, checked lazily: a flow answered meanwhile is skipped); with
//!    no unanswered flow left, the new flow is refused;
//! 3. a conversation that never had an answered flow goes with its last flow when that is
//!    evicted (its alarms are closed as for any conversation that ended).
//!
//! Refused and evicted flows are counted with the time of the last one
//! (`TableCounters::last_pressure_ns`), which the alarm layer turns into `sensor_degraded`.
//! Their keys go back to the source like ended flows (live: deleted from the kernel map, which
//! relieves the kernel's LRU map too), so a refused kernel entry is not offered again at every
//! poll.
//!
//! It must never evict an answered flow, and costs a constant amount of work per new flow
//! (amortised) and nothing while the table has room.

use std::collections::VecDeque;

use sensor_common::{Addr, FlowKey, FlowStats};

use super::{FanIn, FlowTable};
use crate::flow::record::FlowRecord;

/// `Flow::counted_side`: not counted, counted under `addr_lo`, under `addr_hi`.
pub(super) const SIDE_NONE: u8 = 0;
const SIDE_LO: u8 = 1;
const SIDE_HI: u8 = 2;

/// Keys of refused flows kept for the source between two ticks, at most; beyond that they
/// are only counted (live, their kernel entries are then offered again at the next poll).
const MAX_REFUSED_KEYS: usize = 65_536;

pub(super) struct Admission {
    /// Unanswered flows in admission order: (slab index, creation number).
    queue: VecDeque<(u32, u32)>,
    /// Unanswered flows per sending address.
    per_source: FanIn,
    next_born: u32,
    refused: Vec<FlowKey>,
    /// Flows evicted since the last tick, handed out with the flows that expired.
    pub(super) evicted: Vec<FlowRecord>,
}

impl Admission {
    pub(super) fn new() -> Self {
        Admission {
            queue: VecDeque::new(),
            per_source: FanIn::new(),
            next_born: 0,
            refused: Vec::new(),
            evicted: Vec::new(),
        }
    }
}

/// The side of an unanswered flow that sent, `SIDE_NONE` if both sent (or neither).
fn sending_side(packets: &[u64; 2]) -> u8 {
    match (packets[0] > 0, packets[1] > 0) {
        (true, false) => SIDE_LO,
        (false, true) => SIDE_HI,
        _ => SIDE_NONE,
    }
}

fn side_addr(key: &FlowKey, side: u8) -> &Addr {
    if side == SIDE_LO {
        &key.addr_lo
    } else {
        &key.addr_hi
    }
}

impl FlowTable {
    /// Unanswered flows the table holds for `addr` as a sender (an estimate from above).
    pub fn unanswered_from(&self, addr: &Addr) -> u32 {
        self.admission.per_source.get(addr, 0, 0)
    }

    /// Keys of the flows refused since the last call (for the source to delete).
    pub fn take_refused(&mut self) -> Vec<FlowKey> {
        std::mem::take(&mut self.admission.refused)
    }

    /// Whether a new flow with counters `stats`, offered at `now`, may enter the table;
    /// evicts an unanswered flow to make room when full. A refusal is counted.
    pub(super) fn admit(&mut self, key: &FlowKey, stats: &FlowStats, now: u64) -> bool {
        let max = self.cfg.max_flows;
        let len = self.flows.len();
        if len < max - max / 8 {
            return true;
        }
        let side = sending_side(&stats.packets);
        let over_budget = side != SIDE_NONE
            && self.unanswered_from(side_addr(key, side)) >= self.cfg.unanswered_per_source;
        if !over_budget && (len < max || self.evict_oldest_unanswered(now)) {
            return true;
        }
        self.counters.flows_dropped += 1;
        self.refused(key, now);
        false
    }

    /// Notes a refusal at `now` (the caller counts it under its reason) and keeps the key for
    /// the source.
    pub(super) fn refused(&mut self, key: &FlowKey, now: u64) {
        self.pressure(now);
        if self.admission.refused.len() < MAX_REFUSED_KEYS {
            self.admission.refused.push(*key);
        }
    }

    fn pressure(&mut self, now: u64) {
        self.counters.first_pressure_ns.get_or_insert(now);
        let last = &mut self.counters.last_pressure_ns;
        *last = Some(last.map_or(now, |t| t.max(now)));
    }

    /// Evicts the unanswered flow admitted first; whether there was one.
    fn evict_oldest_unanswered(&mut self, now: u64) -> bool {
        while let Some((i, born)) = self.admission.queue.pop_front() {
            let f = &self.flows.items[i as usize];
            if !f.in_use || f.born != born || f.answered {
                continue;
            }
            let f = self.remove_flow(i);
            self.leave_conversation(&f);
            self.counters.flows_evicted += 1;
            self.pressure(now);
            let last = &mut self.counters.last_eviction_ns;
            *last = Some(last.map_or(now, |t| t.max(now)));
            let c = &self.convs.items[f.conv as usize];
            if c.open_flows == 0 && !c.answered {
                // Failed attempts only: nothing to keep it for (it would hold a slot of the
                // conversation table for the whole gap tolerance).
                let gone = self.remove_conv(f.conv);
                self.counters.conversations_ended += 1;
                self.counters.conversations_evicted += 1;
                self.abandoned.push(gone);
            }
            self.admission.evicted.push(f.record());
            return true;
        }
        false
    }

    /// Registers a flow just put in the table at slab index `i`: an unanswered one is counted
    /// under its sender and queued for eviction.
    pub(super) fn track(&mut self, i: u32) {
        let born = self.admission.next_born;
        self.admission.next_born = born.wrapping_add(1);
        let live = self.flows.len();
        let f = &mut self.flows.items[i as usize];
        f.born = born;
        f.counted_side = SIDE_NONE;
        if f.answered {
            return;
        }
        let side = sending_side(&f.packets);
        if side != SIDE_NONE {
            f.counted_side = side;
            let addr = *side_addr(&f.key, side);
            self.admission.per_source.add(&addr, 0, 0);
        }
        let a = &mut self.admission;
        a.queue.push_back((i, born));
        // Entries of flows that expired or were answered stay until popped; drop them when
        // they outnumber twice the flows in the table, so the queue stays bounded by it (and
        // the clean-up costs a constant per entry, amortised).
        if a.queue.len() > live.max(1024).saturating_mul(2) {
            let items = &self.flows.items;
            a.queue.retain(|&(j, b)| {
                let f = &items[j as usize];
                f.in_use && f.born == b && !f.answered
            });
        }
    }

    /// Takes the flow at slab index `i` out of the per-source counts (it was answered, or
    /// leaves the table).
    pub(super) fn uncount(&mut self, i: u32) {
        let f = &mut self.flows.items[i as usize];
        let side = std::mem::replace(&mut f.counted_side, SIDE_NONE);
        if side != SIDE_NONE {
            let addr = *side_addr(&f.key, side);
            self.admission.per_source.remove(&addr, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::S;
    use super::*;
    use crate::flow::{
        settings::FlowConfig,
        table::{ConvKey, TCP},
    };
    use crate::units::HumanDuration;
    use sensor_common::{ipv4_mapped, CLIENT_BY_FIRST_PACKET, CLIENT_BY_SYN, CLIENT_HI, CLIENT_LO};

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    fn table(max_flows: usize, per_source: u32) -> FlowTable {
        FlowTable::new(FlowConfig {
            max_flows,
            unanswered_per_source: per_source,
            tcp_idle_timeout: HumanDuration::secs(60),
            tcp_unestablished_timeout: HumanDuration::secs(5),
            ..FlowConfig::default()
        })
    }

    /// A spoofed SYN from 10.(n>>16).(n>>8).n to the server's port 80.
    fn flood_syn(t: &mut FlowTable, n: u32, ts: u64) -> FlowKey {
        let src = ipv4_mapped([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
        let (k, d) = FlowKey::canonical(&src, 1024 + (n % 50000) as u16, &server(), 80, TCP);
        t.add_packet(&k, d, 40, SYN, ts);
        k
    }

    fn server() -> Addr {
        ipv4_mapped([192, 168, 0, 2])
    }

    /// A client 192.168.0.1:`cport` -> server:50000 (ports that name no side): the key and
    /// the client's direction.
    fn session(cport: u16) -> (FlowKey, usize) {
        FlowKey::canonical(&ipv4_mapped([192, 168, 0, 1]), cport, &server(), 50000, TCP)
    }

    fn handshake(t: &mut FlowTable, cport: u16, ts: u64) -> FlowKey {
        let (k, d) = session(cport);
        t.add_packet(&k, d, 60, SYN, ts);
        t.add_packet(&k, 1 - d, 60, SYN | ACK, ts);
        t.add_packet(&k, d, 52, ACK, ts);
        k
    }

    #[test]
    fn a_flood_never_displaces_an_answered_flow_and_new_sessions_still_get_in() {
        let mut t = table(64, 256);
        let quiet = handshake(&mut t, 40000, 0);
        for n in 0..10_000 {
            flood_syn(&mut t, n, S);
        }
        assert_eq!(t.flow_count(), 64);
        assert!(t.orientation(&quiet).is_some(), "the session stays");
        assert_eq!(
            t.counters.flows_dropped, 0,
            "room was made, nothing refused"
        );
        assert_eq!(t.counters.flows_evicted, 10_000 - 63);
        // Each flood flow was its own conversation of failed attempts: gone with it.
        assert_eq!(t.conversation_count(), 64);
        assert_eq!(t.counters.last_pressure_ns, Some(S));
        // A new session during the flood takes the place of the oldest flood flow.
        let late = handshake(&mut t, 40001, 2 * S);
        assert!(t.orientation(&late).is_some());
        let ended = t.expire(2 * S);
        assert_eq!(
            ended.flows.len() as u64,
            t.counters.flows_evicted,
            "evicted flows ended"
        );
        assert!(ended.flows.iter().all(|f| f.key != quiet && f.key != late));
        assert_eq!(
            t.take_abandoned().len() as u64,
            t.counters.conversations_evicted
        );
    }

    #[test]
    fn the_eviction_queue_stays_bounded_by_the_flows_in_the_table() {
        let mut t = table(usize::MAX, 256);
        for n in 0..20_000 {
            flood_syn(&mut t, n, u64::from(n) * S);
            t.expire(u64::from(n) * S);
        }
        assert!(t.flow_count() <= 6, "{}", t.flow_count());
        assert!(
            t.admission.queue.len() <= 2048 + 1,
            "{}",
            t.admission.queue.len()
        );
    }

    #[test]
    fn a_table_full_of_answered_flows_refuses_and_names_the_refused() {
        let mut t = table(8, 256);
        for p in 0..8 {
            handshake(&mut t, 40000 + p, 0);
        }
        let k = flood_syn(&mut t, 1, S);
        let late = handshake(&mut t, 41000, 2 * S);
        assert_eq!(t.flow_count(), 8);
        assert!(t.orientation(&late).is_none());
        // The SYN-only flood flow once, the late session's three packets each.
        assert_eq!((t.counters.flows_dropped, t.counters.flows_evicted), (4, 0));
        assert_eq!(t.take_refused()[0], k);
        assert_eq!(t.counters.first_pressure_ns, Some(S));
        assert_eq!(t.counters.last_pressure_ns, Some(2 * S));
        // Refusals alone do not keep answered flows from ageing: the table frees itself.
        flood_syn(&mut t, 2, 61 * S);
        assert_eq!(t.expire(61 * S).flows.len(), 8);
        assert_eq!(t.flow_count(), 0);
    }

    #[test]
    fn near_full_one_source_gets_its_budget_of_unanswered_flows_and_no_more() {
        let mut t = table(64, 4);
        let scanner = ipv4_mapped([172, 16, 0, 9]);
        for port in 0..100u16 {
            let (k, d) = FlowKey::canonical(&scanner, 40000, &server(), 1 + port, TCP);
            t.add_packet(&k, d, 40, SYN, S);
        }
        // Below 7/8 of the table (56) nobody is refused; from there the source is over its
        // budget.
        assert_eq!(t.flow_count(), 56);
        assert_eq!(t.counters.flows_dropped, 44);
        assert_eq!(t.unanswered_from(&scanner), 56);
        // Others still get in, evicting the scanner's oldest attempts once full.
        for n in 0..20 {
            flood_syn(&mut t, n, 2 * S);
        }
        assert_eq!(t.flow_count(), 64);
        assert_eq!(t.counters.flows_evicted, 12);
        assert_eq!(t.unanswered_from(&scanner), 44);
        // An answered flow is uncounted from its sender.
        let (k, d) = FlowKey::canonical(&scanner, 40000, &server(), 56, TCP);
        t.add_packet(&k, 1 - d, 40, SYN | ACK, 3 * S);
        assert_eq!(t.unanswered_from(&scanner), 43);
    }

    /// Kernel snapshots of a session 192.168.0.1:40000 -> server:50000 opened with a SYN,
    /// then its entry re-created by the server's packet: the roles and the start stay, the
    /// re-creation is counted with the time the session went unobserved.
    #[test]
    fn a_recreated_entry_whose_first_packet_is_the_servers_keeps_the_client() {
        let mut t = table(64, 256);
        let (k, d) = session(40000);
        let client = if d == 0 { CLIENT_LO } else { CLIENT_HI };
        let mut s = FlowStats {
            client,
            client_source: CLIENT_BY_SYN,
            ..FlowStats::default()
        };
        s.packets[d] = 10;
        s.packets[1 - d] = 8;
        t.update(&k, &s, 0, 20 * S);
        let want = t.orientation(&k).expect("flow").0;
        assert_eq!(want.client, ipv4_mapped([192, 168, 0, 1]));
        // Evicted; the server's keepalive re-creates it: the kernel names the server.
        let mut r = FlowStats {
            client: client ^ 1,
            client_source: CLIENT_BY_FIRST_PACKET,
            ..FlowStats::default()
        };
        r.packets[1 - d] = 1;
        t.update(&k, &r, 45 * S, 45 * S);
        let c = t.conversation(&want).expect("same conversation");
        assert_eq!((c.start_ns, c.client_packets, c.server_packets), (0, 10, 9));
        assert_eq!(c.client_from, CLIENT_BY_SYN);
        assert_eq!(
            (t.counters.counter_resets, t.counters.answered_recreated),
            (1, 1)
        );
        assert_eq!(t.counters.unobserved_ns, 25 * S);
        // Re-created again, and read only after its counters passed the old ones: its first
        // packet, later than any the table knew, tells.
        let mut r2 = r;
        r2.packets = [0; 2];
        r2.packets[d] = 20;
        r2.packets[1 - d] = 20;
        t.update(&k, &r2, 50 * S, 60 * S);
        let c = t.conversation(&want).expect("same conversation");
        assert_eq!((c.client_packets, c.server_packets), (30, 29));
        assert_eq!(t.counters.answered_recreated, 2);
        assert_eq!(t.conversation_count(), 1, "no reversed conversation");
    }

    /// The flow itself gone (expired while the conversation waits out its gap), the same
    /// 5-tuple back with the server's packet first: the conversation's client stands.
    #[test]
    fn a_flow_back_without_its_flow_entry_takes_the_conversations_client() {
        let mut t = table(64, 256);
        let k = handshake(&mut t, 40000, 0);
        let conv: ConvKey = t.orientation(&k).expect("flow").0;
        assert_eq!(t.expire(100 * S).flows.len(), 1);
        assert!(t.orientation(&k).is_none());
        let (_, d) = session(40000);
        t.add_packet(&k, 1 - d, 100, ACK, 110 * S);
        let (back, _) = t.orientation(&k).expect("flow");
        assert_eq!(back, conv);
        let c = t.conversation(&conv).expect("conversation");
        assert_eq!(
            (c.start_ns, c.flows_seen, c.client_from),
            (0, 2, CLIENT_BY_SYN)
        );
    }
}
