//! `cargo xtask bench ingest`: records per second for each cloud flow log format, decoded and
//! fed into the engine, on one core.
//!
//! A deterministic synthetic log (seeded) of `--records` records (1M by default) over
//! `--flows` long-lived flows (10k), one record per direction per 60 s window (AWS, GCP) or one
//! update per connection per window (Azure), is written in each format's layout in memory.
//! Two figures per format, median of `--rounds` rounds:
//! - decode: the format's parser alone, text to normalised records;
//! - into the engine: parse, time order, stitch, and `pipeline::process` of every event
//!   (flow table, detectors at each tick, alarms rendered to /dev/null), what `ingest` does
//!   after reading the files.
//!
//! NetFlow v9 and IPFIX: the same records as datagrams the way softflowd sends them (a template
//! set first, then data sets of 30 records per datagram, one record per direction), decoded by
//! the collector's [`Decoder`] (decode), and decoded, ordered, stitched and processed (into
//! the engine).
//!
//! Figures are printed with the target (1M records/s per core), never asserted.

use std::{fmt::Write as _, time::Instant};

use anyhow::{Context, Result};
use clap::Parser;
use fastrand::Rng;
use sensor_agent::{
    alarm::Observer,
    config::Config,
    engine::Engine,
    pipeline::{self, Observers},
    sink::AlarmOutput,
    source::{
        ingest::IngestSource,
        records::{
            aws, azure, gcp, netflow::Decoder, stitch::StitchConfig, Aggregate, FileCounts, Item,
            Telemetry,
        },
    },
};
use sensor_tests::parse_count;

#[derive(Parser)]
struct Args {
    /// Records per format (e.g. 1M, 200k).
    #[arg(long, default_value = "1M", value_parser = parse_count)]
    records: usize,
    /// Long-lived flows the records belong to.
    #[arg(long, default_value = "10k", value_parser = parse_count)]
    flows: usize,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

const T0: u64 = 1_700_000_000;
const WINDOW: u64 = 60;

/// (client, client port, server, server port) of flow `i`.
fn endpoints(rng: &mut Rng, flows: usize) -> Vec<(String, u16, String, u16)> {
    (0..flows)
        .map(|i| {
            (
                format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
                rng.u16(32768..61000),
                format!("203.0.{}.{}", rng.u8(0..255), rng.u8(1..255)),
                [443, 3333, 4444, 8080][rng.usize(0..4)],
            )
        })
        .collect()
}

/// The synthetic log in `t`'s layout, with exactly `records` records.
fn generate(t: Telemetry, args: &Args) -> String {
    let mut rng = Rng::with_seed(args.seed);
    let eps = endpoints(&mut rng, args.flows);
    let mut out = String::with_capacity(args.records * 160);
    let mut tuples = Vec::new();
    if t == Telemetry::AwsVpc {
        out.push_str("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status\n");
    }
    let mut n = 0;
    let mut w = 0u64;
    'outer: loop {
        for (c, cp, s, sp) in &eps {
            let start = T0 + w * WINDOW + rng.u64(0..20);
            let end = start + rng.u64(10..40);
            let (p, b) = (rng.u64(1..20), rng.u64(60..3000));
            match t {
                Telemetry::AwsVpc => {
                    for (src, spt, dst, dpt) in [(c, cp, s, sp), (s, sp, c, cp)] {
                        let _ = writeln!(out, "2 123456789012 eni-0a1b2c3d {src} {dst} {spt} {dpt} 6 {p} {b} {start} {end} ACCEPT OK");
                        n += 1;
                    }
                }
                Telemetry::GcpVpc => {
                    for (src, spt, dst, dpt) in [(c, cp, s, sp), (s, sp, c, cp)] {
                        let _ = writeln!(out, "{{\"jsonPayload\":{{\"bytes_sent\":\"{b}\",\"connection\":{{\"dest_ip\":\"{dst}\",\"dest_port\":{dpt},\"protocol\":6,\"src_ip\":\"{src}\",\"src_port\":{spt}}},\"end_time\":\"{}\",\"packets_sent\":\"{p}\",\"reporter\":\"SRC\",\"start_time\":\"{}\"}},\"logName\":\"projects/p/logs/compute.googleapis.com%2Fvpc_flows\"}}", rfc3339(end), rfc3339(start));
                        n += 1;
                    }
                }
                _ => {
                    tuples.push(format!(
                        "\"{},{c},{s},{cp},{sp},6,O,C,NX,{p},{b},{p},{b}\"",
                        end * 1000
                    ));
                    n += 1;
                }
            }
            if n >= args.records {
                break 'outer;
            }
        }
        w += 1;
    }
    if t == Telemetry::AzureVnet {
        let _ = write!(
            out,
            "{{\"records\":[{{\"time\":\"2023-11-14T22:13:20Z\",\"flowLogVersion\":4,\"macAddress\":\"00224871C205\",\"category\":\"FlowLogFlowEvent\",\"flowRecords\":{{\"flows\":[{{\"aclID\":\"x\",\"flowGroups\":[{{\"rule\":\"r\",\"flowTuples\":[{}]}}]}}]}}}}]}}",
            tuples.join(",\n")
        );
    }
    out
}

fn rfc3339(s: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(s as i64).expect("time");
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].000Z");
    t.format(&f).expect("format")
}

/// Records per datagram (about 1,300 bytes: below a 1,500-byte MTU).
const PER_DATAGRAM: usize = 30;

/// The synthetic records as NetFlow v9 (`ipfix` false) or IPFIX datagrams: IPv4 5-tuple,
/// octets, packets, TCP flags and the start and end (v9: sysUpTime-relative ms; IPFIX:
/// flowStartMilliseconds/flowEndMilliseconds).
fn datagrams(ipfix: bool, args: &Args) -> Vec<Vec<u8>> {
    let mut rng = Rng::with_seed(args.seed);
    let flows: Vec<([u8; 4], u16, [u8; 4], u16)> = (0..args.flows)
        .map(|i| {
            (
                [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                rng.u16(32768..61000),
                [203, 0, rng.u8(0..255), rng.u8(1..255)],
                [443, 3333, 4444, 8080][rng.usize(0..4)],
            )
        })
        .collect();
    let (start_ie, end_ie, time_len) = if ipfix {
        (152u16, 153u16, 8u16)
    } else {
        (22, 21, 4)
    };
    let fields: [(u16, u16); 9] = [
        (8, 4),
        (12, 4),
        (7, 2),
        (11, 2),
        (4, 1),
        (6, 1),
        (1, 8),
        (2, 8),
        (start_ie, time_len),
    ];
    let mut template = Vec::new();
    template.extend(256u16.to_be_bytes());
    template.extend((fields.len() as u16 + 1).to_be_bytes());
    for (ie, len) in fields.iter().chain([(end_ie, time_len)].iter()) {
        template.extend(ie.to_be_bytes());
        template.extend(len.to_be_bytes());
    }
    // v9 times are ms of the exporter's uptime; it booted at T0.
    let boot_ms = T0 * 1000;
    let mut records = Vec::new();
    let (mut n, mut w) = (0, 0u64);
    'outer: loop {
        for (c, cp, srv, sp) in &flows {
            let start = (T0 + w * WINDOW + rng.u64(0..20)) * 1000;
            let end = start + rng.u64(10_000..40_000);
            for (src, spt, dst, dpt) in [(c, cp, srv, sp), (srv, sp, c, cp)] {
                let mut r = Vec::with_capacity(48);
                r.extend(src);
                r.extend(dst);
                r.extend(spt.to_be_bytes());
                r.extend(dpt.to_be_bytes());
                r.extend([6, 0x18]);
                r.extend(rng.u64(60..3000).to_be_bytes());
                r.extend(rng.u64(1..20).to_be_bytes());
                for t in [start, end] {
                    if ipfix {
                        r.extend(t.to_be_bytes());
                    } else {
                        r.extend(((t - boot_ms) as u32).to_be_bytes());
                    }
                }
                records.push((end, r));
                n += 1;
            }
            if n >= args.records {
                break 'outer;
            }
        }
        w += 1;
    }
    // Exporters send a record when the flow's interval ends.
    records.sort_by_key(|(end, _)| *end);
    let set = |id: u16, body: &[u8]| {
        let mut s = Vec::with_capacity(body.len() + 4);
        s.extend(id.to_be_bytes());
        s.extend((body.len() as u16 + 4).to_be_bytes());
        s.extend(body);
        s
    };
    let mut out = Vec::new();
    let mut seq = 0u32;
    for (i, chunk) in records.chunks(PER_DATAGRAM).enumerate() {
        let latest = chunk.last().map_or(0, |(e, _)| *e);
        let mut sets = Vec::new();
        if i == 0 {
            sets.extend(set(if ipfix { 2 } else { 0 }, &template));
        }
        let body: Vec<u8> = chunk.iter().flat_map(|(_, r)| r.iter().copied()).collect();
        sets.extend(set(256, &body));
        let mut d = Vec::with_capacity(sets.len() + 20);
        if ipfix {
            d.extend(10u16.to_be_bytes());
            d.extend((sets.len() as u16 + 16).to_be_bytes());
            d.extend(((latest / 1000) as u32).to_be_bytes());
            d.extend(seq.to_be_bytes());
            d.extend(1u32.to_be_bytes());
            seq = seq.wrapping_add(chunk.len() as u32);
        } else {
            d.extend(9u16.to_be_bytes());
            d.extend((chunk.len() as u16 + u16::from(i == 0)).to_be_bytes());
            d.extend(((latest - boot_ms) as u32).to_be_bytes());
            d.extend(((latest / 1000) as u32).to_be_bytes());
            d.extend(seq.to_be_bytes());
            d.extend(1u32.to_be_bytes());
            seq = seq.wrapping_add(1);
        }
        d.extend(sets);
        out.push(d);
    }
    out
}

fn decode_datagrams(datagrams: &[Vec<u8>]) -> Result<Vec<Aggregate>> {
    let mut d = Decoder::new();
    let from = "127.0.0.1:2055".parse().context("address")?;
    let mut out = Vec::with_capacity(datagrams.len() * PER_DATAGRAM);
    for dg in datagrams {
        d.decode(from, dg, &mut out);
    }
    let c = &d.counters;
    anyhow::ensure!(
        c.malformed == 0 && c.incomplete == 0 && c.no_template == 0 && c.sequence_gaps == 0,
        "synthetic datagrams did not decode cleanly: {c:?}"
    );
    Ok(out)
}

fn decode(t: Telemetry, text: &str) -> Result<Vec<Aggregate>> {
    let (mut c, mut out) = (FileCounts::default(), Vec::new());
    match t {
        Telemetry::AwsVpc => aws::parse(text, &mut c, &mut out).context("aws")?,
        Telemetry::GcpVpc => gcp::parse(text, &mut c, &mut out).context("gcp")?,
        _ => azure::parse(t, text, &mut c, &mut out).map_err(anyhow::Error::msg)?,
    }
    anyhow::ensure!(
        c.malformed == 0,
        "{} malformed: {:?}",
        c.malformed,
        c.first_malformed
    );
    Ok(out)
}

/// Parse, order, stitch and process every event; returns the records handed over.
fn into_engine(records: Vec<Aggregate>, rt: &tokio::runtime::Runtime) -> Result<u64> {
    let mut items: Vec<Item> = records.into_iter().map(Item::Flow).collect();
    items.sort_by_key(Item::time);
    let cfg = Config::default();
    let mut engine = Engine::new(&cfg, Observer::default());
    let mut alarms = AlarmOutput::open(
        Some(std::path::Path::new("/dev/null")),
        &[],
        &cfg.spool,
        &cfg.output,
    )?;
    let mut source = IngestSource::new(
        items,
        StitchConfig {
            gap_ns: 2 * WINDOW * 1_000_000_000,
            tick_ns: WINDOW * 1_000_000_000,
        },
    );
    rt.block_on(pipeline::run(
        &mut source,
        &mut engine,
        &mut alarms,
        &mut Observers::default(),
    ))?;
    Ok(source.stitcher.counters.records)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    println!(
        "ingest: {} records over {} flows per format, {} rounds, one core; target >= 1M records/s",
        args.records, args.flows, args.rounds
    );
    for t in [Telemetry::AwsVpc, Telemetry::AzureVnet, Telemetry::GcpVpc] {
        let text = generate(t, &args);
        let (mut dec, mut eng) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds.max(1) {
            let start = Instant::now();
            let n = decode(t, &text)?.len();
            dec.push(n as f64 / start.elapsed().as_secs_f64());
            let start = Instant::now();
            let n = into_engine(decode(t, &text)?, &rt)?;
            eng.push(n as f64 / start.elapsed().as_secs_f64());
        }
        let (d, e) = (median(dec), median(eng));
        println!(
            "{:<11} {:>6.1} MB  decode {:>6.2} M records/s  into the engine {:>6.2} M records/s  {}",
            t.name(),
            text.len() as f64 / 1e6,
            d / 1e6,
            e / 1e6,
            if e >= 1e6 { "(target met)" } else { "(below target)" }
        );
    }
    for (ipfix, name) in [(false, Telemetry::NetflowV9), (true, Telemetry::Ipfix)] {
        let dgs = datagrams(ipfix, &args);
        let bytes: usize = dgs.iter().map(Vec::len).sum();
        let (mut dec, mut eng) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds.max(1) {
            let start = Instant::now();
            let n = decode_datagrams(&dgs)?.len();
            dec.push(n as f64 / start.elapsed().as_secs_f64());
            let start = Instant::now();
            let n = into_engine(decode_datagrams(&dgs)?, &rt)?;
            eng.push(n as f64 / start.elapsed().as_secs_f64());
        }
        let (d, e) = (median(dec), median(eng));
        println!(
            "{:<11} {:>6.1} MB  decode {:>6.2} M records/s  into the engine {:>6.2} M records/s  {}",
            name.name(),
            bytes as f64 / 1e6,
            d / 1e6,
            e / 1e6,
            if e >= 1e6 { "(target met)" } else { "(below target)" }
        );
    }
    Ok(())
}
