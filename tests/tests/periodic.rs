//! Periodic flows on synthetic captures: regular reconnects (60 s +- 2 s for 3 h) raise
//! `periodic_flow` across connections with the right period; the same pair with Poisson
//! arrivals and random sizes raises nothing; one session with a fixed-size request every 10 s
//! raises it inside the flow; the short flows of the real captures raise nothing.

use sensor_tests::{
    agent::{self, TempDir},
    frames::{TcpConn, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN},
    pcap::{self, Record},
};
use serde_json::Value;

const CLIENT: [u8; 4] = [192, 0, 2, 10];
const SERVER: [u8; 4] = [203, 0, 113, 80];
const T0: u64 = 1_700_000_000_000_000_000;
const S: u64 = 1_000_000_000;

fn packet(t: u64, from_client: bool, cport: u16, sport: u16, flags: u8, payload: &[u8]) -> Record {
    Record::new(
        t,
        TcpConn::new(CLIENT, cport, SERVER, sport).frame(from_client, flags, payload),
    )
}

/// A short connection at `t`: handshake, one request of `size` bytes, a reply, close.
fn connection(recs: &mut Vec<Record>, t: u64, cport: u16, size: usize) {
    let ms = 1_000_000;
    recs.push(packet(t, true, cport, 443, TCP_SYN, &[]));
    recs.push(packet(t + ms, false, cport, 443, TCP_SYN | TCP_ACK, &[]));
    recs.push(packet(
        t + 2 * ms,
        true,
        cport,
        443,
        TCP_ACK | TCP_PSH,
        &vec![0x17; size],
    ));
    recs.push(packet(
        t + 3 * ms,
        false,
        cport,
        443,
        TCP_ACK | TCP_PSH,
        &[0x17; 64],
    ));
    recs.push(packet(t + 4 * ms, true, cport, 443, TCP_FIN | TCP_ACK, &[]));
    recs.push(packet(
        t + 5 * ms,
        false,
        cport,
        443,
        TCP_FIN | TCP_ACK,
        &[],
    ));
}

fn periodic_alarms(dir: &TempDir, name: &str, recs: &[Record]) -> Vec<Value> {
    let cap = dir.write(name, &pcap::pcap(pcap::LINKTYPE_ETHERNET, recs));
    let run = agent::run(&["replay".as_ref(), "--no-progress".as_ref(), cap.as_os_str()]);
    assert!(run.success, "{}", run.stderr);
    run.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|a| a["rule"]["id"] == "periodic_flow")
        .collect()
}

#[test]
fn regular_reconnects_raise_periodic_flow_across_connections_with_their_period() {
    let dir = TempDir::new("periodic-regular");
    let mut rng = fastrand::Rng::with_seed(60);
    let mut recs = Vec::new();
    let mut t = T0;
    for i in 0..180u16 {
        connection(&mut recs, t, 40000 + i, 120);
        let jitter = rng.i64(-2000..=2000);
        t = (t as i64 + 60 * S as i64 + jitter * 1_000_000) as u64;
    }
    let alarms = periodic_alarms(&dir, "regular.pcap", &recs);
    let opened = alarms
        .iter()
        .find(|a| a["event"]["action"] == "opened")
        .unwrap_or_else(|| panic!("no periodic_flow alarm: {alarms:#?}"));
    let last = alarms.last().expect("an event");
    for a in [opened, last] {
        let ev = &a["sensor"]["evidence"];
        println!("{} {ev}", a["event"]["action"]);
        assert_eq!(ev["kind"], "across_connections", "{a}");
        let period = ev["period_s"].as_f64().expect("period");
        assert!(
            (period - 60.0).abs() <= 3.0,
            "period {period} s is not within 5% of 60 s: {a}"
        );
        assert!(
            ev["jitter_s"].as_f64().is_some()
                && ev["ts_skew_score"].as_f64().is_some()
                && ev["size_mode_fraction"].as_f64().is_some(),
            "subscores in the evidence: {a}"
        );
    }
    assert_eq!(opened["destination"]["port"], 443);
}

#[test]
fn poisson_arrivals_with_random_sizes_raise_nothing() {
    let dir = TempDir::new("periodic-poisson");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut recs = Vec::new();
    let mut t = T0;
    for i in 0..180u16 {
        connection(&mut recs, t, 40000 + i, 40 + rng.usize(..1400));
        // Exponential interval with mean 60 s.
        let gap = -(1.0 - rng.f64()).ln() * 60.0;
        t += (gap.max(0.01) * S as f64) as u64;
    }
    let alarms = periodic_alarms(&dir, "poisson.pcap", &recs);
    assert!(alarms.is_empty(), "Poisson arrivals raised {alarms:#?}");
}

#[test]
fn a_fixed_size_request_every_10_s_in_one_session_raises_periodic_flow_in_flow() {
    let dir = TempDir::new("periodic-inflow");
    let mut recs = vec![
        packet(T0, true, 40000, 8545, TCP_SYN, &[]),
        packet(T0 + 1_000_000, false, 40000, 8545, TCP_SYN | TCP_ACK, &[]),
    ];
    let request = br#"{"id":1,"jsonrpc":"2.0","method":"eth_getWork","params":[]}"#;
    for i in 1..=120u64 {
        let t = T0 + i * 10 * S;
        recs.push(packet(t, true, 40000, 8545, TCP_ACK | TCP_PSH, request));
        recs.push(packet(
            t + 20_000_000,
            false,
            40000,
            8545,
            TCP_ACK | TCP_PSH,
            &[0x30; 180],
        ));
    }
    let alarms = periodic_alarms(&dir, "inflow.pcap", &recs);
    let a = alarms
        .first()
        .unwrap_or_else(|| panic!("no periodic_flow alarm"));
    let ev = &a["sensor"]["evidence"];
    println!("{} {ev}", a["event"]["action"]);
    assert_eq!(ev["kind"], "in_flow", "{a}");
    assert_eq!(ev["direction"], "client", "the request beat: {a}");
    let period = ev["period_s"].as_f64().expect("period");
    assert!((period - 10.0).abs() < 0.5, "period {period}: {a}");
    assert_eq!(ev["size_mode_fraction"].as_f64(), Some(1.0), "{a}");
}

/// The short flows of the real captures raise nothing; the one long flow (quiet-long-tcp.pcap,
/// 6806 s, a server sending its time every 30 s) is checked in cli.rs.
#[test]
fn the_real_captures_short_flows_raise_no_periodic_flow() {
    for name in ["stratum-getwork-gbt.pcap", "cryptonote-login-stratum.pcap"] {
        let cap = agent::repo_pcap(name);
        let run = agent::run(&["replay".as_ref(), "--no-progress".as_ref(), cap.as_os_str()]);
        assert!(run.success, "{}", run.stderr);
        let periodic: Vec<&str> = run
            .stdout
            .lines()
            .filter(|l| l.contains("\"periodic_flow\""))
            .collect();
        assert!(periodic.is_empty(), "{name}: {periodic:#?}");
    }
}
