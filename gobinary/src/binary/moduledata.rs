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
    /// `types uintptr`: start of the type descriptors (`abi.Type` name
    /// offsets are relative to it).
    pub types: u64,
    /// `etypes uintptr`: end of the type descriptors.
    pub etypes: u64,
    /// `gofunc uintptr`: base of the 1.18+ funcdata offsets (`go:func.*`);
    /// `None` before Go 1.18, where funcdata are absolute pointers.
    pub gofunc: Option<u64>,
}

/// Go 1.16-1.17. The prefix up to `etext` ([`MODULEDATA_GO116`]'s first
/// fields) is the same in every later layout; `find` relies on it.
pub const MODULEDATA_GO116: ModuledataLayout = ModuledataLayout {
    pc_header: 0,
    funcnametab: 1,
    ftab: 16,
    minpc: 20,
    maxpc: 21,
    text: 22,
    etext: 23,
    // noptrdata..enoptrbss (24-31), end, gcdata, gcbss (32-34).
    types: 35,
    etypes: 36,
    gofunc: None,
};

/// Go 1.18-1.19: `rodata` (37) and `gofunc` (38) after `etypes`.
pub const MODULEDATA_GO118: ModuledataLayout = ModuledataLayout {
    gofunc: Some(38),
    ..MODULEDATA_GO116
};

/// Go 1.20-1.26: `covctrs, ecovctrs` (32-33) before `end`.
pub const MODULEDATA_GO120: ModuledataLayout = ModuledataLayout {
    types: 37,
    etypes: 38,
    gofunc: Some(40),
    ..MODULEDATA_GO116
};

/// Go 1.27: `typedesclen` between `types` and `etypes`, then `itaboffset,
/// itabsize` (40-41) and `rodata` (42) before `gofunc`.
pub const MODULEDATA_GO127: ModuledataLayout = ModuledataLayout {
    types: 37,
    etypes: 39,
    gofunc: Some(43),
    ..MODULEDATA_GO116
};

impl ModuledataLayout {
    /// The layout for Go `major.minor` (checked against `runtime/symtab.go`
    /// of 1.19 and 1.21 to 1.27). `None` before 1.16 (no such prefix). A
    /// release newer than the last known one gets the newest layout: callers
    /// validate what they read (addresses inside the file's segments).
    pub fn for_version(major: u32, minor: u32) -> Option<&'static ModuledataLayout> {
        match (major, minor) {
            (1, 0..=15) | (0, _) => None,
            (1, 16..=17) => Some(&MODULEDATA_GO116),
            (1, 18..=19) => Some(&MODULEDATA_GO118),
            (1, 20..=26) => Some(&MODULEDATA_GO120),
            _ => Some(&MODULEDATA_GO127),
        }
    }
}

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

/// Fields of `runtime.firstmoduledata` beyond the validated prefix, read
/// through a version's [`ModuledataLayout`] (link-time addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuledataFields {
    /// Link-time address of the moduledata itself.
    pub addr: u64,
    /// `[types, etypes)`: the type descriptors of the executable.
    pub types: u64,
    pub etypes: u64,
    /// Base of 1.18+ funcdata offsets; `None` before Go 1.18.
    pub gofunc: Option<u64>,
}

/// Reads the named fields of the moduledata at `addr` with `layout`. `None`
/// when a word cannot be read or the values are implausible (`types >
/// etypes`, or an address outside the file's segments), so that a layout
/// that does not match the binary is noticed instead of trusted.
pub fn read_fields(
    reader: &PointerReader<'_>,
    addr: u64,
    layout: &ModuledataLayout,
) -> Option<ModuledataFields> {
    let ps = u64::from(reader.ptr_size);
    let w = |i: u64| reader.read(addr.checked_add(i.checked_mul(ps)?)?);
    let (types, etypes) = (w(layout.types)?, w(layout.etypes)?);
    if types > etypes || reader.elf.load_segment_for(types).is_none() {
        return None;
    }
    let gofunc = match layout.gofunc {
        Some(i) => {
            let g = w(i)?;
            reader.elf.load_segment_for(g)?;
            Some(g)
        }
        None => None,
    };
    Some(ModuledataFields {
        addr,
        types,
        etypes,
        gofunc,
    })
}
