//! The state file across restarts of `sensor-agent run`, on live traffic in network
//! namespaces: a damaged file is one line naming it and the problem, and the agent runs on;
//! an alarm opened before a restart is updated and closed after it under the same id, never
//! opened again; alarms a full spool dropped before a restart are reported by
//! `sensor_degraded` after it. The kernel maps are not kept across the restart here: the
//! restored conversation is re-joined by the fresh kernel entry of the same 5-tuple.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use sensor_tests::{
    agent::{agent_bin, TempDir},
    kernel::require_bpf,
    netns::NetnsPair,
    wait::wait_until,
};
use serde_json::Value;

/// One agent run: its pid in the pair and its stderr file.
struct Agent {
    pid: u32,
    log: PathBuf,
}

/// Starts `run` in namespace `ns` with `args`, its stderr in `log`; returns once it watches.
fn start(pair: &mut NetnsPair, ns: &str, args: &[String], log: PathBuf) -> Agent {
    let file = fs::File::create(&log).expect("agent log");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pid = pair
        .spawn_in(
            ns,
            &agent_bin().to_string_lossy(),
            &args,
            Stdio::null(),
            Stdio::from(file),
        )
        .unwrap_or_else(|e| panic!("state test cannot run: {e}"));
    wait_until(
        Duration::from_secs(30),
        "the agent to say \"watching\"",
        || fs::read_to_string(&log).is_ok_and(|t| t.contains("watching")),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&log).unwrap_or_default()));
    Agent { pid, log }
}

/// SIGTERM, then the agent's stderr; the agent must have exited cleanly.
fn stop(pair: &mut NetnsPair, agent: Agent) -> String {
    let status = pair.stop(agent.pid);
    let log = fs::read_to_string(&agent.log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent ended with {status:?}: {log}"
    );
    log
}

fn alarms(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn run_args(iface: &str, state: &Path, alarms: &Path, sets: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--iface".into(),
        iface.into(),
        "--egress".into(),
        "--alarms".into(),
        alarms.display().to_string(),
        "--set".into(),
        format!("state.path={}", state.display()),
    ];
    for s in sets {
        a.push("--set".into());
        a.push(s.to_string());
    }
    a
}

#[test]
fn kernel_a_damaged_state_file_is_one_line_and_the_agent_runs_on() {
    require_bpf();
    let dir = TempDir::new("state-bad");
    let mut pair =
        NetnsPair::create("stb").unwrap_or_else(|e| panic!("state test cannot run: {e}"));
    let ns = pair.a.clone();
    let iface = pair.veth_a.clone();
    let state = dir.path().join("state.bin");
    let out = dir.path().join("alarms.json");
    let args = run_args(&iface, &state, &out, &["sensor.poll_interval=200ms"]);
    let first = start(&mut pair, &ns, &args, dir.path().join("first.log"));
    let log = stop(&mut pair, first);
    assert!(
        log.contains(&format!("state file {}: not found", state.display())),
        "{log}"
    );
    assert!(
        log.contains(&format!("state file {}: saved", state.display())),
        "{log}"
    );
    let good = fs::read(&state).expect("the state file is written at shutdown");
    assert!(good.starts_with(b"SNSTATE\0"), "{good:?}");

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    let mut old = good.clone();
    old[8..12].copy_from_slice(&99u32.to_le_bytes());
    // Cut inside the payload: the header says how long the file must be.
    let cut = good.len() - 3;
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "truncated",
            good[..cut].to_vec(),
            format!("truncated ({cut} of {} bytes)", good.len()),
        ),
        ("flipped", flipped, "CRC mismatch".into()),
        (
            "old",
            old,
            format!(
                "version 99, this agent reads {}",
                sensor_agent::state::FORMAT_VERSION
            ),
        ),
        (
            "text",
            b"[sensor]\npoll_interval = \"1s\"\n".to_vec(),
            "not a sensor state file".into(),
        ),
    ];
    for (name, bytes, problem) in cases {
        fs::write(&state, &bytes).expect("write the damaged file");
        let agent = start(
            &mut pair,
            &ns,
            &args,
            dir.path().join(format!("{name}.log")),
        );
        let log = stop(&mut pair, agent);
        let about: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&problem) || l.contains("starting without saved state"))
            .collect();
        assert_eq!(about.len(), 1, "{name}: one line about the file: {log}");
        assert!(
            about[0].contains(&state.display().to_string()) && about[0].contains(&problem),
            "{name}: the line names the file and the problem: {}",
            about[0]
        );
        assert!(!log.contains("error"), "{name}: the agent ran on: {log}");
        // It ran, and replaced the damaged file with its own state at shutdown.
        assert!(log.contains("saved ("), "{name}: {log}");
        assert!(
            fs::read(&state).is_ok_and(|b| b.starts_with(b"SNSTATE\0")
                && b[8..12] == sensor_agent::state::FORMAT_VERSION.to_le_bytes()),
            "{name}: a good state file again"
        );
    }
    let again = start(&mut pair, &ns, &args, dir.path().join("again.log"));
    let log = stop(&mut pair, again);
    assert!(
        log.contains(&format!("state file {}: restored", state.display())),
        "{log}"
    );
}

const SESSION_PORT: u16 = 3333;

/// A long TCP session from namespace a to b: 16 bytes every 300 ms until `running` turns
/// false, then closed from both sides.
fn session(pair: &NetnsPair, running: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let server_addr = format!("{}:{SESSION_PORT}", pair.addr_b_str());
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let server = NetnsPair::in_ns(&pair.b, move || -> Result<(), String> {
        let l = TcpListener::bind(("0.0.0.0", SESSION_PORT)).map_err(|e| e.to_string())?;
        let _ = bound_tx.send(());
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        // Until the client closes: then this side closes too (FIN both ways).
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
        Ok(())
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the session server did not bind: {e}"));
    let client = NetnsPair::in_ns(&pair.a, move || -> Result<(), String> {
        let mut c = TcpStream::connect(&server_addr).map_err(|e| e.to_string())?;
        while running.load(Ordering::SeqCst) {
            c.write_all(b"keepalive 0001\r\n")
                .map_err(|e| e.to_string())?;
            // The session's own pace, not synchronisation.
            std::thread::sleep(Duration::from_millis(300));
        }
        c.shutdown(std::net::Shutdown::Both)
            .map_err(|e| e.to_string())
    });
    std::thread::spawn(move || {
        for (h, what) in [(client, "client"), (server, "server")] {
            match h.join() {
                Ok(Ok(Ok(()))) => {}
                other => panic!("session {what}: {other:?}"),
            }
        }
    })
}

#[test]
fn kernel_an_alarm_opened_before_a_restart_is_updated_and_closed_after_it_never_opened_again() {
    require_bpf();
    let dir = TempDir::new("state-alarm");
    let mut pair =
        NetnsPair::create("sta").unwrap_or_else(|e| panic!("state test cannot run: {e}"));
    let ns = pair.a.clone();
    let iface = pair.veth_a.clone();
    let state = dir.path().join("state.bin");
    let sets = [
        "sensor.poll_interval=200ms",
        "detect.long_flow.after=2s",
        // The next rung lies after the restart: the alarm's severity rises there.
        "detect.long_flow.ladder=[\"6s\", \"9s\"]",
        "flow.tcp_closed_grace=1s",
        "flow.conversation_gap=1s",
    ];
    let before_path = dir.path().join("before.json");
    let after_path = dir.path().join("after.json");
    let first = start(
        &mut pair,
        &ns,
        &run_args(&iface, &state, &before_path, &sets),
        dir.path().join("before.log"),
    );
    let running = Arc::new(AtomicBool::new(true));
    let traffic = session(&pair, running.clone());
    let is_session_long_flow =
        |a: &Value| a["rule"]["id"] == "long_flow" && a["destination"]["port"] == SESSION_PORT;
    wait_until(Duration::from_secs(30), "long_flow opened", || {
        alarms(&before_path).iter().any(is_session_long_flow)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            fs::read_to_string(&first.log).unwrap_or_default()
        )
    });
    let before_log = stop(&mut pair, first);
    let before = alarms(&before_path);
    let opened: BTreeSet<String> = before
        .iter()
        .filter(|a| a["event"]["action"] == "opened")
        .filter_map(|a| a["event"]["id"].as_str().map(str::to_string))
        .collect();
    let long = before
        .iter()
        .find(|a| is_session_long_flow(a))
        .expect("long_flow");
    assert_eq!(long["event"]["action"], "opened");
    let id = long["event"]["id"].as_str().expect("id").to_string();
    let start_time = long["event"]["start"].clone();

    // The session goes on while no agent runs; a new agent takes the state file.
    let second = start(
        &mut pair,
        &ns,
        &run_args(&iface, &state, &after_path, &sets),
        dir.path().join("after.log"),
    );
    // The state is restored once the engine exists, after the agent attached.
    let restored = format!("state file {}: restored", state.display());
    wait_until(Duration::from_secs(20), "the state to be restored", || {
        fs::read_to_string(&second.log)
            .unwrap_or_default()
            .contains(&restored)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}\nbefore:\n{before_log}",
            fs::read_to_string(&second.log).unwrap_or_default()
        )
    });
    let updated = |a: &Value| a["event"]["id"] == id.as_str() && a["event"]["action"] == "updated";
    wait_until(
        Duration::from_secs(30),
        "the alarm updated after the restart",
        || alarms(&after_path).iter().any(updated),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            fs::read_to_string(&second.log).unwrap_or_default()
        )
    });
    running.store(false, Ordering::SeqCst);
    traffic.join().expect("session");
    let closed = |a: &Value| a["event"]["id"] == id.as_str() && a["event"]["action"] == "closed";
    wait_until(
        Duration::from_secs(30),
        "the alarm closed after the session",
        || alarms(&after_path).iter().any(closed),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            fs::read_to_string(&second.log).unwrap_or_default()
        )
    });
    let after_log = stop(&mut pair, second);
    let after = alarms(&after_path);
    let mine: Vec<&Value> = after.iter().filter(|a| is_session_long_flow(a)).collect();
    assert!(
        mine.iter().all(|a| a["event"]["id"] == id.as_str()),
        "one id for the session's long_flow across the restart: {mine:#?}"
    );
    assert!(
        mine.iter().all(|a| a["event"]["start"] == start_time),
        "the conversation's start survives: {mine:#?}"
    );
    let reopened: Vec<&Value> = after
        .iter()
        .filter(|a| {
            a["event"]["action"] == "opened"
                && (opened.contains(a["event"]["id"].as_str().unwrap_or_default())
                    || is_session_long_flow(a))
        })
        .collect();
    assert!(
        reopened.is_empty(),
        "opened again after the restart: {reopened:#?}\n{after_log}"
    );
    let rose = mine
        .iter()
        .find(|a| a["event"]["action"] == "updated")
        .expect("updated");
    assert!(
        rose["event"]["severity"].as_u64() > long["event"]["severity"].as_u64(),
        "the ladder went on: {rose}"
    );
}

/// Receives syslog over TCP in the namespace it runs in and keeps every byte.
fn receiver(ns: &str, port: u16) -> Arc<Mutex<Vec<u8>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let _detached = NetnsPair::in_ns(ns, move || -> Result<(), String> {
        let l = TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        let _ = bound_tx.send(());
        // Connections come and go as the sink reconnects; each is read to its end.
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let mut r = BufReader::new(conn);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                keep.lock().expect("lock").extend_from_slice(&line);
                line.clear();
            }
        }
        Ok(())
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the receiver did not bind: {e}"));
    got
}

#[test]
fn kernel_alarms_dropped_before_a_restart_raise_sensor_degraded_after_it() {
    require_bpf();
    let dir = TempDir::new("state-drops");
    let mut pair =
        NetnsPair::create("std").unwrap_or_else(|e| panic!("state test cannot run: {e}"));
    let ns = pair.a.clone();
    let sink_port = 20514;
    // fsync "always": acknowledged records free their room at once, so the sensor_degraded
    // alarm finds room as soon as delivery resumes, without waiting for a new alarm's flush.
    let config = format!(
        "[sensor]\npoll_interval = \"200ms\"\n\n[state]\npath = \"{}\"\n\n[spool]\ndir = \"{}\"\nmax_bytes = 65536\nsegment_bytes = 16384\nwhen_full = \"drop_newest\"\nfsync = \"always\"\n\n[[sinks]]\nname = \"siem\"\nkind = \"syslog\"\naddress = \"tcp://127.0.0.1:{sink_port}\"\nframing = \"lf\"\nformat = \"json\"\n",
        dir.path().join("state.bin").display(),
        dir.path().join("spool").display(),
    );
    let cfg = dir.write("sensor.toml", config.as_bytes());
    let args: Vec<String> = vec![
        "run".into(),
        "--iface".into(),
        "lo".into(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    let first = start(&mut pair, &ns, &args, dir.path().join("first.log"));
    // A pool on 150 ports and a miner subscribing on each: 150 mining_protocol alarms, far
    // more than the spool holds while nothing receives them.
    let traffic = NetnsPair::in_ns(&ns, move || {
        for port in 22000..22150u16 {
            let Ok(l) = TcpListener::bind(("127.0.0.1", port)) else {
                continue;
            };
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = c.write_all(
                    b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"restart/1\"]}\n",
                );
                if let Ok((s, _)) = l.accept() {
                    let mut line = String::new();
                    let _ = BufReader::new(&s).read_line(&mut line);
                    let _ = (&s).write_all(b"{\"id\":1,\"result\":[[[\"mining.notify\",\"ae68\"]],\"08000002\",4],\"error\":null}\n");
                }
            }
        }
    });
    traffic
        .join()
        .expect("traffic")
        .expect("traffic in the namespace");
    wait_until(
        Duration::from_secs(30),
        "alarms dropped by the full spool",
        || fs::read_to_string(&first.log).is_ok_and(|t| t.matches("alarm dropped").count() >= 10),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            fs::read_to_string(&first.log).unwrap_or_default()
        )
    });
    let log = stop(&mut pair, first);
    let dropped: u64 = log
        .lines()
        .flat_map(|l| l.split(", "))
        .find_map(|part| {
            part.strip_suffix(" alarms dropped (spool full)")
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("the drops are counted: {log}"));
    assert!(
        !log.contains("sensor_degraded"),
        "nothing reported yet: {log}"
    );

    // Restarted with the receiver up: the spooled alarms go out, then sensor_degraded.
    let got = receiver(&ns, sink_port);
    let second = start(&mut pair, &ns, &args, dir.path().join("second.log"));
    let text = || String::from_utf8_lossy(&got.lock().expect("lock")).into_owned();
    wait_until(Duration::from_secs(30), "sensor_degraded delivered", || {
        text().contains("sensor_degraded")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}\nreceived: {} bytes",
            fs::read_to_string(&second.log).unwrap_or_default(),
            text().len()
        )
    });
    let log = stop(&mut pair, second);
    let degraded: Vec<Value> = text()
        .lines()
        .filter(|l| l.contains("sensor_degraded"))
        .filter_map(|l| l.find('{').and_then(|i| serde_json::from_str(&l[i..]).ok()))
        .collect();
    assert_eq!(
        degraded.len(),
        1,
        "one sensor_degraded: {degraded:#?}\n{log}"
    );
    assert_eq!(
        degraded[0]["sensor"]["evidence"]["dropped_alarms"].as_u64(),
        Some(dropped),
        "the drops before the restart: {}",
        degraded[0]
    );
}
