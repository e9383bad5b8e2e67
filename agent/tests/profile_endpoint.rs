//! The agent's `GET /debug/pprof/allocs?pid=PID&seconds=N` end to end, on
//! the `sites` fixture (tests/go/sites): off unless `--profiling`; a gzipped
//! profile `go tool pprof` reads; one profile per process at a time (429);
//! a one-line 400 for each bad query; the probes put on for a profile come
//! off when it ends, also when the client hangs up, and never show as
//! exact-mode series; a process chosen with `--exact-for` keeps its probes;
//! a process that exits mid-profile gives what was sampled until then.
//! Needs BPF (root).
//!
//! Whether a process carries uprobes is read from the process itself (a
//! uprobe is a breakpoint in its copy of the code, see
//! [`common::ProbeSites`]) and from the uprobe links the agent holds.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{
    Agent, ProbeSites, Sample, Sites, Terminate, go_pprof, pprof_top_functions, require_bpf,
    samples, uprobes_held, variant, wait_until,
};

/// The fixture cell profiled (any would do; the newest Go).
const CELL: &str = "go1.27.3";

/// The per-allocation probes' series (exact mode): a profile alone must
/// never make them appear for its process.
const EXACT_ONLY: [&str; 8] = [
    "goalloc_allocations_total",
    "goalloc_allocated_bytes_total",
    "goalloc_allocation_size_bytes_bucket",
    "goalloc_allocation_size_bytes_sum",
    "goalloc_allocation_size_bytes_count",
    "goalloc_goroutines_created_total",
    "goalloc_goroutines_exited_total",
    "goalloc_probe_cpu_seconds_total",
];

/// One agent and one fixture at a time: the machine has few cores and
/// profiles are about timing.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// HTTP with headers and a binary body.

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Connects and sends `GET target` (`Connection: close`).
fn send(addr: &str, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

/// Reads the whole reply (the server closes the connection).
fn read_reply(mut s: TcpStream) -> Reply {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the reply");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        let (mut rest, mut out) = (&body[..], Vec::new());
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").expect("chunk");
            let size = std::str::from_utf8(&rest[..eol]).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn get(addr: &str, target: &str) -> Reply {
    read_reply(send(addr, target))
}

fn allocs(pid: u32, query: &str) -> String {
    format!("/debug/pprof/allocs?pid={pid}{query}")
}

/// A refusal: `status`, a one-line plain-text body containing `needle`.
fn assert_refused(r: &Reply, status: u16, needle: &str, what: &str) {
    let text = r.text();
    assert_eq!(r.status, status, "{what}: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() == 1 && !lines[0].trim().is_empty() && text.ends_with('\n'),
        "{what}: not one line: {text:?}"
    );
    assert!(text.contains(needle), "{what}: {text:?} lacks {needle:?}");
}

// ---------------------------------------------------------------------------
// Checks on the agent and the profiled process.

/// Series of `pid` that only the per-allocation probes produce.
fn exact_series(all: &[Sample], pid: u32) -> Vec<String> {
    let pid = pid.to_string();
    all.iter()
        .filter(|s| s.label("pid") == pid && EXACT_ONLY.contains(&s.name.as_str()))
        .map(|s| format!("{}{:?} {}", s.name, s.labels, s.raw))
        .collect()
}

/// The exact-mode metric names `pid` has series of.
fn exact_names(all: &[Sample], pid: u32) -> std::collections::BTreeSet<&str> {
    let pid = pid.to_string();
    all.iter()
        .filter(|s| s.label("pid") == pid && EXACT_ONLY.contains(&s.name.as_str()))
        .map(|s| s.name.as_str())
        .collect()
}

/// Waits until the agent reports `pid` (its runtime counters); the scrape.
fn wait_tracked(agent: &Agent, pid: u32) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let all = agent.scrape();
        let pid_s = pid.to_string();
        if !samples(&all, "goalloc_heap_allocations_total", &[("pid", &pid_s)]).is_empty() {
            return all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pid {pid} not tracked after 30 s:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Uprobe links the agent holds.
fn agent_uprobes(agent: &Agent) -> usize {
    uprobes_held(agent.pid()).len()
}

/// Waits until neither the process nor the agent has a uprobe left;
/// panics with what is left otherwise.
fn assert_probes_come_off(agent: &Agent, probes: &ProbeSites, pid: u32, limit: Duration) {
    let start = Instant::now();
    let gone = wait_until(limit, || {
        probes.installed(pid).unwrap_or(0) == 0 && agent_uprobes(agent) == 0
    });
    assert!(
        gone,
        "{limit:?} after the profile: pid {pid} still has {:?} of {} probe sites trapped, the agent \
         holds {} uprobe links\n{}",
        probes.installed(pid),
        probes.len(),
        agent_uprobes(agent),
        agent.stderr()
    );
    println!("probes off {:?} after the profile ended", start.elapsed());
}

/// The profile in `body` as `go tool pprof` reads it: written to `dir`,
/// its -top functions and its comments.
fn read_profile(body: &[u8], dir: &std::path::Path, name: &str) -> (Vec<String>, String, String) {
    assert!(
        body.starts_with(&[0x1f, 0x8b]),
        "not gzip: {} bytes starting {:02x?}",
        body.len(),
        &body[..body.len().min(8)]
    );
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut decoded)
        .expect("the body gunzips");
    let file = dir.join(name);
    std::fs::write(&file, body).unwrap();
    let top = go_pprof(&file, &["-top", "-sample_index=alloc_space"]);
    let comments = go_pprof(&file, &["-comments"]);
    (pprof_top_functions(&top), top, comments)
}

fn assert_sites_shown(functions: &[String], top: &str) {
    for f in ["main.recordSite", "main.inlinedSite"] {
        assert!(
            functions.iter().any(|x| x == f),
            "{f} not in go tool pprof -top:\n{top}"
        );
    }
}

/// `Duration: 1.02s` of `go tool pprof -top`, in seconds.
fn profile_seconds(top: &str) -> f64 {
    let d = top
        .lines()
        .find_map(|l| l.strip_prefix("Duration: "))
        .unwrap_or_else(|| panic!("no Duration in -top:\n{top}"));
    let d = d.split(',').next().unwrap().trim();
    humantime::parse_duration(d)
        .map(|d| d.as_secs_f64())
        .or_else(|_| d.trim_end_matches('s').parse())
        .unwrap_or_else(|_| panic!("bad Duration {d:?}"))
}

// ---------------------------------------------------------------------------
// Scenarios.

/// Without `--profiling` the endpoint answers 404 saying how to turn it on,
/// and puts nothing on the process.
#[test]
fn off_without_profiling_flag() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let mut agent = Agent::start_with(&[]);
    agent.wait_ready();
    let sites = Sites::start(&variant(CELL));
    let probes = ProbeSites::of(&sites.program);
    wait_tracked(&agent, sites.pid);
    let r = get(&agent.addr, &allocs(sites.pid, "&seconds=1"));
    assert_refused(&r, 404, "--profiling", "without --profiling");
    assert_eq!(probes.installed(sites.pid), Some(0));
    assert_eq!(agent_uprobes(&agent), 0);
    println!("404: {}", r.text().trim());
}

/// A profile: gzip that `go tool pprof` reads with the fixture's sites; a
/// second one of the same process meanwhile is refused (429, Retry-After);
/// bad queries get one-line 400s; the probes are on the process while the
/// profile runs and off after, and no exact-mode series appears for it.
#[test]
fn profile_bad_queries_busy_and_probes_off_after() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut agent = Agent::start_with(&["--profiling"]);
    agent.wait_ready();
    let sites = Sites::start(&variant(CELL));
    let pid = sites.pid;
    let probes = ProbeSites::of(&sites.program);
    wait_tracked(&agent, pid);
    assert_eq!(probes.installed(pid), Some(0), "probed before any profile");
    assert_eq!(agent_uprobes(&agent), 0, "an agent without --exact-for");

    // Bad queries: each a one-line 400, and nothing attached.
    let sleeper = Terminate(Command::new("sleep").arg("30").spawn().unwrap());
    let own = std::process::id();
    let bad = [
        ("/debug/pprof/allocs".to_string(), "missing pid"),
        ("/debug/pprof/allocs?seconds=2".to_string(), "missing pid"),
        ("/debug/pprof/allocs?pid=abc".to_string(), "\"abc\""),
        ("/debug/pprof/allocs?pid=0".to_string(), "\"0\""),
        (allocs(pid, "&seconds=0"), "seconds"),
        (allocs(pid, "&seconds=121"), "seconds"),
        (allocs(pid, "&seconds=abc"), "seconds"),
        (allocs(pid, "&secs=2"), "unknown parameter \"secs\""),
        (allocs(pid, "&rate=fast"), "fast"),
        (allocs(pid, "&rate=0"), "rate"),
        (allocs(own, "&seconds=1"), "not a Go process"),
        (allocs(1, "&seconds=1"), "not a Go process"),
        (allocs(sleeper.0.id(), "&seconds=1"), "not a Go process"),
    ];
    for (target, needle) in &bad {
        let r = get(&agent.addr, target);
        assert_refused(&r, 400, needle, target);
        println!("400 {target}: {}", r.text().trim());
    }
    drop(sleeper);
    assert_eq!(probes.installed(pid), Some(0), "probed by a bad query");
    assert_eq!(agent_uprobes(&agent), 0, "probes attached by a bad query");

    // The profile, and a second one meanwhile.
    let addr = agent.addr.clone();
    let target = allocs(pid, "&seconds=3&rate=4096");
    let started = Instant::now();
    let first = std::thread::spawn(move || get(&addr, &target));
    let on = wait_until(Duration::from_secs(10), || {
        probes.installed(pid).unwrap_or(0) > 0 && agent_uprobes(&agent) > 0
    });
    assert!(
        on,
        "no probes on pid {pid} {:?} into its profile: {:?} sites trapped, agent holds {} \
         uprobes\n{}",
        started.elapsed(),
        probes.installed(pid),
        agent_uprobes(&agent),
        agent.stderr()
    );
    println!(
        "profile running: {:?} of {} sites trapped, agent holds {} uprobes, {:?} after the request",
        probes.installed(pid),
        probes.len(),
        agent_uprobes(&agent),
        started.elapsed()
    );
    let busy = get(&agent.addr, &allocs(pid, "&seconds=2&rate=4096"));
    assert_refused(&busy, 429, "already", "a second profile meanwhile");
    let retry: u64 = busy
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {busy:?}"))
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    let during = agent.scrape();
    let exact = exact_series(&during, pid);
    assert!(
        exact.is_empty(),
        "exact-mode series while profiling: {exact:?}"
    );

    let reply = first.join().unwrap();
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (functions, top, comments) = read_profile(&reply.body, tmp.path(), "allocs.pb.gz");
    assert_sites_shown(&functions, &top);
    assert!(comments.contains(&format!("pid {pid}")), "{comments}");
    println!(
        "200 after {took:?} ({} bytes, {:?}):\n{top}",
        reply.body.len(),
        reply.header("content-type")
    );

    // Off again: not chosen by --exact-for, so nothing stays.
    assert_probes_come_off(&agent, &probes, pid, Duration::from_secs(10));
    let after = wait_tracked(&agent, pid);
    let exact = exact_series(&after, pid);
    assert!(
        exact.is_empty(),
        "exact-mode series after profiling: {exact:?}"
    );
    // The process is profiled again as if for the first time.
    let again = get(&agent.addr, &allocs(pid, "&seconds=1&rate=4096"));
    assert_eq!(again.status, 200, "{}", again.text());
    assert_probes_come_off(&agent, &probes, pid, Duration::from_secs(10));
}

/// A process chosen with `--exact-for` keeps its probes (and its series)
/// once a profile of it ends.
#[test]
fn exact_process_keeps_probes_after_profile() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let sites = Sites::start(&variant(CELL));
    let pid = sites.pid;
    let probes = ProbeSites::of(&sites.program);
    let chosen = format!("pid={pid}");
    // Budget lifted: the fixture allocates far more than the default allows.
    let mut agent =
        Agent::start_with(&["--profiling", "--exact-for", &chosen, "--exact-budget", "1"]);
    agent.wait_ready();
    let pid_s = pid.to_string();
    let allocs_of = |all: &[Sample]| {
        samples(all, "goalloc_allocations_total", &[("pid", &pid_s)])
            .first()
            .map(|s| s.value())
    };
    let mut before = Vec::new();
    let exact_on = wait_until(Duration::from_secs(30), || {
        before = agent.scrape();
        allocs_of(&before).is_some() && exact_names(&before, pid).len() == EXACT_ONLY.len()
    });
    assert!(
        exact_on,
        "pid {pid} chosen by --exact-for has not all exact-mode series {EXACT_ONLY:?}: {:?}\n{}",
        exact_names(&before, pid),
        agent.stderr()
    );
    let held = agent_uprobes(&agent);
    let trapped = probes.installed(pid).unwrap();
    assert!(held > 0 && trapped > 0, "held {held}, trapped {trapped}");

    let reply = get(&agent.addr, &allocs(pid, "&seconds=2&rate=4096"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (functions, top, _) = read_profile(&reply.body, tmp.path(), "exact.pb.gz");
    assert_sites_shown(&functions, &top);

    // Long enough for a wrong detach to have happened (~0.1 s per uprobe).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent_uprobes(&agent), held, "the agent's uprobes changed");
    assert_eq!(
        probes.installed(pid),
        Some(trapped),
        "the process's probes changed"
    );
    let after = agent.scrape();
    assert_eq!(exact_names(&after, pid).len(), EXACT_ONLY.len());
    let (a0, a1) = (allocs_of(&before).unwrap(), allocs_of(&after).unwrap());
    assert!(a1 > a0, "goalloc_allocations_total stopped: {a0} -> {a1}");
    println!("exact process: {held} uprobes kept; allocations {a0} -> {a1}");
}

/// A client that hangs up ends the profile: the probes come off within
/// seconds, and the next profile of the process is accepted.
#[test]
fn client_hangup_ends_the_profile() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let mut agent = Agent::start_with(&["--profiling"]);
    agent.wait_ready();
    let sites = Sites::start(&variant(CELL));
    let pid = sites.pid;
    let probes = ProbeSites::of(&sites.program);
    wait_tracked(&agent, pid);

    let stream = send(&agent.addr, &allocs(pid, "&seconds=30&rate=4096"));
    let on = wait_until(Duration::from_secs(10), || {
        probes.installed(pid).unwrap_or(0) > 0
    });
    assert!(on, "no probes on pid {pid}\n{}", agent.stderr());
    std::thread::sleep(Duration::from_secs(1));
    drop(stream);
    assert_probes_come_off(&agent, &probes, pid, Duration::from_secs(5));

    let r = get(&agent.addr, &allocs(pid, "&seconds=1&rate=4096"));
    assert_eq!(r.status, 200, "after a hang-up: {}", r.text());
    assert_probes_come_off(&agent, &probes, pid, Duration::from_secs(10));
}

/// A process that exits mid-profile: 200 with what was sampled until then,
/// and the profile says it exited.
#[test]
fn process_exit_mid_profile() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut agent = Agent::start_with(&["--profiling"]);
    agent.wait_ready();
    let mut sites = Sites::start(&variant(CELL));
    let pid = sites.pid;
    let probes = ProbeSites::of(&sites.program);
    wait_tracked(&agent, pid);

    let addr = agent.addr.clone();
    let target = allocs(pid, "&seconds=4&rate=4096");
    let started = Instant::now();
    let request = std::thread::spawn(move || get(&addr, &target));
    let on = wait_until(Duration::from_secs(10), || {
        probes.installed(pid).unwrap_or(0) > 0
    });
    assert!(on, "no probes on pid {pid}\n{}", agent.stderr());
    std::thread::sleep(Duration::from_secs(1));
    sites.kill();
    let killed = started.elapsed();
    let reply = request.join().unwrap();
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (functions, top, comments) = read_profile(&reply.body, tmp.path(), "exited.pb.gz");
    assert_sites_shown(&functions, &top);
    assert!(
        comments.contains(&format!("pid {pid}")) && comments.contains("exited"),
        "the comments do not say pid {pid} exited:\n{comments}"
    );
    let seconds = profile_seconds(&top);
    assert!(
        seconds < 3.9,
        "the profile of a process killed {killed:?} in lasts {seconds} s"
    );
    println!("killed at {killed:?}, reply after {took:?}, profile {seconds} s:\n{comments}");
    assert!(
        wait_until(Duration::from_secs(10), || agent_uprobes(&agent) == 0),
        "the agent still holds {} uprobes after the process exited",
        agent_uprobes(&agent)
    );
}

/// The way people use it: `go tool pprof` fetching the URL itself (as it
/// fetches net/http/pprof's), then showing the sites.
#[test]
fn go_tool_pprof_fetches_the_url() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let sites = Sites::start(&variant(CELL));
    let pid = sites.pid;
    let mut agent = Agent::start_with(&["--profiling"]);
    agent.wait_ready();
    wait_tracked(&agent, pid);
    let url = format!(
        "http://{}/debug/pprof/allocs?pid={pid}&seconds=2&rate=4096",
        agent.addr
    );
    let newest = testutil::newest().expect("a Go toolchain for go tool pprof");
    let out = testutil::go_command(&newest.go)
        .args(["tool", "pprof", "-top"])
        .arg(&url)
        // pprof saves what it fetched under $PPROF_TMPDIR.
        .env("PPROF_TMPDIR", tmp.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("go tool pprof");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "go tool pprof {url}: {stderr}");
    assert!(stderr.contains("Saved profile in"), "{stderr}");
    let functions = pprof_top_functions(&stdout);
    assert_sites_shown(&functions, &stdout);
}
