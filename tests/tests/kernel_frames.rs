//! Crafted frames through the real XDP and TC programs (BPF_PROG_TEST_RUN): every header
//! variant the datapath claims, every truncation offset of each, and random garbage.
//!
//! Each frame's outcome is read back from the kernel (the flow it was added to, or the reason
//! counter it bumped) and compared with an expectation built from the frame's construction,
//! and with the agent's user-space parser, which must agree with the kernel packet by packet.

use std::net::IpAddr;

use sensor_agent::source::{
    datapath::LoadOptions,
    packet::{parse_frame, parse_frame_with},
};
use sensor_common::{
    counter, ipv4_mapped, ipv6_words, tunnel, Addr, DatapathSettings, FlowKey, TunnelInfo,
    CLIENT_BY_FIRST_PACKET, CLIENT_BY_SYN, CLIENT_HI, CLIENT_LO, DIR_LO_TO_HI,
};
use sensor_tests::{
    frames::{
        self, Built, Ext, Frag, ETH_P_IP, ETH_P_IPV6, TCP_ACK, TCP_PSH, TCP_SYN, TPID_8021AD,
        TPID_8021Q,
    },
    kernel::Kernel,
    tunnels::{self, Encap},
};

const V4_A: [u8; 4] = [10, 1, 0, 1];
const V4_B: [u8; 4] = [10, 1, 0, 2];
const V6_A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
const V6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xb];

/// What the datapath must do with a whole frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Added to the flow of this packet (sender first), with these TCP flags.
    Flow { key: FlowKey, dir: usize, flags: u8 },
    /// Counted under this reason.
    Reason(u32),
}

struct Variant {
    name: &'static str,
    built: Built,
    expect: Expect,
}

fn flow4(sport: u16, dport: u16, proto: u8, flags: u8) -> Expect {
    let (key, dir) =
        FlowKey::canonical(&ipv4_mapped(V4_A), sport, &ipv4_mapped(V4_B), dport, proto);
    Expect::Flow { key, dir, flags }
}

fn flow6(sport: u16, dport: u16, proto: u8, flags: u8) -> Expect {
    let (key, dir) = FlowKey::canonical(&ipv6_words(V6_A), sport, &ipv6_words(V6_B), dport, proto);
    Expect::Flow { key, dir, flags }
}

fn v4(tags: &[(u16, u16)], proto: u8, options: &[u8], frag: Frag, l4: &[u8]) -> Built {
    frames::v4_frame(tags, V4_A, V4_B, proto, options, frag, l4)
}

fn v6(tags: &[(u16, u16)], exts: &[Ext], proto: u8, l4: &[u8]) -> Built {
    frames::v6_frame(tags, V6_A, V6_B, exts, proto, l4)
}

fn variants() -> Vec<Variant> {
    let syn = frames::tcp(40000, 443, TCP_SYN, &[]);
    let data = frames::tcp(40000, 443, TCP_ACK | TCP_PSH, b"hello");
    let dgram = frames::udp(5353, 53, b"query");
    let ping = frames::icmp(8, 0, &[0; 8]);
    let ping6 = frames::icmp(128, 0, &[0; 8]);
    // ERSPAN (0x88be) in GRE: not an encapsulation the sensor opens, so the outer GRE flow.
    let gre_payload = frames::gre(
        0x88be,
        &frames::ipv4(
            [192, 0, 2, 1],
            [192, 0, 2, 2],
            17,
            &[],
            Frag::default(),
            &dgram,
        ),
    );
    let whole = Frag::default();
    let first = Frag {
        offset: 0,
        more: true,
        id: 7,
    };
    let later = Frag {
        offset: 1480,
        more: false,
        id: 7,
    };
    let q = [(TPID_8021Q, 100)];
    let qinq = [(TPID_8021AD, 200), (TPID_8021Q, 100)];
    let qq = [(TPID_8021Q, 200), (TPID_8021Q, 100)];
    let three = [(TPID_8021AD, 300), (TPID_8021Q, 200), (TPID_8021Q, 100)];
    let six_exts = [
        Ext::HopByHop(0),
        Ext::DestOpts(1),
        Ext::Routing(0),
        Ext::Auth(4),
        Ext::Mobility(0),
        Ext::DestOpts(0),
    ];
    let seven_exts = [
        Ext::HopByHop(0),
        Ext::DestOpts(1),
        Ext::Routing(0),
        Ext::Auth(4),
        Ext::Mobility(0),
        Ext::Hip(0),
        Ext::DestOpts(0),
    ];
    let mut bad_version = v4(&[], 6, &[], whole, &data);
    bad_version.frame[14] = 0x65;
    bad_version.needed = 14 + 20;
    let mut low_ihl = v4(&[], 6, &[], whole, &data);
    low_ihl.frame[14] = 0x44;
    low_ihl.needed = 14 + 20;
    let mut v6_bad_version = v6(&[], &[], 6, &data);
    v6_bad_version.frame[14] = 0x40;
    v6_bad_version.needed = 14 + 40;
    let mut too_long = v6(&[], &seven_exts, 17, &dgram);
    // The sixth header's fixed part is the last thing read before giving up.
    too_long.needed = 14 + 40 + [8, 16, 8, 24, 8].iter().sum::<usize>() + 8;
    let mut three_tags = Built {
        frame: frames::ethernet(
            &three,
            frames::ETH_P_IP,
            &frames::ipv4(V4_A, V4_B, 6, &[], whole, &data),
        ),
        needed: 0,
    };
    three_tags.needed = 14 + 8;
    let arp = Built {
        frame: frames::ethernet(&[], frames::ETH_P_ARP, &[0u8; 28]),
        needed: 14,
    };
    let mut esp = v6(&[], &[], 50, &[0u8; 16]);
    esp.needed = 14 + 40;
    // The GRE header is read to decide whether to open it.
    let mut gre_outer = v4(&[], 47, &[], whole, &gre_payload);
    gre_outer.needed += 4;
    let mut gre_options = v4(&[], 47, &[1; 8], whole, &gre_payload);
    gre_options.needed += 4;

    let mut all = vec![
        Variant {
            name: "ipv4 tcp syn",
            built: v4(&[], 6, &[], whole, &syn),
            expect: flow4(40000, 443, 6, TCP_SYN),
        },
        Variant {
            name: "ipv4 tcp data",
            built: v4(&[], 6, &[], whole, &data),
            expect: flow4(40000, 443, 6, TCP_ACK | TCP_PSH),
        },
        Variant {
            name: "ipv4 udp",
            built: v4(&[], 17, &[], whole, &dgram),
            expect: flow4(5353, 53, 17, 0),
        },
        Variant {
            name: "ipv4 icmp",
            built: v4(&[], 1, &[], whole, &ping),
            expect: flow4(0, 0, 1, 0),
        },
        Variant {
            name: "ipv4 gre (erspan, not opened)",
            built: gre_outer.clone(),
            expect: flow4(0, 0, 47, 0),
        },
        Variant {
            name: "ipv4 options ihl 6",
            built: v4(&[], 6, &[1, 1, 1, 0], whole, &data),
            expect: flow4(40000, 443, 6, TCP_ACK | TCP_PSH),
        },
        Variant {
            name: "ipv4 options ihl 15",
            built: v4(&[], 17, &[1; 40], whole, &dgram),
            expect: flow4(5353, 53, 17, 0),
        },
        Variant {
            name: "ipv4 options, other protocol",
            built: gre_options,
            expect: flow4(0, 0, 47, 0),
        },
        Variant {
            name: "ipv4 first fragment",
            built: v4(&[], 17, &[], first, &dgram),
            expect: flow4(5353, 53, 17, 0),
        },
        Variant {
            name: "ipv4 later fragment",
            built: v4(&[], 17, &[], later, &[0xab; 40]),
            expect: Expect::Reason(counter::LATER_FRAGMENT),
        },
        Variant {
            name: "ipv4 version 6 under ethertype ipv4",
            built: bad_version,
            expect: Expect::Reason(counter::BAD_IP_HEADER),
        },
        Variant {
            name: "ipv4 ihl 4",
            built: low_ihl,
            expect: Expect::Reason(counter::BAD_IP_HEADER),
        },
        Variant {
            name: "802.1q ipv4 tcp",
            built: v4(&q, 6, &[], whole, &syn),
            expect: flow4(40000, 443, 6, TCP_SYN),
        },
        Variant {
            name: "802.1ad+802.1q ipv4 udp",
            built: v4(&qinq, 17, &[], whole, &dgram),
            expect: flow4(5353, 53, 17, 0),
        },
        Variant {
            name: "802.1q+802.1q ipv6 tcp",
            built: v6(&qq, &[], 6, &data),
            expect: flow6(40000, 443, 6, TCP_ACK | TCP_PSH),
        },
        Variant {
            name: "three vlan tags",
            built: three_tags,
            expect: Expect::Reason(counter::TOO_MANY_VLAN_TAGS),
        },
        Variant {
            name: "arp",
            built: arp,
            expect: Expect::Reason(counter::NOT_IP),
        },
        Variant {
            name: "ipv6 tcp syn",
            built: v6(&[], &[], 6, &syn),
            expect: flow6(40000, 443, 6, TCP_SYN),
        },
        Variant {
            name: "ipv6 udp",
            built: v6(&[], &[], 17, &dgram),
            expect: flow6(5353, 53, 17, 0),
        },
        Variant {
            name: "ipv6 icmpv6",
            built: v6(&[], &[], 58, &ping6),
            expect: flow6(0, 0, 58, 0),
        },
        Variant {
            name: "ipv6 esp",
            built: esp,
            expect: flow6(0, 0, 50, 0),
        },
        Variant {
            name: "ipv6 hop-by-hop tcp",
            built: v6(&[], &[Ext::HopByHop(0)], 6, &data),
            expect: flow6(40000, 443, 6, TCP_ACK | TCP_PSH),
        },
        Variant {
            name: "ipv6 routing udp",
            built: v6(&[], &[Ext::Routing(2)], 17, &dgram),
            expect: flow6(5353, 53, 17, 0),
        },
        Variant {
            name: "ipv6 destination options tcp",
            built: v6(&[], &[Ext::DestOpts(3)], 6, &syn),
            expect: flow6(40000, 443, 6, TCP_SYN),
        },
        Variant {
            name: "ipv6 authentication header udp",
            built: v6(&[], &[Ext::Auth(4)], 17, &dgram),
            expect: flow6(5353, 53, 17, 0),
        },
        Variant {
            name: "ipv6 mobility, hip, shim6 udp",
            built: v6(
                &[],
                &[Ext::Mobility(0), Ext::Hip(1), Ext::Shim6(0)],
                17,
                &dgram,
            ),
            expect: flow6(5353, 53, 17, 0),
        },
        Variant {
            name: "ipv6 first fragment udp",
            built: v6(
                &[],
                &[Ext::Fragment {
                    offset: 0,
                    more: true,
                }],
                17,
                &dgram,
            ),
            expect: flow6(5353, 53, 17, 0),
        },
        Variant {
            name: "ipv6 later fragment",
            built: v6(
                &[],
                &[
                    Ext::HopByHop(0),
                    Ext::Fragment {
                        offset: 1232,
                        more: false,
                    },
                ],
                17,
                &[0xab; 40],
            ),
            expect: Expect::Reason(counter::LATER_FRAGMENT),
        },
        Variant {
            name: "ipv6 six extension headers",
            built: v6(&[], &six_exts, 17, &dgram),
            expect: flow6(5353, 53, 17, 0),
        },
        Variant {
            name: "ipv6 seven extension headers",
            built: too_long,
            expect: Expect::Reason(counter::IPV6_EXT_CHAIN_TOO_LONG),
        },
        Variant {
            name: "ipv6 version 4 under ethertype ipv6",
            built: v6_bad_version,
            expect: Expect::Reason(counter::BAD_IP_HEADER),
        },
        Variant {
            name: "ipv6 no next header",
            built: v6(&[], &[Ext::DestOpts(0)], 59, &[]),
            expect: flow6(0, 0, 59, 0),
        },
    ];
    all.extend(tunnel_variants());
    all
}

/// An IPv4/TCP segment and an IPv6/UDP datagram between the test endpoints inside every
/// encapsulation, and the tunnel frames that are counted by reason or as their outer flow.
fn tunnel_variants() -> Vec<Variant> {
    let data = frames::tcp(40000, 443, TCP_ACK | TCP_PSH, b"hello");
    let dgram = frames::udp(5353, 53, b"query");
    let mut out = Vec::new();
    for e in tunnels::all() {
        for v6 in [false, true] {
            let (ethertype, ip, l4_at, needed_l4, expect) = if v6 {
                let (ip, l4_at) = frames::ipv6(V6_A, V6_B, &[], 17, &dgram);
                (ETH_P_IPV6, ip, l4_at, 8, flow6(5353, 53, 17, 0))
            } else {
                let ip = frames::ipv4(V4_A, V4_B, 6, &[], Frag::default(), &data);
                (
                    ETH_P_IP,
                    ip,
                    20,
                    20,
                    flow4(40000, 443, 6, TCP_ACK | TCP_PSH),
                )
            };
            let (frame, at) = e.frame(ethertype, &ip, true);
            out.push(Variant {
                name: Box::leak(
                    format!(
                        "{} with {}",
                        e.name(),
                        if v6 { "ipv6 udp" } else { "ipv4 tcp" }
                    )
                    .into_boxed_str(),
                ),
                built: Built {
                    frame,
                    needed: at + l4_at + needed_l4,
                },
                expect,
            });
        }
    }
    let ip4 = frames::ipv4(V4_A, V4_B, 6, &[], Frag::default(), &data);
    let arp = frames::ethernet(&[], frames::ETH_P_ARP, &[0u8; 28]);
    let mut pseudowire = vec![0u8; 4];
    pseudowire.extend(frames::ethernet(&[], ETH_P_IP, &ip4));
    let mut vxlan_no_i = frames::vxlan(5, &frames::ethernet(&[], ETH_P_IP, &ip4));
    vxlan_no_i[0] = 0;
    let mut gre_v1 = frames::gre(ETH_P_IP, &ip4);
    gre_v1[1] = 1;
    out.extend([
        Variant {
            name: "pppoe lcp",
            built: Built {
                frame: frames::ethernet(
                    &[],
                    tunnels::ETH_P_PPPOE_SES,
                    &tunnels::pppoe(9, tunnels::PPP_LCP, &[1, 1, 0, 4]),
                ),
                needed: 14 + 8,
            },
            expect: Expect::Reason(counter::UNKNOWN_PPP_PROTOCOL),
        },
        Variant {
            name: "five mpls labels",
            built: Built {
                frame: frames::ethernet(
                    &[],
                    tunnels::ETH_P_MPLS_UC,
                    &tunnels::mpls(&[1, 2, 3, 4, 5], &ip4),
                ),
                needed: 14 + 16,
            },
            expect: Expect::Reason(counter::TOO_MANY_MPLS_LABELS),
        },
        Variant {
            name: "mpls pseudowire (control word, ethernet)",
            built: Built {
                frame: frames::ethernet(
                    &[],
                    tunnels::ETH_P_MPLS_UC,
                    &tunnels::mpls(&[100], &pseudowire),
                ),
                needed: 14 + 4 + 1,
            },
            expect: Expect::Reason(counter::TUNNEL_PAYLOAD_NOT_IP),
        },
        Variant {
            name: "arp in vxlan",
            built: Built {
                frame: frames::v4_frame(
                    &[],
                    tunnels::OUTER_V4_A,
                    tunnels::OUTER_V4_B,
                    17,
                    &[],
                    Frag::default(),
                    &frames::udp(49200, 4789, &frames::vxlan(5, &arp)),
                )
                .frame,
                needed: 14 + 20 + 8 + 8 + 14,
            },
            expect: Expect::Reason(counter::TUNNEL_PAYLOAD_NOT_IP),
        },
        Variant {
            name: "port 4789 without the vxlan i flag (outer flow)",
            built: Built {
                frame: frames::v4_frame(
                    &[],
                    V4_A,
                    V4_B,
                    17,
                    &[],
                    Frag::default(),
                    &frames::udp(49200, 4789, &vxlan_no_i),
                )
                .frame,
                needed: 14 + 20 + 8 + 8,
            },
            expect: flow4(49200, 4789, 17, 0),
        },
        Variant {
            name: "gre version 1 (outer flow)",
            built: Built {
                frame: frames::v4_frame(&[], V4_A, V4_B, 47, &[], Frag::default(), &gre_v1).frame,
                needed: 14 + 20 + 4,
            },
            expect: flow4(0, 0, 47, 0),
        },
    ]);
    out
}

/// What one run did, observed in the kernel: counter deltas and the flow it touched.
fn observe(
    k: &mut Kernel,
    frame: &[u8],
    expect_key: Option<FlowKey>,
    tc: bool,
) -> (Vec<u64>, Option<(u64, u64)>) {
    let before = k.counters();
    let flow_before = expect_key.and_then(|key| k.flow(&key));
    if tc {
        k.tc(frame);
    } else {
        k.xdp(frame);
    }
    let after = k.counters();
    let deltas = after
        .iter()
        .zip(before.iter())
        .map(|(a, b)| a - b)
        .collect();
    let flow_delta = expect_key.and_then(|key| {
        let now = k.flow(&key)?;
        let was = flow_before.unwrap_or_default();
        Some((
            now.packets[0] + now.packets[1] - was.packets[0] - was.packets[1],
            now.bytes[0] + now.bytes[1] - was.bytes[0] - was.bytes[1],
        ))
    });
    (deltas, flow_delta)
}

fn check(k: &mut Kernel, name: &str, frame: &[u8], expect: Expect, tc: bool) {
    let key = match expect {
        Expect::Flow { key, .. } => Some(key),
        Expect::Reason(_) => None,
    };
    let (deltas, flow_delta) = observe(k, frame, key, tc);
    let unattributed: u64 = deltas[..counter::UNATTRIBUTED_REASONS as usize]
        .iter()
        .sum();
    match expect {
        Expect::Flow { .. } => {
            assert_eq!(
                unattributed,
                0,
                "{name} ({} bytes): counted unattributed: {deltas:?}",
                frame.len()
            );
            assert_eq!(
                flow_delta,
                Some((1, frame.len() as u64)),
                "{name} ({} bytes): flow not updated by one packet of the frame's size",
                frame.len()
            );
        }
        Expect::Reason(r) => {
            assert_eq!(
                unattributed,
                1,
                "{name} ({} bytes): expected exactly one unattributed count, got {deltas:?}",
                frame.len()
            );
            assert_eq!(
                deltas[r as usize],
                1,
                "{name} ({} bytes): expected reason {}, got {deltas:?}",
                frame.len(),
                counter::NAMES[r as usize]
            );
        }
    }
    // The agent's parser must agree with the kernel.
    let user = parse_frame(frame);
    match (expect, user) {
        (Expect::Flow { key, dir, flags }, Ok(p)) => {
            assert_eq!(
                (p.key, p.dir, p.tcp_flags),
                (key, dir, flags),
                "{name}: user parser disagrees"
            )
        }
        (Expect::Reason(r), Err(u)) => assert_eq!(u, r, "{name}: user parser names another reason"),
        (e, u) => panic!(
            "{name} ({} bytes): kernel {e:?}, user parser {u:?}",
            frame.len()
        ),
    }
}

#[test]
fn kernel_every_header_variant_is_attributed_or_counted_by_reason() {
    let mut k = Kernel::load(4096);
    for v in variants() {
        let sent_before = match v.expect {
            Expect::Flow { key, dir, .. } => k.flow(&key).map_or(0, |s| s.packets[dir]),
            Expect::Reason(_) => 0,
        };
        check(&mut k, v.name, &v.built.frame, v.expect, false);
        check(
            &mut k,
            &format!("{} (tc egress)", v.name),
            &v.built.frame,
            v.expect,
            true,
        );
        if let Expect::Flow { key, dir, flags } = v.expect {
            let s = k.flow(&key).expect("flow exists");
            assert_eq!(
                s.packets[dir] - sent_before,
                2,
                "{}: both runs land in the sender's direction",
                v.name
            );
            assert_eq!(
                (s.tcp_flags >> (dir * 8)) as u8 & flags,
                flags,
                "{}: TCP flags recorded for the sender",
                v.name
            );
        }
    }
}

#[test]
fn kernel_every_truncation_offset_is_counted_as_truncated_or_attributed() {
    let mut k = Kernel::load(4096);
    let mut runs = 0;
    for v in variants() {
        assert!(
            v.built.needed <= v.built.frame.len(),
            "{}: needed {} > frame {}",
            v.name,
            v.built.needed,
            v.built.frame.len()
        );
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        for len in 14..=v.built.frame.len() {
            let frame = &v.built.frame[..len];
            let expect = if len < v.built.needed {
                Expect::Reason(counter::TRUNCATED)
            } else {
                v.expect
            };
            check(
                &mut k,
                &format!("{} cut at {len}", v.name),
                frame,
                expect,
                false,
            );
            runs += 1;
        }
    }
    assert!(runs > 1000, "only {runs} truncated frames were tried");
}

#[test]
fn kernel_tcp_client_is_the_syn_sender_else_the_first_sender() {
    let mut k = Kernel::load(1024);
    // Seen from the start: the server's SYN-ACK arrives first here (say, asymmetric capture),
    // then the client's SYN names the client anyway.
    let synack = frames::v4_frame(
        &[],
        V4_B,
        V4_A,
        6,
        &[],
        Frag::default(),
        &frames::tcp(443, 40000, TCP_SYN | TCP_ACK, &[]),
    );
    let syn = frames::v4_frame(
        &[],
        V4_A,
        V4_B,
        6,
        &[],
        Frag::default(),
        &frames::tcp(40000, 443, TCP_SYN, &[]),
    );
    k.xdp(&synack.frame);
    let (key, dir_client) =
        FlowKey::canonical(&ipv4_mapped(V4_A), 40000, &ipv4_mapped(V4_B), 443, 6);
    let s = k.flow(&key).expect("flow");
    assert_eq!(s.client_source, CLIENT_BY_FIRST_PACKET);
    k.xdp(&syn.frame);
    let s = k.flow(&key).expect("flow");
    assert_eq!(s.client_source, CLIENT_BY_SYN);
    assert_eq!(
        s.client,
        if dir_client == 0 {
            CLIENT_LO
        } else {
            CLIENT_HI
        },
        "the SYN sender is the client"
    );
    // Mid-stream UDP: the first sender is the client.
    let q = frames::v4_frame(
        &[],
        V4_B,
        V4_A,
        17,
        &[],
        Frag::default(),
        &frames::udp(9999, 53, b"x"),
    );
    k.xdp(&q.frame);
    let (ukey, udir) = FlowKey::canonical(&ipv4_mapped(V4_B), 9999, &ipv4_mapped(V4_A), 53, 17);
    let u = k.flow(&ukey).expect("udp flow");
    assert_eq!(
        (u.client, u.client_source),
        (
            if udir == 0 { CLIENT_LO } else { CLIENT_HI },
            CLIENT_BY_FIRST_PACKET
        )
    );
}

#[test]
fn kernel_random_garbage_matches_the_user_parser_frame_by_frame() {
    let mut k = Kernel::load(65536);
    let mut rng = fastrand::Rng::with_seed(0x5eed_0001);
    for i in 0..3000 {
        let len = 14 + rng.usize(..300);
        let mut frame: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        // Steer a share of the garbage past the ethertype check, so the IP parsers see it.
        match i % 4 {
            0 => frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes()),
            1 => frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes()),
            2 => frame[12..14].copy_from_slice(&0x8100u16.to_be_bytes()),
            _ => {}
        }
        let expect = match parse_frame(&frame) {
            Ok(p) => Expect::Flow {
                key: p.key,
                dir: p.dir,
                flags: p.tcp_flags,
            },
            Err(r) => Expect::Reason(r),
        };
        check(&mut k, &format!("garbage frame {i}"), &frame, expect, false);
    }
}

#[test]
fn kernel_batched_reads_equal_key_by_key_reads_and_deletes_remove_flows() {
    let mut k = Kernel::load(65536);
    for i in 0..20_000u32 {
        let src = [10, 77, (i >> 8) as u8, i as u8];
        let f = frames::v4_frame(
            &[],
            src,
            V4_B,
            17,
            &[],
            Frag::default(),
            &frames::udp(1000 + (i % 7) as u16, 53, b"q"),
        );
        k.xdp(&f.frame);
    }
    let mut batched = Vec::new();
    k.dp.flows_batched(&mut batched).expect("batched read");
    let mut keyed = k.flows();
    batched.sort_by_key(|(key, _)| *key);
    keyed.sort_by_key(|(key, _)| *key);
    assert_eq!(batched.len(), 20_000);
    assert_eq!(
        batched, keyed,
        "both read methods see the same flows and counters"
    );
    let gone: Vec<FlowKey> = batched.iter().step_by(2).map(|(key, _)| *key).collect();
    k.dp.delete_flows(&gone).expect("delete");
    k.dp.delete_flows(&gone)
        .expect("deleting again is not an error");
    k.dp.flows_batched(&mut batched).expect("batched read");
    assert_eq!(batched.len(), 10_000);
    assert!(batched.iter().all(|(key, _)| !gone.contains(key)));
}

fn addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(a) => ipv4_mapped(a.octets()),
        IpAddr::V6(a) => ipv6_words(a.octets()),
    }
}

/// What the datapath must write into `TUNNELS` for a flow inside `e` whose inner key gives
/// side A's endpoint the direction index `a_dir` (A is `lo` when it is [`DIR_LO_TO_HI`]).
fn expected_tunnel(e: &Encap, a_dir: usize) -> TunnelInfo {
    let x = e.expect();
    let kind = tunnel::NAMES
        .iter()
        .position(|n| *n == x.kind)
        .expect("a known tunnel name") as u8;
    let (lo, hi) = match x.outer {
        Some((a, b)) if a_dir == DIR_LO_TO_HI => (addr(a), addr(b)),
        Some((a, b)) => (addr(b), addr(a)),
        None => ([0; 4], [0; 4]),
    };
    TunnelInfo {
        outer_lo: lo,
        outer_hi: hi,
        id: x.id.unwrap_or(0),
        kind,
        has_id: x.id.is_some() as u8,
        _pad: [0; 2],
    }
}

#[test]
fn kernel_every_encapsulation_records_its_tunnel_like_the_user_parser() {
    for e in tunnels::all() {
        for (from_a, v6) in [(true, false), (false, true)] {
            // A fresh datapath each time: the tunnel is recorded when the flow is created.
            let mut k = Kernel::load(1024);
            let (ethertype, ip, key, dir) = if v6 {
                let (src, dst) = if from_a { (V6_A, V6_B) } else { (V6_B, V6_A) };
                let (ip, _) = frames::ipv6(src, dst, &[], 17, &frames::udp(5353, 53, b"q"));
                let (key, dir) =
                    FlowKey::canonical(&ipv6_words(src), 5353, &ipv6_words(dst), 53, 17);
                (ETH_P_IPV6, ip, key, dir)
            } else {
                let (src, dst) = if from_a { (V4_A, V4_B) } else { (V4_B, V4_A) };
                let ip = frames::ipv4(
                    src,
                    dst,
                    6,
                    &[],
                    Frag::default(),
                    &frames::tcp(40000, 443, TCP_SYN, &[]),
                );
                let (key, dir) =
                    FlowKey::canonical(&ipv4_mapped(src), 40000, &ipv4_mapped(dst), 443, 6);
                (ETH_P_IP, ip, key, dir)
            };
            let (frame, _) = e.frame(ethertype, &ip, from_a);
            let name = format!("{} from {}", e.name(), if from_a { "A" } else { "B" });
            k.xdp(&frame);
            let stats = k
                .flow(&key)
                .unwrap_or_else(|| panic!("{name}: no inner flow"));
            let kernel =
                k.dp.tunnel(&key)
                    .expect("read TUNNELS")
                    .unwrap_or_else(|| panic!("{name}: no TUNNELS entry"));
            // Side A's direction index in the inner key: the sender's when A sent it.
            let want = expected_tunnel(&e, if from_a { dir } else { 1 - dir });
            assert_eq!(kernel, want, "{name}: kernel TUNNELS entry");
            assert_eq!(stats.tunnel, want.kind, "{name}: FlowStats::tunnel");
            let user = parse_frame(&frame).unwrap_or_else(|r| panic!("{name}: user parser: {r}"));
            assert_eq!(
                (user.key, user.tunnel),
                (key, kernel),
                "{name}: user parser"
            );
            // Switched off: the frame is what it was before decapsulation existed, in both
            // parsers.
            let off = tunnel::ALL & !(1 << want.kind);
            let mut k_off = Kernel::load_with(&LoadOptions {
                settings: DatapathSettings {
                    decap: off,
                    ..DatapathSettings::default()
                },
                ..LoadOptions::flows_only(1024)
            });
            let before = k_off.counters();
            k_off.xdp(&frame);
            let after = k_off.counters();
            assert!(
                k_off.flow(&key).is_none(),
                "{name}: kernel decapsulated while switched off"
            );
            match parse_frame_with(&frame, off) {
                Ok(p) => {
                    assert_ne!(p.key, key, "{name}: decapsulated while switched off");
                    assert!(
                        k_off.flow(&p.key).is_some(),
                        "{name}: outer flow missing in the kernel"
                    );
                }
                Err(r) => {
                    assert_eq!(r, counter::NOT_IP, "{name}: switched off");
                    assert_eq!(
                        after[r as usize] - before[r as usize],
                        1,
                        "{name}: kernel reason"
                    );
                }
            }
        }
    }
}
