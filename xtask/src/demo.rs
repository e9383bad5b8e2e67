//! `cargo xtask demo`: watch the demo Go service with goalloc.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::fixtures::{self, Variant};
use crate::setup;
use crate::util::{Ctx, run, signal, survive_sigint};

const DEMO_GO: &str = "1.27.3";

pub fn demo(ctx: &Ctx, goalloc_args: &[String]) -> Result<()> {
    setup::setup(ctx)?;
    let variant = Variant::plain(ctx, DEMO_GO);
    let (demo_bin, _) = fixtures::build(ctx, &variant, "demo")?;
    println!("demo: built {}", demo_bin.display());
    let goalloc = ctx.build_goalloc_release()?;

    survive_sigint();
    let mut demo = Command::new(&demo_bin)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", demo_bin.display()))?;
    let pid = demo.id();

    let mut cmd = Command::new(&goalloc);
    cmd.args(["watch", "--pid", &pid.to_string(), "--interval", "1s"]);
    if goalloc_args.is_empty() {
        cmd.args(["--duration", "30s"]);
    } else {
        cmd.args(goalloc_args);
    }
    println!("demo: {}", crate::util::show(&cmd));
    let result = run(&mut cmd);

    if demo.try_wait()?.is_none() {
        // Ignore a race with its own exit.
        let _ = signal(pid, libc::SIGKILL);
    }
    demo.wait()?;
    result
}
