//! The inputs the report and `top` are shown and tested with, built by the project's own
//! tooling so that a test and the README's screenshots show the same thing:
//! - [`five_rule_replay`]: real captures and a synthetic TLS pool session replayed into
//!   alarms of five rules and their flow records;
//! - [`LiveTop`]: a live sensor attached in a network namespace pair watching a quiet
//!   keepalive session (which raises `long_flow` within seconds at the demo thresholds), and
//!   `sensor-agent top` on it inside a private tmux server.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use fastrand::Rng;

use crate::{
    agent::{self, agent_bin, repo_pcap, TempDir},
    netns::NetnsPair,
    pcap,
    session::{self, Session, Speaker},
    tls::{secs_between, tls_session},
    tmux::Tmux,
    wait::wait_until,
};

/// Replays `cryptonote-login-stratum.pcap` (2018), `quiet-long-tcp.pcap` (2021) and a 2.5 h
/// TLS session to a pool SNI with constant record sizes (2023), in time order, with the
/// long-flow thresholds at 1 h: alarms of long_flow, quiet_long_flow, periodic_flow,
/// mining_protocol and encrypted_mining. Returns the alarm and flow files in `dir`.
pub fn five_rule_replay(dir: &TempDir) -> Result<(PathBuf, PathBuf), String> {
    let mut rng = Rng::with_seed(0x5EED);
    let tls = tls_session(
        14433,
        "eu1.pool.example-xmr.net",
        &[],
        9000,
        &mut rng,
        |r| (secs_between(r, 30, 60), 181),
        |r| (secs_between(r, 53, 57), 251),
    );
    let tls = dir.write("tls-pool.pcap", &pcap::pcap(pcap::LINKTYPE_ETHERNET, &tls));
    let (alarms, flows) = (
        dir.path().join("alarms.json"),
        dir.path().join("flows.json"),
    );
    let mut cmd = agent::command();
    cmd.args(["replay", "--no-progress", "--alarms"])
        .arg(&alarms)
        .arg("--flows")
        .arg(&flows)
        .args([
            "--set",
            "detect.long_flow.after=1h",
            "--set",
            "detect.quiet_long_flow.after=1h",
        ])
        .arg(repo_pcap("cryptonote-login-stratum.pcap"))
        .arg(repo_pcap("quiet-long-tcp.pcap"))
        .arg(&tls);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run the agent: {e}"))?;
    let run = agent::Run::from_output(out);
    if !run.success {
        return Err(format!("replay failed: {}", run.stderr));
    }
    Ok((alarms, flows))
}

/// The metrics endpoint inside namespace `a` (the default address: namespaces never share it).
pub const ENDPOINT: &str = "127.0.0.1:9464";
/// The server port of the watched keepalive session.
pub const PORT: u16 = 3333;

/// A GET inside namespace `ns`: (status code, body); `None` when nothing answered.
pub fn http_get(ns: &str, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    NetnsPair::in_ns(ns, move || -> Option<(u16, String)> {
        let mut s =
            TcpStream::connect_timeout(&ENDPOINT.parse().ok()?, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.take(8 << 20).read_to_string(&mut text).ok()?;
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
        Some((code, body))
    })
    .join()
    .ok()?
    .ok()?
}

/// A live sensor, a session it watches, and `top` on it in tmux.
pub struct LiveTop {
    // Dropped in this order: tmux (and `top`) first, then the namespaces and the agent.
    pub tmux: Tmux,
    pub session: Option<Session>,
    pub pair: NetnsPair,
    pub agent: u32,
    pub dir: TempDir,
    pub exit_file: PathBuf,
    pub log: PathBuf,
}

impl LiveTop {
    /// Attaches the agent in a new namespace pair (demo thresholds: long and quiet-long
    /// flows after 6 s, watching after 2 s), starts a client keepalive every second for
    /// `length`, waits until the agent is ready, then starts `top` in a `width` x `height`
    /// tmux session. Needs root.
    pub fn start(tag: &str, length: Duration, width: u16, height: u16) -> Result<Self, String> {
        let dir = TempDir::new(tag);
        let mut pair = NetnsPair::create(tag)?;
        let config = dir.path().join("sensor.toml");
        fs::write(
            &config,
            format!(
                "[[sinks]]\nkind = \"file\"\nname = \"alarms-file\"\npath = \"{}\"\n",
                dir.path().join("alarms.json").display()
            ),
        )
        .map_err(|e| format!("write config: {e}"))?;
        let log = dir.path().join("agent.log");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--iface".into(),
            pair.veth_a.clone(),
            "--egress".into(),
            "--config".into(),
            config.display().to_string(),
        ];
        for set in [
            "sensor.poll_interval=1s".to_string(),
            "sensor.pin_path=".to_string(),
            format!("state.path={}", dir.path().join("state.bin").display()),
            format!("spool.dir={}", dir.path().join("spool").display()),
            "detect.long_flow.after=6s".to_string(),
            "detect.quiet_long_flow.after=6s".to_string(),
            "detect.watch.after=2s".to_string(),
        ] {
            args.push("--set".into());
            args.push(set);
        }
        let a = pair.a.clone();
        let agent = pair.spawn_net_only(
            &a,
            &agent_bin(),
            &args,
            Stdio::null(),
            Stdio::from(fs::File::create(&log).map_err(|e| format!("agent log: {e}"))?),
        )?;
        wait_until(
            Duration::from_secs(60),
            "the agent's /readyz to answer 200",
            || http_get(&a, "/readyz").is_some_and(|(code, _)| code == 200),
        )
        .map_err(|e| {
            format!(
                "{e}; agent log: {}",
                fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        let session = session::start(&pair, PORT, Speaker::Client, Duration::from_secs(1), length);
        let exit_file = dir.path().join("top.exit");
        let command = format!(
            "ip netns exec {a} {} top --metrics http://{ENDPOINT} --interval 500ms 2>{}; echo \"top-exit=$?\" > {}",
            agent_bin().display(),
            dir.path().join("top.stderr").display(),
            exit_file.display()
        );
        let tmux = Tmux::start(tag, width, height, &command)?;
        Ok(LiveTop {
            tmux,
            session: Some(session),
            pair,
            agent,
            dir,
            exit_file,
            log,
        })
    }

    /// The client side of the watched session, `a:port -> b:PORT` as `top` writes it.
    pub fn conversation(&self) -> String {
        format!(
            "{} -> {}:{PORT}",
            self.pair.addr_a_str(),
            self.pair.addr_b_str()
        )
    }

    /// Waits until the screen shows the watched conversation and an opened alarm on it;
    /// returns that screen.
    pub fn wait_for_alarm(&mut self, timeout: Duration) -> Result<String, String> {
        let conv = self.conversation();
        let mut screen = String::new();
        wait_until(
            timeout,
            "top to show the conversation and its alarm",
            || {
                screen = self.tmux.capture().unwrap_or_default();
                screen.contains(&format!("{conv}/tcp"))
                    && screen.lines().any(|l| {
                        l.contains("long_flow") && l.contains("opened") && l.contains(&conv)
                    })
            },
        )
        .map_err(|e| {
            let session = match self.session.take() {
                Some(s) if s.speaker.is_finished() => format!("had ended: {:?}", s.speaker.join()),
                Some(s) => {
                    self.session = Some(s);
                    "was still running".to_string()
                }
                None => "was not started".to_string(),
            };
            format!(
                "{e}; the keepalive session {session}; screen:\n{screen}\ntop stderr: {}\nagent log: {}",
                fs::read_to_string(self.dir.path().join("top.stderr")).unwrap_or_default(),
                fs::read_to_string(&self.log).unwrap_or_default()
            )
        })?;
        Ok(screen)
    }

    /// Types `q` and waits for `top` to exit; its exit status as the shell saw it.
    pub fn quit(&self) -> Result<i32, String> {
        self.tmux.send_keys("q")?;
        let mut said = String::new();
        wait_until(Duration::from_secs(15), "top to exit after q", || {
            said = fs::read_to_string(&self.exit_file).unwrap_or_default();
            said.contains("top-exit=")
        })?;
        said.trim()
            .trim_start_matches("top-exit=")
            .parse()
            .map_err(|e| format!("exit status {said:?}: {e}"))
    }
}

/// Where the screenshots tool writes (the repository's `docs/img`).
pub fn docs_img() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img")
}
