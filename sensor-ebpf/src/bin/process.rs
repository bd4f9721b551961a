//! Process attribution: which task owns the sockets of the connections this host opens or
//! accepts. Cgroup socket hooks, attached by the agent to the root of the cgroup v2
//! hierarchy (this machine kind has no kprobes):
//!
//! - `cgroup/sock_create` (process context, `socket(2)`): remembers the creating task
//!   (pid/tgid, comm, uid/gid, cgroup id) in the socket's storage (`SOCK_OWNERS`, an
//!   `SK_STORAGE` map created with `BPF_F_CLONE`, so a connection accepted from a listening
//!   socket starts with the listener's owner);
//! - `cgroup/connect4|6` (process context, `connect(2)`): the same for sockets created before
//!   the agent attached, and for UDP the owner record itself (remote endpoint known, the local
//!   port maybe not yet: see `sensor_common::process::OwnerRecord`);
//! - `cgroup/sendmsg4|6` (process context, UDP with an address): the owner record of each
//!   datagram's peer; the local port is bound by then, the local address often not;
//! - `sock_ops` (`ACTIVE_ESTABLISHED_CB`, `PASSIVE_ESTABLISHED_CB`, both roles of TCP): the
//!   full 4-tuple, joined with the owner from the socket's storage. These callbacks may run in
//!   softirq context, where the current task is not the owner: they never read it.
//!
//! Records go into `OWNERS`, an LRU hash keyed by the canonical `FlowKey` the XDP program
//! counts the flow under, rather than into a ring buffer: the kernel bounds its memory, a slow
//! agent loses nothing but the oldest owners, and the agent looks an owner up only for the
//! flows it sees with an endpoint on this host (one lookup per new flow, none for forwarded
//! traffic), so the join costs the packet path nothing: the XDP and TC programs are not
//! touched and do not read this map.
//!
//! Every program returns 1 (allow): the sensor observes, it never refuses a socket.
#![no_std]
#![no_main]

use core::{
    ffi::c_void,
    ptr::{addr_of, read_volatile},
};

use aya_ebpf::{
    bindings::{bpf_sock, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::LruHashMap,
    helpers::generated::{bpf_get_netns_cookie, bpf_sk_storage_get},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    macros::{btf_map, cgroup_sock, cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use sensor_common::{
    ipv4_mapped,
    process::{
        owner_key, OwnerRecord, SockOwner, HOOK_ACTIVE, HOOK_CONNECT, HOOK_PASSIVE, HOOK_SENDMSG,
        MAX_OWNERS,
    },
    Addr, IPV4_MAPPED_WORD,
};

/// Four words of a context or socket field, each read straight from `base` with a constant
/// offset: the verifier refuses loads through a copied-and-moved context or socket pointer,
/// which a whole-array copy compiles to.
macro_rules! words {
    ($base:expr, $field:ident) => {
        [
            read_volatile(addr_of!((*$base).$field[0])),
            read_volatile(addr_of!((*$base).$field[1])),
            read_volatile(addr_of!((*$base).$field[2])),
            read_volatile(addr_of!((*$base).$field[3])),
        ]
    };
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;

/// `BPF_F_NO_PREALLOC` (required for socket storage) | `BPF_F_CLONE` (an accepted socket
/// gets a copy of its listener's storage).
const SK_STORAGE_FLAGS: usize = 1 | (1 << 9);
const BPF_MAP_TYPE_SK_STORAGE: usize = 24;

/// A BTF socket-storage map definition with `BPF_F_CLONE`, which aya-ebpf's `SkStorage` does
/// not let one set. The fields are the BTF map-definition convention (`.maps` section): the
/// loader reads the types, nothing dereferences the pointers.
#[repr(C)]
pub struct CloneSkStorage {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE],
    key: *const i32,
    value: *const SockOwner,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; SK_STORAGE_FLAGS],
}

// SAFETY: placeholder pointers the loader patches; never dereferenced from Rust.
unsafe impl Sync for CloneSkStorage {}

impl CloneSkStorage {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    #[inline(always)]
    fn as_ptr(&self) -> *mut c_void {
        (self as *const Self).cast_mut().cast()
    }

    /// A copy of the owner stored on `sk`, created from `init` when `init` is given and
    /// there is none. A copy: the stored value is never written after creation.
    #[inline(always)]
    fn get(&self, sk: *mut c_void, init: Option<&mut SockOwner>) -> Option<SockOwner> {
        let (value, flags) = match init {
            Some(v) => (v as *mut SockOwner, BPF_SK_STORAGE_GET_F_CREATE as u64),
            None => (core::ptr::null_mut(), 0),
        };
        // SAFETY: the helper returns null or a pointer to this map's value for `sk`, valid
        // for the program's run.
        unsafe {
            bpf_sk_storage_get(self.as_ptr(), sk, value.cast(), flags)
                .cast::<SockOwner>()
                .as_ref()
                .copied()
        }
    }
}

#[btf_map]
static SOCK_OWNERS: CloneSkStorage = CloneSkStorage::new();

#[btf_map]
static OWNERS: LruHashMap<sensor_common::FlowKey, OwnerRecord, { MAX_OWNERS as usize }> =
    LruHashMap::new();

/// The current task, in process context.
#[inline(always)]
fn current_owner() -> SockOwner {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    SockOwner {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

#[inline(always)]
fn record(key: &sensor_common::FlowKey, owner: &SockOwner, netns: u64, hook: u8, lo: u8) {
    let rec = OwnerRecord {
        owner: *owner,
        netns_cookie: netns,
        // SAFETY: helper without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        hook,
        local_is_lo: lo,
        _pad: [0; 6],
    };
    // A full map evicts its oldest record; nothing else can fail that matters here.
    let _ = OWNERS.insert(key, rec, 0);
}

#[cgroup_sock(sock_create)]
pub fn process_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context is the new socket.
    let (family, protocol) = unsafe { ((*ctx.sock).family, (*ctx.sock).protocol) };
    if (family == AF_INET || family == AF_INET6)
        && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP)
    {
        let mut owner = current_owner();
        let _ = SOCK_OWNERS.get(ctx.as_ptr(), Some(&mut owner));
    }
    1
}

/// The address words of a `bpf_sock_addr`/`bpf_sock` IPv4 field (network order as loaded).
#[inline(always)]
fn v4(word: u32) -> Addr {
    [0, 0, IPV4_MAPPED_WORD, word]
}

/// Records a UDP socket's owner under what the hook knows of its connection.
#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, v6: bool, hook: u8) -> i32 {
    // SAFETY: the verifier checks every context and socket field access below.
    unsafe {
        let sk: *mut bpf_sock = read_volatile(addr_of!((*ctx.sock_addr).__bindgen_anon_1.sk));
        let mut cur = current_owner();
        let owner = match SOCK_OWNERS.get(sk.cast(), Some(&mut cur)) {
            Some(o) => o,
            None => cur,
        };
        if read_volatile(addr_of!((*ctx.sock_addr).protocol)) != IPPROTO_UDP {
            // TCP: the established callback writes the record with the full 4-tuple; the
            // storage filled here covers sockets created before the agent attached.
            return 1;
        }
        let (local, remote) = if v6 {
            let mut local = words!(sk, src_ip6);
            if hook == HOOK_SENDMSG {
                let src = words!(ctx.sock_addr, msg_src_ip6);
                if src != [0; 4] {
                    local = src;
                }
            }
            let remote = words!(ctx.sock_addr, user_ip6);
            if local == [0; 4] && is_mapped(&remote) {
                // A dual-stack socket sending to an IPv4 peer: the unspecified address in
                // the form the datapath keys IPv4 under.
                local = ipv4_mapped([0; 4]);
            }
            (local, remote)
        } else {
            let mut local = read_volatile(addr_of!((*sk).src_ip4));
            if hook == HOOK_SENDMSG {
                let src = read_volatile(addr_of!((*ctx.sock_addr).msg_src_ip4));
                if src != 0 {
                    local = src;
                }
            }
            (
                v4(local),
                v4(read_volatile(addr_of!((*ctx.sock_addr).user_ip4))),
            )
        };
        let local_port = read_volatile(addr_of!((*sk).src_port)) as u16;
        let remote_port = u16::from_be(read_volatile(addr_of!((*ctx.sock_addr).user_port)) as u16);
        let (key, lo) = owner_key(&local, local_port, &remote, remote_port, 17);
        record(&key, &owner, bpf_get_netns_cookie(ctx.as_ptr()), hook, lo);
    }
    1
}

#[inline(always)]
fn is_mapped(a: &Addr) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == IPV4_MAPPED_WORD
}

#[cgroup_sock_addr(connect4)]
pub fn process_connect4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, false, HOOK_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn process_connect6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, true, HOOK_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn process_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, false, HOOK_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn process_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, true, HOOK_SENDMSG)
}

#[sock_ops]
pub fn process_sock_ops(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // SAFETY: context fields, each read with a constant offset from the context pointer.
    let (op, family, sk) = unsafe {
        (
            read_volatile(addr_of!((*ops).op)),
            read_volatile(addr_of!((*ops).family)),
            read_volatile(addr_of!((*ops).__bindgen_anon_2.sk)),
        )
    };
    let hook = if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        HOOK_ACTIVE
    } else if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        HOOK_PASSIVE
    } else {
        return 1;
    };
    // `sk` is a full socket in the established callbacks; the verifier wants the null check.
    if sk.is_null() {
        return 1;
    }
    let Some(owner) = SOCK_OWNERS.get(sk.cast(), None) else {
        // Created before the agent attached (and never connected since): nobody to name.
        return 1;
    };
    // SAFETY: as above.
    let (local, remote, local_port, remote_port) = unsafe {
        let (local, remote) = match family {
            AF_INET => (
                v4(read_volatile(addr_of!((*ops).local_ip4))),
                v4(read_volatile(addr_of!((*ops).remote_ip4))),
            ),
            AF_INET6 => (words!(ops, local_ip6), words!(ops, remote_ip6)),
            _ => return 1,
        };
        // local_port is in host order; remote_port holds the network-order port in its upper
        // half on little-endian machines (the kernel's ctx rewrite), hence the 32-bit swap.
        (
            local,
            remote,
            read_volatile(addr_of!((*ops).local_port)) as u16,
            u32::from_be(read_volatile(addr_of!((*ops).remote_port))) as u16,
        )
    };
    let (key, lo) = owner_key(&local, local_port, &remote, remote_port, 6);
    // SAFETY: the context pointer of a sock_ops program.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    record(&key, &owner, netns, hook, lo);
    1
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
