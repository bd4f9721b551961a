//! Building frames byte by byte for tests: Ethernet with VLAN tags, IPv4 with options and
//! fragments, IPv6 with extension headers, TCP, UDP, ICMP and tunnels.
//!
//! Written from the protocol specifications, independently of the datapath's parser, so tests
//! built on it check the parser rather than repeat it. Each builder also reports how many
//! bytes of the frame the datapath must read to attribute it (`needed`), which is what the
//! truncation tests cut against.

/// A frame and the number of leading bytes that hold every header needed to key it.
#[derive(Clone, Debug)]
pub struct Built {
    pub frame: Vec<u8>,
    pub needed: usize,
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Ethernet header with VLAN tags (outermost first), then the payload.
pub fn ethernet(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for &(tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Length of the Ethernet header with `tags` VLAN tags.
pub fn eth_len(tags: usize) -> usize {
    14 + 4 * tags
}

pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(20 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&1000u32.to_be_bytes());
    h.extend_from_slice(&(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
    h.push(5 << 4);
    h.push(flags);
    h.extend_from_slice(&65535u16.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

pub fn icmp(kind: u8, code: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![kind, code, 0, 0];
    h.extend_from_slice(payload);
    h
}

/// Fixed header length the datapath needs for a transport protocol.
pub fn l4_needed(proto: u8, ipv6: bool) -> usize {
    match proto {
        6 => 20,
        17 => 8,
        1 if !ipv6 => 4,
        58 if ipv6 => 4,
        _ => 0,
    }
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in bytes.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 fragment fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct Frag {
    /// Offset in bytes (a multiple of 8).
    pub offset: u16,
    pub more: bool,
    pub id: u16,
}

/// An IPv4 packet (header with `options`, padded to 4 bytes) around `payload`.
pub fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    options: &[u8],
    frag: Frag,
    payload: &[u8],
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let ihl = 5 + opts.len() / 4;
    let total = ihl * 4 + payload.len();
    let mut h = vec![(4 << 4) | ihl as u8, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&frag.id.to_be_bytes());
    let fo = (frag.offset / 8) | if frag.more { 0x2000 } else { 0 };
    h.extend_from_slice(&fo.to_be_bytes());
    h.push(64);
    h.push(proto);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&opts);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop options with this many extra 8-octet units.
    HopByHop(u8),
    /// Routing header (type 0 segments left 0) with this many extra 8-octet units.
    Routing(u8),
    DestOpts(u8),
    /// Fragment header: offset in bytes (multiple of 8), more-fragments flag.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Authentication header with this payload length field (4-octet units minus 2).
    Auth(u8),
    Mobility(u8),
    Hip(u8),
    Shim6(u8),
}

impl Ext {
    pub fn number(self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::Routing(_) => 43,
            Ext::DestOpts(_) => 60,
            Ext::Fragment { .. } => 44,
            Ext::Auth(_) => 51,
            Ext::Mobility(_) => 135,
            Ext::Hip(_) => 139,
            Ext::Shim6(_) => 140,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::Fragment { offset, more } => {
                let fo = (offset & !7) | more as u16;
                let mut b = vec![next, 0];
                b.extend_from_slice(&fo.to_be_bytes());
                b.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                b
            }
            Ext::Auth(len) => {
                let total = (len as usize + 2) * 4;
                let mut b = vec![next, len];
                b.resize(total, 0);
                b
            }
            Ext::Routing(units) => {
                // Routing type 0 with no segments left: the packet is at its final hop.
                let mut b = vec![next, units, 0, 0];
                b.resize((units as usize + 1) * 8, 0);
                b
            }
            Ext::HopByHop(units)
            | Ext::DestOpts(units)
            | Ext::Mobility(units)
            | Ext::Hip(units)
            | Ext::Shim6(units) => {
                let total = (units as usize + 1) * 8;
                let mut b = vec![next, units];
                // PadN option filling the rest, so an options header is well formed; the
                // other types only need their length right for the datapath and tshark.
                b.push(1);
                b.push((total - 4) as u8);
                b.resize(total, 0);
                b
            }
        }
    }
}

/// An IPv6 packet with extension headers (in order) and a final `proto` around `payload`.
/// Returns the packet and the length of everything before the transport header.
pub fn ipv6(
    src: [u8; 16],
    dst: [u8; 16],
    exts: &[Ext],
    proto: u8,
    payload: &[u8],
) -> (Vec<u8>, usize) {
    let mut chain = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map(|n| n.number()).unwrap_or(proto);
        chain.extend_from_slice(&e.bytes(next));
    }
    let first = exts.first().map(|e| e.number()).unwrap_or(proto);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((chain.len() + payload.len()) as u16).to_be_bytes());
    h.push(first);
    h.push(64);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&chain);
    let l4_at = h.len();
    h.extend_from_slice(payload);
    (h, l4_at)
}

/// IPv4 over Ethernet: a frame and how much of it the datapath needs.
pub fn v4_frame(
    tags: &[(u16, u16)],
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    options: &[u8],
    frag: Frag,
    l4: &[u8],
) -> Built {
    let ip = ipv4(src, dst, proto, options, frag, l4);
    let ihl = (ip[0] & 0x0f) as usize * 4;
    // A later fragment is recognised from the fixed 20-byte header alone.
    let needed = if frag.offset == 0 {
        ihl + l4_needed(proto, false)
    } else {
        20
    };
    Built {
        needed: eth_len(tags.len()) + needed,
        frame: ethernet(tags, ETH_P_IP, &ip),
    }
}

/// IPv6 over Ethernet: a frame and how much of it the datapath needs.
pub fn v6_frame(
    tags: &[(u16, u16)],
    src: [u8; 16],
    dst: [u8; 16],
    exts: &[Ext],
    proto: u8,
    l4: &[u8],
) -> Built {
    let later_fragment = exts
        .iter()
        .any(|e| matches!(e, Ext::Fragment { offset, .. } if *offset != 0));
    let (ip, l4_at) = ipv6(src, dst, exts, proto, l4);
    let needed = if later_fragment {
        // The parser stops at the fragment header that names a non-zero offset.
        let mut at = 40;
        for e in exts {
            let len = e.bytes(0).len();
            if matches!(e, Ext::Fragment { offset, .. } if *offset != 0) {
                at += 8;
                break;
            }
            at += len;
        }
        eth_len(tags.len()) + at
    } else {
        eth_len(tags.len()) + l4_at + l4_needed(proto, true)
    };
    Built {
        needed,
        frame: ethernet(tags, ETH_P_IPV6, &ip),
    }
}

/// VXLAN (RFC 7348) header around an inner Ethernet frame, for UDP port 4789.
pub fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut h = vec![0x08, 0, 0, 0];
    h.extend_from_slice(&(vni << 8).to_be_bytes());
    h.extend_from_slice(inner);
    h
}

/// GRE (RFC 2784) header without options around an inner packet of `ethertype`.
pub fn gre(ethertype: u16, inner: &[u8]) -> Vec<u8> {
    let mut h = vec![0, 0];
    h.extend_from_slice(&ethertype.to_be_bytes());
    h.extend_from_slice(inner);
    h
}

/// A TCP connection between two IPv4 endpoints, for building its segments in either direction.
#[derive(Clone, Copy, Debug)]
pub struct TcpConn {
    pub client: ([u8; 4], u16),
    pub server: ([u8; 4], u16),
}

impl TcpConn {
    pub fn new(client: [u8; 4], client_port: u16, server: [u8; 4], server_port: u16) -> Self {
        TcpConn {
            client: (client, client_port),
            server: (server, server_port),
        }
    }

    /// The Ethernet frame of one segment sent by the client (`from_client`) or the server.
    pub fn frame(&self, from_client: bool, flags: u8, payload: &[u8]) -> Vec<u8> {
        let ((src, sp), (dst, dp)) = if from_client {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        v4_frame(
            &[],
            src,
            dst,
            6,
            &[],
            Frag::default(),
            &tcp(sp, dp, flags, payload),
        )
        .frame
    }
}
