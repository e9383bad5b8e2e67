//! Where the Go runtime keeps the figures goalloc reads, per Go release: byte
//! offsets of struct fields (amd64), as plain data.
//!
//! Every number here was taken from the DWARF of binaries built by that
//! toolchain and is re-checked against the DWARF of every unstripped fixture
//! of the test matrix (`agent/tests/runtime_counters.rs`, through
//! `tests/go/layoutdump`). A release that is not in the table is refused with
//! [`LayoutError::UnknownVersion`]: offsets move between releases (Go 1.25
//! dropped a field of `heapStatsDelta`, `schedt` grows in most releases), and a
//! wrong offset would export plausible-looking garbage.
//!
//! GOEXPERIMENTs do not change these structs: they are declared in files with
//! no build constraints (`mstats.go`, `mgcpacer.go`, `runtime2.go`), and Go
//! has no per-field conditional compilation. The matrix's experiment builds
//! (1.26 + sizespecializedmalloc, 1.27 + nosizespecializedmalloc) are checked
//! against DWARF like the others.

use std::fmt;

/// Number of size classes (`_NumSizeClasses`), the same in Go 1.19-1.27.
pub const NUM_SIZE_CLASSES: usize = 68;

/// `class_to_size` (Go 1.19-1.24 `runtime/sizeclasses.go`; 1.25+
/// `internal/runtime/gc.SizeClassToSize`): the object size of each size class.
/// Byte-identical in every release of the table (checked on the sources of
/// 1.19, 1.21-1.27); class 0 is "large" and has no size.
pub const CLASS_TO_SIZE: [u16; NUM_SIZE_CLASSES] = [
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
    352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
    2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728,
    10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672,
    32768,
];

/// Size of the tiny allocator's block (`maxTinySize`): tiny allocations are
/// smaller than this and are packed into blocks of size class 2 (16 bytes).
pub const TINY_BLOCK_SIZE: u64 = 16;

/// `_Gdead`: a goroutine that is not running and may be on a free list.
pub const G_DEAD: u32 = 6;
/// `_Gscan`: bit or-ed into the status while the GC scans the stack.
pub const G_SCAN: u32 = 0x1000;

/// `runtime.heapStatsDelta` (one of the three slots of `consistentHeapStats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStatsDelta {
    /// `unsafe.Sizeof(heapStatsDelta{})`.
    pub size: u64,
    pub tiny_alloc_count: u64,
    pub large_alloc: u64,
    pub large_alloc_count: u64,
    /// `[68]uint64`.
    pub small_alloc_count: u64,
    pub large_free: u64,
    pub large_free_count: u64,
    /// `[68]uint64`.
    pub small_free_count: u64,
}

/// `runtime.consistentHeapStats`: `stats [3]heapStatsDelta` then `gen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsistentHeapStats {
    pub stats: u64,
    /// `gen atomic.Uint32`: always 0, 1 or 2 (a cheap check that we read the
    /// right place).
    pub gen_: u64,
}

/// `runtime.mstats` (the type of `runtime.memstats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mstats {
    /// `heapStats consistentHeapStats`.
    pub heap_stats: u64,
    /// `numgc uint32`.
    pub numgc: u64,
}

/// `runtime.gcControllerState` (the type of `runtime.gcController`): what
/// `heapGoal()` and `HeapInuse` need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcControllerState {
    pub gc_percent_heap_goal: u64,
    pub sweep_dist_min_trigger: u64,
    pub triggered: u64,
    pub heap_in_use: u64,
    pub heap_free: u64,
    pub total_alloc: u64,
    pub total_free: u64,
    pub mapped_ready: u64,
    /// `memoryLimit atomic.Int64`.
    pub memory_limit: u64,
    pub heap_marked: u64,
}

/// `runtime.g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct G {
    /// `atomicstatus` (uint32; `atomic.Uint32` from 1.20).
    pub atomicstatus: u64,
    /// `m *m`: nil for a free (dead) g, set for the dead g of a cgo extra M.
    pub m: u64,
}

/// `runtime.schedt` (the type of `runtime.sched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedt {
    /// `lock mutex`: located through `lock(&sched.lock)` in stripped binaries.
    pub lock: u64,
    /// `ngsys` (int32; `atomic.Int32` from 1.20): system goroutines, plus the
    /// dead g's of cgo extra Ms.
    pub ngsys: u64,
}

/// How `memoryLimitHeapGoal` leaves headroom below the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimitHeadroom {
    /// Go 1.19-1.20: `memoryLimitHeapGoalHeadroom` bytes.
    Fixed(u64),
    /// Go 1.21+: `goal / 100 * percent`, at least `min` bytes
    /// (`memoryLimitHeapGoalHeadroomPercent`, `memoryLimitMinHeapGoalHeadroom`).
    Percent { percent: u64, min: u64 },
}

/// The runtime layout of one Go release (major.minor), amd64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub major: u32,
    pub minor: u32,
    pub heap_stats_delta: HeapStatsDelta,
    pub consistent_heap_stats: ConsistentHeapStats,
    pub mstats: Mstats,
    pub gc_controller: GcControllerState,
    pub g: G,
    pub schedt: Schedt,
    pub headroom: MemoryLimitHeadroom,
}

/// Go 1.17-1.24: `inPtrScalarBits` precedes `tinyAllocCount`.
const HSD_1_19: HeapStatsDelta = HeapStatsDelta {
    size: 1176,
    tiny_alloc_count: 48,
    large_alloc: 56,
    large_alloc_count: 64,
    small_alloc_count: 72,
    large_free: 616,
    large_free_count: 624,
    small_free_count: 632,
};

/// Go 1.25+: `inPtrScalarBits` removed, everything 8 bytes down.
const HSD_1_25: HeapStatsDelta = HeapStatsDelta {
    size: 1168,
    tiny_alloc_count: 40,
    large_alloc: 48,
    large_alloc_count: 56,
    small_alloc_count: 64,
    large_free: 608,
    large_free_count: 616,
    small_free_count: 624,
};

const CHS_1_19: ConsistentHeapStats = ConsistentHeapStats {
    stats: 0,
    gen_: 3 * 1176,
};
const CHS_1_25: ConsistentHeapStats = ConsistentHeapStats {
    stats: 0,
    gen_: 3 * 1168,
};

const MSTATS_1_19: Mstats = Mstats {
    heap_stats: 0,
    numgc: 7704,
};
const MSTATS_1_25: Mstats = Mstats {
    heap_stats: 0,
    numgc: 7680,
};

const GCC_1_19: GcControllerState = GcControllerState {
    gc_percent_heap_goal: 104,
    sweep_dist_min_trigger: 112,
    triggered: 120,
    heap_in_use: 304,
    heap_free: 320,
    total_alloc: 328,
    total_free: 336,
    mapped_ready: 344,
    memory_limit: 8,
    heap_marked: 184,
};

/// Go 1.21-1.27 (fields ahead of these were removed after 1.19).
const GCC_1_21: GcControllerState = GcControllerState {
    gc_percent_heap_goal: 72,
    sweep_dist_min_trigger: 80,
    triggered: 88,
    heap_in_use: 272,
    heap_free: 288,
    total_alloc: 296,
    total_free: 304,
    mapped_ready: 312,
    memory_limit: 8,
    heap_marked: 152,
};

const G_144: G = G {
    atomicstatus: 144,
    m: 48,
};
/// Go 1.23-1.24: `syscallbp` was added before `atomicstatus`; in 1.25
/// `gobuf.ret` went away and it is back at 144.
const G_152: G = G {
    atomicstatus: 152,
    m: 48,
};

const SCHED_72: Schedt = Schedt {
    lock: 24,
    ngsys: 72,
};
const SCHED_80: Schedt = Schedt {
    lock: 32,
    ngsys: 80,
};
const SCHED_96: Schedt = Schedt {
    lock: 32,
    ngsys: 96,
};

const HEADROOM_1_19: MemoryLimitHeadroom = MemoryLimitHeadroom::Fixed(1 << 20);
const HEADROOM_1_21: MemoryLimitHeadroom = MemoryLimitHeadroom::Percent {
    percent: 3,
    min: 1 << 20,
};

const L_1_19: Layout = Layout {
    major: 1,
    minor: 19,
    heap_stats_delta: HSD_1_19,
    consistent_heap_stats: CHS_1_19,
    mstats: MSTATS_1_19,
    gc_controller: GCC_1_19,
    g: G_144,
    schedt: SCHED_72,
    headroom: HEADROOM_1_19,
};

const L_1_21: Layout = Layout {
    minor: 21,
    gc_controller: GCC_1_21,
    headroom: HEADROOM_1_21,
    ..L_1_19
};

const L_1_25: Layout = Layout {
    minor: 25,
    heap_stats_delta: HSD_1_25,
    consistent_heap_stats: CHS_1_25,
    mstats: MSTATS_1_25,
    g: G_144,
    schedt: SCHED_80,
    ..L_1_21
};

/// Every release goalloc knows, oldest first. Go 1.20 is left out on purpose:
/// no toolchain here to check it against.
pub const LAYOUTS: &[Layout] = &[
    L_1_19,
    L_1_21,
    Layout {
        minor: 22,
        ..L_1_21
    },
    Layout {
        minor: 23,
        g: G_152,
        ..L_1_21
    },
    Layout {
        minor: 24,
        g: G_152,
        ..L_1_21
    },
    L_1_25,
    Layout {
        minor: 26,
        schedt: SCHED_96,
        ..L_1_25
    },
    Layout {
        minor: 27,
        schedt: SCHED_96,
        ..L_1_25
    },
];

/// Why no layout is available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("Go {major}.{minor} runtime layout not known to this goalloc (known: {known})")]
    UnknownVersion {
        major: u32,
        minor: u32,
        known: KnownVersions,
    },
}

/// The list of known releases, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownVersions;

impl fmt::Display for KnownVersions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in LAYOUTS.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}.{}", l.major, l.minor)?;
        }
        Ok(())
    }
}

impl Layout {
    /// The layout of Go `major.minor` (any patch release), or
    /// [`LayoutError::UnknownVersion`]; never a neighbour's.
    pub fn for_version(major: u32, minor: u32) -> Result<&'static Layout, LayoutError> {
        LAYOUTS
            .iter()
            .find(|l| l.major == major && l.minor == minor)
            .ok_or(LayoutError::UnknownVersion {
                major,
                minor,
                known: KnownVersions,
            })
    }

    /// Every offset and size of the layout under its Go name
    /// (`runtime.T.field`, or `runtime.T` for a size), as `layoutdump`
    /// prints them: what the DWARF test compares.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let h = &self.heap_stats_delta;
        let c = &self.gc_controller;
        vec![
            ("runtime.heapStatsDelta", h.size),
            ("runtime.heapStatsDelta.tinyAllocCount", h.tiny_alloc_count),
            ("runtime.heapStatsDelta.largeAlloc", h.large_alloc),
            (
                "runtime.heapStatsDelta.largeAllocCount",
                h.large_alloc_count,
            ),
            (
                "runtime.heapStatsDelta.smallAllocCount",
                h.small_alloc_count,
            ),
            ("runtime.heapStatsDelta.largeFree", h.large_free),
            ("runtime.heapStatsDelta.largeFreeCount", h.large_free_count),
            ("runtime.heapStatsDelta.smallFreeCount", h.small_free_count),
            (
                "runtime.consistentHeapStats.stats",
                self.consistent_heap_stats.stats,
            ),
            (
                "runtime.consistentHeapStats.gen",
                self.consistent_heap_stats.gen_,
            ),
            ("runtime.mstats.heapStats", self.mstats.heap_stats),
            ("runtime.mstats.numgc", self.mstats.numgc),
            (
                "runtime.gcControllerState.gcPercentHeapGoal",
                c.gc_percent_heap_goal,
            ),
            (
                "runtime.gcControllerState.sweepDistMinTrigger",
                c.sweep_dist_min_trigger,
            ),
            ("runtime.gcControllerState.triggered", c.triggered),
            ("runtime.gcControllerState.heapInUse", c.heap_in_use),
            ("runtime.gcControllerState.heapFree", c.heap_free),
            ("runtime.gcControllerState.totalAlloc", c.total_alloc),
            ("runtime.gcControllerState.totalFree", c.total_free),
            ("runtime.gcControllerState.mappedReady", c.mapped_ready),
            ("runtime.gcControllerState.memoryLimit", c.memory_limit),
            ("runtime.gcControllerState.heapMarked", c.heap_marked),
            ("runtime.g.atomicstatus", self.g.atomicstatus),
            ("runtime.g.m", self.g.m),
            ("runtime.schedt.lock", self.schedt.lock),
            ("runtime.schedt.ngsys", self.schedt.ngsys),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_versions() {
        assert_eq!(
            Layout::for_version(1, 25).unwrap().heap_stats_delta.size,
            1168
        );
        assert_eq!(Layout::for_version(1, 24).unwrap().g.atomicstatus, 152);
        let e = Layout::for_version(1, 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Go 1.20 runtime layout not known to this goalloc (known: 1.19, 1.21, 1.22, 1.23, 1.24, 1.25, 1.26, 1.27)"
        );
        assert!(Layout::for_version(1, 28).is_err());
        assert!(Layout::for_version(2, 0).is_err());
    }

    #[test]
    fn layouts_are_self_consistent() {
        for l in LAYOUTS {
            let h = &l.heap_stats_delta;
            // The two [68]uint64 arrays fit where the next field starts.
            assert_eq!(
                h.small_alloc_count + 8 * NUM_SIZE_CLASSES as u64,
                h.large_free
            );
            assert!(h.small_free_count + 8 * NUM_SIZE_CLASSES as u64 <= h.size);
            assert_eq!(l.consistent_heap_stats.gen_, 3 * h.size);
            assert!(
                l.mstats.heap_stats == 0,
                "heapStats first in mstats (1.19+)"
            );
        }
        // Strictly increasing sizes, so size classes are distinct buckets.
        assert!(CLASS_TO_SIZE.windows(2).all(|w| w[0] < w[1]));
    }
}
