//! Roles from evidence, end to end through `sensor-agent replay`: a session joined mid-stream
//! names its client from what the payload says (a pool's `mining.notify` comes from the
//! server), else from its ports, else from its first packet; flow records and alarms say which
//! (`sensor.client_from`). The real miner capture is cut with `editcap` so the pool speaks
//! first; tshark reads the cut capture as the oracle for times.

use std::{path::Path, process::Command};

use sensor_tests::{
    agent::{self, TempDir},
    frames::{TcpConn, TCP_ACK, TCP_PSH},
    pcap::{self, Record},
};
use serde_json::Value;

const MINER: &str = "10.0.2.15";
const MINER_PORT: u64 = 53310;
const POOL: &str = "74.84.128.158";

fn wireshark_tool(name: &str) -> Command {
    let mut c = Command::new(name);
    // No reading of user or global preference files that could change dissection.
    c.env("WIRESHARK_CONFIG_DIR", "/nonexistent-sensor-tests");
    c
}

fn output(mut c: Command, what: &str) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} (install tshark): {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    agent::parse_flows(&text, &path.display().to_string())
}

/// Replays `capture` with `engine`; returns (flow records, alarms).
fn replay(dir: &TempDir, engine: &str, capture: &Path, sets: &[&str]) -> (Vec<Value>, Vec<Value>) {
    let flows = dir.path().join(format!("flows-{engine}.json"));
    let alarms = dir.path().join(format!("alarms-{engine}.json"));
    let mut args: Vec<std::ffi::OsString> = vec![
        "replay".into(),
        "--no-progress".into(),
        "--engine".into(),
        engine.into(),
        "--flows".into(),
        flows.clone().into(),
        "--alarms".into(),
        alarms.clone().into(),
    ];
    for s in sets {
        args.push("--set".into());
        args.push((*s).into());
    }
    args.push(capture.into());
    let run = agent::run(&args);
    assert!(run.success, "{engine} replay failed: {}", run.stderr);
    (json_lines(&flows), json_lines(&alarms))
}

#[test]
fn a_pool_speaking_first_is_the_server_by_payload() {
    let dir = TempDir::new("roles-cut");
    let cut = dir.path().join("pool-first.pcap");
    // Frame 144 is the pool's mining.notify on the long session 10.0.2.15:53310 ->
    // 74.84.128.158:3333 (its handshake and subscription are frames 126-143): from there on,
    // the first packet comes from the server.
    let mut c = wireshark_tool("editcap");
    c.arg("-r")
        .arg(agent::repo_pcap("stratum-getwork-gbt.pcap"))
        .arg(&cut)
        .arg("144-188");
    output(c, "editcap");
    let mut c = wireshark_tool("tshark");
    c.arg("-r").arg(&cut).args([
        "-T",
        "fields",
        "-e",
        "ip.src",
        "-e",
        "tcp.flags.syn",
        "-e",
        "frame.time_relative",
    ]);
    let oracle = output(c, "tshark");
    let lines: Vec<&str> = oracle.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with(POOL)),
        "the cut capture must start with the pool: {oracle}"
    );
    assert!(
        lines.iter().all(|l| l.split('\t').nth(1) == Some("0")),
        "no SYN left in the cut capture"
    );
    let span_ns = lines
        .last()
        .and_then(|l| l.split('\t').nth(2))
        .and_then(|t| t.parse::<f64>().ok())
        .map(|s| (s * 1e9).round() as u64)
        .expect("tshark: frame.time_relative");

    for engine in ["user", "kernel"] {
        let (flows, alarms) = replay(
            &dir,
            engine,
            &cut,
            // A long_flow alarm too, so a rule without payload evidence of its own is checked.
            &["detect.long_flow.after=60s"],
        );
        assert_eq!(flows.len(), 1, "{engine}: {flows:#?}");
        let f = &flows[0];
        assert_eq!(f["source"]["ip"], MINER, "{engine}: {f}");
        assert_eq!(f["source"]["port"], MINER_PORT, "{engine}: {f}");
        assert_eq!(f["destination"]["ip"], POOL, "{engine}: {f}");
        assert_eq!(f["destination"]["port"], 3333, "{engine}: {f}");
        assert_eq!(f["sensor"]["client_from"], "payload", "{engine}: {f}");
        // The move to the right conversation kept the start: the flow spans the capture.
        let duration = f["event"]["duration"].as_u64().unwrap_or(0);
        assert!(
            duration.abs_diff(span_ns) <= 1_000,
            "{engine}: duration {duration} ns, tshark says {span_ns} ns"
        );

        let rules: Vec<&str> = alarms
            .iter()
            .filter_map(|a| a["rule"]["id"].as_str())
            .collect();
        assert!(
            rules.contains(&"mining_protocol") && rules.contains(&"long_flow"),
            "{engine}: {rules:?}"
        );
        for a in &alarms {
            let what = format!("{engine} {}: {a}", a["rule"]["id"]);
            assert_eq!(a["source"]["ip"], MINER, "{what}");
            if a["rule"]["id"] == "mining_host" {
                // The host view names the miner as the host and the pool as its one pool.
                assert_eq!(a["host"]["ip"][0], MINER, "{what}");
                let pools = &a["sensor"]["evidence"]["pools"];
                assert_eq!(pools.as_array().map(Vec::len), Some(1), "{what}");
                assert_eq!(pools[0]["ip"], POOL, "{what}");
                continue;
            }
            assert_eq!(a["source"]["port"], MINER_PORT, "{what}");
            assert_eq!(a["destination"]["ip"], POOL, "{what}");
            assert_eq!(a["sensor"]["client_from"], "payload", "{what}");
            if a["rule"]["id"] == "mining_protocol" {
                assert_eq!(a["sensor"]["evidence"]["sent_by"], "server", "{what}");
                assert_eq!(
                    a["sensor"]["evidence"]["signature"], "mining.notify",
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn acks_first_on_a_service_port_are_oriented_by_the_port() {
    let dir = TempDir::new("roles-port");
    const T0: u64 = 1_700_000_000_000_000_000;
    const S: u64 = 1_000_000_000;
    // A session to a pool port joined mid-stream: the server's ACK comes first, then opaque
    // payload both ways (nothing a classifier knows, so only the ports can say).
    let pool = TcpConn::new([10, 1, 0, 5], 45000, [10, 1, 0, 9], 3333);
    // Both ports ephemeral: nothing but the first packet to go by.
    let p2p = TcpConn::new([10, 1, 0, 6], 50001, [10, 1, 0, 7], 40001);
    let opaque = [0x5au8, 0x17, 0x99, 0x01, 0xc3, 0x00, 0x42, 0x10];
    let mut records = Vec::new();
    for (i, (from_client, flags, payload)) in [
        (false, TCP_ACK, &[][..]),
        (true, TCP_ACK, &[][..]),
        (false, TCP_ACK | TCP_PSH, &opaque[..]),
        (true, TCP_ACK | TCP_PSH, &opaque[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let t = T0 + i as u64 * S;
        records.push(Record::new(t, pool.frame(from_client, flags, payload)));
        records.push(Record::new(
            t + 1000,
            p2p.frame(from_client, flags, payload),
        ));
    }
    let capture = dir.write(
        "acks-first.pcap",
        &pcap::pcap(pcap::LINKTYPE_ETHERNET, &records),
    );
    for engine in ["user", "kernel"] {
        let (flows, _) = replay(&dir, engine, &capture, &[]);
        let by_port = |port: u64| {
            flows
                .iter()
                .find(|f| f["source"]["port"] == port || f["destination"]["port"] == port)
                .unwrap_or_else(|| panic!("{engine}: no flow on port {port}: {flows:#?}"))
        };
        let f = by_port(3333);
        assert_eq!(
            (&f["source"]["ip"], &f["source"]["port"]),
            (&Value::from("10.1.0.5"), &Value::from(45000)),
            "{engine}: the ephemeral side is the client: {f}"
        );
        assert_eq!(f["destination"]["port"], 3333, "{engine}: {f}");
        assert_eq!(f["sensor"]["client_from"], "port", "{engine}: {f}");
        let f = by_port(40001);
        assert_eq!(f["source"]["ip"], "10.1.0.7", "{engine}: first sender: {f}");
        assert_eq!(f["sensor"]["client_from"], "first_packet", "{engine}: {f}");
    }
}
