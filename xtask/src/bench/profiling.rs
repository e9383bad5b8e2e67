//! `cargo xtask bench --only profiling`: ns added per allocation by `goalloc
//! profile` at its default rate against the exact probes without profiling,
//! on Go 1.21 and Go 1.27 (issue 10's goal: profiling adds at most 1.1x what
//! the exact probes add). A denser rate is shown too, to see where the cost
//! of taking samples starts to show.
//!
//! Each measurement runs tests/go/bench: bare, then with `-wait -hold` under
//! `goalloc watch --pid P --exact`, under `goalloc profile --pid P --rate
//! 512KiB` and under `--rate 4KiB`. A probed process starts its loop only once
//! goalloc is ready for it (watch: a row with probe figures for its pid;
//! profile: its `sampling every` line), and goalloc is stopped with SIGINT
//! after the process printed its result, while it is still held alive. A
//! profile must then be a non-empty gzip file with samples, and the exact
//! total must cover the loop, or the row is marked failed. The runs go in
//! rounds (bare, exact, 512KiB, 4KiB, then again), so a change of load on the
//! machine touches every column alike; the median of the rounds is shown.
//! Numbers are printed, never asserted.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::probes::first_line;
use super::{Guard, Lines, TempDir, median};
use crate::fixtures;
use crate::util::{Ctx, show};

/// `goalloc profile`'s default `--rate` (Go's MemProfileRate).
const DEFAULT_RATE: u64 = 512 << 10;
/// A dense rate: a sample every 64 allocations of `make([]byte, 64)`.
const DENSE_RATE: u64 = 4 << 10;
/// The goal: profiling's added ns / the exact probes' added ns.
const GOAL: f64 = 1.1;
/// Longer than any run: SIGINT ends each profile.
const PROFILE_DURATION: &str = "120s";
/// watch's interval: the first row with probe figures releases the process.
const INTERVAL: &str = "250ms";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Options {
    /// Allocations per run without a probe.
    pub n: u64,
    /// Allocations per run with the probes (exact or profiling).
    pub probed_n: u64,
    /// Rounds; the median ns/alloc of each column is shown.
    pub repeat: usize,
}

/// How a run is measured.
#[derive(Clone, Copy)]
enum Setup {
    Bare,
    /// `goalloc watch --pid P --exact`.
    Exact,
    /// `goalloc profile --pid P --rate R` (bytes).
    Profile(u64),
}

/// What one run gave.
struct Run {
    ns_per_alloc: f64,
    /// Allocations sampled (profile runs).
    sampled: Option<u64>,
}

struct Row {
    label: String,
    kind: &'static str,
    n: u64,
    probed_n: u64,
    bare: f64,
    exact: f64,
    profile: f64,
    dense: f64,
    /// Median allocations sampled per profile, at each rate.
    samples: Option<u64>,
    dense_samples: Option<u64>,
    /// Empty, or why the row has no figures.
    failed: String,
}

impl Row {
    fn added(&self, ns: f64) -> f64 {
        ns - self.bare
    }

    /// Profiling's added ns over the exact probes' added ns.
    fn ratio(&self, ns: f64) -> f64 {
        self.added(ns) / self.added(self.exact)
    }
}

pub fn run(ctx: &Ctx, goalloc: &Path, opts: &Options) -> Result<String> {
    let load_before = load_average();
    // The default build of Go 1.21 and of Go 1.27, without experiment.
    let mut variants = fixtures::matrix(ctx)?;
    variants.retain(|v| {
        v.flavour.name == "default"
            && v.goexperiment.is_none()
            && (v.go_version.starts_with("1.21.") || v.go_version.starts_with("1.27."))
    });
    if variants.is_empty() {
        bail!("the fixture matrix has no default build of Go 1.21 or Go 1.27");
    }
    let tmp = TempDir::new("goalloc-bench-profiling")?;
    let mut rows = Vec::new();
    for v in &variants {
        let bin = fixtures::build(ctx, v, "bench")?.0;
        for kind in ["make", "new"] {
            println!(
                "bench: profiling: {} kind={kind} n={}/{}",
                v.label, opts.n, opts.probed_n
            );
            let row = measure(goalloc, &bin, &v.label, kind, opts, &tmp.0).unwrap_or_else(|e| {
                eprintln!("bench: profiling: {} {kind}: {e:#}", v.label);
                Row {
                    label: v.label.clone(),
                    kind,
                    n: opts.n,
                    probed_n: opts.probed_n,
                    bare: f64::NAN,
                    exact: f64::NAN,
                    profile: f64::NAN,
                    dense: f64::NAN,
                    samples: None,
                    dense_samples: None,
                    failed: format!("failed: {}", first_line(&format!("{e:#}"))),
                }
            });
            rows.push(row);
        }
    }
    Ok(table(&rows, opts.repeat, &load_before, &load_average()))
}

/// The rounds of one variant and kind; any failed run fails the row.
fn measure(
    goalloc: &Path,
    bin: &Path,
    label: &str,
    kind: &'static str,
    opts: &Options,
    tmp: &Path,
) -> Result<Row> {
    let setups = [
        Setup::Bare,
        Setup::Exact,
        Setup::Profile(DEFAULT_RATE),
        Setup::Profile(DENSE_RATE),
    ];
    let mut runs: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
    for _ in 0..opts.repeat {
        for (setup, runs) in setups.iter().zip(&mut runs) {
            let n = match setup {
                Setup::Bare => opts.n,
                _ => opts.probed_n,
            };
            let run = run_once(goalloc, bin, kind, n, *setup, tmp)
                .with_context(|| format!("{} run", setup_name(*setup)))?;
            runs.push(run);
        }
    }
    let ns = |i: usize| median(runs[i].iter().map(|r| r.ns_per_alloc));
    let samples = |i: usize| {
        let m = median(runs[i].iter().filter_map(|r| r.sampled).map(|s| s as f64));
        (!m.is_nan()).then_some(m as u64)
    };
    Ok(Row {
        label: label.to_string(),
        kind,
        n: opts.n,
        probed_n: opts.probed_n,
        bare: ns(0),
        exact: ns(1),
        profile: ns(2),
        dense: ns(3),
        samples: samples(2),
        dense_samples: samples(3),
        failed: String::new(),
    })
}

fn setup_name(setup: Setup) -> String {
    match setup {
        Setup::Bare => "bare".into(),
        Setup::Exact => "exact".into(),
        Setup::Profile(rate) => format!("profile --rate {}", rate_label(rate)),
    }
}

/// Runs the bench once. A probed run waits before its loop until goalloc is
/// ready for it, and is held alive after its output until goalloc stopped.
fn run_once(
    goalloc: &Path,
    bin: &Path,
    kind: &str,
    n: u64,
    setup: Setup,
    tmp: &Path,
) -> Result<Run> {
    let probed = !matches!(setup, Setup::Bare);
    let mut cmd = Command::new(bin);
    cmd.arg(format!("-n={n}"))
        .arg(format!("-kind={kind}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if probed {
        cmd.args(["-wait", "-hold"]).stdin(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null());
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", show(&cmd)))?;
    // Stopped (SIGINT) on an early return, so no process waits forever.
    let mut bench = Guard::new(child, "bench".into(), Duration::from_secs(2));
    let pid = bench.pid();
    let mut lines = BufReader::new(bench.child.stdout.take().expect("piped")).lines();

    let mut tracer = None;
    if probed {
        // "waiting": the process exists and its loop has not started.
        let waiting = lines.next().transpose()?.unwrap_or_default();
        if waiting != "waiting" {
            bail!(
                "expected \"waiting\" from `{}`, got {waiting:?}",
                show(&cmd)
            );
        }
        let t = Tracer::start(goalloc, pid, setup, tmp)?;
        writeln!(bench.child.stdin.as_mut().expect("piped"))?;
        tracer = Some(t);
    }
    let mut out = String::new();
    for line in lines.by_ref() {
        let line = line?;
        out.push_str(&line);
        out.push('\n');
        if line.starts_with("mallocs_total=") {
            break;
        }
    }
    // goalloc stops while the process is still alive (held).
    let sampled = match tracer {
        Some(t) => t.finish(n)?,
        None => None,
    };
    drop(bench.child.stdin.take()); // EOF: the held process exits now
    let status = bench.child.wait()?;
    if !status.success() {
        bail!("`{}` failed ({status}): {out}", show(&cmd));
    }
    let ns = out
        .split_whitespace()
        .find_map(|tok| tok.strip_prefix("ns_per_alloc="))
        .with_context(|| format!("bench output has no ns_per_alloc=: {out:?}"))?;
    Ok(Run {
        ns_per_alloc: ns.parse()?,
        sampled,
    })
}

/// A `goalloc watch --exact` or `goalloc profile` on one process.
struct Tracer {
    guard: Guard,
    cmd: String,
    pid: u32,
    setup: Setup,
    stdout: Lines,
    stderr: Lines,
    /// The profile file (profile runs).
    file: Option<PathBuf>,
}

impl Tracer {
    /// Starts goalloc on `pid` and waits until it is ready: the probes on,
    /// and for a profile the sampling started.
    fn start(goalloc: &Path, pid: u32, setup: Setup, tmp: &Path) -> Result<Tracer> {
        let mut cmd = Command::new(goalloc);
        let mut file = None;
        match setup {
            Setup::Bare => unreachable!("a bare run has no tracer"),
            Setup::Exact => {
                cmd.args(["watch", "--pid", &pid.to_string(), "--exact"])
                    .args(["--output", "json", "--interval", INTERVAL]);
            }
            Setup::Profile(rate) => {
                let path = tmp.join(format!("profile-{pid}-{rate}.pb.gz"));
                cmd.args(["profile", "--pid", &pid.to_string()])
                    .args(["--duration", PROFILE_DURATION])
                    .args(["--rate", &rate.to_string(), "-o"])
                    .arg(&path);
                file = Some(path);
            }
        }
        cmd.env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", show(&cmd)))?;
        let stdout = Lines::collect(child.stdout.take().expect("piped"));
        let stderr = Lines::collect(child.stderr.take().expect("piped"));
        let mut tracer = Tracer {
            guard: Guard::new(child, "goalloc".into(), STOP_GRACE),
            cmd: show(&cmd),
            pid,
            setup,
            stdout,
            stderr,
            file,
        };
        let ready = match setup {
            Setup::Exact => tracer.wait_line(true, "a row with probe figures", |v| {
                json_of(v, pid).is_some_and(|v| v["exact"].is_object())
            }),
            _ => tracer.wait_line(false, "\"goalloc: sampling every\"", |l| {
                l.starts_with("goalloc: sampling every")
            }),
        };
        ready.map(|_| tracer)
    }

    /// Polls goalloc's stdout (or stderr) until a line satisfies `pred`.
    /// goalloc exiting ends the wait a moment later (its last lines may still
    /// be on their way through the pipe).
    fn wait_line(
        &mut self,
        stdout: bool,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let mut deadline = Instant::now() + READY_TIMEOUT;
        let mut exited = None;
        loop {
            let lines = if stdout { &self.stdout } else { &self.stderr };
            if let Some(line) = lines.snapshot().into_iter().find(|l| pred(l)) {
                return Ok(line);
            }
            if exited.is_none()
                && let Some(status) = self.guard.child.try_wait()?
            {
                exited = Some(status);
                deadline = deadline.min(Instant::now() + Duration::from_secs(1));
            }
            if Instant::now() > deadline {
                let why = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => format!("not within {READY_TIMEOUT:?}"),
                };
                bail!(
                    "`{}`: no {what} ({why}); its stderr:\n{}",
                    self.cmd,
                    self.stderr.tail(20)
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGINT, then the checks that it really traced the run of `n`
    /// allocations: the allocations sampled for a profile.
    fn finish(mut self, n: u64) -> Result<Option<u64>> {
        self.guard.stop()?;
        let status = self.guard.child.wait()?;
        if !status.success() {
            bail!("`{}` failed ({status}): {}", self.cmd, self.stderr.tail(20));
        }
        let pid = self.pid;
        match self.setup {
            Setup::Bare => unreachable!("a bare run has no tracer"),
            Setup::Exact => {
                // Its total, printed on SIGINT: the probes counted the loop.
                let line = self.wait_line(true, "total row", |l| {
                    json_of(l, pid).is_some_and(|v| v["total"] == Value::Bool(true))
                })?;
                let allocs = json_of(&line, pid).and_then(|v| v["exact"]["allocs"].as_u64());
                match allocs {
                    Some(a) if a >= n => Ok(None),
                    other => bail!(
                        "the exact probes counted {other:?} allocations, fewer than the loop's {n}"
                    ),
                }
            }
            Setup::Profile(_) => {
                let line = self.wait_line(false, "\"allocations sampled\" line", |l| {
                    l.contains(" allocations sampled in ")
                })?;
                let sampled: u64 = line
                    .trim_start_matches("goalloc: ")
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("no count in {line:?}"))?;
                let path = self.file.take().expect("a profile run has a file");
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("no profile written: {}", self.stderr.tail(5)))?;
                let _ = std::fs::remove_file(&path);
                if bytes.is_empty() || !bytes.starts_with(&[0x1f, 0x8b]) {
                    bail!(
                        "{}: not a gzipped profile ({} bytes)",
                        path.display(),
                        bytes.len()
                    );
                }
                if sampled == 0 {
                    bail!("the profile has no sample");
                }
                Ok(Some(sampled))
            }
        }
    }
}

/// A JSON row of `goalloc watch` about `pid`.
fn json_of(line: &str, pid: u32) -> Option<Value> {
    serde_json::from_str::<Value>(line)
        .ok()
        .filter(|v| v["pid"].as_u64() == Some(u64::from(pid)))
}

fn rate_label(rate: u64) -> String {
    match rate {
        r if r >= 1 << 20 && r % (1 << 20) == 0 => format!("{}MiB", r >> 20),
        r if r >= 1 << 10 && r % (1 << 10) == 0 => format!("{}KiB", r >> 10),
        r => format!("{r}B"),
    }
}

/// The object size of each kind of tests/go/bench (its size class).
fn object_size(kind: &str) -> u64 {
    match kind {
        "new" => 32,
        _ => 64,
    }
}

/// Samples a profile should hold: the warm-up (n/10 + 1) and the loop, each
/// `object_size` bytes, one sample per `rate` bytes on average.
fn expected_samples(kind: &str, n: u64, rate: u64) -> u64 {
    (n + n / 10 + 1) * object_size(kind) / rate
}

/// /proc/loadavg's first three fields.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn table(rows: &[Row], repeat: usize, load_before: &str, load_after: &str) -> String {
    let mut t = String::new();
    let (rate, dense) = (rate_label(DEFAULT_RATE), rate_label(DENSE_RATE));
    let _ = writeln!(
        t,
        "== profiling: ns added per allocation by `goalloc profile` vs the exact probes (issue 10) =="
    );
    let _ = writeln!(
        t,
        "bare: median ns/alloc of {repeat} runs of n allocations without a probe; exact: of n' under \
         `goalloc watch --pid P --exact`; {rate} (the default) and {dense}: of n' under `goalloc profile \
         --pid P --rate R`. Runs in rounds, the columns side by side."
    );
    let _ = writeln!(
        t,
        "+: the column minus bare (ns added per allocation); ratio: profiling's + / exact's + (goal: \
         <= {GOAL:.2} at {rate}; {dense} shows what denser sampling costs). samples: median per profile \
         (~ expected: 1.1 n' objects of 64 B (make) or 32 B (new) / rate). Load average {load_before} \
         before, {load_after} after."
    );
    let _ = writeln!(
        t,
        "{:<12} {:<5} {:>8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6} {:>4} {:>8} {:>6} {:>11} {:>13}  note",
        "variant",
        "kind",
        "n",
        "n'",
        "bare",
        "exact",
        rate,
        dense,
        "exact+",
        format!("{rate}+"),
        "ratio",
        "goal",
        format!("{dense}+"),
        "ratio",
        format!("samples {}", rate.trim_end_matches("iB")),
        format!("samples {}", dense.trim_end_matches("iB")),
    );
    for r in rows {
        let samples = |s: Option<u64>, rate: u64| match s {
            Some(s) => format!("{s} (~{})", expected_samples(r.kind, r.probed_n, rate)),
            None => "-".into(),
        };
        let _ = writeln!(
            t,
            "{:<12} {:<5} {:>8} {:>7} {:>7.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>8.2} {:>6.2} {:>4.2} {:>8.2} {:>6.2} {:>11} {:>13}  {}",
            r.label,
            r.kind,
            r.n,
            r.probed_n,
            r.bare,
            r.exact,
            r.profile,
            r.dense,
            r.added(r.exact),
            r.added(r.profile),
            r.ratio(r.profile),
            GOAL,
            r.added(r.dense),
            r.ratio(r.dense),
            samples(r.samples, DEFAULT_RATE),
            samples(r.dense_samples, DENSE_RATE),
            r.failed
        );
    }
    let _ = writeln!(t, "{}", verdict(rows, &rate));
    t
}

/// One line: the worst ratio at the default rate against the goal.
fn verdict(rows: &[Row], rate: &str) -> String {
    let failed = rows.iter().filter(|r| !r.failed.is_empty()).count();
    let worst = rows
        .iter()
        .filter(|r| r.failed.is_empty() && r.ratio(r.profile).is_finite())
        .max_by(|a, b| a.ratio(a.profile).total_cmp(&b.ratio(b.profile)));
    let mut line = match worst {
        None => "verdict: no ratio measured".to_string(),
        Some(r) => {
            let x = r.ratio(r.profile);
            let met = if x <= GOAL { "met" } else { "not met" };
            format!(
                "verdict: profiling at {rate} adds at most {x:.2}x what the exact probes add \
                 ({} {}); goal <= {GOAL:.2}: {met}",
                r.label, r.kind
            )
        }
    };
    if failed > 0 {
        let _ = write!(line, " ({failed} row(s) failed, see above)");
    }
    line
}
