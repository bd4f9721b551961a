//! The datapath's payload copies (first payload packets of each sender, every DNS message)
//! through the real ring buffer: what is copied, when copying stops, and that a full ring
//! loses copies only by counting them.

use sensor_agent::source::datapath::LoadOptions;
use sensor_common::{
    counter, ipv4_mapped, DatapathSettings, FlowKey, PayloadEvent, PAYLOAD_DNS, PAYLOAD_FIRST,
};
use sensor_tests::{
    frames::{self, Frag, TcpConn, TCP_ACK, TCP_PSH, TCP_SYN},
    kernel::Kernel,
};

const CLIENT: [u8; 4] = [10, 3, 0, 1];
const POOL: [u8; 4] = [10, 3, 0, 2];

fn opts(packets: u32, bytes: u32, dns: u32, ring: u32) -> LoadOptions {
    LoadOptions {
        max_flows: 4096,
        settings: DatapathSettings {
            payload_packets: packets,
            payload_bytes: bytes,
            dns_bytes: dns,
            watch_gen: 0,
            decap: sensor_common::tunnel::ALL,
            _pad: 0,
        },
        ring_bytes: ring,
        ..LoadOptions::default()
    }
}

fn tcp(from_client: bool, flags: u8, payload: &[u8]) -> Vec<u8> {
    TcpConn::new(CLIENT, 40000, POOL, 3333).frame(from_client, flags, payload)
}

fn drain(k: &mut Kernel) -> Vec<PayloadEvent> {
    let mut out = Vec::new();
    k.dp.drain_payloads(|e| out.push(*e));
    out
}

#[test]
fn kernel_first_payload_packets_of_each_sender_are_copied_then_sampling_stops() {
    let mut k = Kernel::load_with(&opts(2, 64, 0, 1 << 16));
    let subscribe = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"cpuminer/2.5.1\"]}\n";
    let notify =
        b"{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"job1\",\"00\",\"01\"]}\n";
    k.xdp(&tcp(true, TCP_SYN, &[]));
    k.xdp(&tcp(false, TCP_SYN | TCP_ACK, &[]));
    for _ in 0..4 {
        k.xdp(&tcp(true, TCP_ACK | TCP_PSH, subscribe));
        k.xdp(&tcp(false, TCP_ACK | TCP_PSH, notify));
    }
    let events = drain(&mut k);
    let (key, client_dir) =
        FlowKey::canonical(&ipv4_mapped(CLIENT), 40000, &ipv4_mapped(POOL), 3333, 6);
    assert_eq!(
        events.len(),
        4,
        "two payload packets per sender, handshake packets carry none"
    );
    for e in &events {
        assert_eq!(e.key, key);
        assert_eq!(e.kind, PAYLOAD_FIRST);
        let sent: &[u8] = if e.dir as usize == client_dir {
            subscribe
        } else {
            notify
        };
        assert_eq!(e.payload_len as usize, sent.len());
        assert_eq!(e.len, 64, "copies are cut at payload_bytes");
        assert_eq!(&e.data[..64], &sent[..64]);
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| e.dir as usize == client_dir)
            .count(),
        2
    );
    let s = k.flow(&key).expect("flow");
    assert_eq!(
        (s.sampling, s.samples_left),
        (0, [0, 0]),
        "sampling retired"
    );
    k.xdp(&tcp(true, TCP_ACK | TCP_PSH, subscribe));
    assert!(drain(&mut k).is_empty(), "no copies once sampling is over");
    assert_eq!(k.counters()[counter::PAYLOAD_EVENTS as usize], 4);
}

#[test]
fn kernel_every_dns_message_is_copied_and_tc_egress_copies_too() {
    let mut k = Kernel::load_with(&opts(0, 0, 512, 1 << 16));
    let query = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, b'p', b'o', b'o', b'l', 0, 0, 1, 0, 1,
    ];
    for i in 0..5u8 {
        let mut q = query;
        q[1] = i;
        let f = frames::v4_frame(
            &[],
            CLIENT,
            POOL,
            17,
            &[],
            Frag::default(),
            &frames::udp(5300, 53, &q),
        )
        .frame;
        if i % 2 == 0 {
            k.xdp(&f);
        } else {
            k.tc(&f);
        }
    }
    // A non-DNS flow is not copied when only DNS capture is on.
    k.xdp(&tcp(true, TCP_ACK | TCP_PSH, b"hello"));
    let events = drain(&mut k);
    assert_eq!(events.len(), 5);
    assert!(events
        .iter()
        .all(|e| e.kind == PAYLOAD_DNS && e.len as usize == query.len()));
    assert_eq!(
        events.iter().map(|e| e.data[1]).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
}

#[test]
fn kernel_without_settings_nothing_is_copied() {
    let mut k = Kernel::load(1024);
    k.xdp(&tcp(true, TCP_ACK | TCP_PSH, b"{\"method\":\"login\"}"));
    assert!(drain(&mut k).is_empty());
    assert_eq!(k.counters()[counter::PAYLOAD_EVENTS as usize], 0);
}

#[test]
fn kernel_a_full_ring_counts_every_copy_it_loses() {
    let mut k = Kernel::load_with(&opts(1, 512, 0, 4096));
    for port in 0..20u16 {
        let f = frames::v4_frame(
            &[],
            CLIENT,
            POOL,
            6,
            &[],
            Frag::default(),
            &frames::tcp(41000 + port, 3333, TCP_ACK | TCP_PSH, &[0x42; 600]),
        )
        .frame;
        k.xdp(&f);
    }
    let got = drain(&mut k).len() as u64;
    let c = k.counters();
    println!(
        "ring of one page: {got} copies delivered, {} dropped",
        c[counter::PAYLOAD_DROPS as usize]
    );
    assert!(
        got >= 1 && c[counter::PAYLOAD_DROPS as usize] >= 1,
        "a one-page ring must fill"
    );
    assert_eq!(
        got + c[counter::PAYLOAD_DROPS as usize],
        20,
        "every copy is delivered or counted as dropped"
    );
    assert_eq!(c[counter::PAYLOAD_EVENTS as usize], got);
}
