//! The ABI of the process-attribution programs (`sensor-ebpf/src/bin/process.rs`): who owns
//! the sockets of the connections this host opens or accepts.
//!
//! A module of its own, outside the datapath's fingerprint (`SENSOR_ABI_HASH` covers
//! `lib.rs`): these maps are never pinned (the programs live as long as the agent that
//! attached them), so changing them must not discard the pinned flow maps.
//!
//! Same rules as the datapath ABI: `repr(C)`, explicit padding, integers only, sizes asserted.

use crate::FlowKey;

/// Length of a task's `comm` (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Capacity of the `OWNERS` map. The agent reads an owner once, at the first poll after the
/// flow appears, so the map only has to hold the connections opened within one poll interval.
pub const MAX_OWNERS: u32 = 16_384;

/// The task that created (or connected) a socket, taken in process context by the
/// `cgroup/sock_create` and `cgroup/connect*` hooks and kept in the socket's storage: the
/// established callbacks may run in softirq context, where the "current" task is whoever
/// the interrupt landed on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    /// Thread group id: the process id user space knows.
    pub pid: u32,
    /// The thread's id.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The cgroup v2 id of the task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// The thread's `comm`, NUL padded (not necessarily NUL terminated when 16 bytes long).
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<SockOwner>() == 40);

/// `OwnerRecord::hook`: TCP, from the established callback of a connecting socket.
pub const HOOK_ACTIVE: u8 = 1;
/// `OwnerRecord::hook`: TCP, from the established callback of an accepted socket (the owner
/// is the listener's, copied into the child's storage by the kernel).
pub const HOOK_PASSIVE: u8 = 2;
/// `OwnerRecord::hook`: UDP `connect()`; the local port may still be unassigned (0).
pub const HOOK_CONNECT: u8 = 3;
/// `OwnerRecord::hook`: UDP `sendmsg()` with an address; the local address may be unbound
/// (the route picks it after the hook).
pub const HOOK_SENDMSG: u8 = 4;

/// A socket's owner under its connection's canonical [`FlowKey`] (the same key the datapath
/// counts the flow under), in the `OWNERS` LRU hash.
///
/// When the hook did not know the local address (unbound UDP sockets), the key holds the
/// unspecified address of the family (`::ffff:0.0.0.0` or `::`) on the local side, and port
/// 0 when the local port was not assigned yet; the agent looks those keys up after the exact
/// one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerRecord {
    pub owner: SockOwner,
    /// The network namespace of the socket (`bpf_get_netns_cookie`): the agent keeps only
    /// sockets of its own namespace, so a flow it merely forwards is never given the process
    /// of another namespace on the same kernel.
    pub netns_cookie: u64,
    /// `bpf_ktime_get_ns()` when written.
    pub ktime_ns: u64,
    /// One of the `HOOK_*` values.
    pub hook: u8,
    /// 1 when the socket's own endpoint is the key's `lo` side.
    pub local_is_lo: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<OwnerRecord>() == 64);

/// The canonical key of a socket's connection, and whether the local endpoint is `lo`.
#[inline(always)]
pub fn owner_key(
    local: &crate::Addr,
    local_port: u16,
    remote: &crate::Addr,
    remote_port: u16,
    proto: u8,
) -> (FlowKey, u8) {
    let (key, dir) = FlowKey::canonical(local, local_port, remote, remote_port, proto);
    (key, (dir == crate::DIR_LO_TO_HI) as u8)
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), integers only, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::SockOwner {}
    unsafe impl aya::Pod for super::OwnerRecord {}
}
