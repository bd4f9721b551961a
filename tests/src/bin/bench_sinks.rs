//! `cargo xtask bench sinks`: alarms per second through the durable spool to a loopback TCP
//! syslog receiver (octet-counted, CEF inside RFC 5424), to a file sink (JSON lines) and to a
//! local Kafka-protocol broker (Tansu, started here on a free port), with
//! the spool's fsync once per batch; and the spool's write amplification (bytes the process
//! wrote, from /proc/self/io, per byte of alarm). Prints figures; never fails on time.

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sensor_agent::sink::{delivery::Delivery, transport::SinkConfig};
use sensor_tests::kafka::{self, Broker};
use serde_json::json;

#[derive(Parser)]
#[command(
    about = "Alarms per second through the spool to a loopback syslog receiver and to a file"
)]
struct Args {
    /// Alarms per run.
    #[arg(long, default_value_t = 200_000)]
    alarms: u64,
    /// Alarms between two spool flushes (the fsync batch).
    #[arg(long, default_value_t = 1000)]
    batch: u64,
}

fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn alarm(i: u64) -> serde_json::Value {
    json!({
        "@timestamp": "2026-11-26T21:00:00.000000Z",
        "event": {"kind": "alert", "id": format!("{i:032x}"), "action": "opened", "start": "2026-11-26T20:00:00.000000Z",
                  "end": "2026-11-26T21:00:00.000000Z", "duration": 3_600_000_000_000u64, "severity": 8},
        "rule": {"id": "mining_protocol", "name": "Cryptomining Protocol"},
        "source": {"ip": "192.0.2.10", "port": 40000 + (i % 20000), "bytes": 1234, "packets": 12},
        "destination": {"ip": "203.0.113.66", "port": 3333, "bytes": 5678, "packets": 11},
        "network": {"transport": "tcp", "iana_number": "6", "community_id": "1:y2XkHe1REW6ho/NuoGcEnbnKND0="},
        "observer": {"hostname": "sensor-1"},
        "threat": {"framework": "MITRE ATT&CK", "technique": {"id": ["T1496"], "name": ["Resource Hijacking"]}},
        "sensor": {"evidence": {"protocol": "stratum", "signature": "mining.subscribe", "agent": "XMRig/6.21.0", "confirmed_by_server": true}, "hits": 1},
    })
}

/// Counts octet-counted messages on one accepted connection at a time.
fn receiver(listener: TcpListener, received: Arc<AtomicU64>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mut r = BufReader::with_capacity(1 << 20, conn);
        let mut len = Vec::new();
        let mut buf = Vec::new();
        loop {
            len.clear();
            match r.read_until(b' ', &mut len) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let Ok(n) = std::str::from_utf8(&len[..len.len() - 1])
                .unwrap_or("x")
                .parse::<usize>()
            else {
                break;
            };
            buf.resize(n, 0);
            if r.read_exact(&mut buf).is_err() {
                break;
            }
            received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run(
    name: &str,
    sink: &str,
    spool_dir: &std::path::Path,
    args: &Args,
    delivered: impl Fn() -> u64,
) -> Result<()> {
    let sinks: Vec<SinkConfig> = vec![toml::from_str(sink).context("sink config")?];
    let section = toml::from_str(&format!(
        "dir = {:?}\nfsync = \"batch\"\nmax_bytes = 1073741824",
        spool_dir.display().to_string()
    ))
    .context("spool config")?;
    let delivery = Delivery::start(&sinks, &section)?.context("no delivery")?;
    let alarms: Vec<serde_json::Value> = (0..args.alarms).map(alarm).collect();
    let payload: u64 = alarms
        .iter()
        .map(|a| serde_json::to_vec(a).map_or(0, |v| v.len() as u64))
        .sum();
    let w0 = write_bytes();
    let start = Instant::now();
    for (i, a) in alarms.iter().enumerate() {
        delivery.submit(a)?;
        if (i as u64 + 1).is_multiple_of(args.batch) {
            delivery.flush()?;
        }
    }
    delivery.flush()?;
    let spooled = start.elapsed();
    // The sinks run as threads here (no runtime of the agent's); the wait itself is async.
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    if !waiter.block_on(delivery.drain(Duration::from_secs(300))) {
        bail!(
            "{name}: not delivered within 300 s: {:?}",
            delivery.status()
        );
    }
    let total = start.elapsed();
    let written = write_bytes() - w0;
    drop(delivery);
    let got = delivered();
    println!(
        "{name:<22} {:>9.0} alarms/s end to end ({} alarms in {:.2} s; spooling alone {:.0}/s); delivered {got}; bytes written / alarm bytes = {:.2} (alarm {} B)",
        args.alarms as f64 / total.as_secs_f64(),
        args.alarms,
        total.as_secs_f64(),
        args.alarms as f64 / spooled.as_secs_f64(),
        written as f64 / payload as f64,
        payload / args.alarms.max(1)
    );
    println!(
        "{:<22} target >= 50k alarms/s: {}",
        "",
        if args.alarms as f64 / total.as_secs_f64() >= 50_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("sensor-bench-sinks-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(AtomicU64::new(0));
        let r = received.clone();
        std::thread::spawn(move || receiver(listener, r));
        run(
            "syslog tcp (CEF)",
            &format!("kind = \"syslog\"\naddress = \"tcp://127.0.0.1:{port}\"\nformat = \"cef\"\nframing = \"octet-counted\""),
            &dir.join("spool-tcp"),
            &args,
            || received.load(Ordering::Relaxed),
        )?;
        let file = dir.join("alarms.json");
        run(
            "file (JSON lines)",
            &format!(
                "kind = \"file\"\npath = {:?}\nformat = \"json\"",
                file.display().to_string()
            ),
            &dir.join("spool-file"),
            &args,
            || std::fs::read_to_string(&file).map_or(0, |t| t.lines().count() as u64),
        )?;
        // A real broker (Tansu, SQLite storage) on a free loopback port; tools/kafka-read.py
        // (kafka-python) counts what the topic holds afterwards.
        let broker_dir = dir.join("broker");
        std::fs::create_dir_all(&broker_dir)?;
        let broker = Broker::start(&broker_dir).map_err(anyhow::Error::msg)?;
        broker
            .create_topic("bench-alarms", 3)
            .map_err(anyhow::Error::msg)?;
        let address = broker.address();
        run(
            "kafka (JSON, lz4)",
            &format!(
                "kind = \"kafka\"\nbrokers = \"{address}\"\ntopic = \"bench-alarms\"\nformat = \"json\""
            ),
            &dir.join("spool-kafka"),
            &args,
            || match kafka::count(&address, "bench-alarms") {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("kafka: cannot count the topic's messages: {e}");
                    0
                }
            },
        )
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
