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

// ---------------------------------------------------------------------------
// The node agent as a child process, and what it serves.

/// The `goalloc` binary under test.
pub const GOALLOC: &str = env!("CARGO_BIN_EXE_goalloc");

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP/1.1 GET (`Connection: close`): status and body, or `None`
/// when nothing answers.
pub fn http_get(addr: &str, target: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Some((status, body.to_string()));
    }
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, tail) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some((status, out));
        }
        out.push_str(tail.get(..size)?);
        rest = tail.get(size + 2..)?;
    }
}

/// One sample of an OpenMetrics/Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The value as written (counters are exact integers).
    pub raw: String,
}

impl Sample {
    pub fn value(&self) -> f64 {
        self.raw.parse().unwrap_or_else(|_| panic!("bad value in {self:?}"))
    }
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }
}

/// Parses `name{k="v",...} value` lines; comments are skipped.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let mut labels = std::collections::BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let (mut key, mut val, mut in_value, mut escaped) = (String::new(), String::new(), false, false);
            let end = loop {
                let (i, c) = chars.next().unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
                match (in_value, escaped, c) {
                    (true, true, _) => {
                        val.push(if c == 'n' { '\n' } else { c });
                        escaped = false;
                    }
                    (true, false, '\\') => escaped = true,
                    (true, false, '"') => {
                        labels.insert(std::mem::take(&mut key), std::mem::take(&mut val));
                        in_value = false;
                    }
                    (true, false, _) => val.push(c),
                    (false, _, '"') => in_value = true,
                    (false, _, '}') => break i,
                    (false, _, '=' | ',' | ' ') => {}
                    (false, _, _) => key.push(c),
                }
            };
            rest = &body[end + 1..];
        }
        let raw = rest.split_whitespace().next().unwrap_or_else(|| panic!("no value in {line:?}"));
        out.push(Sample {
            name: line[..name_end].to_string(),
            labels,
            raw: raw.to_string(),
        });
    }
    out
}

/// The samples named `name` whose labels include all of `with`.
pub fn samples<'a>(all: &'a [Sample], name: &str, with: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.name == name && with.iter().all(|(k, v)| s.label(k) == *v))
        .collect()
}

/// The value of the only sample named `name` with labels `with`, if any.
pub fn sample_value(all: &[Sample], name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let found = samples(all, name, with);
    assert!(found.len() <= 1, "{} series {name}{with:?}: {found:?}", found.len());
    found.first().map(|s| s.value())
}

/// `goalloc agent` on a free port of 127.0.0.1, stopped (SIGTERM, then
/// SIGKILL after 10 s) when dropped, also when a test panics.
pub struct Agent {
    child: std::process::Child,
    pub addr: String,
    stderr: Arc<std::sync::Mutex<String>>,
    pub status: Option<std::process::ExitStatus>,
}

impl Agent {
    /// Starts an agent (`--sweep-interval 1s`) and waits until it listens.
    pub fn start() -> Agent {
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut child = Command::new(GOALLOC)
                .args(["agent", "--listen", &addr, "--sweep-interval", "1s"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn goalloc agent");
            let stderr = Arc::new(std::sync::Mutex::new(String::new()));
            let (tx, rx) = std::sync::mpsc::channel();
            let mut pipe = std::io::BufReader::new(child.stderr.take().unwrap());
            let sink = stderr.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut line = String::new();
                while matches!(pipe.read_line(&mut line), Ok(n) if n > 0) {
                    let listening = line.contains("agent listening");
                    sink.lock().unwrap().push_str(&line);
                    line.clear();
                    if listening {
                        let _ = tx.send(());
                    }
                }
            });
            let listening = rx.recv_timeout(Duration::from_secs(30)).is_ok();
            let agent = Agent {
                child,
                addr,
                stderr,
                status: None,
            };
            if listening {
                return agent;
            }
            let said = agent.stderr();
            drop(agent);
            // Another process took the port between the probe and the bind.
            assert!(said.contains("cannot listen"), "goalloc agent did not start:\n{said}");
        }
        panic!("no free port for the agent after 5 attempts");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the agent wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for /readyz (the initial /proc sweep done); returns how long it took.
    pub fn wait_ready(&mut self) -> Duration {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("goalloc agent exited ({status}):\n{}", self.stderr());
            }
            if http_get(&self.addr, "/readyz").is_some_and(|(code, _)| code == 200) {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("goalloc agent not ready after 60 s:\n{}", self.stderr());
    }

    /// The raw /metrics text.
    pub fn metrics_text(&self) -> String {
        match http_get(&self.addr, "/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics: {other:?}\n{}", self.stderr()),
        }
    }

    pub fn scrape(&self) -> Vec<Sample> {
        parse_exposition(&self.metrics_text())
    }

    /// SIGTERM, then wait (SIGKILL after 10 s); returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(10) {
                eprintln!("goalloc agent ignored SIGTERM for 10 s: killing it");
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.status = Some(status);
        status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILLs a process when dropped while armed (a test's cleanup on panic).
#[derive(Default)]
pub struct KillOnDrop(pub std::cell::Cell<Option<u32>>);

impl KillOnDrop {
    pub fn arm(&self, pid: u32) {
        self.0.set(Some(pid));
    }
    pub fn disarm(&self) {
        self.0.set(None);
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.get() {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`...).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from 3 after the command name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Open file descriptors of a process by kind: the link target, with the
/// path of regular files and the inode of sockets and pipes dropped
/// (`anon_inode:bpf_link`, `socket`, `/dev/null`...).
pub fn fd_kinds(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        let target = target.to_string_lossy().into_owned();
        let kind = match target.split_once(":[") {
            Some((kind, _)) => kind.to_string(),
            None if target.starts_with("/proc/") => "/proc/...".to_string(),
            None => target,
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}
