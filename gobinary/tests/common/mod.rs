//! Shared by the integration tests that build a Go helper program from
//! `tests/go/<program>` with every toolchain and flavour, run it, and check
//! what goalloc reads from the executable against what the program says
//! about itself.

#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::Command;

/// How a helper is built: the four flavours of the fixture matrix without
/// cgo (the helpers need none; cgo fixtures are covered by the sweeps over
/// `.cache/fixtures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Default,
    Stripped,
    Pie,
    StrippedPie,
}

impl Flavour {
    pub const ALL: [Flavour; 4] = [
        Flavour::Default,
        Flavour::Stripped,
        Flavour::Pie,
        Flavour::StrippedPie,
    ];

    fn args(self) -> &'static [&'static str] {
        match self {
            Flavour::Default => &[],
            Flavour::Stripped => &["-ldflags=-s -w"],
            Flavour::Pie => &["-buildmode=pie"],
            Flavour::StrippedPie => &["-ldflags=-s -w", "-buildmode=pie"],
        }
    }
}

/// One built helper.
#[derive(Debug, Clone)]
pub struct Built {
    pub goversion: String,
    pub flavour: Flavour,
    pub path: PathBuf,
}

/// Builds `tests/go/<program>` with every toolchain and flavour into `dir`
/// (one thread per toolchain). Panics with the build error.
pub fn build_all(program: &str, dir: &Path) -> Vec<Built> {
    let src = testutil::workspace_root().join("tests/go").join(program);
    let toolchains = testutil::toolchains_or_panic();
    std::thread::scope(|s| {
        let handles: Vec<_> = toolchains
            .iter()
            .enumerate()
            .map(|(i, tc)| {
                let src = src.clone();
                let out = dir.join(format!("tc{i}"));
                s.spawn(move || {
                    std::fs::create_dir_all(&out).expect("create build dir");
                    Flavour::ALL
                        .iter()
                        .map(|&flavour| {
                            let path = out.join(format!("{program}-{flavour:?}"));
                            let mut cmd = testutil::go_command(&tc.go);
                            cmd.current_dir(&src)
                                .env("GOTMPDIR", &out)
                                .env("CGO_ENABLED", "0")
                                .args(["build", "-o"])
                                .arg(&path)
                                .args(flavour.args())
                                .arg("main.go");
                            run(&mut cmd);
                            Built {
                                goversion: tc.goversion.clone(),
                                flavour,
                                path,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("build thread"))
            .collect()
    })
}

/// Runs `cmd`, returning its stdout; panics with stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A hex number with or without `0x`.
pub fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

/// The fixture executables of `.cache/fixtures` (every cell, every program
/// but the helpers), sorted.
pub fn fixture_programs(program: &str) -> Vec<PathBuf> {
    let dir = testutil::fixture_dir();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}; run `cargo xtask fixtures`",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path().join(program)))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}
