//! Loading goalloc's eBPF programs, attaching probe plans to binaries, and
//! reading the per-process counters back.

use std::{collections::HashMap, path::Path};

use agent_common::{ProbeSite, ProcStats, counter};
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

/// The loaded programs and every binary they are attached to.
pub struct Engine {
    ebpf: Ebpf,
    attached: HashMap<BinaryKey, Attachment>,
    free_sites: Vec<u32>,
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
            .override_global("FILTER_BY_PID", &filter, true)
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
        let mut sites: Array<_, ProbeSite> =
            Array::try_from(self.ebpf.map_mut("SITES").expect("SITES map"))
                .map_err(map_err("SITES"))?;
        sites.set(index, site, 0).map_err(map_err("SITES"))
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
            ("goalloc_exec", "sched_process_exec"),
            ("goalloc_exit", "sched_process_exit"),
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
        let map = self.ebpf.take_map("EVENTS").expect("EVENTS map");
        RingBuf::try_from(map).map_err(map_err("EVENTS"))
    }

    /// Adds a process to the `--pid` filter.
    pub fn watch_pid(&mut self, pid: u32) -> Result<(), EngineError> {
        let mut m: BpfHashMap<_, u32, u8> =
            BpfHashMap::try_from(self.ebpf.map_mut("WATCHED_PIDS").expect("WATCHED_PIDS map"))
                .map_err(map_err("WATCHED_PIDS"))?;
        m.insert(pid, 1, 0).map_err(map_err("WATCHED_PIDS"))
    }

    /// The counters of one process since its first probe hit, summed over CPUs.
    pub fn stats(&self, tgid: u32) -> Result<Option<ProcStats>, EngineError> {
        let m: PerCpuHashMap<_, u32, ProcStats> =
            PerCpuHashMap::try_from(self.ebpf.map("PROC_STATS").expect("PROC_STATS map"))
                .map_err(map_err("PROC_STATS"))?;
        match m.get(&tgid, 0) {
            Ok(values) => Ok(Some(sum(values.iter()))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("PROC_STATS")(e)),
        }
    }

    /// Every process with counters.
    pub fn all_stats(&self) -> Result<Vec<(u32, ProcStats)>, EngineError> {
        let m: PerCpuHashMap<_, u32, ProcStats> =
            PerCpuHashMap::try_from(self.ebpf.map("PROC_STATS").expect("PROC_STATS map"))
                .map_err(map_err("PROC_STATS"))?;
        let mut out = Vec::new();
        for item in m.iter() {
            match item {
                Ok((tgid, values)) => out.push((tgid, sum(values.iter()))),
                // An entry removed while iterating.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err("PROC_STATS")(e)),
            }
        }
        Ok(out)
    }

    /// Forgets a process: its counters and its place in the `--pid` filter.
    /// Called when it exits, so a reused PID starts from zero.
    pub fn forget_process(&mut self, tgid: u32) -> Result<(), EngineError> {
        let mut m: PerCpuHashMap<_, u32, ProcStats> =
            PerCpuHashMap::try_from(self.ebpf.map_mut("PROC_STATS").expect("PROC_STATS map"))
                .map_err(map_err("PROC_STATS"))?;
        match m.remove(&tgid) {
            Err(e) if !is_not_found(&e) => return Err(map_err("PROC_STATS")(e)),
            _ => {}
        }
        let mut w: BpfHashMap<_, u32, u8> =
            BpfHashMap::try_from(self.ebpf.map_mut("WATCHED_PIDS").expect("WATCHED_PIDS map"))
                .map_err(map_err("WATCHED_PIDS"))?;
        match w.remove(&tgid) {
            Err(e) if !is_not_found(&e) => Err(map_err("WATCHED_PIDS")(e)),
            _ => Ok(()),
        }
    }

    /// The eBPF self-counters (`agent_common::counter`), summed over CPUs.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], EngineError> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("COUNTERS").expect("COUNTERS map"))
                .map_err(map_err("COUNTERS"))?;
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = m.get(&(i as u32), 0).map_err(map_err("COUNTERS"))?;
            *slot = values.iter().sum();
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
