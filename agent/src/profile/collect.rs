//! Collecting the kernel's allocation samples of chosen processes into a
//! profile: what each process runs (read when the profile starts, so a
//! process that exits mid-profile can still be symbolized), the samples
//! taken out of the kernel table as they come, and the notes a reader of
//! the profile needs (exits, a full stack table, cut stacks).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agent_common::{Counter, Counters, MAX_SAMPLE_STACKS, MAX_STACK_DEPTH, SampleKey, SampleValue};
use gobinary::{GoBinary, runtime::maps};

use super::pprof::{
    AllocSample, OtherMapping, ProcessImage, ProcessSamples, ProfileMeta, build_many,
};
use super::proto::Profile;
use crate::procfs;

/// Go's default `MemProfileRate`: one sample every 512 KiB on average.
pub const DEFAULT_RATE: u64 = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("pid {pid}: {source}")]
    Process {
        pid: u32,
        #[source]
        source: procfs::ProcError,
    },
    #[error("pid {pid}: reading its executable {path}: {source}")]
    Binary {
        pid: u32,
        path: String,
        #[source]
        source: gobinary::BinaryError,
    },
    #[error("pid {pid}: finding where its executable is loaded: {source}")]
    LoadBias {
        pid: u32,
        #[source]
        source: maps::MapsError,
    },
}

/// A process being profiled, as it was when the profile started.
#[derive(Debug)]
struct Target {
    comm: String,
    path: String,
    binary: Arc<GoBinary>,
    load_bias: u64,
    other_mappings: Vec<OtherMapping>,
    /// When it exited, after the start.
    exited_after: Option<Duration>,
}

/// The samples of one profile, all its processes.
#[derive(Debug)]
pub struct Collector {
    rate: u64,
    started: SystemTime,
    started_mono: Instant,
    targets: BTreeMap<u32, Target>,
    samples: HashMap<SampleKey, SampleValue>,
    counters_at_start: Option<Counters>,
    /// When sampling stopped.
    stopped: Option<Instant>,
}

impl Collector {
    pub fn new(rate: u64) -> Collector {
        Collector {
            rate: rate.max(1),
            started: SystemTime::now(),
            started_mono: Instant::now(),
            targets: BTreeMap::new(),
            samples: HashMap::new(),
            counters_at_start: None,
            stopped: None,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Reads what `pid` runs: its executable (kept open), load bias and other
    /// executable mappings. Call before sampling starts.
    pub fn add(&mut self, pid: u32) -> Result<(), CollectError> {
        let exe = procfs::open_exe(pid).map_err(|source| CollectError::Process { pid, source })?;
        let path = procfs::exe_target_of(exe.path())
            .to_string_lossy()
            .into_owned();
        let binary = GoBinary::open(exe.path()).map_err(|source| CollectError::Binary {
            pid,
            path: path.clone(),
            source,
        })?;
        let load_bias = maps::binary_load_bias(pid, &binary)
            .map_err(|source| CollectError::LoadBias { pid, source })?;
        let other_mappings = other_mappings(pid, &path);
        let comm = procfs::comm(pid).unwrap_or_default();
        self.targets.insert(
            pid,
            Target {
                comm,
                path,
                binary: Arc::new(binary),
                load_bias,
                other_mappings,
                exited_after: None,
            },
        );
        Ok(())
    }

    /// Sampling starts now; `c`: the eBPF self-counters now, to report
    /// what this profile lost.
    pub fn start(&mut self, c: Counters) {
        self.counters_at_start = Some(c);
        self.started = SystemTime::now();
        self.started_mono = Instant::now();
    }

    /// Adds samples taken out of the kernel table.
    pub fn absorb(&mut self, taken: Vec<(SampleKey, SampleValue)>) {
        for (k, v) in taken {
            let e = self.samples.entry(k).or_default();
            e.count += v.count;
            e.bytes += v.bytes;
        }
    }

    /// `pid` exited: its profile ends here.
    pub fn mark_exited(&mut self, pid: u32) {
        let after = self.started_mono.elapsed();
        if let Some(t) = self.targets.get_mut(&pid) {
            t.exited_after.get_or_insert(after);
        }
    }

    /// Sampling stopped: the profile's duration ends here.
    pub fn stop(&mut self) {
        self.stopped.get_or_insert_with(Instant::now);
    }

    /// How long sampling ran (so far).
    pub fn elapsed(&self) -> Duration {
        self.stopped
            .unwrap_or_else(Instant::now)
            .duration_since(self.started_mono)
    }

    /// Sampled allocations so far.
    pub fn sampled(&self) -> u64 {
        self.samples.values().map(|v| v.count).sum()
    }

    /// The profile of everything collected; `counters_now` (the eBPF
    /// self-counters at the end) says what was lost meanwhile.
    pub fn profile(&self, counters_now: Option<Counters>) -> Profile {
        let mut comments = Vec::new();
        for (pid, t) in &self.targets {
            let mut c = format!(
                "pid {pid} ({}): {} ({})",
                t.comm,
                t.path,
                t.binary.build_info().go_version
            );
            if let Some(after) = t.exited_after {
                c.push_str(&format!(
                    "; exited after {:.1} s: the profile has what was sampled until then",
                    after.as_secs_f64()
                ));
            }
            comments.push(c);
        }
        if let (Some(start), Some(now)) = (self.counters_at_start, counters_now) {
            let lost = |c: Counter| now.get(c).saturating_sub(start.get(c));
            let full = lost(Counter::ProfileStacksFull);
            if full > 0 {
                comments.push(format!(
                    "{full} samples dropped: the kernel's table of sampled stacks \
                     ({MAX_SAMPLE_STACKS} stacks, all profiles) was full"
                ));
            }
            let cut = lost(Counter::ProfileStacksTruncated);
            if cut > 0 {
                comments.push(format!(
                    "{cut} samples with stacks deeper than {MAX_STACK_DEPTH} frames, cut there"
                ));
            }
        }
        let mut by_pid: BTreeMap<u32, Vec<AllocSample>> = BTreeMap::new();
        for (k, v) in &self.samples {
            if v.count == 0 {
                continue;
            }
            let depth = (k.depth as usize).min(MAX_STACK_DEPTH);
            by_pid.entry(k.tgid).or_default().push(AllocSample {
                pcs: k.pcs[..depth].to_vec(),
                type_addr: (k.type_addr != 0).then_some(k.type_addr),
                // Go unscales a stack's samples by their average size too.
                size: v.bytes / v.count,
                count: v.count,
            });
        }
        let processes: Vec<ProcessSamples<'_>> = self
            .targets
            .iter()
            .map(|(&pid, t)| {
                let mut samples = by_pid.remove(&pid).unwrap_or_default();
                // Deterministic output.
                samples.sort_by(|a, b| (&a.pcs, a.type_addr).cmp(&(&b.pcs, b.type_addr)));
                ProcessSamples {
                    pid,
                    image: ProcessImage {
                        binary: &t.binary,
                        path: t.path.clone(),
                        load_bias: t.load_bias,
                        other_mappings: t.other_mappings.clone(),
                    },
                    samples,
                }
            })
            .collect();
        let meta = ProfileMeta {
            rate: self.rate,
            time_nanos: self
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            duration_nanos: self.elapsed().as_nanos() as i64,
            comments,
        };
        build_many(&processes, &meta)
    }
}

/// The gzipped encoding of `profile` (what `go tool pprof` reads).
pub fn gzip(profile: &Profile) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&profile.encode())?;
    gz.finish()
}

/// The executable mappings of `pid` other than its executable (shared
/// libraries, the vdso), so their pcs keep a mapping in the profile.
fn other_mappings(pid: u32, exe: &str) -> Vec<OtherMapping> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let Ok(entries) = maps::parse_maps(&text) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter(|m| m.perms.as_bytes().get(2) == Some(&b'x') && !m.path.is_empty())
        .filter(|m| m.path.trim_end_matches(" (deleted)") != exe)
        .map(|m| OtherMapping {
            start: m.start,
            limit: m.end,
            file_offset: m.offset,
            path: m.path,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the profile lost while it ran is written into it, never silent.
    #[test]
    fn losses_are_noted_in_the_profile() {
        let mut c = Collector::new(4096);
        let mut start = Counters::default();
        start.0[Counter::ProfileStacksFull as usize] = 5;
        c.start(start);
        c.stop();
        let mut end = start;
        end.0[Counter::ProfileStacksFull as usize] = 12;
        end.0[Counter::ProfileStacksTruncated as usize] = 3;
        let p = c.profile(Some(end));
        let comments: Vec<&str> = p
            .comments
            .iter()
            .map(|&i| p.string_table[i as usize].as_str())
            .collect();
        assert!(
            comments
                .iter()
                .any(|c| c.starts_with("7 samples dropped") && c.contains("was full")),
            "{comments:?}"
        );
        assert!(
            comments
                .iter()
                .any(|c| c.starts_with("3 samples with stacks deeper than 32")),
            "{comments:?}"
        );
        // Nothing lost: nothing said.
        let quiet = c.profile(Some(start));
        assert!(quiet.comments.is_empty());
    }
}
