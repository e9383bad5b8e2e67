//! `cargo xtask bench`: what goalloc costs, printed and never asserted.
//!
//! Four sections, each printing one table with the goal next to each number:
//! - `probes` ([`probes`]): ns added per allocation by the per-allocation
//!   probes, per Go version and placement, with the ratio to Go 1.21 (issue 9);
//! - `profiling` ([`profiling`]): ns added per allocation by `goalloc profile`
//!   against the exact probes alone, on Go 1.21 and Go 1.27 (issue 10);
//! - `workloads` ([`workloads`]): two real programs nobody here wrote, bare,
//!   under `goalloc agent` (default: no probes), under `goalloc agent
//!   --exact-for all`, and under the seed's bpftrace one-liner (issue 8);
//! - `scale` ([`scale`]): scrape time and agent RSS with many Go processes
//!   running (issue 8).
//!
//! Every run uses the release build of goalloc. A section that fails prints
//! why and the others still run, so one broken peer does not hide the rest.

mod probes;
mod profiling;
mod scale;
mod workloads;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::setup;
use crate::util::{Ctx, show, signal, survive_sigint};

pub use probes::Options as ProbeOptions;
pub use scale::Options as ScaleOptions;
pub use workloads::Options as WorkloadOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// ns added per allocation per Go version and placement (issue 9).
    Probes,
    /// ns added per allocation by `goalloc profile` vs the exact probes (issue 10).
    Profiling,
    /// A cold `go build` and node-exporter under wrk: bare, agent, exact, bpftrace.
    Workloads,
    /// Scrape time and agent RSS with many Go processes running.
    Scale,
}

pub struct Options {
    /// The sections to run; empty: all.
    pub only: Vec<Section>,
    pub probes: ProbeOptions,
    pub workloads: WorkloadOptions,
    pub scale: ScaleOptions,
}

pub fn bench(ctx: &Ctx, opts: &Options) -> Result<()> {
    setup::setup(ctx)?;
    let goalloc = ctx.build_goalloc_release()?;
    survive_sigint();
    let start = Instant::now();
    let all = [
        Section::Probes,
        Section::Profiling,
        Section::Workloads,
        Section::Scale,
    ];
    let sections: Vec<Section> = all
        .into_iter()
        .filter(|s| opts.only.is_empty() || opts.only.contains(s))
        .collect();

    let mut tables = Vec::new();
    let mut failed = 0;
    for section in sections {
        let t0 = Instant::now();
        let result = match section {
            Section::Probes => probes::run(ctx, &goalloc, &opts.probes),
            // The same run sizes as `probes`, whose options the CLI sets.
            Section::Profiling => profiling::run(
                ctx,
                &goalloc,
                &profiling::Options {
                    n: opts.probes.n,
                    probed_n: opts.probes.probed_n,
                    repeat: opts.probes.repeat,
                },
            ),
            Section::Workloads => workloads::run(ctx, &goalloc, &opts.workloads),
            Section::Scale => scale::run(ctx, &goalloc, &opts.scale),
        };
        let took = t0.elapsed();
        let table = match result {
            Ok(table) => table,
            Err(e) => {
                failed += 1;
                format!("{section:?}: failed: {e:#}\n")
            }
        };
        // Printed as soon as a section is done, and again together at the end.
        println!("\n{table}({section:?} took {:.0} s)", took.as_secs_f64());
        tables.push(format!(
            "{table}({section:?} took {:.0} s)\n",
            took.as_secs_f64()
        ));
    }
    if tables.len() > 1 {
        println!("\n==== all sections ====");
        for t in &tables {
            println!("\n{t}");
        }
    }
    println!("bench: done in {:.0} s", start.elapsed().as_secs_f64());
    if failed > 0 {
        bail!("{failed} section(s) failed (see above)");
    }
    Ok(())
}

/// The median (upper middle for an even count); NaN for none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A loopback address with a port nobody listens on right now.
pub fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?)
}

/// A plain HTTP/1.0 GET (so the body is neither chunked nor kept alive):
/// status and body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status from {addr}{path}"))?;
    Ok((status, body.to_string()))
}

/// Polls `GET path` until it answers 200 or `timeout` passes; `child` dying
/// ends the wait early.
pub fn wait_http_ok(
    child: &mut Child,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited ({status}) before {addr}{path} answered");
        }
        if let Ok((200, _)) = http_get(addr, path, Duration::from_secs(2)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr}{path} did not answer 200 within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A value of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no {key}"))
}

/// Whether an ELF file has a symbol table (`.symtab`): uprobe tools that
/// resolve `runtime.mallocgc` by name need one. Little-endian ELF64 only,
/// which is all this bench runs on.
pub fn has_symtab(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if data.get(..5) != Some(b"\x7fELF\x02") {
        bail!("{} is not an ELF64 file", path.display());
    }
    let bad = || anyhow::anyhow!("{}: truncated ELF header", path.display());
    let shoff = usize::try_from(u64_at(0x28).ok_or_else(bad)?)?;
    let shentsize = usize::from(u16_at(0x3a).ok_or_else(bad)?);
    let shnum = usize::from(u16_at(0x3c).ok_or_else(bad)?);
    const SHT_SYMTAB: u32 = 2;
    Ok((0..shnum).any(|i| u32_at(shoff + i * shentsize + 4) == Some(SHT_SYMTAB)))
}

/// Lines a child writes to a pipe, collected by a thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn collect(pipe: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.0.lock().expect("not poisoned").push(line);
            }
        });
        lines
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").clone()
    }

    pub fn tail(&self, n: usize) -> String {
        let lines = self.snapshot();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A child that is stopped (SIGINT, then SIGKILL after `grace`) and reaped
/// when dropped, so an error never leaves a server or a tracer behind.
pub struct Guard {
    pub child: Child,
    pub what: String,
    grace: Duration,
}

impl Guard {
    pub fn new(child: Child, what: String, grace: Duration) -> Guard {
        Guard { child, what, grace }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, waits up to the grace, then SIGKILL. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            let _ = signal(self.child.id(), libc::SIGINT);
            let start = Instant::now();
            while self.child.try_wait()?.is_none() {
                if start.elapsed() > self.grace {
                    eprintln!(
                        "bench: {} ignored SIGINT for {:?}: killing it",
                        self.what, self.grace
                    );
                    let _ = self.child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A running `goalloc agent` on a free loopback port.
pub struct Agent {
    guard: Guard,
    pub addr: SocketAddr,
    stderr: Lines,
    scraper: Option<(Arc<AtomicBool>, thread::JoinHandle<()>)>,
}

impl Agent {
    /// Starts `goalloc agent --listen <free port> <args>` and waits for
    /// /readyz (the first /proc sweep done, probes attached where asked).
    pub fn start(goalloc: &Path, args: &[String]) -> Result<Agent> {
        let addr = free_addr()?;
        let mut cmd = Command::new(goalloc);
        cmd.arg("agent")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", show(&cmd)))?;
        let stderr = Lines::collect(child.stderr.take().expect("piped"));
        let mut guard = Guard::new(child, "goalloc agent".into(), Duration::from_secs(15));
        wait_http_ok(&mut guard.child, addr, "/readyz", Duration::from_secs(60))
            .with_context(|| format!("`{}`\n{}", show(&cmd), stderr.tail(20)))?;
        Ok(Agent {
            guard,
            addr,
            stderr,
            scraper: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// GET /metrics: how long it took and the body.
    pub fn scrape(&self) -> Result<(Duration, String)> {
        let start = Instant::now();
        let (status, body) = http_get(self.addr, "/metrics", Duration::from_secs(30))?;
        let took = start.elapsed();
        if status != 200 {
            bail!("/metrics answered {status}: {}", body.trim());
        }
        Ok((took, body))
    }

    /// Scrapes /metrics every `every` in a thread until [`Agent::stop`], as
    /// Prometheus would: the default source reads the processes at scrape
    /// time, so an agent nobody scrapes would cost less than a real one.
    pub fn scrape_every(&mut self, every: Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let addr = self.addr;
        let handle = thread::spawn(move || {
            let mut next = Instant::now() + every;
            while !flag.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    let _ = http_get(addr, "/metrics", Duration::from_secs(30));
                    next += every;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        self.scraper = Some((stop, handle));
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        self.stderr.tail(n)
    }

    pub fn stop(&mut self) -> Result<()> {
        if let Some((flag, handle)) = self.scraper.take() {
            flag.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
        self.guard.stop()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A fresh, empty directory under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
