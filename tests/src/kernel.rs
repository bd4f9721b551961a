//! Access to the real kernel datapath for tests: load it, push frames with
//! BPF_PROG_TEST_RUN, read its maps.
//!
//! Kernel tests need root (or CAP_BPF + CAP_NET_ADMIN). They fail with a message saying so;
//! they never skip.

use sensor_agent::source::datapath::{Datapath, LoadOptions};
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

/// Whether BPF_PROG_TEST_RUN accepts `frame` as an skb for a TC program. Since Linux 6.x the
/// kernel refuses (EINVAL) an IPv4 ethertype with less than a 20-byte IP header after the
/// Ethernet header, and IPv6 with less than 40; such skbs never reach TC egress from the stack
/// either.
pub fn tc_test_run_accepts(frame: &[u8]) -> bool {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    match ethertype {
        0x0800 => frame.len() >= 14 + 20,
        0x86dd => frame.len() >= 14 + 40,
        _ => frame.len() >= 14,
    }
}

/// The loaded datapath.
pub struct Kernel {
    pub dp: Datapath,
}

impl Kernel {
    pub fn load(max_flows: u32) -> Self {
        Self::load_with(&LoadOptions::flows_only(max_flows))
    }

    pub fn load_with(opts: &LoadOptions) -> Self {
        require_bpf();
        let dp = Datapath::load(opts)
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
    /// `frame` must pass [`tc_test_run_accepts`].
    pub fn tc(&mut self, frame: &[u8]) {
        assert!(
            tc_test_run_accepts(frame),
            "the kernel's skb test run refuses this frame; filter with tc_test_run_accepts"
        );
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

/// `struct bpf_attr` for BPF_PROG_TEST_RUN (the `test` member), padded like the union.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: [u32; 11],
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// BPF_PROG_TEST_RUN on a raw program fd, usable from several threads at once (aya's API needs
/// `&mut` to the program). Returns the program's verdict.
pub fn test_run_fd(prog_fd: std::os::fd::RawFd, frame: &[u8]) -> std::io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; data_in points to
    // frame.len() readable bytes for the duration of the call; no output buffers are given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr.retval)
}

/// Pins the calling thread to one CPU, so threads really run concurrently.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) affects only this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A bpffs directory for one test's pins (`sensor.pin_path`), unique per process and call.
/// On drop, everything pinned under it is removed (links first, which detaches the
/// programs) and the directory goes, also when the test panics.
pub struct PinRoot {
    path: std::path::PathBuf,
}

impl PinRoot {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PinRoot {
            path: std::path::PathBuf::from(format!(
                "/sys/fs/bpf/sensor-test-{tag}-{}-{n}",
                std::process::id()
            )),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Every file pinned under the root, sorted.
    pub fn pinned(&self) -> Vec<std::path::PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, &mut out);
        out.sort();
        out
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = sensor_agent::source::pins::detach(&self.path, None);
        let _ = std::fs::remove_dir(&self.path);
    }
}
