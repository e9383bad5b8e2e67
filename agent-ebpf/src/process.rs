//! Process lifecycle for the node agent: exec (a process may have become a Go
//! program) and exit (its counters can be collected and dropped). Raw
//! tracepoints attach without tracefs.

use agent_common::{Counter, EVENT_EXEC, EVENT_EXIT, ProcEvent};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::maps::{EVENTS, PROC_STATS, bump};

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn goalloc_exec(_ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Counters of the old image (or of an earlier process with this PID)
    // must not leak into the new one.
    let _ = PROC_STATS.remove(tgid);
    emit(EVENT_EXEC, tgid);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn goalloc_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, pid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // Threads exit too; the process is reported with its leader.
    if pid == tgid {
        emit(EVENT_EXIT, tgid);
    }
    0
}

#[inline(always)]
fn emit(kind: u32, tgid: u32) {
    let event = ProcEvent {
        kind,
        tgid,
        // SAFETY: helper without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS.output::<ProcEvent>(&event, 0).is_err() {
        bump(Counter::EventsLost);
    }
}
