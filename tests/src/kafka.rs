//! A real Kafka-protocol broker (Tansu, installed by `cargo xtask setup`) and a real
//! independent consumer for the Kafka sink tests: `tools/kafka-read.py` on kafka-python
//! (Debian's python3-kafka), an implementation of the protocol that shares no code with the
//! sink's librdkafka.
//!
//! The broker runs as a child process on a free loopback port, storing in SQLite in the
//! test's own directory, so it can be stopped and started again with what it had; it is
//! killed on drop. The consumer reads topics back from the beginning to the end of every
//! partition, as a SIEM's consumer would.
//!
//! Not Debian's kcat: its librdkafka 2.0.2 cannot parse Tansu 0.6's ApiVersions answer ("Read
//! underflow"), and under `cargo test` it only worked because cargo's library path made it
//! load the sink's own librdkafka build, which made it no independent reader at all.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::wait::wait_until;

/// Where `cargo xtask setup` installs the broker.
pub fn tansu_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        });
    home.join("bin/tansu")
}

/// The consumer: `tools/kafka-read.py` beside the tests crate.
const READER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/kafka-read.py");
/// Debian's interpreter, which Debian's python3-kafka, python3-lz4 and python3-zstandard
/// belong to.
const PYTHON: &str = "/usr/bin/python3";

/// Fails (never skips) when the broker or the consumer is missing, saying how to get them.
fn check_tools() -> Result<PathBuf, String> {
    let tansu = tansu_bin();
    if !tansu.is_file() {
        return Err(format!(
            "kafka test cannot run: {} is missing (cargo xtask setup installs the Tansu broker)",
            tansu.display()
        ));
    }
    let modules = Command::new(PYTHON)
        .args(["-c", "import kafka, lz4, zstandard"])
        .output()
        .map_err(|e| format!("kafka test cannot run: {PYTHON}: {e}"))?;
    if !modules.status.success() {
        return Err(format!(
            "kafka test cannot run: the consumer's modules are missing (cargo xtask setup installs python3-kafka, python3-lz4, python3-zstandard): {}",
            String::from_utf8_lossy(&modules.stderr).trim()
        ));
    }
    Ok(tansu)
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running (or stopped) Tansu broker.
pub struct Broker {
    dir: PathBuf,
    tansu: PathBuf,
    pub port: u16,
    child: Option<Child>,
    starts: u32,
    /// From the next [`Broker::resume`] on: TLS with this certificate and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// From the next [`Broker::resume`] on: clients must authenticate (SASL).
    pub authentication: bool,
}

impl Broker {
    /// Starts a broker storing in `dir/tansu.db` and waits until it accepts connections.
    pub fn start(dir: &Path) -> Result<Self, String> {
        let tansu = check_tools()?;
        let mut b = Broker {
            dir: dir.to_path_buf(),
            tansu,
            port: free_tcp_port(),
            child: None,
            starts: 0,
            tls: None,
            authentication: false,
        };
        b.resume()?;
        Ok(b)
    }

    /// `127.0.0.1:PORT`, for `brokers` and the reader's `--broker`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again on the same port and storage; waits until it accepts.
    pub fn resume(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log_path = self.dir.join(format!("tansu-{}.log", self.starts));
        let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(&self.tansu);
        cmd.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"]);
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if self.authentication {
            cmd.arg("--authentication");
        }
        let child = cmd
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.tansu.display()))?;
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(30), "the broker to accept", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .map_err(|e| {
            format!(
                "the broker did not start ({e}): {}",
                fs::read_to_string(&log_path).unwrap_or_default()
            )
        })
    }

    /// Stops the broker abruptly (SIGKILL to the process we started): a crash, not a
    /// goodbye, so nothing in flight is finished politely.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates `topic` with `partitions` partitions (the broker does not create topics on
    /// first use).
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), String> {
        let partitions = partitions.to_string();
        self.cli(&["topic", "create", topic, "--partitions", &partitions])
    }

    /// Adds a SCRAM-SHA-512 user (to a broker without TLS or authentication yet: the
    /// credentials are kept in its storage for the next start).
    pub fn create_user(&self, name: &str, password: &str) -> Result<(), String> {
        self.cli(&["user", "create", name, password, "--mechanism", "scram512"])
    }

    /// `tansu ARGS --broker tcp://ADDRESS`, failing with its output.
    fn cli(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new(&self.tansu)
            .args(args)
            .args(["--broker", &format!("tcp://{}", self.address())])
            .output()
            .map_err(|e| format!("cannot run tansu: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tansu {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message as the reader read it.
#[derive(Clone, Debug)]
pub struct Message {
    pub partition: i64,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: String,
}

/// `tools/kafka-read.py` reading `topic` from the beginning to the end of each partition:
/// its standard output.
fn read_topic(broker: &str, topic: &str, extra: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new(PYTHON)
        .arg(READER)
        .args(["--broker", broker, "--topic", topic])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {READER}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "reading {topic}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// Every message of `topic` from the beginning to the end of each partition (one JSON line
/// per message from the reader, so keys and payloads of any content come back whole).
pub fn consume(broker: &str, topic: &str) -> Result<Vec<Message>, String> {
    let out = read_topic(broker, topic, &[])?;
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).map_err(|e| format!("reader line {l:?}: {e}"))?;
            Ok(Message {
                partition: v["partition"].as_i64().unwrap_or(-1),
                offset: v["offset"].as_i64().unwrap_or(-1),
                key: v["key"].as_str().map(str::to_string),
                payload: v["payload"]
                    .as_str()
                    .ok_or_else(|| format!("reader line without a payload: {l}"))?
                    .to_string(),
            })
        })
        .collect()
}

/// Polls [`consume`] until at least `n` messages are in `topic` or `timeout` passed; returns
/// what is there (the caller's assertions say what is missing).
pub fn wait_for(broker: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Message> {
    let mut last = Vec::new();
    let _ = wait_until(timeout, &format!("{n} messages in {topic}"), || {
        if let Ok(m) = consume(broker, topic) {
            last = m;
        }
        last.len() >= n
    });
    last
}

/// How many messages `topic` holds, read through to the end of every partition.
pub fn count(broker: &str, topic: &str) -> Result<u64, String> {
    let out = read_topic(broker, topic, &["--count"])?;
    String::from_utf8_lossy(&out).trim().parse().map_err(|e| {
        format!(
            "reading {topic}: count {:?}: {e}",
            String::from_utf8_lossy(&out)
        )
    })
}
