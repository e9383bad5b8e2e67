//! The function table as the symbolizer reads it: binary search of the
//! functab by pc, and the fields of one `_func` record (see
//! [`FuncLayout`](crate::binary::FuncLayout)) with its pcdata and funcdata
//! offsets.

use crate::binary::PclnHeader;
use crate::binary::bytes::{cstr, slice, tail, u8_at, u32_le, word};
use crate::binary::pclntab::{AddrWidth, FieldOffset};

use super::SymbolizeError;

/// Longest function or file name accepted.
const MAX_NAME: usize = 1 << 16;

/// The Go function table of one binary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Table<'a> {
    pub data: &'a [u8],
    pub hdr: PclnHeader,
    /// Base of 1.18+ entry offsets.
    pub text_start: u64,
}

/// One `_func` record, the fields the symbolizer needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FuncRecord {
    /// Link-time entry and end (the next function's entry).
    pub entry: u64,
    pub end: u64,
    /// Offset of the record in the table.
    off: u64,
    pub name_off: i32,
    pub pcfile: u32,
    pub pcln: u32,
    npcdata: u32,
    pub cu_offset: u32,
    pub start_line: Option<i32>,
    pub func_id: u8,
    nfuncdata: u8,
}

impl<'a> Table<'a> {
    fn layout(&self) -> &'static crate::binary::FuncLayout {
        self.hdr.version.func_layout()
    }

    fn addr_field(&self, off: u64, width: AddrWidth) -> Option<u64> {
        match width {
            AddrWidth::Word => word(self.data, off, self.hdr.ptr_size, false),
            AddrWidth::U32 => u32_le(self.data, off).map(u64::from),
        }
    }

    /// (entry address, raw entry field, `_func` offset) of functab entry `i`.
    fn functab(&self, i: u64) -> Option<(u64, u64, u64)> {
        let width = self.layout().functab_field;
        let size = width.size(self.hdr.ptr_size);
        let at = self.hdr.pcln_offset.checked_add(i.checked_mul(2 * size)?)?;
        let raw = self.addr_field(at, width)?;
        let funcoff = self.addr_field(at.checked_add(size)?, width)?;
        let entry = if self.hdr.version.uses_text_start() {
            self.text_start.checked_add(raw)?
        } else {
            raw
        };
        Some((entry, raw, funcoff))
    }

    /// The function whose code holds `pc` (`entry <= pc < next entry`), by
    /// binary search of the functab (sorted by the linker; an unsorted,
    /// corrupt table gives a wrong or no answer, never a panic).
    pub fn find(&self, pc: u64) -> Result<FuncRecord, SymbolizeError> {
        let nfunc = self.hdr.nfunc;
        let not_found = SymbolizeError::NotFound(pc);
        let (first, _, _) = self.functab(0).ok_or(not_found.clone())?;
        let (end, _, _) = self.functab(nfunc).ok_or(not_found.clone())?;
        if pc < first || pc >= end {
            return Err(not_found);
        }
        // Invariant: entry(lo) <= pc < entry(hi).
        let (mut lo, mut hi) = (0u64, nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let (e, _, _) = self.functab(mid).ok_or(not_found.clone())?;
            if e <= pc {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (entry, raw, funcoff) = self.functab(lo).ok_or(not_found.clone())?;
        let (next, _, _) = self.functab(lo + 1).ok_or(not_found)?;
        self.record(entry, raw, next, funcoff)
    }

    fn record(
        &self,
        entry: u64,
        raw: u64,
        end: u64,
        funcoff: u64,
    ) -> Result<FuncRecord, SymbolizeError> {
        let bad = |problem| SymbolizeError::BadFunc { entry, problem };
        let l = self.layout();
        let ps = self.hdr.ptr_size;
        let off = self
            .hdr
            .pcln_offset
            .checked_add(funcoff)
            .ok_or_else(|| bad("_func offset overflows"))?;
        let at = |f: FieldOffset| off.checked_add(f.at(ps));
        let u32_field = |f: FieldOffset| {
            at(f)
                .and_then(|o| u32_le(self.data, o))
                .ok_or_else(|| bad("_func is out of range"))
        };
        let u8_field = |f: FieldOffset| {
            at(f)
                .and_then(|o| u8_at(self.data, o))
                .ok_or_else(|| bad("_func is out of range"))
        };
        let func_entry = at(l.entry)
            .and_then(|o| self.addr_field(o, l.entry_width))
            .ok_or_else(|| bad("_func is out of range"))?;
        if func_entry != raw {
            return Err(bad("_func entry does not match the function table"));
        }
        let start_line = match l.start_line {
            Some(f) => Some(u32_field(f)? as i32),
            None => None,
        };
        Ok(FuncRecord {
            entry,
            end,
            off,
            name_off: u32_field(l.name_off)? as i32,
            pcfile: u32_field(l.pcfile)?,
            pcln: u32_field(l.pcln)?,
            npcdata: u32_field(l.npcdata)?,
            cu_offset: u32_field(l.cu_offset)?,
            start_line,
            func_id: u8_field(l.func_id)?,
            nfuncdata: u8_field(l.nfuncdata)?,
        })
    }

    /// The name at `name_off` in funcnametab.
    pub fn func_name(&self, name_off: i32) -> Option<String> {
        let off = u64::try_from(name_off).ok()?;
        let region = self.region(self.hdr.funcname_offset, self.hdr.cu_offset)?;
        let name = cstr(region, off, MAX_NAME)?;
        Some(String::from_utf8_lossy(name).into_owned())
    }

    /// The name of file `fileno` of the compilation unit at `cu_offset`
    /// (`runtime.funcfile`); `None` when cutab marks it absent (^0) or it is
    /// out of range.
    pub fn file_name(&self, cu_offset: u32, fileno: i32) -> Option<String> {
        let fileno = u64::try_from(fileno).ok()?;
        let index = u64::from(cu_offset).checked_add(fileno)?;
        let cutab = self.region(self.hdr.cu_offset, self.hdr.filetab_offset)?;
        let fileoff = u32_le(cutab, index.checked_mul(4)?)?;
        if fileoff == u32::MAX {
            return None;
        }
        let filetab = self.region(self.hdr.filetab_offset, self.hdr.pctab_offset)?;
        let name = cstr(filetab, u64::from(fileoff), MAX_NAME)?;
        Some(String::from_utf8_lossy(name).into_owned())
    }

    /// The pc-value table at offset `pcoff` of pctab (`None` for offset 0,
    /// which means "no table" to the runtime, or out of range).
    pub fn pc_table(&self, pcoff: u32) -> Option<&'a [u8]> {
        if pcoff == 0 {
            return None;
        }
        let pctab = self.region(self.hdr.pctab_offset, self.hdr.pcln_offset)?;
        tail(pctab, u64::from(pcoff))
    }

    /// The pctab offset of pcdata table `i` of `f` (`None` when the function
    /// has fewer tables; the runtime then reports -1).
    pub fn pcdata(&self, f: &FuncRecord, i: u32) -> Option<u32> {
        if i >= f.npcdata {
            return None;
        }
        let fixed = self.layout().fixed_size.at(self.hdr.ptr_size);
        let at = f.off.checked_add(fixed)?.checked_add(u64::from(i) * 4)?;
        u32_le(self.data, at)
    }

    /// The gofunc offset of funcdata `i` of `f` (1.18+ layout: `uint32`
    /// offsets after the pcdata ones; ^0 means absent).
    pub fn funcdata(&self, f: &FuncRecord, i: u8) -> Option<u32> {
        if i >= f.nfuncdata {
            return None;
        }
        let fixed = self.layout().fixed_size.at(self.hdr.ptr_size);
        let at = f
            .off
            .checked_add(fixed)?
            .checked_add(u64::from(f.npcdata) * 4)?
            .checked_add(u64::from(i) * 4)?;
        u32_le(self.data, at).filter(|&v| v != u32::MAX)
    }

    /// `data[start..end]`, clamped to the data.
    fn region(&self, start: u64, end: u64) -> Option<&'a [u8]> {
        let len = end.checked_sub(start)?;
        let avail = (self.data.len() as u64).checked_sub(start)?;
        slice(self.data, start, len.min(avail))
    }
}
