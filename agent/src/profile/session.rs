//! One profile's life against the registry, shared by its three users
//! (`goalloc profile`, the agent's `/debug/pprof/allocs`, `p` in `goalloc
//! top`): probes on the chosen processes (only them, unless they have them
//! already), sampling on, samples taken out of the kernel table as they
//! come, exits noted, and at the end sampling and the probes put on for the
//! profile off again, whatever happened before.
//!
//! Every method takes the registry for one short step, so a caller that
//! shares it behind a lock holds the lock only that long.

use std::collections::HashSet;

use agent_common::Counters;

use super::{Collector, Profile, collect::CollectError};
use crate::{ebpf::EngineError, registry::Registry};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("pid {0} is not a Go process goalloc follows (gone, not Go, or not readable)")]
    NotFollowed(u32),
    #[error("pid {pid} cannot be profiled: {why}")]
    CannotProbe { pid: u32, why: String },
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl SessionError {
    /// A mistake of the request (the process), not of goalloc.
    pub fn is_bad_request(&self) -> bool {
        !matches!(self, SessionError::Engine(_))
    }
}

/// A running profile.
#[derive(Debug)]
pub struct Session {
    collector: Collector,
    pids: HashSet<u32>,
    /// Processes seen gone.
    exited: HashSet<u32>,
    ended: bool,
}

impl Session {
    /// Puts the probes on each of `pids` (unless it has them) and starts
    /// sampling it every `rate` bytes on average. Nothing stays behind on
    /// error.
    pub fn begin(
        registry: &mut Registry,
        pids: &[u32],
        rate: u64,
    ) -> Result<Session, SessionError> {
        let mut session = Session {
            collector: Collector::new(rate),
            pids: HashSet::new(),
            exited: HashSet::new(),
            ended: false,
        };
        let started = session.start(registry, pids);
        if started.is_err() {
            let _ = session.end(registry);
        }
        started.map(|()| session)
    }

    fn start(&mut self, registry: &mut Registry, pids: &[u32]) -> Result<(), SessionError> {
        for &pid in pids {
            if !registry.tracks(pid) {
                return Err(SessionError::NotFollowed(pid));
            }
            // What it runs, read before it can exit.
            self.collector.add(pid)?;
        }
        for &pid in pids {
            // From here `end` undoes it.
            self.pids.insert(pid);
            if let Err(why) = registry.profile_begin(pid)? {
                return Err(SessionError::CannotProbe { pid, why });
            }
        }
        self.collector.start(registry.counters()?);
        for &pid in pids {
            registry
                .engine_mut()
                .start_sampling(pid, self.collector.rate())?;
        }
        Ok(())
    }

    pub fn rate(&self) -> u64 {
        self.collector.rate()
    }

    pub fn pids(&self) -> &HashSet<u32> {
        &self.pids
    }

    /// Allocations sampled so far (taken out of the kernel).
    pub fn sampled(&self) -> u64 {
        self.collector.sampled()
    }

    /// Notes the processes that have gone since the last call; returns
    /// whether every one has.
    pub fn note_exits(&mut self, registry: &Registry) -> bool {
        for &pid in &self.pids {
            if !registry.tracks(pid) && self.exited.insert(pid) {
                self.collector.mark_exited(pid);
            }
        }
        self.exited.len() == self.pids.len()
    }

    /// Takes the samples so far out of the kernel table (so it never fills
    /// with one profile's stacks).
    pub fn drain(&mut self, registry: &mut Registry) -> Result<(), EngineError> {
        let taken = registry.engine_mut().take_samples(&self.pids)?;
        self.collector.absorb(taken);
        Ok(())
    }

    /// Sampling off, the last samples taken, the probes put on for the
    /// profile off; each step tried whatever the ones before did. Returns
    /// the eBPF self-counters at the end (what the profile lost). Calling
    /// it again does nothing.
    pub fn end(&mut self, registry: &mut Registry) -> Result<Option<Counters>, EngineError> {
        if self.ended {
            return Ok(None);
        }
        self.ended = true;
        self.note_exits(registry);
        let mut result = Ok(());
        for &pid in &self.pids {
            result = result.and(registry.engine_mut().stop_sampling(pid));
        }
        self.collector.stop();
        result = result.and(self.drain(registry));
        for &pid in &self.pids {
            result = result.and(registry.profile_end(pid));
        }
        let counters = registry.counters().ok();
        result.map(|()| counters)
    }

    /// The profile of what was sampled (after [`Session::end`]).
    pub fn profile(&self, counters: Option<Counters>) -> Profile {
        self.collector.profile(counters)
    }

    /// How long sampling ran.
    pub fn elapsed(&self) -> std::time::Duration {
        self.collector.elapsed()
    }
}
