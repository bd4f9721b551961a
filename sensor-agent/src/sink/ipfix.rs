//! `[[exporters]]`: the sensor's own flow records sent as IPFIX (RFC 7011) over UDP, so users
//! keep their NetFlow tooling (nfdump, pmacct, SiLK) on what the sensor counted.
//!
//! One biflow record per flow (RFC 5103): the client is the source, the server the
//! destination; forward counts are the client's, the reverse elements (enterprise 29305) the
//! server's; `biflowDirection` says the source initiated. Standard information elements only:
//! addresses (IPv4 template 256, IPv6 template 257), ports, protocol, TCP flags per
//! direction, `flowStartMilliseconds`/`flowEndMilliseconds`, octet and packet delta counts
//! (the whole flow: one record per flow when it ends). Templates go out in the first message
//! and every [`TEMPLATE_EVERY`] messages after (UDP loses them; RFC 7011 section 8.4).
//!
//! It never blocks detection: a UDP send that fails is counted and the records dropped (a
//! collector that is down loses what it would have lost on the wire); messages stay below a
//! 1,500-byte MTU.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use serde::Deserialize;

use crate::{
    flow::record::{ip_of, FlowRecord},
    units::Invalid,
};

/// Messages between two sendings of the templates.
pub const TEMPLATE_EVERY: u64 = 32;
/// Largest message: a 1,500-byte MTU less IPv6 and UDP headers.
const MAX_MESSAGE: usize = 1_452;
const REVERSE_PEN: u32 = 29305;
const TEMPLATE_V4: u16 = 256;
const TEMPLATE_V6: u16 = 257;

/// One `[[exporters]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// The collector, `HOST:PORT` as an address (e.g. `127.0.0.1:4739`).
    pub address: SocketAddr,
    /// The observation domain the records are exported in.
    #[serde(default)]
    pub observation_domain: u32,
}

impl ExporterConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.address.port() == 0 {
            return Err(Invalid::new("address", "needs a port"));
        }
        Ok(())
    }
}

/// What an exporter sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportCounters {
    pub records: u64,
    pub messages: u64,
    /// Messages whose send failed (their records are lost).
    pub send_errors: u64,
}

/// (element id, length, reverse) of each template field; the addresses first.
fn fields(v6: bool) -> [(u16, u16, bool); 14] {
    let (src, dst, len) = if v6 { (27, 28, 16) } else { (8, 12, 4) };
    [
        (src, len, false),
        (dst, len, false),
        (7, 2, false),   // sourceTransportPort
        (11, 2, false),  // destinationTransportPort
        (4, 1, false),   // protocolIdentifier
        (6, 2, false),   // tcpControlBits
        (152, 8, false), // flowStartMilliseconds
        (153, 8, false), // flowEndMilliseconds
        (1, 8, false),   // octetDeltaCount
        (2, 8, false),   // packetDeltaCount
        (1, 8, true),    // reverseOctetDeltaCount
        (2, 8, true),    // reversePacketDeltaCount
        (6, 2, true),    // reverseTcpControlBits
        (239, 1, false), // biflowDirection
    ]
}

fn template_set() -> Vec<u8> {
    let mut set = vec![0, 2, 0, 0];
    for (id, v6) in [(TEMPLATE_V4, false), (TEMPLATE_V6, true)] {
        let f = fields(v6);
        set.extend(id.to_be_bytes());
        set.extend((f.len() as u16).to_be_bytes());
        for (ie, len, rev) in f {
            if rev {
                set.extend((ie | 0x8000).to_be_bytes());
                set.extend(len.to_be_bytes());
                set.extend(REVERSE_PEN.to_be_bytes());
            } else {
                set.extend(ie.to_be_bytes());
                set.extend(len.to_be_bytes());
            }
        }
    }
    let n = set.len() as u16;
    set[2..4].copy_from_slice(&n.to_be_bytes());
    set
}

/// One flow record in its template's layout; the template id.
fn encode(r: &FlowRecord, out: &mut Vec<u8>) -> u16 {
    let (client, server) = r.endpoints();
    let (c, s) = (ip_of(&client.addr), ip_of(&server.addr));
    let id = match (c, s) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            out.extend(c.octets());
            out.extend(s.octets());
            TEMPLATE_V4
        }
        _ => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.extend(v6(c).octets());
            out.extend(v6(s).octets());
            TEMPLATE_V6
        }
    };
    let ms = |ns: Option<u64>| ns.unwrap_or(0) / 1_000_000;
    out.extend(client.port.to_be_bytes());
    out.extend(server.port.to_be_bytes());
    out.push(r.key.proto);
    out.extend(u16::from(client.tcp_flags).to_be_bytes());
    out.extend(ms(r.start_ns).to_be_bytes());
    out.extend(ms(r.end_ns.or(r.start_ns)).to_be_bytes());
    out.extend(client.bytes.to_be_bytes());
    out.extend(client.packets.to_be_bytes());
    out.extend(server.bytes.to_be_bytes());
    out.extend(server.packets.to_be_bytes());
    out.extend(u16::from(server.tcp_flags).to_be_bytes());
    out.push(1); // biflowDirection: initiator (the source began the flow)
    id
}

/// An IPFIX exporting process for one collector.
pub struct IpfixExporter {
    socket: UdpSocket,
    domain: u32,
    /// Data records since the start (the message sequence number, RFC 7011 section 3.1).
    sequence: u32,
    /// Pending records per template: (template id, encoded records, count).
    pending: [(u16, Vec<u8>, u32); 2],
    pub counters: ExportCounters,
    pub address: SocketAddr,
}

impl IpfixExporter {
    pub fn new(cfg: &ExporterConfig) -> std::io::Result<Self> {
        let bind: SocketAddr = if cfg.address.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(cfg.address)?;
        socket.set_nonblocking(true)?;
        Ok(IpfixExporter {
            socket,
            domain: cfg.observation_domain,
            sequence: 0,
            pending: [(TEMPLATE_V4, Vec::new(), 0), (TEMPLATE_V6, Vec::new(), 0)],
            counters: ExportCounters::default(),
            address: cfg.address,
        })
    }

    /// Queues one flow record; sends a message when its set would pass the MTU.
    pub fn push(&mut self, r: &FlowRecord, now_ns: u64) {
        let mut rec = Vec::with_capacity(80);
        let id = encode(r, &mut rec);
        let i = usize::from(id == TEMPLATE_V6);
        let with_templates = self.counters.messages.is_multiple_of(TEMPLATE_EVERY);
        let overhead = 16
            + 4
            + if with_templates {
                template_set().len()
            } else {
                0
            };
        if overhead + self.pending[i].1.len() + rec.len() > MAX_MESSAGE {
            self.send(i, now_ns);
        }
        self.pending[i].1.extend(rec);
        self.pending[i].2 += 1;
        self.counters.records += 1;
    }

    /// Sends everything queued.
    pub fn flush(&mut self, now_ns: u64) {
        for i in 0..2 {
            if self.pending[i].2 > 0 {
                self.send(i, now_ns);
            }
        }
    }

    fn send(&mut self, i: usize, now_ns: u64) {
        let (id, body, count) = std::mem::take(&mut self.pending[i]);
        self.pending[i].0 = id;
        let mut msg = Vec::with_capacity(MAX_MESSAGE);
        msg.extend(10u16.to_be_bytes());
        msg.extend([0, 0]);
        msg.extend(((now_ns / 1_000_000_000) as u32).to_be_bytes());
        msg.extend(self.sequence.to_be_bytes());
        msg.extend(self.domain.to_be_bytes());
        if self.counters.messages.is_multiple_of(TEMPLATE_EVERY) {
            msg.extend(template_set());
        }
        msg.extend(id.to_be_bytes());
        msg.extend(((body.len() + 4) as u16).to_be_bytes());
        msg.extend(body);
        let n = msg.len() as u16;
        msg[2..4].copy_from_slice(&n.to_be_bytes());
        self.sequence = self.sequence.wrapping_add(count);
        self.counters.messages += 1;
        if self.socket.send(&msg).is_err() {
            self.counters.send_errors += 1;
        }
    }
}

/// Every configured exporter; records' times set the messages' export time (the sensor's
/// clock: wall time live, capture time in replay).
#[derive(Default)]
pub struct Exporters {
    list: Vec<IpfixExporter>,
    latest_ns: u64,
}

impl Exporters {
    pub fn open(cfgs: &[ExporterConfig]) -> std::io::Result<Self> {
        let list = cfgs
            .iter()
            .map(IpfixExporter::new)
            .collect::<std::io::Result<_>>()?;
        Ok(Exporters { list, latest_ns: 0 })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn push(&mut self, r: &FlowRecord) {
        self.latest_ns = self.latest_ns.max(r.end_ns.or(r.start_ns).unwrap_or(0));
        for e in &mut self.list {
            e.push(r, self.latest_ns);
        }
    }

    pub fn flush(&mut self) {
        for e in &mut self.list {
            e.flush(self.latest_ns);
        }
    }

    /// One line per exporter: what it sent.
    pub fn report(&self) -> Vec<String> {
        self.list
            .iter()
            .map(|e| {
                let c = &e.counters;
                let mut line = format!(
                    "exported {} flow records as IPFIX to {} in {} messages",
                    c.records, e.address, c.messages
                );
                if c.send_errors > 0 {
                    line.push_str(&format!(
                        " ({} messages failed to send; their records are lost)",
                        c.send_errors
                    ));
                }
                line
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::records::{netflow::Decoder, Telemetry};
    use sensor_common::{ipv4_mapped, FlowKey, FlowStats, CLIENT_HI};

    #[test]
    fn exported_messages_decode_as_biflows_with_the_flow_tables_counts() {
        let collector = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut ex = IpfixExporter::new(&ExporterConfig {
            address: collector.local_addr().expect("addr"),
            observation_domain: 9,
        })
        .expect("exporter");
        let (key, _) = FlowKey::canonical(
            &ipv4_mapped([10, 0, 0, 5]),
            50000,
            &ipv4_mapped([203, 0, 113, 7]),
            3333,
            6,
        );
        let stats = FlowStats {
            packets: [7, 11],
            bytes: [700, 1100],
            client: CLIENT_HI,
            ..FlowStats::default()
        };
        let n = 100;
        for i in 0..n {
            let r = FlowRecord {
                key,
                stats,
                start_ns: Some(1_700_000_000_000_000_000 + i),
                end_ns: Some(1_700_000_100_000_000_000),
                tunnel: None,
                host: None,
            };
            ex.push(&r, 1_700_000_100_000_000_000);
        }
        ex.flush(1_700_000_100_000_000_000);
        assert!(ex.counters.messages > 1, "records span several messages");
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..ex.counters.messages {
            let (len, from) = collector.recv_from(&mut buf).expect("message");
            assert!(len <= MAX_MESSAGE);
            assert_eq!(
                d.decode(from, &buf[..len], &mut out),
                Some(Telemetry::Ipfix)
            );
        }
        assert_eq!(out.len(), n as usize, "{:?}", d.counters);
        assert_eq!(d.counters.sequence_gaps, 0);
        let (client, server) = FlowRecord {
            key,
            stats,
            start_ns: None,
            end_ns: None,
            tunnel: None,
            host: None,
        }
        .endpoints();
        for a in &out {
            assert_eq!((a.src, a.src_port), (client.addr, client.port));
            assert_eq!((a.packets, a.bytes), (client.packets, client.bytes));
            assert_eq!((a.rev_packets, a.rev_bytes), (server.packets, server.bytes));
            assert_eq!(a.end_ns - a.start_ns, 100_000_000_000);
        }
    }
}
