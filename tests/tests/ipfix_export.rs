//! IPFIX out: `[[exporters]]` sends the sensor's flow records to nfdump's `nfcapd` (Debian),
//! and `nfdump -r` prints every flow of the flow table with its packets and bytes in both
//! directions (the RFC 5103 reverse elements read back as nfdump's "out" counters).

use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
};

use sensor_tests::agent::{self, TempDir};

/// nfcapd started by this test, stopped (SIGTERM, then waited for) when dropped.
struct Nfcapd {
    child: Child,
}

impl Nfcapd {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the pid of the child this test started.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A UDP port free on loopback now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// (client, client port, server, server port, packets, bytes, reverse packets, reverse bytes)
type Row = (String, u64, String, u64, u64, u64, u64, u64);

#[test]
fn nfdump_reads_back_the_flow_tables_packets_and_bytes() {
    let dir = TempDir::new("ipfix-out");
    let port = free_udp_port();
    let child = Command::new("nfcapd")
        .arg("-w")
        .arg(dir.path())
        .args(["-b", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nfcapd is not installed (Debian package nfdump; cargo xtask deps)");
    let mut nfcapd = Nfcapd { child };
    // Ready once its socket is bound: the port shows in the kernel's UDP table.
    let needle = format!("0100007F:{port:04X} ");
    sensor_tests::wait::wait_until(
        std::time::Duration::from_secs(20),
        "nfcapd to bind its UDP port",
        || {
            if let Ok(Some(status)) = nfcapd.child.try_wait() {
                panic!("nfcapd exited before listening ({status})");
            }
            std::fs::read_to_string("/proc/net/udp").is_ok_and(|t| t.contains(&needle))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.write(
        "exporters.toml",
        format!("[[exporters]]\naddress = \"127.0.0.1:{port}\"\nobservation_domain = 5\n")
            .as_bytes(),
    );
    let flows_file = dir.path().join("flows.json");
    let capture = agent::repo_pcap("stratum-getwork-gbt.pcap");
    let run = agent::run(&[
        "replay".as_ref(),
        "--no-progress".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--flows".as_ref(),
        flows_file.as_os_str(),
        capture.as_os_str(),
    ]);
    assert!(run.success, "replay failed: {}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("as IPFIX to 127.0.0.1:{port}")),
        "{}",
        run.stderr
    );
    nfcapd.stop();
    let want: BTreeSet<Row> = agent::read_flows(&flows_file)
        .iter()
        .map(|f| {
            let s = |k: &str, f2: &str| f[k][f2].clone();
            (
                s("source", "ip").as_str().unwrap_or("").to_string(),
                s("source", "port").as_u64().unwrap_or(0),
                s("destination", "ip").as_str().unwrap_or("").to_string(),
                s("destination", "port").as_u64().unwrap_or(0),
                s("source", "packets").as_u64().unwrap_or(0),
                s("source", "bytes").as_u64().unwrap_or(0),
                s("destination", "packets").as_u64().unwrap_or(0),
                s("destination", "bytes").as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(want.len() > 5, "the capture's flow table: {want:?}");
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("nfcapd directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("nfcapd.2"))
        })
        .collect();
    assert_eq!(files.len(), 1, "nfcapd files: {files:?}");
    let out = Command::new("nfdump")
        .arg("-r")
        .arg(&files[0])
        .args([
            "-q",
            "-N",
            "-o",
            "fmt:%sa,%sp,%da,%dp,%pkt,%byt,%opkt,%obyt",
        ])
        .output()
        .expect("run nfdump");
    assert!(
        out.status.success(),
        "nfdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let got: BTreeSet<Row> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            assert_eq!(f.len(), 8, "nfdump line: {l}");
            let n = |i: usize| -> u64 { f[i].parse().unwrap_or_else(|_| panic!("number in {l}")) };
            (
                f[0].to_string(),
                n(1),
                f[2].to_string(),
                n(3),
                n(4),
                n(5),
                n(6),
                n(7),
            )
        })
        .collect();
    assert_eq!(got, want, "nfdump:\n{text}");
}
