//! Project tasks: `cargo xtask <setup|fixtures|test|demo|bench>`.
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
    /// Measure the probe overhead on an allocation hot loop, per Go variant.
    Bench {
        /// Allocations per run.
        #[arg(long, default_value_t = 2_000_000)]
        n: u64,
        /// Allocations per run with `--placement entry` (much slower per hit).
        #[arg(long, default_value_t = 100_000)]
        entry_n: u64,
        /// Runs per measurement (the median is shown).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Every build flavour (stripped, PIE, cgo...) of every Go, not only
        /// the default build of each Go and experiment (5x longer).
        #[arg(long)]
        all_flavours: bool,
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
            n,
            entry_n,
            repeat,
            all_flavours,
        } => bench::bench(
            &ctx,
            &bench::Options {
                n,
                entry_n,
                repeat: repeat.max(1),
                all_flavours,
            },
        ),
    }
}
