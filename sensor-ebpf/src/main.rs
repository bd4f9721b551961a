//! The sensor's kernel datapath: per-flow accounting for every packet, never a drop.
//!
//! One XDP program (ingress) and one TC classifier (egress, for traffic the host sends itself)
//! share the same maps. Each packet is either added to exactly one flow in `FLOWS` or counted
//! under exactly one reason in `COUNTERS`; both programs always let the packet through.
//!
//! Per-packet cost is the budget that matters (cargo xtask bench datapath): an existing flow
//! costs one lookup and in-place atomic adds through the returned pointer. `bpf_map_update_elem`
//! is only called for new flows, with `BPF_NOEXIST`, because updating an existing LRU key can
//! evict unrelated entries.
//!
//! Watched flows: the agent puts the flows it wants timed message by message (long, low-rate
//! ones) in `WATCH` and bumps `SETTINGS.watch_gen`. A flow looks itself up in `WATCH` only when
//! its `last_seen` jiffy changes *and* the generation moved since it last looked, and keeps the
//! answer as the `SAMPLE_TRACE` bit of `sampling`, the byte every packet already tests: an
//! unwatched flow pays nothing per packet, a watched one a budget check and a ring record per
//! payload packet.
#![no_std]
#![no_main]
// Inline BPF assembly for atomic add/or: core's atomics have no RMW operations on the BPF
// target.
#![feature(asm_experimental_arch)]

mod parse;

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::{
        bpf_jiffies64, bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes,
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use sensor_common::{
    clock_slot, counter, DatapathSettings, FlowKey, FlowStats, PayloadEvent, TraceEvent, WatchBudget,
    CLIENT_BY_FIRST_PACKET, CLIENT_BY_SYN, CLIENT_HI, CLIENT_LO, DIR_LO_TO_HI, PAYLOAD_DNS,
    PAYLOAD_FIRST, PAYLOAD_MAX, SAMPLE_DNS, SAMPLE_HI, SAMPLE_LO, SAMPLE_TRACE,
};

use parse::{parse, Reason, IPPROTO_TCP, IPPROTO_UDP};

/// Default capacity; the agent sizes it at load time (`EbpfLoader::set_max_entries`).
const DEFAULT_MAX_FLOWS: u32 = 262_144;

/// How much of an egress skb to make linear before parsing: enough for Ethernet, two VLAN
/// tags, IPv6 with a few extension headers and TCP. Headers beyond it count as truncated.
const TC_PULL_LEN: u32 = 256;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[map]
static FLOWS: LruHashMap<FlowKey, FlowStats> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// What to copy to the agent; written by the agent before attaching. All zero: nothing.
#[map]
static SETTINGS: Array<DatapathSettings> = Array::with_max_entries(1, 0);

/// First payload bytes of new flows and DNS messages, for the agent's classifiers. The agent
/// sizes it at load time.
#[map]
static PAYLOADS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Flows the agent watches, with each one's message budget; written by the agent only. A plain
/// hash (not LRU): the agent bounds it, and an entry must never vanish under it.
#[map]
static WATCH: HashMap<FlowKey, WatchBudget> = HashMap::with_max_entries(4096, 0);

/// Payload messages (time, direction, size) of watched flows. The agent sizes it at load time.
#[map]
static TRACES: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// How a program reads packet bytes that may sit beyond the directly addressable part
/// (multi-buffer XDP, non-linear skbs).
trait LoadBytes: EbpfContext {
    /// Copies `len` bytes at `off` into `dst`; `len` is at most [`PAYLOAD_MAX`].
    fn load_bytes(&self, off: u32, dst: *mut u8, len: u32) -> i64;
}

impl LoadBytes for XdpContext {
    fn load_bytes(&self, off: u32, dst: *mut u8, len: u32) -> i64 {
        unsafe { bpf_xdp_load_bytes(self.ctx, off, dst.cast(), len) }
    }
}

impl LoadBytes for TcContext {
    fn load_bytes(&self, off: u32, dst: *mut u8, len: u32) -> i64 {
        unsafe { bpf_skb_load_bytes(self.skb.skb as *const _, off, dst.cast(), len) }
    }
}

/// Slot [`clock_slot::JIFFIES`]: the kernel's jiffies as last read by `sensor_clock`. The
/// other slots are the agent's: the anchor that turns this map's jiffies into wall time, kept
/// here so it lives exactly as long as the flows whose times it converts.
#[map]
static CLOCK: Array<u64> = Array::with_max_entries(clock_slot::COUNT, 0);

/// Never attached: the agent runs it with BPF_PROG_TEST_RUN to read `bpf_jiffies64()`, the
/// clock of `first_seen`/`last_seen`, which user space has no syscall for.
#[xdp]
pub fn sensor_clock(_ctx: XdpContext) -> u32 {
    if let Some(slot) = CLOCK.get_ptr_mut(clock_slot::JIFFIES) {
        unsafe { *slot = bpf_jiffies64() };
    }
    xdp_action::XDP_PASS
}

#[xdp(frags)]
pub fn sensor_xdp(ctx: XdpContext) -> u32 {
    // With multi-buffer (frags) packets data_end covers only the first buffer; the full
    // frame length is what a flow's byte count must hold.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    account(&ctx, ctx.data(), ctx.data_end(), len);
    xdp_action::XDP_PASS
}

#[classifier]
pub fn sensor_tc_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    // Headers of locally generated skbs may sit in paged fragments; a failed pull leaves the
    // linear part as it is and the parser then reports truncation.
    let _ = ctx.pull_data(if len < TC_PULL_LEN { len } else { TC_PULL_LEN });
    account(&ctx, ctx.data(), ctx.data_end(), len as u64);
    // UNSPEC: let any later TC program decide, so the sensor never changes what happens.
    TC_ACT_UNSPEC
}

#[inline(always)]
fn account<C: LoadBytes>(ctx: &C, data: usize, end: usize, len: u64) {
    match parse(data, end) {
        Ok(pkt) => {
            let (key, dir) = FlowKey::canonical(&pkt.src, pkt.sport, &pkt.dst, pkt.dport, pkt.proto);
            let syn_only = pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            let flags = (pkt.tcp_flags as u64) << (dir * 8);
            let hit = Hit {
                dir,
                len,
                flags,
                syn_only,
                now: unsafe { bpf_jiffies64() },
            };
            let payload_off = pkt.payload_off as u64;
            let stats = match FLOWS.get_ptr_mut(&key) {
                Some(stats) => {
                    if update(stats, &hit) {
                        watch_check(stats, &key);
                    }
                    stats
                }
                None => match create(ctx, &key, &hit, pkt.sport == 53 || pkt.dport == 53) {
                    Some(stats) => stats,
                    None => return,
                },
            };
            // Once a flow's sampling is over and it is not watched (almost every packet), this
            // byte test is the only cost.
            let sampling = unsafe { (*stats).sampling };
            if sampling != 0 && payload_off != 0 && len > payload_off {
                let sender_bit = if dir == DIR_LO_TO_HI { SAMPLE_LO } else { SAMPLE_HI };
                if sampling & (sender_bit | SAMPLE_DNS) != 0 {
                    sample(ctx, stats, &key, &hit, (payload_off << 32) | (len - payload_off));
                }
                if sampling & SAMPLE_TRACE != 0 {
                    // Up to the IP length: Ethernet padding of short frames is not payload.
                    // Only here, not for `sample`: its copy length is a helper size argument,
                    // and deriving it from the IP length made the verifier's precision
                    // tracking keep every parse path apart (over 1M instructions, refused).
                    let end = if (pkt.payload_end as u64) < len { pkt.payload_end as u64 } else { len };
                    trace(stats, &key, dir as u64, end.saturating_sub(payload_off));
                }
            }
        }
        Err(reason) => bump(reason),
    }
}

/// One packet's contribution to its flow. A struct because BPF calls take at most five
/// arguments.
#[derive(Clone, Copy)]
struct Hit {
    dir: usize,
    len: u64,
    /// TCP flags already shifted into the sender's byte of `FlowStats::tcp_flags`.
    flags: u64,
    /// TCP SYN without ACK: the sender is the client.
    syn_only: bool,
    now: u64,
}

/// Adds the packet to its flow; returns whether `last_seen` moved to a new jiffy.
#[inline(always)]
fn update(stats: *mut FlowStats, hit: &Hit) -> bool {
    let Hit {
        dir,
        len,
        flags,
        syn_only,
        now,
    } = *hit;
    // `& 1` proves the index in range, so no bounds check (and no panic path) is emitted.
    let dir = dir & 1;
    let mut new_jiffy = false;
    // SAFETY: `stats` comes from a successful lookup in FLOWS; map values stay valid for the
    // program's run. Fields written concurrently by other CPUs are only touched atomically,
    // except last_seen and the client, where a lost race still stores a correct value.
    unsafe {
        atomic_add(&raw mut (*stats).packets[dir], 1);
        atomic_add(&raw mut (*stats).bytes[dir], len);
        if (*stats).last_seen != now {
            (*stats).last_seen = now;
            new_jiffy = true;
        }
        if (*stats).tcp_flags & flags != flags {
            atomic_or(&raw mut (*stats).tcp_flags, flags);
        }
        // A SYN without ACK names the client even when the flow was first seen mid-stream.
        if syn_only && (*stats).client_source != CLIENT_BY_SYN {
            (*stats).client = client_for(dir);
            (*stats).client_source = CLIENT_BY_SYN;
        }
    }
    new_jiffy
}

/// Looks the flow up in `WATCH` if the agent changed the watched set since the flow last
/// looked, and records the answer in the `SAMPLE_TRACE` bit. Called at most once per jiffy
/// per flow. `sampling` is written without atomics, as `sample` does: a lost race with
/// another CPU can at worst drop or keep the bit until the next generation.
#[inline(never)]
fn watch_check(stats: *mut FlowStats, key: &FlowKey) {
    let Some(settings) = SETTINGS.get(0) else { return };
    let gen = settings.watch_gen as u8;
    unsafe {
        if (*stats).watch_gen == gen {
            return;
        }
        (*stats).watch_gen = gen;
        let sampling = (*stats).sampling;
        if WATCH.get(key).is_some() {
            (*stats).sampling = sampling | SAMPLE_TRACE;
        } else if sampling & SAMPLE_TRACE != 0 {
            (*stats).sampling = sampling & !SAMPLE_TRACE;
        }
    }
}

/// Records one payload message of a watched flow in `TRACES`, within the flow's budget; a
/// flow the agent no longer watches stops tracing here.
#[inline(never)]
fn trace(stats: *mut FlowStats, key: &FlowKey, dir: u64, payload_len: u64) {
    if payload_len == 0 {
        return;
    }
    let Some(budget) = WATCH.get_ptr_mut(key) else {
        unsafe { (*stats).sampling &= !SAMPLE_TRACE };
        return;
    };
    unsafe {
        if (*budget).used >= (*budget).messages {
            bump(counter::TRACE_OVER_BUDGET);
            return;
        }
        atomic_add(&raw mut (*budget).used, 1);
    }
    let Some(mut entry) = TRACES.reserve::<TraceEvent>(0) else {
        bump(counter::TRACE_DROPS);
        return;
    };
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).key = *key;
        (*event).ktime_ns = bpf_ktime_get_ns();
        (*event).payload_len = if payload_len > u32::MAX as u64 { u32::MAX } else { payload_len as u32 };
        (*event).dir = (dir & 1) as u8;
        (*event)._pad = [0; 3];
    }
    entry.submit(0);
    bump(counter::TRACE_EVENTS);
}

/// Copies the start of this packet's payload to the agent, if the flow still samples this
/// sender (or is DNS), and retires the sampling when both senders are done.
/// `payload` is the payload's offset (high 32 bits) and length (low 32 bits), packed because
/// BPF calls take at most five arguments.
#[inline(never)]
fn sample<C: LoadBytes>(ctx: &C, stats: *mut FlowStats, key: &FlowKey, hit: &Hit, payload: u64) {
    let dir = hit.dir & 1;
    let (off, payload_len, now) = ((payload >> 32) as u32, payload as u32, hit.now);
    let Some(settings) = SETTINGS.get(0) else { return };
    let sampling = unsafe { (*stats).sampling };
    let (kind, limit) = if sampling & SAMPLE_DNS != 0 {
        (PAYLOAD_DNS, settings.dns_bytes)
    } else {
        let bit = if dir == DIR_LO_TO_HI { SAMPLE_LO } else { SAMPLE_HI };
        if sampling & bit == 0 {
            return;
        }
        // Races between CPUs may copy one packet too many; never too few or out of bounds.
        unsafe {
            let left = (*stats).samples_left[dir];
            if left <= 1 {
                (*stats).samples_left[dir] = 0;
                (*stats).sampling = sampling & !bit;
            } else {
                (*stats).samples_left[dir] = left - 1;
            }
        }
        (PAYLOAD_FIRST, settings.payload_bytes)
    };
    let want = if payload_len < limit { payload_len } else { limit };
    // The mask proves the bound to the verifier; PAYLOAD_MAX is a power of two.
    let n = want & (2 * PAYLOAD_MAX as u32 - 1);
    if n == 0 || n > PAYLOAD_MAX as u32 {
        return;
    }
    let Some(mut entry) = PAYLOADS.reserve::<PayloadEvent>(0) else {
        bump(counter::PAYLOAD_DROPS);
        return;
    };
    let event = entry.as_mut_ptr();
    unsafe {
        if ctx.load_bytes(off, (&raw mut (*event).data).cast(), n) != 0 {
            entry.discard(0);
            return;
        }
        (*event).key = *key;
        (*event).jiffies = now;
        (*event).payload_len = payload_len;
        (*event).len = n as u16;
        (*event).dir = dir as u8;
        (*event).kind = kind;
    }
    entry.submit(0);
    bump(counter::PAYLOAD_EVENTS);
}

/// Inserts a new flow; returns its entry (or `None` when the map refused it).
#[inline(never)]
fn create<C: EbpfContext>(ctx: &C, key: &FlowKey, hit: &Hit, port_53: bool) -> Option<*mut FlowStats> {
    let Hit {
        dir,
        len,
        flags,
        syn_only,
        now,
    } = *hit;
    let mut stats = FlowStats {
        first_seen: now,
        last_seen: now,
        tcp_flags: flags,
        client: client_for(dir),
        client_source: if syn_only { CLIENT_BY_SYN } else { CLIENT_BY_FIRST_PACKET },
        ..FlowStats::default()
    };
    stats.packets[dir & 1] = 1;
    stats.bytes[dir & 1] = len;
    if let Some(settings) = SETTINGS.get(0) {
        // The agent cannot watch a flow it has not seen yet.
        stats.watch_gen = settings.watch_gen as u8;
        let transport = key.proto == IPPROTO_TCP || key.proto == IPPROTO_UDP;
        if transport && port_53 && settings.dns_bytes != 0 {
            stats.sampling = SAMPLE_DNS;
        } else if transport && settings.payload_packets != 0 {
            let n = if settings.payload_packets > 255 { 255 } else { settings.payload_packets as u8 };
            stats.sampling = SAMPLE_LO | SAMPLE_HI;
            stats.samples_left = [n, n];
        }
    }
    let inserted = FLOWS.insert(key, &stats, BPF_NOEXIST as u64).is_ok();
    if inserted {
        bump(counter::FLOWS_CREATED);
    }
    // Find the entry: ours, or (insert failed, most likely -EEXIST) the one another CPU
    // inserted after our lookup, to which this packet is then added.
    match FLOWS.get_ptr_mut(key) {
        Some(entry) => {
            if !inserted {
                bump(counter::CREATE_RACES);
                let _ = update(entry, hit);
            }
            Some(entry)
        }
        None => {
            if inserted {
                // Evicted again before we looked: counted, nothing to sample.
                return None;
            }
            bump(counter::MAP_FULL);
            warn!(ctx, "flow map refused a new entry (proto {})", key.proto);
            None
        }
    }
}

/// `lock *(u64 *)p += v`: BPF_ATOMIC | BPF_ADD without fetch (kernel >= 5.12 encoding,
/// identical to the older XADD).
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) p, in(reg) v, options(nostack)) };
}

/// `lock *(u64 *)p |= v`: BPF_ATOMIC | BPF_OR (kernel >= 5.12).
#[inline(always)]
unsafe fn atomic_or(p: *mut u64, v: u64) {
    unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) |= {1}", in(reg) p, in(reg) v, options(nostack)) };
}

#[inline(always)]
fn client_for(dir: usize) -> u8 {
    if dir == DIR_LO_TO_HI {
        CLIENT_LO
    } else {
        CLIENT_HI
    }
}

#[inline(always)]
fn bump(index: Reason) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it, so a plain add is exact.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
