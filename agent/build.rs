//! Builds the eBPF programs (agent-ebpf) for `bpfel-unknown-none` and hands
//! the object to the agent, which embeds it. Uses Debian's rustc (it ships a
//! prebuilt `core` for the BPF target) and the project's bpf-linker; `cargo
//! xtask setup` installs both.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf = root.join("agent-ebpf");
    for p in [
        "agent-ebpf/src",
        "agent-ebpf/Cargo.toml",
        "agent-ebpf/build.rs",
        "agent-common/src",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(p).display());
    }
    for v in ["GOALLOC_CACHE", "GOALLOC_BPF_RUSTC", "GOALLOC_BPF_CARGO"] {
        println!("cargo::rerun-if-env-changed={v}");
    }
    let cache = env::var_os("GOALLOC_CACHE").map_or_else(|| root.join(".cache"), PathBuf::from);
    let rustc =
        env::var_os("GOALLOC_BPF_RUSTC").map_or_else(|| "/usr/bin/rustc".into(), PathBuf::from);
    let cargo =
        env::var_os("GOALLOC_BPF_CARGO").map_or_else(|| "/usr/bin/cargo".into(), PathBuf::from);
    let linker_dir = cache.join("tools/bin");
    let bpf_core = Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib");
    for (what, path) in [
        ("rustc for the BPF target", rustc.as_path()),
        ("bpf-linker", &linker_dir.join("bpf-linker")),
        ("prebuilt core for bpfel-unknown-none", bpf_core),
    ] {
        if !path.exists() {
            panic!(
                "{what} not found at {}: run `cargo xtask setup` first (installs rustc-web, \
                 libstd-rust-web-dev-bpf and bpf-linker)",
                path.display()
            );
        }
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    let target_dir = root.join("target/ebpf");
    let path = env::join_paths(
        std::iter::once(linker_dir)
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&ebpf)
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir);
    // The outer cargo's settings describe the host build; none of them apply here.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOC"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("PATH", path)
        .env("RUSTC", &rustc)
        // aya-ebpf uses asm_experimental_arch; Debian's rustc is a stable build.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", "bpf-linker")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .env("AYA_BPF_TARGET_ARCH", &arch);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.display()));
    if !status.success() {
        panic!("building the eBPF programs failed ({status}); see the output above");
    }
    let object = target_dir.join("bpfel-unknown-none/release/goalloc");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("goalloc.bpf.o");
    std::fs::copy(&object, &out).unwrap_or_else(|e| panic!("copy {}: {e}", object.display()));
}
