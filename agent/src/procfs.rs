//! What goalloc reads about processes from /proc.

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Identity of an executable file. Uprobes are keyed by inode; the device is
/// needed too because overlayfs siblings can share inode numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinaryKey {
    pub dev: u64,
    pub ino: u64,
}

impl BinaryKey {
    pub fn of_path(path: &Path) -> io::Result<BinaryKey> {
        let m = fs::metadata(path)?;
        Ok(BinaryKey {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    #[error("process {pid}: {source}")]
    Io {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

fn proc_path(pid: u32, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{what}"))
}

fn io_err(pid: u32) -> impl FnOnce(io::Error) -> ProcError {
    move |source| {
        if source.kind() == io::ErrorKind::NotFound {
            ProcError::NoSuchProcess(pid)
        } else {
            ProcError::Io { pid, source }
        }
    }
}

/// The path through which the process's executable can be opened and probed,
/// even inside another mount namespace or after it was deleted.
pub fn exe_path(pid: u32) -> PathBuf {
    proc_path(pid, "exe")
}

/// The process's executable identity.
pub fn exe_key(pid: u32) -> Result<BinaryKey, ProcError> {
    BinaryKey::of_path(&exe_path(pid)).map_err(io_err(pid))
}

/// For display: where a `/proc/PID/exe` link points (may end in
/// " (deleted)"), or the path itself.
pub fn exe_target_of(path: &Path) -> PathBuf {
    if path.starts_with("/proc") {
        fs::read_link(path).unwrap_or_else(|_| path.to_path_buf())
    } else {
        path.to_path_buf()
    }
}

pub fn comm(pid: u32) -> Result<String, ProcError> {
    let s = fs::read_to_string(proc_path(pid, "comm")).map_err(io_err(pid))?;
    Ok(s.trim_end_matches('\n').to_string())
}

/// The process start time (clock ticks since boot), which together with the
/// PID identifies a process across PID reuse.
pub fn start_time(pid: u32) -> Result<u64, ProcError> {
    let s = fs::read_to_string(proc_path(pid, "stat")).map_err(io_err(pid))?;
    parse_start_time(&s).ok_or_else(|| ProcError::Io {
        pid,
        source: io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"),
    })
}

/// Field 22 of /proc/PID/stat. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted after its last ')'.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// A running process identified across PID reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessId {
    pub fn of(pid: u32) -> Result<ProcessId, ProcError> {
        Ok(ProcessId {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Whether this very process still runs (not exited, PID not reused).
    pub fn is_alive(&self) -> bool {
        matches!(start_time(self.pid), Ok(t) if t == self.start_time) && !is_zombie(self.pid)
    }
}

/// A zombie has exited; only its parent has not collected it yet.
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(proc_path(pid, "stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_ascii_whitespace()
                .next()
                .map(|st| st == "Z" || st == "X")
        })
        .unwrap_or(true)
}

/// Every process id currently in /proc.
pub fn all_pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        if let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_comm() {
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
    }

    #[test]
    fn own_process() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert!(!comm(std::process::id()).unwrap().is_empty());
        assert!(exe_key(std::process::id()).is_ok());
        assert!(matches!(comm(u32::MAX), Err(ProcError::NoSuchProcess(_))));
    }
}
