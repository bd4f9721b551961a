//! Reading capture files (pcap and pcapng) as a stream of Ethernet frames, for `replay` and
//! the tests that check the datapath against captures.
//!
//! The formats are decoded by `pcap-parser` (a maintained parser; it measured 1.3-1.45x the
//! frames/s of the hand-written reader this module used to hold, `bench-capture`). This
//! module adds what the agent needs around it: a bounded buffer, errors that name the file,
//! the record or block and the byte offset, and normalisation of every supported link type to
//! Ethernet, because that is what the XDP program parses: Linux cooked captures (SLL, SLL2)
//! and raw IP get a synthetic 14-byte Ethernet header, and their wire length is adjusted by
//! the same amount.
//!
//! It must never panic on hostile input, never hold more than one record or block (at most
//! [`MAX_RECORD`] bytes) beyond its read buffer, and never lose frames already read: everything
//! before an error has already been handed out, so callers can report it.

use std::{
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
};

use pcap_parser::{
    nom::{self, IResult, Needed},
    parse_block_be, parse_block_le, parse_pcap_frame, parse_pcap_frame_be,
    parse_pcap_frame_modified, parse_pcap_header,
    traits::PcapNGPacketBlock,
    Block, LegacyPcapBlock, PcapError, SHB_MAGIC,
};

/// Largest record or block accepted: well above any real frame (64 KiB GSO, 256 KiB snaplen).
pub const MAX_RECORD: u32 = 16 * 1024 * 1024;

const ETH_HLEN: usize = 14;

/// One frame, normalised to Ethernet.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Capture timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Captured bytes, starting with an Ethernet header.
    pub data: Vec<u8>,
    /// Length on the wire as an Ethernet frame (may exceed `data.len()` when the capture was
    /// cut by its snap length).
    pub wire_len: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a pcap or pcapng file (magic {magic:#010x})")]
    NotACapture { path: PathBuf, magic: u32 },
    #[error("{path}: unsupported link type {linktype} (supported: Ethernet 1, Linux cooked 113 and 276, raw IP 101, 228, 229)")]
    UnknownLinkType { path: PathBuf, linktype: u32 },
    #[error("{path}: truncated capture: {what} {index} ends after byte {offset}")]
    Truncated {
        path: PathBuf,
        what: &'static str,
        index: u64,
        offset: u64,
    },
    #[error("{path}: malformed capture at byte {offset}: {problem}")]
    Malformed {
        path: PathBuf,
        offset: u64,
        problem: String,
    },
    #[error("{path}: read error at byte {offset}: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Ethernet,
    LinuxSll,
    LinuxSll2,
    RawIp,
}

fn link_of(linktype: u32) -> Option<Link> {
    match linktype {
        1 => Some(Link::Ethernet),
        113 => Some(Link::LinuxSll),
        276 => Some(Link::LinuxSll2),
        // LINKTYPE_RAW, and the per-family IPv4/IPv6 raw types.
        101 | 228 | 229 => Some(Link::RawIp),
        // DLT_RAW is 12 or 14 on some systems and appears in old pcap files.
        12 | 14 => Some(Link::RawIp),
        _ => None,
    }
}

/// Bytes asked of the file per read; a block larger than this grows the buffer (up to
/// [`MAX_RECORD`] plus a record header), never past it.
const READ_CHUNK: usize = 1 << 16;

/// A classic pcap record parser of `pcap-parser` (byte order and record layout differ).
type LegacyParse = fn(&[u8]) -> IResult<&[u8], LegacyPcapBlock<'_>, PcapError<&[u8]>>;

enum Format {
    Pcap {
        parse: LegacyParse,
        /// Fixed part of one record (16, or 24 in the "modified" format).
        header_len: usize,
        nanos: bool,
        link: Link,
    },
    PcapNg {
        big_endian: bool,
        /// Per interface of the current section: link type, timestamp units per second, and
        /// the `if_tsoffset` seconds added to every timestamp (pcapng: timestamps may be
        /// written relative to that offset).
        interfaces: Vec<(u32, u64, i64)>,
    },
}

/// What one parse attempt over the buffered bytes came to, owning nothing of the buffer.
enum Step {
    Frame(Frame, usize),
    /// A block that carries no frame (section, interface, statistics...), this many bytes.
    Skip(usize),
    /// The parser needs this many bytes in all.
    Need(usize),
    Bad(String),
}

/// Streaming reader over one capture file.
pub struct CaptureReader {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// File offset of `buf[start]`.
    offset: u64,
    eof: bool,
    /// Frames handed out, or the number of the record being read.
    index: u64,
    format: Format,
}

impl CaptureReader {
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|source| CaptureError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut r = CaptureReader {
            path: path.to_path_buf(),
            file,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            offset: 0,
            eof: false,
            index: 0,
            format: Format::PcapNg {
                big_endian: false,
                interfaces: Vec::new(),
            },
        };
        let got = r.fill(4)?;
        if got < 4 {
            return Err(r.malformed_at(
                0,
                if got == 0 {
                    "empty file".to_string()
                } else {
                    format!("not a pcap or pcapng file (only {got} bytes)")
                },
            ));
        }
        let magic = [r.buf[0], r.buf[1], r.buf[2], r.buf[3]];
        if u32::from_le_bytes(magic) == SHB_MAGIC {
            // The section header is read as the first block of the stream.
            return Ok(r);
        }
        let got = r.fill(24)?;
        let header = match parse_pcap_header(&r.buf[r.start..r.end]) {
            Ok((_, h)) => h,
            Err(nom::Err::Error(PcapError::HeaderNotRecognized)) => {
                return Err(CaptureError::NotACapture {
                    path: r.path.clone(),
                    magic: u32::from_be_bytes(magic),
                })
            }
            Err(nom::Err::Incomplete(_)) => {
                return Err(CaptureError::Truncated {
                    path: r.path.clone(),
                    what: "file header",
                    index: 0,
                    offset: got as u64,
                })
            }
            Err(e) => {
                return Err(r.malformed_at(0, format!("pcap file header: {}", nom_problem(&e))))
            }
        };
        // The link-type field's upper bits carry FCS information; the type is the low 16.
        let linktype = header.network.0 as u32 & 0xffff;
        let link = link_of(linktype).ok_or_else(|| CaptureError::UnknownLinkType {
            path: r.path.clone(),
            linktype,
        })?;
        let (parse, header_len): (LegacyParse, usize) = if header.is_modified_format() {
            (parse_pcap_frame_modified, 24)
        } else if header.is_bigendian() {
            (parse_pcap_frame_be, 16)
        } else {
            (parse_pcap_frame, 16)
        };
        r.format = Format::Pcap {
            parse,
            header_len,
            nanos: header.is_nanosecond_precision(),
            link,
        };
        r.consume(header.size());
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the file consumed so far (for progress).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame, `Ok(None)` at a clean end of file.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        loop {
            let (what, step) = match &self.format {
                Format::Pcap { .. } => ("record", self.pcap_step()?),
                Format::PcapNg { .. } => ("block", self.pcapng_step()?),
            };
            match step {
                None => return Ok(None),
                Some(Step::Frame(frame, used)) => {
                    self.consume(used);
                    self.index += 1;
                    return Ok(Some(frame));
                }
                Some(Step::Skip(used)) => self.consume(used),
                Some(Step::Need(total)) => {
                    if self.fill(total)? < total {
                        return Err(CaptureError::Truncated {
                            path: self.path.clone(),
                            what,
                            index: self.index + 1,
                            offset: self.offset + (self.end - self.start) as u64,
                        });
                    }
                }
                Some(Step::Bad(problem)) => return Err(self.malformed_at(self.offset, problem)),
            }
        }
    }

    /// One attempt at the next pcap record; `None` at a clean end of file.
    fn pcap_step(&mut self) -> Result<Option<Step>, CaptureError> {
        let Format::Pcap {
            parse,
            header_len,
            nanos,
            link,
        } = self.format
        else {
            return Ok(Some(Step::Bad("pcap record in a pcapng file".into())));
        };
        if self.start == self.end && self.fill(1)? == 0 {
            return Ok(None);
        }
        let index = self.index + 1;
        let avail = &self.buf[self.start..self.end];
        Ok(Some(match parse(avail) {
            Ok((rest, rec)) => {
                let frac = rec.ts_usec as u64;
                let ts_ns =
                    (rec.ts_sec as u64) * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
                let data = rec.data.to_vec();
                Step::Frame(
                    normalise(link, ts_ns, data, rec.origlen.max(rec.caplen)),
                    avail.len() - rest.len(),
                )
            }
            Err(nom::Err::Incomplete(needed)) => {
                let total = match needed {
                    Needed::Size(n) => avail.len() + n.get(),
                    Needed::Unknown => avail.len() + 1,
                };
                if total > header_len + MAX_RECORD as usize {
                    let claimed = total.saturating_sub(header_len);
                    Step::Bad(format!(
                        "record {index} claims {claimed} bytes (limit {MAX_RECORD})"
                    ))
                } else {
                    Step::Need(total)
                }
            }
            Err(e) => Step::Bad(format!("record {index}: {}", nom_problem(&e))),
        }))
    }

    /// One attempt at the next pcapng block; `None` at a clean end of file.
    ///
    /// The block's length is checked here (bounded, whole in the buffer) before the crate
    /// decodes it, so a damaged length inside a whole block reads as malformed, not as a
    /// request for more input.
    fn pcapng_step(&mut self) -> Result<Option<Step>, CaptureError> {
        let big_endian = match &self.format {
            Format::PcapNg { big_endian, .. } => *big_endian,
            Format::Pcap { .. } => {
                return Ok(Some(Step::Bad("pcapng block in a pcap file".into())))
            }
        };
        if self.start == self.end && self.fill(1)? == 0 {
            return Ok(None);
        }
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 12 {
            return Ok(Some(Step::Need(12)));
        }
        let word = |at: usize, be: bool| {
            let b = [avail[at], avail[at + 1], avail[at + 2], avail[at + 3]];
            if be {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        let is_shb = word(0, false) == SHB_MAGIC;
        // A section header states its own byte order; every other block uses its section's.
        let be = if is_shb {
            match word(8, false) {
                0x1a2b_3c4d => false,
                0x4d3c_2b1a => true,
                other => {
                    return Ok(Some(Step::Bad(format!(
                        "section header byte-order magic {other:#010x}"
                    ))))
                }
            }
        } else {
            big_endian
        };
        let total = word(4, be);
        let min = if is_shb { 28 } else { 12 };
        if total < min || !total.is_multiple_of(4) || total > MAX_RECORD {
            return Ok(Some(Step::Bad(format!(
                "block length {total} (must be a multiple of 4 between {min} and {MAX_RECORD})"
            ))));
        }
        let total = total as usize;
        if avail.len() < total {
            return Ok(Some(Step::Need(total)));
        }
        let block = &avail[..total];
        let parsed = if be {
            parse_block_be(block)
        } else {
            parse_block_le(block)
        };
        let block = match parsed {
            Ok((_, b)) => b,
            Err(nom::Err::Incomplete(_)) => {
                return Ok(Some(Step::Bad(
                    "block contents run past its length".to_string(),
                )))
            }
            Err(e) => return Ok(Some(Step::Bad(format!("block: {}", nom_problem(&e))))),
        };
        let step = match block {
            Block::SectionHeader(_) => {
                self.format = Format::PcapNg {
                    big_endian: be,
                    interfaces: Vec::new(),
                };
                Step::Skip(total)
            }
            Block::InterfaceDescription(idb) => {
                let v = idb.if_tsresol;
                let exp = (v & 0x7f) as u32;
                // if_tsresol: 10^-v, or 2^-v when the top bit is set.
                let units = if v & 0x80 != 0 {
                    1u64.checked_shl(exp).unwrap_or(0)
                } else {
                    10u64.checked_pow(exp).unwrap_or(0)
                };
                if units == 0 {
                    Step::Bad(format!(
                        "interface timestamp resolution {v:#04x} out of range"
                    ))
                } else {
                    let linktype = idb.linktype.0 as u32 & 0xffff;
                    if let Format::PcapNg { interfaces, .. } = &mut self.format {
                        interfaces.push((linktype, units, idb.if_tsoffset));
                    }
                    Step::Skip(total)
                }
            }
            Block::EnhancedPacket(epb) => {
                let (link, units, offset_s) = self.interface(epb.if_id)?;
                let ts = ((epb.ts_high as u64) << 32) | epb.ts_low as u64;
                let ts_ns =
                    ts as i128 * 1_000_000_000 / units as i128 + offset_s as i128 * 1_000_000_000;
                let ts_ns = ts_ns.clamp(0, u64::MAX as i128) as u64;
                let data = epb.packet_data().to_vec();
                let caplen = data.len() as u32;
                Step::Frame(normalise(link, ts_ns, data, epb.origlen.max(caplen)), total)
            }
            Block::SimplePacket(spb) => {
                let (link, _, _) = self.interface(0)?;
                // Simple packet blocks have no timestamp; their data is padded to 4 bytes.
                let caplen = (spb.origlen as usize).min(spb.data.len());
                let data = spb.data[..caplen].to_vec();
                Step::Frame(normalise(link, 0, data, spb.origlen), total)
            }
            // Name resolution, statistics, custom and other blocks carry no frames.
            _ => Step::Skip(total),
        };
        Ok(Some(step))
    }

    fn interface(&self, id: u32) -> Result<(Link, u64, i64), CaptureError> {
        let described = match &self.format {
            Format::PcapNg { interfaces, .. } => interfaces.get(id as usize).copied(),
            Format::Pcap { .. } => None,
        };
        let (linktype, units, offset_s) = described.ok_or_else(|| {
            self.malformed_at(
                self.offset,
                format!("packet names interface {id}, which was never described"),
            )
        })?;
        let link = link_of(linktype).ok_or_else(|| CaptureError::UnknownLinkType {
            path: self.path.clone(),
            linktype,
        })?;
        Ok((link, units, offset_s))
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.end - self.start);
        self.start += n;
        self.offset += n as u64;
    }

    /// Reads until `want` unconsumed bytes are buffered or the file ends; returns how many are.
    /// `want` never exceeds a record header plus [`MAX_RECORD`] (callers check the claim).
    fn fill(&mut self, want: usize) -> Result<usize, CaptureError> {
        while self.end - self.start < want && !self.eof {
            if self.buf.len() - self.start < want || self.end == self.buf.len() {
                // Move what is left to the front, and grow for a block larger than the buffer.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < want {
                    let grown = (self.buf.len() * 2).min(MAX_RECORD as usize + READ_CHUNK);
                    self.buf.resize(want.max(grown), 0);
                }
            }
            match self.file.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CaptureError::Read {
                        path: self.path.clone(),
                        offset: self.offset + (self.end - self.start) as u64,
                        source,
                    })
                }
            }
        }
        Ok(self.end - self.start)
    }

    fn malformed_at(&self, offset: u64, problem: String) -> CaptureError {
        CaptureError::Malformed {
            path: self.path.clone(),
            offset,
            problem,
        }
    }
}

/// A parser error in words, without the bytes it carries.
fn nom_problem(e: &nom::Err<PcapError<&[u8]>>) -> String {
    match e {
        nom::Err::Incomplete(_) => "incomplete".to_string(),
        nom::Err::Error(p) | nom::Err::Failure(p) => match p {
            PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
                format!("failed check ({kind:?})")
            }
            PcapError::HeaderNotRecognized => "header not recognised".to_string(),
            other => format!("{other:?}"),
        },
    }
}

impl Iterator for CaptureReader {
    type Item = Result<Frame, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

/// Rewrites a frame of any supported link type as an Ethernet frame.
fn normalise(link: Link, ts_ns: u64, data: Vec<u8>, orig_len: u32) -> Frame {
    let (l2_len, ethertype, src_mac): (usize, Option<u16>, [u8; 6]) = match link {
        Link::Ethernet => {
            return Frame {
                ts_ns,
                wire_len: orig_len,
                data,
            }
        }
        // SLL: packet type(2) ARPHRD(2) address length(2) address(8) protocol(2).
        Link::LinuxSll => (16, field16(&data, 14), mac(&data, 6)),
        // SLL2: protocol(2) reserved(2) ifindex(4) ARPHRD(2) packet type(1) addr len(1) addr(8).
        Link::LinuxSll2 => (20, field16(&data, 0), mac(&data, 12)),
        Link::RawIp => (
            0,
            match data.first().map(|b| b >> 4) {
                Some(4) => Some(0x0800),
                Some(6) => Some(0x86dd),
                _ => None,
            },
            [0; 6],
        ),
    };
    // A header too short to name its protocol still becomes a frame (counted as not-IP or
    // truncated by whoever parses it), so packet counts stay whole.
    let ethertype = ethertype.unwrap_or(0);
    let payload = data.get(l2_len..).unwrap_or(&[]);
    let mut out = Vec::with_capacity(ETH_HLEN + payload.len());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(payload);
    let wire_len = (orig_len as usize).saturating_sub(l2_len) + ETH_HLEN;
    Frame {
        ts_ns,
        data: out,
        wire_len: wire_len as u32,
    }
}

fn field16(data: &[u8], at: usize) -> Option<u16> {
    data.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
}

fn mac(data: &[u8], at: usize) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(b) = data.get(at..at + 6) {
        m.copy_from_slice(b);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("capture-unit-{}-{name}", std::process::id()));
        std::fs::File::create(&p)
            .and_then(|mut f| f.write_all(bytes))
            .expect("write temp capture");
        p
    }

    fn eth_frame() -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45; 20]);
        f
    }

    #[test]
    fn big_endian_nanosecond_pcap() {
        let mut b = Vec::new();
        b.extend_from_slice(&0xa1b2_3c4du32.to_be_bytes());
        b.extend_from_slice(&[
            0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 1,
        ]);
        let f = eth_frame();
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&123_456_789u32.to_be_bytes());
        b.extend_from_slice(&(f.len() as u32).to_be_bytes());
        b.extend_from_slice(&(f.len() as u32 + 100).to_be_bytes());
        b.extend_from_slice(&f);
        let p = write_temp("be-ns.pcap", &b);
        let mut r = CaptureReader::open(&p).expect("open");
        let frame = r.next_frame().expect("read").expect("one frame");
        assert_eq!(frame.ts_ns, 7_123_456_789);
        assert_eq!(frame.data, f);
        assert_eq!(frame.wire_len, f.len() as u32 + 100);
        assert!(r.next_frame().expect("clean end").is_none());
        std::fs::remove_file(p).ok();
    }

    #[test]
    fn raw_ip_and_cooked_frames_become_ethernet() {
        let ip = [0x45u8; 20];
        let raw = normalise(Link::RawIp, 0, ip.to_vec(), 20);
        assert_eq!(&raw.data[12..14], &[0x08, 0x00]);
        assert_eq!((raw.data.len(), raw.wire_len), (34, 34));
        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x86, 0xdd];
        sll.extend_from_slice(&[0x60; 40]);
        let e = normalise(Link::LinuxSll, 0, sll, 56 + 100);
        assert_eq!(&e.data[6..14], &[1, 2, 3, 4, 5, 6, 0x86, 0xdd]);
        assert_eq!((e.data.len(), e.wire_len), (54, 154));
        // A cooked header cut short still yields a frame (counted by the parser, not lost).
        let short = normalise(Link::LinuxSll2, 0, vec![0x08], 1);
        assert_eq!(short.data.len(), 14);
    }

    #[test]
    fn hostile_lengths_are_refused_not_allocated() {
        let mut b = Vec::new();
        b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        b.extend_from_slice(&[
            2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
        ]);
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        let p = write_temp("huge.pcap", &b);
        let mut r = CaptureReader::open(&p).expect("open");
        let e = r.next_frame().expect_err("huge record");
        assert!(e.to_string().contains("limit"), "{e}");
        std::fs::remove_file(p).ok();
    }

    fn ng_block(kind: u32, body: &[u8]) -> Vec<u8> {
        let mut padded = body.to_vec();
        padded.resize(body.len().div_ceil(4) * 4, 0);
        let total = (12 + padded.len()) as u32;
        let mut b = kind.to_le_bytes().to_vec();
        b.extend_from_slice(&total.to_le_bytes());
        b.extend_from_slice(&padded);
        b.extend_from_slice(&total.to_le_bytes());
        b
    }

    fn shb() -> Vec<u8> {
        let mut body = 0x1a2b_3c4du32.to_le_bytes().to_vec();
        body.extend_from_slice(&[1, 0, 0, 0]);
        body.extend_from_slice(&(-1i64).to_le_bytes());
        ng_block(0x0a0d_0d0a, &body)
    }

    fn idb(linktype: u16, tsresol: Option<u8>) -> Vec<u8> {
        let mut body = linktype.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 4, 0]);
        if let Some(v) = tsresol {
            body.extend_from_slice(&[9, 0, 1, 0, v, 0, 0, 0]);
        }
        body.extend_from_slice(&[0, 0, 0, 0]);
        ng_block(1, &body)
    }

    fn epb(iface: u32, ts: u64, data: &[u8], caplen: u32) -> Vec<u8> {
        let mut body = iface.to_le_bytes().to_vec();
        body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts as u32).to_le_bytes());
        body.extend_from_slice(&caplen.to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        ng_block(6, &body)
    }

    #[test]
    fn pcapng_interfaces_resolutions_and_other_blocks() {
        let f = eth_frame();
        let ip = [0x45u8; 20];
        let mut b = shb();
        b.extend(idb(1, None)); // microseconds by default
        b.extend(idb(101, Some(9))); // raw IP, nanoseconds
        b.extend(idb(1, Some(0x81))); // 2^-1 s
        b.extend(ng_block(4, &[0, 0, 0, 0])); // name resolution: no frame
        b.extend(epb(0, 1_500_000, &f, f.len() as u32));
        b.extend(epb(1, 2_000_000_123, &ip, ip.len() as u32));
        b.extend(epb(2, 7, &f, f.len() as u32));
        let p = write_temp("ifaces.pcapng", &b);
        let frames: Vec<Frame> = CaptureReader::open(&p)
            .expect("open")
            .collect::<Result<_, _>>()
            .expect("whole file");
        std::fs::remove_file(p).ok();
        let ts: Vec<u64> = frames.iter().map(|f| f.ts_ns).collect();
        assert_eq!(ts, [1_500_000_000, 2_000_000_123, 3_500_000_000]);
        assert_eq!(frames[0].data, f);
        assert_eq!(&frames[1].data[12..14], &[0x08, 0x00]);
        assert_eq!(frames[1].wire_len, 34);
    }

    #[test]
    fn pcapng_damage_is_named_and_earlier_frames_kept() {
        let f = eth_frame();
        let mut good = shb();
        good.extend(idb(1, Some(9)));
        good.extend(epb(0, 1, &f, f.len() as u32));
        // Cut in the middle of the second packet block.
        let mut cut = good.clone();
        let second = epb(0, 2, &f, f.len() as u32);
        cut.extend_from_slice(&second[..second.len() / 2]);
        // A packet claiming more captured bytes than its block holds.
        let mut lying = good.clone();
        lying.extend(epb(0, 2, &f, 4000));
        // A packet of an interface never described.
        let mut stranger = good.clone();
        stranger.extend(epb(3, 2, &f, f.len() as u32));
        for (name, bytes, problem) in [
            (
                "cut.pcapng",
                cut,
                "truncated capture: block 2 ends after byte",
            ),
            ("lying.pcapng", lying, "malformed capture at byte"),
            (
                "stranger.pcapng",
                stranger,
                "interface 3, which was never described",
            ),
        ] {
            let p = write_temp(name, &bytes);
            let mut r = CaptureReader::open(&p).expect("open");
            assert!(r.next_frame().expect("first frame").is_some(), "{name}");
            let e = r.next_frame().expect_err(name).to_string();
            std::fs::remove_file(&p).ok();
            assert!(e.contains(problem) && e.contains(name), "{name}: {e}");
        }
    }

    #[test]
    fn pcap_cut_inside_a_record_names_it() {
        let f = eth_frame();
        let mut b = Vec::new();
        b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        b.extend_from_slice(&[
            2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
        ]);
        for _ in 0..2 {
            b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(&f);
        }
        b.truncate(b.len() - 3);
        let p = write_temp("cut.pcap", &b);
        let mut r = CaptureReader::open(&p).expect("open");
        assert!(r.next_frame().expect("first").is_some());
        let e = r.next_frame().expect_err("cut").to_string();
        std::fs::remove_file(&p).ok();
        assert!(
            e.contains(&format!("record 2 ends after byte {}", b.len())),
            "{e}"
        );
    }
}
