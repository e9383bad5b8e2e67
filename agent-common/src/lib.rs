//! Types shared by the eBPF programs and the userspace agent.
//!
//! Every struct is `#[repr(C)]`, made only of unsigned integers and sized to a
//! multiple of 8 bytes, so both sides agree on the layout without padding.
#![no_std]

/// Number of log2 size buckets. Bucket `i` counts requested sizes in
/// `(2^(i-1), 2^i]` (bucket 0: size 1), so its inclusive upper bound is `2^i`,
/// which maps onto a Prometheus `le` directly. The last bucket also takes
/// everything larger.
pub const HIST_BUCKETS: usize = 40;

/// Inclusive upper bound of bucket `i`.
pub const fn bucket_upper_bound(i: usize) -> u64 {
    1u64 << i
}

/// Capacity of the per-process statistics map.
pub const MAX_PROCESSES: u32 = 16_384;
/// Capacity of the probe-site table: one entry per probe of each probed
/// process (attachments are per process, each with its own cookies).
pub const MAX_SITES: u32 = 16_384;
/// Dispatcher address ranges a size-specialized allocator site can skip.
pub const MAX_SKIP_RANGES: usize = 4;

/// Cumulative counters for one process (summed over CPUs by userspace).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStats {
    /// Heap allocations (calls with a non-zero size, counted once each).
    pub allocs: u64,
    /// Requested bytes of those allocations.
    pub bytes: u64,
    pub goroutines_created: u64,
    pub goroutines_exited: u64,
    /// Every probe hit of the process, counted or not (zero sizes, nested
    /// calls): what the process paid in traps, for the cost guard.
    pub hits: u64,
    /// The part of `hits` at sites the kernel single-steps (see
    /// [`SITE_FLAG_STEPPED`]): each costs a second trap.
    pub stepped_hits: u64,
    /// log2 histogram of requested sizes.
    pub size_hist: [u64; HIST_BUCKETS],
}

impl ProcStats {
    pub const ZERO: ProcStats = ProcStats {
        allocs: 0,
        bytes: 0,
        goroutines_created: 0,
        goroutines_exited: 0,
        hits: 0,
        stepped_hits: 0,
        size_hist: [0; HIST_BUCKETS],
    };

    /// Adds `other` into `self` (used to sum per-CPU values).
    pub fn accumulate(&mut self, other: &ProcStats) {
        self.allocs = self.allocs.wrapping_add(other.allocs);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.goroutines_created = self
            .goroutines_created
            .wrapping_add(other.goroutines_created);
        self.goroutines_exited = self.goroutines_exited.wrapping_add(other.goroutines_exited);
        self.hits = self.hits.wrapping_add(other.hits);
        self.stepped_hits = self.stepped_hits.wrapping_add(other.stepped_hits);
        for (a, b) in self.size_hist.iter_mut().zip(other.size_hist.iter()) {
            *a = a.wrapping_add(*b);
        }
    }
}

impl Default for ProcStats {
    fn default() -> Self {
        Self::ZERO
    }
}

/// The histogram bucket of a requested size: `ceil(log2(size))`.
#[inline(always)]
pub fn size_bucket(size: u64) -> usize {
    if size <= 1 {
        return 0;
    }
    // floor(log2(size - 1)) + 1, by a branchy binary search: the BPF backend
    // has no count-leading-zeros.
    let mut v = size - 1;
    let mut r = 0usize;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r += 1;
    if r >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        r
    }
}

/// A half-open range of link-time virtual addresses `[start, end)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VaRange {
    pub start: u64,
    pub end: u64,
}

/// How a probed function receives its arguments.
pub const ABI_REGISTER: u32 = 0;
/// Go's stack ABI (ABI0): arguments above the return address.
pub const ABI_STACK: u32 = 1;

/// `mallocgc`: counts calls with a non-zero size.
pub const SITE_MALLOCGC: u32 = 0;
/// An allocator that ends one allocation (a Go 1.24+ worker such as
/// `mallocgcSmallNoscan`, or a size-specialized allocator): counts calls
/// unless the caller is a dispatcher (a `skip` range) that has already
/// counted the allocation. Never sees size 0 (`mallocgc` returns
/// `zerobase` before dispatching).
pub const SITE_SPECIALIZED: u32 = 1;
/// A goroutine probe: counts nothing but its hit (the program says what).
pub const SITE_GOROUTINE: u32 = 2;

/// `ProbeSite::flags`: the kernel single-steps the probed instruction (a
/// second trap per hit, ~15x the cost of an emulated one).
pub const SITE_FLAG_STEPPED: u32 = 1;

/// `ProbeSite::flags`: the frame pointer register already points at the
/// probed function's own frame record ({saved frame pointer, return
/// address}): the probe sits past the prologue's frame set-up (an emulated
/// site further in, Go 1.17-1.20). Otherwise it is still the caller's, and
/// a frame-pointer walk from it would skip the direct caller.
pub const SITE_FLAG_FRAME_SET: u32 = 2;

/// `ProbeSite::size_loc`: the size argument is in the first argument
/// register (RAX on amd64, X0 on arm64) at the probe point.
pub const LOC_REG_ARG0: u32 = 0;
/// `ProbeSite::size_loc`: the size argument is the word at
/// `[stack pointer + size_off]` at the probe point.
pub const LOC_STACK: u32 = 1;

/// Per-attachment configuration, found by the uprobe's attach cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeSite {
    /// Link-time virtual address of the probe point. The uprobe sees the
    /// runtime address in the instruction pointer; the difference is the load
    /// bias of a PIE, used to relocate `skip`.
    pub probe_vaddr: u64,
    /// `SITE_*`.
    pub kind: u32,
    /// `ABI_*`.
    pub abi: u32,
    /// Number of valid entries in `skip`.
    pub skip_count: u32,
    /// `SITE_FLAG_*`.
    pub flags: u32,
    /// Where the size argument is at the probe point (`LOC_*`), for the
    /// register ABI. A probe placed after instructions that moved it (an
    /// emulated site further in the prologue) says where it went.
    pub size_loc: u32,
    /// Byte offset from the stack pointer for [`LOC_STACK`].
    pub size_off: u32,
    /// Offset of the return address from the stack pointer at the probe
    /// point (amd64: 0 at entry, 8 after a `push`).
    pub ret_off: u32,
    pub _reserved: u32,
    pub skip: [VaRange; MAX_SKIP_RANGES],
}

/// Return addresses kept per sampled stack (Go's own heap profiles kept 32
/// up to Go 1.22).
pub const MAX_STACK_DEPTH: usize = 32;
/// Capacity of the sampled-stack table, all profiled processes together.
pub const MAX_SAMPLE_STACKS: u32 = 16_384;
/// Entries of the exponential-distance table (a power of two).
pub const EXP_TABLE_SIZE: u32 = 4096;
/// Fixed-point shift of the exponential-distance table's values.
pub const EXP_TABLE_SHIFT: u32 = 16;

/// Profiling state of one process on one CPU, as Go's `mcache.nextSample`:
/// the bytes to allocate before the next sample. Present only while the
/// process is being profiled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sampler {
    /// Mean bytes between samples (Go's `MemProfileRate`); 1 samples every
    /// allocation.
    pub rate: u64,
    /// Bytes left before the next sample; 0 = not drawn yet.
    pub remaining: u64,
}

/// What a sample is aggregated by: the process, its allocating stack and
/// the allocated type.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub tgid: u32,
    /// Valid entries of `pcs`.
    pub depth: u32,
    /// Run-time address of the type descriptor; 0 when untyped.
    pub type_addr: u64,
    /// Return addresses, innermost first: the allocator's caller, then the
    /// frame-pointer chain. Unused entries are 0.
    pub pcs: [u64; MAX_STACK_DEPTH],
}

impl SampleKey {
    pub const ZERO: SampleKey = SampleKey {
        tgid: 0,
        depth: 0,
        type_addr: 0,
        pcs: [0; MAX_STACK_DEPTH],
    };
}

/// Sampled allocations of one key (summed over CPUs by userspace).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleValue {
    /// Sampled allocations.
    pub count: u64,
    /// Their requested bytes.
    pub bytes: u64,
}

/// Names of the kernel objects, shared by the loader and the eBPF crate.
///
/// The eBPF side cannot use these in its `#[map]`/`#[uprobe]` attributes
/// (macros take identifiers), so its statics and functions carry the same
/// names and a test in the agent checks the compiled object against this list.
pub mod names {
    /// Per-process counters (`PerCpuHashMap<u32, ProcStats>`).
    pub const MAP_PROC_STATS: &str = "PROC_STATS";
    /// Probe configuration by attach cookie (`Array<ProbeSite>`).
    pub const MAP_SITES: &str = "SITES";
    /// Process exec/exit events (`RingBuf` of `ProcEvent`).
    pub const MAP_EVENTS: &str = "EVENTS";
    /// Self-observability counters (`PerCpuArray<u64>`, indexed by `Counter`).
    pub const MAP_COUNTERS: &str = "COUNTERS";
    /// Profiling state per process and CPU (`PerCpuHashMap<u32, Sampler>`).
    pub const MAP_SAMPLERS: &str = "SAMPLERS";
    /// Sampled stacks (`PerCpuHashMap<SampleKey, SampleValue>`).
    pub const MAP_SAMPLES: &str = "SAMPLES";
    /// Exponential byte distances in units of the rate (`Array<u32>`,
    /// fixed point, filled by the loader).
    pub const MAP_EXP_TABLE: &str = "EXP_TABLE";
    /// Scratch space for building a `SampleKey` off the BPF stack.
    pub const MAP_SAMPLE_SCRATCH: &str = "SAMPLE_SCRATCH";
    /// Every map, for checks.
    pub const MAPS: [&str; 8] = [
        MAP_PROC_STATS,
        MAP_SITES,
        MAP_EVENTS,
        MAP_COUNTERS,
        MAP_SAMPLERS,
        MAP_SAMPLES,
        MAP_EXP_TABLE,
        MAP_SAMPLE_SCRATCH,
    ];

    /// Uprobe on the allocators.
    pub const PROG_ALLOC: &str = "goalloc_alloc";
    /// Uprobe on goroutine creation.
    pub const PROG_GOROUTINE_CREATE: &str = "goalloc_goroutine_create";
    /// Uprobe on goroutine exit.
    pub const PROG_GOROUTINE_EXIT: &str = "goalloc_goroutine_exit";
    /// Raw tracepoint on `sched_process_exec`.
    pub const PROG_EXEC: &str = "goalloc_exec";
    /// Raw tracepoint on `sched_process_exit`.
    pub const PROG_EXIT: &str = "goalloc_exit";
    /// Every program, for checks.
    pub const PROGRAMS: [&str; 5] = [
        PROG_ALLOC,
        PROG_GOROUTINE_CREATE,
        PROG_GOROUTINE_EXIT,
        PROG_EXEC,
        PROG_EXIT,
    ];
}

/// The eBPF self-counters: indices into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Allocator probe hits that counted an allocation.
    AllocHits = 0,
    /// Specialized-allocator hits skipped because a dispatcher already counted them.
    AllocNestedSkips = 1,
    /// `mallocgc` hits with size 0 (returns `zerobase`, not an allocation).
    AllocZeroSize = 2,
    /// Hits dropped because the statistics map was full.
    StatsMapFull = 3,
    /// Hits whose site configuration or arguments could not be read.
    ReadErrors = 4,
    GoroutineCreateHits = 5,
    GoroutineExitHits = 6,
    /// Process events dropped because the ring buffer was full.
    EventsLost = 7,
    /// Allocations sampled for a profile.
    ProfileSamples = 8,
    /// Samples dropped because the sampled-stack table was full.
    ProfileStacksFull = 9,
    /// Samples whose stack was longer than `MAX_STACK_DEPTH` (cut there).
    ProfileStacksTruncated = 10,
}

impl Counter {
    /// Number of counters (the size of the `COUNTERS` array).
    pub const COUNT: u32 = 11;

    /// Every counter, in index order.
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::AllocHits,
        Counter::AllocNestedSkips,
        Counter::AllocZeroSize,
        Counter::StatsMapFull,
        Counter::ReadErrors,
        Counter::GoroutineCreateHits,
        Counter::GoroutineExitHits,
        Counter::EventsLost,
        Counter::ProfileSamples,
        Counter::ProfileStacksFull,
        Counter::ProfileStacksTruncated,
    ];

    /// Index into the `COUNTERS` array.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Short name (a label value in the agent's metrics).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::AllocHits => "alloc",
            Counter::AllocNestedSkips => "alloc_nested",
            Counter::AllocZeroSize => "alloc_zero_size",
            Counter::StatsMapFull => "stats_map_full",
            Counter::ReadErrors => "read_error",
            Counter::GoroutineCreateHits => "goroutine_create",
            Counter::GoroutineExitHits => "goroutine_exit",
            Counter::EventsLost => "events_lost",
            Counter::ProfileSamples => "profile_sample",
            Counter::ProfileStacksFull => "profile_stacks_full",
            Counter::ProfileStacksTruncated => "profile_stack_truncated",
        }
    }
}

/// Values of all the self-counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
}

/// Size of the process-event ring buffer (a power of two, page multiple).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// A process replaced its image (`execve`): it may have become a Go program.
pub const EVENT_EXEC: u32 = 1;
/// A process (its thread-group leader) exited.
pub const EVENT_EXIT: u32 = 2;

/// A process lifecycle event for the agent's process tracking.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    /// `EVENT_*`.
    pub kind: u32,
    pub tgid: u32,
    /// `bpf_ktime_get_ns()` at the event, for latency measurements.
    pub ktime_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers without padding.
    unsafe impl aya::Pod for super::ProcStats {}
    unsafe impl aya::Pod for super::ProbeSite {}
    unsafe impl aya::Pod for super::VaRange {}
    unsafe impl aya::Pod for super::ProcEvent {}
    unsafe impl aya::Pod for super::Sampler {}
    unsafe impl aya::Pod for super::SampleKey {}
    unsafe impl aya::Pod for super::SampleValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ceil_log2() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 0);
        assert_eq!(size_bucket(2), 1);
        assert_eq!(size_bucket(3), 2);
        assert_eq!(size_bucket(4), 2);
        assert_eq!(size_bucket(5), 3);
        assert_eq!(size_bucket(8), 3);
        assert_eq!(size_bucket(100), 7);
        assert_eq!(size_bucket(32768), 15);
        assert_eq!(size_bucket(32769), 16);
        assert_eq!(size_bucket(1 << 39), 39);
        assert_eq!(size_bucket(u64::MAX), HIST_BUCKETS - 1);
        for i in 0..64u32 {
            let v = 1u64 << i;
            let b = (i as usize).min(HIST_BUCKETS - 1);
            assert_eq!(size_bucket(v), b, "{v}");
            if b < HIST_BUCKETS - 1 {
                assert!(v <= bucket_upper_bound(b));
            }
            if i < 63 {
                assert_eq!(
                    size_bucket(v + 1),
                    (i as usize + 1).min(HIST_BUCKETS - 1),
                    "{}",
                    v + 1
                );
            }
        }
    }

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(core::mem::size_of::<ProcStats>(), 8 * (6 + HIST_BUCKETS));
        assert_eq!(core::mem::size_of::<ProbeSite>(), 40 + 16 * MAX_SKIP_RANGES);
        assert_eq!(core::mem::size_of::<SampleKey>(), 16 + 8 * MAX_STACK_DEPTH);
        assert_eq!(core::mem::size_of::<Sampler>(), 16);
        assert_eq!(core::mem::size_of::<SampleValue>(), 16);
    }

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
        }
    }
}
