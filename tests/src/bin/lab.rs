//! `cargo xtask lab`: the sensor watching real traffic between two network namespaces, with
//! demo thresholds, in under two minutes. Leaves no namespace, link or process behind.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use sensor_tests::{
    agent::{agent_bin, TempDir},
    lab::{self, LabConfig, BULK_PORT, QUIET_PORT, UDP_PORT},
    netns::NetnsPair,
};

fn main() -> Result<()> {
    sensor_tests::kernel::require_bpf();
    let started = Instant::now();
    let agent = agent_bin();
    let dir = TempDir::new("lab");
    let cfg = LabConfig::default();
    println!(
        "lab: two namespaces joined by a veth pair; sensor in the client namespace (XDP + TC egress); thresholds {}s, poll {}s",
        cfg.threshold.as_secs(),
        cfg.poll.as_secs()
    );
    println!(
        "lab: traffic: scripted stratum miner and pool on port {QUIET_PORT} (a share every {:?} for {}s, watched from {:?}), bulk TCP transfer of {} MiB to port {BULK_PORT}, UDP exchange on port {UDP_PORT}",
        cfg.keepalive,
        cfg.quiet_for.as_secs(),
        cfg.watch_after,
        cfg.bulk_bytes >> 20
    );
    let outcome = {
        let mut pair = NetnsPair::create("lab").map_err(|e| anyhow!(e))?;
        lab::run(&mut pair, &agent, dir.path(), &cfg).map_err(|e| anyhow!(e))?
        // The namespaces and veth pair go here.
    };
    println!("lab: alarms raised:");
    for a in &outcome.alarms {
        println!(
            "  {:8} {:16} {}:{} -> {}:{}  duration {:.0}s  severity {}  evidence {}",
            a["event"]["action"].as_str().unwrap_or("?"),
            a["rule"]["id"].as_str().unwrap_or("?"),
            a["source"]["ip"].as_str().unwrap_or("?"),
            a["source"]["port"],
            a["destination"]["ip"].as_str().unwrap_or("?"),
            a["destination"]["port"],
            a["event"]["duration"].as_f64().unwrap_or(0.0) / 1e9,
            a["event"]["severity"],
            a["sensor"]["evidence"]
        );
    }
    let on_port = |rule: &str, port: u16| {
        outcome
            .alarms
            .iter()
            .any(|a| a["rule"]["id"] == rule && a["destination"]["port"] == port)
    };
    let quiet = on_port("quiet_long_flow", QUIET_PORT);
    let mining = on_port("mining_protocol", QUIET_PORT);
    let periodic = on_port("periodic_flow", QUIET_PORT);
    let bulk = outcome
        .alarms
        .iter()
        .any(|a| a["destination"]["port"] == BULK_PORT);
    println!(
        "lab: quiet session raised quiet_long_flow: {}",
        if quiet { "yes" } else { "NO" }
    );
    println!(
        "lab: stratum session raised mining_protocol: {}",
        if mining { "yes" } else { "NO" }
    );
    println!(
        "lab: keepalives every {:?} raised periodic_flow through the kernel trace: {}",
        cfg.keepalive,
        if periodic { "yes" } else { "NO" }
    );
    println!(
        "lab: bulk transfer raised: {}",
        if bulk {
            "an alarm (unexpected)"
        } else {
            "nothing"
        }
    );
    println!(
        "lab: done in {:.0}s; namespaces removed",
        started.elapsed().as_secs_f64()
    );
    if !quiet || !mining || !periodic || bulk {
        bail!(
            "the lab did not behave as expected; agent log:\n{}",
            outcome.agent_log
        );
    }
    if started.elapsed() > Duration::from_secs(120) {
        bail!("the lab took longer than two minutes");
    }
    Ok(())
}
