//! `cargo xtask test`: setup, fixtures, fmt, clippy, cargo test.

use std::ffi::OsString;

use anyhow::Result;

use crate::util::{Ctx, run};
use crate::{fixtures, setup};

pub fn test(ctx: &Ctx, cargo_test_args: &[String]) -> Result<()> {
    setup::setup(ctx)?;
    fixtures::fixtures(ctx)?;

    // The same environment for every cargo step, so build scripts that watch an
    // env var do not rebuild between them.
    let toolchains = std::env::join_paths(setup::all_go_binaries(ctx)?)?;
    let env: [(&str, OsString); 2] = [
        ("GOALLOC_FIXTURE_DIR", ctx.fixtures_dir().into_os_string()),
        ("GOALLOC_GO_TOOLCHAINS", toolchains),
    ];

    step(ctx, &["fmt", "--all", "--", "--check"], &[], &env)?;
    step(
        ctx,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
        &env,
    )?;
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
    step(ctx, test_args, cargo_test_args, &env)?;
    println!("test: all steps passed");
    Ok(())
}

fn step(ctx: &Ctx, args: &[&str], extra: &[String], env: &[(&str, OsString)]) -> Result<()> {
    let mut cmd = ctx.cargo()?;
    cmd.args(args).args(extra);
    for (key, value) in env {
        cmd.env(key, value);
    }
    println!("test: {}", crate::util::show(&cmd));
    run(&mut cmd)
}
