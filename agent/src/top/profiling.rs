//! The registry side of `p` in `goalloc top`: a short allocation profile of
//! one process, run by the collector thread (which owns the [`Registry`])
//! between its reads of everyone's counters.
//!
//! A [`Session`] (the shared `profile::session` with top's schedule) puts
//! the allocation probes on that process alone, samples it at
//! [`PROFILE_RATE`] for [`PROFILE_DURATION`] (taking the samples out of the
//! kernel table every second), then takes the probes off and ranks what was
//! sampled. Every way a session ends (finished, cancelled, its process gone,
//! an error, top quitting) goes through [`Session::finish`] or
//! [`Session::cancel`], so no probe or sampler is left behind.

use std::time::Duration;

use tokio::time::Instant;

use super::model::{PROFILE_DURATION, PROFILE_RATE, PROFILE_ROWS, ProfileReport};
use crate::{
    ebpf::EngineError,
    profile::{session, table},
    registry::Registry,
};

/// Interval at which samples are taken out of the kernel table (and the
/// view told how the profile goes).
const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// One running profile.
pub struct Session {
    pub id: u64,
    pub pid: u32,
    inner: session::Session,
    deadline: Instant,
    next_drain: Instant,
}

impl Session {
    /// Puts the probes on `pid` and starts sampling it; why not, as one
    /// line, when it cannot be profiled.
    pub fn begin(registry: &mut Registry, id: u64, pid: u32) -> Result<Session, String> {
        let inner =
            session::Session::begin(registry, &[pid], PROFILE_RATE).map_err(|e| e.to_string())?;
        let now = Instant::now();
        Ok(Session {
            id,
            pid,
            inner,
            deadline: now + PROFILE_DURATION,
            next_drain: now + DRAIN_EVERY,
        })
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
        self.inner.sampled()
    }

    /// Takes the samples so far out of the kernel table, so that it never
    /// fills with this profile's stacks.
    pub fn drain(&mut self, registry: &mut Registry) -> Result<(), EngineError> {
        self.inner.drain(registry)?;
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
        let exited = self.inner.note_exits(registry);
        let counters = self.inner.end(registry).map_err(|e| e.to_string())?;
        let profile = self.inner.profile(counters);
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
                self.inner.elapsed()
            } else {
                PROFILE_DURATION
            },
            rate: self.inner.rate(),
            exited,
            notes,
            tables: table::top_tables(&profile, PROFILE_ROWS),
        })
    }

    /// Drops the profile (cancelled, or top is quitting).
    pub fn cancel(mut self, registry: &mut Registry) {
        if let Err(e) = self.inner.end(registry) {
            log::warn!("pid {}: ending the profile: {e}", self.pid);
        }
    }
}
