//! Prometheus metrics, encoded at scrape time straight from the kernel maps:
//! nothing is cached between scrapes, so exited processes' series vanish and
//! memory stays bounded by what runs.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use agent_common::{HIST_BUCKETS, ProcStats, bucket_upper_bound, counter};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::tracker::{Labels, Tracker};

/// The agent's whole metric set.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(tracker: Arc<Mutex<Tracker>>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(TrackerCollector { tracker }));
        Metrics { registry }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct TrackerCollector {
    tracker: Arc<Mutex<Tracker>>,
}

impl fmt::Debug for TrackerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrackerCollector")
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

impl Collector for TrackerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let rows = match tracker.snapshot() {
            Ok(rows) => rows,
            Err(e) => {
                log::warn!("reading counters: {e}");
                Vec::new()
            }
        };
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
        let engine = tracker.engine();
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
            tracker.processes().count() as f64,
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
        if let Ok(n) = tracker.kernel_entries() {
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
            tracker.stats.last_sweep.as_secs_f64(),
        )?;
        if let Some(d) = tracker.stats.max_exec_to_tracked {
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
            for (reason, n) in &tracker.stats.attach_errors {
                ConstCounter::new(*n).encode(family.encode_family(&[("reason", *reason)])?)?;
            }
        }
        if let Ok(c) = tracker.counters() {
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
                c[counter::STATS_MAP_FULL as usize],
            )?;
            single(
                &mut enc,
                "goalloc_events_lost",
                "Process exec/exit events dropped because the ring buffer was full.",
                c[counter::EVENTS_LOST as usize],
            )?;
            let mut family = enc.encode_descriptor(
                "goalloc_probe_hits",
                "Probe hits in the kernel, by outcome.",
                None,
                MetricType::Counter,
            )?;
            for (probe, idx) in [
                ("alloc", counter::ALLOC_HITS),
                ("alloc_nested", counter::ALLOC_NESTED_SKIPS),
                ("alloc_zero_size", counter::ALLOC_ZERO_SIZE),
                ("goroutine_create", counter::GOROUTINE_CREATE_HITS),
                ("goroutine_exit", counter::GOROUTINE_EXIT_HITS),
                ("read_error", counter::READ_ERRORS),
                ("filtered", counter::FILTERED_OUT),
            ] {
                ConstCounter::new(c[idx as usize])
                    .encode(family.encode_family(&[("probe", probe)])?)?;
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
