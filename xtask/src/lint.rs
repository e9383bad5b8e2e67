//! `cargo fmt --check` and `cargo clippy -D warnings` on the two crates the
//! workspace's own fmt and clippy steps cannot reach, each its own workspace
//! with its own toolchain: the eBPF programs (`agent-ebpf/`, Debian's rustc
//! for `bpfel-unknown-none`) and the fuzz targets (`fuzz/`, nightly).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::util::{Ctx, run, show};

/// The eBPF crate is checked once per `pt_regs` layout it compiles for
/// (`agent-ebpf/build.rs` picks it from this variable), so code behind either
/// `cfg(bpf_target_arch)` is linted.
const BPF_ARCHES: &[&str] = &["x86_64", "aarch64"];

/// `cargo fmt --check` on agent-ebpf. Formatting needs no target support, so
/// the host toolchain's rustfmt does it.
pub fn ebpf_fmt(ctx: &Ctx) -> Result<()> {
    let mut cmd = ctx.cargo()?;
    cmd.current_dir(ctx.root.join("agent-ebpf"))
        .args(["fmt", "--check"]);
    announce("agent-ebpf", &cmd);
    run(&mut cmd)
}

/// `cargo clippy --target bpfel-unknown-none -- -D warnings` on agent-ebpf,
/// with the toolchain that builds it (`agent/build.rs`): Debian's rustc
/// (it ships the prebuilt `core` for the BPF target) and Debian's clippy for
/// that same rustc (package `rust-web-clippy`, installed by `cargo xtask
/// setup`). rustup's clippy cannot do it: its rustc is another version, which
/// refuses Debian's `core` (E0514), and rustup ships no `core` for this
/// target. `cargo-clippy` is started directly: `cargo clippy` would prefer
/// `$CARGO_HOME/bin/cargo-clippy`, rustup's.
pub fn ebpf_clippy(ctx: &Ctx) -> Result<()> {
    let rustc = env_path("GOALLOC_BPF_RUSTC", "/usr/bin/rustc");
    let cargo = env_path("GOALLOC_BPF_CARGO", "/usr/bin/cargo");
    let clippy = cargo.with_file_name("cargo-clippy");
    if !clippy.is_file() {
        bail!(
            "{} is missing: run `cargo xtask setup` (installs the Debian package rust-web-clippy, \
             clippy for Debian's rustc)",
            clippy.display()
        );
    }
    for arch in BPF_ARCHES {
        let mut cmd = Command::new(&clippy);
        cmd.current_dir(ctx.root.join("agent-ebpf"))
            .args(["clippy", "--target", "bpfel-unknown-none", "--target-dir"])
            .arg(ctx.target_dir().join("ebpf-clippy"))
            .args(["--", "-D", "warnings"]);
        // The host build's settings are not for this one (as in agent/build.rs).
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_")
                || key.starts_with("RUSTC")
                || key == "RUSTFLAGS"
                || key == "RUSTUP_TOOLCHAIN"
            {
                cmd.env_remove(key.as_ref());
            }
        }
        cmd.env("CARGO", &cargo)
            .env("RUSTC", &rustc)
            // aya-ebpf uses asm_experimental_arch; Debian's rustc is a stable build.
            .env("RUSTC_BOOTSTRAP", "1")
            .env("AYA_BPF_TARGET_ARCH", arch);
        announce(&format!("agent-ebpf, {arch} pt_regs"), &cmd);
        run(&mut cmd)?;
    }
    Ok(())
}

/// `cargo fmt --check` and `cargo clippy --bins --examples -- -D warnings`
/// on fuzz/, with rustup's nightly (what `cargo fuzz` builds it with).
pub fn fuzz(ctx: &Ctx) -> Result<()> {
    for args in [
        &["fmt", "--check"][..],
        &["clippy", "--bins", "--examples", "--", "-D", "warnings"][..],
    ] {
        let mut cmd = Command::new("rustup");
        cmd.current_dir(ctx.root.join("fuzz"))
            .args(["run", "nightly", "cargo"])
            .args(args)
            // The host build's variables are not for the nightly build.
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR");
        announce("fuzz", &cmd);
        run(&mut cmd)?;
    }
    Ok(())
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| Path::new(default).to_path_buf(), PathBuf::from)
}

fn announce(what: &str, cmd: &Command) {
    println!("test: ({what}) {}", show(cmd));
}
