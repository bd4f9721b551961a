//! The agent's command line as a user meets it: the long-flow alarms on the real quiet
//! capture, help text for every subcommand and flag, one-line errors, configuration errors
//! that say where, and merged captures whose clocks jump.

use std::path::PathBuf;

use sensor_tests::{
    agent::{self, TempDir},
    frames::{self, Frag, TCP_ACK, TCP_SYN},
    kernel::require_bpf,
    pcap::{self, Record},
};
use serde_json::Value;

fn alarms(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alarm is not JSON ({e}): {l}")))
        .collect()
}

fn quiet_long_capture_alarms(engine: &str) {
    let cap = agent::repo_pcap("quiet-long-tcp.pcap");
    let run = agent::run(&[
        "replay".as_ref(),
        "--engine".as_ref(),
        engine.as_ref(),
        "--set".as_ref(),
        "detect.long_flow.after=1h".as_ref(),
        "--set".as_ref(),
        "detect.quiet_long_flow.after=1h".as_ref(),
        cap.as_os_str(),
    ]);
    assert!(run.success, "replay failed: {}", run.stderr);
    let all = alarms(&run.stdout);
    for rule in ["long_flow", "quiet_long_flow"] {
        let mine: Vec<&Value> = all.iter().filter(|a| a["rule"]["id"] == rule).collect();
        let ids: std::collections::BTreeSet<&str> = mine
            .iter()
            .filter_map(|a| a["event"]["id"].as_str())
            .collect();
        assert_eq!(ids.len(), 1, "{engine}: one {rule} alarm: {mine:?}");
        let last = mine.last().expect("an event");
        assert_eq!(
            (
                last["source"]["ip"].as_str(),
                last["destination"]["ip"].as_str(),
                last["destination"]["port"].as_u64()
            ),
            (Some("192.168.2.186"), Some("192.168.2.21"), Some(1234))
        );
        let secs = last["event"]["duration"].as_u64().expect("duration") as f64 / 1e9;
        assert!(
            (secs - 6806.0).abs() < 2.0,
            "{engine}: {rule} duration {secs} s, expected about 6806 s"
        );
        assert_eq!(last["event"]["kind"], "alert");
        assert_eq!(last["threat"]["technique"]["id"][0], "T1496");
    }
    let periodic = |all: &[Value]| -> Vec<Value> {
        all.iter()
            .filter(|a| a["rule"]["id"] == "periodic_flow")
            .cloned()
            .collect()
    };
    let beat = periodic(&all);
    assert_eq!(
        all.len(),
        all.iter()
            .filter(|a| a["rule"]["id"] == "long_flow" || a["rule"]["id"] == "quiet_long_flow")
            .count()
            + beat.len()
    );
    check_daytime_beat(engine, &beat);

    let run = agent::run(&[
        "replay".as_ref(),
        "--engine".as_ref(),
        engine.as_ref(),
        cap.as_os_str(),
    ]);
    assert!(run.success, "{}", run.stderr);
    let all = alarms(&run.stdout);
    let beat = periodic(&all);
    assert_eq!(
        all.len(),
        beat.len(),
        "{engine}: default thresholds (9h) raise no long or quiet alarm: {}",
        run.stdout
    );
    check_daytime_beat(engine, &beat);
}

/// The capture's server (a daytime-like service) sends its 32-byte time line every 30.00 s
/// for the whole 6806 s session: once the flow is watched (5 minutes in, averaging 5.5 B/s)
/// the user engine times it and raises `periodic_flow` inside the flow, server direction. The
/// kernel engine replays through BPF_PROG_TEST_RUN without a watch set and evaluates once at
/// the end, so it times no messages and raises none.
fn check_daytime_beat(engine: &str, beat: &[Value]) {
    if engine == "kernel" {
        assert!(beat.is_empty(), "kernel replay times no messages: {beat:?}");
        return;
    }
    let ids: std::collections::BTreeSet<&str> = beat
        .iter()
        .filter_map(|a| a["event"]["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "one periodic_flow alarm: {beat:?}");
    for a in beat {
        let ev = &a["sensor"]["evidence"];
        assert_eq!(ev["kind"], "in_flow", "{a}");
        assert_eq!(ev["direction"], "server", "{a}");
        let period = ev["period_s"].as_f64().expect("period");
        assert!((period - 30.0).abs() < 0.3, "period {period}: {a}");
        assert_eq!(ev["size_mode_fraction"], 1.0, "every line is 32 bytes: {a}");
    }
}

#[test]
fn user_replay_of_the_quiet_capture_raises_one_long_and_one_quiet_alarm_at_1h() {
    quiet_long_capture_alarms("user");
}

#[test]
fn kernel_replay_of_the_quiet_capture_raises_one_long_and_one_quiet_alarm_at_1h() {
    require_bpf();
    quiet_long_capture_alarms("kernel");
}

#[test]
fn every_subcommand_and_flag_has_help_text() {
    let top = agent::run(&["--help"]);
    assert!(top.success);
    for sub in ["run", "replay", "validate"] {
        assert!(top.stdout.contains(sub), "top-level help lists {sub}");
        assert!(agent::run(&[sub, "--help"]).success, "{sub} --help");
        // The short form puts each flag and its text on one line.
        let help = agent::run(&[sub, "-h"]);
        assert!(help.success, "{sub} -h: {}", help.stderr);
        let mut flags = 0;
        for line in help
            .stdout
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with('-'))
        {
            let text = line.split("  ").filter(|p| !p.trim().is_empty()).nth(1);
            assert!(
                text.is_some_and(|t| t.trim().len() > 8),
                "{sub}: flag without help text: {line:?}"
            );
            flags += 1;
        }
        assert!(flags >= 3, "{sub}: only {flags} flags documented");
    }
}

#[test]
fn errors_are_one_line_and_fail() {
    let dir = TempDir::new("cli");
    let bad_cfg = dir.write(
        "bad.toml",
        b"[detect.quiet_long_flow]\nafter = \"9h\"\nmax_bytes_per_second = 10\n",
    );
    let missing = dir.path().join("missing.pcap");
    // Never the default state file under /var/lib, nor one another test uses.
    let state_set = format!("state.path={}", dir.path().join("state.bin").display());
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (vec!["replay".into(), "--bogus".into()], "--bogus"),
        (
            vec![
                "replay".into(),
                "--set".into(),
                "detect.long_flow.after=soon".into(),
                missing.clone().into(),
            ],
            "detect.long_flow.after",
        ),
        (
            vec!["replay".into(), missing.clone().into()],
            "missing.pcap",
        ),
        (
            vec!["validate".into(), "--config".into(), bad_cfg.clone().into()],
            "max_bytes_per_second",
        ),
        (
            vec![
                "run".into(),
                "--iface".into(),
                "nosuchif0".into(),
                "--duration".into(),
                "1s".into(),
                "--set".into(),
                state_set.clone().into(),
            ],
            "nosuchif0",
        ),
    ];
    for (args, needle) in cases {
        let run = agent::run(&args);
        assert!(!run.success, "{args:?} must fail");
        let lines: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let error_lines: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error")).collect();
        assert_eq!(
            error_lines.len(),
            1,
            "{args:?}: one error line, got {:?}",
            run.stderr
        );
        assert!(
            error_lines[0].contains(needle),
            "{args:?}: the error names {needle:?}: {}",
            error_lines[0]
        );
    }
}

#[test]
fn config_errors_name_file_line_key_and_accepted_values() {
    let dir = TempDir::new("cfg");
    let cfg = dir.write(
        "sensor.toml",
        b"[flow]\ntcp_idle_timeout = \"15m\"\n\n[detect.long_flow]\nafter = \"nine hours\"\n",
    );
    let run = agent::run(&["validate".as_ref(), "--config".as_ref(), cfg.as_os_str()]);
    assert!(!run.success);
    let e = run.stderr.trim();
    assert!(
        e.contains(&format!("{}:5", cfg.display()))
            && e.contains("detect.long_flow.after")
            && e.contains("90s"),
        "{e}"
    );
    let cfg = dir.write("unknown.toml", b"[detect.long_flow]\nafterr = \"1h\"\n");
    let run = agent::run(&["validate".as_ref(), "--config".as_ref(), cfg.as_os_str()]);
    let e = run.stderr.trim();
    assert!(
        e.contains(":2") && e.contains("afterr") && e.contains("`after`"),
        "{e}"
    );
    let good = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sensor.example.toml");
    let run = agent::run(&["validate".as_ref(), "--config".as_ref(), good.as_os_str()]);
    assert!(
        run.success && run.stdout.contains("valid"),
        "{}",
        run.stderr
    );
}

#[test]
fn merged_captures_whose_clock_jumps_back_are_counted_whole() {
    let dir = TempDir::new("merge");
    let session = |base_s: u64, cport: u16| -> Vec<Record> {
        let a = [192, 0, 2, 10];
        let b = [198, 51, 100, 20];
        (0..20u64)
            .map(|i| {
                let (src, dst, sp, dp, flags) = if i % 2 == 0 {
                    (a, b, cport, 443, if i == 0 { TCP_SYN } else { TCP_ACK })
                } else {
                    (b, a, 443, cport, TCP_SYN | TCP_ACK)
                };
                let f = frames::v4_frame(
                    &[],
                    src,
                    dst,
                    6,
                    &[],
                    Frag::default(),
                    &frames::tcp(sp, dp, flags, b"x"),
                )
                .frame;
                Record::new((base_s + i * 5) * 1_000_000_000, f)
            })
            .collect()
    };
    let later = dir.write(
        "later.pcap",
        &pcap::pcap(pcap::LINKTYPE_ETHERNET, &session(2_000_000_000, 50000)),
    );
    let earlier = dir.write(
        "earlier.pcapng",
        &pcap::pcapng(pcap::LINKTYPE_ETHERNET, &session(1_000_000_000, 50001)),
    );
    let run = agent::run(&[
        "replay".as_ref(),
        "--flows".as_ref(),
        "-".as_ref(),
        later.as_os_str(),
        earlier.as_os_str(),
    ]);
    assert!(run.success, "{}", run.stderr);
    let flows = run.stdout_flows();
    assert_eq!(flows.len(), 2);
    assert!(
        flows.iter().all(|f| f["network"]["packets"] == 20),
        "{flows:?}"
    );
    assert!(
        run.stderr
            .contains("20 frames earlier than the replay clock"),
        "{}",
        run.stderr
    );
}
