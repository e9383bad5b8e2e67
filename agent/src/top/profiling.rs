//! The registry side of `p` in `goalloc top`: a short allocation profile of
//! one process, run by the collector thread (which owns the [`Registry`])
//! between its reads of everyone's counters.
//!
//! A [`Session`] puts the allocation probes on that process alone, samples
//! it at [`PROFILE_RATE`] for [`PROFILE_DURATION`] (taking the samples out
//! of the kernel table every second, as `goalloc profile` does), then takes
//! the probes off and ranks what was sampled. Every way a session ends
//! (finished, cancelled, its process gone, an error, top quitting) goes
//! through [`Session::end`], so no probe or sampler is left behind.

use std::{collections::HashSet, time::Duration};

use tokio::time::Instant;

use super::model::{PROFILE_DURATION, PROFILE_RATE, PROFILE_ROWS, ProfileReport};
use crate::{
    ebpf::EngineError,
    profile::{Collector, table},
    registry::Registry,
};

/// Interval at which samples are taken out of the kernel table (and the
/// view told how the profile goes).
const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// One running profile.
pub struct Session {
    pub id: u64,
    pub pid: u32,
    collector: Collector,
    /// `pid` alone, as `take_samples` wants it.
    pids: HashSet<u32>,
    deadline: Instant,
    next_drain: Instant,
}

impl Session {
    /// Puts the probes on `pid` and starts sampling it; why not, as one
    /// line, when it cannot be profiled.
    pub fn begin(registry: &mut Registry, id: u64, pid: u32) -> Result<Session, String> {
        match registry.profile_begin(pid) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(why),
            Err(e) => return Err(e.to_string()),
        }
        let mut collector = Collector::new(PROFILE_RATE);
        let started = (|| -> Result<(), String> {
            collector.add(pid).map_err(|e| e.to_string())?;
            collector.start(registry.counters().map_err(|e| e.to_string())?);
            registry
                .engine_mut()
                .start_sampling(pid, collector.rate())
                .map_err(|e| e.to_string())
        })();
        let now = Instant::now();
        let mut session = Session {
            id,
            pid,
            collector,
            pids: HashSet::from([pid]),
            deadline: now + PROFILE_DURATION,
            next_drain: now + DRAIN_EVERY,
        };
        if let Err(why) = started {
            // The probes are on already: off again.
            let _ = session.end(registry);
            return Err(why);
        }
        Ok(session)
    }

    /// When [`Session::drain`] is due next.
    pub fn next_drain(&self) -> Instant {
        self.next_drain
    }

    /// Time left until the end.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Allocations sampled so far.
    pub fn sampled(&self) -> u64 {
        self.collector.sampled()
    }

    /// Takes the samples so far out of the kernel table, so that it never
    /// fills with this profile's stacks.
    pub fn drain(&mut self, registry: &mut Registry) -> Result<(), EngineError> {
        self.collector
            .absorb(registry.engine_mut().take_samples(&self.pids)?);
        // The last drain is at the deadline, not up to a second after it.
        self.next_drain = (self.next_drain + DRAIN_EVERY).min(self.deadline);
        Ok(())
    }

    /// Whether the profile is over: its time is up or its process is gone.
    pub fn is_over(&self, registry: &Registry) -> bool {
        Instant::now() >= self.deadline || !registry.tracks(self.pid)
    }

    /// Ends the profile and ranks what it sampled.
    pub fn finish(mut self, registry: &mut Registry) -> Result<ProfileReport, String> {
        let exited = !registry.tracks(self.pid);
        if exited {
            self.collector.mark_exited(self.pid);
        }
        self.end(registry).map_err(|e| e.to_string())?;
        let profile = self.collector.profile(registry.counters().ok());
        // What the profile says of itself (the process's executable, its
        // exit, samples lost) is what the pane's reader needs too; one
        // clause a line, so that a narrow pane cuts less.
        let notes = profile
            .comments
            .iter()
            .filter_map(|&i| profile.string_table.get(usize::try_from(i).ok()?))
            .flat_map(|c| c.split("; "))
            .map(str::to_string)
            .collect();
        Ok(ProfileReport {
            pid: self.pid,
            // It ran the time asked for; the few milliseconds of starting
            // and stopping are not news.
            sampled_for: if exited {
                self.collector.elapsed()
            } else {
                PROFILE_DURATION
            },
            rate: self.collector.rate(),
            exited,
            notes,
            tables: table::top_tables(&profile, PROFILE_ROWS),
        })
    }

    /// Drops the profile (cancelled, or top is quitting).
    pub fn cancel(mut self, registry: &mut Registry) {
        if let Err(e) = self.end(registry) {
            log::warn!("pid {}: ending the profile: {e}", self.pid);
        }
    }

    /// Sampling off, the last samples taken, the probes off: each step
    /// tried whatever the ones before it did.
    fn end(&mut self, registry: &mut Registry) -> Result<(), EngineError> {
        let stopped = registry.engine_mut().stop_sampling(self.pid);
        self.collector.stop();
        // Also what a cancelled profile sampled: it must not join the next.
        let taken = registry
            .engine_mut()
            .take_samples(&self.pids)
            .map(|t| self.collector.absorb(t));
        let ended = registry.profile_end(self.pid);
        stopped.and(taken).and(ended)
    }
}
