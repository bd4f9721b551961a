//! Which process on this host owns a flow's socket, and whether a flow is this host's at all.
//!
//! Why it exists: an alarm that says "10.0.0.5 talks stratum to a pool" sends an analyst to
//! the host; one that also names `pid 4242 xmrig (/tmp/.x/xmrig), user www-data, container
//! 3f2a...` ends the hunt. The kernel side (`sensor-ebpf/src/bin/process.rs`) records socket
//! owners from cgroup socket hooks attached to the root of the cgroup v2 hierarchy, into an
//! LRU hash keyed by the same canonical `FlowKey` the datapath counts flows under; this module
//! loads and attaches those programs ([`ProcessHooks`]) and joins owners to the flows of each
//! poll ([`HostView`]), handing the engine [`HostFlow`]s. The engine's enrichment
//! (`enrich::process`) turns an owner into names (executable, user, cgroup path, container).
//!
//! The join, per flow new since the previous poll:
//! - neither endpoint is an address of this network namespace: the flow is forwarded (the
//!   host routes or bridges it); no lookup, nothing costs more for it;
//! - else the owner map is looked up: the exact key (TCP, written by the established
//!   callbacks; UDP sockets bound to an address), then, for UDP, the keys the connect/sendmsg
//!   hooks write when the local address or port was not known yet (the unspecified address,
//!   port 0). A record of another network namespace (a container on a bridge, a namespace the
//!   host routes for) is not this host's socket and is ignored;
//! - a local flow without an owner yet (the established callback can come a moment after the
//!   poll that first saw the flow's SYN) is looked up again for the next [`RETRY_POLLS`]
//!   polls; one the hooks never name (its socket is older than the agent, or there are no
//!   hooks) is looked for in /proc ([`sockets`]) at the next scan.
//!
//! What it must never do: read or change anything of the XDP/TC datapath (the join is all in
//! user space), or fail the sensor: without cgroup v2, or on a kernel that refuses a hook,
//! the sensor runs without attribution after one warning line.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::links::CgroupAttachMode,
    Ebpf,
};
use sensor_common::{
    ipv4_mapped,
    process::{OwnerRecord, HOOK_CONNECT, HOOK_SENDMSG},
    Addr, FlowKey, FlowStats, IPV4_MAPPED_WORD,
};

use crate::source::sockets;

/// The process-attribution object (cgroup socket hooks and sock_ops), built by the build
/// script from `sensor-ebpf/src/bin/process.rs`.
pub static PROCESS_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SENSOR_PROCESS_OBJECT"));

/// The owner map in [`PROCESS_OBJECT`].
pub const OWNER_MAP: &str = "OWNERS";
/// The programs of [`PROCESS_OBJECT`], in attach order (the socket storage first, so the
/// others find the owner).
pub const PROGRAMS: [&str; 6] = [
    "process_sock_create",
    "process_connect4",
    "process_connect6",
    "process_sendmsg4",
    "process_sendmsg6",
    "process_sock_ops",
];

/// Owner lookups per poll at most (about 2 us each): a flood of new flows to this host's
/// addresses must not stretch a poll; flows beyond it are given no owner (counted).
const MAX_LOOKUPS_PER_POLL: u32 = 8192;
/// Polls a local flow without an owner is looked up again.
pub const RETRY_POLLS: u8 = 3;
/// Most local flows waiting for their owner at once; more are given up on (counted).
const MAX_RETRY: usize = 4096;
/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie of the socket's network namespace.
const SO_NETNS_COOKIE: libc::c_int = 71;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no cgroup v2 hierarchy is mounted (none in /proc/mounts)")]
    NoCgroup2,
    #[error("cannot open the cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the process-attribution programs: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name}: {reason}")]
    Program { name: &'static str, reason: String },
    #[error("program or map {0} is missing from the process-attribution object")]
    Missing(&'static str),
    #[error("map {OWNER_MAP}: {0}")]
    Map(#[source] Box<aya::maps::MapError>),
}

/// The mount point of the cgroup v2 hierarchy: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones (read from `/proc/mounts`, never assumed).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut f = line.split_ascii_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        // /proc/mounts escapes spaces as \040; a cgroup2 mount point with one is not worth
        // supporting, and a wrong path only fails the open below with its name.
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The loaded and attached programs. Dropping it detaches them (aya's links).
pub struct ProcessHooks {
    ebpf: Ebpf,
    /// Where they are attached.
    pub cgroup: PathBuf,
}

impl ProcessHooks {
    /// Loads the programs (the verifier runs here) without attaching them.
    pub fn load() -> Result<Self, ProcessError> {
        let mut ebpf = Ebpf::load(PROCESS_OBJECT).map_err(|e| ProcessError::Load(Box::new(e)))?;
        for name in PROGRAMS {
            let prog = ebpf.program_mut(name).ok_or(ProcessError::Missing(name))?;
            let loaded = match prog {
                aya::programs::Program::CgroupSock(p) => p.load(),
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                aya::programs::Program::SockOps(p) => p.load(),
                _ => return Err(ProcessError::Missing(name)),
            };
            loaded.map_err(|e| program_error(name, &e))?;
        }
        if ebpf.map(OWNER_MAP).is_none() {
            return Err(ProcessError::Missing(OWNER_MAP));
        }
        Ok(ProcessHooks {
            ebpf,
            cgroup: PathBuf::new(),
        })
    }

    /// Loads and attaches every program to `cgroup` (the root of the hierarchy, so every
    /// socket of the host is seen) through BPF links, next to any programs others attached
    /// there (links are always `BPF_F_ALLOW_MULTI`: systemd's own cgroup programs keep
    /// working).
    pub fn attach(cgroup: &Path) -> Result<Self, ProcessError> {
        let mut hooks = Self::load()?;
        let dir = File::open(cgroup).map_err(|source| ProcessError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        for name in PROGRAMS {
            let prog = hooks
                .ebpf
                .program_mut(name)
                .ok_or(ProcessError::Missing(name))?;
            // Through a BPF link (Linux 5.7+), which the kernel always attaches as one of
            // many (BPF_F_ALLOW_MULTI) and which takes no flags: aya passes the mode as the
            // link's flags, so `AllowMultiple` would be refused (EINVAL). `Single` is 0.
            let mode = CgroupAttachMode::Single;
            let attached = match prog {
                aya::programs::Program::CgroupSock(p) => p.attach(&dir, mode).map(drop),
                aya::programs::Program::CgroupSockAddr(p) => p.attach(&dir, mode).map(drop),
                aya::programs::Program::SockOps(p) => p.attach(&dir, mode).map(drop),
                _ => return Err(ProcessError::Missing(name)),
            };
            attached.map_err(|e| program_error(name, &e))?;
        }
        hooks.cgroup = cgroup.to_path_buf();
        Ok(hooks)
    }

    /// Attaches at the root of the mounted cgroup v2 hierarchy.
    pub fn attach_root() -> Result<Self, ProcessError> {
        let root = cgroup2_mount().ok_or(ProcessError::NoCgroup2)?;
        Self::attach(&root)
    }

    /// The owner recorded under `key`, if any.
    pub fn owner(&self, key: &FlowKey) -> Result<Option<OwnerRecord>, ProcessError> {
        let map = self
            .ebpf
            .map(OWNER_MAP)
            .ok_or(ProcessError::Missing(OWNER_MAP))?;
        let owners: BpfHashMap<&MapData, FlowKey, OwnerRecord> =
            BpfHashMap::try_from(map).map_err(|e| ProcessError::Map(Box::new(e)))?;
        match owners.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(ProcessError::Map(Box::new(e))),
        }
    }
}

/// The error with its causes on one line (aya's syscall errors keep the errno in a source).
fn program_error(name: &'static str, e: &aya::programs::ProgramError) -> ProcessError {
    let mut reason = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        reason.push_str(": ");
        reason.push_str(&c.to_string());
        cause = c.source();
    }
    ProcessError::Program { name, reason }
}

/// The cookie of this process's network namespace (0 when the kernel cannot tell: before
/// 5.14, records of every namespace are then taken).
pub fn own_netns_cookie() -> u64 {
    // SAFETY: a plain socket, closed below; getsockopt writes at most `len` bytes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return 0;
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        libc::close(fd);
        if rc == 0 {
            cookie
        } else {
            0
        }
    }
}

/// The addresses of this network namespace's interfaces, as `FlowKey` address words.
pub fn local_addresses() -> std::io::Result<HashSet<Addr>> {
    let mut out = HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cur = head;
        while let Some(ifa) = cur.as_ref() {
            if let Some(sa) = ifa.ifa_addr.as_ref() {
                match i32::from(sa.sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.insert(ipv4_mapped(sin.sin_addr.s_addr.to_ne_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.insert(sensor_common::ipv6_words(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// What the host knows about one of its flows, handed to the engine once per flow (and again
/// when a late owner is found).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFlow {
    pub key: FlowKey,
    /// Neither endpoint is an address of this host's network namespace.
    pub forwarded: bool,
    /// The socket's owner, when one was recorded in this namespace.
    pub owner: Option<OwnerRecord>,
}

/// Counts of the join, for the run summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    pub attributed: u64,
    pub local_without_owner: u64,
    pub forwarded: u64,
    pub other_namespace: u64,
}

/// The per-poll join of kernel flows with the host's sockets ([module docs](self)).
pub struct HostView {
    hooks: Option<ProcessHooks>,
    netns_cookie: u64,
    local: HashSet<Addr>,
    /// Jiffies at the start of the previous poll: flows first seen since are new.
    since_jiffies: u64,
    /// Local flows whose owner was not there yet: the polls left to look again, and the local
    /// endpoint.
    retry: HashMap<FlowKey, (u8, (Addr, u16))>,
    /// Local flows the hooks never named, for the next scan of /proc ([`sockets`]).
    scan_wait: HashMap<FlowKey, (Addr, u16)>,
    /// Polls since the last scan.
    polls_since_scan: u32,
    /// Owners the last scan found, handed on with the next batch.
    found: Vec<HostFlow>,
    /// Flows looked up in this poll.
    lookups: u32,
    cgroup_root: Option<PathBuf>,
    pub stats: HostStats,
}

/// Polls between two scans of /proc at most: a host whose older listeners keep accepting
/// would otherwise walk every process's descriptors at every poll.
const SCAN_EVERY_POLLS: u32 = 5;

impl HostView {
    /// A view with `hooks` (None: no cgroup hooks; owners come only from /proc scans).
    pub fn new(hooks: Option<ProcessHooks>) -> Self {
        HostView {
            hooks,
            netns_cookie: own_netns_cookie(),
            local: HashSet::new(),
            since_jiffies: 0,
            retry: HashMap::new(),
            scan_wait: HashMap::new(),
            polls_since_scan: SCAN_EVERY_POLLS,
            found: Vec::new(),
            lookups: 0,
            cgroup_root: cgroup2_mount(),
            stats: HostStats::default(),
        }
    }

    /// Starts a poll at kernel time `jiffies`: re-reads the interface addresses (DHCP, a new
    /// interface), scans /proc for the owners of local flows the hooks never named (at most
    /// every [`SCAN_EVERY_POLLS`] polls), and remembers where the previous poll began.
    pub fn begin_poll(&mut self, jiffies: u64) -> u64 {
        match local_addresses() {
            Ok(a) => self.local = a,
            Err(e) => log::warn!("cannot read this host's addresses (getifaddrs): {e}"),
        }
        self.lookups = 0;
        self.polls_since_scan = self.polls_since_scan.saturating_add(1);
        if !self.scan_wait.is_empty() && self.polls_since_scan >= SCAN_EVERY_POLLS {
            self.polls_since_scan = 0;
            let owners = sockets::scan(
                Path::new("/proc"),
                self.cgroup_root.as_deref(),
                &self.scan_wait,
                crate::clock::monotonic_ns(),
            );
            self.stats.attributed += owners.len() as u64;
            self.stats.local_without_owner += (self.scan_wait.len() - owners.len()) as u64;
            self.scan_wait.clear();
            self.found
                .extend(owners.into_iter().map(|(key, rec)| HostFlow {
                    key,
                    forwarded: false,
                    owner: Some(rec),
                }));
        }
        std::mem::replace(&mut self.since_jiffies, jiffies)
    }

    /// The host's view of the flows of one kernel batch: one [`HostFlow`] for each flow first
    /// seen at or after `since` (the jiffies [`Self::begin_poll`] returned), for each flow
    /// still waiting for its owner that now has one, and what the last scan found.
    pub fn join(&mut self, since: u64, keys: &[FlowKey], values: &[FlowStats]) -> Vec<HostFlow> {
        let mut out = std::mem::take(&mut self.found);
        for (key, stats) in keys.iter().zip(values) {
            let retrying = self.retry.contains_key(key);
            if stats.first_seen < since && !retrying {
                continue;
            }
            let lo_local = self.local.contains(&key.addr_lo);
            let hi_local = self.local.contains(&key.addr_hi);
            if !lo_local && !hi_local {
                self.stats.forwarded += 1;
                out.push(HostFlow {
                    key: *key,
                    forwarded: true,
                    owner: None,
                });
                continue;
            }
            if self.lookups >= MAX_LOOKUPS_PER_POLL {
                self.stats.local_without_owner += 1;
                self.retry.remove(key);
                out.push(HostFlow {
                    key: *key,
                    forwarded: false,
                    owner: None,
                });
                continue;
            }
            self.lookups += 1;
            let owner = self.find_owner(key, lo_local, hi_local);
            if owner.is_some() {
                self.retry.remove(key);
                self.stats.attributed += 1;
            } else if let Some((left, local)) = self.retry.get_mut(key) {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    let local = *local;
                    self.retry.remove(key);
                    self.wait_for_scan(key, local);
                }
                continue;
            } else {
                let local = if lo_local {
                    (key.addr_lo, key.port_lo)
                } else {
                    (key.addr_hi, key.port_hi)
                };
                if self.hooks.is_none() {
                    self.wait_for_scan(key, local);
                } else if self.retry.len() < MAX_RETRY {
                    self.retry.insert(*key, (RETRY_POLLS, local));
                } else {
                    self.stats.local_without_owner += 1;
                }
            }
            out.push(HostFlow {
                key: *key,
                forwarded: false,
                owner,
            });
        }
        out
    }

    fn wait_for_scan(&mut self, key: &FlowKey, local: (Addr, u16)) {
        if self.scan_wait.len() < MAX_RETRY {
            self.scan_wait.insert(*key, local);
        } else {
            self.stats.local_without_owner += 1;
        }
    }

    /// Forgets flows that ended.
    pub fn ended(&mut self, keys: &[FlowKey]) {
        if self.retry.is_empty() && self.scan_wait.is_empty() {
            return;
        }
        for k in keys {
            self.retry.remove(k);
            self.scan_wait.remove(k);
        }
    }

    fn find_owner(&mut self, key: &FlowKey, lo_local: bool, hi_local: bool) -> Option<OwnerRecord> {
        let hooks = self.hooks.as_ref()?;
        let mut candidates = vec![*key];
        if key.proto == 17 {
            // The UDP hooks' partial keys: the local address unspecified, the local port not
            // yet assigned. Both sides when both addresses are this host's (loopback).
            for (local_is_lo, local) in [(true, lo_local), (false, hi_local)] {
                if !local {
                    continue;
                }
                let (addr, port, raddr, rport) = if local_is_lo {
                    (key.addr_lo, key.port_lo, key.addr_hi, key.port_hi)
                } else {
                    (key.addr_hi, key.port_hi, key.addr_lo, key.port_lo)
                };
                let unspec = if addr[..3] == [0, 0, IPV4_MAPPED_WORD] {
                    ipv4_mapped([0; 4])
                } else {
                    [0; 4]
                };
                for (a, p) in [(unspec, port), (addr, 0), (unspec, 0)] {
                    candidates.push(FlowKey::canonical(&a, p, &raddr, rport, 17).0);
                }
            }
        }
        for k in candidates {
            let rec = match hooks.owner(&k) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    log::warn!("process attribution: {e}");
                    return None;
                }
            };
            if self.netns_cookie != 0 && rec.netns_cookie != self.netns_cookie {
                self.stats.other_namespace += 1;
                continue;
            }
            if k != *key && !matches!(rec.hook, HOOK_CONNECT | HOOK_SENDMSG) {
                continue;
            }
            return Some(rec);
        }
        None
    }
}
