//! Moving a probe from a single-stepped instruction to an emulated one
//! further in the same straight-line block (amd64, Go's register ABI).
//!
//! The kernel emulates a few instructions at a uprobe (`push reg`, the
//! one-byte `nop`, direct `jmp`/`jcc`/`call`): one trap per hit. Everything
//! else is single-stepped out of line: a second trap, ~15x the cost. From Go
//! 1.21 the instruction after the stack check is `push rbp` (emulated); in Go
//! 1.17-1.20 it is `sub rsp, N` (stepped), and Go 1.19's `mallocgc` goes on
//! `sub rsp, N; mov [rsp+N-8], rbp; lea rbp, [rsp+N-8]; cmp dword [gcphase], 2;
//! nop; je ...`: the `nop` is emulated, runs once per call, and the
//! arguments are still where they were at the entry.
//!
//! [`find_emulated`] walks from the probe point after the stack check, one
//! decoded instruction at a time, and accepts only instructions it
//! understands completely, none of which writes an argument register (RAX
//! size, RBX typ, RCX needzero), `g` (R14) or the return-address slot:
//! - `sub rsp, imm`: the stack pointer moves down (tracked: the return
//!   address is then at `[rsp + moved]`);
//! - `mov [rsp+d], reg`: a store below the return address (the frame) or
//!   above it (the argument spill slots);
//! - `lea rbp, [rsp+d]`: the frame pointer;
//! - `cmp` of memory or a register with an immediate: flags only.
//!
//! It stops at the first emulated instruction and checks that no direct
//! branch of the function lands between the start and that instruction, so
//! it runs exactly once per call. Anything else is a refusal with its reason,
//! and the caller keeps the original site. Never a guess.

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, OpKind, Register};

use crate::{
    binary::Arch,
    prologue::{format_amd64, kernel_emulates},
};

/// Longest run of instructions walked past.
const MAX_WALK: usize = 8;

/// An emulated site further in the block, and where things are there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedSite {
    /// Offset from the function's first byte; a decoded instruction boundary.
    pub offset: u64,
    /// The emulated instruction at `offset`.
    pub instruction: String,
    /// Bytes the stack pointer moved down between the original site and
    /// this one: the return address is at `[rsp + stack_moved]`.
    pub stack_moved: u32,
    /// The frame pointer points at this function's own frame record
    /// ({saved frame pointer, return address}) at the site: the walk passed
    /// both `mov [rsp+moved-8], rbp` and `lea rbp, [rsp+moved-8]`.
    pub frame_set: bool,
    /// The instructions walked past, for `goalloc inspect`.
    pub skipped: Vec<String>,
}

/// What the walk knows after each instruction.
#[derive(Debug, Default, Clone, Copy)]
struct Walk {
    /// Bytes the stack pointer moved down.
    moved: u64,
    /// `[rsp+d]` where the caller's frame pointer was saved (d = moved - 8).
    saved_fp: bool,
    /// The frame pointer was set to the frame record (a `lea rbp` after the
    /// save, at the same slot).
    frame_set: bool,
}

/// Why the probe stays at the original site.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse(reason: impl Into<String>) -> Refusal {
    Refusal(reason.into())
}

fn text(insn: &Instruction) -> String {
    format_amd64(insn)
}

/// Finds the first emulated instruction at or after `start` in the function
/// `code` (the whole function, from its entry). `start` is the original
/// probe point, just after the stack check (runs once per call).
pub fn find_emulated(arch: Arch, code: &[u8], start: u64) -> Result<EmulatedSite, Refusal> {
    let mut walk = Walk::default();
    let (offset, instruction, skipped) = walk_to_emulated(arch, code, start, MAX_WALK, |insn| {
        walk = walk_past(insn, walk)?;
        Ok(())
    })?;
    Ok(EmulatedSite {
        offset,
        instruction,
        stack_moved: u32::try_from(walk.moved)
            .map_err(|_| refuse("the stack moved by more than 4 GiB"))?,
        frame_set: walk.frame_set,
        skipped,
    })
}

/// Longest run of instructions walked past by [`find_emulated_counting`].
const MAX_COUNTING_WALK: usize = 24;

/// Like [`find_emulated`], for a probe that reads nothing at its site (it
/// only counts the hit): any instruction that always falls through to the
/// next may be passed, whatever it writes. Still exactly once per call:
/// straight-line from `start`, and no branch of the function lands in
/// between.
pub fn find_emulated_counting(
    arch: Arch,
    code: &[u8],
    start: u64,
) -> Result<EmulatedSite, Refusal> {
    let (offset, instruction, skipped) =
        walk_to_emulated(arch, code, start, MAX_COUNTING_WALK, |insn| {
            if insn.flow_control() != FlowControl::Next {
                return Err(refuse(format!(
                    "`{}` at +{:#x} does not fall through",
                    text(insn),
                    insn.ip()
                )));
            }
            Ok(())
        })?;
    Ok(EmulatedSite {
        offset,
        instruction,
        // Nothing is read at the site: where the stack and frame are does
        // not matter.
        stack_moved: 0,
        frame_set: false,
        skipped,
    })
}

/// Decodes from `start` up to `limit` instructions, handing each one that
/// the kernel does not emulate to `pass` (which refuses what it cannot
/// walk past), and stops at the first emulated one, provided no branch of
/// the function lands in between. Returns its offset, its text and the
/// texts of the instructions passed.
fn walk_to_emulated(
    arch: Arch,
    code: &[u8],
    start: u64,
    limit: usize,
    mut pass: impl FnMut(&Instruction) -> Result<(), Refusal>,
) -> Result<(u64, String, Vec<String>), Refusal> {
    if arch != Arch::X86_64 {
        return Err(refuse("only amd64 sites are moved"));
    }
    let tail = code
        .get(start as usize..)
        .ok_or_else(|| refuse("the site is past the end of the function"))?;
    let mut decoder = Decoder::with_ip(64, tail, start, DecoderOptions::NONE);
    let mut skipped = Vec::new();
    let mut insn = Instruction::default();
    for _ in 0..limit {
        if !decoder.can_decode() {
            return Err(refuse("the function ends before an emulated instruction"));
        }
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            return Err(refuse(format!("undecodable bytes at +{:#x}", insn.ip())));
        }
        let at = insn.ip() as usize;
        let bytes = &code[at..at + insn.len()];
        if kernel_emulates(arch, bytes) {
            check_no_branch_into(code, start, insn.ip())?;
            return Ok((insn.ip(), text(&insn), skipped));
        }
        pass(&insn)?;
        skipped.push(text(&insn));
    }
    Err(refuse(format!(
        "no emulated instruction in the {limit} instructions after the stack check"
    )))
}

/// Accepts one instruction the walk may pass, returning what is known after
/// it (how far the stack pointer moved down, the frame pointer); refuses
/// anything not fully understood.
fn walk_past(insn: &Instruction, walk: Walk) -> Result<Walk, Refusal> {
    let moved = walk.moved;
    let what = || format!("`{}` at +{:#x}", text(insn), insn.ip());
    let rsp_relative = |i: &Instruction| {
        i.memory_base() == Register::RSP
            && i.memory_index() == Register::None
            && i.segment_prefix() == Register::None
    };
    match insn.code() {
        Code::Sub_rm64_imm8 | Code::Sub_rm64_imm32
            if insn.op0_kind() == OpKind::Register && insn.op0_register() == Register::RSP =>
        {
            let imm = insn.immediate(1) as i64;
            if imm <= 0 || imm > 1 << 20 {
                return Err(refuse(format!("{}: not a frame allocation", what())));
            }
            if walk.saved_fp {
                return Err(refuse(format!(
                    "{}: the stack moves after the frame was set up",
                    what()
                )));
            }
            Ok(Walk {
                moved: moved + imm as u64,
                ..walk
            })
        }
        Code::Mov_rm64_r64 if insn.op0_kind() == OpKind::Memory && rsp_relative(insn) => {
            // The return address is at [rsp + moved]: a store must end below
            // it (the frame) or start above it (the spill slots the caller
            // reserved for the register arguments, Go's ABIInternal; the
            // registers themselves still hold the arguments).
            let disp = insn.memory_displacement64() as i64;
            let moved = moved as i64;
            if disp < 0 || (disp + 8 > moved && disp < moved + 8) {
                return Err(refuse(format!(
                    "{}: a store that may reach the return address",
                    what()
                )));
            }
            let saves_fp = insn.op1_register() == Register::RBP && disp + 8 == moved;
            Ok(Walk {
                saved_fp: walk.saved_fp || saves_fp,
                ..walk
            })
        }
        Code::Lea_r64_m if insn.op0_register() == Register::RBP && rsp_relative(insn) => {
            // Stacks are walked from the frame pointer: it must point at the
            // saved one, next to the return address.
            let disp = insn.memory_displacement64() as i64;
            if !walk.saved_fp || disp + 8 != moved as i64 {
                return Err(refuse(format!(
                    "{}: the frame pointer is not set to the frame record",
                    what()
                )));
            }
            Ok(Walk {
                frame_set: true,
                ..walk
            })
        }
        Code::Cmp_rm32_imm8
        | Code::Cmp_rm32_imm32
        | Code::Cmp_rm64_imm8
        | Code::Cmp_rm64_imm32
        | Code::Cmp_rm8_imm8 => {
            // Flags only: a memory operand is read, never written. A
            // register operand is harmless too, but not a prologue shape
            // seen: keep the accepted shapes few.
            if insn.op0_kind() != OpKind::Memory {
                return Err(refuse(format!("{}: not a known prologue shape", what())));
            }
            Ok(walk)
        }
        _ => Err(refuse(format!(
            "{}: not an instruction the walk understands",
            what()
        ))),
    }
}

/// Refuses when a direct branch anywhere in the function lands after
/// `start` and at or before `site`: the site would then run more than once
/// per call (or without the instructions walked past).
fn check_no_branch_into(code: &[u8], start: u64, site: u64) -> Result<(), Refusal> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            continue;
        }
        if matches!(insn.op0_kind(), OpKind::NearBranch64) {
            let target = insn.near_branch64();
            if target > start && target <= site {
                return Err(refuse(format!(
                    "`{}` at +{:#x} branches into the block at +{target:#x}",
                    text(&insn),
                    insn.ip()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go 1.19's `mallocgc` prologue, as Debian's toolchain emits it.
    fn go119_mallocgc() -> Vec<u8> {
        let mut code = vec![
            0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
            0x0f, 0x86, 0x00, 0x00, 0x00, 0x00, // jbe (patched)
            0x48, 0x83, 0xec, 0x78, // sub rsp, 0x78
            0x48, 0x89, 0x6c, 0x24, 0x70, // mov [rsp+0x70], rbp
            0x48, 0x8d, 0x6c, 0x24, 0x70, // lea rbp, [rsp+0x70]
            0x83, 0x3d, 0x00, 0x10, 0x00, 0x00, 0x02, // cmp dword [rip+0x1000], 2
            0x90, // nop
            0x74, 0x02, // je +2
            0xc3, 0xc3, // ret; ret
        ];
        let len = code.len() as i32;
        code[6..10].copy_from_slice(&(len - 10).to_le_bytes());
        code
    }

    #[test]
    fn go119_mallocgc_moves_to_the_nop() {
        let code = go119_mallocgc();
        let site = find_emulated(Arch::X86_64, &code, 10).unwrap();
        assert_eq!(site.offset, 31);
        assert_eq!(site.instruction, "nop");
        assert_eq!(site.stack_moved, 0x78);
        assert!(site.frame_set);
        assert_eq!(site.skipped.len(), 4, "{:?}", site.skipped);
    }

    #[test]
    fn an_emulated_start_stays() {
        let code = [0x55, 0x48, 0x89, 0xe5, 0xc3];
        let site = find_emulated(Arch::X86_64, &code, 0).unwrap();
        assert_eq!((site.offset, site.stack_moved), (0, 0));
        assert!(!site.frame_set);
    }

    #[test]
    fn counting_probes_pass_any_straight_line() {
        // sub rsp; mov [rsp+8], rbp; lea rbp; mov rdx, [r14+0x30]; test rax, rax; je
        let code = [
            0x48, 0x83, 0xec, 0x18, 0x48, 0x89, 0x6c, 0x24, 0x10, 0x48, 0x8d, 0x6c, 0x24, 0x10,
            0x49, 0x8b, 0x56, 0x30, 0x48, 0x85, 0xc0, 0x74, 0x00, 0xc3,
        ];
        let site = find_emulated_counting(Arch::X86_64, &code, 0).unwrap();
        assert_eq!((site.offset, site.skipped.len()), (21, 5), "{site:?}");
        assert!(site.instruction.starts_with("je"), "{site:?}");
        // The argument walk refuses the same code.
        assert!(find_emulated(Arch::X86_64, &code, 0).is_err());
        // A call on the way: refused (control leaves the block).
        let code = [0x48, 0x83, 0xec, 0x18, 0xff, 0xd0, 0x90];
        let e = find_emulated_counting(Arch::X86_64, &code, 0).unwrap_err();
        assert!(e.0.contains("does not fall through"), "{e}");
        // A branch into the block.
        let code = [0x48, 0x83, 0xec, 0x18, 0x48, 0x85, 0xc0, 0x90, 0xeb, 0xf9];
        let e = find_emulated_counting(Arch::X86_64, &code, 0).unwrap_err();
        assert!(e.0.contains("branches into"), "{e}");
    }

    #[test]
    fn refusals() {
        // An argument register written on the way.
        let code = [0x48, 0x83, 0xec, 0x18, 0x48, 0x89, 0xd8, 0x90];
        let e = find_emulated(Arch::X86_64, &code, 0).unwrap_err();
        assert!(e.0.contains("mov rax, rbx"), "{e}");
        // A store over the return address.
        let code = [0x48, 0x83, 0xec, 0x18, 0x48, 0x89, 0x6c, 0x24, 0x18, 0x90];
        let e = find_emulated(Arch::X86_64, &code, 0).unwrap_err();
        assert!(e.0.contains("return address"), "{e}");
        let code = [0x48, 0x83, 0xec, 0x18, 0x48, 0x89, 0x6c, 0x24, 0x14, 0x90];
        assert!(find_emulated(Arch::X86_64, &code, 0).is_err());
        // A spill of an argument above it is fine.
        let code = [0x48, 0x83, 0xec, 0x18, 0x48, 0x89, 0x44, 0x24, 0x20, 0x90];
        assert_eq!(find_emulated(Arch::X86_64, &code, 0).unwrap().offset, 9);
        // The frame pointer set elsewhere than the frame record.
        let code = [
            0x48, 0x83, 0xec, 0x18, // sub rsp, 0x18
            0x48, 0x89, 0x6c, 0x24, 0x10, // mov [rsp+0x10], rbp
            0x48, 0x8d, 0x6c, 0x24, 0x08, // lea rbp, [rsp+0x8]
            0x90,
        ];
        let e = find_emulated(Arch::X86_64, &code, 0).unwrap_err();
        assert!(e.0.contains("frame record"), "{e}");
        // ... or without saving the caller's.
        let code = [0x48, 0x83, 0xec, 0x18, 0x48, 0x8d, 0x6c, 0x24, 0x10, 0x90];
        assert!(find_emulated(Arch::X86_64, &code, 0).is_err());
        // A branch into the block.
        let mut code = go119_mallocgc();
        code.extend([0xeb, (31i8 - (code.len() as i8 + 2)) as u8]); // jmp to the nop
        let e = find_emulated(Arch::X86_64, &code, 10).unwrap_err();
        assert!(e.0.contains("branches into"), "{e}");
        // No emulated instruction soon enough.
        let code = [0x48, 0x83, 0xec, 0x18].repeat(9);
        assert!(find_emulated(Arch::X86_64, &code, 0).is_err());
        assert!(find_emulated(Arch::Aarch64, &code, 0).is_err());
    }
}
