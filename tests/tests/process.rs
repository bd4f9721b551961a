//! Process attribution on a live kernel: the sensor runs in namespace `a` with its cgroup
//! socket hooks attached at the root of the cgroup v2 hierarchy. A stratum client process in
//! `a`, started in a cgroup of the test's own, opens a session to a pool in `b`: its
//! mining_protocol alarm must name that process (pid, name, executable) and its cgroup. The
//! same client in a third namespace `c`, routed through `a` to the same pool, is forwarded
//! traffic for the sensor: its alarm has no process and says `network.forwarded`.

use std::{
    fs,
    io::Write,
    net::{TcpListener, UdpSocket},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use sensor_agent::source::process::{cgroup2_mount, ProcessHooks, PROGRAMS};
use sensor_tests::{
    agent::{agent_bin, workspace_bin, TempDir},
    kernel::require_bpf,
    lab::pool,
    netns::NetnsPair,
    wait::wait_until,
};
use serde_json::Value;

const POOL_PORT: u16 = 3333;
/// A pool the sensor's host itself runs (the accepting side).
const HOST_POOL_PORT: u16 = 3334;
/// UDP peers in b: one for datagrams sent with an address, one for a connected socket.
const UDP_SENDTO_PORT: u16 = 5353;
const UDP_CONNECTED_PORT: u16 = 5354;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A child cgroup of the test's own under the cgroup v2 root; on drop its processes (only
/// ones this test started) are killed by pid and the cgroup removed.
struct TestCgroup {
    dir: PathBuf,
    /// The path as /proc/PID/cgroup shows it (relative to the hierarchy's root).
    rel: String,
}

impl TestCgroup {
    fn create(tag: &str) -> Result<Self, String> {
        let root = cgroup2_mount().ok_or("no cgroup v2 hierarchy is mounted (/proc/mounts)")?;
        let name = format!("sensor-test-{tag}-{}", std::process::id());
        let dir = root.join(&name);
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(TestCgroup {
            dir,
            rel: format!("/{name}"),
        })
    }

    fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for pid in self.procs() {
            // SAFETY: kill by pid of a process in the test's own cgroup (one it started).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = wait_until(Duration::from_secs(5), "the test cgroup to empty", || {
            self.procs().is_empty()
        });
        let _ = fs::remove_dir(&self.dir);
    }
}

/// A third namespace `c` with a veth to `a`, routed through `a` to `b` (a forwards).
struct Routed {
    ns: String,
    addr: String,
}

impl Routed {
    fn create(pair: &NetnsPair) -> Result<Self, String> {
        let id = format!("{}", std::process::id() % 100_000);
        let ns = format!("sens-proc-{id}-c");
        let mut routed = Routed {
            ns: ns.clone(),
            addr: String::new(),
        };
        ip(&["netns", "add", &ns])?;
        let (va, vc) = (format!("spa{id}"), format!("spc{id}"));
        ip(&[
            "link", "add", &va, "netns", &pair.a, "type", "veth", "peer", "name", &vc, "netns", &ns,
        ])?;
        let sub = (std::process::id() % 250) as u8;
        let (a_addr, c_addr) = (format!("10.215.{sub}.1"), format!("10.215.{sub}.2"));
        ip(&[
            "-n",
            &pair.a,
            "addr",
            "add",
            &format!("{a_addr}/30"),
            "dev",
            &va,
        ])?;
        ip(&["-n", &pair.a, "link", "set", &va, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{c_addr}/30"),
            "dev",
            &vc,
        ])?;
        ip(&["-n", &ns, "link", "set", &vc, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &a_addr])?;
        ip(&[
            "-n",
            &pair.b,
            "route",
            "add",
            &format!("10.215.{sub}.0/30"),
            "via",
            &pair.addr_a_str(),
        ])?;
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.a,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()
            .map_err(|e| format!("sysctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "enable forwarding in {}: {}",
                pair.a,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        routed.addr = c_addr;
        Ok(routed)
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// Starts `program args` in network namespace `ns` (host mounts kept), first moving itself
/// into `cgroup` when given, so every socket it makes is born there. Killed by pid on drop.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(
    ns: &str,
    program: &Path,
    args: &[&str],
    cgroup: Option<&Path>,
) -> Result<Spawned, String> {
    let netns = fs::File::open(format!("/run/netns/{ns}")).map_err(|e| format!("{ns}: {e}"))?;
    let procs = cgroup
        .map(|c| {
            fs::OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
                .map_err(|e| format!("{}: {e}", c.display()))
        })
        .transpose()?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stderr(Stdio::piped());
    use std::os::fd::AsRawFd;
    let net_fd = netns.as_raw_fd();
    let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: only async-signal-safe calls (setns, write) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = procs_fd {
                // "0": the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setns(net_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    Ok(Spawned(child))
}

fn alarms_in(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn mining_alarm<'a>(alarms: &'a [Value], client: &str, port: u16) -> Option<&'a Value> {
    alarms.iter().find(|a| {
        a["rule"]["id"] == "mining_protocol"
            && a["source"]["ip"] == client
            && a["destination"]["port"] == port
    })
}

fn flow_to<'a>(flows: &'a [Value], port: u16, transport: &str) -> Option<&'a Value> {
    flows
        .iter()
        .find(|f| f["destination"]["port"] == port && f["network"]["transport"] == transport)
}

/// Accepts stratum sessions on `l` (one thread each) until `stop`.
fn serve_pool(l: TcpListener, stop: &AtomicBool, accepted: &AtomicUsize) -> Result<(), String> {
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                accepted.fetch_add(1, Ordering::SeqCst);
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                std::thread::spawn(move || pool(s));
            }
            // Nothing waiting: look again shortly (the stop flag ends the loop).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    Ok(())
}

#[test]
fn kernel_process_programs_pass_the_verifier() {
    require_bpf();
    let hooks = ProcessHooks::load().unwrap_or_else(|e| panic!("process programs: {e}"));
    drop(hooks);
    assert_eq!(PROGRAMS.len(), 6);
}

#[test]
fn kernel_live_mining_alarm_names_the_host_process_and_not_a_forwarded_one() {
    require_bpf();
    let agent = agent_bin();
    let client_bin = workspace_bin("stratum-client");
    let dir = TempDir::new("proc");
    let cgroup =
        TestCgroup::create("proc").unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
    let mut pair =
        NetnsPair::create("proc").unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
    let routed = Routed::create(&pair).unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));

    // The pool in b: one thread per session, until the test ends.
    let stop = Arc::new(AtomicBool::new(false));
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let server_ip = pair.addr_b_str();
    let stop_pool = stop.clone();
    // Every address of b: the session older than the agent goes to its second address.
    let listen = format!("0.0.0.0:{POOL_PORT}");
    let accepted_b = Arc::new(AtomicUsize::new(0));
    let accepted = accepted_b.clone();
    let udp_listen = server_ip.clone();
    let pool_b = NetnsPair::in_ns(&pair.b, move || -> Result<(), String> {
        let l = TcpListener::bind(&listen).map_err(|e| format!("bind {listen}: {e}"))?;
        // Datagrams have somewhere to go (no ICMP unreachable), kept until the pool stops.
        let _udp = [UDP_SENDTO_PORT, UDP_CONNECTED_PORT].map(|p| {
            UdpSocket::bind((udp_listen.as_str(), p)).map_err(|e| format!("udp {p}: {e}"))
        });
        let _ = bound_tx.send(());
        serve_pool(l, &stop_pool, &accepted)
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the pool in b bound its ports");

    let alarms_path = dir.path().join("alarms.json");
    let flows_path = dir.path().join("flows.json");
    let log_path = dir.path().join("agent.log");
    let log = fs::File::create(&log_path).expect("agent log");
    let args: Vec<String> = [
        "run",
        "--iface",
        &pair.veth_a,
        "--egress",
        "--alarms",
        &alarms_path.to_string_lossy(),
        "--flows",
        &flows_path.to_string_lossy(),
        "--set",
        "sensor.poll_interval=500ms",
        // Flow records soon after each flow ends.
        "--set",
        "flow.tcp_closed_grace=1s",
        "--set",
        "flow.udp_idle_timeout=1s",
        "--set",
        "sensor.pin_path=",
        // Off by default (least privilege); on here, so the alarm names the executable.
        "--set",
        "sensor.process_executables=true",
        "--set",
        &format!("state.path={}", dir.path().join("state.bin").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A miner older than the agent: its socket was made before the hooks were attached, so
    // only the /proc scan can name it.
    let old_target = format!("{}:{POOL_PORT}", pair.alt_b_str());
    let old_client =
        spawn(&pair.a, &client_bin, &[&old_target, "10"], None).unwrap_or_else(|e| panic!("{e}"));
    let old_pid = old_client.0.id();
    wait_until(
        Duration::from_secs(10),
        "the older session to connect",
        || accepted_b.load(Ordering::SeqCst) >= 1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let a = pair.a.clone();
    let agent_pid = pair
        .spawn_net_only(&a, &agent, &args, Stdio::null(), Stdio::from(log))
        .expect("start the agent");
    let agent_log = || fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(Duration::from_secs(30), "the agent to attach", || {
        agent_log().contains("watching")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent_log()));
    // The privilege drop still happens after attaching; only reading other users'
    // executables and descriptors is kept.
    assert!(
        agent_log().contains("with capabilities: CAP_SYS_PTRACE\n"),
        "{}",
        agent_log()
    );
    assert!(
        agent_log().contains("process attribution on"),
        "the agent did not attach its cgroup hooks:\n{}",
        agent_log()
    );

    // A pool of the sensor's host: its listening socket is made by this test process (in a),
    // so the accepted session's owner is this process. Started after the agent attached: the
    // owner of a listener is recorded when the socket is made (sockets older than the agent
    // are not attributed).
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let stop_host_pool = stop.clone();
    let host_listen = format!("{}:{HOST_POOL_PORT}", pair.addr_a_str());
    let pool_a = NetnsPair::in_ns(&pair.a, move || -> Result<(), String> {
        let l = TcpListener::bind(&host_listen).map_err(|e| format!("bind {host_listen}: {e}"))?;
        let _ = bound_tx.send(());
        serve_pool(l, &stop_host_pool, &AtomicUsize::new(0))
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the pool in a bound its port");
    let target = format!("{server_ip}:{POOL_PORT}");
    let host_client = spawn(&pair.a, &client_bin, &[&target, "4"], Some(&cgroup.dir))
        .unwrap_or_else(|e| panic!("{e}"));
    let host_pid = host_client.0.id();
    let host_comm = fs::read_to_string(format!("/proc/{host_pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    let fwd_client =
        spawn(&routed.ns, &client_bin, &[&target, "4"], None).unwrap_or_else(|e| panic!("{e}"));
    let host_ip = pair.addr_a_str();
    let remote_client = spawn(
        &pair.b,
        &client_bin,
        &[&format!("{host_ip}:{HOST_POOL_PORT}"), "2"],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // UDP from this test process in a: datagrams sent with an address (the sendmsg hook), and
    // through a connected socket (the connect hook, before the kernel picked its port).
    let udp_peer = server_ip.clone();
    let udp = NetnsPair::in_ns(&pair.a, move || -> std::io::Result<()> {
        let unconnected = UdpSocket::bind("0.0.0.0:0")?;
        unconnected.send_to(b"ping", (udp_peer.as_str(), UDP_SENDTO_PORT))?;
        let connected = UdpSocket::bind("0.0.0.0:0")?;
        connected.connect((udp_peer.as_str(), UDP_CONNECTED_PORT))?;
        connected.send(b"ping")?;
        Ok(())
    });
    udp.join()
        .expect("udp thread")
        .expect("udp netns")
        .expect("udp exchange");

    let remote_ip = pair.addr_b_str();
    let found = wait_until(
        Duration::from_secs(40),
        "the alarms and flow records",
        || {
            let alarms = alarms_in(&alarms_path);
            let flows = alarms_in(&flows_path);
            mining_alarm(&alarms, &host_ip, POOL_PORT).is_some()
                && mining_alarm(&alarms, &routed.addr, POOL_PORT).is_some()
                && mining_alarm(&alarms, &remote_ip, HOST_POOL_PORT).is_some()
                && flow_to(&flows, UDP_SENDTO_PORT, "udp").is_some()
                && flow_to(&flows, UDP_CONNECTED_PORT, "udp").is_some()
                && flows
                    .iter()
                    .filter(|f| f["destination"]["port"] == POOL_PORT)
                    .count()
                    >= 3
        },
    );
    pair.stop(agent_pid);
    stop.store(true, Ordering::Relaxed);
    drop((host_client, fwd_client, remote_client, old_client));
    let alarms = alarms_in(&alarms_path);
    let flows = alarms_in(&flows_path);
    found.unwrap_or_else(|e| {
        panic!(
            "{e}\nalarms: {alarms:#?}\nflows: {flows:#?}\nagent:\n{}",
            agent_log()
        )
    });
    for (what, h) in [("pool in b", pool_b), ("pool in a", pool_a)] {
        h.join()
            .unwrap_or_else(|_| panic!("{what} panicked"))
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    let host = mining_alarm(&alarms, &host_ip, POOL_PORT).expect("host alarm");
    println!("host alarm: {host}");
    assert_eq!(host["process"]["pid"], host_pid, "{host}");
    assert_eq!(host_comm, "stratum-client");
    assert_eq!(host["process"]["name"], host_comm.as_str(), "{host}");
    assert_eq!(
        host["process"]["executable"],
        client_bin.to_string_lossy().as_ref(),
        "{host}"
    );
    assert_eq!(
        host["process"]["cgroup"]["path"],
        cgroup.rel.as_str(),
        "{host}"
    );
    assert_eq!(host["user"]["name"], "root", "{host}");
    assert_eq!(host["sensor"]["process_from"], "connect", "{host}");
    assert_eq!(host["network"]["forwarded"], false, "{host}");

    let fwd = mining_alarm(&alarms, &routed.addr, POOL_PORT).expect("forwarded alarm");
    println!("forwarded alarm: {fwd}");
    assert_eq!(fwd["network"]["forwarded"], true, "{fwd}");
    for absent in ["process", "user", "container"] {
        assert!(
            fwd.get(absent).is_none(),
            "forwarded flow has {absent}: {fwd}"
        );
    }

    // The session this host accepted: the listening socket's owner, copied to the accepted
    // socket by the kernel.
    let accepted = mining_alarm(&alarms, &remote_ip, HOST_POOL_PORT).expect("accepted alarm");
    println!("accepted alarm: {accepted}");
    assert_eq!(accepted["process"]["pid"], std::process::id(), "{accepted}");
    assert_eq!(accepted["sensor"]["process_from"], "accept", "{accepted}");
    assert_eq!(accepted["network"]["forwarded"], false, "{accepted}");

    // Flow records carry the same: the host's session with its process, the forwarded one
    // without, and both UDP flows with this test process.
    for f in flows
        .iter()
        .filter(|f| f["destination"]["port"] == POOL_PORT)
    {
        if f["destination"]["ip"] == pair.alt_b_str().as_str() {
            println!("older session's flow record: {f}");
            assert_eq!(f["process"]["pid"], old_pid, "{f}");
            assert_eq!(f["process"]["name"], "stratum-client", "{f}");
            assert_eq!(f["sensor"]["process_from"], "proc", "{f}");
        } else if f["source"]["ip"] == host_ip.as_str() {
            assert_eq!(f["process"]["pid"], host_pid, "{f}");
            assert_eq!(f["network"]["forwarded"], false, "{f}");
        } else {
            assert_eq!(f["source"]["ip"], routed.addr.as_str(), "{f}");
            assert_eq!(f["network"]["forwarded"], true, "{f}");
            assert!(f.get("process").is_none(), "{f}");
        }
    }
    for (port, hook) in [
        (UDP_SENDTO_PORT, "udp_sendmsg"),
        (UDP_CONNECTED_PORT, "udp_connect"),
    ] {
        let f = flow_to(&flows, port, "udp").expect("udp flow");
        println!("udp flow record: {f}");
        assert_eq!(f["process"]["pid"], std::process::id(), "{f}");
        assert_eq!(f["sensor"]["process_from"], hook, "{f}");
    }
    // Flush what the test wrote for a human reading a failure.
    let _ = std::io::stdout().flush();
}
