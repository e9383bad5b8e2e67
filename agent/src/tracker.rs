//! The node agent's view of Go processes: which run, which binary each runs,
//! which binaries are attached, and their counters grouped into label sets.
//!
//! Processes enter through exec events and a periodic /proc sweep; they leave
//! through exit events or the sweep. A binary is attached once, however many
//! processes run it, and detached when its last process exits.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc,
        mpsc::{self, Receiver, Sender},
    },
    time::{Duration, Instant},
};

use agent_common::{EVENT_EXEC, EVENT_EXIT, ProcEvent, ProcStats, counter};

use crate::{
    classify::{Class, ClassCache, FileStamp},
    ebpf::{Detached, Engine, EngineError},
    identity::{cgroup::CgroupIdentity, kube::PodIndex},
    plan::{PlanOptions, ProbePlan},
    procfs::{self, BinaryKey, ProcessId},
};

/// How far label sets are folded, to control cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Aggregate {
    /// One series per process (pid, comm, exe, go_version, container, pod).
    #[default]
    Process,
    /// One series per container (container_id, container, pod, namespace).
    Container,
    /// One series per pod (pod, namespace).
    Pod,
    /// One series per executable (exe, go_version).
    Binary,
}

/// Label names, in output order.
pub const LABELS: [&str; 8] = [
    "pid",
    "comm",
    "exe",
    "go_version",
    "container_id",
    "pod",
    "namespace",
    "container",
];

impl Aggregate {
    fn keeps(self, label: &str) -> bool {
        match self {
            Aggregate::Process => true,
            Aggregate::Container => {
                matches!(label, "container_id" | "pod" | "namespace" | "container")
            }
            Aggregate::Pod => matches!(label, "pod" | "namespace"),
            Aggregate::Binary => matches!(label, "exe" | "go_version"),
        }
    }
}

/// A label set: `(name, value)` pairs in `LABELS` order.
pub type Labels = Vec<(&'static str, String)>;

/// A Go process being accounted.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub id: ProcessId,
    pub stamp: FileStamp,
    pub comm: String,
    pub exe: String,
    pub go_version: String,
    pub cgroup: CgroupIdentity,
}

/// The agent's own health figures.
#[derive(Debug, Default, Clone)]
pub struct SelfStats {
    /// Go binaries that could not be probed, by reason (counted once per file version).
    pub attach_errors: BTreeMap<&'static str, u64>,
    pub last_sweep: Duration,
    pub sweeps: u64,
    /// Time from the kernel's exec event to the process being tracked, last seen.
    pub last_exec_to_tracked: Option<Duration>,
    pub max_exec_to_tracked: Option<Duration>,
}

/// Detaches binaries on a thread of its own: unregistering uprobes is slow
/// (about 0.1 s each in the kernel) and must not stall events or scrapes.
struct Detacher {
    tx: Sender<Detached>,
    done: Receiver<(BinaryKey, Vec<u32>)>,
    in_flight: HashSet<BinaryKey>,
}

impl Detacher {
    fn new() -> Detacher {
        let (tx, rx) = mpsc::channel::<Detached>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("goalloc-detach".into())
            .spawn(move || {
                for d in rx {
                    if done_tx.send(d.finish()).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the detach thread");
        Detacher {
            tx,
            done,
            in_flight: HashSet::new(),
        }
    }
}

pub struct Tracker {
    engine: Engine,
    plan_opts: PlanOptions,
    aggregate: Aggregate,
    /// How long a binary stays attached after its last process exited, so a
    /// program restarted in a loop is not detached and re-attached each time.
    detach_grace: Duration,
    pods: Option<PodIndex>,
    classes: ClassCache,
    /// Processes per attached binary.
    refs: HashMap<BinaryKey, usize>,
    /// Attached binaries without processes, since when.
    idle: HashMap<BinaryKey, Instant>,
    detacher: Detacher,
    processes: HashMap<u32, Tracked>,
    /// Final counters of exited processes whose group still has live members,
    /// so aggregated counters do not drop when one member exits.
    retired: HashMap<Labels, ProcStats>,
    /// File versions already counted in `attach_errors`.
    reported: HashSet<FileStamp>,
    pub stats: SelfStats,
}

impl Tracker {
    pub fn new(
        engine: Engine,
        plan_opts: PlanOptions,
        aggregate: Aggregate,
        detach_grace: Duration,
        pods: Option<PodIndex>,
    ) -> Tracker {
        Tracker {
            engine,
            plan_opts,
            aggregate,
            detach_grace,
            pods,
            classes: ClassCache::default(),
            refs: HashMap::new(),
            idle: HashMap::new(),
            detacher: Detacher::new(),
            processes: HashMap::new(),
            retired: HashMap::new(),
            reported: HashSet::new(),
            stats: SelfStats::default(),
        }
    }

    /// Pod metadata became available (the API server answered).
    pub fn set_pods(&mut self, pods: PodIndex) {
        self.pods = Some(pods);
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn processes(&self) -> impl Iterator<Item = &Tracked> {
        self.processes.values()
    }

    pub fn is_tracked(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Starts tracking `pid` if it runs a Go binary goalloc can probe.
    /// Returns whether it is tracked afterwards.
    pub fn consider(&mut self, pid: u32) -> Result<bool, EngineError> {
        let Ok(id) = ProcessId::of(pid) else {
            return Ok(false); // already gone
        };
        if let Some(t) = self.processes.get(&pid) {
            if t.id == id {
                return Ok(true);
            }
            // The PID now belongs to another process: close the old one first.
            self.exited(pid)?;
        }
        let exe = procfs::exe_path(pid);
        // Kernel threads and processes we may not inspect have no readable exe.
        let Ok(stamp) = FileStamp::of(&exe) else {
            return Ok(false);
        };
        let plan: Arc<ProbePlan> = match self.classes.get_or_classify(stamp, &exe, self.plan_opts) {
            Class::NotGo => return Ok(false),
            Class::Unsupported { reason, detail } => {
                if self.reported.insert(stamp) {
                    *self.stats.attach_errors.entry(reason).or_default() += 1;
                    log::warn!(
                        "pid {pid}: cannot probe {}: {detail}",
                        procfs::exe_target_of(&exe).display()
                    );
                }
                return Ok(false);
            }
            Class::Go(plan) => plan,
        };
        self.collect_detached(Some(stamp.key));
        if !self.engine.is_attached(&stamp.key) {
            if let Err(e) = self.engine.attach(stamp.key, &exe, &plan) {
                // A process that exited meanwhile is not an attach error.
                if id.is_alive() && self.reported.insert(stamp) {
                    *self.stats.attach_errors.entry("attach").or_default() += 1;
                    log::warn!("pid {pid}: {e}");
                }
                return Ok(false);
            }
            log::info!(
                "attached {} probes to {} ({})",
                plan.probes.len(),
                procfs::exe_target_of(&exe).display(),
                plan.go_version
            );
        }
        *self.refs.entry(stamp.key).or_default() += 1;
        self.idle.remove(&stamp.key);
        let tracked = Tracked {
            id,
            stamp,
            comm: procfs::comm(pid).unwrap_or_default(),
            exe: procfs::exe_target_of(&exe)
                .to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string(),
            go_version: plan.go_version.clone(),
            cgroup: crate::identity::cgroup::read(pid).unwrap_or_default(),
        };
        self.processes.insert(pid, tracked);
        Ok(true)
    }

    /// Stops tracking `pid`: keeps its final counts for its group, drops its
    /// kernel map entry, and detaches its binary if nothing else runs it.
    pub fn exited(&mut self, pid: u32) -> Result<(), EngineError> {
        let Some(t) = self.processes.remove(&pid) else {
            return Ok(());
        };
        if self.aggregate != Aggregate::Process {
            let group = self.group_of(pid, &t);
            let live_peer = self
                .processes
                .iter()
                .any(|(p, o)| self.group_of(*p, o) == group);
            if live_peer {
                let last = self.engine.stats(pid)?.unwrap_or(ProcStats::ZERO);
                self.retired
                    .entry(group)
                    .or_insert(ProcStats::ZERO)
                    .accumulate(&last);
            } else {
                self.retired.remove(&group);
            }
        }
        self.engine.forget_process(pid)?;
        if let Some(n) = self.refs.get_mut(&t.stamp.key) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(&t.stamp.key);
                if self.detach_grace.is_zero() {
                    self.start_detach(t.stamp.key);
                } else {
                    self.idle.insert(t.stamp.key, Instant::now());
                }
            }
        }
        Ok(())
    }

    /// Hands the probes of `key` to the detach thread.
    fn start_detach(&mut self, key: BinaryKey) {
        if let Some(d) = self.engine.take_attachment(&key) {
            self.detacher.in_flight.insert(key);
            if self.detacher.tx.send(d).is_err() {
                log::warn!("the detach thread is gone; probes stay until exit");
            }
        }
    }

    /// Takes back what the detach thread finished. With `wait_for`, blocks
    /// until that binary's old probes are gone: attaching it again before
    /// would count its allocations twice.
    fn collect_detached(&mut self, wait_for: Option<BinaryKey>) {
        while let Ok((key, sites)) = self.detacher.done.try_recv() {
            self.engine.release_sites(sites);
            self.detacher.in_flight.remove(&key);
        }
        let Some(key) = wait_for else { return };
        while self.detacher.in_flight.contains(&key) {
            match self.detacher.done.recv() {
                Ok((done, sites)) => {
                    self.engine.release_sites(sites);
                    self.detacher.in_flight.remove(&done);
                }
                Err(_) => return,
            }
        }
    }

    /// Binaries whose probes are being detached.
    pub fn detaching(&self) -> usize {
        self.detacher.in_flight.len()
    }

    /// Handles one exec/exit event from the kernel.
    pub fn on_event(&mut self, ev: &ProcEvent) -> Result<(), EngineError> {
        match ev.kind {
            EVENT_EXEC => {
                // Same PID, new image: the old one is gone.
                self.exited(ev.tgid)?;
                if self.consider(ev.tgid)? {
                    let latency = Duration::from_nanos(monotonic_ns().saturating_sub(ev.ktime_ns));
                    self.stats.last_exec_to_tracked = Some(latency);
                    self.stats.max_exec_to_tracked =
                        self.stats.max_exec_to_tracked.max(Some(latency));
                }
            }
            EVENT_EXIT => self.exited(ev.tgid)?,
            _ => {}
        }
        Ok(())
    }

    /// Reconciles with /proc: the safety net for missed events and the way
    /// processes that started before the agent are found.
    pub fn sweep(&mut self) -> Result<(), EngineError> {
        let started = Instant::now();
        let pids = procfs::all_pids().unwrap_or_default();
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, t)| !t.id.is_alive())
            .map(|(p, _)| *p)
            .collect();
        for pid in gone {
            self.exited(pid)?;
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
        for (pid, _) in self.engine.all_stats()? {
            if !self.processes.contains_key(&pid) && ProcessId::of(pid).is_err() {
                self.engine.forget_process(pid)?;
            }
        }
        let expired: Vec<BinaryKey> = self
            .idle
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.detach_grace)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.idle.remove(&key);
            self.start_detach(key);
        }
        self.collect_detached(None);
        self.classes.retain(|s| in_use.contains(s));
        self.reported.retain(|s| in_use.contains(s));
        self.stats.sweeps += 1;
        self.stats.last_sweep = started.elapsed();
        Ok(())
    }

    fn labels_of(&self, pid: u32, t: &Tracked) -> Labels {
        // A container id alone also finds its pod (cgroup layouts that name
        // no pod).
        let (namespace, pod, container) = match &self.pods {
            Some(index) if t.cgroup.pod_uid.is_some() || t.cgroup.container_id.is_some() => index
                .lookup(
                    t.cgroup.pod_uid.as_deref().unwrap_or_default(),
                    t.cgroup.container_id.as_deref(),
                )
                .map(|(ns, pod, c)| (ns, pod, c.unwrap_or_default()))
                .unwrap_or_default(),
            _ => Default::default(),
        };
        let values = [
            pid.to_string(),
            t.comm.clone(),
            t.exe.clone(),
            t.go_version.clone(),
            t.cgroup.container_id.clone().unwrap_or_default(),
            pod,
            namespace,
            container,
        ];
        LABELS.iter().copied().zip(values).collect()
    }

    fn group_of(&self, pid: u32, t: &Tracked) -> Labels {
        let aggregate = self.aggregate;
        self.labels_of(pid, t)
            .into_iter()
            .filter(|(k, _)| aggregate.keeps(k))
            .collect()
    }

    /// Current counters per label set (after aggregation).
    pub fn snapshot(&self) -> Result<Vec<(Labels, ProcStats)>, EngineError> {
        let mut groups: BTreeMap<Labels, ProcStats> = BTreeMap::new();
        for (&pid, t) in &self.processes {
            let stats = self.engine.stats(pid)?.unwrap_or(ProcStats::ZERO);
            groups
                .entry(self.group_of(pid, t))
                .or_insert(ProcStats::ZERO)
                .accumulate(&stats);
        }
        for (group, stats) in &self.retired {
            if let Some(g) = groups.get_mut(group) {
                g.accumulate(stats);
            }
        }
        Ok(groups.into_iter().collect())
    }

    /// The eBPF self-counters.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], EngineError> {
        self.engine.counters()
    }

    /// Number of kernel map entries (for leak checks).
    pub fn kernel_entries(&self) -> Result<usize, EngineError> {
        Ok(self.engine.all_stats()?.len())
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
