//! The instructions one packet of a known flow executes in `sensor_xdp`, counted exactly by
//! `tools/bpf-insn-count.py` (an eBPF interpreter over the object the agent embeds), held
//! under a ceiling per frame kind.
//!
//! Why a count and not a time: timing a 60 ns path varies by +-8% here, and the regression
//! decapsulation brought (IPv4/TCP from 212 instructions to 278, about 10-20% slower) hid in
//! that noise for two rounds. A count is exact: a change that adds work to the per-packet
//! path fails here, and says by how much, whatever the machine's load. Times stay with
//! `cargo xtask bench datapath`.
//!
//! The ceilings are this commit's counts plus 5% (a compiler update moves a few). Before
//! decapsulation existed the plain kinds executed 212 (IPv4), 225 (IPv6) and 219 (VLAN).

use std::process::Command;

use sensor_agent::source::datapath::OBJECT;
use sensor_tests::agent::TempDir;

/// (frame kind, instructions measured when the ceiling was set, ceiling).
const CEILINGS: &[(&str, u32, u32)] = &[
    ("v4", 161, 169),
    ("v6", 203, 213),
    ("vlan", 171, 180),
    ("pppoe", 270, 284),
    ("mpls", 290, 305),
    ("vxlan", 332, 349),
    ("gre", 315, 331),
    ("ipip", 284, 298),
];

#[test]
fn a_known_flows_packet_executes_no_more_instructions_than_its_ceiling() {
    let dir = TempDir::new("insns");
    let object = dir.write("sensor.o", OBJECT);
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/bpf-insn-count.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(tool).arg(&object);
    for (kind, _, _) in CEILINGS {
        cmd.args(["--frame", kind]);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run /usr/bin/python3 {tool} (cargo xtask setup installs python3-pyelftools): {e}")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{tool} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let mut over = Vec::new();
    for (kind, measured, ceiling) in CEILINGS {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(*kind))
            .unwrap_or_else(|| panic!("no line for {kind}:\n{stdout}"));
        // The counting path really ran: four runs of the frame made one flow of four packets.
        assert!(
            line.ends_with("flows 1, packets counted 4)"),
            "{kind}: the runs did not count one flow four times: {line}"
        );
        let insns: u32 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no instruction count in {line:?}"));
        if insns > *ceiling {
            over.push(format!(
                "{kind}: {insns} instructions, ceiling {ceiling} (was {measured})"
            ));
        }
    }
    assert!(
        over.is_empty(),
        "the per-packet path grew: {}\n(if the growth is wanted, say why in the commit and \
         raise the ceiling; `tools/bpf-insn-count.py OBJECT --frame KIND --functions` shows where)",
        over.join("; ")
    );
}
