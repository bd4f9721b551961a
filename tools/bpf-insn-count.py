#!/usr/bin/python3
"""Counts the BPF instructions one packet executes in the sensor's XDP program.

Why: this machine class (VMs without a PMU) cannot profile BPF programs, and timing a path of
about 60 ns is noisy to +-8%. The number of instructions a packet of a known flow executes
is exact and repeatable, and it found the regression that time only hinted at (IPv4/TCP 212
instructions before tunnels, 278 after, 183 once each IP version had its own copy of the
counting code). It complements `cargo xtask bench datapath`; it does not replace it (a
spilled register and a map lookup cost very different times).

How: a small concrete interpreter of the eBPF instruction set over the ELF object (programs,
`.text` subprograms, map relocations). Packet, context, stack frames and map values are
byte arrays; pointers are (region, offset) pairs; hash maps are dicts keyed by key bytes, so
a packet run several times finds its flow (the hot path) and is past its sampling. Helpers
are modelled as far as the counting path needs (lookup, update, jiffies, buffer length, load
bytes, tail call); anything else stops with its helper number. `SETTINGS.decap` is all on.

Usage: tools/bpf-insn-count.py OBJECT [--program NAME] [--frame KIND]... [--functions] [--trace]
  KIND: v4 v6 vlan pppoe mpls vxlan gre ipip (default: v4 v6 vlan); the tunnels carry the v4
  frame. XDP programs only (the TC programs read an skb context it does not model).
Prints per frame: instructions of the last run, helper calls by number, and the flows created
and packets counted over the four runs (1 and 4: the counting path really ran).
Needs python3 and pyelftools (Debian: python3-pyelftools).
"""
import struct
import sys
from collections import Counter

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

MASK = (1 << 64) - 1


class Mem:
    def __init__(self, name, size=0, data=None):
        self.name = name
        self.b = bytearray(data if data is not None else bytes(size))
        self.ptrs = {}  # offset -> Ptr stored as an 8-byte spill


class Ptr:
    __slots__ = ("mem", "off")

    def __init__(self, mem, off):
        self.mem, self.off = mem, off

    def __repr__(self):
        return f"<{self.mem.name}+{self.off}>"


class TailCall(Exception):
    pass


TAIL_TARGETS = {"INNER_XDP": "sensor_xdp_inner", "INNER_TC": "sensor_tc_inner"}


class MapObj:
    def __init__(self, name, typ, ks, vs, n):
        self.name, self.typ, self.ks, self.vs, self.n = name, typ, ks, vs, n
        self.vals = {}

    def __repr__(self):
        return f"map:{self.name}"


ARRAY_TYPES = {2, 6}  # ARRAY, PERCPU_ARRAY


def s64(v):
    v &= MASK
    return v - (1 << 64) if v >> 63 else v


def s32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


class Prog:
    def __init__(self, path):
        f = open(path, "rb")
        self.elf = ELFFile(f)
        self.secs = {}
        for s in self.elf.iter_sections():
            if s["sh_type"] == "SHT_PROGBITS" and s["sh_flags"] & 0x4:  # exec
                self.secs[s.name] = s.data()
        self.symtab = self.elf.get_section_by_name(".symtab")
        self.maps = {}
        maps = self.elf.get_section_by_name("maps").data()
        self.funcs = {}
        for sym in self.symtab.iter_symbols():
            shn = sym["st_shndx"]
            if not isinstance(shn, int):
                continue
            sec = self.elf.get_section(shn).name
            if sec == "maps" and sym["st_info"]["type"] == "STT_OBJECT":
                o = sym["st_value"]
                typ, ks, vs, n = struct.unpack_from("<IIII", maps, o)
                self.maps[(sec, o)] = MapObj(sym.name, typ, ks, vs, n)
            if sym["st_info"]["type"] == "STT_FUNC":
                self.funcs[(sec, sym["st_value"] // 8)] = (sym.name, sym["st_size"] // 8)
        # relocations: (section, insn index) -> (target section, symbol value)
        self.relocs = {}
        for s in self.elf.iter_sections():
            if isinstance(s, RelocationSection):
                target = self.elf.get_section(s["sh_info"]).name
                for r in s.iter_relocations():
                    sym = self.symtab.get_symbol(r["r_info_sym"])
                    tsec = self.elf.get_section(sym["st_shndx"]).name
                    self.relocs[(target, r["r_offset"] // 8)] = (tsec, sym["st_value"], sym.name)

    def func_of(self, sec, idx):
        best = None
        for (s, start), (name, size) in self.funcs.items():
            if s == sec and start <= idx < start + max(size, 1):
                best = name
        return best or f"{sec}?"

    def insn(self, sec, idx):
        return struct.unpack_from("<BBhi", self.secs[sec], idx * 8)


class Run:
    def __init__(self, prog, pkt_bytes):
        self.p = prog
        self.pkt = Mem("pkt", data=pkt_bytes)
        self.ctx = Mem("ctx", 32)
        self.counts = Counter()
        self.total = 0
        self.helpers = Counter()
        self.trace = False

    def load(self, ptr, size):
        if not isinstance(ptr, Ptr):
            raise RuntimeError(f"load through non-pointer {ptr:#x}")
        m, o = ptr.mem, ptr.off
        if m is self.ctx:
            if size != 4:
                raise RuntimeError(f"ctx load size {size} at {o}")
            if o in (0, 8):
                return Ptr(self.pkt, 0)
            if o == 4:
                return Ptr(self.pkt, len(self.pkt.b))
            return 1
        if size == 8 and o in m.ptrs:
            return m.ptrs[o]
        if o < 0 or o + size > len(m.b):
            raise RuntimeError(f"out of bounds load {m.name}+{o} size {size} (len {len(m.b)})")
        return int.from_bytes(m.b[o:o + size], "little")

    def store(self, ptr, size, val):
        if not isinstance(ptr, Ptr):
            raise RuntimeError(f"store through non-pointer {ptr}")
        m, o = ptr.mem, ptr.off
        if o < 0 or o + size > len(m.b):
            raise RuntimeError(f"out of bounds store {m.name}+{o} size {size} (len {len(m.b)})")
        for k in list(m.ptrs):
            if k < o + size and o < k + 8:
                del m.ptrs[k]
        if isinstance(val, (Ptr, MapObj)):
            if size != 8:
                raise RuntimeError("pointer spill not 8 bytes")
            m.ptrs[o] = val
            return
        m.b[o:o + size] = (val & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def read_bytes(self, ptr, n):
        return bytes(ptr.mem.b[ptr.off:ptr.off + n])

    def helper(self, hid, r):
        self.helpers[hid] += 1
        if hid == 1:  # map_lookup_elem
            mp = r[1]
            key = self.read_bytes(r[2], mp.ks)
            if mp.typ in ARRAY_TYPES:
                i = int.from_bytes(key, "little")
                if i >= mp.n:
                    return 0
                if i not in mp.vals:
                    mp.vals[i] = Mem(f"{mp.name}[{i}]", mp.vs)
                return Ptr(mp.vals[i], 0)
            v = mp.vals.get(key)
            return Ptr(v, 0) if v else 0
        if hid == 2:  # map_update_elem
            mp = r[1]
            key = self.read_bytes(r[2], mp.ks)
            if r[4] == 1 and key in mp.vals:  # NOEXIST
                return s64(-17)
            mp.vals[key] = Mem(f"{mp.name}{{}}", data=self.read_bytes(r[3], mp.vs))
            return 0
        if hid in (5, 118):
            return 1000
        if hid == 8:
            return 0
        if hid == 188:
            return len(self.pkt.b)
        if hid == 189:  # xdp_load_bytes(ctx, off, buf, len)
            off, dst, n = r[2], r[3], r[4]
            data = self.pkt.b[off:off + n]
            if len(data) < n:
                return s64(-14)
            for i, b in enumerate(data):
                self.store(Ptr(dst.mem, dst.off + i), 1, b)
            return 0
        if hid == 131:  # ringbuf_reserve: pretend full
            return 0
        if hid == 12:  # tail_call(ctx, prog_array, index)
            raise TailCall(r[2].name)
        raise RuntimeError(f"helper {hid} not modelled")

    def run(self, sec, start):
        while True:
            try:
                return self.run_one(sec, start)
            except TailCall as t:
                target = TAIL_TARGETS[str(t)]
                sec, start = next(k for k, v in self.p.funcs.items() if v[0] == target)

    def run_one(self, sec, start):
        p = self.p
        regs = [0] * 11
        regs[1] = Ptr(self.ctx, 0)
        stack = Mem("stack0", 512)
        regs[10] = Ptr(stack, 512)
        frames = []
        pc = (sec, start)
        depth = 0
        while True:
            s, i = pc
            op, rr, off, imm = p.insn(s, i)
            dst, src = rr & 0xF, rr >> 4
            self.total += 1
            fn = p.func_of(s, i)
            self.counts[fn] += 1
            if self.trace:
                print(f"{fn[-30:]:>30} {s}:{i:5d} op={op:#04x} d=r{dst} s=r{src} off={off} imm={imm}")
            cls = op & 7
            nxt = (s, i + 1)
            if op == 0x18:  # ld_imm64
                _, _, _, imm2 = p.insn(s, i + 1)
                rel = p.relocs.get((s, i))
                if rel and rel[0] == "maps":
                    regs[dst] = p.maps[("maps", rel[1] + imm)] if ("maps", rel[1] + imm) in p.maps else p.maps[("maps", rel[1])]
                elif rel:
                    regs[dst] = Ptr(Mem(rel[0], 4096), rel[1] + imm)
                else:
                    regs[dst] = (imm & 0xFFFFFFFF) | ((imm2 & 0xFFFFFFFF) << 32)
                pc = (s, i + 2)
                continue
            if cls in (4, 7):  # ALU / ALU64
                is64 = cls == 7
                code = op & 0xF0
                b = regs[src] if op & 8 else (imm & MASK if is64 else imm & 0xFFFFFFFF)
                a = regs[dst]
                if code == 0xD0:  # byte swap
                    v = a & MASK
                    width = imm
                    if op & 8 and cls == 4:  # to big endian
                        v = int.from_bytes((v & ((1 << width) - 1)).to_bytes(width // 8, "little"), "big")
                    elif cls == 7:  # bswap
                        v = int.from_bytes((v & ((1 << width) - 1)).to_bytes(width // 8, "little"), "big")
                    else:
                        v = v & ((1 << width) - 1)
                    regs[dst] = v
                    pc = nxt
                    continue
                if code == 0xB0:
                    if isinstance(b, (Ptr, MapObj)):
                        if not is64:
                            raise RuntimeError("32-bit mov of pointer")
                        regs[dst] = b
                    elif off in (8, 16, 32):  # movsx
                        w = off
                        v = b & ((1 << w) - 1)
                        if v >> (w - 1):
                            v -= 1 << w
                        regs[dst] = v & (MASK if is64 else 0xFFFFFFFF)
                    else:
                        regs[dst] = b & (MASK if is64 else 0xFFFFFFFF)
                    pc = nxt
                    continue
                if isinstance(a, Ptr) or isinstance(b, Ptr):
                    if code == 0x00 and isinstance(a, Ptr) and isinstance(b, int):
                        regs[dst] = Ptr(a.mem, a.off + s64(b))
                    elif code == 0x00 and isinstance(b, Ptr) and isinstance(a, int):
                        regs[dst] = Ptr(b.mem, b.off + s64(a))
                    elif code == 0x10 and isinstance(a, Ptr) and isinstance(b, int):
                        regs[dst] = Ptr(a.mem, a.off - s64(b))
                    elif code == 0x10 and isinstance(a, Ptr) and isinstance(b, Ptr):
                        regs[dst] = (a.off - b.off) & MASK
                    else:
                        raise RuntimeError(f"ALU {code:#x} on pointer {a} {b}")
                    pc = nxt
                    continue
                m = MASK if is64 else 0xFFFFFFFF
                a &= m
                b &= m
                bits = 64 if is64 else 32
                if code == 0x00:
                    v = a + b
                elif code == 0x10:
                    v = a - b
                elif code == 0x20:
                    v = a * b
                elif code == 0x30:
                    v = a // b if b else 0
                elif code == 0x40:
                    v = a | b
                elif code == 0x50:
                    v = a & b
                elif code == 0x60:
                    v = a << (b % bits)
                elif code == 0x70:
                    v = a >> (b % bits)
                elif code == 0x80:
                    v = -a
                elif code == 0x90:
                    v = a % b if b else a
                elif code == 0xA0:
                    v = a ^ b
                elif code == 0xC0:
                    sa = s64(a) if is64 else s32(a)
                    v = sa >> (b % bits)
                else:
                    raise RuntimeError(f"alu op {op:#x}")
                regs[dst] = v & m
                pc = nxt
                continue
            if cls == 1:  # LDX
                size = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[op & 0x18]
                base = regs[src]
                regs[dst] = self.load(Ptr(base.mem, base.off + off), size)
                pc = nxt
                continue
            if cls in (2, 3):
                size = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[op & 0x18]
                base = regs[dst]
                addr = Ptr(base.mem, base.off + off)
                if op & 0xE0 == 0xC0:  # atomic
                    cur = self.load(addr, size)
                    v = regs[src]
                    aop = imm & 0xF0
                    if aop == 0x00:
                        new = cur + v
                    elif aop == 0x40:
                        new = cur | v
                    elif aop == 0x50:
                        new = cur & v
                    elif aop == 0xA0:
                        new = cur ^ v
                    else:
                        raise RuntimeError(f"atomic {imm:#x}")
                    self.store(addr, size, new)
                    if imm & 1:
                        regs[src] = cur
                else:
                    self.store(addr, size, regs[src] if cls == 3 else imm)
                pc = nxt
                continue
            if cls in (5, 6):
                code = op & 0xF0
                if code == 0x80:  # call
                    if src == 1:
                        rel = p.relocs.get((s, i))
                        if rel:
                            tsec, tval = rel[0], rel[1] // 8 + imm + 1
                        else:
                            tsec, tval = s, i + imm + 1
                        frames.append((nxt, regs[6:10], regs[10]))
                        depth += 1
                        regs[10] = Ptr(Mem(f"stack{depth}", 512), 512)
                        pc = (tsec, tval)
                        continue
                    r0 = self.helper(imm, regs)
                    regs[0] = r0
                    for k in range(1, 6):
                        regs[k] = 0xDEAD
                    pc = nxt
                    continue
                if code == 0x90:  # exit
                    if not frames:
                        return regs[0]
                    pc, saved, r10 = frames.pop()
                    regs[6:10] = saved
                    regs[10] = r10
                    continue
                if code == 0x00:  # ja; gotol (JMP32 class) jumps by imm
                    pc = (s, i + 1 + (imm if cls == 6 else off))
                    continue
                a = regs[dst]
                b = regs[src] if op & 8 else imm
                is32 = cls == 6
                if isinstance(a, (Ptr, MapObj)) or isinstance(b, (Ptr, MapObj)):
                    if isinstance(a, Ptr) and isinstance(b, Ptr):
                        if a.mem is not b.mem:
                            raise RuntimeError(f"compare {a} {b}")
                        ua, ub = a.off, b.off
                        sa, sb = ua, ub
                    elif isinstance(b, int) and b == 0:
                        ua, ub, sa, sb = 1 << 40, 0, 1 << 40, 0
                    elif isinstance(a, int) and a == 0:
                        ua, ub, sa, sb = 0, 1 << 40, 0, 1 << 40
                    else:
                        raise RuntimeError(f"compare {a} {b}")
                else:
                    if is32:
                        ua, ub = a & 0xFFFFFFFF, b & 0xFFFFFFFF
                        sa, sb = s32(ua), s32(ub)
                    else:
                        ua, ub = a & MASK, b & MASK
                        sa, sb = s64(ua), s64(ub)
                taken = {
                    0x10: ua == ub, 0x20: ua > ub, 0x30: ua >= ub, 0x40: (ua & ub) != 0,
                    0x50: ua != ub, 0x60: sa > sb, 0x70: sa >= sb, 0xA0: ua < ub,
                    0xB0: ua <= ub, 0xC0: sa < sb, 0xD0: sa <= sb,
                }[code]
                pc = (s, i + 1 + off) if taken else nxt
                continue
            raise RuntimeError(f"opcode {op:#x} at {s}:{i}")


def frame(kind):
    eth = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
    tcp = struct.pack(">HHIIBBHHH", 40000, 443, 1, 1, 5 << 4, 0x10, 65535, 0, 0)
    payload = bytes(6)
    if kind == "v4":
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
        return eth + b"\x08\x00" + ip + tcp + payload
    if kind == "vlan":
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
        return eth + b"\x81\x00" + struct.pack(">H", 10) + b"\x08\x00" + ip + tcp + payload
    if kind == "pppoe":
        ip = frame("v4")[14:]
        return eth + b"\x88\x64" + struct.pack(">BBHHH", 0x11, 0, 7, len(ip) + 2, 0x0021) + ip
    if kind == "mpls":
        ip = frame("v4")[14:]
        return eth + b"\x88\x47" + struct.pack(">II", (100 << 12) | 64, (200 << 12) | 0x100 | 64) + ip
    if kind in ("vxlan", "gre", "ipip"):
        inner = frame("v4")
        def outer_ip(proto, payload):
            return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0,
                               bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])) + payload
        if kind == "vxlan":
            vx = struct.pack(">BBHI", 0x08, 0, 0, 42 << 8) + inner
            udp = struct.pack(">HHHH", 50000, 4789, 8 + len(vx), 0) + vx
            return eth + b"\x08\x00" + outer_ip(17, udp)
        if kind == "gre":
            return eth + b"\x08\x00" + outer_ip(47, struct.pack(">HH", 0, 0x0800) + inner[14:])
        return eth + b"\x08\x00" + outer_ip(4, inner[14:])
    if kind == "v6":
        ip = struct.pack(">IHBB16s16s", 6 << 28, len(tcp) + len(payload), 6, 64,
                         bytes(15) + b"\x01", bytes(15) + b"\x02")
        return eth + b"\x86\xdd" + ip + tcp + payload
    raise SystemExit(kind)


def main():
    import argparse

    ap = argparse.ArgumentParser(description="instructions one packet executes in a BPF program")
    ap.add_argument("object")
    ap.add_argument("--program", default="sensor_xdp")
    ap.add_argument("--frame", action="append", dest="frames")
    ap.add_argument("--functions", action="store_true", help="per-function counts")
    ap.add_argument("--trace", action="store_true", help="every executed instruction")
    args = ap.parse_args()
    p = Prog(args.object)
    start = next((k for k, v in p.funcs.items() if v[0] == args.program), None)
    if start is None:
        raise SystemExit(f"{args.object}: no program {args.program}")
    for kind in args.frames or ["v4", "v6", "vlan"]:
        for m in p.maps.values():
            m.vals = {}
            if m.name == "SETTINGS":
                m.vals[0] = Mem("SETTINGS[0]", m.vs)
                m.vals[0].b[16:20] = (0xFFFFFFFF).to_bytes(4, "little")  # decap: every kind
        pkt = frame(kind)
        last = None
        # The first run creates the flow, the next ones are past its sampling: the last is
        # the steady state of a known flow.
        for rep in range(4):
            r = Run(p, pkt)
            r.trace = args.trace and rep == 3
            r.run(*start)
            last = r
        helpers = " ".join(f"{h}x{n}" for h, n in sorted(last.helpers.items()))
        flows = next(m for m in p.maps.values() if m.name == "FLOWS").vals
        # FlowStats starts with packets[2]: what the runs added to the flow they created.
        packets = sum(
            int.from_bytes(v.b[0:8], "little") + int.from_bytes(v.b[8:16], "little")
            for v in flows.values()
        )
        print(
            f"{kind} {last.total} instructions (helper calls: {helpers}; "
            f"flows {len(flows)}, packets counted {packets})"
        )
        if args.functions:
            for fn, n in last.counts.most_common():
                print(f"    {n:5d} {fn}")


if __name__ == "__main__":
    main()
