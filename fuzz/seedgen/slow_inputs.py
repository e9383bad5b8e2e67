#!/usr/bin/env python3
"""Writes ELF files that make goalloc's no-section scans quadratic (slow
inputs, not crashes: see fuzz/README.md, "Known slow inputs").

  python3 fuzz/seedgen/slow_inputs.py buildinfo SIZE OUT
  python3 fuzz/seedgen/slow_inputs.py pclntab SIZE OUT
  cargo run --release --example replay -- parse OUT     # times GoBinary::parse

buildinfo: a writable segment in which every 48th byte starts a build info
    header whose inline version string is SIZE/2 bytes long: read_build_info
    (no .go.buildinfo section) parses every candidate, decoding and copying
    ~SIZE/2 bytes each, ~SIZE/96 times.
pclntab: a valid build info, then a read-only segment with K = SIZE/144
    function table headers that all point at one shared table of N = SIZE/16
    entries (equal entry offsets are allowed, all share one _func named
    "runtime.x"): load_pclntab (no .gopclntab section) fully parses every
    candidate, K * N iterations, each allocating a String.
"""
import struct
import sys
MAGIC = b"\xff Go buildinf:"

def elf(segments, machine=62):
    """segments: list of (flags, vaddr, bytes). No section headers."""
    nph = len(segments)
    off = 64 + 56 * nph
    body = b""; ph = b""
    for flags, vaddr, data in segments:
        pad = (-(off + len(body))) % 16
        body += b"\0" * pad
        o = off + len(body)
        ph += struct.pack("<IIQQQQQQ", 1, flags, o, vaddr, vaddr, len(data), len(data), 16)
        body += data
    eh = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    eh += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 64, 0, 0, 64, 56, nph, 64, 0, 0)
    return eh + ph + body

def uvarint(v):
    out = b""
    while v >= 0x80:
        out += bytes([v & 0x7f | 0x80]); v >>= 7
    return out + bytes([v])

def buildinfo_scan(size):
    """Writable segment where every 48th byte starts a build info header whose
    inline version string is size/2 bytes long: each candidate decodes and
    copies ~size/2 bytes, and there are ~size/96 of them."""
    L = size // 2
    block = MAGIC + b"\x08\x02" + b"\0" * 16          # 32-byte header
    block += uvarint(L).ljust(16, b"\x01")             # +32: version length, then filler
    assert len(block) == 48
    data = block * (size // 48)
    return elf([(6, 0x100000, data)])

def inline_buildinfo(version=b"go1.21.13", modinfo=b""):
    return MAGIC + b"\x08\x02" + b"\0" * 16 + uvarint(len(version)) + version + uvarint(len(modinfo)) + modinfo

def pclntab_scan(size):
    """A valid build info, then a read-only segment with K function table
    headers (Go 1.20 layout) that all point at one shared table of N entries
    (all entry offset 0, all the same _func, name "runtime.x"): every header is
    a valid candidate and each costs N iterations (and N String allocations)."""
    hsize = 8 + 8 * 8
    K = size // 2 // hsize
    N = size // 2 // 8
    table_start = K * hsize
    names = b"runtime.x\0"
    # table layout (offsets from table_start): names, [cu/file/pctab empty], ftab, _func
    t_names = 0
    t_ftab = 16
    t_func = t_ftab + (N + 1) * 8
    table = names.ljust(16, b"\0")
    funcoff = t_func - t_ftab
    table += struct.pack("<II", 0, funcoff) * (N + 1)
    table += struct.pack("<iiiiI", 0, 0, 0, 0, 0) + b"\0" * 24
    hdrs = b""
    for i in range(K):
        base = i * hsize
        rel = table_start - base
        hdrs += struct.pack("<IBBBB", 0xfffffff1, 0, 0, 1, 8)
        hdrs += struct.pack("<8Q", N, 1, 0x401000, rel + t_names, rel + t_ftab, rel + t_ftab, rel + t_ftab, rel + t_ftab)
    ro = hdrs + table
    text = b"\xc3" * 64
    return elf([(6, 0x100000, inline_buildinfo()), (4, 0x200000, ro), (5, 0x401000, text)])

kind, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
open(out, "wb").write({"buildinfo": buildinfo_scan, "pclntab": pclntab_scan}[kind](size))
