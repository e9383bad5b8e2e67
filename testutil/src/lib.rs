//! Test-only helpers shared by goalloc's crates: the Go toolchains the tests
//! build with, found one way everywhere, and a `go` command that gives the
//! same result on every machine.
//!
//! A crate of its own (a dev-dependency of `gobinary` and `goalloc`), not a
//! feature of `gobinary`: test code stays out of the reader's public API,
//! the agent's integration tests need not enable features on the crate they
//! test, and it depends on nothing but std, so no crate under test (nor the
//! fuzz workspace) can come to depend on it by accident.
//!
//! Which toolchains: `GOALLOC_GO_TOOLCHAINS` (a colon-separated list of `go`
//! binaries, set by `cargo xtask test`) when it is set; otherwise every
//! `<cache>/go/*/go/bin/go` that `cargo xtask setup` installs plus Debian's
//! `/usr/bin/go`, those present. `<cache>` is `$GOALLOC_CACHE` or the
//! workspace's `.cache`. Toolchains are told apart by `go env GOVERSION`,
//! never by their path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The environment variable listing the toolchains to test with.
pub const TOOLCHAINS_VAR: &str = "GOALLOC_GO_TOOLCHAINS";

/// Debian's Go (package golang-go), used when the variable is not set.
pub const SYSTEM_GO: &str = "/usr/bin/go";

/// A Go toolchain found for the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// The `go` binary.
    pub go: PathBuf,
    /// `go env GOVERSION`, e.g. "go1.27.3" (may carry an experiment suffix).
    pub goversion: String,
    /// Major, minor and patch numbers of `goversion` (patch 0 when absent).
    pub version: [u32; 3],
}

impl Toolchain {
    /// A `go` command for this toolchain; see [`go_command`].
    pub fn command(&self) -> Command {
        go_command(&self.go)
    }

    /// Whether this is Go `major.minor` or newer.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        self.version >= [major, minor, 0]
    }
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The cache directory `cargo xtask setup` fills: `$GOALLOC_CACHE`, else
/// `<workspace>/.cache`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("GOALLOC_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join(".cache"),
    }
}

/// The Go fixtures `cargo xtask fixtures` builds: `$GOALLOC_FIXTURE_DIR`
/// (set by `cargo xtask test`), else `<cache>/fixtures`.
pub fn fixture_dir() -> PathBuf {
    match std::env::var_os("GOALLOC_FIXTURE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => cache_dir().join("fixtures"),
    }
}

/// `go` with an environment that does not depend on the caller's: every
/// `GO*` and `CGO_*` variable removed (GOFLAGS, GOOS, GOARCH, GOEXPERIMENT,
/// GOROOT...), no toolchain downloads, no network, no VCS stamping, and the
/// build cache and GOPATH under the cache directory. Callers add what a
/// build needs (`GOARCH`, `CGO_ENABLED`, ...).
pub fn go_command(go: &Path) -> Command {
    let mut cmd = Command::new(go);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("GO") || key.starts_with("CGO_") {
            cmd.env_remove(&*key);
        }
    }
    let cache = cache_dir();
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false")
        .env("GOCACHE", cache.join("gocache"))
        .env("GOPATH", cache.join("gopath"))
        .env("GOENV", "off")
        .env("GOWORK", "off")
        .env("GOPROXY", "off");
    cmd
}

/// The toolchains to test with, oldest first, one per `GOVERSION` (the
/// first listed wins). Found once per test process. An error (with what to
/// do) when a listed binary is missing or fails, or when none is found.
pub fn toolchains() -> Result<&'static [Toolchain], String> {
    static FOUND: OnceLock<Result<Vec<Toolchain>, String>> = OnceLock::new();
    FOUND
        .get_or_init(find_toolchains)
        .as_deref()
        .map_err(Clone::clone)
}

/// [`toolchains`], panicking with its message: for tests.
pub fn toolchains_or_panic() -> &'static [Toolchain] {
    toolchains().unwrap_or_else(|e| panic!("{e}"))
}

/// The newest toolchain.
pub fn newest() -> Result<&'static Toolchain, String> {
    toolchains()?
        .last()
        .ok_or_else(|| "no Go toolchain found".to_string())
}

fn find_toolchains() -> Result<Vec<Toolchain>, String> {
    let listed = std::env::var(TOOLCHAINS_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let candidates: Vec<PathBuf> = match &listed {
        Some(list) => {
            let paths: Vec<PathBuf> = list
                .split(':')
                .filter(|s| !s.trim().is_empty())
                .map(PathBuf::from)
                .collect();
            let missing: Vec<_> = paths.iter().filter(|p| !p.is_file()).collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{TOOLCHAINS_VAR} lists go binaries that do not exist: {missing:?}"
                ));
            }
            paths
        }
        None => default_candidates(),
    };
    let mut found: Vec<Toolchain> = Vec::new();
    for go in candidates {
        let tc = identify(&go)?;
        if !found.iter().any(|t| t.goversion == tc.goversion) {
            found.push(tc);
        }
    }
    if found.is_empty() {
        return Err(format!(
            "no Go toolchain found: run `cargo xtask setup` (installs them under {}), or set \
             {TOOLCHAINS_VAR} to a colon-separated list of `go` binaries",
            cache_dir().join("go").display()
        ));
    }
    found.sort_by_key(|t| t.version);
    Ok(found)
}

/// `<cache>/go/*/go/bin/go` and Debian's Go, those present.
fn default_candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(cache_dir().join("go"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        // Skip the temp dirs of interrupted installs.
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path().join("go/bin/go"))
        .filter(|go| go.is_file())
        .collect();
    out.sort();
    let system = PathBuf::from(SYSTEM_GO);
    if system.is_file() {
        out.push(system);
    }
    out
}

/// Runs `go env GOVERSION`.
fn identify(go: &Path) -> Result<Toolchain, String> {
    let out = go_command(go)
        .args(["env", "GOVERSION"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", go.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} env GOVERSION failed: {}",
            go.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let goversion = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = parse_goversion(&goversion)
        .ok_or_else(|| format!("{}: cannot parse GOVERSION {goversion:?}", go.display()))?;
    Ok(Toolchain {
        go: go.to_path_buf(),
        goversion,
        version,
    })
}

/// "go1.27.3" -> [1, 27, 3]; "go1.22" -> [1, 22, 0]; "go1.27.3 X:foo" and
/// "go1.28rc1" keep their leading numbers. `None` without "go" and a major
/// and minor number (e.g. "devel ...").
pub fn parse_goversion(s: &str) -> Option<[u32; 3]> {
    let rest = s.trim().strip_prefix("go")?;
    let mut nums = rest
        .split(|c: char| !c.is_ascii_digit())
        .map_while(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next()?, nums.next()?);
    // A patch number only when the minor number is followed by a dot.
    let after_minor = rest.splitn(3, '.').nth(2);
    let patch = after_minor
        .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Some([major, minor, patch])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goversions_parse() {
        assert_eq!(parse_goversion("go1.27.3"), Some([1, 27, 3]));
        assert_eq!(parse_goversion("go1.22"), Some([1, 22, 0]));
        assert_eq!(parse_goversion("go1.28rc1"), Some([1, 28, 0]));
        assert_eq!(
            parse_goversion("go1.27.3 X:nosizespecializedmalloc"),
            Some([1, 27, 3])
        );
        assert_eq!(parse_goversion("devel go1.28-abc"), None);
        assert_eq!(parse_goversion("go"), None);
    }

    #[test]
    fn go_command_scrubs_the_callers_go_environment() {
        let cmd = go_command(Path::new("go"));
        let envs: Vec<_> = cmd.get_envs().collect();
        let set = |k: &str| envs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        assert_eq!(set("GOTOOLCHAIN"), Some(Some("local".as_ref())));
        assert!(set("GOCACHE").flatten().is_some());
        // Whatever the caller had, GOFLAGS is ours and GOOS/GOARCH are not set
        // unless the caller of go_command sets them.
        assert_eq!(set("GOFLAGS"), Some(Some("-buildvcs=false".as_ref())));
        for (k, v) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("GO")
                && ![
                    "GOTOOLCHAIN",
                    "GOFLAGS",
                    "GOCACHE",
                    "GOPATH",
                    "GOENV",
                    "GOWORK",
                    "GOPROXY",
                ]
                .contains(&k.as_str())
            {
                assert_eq!(set(&k), Some(None), "{k}={v:?} is not removed");
            }
        }
    }
}
