//! Allocation sampling for profiles, called by the allocation probe after
//! it counted an allocation.
//!
//! Only processes with a `SAMPLERS` entry (put there by userspace for the
//! length of a profile) are sampled. Like Go's `MemProfileRate`: each
//! process and CPU keeps an exponentially distributed byte distance (mean =
//! the rate) to the next sample, so an allocation of `s` bytes is sampled
//! with probability `1 - exp(-s/rate)` and userspace unscales as pprof does.
//! A sample is the stack and the type, aggregated in `SAMPLES`: one hash
//! update per sample, never an event.

use agent_common::{
    ABI_STACK, Counter, EXP_TABLE_SHIFT, EXP_TABLE_SIZE, MAX_STACK_DEPTH, ProbeSite,
    SITE_FLAG_FRAME_SET, SampleKey, SampleValue, Sampler,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_probe_read_user},
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::ProbeContext,
};

use crate::{maps::bump, regs};

/// Profiling state per process (and CPU); absent = not profiled.
#[map]
pub static SAMPLERS: PerCpuHashMap<u32, Sampler> = PerCpuHashMap::with_max_entries(
    agent_common::MAX_PROCESSES,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);

/// Sampled allocations by (process, stack, type). Not preallocated: the
/// table is empty unless someone profiles.
#[map]
pub static SAMPLES: PerCpuHashMap<SampleKey, SampleValue> = PerCpuHashMap::with_max_entries(
    agent_common::MAX_SAMPLE_STACKS,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);

/// `-ln(u)` for `EXP_TABLE_SIZE` evenly spaced quantiles `u` of (0, 1), in
/// fixed point: the BPF machine has no floating point or logarithm.
#[map]
pub static EXP_TABLE: Array<u32> = Array::with_max_entries(EXP_TABLE_SIZE, 0);

/// Where a `SampleKey` is built: 272 bytes do not fit the BPF stack with
/// everything else.
#[map]
pub static SAMPLE_SCRATCH: PerCpuArray<SampleKey> = PerCpuArray::with_max_entries(1, 0);

/// Samples this allocation if the process is being profiled and its byte
/// distance to the next sample has run out.
#[inline(always)]
pub fn maybe_sample(ctx: &ProbeContext, site: &ProbeSite, tgid: u32, size: u64) {
    let Some(sampler) = SAMPLERS.get_ptr_mut(tgid) else {
        return;
    };
    // SAFETY: per-CPU value, only this CPU touches it while we run.
    let sampler = unsafe { &mut *sampler };
    if sampler.rate > 1 {
        if sampler.remaining == 0 {
            sampler.remaining = next_distance(sampler.rate);
        }
        if sampler.remaining > size {
            sampler.remaining -= size;
            return;
        }
        sampler.remaining = next_distance(sampler.rate);
    }
    record(ctx, site, tgid, size);
}

/// An exponentially distributed byte distance with mean `rate`, at least 1.
#[inline(always)]
fn next_distance(rate: u64) -> u64 {
    // SAFETY: helper without arguments.
    let r = unsafe { bpf_get_prandom_u32() } & (EXP_TABLE_SIZE - 1);
    let unit = EXP_TABLE.get(r).copied().unwrap_or(1 << EXP_TABLE_SHIFT);
    let d = rate.wrapping_mul(u64::from(unit)) >> EXP_TABLE_SHIFT;
    if d == 0 { 1 } else { d }
}

// `&*key` on purpose: by value, the 272-byte key would be copied onto the
// 512-byte BPF stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn record(ctx: &ProbeContext, site: &ProbeSite, tgid: u32, size: u64) {
    let Some(key) = SAMPLE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, only this program on this CPU uses it.
    let key = unsafe { &mut *key };
    key.tgid = tgid;
    key.type_addr = if site.abi == ABI_STACK {
        regs::stack_word(ctx, 16).unwrap_or(0)
    } else {
        regs::reg_arg1(ctx)
    };
    let depth = walk_stack(ctx, site, &mut key.pcs);
    key.depth = depth as u32;
    bump(Counter::ProfileSamples);
    if let Some(v) = SAMPLES.get_ptr_mut(&*key) {
        // SAFETY: per-CPU value.
        let v = unsafe { &mut *v };
        v.count += 1;
        v.bytes += size;
        return;
    }
    let v = SampleValue {
        count: 1,
        bytes: size,
    };
    if SAMPLES.insert(&*key, v, BPF_NOEXIST as u64).is_err() {
        // Another CPU inserting the same key is harmless (this CPU's value
        // is created zero with it): try once more; a full table is counted.
        match SAMPLES.get_ptr_mut(&*key) {
            Some(v) => {
                // SAFETY: per-CPU value.
                let v = unsafe { &mut *v };
                v.count += 1;
                v.bytes += size;
            }
            None => bump(Counter::ProfileStacksFull),
        }
    }
}

/// Fills `pcs` with the return addresses of the allocating stack, innermost
/// first, and zeroes the rest; returns how many there are.
///
/// The probe sits before the probed function set up its frame (unless the
/// site says otherwise), so the frame pointer is still the caller's and the
/// return address into the direct caller is only on the stack: take it
/// first, then walk the frame records {saved frame pointer, return address}.
#[inline(always)]
fn walk_stack(ctx: &ProbeContext, site: &ProbeSite, pcs: &mut [u64; MAX_STACK_DEPTH]) -> usize {
    let mut n = 0usize;
    if site.flags & SITE_FLAG_FRAME_SET == 0
        && let Some(ret) = regs::return_address(ctx, u64::from(site.ret_off))
    {
        pcs[0] = ret;
        n = 1;
    }
    let mut fp = regs::frame_pointer(ctx);
    let mut more = false;
    for _ in 0..MAX_STACK_DEPTH {
        if fp == 0 {
            break;
        }
        // SAFETY: bpf_probe_read_user copes with any address.
        let Ok(record) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        let (next, pc) = (record[0], record[1]);
        if pc == 0 {
            break;
        }
        if n >= MAX_STACK_DEPTH {
            more = true;
            break;
        }
        if let Some(slot) = pcs.get_mut(n) {
            *slot = pc;
        }
        n += 1;
        fp = next;
    }
    if more {
        bump(Counter::ProfileStacksTruncated);
    }
    for (i, slot) in pcs.iter_mut().enumerate() {
        if i >= n {
            *slot = 0;
        }
    }
    n
}
