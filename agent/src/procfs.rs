//! What goalloc reads about processes from /proc.

use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Identity of an executable file as the kernel's uprobes see it: they are
/// registered on the real inode. Through overlayfs (container images), each
/// container's mount shows the same lower-layer file with its own `st_dev`
/// and the real `st_ino`; keying by `(dev, ino)` would attach once per
/// container and count every hit twice. Overlay files are therefore keyed by
/// inode number plus size and mtime (which also keep apart different files
/// that happen to share an inode number on different layers' filesystems).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinaryKey {
    /// 0 for overlayfs files.
    pub dev: u64,
    pub ino: u64,
    /// 0, or for overlayfs files a digest of size and mtime.
    pub version: u64,
}

impl BinaryKey {
    pub fn of_path(path: &Path) -> io::Result<BinaryKey> {
        BinaryKey::of_file(&File::open(path)?)
    }

    pub fn of_file(file: &File) -> io::Result<BinaryKey> {
        let m = file.metadata()?;
        // SAFETY: statfs is plain data; fstatfs fills it for a valid fd.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        let overlay = unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } == 0
            && fs.f_type as i64 == OVERLAYFS_SUPER_MAGIC;
        Ok(if overlay {
            let mtime_ns = (m.mtime() as u64)
                .wrapping_mul(1_000_000_000)
                .wrapping_add(m.mtime_nsec() as u64);
            BinaryKey {
                dev: 0,
                ino: m.ino(),
                version: m.size().rotate_left(32) ^ mtime_ns,
            }
        } else {
            BinaryKey {
                dev: m.dev(),
                ino: m.ino(),
                version: 0,
            }
        })
    }
}

/// An executable opened once. Every later step (stamp, parsing, each
/// uprobe's `perf_event_open`) goes through this descriptor, so all of them
/// see the same file even if the process execs or its PID is reused
/// meanwhile: offsets are never planned on one file and attached to another.
pub struct OpenExe {
    file: File,
    path: PathBuf,
}

impl OpenExe {
    pub fn open(path: &Path) -> io::Result<OpenExe> {
        let file = File::open(path)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Ok(OpenExe { file, path })
    }

    /// A path that resolves to this very file while it is open.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
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

impl ProcError {
    /// The kernel refused (ptrace access checks on /proc/PID/exe and mem).
    pub fn is_access_denied(&self) -> bool {
        matches!(self, ProcError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied)
    }
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

/// Opens the process's executable.
pub fn open_exe(pid: u32) -> Result<OpenExe, ProcError> {
    OpenExe::open(&exe_path(pid)).map_err(io_err(pid))
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

/// What goalloc reads of `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `Z`...
    pub state: char,
    /// Field 22: start time in clock ticks since boot, which together with
    /// the PID identifies a process across PID reuse.
    pub start_time: u64,
}

impl Stat {
    /// Exited, with only its parent yet to collect it (`Z`), or dead (`X`).
    pub fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Reads `/proc/PID/stat` once.
pub fn stat(pid: u32) -> Result<Stat, ProcError> {
    let s = fs::read_to_string(proc_path(pid, "stat")).map_err(io_err(pid))?;
    parse_stat(&s).ok_or_else(|| ProcError::Io {
        pid,
        source: io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"),
    })
}

/// Parses `/proc/PID/stat`. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted after its last ')'.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
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
            start_time: stat(pid)?.start_time,
        })
    }

    /// Whether this very process still runs (not exited, PID not reused):
    /// one read of `/proc/PID/stat`.
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Ok(s) if s.start_time == self.start_time && !s.has_exited())
    }
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
    fn stat_survives_odd_comm() {
        let stat = "1234 (a) b (c)) Z 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                state: 'Z',
                start_time: 98765
            })
        );
        assert!(parse_stat(stat).unwrap().has_exited());
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
        assert_eq!(parse_stat("1 (x) "), None);
    }

    #[test]
    fn own_process() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        assert!(!comm(std::process::id()).unwrap().is_empty());
        assert!(open_exe(std::process::id()).is_ok());
        assert!(matches!(comm(u32::MAX), Err(ProcError::NoSuchProcess(_))));
    }
}
