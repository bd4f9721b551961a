//! The agent's own packet parser: the same header walk as the kernel datapath, over a slice.
//!
//! It must attribute exactly the packets the kernel attributes, to the same canonical key
//! (`FlowKey::canonical` from sensor-common), and name the same reason for the rest: the
//! capture replay uses it to stamp kernel flows with capture time, and tests compare the two.
//! Every read is bounds-checked by slice access; nothing here can panic on hostile bytes.
//!
//! Decapsulation follows the datapath's rules exactly (`sensor-ebpf/src/parse.rs`): one
//! level of PPPoE, MPLS, GRE, VXLAN, Geneve or IP in IP, each under its
//! `DatapathSettings::decap` bit; the inner packet is keyed, and the tunnel is returned as the
//! [`TunnelInfo`] the datapath writes into `TUNNELS` when the flow is created.

use sensor_common::{
    counter, ipv4_mapped, ipv6_words, tunnel, Addr, FlowKey, TunnelInfo, DIR_LO_TO_HI,
    MAX_INNER_OFFSET, MAX_IPV6_EXT_HEADERS, MAX_MPLS_LABELS, MAX_VLAN_TAGS,
};

/// What one packet contributes to its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub key: FlowKey,
    /// Direction index ([`sensor_common::DIR_LO_TO_HI`] or [`sensor_common::DIR_HI_TO_LO`]).
    pub dir: usize,
    pub tcp_flags: u8,
    /// Offset of the TCP or UDP payload in the frame (0 for other protocols); may equal the
    /// frame's length (no payload).
    pub payload_off: usize,
    /// Where the IP packet ends by its own length field (`usize::MAX` when that field is 0):
    /// bytes past it are link-layer padding. The same rule as the datapath's.
    pub payload_end: usize,
    /// The tunnel the packet came out of (`kind` 0: none), oriented by `key` as the datapath
    /// records it.
    pub tunnel: TunnelInfo,
}

impl Parsed {
    /// Transport payload bytes of a frame `wire_len` bytes long on the wire (0 for protocols
    /// without ports): up to the IP length, never Ethernet padding.
    pub fn payload_len(&self, wire_len: usize) -> usize {
        if self.payload_off == 0 {
            return 0;
        }
        wire_len
            .min(self.payload_end)
            .saturating_sub(self.payload_off)
    }
}

/// See the datapath's `ip_end`.
fn ip_end(start: usize, len: usize) -> usize {
    if len == 0 {
        usize::MAX
    } else {
        start + len
    }
}

/// Why a packet could not be attributed: an index into [`sensor_common::counter::NAMES`].
pub type Reason = u32;

fn byte(b: &[u8], at: usize) -> Result<u8, Reason> {
    b.get(at).copied().ok_or(counter::TRUNCATED)
}

fn be16(b: &[u8], at: usize) -> Result<u16, Reason> {
    Ok(u16::from_be_bytes([byte(b, at)?, byte(b, at + 1)?]))
}

fn need(b: &[u8], at: usize, len: usize) -> Result<(), Reason> {
    if at.checked_add(len).is_some_and(|end| end <= b.len()) {
        Ok(())
    } else {
        Err(counter::TRUNCATED)
    }
}

fn array<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], Reason> {
    need(b, at, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    Ok(out)
}

/// Parses an Ethernet frame exactly as the kernel datapath does, with every encapsulation
/// decapsulated (`[sensor.decap]`'s default).
pub fn parse_frame(frame: &[u8]) -> Result<Parsed, Reason> {
    parse_frame_with(frame, tunnel::ALL)
}

/// An IP header's fields that matter here (the datapath's `Ip`).
struct Ip {
    src: Addr,
    dst: Addr,
    proto: u8,
    l4_off: usize,
    ip_end: usize,
    v6: bool,
}

/// Where the next level starts (the datapath's `Inner`): `ethertype` 0 for an Ethernet frame.
struct Inner {
    off: usize,
    ethertype: u16,
    kind: u8,
    id: Option<u32>,
}

/// [`parse_frame`] with the encapsulations of `decap` (`DatapathSettings::decap` bits).
pub fn parse_frame_with(frame: &[u8], decap: u32) -> Result<Parsed, Reason> {
    let on = |kind: u8| decap & (1 << kind) != 0;
    let mut tun = TunnelInfo::default();
    let mut outer: Option<(Addr, Addr)> = None;
    let mut off = 0;
    let mut l3_ethertype = 0u16;
    for level in 0..2 {
        let inner = level == 1;
        let mut ethertype = l3_ethertype;
        if ethertype == 0 {
            ethertype = be16(frame, off + 12)?;
            off += 14;
            for _ in 0..MAX_VLAN_TAGS {
                if ethertype != 0x8100 && ethertype != 0x88a8 {
                    break;
                }
                ethertype = be16(frame, off + 2)?;
                off += 4;
            }
            if !inner && ethertype != 0x0800 && ethertype != 0x86dd {
                if ethertype == 0x8864 && on(tunnel::PPPOE) {
                    need(frame, off, 8)?;
                    tun.kind = tunnel::PPPOE;
                    tun.has_id = 1;
                    tun.id = be16(frame, off + 2)? as u32;
                    ethertype = match be16(frame, off + 6)? {
                        0x0021 => 0x0800,
                        0x0057 => 0x86dd,
                        _ => return Err(counter::UNKNOWN_PPP_PROTOCOL),
                    };
                    off += 8;
                } else if (ethertype == 0x8847 || ethertype == 0x8848) && on(tunnel::MPLS) {
                    ethertype = mpls(frame, &mut off, &mut tun)?;
                }
            }
        }
        let ip = match ethertype {
            0x0800 => ipv4(frame, off)?,
            0x86dd => ipv6(frame, off)?,
            _ if inner => return Err(counter::TUNNEL_PAYLOAD_NOT_IP),
            0x8100 | 0x88a8 => return Err(counter::TOO_MANY_VLAN_TAGS),
            _ => return Err(counter::NOT_IP),
        };
        if !inner && tun.kind == tunnel::NONE {
            if let Some(next) = ip_tunnel(frame, &ip, &on)? {
                // The datapath's bound on where its inner program may start.
                if next.off > MAX_INNER_OFFSET {
                    return Err(counter::TRUNCATED);
                }
                tun.kind = next.kind;
                tun.has_id = next.id.is_some() as u8;
                tun.id = next.id.unwrap_or(0);
                outer = Some((ip.src, ip.dst));
                off = next.off;
                l3_ethertype = next.ethertype;
                continue;
            }
        }
        let mut p = l4(frame, &ip)?;
        if tun.kind != tunnel::NONE {
            if let Some((src, dst)) = outer {
                // Oriented by the inner key, as the datapath's `record_tunnel`.
                (tun.outer_lo, tun.outer_hi) = if p.dir == DIR_LO_TO_HI {
                    (src, dst)
                } else {
                    (dst, src)
                };
            }
            p.tunnel = tun;
        }
        return Ok(p);
    }
    // Not reached: level 1 always returns.
    Err(counter::TRUNCATED)
}

/// Walks an MPLS label stack to its bottom; the ethertype of the IP packet under it.
fn mpls(b: &[u8], off: &mut usize, tun: &mut TunnelInfo) -> Result<u16, Reason> {
    for _ in 0..MAX_MPLS_LABELS {
        let e = u32::from_be_bytes(array(b, *off)?);
        *off += 4;
        if e & 0x100 != 0 {
            tun.kind = tunnel::MPLS;
            tun.has_id = 1;
            tun.id = e >> 12;
            return match byte(b, *off)? >> 4 {
                4 => Ok(0x0800),
                6 => Ok(0x86dd),
                _ => Err(counter::TUNNEL_PAYLOAD_NOT_IP),
            };
        }
    }
    Err(counter::TOO_MANY_MPLS_LABELS)
}

/// The tunnel an IP packet carries, if its decapsulation is on (the datapath's `ip_tunnel`).
fn ip_tunnel(b: &[u8], ip: &Ip, on: &impl Fn(u8) -> bool) -> Result<Option<Inner>, Reason> {
    let off = ip.l4_off;
    match ip.proto {
        17 => {
            need(b, off, 8)?;
            let kind = match be16(b, off + 2)? {
                4789 => tunnel::VXLAN,
                6081 => tunnel::GENEVE,
                _ => return Ok(None),
            };
            if !on(kind) {
                return Ok(None);
            }
            let h = off + 8;
            need(b, h, 8)?;
            let first = b[h];
            let id = Some(u32::from_be_bytes(array(b, h + 4)?) >> 8);
            if kind == tunnel::VXLAN {
                if first & 0x08 == 0 {
                    return Ok(None);
                }
                return Ok(Some(Inner {
                    off: h + 8,
                    ethertype: 0,
                    kind,
                    id,
                }));
            }
            if first >> 6 != 0 {
                return Ok(None);
            }
            let ethertype = match be16(b, h + 2)? {
                p @ (0x0800 | 0x86dd) => p,
                0x6558 => 0,
                _ => return Ok(None),
            };
            Ok(Some(Inner {
                off: h + 8 + (first & 0x3f) as usize * 4,
                ethertype,
                kind,
                id,
            }))
        }
        47 => {
            if !on(tunnel::GRE) {
                return Ok(None);
            }
            let flags = be16(b, off)?;
            let proto = be16(b, off + 2)?;
            if flags & 0x4007 != 0 {
                return Ok(None);
            }
            let ethertype = match proto {
                0x0800 | 0x86dd => proto,
                0x6558 => 0,
                _ => return Ok(None),
            };
            let mut at = off + 4;
            if flags & 0x8000 != 0 {
                at += 4;
            }
            let mut id = None;
            if flags & 0x2000 != 0 {
                id = Some(u32::from_be_bytes(array(b, at)?));
                at += 4;
            }
            if flags & 0x1000 != 0 {
                at += 4;
            }
            Ok(Some(Inner {
                off: at,
                ethertype,
                kind: tunnel::GRE,
                id,
            }))
        }
        4 | 41 if on(tunnel::IPIP) => Ok(Some(Inner {
            off,
            ethertype: if ip.proto == 4 { 0x0800 } else { 0x86dd },
            kind: tunnel::IPIP,
            id: None,
        })),
        _ => Ok(None),
    }
}

fn ipv4(b: &[u8], off: usize) -> Result<Ip, Reason> {
    need(b, off, 20)?;
    let ver_ihl = b[off];
    if ver_ihl >> 4 != 4 || ver_ihl & 0x0f < 5 {
        return Err(counter::BAD_IP_HEADER);
    }
    if be16(b, off + 6)? & 0x1fff != 0 {
        return Err(counter::LATER_FRAGMENT);
    }
    Ok(Ip {
        src: ipv4_mapped(array(b, off + 12)?),
        dst: ipv4_mapped(array(b, off + 16)?),
        proto: b[off + 9],
        l4_off: off + (ver_ihl & 0x0f) as usize * 4,
        ip_end: ip_end(off, be16(b, off + 2)? as usize),
        v6: false,
    })
}

fn is_ext_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

fn ipv6(b: &[u8], off: usize) -> Result<Ip, Reason> {
    need(b, off, 40)?;
    if b[off] >> 4 != 6 {
        return Err(counter::BAD_IP_HEADER);
    }
    let mut next = b[off + 6];
    let src = ipv6_words(array(b, off + 8)?);
    let dst = ipv6_words(array(b, off + 24)?);
    let end = ip_end(off + 40, be16(b, off + 4)? as usize);
    let mut off = off + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ext_header(next) {
            break;
        }
        // The fixed 8 bytes must be present before anything in them is believed.
        need(b, off, 8)?;
        let len = match next {
            51 => (byte(b, off + 1)? as usize + 2) * 4,
            44 => {
                if be16(b, off + 2)? & 0xfff8 != 0 {
                    return Err(counter::LATER_FRAGMENT);
                }
                8
            }
            _ => (byte(b, off + 1)? as usize + 1) * 8,
        };
        next = b[off];
        off += len;
    }
    if is_ext_header(next) {
        return Err(counter::IPV6_EXT_CHAIN_TOO_LONG);
    }
    Ok(Ip {
        src,
        dst,
        proto: next,
        l4_off: off,
        ip_end: end,
        v6: true,
    })
}

fn l4(b: &[u8], ip: &Ip) -> Result<Parsed, Reason> {
    let (off, proto) = (ip.l4_off, ip.proto);
    let icmp = if ip.v6 { 58 } else { 1 };
    let mut payload_off = 0;
    let (sport, dport, tcp_flags) = match proto {
        6 => {
            need(b, off, 20)?;
            payload_off = off + (b[off + 12] >> 4) as usize * 4;
            (be16(b, off)?, be16(b, off + 2)?, b[off + 13])
        }
        17 => {
            need(b, off, 8)?;
            payload_off = off + 8;
            (be16(b, off)?, be16(b, off + 2)?, 0)
        }
        p if p == icmp => {
            need(b, off, 4)?;
            (0, 0, 0)
        }
        // No transport header to read, but the IP header must still be whole.
        _ => {
            need(b, off, 0)?;
            (0, 0, 0)
        }
    };
    let (key, dir) = FlowKey::canonical(&ip.src, sport, &ip.dst, dport, proto);
    Ok(Parsed {
        key,
        dir,
        tcp_flags,
        payload_off,
        payload_end: ip.ip_end,
        tunnel: TunnelInfo::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 (total length `tot_len`) + TCP (20 bytes) + `payload` bytes, padded to
    /// `frame_len`.
    fn v4_tcp(tot_len: u16, payload: usize, frame_len: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
        f.extend(ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&3333u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        f.extend(tcp);
        f.extend(vec![0x17; payload]);
        f.resize(frame_len.max(f.len()), 0);
        f
    }

    #[test]
    fn payload_length_stops_at_the_ip_length_not_at_ethernet_padding() {
        // A bare ACK padded to the 60-byte minimum: no payload.
        let ack = v4_tcp(40, 0, 60);
        let p = parse_frame(&ack).expect("parses");
        assert_eq!(p.payload_off, 54);
        assert_eq!(p.payload_len(ack.len()), 0);
        // Three payload bytes, padded.
        let small = v4_tcp(43, 3, 60);
        assert_eq!(parse_frame(&small).expect("parses").payload_len(60), 3);
        // Unpadded, and cut by a snap length: the wire length decides.
        let big = v4_tcp(40 + 1000, 1000, 0);
        let p = parse_frame(&big[..100]).expect("headers were captured");
        assert_eq!(p.payload_len(big.len()), 1000);
        // IP length 0 (GSO super-packets): up to the frame's end.
        let gso = v4_tcp(0, 200, 0);
        assert_eq!(
            parse_frame(&gso).expect("parses").payload_len(gso.len()),
            200
        );
        // An IP length shorter than the headers: no payload, no underflow.
        let short = v4_tcp(30, 10, 0);
        assert_eq!(
            parse_frame(&short)
                .expect("parses")
                .payload_len(short.len()),
            0
        );
    }
}
