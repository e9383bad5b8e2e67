//! `goalloc watch`: live per-process allocation and goroutine rates for
//! chosen processes or for every process of one binary.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_common::ProcStats;
use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use gobinary::{
    binary::GoBinary,
    plan::{self, PlanOptions, ProbePlan},
};

use crate::{
    ebpf::{Engine, EngineOptions},
    procfs::{self, BinaryKey, OpenExe, ProcessId},
    report::{OutputFormat, ProcessInfo, Reporter},
};

#[derive(Debug, Clone)]
pub enum Target {
    Pids(Vec<u32>),
    Binary(PathBuf),
}

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub target: Target,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub output: OutputFormat,
    pub plan: PlanOptions,
}

struct Watched {
    id: ProcessId,
    info: ProcessInfo,
    since: Instant,
    last: ProcStats,
}

/// Reads and plans a binary, with the context a user needs in the message.
fn plan_binary(path: &Path, what: &str, opts: PlanOptions) -> Result<ProbePlan> {
    let bin = GoBinary::open(path).with_context(|| what.to_string())?;
    plan::plan(&bin, opts).with_context(|| what.to_string())
}

pub async fn run(opts: WatchOptions, out: impl Write) -> Result<()> {
    let mut reporter = Reporter::new(opts.output, out);
    // Plan everything before loading: bad input fails before touching the kernel.
    // Each executable is opened once and used through that descriptor.
    let mut binaries: BTreeMap<BinaryKey, (OpenExe, ProbePlan)> = BTreeMap::new();
    let mut watched: HashMap<u32, Watched> = HashMap::new();
    let binary_version;
    match &opts.target {
        Target::Pids(pids) => {
            binary_version = None;
            for &pid in pids {
                let id = ProcessId::of(pid)?;
                let comm = procfs::comm(pid)?;
                let exe = procfs::open_exe(pid)?;
                let key = BinaryKey::of_file(exe.file())
                    .with_context(|| format!("pid {pid}: reading its executable"))?;
                let what = format!("pid {pid} ({comm})");
                if let std::collections::btree_map::Entry::Vacant(slot) = binaries.entry(key) {
                    let plan = plan_binary(exe.path(), &what, opts.plan)?;
                    slot.insert((exe, plan));
                }
                let go_version = binaries[&key].1.go_version.clone();
                watched.insert(
                    pid,
                    Watched {
                        id,
                        info: ProcessInfo {
                            pid,
                            comm,
                            go_version,
                        },
                        since: Instant::now(),
                        last: ProcStats::ZERO,
                    },
                );
            }
        }
        Target::Binary(path) => {
            let what = path.display().to_string();
            let exe = OpenExe::open(path).with_context(|| what.clone())?;
            let key = BinaryKey::of_file(exe.file()).with_context(|| what.clone())?;
            let plan = plan_binary(exe.path(), &what, opts.plan)?;
            binary_version = Some(plan.go_version.clone());
            binaries.insert(key, (exe, plan));
        }
    }

    let filter_by_pid = matches!(opts.target, Target::Pids(_));
    let mut engine = Engine::load(EngineOptions { filter_by_pid })?;
    for pid in watched.keys() {
        engine.watch_pid(*pid)?;
    }
    for (key, (exe, plan)) in &binaries {
        let summary = engine.attach(*key, exe.path(), plan)?;
        let entry = plan
            .probes
            .iter()
            .filter(|p| p.placement == gobinary::prologue::Placement::Entry)
            .count();
        eprintln!(
            "goalloc: attached {} probes to {} ({}, {:?} scheme, {} at function entry)",
            summary.probes,
            procfs::exe_target_of(exe.path()).display(),
            plan.go_version,
            plan.scheme,
            entry,
        );
    }
    // Processes may have exited while we attached.
    for w in watched.values_mut() {
        w.since = Instant::now();
    }

    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + opts.interval, opts.interval);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut last_tick = Instant::now();
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = until_deadline => break,
        }
        let now = Instant::now();
        let seconds = now.duration_since(last_tick).as_secs_f64();
        last_tick = now;

        if let Some(version) = &binary_version {
            for (pid, total) in discover(&engine, &mut watched, version)? {
                let info = ProcessInfo {
                    pid,
                    comm: "?".into(),
                    go_version: version.clone(),
                };
                reporter.total(&info, &total, seconds, true)?;
                // Also frees the slot before the PID can be reused.
                engine.forget_process(pid)?;
            }
        }
        let mut pids: Vec<u32> = watched.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            let w = watched.get_mut(&pid).expect("listed above");
            let alive = w.id.is_alive();
            let current = engine.stats(pid)?.unwrap_or(ProcStats::ZERO);
            let delta = diff(&current, &w.last);
            w.last = current;
            if alive {
                reporter.interval(&w.info, &delta, seconds)?;
            } else {
                reporter.total(&w.info, &current, w.since.elapsed().as_secs_f64(), true)?;
                engine.forget_process(pid)?;
                watched.remove(&pid);
            }
        }
        if filter_by_pid && watched.is_empty() {
            return Ok(());
        }
    }

    let mut pids: Vec<u32> = watched.keys().copied().collect();
    pids.sort_unstable();
    for pid in pids {
        let w = &watched[&pid];
        let current = engine.stats(pid)?.unwrap_or(ProcStats::ZERO);
        reporter.total(
            &w.info,
            &current,
            w.since.elapsed().as_secs_f64(),
            !w.id.is_alive(),
        )?;
    }
    Ok(())
}

/// Starts reporting processes of the watched binary that showed up in the
/// kernel map since the last tick. Returns those that also exited since:
/// their counts are final and they are reported once, as totals.
fn discover(
    engine: &Engine,
    watched: &mut HashMap<u32, Watched>,
    go_version: &str,
) -> Result<Vec<(u32, ProcStats)>> {
    let mut gone = Vec::new();
    for (pid, stats) in engine.all_stats()? {
        if watched.contains_key(&pid) {
            continue;
        }
        let Ok(id) = ProcessId::of(pid) else {
            gone.push((pid, stats));
            continue;
        };
        let comm = procfs::comm(pid).unwrap_or_default();
        watched.insert(
            pid,
            Watched {
                id,
                info: ProcessInfo {
                    pid,
                    comm,
                    go_version: go_version.to_string(),
                },
                since: Instant::now(),
                last: ProcStats::ZERO,
            },
        );
    }
    Ok(gone)
}

/// `a - b`, field by field (counters only grow).
pub fn diff(a: &ProcStats, b: &ProcStats) -> ProcStats {
    let mut d = ProcStats {
        allocs: a.allocs.wrapping_sub(b.allocs),
        bytes: a.bytes.wrapping_sub(b.bytes),
        goroutines_created: a.goroutines_created.wrapping_sub(b.goroutines_created),
        goroutines_exited: a.goroutines_exited.wrapping_sub(b.goroutines_exited),
        size_hist: a.size_hist,
    };
    for (x, y) in d.size_hist.iter_mut().zip(b.size_hist.iter()) {
        *x = x.wrapping_sub(*y);
    }
    d
}

/// Checks the `--pid`/`--binary` choice (clap enforces exclusivity).
pub fn target_from(pids: Vec<u32>, binary: Option<PathBuf>) -> Result<Target> {
    match (pids.is_empty(), binary) {
        (false, None) => Ok(Target::Pids(pids)),
        (true, Some(b)) => Ok(Target::Binary(b)),
        (true, None) => bail!("nothing to watch: give --pid PID (repeatable) or --binary PATH"),
        (false, Some(_)) => bail!("give either --pid or --binary, not both"),
    }
}
