//! Loading goalloc's eBPF programs, attaching probe plans to chosen
//! processes, and reading the per-process counters back.
//!
//! Probes are attached per process (`UProbeScope::OneProcess`): the kernel
//! writes the breakpoint into that process's memory only, so another process
//! running the same executable keeps its native speed. Each attachment has
//! its own probe-site slots (cookies).

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::Path,
};

use agent_common::{
    Counter, Counters, EXP_TABLE_SHIFT, EXP_TABLE_SIZE, ProbeSite, ProcStats, SampleKey,
    SampleValue, Sampler, names,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{
        ProgramError, RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
    },
};

use gobinary::plan::{ProbeKind, ProbePlan};

use crate::{procfs::BinaryKey, system};

/// The compiled eBPF object, built by build.rs from agent-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/goalloc.bpf.o"));

const PROGRAMS: [ProbeKind; 3] = [
    ProbeKind::Alloc,
    ProbeKind::GoroutineCreate,
    ProbeKind::GoroutineExit,
];

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    System(#[from] system::SystemError),
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel rejected eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching to {function} in {path}: {source}")]
    Attach {
        function: String,
        path: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("polling the process event ring buffer: {0}")]
    Poll(#[source] std::io::Error),
    #[error("the probe-site table is full ({0} sites): too many probed processes")]
    SitesFull(u32),
    #[error("pid 0 cannot be probed")]
    NoProcess,
}

impl EngineError {
    /// The process to attach to was gone (exited while being attached):
    /// not a failure of goalloc or of the binary.
    pub fn is_process_gone(&self) -> bool {
        let EngineError::Attach { source, .. } = self else {
            return false;
        };
        match source.as_ref() {
            ProgramError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ESRCH),
            _ => false,
        }
    }
}

/// One process's probes on one executable: what an attachment is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentId {
    pub binary: BinaryKey,
    pub pid: u32,
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> EngineError {
    move |source| EngineError::Map {
        map,
        source: Box::new(source),
    }
}

struct Attachment {
    links: Vec<(ProbeKind, UProbeLinkId)>,
    sites: Vec<u32>,
}

/// A process's probes taken out of the engine, to be detached off the hot
/// path: the kernel takes about 0.1 s to unregister each uprobe, one at a time.
pub struct Detached {
    pub id: AttachmentId,
    links: Vec<UProbeLink>,
    sites: Vec<u32>,
}

impl Detached {
    /// Detaches (slow); returns the probe-site slots, free again only now
    /// that no probe can read them.
    pub fn finish(self) -> (AttachmentId, Vec<u32>) {
        drop(self.links);
        (self.id, self.sites)
    }
}

/// What one `attach` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachSummary {
    pub probes: usize,
    pub newly_attached: bool,
}

/// The loaded programs, their maps (typed handles, taken once at load) and
/// every process they are attached to.
pub struct Engine {
    ebpf: Ebpf,
    proc_stats: PerCpuHashMap<MapData, u32, ProcStats>,
    sites: Array<MapData, ProbeSite>,
    counters: PerCpuArray<MapData, u64>,
    samplers: PerCpuHashMap<MapData, u32, Sampler>,
    samples: PerCpuHashMap<MapData, SampleKey, SampleValue>,
    /// Handed out once by [`Engine::start_process_events`].
    events: Option<RingBuf<MapData>>,
    attached: HashMap<AttachmentId, Attachment>,
    free_sites: Vec<u32>,
}

/// Takes map `name` out of the object as a typed handle.
fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EngineError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(EngineError::Map {
        map: name,
        source: Box::new(MapError::InvalidName {
            name: name.to_string(),
        }),
    })?;
    T::try_from(map).map_err(map_err(name))
}

impl Engine {
    /// Checks privileges and kernel support, then loads the programs.
    pub fn load() -> Result<Engine, EngineError> {
        system::preflight()?;
        system::raise_fd_limit();
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| EngineError::Load(Box::new(e)))?;
        for kind in PROGRAMS {
            let name = kind.program();
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or(EngineError::Program {
                    program: name,
                    source: Box::new(ProgramError::UnexpectedProgramType),
                })?
                .try_into()
                .map_err(|e| EngineError::Program {
                    program: name,
                    source: Box::new(e),
                })?;
            prog.load().map_err(|e| EngineError::Program {
                program: name,
                source: Box::new(e),
            })?;
        }
        let mut table: Array<MapData, u32> = take_map(&mut ebpf, names::MAP_EXP_TABLE)?;
        for (i, v) in exp_table().into_iter().enumerate() {
            table
                .set(i as u32, v, 0)
                .map_err(map_err(names::MAP_EXP_TABLE))?;
        }
        Ok(Engine {
            samplers: take_map(&mut ebpf, names::MAP_SAMPLERS)?,
            samples: take_map(&mut ebpf, names::MAP_SAMPLES)?,
            proc_stats: take_map(&mut ebpf, names::MAP_PROC_STATS)?,
            sites: take_map(&mut ebpf, names::MAP_SITES)?,
            counters: take_map(&mut ebpf, names::MAP_COUNTERS)?,
            events: Some(take_map(&mut ebpf, names::MAP_EVENTS)?),
            ebpf,
            attached: HashMap::new(),
            free_sites: (0..agent_common::MAX_SITES).rev().collect(),
        })
    }

    /// Attaches `plan` to process `id.pid` running the file at `path` (whose
    /// identity is `id.binary`). Only that process gets the breakpoints.
    /// Nothing half-attached stays behind on error.
    pub fn attach(
        &mut self,
        id: AttachmentId,
        path: &Path,
        plan: &ProbePlan,
    ) -> Result<AttachSummary, EngineError> {
        if let Some(a) = self.attached.get(&id) {
            return Ok(AttachSummary {
                probes: a.links.len(),
                newly_attached: false,
            });
        }
        let mut att = Attachment {
            links: Vec::new(),
            sites: Vec::new(),
        };
        let pid = NonZeroU32::new(id.pid).ok_or(EngineError::NoProcess)?;
        let result = self.attach_all(path, plan, pid, &mut att);
        if let Err(e) = result {
            self.release(att);
            return Err(e);
        }
        let probes = att.links.len();
        self.attached.insert(id, att);
        Ok(AttachSummary {
            probes,
            newly_attached: true,
        })
    }

    fn attach_all(
        &mut self,
        path: &Path,
        plan: &ProbePlan,
        pid: NonZeroU32,
        att: &mut Attachment,
    ) -> Result<(), EngineError> {
        for probe in &plan.probes {
            let index = self
                .free_sites
                .pop()
                .ok_or(EngineError::SitesFull(agent_common::MAX_SITES))?;
            att.sites.push(index);
            self.set_site(index, probe.site)?;
            let prog = self.program(probe.kind);
            let link = prog
                .attach(
                    UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
                        cookie: Some(u64::from(index)),
                    },
                    path,
                    UProbeScope::OneProcess(pid),
                )
                .map_err(|e| EngineError::Attach {
                    function: probe.function.clone(),
                    path: path.display().to_string(),
                    source: Box::new(e),
                })?;
            att.links.push((probe.kind, link));
        }
        Ok(())
    }

    fn program(&mut self, kind: ProbeKind) -> &mut UProbe {
        // Loaded and type-checked in `load`.
        self.ebpf
            .program_mut(kind.program())
            .and_then(|p| <&mut UProbe>::try_from(p).ok())
            .expect("program loaded at start")
    }

    fn set_site(&mut self, index: u32, site: ProbeSite) -> Result<(), EngineError> {
        self.sites
            .set(index, site, 0)
            .map_err(map_err(names::MAP_SITES))
    }

    fn release(&mut self, att: Attachment) {
        for (kind, link) in att.links {
            if let Err(e) = self.program(kind).detach(link) {
                log::warn!("detaching a {} probe: {e}", kind.program());
            }
        }
        self.free_sites.extend(att.sites);
    }

    /// Takes the probes of `id` out of the engine without detaching them yet
    /// (see [`Detached`]).
    pub fn take_attachment(&mut self, id: &AttachmentId) -> Option<Detached> {
        let att = self.attached.remove(id)?;
        let mut links = Vec::with_capacity(att.links.len());
        for (kind, id) in att.links {
            match self.program(kind).take_link(id) {
                Ok(link) => links.push(link),
                Err(e) => log::warn!("taking a {} probe link: {e}", kind.program()),
            }
        }
        Some(Detached {
            id: *id,
            links,
            sites: att.sites,
        })
    }

    /// Returns probe-site slots of a finished [`Detached`].
    pub fn release_sites(&mut self, sites: Vec<u32>) {
        self.free_sites.extend(sites);
    }

    /// Detaches every probe of the attachment `id` (slow: see [`Detached`]).
    pub fn detach(&mut self, id: &AttachmentId) -> bool {
        match self.attached.remove(id) {
            Some(att) => {
                self.release(att);
                true
            }
            None => false,
        }
    }

    pub fn is_attached(&self, id: &AttachmentId) -> bool {
        self.attached.contains_key(id)
    }

    /// Number of distinct executables with probes in some process.
    pub fn attached_binaries(&self) -> usize {
        let binaries: HashSet<BinaryKey> = self.attached.keys().map(|id| id.binary).collect();
        binaries.len()
    }

    /// Number of processes with probes.
    pub fn attached_processes(&self) -> usize {
        self.attached.len()
    }

    /// Number of live uprobe links.
    pub fn attached_probes(&self) -> usize {
        self.attached.values().map(|a| a.links.len()).sum()
    }

    /// Starts the exec/exit tracepoints and hands over their event ring
    /// buffer (the node agent's process tracking). Call once.
    pub fn start_process_events(&mut self) -> Result<RingBuf<MapData>, EngineError> {
        for (name, tracepoint) in [
            (names::PROG_EXEC, "sched_process_exec"),
            (names::PROG_EXIT, "sched_process_exit"),
        ] {
            let prog: &mut RawTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or(EngineError::Program {
                    program: name,
                    source: Box::new(ProgramError::UnexpectedProgramType),
                })?
                .try_into()
                .map_err(|e| EngineError::Program {
                    program: name,
                    source: Box::new(e),
                })?;
            prog.load()
                .and_then(|()| prog.attach(tracepoint).map(|_| ()))
                .map_err(|e| EngineError::Program {
                    program: name,
                    source: Box::new(e),
                })?;
        }
        self.events.take().ok_or(EngineError::Map {
            map: names::MAP_EVENTS,
            source: Box::new(MapError::InvalidName {
                name: "events already started".into(),
            }),
        })
    }

    /// The counters of one process since its first probe hit, summed over CPUs.
    pub fn stats(&self, tgid: u32) -> Result<Option<ProcStats>, EngineError> {
        match self.proc_stats.get(&tgid, 0) {
            Ok(values) => Ok(Some(sum(values.iter()))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::MAP_PROC_STATS)(e)),
        }
    }

    /// Every process with counters.
    pub fn all_stats(&self) -> Result<Vec<(u32, ProcStats)>, EngineError> {
        let mut out = Vec::new();
        for item in self.proc_stats.iter() {
            match item {
                Ok((tgid, values)) => out.push((tgid, sum(values.iter()))),
                // An entry removed while iterating.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(names::MAP_PROC_STATS)(e)),
            }
        }
        Ok(out)
    }

    /// Forgets a process's counters and stops sampling it. Called when it
    /// exits, so a reused PID starts from zero. Its samples stay for the
    /// profile that asked for them ([`Engine::take_samples`]).
    pub fn forget_process(&mut self, tgid: u32) -> Result<(), EngineError> {
        self.stop_sampling(tgid)?;
        match self.proc_stats.remove(&tgid) {
            Err(e) if !is_not_found(&e) => Err(map_err(names::MAP_PROC_STATS)(e)),
            _ => Ok(()),
        }
    }

    /// Starts sampling the allocations of `tgid` (which must have the
    /// allocation probes) every `rate` bytes on average; 1 samples each.
    pub fn start_sampling(&mut self, tgid: u32, rate: u64) -> Result<(), EngineError> {
        let io = |call: &'static str| {
            move |io_error: std::io::Error| {
                map_err(names::MAP_SAMPLERS)(MapError::SyscallError(aya::sys::SyscallError {
                    call,
                    io_error,
                }))
            }
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io("nr_cpus")(e))?;
        // remaining 0: each CPU draws its first distance at its first hit.
        let sampler = Sampler {
            rate: rate.max(1),
            remaining: 0,
        };
        let values = PerCpuValues::try_from(vec![sampler; cpus]).map_err(io("per-cpu values"))?;
        self.samplers
            .insert(tgid, values, 0)
            .map_err(map_err(names::MAP_SAMPLERS))
    }

    /// Stops sampling `tgid` (nothing happens if it was not sampled).
    pub fn stop_sampling(&mut self, tgid: u32) -> Result<(), EngineError> {
        match self.samplers.remove(&tgid) {
            Err(e) if !is_not_found(&e) => Err(map_err(names::MAP_SAMPLERS)(e)),
            _ => Ok(()),
        }
    }

    /// Whether `tgid` is being sampled.
    pub fn is_sampling(&self, tgid: u32) -> bool {
        self.samplers.get(&tgid, 0).is_ok()
    }

    /// Takes the samples of the processes in `tgids` out of the kernel
    /// table, summed over CPUs.
    pub fn take_samples(
        &mut self,
        tgids: &HashSet<u32>,
    ) -> Result<Vec<(SampleKey, SampleValue)>, EngineError> {
        let mut keys = Vec::new();
        for key in self.samples.keys() {
            match key {
                Ok(k) if tgids.contains(&k.tgid) => keys.push(k),
                Ok(_) => {}
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(names::MAP_SAMPLES)(e)),
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            // A hit between the read and the delete is lost; profiles are
            // estimates, and the window is microseconds.
            let values = match self.samples.get(&k, 0) {
                Ok(v) => v,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(names::MAP_SAMPLES)(e)),
            };
            let mut total = SampleValue::default();
            for v in values.iter() {
                total.count += v.count;
                total.bytes += v.bytes;
            }
            if let Err(e) = self.samples.remove(&k)
                && !is_not_found(&e)
            {
                return Err(map_err(names::MAP_SAMPLES)(e));
            }
            if total.count > 0 {
                out.push((k, total));
            }
        }
        Ok(out)
    }

    /// The eBPF self-counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, EngineError> {
        let mut out = Counters::default();
        for c in Counter::ALL {
            let values = self
                .counters
                .get(&c.index(), 0)
                .map_err(map_err(names::MAP_COUNTERS))?;
            out.0[c as usize] = values.iter().sum();
        }
        Ok(out)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Dropping the programs would detach too; doing it explicitly keeps
        // the order obvious and reports failures.
        let ids: Vec<_> = self.attached.keys().copied().collect();
        for id in ids {
            self.detach(&id);
        }
    }
}

/// Deleting a missing key reports ENOENT as a syscall error, not `KeyNotFound`.
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// `-ln(u)` at the midpoints `u = (i + 0.5) / N` of N equal slices of (0, 1),
/// in fixed point: a uniform random index into it draws an exponential
/// variable of mean 1 (the eBPF side has no floating point).
pub fn exp_table() -> Vec<u32> {
    let n = f64::from(EXP_TABLE_SIZE);
    (0..EXP_TABLE_SIZE)
        .map(|i| {
            let u = (f64::from(i) + 0.5) / n;
            (-u.ln() * f64::from(1u32 << EXP_TABLE_SHIFT)).round() as u32
        })
        .collect()
}

fn sum<'a>(values: impl Iterator<Item = &'a ProcStats>) -> ProcStats {
    let mut total = ProcStats::ZERO;
    for v in values {
        total.accumulate(v);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's draws are exponential with mean 1: mean, median (ln 2)
    /// and the chance of exceeding 3 (e^-3) within what its resolution allows.
    #[test]
    fn exponential_table() {
        let t = exp_table();
        assert_eq!(t.len(), EXP_TABLE_SIZE as usize);
        let one = f64::from(1u32 << EXP_TABLE_SHIFT);
        let mean = t.iter().map(|&v| f64::from(v)).sum::<f64>() / t.len() as f64 / one;
        assert!((mean - 1.0).abs() < 0.001, "mean {mean}");
        let mut sorted = t.clone();
        sorted.sort_unstable();
        let median = f64::from(sorted[t.len() / 2]) / one;
        assert!(
            (median - std::f64::consts::LN_2).abs() < 0.001,
            "median {median}"
        );
        let over3 = t.iter().filter(|&&v| f64::from(v) > 3.0 * one).count() as f64;
        assert!((over3 / t.len() as f64 - (-3f64).exp()).abs() < 0.001);
        assert!(t.iter().all(|&v| v > 0));
    }

    /// The eBPF crate cannot use the shared names in its attributes: check
    /// the compiled object against them.
    #[test]
    fn object_has_the_shared_names() {
        let obj = aya_obj::Object::parse(OBJECT).unwrap();
        for map in names::MAPS {
            assert!(
                obj.maps.contains_key(map),
                "map {map} missing from the object"
            );
        }
        for prog in names::PROGRAMS {
            assert!(
                obj.programs.contains_key(prog),
                "program {prog} missing from the object"
            );
        }
        assert_eq!(
            obj.maps[names::MAP_COUNTERS].max_entries(),
            Counter::COUNT,
            "COUNTERS has one slot per Counter"
        );
    }
}
