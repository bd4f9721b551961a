//! Long sessions survive floods, on live traffic in network namespaces.
//!
//! A quiet TCP session runs between two namespaces (client in a, server in b, server port
//! 7444: neither a service nor an ephemeral port, so nothing but the sensor's memory names
//! its client once its kernel entry is gone) while a raw socket in b sends bursts of spoofed
//! SYNs (sources in 198.18.0.0/15, which no namespace routes back to, so none is answered) to
//! the client's namespace, several times the kernel flow map (2048 entries) per burst, into an
//! agent whose own table holds 512 flows. Each burst evicts the session's kernel entry (the
//! test reads the pinned map to make sure), and the session's next packet re-creates it.
//!
//! - `..._client_speaks`: the session is established before the flood; the client sends
//!   the keepalives; the flood (random sources, plus one source over its budget) lasts longer
//!   than `flow.tcp_idle_timeout` and `flow.tcp_unestablished_timeout`.
//! - `..._server_speaks_first`: the flood is under way (the agent's table full) when the
//!   session connects; the server sends the keepalives, so every re-created entry's first
//!   packet is the server's.
//!
//! Both: `long_flow` fires at its threshold of the session's age with `event.start` at its
//! first packet and the client unchanged (`client_from` = `syn`), and `sensor_degraded`
//! says how many flows were refused and evicted, and since when.

use std::{
    fs,
    net::Ipv4Addr,
    path::PathBuf,
    process::Stdio,
    sync::{mpsc, Mutex},
    time::{Duration, Instant},
};

use sensor_common::{ipv4_mapped, FlowKey, FlowStats};
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
const THRESHOLD_S: u64 = 30;
const KEEPALIVE: Duration = Duration::from_secs(6);
const KERNEL_FLOWS: u32 = 2048;
const TABLE_FLOWS: u32 = 512;
/// SYNs per burst: enough to push every older entry out of the kernel's LRU map.
const BURST: u32 = 4 * KERNEL_FLOWS;

/// The floods saturate a core: one test floods at a time.
static ONE_FLOOD: Mutex<()> = Mutex::new(());

fn rule<'a>(alarms: &'a [Value], id: &str) -> Vec<&'a Value> {
    alarms.iter().filter(|a| a["rule"]["id"] == id).collect()
}

/// The Internet checksum of `parts` concatenated (each part of even length but the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 + TCP SYN from `src:sport` to `dst:dport`, checksums filled.
fn syn(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let ip = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let pseudo = [
        &src[..],
        &dst[..],
        &[0, 6],
        &20u16.to_be_bytes()[..],
        &p[20..],
    ];
    let c = checksum(&pseudo);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// A raw IPv4 socket (IP_HDRINCL): the packets go out as built, spoofed sources included.
struct RawSender(i32);

impl RawSender {
    fn open() -> Result<Self, String> {
        // SAFETY: plain socket(2) call; the fd is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
        }
        Ok(RawSender(fd))
    }

    fn send(&self, packet: &[u8], dst: [u8; 4]) -> Result<(), String> {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: packet and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.0,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // A full socket buffer: the burst goes on with the next packet.
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                return Ok(());
            }
            return Err(format!("sendto: {e}"));
        }
        Ok(())
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: closing the fd this value owns.
        unsafe { libc::close(self.0) };
    }
}

/// The flood: `bursts` bursts `period` apart, each `BURST` SYNs from random sources in
/// 198.18.0.0/15 and, with `one_source`, as many more from 198.19.255.254 alone (one
/// sender over its budget), to `dst` port 80. Says on `done` when each burst ended; returns
/// the wall times of each burst's end.
fn flood(
    ns: &str,
    dst: [u8; 4],
    (bursts, period): (u32, Duration),
    one_source: bool,
    seed: u64,
    done: mpsc::Sender<()>,
) -> std::thread::JoinHandle<Result<Result<Vec<u64>, String>, String>> {
    NetnsPair::in_ns(ns, move || {
        let raw = RawSender::open()?;
        let mut rng = fastrand::Rng::with_seed(seed);
        let start = Instant::now();
        let mut ends = Vec::new();
        for b in 0..bursts {
            // Pacing, not synchronisation: one burst a second is the traffic shown.
            let due = start + period * b;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            for _ in 0..BURST {
                let src = [198, 18 + rng.u8(0..2), rng.u8(..), rng.u8(1..255)];
                raw.send(&syn(src, rng.u16(1024..), dst, 80, rng.u32(..)), dst)?;
                if one_source {
                    let src = [198, 19, 255, 254];
                    raw.send(&syn(src, rng.u16(1024..), dst, 81, rng.u32(..)), dst)?;
                }
            }
            ends.push(now_ns());
            let _ = done.send(());
        }
        Ok(ends)
    })
}

/// The kernel flow map the agent pinned under `root`.
fn pinned_flows(root: &PinRoot) -> aya::maps::HashMap<aya::maps::MapData, FlowKey, FlowStats> {
    let path = root
        .pinned()
        .into_iter()
        .find(|p| p.ends_with("FLOWS"))
        .expect("the flow map is pinned");
    let data = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("pinned map {}: {e}", path.display()));
    aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))
        .unwrap_or_else(|e| panic!("flow map: {e}"))
}

/// The session's entry in the kernel flow map the agent pinned.
fn kernel_entry(root: &PinRoot, key: &FlowKey) -> Option<FlowStats> {
    pinned_flows(root).get(key, 0).ok()
}

/// Removes the session's entry from the pinned flow map, as an LRU eviction does; whether it
/// was there to remove.
fn evict_entry(root: &PinRoot, key: &FlowKey) -> bool {
    pinned_flows(root).remove(key).is_ok()
}

struct Agent {
    pid: u32,
    log: PathBuf,
    alarms: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start_agent(pair: &mut NetnsPair, root: &PinRoot, dir: &TempDir) -> Agent {
    let log = dir.path().join("agent.log");
    let alarms = dir.path().join("alarms.json");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--iface".into(),
        pair.veth_a.clone(),
        "--egress".into(),
        "--alarms".into(),
        alarms.display().to_string(),
    ];
    for s in [
        format!("sensor.pin_path={}", root.path().display()),
        "sensor.poll_interval=1s".into(),
        format!("sensor.max_kernel_flows={KERNEL_FLOWS}"),
        format!("flow.max_flows={TABLE_FLOWS}"),
        "flow.tcp_unestablished_timeout=4s".into(),
        "flow.tcp_idle_timeout=12s".into(),
        format!("detect.long_flow.after={THRESHOLD_S}s"),
        "alarm.suppression_window=8s".into(),
        format!("state.path={}", dir.path().join("state.bin").display()),
    ] {
        args.push("--set".into());
        args.push(s);
    }
    let file = fs::File::create(&log).expect("agent log");
    let a = pair.a.clone();
    let pid = pair
        .spawn_net_only(&a, &agent_bin(), &args, Stdio::null(), Stdio::from(file))
        .unwrap_or_else(|e| panic!("{e}"));
    let agent = Agent { pid, log, alarms };
    wait_until(Duration::from_secs(30), "the agent to attach", || {
        agent.log().contains("watching")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", agent.log()));
    agent
}

/// The agent's summary line about its flow table: (refused, evicted, re-created answered).
fn table_summary(log: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("flow table:"))
        .unwrap_or_else(|| panic!("no flow table summary: {log}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1], numbers[3])
}

fn flood_keeps_the_session(speaker: Speaker) {
    require_bpf();
    let _one = ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let tag = if speaker == Speaker::Client {
        "fc"
    } else {
        "fs"
    };
    let mut pair = NetnsPair::create(tag).unwrap_or_else(|e| panic!("test cannot run: {e}"));
    let root = PinRoot::new(tag);
    let dir = TempDir::new(tag);
    let agent = start_agent(&mut pair, &root, &dir);
    let session_len = Duration::from_secs(THRESHOLD_S + 15);
    let addr_a = pair.addr_a;
    let b_ns = pair.b.clone();
    let flood_start = now_ns();
    let (done_tx, done_rx) = mpsc::channel();

    let (client_port, (conn_before, conn_after), flooder) = if speaker == Speaker::Client {
        // Established first; the flood starts half-way between two keepalives and lasts
        // longer than both TCP timeouts of the flow table.
        let sess = session::start(&pair, PORT, speaker, KEEPALIVE, session_len);
        let (port, conn) = (sess.client_port, sess.connected);
        let first_burst = conn.1 + KEEPALIVE.as_nanos() as u64 + 3_000_000_000;
        let wait = first_burst.saturating_sub(now_ns());
        // Scenario timing (the session's age), not synchronisation.
        std::thread::sleep(Duration::from_nanos(wait));
        let every = Duration::from_secs(1);
        (
            port,
            conn,
            flood(&b_ns, addr_a, (18, every), true, 1, done_tx),
        )
    } else {
        // The flood first: the agent's table is full of its flows (it says so with
        // sensor_degraded) when the session connects, right after a burst, so that the agent
        // reads the session's entry (with its SYN) before the next burst can evict it.
        let every = Duration::from_secs(2);
        let f = flood(&b_ns, addr_a, (9, every), false, 2, done_tx);
        wait_until(Duration::from_secs(20), "the agent's table to fill", || {
            !rule(&read_alarms(&agent.alarms), "sensor_degraded").is_empty()
        })
        .unwrap_or_else(|e| panic!("{e}: {}", agent.log()));
        while done_rx.try_recv().is_ok() {}
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a burst ended");
        let sess = session::start(&pair, PORT, speaker, KEEPALIVE, session_len);
        (sess.client_port, sess.connected, f)
    };
    let (key, _) = FlowKey::canonical(
        &ipv4_mapped(pair.addr_a),
        client_port,
        &ipv4_mapped(pair.addr_b),
        PORT,
        6,
    );
    // Between two keepalives, right after a burst: the session's kernel entry is gone. The
    // kernel's LRU protects entries that packets keep referencing, so whether a burst pushes
    // out an active session's entry depends on when the LRU rotates; when none has after a
    // few bursts, the test removes the entry itself, exactly as an eviction does (a delete
    // from the real map), so the recovery path is tested on every run.
    let natural = Instant::now() + KEEPALIVE + Duration::from_secs(4);
    let mut removed_by_test = false;
    let gone = wait_until(
        Duration::from_secs(THRESHOLD_S),
        "a burst to evict the session's kernel entry",
        || {
            if kernel_entry(&root, &key).is_none() {
                return true;
            }
            if Instant::now() >= natural && !removed_by_test {
                removed_by_test = evict_entry(&root, &key);
            }
            false
        },
    );
    if removed_by_test {
        println!("the flood left the session's entry in place; removed as an eviction would");
    }
    let bursts = flooder
        .join()
        .expect("flood thread")
        .and_then(|r| r)
        .expect("flood");
    gone.unwrap_or_else(|e| panic!("{e}: the flood never pushed it out of the map"));
    let flood_end = *bursts.last().expect("bursts");

    wait_until(
        Duration::from_secs(THRESHOLD_S + 20),
        "long_flow and the end of sensor_degraded",
        || {
            let alarms = read_alarms(&agent.alarms);
            let long = rule(&alarms, "long_flow")
                .iter()
                .any(|a| a["destination"]["port"] == PORT);
            let closed = rule(&alarms, "sensor_degraded")
                .iter()
                .any(|a| a["event"]["action"] == "closed");
            long && closed
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}\n{:#?}", agent.log(), read_alarms(&agent.alarms)));
    pair.stop(agent.pid);
    let log = agent.log();
    let alarms = read_alarms(&agent.alarms);
    println!("agent log:\n{log}");
    let long = rule(&alarms, "long_flow")
        .into_iter()
        .find(|a| a["destination"]["port"] == PORT)
        .expect("long_flow");
    println!("long_flow: {long}");
    assert_eq!(long["event"]["action"], "opened");
    assert_eq!(
        long["source"]["ip"],
        Ipv4Addr::from(pair.addr_a).to_string(),
        "the client is unchanged: {long}"
    );
    assert_eq!(long["source"]["port"], client_port, "{long}");
    assert_eq!(long["sensor"]["client_from"], "syn", "{long}");
    assert_eq!(
        long["sensor"]["conversation"]["flows"], 1,
        "the session stayed one flow: the agent never ended it while the flood hid it: {long}"
    );
    let start_ns = ts_ns(long["event"]["start"].as_str().expect("event.start"));
    let slack = 20_000_000; // a jiffy of resolution, the anchor's own jiffy, and jitter
    assert!(
        start_ns + slack >= conn_before && start_ns <= conn_after + slack,
        "event.start {} is not the session's first packet (connect between {conn_before} and {conn_after} ns)",
        long["event"]["start"]
    );
    let raised = ts_ns(long["@timestamp"].as_str().expect("@timestamp"));
    let age_s = (raised - start_ns) as f64 / 1e9;
    // Never early. At most one keepalive late: the keepalive that crosses the threshold can
    // itself be hidden when a burst evicts its re-created kernel entry before a poll reads it
    // (what an evicted entry counted is gone; the agent counts the time unobserved), and the
    // next keepalive then carries the session past it.
    assert!(
        age_s >= THRESHOLD_S as f64 && age_s <= (THRESHOLD_S + KEEPALIVE.as_secs()) as f64 + 3.0,
        "long_flow raised at {age_s:.1} s of the session's age, threshold {THRESHOLD_S} s"
    );

    let (refused, evicted, recreated) = table_summary(&log);
    assert!(
        recreated >= 1,
        "the session's re-created entry was counted: {log}"
    );
    let degraded = rule(&alarms, "sensor_degraded");
    let opened = degraded
        .iter()
        .find(|a| a["event"]["action"] == "opened")
        .expect("sensor_degraded opened");
    let since = ts_ns(
        opened["sensor"]["evidence"]["since"]
            .as_str()
            .expect("evidence.since"),
    );
    assert!(
        since + 1_000_000_000 >= flood_start && since <= flood_end + 1_000_000_000,
        "sensor_degraded since {} is not in the flood",
        opened["sensor"]["evidence"]["since"]
    );
    let closed = degraded
        .iter()
        .find(|a| a["event"]["action"] == "closed")
        .expect("sensor_degraded closed");
    println!("sensor_degraded closed: {closed}");
    let ev = &closed["sensor"]["evidence"];
    let count = |k: &str| {
        ev[k]
            .as_u64()
            .unwrap_or_else(|| panic!("evidence.{k}: {ev}"))
    };
    assert!(
        count("evicted_flows") > u64::from(TABLE_FLOWS),
        "evicted flows: {ev}"
    );
    assert!(count("evicted_flows") <= evicted && count("refused_flows") <= refused);
    assert!(count("recreated_sessions") >= 1, "{ev}");
    assert_eq!(ev["since"], opened["sensor"]["evidence"]["since"]);
    assert!(
        degraded
            .iter()
            .all(|a| a["event"]["id"] == opened["event"]["id"]),
        "one sensor_degraded alarm for the episode: {degraded:?}"
    );
    if speaker == Speaker::Client {
        // The one source over its budget was refused.
        assert!(count("refused_flows") > 0, "refused flows: {ev}");
    }
}

#[test]
fn kernel_flood_keeps_a_long_session_client_speaks() {
    flood_keeps_the_session(Speaker::Client);
}

#[test]
fn kernel_flood_keeps_a_long_session_server_speaks_first() {
    flood_keeps_the_session(Speaker::Server);
}
