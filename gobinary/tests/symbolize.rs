//! The pclntab symbolizer against Go's own tools, on real executables:
//! - `tests/go/pcdump` (built with every toolchain, plain, stripped, PIE
//!   and stripped PIE) records stacks at call sites inside inlined
//!   functions and prints `runtime.CallersFrames`' frames; expanding the
//!   same pcs from the file must give the same frames, and the inline
//!   chain of a pc must reproduce the virtual pcs `runtime.Callers` lists;
//! - `go tool addr2line` (debug/gosym, no inlining) on every fixture cell:
//!   the innermost frame's file and line and the physical function's name
//!   must equal its answer for pcs spread over every function.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{Built, build_all, hex, run};
use gobinary::GoBinary;
use gobinary::symbolize::{Frame, Symbolizer, elide_wrappers, wrapper_func_id};

#[derive(Debug, Default)]
struct Stack {
    name: String,
    pcs: Vec<u64>,
    frames: Vec<(String, String, u32)>,
}

fn parse_pcdump(out: &str) -> (u64, Vec<Stack>) {
    let mut anchor = None;
    let mut stacks: Vec<Stack> = Vec::new();
    for line in out.lines() {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "anchor" => anchor = Some(hex(rest)),
            "stack" => stacks.push(Stack {
                name: rest.to_string(),
                ..Stack::default()
            }),
            "pc" => stacks.last_mut().expect("stack").pcs.push(hex(rest)),
            "frame" => {
                let mut p = rest.rsplitn(3, '|');
                let line = p.next().unwrap().parse().unwrap();
                let file = p.next().unwrap().to_string();
                let func = p.next().unwrap().to_string();
                stacks
                    .last_mut()
                    .expect("stack")
                    .frames
                    .push((func, file, line));
            }
            "type" => {} // for the pprof test
            _ => panic!("unexpected line {line:?}"),
        }
    }
    (anchor.expect("anchor line"), stacks)
}

/// What `runtime.Frame` holds: the printed name (shapes as `[...]`).
fn key(f: &Frame) -> (String, String, u32) {
    (f.print_name(), f.file.clone(), f.line)
}

fn check_pcdump(b: &Built) -> Result<usize, String> {
    let out = run(&mut std::process::Command::new(&b.path));
    let (anchor, stacks) = parse_pcdump(&out);
    let bin = GoBinary::open(&b.path).map_err(|e| e.to_string())?;
    let sym = Symbolizer::new(&bin).map_err(|e| e.to_string())?;
    let main = bin.lookup("main.main").ok_or("no main.main")?;
    let bias = anchor.wrapping_sub(main.entry);
    if !bin.is_pie() && bias != 0 {
        return Err(format!("non-PIE with load bias {bias:#x}"));
    }
    let mut inlined_seen = 0;
    for s in &stacks {
        let ctx = |m: String| format!("stack {}: {m}", s.name);
        if s.pcs.len() != s.frames.len() {
            return Err(ctx(format!(
                "{} pcs but {} frames from CallersFrames",
                s.pcs.len(),
                s.frames.len()
            )));
        }
        // Each listed pc (real or virtual) is one frame: the innermost of
        // its expansion.
        let mut i = 0;
        while i < s.pcs.len() {
            let pc = s.pcs[i].wrapping_sub(bias);
            let mut chain = sym
                .frames_at_return(pc)
                .map_err(|e| ctx(format!("pc {pc:#x}: {e}")))?;
            if key(&chain[0]) != s.frames[i] {
                return Err(ctx(format!(
                    "pc {pc:#x}: ours {:?}, Go {:?}",
                    key(&chain[0]),
                    s.frames[i]
                )));
            }
            // The whole chain: the callers Go lists after it, at the
            // virtual pcs `entry + parentPc + 1`.
            elide_wrappers(&mut chain);
            for (j, f) in chain.iter().enumerate().skip(1) {
                let (Some(&want_pc), Some(want)) = (s.pcs.get(i + j), s.frames.get(i + j)) else {
                    return Err(ctx(format!("chain of {pc:#x} longer than the stack")));
                };
                if f.pc + 1 != want_pc.wrapping_sub(bias) || &key(f) != want {
                    return Err(ctx(format!(
                        "chain of {pc:#x}, frame {j}: ours {:?} at {:#x}, Go {want:?} at {:#x}",
                        key(f),
                        f.pc + 1,
                        want_pc.wrapping_sub(bias)
                    )));
                }
                if !f.inlined && j + 1 != chain.len() {
                    return Err(ctx("physical frame inside a chain".into()));
                }
                inlined_seen += 1;
            }
            i += chain.len();
        }
    }
    let names: Vec<&str> = stacks.iter().map(|s| s.name.as_str()).collect();
    if !names.contains(&"inlined") || inlined_seen < 6 {
        return Err(format!(
            "too few inlined frames checked ({inlined_seen}) in {names:?}"
        ));
    }
    Ok(inlined_seen)
}

#[test]
fn inlined_frames_equal_callers_frames() {
    let dir = tempfile::tempdir().expect("temp dir");
    let built = build_all("pcdump", dir.path());
    assert!(built.len() >= 4);
    let mut failures = Vec::new();
    for b in &built {
        match check_pcdump(b) {
            Ok(n) => eprintln!("{} {:?}: {n} inlined frames equal", b.goversion, b.flavour),
            Err(e) => failures.push(format!("{} {:?}: {e}", b.goversion, b.flavour)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `go tool addr2line` of the newest toolchain for `pcs` of `path`:
/// (function, file, line) each.
fn addr2line(path: &std::path::Path, pcs: &[u64]) -> Vec<(String, String, u32)> {
    let go = &testutil::newest().expect("a Go toolchain").go;
    let mut child = testutil::go_command(go)
        .args(["tool", "addr2line"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("go tool addr2line");
    let input: String = pcs.iter().map(|pc| format!("{pc:#x}\n")).collect();
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("addr2line output");
    writer.join().expect("writer").expect("write pcs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|c| {
            let (file, line) = c[1].rsplit_once(':').expect("file:line");
            (
                c[0].to_string(),
                file.to_string(),
                line.parse().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn frames_equal_addr2line_on_every_fixture() {
    let fixtures = common::fixture_programs("fixture");
    assert!(fixtures.len() >= 40, "run `cargo xtask fixtures`");
    let mut failures = Vec::new();
    for path in &fixtures {
        let bin = GoBinary::open(path).expect("fixture");
        let sym = match Symbolizer::new(&bin) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        // Pcs spread over every function: the entry and a third in.
        let funcs = bin.pclntab_functions_all().expect("functions");
        let pcs: Vec<u64> = funcs
            .iter()
            .flat_map(|f| [f.entry, f.entry + f.size() / 3])
            .collect();
        let want = addr2line(path, &pcs);
        assert_eq!(want.len(), pcs.len());
        let (mut inlined, mut wrappers, mut bad) = (0, 0, Vec::new());
        for (pc, want) in pcs.iter().zip(&want) {
            let frames = match sym.frames(*pc) {
                Ok(f) => f,
                Err(e) => {
                    bad.push(format!("{pc:#x}: {e}"));
                    continue;
                }
            };
            let inner = &frames[0];
            let outer = frames.last().expect("a frame");
            inlined += frames.len() - 1;
            wrappers += usize::from(outer.wrapper);
            let got = (outer.function.clone(), inner.file.clone(), inner.line);
            // Past the end of a function's line table (alignment padding)
            // the runtime's funcline1 says "?", debug/gosym "".
            let want = &match want {
                (f, file, 0) if file.is_empty() => (f.clone(), "?".to_string(), 0),
                w => w.clone(),
            };
            if &got != want {
                bad.push(format!("{pc:#x}: ours {got:?}, addr2line {want:?}"));
            }
        }
        if inlined == 0 || wrappers == 0 {
            bad.push(format!(
                "only {inlined} inlined and {wrappers} wrapper frames"
            ));
        }
        if !bad.is_empty() {
            failures.push(format!(
                "{}: {} of {} pcs differ: {}",
                path.display(),
                bad.len(),
                pcs.len(),
                bad.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
        eprintln!(
            "{}: {} pcs equal, {inlined} inlined frames, {wrappers} wrappers",
            path.display(),
            pcs.len()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The wrapper id table agrees with each binary: `abi.FuncIDWrapper` is the
/// constant after `systemstack_switch` in every release, so the function
/// `runtime.systemstack_switch` has the id just below it.
#[test]
fn wrapper_id_matches_every_fixture() {
    for path in common::fixture_programs("fixture") {
        let bin = GoBinary::open(&path).expect("fixture");
        let sym = Symbolizer::new(&bin).expect("symbolizer");
        let f = bin
            .lookup("runtime.systemstack_switch")
            .expect("runtime.systemstack_switch");
        let id = sym.func_id(f.entry).expect("func id");
        assert_eq!(
            id + 1,
            wrapper_func_id(bin.go_version()),
            "{}",
            path.display()
        );
    }
}
