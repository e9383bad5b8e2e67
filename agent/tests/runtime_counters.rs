//! The Go runtime's own counters read from process memory
//! (`gobinary::runtime`), no probe: every figure equals what the program's
//! own `runtime.ReadMemStats` and `runtime.NumGoroutine()` said at the same
//! instant, in every cell of the fixture matrix; the layout table equals the
//! DWARF of every unstripped fixture; instruction anchors find what the
//! symbols name; bad input (non-Go process, process exiting mid-read, missing
//! anchors, unknown Go release, no ptrace access) gives a typed error.
//!
//! Needs root (reads other processes' memory, drops privileges for the
//! access test); `GOALLOC_SKIP_BPF_TESTS=1` skips explicitly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Variant, parse_stop_stats, require_ptrace, run_with_stops, variants};
use gobinary::GoBinary;
use gobinary::runtime::{
    Layout, LayoutError, LocateError, ProcessMemory, ReadError, RuntimeCounters, RuntimeError,
    RuntimeProbe, locate,
};

/// The phases run: the default ones, then the opt-in ones that move frees,
/// GC cycles, the heap goal and goroutines.
const PHASES: &str = "tiny,tiny-byte,small-noscan,small-scan,large,runtime-sized,append,convert,maps,strings,closures,goroutines,gc,park,tiny,unpark,gogc";

/// The figures compared, in the fixture's names.
const FIGURES: [&str; 9] = [
    "mallocs",
    "frees",
    "total_alloc",
    "heap_alloc",
    "heap_objects",
    "heap_inuse",
    "next_gc",
    "num_gc",
    "goroutines",
];

fn figure(c: &RuntimeCounters, name: &str) -> u64 {
    match name {
        "mallocs" => c.mallocs,
        "frees" => c.frees,
        "total_alloc" => c.total_alloc,
        "heap_alloc" => c.heap_alloc,
        "heap_objects" => c.heap_objects,
        "heap_inuse" => c.heap_inuse,
        "next_gc" => c.next_gc,
        "num_gc" => u64::from(c.num_gc),
        "goroutines" => c.goroutines,
        _ => unreachable!("{name}"),
    }
}

/// Go `major.minor` of a variant label ("go1.27.3-stripped" -> (1, 27)).
fn go_minor(label: &str) -> (u32, u32) {
    let v = label.strip_prefix("go").unwrap();
    let mut it = v.split(['.', '-']);
    let major = it.next().unwrap().parse().unwrap();
    let minor = it.next().unwrap().parse().unwrap();
    (major, minor)
}

fn unstripped(v: &Variant) -> bool {
    !v.label.contains("stripped")
}

/// `tests/go/layoutdump` built once with the newest toolchain (its
/// debug/dwarf reads every older toolchain's DWARF).
fn layoutdump() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let go = testutil::newest().unwrap_or_else(|e| panic!("{e}"));
        let out = std::env::temp_dir().join(format!("goalloc-layoutdump-{}", std::process::id()));
        let src = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/go/layoutdump/main.go"
        );
        let status = go
            .command()
            .args(["build", "-o"])
            .arg(&out)
            .arg(src)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "building layoutdump with {}",
            go.go.display()
        );
        out
    })
}

#[test]
fn layout_table_matches_dwarf_of_every_go() {
    let mut checked = BTreeSet::new();
    for v in variants().into_iter().filter(unstripped) {
        let (major, minor) = go_minor(&v.label);
        let layout =
            Layout::for_version(major, minor).unwrap_or_else(|e| panic!("{}: {e}", v.label));
        let fields = layout.fields();
        let out = Command::new(layoutdump())
            .arg(v.program("fixture"))
            .args(fields.iter().map(|(n, _)| *n))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "layoutdump {}: {}",
            v.label,
            String::from_utf8_lossy(&out.stderr)
        );
        let dwarf: BTreeMap<String, String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut bad = Vec::new();
        for (name, ours) in &fields {
            let theirs = dwarf.get(*name).map_or("absent", String::as_str);
            if theirs != ours.to_string() {
                bad.push(format!("  {name}: table {ours}, DWARF {theirs}"));
            }
        }
        assert!(
            bad.is_empty(),
            "{}: layout table disagrees with DWARF:\n{}",
            v.label,
            bad.join("\n")
        );
        checked.insert((major, minor));
    }
    // Every release of the table was checked against a real build.
    for l in gobinary::runtime::layout::LAYOUTS {
        assert!(
            checked.contains(&(l.major, l.minor)),
            "Go {}.{} is in the layout table but no unstripped fixture was built with it",
            l.major,
            l.minor
        );
    }
    println!(
        "layout table == DWARF for Go {checked:?} ({} fields each)",
        Layout::for_version(1, 27).unwrap().fields().len()
    );
}

#[test]
fn anchors_find_what_symbols_name() {
    for v in variants() {
        let bin = GoBinary::open(&v.program("fixture")).unwrap();
        let (major, minor) = go_minor(&v.label);
        let layout = Layout::for_version(major, minor).unwrap();
        let anchors =
            locate::locate_by_anchors(&bin, layout).unwrap_or_else(|e| panic!("{}: {e}", v.label));
        match locate::locate_by_symbols(&bin) {
            Some([memstats, gcc, allglen, allgptr, sched]) => {
                assert_eq!(anchors.memstats.addr, memstats, "{}: memstats", v.label);
                assert_eq!(anchors.gc_controller.addr, gcc, "{}: gcController", v.label);
                assert_eq!(anchors.allglen.addr, allglen, "{}: allglen", v.label);
                assert_eq!(anchors.allgptr.addr, allgptr, "{}: allgptr", v.label);
                assert_eq!(anchors.sched.addr, sched, "{}: sched", v.label);
                println!("{}: anchors == symbols", v.label);
            }
            None => {
                assert!(
                    !unstripped(&v),
                    "{}: unstripped but symbols missing",
                    v.label
                );
                println!("{}: stripped, anchors found", v.label);
            }
        }
    }
}

/// Per variant and figure: whether every stop matched.
type Matrix = BTreeMap<String, BTreeMap<&'static str, bool>>;

#[test]
fn every_figure_equals_memstats_in_every_cell() {
    if !require_ptrace() {
        return;
    }
    let started = Instant::now();
    let mut matrix: Matrix = BTreeMap::new();
    let mut failures = Vec::new();
    for v in variants() {
        let fixture = v.program("fixture");
        let bin = GoBinary::open(&fixture).unwrap();
        let probe = RuntimeProbe::for_binary(&bin).unwrap_or_else(|e| panic!("{}: {e}", v.label));
        let mut reads: Vec<Result<RuntimeCounters, String>> = Vec::new();
        let fin = run_with_stops(
            &fixture,
            &["-stopstats", &format!("-phases={PHASES}")],
            |_| {},
            |pid, _| {
                let r = probe
                    .attach(pid)
                    .and_then(|p| p.read())
                    .map_err(|e| e.to_string());
                reads.push(r);
            },
        );
        assert_eq!(fin.code, 0, "{}: fixture failed:\n{}", v.label, fin.stdout);
        let stops = parse_stop_stats(&fin.stdout);
        assert_eq!(
            stops.len(),
            reads.len(),
            "{}: one stop line per stop",
            v.label
        );
        let row = matrix.entry(v.label.clone()).or_default();
        let mut table = String::new();
        for (s, r) in stops.iter().zip(&reads) {
            let c = match r {
                Ok(c) => c,
                Err(e) => {
                    table.push_str(&format!("  stop {}: read failed: {e}\n", s.stop));
                    for f in FIGURES {
                        row.insert(f, false);
                    }
                    continue;
                }
            };
            assert_eq!(
                c.alloc_sizes.iter().sum::<u64>(),
                c.mallocs,
                "{}: size histogram sums to mallocs",
                v.label
            );
            assert!(
                c.consistent,
                "{}: a stopped process reads consistently",
                v.label
            );
            for f in FIGURES {
                let want = s.fields[f];
                let got = figure(c, f);
                let ok = want == got;
                let e = row.entry(f).or_insert(true);
                *e &= ok;
                if !ok {
                    table.push_str(&format!(
                        "  stop {:>2} {f:<13} fixture {want:>20} read {got:>20} diff {:>+12}\n",
                        s.stop,
                        got as i128 - want as i128
                    ));
                }
            }
        }
        if table.is_empty() {
            println!(
                "{}: {} stops, all {} figures equal (goroutines up to {}, num_gc up to {})",
                v.label,
                stops.len(),
                FIGURES.len(),
                stops
                    .iter()
                    .map(|s| s.fields["goroutines"])
                    .max()
                    .unwrap_or(0),
                stops.iter().map(|s| s.fields["num_gc"]).max().unwrap_or(0),
            );
        } else {
            failures.push(format!("{}:\n{table}", v.label));
        }
    }
    // The matrix: one row per cell, y when every stop matched.
    let mut out = format!("{:<48}", "cell");
    for f in FIGURES {
        out.push_str(&format!(" {f:>12}"));
    }
    out.push('\n');
    for (label, row) in &matrix {
        out.push_str(&format!("{label:<48}"));
        for f in FIGURES {
            let y = if row.get(f).copied().unwrap_or(false) {
                "y"
            } else {
                "N"
            };
            out.push_str(&format!(" {y:>12}"));
        }
        out.push('\n');
    }
    println!("{out}");
    println!("{} cells in {:.1?}", matrix.len(), started.elapsed());
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

/// A Go process of `v` that runs until killed (the demo service).
fn spawn_demo(v: &Variant) -> common::Terminate {
    common::Terminate(spawn_demo_child(v))
}

fn spawn_demo_child(v: &Variant) -> std::process::Child {
    let child = Command::new(v.program("demo"))
        .args(["-churn", "200000", "-requests", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let the runtime start (its first mappings and goroutines).
    std::thread::sleep(Duration::from_millis(200));
    child
}

#[test]
fn live_demo_figures_move_plausibly() {
    if !require_ptrace() {
        return;
    }
    // The demo service is built for the primary cells of the matrix only.
    let with_demo: Vec<Variant> = variants()
        .into_iter()
        .filter(|v| v.program("demo").exists())
        .collect();
    assert!(
        !with_demo.is_empty(),
        "no fixture variant has the demo program"
    );
    for v in with_demo {
        let demo = spawn_demo(&v);
        let pid = demo.0.id();
        let bin = GoBinary::open(Path::new(&format!("/proc/{pid}/exe"))).unwrap();
        let probe = RuntimeProbe::for_binary(&bin).unwrap();
        let p = probe.attach(pid).unwrap();
        let first = p.read().unwrap();
        let mut last = first.clone();
        let t0 = Instant::now();
        let mut retries = 0;
        while t0.elapsed() < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(100));
            let c = p.read().unwrap_or_else(|e| panic!("{}: {e}", v.label));
            retries += c.retries;
            assert!(c.mallocs >= last.mallocs && c.total_alloc >= last.total_alloc);
            assert!(c.num_gc >= last.num_gc);
            assert!(c.goroutines >= 1 && c.heap_objects == c.mallocs - c.frees);
            assert_eq!(c.alloc_sizes.iter().sum::<u64>(), c.mallocs);
            last = c;
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{}: {:.0} allocs/s, {} GCs, heap {:.1} MiB (in use {:.1} MiB, goal {:.1} MiB), {} goroutines, {} retries",
            v.label,
            (last.mallocs - first.mallocs) as f64 / secs,
            last.num_gc - first.num_gc,
            last.heap_alloc as f64 / 1048576.0,
            last.heap_inuse as f64 / 1048576.0,
            last.next_gc as f64 / 1048576.0,
            last.goroutines,
            retries
        );
        assert!(
            last.mallocs > first.mallocs,
            "{}: the demo allocates",
            v.label
        );
        assert!(
            last.next_gc < 1 << 40,
            "{}: GOGC goal, not the memory-limit one",
            v.label
        );
    }
}

#[test]
fn non_go_process_is_refused() {
    let e = GoBinary::open(Path::new("/bin/sleep")).unwrap_err();
    assert!(matches!(e, gobinary::BinaryError::NotGo), "/bin/sleep: {e}");
    println!("/bin/sleep: {e}");
}

#[test]
fn process_exiting_mid_read_is_gone() {
    if !require_ptrace() {
        return;
    }
    let v = common::variant("go1.27.3");
    let mut demo = spawn_demo_child(&v);
    let pid = demo.id();
    let bin = GoBinary::open(&v.program("demo")).unwrap();
    let p = RuntimeProbe::for_binary(&bin).unwrap().attach(pid).unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: kill has no memory preconditions; pid is our child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let t0 = Instant::now();
    let mut ok = 0;
    let err = loop {
        match p.read() {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still reading after SIGKILL"
        );
    };
    killer.join().unwrap();
    assert!(matches!(err, ReadError::Gone), "after {ok} reads: {err:?}");
    // Reaped: still Gone, for attach too.
    demo.wait().unwrap();
    assert!(matches!(p.read(), Err(ReadError::Gone)));
    let probe = RuntimeProbe::for_binary(&bin).unwrap();
    assert!(matches!(probe.attach(pid), Err(ReadError::Gone)));
    println!("{ok} reads, then: {err}");
}

/// A copy of `src` with the code of `function` overwritten by int3.
fn with_function_erased(bin: &GoBinary, src: &Path, function: &str) -> Vec<u8> {
    let f = bin.lookup(function).unwrap_or_else(|| panic!("{function}"));
    let off = bin.file_offset(f.entry).unwrap() as usize;
    let mut data = std::fs::read(src).unwrap();
    data[off..off + f.size() as usize].fill(0xcc);
    data
}

#[test]
fn missing_anchors_are_named() {
    for (label, function, anchor_part) in [
        ("go1.27.3-stripped", "runtime.allgadd", "runtime.allgadd"),
        (
            "go1.19.8-stripped-pie",
            "runtime.(*mcache).refill",
            "runtime.(*mcache).refill",
        ),
        (
            "go1.24.11-stripped",
            "runtime.mcommoninit",
            "runtime.mcommoninit",
        ),
    ] {
        let src = common::variant(label).program("fixture");
        let bin = GoBinary::open(&src).unwrap();
        assert!(
            RuntimeProbe::for_binary(&bin).is_ok(),
            "{label}: intact binary"
        );
        let crafted = GoBinary::parse(with_function_erased(&bin, &src, function)).unwrap();
        let e = RuntimeProbe::for_binary(&crafted).unwrap_err();
        assert!(
            matches!(&e, RuntimeError::Locate(LocateError::AnchorNotFound(a)) if a.contains(anchor_part)),
            "{label} without {function}: {e:?}"
        );
        println!("{label} without {function}: {e}");
    }
}

#[test]
fn unknown_go_release_is_refused() {
    let src = common::variant("go1.21.13-stripped").program("fixture");
    let mut data = std::fs::read(&src).unwrap();
    // Same length: the build info and runtime.buildVersion now say 1.20.
    let (from, to) = (b"go1.21.13", b"go1.20.13");
    let mut n = 0;
    for i in 0..data.len() - from.len() {
        if &data[i..i + from.len()] == from {
            data[i..i + to.len()].copy_from_slice(to);
            n += 1;
        }
    }
    assert!(n > 0);
    let bin = GoBinary::parse(data).unwrap();
    let e = RuntimeProbe::for_binary(&bin).unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::UnknownLayout(LayoutError::UnknownVersion {
                major: 1,
                minor: 20,
                ..
            })
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("Go 1.20 runtime layout not known to this goalloc")
    );
    println!("{e}");
}

/// Set in the re-invoked test binary: pid and binary to read as nobody.
const CHILD_PID_VAR: &str = "GOALLOC_RUNTIME_COUNTERS_CHILD_PID";
const CHILD_BIN_VAR: &str = "GOALLOC_RUNTIME_COUNTERS_CHILD_BIN";

/// Not a test of its own: the unprivileged reader `access_is_denied_without_ptrace`
/// runs (this test binary re-invoked as uid 65534); a no-op otherwise.
#[test]
fn unprivileged_reader_child() {
    let (Some(pid), Some(bin)) = (
        std::env::var_os(CHILD_PID_VAR),
        std::env::var_os(CHILD_BIN_VAR),
    ) else {
        return;
    };
    let pid: u32 = pid.to_str().unwrap().parse().unwrap();
    let bin = GoBinary::open(Path::new(&bin)).unwrap();
    let probe = RuntimeProbe::for_binary(&bin).unwrap();
    let attach = probe.attach(pid).map(|_| ());
    // Straight at the memory too, as if the maps had been readable.
    let mem = ProcessMemory::new(pid);
    let mut buf = [0u8; 8];
    let direct = gobinary::runtime::Memory::read(&mem, 0x400000, &mut buf);
    println!("CHILD attach={attach:?}");
    println!("CHILD direct={direct:?}");
    if let Err(e) = attach {
        println!("CHILD message={e}");
    }
}

#[test]
fn access_is_denied_without_ptrace() {
    if !require_ptrace() {
        return;
    }
    let v = common::variant("go1.27.3");
    let demo = spawn_demo(&v);
    let me = std::env::current_exe().unwrap();
    let mut cmd = Command::new(&me);
    cmd.args([
        "--exact",
        "unprivileged_reader_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_PID_VAR, demo.0.id().to_string())
    .env(CHILD_BIN_VAR, v.program("demo"));
    // SAFETY: only async-signal-safe calls (setgroups, setresgid, setresuid)
    // between fork and exec. Dropping to uid 65534 clears every capability.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(65534, 65534, 65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "unprivileged reader failed (is the test binary readable by uid 65534?):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("CHILD attach=Err(AccessDenied)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("CHILD direct=Err(AccessDenied)"),
        "{stdout}"
    );
    assert!(stdout.contains("CAP_SYS_PTRACE"), "{stdout}");
    for l in stdout.lines().filter(|l| l.starts_with("CHILD")) {
        println!("{l}");
    }
}
