//! Flow telemetry that others aggregated: cloud flow logs and NetFlow/IPFIX, turned
//! into the same flows the datapath counts.
//!
//! An exporter does not hand over packets but *aggregate records*: what it counted for one
//! 5-tuple (often one direction of it) over an aggregation interval. This module holds the
//! vocabulary every record source shares, so a collector reuses it whole:
//!
//! - [`Aggregate`]: one record, normalised (addresses, ports, packets and bytes per
//!   direction, the interval, TCP flags, the exporter's own word on who initiated, and the
//!   observation point that reported it);
//! - one parser per format: [`aws`] (VPC Flow Logs, default and custom formats), [`azure`]
//!   (VNet flow logs v4, NSG flow logs v2), [`gcp`] (VPC Flow Logs as exported from Cloud
//!   Logging), [`dnslog`] (Route 53 Resolver and Cloud DNS query logs), [`netflow`] (NetFlow
//!   v5/v9 and IPFIX datagrams);
//! - [`files`]: files, directories (the S3 export layout), gzip, format detection, and the
//!   per-file report of malformed records;
//! - [`stitch`]: the [`stitch::Stitcher`] that joins records back into flows and hands the
//!   engine cumulative [`crate::source::FlowUpdate`]s and ticks on the records' own clock.
//!
//! It never decides anything about a flow beyond its identity and orientation evidence: the
//! engine does, with the same detectors as for packets. It never trusts a field it did not
//! bound: every number is parsed with overflow checks and every record that does not parse is
//! counted, never fatal.

pub mod aws;
pub mod azure;
pub mod dnslog;
pub mod files;
pub mod gcp;
pub mod netflow;
pub mod settings;
pub mod stitch;

use std::{
    hash::{Hash, Hasher},
    net::IpAddr,
};

use sensor_common::Addr;

use crate::source::Resolution;

/// The telemetry a flow came from: `sensor.telemetry` of its alarms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Telemetry {
    AwsVpc,
    AzureVnet,
    AzureNsg,
    GcpVpc,
    NetflowV5,
    NetflowV9,
    Ipfix,
}

impl Telemetry {
    pub fn name(self) -> &'static str {
        match self {
            Telemetry::AwsVpc => "aws-vpc",
            Telemetry::AzureVnet => "azure-vnet",
            Telemetry::AzureNsg => "azure-nsg",
            Telemetry::GcpVpc => "gcp-vpc",
            Telemetry::NetflowV5 => "netflow-v5",
            Telemetry::NetflowV9 => "netflow-v9",
            Telemetry::Ipfix => "ipfix",
        }
    }
}

/// Who began the connection, by the exporter's own word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Initiator {
    /// The record does not say (one direction of traffic, no state).
    #[default]
    Unknown,
    /// The exporter tracked the connection and oriented the record by it: `src` began it.
    Src,
}

/// One aggregate record, normalised. Counts are for the interval only (deltas), never
/// cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aggregate {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// Sent by `src` to `dst` during the interval.
    pub packets: u64,
    pub bytes: u64,
    /// Sent by `dst` to `src` (biflow formats; 0 otherwise).
    pub rev_packets: u64,
    pub rev_bytes: u64,
    /// First and last packet of the interval (or the record's time twice, when the format
    /// has one timestamp), ns since the Unix epoch.
    pub start_ns: u64,
    pub end_ns: u64,
    /// TCP flags OR-ed over the interval, sent by `src` (0 when the format has none), and by
    /// `dst` (biflow formats).
    pub tcp_flags: u8,
    pub rev_tcp_flags: u8,
    pub initiator: Initiator,
    /// Who reported it (an interface, a reporting VM, a NIC), hashed: the same flow reported
    /// by two observation points is counted once.
    pub observer: u64,
}

/// An observation point's name, hashed (SipHash with fixed keys: the same across runs).
pub fn observer_id(parts: &[&str]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// One parsed item in time order: a flow record or a logged DNS resolution.
#[derive(Clone, Debug)]
pub enum Item {
    Flow(Aggregate),
    Dns(Resolution),
}

impl Item {
    /// When the item happened (a record's start, a query's time): the order the engine sees.
    pub fn time(&self) -> u64 {
        match self {
            Item::Flow(a) => a.start_ns,
            Item::Dns(r) => r.ts_ns,
        }
    }
}

/// What one file held besides its items, reported once per file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileCounts {
    /// Records parsed (flow records and DNS log entries).
    pub records: u64,
    /// Records that did not parse, and where the first of them is.
    pub malformed: u64,
    pub first_malformed: Option<(u64, String)>,
    /// AWS `NODATA` (no traffic in the interval) and `SKIPDATA` (records lost by the exporter).
    pub nodata: u64,
    pub skipdata: u64,
    /// Records of traffic the cloud's filter denied (still flows: an attempt is evidence).
    pub rejected: u64,
    /// DNS log entries without an address to bind (other types, errors).
    pub dns_unbound: u64,
}

impl FileCounts {
    /// Counts a malformed record at `line` (1-based; for JSON documents the line its text
    /// starts on) and why.
    pub fn malformed(&mut self, line: u64, why: impl Into<String>) {
        self.malformed += 1;
        if self.first_malformed.is_none() {
            self.first_malformed = Some((line, why.into()));
        }
    }

    pub fn add(&mut self, o: &FileCounts) {
        self.records += o.records;
        self.malformed += o.malformed;
        self.nodata += o.nodata;
        self.skipdata += o.skipdata;
        self.rejected += o.rejected;
        self.dns_unbound += o.dns_unbound;
    }
}

/// An address as the agent's address words (IPv4 mapped into IPv6).
pub fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => sensor_common::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// An IP address field (IPv4 or IPv6 text).
pub fn parse_addr(s: &str) -> Result<Addr, String> {
    s.parse::<IpAddr>()
        .map(addr_of)
        .map_err(|_| format!("not an IP address: {}", shown(s)))
}

/// A decimal field, bounded by the type.
pub fn parse_num<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String> {
    s.parse::<T>()
        .map_err(|_| format!("{what} is not a number in range: {}", shown(s)))
}

/// Unix seconds to ns, refusing what overflows.
pub fn secs_ns(s: u64) -> Result<u64, String> {
    s.checked_mul(1_000_000_000)
        .ok_or_else(|| format!("time {s} s is out of range"))
}

/// An RFC 3339 timestamp to ns since the Unix epoch.
pub fn rfc3339_ns(s: &str) -> Result<u64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("not an RFC 3339 time: {}", shown(s)))?;
    u64::try_from(t.unix_timestamp_nanos()).map_err(|_| format!("time before 1970: {}", shown(s)))
}

/// A field's text for an error message: bounded, control characters escaped (the text comes
/// from the input file).
pub fn shown(s: &str) -> String {
    const MAX: usize = 60;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// An IP protocol number or name as the clouds write them (`6`, `TCP`, `T`).
pub fn parse_proto(s: &str) -> Result<u8, String> {
    match s {
        "T" | "TCP" | "tcp" => Ok(6),
        "U" | "UDP" | "udp" => Ok(17),
        "ICMP" | "icmp" => Ok(1),
        _ => parse_num("protocol", s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_with_bounds_and_errors_name_the_text() {
        assert_eq!(
            parse_addr("10.0.0.1"),
            Ok(sensor_common::ipv4_mapped([10, 0, 0, 1]))
        );
        assert!(parse_addr("2001:db8::1").is_ok());
        assert!(parse_addr("10.0.0.256").unwrap_err().contains("10.0.0.256"));
        assert_eq!(parse_num::<u16>("port", "65535"), Ok(65535));
        assert!(parse_num::<u16>("port", "65536").is_err());
        assert!(secs_ns(u64::MAX / 2).is_err());
        assert_eq!(rfc3339_ns("1970-01-01T00:00:01.5Z"), Ok(1_500_000_000));
        assert!(rfc3339_ns("1969-12-31T23:59:59Z").is_err());
        assert_eq!(parse_proto("T"), Ok(6));
        assert_eq!(parse_proto("17"), Ok(17));
        assert!(parse_proto("300").is_err());
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        assert!(shown(&"x".repeat(100)).ends_with("…\""));
    }

    #[test]
    fn observers_hash_stably() {
        assert_eq!(observer_id(&["eni-1"]), observer_id(&["eni-1"]));
        assert_ne!(observer_id(&["eni-1"]), observer_id(&["eni-2"]));
    }
}
