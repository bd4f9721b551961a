//! Encapsulating IP packets for tests: PPPoE sessions (behind VLAN tags or not), MPLS label
//! stacks, GRE (with checksum, key and sequence options, IP or Ethernet inside), VXLAN,
//! Geneve (with options) and IP in IP (4in4, 6in4, 4in6, 6in6).
//!
//! Written from the specifications (RFC 2516, 3032, 2784/2890, 7348, 8926, 2003/2473),
//! independently of the datapath's parser, so the tests built on them check the parser. Each
//! [`Encap`] also says what the sensor must report about the tunnel ([`Encap::expect`]).

use std::net::IpAddr;

use crate::frames::{self, ETH_P_IP, ETH_P_IPV6};

pub const ETH_P_PPPOE_SES: u16 = 0x8864;
pub const ETH_P_MPLS_UC: u16 = 0x8847;
pub const ETH_P_TEB: u16 = 0x6558;
pub const PPP_IP: u16 = 0x0021;
pub const PPP_IPV6: u16 = 0x0057;
/// PPP Link Control Protocol: a PPPoE session frame that carries no IP.
pub const PPP_LCP: u16 = 0xc021;

/// Tunnel endpoints: the client's side is `A`, the server's `B`.
pub const OUTER_V4_A: [u8; 4] = [203, 0, 113, 1];
pub const OUTER_V4_B: [u8; 4] = [203, 0, 113, 2];
pub const OUTER_V6_A: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];
pub const OUTER_V6_B: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
];

/// One encapsulation, with its identifiers.
#[derive(Clone, Debug)]
pub enum Encap {
    /// PPPoE session behind these VLAN tags (QinQ + PPPoE is common on access links).
    Pppoe { session: u16, tags: Vec<(u16, u16)> },
    /// An MPLS label stack, top first; the last is the bottom of the stack.
    Mpls { labels: Vec<u32> },
    /// GRE over IPv4 or IPv6, optionally with checksum, key and sequence number; `teb`:
    /// transparent Ethernet bridging (an Ethernet frame inside).
    Gre {
        outer_v6: bool,
        csum: bool,
        key: Option<u32>,
        seq: Option<u32>,
        teb: bool,
    },
    /// VXLAN over IPv4 (UDP 4789).
    Vxlan { vni: u32 },
    /// Geneve over IPv4 (UDP 6081) with `opt_words` 4-byte units of options.
    Geneve { vni: u32, opt_words: u8 },
    /// IP in IP over IPv4 (protocol 4 or 41) or IPv6.
    IpIp { outer_v6: bool },
}

/// What the sensor must say about the tunnel of a flow inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// `tunnel.type`.
    pub kind: &'static str,
    /// `tunnel.id`.
    pub id: Option<u32>,
    /// `tunnel.source.ip` (the client's side) and `tunnel.destination.ip`.
    pub outer: Option<(IpAddr, IpAddr)>,
}

impl Encap {
    /// A short name for test output and capture files.
    pub fn name(&self) -> String {
        match self {
            Encap::Pppoe { tags, .. } if tags.is_empty() => "pppoe".into(),
            Encap::Pppoe { tags, .. } => format!("{}vlan-pppoe", tags.len()),
            Encap::Mpls { labels } => format!("mpls{}", labels.len()),
            Encap::Gre {
                outer_v6, teb, key, ..
            } => format!(
                "gre{}{}{}",
                if *outer_v6 { "6" } else { "4" },
                if *teb { "-teb" } else { "" },
                if key.is_some() { "-key" } else { "" }
            ),
            Encap::Vxlan { .. } => "vxlan".into(),
            Encap::Geneve { .. } => "geneve".into(),
            Encap::IpIp { outer_v6 } => format!("ipip{}", if *outer_v6 { "6" } else { "4" }),
        }
    }

    fn outer_v6(&self) -> bool {
        matches!(
            self,
            Encap::Gre { outer_v6: true, .. } | Encap::IpIp { outer_v6: true }
        )
    }

    /// The report the sensor must give for a flow whose client sits on side A.
    pub fn expect(&self) -> Expected {
        let outer = if self.outer_v6() {
            Some((IpAddr::from(OUTER_V6_A), IpAddr::from(OUTER_V6_B)))
        } else {
            Some((IpAddr::from(OUTER_V4_A), IpAddr::from(OUTER_V4_B)))
        };
        match self {
            Encap::Pppoe { session, .. } => Expected {
                kind: "pppoe",
                id: Some(*session as u32),
                outer: None,
            },
            Encap::Mpls { labels } => Expected {
                kind: "mpls",
                id: labels.last().copied(),
                outer: None,
            },
            Encap::Gre { key, .. } => Expected {
                kind: "gre",
                id: *key,
                outer,
            },
            Encap::Vxlan { vni } => Expected {
                kind: "vxlan",
                id: Some(*vni),
                outer,
            },
            Encap::Geneve { vni, .. } => Expected {
                kind: "geneve",
                id: Some(*vni),
                outer,
            },
            Encap::IpIp { .. } => Expected {
                kind: "ipip",
                id: None,
                outer,
            },
        }
    }

    /// The Ethernet frame carrying the IP packet `ip` (of `ethertype`), sent from side A
    /// (`from_a`) or B. Also returns the offset of `ip` in the frame.
    pub fn frame(&self, ethertype: u16, ip: &[u8], from_a: bool) -> (Vec<u8>, usize) {
        let inner_eth = || frames::ethernet(&[], ethertype, ip);
        let ip_at = |frame: &Vec<u8>, inner_len: usize| frame.len() - inner_len;
        let frame = match self {
            Encap::Pppoe { session, tags } => {
                let proto = if ethertype == ETH_P_IPV6 {
                    PPP_IPV6
                } else {
                    PPP_IP
                };
                frames::ethernet(tags, ETH_P_PPPOE_SES, &pppoe(*session, proto, ip))
            }
            Encap::Mpls { labels } => frames::ethernet(&[], ETH_P_MPLS_UC, &mpls(labels, ip)),
            Encap::Gre {
                outer_v6,
                csum,
                key,
                seq,
                teb,
            } => {
                let (proto, inner) = if *teb {
                    (ETH_P_TEB, inner_eth())
                } else {
                    (ethertype, ip.to_vec())
                };
                outer(
                    *outer_v6,
                    from_a,
                    47,
                    &gre(*csum, *key, *seq, proto, &inner),
                )
            }
            Encap::Vxlan { vni } => {
                let sport = if from_a { 49200 } else { 51000 };
                outer(
                    false,
                    from_a,
                    17,
                    &frames::udp(sport, 4789, &frames::vxlan(*vni, &inner_eth())),
                )
            }
            Encap::Geneve { vni, opt_words } => {
                let sport = if from_a { 49300 } else { 51100 };
                outer(
                    false,
                    from_a,
                    17,
                    &frames::udp(sport, 6081, &geneve(*vni, *opt_words, &inner_eth())),
                )
            }
            Encap::IpIp { outer_v6 } => {
                let proto = if ethertype == ETH_P_IPV6 { 41 } else { 4 };
                outer(*outer_v6, from_a, proto, ip)
            }
        };
        let at = ip_at(&frame, ip.len());
        (frame, at)
    }
}

/// An outer IPv4 or IPv6 packet from side A or B in an Ethernet frame.
fn outer(v6: bool, from_a: bool, proto: u8, payload: &[u8]) -> Vec<u8> {
    if v6 {
        let (s, d) = if from_a {
            (OUTER_V6_A, OUTER_V6_B)
        } else {
            (OUTER_V6_B, OUTER_V6_A)
        };
        frames::ethernet(&[], ETH_P_IPV6, &frames::ipv6(s, d, &[], proto, payload).0)
    } else {
        let (s, d) = if from_a {
            (OUTER_V4_A, OUTER_V4_B)
        } else {
            (OUTER_V4_B, OUTER_V4_A)
        };
        frames::ethernet(
            &[],
            ETH_P_IP,
            &frames::ipv4(s, d, proto, &[], frames::Frag::default(), payload),
        )
    }
}

/// PPPoE session header (version 1, type 1, code 0) and the PPP protocol around `payload`.
pub fn pppoe(session: u16, ppp_proto: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x11, 0x00];
    h.extend_from_slice(&session.to_be_bytes());
    // The length covers the PPP protocol field and the payload.
    h.extend_from_slice(&((2 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&ppp_proto.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An MPLS label stack (top first; TC 0, TTL 64, S set on the last) around `payload`.
pub fn mpls(labels: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        let bottom = if i + 1 == labels.len() { 1 << 8 } else { 0 };
        h.extend_from_slice(&(((l & 0xfffff) << 12) | bottom | 64).to_be_bytes());
    }
    h.extend_from_slice(payload);
    h
}

/// GRE (RFC 2784, key and sequence number from RFC 2890) around `inner` of `proto`.
pub fn gre(csum: bool, key: Option<u32>, seq: Option<u32>, proto: u16, inner: &[u8]) -> Vec<u8> {
    let mut flags = 0u16;
    if csum {
        flags |= 0x8000;
    }
    if key.is_some() {
        flags |= 0x2000;
    }
    if seq.is_some() {
        flags |= 0x1000;
    }
    let mut h = flags.to_be_bytes().to_vec();
    h.extend_from_slice(&proto.to_be_bytes());
    if csum {
        // Checksum (left 0: tshark does not check it by default) and reserved.
        h.extend_from_slice(&[0, 0, 0, 0]);
    }
    if let Some(k) = key {
        h.extend_from_slice(&k.to_be_bytes());
    }
    if let Some(s) = seq {
        h.extend_from_slice(&s.to_be_bytes());
    }
    h.extend_from_slice(inner);
    h
}

/// Geneve (RFC 8926) version 0 with `opt_words` 4-byte units of options (one experimental
/// option class 0xffff, type 1, filled with zeros) around an Ethernet frame.
pub fn geneve(vni: u32, opt_words: u8, inner: &[u8]) -> Vec<u8> {
    let mut h = vec![opt_words & 0x3f, 0];
    h.extend_from_slice(&ETH_P_TEB.to_be_bytes());
    h.extend_from_slice(&(vni << 8).to_be_bytes());
    if opt_words > 0 {
        // Option header: class, type, length of the option's data in 4-byte units.
        h.extend_from_slice(&0xffffu16.to_be_bytes());
        h.push(0x01);
        h.push((opt_words - 1) & 0x1f);
        h.resize(h.len() + 4 * (opt_words as usize - 1), 0);
    }
    h.extend_from_slice(inner);
    h
}

/// Every encapsulation the sensor decapsulates, in the variants the tests cover.
pub fn all() -> Vec<Encap> {
    vec![
        Encap::Pppoe {
            session: 0x1234,
            tags: vec![],
        },
        Encap::Pppoe {
            session: 77,
            tags: vec![(frames::TPID_8021AD, 100), (frames::TPID_8021Q, 20)],
        },
        Encap::Mpls {
            labels: vec![16001, 24005],
        },
        Encap::Mpls {
            labels: vec![100, 200, 300, 1048575],
        },
        Encap::Gre {
            outer_v6: false,
            csum: false,
            key: None,
            seq: None,
            teb: false,
        },
        Encap::Gre {
            outer_v6: false,
            csum: true,
            key: Some(0xdead_beef),
            seq: Some(7),
            teb: false,
        },
        Encap::Gre {
            outer_v6: true,
            csum: false,
            key: Some(42),
            seq: None,
            teb: true,
        },
        Encap::Vxlan { vni: 4242 },
        Encap::Geneve {
            vni: 0xabcdef,
            opt_words: 3,
        },
        Encap::IpIp { outer_v6: false },
        Encap::IpIp { outer_v6: true },
    ]
}
