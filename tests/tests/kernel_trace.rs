//! The datapath's message trace of watched flows (real verifier, BPF_PROG_TEST_RUN, the real
//! watch map and ring buffer): only watched flows are traced, each message with its direction
//! and payload size (Ethernet padding excluded), within the flow's budget; unwatching stops it
//! and clears the flow's bit; the TC egress path traces too; a full ring counts its losses.

use std::time::Duration;

use sensor_agent::source::datapath::LoadOptions;
use sensor_common::{counter, ipv4_mapped, FlowKey, TraceEvent, SAMPLE_TRACE};
use sensor_tests::{
    frames::{TcpConn, TCP_ACK, TCP_PSH, TCP_SYN},
    kernel::Kernel,
    wait::wait_until,
};

const CLIENT: [u8; 4] = [10, 4, 0, 1];
const POOL: [u8; 4] = [10, 4, 0, 2];

fn opts(trace_ring: u32) -> LoadOptions {
    LoadOptions {
        max_flows: 4096,
        max_watched_flows: 16,
        trace_ring_bytes: trace_ring,
        ..LoadOptions::default()
    }
}

fn tcp(cport: u16, from_client: bool, flags: u8, payload: &[u8]) -> Vec<u8> {
    TcpConn::new(CLIENT, cport, POOL, 3333).frame(from_client, flags, payload)
}

fn key(cport: u16) -> (FlowKey, usize) {
    FlowKey::canonical(&ipv4_mapped(CLIENT), cport, &ipv4_mapped(POOL), 3333, 6)
}

fn drain(k: &mut Kernel) -> Vec<TraceEvent> {
    let mut out = Vec::new();
    k.dp.drain_traces(|e| out.push(*e));
    out
}

/// A flow notices a change of the watched set at its first packet in a new jiffy: waits until
/// the kernel's jiffies (as the datapath reads them) have moved on.
fn next_jiffy(k: &mut Kernel) {
    let start =
        k.dp.jiffies()
            .unwrap_or_else(|e| panic!("read jiffies: {e}"));
    wait_until(Duration::from_secs(1), "the next jiffy", || {
        k.dp.jiffies().is_ok_and(|j| j > start)
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

fn handshake(k: &mut Kernel, cport: u16) {
    k.xdp(&tcp(cport, true, TCP_SYN, &[]));
    k.xdp(&tcp(cport, false, TCP_SYN | TCP_ACK, &[]));
}

#[test]
fn kernel_trace_times_watched_flows_only_with_direction_and_size() {
    let mut k = Kernel::load_with(&opts(1 << 16));
    let (watched, client_dir) = key(41000);
    let (other, _) = key(41001);
    handshake(&mut k, 41000);
    handshake(&mut k, 41001);
    assert_eq!(k.dp.watch(&[watched], 100).expect("watch"), 1);
    next_jiffy(&mut k);
    let sizes = [181usize, 251, 7, 1200];
    for (i, &n) in sizes.iter().enumerate() {
        let from_client = i % 2 == 0;
        k.xdp(&tcp(41000, from_client, TCP_ACK | TCP_PSH, &vec![0x17; n]));
        k.xdp(&tcp(41001, from_client, TCP_ACK | TCP_PSH, &vec![0x17; n]));
    }
    // A bare ACK padded to the 60-byte Ethernet minimum carries no message.
    let mut ack = tcp(41000, true, TCP_ACK, &[]);
    assert_eq!(ack.len(), 54);
    ack.resize(60, 0);
    k.xdp(&ack);
    let events = drain(&mut k);
    let got: Vec<(FlowKey, usize, bool)> = events
        .iter()
        .map(|e| (e.key, e.payload_len as usize, e.dir as usize == client_dir))
        .collect();
    let want: Vec<(FlowKey, usize, bool)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (watched, n, i % 2 == 0))
        .collect();
    assert_eq!(
        got, want,
        "only the watched flow, every payload packet, in order"
    );
    assert!(
        events.windows(2).all(|w| w[0].ktime_ns <= w[1].ktime_ns) && events[0].ktime_ns > 0,
        "monotonic nanosecond times"
    );
    let s = k.flow(&watched).expect("watched flow");
    assert_ne!(s.sampling & SAMPLE_TRACE, 0);
    let s = k.flow(&other).expect("other flow");
    assert_eq!(
        s.sampling & SAMPLE_TRACE,
        0,
        "the unwatched flow is not marked"
    );
    let c = k.counters();
    assert_eq!(c[counter::TRACE_EVENTS as usize], 4);
    assert_eq!(c[counter::TRACE_DROPS as usize], 0);
}

#[test]
fn kernel_trace_budget_rearm_and_unwatch() {
    let mut k = Kernel::load_with(&opts(1 << 16));
    let (flow, _) = key(42000);
    handshake(&mut k, 42000);
    k.dp.watch(&[flow], 3).expect("watch");
    next_jiffy(&mut k);
    for _ in 0..5 {
        k.xdp(&tcp(42000, true, TCP_ACK | TCP_PSH, b"keepalive"));
    }
    assert_eq!(drain(&mut k).len(), 3, "three messages of budget");
    assert_eq!(k.counters()[counter::TRACE_OVER_BUDGET as usize], 2);
    k.dp.rearm(&[flow], 2).expect("rearm");
    for _ in 0..3 {
        k.xdp(&tcp(42000, false, TCP_ACK | TCP_PSH, b"job"));
    }
    let events = drain(&mut k);
    assert_eq!(events.len(), 2, "a fresh budget of two");
    assert!(events.iter().all(|e| e.payload_len == 3));
    assert_eq!(k.counters()[counter::TRACE_OVER_BUDGET as usize], 3);
    assert_eq!(k.dp.watched().expect("watched"), vec![flow]);

    k.dp.unwatch(&[flow]).expect("unwatch");
    k.dp.unwatch(&[flow])
        .expect("unwatching twice is not an error");
    k.dp.rearm(&[flow], 10)
        .expect("rearming an unwatched flow does nothing");
    assert!(k.dp.watched().expect("watched").is_empty());
    k.xdp(&tcp(42000, true, TCP_ACK | TCP_PSH, b"keepalive"));
    assert!(drain(&mut k).is_empty(), "no trace once unwatched");
    let s = k.flow(&flow).expect("flow");
    assert_eq!(s.sampling & SAMPLE_TRACE, 0, "the flow cleared its bit");
    assert_eq!(s.packets, [1 + 5 + 1, 1 + 3], "every packet still counted");
}

#[test]
fn kernel_trace_tc_egress_and_full_ring_counts_losses() {
    // One page of ring: 4096 / (56 + 8 header) = 64 records.
    let mut k = Kernel::load_with(&opts(4096));
    let (flow, _) = key(43000);
    handshake(&mut k, 43000);
    k.dp.watch(&[flow], 1000).expect("watch");
    next_jiffy(&mut k);
    k.tc(&tcp(43000, true, TCP_ACK | TCP_PSH, &[0x17; 99]));
    let events = drain(&mut k);
    assert_eq!(events.len(), 1, "the TC egress path traces too");
    assert_eq!(events[0].payload_len, 99);
    for _ in 0..100 {
        k.xdp(&tcp(43000, true, TCP_ACK | TCP_PSH, &[0x17; 99]));
    }
    let kept = drain(&mut k).len() as u64;
    let c = k.counters();
    println!(
        "one-page trace ring: {kept} kept, {} dropped",
        c[counter::TRACE_DROPS as usize]
    );
    assert!(kept > 0 && kept < 100);
    assert_eq!(kept + c[counter::TRACE_DROPS as usize], 100);
    assert_eq!(c[counter::TRACE_EVENTS as usize], kept + 1);
}

#[test]
fn kernel_watch_map_refuses_beyond_its_capacity() {
    let mut k = Kernel::load_with(&opts(1 << 16));
    let keys: Vec<FlowKey> = (0..20).map(|i| key(44000 + i).0).collect();
    assert_eq!(
        k.dp.watch(&keys, 10).expect("watch"),
        16,
        "max_watched_flows = 16"
    );
}
