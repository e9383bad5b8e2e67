//! Finding the runtime globals goalloc reads: `runtime.memstats`,
//! `runtime.gcController`, `runtime.allglen`, `runtime.allgptr` and
//! `runtime.sched`, as link-time addresses.
//!
//! From `.symtab` data symbols where the binary has them; otherwise from
//! instruction anchors: runtime functions (found by name through pclntab,
//! which stripping keeps) that take the global's address RIP-relative in a
//! recognisable shape. Each anchor is checked against the symbols on every
//! unstripped fixture of the matrix. An anchor whose shape is not found is an
//! error naming it ([`LocateError::AnchorNotFound`]), never a guess; several
//! matches that disagree are an error too.
//!
//! Anchors (amd64; verified on Go 1.19, 1.21-1.27):
//! - `runtime.(*mcache).refill`: `LEAQ X(IP), AX` as the last write of AX
//!   before `CALL runtime.(*consistentHeapStats).acquire`: X =
//!   `&memstats.heapStats`; before `CALL runtime.(*gcControllerState).update`:
//!   X = `&gcController`.
//! - `runtime.allgadd`: `LEAQ X(IP), AX` before `CALL runtime.atomicwb`
//!   (`atomicstorep(&allgptr, ...)`): X = `&allgptr`; the last
//!   `LEAQ X(IP), R; XCHGQ _, (R)` (`atomic.Storeuintptr(&allglen, ...)`):
//!   X = `&allglen`.
//! - `runtime.mcommoninit`: `LEAQ X(IP), AX` before the first
//!   `CALL runtime.lock2` (`lock(&sched.lock)`): X = `&sched.lock`.

use std::fmt;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use super::layout::Layout;
use crate::binary::elf::Elf;
use crate::binary::{Arch, GoBinary};

/// `STT_OBJECT`: a data symbol.
const STT_OBJECT: u8 = 1;
/// How far back from a CALL an argument's LEA may be (instructions).
const LEA_WINDOW: usize = 8;

/// How an address was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The ELF `.symtab` symbol of this name.
    Symbol(&'static str),
    /// An instruction anchor, described as "function: shape".
    Anchor(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Symbol(s) => write!(f, "symbol {s}"),
            Source::Anchor(a) => write!(f, "anchor {a}"),
        }
    }
}

/// A link-time address and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub addr: u64,
    pub source: Source,
}

/// The link-time addresses of the globals the counters come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Globals {
    /// `runtime.memstats` (`mstats`).
    pub memstats: Located,
    /// `runtime.gcController` (`gcControllerState`).
    pub gc_controller: Located,
    /// `runtime.allglen` (uintptr).
    pub allglen: Located,
    /// `runtime.allgptr` (`**g`: `&allgs[0]`, published before `allglen`).
    pub allgptr: Located,
    /// `runtime.sched` (`schedt`).
    pub sched: Located,
}

impl Globals {
    /// (Go name, location) of each global, for reports.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Located)> {
        [
            ("runtime.memstats", &self.memstats),
            ("runtime.gcController", &self.gc_controller),
            ("runtime.allglen", &self.allglen),
            ("runtime.allgptr", &self.allgptr),
            ("runtime.sched", &self.sched),
        ]
        .into_iter()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    /// A function an anchor lives in is not in the binary.
    #[error("runtime function {0} not found (needed to locate the runtime's counters)")]
    FunctionNotFound(&'static str),
    /// The instruction shape was not found: this toolchain compiles the
    /// function differently; refusing to guess.
    #[error("instruction anchor not found: {0}")]
    AnchorNotFound(&'static str),
    /// The shape occurs several times with different addresses.
    #[error("instruction anchor {anchor} is ambiguous: {first:#x} vs {second:#x}")]
    AnchorAmbiguous {
        anchor: &'static str,
        first: u64,
        second: u64,
    },
    #[error("cannot read the code of {0}")]
    BadCode(&'static str),
    #[error("instruction anchors are only known for x86-64, not {0}")]
    UnsupportedArch(Arch),
}

/// The symbols of the globals, from `.symtab`; `None` for each one the
/// binary does not name (stripped).
fn symbol_addrs(bin: &GoBinary) -> [Option<u64>; 5] {
    let mut out = [None; 5];
    let Ok(elf) = Elf::parse(bin.data()) else {
        return out;
    };
    for s in elf.symbols(bin.data()) {
        if s.kind != STT_OBJECT || s.value == 0 {
            continue;
        }
        let slot = match s.name.as_str() {
            "runtime.memstats" => 0,
            "runtime.gcController" => 1,
            "runtime.allglen" => 2,
            "runtime.allgptr" => 3,
            "runtime.sched" => 4,
            _ => continue,
        };
        if let Some(o) = out.get_mut(slot) {
            o.get_or_insert(s.value);
        }
    }
    out
}

/// Symbols where present, anchors for the rest.
pub fn locate(bin: &GoBinary, layout: &Layout) -> Result<Globals, LocateError> {
    let [memstats, gcc, allglen, allgptr, sched] = symbol_addrs(bin);
    if let (Some(m), Some(c), Some(l), Some(p), Some(s)) = (memstats, gcc, allglen, allgptr, sched)
    {
        let sym = |addr, name| Located {
            addr,
            source: Source::Symbol(name),
        };
        return Ok(Globals {
            memstats: sym(m, "runtime.memstats"),
            gc_controller: sym(c, "runtime.gcController"),
            allglen: sym(l, "runtime.allglen"),
            allgptr: sym(p, "runtime.allgptr"),
            sched: sym(s, "runtime.sched"),
        });
    }
    let mut g = locate_by_anchors(bin, layout)?;
    let pick = |found: Option<u64>, name, loc: &mut Located| {
        if let Some(addr) = found {
            *loc = Located {
                addr,
                source: Source::Symbol(name),
            };
        }
    };
    pick(memstats, "runtime.memstats", &mut g.memstats);
    pick(gcc, "runtime.gcController", &mut g.gc_controller);
    pick(allglen, "runtime.allglen", &mut g.allglen);
    pick(allgptr, "runtime.allgptr", &mut g.allgptr);
    pick(sched, "runtime.sched", &mut g.sched);
    Ok(g)
}

/// Only `.symtab` (for tests and `inspect`): `None` if any is missing.
pub fn locate_by_symbols(bin: &GoBinary) -> Option<[u64; 5]> {
    let [a, b, c, d, e] = symbol_addrs(bin);
    Some([a?, b?, c?, d?, e?])
}

/// Only instruction anchors, ignoring `.symtab`.
pub fn locate_by_anchors(bin: &GoBinary, layout: &Layout) -> Result<Globals, LocateError> {
    if bin.arch() != Arch::X86_64 {
        return Err(LocateError::UnsupportedArch(bin.arch()));
    }
    const REFILL: &str = "runtime.(*mcache).refill";
    const HEAP_STATS: &str = "runtime.(*mcache).refill: LEAQ memstats.heapStats before CALL (*consistentHeapStats).acquire";
    const GCC: &str =
        "runtime.(*mcache).refill: LEAQ gcController before CALL (*gcControllerState).update";
    const ALLGPTR: &str = "runtime.allgadd: LEAQ allgptr before CALL runtime.atomicwb";
    const ALLGLEN: &str = "runtime.allgadd: LEAQ allglen; XCHGQ";
    const SCHED: &str = "runtime.mcommoninit: LEAQ sched.lock before CALL runtime.lock2";

    let refill = decode(bin, REFILL)?;
    let acquire = entry(bin, "runtime.(*consistentHeapStats).acquire")?;
    let update = entry(bin, "runtime.(*gcControllerState).update")?;
    let heap_stats = one(HEAP_STATS, lea_rax_before_calls(&refill, acquire))?;
    let gc_controller = one(GCC, lea_rax_before_calls(&refill, update))?;

    let allgadd = decode(bin, "runtime.allgadd")?;
    let atomicwb = entry(bin, "runtime.atomicwb")?;
    let allgptr = one(ALLGPTR, lea_rax_before_calls(&allgadd, atomicwb))?;
    let allglen = lea_xchg_pairs(&allgadd)
        .last()
        .copied()
        .ok_or(LocateError::AnchorNotFound(ALLGLEN))?;

    let mcommoninit = decode(bin, "runtime.mcommoninit")?;
    let lock2 = entry(bin, "runtime.lock2")?;
    let sched_lock = lea_rax_before_calls(&mcommoninit, lock2)
        .first()
        .copied()
        .ok_or(LocateError::AnchorNotFound(SCHED))?;

    let anchor = |addr, what| Located {
        addr,
        source: Source::Anchor(what),
    };
    Ok(Globals {
        memstats: anchor(
            heap_stats.wrapping_sub(layout.mstats.heap_stats),
            HEAP_STATS,
        ),
        gc_controller: anchor(gc_controller, GCC),
        allglen: anchor(allglen, ALLGLEN),
        allgptr: anchor(allgptr, ALLGPTR),
        sched: anchor(sched_lock.wrapping_sub(layout.schedt.lock), SCHED),
    })
}

fn entry(bin: &GoBinary, name: &'static str) -> Result<u64, LocateError> {
    bin.lookup(name)
        .map(|f| f.entry)
        .ok_or(LocateError::FunctionNotFound(name))
}

/// The instructions of function `name` (stops at the first undecodable byte).
fn decode(bin: &GoBinary, name: &'static str) -> Result<Vec<Instruction>, LocateError> {
    let f = bin
        .lookup(name)
        .ok_or(LocateError::FunctionNotFound(name))?;
    let code = bin.code(f).map_err(|_| LocateError::BadCode(name))?;
    let mut out = Vec::new();
    let mut dec = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE);
    while dec.can_decode() {
        let ins = dec.decode();
        if ins.is_invalid() {
            break;
        }
        out.push(ins);
    }
    Ok(out)
}

/// The address of a RIP-relative `LEA reg, [rip+X]`: (reg, X).
fn lea_rip(ins: &Instruction) -> Option<(Register, u64)> {
    (ins.mnemonic() == Mnemonic::Lea
        && ins.op0_kind() == OpKind::Register
        && ins.memory_base() == Register::RIP)
        .then(|| (ins.op0_register(), ins.memory_displacement64()))
}

/// For every `CALL target`, the address of the `LEAQ X(IP), AX` that last
/// wrote AX before it (within [`LEA_WINDOW`] instructions, no control flow or
/// other write of AX in between). Calls whose AX comes from elsewhere are
/// skipped.
fn lea_rax_before_calls(code: &[Instruction], target: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, ins) in code.iter().enumerate() {
        if !(ins.mnemonic() == Mnemonic::Call
            && ins.op0_kind() == OpKind::NearBranch64
            && ins.near_branch_target() == target)
        {
            continue;
        }
        let before = code.get(i.saturating_sub(LEA_WINDOW)..i).unwrap_or(&[]);
        for prev in before.iter().rev() {
            if let Some((Register::RAX, addr)) = lea_rip(prev) {
                out.push(addr);
                break;
            }
            let writes_ax = prev.op_count() > 0
                && prev.op0_kind() == OpKind::Register
                && matches!(
                    prev.op0_register(),
                    Register::RAX | Register::EAX | Register::AX | Register::AL | Register::AH
                );
            let flow = matches!(
                prev.mnemonic(),
                Mnemonic::Call | Mnemonic::Ret | Mnemonic::Jmp
            ) || matches!(
                prev.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            );
            if writes_ax || flow {
                break;
            }
        }
    }
    out
}

/// Addresses X of `LEA R, [rip+X]` immediately followed by `XCHG [R], _`
/// (an atomic 64-bit store to a global), in code order.
fn lea_xchg_pairs(code: &[Instruction]) -> Vec<u64> {
    code.windows(2)
        .filter_map(|w| {
            let (lea, xchg) = (w.first()?, w.get(1)?);
            let (reg, addr) = lea_rip(lea)?;
            (xchg.mnemonic() == Mnemonic::Xchg
                && xchg.op0_kind() == OpKind::Memory
                && xchg.memory_base() == reg
                && xchg.memory_index() == Register::None
                && xchg.memory_displacement64() == 0)
                .then_some(addr)
        })
        .collect()
}

/// The one address all matches agree on.
fn one(anchor: &'static str, found: Vec<u64>) -> Result<u64, LocateError> {
    let first = *found.first().ok_or(LocateError::AnchorNotFound(anchor))?;
    match found.iter().find(|&&a| a != first) {
        Some(&second) => Err(LocateError::AnchorAmbiguous {
            anchor,
            first,
            second,
        }),
        None => Ok(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Decoder;

    fn decode_bytes(code: &[u8], ip: u64) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
        let mut out = Vec::new();
        while d.can_decode() {
            out.push(d.decode());
        }
        out
    }

    #[test]
    fn lea_before_call() {
        // lea rax,[rip+0x100]; mov rbx,rcx; call +0 (target 0x1000+7+3+5)
        let code = [
            0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00, 0x48, 0x89, 0xcb, 0xe8, 0x00, 0x00, 0x00,
            0x00,
        ];
        let ins = decode_bytes(&code, 0x1000);
        assert_eq!(lea_rax_before_calls(&ins, 0x100f), vec![0x1107]);
        assert!(lea_rax_before_calls(&ins, 0x2000).is_empty());
        // mov rax,rcx between them: AX does not come from the LEA.
        let code = [
            0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00, 0x48, 0x89, 0xc8, 0xe8, 0x00, 0x00, 0x00,
            0x00,
        ];
        let ins = decode_bytes(&code, 0x1000);
        assert!(lea_rax_before_calls(&ins, 0x100f).is_empty());
    }

    #[test]
    fn lea_xchg() {
        // lea rdx,[rip+0x10]; xchg [rdx],rcx   (Go: LEAQ allglen(SB), DX; XCHGQ CX, 0(DX))
        let code = [0x48, 0x8d, 0x15, 0x10, 0x00, 0x00, 0x00, 0x48, 0x87, 0x0a];
        let ins = decode_bytes(&code, 0x2000);
        assert_eq!(lea_xchg_pairs(&ins), vec![0x2017]);
    }

    #[test]
    fn ambiguity_is_an_error() {
        assert_eq!(one("x", vec![1, 1]), Ok(1));
        assert!(matches!(
            one("x", vec![1, 2]),
            Err(LocateError::AnchorAmbiguous { .. })
        ));
        assert_eq!(one("x", vec![]), Err(LocateError::AnchorNotFound("x")));
    }
}
