//! Azure flow logs: virtual network flow logs (`flowLogVersion` 4) and network security group
//! flow logs (version 2), JSON documents of `records` whose `flowTuples` are comma-separated.
//!
//! Field definitions: <https://learn.microsoft.com/azure/network-watcher/vnet-flow-logs-overview#log-format>
//! and <https://learn.microsoft.com/azure/network-watcher/nsg-flow-logs-overview#log-format>.
//! A tuple is one connection as the platform tracks it, oriented by its initiator (source
//! first), with a state: `B` begin (no counts), `C` continuing and `E` end (packets and bytes
//! each way since the previous update), `D` denied (VNet flow logs; NSG logs say `D` in their
//! decision field). VNet tuples:
//! `time ms,src,dst,sport,dport,protocol number,I|O,B|C|E|D,encryption,pkts s->d,bytes s->d,pkts d->s,bytes d->s`;
//! NSG version 2 tuples:
//! `time s,src,dst,sport,dport,T|U,I|O,A|D,B|C|E,pkts s->d,bytes s->d,pkts d->s,bytes d->s`.
//! The tuples carry one time each: a record's start and end are that time.
//!
//! The document is read with serde into typed records (unknown fields ignored); a tuple that
//! does not parse is counted with the line its text is on.

use serde::Deserialize;

use crate::source::records::{
    observer_id, parse_addr, parse_num, parse_proto, secs_ns, shown, Aggregate, FileCounts,
    Initiator, Telemetry,
};

#[derive(Deserialize)]
struct Document {
    records: Vec<Record>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(default)]
    flow_log_version: Option<u32>,
    #[serde(default)]
    mac_address: Option<String>,
    #[serde(default)]
    flow_records: Option<FlowRecords>,
    #[serde(default)]
    properties: Option<NsgProperties>,
}

#[derive(Deserialize)]
struct FlowRecords {
    #[serde(default)]
    flows: Vec<VnetFlow>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VnetFlow {
    #[serde(default)]
    flow_groups: Vec<VnetGroup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VnetGroup {
    #[serde(default)]
    flow_tuples: Vec<String>,
}

#[derive(Deserialize)]
struct NsgProperties {
    #[serde(rename = "Version")]
    version: Option<u32>,
    #[serde(default)]
    flows: Vec<NsgRule>,
}

#[derive(Deserialize)]
struct NsgRule {
    #[serde(default)]
    flows: Vec<NsgMac>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NsgMac {
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    flow_tuples: Vec<String>,
}

/// Which of the two documents `text` is, when it is either: detection for `--format auto`.
pub fn detect(text: &str) -> Option<Telemetry> {
    let doc: Document = serde_json::from_str(text).ok()?;
    let first = doc.records.first()?;
    if first.flow_log_version.is_some() || first.flow_records.is_some() {
        Some(Telemetry::AzureVnet)
    } else if first.properties.is_some() {
        Some(Telemetry::AzureNsg)
    } else {
        None
    }
}

/// Fields of a tuple of either kind.
const TUPLE_FIELDS: usize = 13;

/// A count field; empty (a `B` tuple) is zero.
fn count(what: &str, s: &str) -> Result<u64, String> {
    if s.is_empty() {
        Ok(0)
    } else {
        parse_num(what, s)
    }
}

/// One tuple of `kind` from the NIC `mac`.
fn parse_tuple(kind: Telemetry, mac: &str, tuple: &str) -> Result<Option<Aggregate>, String> {
    let f: Vec<&str> = tuple.splitn(TUPLE_FIELDS + 1, ',').collect();
    if f.len() != TUPLE_FIELDS {
        return Err(format!(
            "flow tuple with {} fields, expected {TUPLE_FIELDS}",
            f.len()
        ));
    }
    let ts: u64 = parse_num("timestamp", f[0])?;
    let (ts_ns, proto, state) = match kind {
        Telemetry::AzureVnet => {
            let ns = ts
                .checked_mul(1_000_000)
                .ok_or_else(|| format!("timestamp {ts} ms is out of range"))?;
            (ns, parse_num::<u8>("protocol", f[5])?, f[7])
        }
        _ => (secs_ns(ts)?, parse_proto(f[5])?, f[8]),
    };
    match state {
        "B" | "C" | "E" | "D" => {}
        other => return Err(format!("unknown flow state {}", shown(other))),
    }
    let has_ports = proto == 6 || proto == 17 || proto == 132;
    let port = |s: &str| -> Result<u16, String> {
        if has_ports {
            parse_num("port", s)
        } else {
            Ok(0)
        }
    };
    Ok(Some(Aggregate {
        src: parse_addr(f[1])?,
        dst: parse_addr(f[2])?,
        src_port: port(f[3])?,
        dst_port: port(f[4])?,
        proto,
        packets: count("packets", f[9])?,
        bytes: count("bytes", f[10])?,
        rev_packets: count("packets", f[11])?,
        rev_bytes: count("bytes", f[12])?,
        start_ns: ts_ns,
        end_ns: ts_ns,
        initiator: Initiator::Src,
        observer: observer_id(&["azure", mac]),
        ..Aggregate::default()
    }))
}

/// The line `needle` first appears on in `text` (1-based), for reporting a bad tuple.
fn line_of(text: &str, needle: &str) -> u64 {
    match text.find(needle) {
        Some(at) => text[..at].matches('\n').count() as u64 + 1,
        None => 1,
    }
}

/// Parses a whole document of `kind`. `Err` when the text is not such a document at all.
pub fn parse(
    kind: Telemetry,
    text: &str,
    counts: &mut FileCounts,
    out: &mut Vec<Aggregate>,
) -> Result<(), String> {
    let doc: Document =
        serde_json::from_str(text).map_err(|e| format!("not an Azure flow log document: {e}"))?;
    let mut tuples: Vec<(&str, &str, bool)> = Vec::new();
    for r in &doc.records {
        let mac = r.mac_address.as_deref().unwrap_or("");
        match kind {
            Telemetry::AzureVnet => {
                let right = r.flow_log_version.is_none_or(|v| v == 4);
                for g in r
                    .flow_records
                    .iter()
                    .flat_map(|f| &f.flows)
                    .flat_map(|f| &f.flow_groups)
                {
                    tuples.extend(g.flow_tuples.iter().map(|t| (mac, t.as_str(), right)));
                }
            }
            _ => {
                let Some(p) = &r.properties else { continue };
                let right = p.version == Some(2);
                for m in p.flows.iter().flat_map(|f| &f.flows) {
                    let mac = m.mac.as_deref().unwrap_or(mac);
                    tuples.extend(m.flow_tuples.iter().map(|t| (mac, t.as_str(), right)));
                }
            }
        }
    }
    for (mac, tuple, right_version) in tuples {
        let parsed = if right_version {
            parse_tuple(kind, mac, tuple)
        } else {
            Err(format!("a {} record of another version", kind.name()))
        };
        match parsed {
            Ok(Some(a)) => {
                counts.records += 1;
                // The eighth field is the state `D` (VNet) or the decision `D` (NSG).
                if tuple.split(',').nth(7) == Some("D") {
                    counts.rejected += 1;
                }
                out.push(a);
            }
            Ok(None) => {}
            Err(why) => counts.malformed(line_of(text, tuple), why),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::ipv4_mapped;

    // Shaped like the published examples (vnet-flow-logs-overview, nsg-flow-logs-overview).
    const VNET: &str = r#"{"records":[{"time":"2022-09-14T09:00:52.5625085Z","flowLogVersion":4,
"flowLogGUID":"66aa66aa-bb77-cc88-dd99-00ee00ee00ee","macAddress":"112233445566",
"category":"FlowLogFlowEvent","operationName":"FlowLogFlowEvent","flowRecords":{"flows":[
{"aclID":"00aa00aa-bb11-cc22-dd33-44ee44ee44ee","flowGroups":[{"rule":"DefaultRule_AllowInternetOutBound",
"flowTuples":["1663146003599,10.0.0.6,192.0.2.180,23956,443,6,O,B,NX,0,0,0,0",
"1663146003606,10.0.0.6,192.0.2.180,23956,443,6,O,E,NX,3,767,2,1580",
"1663146003637,10.0.0.6,192.0.2.180,23956,443,6,O,X,NX,3,767,2,1580"]}]}]}}]}"#;

    const NSG: &str = r#"{"records":[{"time":"2018-11-13T12:00:35.3899262Z","systemId":"a0fca5ce",
"category":"NetworkSecurityGroupFlowEvent","operationName":"NetworkSecurityGroupFlowEvents",
"properties":{"Version":2,"flows":[{"rule":"DefaultRule_DenyAllInBound","flows":[{"mac":"000D3AF87856",
"flowTuples":["1542110377,94.102.49.190,10.5.16.4,28746,443,U,I,D,B,,,,",
"1542110424,176.119.4.10,10.5.16.4,56509,59336,T,I,A,E,1,66,1,66"]}]}]}}]}"#;

    #[test]
    fn vnet_tuples_carry_both_directions_and_the_initiator() {
        assert_eq!(detect(VNET), Some(Telemetry::AzureVnet));
        let (mut c, mut out) = (FileCounts::default(), Vec::new());
        parse(Telemetry::AzureVnet, VNET, &mut c, &mut out).expect("document");
        assert_eq!(out.len(), 2);
        let e = out[1];
        assert_eq!(e.src, ipv4_mapped([10, 0, 0, 6]));
        assert_eq!(
            (e.packets, e.bytes, e.rev_packets, e.rev_bytes),
            (3, 767, 2, 1580)
        );
        assert_eq!(e.start_ns, 1_663_146_003_606_000_000);
        assert_eq!(e.initiator, Initiator::Src);
        assert_eq!(c.malformed, 1, "state X");
        assert_eq!(c.first_malformed.as_ref().map(|m| m.0), Some(7));
    }

    #[test]
    fn nsg_v2_tuples_parse_with_empty_counts_at_begin() {
        assert_eq!(detect(NSG), Some(Telemetry::AzureNsg));
        let (mut c, mut out) = (FileCounts::default(), Vec::new());
        parse(Telemetry::AzureNsg, NSG, &mut c, &mut out).expect("document");
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].proto, out[0].packets), (17, 0));
        assert_eq!((out[1].proto, out[1].rev_bytes), (6, 66));
        assert_eq!(c.malformed, 0);
        assert!(parse(Telemetry::AzureNsg, "{\"x\":1}", &mut c, &mut out).is_err());
    }
}
