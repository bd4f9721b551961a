//! Encrypted mining on synthetic captures, with the default configuration: a 2.5 h TLS session
//! (a real TLS 1.3 ClientHello without ALPN naming `eu1.pool.example-xmr.net`, port 14433)
//! that is quiet and carries constant-size application-data records each way raises
//! `encrypted_mining` listing every contribution; a TLS session to `www.example.com:443` with
//! ALPN h2 and random record sizes and timing raises none; neither do the real captures.

use fastrand::Rng;
use sensor_tests::{
    agent::{self, TempDir},
    frames::{TcpConn, TCP_ACK, TCP_PSH, TCP_SYN},
    pcap::{self, Record},
};
use serde_json::Value;

const CLIENT: [u8; 4] = [192, 0, 2, 10];
const SERVER: [u8; 4] = [203, 0, 113, 80];
const T0: u64 = 1_700_000_000_000_000_000;
const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const CPORT: u16 = 40000;

// The contributions the rule lists, in order.
use sensor_agent::detect::encrypted_mining::CONTRIBUTIONS;

fn packet(t: u64, from_client: bool, sport: u16, flags: u8, payload: &[u8]) -> Record {
    Record::new(
        t,
        TcpConn::new(CLIENT, CPORT, SERVER, sport).frame(from_client, flags, payload),
    )
}

fn u16be(v: usize) -> [u8; 2] {
    (v as u16).to_be_bytes()
}

/// One TLS extension.
fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut e = kind.to_be_bytes().to_vec();
    e.extend_from_slice(&u16be(data.len()));
    e.extend_from_slice(data);
    e
}

/// A TLS record of `kind` (0x16 handshake, 0x17 application data, ...) carrying `body`.
fn record(kind: u8, version: u16, body: &[u8]) -> Vec<u8> {
    let mut r = vec![kind];
    r.extend_from_slice(&version.to_be_bytes());
    r.extend_from_slice(&u16be(body.len()));
    r.extend_from_slice(body);
    r
}

/// `n` random bytes (key shares, randoms, AEAD ciphertext).
fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    rng.fill(&mut b);
    b
}

/// An application-data record of `total` bytes on the wire (5-byte header included), as a
/// TLS 1.3 AEAD record: opaque bytes.
fn app_data(total: usize, rng: &mut Rng) -> Vec<u8> {
    record(0x17, 0x0303, &random_bytes(rng, total.saturating_sub(5)))
}

/// A TLS 1.3 ClientHello in one handshake record, as an OpenSSL-based client sends it:
/// SNI `sni`, ALPN `alpn` (none for a miner), supported_versions 1.3/1.2, x25519 key share.
fn client_hello(sni: &str, alpn: &[&str], rng: &mut Rng) -> Vec<u8> {
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
fn server_flight(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
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
fn tls_session(
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

/// Replays `recs` with the default configuration and the `--set` overrides `sets`; returns
/// every alarm.
fn replay(dir: &TempDir, name: &str, recs: &[Record], sets: &[&str]) -> Vec<Value> {
    let cap = dir.write(name, &pcap::pcap(pcap::LINKTYPE_ETHERNET, recs));
    let mut args: Vec<&std::ffi::OsStr> = vec!["replay".as_ref(), "--no-progress".as_ref()];
    for s in sets {
        args.push("--set".as_ref());
        args.push(s.as_ref());
    }
    args.push(cap.as_os_str());
    let run = agent::run(&args);
    assert!(run.success, "{}", run.stderr);
    run.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|a| a["event"]["kind"] == "alert")
        .collect()
}

fn rule(alarms: &[Value], id: &str) -> Vec<Value> {
    alarms
        .iter()
        .filter(|a| a["rule"]["id"] == id)
        .cloned()
        .collect()
}

/// Uniform in `[lo, hi)` seconds, in ns.
fn secs_between(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo * S + rng.u64(..(hi - lo) * 1000) * MS
}

#[test]
fn a_quiet_long_tls_session_to_a_pool_sni_with_constant_record_sizes_raises_encrypted_mining() {
    let dir = TempDir::new("encrypted-pool");
    let mut rng = Rng::with_seed(0x5EED);
    // Client: a 181-byte keepalive or share every 30-60 s. Server: a 251-byte job every
    // 53-57 s (rebroadcast). 2.5 h, about 15 B/s.
    let recs = tls_session(
        14433,
        "eu1.pool.example-xmr.net",
        &[],
        9000,
        &mut rng,
        |r| (secs_between(r, 30, 60), 181),
        |r| (secs_between(r, 53, 57), 251),
    );
    let alarms = replay(&dir, "pool.pcap", &recs, &[]);
    let enc = rule(&alarms, "encrypted_mining");
    let opened = enc
        .iter()
        .find(|a| a["event"]["action"] == "opened")
        .unwrap_or_else(|| {
            panic!(
                "no encrypted_mining alarm; rules raised: {:?}",
                alarms.iter().map(|a| &a["rule"]["id"]).collect::<Vec<_>>()
            )
        });
    println!(
        "{}",
        serde_json::to_string_pretty(opened).expect("alarm JSON")
    );
    let actions: Vec<&str> = enc
        .iter()
        .filter_map(|a| a["event"]["action"].as_str())
        .collect();
    println!("encrypted_mining events: {actions:?}");
    assert_eq!(
        actions.iter().filter(|a| **a != "updated").count(),
        1,
        "opened once, never closed: {actions:?}"
    );
    assert_eq!(opened["destination"]["port"], 14433);
    assert_eq!(opened["rule"]["name"], "Suspect Encrypted Mining");
    for a in [opened, enc.last().expect("an event")] {
        let ev = &a["sensor"]["evidence"];
        assert_eq!(
            ev["sni"], "eu1.pool.example-xmr.net",
            "the ClientHello parsed: {a}"
        );
        assert_eq!(ev["alpn"], serde_json::json!([]), "{a}");
        let ja4 = ev["ja4"].as_str().expect("ja4");
        assert!(
            ja4.starts_with("t13d") && ja4[..10].ends_with("00"),
            "{ja4}"
        );
        assert_eq!(ev["basis"], "tls", "{a}");
        let score = ev["score"].as_f64().expect("score");
        let min = ev["min_score"].as_f64().expect("min_score");
        assert!(score >= min && min == 0.6, "{score} < {min}: {a}");
        // Quiet: looked at from quiet_min_duration (10m), before it is long (30m).
        assert!(ev["duration_s"].as_f64().is_some_and(|d| d >= 600.0), "{a}");
        let list = ev["contributions"].as_array().expect("contributions");
        let names: Vec<&str> = list.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, CONTRIBUTIONS, "every contribution listed: {a}");
        let mut sum = 0.0;
        for c in list {
            let (w, s, p) = (
                c["weight"].as_f64().expect("weight"),
                c["strength"].as_f64().expect("strength"),
                c["points"].as_f64().expect("points"),
            );
            assert!((p - w * s).abs() < 0.002, "points = weight x strength: {c}");
            assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()), "{c}");
            sum += p;
        }
        assert!(
            (score - f64::min(sum, 1.0)).abs() < 0.01,
            "{score} vs {sum}"
        );
        let points = |name: &str| {
            list.iter()
                .find(|c| c["name"] == name)
                .and_then(|c| c["points"].as_f64())
                .unwrap_or(-1.0)
        };
        if a == opened {
            println!("opened with score {score}");
            // At opening the server had not yet sent min_messages records to time.
            continue;
        }
        assert!(
            ev["duration_s"].as_f64().is_some_and(|d| d >= 8900.0),
            "{a}"
        );
        // Every contribution but a JA4 match (miner_ja4 is empty by default).
        for &name in CONTRIBUTIONS.iter().filter(|n| **n != "miner_ja4") {
            assert!(points(name) > 0.0, "{name} gave no points: {a}");
        }
        assert_eq!(points("miner_ja4"), 0.0, "no miner JA4 configured: {a}");
        println!("last event: {}", ev);
    }
}

#[test]
fn a_tls_web_session_with_irregular_record_sizes_raises_no_encrypted_mining() {
    let dir = TempDir::new("encrypted-web");
    let mut rng = Rng::with_seed(0xB0B);
    // Exponential gaps (mean 45 s) and sizes uniform in 60-1400 bytes, both ways, 2.5 h.
    let exp = |r: &mut Rng| ((-(1.0 - r.f64()).ln() * 45.0).max(0.01) * S as f64) as u64;
    let recs = tls_session(
        443,
        "www.example.com",
        &["h2", "http/1.1"],
        9000,
        &mut rng,
        |r| (exp(r), 60 + r.usize(..1341)),
        |r| (exp(r), 60 + r.usize(..1341)),
    );
    let alarms = replay(&dir, "web.pcap", &recs, &[]);
    let enc = rule(&alarms, "encrypted_mining");
    assert!(enc.is_empty(), "a web session raised {enc:#?}");
    // Not only for lack of identity evidence: with none required and no threshold, every
    // score it reaches stays far below min_score (0.6).
    let alarms = replay(
        &dir,
        "web.pcap",
        &recs,
        &[
            "detect.encrypted_mining.min_evidence=[]",
            "detect.encrypted_mining.min_score=0",
        ],
    );
    let scores: Vec<f64> = rule(&alarms, "encrypted_mining")
        .iter()
        .filter_map(|a| a["sensor"]["evidence"]["score"].as_f64())
        .collect();
    println!("web session scores: {scores:?}");
    assert!(!scores.is_empty(), "scored at all");
    assert!(scores.iter().all(|&s| s < 0.4), "{scores:?}");
}

#[test]
fn the_real_captures_raise_no_encrypted_mining() {
    for name in [
        "stratum-getwork-gbt.pcap",
        "cryptonote-login-stratum.pcap",
        "quiet-long-tcp.pcap",
    ] {
        let cap = agent::repo_pcap(name);
        let run = agent::run(&["replay".as_ref(), "--no-progress".as_ref(), cap.as_os_str()]);
        assert!(run.success, "{}", run.stderr);
        let enc: Vec<&str> = run
            .stdout
            .lines()
            .filter(|l| l.contains("\"encrypted_mining\""))
            .collect();
        assert!(enc.is_empty(), "{name}: {enc:#?}");
    }
}
