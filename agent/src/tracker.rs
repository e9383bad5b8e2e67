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

use gobinary::plan::{PlanOptions, ProbePlan};

use crate::{
    classify::{Class, Classifier, FileStamp, SharedClassCache},
    ebpf::{Detached, Engine, EngineError},
    identity::{cgroup::CgroupIdentity, kube::PodIndex},
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
    /// The stable identity of a process's group: like its labels, with the
    /// pod UID standing for pod, namespace and container names.
    fn group(
        self,
        pid: u32,
        comm: &str,
        exe: &str,
        go_version: &str,
        cgroup: &CgroupIdentity,
    ) -> Labels {
        let fields = [
            ("pid", pid.to_string()),
            ("comm", comm.to_string()),
            ("exe", exe.to_string()),
            ("go_version", go_version.to_string()),
            (
                "container_id",
                cgroup.container_id.clone().unwrap_or_default(),
            ),
            ("pod", cgroup.pod_uid.clone().unwrap_or_default()),
        ];
        fields.into_iter().filter(|(k, _)| self.keeps(k)).collect()
    }

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
    /// CLOCK_MONOTONIC when /proc was read to track it.
    pub tracked_at_ns: u64,
    /// Counters at the last snapshot: the final ones if the kernel resets
    /// them at exec before we read them again.
    pub last_seen: ProcStats,
    /// The aggregation group, from identities that do not change while the
    /// process lives (names from the Kubernetes API may arrive later).
    pub group: Labels,
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
    classes: SharedClassCache,
    /// Processes per attached binary.
    refs: HashMap<BinaryKey, usize>,
    /// Attached binaries without processes, since when.
    idle: HashMap<BinaryKey, Instant>,
    detacher: Detacher,
    processes: HashMap<u32, Tracked>,
    /// Final counters of exited processes whose group still has live members,
    /// so aggregated counters do not drop when one member exits.
    retired: HashMap<Labels, ProcStats>,
    /// File versions that cannot be probed (counted once in `attach_errors`,
    /// not retried).
    failed: HashSet<FileStamp>,
    /// Which version of each attached file its probes were planned for.
    attached_stamps: HashMap<BinaryKey, FileStamp>,
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
            classes: SharedClassCache::default(),
            refs: HashMap::new(),
            idle: HashMap::new(),
            detacher: Detacher::new(),
            processes: HashMap::new(),
            retired: HashMap::new(),
            failed: HashSet::new(),
            attached_stamps: HashMap::new(),
            stats: SelfStats::default(),
        }
    }

    /// Pod metadata became available (the API server answered).
    pub fn set_pods(&mut self, pods: PodIndex) {
        self.pods = Some(pods);
    }

    /// A handle that classifies executables into this tracker's cache
    /// without its lock (see [`Classifier`]).
    pub fn classifier(&self) -> Classifier {
        Classifier {
            cache: self.classes.clone(),
            opts: self.plan_opts,
        }
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
        // Taken before reading /proc: kernel events older than this are
        // already reflected in what we read (see `on_event`).
        let now_ns = monotonic_ns();
        let Ok(id) = ProcessId::of(pid) else {
            return Ok(false); // already gone
        };
        // Kernel threads and processes we may not inspect have no readable exe.
        let Ok(exe) = procfs::open_exe(pid) else {
            return Ok(false);
        };
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
        if self.failed.contains(&stamp) {
            return Ok(false);
        }
        let class = self
            .classes
            .lock()
            .get_or_classify(stamp, exe.path(), self.plan_opts);
        let plan: Arc<ProbePlan> = match class {
            Class::NotGo => return Ok(false),
            Class::Unsupported { reason, detail } => {
                if self.failed.insert(stamp) {
                    *self.stats.attach_errors.entry(reason).or_default() += 1;
                    log::warn!(
                        "pid {pid}: cannot probe {}: {detail}",
                        procfs::exe_target_of(exe.path()).display()
                    );
                }
                return Ok(false);
            }
            Class::Go(plan) => plan,
        };
        self.collect_detached(Some(stamp.key));
        if self
            .attached_stamps
            .get(&stamp.key)
            .is_some_and(|s| *s != stamp)
        {
            // Rewritten in place while attached: the old offsets must go
            // before the new ones are placed.
            log::warn!(
                "{} changed on disk: re-attaching",
                procfs::exe_target_of(exe.path()).display()
            );
            self.idle.remove(&stamp.key);
            self.start_detach(stamp.key);
            self.collect_detached(Some(stamp.key));
        }
        if !self.engine.is_attached(&stamp.key) {
            if let Err(e) = self.engine.attach(stamp.key, exe.path(), &plan) {
                // A process that exited meanwhile is not an attach error; a
                // real failure is not retried for this file version.
                if id.is_alive() && self.failed.insert(stamp) {
                    *self.stats.attach_errors.entry("attach").or_default() += 1;
                    log::warn!("pid {pid}: {e}");
                }
                return Ok(false);
            }
            self.attached_stamps.insert(stamp.key, stamp);
            log::info!(
                "attached {} probes to {} ({})",
                plan.probes.len(),
                procfs::exe_target_of(exe.path()).display(),
                plan.go_version
            );
        }
        *self.refs.entry(stamp.key).or_default() += 1;
        self.idle.remove(&stamp.key);
        let comm = procfs::comm(pid).unwrap_or_default();
        let exe_name = procfs::exe_target_of(exe.path())
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string();
        let cgroup = crate::identity::cgroup::read(pid).unwrap_or_default();
        let group = self
            .aggregate
            .group(pid, &comm, &exe_name, &plan.go_version, &cgroup);
        let tracked = Tracked {
            id,
            stamp,
            tracked_at_ns: now_ns,
            last_seen: ProcStats::ZERO,
            group,
            comm,
            exe: exe_name,
            go_version: plan.go_version.clone(),
            cgroup,
        };
        self.processes.insert(pid, tracked);
        Ok(true)
    }

    /// Stops tracking `pid`: keeps its final counts for its group, drops its
    /// kernel map entry, and detaches its binary if nothing else runs it.
    /// `exec`: the process replaced its image; the kernel already reset its
    /// counters, so the last values read are its final ones.
    pub fn exited(&mut self, pid: u32, exec: bool) -> Result<(), EngineError> {
        let Some(t) = self.processes.remove(&pid) else {
            return Ok(());
        };
        if self.aggregate != Aggregate::Process {
            let group = t.group.clone();
            let live_peer = self.processes.values().any(|o| o.group == group);
            if live_peer {
                let mut last = t.last_seen;
                if !exec && let Some(s) = self.engine.stats(pid)? {
                    last = s;
                }
                self.retired
                    .entry(group)
                    .or_insert(ProcStats::ZERO)
                    .accumulate(&last);
            } else {
                self.retired.remove(&group);
            }
        }
        if !exec {
            self.engine.forget_process(pid)?;
        }
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
        let engine = &self.engine;
        self.attached_stamps.retain(|k, _| engine.is_attached(k));
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
        self.classes.lock().retain(|s| in_use.contains(s));
        self.failed.retain(|s| in_use.contains(s));
        self.stats.sweeps += 1;
        self.stats.last_sweep = started.elapsed();
        Ok(())
    }

    /// Output labels of a tracked process, names resolved now.
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
        let aggregate = self.aggregate;
        LABELS
            .iter()
            .copied()
            .zip(values)
            .filter(|(k, _)| aggregate.keeps(k))
            .collect()
    }

    /// Current counters per label set (after aggregation). Remembers each
    /// process's counters (see `Tracked::last_seen`).
    pub fn snapshot(&mut self) -> Result<Vec<(Labels, ProcStats)>, EngineError> {
        let mut groups: BTreeMap<Labels, (ProcStats, u32)> = BTreeMap::new();
        for (&pid, t) in self.processes.iter_mut() {
            if let Some(stats) = self.engine.stats(pid)? {
                t.last_seen = stats;
            }
            groups
                .entry(t.group.clone())
                .or_insert((ProcStats::ZERO, pid))
                .0
                .accumulate(&t.last_seen);
        }
        for (group, stats) in &self.retired {
            if let Some(g) = groups.get_mut(group) {
                g.0.accumulate(stats);
            }
        }
        Ok(groups
            .into_values()
            .map(|(stats, pid)| (self.labels_of(pid, &self.processes[&pid]), stats))
            .collect())
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
