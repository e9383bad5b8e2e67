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
        panic!(
            "this test needs BPF with uprobes ({e}); run as root, or set {SKIP_VAR}=1 to skip BPF tests explicitly"
        );
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
    assert!(
        !out.is_empty(),
        "no fixtures in {}: run `cargo xtask fixtures`",
        dir.display()
    );
    out
}

/// Finds a variant by label; fails if it was not built.
pub fn variant(label: &str) -> Variant {
    variants()
        .into_iter()
        .find(|v| v.label == label)
        .unwrap_or_else(|| {
            panic!("fixture variant {label} was not built: run `cargo xtask fixtures`")
        })
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
        assert_eq!(
            r,
            pid as i32,
            "waitpid: {}",
            std::io::Error::last_os_error()
        );
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
            let num = |k: &str| -> i64 {
                field(k)
                    .parse()
                    .unwrap_or_else(|_| panic!("bad {k} in {l:?}"))
            };
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
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET (`Connection: close`): status and body, or `None`
/// when nothing answers.
pub fn http_get(addr: &str, target: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
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
        self.raw
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {self:?}"))
    }
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }
}

/// Parses `name{k="v",...} value` lines; comments are skipped.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let mut labels = std::collections::BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let (mut key, mut val, mut in_value, mut escaped) =
                (String::new(), String::new(), false, false);
            let end = loop {
                let (i, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
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
        let raw = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value in {line:?}"));
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
    assert!(
        found.len() <= 1,
        "{} series {name}{with:?}: {found:?}",
        found.len()
    );
    found.first().map(|s| s.value())
}

/// `goalloc agent` on a free port of 127.0.0.1, stopped (SIGTERM, then
/// SIGKILL after 30 s) when dropped, also when a test panics.
pub struct Agent {
    child: std::process::Child,
    pub addr: String,
    stderr: Arc<std::sync::Mutex<String>>,
    pub status: Option<std::process::ExitStatus>,
}

impl Agent {
    /// Starts an agent with per-allocation probes on every Go process
    /// (`--exact-for all`), see [`Agent::start_with`].
    pub fn start() -> Agent {
        // The fixtures allocate as fast as they can, far over the default
        // cost budget: these tests are about counting, not the guard.
        Agent::start_with(&["--exact-for", "all", "--exact-budget", "1"])
    }

    /// Starts an agent (`--sweep-interval 1s --detach-grace 1s`, so tests see
    /// binaries detached soon after their processes exit, plus `extra`) and
    /// waits until it listens.
    pub fn start_with(extra: &[&str]) -> Agent {
        Agent::start_via(&[], extra)
    }

    /// [`Agent::start_with`] through a wrapper command (`prefix`, e.g.
    /// `setpriv ... --`), whose last word is followed by goalloc.
    pub fn start_via(prefix: &[&str], extra: &[&str]) -> Agent {
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut cmd = match prefix.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(GOALLOC);
                    c
                }
                None => Command::new(GOALLOC),
            };
            let mut child = cmd
                .args([
                    "agent",
                    "--listen",
                    &addr,
                    "--sweep-interval",
                    "1s",
                    "--detach-grace",
                    "1s",
                ])
                .args(extra)
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
            assert!(
                said.contains("cannot listen"),
                "goalloc agent did not start:\n{said}"
            );
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

    /// SIGTERM, then wait (SIGKILL after 30 s: removing a uprobe takes
    /// ~0.1 s); returns the exit status.
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
            if start.elapsed() > Duration::from_secs(30) {
                eprintln!("goalloc agent still running 30 s after SIGTERM: killing it");
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
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat(5), counted from 3 after the command name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Open file descriptors of a process by kind: the link target, with the
/// path of regular files and the inode of sockets and pipes dropped
/// (`anon_inode:bpf_link`, `socket`, `/dev/null`...).
pub fn fd_kinds(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
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

/// A child stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
pub struct Terminate(pub std::process::Child);

impl Drop for Terminate {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..500 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// BPF objects a process holds, found through /proc/PID/fdinfo.

/// The numbers after `key` (`map_id:`, `link_id:`...) in /proc/PID/fdinfo/*.
pub fn fdinfo_values(pid: u32, key: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        })
        .collect()
}

/// The id of the BPF map `name` that process `pid` holds.
pub fn map_id_of(pid: u32, name: &str) -> u32 {
    fdinfo_values(pid, "map_id:")
        .into_iter()
        .find(|id| aya::maps::MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some(name)))
        .unwrap_or_else(|| panic!("process {pid} holds no BPF map {name}"))
}

/// The processes with an entry in a PROC_STATS map (by map id).
pub fn proc_stats_keys(map_id: u32) -> std::collections::BTreeSet<u32> {
    use aya::maps::{Map, MapData, PerCpuHashMap};
    let map = Map::from_map_data(MapData::from_id(map_id).unwrap()).unwrap();
    let stats: PerCpuHashMap<MapData, u32, agent_common::ProcStats> = map.try_into().unwrap();
    stats.keys().filter_map(Result::ok).collect()
}

fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> libc::c_long {
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    }
}

/// The path and file offset of a uprobe link (`None` for other links), or
/// the error of opening it by id (ENOENT once it is gone). The path is the
/// one the uprobe was attached through.
pub fn uprobe_link(id: u32) -> std::io::Result<Option<(String, u64)>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut [u64::from(id), 0]);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, then (at byte 16) for perf
    // links: perf type, pad, uprobe { file_name ptr, name_len, offset }.
    let get_info = |info: &mut [u64; 16]| {
        let len = std::mem::size_of_val(info) as u64;
        let mut attr = [fd.as_raw_fd() as u64 | len << 32, info.as_mut_ptr() as u64];
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let mut info = [0u64; 16];
    get_info(&mut info)?;
    // BPF_LINK_TYPE_PERF_EVENT, BPF_PERF_EVENT_UPROBE.
    if info[0] as u32 != 7 || info[2] as u32 != 1 {
        return Ok(None);
    }
    let mut name = [0u8; 4096];
    info = [0; 16];
    info[3] = name.as_mut_ptr() as u64;
    info[4] = name.len() as u64;
    get_info(&mut info)?;
    let len = name.iter().position(|b| *b == 0).unwrap_or(0);
    Ok(Some((
        String::from_utf8_lossy(&name[..len]).into_owned(),
        info[4] >> 32,
    )))
}

/// The uprobe links process `pid` holds: (link id, path, file offset).
pub fn uprobes_held(pid: u32) -> Vec<(u32, String, u64)> {
    fdinfo_values(pid, "link_id:")
        .into_iter()
        .filter_map(|id| {
            uprobe_link(id)
                .ok()
                .flatten()
                .map(|(path, offset)| (id, path, offset))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Odds and ends of the node agent tests.

/// Directories removed in order when dropped (parents shared with others
/// stay when not empty).
pub struct RmdirOnDrop(pub Vec<PathBuf>);

impl Drop for RmdirOnDrop {
    fn drop(&mut self) {
        for dir in &self.0 {
            // EBUSY for a moment while an exited process's cgroup is released.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup (pure v2), or
/// /sys/fs/cgroup/unified (hybrid).
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let is_v2 = |dir: &&str| {
        mounts
            .lines()
            .any(|l| l.contains(&format!(" {dir} cgroup2 ")))
    };
    let dir = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(is_v2);
    PathBuf::from(dir.expect("no cgroup v2 hierarchy at /sys/fs/cgroup(/unified)"))
}

/// A random UUID from the kernel.
pub fn random_uuid() -> String {
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
    uuid.trim().to_string()
}

/// The file offsets `goalloc inspect` plans to probe in `path`.
pub fn planned_offsets(path: &std::path::Path) -> std::collections::BTreeSet<u64> {
    let out = Command::new(GOALLOC)
        .arg("inspect")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = text
        .lines()
        .skip_while(|l| !l.starts_with("FUNCTION"))
        .skip(1);
    let offset = |l: &str| Some(l.split_whitespace().nth(2)?.strip_prefix("0x")?.to_string());
    rows.map(|l| u64::from_str_radix(&offset(l).expect("file offset"), 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------
// Reading Go runtime counters from process memory (runtime_counters.rs).

/// Returns false (and says so) only when the developer opted out with
/// GOALLOC_SKIP_BPF_TESTS=1; otherwise fails the test unless this process
/// may read other processes' memory: root (CAP_SYS_PTRACE) and Yama
/// ptrace_scope < 3.
pub fn require_ptrace() -> bool {
    if std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1") {
        eprintln!("ptrace test skipped: {SKIP_VAR}=1");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test reads other processes' memory and drops privileges: run as root, or set {SKIP_VAR}=1 to skip it explicitly"
    );
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        scope < 3,
        "Yama ptrace_scope is {scope}: no process may read another's memory; set /proc/sys/kernel/yama/ptrace_scope below 3, or {SKIP_VAR}=1 to skip"
    );
    true
}

/// One `stop=...` line of the fixture's `-stopstats` report: name -> value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopStats {
    pub stop: usize,
    pub fields: std::collections::BTreeMap<String, u64>,
}

pub fn parse_stop_stats(stdout: &str) -> Vec<StopStats> {
    stdout
        .lines()
        .filter(|l| l.starts_with("stop="))
        .map(|l| {
            let mut fields = std::collections::BTreeMap::new();
            let mut stop = None;
            for kv in l.split_whitespace() {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad field {kv:?} in {l:?}"));
                let v: u64 = v.parse().unwrap_or_else(|_| panic!("bad {k} in {l:?}"));
                if k == "stop" {
                    stop = Some(v as usize);
                } else {
                    fields.insert(k.to_string(), v);
                }
            }
            StopStats {
                stop: stop.unwrap_or_else(|| panic!("no stop in {l:?}")),
                fields,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Allocation profiles (profile_endpoint.rs, profile_cli.rs).

/// The `sites` fixture (tests/go/sites) running: allocates steadily at four
/// known call sites until killed; killed (and reaped) when dropped.
pub struct Sites {
    pub child: std::process::Child,
    pub pid: u32,
    pub program: PathBuf,
    /// `site <function> <type> <share>` lines: (function, type label, share).
    pub sites: Vec<(String, String, f64)>,
}

impl Sites {
    /// Starts `sites` of a fixture variant and reads its self-description
    /// (up to `loop`, printed when it starts allocating).
    pub fn start(variant: &Variant) -> Sites {
        use std::io::BufRead;
        let program = variant.program("sites");
        assert!(
            program.is_file(),
            "no sites fixture in {}: run `cargo xtask fixtures`",
            variant.dir.display()
        );
        let mut child = Command::new(&program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        // Killed if a check below panics.
        let mut s = Sites {
            child,
            pid,
            program,
            sites: Vec::new(),
        };
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.expect("sites stdout");
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["ready", p] => assert_eq!(p.parse::<u32>().ok(), Some(pid), "{line}"),
                ["site", func, typ, share] => {
                    s.sites
                        .push((func.to_string(), typ.to_string(), share.parse().unwrap()))
                }
                ["loop"] => break,
                _ => panic!("unexpected sites line {line:?}"),
            }
        }
        assert!(
            !s.sites.is_empty(),
            "no site lines from {}",
            s.program.display()
        );
        // Nothing more is expected; whatever comes is read, so the fixture
        // never writes to a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        s
    }

    /// SIGKILL and reap: the process is gone (not a zombie) on return.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the allocation probes of an executable go, to see them in a
/// process: a uprobe is a breakpoint written into the process's own copy
/// of the code page (and the original instruction put back when it is
/// removed), so a planned site whose byte in the process's memory differs
/// from the file's carries a uprobe, whoever put it there.
pub struct ProbeSites {
    exe: PathBuf,
    /// (file offset, the byte there in the file).
    sites: Vec<(u64, u8)>,
}

impl ProbeSites {
    pub fn of(exe: &std::path::Path) -> ProbeSites {
        let data = std::fs::read(exe).unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
        let sites: Vec<(u64, u8)> = planned_offsets(exe)
            .into_iter()
            .map(|o| (o, data[o as usize]))
            .collect();
        assert!(
            !sites.is_empty(),
            "no probe sites planned in {}",
            exe.display()
        );
        ProbeSites {
            exe: std::fs::canonicalize(exe).unwrap(),
            sites,
        }
    }

    /// Planned sites that carry a breakpoint in `pid`; `None` when `pid`
    /// has exited or no longer maps the executable.
    pub fn installed(&self, pid: u32) -> Option<usize> {
        use std::io::{Seek, SeekFrom};
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let exe = self.exe.to_str().unwrap();
        // (start, end, file offset) of the executable's mappings.
        let mappings: Vec<(u64, u64, u64)> = maps
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() < 6 || f[5..].join(" ") != exe {
                    return None;
                }
                let (start, end) = f[0].split_once('-')?;
                Some((
                    u64::from_str_radix(start, 16).ok()?,
                    u64::from_str_radix(end, 16).ok()?,
                    u64::from_str_radix(f[2], 16).ok()?,
                ))
            })
            .collect();
        let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
        let mut n = 0;
        for &(offset, original) in &self.sites {
            let addr = mappings
                .iter()
                .find(|(start, end, off)| offset >= *off && offset - off < end - start)
                .map(|(start, _, off)| start + (offset - off))?;
            let mut b = [0u8];
            mem.seek(SeekFrom::Start(addr)).ok()?;
            mem.read_exact(&mut b).ok()?;
            n += usize::from(b[0] != original);
        }
        Some(n)
    }

    /// Number of planned sites.
    pub fn len(&self) -> usize {
        self.sites.len()
    }
}

/// Polls `cond` every 50 ms for up to `limit`; whether it became true.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `go tool pprof ARGS FILE` of the newest toolchain: stdout, or a panic
/// with stderr.
pub fn go_pprof(file: &std::path::Path, args: &[&str]) -> String {
    let newest = testutil::newest().expect("a Go toolchain for go tool pprof");
    let out = testutil::go_command(&newest.go)
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("go tool pprof");
    assert!(
        out.status.success(),
        "go tool pprof {args:?} {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The functions of `go tool pprof -top` rows, in order.
pub fn pprof_top_functions(top: &str) -> Vec<String> {
    top.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let pct = |s: &str| s.ends_with('%');
            (w.len() >= 6 && pct(w[1]) && pct(w[2]) && pct(w[4])).then(|| w[5].to_string())
        })
        .collect()
}

/// The values of one tag in `go tool pprof -tags` (e.g. `pid`).
pub fn pprof_tag_values(tags: &str, tag: &str) -> Vec<String> {
    let head = format!("{tag}:");
    tags.lines()
        .skip_while(|l| !l.trim_start().starts_with(&head))
        .skip(1)
        .map_while(|l| Some(l.split_once("): ")?.1.trim().to_string()))
        .collect()
}
