//! `goalloc watch`: live per-process allocation and goroutine rates for
//! chosen processes or for every process of one binary.
//!
//! The same registry as the node agent finds and follows the processes
//! (exec/exit events and a /proc sweep per interval); this view prints their
//! figures per interval and their totals when they exit or watch stops.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_common::ProcStats;
use anyhow::{Context, Result, bail};
use gobinary::{
    GoBinary,
    plan::{self, PlanOptions, ProbePlan},
    prologue::Placement,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    ebpf::{Engine, EngineOptions},
    events::ProcessEvents,
    procfs::{self, BinaryKey, OpenExe, ProcessId},
    registry::{ProcessSnapshot, Registry, Scope},
    report::{OutputFormat, Reporter},
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

/// What the view remembers of a process between intervals.
struct Seen {
    since: Instant,
    last: ProcStats,
}

/// Reads and plans a binary, with the context a user needs in the message.
fn plan_binary(path: &Path, what: &str, opts: PlanOptions) -> Result<ProbePlan> {
    let bin = GoBinary::open(path).with_context(|| what.to_string())?;
    plan::plan(&bin, opts).with_context(|| what.to_string())
}

fn describe(exe: &OpenExe, plan: &ProbePlan) -> String {
    let entry = plan
        .probes
        .iter()
        .filter(|p| p.placement == Placement::Entry)
        .count();
    format!(
        "{} probes in {} ({}, {:?} scheme, {} at function entry)",
        plan.probes.len(),
        procfs::exe_target_of(exe.path()).display(),
        plan.go_version,
        plan.scheme,
        entry,
    )
}

/// Checks every target before touching the kernel, so bad input fails with
/// a message naming it. Returns the registry scope and what will be probed.
fn resolve(target: &Target, opts: PlanOptions) -> Result<(Scope, Vec<String>)> {
    let mut planned: HashMap<BinaryKey, String> = HashMap::new();
    match target {
        Target::Pids(pids) => {
            for &pid in pids {
                ProcessId::of(pid)?;
                let comm = procfs::comm(pid)?;
                let exe = procfs::open_exe(pid)?;
                let key = BinaryKey::of_file(exe.file())
                    .with_context(|| format!("pid {pid}: reading its executable"))?;
                if let std::collections::hash_map::Entry::Vacant(slot) = planned.entry(key) {
                    let plan = plan_binary(exe.path(), &format!("pid {pid} ({comm})"), opts)?;
                    slot.insert(describe(&exe, &plan));
                }
            }
            let pids: HashSet<u32> = pids.iter().copied().collect();
            Ok((Scope::Pids(pids), planned.into_values().collect()))
        }
        Target::Binary(path) => {
            let what = path.display().to_string();
            let exe = OpenExe::open(path).with_context(|| what.clone())?;
            let key = BinaryKey::of_file(exe.file()).with_context(|| what.clone())?;
            let plan = plan_binary(exe.path(), &what, opts)?;
            Ok((Scope::Binary(key), vec![describe(&exe, &plan)]))
        }
    }
}

pub async fn run(opts: WatchOptions, out: impl Write) -> Result<()> {
    let mut reporter = Reporter::new(opts.output, out);
    let (scope, described) = resolve(&opts.target, opts.plan)?;
    let by_pid = matches!(scope, Scope::Pids(_));
    let mut engine = Engine::load(EngineOptions {
        filter_by_pid: by_pid,
    })?;
    let mut events = ProcessEvents::start(&mut engine)?;
    // No grace: nothing restarts under watch, and its probes go when it ends.
    let mut registry = Registry::new(engine, opts.plan, scope, Duration::ZERO);
    registry.sweep()?;
    for d in described {
        eprintln!("goalloc: attached {d}");
    }

    let mut seen: HashMap<u32, Seen> = HashMap::new();
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
            batch = events.next_batch() => {
                for ev in batch.context("reading process events")? {
                    registry.on_event(&ev)?;
                }
                continue;
            }
            _ = ticker.tick() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = until_deadline => break,
        }
        let now = Instant::now();
        let seconds = now.duration_since(last_tick).as_secs_f64();
        last_tick = now;

        registry.sweep()?;
        for s in registry.snapshot()? {
            let current = s.probes.unwrap_or(ProcStats::ZERO);
            let w = seen.entry(s.info.pid).or_insert(Seen {
                since: now,
                last: ProcStats::ZERO,
            });
            let delta = diff(&current, &w.last);
            w.last = current;
            reporter.interval(&s.info, &delta, seconds)?;
        }
        for s in registry.take_exited() {
            report_exited(&mut reporter, &mut seen, &s, seconds)?;
        }
        if by_pid && registry.is_empty() {
            return Ok(());
        }
    }

    for s in registry.take_exited() {
        report_exited(&mut reporter, &mut seen, &s, 0.0)?;
    }
    for s in registry.snapshot()? {
        let since = seen
            .get(&s.info.pid)
            .map_or(0.0, |w| w.since.elapsed().as_secs_f64());
        reporter.total(&s.info, &s.probes.unwrap_or(ProcStats::ZERO), since, false)?;
    }
    Ok(())
}

/// Reports the totals of a process that exited; one never seen in an
/// interval lived within the last one.
fn report_exited(
    reporter: &mut Reporter<impl Write>,
    seen: &mut HashMap<u32, Seen>,
    s: &ProcessSnapshot,
    interval: f64,
) -> std::io::Result<()> {
    let seconds = seen
        .remove(&s.info.pid)
        .map_or(interval, |w| w.since.elapsed().as_secs_f64());
    reporter.total(&s.info, &s.probes.unwrap_or(ProcStats::ZERO), seconds, true)
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
