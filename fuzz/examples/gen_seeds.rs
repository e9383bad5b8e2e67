//! Writes the committed fuzz seeds (`fuzz/seeds/<target>/`) from real Go
//! executables. Run through `fuzz/gen-seeds.sh`, which builds the Go inputs;
//! by hand:
//!
//! ```text
//! cargo run --release --example gen_seeds -- OUT_DIR BINARY...
//! ```
//!
//! A real Go executable is 1-50 MB, far too big for libFuzzer to mutate
//! usefully, so for the whole-file targets each binary is *minified*: a new,
//! small ELF file holding only what goalloc reads, at the original addresses:
//!
//! - one executable PT_LOAD per code island: the functions the probe planner
//!   needs (`runtime.mallocgc`, a few size-specialized allocators,
//!   `runtime.newproc1`, `runtime.gdestroy`/`goexit0`) and the first function;
//! - a read-only PT_LOAD with a rebuilt `.gopclntab` that lists only those
//!   functions and the ones right after them (so every kept function keeps its
//!   exact end), with one synthetic SP-delta table per function giving its
//!   exact code size;
//! - a writable PT_LOAD with the original `.go.buildinfo` blob and a
//!   `runtime.firstmoduledata` pointing at the new table.
//!
//! Variants per binary: with section headers (`.gopclntab` found by name),
//! without them (found by scanning), with a `.symtab`, a PIE layout whose
//! pointers are only in `R_*_RELATIVE` relocations (zeros in the file), and a
//! Go 1.16-1.17 layout (absolute function table entries, pointer-style build
//! info). Every minified file is checked: it must parse, and the probe plan
//! must place the same probes at the same addresses as for the original.
//!
//! The other targets get pieces: `.go.buildinfo` blobs (and a pointer-layout
//! blob whose pointers are offsets into itself, as the `build_info` target
//! reads them), rebuilt and truncated function tables, and whole small
//! functions (plus the starts of big ones) for the prologue decoder.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use goalloc_fuzz::binary::elf::{EM_AARCH64, Elf};
use goalloc_fuzz::binary::pclntab::{
    PclnHeader, PclnVersion, SizedFunction, parse_functions_with_sizes,
};
use goalloc_fuzz::binary::{Arch, GoBinary, MODULEDATA_GO116};
use goalloc_fuzz::plan::{PlanOptions, ProbePlan, is_specialized_allocator, plan_for_arch};
use goalloc_fuzz::synth::{PclntabSpec, SynthFunction, SynthPclntab, write_pclntab};

type Result<T> = std::result::Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: gen_seeds OUT_DIR BINARY...");
        std::process::exit(2);
    }
    let out = PathBuf::from(&args[0]);
    let mut seeds = Seeds::new(out);
    let mut failed = false;
    for path in &args[1..] {
        let path = Path::new(path);
        let tag = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match process(&mut seeds, path, &tag) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                failed = true;
            }
        }
    }
    seeds.static_seeds();
    seeds.finish();
    if failed {
        std::process::exit(1);
    }
}

/// Collects seed files per target, skipping duplicates.
struct Seeds {
    out: PathBuf,
    seen: HashSet<(String, Vec<u8>)>,
    files: BTreeMap<String, Vec<(String, usize)>>,
}

impl Seeds {
    fn new(out: PathBuf) -> Self {
        Seeds {
            out,
            seen: HashSet::new(),
            files: BTreeMap::new(),
        }
    }

    fn add(&mut self, target: &str, name: &str, bytes: &[u8]) {
        if bytes.is_empty() || !self.seen.insert((target.to_string(), bytes.to_vec())) {
            return;
        }
        let dir = self.out.join(target);
        std::fs::create_dir_all(&dir).expect("create seed dir");
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::fs::write(dir.join(&name), bytes).expect("write seed");
        self.files
            .entry(target.to_string())
            .or_default()
            .push((name, bytes.len()));
    }

    /// Hand-written seeds for the text parsers.
    fn static_seeds(&mut self) {
        let texts: &[(&str, &str)] = &[
            (
                "text-go127-experiment",
                "go1.27.3-X:nosizespecializedmalloc\npath\texample.com/x\nmod\texample.com/x\t(devel)\t\nbuild\t-ldflags=\"-s -w\"\nbuild\tGOEXPERIMENT=NoSizeSpecializedMalloc,foo\nbuild\tGOARCH=arm64\n",
            ),
            (
                "text-devel",
                "devel go1.28-abcdef Tue X:a,b\nbuild\t\"we=ird\"=\"a\\tb\\x41\\u00e9\\101\\U0001F600\"\r\nbuild\tbad\nbuild\t=x\n",
            ),
            ("text-rc", "go1.27rc1 X:foo\n"),
            ("text-space", " go1.19.8\n"),
        ];
        for (name, text) in texts {
            self.add("build_info", name, text.as_bytes());
        }
    }

    fn finish(&self) {
        let mut total = 0;
        for (target, files) in &self.files {
            let bytes: usize = files.iter().map(|(_, n)| n).sum();
            total += bytes;
            println!("{target}: {} seeds, {bytes} bytes", files.len());
        }
        println!("total: {total} bytes");
    }
}

/// Function names the planner looks up (besides the specialized allocators).
const PLANNED: &[&str] = &[
    "runtime.mallocgc",
    "runtime.newproc1",
    "runtime.gdestroy",
    "runtime.goexit0",
];

fn process(seeds: &mut Seeds, path: &Path, tag: &str) -> Result<()> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let bin = GoBinary::parse(data.clone()).map_err(|e| e.to_string())?;
    let elf = Elf::parse(&data).map_err(|e| e.to_string())?;
    let info = bin.pclntab_info().map_err(|e| e.to_string())?;
    let table = elf
        .read_vaddr_to_segment_end(&data, info.vaddr)
        .ok_or("pclntab not readable")?;
    let all = parse_functions_with_sizes(table, &info.header, info.text_start)
        .map_err(|e| e.to_string())?;
    let end_of_text = all.last().map(|f| f.func.end).ok_or("no functions")?;
    let bi_sec = elf
        .section(".go.buildinfo")
        .ok_or("no .go.buildinfo section")?;
    let bi_blob = elf
        .section_data(&data, bi_sec)
        .ok_or(".go.buildinfo unreadable")?
        .to_vec();
    let orig_plan = plan_for_arch(&bin, PlanOptions::default()).map_err(|e| e.to_string())?;
    println!(
        "{tag}: {} {} pclntab {:?}, {} functions, {} probes",
        bin.arch(),
        bin.build_info().go_version,
        info.header.version,
        all.len(),
        orig_plan.probes.len()
    );

    // build_info: the section bytes as they are.
    seeds.add("build_info", &format!("{tag}.buildinfo"), &bi_blob);
    let strings = inline_strings(&bi_blob);
    if let Some((version, modinfo)) = &strings {
        seeds.add(
            "build_info",
            &format!("{tag}.buildinfo-ptr"),
            &pointer_buildinfo_selfref(version, modinfo),
        );
        let mut text = version.clone();
        text.push(b'\n');
        text.extend_from_slice(goalloc_fuzz::binary::buildinfo::strip_sentinels(modinfo));
        seeds.add("build_info", &format!("{tag}.text"), &text);
    }

    // pclntab: the real header (with a little of what follows) and the first 64 KiB.
    let hsize = info.header.size() as usize;
    seeds.add(
        "pclntab",
        &format!("{tag}.header"),
        &table[..hsize.min(table.len())],
    );
    if tag.starts_with("go127-amd64-sw") || tag.starts_with("prometheus") {
        seeds.add(
            "pclntab",
            &format!("{tag}.first64k"),
            &table[..table.len().min(64 << 10)],
        );
    }

    // The fixtures (bigger programs, more Go versions and link modes): one
    // minified variant and fewer prologues each. The code of go127-amd64 is
    // that of go127-amd64-sw.
    let fixture = tag.starts_with("fixture-");
    if tag != "go127-amd64" {
        prologue_seeds(seeds, &bin, tag, if fixture { (6, 4) } else { (20, 12) });
    }
    // The elf target gets every variant of a few binaries.
    let elf_seeds = [
        "go119-amd64-sw",
        "go121-amd64-pie",
        "go127-arm64-pie",
        "go127-amd64",
    ]
    .contains(&tag);

    // Whole-file minified variants.
    let picked = pick_functions(&bin, &all)?;
    let arch = bin.arch();
    let texts = text_islands(&elf, &data, &all, &picked)?;
    let mut variants = vec![
        Variant {
            name: "min",
            sections: true,
            symtab: false,
            pie: false,
            go116: false,
        },
        Variant {
            name: "min-nosections",
            sections: false,
            symtab: false,
            pie: false,
            go116: false,
        },
    ];
    if fixture {
        variants.truncate(1);
    } else if !tag.starts_with("prometheus") {
        variants.push(Variant {
            name: "min-symtab",
            sections: true,
            symtab: true,
            pie: false,
            go116: false,
        });
        variants.push(Variant {
            name: "min-pie",
            sections: true,
            symtab: false,
            pie: true,
            go116: false,
        });
    }
    if tag.starts_with("go119") || tag.starts_with("go121") {
        variants.push(Variant {
            name: "min-go116",
            sections: true,
            symtab: false,
            pie: false,
            go116: true,
        });
        variants.push(Variant {
            name: "min-go116-nosections",
            sections: false,
            symtab: false,
            pie: true,
            go116: true,
        });
    }
    for v in &variants {
        let file = minify(&MinInput {
            arch,
            info_vaddr: info.vaddr,
            header: &info.header,
            text_start: info.text_start,
            end_of_text,
            funcs: &picked,
            texts: &texts,
            bi_addr: bi_sec.addr,
            bi_blob: &bi_blob,
            strings: strings.as_ref(),
            variant: v,
        })?;
        let min = GoBinary::parse(file.clone())
            .map_err(|e| format!("minified {} does not parse: {e}", v.name))?;
        let plan = plan_for_arch(&min, PlanOptions::default())
            .map_err(|e| format!("minified {}: no plan: {e}", v.name))?;
        same_plan(&orig_plan, &plan).map_err(|e| format!("minified {}: {e}", v.name))?;
        let name = format!("{tag}.{}", v.name);
        println!(
            "  {name}: {} bytes, {} functions, plan ok",
            file.len(),
            min.functions().count()
        );
        seeds.add("go_binary", &name, &file);
        if elf_seeds {
            seeds.add("elf", &name, &file);
        }
        if v.name == "min" && elf_seeds {
            // Extended section numbering: counts in section header 0.
            let ext = extended_numbering(&file);
            GoBinary::parse(ext.clone()).map_err(|e| format!("extended numbering: {e}"))?;
            seeds.add("elf", &format!("{name}-extnum"), &ext);
        }
        if v.name == "min" || v.name == "min-go116" {
            let bytes =
                rebuild_pclntab(&info.header, info.text_start, end_of_text, &picked, v.go116)?
                    .bytes;
            seeds.add("pclntab", &format!("{tag}.{}", v.name), &bytes);
        }
    }
    // elf: a truncated real file (headers only: the segment check fails early).
    if elf_seeds {
        seeds.add(
            "elf",
            &format!("{tag}.first4k"),
            &data[..data.len().min(4096)],
        );
    }
    Ok(())
}

fn same_plan(a: &ProbePlan, b: &ProbePlan) -> Result<()> {
    let key = |p: &ProbePlan| {
        p.probes
            .iter()
            .map(|p| (p.function.clone(), p.vaddr, p.placement))
            .collect::<Vec<_>>()
    };
    let (ka, kb) = (key(a), key(b));
    // The minified file keeps only some specialized allocators: compare the
    // probes it has with the original's.
    for p in &kb {
        if !ka.contains(p) {
            return Err(format!("probe {p:?} is not in the original plan"));
        }
    }
    for name in PLANNED.iter().take(2) {
        if !kb.iter().any(|(f, _, _)| f == name) {
            return Err(format!("no probe for {name}"));
        }
    }
    Ok(())
}

/// The version string and raw module info (with sentinels) of a Go 1.18+ blob.
fn inline_strings(blob: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if blob.get(15)? & 2 == 0 {
        return None;
    }
    let rest = blob.get(32..)?;
    let (vlen, n) = uvarint(rest)?;
    let version = rest.get(n..n + vlen as usize)?.to_vec();
    let rest = rest.get(n + vlen as usize..)?;
    let (mlen, n) = uvarint(rest)?;
    let modinfo = rest.get(n..n + mlen as usize)?.to_vec();
    Some((version, modinfo))
}

fn uvarint(d: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in d.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// A pre-1.18 blob whose pointers are offsets into the blob itself (how the
/// `build_info` fuzz target resolves them). Version is rewritten to 1.17.
fn pointer_buildinfo_selfref(_version: &[u8], modinfo: &[u8]) -> Vec<u8> {
    let version = b"go1.17.13";
    let mut d = b"\xff Go buildinf:".to_vec();
    d.push(8);
    d.push(0);
    d.extend_from_slice(&32u64.to_le_bytes());
    d.extend_from_slice(&48u64.to_le_bytes());
    d.resize(32, 0);
    let vptr = 64u64;
    let mptr = vptr + version.len() as u64;
    for (p, l) in [(vptr, version.len()), (mptr, modinfo.len())] {
        d.extend_from_slice(&p.to_le_bytes());
        d.extend_from_slice(&(l as u64).to_le_bytes());
    }
    d.extend_from_slice(version);
    d.extend_from_slice(modinfo);
    d
}

/// About `small` whole small runtime functions, and up to `big` of the
/// planned ones (whole, or their first 256 bytes when over 8 KiB).
fn prologue_seeds(
    seeds: &mut Seeds,
    bin: &GoBinary,
    tag: &str,
    (small_count, big): (usize, usize),
) {
    const WHOLE_MAX: u64 = 1024;
    const BIG: &[&str] = &[
        "runtime.mallocgc",
        "runtime.newproc1",
        "runtime.gdestroy",
        "runtime.goexit0",
        "runtime.morestack",
        "runtime.rt0_go",
    ];
    let funcs: Vec<_> = bin.functions().collect();
    let small: Vec<_> = funcs
        .iter()
        .filter(|f| f.name.starts_with("runtime.") && (8..=WHOLE_MAX).contains(&f.size()))
        .collect();
    // An even spread over the table.
    let step = (small.len() / small_count).max(1);
    for f in small.iter().step_by(step) {
        if let Ok(code) = bin.code(f) {
            seeds.add("prologue", &format!("{tag}.{}", f.name), code);
        }
    }
    for f in funcs
        .iter()
        .filter(|f| BIG.contains(&f.name.as_str()) || is_specialized_allocator(&f.name))
        .take(big)
    {
        if let Ok(code) = bin.code(f) {
            if code.len() <= 8192 {
                seeds.add("prologue", &format!("{tag}.{}", f.name), code);
            } else {
                seeds.add(
                    "prologue",
                    &format!("{tag}.{}.first256", f.name),
                    &code[..256],
                );
            }
        }
    }
}

/// Table entries to keep: the first function, each planned function and the
/// function after it (its end), a few specialized allocators and the dispatchers.
fn pick_functions(bin: &GoBinary, all: &[SizedFunction]) -> Result<Vec<(SizedFunction, bool)>> {
    let mut want: Vec<u64> = Vec::new();
    for name in PLANNED {
        if let Some(f) = bin.lookup(name) {
            want.push(f.entry);
        }
    }
    // One specialized allocator of each family.
    let mut families = HashSet::new();
    for f in bin
        .functions()
        .filter(|f| is_specialized_allocator(&f.name))
    {
        let family = f
            .name
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string();
        if families.insert(family) {
            want.push(f.entry);
        }
    }
    let dispatchers: Vec<u64> = bin
        .functions()
        .filter(|f| f.name.starts_with("runtime.mallocgc") && f.name.ends_with("SlowPath"))
        .map(|f| f.entry)
        .collect();
    // (entry, has code) by table index.
    let mut keep: BTreeMap<usize, bool> = BTreeMap::new();
    keep.insert(0, true);
    for (i, f) in all.iter().enumerate() {
        let with_code = want.contains(&f.func.entry);
        if with_code || dispatchers.contains(&f.func.entry) {
            let e = keep.entry(i).or_insert(false);
            *e |= with_code;
            if i + 1 < all.len() {
                keep.entry(i + 1).or_insert(false);
            }
        }
    }
    if keep.values().filter(|&&c| c).count() < 3 {
        return Err("planned functions not found in the function table".into());
    }
    // A kept entry without code must not be one the planner probes: rename
    // those (e.g. the allocator right after a kept one) out of the way.
    Ok(keep
        .into_iter()
        .map(|(i, c)| {
            let mut f = all[i].clone();
            if !c
                && (is_specialized_allocator(&f.func.name)
                    || PLANNED.contains(&f.func.name.as_str()))
            {
                f.func.name.push_str(".next");
            }
            (f, c)
        })
        .collect())
}

/// Code islands: (vaddr, bytes) for every kept function with code, from its
/// entry to 16 bytes past its end (so the next entry is mapped too); merged.
fn text_islands(
    elf: &Elf,
    data: &[u8],
    all: &[SizedFunction],
    picked: &[(SizedFunction, bool)],
) -> Result<Vec<(u64, Vec<u8>)>> {
    let last_end = all.last().map(|f| f.func.end).unwrap_or(0);
    let mut ranges: Vec<(u64, u64)> = picked
        .iter()
        .filter(|(_, c)| *c)
        .map(|(f, _)| (f.func.entry, (f.func.end + 16).min(last_end)))
        .collect();
    // The last kept entry (a function end marker) must be mapped too.
    if let Some((f, _)) = picked.last() {
        ranges.push((f.func.entry, (f.func.entry + 16).min(last_end)));
    }
    ranges.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
        .into_iter()
        .map(|(s, e)| {
            let seg = elf
                .exec_segment_for(s)
                .ok_or("code not in a text segment")?;
            let off = seg.file_offset(s).ok_or("code not in the file")? as usize;
            let bytes = data
                .get(off..off + (e - s) as usize)
                .ok_or("code past the end of the file")?;
            Ok((s, bytes.to_vec()))
        })
        .collect()
}

struct Variant {
    name: &'static str,
    /// Section headers (`.go.buildinfo`, `.gopclntab`, ...).
    sections: bool,
    /// A `.symtab` listing the kept functions.
    symtab: bool,
    /// ET_DYN; moduledata pointers only in relocations.
    pie: bool,
    /// Go 1.16-1.17 layouts (function table and build info).
    go116: bool,
}

struct MinInput<'a> {
    arch: Arch,
    info_vaddr: u64,
    header: &'a PclnHeader,
    text_start: u64,
    end_of_text: u64,
    funcs: &'a [(SizedFunction, bool)],
    texts: &'a [(u64, Vec<u8>)],
    bi_addr: u64,
    bi_blob: &'a [u8],
    strings: Option<&'a (Vec<u8>, Vec<u8>)>,
    variant: &'a Variant,
}

/// A function table listing `funcs` (in entry order), ended at `end_of_text`
/// (or 16 bytes past the last kept entry, whichever is lower), written by
/// the reader crate's synthetic table writer.
fn rebuild_pclntab(
    orig: &PclnHeader,
    text_start: u64,
    end_of_text: u64,
    funcs: &[(SizedFunction, bool)],
    go116: bool,
) -> Result<SynthPclntab> {
    let synth: Vec<SynthFunction<'_>> = funcs
        .iter()
        .map(|(f, _)| SynthFunction {
            name: &f.func.name,
            entry: f.func.entry,
            code_size: f.code_size,
        })
        .collect();
    write_pclntab(&PclntabSpec {
        version: if go116 {
            PclnVersion::Go116
        } else {
            orig.version
        },
        ptr_size: 8,
        min_lc: orig.min_lc,
        text_start,
        header_text_start: orig.text_start,
        funcs: &synth,
        end: pcln_end(end_of_text, funcs),
    })
    .map_err(|e| format!("rebuilding the function table: {e}"))
}

/// A section header: name (offset in `.shstrtab`), type, flags, address,
/// file offset, size, link, entry size.
type Shdr = (u32, u32, u64, u64, u64, u64, u32, u64);

/// Builds the minified ELF file.
fn minify(m: &MinInput<'_>) -> Result<Vec<u8>> {
    let v = m.variant;
    let pcln = rebuild_pclntab(m.header, m.text_start, m.end_of_text, m.funcs, v.go116)?;
    let reloc_type: u64 = if m.arch == Arch::Aarch64 { 1027 } else { 8 };
    let machine = if m.arch == Arch::Aarch64 {
        EM_AARCH64
    } else {
        62
    };
    let mut relocs: Vec<(u64, u64)> = Vec::new();

    // Writable data: build info, then moduledata, then (1.16) string headers.
    let rw_addr = m.bi_addr;
    let mut rw = Vec::new();
    if v.go116 {
        let (_, modinfo) = m.strings.ok_or("no inline build info strings to convert")?;
        let version = b"go1.17.13";
        // Header at +0, string headers at +32, strings at +64.
        rw.extend_from_slice(b"\xff Go buildinf:");
        rw.push(8);
        rw.push(0);
        rw.extend_from_slice(&(rw_addr + 32).to_le_bytes());
        rw.extend_from_slice(&(rw_addr + 48).to_le_bytes());
        rw.resize(32, 0);
        let vptr = rw_addr + 64;
        let mptr = vptr + version.len() as u64;
        for (p, l) in [(vptr, version.len()), (mptr, modinfo.len())] {
            rw.extend_from_slice(&p.to_le_bytes());
            rw.extend_from_slice(&(l as u64).to_le_bytes());
        }
        rw.extend_from_slice(version);
        rw.extend_from_slice(modinfo);
    } else {
        rw.extend_from_slice(m.bi_blob);
    }
    rw.resize(rw.len().next_multiple_of(32), 0);
    let md_addr = rw_addr + rw.len() as u64;
    let pv = m.info_vaddr;
    let text = m.funcs.first().map(|(f, _)| f.func.entry).unwrap_or(0);
    let etext = pcln_end(m.end_of_text, m.funcs);
    let plen = pcln.bytes.len() as u64;
    let mut md = [0u64; 32];
    let l = &MODULEDATA_GO116;
    // Word 13 is the `pclntable` slice (not read by the reader, but set as the
    // linker does).
    const PCLNTABLE: u64 = 13;
    let slot = |w: u64| w as usize;
    md[slot(l.pc_header)] = pv;
    md[slot(l.funcnametab)] = pv + pcln.funcname_offset;
    md[slot(l.funcnametab) + 1] = 0;
    md[slot(l.funcnametab) + 2] = 0;
    md[slot(PCLNTABLE)] = pv + pcln.pcln_offset;
    md[slot(PCLNTABLE) + 1] = plen - pcln.pcln_offset;
    md[slot(PCLNTABLE) + 2] = plen - pcln.pcln_offset;
    md[slot(l.ftab)] = pv + pcln.pcln_offset;
    md[slot(l.ftab) + 1] = m.funcs.len() as u64 + 1;
    md[slot(l.ftab) + 2] = m.funcs.len() as u64 + 1;
    md[slot(l.minpc)] = text;
    md[slot(l.maxpc)] = etext;
    md[slot(l.text)] = text;
    md[slot(l.etext)] = etext;
    let pointers = [
        l.pc_header,
        l.funcnametab,
        PCLNTABLE,
        l.ftab,
        l.minpc,
        l.maxpc,
        l.text,
        l.etext,
    ];
    for (i, w) in md.iter().enumerate() {
        let is_ptr = pointers.contains(&(i as u64));
        if v.pie && is_ptr {
            relocs.push((md_addr + 8 * i as u64, *w));
            rw.extend_from_slice(&0u64.to_le_bytes());
        } else {
            rw.extend_from_slice(&w.to_le_bytes());
        }
    }

    // Read-only data: the function table, then (PIE) dynamic section and relocations.
    let ro_addr = pv;
    let mut ro = pcln.bytes.clone();
    if v.pie
        && let Some(field) = pcln.text_start_field
        && m.header.text_start != 0
    {
        relocs.push((ro_addr + field, m.header.text_start));
        ro[field as usize..field as usize + 8].fill(0);
    }
    let mut dynamic_range = None;
    if v.pie {
        ro.resize(ro.len().next_multiple_of(8), 0);
        let dyn_off = ro.len() as u64;
        let rela_addr = ro_addr + dyn_off + 4 * 16;
        for (tag, val) in [
            (7u64, rela_addr),
            (8, relocs.len() as u64 * 24),
            (9, 24),
            (0, 0),
        ] {
            ro.extend_from_slice(&tag.to_le_bytes());
            ro.extend_from_slice(&val.to_le_bytes());
        }
        for (off, addend) in &relocs {
            ro.extend_from_slice(&off.to_le_bytes());
            ro.extend_from_slice(&reloc_type.to_le_bytes());
            ro.extend_from_slice(&addend.to_le_bytes());
        }
        dynamic_range = Some((dyn_off, 4 * 16u64));
    }

    // Overlap check of the three kinds of segments.
    let mut spans: Vec<(u64, u64)> = m
        .texts
        .iter()
        .map(|(a, b)| (*a, a + b.len() as u64))
        .collect();
    spans.push((ro_addr, ro_addr + ro.len() as u64));
    spans.push((rw_addr, rw_addr + rw.len() as u64));
    spans.sort();
    if spans.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(format!("segments overlap: {spans:x?}"));
    }

    // Symbols (symtab variant).
    let (mut symtab, mut strtab) = (vec![0u8; 24], vec![0u8]);
    if v.symtab {
        for (i, (f, _)) in m.funcs.iter().enumerate() {
            let name_off = strtab.len() as u32;
            strtab.extend_from_slice(f.func.name.as_bytes());
            // Exercise the ".abi0" suffix removal on one harmless entry.
            if i == 0 {
                strtab.extend_from_slice(b".abi0");
            }
            strtab.push(0);
            let size = f.code_size.unwrap_or(f.func.end - f.func.entry);
            symtab.extend_from_slice(&name_off.to_le_bytes());
            symtab.push(0x12); // STB_GLOBAL | STT_FUNC
            symtab.push(0);
            symtab.extend_from_slice(&1u16.to_le_bytes());
            symtab.extend_from_slice(&f.func.entry.to_le_bytes());
            symtab.extend_from_slice(&size.to_le_bytes());
        }
    }

    // Layout: ehdr, phdrs, text islands, ro, rw, section data, shdrs.
    let nph = m.texts.len() + 2 + usize::from(v.pie);
    let mut file = vec![0u8; 64 + 56 * nph];
    fn place(file: &mut Vec<u8>, bytes: &[u8]) -> u64 {
        file.resize(file.len().next_multiple_of(16), 0);
        let off = file.len() as u64;
        file.extend_from_slice(bytes);
        off
    }
    let mut phdrs: Vec<[u64; 6]> = Vec::new(); // type|flags<<32, offset, vaddr, filesz, memsz, align
    for (addr, bytes) in m.texts {
        let off = place(&mut file, bytes);
        phdrs.push([
            1 | (5 << 32),
            off,
            *addr,
            bytes.len() as u64,
            bytes.len() as u64,
            16,
        ]);
    }
    let ro_off = place(&mut file, &ro);
    phdrs.push([
        1 | (4 << 32),
        ro_off,
        ro_addr,
        ro.len() as u64,
        ro.len() as u64,
        16,
    ]);
    let rw_off = place(&mut file, &rw);
    phdrs.push([
        1 | (6 << 32),
        rw_off,
        rw_addr,
        rw.len() as u64,
        rw.len() as u64 + 64,
        16,
    ]);
    if let Some((off, len)) = dynamic_range {
        phdrs.push([2 | (6 << 32), ro_off + off, ro_addr + off, len, len, 8]);
    }

    let mut shdrs: Vec<Shdr> = Vec::new();
    let mut shstrtab = vec![0u8];
    let mut shname = |s: &str| {
        let o = shstrtab.len() as u32;
        shstrtab.extend_from_slice(s.as_bytes());
        shstrtab.push(0);
        o
    };
    if v.sections {
        shdrs.push((0, 0, 0, 0, 0, 0, 0, 0));
        let pcln_name = if v.pie {
            ".data.rel.ro.gopclntab"
        } else {
            ".gopclntab"
        };
        let n = shname(pcln_name);
        shdrs.push((n, 1, 2, ro_addr, ro_off, plen, 0, 0));
        let n = shname(".go.buildinfo");
        let bi_len = if v.go116 { 32 } else { m.bi_blob.len() as u64 };
        shdrs.push((n, 1, 3, rw_addr, rw_off, bi_len, 0, 0));
        for (i, (addr, bytes)) in m.texts.iter().enumerate() {
            let n = shname(if i == 0 { ".text" } else { ".text.island" });
            let off = phdrs[i][1];
            shdrs.push((n, 1, 6, *addr, off, bytes.len() as u64, 0, 0));
        }
        if v.symtab {
            let strtab_idx = shdrs.len() as u32 + 1;
            let n = shname(".symtab");
            let off = place(&mut file, &symtab);
            shdrs.push((n, 2, 0, 0, off, symtab.len() as u64, strtab_idx, 24));
            let n = shname(".strtab");
            let off = place(&mut file, &strtab);
            shdrs.push((n, 3, 0, 0, off, strtab.len() as u64, 0, 0));
        }
    }
    let shstr_name = shname(".shstrtab");
    let (shoff, shnum, shstrndx) = if v.sections {
        let shstr_idx = shdrs.len() as u64;
        let off = place(&mut file, &shstrtab);
        shdrs.push((shstr_name, 3, 0, 0, off, shstrtab.len() as u64, 0, 0));
        file.resize(file.len().next_multiple_of(8), 0);
        let shoff = file.len() as u64;
        for (name, ty, flags, addr, off, size, link, entsize) in &shdrs {
            file.extend_from_slice(&name.to_le_bytes());
            file.extend_from_slice(&ty.to_le_bytes());
            file.extend_from_slice(&flags.to_le_bytes());
            file.extend_from_slice(&addr.to_le_bytes());
            file.extend_from_slice(&off.to_le_bytes());
            file.extend_from_slice(&size.to_le_bytes());
            file.extend_from_slice(&link.to_le_bytes());
            file.extend_from_slice(&0u32.to_le_bytes()); // info
            file.extend_from_slice(&8u64.to_le_bytes()); // addralign
            file.extend_from_slice(&entsize.to_le_bytes());
        }
        (shoff, shdrs.len() as u16, shstr_idx as u16)
    } else {
        (0, 0, 0)
    };

    // ELF header.
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    h.resize(16, 0);
    h.extend_from_slice(&(if v.pie { 3u16 } else { 2u16 }).to_le_bytes());
    h.extend_from_slice(&machine.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&text.to_le_bytes()); // entry
    h.extend_from_slice(&64u64.to_le_bytes()); // phoff
    h.extend_from_slice(&shoff.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // flags
    for x in [64u16, 56, nph as u16, 64, shnum, shstrndx] {
        h.extend_from_slice(&x.to_le_bytes());
    }
    file[..64].copy_from_slice(&h);
    for (i, p) in phdrs.iter().enumerate() {
        let base = 64 + 56 * i;
        file[base..base + 8].copy_from_slice(&p[0].to_le_bytes());
        file[base + 8..base + 16].copy_from_slice(&p[1].to_le_bytes());
        file[base + 16..base + 24].copy_from_slice(&p[2].to_le_bytes());
        file[base + 24..base + 32].copy_from_slice(&p[2].to_le_bytes()); // paddr
        file[base + 32..base + 40].copy_from_slice(&p[3].to_le_bytes());
        file[base + 40..base + 48].copy_from_slice(&p[4].to_le_bytes());
        file[base + 48..base + 56].copy_from_slice(&p[5].to_le_bytes());
    }
    Ok(file)
}

/// The end-of-text mark the rebuilt table records.
fn pcln_end(end_of_text: u64, funcs: &[(SizedFunction, bool)]) -> u64 {
    let last = funcs.last().map(|(f, _)| f.func.entry).unwrap_or(0);
    end_of_text.min(last + 16)
}

/// The same file with e_shnum = 0 and e_shstrndx = SHN_XINDEX, the real
/// values in section header 0 (as for files with >= 0xff00 sections).
fn extended_numbering(file: &[u8]) -> Vec<u8> {
    let mut f = file.to_vec();
    let shoff = u64::from_le_bytes(f[40..48].try_into().unwrap()) as usize;
    let shnum = u16::from_le_bytes(f[60..62].try_into().unwrap());
    let shstrndx = u16::from_le_bytes(f[62..64].try_into().unwrap());
    f[60..62].copy_from_slice(&0u16.to_le_bytes());
    f[62..64].copy_from_slice(&0xffffu16.to_le_bytes());
    f[shoff + 32..shoff + 40].copy_from_slice(&u64::from(shnum).to_le_bytes());
    f[shoff + 40..shoff + 44].copy_from_slice(&u32::from(shstrndx).to_le_bytes());
    f
}
