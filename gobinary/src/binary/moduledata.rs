//! Finding `runtime.firstmoduledata` in a Go binary's data, to learn where
//! the Go text starts (the pclntab header stopped recording it in Go 1.26).
//!
//! `runtime.moduledata` starts (Go 1.16 and later; see [`ModuledataLayout`])
//! with:
//! ```text
//! word  0     pcHeader *pcHeader      (== address of the pclntab)
//! words 1-3   funcnametab []byte      (ptr == pclntab + funcnameOffset)
//! words 4-6   cutab []uint32
//! words 7-9   filetab []byte
//! words 10-12 pctab []byte
//! words 13-15 pclntable []byte
//! words 16-18 ftab []functab          (ptr == pclntab + pclnOffset)
//! word  19    findfunctab uintptr
//! word  20    minpc uintptr           (== text)
//! word  21    maxpc uintptr
//! word  22    text uintptr
//! word  23    etext uintptr
//! ```
//! It lives in `.noptrdata`, so we scan the writable segments for a word
//! equal to the pclntab address and validate the candidates.

use std::collections::HashMap;

use super::bytes::word;
use super::elf::Elf;
use super::pclntab::PclnHeader;

/// Where the fields of `runtime.moduledata` that we read lie, in pointer-sized
/// words from its start (a slice is three words: pointer, length, capacity).
///
/// From `type moduledata` in Go's `runtime/symtab.go`, which the linker
/// fills in field by field, in the same order, in `(*Link).symtab` of
/// `cmd/link/internal/ld/symtab.go`. The prefix up to `etext` has been the same from Go 1.16 (when
/// `pcHeader` became the first field) to Go 1.27; a version that moves it
/// gets a layout of its own here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuledataLayout {
    /// `pcHeader *pcHeader`: the address of the pclntab.
    pub pc_header: u64,
    /// `funcnametab []byte`: its pointer is pclntab + funcnameOffset.
    pub funcnametab: u64,
    /// `ftab []functab`: its pointer is pclntab + pclnOffset.
    pub ftab: u64,
    pub minpc: u64,
    pub maxpc: u64,
    /// `text uintptr`: start of Go text, the base of 1.18+ entry offsets.
    pub text: u64,
    pub etext: u64,
}

/// Go 1.16 to (at least) 1.27.
pub const MODULEDATA_GO116: ModuledataLayout = ModuledataLayout {
    pc_header: 0,
    funcnametab: 1,
    ftab: 16,
    minpc: 20,
    maxpc: 21,
    text: 22,
    etext: 23,
};

/// The fields of a validated `runtime.firstmoduledata` that we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moduledata {
    /// Link-time address of the moduledata itself.
    pub addr: u64,
    pub text: u64,
    pub etext: u64,
    pub maxpc: u64,
}

/// Reads link-time pointer values from the file, applying `R_*_RELATIVE`
/// relocations (whose addend is the value when the file holds zero).
pub struct PointerReader<'a> {
    pub elf: &'a Elf,
    pub data: &'a [u8],
    pub relocs: &'a HashMap<u64, u64>,
    pub ptr_size: u8,
}

impl PointerReader<'_> {
    pub fn read(&self, vaddr: u64) -> Option<u64> {
        if let Some(&v) = self.relocs.get(&vaddr) {
            return Some(v);
        }
        let b = self
            .elf
            .read_vaddr(self.data, vaddr, u64::from(self.ptr_size))?;
        word(b, 0, self.ptr_size, false)
    }
}

/// Finds the moduledata describing the pclntab at `pcln_vaddr`.
pub fn find(reader: &PointerReader<'_>, pcln_vaddr: u64, hdr: &PclnHeader) -> Option<Moduledata> {
    let ps = u64::from(reader.ptr_size);
    if ps == 0 {
        return None;
    }
    let mut candidates: Vec<u64> = Vec::new();
    for seg in reader.elf.load_segments().filter(|s| s.is_writable()) {
        let Some(bytes) = reader.elf.segment_data(reader.data, seg) else {
            continue;
        };
        // Walk words aligned in memory (segment start may be unaligned).
        let skip = (ps - seg.vaddr % ps) % ps;
        let mut off = skip;
        while let Some(w) = word(bytes, off, reader.ptr_size, false) {
            if w == pcln_vaddr
                && let Some(a) = seg.vaddr.checked_add(off)
            {
                candidates.push(a);
            }
            off += ps;
        }
    }
    candidates.extend(
        reader
            .relocs
            .iter()
            .filter(|&(_, &v)| v == pcln_vaddr)
            .map(|(&a, _)| a),
    );
    candidates.sort_unstable();
    candidates.dedup();
    candidates
        .into_iter()
        .find_map(|addr| validate(reader, addr, pcln_vaddr, hdr))
}

fn validate(
    reader: &PointerReader<'_>,
    addr: u64,
    pcln_vaddr: u64,
    hdr: &PclnHeader,
) -> Option<Moduledata> {
    let ps = u64::from(reader.ptr_size);
    let l = &MODULEDATA_GO116;
    let w = |i: u64| reader.read(addr.checked_add(i.checked_mul(ps)?)?);
    if w(l.pc_header)? != pcln_vaddr {
        return None;
    }
    if w(l.funcnametab)? != pcln_vaddr.checked_add(hdr.funcname_offset)? {
        return None;
    }
    if w(l.ftab)? != pcln_vaddr.checked_add(hdr.pcln_offset)? {
        return None;
    }
    let (minpc, maxpc, text, etext) = (w(l.minpc)?, w(l.maxpc)?, w(l.text)?, w(l.etext)?);
    if minpc != text || maxpc < minpc || etext < text {
        return None;
    }
    reader.elf.exec_segment_for(text)?;
    Some(Moduledata {
        addr,
        text,
        etext,
        maxpc,
    })
}
