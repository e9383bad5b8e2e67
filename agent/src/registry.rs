//! The Go processes goalloc accounts: which run, which executable each runs,
//! who they are (comm, container, pod), and the sources of their figures:
//! the runtime's own counters (always) and the per-allocation probes (for
//! the processes chosen by an [`ExactSelection`]).
//!
//! Processes enter through exec events and /proc sweeps and leave through
//! exit events or the sweep. The registry knows nothing of how figures are
//! shown: views (the Prometheus exporter, `watch`) take per-process
//! [`ProcessSnapshot`]s and the final figures of processes that exited.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use agent_common::{Counters, EVENT_EXEC, EVENT_EXIT, ProcEvent, ProcStats};
use gobinary::{plan::PlanOptions, runtime::RuntimeCounters};

use crate::{
    attachments::Attachments,
    classify::{Class, Classifier, FileStamp, GoExecutable, SharedClassCache},
    ebpf::{AttachmentId, Engine, EngineError},
    guard,
    identity::{cgroup::CgroupIdentity, kube::PodIndex},
    procfs::{self, BinaryKey, ProcessId},
    runtime::{ReadStats, RuntimeSource, Unavailable},
    select::ExactSelection,
};

/// Exited processes kept for views between two takes; beyond this the
/// oldest are dropped (and counted), so a view that never asks costs nothing.
const MAX_EXITED: usize = 16_384;

/// Who a process is. Fixed while it runs (an exec makes a new process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    /// Path of the executable as the process sees it.
    pub exe: String,
    pub go_version: String,
    pub cgroup: CgroupIdentity,
}

/// Names from the Kubernetes API, resolved when a snapshot is taken (they
/// may arrive after the process was first seen). Empty outside a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNames {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// One process's figures at one moment.
#[derive(Debug, Clone)]
pub struct ProcessSnapshot {
    pub info: Arc<ProcessInfo>,
    pub pod: PodNames,
    /// The runtime's own counters (for an exited process, the last read).
    pub runtime: Result<RuntimeCounters, Unavailable>,
    /// Per-allocation probe counters, when probes are on for this process.
    pub probes: Option<ProcStats>,
    /// The process has exited: these are its final figures.
    pub exited: bool,
}

/// Which processes the registry takes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every Go process (the node agent).
    AllGo,
    /// These processes only.
    Pids(HashSet<u32>),
    /// Every process running this executable.
    Binary(BinaryKey),
}

/// The registry's own health figures.
#[derive(Debug, Default, Clone)]
pub struct RegistryStats {
    /// Go binaries that could not be probed, by reason (counted once per file version).
    pub attach_errors: BTreeMap<&'static str, u64>,
    /// What the always-on source did.
    pub reads: ReadStats,
    pub last_sweep: Duration,
    pub sweeps: u64,
    /// Time from the kernel's exec event to the process being tracked, last seen.
    pub last_exec_to_tracked: Option<Duration>,
    pub max_exec_to_tracked: Option<Duration>,
    /// Exited processes dropped before a view took them.
    pub exited_dropped: u64,
    /// Processes whose per-allocation probes were taken off or never put
    /// on although chosen, by reason (`budget`: over `--exact-budget`;
    /// `attach`: the kernel refused the probes for that process).
    pub exact_disabled: BTreeMap<&'static str, u64>,
}

/// A Go process being accounted.
#[derive(Debug)]
struct Tracked {
    info: Arc<ProcessInfo>,
    id: ProcessId,
    stamp: FileStamp,
    /// CLOCK_MONOTONIC when /proc was read to track it.
    tracked_at_ns: u64,
    exe: Arc<GoExecutable>,
    runtime: Result<RuntimeSource, Unavailable>,
    /// The per-allocation probes are on for it.
    probed: bool,
    /// ... only for a profile (`/debug/pprof/allocs`): the exact selection
    /// does not choose it, so no exact-mode series and no cost guard.
    profile_only: bool,
    /// Why the probes are off although the selection chooses it (never
    /// retried for this process).
    exact_off: Option<&'static str>,
    /// The cost guard's current window, while probed.
    window: Option<guard::Window>,
    /// Probe counters at the last snapshot: the final ones if the kernel
    /// resets them at exec before we read them again.
    last_seen: ProcStats,
}

impl Tracked {
    fn attachment(&self) -> AttachmentId {
        AttachmentId {
            binary: self.stamp.key,
            pid: self.info.pid,
        }
    }
}

pub struct Registry {
    attachments: Attachments,
    plan_opts: PlanOptions,
    scope: Scope,
    exact: ExactSelection,
    pods: Option<PodIndex>,
    classes: SharedClassCache,
    processes: HashMap<u32, Tracked>,
    exited: Vec<ProcessSnapshot>,
    /// Processes whose executable we may not read (ptrace access denied).
    inaccessible: HashMap<u32, ProcessId>,
    /// File versions that cannot be probed (counted once in `attach_errors`,
    /// not retried).
    failed: HashSet<FileStamp>,
    /// File versions that cannot be read at all (corrupt, unreadable):
    /// their processes are not tracked (counted once in `attach_errors`).
    unreadable: HashSet<FileStamp>,
    /// Attach chosen processes' probes later, one process per call of
    /// [`Registry::attach_pending_one`] (the agent: its lock is not held
    /// for a whole batch of attachments).
    defer_attach: bool,
    /// Chosen processes whose probes are still to attach (deferred).
    pending: VecDeque<u32>,
    pub stats: RegistryStats,
}

impl Registry {
    pub fn new(
        engine: Engine,
        plan_opts: PlanOptions,
        scope: Scope,
        exact: ExactSelection,
        detach_grace: Duration,
    ) -> Registry {
        Registry {
            attachments: Attachments::new(engine, detach_grace),
            plan_opts,
            scope,
            exact,
            pods: None,
            classes: SharedClassCache::default(),
            processes: HashMap::new(),
            exited: Vec::new(),
            inaccessible: HashMap::new(),
            failed: HashSet::new(),
            unreadable: HashSet::new(),
            defer_attach: false,
            pending: VecDeque::new(),
            stats: RegistryStats::default(),
        }
    }

    /// Chosen processes get their probes from [`Registry::attach_pending_one`]
    /// instead of at once: a caller that shares the registry behind a lock
    /// takes it for one process's attachment at a time, so scrapes are not
    /// held up by a burst of new processes.
    pub fn defer_attach(mut self) -> Registry {
        self.defer_attach = true;
        self
    }

    /// Attaches the probes of one chosen process (deferred). Returns whether
    /// more are waiting.
    pub fn attach_pending_one(&mut self) -> Result<bool, EngineError> {
        let Some(pid) = self.pending.pop_front() else {
            return Ok(false);
        };
        if let Some(mut t) = self.processes.remove(&pid) {
            let mut result = Ok(());
            if !t.probed && t.exact_off.is_none() && self.chosen(&t) {
                // Only if it still runs the file classified.
                if let Ok(exe) = procfs::open_exe(pid)
                    && FileStamp::of_file(exe.file()).is_ok_and(|s| s == t.stamp)
                {
                    result = self.attach_probes(&mut t, exe.path(), false).map(|_| ());
                }
            }
            self.processes.insert(pid, t);
            result?;
        }
        Ok(!self.pending.is_empty())
    }

    /// Chosen processes waiting for their probes (deferred attachment).
    pub fn pending_attachments(&self) -> usize {
        self.pending.len()
    }

    /// Pod metadata became available (the API server answered).
    pub fn set_pods(&mut self, pods: PodIndex) {
        self.pods = Some(pods);
    }

    /// A handle that classifies executables into this registry's cache
    /// without its lock (see [`Classifier`]).
    pub fn classifier(&self) -> Classifier {
        Classifier {
            cache: self.classes.clone(),
            opts: self.plan_opts,
        }
    }

    pub fn engine(&self) -> &Engine {
        self.attachments.engine()
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        self.attachments.engine_mut()
    }

    /// Number of processes being accounted.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    fn in_scope(&self, pid: u32, stamp: &FileStamp) -> bool {
        match &self.scope {
            Scope::AllGo => true,
            Scope::Pids(pids) => pids.contains(&pid),
            Scope::Binary(key) => stamp.key == *key,
        }
    }

    /// Starts accounting `pid` if it is in scope and runs a Go binary goalloc
    /// can probe. Returns whether it is accounted afterwards.
    pub fn consider(&mut self, pid: u32) -> Result<bool, EngineError> {
        // Taken before reading /proc: kernel events older than this are
        // already reflected in what we read (see `on_event`).
        let now_ns = monotonic_ns();
        let Ok(id) = ProcessId::of(pid) else {
            return Ok(false); // already gone
        };
        // Kernel threads have no exe; processes of other users (or with
        // capabilities we lack) deny it without CAP_SYS_PTRACE: those are
        // counted, since they may be Go programs we cannot see.
        let exe = match procfs::open_exe(pid) {
            Ok(exe) => exe,
            Err(e) => {
                if e.is_access_denied() {
                    self.inaccessible.insert(pid, id);
                }
                return Ok(false);
            }
        };
        self.inaccessible.remove(&pid);
        let Ok(stamp) = FileStamp::of_file(exe.file()) else {
            return Ok(false);
        };
        if let Some(t) = self.processes.get(&pid) {
            if t.id == id && t.stamp == stamp {
                return Ok(true);
            }
            // Another process got the PID, or this one exec'd and the event
            // was lost: close the old one first.
            let exec = t.id == id;
            self.exited(pid, exec)?;
        }
        if !self.in_scope(pid, &stamp) || self.unreadable.contains(&stamp) {
            return Ok(false);
        }
        let exe_name = procfs::exe_target_of(exe.path())
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string();
        let class = self
            .classes
            .lock()
            .get_or_classify(stamp, exe.path(), self.plan_opts);
        let go = match class {
            Class::NotGo => return Ok(false),
            Class::Unsupported(u) => {
                if self.unreadable.insert(stamp) {
                    *self.stats.attach_errors.entry(u.reason).or_default() += 1;
                    log::warn!("pid {pid}: cannot read {exe_name}: {}", u.detail);
                }
                return Ok(false);
            }
            Class::Go(go) => go,
        };
        let info = Arc::new(ProcessInfo {
            pid,
            comm: procfs::comm(pid).unwrap_or_default(),
            exe: exe_name,
            go_version: go.go_version.clone(),
            cgroup: crate::identity::cgroup::read(pid).unwrap_or_default(),
        });
        let runtime = match &go.runtime {
            Ok(probe) => RuntimeSource::attach(probe, pid),
            Err(u) => Err(Unavailable {
                reason: u.reason,
                detail: u.detail.clone(),
            }),
        };
        if let Err(u) = &runtime {
            log::info!("pid {pid}: no runtime counters: {}", u.detail);
        }
        let mut tracked = Tracked {
            info,
            id,
            stamp,
            tracked_at_ns: now_ns,
            exe: go,
            runtime,
            probed: false,
            profile_only: false,
            exact_off: None,
            window: None,
            last_seen: ProcStats::ZERO,
        };
        self.probe_if_chosen(&mut tracked, exe.path())?;
        self.processes.insert(pid, tracked);
        Ok(true)
    }

    /// Whether the exact selection chooses the process.
    fn chosen(&self, t: &Tracked) -> bool {
        let pod = self.pod_names(&t.info.cgroup);
        let pod_asks = self.pods.as_ref().is_some_and(|index| {
            index.exact_requested(
                t.info.cgroup.pod_uid.as_deref().unwrap_or_default(),
                t.info.cgroup.container_id.as_deref(),
            )
        });
        self.exact.wants(&t.info, &pod, pod_asks)
    }

    /// Puts the per-allocation probes on a process if the exact selection
    /// chooses it (and they are not on yet).
    fn probe_if_chosen(
        &mut self,
        t: &mut Tracked,
        path: &std::path::Path,
    ) -> Result<(), EngineError> {
        if t.probed || t.exact_off.is_some() || !self.chosen(t) {
            return Ok(());
        }
        if self.defer_attach {
            if !self.pending.contains(&t.info.pid) {
                self.pending.push_back(t.info.pid);
            }
            return Ok(());
        }
        self.attach_probes(t, path, false).map(|_| ())
    }

    /// Attaches the per-allocation probes to a process. Returns why not
    /// when they could not be attached (the process exited, its file cannot
    /// be probed, an attach error: this process only).
    fn attach_probes(
        &mut self,
        t: &mut Tracked,
        path: &std::path::Path,
        for_profile: bool,
    ) -> Result<Result<(), String>, EngineError> {
        let pid = t.info.pid;
        let plan = match &t.exe.plan {
            Ok(plan) => plan.clone(),
            Err(u) => {
                if self.failed.insert(t.stamp) {
                    *self.stats.attach_errors.entry(u.reason).or_default() += 1;
                    log::warn!("pid {pid}: cannot probe {}: {}", t.info.exe, u.detail);
                }
                return Ok(Err(u.detail.clone()));
            }
        };
        if self.failed.contains(&t.stamp) {
            return Ok(Err("its executable cannot be probed".into()));
        }
        match self
            .attachments
            .acquire(t.attachment(), t.stamp, path, &plan)
        {
            Ok(s) => {
                if s.newly_attached {
                    log::info!(
                        "pid {pid}: attached {} probes to {} ({}, {:?}){}",
                        s.probes,
                        t.info.exe,
                        plan.go_version,
                        plan.scheme,
                        if for_profile { " for a profile" } else { "" }
                    );
                }
                t.probed = true;
                t.profile_only = for_profile;
                // A profile is bounded in time and asked for: no guard.
                if !for_profile {
                    let now = self.attachments.engine().stats(pid)?.unwrap_or_default();
                    t.window = Some(guard::Window::start(&now));
                }
                Ok(Ok(()))
            }
            // A process that exited while being attached is skipped: not an
            // error of goalloc nor of its executable.
            Err(e) if e.is_process_gone() || !t.id.is_alive() => {
                log::debug!("pid {pid} exited while being attached: {e}");
                Ok(Err("it exited".into()))
            }
            Err(e) => {
                // This process only: another process of the same file, or
                // this one's siblings, are attached on their own.
                if !for_profile {
                    t.exact_off = Some("attach");
                    *self.stats.exact_disabled.entry("attach").or_default() += 1;
                }
                *self.stats.attach_errors.entry("attach").or_default() += 1;
                log::warn!("pid {pid}: no per-allocation probes: {e}");
                Ok(Err(e.to_string()))
            }
        }
    }

    /// Puts the allocation probes on `pid` for a profile (unless it has
    /// them already). `Ok(Err(why))`: it cannot be profiled.
    pub fn profile_begin(&mut self, pid: u32) -> Result<Result<(), String>, EngineError> {
        let Some(mut t) = self.processes.remove(&pid) else {
            return Ok(Err(format!(
                "pid {pid} is not a Go process this agent follows"
            )));
        };
        let result = if t.probed {
            Ok(Ok(()))
        } else {
            match procfs::open_exe(pid) {
                Ok(exe) if FileStamp::of_file(exe.file()).is_ok_and(|s| s == t.stamp) => {
                    self.attach_probes(&mut t, exe.path(), true)
                }
                _ => Ok(Err(format!(
                    "pid {pid} has exited or changed its executable"
                ))),
            }
        };
        self.processes.insert(pid, t);
        result
    }

    /// The profile of `pid` ended: probes put on for it alone come off.
    pub fn profile_end(&mut self, pid: u32) -> Result<(), EngineError> {
        let Some(mut t) = self.processes.remove(&pid) else {
            return Ok(());
        };
        if t.probed && t.profile_only {
            t.profile_only = false;
            if self.chosen(&t) && t.exact_off.is_none() {
                // Chosen meanwhile: keep them, under the guard from now.
                let now = self.attachments.engine().stats(pid)?.unwrap_or_default();
                t.window = Some(guard::Window::start(&now));
            } else {
                t.probed = false;
                self.attachments.release(t.attachment());
                // Counts of the profile's probes are not exact-mode series.
                self.attachments.engine_mut().forget_process(pid)?;
                t.last_seen = ProcStats::ZERO;
            }
        }
        self.processes.insert(pid, t);
        Ok(())
    }

    /// Whether `pid` is accounted (alive, as far as the registry knows).
    pub fn tracks(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Probes the processes the selection chooses now but did not before
    /// (their pod's names or annotation arrived later).
    fn refresh_selection(&mut self) -> Result<(), EngineError> {
        let unprobed: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, t)| !t.probed && t.exact_off.is_none() && t.exe.plan.is_ok())
            .map(|(p, _)| *p)
            .collect();
        for pid in unprobed {
            let Some(mut t) = self.processes.remove(&pid) else {
                continue;
            };
            let result = match procfs::open_exe(pid) {
                // Attach through the process's own view of its executable,
                // and only if it is still the file we classified.
                Ok(exe) if FileStamp::of_file(exe.file()).is_ok_and(|s| s == t.stamp) => {
                    self.probe_if_chosen(&mut t, exe.path())
                }
                _ => Ok(()),
            };
            self.processes.insert(pid, t);
            result?;
        }
        Ok(())
    }

    /// Stops accounting `pid`: keeps its final figures for the views, drops
    /// its kernel map entry, and releases its binary's probes.
    /// `exec`: the process replaced its image; the kernel already reset its
    /// counters, so the last values read are its final ones.
    pub fn exited(&mut self, pid: u32, exec: bool) -> Result<(), EngineError> {
        let Some(t) = self.processes.remove(&pid) else {
            return Ok(());
        };
        let mut last = t.last_seen;
        if t.probed
            && !exec
            && let Some(s) = self.attachments.engine().stats(pid)?
        {
            last = s;
        }
        if !exec {
            self.attachments.engine_mut().forget_process(pid)?;
        }
        if t.probed {
            if exec {
                self.attachments.release_for_exec(t.attachment());
            } else {
                self.attachments.release(t.attachment());
            }
        }
        let runtime = match &t.runtime {
            Ok(source) => source.last().cloned().ok_or(Unavailable {
                reason: "exited",
                detail: "the process exited before its counters were read".into(),
            }),
            Err(u) => Err(u.clone()),
        };
        if self.exited.len() >= MAX_EXITED {
            self.exited.remove(0);
            self.stats.exited_dropped += 1;
        }
        let pod = self.pod_names(&t.info.cgroup);
        self.exited.push(ProcessSnapshot {
            info: t.info,
            pod,
            runtime,
            probes: (t.probed && !t.profile_only).then_some(last),
            exited: true,
        });
        Ok(())
    }

    /// Handles one exec/exit event from the kernel. Events older than the
    /// /proc read that tracked the process are stale: an exec it already
    /// shows, or the exit of an earlier process with the same PID.
    pub fn on_event(&mut self, ev: &ProcEvent) -> Result<(), EngineError> {
        let stale = self
            .processes
            .get(&ev.tgid)
            .is_some_and(|t| ev.ktime_ns < t.tracked_at_ns);
        match ev.kind {
            EVENT_EXEC if !stale => {
                // Same PID, new image: the old one is gone.
                self.exited(ev.tgid, true)?;
                if self.consider(ev.tgid)? {
                    let latency = Duration::from_nanos(monotonic_ns().saturating_sub(ev.ktime_ns));
                    self.stats.last_exec_to_tracked = Some(latency);
                    self.stats.max_exec_to_tracked =
                        self.stats.max_exec_to_tracked.max(Some(latency));
                }
            }
            EVENT_EXIT if !stale => self.exited(ev.tgid, false)?,
            _ => {}
        }
        Ok(())
    }

    /// Handles a batch of exec/exit events.
    pub fn on_event_batch(&mut self, batch: &[ProcEvent]) -> Result<(), EngineError> {
        batch.iter().try_for_each(|ev| self.on_event(ev))
    }

    /// Reconciles with /proc: the safety net for missed events and the way
    /// processes that started before goalloc are found.
    pub fn sweep(&mut self) -> Result<(), EngineError> {
        let started = std::time::Instant::now();
        let pids = match &self.scope {
            Scope::Pids(pids) => pids.iter().copied().collect(),
            _ => procfs::all_pids().unwrap_or_default(),
        };
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, t)| !t.id.is_alive())
            .map(|(p, _)| *p)
            .collect();
        for pid in gone {
            self.exited(pid, false)?;
        }
        let mut in_use = HashSet::new();
        for pid in pids {
            self.consider(pid)?;
            if let Ok(stamp) = FileStamp::of(&procfs::exe_path(pid)) {
                in_use.insert(stamp);
            }
        }
        // Kernel entries of processes we do not track (exited before we saw
        // them, or a binary shared with an untracked process): drop the dead.
        for (pid, _) in self.attachments.engine().all_stats()? {
            if !self.processes.contains_key(&pid) && ProcessId::of(pid).is_err() {
                self.attachments.engine_mut().forget_process(pid)?;
            }
        }
        self.inaccessible.retain(|_, id| id.is_alive());
        if !self.inaccessible.is_empty() && self.stats.sweeps == 0 {
            log::warn!(
                "{} processes cannot be inspected (their executable and memory need ptrace access: run goalloc as root with CAP_SYS_PTRACE, and Yama ptrace_scope < 3)",
                self.inaccessible.len()
            );
        }
        self.refresh_selection()?;
        self.guard_costs()?;
        self.attachments.expire();
        self.classes.lock().retain(|s| in_use.contains(s));
        self.failed.retain(|s| in_use.contains(s));
        self.unreadable.retain(|s| in_use.contains(s));
        self.stats.sweeps += 1;
        self.stats.last_sweep = started.elapsed();
        Ok(())
    }

    /// The cost guard: takes the probes off every process whose estimated
    /// probe cost over the last window is above the budget (see
    /// [`guard`]). Its runtime counters stay; its probes never come back.
    fn guard_costs(&mut self) -> Result<(), EngineError> {
        let Some(budget) = self.exact.budget else {
            return Ok(());
        };
        let probed: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, t)| t.probed)
            .map(|(p, _)| *p)
            .collect();
        for pid in probed {
            let Some(stats) = self.attachments.engine().stats(pid)? else {
                continue;
            };
            let Some(t) = self.processes.get_mut(&pid) else {
                continue;
            };
            let Some(rate) = t.window.as_mut().and_then(|w| w.close(&stats)) else {
                continue;
            };
            if rate <= budget {
                continue;
            }
            log::warn!(
                "pid {pid} ({}): per-allocation probes cost an estimated {:.1}% of a CPU, over the budget of {:.1}% (--exact-budget): probes taken off, runtime counters stay",
                t.info.exe,
                rate * 100.0,
                budget * 100.0
            );
            t.probed = false;
            t.window = None;
            t.exact_off = Some("budget");
            t.last_seen = stats;
            let id = t.attachment();
            *self.stats.exact_disabled.entry("budget").or_default() += 1;
            self.attachments.release(id);
        }
        Ok(())
    }

    /// Names of the pod of a process, resolved now.
    fn pod_names(&self, cgroup: &CgroupIdentity) -> PodNames {
        // A container id alone also finds its pod (cgroup layouts that name
        // no pod).
        match &self.pods {
            Some(index) if cgroup.pod_uid.is_some() || cgroup.container_id.is_some() => index
                .lookup(
                    cgroup.pod_uid.as_deref().unwrap_or_default(),
                    cgroup.container_id.as_deref(),
                )
                .map(|(namespace, pod, container)| PodNames {
                    namespace,
                    pod,
                    container: container.unwrap_or_default(),
                })
                .unwrap_or_default(),
            _ => PodNames::default(),
        }
    }

    /// The figures of every accounted process, by pid: the runtime's
    /// counters are read now. Remembers each process's probe counters (see
    /// `Tracked::last_seen`).
    pub fn snapshot(&mut self) -> Result<Vec<ProcessSnapshot>, EngineError> {
        let mut out = Vec::with_capacity(self.processes.len());
        let mut pids: Vec<u32> = self.processes.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            let probed = self.processes.get(&pid).is_some_and(|t| t.probed);
            let stats = if probed {
                self.attachments.engine().stats(pid)?
            } else {
                None
            };
            let pod = match self.processes.get(&pid) {
                Some(t) => self.pod_names(&t.info.cgroup),
                None => continue,
            };
            let Some(t) = self.processes.get_mut(&pid) else {
                continue;
            };
            if let Some(stats) = stats {
                t.last_seen = stats;
            }
            let runtime = match &mut t.runtime {
                Ok(source) => source.read(&mut self.stats.reads),
                Err(u) => Err(u.clone()),
            };
            out.push(ProcessSnapshot {
                info: t.info.clone(),
                pod,
                runtime,
                probes: (t.probed && !t.profile_only).then_some(t.last_seen),
                exited: false,
            });
        }
        Ok(out)
    }

    /// Live processes whose executable goalloc may not read (not knowing
    /// whether they are Go programs, it reports them as a number only).
    pub fn inaccessible(&self) -> usize {
        self.inaccessible.len()
    }

    /// Number of processes with the per-allocation probes on.
    pub fn probed(&self) -> usize {
        self.processes.values().filter(|t| t.probed).count()
    }

    /// Final figures of the processes that exited since the last call.
    pub fn take_exited(&mut self) -> Vec<ProcessSnapshot> {
        std::mem::take(&mut self.exited)
    }

    /// The eBPF self-counters.
    pub fn counters(&self) -> Result<Counters, EngineError> {
        self.attachments.engine().counters()
    }

    /// Number of kernel map entries (for leak checks).
    pub fn kernel_entries(&self) -> Result<usize, EngineError> {
        Ok(self.attachments.engine().all_stats()?.len())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
