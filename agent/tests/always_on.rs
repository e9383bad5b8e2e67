//! The node agent's default: every Go process's runtime counters, read from
//! its memory, with no uprobe on it. At the fixture's stop points (right
//! after `runtime.ReadMemStats`) every exported figure equals the fixture's
//! own; a busy process's rates follow the exact probe count; processes that
//! cannot be read are reported with a reason and nothing else is lost.
//! Needs root (BPF for the agent's exec/exit tracepoints, ptrace access).

mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Agent, KillOnDrop, Sample, parse_stop_stats, require_bpf, run_with_stops, sample_value,
    samples, uprobes_held, variant,
};

/// Runtime families and the fixture's `-stopstats` field each must equal.
const FIGURES: [(&str, &str); 9] = [
    ("goalloc_heap_allocations_total", "mallocs"),
    ("goalloc_heap_frees_total", "frees"),
    ("goalloc_heap_allocated_bytes_total", "total_alloc"),
    ("goalloc_heap_live_objects", "heap_objects"),
    ("goalloc_heap_live_bytes", "heap_alloc"),
    ("goalloc_heap_inuse_bytes", "heap_inuse"),
    ("goalloc_heap_goal_bytes", "next_gc"),
    ("goalloc_gc_cycles_total", "num_gc"),
    ("goalloc_goroutines", "goroutines"),
];

fn figures_of(all: &[Sample], pid: u32) -> Option<Vec<u64>> {
    let pid = pid.to_string();
    FIGURES
        .iter()
        // The raw text: values like a GC-off heap goal (~2^63) do not fit an f64.
        .map(|(name, _)| {
            samples(all, name, &[("pid", &pid)])
                .first()
                .map(|s| s.raw.parse().expect("an integer"))
        })
        .collect()
}

fn wait_for(agent: &Agent, pid: u32) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let all = agent.scrape();
        if figures_of(&all, pid).is_some() {
            return all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "pid {pid} has no runtime figures:\n{}\n{}",
            agent.metrics_text(),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// At every stop of the fixture, /metrics equals the fixture's MemStats and
/// NumGoroutine(); no uprobe is placed and no probe family is exported.
#[test]
fn default_agent_reads_runtime_counters_exactly_without_probes() {
    if !require_bpf() {
        return;
    }
    let mut agent = Agent::start_with(&[]);
    agent.wait_ready();
    let mut table = String::new();
    let mut bad = Vec::new();
    // A spread of the matrix (the library test covers every cell): old and
    // new layouts, stripped (anchors), PIE (load bias), cgo.
    for label in [
        "go1.19.8-stripped",
        "go1.21.13-pie",
        "go1.24.11-cgo",
        "go1.27.3-stripped-pie",
    ] {
        let v = variant(label);
        let fixture = v.program("fixture");
        let guard = KillOnDrop::default();
        let mut seen: Vec<Vec<u64>> = Vec::new();
        let fin = run_with_stops(
            &fixture,
            &[
                "-stopstats",
                "-phases=tiny,small-scan,large,gc,park,maps,unpark,gogc",
                "-n=0.2",
            ],
            |pid| guard.arm(pid),
            |pid, stop| {
                let all = if stop == 0 {
                    wait_for(&agent, pid)
                } else {
                    agent.scrape()
                };
                if stop == 0 {
                    let pids = pid.to_string();
                    assert!(
                        samples(&all, "goalloc_allocations_total", &[("pid", &pids)]).is_empty(),
                        "probe family exported without --exact-for"
                    );
                    assert_eq!(
                        sample_value(&all, "goalloc_probes_attached", &[]),
                        Some(0.0)
                    );
                    assert!(
                        uprobes_held(agent.pid()).is_empty(),
                        "the agent holds uprobes without --exact-for: {:?}",
                        uprobes_held(agent.pid())
                    );
                }
                seen.push(figures_of(&all, pid).expect("series vanished"));
            },
        );
        guard.disarm();
        assert_eq!(fin.code, 0, "{}", fin.stdout);
        let truth = parse_stop_stats(&fin.stdout);
        assert_eq!(truth.len(), seen.len(), "{}", fin.stdout);
        for (stop, (t, got)) in truth.iter().zip(&seen).enumerate() {
            for ((name, field), value) in FIGURES.iter().zip(got) {
                let want = t.fields[*field];
                if want != *value {
                    bad.push(format!(
                        "{label} stop {stop}: {name} = {value}, MemStats {field} = {want}"
                    ));
                }
            }
        }
        let last = seen.last().unwrap();
        table.push_str(&format!(
            "{label:<24} {} stops, last: mallocs {} frees {} heap_alloc {} next_gc {} num_gc {} goroutines {}\n",
            seen.len(),
            last[0],
            last[1],
            last[4],
            last[6],
            last[7],
            last[8]
        ));
    }
    println!("{table}");
    assert!(bad.is_empty(), "not exact:\n{}\n{table}", bad.join("\n"));
}

/// A process allocating freely: over >= 5 s the runtime counters' rate is
/// within 1% of the exact probe count.
#[test]
fn runtime_rate_follows_the_exact_count() {
    if !require_bpf() {
        return;
    }
    // The demo allocates 200,000 objects/s: well over the default cost budget.
    let mut agent = Agent::start_with(&["--exact-for", "exe=demo", "--exact-budget", "1"]);
    agent.wait_ready();
    let demo = variant("go1.27.3").program("demo");
    let mut child = Command::new(&demo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop::default();
    guard.arm(child.id());
    let pid = child.id().to_string();
    let both = |all: &[Sample]| {
        Some((
            sample_value(all, "goalloc_heap_allocations_total", &[("pid", &pid)])?,
            sample_value(all, "goalloc_allocations_total", &[("pid", &pid)])?,
        ))
    };
    let start = Instant::now();
    let (r0, e0) = loop {
        if let Some(v) = both(&agent.scrape()) {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let (r1, e1) = both(&agent.scrape()).expect("series vanished");
    let secs = t0.elapsed().as_secs_f64();
    drop(guard);
    let _ = child.wait();
    let (runtime, exact) = (r1 - r0, e1 - e0);
    let diff = (runtime - exact).abs() / exact;
    println!(
        "over {secs:.1} s: runtime counters {runtime} ({:.0}/s), exact probes {exact} ({:.0}/s), difference {:.3}%",
        runtime / secs,
        exact / secs,
        diff * 100.0
    );
    assert!(exact > 100_000.0, "the demo barely allocated: {exact}");
    assert!(diff < 0.01, "runtime rate off by {:.3}%", diff * 100.0);
}

/// A Go process of another user, seen by an agent without CAP_SYS_PTRACE:
/// counted as inaccessible (its executable and memory are denied, so it
/// cannot even be told whether it is Go), with a hint in the log; a non-Go
/// process is not reported; everything else goes on.
#[test]
fn inaccessible_processes_are_counted() {
    if !require_bpf() {
        return;
    }
    if Command::new("setpriv").arg("--help").output().is_err() {
        panic!("setpriv (util-linux) is needed for this test");
    }
    // The demo service runs until killed; here as nobody, started before the
    // agent so its first sweep sees it.
    let demo: PathBuf = variant("go1.27.3").program("demo");
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&demo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop::default();
    guard.arm(child.id());
    // A Go process the agent can still read: root, with no capability the
    // agent lacks (the kernel denies access to processes with more).
    let mut mine = Command::new("setpriv")
        .args(["--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace", "--"])
        .arg(&demo)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mine_guard = KillOnDrop::default();
    mine_guard.arm(mine.id());
    std::thread::sleep(Duration::from_millis(300));
    // The agent keeps BPF and PERFMON (and DAC_READ_SEARCH) but not
    // SYS_PTRACE, as a DaemonSet that dropped it would.
    let mut agent = Agent::start_via(
        &[
            "setpriv",
            "--inh-caps=-sys_ptrace",
            "--bounding-set=-sys_ptrace",
            "--",
        ],
        &[],
    );
    agent.wait_ready();
    let pid = child.id().to_string();
    let mine_pid = mine.id().to_string();
    let start = Instant::now();
    loop {
        let all = agent.scrape();
        let inaccessible = sample_value(&all, "goalloc_processes_inaccessible", &[]);
        let readable = sample_value(
            &all,
            "goalloc_heap_allocations_total",
            &[("pid", &mine_pid)],
        );
        if inaccessible.is_some_and(|n| n >= 1.0) && readable.is_some() {
            assert!(
                samples(&all, "goalloc_heap_allocations_total", &[("pid", &pid)]).is_empty(),
                "figures for a process the agent may not read"
            );
            break;
        }
        if child.try_wait().unwrap().is_some() {
            panic!("the demo exited (can uid 65534 run {}?)", demo.display());
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "inaccessible {inaccessible:?}, own demo {readable:?}:\n{}\n{}",
            agent.metrics_text(),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.stderr().contains("CAP_SYS_PTRACE"),
        "no hint in the log:\n{}",
        agent.stderr()
    );
    for c in [&mut child, &mut mine] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
