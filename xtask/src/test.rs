//! `cargo xtask test`: setup, fixtures, fmt, clippy, cargo test, fuzz smoke.

use std::ffi::OsString;

use anyhow::{Result, bail};

use crate::util::{Ctx, run};
use crate::{fixtures, setup};

pub fn test(ctx: &Ctx, cargo_test_args: &[String]) -> Result<()> {
    setup::setup_for_tests(ctx)?;
    fixtures::fixtures(ctx)?;

    // The same environment for every cargo step, so build scripts that watch an
    // env var do not rebuild between them.
    // The unit tests build ~10 binaries per toolchain: a spread of releases
    // (Debian's 1.19, 1.21, 1.23 with its large-frame mallocgc, 1.26 with the
    // zeroed pclntab text start, 1.27) covers the formats; the matrix tests
    // run every release end to end.
    let toolchains = std::env::join_paths(
        setup::all_go_binaries(ctx)?
            .into_iter()
            .filter(|go| unit_test_toolchain(go)),
    )?;
    let env: [(&str, OsString); 2] = [
        ("GOALLOC_FIXTURE_DIR", ctx.fixtures_dir().into_os_string()),
        ("GOALLOC_GO_TOOLCHAINS", toolchains),
    ];

    for (key, value) in &env {
        println!("test: {key}={}", value.to_string_lossy());
    }

    // Every step runs; the failed ones are listed at the end.
    let mut failed = Vec::new();
    let mut step = |name: &'static str, args: &[&str], extra: &[String]| {
        if let Err(e) = run_step(ctx, args, extra, &env) {
            eprintln!("test: {name} failed: {e:#}");
            failed.push(name);
        }
    };
    step("fmt", &["fmt", "--all", "--", "--check"], &[]);
    step(
        "clippy",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    );
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
    step("cargo test", test_args, cargo_test_args);
    if let Err(e) = crate::fuzz::smoke(ctx) {
        eprintln!("test: fuzz smoke failed: {e:#}");
        failed.push("fuzz smoke");
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    println!("test: fmt, clippy, cargo test and the fuzz smoke passed");
    Ok(())
}

fn unit_test_toolchain(go: &std::path::Path) -> bool {
    let path = go.to_string_lossy();
    path == setup::SYSTEM_GO
        || ["1.21.", "1.23.", "1.26.", "1.27."]
            .iter()
            .any(|v| path.contains(&format!("/go/{v}")))
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
