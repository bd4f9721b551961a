//! Yardsticks for `cargo xtask bench datapath`; never loaded by the agent.
//!
//! `bench_noop` returns XDP_PASS and nothing else: the floor of BPF_PROG_TEST_RUN.
//! `bench_ref` is the smallest credible flow program: Ethernet (at most one VLAN tag),
//! IPv4 or IPv6 without extension headers, TCP/UDP ports, a directional (non-canonical) key,
//! one LRU lookup with in-place atomic adds and `bpf_jiffies64`. The sensor is judged by its
//! ratio to REF.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::bpf_jiffies64,
    macros::{map, xdp},
    maps::LruHashMap,
    programs::XdpContext,
};

#[repr(C)]
#[derive(Clone, Copy)]
struct RefKey {
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RefStats {
    packets: u64,
    bytes: u64,
    last_seen: u64,
}

#[map]
static REF_FLOWS: LruHashMap<RefKey, RefStats> = LruHashMap::with_max_entries(262_144, 0);

#[xdp]
pub fn bench_noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_ref(ctx: XdpContext) -> u32 {
    let _ = count(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn at<T>(data: usize, end: usize, off: usize) -> Result<*const T, ()> {
    if data + off + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((data + off) as *const T)
}

#[inline(always)]
fn count(ctx: &XdpContext) -> Result<(), ()> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut ethertype = u16::from_be(unsafe { *at::<u16>(data, end, 12)? });
    let mut off = 14;
    if ethertype == 0x8100 {
        ethertype = u16::from_be(unsafe { *at::<u16>(data, end, 16)? });
        off = 18;
    }
    let mut key = RefKey { src: [0; 4], dst: [0; 4], sport: 0, dport: 0, proto: 0, pad: [0; 3] };
    if ethertype == 0x0800 {
        let ihl = (unsafe { *at::<u8>(data, end, off)? } & 0x0f) as usize * 4;
        key.proto = unsafe { *at::<u8>(data, end, off + 9)? };
        key.src[3] = unsafe { *at::<u32>(data, end, off + 12)? };
        key.dst[3] = unsafe { *at::<u32>(data, end, off + 16)? };
        off += ihl;
    } else if ethertype == 0x86dd {
        key.proto = unsafe { *at::<u8>(data, end, off + 6)? };
        key.src = unsafe { *at::<[u32; 4]>(data, end, off + 8)? };
        key.dst = unsafe { *at::<[u32; 4]>(data, end, off + 24)? };
        off += 40;
    } else {
        return Err(());
    }
    if key.proto == 6 || key.proto == 17 {
        key.sport = unsafe { *at::<u16>(data, end, off)? };
        key.dport = unsafe { *at::<u16>(data, end, off + 2)? };
    }
    let now = unsafe { bpf_jiffies64() };
    let len = (end - data) as u64;
    if let Some(s) = REF_FLOWS.get_ptr_mut(&key) {
        unsafe {
            core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) &raw mut (*s).packets, in(reg) 1u64, options(nostack));
            core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) &raw mut (*s).bytes, in(reg) len, options(nostack));
            (*s).last_seen = now;
        }
    } else {
        let _ = REF_FLOWS.insert(&key, &RefStats { packets: 1, bytes: len, last_seen: now }, BPF_NOEXIST as u64);
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
