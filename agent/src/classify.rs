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

use object::{Object, ObjectSection, read::ReadCache};

use gobinary::{
    binary::GoBinary,
    plan::{self, PlanOptions, ProbePlan},
};

use crate::procfs::{self, BinaryKey};

/// One version of a file: the inode plus what changes when it is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub key: BinaryKey,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
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
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        })
    }
}

/// What an executable is, for goalloc.
#[derive(Debug, Clone)]
pub enum Class {
    NotGo,
    /// A Go program and how to probe it.
    Go(Arc<ProbePlan>),
    /// A Go program goalloc cannot probe (too old, unknown layout, corrupt...).
    Unsupported {
        reason: &'static str,
        detail: String,
    },
}

/// Whether the ELF file can be a Go program, reading only its headers. `None`
/// when that cannot be told cheaply (no section headers: read it whole).
pub fn may_be_go(path: &Path) -> std::io::Result<Option<bool>> {
    let file = File::open(path)?;
    let cache = ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else {
        // Not ELF (a script run through binfmt, say) or unreadable headers.
        return Ok(Some(false));
    };
    if obj.sections().next().is_none() {
        return Ok(None);
    }
    Ok(Some(obj.sections().any(|s| {
        matches!(
            s.name(),
            Ok(".go.buildinfo" | ".gopclntab" | ".data.rel.ro.gopclntab")
        )
    })))
}

/// Classifies the executable at `path` (usually `/proc/PID/exe`).
pub fn classify(path: &Path, opts: PlanOptions) -> Class {
    match may_be_go(path) {
        Ok(Some(false)) => return Class::NotGo,
        Ok(_) => {}
        Err(e) => {
            return Class::Unsupported {
                reason: "unreadable",
                detail: e.to_string(),
            };
        }
    }
    let bin = match GoBinary::open(path) {
        Ok(b) => b,
        Err(gobinary::binary::BinaryError::NotGo | gobinary::binary::BinaryError::NotElf) => {
            return Class::NotGo;
        }
        Err(e) => {
            return Class::Unsupported {
                reason: "bad_binary",
                detail: e.to_string(),
            };
        }
    };
    match plan::plan(&bin, opts) {
        Ok(p) => Class::Go(Arc::new(p)),
        Err(e) => Class::Unsupported {
            reason: match e {
                plan::PlanError::GoTooOld { .. } => "go_too_old",
                plan::PlanError::ArchMismatch { .. } => "arch",
                plan::PlanError::MissingFunction(_) => "missing_function",
                plan::PlanError::Prologue { .. } => "prologue",
                _ => "bad_binary",
            },
            detail: e.to_string(),
        },
    }
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

/// The classification cache, shared between the tracker and [`Classifier`].
#[derive(Clone, Default)]
pub struct SharedClassCache(Arc<Mutex<ClassCache>>);

impl SharedClassCache {
    pub fn lock(&self) -> MutexGuard<'_, ClassCache> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Classifies processes' executables ahead of the tracker, without holding
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
    /// to the tracker.
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
        assert_eq!(may_be_go(Path::new("/bin/sh")).unwrap(), Some(false));
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
