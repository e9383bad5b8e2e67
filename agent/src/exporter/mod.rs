//! The Prometheus view: per-process figures from the registry, folded into
//! label sets (`--aggregate`), encoded at scrape time. Nothing is cached
//! between scrapes but the final counters of exited processes whose group
//! still has live members, so series of exited processes vanish and memory
//! stays bounded by what runs.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex},
};

use agent_common::{Counter, HIST_BUCKETS, ProcStats, bucket_upper_bound};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry as PromRegistry, Unit},
};

use crate::registry::{ProcessInfo, ProcessSnapshot, Registry};

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

/// Folds per-process figures into label sets, carrying the final counters
/// of exited members so that a group's counters never go down while it has
/// live members.
#[derive(Debug, Default)]
pub struct Folder {
    aggregate: Aggregate,
    /// Final counters of exited processes, by group.
    retired: HashMap<Labels, ProcStats>,
}

impl Folder {
    pub fn new(aggregate: Aggregate) -> Folder {
        Folder {
            aggregate,
            retired: HashMap::new(),
        }
    }

    /// Rows for output: `live` processes folded by group, plus the retired
    /// counters of their groups. `exited` are processes that exited since
    /// the last call.
    pub fn fold(
        &mut self,
        live: &[ProcessSnapshot],
        exited: &[ProcessSnapshot],
    ) -> Vec<(Labels, ProcStats)> {
        let mut groups: BTreeMap<Labels, (ProcStats, &ProcessSnapshot)> = BTreeMap::new();
        for s in live {
            let Some(stats) = &s.probes else { continue };
            groups
                .entry(self.aggregate.group(&s.info))
                .or_insert((ProcStats::ZERO, s))
                .0
                .accumulate(stats);
        }
        if self.aggregate != Aggregate::Process {
            for s in exited {
                let group = self.aggregate.group(&s.info);
                if let (true, Some(stats)) = (groups.contains_key(&group), &s.probes) {
                    self.retired
                        .entry(group)
                        .or_insert(ProcStats::ZERO)
                        .accumulate(stats);
                }
            }
            // A group without live members is gone, with its series.
            self.retired.retain(|g, _| groups.contains_key(g));
            for (group, stats) in &self.retired {
                if let Some(g) = groups.get_mut(group) {
                    g.0.accumulate(stats);
                }
            }
        }
        groups
            .into_values()
            .map(|(stats, s)| (self.aggregate.labels(s), stats))
            .collect()
    }
}

/// The agent's whole metric set.
pub struct Metrics {
    registry: PromRegistry,
}

impl Metrics {
    pub fn new(registry: Arc<Mutex<Registry>>, aggregate: Aggregate) -> Metrics {
        let mut prom = PromRegistry::default();
        prom.register_collector(Box::new(RegistryCollector {
            registry,
            folder: Mutex::new(Folder::new(aggregate)),
        }));
        Metrics { registry: prom }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct RegistryCollector {
    registry: Arc<Mutex<Registry>>,
    folder: Mutex<Folder>,
}

impl fmt::Debug for RegistryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryCollector")
    }
}

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &[(Labels, ProcStats)],
    value: impl Fn(&ProcStats) -> u64,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, stats) in rows {
        ConstCounter::new(value(stats)).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Cumulative `le` buckets from the kernel's per-bucket counts.
pub fn cumulative_buckets(stats: &ProcStats) -> Vec<(f64, u64)> {
    let mut running = 0u64;
    let mut buckets: Vec<(f64, u64)> = (0..HIST_BUCKETS - 1)
        .map(|i| {
            running += stats.size_hist[i];
            (bucket_upper_bound(i) as f64, running)
        })
        .collect();
    // The last kernel bucket is open-ended.
    running += stats.size_hist[HIST_BUCKETS - 1];
    buckets.push((f64::INFINITY, running));
    buckets
}

impl Collector for RegistryCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let live = match registry.snapshot() {
            Ok(rows) => rows,
            Err(e) => {
                log::warn!("reading counters: {e}");
                Vec::new()
            }
        };
        let exited = registry.take_exited();
        let rows = self
            .folder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fold(&live, &exited);
        counter_family(
            &mut enc,
            "goalloc_allocations",
            "Heap allocations made by the Go program (calls to the runtime allocator with a non-zero size).",
            None,
            &rows,
            |s| s.allocs,
        )?;
        counter_family(
            &mut enc,
            "goalloc_allocated",
            "Bytes requested from the Go heap allocator (before size-class rounding).",
            Some(&Unit::Bytes),
            &rows,
            |s| s.bytes,
        )?;
        counter_family(
            &mut enc,
            "goalloc_goroutines_created",
            "Goroutines created (runtime.newproc1).",
            None,
            &rows,
            |s| s.goroutines_created,
        )?;
        counter_family(
            &mut enc,
            "goalloc_goroutines_exited",
            "Goroutines that exited (runtime.gdestroy, runtime.goexit0 before Go 1.22).",
            None,
            &rows,
            |s| s.goroutines_exited,
        )?;
        {
            let mut family = enc.encode_descriptor(
                "goalloc_allocation_size",
                "Requested size of heap allocations, in power-of-two buckets.",
                Some(&Unit::Bytes),
                MetricType::Histogram,
            )?;
            for (labels, stats) in &rows {
                family
                    .encode_family(labels)?
                    .encode_histogram::<NoLabelSet>(
                        stats.bytes as f64,
                        stats.allocs,
                        &cumulative_buckets(stats),
                        None,
                    )?;
            }
        }

        // Self-observability.
        let engine = registry.engine();
        let gauge = |enc: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     unit: Option<&Unit>,
                     v: f64| {
            ConstGauge::new(v).encode(enc.encode_descriptor(name, help, unit, MetricType::Gauge)?)
        };
        gauge(
            &mut enc,
            "goalloc_processes_tracked",
            "Go processes currently accounted.",
            None,
            registry.len() as f64,
        )?;
        gauge(
            &mut enc,
            "goalloc_binaries_attached",
            "Executables with probes attached.",
            None,
            engine.attached_binaries() as f64,
        )?;
        gauge(
            &mut enc,
            "goalloc_probes_attached",
            "Uprobe links currently attached.",
            None,
            engine.attached_probes() as f64,
        )?;
        if let Ok(n) = registry.kernel_entries() {
            gauge(
                &mut enc,
                "goalloc_kernel_map_entries",
                &format!(
                    "Processes with counters in the kernel map (capacity {}).",
                    agent_common::MAX_PROCESSES
                ),
                None,
                n as f64,
            )?;
        }
        gauge(
            &mut enc,
            "goalloc_last_sweep_duration",
            "Duration of the last /proc sweep.",
            Some(&Unit::Seconds),
            registry.stats.last_sweep.as_secs_f64(),
        )?;
        if let Some(d) = registry.stats.max_exec_to_tracked {
            gauge(
                &mut enc,
                "goalloc_exec_to_tracked_max",
                "Longest time from a Go process's exec to goalloc accounting it.",
                Some(&Unit::Seconds),
                d.as_secs_f64(),
            )?;
        }
        {
            let mut family = enc.encode_descriptor(
                "goalloc_attach_errors",
                "Go executables that could not be probed, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &registry.stats.attach_errors {
                ConstCounter::new(*n).encode(family.encode_family(&[("reason", *reason)])?)?;
            }
        }
        if let Ok(c) = registry.counters() {
            let single = |enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64| {
                ConstCounter::new(v).encode(enc.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Counter,
                )?)
            };
            single(
                &mut enc,
                "goalloc_map_overflows",
                "Probe hits dropped because the per-process map was full.",
                c.get(Counter::StatsMapFull),
            )?;
            single(
                &mut enc,
                "goalloc_events_lost",
                "Process exec/exit events dropped because the ring buffer was full.",
                c.get(Counter::EventsLost),
            )?;
            let mut family = enc.encode_descriptor(
                "goalloc_probe_hits",
                "Probe hits in the kernel, by outcome.",
                None,
                MetricType::Counter,
            )?;
            // The two above have metrics of their own.
            for counter in Counter::ALL
                .into_iter()
                .filter(|c| !matches!(c, Counter::StatsMapFull | Counter::EventsLost))
            {
                ConstCounter::new(c.get(counter))
                    .encode(family.encode_family(&[("probe", counter.name())])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_inf() {
        let mut s = ProcStats::ZERO;
        s.size_hist[0] = 1; // size 1
        s.size_hist[3] = 5; // (4, 8]
        s.size_hist[HIST_BUCKETS - 1] = 2;
        let b = cumulative_buckets(&s);
        assert_eq!(b.len(), HIST_BUCKETS);
        assert_eq!(b[0], (1.0, 1));
        assert_eq!(b[2], (4.0, 1));
        assert_eq!(b[3], (8.0, 6));
        assert_eq!(b[HIST_BUCKETS - 2].1, 6);
        assert_eq!(*b.last().unwrap(), (f64::INFINITY, 8));
    }
}
