//! Types shared between the kernel datapath (`sensor-ebpf`) and the agent.
//!
//! Everything here is `#![no_std]`, `#[repr(C)]` with explicit padding, and uses integers
//! instead of `bool`/enums in map values, because the same bytes are written by the kernel
//! program and read by user space: a layout change on one side only must fail to compile
//! (see the size assertions), never silently misread a map.
//!
//! The pure logic that both sides must agree on exactly (the canonical bidirectional flow key)
//! also lives here, so the agent's own packet parser and the kernel produce identical keys.
#![no_std]

pub mod process;

/// Maximum number of VLAN tags (802.1Q / 802.1ad) the datapath walks.
pub const MAX_VLAN_TAGS: usize = 2;
/// Maximum number of IPv6 extension headers the datapath walks before giving up.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Maximum number of MPLS labels the datapath walks to find the bottom of the stack.
pub const MAX_MPLS_LABELS: usize = 4;
/// Largest offset in a frame at which the inside of an IP tunnel may start; a tunnel whose
/// inner level starts later is counted as truncated (only outer IPv6 headers with kilobytes
/// of extension headers come near it).
pub const MAX_INNER_OFFSET: usize = 2047;

/// IPv4 addresses are stored as IPv4-mapped IPv6 (`::ffff:a.b.c.d`); this is the third
/// 32-bit word of such an address, in the native representation of the bytes `00 00 ff ff`.
pub const IPV4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// An address as four 32-bit words holding the network-order bytes as loaded from the packet.
pub type Addr = [u32; 4];

/// Canonical bidirectional 5-tuple: both directions of a conversation map to the same key.
///
/// The endpoint that sorts lower (address words, then port) is `lo`. Ports are in host byte
/// order; they are zero for protocols without ports and for ICMP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FlowKey {
    pub addr_lo: Addr,
    pub addr_hi: Addr,
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    /// Padding as a byte and an aligned u16 rather than `[u8; 3]`: the BPF target builds a
    /// 3-byte array with a call to `memset` (18 instructions on every packet's key).
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Direction index of a packet sent by the `lo` endpoint (counters index 0).
pub const DIR_LO_TO_HI: usize = 0;
/// Direction index of a packet sent by the `hi` endpoint (counters index 1).
pub const DIR_HI_TO_LO: usize = 1;

/// `FlowStats::client`: the `lo` endpoint is the client.
pub const CLIENT_LO: u8 = 0;
/// `FlowStats::client`: the `hi` endpoint is the client.
pub const CLIENT_HI: u8 = 1;

/// `FlowStats::client_source`: the client is the sender of the first packet seen.
pub const CLIENT_BY_FIRST_PACKET: u8 = 0;
/// `FlowStats::client_source`: the client sent a SYN without ACK.
pub const CLIENT_BY_SYN: u8 = 1;

/// Per-flow counters, updated in place by the datapath with atomic adds.
///
/// Index 0 of each pair counts packets sent by `lo` (see [`DIR_LO_TO_HI`]). Times are
/// `bpf_jiffies64()` values: seconds-scale detection does not need nanoseconds, and jiffies
/// cost nothing per packet (docs/TOOLCHAIN.md). The agent converts them to wall time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub first_seen: u64,
    pub last_seen: u64,
    /// TCP flags seen: bits 0-7 from the `lo` sender, bits 8-15 from the `hi` sender. A `u64`
    /// because BPF atomic OR works on whole 32/64-bit words, and the value stays one 64-byte
    /// cache line either way.
    pub tcp_flags: u64,
    /// [`CLIENT_LO`] or [`CLIENT_HI`].
    pub client: u8,
    /// [`CLIENT_BY_FIRST_PACKET`] or [`CLIENT_BY_SYN`].
    pub client_source: u8,
    /// Payload sampling still to do: [`SAMPLE_LO`] / [`SAMPLE_HI`] while that sender's first
    /// payload packets are being copied, [`SAMPLE_DNS`] for DNS flows (every message copied).
    /// Zero once sampling is over: then a packet costs this one byte check.
    pub sampling: u8,
    /// Payload packets still to copy, per sender.
    pub samples_left: [u8; 2],
    /// The low byte of `DatapathSettings::watch_gen` when this flow last looked itself up in
    /// the watch map: the flow looks again only after the agent changed the watched set.
    pub watch_gen: u8,
    /// The [`tunnel`] kind of the packet that created the flow (0: none). Set only at
    /// creation; non-zero means `TUNNELS` holds the flow's [`TunnelInfo`], so readers look
    /// there only for these flows. Taken from the padding: the value stays one cache line.
    pub tunnel: u8,
    pub _pad: [u8; 1],
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 64);

/// `FlowStats::sampling` bit: copy payload sent by the `lo` endpoint.
pub const SAMPLE_LO: u8 = 1;
/// `FlowStats::sampling` bit: copy payload sent by the `hi` endpoint.
pub const SAMPLE_HI: u8 = 2;
/// `FlowStats::sampling` bit: a DNS flow (port 53): copy every message.
pub const SAMPLE_DNS: u8 = 4;
/// `FlowStats::sampling` bit: the agent watches this flow: trace every payload message (time,
/// direction, size) within the flow's budget in the watch map.
pub const SAMPLE_TRACE: u8 = 8;

/// Largest payload copy in one [`PayloadEvent`].
pub const PAYLOAD_MAX: usize = 512;

/// `PayloadEvent::kind`: the first bytes of one of a flow's first payload packets.
pub const PAYLOAD_FIRST: u8 = 1;
/// `PayloadEvent::kind`: a DNS message (UDP or TCP port 53).
pub const PAYLOAD_DNS: u8 = 2;

/// Payload copied from the datapath to the agent through the `PAYLOADS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PayloadEvent {
    pub key: FlowKey,
    /// `bpf_jiffies64()` when the packet was seen.
    pub jiffies: u64,
    /// Payload length in the packet.
    pub payload_len: u32,
    /// Bytes copied into `data`.
    pub len: u16,
    /// Direction index of the sender ([`DIR_LO_TO_HI`] or [`DIR_HI_TO_LO`]).
    pub dir: u8,
    /// [`PAYLOAD_FIRST`] or [`PAYLOAD_DNS`].
    pub kind: u8,
    pub data: [u8; PAYLOAD_MAX],
}
const _: () = assert!(core::mem::size_of::<PayloadEvent>() == 56 + PAYLOAD_MAX);

/// Datapath settings, written by the agent into `SETTINGS[0]` before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathSettings {
    /// Payload packets to copy per sender of each new flow (0: none), at most 255.
    pub payload_packets: u32,
    /// Bytes to copy of each (at most [`PAYLOAD_MAX`]).
    pub payload_bytes: u32,
    /// Bytes to copy of each DNS message (0: DNS capture off), at most [`PAYLOAD_MAX`].
    pub dns_bytes: u32,
    /// Bumped by the agent each time it adds flows to the watch map, so that flows look
    /// themselves up there again (once, on their next packet in a new jiffy).
    pub watch_gen: u32,
    /// Encapsulations to look inside: bit `1 << kind` for each [`tunnel`] kind (see
    /// [`tunnel::ALL`]). Read only when a packet is a tunnel candidate, so plain packets
    /// never pay for it.
    pub decap: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<DatapathSettings>() == 24);

/// Encapsulations the datapath decapsulates (one level), as `FlowStats::tunnel`,
/// `TunnelInfo::kind` and bit numbers of `DatapathSettings::decap`.
pub mod tunnel {
    /// Not decapsulated.
    pub const NONE: u8 = 0;
    /// PPPoE session (ethertype 0x8864), IPv4 or IPv6 in PPP; id: the session id.
    pub const PPPOE: u8 = 1;
    /// MPLS (ethertypes 0x8847, 0x8848), IPv4 or IPv6 under the bottom label; id: the bottom
    /// label (the service label that names the VPN).
    pub const MPLS: u8 = 2;
    /// GRE version 0 (IP protocol 47) with IPv4, IPv6 or transparent Ethernet bridging
    /// inside; id: the key when the K flag is set.
    pub const GRE: u8 = 3;
    /// VXLAN (UDP port 4789) with an inner Ethernet frame; id: the VNI.
    pub const VXLAN: u8 = 4;
    /// Geneve (UDP port 6081), options skipped, with an inner Ethernet frame (or IP); id: the
    /// VNI.
    pub const GENEVE: u8 = 5;
    /// IP in IP: 4in4 and 4in6 (protocol 4), 6in4 and 6in6 (protocol 41); no id.
    pub const IPIP: u8 = 6;
    /// Number of kinds (names below).
    pub const COUNT: usize = 7;
    /// Stable names (`tunnel.type`), index-aligned with the kinds.
    pub const NAMES: [&str; COUNT] = ["none", "pppoe", "mpls", "gre", "vxlan", "geneve", "ipip"];
    /// `DatapathSettings::decap` with every kind on.
    pub const ALL: u32 =
        (1 << PPPOE) | (1 << MPLS) | (1 << GRE) | (1 << VXLAN) | (1 << GENEVE) | (1 << IPIP);
}

/// The tunnel a flow was first seen in: the value of the `TUNNELS` side map (key: the inner
/// flow's [`FlowKey`]), written once, when the flow is created from a decapsulated packet.
///
/// A side map instead of more `FlowStats` fields: the flow value stays one 64-byte line, and
/// only tunnelled flows pay the 40 bytes. The outer addresses are oriented by the inner key:
/// `outer_lo` is the tunnel endpoint on the side of the inner `addr_lo` (the outer source
/// when the creating packet was sent by `lo`). Both are zero for link-layer tunnels (PPPoE,
/// MPLS), which have no outer IP header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TunnelInfo {
    pub outer_lo: Addr,
    pub outer_hi: Addr,
    /// VNI, GRE key, PPPoE session id or MPLS bottom label; meaningful when `has_id` is 1.
    pub id: u32,
    /// A [`tunnel`] kind.
    pub kind: u8,
    /// 1 when `id` is present (a GRE packet without the K flag, IP in IP: 0).
    pub has_id: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<TunnelInfo>() == 40);

/// A watched flow's entry in the `WATCH` map, written by the agent: how many payload messages
/// the datapath may trace until the agent re-arms it (at every poll).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchBudget {
    /// Messages allowed since the last re-arm.
    pub messages: u64,
    /// Messages traced since the last re-arm (the datapath adds atomically; concurrent CPUs
    /// can overshoot `messages` by at most one each, never wrap).
    pub used: u64,
}
const _: () = assert!(core::mem::size_of::<WatchBudget>() == 16);

/// One payload message of a watched flow, through the `TRACES` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    pub key: FlowKey,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the packet was seen: message timing needs
    /// better than a jiffy, and only watched flows pay for the read.
    pub ktime_ns: u64,
    /// Transport payload bytes (from the IP length, so Ethernet padding never counts).
    pub payload_len: u32,
    /// Direction index of the sender ([`DIR_LO_TO_HI`] or [`DIR_HI_TO_LO`]).
    pub dir: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 56);

/// Slots of the `CLOCK` array map (`u64` each).
///
/// The datapath writes only [`clock_slot::JIFFIES`]. The agent keeps in the other slots the
/// anchor that converts the datapath's jiffies to wall-clock time. It lives in the map so that
/// it is pinned together with the flows whose `first_seen`/`last_seen` it converts: an agent
/// restarted on pinned maps converts the same jiffies to the same nanoseconds, so a flow keeps
/// its start time (and the alarm ids derived from it) across restarts.
pub mod clock_slot {
    /// `bpf_jiffies64()` as last read by the clock program.
    pub const JIFFIES: u32 = 0;
    /// The anchor's jiffies; 0 while no agent has anchored this map.
    pub const ANCHOR_JIFFIES: u32 = 1;
    /// Wall-clock nanoseconds since the Unix epoch at [`ANCHOR_JIFFIES`].
    pub const ANCHOR_WALL_NS: u32 = 2;
    /// The kernel's HZ as measured by the agent that set the anchor.
    pub const HZ: u32 = 3;
    /// Entries of the map.
    pub const COUNT: u32 = 4;
}

/// Indices into the per-CPU `COUNTERS` array.
///
/// The first group are the reasons a packet could not be attributed to a flow; every packet
/// the datapath sees is either added to exactly one flow or counted under exactly one reason.
/// The second group are events that do not change that balance.
pub mod counter {
    /// Ethertype is neither IPv4 nor IPv6 (ARP, LLDP, ...).
    pub const NOT_IP: u32 = 0;
    /// A header ended before its fixed part did (L2, IP, extension header or L4).
    pub const TRUNCATED: u32 = 1;
    /// More than [`crate::MAX_VLAN_TAGS`] VLAN tags.
    pub const TOO_MANY_VLAN_TAGS: u32 = 2;
    /// IP version field disagrees with the ethertype, or IPv4 IHL below 5.
    pub const BAD_IP_HEADER: u32 = 3;
    /// More than [`crate::MAX_IPV6_EXT_HEADERS`] IPv6 extension headers.
    pub const IPV6_EXT_CHAIN_TOO_LONG: u32 = 4;
    /// A non-first IP fragment: it carries no ports, so it cannot be keyed.
    pub const LATER_FRAGMENT: u32 = 5;
    /// The flow map refused a new entry (full, or out of memory).
    pub const MAP_FULL: u32 = 6;
    /// A PPPoE session frame whose PPP protocol is neither IPv4 nor IPv6 (LCP, IPCP, ...).
    pub const UNKNOWN_PPP_PROTOCOL: u32 = 7;
    /// More than [`crate::MAX_MPLS_LABELS`] MPLS labels: the bottom of the stack is too deep.
    pub const TOO_MANY_MPLS_LABELS: u32 = 8;
    /// A decapsulated payload is neither IPv4 nor IPv6: ARP in VXLAN, an MPLS pseudowire, an
    /// inner frame whose ethertype is something else.
    pub const TUNNEL_PAYLOAD_NOT_IP: u32 = 9;
    /// Number of unattributed-packet reasons (all indices below this).
    pub const UNATTRIBUTED_REASONS: u32 = 10;

    /// New flows inserted.
    pub const FLOWS_CREATED: u32 = 10;
    /// Another CPU created the same flow between our lookup and insert.
    pub const CREATE_RACES: u32 = 11;
    /// Payload copies handed to the agent.
    pub const PAYLOAD_EVENTS: u32 = 12;
    /// Payload copies lost because the ring buffer was full.
    pub const PAYLOAD_DROPS: u32 = 13;
    /// Messages of watched flows traced.
    pub const TRACE_EVENTS: u32 = 14;
    /// Messages of watched flows not traced because the trace ring buffer was full.
    pub const TRACE_DROPS: u32 = 15;
    /// Messages of watched flows not traced because the flow had used its budget.
    pub const TRACE_OVER_BUDGET: u32 = 16;
    /// Array size.
    pub const COUNT: u32 = 17;

    /// Stable names, index-aligned with the constants above (used in JSON output and metrics).
    pub const NAMES: [&str; COUNT as usize] = [
        "not_ip",
        "truncated",
        "too_many_vlan_tags",
        "bad_ip_header",
        "ipv6_ext_chain_too_long",
        "later_fragment",
        "map_full",
        "unknown_ppp_protocol",
        "too_many_mpls_labels",
        "tunnel_payload_not_ip",
        "flows_created",
        "create_races",
        "payload_events",
        "payload_drops",
        "trace_events",
        "trace_drops",
        "trace_over_budget",
    ];
}

/// Lexicographic "a sorts before b" on (address words, port). Written out by hand because
/// array comparison may lower to a `memcmp` call, which BPF programs cannot make.
#[inline(always)]
fn endpoint_le(a: &Addr, a_port: u16, b: &Addr, b_port: u16) -> bool {
    if a[0] != b[0] {
        return a[0] < b[0];
    }
    if a[1] != b[1] {
        return a[1] < b[1];
    }
    if a[2] != b[2] {
        return a[2] < b[2];
    }
    if a[3] != b[3] {
        return a[3] < b[3];
    }
    a_port <= b_port
}

impl FlowKey {
    /// The canonical key of a packet from `src:sport` to `dst:dport`, and the direction index
    /// of that packet ([`DIR_LO_TO_HI`] or [`DIR_HI_TO_LO`]).
    #[inline(always)]
    pub fn canonical(src: &Addr, sport: u16, dst: &Addr, dport: u16, proto: u8) -> (Self, usize) {
        if endpoint_le(src, sport, dst, dport) {
            (
                FlowKey {
                    addr_lo: *src,
                    addr_hi: *dst,
                    port_lo: sport,
                    port_hi: dport,
                    proto,
                    _pad: 0,
                    _pad2: 0,
                },
                DIR_LO_TO_HI,
            )
        } else {
            (
                FlowKey {
                    addr_lo: *dst,
                    addr_hi: *src,
                    port_lo: dport,
                    port_hi: sport,
                    proto,
                    _pad: 0,
                    _pad2: 0,
                },
                DIR_HI_TO_LO,
            )
        }
    }
}

/// The address words of an IPv4 address given as its four network-order bytes.
#[inline(always)]
pub const fn ipv4_mapped(octets: [u8; 4]) -> Addr {
    [0, 0, IPV4_MAPPED_WORD, u32::from_ne_bytes(octets)]
}

/// The address words of an IPv6 address given as its sixteen network-order bytes.
#[inline(always)]
pub const fn ipv6_words(o: [u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The sixteen network-order bytes of address words.
#[inline(always)]
pub const fn addr_octets(a: &Addr) -> [u8; 16] {
    let w0 = a[0].to_ne_bytes();
    let w1 = a[1].to_ne_bytes();
    let w2 = a[2].to_ne_bytes();
    let w3 = a[3].to_ne_bytes();
    [
        w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3], w3[0],
        w3[1], w3[2], w3[3],
    ]
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both types are repr(C), consist only of integers, and have explicit padding
    // fields, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::PayloadEvent {}
    unsafe impl aya::Pod for super::DatapathSettings {}
    unsafe impl aya::Pod for super::WatchBudget {}
    unsafe impl aya::Pod for super::TraceEvent {}
    unsafe impl aya::Pod for super::TunnelInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_share_one_key() {
        let a = ipv4_mapped([10, 0, 0, 1]);
        let b = ipv4_mapped([10, 0, 0, 2]);
        let (k1, d1) = FlowKey::canonical(&a, 40000, &b, 443, 6);
        let (k2, d2) = FlowKey::canonical(&b, 443, &a, 40000, 6);
        assert_eq!(k1, k2);
        assert_ne!(d1, d2);
    }

    #[test]
    fn same_address_orders_by_port() {
        let a = ipv6_words([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let (k, d) = FlowKey::canonical(&a, 5000, &a, 80, 17);
        assert_eq!((k.port_lo, k.port_hi, d), (80, 5000, DIR_HI_TO_LO));
    }

    #[test]
    fn address_words_round_trip() {
        let o = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        assert_eq!(addr_octets(&ipv6_words(o)), o);
        let m = addr_octets(&ipv4_mapped([192, 0, 2, 7]));
        assert_eq!(&m[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&m[12..], &[192, 0, 2, 7]);
    }
}
