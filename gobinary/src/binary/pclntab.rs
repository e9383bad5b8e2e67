//! The Go function table ("pclntab", `runtime.pcHeader` and what follows it),
//! for the layouts of Go 1.16 and later. Only the parts needed to list
//! functions (name, entry, end) are decoded.
//!
//! Layout (all offsets relative to the header):
//! - magic u32, two zero pad bytes, minLC u8, ptrSize u8, then ptrSize words:
//!   - Go 1.16-1.17: nfunc, nfiles, funcnameOffset, cuOffset, filetabOffset,
//!     pctabOffset, pclnOffset;
//!   - Go 1.18+: nfunc, nfiles, textStart, funcnameOffset, cuOffset,
//!     filetabOffset, pctabOffset, pclnOffset.
//! - functab at pclnOffset: nfunc+1 pairs; (entry uintptr, funcoff uintptr)
//!   in 1.16-1.17, (entryoff u32, funcoff u32) from 1.18 with
//!   entry = textStart + entryoff. The last pair only marks the end of text.
//! - `_func` at pclnOffset+funcoff: see [`FuncLayout`] for the fields read.

use super::Function;
use super::bytes::{NameTable, slice, tail, u8_at, u32_le, uvarint, word};

/// Go 1.2-1.15.
pub const MAGIC_GO12: u32 = 0xffff_fffb;
/// Go 1.16-1.17.
pub const MAGIC_GO116: u32 = 0xffff_fffa;
/// Go 1.18-1.19.
pub const MAGIC_GO118: u32 = 0xffff_fff0;
/// Go 1.20 and later.
pub const MAGIC_GO120: u32 = 0xffff_fff1;

/// Longest function name accepted.
const MAX_NAME: usize = 1 << 16;

/// Where a field lies in a record whose layout depends on the pointer size:
/// `words` pointer-sized fields plus `bytes` bytes from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldOffset {
    pub words: u64,
    pub bytes: u64,
}

impl FieldOffset {
    const fn new(words: u64, bytes: u64) -> FieldOffset {
        FieldOffset { words, bytes }
    }

    /// The byte offset for pointers of `ptr_size` bytes.
    pub fn at(self, ptr_size: u8) -> u64 {
        self.words * u64::from(ptr_size) + self.bytes
    }
}

/// Width of an address field of the function table and of `_func`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrWidth {
    /// `uintptr`: an absolute address (Go 1.16-1.17).
    Word,
    /// `uint32`: an offset from the text start (Go 1.18+).
    U32,
}

impl AddrWidth {
    /// Size in bytes for pointers of `ptr_size` bytes.
    pub fn size(self, ptr_size: u8) -> u64 {
        match self {
            AddrWidth::Word => u64::from(ptr_size),
            AddrWidth::U32 => 4,
        }
    }
}

/// The layout of a function table entry and of the parts of
/// `runtime._func` this crate reads (and its synthetic table writer writes).
///
/// From Go's `runtime/runtime2.go` (`type _func`) and `runtime/symtab.go`
/// (`type functab`), as written by `cmd/link/internal/ld/pcln.go`
/// (`writeFuncs`), for each pclntab magic. `_func` starts with
/// `entry`/`entryOff`, `nameOff int32`, `args int32`, `deferreturn uint32`,
/// `pcsp uint32`, `pcfile`, `pcln`, `npcdata`, `cuOffset uint32`
/// (`startLine int32` from 1.20), then `funcID`, `flag`, a pad byte and
/// `nfuncdata`, all `uint8`; the variable-length pcdata and funcdata offsets
/// follow (read by [`crate::symbolize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuncLayout {
    /// Width of both fields of a function table pair (entry, funcoff).
    pub functab_field: AddrWidth,
    /// `_func.entry` (1.16-1.17) or `_func.entryOff` (1.18+).
    pub entry: FieldOffset,
    pub entry_width: AddrWidth,
    /// `_func.nameOff`: `int32` offset into the function name table.
    pub name_off: FieldOffset,
    /// `_func.pcsp`: `uint32` offset of the SP-delta table into pctab.
    pub pcsp: FieldOffset,
    /// `_func.pcfile`: `uint32` offset of the file-index table into pctab.
    pub pcfile: FieldOffset,
    /// `_func.pcln`: `uint32` offset of the line table into pctab.
    pub pcln: FieldOffset,
    /// `_func.npcdata`: `uint32` count of the pcdata offsets that follow.
    pub npcdata: FieldOffset,
    /// `_func.cuOffset`: `uint32` index of the function's compilation unit
    /// in cutab (file numbers of pcfile are relative to it).
    pub cu_offset: FieldOffset,
    /// `_func.startLine`: `int32` line of the `func` keyword (Go 1.20+).
    pub start_line: Option<FieldOffset>,
    /// `_func.funcID`: `uint8` kind of special function (`abi.FuncID`).
    pub func_id: FieldOffset,
    /// `_func.nfuncdata`: `uint8` count of the funcdata offsets after them
    /// (`uint32` from 1.18, pointer-aligned `uintptr` before).
    pub nfuncdata: FieldOffset,
    /// Size of the fixed part of `_func` (before pcdata and funcdata).
    pub fixed_size: FieldOffset,
}

/// Go 1.16-1.17 (magic [`MAGIC_GO116`]). No toolchain this old is tested
/// against; checked on synthetic tables only.
pub const FUNC_LAYOUT_GO116: FuncLayout = FuncLayout {
    functab_field: AddrWidth::Word,
    entry: FieldOffset::new(0, 0),
    entry_width: AddrWidth::Word,
    name_off: FieldOffset::new(1, 0),
    pcsp: FieldOffset::new(1, 12),
    pcfile: FieldOffset::new(1, 16),
    pcln: FieldOffset::new(1, 20),
    npcdata: FieldOffset::new(1, 24),
    cu_offset: FieldOffset::new(1, 28),
    start_line: None,
    func_id: FieldOffset::new(1, 32),
    nfuncdata: FieldOffset::new(1, 35),
    fixed_size: FieldOffset::new(1, 36),
};

/// Go 1.18-1.19 (magic [`MAGIC_GO118`]): 32-bit entry offsets. Checked on
/// Debian's Go 1.19 builds.
pub const FUNC_LAYOUT_GO118: FuncLayout = FuncLayout {
    functab_field: AddrWidth::U32,
    entry: FieldOffset::new(0, 0),
    entry_width: AddrWidth::U32,
    name_off: FieldOffset::new(0, 4),
    pcsp: FieldOffset::new(0, 16),
    pcfile: FieldOffset::new(0, 20),
    pcln: FieldOffset::new(0, 24),
    npcdata: FieldOffset::new(0, 28),
    cu_offset: FieldOffset::new(0, 32),
    start_line: None,
    func_id: FieldOffset::new(0, 36),
    nfuncdata: FieldOffset::new(0, 39),
    fixed_size: FieldOffset::new(0, 40),
};

/// Go 1.20 and later (magic [`MAGIC_GO120`], checked on Go 1.21 to 1.27):
/// `startLine int32` added after `cuOffset`; the fields before it did not
/// move.
pub const FUNC_LAYOUT_GO120: FuncLayout = FuncLayout {
    start_line: Some(FieldOffset::new(0, 36)),
    func_id: FieldOffset::new(0, 40),
    nfuncdata: FieldOffset::new(0, 43),
    fixed_size: FieldOffset::new(0, 44),
    ..FUNC_LAYOUT_GO118
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PclnVersion {
    /// Go 1.16-1.17: absolute entry addresses in the function table.
    Go116,
    /// Go 1.18-1.19: 32-bit entry offsets from textStart.
    Go118,
    /// Go 1.20+: same layout as 1.18 with a new magic (textStart is 0 from 1.26).
    Go120,
}

impl PclnVersion {
    /// Whether function entries are offsets from a text start address.
    pub fn uses_text_start(self) -> bool {
        !matches!(self, PclnVersion::Go116)
    }

    /// The magic number that marks this layout.
    pub fn magic(self) -> u32 {
        match self {
            PclnVersion::Go116 => MAGIC_GO116,
            PclnVersion::Go118 => MAGIC_GO118,
            PclnVersion::Go120 => MAGIC_GO120,
        }
    }

    /// The function table and `_func` layout of this version.
    pub fn func_layout(self) -> &'static FuncLayout {
        match self {
            PclnVersion::Go116 => &FUNC_LAYOUT_GO116,
            PclnVersion::Go118 => &FUNC_LAYOUT_GO118,
            PclnVersion::Go120 => &FUNC_LAYOUT_GO120,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PclntabError {
    #[error("the table is too short ({0} bytes)")]
    TooShort(usize),
    #[error("unknown magic number {0:#010x}")]
    BadMagic(u32),
    #[error(
        "Go older than 1.16 is not supported (pclntab magic {0:#010x}); rebuild the program with Go 1.16 or newer"
    )]
    TooOld(u32),
    #[error("invalid header: {0}")]
    BadHeader(&'static str),
    #[error(
        "the function table ({count} entries at offset {offset:#x}) does not fit in the {len} bytes available"
    )]
    Truncated { count: u64, offset: u64, len: usize },
    #[error("function #{index}: {problem}")]
    BadFunc { index: u64, problem: &'static str },
    #[error("the function table is not sorted by address (at entry #{0})")]
    NotSorted(u64),
}

/// The decoded `runtime.pcHeader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PclnHeader {
    pub version: PclnVersion,
    pub magic: u32,
    pub min_lc: u8,
    pub ptr_size: u8,
    pub nfunc: u64,
    pub nfiles: u64,
    /// The header's textStart (always 0 for Go 1.16-1.17, which have none,
    /// and for Go 1.26+, which no longer fill it in).
    pub text_start: u64,
    pub funcname_offset: u64,
    pub cu_offset: u64,
    pub filetab_offset: u64,
    pub pctab_offset: u64,
    pub pcln_offset: u64,
}

impl PclnHeader {
    /// Size of the header in bytes.
    pub fn size(&self) -> u64 {
        8 + u64::from(self.ptr_size) * self.word_count()
    }

    fn word_count(&self) -> u64 {
        if self.version.uses_text_start() { 8 } else { 7 }
    }

    /// Offset of the textStart word from the start of the header (1.18+).
    pub fn text_start_field_offset(&self) -> Option<u64> {
        self.version
            .uses_text_start()
            .then(|| 8 + 2 * u64::from(self.ptr_size))
    }

    /// Bytes per function table entry (an entry and a `_func` offset).
    pub fn functab_entry_size(&self) -> u64 {
        2 * self.version.func_layout().functab_field.size(self.ptr_size)
    }
}

/// The magic numbers this module knows (including the unsupported pre-1.16 one).
pub fn magic_version(magic: u32) -> Option<PclnVersion> {
    match magic {
        MAGIC_GO116 => Some(PclnVersion::Go116),
        MAGIC_GO118 => Some(PclnVersion::Go118),
        MAGIC_GO120 => Some(PclnVersion::Go120),
        _ => None,
    }
}

/// Whether the 8 bytes at `d[off..]` look like the start of a pclntab header
/// of any known version (including pre-1.16, so it can be reported).
pub fn looks_like_header(d: &[u8], off: u64) -> bool {
    let Some(magic) = u32_le(d, off) else {
        return false;
    };
    if magic_version(magic).is_none() && magic != MAGIC_GO12 {
        return false;
    }
    let b = |i| u8_at(d, off + i);
    b(4) == Some(0)
        && b(5) == Some(0)
        && matches!(b(6), Some(1 | 2 | 4))
        && matches!(b(7), Some(4 | 8))
}

/// Offsets (multiples of 4) in `d` where [`looks_like_header`] holds.
pub fn candidate_offsets(d: &[u8]) -> impl Iterator<Item = u64> + '_ {
    d.chunks_exact(4)
        .enumerate()
        .filter(|(_, c)| c.get(1..4) == Some(&[0xff, 0xff, 0xff][..]))
        .map(|(i, _)| i as u64 * 4)
        .filter(move |&off| looks_like_header(d, off))
}

/// Parses and validates the header at the start of `data`. `data` may extend
/// past the end of the table; all offsets must lie inside it.
pub fn parse_header(data: &[u8]) -> Result<PclnHeader, PclntabError> {
    if data.len() < 8 {
        return Err(PclntabError::TooShort(data.len()));
    }
    let magic = u32_le(data, 0).ok_or(PclntabError::TooShort(data.len()))?;
    let version = match magic_version(magic) {
        Some(v) => v,
        None if magic == MAGIC_GO12 => return Err(PclntabError::TooOld(magic)),
        None => return Err(PclntabError::BadMagic(magic)),
    };
    if u8_at(data, 4) != Some(0) || u8_at(data, 5) != Some(0) {
        return Err(PclntabError::BadHeader("padding bytes are not zero"));
    }
    let min_lc = u8_at(data, 6).unwrap_or(0);
    if !matches!(min_lc, 1 | 2 | 4) {
        return Err(PclntabError::BadHeader("invalid instruction size quantum"));
    }
    let ptr_size = u8_at(data, 7).unwrap_or(0);
    if !matches!(ptr_size, 4 | 8) {
        return Err(PclntabError::BadHeader("invalid pointer size"));
    }
    let ps = u64::from(ptr_size);
    let w =
        |i: u64| word(data, 8 + i * ps, ptr_size, false).ok_or(PclntabError::TooShort(data.len()));
    let (nfunc, nfiles) = (w(0)?, w(1)?);
    let (text_start, first) = if version.uses_text_start() {
        (w(2)?, 3)
    } else {
        (0, 2)
    };
    let hdr = PclnHeader {
        version,
        magic,
        min_lc,
        ptr_size,
        nfunc,
        nfiles,
        text_start,
        funcname_offset: w(first)?,
        cu_offset: w(first + 1)?,
        filetab_offset: w(first + 2)?,
        pctab_offset: w(first + 3)?,
        pcln_offset: w(first + 4)?,
    };
    if hdr.nfunc == 0 {
        return Err(PclntabError::BadHeader("no functions"));
    }
    let offsets = [
        hdr.size(),
        hdr.funcname_offset,
        hdr.cu_offset,
        hdr.filetab_offset,
        hdr.pctab_offset,
        hdr.pcln_offset,
    ];
    if offsets.windows(2).any(|p| p[0] > p[1]) {
        return Err(PclntabError::BadHeader("table offsets are out of order"));
    }
    if hdr.pcln_offset >= data.len() as u64 {
        return Err(PclntabError::BadHeader(
            "table offsets point past the end of the data",
        ));
    }
    Ok(hdr)
}

/// Lists the functions of the table at the start of `data`, in table order
/// (sorted by entry). For Go 1.18+ tables, entries are `text_start +
/// entryoff` (`text_start` is ignored for 1.16-1.17). Each function ends
/// where the next one starts; the last ends at the table's end-of-text mark.
/// Names may repeat (ABI0 wrappers share their target's name).
pub fn parse_functions(
    data: &[u8],
    hdr: &PclnHeader,
    text_start: u64,
) -> Result<Vec<Function>, PclntabError> {
    Ok(parse_functions_with_sizes(data, hdr, text_start)?
        .into_iter()
        .map(|f| f.func)
        .collect())
}

/// A function table entry with its exact code size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizedFunction {
    /// `end` is the next function's entry (includes alignment padding).
    pub func: Function,
    /// The code size without alignment padding (what `.symtab` records), as
    /// covered by the function's SP-delta table; `None` when the function has
    /// no such table or it is inconsistent.
    pub code_size: Option<u64>,
}

/// Like [`parse_functions`], also decoding each function's exact code size.
pub fn parse_functions_with_sizes(
    data: &[u8],
    hdr: &PclnHeader,
    text_start: u64,
) -> Result<Vec<SizedFunction>, PclntabError> {
    let entry_size = hdr.functab_entry_size();
    let count = hdr.nfunc.checked_add(1);
    let ftab = count
        .and_then(|c| c.checked_mul(entry_size))
        .and_then(|len| slice(data, hdr.pcln_offset, len))
        .ok_or(PclntabError::Truncated {
            count: hdr.nfunc,
            offset: hdr.pcln_offset,
            len: data.len(),
        })?;
    let ps = hdr.ptr_size;
    let names_end = usize::try_from(hdr.cu_offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let mut names = NameTable::new(data.get(..names_end).unwrap_or(&[]), MAX_NAME);

    let layout = hdr.version.func_layout();
    let read_addr = |d: &[u8], off: u64, width: AddrWidth| match width {
        AddrWidth::Word => word(d, off, ps, false),
        AddrWidth::U32 => u32_le(d, off).map(u64::from),
    };
    let field = layout.functab_field;
    // (entry address, raw entry field, funcoff) of functab entry `i`.
    let entry_at = |i: u64| -> Result<(u64, u64, u64), PclntabError> {
        let bad = |problem| PclntabError::BadFunc { index: i, problem };
        let base = i * entry_size; // i <= nfunc, and the table fits: no overflow
        let raw = read_addr(ftab, base, field).ok_or_else(|| bad("truncated entry"))?;
        let funcoff =
            read_addr(ftab, base + field.size(ps), field).ok_or_else(|| bad("truncated entry"))?;
        let entry = if hdr.version.uses_text_start() {
            text_start
                .checked_add(raw)
                .ok_or_else(|| bad("entry address overflows"))?
        } else {
            raw
        };
        Ok((entry, raw, funcoff))
    };
    let field_at = |func: u64, f: FieldOffset| func.checked_add(f.at(ps));

    // `count` fits in the data (checked above), so this capacity is bounded.
    let mut out = Vec::with_capacity(usize::try_from(hdr.nfunc).unwrap_or(0));
    let mut cur = entry_at(0)?;
    for i in 0..hdr.nfunc {
        let next = entry_at(i + 1)?;
        let (entry, raw_entry, funcoff) = cur;
        if next.0 < entry {
            return Err(PclntabError::NotSorted(i + 1));
        }
        let bad = |problem| PclntabError::BadFunc { index: i, problem };
        let func = hdr
            .pcln_offset
            .checked_add(funcoff)
            .ok_or_else(|| bad("_func offset overflows"))?;
        let func_entry = field_at(func, layout.entry)
            .and_then(|o| read_addr(data, o, layout.entry_width))
            .ok_or_else(|| bad("_func is out of range"))?;
        if func_entry != raw_entry {
            return Err(bad("_func entry does not match the function table"));
        }
        let name_off = field_at(func, layout.name_off)
            .and_then(|o| u32_le(data, o))
            .ok_or_else(|| bad("_func is out of range"))?;
        let name_off = i32::from_le_bytes(name_off.to_le_bytes());
        let name_off = u64::try_from(name_off).map_err(|_| bad("negative name offset"))?;
        let name_at = hdr
            .funcname_offset
            .checked_add(name_off)
            .ok_or_else(|| bad("name offset overflows"))?;
        let name = names
            .get(name_at)
            .ok_or_else(|| bad("name is out of range or not terminated"))?;
        let code_size = field_at(func, layout.pcsp)
            .and_then(|f| u32_le(data, f))
            .and_then(|pcsp| pc_table_length(data, hdr, pcsp, next.0 - entry));
        out.push(SizedFunction {
            func: Function {
                name: String::from_utf8_lossy(name).into_owned(),
                entry,
                end: next.0,
            },
            code_size,
        });
        cur = next;
    }
    Ok(out)
}

/// The number of code bytes covered by the pc-value table at `pctab +
/// table_off` (Go's `pcvalue` encoding: pairs of zig-zag value delta and pc
/// delta in units of minLC, ended by a zero value delta). `None` if the
/// table is absent, malformed or longer than `limit`.
fn pc_table_length(data: &[u8], hdr: &PclnHeader, table_off: u32, limit: u64) -> Option<u64> {
    if table_off == 0 {
        return None;
    }
    // The pc tables lie between pctabOffset and pclnOffset.
    let region = data.get(..usize::try_from(hdr.pcln_offset).ok()?)?;
    let mut p = tail(region, hdr.pctab_offset.checked_add(u64::from(table_off))?)?;
    let quantum = u64::from(hdr.min_lc);
    let mut pc: u64 = 0;
    let mut first = true;
    loop {
        let (value_delta, n) = uvarint(p)?;
        if value_delta == 0 && !first {
            break;
        }
        first = false;
        p = p.get(n..)?;
        let (pc_delta, n) = uvarint(p)?;
        p = p.get(n..)?;
        pc = pc.checked_add(pc_delta.checked_mul(quantum)?)?;
        if pc > limit {
            return None;
        }
    }
    (pc > 0).then_some(pc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{PclntabSpec, SynthFunction, write_pclntab};

    /// A synthetic table: `funcs` are (name, entry offset, code size) plus an
    /// end offset, all from `text_start`. Code sizes of 0 get no SP-delta
    /// table.
    fn synth(
        version: PclnVersion,
        text_start: u64,
        funcs: &[(&str, u64, u64)],
        end: u64,
    ) -> Vec<u8> {
        let funcs: Vec<SynthFunction<'_>> = funcs
            .iter()
            .map(|&(name, off, size)| SynthFunction {
                name,
                entry: text_start + off,
                code_size: (size > 0).then_some(size),
            })
            .collect();
        write_pclntab(&PclntabSpec {
            version,
            ptr_size: 8,
            min_lc: 1,
            text_start,
            header_text_start: text_start,
            funcs: &funcs,
            end: text_start + end,
        })
        .expect("synthetic table")
        .bytes
    }

    const FUNCS: &[(&str, u64, u64)] = &[
        ("runtime.a", 0, 0x3a),
        ("runtime.newproc", 0x40, 0xb1),
        ("runtime.newproc", 0x100, 0),
        ("main.main", 0x180, 0x200),
    ];

    #[test]
    fn parses_all_versions() {
        for v in [PclnVersion::Go116, PclnVersion::Go118, PclnVersion::Go120] {
            let d = synth(v, 0x401000, FUNCS, 0x200);
            let hdr = parse_header(&d).unwrap();
            assert_eq!(hdr.version, v);
            assert_eq!(hdr.nfunc, 4);
            let text = if v.uses_text_start() {
                assert_eq!(hdr.text_start, 0x401000);
                hdr.text_start
            } else {
                0xdead // ignored
            };
            let sized = parse_functions_with_sizes(&d, &hdr, text).unwrap();
            let sizes: Vec<_> = sized.iter().map(|f| f.code_size).collect();
            // 0x200 is longer than main.main's slot: rejected.
            assert_eq!(sizes, vec![Some(0x3a), Some(0xb1), None, None]);
            let f = parse_functions(&d, &hdr, text).unwrap();
            assert_eq!(f.len(), 4);
            assert_eq!(
                f[1],
                Function {
                    name: "runtime.newproc".into(),
                    entry: 0x401040,
                    end: 0x401100
                }
            );
            assert_eq!(f[3].end, 0x401200);
            assert_eq!(f[3].name, "main.main");
        }
    }

    #[test]
    fn rejects_bad_tables() {
        assert_eq!(
            parse_header(b"\xf1\xff").unwrap_err(),
            PclntabError::TooShort(2)
        );
        assert_eq!(
            parse_header(b"\xfb\xff\xff\xff\0\0\x01\x08").unwrap_err(),
            PclntabError::TooOld(MAGIC_GO12)
        );
        assert!(
            PclntabError::TooOld(MAGIC_GO12)
                .to_string()
                .contains("Go older than 1.16")
        );
        assert_eq!(
            parse_header(b"\x00\xff\xff\xff\0\0\x01\x08").unwrap_err(),
            PclntabError::BadMagic(0xffff_ff00)
        );
        let good = synth(PclnVersion::Go120, 0x1000, FUNCS, 0x200);
        let mut d = good.clone();
        d[4] = 1;
        assert!(matches!(parse_header(&d), Err(PclntabError::BadHeader(_))));
        let mut d = good.clone();
        d[6] = 3;
        assert!(matches!(parse_header(&d), Err(PclntabError::BadHeader(_))));
        let mut d = good.clone();
        d[7] = 2;
        assert!(matches!(parse_header(&d), Err(PclntabError::BadHeader(_))));
        // nfunc huge: must fail without allocating.
        let mut d = good.clone();
        d[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let hdr = parse_header(&d).unwrap();
        assert!(matches!(
            parse_functions(&d, &hdr, 0),
            Err(PclntabError::Truncated { .. })
        ));
        // Unsorted entries.
        let d = synth(
            PclnVersion::Go120,
            0x1000,
            &[("a", 0x10, 1), ("b", 0, 1)],
            0x20,
        );
        let hdr = parse_header(&d).unwrap();
        assert_eq!(
            parse_functions(&d, &hdr, 0x1000),
            Err(PclntabError::NotSorted(1))
        );
        // Text start overflow.
        let d = synth(PclnVersion::Go120, 0, FUNCS, 0x200);
        let hdr = parse_header(&d).unwrap();
        assert!(matches!(
            parse_functions(&d, &hdr, u64::MAX),
            Err(PclntabError::BadFunc { .. })
        ));
    }

    #[test]
    fn truncations_and_corruptions_never_panic() {
        for v in [PclnVersion::Go116, PclnVersion::Go120] {
            let good = synth(v, 0x1000, FUNCS, 0x200);
            for n in 0..good.len() {
                if let Ok(hdr) = parse_header(&good[..n]) {
                    let _ = parse_functions_with_sizes(&good[..n], &hdr, 0x1000);
                }
            }
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..5000 {
                let mut d = good.clone();
                for _ in 0..3 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let i = (state % d.len() as u64) as usize;
                    d[i] = (state >> 32) as u8;
                }
                if let Ok(hdr) = parse_header(&d) {
                    let _ = parse_functions_with_sizes(&d, &hdr, state);
                }
            }
        }
    }

    #[test]
    fn finds_candidates() {
        let mut d = vec![0u8; 64];
        let t = synth(PclnVersion::Go120, 0x1000, FUNCS, 0x200);
        d.extend_from_slice(&t);
        d.extend_from_slice(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 3, 8]); // bad minLC
        let c: Vec<u64> = candidate_offsets(&d).collect();
        assert_eq!(c, vec![64]);
    }
}
