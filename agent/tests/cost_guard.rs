//! The cost guard of the node agent: a process whose per-allocation probes
//! cost more than `--exact-budget` loses them, `goalloc_exact_disabled_total
//! {reason="budget"}` says why, and its runtime counters stay; a process that
//! allocates little keeps its probes. Needs BPF.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Agent, Sample, Terminate, require_bpf, sample_value, variant};

/// A private copy of the bench program: only this test's processes match
/// the `exe=` selector.
fn private_bench(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(variant("go1.21.13").program("bench"), &to).unwrap();
    to
}

/// Starts `bench -hold -n N`: N allocations, then idle until stdin closes.
fn bench(program: &Path, n: &str) -> Terminate {
    let child = Command::new(program)
        .args(["-hold", "-n", n])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Terminate(child)
}

fn pid_label(t: &Terminate) -> String {
    t.0.id().to_string()
}

/// Scrapes until `done` holds (or panics after `limit`).
fn scrape_until(agent: &Agent, limit: Duration, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let all = agent.scrape();
        if done(&all) {
            return all;
        }
        assert!(
            start.elapsed() < limit,
            "not reached in {limit:?}:\n{}\n{}",
            agent.metrics_text(),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn fast_allocator_loses_its_probes_slow_one_keeps_them() {
    if !require_bpf() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fast_exe = private_bench(tmp.path(), "guard-fast");
    let slow_exe = private_bench(tmp.path(), "guard-slow");
    let mut agent = Agent::start_with(&["--exact-for", "exe=guard-*", "--exact-budget", "0.5%"]);
    agent.wait_ready();
    // The slow one allocates once and idles; the fast one allocates as fast
    // as it can until killed.
    let slow = bench(&slow_exe, "1");
    let probed = |all: &[Sample], pid: &str| {
        sample_value(all, "goalloc_allocations_total", &[("pid", pid)]).is_some()
    };
    let slow_pid = pid_label(&slow);
    scrape_until(&agent, Duration::from_secs(30), |all| {
        probed(all, &slow_pid)
    });
    let started = Instant::now();
    let fast = bench(&fast_exe, "4000000000");
    let fast_pid = pid_label(&fast);
    scrape_until(&agent, Duration::from_secs(30), |all| {
        probed(all, &fast_pid)
            || sample_value(all, "goalloc_exact_disabled_total", &[("reason", "budget")]).is_some()
    });
    let all = scrape_until(&agent, Duration::from_secs(60), |all| {
        !probed(all, &fast_pid)
    });
    let took = started.elapsed();
    let disabled = sample_value(
        &all,
        "goalloc_exact_disabled_total",
        &[("reason", "budget")],
    );
    assert_eq!(disabled, Some(1.0), "{}", agent.stderr());
    // Its runtime counters stay.
    assert!(
        all.iter()
            .any(|s| s.label("pid") == fast_pid && s.name.starts_with("goalloc_heap")),
        "the fast process lost its runtime figures too"
    );
    // The slow one keeps its probes, with a small estimated cost.
    assert!(probed(&all, &slow_pid), "the slow process lost its probes");
    let slow_cost = sample_value(
        &all,
        "goalloc_probe_cpu_seconds_total",
        &[("pid", &slow_pid)],
    )
    .unwrap();
    assert!(slow_cost < 0.01, "slow process cost {slow_cost} s");
    let log = agent.stderr();
    let warned = log
        .lines()
        .find(|l| l.contains(&format!("pid {fast_pid}")) && l.contains("budget"))
        .unwrap_or_else(|| panic!("no budget warning for pid {fast_pid}:\n{log}"));
    println!(
        "fast process lost its probes after {took:?}: {warned}\nslow process: estimated {slow_cost:.6} s in probes, still probed"
    );
    agent.stop();
}
