//! The `goalloc` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use goalloc::{
    agent::{self, AgentOptions},
    exporter::Aggregate,
    profile,
    report::OutputFormat,
    select::{ExactSelection, Selector},
    top::{self, TopOptions},
    watch::{self, WatchOptions},
};
use gobinary::{
    GoBinary,
    plan::{self, PlanOptions},
    runtime::RuntimeProbe,
};

#[derive(Parser)]
#[command(
    name = "goalloc",
    version,
    about = "Exact heap-allocation and goroutine counts for Go processes, from eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show live per-process allocation and goroutine rates.
    Watch {
        /// Process to watch (repeatable).
        #[arg(long = "pid", value_name = "PID", conflicts_with = "binary")]
        pids: Vec<u32>,
        /// Watch every process running this Go executable.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Time between rows.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this long and print totals (default: until Ctrl-C or
        /// until every watched process has exited).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// Also put per-allocation probes on the watched processes: requested
        /// bytes and sizes, goroutines created and exited (costs the target
        /// about a microsecond per allocation).
        #[arg(long)]
        exact: bool,
        /// Where to probe (`entry` only to measure its cost in benchmarks).
        #[arg(long, value_enum, default_value_t = Placement::Prologue, hide = true)]
        placement: Placement,
    },
    /// Every Go process on this host, live and full screen: allocation and
    /// GC rates, live heap, goroutines (a table when stdout is not a terminal).
    Top {
        /// Time between refreshes.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Follow every Go process on this node and serve Prometheus metrics.
    Agent {
        /// Address of the HTTP server (/metrics, /healthz, /readyz).
        #[arg(long, default_value = "0.0.0.0:9464")]
        listen: std::net::SocketAddr,
        /// Fold label sets to control cardinality.
        #[arg(long, value_enum, default_value_t = Aggregate::Process)]
        aggregate: Aggregate,
        /// Period of the /proc sweep that backs up the kernel's exec/exit events.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        sweep_interval: Duration,
        /// Keep a process's probes this long after it exec'd, so a process
        /// that re-executes the same file keeps them (probes are per process
        /// and follow it across exec; an exited process's go at once).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        detach_grace: Duration,
        /// Take the per-allocation probes off a process when they cost it
        /// more than this (estimated, per process): a fraction of one CPU
        /// (`0.02`) or a percentage (`2%`). Its runtime counters stay.
        #[arg(long, default_value = "0.02", value_parser = goalloc::guard::parse_budget)]
        exact_budget: f64,
        /// Put per-allocation probes on these processes (repeatable): `all`,
        /// `pid=N`, `exe=GLOB`, `namespace=NS`, `pod=NS/NAME`. Pods annotated
        /// `goalloc.io/exact: "true"` get them too. Every other Go process is
        /// read through its runtime counters only, at no cost to it.
        #[arg(long = "exact-for", value_name = "SELECTOR")]
        exact_for: Vec<Selector>,
        /// Serve allocation profiles at /debug/pprof/allocs?pid=PID&seconds=N
        /// (N <= 120). Each costs its process a trap per allocation while it
        /// runs, and anyone reaching the port may ask for one: off by default.
        #[arg(long)]
        profiling: bool,
    },
    /// Where and what processes allocate: the allocation probes on them for
    /// a while, sampling like Go's MemProfileRate, then a pprof profile
    /// (`go tool pprof`) of call stacks and Go types.
    Profile {
        /// Process to profile (repeatable).
        #[arg(long = "pid", value_name = "PID")]
        pids: Vec<u32>,
        /// How long to sample (it costs each process about a microsecond
        /// per allocation meanwhile).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Mean bytes between samples (Go's MemProfileRate): `512KiB`,
        /// `4096`, `1MiB`; `1` samples every allocation.
        #[arg(long, default_value = "512KiB", value_parser = goalloc::profile::command::parse_rate)]
        rate: u64,
        /// Where to write the gzipped pprof profile (`-` for stdout).
        /// Default: goalloc-allocs-PID-TIME.pb.gz, or none with --top.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Print the top call sites and types as tables.
        #[arg(long)]
        top: bool,
    },
    /// Show what goalloc would probe in a Go executable, without attaching.
    Inspect {
        /// Path of the Go executable (or /proc/PID/exe).
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Placement {
    Prologue,
    Entry,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other error; `--help` has the details.
            // Clap lists missing arguments on the lines after the first:
            // those belong in the line too.
            let text = e.to_string();
            let mut lines = text.lines();
            let mut line = lines.next().unwrap_or_default().to_string();
            if e.kind() == clap::error::ErrorKind::MissingRequiredArgument {
                for more in lines.take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage")) {
                    line.push(' ');
                    line.push_str(more.trim());
                }
            }
            eprintln!(
                "goalloc: error: {} (see goalloc --help)",
                line.trim_start_matches("error: ").trim()
            );
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what went wrong, with its causes.
            eprintln!("goalloc: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Our error types embed their cause
/// in their message (so logs of the error alone are complete); a cause whose
/// text is already there is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Watch {
            pids,
            binary,
            interval,
            duration,
            output,
            exact,
            placement,
        } => {
            if interval.is_zero() {
                anyhow::bail!("--interval must be greater than zero");
            }
            let opts = WatchOptions {
                target: watch::target_from(pids, binary)?,
                interval,
                duration,
                output,
                exact,
                plan: PlanOptions {
                    at_entry: placement == Placement::Entry,
                },
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(watch::run(opts, std::io::stdout()))
        }
        Command::Agent {
            listen,
            aggregate,
            sweep_interval,
            detach_grace,
            exact_for,
            exact_budget,
            profiling,
        } => {
            if sweep_interval.is_zero() {
                anyhow::bail!("--sweep-interval must be greater than zero");
            }
            let opts = AgentOptions {
                listen,
                aggregate,
                sweep_interval,
                detach_grace,
                plan: PlanOptions::default(),
                exact: ExactSelection {
                    selectors: exact_for,
                    pod_annotation: true,
                    budget: Some(exact_budget),
                },
                profiling,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(agent::run(opts))
        }
        Command::Top { interval } => {
            if interval.is_zero() {
                anyhow::bail!("--interval must be greater than zero");
            }
            top::run(TopOptions { interval })
        }
        Command::Profile {
            pids,
            duration,
            rate,
            output,
            top,
        } => {
            let output = match output {
                None => profile::command::Output::Default,
                Some(p) if p.as_os_str() == "-" => profile::command::Output::Stdout,
                Some(p) => profile::command::Output::File(p),
            };
            let opts = profile::command::ProfileOptions {
                pids,
                duration,
                rate,
                output,
                top,
                plan: PlanOptions::default(),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(profile::command::run(opts))
        }
        Command::Inspect { path } => inspect(&path),
    }
}

fn inspect(path: &std::path::Path) -> Result<()> {
    let bin = GoBinary::open(path)?;
    let info = bin.build_info();
    println!("binary:     {}", path.display());
    println!("go version: {}", info.go_version);
    println!("arch:       {:?}", bin.arch());
    println!("symbols:    {:?}", bin.symbol_source());
    if !info.experiments.is_empty() {
        println!("experiments: {}", info.experiments.join(","));
    }
    match RuntimeProbe::for_binary(&bin) {
        Ok(probe) => {
            println!("runtime counters (read from memory, the default source):");
            for line in probe.report().lines() {
                println!("  {line}");
            }
        }
        Err(e) => println!("runtime counters: unavailable: {e}"),
    }
    println!("per-allocation probes (--exact):");
    let plan = plan::plan_for_arch(&bin, PlanOptions::default())?;
    println!("scheme:     {:?} ({})", plan.scheme, plan.scheme_reason);
    println!("sites:");
    for p in &plan.probes {
        println!("  {:<44} {}", p.function, p.site_reason);
    }
    println!(
        "{:<44} {:>18} {:>12} {:<16} {:<8} INSTRUCTION",
        "FUNCTION", "PROBE VADDR", "FILE OFFSET", "PLACEMENT", "TRAP"
    );
    for p in &plan.probes {
        println!(
            "{:<44} {:>#18x} {:>#12x} {:<16} {:<8} {}",
            p.function,
            p.vaddr,
            p.file_offset,
            format!("{:?}", p.placement),
            if p.emulated { "emulated" } else { "stepped" },
            p.instruction
        );
    }
    Ok(())
}
