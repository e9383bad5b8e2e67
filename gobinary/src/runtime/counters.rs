//! The figures of `runtime.ReadMemStats` and `runtime.NumGoroutine`,
//! computed the way the runtime computes them (`readmemstats_m`,
//! `heapGoalInternal`, `gcount`) from what a live process holds.
//!
//! Process memory is untrusted input: every value read is checked before it
//! is used as an address or a count, arithmetic is checked, and memory use is
//! bounded whatever `allglen` says (goroutines are walked in chunks).

use agent_common::{HIST_BUCKETS, size_bucket};

use super::layout::{CLASS_TO_SIZE, G_DEAD, G_SCAN, Layout, MemoryLimitHeadroom, NUM_SIZE_CLASSES};
use super::locate::Globals;
use super::memory::{Memory, MemoryError, ReadRequest};

/// Most goroutines (`allglen`) believed: beyond this the read is implausible.
pub const MAX_ALLGLEN: u64 = 10_000_000;
/// Goroutines read per batch (one `process_vm_readv` of `allgs`, one for
/// their headers): bounds the buffers to ~150 KiB.
const G_CHUNK: usize = 1024;
/// How many times a heap-stats read that changed under us is retried.
const MAX_ATTEMPTS: u32 = 4;

/// A snapshot of a Go process's own counters, with the meaning of the
/// `runtime.MemStats` fields and `runtime.NumGoroutine()` named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeCounters {
    /// `Mallocs`: heap objects allocated (tiny allocations count one each).
    pub mallocs: u64,
    /// `Frees`: heap objects freed.
    pub frees: u64,
    /// `TotalAlloc`: bytes allocated, by size class (not requested size).
    pub total_alloc: u64,
    /// Bytes freed (`TotalAlloc - HeapAlloc`).
    pub freed_bytes: u64,
    /// `HeapAlloc`: bytes of live (and not yet swept) heap objects.
    pub heap_alloc: u64,
    /// `HeapObjects`: `mallocs - frees`.
    pub heap_objects: u64,
    /// `HeapInuse`: bytes in in-use spans.
    pub heap_inuse: u64,
    /// `NextGC`: the heap goal.
    pub next_gc: u64,
    /// `NumGC`: completed GC cycles.
    pub num_gc: u32,
    /// `runtime.NumGoroutine()`.
    pub goroutines: u64,
    /// Allocations by size, in `agent_common`'s power-of-two buckets
    /// (`size_bucket`): each small allocation in the bucket of its size
    /// class's object size; tiny allocations (< 16 bytes, packed into 16-byte
    /// blocks) in the bucket of 16; large allocations (> 32 KiB, sizes not
    /// kept per object by the runtime) in the last bucket, so every bucket's
    /// upper bound holds and every bucket only grows.
    /// `alloc_sizes.iter().sum() == mallocs`.
    pub alloc_sizes: [u64; HIST_BUCKETS],
    /// Whether two back-to-back reads of the heap statistics agreed. False
    /// means every attempt saw them change while reading (a busy process):
    /// the figures are still plausible, but may mix two instants.
    pub consistent: bool,
    /// Reads repeated because the heap statistics changed while being read.
    pub retries: u32,
}

/// Why a read failed. Messages are single lines for users.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The process exited (ESRCH/ENOENT, or its memory is gone).
    #[error("the process has exited")]
    Gone,
    /// EPERM/EACCES.
    #[error(
        "cannot read the process's memory: needs ptrace attach access: CAP_SYS_PTRACE for other users' processes, and Yama ptrace_scope (/proc/sys/kernel/yama/ptrace_scope) must be < 3"
    )]
    AccessDenied,
    /// What was read makes no sense (wrong address, torn beyond repair, or
    /// not the binary we think): nothing from this read should be used.
    #[error("implausible runtime counters: {0}")]
    Implausible(String),
    /// The executable's mapping could not be found in /proc/PID/maps.
    #[error("{0}")]
    Maps(super::maps::MapsError),
    #[error("reading process memory: {0}")]
    Io(#[source] std::io::Error),
}

impl From<MemoryError> for ReadError {
    fn from(e: MemoryError) -> Self {
        match e {
            MemoryError::Gone => ReadError::Gone,
            MemoryError::AccessDenied => ReadError::AccessDenied,
            MemoryError::Unmapped { addr, len } => ReadError::Implausible(format!(
                "address {addr:#x} ({len} bytes) is not mapped in the process"
            )),
            MemoryError::Io(e) => ReadError::Io(e),
        }
    }
}

impl From<super::maps::MapsError> for ReadError {
    fn from(e: super::maps::MapsError) -> Self {
        use super::maps::MapsError;
        match e {
            MapsError::Gone => ReadError::Gone,
            MapsError::AccessDenied => ReadError::AccessDenied,
            e => ReadError::Maps(e),
        }
    }
}

fn implausible(msg: impl Into<String>) -> ReadError {
    ReadError::Implausible(msg.into())
}

fn u64_at(b: &[u8], off: u64) -> Result<u64, ReadError> {
    usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..o.checked_add(8)?))
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| implausible(format!("field at {off} outside the bytes read")))
}

fn u32_at(b: &[u8], off: u64) -> Result<u32, ReadError> {
    usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..o.checked_add(4)?))
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| implausible(format!("field at {off} outside the bytes read")))
}

/// Run-time addresses (link-time + load bias) of what is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addrs {
    pub heap_stats: u64,
    pub numgc: u64,
    /// Start of the `gcControllerState` range read.
    pub gcc: u64,
    pub allglen: u64,
    pub allgptr: u64,
    pub ngsys: u64,
}

impl Addrs {
    pub(crate) fn new(g: &Globals, l: &Layout, bias: u64) -> Addrs {
        let at = |link: u64, off: u64| link.wrapping_add(bias).wrapping_add(off);
        Addrs {
            heap_stats: at(g.memstats.addr, l.mstats.heap_stats),
            numgc: at(g.memstats.addr, l.mstats.numgc),
            gcc: at(g.gc_controller.addr, gcc_range(l).0),
            allglen: at(g.allglen.addr, 0),
            allgptr: at(g.allgptr.addr, 0),
            ngsys: at(g.sched.addr, l.schedt.ngsys),
        }
    }
}

/// `[first, end)` byte range of the `gcControllerState` fields used.
fn gcc_range(l: &Layout) -> (u64, u64) {
    let c = &l.gc_controller;
    let offs = [
        c.gc_percent_heap_goal,
        c.sweep_dist_min_trigger,
        c.triggered,
        c.heap_in_use,
        c.heap_free,
        c.total_alloc,
        c.total_free,
        c.mapped_ready,
        c.memory_limit,
        c.heap_marked,
    ];
    let lo = offs.iter().copied().min().unwrap_or(0);
    let hi = offs.iter().copied().max().unwrap_or(0) + 8;
    (lo, hi)
}

/// Reads the counters through `mem` at `addrs` with layout `l`.
pub(crate) fn read_counters(
    mem: &dyn Memory,
    l: &Layout,
    addrs: &Addrs,
) -> Result<RuntimeCounters, ReadError> {
    let hs_len = usize::try_from(l.consistent_heap_stats.gen_ + 4)
        .map_err(|_| implausible("heap stats size"))?;
    let (gcc_lo, gcc_hi) = gcc_range(l);
    let gcc_len = usize::try_from(gcc_hi - gcc_lo).map_err(|_| implausible("gc range"))?;

    let mut retries = 0;
    let mut consistent = false;
    let (mut hs, mut hs2) = (vec![0u8; hs_len], vec![0u8; hs_len]);
    let mut gcc = vec![0u8; gcc_len];
    let mut gcc2 = vec![0u8; gcc_len];
    let mut numgc = [0u8; 4];
    for attempt in 0..MAX_ATTEMPTS {
        // The heap stats twice around the rest, in one system call: equal
        // copies mean nothing moved in between (a refill or a GC).
        let mut reqs = [
            ReadRequest {
                addr: addrs.heap_stats,
                buf: &mut hs,
            },
            ReadRequest {
                addr: addrs.gcc,
                buf: &mut gcc,
            },
            ReadRequest {
                addr: addrs.numgc,
                buf: &mut numgc,
            },
            ReadRequest {
                addr: addrs.gcc,
                buf: &mut gcc2,
            },
            ReadRequest {
                addr: addrs.heap_stats,
                buf: &mut hs2,
            },
        ];
        mem.read_many(&mut reqs)?;
        if hs == hs2 && gcc == gcc2 && memory_limit_inputs_coherent(l, &gcc)? {
            consistent = true;
            break;
        }
        if attempt + 1 < MAX_ATTEMPTS {
            retries += 1;
        }
    }

    let heap = heap_figures(l, &hs)?;
    let gcf = gc_figures(l, &gcc)?;
    let goroutines = count_goroutines(mem, l, addrs)?;
    Ok(RuntimeCounters {
        mallocs: heap.mallocs,
        frees: heap.frees,
        total_alloc: heap.total_alloc,
        freed_bytes: heap.freed_bytes,
        heap_alloc: heap.total_alloc - heap.freed_bytes,
        heap_objects: heap.mallocs - heap.frees,
        heap_inuse: gcf.heap_inuse,
        next_gc: gcf.next_gc,
        num_gc: u32::from_le_bytes(numgc),
        goroutines,
        alloc_sizes: heap.alloc_sizes,
        consistent,
        retries,
    })
}

struct HeapFigures {
    mallocs: u64,
    frees: u64,
    total_alloc: u64,
    freed_bytes: u64,
    alloc_sizes: [u64; HIST_BUCKETS],
}

/// `readmemstats_m` over the sum of the three `heapStatsDelta` slots (what
/// `consistentHeapStats.unsafeRead` does).
fn heap_figures(l: &Layout, hs: &[u8]) -> Result<HeapFigures, ReadError> {
    let d = &l.heap_stats_delta;
    let gen_ = u32_at(hs, l.consistent_heap_stats.gen_)?;
    if gen_ > 2 {
        return Err(implausible(format!(
            "heapStats.gen is {gen_} (0..2 expected): wrong address or layout"
        )));
    }
    let overflow = || implausible("heap statistics overflow");
    // Sum of a field over the three slots. Go sums with wrapping uint64;
    // real counters never come near 2^64, so an overflow means garbage.
    let field = |off: u64| -> Result<u64, ReadError> {
        let mut sum = 0u64;
        for slot in 0..3u64 {
            let at = l.consistent_heap_stats.stats + slot * d.size + off;
            sum = sum.checked_add(u64_at(hs, at)?).ok_or_else(overflow)?;
        }
        Ok(sum)
    };
    let tiny = field(d.tiny_alloc_count)?;
    let large_allocs = field(d.large_alloc_count)?;
    let mut mallocs = large_allocs;
    let mut frees = field(d.large_free_count)?;
    let mut total_alloc = field(d.large_alloc)?;
    let mut freed_bytes = field(d.large_free)?;
    let mut alloc_sizes = [0u64; HIST_BUCKETS];
    let last = HIST_BUCKETS - 1;
    for (i, &size) in CLASS_TO_SIZE.iter().enumerate().take(NUM_SIZE_CLASSES) {
        let a = field(d.small_alloc_count + 8 * i as u64)?;
        let f = field(d.small_free_count + 8 * i as u64)?;
        let size = u64::from(size);
        mallocs = mallocs.checked_add(a).ok_or_else(overflow)?;
        frees = frees.checked_add(f).ok_or_else(overflow)?;
        let ab = a.checked_mul(size).ok_or_else(overflow)?;
        let fb = f.checked_mul(size).ok_or_else(overflow)?;
        total_alloc = total_alloc.checked_add(ab).ok_or_else(overflow)?;
        freed_bytes = freed_bytes.checked_add(fb).ok_or_else(overflow)?;
        // Class 0 holds no objects (large ones are counted apart).
        let b = if size == 0 { last } else { size_bucket(size) };
        if let Some(slot) = alloc_sizes.get_mut(b) {
            *slot = slot.checked_add(a).ok_or_else(overflow)?;
        }
    }
    // Tiny allocations: counted by the runtime in both Mallocs and Frees
    // (their blocks are the real objects, in class 2).
    mallocs = mallocs.checked_add(tiny).ok_or_else(overflow)?;
    frees = frees.checked_add(tiny).ok_or_else(overflow)?;
    let tiny_bucket = size_bucket(super::layout::TINY_BLOCK_SIZE);
    if let Some(slot) = alloc_sizes.get_mut(tiny_bucket) {
        *slot = slot.checked_add(tiny).ok_or_else(overflow)?;
    }
    if let Some(slot) = alloc_sizes.get_mut(last) {
        *slot = slot.checked_add(large_allocs).ok_or_else(overflow)?;
    }
    if frees > mallocs {
        return Err(implausible(format!("frees {frees} > mallocs {mallocs}")));
    }
    if freed_bytes > total_alloc {
        return Err(implausible(format!(
            "freed bytes {freed_bytes} > allocated bytes {total_alloc}"
        )));
    }
    Ok(HeapFigures {
        mallocs,
        frees,
        total_alloc,
        freed_bytes,
        alloc_sizes,
    })
}

struct GcFigures {
    heap_inuse: u64,
    next_gc: u64,
}

/// A `gcControllerState` field from the range read (offsets relative to
/// the struct).
fn gcc_field(l: &Layout, gcc: &[u8], off: u64) -> Result<u64, ReadError> {
    u64_at(gcc, off - gcc_range(l).0)
}

/// `memoryLimitHeapGoal` loops until `heapFree + heapAlloc <= mappedReady`
/// (its inputs are updated separately); a read that breaks it is retried.
fn memory_limit_inputs_coherent(l: &Layout, gcc: &[u8]) -> Result<bool, ReadError> {
    let c = &l.gc_controller;
    let heap_free = gcc_field(l, gcc, c.heap_free)?;
    let heap_alloc =
        gcc_field(l, gcc, c.total_alloc)?.wrapping_sub(gcc_field(l, gcc, c.total_free)?);
    let mapped = gcc_field(l, gcc, c.mapped_ready)?;
    Ok(heap_free.wrapping_add(heap_alloc) <= mapped)
}

/// `HeapInuse` and `heapGoal()` (`heapGoalInternal` with
/// `memoryLimitHeapGoal`), in Go's wrapping uint64 arithmetic.
fn gc_figures(l: &Layout, gcc: &[u8]) -> Result<GcFigures, ReadError> {
    let c = &l.gc_controller;
    let get = |off| gcc_field(l, gcc, off);
    let mut goal = get(c.gc_percent_heap_goal)?;
    let limit_goal = memory_limit_heap_goal(l, gcc)?;
    if limit_goal < goal {
        goal = limit_goal;
    } else {
        let sweep_dist = get(c.sweep_dist_min_trigger)?;
        if sweep_dist > goal {
            goal = sweep_dist;
        }
        const MIN_RUNWAY: u64 = 64 << 10;
        let triggered = get(c.triggered)?;
        if triggered != u64::MAX && goal < triggered.wrapping_add(MIN_RUNWAY) {
            goal = triggered.wrapping_add(MIN_RUNWAY);
        }
    }
    Ok(GcFigures {
        heap_inuse: get(c.heap_in_use)?,
        next_gc: goal,
    })
}

fn memory_limit_heap_goal(l: &Layout, gcc: &[u8]) -> Result<u64, ReadError> {
    let c = &l.gc_controller;
    let get = |off| gcc_field(l, gcc, off);
    let heap_free = get(c.heap_free)?;
    let heap_alloc = get(c.total_alloc)?.wrapping_sub(get(c.total_free)?);
    let mapped_ready = get(c.mapped_ready)?;
    let heap_marked = get(c.heap_marked)?;
    // memoryLimit is an int64; Go converts it to uint64.
    let memory_limit = get(c.memory_limit)?;
    let non_heap = mapped_ready
        .wrapping_sub(heap_free)
        .wrapping_sub(heap_alloc);
    let overage = mapped_ready.saturating_sub(memory_limit);
    if non_heap.wrapping_add(overage) >= memory_limit {
        return Ok(heap_marked);
    }
    let mut goal = memory_limit - non_heap.wrapping_add(overage);
    let headroom = match l.headroom {
        MemoryLimitHeadroom::Fixed(h) => h,
        MemoryLimitHeadroom::Percent { percent, min } => (goal / 100 * percent).max(min),
    };
    if goal < headroom || goal - headroom < headroom {
        goal = headroom;
    } else {
        goal -= headroom;
    }
    Ok(goal.max(heap_marked))
}

/// `gcount()`: goroutines that are not free, minus system goroutines.
/// `allgs[0:allglen]` is walked through `allgptr` (published before
/// `allglen`, so reading `allglen` first is safe, as `atomicAllG` does);
/// a g counts unless it is `_Gdead` with no M: a dead g with an M is a cgo
/// extra M's (Go < 1.26; 1.26+ gives those `_Gdeadextra`), which `ngsys`
/// subtracts again.
fn count_goroutines(mem: &dyn Memory, l: &Layout, addrs: &Addrs) -> Result<u64, ReadError> {
    let (mut len_b, mut ptr_b, mut ngsys_b) = ([0u8; 8], [0u8; 8], [0u8; 4]);
    mem.read_many(&mut [
        ReadRequest {
            addr: addrs.allglen,
            buf: &mut len_b,
        },
        ReadRequest {
            addr: addrs.allgptr,
            buf: &mut ptr_b,
        },
        ReadRequest {
            addr: addrs.ngsys,
            buf: &mut ngsys_b,
        },
    ])?;
    let allglen = u64::from_le_bytes(len_b);
    let allgptr = u64::from_le_bytes(ptr_b);
    let ngsys = i32::from_le_bytes(ngsys_b);
    if allglen > MAX_ALLGLEN {
        return Err(implausible(format!(
            "allglen {allglen} > {MAX_ALLGLEN}: wrong address or layout"
        )));
    }
    if allglen > 0 && allgptr == 0 {
        return Err(implausible("allgptr is nil with allglen > 0"));
    }
    let (status_off, m_off) = (l.g.atomicstatus, l.g.m);
    let lo = status_off.min(m_off);
    let hdr_len = usize::try_from(status_off.max(m_off) + 8 - lo).unwrap_or(0);
    let mut live: u64 = 0;
    let mut done: u64 = 0;
    let mut ptrs = vec![0u8; 8 * G_CHUNK];
    let mut hdrs = vec![0u8; hdr_len * G_CHUNK];
    while done < allglen {
        let n = usize::try_from((allglen - done).min(G_CHUNK as u64)).unwrap_or(G_CHUNK);
        let pbuf = ptrs.get_mut(..8 * n).ok_or_else(|| implausible("chunk"))?;
        let at = allgptr
            .checked_add(8 * done)
            .ok_or_else(|| implausible("allgs address overflows"))?;
        mem.read(at, pbuf)?;
        let mut reqs = Vec::with_capacity(n);
        for (p, h) in pbuf.chunks_exact(8).zip(hdrs.chunks_exact_mut(hdr_len)) {
            let gp = u64::from_le_bytes(p.try_into().map_err(|_| implausible("ptr"))?);
            if gp == 0 {
                return Err(implausible("nil g in allgs"));
            }
            reqs.push(ReadRequest {
                addr: gp
                    .checked_add(lo)
                    .ok_or_else(|| implausible("g address overflows"))?,
                buf: h,
            });
        }
        mem.read_many(&mut reqs)?;
        drop(reqs);
        for h in hdrs.chunks_exact(hdr_len).take(n) {
            let status = u32_at(h, status_off - lo)? & !G_SCAN;
            let m = u64_at(h, m_off - lo)?;
            if status != G_DEAD || m != 0 {
                live += 1;
            }
        }
        done += n as u64;
    }
    // gcount clamps at 1: "at least the current goroutine is running".
    let n = i64::try_from(live).unwrap_or(i64::MAX) - i64::from(ngsys);
    Ok(u64::try_from(n.max(1)).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::layout::Layout;

    /// Process memory faked by a map of address -> bytes.
    struct Fake(Vec<(u64, Vec<u8>)>);

    impl Memory for Fake {
        fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), MemoryError> {
            for r in reqs {
                let (base, bytes) = self
                    .0
                    .iter()
                    .find(|(b, v)| {
                        r.addr >= *b && r.addr + r.buf.len() as u64 <= b + v.len() as u64
                    })
                    .ok_or(MemoryError::Unmapped {
                        addr: r.addr,
                        len: r.buf.len(),
                    })?;
                let o = (r.addr - base) as usize;
                r.buf.copy_from_slice(&bytes[o..o + r.buf.len()]);
            }
            Ok(())
        }
    }

    fn put(v: &mut [u8], off: u64, x: u64) {
        v[off as usize..off as usize + 8].copy_from_slice(&x.to_le_bytes());
    }

    /// A fake process: memstats at 0x10000, gcController at 0x20000, allgs
    /// at 0x30000 (3 g's at 0x40000..), allglen/allgptr at 0x50000, sched at 0x60000.
    fn fake(l: &Layout) -> (Fake, Addrs) {
        let d = l.heap_stats_delta;
        let mut ms = vec![0u8; 8192];
        // slot 0: 10 small allocs of class 1 (8 B), 3 freed; slot 2: 1 large of 40000 B.
        put(&mut ms, d.small_alloc_count + 8, 10);
        put(&mut ms, d.small_free_count + 8, 3);
        put(&mut ms, 2 * d.size + d.large_alloc_count, 1);
        put(&mut ms, 2 * d.size + d.large_alloc, 40000);
        put(&mut ms, d.size + d.tiny_alloc_count, 5);
        ms[l.mstats.numgc as usize] = 7;
        let c = l.gc_controller;
        let mut gc = vec![0u8; 512];
        put(&mut gc, c.gc_percent_heap_goal, 4 << 20);
        put(&mut gc, c.triggered, u64::MAX);
        put(&mut gc, c.heap_in_use, 8192);
        put(&mut gc, c.memory_limit, i64::MAX as u64);
        put(&mut gc, c.mapped_ready, 1 << 20);
        let mut gs = vec![0u8; 3 * 256];
        // g0 running, g1 dead/free, g2 dead with an M (cgo extra).
        gs[l.g.atomicstatus as usize] = 2;
        gs[256 + l.g.atomicstatus as usize] = 6;
        gs[512 + l.g.atomicstatus as usize] = 6;
        put(&mut gs, 512 + l.g.m, 0xdead0);
        let mut allgs = vec![0u8; 24];
        for i in 0..3 {
            put(&mut allgs, 8 * i, 0x40000 + 256 * i);
        }
        let mut glob = vec![0u8; 16];
        put(&mut glob, 0, 3);
        put(&mut glob, 8, 0x30000);
        let mut sched = vec![0u8; 256];
        sched[l.schedt.ngsys as usize] = 1;
        let f = Fake(vec![
            (0x10000, ms),
            (0x20000, gc),
            (0x30000, allgs),
            (0x40000, gs),
            (0x50000, glob),
            (0x60000, sched),
        ]);
        let at = |a: u64, s| Located {
            addr: a,
            source: Source::Symbol(s),
        };
        use crate::runtime::locate::{Located, Source};
        let g = Globals {
            memstats: at(0x10000, "m"),
            gc_controller: at(0x20000, "g"),
            allglen: at(0x50000, "l"),
            allgptr: at(0x50008, "p"),
            sched: at(0x60000, "s"),
        };
        (f, Addrs::new(&g, l, 0))
    }

    #[test]
    fn figures_from_fake_memory() {
        for l in crate::runtime::layout::LAYOUTS {
            let (mem, addrs) = fake(l);
            let c = read_counters(&mem, l, &addrs).unwrap();
            assert_eq!(c.mallocs, 10 + 1 + 5);
            assert_eq!(c.frees, 3 + 5);
            assert_eq!(c.total_alloc, 80 + 40000);
            assert_eq!(c.freed_bytes, 24);
            assert_eq!(c.heap_alloc, 80 + 40000 - 24);
            assert_eq!(c.heap_objects, 8);
            assert_eq!(c.heap_inuse, 8192);
            assert_eq!(c.num_gc, 7);
            // running + extra-M g, minus ngsys
            assert_eq!(c.goroutines, 1);
            assert_eq!(c.alloc_sizes.iter().sum::<u64>(), c.mallocs);
            assert_eq!(c.alloc_sizes[size_bucket(8)], 10);
            assert_eq!(c.alloc_sizes[size_bucket(16)], 5);
            assert_eq!(c.alloc_sizes[HIST_BUCKETS - 1], 1);
            assert!(c.consistent);
            assert_eq!(c.retries, 0);
            // GOGC goal (4 MiB) is below the memory-limit goal.
            assert_eq!(c.next_gc, 4 << 20);
        }
    }

    #[test]
    fn implausible_reads_are_refused() {
        let l = Layout::for_version(1, 27).unwrap();
        let (mut mem, addrs) = fake(l);
        // gen out of range: not the heap stats.
        mem.0[0].1[l.consistent_heap_stats.gen_ as usize] = 9;
        assert!(matches!(
            read_counters(&mem, l, &addrs),
            Err(ReadError::Implausible(_))
        ));
        let (mut mem, addrs) = fake(l);
        put(&mut mem.0[0].1, l.heap_stats_delta.large_free_count, 1000);
        assert!(matches!(
            read_counters(&mem, l, &addrs),
            Err(ReadError::Implausible(m)) if m.contains("frees")
        ));
        let (mut mem, addrs) = fake(l);
        put(&mut mem.0[4].1, 0, MAX_ALLGLEN + 1);
        assert!(matches!(
            read_counters(&mem, l, &addrs),
            Err(ReadError::Implausible(m)) if m.contains("allglen")
        ));
        let (mut mem, addrs) = fake(l);
        put(&mut mem.0[0].1, l.heap_stats_delta.large_alloc, u64::MAX);
        assert!(matches!(
            read_counters(&mem, l, &addrs),
            Err(ReadError::Implausible(_))
        ));
        // allgs pointing nowhere.
        let (mut mem, addrs) = fake(l);
        put(&mut mem.0[4].1, 8, 0x7777_0000);
        assert!(matches!(
            read_counters(&mem, l, &addrs),
            Err(ReadError::Implausible(_))
        ));
    }

    #[test]
    fn memory_limit_goal() {
        // GOGC off (goal ^0), no limit: the memory-limit goal with 3% headroom.
        let l = Layout::for_version(1, 27).unwrap();
        let (mut mem, addrs) = fake(l);
        put(
            &mut mem.0[1].1,
            l.gc_controller.gc_percent_heap_goal,
            u64::MAX,
        );
        let c = read_counters(&mem, l, &addrs).unwrap();
        let goal = i64::MAX as u64 - (1 << 20); // non-heap = mapped_ready
        assert_eq!(c.next_gc, goal - goal / 100 * 3);
        let l = Layout::for_version(1, 19).unwrap();
        let (mut mem, addrs) = fake(l);
        put(
            &mut mem.0[1].1,
            l.gc_controller.gc_percent_heap_goal,
            u64::MAX,
        );
        let c = read_counters(&mem, l, &addrs).unwrap();
        assert_eq!(c.next_gc, i64::MAX as u64 - (1 << 20) - (1 << 20));
    }
}
