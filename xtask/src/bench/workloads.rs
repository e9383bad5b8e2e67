//! `cargo xtask bench --only workloads`: two real programs nobody here wrote,
//! each bare, under `goalloc agent` (default: runtime counters, no probe),
//! under `goalloc agent --exact-for all`, and under the seed's bpftrace
//! one-liner on `runtime.mallocgc` (issue 8). Goals: the default agent within
//! noise of bare (<= 1.02x build time, >= 0.98x requests/s).
//!
//! 1. The Go 1.27 toolchain building `cmd/gofmt` from a cold build cache (a
//!    fresh `GOCACHE` per run, a scrubbed environment): wall time.
//! 2. Debian's `prometheus-node-exporter` (Go 1.19, stripped) with its default
//!    collectors on a free loopback port, under `wrk` after a warm-up:
//!    requests/s. bpftrace cannot resolve `runtime.mallocgc` in a stripped
//!    binary: the table says so instead of a number.
//!
//! The runs go in rounds (bare, agent, exact, bpftrace, then again), so a
//! change of load on the machine touches every setup alike; the median of
//! the rounds is shown. A fresh agent (or bpftrace) per run, scraped every
//! `scrape_every` as Prometheus would: the default source reads the processes
//! at scrape time, so an agent nobody scrapes would flatter it.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Agent, Guard, Lines, TempDir, free_addr, has_symtab, median, wait_http_ok};
use crate::setup::go_bin;
use crate::util::{Ctx, output, show};

/// The toolchain of workload 1.
const GO_VERSION: &str = "1.27.3";
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const WRK: &str = "/usr/bin/wrk";
const BPFTRACE: &str = "/usr/bin/bpftrace";

pub struct Options {
    /// Rounds (one run of each setup per round); the median is shown.
    pub repeat: usize,
    /// Rounds with bpftrace (each of its gofmt builds takes minutes).
    pub bpftrace_repeat: usize,
    /// Length of the measured wrk run.
    pub wrk_duration: Duration,
    /// wrk before the measured run: connections open, probes in place.
    pub warmup: Duration,
    /// wrk threads and connections.
    pub wrk_threads: u32,
    pub wrk_connections: u32,
    /// How often the agent's /metrics is scraped during a run.
    pub scrape_every: Duration,
    /// `--exact-for` selectors of the exact setup (default `all`).
    pub exact_for: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Bare,
    Agent,
    Exact,
    Bpftrace,
}

const SETUPS: [Setup; 4] = [Setup::Bare, Setup::Agent, Setup::Exact, Setup::Bpftrace];

/// One workload: how to run it once, and how to read its figure.
trait Workload {
    fn name(&self) -> String;
    /// "wall s" or "req/s".
    fn unit(&self) -> &'static str;
    /// The goal of the default agent, as a ratio to bare.
    fn goal(&self) -> &'static str;
    /// The binaries bpftrace would probe, or why it cannot.
    fn bpftrace_targets(&self) -> Result<Vec<PathBuf>, String>;
    /// Runs the workload once (the observer, if any, is already running).
    fn run_once(&self) -> Result<f64>;
}

pub fn run(ctx: &Ctx, goalloc: &Path, opts: &Options) -> Result<String> {
    for tool in [NODE_EXPORTER, WRK, BPFTRACE] {
        if !Path::new(tool).is_file() {
            bail!("{tool} is missing (run `cargo xtask setup`)");
        }
    }
    let gofmt = GofmtBuild {
        go: go_bin(ctx, GO_VERSION),
    };
    if !gofmt.go.is_file() {
        bail!(
            "{} is missing (run `cargo xtask setup`)",
            gofmt.go.display()
        );
    }
    let exporter = NodeExporter {
        version: output(Command::new(NODE_EXPORTER).arg("--version"))
            .ok()
            .and_then(|v| v.split_whitespace().nth(2).map(str::to_string))
            .unwrap_or_default(),
        duration: opts.wrk_duration,
        warmup: opts.warmup,
        threads: opts.wrk_threads,
        connections: opts.wrk_connections,
    };
    let workloads: [&dyn Workload; 2] = [&gofmt, &exporter];

    let mut t = String::new();
    let _ = writeln!(
        t,
        "== workloads: bare vs goalloc agent vs --exact-for {} vs bpftrace (issue 8) ==",
        opts.exact_for.join(",")
    );
    let _ = writeln!(
        t,
        "median of {} rounds ({} for bpftrace); agent scraped every {:?}; ratio = median / bare's median.",
        opts.repeat, opts.bpftrace_repeat, opts.scrape_every
    );
    let _ = writeln!(
        t,
        "{:<44} {:<38} {:<7} {:>9} {:>7} {:>8}  runs / note",
        "workload", "setup", "unit", "median", "ratio", "goal"
    );
    for w in workloads {
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
        let mut notes: Vec<String> = vec![String::new(); SETUPS.len()];
        let bpftrace = w.bpftrace_targets();
        if let Err(why) = &bpftrace {
            notes[3] = why.clone();
        }
        for round in 0..opts.repeat {
            for (i, &setup) in SETUPS.iter().enumerate() {
                let skip = match setup {
                    Setup::Bpftrace => bpftrace.is_err() || round >= opts.bpftrace_repeat,
                    _ => false,
                };
                // A setup that failed once is not retried: its note says why.
                if skip || notes[i].starts_with("error") {
                    continue;
                }
                println!(
                    "bench: workloads: {} / {} (round {})",
                    w.name(),
                    setup_name(setup, opts),
                    round + 1
                );
                let targets = bpftrace.as_deref().unwrap_or_default();
                match observe(goalloc, setup, opts, targets, || w.run_once()) {
                    Ok((value, note)) => {
                        runs[i].push(value);
                        if !note.is_empty() {
                            notes[i] = note;
                        }
                    }
                    Err(e) => {
                        eprintln!("bench: {} / {}: {e:#}", w.name(), setup_name(setup, opts));
                        notes[i] =
                            format!("error: {}", super::probes::first_line(&format!("{e:#}")));
                    }
                }
            }
        }
        let bare = median(runs[0].iter().copied());
        for (i, &setup) in SETUPS.iter().enumerate() {
            let m = median(runs[i].iter().copied());
            let workload = if i == 0 { w.name() } else { String::new() };
            let (value, ratio) = if runs[i].is_empty() {
                ("-".to_string(), "-".to_string())
            } else {
                (format!("{m:.2}"), format!("{:.3}", m / bare))
            };
            let goal = match setup {
                Setup::Agent => w.goal(),
                _ => "-",
            };
            let list: Vec<String> = runs[i].iter().map(|v| format!("{v:.2}")).collect();
            let _ = writeln!(
                t,
                "{:<44} {:<38} {:<7} {:>9} {:>7} {:>8}  {}{}{}",
                workload,
                setup_name(setup, opts),
                w.unit(),
                value,
                ratio,
                goal,
                list.join(" "),
                if list.is_empty() || notes[i].is_empty() {
                    ""
                } else {
                    "; "
                },
                notes[i]
            );
        }
    }
    Ok(t)
}

fn setup_name(setup: Setup, opts: &Options) -> String {
    match setup {
        Setup::Bare => "bare".into(),
        Setup::Agent => "goalloc agent (default, no probes)".into(),
        Setup::Exact => format!(
            "goalloc agent --exact-for {}",
            opts.exact_for.join(" --exact-for ")
        ),
        Setup::Bpftrace => "bpftrace uprobe runtime.mallocgc".into(),
    }
}

/// Runs `work` under the observer of `setup`; returns its figure and a note.
fn observe(
    goalloc: &Path,
    setup: Setup,
    opts: &Options,
    bpftrace_targets: &[PathBuf],
    work: impl FnOnce() -> Result<f64>,
) -> Result<(f64, String)> {
    match setup {
        Setup::Bare => Ok((work()?, String::new())),
        Setup::Agent | Setup::Exact => {
            let args: Vec<String> = if setup == Setup::Exact {
                // Probes on everything chosen for the whole run: the cost
                // guard would take them off the busiest processes and
                // hide the very cost measured here.
                opts.exact_for
                    .iter()
                    .flat_map(|s| ["--exact-for".to_string(), s.clone()])
                    .chain(["--exact-budget".to_string(), "1".to_string()])
                    .collect()
            } else {
                Vec::new()
            };
            let mut agent = Agent::start(goalloc, &args)?;
            agent.scrape_every(opts.scrape_every);
            let value = work();
            let rss = super::proc_status_kib(agent.pid(), "VmHWM").unwrap_or(0);
            agent.stop()?;
            let value = value.with_context(|| agent.stderr_tail(10))?;
            Ok((value, format!("agent peak RSS {} MiB", rss / 1024)))
        }
        Setup::Bpftrace => {
            let mut tracer = Bpftrace::start(bpftrace_targets)?;
            let value = work();
            let hits = tracer.stop()?;
            Ok((value?, format!("{hits} probe hits")))
        }
    }
}

/// The seed's one-liner: `uprobe:BINARY:runtime.mallocgc { @[comm] = count(); }`,
/// on every binary of the workload at once.
struct Bpftrace {
    guard: Guard,
    stdout: Lines,
}

impl Bpftrace {
    fn start(targets: &[PathBuf]) -> Result<Bpftrace> {
        let probes: Vec<String> = targets
            .iter()
            .map(|t| format!("uprobe:{}:runtime.mallocgc", t.display()))
            .collect();
        // BEGIN fires once every probe is attached: "ready" means measuring.
        let program = format!(
            "BEGIN {{ printf(\"ready\\n\"); }} {} {{ @[comm] = count(); }}",
            probes.join(",")
        );
        let mut cmd = Command::new(BPFTRACE);
        cmd.args(["-B", "line", "-e", &program])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", show(&cmd)))?;
        let stderr = Lines::collect(child.stderr.take().expect("piped"));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stdout.take().expect("piped");
        let stdout = Lines::default();
        let sink = stdout.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line == "ready" {
                    let _ = tx.send(());
                }
                sink.0.lock().expect("not poisoned").push(line);
            }
        });
        let mut guard = Guard::new(child, "bpftrace".into(), Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
            if let Some(status) = guard.child.try_wait()? {
                bail!("bpftrace exited ({status}): {}", stderr.tail(5));
            }
            if Instant::now() > deadline {
                bail!("bpftrace did not start within 60 s: {}", stderr.tail(5));
            }
        }
        Ok(Bpftrace { guard, stdout })
    }

    /// Stops it (it prints its map on SIGINT); the sum of its counts.
    fn stop(&mut self) -> Result<u64> {
        self.guard.stop()?;
        // The reader thread ends at EOF, right after the exit.
        thread::sleep(Duration::from_millis(100));
        Ok(self
            .stdout
            .snapshot()
            .iter()
            .filter(|l| l.starts_with("@["))
            .filter_map(|l| l.rsplit(':').next()?.trim().parse::<u64>().ok())
            .sum())
    }
}

/// Workload 1: `go build -o OUT cmd/gofmt` with a cold cache.
struct GofmtBuild {
    go: PathBuf,
}

impl Workload for GofmtBuild {
    fn name(&self) -> String {
        format!("go {GO_VERSION} build cmd/gofmt, cold GOCACHE")
    }
    fn unit(&self) -> &'static str {
        "wall s"
    }
    fn goal(&self) -> &'static str {
        "<= 1.02"
    }

    /// `go` and the tools it runs (they allocate, as the build does).
    fn bpftrace_targets(&self) -> Result<Vec<PathBuf>, String> {
        let goroot = self.go.parent().and_then(Path::parent).ok_or("no GOROOT")?;
        let tools = goroot.join("pkg").join("tool").join("linux_amd64");
        let mut targets = vec![self.go.clone()];
        targets.extend(["compile", "asm", "link"].map(|t| tools.join(t)));
        for t in &targets {
            if !has_symtab(t).map_err(|e| e.to_string())? {
                return Err(format!("cannot attach ({} stripped)", t.display()));
            }
        }
        Ok(targets)
    }

    fn run_once(&self) -> Result<f64> {
        let tmp = TempDir::new("goalloc-bench-gofmt")?;
        let mut cmd = Command::new(&self.go);
        // Nothing of the caller's Go set-up: GOFLAGS, GOROOT, GOPATH... and a
        // cache nobody has filled.
        cmd.env_clear()
            .current_dir(&tmp.0)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &tmp.0)
            .env("GOCACHE", tmp.0.join("gocache"))
            .env("GOPATH", tmp.0.join("gopath"))
            .env("GOTOOLCHAIN", "local")
            .env("GOENV", "off")
            .env("GOFLAGS", "")
            .env("GOWORK", "off")
            .env("GOPROXY", "off")
            .args(["build", "-o"])
            .arg(tmp.0.join("gofmt"))
            .arg("cmd/gofmt")
            .stdin(Stdio::null());
        let start = Instant::now();
        output(&mut cmd)?;
        Ok(start.elapsed().as_secs_f64())
    }
}

/// Workload 2: node-exporter serving /metrics to wrk.
struct NodeExporter {
    version: String,
    duration: Duration,
    warmup: Duration,
    threads: u32,
    connections: u32,
}

impl Workload for NodeExporter {
    fn name(&self) -> String {
        format!("node-exporter {} (Go 1.19, stripped) + wrk", self.version)
    }
    fn unit(&self) -> &'static str {
        "req/s"
    }
    fn goal(&self) -> &'static str {
        ">= 0.98"
    }

    fn bpftrace_targets(&self) -> Result<Vec<PathBuf>, String> {
        let bin = Path::new(NODE_EXPORTER);
        match has_symtab(bin) {
            Ok(true) => Ok(vec![bin.to_path_buf()]),
            Ok(false) => Err("cannot attach (stripped)".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn run_once(&self) -> Result<f64> {
        let addr = free_addr()?;
        let mut cmd = Command::new(NODE_EXPORTER);
        cmd.arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", show(&cmd)))?;
        let stderr = Lines::collect(child.stderr.take().expect("piped"));
        let mut exporter = Guard::new(child, "node-exporter".into(), Duration::from_secs(10));
        wait_http_ok(
            &mut exporter.child,
            addr,
            "/metrics",
            Duration::from_secs(30),
        )
        .with_context(|| stderr.tail(5))?;
        let url = format!("http://{addr}/metrics");
        if !self.warmup.is_zero() {
            self.wrk(&url, self.warmup)?;
        }
        let (rps, errors) = self.wrk(&url, self.duration)?;
        exporter.stop()?;
        if let Some(errors) = errors {
            eprintln!("bench: wrk reported: {errors}");
        }
        Ok(rps)
    }
}

impl NodeExporter {
    /// One wrk run: requests/s, and its error lines if any.
    fn wrk(&self, url: &str, duration: Duration) -> Result<(f64, Option<String>)> {
        let out = output(
            Command::new(WRK)
                .arg(format!("-t{}", self.threads))
                .arg(format!("-c{}", self.connections))
                .arg(format!("-d{}s", duration.as_secs().max(1)))
                .arg(url),
        )?;
        let rps = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
        let errors: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
            .map(str::trim)
            .collect();
        Ok((rps, (!errors.is_empty()).then(|| errors.join("; "))))
    }
}
