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
//!
//! Tunnels (see `parse`): PPPoE and MPLS are opened in place; for GRE, VXLAN, Geneve and IP in
//! IP the outer program writes where the inside starts into `INNER_START` and tail-calls its
//! inner program (`sensor_xdp_inner`, `sensor_tc_inner`), which parses and counts the inner
//! packet. A flow created from a decapsulated packet records its tunnel once in `TUNNELS` and
//! its kind in `FlowStats::tunnel`; packets of existing flows pay nothing for it.
#![no_std]
#![no_main]
// Inline BPF assembly for atomic add/or: core's atomics have no RMW operations on the BPF
// target.
#![feature(asm_experimental_arch)]
// `#[inline(always)]` on the closures that count a parsed packet (see `account`).
#![feature(stmt_expr_attributes)]

mod parse;

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::{
        bpf_jiffies64, bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes,
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use sensor_common::{IPV4_MAPPED_WORD as IPV4_MAPPED,
    clock_slot, counter, DatapathSettings, FlowKey, FlowStats, PayloadEvent, TraceEvent, TunnelInfo, WatchBudget,
    CLIENT_BY_FIRST_PACKET, CLIENT_BY_SYN, CLIENT_HI, CLIENT_LO, DIR_LO_TO_HI, PAYLOAD_DNS,
    PAYLOAD_FIRST, PAYLOAD_MAX, SAMPLE_DNS, SAMPLE_HI, SAMPLE_LO, SAMPLE_TRACE,
};

use parse::{parse, parse_inner, Packet, Reason, Step, Tunnel, IPPROTO_TCP, IPPROTO_UDP};

/// Default capacity; the agent sizes it at load time (`EbpfLoader::set_max_entries`).
const DEFAULT_MAX_FLOWS: u32 = 262_144;

/// How much of an egress skb to make linear before parsing: enough for Ethernet, two VLAN
/// tags, IPv6 with a few extension headers and TCP, twice (a tunnel's outer and inner
/// headers). Headers beyond it count as truncated.
const TC_PULL_LEN: u32 = 384;

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

/// The tunnel each flow created from a decapsulated packet was first seen in (key: the inner
/// flow). Written once, when such a flow is created (`FlowStats::tunnel` says it is there);
/// the agent reads it for those flows only and deletes entries with their flows. An LRU of
/// the flow map's size (the agent sizes it): it can never hold more live entries than flows.
#[map]
static TUNNELS: LruHashMap<FlowKey, TunnelInfo> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// The current packet's tunnel, and where the inner program of an IP tunnel starts: written by
/// the outer program (before its tail call, or before counting a PPPoE or MPLS packet), read
/// by the inner program and by `record_tunnel` on the same CPU in the same run (XDP and TC
/// run without preemption, and a tail call does not return), so one per-CPU slot is enough.
#[repr(C)]
#[derive(Clone, Copy)]
struct InnerStart {
    off: u32,
    ethertype: u16,
    kind: u8,
    has_id: u8,
    id: u32,
    outer_off: u32,
    outer_v6: u8,
    _pad: [u8; 3],
}

#[map]
static INNER_START: PerCpuArray<InnerStart> = PerCpuArray::with_max_entries(1, 0);

/// The inner XDP program (`sensor_xdp_inner`) at index 0; the agent fills it after loading.
#[map]
static INNER_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The inner TC program (`sensor_tc_inner`) at index 0: a program array holds programs of one
/// type only.
#[map]
static INNER_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Largest offset at which an inner level may start: a bound the verifier can use for the
/// offset read back from `INNER_START` (the user parser applies the same limit).
const MAX_INNER_OFF: u32 = sensor_common::MAX_INNER_OFFSET as u32;

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
    account(&ctx, ctx.data(), ctx.data_end(), len, &INNER_XDP);
    xdp_action::XDP_PASS
}

/// The inside of a tunnel the outer program found (tail call from `sensor_xdp`).
#[xdp(frags)]
pub fn sensor_xdp_inner(ctx: XdpContext) -> u32 {
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    account_inner(&ctx, ctx.data(), ctx.data_end(), len);
    xdp_action::XDP_PASS
}

#[classifier]
pub fn sensor_tc_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    // Headers of locally generated skbs may sit in paged fragments; a failed pull leaves the
    // linear part as it is and the parser then reports truncation.
    let _ = ctx.pull_data(if len < TC_PULL_LEN { len } else { TC_PULL_LEN });
    account(&ctx, ctx.data(), ctx.data_end(), len as u64, &INNER_TC);
    // UNSPEC: let any later TC program decide, so the sensor never changes what happens.
    TC_ACT_UNSPEC
}

/// The inside of a tunnel the outer program found (tail call from `sensor_tc_egress`, which
/// already made the headers linear).
#[classifier]
pub fn sensor_tc_inner(ctx: TcContext) -> i32 {
    let len = ctx.len();
    account_inner(&ctx, ctx.data(), ctx.data_end(), len as u64);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn account<C: LoadBytes>(ctx: &C, data: usize, end: usize, len: u64, inner: &ProgramArray) {
    // Called from each IP version's branch of `parse`, and inlined there: as a called function
    // the packet went through stack memory again (measured: 281 instructions per IPv4/TCP
    // packet of a known flow instead of 196).
    let flow = #[inline(always)]
    |pkt: &Packet| {
        if pkt.tunnel.kind != 0 {
            // PPPoE or MPLS, opened in place: the tunnel goes where an IP tunnel's inner
            // program finds it, so that only its kind travels with the packet.
            set_tunnel(&pkt.tunnel, 0, 0);
        }
        count(ctx, pkt, len)
    };
    match parse(data, end, &decap_on, &flow) {
        Err(reason) => bump(reason),
        Ok(Step::Flow) => {}
        Ok(Step::Tunnel { off, ethertype, tunnel }) => {
            if off > MAX_INNER_OFF {
                bump(counter::TRUNCATED);
                return;
            }
            set_tunnel(&tunnel, off, ethertype);
            unsafe {
                // Does not return when it succeeds; it fails only if the agent did not install
                // the inner program, which loading never leaves undone.
                let _ = inner.tail_call(ctx, 0);
            }
            bump(counter::TRUNCATED);
        }
    }
}

/// Writes the packet's tunnel (and, for an IP tunnel, where its inside starts) to
/// `INNER_START`.
#[inline(always)]
fn set_tunnel(tunnel: &Tunnel, off: u32, ethertype: u16) {
    if let Some(slot) = INNER_START.get_ptr_mut(0) {
        unsafe {
            *slot = InnerStart {
                off,
                ethertype,
                kind: tunnel.kind,
                has_id: tunnel.has_id,
                id: tunnel.id,
                outer_off: tunnel.outer_off,
                outer_v6: tunnel.outer_v6,
                _pad: [0; 3],
            };
        }
    }
}

/// The inner level of a tunnel, from where `INNER_START` says it starts.
#[inline(always)]
fn account_inner<C: LoadBytes>(ctx: &C, data: usize, end: usize, len: u64) {
    let Some(slot) = INNER_START.get_ptr(0) else { return };
    let start = unsafe { *slot };
    // Verifier: the offset comes from a map, so it needs a bound before it meets a packet
    // pointer.
    if start.off > MAX_INNER_OFF {
        bump(counter::TRUNCATED);
        return;
    }
    let tunnel = Tunnel {
        kind: start.kind,
        has_id: start.has_id,
        outer_v6: start.outer_v6,
        id: start.id,
        outer_off: start.outer_off,
    };
    let flow = #[inline(always)]
    |pkt: &Packet| count(ctx, pkt, len);
    if let Err(reason) = parse_inner(data, end, start.off as usize, start.ethertype, tunnel, &flow) {
        bump(reason);
    }
}

/// Adds one parsed packet to its flow (creating it), and samples or traces its payload.
#[inline(always)]
fn count<C: LoadBytes>(ctx: &C, pkt: &Packet, len: u64) {
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
        // Only the tunnel's kind travels to this call (the rest waits in `INNER_START`):
        // carrying the whole tunnel made the compiler keep the parsed packet in stack memory
        // on every packet, the hot path included (measured: plain IPv4/TCP 15-20% slower).
        None => match create(ctx, &key, &hit, pkt.tunnel.kind) {
            Some(stats) => stats,
            None => return,
        },
    };
    // Once a flow's sampling is over and it is not watched (almost every packet), this
    // byte test is the only cost.
    let sampling = unsafe { (*stats).sampling };
    if sampling != 0 && pkt.has_payload != 0 && len > payload_off {
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
        ..
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
    let payload_len = launder(payload_len);
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
    let payload = launder(payload);
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

/// Whether `DatapathSettings::decap` switches decapsulation of `kind` on. The parser asks only
/// for tunnel candidates, so plain packets never look the settings up.
#[inline(always)]
fn decap_on(kind: u8) -> bool {
    match SETTINGS.get(0) {
        Some(s) => s.decap & (1u32 << (kind & 31)) != 0,
        None => false,
    }
}

/// The `TunnelInfo` being written by [`record_tunnel`]: built in map memory rather than on the
/// stack, which the programs' call chain has little of left (512 bytes for all frames).
#[map]
static TUNNEL_SCRATCH: PerCpuArray<TunnelInfo> = PerCpuArray::with_max_entries(1, 0);

/// Records the tunnel of a flow created from a decapsulated packet in `TUNNELS`, from what
/// `INNER_START` holds for this packet (written earlier in this same run, on this CPU; BPF
/// programs are not preempted by another program on their CPU between the two). A lost race
/// between CPUs rewrites the entry with another tunnelled packet's tunnel; a refused insert
/// leaves an entry the LRU map drops first. The outer
/// addresses are read again here, with a helper, rather than carried through the parse: only
/// a new tunnelled flow pays for them. They are oriented by the inner key: the sender's
/// tunnel endpoint goes on the sender's side.
#[inline(never)]
fn record_tunnel<C: LoadBytes>(ctx: &C, key: &FlowKey, dir: usize) {
    let Some(slot) = INNER_START.get_ptr(0) else { return };
    let tun = unsafe { *slot };
    let Some(info) = TUNNEL_SCRATCH.get_ptr_mut(0) else { return };
    unsafe {
        (*info).outer_lo = [0; 4];
        (*info).outer_hi = [0; 4];
        (*info).id = tun.id;
        (*info).kind = tun.kind;
        (*info).has_id = tun.has_id;
        (*info)._pad = [0; 2];
        if tun.outer_off != 0 {
            let (src, dst) = if dir == DIR_LO_TO_HI {
                (&raw mut (*info).outer_lo, &raw mut (*info).outer_hi)
            } else {
                (&raw mut (*info).outer_hi, &raw mut (*info).outer_lo)
            };
            let off = tun.outer_off;
            let ok = if tun.outer_v6 != 0 {
                // Source and destination at offsets 8 and 24 of the IPv6 header.
                ctx.load_bytes(off + 8, src.cast(), 16) == 0 && ctx.load_bytes(off + 24, dst.cast(), 16) == 0
            } else {
                // Source and destination at offsets 12 and 16 of the IPv4 header, IPv4-mapped.
                (*src)[2] = IPV4_MAPPED;
                (*dst)[2] = IPV4_MAPPED;
                ctx.load_bytes(off + 12, (&raw mut (*src)[3]).cast(), 4) == 0
                    && ctx.load_bytes(off + 16, (&raw mut (*dst)[3]).cast(), 4) == 0
            };
            if !ok {
                (*info).outer_lo = [0; 4];
                (*info).outer_hi = [0; 4];
            }
        }
        let _ = TUNNELS.insert(key, &*info, 0);
    }
}

/// The value of a flow being created, built in map memory rather than on the stack. Verifier
/// workaround: the programs' deepest call chain (the main frame with the parse, then
/// `create`) must fit 512 bytes of stack together, and a 64-byte value plus its copies in
/// `create`'s frame went past it once the parse grew by the tunnels.
#[map]
static FLOW_SCRATCH: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(1, 0);

/// Inserts a new flow; returns its entry (or `None` when the map refused it).
#[inline(never)]
fn create<C: LoadBytes>(ctx: &C, key: &FlowKey, hit: &Hit, tunnel_kind: u8) -> Option<*mut FlowStats> {
    let Hit {
        dir,
        len,
        flags,
        syn_only,
        now,
    } = *hit;
    // From the key, here rather than per packet in `Hit`: only a new flow asks.
    let port_53 = key.port_lo == 53 || key.port_hi == 53;
    if tunnel_kind != 0 {
        record_tunnel(ctx, key, dir);
    }
    // Built in map memory, not on the stack: see FLOW_SCRATCH.
    let stats = FLOW_SCRATCH.get_ptr_mut(0)?;
    let dir = dir & 1;
    unsafe {
        (*stats).packets = [0; 2];
        (*stats).bytes = [0; 2];
        (*stats).packets[dir] = 1;
        (*stats).bytes[dir] = len;
        (*stats).first_seen = now;
        (*stats).last_seen = now;
        (*stats).tcp_flags = flags;
        (*stats).client = client_for(dir);
        (*stats).client_source = if syn_only { CLIENT_BY_SYN } else { CLIENT_BY_FIRST_PACKET };
        (*stats).sampling = 0;
        (*stats).samples_left = [0; 2];
        (*stats).watch_gen = 0;
        (*stats).tunnel = tunnel_kind;
        (*stats)._pad = [0; 1];
        if let Some(settings) = SETTINGS.get(0) {
            // The agent cannot watch a flow it has not seen yet.
            (*stats).watch_gen = settings.watch_gen as u8;
            let transport = key.proto == IPPROTO_TCP || key.proto == IPPROTO_UDP;
            if transport && port_53 && settings.dns_bytes != 0 {
                (*stats).sampling = SAMPLE_DNS;
            } else if transport && settings.payload_packets != 0 {
                let n = if settings.payload_packets > 255 { 255 } else { settings.payload_packets as u8 };
                (*stats).sampling = SAMPLE_LO | SAMPLE_HI;
                (*stats).samples_left = [n, n];
            }
        }
    }
    let inserted = FLOWS.insert(key, unsafe { &*stats }, BPF_NOEXIST as u64).is_ok();
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

/// One u64 per CPU that [`launder`] passes values through.
#[map]
static LAUNDER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Returns `v` as a value the verifier knows nothing about. Verifier workaround: a payload
/// offset or length that becomes a helper's size argument is marked precise back to the
/// parse, and then no two parse paths (VLAN tags, label stacks, IPv4 options, IPv6 extension
/// headers, tunnel options) compare equal: the verifier walked the whole counting code once
/// per parse path and passed its limit of one million instructions. Passed through map
/// memory, the value's history ends here. Only packets that are sampled or traced pay for it.
#[inline(always)]
fn launder(v: u64) -> u64 {
    match LAUNDER.get_ptr_mut(0) {
        Some(slot) => unsafe {
            core::ptr::write_volatile(slot, v);
            core::ptr::read_volatile(slot)
        },
        None => 0,
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
