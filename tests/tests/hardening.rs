//! What a slip, a poisoned feed or a full disk must never do (issue 17): each test builds its
//! own hostile input (an output path that is an input, `/dev/full`, a `/0` feed entry, a FIFO
//! in the feed directory, hostile Unicode) and checks the agent's answer: one clear line, a
//! defined exit status, and nothing already there destroyed.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::symlink,
    process::Stdio,
};

use sensor_tests::{
    agent::{self, TempDir},
    frames::{TcpConn, TCP_ACK, TCP_PSH, TCP_SYN},
    pcap::{self, Record, LINKTYPE_ETHERNET},
};

/// A small real-looking capture: one TCP conversation of `n` frames, a second apart.
fn capture(n: usize) -> Vec<u8> {
    let conv = TcpConn::new([10, 0, 0, 1], 40000, [10, 0, 0, 2], 443);
    let records: Vec<Record> = (0..n)
        .map(|i| {
            let flags = if i == 0 { TCP_SYN } else { TCP_PSH | TCP_ACK };
            let ts = 1_600_000_000_000_000_000 + i as u64 * 1_000_000_000;
            Record::new(ts, conv.frame(i % 2 == 0, flags, &vec![b'x'; 20 + i]))
        })
        .collect();
    pcap::pcapng(LINKTYPE_ETHERNET, &records)
}

/// `replay --flows X X`, `--alarms X X`, through a symlink and a hard link, and through
/// `output.alarms`: refused with one line naming both, before anything is written; the
/// capture is byte-identical afterwards.
#[test]
fn output_that_is_an_input_is_refused() {
    let dir = TempDir::new("hard-overwrite");
    let bytes = capture(12);
    let cap = dir.write("in.pcapng", &bytes);
    let link = dir.path().join("link.json");
    symlink(&cap, &link).expect("symlink");
    let hard = dir.path().join("hard.json");
    fs::hard_link(&cap, &hard).expect("hard link");
    let cap_s = cap.to_str().expect("utf-8 path").to_string();
    let cases: Vec<Vec<String>> = vec![
        vec!["--flows".into(), cap_s.clone()],
        vec!["--alarms".into(), cap_s.clone()],
        vec!["--flows".into(), link.display().to_string()],
        vec!["--alarms".into(), hard.display().to_string()],
        vec!["--set".into(), format!("output.alarms={}", link.display())],
    ];
    for extra in cases {
        let mut args: Vec<String> = vec!["replay".into(), "--no-progress".into()];
        args.extend(extra.iter().cloned());
        args.push(cap_s.clone());
        let run = agent::run(&args);
        assert_eq!(run.code, Some(1), "{extra:?}: {run:?}");
        let errors = run.error_lines();
        assert_eq!(errors.len(), 1, "{extra:?}: one error line: {run:?}");
        assert!(
            errors[0].contains("is the input") && errors[0].contains("in.pcapng"),
            "{extra:?}: the line names the input: {}",
            errors[0]
        );
        assert!(
            !run.stderr.contains("replayed"),
            "{extra:?}: refused before replaying: {run:?}"
        );
        assert_eq!(
            fs::read(&cap).expect("capture still there"),
            bytes,
            "{extra:?}: the capture is byte-identical"
        );
    }
    // A different output next to the input still works.
    let flows = dir.path().join("flows.json");
    let run = agent::run(&[
        "replay",
        "--no-progress",
        "--flows",
        flows.to_str().expect("utf-8"),
        &cap_s,
    ]);
    assert!(run.success, "{run:?}");
    assert_eq!(agent::read_flows(&flows).len(), 1, "one flow written");
    assert_eq!(fs::read(&cap).expect("capture"), bytes);
}

/// Many flows, so that the output outlives a reader that stops early.
fn many_flows_capture(n: u16) -> Vec<u8> {
    let records: Vec<Record> = (0..n)
        .map(|i| {
            let conv = TcpConn::new([10, 0, 0, 1], 10000 + i, [10, 0, 0, 2], 443);
            let ts = 1_600_000_000_000_000_000 + u64::from(i) * 1_000_000;
            Record::new(ts, conv.frame(true, TCP_SYN, &[]))
        })
        .collect();
    pcap::pcapng(LINKTYPE_ETHERNET, &records)
}

fn dev_full() -> fs::File {
    fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full exists on Linux; this test needs it")
}

fn assert_no_panic(what: &str, out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{what}: panicked: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{what}: no panic or backtrace: {stderr}"
    );
}

/// `validate >/dev/full`: one error line on stderr and exit 1; `replay ... 2>/dev/full`: the
/// command's own status (0 for a good capture, 1 for a bad one), never a panic (101).
#[test]
fn unwritable_output_is_one_line_not_a_panic() {
    let out = agent::command()
        .arg("validate")
        .stdout(dev_full())
        .output()
        .expect("run validate");
    assert_no_panic("validate >/dev/full", &out);
    assert_eq!(out.status.code(), Some(1), "validate >/dev/full fails");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("error: cannot write the result to stdout")
            && lines[0].contains("No space left on device"),
        "{stderr}"
    );

    let dir = TempDir::new("hard-full");
    let good = dir.write("good.pcapng", &capture(6));
    let bad = dir.write("bad.pcapng", b"this is no capture at all, just text\n");
    for (cap, code) in [(&good, 0), (&bad, 1)] {
        let out = agent::command()
            .args(["replay", "--no-progress", "--flows", "-"])
            .arg(cap)
            .stderr(dev_full())
            .output()
            .expect("run replay");
        assert_no_panic("replay 2>/dev/full", &out);
        assert_eq!(out.status.code(), Some(code), "{}", cap.display());
    }
    // Flow records to a full disk: one line, exit 1.
    let out = agent::command()
        .args(["replay", "--no-progress", "--flows", "-"])
        .arg(&good)
        .stdout(dev_full())
        .output()
        .expect("run replay");
    assert_no_panic("replay >/dev/full", &out);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("No space left on device"), "{stderr}");
}

/// `replay --flows - | head -1`: the reader leaving is a normal end (exit 0, the summary is
/// written), not an error or a panic.
#[test]
fn closed_stdout_pipe_is_a_normal_end() {
    let dir = TempDir::new("hard-pipe");
    let cap = dir.write("many.pcapng", &many_flows_capture(3000));
    let mut child = agent::command()
        .args(["replay", "--no-progress", "--flows", "-"])
        .arg(&cap)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start replay");
    // Read one line, like `head -1`, then close the pipe.
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read the first flow record");
    assert!(first.starts_with('{'), "a flow record: {first}");
    let out = child.wait_with_output().expect("wait for replay");
    assert_no_panic("replay | head -1", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("replayed 3000 frames"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

fn infra_alarms(stdout: &str) -> usize {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|a| a["rule"]["id"] == "mining_infrastructure" && a["event"]["action"] == "opened")
        .count()
}

/// A poisoned feed listing `0.0.0.0/0`, `::/0`, `0.0.0.0/1` and a /7: every such network is
/// refused (counted, said once with the first one), so no flow matches; the same feed with
/// `intel.min_prefix_v4 = 0` does match, which shows the capture would raise the alarm.
#[test]
fn feed_networks_broader_than_the_minimum_are_refused() {
    let dir = TempDir::new("hard-broad");
    let cap = dir.write("c.pcapng", &capture(12));
    let feeds = dir.path().join("feeds");
    fs::create_dir_all(&feeds).expect("feed dir");
    fs::write(
        feeds.join("poisoned.txt"),
        "# pools\n0.0.0.0/0\n::/0\n0.0.0.0/1\n10.0.0.0/7\n2001:db8::/48\n",
    )
    .expect("feed");
    let set = format!("intel.directory={:?}", feeds.display().to_string());
    let run = agent::run(&[
        "replay",
        "--no-progress",
        "--set",
        &set,
        cap.to_str().expect("utf-8"),
    ]);
    assert!(run.success, "{run:?}");
    assert_eq!(infra_alarms(&run.stdout), 0, "{run:?}");
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("broader"))
        .collect();
    assert_eq!(warnings.len(), 1, "said once: {}", run.stderr);
    assert!(
        warnings[0].starts_with("warning: ") && warnings[0].contains("4 networks broader"),
        "{}",
        run.stderr
    );

    let run = agent::run(&[
        "replay",
        "--no-progress",
        "--set",
        &set,
        "--set",
        "intel.min_prefix_v4=0",
        cap.to_str().expect("utf-8"),
    ]);
    assert!(run.success, "{run:?}");
    assert_eq!(infra_alarms(&run.stdout), 1, "{run:?}");
    // A bad minimum is refused by validate, naming the key.
    let run = agent::run(&["validate", "--set", "intel.min_prefix_v4=33"]);
    assert!(
        !run.success && run.stderr.contains("intel.min_prefix_v4"),
        "{run:?}"
    );
}

/// A feed directory `feeds` under `dir` with one good feed, and the `--set` naming it.
fn feed_dir(dir: &TempDir) -> (std::path::PathBuf, String) {
    let feeds = dir.path().join("feeds");
    fs::create_dir_all(&feeds).expect("feed dir");
    fs::write(feeds.join("good.txt"), "198.51.100.7\n").expect("feed");
    let set = format!("intel.directory={:?}", feeds.display().to_string());
    (feeds, set)
}

/// A FIFO in the feed directory: `validate` names it and refuses, `replay` refuses the same
/// way instead of blocking forever on opening it (the test would hang without the fix, so it
/// runs the agent with a watchdog that kills it and fails).
#[test]
fn fifo_in_the_feed_directory_is_refused_not_opened() {
    let dir = TempDir::new("hard-fifo");
    let cap = dir.write("c.pcapng", &capture(4));
    let (feeds, set) = feed_dir(&dir);
    let fifo = feeds.join("pipe.txt");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    for args in [
        vec!["validate", "--set", &set],
        vec![
            "replay",
            "--no-progress",
            "--set",
            &set,
            cap.to_str().expect("utf-8"),
        ],
    ] {
        let run = run_with_watchdog(&args);
        assert_eq!(run.code, Some(1), "{args:?}: {run:?}");
        let errors = run.error_lines();
        assert_eq!(errors.len(), 1, "{run:?}");
        assert!(
            errors[0].contains("intel.directory")
                && errors[0].contains("pipe.txt")
                && errors[0].contains("FIFO"),
            "{}",
            errors[0]
        );
    }
}

/// A symlink in the feed directory to a file outside it is refused by default (its lines
/// never reach the log); `intel.follow_symlinks = true` reads it.
#[test]
fn feed_symlink_out_of_the_directory_is_not_followed() {
    let dir = TempDir::new("hard-link");
    let secret = dir.write("secret.txt", b"root:SECRETHASH:19000:0:99999:7:::\n");
    let (feeds, set) = feed_dir(&dir);
    symlink(&secret, feeds.join("shadow")).expect("symlink");
    // A link inside the directory is fine.
    symlink(feeds.join("good.txt"), feeds.join("alias.txt")).expect("symlink");
    let run = agent::run(&["validate", "--set", &set]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("symlink out of the feed directory")
            && run.stderr.contains("intel.follow_symlinks"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("SECRETHASH"), "{run:?}");
    assert!(!run.stderr.contains("alias.txt"), "{run:?}");
    let run = agent::run(&[
        "validate",
        "--set",
        &set,
        "--set",
        "intel.follow_symlinks=true",
    ]);
    assert!(run.success, "{run:?}");
}

/// Runs the agent, killing it (and failing) if it has not ended within a minute: a hang is
/// what this guards against, so the test must not hang with it.
fn run_with_watchdog(args: &[&str]) -> agent::Run {
    let child = agent::command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => {
            let out = out.expect("wait for the agent");
            agent::Run {
                success: out.status.success(),
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            // SAFETY: kill(2) on the pid of the child this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the agent hung on {args:?} (killed after 60 s)");
        }
    }
}

/// A 1 MB malformed feed line with terminal escapes is quoted as a short escaped excerpt,
/// never whole: no stderr line is longer than a few hundred bytes, no raw ESC reaches it.
#[test]
fn bad_feed_lines_are_quoted_short_and_escaped() {
    let dir = TempDir::new("hard-excerpt");
    let (feeds, set) = feed_dir(&dir);
    let mut huge = "\u{1b}[2J".to_string();
    huge.push_str(&"z".repeat(1_000_000));
    fs::write(feeds.join("big.txt"), format!("198.51.100.9\n{huge}\n")).expect("feed");
    let cap = dir.write("c.pcapng", &capture(4));
    let out = agent::command()
        .env("RUST_LOG", "warn")
        .args(["replay", "--no-progress", "--set", &set])
        .arg(&cap)
        .output()
        .expect("run replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("big.txt:2:") && stderr.contains("more bytes"),
        "the bad line is reported, shortened: {}",
        &stderr[..stderr.len().min(2000)]
    );
    for line in stderr.lines() {
        assert!(line.len() < 400, "a long line: {}", &line[..400]);
    }
    assert!(!stderr.contains('\u{1b}'), "raw ESC in the log");
}

/// An error whose cause text is already part of it is said once: a spool locked by another
/// process ("spool X is in use by another process") appears once on the line.
#[test]
fn errors_do_not_repeat_their_cause() {
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("hard-repeat");
    let spool = dir.path().join("spool");
    fs::create_dir_all(&spool).expect("spool dir");
    let lock = fs::File::create(spool.join("LOCK")).expect("lock file");
    // SAFETY: flock on a descriptor this test owns; held until `lock` drops.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let config = dir.write(
        "sensor.toml",
        format!(
            "[spool]\ndir = {:?}\n\n[[sinks]]\nkind = \"file\"\npath = {:?}\n",
            spool.display().to_string(),
            dir.path().join("alarms.log").display().to_string()
        )
        .as_bytes(),
    );
    let cap = dir.write("c.pcapng", &capture(4));
    let run = replay_with_config(&config, &cap);
    assert_eq!(run.code, Some(1), "{run:?}");
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{run:?}");
    assert_eq!(
        errors[0].matches("in use").count(),
        1,
        "said once: {}",
        errors[0]
    );
    drop(lock);
}

/// Hostile Unicode from a feed's description (line and paragraph separators, bidi overrides
/// and isolates) reaches no output format raw: JSON, CEF, LEEF and OCSF files written by
/// `[[sinks]]` hold none of them, and the JSON ones still carry the exact text (escaped).
#[test]
fn line_separators_and_bidi_controls_are_escaped_in_every_format() {
    const UNSAFE: [char; 11] = [
        '\u{2028}', '\u{2029}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}',
        '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
    ];
    let dir = TempDir::new("hard-bidi");
    let cap = dir.write("c.pcapng", &capture(6));
    let feeds = dir.path().join("feeds");
    fs::create_dir_all(&feeds).expect("feed dir");
    let description: String = format!("pool{}", UNSAFE.iter().collect::<String>()) + " exe.gnp";
    fs::write(
        feeds.join("pools.txt"),
        format!("10.0.0.2 # {description}\n"),
    )
    .expect("feed");
    let mut config = format!(
        "[intel]\ndirectory = {:?}\n\n[spool]\ndir = {:?}\n",
        feeds.display().to_string(),
        dir.path().join("spool").display().to_string()
    );
    let formats = ["json", "cef", "leef", "ocsf"];
    for f in formats {
        config.push_str(&format!(
            "\n[[sinks]]\nkind = \"file\"\nname = \"{f}\"\nformat = \"{f}\"\npath = {:?}\n",
            dir.path().join(format!("alarms.{f}")).display().to_string()
        ));
    }
    let config = dir.write("sensor.toml", config.as_bytes());
    let run = replay_with_config(&config, &cap);
    assert!(run.success, "{run:?}");
    for f in formats {
        let text = fs::read_to_string(dir.path().join(format!("alarms.{f}")))
            .unwrap_or_else(|e| panic!("{f}: {e}: {run:?}"));
        assert!(
            text.contains("mining_infrastructure") || text.contains("Mining"),
            "{f}: an alarm: {text}"
        );
        assert!(
            !text.chars().any(|c| UNSAFE.contains(&c)),
            "{f}: a raw separator or bidi control: {text:?}"
        );
        if f == "json" {
            let alarm: serde_json::Value = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|a| a["rule"]["id"] == "mining_infrastructure")
                .expect("the alarm");
            assert_eq!(
                alarm["sensor"]["evidence"]["description"], description,
                "json keeps the exact text"
            );
        }
    }
}

/// `replay --no-progress --config CONFIG CAPTURE`.
fn replay_with_config(config: &std::path::Path, cap: &std::path::Path) -> agent::Run {
    agent::run(&[
        "replay",
        "--no-progress",
        "--config",
        config.to_str().expect("utf-8"),
        cap.to_str().expect("utf-8"),
    ])
}

/// UDP syslog with `max_datagram = 480` and an alarm longer than that (a long feed
/// description): the datagram a real UDP receiver gets is at most 480 bytes, and the summary
/// counts the cut alarm instead of passing it as whole.
#[test]
fn udp_syslog_cuts_are_counted() {
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP receiver");
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let port = receiver.local_addr().expect("addr").port();
    let dir = TempDir::new("hard-udp");
    let cap = dir.write("c.pcapng", &capture(6));
    let feeds = dir.path().join("feeds");
    fs::create_dir_all(&feeds).expect("feed dir");
    fs::write(
        feeds.join("pools.txt"),
        format!("10.0.0.2 # {}\n", "d".repeat(1500)),
    )
    .expect("feed");
    let config = dir.write(
        "sensor.toml",
        format!(
            "[intel]\ndirectory = {:?}\n\n[spool]\ndir = {:?}\n\n[[sinks]]\nkind = \"syslog\"\nname = \"udp\"\naddress = \"udp://127.0.0.1:{port}\"\nmax_datagram = 480\n",
            feeds.display().to_string(),
            dir.path().join("spool").display().to_string()
        )
        .as_bytes(),
    );
    let run = replay_with_config(&config, &cap);
    assert!(run.success, "{run:?}");
    let mut buf = vec![0u8; 65536];
    let n = receiver.recv(&mut buf).expect("a datagram");
    assert!(n <= 480, "datagram of {n} bytes");
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("sink udp:"))
        .unwrap_or_else(|| panic!("a sink line: {}", run.stderr));
    assert!(line.contains("1 sent cut to max_datagram"), "{line}");
}

/// Configuration slips: each refused by `validate` with one line naming the key and where it
/// came from, and refused the same way by `replay` (what validate accepts every command
/// accepts); an endless or huge config file is refused without reading it all.
#[test]
fn config_slips_are_refused_by_validate_and_replay_alike() {
    let dir = TempDir::new("hard-config");
    let cap = dir.write("c.pcapng", &capture(4));
    let two_stdout = dir.write(
        "two.toml",
        b"[[sinks]]\nkind = \"stdout\"\n\n[[sinks]]\nkind = \"stdout\"\nformat = \"cef\"\n",
    );
    // Each slip on its own line of a file, so the error must name the line.
    let file_slips = [
        ("spool.toml", "[spool]\nwhen_full = \"block\"\nmax_bytes = 10\n", "spool.toml:3", "spool.max_bytes"),
        ("allow.toml", "[intel]\nrefresh = \"1h\"\nallow = [\"10.0.0.1\", \"not an address\"]\n", "allow.toml:3", "intel.allow[1]"),
        ("alarm.toml", "[[alarm.allow]]\ncidr = \"10.0.0.0/8\"\n\n[[alarm.allow]]\nport = 3333\nrules = [\"nope\"]\n", "alarm.toml:6", "alarm.allow[1].rules"),
        ("bignum.toml", "[flow]\nmax_flows = 99999999999999999999\n", "bignum.toml:2", "flow.max_flows"),
        ("ladder.toml", "[detect.long_flow]\nafter = \"1h\"\nladder = [\"24h\", \"12h\"]\n", "ladder.toml:3", "rungs must increase"),
        ("samples.toml", "[detect.periodic_flow]\nmin_samples = 0\n", "samples.toml:2", "min_samples"),
        ("bare.toml", "[flow]\ntcp_idle_timeout = 30\n", "bare.toml:2", "30 has no unit"),
    ]
    .map(|(name, text, origin, what)| (dir.write(name, text.as_bytes()), origin, what));
    let huge = dir.path().join("huge.toml");
    {
        // 8 MB of comments: valid TOML, far too big for a configuration.
        let line = format!("# {}\n", "c".repeat(1000));
        fs::write(&huge, line.repeat(8 * 1024)).expect("huge config");
    }
    let mut cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec![
                "--set".into(),
                "flow.max_flows=99999999999999999999999".into(),
            ],
            "--set flow.max_flows=",
            "too large",
        ),
        (
            vec!["--set".into(), "flow.udp_idle_timeout=90".into()],
            "--set flow.udp_idle_timeout=90",
            "write 90s",
        ),
        (
            vec!["--set".into(), "detect.periodic_flow.min_samples=2".into()],
            "--set",
            "min_samples",
        ),
        (
            vec!["--set".into(), "sensor.max_kernel_flows=0".into()],
            "--set sensor.max_kernel_flows=0",
            "sensor.max_kernel_flows",
        ),
        (
            vec!["--set".into(), "detect.long_flow.after=1h\n2h".into()],
            "--set",
            "line break",
        ),
        (
            vec![
                "--set".into(),
                "detect.long_flow.after=584000000000y".into(),
            ],
            "--set",
            "100 years",
        ),
        (
            vec!["--set".into(), "output.alarms=\"\"".into()],
            "--set",
            "output.alarms",
        ),
        (
            vec!["--config".into(), two_stdout.display().to_string()],
            "two.toml",
            "sinks[1].name",
        ),
        (
            vec!["--config".into(), "/dev/zero".into()],
            "/dev/zero",
            "larger than",
        ),
        (
            vec!["--config".into(), huge.display().to_string()],
            "huge.toml",
            "larger than",
        ),
    ];
    for (path, origin, what) in &file_slips {
        cases.push((
            vec!["--config".into(), path.display().to_string()],
            origin,
            what,
        ));
    }
    for (args, origin, what) in cases {
        let mut validate = vec!["validate".to_string()];
        validate.extend(args.iter().cloned());
        let mut replay = vec!["replay".to_string(), "--no-progress".into()];
        replay.extend(args.iter().cloned());
        replay.push(cap.display().to_string());
        for cmd in [validate, replay] {
            let run = run_with_watchdog(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(run.code, Some(1), "{cmd:?}: {run:?}");
            let errors = run.error_lines();
            assert_eq!(errors.len(), 1, "{cmd:?}: {run:?}");
            assert!(
                errors[0].contains(origin) && errors[0].contains(what),
                "{cmd:?}: names {origin} and {what}: {}",
                errors[0]
            );
            assert!(!run.stderr.contains("replayed"), "{cmd:?}: refused first");
        }
    }
}

/// 12 frames of one conversation, a second apart from `base_ns`, with frame `odd` (if any)
/// stamped at `odd_ns` instead.
fn timed_capture(base_ns: u64, odd: Option<(usize, u64)>, offset_s: Option<i64>) -> Vec<u8> {
    let conv = TcpConn::new([10, 0, 0, 1], 40000, [10, 0, 0, 2], 443);
    let records: Vec<Record> = (0..12)
        .map(|i| {
            let mut ts = base_ns + i as u64 * 1_000_000_000;
            if let Some((at, odd_ns)) = odd {
                if at == i {
                    ts = odd_ns;
                }
            }
            let flags = if i == 0 { TCP_SYN } else { TCP_PSH | TCP_ACK };
            Record::new(ts, conv.frame(i % 2 == 0, flags, b"data"))
        })
        .collect();
    pcap::pcapng_with_offset(LINKTYPE_ETHERNET, offset_s, &records)
}

fn only_flow(run: &agent::Run) -> serde_json::Value {
    let flows = run.stdout_flows();
    assert_eq!(flows.len(), 1, "{run:?}");
    flows[0].clone()
}

/// One frame dated 2106 (and, separately, one dated 1970) in a 2020 capture: counted, the
/// flow keeps its real 11 s; a pcapng interface with `if_tsoffset` puts its frames at the
/// offset's time.
#[test]
fn a_frame_far_from_its_neighbours_does_not_move_the_clock() {
    const Y2020: u64 = 1_600_000_000_000_000_000;
    const Y2106: u64 = 4_290_000_000_000_000_000;
    let dir = TempDir::new("hard-time");
    for (name, odd_ns) in [("2106", Y2106), ("1970", 5_000_000_000)] {
        let cap = dir.write(
            &format!("{name}.pcapng"),
            &timed_capture(Y2020, Some((6, odd_ns)), None),
        );
        let run = agent::run(&[
            "replay",
            "--no-progress",
            "--flows",
            "-",
            cap.to_str().expect("utf-8"),
        ]);
        assert!(run.success, "{name}: {run:?}");
        let flow = only_flow(&run);
        assert_eq!(
            flow["event"]["duration"], 11_000_000_000u64,
            "{name}: {flow}"
        );
        assert!(
            run.stderr
                .contains("1 frames stamped more than a day away from their neighbours"),
            "{name}: {}",
            run.stderr
        );
        assert_eq!(
            flow["network"]["packets"], 12,
            "{name}: the frame still counts: {flow}"
        );
    }
    // A real jump (two captures of different days, merged) is followed by frames near the
    // new time: not an outlier.
    let day1 = dir.write("day1.pcapng", &timed_capture(Y2020, None, None));
    let day3 = dir.write(
        "day3.pcapng",
        &timed_capture(Y2020 + 2 * 86_400 * 1_000_000_000, None, None),
    );
    let run = agent::run(&[
        "replay",
        "--no-progress",
        day1.to_str().expect("utf-8"),
        day3.to_str().expect("utf-8"),
    ]);
    assert!(
        run.success && !run.stderr.contains("stamped more than"),
        "{run:?}"
    );

    let offset = dir.write(
        "offset.pcapng",
        &timed_capture(0, None, Some(1_600_000_000)),
    );
    let run = agent::run(&[
        "replay",
        "--no-progress",
        "--flows",
        "-",
        offset.to_str().expect("utf-8"),
    ]);
    assert!(run.success, "{run:?}");
    let flow = only_flow(&run);
    assert_eq!(
        flow["event"]["start"], "2020-09-13T12:26:40.000000Z",
        "if_tsoffset honoured: {flow}"
    );
}

/// `--engine kernel` on a capture holding a 100 KB frame (as GRO/TSO captures do) between
/// ordinary ones: the big frame is counted under its own reason, the replay goes on to the
/// end with its summary, and the other frames are counted by the kernel. Needs root.
#[test]
fn kernel_replay_counts_frames_too_large_for_the_test_run() {
    sensor_tests::kernel::require_bpf();
    let conv = TcpConn::new([10, 0, 0, 1], 40000, [10, 0, 0, 2], 443);
    let mut records: Vec<Record> = (0..6)
        .map(|i| {
            let flags = if i == 0 { TCP_SYN } else { TCP_PSH | TCP_ACK };
            let ts = 1_600_000_000_000_000_000 + i as u64 * 1_000_000_000;
            Record::new(ts, conv.frame(i % 2 == 0, flags, b"data"))
        })
        .collect();
    let big = conv.frame(true, TCP_PSH | TCP_ACK, &vec![b'g'; 100 * 1024]);
    records.insert(3, Record::new(1_600_000_002_500_000_000, big));
    let dir = TempDir::new("hard-bigframe");
    let cap = dir.write("gro.pcapng", &pcap::pcapng(LINKTYPE_ETHERNET, &records));
    let run = agent::replay("kernel", Some(std::path::Path::new("-")), &[&cap]);
    assert!(run.success, "{run:?}");
    assert!(
        run.stderr
            .contains("replayed 7 frames with the kernel engine")
            && run
                .stderr
                .contains("1 frames too large for the kernel test run"),
        "{}",
        run.stderr
    );
    let flows = run.stdout_flows();
    assert_eq!(flows.len(), 1, "{run:?}");
    assert_eq!(
        flows[0]["network"]["packets"], 6,
        "the other frames counted: {}",
        flows[0]
    );
}

/// `when_full = "block"` with the receiver down during a replay: the producer waits at most
/// `spool.drain_timeout` for room, then the replay ends with one error line and the sink and
/// spool counters, instead of hanging (the watchdog fails the test if it hangs).
#[test]
fn a_blocked_spool_honours_the_drain_timeout() {
    let dir = TempDir::new("hard-block");
    // A port with nobody listening: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let cap = dir.write(
        "mining.pcap",
        &pcap::pcap(
            LINKTYPE_ETHERNET,
            &sensor_tests::captures::stratum_sessions(100),
        ),
    );
    let config = dir.write(
        "sensor.toml",
        format!(
            "[spool]\ndir = {:?}\nmax_bytes = 65536\nsegment_bytes = 16384\nwhen_full = \"block\"\ndrain_timeout = \"2s\"\n\n[[sinks]]\nkind = \"syslog\"\nname = \"down\"\naddress = \"tcp://127.0.0.1:{port}\"\nformat = \"json\"\n",
            dir.path().join("spool").display().to_string()
        )
        .as_bytes(),
    );
    let run = run_with_watchdog(&[
        "replay",
        "--no-progress",
        "--config",
        config.to_str().expect("utf-8"),
        cap.to_str().expect("utf-8"),
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{run:?}");
    assert!(
        errors[0].contains("stayed full") && errors[0].contains("drain_timeout"),
        "{}",
        errors[0]
    );
    assert!(run.stderr.contains("sink down: 0 sent"), "{}", run.stderr);
    assert!(
        run.stderr.lines().any(|l| l.starts_with("spool: ")),
        "{}",
        run.stderr
    );
}

/// A syslog sink on a TCP port nobody listens on (bound, then closed), in front of a small
/// `block` spool under `dir`, waiting `drain_timeout` at most.
fn down_sink_config(dir: &TempDir, when_full: &str, drain_timeout: &str) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    dir.write(
        "down.toml",
        format!(
            "[spool]\ndir = {:?}\nmax_bytes = 65536\nsegment_bytes = 16384\nwhen_full = {when_full:?}\ndrain_timeout = {drain_timeout:?}\n\n[[sinks]]\nkind = \"syslog\"\nname = \"siem\"\naddress = \"tcp://127.0.0.1:{port}\"\nformat = \"json\"\n",
            dir.path().join("spool").display().to_string()
        )
        .as_bytes(),
    )
}

/// SIGTERM while a replay waits for room in a full `block` spool (the receiver is down and
/// `drain_timeout` is far away): the replay ends at once with its counters, the sink's and the
/// spool's, and status 130, instead of waiting or dying silently.
#[test]
fn a_signal_ends_a_blocked_replay_with_its_counters() {
    let dir = TempDir::new("hard-sigterm");
    let cap = dir.write(
        "mining.pcap",
        &pcap::pcap(
            LINKTYPE_ETHERNET,
            &sensor_tests::captures::stratum_sessions(400),
        ),
    );
    let config = down_sink_config(&dir, "block", "10m");
    let mut child = agent::command()
        .env("RUST_LOG", "warn")
        .args(["replay", "--no-progress", "--config"])
        .arg(&config)
        .arg(&cap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let pid = child.id();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let stderr = stderr.clone();
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = stderr.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    let blocked = sensor_tests::wait::wait_until(
        std::time::Duration::from_secs(60),
        "the replay to wait on its full spool",
        || {
            stderr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains("is full (when_full = \"block\")")
        },
    );
    // SAFETY: kill(2) on the pid of the child this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(s) => s.expect("wait for the agent"),
            Err(_) => {
                // SAFETY: as above; the agent ignored SIGTERM, which is the failure.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("the agent did not end within 30 s of SIGTERM");
            }
        }
    };
    let _ = reader.join();
    let stderr = stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
    blocked.unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("replay interrupted (Ctrl-C or SIGTERM) after"),
        "{stderr}"
    );
    assert!(stderr.contains("sink siem: 0 sent"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("spool: ") && l.contains("appends waited for room")),
        "{stderr}"
    );
}

/// Alarms left in the spool by a replay whose receiver was down, with the spool's first
/// segment then renamed (by hand, or a restore from a backup under another name): the next
/// run reads it by its records' own sequence numbers and delivers every one of them, instead
/// of cutting its records as damage.
#[test]
fn a_misnamed_spool_segment_is_read_by_its_records_sequence_numbers() {
    let dir = TempDir::new("hard-misnamed");
    let cap = dir.write(
        "mining.pcap",
        &pcap::pcap(
            LINKTYPE_ETHERNET,
            &sensor_tests::captures::stratum_sessions(60),
        ),
    );
    let config = down_sink_config(&dir, "drop_newest", "1s");
    let first = run_with_watchdog(&[
        "replay",
        "--no-progress",
        "--config",
        config.to_str().expect("utf-8"),
        cap.to_str().expect("utf-8"),
    ]);
    assert!(first.stderr.contains("sink siem: 0 sent"), "{first:?}");
    let spool = dir.path().join("spool");
    let mut segments: Vec<String> = fs::read_dir(&spool)
        .expect("spool dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "{segments:?}");
    let pending_of = |stderr: &str| -> Option<u64> {
        let line = stderr.lines().find(|l| l.starts_with("sink siem: "))?;
        let field = line.split(", ").find(|p| p.ends_with(" pending"))?;
        field.trim_end_matches(" pending").parse().ok()
    };
    let spooled =
        pending_of(&first.stderr).unwrap_or_else(|| panic!("no pending count: {}", first.stderr));
    assert!(spooled > 10, "{}", first.stderr);
    fs::rename(
        spool.join(&segments[0]),
        spool.join(format!("{:020}.seg", 900_000)),
    )
    .expect("rename a segment");

    // The same sink name (its cursor), now a file the test reads; a capture without alarms.
    let out = dir.path().join("delivered.json");
    let config2 = dir.write(
        "file.toml",
        format!(
            "[spool]\ndir = {:?}\nmax_bytes = 65536\nsegment_bytes = 16384\ndrain_timeout = \"20s\"\n\n[[sinks]]\nkind = \"file\"\nname = \"siem\"\npath = {:?}\nformat = \"json\"\n",
            spool.display().to_string(),
            out.display().to_string()
        )
        .as_bytes(),
    );
    let quiet = dir.write("quiet.pcapng", &capture(3));
    let second = agent::command()
        .env("RUST_LOG", "warn")
        .args(["replay", "--no-progress", "--config"])
        .arg(&config2)
        .arg(&quiet)
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(
        stderr.contains("its records' own sequence numbers are used"),
        "{stderr}"
    );
    assert!(!stderr.contains("damaged"), "{stderr}");
    let delivered = fs::read_to_string(&out).expect("delivered alarms");
    assert_eq!(delivered.lines().count() as u64, spooled, "{stderr}");
    assert!(
        stderr.contains(&format!("sink siem: {spooled} sent")),
        "{stderr}"
    );
}
