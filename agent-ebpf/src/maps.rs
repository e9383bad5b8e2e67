//! Maps shared by all probe families, and the per-process accounting helpers.

use agent_common::{
    Counter, EVENTS_RING_BYTES, MAX_PROCESSES, MAX_SITES, ProbeSite, ProcStats, SITE_FLAG_STEPPED,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::ProbeContext,
};

/// Cumulative counters per process (tgid). Per-CPU so the hot path needs no
/// atomics; userspace sums the CPUs and removes entries of exited processes.
/// Not preallocated: a full table would be 352 bytes x CPUs x capacity of
/// memory charged to the agent's cgroup whether or not processes exist.
#[map]
pub static PROC_STATS: PerCpuHashMap<u32, ProcStats> =
    PerCpuHashMap::with_max_entries(MAX_PROCESSES, BPF_F_NO_PREALLOC);

/// Probe configuration, indexed by the attach cookie. Every probe of every
/// probed process has its own slot.
#[map]
pub static SITES: Array<ProbeSite> = Array::with_max_entries(MAX_SITES, 0);

/// Process exec/exit events for the agent's process tracking.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Self-observability counters, indexed by `agent_common::Counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Template for new `PROC_STATS` entries; a static keeps 352 bytes off the
/// 512-byte BPF stack.
static ZERO_STATS: ProcStats = ProcStats::ZERO;

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *c += 1 };
    }
}

/// The current process. No filter is needed: every probe is attached to
/// one chosen process (the kernel writes its breakpoint into that process
/// alone and runs the program only there).
#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The configuration of the probe that fired, found by its attach cookie.
#[inline(always)]
pub fn site_of(ctx: &ProbeContext) -> Option<&'static ProbeSite> {
    // SAFETY: helper call on our own context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let site = SITES.get(cookie);
    if site.is_none() {
        bump(Counter::ReadErrors);
    }
    site
}

/// Counts one probe hit of the process (what it paid, for the cost guard),
/// whatever the hit then counts.
#[inline(always)]
pub fn count_hit(stats: &mut ProcStats, site: &ProbeSite) {
    stats.hits += 1;
    if site.flags & SITE_FLAG_STEPPED != 0 {
        stats.stepped_hits += 1;
    }
}

/// This CPU's statistics slot of `tgid`, created on first use.
// `&ZERO_STATS` on purpose: by value, the 352-byte template would be copied
// onto the 512-byte BPF stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
pub fn stats_of(tgid: u32) -> Option<&'static mut ProcStats> {
    if let Some(p) = PROC_STATS.get_ptr_mut(tgid) {
        // SAFETY: per-CPU value; nothing else writes this CPU's copy meanwhile.
        return Some(unsafe { &mut *p });
    }
    if PROC_STATS
        .insert(tgid, &ZERO_STATS, BPF_NOEXIST as u64)
        .is_err()
    {
        // EEXIST (a racing insert on another CPU) is fine; a full map is not.
        if PROC_STATS.get_ptr_mut(tgid).is_none() {
            bump(Counter::StatsMapFull);
            return None;
        }
    }
    // SAFETY: as above.
    PROC_STATS.get_ptr_mut(tgid).map(|p| unsafe { &mut *p })
}
