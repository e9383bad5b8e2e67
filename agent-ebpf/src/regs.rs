//! Go's calling convention at the probe point. `ProbeContext::arg` follows the
//! C ABI (RDI, RSI, ...), which is wrong for Go: read `pt_regs` directly.

use aya_ebpf::{helpers::bpf_probe_read_user, programs::ProbeContext};

/// The first integer argument under Go's register ABI (RAX on amd64, X0 on arm64).
#[inline(always)]
pub fn reg_arg0(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` is the uprobe context, readable by the program.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    return regs.rax;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.regs[0];
}

/// The second integer argument under Go's register ABI (RBX on amd64, X1
/// on arm64): the allocators' type descriptor.
#[inline(always)]
pub fn reg_arg1(ctx: &ProbeContext) -> u64 {
    // SAFETY: as above.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    return regs.rbx;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.regs[1];
}

/// The frame pointer at the probe point (RBP on amd64, X29 on arm64).
#[inline(always)]
pub fn frame_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as above.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    return regs.rbp;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.regs[29];
}

/// The stack pointer at the probe point (unchanged since entry unless the
/// site says otherwise: probes sit before or early in the frame set-up).
#[inline(always)]
pub fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as above.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    return regs.rsp;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.sp;
}

/// The runtime address of the probe point.
#[inline(always)]
pub fn instruction_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as above.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    return regs.rip;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.pc;
}

/// The first argument under Go's stack ABI (ABI0): the word above the
/// return address on amd64; on arm64 the word above the saved-LR slot.
#[inline(always)]
pub fn stack_arg0(ctx: &ProbeContext) -> Option<u64> {
    stack_word(ctx, 8)
}

/// The word at `[stack pointer + off]` of the probed thread.
#[inline(always)]
pub fn stack_word(ctx: &ProbeContext, off: u64) -> Option<u64> {
    let sp = stack_pointer(ctx);
    // SAFETY: bpf_probe_read_user copes with any address.
    unsafe { bpf_probe_read_user(sp.wrapping_add(off) as *const u64) }.ok()
}

/// The return address of the probed call: at `[stack pointer + ret_off]` on
/// amd64 (0 at the entry, more once the prologue pushed something).
#[inline(always)]
pub fn return_address(ctx: &ProbeContext, ret_off: u64) -> Option<u64> {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        stack_word(ctx, ret_off)
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        let _ = ret_off;
        // SAFETY: as above; LR still holds it before the frame is pushed.
        Some(unsafe { (*ctx.regs).regs[30] })
    }
}
