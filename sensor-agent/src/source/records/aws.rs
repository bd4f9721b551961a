//! AWS VPC Flow Logs: space-separated records, in the default format (version 2) or a
//! custom format named by the header line that S3 exports start with.
//!
//! Field definitions: <https://docs.aws.amazon.com/vpc/latest/userguide/flow-log-records.html>.
//! Each record is one direction of traffic (`srcaddr` to `dstaddr`) seen at one network
//! interface over an aggregation interval of at most 1 or 10 minutes; `start` and `end` are
//! Unix seconds of the first and last packet in it. `NODATA` and `SKIPDATA` records carry no
//! flow (`-` fields) and are counted. Where a custom format has `pkt-srcaddr` and
//! `pkt-dstaddr` (version 3), they are used: they are the packet's own addresses, where
//! `srcaddr`/`dstaddr` may be an interface's address in front of it. `tcp-flags` (version 3)
//! is the OR of the FIN, SYN, RST and SYN-ACK flags the source sent in the interval.
//! `flow-direction` and `traffic-path` (version 5) say where the packets crossed the
//! interface, not who opened the connection, so they orient nothing.
//!
//! It never reads beyond a record's fields: a record with too few or too many fields, or a
//! field out of range, is counted as malformed with its line.

use crate::source::records::{
    observer_id, parse_addr, parse_num, parse_proto, secs_ns, shown, Aggregate, FileCounts,
};

/// The default format's fields (version 2), in order: also what a file without a header
/// line is read as.
pub const DEFAULT_FORMAT: &[&str] = &[
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
];

/// Fields a header must name for its records to be flows.
const REQUIRED: &[&str] = &[
    "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "packets", "bytes", "start", "end",
];

/// Most fields a format can have (AWS defines fewer than 50).
const MAX_FIELDS: usize = 64;

/// Where each field the parser uses sits in a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    fields: usize,
    src: usize,
    dst: usize,
    pkt_src: Option<usize>,
    pkt_dst: Option<usize>,
    sport: usize,
    dport: usize,
    proto: usize,
    packets: usize,
    bytes: usize,
    start: usize,
    end: usize,
    interface: Option<usize>,
    instance: Option<usize>,
    tcp_flags: Option<usize>,
    action: Option<usize>,
    log_status: Option<usize>,
}

/// A field name as AWS writes them: lower case letters, digits and `-`.
fn is_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Layout {
    /// The layout a header line names, or `None` when the line is not a header (a record, or
    /// not a flow log). Fields the parser does not use are allowed and skipped.
    pub fn from_header(line: &str) -> Option<Layout> {
        let names: Vec<&str> = line.split_ascii_whitespace().collect();
        if names.is_empty() || names.len() > MAX_FIELDS || !names.iter().all(|n| is_field_name(n)) {
            return None;
        }
        let at = |name: &str| names.iter().position(|n| *n == name);
        if !REQUIRED.iter().all(|r| at(r).is_some()) {
            return None;
        }
        Some(Layout {
            fields: names.len(),
            src: at("srcaddr")?,
            dst: at("dstaddr")?,
            pkt_src: at("pkt-srcaddr"),
            pkt_dst: at("pkt-dstaddr"),
            sport: at("srcport")?,
            dport: at("dstport")?,
            proto: at("protocol")?,
            packets: at("packets")?,
            bytes: at("bytes")?,
            start: at("start")?,
            end: at("end")?,
            interface: at("interface-id"),
            instance: at("instance-id"),
            tcp_flags: at("tcp-flags"),
            action: at("action"),
            log_status: at("log-status"),
        })
    }

    /// The default format (version 2).
    pub fn default_format() -> Layout {
        Layout::from_header(&DEFAULT_FORMAT.join(" ")).expect("the default format is a header")
    }

    /// Whether `line` looks like a default-format record (a file without a header line, as
    /// CloudWatch Logs exports are): 14 fields, version 2.
    pub fn looks_like_default_record(line: &str) -> bool {
        let mut f = line.split_ascii_whitespace();
        f.next() == Some("2") && f.count() == DEFAULT_FORMAT.len() - 1
    }
}

/// What one line was.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Flow(Aggregate),
    /// NODATA, SKIPDATA, or nothing.
    Counted,
}

/// Parses one record line with `layout`, counting what is not a flow into `counts`.
pub fn parse_line(layout: &Layout, line: &str, counts: &mut FileCounts) -> Result<Line, String> {
    let mut fields = [""; MAX_FIELDS];
    let mut n = 0;
    for f in line.split_ascii_whitespace() {
        if n == layout.fields {
            return Err(format!(
                "more than the {} fields of the format",
                layout.fields
            ));
        }
        fields[n] = f;
        n += 1;
    }
    if n == 0 {
        return Ok(Line::Counted);
    }
    if n != layout.fields {
        return Err(format!("{n} fields, the format has {}", layout.fields));
    }
    if let Some(i) = layout.log_status {
        match fields[i] {
            "OK" | "-" => {}
            "NODATA" => {
                counts.nodata += 1;
                return Ok(Line::Counted);
            }
            "SKIPDATA" => {
                counts.skipdata += 1;
                return Ok(Line::Counted);
            }
            other => return Err(format!("unknown log-status {}", shown(other))),
        }
    }
    let addr = |main: usize, pkt: Option<usize>| match pkt.map(|i| fields[i]) {
        Some(p) if p != "-" => parse_addr(p),
        _ => parse_addr(fields[main]),
    };
    let proto = parse_proto(fields[layout.proto])?;
    let has_ports = proto == 6 || proto == 17 || proto == 132;
    let port = |i: usize| -> Result<u16, String> {
        if has_ports {
            parse_num("port", fields[i])
        } else {
            Ok(0)
        }
    };
    let start = secs_ns(parse_num("start", fields[layout.start])?)?;
    let end = secs_ns(parse_num("end", fields[layout.end])?)?;
    if end < start {
        return Err("end before start".into());
    }
    let tcp_flags = match layout.tcp_flags.map(|i| fields[i]) {
        Some(f) if f != "-" => parse_num::<u8>("tcp-flags", f)?,
        _ => 0,
    };
    if let Some(i) = layout.action {
        if fields[i] == "REJECT" {
            counts.rejected += 1;
        }
    }
    let observer = match (layout.interface, layout.instance) {
        (Some(i), _) if fields[i] != "-" => observer_id(&["aws", fields[i]]),
        (_, Some(i)) if fields[i] != "-" => observer_id(&["aws", fields[i]]),
        _ => 0,
    };
    Ok(Line::Flow(Aggregate {
        src: addr(layout.src, layout.pkt_src)?,
        dst: addr(layout.dst, layout.pkt_dst)?,
        src_port: port(layout.sport)?,
        dst_port: port(layout.dport)?,
        proto,
        packets: parse_num("packets", fields[layout.packets])?,
        bytes: parse_num("bytes", fields[layout.bytes])?,
        start_ns: start,
        end_ns: end,
        tcp_flags,
        observer,
        ..Aggregate::default()
    }))
}

/// Parses a whole file's text: a header line (or none: the default format), then records.
/// Returns `None` when the text is not an AWS flow log at all.
pub fn parse(text: &str, counts: &mut FileCounts, out: &mut Vec<Aggregate>) -> Option<()> {
    let mut lines = text.lines().enumerate();
    let (layout, first_record) = loop {
        let (i, first) = lines.next()?;
        if first.trim().is_empty() {
            continue;
        }
        if let Some(l) = Layout::from_header(first) {
            break (l, None);
        }
        if Layout::looks_like_default_record(first) {
            break (Layout::default_format(), Some((i, first)));
        }
        return None;
    };
    for (i, line) in first_record.into_iter().chain(lines) {
        match parse_line(&layout, line, counts) {
            Ok(Line::Flow(a)) => {
                counts.records += 1;
                out.push(a);
            }
            Ok(Line::Counted) => {}
            Err(why) => counts.malformed(i as u64 + 1, why),
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::ipv4_mapped;

    // From the published examples (flow-logs-records-examples).
    const DEFAULT: &str = "\
2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK
2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA
2 123456789010 eni-11111111111111111 - - - - - - - 1431280876 1431280934 - SKIPDATA
";

    #[test]
    fn the_default_format_without_a_header_and_nodata_skipdata_counted() {
        let (mut c, mut out) = (FileCounts::default(), Vec::new());
        assert!(parse(DEFAULT, &mut c, &mut out).is_some());
        assert_eq!(out.len(), 1);
        let a = out[0];
        assert_eq!(a.src, ipv4_mapped([172, 31, 16, 139]));
        assert_eq!((a.src_port, a.dst_port, a.proto), (20641, 22, 6));
        assert_eq!((a.packets, a.bytes), (20, 4249));
        assert_eq!(a.start_ns, 1_418_530_010_000_000_000);
        assert_eq!((c.records, c.nodata, c.skipdata, c.malformed), (1, 1, 1, 0));
    }

    #[test]
    fn a_custom_v5_header_uses_packet_addresses_and_flags() {
        let text = "version vpc-id subnet-id instance-id interface-id account-id type srcaddr dstaddr srcport dstport pkt-srcaddr pkt-dstaddr protocol bytes packets start end action tcp-flags log-status flow-direction traffic-path\n\
5 vpc-1 subnet-1 i-1 eni-1 123 IPv4 10.0.0.5 10.0.1.9 50000 3333 10.0.0.5 203.0.113.7 6 120 2 1700000000 1700000060 ACCEPT 2 OK egress 8\n\
5 vpc-1 subnet-1 i-1 eni-1 123 IPv4 10.0.0.5 10.0.1.9 50000 3333 10.0.0.5 203.0.113.7 6 120 two 1700000000 1700000060 ACCEPT 2 OK egress 8\n\
5 vpc-1 subnet-1 i-1 eni-1 123 IPv4 10.0.0.5\n";
        let (mut c, mut out) = (FileCounts::default(), Vec::new());
        assert!(parse(text, &mut c, &mut out).is_some());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].dst, ipv4_mapped([203, 0, 113, 7]), "pkt-dstaddr");
        assert_eq!(out[0].tcp_flags, 2);
        assert_eq!(c.malformed, 2);
        let (line, why) = c.first_malformed.expect("first bad line");
        assert_eq!(line, 3);
        assert!(why.contains("packets"), "{why}");
    }

    #[test]
    fn text_that_is_no_flow_log_is_refused() {
        let (mut c, mut out) = (FileCounts::default(), Vec::new());
        assert!(parse("hello world\n2 3 4\n", &mut c, &mut out).is_none());
        assert!(parse("", &mut c, &mut out).is_none());
        assert!(Layout::from_header("version srcaddr dstaddr").is_none());
    }
}
