//! What a slip, a poisoned feed or a full disk must never do (issue 17): each test builds its
//! own hostile input (an output path that is an input, `/dev/full`, a `/0` feed entry, a FIFO
//! in the feed directory, hostile Unicode) and checks the agent's answer: one clear line, a
//! defined exit status, and nothing already there destroyed.

use std::{fs, os::unix::fs::symlink};

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
