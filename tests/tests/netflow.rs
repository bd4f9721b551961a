//! NetFlow/IPFIX through the same detectors: softflowd (Debian) reads a real capture and
//! exports NetFlow v9 and IPFIX over loopback to `sensor-agent collect`, which raises the
//! long and quiet-long alarms `sensor-agent replay` of the capture raises, naming the same
//! endpoints, with durations within one record interval, and says which telemetry it was.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, ChildStderr, Command, Stdio},
};

use sensor_tests::{
    agent::{self, TempDir},
    flowlogs::{self, opened},
};
use serde_json::Value;

const THRESHOLDS: [&str; 4] = [
    "--set",
    "detect.long_flow.after=1h",
    "--set",
    "detect.quiet_long_flow.after=1h",
];
/// The collector's record interval (its default `ingest.interval`).
const INTERVAL_NS: u64 = 300_000_000_000;

/// A started `sensor-agent collect` that stops itself after `--duration`; killed if dropped early.
struct Collector {
    child: Child,
    port: u16,
    /// The rest of its stderr, read at the end.
    stderr: BufReader<ChildStderr>,
}

impl Collector {
    /// Starts the collector on a free loopback port and waits until it says it listens.
    fn start(extra: &[&str]) -> Self {
        let mut child = agent::command()
            // It stops on its own well after the exporter is done (softflowd -r sends a small
            // capture at once): a stop that raced the last datagrams would test the race, not
            // the decoding.
            .args(["collect", "--listen", "127.0.0.1:0", "--duration", "4s"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sensor-agent collect");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
        let mut line = String::new();
        let port = loop {
            line.clear();
            let n = stderr.read_line(&mut line).expect("read collector stderr");
            assert!(n > 0, "the collector exited before listening");
            if let Some(addr) = line.trim().strip_prefix("collecting NetFlow/IPFIX on udp ") {
                let addr: std::net::SocketAddr = addr.parse().expect("listen address");
                break addr.port();
            }
        };
        Collector {
            child,
            port,
            stderr,
        }
    }

    /// Waits for it to stop and returns its alarms and stderr.
    fn finish(mut self) -> (Vec<Value>, String) {
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out).expect("collector stdout");
        }
        let mut err = String::new();
        self.stderr
            .read_to_string(&mut err)
            .expect("collector stderr");
        let status = self.child.wait().expect("wait for the collector");
        assert!(status.success(), "collector failed ({status}): {err}");
        let alarms = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alarm JSON ({e}): {l}")))
            .collect();
        (alarms, err)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn replay(capture: &Path) -> Vec<Value> {
    let mut args: Vec<std::ffi::OsString> = vec!["replay".into(), "--no-progress".into()];
    args.extend(THRESHOLDS.iter().map(|s| s.into()));
    args.push(capture.as_os_str().to_owned());
    let run = agent::run(&args);
    assert!(run.success, "replay failed: {}", run.stderr);
    run.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("alarm JSON"))
        .collect()
}

/// softflowd exporting `capture` in `version` (9 or 10) to the collector's port.
fn softflowd(capture: &Path, port: u16, version: &str, extra: &[&str]) {
    let out = Command::new("softflowd")
        .arg("-r")
        .arg(capture)
        .args(["-n", &format!("127.0.0.1:{port}"), "-v", version, "-a"])
        .args(["-t", "maxlife=300"])
        .args(extra)
        .output()
        .expect("softflowd is not installed (Debian package softflowd; cargo xtask deps)");
    assert!(
        out.status.success(),
        "softflowd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn softflowd_v9_and_ipfix_raise_the_captures_long_and_quiet_long_alarms() {
    let capture = agent::repo_pcap("quiet-long-tcp.pcap");
    let rules = ["long_flow", "quiet_long_flow"];
    let want_alarms = replay(&capture);
    let want = opened(&want_alarms, &rules);
    assert_eq!(want.len(), 2, "the capture's replay: {want_alarms:#?}");
    // softflowd -r expires flows only when its table is full (softflowd(8)), so maxlife alone
    // gives one record per direction; a one-flow table (-m 1) makes each direction's packets
    // expire the other's record: the session arrives as dozens of records.
    let runs: [(&str, &str, &[&str]); 3] = [
        ("9", "netflow-v9", &[]),
        ("10", "ipfix", &[]),
        ("9", "netflow-v9", &["-m", "1"]),
    ];
    for (version, name, extra) in runs {
        let collector = Collector::start(&THRESHOLDS);
        softflowd(&capture, collector.port, version, extra);
        let (alarms, stderr) = collector.finish();
        flowlogs::assert_like_replay(name, &alarms, &want_alarms, &rules, INTERVAL_NS, &stderr);
        assert!(
            stderr.contains(&format!("({name}, 300 s resolution)")),
            "{name}: {stderr}"
        );
        assert!(stderr.contains("payload rules: not applicable"), "{stderr}");
        let records: u64 = stderr
            .split("datagrams (")
            .nth(1)
            .and_then(|t| t.split("): ").nth(1))
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no record count in the summary: {stderr}"));
        assert!(
            stderr.contains("stitched into 1 flows"),
            "{name} {extra:?}: {stderr}"
        );
        if !extra.is_empty() {
            assert!(
                records > 10,
                "{name} {extra:?}: {records} records: {stderr}"
            );
        }
    }
}

#[test]
fn an_address_in_use_is_one_error_line() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    let run = agent::run(&["collect", "--listen", &addr, "--duration", "5s"]);
    assert!(!run.success, "{run:?}");
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains(&format!("cannot listen on UDP {addr}")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_collector_restarted_with_its_state_file_continues_its_alarms_instead_of_opening_them_again() {
    let capture = agent::repo_pcap("quiet-long-tcp.pcap");
    let rules = ["long_flow", "quiet_long_flow"];
    let dir = TempDir::new("collect-state");
    let state = dir.path().join("state.bin").display().to_string();
    let with_state: Vec<&str> = THRESHOLDS
        .iter()
        .copied()
        .chain(["--state", state.as_str()])
        .collect();
    let ids = |alarms: &[Value]| -> std::collections::BTreeSet<String> {
        alarms
            .iter()
            .filter(|a| rules.contains(&a["rule"]["id"].as_str().unwrap_or("")))
            .filter_map(|a| a["event"]["id"].as_str().map(str::to_string))
            .collect()
    };

    // The first collector opens both alarms and writes the state file at its stop.
    let c = Collector::start(&with_state);
    softflowd(&capture, c.port, "10", &[]);
    let (first, err) = c.finish();
    assert_eq!(
        opened(&first, &rules).len(),
        2,
        "first collector: {first:#?}\n{err}"
    );
    assert!(err.contains(&format!("state file {state}: saved")), "{err}");

    // Restarted with it, the same session's records (the exporter sends them again) continue
    // those alarms: nothing is opened again, and whatever it says is under the first ids.
    let c = Collector::start(&with_state);
    softflowd(&capture, c.port, "10", &[]);
    let (second, err) = c.finish();
    assert!(
        err.contains(&format!("state file {state}: restored")),
        "{err}"
    );
    println!(
        "first: {} events, ids {:?}; restarted: {} events, ids {:?}\n{}",
        first.len(),
        ids(&first),
        second.len(),
        ids(&second),
        err.lines()
            .filter(|l| l.contains("state file"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        opened(&second, &rules).is_empty(),
        "the restarted collector opened again: {second:#?}\n{err}"
    );
    assert!(
        ids(&second).is_subset(&ids(&first)),
        "events under new ids after the restart: {:?} vs {:?}",
        ids(&second),
        ids(&first)
    );

    // Control: without the state file the same records open both alarms again.
    let c = Collector::start(&THRESHOLDS);
    softflowd(&capture, c.port, "10", &[]);
    let (control, err) = c.finish();
    assert_eq!(
        opened(&control, &rules).len(),
        2,
        "control: {control:#?}\n{err}"
    );
}
