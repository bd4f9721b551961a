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
                if id.is_multiple_of(2) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const REV: u32 = 29305;

    /// An IPFIX message of `sets` ((set id, body)) from domain `domain`.
    fn message(seq: u32, domain: u32, sets: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (id, b) in sets {
            body.extend(id.to_be_bytes());
            body.extend(((b.len() + 4) as u16).to_be_bytes());
            body.extend(b);
        }
        let mut m = Vec::new();
        m.extend(10u16.to_be_bytes());
        m.extend(((body.len() + 16) as u16).to_be_bytes());
        m.extend(1_700_000_000u32.to_be_bytes());
        m.extend(seq.to_be_bytes());
        m.extend(domain.to_be_bytes());
        m.extend(body);
        m
    }

    /// A template record: (element id, length, enterprise).
    fn template(id: u16, fields: &[(u16, u16, Option<u32>)]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend(id.to_be_bytes());
        t.extend((fields.len() as u16).to_be_bytes());
        for (ie, len, ent) in fields {
            let ie = if ent.is_some() { ie | 0x8000 } else { *ie };
            t.extend(ie.to_be_bytes());
            t.extend(len.to_be_bytes());
            if let Some(e) = ent {
                t.extend(e.to_be_bytes());
            }
        }
        t
    }

    /// Biflow template 256: addresses, ports, protocol, start/end ms, forward and reverse
    /// (RFC 5103) octets and packets.
    fn biflow_template() -> Vec<u8> {
        template(
            256,
            &[
                (8, 4, None),
                (12, 4, None),
                (7, 2, None),
                (11, 2, None),
                (4, 1, None),
                (152, 8, None),
                (153, 8, None),
                (1, 8, None),
                (2, 8, None),
                (1, 8, Some(REV)),
                (2, 8, Some(REV)),
            ],
        )
    }

    fn biflow_record(start_ms: u64, end_ms: u64, n: u64) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend([10, 0, 0, 5]);
        r.extend([203, 0, 113, 7]);
        r.extend(50000u16.to_be_bytes());
        r.extend(3333u16.to_be_bytes());
        r.push(6);
        r.extend(start_ms.to_be_bytes());
        r.extend(end_ms.to_be_bytes());
        r.extend((n * 100).to_be_bytes());
        r.extend(n.to_be_bytes());
        r.extend((n * 50).to_be_bytes());
        r.extend((n * 2).to_be_bytes());
        r
    }

    fn from() -> SocketAddr {
        "192.0.2.1:4739".parse().expect("address")
    }

    #[test]
    fn ipfix_biflow_records_decode_with_reverse_counts_and_absolute_times() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let msg = message(
            0,
            7,
            &[
                (2, biflow_template()),
                (256, biflow_record(1_700_000_000_000, 1_700_000_300_000, 10)),
            ],
        );
        assert_eq!(d.decode(from(), &msg, &mut out), Some(Telemetry::Ipfix));
        assert_eq!(out.len(), 1, "{:?}", d.counters);
        let a = out[0];
        assert_eq!(
            (a.packets, a.bytes, a.rev_packets, a.rev_bytes),
            (10, 1000, 20, 500)
        );
        assert_eq!(a.start_ns, 1_700_000_000_000_000_000);
        assert_eq!(a.end_ns - a.start_ns, 300_000_000_000);
        assert_eq!((a.src_port, a.dst_port, a.proto), (50000, 3333, 6));
    }

    #[test]
    fn templates_are_per_domain_withdrawn_and_sequence_gaps_counted() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        // Domain 1 knows template 256; domain 2 does not.
        let m = message(0, 1, &[(2, biflow_template())]);
        d.decode(from(), &m, &mut out);
        let data = |seq, domain| message(seq, domain, &[(256, biflow_record(1, 2, 1))]);
        d.decode(from(), &data(0, 2), &mut out);
        assert!(out.is_empty(), "another domain's template must not apply");
        d.decode(from(), &data(0, 1), &mut out);
        assert_eq!(out.len(), 1);
        // Records 1..4 lost: the next message says sequence 5.
        d.decode(from(), &data(5, 1), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(d.counters.sequence_gaps, 4);
        // Withdrawal (field count 0): data of 256 no longer decodes.
        let withdraw = message(6, 1, &[(2, template(256, &[]))]);
        d.decode(from(), &withdraw, &mut out);
        d.decode(from(), &data(6, 1), &mut out);
        assert_eq!(out.len(), 2, "{:?}", d.counters);
    }

    #[test]
    fn options_data_sampling_scales_the_counts() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let mut opt = Vec::new();
        opt.extend(257u16.to_be_bytes());
        opt.extend(2u16.to_be_bytes()); // fields
        opt.extend(1u16.to_be_bytes()); // scope fields
        opt.extend(149u16.to_be_bytes()); // observationDomainId (scope)
        opt.extend(4u16.to_be_bytes());
        opt.extend(305u16.to_be_bytes()); // samplingPacketInterval
        opt.extend(4u16.to_be_bytes());
        let mut optdata = Vec::new();
        optdata.extend(3u32.to_be_bytes());
        optdata.extend(100u32.to_be_bytes());
        let m = message(0, 3, &[(2, biflow_template()), (3, opt), (257, optdata)]);
        d.decode(from(), &m, &mut out);
        let m = message(0, 3, &[(256, biflow_record(1, 2, 1))]);
        d.decode(from(), &m, &mut out);
        assert_eq!(out.len(), 1, "{:?}", d.counters);
        assert_eq!((out[0].packets, out[0].bytes), (100, 10_000));
        assert_eq!(d.counters.max_sampling, 100);
    }

    #[test]
    fn a_session_cut_by_active_timeout_stitches_back_into_one_flow() {
        use crate::source::records::stitch::{StitchConfig, Stitcher};
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let t0 = 1_700_000_000_000u64;
        let mut sets = vec![(2, biflow_template())];
        for i in 0..3 {
            sets.push((
                256,
                biflow_record(t0 + i * 300_000, t0 + (i + 1) * 300_000, 5),
            ));
        }
        d.decode(from(), &message(0, 1, &sets), &mut out);
        assert_eq!(out.len(), 3);
        let mut st = Stitcher::new(StitchConfig {
            gap_ns: 600_000_000_000,
            tick_ns: 1_000_000_000,
        });
        let last = out
            .iter()
            .filter_map(|a| st.push(a))
            .last()
            .expect("update");
        assert_eq!(st.counters.flows, 1);
        assert_eq!(last.last_ns - last.first_ns, 900_000_000_000);
        assert_eq!(last.stats.packets.iter().sum::<u64>(), 3 * (5 + 10));
    }

    #[test]
    fn hostile_datagrams_are_counted_never_fatal() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let good = message(0, 1, &[(2, biflow_template())]);
        // Every truncation and a byte pattern of each kind.
        for n in 0..good.len() {
            d.decode(from(), &good[..n], &mut out);
        }
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let mut m = good.clone();
            for b in m.iter_mut().skip(2) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if x.is_multiple_of(7) {
                    *b = x as u8;
                }
            }
            d.decode(from(), &m, &mut out);
        }
        assert!(d.counters.malformed > 0);
    }
}
