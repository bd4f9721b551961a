//! `cargo xtask`: everything a new user or CI needs, from a fresh Debian 12 machine.
//!
//! `setup` installs what is missing (Debian packages, bpf-linker built against LLVM 22, the
//! Tansu Kafka-protocol broker for the kafka sink's tests and `broker`) and
//! is a no-op taking well under a second when nothing is; `build`, `run`, `test` and `bench`
//! call it first, so the README's two commands are all a user needs. Nothing here downloads
//! from anywhere but Debian's archive and crates.io.

use std::{
    env,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod layers;
mod package;

/// Debian packages the build and the tests need (docs/TOOLCHAIN.md).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "Debian's rustc 1.96 with LLVM 22, compiles the eBPF programs",
    ),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core for bpfel-unknown-none",
    ),
    ("llvm-22-dev", "LLVM 22 libraries for building bpf-linker"),
    (
        "libpolly-22-dev",
        "needed to link bpf-linker against LLVM 22",
    ),
    (
        "libzstd-dev",
        "needed to link bpf-linker, and zstd compression in the kafka sink's librdkafka",
    ),
    (
        "zlib1g-dev",
        "needed to link bpf-linker, and gzip compression in the kafka sink's librdkafka",
    ),
    (
        "libssl-dev",
        "OpenSSL for the librdkafka the kafka sink builds (rdkafka-sys): TLS and SASL SCRAM",
    ),
    (
        "pkg-config",
        "finds OpenSSL, zlib and zstd for the librdkafka build",
    ),
    ("make", "runs librdkafka's build (rdkafka-sys builds it from source)"),
    (
        "python3-kafka",
        "kafka-python, the independent consumer (tools/kafka-read.py) reading the kafka sink's topics back in tests",
    ),
    (
        "python3-lz4",
        "lz4-compressed batches for tools/kafka-read.py (the kafka sink compresses with lz4 by default)",
    ),
    (
        "python3-zstandard",
        "zstd-compressed batches for tools/kafka-read.py (a kafka sink test uses zstd)",
    ),
    ("tshark", "independent oracle for capture tests"),
    (
        "python3-pyelftools",
        "reads the eBPF object for tools/bpf-insn-count.py (the datapath instruction-count test)",
    ),
    ("tcpdump", "captures in network-namespace tests"),
    (
        "softflowd",
        "a real NetFlow v9/IPFIX exporter feeding sensor-agent collect in tests",
    ),
    (
        "nfdump",
        "nfcapd/nfdump, a real NetFlow/IPFIX collector and reader for the exporter tests",
    ),
    (
        "litecoind",
        "a real Litecoin node (regtest) answering mining RPCs and peering in the daemon tests",
    ),
    (
        "monero",
        "monerod (regtest) answering get_block_template for a wallet in the daemon tests",
    ),
    ("curl", "the mining RPC client of the daemon tests"),
    (
        "iproute2",
        "network namespaces and veth pairs for tests and the lab",
    ),
    ("rsyslog", "a real syslog receiver for the sink tests"),
    (
        "prometheus",
        "promtool check metrics: the reference parser and linter for the metrics endpoint test",
    ),
    (
        "lintian",
        "checks the .deb that cargo xtask package builds, in the packaging test",
    ),
    (
        "rsyslog-gnutls",
        "TLS (RFC 5425) input for the rsyslog sink tests",
    ),
    (
        "chromium",
        "headless browser rendering the HTML report in its test, benchmark and screenshot",
    ),
    (
        "tmux",
        "drives sensor-agent top in its test and screenshot (send-keys, capture-pane)",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The Kafka-protocol broker of `cargo xtask broker` and the kafka sink tests (crates.io
/// `tansu`), with SQLite storage (`libsql`: the default features have no storage engine at
/// all) so a broker restarted keeps its topics.
const TANSU_VERSION: &str = "0.6.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project automation for the flow sensor")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install whatever the build and the tests need and is missing (idempotent).
    Setup {
        /// Only report what is missing; install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build the eBPF programs and the agent (release).
    Build,
    /// Build, attach the sensor to the default interface (or --iface) and print alarms.
    /// Arguments after `--` go to `sensor-agent run` (see `sensor-agent run --help`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Demo: two network namespaces, real traffic, the live sensor and its alarms (< 2 min).
    Lab,
    /// Run every test: formatting, clippy, unit, kernel (BPF_PROG_TEST_RUN) and capture tests.
    Test {
        /// Extra arguments for `cargo test` (for example a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check the agent's structure (no import cycle between its top-level modules, no file
    /// over 1200 lines of code) and print its layers, bottom first. `test` runs the check.
    Layers,
    /// A local Kafka-protocol broker (Tansu) on 127.0.0.1:9092 for trying the kafka sink;
    /// topics in SQLite under target/broker. Ctrl-C stops it.
    Broker {
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// Topics to create when the broker is up (e.g. `--topic sensor-alarms`).
        #[arg(long)]
        topic: Vec<String>,
    },
    /// Build a Debian package (.deb: binary, systemd unit, example config, state directory)
    /// with dpkg-deb, from the release build (or --binary).
    Package {
        /// Package this binary instead of building the release one (the tests use it).
        #[arg(long, value_name = "FILE")]
        binary: Option<PathBuf>,
        /// Directory for the .deb (default: <target dir>/debian).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The README's pictures, made by the project's own tooling: docs/img/report.png (the
    /// HTML report in headless Chromium) and docs/img/top.txt (`sensor-agent top` on a live
    /// sensor in network namespaces, read from tmux; needs root).
    Screenshots,
    /// Benchmarks (print figures; never pass/fail on time).
    Bench {
        /// Which benchmark: `datapath`, `agent`, `sinks`, `detect`, `ingest` or `report`.
        which: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup { check } => setup(check),
        Cmd::Build => {
            setup(false)?;
            cargo(&["build", "--release", "--package", "sensor-agent"])
        }
        Cmd::Run { args } => {
            setup(false)?;
            cargo(&["build", "--release", "--package", "sensor-agent"])?;
            let mut cmd = Command::new(root().join("target/release/sensor-agent"));
            cmd.arg("run").args(&args);
            run(&mut cmd)
        }
        Cmd::Lab => {
            setup(false)?;
            cargo(&[
                "build",
                "--release",
                "--package",
                "sensor-agent",
                "--package",
                "sensor-tests",
                "--bin",
                "sensor-agent",
                "--bin",
                "lab",
            ])?;
            run(&mut Command::new(root().join("target/release/lab")))
        }
        Cmd::Test { args } => {
            setup(false)?;
            test(&args)
        }
        Cmd::Layers => {
            let src = root().join("sensor-agent/src");
            layers::check(&src)?;
            for (module, uses) in layers::layers(&src)? {
                println!(
                    "{module:<10} uses {}",
                    if uses.is_empty() {
                        "-".to_string()
                    } else {
                        uses.join(", ")
                    }
                );
            }
            Ok(())
        }
        Cmd::Broker { port, topic } => {
            setup(false)?;
            broker(port, &topic)
        }
        Cmd::Package { binary, out } => {
            let binary = match binary {
                Some(b) => b,
                None => {
                    setup(false)?;
                    cargo(&["build", "--release", "--package", "sensor-agent"])?;
                    target_dir().join("release/sensor-agent")
                }
            };
            let out = out.unwrap_or_else(|| target_dir().join("debian"));
            let deb = package::build(&root(), &binary, &out)?;
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::Screenshots => {
            setup(false)?;
            // Debug build: the tests' profile, so nothing extra is compiled for it.
            cargo(&[
                "build",
                "--package",
                "sensor-agent",
                "--package",
                "sensor-tests",
                "--bin",
                "sensor-agent",
                "--bin",
                "screenshots",
            ])?;
            run(&mut Command::new(target_dir().join("debug/screenshots")))
        }
        Cmd::Bench { which, args } => {
            setup(false)?;
            bench(&which, &args)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root")
        .to_path_buf()
}

/// Cargo's target directory: CARGO_TARGET_DIR, else `target` in the workspace.
fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root())
        .env("PATH", path_with_cargo_bin())
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// PATH with cargo's install directory, where `cargo install` puts bpf-linker.
fn path_with_cargo_bin() -> String {
    let path = env::var("PATH").unwrap_or_default();
    let bin = cargo_bin_dir();
    if env::split_paths(&path).any(|p| p == bin) {
        path
    } else {
        format!("{}:{path}", bin.display())
    }
}

fn cargo_bin_dir() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        });
    home.join("bin")
}

fn missing_debian_packages() -> Result<Vec<&'static str>> {
    let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(n, _)| *n).collect();
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(&names)
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query: this is not a Debian system (see docs/TOOLCHAIN.md for what to install)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(names
        .into_iter()
        .filter(|n| {
            !text
                .lines()
                .any(|l| l.split_whitespace().next() == Some(n) && l.contains(" ii"))
        })
        .collect())
}

fn bpf_linker_ok() -> bool {
    let linker = cargo_bin_dir().join("bpf-linker");
    Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

/// Tansu of the right version, built with SQLite storage: `cargo install` records the
/// features of every install in `$CARGO_HOME/.crates2.json` (a build without `libsql` runs,
/// but refuses every storage engine the tests and `broker` use).
fn tansu_ok() -> bool {
    let runs = Command::new(cargo_bin_dir().join("tansu"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(TANSU_VERSION))
        .unwrap_or(false);
    let record = cargo_bin_dir().with_file_name(".crates2.json");
    let with_sqlite = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v["installs"].as_object().map(|installs| {
                installs.iter().any(|(k, i)| {
                    k.starts_with(&format!("tansu {TANSU_VERSION} "))
                        && i["features"]
                            .as_array()
                            .is_some_and(|f| f.iter().any(|f| f == "libsql"))
                })
            })
        })
        .unwrap_or(false);
    runs && with_sqlite
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn setup(check_only: bool) -> Result<()> {
    let missing = missing_debian_packages()?;
    let linker_ok = bpf_linker_ok();
    let tansu_installed = tansu_ok();
    if missing.is_empty() && linker_ok && tansu_installed {
        return Ok(());
    }
    let mut report = String::from("missing:\n");
    for m in &missing {
        let why = DEBIAN_PACKAGES
            .iter()
            .find(|(n, _)| n == m)
            .map(|(_, w)| *w)
            .unwrap_or("");
        report.push_str(&format!("  Debian package {m} ({why})\n"));
    }
    if !linker_ok {
        report.push_str(&format!(
            "  bpf-linker {BPF_LINKER_VERSION} in {} (built against LLVM 22)\n",
            cargo_bin_dir().display()
        ));
    }
    if !tansu_installed {
        report.push_str(&format!(
            "  tansu {TANSU_VERSION} in {} (the Kafka-protocol broker of the kafka sink tests)\n",
            cargo_bin_dir().display()
        ));
    }
    let how = format!(
        "install with:\n  apt-get update && apt-get install -y {}\n  LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker@{BPF_LINKER_VERSION} --locked --no-default-features --features llvm-22\n  cargo install tansu@{TANSU_VERSION} --locked --features libsql",
        DEBIAN_PACKAGES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" ")
    );
    if check_only {
        bail!("{report}{how}");
    }
    if !missing.is_empty() {
        if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
            bail!("{report}setup needs root on Debian 12 to install packages; {how}");
        }
        eprintln!(
            "xtask setup: installing Debian packages: {}",
            missing.join(" ")
        );
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !bpf_linker_ok() {
        eprintln!("xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)");
        let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo)
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            // Without it the build script finds /usr/bin/llvm-config, which is LLVM 14.
            .env("LLVM_PREFIX", LLVM_PREFIX))?;
    }
    if !tansu_ok() {
        eprintln!("xtask setup: building the Tansu broker {TANSU_VERSION} (once per machine; 20-30 minutes on 2 cores)");
        let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo)
            .args([
                "install",
                &format!("tansu@{TANSU_VERSION}"),
                "--locked",
                "--features",
                "libsql",
            ])
            // A broker for tests: its build time (about 400 crates, on every fresh CI machine)
            // matters more than its speed, so a lighter optimisation and no debug info.
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"))?;
    }
    let still = missing_debian_packages()?;
    if !still.is_empty() || !bpf_linker_ok() || !tansu_ok() {
        bail!(
            "setup finished but {:?}, bpf-linker ({}) and tansu ({}) are still not usable",
            still,
            bpf_linker_ok(),
            tansu_ok()
        );
    }
    eprintln!("xtask setup: done");
    Ok(())
}

/// Runs a command in the foreground (Ctrl-C reaches it directly) and fails if it does.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs the whole suite, echoing cargo's output and counting the kernel tests (named
/// `kernel_*`), so a run shows how many really touched the kernel. Any ignored test fails the
/// run: tests never skip silently.
fn test(extra: &[String]) -> Result<()> {
    layers::check(&root().join("sensor-agent/src"))
        .context("the agent's structure check failed (see docs/ARCHITECTURE.md, Layers)")?;
    cargo(&["fmt", "--all", "--check"]).context("formatting differs: run `cargo fmt --all`")?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Integration tests run the sensor-agent and lab binaries; `cargo test` only builds the
    // binaries of a package that has integration tests of its own, so build them first.
    cargo(&["build", "--workspace", "--bins"])?;
    let cargo_bin = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo_bin)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .current_dir(root())
        .env("PATH", path_with_cargo_bin())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cargo_bin} test"))?;
    let stdout = child.stdout.take().context("no stdout from cargo test")?;
    let (mut kernel_passed, mut kernel_failed, mut ignored, mut passed, mut failed) =
        (0, 0, 0, 0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("read cargo test output")?;
        println!("{line}");
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        let kernel = rest
            .split("::")
            .last()
            .is_some_and(|n| n.starts_with("kernel_"));
        if rest.ends_with("... ok") {
            passed += 1;
            if kernel {
                kernel_passed += 1;
            }
        } else if rest.ends_with("... FAILED") {
            failed += 1;
            if kernel {
                kernel_failed += 1;
            }
        } else if rest.contains("... ignored") {
            ignored += 1;
        }
    }
    let status = child.wait().context("wait for cargo test")?;
    println!("kernel tests (BPF_PROG_TEST_RUN, network namespaces): {kernel_passed} passed, {kernel_failed} failed");
    println!("all tests: {passed} passed, {failed} failed, {ignored} ignored");
    if ignored > 0 {
        bail!("{ignored} tests were ignored: every test must run");
    }
    if !status.success() || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// Runs Tansu on 127.0.0.1:`port` in the foreground, storing in `target/broker/tansu.db`, and
/// creates `topics` once it accepts connections.
fn broker(port: u16, topics: &[String]) -> Result<()> {
    let dir = root().join("target/broker");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tansu = cargo_bin_dir().join("tansu");
    let url = format!("tcp://127.0.0.1:{port}");
    let mut child = Command::new(&tansu)
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(&dir)
        .spawn()
        .with_context(|| format!("cannot run {}", tansu.display()))?;
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("the broker exited ({status}) before accepting connections");
        }
        if start.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            bail!("the broker did not accept connections on 127.0.0.1:{port} within 30s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for t in topics {
        run(Command::new(&tansu).args(["topic", "create", t, "--broker", &url]))?;
    }
    eprintln!(
        "broker on 127.0.0.1:{port} (data in {}); sinks: kind = \"kafka\", brokers = \"127.0.0.1:{port}\"; read a topic with: tools/kafka-read.py --broker 127.0.0.1:{port} --topic TOPIC",
        dir.display()
    );
    let status = child.wait().context("wait for the broker")?;
    if !status.success() {
        bail!("the broker exited ({status})");
    }
    Ok(())
}

/// Benchmarks by name: each is a release binary of the tests crate.
const BENCHES: &[(&str, &str)] = &[
    ("datapath", "bench-datapath"),
    ("agent", "bench-agent"),
    ("sinks", "bench-sinks"),
    ("detect", "bench-detect"),
    ("ingest", "bench-ingest"),
    ("report", "bench-report"),
];

/// Binaries a benchmark runs besides its own (built in release first).
fn bench_needs(bin: &str) -> &'static [&'static str] {
    match bin {
        "bench-report" => &["sensor-agent", "gen-capture"],
        _ => &[],
    }
}

fn bench(which: &str, args: &[String]) -> Result<()> {
    let Some((_, bin)) = BENCHES.iter().find(|(name, _)| *name == which) else {
        let known: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
        bail!("unknown benchmark {which:?} (known: {})", known.join(", "));
    };
    let needs = bench_needs(bin);
    if !needs.is_empty() {
        let mut b = vec![
            "build",
            "--release",
            "--package",
            "sensor-agent",
            "--package",
            "sensor-tests",
        ];
        for n in needs {
            b.extend(["--bin", n]);
        }
        cargo(&b)?;
    }
    let mut a = vec![
        "run",
        "--release",
        "--package",
        "sensor-tests",
        "--bin",
        bin,
        "--",
    ];
    a.extend(args.iter().map(String::as_str));
    cargo(&a)
}
