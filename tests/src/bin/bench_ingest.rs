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
        records::{aws, azure, gcp, stitch::StitchConfig, Aggregate, FileCounts, Item, Telemetry},
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
fn into_engine(t: Telemetry, text: &str, rt: &tokio::runtime::Runtime) -> Result<u64> {
    let mut items: Vec<Item> = decode(t, text)?.into_iter().map(Item::Flow).collect();
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
            let n = into_engine(t, &text, &rt)?;
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
    Ok(())
}
