//! Rendering `goalloc watch` rows as a table or as JSON lines.

use std::io::Write;

use agent_common::{HIST_BUCKETS, ProcStats, bucket_upper_bound};
use serde::Serialize;

use crate::registry::ProcessInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
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
    allocs: u64,
    bytes: u64,
    goroutines_created: u64,
    goroutines_exited: u64,
    /// `[inclusive upper bound in bytes, count]` of the non-empty log2 buckets.
    size_histogram: Vec<[u64; 2]>,
}

pub struct Reporter<W: Write> {
    format: OutputFormat,
    out: W,
    header_done: bool,
}

impl<W: Write> Reporter<W> {
    pub fn new(format: OutputFormat, out: W) -> Self {
        Reporter {
            format,
            out,
            header_done: false,
        }
    }

    /// Counts of one process over the last `seconds`.
    pub fn interval(
        &mut self,
        p: &ProcessInfo,
        delta: &ProcStats,
        seconds: f64,
    ) -> std::io::Result<()> {
        match self.format {
            OutputFormat::Json => self.json(p, delta, seconds, false, None),
            OutputFormat::Table => {
                self.header()?;
                let per = |v: u64| {
                    if seconds > 0.0 {
                        v as f64 / seconds
                    } else {
                        0.0
                    }
                };
                writeln!(
                    self.out,
                    "{:>8} {:<16} {:<10} {:>12} {:>12} {:>9} {:>10} {:>10}",
                    p.pid,
                    truncate(&p.comm, 16),
                    short_version(&p.go_version),
                    format!("{:.0}", per(delta.allocs)),
                    human_bytes(per(delta.bytes)),
                    avg_size(delta),
                    format!("{:.0}", per(delta.goroutines_created)),
                    format!("{:.0}", per(delta.goroutines_exited)),
                )?;
                self.out.flush()
            }
        }
    }

    /// Cumulative counts since attach; `exited` when the process is gone.
    pub fn total(
        &mut self,
        p: &ProcessInfo,
        total: &ProcStats,
        seconds: f64,
        exited: bool,
    ) -> std::io::Result<()> {
        match self.format {
            OutputFormat::Json => self.json(p, total, seconds, true, Some(exited)),
            OutputFormat::Table => {
                writeln!(
                    self.out,
                    "total {} pid {} ({}, {}) over {:.1}s: {} allocations, {} requested (avg {} B), {} goroutines created, {} exited",
                    if exited { "of exited" } else { "for" },
                    p.pid,
                    p.comm,
                    p.go_version,
                    seconds,
                    total.allocs,
                    human_bytes(total.bytes as f64),
                    avg_size(total),
                    total.goroutines_created,
                    total.goroutines_exited,
                )?;
                self.out.flush()
            }
        }
    }

    fn header(&mut self) -> std::io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            writeln!(
                self.out,
                "{:>8} {:<16} {:<10} {:>12} {:>12} {:>9} {:>10} {:>10}",
                "PID", "COMM", "GO", "ALLOCS/s", "BYTES/s", "AVG B", "GOR NEW/s", "GOR EXIT/s"
            )?;
        }
        Ok(())
    }

    fn json(
        &mut self,
        p: &ProcessInfo,
        s: &ProcStats,
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
            allocs: s.allocs,
            bytes: s.bytes,
            goroutines_created: s.goroutines_created,
            goroutines_exited: s.goroutines_exited,
            size_histogram: histogram(s),
        };
        serde_json::to_writer(&mut self.out, &row)?;
        writeln!(self.out)?;
        self.out.flush()
    }
}

/// Non-empty log2 buckets as `[inclusive upper bound, count]`.
pub fn histogram(s: &ProcStats) -> Vec<[u64; 2]> {
    (0..HIST_BUCKETS)
        .filter(|&i| s.size_hist[i] != 0)
        .map(|i| [bucket_upper_bound(i), s.size_hist[i]])
        .collect()
}

fn avg_size(s: &ProcStats) -> String {
    s.bytes
        .checked_div(s.allocs)
        .map_or_else(|| "-".into(), |avg| avg.to_string())
}

fn short_version(v: &str) -> &str {
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

    fn stats() -> ProcStats {
        let mut s = ProcStats::ZERO;
        s.allocs = 10;
        s.bytes = 1000;
        s.goroutines_created = 2;
        s.goroutines_exited = 1;
        s.size_hist[7] = 10;
        s
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
        let mut r = Reporter::new(OutputFormat::Json, &mut out);
        r.interval(&info(), &stats(), 1.0).unwrap();
        r.total(&info(), &stats(), 5.0, true).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["allocs"], 10);
        assert_eq!(lines[0]["pid"], 42);
        assert!(lines[0].get("total").is_none());
        assert_eq!(lines[0]["size_histogram"], serde_json::json!([[128, 10]]));
        assert_eq!(lines[1]["total"], true);
        assert_eq!(lines[1]["exited"], true);
        assert_eq!(lines[1]["goroutines_exited"], 1);
    }

    #[test]
    fn table_rows() {
        let mut out = Vec::new();
        let mut r = Reporter::new(OutputFormat::Table, &mut out);
        r.interval(&info(), &stats(), 2.0).unwrap();
        r.interval(&info(), &stats(), 2.0).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().filter(|l| l.contains("ALLOCS/s")).count(), 1);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.contains("svc") && row.contains("go1.27.3") && row.contains(" 5 "),
            "{row}"
        );
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
