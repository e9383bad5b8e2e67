//! Rendering `goalloc watch` rows as a table or as JSON lines.
//!
//! A row holds what happened in an interval (or, for totals, since the
//! process was first seen): the runtime's own counters always (allocations,
//! bytes, GC cycles, and the live heap, goal and goroutines at its end), and
//! the per-allocation probe counters with `--exact`.

use std::io::Write;

use agent_common::{HIST_BUCKETS, ProcStats, bucket_upper_bound};
use gobinary::runtime::RuntimeCounters;
use serde::Serialize;

use crate::registry::ProcessInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// The runtime's figures over a span of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDelta {
    /// Counters: `end - start`.
    pub allocs: u64,
    pub bytes: u64,
    pub frees: u64,
    pub freed_bytes: u64,
    pub gc_cycles: u64,
    pub sizes: [u64; HIST_BUCKETS],
    /// Gauges at the end.
    pub heap_live_bytes: u64,
    pub heap_live_objects: u64,
    pub heap_inuse_bytes: u64,
    pub heap_goal_bytes: u64,
    pub goroutines: u64,
}

impl RuntimeDelta {
    pub fn between(start: &RuntimeCounters, end: &RuntimeCounters) -> RuntimeDelta {
        let mut sizes = end.alloc_sizes;
        for (e, s) in sizes.iter_mut().zip(start.alloc_sizes.iter()) {
            *e = e.saturating_sub(*s);
        }
        RuntimeDelta {
            allocs: end.mallocs.saturating_sub(start.mallocs),
            bytes: end.total_alloc.saturating_sub(start.total_alloc),
            frees: end.frees.saturating_sub(start.frees),
            freed_bytes: end.freed_bytes.saturating_sub(start.freed_bytes),
            gc_cycles: u64::from(end.num_gc.saturating_sub(start.num_gc)),
            sizes,
            heap_live_bytes: end.heap_alloc,
            heap_live_objects: end.heap_objects,
            heap_inuse_bytes: end.heap_inuse,
            heap_goal_bytes: end.next_gc,
            goroutines: end.goroutines,
        }
    }
}

/// One row's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The runtime's counters, or why there are none.
    pub runtime: Result<RuntimeDelta, String>,
    /// Probe counters, with `--exact`.
    pub exact: Option<ProcStats>,
}

#[derive(Serialize)]
struct JsonExact {
    allocs: u64,
    bytes: u64,
    goroutines_created: u64,
    goroutines_exited: u64,
    /// Estimated CPU seconds the probes cost the process (see `guard`).
    probe_cpu_seconds: f64,
    /// `[inclusive upper bound in bytes, count]` of the non-empty log2 buckets.
    size_histogram: Vec<[u64; 2]>,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    pid: u32,
    comm: &'a str,
    go_version: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    total: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    exited: Option<bool>,
    seconds: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    runtime: Option<JsonRuntime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime_unavailable: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exact: Option<JsonExact>,
}

#[derive(Serialize)]
struct JsonRuntime {
    allocs: u64,
    bytes: u64,
    frees: u64,
    freed_bytes: u64,
    gc_cycles: u64,
    heap_live_bytes: u64,
    heap_live_objects: u64,
    heap_inuse_bytes: u64,
    heap_goal_bytes: u64,
    goroutines: u64,
    size_histogram: Vec<[u64; 2]>,
}

pub struct Reporter<W: Write> {
    format: OutputFormat,
    exact: bool,
    out: W,
    header_done: bool,
}

impl<W: Write> Reporter<W> {
    pub fn new(format: OutputFormat, exact: bool, out: W) -> Self {
        Reporter {
            format,
            exact,
            out,
            header_done: false,
        }
    }

    /// Figures of one process over the last `seconds`.
    pub fn interval(&mut self, p: &ProcessInfo, f: &Figures, seconds: f64) -> std::io::Result<()> {
        match self.format {
            OutputFormat::Json => self.json(p, f, seconds, false, None),
            OutputFormat::Table => {
                self.header()?;
                let per = |v: u64| {
                    if seconds > 0.0 {
                        v as f64 / seconds
                    } else {
                        0.0
                    }
                };
                let mut line = format!(
                    "{:>8} {:<16} {:<9}",
                    p.pid,
                    truncate(&p.comm, 16),
                    short_version(&p.go_version)
                );
                match &f.runtime {
                    Ok(r) => line.push_str(&format!(
                        " {:>11} {:>11} {:>10} {:>10} {:>6} {:>10}",
                        format!("{:.0}", per(r.allocs)),
                        human_bytes(per(r.bytes)),
                        human_bytes(r.heap_live_bytes as f64),
                        human_bytes(r.heap_goal_bytes as f64),
                        format!("{:.1}", per(r.gc_cycles)),
                        r.goroutines,
                    )),
                    Err(reason) => line.push_str(&format!(" {:<63}", truncate(reason, 63))),
                }
                if self.exact {
                    let e = f.exact.unwrap_or(ProcStats::ZERO);
                    line.push_str(&format!(
                        " {:>11} {:>11} {:>7} {:>9} {:>10}",
                        format!("{:.0}", per(e.allocs)),
                        human_bytes(per(e.bytes)),
                        avg_size(&e),
                        format!("{:.0}", per(e.goroutines_created)),
                        format!("{:.0}", per(e.goroutines_exited)),
                    ));
                }
                writeln!(self.out, "{}", line.trim_end())?;
                self.out.flush()
            }
        }
    }

    /// Figures since the process was first seen; `exited` when it is gone.
    pub fn total(
        &mut self,
        p: &ProcessInfo,
        f: &Figures,
        seconds: f64,
        exited: bool,
    ) -> std::io::Result<()> {
        match self.format {
            OutputFormat::Json => self.json(p, f, seconds, true, Some(exited)),
            OutputFormat::Table => {
                let mut line = format!(
                    "total {} pid {} ({}, {}) over {:.1}s:",
                    if exited { "of exited" } else { "for" },
                    p.pid,
                    p.comm,
                    p.go_version,
                    seconds,
                );
                match &f.runtime {
                    Ok(r) => line.push_str(&format!(
                        " {} allocations ({}), {} frees, {} GC cycles; live heap {}, goal {}, {} goroutines",
                        r.allocs,
                        human_bytes(r.bytes as f64),
                        r.frees,
                        r.gc_cycles,
                        human_bytes(r.heap_live_bytes as f64),
                        human_bytes(r.heap_goal_bytes as f64),
                        r.goroutines,
                    )),
                    Err(reason) => line.push_str(&format!(" no runtime counters: {reason}")),
                }
                if let Some(e) = &f.exact {
                    let cost = crate::guard::cpu_seconds(e);
                    line.push_str(&format!(
                        "; probes: {} allocations, {} requested (avg {} B), {} goroutines created, {} exited; probe cost ~{:.3} s CPU ({:.2}% of one CPU, estimated)",
                        e.allocs,
                        human_bytes(e.bytes as f64),
                        avg_size(e),
                        e.goroutines_created,
                        e.goroutines_exited,
                        cost,
                        if seconds > 0.0 { 100.0 * cost / seconds } else { 0.0 },
                    ));
                }
                writeln!(self.out, "{line}")?;
                self.out.flush()
            }
        }
    }

    fn header(&mut self) -> std::io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            let mut line = format!(
                "{:>8} {:<16} {:<9} {:>11} {:>11} {:>10} {:>10} {:>6} {:>10}",
                "PID",
                "COMM",
                "GO",
                "ALLOCS/s",
                "BYTES/s",
                "LIVE HEAP",
                "HEAP GOAL",
                "GC/s",
                "GOROUTINES"
            );
            if self.exact {
                line.push_str(&format!(
                    " {:>11} {:>11} {:>7} {:>9} {:>10}",
                    "EXACT/s", "REQ B/s", "AVG B", "GOR NEW/s", "GOR EXIT/s"
                ));
            }
            writeln!(self.out, "{line}")?;
        }
        Ok(())
    }

    fn json(
        &mut self,
        p: &ProcessInfo,
        f: &Figures,
        seconds: f64,
        total: bool,
        exited: Option<bool>,
    ) -> std::io::Result<()> {
        let row = JsonRow {
            pid: p.pid,
            comm: &p.comm,
            go_version: &p.go_version,
            total,
            exited,
            seconds: (seconds * 1000.0).round() / 1000.0,
            runtime: f.runtime.as_ref().ok().map(|r| JsonRuntime {
                allocs: r.allocs,
                bytes: r.bytes,
                frees: r.frees,
                freed_bytes: r.freed_bytes,
                gc_cycles: r.gc_cycles,
                heap_live_bytes: r.heap_live_bytes,
                heap_live_objects: r.heap_live_objects,
                heap_inuse_bytes: r.heap_inuse_bytes,
                heap_goal_bytes: r.heap_goal_bytes,
                goroutines: r.goroutines,
                size_histogram: nonzero_buckets(&r.sizes),
            }),
            runtime_unavailable: f.runtime.as_ref().err().map(String::as_str),
            exact: f.exact.as_ref().map(|e| JsonExact {
                allocs: e.allocs,
                bytes: e.bytes,
                goroutines_created: e.goroutines_created,
                goroutines_exited: e.goroutines_exited,
                probe_cpu_seconds: crate::guard::cpu_seconds(e),
                size_histogram: histogram(e),
            }),
        };
        serde_json::to_writer(&mut self.out, &row)?;
        writeln!(self.out)?;
        self.out.flush()
    }
}

/// Non-empty log2 buckets as `[inclusive upper bound, count]`.
pub fn nonzero_buckets(counts: &[u64; HIST_BUCKETS]) -> Vec<[u64; 2]> {
    (0..HIST_BUCKETS)
        .filter(|&i| counts[i] != 0)
        .map(|i| [bucket_upper_bound(i), counts[i]])
        .collect()
}

/// Non-empty log2 buckets of probe counters.
pub fn histogram(s: &ProcStats) -> Vec<[u64; 2]> {
    nonzero_buckets(&s.size_hist)
}

fn avg_size(s: &ProcStats) -> String {
    s.bytes
        .checked_div(s.allocs)
        .map_or_else(|| "-".into(), |avg| avg.to_string())
}

/// The release of a Go version string (`go1.27.3` of `go1.27.3-X:...`).
pub fn short_version(v: &str) -> &str {
    v.split([' ', '-']).next().unwrap_or(v)
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::fold::zero_runtime;

    fn stats() -> ProcStats {
        let mut s = ProcStats::ZERO;
        s.allocs = 10;
        s.bytes = 1000;
        s.goroutines_created = 2;
        s.goroutines_exited = 1;
        s.size_hist[7] = 10;
        s
    }

    fn runtime() -> RuntimeDelta {
        let start = zero_runtime();
        let mut end = zero_runtime();
        end.mallocs = 20;
        end.total_alloc = 2048;
        end.num_gc = 2;
        end.heap_alloc = 4096;
        end.next_gc = 4 << 20;
        end.goroutines = 7;
        end.alloc_sizes[4] = 20;
        RuntimeDelta::between(&start, &end)
    }

    fn info() -> ProcessInfo {
        ProcessInfo {
            pid: 42,
            comm: "svc".into(),
            exe: "/usr/bin/svc".into(),
            go_version: "go1.27.3".into(),
            cgroup: Default::default(),
        }
    }

    #[test]
    fn json_rows() {
        let mut out = Vec::new();
        let mut r = Reporter::new(OutputFormat::Json, true, &mut out);
        let f = Figures {
            runtime: Ok(runtime()),
            exact: Some(stats()),
        };
        r.interval(&info(), &f, 1.0).unwrap();
        r.total(&info(), &f, 5.0, true).unwrap();
        let denied = Figures {
            runtime: Err("access_denied".into()),
            exact: None,
        };
        r.interval(&info(), &denied, 1.0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["allocs"], 20);
        assert_eq!(lines[0]["gc_cycles"], 2);
        assert_eq!(lines[0]["heap_goal_bytes"], 4 << 20);
        assert_eq!(lines[0]["size_histogram"], serde_json::json!([[16, 20]]));
        assert_eq!(lines[0]["exact"]["allocs"], 10);
        assert_eq!(
            lines[0]["exact"]["size_histogram"],
            serde_json::json!([[128, 10]])
        );
        assert_eq!(lines[0]["pid"], 42);
        assert!(lines[0].get("total").is_none());
        assert_eq!(lines[1]["total"], true);
        assert_eq!(lines[1]["exited"], true);
        assert_eq!(lines[1]["exact"]["goroutines_exited"], 1);
        assert_eq!(lines[2]["runtime_unavailable"], "access_denied");
        assert!(lines[2].get("allocs").is_none());
    }

    #[test]
    fn table_rows() {
        let mut out = Vec::new();
        let mut r = Reporter::new(OutputFormat::Table, true, &mut out);
        let f = Figures {
            runtime: Ok(runtime()),
            exact: Some(stats()),
        };
        r.interval(&info(), &f, 2.0).unwrap();
        r.interval(&info(), &f, 2.0).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().filter(|l| l.contains("ALLOCS/s")).count(), 1);
        assert!(text.lines().next().unwrap().contains("EXACT/s"));
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.contains("svc") && row.contains("go1.27.3") && row.contains(" 10 "),
            "{row}"
        );
        assert!(row.contains("4.0 KiB") && row.contains("4.0 MiB"), "{row}");
        assert!(row.contains("500 B"), "{row}");
    }

    #[test]
    fn units() {
        assert_eq!(human_bytes(10.0), "10 B");
        assert_eq!(human_bytes(2048.0), "2.0 KiB");
        assert_eq!(human_bytes(3.5 * 1024.0 * 1024.0), "3.5 MiB");
        assert_eq!(short_version("go1.25.5 X:foo"), "go1.25.5");
        assert_eq!(
            short_version("go1.27.3-X:nosizespecializedmalloc"),
            "go1.27.3"
        );
    }
}
