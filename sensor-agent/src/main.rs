//! `sensor-agent`: the command-line entry point. Parses arguments, runs one subcommand, and
//! turns every error into one line on stderr and a non-zero exit.

use std::{
    fs::File,
    io::{BufWriter, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sensor_agent::{
    alarm::{AlarmEvent, Observer},
    config::{self, Config},
    engine::Engine,
    sink::{delivery::Delivery, JsonLines},
    source::{
        datapath::LoadOptions,
        live::{default_route_interface, LiveSource},
        replay::{replay, EngineKind, ReplayOptions},
    },
};
use sensor_common::counter;

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
    /// Check a configuration file (and --set overrides) without running anything.
    Validate(ConfigArgs),
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
        Command::Run(args) => cmd_run(args),
        Command::Replay(args) => cmd_replay(args),
        Command::Validate(args) => cmd_validate(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    println!(
        "{origin}: valid (long_flow after {}, quiet_long_flow after {} at <= {} B/s, tcp idle {}, udp idle {})",
        cfg.detect.long_flow.after,
        cfg.detect.quiet_long_flow.after,
        cfg.detect.quiet_long_flow.max_bytes_per_sec,
        cfg.flow.tcp_idle_timeout,
        cfg.flow.udp_idle_timeout
    );
    Ok(ExitCode::SUCCESS)
}

/// The threat-intelligence feeds of the configuration, loaded once now (later refreshes keep
/// what loaded if a feed fails). `None` when no feed is configured.
fn load_intel(cfg: &Config) -> Result<Option<sensor_agent::enrich::intel::IntelStore>> {
    let Some(store) = sensor_agent::enrich::labels::intel_store(&cfg.intel)
        .map_err(|e| anyhow::anyhow!("intel: {e}"))?
    else {
        return Ok(None);
    };
    let report = store.reload(sensor_agent::clock::wall_ns());
    let summary = report.to_string();
    let last = summary.lines().last().unwrap_or_default();
    if report.is_clean() {
        log::info!("{last}");
    } else {
        eprintln!("warning: {last}");
    }
    Ok(Some(store))
}

/// Where alarms go: JSON lines written directly (stdout or a file), or the configured
/// `[[sinks]]` through the durable spool.
enum AlarmOutput {
    Direct(JsonLines),
    Delivered(Delivery),
}

impl AlarmOutput {
    /// `--alarms FILE` wins; else `[[sinks]]` when configured; else `output.alarms` or stdout.
    fn open(cli: Option<&Path>, cfg: &Config) -> Result<Self> {
        if cli.is_none() {
            if let Some(d) = Delivery::start(&cfg.sinks, &cfg.spool)? {
                return Ok(AlarmOutput::Delivered(d));
            }
        }
        match cli.or(cfg.output.alarms.as_deref()) {
            None => Ok(AlarmOutput::Direct(JsonLines::stdout())),
            Some(p) => Ok(AlarmOutput::Direct(JsonLines::open(p).with_context(
                || format!("cannot open alarm output {}", p.display()),
            )?)),
        }
    }

    fn emit(&mut self, alarm: &serde_json::Value) -> std::io::Result<()> {
        match self {
            AlarmOutput::Direct(j) => j.emit(alarm),
            AlarmOutput::Delivered(d) => d.submit(alarm).map_err(std::io::Error::other),
        }
    }

    /// Once per tick: makes spooled alarms durable per the fsync policy.
    fn flush(&mut self) -> Result<()> {
        if let AlarmOutput::Delivered(d) = self {
            d.flush()?;
        }
        Ok(())
    }

    /// One line per sink: sent, errors, pending, oldest undelivered.
    fn report(&self) -> Vec<String> {
        match self {
            AlarmOutput::Direct(_) => Vec::new(),
            AlarmOutput::Delivered(d) => {
                let c = d.spool_counters();
                let mut lines: Vec<String> = d
                    .status()
                    .iter()
                    .map(|s| {
                        let mut line = format!(
                            "sink {}: {} sent, {} errors, {} retries, {} pending",
                            s.name, s.sent, s.errors, s.retries, s.pending
                        );
                        if let Some(age) = s.oldest_undelivered {
                            line.push_str(&format!(", oldest undelivered {}s", age.as_secs()));
                        }
                        if let (Some(e), true) = (&s.last_error, s.pending > 0) {
                            line.push_str(&format!(" (last error: {e})"));
                        }
                        line
                    })
                    .collect();
                let mut spool = format!("spool: {} bytes", c.bytes);
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
        }
    }
}

fn cmd_replay(args: ReplayArgs) -> Result<ExitCode> {
    let cfg = load_config(&args.config)?;
    let kind = match args.engine {
        EngineArg::User => EngineKind::User,
        EngineArg::Kernel => EngineKind::Kernel,
    };
    let mut sink = AlarmOutput::open(args.alarms.as_deref(), &cfg)?;
    let mut engine = Engine::with_intel(&cfg, Observer::local(None), load_intel(&cfg)?);
    let mut on_alarm = |e: &AlarmEvent| sink.emit(&e.json);
    let mut opts = ReplayOptions {
        engine: kind,
        load: LoadOptions {
            max_flows: args.max_flows.unwrap_or(cfg.sensor.max_kernel_flows),
            ..cfg.load_options()
        },
        poll_interval_ns: cfg.sensor.poll_interval.as_nanos(),
        progress: !args.no_progress,
        on_alarm: &mut on_alarm,
    };
    let outcome = replay(&args.captures, &mut engine, &mut opts)
        .with_context(|| format!("replay with the {} engine", kind.name()))?;
    sink.flush()?;
    if let AlarmOutput::Delivered(d) = &sink {
        if !d.drain(cfg.spool.drain_timeout.0) {
            eprintln!("warning: not every alarm was delivered within {}; the rest stay in the spool {} for the next run", cfg.spool.drain_timeout, cfg.spool.dir.display());
        }
    }
    for line in sink.report() {
        eprintln!("{line}");
    }

    if let Some(path) = &args.flows {
        let mut w: Box<dyn Write> = if path.as_os_str() == "-" {
            Box::new(BufWriter::new(std::io::stdout().lock()))
        } else {
            Box::new(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot create flow file {}", path.display())
            })?))
        };
        for flow in &outcome.flows {
            serde_json::to_writer(&mut w, &flow.to_json(kind.name()))
                .context("write flow record")?;
            w.write_all(b"\n").context("write flow record")?;
        }
        w.flush().context("write flow records")?;
    }

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
    let alarms: Vec<String> = engine
        .alarms
        .opened_by_rule
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    summary.push_str(&format!(
        "; alarms: {}",
        if alarms.is_empty() {
            "none".to_string()
        } else {
            alarms.join(", ")
        }
    ));
    if engine.alarms.open_count() > 0 {
        summary.push_str(&format!(
            " ({} still open at the end of the input)",
            engine.alarms.open_count()
        ));
    }
    let lc = &engine.labels.counters;
    summary.push_str(&format!(
        "; payload copies {}, DNS messages {}, identified flows {}",
        lc.payloads, lc.dns_messages, lc.identified_flows
    ));
    let notes = [
        (
            outcome.cut_frames,
            "frames shorter in the capture than on the wire",
        ),
        (
            outcome.time_jumps_back,
            "frames earlier than the replay clock (merged captures)",
        ),
        (
            outcome.evicted_flows,
            "flows evicted from a full kernel map (raise --max-flows)",
        ),
        (
            outcome.unstamped_flows,
            "kernel flows without capture times",
        ),
        (
            engine.table.counters.flows_dropped + engine.table.counters.conversations_dropped,
            "flows dropped by a full flow table (raise flow.max_flows)",
        ),
    ];
    for (n, what) in notes {
        if n > 0 {
            summary.push_str(&format!("; {n} {what}"));
        }
    }
    eprintln!("{summary}");
    if lc.messages > 0 {
        // A line of its own: only the user engine times messages (see README).
        eprintln!("watched flows: {} messages timed", lc.messages);
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

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Sleeps until `deadline` in short steps, returning early when a stop was requested.
fn sleep_until(deadline: Instant) {
    while !STOP.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}

fn cmd_run(args: RunArgs) -> Result<ExitCode> {
    let cfg = load_config(&args.config)?;
    let ifaces = if !args.ifaces.is_empty() {
        args.ifaces.clone()
    } else if !cfg.sensor.interfaces.is_empty() {
        cfg.sensor.interfaces.clone()
    } else {
        vec![default_route_interface()?]
    };
    let egress = args.egress || cfg.sensor.egress;
    let mut sink = AlarmOutput::open(args.alarms.as_deref(), &cfg)?;
    let mut flow_out = match &args.flows {
        Some(p) => Some(
            JsonLines::open(p)
                .with_context(|| format!("cannot open flow output {}", p.display()))?,
        ),
        None => None,
    };
    install_signal_handlers();
    let mut live = LiveSource::start(&ifaces, egress, &cfg.load_options())?;
    live.trace_budget = u64::from(cfg.capture.trace_messages);
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
    let mut engine = Engine::with_intel(&cfg, Observer::local(single_iface), load_intel(&cfg)?);
    // The kernel traces only what the engine's watch changes tell it to.
    let poll = cfg.sensor.poll_interval.0;
    let status_every = cfg.sensor.status_interval.0;
    let show_status = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut next_poll = Instant::now();
    let mut next_status = Instant::now() + status_every;
    let mut kernel_flows = 0usize;
    while !STOP.load(Ordering::SeqCst) {
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if Instant::now() >= next_poll {
            let polled = live.poll_into(&mut engine)?;
            kernel_flows = polled.kernel_flows;
            for e in &polled.events {
                sink.emit(&e.json).context("write alarm")?;
            }
            sink.flush()?;
            if let Some(out) = flow_out.as_mut() {
                for f in &polled.ended {
                    out.emit(&f.to_json("kernel"))
                        .context("write flow record")?;
                }
            }
            next_poll += poll;
            if next_poll < Instant::now() {
                next_poll = Instant::now() + poll;
            }
        }
        if show_status && Instant::now() >= next_status {
            let counters = live.dp.counters()?;
            let unattributed: u64 = counters[..counter::UNATTRIBUTED_REASONS as usize]
                .iter()
                .sum();
            let alarms: Vec<String> = engine
                .alarms
                .opened_by_rule
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            eprint!(
                "\r\x1b[K{} | packets {} | flows {} (kernel {}) conversations {} | new flows {} | unattributed {} | watched {} | alarms: {}",
                ifaces.join(","),
                engine.table.counters.packets,
                engine.table.flow_count(),
                kernel_flows,
                engine.table.conversation_count(),
                counters[counter::FLOWS_CREATED as usize],
                unattributed,
                engine.watched().count(),
                if alarms.is_empty() { "none".to_string() } else { alarms.join(", ") }
            );
            next_status += status_every;
        }
        let wake = if args.duration.is_some() {
            next_poll.min(started + args.duration.unwrap_or_default())
        } else {
            next_poll
        };
        sleep_until(if show_status {
            wake.min(next_status)
        } else {
            wake
        });
    }
    if show_status {
        eprintln!();
    }
    let alarms: Vec<String> = engine
        .alarms
        .opened_by_rule
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    eprintln!(
        "sensor-agent: detached from {}; alarms: {}",
        ifaces.join(", "),
        if alarms.is_empty() {
            "none".to_string()
        } else {
            alarms.join(", ")
        }
    );
    if let Ok(counters) = live.dp.counters() {
        eprintln!(
            "sensor-agent: watched flows {} (refused {}), messages traced {}, lost to a full trace ring {}, over budget {}, timed {}",
            engine.watched().count(),
            engine.stats().watch_refused + live.watch_refused,
            counters[counter::TRACE_EVENTS as usize],
            counters[counter::TRACE_DROPS as usize],
            counters[counter::TRACE_OVER_BUDGET as usize],
            engine.labels.counters.messages,
        );
    }
    for line in sink.report() {
        eprintln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
