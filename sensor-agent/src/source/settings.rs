//! `[sensor]` and `[capture]`: where the live source attaches, how often it reads the kernel,
//! and what the datapath copies to the agent. Validated here, where they are used.

use serde::Deserialize;

use crate::{
    source::datapath::{
        LoadOptions, DEFAULT_MAX_FLOWS, DEFAULT_RING_BYTES, DEFAULT_TRACE_RING_BYTES,
    },
    units::{require_positive, HumanDuration, Invalid},
};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorConfig {
    /// Interfaces to attach to; empty means the interface of the default route.
    pub interfaces: Vec<String>,
    /// Also count traffic the host sends itself (TC egress).
    pub egress: bool,
    /// How often the kernel flow table is read and the detectors run.
    pub poll_interval: HumanDuration,
    /// Capacity of the kernel flow map.
    pub max_kernel_flows: u32,
    /// How often the status line is refreshed on a terminal.
    pub status_interval: HumanDuration,
    /// bpffs directory where the datapath's maps, programs and links are pinned, so counting
    /// goes on while the agent is down and a restarted agent resumes where it stopped
    /// (`source::pins`). Empty: nothing is pinned and the datapath detaches with the agent.
    pub pin_path: String,
    /// `[sensor.decap]`: which encapsulations both engines look inside.
    pub decap: DecapConfig,
    /// `run`: attach the cgroup socket hooks at the root of the cgroup v2 hierarchy and name
    /// the process that owns each connection this host opens or accepts; flows the host only
    /// forwards are marked so (`source::process`). Without cgroup v2: one warning, no
    /// attribution.
    pub process_attribution: bool,
    /// With process attribution: keep CAP_SYS_PTRACE after the privilege drop, the one
    /// capability that lets the agent read `/proc/PID/exe` of processes not its own (a
    /// root process, another user's). Off by default: CAP_SYS_PTRACE lets its holder read and
    /// control every process, which a process parsing hostile traffic should not hold unless
    /// the operator chose it. Off, alarms name the process without `process.executable` when
    /// the process is another user's.
    pub process_executables: bool,
}

/// `[sensor.decap]`: the encapsulations the datapath (and the user engine, which parses the
/// same) looks inside, one level deep; each on by default. A switched-off kind is counted as
/// before decapsulation existed: its outer flow (GRE, VXLAN, Geneve, IP in IP), or `not_ip`
/// (PPPoE, MPLS). Handed to the kernel as `DatapathSettings::decap`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DecapConfig {
    pub pppoe: bool,
    pub mpls: bool,
    pub gre: bool,
    pub vxlan: bool,
    pub geneve: bool,
    pub ipip: bool,
}

impl Default for DecapConfig {
    fn default() -> Self {
        DecapConfig {
            pppoe: true,
            mpls: true,
            gre: true,
            vxlan: true,
            geneve: true,
            ipip: true,
        }
    }
}

impl DecapConfig {
    /// `DatapathSettings::decap`: bit `1 << kind` per switched-on kind.
    pub fn bits(&self) -> u32 {
        use sensor_common::tunnel;
        [
            (self.pppoe, tunnel::PPPOE),
            (self.mpls, tunnel::MPLS),
            (self.gre, tunnel::GRE),
            (self.vxlan, tunnel::VXLAN),
            (self.geneve, tunnel::GENEVE),
            (self.ipip, tunnel::IPIP),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |bits, (_, kind)| bits | (1 << kind))
    }
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            interfaces: Vec::new(),
            egress: false,
            poll_interval: HumanDuration::secs(10),
            max_kernel_flows: DEFAULT_MAX_FLOWS,
            status_interval: HumanDuration::secs(5),
            pin_path: crate::source::pins::DEFAULT_PIN_PATH.to_string(),
            decap: DecapConfig::default(),
            process_attribution: true,
            process_executables: false,
        }
    }
}

impl SensorConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        require_positive(&[
            ("poll_interval", self.poll_interval),
            ("status_interval", self.status_interval),
        ])?;
        if !self.pin_path.is_empty() && !self.pin_path.starts_with('/') {
            return Err(Invalid::new(
                "pin_path",
                format!(
                    "{:?} must be an absolute path on a bpffs, or empty to pin nothing",
                    self.pin_path
                ),
            ));
        }
        Ok(())
    }

    /// Where to pin the datapath; `None` when pinning is off.
    pub fn pin_root(&self) -> Option<&std::path::Path> {
        (!self.pin_path.is_empty()).then(|| std::path::Path::new(&self.pin_path))
    }
}

/// What the datapath copies to the agent for the payload classifiers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Payload packets copied per sender of each new TCP/UDP flow (0: none; at most 255).
    pub payload_packets: u32,
    /// Bytes copied of each (at most 512). The default is the most: a ring record holds 512
    /// bytes whatever is copied, and a daemon's mining RPC with its wallet address (a monerod
    /// `get_block_template` is about 350 bytes with its HTTP head) is cut at 256, losing the
    /// coin.
    pub payload_bytes: u32,
    /// Bytes copied of every DNS message, UDP and TCP port 53 (0: off; at most 512).
    pub dns_bytes: u32,
    /// Ring buffer between the datapath and the agent, bytes (a power of two).
    pub ring_bytes: u32,
    /// Payload messages traced per watched flow between two polls (0: no message tracing).
    pub trace_messages: u32,
    /// Ring buffer for traced messages, bytes (a power of two; 64 bytes per message).
    pub trace_ring_bytes: u32,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            payload_packets: 4,
            payload_bytes: 512,
            dns_bytes: 512,
            ring_bytes: DEFAULT_RING_BYTES,
            trace_messages: 64,
            trace_ring_bytes: DEFAULT_TRACE_RING_BYTES,
        }
    }
}

impl CaptureConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        for (key, v, max) in [
            ("payload_packets", self.payload_packets, 255),
            (
                "payload_bytes",
                self.payload_bytes,
                sensor_common::PAYLOAD_MAX as u32,
            ),
            (
                "dns_bytes",
                self.dns_bytes,
                sensor_common::PAYLOAD_MAX as u32,
            ),
        ] {
            if v > max {
                return Err(Invalid::new(key, format!("{v} is out of range: 0-{max}")));
            }
        }
        for (key, v) in [
            ("ring_bytes", self.ring_bytes),
            ("trace_ring_bytes", self.trace_ring_bytes),
        ] {
            if !v.is_power_of_two() || v < 4096 {
                return Err(Invalid::new(
                    key,
                    format!("{v} must be a power of two of at least 4096"),
                ));
            }
        }
        Ok(())
    }
}

/// How to load the datapath: the kernel map's capacity, what it copies, and how many flows it
/// may trace (`detect.watch.max_flows`).
pub fn load_options(
    sensor: &SensorConfig,
    capture: &CaptureConfig,
    max_watched_flows: usize,
) -> LoadOptions {
    LoadOptions {
        max_flows: sensor.max_kernel_flows,
        settings: sensor_common::DatapathSettings {
            payload_packets: capture.payload_packets,
            payload_bytes: capture.payload_bytes,
            dns_bytes: capture.dns_bytes,
            watch_gen: 0,
            decap: sensor.decap.bits(),
            _pad: 0,
        },
        ring_bytes: capture.ring_bytes,
        max_watched_flows: u32::try_from(max_watched_flows).unwrap_or(u32::MAX),
        trace_ring_bytes: capture.trace_ring_bytes,
        pin_dir: None,
    }
}
