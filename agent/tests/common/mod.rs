//! Shared helpers for goalloc's integration tests: locating the Go fixtures
//! built by `cargo xtask test`, insisting on BPF, and driving the fixture's
//! self-stops.
#![allow(dead_code)]

use std::{
    io::Read,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// Opt-out for developers without BPF; CI never sets it.
pub const SKIP_VAR: &str = "GOALLOC_SKIP_BPF_TESTS";

/// Returns false (and says so) only when the developer opted out; otherwise
/// fails the test unless BPF and uprobes are usable.
pub fn require_bpf() -> bool {
    if std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1") {
        eprintln!("BPF test skipped: {SKIP_VAR}=1");
        return false;
    }
    if let Err(e) = goalloc::system::preflight() {
        panic!("this test needs BPF with uprobes ({e}); run as root, or set {SKIP_VAR}=1 to skip BPF tests explicitly");
    }
    true
}

/// One built variant of the Go test programs.
#[derive(Debug, Clone)]
pub struct Variant {
    pub label: String,
    pub dir: PathBuf,
}

impl Variant {
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The fixture variants built by `cargo xtask fixtures`.
pub fn variants() -> Vec<Variant> {
    let dir = std::env::var_os("GOALLOC_FIXTURE_DIR")
        .map(PathBuf::from)
        .expect("GOALLOC_FIXTURE_DIR is not set: run the tests with `cargo xtask test`, which builds the Go fixtures");
    let mut out: Vec<Variant> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read fixture dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("fixture").exists())
        .map(|e| Variant {
            label: e.file_name().to_string_lossy().into_owned(),
            dir: e.path(),
        })
        .collect();
    out.sort_by(|a, b| a.label.cmp(&b.label));
    assert!(!out.is_empty(), "no fixtures in {}: run `cargo xtask fixtures`", dir.display());
    out
}

/// Finds a variant by label; fails if it was not built.
pub fn variant(label: &str) -> Variant {
    variants()
        .into_iter()
        .find(|v| v.label == label)
        .unwrap_or_else(|| panic!("fixture variant {label} was not built: run `cargo xtask fixtures`"))
}

pub struct Finished {
    pub stdout: String,
    /// Exit code, or 128 + signal.
    pub code: i32,
    pub stops: usize,
}

/// Runs a program that stops itself with SIGSTOP at points of interest. At
/// each stop (all threads stopped), `on_stop(pid, index)` runs, then the
/// program continues. `on_start(pid)` runs right after spawning.
pub fn run_with_stops(
    program: &PathBuf,
    args: &[&str],
    mut on_start: impl FnMut(u32),
    mut on_stop: impl FnMut(u32, usize),
) -> Finished {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let pid = child.id();
    on_start(pid);
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            for _ in 0..1800 {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("watchdog: killing {pid} after 180 s");
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        })
    };
    let mut stops = 0;
    let code = loop {
        let mut status = 0;
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WUNTRACED) };
        assert_eq!(r, pid as i32, "waitpid: {}", std::io::Error::last_os_error());
        if libc::WIFSTOPPED(status) {
            on_stop(pid, stops);
            stops += 1;
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        } else if libc::WIFEXITED(status) {
            break libc::WEXITSTATUS(status);
        } else if libc::WIFSIGNALED(status) {
            break 128 + libc::WTERMSIG(status);
        }
    };
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    // Already reaped with waitpid; std must not wait again.
    std::mem::forget(child);
    Finished {
        stdout: reader.join().unwrap(),
        code,
        stops,
    }
}

/// One `phase=...` line of the fixture's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    pub mallocs: u64,
    /// Requested bytes, when the fixture knows them.
    pub bytes: Option<u64>,
    pub goroutines_created: u64,
    pub goroutines_exited: u64,
}

pub fn parse_phases(stdout: &str) -> Vec<Phase> {
    stdout
        .lines()
        .filter(|l| l.starts_with("phase="))
        .map(|l| {
            let field = |k: &str| -> &str {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                    .unwrap_or_else(|| panic!("no {k} in {l:?}"))
            };
            let num = |k: &str| -> i64 { field(k).parse().unwrap_or_else(|_| panic!("bad {k} in {l:?}")) };
            Phase {
                name: field("phase").to_string(),
                mallocs: num("mallocs") as u64,
                bytes: u64::try_from(num("bytes")).ok(),
                goroutines_created: num("goroutines_created") as u64,
                goroutines_exited: num("goroutines_exited") as u64,
            }
        })
        .collect()
}
