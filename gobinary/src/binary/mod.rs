//! Reading Go executables: ELF layout, build info, function addresses.
//!
//! [`GoBinary`] holds the bytes of a Go ELF executable (x86-64 or aarch64:
//! a read-only mapping of the file, or bytes handed in) and answers: which Go
//! toolchain built it ([`BuildInfo`]), where each function is (link-time
//! virtual addresses, from `.symtab` when present, otherwise from the Go
//! function table `.gopclntab`), which function holds an address, and the
//! file offset of an address (what a uprobe is keyed by).
//!
//! Parsing never panics on malformed input: all reads are bounds-checked and
//! failures are reported as [`BinaryError`].

pub mod buildinfo;
pub(crate) mod bytes;
pub mod elf;
mod moduledata;
pub mod pclntab;
mod sections;
pub mod version;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

pub use buildinfo::{BuildInfo, BuildInfoError, parse_build_info};
pub use moduledata::{
    MODULEDATA_GO116, MODULEDATA_GO118, MODULEDATA_GO120, MODULEDATA_GO127, ModuledataFields,
    ModuledataLayout,
};
pub use pclntab::{FuncLayout, PclnHeader, PclnVersion, PclntabError};
pub use version::GoVersion;

use buildinfo::{BUILDINFO_ALIGN, BUILDINFO_MAGIC};
use elf::{EM_AARCH64, EM_X86_64, Elf, ElfError, STT_FUNC};
use moduledata::PointerReader;

/// Most candidates the section-less scans parse in full. A Go binary has one
/// build info and one function table (two or so if it embeds another Go
/// binary); the cap keeps a crafted file from making the scans quadratic.
const MAX_SCAN_CANDIDATES: usize = 16;

/// CPU architecture of a binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// A function of the binary. Addresses are link-time virtual addresses;
/// `end` is exclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub entry: u64,
    pub end: u64,
}

impl Function {
    /// Size in bytes (`end - entry`, 0 if inverted).
    pub fn size(&self) -> u64 {
        self.end.saturating_sub(self.entry)
    }
}

/// Where the function list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolSource {
    /// The ELF `.symtab` (exact sizes).
    Symtab,
    /// The Go function table (a function ends where the next one starts).
    Pclntab,
}

/// Where the Go function table was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PclntabLocation {
    /// A section of this name (`.gopclntab` or `.data.rel.ro.gopclntab`).
    Section(String),
    /// Found by scanning the segments for the header magic (no dedicated
    /// section: stripped section headers, or external-link PIE before Go 1.26
    /// where it is merged into `.data.rel.ro`).
    Scan,
}

/// How the start of Go text (base of the 1.18+ function offsets) was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextStartSource {
    /// `runtime.firstmoduledata.text`, and the pclntab header agrees.
    ModuledataAndHeader,
    /// `runtime.firstmoduledata.text` only (header has 0: Go 1.26+).
    Moduledata,
    /// Only the pclntab header (moduledata not found).
    Header,
    /// Go 1.16-1.17 tables hold absolute addresses; no text start needed.
    NotNeeded,
}

/// Diagnostics about the Go function table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PclntabInfo {
    /// Link-time address of the table header.
    pub vaddr: u64,
    pub location: PclntabLocation,
    pub header: PclnHeader,
    /// Base address for 1.18+ function offsets (moduledata `text` for 1.16-1.17
    /// when found, else 0).
    pub text_start: u64,
    pub text_start_source: TextStartSource,
    /// Link-time address of `runtime.firstmoduledata`, when found.
    pub moduledata: Option<u64>,
}

/// Errors from reading a Go binary. Messages are single lines meant for users.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not an ELF executable (bad magic): point goalloc at a Linux Go program")]
    NotElf,
    #[error("malformed ELF file: {0}")]
    BadElf(String),
    #[error(
        "unsupported architecture or format: {0}; goalloc supports 64-bit little-endian x86-64 and aarch64 binaries"
    )]
    UnsupportedArch(String),
    #[error(
        "not a Go executable: no .go.buildinfo section; point goalloc at a program built by the Go toolchain"
    )]
    NotGo,
    #[error("corrupt Go build info (.go.buildinfo): {0}")]
    BadBuildInfo(#[from] BuildInfoError),
    #[error(
        "no Go function table (.gopclntab) found: the binary may be packed (e.g. with UPX) or corrupt; use the original binary"
    )]
    NoPclntab,
    #[error("cannot read the Go function table (.gopclntab): {0}")]
    BadPclntab(#[from] PclntabError),
    #[error(
        "cannot find where Go code starts: the function table has no text start and runtime.firstmoduledata was not found; this binary layout is not supported"
    )]
    NoTextStart,
    #[error(
        "inconsistent Go text start: the function table says {header:#x} but runtime.firstmoduledata says {moduledata:#x}; the binary may be corrupt"
    )]
    TextStartMismatch { header: u64, moduledata: u64 },
    #[error(
        "Go function addresses {first:#x}..{last:#x} lie outside the executable segments (wrong text start?); refusing to guess"
    )]
    FunctionsOutsideText { first: u64, last: u64 },
    #[error("address {0:#x} is not in an executable segment of the binary")]
    AddressNotMapped(u64),
    #[error(
        "function {name} ({entry:#x}..{end:#x}) does not lie within one executable segment of the file"
    )]
    BadFunctionRange { name: String, entry: u64, end: u64 },
}

impl From<ElfError> for BinaryError {
    fn from(e: ElfError) -> Self {
        match e {
            ElfError::NotElf => BinaryError::NotElf,
            ElfError::Unsupported(s) => BinaryError::UnsupportedArch(s),
            ElfError::Malformed(s) => BinaryError::BadElf(s),
        }
    }
}

/// An executable file mapped read-only into memory: the OS pages in only
/// what is read (headers, the function table, a few functions' code), so a
/// 50 MB binary costs little memory, and the agent may hold many.
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps the file at `path` (`/proc/PID/exe` works), read-only and
    /// private.
    pub fn open(path: &Path) -> Result<MappedFile, BinaryError> {
        let io = |source| BinaryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: `Mmap` hands out a `&[u8]` that another process could
        // change (or cut short) under us by writing the file; memmap2 cannot
        // rule that out, hence `unsafe`. Why that is acceptable here:
        // - we never write: the mapping is read-only and MAP_PRIVATE;
        // - every read of these bytes is bounds-checked against the length
        //   fixed when mapping, and no byte is trusted (the parsers are
        //   fuzzed on arbitrary input), so content changed mid-parse yields
        //   wrong values or a parse error, as reading a file while it is
        //   rewritten would, never an out-of-bounds access;
        // - the files are executables, normally of running processes, which
        //   Linux refuses to open for writing (ETXTBSY); installers and image
        //   layers replace files by rename, which leaves this mapping on the
        //   old inode. Truncating the file in place would make reads of the
        //   lost pages fault (SIGBUS): that needs a writer on a file being
        //   executed, which already breaks the running process and goalloc's
        //   uprobes on it (see README, "rewritten in place").
        let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) };
        Ok(MappedFile {
            map: map.map_err(io)?,
        })
    }
}

impl Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

/// Where the bytes of a [`GoBinary`] live.
enum Storage {
    /// Handed in by the caller ([`GoBinary::parse`]: tests, fuzzing).
    Owned(Vec<u8>),
    /// Mapped from the file ([`GoBinary::open`]).
    Mapped(MappedFile),
}

impl Deref for Storage {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped(m) => m,
        }
    }
}

/// A parsed Go executable. Holds the file bytes (owned or mapped).
pub struct GoBinary {
    data: Storage,
    elf: Elf,
    arch: Arch,
    build_info: BuildInfo,
    source: SymbolSource,
    /// One function per name, sorted by entry.
    functions: Vec<Function>,
    by_name: HashMap<String, usize>,
    /// Every function of the source (names may repeat), sorted by entry,
    /// non-empty and non-overlapping: what [`GoBinary::function_at`] searches.
    by_addr: Vec<Function>,
}

impl fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoBinary")
            .field("size", &self.data.len())
            .field("arch", &self.arch)
            .field("go_version", &self.build_info.go_version)
            .field("pie", &self.elf.is_pie())
            .field("symbol_source", &self.source)
            .field("functions", &self.functions.len())
            .finish()
    }
}

impl GoBinary {
    /// Maps and parses the file at `path` (`/proc/PID/exe` works).
    pub fn open(path: &Path) -> Result<GoBinary, BinaryError> {
        GoBinary::from_mapped(MappedFile::open(path)?)
    }

    /// Parses an executable already mapped (e.g. after a cheap look at its
    /// headers).
    pub fn from_mapped(file: MappedFile) -> Result<GoBinary, BinaryError> {
        GoBinary::from_storage(Storage::Mapped(file))
    }

    /// Parses the bytes of an executable.
    pub fn parse(data: Vec<u8>) -> Result<GoBinary, BinaryError> {
        GoBinary::from_storage(Storage::Owned(data))
    }

    fn from_storage(data: Storage) -> Result<GoBinary, BinaryError> {
        let elf = Elf::parse(&data)?;
        let arch = match elf.machine {
            EM_X86_64 => Arch::X86_64,
            EM_AARCH64 => Arch::Aarch64,
            m => return Err(BinaryError::UnsupportedArch(machine_name(m))),
        };
        let build_info = read_build_info(&elf, &data)?;

        let symtab = symtab_functions(&elf, &data);
        let (source, all, by_addr) = if symtab.iter().any(|f| f.name.starts_with("runtime.")) {
            let by_addr = address_index(symtab.clone());
            (SymbolSource::Symtab, symtab, by_addr)
        } else {
            let (_, funcs) = load_pclntab(&elf, &data)?;
            let by_addr = address_index(funcs.iter().map(|f| f.func.clone()).collect());
            (SymbolSource::Pclntab, one_per_name_sized(funcs), by_addr)
        };
        let functions = one_per_name(all);
        let by_name = functions
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        Ok(GoBinary {
            data,
            elf,
            arch,
            build_info,
            source,
            functions,
            by_name,
            by_addr,
        })
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn build_info(&self) -> &BuildInfo {
        &self.build_info
    }

    /// Shortcut for `build_info().version`.
    pub fn go_version(&self) -> GoVersion {
        self.build_info.version
    }

    /// Whether the file is position independent (ELF type `ET_DYN`).
    pub fn is_pie(&self) -> bool {
        self.elf.is_pie()
    }

    /// The loadable segments (to find the load bias in a process).
    pub fn load_segments(&self) -> impl Iterator<Item = &elf::Segment> {
        self.elf.load_segments()
    }

    /// The raw file bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// `Symtab` when `.symtab` has Go functions, else `Pclntab`.
    pub fn symbol_source(&self) -> SymbolSource {
        self.source
    }

    /// The function with exactly this name. When a name occurs several times
    /// (ABI0 wrapper and real body share a name in pclntab, e.g.
    /// `runtime.newproc`), the largest body is returned.
    pub fn lookup(&self, name: &str) -> Option<&Function> {
        self.by_name.get(name).and_then(|&i| self.functions.get(i))
    }

    /// All functions, one per name (as [`lookup`](Self::lookup) picks), by address.
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.functions.iter()
    }

    /// The function whose code holds `addr` (a link-time address):
    /// `entry <= addr < end`. Unlike [`lookup`](Self::lookup), every entry
    /// counts, so an address in an ABI0 wrapper finds the wrapper. With
    /// `.symtab` a function ends at its exact size (alignment padding
    /// belongs to none); from the Go function table, where the next begins.
    /// `None` outside every function. O(log n).
    pub fn function_at(&self, addr: u64) -> Option<&Function> {
        let i = self.by_addr.partition_point(|f| f.entry <= addr);
        self.by_addr.get(i.checked_sub(1)?).filter(|f| addr < f.end)
    }

    /// The functions [`function_at`](Self::function_at) searches: every
    /// entry of the source (names may repeat), by address, non-empty and
    /// non-overlapping (where `.symtab` entries overlap, e.g. aliases, the
    /// lowest, then largest, then first by name is kept).
    pub fn functions_by_address(&self) -> impl Iterator<Item = &Function> {
        self.by_addr.iter()
    }

    /// File offset of `vaddr`: `vaddr - p_vaddr + p_offset` of the executable
    /// PT_LOAD containing it (what uprobes are keyed by).
    pub fn file_offset(&self, vaddr: u64) -> Result<u64, BinaryError> {
        self.elf
            .exec_segment_for(vaddr)
            .and_then(|s| s.file_offset(vaddr))
            .ok_or(BinaryError::AddressNotMapped(vaddr))
    }

    /// The bytes of `f` (`entry..end`) from the file.
    pub fn code(&self, f: &Function) -> Result<&[u8], BinaryError> {
        let bad = || BinaryError::BadFunctionRange {
            name: f.name.clone(),
            entry: f.entry,
            end: f.end,
        };
        let seg = self
            .elf
            .exec_segment_for(f.entry)
            .ok_or(BinaryError::AddressNotMapped(f.entry))?;
        if f.end < f.entry || f.end - seg.vaddr > seg.filesz {
            return Err(bad());
        }
        let start = seg.file_offset(f.entry).ok_or_else(bad)?;
        bytes::slice(&self.data, start, f.end - f.entry).ok_or_else(bad)
    }

    /// Functions from the Go function table regardless of `.symtab`, one per
    /// name (largest body, as [`lookup`](Self::lookup) picks), by address.
    pub fn pclntab_functions(&self) -> Result<Vec<Function>, BinaryError> {
        load_pclntab(&self.elf, &self.data).map(|(_, f)| one_per_name_sized(f))
    }

    /// Every entry of the Go function table, in table order, including
    /// repeated names (ABI0 wrappers).
    pub fn pclntab_functions_all(&self) -> Result<Vec<Function>, BinaryError> {
        load_pclntab(&self.elf, &self.data).map(|(_, f)| f.into_iter().map(|f| f.func).collect())
    }

    /// Where the Go function table is and how its text start was found.
    pub fn pclntab_info(&self) -> Result<PclntabInfo, BinaryError> {
        load_pclntab(&self.elf, &self.data).map(|(i, _)| i)
    }
}

fn machine_name(m: u16) -> String {
    let name = match m {
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "s390x",
        40 => "32-bit ARM",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => return format!("ELF machine {m}"),
    };
    format!("{name} (ELF machine {m})")
}

/// Go functions from `.symtab` (`STT_FUNC`, size > 0). The Go linker
/// renames an ABI0 function that also has an ABIInternal version to
/// `NAME.abi0` (and, in shared linkage, ABIInternal ones to
/// `NAME.abiinternal`); those suffixes are removed here so that names match
/// the Go function table, where both versions share one name. (The base
/// name is not always in `.symtab`, e.g. `runtime.rt0_go.abi0`.)
fn symtab_functions(elf: &Elf, data: &[u8]) -> Vec<Function> {
    let mut funcs: Vec<Function> = elf
        .symbols(data)
        .into_iter()
        .filter(|s| s.kind == STT_FUNC && s.size > 0 && !s.name.is_empty())
        .filter_map(|s| {
            Some(Function {
                entry: s.value,
                end: s.value.checked_add(s.size)?,
                name: s.name,
            })
        })
        .collect();
    for f in &mut funcs {
        let base = f
            .name
            .strip_suffix(".abi0")
            .or_else(|| f.name.strip_suffix(".abiinternal"));
        if let Some(base) = base.filter(|b| !b.is_empty()) {
            f.name = base.to_string();
        }
    }
    funcs
}

/// Sorts `funcs` by address and drops empty ranges and those overlapping an
/// earlier one (sorted by entry, then largest first), so that a binary search
/// finds at most one function per address.
fn address_index(mut funcs: Vec<Function>) -> Vec<Function> {
    funcs.sort_by(|a, b| {
        a.entry
            .cmp(&b.entry)
            .then_with(|| b.end.cmp(&a.end))
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut end = 0;
    let mut first = true;
    funcs.retain(|f| {
        let keep = f.entry < f.end && (first || f.entry >= end);
        if keep {
            end = f.end;
            first = false;
        }
        keep
    });
    funcs
}

/// Keeps one function per name (the largest; ties go to the lower address),
/// sorted by entry.
pub fn one_per_name(funcs: Vec<Function>) -> Vec<Function> {
    dedup_by_size(funcs.into_iter().map(|f| (f.size(), f)).collect())
}

/// [`one_per_name`] for pclntab entries, comparing exact code sizes (an
/// entry's `end` includes alignment padding, which would make e.g. a 24-byte
/// wrapper and an 8-byte assembly body look the same size).
fn one_per_name_sized(funcs: Vec<pclntab::SizedFunction>) -> Vec<Function> {
    dedup_by_size(
        funcs
            .into_iter()
            .map(|f| (f.code_size.unwrap_or_else(|| f.func.size()), f.func))
            .collect(),
    )
}

fn dedup_by_size(mut funcs: Vec<(u64, Function)>) -> Vec<Function> {
    funcs.sort_by(|(_, a), (_, b)| a.entry.cmp(&b.entry).then_with(|| a.end.cmp(&b.end)));
    let mut best: HashMap<&str, usize> = HashMap::new();
    for (i, (size, f)) in funcs.iter().enumerate() {
        match best.get(f.name.as_str()) {
            Some(&j) if funcs.get(j).is_some_and(|(s, _)| s >= size) => {}
            _ => {
                best.insert(f.name.as_str(), i);
            }
        }
    }
    let mut keep = vec![false; funcs.len()];
    for &i in best.values() {
        if let Some(k) = keep.get_mut(i) {
            *k = true;
        }
    }
    funcs
        .into_iter()
        .zip(keep)
        .filter_map(|((_, f), k)| k.then_some(f))
        .collect()
}

/// Finds and parses the build info: the `.go.buildinfo` section, or the
/// magic at a 16-byte aligned address in a writable segment.
fn read_build_info(elf: &Elf, data: &[u8]) -> Result<BuildInfo, BinaryError> {
    let read = |addr: u64, len: u64| elf.read_vaddr(data, addr, len);
    if let Some(sec) = elf.section(".go.buildinfo") {
        let blob = elf
            .read_vaddr_to_segment_end(data, sec.addr)
            .filter(|b| b.starts_with(BUILDINFO_MAGIC))
            .or_else(|| elf.section_data(data, sec));
        let blob = blob.ok_or(BinaryError::NotGo)?;
        if !blob.starts_with(BUILDINFO_MAGIC) {
            return Err(BinaryError::BadBuildInfo(BuildInfoError::BadMagic));
        }
        return Ok(parse_build_info(blob, read)?);
    }
    let mut first_err = None;
    let mut tried = 0;
    for seg in elf
        .load_segments()
        .filter(|s| s.is_writable() && !s.is_exec())
    {
        let Some(bytes) = elf.segment_data(data, seg) else {
            continue;
        };
        let skip = (BUILDINFO_ALIGN - seg.vaddr % BUILDINFO_ALIGN) % BUILDINFO_ALIGN;
        let mut off = skip;
        while let Some(rest) = bytes::tail(bytes, off) {
            if rest.len() < BUILDINFO_MAGIC.len() {
                break;
            }
            if rest.starts_with(BUILDINFO_MAGIC) {
                tried += 1;
                if tried > MAX_SCAN_CANDIDATES {
                    break;
                }
                match parse_build_info(rest, read) {
                    Ok(bi) => return Ok(bi),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            off += BUILDINFO_ALIGN;
        }
    }
    Err(first_err.map_or(BinaryError::NotGo, BinaryError::BadBuildInfo))
}

/// A pclntab candidate: its address, its bytes (to the end of the section or
/// segment) and its header.
struct Candidate<'a> {
    vaddr: u64,
    bytes: &'a [u8],
    header: PclnHeader,
    location: PclntabLocation,
}

/// Finds the Go function table, determines the text start and lists the
/// functions (all table entries, in table order).
fn load_pclntab(
    elf: &Elf,
    data: &[u8],
) -> Result<(PclntabInfo, Vec<pclntab::SizedFunction>), BinaryError> {
    let relocs = elf.relative_relocations(data);
    let reader_for = |ptr_size| PointerReader {
        elf,
        data,
        relocs: &relocs,
        ptr_size,
    };

    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        let Some(sec) = elf.section(name) else {
            continue;
        };
        let Some(bytes) = elf.section_data(data, sec) else {
            continue;
        };
        let header = pclntab::parse_header(bytes)?;
        let cand = Candidate {
            vaddr: sec.addr,
            bytes,
            header,
            location: PclntabLocation::Section(name.to_string()),
        };
        let md = moduledata::find(&reader_for(header.ptr_size), cand.vaddr, &cand.header);
        return finish(elf, &reader_for(header.ptr_size), cand, md);
    }

    // No dedicated section: scan the loadable segments for the header magic,
    // keeping candidates whose whole table parses.
    let mut too_old = None;
    let mut first_err = None;
    let mut valid: Vec<Candidate<'_>> = Vec::new();
    let mut parsed = 0;
    let mut segs: Vec<_> = elf.load_segments().collect();
    segs.sort_by_key(|s| s.is_exec()); // data segments first
    for seg in segs {
        let Some(seg_bytes) = elf.segment_data(data, seg) else {
            continue;
        };
        if seg.vaddr % 4 != 0 {
            continue;
        }
        for off in pclntab::candidate_offsets(seg_bytes) {
            let (Some(bytes), Some(vaddr)) =
                (bytes::tail(seg_bytes, off), seg.vaddr.checked_add(off))
            else {
                continue;
            };
            let header = match pclntab::parse_header(bytes) {
                Ok(h) => h,
                Err(e @ PclntabError::TooOld(_)) => {
                    too_old.get_or_insert(e);
                    continue;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            // Structural check with a zero base (offsets only).
            parsed += 1;
            if parsed > MAX_SCAN_CANDIDATES {
                break;
            }
            match pclntab::parse_functions(bytes, &header, 0) {
                Ok(f) if f.iter().any(|f| f.name.starts_with("runtime.")) => {}
                Ok(_) => continue,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            }
            valid.push(Candidate {
                vaddr,
                bytes,
                header,
                location: PclntabLocation::Scan,
            });
        }
    }
    // Prefer the table that runtime.firstmoduledata points at (a Go program
    // may embed another Go binary in its data).
    let mut fallback = None;
    for cand in valid {
        let reader = reader_for(cand.header.ptr_size);
        match moduledata::find(&reader, cand.vaddr, &cand.header) {
            Some(md) => return finish(elf, &reader, cand, Some(md)),
            None => {
                fallback.get_or_insert(cand);
            }
        }
    }
    if let Some(cand) = fallback {
        return finish(elf, &reader_for(cand.header.ptr_size), cand, None);
    }
    match (too_old, first_err) {
        (Some(e), _) => Err(e.into()),
        (None, Some(e)) => Err(e.into()),
        (None, None) => Err(BinaryError::NoPclntab),
    }
}

fn finish(
    elf: &Elf,
    reader: &PointerReader<'_>,
    cand: Candidate<'_>,
    md: Option<moduledata::Moduledata>,
) -> Result<(PclntabInfo, Vec<pclntab::SizedFunction>), BinaryError> {
    let mut header = cand.header;
    // In PIE files the textStart word is relocated: prefer the relocation's value.
    if let Some(v) = header
        .text_start_field_offset()
        .and_then(|field| cand.vaddr.checked_add(field))
        .and_then(|a| reader.relocs.get(&a))
    {
        header.text_start = *v;
    }
    let (text_start, source) = if !header.version.uses_text_start() {
        (md.map_or(0, |m| m.text), TextStartSource::NotNeeded)
    } else {
        match (header.text_start, md) {
            (0, Some(m)) => (m.text, TextStartSource::Moduledata),
            (h, Some(m)) if h == m.text => (h, TextStartSource::ModuledataAndHeader),
            (h, Some(m)) => {
                return Err(BinaryError::TextStartMismatch {
                    header: h,
                    moduledata: m.text,
                });
            }
            (0, None) => return Err(BinaryError::NoTextStart),
            (h, None) => (h, TextStartSource::Header),
        }
    };
    let funcs = pclntab::parse_functions_with_sizes(cand.bytes, &header, text_start)?;
    // Cross-check: the functions must lie in executable segments.
    if let (Some(first), Some(last)) = (
        funcs.first().map(|f| &f.func),
        funcs.last().map(|f| &f.func),
    ) {
        let in_text = |a: u64| elf.exec_segment_for(a).is_some();
        let last_byte = last.end.saturating_sub(1).max(last.entry);
        if !in_text(first.entry) || !in_text(last_byte) {
            return Err(BinaryError::FunctionsOutsideText {
                first: first.entry,
                last: last.end,
            });
        }
    }
    let info = PclntabInfo {
        vaddr: cand.vaddr,
        location: cand.location,
        header,
        text_start,
        text_start_source: source,
        moduledata: md.map(|m| m.addr),
    };
    Ok((info, funcs))
}
