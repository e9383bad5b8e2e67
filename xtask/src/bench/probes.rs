//! `cargo xtask bench`: cost of goalloc's probes on an allocation hot loop.
//!
//! For each variant: run tests/go/bench without a probe, then again while
//! `goalloc watch --binary` is attached, and compare. Numbers are printed, never
//! asserted.
//!
//! `watch --binary` discovers processes on its ticks and reports a total per
//! process once it has exited; a process that lives less than a tick is never
//! reported. So each probed run uses the bench's `-hold`: it stays alive after
//! printing until goalloc has shown a row for its pid, then stdin is closed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::fixtures;
use crate::setup;
use crate::util::{Ctx, show, signal, survive_sigint};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a held bench process waits for goalloc to report it (ticks are 1 s).
const SEEN_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Options {
    /// Allocations per run with the default probe placement.
    pub n: u64,
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
    n: u64,
}

struct Row {
    label: String,
    kind: &'static str,
    placement: &'static str,
    n: u64,
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

pub fn bench(ctx: &Ctx, opts: &Options) -> Result<()> {
    setup::setup(ctx)?;
    let mut variants = fixtures::matrix(ctx)?;
    // The probe cost depends on the Go version and malloc scheme, hardly on
    // how the binary was linked: one build of each by default.
    if !opts.all_flavours {
        variants.retain(|v| v.flavour.name == "default");
    }
    let mut bins = Vec::new();
    for v in &variants {
        bins.push((v.label.clone(), fixtures::build(ctx, v, "bench")?.0));
    }
    let goalloc = ctx.build_goalloc_release()?;
    survive_sigint();

    let cases: [(&str, &str, u64); 3] = [
        ("make", "default", opts.n),
        ("new", "default", opts.n),
        ("make", "entry", opts.entry_n),
    ];
    let mut rows = Vec::new();
    for (label, bin) in &bins {
        for &(kind, placement, n) in &cases {
            println!("bench: {label} kind={kind} placement={placement} n={n}");
            let case = Case {
                label,
                kind,
                placement,
                n,
            };
            let row = measure(&goalloc, bin, &case, opts.repeat).unwrap_or_else(|e| {
                eprintln!("bench: {label} {kind} {placement}: {e:#}");
                Row {
                    label: label.clone(),
                    kind,
                    placement,
                    n,
                    base_ns: f64::NAN,
                    probe_ns: f64::NAN,
                    goalloc_allocs: None,
                    program_mallocs: 0,
                    note: format!("error: {}", first_line(&format!("{e:#}"))),
                }
            });
            rows.push(row);
        }
    }
    print_table(&rows, opts.repeat);
    Ok(())
}

fn measure(goalloc: &Path, bin: &Path, case: &Case, repeat: usize) -> Result<Row> {
    let base: Vec<Run> = (0..repeat)
        .map(|_| run_bench(bin, case, None))
        .collect::<Result<_>>()?;

    let mut cmd = Command::new(goalloc);
    cmd.arg("watch")
        .arg("--binary")
        .arg(bin)
        .args(["--output", "json", "--interval", "1s"]);
    if case.placement != "default" {
        cmd.args(["--placement", case.placement]);
    }
    let mut watcher = Watcher::start(cmd)?;
    let probed: Result<Vec<Run>> = watcher.wait_attached().and_then(|()| {
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
            && let (Some(pid), Some(allocs)) = (v["pid"].as_u64(), v["allocs"].as_u64())
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
        kind: case.kind,
        placement: case.placement,
        n: case.n,
        base_ns: median(base.iter().map(|r| r.ns_per_alloc)),
        probe_ns: median(probed.iter().map(|r| r.ns_per_alloc)),
        goalloc_allocs: (!seen.is_empty()).then(|| seen.iter().sum()),
        program_mallocs: probed.iter().map(|r| r.mallocs_total).sum(),
        note,
    })
}

/// Runs the bench once. With a watcher, the process is held alive after its
/// output until goalloc has reported its pid.
fn run_bench(bin: &Path, case: &Case, watcher: Option<&mut Watcher>) -> Result<Run> {
    let mut cmd = Command::new(bin);
    cmd.arg(format!("-n={}", case.n))
        .arg(format!("-kind={}", case.kind))
        .stdout(Stdio::piped());
    if watcher.is_some() {
        cmd.arg("-hold").stdin(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", show(&cmd)))?;
    let pid = child.id();
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        out.push_str(&line);
        out.push('\n');
        if line.starts_with("mallocs_total=") {
            break;
        }
    }
    let seen = match watcher {
        Some(w) => w.wait_seen(pid),
        None => Ok(()),
    };
    drop(child.stdin.take()); // EOF: a held process exits now
    let status = child.wait()?;
    seen?;
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

    fn wait_attached(&mut self) -> Result<()> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        while !self.stderr.iter().any(|l| l.contains("attached")) {
            if !self.next_line(deadline)? {
                bail!("goalloc did not print \"attached\" within {ATTACH_TIMEOUT:?}");
            }
        }
        Ok(())
    }

    /// Waits until goalloc has printed a JSON row for `pid`.
    fn wait_seen(&mut self, pid: u32) -> Result<()> {
        let deadline = Instant::now() + SEEN_TIMEOUT;
        let mut checked = 0;
        loop {
            for line in &self.stdout[checked..] {
                if serde_json::from_str::<Value>(line)
                    .is_ok_and(|v| v["pid"].as_u64() == Some(u64::from(pid)))
                {
                    return Ok(());
                }
            }
            checked = self.stdout.len();
            if !self.next_line(deadline)? {
                bail!("goalloc printed no row for pid {pid} within {SEEN_TIMEOUT:?}");
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

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn tail(what: &str, lines: &[String]) -> String {
    let start = lines.len().saturating_sub(20);
    format!("{what} (last lines):\n{}", lines[start..].join("\n"))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn print_table(rows: &[Row], repeat: usize) {
    println!();
    println!("ns/alloc: median of {repeat} runs without a probe, and with goalloc attached.");
    println!(
        "goalloc: sum of its per-process totals over the {repeat} probed runs; program: sum of their \
         MemStats.Mallocs (whole process; goalloc also sees the few allocations of the final printing)."
    );
    println!(
        "{:<34} {:<5} {:<9} {:>9} {:>9} {:>11} {:>7} {:>10} {:>10} {:>6}  note",
        "variant",
        "kind",
        "placement",
        "n",
        "ns/alloc",
        "ns+goalloc",
        "ratio",
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
        println!(
            "{:<34} {:<5} {:<9} {:>9} {:>9.2} {:>11.2} {:>7.2} {:>10} {:>10} {:>6}  {}",
            r.label,
            r.kind,
            r.placement,
            r.n,
            r.base_ns,
            r.probe_ns,
            r.probe_ns / r.base_ns,
            seen,
            r.program_mallocs,
            diff,
            r.note
        );
    }
}
