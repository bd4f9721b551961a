//! `sensor-agent`: the command-line entry point. Parses arguments, runs one subcommand, and
//! turns every error into one line on stderr and a non-zero exit.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sensor_agent::{
    datapath::{LoadOptions, DEFAULT_MAX_FLOWS},
    replay::{replay, Engine},
};
use sensor_common::counter;

#[derive(Parser)]
#[command(
    name = "sensor-agent",
    version,
    about = "Flow sensor that finds cryptomining and other covert long-lived traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay capture files (pcap or pcapng) through a flow engine with their own timestamps.
    Replay(ReplayArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    /// The agent's own parser in user space.
    User,
    /// The kernel XDP program, one BPF_PROG_TEST_RUN per frame (needs root or CAP_BPF).
    Kernel,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Flow engine that counts the frames.
    #[arg(long, value_enum, default_value = "user")]
    engine: EngineArg,
    /// Write the resulting flow table as JSON lines to FILE ("-" for stdout; stdout if omitted).
    #[arg(long, value_name = "FILE")]
    flows: Option<PathBuf>,
    /// Capacity of the kernel flow map for `--engine kernel`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FLOWS)]
    max_flows: u32,
    /// Capture files, read in order into one flow table.
    #[arg(value_name = "CAPTURE", required = true)]
    captures: Vec<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => cmd_replay(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_replay(args: ReplayArgs) -> Result<ExitCode> {
    let engine = match args.engine {
        EngineArg::User => Engine::User,
        EngineArg::Kernel => Engine::Kernel,
    };
    let outcome = replay(
        &args.captures,
        engine,
        &LoadOptions {
            max_flows: args.max_flows,
        },
    )
    .with_context(|| format!("replay with the {} engine", engine.name()))?;

    let mut sink: Box<dyn Write> = match &args.flows {
        None => Box::new(BufWriter::new(io::stdout().lock())),
        Some(p) if p.as_os_str() == "-" => Box::new(BufWriter::new(io::stdout().lock())),
        Some(p) => {
            Box::new(BufWriter::new(File::create(p).with_context(|| {
                format!("cannot create flow file {}", p.display())
            })?))
        }
    };
    for flow in &outcome.flows {
        serde_json::to_writer(&mut sink, &flow.to_json(engine.name()))
            .context("write flow record")?;
        sink.write_all(b"\n").context("write flow record")?;
    }
    sink.flush().context("write flow records")?;
    drop(sink);

    let mut summary = format!(
        "replayed {} frames with the {} engine: {} flows, {} packets attributed",
        outcome.frames,
        engine.name(),
        outcome.flows.len(),
        outcome.attributed
    );
    let unattributed: Vec<String> = outcome
        .unattributed
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| format!("{} {n}", counter::NAMES[i]))
        .collect();
    if !unattributed.is_empty() {
        summary.push_str(&format!(", unattributed: {}", unattributed.join(", ")));
    }
    if outcome.cut_frames > 0 {
        summary.push_str(&format!(
            ", {} frames shorter in the capture than on the wire",
            outcome.cut_frames
        ));
    }
    if outcome.evicted_flows > 0 {
        summary.push_str(&format!(
            ", {} flows evicted from a full map (raise --max-flows)",
            outcome.evicted_flows
        ));
    }
    if outcome.unstamped_flows > 0 {
        summary.push_str(&format!(
            ", {} kernel flows without capture times",
            outcome.unstamped_flows
        ));
    }
    eprintln!("{summary}");
    for e in &outcome.errors {
        eprintln!("error: {e}");
    }
    Ok(if outcome.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
