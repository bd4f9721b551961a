//! NetFlow v5, v9 and IPFIX datagrams (RFC 3954, RFC 7011 with RFC 5103 biflows) decoded into
//! [`Aggregate`] records for the [`super::stitch::Stitcher`].
//!
//! Why a module of its own: routers and probes (softflowd, nprobe, switches) already export
//! these; `sensor-agent collect` receives them over UDP and hands the records to the same
//! stitcher and engine as cloud flow logs. Wire decoding and template state are the
//! `netflow_parser` crate's ([`AutoScopedParser`]: templates kept per exporter address and
//! observation domain / source id, template withdrawal and refresh, bounded record counts,
//! LRU-bounded exporters and templates); this module reads the information elements the
//! engine needs out of its records, puts times on the Unix clock, scales sampled counts, and
//! counts sequence gaps per exporter.
//!
//! It must never trust a datagram: every datagram is hostile UDP. It never panics on one,
//! bounds what it keeps per exporter (the crate's LRU and [`MAX_EXPORTERS`]), and a datagram
//! that does not decode is counted, never fatal. It never reads a clock: times come from the
//! datagrams.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use netflow_parser::{
    scoped_parser::AutoScopedParser,
    variable_versions::ipfix::lookup::{IANAIPFixField, ReverseInformationElement},
    FieldValue, IpfixField, NetflowPacket, V9Field,
};

use crate::source::records::{addr_of, observer_id, Aggregate, Telemetry};

/// Exporters (address, domain) whose sequence and sampling state is kept at most; beyond it
/// the state is cleared (a flood of spoofed sources cannot grow memory).
pub const MAX_EXPORTERS: usize = 4096;

/// What the decoder counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeCounters {
    pub datagrams: u64,
    /// Datagrams (or their tails) that did not decode.
    pub malformed: u64,
    pub records: u64,
    /// Data records without the fields of a flow (addresses, protocol, times).
    pub incomplete: u64,
    /// Data records of templates not (yet) received.
    pub no_template: u64,
    /// Records missed by the exporter's sequence numbers (v5 and IPFIX count records, v9
    /// datagrams), summed over exporters.
    pub sequence_gaps: u64,
    /// Records whose counts were scaled by a sampling rate.
    pub sampled: u64,
    /// The largest sampling rate applied (1: none).
    pub max_sampling: u32,
}

#[derive(Default)]
struct ExporterState {
    next_seq: Option<u32>,
    /// 1-in-N packet sampling announced by options data (0: none announced).
    sampling: u32,
    /// systemInitTimeMilliseconds (IPFIX), for sysUpTime-relative record times.
    init_ms: Option<u64>,
}

/// The collector's decoding state for every exporter.
pub struct Decoder {
    parser: AutoScopedParser,
    exporters: HashMap<(IpAddr, u32, u16), ExporterState>,
    pub counters: DecodeCounters,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The fields of one data record the engine uses, by information element.
#[derive(Default)]
struct Fields {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: u16,
    dport: u16,
    proto: Option<u8>,
    bytes: u64,
    packets: u64,
    rev_bytes: u64,
    rev_packets: u64,
    flags: u8,
    rev_flags: u8,
    /// Absolute start and end, ms since the epoch.
    start_ms: Option<u64>,
    end_ms: Option<u64>,
    /// sysUpTime-relative start and end, ms.
    start_up: Option<u64>,
    end_up: Option<u64>,
    sampling: u32,
    init_ms: Option<u64>,
}

impl Fields {
    /// One field by its IANA element id (the same ids in v9 for these elements); `reverse`
    /// for RFC 5103 reverse elements (enterprise 29305).
    fn set(&mut self, id: u16, reverse: bool, v: &FieldValue) {
        let num = || v.as_u64();
        let ip = || IpAddr::try_from(v).ok();
        if reverse {
            match id {
                1 => self.rev_bytes = num().unwrap_or(0),
                2 => self.rev_packets = num().unwrap_or(0),
                6 => self.rev_flags = tcp_flags(v),
                _ => {}
            }
            return;
        }
        match id {
            1 | 85 => self.bytes = num().unwrap_or(self.bytes),
            2 | 86 => self.packets = num().unwrap_or(self.packets),
            4 => self.proto = v.as_u8(),
            6 => self.flags = tcp_flags(v),
            7 => self.sport = v.as_u16().unwrap_or(0),
            11 => self.dport = v.as_u16().unwrap_or(0),
            8 | 27 => self.src = ip(),
            12 | 28 => self.dst = ip(),
            21 => self.end_up = num(),
            22 => self.start_up = num(),
            150..=157 => {
                // Seconds, milliseconds, microseconds, nanoseconds: as_u64 gives ms.
                if id % 2 == 0 {
                    self.start_ms = num();
                } else {
                    self.end_ms = num();
                }
            }
            160 => self.init_ms = num(),
            34 | 50 | 305 => {
                self.sampling = num().map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
            }
            _ => {}
        }
    }
}

fn tcp_flags(v: &FieldValue) -> u8 {
    match v {
        FieldValue::TcpControlBits(b, _) => (u16::from(*b) & 0xff) as u8,
        other => other.as_u64().map_or(0, |n| (n & 0xff) as u8),
    }
}

fn ipfix_id(f: &IpfixField) -> Option<(u16, bool)> {
    use IANAIPFixField as I;
    use ReverseInformationElement as R;
    let id = match f {
        IpfixField::IANA(i) => match i {
            I::OctetDeltaCount => 1,
            I::PacketDeltaCount => 2,
            I::ProtocolIdentifier => 4,
            I::TcpControlBits => 6,
            I::SourceTransportPort => 7,
            I::SourceIpv4address => 8,
            I::DestinationTransportPort => 11,
            I::DestinationIpv4address => 12,
            I::FlowEndSysUpTime => 21,
            I::FlowStartSysUpTime => 22,
            I::SourceIpv6address => 27,
            I::DestinationIpv6address => 28,
            I::SamplingInterval => 34,
            I::SamplerRandomInterval => 50,
            I::OctetTotalCount => 85,
            I::PacketTotalCount => 86,
            I::FlowStartSeconds => 150,
            I::FlowEndSeconds => 151,
            I::FlowStartMilliseconds => 152,
            I::FlowEndMilliseconds => 153,
            I::FlowStartMicroseconds => 154,
            I::FlowEndMicroseconds => 155,
            I::FlowStartNanoseconds => 156,
            I::FlowEndNanoseconds => 157,
            I::SystemInitTimeMilliseconds => 160,
            I::SamplingPacketInterval => 305,
            _ => return None,
        },
        IpfixField::ReverseInformationElement(r) => {
            return match r {
                R::ReverseOctetDeltaCount => Some((1, true)),
                R::ReversePacketDeltaCount => Some((2, true)),
                R::ReverseTcpControlBits => Some((6, true)),
                _ => None,
            }
        }
        _ => return None,
    };
    Some((id, false))
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            parser: AutoScopedParser::new(),
            exporters: HashMap::new(),
            counters: DecodeCounters::default(),
        }
    }

    fn state(&mut self, key: (IpAddr, u32, u16)) -> &mut ExporterState {
        if self.exporters.len() >= MAX_EXPORTERS && !self.exporters.contains_key(&key) {
            self.exporters.clear();
        }
        self.exporters.entry(key).or_default()
    }

    /// Counts a gap when `seq` is not the expected next number; `advance` is what this
    /// datagram adds to the sequence (records for v5/IPFIX, 1 for v9).
    fn sequence(&mut self, key: (IpAddr, u32, u16), seq: u32, advance: u32) {
        let st = self.state(key);
        if let Some(want) = st.next_seq {
            let gap = seq.wrapping_sub(want);
            // A number behind the expected one is a reordered or repeated datagram, not loss.
            if gap != 0 && gap < u32::MAX / 2 {
                self.counters.sequence_gaps += u64::from(gap);
            }
        }
        let st = self.state(key);
        st.next_seq = Some(seq.wrapping_add(advance));
    }

    /// Decodes one datagram from `from` into `out`; the version it carried, `None` when it
    /// did not decode.
    pub fn decode(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        out: &mut Vec<Aggregate>,
    ) -> Option<Telemetry> {
        self.counters.datagrams += 1;
        let parsed = self.parser.parse_from_source(from, data);
        if parsed.error.is_some() {
            self.counters.malformed += 1;
        }
        let ip = from.ip();
        let mut version = None;
        for packet in parsed.packets {
            match packet {
                NetflowPacket::V5(v5) => {
                    version = Some(Telemetry::NetflowV5);
                    let h = v5.header;
                    let key = (ip, u32::from(h.engine_id), 5);
                    let n = u32::try_from(v5.flowsets.len()).unwrap_or(u32::MAX);
                    self.sequence(key, h.flow_sequence, n);
                    // Top two bits: the sampling mode; the rest the interval.
                    let sampling = u32::from(h.sampling_interval & 0x3fff);
                    let now_ms = u64::from(h.unix_secs) * 1000
                        + u64::from(h.unix_nsecs / 1_000_000).min(999);
                    let observer = observer_id(&[&ip.to_string(), "v5", &h.engine_id.to_string()]);
                    for r in &v5.flowsets {
                        let f = Fields {
                            src: Some(IpAddr::V4(r.src_addr)),
                            dst: Some(IpAddr::V4(r.dst_addr)),
                            sport: r.src_port,
                            dport: r.dst_port,
                            proto: Some(r.protocol_number),
                            bytes: u64::from(r.d_octets),
                            packets: u64::from(r.d_pkts),
                            flags: r.tcp_flags,
                            start_up: Some(u64::from(r.first)),
                            end_up: Some(u64::from(r.last)),
                            sampling,
                            ..Fields::default()
                        };
                        let up = u64::from(h.sys_up_time);
                        self.emit(f, observer, Some((now_ms, up)), None, 0, out);
                    }
                }
                NetflowPacket::V9(v9) => {
                    version = Some(Telemetry::NetflowV9);
                    let h = &v9.header;
                    let key = (ip, h.source_id, 9);
                    self.sequence(key, h.sequence_number, 1);
                    let now_ms = u64::from(h.unix_secs) * 1000;
                    let up = u64::from(h.sys_up_time);
                    let observer = observer_id(&[&ip.to_string(), "v9", &h.source_id.to_string()]);
                    use netflow_parser::variable_versions::v9::FlowSetBody as B;
                    for set in &v9.flowsets {
                        match &set.body {
                            B::OptionsData(o) => {
                                for rec in &o.fields {
                                    let mut f = Fields::default();
                                    for (k, v) in &rec.options_fields {
                                        f.set(u16::from(*k), false, v);
                                    }
                                    if f.sampling > 0 {
                                        self.state(key).sampling = f.sampling;
                                    }
                                }
                            }
                            B::Data(d) => {
                                let sampling = self.state(key).sampling;
                                for rec in &d.fields {
                                    let mut f = Fields::default();
                                    for (k, v) in rec {
                                        f.set(v9_id(k), false, v);
                                    }
                                    self.emit(f, observer, Some((now_ms, up)), None, sampling, out);
                                }
                            }
                            B::NoTemplate(_) => self.counters.no_template += 1,
                            _ => {}
                        }
                    }
                }
                NetflowPacket::IPFix(ipfix) => {
                    version = Some(Telemetry::Ipfix);
                    let h = &ipfix.header;
                    let key = (ip, h.observation_domain_id, 10);
                    let observer = observer_id(&[
                        &ip.to_string(),
                        "ipfix",
                        &h.observation_domain_id.to_string(),
                    ]);
                    use netflow_parser::variable_versions::ipfix::FlowSetBody as B;
                    let mut data_records = 0u32;
                    for set in &ipfix.flowsets {
                        match &set.body {
                            B::OptionsData(o) => {
                                for rec in &o.fields {
                                    let mut f = Fields::default();
                                    for (k, v) in rec {
                                        if let Some((id, rev)) = ipfix_id(k) {
                                            f.set(id, rev, v);
                                        }
                                    }
                                    let st = self.state(key);
                                    if f.sampling > 0 {
                                        st.sampling = f.sampling;
                                    }
                                    if f.init_ms.is_some() {
                                        st.init_ms = f.init_ms;
                                    }
                                }
                            }
                            B::Data(d) => {
                                let (sampling, init_ms) = {
                                    let st = self.state(key);
                                    (st.sampling, st.init_ms)
                                };
                                for rec in &d.fields {
                                    data_records = data_records.saturating_add(1);
                                    let mut f = Fields::default();
                                    for (k, v) in rec {
                                        if let Some((id, rev)) = ipfix_id(k) {
                                            f.set(id, rev, v);
                                        }
                                    }
                                    self.emit(f, observer, None, init_ms, sampling, out);
                                }
                            }
                            B::NoTemplate(_) => self.counters.no_template += 1,
                            _ => {}
                        }
                    }
                    // IPFIX sequence numbers count data records (RFC 7011 section 3.1).
                    self.sequence(key, h.sequence_number, data_records);
                }
                _ => {}
            }
        }
        version
    }

    /// Puts one record's times on the Unix clock, scales sampled counts, and emits it.
    /// `uptime`: (export time ms, exporter sysUpTime ms) for sysUpTime-relative times.
    fn emit(
        &mut self,
        f: Fields,
        observer: u64,
        uptime: Option<(u64, u64)>,
        init_ms: Option<u64>,
        exporter_sampling: u32,
        out: &mut Vec<Aggregate>,
    ) {
        let relative = |t: Option<u64>| -> Option<u64> {
            let t = t?;
            match (uptime, f.init_ms.or(init_ms)) {
                // v5/v9: the record's sysUpTime against the header's.
                (Some((now, up)), _) => now.checked_sub(up.checked_sub(t)?),
                (None, Some(init)) => init.checked_add(t),
                _ => None,
            }
        };
        let start = f.start_ms.or_else(|| relative(f.start_up));
        let end = f.end_ms.or_else(|| relative(f.end_up));
        let (Some(src), Some(dst), Some(proto), Some(start), Some(end)) =
            (f.src, f.dst, f.proto, start, end)
        else {
            self.counters.incomplete += 1;
            return;
        };
        let (Some(start_ns), Some(end_ns)) = (
            start.checked_mul(1_000_000),
            end.max(start).checked_mul(1_000_000),
        ) else {
            self.counters.incomplete += 1;
            return;
        };
        self.counters.records += 1;
        let rate = if f.sampling > 1 {
            f.sampling
        } else {
            exporter_sampling
        };
        let scale = |n: u64| {
            if rate > 1 {
                n.saturating_mul(u64::from(rate))
            } else {
                n
            }
        };
        if rate > 1 {
            self.counters.sampled += 1;
            self.counters.max_sampling = self.counters.max_sampling.max(rate);
        }
        out.push(Aggregate {
            src: addr_of(src),
            dst: addr_of(dst),
            src_port: f.sport,
            dst_port: f.dport,
            proto,
            packets: scale(f.packets),
            bytes: scale(f.bytes),
            rev_packets: scale(f.rev_packets),
            rev_bytes: scale(f.rev_bytes),
            start_ns,
            end_ns,
            tcp_flags: f.flags,
            rev_tcp_flags: f.rev_flags,
            observer,
            ..Aggregate::default()
        });
    }
}

fn v9_id(k: &V9Field) -> u16 {
    u16::from(*k)
}
