//! Project tasks: `cargo xtask <setup|fixtures|test|lint|demo|bench>`.
//!
//! Everything is cached under `<workspace>/.cache` (or `$GOALLOC_CACHE`):
//! `tools/bin/bpf-linker`, `go/<version>/go/bin/go`, `gocache/`, `gopath/`,
//! `fixtures/<variant>/<program>` (+ `variant.json`), `fixtures/index.json`.

mod bench;
mod demo;
mod fixtures;
mod fuzz;
mod lint;
mod setup;
mod test;
mod util;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "goalloc project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (Debian packages, bpf-linker, Go toolchains,
    /// kubernetes-validate, cargo-fuzz).
    Setup,
    /// Build the Go programs of tests/go/ for each Go variant (GOALLOC_MATRIX=full: all).
    Fixtures,
    /// setup, fixtures, cargo fmt --check and clippy (workspace, agent-ebpf, fuzz), cargo test,
    /// fuzz smoke (args after `--` go to cargo test; GOALLOC_SKIP_FUZZ=1 skips the fuzz smoke
    /// and the fuzz lints).
    Test {
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// cargo fmt --check and clippy on agent-ebpf (Debian's toolchain, BPF target) and fuzz/
    /// (nightly), the crates outside the workspace (a step of `test`).
    Lint,
    /// Watch the demo Go service with goalloc (args after `--` go to `goalloc watch`,
    /// default `--duration 30s`).
    Demo {
        #[arg(last = true)]
        goalloc_args: Vec<String>,
    },
    /// What goalloc costs, printed never asserted: ns added per allocation by the probes
    /// (`probes`) and by profiling (`profiling`), two real workloads bare / agent /
    /// --exact-for / bpftrace (`workloads`), scrape time and RSS with many Go processes
    /// (`scale`). Default: all four.
    Bench {
        /// Run only these sections (repeatable or comma-separated).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Section>,
        /// Runs per measurement, rounds of the workloads (the median is shown).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// probes, profiling: allocations per run without a probe.
        #[arg(long, default_value_t = 2_000_000)]
        n: u64,
        /// probes, profiling: allocations per run with the probes (default placement).
        #[arg(long, default_value_t = 500_000)]
        probed_n: u64,
        /// probes: allocations per run with `--placement entry` (much slower per hit).
        #[arg(long, default_value_t = 100_000)]
        entry_n: u64,
        /// probes: every build flavour (stripped, PIE, cgo...) of every Go, not only
        /// the default build of each Go and experiment (5x longer).
        #[arg(long)]
        all_flavours: bool,
        /// workloads: rounds with bpftrace (its cold gofmt build takes minutes).
        #[arg(long, default_value_t = 1)]
        bpftrace_repeat: usize,
        /// workloads: seconds of the measured wrk run against node-exporter.
        #[arg(long, default_value_t = 10)]
        wrk_seconds: u64,
        /// workloads: seconds of wrk before it (connections open, probes in place).
        #[arg(long, default_value_t = 3)]
        warmup_seconds: u64,
        /// workloads: seconds between scrapes of the agent during a run.
        #[arg(long, default_value_t = 5)]
        scrape_seconds: u64,
        /// workloads: `--exact-for` selectors of the exact setup (repeatable).
        #[arg(long, default_value = "all")]
        exact_for: Vec<String>,
        /// scale: idle Go processes to run.
        #[arg(long, default_value_t = 200)]
        processes: usize,
        /// scale: scrapes after the first (the median time is shown).
        #[arg(long, default_value_t = 5)]
        scrapes: usize,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the chain of causes, without a backtrace (CI sets RUST_BACKTRACE).
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = util::Ctx::new()?;
    match cli.cmd {
        Cmd::Setup => setup::setup_for_tests(&ctx),
        Cmd::Fixtures => fixtures::fixtures(&ctx),
        Cmd::Test { cargo_test_args } => test::test(&ctx, &cargo_test_args),
        Cmd::Lint => {
            lint::ebpf_fmt(&ctx)?;
            lint::ebpf_clippy(&ctx)?;
            lint::fuzz(&ctx)
        }
        Cmd::Demo { goalloc_args } => demo::demo(&ctx, &goalloc_args),
        Cmd::Bench {
            only,
            repeat,
            n,
            probed_n,
            entry_n,
            all_flavours,
            bpftrace_repeat,
            wrk_seconds,
            warmup_seconds,
            scrape_seconds,
            exact_for,
            processes,
            scrapes,
        } => bench::bench(
            &ctx,
            &bench::Options {
                only,
                probes: bench::ProbeOptions {
                    n,
                    probed_n,
                    entry_n,
                    repeat: repeat.max(1),
                    all_flavours,
                },
                workloads: bench::WorkloadOptions {
                    repeat: repeat.max(1),
                    bpftrace_repeat: bpftrace_repeat.min(repeat.max(1)),
                    wrk_duration: Duration::from_secs(wrk_seconds.max(1)),
                    warmup: Duration::from_secs(warmup_seconds),
                    wrk_threads: 2,
                    wrk_connections: 8,
                    scrape_every: Duration::from_secs(scrape_seconds.max(1)),
                    exact_for,
                },
                scale: bench::ScaleOptions {
                    processes: processes.max(1),
                    scrapes: scrapes.max(1),
                    rate: 10,
                },
            },
        ),
    }
}
