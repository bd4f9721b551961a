//! Names for a socket's owner: from the kernel's record (pid, thread, comm, uid/gid, cgroup
//! id; see `source::process`) to what an analyst reads: the process name and executable, the
//! user name, the cgroup path, and the container or systemd unit the cgroup belongs to.
//!
//! Why here: this is enrichment of a conversation, like DNS names or intel; detectors never
//! read it and never learn which source fed them. Only the live source hands owners over, so
//! replays never look at this machine's /proc.
//!
//! Everything read here is influenced by the process being described (its comm, its
//! executable's path, container names in cgroup paths): every read is bounded, ids are
//! accepted only in their exact shape (64 hex digits), and the strings go out only as escaped
//! values (JSON through serde, the other formats through their escapers).
//!
//! Processes exit and pids are reused: the executable is read at first sight and kept with
//! the record (cached by pid and comm), and only while the process still has the comm the
//! kernel recorded. Without the right to read `/proc/PID/exe` (an agent switched to
//! `--user` reading another user's process) the executable is left out, never guessed.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use sensor_common::process::{OwnerRecord, HOOK_ACTIVE, HOOK_CONNECT, HOOK_PASSIVE, HOOK_SENDMSG};

use crate::{
    flow::host::{HostSide, ProcessInfo},
    source::sockets::read_bounded,
};

/// Most owners, cgroups or users cached; a full cache starts again empty (a host with more
/// live processes than this pays a few more /proc reads, nothing else).
const MAX_CACHED: usize = 8192;
/// Longest `/proc/PID/cgroup` read (a process belongs to a few hierarchies, each one line).
const MAX_CGROUP_FILE: u64 = 64 * 1024;
/// Longest path kept (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;
/// Most path segments looked at for a container or unit.
const MAX_SEGMENTS: usize = 64;

/// The cgroup a record names, with what its path says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    pub path: Option<String>,
    pub container_id: Option<String>,
    pub container_runtime: Option<&'static str>,
    pub service: Option<String>,
}

/// Turns kernel owner records into [`HostSide`]s, with caches.
pub struct Resolver {
    /// The cgroup v2 mount, to check a path read from /proc against the recorded cgroup id.
    cgroup_root: Option<PathBuf>,
    /// Where /proc is (tests point it elsewhere).
    proc_root: PathBuf,
    owners: HashMap<OwnerKey, Arc<HostSide>>,
    cgroups: HashMap<u64, CgroupInfo>,
    users: HashMap<u32, Option<String>>,
    forwarded: Arc<HostSide>,
    local: Arc<HostSide>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct OwnerKey {
    pid: u32,
    tid: u32,
    uid: u32,
    gid: u32,
    cgroup_id: u64,
    comm: [u8; 16],
    hook: u8,
}

impl Resolver {
    pub fn new(cgroup_root: Option<PathBuf>) -> Self {
        Resolver {
            cgroup_root,
            proc_root: PathBuf::from("/proc"),
            owners: HashMap::new(),
            cgroups: HashMap::new(),
            users: HashMap::new(),
            forwarded: Arc::new(HostSide {
                forwarded: true,
                process: None,
            }),
            local: Arc::new(HostSide {
                forwarded: false,
                process: None,
            }),
        }
    }

    /// The host's side of a flow: shared values for forwarded flows and local ones without
    /// an owner (no allocation per flow), one per distinct owner otherwise.
    pub fn host_side(&mut self, forwarded: bool, owner: Option<&OwnerRecord>) -> Arc<HostSide> {
        let Some(rec) = owner else {
            return if forwarded {
                self.forwarded.clone()
            } else {
                self.local.clone()
            };
        };
        let o = &rec.owner;
        let key = OwnerKey {
            pid: o.pid,
            tid: o.tid,
            uid: o.uid,
            gid: o.gid,
            cgroup_id: o.cgroup_id,
            comm: o.comm,
            hook: rec.hook,
        };
        if let Some(h) = self.owners.get(&key) {
            return h.clone();
        }
        let info = self.resolve(rec);
        let side = Arc::new(HostSide {
            forwarded,
            process: Some(Arc::new(info)),
        });
        if self.owners.len() >= MAX_CACHED {
            self.owners.clear();
        }
        self.owners.insert(key, side.clone());
        side
    }

    fn resolve(&mut self, rec: &OwnerRecord) -> ProcessInfo {
        let o = &rec.owner;
        let thread_name = comm_str(&o.comm);
        let proc_dir = self.proc_root.join(o.pid.to_string());
        let process_comm =
            read_bounded(&proc_dir.join("comm"), 64).map(|s| s.trim_end_matches('\n').to_string());
        let thread_comm = read_bounded(
            &proc_dir.join("task").join(o.tid.to_string()).join("comm"),
            64,
        )
        .map(|s| s.trim_end_matches('\n').to_string());
        // The same process as the kernel saw (not a later one under a reused pid): the
        // recording thread, or the process, still has the recorded comm, or the process
        // started before the record was written (a reused pid starts after it).
        let same = thread_comm.as_deref() == Some(thread_name.as_str())
            || process_comm.as_deref() == Some(thread_name.as_str())
            || start_ns(&proc_dir).is_some_and(|s| rec.ktime_ns != 0 && s <= rec.ktime_ns);
        let executable = if same {
            std::fs::read_link(proc_dir.join("exe"))
                .ok()
                .map(|p| bounded(p.to_string_lossy().into_owned()))
        } else {
            None
        };
        let name = match (&process_comm, same) {
            (Some(c), true) => c.clone(),
            _ => thread_name.clone(),
        };
        let cgroup = self.cgroup(o.cgroup_id, o.pid, same);
        ProcessInfo {
            pid: o.pid,
            tid: o.tid,
            name,
            thread_name,
            executable,
            uid: o.uid,
            gid: o.gid,
            user_name: self.user(o.uid),
            cgroup_id: o.cgroup_id,
            cgroup: cgroup.path,
            container_id: cgroup.container_id,
            container_runtime: cgroup.container_runtime,
            service: cgroup.service,
            from: hook_name(rec.hook),
        }
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        if let Some(u) = self.users.get(&uid) {
            return u.clone();
        }
        let name =
            uzers::get_user_by_uid(uid).map(|u| bounded(u.name().to_string_lossy().into_owned()));
        if self.users.len() >= MAX_CACHED {
            self.users.clear();
        }
        self.users.insert(uid, name.clone());
        name
    }

    /// The cgroup of id `id`, from the process's /proc entry, checked against the id (the
    /// process may have moved since it made the socket: then only the id is known).
    fn cgroup(&mut self, id: u64, pid: u32, alive: bool) -> CgroupInfo {
        if let Some(c) = self.cgroups.get(&id) {
            return c.clone();
        }
        let path = alive
            .then(|| {
                read_bounded(
                    &self.proc_root.join(pid.to_string()).join("cgroup"),
                    MAX_CGROUP_FILE,
                )
            })
            .flatten()
            .and_then(|text| unified_path(&text).map(str::to_string))
            .filter(|p| match &self.cgroup_root {
                Some(root) => std::fs::metadata(root.join(p.trim_start_matches('/')))
                    .is_ok_and(|m| m.ino() == id),
                None => true,
            });
        let Some(path) = path else {
            // Not cached: a later owner in the same cgroup may still be alive to tell.
            return CgroupInfo::default();
        };
        let info = describe_cgroup(&path);
        if self.cgroups.len() >= MAX_CACHED {
            self.cgroups.clear();
        }
        self.cgroups.insert(id, info.clone());
        info
    }
}

/// When the process started, in ns since boot (`/proc/PID/stat` field 22, in clock ticks).
/// The kernel's records carry CLOCK_MONOTONIC, which equals time since boot on a host that
/// never suspended and is behind it on one that did: then this says "later" and the check
/// above falls back to the comm alone, never the other way.
fn start_ns(proc_dir: &Path) -> Option<u64> {
    let stat = read_bounded(&proc_dir.join("stat"), 1024)?;
    // The comm (field 2) is in parentheses and may hold anything: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_ascii_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(ticks.saturating_mul(1_000_000_000 / hz))
}

/// `sensor.process_from`: the hook that recorded the owner.
pub fn hook_name(hook: u8) -> &'static str {
    match hook {
        HOOK_ACTIVE => "connect",
        HOOK_PASSIVE => "accept",
        HOOK_CONNECT => "udp_connect",
        HOOK_SENDMSG => "udp_sendmsg",
        crate::source::sockets::HOOK_PROC => "proc",
        _ => "unknown",
    }
}

/// A kernel comm (NUL padded, maybe unterminated) as text.
fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_PATH {
        let mut cut = MAX_PATH;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The cgroup v2 path in the text of `/proc/PID/cgroup` (the `0::` line).
pub fn unified_path(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/') && p.len() <= MAX_PATH)
}

/// What a cgroup path says: the container (Docker, containerd, CRI-O, Podman; the systemd
/// and cgroupfs drivers' layouts) or else the innermost systemd service unit.
pub fn describe_cgroup(path: &str) -> CgroupInfo {
    let mut info = CgroupInfo {
        path: Some(bounded(path.to_string())),
        ..CgroupInfo::default()
    };
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .take(MAX_SEGMENTS)
        .collect();
    // The innermost container wins (a container in a pod slice, docker in docker).
    for (i, seg) in segments.iter().enumerate().rev() {
        let parent = if i > 0 { segments[i - 1] } else { "" };
        if let Some((id, runtime)) = container_of(seg, parent) {
            info.container_id = Some(id.to_string());
            info.container_runtime = runtime;
            return info;
        }
    }
    info.service = segments
        .iter()
        .rev()
        .find(|s| s.ends_with(".service") && s.len() > ".service".len())
        .map(|s| s.to_string());
    info
}

/// The container id (64 hex digits) a path segment names, and its runtime when the layout
/// tells: `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope` (systemd driver), `/docker/<id>`, `/libpod_parent/libpod-<id>`, or a
/// bare id under a kubepods slice (cgroupfs driver; the runtime is not in the path).
fn container_of<'a>(seg: &'a str, parent: &str) -> Option<(&'a str, Option<&'static str>)> {
    let scoped = seg.strip_suffix(".scope").unwrap_or(seg);
    for (prefix, runtime) in [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
    ] {
        if let Some(id) = scoped.strip_prefix(prefix) {
            return is_container_id(id).then_some((id, Some(runtime)));
        }
    }
    if is_container_id(seg) {
        let runtime = match parent {
            "docker" => Some("docker"),
            _ => None,
        };
        if parent == "docker" || parent.starts_with("kubepods") || parent.starts_with("pod") {
            return Some((seg, runtime));
        }
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::process::SockOwner;

    const ID: &str = "3f2a9c1d0b8e7f6a5d4c3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a291807f6e5";

    #[test]
    fn container_layouts() {
        for (path, runtime) in [
            (format!("/system.slice/docker-{ID}.scope"), Some("docker")),
            (format!("/docker/{ID}"), Some("docker")),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice/cri-containerd-{ID}.scope"),
                Some("containerd"),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/crio-{ID}.scope"),
                Some("cri-o"),
            ),
            (format!("/machine.slice/libpod-{ID}.scope/container"), Some("podman")),
            (format!("/kubepods/besteffort/pod0c1d/{ID}"), None),
        ] {
            let c = describe_cgroup(&path);
            assert_eq!(c.container_id.as_deref(), Some(ID), "{path}");
            assert_eq!(c.container_runtime, runtime, "{path}");
            assert_eq!(c.service, None, "{path}");
            assert_eq!(c.path.as_deref(), Some(path.as_str()));
        }
    }

    #[test]
    fn systemd_units_and_non_ids() {
        let c = describe_cgroup("/system.slice/nginx.service");
        assert_eq!(c.service.as_deref(), Some("nginx.service"));
        assert_eq!(c.container_id, None);
        // Not 64 lowercase hex digits: not an id, whatever it is called.
        for path in [
            "/system.slice/docker-abc.scope",
            &format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
            &format!("/docker/{ID}0"),
            &format!("/user.slice/{ID}"),
            "/user.slice/user-1000.slice/session-3.scope",
            "/.service",
        ] {
            let c = describe_cgroup(path);
            assert_eq!(c.container_id, None, "{path}");
            assert_eq!(c.service, None, "{path}");
        }
    }

    #[test]
    fn hostile_paths_are_bounded() {
        let long = format!("/{}", "a/".repeat(10_000));
        let c = describe_cgroup(&long);
        assert!(c.path.as_deref().is_some_and(|p| p.len() <= MAX_PATH));
        assert_eq!(unified_path(&format!("0::{long}")), None);
        let odd = "/system.slice/x\n\"{}.service";
        assert_eq!(
            describe_cgroup(odd).service.as_deref(),
            Some("x\n\"{}.service")
        );
    }

    #[test]
    fn unified_line_is_found_among_v1_lines() {
        let text = "12:pids:/user.slice\n1:name=systemd:/user.slice\n0::/test/x\n";
        assert_eq!(unified_path(text), Some("/test/x"));
        assert_eq!(unified_path("1:cpu:/a\n"), None);
    }

    /// This test process itself, as the kernel would record it: names from the real /proc.
    #[test]
    fn resolves_a_live_process() {
        let pid = std::process::id();
        let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
        let comm = comm.trim_end();
        let mut raw = [0u8; 16];
        raw[..comm.len().min(16)].copy_from_slice(&comm.as_bytes()[..comm.len().min(16)]);
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let rec = OwnerRecord {
            owner: SockOwner {
                pid,
                tid: pid,
                uid,
                gid: 0,
                cgroup_id: 1,
                comm: raw,
            },
            hook: HOOK_ACTIVE,
            ..OwnerRecord::default()
        };
        let mut r = Resolver::new(None);
        let side = r.host_side(false, Some(&rec));
        let p = side.process.as_ref().expect("process");
        assert_eq!(p.pid, pid);
        assert_eq!(p.name, comm);
        assert_eq!(
            p.executable.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(Path::to_str)
        );
        assert_eq!(p.from, "connect");
        assert!(p.user_name.is_some(), "uid {uid} has a name here");
        // The same owner again is the same value (cached), forwarded flows share one.
        assert!(Arc::ptr_eq(&side, &r.host_side(false, Some(&rec))));
        assert!(Arc::ptr_eq(
            &r.host_side(true, None),
            &r.host_side(true, None)
        ));
        // A reused pid (another comm) gets no executable.
        let mut other = rec;
        other.owner.comm = *b"not-this-proc\0\0\0";
        let side = r.host_side(false, Some(&other));
        let p = side.process.as_ref().expect("process");
        assert_eq!(
            (p.name.as_str(), p.executable.as_deref()),
            ("not-this-proc", None)
        );
        // A thread that renamed itself or exited, recorded after the process started (so not a
        // reused pid): still this process.
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        other.ktime_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
        // Another (exited) thread: not the cached owner above.
        other.owner.tid = u32::MAX;
        let side = r.host_side(false, Some(&other));
        let p = side.process.as_ref().expect("process");
        assert_eq!(p.name, comm);
        assert!(p.executable.is_some());
    }
}
