//! `cargo xtask bench`: cost of goalloc's probes on an allocation hot loop.
//!
//! For each variant: run tests/go/bench without a probe, then again while
//! `goalloc watch --binary` is attached, and compare. Numbers are printed, never
//! asserted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::fixtures;
use crate::setup;
use crate::util::{Ctx, output, signal, survive_sigint};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Options {
    /// Allocations per run with the default probe placement.
    pub n: u64,
    /// Allocations per run with `--placement entry` (single-stepped: ~50x slower).
    pub entry_n: u64,
    /// Runs per measurement; the median ns/alloc is shown.
    pub repeat: usize,
}

struct Row {
    variant: String,
    kind: &'static str,
    placement: &'static str,
    n: u64,
    base_ns: f64,
    probe_ns: f64,
    goalloc_allocs: Option<u64>,
    program_mallocs: u64,
    note: String,
}

/// What one bench run printed.
struct Run {
    ns_per_alloc: f64,
    mallocs_total: u64,
}

pub fn bench(ctx: &Ctx, opts: &Options) -> Result<()> {
    setup::setup(ctx)?;
    let variants = fixtures::matrix(ctx)?;
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
                    variant: label.clone(),
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

struct Case<'a> {
    label: &'a str,
    kind: &'static str,
    placement: &'static str,
    n: u64,
}

fn measure(goalloc: &Path, bin: &Path, case: &Case, repeat: usize) -> Result<Row> {
    let &Case {
        label,
        kind,
        placement,
        n,
    } = case;
    let base: Vec<Run> = (0..repeat)
        .map(|_| run_bench(bin, kind, n))
        .collect::<Result<_>>()?;

    let mut cmd = Command::new(goalloc);
    cmd.arg("watch")
        .arg("--binary")
        .arg(bin)
        .args(["--output", "json", "--interval", "1s"]);
    if placement != "default" {
        cmd.args(["--placement", placement]);
    }
    let mut watcher = Watcher::start(cmd)?;
    let probed = watcher
        .wait_attached()
        .and_then(|()| (0..repeat).map(|_| run_bench(bin, kind, n)).collect());
    let (stdout, stderr) = watcher.stop()?;
    let probed: Vec<Run> = probed.with_context(|| tail("goalloc stderr", &stderr))?;

    let goalloc_allocs = stdout.iter().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v.get("total")? == &serde_json::Value::Bool(true)).then(|| v.get("allocs")?.as_u64())?
    });
    let note = if goalloc_allocs.is_none() {
        "no final JSON line with \"total\": true".to_string()
    } else {
        String::new()
    };
    Ok(Row {
        variant: label.to_string(),
        kind,
        placement,
        n,
        base_ns: median(base.iter().map(|r| r.ns_per_alloc)),
        probe_ns: median(probed.iter().map(|r| r.ns_per_alloc)),
        goalloc_allocs,
        program_mallocs: probed.iter().map(|r| r.mallocs_total).sum(),
        note,
    })
}

fn run_bench(bin: &Path, kind: &str, n: u64) -> Result<Run> {
    let out = output(
        Command::new(bin)
            .arg(format!("-n={n}"))
            .arg(format!("-kind={kind}")),
    )?;
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
        ns_per_alloc: field("ns_per_alloc")?.parse()?,
        mallocs_total: field("mallocs_total")?.parse()?,
    })
}

/// A running `goalloc watch`, its output collected by two threads.
struct Watcher {
    child: Child,
    attached: mpsc::Receiver<()>,
    stdout: thread::JoinHandle<Vec<String>>,
    stderr: thread::JoinHandle<Vec<String>>,
}

impl Watcher {
    fn start(mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{}`", crate::util::show(&cmd)))?;
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let err = BufReader::new(child.stderr.take().expect("piped"));
        let (tx, attached) = mpsc::channel();
        let stdout = thread::spawn(move || out.lines().map_while(Result::ok).collect());
        let stderr = thread::spawn(move || {
            let mut lines = Vec::new();
            for line in err.lines().map_while(Result::ok) {
                if line.contains("attached") {
                    let _ = tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        Ok(Watcher {
            child,
            attached,
            stdout,
            stderr,
        })
    }

    fn wait_attached(&mut self) -> Result<()> {
        match self.attached.recv_timeout(ATTACH_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("goalloc did not print \"attached\" within {ATTACH_TIMEOUT:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("goalloc exited before printing \"attached\"")
            }
        }
    }

    /// SIGINT, then SIGKILL after a timeout; returns stdout and stderr lines.
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
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = self.stderr.join().unwrap_or_default();
        Ok((stdout, stderr))
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
    println!(
        "median of {repeat} runs; counts: goalloc total vs the bench processes' MemStats.Mallocs (whole process, summed over runs)"
    );
    println!(
        "{:<38} {:<5} {:<9} {:>9} {:>12} {:>12} {:>7} {:>12} {:>12} {:>8}  note",
        "variant",
        "kind",
        "placement",
        "n",
        "ns/alloc",
        "ns/alloc+ga",
        "ratio",
        "goalloc",
        "program",
        "diff"
    );
    for r in rows {
        let (seen, diff) = match r.goalloc_allocs {
            Some(a) => (
                a.to_string(),
                (a as i128 - r.program_mallocs as i128).to_string(),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            "{:<38} {:<5} {:<9} {:>9} {:>12.2} {:>12.2} {:>7.2} {:>12} {:>12} {:>8}  {}",
            r.variant,
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
