//! Flow counters of `sensor-agent replay` checked against tshark as an independent oracle.
//!
//! Every capture (the real ones in `tests/pcaps` and captures built here with the frame
//! builders: VLAN and QinQ, IPv4 options and fragments, IPv6 extension headers and fragments,
//! GRE and VXLAN tunnels, Linux cooked SLL/SLL2, raw IP, pcapng) is replayed through the
//! kernel engine, and for every TCP and UDP conversation the packets and bytes each side sent
//! must equal what tshark counts: no conversation missing, none extra. The user engine must
//! then produce exactly the kernel's flow records (apart from `sensor.engine`) and the same
//! summary counters (alarms aside: the engines run the detectors at different times).
//!
//! Roles: the client tshark's packets name is the sender of a SYN without ACK; without one,
//! the sender of the first message tshark dissects as one only a client or only a server
//! sends (TLS ClientHello/ServerHello, HTTP request/response, DNS query/response), else the
//! ephemeral side of a service port, else the sender of the first packet: the sensor's rule
//! (`sensor_agent::flow::roles`), checked from tshark's dissection.
//!
//! The oracle is one tshark run per capture:
//! `tshark -r FILE -n -o ip.defragment:FALSE -o ipv6.defragment:FALSE --disable-protocol vxlan
//! --disable-protocol gre -T fields -e frame.len -e ip.src ... -z conv,tcp -z conv,udp`.
//! Reassembly and tunnel dissection are off because the datapath does neither here: it counts
//! each first fragment under its ports and no later fragment, and the tunnel test switches
//! GRE and VXLAN decapsulation off (`sensor.decap`), so a tunnel is its outer flow
//! (decapsulation has its own oracle, `tunnel_oracle.rs`).
//!
//! tshark 4.0 quirks handled here (checked against its output on this machine):
//! - The conversation table prints large byte counts truncated to SI units (13 240 bytes as
//!   "13 kB", 15 744 as "15 kB"; 2 504 stays "2504 bytes"), so exact bytes come from the per-packet `frame.len` fields of the same run; the
//!   table still gives the set of conversations and frames per direction exactly, and the two
//!   views of the run are checked against each other (frames exactly, bytes within rounding).
//! - Columns: a row is `A <-> B`, then `<-` (frames, bytes sent by B to A), `->` (sent by A to
//!   B), total, relative start, duration. A is the source of the first packet tshark saw.
//! - A TCP 4-tuple reused after a close is a second row (new `tcp.stream`); rows of the same
//!   4-tuple are summed, because the sensor keys flows by 5-tuple only. tshark starts the new
//!   stream only at a SYN with another initial sequence number than the first session's.
//! - `--disable-protocol vxlan` / `gre` make the tunnel payload plain data, so the inner TCP
//!   session is no conversation (as for the sensor); GRE itself is compared through
//!   `-z conv,ip,ip.proto==47`, the sensor's proto-47 flow with ports 0.
//! - `frame.len` of a Linux cooked capture includes its 16-byte (SLL) or 20-byte (SLL2) header
//!   and a raw-IP frame has no link header at all; the agent turns each into a 14-byte
//!   Ethernet frame, so the oracle adds 14 - 16, 14 - 20 or 14 bytes per packet.
//! - With defragmentation off, tshark dissects the transport header of a first fragment (so
//!   its ports count) and shows later fragments as plain IP data (no ports): the same rule as
//!   the datapath's.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use sensor_tests::{
    agent::{self, TempDir},
    frames::{
        self, Ext, Frag, ETH_P_IP, ETH_P_IPV6, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, TPID_8021AD,
        TPID_8021Q,
    },
    kernel::require_bpf,
    pcap::{self, Record},
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Conversations, as both the oracle and the agent see them.

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
struct Ep {
    ip: IpAddr,
    port: u16,
}

impl fmt::Display for Ep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// A conversation: transport and its two endpoints in canonical (sorted) order.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Key {
    transport: String,
    lo: Ep,
    hi: Ep,
}

impl Key {
    /// The key of a packet from `src` to `dst`, and the index of the sender (0 = lo, 1 = hi).
    fn of(transport: &str, src: Ep, dst: Ep) -> (Key, usize) {
        let (lo, hi, dir) = if src <= dst {
            (src, dst, 0)
        } else {
            (dst, src, 1)
        };
        (
            Key {
                transport: transport.to_string(),
                lo,
                hi,
            },
            dir,
        )
    }
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Side {
    packets: u64,
    bytes: u64,
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct Conv {
    /// Sender of the first SYN without ACK, else named by payload or ports, else of the first
    /// packet (the design's rule, see [`parse_packets`]).
    client: Ep,
    /// Sent by lo, sent by hi.
    sent: [Side; 2],
}

fn describe(k: &Key, c: &Conv) -> String {
    let (server, ci) = if c.client == k.lo {
        (k.hi, 0)
    } else {
        (k.lo, 1)
    };
    let cs = c.sent[ci];
    let ss = c.sent[1 - ci];
    format!(
        "{} {} -> {}: client sent {} pkts / {} B, server sent {} pkts / {} B",
        k.transport, c.client, server, cs.packets, cs.bytes, ss.packets, ss.bytes
    )
}

type Convs = BTreeMap<Key, Conv>;

/// A readable difference between the oracle's and the sensor's conversations, empty if equal.
fn diff(expected: &Convs, got: &Convs) -> String {
    let mut out = String::new();
    for (k, c) in expected {
        match got.get(k) {
            None => out.push_str(&format!(
                "  missing (tshark has it, the sensor does not): {}\n",
                describe(k, c)
            )),
            Some(g) if g != c => out.push_str(&format!(
                "  different:\n    tshark: {}\n    sensor: {}\n",
                describe(k, c),
                describe(k, g)
            )),
            Some(_) => {}
        }
    }
    for (k, g) in got {
        if !expected.contains_key(k) {
            out.push_str(&format!(
                "  extra (the sensor has it, tshark does not): {}\n",
                describe(k, g)
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The tshark oracle.

/// Link layer of a capture, for the byte adjustment between tshark's `frame.len` and the
/// Ethernet frame the agent counts.
#[derive(Clone, Copy, Debug)]
enum Link {
    Ethernet,
    Sll,
    Sll2,
    RawIp,
}

impl Link {
    fn adjust(self) -> i64 {
        match self {
            Link::Ethernet => 0,
            Link::Sll => 14 - 16,
            Link::Sll2 => 14 - 20,
            Link::RawIp => 14,
        }
    }
}

/// An extra `-z conv,...` table compared as flows of another transport without ports
/// (used for GRE, which the sensor keeps as its own flow).
struct ExtraTable {
    /// Argument of `-z`, e.g. `conv,ip,ip.proto==47`.
    z: &'static str,
    /// First word of the table's title, e.g. `IPv4` for "IPv4 Conversations".
    title: &'static str,
    /// `network.transport` of the sensor's flows that this table must match.
    transport: &'static str,
}

const FIELDS: [&str; 14] = [
    "frame.len",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "tcp.flags",
    // Role evidence (see `parse_packets`): may hold several values per packet.
    "tls.handshake.type",
    "http.request",
    "http.response",
    "dns.flags.response",
];

fn tshark_command() -> Command {
    let mut c = Command::new("tshark");
    // No reading of user or global preference files that could change dissection.
    c.env("WIRESHARK_CONFIG_DIR", "/nonexistent-sensor-tests");
    c
}

/// Panics (never skips) when tshark cannot be run.
fn require_tshark() {
    match tshark_command().arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the capture oracle needs tshark, but `tshark --version` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "the capture oracle needs tshark, which cannot be run ({e}); install it with `apt-get install tshark`"
        ),
    }
}

/// A byte count from the conversation table: exact, or a range when tshark rounded it.
#[derive(Clone, Copy, Default, Debug)]
struct Approx {
    lo: u64,
    hi: u64,
}

impl Approx {
    fn add(self, o: Approx) -> Approx {
        Approx {
            lo: self.lo + o.lo,
            hi: self.hi + o.hi,
        }
    }

    fn contains(self, v: u64) -> bool {
        self.lo <= v && v <= self.hi
    }
}

/// "2504" "bytes" -> exact; "13" "kB" -> 13 000 ..= 13 999 (tshark 4.0 truncates: 13 240
/// and 15 744 bytes print as "13 kB" and "15 kB").
fn parse_bytes(value: &str, unit: &str, line: &str) -> Approx {
    let v: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("tshark conversation row: byte count {value:?} in {line:?}"));
    let scale = match unit {
        "bytes" | "byte" | "B" => return Approx { lo: v, hi: v },
        "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => panic!("tshark conversation row: unknown byte unit {other:?} in {line:?}"),
    };
    Approx {
        lo: v * scale,
        hi: (v + 1) * scale - 1,
    }
}

#[derive(Clone, Copy, Default, Debug)]
struct TableSide {
    frames: u64,
    bytes: Approx,
}

/// Rows of one conversation table for the same key, summed.
#[derive(Clone, Copy, Default, Debug)]
struct Row {
    /// Sent by lo, sent by hi.
    sides: [TableSide; 2],
    /// How many rows tshark printed for the key (more than one for a reused TCP 4-tuple).
    rows: u32,
}

type Table = BTreeMap<Key, Row>;

fn parse_endpoint(s: &str, with_port: bool, line: &str) -> Ep {
    fn bad<T>(s: &str, line: &str) -> T {
        panic!("tshark conversation row: endpoint {s:?} in {line:?}")
    }
    if !with_port {
        return Ep {
            ip: s.parse().unwrap_or_else(|_| bad(s, line)),
            port: 0,
        };
    }
    // IPv6 endpoints are printed without brackets: the port is after the last colon.
    let (ip, port) = s.rsplit_once(':').unwrap_or_else(|| bad(s, line));
    Ep {
        ip: ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .unwrap_or_else(|_| bad(s, line)),
        port: port.parse().unwrap_or_else(|_| bad(s, line)),
    }
}

/// Parses every "<title> Conversations" table in tshark's statistics output.
fn parse_tables(stats: &str) -> BTreeMap<String, Table> {
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in stats.lines() {
        if let Some(title) = line.strip_suffix(" Conversations") {
            current = Some(title.to_string());
            tables.entry(title.to_string()).or_default();
            continue;
        }
        if line.starts_with("====") {
            current = None;
            continue;
        }
        let Some(title) = &current else { continue };
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.get(1) != Some(&"<->") {
            continue; // Filter line and column headers.
        }
        assert!(
            t.len() >= 12,
            "tshark conversation row with too few columns: {line:?}"
        );
        let (transport, with_port) = match title.as_str() {
            "TCP" => ("tcp", true),
            "UDP" => ("udp", true),
            other => (other, false),
        };
        let a = parse_endpoint(t[0], with_port, line);
        let b = parse_endpoint(t[2], with_port, line);
        let frames = |s: &str| -> u64 {
            s.parse()
                .unwrap_or_else(|_| panic!("tshark conversation row: frames {s:?} in {line:?}"))
        };
        // "<-": sent by B to A; "->": sent by A to B.
        let b_to_a = TableSide {
            frames: frames(t[3]),
            bytes: parse_bytes(t[4], t[5], line),
        };
        let a_to_b = TableSide {
            frames: frames(t[6]),
            bytes: parse_bytes(t[7], t[8], line),
        };
        let (key, a_dir) = Key::of(transport, a, b);
        let row = tables
            .get_mut(title)
            .expect("table created at its title")
            .entry(key)
            .or_default();
        row.rows += 1;
        for (dir, side) in [(a_dir, a_to_b), (1 - a_dir, b_to_a)] {
            row.sides[dir].frames += side.frames;
            row.sides[dir].bytes = row.sides[dir].bytes.add(side.bytes);
        }
    }
    tables
}

/// Per-packet view: conversations with exact frame.len sums (unadjusted and adjusted).
struct PacketView {
    convs: Convs,
    raw_bytes: BTreeMap<Key, [u64; 2]>,
}

fn field<'a>(cols: &[&'a str], name: &str, line: &str) -> &'a str {
    let i = FIELDS.iter().position(|f| *f == name).expect("known field");
    let v = cols.get(i).copied().unwrap_or("");
    assert!(
        !v.contains(','),
        "tshark shows several {name} in one packet ({line:?}): nested headers, which this oracle does not handle"
    );
    v
}

/// A field that may occur several times in one packet, as tshark aggregates it ("a,b").
fn field_all<'a>(cols: &[&'a str], name: &str) -> &'a str {
    let i = FIELDS.iter().position(|f| *f == name).expect("known field");
    cols.get(i).copied().unwrap_or("")
}

/// Whether a role-evidence packet was sent by the client, as tshark dissects it: the first
/// TLS handshake message (ClientHello 1, ServerHello 2), an HTTP request or response, a DNS
/// query or response (port 53, as the sensor's DNS rule).
fn sent_by_client(cols: &[&str], dns_port: bool) -> Option<bool> {
    let yes = |v: &str| v == "1" || v.eq_ignore_ascii_case("true");
    let no = |v: &str| v == "0" || v.eq_ignore_ascii_case("false");
    match field_all(cols, "tls.handshake.type").split(',').next() {
        Some("1") => return Some(true),
        Some("2") => return Some(false),
        _ => {}
    }
    if yes(field_all(cols, "http.request")) {
        return Some(true);
    }
    if yes(field_all(cols, "http.response")) {
        return Some(false);
    }
    let dns = field_all(cols, "dns.flags.response");
    if dns_port && yes(dns) {
        return Some(false);
    }
    if dns_port && no(dns) {
        return Some(true);
    }
    None
}

/// The port rule of `sensor_agent::flow::roles`: a service port (< 1024 or a registered one)
/// on one side and an ephemeral one (>= 32768) on the other names the ephemeral side client.
fn client_by_port(a: Ep, b: Ep) -> Option<Ep> {
    use sensor_agent::flow::roles::{is_service_port, EPHEMERAL_FROM};
    if is_service_port(a.port) && b.port >= EPHEMERAL_FROM {
        Some(b)
    } else if is_service_port(b.port) && a.port >= EPHEMERAL_FROM {
        Some(a)
    } else {
        None
    }
}

/// Per conversation: the sender of a SYN without ACK is the client; without one, the first
/// packet tshark dissects as a message only one side sends (see [`sent_by_client`]); else the
/// port rule; else the sender of the first packet (the sensor's rule, flow::roles).
fn parse_packets(lines: &[&str], link: Link) -> PacketView {
    let mut convs = Convs::new();
    let mut raw_bytes: BTreeMap<Key, [u64; 2]> = BTreeMap::new();
    let mut by_syn: BTreeSet<Key> = BTreeSet::new();
    let mut by_payload: BTreeSet<Key> = BTreeSet::new();
    for line in lines {
        let cols: Vec<&str> = line.split('\t').collect();
        let f = |name: &str| field(&cols, name, line);
        let (transport, sport, dport) = if !f("tcp.srcport").is_empty() {
            ("tcp", f("tcp.srcport"), f("tcp.dstport"))
        } else if !f("udp.srcport").is_empty() {
            ("udp", f("udp.srcport"), f("udp.dstport"))
        } else {
            continue;
        };
        let (src, dst) = match (f("ip.src"), f("ipv6.src")) {
            (s, "") if !s.is_empty() => (s, f("ip.dst")),
            ("", s) if !s.is_empty() => (s, f("ipv6.dst")),
            _ => panic!("tshark packet with TCP/UDP but not exactly one IP header: {line:?}"),
        };
        let ep = |ip: &str, port: &str| Ep {
            ip: ip
                .parse()
                .unwrap_or_else(|_| panic!("tshark field: address {ip:?} in {line:?}")),
            port: port
                .parse()
                .unwrap_or_else(|_| panic!("tshark field: port {port:?} in {line:?}")),
        };
        let (src, dst) = (ep(src, sport), ep(dst, dport));
        let len: u64 = f("frame.len")
            .parse()
            .unwrap_or_else(|_| panic!("tshark field: frame.len in {line:?}"));
        let flags = u16::from_str_radix(f("tcp.flags").trim_start_matches("0x"), 16).unwrap_or(0);
        let (key, dir) = Key::of(transport, src, dst);
        let conv = convs.entry(key.clone()).or_insert(Conv {
            client: src,
            sent: [Side::default(); 2],
        });
        if transport == "tcp" && flags & 0x12 == 0x02 && by_syn.insert(key.clone()) {
            conv.client = src;
        }
        if !by_syn.contains(&key) && !by_payload.contains(&key) {
            if let Some(from_client) = sent_by_client(&cols, src.port == 53 || dst.port == 53) {
                conv.client = if from_client { src } else { dst };
                by_payload.insert(key.clone());
            }
        }
        conv.sent[dir].packets += 1;
        conv.sent[dir].bytes += (len as i64 + link.adjust()) as u64;
        raw_bytes.entry(key).or_default()[dir] += len;
    }
    for (key, conv) in convs.iter_mut() {
        if !by_syn.contains(key) && !by_payload.contains(key) && key.transport != "icmp" {
            if let Some(client) = client_by_port(key.lo, key.hi) {
                conv.client = client;
            }
        }
    }
    PacketView { convs, raw_bytes }
}

/// What tshark says about a capture.
struct Oracle {
    convs: Convs,
    /// Transports the oracle covers: the sensor's flows of any other transport are ignored.
    transports: BTreeSet<String>,
    /// TCP/UDP conversations that tshark split into several rows (4-tuple reuse).
    reused: usize,
    /// tshark's statistics output, for failure messages.
    stats: String,
}

fn tshark_oracle(capture: &Path, link: Link, extra: &[ExtraTable]) -> Oracle {
    let mut c = tshark_command();
    c.arg("-r").arg(capture).args([
        "-n",
        "-o",
        "ip.defragment:FALSE",
        "-o",
        "ipv6.defragment:FALSE",
        "--disable-protocol",
        "vxlan",
        "--disable-protocol",
        "gre",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ]);
    for f in FIELDS {
        c.args(["-e", f]);
    }
    c.args(["-z", "conv,tcp", "-z", "conv,udp"]);
    for x in extra {
        c.args(["-z", x.z]);
    }
    let out = c.output().expect("run tshark");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tshark failed on {}: {}\n{stdout}",
        capture.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Packet lines first, then the statistics, which start with a line of '='.
    let split = stdout.find("\n====").map(|i| i + 1).unwrap_or_else(|| {
        panic!(
            "tshark printed no conversation statistics for {}:\n{stdout}",
            capture.display()
        )
    });
    let packet_lines: Vec<&str> = stdout[..split].lines().collect();
    let stats = stdout[split..].to_string();
    let view = parse_packets(&packet_lines, link);
    let tables = parse_tables(&stats);

    // The two views of the same run must agree: the conversation table is the oracle the
    // brief names; the per-packet fields only add exact byte counts and the client.
    let mut table = Table::new();
    for title in ["TCP", "UDP"] {
        let t = tables
            .get(title)
            .unwrap_or_else(|| panic!("tshark printed no {title} conversation table:\n{stats}"));
        table.extend(t.clone());
    }
    let table_keys: BTreeSet<&Key> = table.keys().collect();
    let packet_keys: BTreeSet<&Key> = view.convs.keys().collect();
    assert_eq!(
        table_keys,
        packet_keys,
        "{}: tshark's conversation table and its per-packet fields name different conversations\n{stats}",
        capture.display()
    );
    for (k, row) in &table {
        let conv = &view.convs[k];
        let raw = view.raw_bytes[k];
        for (dir, &side) in row.sides.iter().enumerate() {
            assert!(
                side.frames == conv.sent[dir].packets && side.bytes.contains(raw[dir]),
                "{}: tshark's conversation table ({:?}) disagrees with its per-packet fields ({} frames, {} bytes) for {k:?} direction {dir}\n{stats}",
                capture.display(),
                side,
                conv.sent[dir].packets,
                raw[dir]
            );
        }
    }

    let reused = table.values().filter(|r| r.rows > 1).count();
    let mut convs = view.convs;
    let mut transports: BTreeSet<String> = ["tcp".to_string(), "udp".to_string()].into();
    for x in extra {
        transports.insert(x.transport.to_string());
        let t = tables
            .get(x.title)
            .unwrap_or_else(|| panic!("tshark printed no {} table:\n{stats}", x.title));
        for (k, row) in t {
            let side = |dir: usize| {
                let s = row.sides[dir];
                let b = s.bytes;
                assert_eq!(
                    b.lo, b.hi,
                    "{}: the {} table rounded a byte count; keep that traffic under 10 000 bytes",
                    x.z, x.title
                );
                Side {
                    packets: s.frames,
                    bytes: (b.lo as i64 + s.frames as i64 * link.adjust()) as u64,
                }
            };
            let key = Key {
                transport: x.transport.to_string(),
                lo: k.lo,
                hi: k.hi,
            };
            // The table does not say who spoke first; the tunnel captures built here always
            // start with the lower address, which the comparison below relies on.
            convs.insert(
                key,
                Conv {
                    client: k.lo,
                    sent: [side(0), side(1)],
                },
            );
        }
    }
    Oracle {
        convs,
        transports,
        reused,
        stats,
    }
}

// ---------------------------------------------------------------------------------------------
// The sensor's side.

fn flow_convs(flows: &[Value], transports: &BTreeSet<String>, what: &str) -> Convs {
    let mut convs = Convs::new();
    for f in flows {
        let transport = f["network"]["transport"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: flow without network.transport: {f}"));
        if !transports.contains(transport) {
            continue;
        }
        let ep = |side: &str| -> (Ep, Side) {
            let s = &f[side];
            let ip = s["ip"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
                .unwrap_or_else(|| panic!("{what}: flow without {side}.ip: {f}"));
            let num = |name: &str| {
                s[name]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{what}: flow without {side}.{name}: {f}"))
            };
            (
                Ep {
                    ip,
                    port: num("port") as u16,
                },
                Side {
                    packets: num("packets"),
                    bytes: num("bytes"),
                },
            )
        };
        let (client, client_sent) = ep("source");
        let (server, server_sent) = ep("destination");
        let (key, cdir) = Key::of(transport, client, server);
        let mut sent = [Side::default(); 2];
        sent[cdir] = client_sent;
        sent[1 - cdir] = server_sent;
        let dup = convs.insert(key.clone(), Conv { client, sent });
        assert!(dup.is_none(), "{what}: two flow records for {key:?}");
    }
    convs
}

/// The summary line's counting part: engine name replaced, and the alarm segment left out
/// (the engines evaluate detectors at different times, so alarms may differ; counts may not).
fn summary_line(stderr: &str, engine: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("replayed "))
        .unwrap_or_else(|| panic!("no summary line on stderr:\n{stderr}"));
    line.replace(&format!(" the {engine} engine"), " the ENGINE engine")
        .split("; ")
        .filter(|seg| !seg.starts_with("alarms:"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What one capture check saw.
struct Checked {
    oracle: Convs,
    /// Conversations tshark printed as several rows.
    reused: usize,
    /// The kernel engine's summary line, engine name replaced.
    summary: String,
}

/// Replays `capture` with both engines and compares them with tshark and each other.
fn check_capture(dir: &TempDir, capture: &Path, link: Link, extra: &[ExtraTable]) -> Checked {
    check_capture_with(dir, capture, link, extra, &[])
}

/// [`check_capture`] with `--set` options for both replays.
fn check_capture_with(
    dir: &TempDir,
    capture: &Path,
    link: Link,
    extra: &[ExtraTable],
    sets: &[&str],
) -> Checked {
    let oracle = tshark_oracle(capture, link, extra);
    let name = capture
        .file_name()
        .expect("capture file name")
        .to_string_lossy()
        .into_owned();
    let mut outputs = Vec::new();
    for engine in ["kernel", "user"] {
        let flows_path = dir.path().join(format!("{name}.{engine}.json"));
        let mut c = agent::command();
        c.args(["replay", "--engine", engine, "--flows"])
            .arg(&flows_path);
        for set in sets {
            c.args(["--set", set]);
        }
        let run = agent::Run::from_output(c.arg(capture).output().expect("run the agent"));
        assert!(
            run.success && run.error_lines().is_empty(),
            "{name}: replay with the {engine} engine failed ({:?}):\n{}",
            run.code,
            run.stderr
        );
        let flows = agent::read_flows(&flows_path);
        let summary = summary_line(&run.stderr, engine);
        outputs.push((engine, flows, summary));
    }
    let (_, kflows, ksummary) = &outputs[0];
    let (_, uflows, usummary) = &outputs[1];

    let got = flow_convs(kflows, &oracle.transports, &name);
    let d = diff(&oracle.convs, &got);
    assert!(
        d.is_empty(),
        "{name}: the kernel engine's flows disagree with tshark ({} conversations expected, {} got):\n{d}\nkernel summary: {ksummary}\ntshark statistics:\n{}",
        oracle.convs.len(),
        got.len(),
        oracle.stats
    );

    let k = agent::without_engine(kflows);
    let u = agent::without_engine(uflows);
    if k != u {
        let only_k: Vec<&String> = k.iter().filter(|l| !u.contains(l)).collect();
        let only_u: Vec<&String> = u.iter().filter(|l| !k.contains(l)).collect();
        panic!(
            "{name}: the user engine's flow records differ from the kernel's:\n  kernel only:\n    {}\n  user only:\n    {}",
            only_k.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n    "),
            only_u.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n    ")
        );
    }
    assert_eq!(
        ksummary, usummary,
        "{name}: the engines' summaries differ (kernel, then user)"
    );
    Checked {
        reused: oracle.reused,
        oracle: oracle.convs,
        summary: ksummary.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Building captures.

/// One IP packet before framing.
#[derive(Clone, Debug)]
struct Pkt {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// Transport header and payload.
    l4: Vec<u8>,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn ep(addr: &str, port: u16) -> Ep {
    Ep { ip: ip(addr), port }
}

fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("IPv4 address expected, got {a}"),
    }
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("IPv6 address expected, got {a}"),
    }
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| b'a' + ((i + seed as usize) % 26) as u8)
        .collect()
}

/// A TCP session: handshake from the client, data segments (`true` = client to server, with
/// that many payload bytes), then FIN from each side and the last ACK.
fn tcp_session(c: Ep, s: Ep, data: &[(bool, usize)]) -> Vec<Pkt> {
    let mk = |from_client: bool, flags: u8, n: usize| {
        let (a, b) = if from_client { (c, s) } else { (s, c) };
        Pkt {
            src: a.ip,
            dst: b.ip,
            proto: 6,
            l4: frames::tcp(a.port, b.port, flags, &payload(n, n as u8)),
        }
    };
    let mut v = vec![
        mk(true, TCP_SYN, 0),
        mk(false, TCP_SYN | TCP_ACK, 0),
        mk(true, TCP_ACK, 0),
    ];
    for &(from_client, n) in data {
        v.push(mk(from_client, TCP_PSH | TCP_ACK, n));
    }
    v.push(mk(true, TCP_FIN | TCP_ACK, 0));
    v.push(mk(false, TCP_FIN | TCP_ACK, 0));
    v.push(mk(true, TCP_ACK, 0));
    v
}

/// UDP datagrams (`true` = client to server, payload bytes); the first should be the client's.
fn udp_exchange(c: Ep, s: Ep, data: &[(bool, usize)]) -> Vec<Pkt> {
    data.iter()
        .map(|&(from_client, n)| {
            let (a, b) = if from_client { (c, s) } else { (s, c) };
            Pkt {
                src: a.ip,
                dst: b.ip,
                proto: 17,
                l4: frames::udp(a.port, b.port, &payload(n, n as u8 + 7)),
            }
        })
        .collect()
}

/// Default traffic shapes: a few exchanges in both directions with varied sizes.
const TCP_DATA: &[(bool, usize)] = &[
    (true, 120),
    (false, 1400),
    (false, 600),
    (true, 33),
    (false, 1),
    (true, 500),
];
const UDP_DATA: &[(bool, usize)] = &[
    (true, 40),
    (false, 300),
    (true, 41),
    (false, 1200),
    (false, 7),
];

/// An IP packet (header and payload) with IPv4 options or IPv6 extension headers.
fn ip_packet(p: &Pkt, v4_options: &[u8], v6_exts: &[Ext]) -> (u16, Vec<u8>) {
    match p.src {
        IpAddr::V4(_) => (
            ETH_P_IP,
            frames::ipv4(
                v4(p.src),
                v4(p.dst),
                p.proto,
                v4_options,
                Frag::default(),
                &p.l4,
            ),
        ),
        IpAddr::V6(_) => (
            ETH_P_IPV6,
            frames::ipv6(v6(p.src), v6(p.dst), v6_exts, p.proto, &p.l4).0,
        ),
    }
}

/// Ethernet frames of `pkts`, each with `tags`, IPv4 options and IPv6 extension headers.
fn eth_frames(
    pkts: &[Pkt],
    tags: &[(u16, u16)],
    v4_options: &[u8],
    v6_exts: &[Ext],
) -> Vec<Vec<u8>> {
    pkts.iter()
        .map(|p| {
            let (ethertype, ip) = ip_packet(p, v4_options, v6_exts);
            frames::ethernet(tags, ethertype, &ip)
        })
        .collect()
}

/// Ethernet frames of `pkts`, fragmenting every packet bigger than `mtu` (IP header
/// included). IPv6 fragments carry `v6_before` (the unfragmentable part) before the fragment
/// header; unfragmented IPv6 packets carry `v6_before` only.
fn fragmented_frames(pkts: &[Pkt], mtu: usize, v6_before: &[Ext], first_id: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (n, p) in pkts.iter().enumerate() {
        match p.src {
            IpAddr::V4(_) => {
                let chunk = (mtu - 20) & !7;
                if p.l4.len() <= mtu - 20 {
                    out.push(frames::ethernet(
                        &[],
                        ETH_P_IP,
                        &frames::ipv4(v4(p.src), v4(p.dst), p.proto, &[], Frag::default(), &p.l4),
                    ));
                    continue;
                }
                for (i, part) in p.l4.chunks(chunk).enumerate() {
                    let frag = Frag {
                        offset: (i * chunk) as u16,
                        more: (i + 1) * chunk < p.l4.len(),
                        id: first_id + n as u16,
                    };
                    out.push(frames::ethernet(
                        &[],
                        ETH_P_IP,
                        &frames::ipv4(v4(p.src), v4(p.dst), p.proto, &[], frag, part),
                    ));
                }
            }
            IpAddr::V6(_) => {
                let before: usize = frames::ipv6([0; 16], [0; 16], v6_before, 59, &[]).0.len();
                if before + p.l4.len() <= mtu {
                    out.push(frames::ethernet(
                        &[],
                        ETH_P_IPV6,
                        &frames::ipv6(v6(p.src), v6(p.dst), v6_before, p.proto, &p.l4).0,
                    ));
                    continue;
                }
                let chunk = (mtu - before - 8) & !7;
                for (i, part) in p.l4.chunks(chunk).enumerate() {
                    let mut exts = v6_before.to_vec();
                    exts.push(Ext::Fragment {
                        offset: (i * chunk) as u16,
                        more: (i + 1) * chunk < p.l4.len(),
                    });
                    out.push(frames::ethernet(
                        &[],
                        ETH_P_IPV6,
                        &frames::ipv6(v6(p.src), v6(p.dst), &exts, p.proto, part).0,
                    ));
                }
            }
        }
    }
    out
}

/// Round-robin merge of several conversations' frames, keeping each one's order.
fn interleave(convs: Vec<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
    let mut iters: Vec<_> = convs.into_iter().map(|c| c.into_iter()).collect();
    let mut out = Vec::new();
    loop {
        let mut any = false;
        for it in iters.iter_mut() {
            if let Some(f) = it.next() {
                out.push(f);
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}

const T0: u64 = 1_700_000_000_000_000_000;

/// Records one millisecond apart.
fn records(frames: Vec<Vec<u8>>) -> Vec<Record> {
    frames
        .into_iter()
        .enumerate()
        .map(|(i, f)| Record::new(T0 + i as u64 * 1_000_000 + 123_000, f))
        .collect()
}

/// Linux cooked (SLL) version of an untagged Ethernet frame.
fn to_sll(eth: &[u8]) -> Vec<u8> {
    let mut h = vec![0, 0]; // packet type: to us
    h.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
    h.extend_from_slice(&6u16.to_be_bytes());
    h.extend_from_slice(&eth[6..12]);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&eth[12..14]);
    h.extend_from_slice(&eth[14..]);
    h
}

/// Linux cooked v2 (SLL2) version of an untagged Ethernet frame.
fn to_sll2(eth: &[u8]) -> Vec<u8> {
    let mut h = eth[12..14].to_vec(); // protocol
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&3u32.to_be_bytes()); // interface index
    h.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
    h.push(4); // packet type: outgoing
    h.push(6);
    h.extend_from_slice(&eth[6..12]);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&eth[14..]);
    h
}

fn repo_pcaps() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps");
    assert!(
        p.is_dir(),
        "the real captures are missing: {} is not a directory",
        p.display()
    );
    p
}

fn setup(tag: &str) -> TempDir {
    require_bpf();
    require_tshark();
    // Fail on a missing or stale agent binary before building anything.
    agent::agent_bin();
    TempDir::new(tag)
}

fn count(c: &Checked, transport: &str) -> usize {
    c.oracle.keys().filter(|k| k.transport == transport).count()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn kernel_oracle_real_captures() {
    let dir = setup("oracle-real");
    let pcaps = repo_pcaps();
    // (file, TCP conversations, UDP conversations) as listed in tests/pcaps/README.md and
    // seen by tshark.
    for (file, tcp, udp) in [
        ("stratum-getwork-gbt.pcap", 15, 0),
        ("cryptonote-login-stratum.pcap", 0, 0),
        ("quiet-long-tcp.pcap", 1, 0),
    ] {
        let c = check_capture(&dir, &pcaps.join(file), Link::Ethernet, &[]);
        if tcp > 0 {
            assert_eq!(count(&c, "tcp"), tcp, "{file}: TCP conversations");
            assert_eq!(count(&c, "udp"), udp, "{file}: UDP conversations");
        } else {
            assert!(
                count(&c, "tcp") > 3 && count(&c, "udp") > 0,
                "{file}: expected TCP and DNS conversations"
            );
        }
    }
}

#[test]
fn kernel_oracle_vlan_and_qinq() {
    let dir = setup("oracle-vlan");
    let q = [(TPID_8021Q, 10)];
    let qinq = [(TPID_8021AD, 100), (TPID_8021Q, 20)];
    let convs = vec![
        eth_frames(
            &tcp_session(ep("10.1.0.1", 40001), ep("10.1.0.2", 443), TCP_DATA),
            &q,
            &[],
            &[],
        ),
        eth_frames(
            &udp_exchange(ep("10.1.0.1", 5353), ep("10.1.0.3", 53), UDP_DATA),
            &q,
            &[],
            &[],
        ),
        eth_frames(
            &tcp_session(ep("10.2.0.9", 50000), ep("10.2.0.1", 3333), TCP_DATA),
            &qinq,
            &[],
            &[],
        ),
        eth_frames(
            &udp_exchange(
                ep("2001:db8:20::5", 40000),
                ep("2001:db8:20::1", 4500),
                UDP_DATA,
            ),
            &qinq,
            &[],
            &[],
        ),
        eth_frames(
            &tcp_session(
                ep("2001:db8:10::7", 33000),
                ep("2001:db8:10::1", 22),
                TCP_DATA,
            ),
            &q,
            &[],
            &[],
        ),
    ];
    let cap = dir.write(
        "vlan-qinq.pcap",
        &pcap::pcap(pcap::LINKTYPE_ETHERNET, &records(interleave(convs))),
    );
    let c = check_capture(&dir, &cap, Link::Ethernet, &[]);
    assert_eq!((count(&c, "tcp"), count(&c, "udp")), (3, 2));
}

#[test]
fn kernel_oracle_ipv4_options_and_fragments() {
    let dir = setup("oracle-v4");
    // Router alert; timestamp (68, length 12); record route filling the 40-byte maximum.
    let router_alert = [0x94, 0x04, 0x00, 0x00];
    let timestamp = [0x44, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut record_route = vec![0x01, 0x07, 39, 4];
    record_route.resize(40, 0);
    let options = vec![
        eth_frames(
            &tcp_session(ep("192.0.2.10", 41000), ep("192.0.2.20", 8333), TCP_DATA),
            &[],
            &timestamp,
            &[],
        ),
        eth_frames(
            &udp_exchange(ep("192.0.2.10", 41001), ep("224.0.0.22", 9), UDP_DATA),
            &[],
            &router_alert,
            &[],
        ),
        eth_frames(
            &tcp_session(ep("192.0.2.11", 41002), ep("192.0.2.20", 80), TCP_DATA),
            &[],
            &record_route,
            &[],
        ),
    ];
    let cap = dir.write(
        "ipv4-options.pcap",
        &pcap::pcap(pcap::LINKTYPE_ETHERNET, &records(interleave(options))),
    );
    let c = check_capture(&dir, &cap, Link::Ethernet, &[]);
    assert_eq!((count(&c, "tcp"), count(&c, "udp")), (2, 1));

    // UDP datagrams of up to 4 000 bytes through a 1 500-byte MTU, both directions, next to
    // small unfragmented ones and an unrelated TCP session.
    let big = &[
        (true, 3000),
        (false, 4000),
        (true, 20),
        (false, 1473),
        (true, 1472),
        (false, 2000),
    ];
    let frags = vec![
        fragmented_frames(
            &udp_exchange(ep("198.51.100.7", 6000), ep("198.51.100.8", 7000), big),
            1500,
            &[],
            100,
        ),
        fragmented_frames(
            &tcp_session(ep("198.51.100.7", 6001), ep("198.51.100.9", 443), TCP_DATA),
            1500,
            &[],
            200,
        ),
    ];
    let cap = dir.write(
        "ipv4-fragments.pcap",
        &pcap::pcap(pcap::LINKTYPE_ETHERNET, &records(interleave(frags))),
    );
    let c = check_capture(&dir, &cap, Link::Ethernet, &[]);
    assert_eq!((count(&c, "tcp"), count(&c, "udp")), (1, 1));
    // 3000 -> 3 fragments, 4000 -> 3, 1473 -> 2, 2000 -> 2: 6 later fragments, not attributed.
    assert!(
        c.summary.contains("later_fragment 6"),
        "ipv4-fragments.pcap: expected 6 later fragments in the summary: {}",
        c.summary
    );
}

#[test]
fn kernel_oracle_ipv6_extension_headers_and_fragments() {
    let dir = setup("oracle-v6");
    let a = "2001:db8:1::10";
    let b = "2001:db8:1::20";
    let convs = vec![
        eth_frames(
            &tcp_session(ep(a, 42000), ep(b, 443), TCP_DATA),
            &[],
            &[],
            &[Ext::HopByHop(0)],
        ),
        eth_frames(
            &udp_exchange(ep(a, 42001), ep(b, 53), UDP_DATA),
            &[],
            &[],
            &[Ext::Routing(0), Ext::DestOpts(1)],
        ),
        eth_frames(
            &tcp_session(ep(a, 42002), ep(b, 8333), TCP_DATA),
            &[],
            &[],
            &[
                Ext::HopByHop(1),
                Ext::DestOpts(0),
                Ext::Routing(1),
                Ext::DestOpts(2),
            ],
        ),
        // Atomic fragments (offset 0, no more fragments) are first fragments.
        eth_frames(
            &udp_exchange(ep(a, 42003), ep(b, 123), UDP_DATA),
            &[],
            &[],
            &[Ext::Fragment {
                offset: 0,
                more: false,
            }],
        ),
        eth_frames(
            &tcp_session(ep(a, 42004), ep(b, 22), TCP_DATA),
            &[(TPID_8021Q, 7)],
            &[],
            &[Ext::DestOpts(0)],
        ),
    ];
    let cap = dir.write(
        "ipv6-ext.pcap",
        &pcap::pcap(pcap::LINKTYPE_ETHERNET, &records(interleave(convs))),
    );
    let c = check_capture(&dir, &cap, Link::Ethernet, &[]);
    assert_eq!((count(&c, "tcp"), count(&c, "udp")), (3, 2));

    let big = &[(true, 3000), (false, 2500), (true, 100), (false, 1200)];
    let frags = vec![
        fragmented_frames(&udp_exchange(ep(a, 43000), ep(b, 4789), big), 1280, &[], 0),
        fragmented_frames(
            &udp_exchange(ep(b, 43001), ep(a, 5000), big),
            1280,
            &[Ext::HopByHop(0), Ext::DestOpts(0)],
            0,
        ),
        fragmented_frames(
            &tcp_session(ep(a, 43002), ep(b, 443), TCP_DATA),
            1280,
            &[Ext::HopByHop(0)],
            0,
        ),
    ];
    let cap = dir.write(
        "ipv6-fragments.pcap",
        &pcap::pcap(pcap::LINKTYPE_ETHERNET, &records(interleave(frags))),
    );
    // The datagrams to port 4789 carry letters, not VXLAN: with decapsulation on, a first
    // fragment whose first byte has the I flag would be opened as VXLAN (tshark's VXLAN
    // dissector is off here too).
    let c = check_capture_with(
        &dir,
        &cap,
        Link::Ethernet,
        &[],
        &["sensor.decap.vxlan=false"],
    );
    assert_eq!((count(&c, "tcp"), count(&c, "udp")), (1, 2));
    assert!(
        c.summary.contains("later_fragment"),
        "ipv6-fragments.pcap: expected later fragments in the summary: {}",
        c.summary
    );
}

#[test]
fn kernel_oracle_tunnels() {
    let dir = setup("oracle-tunnels");
    // GRE between two routers (the lower address speaks first, see ExtraTable) carrying an
    // inner TCP session; the sensor must count only the outer GRE flow.
    let (r1, r2) = (ip("192.0.2.1"), ip("192.0.2.2"));
    let inner_client = ep("10.9.0.1", 40000);
    let gre: Vec<Pkt> = tcp_session(inner_client, ep("10.9.0.2", 22), TCP_DATA)
        .into_iter()
        .map(|p| {
            let inner = frames::ipv4(v4(p.src), v4(p.dst), p.proto, &[], Frag::default(), &p.l4);
            let (src, dst) = if p.src == inner_client.ip {
                (r1, r2)
            } else {
                (r2, r1)
            };
            Pkt {
                src,
                dst,
                proto: 47,
                l4: frames::gre(ETH_P_IP, &inner),
            }
        })
        .collect();
    // VXLAN between two VTEPs: each direction to port 4789 from its own source port, so the
    // two directions are two one-way UDP flows; the inner TCP session is not a flow.
    let (v1, v2) = (ip("198.51.100.1"), ip("198.51.100.2"));
    let inner_client = ep("10.8.0.1", 40001);
    let vx: Vec<Pkt> = tcp_session(inner_client, ep("10.8.0.2", 3333), TCP_DATA)
        .into_iter()
        .map(|p| {
            let inner = frames::ethernet(
                &[],
                ETH_P_IP,
                &frames::ipv4(v4(p.src), v4(p.dst), p.proto, &[], Frag::default(), &p.l4),
            );
            let (src, dst, sport) = if p.src == inner_client.ip {
                (v1, v2, 49200)
            } else {
                (v2, v1, 51000)
            };
            Pkt {
                src,
                dst,
                proto: 17,
                l4: frames::udp(sport, 4789, &frames::vxlan(42, &inner)),
            }
        })
        .collect();
    let convs = vec![
        eth_frames(&gre, &[], &[], &[]),
        eth_frames(&vx, &[], &[], &[]),
        eth_frames(
            &tcp_session(ep("192.0.2.1", 50505), ep("192.0.2.2", 179), TCP_DATA),
            &[],
            &[],
            &[],
        ),
    ];
    let cap = dir.write(
        "tunnels.pcap",
        &pcap::pcap(pcap::LINKTYPE_ETHERNET, &records(interleave(convs))),
    );
    // Decapsulation switched off: the tunnels are counted as their outer flows.
    let c = check_capture_with(
        &dir,
        &cap,
        Link::Ethernet,
        &[ExtraTable {
            z: "conv,ip,ip.proto==47",
            title: "IPv4",
            transport: "gre",
        }],
        &["sensor.decap.gre=false", "sensor.decap.vxlan=false"],
    );
    assert_eq!(
        (count(&c, "tcp"), count(&c, "udp"), count(&c, "gre")),
        (1, 2, 1)
    );
}

/// Conversations for the link-type captures: untagged IPv4 TCP, IPv6 TCP and IPv4/IPv6 UDP.
fn plain_convs(v4_only: bool, v6_only: bool) -> Vec<Vec<u8>> {
    let mut convs = Vec::new();
    if !v6_only {
        convs.push(eth_frames(
            &tcp_session(ep("172.16.0.5", 45000), ep("172.16.0.1", 3333), TCP_DATA),
            &[],
            &[],
            &[],
        ));
        convs.push(eth_frames(
            &udp_exchange(ep("172.16.0.5", 45001), ep("172.16.0.53", 53), UDP_DATA),
            &[],
            &[],
            &[],
        ));
    }
    if !v4_only {
        convs.push(eth_frames(
            &tcp_session(ep("fd00::5", 45002), ep("fd00::1", 443), TCP_DATA),
            &[],
            &[],
            &[],
        ));
        convs.push(eth_frames(
            &udp_exchange(ep("fd00::5", 45003), ep("fd00::53", 53), UDP_DATA),
            &[],
            &[],
            &[],
        ));
    }
    interleave(convs)
}

#[test]
fn kernel_oracle_cooked_and_raw_ip() {
    let dir = setup("oracle-links");
    // (file, link type, link layer, IPv4 only, IPv6 only)
    for (name, linktype, link, v4_only, v6_only) in [
        (
            "sll.pcap",
            pcap::LINKTYPE_LINUX_SLL,
            Link::Sll,
            false,
            false,
        ),
        (
            "sll2.pcap",
            pcap::LINKTYPE_LINUX_SLL2,
            Link::Sll2,
            false,
            false,
        ),
        ("raw.pcap", pcap::LINKTYPE_RAW, Link::RawIp, false, false),
        ("raw-ipv4.pcap", 228, Link::RawIp, true, false),
        ("raw-ipv6.pcap", 229, Link::RawIp, false, true),
    ] {
        let frames: Vec<Vec<u8>> = plain_convs(v4_only, v6_only)
            .iter()
            .map(|f| match link {
                Link::Sll => to_sll(f),
                Link::Sll2 => to_sll2(f),
                Link::RawIp => f[14..].to_vec(),
                Link::Ethernet => f.clone(),
            })
            .collect();
        let cap = dir.write(name, &pcap::pcap(linktype, &records(frames)));
        let c = check_capture(&dir, &cap, link, &[]);
        let expect = if v4_only || v6_only { (1, 1) } else { (2, 2) };
        assert_eq!((count(&c, "tcp"), count(&c, "udp")), expect, "{name}");
    }
}

#[test]
fn kernel_oracle_pcapng() {
    let dir = setup("oracle-pcapng");
    // Plus one TCP 4-tuple used by two sessions in a row: tshark prints two conversations, the
    // sensor keeps one flow (keyed by 5-tuple), so the oracle sums them.
    let (c, s) = (ep("172.16.0.9", 46000), ep("172.16.0.1", 8080));
    let mut reuse = tcp_session(c, s, TCP_DATA);
    // tshark starts a new stream only at a SYN with another initial sequence number.
    reuse.extend(
        tcp_session(c, s, &[(true, 10), (false, 20)])
            .into_iter()
            .map(|mut p| {
                p.l4[4..8].copy_from_slice(&777_000u32.to_be_bytes());
                p
            }),
    );
    let mut frames = plain_convs(false, false);
    frames.extend(eth_frames(&reuse, &[], &[], &[]));
    let mut recs = records(frames);
    // Frames cut by a 96-byte snap length still count their length on the wire.
    for r in recs.iter_mut().filter(|r| r.data.len() > 200).step_by(2) {
        r.orig_len = Some(r.data.len() as u32);
        r.data.truncate(96);
    }
    assert!(recs.iter().any(|r| r.orig_len.is_some()));
    let cap = dir.write(
        "mixed.pcapng",
        &pcap::pcapng(pcap::LINKTYPE_ETHERNET, &recs),
    );
    let c = check_capture(&dir, &cap, Link::Ethernet, &[]);
    assert_eq!((count(&c, "tcp"), count(&c, "udp")), (3, 2));
    assert_eq!(
        c.reused, 1,
        "mixed.pcapng: tshark should split the reused 4-tuple"
    );
    assert!(
        c.summary
            .contains("shorter in the capture than on the wire"),
        "mixed.pcapng: the summary should report the cut frames: {}",
        c.summary
    );
}
