//! Running the `sensor-agent` binary from integration tests: finding it, running `replay`,
//! reading its flow records, and private temporary directories that are removed even when a
//! test fails.
//!
//! The binary belongs to another package, so Cargo does not hand its path to this crate's
//! tests (`CARGO_BIN_EXE_*` exists only inside the binary's own package). It is found next to
//! the test executable instead: tests run from `<target>/<profile>/deps/`, the binary is
//! `<target>/<profile>/sensor-agent`. `cargo test --workspace` (what `cargo xtask test` runs)
//! builds it; a lone `cargo test -p sensor-tests` does not (it rebuilds only the agent
//! library), and then the lookup fails saying so, also when the binary exists but is older
//! than its sources. `SENSOR_AGENT_BIN` overrides the lookup (no freshness check).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU64, Ordering},
    time::SystemTime,
};

use serde_json::Value;

const BIN_NAME: &str = "sensor-agent";

/// The command that builds the binary where these tests look for it.
pub const BUILD_HINT: &str =
    "build it with `cargo build -p sensor-agent -p sensor-tests` (same CARGO_TARGET_DIR and profile as the tests), or run `cargo test --workspace` / `cargo xtask test`";

/// Path of the `sensor-agent` binary built alongside this test executable.
///
/// Panics with instructions when it is missing, or when a file it was built from (as listed
/// in Cargo's dep-info file beside it) changed after it was built: a stale binary would make
/// every test here check old code.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SENSOR_AGENT_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SENSOR_AGENT_BIN={} is not a file",
            p.display()
        );
        return p;
    }
    find_bin(BIN_NAME, BUILD_HINT)
}

/// `name` next to the test executable (see [`agent_bin`]), checked to be fresh; panics with
/// `hint` when it is missing.
fn find_bin(name: &str, hint: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test executable");
    let mut looked = Vec::new();
    for dir in exe.ancestors().skip(1).take(4) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            check_fresh(&candidate);
            return candidate;
        }
        looked.push(candidate.display().to_string());
    }
    panic!(
        "the {name} binary is missing (looked at: {}); {hint}",
        looked.join(", ")
    );
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Files the binary was built from, from the dep-info file Cargo writes beside it
/// (`<bin>.d`: `target: dep dep ...`, spaces in paths escaped with a backslash).
fn build_inputs(bin: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string(bin.with_extension("d")) else {
        return Vec::new();
    };
    let Some((_, deps)) = text.split_once(": ") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

/// Panics when a file the binary was built from (per Cargo's dep-info) changed after it was
/// built: `cargo test -p sensor-tests` rebuilds the agent library this crate links, but not
/// the agent binary, and a stale binary would make every test here check old code.
fn check_fresh(bin: &Path) {
    let Some(built) = mtime(bin) else { return };
    for input in build_inputs(bin) {
        if !input.is_file() {
            continue;
        }
        if let Some(t) = mtime(&input) {
            assert!(
                t <= built,
                "the {BIN_NAME} binary at {} is older than {}, which it is built from; {BUILD_HINT}",
                bin.display(),
                input.display()
            );
        }
    }
}

/// A real capture from `tests/pcaps` (see its README for sources and licences).
pub fn repo_pcap(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("pcaps")
        .join(name);
    assert!(
        p.is_file(),
        "test capture {} is missing from the repository",
        p.display()
    );
    p
}

/// A command line for the agent binary.
pub fn command() -> Command {
    let mut c = Command::new(agent_bin());
    // Keep the agent's own logging out of the stderr the tests parse.
    c.env("RUST_LOG", "error");
    c
}

/// Result of one agent run, with the output decoded.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The result of a finished agent process.
    pub fn from_output(out: Output) -> Self {
        Self::from(out)
    }

    fn from(out: Output) -> Self {
        Run {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Lines of stderr that report an error.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect()
    }

    /// Flow records printed on stdout (`--flows -`). Alarms, which share stdout by default,
    /// are left out: flow records have `event.kind` "event", alarms "alert".
    pub fn stdout_flows(&self) -> Vec<Value> {
        parse_flows(&self.stdout, "stdout")
            .into_iter()
            .filter(|v| v["event"]["kind"] == "event")
            .collect()
    }
}

/// The agent with any arguments.
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = command()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", agent_bin().display()));
    Run::from(out)
}

/// `sensor-agent replay --engine ENGINE [--flows FLOWS] CAPTURES...`.
pub fn replay(engine: &str, flows: Option<&Path>, captures: &[&Path]) -> Run {
    let mut c = command();
    c.args(["replay", "--engine", engine]);
    if let Some(f) = flows {
        c.arg("--flows").arg(f);
    }
    c.args(captures);
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", agent_bin().display()));
    Run::from(out)
}

/// `sensor-agent replay --no-progress --engine ENGINE --flows FLOWS --alarms ALARMS
/// [--set K=V]... CAPTURE`.
pub fn replay_to(engine: &str, flows: &Path, alarms: &Path, sets: &[&str], capture: &Path) -> Run {
    let mut c = command();
    c.args(["replay", "--no-progress", "--engine", engine, "--flows"])
        .arg(flows)
        .arg("--alarms")
        .arg(alarms);
    for s in sets {
        c.args(["--set", s]);
    }
    let out = c
        .arg(capture)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", agent_bin().display()));
    Run::from(out)
}

/// Flow records with `sensor.engine` removed, as sorted JSON lines: what two engines must
/// agree on.
pub fn without_engine(flows: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = flows
        .iter()
        .map(|f| {
            let mut f = f.clone();
            if let Some(s) = f.get_mut("sensor").and_then(Value::as_object_mut) {
                s.remove("engine");
            }
            f.to_string()
        })
        .collect();
    out.sort();
    out
}

/// Parses JSON lines of flow records.
pub fn parse_flows(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what}: flow record is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Reads a `--flows` file.
pub fn read_flows(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read flow file {}: {e}", path.display()));
    parse_flows(&text, &path.display().to_string())
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A private directory under the system temp dir, removed with everything in it on drop
/// (also when the test panics). Names are unique per process and call.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("sensor-tests-{tag}-{}-{n}", std::process::id()));
        // A leftover from a killed run with a recycled pid must not leak into this one.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to `name` in the directory and returns the file's path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path.join(name);
        fs::write(&p, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Path of another binary of this workspace (`xtask`), built alongside the test executable
/// as the agent is (`cargo build --workspace --bins`); panics naming the command that builds it.
pub fn workspace_bin(name: &str) -> PathBuf {
    find_bin(
        name,
        "build it with `cargo build --workspace --bins` (same CARGO_TARGET_DIR and profile as the tests)",
    )
}
