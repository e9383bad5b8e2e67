//! Which processes carry goalloc's probes, and when they come off.
//!
//! Probes are attached per process (see [`crate::ebpf`]): an attachment is
//! keyed by (executable, pid) and belongs to one process, so there is no
//! reference counting. A process that exits loses its probes at once: its
//! uprobes can no longer fire anywhere (the kernel filters them by the
//! process's memory, which is gone), and a restarted program is a new
//! process that needs attachments of its own anyway.
//!
//! Grace now only covers `exec`: the kernel's per-process uprobe follows the
//! task into its new image, so a process that re-executes the same file
//! keeps its probes instead of paying a detach and an attach (and missing
//! allocations in between). An attachment released by an exec is parked for
//! the grace period; re-acquired for the same file version it is kept,
//! otherwise it is detached.
//!
//! Detaching runs on threads of their own: the kernel takes about 0.1 s per
//! uprobe, which must not stall the event loop.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::mpsc::{self, Receiver, Sender},
    time::{Duration, Instant},
};

use gobinary::plan::ProbePlan;

use crate::{
    classify::FileStamp,
    ebpf::{AttachSummary, AttachmentId, Detached, Engine, EngineError},
};

/// Detaches probes off the event loop; hands back their probe-site slots.
struct Detacher {
    tx: Sender<Detached>,
    done: Receiver<(AttachmentId, Vec<u32>)>,
    in_flight: HashSet<AttachmentId>,
}

/// Threads that detach at once. Unregistering a uprobe mostly waits for the
/// kernel (an RCU grace period each), so a few threads drain a burst of
/// exited processes several times faster than one.
const DETACH_THREADS: usize = 4;

impl Detacher {
    fn new() -> Detacher {
        let (tx, rx) = mpsc::channel::<Detached>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let (done_tx, done) = mpsc::channel();
        for i in 0..DETACH_THREADS {
            let rx = rx.clone();
            let done_tx = done_tx.clone();
            std::thread::Builder::new()
                .name(format!("goalloc-detach-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take the next job.
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(d) = next else { return };
                        if done_tx.send(d.finish()).is_err() {
                            return;
                        }
                    }
                })
                .expect("spawning a detach thread");
        }
        Detacher {
            tx,
            done,
            in_flight: HashSet::new(),
        }
    }
}

/// The engine's per-process attachments, detached off the event loop.
pub struct Attachments {
    engine: Engine,
    /// How long an attachment released by an exec waits for its process to
    /// come back with the same file.
    grace: Duration,
    /// Which version of the file each attachment's probes were planned for.
    stamps: HashMap<AttachmentId, FileStamp>,
    /// Attachments released by an exec, since when.
    parked: HashMap<AttachmentId, Instant>,
    detacher: Detacher,
}

impl Attachments {
    pub fn new(engine: Engine, grace: Duration) -> Attachments {
        Attachments {
            engine,
            grace,
            stamps: HashMap::new(),
            parked: HashMap::new(),
            detacher: Detacher::new(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Puts `plan` on process `id.pid`, attaching through `path` (an open
    /// descriptor of the file `stamp` describes). An attachment parked by
    /// an exec of the same file version is taken back as it is.
    pub fn acquire(
        &mut self,
        id: AttachmentId,
        stamp: FileStamp,
        path: &Path,
        plan: &ProbePlan,
    ) -> Result<AttachSummary, EngineError> {
        self.collect_detached(None);
        if self.parked.remove(&id).is_some() && self.stamps.get(&id) != Some(&stamp) {
            // The process exec'd another version of the file: the old
            // offsets must go before the new ones are placed, or both fire.
            self.start_detach(id);
        }
        // A detach of this very attachment still running (released, then
        // acquired again): wait, or its allocations would count twice.
        self.collect_detached(Some(id));
        let summary = self.engine.attach(id, path, plan)?;
        self.stamps.insert(id, stamp);
        Ok(summary)
    }

    /// Takes the probes off a process that exited or that is no longer
    /// probed (detached on the detach thread).
    pub fn release(&mut self, id: AttachmentId) {
        self.parked.remove(&id);
        self.start_detach(id);
    }

    /// A process exec'd: keeps its probes for the grace period in case the
    /// new image is the same file (see the module docs).
    pub fn release_for_exec(&mut self, id: AttachmentId) {
        if self.grace.is_zero() {
            self.release(id);
        } else if self.engine.is_attached(&id) {
            self.parked.insert(id, Instant::now());
        }
    }

    /// Detaches parked attachments whose grace is over and takes back what
    /// the detach thread finished.
    pub fn expire(&mut self) {
        let expired: Vec<AttachmentId> = self
            .parked
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.grace)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.release(id);
        }
        self.collect_detached(None);
    }

    /// Attachments being detached right now.
    pub fn detaching(&self) -> usize {
        self.detacher.in_flight.len()
    }

    /// Hands the probes of `id` to the detach thread.
    fn start_detach(&mut self, id: AttachmentId) {
        self.stamps.remove(&id);
        if let Some(d) = self.engine.take_attachment(&id) {
            self.detacher.in_flight.insert(id);
            if self.detacher.tx.send(d).is_err() {
                log::warn!("the detach thread is gone; probes stay until exit");
            }
        }
    }

    /// Takes back what the detach thread finished. With `wait_for`, blocks
    /// until that attachment's old probes are gone.
    fn collect_detached(&mut self, wait_for: Option<AttachmentId>) {
        while let Ok((id, sites)) = self.detacher.done.try_recv() {
            self.engine.release_sites(sites);
            self.detacher.in_flight.remove(&id);
        }
        let Some(id) = wait_for else { return };
        while self.detacher.in_flight.contains(&id) {
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
