//! The cost guard of the per-allocation probes: what they cost each probed
//! process, and when that is too much.
//!
//! The kernel counts every probe hit per process, and apart the hits at sites
//! it single-steps (`ProcStats::hits`, `stepped_hits`). The cost of a hit is
//! taken from its placement, not measured at start: the trap dominates (a
//! no-op program costs the same as ours), and what the trap costs depends on
//! whether the kernel emulates the probed instruction (one trap) or
//! single-steps it out of line (a second trap and a fault-return path).
//! Measured on the development VM (`cargo xtask bench`, notes in
//! `shared/notes/go-runtime-probing.md`): 0.5-1 us per emulated hit, 10-20
//! us per single-stepped hit. The estimates below take the upper end of the
//! emulated range and the middle of the stepped one: the guard should act
//! early rather than late, and a measurement at start would time our own
//! process, not the probed one's cache and CPU state. The estimate is
//! approximate by design; it is exported as such
//! (`goalloc_probe_cpu_seconds_total`, "estimated").

use std::time::Instant;

use agent_common::ProcStats;

/// Estimated CPU time of one hit at an emulated site (`push`, `nop`, direct
/// branch), in seconds.
pub const EMULATED_HIT_SECONDS: f64 = 1.0e-6;
/// Estimated CPU time of one hit at a single-stepped site, in seconds.
pub const STEPPED_HIT_SECONDS: f64 = 15.0e-6;

/// Default budget: 2% of one CPU per probed process.
pub const DEFAULT_BUDGET: f64 = 0.02;

/// Shortest window over which a rate is judged: a burst of a few hundred
/// milliseconds (a GC cycle, start-up) is not a trend.
const MIN_WINDOW_SECONDS: f64 = 1.0;

/// Estimated CPU seconds a process spent in goalloc's probes, from its
/// kernel counters. Linear in the counters, so sums of processes add up.
pub fn cpu_seconds(stats: &ProcStats) -> f64 {
    let stepped = stats.stepped_hits.min(stats.hits);
    let emulated = stats.hits - stepped;
    emulated as f64 * EMULATED_HIT_SECONDS + stepped as f64 * STEPPED_HIT_SECONDS
}

/// The guard's view of one probed process: the cost at the start of the
/// current window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    since: Instant,
    cpu: f64,
}

impl Window {
    /// A window starting now at `stats`.
    pub fn start(stats: &ProcStats) -> Window {
        Window {
            since: Instant::now(),
            cpu: cpu_seconds(stats),
        }
    }

    /// Judges the window ending now at `stats` against `budget` (a fraction
    /// of one CPU). Returns the rate once the window is long enough to judge
    /// (and starts the next one); `None` while it is too short.
    pub fn close(&mut self, stats: &ProcStats) -> Option<f64> {
        let elapsed = self.since.elapsed().as_secs_f64();
        if elapsed < MIN_WINDOW_SECONDS {
            return None;
        }
        let cpu = cpu_seconds(stats);
        // Counters reset by an exec start a new window from zero.
        let spent = if cpu >= self.cpu { cpu - self.cpu } else { cpu };
        *self = Window {
            since: Instant::now(),
            cpu,
        };
        Some(spent / elapsed)
    }
}

/// Parses `--exact-budget`: a fraction of one CPU, `0.02`, or a percentage,
/// `2%`.
pub fn parse_budget(s: &str) -> Result<f64, String> {
    let (text, scale) = match s.strip_suffix('%') {
        Some(p) => (p, 0.01),
        None => (s, 1.0),
    };
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * scale),
        _ => Err(format!(
            "{s:?} is not a budget: a fraction of one CPU (0.02) or a percentage (2%)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_by_placement() {
        let mut s = ProcStats::ZERO;
        s.hits = 1_000_000;
        assert!((cpu_seconds(&s) - 1.0).abs() < 1e-9);
        s.stepped_hits = 1_000_000;
        assert!((cpu_seconds(&s) - 15.0).abs() < 1e-9);
        // A torn read never makes the estimate negative.
        s.stepped_hits = 2_000_000;
        assert!((cpu_seconds(&s) - 15.0).abs() < 1e-9);
    }

    #[test]
    fn budgets() {
        assert_eq!(parse_budget("0.02"), Ok(0.02));
        assert!((parse_budget("2%").unwrap() - 0.02).abs() < 1e-12);
        for bad in ["", "0", "-1", "x", "nan", "%"] {
            assert!(parse_budget(bad).is_err(), "{bad}");
        }
    }
}
