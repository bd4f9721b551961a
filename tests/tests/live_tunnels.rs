//! Decapsulation on the live path: `sensor-agent run` attached to a veth in a network
//! namespace, and the real stratum capture (`tests/pcaps/stratum-getwork-gbt.pcap`) inside
//! VXLAN sent into the peer end of the veth from a raw packet socket in the other namespace.
//!
//! This kernel has no VXLAN, GRE or Geneve devices (no tunnel modules), so the frames are
//! built by the test (`tunnels::Encap`, as the replay oracle test builds its captures) rather
//! than by a tunnel interface; what runs is everything after the wire: XDP on a real
//! interface, the tail call into the inner program, the `TUNNELS` map read by the live
//! source at the first poll that sees the flow, and the alarm. The replay oracle test
//! (`tunnel_oracle`) checks every encapsulation against tshark; this one checks that the live
//! agent says the same about one of them.

use std::{collections::BTreeSet, ffi::CString, fs, net::IpAddr, process::Stdio, time::Duration};

use sensor_agent::source::capture::CaptureReader;
use sensor_tests::{
    agent::{self, agent_bin, TempDir},
    frames::ETH_P_IP,
    kernel::require_bpf,
    netns::NetnsPair,
    tunnels::Encap,
    wait::wait_until,
};
use serde_json::Value;

/// Sends `frames` out of `ifname` (in the calling thread's network namespace) through an
/// AF_PACKET socket, as they are.
fn send_raw(ifname: &str, frames: &[Vec<u8>]) -> Result<(), String> {
    let name = CString::new(ifname).map_err(|e| e.to_string())?;
    // SAFETY: plain libc calls on a socket this function owns and closes.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            return Err(format!("{ifname}: {}", std::io::Error::last_os_error()));
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(format!(
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        let mut result = Ok(());
        for f in frames {
            let sent = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if sent < 0 {
                result = Err(format!(
                    "send on {ifname}: {}",
                    std::io::Error::last_os_error()
                ));
                break;
            }
        }
        libc::close(fd);
        result
    }
}

#[test]
fn kernel_live_vxlan_stratum_raises_mining_protocol_with_the_tunnel() {
    require_bpf();
    let encap = Encap::Vxlan { vni: 4242 };
    let want = encap.expect();

    // The capture's IPv4 packets inside VXLAN, each client (sender of a SYN) on side A.
    let mut packets = Vec::new();
    let mut r = CaptureReader::open(&agent::repo_pcap("stratum-getwork-gbt.pcap"))
        .unwrap_or_else(|e| panic!("{e}"));
    while let Some(f) = r.next_frame().unwrap_or_else(|e| panic!("{e}")) {
        if f.data.len() > 34 && u16::from_be_bytes([f.data[12], f.data[13]]) == ETH_P_IP {
            packets.push(f.data[14..].to_vec());
        }
    }
    let src = |ip: &[u8]| IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).expect("4 bytes"));
    let clients: BTreeSet<IpAddr> = packets
        .iter()
        .filter(|ip| ip[9] == 6 && ip[((ip[0] & 0x0f) as usize) * 4 + 13] & 0x12 == 0x02)
        .map(|ip| src(ip))
        .collect();
    assert!(!clients.is_empty(), "no SYN in the stratum capture");
    let frames: Vec<Vec<u8>> = packets
        .iter()
        .map(|ip| encap.frame(ETH_P_IP, ip, clients.contains(&src(ip))).0)
        .collect();

    let dir = TempDir::new("live-tunnels");
    let mut pair =
        NetnsPair::create("tun").unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
    // Underlay networks carrying VXLAN raise their MTU for its 50 bytes: so do these veths,
    // so that the capture's full-size packets fit once encapsulated.
    for (ns, dev) in [(&pair.a, &pair.veth_a), (&pair.b, &pair.veth_b)] {
        let out = std::process::Command::new("ip")
            .args(["-n", ns, "link", "set", "dev", dev, "mtu", "9000"])
            .output()
            .unwrap_or_else(|e| panic!("kernel test cannot run: ip: {e}"));
        assert!(
            out.status.success(),
            "ip link set {dev} mtu 9000: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let alarms_path = dir.path().join("alarms.json");
    let log_path = dir.path().join("agent.log");
    let log = fs::File::create(&log_path).expect("agent log");
    let args = [
        "run".to_string(),
        "--iface".into(),
        pair.veth_a.clone(),
        "--alarms".into(),
        alarms_path.display().to_string(),
        "--set".into(),
        format!("state.path={}", dir.path().join("state.bin").display()),
        "--set".into(),
        "sensor.poll_interval=500ms".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = pair.a.clone();
    let agent_pid = pair
        .spawn_in(
            &a,
            &agent_bin().to_string_lossy(),
            &args,
            Stdio::null(),
            Stdio::from(log),
        )
        .unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
    wait_until(
        Duration::from_secs(20),
        "the agent to say \"watching\"",
        || {
            fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("watching")
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "the agent did not start ({e}): {}",
            fs::read_to_string(&log_path).unwrap_or_default()
        )
    });

    let veth_b = pair.veth_b.clone();
    let n = frames.len();
    NetnsPair::in_ns(&pair.b, move || send_raw(&veth_b, &frames))
        .join()
        .expect("sender thread")
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("cannot send the frames: {e}"));

    let read = || -> Vec<Value> {
        fs::read_to_string(&alarms_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let mining = |alarms: &[Value]| -> Vec<Value> {
        alarms
            .iter()
            .filter(|a| a["rule"]["id"] == "mining_protocol" && a["event"]["action"] == "opened")
            .cloned()
            .collect()
    };
    let raised = wait_until(
        Duration::from_secs(30),
        "a mining_protocol alarm from the VXLAN frames",
        || !mining(&read()).is_empty(),
    );
    pair.stop(agent_pid);
    let agent_log = fs::read_to_string(&log_path).unwrap_or_default();
    let alarms = mining(&read());
    println!(
        "{n} frames sent; {} mining_protocol alarms\n{agent_log}",
        alarms.len()
    );
    raised.unwrap_or_else(|e| panic!("{e}\n{agent_log}"));

    let (outer_client, outer_server) = want.outer.expect("VXLAN has outer addresses");
    for a in &alarms {
        let ip = |side: &str| -> IpAddr {
            a[side]["ip"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{side}.ip in {a}"))
        };
        assert!(
            clients.contains(&ip("source")),
            "the alarm is not on an inner client: {a}"
        );
        let t = &a["tunnel"];
        assert_eq!(t["type"], want.kind, "tunnel.type in {a}");
        assert_eq!(t["id"].as_u64(), want.id.map(u64::from), "tunnel.id in {a}");
        assert_eq!(
            (t["source"]["ip"].as_str(), t["destination"]["ip"].as_str()),
            (
                Some(outer_client.to_string().as_str()),
                Some(outer_server.to_string().as_str())
            ),
            "tunnel addresses (client's side first) in {a}"
        );
    }
}
