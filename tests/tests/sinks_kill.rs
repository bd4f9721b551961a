//! The agent killed with SIGKILL while it delivers (the receiver is down, alarms sit in the
//! spool) and started again: every alarm produced before the kill reaches the receiver.

use std::{collections::BTreeSet, process::Stdio, time::Duration};

use sensor_tests::{
    agent::{self, TempDir},
    captures, pcap,
    rsyslog::{Rsyslog, TestPki},
    wait::wait_until,
};

/// Stratum sessions in the capture, all from one client.
const SESSIONS: u16 = 100;
/// Its alarms: one `mining_protocol` per session and the `mining_host` of the client.
const ALARMS: usize = SESSIONS as usize + 1;

fn ids(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l.find("{\"@timestamp\"").map(|i| &l[i..]))
        .filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .filter_map(|v| v["event"]["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn every_alarm_spooled_before_a_sigkill_is_delivered_after_the_restart() {
    let dir = TempDir::new("sinks-kill");
    let pki = TestPki::create(dir.path()).unwrap_or_else(|e| panic!("sink test cannot run: {e}"));
    let mut rsyslog = Rsyslog::configure(dir.path(), &pki)
        .unwrap_or_else(|e| panic!("sink test cannot run: {e}"));
    let produced = dir.path().join("produced.json");
    let config = format!(
        "[spool]\ndir = \"{}\"\ndrain_timeout = \"60s\"\n\n[[sinks]]\nkind = \"syslog\"\naddress = \"tcp://127.0.0.1:{}\"\nformat = \"json\"\n\n[[sinks]]\nkind = \"file\"\npath = \"{}\"\nformat = \"json\"\n",
        dir.path().join("spool").display(),
        rsyslog.tcp_port,
        produced.display()
    );
    let cfg = dir.write("sensor.toml", config.as_bytes());
    let cap = dir.write(
        "mining.pcap",
        &pcap::pcap(
            pcap::LINKTYPE_ETHERNET,
            &captures::stratum_sessions(SESSIONS),
        ),
    );
    let mut child = agent::command()
        .args([
            "replay".as_ref(),
            "--no-progress".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
            cap.as_os_str(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    // The file sink shows what was produced; the syslog sink keeps retrying a dead receiver.
    // The file sink takes its records from the spool, so all the capture's lines there mean
    // all its alarms spooled: nothing more to wait for before the kill.
    let spooled = wait_until(
        Duration::from_secs(30),
        "every alarm in the file sink",
        || std::fs::read_to_string(&produced).map_or(0, |t| t.lines().count()) >= ALARMS,
    );
    if let Err(e) = spooled {
        // Do not leave the agent running behind a failed test.
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent did not produce its alarms: {e}");
    }
    // SAFETY: kill on the pid of the child we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().expect("reap the agent");
    assert!(!status.success(), "the agent was killed");
    let before: Vec<String> = std::fs::read_to_string(&produced)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let produced_ids = ids(&before);
    assert_eq!(produced_ids.len(), ALARMS);
    assert!(
        rsyslog.messages().is_empty(),
        "nothing could be delivered before the kill"
    );

    rsyslog
        .resume()
        .unwrap_or_else(|e| panic!("sink test cannot run: {e}"));
    let empty = dir.write("empty.pcap", &pcap::pcap(pcap::LINKTYPE_ETHERNET, &[]));
    let run = agent::run(&[
        "replay".as_ref(),
        "--no-progress".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        empty.as_os_str(),
    ]);
    assert!(run.success, "{}", run.stderr);
    let got = rsyslog.wait_for(ALARMS, Duration::from_secs(20));
    let delivered = ids(&got);
    let missing: Vec<&String> = produced_ids.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "alarms lost across the SIGKILL: {missing:?}\n{}",
        run.stderr
    );
}
