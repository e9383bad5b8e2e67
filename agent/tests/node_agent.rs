//! `goalloc agent` end to end, as a DaemonSet runs it: a process started after
//! the agent is counted exactly; so is one in its own mount namespace and
//! kubelet-shaped cgroup; process churn leaves nothing behind; Prometheus
//! scrapes it; a restart does not attach twice. Needs BPF (root).
//!
//! Every test starts its own agent, and every agent sees every Go process on
//! the machine (other tests' too), so series are always picked by pid or exe,
//! and BPF objects by the agent process that holds them.

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use agent_common::ProcStats;
use aya::maps::{Map, MapData, MapInfo, PerCpuHashMap};
use common::{
    Agent, GOALLOC, KillOnDrop, Phase, Sample, cpu_seconds, fd_kinds, http_get, parse_phases, proc_status_kib,
    require_bpf, run_with_stops, sample_value, samples, variant,
};

// ---------------------------------------------------------------------------
// Helpers.

/// One process's counters in one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    allocs: u64,
    bytes: u64,
    created: u64,
    exited: u64,
}

/// The counters of `pid` in a scrape, checking that its histogram agrees.
fn counts(all: &[Sample], pid: u32) -> Option<Counts> {
    let pid = pid.to_string();
    let with = [("pid", pid.as_str())];
    let get = |name: &str| -> Option<u64> {
        let found = samples(all, name, &with);
        assert!(found.len() <= 1, "pid {pid} has {} {name} series: {found:?}", found.len());
        found.first().map(|s| s.raw.parse().unwrap_or_else(|_| panic!("not an integer: {:?}", s)))
    };
    let c = Counts {
        allocs: get("goalloc_allocations_total")?,
        bytes: get("goalloc_allocated_bytes_total")?,
        created: get("goalloc_goroutines_created_total")?,
        exited: get("goalloc_goroutines_exited_total")?,
    };
    assert_eq!(get("goalloc_allocation_size_bytes_count"), Some(c.allocs), "pid {pid}: histogram _count");
    let sum = sample_value(all, "goalloc_allocation_size_bytes_sum", &with);
    assert_eq!(sum, Some(c.bytes as f64), "pid {pid}: histogram _sum");
    Some(c)
}

/// Scrapes every `every` until `pid` has series; returns that scrape.
fn wait_tracked(agent: &Agent, pid: u32, every: Duration) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let all = agent.scrape();
        if counts(&all, pid).is_some() {
            return all;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "pid {pid} not tracked after 20 s:\n{}", agent.stderr());
        std::thread::sleep(every);
    }
}

/// Checks per-phase deltas (stops 2i, 2i+1) against the fixture's report.
fn check_phases(phases: &[Phase], snaps: &[Counts], first: usize) -> String {
    let mut table = format!(
        "{:<12} {:>9} {:>9} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7}\n",
        "phase", "mallocs", "counted", "req bytes", "counted", "gor+", "counted", "gor-", "counted"
    );
    let mut bad = Vec::new();
    for (i, p) in phases.iter().enumerate().skip(first) {
        let (a, b) = (snaps[2 * i], snaps[2 * i + 1]);
        let d = Counts {
            allocs: b.allocs - a.allocs,
            bytes: b.bytes - a.bytes,
            created: b.created - a.created,
            exited: b.exited - a.exited,
        };
        let bytes = p.bytes.map_or("-".into(), |b| b.to_string());
        table += &format!(
            "{:<12} {:>9} {:>9} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7}\n",
            p.name, p.mallocs, d.allocs, bytes, d.bytes, p.goroutines_created, d.created, p.goroutines_exited, d.exited
        );
        let bytes_ok = p.bytes.is_none_or(|b| b == d.bytes);
        if d.allocs != p.mallocs || !bytes_ok || d.created != p.goroutines_created || d.exited != p.goroutines_exited {
            bad.push(p.name.clone());
        }
    }
    assert!(bad.is_empty(), "phases {bad:?} not counted exactly:\n{table}");
    table
}

/// A child stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
struct Terminate(Child);

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

/// Directories removed (in order) when dropped; parents shared with others
/// stay when not empty.
struct RmdirOnDrop(Vec<PathBuf>);

impl Drop for RmdirOnDrop {
    fn drop(&mut self) {
        for dir in &self.0 {
            for _ in 0..100 {
                // EBUSY while the exited process's cgroup is being released.
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// `key: value` lines of /proc/PID/fdinfo/* with the given key, as numbers.
fn fdinfo_values(pid: u32, key: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| t.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok()))
        .collect()
}

/// The id of the BPF map `name` held by process `pid`.
fn map_id_of(pid: u32, name: &str) -> u32 {
    fdinfo_values(pid, "map_id:")
        .into_iter()
        .find(|id| MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some(name)))
        .unwrap_or_else(|| panic!("process {pid} holds no BPF map {name}"))
}

/// The processes with an entry in the agent's PROC_STATS map.
fn kernel_entries(map_id: u32) -> BTreeSet<u32> {
    let map = Map::from_map_data(MapData::from_id(map_id).unwrap()).unwrap();
    let stats: PerCpuHashMap<MapData, u32, ProcStats> = map.try_into().unwrap();
    stats.keys().filter_map(Result::ok).collect()
}

fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> libc::c_long {
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) }
}

/// The file and file offset of a uprobe link (None for other links), or
/// the error of opening it (ENOENT once it is gone).
fn uprobe_link(id: u32) -> std::io::Result<Option<(String, u64)>> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let mut attr = [u64::from(id), 0];
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, then (at byte 16) for perf
    // links: perf type, pad, uprobe { file_name ptr, name_len, offset }.
    let mut info = [0u64; 16];
    let mut name = [0u8; 4096];
    let get_info = |info: &mut [u64; 16]| {
        let mut attr = [fd.as_raw_fd() as u64 | ((std::mem::size_of_val(info) as u64) << 32), info.as_mut_ptr() as u64];
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    get_info(&mut info)?;
    let (link_type, perf_type) = (info[0] as u32, info[2] as u32);
    // BPF_LINK_TYPE_PERF_EVENT; BPF_PERF_EVENT_UPROBE.
    if link_type != 7 || perf_type != 1 {
        return Ok(None);
    }
    info = [0; 16];
    info[3] = name.as_mut_ptr() as u64;
    info[4] = name.len() as u64;
    get_info(&mut info)?;
    let len = name.iter().position(|b| *b == 0).unwrap_or(0);
    Ok(Some((String::from_utf8_lossy(&name[..len]).into_owned(), info[4] >> 32)))
}

/// Link ids and file offsets of the uprobes that process `pid` holds on the
/// binary at `path`. The kernel names a uprobe by the path it was attached
/// through, which for the agent is `/proc/<a process running it>/exe`.
fn uprobes_on(pid: u32, path: &Path, runners: &BTreeSet<u32>) -> (Vec<u32>, BTreeSet<u64>) {
    let mut ids = Vec::new();
    let mut offsets = BTreeSet::new();
    for id in fdinfo_values(pid, "link_id:") {
        let Ok(Some((file, offset))) = uprobe_link(id) else {
            continue;
        };
        let runner = file.strip_prefix("/proc/").and_then(|f| f.strip_suffix("/exe")?.parse().ok());
        if Path::new(&file) == path || runner.is_some_and(|p| runners.contains(&p)) {
            ids.push(id);
            offsets.insert(offset);
        }
    }
    (ids, offsets)
}

/// The file offsets `goalloc inspect` plans for `path`.
fn planned_offsets(path: &Path) -> BTreeSet<u64> {
    let out = Command::new(GOALLOC).arg("inspect").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = text.lines().skip_while(|l| !l.starts_with("FUNCTION")).skip(1);
    rows.map(|l| {
        let off = l.split_whitespace().nth(2).and_then(|o| o.strip_prefix("0x"));
        u64::from_str_radix(off.unwrap_or_else(|| panic!("bad row {l:?}")), 16).unwrap()
    })
    .collect()
}

/// Where the cgroup v2 hierarchy is mounted (pure v2, or hybrid's unified).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|dir| {
            let mounted = |l: &str| l.split_whitespace().nth(1) == Some(dir) && l.split_whitespace().nth(2) == Some("cgroup2");
            mounts.lines().any(mounted)
        })
        .map(PathBuf::from)
        .expect("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

fn random_hex(n: usize) -> String {
    let mut out = String::new();
    while out.len() < n {
        out += &std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap().trim().replace('-', "");
    }
    out.truncate(n);
    out
}

// ---------------------------------------------------------------------------
// Scenarios.

/// A Go program started after the agent is tracked from its exec event, and
/// each phase's allocations, bytes and goroutines are exact in /metrics.
#[test]
fn new_process_counted_exactly() {
    if !require_bpf() {
        return;
    }
    let fixture = variant("go1.27.3").program("fixture");
    let mut agent = Agent::start();
    let ready = agent.wait_ready();
    let guard = KillOnDrop::default();
    let mut snaps = Vec::new();
    let mut seen = None;
    let spawned = Instant::now();
    let fin = run_with_stops(
        &fixture,
        &[],
        |pid| guard.arm(pid),
        |pid, stop| {
            if stop == 0 {
                // Stopped before its first phase: wait for the agent to see it.
                let all = wait_tracked(&agent, pid, Duration::from_millis(2));
                let exec_max = sample_value(&all, "goalloc_exec_to_tracked_max_seconds", &[]);
                seen = Some((spawned.elapsed(), exec_max));
            }
            snaps.push(counts(&agent.scrape(), pid).expect("series vanished while the process runs"));
        },
    );
    guard.disarm();
    assert_eq!(fin.code, 0, "{}", fin.stdout);
    let phases = parse_phases(&fin.stdout);
    assert_eq!(fin.stops, 2 * phases.len());
    let (first_seen, exec_max) = seen.unwrap();
    let table = check_phases(&phases, &snaps, 0);
    println!(
        "agent ready after {ready:?}; fixture spawn -> first series {first_seen:?}; \
         goalloc_exec_to_tracked_max_seconds {exec_max:?}\n{table}"
    );
}

/// A container as the kubelet makes one: the binary exists only in the
/// process's mount namespace, the cgroup carries pod UID and container id.
#[test]
fn container_process_in_own_mount_namespace_and_kubelet_cgroup() {
    if !require_bpf() {
        return;
    }
    let fixture = variant("go1.27.3").program("fixture");
    let (uid, cid) = (random_hex(32), random_hex(64));
    let uid = format!("{}-{}-{}-{}-{}", &uid[..8], &uid[8..12], &uid[12..16], &uid[16..20], &uid[20..]);
    let slices = [
        "kubepods.slice".to_string(),
        "kubepods-burstable.slice".to_string(),
        format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
        format!("cri-containerd-{cid}.scope"),
    ];
    let mut dirs: Vec<PathBuf> = slices
        .iter()
        .scan(cgroup2_root(), |dir, s| {
            dir.push(s);
            Some(dir.clone())
        })
        .collect();
    dirs.reverse(); // leaf first
    let cgroups = RmdirOnDrop(dirs);
    let leaf = &cgroups.0[0];
    std::fs::create_dir_all(leaf).unwrap();
    let root = tempfile::Builder::new().prefix("goalloc-ns-").tempdir_in("/tmp").unwrap();
    let (root_dir, leaf_dir, fixture_path) = (root.path().display(), leaf.display(), fixture.display());
    let inside = root.path().join("fixture");
    let script = format!(
        "echo $$ > {leaf_dir}/cgroup.procs && exec unshare --mount --propagation private sh -c \
         'mount -t tmpfs tmpfs {root_dir} && cp {fixture_path} {root_dir}/fixture && \
          exec {root_dir}/fixture -phases=small-scan,goroutines'"
    );

    let mut agent = Agent::start();
    agent.wait_ready();
    let guard = KillOnDrop::default();
    let mut snaps = Vec::new();
    let fin = run_with_stops(
        &PathBuf::from("/bin/sh"),
        &["-c", &script],
        |pid| guard.arm(pid),
        |pid, stop| {
            if stop == 0 {
                assert!(!inside.exists(), "{} is visible from the host", inside.display());
                let all = wait_tracked(&agent, pid, Duration::from_millis(10));
                let pid = pid.to_string();
                let series = samples(&all, "goalloc_allocations_total", &[("pid", &pid)]);
                println!("container series: {:?}", series[0].labels);
                assert_eq!(series[0].label("container_id"), cid);
                assert_eq!(series[0].label("exe"), inside.to_str().unwrap());
                assert_eq!(series[0].label("go_version"), "go1.27.3");
            }
            snaps.push(counts(&agent.scrape(), pid).expect("series vanished while the process runs"));
        },
    );
    guard.disarm();
    assert_eq!(fin.code, 0, "{}", fin.stdout);
    let phases = parse_phases(&fin.stdout);
    assert_eq!(fin.stops, 2 * phases.len());
    println!("{}", check_phases(&phases, &snaps, 0));
    let leaf = leaf.clone();
    drop(cgroups);
    assert!(!leaf.exists(), "cgroup {} not removed", leaf.display());
}

/// The agent's fds: (uprobe links, other BPF links, everything else).
fn fds(pid: u32) -> (usize, usize, usize) {
    let kinds = fd_kinds(pid);
    let links = kinds.get("anon_inode:bpf_link").copied().unwrap_or(0);
    let ids = fdinfo_values(pid, "link_id:");
    let uprobes = ids.iter().filter(|id| matches!(uprobe_link(**id), Ok(Some(_)))).count();
    (uprobes, links - uprobes.min(links), kinds.values().sum::<usize>() - links)
}

/// 300 short-lived processes of a binary of its own: afterwards no series, no
/// kernel map entry, no link and no fd of theirs remain, and memory is bounded.
#[test]
fn churn_returns_to_baseline() {
    if !require_bpf() {
        return;
    }
    const TOTAL: usize = 300;
    const PARALLEL: usize = 8;
    // Removing a uprobe takes ~0.1 s in the kernel, serialized machine-wide
    // (the trace event mutex): detaching the binary's probes in this agent and
    // in the other tests' agents takes seconds on top of the 1 s sweep.
    const SETTLE: Duration = Duration::from_secs(10);
    // The demo at low rates: alive long enough (150 ms) to be tracked, cheap.
    const ARGS: [&str; 4] = ["-duration=150ms", "-churn=1000", "-leak=1", "-requests=20"];
    let tmp = tempfile::tempdir().unwrap();
    let bench = tmp.path().join("demo-churn");
    std::fs::copy(variant("go1.27.3").program("demo"), &bench).unwrap();
    let exe = bench.to_str().unwrap();
    let mut agent = Agent::start();
    agent.wait_ready();
    let apid = agent.pid();
    let stats_map = map_id_of(apid, "PROC_STATS");
    let probes = |all: &[Sample]| sample_value(all, "goalloc_probes_attached", &[]).unwrap() as usize;
    // Transient fds (a /proc file during a sweep, a closing connection) only
    // add: the baseline is the least seen.
    let (base_uprobes, base_links, mut base_other) = fds(apid);
    for _ in 0..10 {
        base_other = base_other.min(fds(apid).2);
        std::thread::sleep(Duration::from_millis(20));
    }
    let base_probes = probes(&agent.scrape());
    let (rss_before, cpu_before) = (proc_status_kib(apid, "VmRSS"), cpu_seconds(apid));

    let mut running: Vec<Child> = Vec::new();
    let (mut pids, mut tracked, mut in_kernel, mut failed) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::<u32>::new(), 0);
    let (mut rss_peak, mut last_sample, mut slowest) = (rss_before, Instant::now(), Duration::ZERO);
    let start = Instant::now();
    while pids.len() < TOTAL || !running.is_empty() {
        running.retain_mut(|c| match c.try_wait().unwrap() {
            Some(status) => {
                failed += usize::from(!status.success());
                false
            }
            None => true,
        });
        while running.len() < PARALLEL && pids.len() < TOTAL {
            let child = Command::new(&bench).args(ARGS).stdout(Stdio::null()).spawn().unwrap();
            pids.insert(child.id());
            running.push(child);
        }
        if last_sample.elapsed() > Duration::from_millis(50) {
            last_sample = Instant::now();
            in_kernel.extend(kernel_entries(stats_map).intersection(&pids).copied());
            rss_peak = rss_peak.max(proc_status_kib(apid, "VmRSS"));
            let t0 = Instant::now();
            let all = agent.scrape();
            slowest = slowest.max(t0.elapsed());
            tracked.extend(samples(&all, "goalloc_allocations_total", &[("exe", exe)]).iter().map(|s| s.label("pid").to_string()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let churn = start.elapsed();
    assert_eq!(failed, 0, "bench runs failed");

    // Settle: the exit events, or at worst the next sweep, clean up.
    let (settled, state) = loop {
        let t0 = Instant::now();
        let all = agent.scrape();
        slowest = slowest.max(t0.elapsed());
        let series = samples(&all, "goalloc_allocations_total", &[("exe", exe)]).len();
        let leftover: Vec<u32> = kernel_entries(stats_map).intersection(&pids).copied().collect();
        let (ids, _) = uprobes_on(apid, &bench, &pids);
        let (uprobes, links, other) = fds(apid);
        let probes_now = probes(&all);
        let state = format!(
            "series {series}, kernel entries {leftover:?}, uprobe links on it {}; agent fds: {uprobes} uprobe links \
             (goalloc_probes_attached {probes_now}), {links} other links, {other} other fds",
            ids.len()
        );
        let fds_back = uprobes == probes_now && links == base_links && other == base_other;
        if series == 0 && leftover.is_empty() && ids.is_empty() && fds_back {
            break (start.elapsed() - churn, state);
        }
        assert!(start.elapsed() - churn < SETTLE, "not back to baseline after {SETTLE:?}: {state}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let cpu = cpu_seconds(apid) - cpu_before;
    let (rss_after, hwm) = (proc_status_kib(apid, "VmRSS"), proc_status_kib(apid, "VmHWM"));
    let all = agent.scrape();
    println!(
        "{TOTAL} processes ({PARALLEL} at a time) in {churn:?}; {} seen tracked by 50 ms scrapes, {} in the kernel map; settled \
         {settled:?} after the last exit: {state}\nagent fds before: {base_uprobes} uprobe links, {base_links} other links, {base_other} other fds; \
         RSS before {rss_before} KiB, after {rss_after} KiB, peak sampled {rss_peak} KiB, VmHWM {hwm} KiB; \
         CPU {cpu:.2} s over the churn; slowest scrape {slowest:?}; events lost {:?}; global probes {base_probes} -> {}",
        tracked.len(),
        in_kernel.len(),
        sample_value(&all, "goalloc_events_lost_total", &[]),
        probes(&all)
    );
    assert!(hwm < 200 * 1024, "agent peak RSS {hwm} KiB >= 200 MiB");
}

/// Percent-encodes a query parameter.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query against Prometheus's HTTP API: its `data.result`.
fn prom_query(addr: &str, query: &str) -> Vec<serde_json::Value> {
    let Some((200, body)) = http_get(addr, &format!("/api/v1/query?query={}", urlencode(query))) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A real Prometheus scrapes the agent: rates are positive, its samples trail
/// the agent's counter by a scrape or so, and promtool accepts the exposition.
#[test]
fn prometheus_scrapes_agent() {
    if !require_bpf() {
        return;
    }
    for tool in ["/usr/bin/prometheus", "/usr/bin/promtool"] {
        assert!(Path::new(tool).exists(), "{tool} is missing: run `cargo xtask setup` (Debian package prometheus)");
    }
    let mut agent = Agent::start();
    agent.wait_ready();
    let mut demo = Command::new(variant("go1.27.3").program("demo"))
        .args(["-duration", "60s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let demo_out = BufReader::new(demo.stdout.take().unwrap());
    let demo = Terminate(demo);
    let (tx, demo_lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || demo_out.lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    let pid = demo.0.id().to_string();
    let selector = format!("goalloc_allocations_total{{pid=\"{pid}\"}}");

    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("prometheus.yml");
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: goalloc\n    static_configs:\n      - targets: ['{}']\n",
        agent.addr
    )
    .unwrap();
    let prom_addr = format!("127.0.0.1:{}", common::free_port());
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let prom = Terminate(
        Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", tmp.path().join("data").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // The agent's own view, sampled while waiting: (when, counter).
    let mut history: Vec<(Instant, u64)> = Vec::new();
    let start = Instant::now();
    let (mut up_after, mut rate) = (None, None);
    while rate.is_none() {
        let log = || std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default();
        assert!(start.elapsed() < Duration::from_secs(40), "no rate from Prometheus after 40 s:\n{}", log());
        if let Some(c) = counts(&agent.scrape(), demo.0.id()) {
            history.push((Instant::now(), c.allocs));
        }
        let up = prom_query(&prom_addr, &format!("up{{instance=\"{}\"}}", agent.addr));
        if up_after.is_none() && up.first().is_some_and(|r| r["value"][1] == "1") {
            up_after = Some(start.elapsed());
        }
        let r = prom_query(&prom_addr, &format!("rate({selector}[5s])"));
        rate = r.first().and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok()).filter(|r| *r > 0.0);
        std::thread::sleep(Duration::from_millis(250));
    }
    // The latest stored sample (a range selector returns raw samples), then the agent.
    let raw = prom_query(&prom_addr, &format!("{selector}[10s]"));
    let last = raw[0]["values"].as_array().unwrap().last().unwrap().clone();
    let (sample_ts, prom_value) = (last[0].as_f64().unwrap(), last[1].as_str().unwrap().parse::<u64>().unwrap());
    let (now, agent_value) = (unix_now(), counts(&agent.scrape(), demo.0.id()).unwrap().allocs);
    let five_ago = Instant::now() - Duration::from_secs(5);
    let floor = history.iter().rev().find(|(t, _)| *t <= five_ago).map(|(_, v)| *v);
    let first = history.iter().find(|(t, _)| *t >= five_ago).or(history.first()).unwrap();
    let agent_rate = (agent_value - first.1) as f64 / first.0.elapsed().as_secs_f64();
    println!(
        "Prometheus: target seen up after {:?}, rate(..[5s]) = {:.0}/s after {:?}; latest sample {prom_value} \
         ({:.2} s old), agent now {agent_value} (own rate {agent_rate:.0}/s, 5 s ago {floor:?})",
        up_after,
        rate.unwrap(),
        start.elapsed(),
        now - sample_ts
    );
    assert!(prom_value <= agent_value, "Prometheus {prom_value} ahead of the agent {agent_value}");
    assert!(now - sample_ts < 5.0, "latest Prometheus sample is {:.1} s old", now - sample_ts);
    if let Some(floor) = floor {
        assert!(prom_value >= floor, "Prometheus {prom_value} older than the agent 5 s ago ({floor})");
    }
    // The demo's own MemStats rate, printed every 5 s.
    let deadline = Instant::now() + Duration::from_secs(6);
    while let Ok(line) = demo_lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        println!("{line}");
        if line.contains("mallocs=") {
            break;
        }
    }
    drop(prom);
    drop(demo);

    // promtool lints the classic text format. In OpenMetrics a counter family
    // `x` has samples `x_total`, which that format reads as a family without
    // HELP: accept exactly those, then lint the classic translation strictly.
    let text = agent.metrics_text();
    let promtool = |input: &str| {
        let mut child = Command::new("/usr/bin/promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), said)
    };
    let (code, said) = promtool(&text);
    println!("promtool check metrics (OpenMetrics as served): exit {code:?}\n{said}");
    let counters: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    for problem in said.lines().filter(|l| !l.trim().is_empty()) {
        let family = problem.strip_suffix(" no help text").and_then(|m| m.strip_suffix("_total"));
        assert!(family.is_some_and(|f| counters.contains(f)), "promtool: {problem}");
    }
    let classic: String = text
        .lines()
        .filter(|l| !l.starts_with("# UNIT ") && *l != "# EOF")
        .map(|l| {
            let mut w: Vec<&str> = l.splitn(4, ' ').collect();
            let counter = w.len() >= 3 && w[0] == "#" && counters.contains(w[2]);
            let renamed = format!("{}_total", w.get(2).unwrap_or(&""));
            if counter {
                w[2] = &renamed;
            }
            w.join(" ") + "\n"
        })
        .collect();
    let (code, said) = promtool(&classic);
    assert_eq!(code, Some(0), "promtool check metrics on the classic text translation:\n{said}");
}

/// Stopping an agent removes its uprobes; a new agent attaches each planned
/// probe once and counts a running process from zero, exactly.
#[test]
fn restart_leaves_no_duplicate_attachments() {
    if !require_bpf() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fixture = tmp.path().join("fixture-restart");
    std::fs::copy(variant("go1.27.3").program("fixture"), &fixture).unwrap();
    let planned = planned_offsets(&fixture);
    let mut a = Some(Agent::start());
    let mut b: Option<Agent> = None;
    let guard = KillOnDrop::default();
    let mut snaps = Vec::new();
    let mut report = String::new();
    let fin = run_with_stops(
        &fixture,
        &["-phases=small-scan,goroutines"],
        |pid| guard.arm(pid),
        |pid, stop| {
            match stop {
                0 => {
                    let agent = a.as_mut().unwrap();
                    agent.wait_ready();
                    snaps.push(counts(&wait_tracked(agent, pid, Duration::from_millis(10)), pid).unwrap());
                }
                1 => {
                    // Phase 0 counted by A; restart while the process is stopped.
                    let mut agent_a = a.take().unwrap();
                    snaps.push(counts(&agent_a.scrape(), pid).unwrap());
                    let (ids, offsets) = uprobes_on(agent_a.pid(), &fixture, &BTreeSet::from([pid]));
                    assert_eq!(offsets, planned, "agent A's uprobes on the fixture");
                    assert_eq!(ids.len(), planned.len(), "agent A attached some probe twice");
                    let stopping = Instant::now();
                    let status = agent_a.stop();
                    let a_stop = stopping.elapsed();
                    assert!(status.success(), "agent A: {status}\n{}", agent_a.stderr());
                    let alive: Vec<_> = ids.iter().filter(|id| uprobe_link(**id).is_ok()).collect();
                    assert!(alive.is_empty(), "agent A's links {alive:?} survive it");

                    let mut agent = Agent::start();
                    agent.wait_ready();
                    let all = wait_tracked(&agent, pid, Duration::from_millis(10));
                    let (ids, offsets) = uprobes_on(agent.pid(), &fixture, &BTreeSet::from([pid]));
                    report = format!(
                        "planned probes {}; agent A held {} (removed on exit, which took {a_stop:?}); agent B \
                         holds {} on the fixture, global goalloc_probes_attached {:?} in {:?} binaries",
                        planned.len(),
                        planned.len(),
                        ids.len(),
                        sample_value(&all, "goalloc_probes_attached", &[]),
                        sample_value(&all, "goalloc_binaries_attached", &[]),
                    );
                    assert_eq!(offsets, planned, "agent B's uprobes on the fixture");
                    assert_eq!(ids.len(), planned.len(), "agent B attached some probe twice");
                    let fresh = counts(&all, pid).unwrap();
                    assert_eq!(fresh, Counts::default(), "agent B did not start from zero");
                    snaps.push(fresh);
                    b = Some(agent);
                }
                _ => snaps.push(counts(&b.as_ref().unwrap().scrape(), pid).unwrap()),
            }
        },
    );
    guard.disarm();
    assert_eq!(fin.code, 0, "{}", fin.stdout);
    let phases = parse_phases(&fin.stdout);
    assert_eq!(fin.stops, 2 * phases.len());
    // snaps: A at stops 0 and 1, B at stops 1 (zero), 2 and 3.
    let b_snaps = [vec![Counts::default(); 2], snaps[3..].to_vec()].concat();
    let table_a = check_phases(&phases[..1], &snaps[..2], 0);
    let table_b = check_phases(&phases, &b_snaps, 1);
    println!("{report}\nagent A:\n{table_a}agent B:\n{table_b}");
    let status = b.as_mut().unwrap().stop();
    assert!(status.success(), "agent B: {status}");
}
