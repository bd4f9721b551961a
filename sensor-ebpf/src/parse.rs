//! Bounds-checked header walking, shared by the XDP and TC programs.
//!
//! Each header is checked once against `data_end` and then read only through the pointer that
//! was checked, at constant offsets (header structs). Recomputing `data + off` for each field
//! lets LLVM rematerialise a pointer the verifier has not seen checked ("invalid access to
//! packet"), so the code never does that. Offsets only grow from values the verifier can
//! bound (fixed sizes, `IHL * 4`, `(len + 1) * 8`), and every loop has a constant trip count.
//! The parser never writes to the packet: it only answers "this flow" or "unattributed, for
//! this reason".
//!
//! Decapsulation, one level (`sensor_common::tunnel`): PPPoE sessions and MPLS stacks
//! between the link layer and IP ([`parse`]); GRE, VXLAN, Geneve and IP in IP after the outer
//! IP header, whose inside is parsed by [`parse_inner`] in a second program (a tail call, see
//! [`parse`] for why) with the same header code (VLAN tags, IPv6 extension headers) but never
//! opened again: a tunnel inside a tunnel is keyed as the inner level's flow (say, the UDP
//! flow to port 4789). The switches in `DatapathSettings::decap`
//! are read only when a packet is a tunnel candidate (a PPPoE or MPLS ethertype, IP protocol
//! 4, 41 or 47, UDP to port 4789 or 6081), so a plain packet pays a few compares and no map
//! lookup. A candidate that is switched off, or that is not what its port or protocol
//! suggests (VXLAN without the I flag, GRE version 1 or with routing, Geneve version 1, a
//! GRE protocol other than IPv4, IPv6 or Ethernet), is keyed as its outer flow, as before
//! decapsulation existed.

use sensor_common::{
    counter, tunnel, Addr, IPV4_MAPPED_WORD, MAX_IPV6_EXT_HEADERS,
    MAX_MPLS_LABELS, MAX_VLAN_TAGS,
};

const ETH_P_IP: u16 = 0x0800_u16.to_be();
const ETH_P_IPV6: u16 = 0x86dd_u16.to_be();
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();
const ETH_P_8021AD: u16 = 0x88a8_u16.to_be();
const ETH_P_PPPOE_SES: u16 = 0x8864_u16.to_be();
const ETH_P_MPLS_UC: u16 = 0x8847_u16.to_be();
const ETH_P_MPLS_MC: u16 = 0x8848_u16.to_be();
const ETH_P_TEB: u16 = 0x6558_u16.to_be();
const PPP_IP: u16 = 0x0021_u16.to_be();
const PPP_IPV6: u16 = 0x0057_u16.to_be();

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_GRE: u8 = 47;
const VXLAN_PORT: u16 = 4789;
const GENEVE_PORT: u16 = 6081;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

// Header layouts; multi-byte fields stay in network byte order.
#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

#[repr(C)]
struct VlanHdr {
    tci: u16,
    proto: u16,
}

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    csum: u16,
    src: u32,
    dst: u32,
}

#[repr(C)]
struct Ipv6Hdr {
    ver_tc_flow: u32,
    payload_len: u16,
    next: u8,
    hop_limit: u8,
    src: Addr,
    dst: Addr,
}

/// The first 8 bytes every IPv6 extension header has (for the fragment header, bytes 2-3
/// hold the offset).
#[repr(C)]
struct Ipv6ExtHdr {
    next: u8,
    len: u8,
    frag_off: u16,
    rest: u32,
}

#[repr(C)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    data_off: u8,
    flags: u8,
    window: u16,
    csum: u16,
    urg: u16,
}

#[repr(C)]
struct UdpHdr {
    sport: u16,
    dport: u16,
    len: u16,
    csum: u16,
}

/// PPPoE session header (RFC 2516) and the PPP protocol field after it.
#[repr(C)]
struct PppoeHdr {
    ver_type: u8,
    code: u8,
    session: u16,
    len: u16,
    ppp_proto: u16,
}

/// GRE (RFC 2784/2890): flags and version, protocol; optional fields follow.
#[repr(C)]
struct GreHdr {
    flags: u16,
    proto: u16,
}

/// VXLAN (RFC 7348) and Geneve (RFC 8926) share the shape of their first 8 bytes: a first
/// byte (VXLAN flags; Geneve version and option length), a byte, a 16-bit field (Geneve's
/// protocol), the VNI in 24 bits and a reserved byte.
#[repr(C)]
struct UdpTunnelHdr {
    first: u8,
    second: u8,
    proto: u16,
    vni_rsvd: u32,
}

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    csum: u16,
}

/// The tunnel a packet came out of; `kind` 0: none.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Tunnel {
    pub kind: u8,
    pub has_id: u8,
    /// 1 when the outer IP header is IPv6.
    pub outer_v6: u8,
    pub id: u32,
    /// Offset of the outer IP header (0 for PPPoE and MPLS, which have none).
    pub outer_off: u32,
}

/// What the datapath needs from one packet.
pub struct Packet {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// Offset of the transport payload from the start of the frame (TCP and UDP; 0 else).
    pub payload_off: usize,
    /// 1 for TCP and UDP (which have a payload offset). A flag rather than testing
    /// `payload_off != 0`: that test is decided by the offset's range on every parse path,
    /// which makes the verifier track the offset precisely (see `launder` in main.rs).
    pub has_payload: u8,
    /// Where the IP packet ends by its own length field (usize::MAX when the field says 0, as
    /// for GSO super-packets and IPv6 jumbograms): bytes past it are link-layer padding, not
    /// payload.
    pub payload_end: usize,
    pub tunnel: Tunnel,
}

/// The reason a packet cannot be attributed: an index into `COUNTERS`.
pub type Reason = u32;

/// A pointer to a whole `T` at `off` bytes into the packet, if the packet holds it.
///
/// Packet pointers may be unaligned (IP headers start at offset 14); the BPF JITs of the
/// architectures we run on load unaligned packet data, and the verifier only enforces
/// alignment under BPF_F_STRICT_ALIGNMENT, which we never set.
#[inline(always)]
fn header<T>(data: usize, end: usize, off: usize) -> Result<*const T, Reason> {
    let p = data + off;
    if p + core::mem::size_of::<T>() > end {
        return Err(counter::TRUNCATED);
    }
    Ok(p as *const T)
}

/// An IP header's fields that matter here.
struct Ip {
    src: Addr,
    dst: Addr,
    proto: u8,
    /// Offset of what follows the IP header (and its options or extension headers).
    l4_off: usize,
    ip_end: usize,
    v6: bool,
}

/// Where the next level starts: an Ethernet frame, or an IP packet of `ethertype`.
struct Inner {
    off: usize,
    /// Network-order ethertype of an IP packet at `off`; 0: an Ethernet frame starts there.
    ethertype: u16,
    kind: u8,
    has_id: u8,
    id: u32,
}

/// What the first level of a frame was: a packet handed to the caller's `flow`, or a tunnel to
/// open.
pub enum Step {
    Flow,
    /// A tunnel whose decapsulation is on: the inner level starts at `off` (an Ethernet
    /// frame when `ethertype` is 0, else an IP packet of that network-order ethertype).
    Tunnel { off: u32, ethertype: u16, tunnel: Tunnel },
}

/// Parses the frame as received (level 0). PPPoE and MPLS are opened here (they sit between
/// the link layer and IP); an IP tunnel is returned as [`Step::Tunnel`] for the inner program
/// to parse with [`parse_inner`] after a tail call. Two programs instead of one two-level
/// loop: the verifier explores every path of a program, and two levels of VLAN tags, label
/// stacks, IPv4 options and IPv6 extension headers in one program went past its limit of one
/// million instructions; each program alone stays within it.
#[inline(always)]
pub fn parse(
    data: usize,
    end: usize,
    decap_on: &impl Fn(u8) -> bool,
    flow: &impl Fn(&Packet),
) -> Result<Step, Reason> {
    let eth = header::<EthHdr>(data, end, 0)?;
    let mut ethertype = unsafe { (*eth).proto };
    let mut off = core::mem::size_of::<EthHdr>();
    vlan_tags(data, end, &mut off, &mut ethertype)?;
    // Each IP version continues on its own copy of the rest, counting included (`flow` is
    // called from inside), and plain IP on a copy apart from PPPoE and MPLS: there an IPv4
    // address's first three words stay constants, so its flow key is built and compared
    // without them, and no tunnel state is carried. Returning the packet to one shared
    // continuation made every packet carry both versions' addresses and a tunnel through
    // stack memory (measured: 66 more instructions executed per IPv4/TCP packet of a known
    // flow).
    if ethertype == ETH_P_IP {
        let ip = parse_ipv4(data, end, off)?;
        return level0_l4(data, end, off, &ip, decap_on, flow);
    }
    if ethertype == ETH_P_IPV6 {
        let ip = parse_ipv6(data, end, off)?;
        return level0_l4(data, end, off, &ip, decap_on, flow);
    }
    let mut tun = NO_TUNNEL;
    if ethertype == ETH_P_PPPOE_SES && decap_on(tunnel::PPPOE) {
        let ppp = header::<PppoeHdr>(data, end, off)?;
        let (session, proto) = unsafe { ((*ppp).session, (*ppp).ppp_proto) };
        off += core::mem::size_of::<PppoeHdr>();
        tun.kind = tunnel::PPPOE;
        tun.has_id = 1;
        tun.id = u16::from_be(session) as u32;
        ethertype = if proto == PPP_IP {
            ETH_P_IP
        } else if proto == PPP_IPV6 {
            ETH_P_IPV6
        } else {
            return Err(counter::UNKNOWN_PPP_PROTOCOL);
        };
    } else if (ethertype == ETH_P_MPLS_UC || ethertype == ETH_P_MPLS_MC) && decap_on(tunnel::MPLS) {
        ethertype = mpls(data, end, &mut off, &mut tun)?;
    } else if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(counter::TOO_MANY_VLAN_TAGS);
    } else {
        return Err(counter::NOT_IP);
    }
    // One level: nothing inside a PPPoE session or an MPLS stack is opened again.
    let ip = if ethertype == ETH_P_IP {
        parse_ipv4(data, end, off)?
    } else {
        parse_ipv6(data, end, off)?
    };
    flow(&parse_l4(data, end, &ip, tun)?);
    Ok(Step::Flow)
}

const NO_TUNNEL: Tunnel = Tunnel {
    kind: tunnel::NONE,
    has_id: 0,
    outer_v6: 0,
    id: 0,
    outer_off: 0,
};

/// What follows a plain (not PPPoE or MPLS) level 0 IP header at `ip_off`: a tunnel to open,
/// or the transport header.
#[inline(always)]
fn level0_l4(
    data: usize,
    end: usize,
    ip_off: usize,
    ip: &Ip,
    decap_on: &impl Fn(u8) -> bool,
    flow: &impl Fn(&Packet),
) -> Result<Step, Reason> {
    if let Some(next) = ip_tunnel(data, end, ip, decap_on)? {
        return Ok(Step::Tunnel {
            off: next.off as u32,
            ethertype: next.ethertype,
            tunnel: Tunnel {
                kind: next.kind,
                has_id: next.has_id,
                outer_v6: ip.v6 as u8,
                id: next.id,
                outer_off: ip_off as u32,
            },
        });
    }
    flow(&parse_l4(data, end, ip, NO_TUNNEL)?);
    Ok(Step::Flow)
}

/// Parses the inside of an IP tunnel (level 1): an Ethernet frame (`ethertype` 0) with up to
/// two VLAN tags, or an IP packet, at `off`; nothing in it is opened again (a tunnel inside
/// a tunnel is the inner level's flow).
#[inline(always)]
pub fn parse_inner(
    data: usize,
    end: usize,
    off: usize,
    ethertype: u16,
    tun: Tunnel,
    flow: &impl Fn(&Packet),
) -> Result<(), Reason> {
    let mut off = off;
    let mut ethertype = ethertype;
    if ethertype == 0 {
        let eth = header::<EthHdr>(data, end, off)?;
        ethertype = unsafe { (*eth).proto };
        off += core::mem::size_of::<EthHdr>();
        vlan_tags(data, end, &mut off, &mut ethertype)?;
    }
    // One copy per IP version, as in `parse`.
    if ethertype == ETH_P_IP {
        let ip = parse_ipv4(data, end, off)?;
        flow(&parse_l4(data, end, &ip, tun)?);
    } else if ethertype == ETH_P_IPV6 {
        let ip = parse_ipv6(data, end, off)?;
        flow(&parse_l4(data, end, &ip, tun)?);
    } else {
        // ARP, LLDP, a third VLAN tag...: not IP, inside a tunnel.
        return Err(counter::TUNNEL_PAYLOAD_NOT_IP);
    }
    Ok(())
}

/// Up to two tags: 802.1ad outer + 802.1Q inner, or 802.1Q stacked.
#[inline(always)]
fn vlan_tags(data: usize, end: usize, off: &mut usize, ethertype: &mut u16) -> Result<(), Reason> {
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS {
        if *ethertype != ETH_P_8021Q && *ethertype != ETH_P_8021AD {
            break;
        }
        let vlan = header::<VlanHdr>(data, end, *off)?;
        *ethertype = unsafe { (*vlan).proto };
        *off += core::mem::size_of::<VlanHdr>();
        tags += 1;
    }
    Ok(())
}

/// Walks an MPLS label stack at `*off` to its bottom; returns the ethertype of the IP packet
/// under it (from its version nibble: MPLS does not say).
#[inline(always)]
fn mpls(data: usize, end: usize, off: &mut usize, tun: &mut Tunnel) -> Result<u16, Reason> {
    let mut labels = 0;
    let mut bottom = false;
    while labels < MAX_MPLS_LABELS {
        let entry = header::<u32>(data, end, *off)?;
        let e = u32::from_be(unsafe { *entry });
        *off += 4;
        labels += 1;
        if e & 0x100 != 0 {
            tun.id = e >> 12;
            bottom = true;
            break;
        }
    }
    if !bottom {
        return Err(counter::TOO_MANY_MPLS_LABELS);
    }
    tun.kind = tunnel::MPLS;
    tun.has_id = 1;
    let first = header::<u8>(data, end, *off)?;
    match unsafe { *first } >> 4 {
        4 => Ok(ETH_P_IP),
        6 => Ok(ETH_P_IPV6),
        _ => Err(counter::TUNNEL_PAYLOAD_NOT_IP),
    }
}

/// The tunnel an IP packet carries, if it is one whose decapsulation is on.
#[inline(always)]
fn ip_tunnel(
    data: usize,
    end: usize,
    ip: &Ip,
    decap_on: &impl Fn(u8) -> bool,
) -> Result<Option<Inner>, Reason> {
    let off = ip.l4_off;
    let none = Ok(None);
    if ip.proto == IPPROTO_TCP {
        return none;
    }
    if ip.proto == IPPROTO_UDP {
        let udp = header::<UdpHdr>(data, end, off)?;
        let dport = u16::from_be(unsafe { (*udp).dport });
        let (kind, hdr) = if dport == VXLAN_PORT {
            (tunnel::VXLAN, off + core::mem::size_of::<UdpHdr>())
        } else if dport == GENEVE_PORT {
            (tunnel::GENEVE, off + core::mem::size_of::<UdpHdr>())
        } else {
            return none;
        };
        if !decap_on(kind) {
            return none;
        }
        let t = header::<UdpTunnelHdr>(data, end, hdr)?;
        let (first, proto, vni_rsvd) = unsafe { ((*t).first, (*t).proto, (*t).vni_rsvd) };
        let id = u32::from_be(vni_rsvd) >> 8;
        let mut inner = Inner {
            off: hdr + core::mem::size_of::<UdpTunnelHdr>(),
            ethertype: 0,
            kind,
            has_id: 1,
            id,
        };
        if kind == tunnel::VXLAN {
            // The I flag says the VNI is valid; without it this is not VXLAN.
            if first & 0x08 == 0 {
                return none;
            }
            return Ok(Some(inner));
        }
        // Geneve: version 0 only; options (length in 4-byte units, 6 bits) skipped.
        if first >> 6 != 0 {
            return none;
        }
        inner.off += ((first & 0x3f) as usize) * 4;
        if proto == ETH_P_IP || proto == ETH_P_IPV6 {
            inner.ethertype = proto;
        } else if proto != ETH_P_TEB {
            return none;
        }
        return Ok(Some(inner));
    }
    if ip.proto == IPPROTO_GRE {
        if !decap_on(tunnel::GRE) {
            return none;
        }
        let gre = header::<GreHdr>(data, end, off)?;
        let (flags, proto) = unsafe { (u16::from_be((*gre).flags), (*gre).proto) };
        // Version 0 without routing (RFC 2784/2890); version 1 is PPTP's enhanced GRE.
        if flags & 0x4007 != 0 {
            return none;
        }
        let ethertype = if proto == ETH_P_IP || proto == ETH_P_IPV6 {
            proto
        } else if proto == ETH_P_TEB {
            0
        } else {
            return none;
        };
        let mut at = off + core::mem::size_of::<GreHdr>();
        // Checksum and reserved word when C is set.
        if flags & 0x8000 != 0 {
            at += 4;
        }
        let mut inner = Inner {
            off: at,
            ethertype,
            kind: tunnel::GRE,
            has_id: 0,
            id: 0,
        };
        if flags & 0x2000 != 0 {
            let key = header::<u32>(data, end, at)?;
            inner.id = u32::from_be(unsafe { *key });
            inner.has_id = 1;
            at += 4;
        }
        // Sequence number when S is set.
        if flags & 0x1000 != 0 {
            at += 4;
        }
        inner.off = at;
        return Ok(Some(inner));
    }
    if ip.proto == IPPROTO_IPIP || ip.proto == IPPROTO_IPV6 {
        if !decap_on(tunnel::IPIP) {
            return none;
        }
        return Ok(Some(Inner {
            off,
            ethertype: if ip.proto == IPPROTO_IPIP { ETH_P_IP } else { ETH_P_IPV6 },
            kind: tunnel::IPIP,
            has_id: 0,
            id: 0,
        }));
    }
    none
}

#[inline(always)]
fn parse_ipv4(data: usize, end: usize, off: usize) -> Result<Ip, Reason> {
    let ip = header::<Ipv4Hdr>(data, end, off)?;
    let (ver_ihl, frag_off, proto, src, dst, tot_len) = unsafe {
        (
            (*ip).ver_ihl,
            (*ip).frag_off,
            (*ip).proto,
            (*ip).src,
            (*ip).dst,
            (*ip).tot_len,
        )
    };
    if ver_ihl >> 4 != 4 {
        return Err(counter::BAD_IP_HEADER);
    }
    let ihl = (ver_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(counter::BAD_IP_HEADER);
    }
    // Non-zero fragment offset: a later fragment, without ports. MF alone (first fragment)
    // still carries the transport header.
    if u16::from_be(frag_off) & 0x1fff != 0 {
        return Err(counter::LATER_FRAGMENT);
    }
    Ok(Ip {
        src: [0, 0, IPV4_MAPPED_WORD, src],
        dst: [0, 0, IPV4_MAPPED_WORD, dst],
        proto,
        l4_off: off + ihl * 4,
        ip_end: ip_end(off, u16::from_be(tot_len) as usize),
        v6: false,
    })
}
#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

#[inline(always)]
fn parse_ipv6(data: usize, end: usize, off: usize) -> Result<Ip, Reason> {
    let ip = header::<Ipv6Hdr>(data, end, off)?;
    let (ver, mut next, src, dst, payload_len) = unsafe {
        (
            *(ip as *const u8) >> 4,
            (*ip).next,
            (*ip).src,
            (*ip).dst,
            (*ip).payload_len,
        )
    };
    if ver != 6 {
        return Err(counter::BAD_IP_HEADER);
    }
    let mut off = off + core::mem::size_of::<Ipv6Hdr>();
    let ip_end = ip_end(off, u16::from_be(payload_len) as usize);
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS {
        if !is_ext_header(next) {
            break;
        }
        // The fixed 8 bytes must be present, like every other header.
        let ext = header::<Ipv6ExtHdr>(data, end, off)?;
        let (ext_next, ext_len, frag_off) = unsafe { ((*ext).next, (*ext).len, (*ext).frag_off) };
        let len = match next {
            // Authentication header: length in 4-octet units, not counting the first 2.
            51 => (ext_len as usize + 2) * 4,
            44 => {
                // Fragment header: offset in the upper 13 bits of bytes 2-3.
                if u16::from_be(frag_off) & 0xfff8 != 0 {
                    return Err(counter::LATER_FRAGMENT);
                }
                8
            }
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6: length in
            // 8-octet units, not counting the first 8.
            _ => (ext_len as usize + 1) * 8,
        };
        next = ext_next;
        off += len;
        walked += 1;
    }
    if is_ext_header(next) {
        return Err(counter::IPV6_EXT_CHAIN_TOO_LONG);
    }
    Ok(Ip {
        src,
        dst,
        proto: next,
        l4_off: off,
        ip_end,
        v6: true,
    })
}

/// End of an IP packet starting (IPv4) or whose payload starts (IPv6) at `start`, `len` bytes
/// long by its header; a zero length means "the whole frame".
#[inline(always)]
fn ip_end(start: usize, len: usize) -> usize {
    if len == 0 {
        usize::MAX
    } else {
        start + len
    }
}

#[inline(always)]
fn parse_l4(data: usize, end: usize, ip: &Ip, tunnel: Tunnel) -> Result<Packet, Reason> {
    let off = ip.l4_off;
    let proto = ip.proto;
    let icmp = if ip.v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
    let mut pkt = Packet {
        src: ip.src,
        dst: ip.dst,
        sport: 0,
        dport: 0,
        proto,
        tcp_flags: 0,
        payload_off: 0,
        has_payload: 0,
        payload_end: ip.ip_end,
        tunnel,
    };
    if proto == IPPROTO_TCP {
        let tcp = header::<TcpHdr>(data, end, off)?;
        unsafe {
            pkt.sport = u16::from_be((*tcp).sport);
            pkt.dport = u16::from_be((*tcp).dport);
            pkt.tcp_flags = (*tcp).flags;
            pkt.payload_off = off + (((*tcp).data_off >> 4) as usize) * 4;
            pkt.has_payload = 1;
        }
    } else if proto == IPPROTO_UDP {
        let udp = header::<UdpHdr>(data, end, off)?;
        unsafe {
            pkt.sport = u16::from_be((*udp).sport);
            pkt.dport = u16::from_be((*udp).dport);
        }
        pkt.payload_off = off + core::mem::size_of::<UdpHdr>();
        pkt.has_payload = 1;
    } else if proto == icmp {
        // Type, code, checksum: ICMP flows are keyed without ports.
        let _ = header::<IcmpHdr>(data, end, off)?;
    } else {
        // No transport header to read, but the IP header (options, extension headers) must
        // still be whole.
        let _ = header::<[u8; 0]>(data, end, off)?;
    }
    Ok(pkt)
}
