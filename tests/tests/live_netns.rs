//! End to end on live traffic: the sensor attached (XDP + TC egress) in a network namespace,
//! real sockets talking to another namespace. The scripted stratum session must raise
//! mining_protocol (its first payload bytes reach the agent through the kernel's ring buffer)
//! and quiet_long_flow within one poll of crossing its threshold, periodic_flow from the
//! kernel's message trace of the watched session (its keepalives on a fixed period), the bulk
//! transfer nothing;
//! the same traffic captured with tcpdump and replayed must raise the same alarms.

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use sensor_agent::source::{capture::CaptureReader, packet::parse_frame};
use sensor_common::{ipv4_mapped, FlowKey};
use sensor_tests::{
    agent::{agent_bin, TempDir},
    kernel::require_bpf,
    lab::{self, agent_sets, LabConfig, BULK_PORT, QUIET_PORT},
    netns::NetnsPair,
};
use serde_json::Value;

fn opened(alarms: &[Value]) -> BTreeSet<(String, String, String, u64)> {
    alarms
        .iter()
        .filter(|a| a["event"]["action"] == "opened")
        .map(|a| {
            (
                a["rule"]["id"].as_str().unwrap_or_default().to_string(),
                a["source"]["ip"].as_str().unwrap_or_default().to_string(),
                a["destination"]["ip"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                a["destination"]["port"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn ts_ns(rfc3339: &str) -> u64 {
    let t =
        humantime::parse_rfc3339(rfc3339).unwrap_or_else(|e| panic!("timestamp {rfc3339:?}: {e}"));
    t.duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_nanos() as u64
}

/// Capture times of every packet of one flow.
fn packet_times(capture: &Path, key: &FlowKey) -> Vec<u64> {
    let mut r = CaptureReader::open(capture).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    while let Some(f) = r.next_frame().unwrap_or_else(|e| panic!("{e}")) {
        if parse_frame(&f.data).is_ok_and(|p| p.key == *key) {
            out.push(f.ts_ns);
        }
    }
    out
}

#[test]
fn kernel_live_quiet_session_alarms_within_one_poll_and_replay_agrees() {
    require_bpf();
    let agent = agent_bin();
    let dir = TempDir::new("e2e");
    let capture = dir.path().join("lab.pcap");
    let cfg = LabConfig {
        capture: Some(capture.clone()),
        ..LabConfig::default()
    };
    let outcome = {
        let mut pair =
            NetnsPair::create("e2e").unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
        lab::run(&mut pair, &agent, dir.path(), &cfg)
            .unwrap_or_else(|e| panic!("lab run failed: {e}"))
    };
    let live = opened(&outcome.alarms);
    println!("live alarms: {live:?}\nagent log:\n{}", outcome.agent_log);
    let quiet = (
        String::from("quiet_long_flow"),
        outcome.client_addr.clone(),
        outcome.server_addr.clone(),
        QUIET_PORT as u64,
    );
    assert!(
        live.contains(&quiet),
        "the quiet session raised no quiet_long_flow: {live:?}"
    );
    assert!(
        live.iter().all(|(_, _, _, port)| *port != BULK_PORT as u64),
        "the bulk transfer raised an alarm: {live:?}"
    );

    // Within one poll: the alarm comes at the first poll after the packet that took the
    // observed duration past the threshold.
    let alarm = outcome
        .alarms
        .iter()
        .find(|a| {
            a["rule"]["id"] == "quiet_long_flow"
                && a["event"]["action"] == "opened"
                && a["destination"]["port"] == QUIET_PORT
        })
        .expect("quiet alarm");
    let client_port = alarm["source"]["port"].as_u64().expect("client port") as u16;
    let octets = |s: &str| -> [u8; 4] {
        let v: Vec<u8> = s.split('.').map(|p| p.parse().expect("octet")).collect();
        [v[0], v[1], v[2], v[3]]
    };
    let (key, _) = FlowKey::canonical(
        &ipv4_mapped(octets(&outcome.client_addr)),
        client_port,
        &ipv4_mapped(octets(&outcome.server_addr)),
        QUIET_PORT,
        6,
    );
    let times = packet_times(&capture, &key);
    assert!(
        times.len() > 10,
        "the capture holds the quiet session ({} packets)",
        times.len()
    );
    let threshold = cfg.threshold.as_nanos() as u64;
    let crossing = *times
        .iter()
        .find(|t| **t >= times[0] + threshold)
        .expect("the session outlived the threshold");
    let raised = ts_ns(alarm["@timestamp"].as_str().expect("@timestamp"));
    let poll = cfg.poll.as_nanos() as u64;
    let late_ms = (raised as i64 - crossing as i64) / 1_000_000;
    println!("threshold crossed by the packet at +{} ms; alarm raised {late_ms} ms after it (poll {} ms)", (crossing - times[0]) / 1_000_000, poll / 1_000_000);
    assert!(
        raised + 10_000_000 >= crossing,
        "alarm raised {late_ms} ms before the threshold was crossed"
    );
    assert!(
        raised <= crossing + poll + Duration::from_millis(300).as_nanos() as u64,
        "alarm raised {late_ms} ms after the crossing: more than one poll"
    );
    let duration = alarm["event"]["duration"].as_u64().expect("duration");
    assert!(
        duration >= threshold,
        "alarm duration {duration} ns is below the threshold"
    );

    // The same traffic, replayed from the capture with the same thresholds.
    let mut cmd = Command::new(&agent);
    cmd.arg("replay").arg("--no-progress");
    for s in agent_sets(&cfg) {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.arg(&capture).output().expect("run replay");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("alarm JSON"))
        .collect();
    // Live, the quiet session's shares were timed by the kernel's message trace (the flow is
    // watched from `watch_after`); the replay times the capture's packets of the same watched
    // flow. Both must see the keepalive period.
    for (source, alarms) in [("live", &outcome.alarms), ("replay", &replayed)] {
        let p = alarms
            .iter()
            .find(|a| {
                a["rule"]["id"] == "periodic_flow"
                    && a["event"]["action"] == "opened"
                    && a["destination"]["port"] == QUIET_PORT
            })
            .unwrap_or_else(|| {
                panic!(
                    "{source}: the shares every {:?} raised no periodic_flow",
                    cfg.keepalive
                )
            });
        let ev = &p["sensor"]["evidence"];
        let period = ev["period_s"].as_f64().expect("period");
        let want = cfg.keepalive.as_secs_f64();
        println!("{source}: periodic_flow {ev}");
        assert_eq!(ev["kind"], "in_flow", "{source}: {p}");
        assert!(
            (period - want).abs() <= want * 0.05,
            "{source}: period {period} s, keepalive {want} s"
        );
    }
    assert_eq!(
        opened(&replayed),
        live,
        "replayed alarms differ from live ones"
    );
}
