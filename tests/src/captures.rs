//! Captures built for end-to-end tests of what happens after detection (sinks, spool): many
//! alarms from a small, deterministic input.

use crate::{
    frames::{TcpConn, TCP_ACK, TCP_PSH, TCP_SYN},
    pcap::Record,
};

/// `n` stratum sessions from one miner to distinct ports of one pool: each is its own
/// conversation and raises one `mining_protocol` alarm.
pub fn stratum_sessions(n: u16) -> Vec<Record> {
    let (client, pool) = ([192, 0, 2, 10], [203, 0, 113, 66]);
    let t0 = 1_700_000_000_000_000_000u64;
    let mut recs = Vec::new();
    for i in 0..n {
        let (cport, sport) = (40000 + i, 20000 + i);
        let t = t0 + u64::from(i) * 10_000_000;
        let subscribe =
            format!("{{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"cpuminer/{i}\"]}}\n");
        let packets = [
            (true, TCP_SYN, Vec::new()),
            (false, TCP_SYN | TCP_ACK, Vec::new()),
            (true, TCP_ACK | TCP_PSH, subscribe.into_bytes()),
        ];
        let conn = TcpConn::new(client, cport, pool, sport);
        for (k, (from_client, flags, payload)) in packets.into_iter().enumerate() {
            recs.push(Record::new(
                t + k as u64 * 1000,
                conn.frame(from_client, flags, &payload),
            ));
        }
    }
    recs
}
