//! Alarms delivered to a real rsyslog (Debian's package) over UDP, TCP (octet-counted) and TLS
//! (gnutls, a CA the test makes), through the durable spool: each message must arrive intact
//! and parse as RFC 5424 with the configured payload (CEF, LEEF, JSON). A TLS receiver whose
//! certificate the sensor does not trust is refused with a clear error and nothing is lost:
//! the alarms stay spooled.

use std::time::Duration;

use sensor_tests::{
    agent::{self, TempDir},
    rsyslog::{Rsyslog, TestPki},
};

/// An RFC 5424 message split into (PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID, MSGID,
/// STRUCTURED-DATA, MSG), by a parser written here from the RFC.
fn parse_5424(line: &str) -> Option<Vec<String>> {
    let rest = line.strip_prefix('<')?;
    let (pri, rest) = rest.split_once('>')?;
    let mut fields = vec![pri.to_string()];
    let mut rest = rest;
    for _ in 0..6 {
        let (f, r) = rest.split_once(' ')?;
        fields.push(f.to_string());
        rest = r;
    }
    // Structured data: "-" or one or more [..] elements with \-escaped ", \ and ].
    let sd_end = if rest.starts_with('-') {
        1
    } else {
        let bytes = rest.as_bytes();
        let mut i = 0;
        while i < bytes.len() && bytes[i] == b'[' {
            i += 1;
            let mut in_quotes = false;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if in_quotes => i += 1,
                    b'"' => in_quotes = !in_quotes,
                    b']' if !in_quotes => break,
                    _ => {}
                }
                i += 1;
            }
            i += 1;
        }
        i
    };
    fields.push(rest[..sd_end].to_string());
    fields.push(rest.get(sd_end + 1..).unwrap_or("").to_string());
    Some(fields)
}

#[test]
fn alarms_reach_rsyslog_over_udp_tcp_and_tls_in_cef_leef_and_json() {
    let dir = TempDir::new("rsyslog-sinks");
    let pki = TestPki::create(dir.path()).unwrap_or_else(|e| panic!("sink test cannot run: {e}"));
    let rsyslog =
        Rsyslog::start(dir.path(), &pki).unwrap_or_else(|e| panic!("sink test cannot run: {e}"));
    let config = format!(
        r#"
[spool]
dir = "{spool}"
drain_timeout = "20s"

[[sinks]]
kind = "syslog"
address = "tcp://127.0.0.1:{tcp}"
format = "cef"
framing = "octet-counted"

[[sinks]]
kind = "syslog"
address = "udp://127.0.0.1:{udp}"
format = "leef"

[[sinks]]
kind = "syslog"
address = "tls://127.0.0.1:{tls}"
format = "json"
ca_file = "{ca}"
"#,
        spool = dir.path().join("spool").display(),
        tcp = rsyslog.tcp_port,
        udp = rsyslog.udp_port,
        tls = rsyslog.tls_port,
        ca = pki.ca.display(),
    );
    let cfg = dir.write("sensor.toml", config.as_bytes());
    let cap = agent::repo_pcap("quiet-long-tcp.pcap");
    let run = agent::run(&[
        "replay".as_ref(),
        "--no-progress".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--set".as_ref(),
        "detect.long_flow.after=1h".as_ref(),
        "--set".as_ref(),
        "detect.quiet_long_flow.after=1h".as_ref(),
        // The capture's 30 s server beat would add periodic_flow events: delivery, not
        // detection, is under test here.
        "--set".as_ref(),
        "detect.periodic_flow.enabled=false".as_ref(),
        cap.as_os_str(),
    ]);
    assert!(run.success, "replay failed: {}", run.stderr);
    assert!(
        run.stdout.trim().is_empty(),
        "with sinks configured nothing goes to stdout: {}",
        run.stdout
    );
    // 4 alarm events (long and quiet: opened + final update), once per sink.
    let got = rsyslog.wait_for(12, Duration::from_secs(20));
    assert_eq!(
        got.len(),
        12,
        "rsyslog received {got:#?}\nagent: {}",
        run.stderr
    );
    let (mut cef, mut leef, mut json) = (0, 0, 0);
    for line in &got {
        let f = parse_5424(line).unwrap_or_else(|| panic!("not RFC 5424: {line}"));
        assert_eq!(f[1], "1", "version: {line}");
        assert!(
            f[2].contains('T') && f[2].ends_with('Z') && f[2].contains('.'),
            "timestamp with fraction: {line}"
        );
        assert!(
            f[7].starts_with("[sensor@32473 id=\""),
            "structured data: {line}"
        );
        let msg = &f[8];
        if msg.starts_with("CEF:0|") {
            cef += 1;
            assert!(
                msg.contains("src=192.168.2.186")
                    && msg.contains("dst=192.168.2.21")
                    && msg.contains("dpt=1234"),
                "{msg}"
            );
        } else if msg.starts_with("LEEF:2.0|") {
            leef += 1;
            assert!(
                msg.contains("src=192.168.2.186\t") && msg.contains("dstPort=1234"),
                "{msg}"
            );
        } else {
            json += 1;
            let v: serde_json::Value =
                serde_json::from_str(msg).unwrap_or_else(|e| panic!("JSON payload ({e}): {msg}"));
            assert_eq!(v["destination"]["port"], 1234);
            assert!(matches!(
                v["rule"]["id"].as_str(),
                Some("long_flow") | Some("quiet_long_flow")
            ));
        }
    }
    assert_eq!((cef, leef, json), (4, 4, 4), "{got:#?}");
    assert!(run.stderr.contains("4 sent, 0 errors"), "{}", run.stderr);
}

#[test]
fn a_tls_receiver_the_sensor_does_not_trust_is_refused_and_nothing_is_lost() {
    let dir = TempDir::new("rsyslog-untrusted");
    let pki = TestPki::create(dir.path()).unwrap_or_else(|e| panic!("sink test cannot run: {e}"));
    let rsyslog =
        Rsyslog::start(dir.path(), &pki).unwrap_or_else(|e| panic!("sink test cannot run: {e}"));
    let spool = dir.path().join("spool");
    let config = format!(
        "[spool]\ndir = \"{}\"\ndrain_timeout = \"3s\"\n\n[[sinks]]\nkind = \"syslog\"\naddress = \"tls://127.0.0.1:{}\"\nformat = \"cef\"\nca_file = \"{}\"\n",
        spool.display(),
        rsyslog.tls_port,
        pki.other_ca.display()
    );
    let cfg = dir.write("sensor.toml", config.as_bytes());
    let cap = agent::repo_pcap("quiet-long-tcp.pcap");
    let args = [
        "replay".as_ref(),
        "--no-progress".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--set".as_ref(),
        "detect.long_flow.after=1h".as_ref(),
        "--set".as_ref(),
        "detect.periodic_flow.enabled=false".as_ref(),
        cap.as_os_str(),
    ];
    let run = agent::run(&args);
    assert!(
        run.stderr.contains("certificate verify failed"),
        "the refusal is explained: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("2 pending"),
        "the alarms stay spooled: {}",
        run.stderr
    );
    assert!(
        rsyslog.messages().is_empty(),
        "nothing reached the untrusted receiver"
    );
    // Trusting the right CA later delivers what was spooled.
    let fixed = dir.write(
        "fixed.toml",
        config
            .replace(
                &pki.other_ca.display().to_string(),
                &pki.ca.display().to_string(),
            )
            .as_bytes(),
    );
    let empty = dir.write(
        "empty.pcap",
        &sensor_tests::pcap::pcap(sensor_tests::pcap::LINKTYPE_ETHERNET, &[]),
    );
    let run = agent::run(&[
        "replay".as_ref(),
        "--no-progress".as_ref(),
        "--config".as_ref(),
        fixed.as_os_str(),
        empty.as_os_str(),
    ]);
    assert!(run.stderr.contains("2 sent, 0 errors"), "{}", run.stderr);
    assert_eq!(rsyslog.wait_for(2, Duration::from_secs(10)).len(), 2);
}
