//! `cargo xtask bench --only probes`: ns added per allocation by goalloc's
//! per-allocation probes on an allocation hot loop, per Go version and
//! placement, with the ratio to Go 1.21's added cost (issue 9's goal: every
//! version within 1.2x of Go 1.21).
//!
//! For each variant: run tests/go/bench without a probe, then again while
//! `goalloc watch --binary --exact` runs, and compare. Numbers are printed,
//! never asserted.
//!
//! `watch` finds a new process on an exec event and may put the probes on it
//! after it started, so each probed run uses the bench's `-wait`: the process
//! prints "waiting" and starts its loop only once goalloc has shown a row with
//! probe figures (`"exact"`) for its pid. It also uses `-hold`: it stays alive
//! after printing until goalloc has read it once more, so its total is complete.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::median;
use crate::fixtures;
use crate::util::{Ctx, show, signal};

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// goalloc's interval: each probed run waits for two of its rows (probes on,
/// then read after the loop), so a short one keeps the section short.
const INTERVAL: &str = "250ms";
/// How long a bench process waits for goalloc to report it.
const SEEN_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Options {
    /// Allocations per run without a probe.
    pub n: u64,
    /// Allocations per probed run with the default placement (fewer than `n`:
    /// at ~1 us a hit, and 14 on Go 1.19 today, 2,000,000 would take minutes).
    pub probed_n: u64,
    /// Allocations per run with `--placement entry` (single-stepped: much slower).
    pub entry_n: u64,
    /// Runs per measurement; the median ns/alloc is shown.
    pub repeat: usize,
    /// Every flavour of the matrix, not only the default builds.
    pub all_flavours: bool,
}

struct Case<'a> {
    label: &'a str,
    kind: &'static str,
    placement: &'static str,
    /// Allocations per run without and with the probes.
    n: u64,
    probed_n: u64,
}

struct Row {
    label: String,
    /// The row of the same kind and placement on this Go is the reference of
    /// the ratio column.
    go_1_21: bool,
    kind: &'static str,
    placement: &'static str,
    n: u64,
    probed_n: u64,
    base_ns: f64,
    probe_ns: f64,
    /// Sum of goalloc's per-process totals over the probed runs.
    goalloc_allocs: Option<u64>,
    /// Sum of the probed runs' MemStats.Mallocs (whole process).
    program_mallocs: u64,
    note: String,
}

/// What one bench run printed.
struct Run {
    pid: u32,
    ns_per_alloc: f64,
    mallocs_total: u64,
}

pub fn run(ctx: &Ctx, goalloc: &Path, opts: &Options) -> Result<String> {
    let mut variants = fixtures::matrix(ctx)?;
    // The probe cost depends on the Go version and malloc scheme, hardly on
    // how the binary was linked: one build of each by default.
    if !opts.all_flavours {
        variants.retain(|v| v.flavour.name == "default");
    }
    let mut bins = Vec::new();
    for v in &variants {
        let go_1_21 = v.go_version.starts_with("1.21.") && v.goexperiment.is_none();
        bins.push((
            v.label.clone(),
            go_1_21,
            fixtures::build(ctx, v, "bench")?.0,
        ));
    }

    let cases: [(&str, &str, u64, u64); 3] = [
        ("make", "default", opts.n, opts.probed_n),
        ("new", "default", opts.n, opts.probed_n),
        ("make", "entry", opts.entry_n, opts.entry_n),
    ];
    let mut rows = Vec::new();
    for (label, go_1_21, bin) in &bins {
        for &(kind, placement, n, probed_n) in &cases {
            println!("bench: probes: {label} kind={kind} placement={placement} n={n}/{probed_n}");
            let case = Case {
                label,
                kind,
                placement,
                n,
                probed_n,
            };
            let row = measure(goalloc, bin, &case, opts.repeat).unwrap_or_else(|e| {
                eprintln!("bench: {label} {kind} {placement}: {e:#}");
                Row {
                    label: label.clone(),
                    go_1_21: false,
                    kind,
                    placement,
                    n,
                    probed_n,
                    base_ns: f64::NAN,
                    probe_ns: f64::NAN,
                    goalloc_allocs: None,
                    program_mallocs: 0,
                    note: format!("error: {}", first_line(&format!("{e:#}"))),
                }
            });
            rows.push(Row {
                go_1_21: *go_1_21,
                ..row
            });
        }
    }
    Ok(table(&rows, opts.repeat))
}

fn measure(goalloc: &Path, bin: &Path, case: &Case, repeat: usize) -> Result<Row> {
    let base: Vec<Run> = (0..repeat)
        .map(|_| run_bench(bin, case, None))
        .collect::<Result<_>>()?;

    let mut cmd = Command::new(goalloc);
    cmd.arg("watch").arg("--binary").arg(bin).args([
        "--exact",
        "--output",
        "json",
        "--interval",
        INTERVAL,
    ]);
    if case.placement != "default" {
        cmd.args(["--placement", case.placement]);
    }
    let mut watcher = Watcher::start(cmd)?;
    let probed: Result<Vec<Run>> = watcher.wait_started().and_then(|()| {
        (0..repeat)
            .map(|_| run_bench(bin, case, Some(&mut watcher)))
            .collect()
    });
    let (stdout, stderr) = watcher.stop()?;
    let probed = probed.with_context(|| tail("goalloc stderr", &stderr))?;

    // The last "total": true line of each pid.
    let mut totals: HashMap<u64, u64> = HashMap::new();
    for v in stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if v["total"] == Value::Bool(true)
            && let (Some(pid), Some(allocs)) = (v["pid"].as_u64(), v["exact"]["allocs"].as_u64())
        {
            totals.insert(pid, allocs);
        }
    }
    let seen: Vec<u64> = probed
        .iter()
        .filter_map(|r| totals.get(&u64::from(r.pid)).copied())
        .collect();
    let note = if seen.len() == probed.len() {
        String::new()
    } else {
        format!(
            "goalloc printed a total for {} of {} runs",
            seen.len(),
            probed.len()
        )
    };
    Ok(Row {
        label: case.label.to_string(),
        go_1_21: false,
        kind: case.kind,
        placement: case.placement,
        n: case.n,
        probed_n: case.probed_n,
        base_ns: median(base.iter().map(|r| r.ns_per_alloc)),
        probe_ns: median(probed.iter().map(|r| r.ns_per_alloc)),
        goalloc_allocs: (!seen.is_empty()).then(|| seen.iter().sum()),
        program_mallocs: probed.iter().map(|r| r.mallocs_total).sum(),
        note,
    })
}

/// Runs the bench once. With a watcher, the process waits before its loop
/// until goalloc shows probe figures for it, and is held alive after its
/// output until goalloc has read it once more.
fn run_bench(bin: &Path, case: &Case, watcher: Option<&mut Watcher>) -> Result<Run> {
    let mut cmd = Command::new(bin);
    let n = if watcher.is_some() {
        case.probed_n
    } else {
        case.n
    };
    cmd.arg(format!("-n={n}"))
        .arg(format!("-kind={}", case.kind))
        .stdout(Stdio::piped());
    if watcher.is_some() {
        cmd.args(["-wait", "-hold"]).stdin(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", show(&cmd)))?;
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut out = String::new();
    let mut result = Ok(());
    let mut watcher = watcher;
    if let Some(w) = watcher.as_deref_mut() {
        // "waiting": the process exists; go once goalloc probes it.
        let waiting = lines.next().transpose()?.unwrap_or_default();
        result = if waiting == "waiting" {
            w.wait_seen(pid, 0, true)
        } else {
            Err(anyhow::anyhow!("expected \"waiting\", got {waiting:?}"))
        };
        if result.is_ok() {
            writeln!(child.stdin.as_mut().expect("piped"))?;
        }
    }
    if result.is_ok() {
        for line in lines.by_ref() {
            let line = line?;
            out.push_str(&line);
            out.push('\n');
            if line.starts_with("mallocs_total=") {
                break;
            }
        }
        if let Some(w) = watcher {
            let after = w.stdout.len();
            result = w.wait_seen(pid, after, false);
        }
    }
    drop(child.stdin.take()); // EOF: a waiting or held process exits now
    let status = child.wait()?;
    result?;
    if !status.success() {
        bail!("`{}` failed ({status}): {out}", show(&cmd));
    }

    let fields: HashMap<&str, &str> = out
        .split_whitespace()
        .filter_map(|tok| tok.split_once('='))
        .collect();
    let field = |key: &str| {
        fields
            .get(key)
            .copied()
            .with_context(|| format!("bench output has no {key}=: {out:?}"))
    };
    Ok(Run {
        pid,
        ns_per_alloc: field("ns_per_alloc")?.parse()?,
        mallocs_total: field("mallocs_total")?.parse()?,
    })
}

enum Event {
    Stdout(String),
    Stderr(String),
}

/// A running `goalloc watch`; two threads forward its output lines.
struct Watcher {
    child: Child,
    events: mpsc::Receiver<Event>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Watcher {
    fn start(mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{}`", show(&cmd)))?;
        let (tx, events) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let tx_out = tx.clone();
        thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx_out.send(Event::Stdout(line));
            }
        });
        let err = BufReader::new(child.stderr.take().expect("piped"));
        thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let _ = tx.send(Event::Stderr(line));
            }
        });
        Ok(Watcher {
            child,
            events,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }

    /// Waits for the next output line until `deadline`; false when there is none.
    fn next_line(&mut self, deadline: Instant) -> Result<bool> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(timeout) {
            Ok(Event::Stdout(line)) => self.stdout.push(line),
            Ok(Event::Stderr(line)) => self.stderr.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(false),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("goalloc exited"),
        }
        Ok(true)
    }

    /// Waits for watch's "goalloc: reading ..." line: its first sweep is done.
    fn wait_started(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self
            .stderr
            .iter()
            .any(|l| l.starts_with("goalloc: reading"))
        {
            if !self.next_line(deadline)? {
                bail!("goalloc did not print \"goalloc: reading\" within {START_TIMEOUT:?}");
            }
        }
        Ok(())
    }

    /// Waits until goalloc has printed a JSON row for `pid` at or after line
    /// `from` of its stdout; with `exact`, one with probe figures.
    fn wait_seen(&mut self, pid: u32, from: usize, exact: bool) -> Result<()> {
        let deadline = Instant::now() + SEEN_TIMEOUT;
        let mut checked = from;
        loop {
            for line in &self.stdout[checked.min(self.stdout.len())..] {
                if serde_json::from_str::<Value>(line).is_ok_and(|v| {
                    v["pid"].as_u64() == Some(u64::from(pid)) && (!exact || v["exact"].is_object())
                }) {
                    return Ok(());
                }
            }
            checked = self.stdout.len();
            if !self.next_line(deadline)? {
                let what = if exact { "with probe figures " } else { "" };
                bail!("goalloc printed no row {what}for pid {pid} within {SEEN_TIMEOUT:?}");
            }
        }
    }

    /// SIGINT (SIGKILL after a timeout); returns all stdout and stderr lines.
    fn stop(mut self) -> Result<(Vec<String>, Vec<String>)> {
        if self.child.try_wait()?.is_none() {
            let _ = signal(self.child.id(), libc::SIGINT);
            let start = Instant::now();
            while self.child.try_wait()?.is_none() {
                if start.elapsed() > STOP_TIMEOUT {
                    eprintln!("bench: goalloc ignored SIGINT for {STOP_TIMEOUT:?}: killing it");
                    self.child.kill()?;
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        self.child.wait()?;
        // Drain what the threads still forward (they end at EOF).
        for event in self.events.iter() {
            match event {
                Event::Stdout(line) => self.stdout.push(line),
                Event::Stderr(line) => self.stderr.push(line),
            }
        }
        Ok((self.stdout, self.stderr))
    }
}

fn tail(what: &str, lines: &[String]) -> String {
    let start = lines.len().saturating_sub(20);
    format!("{what} (last lines):\n{}", lines[start..].join("\n"))
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// The table; `added` is ns+goalloc minus ns/alloc, and its ratio to the
/// added cost of Go 1.21 for the same kind and placement.
fn table(rows: &[Row], repeat: usize) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let added = |r: &Row| r.probe_ns - r.base_ns;
    let reference = |r: &Row| {
        rows.iter()
            .find(|x| x.go_1_21 && x.kind == r.kind && x.placement == r.placement)
            .map(added)
            .unwrap_or(f64::NAN)
    };
    let _ = writeln!(
        t,
        "== probes: ns added per allocation by `goalloc watch --exact` (issue 9) =="
    );
    let _ = writeln!(
        t,
        "ns/alloc: median of {repeat} runs of n allocations without a probe; ns+goalloc: median of {repeat} \
         runs of n' with the probes on. added = the difference; vs 1.21 = added / Go 1.21's added \
         (goal: <= 1.20 for placement default)."
    );
    let _ = writeln!(
        t,
        "goalloc: sum of its per-process probe totals (exact.allocs) over the probed runs; program: sum \
         of their MemStats.Mallocs (whole process). diff = goalloc - program: minus the runtime's start-up \
         allocations (~100-170 a run, made before the probes were put on the waiting process), plus the \
         ~10 of the final printing."
    );
    let _ = writeln!(
        t,
        "{:<34} {:<5} {:<9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>8} {:>5} {:>10} {:>10} {:>6}  note",
        "variant",
        "kind",
        "placement",
        "n",
        "n'",
        "ns/alloc",
        "ns+goalloc",
        "added",
        "vs 1.21",
        "goal",
        "goalloc",
        "program",
        "diff"
    );
    for r in rows {
        let (seen, diff) = match r.goalloc_allocs {
            Some(a) => (
                a.to_string(),
                (i128::from(a) - i128::from(r.program_mallocs)).to_string(),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        let goal = if r.placement == "default" {
            "1.20"
        } else {
            "-"
        };
        let _ = writeln!(
            t,
            "{:<34} {:<5} {:<9} {:>9} {:>9} {:>9.2} {:>11.2} {:>9.2} {:>8.2} {:>5} {:>10} {:>10} {:>6}  {}",
            r.label,
            r.kind,
            r.placement,
            r.n,
            r.probed_n,
            r.base_ns,
            r.probe_ns,
            added(r),
            added(r) / reference(r),
            goal,
            seen,
            r.program_mallocs,
            diff,
            r.note
        );
    }
    t
}
