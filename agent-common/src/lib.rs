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
/// Capacity of the probe-site table (one entry per attached allocator function).
pub const MAX_SITES: u32 = 4_096;
/// Capacity of the process filter used by `goalloc watch --pid`.
pub const MAX_FILTERED_PIDS: u32 = 4_096;
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
    /// log2 histogram of requested sizes.
    pub size_hist: [u64; HIST_BUCKETS],
}

impl ProcStats {
    pub const ZERO: ProcStats = ProcStats {
        allocs: 0,
        bytes: 0,
        goroutines_created: 0,
        goroutines_exited: 0,
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
/// A size-specialized or leaf allocator: counts calls unless the caller is a
/// dispatcher (a `skip` range), which has already counted the allocation.
pub const SITE_SPECIALIZED: u32 = 1;

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
    pub _reserved: u32,
    pub skip: [VaRange; MAX_SKIP_RANGES],
}

/// Indices into the eBPF self-counter array.
pub mod counter {
    /// Allocator probe hits that counted an allocation.
    pub const ALLOC_HITS: u32 = 0;
    /// Specialized-allocator hits skipped because a dispatcher already counted them.
    pub const ALLOC_NESTED_SKIPS: u32 = 1;
    /// `mallocgc` hits with size 0 (returns `zerobase`, not an allocation).
    pub const ALLOC_ZERO_SIZE: u32 = 2;
    /// Hits from processes outside the `--pid` filter.
    pub const FILTERED_OUT: u32 = 3;
    /// Hits dropped because the statistics map was full.
    pub const STATS_MAP_FULL: u32 = 4;
    /// Hits whose site configuration or arguments could not be read.
    pub const READ_ERRORS: u32 = 5;
    pub const GOROUTINE_CREATE_HITS: u32 = 6;
    pub const GOROUTINE_EXIT_HITS: u32 = 7;
    /// Process events dropped because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 8;
    pub const COUNT: u32 = 9;
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
        assert_eq!(core::mem::size_of::<ProcStats>(), 8 * (4 + HIST_BUCKETS));
        assert_eq!(core::mem::size_of::<ProbeSite>(), 24 + 16 * MAX_SKIP_RANGES);
    }
}
