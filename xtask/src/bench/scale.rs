//! `cargo xtask bench --only scale`: the agent's scrape time and memory with
//! many Go processes running (issue 8's goals: a /metrics scrape < 100 ms and
//! an agent RSS < 64 MiB with 200 processes).
//!
//! The processes are tests/go/idle (a few small allocations a second, like a
//! service between requests), built by every Go of the matrix and started in
//! turn, so the agent meets as many executables as versions: each binary is
//! analysed once, each process read at every scrape. The agent runs with its
//! defaults (runtime counters, no probe); the first scrape is shown apart
//! (it is the first read of every process), then the median of the others.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Agent, median, proc_status_kib};
use crate::fixtures;
use crate::util::{Ctx, show};

pub struct Options {
    /// Go processes to run.
    pub processes: usize,
    /// Scrapes after the first; the median time is shown.
    pub scrapes: usize,
    /// Allocations per second of each idle process.
    pub rate: u32,
}

/// The idle processes; closing their stdin (drop) ends them.
struct Idle {
    children: Vec<(Child, Option<ChildStdin>)>,
}

impl Idle {
    fn start(bins: &[PathBuf], count: usize, rate: u32) -> Result<Idle> {
        let mut idle = Idle {
            children: Vec::new(),
        };
        for i in 0..count {
            let bin = &bins[i % bins.len()];
            let mut cmd = Command::new(bin);
            cmd.arg(format!("-rate={rate}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting `{}`", show(&cmd)))?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take().expect("piped");
            idle.children.push((child, stdin));
            // "ready": its runtime is up, so the agent sees a Go process.
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            if line.trim() != "ready" {
                bail!("`{}` printed {line:?} instead of \"ready\"", show(&cmd));
            }
        }
        Ok(idle)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(c, _)| c.id()).collect()
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        for (_, stdin) in &mut self.children {
            drop(stdin.take());
        }
        for (child, _) in &mut self.children {
            // An idle process exits at EOF; one that does not is killed.
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(ctx: &Ctx, goalloc: &Path, opts: &Options) -> Result<String> {
    let mut bins = Vec::new();
    for v in fixtures::matrix(ctx)?
        .iter()
        .filter(|v| v.flavour.name == "default")
    {
        bins.push(fixtures::build(ctx, v, "idle")?.0);
    }
    if bins.is_empty() {
        bail!("no Go variant to build tests/go/idle with");
    }

    println!(
        "bench: scale: starting {} idle Go processes ({} executables)",
        opts.processes,
        bins.len()
    );
    let t0 = Instant::now();
    let idle = Idle::start(&bins, opts.processes, opts.rate)?;
    let started = t0.elapsed();
    let pids = idle.pids();

    println!("bench: scale: starting goalloc agent");
    let t0 = Instant::now();
    let mut agent = Agent::start(goalloc, &[])?;
    let ready = t0.elapsed();

    let (first, body) = agent.scrape()?;
    let rss_first = proc_status_kib(agent.pid(), "VmRSS")?;
    let mut times = Vec::new();
    let mut last_body = body.clone();
    for _ in 0..opts.scrapes {
        // Scrapes are seconds apart in real life: counters move in between.
        thread::sleep(Duration::from_secs(1));
        let (took, body) = agent.scrape()?;
        times.push(took.as_secs_f64() * 1000.0);
        last_body = body;
    }
    let rss = proc_status_kib(agent.pid(), "VmRSS")?;
    let hwm = proc_status_kib(agent.pid(), "VmHWM")?;
    let tracking = agent
        .stderr_tail(50)
        .lines()
        .rfind(|l| l.contains("tracking"))
        .unwrap_or_default()
        .trim()
        .to_string();
    agent.stop()?;
    drop(idle);

    // How many of ours the scrape exported a series for (other Go processes
    // of the machine are there too, and read as well).
    let ours = pids
        .iter()
        .filter(|pid| {
            let label = format!("pid=\"{pid}\"");
            last_body
                .lines()
                .any(|l| l.starts_with("goalloc_goroutines") && l.contains(&label))
        })
        .count();
    let all_processes = last_body
        .lines()
        .filter(|l| l.starts_with("goalloc_goroutines{"))
        .count();

    let mut t = String::new();
    let _ = writeln!(
        t,
        "== scale: goalloc agent (default) with {} idle Go processes (issue 8) ==",
        opts.processes
    );
    let _ = writeln!(
        t,
        "{} executables (every Go of the matrix), {} allocs/s each; started in {:.1} s; agent ready in {:.1} s.",
        bins.len(),
        opts.rate,
        started.as_secs_f64(),
        ready.as_secs_f64()
    );
    let _ = writeln!(t, "{:<40} {:>10} {:>10}  note", "figure", "value", "goal");
    let median_ms = median(times.iter().copied());
    let max_ms = times.iter().copied().fold(f64::NAN, f64::max);
    let rows = [
        (
            "scrape time, first (ms)".to_string(),
            format!("{:.1}", first.as_secs_f64() * 1000.0),
            "-",
            format!("{} bytes", body.len()),
        ),
        (
            format!("scrape time, median of {} (ms)", times.len()),
            format!("{median_ms:.1}"),
            "< 100",
            format!("max {max_ms:.1} ms; {} bytes", last_body.len()),
        ),
        (
            "agent VmRSS after the scrapes (MiB)".to_string(),
            format!("{:.1}", rss as f64 / 1024.0),
            "< 64",
            format!(
                "after the first scrape {:.1} MiB; peak (VmHWM) {:.1} MiB",
                rss_first as f64 / 1024.0,
                hwm as f64 / 1024.0
            ),
        ),
        (
            "our processes in /metrics".to_string(),
            format!("{ours}"),
            "all",
            format!(
                "of {}; {all_processes} Go processes exported in all; agent: {tracking}",
                opts.processes
            ),
        ),
    ];
    for (figure, value, goal, note) in rows {
        let _ = writeln!(t, "{figure:<40} {value:>10} {goal:>10}  {note}");
    }
    Ok(t)
}
