//! Label sets and `--aggregate` folding: per-process figures summed into one
//! row per process, container, pod or executable.
//!
//! Counters of a group must not go down when one member exits while others
//! live, so the final counters of exited members are carried ("retired")
//! until the group has no live member left; then the group and its series go.

use std::collections::{BTreeMap, HashMap};

use agent_common::{HIST_BUCKETS, ProcStats};
use gobinary::runtime::RuntimeCounters;

use crate::registry::{ProcessInfo, ProcessSnapshot};

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

/// A label set: `(name, value)` pairs in `LABELS` order.
pub type Labels = Vec<(&'static str, String)>;

impl Aggregate {
    /// The stable identity of a process's group: like its labels, with the
    /// pod UID standing for pod, namespace and container names (which may
    /// only become known later).
    fn group(self, p: &ProcessInfo) -> Labels {
        let fields = [
            ("pid", p.pid.to_string()),
            ("comm", p.comm.clone()),
            ("exe", p.exe.clone()),
            ("go_version", p.go_version.clone()),
            (
                "container_id",
                p.cgroup.container_id.clone().unwrap_or_default(),
            ),
            ("pod", p.cgroup.pod_uid.clone().unwrap_or_default()),
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

    /// Output labels of a process, pod names as resolved in the snapshot.
    fn labels(self, s: &ProcessSnapshot) -> Labels {
        let p = &s.info;
        let values = [
            p.pid.to_string(),
            p.comm.clone(),
            p.exe.clone(),
            p.go_version.clone(),
            p.cgroup.container_id.clone().unwrap_or_default(),
            s.pod.pod.clone(),
            s.pod.namespace.clone(),
            s.pod.container.clone(),
        ];
        LABELS
            .iter()
            .copied()
            .zip(values)
            .filter(|(k, _)| self.keeps(k))
            .collect()
    }
}

/// One output row: the figures of a group.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub labels: Labels,
    /// Runtime counters summed over the members that have them.
    pub runtime: Option<RuntimeCounters>,
    /// Probe counters summed over the probed members.
    pub probes: Option<ProcStats>,
    /// Members without runtime counters, by reason.
    pub unavailable: BTreeMap<&'static str, u64>,
}

/// A zero `RuntimeCounters`.
pub fn zero_runtime() -> RuntimeCounters {
    RuntimeCounters {
        mallocs: 0,
        frees: 0,
        total_alloc: 0,
        freed_bytes: 0,
        heap_alloc: 0,
        heap_objects: 0,
        heap_inuse: 0,
        next_gc: 0,
        num_gc: 0,
        goroutines: 0,
        alloc_sizes: [0; HIST_BUCKETS],
        consistent: true,
        retries: 0,
    }
}

/// `acc += x`, field by field; with `counters_only`, the gauges (live heap,
/// heap in use, goal, goroutines) are left out (an exited member has none).
fn add_runtime(acc: &mut RuntimeCounters, x: &RuntimeCounters, counters_only: bool) {
    acc.mallocs = acc.mallocs.saturating_add(x.mallocs);
    acc.frees = acc.frees.saturating_add(x.frees);
    acc.total_alloc = acc.total_alloc.saturating_add(x.total_alloc);
    acc.freed_bytes = acc.freed_bytes.saturating_add(x.freed_bytes);
    acc.num_gc = acc.num_gc.saturating_add(x.num_gc);
    for (a, b) in acc.alloc_sizes.iter_mut().zip(x.alloc_sizes.iter()) {
        *a = a.saturating_add(*b);
    }
    if !counters_only {
        acc.heap_alloc = acc.heap_alloc.saturating_add(x.heap_alloc);
        acc.heap_objects = acc.heap_objects.saturating_add(x.heap_objects);
        acc.heap_inuse = acc.heap_inuse.saturating_add(x.heap_inuse);
        acc.next_gc = acc.next_gc.saturating_add(x.next_gc);
        acc.goroutines = acc.goroutines.saturating_add(x.goroutines);
    }
}

/// The counters of exited members of a live group.
#[derive(Debug, Default)]
struct Retired {
    runtime: Option<RuntimeCounters>,
    probes: Option<ProcStats>,
}

/// Folds per-process figures into label sets.
#[derive(Debug, Default)]
pub struct Folder {
    aggregate: Aggregate,
    retired: HashMap<Labels, Retired>,
}

impl Folder {
    pub fn new(aggregate: Aggregate) -> Folder {
        Folder {
            aggregate,
            retired: HashMap::new(),
        }
    }

    /// Rows for output: `live` processes folded by group, plus the retired
    /// counters of their groups. `exited`: processes that exited since the
    /// last call.
    pub fn fold(&mut self, live: &[ProcessSnapshot], exited: &[ProcessSnapshot]) -> Vec<Row> {
        let mut groups: BTreeMap<Labels, Row> = BTreeMap::new();
        for s in live {
            let row = groups.entry(self.aggregate.group(&s.info)).or_default();
            if row.labels.is_empty() {
                row.labels = self.aggregate.labels(s);
            }
            match &s.runtime {
                Ok(r) => add_runtime(row.runtime.get_or_insert_with(zero_runtime), r, false),
                Err(u) => *row.unavailable.entry(u.reason).or_default() += 1,
            }
            if let Some(p) = &s.probes {
                row.probes.get_or_insert(ProcStats::ZERO).accumulate(p);
            }
        }
        if self.aggregate != Aggregate::Process {
            for s in exited {
                let group = self.aggregate.group(&s.info);
                if !groups.contains_key(&group) {
                    continue;
                }
                let retired = self.retired.entry(group).or_default();
                if let Ok(r) = &s.runtime {
                    add_runtime(retired.runtime.get_or_insert_with(zero_runtime), r, true);
                }
                if let Some(p) = &s.probes {
                    retired.probes.get_or_insert(ProcStats::ZERO).accumulate(p);
                }
            }
            // A group without live members is gone, with its series.
            self.retired.retain(|g, _| groups.contains_key(g));
            for (group, retired) in &self.retired {
                let Some(row) = groups.get_mut(group) else {
                    continue;
                };
                if let Some(r) = &retired.runtime {
                    add_runtime(row.runtime.get_or_insert_with(zero_runtime), r, true);
                }
                if let Some(p) = &retired.probes {
                    row.probes.get_or_insert(ProcStats::ZERO).accumulate(p);
                }
            }
        }
        groups.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{identity::cgroup::CgroupIdentity, registry::PodNames, runtime::Unavailable};

    fn snap(pid: u32, pod_uid: &str, mallocs: u64, live: u64, exited: bool) -> ProcessSnapshot {
        let mut r = zero_runtime();
        r.mallocs = mallocs;
        r.heap_alloc = live;
        let mut probes = ProcStats::ZERO;
        probes.allocs = mallocs;
        ProcessSnapshot {
            info: Arc::new(ProcessInfo {
                pid,
                comm: "svc".into(),
                exe: "/svc".into(),
                go_version: "go1.27.3".into(),
                cgroup: CgroupIdentity {
                    pod_uid: Some(pod_uid.into()),
                    ..Default::default()
                },
            }),
            pod: PodNames::default(),
            runtime: Ok(r),
            probes: Some(probes),
            exited,
        }
    }

    #[test]
    fn pods_keep_counters_of_exited_members_not_their_gauges() {
        let mut f = Folder::new(Aggregate::Pod);
        let rows = f.fold(
            &[snap(1, "a", 10, 100, false), snap(2, "a", 5, 50, false)],
            &[],
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].runtime.as_ref().unwrap().mallocs, 15);
        assert_eq!(rows[0].runtime.as_ref().unwrap().heap_alloc, 150);
        // pid 2 exits with 7 allocations: the pod's counter keeps them, its
        // live heap does not.
        let rows = f.fold(
            &[snap(1, "a", 11, 100, false)],
            &[snap(2, "a", 7, 60, true)],
        );
        let r = rows[0].runtime.as_ref().unwrap();
        assert_eq!(r.mallocs, 18);
        assert_eq!(r.heap_alloc, 100);
        assert_eq!(rows[0].probes.unwrap().allocs, 18);
        // The last member goes: so do the group and what it carried.
        let rows = f.fold(&[], &[snap(1, "a", 12, 0, true)]);
        assert!(rows.is_empty());
        let rows = f.fold(&[snap(3, "a", 1, 1, false)], &[]);
        assert_eq!(rows[0].runtime.as_ref().unwrap().mallocs, 1);
    }

    #[test]
    fn per_process_rows_and_reasons() {
        let mut f = Folder::new(Aggregate::Process);
        let mut denied = snap(2, "a", 0, 0, false);
        denied.runtime = Err(Unavailable {
            reason: "access_denied",
            detail: String::new(),
        });
        denied.probes = None;
        let rows = f.fold(&[snap(1, "a", 10, 100, false), denied], &[]);
        assert_eq!(rows.len(), 2);
        assert!(rows[0].labels.contains(&("pid", "1".into())));
        assert_eq!(rows[1].runtime, None);
        assert_eq!(rows[1].probes, None);
        assert_eq!(rows[1].unavailable.get("access_denied"), Some(&1));
    }
}
