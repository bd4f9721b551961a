//! Owners of sockets older than the agent, from /proc: the socket tables of the agent's
//! network namespace (`/proc/net/tcp`, `tcp6`, `udp`, `udp6`) give a connection's inode, the
//! file descriptors of the processes (`/proc/PID/fd`) the process holding it.
//!
//! Why: the cgroup hooks (`source::process`) see sockets made after they were attached; a
//! miner that ran before the agent started, or before it restarted, would stay nameless for
//! the whole of its session. This is the fallback for local flows the hooks never named, and
//! it must stay one: one scan per poll at most, only while such flows wait, everything read
//! bounded (lines, processes, descriptors). What it finds is an [`OwnerRecord`] with hook
//! [`HOOK_PROC`], named by the enrichment like any other.

use std::{
    collections::{HashMap, HashSet},
    io::Read,
    os::unix::fs::MetadataExt,
    path::Path,
};

use sensor_common::{process::OwnerRecord, Addr, FlowKey};

/// `OwnerRecord::hook` of an owner found in /proc (user space only; the kernel's hooks use
/// 1-4).
pub const HOOK_PROC: u8 = 16;

/// Most bytes read of one socket table.
const MAX_TABLE: u64 = 64 << 20;
/// Most processes and descriptors looked at in one scan.
const MAX_PROCESSES: usize = 65_536;
const MAX_FDS: usize = 1 << 20;

/// One socket of a table: its canonical flow key (the remote side unspecified for a UDP
/// socket that is not connected) and its inode and uid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    key: FlowKey,
    inode: u64,
    uid: u32,
}

/// The words of a `/proc/net` address: each group of 8 hex digits is one 32-bit word as the
/// kernel printed it (`%08X` of the word in memory), which is the word `FlowKey` holds.
fn parse_addr(hex: &str) -> Option<Addr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok();
    match hex.len() {
        8 => Some(sensor_common::ipv4_mapped(word(hex)?.to_ne_bytes())),
        32 => Some([
            word(&hex[0..8])?,
            word(&hex[8..16])?,
            word(&hex[16..24])?,
            word(&hex[24..32])?,
        ]),
        _ => None,
    }
}

fn parse_endpoint(s: &str) -> Option<(Addr, u16)> {
    let (addr, port) = s.split_once(':')?;
    Some((parse_addr(addr)?, u16::from_str_radix(port, 16).ok()?))
}

/// The sockets of one table's text (`proto` 6 or 17).
fn parse_table(text: &str, proto: u8) -> impl Iterator<Item = (Entry, (Addr, u16))> + '_ {
    text.lines().skip(1).filter_map(move |line| {
        let f: Vec<&str> = line.split_ascii_whitespace().take(10).collect();
        if f.len() < 10 {
            return None;
        }
        let (la, lp) = parse_endpoint(f[1])?;
        let (ra, rp) = parse_endpoint(f[2])?;
        let uid = f[7].parse().ok()?;
        let inode = f[9].parse().ok()?;
        let key = FlowKey::canonical(&la, lp, &ra, rp, proto).0;
        Some((Entry { key, inode, uid }, (la, lp)))
    })
}

/// At most `limit` bytes of a file, as text (lossy): every /proc read of process
/// attribution goes through here.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Option<String> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(limit)
        .read_to_end(&mut buf)
        .ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Finds the owners of `wanted` flows (with the local endpoint of each): the socket whose
/// 4-tuple is the flow's, or for UDP an unconnected socket bound to the flow's local port
/// (on its address or the unspecified one). `proc_root` is `/proc`; `cgroup_root` the cgroup
/// v2 mount, to give the owner its cgroup id. `now_ns`: CLOCK_MONOTONIC, the record's time.
pub fn scan(
    proc_root: &Path,
    cgroup_root: Option<&Path>,
    wanted: &HashMap<FlowKey, (Addr, u16)>,
    now_ns: u64,
) -> HashMap<FlowKey, OwnerRecord> {
    // With the rank of the entry kept (see below).
    let mut found: HashMap<FlowKey, (Entry, u8)> = HashMap::new();
    // UDP sockets not connected, by (local address, local port).
    let mut udp_bound: HashMap<(Addr, u16), Entry> = HashMap::new();
    for (name, proto) in [("tcp", 6), ("tcp6", 6), ("udp", 17), ("udp6", 17)] {
        let Some(text) = read_bounded(&proc_root.join("net").join(name), MAX_TABLE) else {
            continue;
        };
        for (entry, local) in parse_table(&text, proto) {
            if let Some(want_local) = wanted.get(&entry.key) {
                // Both ends of a connection inside this host have the same key: prefer the
                // end on the wanted local side, and never a socket not yet accepted (inode
                // 0, held by no process) over one a process holds.
                let rank = |e: &Entry, local: bool| u8::from(e.inode != 0) * (1 + u8::from(local));
                let new_rank = rank(&entry, local == *want_local);
                let better = found.get(&entry.key).is_none_or(|(_, old)| new_rank > *old);
                if better {
                    found.insert(entry.key, (entry, new_rank));
                }
            } else if proto == 17 {
                udp_bound.entry(local).or_insert(entry);
            }
        }
    }
    for (key, (addr, port)) in wanted {
        if key.proto != 17 || found.contains_key(key) {
            continue;
        }
        let unspec = if addr[..3] == [0, 0, sensor_common::IPV4_MAPPED_WORD] {
            sensor_common::ipv4_mapped([0; 4])
        } else {
            [0; 4]
        };
        if let Some(e) = udp_bound
            .get(&(*addr, *port))
            .or_else(|| udp_bound.get(&(unspec, *port)))
            .or_else(|| udp_bound.get(&([0; 4], *port)))
        {
            found.insert(*key, (*e, 0));
        }
    }
    if found.is_empty() {
        return HashMap::new();
    }
    let found: HashMap<FlowKey, Entry> = found.into_iter().map(|(k, (e, _))| (k, e)).collect();
    let inodes: HashSet<u64> = found
        .values()
        .map(|e| e.inode)
        .filter(|i| *i != 0)
        .collect();
    let holders = holders(proc_root, &inodes);
    found
        .into_iter()
        .filter_map(|(key, e)| {
            let pid = *holders.get(&e.inode)?;
            Some((key, record(proc_root, cgroup_root, pid, e.uid, now_ns)))
        })
        .collect()
}

/// The process holding each of `inodes` (the first found), from `/proc/PID/fd`.
fn holders(proc_root: &Path, inodes: &HashSet<u64>) -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    let Ok(procs) = std::fs::read_dir(proc_root) else {
        return out;
    };
    let mut fds_seen = 0usize;
    for entry in procs.flatten().take(MAX_PROCESSES) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            fds_seen += 1;
            if fds_seen > MAX_FDS {
                return out;
            }
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(i) = inode.filter(|i| inodes.contains(i)) {
                out.entry(i).or_insert(pid);
                if out.len() == inodes.len() {
                    return out;
                }
            }
        }
    }
    out
}

/// An owner record for process `pid` as /proc shows it now.
fn record(
    proc_root: &Path,
    cgroup_root: Option<&Path>,
    pid: u32,
    uid: u32,
    now_ns: u64,
) -> OwnerRecord {
    let dir = proc_root.join(pid.to_string());
    let mut comm = [0u8; 16];
    if let Some(c) = read_bounded(&dir.join("comm"), 64) {
        let c = c.trim_end_matches('\n').as_bytes();
        let n = c.len().min(15);
        comm[..n].copy_from_slice(&c[..n]);
    }
    let gid = read_bounded(&dir.join("status"), 64 * 1024)
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Gid:"))
                .and_then(|v| v.split_ascii_whitespace().next())
                .and_then(|g| g.parse().ok())
        })
        .unwrap_or(0);
    let cgroup_id = cgroup_root
        .and_then(|root| {
            let text = read_bounded(&dir.join("cgroup"), 64 * 1024)?;
            let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
            std::fs::metadata(root.join(path.trim_start_matches('/')))
                .ok()
                .map(|m| m.ino())
        })
        .unwrap_or(0);
    OwnerRecord {
        owner: sensor_common::process::SockOwner {
            pid,
            tid: pid,
            uid,
            gid,
            cgroup_id,
            comm,
        },
        netns_cookie: 0,
        ktime_ns: now_ns,
        hook: HOOK_PROC,
        local_is_lo: 0,
        _pad: [0; 6],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::ipv4_mapped;

    #[test]
    fn table_lines_become_canonical_keys() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0D05 0200007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 424242 1 0000000000000000 20 4 30 10 -1\n   1: garbage\n";
        let entries: Vec<_> = parse_table(text, 6).collect();
        assert_eq!(entries.len(), 1);
        let (e, local) = entries[0];
        let want = FlowKey::canonical(
            &ipv4_mapped([127, 0, 0, 1]),
            3333,
            &ipv4_mapped([127, 0, 0, 2]),
            40000,
            6,
        )
        .0;
        assert_eq!((e.key, e.inode, e.uid), (want, 424_242, 1000));
        assert_eq!(local, (ipv4_mapped([127, 0, 0, 1]), 3333));
        let v6 = parse_addr("0000000000000000FFFF00000100007F").expect("v6");
        assert_eq!(v6, ipv4_mapped([127, 0, 0, 1]));
        assert_eq!(parse_addr("12345"), None);
    }

    /// This test's own socket, found the way the agent finds a miner older than itself.
    #[test]
    fn finds_the_holder_of_a_live_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (l, r) = (
            client.local_addr().expect("l"),
            client.peer_addr().expect("r"),
        );
        let key = FlowKey::canonical(
            &ipv4_mapped([127, 0, 0, 1]),
            l.port(),
            &ipv4_mapped([127, 0, 0, 1]),
            r.port(),
            6,
        )
        .0;
        let wanted = HashMap::from([(key, (ipv4_mapped([127, 0, 0, 1]), l.port()))]);
        let found = scan(Path::new("/proc"), None, &wanted, 1);
        let rec = found.get(&key).expect("the socket's owner");
        assert_eq!(rec.owner.pid, std::process::id());
        assert_eq!(rec.hook, HOOK_PROC);
    }

    /// A connection inside the host is in the table twice under one key; the end not yet
    /// accepted (inode 0) must not hide the end a process holds, whatever the table's order.
    #[test]
    fn the_held_end_of_a_local_connection_wins_over_one_not_yet_accepted() {
        let root = std::env::temp_dir().join(format!("sensor-sockets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("net")).expect("net");
        std::fs::create_dir_all(root.join("4242/fd")).expect("fd");
        std::os::unix::fs::symlink("socket:[777]", root.join("4242/fd/3")).expect("symlink");
        // 127.0.0.1:40000 -> 127.0.0.1:3333 held as inode 777, and the server's end of
        // the same connection still in the accept queue (inode 0), listed after it.
        let client = "   0: 0100007F:9C40 0100007F:0D05 01 00000000:00000000 00:00000000 00000000  1000        0 777 1";
        let queued = "   1: 0100007F:0D05 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 0 1";
        for order in [[client, queued], [queued, client]] {
            let table = format!(
                "  sl  local_address rem_address   st\n{}\n{}\n",
                order[0], order[1]
            );
            std::fs::write(root.join("net/tcp"), table).expect("tcp");
            let local = ipv4_mapped([127, 0, 0, 1]);
            let key = FlowKey::canonical(&local, 40000, &local, 3333, 6).0;
            let found = scan(&root, None, &HashMap::from([(key, (local, 40000))]), 1);
            assert_eq!(
                found.get(&key).map(|r| r.owner.pid),
                Some(4242),
                "{order:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
