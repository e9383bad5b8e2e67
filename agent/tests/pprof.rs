//! The pprof writer against the real `go tool pprof`: samples built from
//! real stacks of a real Go program (`tests/go/pcdump`, PIE with a load
//! bias, and a stripped non-PIE build, by the oldest and newest
//! toolchains), with allocator frames on top that must be trimmed, a real
//! type descriptor, an untyped and a reflect-made sample, and a pc no
//! mapping symbolizes; `-top`, `-traces` and `-tags` must show the
//! functions, files, lines and type labels put in. Then both builds as
//! three processes in one profile: each pid's samples apart, with its own
//! stacks at its own addresses.

use std::path::{Path, PathBuf};
use std::process::Command;

use goalloc::profile::{
    AllocSample, OtherMapping, ProcessImage, ProcessSamples, ProfileMeta, write_gzipped,
    write_gzipped_many,
};
use gobinary::GoBinary;

const RATE: u64 = 512 * 1024;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_pcdump(tc: &testutil::Toolchain, dir: &Path, args: &[&str]) -> PathBuf {
    let out = dir.join(format!("pcdump-{}", tc.goversion));
    run(testutil::go_command(&tc.go)
        .current_dir(testutil::workspace_root().join("tests/go/pcdump"))
        .env("GOTMPDIR", dir)
        .env("CGO_ENABLED", "0")
        .args(["build", "-o"])
        .arg(&out)
        .args(args)
        .arg("main.go"));
    out
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex")
}

struct Dump {
    anchor: u64,
    /// Stack name -> runtime pcs.
    stacks: Vec<(String, Vec<u64>)>,
    type_addr: u64,
    type_name: String,
}

fn parse(out: &str) -> Dump {
    let mut d = Dump {
        anchor: 0,
        stacks: Vec::new(),
        type_addr: 0,
        type_name: String::new(),
    };
    for line in out.lines() {
        let mut p = line.splitn(3, ' ');
        match (p.next(), p.next()) {
            (Some("anchor"), Some(a)) => d.anchor = hex(a),
            (Some("stack"), Some(n)) => d.stacks.push((n.to_string(), Vec::new())),
            (Some("pc"), Some(pc)) => d.stacks.last_mut().unwrap().1.push(hex(pc)),
            (Some("type"), Some(a)) => {
                d.type_addr = hex(a);
                d.type_name = p.next().unwrap_or("").to_string();
            }
            _ => {}
        }
    }
    d
}

/// A pcdump build, run once, and samples made of its stacks.
struct Prepared {
    goversion: String,
    exe: PathBuf,
    bin: GoBinary,
    dump: Dump,
    bias: u64,
    samples: Vec<AllocSample>,
}

impl Prepared {
    fn image(&self) -> ProcessImage<'_> {
        ProcessImage {
            binary: &self.bin,
            path: self.exe.display().to_string(),
            load_bias: self.bias,
            other_mappings: vec![OtherMapping {
                start: 0x7f00_0000_0000,
                limit: 0x7f00_0010_0000,
                file_offset: 0,
                path: "/usr/lib/libfake.so".into(),
            }],
        }
    }
}

fn meta() -> ProfileMeta {
    ProfileMeta {
        rate: RATE,
        time_nanos: 1_700_000_000_000_000_000,
        duration_nanos: 30_000_000_000,
        comments: vec!["synthetic test profile".into()],
    }
}

fn go_pprof(file: &Path, args: &[&str]) -> String {
    let newest = testutil::newest().expect("go");
    run(testutil::go_command(&newest.go)
        .args(["tool", "pprof"])
        .args(args)
        .arg(file))
}

/// The frames `go tool pprof -traces` shows for the trace holding `needle`.
fn trace_frames<'t>(traces: &'t str, needle: &str) -> Vec<&'t str> {
    let trace = traces
        .split("-----------+")
        .find(|t| t.contains(needle))
        .unwrap_or_else(|| panic!("no trace with {needle}:\n{traces}"));
    trace
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("main.") || w.starts_with("runtime."))
        })
        .collect()
}

/// The frames of pcdump's "inlined" stack, innermost first.
const INLINED: [&str; 6] = [
    "main.record",
    "main.inner",
    "main.middle",
    "main.outer",
    "main.main",
    "runtime.main",
];

fn prepare(tc: &testutil::Toolchain, dir: &Path, args: &[&str]) -> Prepared {
    let exe = build_pcdump(tc, dir, args);
    let dump = parse(&run(&mut Command::new(&exe)));
    let bin = GoBinary::open(&exe).expect("pcdump");
    let bias = dump
        .anchor
        .wrapping_sub(bin.lookup("main.main").expect("main.main").entry);
    let rt = |name: &str, off: u64| bin.lookup(name).expect(name).entry + off + bias;
    // The allocator on top, as the probe would see it: return addresses
    // inside runtime.mallocgc and runtime.newobject (trimmed, as Go does).
    let alloc = [rt("runtime.mallocgc", 0x20), rt("runtime.newobject", 0x10)];
    // runtime.Callers also lists a "virtual" pc per inlined caller; a
    // frame-pointer walk (what the probe does) has only the physical
    // return addresses: keep those.
    let sym = gobinary::symbolize::Symbolizer::new(&bin).expect("symbolizer");
    let stack = |name: &str| -> Vec<u64> {
        let pcs = &dump.stacks.iter().find(|s| s.0 == name).expect(name).1;
        let mut physical = alloc.to_vec();
        let mut i = 0;
        while let Some(&pc) = pcs.get(i) {
            physical.push(pc);
            i += sym.frames_at_return(pc - bias).expect("frames").len();
        }
        physical
    };
    let mut foreign = stack("closure");
    foreign.insert(2, 0x7f00_0000_1234);
    let samples = vec![
        AllocSample {
            pcs: stack("inlined"),
            type_addr: Some(dump.type_addr),
            size: 64,
            count: 30,
        },
        AllocSample {
            pcs: stack("generic"),
            type_addr: None,
            size: 4096,
            count: 5,
        },
        AllocSample {
            pcs: foreign,
            type_addr: Some(0x10), // not in the executable: built by reflect
            size: 32,
            count: 7,
        },
    ];
    Prepared {
        goversion: tc.goversion.clone(),
        exe,
        bin,
        dump,
        bias,
        samples,
    }
}

fn check(tc: &testutil::Toolchain, dir: &Path, args: &[&str]) -> Prepared {
    let p = prepare(tc, dir, args);
    let (bin, dump) = (&p.bin, &p.dump);
    let file = dir.join(format!("{}.pb.gz", tc.goversion));
    write_gzipped(
        &p.image(),
        &p.samples,
        &meta(),
        std::fs::File::create(&file).expect("create"),
    )
    .expect("write");

    let pprof = |args: &[&str]| go_pprof(&file, args);
    let top = pprof(&["-top", "-sample_index=alloc_space"]);
    eprintln!("{} {args:?} -top:\n{top}", tc.goversion);
    let lines = pprof(&["-top", "-lines"]);
    let traces = pprof(&["-traces"]);
    let tags = pprof(&["-tags"]);
    eprintln!("-traces:\n{traces}\n-tags:\n{tags}");
    let src = "tests/go/pcdump/main.go";
    for want in ["main.record", "main.generic[", "main.main"] {
        assert!(top.contains(want), "-top lacks {want}:\n{top}");
    }
    assert!(top.contains("Type: alloc_space"), "{top}");
    assert!(
        !top.contains("runtime.mallocgc") && !top.contains("runtime.newobject"),
        "allocator not trimmed:\n{top}"
    );
    assert!(!traces.contains("runtime.goexit"), "{traces}");
    // Inlined frames are lines of one location, each with its own
    // file:line: the lines of the source that pcdump's calls are on.
    let source = std::fs::read_to_string(testutil::workspace_root().join(src)).expect("source");
    let line_of = |text: &str| {
        1 + source
            .lines()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("{text} not in {src}"))
    };
    for (func, text) in [
        ("main.record", "n := runtime.Callers(1, pcs)"),
        ("main.inner", "func inner() []uintptr { return record() }"),
        ("main.middle", "func middle() []uintptr { return inner() }"),
        ("main.outer", "func outer() []uintptr { return middle() }"),
    ] {
        let at = format!("{func} {src}:{}", line_of(text));
        assert!(
            lines
                .lines()
                .any(|l| l.contains(func) && l.contains(&format!("{src}:{}", line_of(text)))),
            "-lines lacks {at}:\n{lines}"
        );
    }
    assert_eq!(trace_frames(&traces, &dump.type_name), INLINED, "{traces}");
    for want in ["main.inner", "main.middle", "main.outer", "main.main.func1"] {
        assert!(traces.contains(want), "-traces lacks {want}:\n{traces}");
    }
    // The unsymbolized pc keeps its address and mapping.
    assert!(
        traces.contains("libfake.so") || traces.contains("7f0000001234"),
        "{traces}"
    );
    for want in [
        format!("{} ", dump.type_name).trim_end().to_string(),
        "untyped".into(),
        "reflect-made type".into(),
    ] {
        assert!(tags.contains(&want), "-tags lacks {want}:\n{tags}");
    }
    assert!(tags.contains("type:"), "{tags}");
    // Unscaled as Go does: 30 x 64 B at 512 KiB.
    let raw = pprof(&["-raw"]);
    let scale = 1.0 / (1.0 - (-64.0f64 / RATE as f64).exp());
    let objects = (30.0 * scale) as i64;
    assert!(
        raw.contains(&format!("{objects} ")),
        "no {objects} in -raw:\n{raw}"
    );
    assert!(raw.contains("synthetic test profile"), "{raw}");
    // Go's linker always writes the note (`go tool buildid` prints it).
    let id = bin.go_build_id().expect("the executable's Go build id");
    assert!(raw.contains(&id), "build id {id} missing:\n{raw}");
    p
}

/// Several processes in one profile: `pie` as pid 101, `plain` (non-PIE)
/// as pids 202 and 303, at the same addresses.
fn check_many(pie: &Prepared, plain: &Prepared, dir: &Path) {
    let processes: Vec<ProcessSamples<'_>> = [(101, pie), (202, plain), (303, plain)]
        .into_iter()
        .map(|(pid, p)| ProcessSamples {
            pid,
            image: p.image(),
            samples: p.samples.clone(),
        })
        .collect();
    let file = dir.join("many.pb.gz");
    write_gzipped_many(
        &processes,
        &meta(),
        std::fs::File::create(&file).expect("create"),
    )
    .expect("write");
    let tags = go_pprof(&file, &["-tags"]);
    eprintln!("{} + {} -tags:\n{tags}", pie.goversion, plain.goversion);
    assert!(tags.contains("pid:"), "{tags}");
    for (pid, p) in [(101, pie), (202, plain), (303, plain)] {
        let focus = format!("-tagfocus=pid={pid}");
        assert!(
            tags.contains(&format!(": {pid}\n")),
            "-tags lacks {pid}:\n{tags}"
        );
        let top = go_pprof(&file, &["-top", &focus]);
        let traces = go_pprof(&file, &["-traces", &focus]);
        let addresses = go_pprof(&file, &["-top", "-addresses", &focus]);
        eprintln!("pid {pid} -traces:\n{traces}\n-top -addresses:\n{addresses}");
        for want in ["main.record", "main.generic[", "main.main"] {
            assert!(top.contains(want), "pid {pid}: -top lacks {want}:\n{top}");
        }
        assert!(!top.contains("runtime.mallocgc"), "{top}");
        // Only this process's samples, with its own stacks.
        assert_eq!(traces.matches("-----------+").count(), 4, "{traces}");
        for other in [101, 202, 303].iter().filter(|&&o| o != pid) {
            assert!(!traces.contains(&format!("{other}\n")), "{traces}");
        }
        assert_eq!(
            trace_frames(&traces, &p.dump.type_name),
            INLINED,
            "{traces}"
        );
        assert!(traces.contains("reflect-made type"), "{traces}");
        // The locations are this process's: its run-time addresses.
        let record = p.bin.lookup("main.record").expect("main.record");
        let (start, end) = (record.entry + p.bias, record.end + p.bias);
        let in_record = addresses
            .lines()
            .filter(|l| l.contains("main.record"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.len() > 4 && u64::from_str_radix(w, 16).is_ok())
            })
            .map(|w| u64::from_str_radix(w, 16).expect("hex"))
            .collect::<Vec<_>>();
        assert!(!in_record.is_empty(), "{addresses}");
        assert!(
            in_record.iter().all(|a| (start..end).contains(a)),
            "pid {pid}: main.record not at {start:#x}..{end:#x}:\n{addresses}"
        );
    }
    // Totals: three processes' worth of the typed sample.
    let raw = go_pprof(&file, &["-raw"]);
    let scale = 1.0 / (1.0 - (-64.0f64 / RATE as f64).exp());
    let objects = (30.0 * scale) as i64;
    assert_eq!(raw.matches(&format!(" {objects} ")).count(), 3, "{raw}");
}

#[test]
fn go_tool_pprof_reads_profiles() {
    let dir = tempfile::tempdir().expect("temp dir");
    let toolchains = testutil::toolchains_or_panic();
    let oldest = toolchains.first().expect("a toolchain");
    let newest = toolchains.last().expect("a toolchain");
    let pie = check(newest, dir.path(), &["-buildmode=pie"]);
    let plain = check(oldest, dir.path(), &["-ldflags=-s -w"]);
    check_many(&pie, &plain, dir.path());
}
