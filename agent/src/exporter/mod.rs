//! The Prometheus view: per-process figures from the registry, folded into
//! label sets (`--aggregate`, see [`fold`]), encoded at scrape time. Nothing
//! is cached between scrapes but the final counters of exited processes
//! whose group still has live members, so series of exited processes vanish
//! and memory stays bounded by what runs.
//!
//! Two families of figures, never mixed: the runtime's own counters
//! (`goalloc_heap_*`, `goalloc_gc_cycles_total`, `goalloc_goroutines`), for
//! every Go process, and the per-allocation probe counters
//! (`goalloc_allocations_total`, `goalloc_allocated_bytes_total`,
//! `goalloc_allocation_size_bytes`, `goalloc_goroutines_created_total`,
//! `goalloc_goroutines_exited_total`), for the processes chosen for probes.
//!
//! The collector writes OpenMetrics; [`format`] negotiates the answer's
//! format per scrape and converts to the classic text format when the
//! scraper did not ask for OpenMetrics.

pub mod fold;
pub mod format;

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Instant,
};

use agent_common::{Counter, HIST_BUCKETS, ProcStats, bucket_upper_bound};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry as PromRegistry, Unit},
};

pub use fold::{Aggregate, Folder, LABELS, Labels, Row};
pub use format::{ConvertError, Format};

use crate::registry::Registry;

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
            last_scrape: Mutex::new(None),
        }));
        Metrics { registry: prom }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The exposition in `format` (see [`Format::negotiate`]).
    pub fn render_as(&self, format: Format) -> Result<String, RenderError> {
        let openmetrics = self.render().map_err(|_| RenderError::Encode)?;
        match format {
            Format::OpenMetrics => Ok(openmetrics),
            Format::Classic => Ok(format::openmetrics_to_classic(&openmetrics)?),
        }
    }
}

/// Why `/metrics` could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("encoding the OpenMetrics exposition failed")]
    Encode,
    #[error("converting to the classic text format: {0}")]
    Convert(#[from] ConvertError),
}

/// Content type of the OpenMetrics exposition ([`Format::content_type`]).
pub const CONTENT_TYPE: &str = format::OPENMETRICS;

struct RegistryCollector {
    registry: Arc<Mutex<Registry>>,
    folder: Mutex<Folder>,
    /// How long the previous scrape took to read every process.
    last_scrape: Mutex<Option<f64>>,
}

impl fmt::Debug for RegistryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryCollector")
    }
}

/// One family with a value per row that has it.
fn family<T>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    rows: &[Row],
    value: impl Fn(&Row) -> Option<T>,
) -> fmt::Result
where
    T: Into<u64>,
{
    let mut family = enc.encode_descriptor(name, help, unit, kind)?;
    for row in rows {
        let Some(v) = value(row) else { continue };
        let v: u64 = v.into();
        match kind {
            MetricType::Counter => {
                ConstCounter::new(v).encode(family.encode_family(&row.labels)?)?
            }
            _ => ConstGauge::new(v).encode(family.encode_family(&row.labels)?)?,
        }
    }
    Ok(())
}

/// Per-bucket counts with their `le` bounds, the form prometheus-client's
/// `encode_histogram` takes: it accumulates them itself, so handing it
/// [`cumulative`] buckets would sum twice.
pub fn per_bucket(counts: &[u64; HIST_BUCKETS]) -> Vec<(f64, u64)> {
    (0..HIST_BUCKETS)
        .map(|i| {
            let le = if i == HIST_BUCKETS - 1 {
                f64::INFINITY
            } else {
                bucket_upper_bound(i) as f64
            };
            (le, counts[i])
        })
        .collect()
}

/// Cumulative `le` buckets from per-bucket counts (`agent_common`'s log2
/// buckets); the last bucket is open-ended.
pub fn cumulative(counts: &[u64; HIST_BUCKETS]) -> Vec<(f64, u64)> {
    let mut running = 0u64;
    let mut buckets: Vec<(f64, u64)> = (0..HIST_BUCKETS - 1)
        .map(|i| {
            running += counts[i];
            (bucket_upper_bound(i) as f64, running)
        })
        .collect();
    running += counts[HIST_BUCKETS - 1];
    buckets.push((f64::INFINITY, running));
    buckets
}

/// Cumulative `le` buckets from the kernel's per-bucket counts.
pub fn cumulative_buckets(stats: &ProcStats) -> Vec<(f64, u64)> {
    cumulative(&stats.size_hist)
}

impl Collector for RegistryCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let started = Instant::now();
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
        let read_time = started.elapsed().as_secs_f64();

        // The runtime's own counters (client_golang's counterparts in brackets).
        let rt = |row: &Row| row.runtime.clone();
        use MetricType::{Counter as C, Gauge as G};
        family(
            &mut enc,
            "goalloc_heap_allocations",
            "Heap objects allocated, as the runtime counts them (MemStats.Mallocs; go_memstats_mallocs_total).",
            None,
            C,
            &rows,
            |r| rt(r).map(|x| x.mallocs),
        )?;
        family(
            &mut enc,
            "goalloc_heap_frees",
            "Heap objects freed (MemStats.Frees; go_memstats_frees_total).",
            None,
            C,
            &rows,
            |r| rt(r).map(|x| x.frees),
        )?;
        family(
            &mut enc,
            "goalloc_heap_allocated",
            "Heap bytes allocated, by size class (MemStats.TotalAlloc; go_memstats_alloc_bytes_total).",
            Some(&Unit::Bytes),
            C,
            &rows,
            |r| rt(r).map(|x| x.total_alloc),
        )?;
        family(
            &mut enc,
            "goalloc_heap_freed",
            "Heap bytes freed (MemStats.TotalAlloc - MemStats.HeapAlloc).",
            Some(&Unit::Bytes),
            C,
            &rows,
            |r| rt(r).map(|x| x.freed_bytes),
        )?;
        family(
            &mut enc,
            "goalloc_heap_live_objects",
            "Live heap objects (MemStats.HeapObjects; go_memstats_heap_objects).",
            None,
            G,
            &rows,
            |r| rt(r).map(|x| x.heap_objects),
        )?;
        family(
            &mut enc,
            "goalloc_heap_live",
            "Bytes of live heap objects (MemStats.HeapAlloc; go_memstats_heap_alloc_bytes).",
            Some(&Unit::Bytes),
            G,
            &rows,
            |r| rt(r).map(|x| x.heap_alloc),
        )?;
        family(
            &mut enc,
            "goalloc_heap_inuse",
            "Bytes in in-use heap spans (MemStats.HeapInuse; go_memstats_heap_inuse_bytes).",
            Some(&Unit::Bytes),
            G,
            &rows,
            |r| rt(r).map(|x| x.heap_inuse),
        )?;
        family(
            &mut enc,
            "goalloc_heap_goal",
            "Heap size at which the next GC cycle ends (MemStats.NextGC; go_memstats_next_gc_bytes).",
            Some(&Unit::Bytes),
            G,
            &rows,
            |r| rt(r).map(|x| x.next_gc),
        )?;
        family(
            &mut enc,
            "goalloc_gc_cycles",
            "Completed GC cycles (MemStats.NumGC; go_gc_cycles_total_gc_cycles_total).",
            None,
            C,
            &rows,
            |r| rt(r).map(|x| x.num_gc),
        )?;
        family(
            &mut enc,
            "goalloc_goroutines",
            "Live goroutines (runtime.NumGoroutine(); go_goroutines).",
            None,
            G,
            &rows,
            |r| rt(r).map(|x| x.goroutines),
        )?;
        {
            let mut family = enc.encode_descriptor(
                "goalloc_heap_allocation_size",
                "Heap allocations by size: each size class in the power-of-two bucket of its object size (tiny allocations at 16 bytes, large ones in +Inf).",
                Some(&Unit::Bytes),
                MetricType::Histogram,
            )?;
            for row in &rows {
                let Some(r) = &row.runtime else { continue };
                family
                    .encode_family(&row.labels)?
                    .encode_histogram::<NoLabelSet>(
                        r.total_alloc as f64,
                        r.mallocs,
                        &per_bucket(&r.alloc_sizes),
                        None,
                    )?;
            }
        }
        {
            let mut family = enc.encode_descriptor(
                "goalloc_runtime_unavailable_processes",
                "Go processes whose runtime counters cannot be read, by reason (nothing else is exported for them).",
                None,
                MetricType::Gauge,
            )?;
            for row in &rows {
                for (reason, n) in &row.unavailable {
                    let mut labels = row.labels.clone();
                    labels.push(("reason", reason.to_string()));
                    ConstGauge::new(*n as i64).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        // The per-allocation probes, for the processes chosen for them.
        let pr = |row: &Row| row.probes;
        {
            let mut family = enc.encode_descriptor(
                // The unit adds `_seconds`: the samples are goalloc_probe_cpu_seconds_total.
                "goalloc_probe_cpu",
                "Estimated CPU time the per-allocation probes cost the process (probe hits times the cost of a hit at its site: emulated ~1 us, single-stepped ~15 us).",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            for row in &rows {
                let Some(stats) = &row.probes else { continue };
                ConstCounter::new(crate::guard::cpu_seconds(stats))
                    .encode(family.encode_family(&row.labels)?)?;
            }
        }
        family(
            &mut enc,
            "goalloc_allocations",
            "Heap allocations counted by the per-allocation probes (calls to the runtime allocator with a non-zero size).",
            None,
            C,
            &rows,
            |r| pr(r).map(|x| x.allocs),
        )?;
        family(
            &mut enc,
            "goalloc_allocated",
            "Bytes requested from the Go heap allocator, per-allocation probes (before size-class rounding).",
            Some(&Unit::Bytes),
            C,
            &rows,
            |r| pr(r).map(|x| x.bytes),
        )?;
        family(
            &mut enc,
            "goalloc_goroutines_created",
            "Goroutines created (runtime.newproc1), per-allocation probes.",
            None,
            C,
            &rows,
            |r| pr(r).map(|x| x.goroutines_created),
        )?;
        family(
            &mut enc,
            "goalloc_goroutines_exited",
            "Goroutines that exited (runtime.gdestroy, runtime.goexit0 before Go 1.22), per-allocation probes.",
            None,
            C,
            &rows,
            |r| pr(r).map(|x| x.goroutines_exited),
        )?;
        {
            let mut family = enc.encode_descriptor(
                "goalloc_allocation_size",
                "Requested size of heap allocations, in power-of-two buckets (per-allocation probes).",
                Some(&Unit::Bytes),
                MetricType::Histogram,
            )?;
            for row in &rows {
                let Some(stats) = &row.probes else { continue };
                family
                    .encode_family(&row.labels)?
                    .encode_histogram::<NoLabelSet>(
                        stats.bytes as f64,
                        stats.allocs,
                        &per_bucket(&stats.size_hist),
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
            "goalloc_processes_inaccessible",
            "Processes whose executable and memory goalloc may not read (ptrace access denied: needs CAP_SYS_PTRACE for other users' processes, Yama ptrace_scope < 3); they may be Go programs.",
            None,
            registry.inaccessible() as f64,
        )?;
        gauge(
            &mut enc,
            "goalloc_processes_probed",
            "Go processes with the per-allocation probes on.",
            None,
            registry.probed() as f64,
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
        gauge(
            &mut enc,
            "goalloc_probe_attachments_pending",
            "Chosen processes whose probes are still to be attached (one at a time).",
            None,
            registry.pending_attachments() as f64,
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
            // Its own family, so dashboards can show how full the map is.
            gauge(
                &mut enc,
                "goalloc_kernel_map_capacity",
                "Processes the kernel map can hold (compare goalloc_kernel_map_entries).",
                None,
                f64::from(agent_common::MAX_PROCESSES),
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
        let previous = self
            .last_scrape
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(read_time);
        if let Some(t) = previous {
            gauge(
                &mut enc,
                "goalloc_last_scrape_read_duration",
                "Time the previous scrape took to read every process's figures.",
                Some(&Unit::Seconds),
                t,
            )?;
        }
        {
            let reads = &registry.stats.reads;
            let mut family = enc.encode_descriptor(
                "goalloc_runtime_reads",
                "Reads of runtime counters from process memory, by result (skipped: implausible, the last figures stay; failed: see reason).",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(reads.ok)
                .encode(family.encode_family(&[("result", "ok"), ("reason", "")])?)?;
            ConstCounter::new(reads.skipped).encode(
                family.encode_family(&[("result", "skipped"), ("reason", "implausible")])?,
            )?;
            for (reason, n) in &reads.failures {
                ConstCounter::new(*n)
                    .encode(family.encode_family(&[("result", "failed"), ("reason", *reason)])?)?;
            }
        }
        ConstCounter::new(registry.stats.reads.retries).encode(enc.encode_descriptor(
            "goalloc_runtime_read_retries",
            "Runtime counter reads repeated because the counters moved while being read.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(registry.stats.reads.corrections).encode(enc.encode_descriptor(
            "goalloc_runtime_corrections",
            "Reads in which a runtime counter was below what was already exported (held, so exported counters never go down).",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut family = enc.encode_descriptor(
                "goalloc_attach_errors",
                "Go executables that could not be read or probed, by reason (once per file version).",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &registry.stats.attach_errors {
                ConstCounter::new(*n).encode(family.encode_family(&[("reason", *reason)])?)?;
            }
        }
        {
            let mut family = enc.encode_descriptor(
                "goalloc_exact_disabled",
                "Processes chosen for per-allocation probes that lost them or never got them, by reason (budget: over --exact-budget; attach: refused by the kernel). Their runtime counters stay.",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &registry.stats.exact_disabled {
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
            single(
                &mut enc,
                "goalloc_profile_samples",
                "Allocations sampled for profiles (goalloc profile, /debug/pprof/allocs).",
                c.get(Counter::ProfileSamples),
            )?;
            single(
                &mut enc,
                "goalloc_profile_samples_dropped",
                "Profile samples dropped because the kernel's sampled-stack table was full.",
                c.get(Counter::ProfileStacksFull),
            )?;
            single(
                &mut enc,
                "goalloc_profile_stacks_truncated",
                "Profile samples whose stack was deeper than the frames kept (cut there).",
                c.get(Counter::ProfileStacksTruncated),
            )?;
            let mut family = enc.encode_descriptor(
                "goalloc_probe_hits",
                "Probe hits in the kernel, by outcome.",
                None,
                MetricType::Counter,
            )?;
            // The ones above have metrics of their own.
            for counter in Counter::ALL.into_iter().filter(|c| {
                !matches!(
                    c,
                    Counter::StatsMapFull
                        | Counter::EventsLost
                        | Counter::ProfileSamples
                        | Counter::ProfileStacksFull
                        | Counter::ProfileStacksTruncated
                )
            }) {
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

    /// prometheus-client accumulates the counts it is given: the exposition
    /// of per-bucket counts is cumulative, once, and ends at the count.
    #[test]
    fn histograms_are_encoded_cumulative_once() {
        let mut counts = [0u64; HIST_BUCKETS];
        counts[0] = 1;
        counts[3] = 5;
        counts[HIST_BUCKETS - 1] = 2;
        let buckets = per_bucket(&counts);
        assert_eq!(buckets.len(), HIST_BUCKETS);
        assert_eq!(buckets[3], (8.0, 5));
        assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 2));

        #[derive(Debug)]
        struct One([u64; HIST_BUCKETS]);
        impl Collector for One {
            fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
                let mut family =
                    enc.encode_descriptor("h", "H.", Some(&Unit::Bytes), MetricType::Histogram)?;
                family
                    .encode_family(&[("pid", "1")])?
                    .encode_histogram::<NoLabelSet>(9.0, 8, &per_bucket(&self.0), None)
            }
        }
        let mut registry = PromRegistry::default();
        registry.register_collector(Box::new(One(counts)));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let bucket = |le: &str| {
            let prefix = format!("h_bytes_bucket{{le=\"{le}\",pid=\"1\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"))
                .to_string()
        };
        assert_eq!(bucket("1.0"), "1");
        assert_eq!(bucket("4.0"), "1");
        assert_eq!(bucket("8.0"), "6");
        assert_eq!(bucket("+Inf"), "8");
        assert!(text.contains("h_bytes_count{pid=\"1\"} 8\n"), "{text}");
        // And the classic conversion keeps them.
        let classic = format::openmetrics_to_classic(&text).unwrap();
        assert!(
            classic.contains("h_bytes_bucket{le=\"+Inf\",pid=\"1\"} 8\n"),
            "{classic}"
        );
    }
}
