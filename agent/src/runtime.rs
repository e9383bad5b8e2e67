//! The always-on source: each Go process's own heap, GC and goroutine
//! counters, read from its memory when a view asks (a scrape, a `watch`
//! interval). No probe, no signal, no stop: the process does not notice.
//!
//! The runtime updates these counters while they are read, and between its
//! own cache flushes a span is counted whole when handed out and the unused
//! rest taken back later, so two reads can go backwards. What is exported
//! never does: a counter that would is held at its last value and the
//! correction is counted. A read that fails its plausibility checks is
//! skipped (the last figures stay) and counted.

use std::collections::BTreeMap;

use gobinary::runtime::{ProcessCounters, ReadError, RuntimeCounters, RuntimeProbe};

/// Why there are no figures for a process right now: a short reason (a
/// metric label) and a one-line explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub reason: &'static str,
    pub detail: String,
}

/// What the always-on source did, over all processes, since the start.
#[derive(Debug, Default, Clone)]
pub struct ReadStats {
    /// Reads by outcome: `ok`, `skipped` (implausible; the last figures
    /// stay), `failed` (by reason in `failures`).
    pub ok: u64,
    pub skipped: u64,
    pub failures: BTreeMap<&'static str, u64>,
    /// Reads repeated because the counters moved while being read.
    pub retries: u64,
    /// Exported counters held because a read was below what was exported.
    pub corrections: u64,
}

/// One process's counters, as exported.
pub struct RuntimeSource {
    counters: ProcessCounters,
    exported: Option<RuntimeCounters>,
}

impl std::fmt::Debug for RuntimeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeSource")
            .field("counters", &self.counters)
            .finish()
    }
}

/// The short reason of a read error.
pub fn reason_of(e: &ReadError) -> &'static str {
    match e {
        ReadError::Gone => "exited",
        ReadError::AccessDenied => "access_denied",
        ReadError::Implausible(_) => "implausible",
        ReadError::Maps(_) => "no_mapping",
        ReadError::Io(_) => "io",
    }
}

impl RuntimeSource {
    /// Binds `probe` (one executable's layout and addresses) to process `pid`.
    pub fn attach(probe: &RuntimeProbe, pid: u32) -> Result<RuntimeSource, Unavailable> {
        probe
            .attach(pid)
            .map(|counters| RuntimeSource {
                counters,
                exported: None,
            })
            .map_err(|e| Unavailable {
                reason: reason_of(&e),
                detail: e.to_string(),
            })
    }

    /// Reads the process's counters now, keeping what is exported monotonic.
    pub fn read(&mut self, stats: &mut ReadStats) -> Result<RuntimeCounters, Unavailable> {
        match self.counters.read() {
            Ok(new) => {
                stats.ok += 1;
                stats.retries += u64::from(new.retries);
                let merged = match &self.exported {
                    Some(prev) => {
                        let (merged, corrected) = hold_monotonic(prev, new);
                        stats.corrections += u64::from(corrected);
                        merged
                    }
                    None => new,
                };
                self.exported = Some(merged.clone());
                Ok(merged)
            }
            Err(ReadError::Implausible(detail)) if self.exported.is_some() => {
                stats.skipped += 1;
                log::debug!("skipped an implausible read: {detail}");
                Ok(self.exported.clone().expect("checked above"))
            }
            Err(e) => {
                *stats.failures.entry(reason_of(&e)).or_default() += 1;
                Err(Unavailable {
                    reason: reason_of(&e),
                    detail: e.to_string(),
                })
            }
        }
    }

    /// The last figures exported, if any.
    pub fn last(&self) -> Option<&RuntimeCounters> {
        self.exported.as_ref()
    }
}

/// `new`, with every cumulative counter held at `prev` where it went below.
/// Gauges (live heap, heap in use, goal, goroutines) are taken as read.
/// Returns whether any counter was held.
pub fn hold_monotonic(prev: &RuntimeCounters, mut new: RuntimeCounters) -> (RuntimeCounters, bool) {
    let mut held = false;
    let mut hold = |p: u64, n: &mut u64| {
        if *n < p {
            *n = p;
            held = true;
        }
    };
    hold(prev.mallocs, &mut new.mallocs);
    hold(prev.frees, &mut new.frees);
    hold(prev.total_alloc, &mut new.total_alloc);
    hold(prev.freed_bytes, &mut new.freed_bytes);
    for (p, n) in prev.alloc_sizes.iter().zip(new.alloc_sizes.iter_mut()) {
        hold(*p, n);
    }
    if new.num_gc < prev.num_gc {
        new.num_gc = prev.num_gc;
        held = true;
    }
    (new, held)
}

#[cfg(test)]
mod tests {
    use agent_common::HIST_BUCKETS;

    use super::*;

    fn counters(mallocs: u64, frees: u64, num_gc: u32) -> RuntimeCounters {
        let mut alloc_sizes = [0; HIST_BUCKETS];
        alloc_sizes[4] = mallocs;
        RuntimeCounters {
            mallocs,
            frees,
            total_alloc: mallocs * 16,
            freed_bytes: frees * 16,
            heap_alloc: (mallocs - frees) * 16,
            heap_objects: mallocs - frees,
            heap_inuse: 8192,
            next_gc: 4 << 20,
            num_gc,
            goroutines: 3,
            alloc_sizes,
            consistent: true,
            retries: 0,
        }
    }

    #[test]
    fn counters_never_go_back_gauges_do() {
        let prev = counters(100, 50, 2);
        let (same, held) = hold_monotonic(&prev, counters(100, 50, 2));
        assert!(!held);
        assert_eq!(same, prev);

        // A flush took back part of a span: mallocs read lower than exported.
        let mut lower = counters(90, 60, 3);
        lower.goroutines = 1;
        let (out, held) = hold_monotonic(&prev, lower);
        assert!(held);
        assert_eq!(out.mallocs, 100);
        assert_eq!(out.alloc_sizes[4], 100);
        assert_eq!(out.frees, 60);
        assert_eq!(out.num_gc, 3);
        // Gauges as read.
        assert_eq!(out.heap_objects, 30);
        assert_eq!(out.goroutines, 1);

        let (out, held) = hold_monotonic(&prev, counters(100, 50, 1));
        assert!(held);
        assert_eq!(out.num_gc, 2);
    }
}
