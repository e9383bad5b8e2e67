//! Allocation probes.
//!
//! Which functions are probed depends on the Go release (see
//! `gobinary::plan::AllocScheme`): `runtime.mallocgc` up to Go 1.23 (counts
//! calls with a non-zero size), the workers `mallocgc` dispatches to from Go
//! 1.24 (one trap per allocation), plus the size-specialized allocators the
//! compiler may call directly (Go 1.26 experiment, 1.27). A worker or
//! specialized hit whose caller is a dispatcher that already counted the
//! allocation (its `skip` ranges) is not counted again.

use agent_common::{
    ABI_STACK, Counter, LOC_STACK, MAX_SKIP_RANGES, ProbeSite, SITE_MALLOCGC, SITE_SPECIALIZED,
    size_bucket,
};
use aya_ebpf::{macros::uprobe, programs::ProbeContext};

use crate::{
    maps::{bump, count_hit, current_tgid, site_of, stats_of},
    regs,
};

#[uprobe]
pub fn goalloc_alloc(ctx: ProbeContext) -> u32 {
    let _ = try_alloc(&ctx);
    0
}

#[inline(always)]
fn try_alloc(ctx: &ProbeContext) -> Result<(), ()> {
    let site = site_of(ctx).ok_or(())?;
    let tgid = current_tgid();
    let stats = stats_of(tgid).ok_or(())?;
    count_hit(stats, site);
    let size = if site.abi == ABI_STACK {
        regs::stack_arg0(ctx)
    } else if site.size_loc == LOC_STACK {
        // The probe sits past instructions that moved the size argument to
        // the stack (an emulated site further into the prologue).
        regs::stack_word(ctx, u64::from(site.size_off))
    } else {
        Some(regs::reg_arg0(ctx))
    };
    let Some(size) = size else {
        bump(Counter::ReadErrors);
        return Err(());
    };
    match site.kind {
        SITE_MALLOCGC if size == 0 => {
            // Returns &zerobase: not a heap allocation.
            bump(Counter::AllocZeroSize);
            return Ok(());
        }
        SITE_SPECIALIZED if called_from_dispatcher(ctx, site)? => {
            bump(Counter::AllocNestedSkips);
            return Ok(());
        }
        _ => {}
    }
    stats.allocs += 1;
    stats.bytes += size;
    let bucket = size_bucket(size);
    if let Some(slot) = stats.size_hist.get_mut(bucket) {
        *slot += 1;
    }
    bump(Counter::AllocHits);
    crate::profile::maybe_sample(ctx, site, tgid, size);
    Ok(())
}

/// Whether the return address lies in one of the site's dispatcher ranges,
/// relocated by the load bias seen at this hit (non-zero only for PIE).
#[inline(always)]
fn called_from_dispatcher(ctx: &ProbeContext, site: &ProbeSite) -> Result<bool, ()> {
    if site.skip_count == 0 {
        return Ok(false);
    }
    let Some(ret) = regs::return_address(ctx, u64::from(site.ret_off)) else {
        bump(Counter::ReadErrors);
        return Err(());
    };
    let bias = regs::instruction_pointer(ctx).wrapping_sub(site.probe_vaddr);
    let ret = ret.wrapping_sub(bias);
    for i in 0..MAX_SKIP_RANGES {
        if i as u32 >= site.skip_count {
            break;
        }
        let r = &site.skip[i];
        if ret >= r.start && ret < r.end {
            return Ok(true);
        }
    }
    Ok(false)
}
