//! Decoding Go function prologues to find where a uprobe may be placed.
//!
//! Every Go function that may grow its stack starts with a stack check: compare
//! the stack pointer (or `SP - framesize`) with `g.stackguard0`, and branch to a
//! `morestack` call at the end of the function when it is too low. A uprobe on
//! the first instruction is slow (the instruction is single-stepped) and fires a
//! second time whenever the function restarts after `morestack`. A uprobe on the
//! first instruction *after* the conditional branch fires exactly once per call,
//! with the argument registers untouched.
//!
//! [`find_probe_point`] decodes the start of a function and returns that offset.
//! It is deliberately conservative: the returned offset is always the start of an
//! instruction that was decoded from offset 0, the whole stack check must match
//! one of the shapes the Go compiler emits, and the branch must lead to a
//! `morestack` block (one direct call, then a jump back to the function entry)
//! inside the given bytes. Anything else is an error, never a guess.
//!
//! `code` must be the **whole function** (symbol address and size): the branch
//! target at the end of the function is checked. A prefix only works for
//! functions without a stack check, and then it must be at least
//! [`MIN_PREFIX_LEN`] bytes long or end on an instruction boundary.
//!
//! Shapes recognised (Go 1.17+ register ABI and the older stack ABI):
//!
//! amd64 (`G` is R14 in ABIInternal code, or a register loaded from TLS first;
//! the guard is `stackguard0` at 0x10, or `stackguard1` at 0x18 for
//! `//go:systemstack` functions):
//! ```text
//!   [mov G, fs:[-8]  |  mov G, -8 / mov G, [rip+x]; mov G, fs:[G]]   (stack ABI only)
//!   cmp rsp, [G+0x10]                                   frame <= 128
//!   lea r12, [rsp-N];  cmp r12, [G+0x10]                frame <= 4096 (rax before 1.17)
//!   mov r12, rsp; sub r12, N; jb M; cmp r12, [G+0x10]   bigger frames
//!   jbe M                                               (rel8 or rel32)
//!   <probe point>
//!   ...
//! M: [spill args]; call runtime.morestack*; [unspill]; jmp <entry>
//! ```
//! arm64 (g is R28; R16/R17 are the temporaries):
//! ```text
//!   ldr x16, [x28, #16]                                 (#24: stackguard1)
//!   cmp x16, sp                                         frame <= 128
//!   sub x17, sp, #N;  cmp x16, x17                      frame <= 4096
//!   {subs x17, sp, #N | movz/movk x27, N; subs x17, sp, x27}; b.lo M; cmp x16, x17
//!   b.ls M
//!   <probe point>
//!   ...
//! M: [spill]; mov x3, x30; bl runtime.morestack*; [unspill]; b <entry>
//! ```
//! A function whose first instructions show no sign of a stack check (no access
//! to `g.stackguard0/1`, no `cmp` of the stack pointer against memory) is
//! `NOSPLIT`: it gets [`Placement::Entry`] at offset 0.

use crate::binary::Arch;

/// Bytes of a function that are enough to classify a function without a stack
/// check when the whole function is not available. Functions with a stack check
/// always need the whole function (the `morestack` block sits at its end).
pub const MIN_PREFIX_LEN: usize = 64;

/// Where the returned probe point sits relative to the stack check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The offset is the first instruction after the stack-check branch: the
    /// probe fires exactly once per call.
    AfterStackCheck,
    /// The function has no stack check (`NOSPLIT`): offset 0 is safe and exact
    /// (it cannot be re-entered through `morestack`).
    Entry,
}

/// A safe place for a uprobe inside one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePoint {
    /// Offset from the function's first byte; always a decoded instruction boundary.
    pub offset: u64,
    pub placement: Placement,
    /// The instruction at `offset` (e.g. `push rbp`, `str x30, [sp, #-48]!`), for logs.
    pub instruction: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PrologueError {
    /// The bytes end before the prologue (or the instruction at the probe point) does.
    #[error("function code ends inside its prologue (pass the whole function)")]
    Truncated,
    /// The bytes at `offset` are not a valid instruction.
    #[error("undecodable instruction at offset {offset:#x} of the function")]
    Undecodable { offset: u64 },
    /// The function looks like it has a stack check, but not one of the known shapes.
    #[error("unrecognised function prologue: {reason}")]
    Unrecognised { reason: String },
}

fn unrecognised(reason: impl Into<String>) -> PrologueError {
    PrologueError::Unrecognised {
        reason: reason.into(),
    }
}

/// Finds where a uprobe may be attached in the Go function whose machine code is
/// `code` (the whole function, starting at its entry).
///
/// Returns the offset of the first instruction after the stack-check branch
/// ([`Placement::AfterStackCheck`]), or offset 0 for a function without a stack
/// check ([`Placement::Entry`]). Any prologue that looks like a stack check but
/// does not match a known shape exactly is refused with
/// [`PrologueError::Unrecognised`]; callers should then attach at the entry
/// (slow, may fire twice) or skip the function, and say so.
pub fn find_probe_point(arch: Arch, code: &[u8]) -> Result<ProbePoint, PrologueError> {
    match arch {
        Arch::X86_64 => amd64::find(code),
        Arch::Aarch64 => arm64::find(code),
    }
}

/// Whether the kernel emulates the instruction at the start of `insn` when a
/// uprobe sits on it (one trap), rather than single-stepping it out of line
/// (a second trap, ~15x slower). amd64 (arch/x86/kernel/uprobes.c): `push
/// reg`, the one-byte `nop`, and `jmp`/`jcc`/`call` with a relative target.
/// arm64 (arch/arm64/kernel/probes/simulate-insn.c): the direct branches
/// `b`, `bl`, `b.cond`, `cbz/cbnz`, `tbz/tbnz`; `adr`/`adrp` and literal
/// loads too, which Go prologues do not start with.
pub fn kernel_emulates(arch: Arch, insn: &[u8]) -> bool {
    match arch {
        Arch::X86_64 => match insn {
            // push r64, with REX.B for r8-r15.
            [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..] => true,
            [0x90, ..] => true,
            // jmp rel8/rel32, call rel32, jcc rel8/rel32.
            [0xeb | 0xe9 | 0xe8, ..] | [0x70..=0x7f, ..] | [0x0f, 0x80..=0x8f, ..] => true,
            _ => false,
        },
        Arch::Aarch64 => {
            let Some(w) = insn.get(..4) else { return false };
            let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            w & 0x7c00_0000 == 0x1400_0000 // b, bl
                || w & 0xff00_0010 == 0x5400_0000 // b.cond
                || w & 0x7e00_0000 == 0x3400_0000 // cbz, cbnz
                || w & 0x7e00_0000 == 0x3600_0000 // tbz, tbnz
        }
    }
}

/// An amd64 instruction as `goalloc inspect` and the logs show it.
pub(crate) fn format_amd64(insn: &iced_x86::Instruction) -> String {
    amd64::format_insn(insn)
}

/// Targets (link-time addresses) of the direct calls in a function whose
/// code `code` starts at `entry`: `call rel32` on amd64, `bl` on arm64.
/// Undecodable bytes end the scan (Go pads functions with `int3`, which
/// decodes).
pub fn direct_calls(arch: Arch, code: &[u8], entry: u64) -> Vec<u64> {
    match arch {
        Arch::X86_64 => {
            use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};
            let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
            let mut insn = Instruction::default();
            let mut out = Vec::new();
            while decoder.can_decode() {
                decoder.decode_out(&mut insn);
                if insn.is_invalid() {
                    break;
                }
                if insn.mnemonic() == Mnemonic::Call && insn.op0_kind() == OpKind::NearBranch64 {
                    out.push(insn.near_branch_target());
                }
            }
            out
        }
        Arch::Aarch64 => code
            .chunks_exact(4)
            .enumerate()
            .filter_map(|(i, w)| {
                let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                (w & 0xfc00_0000 == 0x9400_0000).then(|| {
                    // imm26, in words, sign-extended.
                    let imm = (((w & 0x03ff_ffff) << 6) as i32 >> 6) as i64 * 4;
                    (entry + 4 * i as u64).wrapping_add_signed(imm)
                })
            })
            .collect(),
    }
}

/// How many instructions at the start of a function are searched for signs of a
/// stack check that is not in a known shape.
const SCAN_INSNS: usize = 12;
/// ... and only instructions starting below this offset (so that
/// [`MIN_PREFIX_LEN`] bytes always hold them completely on amd64).
const SCAN_BYTES: u64 = 48;
/// Longest `morestack` block accepted: spills of all argument registers (up to
/// 9 integer + 15 float on amd64, 16 + 16 on arm64), the call, the unspills and
/// the jump back. Decoding stops earlier at the first branch anyway.
const MORESTACK_BLOCK_INSNS: usize = 96;

mod amd64 {
    use super::{
        MORESTACK_BLOCK_INSNS, Placement, ProbePoint, PrologueError, SCAN_BYTES, SCAN_INSNS,
        unrecognised,
    };
    use iced_x86::{
        Code, Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, OpKind, Register,
    };

    /// Instructions decoded lazily from offset 0, in order.
    struct Stream<'a> {
        code: &'a [u8],
        decoder: Decoder<'a>,
        insns: Vec<Instruction>,
        /// Why decoding stopped, once it has.
        stop: Option<Stop>,
    }

    #[derive(Clone, Copy)]
    enum Stop {
        /// The bytes ended on an instruction boundary.
        End,
        Truncated,
        Undecodable(u64),
    }

    impl<'a> Stream<'a> {
        fn new(code: &'a [u8]) -> Self {
            Self {
                code,
                decoder: Decoder::with_ip(64, code, 0, DecoderOptions::NONE),
                insns: Vec::new(),
                stop: None,
            }
        }

        /// The `k`-th instruction; `Ok(None)` if the bytes end cleanly before it.
        fn try_get(&mut self, k: usize) -> Result<Option<Instruction>, PrologueError> {
            while self.insns.len() <= k {
                match self.stop {
                    Some(Stop::End) => return Ok(None),
                    Some(Stop::Truncated) => return Err(PrologueError::Truncated),
                    Some(Stop::Undecodable(offset)) => {
                        return Err(PrologueError::Undecodable { offset });
                    }
                    None => match decode_one(&mut self.decoder) {
                        Ok(Some(insn)) => self.insns.push(insn),
                        Ok(None) => self.stop = Some(Stop::End),
                        Err(PrologueError::Undecodable { offset }) => {
                            self.stop = Some(Stop::Undecodable(offset))
                        }
                        Err(_) => self.stop = Some(Stop::Truncated),
                    },
                }
            }
            Ok(Some(self.insns[k]))
        }

        /// The `k`-th instruction, which the prologue needs.
        fn get(&mut self, k: usize) -> Result<Instruction, PrologueError> {
            self.try_get(k)?.ok_or(PrologueError::Truncated)
        }
    }

    /// Decodes one instruction; `Ok(None)` at the clean end of the bytes.
    fn decode_one(decoder: &mut Decoder<'_>) -> Result<Option<Instruction>, PrologueError> {
        if !decoder.can_decode() {
            return Ok(None);
        }
        let offset = decoder.ip();
        let mut insn = Instruction::default();
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            return Err(match decoder.last_error() {
                DecoderError::NoMoreBytes => PrologueError::Truncated,
                _ => PrologueError::Undecodable { offset },
            });
        }
        Ok(Some(insn))
    }

    const GUARD_OFFSETS: [u64; 2] = [0x10, 0x18]; // g.stackguard0, g.stackguard1
    const G_REGS: [Register; 2] = [Register::R14, Register::RCX]; // regabi / TLS-loaded
    const TMP_REGS: [Register; 2] = [Register::R12, Register::RAX]; // Go 1.17+ / older

    fn is_guard_mem(insn: &Instruction, operand: u32, g: Register) -> bool {
        insn.op_kind(operand) == OpKind::Memory
            && insn.memory_base() == g
            && insn.memory_index() == Register::None
            && insn.segment_prefix() == Register::None
            && GUARD_OFFSETS.contains(&insn.memory_displacement64())
    }

    /// `cmp reg, [g+0x10]` (or `+0x18`).
    fn is_guard_cmp(insn: &Instruction, reg: Register, g: Register) -> bool {
        insn.code() == Code::Cmp_r64_rm64 && insn.op0_register() == reg && is_guard_mem(insn, 1, g)
    }

    fn is_fs_mem(insn: &Instruction, base: Register, disp: Option<u64>) -> bool {
        insn.op_kind(1) == OpKind::Memory
            && insn.segment_prefix() == Register::FS
            && insn.memory_base() == base
            && insn.memory_index() == Register::None
            && disp.is_none_or(|d| insn.memory_displacement64() == d)
    }

    /// A load of `g` from thread-local storage (stack ABI functions). Returns the
    /// register and the number of instructions it takes.
    fn tls_g_load(s: &mut Stream<'_>) -> Result<Option<(Register, usize)>, PrologueError> {
        let i0 = s.get(0)?;
        let reg = i0.op0_register();
        if !G_REGS.contains(&reg) {
            return Ok(None);
        }
        // Local exec: mov G, fs:[-8]
        if i0.code() == Code::Mov_r64_rm64 && is_fs_mem(&i0, Register::None, None) {
            return Ok(Some((reg, 1)));
        }
        // PIE / initial exec: mov G, -8 (or mov G, [rip+tlsoffset]); mov G, fs:[G]
        let loads_offset = matches!(i0.code(), Code::Mov_rm64_imm32 | Code::Mov_r64_imm64)
            && i0.op0_kind() == OpKind::Register
            || i0.code() == Code::Mov_r64_rm64
                && i0.op1_kind() == OpKind::Memory
                && i0.memory_base() == Register::RIP
                && i0.segment_prefix() == Register::None;
        if !loads_offset {
            return Ok(None);
        }
        match s.try_get(1)? {
            Some(i1)
                if i1.code() == Code::Mov_r64_rm64
                    && i1.op0_register() == reg
                    && is_fs_mem(&i1, reg, Some(0)) =>
            {
                Ok(Some((reg, 2)))
            }
            _ => Ok(None),
        }
    }

    pub(super) fn find(code: &[u8]) -> Result<ProbePoint, PrologueError> {
        if code.is_empty() {
            return Err(PrologueError::Truncated);
        }
        let mut s = Stream::new(code);
        let (g, mut k) = match tls_g_load(&mut s)? {
            Some(found) => found,
            None => (Register::R14, 0),
        };
        let first = s.get(k)?;

        // The compare against the guard, and the branch(es) to morestack.
        let mut underflow_branch: Option<Instruction> = None;
        if is_guard_cmp(&first, Register::RSP, g) {
            k += 1;
        } else if first.code() == Code::Lea_r64_m
            && TMP_REGS.contains(&first.op0_register())
            && first.memory_base() == Register::RSP
            && first.memory_index() == Register::None
            && (first.memory_displacement64() as i64) < 0
        {
            let tmp = first.op0_register();
            let cmp = s.get(k + 1)?;
            if !is_guard_cmp(&cmp, tmp, g) {
                return Err(unrecognised(format!(
                    "`{}` at +{:#x} is not followed by `cmp {}, [g+0x10]` (found `{}`)",
                    format_insn(&first),
                    first.ip(),
                    reg_name(tmp),
                    format_insn(&cmp)
                )));
            }
            k += 2;
        } else if matches!(first.code(), Code::Mov_r64_rm64 | Code::Mov_rm64_r64)
            && first.op0_kind() == OpKind::Register
            && first.op1_kind() == OpKind::Register
            && TMP_REGS.contains(&first.op0_register())
            && first.op1_register() == Register::RSP
        {
            let tmp = first.op0_register();
            let sub = s.get(k + 1)?;
            let jb = s.get(k + 2)?;
            let cmp = s.get(k + 3)?;
            let sub_ok = matches!(sub.code(), Code::Sub_rm64_imm32 | Code::Sub_rm64_imm8)
                && sub.op0_kind() == OpKind::Register
                && sub.op0_register() == tmp;
            let jb_ok = matches!(jb.code(), Code::Jb_rel8_64 | Code::Jb_rel32_64);
            if !(sub_ok && jb_ok && is_guard_cmp(&cmp, tmp, g)) {
                return Err(unrecognised(format!(
                    "`{}` at +{:#x} is not followed by `sub {t}, N; jb; cmp {t}, [g+0x10]` (found `{}; {}; {}`)",
                    format_insn(&first),
                    first.ip(),
                    format_insn(&sub),
                    format_insn(&jb),
                    format_insn(&cmp),
                    t = reg_name(tmp),
                )));
            }
            underflow_branch = Some(jb);
            k += 4;
        } else {
            // Also NOSPLIT assembly that loads g from TLS for other reasons
            // (e.g. sigpanic0): the scan refuses any use of that g's guard.
            return no_stack_check(&mut s);
        }

        let jbe = s.get(k)?;
        if !matches!(jbe.code(), Code::Jbe_rel8_64 | Code::Jbe_rel32_64) {
            return Err(unrecognised(format!(
                "stack-check compare is followed by `{}` at +{:#x}, not `jbe`",
                format_insn(&jbe),
                jbe.ip()
            )));
        }
        let probe = s.get(k + 1)?;
        let target = jbe.near_branch64();
        if let Some(jb) = underflow_branch
            && jb.near_branch64() != target
        {
            return Err(unrecognised(format!(
                "underflow check `jb` at +{:#x} goes to {:#x}, but `jbe` at +{:#x} goes to {:#x}",
                jb.ip(),
                jb.near_branch64(),
                jbe.ip(),
                target
            )));
        }
        check_morestack_block(s.code, &jbe, probe.ip())?;
        Ok(ProbePoint {
            offset: probe.ip(),
            placement: Placement::AfterStackCheck,
            instruction: format_insn(&probe),
        })
    }

    /// The stack-check branch must go forward, past the probe point, to a block
    /// inside the function that calls morestack once and jumps back to the entry.
    fn check_morestack_block(
        code: &[u8],
        branch: &Instruction,
        probe: u64,
    ) -> Result<(), PrologueError> {
        let target = branch.near_branch64();
        let describe = |what: &str| {
            unrecognised(format!(
                "stack-check branch at +{:#x} goes to {:#x}, {what}",
                branch.ip(),
                target as i64
            ))
        };
        if target <= probe || target >= code.len() as u64 {
            return Err(describe(&format!(
                "outside the function body (+{:#x}..{:#x})",
                probe + 1,
                code.len()
            )));
        }
        let mut decoder =
            Decoder::with_ip(64, &code[target as usize..], target, DecoderOptions::NONE);
        let mut calls = 0;
        for _ in 0..MORESTACK_BLOCK_INSNS {
            let insn = match decode_one(&mut decoder) {
                Ok(Some(insn)) => insn,
                Ok(None) | Err(_) => break,
            };
            match insn.code() {
                Code::Call_rel32_64 => calls += 1,
                Code::Jmp_rel8_64 | Code::Jmp_rel32_64 => {
                    return if calls == 1 && insn.near_branch64() == 0 {
                        Ok(())
                    } else {
                        Err(describe(&format!(
                            "where {calls} call(s) are followed by a jump to {:#x}, not one morestack call and a jump to the entry",
                            insn.near_branch64()
                        )))
                    };
                }
                _ if is_control_flow(&insn) => {
                    return Err(describe(&format!(
                        "where `{}` at +{:#x} is not part of a morestack block",
                        format_insn(&insn),
                        insn.ip()
                    )));
                }
                _ => {}
            }
        }
        Err(describe(
            "which is not a morestack call followed by a jump to the entry",
        ))
    }

    fn is_control_flow(insn: &Instruction) -> bool {
        matches!(
            insn.op0_kind(),
            OpKind::NearBranch16
                | OpKind::NearBranch32
                | OpKind::NearBranch64
                | OpKind::FarBranch16
                | OpKind::FarBranch32
        ) || matches!(
            insn.mnemonic(),
            Mnemonic::Call
                | Mnemonic::Jmp
                | Mnemonic::Ret
                | Mnemonic::Retf
                | Mnemonic::Int3
                | Mnemonic::Int
                | Mnemonic::Ud0
                | Mnemonic::Ud1
                | Mnemonic::Ud2
                | Mnemonic::Hlt
                | Mnemonic::Syscall
        )
    }

    /// No known stack-check shape starts at offset 0. Make sure nothing in the
    /// first instructions looks like one before saying the function has none.
    fn no_stack_check(s: &mut Stream<'_>) -> Result<ProbePoint, PrologueError> {
        let first = s.get(0)?;
        let mut tls_regs: Vec<Register> = Vec::new();
        for k in 0..SCAN_INSNS {
            let Some(insn) = s.try_get(k)? else { break };
            if insn.ip() >= SCAN_BYTES {
                break;
            }
            let cmp = matches!(insn.code(), Code::Cmp_r64_rm64 | Code::Cmp_rm64_r64);
            for op in 0..insn.op_count() {
                if insn.op_kind(op) != OpKind::Memory {
                    continue;
                }
                // Reads of the guard; NOSPLIT code storing it (`mov [r14+0x10], -0x522`,
                // a preemption request) is not a stack check.
                let store = op == 0 && insn.mnemonic() == Mnemonic::Mov;
                let guard = !store
                    && std::iter::once(&Register::R14)
                        .chain(tls_regs.iter())
                        .any(|&g| is_guard_mem(&insn, op, g));
                let sp_cmp = cmp
                    && (insn.op0_register() == Register::RSP
                        || insn.op1_register() == Register::RSP);
                if guard || sp_cmp {
                    return Err(unrecognised(format!(
                        "`{}` at +{:#x} looks like a stack check, but not one of the known shapes",
                        format_insn(&insn),
                        insn.ip()
                    )));
                }
                if insn.segment_prefix() == Register::FS && insn.op0_kind() == OpKind::Register {
                    tls_regs.push(insn.op0_register());
                }
            }
            if matches!(
                insn.mnemonic(),
                Mnemonic::Ret
                    | Mnemonic::Retf
                    | Mnemonic::Jmp
                    | Mnemonic::Int3
                    | Mnemonic::Ud2
                    | Mnemonic::Hlt
            ) {
                break;
            }
        }
        Ok(ProbePoint {
            offset: 0,
            placement: Placement::Entry,
            instruction: format_insn(&first),
        })
    }

    fn reg_name(reg: Register) -> String {
        format!("{reg:?}").to_lowercase()
    }

    /// A short Intel-syntax rendering (the decoder is built without a formatter).
    pub(super) fn format_insn(insn: &Instruction) -> String {
        let mut out = format!("{:?}", insn.mnemonic()).to_lowercase();
        for op in 0..insn.op_count() {
            out.push_str(if op == 0 { " " } else { ", " });
            match insn.op_kind(op) {
                OpKind::Register => out.push_str(&reg_name(insn.op_register(op))),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                    out.push_str(&format!("{:#x}", insn.near_branch_target()))
                }
                OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64 => out.push_str(&signed_hex(insn.immediate(op) as i64)),
                OpKind::Immediate8
                | OpKind::Immediate8_2nd
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64 => out.push_str(&format!("{:#x}", insn.immediate(op))),
                OpKind::Memory => {
                    if insn.segment_prefix() != Register::None {
                        out.push_str(&reg_name(insn.segment_prefix()));
                        out.push(':');
                    }
                    out.push('[');
                    let disp = insn.memory_displacement64() as i64;
                    let mut parts = String::new();
                    if insn.memory_base() == Register::RIP {
                        parts.push_str(&format!("{disp:#x}"));
                    } else {
                        if insn.memory_base() != Register::None {
                            parts.push_str(&reg_name(insn.memory_base()));
                        }
                        if insn.memory_index() != Register::None {
                            if !parts.is_empty() {
                                parts.push('+');
                            }
                            parts.push_str(&reg_name(insn.memory_index()));
                            if insn.memory_index_scale() != 1 {
                                parts.push_str(&format!("*{}", insn.memory_index_scale()));
                            }
                        }
                        if parts.is_empty() {
                            parts.push_str(&signed_hex(disp));
                        } else if disp != 0 {
                            let sign = if disp < 0 { '-' } else { '+' };
                            parts.push_str(&format!("{sign}{:#x}", disp.unsigned_abs()));
                        }
                    }
                    out.push_str(&parts);
                    out.push(']');
                }
                _ => out.push('?'),
            }
        }
        out
    }

    fn signed_hex(v: i64) -> String {
        if v < 0 {
            format!("-{:#x}", v.unsigned_abs())
        } else {
            format!("{v:#x}")
        }
    }
}

mod arm64 {
    use super::{
        MORESTACK_BLOCK_INSNS, Placement, ProbePoint, PrologueError, SCAN_BYTES, SCAN_INSNS,
        unrecognised,
    };

    /// Fixed 4-byte little-endian instructions.
    struct Words<'a>(&'a [u8]);

    impl Words<'_> {
        /// The word at byte `offset`; `Ok(None)` if the bytes end cleanly there.
        fn try_get(&self, offset: u64) -> Result<Option<u32>, PrologueError> {
            let start = usize::try_from(offset).map_err(|_| PrologueError::Truncated)?;
            if start >= self.0.len() {
                return Ok(None);
            }
            match self.0.get(start..start + 4) {
                Some(b) => Ok(Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                None => Err(PrologueError::Truncated),
            }
        }

        fn get(&self, offset: u64) -> Result<u32, PrologueError> {
            self.try_get(offset)?.ok_or(PrologueError::Truncated)
        }
    }

    const REG_G: u32 = 28;
    const REG_RT1: u32 = 16;
    const REG_RT2: u32 = 17;
    const REG_TMP: u32 = 27;
    const REG_SP: u32 = 31;
    const COND_LO: u32 = 0b0011;
    const COND_LS: u32 = 0b1001;

    fn rd(w: u32) -> u32 {
        w & 31
    }
    fn rn(w: u32) -> u32 {
        (w >> 5) & 31
    }

    /// `ldr xT, [xN, #imm]` (64-bit, unsigned offset): (T, N, byte offset).
    fn ldr_imm(w: u32) -> Option<(u32, u32, u32)> {
        (w & 0xffc0_0000 == 0xf940_0000).then(|| (rd(w), rn(w), ((w >> 10) & 0xfff) * 8))
    }

    /// `ldr x16, [x28, #16]` (stackguard0) or `#24` (stackguard1).
    fn is_guard_load(w: u32) -> bool {
        matches!(ldr_imm(w), Some((REG_RT1, REG_G, 16 | 24)))
    }

    /// `add/sub{s} xD, xN, #imm{, lsl #12}`: (sub, set flags, D, N, value).
    fn add_sub_imm(w: u32) -> Option<(bool, bool, u32, u32, u64)> {
        if w & 0x9f00_0000 != 0x9100_0000 || w & 0x0080_0000 != 0 {
            return None;
        }
        let shift = if w & 0x0040_0000 != 0 { 12 } else { 0 };
        let imm = u64::from((w >> 10) & 0xfff) << shift;
        Some((
            w & 0x4000_0000 != 0,
            w & 0x2000_0000 != 0,
            rd(w),
            rn(w),
            imm,
        ))
    }

    /// `subs xzr, sp, x16, uxtx` = Go's `CMP R16, RSP`.
    const CMP_RT1_SP: u32 = 0xeb30_63ff;
    /// `subs xzr, x17, x16` = Go's `CMP R16, R17`.
    const CMP_RT1_RT2: u32 = 0xeb10_023f;
    /// `subs x17, sp, x27, uxtx` = Go's `SUBS R27, RSP, R17`.
    const SUBS_RT2_SP_TMP: u32 = 0xeb3b_63f1;

    /// `movz x27, #imm{, lsl #n}` / `movk x27, ...`.
    fn is_movz_tmp(w: u32) -> bool {
        w & 0xff80_001f == 0xd280_0000 | REG_TMP
    }
    fn is_movk_tmp(w: u32) -> bool {
        w & 0xff80_001f == 0xf280_0000 | REG_TMP
    }

    fn sign_extend(value: u32, bits: u32) -> i64 {
        let shift = 64 - bits;
        (i64::from(value) << shift) >> shift
    }

    /// `b.cond label`: (cond, target) for an instruction at `pc`.
    fn b_cond(w: u32, pc: u64) -> Option<(u32, i64)> {
        (w & 0xff00_0010 == 0x5400_0000).then(|| {
            (
                w & 0xf,
                pc as i64 + sign_extend((w >> 5) & 0x7_ffff, 19) * 4,
            )
        })
    }

    /// `b label` / `bl label`: (link, target).
    fn b_imm(w: u32, pc: u64) -> Option<(bool, i64)> {
        (w & 0x7c00_0000 == 0x1400_0000).then(|| {
            (
                w & 0x8000_0000 != 0,
                pc as i64 + sign_extend(w & 0x3ff_ffff, 26) * 4,
            )
        })
    }

    /// Any other branch: cbz/cbnz, tbz/tbnz, br/blr/ret.
    fn is_other_branch(w: u32) -> bool {
        w & 0x7e00_0000 == 0x3400_0000
            || w & 0x7e00_0000 == 0x3600_0000
            || w & 0xfe00_0000 == 0xd600_0000
    }

    fn is_ret_or_jump(w: u32) -> bool {
        b_imm(w, 0).is_some_and(|(link, _)| !link)
            || w & 0xfe00_0000 == 0xd600_0000 && (w >> 21) & 0xf != 1
    }

    pub(super) fn find(code: &[u8]) -> Result<ProbePoint, PrologueError> {
        let words = Words(code);
        let first = words.get(0)?;
        if !is_guard_load(first) {
            return no_stack_check(&words, first);
        }
        let w1 = words.get(4)?;
        let mut pc = 8;
        let mut underflow_target = None;
        if w1 == CMP_RT1_SP {
            // small frame
        } else if matches!(add_sub_imm(w1), Some((true, false, REG_RT2, REG_SP, _))) {
            // large frame: sub x17, sp, #N; cmp x16, x17
            let cmp = words.get(pc)?;
            if cmp != CMP_RT1_RT2 {
                return Err(unrecognised(format!(
                    "`{}` at +0x4 is not followed by `cmp x16, x17` (found `{}`)",
                    format_insn(w1),
                    format_insn(cmp)
                )));
            }
            pc += 4;
        } else if matches!(add_sub_imm(w1), Some((true, true, REG_RT2, REG_SP, _)))
            || is_movz_tmp(w1)
        {
            // huge frame: {subs x17, sp, #N | movz/movk x27; subs x17, sp, x27}; b.lo; cmp x16, x17
            if is_movz_tmp(w1) {
                let mut w = words.get(pc)?;
                let mut movks = 0;
                while is_movk_tmp(w) && movks < 3 {
                    movks += 1;
                    pc += 4;
                    w = words.get(pc)?;
                }
                if w != SUBS_RT2_SP_TMP {
                    return Err(unrecognised(format!(
                        "`{}` at +0x4 is not followed by `subs x17, sp, x27` (found `{}` at +{pc:#x})",
                        format_insn(w1),
                        format_insn(w)
                    )));
                }
                pc += 4;
            }
            let blo = words.get(pc)?;
            let cmp = words.get(pc + 4)?;
            match b_cond(blo, pc) {
                Some((COND_LO, target)) if cmp == CMP_RT1_RT2 => {
                    underflow_target = Some((pc, target))
                }
                _ => {
                    return Err(unrecognised(format!(
                        "huge-frame stack check is not followed by `b.lo; cmp x16, x17` (found `{}; {}` at +{pc:#x})",
                        format_insn(blo),
                        format_insn(cmp)
                    )));
                }
            }
            pc += 8;
        } else {
            return Err(unrecognised(format!(
                "`ldr x16, [x28, #16]` is followed by `{}`, not a known stack-check compare",
                format_insn(w1)
            )));
        }

        let bls = words.get(pc)?;
        let target = match b_cond(bls, pc) {
            Some((COND_LS, target)) => target,
            _ => {
                return Err(unrecognised(format!(
                    "stack-check compare is followed by `{}` at +{pc:#x}, not `b.ls`",
                    format_insn(bls)
                )));
            }
        };
        if let Some((blo_pc, blo_target)) = underflow_target
            && blo_target != target
        {
            return Err(unrecognised(format!(
                "underflow check `b.lo` at +{blo_pc:#x} goes to {blo_target:#x}, but `b.ls` at +{pc:#x} goes to {target:#x}"
            )));
        }
        let probe = pc + 4;
        let probe_word = words.get(probe)?;
        check_morestack_block(&words, pc, target, probe)?;
        Ok(ProbePoint {
            offset: probe,
            placement: Placement::AfterStackCheck,
            instruction: format_insn(probe_word),
        })
    }

    /// The `b.ls` must go forward, past the probe point, to a block inside the
    /// function that calls morestack once (`bl`) and branches back to the entry.
    fn check_morestack_block(
        words: &Words<'_>,
        branch_pc: u64,
        target: i64,
        probe: u64,
    ) -> Result<(), PrologueError> {
        let describe = |what: String| {
            unrecognised(format!(
                "stack-check branch at +{branch_pc:#x} goes to {target:#x}, {what}"
            ))
        };
        let len = words.0.len() as u64;
        if target <= probe as i64 || target as u64 >= len {
            return Err(describe(format!(
                "outside the function body (+{:#x}..{len:#x})",
                probe + 4
            )));
        }
        let mut calls = 0;
        let mut pc = target as u64;
        for _ in 0..MORESTACK_BLOCK_INSNS {
            let Ok(Some(w)) = words.try_get(pc) else {
                break;
            };
            match b_imm(w, pc) {
                Some((true, _)) => calls += 1,
                Some((false, back)) => {
                    return if calls == 1 && back == 0 {
                        Ok(())
                    } else {
                        Err(describe(format!(
                            "where {calls} call(s) are followed by a branch to {back:#x}, not one morestack call and a branch to the entry"
                        )))
                    };
                }
                None if b_cond(w, pc).is_some() || is_other_branch(w) => {
                    return Err(describe(format!(
                        "where `{}` at +{pc:#x} is not part of a morestack block",
                        format_insn(w)
                    )));
                }
                None => {}
            }
            pc += 4;
        }
        Err(describe(
            "which is not a morestack call followed by a branch to the entry".to_string(),
        ))
    }

    /// No known stack check at offset 0: make sure nothing in the first
    /// instructions looks like one before saying the function has none.
    fn no_stack_check(words: &Words<'_>, first: u32) -> Result<ProbePoint, PrologueError> {
        if first == 0 {
            // udf #0: Go's padding, never the first instruction of a function.
            return Err(PrologueError::Undecodable { offset: 0 });
        }
        let mut pc = 0;
        while pc < SCAN_BYTES && pc < 4 * SCAN_INSNS as u64 {
            let Some(w) = words.try_get(pc)? else { break };
            let guard_load = matches!(ldr_imm(w), Some((_, REG_G, 16 | 24)));
            // subs xzr, sp, xM (cmp xM, sp) in any extended form, or cmp of sp with an immediate
            let sp_cmp = w & 0xffe0_03ff == 0xeb20_03ff
                || matches!(add_sub_imm(w), Some((_, true, REG_SP, REG_SP, _)));
            if guard_load || sp_cmp {
                return Err(unrecognised(format!(
                    "`{}` at +{pc:#x} looks like a stack check, but not one of the known shapes",
                    format_insn(w)
                )));
            }
            if is_ret_or_jump(w) {
                break;
            }
            pc += 4;
        }
        Ok(ProbePoint {
            offset: 0,
            placement: Placement::Entry,
            instruction: format_insn(first),
        })
    }

    fn xreg(r: u32, sp: bool) -> String {
        match r {
            31 if sp => "sp".to_string(),
            31 => "xzr".to_string(),
            30 => "x30".to_string(),
            r => format!("x{r}"),
        }
    }

    /// Renders the common prologue instructions; anything else as `.inst 0x...`.
    pub(super) fn format_insn(w: u32) -> String {
        let t = rd(w);
        let n = rn(w);
        if w == 0xd503_201f {
            return "nop".to_string();
        }
        if let Some((t, n, off)) = ldr_imm(w) {
            return format!("ldr {}, [{}, #{off}]", xreg(t, false), xreg(n, true));
        }
        if w & 0xffc0_0000 == 0xf900_0000 {
            return format!(
                "str {}, [{}, #{}]",
                xreg(t, false),
                xreg(n, true),
                ((w >> 10) & 0xfff) * 8
            );
        }
        if w & 0xffa0_0400 == 0xf800_0400 {
            // str/ldr (64-bit, unscaled) pre-index (bit 11 set) or post-index
            let op = if w & 0x0040_0000 != 0 { "ldr" } else { "str" };
            let imm = sign_extend((w >> 12) & 0x1ff, 9);
            return if w & 0x800 != 0 {
                format!("{op} {}, [{}, #{imm}]!", xreg(t, false), xreg(n, true))
            } else {
                format!("{op} {}, [{}], #{imm}", xreg(t, false), xreg(n, true))
            };
        }
        if w & 0xfe00_0000 == 0xa800_0000 {
            // stp/ldp (64-bit)
            let load = w & 0x0040_0000 != 0;
            let t2 = (w >> 10) & 31;
            let imm = sign_extend((w >> 15) & 0x7f, 7) * 8;
            let (a, b, base) = (xreg(t, false), xreg(t2, false), xreg(n, true));
            return match ((w >> 23) & 3, load) {
                (0, false) => format!("stnp {a}, {b}, [{base}, #{imm}]"),
                (0, true) => format!("ldnp {a}, {b}, [{base}, #{imm}]"),
                (1, false) => format!("stp {a}, {b}, [{base}], #{imm}"),
                (1, true) => format!("ldp {a}, {b}, [{base}], #{imm}"),
                (3, false) => format!("stp {a}, {b}, [{base}, #{imm}]!"),
                (3, true) => format!("ldp {a}, {b}, [{base}, #{imm}]!"),
                (_, false) => format!("stp {a}, {b}, [{base}, #{imm}]"),
                (_, true) => format!("ldp {a}, {b}, [{base}, #{imm}]"),
            };
        }
        if let Some((sub, flags, d, n, imm)) = add_sub_imm(w) {
            let op = match (sub, flags) {
                (false, false) => "add",
                (false, true) => "adds",
                (true, false) => "sub",
                (true, true) => "subs",
            };
            return format!("{op} {}, {}, #{imm}", xreg(d, !flags), xreg(n, true));
        }
        if w & 0xffe0_ffe0 == 0xaa00_03e0 {
            return format!("mov {}, {}", xreg(t, false), xreg((w >> 16) & 31, false));
        }
        if w & 0xff80_0000 == 0xd280_0000 || w & 0xff80_0000 == 0xf280_0000 {
            let op = if w & 0x2000_0000 != 0 { "movk" } else { "movz" };
            let shift = ((w >> 21) & 3) * 16;
            return format!(
                "{op} {}, #{:#x}, lsl #{shift}",
                xreg(t, false),
                (w >> 5) & 0xffff
            );
        }
        match w {
            CMP_RT1_SP => return "cmp sp, x16".to_string(),
            CMP_RT1_RT2 => return "cmp x17, x16".to_string(),
            SUBS_RT2_SP_TMP => return "subs x17, sp, x27".to_string(),
            _ => {}
        }
        if let Some((cond, target)) = b_cond(w, 0) {
            const CONDS: [&str; 16] = [
                "eq", "ne", "hs", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le",
                "al", "nv",
            ];
            return format!("b.{} .{target:+#x}", CONDS[cond as usize]);
        }
        if let Some((link, target)) = b_imm(w, 0) {
            return format!("{} .{target:+#x}", if link { "bl" } else { "b" });
        }
        if w & 0xffff_fc1f == 0xd65f_0000 {
            return "ret".to_string();
        }
        format!(".inst {w:#010x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86(code: &[u8]) -> Result<ProbePoint, PrologueError> {
        find_probe_point(Arch::X86_64, code)
    }

    fn after(offset: u64, instruction: &str) -> ProbePoint {
        ProbePoint {
            offset,
            placement: Placement::AfterStackCheck,
            instruction: instruction.to_string(),
        }
    }

    fn entry(instruction: &str) -> ProbePoint {
        ProbePoint {
            offset: 0,
            placement: Placement::Entry,
            instruction: instruction.to_string(),
        }
    }

    #[track_caller]
    fn assert_unrecognised(result: Result<ProbePoint, PrologueError>, needle: &str) {
        match result {
            Err(PrologueError::Unrecognised { reason }) => {
                assert!(
                    reason.contains(needle),
                    "reason {reason:?} does not mention {needle:?}"
                );
                assert!(!reason.contains('\n'), "multi-line reason {reason:?}");
            }
            other => panic!("expected Unrecognised ({needle}), got {other:?}"),
        }
    }

    /// `push rbp; mov rbp, rsp; pop rbp; ret` - a body between the check and the tail.
    const BODY: [u8; 6] = [0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3];

    /// Small frame, short `jbe`: the probe goes at offset 6.
    const SMALL_SHORT: &[u8] = &[
        0x49, 0x3b, 0x66, 0x10, // 00: cmp rsp, [r14+0x10]
        0x76, 0x06, // 04: jbe 0x0c
        0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3, // 06: body
        0xe8, 0x00, 0x00, 0x00, 0x00, // 0c: call runtime.morestack_noctxt
        0xeb, 0xed, // 11: jmp 0x0
    ];

    #[test]
    fn amd64_small_frame_short_jbe() {
        assert_eq!(x86(SMALL_SHORT).unwrap(), after(6, "push rbp"));
    }

    #[test]
    fn amd64_small_frame_near_jbe() {
        let code = [
            &[0x49, 0x3b, 0x66, 0x10][..],         // 00: cmp rsp, [r14+0x10]
            &[0x0f, 0x86, 0x06, 0x00, 0x00, 0x00], // 04: jbe 0x10
            &BODY,                                 // 0a
            &[0xe8, 0x00, 0x00, 0x00, 0x00],       // 10: call
            &[0xeb, 0xe9],                         // 15: jmp 0x0
        ]
        .concat();
        assert_eq!(x86(&code).unwrap(), after(10, "push rbp"));
    }

    #[test]
    fn amd64_systemstack_uses_stackguard1() {
        let mut code = SMALL_SHORT.to_vec();
        code[3] = 0x18; // cmp rsp, [r14+0x18]
        assert_eq!(x86(&code).unwrap(), after(6, "push rbp"));
    }

    #[test]
    fn amd64_no_frame_pointer_push() {
        // Go 1.19 compiles some functions with `sub rsp, N` right after the check.
        let code = [
            &[0x49, 0x3b, 0x66, 0x10][..],      // 00: cmp rsp, [r14+0x10]
            &[0x76, 0x09],                      // 04: jbe 0x0f
            &[0x48, 0x81, 0xec, 0xe0, 0, 0, 0], // 06: sub rsp, 0xe0
            &[0x90, 0xc3],                      // 0d: nop; ret
            &[0xe8, 0x00, 0x00, 0x00, 0x00],    // 0f: call
            &[0xeb, 0xea],                      // 14: jmp 0x0
        ]
        .concat();
        assert_eq!(x86(&code).unwrap(), after(6, "sub rsp, 0xe0"));
    }

    #[test]
    fn amd64_large_frame_lea_disp8() {
        let code = [
            &[0x4c, 0x8d, 0x64, 0x24, 0xa0][..], // 00: lea r12, [rsp-0x60]
            &[0x4d, 0x3b, 0x66, 0x10],           // 05: cmp r12, [r14+0x10]
            &[0x76, 0x06],                       // 09: jbe 0x11
            &BODY,                               // 0b
            &[0xe8, 0x00, 0x00, 0x00, 0x00],     // 11: call
            &[0xeb, 0xe8],                       // 16: jmp 0x0
        ]
        .concat();
        assert_eq!(x86(&code).unwrap(), after(0x0b, "push rbp"));
    }

    #[test]
    fn amd64_large_frame_lea_disp32_near_jbe() {
        let code = [
            &[0x4c, 0x8d, 0xa4, 0x24, 0x90, 0xfc, 0xff, 0xff][..], // 00: lea r12, [rsp-0x370]
            &[0x4d, 0x3b, 0x66, 0x10],                             // 08: cmp r12, [r14+0x10]
            &[0x0f, 0x86, 0x06, 0x00, 0x00, 0x00],                 // 0c: jbe 0x18
            &BODY,                                                 // 12
            &[0xe8, 0x00, 0x00, 0x00, 0x00],                       // 18: call
            &[0xeb, 0xe1],                                         // 1d: jmp 0x0
        ]
        .concat();
        assert_eq!(x86(&code).unwrap(), after(0x12, "push rbp"));
    }

    fn huge_frame(jb_rel: u8) -> Vec<u8> {
        [
            &[0x49, 0x89, 0xe4][..],                     // 00: mov r12, rsp
            &[0x49, 0x81, 0xec, 0xc8, 0x1e, 0x00, 0x00], // 03: sub r12, 0x1ec8
            &[0x72, jb_rel],                             // 0a: jb 0x18 (rel 0x0c)
            &[0x4d, 0x3b, 0x66, 0x10],                   // 0c: cmp r12, [r14+0x10]
            &[0x76, 0x06],                               // 10: jbe 0x18
            &BODY,                                       // 12
            &[0xe8, 0x00, 0x00, 0x00, 0x00],             // 18: call
            &[0xeb, 0xe1],                               // 1d: jmp 0x0
        ]
        .concat()
    }

    #[test]
    fn amd64_huge_frame() {
        assert_eq!(x86(&huge_frame(0x0c)).unwrap(), after(0x12, "push rbp"));
        // The underflow branch must go to the same morestack block.
        assert_unrecognised(x86(&huge_frame(0x0b)), "underflow");
        // Missing `jb`: the instruction after `sub` is something else.
        let mut code = huge_frame(0x0c);
        code[0x0a] = 0x74; // je
        assert_unrecognised(x86(&code), "is not followed by `sub r12, N; jb");
    }

    /// Stack-ABI prologue: g is loaded from TLS first.
    fn tls_prologue(load: &[u8], cmp: &[u8]) -> Vec<u8> {
        let probe = load.len() + cmp.len() + 2;
        let tail = probe + BODY.len();
        let jmp_back = (-((tail + 7) as i64)) as u8;
        [
            load,
            cmp,
            &[0x76, BODY.len() as u8],
            &BODY,
            &[0xe8, 0, 0, 0, 0],
            &[0xeb, jmp_back],
        ]
        .concat()
    }

    #[test]
    fn amd64_stack_abi_tls_forms() {
        let cmp_r14 = [0x49, 0x3b, 0x66, 0x10]; // cmp rsp, [r14+0x10]
        // static binary: mov r14, fs:[-8]
        let le = [0x64, 0x4c, 0x8b, 0x34, 0x25, 0xf8, 0xff, 0xff, 0xff];
        assert_eq!(
            x86(&tls_prologue(&le, &cmp_r14)).unwrap(),
            after(15, "push rbp")
        );
        // PIE: mov r14, -8; mov r14, fs:[r14]
        let pie = [
            0x49, 0xc7, 0xc6, 0xf8, 0xff, 0xff, 0xff, 0x64, 0x4d, 0x8b, 0x36,
        ];
        assert_eq!(
            x86(&tls_prologue(&pie, &cmp_r14)).unwrap(),
            after(17, "push rbp")
        );
        // initial exec: mov r14, [rip+x]; mov r14, fs:[r14]
        let ie = [
            0x4c, 0x8b, 0x35, 0x10, 0x00, 0x00, 0x00, 0x64, 0x4d, 0x8b, 0x36,
        ];
        assert_eq!(
            x86(&tls_prologue(&ie, &cmp_r14)).unwrap(),
            after(17, "push rbp")
        );
        // pre-1.17 / noregabi: mov rcx, fs:[-8]; cmp rsp, [rcx+0x10]
        let rcx = [0x64, 0x48, 0x8b, 0x0c, 0x25, 0xf8, 0xff, 0xff, 0xff];
        let cmp_rcx = [0x48, 0x3b, 0x61, 0x10];
        assert_eq!(
            x86(&tls_prologue(&rcx, &cmp_rcx)).unwrap(),
            after(15, "push rbp")
        );
        // ... with a large frame: lea rax, [rsp-0x60]; cmp rax, [rcx+0x10]
        let lea_rax = [0x48, 0x8d, 0x44, 0x24, 0xa0, 0x48, 0x3b, 0x41, 0x10];
        assert_eq!(
            x86(&tls_prologue(&rcx, &lea_rax)).unwrap(),
            after(20, "push rbp")
        );
        // g loaded into rcx, but compared through r14: not a stack check we know.
        assert_unrecognised(
            x86(&tls_prologue(&rcx, &cmp_r14)),
            "looks like a stack check",
        );
    }

    #[test]
    fn amd64_no_stack_check_is_entry() {
        // imul rax, rbx; add rax, 3; ret
        let leaf = [0x48, 0x0f, 0xaf, 0xc3, 0x48, 0x83, 0xc0, 0x03, 0xc3];
        assert_eq!(x86(&leaf).unwrap(), entry("imul rax, rbx"));
        // NOSPLIT code reading getg().m is fine: mov rax, [r14+0x30]; ret
        assert_eq!(
            x86(&[0x49, 0x8b, 0x46, 0x30, 0xc3]).unwrap(),
            entry("mov rax, [r14+0x30]")
        );
        // ... and so is a preemption request: mov qword [r14+0x10], -0x522; ret
        let store = [0x49, 0xc7, 0x46, 0x10, 0xde, 0xfa, 0xff, 0xff, 0xc3];
        assert_eq!(x86(&store).unwrap(), entry("mov [r14+0x10], -0x522"));
        // NOSPLIT assembly loading g from TLS: mov r14, fs:[-8]; xorps xmm15, xmm15; ret
        let tls = [
            0x64, 0x4c, 0x8b, 0x34, 0x25, 0xf8, 0xff, 0xff, 0xff, 0x45, 0x0f, 0x57, 0xff, 0xc3,
        ];
        assert_eq!(x86(&tls).unwrap(), entry("mov r14, fs:[-0x8]"));
        // A prefix of a NOSPLIT function that ends mid-instruction after the scan window.
        let mut long = vec![0x90; 60];
        long.extend_from_slice(&[0x48, 0x81]);
        assert_eq!(x86(&long).unwrap(), entry("nop"));
    }

    #[test]
    fn amd64_look_alikes_are_refused() {
        // cmp + je instead of jbe
        let mut code = SMALL_SHORT.to_vec();
        code[4] = 0x74;
        assert_unrecognised(x86(&code), "not `jbe`");
        // compare against another g field
        let mut code = SMALL_SHORT.to_vec();
        code[3] = 0x20;
        assert_unrecognised(x86(&code), "looks like a stack check");
        // maymorestack hook before the check: call; cmp rsp, [r14+0x10]; jbe
        let code = [&[0xe8, 0, 0, 0, 0][..], SMALL_SHORT].concat();
        assert_unrecognised(x86(&code), "looks like a stack check");
        // pre-1.17 huge frames: mov rsi, [rcx+0x10] after a TLS load of rcx
        let code = [
            &[0x64, 0x48, 0x8b, 0x0c, 0x25, 0xf8, 0xff, 0xff, 0xff][..], // mov rcx, fs:[-8]
            &[0x48, 0x8b, 0x71, 0x10],                                   // mov rsi, [rcx+0x10]
            &[0xc3],
        ]
        .concat();
        assert_unrecognised(x86(&code), "looks like a stack check");
        // lea into r12 not followed by the compare
        let code = [
            &[0x4c, 0x8d, 0x64, 0x24, 0xa0][..],
            &[0x90, 0x76, 0x06],
            &BODY,
        ]
        .concat();
        assert_unrecognised(x86(&code), "is not followed by `cmp r12");
    }

    #[test]
    fn amd64_branch_target_is_checked() {
        // The slice ends before the morestack block: target == len.
        assert_unrecognised(x86(&SMALL_SHORT[..0x0c]), "outside the function body");
        // Backwards branch.
        let mut code = SMALL_SHORT.to_vec();
        code[5] = 0xfa; // jbe 0x00
        assert_unrecognised(x86(&code), "outside the function body");
        // Forward, inside, but onto the body (`ret`) instead of a morestack block.
        let mut code = SMALL_SHORT.to_vec();
        code[5] = 0x05; // jbe 0x0b
        assert_unrecognised(x86(&code), "not part of a morestack block");
        // The block jumps somewhere other than the entry.
        let mut code = SMALL_SHORT.to_vec();
        code[0x12] = 0xee; // jmp 0x01
        assert_unrecognised(x86(&code), "not one morestack call");
        // Two calls in the block.
        let code = [
            &SMALL_SHORT[..0x0c],
            &[0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0],
            &[0xeb, 0xe8], // 16: jmp 0x0
        ]
        .concat();
        assert_unrecognised(x86(&code), "2 call(s)");
    }

    #[test]
    fn amd64_truncated_and_garbage() {
        assert!(matches!(x86(&[]), Err(PrologueError::Truncated)));
        assert!(matches!(
            x86(&SMALL_SHORT[..3]),
            Err(PrologueError::Truncated)
        ));
        assert!(matches!(
            x86(&SMALL_SHORT[..4]),
            Err(PrologueError::Truncated)
        ));
        assert!(matches!(
            x86(&SMALL_SHORT[..5]),
            Err(PrologueError::Truncated)
        ));
        // the instruction at the probe point itself must be complete
        assert!(matches!(
            x86(&SMALL_SHORT[..6]),
            Err(PrologueError::Truncated)
        ));
        let mut code = SMALL_SHORT.to_vec();
        code.splice(6..7, [0x48, 0x81]); // 06: an incomplete `sub`, then the bytes of `mov`
        assert!(matches!(x86(&code[..8]), Err(PrologueError::Truncated)));
        // huge form cut in the middle
        assert!(matches!(
            x86(&huge_frame(0x0c)[..0x0c]),
            Err(PrologueError::Truncated)
        ));
        // mov r14, fs:[-8] alone
        assert!(matches!(
            x86(&[0x64, 0x4c, 0x8b, 0x34, 0x25, 0xf8, 0xff, 0xff, 0xff]),
            Err(PrologueError::Truncated)
        ));
        // garbage
        assert!(matches!(
            x86(&[0xff, 0xff, 0xff, 0xff]),
            Err(PrologueError::Undecodable { offset: 0 })
        ));
        assert!(matches!(
            x86(&[0x06, 0x90]),
            Err(PrologueError::Undecodable { offset: 0 })
        ));
        let mut code = SMALL_SHORT.to_vec();
        code[6] = 0x06; // invalid in 64-bit mode, right at the probe point
        assert!(matches!(
            x86(&code),
            Err(PrologueError::Undecodable { offset: 6 })
        ));
        // a NOSPLIT-looking start followed by garbage inside the scan window
        assert!(matches!(
            x86(&[0x90, 0x90, 0x06, 0xc3]),
            Err(PrologueError::Undecodable { offset: 2 })
        ));
        // no panic on any 1-3 byte input
        for a in 0..=255u8 {
            for b in [0x00, 0x0f, 0x10, 0x3b, 0x66, 0x76, 0xff] {
                let _ = x86(&[a]);
                let _ = x86(&[a, b]);
                let _ = x86(&[0x49, a, b]);
                let _ = x86(&[0x49, 0x3b, 0x66, 0x10, a, b]);
            }
        }
    }

    #[test]
    fn errors_display_on_one_line() {
        let errors = [
            PrologueError::Truncated,
            PrologueError::Undecodable { offset: 6 },
            x86(&SMALL_SHORT[..0x0c]).unwrap_err(),
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
        }
        assert_eq!(
            PrologueError::Undecodable { offset: 6 }.to_string(),
            "undecodable instruction at offset 0x6 of the function"
        );
    }

    // ---- arm64 -------------------------------------------------------------

    fn a64(words: &[u32]) -> Result<ProbePoint, PrologueError> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        find_probe_point(Arch::Aarch64, &bytes)
    }

    const LDR_GUARD0: u32 = 0xf940_0b90; // ldr x16, [x28, #16]
    const LDR_GUARD1: u32 = 0xf940_0f90; // ldr x16, [x28, #24]
    const CMP_SP: u32 = 0xeb30_63ff; // cmp x16, sp
    const CMP_X17: u32 = 0xeb10_023f; // cmp x16, x17
    const STR_LR: u32 = 0xf81d_0ffe; // str x30, [sp, #-48]!
    const RET: u32 = 0xd65f_03c0;
    const MOV_X3_LR: u32 = 0xaa1e_03e3; // mov x3, x30
    const BL: u32 = 0x9400_0000; // bl .+0 (the target is not checked)
    const LS: u32 = 0b1001;
    const LO: u32 = 0b0011;

    fn b_cond(cond: u32, from: usize, to: usize) -> u32 {
        let words = (to as i64 - from as i64) / 4;
        0x5400_0000 | (((words as u32) & 0x7_ffff) << 5) | cond
    }

    fn b(from: usize, to: usize) -> u32 {
        let words = (to as i64 - from as i64) / 4;
        0x1400_0000 | ((words as u32) & 0x3ff_ffff)
    }

    /// `checks` (ending before the b.ls), then `b.ls`, a body, and the morestack
    /// block. `blo` is the index in `checks` of a `b.lo` placeholder (0).
    fn arm64_fn(checks: &[u32], blo: Option<usize>) -> Vec<u32> {
        let bls = checks.len();
        let body = [STR_LR, RET];
        let tail = (bls + 1 + body.len()) * 4;
        let mut words = checks.to_vec();
        if let Some(i) = blo {
            words[i] = b_cond(LO, i * 4, tail);
        }
        words.push(b_cond(LS, bls * 4, tail));
        words.extend_from_slice(&body);
        words.extend_from_slice(&[MOV_X3_LR, BL]);
        words.push(b(words.len() * 4, 0));
        words
    }

    fn arm64_after(offset: u64) -> ProbePoint {
        after(offset, "str x30, [sp, #-48]!")
    }

    #[test]
    fn arm64_small_frame() {
        assert_eq!(
            a64(&arm64_fn(&[LDR_GUARD0, CMP_SP], None)).unwrap(),
            arm64_after(12)
        );
        assert_eq!(
            a64(&arm64_fn(&[LDR_GUARD1, CMP_SP], None)).unwrap(),
            arm64_after(12)
        );
    }

    #[test]
    fn arm64_large_frame() {
        let sub = 0xd101_83f1; // sub x17, sp, #96
        assert_eq!(
            a64(&arm64_fn(&[LDR_GUARD0, sub, CMP_X17], None)).unwrap(),
            arm64_after(16)
        );
        assert_unrecognised(
            a64(&arm64_fn(&[LDR_GUARD0, sub, CMP_SP], None)),
            "not followed by `cmp x16, x17`",
        );
    }

    #[test]
    fn arm64_huge_frame() {
        let movz = 0xd283_da1b; // movz x27, #7888
        let movk = 0xf2a0_003b; // movk x27, #1, lsl #16
        let subs = 0xeb3b_63f1; // subs x17, sp, x27
        let subs_imm = 0xf140_0bf1; // subs x17, sp, #2, lsl #12
        let p = arm64_fn(&[LDR_GUARD0, movz, subs, 0, CMP_X17], Some(3));
        assert_eq!(a64(&p).unwrap(), arm64_after(24));
        let p = arm64_fn(&[LDR_GUARD0, movz, movk, subs, 0, CMP_X17], Some(4));
        assert_eq!(a64(&p).unwrap(), arm64_after(28));
        let p = arm64_fn(&[LDR_GUARD0, subs_imm, 0, CMP_X17], Some(2));
        assert_eq!(a64(&p).unwrap(), arm64_after(20));
        // b.lo to a different place than b.ls
        let mut p = arm64_fn(&[LDR_GUARD0, movz, subs, 0, CMP_X17], Some(3));
        p[3] = b_cond(LO, 12, 20);
        assert_unrecognised(a64(&p), "underflow");
        // b.hs instead of b.lo
        let mut p = arm64_fn(&[LDR_GUARD0, movz, subs, 0, CMP_X17], Some(3));
        p[3] ^= 1;
        assert_unrecognised(a64(&p), "b.lo; cmp x16, x17");
        // movz not followed by subs
        let p = arm64_fn(&[LDR_GUARD0, movz, CMP_X17], None);
        assert_unrecognised(a64(&p), "subs x17, sp, x27");
    }

    #[test]
    fn arm64_no_stack_check_is_entry() {
        // mul x1, x0, x1; add x0, x1, #3; ret
        let leaf = [0x9b01_7c01, 0x9100_0c20, RET];
        assert_eq!(a64(&leaf).unwrap(), entry(".inst 0x9b017c01"));
        assert_eq!(a64(&[STR_LR, RET]).unwrap(), entry("str x30, [sp, #-48]!"));
    }

    #[test]
    fn arm64_look_alikes_are_refused() {
        // b.lo instead of b.ls
        let mut p = arm64_fn(&[LDR_GUARD0, CMP_SP], None);
        p[2] = (p[2] & !0xf) | LO;
        assert_unrecognised(a64(&p), "not `b.ls`");
        // stackguard loaded into another register / later on
        assert_unrecognised(a64(&[0xf940_0b81, CMP_SP, RET]), "looks like a stack check");
        assert_unrecognised(
            a64(&[STR_LR, LDR_GUARD0, CMP_SP, RET]),
            "looks like a stack check",
        );
        // ldr of the guard followed by something else
        assert_unrecognised(
            a64(&[LDR_GUARD0, STR_LR, RET]),
            "not a known stack-check compare",
        );
    }

    #[test]
    fn arm64_branch_target_is_checked() {
        let p = arm64_fn(&[LDR_GUARD0, CMP_SP], None);
        // cut before the morestack block
        assert_unrecognised(a64(&p[..5]), "outside the function body");
        // backwards
        let mut q = p.clone();
        q[2] = b_cond(LS, 8, 0);
        assert_unrecognised(a64(&q), "outside the function body");
        // onto the `ret` of the body
        let mut q = p.clone();
        q[2] = b_cond(LS, 8, 16);
        assert_unrecognised(a64(&q), "not part of a morestack block");
        // block branching elsewhere than the entry
        let mut q = p.clone();
        let last = q.len() - 1;
        q[last] = b(last * 4, 4);
        assert_unrecognised(a64(&q), "not one morestack call");
        // no call in the block
        let mut q = p.clone();
        q[last - 1] = MOV_X3_LR;
        assert_unrecognised(a64(&q), "0 call(s)");
    }

    #[test]
    fn arm64_truncated_and_garbage() {
        let p: Vec<u8> = arm64_fn(&[LDR_GUARD0, CMP_SP], None)
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        for len in [0, 1, 3, 4, 7, 8, 11, 12, 15] {
            assert!(
                matches!(
                    find_probe_point(Arch::Aarch64, &p[..len]),
                    Err(PrologueError::Truncated)
                ),
                "len {len}"
            );
        }
        assert!(matches!(
            a64(&[0, RET]),
            Err(PrologueError::Undecodable { offset: 0 })
        ));
        // a NOSPLIT prefix that ends mid-word inside the scan window
        assert!(matches!(
            find_probe_point(Arch::Aarch64, &[0x1f, 0x20, 0x03, 0xd5, 0x00]),
            Err(PrologueError::Truncated)
        ));
        for w in [0u32, 0xffff_ffff, 0x5400_0009, 0x1400_0000, 0x9400_0000] {
            let _ = a64(&[LDR_GUARD0, CMP_SP, w, w]);
            let _ = a64(&[w, w]);
        }
    }

    #[test]
    fn arm64_formatting() {
        use arm64::format_insn as f;
        assert_eq!(f(STR_LR), "str x30, [sp, #-48]!");
        assert_eq!(f(0xa9bf_7bfd), "stp x29, x30, [sp, #-16]!");
        assert_eq!(f(0xd110_03f4), "sub x20, sp, #1024");
        assert_eq!(f(LDR_GUARD0), "ldr x16, [x28, #16]");
        assert_eq!(f(0xf81f_83fd), ".inst 0xf81f83fd"); // stur: not rendered
        assert_eq!(f(MOV_X3_LR), "mov x3, x30");
        assert_eq!(f(b_cond(LS, 8, 108)), "b.ls .+0x64");
    }

    // ---- real Go binaries ----------------------------------------------------

    /// Tests on functions compiled by real Go toolchains, cross-checked with
    /// `go tool objdump`. Toolchains: as `testutil` finds them
    /// (`GOALLOC_GO_TOOLCHAINS`, else those `cargo xtask setup` installs).
    mod real {
        use super::super::*;
        use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
        use std::collections::{BTreeMap, HashMap};
        use std::path::{Path, PathBuf};
        use testutil::{Toolchain, go_command};

        const PROGRAM: &str = r#"package main

import (
	"fmt"
	"os"
)

type T struct {
	a, b int
	p    *int
}

//go:noinline
func frame200() int {
	var buf [200]byte
	for i := range buf {
		buf[i] = byte(i + len(os.Args))
	}
	return int(buf[len(os.Args)])
}

//go:noinline
func frame1000() int {
	var buf [1000]byte
	for i := range buf {
		buf[i] = byte(i + len(os.Args))
	}
	return int(buf[len(os.Args)])
}

//go:noinline
func frame8000() int {
	var buf [8000]byte
	for i := range buf {
		buf[i] = byte(i + len(os.Args))
	}
	return int(buf[len(os.Args)])
}

//go:noinline
func frame100k() int {
	var buf [100000]byte
	for i := range buf {
		buf[i] = byte(i + len(os.Args))
	}
	return int(buf[len(os.Args)])
}

//go:noinline
func leaf(a, b int) int { return a*b + 3 }

var sink []any

func main() {
	for i := 0; i < 100; i++ {
		sink = append(sink, new(T), make([]byte, i*100), &[2]int{i, i}, fmt.Sprint(i))
	}
	done := make(chan int)
	go func() { done <- frame200() + frame1000() + frame8000() + frame100k() }()
	fmt.Println(len(sink), <-done, leaf(len(os.Args), 3))
}
"#;

        fn toolchains() -> &'static [Toolchain] {
            testutil::toolchains_or_panic()
        }

        /// Builds PROGRAM for `goarch` (with extra `go build` flags) into `dir`.
        fn build(tc: &Toolchain, goarch: &str, flags: &[&str], dir: &Path) -> PathBuf {
            let src = dir.join("main.go");
            std::fs::write(&src, PROGRAM).unwrap();
            let bin = dir.join(format!("prog-{}-{goarch}{}", tc.goversion, flags.join("")));
            let out = go_command(&tc.go)
                .current_dir(dir)
                .env("CGO_ENABLED", "0")
                .env("GOARCH", goarch)
                .env("GOOS", "linux")
                .arg("build")
                .args(flags)
                .arg("-o")
                .arg(&bin)
                .arg("main.go")
                .output()
                .expect("run go build");
            assert!(
                out.status.success(),
                "{} build for {goarch} failed: {}",
                tc.goversion,
                String::from_utf8_lossy(&out.stderr)
            );
            bin
        }

        struct Binary {
            arch: Arch,
            /// name -> (address, code); the biggest body when a name repeats.
            funcs: BTreeMap<String, (u64, Vec<u8>)>,
        }

        fn load(bin: &Path) -> Binary {
            let data = std::fs::read(bin).unwrap();
            let file = object::File::parse(&*data).unwrap();
            let arch = match file.architecture() {
                object::Architecture::X86_64 => Arch::X86_64,
                object::Architecture::Aarch64 => Arch::Aarch64,
                other => panic!("unexpected architecture {other:?}"),
            };
            let mut funcs: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
            for sym in file.symbols() {
                if sym.kind() != SymbolKind::Text || sym.size() == 0 {
                    continue;
                }
                let (Ok(name), Some(index)) = (sym.name(), sym.section_index()) else {
                    continue;
                };
                let section = file.section_by_index(index).unwrap();
                let Some(code) = section.data_range(sym.address(), sym.size()).unwrap() else {
                    continue;
                };
                if funcs
                    .get(name)
                    .is_none_or(|(_, old)| old.len() < code.len())
                {
                    funcs.insert(name.to_string(), (sym.address(), code.to_vec()));
                }
            }
            assert!(funcs.len() > 100, "{}: no symbols", bin.display());
            Binary { arch, funcs }
        }

        /// `go tool objdump` of the functions matching `regex`: name -> [(address, assembly)].
        fn objdump(
            tc: &Toolchain,
            bin: &Path,
            regex: Option<&str>,
        ) -> HashMap<String, Vec<(u64, String)>> {
            let mut cmd = go_command(&tc.go);
            cmd.args(["tool", "objdump"]);
            if let Some(regex) = regex {
                cmd.args(["-s", regex]);
            }
            let out = cmd.arg(bin).output().expect("run go tool objdump");
            assert!(
                out.status.success(),
                "objdump failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut result: HashMap<String, Vec<(u64, String)>> = HashMap::new();
            let mut current: Option<String> = None;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(rest) = line.strip_prefix("TEXT ") {
                    let name = rest.split("(SB)").next().unwrap().to_string();
                    result.entry(name.clone()).or_default();
                    current = Some(name);
                    continue;
                }
                let fields: Vec<&str> = line
                    .split('\t')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .collect();
                let (Some(name), [_, addr, _, asm, ..]) = (&current, fields.as_slice()) else {
                    continue;
                };
                let Some(addr) = addr
                    .strip_prefix("0x")
                    .and_then(|a| u64::from_str_radix(a, 16).ok())
                else {
                    continue;
                };
                result.get_mut(name).unwrap().push((addr, asm.to_string()));
            }
            result
        }

        /// The probe point must be a listed instruction right after the stack-check
        /// branch (JBE / BLS), and the instruction before the branch a compare.
        fn check_against_objdump(
            name: &str,
            arch: Arch,
            addr: u64,
            probe: &ProbePoint,
            listing: &[(u64, String)],
        ) {
            let at = addr + probe.offset;
            let index = listing
                .iter()
                .position(|(a, _)| *a == at)
                .unwrap_or_else(|| panic!("{name}: probe {at:#x} (+{:#x}) is not an instruction in objdump: {listing:?}", probe.offset));
            match probe.placement {
                Placement::Entry => {
                    assert_eq!(index, 0, "{name}");
                    assert_eq!(listing[0].0, addr, "{name}");
                }
                Placement::AfterStackCheck => {
                    assert!(index >= 2, "{name}: probe too early");
                    let (branch, cmp) = match arch {
                        Arch::X86_64 => ("JBE ", "CMPQ "),
                        Arch::Aarch64 => ("BLS ", "CMP "),
                    };
                    let before = &listing[index - 1].1;
                    assert!(
                        before.starts_with(branch),
                        "{name}: probe at +{:#x} follows `{before}`",
                        probe.offset
                    );
                    let compare = &listing[index - 2].1;
                    assert!(
                        compare.starts_with(cmp),
                        "{name}: branch follows `{compare}`"
                    );
                }
            }
        }

        fn probe(bin: &Binary, name: &str) -> (u64, Result<ProbePoint, PrologueError>) {
            let (addr, code) = bin
                .funcs
                .get(name)
                .unwrap_or_else(|| panic!("{name} not in the binary"));
            (*addr, find_probe_point(bin.arch, code))
        }

        #[test]
        fn real_functions_match_objdump() {
            let dir = tempfile::tempdir().unwrap();
            let mut checked = 0;
            for tc in toolchains() {
                let mut builds = vec![("amd64", vec![]), ("arm64", vec![])];
                builds.push(("amd64", vec!["-buildmode=pie"]));
                for (goarch, flags) in builds {
                    let bin_path = build(tc, goarch, &flags, dir.path());
                    let bin = load(&bin_path);
                    let mut expect_after: Vec<String> = ["runtime.mallocgc", "runtime.newproc1"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    let exits: Vec<&str> = ["runtime.gdestroy", "runtime.goexit0"]
                        .into_iter()
                        .filter(|n| bin.funcs.contains_key(*n))
                        .collect();
                    assert!(
                        !exits.is_empty(),
                        "{}: neither gdestroy nor goexit0",
                        tc.goversion
                    );
                    expect_after.extend(exits.iter().map(|s| s.to_string()));
                    expect_after.extend(
                        bin.funcs
                            .keys()
                            .filter(|n| {
                                n.strip_prefix("runtime.mallocgc")
                                    .is_some_and(|rest| !rest.contains('.'))
                            })
                            .cloned(),
                    );
                    expect_after.extend(
                        [
                            "main.frame200",
                            "main.frame1000",
                            "main.frame8000",
                            "main.frame100k",
                        ]
                        .map(String::from),
                    );
                    // ABI0 assembly with a stack check: g comes from TLS first.
                    // (its ELF symbol has no package prefix)
                    if goarch == "amd64" {
                        assert!(
                            bin.funcs.contains_key("debugCall1024"),
                            "{}: no debugCall1024",
                            tc.goversion
                        );
                        expect_after.push("debugCall1024".into());
                    }
                    expect_after.sort();
                    expect_after.dedup();
                    let regex = format!(
                        "^({}|main\\.leaf)$",
                        expect_after
                            .iter()
                            .map(|n| n.replace('.', "\\."))
                            .collect::<Vec<_>>()
                            .join("|")
                    );
                    let listings = objdump(tc, &bin_path, Some(&regex));
                    for name in &expect_after {
                        let (addr, result) = probe(&bin, name);
                        let point = result.unwrap_or_else(|e| {
                            panic!("{} {goarch}{flags:?} {name}: {e}", tc.goversion)
                        });
                        assert_eq!(
                            point.placement,
                            Placement::AfterStackCheck,
                            "{} {goarch} {name}: {point:?}",
                            tc.goversion
                        );
                        let listing = listings
                            .get(name)
                            .unwrap_or_else(|| panic!("{name} not in objdump output"));
                        check_against_objdump(name, bin.arch, addr, &point, listing);
                        eprintln!(
                            "{} {goarch}{flags:?} {name}: +{:#x} `{}`",
                            tc.goversion, point.offset, point.instruction
                        );
                        checked += 1;
                    }
                    let (addr, leaf) = probe(&bin, "main.leaf");
                    let leaf = leaf.unwrap();
                    assert_eq!(
                        leaf.placement,
                        Placement::Entry,
                        "{} {goarch} main.leaf",
                        tc.goversion
                    );
                    check_against_objdump(
                        "main.leaf",
                        bin.arch,
                        addr,
                        &leaf,
                        &listings["main.leaf"],
                    );
                }
            }
            eprintln!("checked {checked} functions against objdump");
        }

        /// Every `runtime.*` function of a Go 1.27 binary (and of the other
        /// toolchains found): a probe point or a clean error, never a panic; every
        /// probe point agrees with objdump, and exactly the functions that call
        /// morestack are found to have a stack check.
        #[test]
        fn every_runtime_function_of_go_1_27() {
            let tcs = toolchains();
            assert!(
                tcs.iter().any(|tc| tc.version[..2] == [1, 27]),
                "no Go 1.27 toolchain among {:?}: add one to GOALLOC_GO_TOOLCHAINS",
                tcs.iter().map(|t| &t.goversion).collect::<Vec<_>>()
            );
            let dir = tempfile::tempdir().unwrap();
            for (tc, goarch) in tcs.iter().flat_map(|tc| [(tc, "amd64"), (tc, "arm64")]) {
                let bin_path = build(tc, goarch, &[], dir.path());
                let bin = load(&bin_path);
                let listings = objdump(tc, &bin_path, None);
                let (mut after, mut entry, mut unrecognised, mut other) = (0, 0, 0, 0);
                let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (name, (addr, code)) in
                    bin.funcs.iter().filter(|(n, _)| n.starts_with("runtime."))
                {
                    let result = std::panic::catch_unwind(|| find_probe_point(bin.arch, code))
                        .unwrap_or_else(|_| panic!("{goarch} {name}: find_probe_point panicked"));
                    let listing = listings
                        .get(name.as_str())
                        .unwrap_or_else(|| panic!("{name} not in objdump output"));
                    let calls_morestack = listing
                        .iter()
                        .any(|(_, asm)| asm.starts_with("CALL runtime.morestack"));
                    if let Ok(point) = &result {
                        assert_eq!(
                            point.placement == Placement::AfterStackCheck,
                            calls_morestack,
                            "{} {goarch} {name}: {point:?}, but objdump {} a morestack call",
                            tc.goversion,
                            if calls_morestack { "shows" } else { "shows no" }
                        );
                    }
                    match result {
                        Ok(point) => {
                            check_against_objdump(name, bin.arch, *addr, &point, listing);
                            match point.placement {
                                Placement::AfterStackCheck => after += 1,
                                Placement::Entry => {
                                    // objdump's view of the first instructions shows no stack check either
                                    for (_, asm) in listing.iter().take(4) {
                                        for sign in [
                                            "0x10(R14)",
                                            "0x18(R14)",
                                            "16(R28)",
                                            "24(R28)",
                                            "CALL runtime.morestack",
                                        ] {
                                            assert!(
                                                !asm.contains(sign),
                                                "{} {goarch} {name}: Entry, but objdump shows `{asm}`",
                                                tc.goversion
                                            );
                                        }
                                    }
                                    entry += 1
                                }
                            }
                        }
                        Err(PrologueError::Unrecognised { reason }) => {
                            unrecognised += 1;
                            reasons.entry(reason).or_default().push(name.clone());
                        }
                        Err(e) => {
                            other += 1;
                            reasons.entry(e.to_string()).or_default().push(name.clone());
                        }
                    }
                }
                let total = after + entry + unrecognised + other;
                println!(
                    "{} {goarch}: {total} runtime functions: {after} AfterStackCheck, {entry} Entry, {unrecognised} Unrecognised, {other} other errors",
                    tc.goversion
                );
                for (reason, names) in &reasons {
                    println!(
                        "  {} x {reason}  (e.g. {})",
                        names.len(),
                        names.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
                    );
                }
                assert!(total > 1000, "too few runtime functions: {total}");
                assert!(
                    after > total / 2,
                    "{goarch}: only {after} of {total} functions got AfterStackCheck"
                );
                assert!(bin.funcs.contains_key("runtime.mallocgc"));
            }
        }
    }
}
