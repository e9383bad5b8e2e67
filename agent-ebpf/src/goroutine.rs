//! Goroutine lifecycle probes: creation (`runtime.newproc1`) and exit
//! (`runtime.gdestroy` from Go 1.22, `runtime.goexit0` before).

use agent_common::Counter;
use aya_ebpf::{macros::uprobe, programs::ProbeContext};

use crate::maps::{bump, current_tgid, stats_of};

#[uprobe]
pub fn goalloc_goroutine_create(_ctx: ProbeContext) -> u32 {
    let _ = try_goroutine_create();
    0
}

#[uprobe]
pub fn goalloc_goroutine_exit(_ctx: ProbeContext) -> u32 {
    let _ = try_goroutine_exit();
    0
}

#[inline(always)]
fn try_goroutine_create() -> Result<(), ()> {
    let tgid = current_tgid().ok_or(())?;
    stats_of(tgid).ok_or(())?.goroutines_created += 1;
    bump(Counter::GoroutineCreateHits);
    Ok(())
}

#[inline(always)]
fn try_goroutine_exit() -> Result<(), ()> {
    let tgid = current_tgid().ok_or(())?;
    stats_of(tgid).ok_or(())?.goroutines_exited += 1;
    bump(Counter::GoroutineExitHits);
    Ok(())
}
