//! Kernel state across agent restarts, on live traffic in network namespaces.
//!
//! A quiet TCP session (a few bytes every second) runs between two namespaces while the agent,
//! attached to the client's veth, is stopped at 25 s of the session's age (SIGKILL, as an OOM
//! kill or a crash would; SIGTERM, as `systemctl restart` does) and started again. The maps
//! and links pinned in bpffs keep counting while it is down, so the restarted agent raises
//! `long_flow` at the threshold of the session's real age, with the session's first packet as
//! `event.start`, the packets sent while it was down in the totals, and the alarm ids the
//! first agent gave. A changed layout is never reused; `detach` and `--detach-on-exit` leave
//! nothing behind.
//!
//! The agents are started in the namespace's network only (not `ip netns exec`, which gives
//! each process a private /sys and so a private bpffs), as they run on a real host.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use sensor_tests::{
    agent::{agent_bin, TempDir},
    alarms::{now_ns, read_alarms, ts_ns},
    kernel::{require_bpf, PinRoot},
    netns::NetnsPair,
    session::{self, Speaker},
    wait::wait_until,
};
use serde_json::Value;

const PORT: u16 = 7444;
const THRESHOLD_S: u64 = 40;
const QUIET_AFTER_S: u64 = 10;
const RESTART_AT: Duration = Duration::from_secs(25);

fn events<'a>(alarms: &'a [Value], rule: &str, action: &str) -> Vec<&'a Value> {
    alarms
        .iter()
        .filter(|a| {
            a["rule"]["id"] == rule && (action.is_empty() || a["event"]["action"] == action)
        })
        .collect()
}

/// One agent run: its pid, log and alarm file.
struct AgentRun {
    pid: u32,
    log: PathBuf,
    alarms: PathBuf,
}

impl AgentRun {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Scenario {
    pair: NetnsPair,
    root: PinRoot,
    dir: TempDir,
    runs: u32,
}

impl Scenario {
    fn new(tag: &str) -> Self {
        require_bpf();
        let pair = NetnsPair::create(tag).unwrap_or_else(|e| panic!("test cannot run: {e}"));
        Scenario {
            pair,
            root: PinRoot::new(tag),
            dir: TempDir::new(tag),
            runs: 0,
        }
    }

    /// Starts `sensor-agent run` on the client's veth with the test's thresholds and waits
    /// until it says it is watching.
    fn start_agent(&mut self, extra: &[&str]) -> AgentRun {
        self.runs += 1;
        let log = self.dir.path().join(format!("agent{}.log", self.runs));
        let alarms = self.dir.path().join(format!("alarms{}.json", self.runs));
        let mut args: Vec<String> = [
            "run",
            "--iface",
            &self.pair.veth_a,
            "--egress",
            "--alarms",
            &alarms.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let sets = [
            format!("sensor.pin_path={}", self.root.path().display()),
            "sensor.poll_interval=1s".into(),
            format!("detect.long_flow.after={THRESHOLD_S}s"),
            format!("detect.quiet_long_flow.after={QUIET_AFTER_S}s"),
            "detect.quiet_long_flow.max_bytes_per_sec=100000".into(),
            format!("state.path={}", self.dir.path().join("state.bin").display()),
        ];
        for s in sets {
            args.push("--set".into());
            args.push(s);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let file = fs::File::create(&log).expect("agent log");
        let a = self.pair.a.clone();
        let pid = self
            .pair
            .spawn_net_only(&a, &agent_bin(), &args, Stdio::null(), Stdio::from(file))
            .unwrap_or_else(|e| panic!("{e}"));
        let run = AgentRun { pid, log, alarms };
        wait_until(Duration::from_secs(30), "the agent to attach", || {
            run.log().contains("watching")
        })
        .unwrap_or_else(|e| panic!("{e}: {}", run.log()));
        run
    }
}

/// Sleeps until `at` (wall ns): scenario timing (the session's age), not synchronisation.
fn sleep_until_wall(at: u64) {
    let now = now_ns();
    if at > now {
        std::thread::sleep(Duration::from_nanos(at - now));
    }
}

fn restart_keeps_the_session(signal: i32) {
    let mut sc = Scenario::new(if signal == libc::SIGKILL { "rk" } else { "rt" });
    let first = sc.start_agent(&[]);
    let session_len = Duration::from_secs(THRESHOLD_S + 8);
    let session::Session {
        speaker: client,
        connected: (conn_before, conn_after),
        ..
    } = session::start(
        &sc.pair,
        PORT,
        Speaker::Client,
        Duration::from_secs(1),
        session_len,
    );

    sleep_until_wall(conn_before + RESTART_AT.as_nanos() as u64);
    let status = sc.pair.signal(first.pid, signal).expect("first agent ran");
    let first_log = first.log();
    if signal == libc::SIGTERM {
        assert!(
            status.success(),
            "SIGTERM: agent exited {status}: {first_log}"
        );
        assert!(
            first_log.contains("stays attached"),
            "the stopped agent says the datapath stays: {first_log}"
        );
    }
    let pinned = sc.root.pinned();
    assert!(
        pinned
            .iter()
            .any(|p| p.ends_with(format!("link_xdp_{}", sc.pair.veth_a))),
        "the XDP link is pinned while the agent is down: {pinned:?}"
    );
    // The agent stays down for a few keepalives: the kernel must count them.
    std::thread::sleep(Duration::from_secs(3));
    let second = sc.start_agent(&[]);
    let second_log = second.log();
    assert!(
        second_log.contains("resumed XDP"),
        "the restarted agent takes over the pinned link: {second_log}"
    );
    let long_wait = Duration::from_secs(THRESHOLD_S + 20);
    wait_until(long_wait, "long_flow after the restart", || {
        !events(&read_alarms(&second.alarms), "long_flow", "opened").is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}: {}", second.log()));
    sc.pair.stop(second.pid);
    let sends = client
        .join()
        .expect("client thread")
        .and_then(|r| r)
        .expect("client");

    let before = read_alarms(&first.alarms);
    let after = read_alarms(&second.alarms);
    let long = events(&after, "long_flow", "opened")[0];
    println!("long_flow after the restart: {long}");
    let quiet_before = events(&before, "quiet_long_flow", "opened");
    assert_eq!(
        quiet_before.len(),
        1,
        "the first agent raised quiet_long_flow at {QUIET_AFTER_S} s: {before:?}"
    );
    let quiet_before = quiet_before[0];

    // event.start is the session's first packet, as the first agent saw it: the same
    // conversation start, so the same ids.
    let start = long["event"]["start"].as_str().expect("event.start");
    assert_eq!(
        start, quiet_before["event"]["start"],
        "the restarted agent dates the session as the first one did"
    );
    let start_ns = ts_ns(start);
    let slack = 20_000_000; // a jiffy of resolution, the anchor's own jiffy, and jitter
    assert!(
        start_ns + slack >= conn_before && start_ns <= conn_after + slack,
        "event.start {start} is not the session's first packet (connect between {conn_before} and {conn_after} ns)"
    );
    // Raised at the threshold of the session's age, not of the agent's.
    let raised = ts_ns(long["@timestamp"].as_str().expect("@timestamp"));
    let age_s = (raised - start_ns) as f64 / 1e9;
    assert!(
        age_s >= THRESHOLD_S as f64 && age_s <= THRESHOLD_S as f64 + 3.0,
        "long_flow raised at {age_s:.1} s of the session's age, threshold {THRESHOLD_S} s"
    );
    // The packets sent while no agent ran are in the totals.
    let counted = long["source"]["packets"].as_u64().expect("source.packets");
    let sent_before_alarm = sends.iter().filter(|t| **t + 200_000_000 < raised).count() as u64;
    assert!(
        counted >= sent_before_alarm + 2,
        "client packets {counted}: fewer than the SYN, the handshake ACK and the {sent_before_alarm} keepalives sent before the alarm"
    );
    // Every event of the quiet alarm after the restart carries the id the first agent gave it.
    let quiet_after = events(&after, "quiet_long_flow", "");
    for q in &quiet_after {
        assert_eq!(
            q["event"]["id"], quiet_before["event"]["id"],
            "quiet_long_flow has another id after the restart: {q}"
        );
    }
    if signal == libc::SIGKILL {
        // Killed before any checkpoint held the alarm: only the kernel's state survived, and
        // the alarm is raised again under the same id (a SIEM sees one alarm).
        assert!(
            !quiet_after.is_empty(),
            "quiet_long_flow raised again after the kill: {after:?}"
        );
    } else {
        // Stopped cleanly: the state file written at shutdown holds the open alarm, which is
        // never opened again.
        assert!(
            events(&after, "quiet_long_flow", "opened").is_empty(),
            "quiet_long_flow opened again after a clean restart: {after:?}"
        );
        let second_log = second.log();
        assert!(
            second_log.contains("state file") && second_log.contains("restored"),
            "the restarted agent says what it restored: {second_log}"
        );
    }
}

#[test]
fn kernel_restart_after_sigkill_keeps_the_long_flow() {
    restart_keeps_the_session(libc::SIGKILL);
}

#[test]
fn kernel_restart_after_sigterm_keeps_the_long_flow() {
    restart_keeps_the_session(libc::SIGTERM);
}

fn pinned_map_id(path: &Path) -> (u32, u32) {
    let info = aya::maps::MapInfo::from_pin(path)
        .unwrap_or_else(|e| panic!("pinned map {}: {e}", path.display()));
    (info.id(), info.max_entries())
}

#[test]
fn kernel_layout_change_never_reuses_a_stale_map() {
    let mut sc = Scenario::new("rl");
    let first = sc.start_agent(&["--set", "sensor.max_kernel_flows=70000"]);
    let client = session::start(
        &sc.pair,
        PORT,
        Speaker::Client,
        Duration::from_secs(1),
        Duration::from_secs(12),
    )
    .speaker;
    std::thread::sleep(Duration::from_secs(3));
    let status = sc.pair.stop(first.pid).expect("first agent ran");
    assert!(status.success(), "first agent: {}", first.log());
    let old_flows: Vec<PathBuf> = sc
        .root
        .pinned()
        .into_iter()
        .filter(|p| p.ends_with("FLOWS"))
        .collect();
    assert_eq!(old_flows.len(), 1, "{:?}", sc.root.pinned());
    let (old_id, old_max) = pinned_map_id(&old_flows[0]);
    assert_eq!(old_max, 70000);

    let second = sc.start_agent(&["--set", "sensor.max_kernel_flows=90000"]);
    // A few keepalives through the fresh maps.
    std::thread::sleep(Duration::from_secs(3));
    let status = sc.pair.stop(second.pid).expect("second agent ran");
    let log = second.log();
    assert!(
        status.success(),
        "the agent runs on after a layout change: {log}"
    );
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("another layout"))
        .collect();
    assert_eq!(said.len(), 1, "one line says the layout changed: {log}");
    assert!(!log.contains("resumed"), "stale maps were resumed: {log}");
    assert!(!old_flows[0].exists(), "the stale pins are removed");
    let new_flows: Vec<PathBuf> = sc
        .root
        .pinned()
        .into_iter()
        .filter(|p| p.ends_with("FLOWS"))
        .collect();
    assert_eq!(new_flows.len(), 1, "{:?}", sc.root.pinned());
    let (new_id, new_max) = pinned_map_id(&new_flows[0]);
    assert_eq!(new_max, 90000, "the new map has the new size");
    assert_ne!(new_id, old_id, "a fresh map, not the stale one");
    let _ = client.join();
}

/// `ip -n NS link show DEV`: whether an XDP program is attached.
fn xdp_attached(ns: &str, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "link", "show", "dev", dev])
        .output()
        .expect("ip link");
    assert!(out.status.success(), "ip link show {dev} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("xdp")
}

/// Ids of the maps pinned under the root.
fn pinned_map_ids(root: &PinRoot) -> Vec<u32> {
    root.pinned()
        .iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_uppercase()))
        })
        .map(|p| pinned_map_id(p).0)
        .collect()
}

/// After a detach: no pin, no XDP on the interface, and none of the datapath's maps still
/// loaded (a map lives as long as any program or link that uses it).
fn assert_nothing_left(sc: &Scenario, map_ids: &[u32]) {
    assert_eq!(sc.root.pinned(), Vec::<PathBuf>::new(), "pins left behind");
    assert!(
        !xdp_attached(&sc.pair.a, &sc.pair.veth_a),
        "XDP still attached to {}",
        sc.pair.veth_a
    );
    wait_until(
        Duration::from_secs(10),
        "the kernel to free the maps",
        || {
            aya::maps::loaded_maps()
                .flatten()
                .all(|m| !map_ids.contains(&m.id()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: a program or link still holds the datapath's maps"));
}

#[test]
fn kernel_detach_leaves_nothing_behind() {
    let mut sc = Scenario::new("rd");
    let first = sc.start_agent(&[]);
    let status = sc.pair.stop(first.pid).expect("agent ran");
    assert!(status.success(), "{}", first.log());
    assert!(
        xdp_attached(&sc.pair.a, &sc.pair.veth_a),
        "XDP stays after SIGTERM"
    );
    let veth = sc.pair.veth_a.clone();
    let names: Vec<String> = sc
        .root
        .pinned()
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    for want in [
        format!("link_xdp_{veth}"),
        format!("link_tc_{veth}"),
        "prog_sensor_xdp".into(),
        "prog_sensor_tc_egress".into(),
        "FLOWS".into(),
        "CLOCK".into(),
    ] {
        assert!(names.contains(&want), "{want} is pinned: {names:?}");
    }
    let ids = pinned_map_ids(&sc.root);
    let out = Command::new(agent_bin())
        .args(["detach", "--iface", &veth, "--set"])
        .arg(format!("sensor.pin_path={}", sc.root.path().display()))
        .output()
        .expect("run detach");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "detach failed: {stderr}");
    assert!(stderr.contains("detached"), "{stderr}");
    assert_nothing_left(&sc, &ids);
}

#[test]
fn kernel_detach_on_exit_leaves_nothing_behind() {
    let mut sc = Scenario::new("rx");
    let first = sc.start_agent(&["--detach-on-exit"]);
    let ids = pinned_map_ids(&sc.root);
    assert!(!ids.is_empty(), "maps are pinned while it runs");
    let status = sc.pair.stop(first.pid).expect("agent ran");
    assert!(status.success(), "{}", first.log());
    assert_nothing_left(&sc, &ids);
}
