//! The lab: the sensor watching real traffic between two network namespaces.
//!
//! Namespace `a` is the "client host" where the sensor runs (XDP on its veth for what it
//! receives, TC egress for what it sends); namespace `b` is the "server". Three kinds of
//! traffic: a scripted stratum miner and pool (subscribe, authorize, a job, then a small share
//! submission on a fixed period: what a quiet pool session looks like), a short bulk transfer,
//! and a UDP request/response exchange. Used by the end-to-end test and by `cargo xtask lab`.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{netns::NetnsPair, wait::wait_until};

pub const QUIET_PORT: u16 = 3333;
pub const BULK_PORT: u16 = 5001;
pub const UDP_PORT: u16 = 5353;

#[derive(Clone, Debug)]
pub struct LabConfig {
    /// How long the quiet session lasts.
    pub quiet_for: Duration,
    /// Keepalive period of the quiet session.
    pub keepalive: Duration,
    /// Demo threshold for long_flow and quiet_long_flow.
    pub threshold: Duration,
    /// Demo `detect.watch.after`: from then on the kernel traces the quiet session's messages
    /// (its keepalives on their fixed period raise periodic_flow).
    pub watch_after: Duration,
    /// The agent's poll interval.
    pub poll: Duration,
    /// Bytes of the bulk transfer.
    pub bulk_bytes: usize,
    /// Capture the traffic with tcpdump (inside namespace a) to this file.
    pub capture: Option<PathBuf>,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            quiet_for: Duration::from_secs(30),
            // Slow enough to stay under quiet_long_flow's 200 B/s, and not a divisor of
            // `threshold`: a share sent exactly at the threshold would be
            // measured a jiffy short of it, and alarm one keepalive later than the test allows.
            keepalive: Duration::from_millis(2500),
            threshold: Duration::from_secs(16),
            watch_after: Duration::from_secs(2),
            poll: Duration::from_secs(1),
            bulk_bytes: 20 << 20,
            capture: None,
        }
    }
}

/// What a lab run produced.
pub struct LabOutcome {
    pub alarms: Vec<Value>,
    /// The agent's stderr (status and summary lines).
    pub agent_log: String,
    pub client_addr: String,
    pub server_addr: String,
}

/// The `--set` arguments that give the agent the lab's demo thresholds.
pub fn agent_sets(cfg: &LabConfig) -> Vec<String> {
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    vec![
        format!("sensor.poll_interval={}", secs(cfg.poll)),
        format!("detect.long_flow.after={}", secs(cfg.threshold)),
        format!("detect.quiet_long_flow.after={}", secs(cfg.threshold)),
        format!("detect.watch.after={}", secs(cfg.watch_after)),
    ]
}

fn wait_for(path: &Path, needle: &str, timeout: Duration) -> Result<(), String> {
    let what = format!("{} to say {needle:?}", path.display());
    wait_until(timeout, &what, || {
        fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
    })
    .map_err(|e| format!("{e}: {}", fs::read_to_string(path).unwrap_or_default()))
}

/// Runs the scenario with the agent binary `agent` in `pair`, writing scratch files to `dir`.
pub fn run(
    pair: &mut NetnsPair,
    agent: &Path,
    dir: &Path,
    cfg: &LabConfig,
) -> Result<LabOutcome, String> {
    let alarms_path = dir.join("alarms.json");
    let agent_log = dir.join("agent.log");
    let tcpdump_log = dir.join("tcpdump.log");
    let mut tcpdump = None;
    if let Some(capture) = &cfg.capture {
        let log = fs::File::create(&tcpdump_log).map_err(|e| e.to_string())?;
        let capture = capture.to_string_lossy().into_owned();
        let veth = pair.veth_a.clone();
        let a = pair.a.clone();
        tcpdump = Some(pair.spawn_in(
            &a,
            "tcpdump",
            &["-i", &veth, "-U", "-s", "0", "-n", "-w", &capture],
            Stdio::null(),
            Stdio::from(log),
        )?);
        wait_for(&tcpdump_log, "listening on", Duration::from_secs(10))?;
    }
    let log = fs::File::create(&agent_log).map_err(|e| e.to_string())?;
    let mut args: Vec<String> = vec![
        "run".into(),
        "--iface".into(),
        pair.veth_a.clone(),
        "--egress".into(),
        "--alarms".into(),
        alarms_path.to_string_lossy().into_owned(),
        // The test's own state file: never /var/lib, never another run's.
        "--set".into(),
        format!("state.path={}", dir.join("state.bin").display()),
    ];
    for s in agent_sets(cfg) {
        args.push("--set".into());
        args.push(s);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = pair.a.clone();
    let agent_pid = pair.spawn_in(
        &a,
        &agent.to_string_lossy(),
        &args,
        Stdio::null(),
        Stdio::from(log),
    )?;
    wait_for(&agent_log, "watching", Duration::from_secs(20))?;

    let server_ip = pair.addr_b_str();
    // The servers say when their sockets are bound; the clients start only then.
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let servers = NetnsPair::in_ns(&pair.b, move || serve(cfg_timeout(), bound_tx));
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|e| format!("the lab servers did not bind their ports: {e}"))?;
    let quiet_target: SocketAddr = format!("{server_ip}:{QUIET_PORT}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    // Bulk and UDP go to another address of the server namespace: "another host", so the
    // pool's label (cached per pair of hosts) does not apply to them.
    let other_ip = pair.alt_b_str();
    let bulk_target: SocketAddr = format!("{other_ip}:{BULK_PORT}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let udp_target: SocketAddr = format!("{other_ip}:{UDP_PORT}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let (quiet_for, keepalive, bulk_bytes) = (cfg.quiet_for, cfg.keepalive, cfg.bulk_bytes);
    let quiet = NetnsPair::in_ns(&pair.a, move || {
        quiet_client(quiet_target, quiet_for, keepalive)
    });
    let others = NetnsPair::in_ns(&pair.a, move || -> Result<(), String> {
        // Scenario timing, not synchronisation: the bulk transfer and the UDP exchange happen
        // a second into the quiet session, as other traffic of the same host would.
        std::thread::sleep(Duration::from_secs(1));
        bulk_client(bulk_target, bulk_bytes)?;
        udp_client(udp_target)
    });
    let joined = |h: std::thread::JoinHandle<Result<Result<(), String>, String>>,
                  what: &str|
     -> Result<(), String> {
        h.join()
            .map_err(|_| format!("{what} thread panicked"))?
            .and_then(|r| r)
            .map_err(|e| format!("{what}: {e}"))
    };
    joined(others, "bulk and udp clients")?;
    joined(quiet, "quiet client")?;
    joined(servers, "servers")?;
    // The agent polls once more when it is stopped, so it sees the last packets.
    pair.stop(agent_pid);
    if let Some(pid) = tcpdump {
        pair.stop(pid);
    }
    let alarms = fs::read_to_string(&alarms_path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("alarm line {l:?}: {e}")))
        .collect::<Result<Vec<Value>, String>>()?;
    Ok(LabOutcome {
        alarms,
        agent_log: fs::read_to_string(&agent_log).unwrap_or_default(),
        client_addr: pair.addr_a_str(),
        server_addr: server_ip,
    })
}

/// Servers stop accepting after this long, so a broken client cannot hang the test.
fn cfg_timeout() -> Duration {
    Duration::from_secs(90)
}

/// Quiet echo on QUIET_PORT, a byte sink on BULK_PORT, UDP echo on UDP_PORT; returns when
/// the quiet session and the bulk transfer are over. `bound` is told once every socket is
/// bound, so the clients never race the listeners.
fn serve(timeout: Duration, bound: std::sync::mpsc::Sender<()>) -> Result<(), String> {
    let quiet = TcpListener::bind(("0.0.0.0", QUIET_PORT))
        .map_err(|e| format!("bind {QUIET_PORT}: {e}"))?;
    let bulk =
        TcpListener::bind(("0.0.0.0", BULK_PORT)).map_err(|e| format!("bind {BULK_PORT}: {e}"))?;
    let udp =
        UdpSocket::bind(("0.0.0.0", UDP_PORT)).map_err(|e| format!("bind udp {UDP_PORT}: {e}"))?;
    udp.set_read_timeout(Some(Duration::from_secs(timeout.as_secs())))
        .map_err(|e| e.to_string())?;
    // Nobody listening for it means the lab already gave up; the servers carry on regardless.
    let _ = bound.send(());
    let udp_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        for _ in 0..5 {
            match udp.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = udp.send_to(&buf[..n], from);
                }
                Err(_) => return,
            }
        }
    });
    let bulk_thread = std::thread::spawn(move || -> Result<u64, String> {
        let (mut s, _) = bulk.accept().map_err(|e| e.to_string())?;
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n as u64,
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    let (s, _) = quiet.accept().map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    pool(s)?;
    bulk_thread
        .join()
        .map_err(|_| "bulk server panicked".to_string())??;
    let _ = udp_thread.join();
    Ok(())
}

/// The pool's side of a stratum v1 session: answers subscribe and authorize, sends one job,
/// then acknowledges every share until the miner hangs up.
pub fn pool(s: TcpStream) -> Result<(), String> {
    let mut out = s.try_clone().map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("pool: {e}")),
        }
        let id = line
            .split("\"id\":")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or("0")
            .trim()
            .to_string();
        let reply = if line.contains("mining.subscribe") {
            format!("{{\"id\":{id},\"result\":[[[\"mining.notify\",\"ae68\"]],\"08000002\",4],\"error\":null}}\n")
        } else if line.contains("mining.authorize") {
            format!("{{\"id\":{id},\"result\":true,\"error\":null}}\n{{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"1\",\"00\",\"01\",\"02\",[],\"20000000\",\"1d00ffff\",\"5f5e1000\",true]}}\n")
        } else {
            format!("{{\"id\":{id},\"result\":true}}\n")
        };
        out.write_all(reply.as_bytes()).map_err(|e| e.to_string())?;
    }
}

/// A miner: subscribes and authorizes, then submits a short share every `keepalive`.
fn quiet_client(target: SocketAddr, duration: Duration, keepalive: Duration) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .map_err(|e| format!("connect {target}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut out = s.try_clone().map_err(|e| e.to_string())?;
    let mut replies = BufReader::new(s);
    let mut line = String::new();
    let mut call = |msg: &str, replies_expected: usize| -> Result<(), String> {
        out.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
        for _ in 0..replies_expected {
            line.clear();
            replies
                .read_line(&mut line)
                .map_err(|e| format!("pool reply: {e}"))?;
        }
        Ok(())
    };
    call(
        "{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"labminer/1.0\"]}\n",
        1,
    )?;
    call(
        "{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"lab.worker\",\"x\"]}\n",
        2,
    )?;
    let start = Instant::now();
    let mut tick = 1u32;
    while start.elapsed() < duration {
        let deadline = start + keepalive * tick;
        // Pacing, not synchronisation: the fixed keepalive period is what the detectors are
        // shown.
        if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        call(
            &format!(
                "{{\"id\":{},\"method\":\"mining.submit\",\"params\":[\"w\",\"1\"]}}\n",
                tick + 2
            ),
            1,
        )?;
        tick += 1;
    }
    Ok(())
}

fn bulk_client(target: SocketAddr, bytes: usize) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
        .map_err(|e| format!("connect {target}: {e}"))?;
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        s.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        sent += n;
    }
    s.shutdown(std::net::Shutdown::Both)
        .map_err(|e| e.to_string())
}

fn udp_client(target: SocketAddr) -> Result<(), String> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    for i in 0..5u8 {
        s.send_to(&[b'q', i], target).map_err(|e| e.to_string())?;
        s.recv_from(&mut buf)
            .map_err(|e| format!("udp reply: {e}"))?;
    }
    Ok(())
}
