//! The spool at its cap, end to end with a real rsyslog: with `when_full = "block"` nothing is
//! lost however small the spool; with `drop_newest` and the receiver away, the drops are
//! counted and, once delivery resumes, a `sensor_degraded` alarm says how many.

use std::{process::Stdio, time::Duration};

use sensor_tests::{
    agent::{self, TempDir},
    captures, pcap,
    rsyslog::{Rsyslog, TestPki},
    wait::wait_until,
};

const CONVERSATIONS: u16 = 100;
/// The alarms of the capture: one `mining_protocol` per conversation, and the `mining_host`
/// alarm of their one client.
const ALARMS: usize = CONVERSATIONS as usize + 1;

fn mining_capture(dir: &TempDir) -> std::path::PathBuf {
    dir.write(
        "mining.pcap",
        &pcap::pcap(
            pcap::LINKTYPE_ETHERNET,
            &captures::stratum_sessions(CONVERSATIONS),
        ),
    )
}

/// The spool's cap, small so that 100 alarms overflow it.
const MAX_BYTES: u64 = 65536;
/// More than one of these alarms takes in the spool (about 1 KiB of JSON plus the record
/// header): a full spool (one that refused a record) is within this of `MAX_BYTES`.
const ROOM_FOR_ONE_RECORD: u64 = 4096;

fn config(dir: &TempDir, port: u16, when_full: &str) -> std::path::PathBuf {
    let text = format!(
        "[spool]\ndir = \"{}\"\nmax_bytes = {MAX_BYTES}\nsegment_bytes = 16384\nwhen_full = \"{when_full}\"\ndrain_timeout = \"30s\"\n\n[[sinks]]\nkind = \"syslog\"\naddress = \"tcp://127.0.0.1:{port}\"\nformat = \"json\"\n",
        dir.path().join("spool").display()
    );
    dir.write("sensor.toml", text.as_bytes())
}

/// Total size of the spool's segment files (what `max_bytes` caps).
fn spool_bytes(dir: &TempDir) -> u64 {
    std::fs::read_dir(dir.path().join("spool"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs a replay of the mining capture against a receiver that only starts once the spool is
/// full; returns the agent's stderr and the receiver.
fn replay_with_late_receiver(dir: &TempDir, when_full: &str) -> (String, Rsyslog) {
    let pki = TestPki::create(dir.path()).unwrap_or_else(|e| panic!("sink test cannot run: {e}"));
    let mut rsyslog = Rsyslog::configure(dir.path(), &pki)
        .unwrap_or_else(|e| panic!("sink test cannot run: {e}"));
    let cap = mining_capture(dir);
    let cfg = config(dir, rsyslog.tcp_port, when_full);
    let child = agent::command()
        .args([
            "replay".as_ref(),
            "--no-progress".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            cap.as_os_str(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    // Full: the segments are within a record of MAX_BYTES and stopped growing between two
    // checks (the producer is blocked, or dropping), the capture's 100 alarms being far over
    // the cap. Only then does the receiver start.
    let mut last = u64::MAX;
    let full = wait_until(Duration::from_secs(30), "the spool to fill", || {
        let now = spool_bytes(dir);
        let stable = now == last;
        last = now;
        stable && now + ROOM_FOR_ONE_RECORD > MAX_BYTES
    });
    if let Err(e) = full {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("{e} ({last} bytes)");
    }
    rsyslog
        .resume()
        .unwrap_or_else(|e| panic!("sink test cannot run: {e}"));
    let out = child.wait_with_output().expect("agent output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (stderr, rsyslog)
}

#[test]
fn a_full_spool_that_blocks_loses_nothing() {
    let dir = TempDir::new("spool-block");
    let (stderr, rsyslog) = replay_with_late_receiver(&dir, "block");
    assert!(
        stderr.contains("appends waited for room"),
        "the spool was full and the producer waited: {stderr}"
    );
    assert!(!stderr.contains("dropped"), "{stderr}");
    let expected = ALARMS;
    let got = rsyslog.wait_for(expected, Duration::from_secs(20));
    assert_eq!(got.len(), expected, "every alarm arrives: {stderr}");
    let ids: std::collections::BTreeSet<String> = got
        .iter()
        .filter_map(|l| l.find("{\"@timestamp\"").map(|i| &l[i..]))
        .filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .filter_map(|v| v["event"]["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        ids.len(),
        ALARMS,
        "one alarm id per conversation, and the host's"
    );
}

#[test]
fn a_full_spool_that_drops_counts_and_reports_the_drops_once_delivery_resumes() {
    let dir = TempDir::new("spool-drop");
    let (stderr, rsyslog) = replay_with_late_receiver(&dir, "drop_newest");
    let dropped: usize = stderr
        .lines()
        .flat_map(|l| l.split(", "))
        .find_map(|part| {
            part.strip_suffix(" alarms dropped (spool full)")
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("the drops are reported: {stderr}"));
    assert!(dropped > 0);
    let got = rsyslog.wait_for(ALARMS - dropped + 1, Duration::from_secs(20));
    let degraded: Vec<&String> = got
        .iter()
        .filter(|l| l.contains("sensor_degraded"))
        .collect();
    assert_eq!(degraded.len(), 1, "one sensor_degraded alarm: {got:#?}");
    assert!(
        degraded[0].contains(&format!("\"dropped_alarms\":{dropped}")),
        "{}",
        degraded[0]
    );
    assert_eq!(
        got.len(),
        ALARMS - dropped + 1,
        "stored alarms + the degraded one: {stderr}"
    );
}
