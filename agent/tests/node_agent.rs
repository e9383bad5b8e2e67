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
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Agent, KillOnDrop, Phase, RmdirOnDrop, Sample, Terminate, cgroup2_root, cpu_seconds, fd_kinds,
    fdinfo_values, http_get, map_id_of, parse_phases, planned_offsets, proc_stats_keys,
    proc_status_kib, random_uuid, require_bpf, run_with_stops, sample_value, samples, uprobe_link,
    uprobes_held, variant,
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
        assert!(found.len() <= 1, "pid {pid}: {} {name} series", found.len());
        found.first().map(|s| s.raw.parse().expect("integer"))
    };
    let c = Counts {
        allocs: get("goalloc_allocations_total")?,
        bytes: get("goalloc_allocated_bytes_total")?,
        created: get("goalloc_goroutines_created_total")?,
        exited: get("goalloc_goroutines_exited_total")?,
    };
    let hist_count = get("goalloc_allocation_size_bytes_count");
    assert_eq!(hist_count, Some(c.allocs), "pid {pid}: histogram _count");
    let hist_sum = sample_value(all, "goalloc_allocation_size_bytes_sum", &with);
    assert_eq!(hist_sum, Some(c.bytes as f64), "pid {pid}: histogram _sum");
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
        let late = start.elapsed() > Duration::from_secs(20);
        assert!(!late, "pid {pid} untracked:\n{}", agent.stderr());
        std::thread::sleep(every);
    }
}

/// Checks per-phase deltas (stops 2i, 2i+1) against the fixture's report,
/// from phase `first` on; returns the table.
fn check_phases(phases: &[Phase], snaps: &[Counts], first: usize) -> String {
    let row = |cells: [&dyn std::fmt::Display; 9]| {
        let [a, b, c, d, e, f, g, h, i] = cells;
        format!("{a:<13}{b:>9}{c:>9}{d:>10}{e:>10}{f:>7}{g:>8}{h:>7}{i:>8}\n")
    };
    let mut table = "phase          mallocs  counted req bytes   counted   gor+ counted   gor- \
                     counted\n"
        .to_string();
    let mut bad = Vec::new();
    for (i, p) in phases.iter().enumerate().skip(first) {
        let (a, b) = (snaps[2 * i], snaps[2 * i + 1]);
        let (allocs, bytes) = (b.allocs - a.allocs, b.bytes - a.bytes);
        let (created, exited) = (b.created - a.created, b.exited - a.exited);
        let want = p.bytes.map_or("-".into(), |b| b.to_string());
        let (gc, ge) = (p.goroutines_created, p.goroutines_exited);
        table += &row([
            &p.name, &p.mallocs, &allocs, &want, &bytes, &gc, &created, &ge, &exited,
        ]);
        if allocs != p.mallocs
            || p.bytes.is_some_and(|b| b != bytes)
            || (gc, ge) != (created, exited)
        {
            bad.push(p.name.clone());
        }
    }
    assert!(bad.is_empty(), "not exact: {bad:?}\n{table}");
    table
}

/// Runs `program` (the fixture, possibly behind `sh -c ... exec`) with its
/// self-stops; at the first stop waits until `agent` tracks it and hands
/// `seen` that scrape; checks every phase's counts. Returns the table.
fn fixture_counted(
    agent: &Agent,
    program: &str,
    args: &[&str],
    mut seen: impl FnMut(u32, &[Sample]),
) -> String {
    let guard = KillOnDrop::default();
    let mut snaps = Vec::new();
    let fin = run_with_stops(
        &PathBuf::from(program),
        args,
        |pid| guard.arm(pid),
        |pid, stop| {
            if stop == 0 {
                // Stopped before its first phase: wait for the agent.
                seen(pid, &wait_tracked(agent, pid, Duration::from_millis(2)));
            }
            snaps.push(counts(&agent.scrape(), pid).expect("series vanished"));
        },
    );
    guard.disarm();
    assert_eq!(fin.code, 0, "{}", fin.stdout);
    let phases = parse_phases(&fin.stdout);
    assert_eq!(fin.stops, 2 * phases.len());
    check_phases(&phases, &snaps, 0)
}

/// Link ids and file offsets of the uprobes that process `pid` holds on the
/// binary at `path`. The kernel names a uprobe by the path it was attached
/// through, which for the agent is `/proc/<a process running it>/exe`.
fn uprobes_on(pid: u32, path: &Path, runners: &BTreeSet<u32>) -> (Vec<u32>, BTreeSet<u64>) {
    // The agent attaches through its own descriptor of the executable
    // (/proc/self/fd/N), so a link is recognised by being the agent's and
    // at one of this binary's planned offsets; the tests that use this pick
    // a Go variant no concurrent test runs, so those offsets are theirs.
    let planned = planned_offsets(path);
    let through_runner = |file: &str| {
        let runner = file
            .strip_prefix("/proc/")
            .and_then(|f| f.strip_suffix("/exe"));
        runner
            .and_then(|p| p.parse().ok())
            .is_some_and(|p| runners.contains(&p))
    };
    uprobes_held(pid)
        .into_iter()
        .filter(|(_, file, offset)| {
            (Path::new(file) == path || through_runner(file) || file.starts_with("/proc/self/fd/"))
                && planned.contains(offset)
        })
        .map(|(id, _, offset)| (id, offset))
        .unzip()
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
    let mut seen = None;
    let spawned = Instant::now();
    let table = fixture_counted(&agent, fixture.to_str().unwrap(), &[], |_, all| {
        let exec_max = sample_value(all, "goalloc_exec_to_tracked_max_seconds", &[]);
        seen = Some((spawned.elapsed(), exec_max));
    });
    let (first_seen, exec_max) = seen.unwrap();
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
    let uid = random_uuid();
    let cid = (random_uuid() + &random_uuid()).replace('-', "");
    let slices = [
        "kubepods.slice".to_string(),
        "kubepods-burstable.slice".to_string(),
        format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
        format!("cri-containerd-{cid}.scope"),
    ];
    let mut dirs: Vec<PathBuf> = slices
        .iter()
        .scan(cgroup2_root(), |dir, s| {
            Some(dir.join(s)).inspect(|d| *dir = d.clone())
        })
        .collect();
    dirs.reverse(); // leaf first
    let cgroups = RmdirOnDrop(dirs);
    std::fs::create_dir_all(&cgroups.0[0]).unwrap();
    let ns_dir = tempfile::Builder::new()
        .prefix("goalloc-ns-")
        .tempdir_in("/tmp")
        .unwrap();
    let inside = ns_dir.path().join("fixture");
    let (root, leaf) = (ns_dir.path().display(), cgroups.0[0].display());
    // Every step execs, so the fixture keeps the pid of the spawned shell.
    let script = format!(
        "echo $$ > {leaf}/cgroup.procs && exec unshare --mount --propagation private sh -c \
         'mount -t tmpfs tmpfs {root} && cp {} {inside} && exec {inside} \
         -phases=small-scan,goroutines'",
        fixture.display(),
        inside = inside.display(),
    );

    let mut agent = Agent::start();
    agent.wait_ready();
    let table = fixture_counted(&agent, "/bin/sh", &["-c", &script], |pid, all| {
        assert!(
            !inside.exists(),
            "{} is visible from the host",
            inside.display()
        );
        let series = samples(
            all,
            "goalloc_allocations_total",
            &[("pid", &pid.to_string())],
        );
        println!("container series: {:?}", series[0].labels);
        assert_eq!(series[0].label("container_id"), cid);
        assert_eq!(series[0].label("exe"), inside.to_str().unwrap());
        assert_eq!(series[0].label("go_version"), "go1.27.3");
    });
    println!("{table}");
    let leaf = cgroups.0[0].clone();
    drop(cgroups);
    assert!(!leaf.exists(), "cgroup {} not removed", leaf.display());
}

/// The agent's fds: (uprobe links, other BPF links, everything else).
fn fds(pid: u32) -> (usize, usize, usize) {
    let kinds = fd_kinds(pid);
    let links = kinds.get("anon_inode:bpf_link").copied().unwrap_or(0);
    let ids = fdinfo_values(pid, "link_id:");
    let uprobes = ids
        .iter()
        .filter(|id| matches!(uprobe_link(**id), Ok(Some(_))))
        .count();
    (
        uprobes,
        links - uprobes.min(links),
        kinds.values().sum::<usize>() - links,
    )
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
    // The demo at low rates: alive long enough (150 ms) to be tracked, cheap.
    const ARGS: [&str; 4] = ["-duration=150ms", "-churn=1000", "-leak=1", "-requests=20"];
    // Removing a uprobe takes ~0.1 s in the kernel, one at a time machine-wide,
    // and every agent running (other tests') detaches this binary's 17 too.
    const SETTLE: Duration = Duration::from_secs(20);
    let tmp = tempfile::tempdir().unwrap();
    let program = tmp.path().join("demo-churn");
    // A variant no other test of this file runs (see `uprobes_on`).
    std::fs::copy(variant("go1.21.13").program("demo"), &program).unwrap();
    let exe = program.to_str().unwrap();
    let mut agent = Agent::start();
    agent.wait_ready();
    let apid = agent.pid();
    let stats_map = map_id_of(apid, "PROC_STATS");
    let probes = |all: &[Sample]| sample_value(all, "goalloc_probes_attached", &[]).unwrap();
    // Transient fds (a /proc file in a sweep, a closing connection) only add.
    let (base_uprobes, base_links, mut base_other) = fds(apid);
    for _ in 0..10 {
        base_other = base_other.min(fds(apid).2);
        std::thread::sleep(Duration::from_millis(20));
    }
    let base_probes = probes(&agent.scrape());
    let (rss_before, cpu_before) = (proc_status_kib(apid, "VmRSS"), cpu_seconds(apid));

    let mut running: Vec<Child> = Vec::new();
    let (mut pids, mut tracked, mut in_kernel) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let (mut rss_peak, mut slowest, mut last_sample) = (rss_before, Duration::ZERO, Instant::now());
    let (start, mut slowest_spawn) = (Instant::now(), Duration::ZERO);
    while pids.len() < TOTAL || !running.is_empty() {
        running.retain_mut(|c| match c.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "{exe} failed: {status}");
                false
            }
            None => true,
        });
        while running.len() < PARALLEL && pids.len() < TOTAL {
            let t0 = Instant::now();
            let child = Command::new(&program)
                .args(ARGS)
                .stdout(Stdio::null())
                .spawn();
            slowest_spawn = slowest_spawn.max(t0.elapsed());
            let child = child.unwrap();
            pids.insert(child.id());
            running.push(child);
        }
        if last_sample.elapsed() > Duration::from_millis(50) {
            last_sample = Instant::now();
            in_kernel.extend(proc_stats_keys(stats_map).intersection(&pids).copied());
            rss_peak = rss_peak.max(proc_status_kib(apid, "VmRSS"));
            let all = agent.scrape();
            slowest = slowest.max(last_sample.elapsed());
            // The runtime figures: every tracked Go process has them, probed or not.
            let ours = samples(&all, "goalloc_heap_allocations_total", &[("exe", exe)]);
            tracked.extend(ours.iter().map(|s| s.label("pid").to_string()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let churn = start.elapsed();

    // Settle: exit events, or at worst the next sweep, clean up.
    let (settled, state) = loop {
        let t0 = Instant::now();
        let all = agent.scrape();
        slowest = slowest.max(t0.elapsed());
        let series = samples(&all, "goalloc_allocations_total", &[("exe", exe)]).len();
        let entries = proc_stats_keys(stats_map);
        let leftover: Vec<u32> = entries.intersection(&pids).copied().collect();
        let entries_metric = sample_value(&all, "goalloc_kernel_map_entries", &[]);
        let (ids, _) = uprobes_on(apid, &program, &pids);
        let (uprobes, links, other) = fds(apid);
        let probes_now = probes(&all);
        let state = format!(
            "series {series}; its kernel entries {leftover:?} (map {}, goalloc_kernel_map_entries \
             {entries_metric:?}); its uprobes {}; agent fds: {uprobes} uprobe links \
             (goalloc_probes_attached {probes_now}), {links} other links, {other} others",
            entries.len(),
            ids.len(),
        );
        let map_back = leftover.is_empty() && entries_metric == Some(entries.len() as f64);
        let fds_back = uprobes as f64 == probes_now && links == base_links && other == base_other;
        if series == 0 && map_back && ids.is_empty() && fds_back {
            break (start.elapsed() - churn, state);
        }
        let late = start.elapsed() - churn > SETTLE;
        assert!(
            !late,
            "not back to baseline {SETTLE:?} after the churn: {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let cpu = cpu_seconds(apid) - cpu_before;
    let (rss_after, hwm) = (
        proc_status_kib(apid, "VmRSS"),
        proc_status_kib(apid, "VmHWM"),
    );
    let all = agent.scrape();
    println!(
        "{TOTAL} processes ({PARALLEL} at a time) in {churn:?}: {} seen tracked by 50 ms scrapes, \
         {} in the kernel map. Settled {settled:?} after the last exit: {state}\n\
         agent fds before: {base_uprobes} uprobe links, {base_links} other links, {base_other} \
         others. RSS before {rss_before} KiB, after {rss_after} KiB, peak sampled {rss_peak} KiB, \
         VmHWM {hwm} KiB; CPU {cpu:.2} s; slowest scrape {slowest:?}, spawn {slowest_spawn:?}; \
         events lost {:?}; goalloc_probes_attached {base_probes} -> {}",
        tracked.len(),
        in_kernel.len(),
        sample_value(&all, "goalloc_events_lost_total", &[]),
        probes(&all)
    );
    assert!(hwm < 200 * 1024, "agent peak RSS {hwm} KiB >= 200 MiB");
    // The agent followed the churn and probed some of it. Probes are put on
    // each chosen process after its exec (per-process scope), so most of
    // these processes, which live a few milliseconds, exit first: what
    // matters here is that everything returns to the baseline below.
    assert!(
        !in_kernel.is_empty(),
        "none of {TOTAL} short-lived processes was ever counted"
    );
    // Every process here is chosen for probes; the agent attaches them one
    // process per registry lock (deferred), so scrapes do not wait for a
    // burst of attachments. Processes of 150 ms are still often gone before
    // a 50 ms scrape runs after their exec was handled: some are seen.
    assert!(!tracked.is_empty(), "none of {TOTAL} seen in /metrics");
}

/// An instant query against Prometheus's HTTP API: its `data.result`.
fn prom_query(addr: &str, query: &str) -> Vec<serde_json::Value> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Some((200, body)) = http_get(addr, &format!("/api/v1/query?query={encoded}")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// `promtool check metrics` on `input`: exit code and what it said.
fn promtool(input: &str) -> (Option<i32>, String) {
    let mut child = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.code(), said.into_owned())
}

/// A real Prometheus scrapes the agent: rates are positive, its samples trail
/// the agent's counter by a scrape or so, it negotiates OpenMetrics, keeps
/// the measured processes' labels under honor_labels, evaluates the alert
/// rules without error, and promtool accepts the default exposition.
#[test]
fn prometheus_scrapes_agent() {
    if !require_bpf() {
        return;
    }
    for tool in ["/usr/bin/prometheus", "/usr/bin/promtool"] {
        let hint = "run `cargo xtask setup` (Debian package prometheus)";
        assert!(Path::new(tool).exists(), "{tool} is missing: {hint}");
    }
    // The demo allocates flat out: no cost guard, so its probes stay on.
    let mut agent = Agent::start_with(&["--exact-for", "all", "--exact-budget", "1"]);
    agent.wait_ready();
    let mut demo = Command::new(variant("go1.27.3").program("demo"))
        .args(["-duration", "60s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let demo_out = BufReader::new(demo.stdout.take().unwrap());
    let demo = Terminate(demo);
    let (tx, demo_lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        demo_out
            .lines()
            .map_while(Result::ok)
            .try_for_each(|l| tx.send(l))
    });
    let selector = format!("goalloc_allocations_total{{pid=\"{}\"}}", demo.0.id());

    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("prometheus.yml");
    let targets = format!("['{}']", agent.addr);
    // Like the PodMonitor: honor_labels, and target labels of the agent's own
    // pod, which must not replace the labels of what the series measure.
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/goalloc-rules.yaml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}']\n\
             scrape_configs: [{{job_name: goalloc, honor_labels: true, static_configs: [{{targets: {targets}, \
             labels: {{pod: agent-pod, namespace: goalloc, container: agent}}}}]}}]\n",
            rules.display()
        ),
    )
    .unwrap();
    let prom_addr = format!("127.0.0.1:{}", common::free_port());
    let log = tmp.path().join("prometheus.log");
    let prom = Terminate(
        Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

    let start = Instant::now();
    let (mut up_after, mut rate) = (None, None);
    let query = |q: &str| -> Option<f64> {
        let r = prom_query(&prom_addr, q);
        r.first()?["value"][1].as_str()?.parse().ok()
    };
    while rate.is_none() {
        let late = start.elapsed() > Duration::from_secs(40);
        assert!(
            !late,
            "no rate after 40 s:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        let up = query(&format!("up{{instance=\"{}\"}}", agent.addr));
        if up_after.is_none() && up == Some(1.0) {
            up_after = Some(start.elapsed());
        }
        rate = query(&format!("rate({selector}[5s])")).filter(|r| *r > 0.0);
        std::thread::sleep(Duration::from_millis(250));
    }
    // Prometheus's latest value never passes the agent's, and catches up
    // with what the agent served a moment ago within a few seconds.
    let allocs = || counts(&agent.scrape(), demo.0.id()).unwrap().allocs as f64;
    let (then, asked) = (allocs(), Instant::now());
    let (mut stale, mut prom_value) = (0, None);
    let (lag, prom_value, agent_value) = loop {
        // No value right after a failed scrape: Prometheus marks the series stale.
        let answer = query(&selector);
        stale += usize::from(answer.is_none());
        prom_value = answer.or(prom_value);
        let agent_value = allocs();
        if let Some(p) = prom_value {
            assert!(p <= agent_value, "Prometheus {p} > agent {agent_value}");
            if p >= then {
                break (asked.elapsed(), p, agent_value);
            }
        }
        // A few scrapes; more while the agent stalls detaching uprobes.
        let late = asked.elapsed() > Duration::from_secs(10);
        assert!(
            !late,
            "Prometheus at {prom_value:?} 10 s after the agent served {then}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let agent_rate = (agent_value - then) / asked.elapsed().as_secs_f64();
    println!(
        "Prometheus: target seen up after {up_after:?}, rate({selector}[5s]) = {:.0}/s after \
         {:?}; it reached the agent's {then} after {lag:?} (at {prom_value}, agent then at \
         {agent_value}, agent's own rate {agent_rate:.0}/s; {stale} stale answers)",
        rate.unwrap(),
        start.elapsed(),
    );
    // The demo's own MemStats rate, printed every 5 s.
    let deadline = Instant::now() + Duration::from_secs(6);
    while let Ok(line) = demo_lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        println!("{line}");
        if line.contains("mallocs=") {
            break;
        }
    }
    // Prometheus asked for OpenMetrics (it keeps the unit only from there),
    // and honor_labels kept the measured process's labels.
    let Some((200, body)) = http_get(
        &prom_addr,
        "/api/v1/metadata?metric=goalloc_heap_live_bytes",
    ) else {
        panic!("no metadata from Prometheus");
    };
    let meta: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        meta["data"]["goalloc_heap_live_bytes"][0]["unit"], "bytes",
        "Prometheus did not get OpenMetrics: {meta}"
    );
    let demo_series = prom_query(&prom_addr, &selector);
    assert!(
        demo_series
            .iter()
            .all(|r| r["metric"].get("pod").is_none() && r["metric"].get("container").is_none()),
        "a host process got the agent pod's labels: {demo_series:?}"
    );
    let own = prom_query(&prom_addr, "goalloc_processes_tracked");
    assert_eq!(
        own.first().map(|r| &r["metric"]["pod"]),
        Some(&"agent-pod".into())
    );
    // The alert rules load and evaluate against real series without error.
    let rules_ok = || {
        let Some((200, body)) = http_get(&prom_addr, "/api/v1/rules") else {
            return None;
        };
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<serde_json::Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        Some(rules)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let rules = loop {
        let rules = rules_ok().unwrap_or_default();
        if !rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown") {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "rules never evaluated: {rules:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in &rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed: {}",
            r["name"], r["lastError"]
        );
    }
    println!(
        "Prometheus evaluated {} goalloc rules without error",
        rules.len()
    );
    drop((prom, demo));

    // What promtool and curl get by default: the classic text format, which
    // promtool accepts without a word (observability.rs checks both formats).
    let text = agent.metrics_text();
    let (code, said) = promtool(&text);
    assert!(
        code == Some(0) && said.trim().is_empty(),
        "promtool check metrics on the default answer:\n{said}"
    );
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
    // A variant no other test of this file runs (see `uprobes_on`).
    std::fs::copy(
        variant("go1.27.3-nosizespecializedmalloc").program("fixture"),
        &fixture,
    )
    .unwrap();
    let planned = planned_offsets(&fixture);
    let (mut a, mut b) = (Agent::start(), None::<Agent>);
    let guard = KillOnDrop::default();
    // A's counts at stops 0 and 1, then B's at stops 1, 2 and 3.
    let mut snaps = Vec::new();
    let mut report = String::new();
    let fin = run_with_stops(
        &fixture,
        &["-phases=small-scan,goroutines"],
        |pid| guard.arm(pid),
        |pid, stop| match (stop, &b) {
            (0, _) => {
                a.wait_ready();
                let all = wait_tracked(&a, pid, Duration::from_millis(10));
                snaps.push(counts(&all, pid).unwrap());
            }
            (1, _) => {
                // Restart while the process is stopped after phase 0.
                snaps.push(counts(&a.scrape(), pid).unwrap());
                let (ids, offsets) = uprobes_on(a.pid(), &fixture, &BTreeSet::from([pid]));
                assert_eq!(offsets, planned, "agent A's uprobes on the fixture");
                assert_eq!(ids.len(), planned.len(), "agent A attached a probe twice");
                let stopping = Instant::now();
                let status = a.stop();
                let a_stop = stopping.elapsed();
                assert!(status.success(), "agent A: {status}\n{}", a.stderr());
                let alive: Vec<_> = ids.iter().filter(|id| uprobe_link(**id).is_ok()).collect();
                assert!(alive.is_empty(), "agent A's links {alive:?} survive it");

                let mut agent = Agent::start();
                agent.wait_ready();
                let all = wait_tracked(&agent, pid, Duration::from_millis(10));
                let (ids, offsets) = uprobes_on(agent.pid(), &fixture, &BTreeSet::from([pid]));
                report = format!(
                    "planned probes {}; agent A held as many, gone when it exited ({a_stop:?} to \
                     stop); agent B holds {} on the fixture; B's global goalloc_probes_attached \
                     {:?} in {:?} binaries",
                    planned.len(),
                    ids.len(),
                    sample_value(&all, "goalloc_probes_attached", &[]),
                    sample_value(&all, "goalloc_binaries_attached", &[]),
                );
                assert_eq!(offsets, planned, "agent B's uprobes on the fixture");
                assert_eq!(ids.len(), planned.len(), "agent B attached a probe twice");
                let series = samples(
                    &all,
                    "goalloc_allocations_total",
                    &[("pid", &pid.to_string())],
                );
                assert_eq!(series.len(), 1, "agent B: {series:?}");
                let fresh = counts(&all, pid).unwrap();
                assert_eq!(fresh, Counts::default(), "agent B did not start from zero");
                snaps.push(fresh);
                b = Some(agent);
            }
            (_, Some(agent)) => snaps.push(counts(&agent.scrape(), pid).unwrap()),
            (_, None) => unreachable!(),
        },
    );
    guard.disarm();
    assert_eq!(fin.code, 0, "{}", fin.stdout);
    let phases = parse_phases(&fin.stdout);
    assert_eq!(fin.stops, 2 * phases.len());
    let table_a = check_phases(&phases[..1], &snaps[..2], 0);
    let b_snaps = [vec![Counts::default(); 2], snaps[3..].to_vec()].concat();
    let table_b = check_phases(&phases, &b_snaps, 1);
    println!("{report}\nagent A:\n{table_a}agent B:\n{table_b}");
    let status = b.unwrap().stop();
    assert!(status.success(), "agent B: {status}");
}

/// Unmounts the given mount points when dropped.
struct UmountOnDrop(Vec<PathBuf>);

impl Drop for UmountOnDrop {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

/// Two containers of one image: each runs the binary through its own
/// overlayfs mount (a different device and inode from the host's view), and
/// the uprobes land on the one real file. Probes are per process: each
/// process gets its plan exactly once (never twice through the two mounts),
/// and both are counted separately and exactly.
#[test]
fn two_overlay_mounts_of_one_binary_each_process_attached_once() {
    if !require_bpf() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("goalloc-overlay-")
        .tempdir_in("/tmp")
        .unwrap();
    let lower = tmp.path().join("lower");
    std::fs::create_dir(&lower).unwrap();
    // A variant no other test of this file runs (see `uprobes_on`).
    std::fs::copy(
        variant("go1.25.5").program("fixture"),
        lower.join("fixture"),
    )
    .unwrap();
    let mut mounts = UmountOnDrop(Vec::new());
    let mut programs = Vec::new();
    for i in 0..2 {
        let [upper, work, merged] =
            ["upper", "work", "merged"].map(|d| tmp.path().join(format!("{d}{i}")));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount -t overlay failed (overlayfs needed)"
        );
        mounts.0.push(merged.clone());
        programs.push(merged.join("fixture"));
    }
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    assert_ne!(
        dev(&programs[0]),
        dev(&programs[1]),
        "overlay mounts share a device"
    );
    let planned = planned_offsets(&programs[0]);

    let mut agent = Agent::start();
    agent.wait_ready();
    // Container 1: started first and left stopped before its first phase.
    let mut idle = Command::new(&programs[1])
        .arg("-phases=small-scan")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let idle_guard = KillOnDrop::default();
    idle_guard.arm(idle.id());
    wait_tracked(&agent, idle.id(), Duration::from_millis(10));
    let mut report = String::new();
    // Container 0: runs its phases, counted exactly, next to container 1.
    let table = fixture_counted(
        &agent,
        programs[0].to_str().unwrap(),
        &["-phases=small-scan,goroutines"],
        |pid, all| {
            let runners = BTreeSet::from([pid, idle.id()]);
            let (ids, offsets) = uprobes_on(agent.pid(), &programs[0], &runners);
            assert_eq!(offsets, planned, "uprobes on the image's binary");
            assert_eq!(
                ids.len(),
                2 * planned.len(),
                "two processes of one binary in two overlay mounts hold {} plans",
                ids.len() as f64 / planned.len() as f64
            );
            for p in runners {
                let series = samples(all, "goalloc_allocations_total", &[("pid", &p.to_string())]);
                assert_eq!(series.len(), 1, "pid {p}: {series:?}");
            }
            report = format!(
                "two overlay mounts (devices {} and {}), one attachment per process: {} uprobes",
                dev(&programs[0]),
                dev(&programs[1]),
                ids.len()
            );
        },
    );
    println!("{report}\n{table}");
    idle_guard.disarm();
    let _ = idle.kill();
    let _ = idle.wait();
    agent.stop();
    drop(mounts);
}
