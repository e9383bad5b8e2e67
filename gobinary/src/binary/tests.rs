//! Tests on real Go binaries, built once per test run with every toolchain
//! `testutil` finds (env `GOALLOC_GO_TOOLCHAINS`, else those `cargo xtask
//! setup` installs). No toolchain = test failure.

use super::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const AMD64_PROLOGUE: [u8; 4] = [0x49, 0x3b, 0x66, 0x10]; // CMPQ SP, 0x10(R14)
const ARM64_PROLOGUE: [u8; 4] = [0x90, 0x0b, 0x40, 0xf9]; // MOVD 16(R28), R16

const PLAIN_MAIN: &str = r#"package main

import (
	"fmt"
	"io"
	"os"
)

type node struct {
	next *node
	v    [4]int
}

func main() {
	ch := make(chan *node)
	go func() { ch <- &node{v: [4]int{1, 2, 3, 4}} }()
	n := <-ch
	if len(os.Args) > 1 && os.Args[1] == "wait" {
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
	}
	fmt.Println(n.v[0])
}
"#;

const CGO_MAIN: &str = r#"package main

/*
static int add(int a, int b) { return a + b; }
*/
import "C"

import "fmt"

func main() {
	ch := make(chan int)
	go func() { ch <- int(C.add(1, 2)) }()
	fmt.Println(<-ch)
}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Default,
    Stripped,
    Pie,
    PieStripped,
    Cgo,
    CgoPie,
    CgoPieStripped,
    Arm64,
    Arm64PieStripped,
    NoSizeSpecializedMalloc,
}

impl Variant {
    const ALL: [Variant; 10] = [
        Variant::Default,
        Variant::Stripped,
        Variant::Pie,
        Variant::PieStripped,
        Variant::Cgo,
        Variant::CgoPie,
        Variant::CgoPieStripped,
        Variant::Arm64,
        Variant::Arm64PieStripped,
        Variant::NoSizeSpecializedMalloc,
    ];
    fn stripped(self) -> bool {
        matches!(
            self,
            Variant::Stripped
                | Variant::PieStripped
                | Variant::CgoPieStripped
                | Variant::Arm64PieStripped
        )
    }
    fn cgo(self) -> bool {
        matches!(
            self,
            Variant::Cgo | Variant::CgoPie | Variant::CgoPieStripped
        )
    }
    fn pie(self) -> bool {
        matches!(
            self,
            Variant::Pie
                | Variant::PieStripped
                | Variant::CgoPie
                | Variant::CgoPieStripped
                | Variant::Arm64PieStripped
        )
    }
    fn arm64(self) -> bool {
        matches!(self, Variant::Arm64 | Variant::Arm64PieStripped)
    }
    /// The unstripped build with the same layout, for cross-checking.
    fn unstripped_sibling(self) -> Option<Variant> {
        match self {
            Variant::Stripped => Some(Variant::Default),
            Variant::PieStripped => Some(Variant::Pie),
            Variant::CgoPieStripped => Some(Variant::CgoPie),
            _ => None,
        }
    }
}

struct Build {
    variant: Variant,
    path: PathBuf,
    bin: GoBinary,
}

struct Toolchain {
    go: PathBuf,
    /// `go env GOVERSION`, e.g. "go1.21.13".
    goversion: String,
    version: GoVersion,
    builds: Vec<Build>,
}

impl Toolchain {
    fn build(&self, v: Variant) -> Option<&Build> {
        self.builds.iter().find(|b| b.variant == v)
    }
    fn name(&self) -> &str {
        &self.goversion
    }
}

struct Fixture {
    toolchains: Vec<Toolchain>,
}

static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();
static TEMP_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_temp_dir() {
    if let Some(dir) = TEMP_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn fixture() -> &'static Fixture {
    match FIXTURE.get_or_init(build_fixture) {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    }
}

/// `go` for building into `tmp` (its temp files too, removed with it).
fn go_command(go: &Path, tmp: &Path) -> Command {
    let mut cmd = testutil::go_command(go);
    cmd.env("GOTMPDIR", tmp);
    cmd
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn build_fixture() -> Result<Fixture, String> {
    let found = testutil::toolchains()?;
    let dir = tempfile::Builder::new()
        .prefix("goalloc-binary-tests-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?
        .keep();
    if TEMP_DIR.set(dir.clone()).is_ok() {
        // SAFETY: registers a plain extern "C" function with no arguments.
        unsafe {
            libc::atexit(remove_temp_dir);
        }
    }
    let results: Vec<Result<Toolchain, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = found
            .iter()
            .enumerate()
            .map(|(i, tc)| {
                let tdir = dir.join(format!("tc{i}"));
                s.spawn(move || build_toolchain(tc, &tdir))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("build thread panicked".into()))
            })
            .collect()
    });
    let toolchains = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(Fixture { toolchains })
}

fn build_toolchain(tc: &testutil::Toolchain, dir: &Path) -> Result<Toolchain, String> {
    let go = tc.go.as_path();
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    let plain = dir.join("plain");
    let cgo = dir.join("cgo");
    for (d, module, src) in [
        (&plain, "example.com/plain", PLAIN_MAIN),
        (&cgo, "example.com/cgo", CGO_MAIN),
    ] {
        std::fs::create_dir_all(d).map_err(io)?;
        std::fs::write(d.join("go.mod"), format!("module {module}\n\ngo 1.16\n")).map_err(io)?;
        std::fs::write(d.join("main.go"), src).map_err(io)?;
    }
    let goversion = tc.goversion.clone();
    let version = GoVersion::parse(&goversion)
        .ok_or_else(|| format!("{}: cannot parse GOVERSION {goversion:?}", go.display()))?;

    let mut builds = Vec::new();
    for v in Variant::ALL {
        if v == Variant::NoSizeSpecializedMalloc && version < GoVersion::new(1, 27, 0) {
            continue;
        }
        let out = dir.join("bin").join(format!("{v:?}").to_lowercase());
        let mut cmd = go_command(go, dir);
        cmd.current_dir(if v.cgo() { &cgo } else { &plain });
        cmd.args(["build", "-o"]).arg(&out);
        if v.pie() {
            cmd.arg("-buildmode=pie");
        }
        if v.stripped() {
            cmd.arg("-ldflags=-s -w");
        }
        if v.cgo() {
            cmd.env("CGO_ENABLED", "1");
        }
        if v.arm64() {
            cmd.env("GOARCH", "arm64").env("CGO_ENABLED", "0");
        }
        if v == Variant::NoSizeSpecializedMalloc {
            cmd.env("GOEXPERIMENT", "nosizespecializedmalloc");
        }
        cmd.arg(".");
        run(&mut cmd)?;
        let bin = GoBinary::open(&out)
            .map_err(|e| format!("{goversion} {v:?}: GoBinary::open failed: {e}"))?;
        builds.push(Build {
            variant: v,
            path: out,
            bin,
        });
    }
    Ok(Toolchain {
        go: go.to_path_buf(),
        goversion,
        version,
        builds,
    })
}

/// Runs `check` on every build, collecting failures into one panic message.
fn check_all(mut check: impl FnMut(&Toolchain, &Build) -> Result<(), String>) {
    let fx = fixture();
    let mut failures = Vec::new();
    let mut n = 0;
    for tc in &fx.toolchains {
        for b in &tc.builds {
            n += 1;
            if let Err(e) = check(tc, b) {
                failures.push(format!("{} {:?}: {e}", tc.name(), b.variant));
            }
        }
    }
    assert!(n > 0, "no Go binaries were built");
    assert!(
        failures.is_empty(),
        "{} of {n} builds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

#[test]
fn build_info_matches_toolchain() {
    check_all(|tc, b| {
        let bi = b.bin.build_info();
        ensure(bi.go_version.starts_with(&tc.goversion), || {
            format!(
                "go_version {:?}, toolchain {:?}",
                bi.go_version, tc.goversion
            )
        })?;
        ensure(bi.version == tc.version, || {
            format!("version {} != {}", bi.version, tc.version)
        })?;
        ensure(b.bin.go_version() == tc.version, || "go_version()".into())?;
        let want_path = if b.variant.cgo() {
            "example.com/cgo"
        } else {
            "example.com/plain"
        };
        ensure(bi.path.as_deref() == Some(want_path), || {
            format!("path {:?}", bi.path)
        })?;
        let goarch = if b.variant.arm64() { "arm64" } else { "amd64" };
        ensure(bi.setting("GOARCH") == Some(goarch), || {
            format!("GOARCH {:?}", bi.setting("GOARCH"))
        })?;
        // Go 1.19 does not record -buildmode in the build info.
        if b.variant.pie() && tc.version >= GoVersion::new(1, 20, 0) {
            ensure(bi.setting("-buildmode") == Some("pie"), || {
                format!("-buildmode {:?}", bi.setting("-buildmode"))
            })?;
        }
        ensure(b.bin.is_pie() == b.variant.pie(), || {
            format!("is_pie() is {}", b.bin.is_pie())
        })?;
        if b.variant.stripped() {
            ensure(bi.setting("-ldflags") == Some("-s -w"), || {
                format!("-ldflags {:?}", bi.setting("-ldflags"))
            })?;
        }
        if b.variant.cgo() {
            ensure(bi.setting("CGO_ENABLED") == Some("1"), || {
                format!("CGO_ENABLED {:?}", bi.setting("CGO_ENABLED"))
            })?;
        }
        let want_arch = if b.variant.arm64() {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        ensure(b.bin.arch() == want_arch, || {
            format!("arch {:?}", b.bin.arch())
        })
    });
}

#[test]
fn experiment_is_reported() {
    let fx = fixture();
    let builds: Vec<_> = fx
        .toolchains
        .iter()
        .filter_map(|tc| Some((tc, tc.build(Variant::NoSizeSpecializedMalloc)?)))
        .collect();
    assert!(
        !builds.is_empty(),
        "no Go >= 1.27 toolchain among {:?}: cannot test GOEXPERIMENT=nosizespecializedmalloc",
        fx.toolchains.iter().map(|t| &t.go).collect::<Vec<_>>()
    );
    for (tc, b) in builds {
        let bi = b.bin.build_info();
        assert!(
            bi.experiments
                .iter()
                .any(|e| e == "nosizespecializedmalloc"),
            "{}: experiments {:?} (version {:?})",
            tc.name(),
            bi.experiments,
            bi.go_version
        );
        assert!(bi.has_experiment("nosizespecializedmalloc"));
        assert_eq!(bi.experiments.len(), 1, "{:?}", bi.experiments);
        assert_eq!(bi.setting("GOEXPERIMENT"), Some("nosizespecializedmalloc"));
        // The default build of the same toolchain has no experiment.
        let def = tc.build(Variant::Default).unwrap();
        assert!(def.bin.build_info().experiments.is_empty());
        assert!(
            !def.bin
                .build_info()
                .has_experiment("nosizespecializedmalloc")
        );
    }
}

#[test]
fn symbol_source_and_runtime_lookups() {
    check_all(|_, b| {
        let want = if b.variant.stripped() {
            SymbolSource::Pclntab
        } else {
            SymbolSource::Symtab
        };
        ensure(b.bin.symbol_source() == want, || {
            format!("symbol_source {:?}", b.bin.symbol_source())
        })?;
        for name in [
            "runtime.mallocgc",
            "runtime.newproc1",
            "runtime.newproc",
            "main.main",
        ] {
            let f = b
                .bin
                .lookup(name)
                .ok_or_else(|| format!("{name} not found"))?;
            ensure(f.name == name && f.end > f.entry, || format!("{f:?}"))?;
        }
        ensure(b.bin.lookup("runtime.nosuchfunction").is_none(), || {
            "found a missing function".into()
        })?;
        // functions() has one entry per name, all resolvable by lookup.
        let mut n = 0;
        for f in b.bin.functions() {
            n += 1;
            ensure(b.bin.lookup(&f.name) == Some(f), || {
                format!("lookup({}) disagrees with functions()", f.name)
            })?;
        }
        ensure(n > 1000, || format!("only {n} functions"))
    });
}

/// Functions in `reference` (a symtab list) whose entry differs in the
/// pclntab list. Only runtime.* names.
fn pclntab_mismatches(reference: &[&Function], pcln: &[Function]) -> (usize, Vec<String>) {
    let by_name: HashMap<&str, &Function> = pcln.iter().map(|f| (f.name.as_str(), f)).collect();
    let mut compared = 0;
    let mut bad = Vec::new();
    for f in reference {
        if !f.name.starts_with("runtime.") {
            continue;
        }
        compared += 1;
        match by_name.get(f.name.as_str()) {
            Some(p) if p.entry == f.entry && p.end >= f.end => {}
            Some(p) => bad.push(format!(
                "{}: symtab {:#x}..{:#x}, pclntab {:#x}..{:#x}",
                f.name, f.entry, f.end, p.entry, p.end
            )),
            None => bad.push(format!("{}: missing from pclntab", f.name)),
        }
    }
    (compared, bad)
}

#[test]
fn pclntab_agrees_with_symtab() {
    let fx = fixture();
    check_all(|tc, b| {
        let pcln = b.bin.pclntab_functions().map_err(|e| e.to_string())?;
        let reference_build = match b.variant.unstripped_sibling() {
            Some(v) => tc.build(v).ok_or("missing sibling build")?,
            None if b.bin.symbol_source() == SymbolSource::Symtab => b,
            None => return Ok(()), // stripped, no sibling: covered elsewhere
        };
        let reference: Vec<&Function> = reference_build.bin.functions().collect();
        let (compared, bad) = pclntab_mismatches(&reference, &pcln);
        ensure(compared > 500, || {
            format!("only {compared} runtime functions compared")
        })?;
        ensure(bad.is_empty(), || {
            format!(
                "{} of {compared} runtime functions differ (text start {:?}), e.g. {:?}",
                bad.len(),
                b.bin.pclntab_info().map(|i| i.text_start),
                &bad[..bad.len().min(5)]
            )
        })
    });
    // Print the layouts seen (cargo test -- --nocapture).
    for tc in &fx.toolchains {
        for b in &tc.builds {
            if let Ok(i) = b.bin.pclntab_info() {
                let text_sec = super::elf::Elf::parse(b.bin.data())
                    .ok()
                    .and_then(|e| e.section(".text").map(|s| s.addr));
                eprintln!(
                    "{} {:?}: pclntab {:?} at {:#x} ({:?}), header textStart {:#x}, text start {:#x} from {:?}, .text {:x?}, moduledata {:x?}",
                    tc.name(),
                    b.variant,
                    i.location,
                    i.vaddr,
                    i.header.version,
                    i.header.text_start,
                    i.text_start,
                    i.text_start_source,
                    text_sec,
                    i.moduledata
                );
            }
        }
    }
}

#[test]
fn pclntab_code_sizes_match_symtab() {
    check_all(|_, b| {
        if b.bin.symbol_source() != SymbolSource::Symtab {
            return Ok(());
        }
        let sym: HashMap<u64, u64> = symtab_functions(&b.bin.elf, b.bin.data())
            .into_iter()
            .map(|f| (f.entry, f.size()))
            .collect();
        let (_, funcs) = load_pclntab(&b.bin.elf, b.bin.data()).map_err(|e| e.to_string())?;
        let mut compared = 0;
        let mut bad = Vec::new();
        for f in &funcs {
            let (Some(size), Some(&want)) = (f.code_size, sym.get(&f.func.entry)) else {
                continue;
            };
            compared += 1;
            if size != want {
                bad.push(format!(
                    "{} {:#x}: pcsp {size}, symtab {want}",
                    f.func.name, f.func.entry
                ));
            }
        }
        let sized = funcs.iter().filter(|f| f.code_size.is_some()).count();
        ensure(sized * 10 >= funcs.len() * 9, || {
            format!("only {sized} of {} functions have a code size", funcs.len())
        })?;
        ensure(compared > 1000 && bad.is_empty(), || {
            format!(
                "{} of {compared} sizes differ: {:?}",
                bad.len(),
                &bad[..bad.len().min(5)]
            )
        })
    });
}

#[test]
fn mallocgc_code_starts_with_stack_check() {
    check_all(|_, b| {
        let f = b.bin.lookup("runtime.mallocgc").ok_or("no mallocgc")?;
        let code = b.bin.code(f).map_err(|e| e.to_string())?;
        ensure(code.len() as u64 == f.end - f.entry, || {
            "code length".into()
        })?;
        // Small frames compare SP with g.stackguard0 directly; large ones
        // (mallocgc in Go 1.23) first compute `lea r12, [rsp-N]` (5 bytes).
        let want = match b.bin.arch() {
            Arch::X86_64 if code.starts_with(&[0x4c, 0x8d, 0x64, 0x24]) => [0x4d, 0x3b, 0x66, 0x10],
            Arch::X86_64 => AMD64_PROLOGUE,
            Arch::Aarch64 => ARM64_PROLOGUE,
        };
        let skip = if want == AMD64_PROLOGUE || want == ARM64_PROLOGUE {
            0
        } else {
            5
        };
        ensure(code[skip.min(code.len())..].starts_with(&want), || {
            format!("mallocgc starts with {:02x?}", &code[..code.len().min(10)])
        })?;
        // file_offset agrees with code().
        let off = b.bin.file_offset(f.entry).map_err(|e| e.to_string())?;
        let at = usize::try_from(off).map_err(|e| e.to_string())? + skip;
        ensure(b.bin.data().get(at..at + 4) == Some(&want[..]), || {
            format!("bytes at file offset {off:#x}")
        })?;
        // Unmapped addresses are errors.
        for bad in [u64::MAX, 0] {
            match b.bin.file_offset(bad) {
                Err(BinaryError::AddressNotMapped(a)) if a == bad => {}
                other => return Err(format!("file_offset({bad:#x}) = {other:?}")),
            }
        }
        Ok(())
    });
}

#[test]
fn pie_file_offsets() {
    // External-link PIE starts at vaddr 0; text is not at file offset 0x1000.
    let fx = fixture();
    let mut seen = 0;
    for tc in &fx.toolchains {
        for v in [Variant::CgoPie, Variant::CgoPieStripped] {
            let b = tc.build(v).unwrap();
            let f = b.bin.lookup("runtime.newproc1").unwrap();
            assert!(f.entry < 0x40_0000, "{} {v:?}: {f:?}", tc.name());
            let off = b.bin.file_offset(f.entry).unwrap();
            assert!(off <= f.entry);
            assert!(b.bin.code(f).unwrap().starts_with(&AMD64_PROLOGUE));
            seen += 1;
        }
    }
    assert!(seen > 0);
}

#[test]
fn largest_body_wins() {
    check_all(|_, b| {
        let all = b.bin.pclntab_functions_all().map_err(|e| e.to_string())?;
        for name in ["runtime.newproc", "runtime.goexit1"] {
            let copies: Vec<&Function> = all.iter().filter(|f| f.name == name).collect();
            ensure(copies.len() >= 2, || {
                format!("{name}: expected a wrapper and a body, got {copies:?}")
            })?;
            let biggest = copies.iter().max_by_key(|f| f.size()).unwrap();
            let got = b.bin.lookup(name).ok_or("missing")?;
            ensure(got.entry == biggest.entry, || {
                format!("{name}: lookup {got:?}, largest {biggest:?}, all {copies:?}")
            })?;
            let dedup = b.bin.pclntab_functions().map_err(|e| e.to_string())?;
            let d = dedup
                .iter()
                .find(|f| f.name == name)
                .ok_or("missing in dedup")?;
            ensure(d == *biggest, || format!("pclntab_functions picked {d:?}"))?;
        }
        Ok(())
    });
}

#[test]
fn function_at_maps_every_function_back() {
    check_all(|_, b| {
        let bin = &b.bin;
        let all: Vec<&Function> = bin.functions_by_address().collect();
        ensure(all.len() > 1000, || format!("only {} functions", all.len()))?;
        if let Some(p) = all.windows(2).find(|p| p[0].end > p[1].entry) {
            return Err(format!("overlapping ranges {:?} and {:?}", p[0], p[1]));
        }
        for &f in &all {
            for addr in [f.entry, f.end - 1] {
                let got = bin.function_at(addr);
                ensure(got == Some(f), || {
                    format!("function_at({addr:#x}) = {got:?}, want {f:?}")
                })?;
            }
        }
        let (first, last) = (all[0], all[all.len() - 1]);
        for addr in [0, first.entry - 1, last.end, u64::MAX] {
            let got = bin.function_at(addr);
            ensure(got.is_none(), || {
                format!("function_at({addr:#x}) outside text = {got:?}")
            })?;
        }
        // With .symtab a function ends at its exact size: the alignment
        // padding after it belongs to no function. (amd64 pads functions to
        // 32 bytes; arm64 code before Go 1.26 may have no padding at all.)
        if bin.symbol_source() == SymbolSource::Symtab {
            let gap = all.windows(2).find(|p| p[0].end < p[1].entry);
            ensure(gap.is_some() || bin.arch() != Arch::X86_64, || {
                "no padding between any two functions".into()
            })?;
            if let Some(gap) = gap {
                let got = bin.function_at(gap[0].end);
                ensure(got.is_none(), || {
                    format!("function_at({:#x}) in padding = {got:?}", gap[0].end)
                })?;
            }
        }
        // The planner's functions, and every copy of a name (ABI0 wrapper
        // and body), are found by address under their name.
        for name in ["runtime.mallocgc", "runtime.newproc1"] {
            let f = bin.lookup(name).ok_or_else(|| format!("no {name}"))?;
            let got = bin.function_at(f.entry + 1).map(|g| g.name.as_str());
            ensure(got == Some(name), || format!("{name}: {got:?}"))?;
        }
        let copies: Vec<Function> = bin
            .pclntab_functions_all()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|f| f.name == "runtime.newproc")
            .collect();
        ensure(copies.len() >= 2, || format!("runtime.newproc: {copies:?}"))?;
        for f in &copies {
            let got = bin.function_at(f.entry).map(|g| g.name.as_str());
            ensure(got == Some("runtime.newproc"), || {
                format!("copy {f:?} found as {got:?}")
            })?;
        }
        Ok(())
    });
}

/// The `_func` and moduledata layouts hold on every fixture `cargo xtask
/// fixtures` built (Go 1.19 to 1.27; plain, stripped, PIE, cgo): the table
/// has the version's magic, moduledata is found through
/// [`MODULEDATA_GO116`], and each `_func` record is exactly as long as the
/// layout's fixed part plus the pcdata and funcdata it counts (so every
/// field before them sits where the layout says).
#[test]
fn layouts_hold_on_every_fixture() {
    let dir = testutil::fixture_dir();
    let mut variants: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read the fixtures in {}: {e}; run `cargo xtask fixtures`",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    variants.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    for variant in &variants {
        let Ok(entries) = std::fs::read_dir(variant) else {
            continue;
        };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.extension().is_some() || !path.is_file() {
                continue; // variant.json
            }
            checked += 1;
            if let Err(e) = check_layouts(&path) {
                failures.push(format!("{}: {e}", path.display()));
            }
        }
    }
    assert!(
        checked >= 40,
        "only {checked} fixtures in {}: run `cargo xtask fixtures`",
        dir.display()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn check_layouts(path: &Path) -> Result<(), String> {
    let bin = GoBinary::open(path).map_err(|e| e.to_string())?;
    let info = bin.pclntab_info().map_err(|e| e.to_string())?;
    let h = &info.header;
    let v = bin.go_version();
    let want = if v >= GoVersion::new(1, 20, 0) {
        PclnVersion::Go120
    } else if v >= GoVersion::new(1, 18, 0) {
        PclnVersion::Go118
    } else {
        PclnVersion::Go116
    };
    ensure(h.version == want, || format!("{v}: table {:?}", h.version))?;
    ensure(info.moduledata.is_some(), || "no moduledata".into())?;
    let table = bin
        .elf
        .read_vaddr_to_segment_end(bin.data(), info.vaddr)
        .ok_or("table unreadable")?;
    let l = h.version.func_layout();
    let ps = h.ptr_size;
    let field = l.functab_field;
    let read = |off: u64| match field {
        pclntab::AddrWidth::Word => bytes::word(table, off, ps, false),
        pclntab::AddrWidth::U32 => bytes::u32_le(table, off).map(u64::from),
    };
    let funcoff = |i: u64| read(h.pcln_offset + i * 2 * field.size(ps) + field.size(ps));
    let mut records = 0;
    for i in 0..h.nfunc.saturating_sub(1) {
        let (a, b) = (
            funcoff(i).ok_or("functab")?,
            funcoff(i + 1).ok_or("functab")?,
        );
        let rec = h.pcln_offset + a;
        let npcdata = bytes::u32_le(table, rec + l.npcdata.at(ps)).ok_or("npcdata")?;
        let nfuncdata = bytes::u8_at(table, rec + l.nfuncdata.at(ps)).ok_or("nfuncdata")?;
        let pcdata_end = l.fixed_size.at(ps) + 4 * u64::from(npcdata);
        let size = if h.version.uses_text_start() {
            pcdata_end + 4 * u64::from(nfuncdata)
        } else {
            pcdata_end.next_multiple_of(u64::from(ps)) + u64::from(ps) * u64::from(nfuncdata)
        };
        // Records follow each other, aligned to at most a pointer.
        let len = b.wrapping_sub(a);
        ensure(len >= size && len < size + u64::from(ps), || {
            format!(
                "_func #{i}: {len} bytes apart, layout says {size} (npcdata {npcdata}, nfuncdata {nfuncdata})"
            )
        })?;
        records += 1;
    }
    ensure(records > 1000, || format!("only {records} records"))
}

/// Removes the section header table, as some packers/strippers do.
fn without_section_headers(data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    d[40..48].fill(0); // e_shoff
    d[58..64].fill(0); // e_shentsize, e_shnum, e_shstrndx
    d
}

#[test]
fn works_without_section_headers() {
    check_all(|_, b| {
        let bin = GoBinary::parse(without_section_headers(b.bin.data()))
            .map_err(|e| format!("parse without section headers: {e}"))?;
        ensure(bin.symbol_source() == SymbolSource::Pclntab, || {
            "source".into()
        })?;
        ensure(
            bin.build_info().go_version == b.bin.build_info().go_version,
            || "build info differs".into(),
        )?;
        ensure(
            bin.build_info().settings == b.bin.build_info().settings,
            || "settings differ".into(),
        )?;
        let info = bin.pclntab_info().map_err(|e| e.to_string())?;
        ensure(info.location == PclntabLocation::Scan, || {
            format!("{info:?}")
        })?;
        let want = b.bin.pclntab_functions().map_err(|e| e.to_string())?;
        let got: Vec<Function> = bin.functions().cloned().collect();
        ensure(got == want, || "function lists differ".into())?;
        let f = bin.lookup("runtime.mallocgc").ok_or("no mallocgc")?;
        ensure(
            bin.code(f).map_err(|e| e.to_string())? == b.bin.code(f).map_err(|e| e.to_string())?,
            || "code differs".into(),
        )
    });
}

/// Some linkers (GNU ld on arm64 by default) leave zeros at the targets of
/// `R_*_RELATIVE` relocations; the values are only in the relocation
/// addends. Simulate that on the external-link PIE builds.
#[test]
fn pie_relative_relocations_are_applied() {
    let fx = fixture();
    let mut checked = 0;
    for tc in &fx.toolchains {
        for v in [Variant::CgoPie, Variant::CgoPieStripped] {
            let b = tc.build(v).unwrap();
            let relocs = b.bin.elf.relative_relocations(b.bin.data());
            assert!(
                relocs.len() > 100,
                "{} {v:?}: {} relocations",
                tc.name(),
                relocs.len()
            );
            let mut data = b.bin.data().to_vec();
            for &addr in relocs.keys() {
                let off = b
                    .bin
                    .elf
                    .load_segment_for(addr)
                    .and_then(|s| s.file_offset(addr));
                if let Some(off) = off.and_then(|o| usize::try_from(o).ok())
                    && let Some(w) = data.get_mut(off..off + 8)
                {
                    w.fill(0);
                }
            }
            for data in [data.clone(), without_section_headers(&data)] {
                let bin =
                    GoBinary::parse(data).unwrap_or_else(|e| panic!("{} {v:?}: {e}", tc.name()));
                let info = bin.pclntab_info().unwrap();
                assert!(info.moduledata.is_some(), "{} {v:?}: {info:?}", tc.name());
                assert_eq!(
                    bin.pclntab_functions().unwrap(),
                    b.bin.pclntab_functions().unwrap(),
                    "{} {v:?}",
                    tc.name()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

#[test]
fn open_proc_pid_exe() {
    let fx = fixture();
    let tc = &fx.toolchains[0];
    let b = tc.build(Variant::Default).unwrap();
    let mut child = Command::new(&b.path)
        .arg("wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Go test program");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let proc_path = PathBuf::from(format!("/proc/{}/exe", child.id()));
    let opened = GoBinary::open(&proc_path);
    drop(child.stdin.take()); // EOF: the program exits
    let mut rest = String::new();
    stdout.read_line(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest.trim(), "1");
    let bin = opened.unwrap_or_else(|e| panic!("open {}: {e}", proc_path.display()));
    assert!(status.success());
    assert_eq!(bin.build_info().go_version, b.bin.build_info().go_version);
    assert_eq!(
        bin.lookup("runtime.mallocgc"),
        b.bin.lookup("runtime.mallocgc")
    );
}

#[test]
fn io_error_names_the_path() {
    let e = GoBinary::open(Path::new("/nonexistent/goalloc-test")).unwrap_err();
    assert!(matches!(e, BinaryError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/goalloc-test"), "{e}");
}

/// Mapped files: an empty one and a script are refused like bytes in
/// memory, not with a mapping error.
#[test]
fn open_maps_small_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(GoBinary::open(&empty), Err(BinaryError::NotElf)));
    let script = dir.path().join("script");
    std::fs::write(&script, b"#!/bin/sh\n").unwrap();
    assert!(matches!(GoBinary::open(&script), Err(BinaryError::NotElf)));
    assert_eq!(&*MappedFile::open(&script).unwrap(), b"#!/bin/sh\n");
}

#[test]
fn rejects_non_elf_and_random_bytes() {
    assert!(matches!(
        GoBinary::parse(b"#!/bin/sh\necho hi\n".to_vec()),
        Err(BinaryError::NotElf)
    ));
    assert!(matches!(
        GoBinary::parse(Vec::new()),
        Err(BinaryError::NotElf)
    ));
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..200 {
        let len = (next() % 8192) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && d.len() >= 64 {
            // A plausible ELF64 header over random contents.
            d[..6].copy_from_slice(b"\x7fELF\x02\x01");
            d[18..20].copy_from_slice(&62u16.to_le_bytes());
        }
        assert!(GoBinary::parse(d).is_err());
    }
}

#[test]
fn rejects_non_go_elf() {
    let e = GoBinary::open(Path::new("/bin/ls")).unwrap_err();
    assert!(matches!(e, BinaryError::NotGo), "{e:?}");
    assert!(e.to_string().contains("not a Go executable"), "{e}");
}

#[test]
fn rejects_truncated_and_corrupt_go_binaries() {
    let fx = fixture();
    for tc in &fx.toolchains {
        for v in [
            Variant::Default,
            Variant::PieStripped,
            Variant::CgoPieStripped,
        ] {
            let data = tc.build(v).unwrap().bin.data();
            let half = data[..data.len() / 2].to_vec();
            let e = GoBinary::parse(half).unwrap_err();
            assert!(
                matches!(e, BinaryError::BadElf(_) | BinaryError::NotGo),
                "{} {v:?}: {e:?}",
                tc.name()
            );
            // Without section headers, truncation is found through the segments.
            let mut half = without_section_headers(data);
            half.truncate(data.len() / 2);
            assert!(GoBinary::parse(half).is_err());
        }
    }
    // Random corruption of a stripped binary's headers, build info and
    // pclntab must never panic.
    let tc = &fx.toolchains[fx.toolchains.len() - 1];
    let b = tc.build(Variant::PieStripped).unwrap();
    let info = b.bin.pclntab_info().unwrap();
    let pcln_off = b
        .bin
        .elf
        .load_segment_for(info.vaddr)
        .unwrap()
        .file_offset(info.vaddr)
        .unwrap() as usize;
    let data = b.bin.data();
    let shoff = u64::from_le_bytes(data[40..48].try_into().unwrap()) as usize;
    let buildinfo = b.bin.elf.section(".go.buildinfo").unwrap().offset as usize;
    let regions = [
        (0usize, 0x1000usize),
        (pcln_off, 0x4000),
        (shoff, data.len() - shoff),
        (buildinfo, 0x200),
    ];
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let mut d = b.bin.data().to_vec();
        for _ in 0..4 {
            let (start, len) = regions[(next() % regions.len() as u64) as usize];
            let i = start + (next() as usize % len);
            if let Some(byte) = d.get_mut(i) {
                *byte = next() as u8;
            }
        }
        if let Ok(bin) = GoBinary::parse(d) {
            let _ = bin.pclntab_functions();
            for f in bin.functions().take(50) {
                let _ = bin.code(f);
            }
        }
    }
}

#[test]
fn error_messages_are_one_line() {
    let errors = [
        BinaryError::NotElf,
        BinaryError::NotGo,
        BinaryError::NoPclntab,
        BinaryError::NoTextStart,
        BinaryError::BadPclntab(PclntabError::TooOld(pclntab::MAGIC_GO12)),
        BinaryError::BadBuildInfo(BuildInfoError::BadMagic),
        BinaryError::UnsupportedArch("ELF machine 40".into()),
        BinaryError::AddressNotMapped(0x1234),
        BinaryError::TextStartMismatch {
            header: 1,
            moduledata: 2,
        },
    ];
    for e in errors {
        let s = e.to_string();
        assert!(!s.contains('\n') && s.len() > 20, "{s}");
    }
    assert_eq!(
        BinaryError::NotGo.to_string(),
        "not a Go executable: no .go.buildinfo section; point goalloc at a program built by the Go toolchain"
    );
}

#[test]
fn one_per_name_prefers_largest() {
    let f = |name: &str, entry, end| Function {
        name: name.into(),
        entry,
        end,
    };
    let got = one_per_name(vec![
        f("b", 0x300, 0x310),
        f("a", 0x100, 0x180),
        f("b", 0x200, 0x280),
        f("a", 0x400, 0x410),
        f("c", 0x500, 0x510),
        f("c", 0x600, 0x610),
    ]);
    assert_eq!(
        got,
        vec![
            f("a", 0x100, 0x180),
            f("b", 0x200, 0x280),
            f("c", 0x500, 0x510)
        ]
    );
}
