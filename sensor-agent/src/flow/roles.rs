//! Who is the client of a flow, and how the sensor knows.
//!
//! The datapath names the client by the only rule it can afford per packet: the sender of a
//! SYN without ACK, else the sender of the first packet seen. A session joined mid-stream (the
//! sensor started, a route changed, a capture was cut) then gets its roles from whoever spoke
//! first, which is often the server (a pool pushing `mining.notify`). User space corrects that
//! from stronger evidence, strongest first:
//!
//! 1. `syn`: a SYN without ACK; always wins, even when it arrives after other evidence;
//!    then `exporter`: a flow record whose exporter tracked the connection and names its
//!    initiator (Azure flow tuples are oriented so), which only record sources carry;
//! 2. `payload`: a message only one side sends (a stratum notification, a TLS ServerHello, an
//!    HTTP response, a DNS answer), recognised by `enrich::classify::speaker` and applied by the
//!    engine when the payload arrives, once per flow;
//! 3. `port`: a service port (well known, or a registered mining/blockchain/service port) on
//!    one side while the other is ephemeral ([`client_by_port`]), decided when the flow is
//!    created;
//! 4. `fan_in`: an endpoint that several distinct clients reached with a SYN on the same port
//!    (counted by the flow table from the conversations it keeps), the other side not, decided
//!    when the flow is created;
//! 5. `first_packet`: what the datapath said.
//!
//! The codes extend the kernel's `FlowStats::client_source` values in user space only; the
//! kernel ABI keeps its two. A flow's client never moves to weaker evidence, and a port alone
//! never says what a flow *is* (that stays the classifiers' job): it only orients it.

use sensor_common::{FlowKey, CLIENT_BY_FIRST_PACKET, CLIENT_BY_SYN, CLIENT_HI, CLIENT_LO};

/// The client sent a message only a client sends, or its peer one only a server sends.
pub const CLIENT_BY_PAYLOAD: u8 = 4;
/// The exporter of a flow record tracked the connection and names its initiator (a
/// record source's evidence, not the kernel's).
pub const CLIENT_BY_EXPORTER: u8 = 5;
/// The client's port is ephemeral and its peer's a service port.
pub const CLIENT_BY_PORT: u8 = 2;
/// The server is an endpoint many clients reached with a SYN on the same port.
pub const CLIENT_BY_FAN_IN: u8 = 3;

/// How strong a `client_source` is: higher wins; unknown codes count as the first packet.
pub fn strength(source: u8) -> u8 {
    match source {
        CLIENT_BY_SYN => 6,
        CLIENT_BY_EXPORTER => 5,
        CLIENT_BY_PAYLOAD => 4,
        CLIENT_BY_PORT => 3,
        CLIENT_BY_FAN_IN => 2,
        _ => 1,
    }
}

/// `sensor.client_from` of flow records and alarms.
pub fn client_from(source: u8) -> &'static str {
    match source {
        CLIENT_BY_SYN => "syn",
        CLIENT_BY_PAYLOAD => "payload",
        CLIENT_BY_EXPORTER => "exporter",
        CLIENT_BY_PORT => "port",
        CLIENT_BY_FAN_IN => "fan_in",
        CLIENT_BY_FIRST_PACKET => "first_packet",
        _ => "first_packet",
    }
}

/// Whether a source hands in this evidence with its counters (a SYN it saw, an exporter's
/// initiator) rather than the table deciding it: such evidence overrides weaker decisions.
pub fn from_source(source: u8) -> bool {
    source == CLIENT_BY_SYN || source == CLIENT_BY_EXPORTER
}

/// Lowest port of the ephemeral range (Linux's default starts here, IANA's at 49152).
pub const EPHEMERAL_FROM: u16 = 32768;

/// Registered ports (1024-32767) of services that clients connect to: mining pools and
/// proxies, blockchain nodes, and common servers. All below [`EPHEMERAL_FROM`], so a port is
/// never both a service port and ephemeral. Sorted (checked by a test).
const SERVICE_PORTS: &[u16] = &[
    1080, 1194, 1433, 1521, 1883, 2375, 2376, 3000, 3032, 3306, 3333, 3334, 3335, 3336, 3389, 3478,
    4242, 4444, 4445, 5000, 5060, 5061, 5222, 5432, 5555, 5556, 5588, 5672, 5900, 6379, 6666, 6667,
    7777, 7778, 8000, 8008, 8080, 8081, 8088, 8332, 8333, 8443, 8545, 8546, 8888, 9000, 9090, 9092,
    9200, 9332, 9333, 9735, 9999, 10300, 10343, 11211, 12000, 13333, 14433, 14444, 15555, 16000,
    17777, 18080, 18081, 18089, 18332, 18333, 18443, 18444, 19999, 20000, 20202, 20535, 20580,
    22222, 25565, 27017, 30303, 30304,
];

/// One bit per port: well known (1-1023) or in [`SERVICE_PORTS`]. Built at compile time
/// (8 KiB), so the port rule costs two loads per new flow.
static SERVICE_BITS: [u64; 1024] = {
    let mut bits = [0u64; 1024];
    let mut p = 1;
    while p < 1024 {
        bits[p / 64] |= 1 << (p % 64);
        p += 1;
    }
    let mut i = 0;
    while i < SERVICE_PORTS.len() {
        let p = SERVICE_PORTS[i] as usize;
        bits[p / 64] |= 1 << (p % 64);
        i += 1;
    }
    bits
};

/// A port a server listens on: well known (1-1023) or in [`SERVICE_PORTS`].
pub fn is_service_port(port: u16) -> bool {
    SERVICE_BITS[port as usize / 64] & (1 << (port % 64)) != 0
}

/// The client (`CLIENT_LO` or `CLIENT_HI`) by the port rule: the side with an ephemeral port
/// when the other side has a service port. `None` when the ports do not say (both ephemeral,
/// both service ports, or a transport without ports).
pub fn client_by_port(key: &FlowKey) -> Option<u8> {
    if key.proto != 6 && key.proto != 17 && key.proto != 132 {
        return None;
    }
    let ephemeral = |p: u16| p >= EPHEMERAL_FROM;
    if is_service_port(key.port_lo) && ephemeral(key.port_hi) {
        Some(CLIENT_HI)
    } else if is_service_port(key.port_hi) && ephemeral(key.port_lo) {
        Some(CLIENT_LO)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::ipv4_mapped;

    fn key(a_port: u16, b_port: u16, proto: u8) -> (FlowKey, usize) {
        FlowKey::canonical(
            &ipv4_mapped([10, 0, 2, 15]),
            a_port,
            &ipv4_mapped([74, 84, 128, 158]),
            b_port,
            proto,
        )
    }

    /// The client the port rule names, as "a" (first endpoint) or "b".
    fn named(a_port: u16, b_port: u16, proto: u8) -> Option<&'static str> {
        let (k, dir_a) = key(a_port, b_port, proto);
        let a_is_lo = dir_a == 0;
        client_by_port(&k).map(|c| {
            if (c == CLIENT_LO) == a_is_lo {
                "a"
            } else {
                "b"
            }
        })
    }

    #[test]
    fn the_service_list_is_sorted_and_below_the_ephemeral_range() {
        assert!(SERVICE_PORTS.windows(2).all(|w| w[0] < w[1]));
        for p in 0..=u16::MAX {
            let listed = (1..1024).contains(&p) || SERVICE_PORTS.binary_search(&p).is_ok();
            assert_eq!(is_service_port(p), listed, "port {p}");
        }
        assert!(SERVICE_PORTS
            .iter()
            .all(|&p| (1024..EPHEMERAL_FROM).contains(&p)));
    }

    #[test]
    fn the_ephemeral_side_of_a_service_port_is_the_client() {
        assert_eq!(named(53266, 3333, 6), Some("a"), "stratum pool port");
        assert_eq!(named(3333, 53266, 6), Some("b"), "either order");
        assert_eq!(named(443, 50000, 6), Some("b"), "well known");
        assert_eq!(named(40000, 53, 17), Some("a"), "DNS over UDP");
        assert_eq!(named(18080, 33000, 6), Some("b"), "monerod");
        assert_eq!(named(30303, 61000, 17), Some("b"), "discv4");
    }

    #[test]
    fn ports_that_do_not_say_decide_nothing() {
        assert_eq!(named(40000, 50000, 6), None, "both ephemeral");
        assert_eq!(named(123, 123, 17), None, "both service");
        assert_eq!(named(443, 3333, 6), None, "both service");
        assert_eq!(
            named(20000, 12345, 6),
            None,
            "a service port, the other not ephemeral"
        );
        assert_eq!(named(443, 50000, 1), None, "no ports");
        assert_eq!(named(0, 50000, 6), None, "port 0 is no service");
    }

    #[test]
    fn evidence_has_an_order_and_a_name() {
        let order = [
            CLIENT_BY_FIRST_PACKET,
            CLIENT_BY_FAN_IN,
            CLIENT_BY_PORT,
            CLIENT_BY_PAYLOAD,
            CLIENT_BY_EXPORTER,
            CLIENT_BY_SYN,
        ];
        assert!(order.windows(2).all(|w| strength(w[0]) < strength(w[1])));
        let names: Vec<&str> = order.iter().map(|&s| client_from(s)).collect();
        assert_eq!(
            names,
            [
                "first_packet",
                "fan_in",
                "port",
                "payload",
                "exporter",
                "syn"
            ]
        );
        assert_eq!(client_from(200), "first_packet");
    }
}
