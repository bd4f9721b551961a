//! `gen-capture`: a large, deterministic capture file for benchmarks (reader throughput, replay
//! cost, comparisons with other tools), so that every run and every developer measures the
//! same bytes.
//!
//! `gen-capture --packets 1000000 --flows 400000 [--pcapng] [--seed N] -o FILE` writes Ethernet
//! frames of `--flows` distinct conversations (IPv4 and some IPv6; TCP and UDP; several packets
//! each, some without payload, some with small payloads, some full-sized) with timestamps that
//! increase over `--duration-s` seconds. The same arguments always give the same file.
//!
//! It only writes the named file: it never sends traffic and never reads anything but its
//! arguments. Frames and file headers come from the test crate's builders (`frames`, `pcap`),
//! written from the specifications.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sensor_tests::{
    frames::{self, Frag, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN},
    parse_count,
    pcap::{self, Record},
};

#[derive(Parser)]
#[command(about = "Write a deterministic benchmark capture of many TCP/UDP flows")]
struct Args {
    /// Frames to write (k = 1,000, M = 1,000,000).
    #[arg(long, default_value = "1M")]
    packets: String,
    /// Distinct flows (5-tuples); each has at least one frame.
    #[arg(long, default_value = "400k")]
    flows: String,
    /// Write pcapng (nanosecond timestamps) instead of classic pcap (microseconds).
    #[arg(long)]
    pcapng: bool,
    /// Seconds of capture time the frames span.
    #[arg(long, default_value_t = 600)]
    duration_s: u64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
}

/// Capture time of the first frame: 2026-01-01T00:00:00Z.
const START_NS: u64 = 1_767_225_600_000_000_000;

/// Server ports with their weight out of 100 and transport (6 TCP, 17 UDP).
const SERVICES: &[(u16, u8, u32)] = &[
    (443, 6, 40),
    (80, 6, 12),
    (53, 17, 15),
    (443, 17, 8),
    (123, 17, 4),
    (22, 6, 3),
    (8080, 6, 4),
    (25, 6, 2),
    (3478, 17, 3),
    (5353, 17, 2),
    (993, 6, 2),
    (1194, 17, 2),
    (3389, 6, 3),
];

/// One flow's fixed parameters, derived from its index alone.
struct Flow {
    v6: bool,
    proto: u8,
    client: [u8; 4],
    server: [u8; 4],
    client_port: u16,
    server_port: u16,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: a fixed bijection, so flow parameters need no table.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Flow {
    fn new(index: u32, seed: u64) -> Flow {
        let h = mix(index as u64 ^ seed.rotate_left(32));
        let mut pick = (h % 100) as u32;
        let mut service = SERVICES[0];
        for s in SERVICES {
            if pick < s.2 {
                service = *s;
                break;
            }
            pick -= s.2;
        }
        // The client address carries the flow index, so every flow is a distinct 5-tuple.
        let client = [10, (index >> 16) as u8, (index >> 8) as u8, index as u8];
        // A few thousand servers, some much more popular than others.
        let rank = ((h >> 8) % 4096) * ((h >> 20) % 4096) / 4096;
        let server = [
            198,
            18 + (rank >> 8) as u8 % 2,
            rank as u8,
            1 + (h >> 40) as u8 % 250,
        ];
        Flow {
            v6: (h >> 32).is_multiple_of(10),
            proto: service.1,
            client,
            server,
            client_port: 1024 + ((h >> 44) % 64_000) as u16,
            server_port: service.0,
        }
    }

    fn v6_addr(a: [u8; 4], net: u8) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[0] = 0x20;
        v[1] = 0x01;
        v[2] = 0x0d;
        v[3] = 0xb8;
        v[4] = net;
        v[12..16].copy_from_slice(&a);
        v
    }

    /// Frame `k` (0-based) of `total` in this flow.
    fn frame(&self, k: u32, total: u32, pool: &[u8], rng: &mut fastrand::Rng) -> Vec<u8> {
        let from_client = k.is_multiple_of(2);
        let (sp, dp) = if from_client {
            (self.client_port, self.server_port)
        } else {
            (self.server_port, self.client_port)
        };
        let payload_len = if self.proto == 6 {
            match (k, rng.usize(..10)) {
                // Handshake and the closing segment carry no payload.
                (0, _) | (1, _) => 0,
                _ if k + 1 == total && total > 3 => 0,
                (_, 0..=3) => rng.usize(..120),
                (_, 4..=6) => 200 + rng.usize(..800),
                _ => 1448,
            }
        } else {
            match self.server_port {
                53 | 5353 => 30 + rng.usize(..90),
                123 => 48,
                _ => 60 + rng.usize(..1140),
            }
        };
        let at = rng.usize(..pool.len() - 1500);
        let payload = &pool[at..at + payload_len];
        let l4 = if self.proto == 6 {
            let flags = match k {
                0 => TCP_SYN,
                1 => TCP_SYN | TCP_ACK,
                _ if k + 1 == total && total > 3 => TCP_FIN | TCP_ACK,
                _ if payload_len > 0 => TCP_PSH | TCP_ACK,
                _ => TCP_ACK,
            };
            frames::tcp(sp, dp, flags, payload)
        } else {
            frames::udp(sp, dp, payload)
        };
        let (src, dst) = if from_client {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        if self.v6 {
            frames::v6_frame(
                &[],
                Self::v6_addr(src, src[0]),
                Self::v6_addr(dst, dst[0]),
                &[],
                self.proto,
                &l4,
            )
            .frame
        } else {
            frames::v4_frame(&[], src, dst, self.proto, &[], Frag::default(), &l4).frame
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let packets = parse_count(&args.packets)?;
    let flows = parse_count(&args.flows)?;
    if flows == 0 || flows > packets {
        bail!("--flows must be between 1 and --packets ({packets}); got {flows}");
    }
    if flows > 1 << 24 {
        bail!("--flows {flows}: at most 16M flows (one 10.x.y.z client address each)");
    }
    if args.duration_s == 0 {
        bail!("--duration-s must be at least 1");
    }
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let span_ns = args.duration_s * 1_000_000_000;

    // Frames per flow: one each, the rest given to flows with a skew (some flows are long).
    let mut per_flow = vec![1u32; flows];
    for _ in 0..packets - flows {
        let a = rng.usize(..flows);
        let b = rng.usize(..flows);
        per_flow[a.min(b)] += 1;
    }
    // Events (time, flow, frame number): each flow starts somewhere in the span and sends its
    // frames a few milliseconds to a few seconds apart.
    let mut events: Vec<(u64, u32, u32)> = Vec::with_capacity(packets);
    for (f, &n) in per_flow.iter().enumerate() {
        let start = rng.u64(..span_ns);
        let gap = 1_000_000 + rng.u64(..2_000_000_000);
        for k in 0..n {
            let t = (start + k as u64 * gap / (1 + k as u64 / 8)).min(span_ns - 1);
            events.push((t, f as u32, k));
        }
    }
    events.sort_unstable();

    let pool: Vec<u8> = (0..1 << 16).map(|_| rng.u8(..)).collect();
    let linktype = pcap::LINKTYPE_ETHERNET;
    let header = if args.pcapng {
        pcap::pcapng(linktype, &[])
    } else {
        pcap::pcap(linktype, &[])
    };
    let file = File::create(&args.output)
        .with_context(|| format!("{}: cannot create", args.output.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&header)
        .with_context(|| format!("{}: write failed", args.output.display()))?;
    let mut last_ts = 0u64;
    let mut bytes = header.len() as u64;
    let mut v6 = 0u64;
    let mut tcp = 0u64;
    for &(t, f, k) in &events {
        let flow = Flow::new(f, args.seed);
        let data = flow.frame(k, per_flow[f as usize], &pool, &mut rng);
        // Strictly increasing at the classic format's microsecond resolution.
        let ts = (START_NS + t).max(last_ts + 1000) / 1000 * 1000;
        last_ts = ts;
        v6 += flow.v6 as u64;
        tcp += (flow.proto == 6) as u64;
        let one = [Record::new(ts, data)];
        let rec = if args.pcapng {
            pcap::pcapng(linktype, &one)
        } else {
            pcap::pcap(linktype, &one)
        };
        out.write_all(&rec[header.len()..])
            .with_context(|| format!("{}: write failed", args.output.display()))?;
        bytes += (rec.len() - header.len()) as u64;
    }
    out.flush()
        .with_context(|| format!("{}: write failed", args.output.display()))?;
    eprintln!(
        "{}: {} frames of {} flows ({} TCP, {} IPv6 frames), {:.1} s of capture time, {} bytes",
        args.output.display(),
        packets,
        flows,
        tcp,
        v6,
        (last_ts - START_NS) as f64 / 1e9,
        bytes
    );
    Ok(())
}
