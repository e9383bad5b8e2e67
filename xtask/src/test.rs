//! `cargo xtask test`: setup, fixtures, fmt, clippy (the workspace, the eBPF
//! crate and the fuzz targets), cargo test, fuzz smoke.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::util::{Ctx, run};
use crate::{fixtures, lint, setup};

pub fn test(ctx: &Ctx, cargo_test_args: &[String]) -> Result<()> {
    setup::setup_for_tests(ctx)?;
    fixtures::fixtures(ctx)?;

    // The same environment for every cargo step, so build scripts that watch an
    // env var do not rebuild between them.
    let toolchains = std::env::join_paths(unit_test_toolchains(ctx)?)?;
    let env: [(&str, OsString); 2] = [
        ("GOALLOC_FIXTURE_DIR", ctx.fixtures_dir().into_os_string()),
        ("GOALLOC_GO_TOOLCHAINS", toolchains),
    ];

    for (key, value) in &env {
        println!("test: {key}={}", value.to_string_lossy());
    }

    // Every step runs; the failed ones are listed at the end.
    let mut failed = Vec::new();
    let cargo = |args: &[&str], extra: &[String]| run_step(ctx, args, extra, &env);
    record(
        &mut failed,
        "fmt",
        cargo(&["fmt", "--all", "--", "--check"], &[]),
    );
    record(
        &mut failed,
        "clippy",
        cargo(
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        ),
    );
    // The eBPF crate and the fuzz targets are workspaces of their own, with
    // their own toolchains: the two steps above do not reach them.
    record(&mut failed, "agent-ebpf fmt", lint::ebpf_fmt(ctx));
    record(&mut failed, "agent-ebpf clippy", lint::ebpf_clippy(ctx));
    if std::env::var_os(crate::fuzz::SKIP_VAR).is_some_and(|v| v == "1") {
        println!(
            "test: fuzz fmt and clippy SKIPPED ({}=1)",
            crate::fuzz::SKIP_VAR
        );
    } else {
        record(&mut failed, "fuzz fmt and clippy", lint::fuzz(ctx));
    }
    // `cargo xtask test -- -p goalloc` narrows the run instead of adding to it.
    let narrowed = cargo_test_args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a.starts_with("-p") || a.starts_with("--package"));
    let test_args: &[&str] = if narrowed {
        &["test"]
    } else {
        &["test", "--workspace"]
    };
    record(&mut failed, "cargo test", cargo(test_args, cargo_test_args));
    record(&mut failed, "fuzz smoke", crate::fuzz::smoke(ctx));
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    println!(
        "test: fmt, clippy, cargo test, agent-ebpf and fuzz fmt and clippy, and the fuzz smoke passed"
    );
    Ok(())
}

/// Notes a failed step (and says why) so the others still run.
fn record(failed: &mut Vec<&'static str>, name: &'static str, result: Result<()>) {
    if let Err(e) = result {
        eprintln!("test: {name} failed: {e:#}");
        failed.push(name);
    }
}

/// Go releases (major, minor) the unit tests build with. They build ~10
/// binaries per toolchain: a spread of releases (1.19, Debian's, with the
/// 1.18 table layout; 1.21; 1.23 with its large-frame mallocgc; 1.26 with
/// the zeroed pclntab text start; 1.27) covers the formats; the matrix tests
/// run every release end to end.
const UNIT_TEST_RELEASES: &[[u64; 2]] = &[[1, 19], [1, 21], [1, 23], [1, 26], [1, 27]];

/// One installed toolchain per release of [`UNIT_TEST_RELEASES`], chosen by
/// `go env GOVERSION` (never by path).
fn unit_test_toolchains(ctx: &Ctx) -> Result<Vec<PathBuf>> {
    let mut picked: Vec<(Vec<u64>, PathBuf)> = Vec::new();
    for go in setup::all_go_binaries(ctx)? {
        let key = setup::version_key(&setup::go_version_of(&go)?);
        let release = key.get(..2).unwrap_or_default();
        if UNIT_TEST_RELEASES.iter().any(|r| r[..] == *release)
            && !picked.iter().any(|(k, _)| k.get(..2) == Some(release))
        {
            picked.push((key, go));
        }
    }
    Ok(picked.into_iter().map(|(_, go)| go).collect())
}

fn run_step(ctx: &Ctx, args: &[&str], extra: &[String], env: &[(&str, OsString)]) -> Result<()> {
    let mut cmd = ctx.cargo()?;
    cmd.args(args).args(extra);
    for (key, value) in env {
        cmd.env(key, value);
    }
    println!(
        "test: cargo {}",
        [args, &extra_refs(extra)].concat().join(" ")
    );
    run(&mut cmd)
}

fn extra_refs(extra: &[String]) -> Vec<&str> {
    extra.iter().map(String::as_str).collect()
}
