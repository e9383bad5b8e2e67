//! Which executables carry goalloc's probes, for how many processes, and
//! when they come off.
//!
//! A uprobe is placed on a file, so an executable is attached once however
//! many processes run it; it stays attached while processes hold a
//! reference and for a grace period after the last one exits (a program
//! restarted in a loop is not detached and re-attached each time). Detaching
//! runs on a thread of its own: the kernel takes about 0.1 s per uprobe.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::mpsc::{self, Receiver, Sender},
    time::{Duration, Instant},
};

use gobinary::plan::ProbePlan;

use crate::{
    classify::FileStamp,
    ebpf::{AttachSummary, Detached, Engine, EngineError},
    procfs::BinaryKey,
};

/// Detaches binaries off the event loop; hands back their probe-site slots.
struct Detacher {
    tx: Sender<Detached>,
    done: Receiver<(BinaryKey, Vec<u32>)>,
    in_flight: HashSet<BinaryKey>,
}

impl Detacher {
    fn new() -> Detacher {
        let (tx, rx) = mpsc::channel::<Detached>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("goalloc-detach".into())
            .spawn(move || {
                for d in rx {
                    if done_tx.send(d.finish()).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the detach thread");
        Detacher {
            tx,
            done,
            in_flight: HashSet::new(),
        }
    }
}

/// The engine's attachments with reference counts and detach grace.
pub struct Attachments {
    engine: Engine,
    /// How long a binary stays attached after its last process released it.
    grace: Duration,
    /// Processes per attached binary.
    refs: HashMap<BinaryKey, usize>,
    /// Attached binaries without processes, since when.
    idle: HashMap<BinaryKey, Instant>,
    /// Which version of each attached file its probes were planned for.
    stamps: HashMap<BinaryKey, FileStamp>,
    detacher: Detacher,
}

impl Attachments {
    pub fn new(engine: Engine, grace: Duration) -> Attachments {
        Attachments {
            engine,
            grace,
            refs: HashMap::new(),
            idle: HashMap::new(),
            stamps: HashMap::new(),
            detacher: Detacher::new(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Takes a reference on the probes of `stamp`'s file, attaching `plan`
    /// through `path` (an open descriptor of that file) if needed. Returns
    /// whether the probes were placed now.
    pub fn acquire(
        &mut self,
        stamp: FileStamp,
        path: &Path,
        plan: &ProbePlan,
    ) -> Result<AttachSummary, EngineError> {
        self.collect_detached(Some(stamp.key));
        if self.stamps.get(&stamp.key).is_some_and(|s| *s != stamp) {
            // Rewritten in place while attached: the old offsets must go
            // before the new ones are placed.
            log::warn!("{} changed on disk: re-attaching", path.display());
            self.idle.remove(&stamp.key);
            self.start_detach(stamp.key);
            self.collect_detached(Some(stamp.key));
        }
        let summary = self.engine.attach(stamp.key, path, plan)?;
        self.stamps.insert(stamp.key, stamp);
        *self.refs.entry(stamp.key).or_default() += 1;
        self.idle.remove(&stamp.key);
        Ok(summary)
    }

    /// Drops a reference taken by [`acquire`](Self::acquire); the last one
    /// starts the grace period (or the detach, without grace).
    pub fn release(&mut self, key: BinaryKey) {
        let Some(n) = self.refs.get_mut(&key) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.refs.remove(&key);
            if self.grace.is_zero() {
                self.start_detach(key);
            } else {
                self.idle.insert(key, Instant::now());
            }
        }
    }

    /// Detaches binaries whose grace period is over and takes back what the
    /// detach thread finished.
    pub fn expire(&mut self) {
        let expired: Vec<BinaryKey> = self
            .idle
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.grace)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.idle.remove(&key);
            self.start_detach(key);
        }
        self.collect_detached(None);
    }

    /// Hands the probes of `key` to the detach thread.
    fn start_detach(&mut self, key: BinaryKey) {
        if let Some(d) = self.engine.take_attachment(&key) {
            self.detacher.in_flight.insert(key);
            if self.detacher.tx.send(d).is_err() {
                log::warn!("the detach thread is gone; probes stay until exit");
            }
        }
    }

    /// Takes back what the detach thread finished. With `wait_for`, blocks
    /// until that binary's old probes are gone: attaching it again before
    /// would count its allocations twice.
    fn collect_detached(&mut self, wait_for: Option<BinaryKey>) {
        while let Ok((key, sites)) = self.detacher.done.try_recv() {
            self.engine.release_sites(sites);
            self.detacher.in_flight.remove(&key);
        }
        let engine = &self.engine;
        self.stamps.retain(|k, _| engine.is_attached(k));
        let Some(key) = wait_for else { return };
        while self.detacher.in_flight.contains(&key) {
            match self.detacher.done.recv() {
                Ok((done, sites)) => {
                    self.engine.release_sites(sites);
                    self.detacher.in_flight.remove(&done);
                }
                Err(_) => return,
            }
        }
    }
}
