//! Bounds-checked header walking, shared by the XDP and TC programs.
//!
//! Each header is checked once against `data_end` and then read only through the pointer that
//! was checked, at constant offsets (header structs). Recomputing `data + off` for each field
//! lets LLVM rematerialise a pointer the verifier has not seen checked ("invalid access to
//! packet"), so the code never does that. Offsets only grow from values the verifier can
//! bound (fixed sizes, `IHL * 4`, `(len + 1) * 8`), and every loop has a constant trip count.
//! The parser never writes to the packet: it only answers "this flow" or "unattributed, for
//! this reason".

use sensor_common::{counter, Addr, IPV4_MAPPED_WORD, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};

const ETH_P_IP: u16 = 0x0800_u16.to_be();
const ETH_P_IPV6: u16 = 0x86dd_u16.to_be();
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();
const ETH_P_8021AD: u16 = 0x88a8_u16.to_be();

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

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    csum: u16,
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
    /// Where the IP packet ends by its own length field (usize::MAX when the field says 0, as
    /// for GSO super-packets and IPv6 jumbograms): bytes past it are link-layer padding, not
    /// payload.
    pub payload_end: usize,
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

/// Parses one frame starting at its Ethernet header.
#[inline(always)]
pub fn parse(data: usize, end: usize) -> Result<Packet, Reason> {
    let eth = header::<EthHdr>(data, end, 0)?;
    let mut ethertype = unsafe { (*eth).proto };
    let mut off = core::mem::size_of::<EthHdr>();
    // Up to two tags: 802.1ad outer + 802.1Q inner, or 802.1Q stacked.
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let vlan = header::<VlanHdr>(data, end, off)?;
        ethertype = unsafe { (*vlan).proto };
        off += core::mem::size_of::<VlanHdr>();
        tags += 1;
    }
    if ethertype == ETH_P_IP {
        parse_ipv4(data, end, off)
    } else if ethertype == ETH_P_IPV6 {
        parse_ipv6(data, end, off)
    } else if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        Err(counter::TOO_MANY_VLAN_TAGS)
    } else {
        Err(counter::NOT_IP)
    }
}

#[inline(always)]
fn parse_ipv4(data: usize, end: usize, off: usize) -> Result<Packet, Reason> {
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
    let src = [0, 0, IPV4_MAPPED_WORD, src];
    let dst = [0, 0, IPV4_MAPPED_WORD, dst];
    let ip_end = ip_end(off, u16::from_be(tot_len) as usize);
    parse_l4(data, end, off + ihl * 4, [src, dst], proto, IPPROTO_ICMP, ip_end)
}

#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

#[inline(always)]
fn parse_ipv6(data: usize, end: usize, off: usize) -> Result<Packet, Reason> {
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
    parse_l4(data, end, off, [src, dst], next, IPPROTO_ICMPV6, ip_end)
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
fn parse_l4(
    data: usize,
    end: usize,
    off: usize,
    [src, dst]: [Addr; 2],
    proto: u8,
    icmp: u8,
    ip_end: usize,
) -> Result<Packet, Reason> {
    let mut pkt = Packet {
        src,
        dst,
        sport: 0,
        dport: 0,
        proto,
        tcp_flags: 0,
        payload_off: 0,
        payload_end: ip_end,
    };
    if proto == IPPROTO_TCP {
        let tcp = header::<TcpHdr>(data, end, off)?;
        unsafe {
            pkt.sport = u16::from_be((*tcp).sport);
            pkt.dport = u16::from_be((*tcp).dport);
            pkt.tcp_flags = (*tcp).flags;
            pkt.payload_off = off + (((*tcp).data_off >> 4) as usize) * 4;
        }
    } else if proto == IPPROTO_UDP {
        let udp = header::<UdpHdr>(data, end, off)?;
        unsafe {
            pkt.sport = u16::from_be((*udp).sport);
            pkt.dport = u16::from_be((*udp).dport);
        }
        pkt.payload_off = off + core::mem::size_of::<UdpHdr>();
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
