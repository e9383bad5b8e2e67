//! Goroutine lifecycle probes: creation (`runtime.newproc1`) and exit
//! (`runtime.gdestroy` from Go 1.22, `runtime.goexit0` before).

use agent_common::Counter;
use aya_ebpf::{macros::uprobe, programs::ProbeContext};

use crate::maps::{bump, count_hit, current_tgid, site_of, stats_of};

#[uprobe]
pub fn goalloc_goroutine_create(ctx: ProbeContext) -> u32 {
    let _ = try_goroutine_create(&ctx);
    0
}

#[uprobe]
pub fn goalloc_goroutine_exit(ctx: ProbeContext) -> u32 {
    let _ = try_goroutine_exit(&ctx);
    0
}

#[inline(always)]
fn try_goroutine_create(ctx: &ProbeContext) -> Result<(), ()> {
    let site = site_of(ctx).ok_or(())?;
    let stats = stats_of(current_tgid()).ok_or(())?;
    count_hit(stats, site);
    stats.goroutines_created += 1;
    bump(Counter::GoroutineCreateHits);
    Ok(())
}

#[inline(always)]
fn try_goroutine_exit(ctx: &ProbeContext) -> Result<(), ()> {
    let site = site_of(ctx).ok_or(())?;
    let stats = stats_of(current_tgid()).ok_or(())?;
    count_hit(stats, site);
    stats.goroutines_exited += 1;
    bump(Counter::GoroutineExitHits);
    Ok(())
}
