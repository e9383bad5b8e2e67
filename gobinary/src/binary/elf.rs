//! A small, bounds-checked reader for 64-bit little-endian ELF files: program
//! headers (segments), section headers, `.symtab` and `R_*_RELATIVE`
//! dynamic relocations. Never panics on malformed input.

use std::collections::HashMap;

use super::bytes::{NameTable, cstr, slice, u8_at, u16_le, u32_le, u64_le};

pub const ET_DYN: u16 = 3;
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;

pub const PT_LOAD: u32 = 1;
pub const PT_DYNAMIC: u32 = 2;
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;

pub const SHT_SYMTAB: u32 = 2;
pub const SHT_NOBITS: u32 = 8;
pub const STT_FUNC: u8 = 2;

const DT_NULL: u64 = 0;
const DT_RELA: u64 = 7;
const DT_RELASZ: u64 = 8;
const DT_RELAENT: u64 = 9;
const R_X86_64_RELATIVE: u32 = 8;
const R_AARCH64_RELATIVE: u32 = 1027;

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const SHDR_SIZE: u64 = 64;
const SYM_SIZE: u64 = 24;
const RELA_SIZE: u64 = 24;
/// Longest symbol name we accept (Go generic instantiations can be long).
const MAX_NAME: usize = 1 << 16;
/// Longest section name we accept.
const MAX_SECTION_NAME: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Malformed(String),
}

fn malformed(msg: impl Into<String>) -> ElfError {
    ElfError::Malformed(msg.into())
}

/// One program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

impl Segment {
    pub fn is_load(&self) -> bool {
        self.p_type == PT_LOAD
    }
    pub fn is_exec(&self) -> bool {
        self.is_load() && self.flags & PF_X != 0
    }
    pub fn is_writable(&self) -> bool {
        self.is_load() && self.flags & PF_W != 0
    }
    /// Whether `vaddr` lies in the part of the segment backed by file bytes.
    pub fn contains_file_vaddr(&self, vaddr: u64) -> bool {
        vaddr >= self.vaddr && vaddr - self.vaddr < self.filesz
    }
    /// File offset of `vaddr`, when it is file-backed in this segment.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        if self.contains_file_vaddr(vaddr) {
            self.offset.checked_add(vaddr - self.vaddr)
        } else {
            None
        }
    }
}

/// One section header (with its name resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub sh_type: u32,
    pub flags: u64,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    pub link: u32,
}

/// One `.symtab` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub kind: u8,
    pub value: u64,
    pub size: u64,
}

/// The parsed layout of an ELF file. Holds no reference to the bytes.
#[derive(Debug, Clone)]
pub struct Elf {
    pub e_type: u16,
    pub machine: u16,
    pub segments: Vec<Segment>,
    pub sections: Vec<Section>,
}

impl Elf {
    /// Parses the ELF header, program headers and section headers. Accepts
    /// only ELF64 little-endian files; a file with no section headers is fine.
    pub fn parse(data: &[u8]) -> Result<Elf, ElfError> {
        if data.get(..4) != Some(&b"\x7fELF"[..]) {
            return Err(ElfError::NotElf);
        }
        let class = u8_at(data, 4).ok_or(ElfError::NotElf)?;
        let encoding = u8_at(data, 5).ok_or(ElfError::NotElf)?;
        if class != 2 {
            return Err(ElfError::Unsupported(format!(
                "{}-bit ELF",
                if class == 1 { "32" } else { "unknown" }
            )));
        }
        if encoding != 1 {
            return Err(ElfError::Unsupported("big-endian ELF".into()));
        }
        if (data.len() as u64) < EHDR_SIZE {
            return Err(malformed("ELF header truncated"));
        }
        let rd16 = |off| u16_le(data, off).ok_or_else(|| malformed("ELF header truncated"));
        let rd64 = |off| u64_le(data, off).ok_or_else(|| malformed("ELF header truncated"));
        let e_type = rd16(16)?;
        let machine = rd16(18)?;
        let phoff = rd64(32)?;
        let shoff = rd64(40)?;
        let phentsize = u64::from(rd16(54)?);
        let mut phnum = u64::from(rd16(56)?);
        let shentsize = u64::from(rd16(58)?);
        let mut shnum = u64::from(rd16(60)?);
        let mut shstrndx = u64::from(rd16(62)?);

        // Extended numbering lives in section header 0.
        if shoff != 0 && (shnum == 0 || phnum == 0xffff || shstrndx == 0xffff) {
            let sh0 = slice(data, shoff, SHDR_SIZE)
                .ok_or_else(|| malformed("section header table is past the end of the file"))?;
            if shnum == 0 {
                shnum = u64_le(sh0, 32).unwrap_or(0);
            }
            if shstrndx == 0xffff {
                shstrndx = u64::from(u32_le(sh0, 40).unwrap_or(0));
            }
            if phnum == 0xffff {
                phnum = u64::from(u32_le(sh0, 44).unwrap_or(0));
            }
        }

        let mut segments = Vec::new();
        if phnum > 0 {
            if phentsize < PHDR_SIZE {
                return Err(malformed(format!("bad program header size {phentsize}")));
            }
            let table_len = phnum
                .checked_mul(phentsize)
                .ok_or_else(|| malformed("program header table size overflows"))?;
            let table = slice(data, phoff, table_len)
                .ok_or_else(|| malformed("program header table is past the end of the file"))?;
            for i in 0..phnum {
                let base = i * phentsize; // < table_len, cannot overflow
                let get32 = |o: u64| u32_le(table, base + o).unwrap_or(0);
                let get64 = |o: u64| u64_le(table, base + o).unwrap_or(0);
                let seg = Segment {
                    p_type: get32(0),
                    flags: get32(4),
                    offset: get64(8),
                    vaddr: get64(16),
                    filesz: get64(32),
                    memsz: get64(40),
                };
                if seg.is_load() && slice(data, seg.offset, seg.filesz).is_none() {
                    return Err(malformed(format!(
                        "segment at file offset {:#x} (size {:#x}) extends past the end of the \
                         file ({:#x} bytes): the file is truncated",
                        seg.offset,
                        seg.filesz,
                        data.len()
                    )));
                }
                segments.push(seg);
            }
        }

        let mut sections = Vec::new();
        if shoff != 0 && shnum > 0 {
            if shentsize < SHDR_SIZE {
                return Err(malformed(format!("bad section header size {shentsize}")));
            }
            let table_len = shnum
                .checked_mul(shentsize)
                .ok_or_else(|| malformed("section header table size overflows"))?;
            let table = slice(data, shoff, table_len).ok_or_else(|| {
                malformed("section header table is past the end of the file: the file is truncated")
            })?;
            let mut raw = Vec::new();
            for i in 0..shnum {
                let base = i * shentsize;
                let get32 = |o: u64| u32_le(table, base + o).unwrap_or(0);
                let get64 = |o: u64| u64_le(table, base + o).unwrap_or(0);
                raw.push((
                    get32(0),
                    Section {
                        name: String::new(),
                        sh_type: get32(4),
                        flags: get64(8),
                        addr: get64(16),
                        offset: get64(24),
                        size: get64(32),
                        link: get32(40),
                    },
                ));
            }
            let strtab = usize::try_from(shstrndx)
                .ok()
                .and_then(|i| raw.get(i))
                .and_then(|(_, s)| slice(data, s.offset, s.size));
            for (name_off, mut sec) in raw {
                if let Some(strtab) = strtab
                    && let Some(name) = cstr(strtab, u64::from(name_off), MAX_SECTION_NAME)
                {
                    sec.name = String::from_utf8_lossy(name).into_owned();
                }
                sections.push(sec);
            }
        }

        Ok(Elf {
            e_type,
            machine,
            segments,
            sections,
        })
    }

    pub fn is_pie(&self) -> bool {
        self.e_type == ET_DYN
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The file bytes of a section (`None` for `SHT_NOBITS` or out of range).
    pub fn section_data<'a>(&self, data: &'a [u8], sec: &Section) -> Option<&'a [u8]> {
        if sec.sh_type == SHT_NOBITS {
            return None;
        }
        slice(data, sec.offset, sec.size)
    }

    pub fn load_segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.is_load())
    }

    /// The file bytes of a segment.
    pub fn segment_data<'a>(&self, data: &'a [u8], seg: &Segment) -> Option<&'a [u8]> {
        slice(data, seg.offset, seg.filesz)
    }

    /// The loadable segment whose file-backed part contains `vaddr`.
    pub fn load_segment_for(&self, vaddr: u64) -> Option<&Segment> {
        self.load_segments().find(|s| s.contains_file_vaddr(vaddr))
    }

    /// The executable loadable segment whose file-backed part contains `vaddr`.
    pub fn exec_segment_for(&self, vaddr: u64) -> Option<&Segment> {
        self.load_segments()
            .find(|s| s.is_exec() && s.contains_file_vaddr(vaddr))
    }

    /// `len` file bytes at virtual address `vaddr` (within one PT_LOAD).
    pub fn read_vaddr<'a>(&self, data: &'a [u8], vaddr: u64, len: u64) -> Option<&'a [u8]> {
        let seg = self.load_segment_for(vaddr)?;
        let avail = seg.filesz - (vaddr - seg.vaddr);
        if len > avail {
            return None;
        }
        slice(data, seg.file_offset(vaddr)?, len)
    }

    /// File bytes from `vaddr` to the end of the file-backed part of its PT_LOAD.
    pub fn read_vaddr_to_segment_end<'a>(&self, data: &'a [u8], vaddr: u64) -> Option<&'a [u8]> {
        let seg = self.load_segment_for(vaddr)?;
        let avail = seg.filesz - (vaddr - seg.vaddr);
        slice(data, seg.file_offset(vaddr)?, avail)
    }

    /// All entries of every `SHT_SYMTAB` section (not the dynamic symbols).
    pub fn symbols(&self, data: &[u8]) -> Vec<Symbol> {
        let mut out = Vec::new();
        for sec in self.sections.iter().filter(|s| s.sh_type == SHT_SYMTAB) {
            let Some(table) = self.section_data(data, sec) else {
                continue;
            };
            let strtab = usize::try_from(sec.link)
                .ok()
                .and_then(|i| self.sections.get(i))
                .and_then(|s| self.section_data(data, s));
            let Some(strtab) = strtab else { continue };
            let mut strtab = NameTable::new(strtab, MAX_NAME);
            let count = table.len() as u64 / SYM_SIZE;
            out.reserve(usize::try_from(count).unwrap_or(0));
            for i in 0..count {
                let base = i * SYM_SIZE;
                let (Some(name_off), Some(info), Some(value), Some(size)) = (
                    u32_le(table, base),
                    u8_at(table, base + 4),
                    u64_le(table, base + 8),
                    u64_le(table, base + 16),
                ) else {
                    break;
                };
                let name = strtab.get(u64::from(name_off)).unwrap_or(&[]);
                out.push(Symbol {
                    name: String::from_utf8_lossy(name).into_owned(),
                    kind: info & 0xf,
                    value,
                    size,
                });
            }
        }
        out
    }

    /// `R_*_RELATIVE` dynamic relocations (found through `PT_DYNAMIC`):
    /// target address -> value the loader writes there (before adding the
    /// load bias). Some linkers (e.g. GNU ld on arm64) leave zeros in the file
    /// at those places, so reading pointers in PIE data must consult these.
    pub fn relative_relocations(&self, data: &[u8]) -> HashMap<u64, u64> {
        let mut out = HashMap::new();
        let reloc_type = match self.machine {
            EM_X86_64 => R_X86_64_RELATIVE,
            EM_AARCH64 => R_AARCH64_RELATIVE,
            _ => return out,
        };
        let Some(dynamic) = self.segments.iter().find(|s| s.p_type == PT_DYNAMIC) else {
            return out;
        };
        let Some(dyn_data) = slice(data, dynamic.offset, dynamic.filesz) else {
            return out;
        };
        let (mut rela, mut relasz, mut relaent) = (None, None, RELA_SIZE);
        for entry in dyn_data.chunks_exact(16) {
            let tag = u64_le(entry, 0).unwrap_or(DT_NULL);
            let val = u64_le(entry, 8).unwrap_or(0);
            match tag {
                DT_NULL => break,
                DT_RELA => rela = Some(val),
                DT_RELASZ => relasz = Some(val),
                DT_RELAENT => relaent = val,
                _ => {}
            }
        }
        let (Some(rela), Some(relasz)) = (rela, relasz) else {
            return out;
        };
        if relaent < RELA_SIZE {
            return out;
        }
        let Some(all) = self.read_vaddr_to_segment_end(data, rela) else {
            return out;
        };
        let len = usize::try_from(relasz).unwrap_or(usize::MAX).min(all.len());
        let Some(table) = all.get(..len) else {
            return out;
        };
        let count = table.len() as u64 / relaent;
        for i in 0..count {
            let base = i * relaent;
            let (Some(offset), Some(info), Some(addend)) = (
                u64_le(table, base),
                u64_le(table, base + 8),
                u64_le(table, base + 16),
            ) else {
                break;
            };
            if (info & 0xffff_ffff) as u32 == reloc_type {
                out.insert(offset, addend);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one PT_LOAD and no sections.
    fn tiny_elf() -> Vec<u8> {
        let mut d = vec![0u8; 0x1000];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[16..18].copy_from_slice(&2u16.to_le_bytes());
        d[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        d[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        d[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        d[ph + 4..ph + 8].copy_from_slice(&(PF_X | 4).to_le_bytes());
        d[ph + 8..ph + 16].copy_from_slice(&0u64.to_le_bytes());
        d[ph + 16..ph + 24].copy_from_slice(&0x400000u64.to_le_bytes());
        d[ph + 32..ph + 40].copy_from_slice(&0x1000u64.to_le_bytes());
        d[ph + 40..ph + 48].copy_from_slice(&0x1000u64.to_le_bytes());
        d
    }

    #[test]
    fn parses_minimal_elf() {
        let d = tiny_elf();
        let elf = Elf::parse(&d).unwrap();
        assert_eq!(elf.machine, EM_X86_64);
        assert_eq!(elf.segments.len(), 1);
        assert!(elf.sections.is_empty());
        assert_eq!(
            elf.exec_segment_for(0x400010)
                .unwrap()
                .file_offset(0x400010),
            Some(0x10)
        );
        assert!(elf.exec_segment_for(0x401000).is_none());
        assert_eq!(
            elf.read_vaddr(&d, 0x400ff0, 0x10).map(|s| s.len()),
            Some(0x10)
        );
        assert!(elf.read_vaddr(&d, 0x400ff0, 0x11).is_none());
        assert!(elf.symbols(&d).is_empty());
        assert!(elf.relative_relocations(&d).is_empty());
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(Elf::parse(b"hello").unwrap_err(), ElfError::NotElf);
        assert_eq!(Elf::parse(b"").unwrap_err(), ElfError::NotElf);
        assert!(matches!(
            Elf::parse(b"\x7fELF\x01\x01").unwrap_err(),
            ElfError::Unsupported(_)
        ));
        assert!(matches!(
            Elf::parse(b"\x7fELF\x02\x01").unwrap_err(),
            ElfError::Malformed(_)
        ));
        let mut d = tiny_elf();
        d[56..58].copy_from_slice(&0xfffeu16.to_le_bytes());
        assert!(matches!(
            Elf::parse(&d).unwrap_err(),
            ElfError::Malformed(_)
        ));
        let mut d = tiny_elf();
        d[64 + 32..64 + 40].copy_from_slice(&0x2000u64.to_le_bytes()); // filesz > file
        assert!(matches!(
            Elf::parse(&d).unwrap_err(),
            ElfError::Malformed(_)
        ));
        let mut d = tiny_elf();
        d[40..48].copy_from_slice(&u64::MAX.to_le_bytes()); // shoff
        d[60..62].copy_from_slice(&3u16.to_le_bytes());
        assert!(matches!(
            Elf::parse(&d).unwrap_err(),
            ElfError::Malformed(_)
        ));
    }
}
