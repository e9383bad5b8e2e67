//! The fuzz smoke run of `cargo xtask test`: `fuzz/fuzz.sh smoke` (every
//! committed seed, then a few seconds of fuzzing per target, ASan on).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{Ctx, output, run};

/// cargo-fuzz, installed into `<cache>/tools` by `cargo xtask setup`.
pub const CARGO_FUZZ: &str = "cargo-fuzz@0.13.2";

/// Seconds of fuzzing per target after the seeds (5 targets).
const SMOKE_SECONDS: u32 = 15;

/// Opt-out for developers without the nightly toolchain; CI never sets it.
pub const SKIP_VAR: &str = "GOALLOC_SKIP_FUZZ";

pub fn smoke(ctx: &Ctx) -> Result<()> {
    if std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1") {
        println!("test: fuzz smoke SKIPPED ({SKIP_VAR}=1)");
        return Ok(());
    }
    nightly_rustc().with_context(|| {
        format!(
            "the fuzz smoke needs Rust nightly (cargo-fuzz builds with sanitizers): \
             `rustup toolchain install nightly`, or set {SKIP_VAR}=1 to skip it"
        )
    })?;
    let cargo_fuzz = ctx.tools_bin().join("cargo-fuzz");
    if !cargo_fuzz.is_file() {
        bail!(
            "{} is missing: run `cargo xtask setup`",
            cargo_fuzz.display()
        );
    }
    println!("test: fuzz/fuzz.sh smoke {SMOKE_SECONDS}");
    run(Command::new(ctx.root.join("fuzz").join("fuzz.sh"))
        .args(["smoke", &SMOKE_SECONDS.to_string()])
        .env("CARGO_FUZZ", &cargo_fuzz)
        // The host build's variables are not for the sanitizer build.
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))
}

/// `rustc -V` of rustup's nightly toolchain.
fn nightly_rustc() -> Result<String> {
    let version = output(Command::new("rustup").args(["run", "nightly", "rustc", "-V"]))?;
    Ok(version.trim().to_string())
}

/// Installs cargo-fuzz into `<cache>/tools` unless it is there.
pub fn install_cargo_fuzz(ctx: &Ctx) -> Result<()> {
    let bin = ctx.tools_bin().join("cargo-fuzz");
    if bin.is_file() {
        println!("setup: cargo-fuzz ok (cached)");
        return Ok(());
    }
    println!("setup: cargo-fuzz: cargo install {CARGO_FUZZ}");
    let mut cmd = ctx.cargo()?;
    cmd.args(["install", CARGO_FUZZ, "--locked", "--root"])
        .arg(ctx.cache.join("tools"));
    run(&mut cmd)?;
    if !bin.is_file() {
        bail!("cargo install finished but {} is missing", bin.display());
    }
    println!("setup: cargo-fuzz ok (installed)");
    Ok(())
}
