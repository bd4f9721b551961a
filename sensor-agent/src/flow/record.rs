//! Flow records (`--flows`): one JSON object per line with the ECS endpoint fields of the
//! alarm contract (docs/ARCHITECTURE.md), `event.kind = "event"`, source = client.
//!
//! Every value here comes from packet headers that an attacker controls; serde_json escapes
//! strings, and nothing else is interpolated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use sensor_common::{
    addr_octets, tunnel, Addr, FlowKey, FlowStats, TunnelInfo, CLIENT_LO, IPV4_MAPPED_WORD,
};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

/// A flow with its counters and capture or wall-clock times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: FlowKey,
    pub stats: FlowStats,
    /// First and last packet, nanoseconds since the Unix epoch, when known.
    pub start_ns: Option<u64>,
    pub end_ns: Option<u64>,
    /// The tunnel the flow was created in, if it came out of one.
    pub tunnel: Option<TunnelInfo>,
    /// Forwarded or the host's own, and the owning process (live with process attribution).
    pub host: Option<std::sync::Arc<crate::flow::host::HostSide>>,
}

/// The `tunnel` object of flow records and alarms: `type`, `id` (VNI, GRE key, PPPoE
/// session or MPLS label, when the tunnel has one), and the outer addresses as `source.ip`
/// (the tunnel endpoint on the client's side) and `destination.ip`, when there is an outer IP
/// header. `client_is_lo`: the client is the `addr_lo` endpoint of the key `t` is oriented by.
pub fn tunnel_json(t: &TunnelInfo, client_is_lo: bool) -> Value {
    let name = tunnel::NAMES
        .get(t.kind as usize)
        .copied()
        .unwrap_or("unknown");
    let mut out = json!({ "type": name });
    if t.has_id != 0 {
        out["id"] = json!(t.id);
    }
    if t.outer_lo != [0; 4] || t.outer_hi != [0; 4] {
        let (client_side, server_side) = if client_is_lo {
            (&t.outer_lo, &t.outer_hi)
        } else {
            (&t.outer_hi, &t.outer_lo)
        };
        out["source"] = json!({ "ip": ip_of(client_side).to_string() });
        out["destination"] = json!({ "ip": ip_of(server_side).to_string() });
    }
    out
}

/// One side of a flow, oriented by client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: Addr,
    pub port: u16,
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: u8,
}

/// The IP address held in address words (IPv4-mapped addresses become IPv4).
pub fn ip_of(a: &Addr) -> IpAddr {
    let o = addr_octets(a);
    if a[0] == 0 && a[1] == 0 && a[2] == IPV4_MAPPED_WORD {
        IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

/// ECS `network.transport` for an IP protocol number.
pub fn transport_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        2 => "igmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        41 => "ipv6".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        other => other.to_string(),
    }
}

/// TCP flags as letters in tcpdump order (F S R P A U E C), empty when none.
pub fn tcp_flag_letters(flags: u8) -> String {
    const LETTERS: [(u8, char); 8] = [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, 'A'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'C'),
    ];
    LETTERS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|&(_, c)| c)
        .collect()
}

fn rfc3339(ns: u64) -> String {
    crate::clock::rfc3339_micros(ns)
}

impl FlowRecord {
    /// (client, server).
    pub fn endpoints(&self) -> (Endpoint, Endpoint) {
        let k = &self.key;
        let s = &self.stats;
        let lo = Endpoint {
            addr: k.addr_lo,
            port: k.port_lo,
            packets: s.packets[0],
            bytes: s.bytes[0],
            tcp_flags: (s.tcp_flags & 0xff) as u8,
        };
        let hi = Endpoint {
            addr: k.addr_hi,
            port: k.port_hi,
            packets: s.packets[1],
            bytes: s.bytes[1],
            tcp_flags: ((s.tcp_flags >> 8) & 0xff) as u8,
        };
        if s.client == CLIENT_LO {
            (lo, hi)
        } else {
            (hi, lo)
        }
    }

    /// Community ID v1 (seed 0) of the flow, for TCP and UDP; other protocols need fields the
    /// datapath does not keep (ICMP type and code).
    pub fn community_id(&self) -> Option<String> {
        let k = &self.key;
        if k.proto != 6 && k.proto != 17 {
            return None;
        }
        let ip_bytes = |a: &Addr| -> Vec<u8> {
            match ip_of(a) {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            }
        };
        // Community ID orders endpoints by network-order address bytes, then port; the key's
        // own order compares native words, which differs on little-endian machines.
        let a = (ip_bytes(&k.addr_lo), k.port_lo);
        let b = (ip_bytes(&k.addr_hi), k.port_hi);
        let (first, second) = if a <= b { (a, b) } else { (b, a) };
        let mut h = Sha1::new();
        h.update(0u16.to_be_bytes());
        h.update(&first.0);
        h.update(&second.0);
        h.update([k.proto, 0]);
        h.update(first.1.to_be_bytes());
        h.update(second.1.to_be_bytes());
        Some(format!(
            "1:{}",
            base64::engine::general_purpose::STANDARD.encode(h.finalize())
        ))
    }

    pub fn to_json(&self, engine: &str) -> Value {
        let (client, server) = self.endpoints();
        let endpoint = |e: &Endpoint| {
            json!({
                "ip": ip_of(&e.addr).to_string(),
                "port": e.port,
                "packets": e.packets,
                "bytes": e.bytes,
            })
        };
        let mut event = json!({
            "kind": "event",
            "category": ["network"],
            "type": ["connection"],
        });
        if let (Some(start), Some(end)) = (self.start_ns, self.end_ns) {
            event["start"] = json!(rfc3339(start));
            event["end"] = json!(rfc3339(end));
            event["duration"] = json!(end.saturating_sub(start));
        }
        let mut network = json!({
            "transport": transport_name(self.key.proto),
            "iana_number": self.key.proto.to_string(),
            "type": if self.key.addr_lo[2] == IPV4_MAPPED_WORD && self.key.addr_lo[..2] == [0, 0] { "ipv4" } else { "ipv6" },
            "packets": client.packets + server.packets,
            "bytes": client.bytes + server.bytes,
        });
        if let Some(id) = self.community_id() {
            network["community_id"] = json!(id);
        }
        let mut out = json!({
            "event": event,
            "source": endpoint(&client),
            "destination": endpoint(&server),
            "network": network,
            "sensor": {
                "engine": engine,
                "client_from": crate::flow::roles::client_from(self.stats.client_source),
            },
        });
        if let Some(end) = self.end_ns {
            out["@timestamp"] = json!(rfc3339(end));
        }
        if let Some(t) = &self.tunnel {
            out["tunnel"] = tunnel_json(t, self.stats.client == CLIENT_LO);
        }
        if let Some(h) = &self.host {
            crate::flow::host::render(&mut out, h);
        }
        if self.key.proto == 6 {
            out["sensor"]["tcp_flags"] = json!({
                "source": tcp_flag_letters(client.tcp_flags),
                "destination": tcp_flag_letters(server.tcp_flags),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::ipv4_mapped;

    #[test]
    fn community_id_matches_the_specification_example() {
        // From the Community ID spec's test vectors: TCP 128.232.110.120:34855 -> 66.35.250.204:80.
        let (key, _) = FlowKey::canonical(
            &ipv4_mapped([128, 232, 110, 120]),
            34855,
            &ipv4_mapped([66, 35, 250, 204]),
            80,
            6,
        );
        let r = FlowRecord {
            key,
            stats: FlowStats::default(),
            start_ns: None,
            end_ns: None,
            tunnel: None,
            host: None,
        };
        assert_eq!(
            r.community_id().as_deref(),
            Some("1:LQU9qZlK+B5F3KDmev6m5PMibrg=")
        );
    }

    #[test]
    fn flags_render_in_tcpdump_order() {
        assert_eq!(tcp_flag_letters(0x12), "SA");
        assert_eq!(tcp_flag_letters(0x19), "FPA");
        assert_eq!(tcp_flag_letters(0), "");
    }
}
