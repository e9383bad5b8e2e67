//! Shared helpers: workspace paths, the cache directory, running commands.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Paths every subcommand needs.
pub struct Ctx {
    /// The workspace root (parent of xtask/).
    pub root: PathBuf,
    /// `<root>/.cache`, or `$GOALLOC_CACHE`.
    pub cache: PathBuf,
}

impl Ctx {
    pub fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let cache = match std::env::var_os("GOALLOC_CACHE") {
            Some(dir) if !dir.is_empty() => std::path::absolute(PathBuf::from(dir))?,
            _ => root.join(".cache"),
        };
        std::fs::create_dir_all(&cache)
            .with_context(|| format!("creating the cache dir {}", cache.display()))?;
        Ok(Ctx { root, cache })
    }

    pub fn tools_bin(&self) -> PathBuf {
        self.cache.join("tools").join("bin")
    }

    pub fn fixtures_dir(&self) -> PathBuf {
        self.cache.join("fixtures")
    }

    /// Cargo's target directory (`$CARGO_TARGET_DIR` or `<root>/target`).
    pub fn target_dir(&self) -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => self.root.join(dir),
            _ => self.root.join("target"),
        }
    }

    /// `target/release/goalloc`, as built by [`Ctx::build_goalloc_release`].
    pub fn goalloc_release(&self) -> PathBuf {
        self.target_dir().join("release").join("goalloc")
    }

    /// A `cargo` command run from the workspace root, with the cached tools
    /// (bpf-linker) first in PATH. `GOALLOC_CACHE` is passed on (made absolute)
    /// only when the user set it: agent/build.rs defaults to the same directory,
    /// and it reruns when that variable changes.
    pub fn cargo(&self) -> Result<Command> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&self.root)
            .env("PATH", self.path_with_tools()?);
        if std::env::var_os("GOALLOC_CACHE").is_some_and(|v| !v.is_empty()) {
            cmd.env("GOALLOC_CACHE", &self.cache);
        }
        Ok(cmd)
    }

    pub fn path_with_tools(&self) -> Result<OsString> {
        let mut paths = vec![self.tools_bin()];
        if let Some(path) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&path));
        }
        Ok(std::env::join_paths(paths)?)
    }

    pub fn build_goalloc_release(&self) -> Result<PathBuf> {
        run(self.cargo()?.args(["build", "--release", "-p", "goalloc"]))?;
        let bin = self.goalloc_release();
        if !bin.exists() {
            bail!("cargo build succeeded but {} does not exist", bin.display());
        }
        Ok(bin)
    }
}

/// `prog arg1 arg2` for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; fails unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs `cmd`, captures stdout; fails (with its stderr) unless it exits with 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// FNV-1a, 64 bit: a stable hash for build stamps.
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("kill({pid}, {sig})"));
    }
    Ok(())
}

extern "C" fn on_sigint(_: libc::c_int) {}

/// Lets xtask survive Ctrl-C so it can clean up its children: the terminal sends
/// SIGINT to the whole foreground group, so the children get it anyway. A handler
/// (not SIG_IGN) is used because handlers are reset to the default on exec.
pub fn survive_sigint() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: installs an async-signal-safe handler that does nothing.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}
