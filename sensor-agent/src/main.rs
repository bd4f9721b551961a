//! `sensor-agent`: the command-line entry point. Parses arguments, starts the tokio runtime,
//! wires a source, the engine and the outputs into the one event loop
//! ([`sensor_agent::pipeline::run`]), and presents what came out: status lines and summaries
//! from [`Engine::stats`]. It holds no detection logic. Every error becomes one line on
//! stderr and a non-zero exit.
//!
//! Tasks of the runtime: the event loop (main task; the live source's ring buffers are woken
//! through `AsyncFd` inside it), the capture reader (replay, blocking), the log reader
//! (ingest, blocking, before the loop starts), one worker per sink
//! (blocking), the intel refresh, the metrics endpoint (`run`), and the signal watcher
//! (Ctrl-C, SIGTERM, `--duration`). `run` attaches and drops its privileges before the
//! runtime starts, while the process has one thread (capabilities are per thread).

use std::{
    fs::File,
    io::{BufWriter, IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sensor_agent::{
    alarm::{self, Observer},
    config::{self, Config},
    engine::{Engine, EngineStats},
    enrich::{intel::IntelStore, labels},
    metrics,
    pipeline::{self, Observers, OpenFlows},
    privilege::{self, Capability},
    sink::{self, ipfix::Exporters, AlarmOutput, FlowStream, JsonLines},
    source::{
        collect::CollectSource,
        datapath::LoadOptions,
        ingest::IngestSource,
        live::{default_route_interface, LiveSource},
        pins,
        records::{
            files::{read_inputs, Kind},
            stitch::StitchConfig,
            Telemetry,
        },
        replay::{EngineKind, ReplayOptions, ReplaySource},
    },
};
use sensor_common::counter;
use tokio::sync::watch;

// Status lines, summaries and errors go to stderr. The std macros panic when it cannot be
// written (`2>/dev/full`, a closed pipe), which would turn a finished command into exit 101
// and a backtrace. These shadow them for this file: a line that cannot be written is lost
// (there is nowhere left to report it) and the command keeps its own exit status.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
macro_rules! eprint {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "sensor-agent",
    version,
    about = "Flow sensor that finds cryptomining and other covert long-lived traffic",
    long_about = "Flow sensor that finds cryptomining and other covert long-lived traffic.\n\nThe kernel datapath (XDP ingress, TC egress) counts every flow; the agent ages flows, chains reconnects into conversations and raises alarms as JSON lines (ECS fields)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the datapath to network interfaces and raise alarms on live traffic (needs root or CAP_BPF + CAP_NET_ADMIN).
    Run(RunArgs),
    /// Replay capture files (pcap or pcapng) through the detection engine with their own timestamps.
    Replay(ReplayArgs),
    /// Read cloud flow logs (AWS VPC, Azure VNet/NSG, GCP VPC) and DNS query logs (Route 53 Resolver, Cloud DNS) through the detection engine on the records' own clock.
    Ingest(IngestArgs),
    /// Receive NetFlow v5/v9 and IPFIX over UDP (from routers, softflowd, ...) and run the records through the detection engine on their own clock.
    Collect(CollectArgs),
    /// Check a configuration file (and --set overrides) without running anything.
    Validate(ConfigArgs),
    /// Remove the datapath that `run` left attached (programs, links and pinned maps), from one interface or all.
    Detach(DetachArgs),
    /// Write one self-contained HTML page (hosts, every alarm with its evidence and charts) from alarm JSON lines.
    Report(ReportArgs),
    /// Live terminal view of a running agent (from its metrics endpoint's /status.json); q quits.
    Top(TopArgs),
}

#[derive(Args)]
struct ReportArgs {
    /// Alarm JSON lines, as `replay`, `run`, `ingest` or `collect` wrote them.
    #[arg(long, value_name = "FILE", required = true)]
    alarms: PathBuf,
    /// Flow record JSON lines (`--flows` of the same command): charts over time per conversation.
    #[arg(long, value_name = "FILE")]
    flows: Option<PathBuf>,
    /// The page to write.
    #[arg(short, long, value_name = "FILE", default_value = "report.html")]
    output: PathBuf,
    /// Alarms shown in full with charts, most severe first (the rest are index rows).
    #[arg(long, value_name = "N", default_value_t = sensor_agent::report::Limits::default().max_detailed)]
    detailed: usize,
}

#[derive(Args)]
struct TopArgs {
    /// The agent's metrics endpoint (metrics.listen).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9464")]
    metrics: String,
    /// How often to poll (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "1s")]
    interval: Duration,
}

#[derive(Args)]
struct DetachArgs {
    /// Only this interface (default: every interface the sensor is attached to).
    #[arg(long = "iface", value_name = "IF")]
    iface: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// Detected per file from its content.
    Auto,
    AwsVpc,
    AzureVnet,
    AzureNsg,
    GcpVpc,
}

#[derive(Args)]
struct IngestArgs {
    /// Flow log format (DNS query logs are always detected).
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatArg,
    #[command(flatten)]
    config: ConfigArgs,
    /// Write alarms as JSON lines to FILE ("-" for stdout, the default; overrides output.alarms).
    #[arg(long, value_name = "FILE")]
    alarms: Option<PathBuf>,
    /// Write a flow record (JSON line) for every stitched flow, to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    flows: Option<PathBuf>,
    /// Log files or directories (searched recursively, e.g. an S3 export's AWSLogs/ tree); plain or gzip.
    #[arg(value_name = "FILE|DIR", required = true)]
    inputs: Vec<PathBuf>,
}

#[derive(Args)]
struct CollectArgs {
    /// UDP address to receive on, e.g. 127.0.0.1:2055 (loopback: only exporters on this host; port 0: any free port, printed at start).
    #[arg(long, value_name = "ADDR", required = true)]
    listen: std::net::SocketAddr,
    /// Stop after this long (e.g. 90s); runs until Ctrl-C or SIGTERM otherwise.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Write alarms as JSON lines to FILE ("-" for stdout, the default; overrides output.alarms).
    #[arg(long, value_name = "FILE")]
    alarms: Option<PathBuf>,
    /// Write a flow record (JSON line) for every stitched flow, to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    flows: Option<PathBuf>,
    /// Continue from the state file FILE (if it exists), write it every
    /// state.checkpoint_interval and at the stop: a restarted collector continues its
    /// conversations and open alarms instead of opening them again.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one key, e.g. --set detect.long_flow.after=1h (durations: 90s, 15m, 9h, 3d). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Interface to watch (repeatable; default: sensor.interfaces, else the interface of the default route).
    #[arg(long = "iface", value_name = "IF")]
    ifaces: Vec<String>,
    /// Also count traffic this host sends (TC egress), not only what it receives.
    #[arg(long)]
    egress: bool,
    #[command(flatten)]
    config: ConfigArgs,
    /// Write alarms as JSON lines to FILE ("-" for stdout, the default; overrides output.alarms).
    #[arg(long, value_name = "FILE")]
    alarms: Option<PathBuf>,
    /// Write a flow record (JSON line) for every flow when it ends, to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    flows: Option<PathBuf>,
    /// Stop after this long (e.g. 90s); runs until Ctrl-C or SIGTERM otherwise.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Detach the datapath when stopping. By default it stays attached and pinned (sensor.pin_path), counting while the agent is down, and the next start resumes it.
    #[arg(long)]
    detach_on_exit: bool,
    /// After attaching, switch to this user (and its group); every capability polling does not need is dropped either way.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    /// The agent's own parser in user space; the engine is ticked every poll interval of capture time.
    User,
    /// The kernel XDP program, one BPF_PROG_TEST_RUN per frame (needs root or CAP_BPF); evaluated at the end.
    Kernel,
}

#[derive(Args)]
struct ReplayArgs {
    /// Flow engine that counts the frames.
    #[arg(long, value_enum, default_value = "user")]
    engine: EngineArg,
    #[command(flatten)]
    config: ConfigArgs,
    /// Write alarms as JSON lines to FILE ("-" for stdout, the default; overrides output.alarms).
    #[arg(long, value_name = "FILE")]
    alarms: Option<PathBuf>,
    /// Also write the flow table (totals per 5-tuple over the whole input) as JSON lines to FILE ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    flows: Option<PathBuf>,
    /// Capacity of the kernel flow map for `--engine kernel` (default: sensor.max_kernel_flows).
    #[arg(long, value_name = "N")]
    max_flows: Option<u32>,
    /// Do not show the progress bar (it only shows on a terminal anyway).
    #[arg(long)]
    no_progress: bool,
    /// Continue from the state file FILE (if it exists) and write it back at the end, as a
    /// restart of `run` would: successive captures as one sensor's history. Without it a
    /// replay reads and writes no state (it stays deterministic).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Capture files, read in order into one flow table.
    #[arg(value_name = "CAPTURE", required = true)]
    captures: Vec<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            // One line, like every other error: clap's own message, then where to look.
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("{} (see sensor-agent --help)", first.trim_end());
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Validate(args) => cmd_validate(&args),
        Command::Detach(args) => cmd_detach(&args),
        Command::Report(args) => cmd_report(&args),
        Command::Top(args) => sensor_agent::top::run(&sensor_agent::top::Options {
            endpoint: args.metrics,
            interval: args.interval,
        })
        .map(|()| ExitCode::SUCCESS)
        .map_err(Into::into),
        // Attaching and dropping privileges happen before the runtime starts its threads.
        Command::Run(args) => {
            prepare_run(args).and_then(|prep| runtime().and_then(|rt| rt.block_on(cmd_run(prep))))
        }
        Command::Replay(args) => runtime().and_then(|rt| rt.block_on(cmd_replay(args))),
        Command::Ingest(args) => runtime().and_then(|rt| rt.block_on(cmd_ingest(args))),
        Command::Collect(args) => runtime().and_then(|rt| rt.block_on(cmd_collect(args))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: many errors already include their
/// cause's text (`spool X: open segment: <io error>`), and `{:#}` would repeat it
/// ("Broken pipe (os error 32): Broken pipe (os error 32)").
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sensor-agent")
        .build()
        .context("cannot start the async runtime")
}

fn load_config(args: &ConfigArgs) -> Result<Config> {
    Ok(config::load(args.config.as_deref(), &args.sets)?)
}

fn cmd_validate(args: &ConfigArgs) -> Result<ExitCode> {
    let cfg = load_config(args)?;
    let origin = args
        .config
        .as_deref()
        .map_or("defaults".to_string(), |p| p.display().to_string());
    let written = writeln!(
        std::io::stdout(),
        "{origin}: valid (long_flow after {}, quiet_long_flow after {} at <= {} B/s, tcp idle {}, udp idle {})",
        cfg.detect.long_flow.after,
        cfg.detect.quiet_long_flow.after,
        cfg.detect.quiet_long_flow.max_bytes_per_sec,
        cfg.flow.tcp_idle_timeout,
        cfg.flow.udp_idle_timeout
    );
    match written {
        // A reader that stopped reading (`validate | true`) is a normal end.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write the result to stdout")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn cmd_detach(args: &DetachArgs) -> Result<ExitCode> {
    let cfg = load_config(&args.config)?;
    let Some(root) = cfg.sensor.pin_root() else {
        anyhow::bail!("sensor.pin_path is empty: nothing is pinned, so nothing stays attached");
    };
    let done = pins::detach(root, args.iface.as_deref())?;
    let what = args.iface.as_deref().unwrap_or("every interface");
    if done.links.is_empty() && done.dirs.is_empty() {
        eprintln!(
            "sensor-agent: nothing pinned for {what} under {}",
            root.display()
        );
    } else {
        eprintln!(
            "sensor-agent: detached {what}: {} link(s) removed, {} pinned datapath(s) removed under {}",
            done.links.len(),
            done.dirs.len(),
            root.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_report(args: &ReportArgs) -> Result<ExitCode> {
    use sensor_agent::report;
    let mut inputs = vec![args.alarms.clone()];
    inputs.extend(args.flows.clone());
    sink::refuse_inputs_as_outputs(std::slice::from_ref(&args.output), &inputs)?;
    let generated = sensor_agent::clock::rfc3339_seconds(sensor_agent::clock::wall_ns());
    let made = report::build(
        &args.alarms,
        args.flows.as_deref(),
        &report::Limits {
            max_detailed: args.detailed,
            ..report::Limits::default()
        },
        &generated,
    )?;
    for note in &made.notes {
        eprintln!("warning: {note}");
    }
    std::fs::write(&args.output, &made.html)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "sensor-agent: report {}: {} alarm(s), {} chart(s){}{}",
        args.output.display(),
        made.alarms,
        made.charts,
        if made.skipped > 0 {
            format!(", {} malformed line(s) skipped", made.skipped)
        } else {
            String::new()
        },
        if made.alarms_left_out > 0 {
            format!(", {} alarm id(s) left out", made.alarms_left_out)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The threat-intelligence feeds of the configuration, loaded once now, and their refresh
/// task started (a failed refresh keeps what loaded). `None` when no feed is configured.
async fn load_intel(cfg: &Config) -> Result<Option<Arc<IntelStore>>> {
    let Some(store) = labels::intel_store(&cfg.intel).map_err(|e| anyhow::anyhow!("intel: {e}"))?
    else {
        return Ok(None);
    };
    let store = Arc::new(store);
    let loading = store.clone();
    let report =
        tokio::task::spawn_blocking(move || loading.reload(sensor_agent::clock::wall_ns()))
            .await
            .context("intel: the first load stopped")?;
    let summary = report.to_string();
    let last = summary.lines().last().unwrap_or_default();
    if report.is_clean() {
        log::info!("{last}");
    } else {
        eprintln!("warning: {last}");
    }
    tokio::spawn(labels::refresh_intel(store.clone(), cfg.intel.refresh.0));
    Ok(Some(store))
}

fn open_alarms(cli: Option<&std::path::Path>, cfg: &Config) -> Result<AlarmOutput> {
    let target = cli.or(cfg.output.alarms.as_deref());
    AlarmOutput::open(cli, &cfg.sinks, &cfg.spool, &cfg.output).with_context(|| match target {
        Some(p) if cli.is_some() || cfg.sinks.is_empty() => {
            format!("cannot open alarm output {}", p.display())
        }
        _ => "cannot start the sinks".to_string(),
    })
}

/// One line per sink: sent, errors, pending, oldest undelivered; then the spool's counters.
fn sink_report(alarms: &AlarmOutput) -> Vec<String> {
    let Some((sinks, c)) = alarms.status() else {
        return Vec::new();
    };
    status_lines(&sinks, &c, "spool")
}

/// The lines of [`sink_report`] for any delivery (`spool` names it: the alarm spool, the flow
/// spool).
fn status_lines(
    sinks: &[sink::delivery::SinkStatus],
    c: &sink::spool::SpoolCounters,
    spool_name: &str,
) -> Vec<String> {
    let mut lines: Vec<String> = sinks
        .iter()
        .map(|s| {
            let mut line = format!(
                "sink {}: {} sent, {} errors, {} retries, {} pending",
                s.name, s.sent, s.errors, s.retries, s.pending
            );
            if s.truncated > 0 {
                line.push_str(&format!(", {} sent cut to max_datagram", s.truncated));
            }
            if s.resent > 0 {
                line.push_str(&format!(
                    ", {} written again after a connection reset",
                    s.resent
                ));
            }
            if let Some(age) = s.oldest_undelivered {
                line.push_str(&format!(", oldest undelivered {}s", age.as_secs()));
            }
            if let (Some(e), true) = (&s.last_error, s.pending > 0) {
                line.push_str(&format!(" (last error: {e})"));
            }
            line
        })
        .collect();
    let mut spool = format!("{spool_name}: {} bytes", c.bytes);
    for (n, what) in [
        (c.dropped_full, "alarms dropped (spool full)"),
        (c.dropped_too_large, "alarms dropped (too large)"),
        (
            c.would_block,
            "appends waited for room (spool full, when_full = block)",
        ),
        (c.torn_records_skipped, "torn records skipped at start"),
        (
            c.corrupt_records_skipped,
            "corrupt records skipped at start",
        ),
    ] {
        if n > 0 {
            spool.push_str(&format!(", {n} {what}"));
        }
    }
    lines.push(spool);
    lines
}

/// Appends "; n what" for every note that happened, and the flows a full table refused.
fn push_notes(summary: &mut String, notes: &[(u64, &str)], stats: &EngineStats) {
    let dropped = stats.flows_dropped + stats.conversations_dropped;
    let table = [
        (
            dropped,
            "flows dropped by a full flow table (raise flow.max_flows)",
        ),
        (
            stats.flows_evicted,
            "unanswered flows evicted from a full flow table",
        ),
        (
            stats.sessions_recreated,
            "answered flows whose kernel entry was evicted and re-created",
        ),
    ];
    for (n, what) in notes.iter().chain(&table) {
        if *n > 0 {
            summary.push_str(&format!("; {n} {what}"));
        }
    }
}

/// Refuses, before anything is opened for writing, an alarm or flow output that is an input.
fn refuse_overwriting(
    alarms: Option<&std::path::Path>,
    flows: Option<&std::path::Path>,
    cfg: &Config,
    inputs: &[PathBuf],
) -> Result<()> {
    let mut outputs = sink::alarm_files(alarms, &cfg.sinks, &cfg.output);
    outputs.extend(flows.filter(|p| p.as_os_str() != "-").map(PathBuf::from));
    Ok(sink::refuse_inputs_as_outputs(&outputs, inputs)?)
}

/// The flow record output of `--flows`, when given.
fn open_flow_output(path: Option<&std::path::Path>) -> Result<Option<JsonLines>> {
    path.map(|p| {
        JsonLines::open(Some(p), "flow output")
            .with_context(|| format!("cannot open flow output {}", p.display()))
    })
    .transpose()
}

/// "rule n, rule n" or "none".
fn alarms_by_rule(stats: &EngineStats) -> String {
    if stats.opened_by_rule.is_empty() {
        return "none".to_string();
    }
    stats
        .opened_by_rule
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads the state file into a new engine before its loop (a bad file is one line, never a
/// stop); the checkpointer that writes it back. A state file another agent holds is an
/// error: two agents would overwrite each other's checkpoints.
fn restore_state(
    state: &sensor_agent::state::StateConfig,
    engine: &mut Engine,
    alarms: &AlarmOutput,
) -> Result<pipeline::Checkpointer> {
    let lock = match sensor_agent::state::lock(&state.path) {
        Ok(lock) => Some(lock),
        Err(e) if matches!(e.problem, sensor_agent::state::Problem::Locked(_)) => {
            return Err(anyhow::Error::new(e));
        }
        // A directory that cannot be written also fails every checkpoint, which says so:
        // the agent runs on, as with a bad file.
        Err(e) => {
            eprintln!("sensor-agent: {e}; running without the state file's lock");
            None
        }
    };
    match tokio::task::block_in_place(|| pipeline::restore(state, engine, alarms)) {
        Ok(line) => eprintln!("sensor-agent: {line}"),
        Err(e) => eprintln!("sensor-agent: {e}; starting without saved state"),
    }
    Ok(pipeline::Checkpointer::new(state, lock))
}

/// [`restore_state`] for a `--state FILE` option (`replay`, `collect`): the file given, with
/// the rest of `[state]` from the configuration; nothing without the option.
fn restore_state_from(
    path: Option<&std::path::Path>,
    cfg: &Config,
    engine: &mut Engine,
    alarms: &AlarmOutput,
) -> Result<Option<pipeline::Checkpointer>> {
    path.map(|path| {
        let state = sensor_agent::state::StateConfig {
            path: path.to_path_buf(),
            ..cfg.state.clone()
        };
        restore_state(&state, engine, alarms)
    })
    .transpose()
}

async fn cmd_replay(args: ReplayArgs) -> Result<ExitCode> {
    let cfg = load_config(&args.config)?;
    let kind = match args.engine {
        EngineArg::User => EngineKind::User,
        EngineArg::Kernel => EngineKind::Kernel,
    };
    refuse_overwriting(
        args.alarms.as_deref(),
        args.flows.as_deref(),
        &cfg,
        &args.captures,
    )?;
    if let Some(state) = &args.state {
        // The state file is written at the end: never over a capture being read.
        sink::refuse_inputs_as_outputs(std::slice::from_ref(state), &args.captures)?;
    }
    let mut alarms = open_alarms(args.alarms.as_deref(), &cfg)?;
    alarms.limit_blocking(cfg.spool.drain_timeout.0);
    let mut engine = Engine::with_intel(&cfg, Observer::local(None), load_intel(&cfg).await?);
    let mut checkpoint = restore_state_from(args.state.as_deref(), &cfg, &mut engine, &alarms)?;
    let opts = ReplayOptions {
        engine: kind,
        load: LoadOptions {
            max_flows: args.max_flows.unwrap_or(cfg.sensor.max_kernel_flows),
            ..cfg.load_options()
        },
        poll_interval_ns: cfg.sensor.poll_interval.as_nanos(),
        progress: !args.no_progress,
    };
    let mut exporters = Exporters::open(&cfg.exporters).context("open the IPFIX exporters")?;
    let mut flow_stream = open_flow_stream(&cfg)?;
    if let Some(s) = flow_stream.as_mut() {
        s.limit_blocking(cfg.spool.drain_timeout.0);
    }
    let source = ReplaySource::start(args.captures.clone(), opts);
    let want_flows = args.flows.is_some() || !exporters.is_empty() || flow_stream.is_some();
    // Ctrl-C or SIGTERM ends a replay with its counters (also one blocked on a full spool).
    let mut stop = watch_signals(None)?;
    interrupt_on_stop(stop.clone(), &alarms);
    let (looped, outcome) = tokio::select! {
        biased;
        _ = stop.changed() => return interrupted_replay(&engine, alarms).await,
        r = pipeline::replay(source, &mut engine, &mut alarms, want_flows) => r,
    };
    if *stop.borrow() {
        return interrupted_replay(&engine, alarms).await;
    }
    let context = || format!("replay with the {} engine", kind.name());
    if looped.is_err() {
        // What the sinks and the spool did before the end, also when it ends in an error.
        for line in sink_report(&alarms) {
            eprintln!("{line}");
        }
    }
    looped.with_context(context)?;
    let outcome = outcome.with_context(context)?;
    if let Some(c) = checkpoint.as_mut() {
        eprintln!("sensor-agent: {}", c.finish(&engine, &alarms).await);
    }
    close_alarms(alarms, &cfg).await?;

    if let Some(path) = &args.flows {
        let mut w: Box<dyn Write> = if path.as_os_str() == "-" {
            Box::new(BufWriter::new(std::io::stdout().lock()))
        } else {
            Box::new(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot create flow file {}", path.display())
            })?))
        };
        let written = outcome.flows.iter().try_for_each(|flow| {
            serde_json::to_writer(&mut w, &flow.to_json(kind.name()))?;
            w.write_all(b"\n")
        });
        match written.and_then(|()| w.flush()) {
            // `replay --flows - | head`: the reader has what it wanted; the summary follows.
            Err(e) if path.as_os_str() == "-" && e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => {
                other.with_context(|| format!("cannot write flow records to {}", path.display()))?
            }
        }
    }
    if let Some(stream) = flow_stream.as_mut() {
        // The same records as `--flows`: the reader's totals with the engine's roles.
        for flow in &outcome.flows {
            stream
                .emit(&flow.to_json(kind.name()))
                .context("cannot hand over a flow record")?;
        }
    }
    close_flow_stream(flow_stream, &cfg).await?;
    if !exporters.is_empty() {
        for flow in &outcome.flows {
            exporters.push(flow);
        }
        exporters.flush();
        for line in exporters.report() {
            eprintln!("{line}");
        }
    }

    let stats = engine.stats();
    let mut summary = format!(
        "replayed {} frames with the {} engine: {} flows, {} packets attributed",
        outcome.frames,
        kind.name(),
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
    summary.push_str(&format!("; alarms: {}", alarms_by_rule(&stats)));
    if stats.open_alarms > 0 {
        summary.push_str(&format!(
            " ({} still open at the end of the input)",
            stats.open_alarms
        ));
    }
    summary.push_str(&format!(
        "; payload copies {}, DNS messages {}, identified flows {}",
        stats.payloads, stats.dns_messages, stats.identified_flows
    ));
    let notes = [
        (
            outcome.cut_frames,
            "frames shorter in the capture than on the wire",
        ),
        (
            outcome.time_jumps_back,
            "frames earlier than the replay clock (out of order)",
        ),
        (
            outcome.too_large_for_test_run,
            "frames too large for the kernel test run (not counted by the kernel engine)",
        ),
        (
            outcome.time_outliers,
            "frames stamped more than a day away from their neighbours (replayed at the clock's time)",
        ),
        (
            outcome.evicted_flows,
            "flows evicted from a full kernel map (raise --max-flows)",
        ),
        (
            outcome.unstamped_flows,
            "kernel flows without capture times",
        ),
    ];
    push_notes(&mut summary, &notes, &stats);
    eprintln!("{summary}");
    if stats.messages > 0 {
        // A line of its own: only the user engine times messages (see README).
        eprintln!("watched flows: {} messages timed", stats.messages);
    }
    for e in &outcome.errors {
        eprintln!("error: {e}");
    }
    Ok(if outcome.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A replay ended by Ctrl-C or SIGTERM: what it did so far, the sinks' and spool's counters,
/// and the conventional status of a command ended by a signal (130).
async fn interrupted_replay(engine: &Engine, alarms: AlarmOutput) -> Result<ExitCode> {
    let stats = engine.stats();
    eprintln!(
        "replay interrupted (Ctrl-C or SIGTERM) after {} packets: {} flows; alarms: {}",
        stats.packets,
        stats.flows,
        alarms_by_rule(&stats)
    );
    for line in sink_report(&alarms) {
        eprintln!("{line}");
    }
    alarms.shutdown().await;
    Ok(ExitCode::from(130))
}

/// At the stop signal, a producer waiting for room in a full `block` spool gives up: its
/// error ends the command with the counters instead of a wait for a receiver that may never
/// come back.
fn interrupt_on_stop(mut stop: watch::Receiver<bool>, alarms: &AlarmOutput) {
    if let Some(interrupter) = alarms.interrupter() {
        tokio::spawn(async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
            interrupter.interrupt();
        });
    }
}

/// End of a bounded input: flushes the alarms, waits for the sinks to deliver (up to
/// `spool.drain_timeout`), reports each sink, and shuts them down.
async fn close_alarms(mut alarms: AlarmOutput, cfg: &Config) -> Result<()> {
    alarms.flush().context("write alarms")?;
    if let AlarmOutput::Delivered(_) = &alarms {
        if !alarms.drain(cfg.spool.drain_timeout.0).await {
            eprintln!("warning: not every alarm was delivered within {}; the rest stay in the spool {} for the next run", cfg.spool.drain_timeout, cfg.spool.dir.display());
        }
    }
    for line in sink_report(&alarms) {
        eprintln!("{line}");
    }
    alarms.shutdown().await;
    Ok(())
}

/// Opens the flow-record stream (`[[sinks]]` with `stream = "flows"`), if any.
fn open_flow_stream(cfg: &Config) -> Result<Option<FlowStream>> {
    FlowStream::open(&cfg.sinks, &cfg.spool).context("cannot start the flow-record sinks")
}

/// Like [`close_alarms`] for the flow-record stream.
async fn close_flow_stream(stream: Option<FlowStream>, cfg: &Config) -> Result<()> {
    let Some(mut stream) = stream else {
        return Ok(());
    };
    stream.flush().context("write flow records")?;
    if !stream.drain(cfg.spool.drain_timeout.0).await {
        eprintln!("warning: not every flow record was delivered within {}; the rest stay in the spool {} for the next run", cfg.spool.drain_timeout, cfg.spool.dir.join("flows").display());
    }
    let (sinks, c) = stream.status();
    for line in status_lines(&sinks, &c, "flow spool") {
        eprintln!("{line}");
    }
    stream.shutdown().await;
    Ok(())
}

async fn cmd_ingest(args: IngestArgs) -> Result<ExitCode> {
    let cfg = load_config(&args.config)?;
    let format = match args.format {
        FormatArg::Auto => None,
        FormatArg::AwsVpc => Some(Telemetry::AwsVpc),
        FormatArg::AzureVnet => Some(Telemetry::AzureVnet),
        FormatArg::AzureNsg => Some(Telemetry::AzureNsg),
        FormatArg::GcpVpc => Some(Telemetry::GcpVpc),
    };
    refuse_overwriting(
        args.alarms.as_deref(),
        args.flows.as_deref(),
        &cfg,
        &args.inputs,
    )?;
    let (paths, ingest_cfg) = (args.inputs.clone(), cfg.ingest.clone());
    let mut input = tokio::task::spawn_blocking(move || read_inputs(&paths, format, &ingest_cfg))
        .await
        .context("the log reader stopped")??;
    for f in &input.files {
        if let Some(line) = f.malformed_line() {
            eprintln!("warning: {line}");
        }
    }
    let resolution_s = input.interval_ns / 1_000_000_000;
    let mut observer = Observer::local(None);
    observer.telemetry = input.telemetry.map(|t| alarm::Telemetry {
        name: t.name(),
        resolution_s,
        sampling: 1,
    });
    let telemetry = input.telemetry.map_or("dns-logs", Telemetry::name);
    let mut alarms = open_alarms(args.alarms.as_deref(), &cfg)?;
    alarms.limit_blocking(cfg.spool.drain_timeout.0);
    let mut engine = Engine::with_intel(&cfg, observer, load_intel(&cfg).await?);
    let mut flow_out = open_flow_output(args.flows.as_deref())?;
    let mut source = IngestSource::from_input(
        &mut input,
        cfg.ingest.stitch_gap.map(|d| d.as_nanos()),
        cfg.sensor.poll_interval.as_nanos(),
    );
    run_records(
        &mut source,
        &mut engine,
        &mut alarms,
        flow_out.as_mut(),
        telemetry,
        None,
    )
    .await?;
    close_alarms(alarms, &cfg).await?;

    let stats = engine.stats();
    let (t, st) = (&input.totals, &source.stitcher.counters);
    let dns_entries: u64 = input
        .files
        .iter()
        .filter(|f| matches!(f.kind, Kind::Dns(_)))
        .map(|f| f.counts.records)
        .sum();
    let mut summary = format!(
        "ingested {} files ({telemetry}, {resolution_s} s resolution): {} flow records stitched into {} flows",
        input.files.len(),
        st.records,
        st.flows,
    );
    if dns_entries > 0 {
        summary.push_str(&format!(
            ", {dns_entries} DNS log entries ({} without an address)",
            t.dns_unbound
        ));
    }
    summary.push_str(&format!("; alarms: {}", alarms_by_rule(&stats)));
    if stats.open_alarms > 0 {
        summary.push_str(&format!(
            " ({} still open at the end of the input)",
            stats.open_alarms
        ));
    }
    let notes = [
        (t.malformed, "malformed records skipped"),
        (t.nodata, "NODATA records"),
        (t.skipdata, "SKIPDATA records (the exporter lost flows)"),
        (t.rejected, "records of denied traffic"),
        (
            st.duplicates,
            "records of flows another observation point reported",
        ),
        (st.restarted, "records after the stitch gap (new flows)"),
        (
            input.skipped_files,
            "files skipped in directories (not log names)",
        ),
    ];
    push_notes(&mut summary, &notes, &stats);
    eprintln!("{summary}");
    if input.telemetry.is_some() {
        say_no_payload(telemetry);
    }
    Ok(ExitCode::SUCCESS)
}

/// Said, not silently skipped: these rules read payload, which flow records lack.
fn say_no_payload(telemetry: &str) {
    eprintln!(
        "payload rules: not applicable (no payload in {telemetry}): mining_protocol, encrypted_mining, and periodic_flow inside one flow; blockchain_p2p only by a node's peer port with the server on an intel feed"
    );
}

/// The event loop for aggregate records (`ingest`, `collect`): every ended flow, and those
/// still open at the end of the input, to the flow output.
async fn run_records<S: sensor_agent::source::Source>(
    source: &mut S,
    engine: &mut Engine,
    alarms: &mut AlarmOutput,
    mut flow_out: Option<&mut JsonLines>,
    telemetry: &str,
    checkpoint: Option<&mut pipeline::Checkpointer>,
) -> Result<()> {
    {
        let mut write_flow = |f: &sensor_agent::flow::record::FlowRecord| match flow_out.as_mut() {
            Some(out) => out.emit(&f.to_json(telemetry)),
            None => Ok(()),
        };
        let mut observers = Observers {
            ended_flows: Some(&mut write_flow),
            checkpoint,
            ..Observers::default()
        };
        pipeline::run(source, engine, alarms, &mut observers).await?;
    }
    if let Some(out) = flow_out {
        // Flows still open at the end of the input.
        for f in engine.table.flows() {
            out.emit(&f.to_json(telemetry))
                .context("write flow record")?;
        }
    }
    Ok(())
}

/// The aggregation interval assumed for NetFlow/IPFIX when `ingest.interval` is unset: a
/// common active timeout (exporters cut long flows into records this far apart at most).
const COLLECT_INTERVAL_NS: u64 = 300_000_000_000;

async fn cmd_collect(args: CollectArgs) -> Result<ExitCode> {
    let cfg = load_config(&args.config)?;
    let interval = cfg
        .ingest
        .interval
        .map_or(COLLECT_INTERVAL_NS, |d| d.as_nanos());
    let stitch = StitchConfig {
        gap_ns: cfg
            .ingest
            .stitch_gap
            .map_or(interval.saturating_mul(2), |d| d.as_nanos()),
        tick_ns: cfg.sensor.poll_interval.as_nanos(),
    };
    let stop = watch_signals(args.duration)?;
    let mut source = CollectSource::bind(args.listen, stitch, stop)
        .await
        .with_context(|| format!("cannot listen on UDP {}", args.listen))?;
    let local = source.local_addr().context("socket address")?;
    eprintln!("collecting NetFlow/IPFIX on udp {local}");
    let Some(version) = source.first_version().await else {
        eprintln!("collected nothing: no NetFlow/IPFIX datagram decoded before the stop");
        return Ok(ExitCode::SUCCESS);
    };
    let telemetry = version.name();
    let resolution_s = interval / 1_000_000_000;
    let mut observer = Observer::local(None);
    observer.telemetry = Some(alarm::Telemetry {
        name: telemetry,
        resolution_s,
        sampling: source.decoder.counters.max_sampling.max(1),
    });
    let mut alarms = open_alarms(args.alarms.as_deref(), &cfg)?;
    let mut engine = Engine::with_intel(&cfg, observer, load_intel(&cfg).await?);
    let mut checkpoint = restore_state_from(args.state.as_deref(), &cfg, &mut engine, &alarms)?;
    let mut flow_out = open_flow_output(args.flows.as_deref())?;
    run_records(
        &mut source,
        &mut engine,
        &mut alarms,
        flow_out.as_mut(),
        telemetry,
        checkpoint.as_mut(),
    )
    .await?;
    if let Some(c) = checkpoint.as_mut() {
        eprintln!("sensor-agent: {}", c.finish(&engine, &alarms).await);
    }
    close_alarms(alarms, &cfg).await?;
    let stats = engine.stats();
    let (d, st) = (&source.decoder.counters, &source.stitcher.counters);
    let mut summary = format!(
        "collected {} datagrams ({telemetry}, {resolution_s} s resolution): {} flow records stitched into {} flows; alarms: {}",
        d.datagrams,
        st.records,
        st.flows,
        alarms_by_rule(&stats),
    );
    if d.max_sampling > 1 {
        summary.push_str(&format!(
            "; {} sampled records scaled (up to 1 in {})",
            d.sampled, d.max_sampling
        ));
    }
    let notes = [
        (d.malformed, "datagrams that did not decode"),
        (d.no_template, "data sets before their template"),
        (d.incomplete, "records without addresses, protocol or times"),
        (d.sequence_gaps, "records lost by sequence numbers"),
        (
            source.other_versions,
            "datagrams of another NetFlow version",
        ),
        (st.restarted, "records after the stitch gap (new flows)"),
    ];
    push_notes(&mut summary, &notes, &stats);
    eprintln!("{summary}");
    say_no_payload(telemetry);
    Ok(ExitCode::SUCCESS)
}

/// The signal watcher task: turns `stop` true at Ctrl-C, SIGTERM or the end of `duration`.
fn watch_signals(duration: Option<Duration>) -> Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            () = deadline => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// What `run` set up while it still had its privileges.
struct Prepared {
    args: RunArgs,
    cfg: Config,
    ifaces: Vec<String>,
    live: LiveSource,
    metrics: Option<std::net::TcpListener>,
}

/// The privileged part of `run`, on the only thread: binds the metrics endpoint, attaches
/// the datapath, then switches to `--user` and keeps only the capabilities polling needs.
fn prepare_run(args: RunArgs) -> Result<Prepared> {
    let cfg = load_config(&args.config)?;
    let user = args
        .user
        .as_deref()
        .map(privilege::lookup_user)
        .transpose()?;
    if user.is_some() && args.detach_on_exit && cfg.sensor.pin_root().is_some() {
        anyhow::bail!("--detach-on-exit removes the pinned datapath, which only root may; run `sensor-agent detach` as root after stopping instead");
    }
    let ifaces = if !args.ifaces.is_empty() {
        args.ifaces.clone()
    } else if !cfg.sensor.interfaces.is_empty() {
        cfg.sensor.interfaces.clone()
    } else {
        vec![default_route_interface()?]
    };
    let egress = args.egress || cfg.sensor.egress;
    let mut live = LiveSource::start(
        &ifaces,
        egress,
        &cfg.load_options(),
        cfg.sensor.poll_interval.0,
        cfg.sensor.pin_root(),
    )?;
    // Attached while privileged; the links live with `live` and are dropped (detached) with it.
    if cfg.sensor.process_attribution {
        use sensor_agent::source::process::{HostView, ProcessHooks};
        let hooks = match ProcessHooks::attach_root() {
            Ok(h) => {
                eprintln!(
                    "sensor-agent: process attribution on (cgroup hooks at {})",
                    h.cgroup.display()
                );
                Some(h)
            }
            Err(e) => {
                log::warn!(
                    "process attribution without cgroup hooks ({e}): only connections found in /proc are named"
                );
                None
            }
        };
        live.set_host_view(HostView::new(hooks));
    }
    // Bound before privileges go (a port below 1024 needs them), after the interfaces are
    // known to exist (a mistyped one is the error to report, not a port in use).
    let metrics = cfg
        .metrics
        .address()
        .map_err(|e| anyhow::anyhow!("metrics.{}: {}", e.key, e.message))?
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen for metrics on {addr}"))
        })
        .transpose()?;
    // Detaching at exit without pinned BPF links goes through netlink on kernels before 6.6
    // (TC) or 5.9 (XDP): that needs CAP_NET_ADMIN.
    let detaches = args.detach_on_exit || cfg.sensor.pin_root().is_none();
    // Whether polling still needs CAP_BPF depends on the kernel (see privilege): tried.
    let polls_unprivileged =
        privilege::unprivileged(|| live.dp.jiffies().is_ok() && live.dp.counters().is_ok())?;
    let mut keep = Vec::new();
    if !polls_unprivileged {
        keep.push(Capability::CAP_BPF);
    }
    if detaches && !sensor_agent::source::live::tcx_available() {
        keep.push(Capability::CAP_NET_ADMIN);
    }
    // /proc/PID/exe and /proc/PID/fd of a process that is not the agent's own need ptrace
    // access (the executable, and the /proc scan for sockets older than the hooks).
    if cfg.sensor.process_attribution && cfg.sensor.process_executables {
        if privilege::permitted(Capability::CAP_SYS_PTRACE) {
            keep.push(Capability::CAP_SYS_PTRACE);
        } else {
            // A unit or container that does not grant it: run on, and say what is missing.
            eprintln!(
                "sensor-agent: sensor.process_executables is on but CAP_SYS_PTRACE is not permitted (add it to the unit's AmbientCapabilities and CapabilityBoundingSet): alarms name other users' processes without process.executable"
            );
        }
    }
    privilege::drop_to(user.as_ref(), &keep)?;
    let kept = privilege::effective();
    eprintln!(
        "sensor-agent: attached; running as {} with capabilities: {}",
        user.as_ref().map_or_else(
            || format!("uid {}", privilege::uid()),
            |u| format!("{} (uid {})", u.name, u.uid)
        ),
        if kept.is_empty() {
            "none".to_string()
        } else {
            kept.join(", ")
        }
    );
    Ok(Prepared {
        args,
        cfg,
        ifaces,
        live,
        metrics,
    })
}

async fn cmd_run(prep: Prepared) -> Result<ExitCode> {
    let Prepared {
        args,
        cfg,
        ifaces,
        mut live,
        metrics: listener,
    } = prep;
    let hub = metrics::Hub::new(cfg.sensor.poll_interval.0, cfg.sensor.max_kernel_flows);
    if let Some(l) = listener {
        let addr = l.local_addr().context("metrics socket address")?;
        metrics::serve(l, hub.clone()).context("cannot serve metrics")?;
        eprintln!("sensor-agent: metrics on http://{addr}/metrics (/healthz, /readyz)");
    }
    let mut alarms = open_alarms(args.alarms.as_deref(), &cfg)?;
    let mut flow_out = open_flow_output(args.flows.as_deref())?;
    let stop = watch_signals(args.duration)?;
    live.trace_budget = u64::from(cfg.capture.trace_messages);
    live.watch_rings()?;
    let stop_for_alarms = stop.clone();
    live.stop_on(stop);
    hub.attached(live.shared_stats());
    let sinks = alarms.status_handle();
    if let Some(s) = &sinks {
        hub.sinks(s.clone());
    }
    let attached: Vec<String> = live
        .attachments
        .iter()
        .map(|a| {
            format!(
                "{} ({} XDP{})",
                a.iface,
                a.mode,
                if a.egress { " + TC egress" } else { "" }
            )
        })
        .collect();
    eprintln!(
        "sensor-agent: watching {}; polling every {}; kernel HZ {}",
        attached.join(", "),
        cfg.sensor.poll_interval,
        live.clock.hz
    );
    let single_iface = if ifaces.len() == 1 {
        Some(ifaces[0].clone())
    } else {
        None
    };
    let mut engine =
        Engine::with_intel(&cfg, Observer::local(single_iface), load_intel(&cfg).await?);
    // What the agent knew before a restart; a bad state file is one line, never a stop.
    let mut checkpoint = cfg
        .state
        .enabled
        .then(|| restore_state(&cfg.state, &mut engine, &alarms))
        .transpose()?;

    // The status line, on a terminal only, at most every status interval, after a poll.
    let show_status = std::io::stderr().is_terminal();
    let status_every = cfg.sensor.status_interval.0;
    let mut next_status = Instant::now() + status_every;
    let kernel = live.shared_stats();
    let iface_list = ifaces.join(",");
    let mut ticked = |stats: &EngineStats| {
        let k = kernel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        hub.polled(Box::new(stats.clone()), k.poll_started.map(|t| t.elapsed()));
        if !show_status || Instant::now() < next_status {
            return;
        }
        next_status = Instant::now() + status_every;
        let unattributed: u64 = k.counters[..counter::UNATTRIBUTED_REASONS as usize]
            .iter()
            .sum();
        let sink_status: String = sinks
            .iter()
            .flat_map(|s| s.status())
            .map(|s| format!(" | sink {}: {} sent, {} pending", s.name, s.sent, s.pending))
            .collect();
        eprint!(
            "\r\x1b[K{iface_list} | packets {} | flows {} (kernel {}) conversations {} | new flows {} | unattributed {} | watched {} | alarms: {}{sink_status}",
            stats.packets,
            stats.flows,
            k.kernel_flows,
            stats.conversations,
            k.counters[counter::FLOWS_CREATED as usize],
            unattributed,
            stats.watched,
            alarms_by_rule(stats)
        );
    };
    let exporters = std::cell::RefCell::new(
        Exporters::open(&cfg.exporters).context("open the IPFIX exporters")?,
    );
    let flow_stream = std::cell::RefCell::new(open_flow_stream(&cfg)?);
    let mut write_flow = |f: &sensor_agent::flow::record::FlowRecord| {
        exporters.borrow_mut().push(f);
        let stream = &mut *flow_stream.borrow_mut();
        if flow_out.is_none() && stream.is_none() {
            return Ok(());
        }
        let record = f.to_json("kernel");
        if let Some(s) = stream.as_mut() {
            s.emit(&record)?;
        }
        match flow_out.as_mut() {
            Some(out) => out.emit(&record),
            None => Ok(()),
        }
    };
    let mut ticked = |stats: &EngineStats| {
        // Flow records ended at this poll leave now, not when a message fills.
        exporters.borrow_mut().flush();
        if let Some(s) = flow_stream.borrow_mut().as_mut() {
            if let Err(e) = s.flush() {
                log::warn!("flow records: {e}");
            }
        }
        ticked(stats);
    };
    hub.interfaces(attached.clone());
    let mut viewed = |engine: &Engine, now: u64, events: &[alarm::AlarmEvent]| {
        let view = engine.status_view(now, hub.view_wanted());
        hub.viewed(view, events.iter().map(|e| &e.json));
    };
    let checkpoint_every = flow_stream
        .borrow()
        .as_ref()
        .map(|s| s.checkpoint_interval());
    let mut write_open_flow = |f: &sensor_agent::flow::record::FlowRecord| {
        let mut record = f.to_json("kernel");
        // Not the flow's end: a consumer tells checkpoints of open flows from final records.
        record["event"]["action"] = "flow_checkpoint".into();
        match flow_stream.borrow_mut().as_mut() {
            Some(s) => s.emit(&record),
            None => Ok(()),
        }
    };
    let mut observers = Observers {
        ended_flows: Some(&mut write_flow),
        ticked: Some(&mut ticked),
        viewed: Some(&mut viewed),
        checkpoint: checkpoint.as_mut(),
        open_flows: checkpoint_every
            .map(|every| OpenFlows::new(every.as_nanos() as u64, &mut write_open_flow)),
    };
    interrupt_on_stop(stop_for_alarms, &alarms);
    let looped = pipeline::run(&mut live, &mut engine, &mut alarms, &mut observers).await;
    if looped.is_err() {
        for line in sink_report(&alarms) {
            eprintln!("sensor-agent: {line}");
        }
    }
    looped?;
    exporters.borrow_mut().flush();
    for line in exporters.borrow().report() {
        eprintln!("sensor-agent: {line}");
    }
    if let Some(c) = checkpoint.as_mut() {
        eprintln!("sensor-agent: {}", c.finish(&engine, &alarms).await);
    }
    if show_status {
        eprintln!();
    }
    let stats = engine.stats();
    eprintln!(
        "sensor-agent: stopped watching {}; alarms: {}",
        ifaces.join(", "),
        alarms_by_rule(&stats)
    );
    {
        // As of the last poll, which the source makes when it is stopped.
        let ls = live.stats();
        let counters = ls.counters;
        eprintln!(
            "sensor-agent: watched flows {} (refused {}), messages traced {}, lost to a full trace ring {}, over budget {}, timed {}",
            stats.watched,
            stats.watch_refused + ls.watch_refused,
            counters[counter::TRACE_EVENTS as usize],
            counters[counter::TRACE_DROPS as usize],
            counters[counter::TRACE_OVER_BUDGET as usize],
            stats.messages,
        );
        if ls.ring_records_dropped > 0 {
            eprintln!(
                "sensor-agent: {} ring records dropped while waiting for a poll (the agent fell behind)",
                ls.ring_records_dropped
            );
        }
        if let Some(h) = live.host_stats() {
            eprintln!(
                "sensor-agent: host flows: {} with their process, {} local without an owner, {} forwarded; {} owners of other network namespaces ignored",
                h.attributed, h.local_without_owner, h.forwarded, h.other_namespace
            );
        }
    }
    eprintln!(
        "sensor-agent: flow table: {} flows refused, {} unanswered flows evicted, {} kernel entries re-created ({} of answered flows, unobserved {:.1} s in all)",
        stats.flows_dropped + stats.conversations_dropped,
        stats.flows_evicted,
        stats.kernel_entries_recreated,
        stats.sessions_recreated,
        stats.sessions_unobserved_ns as f64 / 1e9,
    );
    for line in sink_report(&alarms) {
        eprintln!("{line}");
    }
    alarms.shutdown().await;
    if let Some(stream) = flow_stream.into_inner() {
        // Records not yet taken stay in the flow spool for the next start, as alarms do.
        let (sinks, c) = stream.status();
        for line in status_lines(&sinks, &c, "flow spool") {
            eprintln!("{line}");
        }
        stream.shutdown().await;
    }
    if let Some(dir) = live.pin_dir() {
        if args.detach_on_exit {
            dir.remove()?;
        } else {
            eprintln!(
                "sensor-agent: the datapath stays attached and counting (pinned in {}); `sensor-agent detach` removes it",
                dir.path().display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
