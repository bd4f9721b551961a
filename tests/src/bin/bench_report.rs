//! `bench-report`: how long the HTML report of a large replay takes to make and to render.
//!
//! Generates a deterministic capture with `gen-capture` (default 1M frames of 400k flows over
//! 600 s), replays it with the long-flow thresholds lowered to `--after` (5 s: tens of
//! thousands of long_flow and quiet_long_flow alarms) writing alarms and flow records, makes
//! the report of both, and renders it in Debian's headless Chromium (`--dump-dom`, then a
//! screenshot), printing each step's time and size. Prints figures; never fails on time.
//!
//! Run it with `cargo xtask bench report` (which builds the release agent and `gen-capture`
//! first).

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sensor_tests::{
    agent::{agent_bin, workspace_bin, TempDir},
    browser,
};

#[derive(Parser)]
#[command(about = "Time sensor-agent report on a large replay and Chromium's render of it")]
struct Args {
    /// Frames of the generated capture (k = 1,000, M = 1,000,000).
    #[arg(long, default_value = "1M")]
    packets: String,
    /// Flows of the generated capture.
    #[arg(long, default_value = "400k")]
    flows: String,
    /// detect.long_flow.after and detect.quiet_long_flow.after of the replay.
    #[arg(long, default_value = "5s")]
    after: String,
    /// Keep the files (capture, alarms, flows, page, screenshot) in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
}

fn size(p: &std::path::Path) -> String {
    let b = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    format!("{:.1} MB", b as f64 / 1e6)
}

fn run(cmd: &mut Command, what: &str) -> Result<(f64, String)> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{what} failed: {err}");
    }
    Ok((secs, err))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = TempDir::new("bench-report");
    let dir = args
        .keep
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let (capture, alarms, flows, page, png) = (
        dir.join("bench.pcap"),
        dir.join("alarms.json"),
        dir.join("flows.json"),
        dir.join("report.html"),
        dir.join("report.png"),
    );
    let (secs, _) = run(
        Command::new(workspace_bin("gen-capture"))
            .args(["--packets", &args.packets, "--flows", &args.flows, "-o"])
            .arg(&capture),
        "gen-capture",
    )?;
    println!(
        "capture: {} flows, {} frames, {} in {secs:.1} s",
        args.flows,
        args.packets,
        size(&capture)
    );
    let after_long = format!("detect.long_flow.after={}", args.after);
    let after_quiet = format!("detect.quiet_long_flow.after={}", args.after);
    let (secs, err) = run(
        Command::new(agent_bin())
            .args([
                "replay",
                "--no-progress",
                "--set",
                &after_long,
                "--set",
                &after_quiet,
                "--alarms",
            ])
            .arg(&alarms)
            .arg("--flows")
            .arg(&flows)
            .arg(&capture)
            .env("RUST_LOG", "error"),
        "sensor-agent replay",
    )?;
    let summary = err
        .lines()
        .find(|l| l.starts_with("replayed"))
        .unwrap_or("")
        .to_string();
    println!(
        "replay: {secs:.1} s; alarms {} , flows {}; {summary}",
        size(&alarms),
        size(&flows)
    );
    let (secs, err) = run(
        Command::new(agent_bin())
            .arg("report")
            .arg("--alarms")
            .arg(&alarms)
            .arg("--flows")
            .arg(&flows)
            .arg("-o")
            .arg(&page)
            .env("RUST_LOG", "error"),
        "sensor-agent report",
    )?;
    println!("report: {secs:.2} s, page {}; {}", size(&page), err.trim());
    let (_, empty) = {
        let blank = dir.join("blank.html");
        std::fs::write(&blank, "<!DOCTYPE html><title>blank</title>").context("blank page")?;
        browser::dump_dom(&blank).map_err(anyhow::Error::msg)?
    };
    let (dom, took) = browser::dump_dom(&page).map_err(anyhow::Error::msg)?;
    println!(
        "chromium --dump-dom: {:.2} s for the report ({} bytes of DOM), {:.2} s for a blank page (the browser's own start); the report's share {:.2} s",
        took.as_secs_f64(),
        dom.len(),
        empty.as_secs_f64(),
        (took.saturating_sub(empty)).as_secs_f64()
    );
    let took = browser::screenshot(&page, &png, 1280, 2000).map_err(anyhow::Error::msg)?;
    println!("chromium --screenshot: {:.2} s", took.as_secs_f64());
    let external = browser::external_references(&dom);
    if !external.is_empty() {
        bail!("the page reaches outside itself: {external:?}");
    }
    Ok(())
}
