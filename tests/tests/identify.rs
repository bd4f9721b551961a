//! Naming the miner: payload classifiers, blockchain peers and known infrastructure, end to end
//! through `sensor-agent replay` on the real miner captures and on captures built here from
//! the protocols' published formats (and from ordinary traffic that must stay silent).

use std::path::Path;

use sensor_tests::{
    agent::{self, TempDir},
    frames::{self, Frag, TcpConn, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN},
    pcap::{self, Record},
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sha3::Keccak256;

const MINING_RULES: [&str; 3] = ["mining_protocol", "blockchain_p2p", "mining_infrastructure"];

fn replay(engine: &str, captures: &[&Path], extra: &[&str]) -> Vec<Value> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "replay".into(),
        "--no-progress".into(),
        "--engine".into(),
        engine.into(),
    ];
    args.extend(extra.iter().map(|s| s.into()));
    args.extend(captures.iter().map(|p| p.as_os_str().to_owned()));
    let run = agent::run(&args);
    assert!(run.success, "replay failed: {}", run.stderr);
    run.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alarm JSON ({e}): {l}")))
        .collect()
}

/// (rule, server ip, server port) of every opened alarm of the mining rules.
fn mining_alarms(alarms: &[Value]) -> Vec<(String, String, u64)> {
    let mut v: Vec<(String, String, u64)> = alarms
        .iter()
        .filter(|a| {
            a["event"]["action"] == "opened"
                && MINING_RULES.contains(&a["rule"]["id"].as_str().unwrap_or(""))
        })
        .map(|a| {
            (
                a["rule"]["id"].as_str().unwrap_or("").to_string(),
                a["destination"]["ip"].as_str().unwrap_or("").to_string(),
                a["destination"]["port"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn user_replay_names_the_pools_in_the_real_miner_captures() {
    {
        let engine = "user";
        let alarms = replay(
            engine,
            &[&agent::repo_pcap("stratum-getwork-gbt.pcap")],
            &[],
        );
        let found = mining_alarms(&alarms);
        assert_eq!(
            found,
            vec![
                ("mining_protocol".into(), "113.21.199.11".into(), 3333),
                ("mining_protocol".into(), "74.84.128.158".into(), 3333)
            ],
            "{engine}: {alarms:#?}"
        );
        for a in alarms
            .iter()
            .filter(|a| a["rule"]["id"] == "mining_protocol")
        {
            let sig = a["sensor"]["evidence"]["signature"].as_str().unwrap_or("");
            assert!(
                !sig.is_empty(),
                "the matched method is in the evidence: {a}"
            );
        }
        let alarms = replay(
            engine,
            &[&agent::repo_pcap("cryptonote-login-stratum.pcap")],
            &[],
        );
        assert_eq!(
            mining_alarms(&alarms),
            vec![("mining_protocol".into(), "192.110.160.114".into(), 3333)],
            "{engine}: {alarms:#?}"
        );
        let a = alarms
            .iter()
            .find(|a| a["rule"]["id"] == "mining_protocol")
            .expect("alarm");
        assert_eq!(a["sensor"]["evidence"]["protocol"], "cryptonote", "{a}");
        assert_eq!(a["sensor"]["evidence"]["signature"], "login", "{a}");
    }
}

#[test]
fn kernel_replay_names_the_pools_through_the_ring_buffer() {
    sensor_tests::kernel::require_bpf();
    let alarms = replay(
        "kernel",
        &[&agent::repo_pcap("stratum-getwork-gbt.pcap")],
        &[],
    );
    assert_eq!(
        mining_alarms(&alarms),
        vec![
            ("mining_protocol".into(), "113.21.199.11".into(), 3333),
            ("mining_protocol".into(), "74.84.128.158".into(), 3333)
        ]
    );
    let alarms = replay(
        "kernel",
        &[&agent::repo_pcap("cryptonote-login-stratum.pcap")],
        &[],
    );
    assert_eq!(
        mining_alarms(&alarms),
        vec![("mining_protocol".into(), "192.110.160.114".into(), 3333)]
    );
}

/// A TCP session: handshake, then each (from client?, payload) in order, then FIN both ways.
fn tcp_session(
    client: [u8; 4],
    server: [u8; 4],
    cport: u16,
    sport: u16,
    t0: u64,
    messages: &[(bool, Vec<u8>)],
) -> Vec<Record> {
    let mut recs = Vec::new();
    let mut t = t0;
    let conn = TcpConn::new(client, cport, server, sport);
    let mut push = |from_client: bool, flags: u8, payload: &[u8]| {
        recs.push(Record::new(t, conn.frame(from_client, flags, payload)));
        t += 50_000_000;
    };
    push(true, TCP_SYN, &[]);
    push(false, TCP_SYN | TCP_ACK, &[]);
    push(true, TCP_ACK, &[]);
    for (from_client, payload) in messages {
        push(*from_client, TCP_ACK | TCP_PSH, payload);
    }
    push(true, TCP_FIN | TCP_ACK, &[]);
    push(false, TCP_FIN | TCP_ACK, &[]);
    recs
}

fn udp_exchange(
    client: [u8; 4],
    server: [u8; 4],
    cport: u16,
    sport: u16,
    t0: u64,
    messages: &[(bool, Vec<u8>)],
) -> Vec<Record> {
    messages
        .iter()
        .enumerate()
        .map(|(i, (from_client, payload))| {
            let (src, dst, sp, dp) = if *from_client {
                (client, server, cport, sport)
            } else {
                (server, client, sport, cport)
            };
            Record::new(
                t0 + i as u64 * 10_000_000,
                frames::v4_frame(
                    &[],
                    src,
                    dst,
                    17,
                    &[],
                    Frag::default(),
                    &frames::udp(sp, dp, payload),
                )
                .frame,
            )
        })
        .collect()
}

const T0: u64 = 1_700_000_000_000_000_000;
const HOST: [u8; 4] = [192, 0, 2, 10];

fn bitcoin_message(command: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![0xf9, 0xbe, 0xb4, 0xd9];
    let mut cmd = [0u8; 12];
    cmd[..command.len()].copy_from_slice(command.as_bytes());
    m.extend_from_slice(&cmd);
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let check = Sha256::digest(Sha256::digest(payload));
    m.extend_from_slice(&check[..4]);
    m.extend_from_slice(payload);
    m
}

fn bitcoin_version() -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&70016i32.to_le_bytes());
    p.extend_from_slice(&1u64.to_le_bytes());
    p.extend_from_slice(&1_700_000_000i64.to_le_bytes());
    p.extend_from_slice(&[0u8; 26]);
    p.extend_from_slice(&[0u8; 26]);
    p.extend_from_slice(&0x1234_5678_9abc_def0u64.to_le_bytes());
    p.push(16);
    p.extend_from_slice(b"/Satoshi:27.0.0/");
    p.extend_from_slice(&850_000i32.to_le_bytes());
    p.push(1);
    bitcoin_message("version", &p)
}

fn levin(command: u32, body: &[u8], response: bool) -> Vec<u8> {
    let mut m = vec![0x01, 0x21, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01];
    m.extend_from_slice(&(body.len() as u64).to_le_bytes());
    m.push(u8::from(!response));
    m.extend_from_slice(&command.to_le_bytes());
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&(if response { 2u32 } else { 1u32 }).to_le_bytes());
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// RLP of a byte string.
fn rlp_bytes(b: &[u8]) -> Vec<u8> {
    if b.len() == 1 && b[0] < 0x80 {
        return b.to_vec();
    }
    assert!(b.len() < 56);
    let mut v = vec![0x80 + b.len() as u8];
    v.extend_from_slice(b);
    v
}

fn rlp_list(items: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = items.concat();
    assert!(body.len() < 56);
    let mut v = vec![0xc0 + body.len() as u8];
    v.extend_from_slice(&body);
    v
}

/// A discv4 ping: keccak256(signature || type || data) || signature || type || data.
fn discv4_ping() -> Vec<u8> {
    let endpoint = |ip: [u8; 4], port: u16| {
        rlp_list(&[
            rlp_bytes(&ip),
            rlp_bytes(&port.to_be_bytes()),
            rlp_bytes(&port.to_be_bytes()),
        ])
    };
    let data = rlp_list(&[
        rlp_bytes(&[4]),
        endpoint(HOST, 30303),
        endpoint([203, 0, 113, 7], 30303),
        rlp_bytes(&1_800_000_000u32.to_be_bytes()),
    ]);
    let signature = [0x5au8; 65];
    let mut signed = signature.to_vec();
    signed.push(1);
    signed.extend_from_slice(&data);
    let mut packet = Keccak256::digest(&signed).to_vec();
    packet.extend_from_slice(&signed);
    packet
}

#[test]
fn blockchain_peer_exchanges_built_from_the_formats_raise_blockchain_p2p() {
    let dir = TempDir::new("p2p");
    let peer = [203, 0, 113, 7];
    let monero = [203, 0, 113, 8];
    let eth = [203, 0, 113, 9];
    let mut recs = tcp_session(
        HOST,
        peer,
        50001,
        8333,
        T0,
        &[
            (true, bitcoin_version()),
            (false, bitcoin_version()),
            (true, bitcoin_message("verack", &[])),
            (false, bitcoin_message("verack", &[])),
        ],
    );
    // Monero handshake (command 1001) and its response, on a non-default port: the payload decides.
    recs.extend(tcp_session(
        HOST,
        monero,
        50002,
        28080,
        T0 + 1_000_000_000,
        &[
            (
                true,
                levin(
                    1001,
                    &[0x01, 0x11, 0x01, 0x01, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00],
                    false,
                ),
            ),
            (
                false,
                levin(
                    1001,
                    &[0x01, 0x11, 0x01, 0x01, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00],
                    true,
                ),
            ),
        ],
    ));
    recs.extend(udp_exchange(
        HOST,
        eth,
        30303,
        30303,
        T0 + 2_000_000_000,
        &[(true, discv4_ping())],
    ));
    let cap = dir.write("p2p.pcap", &pcap::pcap(pcap::LINKTYPE_ETHERNET, &recs));
    let alarms = replay("user", &[&cap], &[]);
    let found = mining_alarms(&alarms);
    assert_eq!(
        found,
        vec![
            ("blockchain_p2p".into(), "203.0.113.7".into(), 8333),
            ("blockchain_p2p".into(), "203.0.113.8".into(), 28080),
            ("blockchain_p2p".into(), "203.0.113.9".into(), 30303),
        ],
        "{alarms:#?}"
    );
    let coins: Vec<&str> = alarms
        .iter()
        .filter_map(|a| a["sensor"]["evidence"]["coin"].as_str())
        .collect();
    assert!(
        coins.contains(&"bitcoin") && coins.contains(&"monero") && coins.contains(&"ethereum"),
        "{coins:?}"
    );
}

fn tls_client_hello(sni: &str) -> Vec<u8> {
    let mut ext = Vec::new();
    // server_name
    let name = sni.as_bytes();
    let mut sn = Vec::new();
    sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sn.push(0);
    sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sn.extend_from_slice(name);
    ext.extend_from_slice(&0u16.to_be_bytes());
    ext.extend_from_slice(&(sn.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sn);
    // supported_versions: TLS 1.3
    ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[0x11; 32]);
    hello.push(0);
    hello.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]);
    hello.extend_from_slice(&[0x01, 0x00]);
    hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hello.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&hello);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

fn dns_answer(id: u16, name: &str, addr: [u8; 4], ttl: u32) -> Vec<u8> {
    let mut m = dns_query(id, name);
    m[2] = 0x81;
    m[3] = 0x80;
    m[7] = 1;
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    m.extend_from_slice(&ttl.to_be_bytes());
    m.extend_from_slice(&[0, 4]);
    m.extend_from_slice(&addr);
    m
}

#[test]
fn ordinary_traffic_raises_no_mining_alarm() {
    let dir = TempDir::new("ordinary");
    let server = [198, 51, 100, 80];
    let mut recs = Vec::new();
    let rpc = br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#.to_vec();
    let rpc_reply = br#"{"jsonrpc":"2.0","id":1,"result":"0x10d4f"}"#.to_vec();
    let inner = br#"{"jsonrpc":"2.0","id":2,"method":"getinfo","params":["mining.subscribe is only a string here"]}"#.to_vec();
    recs.extend(tcp_session(
        HOST,
        server,
        50010,
        8545,
        T0,
        &[(true, rpc), (false, rpc_reply), (true, inner)],
    ));
    // A lone SYN to the Bitcoin port.
    recs.push(Record::new(
        T0 + 1_000_000_000,
        frames::v4_frame(
            &[],
            HOST,
            [203, 0, 113, 50],
            6,
            &[],
            Frag::default(),
            &frames::tcp(50011, 8333, TCP_SYN, &[]),
        )
        .frame,
    ));
    recs.extend(tcp_session(
        HOST,
        server,
        50012,
        80,
        T0 + 2_000_000_000,
        &[
            (
                true,
                b"GET / HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8\r\n\r\n".to_vec(),
            ),
            (
                false,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            ),
        ],
    ));
    recs.extend(tcp_session(
        HOST,
        server,
        50013,
        22,
        T0 + 3_000_000_000,
        &[
            (false, b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()),
            (true, b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        ],
    ));
    recs.extend(tcp_session(
        HOST,
        server,
        50014,
        443,
        T0 + 4_000_000_000,
        &[
            (true, tls_client_hello("www.example.com")),
            (false, vec![0x16, 0x03, 0x03, 0x00, 0x02, 0x02, 0x00]),
        ],
    ));
    recs.extend(udp_exchange(
        HOST,
        [192, 0, 2, 53],
        50015,
        53,
        T0 + 5_000_000_000,
        &[
            (true, dns_query(7, "www.example.com")),
            (false, dns_answer(7, "www.example.com", server, 300)),
        ],
    ));
    let cap = dir.write("ordinary.pcap", &pcap::pcap(pcap::LINKTYPE_ETHERNET, &recs));
    let feeds = dir.path().join("feeds");
    std::fs::create_dir_all(&feeds).expect("feed dir");
    std::fs::write(
        feeds.join("pools.txt"),
        "# known pools\npool.minexmr.example\n203.0.113.99\n",
    )
    .expect("feed");
    let set = format!("intel.directory={:?}", feeds.display().to_string());
    {
        let engine = "user";
        let alarms = replay(engine, &[&cap], &["--set", &set]);
        assert!(
            mining_alarms(&alarms).is_empty(),
            "{engine}: ordinary traffic raised {alarms:#?}"
        );
    }
}

#[test]
fn a_dns_answer_for_a_listed_pool_binds_its_address_until_the_ttl_expires() {
    let dir = TempDir::new("dnsintel");
    let pool = [203, 0, 113, 66];
    let resolver = [192, 0, 2, 53];
    let mut recs = udp_exchange(
        HOST,
        resolver,
        50020,
        53,
        T0,
        &[
            (true, dns_query(0x4242, "eu.pool.minexmr.example")),
            (
                false,
                dns_answer(0x4242, "eu.pool.minexmr.example", pool, 60),
            ),
        ],
    );
    // A TLS session to the pool 10 s later (within the TTL): known infrastructure.
    recs.extend(tcp_session(
        HOST,
        pool,
        50021,
        443,
        T0 + 10_000_000_000,
        &[(true, tls_client_hello("eu.pool.minexmr.example"))],
    ));
    // Another session to the same address 10 minutes later (TTL long gone, no new lookup).
    recs.extend(tcp_session(
        HOST,
        pool,
        50022,
        8443,
        T0 + 600_000_000_000,
        &[(true, b"hello".to_vec())],
    ));
    let cap = dir.write("dns.pcap", &pcap::pcap(pcap::LINKTYPE_ETHERNET, &recs));
    let feeds = dir.path().join("feeds");
    std::fs::create_dir_all(&feeds).expect("feed dir");
    std::fs::write(
        feeds.join("pools.txt"),
        "# known pools\npool.minexmr.example\n",
    )
    .expect("feed");
    let set = format!("intel.directory={:?}", feeds.display().to_string());
    let alarms = replay("user", &[&cap], &["--set", &set]);
    let infra: Vec<&Value> = alarms
        .iter()
        .filter(|a| a["rule"]["id"] == "mining_infrastructure" && a["event"]["action"] == "opened")
        .collect();
    assert_eq!(infra.len(), 1, "{alarms:#?}");
    let a = infra[0];
    assert_eq!(
        (
            a["destination"]["ip"].as_str(),
            a["destination"]["port"].as_u64()
        ),
        (Some("203.0.113.66"), Some(443))
    );
    let ev = &a["sensor"]["evidence"];
    assert_eq!(ev["domain"], "eu.pool.minexmr.example", "{a}");
    assert_eq!(ev["feed"], "pools.txt", "{a}");
    assert_eq!(ev["entry"], "pool.minexmr.example", "{a}");
    assert_eq!(ev["matched_by"], "dns_answer", "{a}");
}
