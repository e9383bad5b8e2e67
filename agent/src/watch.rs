//! `goalloc watch`: live per-process heap, GC and goroutine figures for
//! chosen processes or for every process of one binary: the runtime's own
//! counters, read from memory; with `--exact`, the per-allocation probes too.
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
    plan::{self, PlanOptions},
    prologue::Placement,
    runtime::{RuntimeCounters, RuntimeProbe},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    ebpf::Engine,
    events::ProcessEvents,
    procfs::{self, BinaryKey, OpenExe, ProcessId},
    registry::{ProcessSnapshot, Registry, Scope},
    report::{Figures, OutputFormat, Reporter, RuntimeDelta},
    select::ExactSelection,
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
    /// Per-allocation probes too (`--exact`).
    pub exact: bool,
    pub plan: PlanOptions,
}

/// What the view remembers of a process between intervals.
struct Seen {
    since: Instant,
    /// Runtime counters when first read, and at the last interval.
    first: Option<RuntimeCounters>,
    last: Option<RuntimeCounters>,
    /// Probe counters at the last interval.
    last_probes: ProcStats,
}

impl Seen {
    fn new(now: Instant) -> Seen {
        Seen {
            since: now,
            first: None,
            last: None,
            last_probes: ProcStats::ZERO,
        }
    }

    /// The figures since the last interval; remembers these.
    fn interval(&mut self, s: &ProcessSnapshot) -> Figures {
        let runtime = match &s.runtime {
            Ok(now) => {
                let prev = self
                    .last
                    .replace(now.clone())
                    .unwrap_or_else(|| now.clone());
                self.first.get_or_insert_with(|| prev.clone());
                Ok(RuntimeDelta::between(&prev, now))
            }
            Err(u) => Err(u.detail.clone()),
        };
        let exact = s.probes.map(|p| {
            let d = diff(&p, &self.last_probes);
            self.last_probes = p;
            d
        });
        Figures { runtime, exact }
    }

    /// The figures since the process was first seen.
    fn total(&self, s: &ProcessSnapshot) -> Figures {
        let runtime = match (&s.runtime, &self.first) {
            (Ok(now), Some(first)) => Ok(RuntimeDelta::between(first, now)),
            (Ok(now), None) => Ok(RuntimeDelta::between(now, now)),
            (Err(u), _) => Err(u.detail.clone()),
        };
        Figures {
            runtime,
            exact: s.probes,
        }
    }
}

/// Reads the executable of a target and checks that what the watch needs of
/// it works, with the context a user needs in the message.
fn check_binary(path: &Path, what: &str, opts: PlanOptions, exact: bool) -> Result<String> {
    let bin = GoBinary::open(path).with_context(|| what.to_string())?;
    let runtime = RuntimeProbe::for_binary(&bin);
    let mut parts = Vec::new();
    match (&runtime, exact) {
        (Ok(_), _) => parts.push("runtime counters".to_string()),
        // Without probes the runtime counters are all there is.
        (Err(e), false) => return Err(anyhow::anyhow!("{what}: {e}")),
        (Err(e), true) => eprintln!("goalloc: {what}: no runtime counters: {e}"),
    }
    if exact {
        let plan = plan::plan(&bin, opts).with_context(|| what.to_string())?;
        let entry = plan
            .probes
            .iter()
            .filter(|p| p.placement == Placement::Entry)
            .count();
        parts.push(format!(
            "{} probes ({:?} scheme, {} at function entry)",
            plan.probes.len(),
            plan.scheme,
            entry
        ));
    }
    Ok(format!(
        "{} of {} ({})",
        parts.join(" and "),
        procfs::exe_target_of(path).display(),
        bin.build_info().go_version
    ))
}

/// Checks every target before touching the kernel, so bad input fails with
/// a message naming it. Returns the registry scope and what will be read.
pub fn resolve(target: &Target, opts: PlanOptions, exact: bool) -> Result<(Scope, Vec<String>)> {
    let mut checked: HashMap<BinaryKey, String> = HashMap::new();
    match target {
        Target::Pids(pids) => {
            for &pid in pids {
                ProcessId::of(pid)?;
                let comm = procfs::comm(pid)?;
                let exe = procfs::open_exe(pid)?;
                let key = BinaryKey::of_file(exe.file())
                    .with_context(|| format!("pid {pid}: reading its executable"))?;
                if let std::collections::hash_map::Entry::Vacant(slot) = checked.entry(key) {
                    let what = format!("pid {pid} ({comm})");
                    slot.insert(check_binary(exe.path(), &what, opts, exact)?);
                }
            }
            let pids: HashSet<u32> = pids.iter().copied().collect();
            Ok((Scope::Pids(pids), checked.into_values().collect()))
        }
        Target::Binary(path) => {
            let what = path.display().to_string();
            let exe = OpenExe::open(path).with_context(|| what.clone())?;
            let key = BinaryKey::of_file(exe.file()).with_context(|| what.clone())?;
            let described = check_binary(exe.path(), &what, opts, exact)?;
            Ok((Scope::Binary(key), vec![described]))
        }
    }
}

pub async fn run(opts: WatchOptions, out: impl Write) -> Result<()> {
    let mut reporter = Reporter::new(opts.output, opts.exact, out);
    let (scope, described) = resolve(&opts.target, opts.plan, opts.exact)?;
    let by_pid = matches!(scope, Scope::Pids(_));
    let mut engine = Engine::load()?;
    let mut events = ProcessEvents::start(&mut engine)?;
    let exact = if opts.exact {
        ExactSelection::all()
    } else {
        ExactSelection::none()
    };
    // No grace: nothing restarts under watch, and its probes go when it ends.
    let mut registry = Registry::new(engine, opts.plan, scope, exact, Duration::ZERO);
    registry.sweep()?;
    for d in described {
        eprintln!("goalloc: reading {d}");
    }

    // The first read of each process is the baseline of its first interval.
    let mut seen: HashMap<u32, Seen> = HashMap::new();
    let start = Instant::now();
    for s in registry.snapshot()? {
        seen.entry(s.info.pid)
            .or_insert_with(|| Seen::new(start))
            .interval(&s);
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
            let figures = seen
                .entry(s.info.pid)
                .or_insert_with(|| Seen::new(now))
                .interval(&s);
            reporter.interval(&s.info, &figures, seconds)?;
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
        let w = seen
            .entry(s.info.pid)
            .or_insert_with(|| Seen::new(Instant::now()));
        w.interval(&s);
        let figures = w.total(&s);
        let since = w.since.elapsed().as_secs_f64();
        reporter.total(&s.info, &figures, since, false)?;
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
    let (figures, seconds) = match seen.remove(&s.info.pid) {
        Some(w) => (w.total(s), w.since.elapsed().as_secs_f64()),
        None => (Seen::new(Instant::now()).total(s), interval),
    };
    reporter.total(&s.info, &figures, seconds, true)
}

/// `a - b`, field by field (counters only grow).
pub fn diff(a: &ProcStats, b: &ProcStats) -> ProcStats {
    let mut d = ProcStats {
        allocs: a.allocs.wrapping_sub(b.allocs),
        bytes: a.bytes.wrapping_sub(b.bytes),
        goroutines_created: a.goroutines_created.wrapping_sub(b.goroutines_created),
        goroutines_exited: a.goroutines_exited.wrapping_sub(b.goroutines_exited),
        hits: a.hits.wrapping_sub(b.hits),
        stepped_hits: a.stepped_hits.wrapping_sub(b.stepped_hits),
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
