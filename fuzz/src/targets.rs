//! The bodies of the fuzz targets, shared by `fuzz_targets/*.rs` (libFuzzer)
//! and `examples/replay.rs` (runs inputs without libFuzzer, e.g. to time them).

/// Whole-file target: `GoBinary::parse` on arbitrary bytes, then every
/// accessor (address lookup included), the prologue decoder on every
/// function and the probe planner.
pub fn go_binary(data: &[u8]) {
    use crate::binary::GoBinary;
    use crate::plan::plan_for_arch;
    use crate::prologue::find_probe_point;
    let Ok(bin) = GoBinary::parse(data.to_vec()) else {
        return;
    };
    let arch = bin.arch();
    let info = bin.build_info();
    let _ = (
        info.setting("GOARCH"),
        info.has_experiment("nosizespecializedmalloc"),
    );
    let _ = (
        bin.go_version(),
        bin.is_pie(),
        bin.symbol_source(),
        bin.data().len(),
    );
    let _ = format!("{bin:?}");
    for f in bin.functions() {
        let _ = f.size();
        // Every listed function must be found again by name.
        assert!(bin.lookup(&f.name).is_some(), "lookup({:?}) failed", f.name);
        let _ = bin.file_offset(f.entry);
        if let Ok(code) = bin.code(f) {
            assert_eq!(code.len() as u64, f.end - f.entry);
            if let Ok(p) = find_probe_point(arch, code) {
                assert!(p.offset < code.len() as u64 || code.is_empty());
            }
        }
    }
    if let Some(f) = bin.lookup("runtime.mallocgc") {
        let _ = bin.file_offset(f.entry);
    }
    // Address lookup: the ranges are sorted, non-empty and disjoint, and the
    // first and last byte of each find it again; nothing is found past them.
    let mut prev_end = None;
    for f in bin.functions_by_address() {
        assert!(f.entry < f.end, "{f:?}");
        assert!(prev_end.is_none_or(|end| end <= f.entry), "{f:?} overlaps");
        prev_end = Some(f.end);
        assert_eq!(bin.function_at(f.entry), Some(f));
        assert_eq!(bin.function_at(f.end - 1), Some(f));
    }
    if let Some(end) = prev_end {
        assert_eq!(bin.function_at(end), None);
    }
    let _ = bin.function_at(u64::MAX);
    let _ = bin.pclntab_functions();
    let _ = bin.pclntab_functions_all();
    let _ = bin.pclntab_info();
    if let Ok(plan) = plan_for_arch(&bin, Default::default()) {
        let _ = plan.count(crate::plan::ProbeKind::Alloc);
        for p in &plan.probes {
            // A planned probe lies inside its function's code in the file.
            assert!((p.file_offset as usize) < bin.data().len(), "{p:?}");
        }
    }
    let _ = plan_for_arch(&bin, crate::plan::PlanOptions { at_entry: true });
    // Symbols for profiles: frames of pcs in (and around) the first
    // functions, type names around the type range, the build id.
    if let Ok(sym) = crate::symbolize::Symbolizer::new(&bin) {
        for f in bin.functions_by_address().take(256) {
            for pc in [f.entry, f.entry + (f.end - f.entry) / 2, f.end - 1, f.end] {
                if let Ok(frames) = sym.frames(pc) {
                    assert!(!frames.is_empty());
                    assert!(frames.len() <= crate::symbolize::MAX_INLINE_DEPTH);
                    assert!(frames.iter().rev().skip(1).all(|f| f.inlined));
                }
                let _ = sym.frames_at_return(pc);
            }
        }
        let _ = sym.frames(u64::MAX);
    }
    if let Ok(types) = crate::types::TypeNames::new(&bin) {
        let (start, end) = types.range();
        for addr in [start, start + 8, start + 48, end.wrapping_sub(1), end, 0] {
            let _ = types.name(addr);
        }
    }
    let _ = bin.go_build_id();
}

/// Build info target: the `.go.buildinfo` blob parser (both layouts), the
/// module info text parser and Go version strings. For the pre-1.18 layout,
/// which holds pointers, addresses are offsets into the input itself.
pub fn build_info(data: &[u8]) {
    use crate::binary::buildinfo::{BuildInfo, parse_build_info, parse_mod_info, strip_sentinels};
    use crate::binary::version::GoVersion;
    let read = |addr: u64, len: u64| -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        data.get(start..end)
    };
    if let Ok(bi) = parse_build_info(data, read) {
        let _ = (
            bi.setting("GOARCH"),
            bi.has_experiment("nosizespecializedmalloc"),
        );
        let _ = bi.version.to_string();
    }
    // A `read` that returns more bytes than asked (caller-supplied: must not be trusted).
    let _ = parse_build_info(data, |addr: u64, _len: u64| {
        data.get(usize::try_from(addr).ok()?..)
    });

    let stripped = strip_sentinels(data);
    assert!(stripped.len() <= data.len());
    let text = String::from_utf8_lossy(stripped);
    let _ = parse_mod_info(&text);

    // "version\nmodinfo": the version string, then the module info text.
    let all = String::from_utf8_lossy(data);
    let (version, modinfo) = all.split_once('\n').unwrap_or((&all, ""));
    let _ = GoVersion::parse(version);
    if let Ok(bi) = BuildInfo::from_strings(version, modinfo) {
        assert_eq!(Some(bi.version), GoVersion::parse(version));
    }
}

/// Go function table target: header, function list (with and without exact
/// code sizes), and the candidate scan used when there is no section.
pub fn pclntab(data: &[u8]) {
    use crate::binary::pclntab::{
        candidate_offsets, looks_like_header, parse_functions, parse_functions_with_sizes,
        parse_header,
    };
    /// Text start used when the header has none (Go 1.16-1.17, 1.26+).
    const TEXT_START: u64 = 0x40_1000;
    if let Ok(hdr) = parse_header(data) {
        let _ = hdr.size();
        let _ = hdr.text_start_field_offset();
        let base = if hdr.text_start != 0 {
            hdr.text_start
        } else {
            TEXT_START
        };
        let sized = parse_functions_with_sizes(data, &hdr, base);
        let plain = parse_functions(data, &hdr, base);
        match (&sized, &plain) {
            (Ok(s), Ok(p)) => {
                assert_eq!(s.len(), p.len());
                for (s, p) in s.iter().zip(p) {
                    assert_eq!(&s.func, p);
                    assert!(s.func.entry <= s.func.end);
                    if let Some(size) = s.code_size {
                        assert!(size > 0 && size <= s.func.end - s.func.entry);
                    }
                }
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("parse_functions and parse_functions_with_sizes disagree"),
        }
        // Extreme text starts must not overflow.
        let _ = parse_functions_with_sizes(data, &hdr, u64::MAX - 0x1000);
    }
    // The segment scan: every candidate header, as `GoBinary` does without sections.
    for off in candidate_offsets(data).take(32) {
        assert!(looks_like_header(data, off));
        let Some(rest) = data.get(off as usize..) else {
            panic!("candidate offset {off} past the end");
        };
        if let Ok(hdr) = parse_header(rest) {
            let _ = parse_functions(rest, &hdr, 0);
        }
    }
}

/// ELF reader target: `Elf::parse` and every accessor, with addresses taken
/// from the parsed headers (and just around them).
pub fn elf(data: &[u8]) {
    use crate::binary::elf::Elf;
    let Ok(elf) = Elf::parse(data) else {
        return;
    };
    let _ = elf.is_pie();
    for name in [
        ".go.buildinfo",
        ".gopclntab",
        ".data.rel.ro.gopclntab",
        ".symtab",
        "",
    ] {
        if let Some(sec) = elf.section(name) {
            let _ = elf.section_data(data, sec);
            let _ = elf.read_vaddr_to_segment_end(data, sec.addr);
        }
    }
    for sec in elf.sections.iter().take(64) {
        if let Some(bytes) = elf.section_data(data, sec) {
            assert_eq!(bytes.len() as u64, sec.size);
        }
        let _ = elf.read_vaddr(data, sec.addr, sec.size);
    }
    let segs: Vec<_> = elf.load_segments().copied().take(64).collect();
    for seg in &segs {
        let bytes = elf.segment_data(data, seg);
        assert_eq!(bytes.map(|b| b.len() as u64), Some(seg.filesz), "{seg:?}");
        let end = seg.vaddr.wrapping_add(seg.filesz);
        for a in [
            seg.vaddr,
            seg.vaddr.wrapping_sub(1),
            end.wrapping_sub(1),
            end,
            seg.vaddr.wrapping_add(seg.memsz),
        ] {
            let _ = elf.load_segment_for(a);
            if let Some(s) = elf.exec_segment_for(a) {
                assert!(s.is_exec());
                assert!(s.file_offset(a).is_some());
            }
            for len in [0, 1, 8, seg.filesz, u64::MAX] {
                if let Some(b) = elf.read_vaddr(data, a, len) {
                    assert_eq!(b.len() as u64, len);
                }
            }
            let _ = elf.read_vaddr_to_segment_end(data, a);
        }
    }
    let syms = elf.symbols(data);
    for s in syms.iter().take(256) {
        let _ = elf.exec_segment_for(s.value);
    }
    let _ = elf.relative_relocations(data);
}

/// Prologue decoder target: the same bytes as amd64 and as arm64 code.
pub fn prologue(data: &[u8]) {
    use crate::binary::Arch;
    use crate::prologue::{Placement, find_probe_point};
    for arch in [Arch::X86_64, Arch::Aarch64] {
        if let Ok(p) = find_probe_point(arch, data) {
            // The probe point is an instruction start inside the code.
            assert!(
                p.offset < data.len() as u64 || data.is_empty(),
                "{arch}: {p:?}"
            );
            if p.placement == Placement::Entry {
                assert_eq!(p.offset, 0, "{arch}: {p:?}");
            }
            if arch == Arch::Aarch64 {
                assert_eq!(p.offset % 4, 0, "{p:?}");
            }
        }
    }
}

/// Symbolizer parts on raw bytes: the pc-value table decoder (runs must be
/// contiguous and agree with the point lookup) and the inline tree record
/// reader of both formats. The first byte picks the quantum.
pub fn symbolize(data: &[u8]) {
    use crate::symbolize::inline::{InlineFormat, inlined_call};
    use crate::symbolize::pcvalue::{PcValueIter, pc_value};
    let Some((&sel, table)) = data.split_first() else {
        return;
    };
    let quantum = [1u8, 2, 4, 1][usize::from(sel & 3)];
    let entry = if sel & 4 != 0 {
        u64::MAX - 0x1000
    } else {
        0x40_1000
    };
    let mut prev_end = entry;
    let mut runs = 0usize;
    for run in PcValueIter::new(table, entry, quantum) {
        let Ok(run) = run else { break };
        assert_eq!(run.start, prev_end, "runs are contiguous");
        assert!(run.end >= run.start);
        if run.end > run.start {
            assert_eq!(
                pc_value(table, entry, quantum, run.start),
                Ok(Some(run.value))
            );
            assert_eq!(
                pc_value(table, entry, quantum, run.end - 1),
                Ok(Some(run.value))
            );
        }
        prev_end = run.end;
        runs += 1;
        // Every pair takes at least two bytes.
        assert!(runs <= table.len() / 2 + 1);
    }
    for format in [InlineFormat::Go118, InlineFormat::Go120] {
        for index in [-1, 0, 1, 2, 1000, i32::MAX, i32::MIN] {
            if let Ok(call) = inlined_call(table, format, index) {
                assert!(index >= 0);
                assert_eq!(call.start_line.is_some(), format == InlineFormat::Go120);
            }
        }
    }
}
