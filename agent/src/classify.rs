//! Cheap classification of executables: is this a Go program goalloc can
//! probe? Results are cached per file version, so each executable on the node
//! is read at most once however many processes run it.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use gobinary::{
    binary::{
        BinaryError, GoBinary, MappedFile,
        elf::{Elf, ElfError},
    },
    plan::{self, PlanOptions, ProbePlan},
    runtime::{RuntimeError, RuntimeProbe},
};

use crate::procfs::{self, BinaryKey};

/// One version of a file: the inode plus what changes when it is rewritten.
/// Times are kept as (seconds, nanoseconds) as `stat` gives them: folding
/// them into one nanosecond count overflows for far-future times, which
/// anyone can set on a file (`touch -d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub key: BinaryKey,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        FileStamp::of_file(&File::open(path)?)
    }

    pub fn of_file(file: &File) -> std::io::Result<FileStamp> {
        let m = file.metadata()?;
        Ok(FileStamp {
            key: BinaryKey::of_file(file)?,
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Why a part of goalloc cannot work on an executable: a short reason
/// (a metric label) and a one-line explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub reason: &'static str,
    pub detail: String,
}

/// A Go executable and what goalloc can do with it. Each source fails on its
/// own: a binary whose runtime layout is unknown may still be probed, and
/// the other way round.
#[derive(Debug)]
pub struct GoExecutable {
    pub go_version: String,
    /// Where the per-allocation probes go.
    pub plan: Result<Arc<ProbePlan>, Unsupported>,
    /// How to read the runtime's own counters.
    pub runtime: Result<Arc<RuntimeProbe>, Unsupported>,
}

/// What an executable is, for goalloc.
#[derive(Debug, Clone)]
pub enum Class {
    NotGo,
    Go(Arc<GoExecutable>),
    /// A Go program goalloc cannot read at all (corrupt, unreadable...).
    Unsupported(Unsupported),
}

/// Whether the mapped file can be a Go program, from its ELF headers and
/// section names only (the pages holding them are all that is read). `None`
/// when that cannot be told cheaply: no section headers, or headers our
/// reader rejects (the full parse then says what is wrong).
pub fn may_be_go(file: &[u8]) -> Option<bool> {
    let elf = match Elf::parse(file) {
        Ok(elf) => elf,
        // Not ELF (a script run through binfmt, say).
        Err(ElfError::NotElf) => return Some(false),
        // 32-bit or big-endian: never a program goalloc can probe.
        Err(ElfError::Unsupported(_)) => return Some(false),
        Err(ElfError::Malformed(_)) => return None,
    };
    if elf.sections.is_empty() {
        return None;
    }
    Some(elf.sections.iter().any(|s| {
        matches!(
            s.name.as_str(),
            ".go.buildinfo" | ".gopclntab" | ".data.rel.ro.gopclntab"
        )
    }))
}

/// Classifies the executable at `path` (usually `/proc/PID/exe`).
pub fn classify(path: &Path, opts: PlanOptions) -> Class {
    let file = match MappedFile::open(path) {
        Ok(f) => f,
        Err(e) => {
            return Class::Unsupported(Unsupported {
                reason: "unreadable",
                detail: e.to_string(),
            });
        }
    };
    if may_be_go(&file) == Some(false) {
        return Class::NotGo;
    }
    let bin = match GoBinary::from_mapped(file) {
        Ok(b) => b,
        Err(BinaryError::NotGo | BinaryError::NotElf) => {
            return Class::NotGo;
        }
        Err(e) => {
            return Class::Unsupported(Unsupported {
                reason: "bad_binary",
                detail: e.to_string(),
            });
        }
    };
    let plan = plan::plan(&bin, opts)
        .map(Arc::new)
        .map_err(|e| Unsupported {
            reason: match e {
                plan::PlanError::GoTooOld { .. } => "go_too_old",
                plan::PlanError::ArchMismatch { .. } => "arch",
                plan::PlanError::MissingFunction(_) => "missing_function",
                plan::PlanError::Prologue { .. } => "prologue",
                _ => "bad_binary",
            },
            detail: e.to_string(),
        });
    let runtime = RuntimeProbe::for_binary(&bin)
        .map(Arc::new)
        .map_err(|e| Unsupported {
            reason: match e {
                RuntimeError::UnknownLayout(_) => "unknown_runtime_layout",
                RuntimeError::Locate(_) => "runtime_globals_not_found",
                RuntimeError::UnsupportedArch(_) => "arch",
                RuntimeError::BadElf(_) => "bad_binary",
            },
            detail: e.to_string(),
        });
    Class::Go(Arc::new(GoExecutable {
        go_version: bin.build_info().go_version.clone(),
        plan,
        runtime,
    }))
}

/// Classification results per file version.
#[derive(Default)]
pub struct ClassCache {
    entries: HashMap<FileStamp, Class>,
}

impl ClassCache {
    pub fn get_or_classify(&mut self, stamp: FileStamp, path: &Path, opts: PlanOptions) -> Class {
        self.entries
            .entry(stamp)
            .or_insert_with(|| classify(path, opts))
            .clone()
    }

    fn get(&self, stamp: &FileStamp) -> Option<Class> {
        self.entries.get(stamp).cloned()
    }

    fn insert(&mut self, stamp: FileStamp, class: Class) {
        self.entries.insert(stamp, class);
    }

    /// Forgets files no longer in use, keeping the cache bounded by what runs.
    pub fn retain(&mut self, mut keep: impl FnMut(&FileStamp) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The classification cache, shared between the registry and [`Classifier`].
#[derive(Clone, Default)]
pub struct SharedClassCache(Arc<Mutex<ClassCache>>);

impl SharedClassCache {
    pub fn lock(&self) -> MutexGuard<'_, ClassCache> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Classifies processes' executables ahead of the registry, without holding
/// its lock: reading and planning a large binary takes tens to hundreds of
/// milliseconds, and scrapes and events should not wait for it.
#[derive(Clone)]
pub struct Classifier {
    pub(crate) cache: SharedClassCache,
    pub(crate) opts: PlanOptions,
}

impl Classifier {
    /// Fills the cache for the executable of `pid`; returns whether it had
    /// to be read (not cached yet). Vanished or unreadable processes are left
    /// to the registry.
    pub fn warm(&self, pid: u32) -> bool {
        let Ok(exe) = procfs::open_exe(pid) else {
            return false;
        };
        let Ok(stamp) = FileStamp::of_file(exe.file()) else {
            return false;
        };
        if self.cache.lock().get(&stamp).is_some() {
            return false;
        }
        let class = classify(exe.path(), self.opts);
        self.cache.lock().insert(stamp, class);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_go_executables_are_rejected_from_headers() {
        let sh = MappedFile::open(Path::new("/bin/sh")).unwrap();
        assert_eq!(may_be_go(&sh), Some(false));
        assert_eq!(may_be_go(b"#!/bin/sh\n"), Some(false));
        assert_eq!(may_be_go(b"\x7fELF\x01\x01\x01"), Some(false)); // 32-bit
        assert_eq!(may_be_go(b"\x7fELF\x02\x01\x01"), None); // truncated
        assert!(matches!(
            classify(Path::new("/bin/sh"), PlanOptions::default()),
            Class::NotGo
        ));
        // A script is not ELF.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(
            classify(&script, PlanOptions::default()),
            Class::NotGo
        ));
    }

    #[test]
    fn classifier_fills_the_shared_cache_once() {
        let classifier = Classifier {
            cache: SharedClassCache::default(),
            opts: PlanOptions::default(),
        };
        let me = std::process::id();
        assert!(classifier.warm(me));
        assert!(!classifier.warm(me), "second call must hit the cache");
        assert_eq!(classifier.cache.lock().len(), 1);
        // The test binary is Rust, not Go.
        let exe = procfs::open_exe(me).unwrap();
        let stamp = FileStamp::of_file(exe.file()).unwrap();
        assert!(matches!(
            classifier.cache.lock().get(&stamp),
            Some(Class::NotGo)
        ));
        // A PID that does not exist is left alone.
        assert!(!classifier.warm(u32::MAX));
    }

    /// A far-future mtime (anyone can set one: `touch -d`) must not overflow:
    /// it panicked in debug builds when folded into nanoseconds.
    #[test]
    fn extreme_mtime_does_not_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "a").unwrap();
        let far = std::time::UNIX_EPOCH + std::time::Duration::from_secs(i64::MAX as u64);
        let file = File::options().write(true).open(&f).unwrap();
        file.set_modified(far).unwrap();
        // The file system clamps to what it can store (ext4: year 2446),
        // still far past what fits in i64 nanoseconds (year 2262).
        let stamp = FileStamp::of(&f).unwrap();
        assert!(
            stamp.mtime.0 > i64::MAX / 1_000_000_000,
            "the file system kept mtime {:?}: this test needs one past 2262",
            stamp.mtime
        );
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!(stamp.mtime, (m.mtime(), m.mtime_nsec()));
    }

    #[test]
    fn stamps_change_when_a_file_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "a").unwrap();
        let a = FileStamp::of(&f).unwrap();
        std::fs::write(&f, "bb").unwrap();
        let b = FileStamp::of(&f).unwrap();
        assert_eq!(a.key, b.key);
        assert_ne!(a, b);
    }
}
