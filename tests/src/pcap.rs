//! Writing capture files for tests: classic pcap (any link type, microsecond or nanosecond
//! timestamps) and pcapng (section, one interface, enhanced packet blocks).

pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

/// One record: timestamp in nanoseconds since the epoch, and the captured bytes.
#[derive(Clone, Debug)]
pub struct Record {
    pub ts_ns: u64,
    pub data: Vec<u8>,
    /// Length on the wire; `None` means the whole frame was captured.
    pub orig_len: Option<u32>,
}

impl Record {
    pub fn new(ts_ns: u64, data: Vec<u8>) -> Self {
        Record {
            ts_ns,
            data,
            orig_len: None,
        }
    }
}

/// A classic little-endian pcap file with microsecond timestamps.
pub fn pcap(linktype: u32, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&262_144u32.to_le_bytes());
    out.extend_from_slice(&linktype.to_le_bytes());
    for r in records {
        out.extend_from_slice(&((r.ts_ns / 1_000_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((r.ts_ns % 1_000_000_000 / 1000) as u32).to_le_bytes());
        out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.orig_len.unwrap_or(r.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.data);
    }
    out
}

fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
    let mut padded = body.to_vec();
    while !padded.len().is_multiple_of(4) {
        padded.push(0);
    }
    let total = (12 + padded.len()) as u32;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&padded);
    out.extend_from_slice(&total.to_le_bytes());
}

/// A pcapng file (little-endian) with one interface of `linktype` and nanosecond timestamps.
pub fn pcapng(linktype: u32, records: &[Record]) -> Vec<u8> {
    pcapng_with_offset(linktype, None, records)
}

/// [`pcapng`] whose interface has the `if_tsoffset` option: `offset_s` seconds to add to
/// every timestamp (the records' `ts_ns` are then written relative to it).
pub fn pcapng_with_offset(linktype: u32, offset_s: Option<i64>, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    block(&mut out, 0x0a0d_0d0a, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(&(linktype as u16).to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&262_144u32.to_le_bytes());
    // if_tsresol = 9 (nanoseconds), then end of options.
    idb.extend_from_slice(&9u16.to_le_bytes());
    idb.extend_from_slice(&1u16.to_le_bytes());
    idb.extend_from_slice(&[9, 0, 0, 0]);
    if let Some(offset) = offset_s {
        // if_tsoffset (option 14): a signed 64-bit number of seconds.
        idb.extend_from_slice(&14u16.to_le_bytes());
        idb.extend_from_slice(&8u16.to_le_bytes());
        idb.extend_from_slice(&offset.to_le_bytes());
    }
    idb.extend_from_slice(&[0, 0, 0, 0]);
    block(&mut out, 1, &idb);
    for r in records {
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&((r.ts_ns >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(r.ts_ns as u32).to_le_bytes());
        epb.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&r.orig_len.unwrap_or(r.data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&r.data);
        block(&mut out, 6, &epb);
    }
    out
}
