//! Access to the real kernel datapath for tests: load it, push frames with
//! BPF_PROG_TEST_RUN, read its maps.
//!
//! Kernel tests need root (or CAP_BPF + CAP_NET_ADMIN). They fail with a message saying so;
//! they never skip.

use sensor_agent::datapath::{Datapath, LoadOptions};
use sensor_common::{counter, FlowKey, FlowStats};

pub const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC as the test run reports it.
pub const TC_ACT_UNSPEC: i32 = -1;

/// Panics with a clear reason when this process cannot load BPF programs.
pub fn require_bpf() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "kernel test cannot run: it needs root (or CAP_BPF + CAP_NET_ADMIN) to load BPF programs; euid is {euid}. Run `cargo xtask test` as root."
    );
    assert!(
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists() || std::path::Path::new("/proc/sys/net/core/bpf_jit_enable").exists(),
        "kernel test cannot run: this kernel shows no BPF support (/proc/sys/net/core/bpf_jit_enable is missing)"
    );
}

/// The loaded datapath.
pub struct Kernel {
    pub dp: Datapath,
}

impl Kernel {
    pub fn load(max_flows: u32) -> Self {
        require_bpf();
        let dp = Datapath::load(&LoadOptions { max_flows })
            .unwrap_or_else(|e| panic!("kernel test cannot run: loading the datapath failed: {e}"));
        Kernel { dp }
    }

    /// Runs the XDP program on `frame`; panics unless the verdict is XDP_PASS.
    pub fn xdp(&mut self, frame: &[u8]) {
        let verdict = self
            .dp
            .test_run_xdp(frame)
            .unwrap_or_else(|e| panic!("test run of a {}-byte frame: {e}", frame.len()));
        assert_eq!(
            verdict, XDP_PASS,
            "the datapath must pass every frame; frame {frame:02x?}"
        );
    }

    /// Runs the TC egress program on `frame`; panics unless it leaves the verdict to others.
    pub fn tc(&mut self, frame: &[u8]) {
        let verdict = self
            .dp
            .test_run_tc_egress(frame)
            .unwrap_or_else(|e| panic!("TC test run of a {}-byte frame: {e}", frame.len()));
        assert_eq!(
            verdict, TC_ACT_UNSPEC,
            "the TC program must not decide; frame {frame:02x?}"
        );
    }

    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        self.dp.counters().expect("read counters")
    }

    pub fn flow(&self, key: &FlowKey) -> Option<FlowStats> {
        self.dp.flow(key).expect("read flow")
    }

    pub fn flows(&self) -> Vec<(FlowKey, FlowStats)> {
        self.dp.flows().expect("read flows")
    }

    /// Sum of every unattributed-packet reason.
    pub fn unattributed_total(&self) -> u64 {
        self.counters()[..counter::UNATTRIBUTED_REASONS as usize]
            .iter()
            .sum()
    }

    /// Packets held by all flows in the map.
    pub fn attributed_total(&self) -> u64 {
        self.flows()
            .iter()
            .map(|(_, s)| s.packets[0] + s.packets[1])
            .sum()
    }
}
