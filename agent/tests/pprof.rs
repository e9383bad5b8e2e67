//! The pprof writer against the real `go tool pprof`: samples built from
//! real stacks of a real Go program (`tests/go/pcdump`, PIE with a load
//! bias, and a stripped non-PIE build, by the oldest and newest
//! toolchains), with allocator frames on top that must be trimmed, a real
//! type descriptor, an untyped and a reflect-made sample, and a pc no
//! mapping symbolizes; `-top`, `-traces` and `-tags` must show the
//! functions, files, lines and type labels put in.

use std::path::{Path, PathBuf};
use std::process::Command;

use goalloc::profile::{AllocSample, OtherMapping, ProcessImage, ProfileMeta, write_gzipped};
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

fn check(tc: &testutil::Toolchain, dir: &Path, args: &[&str]) {
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
    let libc = OtherMapping {
        start: 0x7f00_0000_0000,
        limit: 0x7f00_0010_0000,
        file_offset: 0,
        path: "/usr/lib/libfake.so".into(),
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
    let image = ProcessImage {
        binary: &bin,
        path: exe.display().to_string(),
        load_bias: bias,
        other_mappings: vec![libc],
    };
    let meta = ProfileMeta {
        rate: RATE,
        time_nanos: 1_700_000_000_000_000_000,
        duration_nanos: 30_000_000_000,
        comments: vec!["synthetic test profile".into()],
    };
    let file = dir.join(format!("{}.pb.gz", tc.goversion));
    write_gzipped(
        &image,
        &samples,
        &meta,
        std::fs::File::create(&file).expect("create"),
    )
    .expect("write");

    let newest = testutil::newest().expect("go");
    let pprof = |args: &[&str]| {
        run(testutil::go_command(&newest.go)
            .args(["tool", "pprof"])
            .args(args)
            .arg(&file))
    };
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
    let trace = traces
        .split("-----------+")
        .find(|t| t.contains(&dump.type_name))
        .expect("the typed sample");
    let frames: Vec<&str> = trace
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("main.") || w.starts_with("runtime."))
        })
        .collect();
    assert_eq!(
        frames,
        [
            "main.record",
            "main.inner",
            "main.middle",
            "main.outer",
            "main.main",
            "runtime.main"
        ],
        "{trace}"
    );
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
    if let Some(id) = bin.go_build_id() {
        assert!(raw.contains(&id), "build id {id} missing:\n{raw}");
    }
}

#[test]
fn go_tool_pprof_reads_profiles() {
    let dir = tempfile::tempdir().expect("temp dir");
    let toolchains = testutil::toolchains_or_panic();
    let oldest = toolchains.first().expect("a toolchain");
    let newest = toolchains.last().expect("a toolchain");
    check(newest, dir.path(), &["-buildmode=pie"]);
    check(oldest, dir.path(), &["-ldflags=-s -w"]);
}
