//! Allocation probes: `runtime.mallocgc` and the size-specialized allocators.
//!
//! Since Go 1.26/1.27 the compiler may call a size-specialized allocator
//! directly, and `mallocgc` also dispatches to them. Each allocation is counted
//! once: `mallocgc` counts its call, and a specialized allocator counts only
//! when it was not called from a dispatcher (its `skip` ranges).

use agent_common::{
    ABI_STACK, Counter, MAX_SKIP_RANGES, ProbeSite, SITE_MALLOCGC, SITE_SPECIALIZED, size_bucket,
};
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_attach_cookie, macros::uprobe, programs::ProbeContext,
};

use crate::{
    maps::{SITES, bump, current_tgid, stats_of},
    regs,
};

#[uprobe]
pub fn goalloc_alloc(ctx: ProbeContext) -> u32 {
    let _ = try_alloc(&ctx);
    0
}

#[inline(always)]
fn try_alloc(ctx: &ProbeContext) -> Result<(), ()> {
    let tgid = current_tgid().ok_or(())?;
    // SAFETY: helper call on our own context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(site) = SITES.get(cookie) else {
        bump(Counter::ReadErrors);
        return Err(());
    };
    let size = if site.abi == ABI_STACK {
        match regs::stack_arg0(ctx) {
            Some(size) => size,
            None => {
                bump(Counter::ReadErrors);
                return Err(());
            }
        }
    } else {
        regs::reg_arg0(ctx)
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
    let stats = stats_of(tgid).ok_or(())?;
    stats.allocs += 1;
    stats.bytes += size;
    let bucket = size_bucket(size);
    if let Some(slot) = stats.size_hist.get_mut(bucket) {
        *slot += 1;
    }
    bump(Counter::AllocHits);
    Ok(())
}

/// Whether the return address lies in one of the site's dispatcher ranges,
/// relocated by the load bias seen at this hit (non-zero only for PIE).
#[inline(always)]
fn called_from_dispatcher(ctx: &ProbeContext, site: &ProbeSite) -> Result<bool, ()> {
    if site.skip_count == 0 {
        return Ok(false);
    }
    let Some(ret) = regs::return_address(ctx) else {
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
