//! Writing synthetic Go function tables (pclntab), for tests and fuzz seeds.
//!
//! One writer, so that the unit tests of the reader and the fuzz seed
//! generator (`fuzz/examples/gen_seeds.rs`) build tables the same way, from
//! the same layout tables the reader uses ([`FuncLayout`]). Compiled for this
//! crate's own tests and behind the `synth` cargo feature; never part of a
//! normal build.
//!
//! A table holds what the reader decodes: the header, a name table, a one
//! entry `cutab` and `filetab`, one SP-delta table per function with a known
//! code size (so the reader can recover the exact size), the function table
//! with its end-of-text pair, and one `_func` record per function (fixed part
//! only: no pcdata, no funcdata).

use crate::binary::pclntab::{AddrWidth, FieldOffset, FuncLayout, PclnVersion};

/// One function of a synthetic table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthFunction<'a> {
    pub name: &'a str,
    /// Link-time entry address.
    pub entry: u64,
    /// Exact code size, recorded as an SP-delta table; `None` (or a size that
    /// is not a multiple of the instruction quantum) writes no table.
    pub code_size: Option<u64>,
}

/// What to write.
#[derive(Debug, Clone)]
pub struct PclntabSpec<'a> {
    pub version: PclnVersion,
    /// 4 or 8.
    pub ptr_size: u8,
    /// Instruction size quantum: 1 (x86), 4 (arm64).
    pub min_lc: u8,
    /// Base of the 32-bit entry offsets of Go 1.18+ tables (Go 1.16-1.17
    /// tables hold absolute entries and ignore it).
    pub text_start: u64,
    /// The header's textStart word (Go 1.18+): usually `text_start`; 0 as
    /// Go 1.26+ writes it.
    pub header_text_start: u64,
    /// In table order (the reader requires entry order; out-of-order input is
    /// written as given, to test that).
    pub funcs: &'a [SynthFunction<'a>],
    /// End of text: the entry of the table's closing pair.
    pub end: u64,
}

/// A written table and where its parts are (offsets from its start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthPclntab {
    pub bytes: Vec<u8>,
    pub funcname_offset: u64,
    pub pcln_offset: u64,
    /// Offset of the header's textStart word (Go 1.18+).
    pub text_start_field: Option<u64>,
}

/// Why a table cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SynthError {
    #[error("pointer size {0} is not 4 or 8")]
    BadPtrSize(u8),
    #[error("instruction size quantum {0} is not 1, 2 or 4")]
    BadMinLc(u8),
    #[error(
        "address {addr:#x} is not representable in this layout (below the text start {text_start:#x}, or too far above it)"
    )]
    AddressOutOfRange { addr: u64, text_start: u64 },
    #[error("the table is too large for its {0} fields")]
    TooLarge(&'static str),
}

/// Writes the table described by `spec`.
pub fn write_pclntab(spec: &PclntabSpec<'_>) -> Result<SynthPclntab, SynthError> {
    let ps = spec.ptr_size;
    if !matches!(ps, 4 | 8) {
        return Err(SynthError::BadPtrSize(ps));
    }
    if !matches!(spec.min_lc, 1 | 2 | 4) {
        return Err(SynthError::BadMinLc(spec.min_lc));
    }
    let layout: &FuncLayout = spec.version.func_layout();
    let new = spec.version.uses_text_start();
    let words: u64 = if new { 8 } else { 7 };
    let header_size = 8 + u64::from(ps) * words;

    let mut names = Vec::new();
    let mut name_offs = Vec::new();
    for f in spec.funcs {
        name_offs.push(u32_field(names.len() as u64, "name offset")?);
        names.extend_from_slice(f.name.as_bytes());
        names.push(0);
    }
    // pctab: offset 0 means "no table", so it starts with a pad byte. Each
    // table: SP delta +8 (zig-zag 0x10) over the code size, then the end mark.
    let mut pctab = vec![0u8];
    let mut pcsp = Vec::new();
    let quantum = u64::from(spec.min_lc);
    for f in spec.funcs {
        match f.code_size {
            Some(size) if size > 0 && size % quantum == 0 => {
                pcsp.push(u32_field(pctab.len() as u64, "pcsp")?);
                pctab.push(0x10);
                put_uvarint(&mut pctab, size / quantum);
                pctab.push(0);
            }
            _ => pcsp.push(0),
        }
    }
    let funcname_offset = header_size;
    let cu_offset = funcname_offset + names.len() as u64;
    let filetab_offset = cu_offset + 4;
    let pctab_offset = filetab_offset + 4;
    let pcln_offset = (pctab_offset + pctab.len() as u64).next_multiple_of(u64::from(ps));
    let nfunc = spec.funcs.len() as u64;
    let field = layout.functab_field.size(ps);
    let functab_len = (nfunc + 1) * 2 * field;
    let func_size = layout.fixed_size.at(ps);

    let mut out = Vec::new();
    out.extend_from_slice(&spec.version.magic().to_le_bytes());
    out.extend_from_slice(&[0, 0, spec.min_lc, ps]);
    let mut header = vec![nfunc, 1];
    if new {
        header.push(spec.header_text_start);
    }
    header.extend([
        funcname_offset,
        cu_offset,
        filetab_offset,
        pctab_offset,
        pcln_offset,
    ]);
    for w in header {
        put(&mut out, AddrWidth::Word, ps, w, "header")?;
    }
    out.extend_from_slice(&names);
    out.extend_from_slice(&[0; 4]); // cutab: one entry
    out.extend_from_slice(&[0; 4]); // filetab
    out.extend_from_slice(&pctab);
    out.resize(usize_of(pcln_offset)?, 0);

    // The entry field's value: absolute (1.16-1.17) or from the text start.
    let entry_value = |addr: u64| -> Result<u64, SynthError> {
        if !new {
            return Ok(addr);
        }
        addr.checked_sub(spec.text_start)
            .filter(|off| u32::try_from(*off).is_ok())
            .ok_or(SynthError::AddressOutOfRange {
                addr,
                text_start: spec.text_start,
            })
    };
    for (i, f) in spec.funcs.iter().enumerate() {
        let funcoff = functab_len + i as u64 * func_size;
        put(
            &mut out,
            layout.functab_field,
            ps,
            entry_value(f.entry)?,
            "entry",
        )?;
        put(&mut out, layout.functab_field, ps, funcoff, "funcoff")?;
    }
    put(
        &mut out,
        layout.functab_field,
        ps,
        entry_value(spec.end)?,
        "entry",
    )?;
    put(&mut out, layout.functab_field, ps, 0, "funcoff")?;

    for (i, f) in spec.funcs.iter().enumerate() {
        let start = out.len();
        out.resize(start + usize_of(func_size)?, 0);
        let record = &mut out[start..];
        let at = |o: FieldOffset| usize_of(o.at(ps));
        let mut entry = Vec::new();
        put(
            &mut entry,
            layout.entry_width,
            ps,
            entry_value(f.entry)?,
            "entry",
        )?;
        write_at(record, at(layout.entry)?, &entry)?;
        write_at(record, at(layout.name_off)?, &name_offs[i].to_le_bytes())?;
        write_at(record, at(layout.pcsp)?, &pcsp[i].to_le_bytes())?;
    }
    Ok(SynthPclntab {
        bytes: out,
        funcname_offset,
        pcln_offset,
        text_start_field: new.then(|| 8 + 2 * u64::from(ps)),
    })
}

fn u32_field(v: u64, what: &'static str) -> Result<u32, SynthError> {
    // Name offsets are read as int32: keep them non-negative.
    u32::try_from(v)
        .ok()
        .filter(|v| *v <= i32::MAX as u32)
        .ok_or(SynthError::TooLarge(what))
}

fn usize_of(v: u64) -> Result<usize, SynthError> {
    usize::try_from(v).map_err(|_| SynthError::TooLarge("offset"))
}

/// Appends `v` as a field of `width`.
fn put(
    out: &mut Vec<u8>,
    width: AddrWidth,
    ptr_size: u8,
    v: u64,
    what: &'static str,
) -> Result<(), SynthError> {
    match width.size(ptr_size) {
        4 => {
            let v = u32::try_from(v).map_err(|_| SynthError::TooLarge(what))?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        _ => out.extend_from_slice(&v.to_le_bytes()),
    }
    Ok(())
}

fn write_at(record: &mut [u8], off: usize, bytes: &[u8]) -> Result<(), SynthError> {
    off.checked_add(bytes.len())
        .and_then(|end| record.get_mut(off..end))
        .ok_or(SynthError::TooLarge("_func"))?
        .copy_from_slice(bytes);
    Ok(())
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::pclntab::{parse_functions_with_sizes, parse_header};

    const FUNCS: &[SynthFunction<'static>] = &[
        SynthFunction {
            name: "runtime.a",
            entry: 0x40_1000,
            code_size: Some(0x3a),
        },
        SynthFunction {
            name: "main.main",
            entry: 0x40_1040,
            code_size: None,
        },
    ];

    fn spec(version: PclnVersion, ptr_size: u8) -> PclntabSpec<'static> {
        PclntabSpec {
            version,
            ptr_size,
            min_lc: 1,
            text_start: 0x40_1000,
            header_text_start: 0x40_1000,
            funcs: FUNCS,
            end: 0x40_1080,
        }
    }

    #[test]
    fn round_trips_through_the_reader() {
        for v in [PclnVersion::Go116, PclnVersion::Go118, PclnVersion::Go120] {
            for ps in [4, 8] {
                let t = write_pclntab(&spec(v, ps)).unwrap();
                let hdr = parse_header(&t.bytes).unwrap();
                assert_eq!((hdr.version, hdr.ptr_size), (v, ps));
                assert_eq!(hdr.funcname_offset, t.funcname_offset);
                assert_eq!(hdr.pcln_offset, t.pcln_offset);
                assert_eq!(hdr.text_start_field_offset(), t.text_start_field);
                let f = parse_functions_with_sizes(&t.bytes, &hdr, 0x40_1000).unwrap();
                let got: Vec<_> = f
                    .iter()
                    .map(|f| (f.func.name.as_str(), f.func.entry, f.func.end, f.code_size))
                    .collect();
                assert_eq!(
                    got,
                    [
                        ("runtime.a", 0x40_1000, 0x40_1040, Some(0x3a)),
                        ("main.main", 0x40_1040, 0x40_1080, None),
                    ],
                    "{v:?} ptr {ps}"
                );
            }
        }
    }

    #[test]
    fn refuses_what_the_layout_cannot_hold() {
        let mut s = spec(PclnVersion::Go120, 8);
        s.text_start = 0x50_0000;
        assert!(matches!(
            write_pclntab(&s),
            Err(SynthError::AddressOutOfRange { .. })
        ));
        let mut s = spec(PclnVersion::Go116, 4);
        s.end = 1 << 40;
        assert_eq!(write_pclntab(&s), Err(SynthError::TooLarge("entry")));
        assert_eq!(
            write_pclntab(&spec(PclnVersion::Go120, 2)),
            Err(SynthError::BadPtrSize(2))
        );
    }
}
