//! Loading goalloc's eBPF programs, attaching probe plans to binaries, and
//! reading the per-process counters back.

use std::{collections::HashMap, path::Path};

use agent_common::{Counter, Counters, ProbeSite, ProcStats, names};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
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
    #[error("the probe-site table is full ({0} sites): too many distinct binaries")]
    SitesFull(u32),
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

/// A binary's probes taken out of the engine, to be detached off the hot
/// path: the kernel takes about 0.1 s to unregister each uprobe, one at a time.
pub struct Detached {
    pub key: BinaryKey,
    links: Vec<UProbeLink>,
    sites: Vec<u32>,
}

impl Detached {
    /// Detaches (slow); returns the probe-site slots, free again only now
    /// that no probe can read them.
    pub fn finish(self) -> (BinaryKey, Vec<u32>) {
        drop(self.links);
        (self.key, self.sites)
    }
}

/// What one `attach` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachSummary {
    pub probes: usize,
    pub newly_attached: bool,
}

/// The loaded programs, their maps (typed handles, taken once at load) and
/// every binary they are attached to.
pub struct Engine {
    ebpf: Ebpf,
    proc_stats: PerCpuHashMap<MapData, u32, ProcStats>,
    sites: Array<MapData, ProbeSite>,
    watched_pids: BpfHashMap<MapData, u32, u8>,
    counters: PerCpuArray<MapData, u64>,
    /// Handed out once by [`Engine::start_process_events`].
    events: Option<RingBuf<MapData>>,
    attached: HashMap<BinaryKey, Attachment>,
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

/// Options fixed at load time.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineOptions {
    /// Account only the processes added with [`Engine::watch_pid`].
    pub filter_by_pid: bool,
}

impl Engine {
    /// Checks privileges and kernel support, then loads the programs.
    pub fn load(opts: EngineOptions) -> Result<Engine, EngineError> {
        system::preflight()?;
        system::raise_fd_limit();
        let filter = u8::from(opts.filter_by_pid);
        let mut ebpf = EbpfLoader::new()
            .override_global(names::GLOBAL_FILTER_BY_PID, &filter, true)
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
        Ok(Engine {
            proc_stats: take_map(&mut ebpf, names::MAP_PROC_STATS)?,
            sites: take_map(&mut ebpf, names::MAP_SITES)?,
            watched_pids: take_map(&mut ebpf, names::MAP_WATCHED_PIDS)?,
            counters: take_map(&mut ebpf, names::MAP_COUNTERS)?,
            events: Some(take_map(&mut ebpf, names::MAP_EVENTS)?),
            ebpf,
            attached: HashMap::new(),
            free_sites: (0..agent_common::MAX_SITES).rev().collect(),
        })
    }

    /// Attaches `plan` to the file at `path` (whose identity is `key`), once
    /// per file: uprobes fire for every process mapping it.
    pub fn attach(
        &mut self,
        key: BinaryKey,
        path: &Path,
        plan: &ProbePlan,
    ) -> Result<AttachSummary, EngineError> {
        if let Some(a) = self.attached.get(&key) {
            return Ok(AttachSummary {
                probes: a.links.len(),
                newly_attached: false,
            });
        }
        let mut att = Attachment {
            links: Vec::new(),
            sites: Vec::new(),
        };
        let result = self.attach_all(path, plan, &mut att);
        if let Err(e) = result {
            // Nothing half-attached stays behind.
            self.release(att);
            return Err(e);
        }
        let probes = att.links.len();
        self.attached.insert(key, att);
        Ok(AttachSummary {
            probes,
            newly_attached: true,
        })
    }

    fn attach_all(
        &mut self,
        path: &Path,
        plan: &ProbePlan,
        att: &mut Attachment,
    ) -> Result<(), EngineError> {
        for probe in &plan.probes {
            let cookie = match probe.site {
                Some(site) => {
                    let index = self
                        .free_sites
                        .pop()
                        .ok_or(EngineError::SitesFull(agent_common::MAX_SITES))?;
                    att.sites.push(index);
                    self.set_site(index, site)?;
                    Some(u64::from(index))
                }
                None => None,
            };
            let prog = self.program(probe.kind);
            let link = prog
                .attach(
                    UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
                        cookie,
                    },
                    path,
                    UProbeScope::AllProcesses,
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

    /// Takes the probes of `key` out of the engine without detaching them yet
    /// (see [`Detached`]).
    pub fn take_attachment(&mut self, key: &BinaryKey) -> Option<Detached> {
        let att = self.attached.remove(key)?;
        let mut links = Vec::with_capacity(att.links.len());
        for (kind, id) in att.links {
            match self.program(kind).take_link(id) {
                Ok(link) => links.push(link),
                Err(e) => log::warn!("taking a {} probe link: {e}", kind.program()),
            }
        }
        Some(Detached {
            key: *key,
            links,
            sites: att.sites,
        })
    }

    /// Returns probe-site slots of a finished [`Detached`].
    pub fn release_sites(&mut self, sites: Vec<u32>) {
        self.free_sites.extend(sites);
    }

    /// Detaches every probe of the binary `key`.
    pub fn detach(&mut self, key: &BinaryKey) -> bool {
        match self.attached.remove(key) {
            Some(att) => {
                self.release(att);
                true
            }
            None => false,
        }
    }

    pub fn is_attached(&self, key: &BinaryKey) -> bool {
        self.attached.contains_key(key)
    }

    /// Number of attached binaries.
    pub fn attached_binaries(&self) -> usize {
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

    /// Adds a process to the `--pid` filter.
    pub fn watch_pid(&mut self, pid: u32) -> Result<(), EngineError> {
        self.watched_pids
            .insert(pid, 1, 0)
            .map_err(map_err(names::MAP_WATCHED_PIDS))
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

    /// Forgets a process: its counters and its place in the `--pid` filter.
    /// Called when it exits, so a reused PID starts from zero.
    pub fn forget_process(&mut self, tgid: u32) -> Result<(), EngineError> {
        match self.proc_stats.remove(&tgid) {
            Err(e) if !is_not_found(&e) => return Err(map_err(names::MAP_PROC_STATS)(e)),
            _ => {}
        }
        match self.watched_pids.remove(&tgid) {
            Err(e) if !is_not_found(&e) => Err(map_err(names::MAP_WATCHED_PIDS)(e)),
            _ => Ok(()),
        }
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
        let keys: Vec<_> = self.attached.keys().copied().collect();
        for key in keys {
            self.detach(&key);
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
        // The global is found by its symbol name in the string table.
        let symbol = format!("{}\0", names::GLOBAL_FILTER_BY_PID);
        assert!(
            OBJECT.windows(symbol.len()).any(|w| w == symbol.as_bytes()),
            "global {} missing from the object",
            names::GLOBAL_FILTER_BY_PID
        );
        assert_eq!(
            obj.maps[names::MAP_COUNTERS].max_entries(),
            Counter::COUNT,
            "COUNTERS has one slot per Counter"
        );
    }
}
