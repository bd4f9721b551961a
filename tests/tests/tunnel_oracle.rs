//! Decapsulation end to end: a real stratum capture (`tests/pcaps/stratum-getwork-gbt.pcap`,
//! 15 miner sessions) is put inside every encapsulation the sensor opens (PPPoE behind QinQ
//! or not, MPLS, GRE with and without options or with Ethernet inside, VXLAN, Geneve with
//! options, IP in IP: 4in4, 4in6, 6in4, 6in6), and `sensor-agent replay` must, with both
//! engines:
//! - count exactly the inner conversations tshark decodes, packets and bytes per direction
//!   (tshark with every tunnel dissector on is the oracle: the innermost IP and transport of
//!   each frame, from `frame.protocols` and every occurrence of the address and port fields);
//! - put the tunnel in every flow record as tshark decodes it: `tunnel.type`, `tunnel.id`
//!   (VNI, GRE key, PPPoE session id, bottom MPLS label) and the outer addresses, the
//!   client's side as `tunnel.source.ip`;
//! - produce the same flow records and summary counters on both engines, with no frame
//!   counted as `not_ip`;
//! - raise `mining_protocol` on the inner endpoints with the tunnel in the alarm.
//!
//! IPv6 inside is the same capture with every IPv4 header replaced by an IPv6 one (addresses
//! `2001:db8:4::a.b.c.d`): tshark does not check TCP checksums by default, and neither does
//! the sensor.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    process::Command,
};

use sensor_agent::source::capture::CaptureReader;
use sensor_tests::{
    agent::{self, TempDir},
    frames::{self, ETH_P_IP, ETH_P_IPV6},
    kernel::require_bpf,
    pcap::{self, Record},
    tunnels::{self, Encap},
};
use serde_json::Value;

/// One IP packet of the capture: time, ethertype, the IP packet (with any link padding).
type IpFrame = (u64, u16, Vec<u8>);

/// The capture's IP frames, optionally turned into IPv6.
fn stratum_packets(as_v6: bool) -> Vec<IpFrame> {
    let path = agent::repo_pcap("stratum-getwork-gbt.pcap");
    let mut r = CaptureReader::open(&path).expect("open the stratum capture");
    let mut out = Vec::new();
    while let Some(f) = r.next_frame().expect("read the stratum capture") {
        let ethertype = u16::from_be_bytes([f.data[12], f.data[13]]);
        if ethertype != ETH_P_IP {
            continue;
        }
        let ip = f.data[14..].to_vec();
        if as_v6 {
            out.push((f.ts_ns, ETH_P_IPV6, to_v6(&ip)));
        } else {
            out.push((f.ts_ns, ETH_P_IP, ip));
        }
    }
    assert!(
        out.len() > 100,
        "the stratum capture has {} IPv4 frames",
        out.len()
    );
    out
}

fn v6_of(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0x20, 0x01, 0x0d, 0xb8, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    o[12..].copy_from_slice(&a);
    o
}

/// An IPv4 packet as IPv6: same protocol and payload (up to the IPv4 length).
fn to_v6(ip: &[u8]) -> Vec<u8> {
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let src: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
    let dst: [u8; 4] = ip[16..20].try_into().expect("4 bytes");
    frames::ipv6(
        v6_of(src),
        v6_of(dst),
        &[],
        ip[9],
        &ip[ihl..total.min(ip.len())],
    )
    .0
}

/// Source address of an IP packet.
fn src_of(ethertype: u16, ip: &[u8]) -> IpAddr {
    if ethertype == ETH_P_IP {
        IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).expect("4 bytes"))
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"))
    }
}

/// Whether an IP packet is a TCP SYN without ACK.
fn is_syn(ethertype: u16, ip: &[u8]) -> bool {
    let (proto, l4) = if ethertype == ETH_P_IP {
        (ip[9], (ip[0] & 0x0f) as usize * 4)
    } else {
        (ip[6], 40)
    };
    proto == 6 && ip.get(l4 + 13).is_some_and(|f| f & 0x12 == 0x02)
}

/// The capture inside `e`: each client (sender of a SYN) on side A.
fn encapsulate(e: &Encap, pkts: &[IpFrame]) -> Vec<Record> {
    let clients: BTreeSet<IpAddr> = pkts
        .iter()
        .filter(|(_, t, ip)| is_syn(*t, ip))
        .map(|(_, t, ip)| src_of(*t, ip))
        .collect();
    assert!(!clients.is_empty(), "no SYN in the stratum capture");
    pkts.iter()
        .map(|(ts, t, ip)| {
            let from_a = clients.contains(&src_of(*t, ip));
            Record::new(*ts, e.frame(*t, ip, from_a).0)
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ep {
    ip: IpAddr,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    transport: String,
    lo: Ep,
    hi: Ep,
}

/// One inner conversation as tshark decodes it, or as the sensor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Conv {
    /// (packets, bytes) sent by lo, by hi.
    sent: [(u64, u64); 2],
    /// `tunnel` as the sensor must render it, oriented by the conversation's client.
    tunnel: Value,
}

fn number(v: &str) -> Option<u32> {
    let v = v.split(',').next_back()?.trim();
    if v.is_empty() {
        return None;
    }
    match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

const FIELDS: [&str; 15] = [
    "frame.len",
    "frame.protocols",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "tcp.flags",
    "vxlan.vni",
    "geneve.vni",
    "gre.key",
    "pppoe.session_id",
];
const MPLS_LABEL: &str = "mpls.label";

/// tshark's view of a capture: inner conversations with their tunnel, by client.
fn tshark_inner(capture: &Path) -> BTreeMap<Key, Conv> {
    let mut c = Command::new("tshark");
    c.env("WIRESHARK_CONFIG_DIR", "/nonexistent-sensor-tests");
    c.arg("-r").arg(capture).args([
        "-n",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ]);
    for f in FIELDS.iter().chain([&MPLS_LABEL]) {
        c.args(["-e", f]);
    }
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("the tunnel oracle needs tshark ({e}); apt-get install tshark"));
    assert!(
        out.status.success(),
        "tshark failed on {}: {}",
        capture.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut convs: BTreeMap<Key, Conv> = BTreeMap::new();
    let mut clients: BTreeMap<Key, (Ep, Value)> = BTreeMap::new();
    let mut first: BTreeMap<Key, (Ep, Value)> = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        let f = |name: &str| -> &str {
            let i = FIELDS
                .iter()
                .chain([&MPLS_LABEL])
                .position(|x| *x == name)
                .expect("known field");
            cols.get(i).copied().unwrap_or("")
        };
        let all =
            |name: &str| -> Vec<&str> { f(name).split(',').filter(|s| !s.is_empty()).collect() };
        let protos: Vec<&str> = f("frame.protocols").split(':').collect();
        let ip_layers: Vec<&str> = protos
            .iter()
            .copied()
            .filter(|p| *p == "ip" || *p == "ipv6")
            .collect();
        let Some(&inner_ip) = ip_layers.last() else {
            panic!("{}: tshark found no IP in {line:?}", capture.display())
        };
        let transport = protos
            .iter()
            .rev()
            .find(|p| **p == "tcp" || **p == "udp")
            .unwrap_or_else(|| panic!("{}: no transport in {line:?}", capture.display()));
        let addr = |s: &str| -> IpAddr {
            s.parse()
                .unwrap_or_else(|_| panic!("tshark address {s:?} in {line:?}"))
        };
        let (v4s, v4d, v6s, v6d) = (
            all("ip.src"),
            all("ip.dst"),
            all("ipv6.src"),
            all("ipv6.dst"),
        );
        let (src, dst) = if inner_ip == "ip" {
            (addr(v4s[v4s.len() - 1]), addr(v4d[v4d.len() - 1]))
        } else {
            (addr(v6s[v6s.len() - 1]), addr(v6d[v6d.len() - 1]))
        };
        let sp: Vec<&str> = all(&format!("{transport}.srcport"));
        let dp: Vec<&str> = all(&format!("{transport}.dstport"));
        let port = |s: &str| -> u16 { s.parse().unwrap_or_else(|_| panic!("port {s:?}")) };
        let s = Ep {
            ip: src,
            port: port(sp[sp.len() - 1]),
        };
        let d = Ep {
            ip: dst,
            port: port(dp[dp.len() - 1]),
        };
        // The tunnel: the layer after the first IP or link layer, and the outer addresses when
        // there are two IP layers.
        let kind = if protos.contains(&"pppoes") {
            "pppoe"
        } else if protos.contains(&"mpls") {
            "mpls"
        } else if protos.contains(&"gre") {
            "gre"
        } else if protos.contains(&"vxlan") {
            "vxlan"
        } else if protos.contains(&"geneve") {
            "geneve"
        } else if ip_layers.len() == 2 {
            "ipip"
        } else {
            panic!(
                "{}: tshark decoded no tunnel in {line:?}",
                capture.display()
            )
        };
        let id = match kind {
            "pppoe" => number(f("pppoe.session_id")),
            "mpls" => number(f(MPLS_LABEL)),
            "gre" => number(f("gre.key")),
            "vxlan" => number(f("vxlan.vni")),
            "geneve" => number(f("geneve.vni")),
            _ => None,
        };
        let outer = (ip_layers.len() == 2).then(|| {
            if ip_layers[0] == "ip" {
                (addr(v4s[0]), addr(v4d[0]))
            } else {
                (addr(v6s[0]), addr(v6d[0]))
            }
        });
        let mut tunnel = serde_json::json!({ "type": kind });
        if let Some(id) = id {
            tunnel["id"] = id.into();
        }
        if let Some((os, od)) = outer {
            // Oriented as sent; re-oriented by the client below.
            tunnel["source"] = serde_json::json!({ "ip": os.to_string() });
            tunnel["destination"] = serde_json::json!({ "ip": od.to_string() });
        }
        let (key, dir) = if s <= d {
            (
                Key {
                    transport: transport.to_string(),
                    lo: s,
                    hi: d,
                },
                0,
            )
        } else {
            (
                Key {
                    transport: transport.to_string(),
                    lo: d,
                    hi: s,
                },
                1,
            )
        };
        let len: u64 = f("frame.len").parse().expect("frame.len");
        let conv = convs.entry(key.clone()).or_insert(Conv {
            sent: [(0, 0); 2],
            tunnel: Value::Null,
        });
        conv.sent[dir].0 += 1;
        conv.sent[dir].1 += len;
        let flags = number(f("tcp.flags")).unwrap_or(0);
        if *transport == "tcp" && flags & 0x12 == 0x02 {
            clients.entry(key.clone()).or_insert((s, tunnel.clone()));
        }
        first.entry(key).or_insert((s, tunnel));
    }
    for (key, conv) in convs.iter_mut() {
        // The tunnel of the flow's first packet, with the client's side as source.
        let (_, tunnel) = &first[key];
        let client = clients.get(key).map(|c| c.0).unwrap_or(first[key].0);
        let mut t = tunnel.clone();
        if first[key].0 != client && t.get("source").is_some() {
            let s = t["source"].clone();
            t["source"] = t["destination"].clone();
            t["destination"] = s;
        }
        conv.tunnel = t;
    }
    convs
}

/// The sensor's TCP/UDP flow records as conversations.
fn sensor_convs(flows: &[Value], what: &str) -> BTreeMap<Key, Conv> {
    let mut out = BTreeMap::new();
    for f in flows {
        let transport = f["network"]["transport"].as_str().unwrap_or("");
        assert!(
            transport == "tcp" || transport == "udp",
            "{what}: a flow that is not the inner TCP/UDP: {f}"
        );
        let ep = |side: &str| -> (Ep, (u64, u64)) {
            let s = &f[side];
            (
                Ep {
                    ip: s["ip"]
                        .as_str()
                        .and_then(|i| i.parse().ok())
                        .unwrap_or_else(|| panic!("{what}: {side}.ip in {f}")),
                    port: s["port"].as_u64().unwrap_or_else(|| panic!("{what}: {f}")) as u16,
                },
                (
                    s["packets"].as_u64().unwrap_or(0),
                    s["bytes"].as_u64().unwrap_or(0),
                ),
            )
        };
        let (c, cs) = ep("source");
        let (s, ss) = ep("destination");
        let (key, sent) = if c <= s {
            (
                Key {
                    transport: transport.into(),
                    lo: c,
                    hi: s,
                },
                [cs, ss],
            )
        } else {
            (
                Key {
                    transport: transport.into(),
                    lo: s,
                    hi: c,
                },
                [ss, cs],
            )
        };
        out.insert(
            key,
            Conv {
                sent,
                tunnel: f["tunnel"].clone(),
            },
        );
    }
    out
}

struct Replayed {
    flows: Vec<Value>,
    alarms: Vec<Value>,
    summary: String,
}

fn replay(dir: &TempDir, engine: &str, capture: &Path) -> Replayed {
    let name = capture.file_name().expect("name").to_string_lossy();
    let flows = dir.path().join(format!("{name}.{engine}.flows"));
    let alarms = dir.path().join(format!("{name}.{engine}.alarms"));
    let run = agent::replay_to(engine, &flows, &alarms, &[], capture);
    assert!(
        run.success && run.error_lines().is_empty(),
        "{name}: {engine} replay failed: {}",
        run.stderr
    );
    let summary = run
        .stderr
        .lines()
        .find(|l| l.starts_with("replayed "))
        .unwrap_or_else(|| panic!("{name}: no summary line: {}", run.stderr))
        .replace(&format!(" the {engine} engine"), " the ENGINE engine")
        .split("; ")
        .filter(|s| !s.starts_with("alarms:"))
        .collect::<Vec<_>>()
        .join("; ");
    Replayed {
        flows: agent::read_flows(&flows),
        alarms: agent::read_flows(&alarms),
        summary,
    }
}

#[test]
fn kernel_tunnels_stratum_inside_every_encapsulation_matches_tshark_and_alarms() {
    require_bpf();
    agent::agent_bin();
    let dir = TempDir::new("tunnel-oracle");
    let v4 = stratum_packets(false);
    let v6 = stratum_packets(true);
    let mut cases: Vec<(Encap, bool)> = tunnels::all().into_iter().map(|e| (e, false)).collect();
    // IPv6 inside: 6in4, 6in6, IPv6 in PPP behind QinQ, IPv6 in GRE over IPv6 (Ethernet).
    for e in tunnels::all() {
        if matches!(
            e,
            Encap::IpIp { .. }
                | Encap::Pppoe { .. }
                | Encap::Gre { teb: true, .. }
                | Encap::Vxlan { .. }
        ) {
            cases.push((e, true));
        }
    }
    let mut checked = 0;
    let total = cases.len();
    for (e, inner_v6) in cases {
        let name = format!("{}-{}.pcap", e.name(), if inner_v6 { "v6" } else { "v4" });
        let pkts = if inner_v6 { &v6 } else { &v4 };
        let cap = dir.write(
            &name,
            &pcap::pcap(pcap::LINKTYPE_ETHERNET, &encapsulate(&e, pkts)),
        );
        let oracle = tshark_inner(&cap);
        assert_eq!(
            oracle.len(),
            15,
            "{name}: tshark should decode the capture's 15 TCP sessions inside the tunnel"
        );
        let k = replay(&dir, "kernel", &cap);
        let u = replay(&dir, "user", &cap);
        let got = sensor_convs(&k.flows, &name);
        for (key, want) in &oracle {
            let g = got
                .get(key)
                .unwrap_or_else(|| panic!("{name}: the kernel engine has no flow {key:?}"));
            assert_eq!(g.sent, want.sent, "{name}: {key:?} per direction (lo, hi)");
            assert_eq!(g.tunnel, want.tunnel, "{name}: {key:?} tunnel");
        }
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            oracle.keys().collect::<Vec<_>>(),
            "{name}: the kernel engine's conversations"
        );
        assert_eq!(
            agent::without_engine(&k.flows),
            agent::without_engine(&u.flows),
            "{name}: the engines' flow records differ"
        );
        assert_eq!(
            k.summary, u.summary,
            "{name}: the engines' summaries differ"
        );
        assert!(
            !k.summary.contains("not_ip") && !k.summary.contains("unattributed"),
            "{name}: frames left unattributed: {}",
            k.summary
        );
        let want = e.expect();
        for (engine, r) in [("kernel", &k), ("user", &u)] {
            let mining: Vec<&Value> = r
                .alarms
                .iter()
                .filter(|a| a["rule"]["id"] == "mining_protocol")
                .collect();
            assert!(
                !mining.is_empty(),
                "{name}: {engine} engine raised no mining_protocol: {:#?}",
                r.alarms
            );
            for a in mining {
                let what = format!("{name} {engine}: {a}");
                let ip = |side: &str| -> IpAddr {
                    a[side]["ip"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("{what}: {side}.ip"))
                };
                let inner = oracle.keys().any(|k| {
                    [k.lo.ip, k.hi.ip] == [ip("source"), ip("destination")]
                        || [k.hi.ip, k.lo.ip] == [ip("source"), ip("destination")]
                });
                assert!(inner, "{what}: not on the inner endpoints");
                let t = &a["tunnel"];
                assert_eq!(t["type"], want.kind, "{what}: tunnel.type");
                assert_eq!(
                    t["id"].as_u64(),
                    want.id.map(u64::from),
                    "{what}: tunnel.id"
                );
                let outer = want.outer.map(|(s, d)| (s.to_string(), d.to_string()));
                let got = t["source"]["ip"].as_str().map(|s| {
                    (
                        s.to_string(),
                        t["destination"]["ip"].as_str().unwrap_or("").to_string(),
                    )
                });
                assert_eq!(
                    got, outer,
                    "{what}: tunnel outer addresses (client's side first)"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, total, "every encapsulation was checked");
    assert_eq!(total, 17);
}
