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
//! - `_func` at pclnOffset+funcoff: entry uintptr (1.16) or entryoff u32
//!   (1.18+), then nameoff i32 into the function name table.

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

    /// Bytes per function table entry.
    fn functab_entry_size(&self) -> u64 {
        if self.version.uses_text_start() {
            8
        } else {
            2 * u64::from(self.ptr_size)
        }
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

    // (entry address, raw entry field, funcoff) of functab entry `i`.
    let entry_at = |i: u64| -> Result<(u64, u64, u64), PclntabError> {
        let bad = |problem| PclntabError::BadFunc { index: i, problem };
        let base = i * entry_size; // i <= nfunc, and the table fits: no overflow
        if hdr.version.uses_text_start() {
            let off = u32_le(ftab, base).ok_or_else(|| bad("truncated entry"))?;
            let funcoff = u32_le(ftab, base + 4).ok_or_else(|| bad("truncated entry"))?;
            let entry = text_start
                .checked_add(u64::from(off))
                .ok_or_else(|| bad("entry address overflows"))?;
            Ok((entry, u64::from(off), u64::from(funcoff)))
        } else {
            let entry = word(ftab, base, ps, false).ok_or_else(|| bad("truncated entry"))?;
            let funcoff = word(ftab, base + u64::from(ps), ps, false)
                .ok_or_else(|| bad("truncated entry"))?;
            Ok((entry, entry, funcoff))
        }
    };

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
        let (func_entry, name_field) = if hdr.version.uses_text_start() {
            (u32_le(data, func).map(u64::from), func.checked_add(4))
        } else {
            (word(data, func, ps, false), func.checked_add(u64::from(ps)))
        };
        let func_entry = func_entry.ok_or_else(|| bad("_func is out of range"))?;
        if func_entry != raw_entry {
            return Err(bad("_func entry does not match the function table"));
        }
        let name_off = name_field
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
        let pcsp_field = if hdr.version.uses_text_start() {
            func.checked_add(16)
        } else {
            func.checked_add(u64::from(ps) + 12)
        };
        let code_size = pcsp_field
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
pub(crate) mod tests {
    use super::*;

    /// Builds a synthetic table: `funcs` are (name, entryoff, code size)
    /// plus an end offset. Code sizes of 0 get no SP-delta table.
    pub(crate) fn synth(
        version: PclnVersion,
        text_start: u64,
        funcs: &[(&str, u64, u64)],
        end: u64,
    ) -> Vec<u8> {
        let ps = 8u64;
        let magic = match version {
            PclnVersion::Go116 => MAGIC_GO116,
            PclnVersion::Go118 => MAGIC_GO118,
            PclnVersion::Go120 => MAGIC_GO120,
        };
        let new = version.uses_text_start();
        let words = if new { 8 } else { 7 };
        let hdr_size = 8 + ps * words;
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (n, _, _) in funcs {
            name_offs.push(names.len() as u64);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        // pctab: a leading pad byte (offset 0 means "no table"), then one
        // table per function: value +1 over `size` bytes, then the end mark.
        let mut pctab = vec![0u8];
        let mut pcsp_offs = Vec::new();
        for (_, _, size) in funcs {
            if *size == 0 {
                pcsp_offs.push(0u32);
                continue;
            }
            pcsp_offs.push(pctab.len() as u32);
            pctab.push(2);
            let mut v = *size;
            while v >= 0x80 {
                pctab.push((v as u8) | 0x80);
                v >>= 7;
            }
            pctab.push(v as u8);
            pctab.push(0);
        }
        let funcname_offset = hdr_size;
        let cu_offset = funcname_offset + names.len() as u64;
        let pctab_offset = cu_offset;
        let pcln_offset = pctab_offset + pctab.len() as u64;
        let nfunc = funcs.len() as u64;
        let entry_size = if new { 8 } else { 16 };
        let ftab_len = (nfunc + 1) * entry_size;
        let func_size = if new { 44 } else { 48 };

        let mut d = Vec::new();
        d.extend_from_slice(&magic.to_le_bytes());
        d.extend_from_slice(&[0, 0, 1, 8]);
        let mut hw = vec![nfunc, 1];
        if new {
            hw.push(text_start);
        }
        hw.extend_from_slice(&[
            funcname_offset,
            cu_offset,
            cu_offset,
            pctab_offset,
            pcln_offset,
        ]);
        for w in hw {
            d.extend_from_slice(&w.to_le_bytes());
        }
        d.extend_from_slice(&names);
        d.extend_from_slice(&pctab);
        let put = |d: &mut Vec<u8>, v: u64| {
            if new {
                d.extend_from_slice(&(v as u32).to_le_bytes());
            } else {
                d.extend_from_slice(&v.to_le_bytes());
            }
        };
        let entry_val = |off: u64| if new { off } else { text_start + off };
        for (i, (_, off, _)) in funcs.iter().enumerate() {
            put(&mut d, entry_val(*off));
            put(&mut d, ftab_len + i as u64 * func_size);
        }
        put(&mut d, entry_val(end));
        put(&mut d, 0);
        for (i, (_, off, _)) in funcs.iter().enumerate() {
            let start = d.len();
            put(&mut d, entry_val(*off));
            d.extend_from_slice(&(name_offs[i] as u32).to_le_bytes());
            d.extend_from_slice(&[0; 8]); // args, deferreturn
            d.extend_from_slice(&pcsp_offs[i].to_le_bytes());
            d.resize(start + func_size as usize, 0);
        }
        d
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
