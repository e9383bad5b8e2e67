//! `goalloc profile`: the allocation probes on the chosen processes for a
//! while, sampling as Go's `MemProfileRate` does, then one pprof profile
//! (and, with `--top`, the top call sites and types on the terminal).
//!
//! The same registry as `watch` finds and follows the processes; an exit
//! ends that process's part of the profile, Ctrl-C ends the profile early,
//! and either way what was sampled is written.

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use gobinary::plan::PlanOptions;
use tokio::signal::unix::{SignalKind, signal};

use super::{session::Session, table};
use crate::{
    ebpf::Engine,
    events::ProcessEvents,
    registry::Registry,
    select::ExactSelection,
    watch::{self, Target},
};

/// The longest profile: a trap per allocation is a real cost to the target.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Where the profile goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `-o FILE`.
    File(PathBuf),
    /// `-o -`.
    Stdout,
    /// No `-o`: a file named after the processes and the time, unless
    /// `--top` shows the tables instead.
    Default,
}

#[derive(Debug, Clone)]
pub struct ProfileOptions {
    pub pids: Vec<u32>,
    pub duration: Duration,
    pub rate: u64,
    pub output: Output,
    /// Print the top call sites and types.
    pub top: bool,
    pub plan: PlanOptions,
}

/// Interval at which samples are taken out of the kernel table, so it
/// never fills with one profile's stacks.
const DRAIN_EVERY: Duration = Duration::from_secs(1);

pub async fn run(opts: ProfileOptions) -> Result<()> {
    if opts.pids.is_empty() {
        bail!("nothing to profile: give --pid PID (repeatable)");
    }
    if opts.duration.is_zero() || opts.duration > MAX_DURATION {
        bail!(
            "--duration must be between 1s and {}s",
            MAX_DURATION.as_secs()
        );
    }
    let (scope, described) = watch::resolve(&Target::Pids(opts.pids.clone()), opts.plan, true)?;
    let mut engine = Engine::load()?;
    let mut events = ProcessEvents::start(&mut engine)?;
    // Nobody chosen for exact mode: the session puts the probes on.
    let mut registry = Registry::new(
        engine,
        opts.plan,
        scope,
        ExactSelection::none(),
        Duration::ZERO,
    );
    registry.sweep()?;
    let mut session = Session::begin(&mut registry, &opts.pids, opts.rate)?;
    for d in described {
        eprintln!("goalloc: profiling {d}");
    }
    eprintln!(
        "goalloc: sampling every {} on average for {} (Ctrl-C ends it early)",
        humanize_rate(session.rate()),
        humantime::format_duration(opts.duration)
    );

    let deadline = tokio::time::Instant::now() + opts.duration;
    let mut drain =
        tokio::time::interval_at(tokio::time::Instant::now() + DRAIN_EVERY, DRAIN_EVERY);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut ended_early = false;
    let run = async {
        loop {
            tokio::select! {
                batch = events.next_batch() => {
                    for ev in batch.context("reading process events")? {
                        registry.on_event(&ev)?;
                    }
                }
                _ = drain.tick() => {
                    session.drain(&mut registry)?;
                    registry.sweep()?;
                }
                _ = sigint.recv() => { ended_early = true; break }
                _ = sigterm.recv() => { ended_early = true; break }
                _ = tokio::time::sleep_until(deadline) => break,
            }
            if session.note_exits(&registry) {
                eprintln!("goalloc: every profiled process has exited");
                break;
            }
        }
        anyhow::Ok(())
    };
    let ran = run.await;
    // Whatever ended the loop: sampling and probes off before writing, so
    // the targets run at full speed again.
    let counters = session.end(&mut registry)?;
    ran?;
    drop(registry);
    let profile = session.profile(counters);
    let seconds = session.elapsed().as_secs_f64();
    eprintln!(
        "goalloc: {} allocations sampled in {seconds:.1} s{}",
        session.sampled(),
        if ended_early { " (ended early)" } else { "" }
    );

    if opts.top {
        let tables = table::top_tables(&profile, 20);
        let mut out = std::io::stdout().lock();
        table::render(&tables, &mut out)?;
        out.flush()?;
    }
    let path = match opts.output {
        Output::Default if opts.top => return Ok(()),
        Output::Default => Some(default_file_name(&opts.pids)),
        Output::File(p) => Some(p),
        Output::Stdout => None,
    };
    let bytes = super::collect::gzip(&profile)?;
    match path {
        Some(p) => {
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
            eprintln!(
                "goalloc: wrote {} (view it with: go tool pprof -http=: {})",
                p.display(),
                p.display()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()?;
        }
    }
    Ok(())
}

fn humanize_rate(rate: u64) -> String {
    match rate {
        r if r >= 1 << 20 && r % (1 << 20) == 0 => format!("{} MiB", r >> 20),
        r if r >= 1 << 10 && r % (1 << 10) == 0 => format!("{} KiB", r >> 10),
        r => format!("{r} bytes"),
    }
}

/// `goalloc-allocs-PID[-PID...]-YYYYMMDDTHHMMSS.pb.gz` in the current
/// directory (UTC).
fn default_file_name(pids: &[u32]) -> PathBuf {
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
        .trim_end_matches('Z')
        .to_string();
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    PathBuf::from(format!("goalloc-allocs-{}-{when}.pb.gz", pids.join("-")))
}

/// Parses a byte size: `512KiB`, `4096`, `1MiB`, `64k`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte size (e.g. 512KiB, 4096)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    let v = n
        .checked_mul(mult)
        .filter(|&v| (1..=1 << 40).contains(&v))
        .ok_or_else(|| format!("{s:?}: the rate must be between 1 byte and 1 TiB"))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert_eq!(parse_rate("1MiB"), Ok(1 << 20));
        assert_eq!(parse_rate("64k"), Ok(64 << 10));
        assert_eq!(parse_rate("1"), Ok(1));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("KiB").is_err());
        assert!(parse_rate("12 parsecs").is_err());
        assert!(parse_rate("99999999999999GiB").is_err());
    }

    #[test]
    fn default_name() {
        let n = default_file_name(&[12, 34]).display().to_string();
        assert!(n.starts_with("goalloc-allocs-12-34-20"), "{n}");
        assert!(n.ends_with(".pb.gz") && !n.contains(':'), "{n}");
    }
}
