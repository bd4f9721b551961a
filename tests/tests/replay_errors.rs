//! `sensor-agent replay` on damaged and wrong input: a missing file, captures cut in the middle
//! of a record or block, an unsupported link type, files that are no capture at all, and good
//! and bad files in one command.
//!
//! The contract (sensor-agent/src/replay.rs, main.rs): the exit status is non-zero, stderr has
//! exactly one `error: <file>: <problem>` line per bad file, and the flows read before the
//! damage are still written (here to stdout with `--flows -`). Every case runs with both
//! engines; the kernel ones are named `kernel_*` and need root.

use std::{collections::BTreeMap, path::Path};

use sensor_tests::{
    agent::{self, Run, TempDir},
    frames::{self, Frag, TCP_ACK, TCP_PSH, TCP_SYN},
    kernel::require_bpf,
    pcap::{self, Record},
};
use serde_json::Value;

/// One frame of the test traffic and the conversation it belongs to.
struct Frame {
    data: Vec<u8>,
    /// (transport, client, server): the flow record's network.transport, source and destination.
    conv: (&'static str, &'static str, &'static str),
    from_client: bool,
}

/// (transport, client, server) -> [client packets, server packets, client bytes, server bytes].
type Counts = BTreeMap<(String, String, String), [u64; 4]>;

/// Two interleaved conversations, a TCP session and a UDP exchange, `n` frames in all;
/// `variant` shifts the addresses so captures can hold different flows.
fn traffic(variant: u8, n: usize) -> Vec<Frame> {
    let (tcp_conv, udp_conv) = match variant {
        0 => (
            ("tcp", "10.0.0.1:40000", "10.0.0.2:80"),
            ("udp", "10.0.0.1:5000", "10.0.0.3:53"),
        ),
        _ => (
            ("tcp", "10.0.1.1:40001", "10.0.1.2:443"),
            ("udp", "10.0.1.1:5001", "10.0.1.3:123"),
        ),
    };
    let parse = |s: &str| -> ([u8; 4], u16) {
        let a: std::net::SocketAddrV4 = s.parse().expect("test address");
        (a.ip().octets(), a.port())
    };
    let mut out = Vec::new();
    for i in 0..n {
        let (conv, from_client) = if i % 3 == 2 {
            (udp_conv, i % 2 == 0)
        } else {
            (tcp_conv, i % 3 == 0)
        };
        let ((cip, cport), (sip, sport)) = (parse(conv.1), parse(conv.2));
        let ((src, sp), (dst, dp)) = if from_client {
            ((cip, cport), (sip, sport))
        } else {
            ((sip, sport), (cip, cport))
        };
        let body = vec![b'x'; 10 + i * 7];
        let (proto, l4) = if conv.0 == "tcp" {
            let flags = if i == 0 { TCP_SYN } else { TCP_PSH | TCP_ACK };
            (6, frames::tcp(sp, dp, flags, &body))
        } else {
            (17, frames::udp(sp, dp, &body))
        };
        let data = frames::v4_frame(&[], src, dst, proto, &[], Frag::default(), &l4).frame;
        out.push(Frame {
            data,
            conv,
            from_client,
        });
    }
    out
}

fn counts(frames: &[Frame]) -> Counts {
    let mut c = Counts::new();
    for f in frames {
        let e = c
            .entry((f.conv.0.into(), f.conv.1.into(), f.conv.2.into()))
            .or_default();
        let i = if f.from_client { 0 } else { 1 };
        e[i] += 1;
        e[2 + i] += f.data.len() as u64;
    }
    c
}

fn flow_counts(flows: &[Value]) -> Counts {
    let mut c = Counts::new();
    for f in flows {
        let ep = |side: &str| {
            format!(
                "{}:{}",
                f[side]["ip"].as_str().unwrap_or("?"),
                f[side]["port"]
            )
        };
        let n = |side: &str, what: &str| f[side][what].as_u64().unwrap_or(u64::MAX);
        let key = (
            f["network"]["transport"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
            ep("source"),
            ep("destination"),
        );
        let v = [
            n("source", "packets"),
            n("destination", "packets"),
            n("source", "bytes"),
            n("destination", "bytes"),
        ];
        assert!(
            c.insert(key, v).is_none(),
            "two flow records for one flow: {f}"
        );
    }
    c
}

fn recs(frames: &[Frame]) -> Vec<Record> {
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Record::new(
                1_700_000_000_000_000_000 + i as u64 * 1_000_000,
                f.data.clone(),
            )
        })
        .collect()
}

/// Byte offset where record `i` (0-based) of a classic pcap written by `pcap::pcap` starts.
fn pcap_record_start(frames: &[Frame], i: usize) -> usize {
    24 + frames[..i].iter().map(|f| 16 + f.data.len()).sum::<usize>()
}

/// Start and length of every block in a little-endian pcapng file.
fn pcapng_blocks(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        out.push((at, len));
        at += len;
    }
    out
}

/// Checks the common contract: failure, one error line per bad file naming it and its
/// problem, no error line for a good file, and the summary counting `frames` frames.
fn check_errors(run: &Run, bad: &[(&Path, &str)], good: &[&Path], frames: usize) {
    assert!(
        !run.success && run.code.is_some_and(|c| c != 0),
        "replay of bad input must exit non-zero; got {:?}\nstderr:\n{}",
        run.code,
        run.stderr
    );
    let errors = run.error_lines();
    assert_eq!(
        errors.len(),
        bad.len(),
        "expected exactly one `error:` line per bad file ({}), stderr:\n{}",
        bad.len(),
        run.stderr
    );
    for (path, problem) in bad {
        let p = path.display().to_string();
        let mine: Vec<&&str> = errors.iter().filter(|l| l.contains(&p)).collect();
        assert_eq!(
            mine.len(),
            1,
            "expected one error line naming {p}, stderr:\n{}",
            run.stderr
        );
        assert!(
            mine[0].starts_with(&format!("error: {p}: ")),
            "error line should be `error: <file>: <problem>`: {}",
            mine[0]
        );
        assert!(
            mine[0].contains(problem),
            "error line for {p} should say {problem:?}: {}",
            mine[0]
        );
    }
    for path in good {
        let p = path.display().to_string();
        assert!(
            !errors.iter().any(|l| l.contains(&format!("error: {p}:"))),
            "a good capture {p} must not be reported as an error, stderr:\n{}",
            run.stderr
        );
    }
    let summary = format!("replayed {frames} frames");
    assert!(
        run.stderr.lines().any(|l| l.starts_with(&summary)),
        "the summary should count the {frames} frames read before the damage, stderr:\n{}",
        run.stderr
    );
}

fn check_flows(run: &Run, expected: &Counts) {
    let got = flow_counts(&run.stdout_flows());
    assert_eq!(
        &got, expected,
        "flows read before the damage (packets and bytes: client, server, client, server)\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Cases, each run with both engines.

fn missing_file(engine: &str) {
    let dir = TempDir::new("errors-missing");
    let missing = dir.path().join("does-not-exist.pcap");
    let run = agent::replay(engine, Some(Path::new("-")), &[&missing]);
    check_errors(&run, &[(&missing, "No such file")], &[], 0);
    check_flows(&run, &Counts::new());
}

fn truncated_pcap_mid_record(engine: &str) {
    let dir = TempDir::new("errors-pcap-record");
    let frames = traffic(0, 12);
    let bytes = pcap::pcap(pcap::LINKTYPE_ETHERNET, &recs(&frames));
    // Cut inside the data of record 9 (0-based 8): records 1-8 are whole.
    let cut = pcap_record_start(&frames, 8) + 16 + frames[8].data.len() / 2;
    let path = dir.write("cut-record.pcap", &bytes[..cut]);
    let run = agent::replay(engine, Some(Path::new("-")), &[&path]);
    check_errors(&run, &[(&path, "truncated")], &[], 8);
    assert!(
        run.error_lines()[0].contains("record 9"),
        "the error should name record 9: {}",
        run.stderr
    );
    check_flows(&run, &counts(&frames[..8]));
}

fn truncated_pcap_mid_record_header(engine: &str) {
    let dir = TempDir::new("errors-pcap-header");
    let frames = traffic(0, 12);
    let bytes = pcap::pcap(pcap::LINKTYPE_ETHERNET, &recs(&frames));
    // Cut 7 bytes into the 16-byte header of record 6.
    let cut = pcap_record_start(&frames, 5) + 7;
    let path = dir.write("cut-header.pcap", &bytes[..cut]);
    let run = agent::replay(engine, Some(Path::new("-")), &[&path]);
    check_errors(&run, &[(&path, "truncated")], &[], 5);
    check_flows(&run, &counts(&frames[..5]));
}

fn truncated_pcapng_mid_block(engine: &str) {
    let dir = TempDir::new("errors-pcapng");
    let frames = traffic(0, 12);
    let bytes = pcap::pcapng(pcap::LINKTYPE_ETHERNET, &recs(&frames));
    let blocks = pcapng_blocks(&bytes);
    assert_eq!(
        blocks.len(),
        2 + frames.len(),
        "SHB, IDB and one EPB per frame"
    );
    // Cut in the middle of the 8th enhanced packet block (blocks[0..2] are SHB and IDB).
    let (start, len) = blocks[2 + 7];
    let path = dir.write("cut-block.pcapng", &bytes[..start + len / 2]);
    let run = agent::replay(engine, Some(Path::new("-")), &[&path]);
    check_errors(&run, &[(&path, "truncated")], &[], 7);
    check_flows(&run, &counts(&frames[..7]));
}

fn unknown_link_type(engine: &str) {
    let dir = TempDir::new("errors-linktype");
    let frames = traffic(0, 6);
    let path = dir.write("linktype147.pcap", &pcap::pcap(147, &recs(&frames)));
    let run = agent::replay(engine, Some(Path::new("-")), &[&path]);
    check_errors(&run, &[(&path, "link type 147")], &[], 0);
    check_flows(&run, &Counts::new());
}

fn not_a_capture(engine: &str) {
    let dir = TempDir::new("errors-notcapture");
    let text = dir.write(
        "notes.txt",
        b"This is a text file, not a packet capture.\nIt has two lines.\n",
    );
    let empty = dir.write("empty.pcap", b"");
    let run = agent::replay(engine, Some(Path::new("-")), &[&text, &empty]);
    check_errors(
        &run,
        &[(&text, "not a pcap or pcapng file"), (&empty, "empty file")],
        &[],
        0,
    );
    check_flows(&run, &Counts::new());
}

fn valid_then_truncated(engine: &str) {
    let dir = TempDir::new("errors-valid-truncated");
    // The same two conversations in both files, so the second adds to the first's flows,
    // plus two conversations only in the truncated file.
    let first = traffic(0, 9);
    let mut second = traffic(0, 6);
    second.extend(traffic(1, 12));
    let good = dir.write(
        "good.pcap",
        &pcap::pcap(pcap::LINKTYPE_ETHERNET, &recs(&first)),
    );
    let bytes = pcap::pcapng(pcap::LINKTYPE_ETHERNET, &recs(&second));
    let blocks = pcapng_blocks(&bytes);
    // Cut inside EPB 11 (0-based 10): 10 of its frames count.
    let (start, len) = blocks[2 + 10];
    let bad = dir.write("bad.pcapng", &bytes[..start + len - 5]);
    let run = agent::replay(engine, Some(Path::new("-")), &[&good, &bad]);
    check_errors(&run, &[(&bad, "truncated")], &[&good], 9 + 10);
    let mut seen: Vec<Frame> = first;
    seen.extend(second.into_iter().take(10));
    check_flows(&run, &counts(&seen));
}

fn several_bad_files(engine: &str) {
    let dir = TempDir::new("errors-several");
    let frames = traffic(1, 10);
    let good = dir.write(
        "good.pcap",
        &pcap::pcap(pcap::LINKTYPE_ETHERNET, &recs(&frames)),
    );
    let missing = dir.path().join("missing.pcapng");
    let text = dir.write("readme.txt", b"no capture here, just some words\n");
    let linktype = dir.write("linktype147.pcap", &pcap::pcap(147, &recs(&frames)));
    let cut_bytes = pcap::pcap(pcap::LINKTYPE_ETHERNET, &recs(&frames));
    let cut = dir.write("cut.pcap", &cut_bytes[..cut_bytes.len() - 3]);
    let run = agent::replay(
        engine,
        Some(Path::new("-")),
        &[&missing, &good, &text, &linktype, &cut],
    );
    check_errors(
        &run,
        &[
            (&missing, "No such file"),
            (&text, "not a pcap or pcapng file"),
            (&linktype, "link type 147"),
            (&cut, "truncated"),
        ],
        &[&good],
        10 + 9,
    );
    // The good file whole, then the cut copy of it without its last frame.
    let mut seen = traffic(1, 10);
    seen.extend(traffic(1, 9));
    check_flows(&run, &counts(&seen));
}

macro_rules! both_engines {
    ($case:ident, $kernel:ident, $user:ident) => {
        #[test]
        fn $kernel() {
            require_bpf();
            $case("kernel");
        }

        #[test]
        fn $user() {
            $case("user");
        }
    };
}

both_engines!(
    missing_file,
    kernel_replay_missing_file,
    user_replay_missing_file
);
both_engines!(
    truncated_pcap_mid_record,
    kernel_replay_pcap_cut_mid_record,
    user_replay_pcap_cut_mid_record
);
both_engines!(
    truncated_pcap_mid_record_header,
    kernel_replay_pcap_cut_mid_record_header,
    user_replay_pcap_cut_mid_record_header
);
both_engines!(
    truncated_pcapng_mid_block,
    kernel_replay_pcapng_cut_mid_block,
    user_replay_pcapng_cut_mid_block
);
both_engines!(
    unknown_link_type,
    kernel_replay_unknown_link_type,
    user_replay_unknown_link_type
);
both_engines!(
    not_a_capture,
    kernel_replay_not_a_capture,
    user_replay_not_a_capture
);
both_engines!(
    valid_then_truncated,
    kernel_replay_valid_then_truncated,
    user_replay_valid_then_truncated
);
both_engines!(
    several_bad_files,
    kernel_replay_several_bad_files,
    user_replay_several_bad_files
);
