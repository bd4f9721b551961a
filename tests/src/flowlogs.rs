//! Cloud flow logs made from a real capture's packets, as the clouds' exporters would have
//! written them: every packet is attributed by the agent's own parser, counted per direction
//! (AWS, GCP) or per connection (Azure) in fixed windows of the capture's clock, and written
//! in each format's published layout (see `sensor_agent::source::records` for the field
//! definitions). Tests feed these to `sensor-agent ingest` and compare with `replay` of the
//! same capture.

use std::{collections::BTreeMap, io::Write, net::IpAddr, path::Path};

use sensor_agent::{
    flow::record::ip_of,
    source::{capture::CaptureReader, packet::parse_frame},
};
use sensor_common::FlowKey;
use serde_json::json;

const S: u64 = 1_000_000_000;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// One direction of a 5-tuple in one window.
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub packets: u64,
    pub bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// As AWS reports them: FIN, SYN, RST, and SYN-ACK (18) only.
    pub tcp_flags: u8,
}

/// (src, sport, dst, dport, proto).
pub type Tuple = (IpAddr, u16, IpAddr, u16, u8);

/// A capture's packets, aggregated.
#[derive(Debug, Default)]
pub struct Aggregated {
    pub window_ns: u64,
    /// Per direction and window index.
    pub windows: BTreeMap<(Tuple, u64), Window>,
    /// Per connection (canonical key): its initiator's tuple (SYN sender, else first sender).
    pub initiators: BTreeMap<FlowKey, (Tuple, bool)>,
    /// First and last packet of the capture.
    pub first_ns: u64,
    pub last_ns: u64,
}

/// Reads `capture` and aggregates its packets into windows of `window_ns`.
pub fn aggregate(capture: &Path, window_ns: u64) -> Aggregated {
    let mut r = CaptureReader::open(capture)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", capture.display()));
    let mut out = Aggregated {
        window_ns,
        first_ns: u64::MAX,
        ..Aggregated::default()
    };
    while let Some(frame) = r
        .next_frame()
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", capture.display()))
    {
        let Ok(p) = parse_frame(&frame.data) else {
            continue;
        };
        let k = p.key;
        let (src, sport, dst, dport) = if p.dir == 0 {
            (k.addr_lo, k.port_lo, k.addr_hi, k.port_hi)
        } else {
            (k.addr_hi, k.port_hi, k.addr_lo, k.port_lo)
        };
        let tuple = (ip_of(&src), sport, ip_of(&dst), dport, k.proto);
        let ts = frame.ts_ns;
        out.first_ns = out.first_ns.min(ts);
        out.last_ns = out.last_ns.max(ts);
        let w = out
            .windows
            .entry((tuple, ts / window_ns))
            .or_insert(Window {
                first_ns: ts,
                ..Window::default()
            });
        w.packets += 1;
        // IP bytes: the frame without its Ethernet header.
        w.bytes += (frame.wire_len as u64).saturating_sub(14);
        w.last_ns = ts;
        if k.proto == 6 {
            let f = p.tcp_flags;
            w.tcp_flags |= f & 0x05;
            if f & (SYN | ACK) == SYN {
                w.tcp_flags |= SYN;
            } else if f & (SYN | ACK) == SYN | ACK {
                w.tcp_flags |= SYN | ACK;
            }
        }
        let syn = k.proto == 6 && p.tcp_flags & (SYN | ACK) == SYN;
        match out.initiators.get(&k) {
            Some((_, true)) => {}
            Some((_, false)) if !syn => {}
            _ => {
                out.initiators.insert(k, (tuple, syn));
            }
        }
    }
    out
}

fn gzip(text: &str) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(text.as_bytes()).expect("gzip in memory");
    z.finish().expect("gzip in memory")
}

/// RFC 3339 with milliseconds, UTC.
fn rfc3339(ns: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128).expect("time in range");
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).expect("format")
}

impl Aggregated {
    /// AWS default format (version 2) with the header line S3 exports start with, gzip.
    pub fn aws_v2_gzip(&self) -> Vec<u8> {
        let mut text = String::from(
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status\n",
        );
        for ((t, _), w) in &self.windows {
            text.push_str(&format!(
                "2 123456789012 eni-0a1b2c3d4e5f60718 {} {} {} {} {} {} {} {} {} ACCEPT OK\n",
                t.0,
                t.2,
                t.1,
                t.3,
                t.4,
                w.packets,
                w.bytes,
                w.first_ns / S,
                w.last_ns / S
            ));
        }
        gzip(&text)
    }

    /// An AWS custom format with version 5 fields (header line first), plain text.
    pub fn aws_custom_v5(&self) -> String {
        let mut text = String::from(
            "version account-id vpc-id subnet-id instance-id interface-id type srcaddr dstaddr srcport dstport pkt-srcaddr pkt-dstaddr protocol bytes packets start end action tcp-flags log-status region az-id flow-direction traffic-path pkt-src-aws-service pkt-dst-aws-service\n",
        );
        for ((t, _), w) in &self.windows {
            text.push_str(&format!(
                "5 123456789012 vpc-0aa11bb22 subnet-0cc33dd44 i-0123456789abcdef0 eni-0a1b2c3d4e5f60718 IPv4 {} {} {} {} {} {} {} {} {} {} {} ACCEPT {} OK eu-west-1 euw1-az1 egress 1 - -\n",
                t.0, t.2, t.1, t.3, t.0, t.2, t.4, w.bytes, w.packets, w.first_ns / S, w.last_ns / S, w.tcp_flags
            ));
        }
        text
    }

    /// GCP VPC Flow Logs entries as Cloud Logging exports them (JSON lines).
    pub fn gcp_json_lines(&self) -> String {
        let mut text = String::new();
        for ((t, _), w) in &self.windows {
            let entry = json!({
                "insertId": format!("{:x}", w.first_ns),
                "jsonPayload": {
                    "connection": {
                        "src_ip": t.0.to_string(), "src_port": t.1,
                        "dest_ip": t.2.to_string(), "dest_port": t.3, "protocol": t.4,
                    },
                    "bytes_sent": w.bytes.to_string(),
                    "packets_sent": w.packets.to_string(),
                    "start_time": rfc3339(w.first_ns),
                    "end_time": rfc3339(w.last_ns),
                    "reporter": "SRC",
                },
                "logName": "projects/sensor-test/logs/compute.googleapis.com%2Fvpc_flows",
                "resource": {"type": "gce_subnetwork"},
                "timestamp": rfc3339(w.last_ns),
            });
            text.push_str(&entry.to_string());
            text.push('\n');
        }
        text
    }

    /// An Azure VNet flow log (version 4) document: per connection a `B` tuple at its first
    /// packet, a `C` tuple at the end of each window it was active in with both directions'
    /// counts of that window, the last one `E` at its last packet.
    pub fn azure_vnet_v4(&self) -> String {
        let mut tuples: Vec<(u64, String)> = Vec::new();
        for (init, _) in self.initiators.values() {
            let rev: Tuple = (init.2, init.3, init.0, init.1, init.4);
            let mut per_window: BTreeMap<u64, (Window, Window)> = BTreeMap::new();
            for ((t, i), w) in &self.windows {
                if t == init {
                    per_window.entry(*i).or_default().0 = w.clone();
                } else if *t == rev {
                    per_window.entry(*i).or_default().1 = w.clone();
                }
            }
            let head = format!("{},{},{},{},{}", init.0, init.2, init.1, init.3, init.4);
            let first = per_window
                .values()
                .map(|(a, b)| {
                    if a.packets > 0 {
                        a.first_ns
                    } else {
                        b.first_ns
                    }
                })
                .min()
                .unwrap_or(0);
            tuples.push((
                first,
                format!("{},{head},O,B,NX,0,0,0,0", first / 1_000_000),
            ));
            let n = per_window.len();
            for (j, (i, (a, b))) in per_window.iter().enumerate() {
                // Updates are logged at the end of each interval; the last one, `E`, when the
                // connection ended (its last packet).
                let (at, state) = if j + 1 == n {
                    (a.last_ns.max(b.last_ns), "E")
                } else {
                    ((i + 1) * self.window_ns, "C")
                };
                tuples.push((
                    at,
                    format!(
                        "{},{head},O,{state},NX,{},{},{},{}",
                        at / 1_000_000,
                        a.packets,
                        a.bytes,
                        b.packets,
                        b.bytes
                    ),
                ));
            }
        }
        tuples.sort();
        let flow_tuples: Vec<String> = tuples.into_iter().map(|(_, t)| t).collect();
        json!({"records": [{
            "time": rfc3339(self.last_ns),
            "flowLogVersion": 4,
            "flowLogGUID": "66aa66aa-bb77-cc88-dd99-00ee00ee00ee",
            "macAddress": "00224871C205",
            "category": "FlowLogFlowEvent",
            "flowLogResourceID": "/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/NETWORKWATCHERRG/PROVIDERS/MICROSOFT.NETWORK/NETWORKWATCHERS/NETWORKWATCHER_EASTUS/FLOWLOGS/SENSORTEST",
            "targetResourceID": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sensor/providers/Microsoft.Network/virtualNetworks/sensor-vnet",
            "operationName": "FlowLogFlowEvent",
            "flowRecords": {"flows": [{
                "aclID": "00aa00aa-bb11-cc22-dd33-44ee44ee44ee",
                "flowGroups": [{"rule": "DefaultRule_AllowInternetOutBound", "flowTuples": flow_tuples}]
            }]}
        }]})
        .to_string()
    }
}

/// A Route 53 Resolver query log entry (JSON line) answering `name` with `addr` at `ts_ns`.
pub fn route53_answer(name: &str, addr: IpAddr, client: IpAddr, ts_ns: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ts_ns / S) as i64).expect("time");
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    json!({
        "version": "1.100000", "account_id": "123456789012", "region": "eu-west-1",
        "vpc_id": "vpc-0aa11bb22", "query_timestamp": t.format(&f).expect("format"),
        "query_name": format!("{name}."), "query_type": if addr.is_ipv4() { "A" } else { "AAAA" },
        "query_class": "IN", "rcode": "NOERROR",
        "answers": [{"Rdata": addr.to_string(), "Type": if addr.is_ipv4() { "A" } else { "AAAA" }, "Class": "IN"}],
        "srcaddr": client.to_string(), "srcport": "53124", "transport": "UDP",
        "srcids": {"instance": "i-0123456789abcdef0"}
    })
    .to_string()
}

/// (rule, client ip, server ip, server port) of each opened alarm of `rules`: what a flow
/// source must agree on with the capture's replay.
pub fn opened(
    alarms: &[serde_json::Value],
    rules: &[&str],
) -> std::collections::BTreeSet<(String, String, String, u64)> {
    alarms
        .iter()
        .filter(|a| {
            a["event"]["action"] == "opened"
                && rules.contains(&a["rule"]["id"].as_str().unwrap_or(""))
        })
        .map(|a| {
            (
                a["rule"]["id"].as_str().unwrap_or("").to_string(),
                a["source"]["ip"].as_str().unwrap_or("").to_string(),
                a["destination"]["ip"].as_str().unwrap_or("").to_string(),
                a["destination"]["port"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The last reported duration (ns) of `rule`'s alarm.
pub fn final_duration(alarms: &[serde_json::Value], rule: &str) -> u64 {
    alarms
        .iter()
        .rev()
        .find(|a| a["rule"]["id"] == rule)
        .and_then(|a| a["event"]["duration"].as_u64())
        .unwrap_or_else(|| panic!("no {rule} alarm in {alarms:#?}"))
}

/// Asserts `alarms` from telemetry `name` (stderr `stderr`) open the replay's alarms of
/// `rules` on the same endpoints, with final durations within `tolerance_ns` (one record
/// interval), and say their telemetry and its resolution.
pub fn assert_like_replay(
    name: &str,
    alarms: &[serde_json::Value],
    replay: &[serde_json::Value],
    rules: &[&str],
    tolerance_ns: u64,
    stderr: &str,
) {
    assert_eq!(
        opened(alarms, rules),
        opened(replay, rules),
        "{name}: {stderr}\n{alarms:#?}"
    );
    for rule in rules {
        let (got, exp) = (final_duration(alarms, rule), final_duration(replay, rule));
        assert!(
            got.abs_diff(exp) <= tolerance_ns,
            "{name} {rule}: duration {got} ns, replay {exp} ns"
        );
    }
    for a in alarms {
        assert_eq!(a["sensor"]["telemetry"], name, "{a}");
        assert_eq!(
            a["sensor"]["telemetry_resolution_s"],
            tolerance_ns / S,
            "{a}"
        );
    }
}
