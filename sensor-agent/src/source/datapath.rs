//! Loading the kernel datapath and reading what it counted.
//!
//! This module owns the eBPF object (built from `sensor-ebpf` by the build script and
//! embedded), keeps aya-log's logger alive for as long as the programs are loaded (dropping it
//! closes the log map the programs write to), and exposes the maps as plain Rust values.
//! It never interprets flows: that is the flow table's and the detectors' job.

use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{Program, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use sensor_common::{
    clock_slot, counter, DatapathSettings, FlowKey, FlowStats, PayloadEvent, TraceEvent,
    TunnelInfo, WatchBudget, PAYLOAD_MAX,
};

/// The sensor's eBPF object (XDP ingress + TC egress programs and their maps).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SENSOR_EBPF_OBJECT"));

/// Benchmark-only programs: `bench_noop` and `bench_ref`.
#[cfg(feature = "bench-programs")]
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SENSOR_EBPF_BENCH_OBJECT"));

/// Name of the XDP (ingress) program in [`OBJECT`].
pub const XDP_PROGRAM: &str = "sensor_xdp";
/// Name of the TC egress program in [`OBJECT`].
pub const TC_EGRESS_PROGRAM: &str = "sensor_tc_egress";
/// Name of the flow map in [`OBJECT`].
pub const FLOW_MAP: &str = "FLOWS";
/// Name of the per-CPU counter array in [`OBJECT`].
pub const COUNTER_MAP: &str = "COUNTERS";
/// Name of the jiffies program and its map in [`OBJECT`].
pub const CLOCK_PROGRAM: &str = "sensor_clock";
/// Name of the settings array and the payload ring buffer in [`OBJECT`].
pub const SETTINGS_MAP: &str = "SETTINGS";
pub const PAYLOAD_MAP: &str = "PAYLOADS";
pub const CLOCK_MAP: &str = "CLOCK";
/// Name of the watched-flow map and the message trace ring buffer in [`OBJECT`].
pub const WATCH_MAP: &str = "WATCH";
pub const TRACE_MAP: &str = "TRACES";
/// Name of the tunnel side map (inner flow -> `TunnelInfo`) in [`OBJECT`].
pub const TUNNEL_MAP: &str = "TUNNELS";
/// The programs that parse the inside of a tunnel (tail calls from the XDP and TC programs),
/// and the program arrays that hold them.
pub const XDP_INNER_PROGRAM: &str = "sensor_xdp_inner";
pub const TC_INNER_PROGRAM: &str = "sensor_tc_inner";
const XDP_INNER_MAP: &str = "INNER_XDP";
const TC_INNER_MAP: &str = "INNER_TC";

/// The maps that outlive the agent when it pins ([`LoadOptions::pin_dir`]): everything the
/// attached programs use but aya-log's map, whose messages are only worth reading live.
pub const PINNED_MAPS: [&str; 8] = [
    FLOW_MAP,
    TUNNEL_MAP,
    COUNTER_MAP,
    SETTINGS_MAP,
    PAYLOAD_MAP,
    WATCH_MAP,
    TRACE_MAP,
    CLOCK_MAP,
];

/// `bpf_map_update_elem` flag: only replace an existing entry.
const BPF_EXIST: u64 = 2;

/// Default flow map capacity (entries); 64 bytes of value + 40 of key, about 136 B per entry.
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot load the eBPF datapath: {0}{hint}", hint = privilege_hint())]
    Load(#[source] Box<aya::EbpfError>),
    #[error("cannot load program {name}: {source}{hint}", hint = privilege_hint())]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("BPF_PROG_TEST_RUN of {name} failed: {source}")]
    TestRun {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("program or map {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("{op} on map {name}: {source}")]
    Syscall {
        op: &'static str,
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn privilege_hint() -> &'static str {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        " (not running as root: loading BPF programs needs root or CAP_BPF + CAP_NET_ADMIN)"
    } else {
        ""
    }
}

/// Options for [`Datapath::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Capacity of the flow map.
    pub max_flows: u32,
    /// What to copy to the agent (all zero: nothing).
    pub settings: DatapathSettings,
    /// Size of the payload ring buffer in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Capacity of the watch map: flows whose messages can be traced at once.
    pub max_watched_flows: u32,
    /// Size of the message trace ring buffer in bytes (a power of two, at least one page).
    pub trace_ring_bytes: u32,
    /// A bpffs directory to keep the maps in ([`PINNED_MAPS`], by name): maps pinned there
    /// already are used as they are (their flows, counters and clock anchor go on), the
    /// others are created and pinned. `None`: the maps live as long as this process.
    pub pin_dir: Option<PathBuf>,
}

/// Default payload ring: 4 MiB, about 7,000 copies of 568 bytes between two reads.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
/// Default watch map capacity.
pub const DEFAULT_MAX_WATCHED_FLOWS: u32 = 4096;
/// Default trace ring: 2 MiB, about 32,000 messages of 64 bytes (with the ring's header)
/// between two reads.
pub const DEFAULT_TRACE_RING_BYTES: u32 = 2 << 20;

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_flows: DEFAULT_MAX_FLOWS,
            // Every encapsulation decapsulated, as `[sensor.decap]` defaults to.
            settings: DatapathSettings {
                decap: sensor_common::tunnel::ALL,
                ..DatapathSettings::default()
            },
            ring_bytes: DEFAULT_RING_BYTES,
            max_watched_flows: DEFAULT_MAX_WATCHED_FLOWS,
            trace_ring_bytes: DEFAULT_TRACE_RING_BYTES,
            pin_dir: None,
        }
    }
}

impl LoadOptions {
    /// Only a flow map of this size; nothing copied to user space.
    pub fn flows_only(max_flows: u32) -> Self {
        LoadOptions {
            max_flows,
            ..Default::default()
        }
    }
}

/// What a map of the object looks like once loaded with some [`LoadOptions`]: what a pinned
/// map must match to be used again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Every map of the object with the shape `opts` gives it. Ring buffers have no key or value;
/// their size is their capacity in bytes.
pub fn map_specs(opts: &LoadOptions) -> [(&'static str, MapSpec); 8] {
    let spec = |key: usize, value: usize, max_entries: u32| MapSpec {
        key_size: key as u32,
        value_size: value as u32,
        max_entries,
    };
    let ring = |bytes: u32| spec(0, 0, bytes.max(4096).next_power_of_two());
    [
        (
            FLOW_MAP,
            spec(size_of::<FlowKey>(), size_of::<FlowStats>(), opts.max_flows),
        ),
        // As large as the flow map: it never holds more live entries than there are flows.
        (
            TUNNEL_MAP,
            spec(
                size_of::<FlowKey>(),
                size_of::<TunnelInfo>(),
                opts.max_flows,
            ),
        ),
        (COUNTER_MAP, spec(4, 8, counter::COUNT)),
        (SETTINGS_MAP, spec(4, size_of::<DatapathSettings>(), 1)),
        (PAYLOAD_MAP, ring(opts.ring_bytes)),
        (
            WATCH_MAP,
            spec(
                size_of::<FlowKey>(),
                size_of::<WatchBudget>(),
                opts.max_watched_flows.max(1),
            ),
        ),
        (TRACE_MAP, ring(opts.trace_ring_bytes)),
        (CLOCK_MAP, spec(4, 8, clock_slot::COUNT)),
    ]
}

/// Loaded (not yet attached) datapath programs and their maps.
pub struct Datapath {
    ebpf: Ebpf,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    /// The payload ring buffer, taken out of `ebpf` once (each RingBuf maps its pages).
    payloads: Option<RingBuf<MapData>>,
    /// The message trace ring buffer, likewise.
    traces: Option<RingBuf<MapData>>,
    /// The settings as last written (the watch generation changes at run time).
    settings: DatapathSettings,
}

impl Datapath {
    /// Loads the object and both programs into the kernel (the verifier runs here).
    pub fn load(opts: &LoadOptions) -> Result<Self, DatapathError> {
        Self::load_object(opts, OBJECT)
    }

    /// [`Datapath::load`] with another build of the sensor's object (same ABI): lets the
    /// datapath benchmark measure a candidate change against the same yardsticks without
    /// rebuilding the agent.
    pub fn load_object(opts: &LoadOptions, object: &[u8]) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        for (name, spec) in map_specs(opts) {
            loader.map_max_entries(name, spec.max_entries);
        }
        let pins: Vec<(&str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => PINNED_MAPS.iter().map(|m| (*m, dir.join(m))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        // The programs write to aya-log's map; without a reader the messages are lost, so a
        // failure here is reported but does not stop the sensor.
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("kernel-side log messages will not be shown: {e}");
                None
            }
        };
        let mut settings = opts.settings;
        settings.payload_bytes = settings.payload_bytes.min(PAYLOAD_MAX as u32);
        settings.dns_bytes = settings.dns_bytes.min(PAYLOAD_MAX as u32);
        settings.payload_packets = settings.payload_packets.min(255);
        let payloads = match ebpf.take_map(PAYLOAD_MAP) {
            Some(map) => Some(RingBuf::try_from(map).map_err(|e| map_err(PAYLOAD_MAP, e))?),
            None => return Err(DatapathError::Missing(PAYLOAD_MAP)),
        };
        let traces = match ebpf.take_map(TRACE_MAP) {
            Some(map) => Some(RingBuf::try_from(map).map_err(|e| map_err(TRACE_MAP, e))?),
            None => return Err(DatapathError::Missing(TRACE_MAP)),
        };
        let mut dp = Datapath {
            ebpf,
            logger,
            payloads,
            traces,
            settings,
        };
        dp.write_settings()?;
        dp.xdp()?.load().map_err(|e| DatapathError::Program {
            name: XDP_PROGRAM,
            source: Box::new(e),
        })?;
        dp.tc_egress()?.load().map_err(|e| DatapathError::Program {
            name: TC_EGRESS_PROGRAM,
            source: Box::new(e),
        })?;
        dp.clock_program()?
            .load()
            .map_err(|e| DatapathError::Program {
                name: CLOCK_PROGRAM,
                source: Box::new(e),
            })?;
        dp.load_inner()?;
        Ok(dp)
    }

    /// Loads the inner (decapsulated) programs and puts each into the program array its outer
    /// program tail-calls. The arrays are not pinned: the outer programs hold them, and a
    /// restarted agent loads new ones with its new programs.
    fn load_inner(&mut self) -> Result<(), DatapathError> {
        let program = |e: aya::programs::ProgramError, name| DatapathError::Program {
            name,
            source: Box::new(e),
        };
        for (name, array) in [
            (XDP_INNER_PROGRAM, XDP_INNER_MAP),
            (TC_INNER_PROGRAM, TC_INNER_MAP),
        ] {
            let fd = match self.ebpf.program_mut(name) {
                Some(Program::Xdp(p)) => {
                    p.load().map_err(|e| program(e, name))?;
                    p.fd().map_err(|e| program(e, name))?.try_clone()
                }
                Some(Program::SchedClassifier(p)) => {
                    p.load().map_err(|e| program(e, name))?;
                    p.fd().map_err(|e| program(e, name))?.try_clone()
                }
                _ => return Err(DatapathError::Missing(name)),
            }
            .map_err(|e| DatapathError::Syscall {
                op: "dup",
                name,
                source: std::io::Error::other(e.to_string()),
            })?;
            let map = self
                .ebpf
                .map_mut(array)
                .ok_or(DatapathError::Missing(array))?;
            let mut progs: ProgramArray<&mut MapData> =
                ProgramArray::try_from(map).map_err(|e| map_err(array, e))?;
            progs.set(0, &fd, 0).map_err(|e| map_err(array, e))?;
        }
        Ok(())
    }

    /// Pins the attached programs in `dir` (replacing what an earlier agent pinned there), so
    /// `bpftool prog show pinned` finds them and they outlive this process with their links.
    pub fn pin_programs(&mut self, dir: &Path, egress: bool) -> Result<(), DatapathError> {
        let mut names = vec![XDP_PROGRAM];
        if egress {
            names.push(TC_EGRESS_PROGRAM);
        }
        for name in names {
            let path = dir.join(format!("prog_{name}"));
            // An earlier agent's program: its links now run ours, so its pin is all that
            // keeps it loaded.
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DatapathError::Syscall {
                        op: "unpin",
                        name,
                        source,
                    })
                }
            }
            self.ebpf
                .program_mut(name)
                .ok_or(DatapathError::Missing(name))?
                .pin(&path)
                .map_err(|e| DatapathError::Syscall {
                    op: "pin",
                    name,
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        Ok(())
    }

    /// The clock anchor an agent saved in the `CLOCK` map: `(hz, jiffies, wall ns)`, zeros if
    /// none did.
    pub fn clock_anchor(&self) -> Result<(u64, u64, u64), DatapathError> {
        let clock: Array<&MapData, u64> = Array::try_from(
            self.ebpf
                .map(CLOCK_MAP)
                .ok_or(DatapathError::Missing(CLOCK_MAP))?,
        )
        .map_err(|e| map_err(CLOCK_MAP, e))?;
        let get = |slot| clock.get(&slot, 0).map_err(|e| map_err(CLOCK_MAP, e));
        Ok((
            get(clock_slot::HZ)?,
            get(clock_slot::ANCHOR_JIFFIES)?,
            get(clock_slot::ANCHOR_WALL_NS)?,
        ))
    }

    /// Saves the clock anchor beside the flows it converts.
    pub fn set_clock_anchor(&mut self, anchor: (u64, u64, u64)) -> Result<(), DatapathError> {
        let mut clock: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(CLOCK_MAP)
                .ok_or(DatapathError::Missing(CLOCK_MAP))?,
        )
        .map_err(|e| map_err(CLOCK_MAP, e))?;
        let (hz, jiffies, wall) = anchor;
        for (slot, value) in [
            (clock_slot::HZ, hz),
            (clock_slot::ANCHOR_JIFFIES, jiffies),
            (clock_slot::ANCHOR_WALL_NS, wall),
        ] {
            clock
                .set(slot, value, 0)
                .map_err(|e| map_err(CLOCK_MAP, e))?;
        }
        Ok(())
    }

    fn write_settings(&mut self) -> Result<(), DatapathError> {
        let map = self
            .ebpf
            .map_mut(SETTINGS_MAP)
            .ok_or(DatapathError::Missing(SETTINGS_MAP))?;
        let mut settings: Array<&mut MapData, DatapathSettings> =
            Array::try_from(map).map_err(|e| map_err(SETTINGS_MAP, e))?;
        settings
            .set(0, self.settings, 0)
            .map_err(|e| map_err(SETTINGS_MAP, e))
    }

    fn watch_map(
        &mut self,
    ) -> Result<BpfHashMap<&mut MapData, FlowKey, WatchBudget>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(WATCH_MAP)
            .ok_or(DatapathError::Missing(WATCH_MAP))?;
        BpfHashMap::try_from(map).map_err(|e| map_err(WATCH_MAP, e))
    }

    /// Starts tracing the messages of `keys`, `budget` messages each until [`Self::rearm`].
    /// Returns how many the watch map took (it refuses keys beyond its capacity); the flows
    /// notice at their next packet in a new jiffy.
    pub fn watch(&mut self, keys: &[FlowKey], budget: u64) -> Result<usize, DatapathError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut taken = 0;
        {
            let mut map = self.watch_map()?;
            let value = WatchBudget {
                messages: budget,
                used: 0,
            };
            for key in keys {
                match map.insert(key, value, 0) {
                    Ok(()) => taken += 1,
                    // E2BIG: the map is full; the rest cannot fit either.
                    Err(aya::maps::MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                    {
                        break
                    }
                    Err(e) => return Err(map_err(WATCH_MAP, e)),
                }
            }
        }
        self.settings.watch_gen = self.settings.watch_gen.wrapping_add(1);
        self.write_settings()?;
        Ok(taken)
    }

    /// Stops tracing `keys` (their next traced packet finds no entry and clears its bit).
    /// Keys not watched are not an error.
    pub fn unwatch(&mut self, keys: &[FlowKey]) -> Result<(), DatapathError> {
        let mut map = self.watch_map()?;
        for key in keys {
            match map.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(WATCH_MAP, e)),
            }
        }
        Ok(())
    }

    /// Gives every watched flow in `keys` a fresh budget of `budget` messages (once per poll).
    pub fn rearm(&mut self, keys: &[FlowKey], budget: u64) -> Result<(), DatapathError> {
        let mut map = self.watch_map()?;
        let value = WatchBudget {
            messages: budget,
            used: 0,
        };
        for key in keys {
            // BPF_EXIST: a flow unwatched meanwhile stays unwatched.
            match map.insert(key, value, BPF_EXIST) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(WATCH_MAP, e)),
            }
        }
        Ok(())
    }

    /// The flows in the watch map.
    pub fn watched(&mut self) -> Result<Vec<FlowKey>, DatapathError> {
        let map = self.watch_map()?;
        map.keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_err(WATCH_MAP, e))
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, DatapathError> {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Missing(XDP_PROGRAM))
    }

    pub fn tc_egress(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        self.ebpf
            .program_mut(TC_EGRESS_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Missing(TC_EGRESS_PROGRAM))
    }

    fn clock_program(&mut self) -> Result<&mut Xdp, DatapathError> {
        self.ebpf
            .program_mut(CLOCK_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::Missing(CLOCK_PROGRAM))
    }

    /// The kernel's `jiffies` now (the clock of `FlowStats::first_seen`/`last_seen`).
    pub fn jiffies(&mut self) -> Result<u64, DatapathError> {
        self.test_run(CLOCK_PROGRAM, &[0u8; 64])?;
        let map = self
            .ebpf
            .map(CLOCK_MAP)
            .ok_or(DatapathError::Missing(CLOCK_MAP))?;
        let clock: Array<&MapData, u64> =
            Array::try_from(map).map_err(|e| map_err(CLOCK_MAP, e))?;
        clock
            .get(&clock_slot::JIFFIES, 0)
            .map_err(|e| map_err(CLOCK_MAP, e))
    }

    fn flow_map_fd(&self) -> Result<RawFd, DatapathError> {
        match self.ebpf.map(FLOW_MAP) {
            Some(Map::LruHashMap(d)) | Some(Map::HashMap(d)) => Ok(d.fd().as_fd().as_raw_fd()),
            _ => Err(DatapathError::Missing(FLOW_MAP)),
        }
    }

    /// Every flow in the kernel map, read with BPF_MAP_LOOKUP_BATCH (5-12x faster than
    /// key-by-key here, and immune to the restart that deleting during a key walk causes),
    /// handed over one batch at a time.
    pub fn for_each_flow_batch(
        &self,
        f: impl FnMut(&[FlowKey], &[FlowStats]),
    ) -> Result<(), DatapathError> {
        batch::lookup_all(self.flow_map_fd()?, f).map_err(|source| DatapathError::Syscall {
            op: "BPF_MAP_LOOKUP_BATCH",
            name: FLOW_MAP,
            source,
        })
    }

    /// The next batch of a walk over the flow map (see [`batch::Walk`]).
    #[allow(clippy::type_complexity)]
    pub fn next_flow_batch<'w>(
        &self,
        walk: &'w mut batch::Walk,
    ) -> Result<Option<(&'w [FlowKey], &'w [FlowStats])>, DatapathError> {
        walk.next(self.flow_map_fd()?)
            .map_err(|source| DatapathError::Syscall {
                op: "BPF_MAP_LOOKUP_BATCH",
                name: FLOW_MAP,
                source,
            })
    }

    /// Every flow in the kernel map (batched reads) into `out`, which is cleared first.
    pub fn flows_batched(&self, out: &mut Vec<(FlowKey, FlowStats)>) -> Result<(), DatapathError> {
        out.clear();
        self.for_each_flow_batch(|keys, values| {
            out.extend(keys.iter().copied().zip(values.iter().copied()))
        })
    }

    /// Writes flows into the kernel map with BPF_MAP_UPDATE_BATCH: for benchmarks and tests
    /// that need a full map without sending millions of packets. Never used on live maps
    /// (updating an existing LRU key can evict others).
    pub fn insert_flows(&self, flows: &[(FlowKey, FlowStats)]) -> Result<(), DatapathError> {
        batch::update(self.flow_map_fd()?, flows).map_err(|source| DatapathError::Syscall {
            op: "BPF_MAP_UPDATE_BATCH",
            name: FLOW_MAP,
            source,
        })
    }

    /// Deletes flows from the kernel map (flows the agent has ended), and their tunnel
    /// entries. Keys already gone are not an error.
    pub fn delete_flows(&self, keys: &[FlowKey]) -> Result<(), DatapathError> {
        batch::delete(self.flow_map_fd()?, keys).map_err(|source| DatapathError::Syscall {
            op: "BPF_MAP_DELETE_ELEM",
            name: FLOW_MAP,
            source,
        })?;
        let fd = match self.ebpf.map(TUNNEL_MAP) {
            Some(Map::LruHashMap(d)) | Some(Map::HashMap(d)) => d.fd().as_fd().as_raw_fd(),
            _ => return Err(DatapathError::Missing(TUNNEL_MAP)),
        };
        batch::delete(fd, keys).map_err(|source| DatapathError::Syscall {
            op: "BPF_MAP_DELETE_ELEM",
            name: TUNNEL_MAP,
            source,
        })
    }

    /// The tunnel flow `key` was created in, for a flow whose `FlowStats::tunnel` is set
    /// (`None` when the entry is gone: the side map is an LRU and may lose one first).
    pub fn tunnel(&self, key: &FlowKey) -> Result<Option<TunnelInfo>, DatapathError> {
        let map = self
            .ebpf
            .map(TUNNEL_MAP)
            .ok_or(DatapathError::Missing(TUNNEL_MAP))?;
        let tunnels: BpfHashMap<&MapData, FlowKey, TunnelInfo> =
            BpfHashMap::try_from(map).map_err(|e| map_err(TUNNEL_MAP, e))?;
        match tunnels.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(TUNNEL_MAP, e)),
        }
    }

    /// Runs program `name` once on `frame` with BPF_PROG_TEST_RUN; returns its verdict.
    fn test_run(&mut self, name: &'static str, frame: &[u8]) -> Result<u32, DatapathError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        };
        let result = match self.ebpf.program_mut(name) {
            Some(Program::Xdp(p)) => p.test_run(opts),
            Some(Program::SchedClassifier(p)) => p.test_run(opts),
            _ => return Err(DatapathError::Missing(name)),
        };
        result
            .map(|r| r.return_value)
            .map_err(|e| DatapathError::TestRun {
                name,
                source: Box::new(e),
            })
    }

    /// Runs the XDP program once on `frame` with BPF_PROG_TEST_RUN; returns its verdict.
    pub fn test_run_xdp(&mut self, frame: &[u8]) -> Result<u32, DatapathError> {
        self.test_run(XDP_PROGRAM, frame)
    }

    /// Runs the TC egress program once on `frame` (an skb) with BPF_PROG_TEST_RUN; returns its
    /// verdict.
    pub fn test_run_tc_egress(&mut self, frame: &[u8]) -> Result<i32, DatapathError> {
        Ok(self.test_run(TC_EGRESS_PROGRAM, frame)? as i32)
    }

    /// One flow's counters, if the kernel holds it.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowStats>, DatapathError> {
        let map = self
            .ebpf
            .map(FLOW_MAP)
            .ok_or(DatapathError::Missing(FLOW_MAP))?;
        let flows: BpfHashMap<&MapData, FlowKey, FlowStats> =
            BpfHashMap::try_from(map).map_err(|e| map_err(FLOW_MAP, e))?;
        match flows.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(FLOW_MAP, e)),
        }
    }

    /// The per-CPU counters summed over CPUs, indexed by [`sensor_common::counter`].
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], DatapathError> {
        let map = self
            .ebpf
            .map(COUNTER_MAP)
            .ok_or(DatapathError::Missing(COUNTER_MAP))?;
        let arr: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|e| map_err(COUNTER_MAP, e))?;
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = arr
                .get(&(i as u32), 0)
                .map_err(|e| map_err(COUNTER_MAP, e))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Every flow currently in the kernel map.
    ///
    /// Key-by-key iteration: entries inserted or evicted meanwhile may or may not appear.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowStats)>, DatapathError> {
        let map = self
            .ebpf
            .map(FLOW_MAP)
            .ok_or(DatapathError::Missing(FLOW_MAP))?;
        let flows: BpfHashMap<&MapData, FlowKey, FlowStats> =
            BpfHashMap::try_from(map).map_err(|e| map_err(FLOW_MAP, e))?;
        let mut out = Vec::new();
        for entry in flows.iter() {
            match entry {
                Ok(kv) => out.push(kv),
                // The entry was evicted between reading its key and its value.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(FLOW_MAP, e)),
            }
        }
        Ok(out)
    }

    /// The payload ring, for a reader that waits on it (the live source's `AsyncFd`); after
    /// this [`Self::drain_payloads`] finds nothing.
    pub fn take_payload_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.payloads.take()
    }

    /// The trace ring, likewise.
    pub fn take_trace_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.traces.take()
    }

    /// Hands every payload copy waiting in the ring buffer to `f`, oldest first; returns how
    /// many there were.
    pub fn drain_payloads(&mut self, f: impl FnMut(&PayloadEvent)) -> usize {
        self.payloads.as_mut().map_or(0, |ring| read_ring(ring, f))
    }

    /// Hands every traced message waiting in the trace ring to `f`, oldest first; returns how
    /// many there were.
    pub fn drain_traces(&mut self, f: impl FnMut(&TraceEvent)) -> usize {
        self.traces.as_mut().map_or(0, |ring| read_ring(ring, f))
    }

    /// Prints whatever the programs logged since the last call.
    pub fn flush_log(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}

/// Hands every record waiting in `ring` to `f` as a `T`, oldest first; returns how many there
/// were. Records of an unexpected size (never, unless the ABI broke) are skipped.
pub fn read_ring<T: aya::Pod>(ring: &mut RingBuf<MapData>, mut f: impl FnMut(&T)) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<T>() {
            // SAFETY: T is plain data (Pod) and the record holds at least its size;
            // read_unaligned makes no alignment assumption about the ring's memory.
            let record = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) };
            f(&record);
            n += 1;
        }
    }
    n
}

fn map_err(name: &'static str, e: aya::maps::MapError) -> DatapathError {
    DatapathError::Map {
        name,
        source: Box::new(e),
    }
}

/// Raw `bpf(2)` batch operations: aya 0.14 has none (aya issue 1124).
pub mod batch {
    use std::{io, os::fd::RawFd};

    use sensor_common::{FlowKey, FlowStats};

    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    /// Entries per batch call: measured here, 512-1024 read fastest (buffers stay in cache);
    /// 4096 and 16384 were 15-20% slower.
    const BATCH: usize = 1024;

    /// `struct bpf_attr`, `batch` member (and `map_elem` for deletes: same prefix layout is
    /// not assumed; each op fills its own struct).
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
        // SAFETY: attr is a live, initialised bpf_attr variant of the size passed, whose
        // pointers reference buffers the caller keeps alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                std::mem::size_of::<T>() as u32,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Walks the whole map in batches, handing each batch to `f` (keys and values side by
    /// side), so a caller never needs a second copy of the map.
    pub fn lookup_all(fd: RawFd, mut f: impl FnMut(&[FlowKey], &[FlowStats])) -> io::Result<()> {
        let mut walk = Walk::new();
        while let Some((keys, values)) = walk.next(fd)? {
            f(keys, values);
        }
        Ok(())
    }

    /// One walk over a map with BPF_MAP_LOOKUP_BATCH that the caller advances a batch at a
    /// time, so a reader can hand each batch on before reading the next.
    pub struct Walk {
        keys: Vec<FlowKey>,
        values: Vec<FlowStats>,
        // Hash map batch tokens are bucket indices (u32); 8 bytes leaves room.
        token_in: u64,
        token_out: u64,
        first: bool,
        done: bool,
    }

    impl Default for Walk {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Walk {
        pub fn new() -> Self {
            Walk {
                keys: vec![FlowKey::default(); BATCH],
                values: vec![FlowStats::default(); BATCH],
                token_in: 0,
                token_out: 0,
                first: true,
                done: false,
            }
        }

        /// The next batch (possibly empty), or `None` once the walk is complete.
        #[allow(clippy::type_complexity)]
        pub fn next(&mut self, fd: RawFd) -> io::Result<Option<(&[FlowKey], &[FlowStats])>> {
            if self.done {
                return Ok(None);
            }
            let mut attr = BatchAttr {
                in_batch: if self.first {
                    0
                } else {
                    &mut self.token_in as *mut u64 as u64
                },
                out_batch: &mut self.token_out as *mut u64 as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: fd as u32,
                ..Default::default()
            };
            let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let n = (attr.count as usize).min(BATCH);
            match result {
                Ok(()) => {}
                // ENOENT: the walk is complete (the last batch may still hold entries).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
            self.token_in = self.token_out;
            self.first = false;
            Ok(Some((&self.keys[..n], &self.values[..n])))
        }
    }

    pub fn update(fd: RawFd, flows: &[(FlowKey, FlowStats)]) -> io::Result<()> {
        for chunk in flows.chunks(BATCH) {
            let keys: Vec<FlowKey> = chunk.iter().map(|(k, _)| *k).collect();
            let values: Vec<FlowStats> = chunk.iter().map(|(_, v)| *v).collect();
            let mut done = 0;
            while done < keys.len() {
                let mut attr = BatchAttr {
                    keys: keys[done..].as_ptr() as u64,
                    values: values[done..].as_ptr() as u64,
                    count: (keys.len() - done) as u32,
                    map_fd: fd as u32,
                    ..Default::default()
                };
                let result = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
                done += attr.count as usize;
                result?;
            }
        }
        Ok(())
    }

    pub fn delete(fd: RawFd, keys: &[FlowKey]) -> io::Result<()> {
        for key in keys {
            let mut attr = ElemAttr {
                map_fd: fd as u32,
                key: key as *const FlowKey as u64,
                ..Default::default()
            };
            match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
