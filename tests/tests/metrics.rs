//! The metrics and health endpoint of `run`, and running with least privilege, on live
//! traffic: the agent attached in a network namespace serves `/metrics`, `/healthz` and
//! `/readyz` on that namespace's loopback (the default `127.0.0.1:9464`, so parallel tests
//! never share a port); `curl` from inside the namespace fetches them and Debian's `promtool`
//! parses and lints what `/metrics` returns. Run as `nobody`, the agent keeps polling with
//! every capability dropped, in every thread.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::UdpSocket,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use sensor_common::counter;
use sensor_tests::{
    agent::{agent_bin, TempDir},
    kernel::require_bpf,
    netns::NetnsPair,
    wait::wait_until,
};

const ENDPOINT: &str = "http://127.0.0.1:9464";
const SINK: &str = "alarms-file";

/// `curl` inside namespace `ns`: (HTTP status, body). Status 0 when nothing answered.
fn curl(ns: &str, path: &str) -> (u16, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("{ENDPOINT}{path}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl (Debian package curl): {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Samples of the text format: family name (as in `# TYPE`) -> (type, label sets).
fn families(text: &str) -> BTreeMap<String, (String, Vec<BTreeMap<String, String>>)> {
    let mut out: BTreeMap<String, (String, Vec<BTreeMap<String, String>>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            out.insert(name.to_string(), (kind.to_string(), Vec::new()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, _value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels: BTreeMap<String, String> = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once("=\"").expect("label");
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect();
        let family = out
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .cloned()
            .unwrap_or_else(|| panic!("sample {name} comes before its TYPE line"));
        out.get_mut(&family).expect("family").1.push(labels);
    }
    out
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A running agent in namespace `a` of `pair`, with a file sink and its spool in `dir`.
fn start_agent(pair: &mut NetnsPair, dir: &Path, extra: &[&str]) -> (u32, std::path::PathBuf) {
    let config = dir.join("sensor.toml");
    fs::write(
        &config,
        format!(
            "[[sinks]]\nkind = \"file\"\nname = \"{SINK}\"\npath = \"{}\"\n",
            dir.join("alarms.json").display()
        ),
    )
    .expect("write config");
    let log = dir.join("agent.log");
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
        // Nothing pinned: the datapath goes with the agent, no bpffs leftovers.
        "sensor.pin_path=".to_string(),
        format!("state.path={}", dir.join("state.bin").display()),
        format!("spool.dir={}", dir.join("spool").display()),
    ] {
        args.push("--set".into());
        args.push(set);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let a = pair.a.clone();
    let pid = pair
        .spawn_net_only(
            &a,
            &agent_bin(),
            &args,
            Stdio::null(),
            Stdio::from(fs::File::create(&log).expect("agent log")),
        )
        .unwrap_or_else(|e| panic!("cannot start the agent: {e}"));
    (pid, log)
}

/// UDP from a to b (b answers with ICMP port unreachable): packets both ways on the veth.
fn traffic(pair: &NetnsPair) {
    let target = format!("{}:9", pair.addr_b_str());
    NetnsPair::in_ns(&pair.a, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..5 {
            let _ = s.send_to(b"ping", &target);
        }
    })
    .join()
    .expect("traffic thread")
    .expect("in namespace a");
}

fn wait_ready(pair: &NetnsPair, log: &Path) {
    let mut seen = Vec::new();
    let ready = wait_until(Duration::from_secs(60), "/readyz to answer 200", || {
        let (code, body) = curl(&pair.a, "/readyz");
        if code != 0 {
            seen.push((code, body.trim().to_string()));
        }
        code == 200
    });
    if let Err(e) = ready {
        panic!(
            "{e}; answers: {seen:?}; agent log:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
    }
    // Before the first poll it said why it was not ready, never something else.
    for (code, body) in &seen {
        assert!(
            *code == 200 || (*code == 503 && body.starts_with("not ready:")),
            "/readyz answered {code} {body:?}"
        );
    }
    println!("/readyz answers until ready: {seen:?}");
}

fn promtool_check(text: &str) {
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = promtool.unwrap_or_else(|e| {
        panic!("promtool is missing ({e}): it comes with Debian's prometheus package; `cargo xtask setup` installs it")
    });
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {} {said}\n{text}",
        out.status
    );
}

#[test]
fn kernel_metrics_endpoint_serves_every_family_and_readyz_turns_ready() {
    require_bpf();
    let dir = TempDir::new("metrics");
    let mut pair =
        NetnsPair::create("met").unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
    let (pid, log) = start_agent(&mut pair, dir.path(), &[]);
    wait_ready(&pair, &log);
    let (code, body) = curl(&pair.a, "/healthz");
    assert_eq!((code, body.as_str()), (200, "alive\n"));
    assert_eq!(curl(&pair.a, "/nothing").0, 404);

    traffic(&pair);
    let mut text = String::new();
    wait_until(
        Duration::from_secs(30),
        "packets counted and polled twice",
        || {
            text = curl(&pair.a, "/metrics").1;
            value(&text, "sensor_packets_attributed_total").is_some_and(|v| v > 0.0)
                && value(&text, "sensor_poll_duration_seconds_count").is_some_and(|v| v >= 2.0)
        },
    )
    .unwrap_or_else(|e| panic!("{e}:\n{text}"));
    println!("{text}");
    promtool_check(&text);

    let fams = families(&text);
    let labels_of = |family: &str, label: &str| -> BTreeSet<String> {
        let (_, samples) = fams
            .get(family)
            .unwrap_or_else(|| panic!("family {family} is missing:\n{text}"));
        assert!(!samples.is_empty(), "family {family} has no samples");
        samples
            .iter()
            .filter_map(|l| l.get(label).cloned())
            .collect()
    };
    // (family, type) for every family the issue names.
    for (family, kind) in [
        ("sensor_up", "gauge"),
        ("sensor_flows", "gauge"),
        ("sensor_conversations", "gauge"),
        ("sensor_packets_attributed_total", "counter"),
        ("sensor_packets_unattributed_total", "counter"),
        ("sensor_kernel_flows", "gauge"),
        ("sensor_kernel_flow_map_fill_ratio", "gauge"),
        ("sensor_ring_events_total", "counter"),
        ("sensor_ring_drops_total", "counter"),
        ("sensor_ring_backlog_drops_total", "counter"),
        ("sensor_watched_flows", "gauge"),
        ("sensor_alarms_total", "counter"),
        ("sensor_alarms_open", "gauge"),
        ("sensor_sink_sent_total", "counter"),
        ("sensor_sink_errors_total", "counter"),
        ("sensor_sink_retries_total", "counter"),
        ("sensor_sink_resent_total", "counter"),
        ("sensor_sink_pending", "gauge"),
        ("sensor_sink_oldest_undelivered_age_seconds", "gauge"),
        ("sensor_spool_bytes", "gauge"),
        ("sensor_poll_duration_seconds", "histogram"),
        ("sensor_flows_refused_total", "counter"),
        ("sensor_conversations_refused_total", "counter"),
        ("sensor_datapath_events_total", "counter"),
    ] {
        let (got, samples) = fams
            .get(family)
            .unwrap_or_else(|| panic!("family {family} is missing:\n{text}"));
        assert_eq!(got, kind, "type of {family}");
        assert!(!samples.is_empty(), "family {family} has no samples");
    }
    let unattributed = counter::UNATTRIBUTED_REASONS as usize;
    let reasons: BTreeSet<String> = counter::NAMES[..unattributed]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        labels_of("sensor_packets_unattributed_total", "reason"),
        reasons
    );
    let events: BTreeSet<String> = counter::NAMES[unattributed..]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(labels_of("sensor_datapath_events_total", "event"), events);
    let rings: BTreeSet<String> = ["payloads", "traces"].map(String::from).into();
    assert_eq!(labels_of("sensor_ring_events_total", "ring"), rings);
    assert_eq!(labels_of("sensor_ring_drops_total", "ring"), rings);
    let actions: BTreeSet<String> = ["opened", "updated", "closed"].map(String::from).into();
    assert_eq!(labels_of("sensor_alarms_total", "action"), actions);
    for rule in [
        "long_flow",
        "quiet_long_flow",
        "mining_protocol",
        "periodic_flow",
    ] {
        assert!(
            labels_of("sensor_alarms_total", "rule").contains(rule),
            "no sensor_alarms_total for {rule}"
        );
    }
    for family in [
        "sensor_sink_sent_total",
        "sensor_sink_pending",
        "sensor_sink_oldest_undelivered_age_seconds",
    ] {
        assert_eq!(
            labels_of(family, "sink"),
            BTreeSet::from([SINK.to_string()])
        );
    }
    // The kernel saw the traffic: flows in the map, its fill ratio consistent with them.
    let kernel = value(&text, "sensor_kernel_flows").expect("kernel flows");
    let ratio = value(&text, "sensor_kernel_flow_map_fill_ratio").expect("ratio");
    let capacity = value(&text, "sensor_kernel_flow_map_capacity").expect("capacity");
    assert!(kernel >= 1.0, "no kernel flows after traffic:\n{text}");
    assert!(
        (ratio - kernel / capacity).abs() < 1e-9,
        "{ratio} vs {kernel}/{capacity}"
    );

    let status = pair.stop(pid).expect("agent exit");
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "agent exited {status}:\n{log_text}");
    assert!(
        log_text.contains("metrics on http://127.0.0.1:9464/metrics"),
        "{log_text}"
    );
}

/// `Cap*` of one /proc status file, as bit masks.
fn caps_of(status: &str) -> BTreeMap<String, u64> {
    status
        .lines()
        .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs"))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim();
            let n = if k == "NoNewPrivs" {
                v.parse().ok()?
            } else {
                u64::from_str_radix(v, 16).ok()?
            };
            Some((k.to_string(), n))
        })
        .collect()
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

#[test]
fn kernel_run_as_nobody_drops_every_capability_and_still_polls() {
    require_bpf();
    let dir = TempDir::new("least-priv");
    // SAFETY: getpwnam on a constant name; the fields are read at once.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(!pw.is_null(), "the test needs the user nobody");
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    // The agent's own files (state, spool, sink) are written as nobody.
    let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: chown on a path we created.
    assert_eq!(unsafe { libc::chown(path.as_ptr(), uid, gid) }, 0, "chown");
    let mut pair =
        NetnsPair::create("lpv").unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
    // Process attribution keeps CAP_SYS_PTRACE to read other users' executables
    // (`sensor.process_executables`); this test is about what polling needs, so it is off.
    let (pid, log) = start_agent(
        &mut pair,
        dir.path(),
        &[
            "--user",
            "nobody",
            "--set",
            "sensor.process_executables=false",
        ],
    );
    wait_ready(&pair, &log);
    traffic(&pair);
    let mut text = String::new();
    wait_until(Duration::from_secs(30), "polls after the drop", || {
        text = curl(&pair.a, "/metrics").1;
        value(&text, "sensor_packets_attributed_total").is_some_and(|v| v > 0.0)
            && value(&text, "sensor_poll_duration_seconds_count").is_some_and(|v| v >= 2.0)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}:\n{text}\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    });

    // Every thread: the user's ids, no capability but what the agent said it kept (CAP_BPF on
    // kernels before 6.5, CAP_NET_ADMIN where detaching goes through netlink), and no way
    // back (bounding set, no_new_privs).
    let said = fs::read_to_string(&log).unwrap_or_default();
    let kept_line = said
        .lines()
        .find_map(|l| {
            l.split_once(&format!(
                "running as nobody (uid {uid}) with capabilities: "
            ))
        })
        .map(|(_, k)| k.to_string())
        .unwrap_or_else(|| panic!("the agent did not say what it kept:\n{said}"));
    let mut allowed = 0u64;
    for cap in kept_line.split(", ").filter(|c| *c != "none") {
        allowed |= match cap {
            "CAP_BPF" => 1 << 39,
            "CAP_NET_ADMIN" => 1 << 12,
            other => panic!("the agent kept {other}, which polling never needs"),
        };
    }
    if std::path::Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists()
        && kernel_at_least(6, 6)
    {
        assert_eq!(kept_line, "none", "Linux 6.6+ polls without capabilities");
    }
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("threads of the agent");
    let mut threads = 0;
    for task in tasks {
        let status = fs::read_to_string(task.expect("task").path().join("status")).expect("status");
        threads += 1;
        let ids = |key: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .expect(key)
                .split_whitespace()
                .map(|n| n.parse().expect("id"))
                .collect()
        };
        assert_eq!(ids("Uid:"), vec![uid; 4], "{status}");
        assert_eq!(ids("Gid:"), vec![gid; 4], "{status}");
        let caps = caps_of(&status);
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
            let v = caps[set];
            assert_eq!(v & !allowed, 0, "{set} = {v:016x} in\n{status}");
        }
        assert_eq!(caps["NoNewPrivs"], 1, "{status}");
        println!("thread caps: {caps:x?}");
    }
    assert!(threads > 1, "the runtime's threads were checked too");
    let status = pair.stop(pid).expect("agent exit");
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    println!("{log_text}");
    assert!(status.success(), "agent exited {status}:\n{log_text}");
    assert!(
        log_text.contains(&format!("running as nobody (uid {uid}) with capabilities:")),
        "{log_text}"
    );
    assert!(log_text.contains("state file"), "{log_text}");
    assert!(!log_text.contains("not saved"), "{log_text}");
}

#[test]
fn a_metrics_address_beyond_loopback_must_be_allowed_explicitly() {
    let out = sensor_tests::agent::run(&["validate", "--set", "metrics.listen=0.0.0.0:9464"]);
    assert!(!out.success, "{out:?}");
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{out:?}");
    assert!(
        errors[0].contains("metrics.listen") && errors[0].contains("allow_remote"),
        "{}",
        errors[0]
    );
    let out = sensor_tests::agent::run(&[
        "validate",
        "--set",
        "metrics.listen=0.0.0.0:9464",
        "--set",
        "metrics.allow_remote=true",
    ]);
    assert!(out.success, "{out:?}");
    let out = sensor_tests::agent::run(&["validate", "--set", "metrics.listen=nowhere"]);
    assert!(
        !out.success && out.error_lines()[0].contains("HOST:PORT"),
        "{out:?}"
    );
}

#[test]
fn run_refuses_an_unknown_user_and_detaching_as_one_before_attaching() {
    let dir = TempDir::new("user-args");
    let state = format!("state.path={}", dir.path().join("state.bin").display());
    for (args, needle) in [
        (
            vec!["--user", "no-such-user-sensor"],
            "user \"no-such-user-sensor\" does not exist",
        ),
        (
            vec!["--user", "nobody", "--detach-on-exit"],
            "--detach-on-exit removes the pinned datapath",
        ),
    ] {
        let mut all = vec!["run", "--iface", "lo", "--set", &state];
        all.extend(args);
        let out = sensor_tests::agent::run(&all);
        assert!(!out.success, "{all:?}: {out:?}");
        let errors = out.error_lines();
        assert!(
            errors.len() == 1 && errors[0].contains(needle),
            "{all:?}: {out:?}"
        );
        assert!(
            !out.stderr.contains("watching"),
            "{all:?} attached: {out:?}"
        );
    }
}
