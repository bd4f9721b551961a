//! Reading capture files (pcap and pcapng) as a stream of Ethernet frames.
//!
//! Frames of every supported link type are normalised to Ethernet, because that is what the
//! XDP program parses: Linux cooked captures (SLL, SLL2) and raw IP get a synthetic 14-byte
//! Ethernet header, and their wire length is adjusted by the same amount.
//!
//! The reader is bounded (no record may claim more than [`MAX_RECORD`] bytes) and never panics
//! on hostile input. Errors name the file and the record; everything read before an error has
//! already been handed out, so callers can report it.

use std::{
    fs::File,
    io::{self, BufReader, Read},
    path::{Path, PathBuf},
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

enum Format {
    Pcap {
        big_endian: bool,
        nanos: bool,
        link: Link,
    },
    PcapNg(PcapNgState),
}

#[derive(Default)]
struct PcapNgState {
    big_endian: bool,
    /// Per interface: link type and timestamp units per second.
    interfaces: Vec<(u32, u64)>,
}

/// Streaming reader over one capture file.
pub struct CaptureReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
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
            input: BufReader::with_capacity(1 << 16, file),
            offset: 0,
            index: 0,
            format: Format::PcapNg(PcapNgState::default()),
        };
        let mut magic = [0u8; 4];
        match r.read_exact_or_eof(&mut magic, "file header", 0) {
            Ok(true) => {}
            Ok(false) | Err(CaptureError::Truncated { .. }) => {
                return Err(CaptureError::Malformed {
                    path: r.path.clone(),
                    offset: 0,
                    problem: if r.offset == 0 {
                        "empty file".to_string()
                    } else {
                        format!("not a pcap or pcapng file (only {} bytes)", r.offset)
                    },
                })
            }
            Err(e) => return Err(e),
        }
        let m = u32::from_le_bytes(magic);
        match m {
            0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => {
                let big_endian = matches!(m, 0xd4c3_b2a1 | 0x4d3c_b2a1);
                let nanos = matches!(m, 0xa1b2_3c4d | 0x4d3c_b2a1);
                let mut rest = [0u8; 20];
                r.read_exact_required(&mut rest, "file header", 0)?;
                // The link-type field's upper bits carry FCS information; the type is the low 16.
                let raw_link = read_u32(&rest[16..20], big_endian);
                let linktype = raw_link & 0xffff;
                let link = link_of(linktype).ok_or_else(|| CaptureError::UnknownLinkType {
                    path: r.path.clone(),
                    linktype,
                })?;
                r.format = Format::Pcap {
                    big_endian,
                    nanos,
                    link,
                };
            }
            0x0a0d_0d0a => {
                r.read_section_header()?;
            }
            _ => {
                return Err(CaptureError::NotACapture {
                    path: r.path.clone(),
                    magic: u32::from_be_bytes(magic),
                })
            }
        }
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
        match self.format {
            Format::Pcap {
                big_endian,
                nanos,
                link,
            } => self.next_pcap(big_endian, nanos, link),
            Format::PcapNg(_) => self.next_pcapng(),
        }
    }

    fn next_pcap(
        &mut self,
        be: bool,
        nanos: bool,
        link: Link,
    ) -> Result<Option<Frame>, CaptureError> {
        let mut hdr = [0u8; 16];
        let index = self.index + 1;
        if !self.read_exact_or_eof(&mut hdr, "record", index)? {
            return Ok(None);
        }
        self.index = index;
        let sec = read_u32(&hdr[0..4], be) as u64;
        let frac = read_u32(&hdr[4..8], be) as u64;
        let incl = read_u32(&hdr[8..12], be);
        let orig = read_u32(&hdr[12..16], be);
        if incl > MAX_RECORD {
            return Err(self.malformed(format!(
                "record {index} claims {incl} bytes (limit {MAX_RECORD})"
            )));
        }
        let mut data = vec![0u8; incl as usize];
        self.read_exact_required(&mut data, "record", index)?;
        let ts_ns = sec * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        Ok(Some(normalise(link, ts_ns, data, orig.max(incl))))
    }

    fn read_section_header(&mut self) -> Result<(), CaptureError> {
        // Block type already consumed; next: total length, byte-order magic.
        let start = self.offset - 4;
        let mut head = [0u8; 8];
        self.read_exact_required(&mut head, "section header", self.index)?;
        let big_endian = match u32::from_le_bytes([head[4], head[5], head[6], head[7]]) {
            0x1a2b_3c4d => false,
            0x4d3c_2b1a => true,
            other => {
                return Err(self.malformed(format!("section header byte-order magic {other:#010x}")))
            }
        };
        let total = read_u32(&head[0..4], big_endian);
        self.check_block_len(total, 28)?;
        let mut rest = vec![0u8; total as usize - 12];
        self.read_exact_required(&mut rest, "section header", self.index)?;
        self.check_trailer(&rest, total, big_endian, start)?;
        self.format = Format::PcapNg(PcapNgState {
            big_endian,
            interfaces: Vec::new(),
        });
        Ok(())
    }

    fn next_pcapng(&mut self) -> Result<Option<Frame>, CaptureError> {
        loop {
            let start = self.offset;
            let mut head = [0u8; 4];
            if !self.read_exact_or_eof(&mut head, "block", self.index + 1)? {
                return Ok(None);
            }
            if u32::from_le_bytes(head) == 0x0a0d_0d0a {
                self.read_section_header()?;
                continue;
            }
            let be = match &self.format {
                Format::PcapNg(s) => s.big_endian,
                Format::Pcap { .. } => unreachable!("pcapng reader on a pcap file"),
            };
            let block_type = read_u32(&head, be);
            let mut len = [0u8; 4];
            self.read_exact_required(&mut len, "block", self.index + 1)?;
            let total = read_u32(&len, be);
            self.check_block_len(total, 12)?;
            let mut body = vec![0u8; total as usize - 8];
            self.read_exact_required(&mut body, "block", self.index + 1)?;
            self.check_trailer(&body, total, be, start)?;
            let body = &body[..body.len() - 4];
            match block_type {
                1 => self.interface_description(body, be, start)?,
                6 => {
                    self.index += 1;
                    return self.enhanced_packet(body, be, start).map(Some);
                }
                3 => {
                    self.index += 1;
                    return self.simple_packet(body, be, start).map(Some);
                }
                // Name resolution, statistics, custom and other blocks carry no frames.
                _ => {}
            }
        }
    }

    fn interface_description(
        &mut self,
        body: &[u8],
        be: bool,
        start: u64,
    ) -> Result<(), CaptureError> {
        if body.len() < 8 {
            return Err(self.malformed_at(
                start,
                "interface description block shorter than 8 bytes".into(),
            ));
        }
        let linktype = read_u16(&body[0..2], be) as u32;
        let mut units: u64 = 1_000_000;
        // Options: code(2) len(2) value padded to 4.
        let mut opts = &body[8..];
        while opts.len() >= 4 {
            let code = read_u16(&opts[0..2], be);
            let olen = read_u16(&opts[2..4], be) as usize;
            let padded = (olen + 3) & !3;
            if code == 0 || opts.len() < 4 + padded {
                break;
            }
            if code == 9 && olen >= 1 {
                // if_tsresol: 10^-v, or 2^-v when the top bit is set.
                let v = opts[4];
                let exp = (v & 0x7f) as u32;
                units = if v & 0x80 != 0 {
                    1u64.checked_shl(exp).unwrap_or(0)
                } else {
                    10u64.checked_pow(exp).unwrap_or(0)
                };
                if units == 0 {
                    return Err(self.malformed_at(
                        start,
                        format!("interface timestamp resolution {v:#04x} out of range"),
                    ));
                }
            }
            opts = &opts[4 + padded..];
        }
        if let Format::PcapNg(s) = &mut self.format {
            s.interfaces.push((linktype, units));
        }
        Ok(())
    }

    fn interface(&self, id: u32, start: u64) -> Result<(Link, u64), CaptureError> {
        let Format::PcapNg(s) = &self.format else {
            unreachable!("pcapng block in a pcap file")
        };
        let &(linktype, units) = s.interfaces.get(id as usize).ok_or_else(|| {
            self.malformed_at(
                start,
                format!("packet names interface {id}, which was never described"),
            )
        })?;
        let link = link_of(linktype).ok_or_else(|| CaptureError::UnknownLinkType {
            path: self.path.clone(),
            linktype,
        })?;
        Ok((link, units))
    }

    fn enhanced_packet(
        &mut self,
        body: &[u8],
        be: bool,
        start: u64,
    ) -> Result<Frame, CaptureError> {
        if body.len() < 20 {
            return Err(
                self.malformed_at(start, "enhanced packet block shorter than 20 bytes".into())
            );
        }
        let (link, units) = self.interface(read_u32(&body[0..4], be), start)?;
        let ts = ((read_u32(&body[4..8], be) as u64) << 32) | read_u32(&body[8..12], be) as u64;
        let caplen = read_u32(&body[12..16], be) as usize;
        let orig = read_u32(&body[16..20], be);
        if caplen > body.len() - 20 {
            return Err(self.malformed_at(
                start,
                format!(
                    "packet claims {caplen} captured bytes in a block of {}",
                    body.len()
                ),
            ));
        }
        let ts_ns = (ts as u128 * 1_000_000_000 / units as u128).min(u64::MAX as u128) as u64;
        let data = body[20..20 + caplen].to_vec();
        Ok(normalise(link, ts_ns, data, orig.max(caplen as u32)))
    }

    fn simple_packet(&mut self, body: &[u8], be: bool, start: u64) -> Result<Frame, CaptureError> {
        if body.len() < 4 {
            return Err(self.malformed_at(start, "simple packet block shorter than 4 bytes".into()));
        }
        let (link, _) = self.interface(0, start)?;
        let orig = read_u32(&body[0..4], be);
        let caplen = (orig as usize).min(body.len() - 4);
        // Simple packet blocks have no timestamp.
        Ok(normalise(link, 0, body[4..4 + caplen].to_vec(), orig))
    }

    fn check_block_len(&self, total: u32, min: u32) -> Result<(), CaptureError> {
        if total < min || !total.is_multiple_of(4) || total > MAX_RECORD {
            return Err(self.malformed(format!(
                "block length {total} (must be a multiple of 4 between {min} and {MAX_RECORD})"
            )));
        }
        Ok(())
    }

    fn check_trailer(
        &self,
        body: &[u8],
        total: u32,
        be: bool,
        start: u64,
    ) -> Result<(), CaptureError> {
        let trailer = read_u32(&body[body.len() - 4..], be);
        if trailer != total {
            return Err(self.malformed_at(
                start,
                format!("block length {total} disagrees with its trailing copy {trailer}"),
            ));
        }
        Ok(())
    }

    fn malformed(&self, problem: String) -> CaptureError {
        self.malformed_at(self.offset, problem)
    }

    fn malformed_at(&self, offset: u64, problem: String) -> CaptureError {
        CaptureError::Malformed {
            path: self.path.clone(),
            offset,
            problem,
        }
    }

    /// Fills `buf`; `Ok(false)` if the file ended exactly before it, an error if part-way.
    fn read_exact_or_eof(
        &mut self,
        buf: &mut [u8],
        what: &'static str,
        index: u64,
    ) -> Result<bool, CaptureError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(CaptureError::Read {
                        path: self.path.clone(),
                        offset: self.offset + filled as u64,
                        source,
                    })
                }
            }
        }
        self.offset += filled as u64;
        if filled == 0 {
            return Ok(false);
        }
        if filled < buf.len() {
            return Err(CaptureError::Truncated {
                path: self.path.clone(),
                what,
                index,
                offset: self.offset,
            });
        }
        Ok(true)
    }

    fn read_exact_required(
        &mut self,
        buf: &mut [u8],
        what: &'static str,
        index: u64,
    ) -> Result<(), CaptureError> {
        if buf.is_empty() || self.read_exact_or_eof(buf, what, index)? {
            Ok(())
        } else {
            Err(CaptureError::Truncated {
                path: self.path.clone(),
                what,
                index,
                offset: self.offset,
            })
        }
    }
}

impl Iterator for CaptureReader {
    type Item = Result<Frame, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

fn read_u32(b: &[u8], be: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if be {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

fn read_u16(b: &[u8], be: bool) -> u16 {
    let a = [b[0], b[1]];
    if be {
        u16::from_be_bytes(a)
    } else {
        u16::from_le_bytes(a)
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
}
