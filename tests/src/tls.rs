//! TLS sessions for capture tests: a real TLS 1.3 ClientHello (SNI, optional ALPN), the
//! server's first flight, then application-data records on a caller-given schedule, all as
//! Ethernet frames of one TCP connection. Encrypted-mining and report tests build their
//! captures from it.

use fastrand::Rng;

use crate::{
    frames::{TcpConn, TCP_ACK, TCP_PSH, TCP_SYN},
    pcap::Record,
};

pub const CLIENT: [u8; 4] = [192, 0, 2, 10];
pub const SERVER: [u8; 4] = [203, 0, 113, 80];
pub const T0: u64 = 1_700_000_000_000_000_000;
pub const S: u64 = 1_000_000_000;
pub const MS: u64 = 1_000_000;
pub const CPORT: u16 = 40000;

pub fn packet(t: u64, from_client: bool, sport: u16, flags: u8, payload: &[u8]) -> Record {
    Record::new(
        t,
        TcpConn::new(CLIENT, CPORT, SERVER, sport).frame(from_client, flags, payload),
    )
}

pub fn u16be(v: usize) -> [u8; 2] {
    (v as u16).to_be_bytes()
}

/// One TLS extension.
pub fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut e = kind.to_be_bytes().to_vec();
    e.extend_from_slice(&u16be(data.len()));
    e.extend_from_slice(data);
    e
}

/// A TLS record of `kind` (0x16 handshake, 0x17 application data, ...) carrying `body`.
pub fn record(kind: u8, version: u16, body: &[u8]) -> Vec<u8> {
    let mut r = vec![kind];
    r.extend_from_slice(&version.to_be_bytes());
    r.extend_from_slice(&u16be(body.len()));
    r.extend_from_slice(body);
    r
}

/// `n` random bytes (key shares, randoms, AEAD ciphertext).
pub fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    rng.fill(&mut b);
    b
}

/// An application-data record of `total` bytes on the wire (5-byte header included), as a
/// TLS 1.3 AEAD record: opaque bytes.
pub fn app_data(total: usize, rng: &mut Rng) -> Vec<u8> {
    record(0x17, 0x0303, &random_bytes(rng, total.saturating_sub(5)))
}

/// A TLS 1.3 ClientHello in one handshake record, as an OpenSSL-based client sends it:
/// SNI `sni`, ALPN `alpn` (none for a miner), supported_versions 1.3/1.2, x25519 key share.
pub fn client_hello(sni: &str, alpn: &[&str], rng: &mut Rng) -> Vec<u8> {
    let mut exts = Vec::new();
    let mut name = vec![0u8];
    name.extend_from_slice(&u16be(sni.len()));
    name.extend_from_slice(sni.as_bytes());
    let mut list = u16be(name.len()).to_vec();
    list.extend(name);
    exts.push(ext(0x0000, &list)); // server_name
    exts.push(ext(0x000b, &[3, 0, 1, 2])); // ec_point_formats
    exts.push(ext(0x000a, &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18])); // supported_groups
    exts.push(ext(0x0023, &[])); // session_ticket
    if !alpn.is_empty() {
        let mut names = Vec::new();
        for a in alpn {
            names.push(a.len() as u8);
            names.extend_from_slice(a.as_bytes());
        }
        let mut d = u16be(names.len()).to_vec();
        d.extend(names);
        exts.push(ext(0x0010, &d));
    }
    exts.push(ext(0x0016, &[])); // encrypt_then_mac
    exts.push(ext(0x0017, &[])); // extended_master_secret
    let sigs: [u16; 9] = [
        0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x0804, 0x0805, 0x0806, 0x0401,
    ];
    let mut d = u16be(sigs.len() * 2).to_vec();
    for s in sigs {
        d.extend_from_slice(&s.to_be_bytes());
    }
    exts.push(ext(0x000d, &d)); // signature_algorithms
    exts.push(ext(0x002b, &[4, 0x03, 0x04, 0x03, 0x03])); // supported_versions
    exts.push(ext(0x002d, &[1, 1])); // psk_key_exchange_modes
    let mut share = vec![0x00, 0x1d, 0x00, 0x20];
    share.extend(random_bytes(rng, 32));
    let mut d = u16be(share.len()).to_vec();
    d.extend(share);
    exts.push(ext(0x0033, &d)); // key_share

    let ciphers: [u16; 9] = [
        0x1302, 0x1303, 0x1301, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc02b, 0xc02f,
    ];
    let mut body = 0x0303u16.to_be_bytes().to_vec();
    body.extend(random_bytes(rng, 32)); // random
    body.push(32);
    body.extend(random_bytes(rng, 32)); // legacy session id
    body.extend_from_slice(&u16be(ciphers.len() * 2));
    for c in ciphers {
        body.extend_from_slice(&c.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression
    let exts = exts.concat();
    body.extend_from_slice(&u16be(exts.len()));
    body.extend(exts);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend(body);
    record(0x16, 0x0301, &msg)
}

/// The server's first flight: a TLS 1.3 ServerHello, change_cipher_spec, and the encrypted
/// rest of the handshake (EncryptedExtensions, Certificate, CertificateVerify, Finished) as
/// application data.
pub fn server_flight(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let mut exts = ext(0x002b, &[0x03, 0x04]);
    let mut share = vec![0x00, 0x1d, 0x00, 0x20];
    share.extend(random_bytes(rng, 32));
    exts.extend(ext(0x0033, &share));
    let mut body = 0x0303u16.to_be_bytes().to_vec();
    body.extend(random_bytes(rng, 32));
    body.push(32);
    body.extend(random_bytes(rng, 32));
    body.extend_from_slice(&0x1302u16.to_be_bytes());
    body.push(0);
    body.extend_from_slice(&u16be(exts.len()));
    body.extend(exts);
    let mut msg = vec![2];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend(body);
    let mut first = record(0x16, 0x0303, &msg);
    first.extend(record(0x14, 0x0303, &[1]));
    first.extend(app_data(1200, rng));
    (first, app_data(1300, rng))
}

/// A TLS session from T0 for `secs` seconds: TCP and TLS handshakes, then the records that
/// `next_client` and `next_server` produce: each returns (gap to its next record, record size
/// on the wire). Every record is acknowledged by a bare ACK.
pub fn tls_session(
    sport: u16,
    sni: &str,
    alpn: &[&str],
    secs: u64,
    rng: &mut Rng,
    mut next_client: impl FnMut(&mut Rng) -> (u64, usize),
    mut next_server: impl FnMut(&mut Rng) -> (u64, usize),
) -> Vec<Record> {
    let hello = client_hello(sni, alpn, rng);
    let (flight1, flight2) = server_flight(rng);
    let mut finished = record(0x14, 0x0303, &[1]);
    finished.extend(app_data(74, rng));
    let mut recs = vec![
        packet(T0, true, sport, TCP_SYN, &[]),
        packet(T0 + MS, false, sport, TCP_SYN | TCP_ACK, &[]),
        packet(T0 + 2 * MS, true, sport, TCP_ACK, &[]),
        packet(T0 + 3 * MS, true, sport, TCP_ACK | TCP_PSH, &hello),
        packet(T0 + 30 * MS, false, sport, TCP_ACK | TCP_PSH, &flight1),
        packet(T0 + 31 * MS, false, sport, TCP_ACK | TCP_PSH, &flight2),
        packet(T0 + 33 * MS, true, sport, TCP_ACK | TCP_PSH, &finished),
        // The miner's login and the pool's first job.
        packet(
            T0 + 34 * MS,
            true,
            sport,
            TCP_ACK | TCP_PSH,
            &app_data(330, rng),
        ),
        packet(
            T0 + 80 * MS,
            false,
            sport,
            TCP_ACK | TCP_PSH,
            &app_data(560, rng),
        ),
        packet(T0 + 81 * MS, true, sport, TCP_ACK, &[]),
    ];
    let end = T0 + secs * S;
    let mut timed: Vec<(u64, bool, usize)> = Vec::new();
    for (from_client, next) in [
        (
            true,
            &mut next_client as &mut dyn FnMut(&mut Rng) -> (u64, usize),
        ),
        (false, &mut next_server),
    ] {
        let mut t = T0 + S;
        loop {
            let (gap, size) = next(rng);
            t += gap.max(MS);
            if t >= end {
                break;
            }
            timed.push((t, from_client, size));
        }
    }
    timed.sort_unstable_by_key(|r| r.0);
    for (t, from_client, size) in timed {
        recs.push(packet(
            t,
            from_client,
            sport,
            TCP_ACK | TCP_PSH,
            &app_data(size, rng),
        ));
        recs.push(packet(t + 20 * MS, !from_client, sport, TCP_ACK, &[]));
    }
    recs.sort_by_key(|r| r.ts_ns);
    recs
}

/// Uniform in `[lo, hi)` seconds, in ns.
pub fn secs_between(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo * S + rng.u64(..(hi - lo) * 1000) * MS
}
