//! Reading a Go process's own runtime counters from its memory, with no
//! probe: the figures of `runtime.ReadMemStats` (Mallocs, Frees, TotalAlloc,
//! HeapAlloc, HeapObjects, HeapInuse, NextGC, NumGC) and
//! `runtime.NumGoroutine()`, computed as the runtime computes them.
//!
//! Two steps, so the costly part is done once per executable:
//!
//! ```no_run
//! # use gobinary::{GoBinary, runtime::RuntimeProbe};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bin = GoBinary::open("/proc/1234/exe".as_ref())?;
//! let probe = RuntimeProbe::for_binary(&bin)?; // layout + addresses; keep per executable
//! let process = probe.attach(1234)?;           // load bias from /proc/1234/maps
//! let c = process.read()?;                     // a few process_vm_readv calls
//! println!("{} allocations, {} goroutines", c.mallocs, c.goroutines);
//! # Ok(()) }
//! ```
//!
//! The parts: [`layout`] (struct offsets per Go release, as data),
//! [`locate`] (symbols or instruction anchors), [`maps`] (load bias),
//! [`memory`] (reading a process or a file image), [`counters`] (the
//! figures). amd64 only: the anchors decode x86-64, and the layouts were
//! checked against amd64 builds.
//!
//! Consistency: the runtime updates these while they are read. Each read
//! takes the heap statistics twice and retries when they moved
//! ([`RuntimeCounters::consistent`], [`RuntimeCounters::retries`]); what is
//! read is checked for plausibility ([`ReadError::Implausible`]). Keeping
//! exported counters monotonic across reads is the caller's job.

pub mod counters;
pub mod layout;
pub mod locate;
pub mod maps;
pub mod memory;

use std::fmt;

pub use counters::{ReadError, RuntimeCounters};
pub use layout::{Layout, LayoutError};
pub use locate::{Globals, LocateError, Located, Source};
pub use memory::{FileImage, Memory, MemoryError, ProcessMemory, ReadRequest};

use crate::binary::elf::{Elf, Segment};
use crate::binary::{Arch, GoBinary};

/// Why a binary's counters cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The Go release has no layout in the table: nothing is guessed.
    #[error(transparent)]
    UnknownLayout(#[from] LayoutError),
    /// A global could not be found.
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error("reading the runtime's counters is only supported on x86-64 binaries, not {0}")]
    UnsupportedArch(Arch),
    #[error("malformed ELF file: {0}")]
    BadElf(String),
}

/// What is needed to read the counters of any process running one
/// executable: its layout and the link-time addresses of the globals.
/// Cheap to keep per executable and to share between its processes.
#[derive(Debug, Clone)]
pub struct RuntimeProbe {
    layout: &'static Layout,
    globals: Globals,
    segments: Vec<Segment>,
    pie: bool,
}

impl RuntimeProbe {
    /// Picks the layout of the binary's Go release and locates the globals
    /// (symbols where present, else anchors).
    pub fn for_binary(bin: &GoBinary) -> Result<RuntimeProbe, RuntimeError> {
        let v = bin.go_version();
        let layout = Layout::for_version(v.major, v.minor)?;
        if bin.arch() != Arch::X86_64 {
            return Err(RuntimeError::UnsupportedArch(bin.arch()));
        }
        let globals = locate::locate(bin, layout)?;
        let elf = Elf::parse(bin.data()).map_err(|e| RuntimeError::BadElf(e.to_string()))?;
        Ok(RuntimeProbe {
            layout,
            globals,
            segments: elf.load_segments().copied().collect(),
            pie: elf.is_pie(),
        })
    }

    pub fn layout(&self) -> &'static Layout {
        self.layout
    }

    /// The globals' link-time addresses and how each was found (for
    /// `goalloc inspect`).
    pub fn globals(&self) -> &Globals {
        &self.globals
    }

    /// One line per global: "runtime.memstats 0x5a1b20 (symbol runtime.memstats)".
    pub fn report(&self) -> String {
        let mut s = String::new();
        for (name, loc) in self.globals.iter() {
            s.push_str(&format!("{name} {:#x} ({})\n", loc.addr, loc.source));
        }
        s
    }

    /// Binds to a live process running this executable (host pid): computes
    /// the load bias from `/proc/PID/maps`. No memory is read yet.
    pub fn attach(&self, pid: u32) -> Result<ProcessCounters, ReadError> {
        let bias = maps::process_load_bias(pid, &self.segments, self.pie)?;
        Ok(self.with_memory(Box::new(ProcessMemory::new(pid)), bias))
    }

    /// Binds to any [`Memory`] at a known load bias (tests, file images).
    pub fn with_memory(&self, memory: Box<dyn Memory + Send + Sync>, bias: u64) -> ProcessCounters {
        ProcessCounters {
            layout: self.layout,
            addrs: counters::Addrs::new(&self.globals, self.layout, bias),
            memory,
            bias,
        }
    }
}

/// The counters of one process, ready to be read as often as needed.
pub struct ProcessCounters {
    layout: &'static Layout,
    addrs: counters::Addrs,
    memory: Box<dyn Memory + Send + Sync>,
    bias: u64,
}

impl fmt::Debug for ProcessCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessCounters")
            .field(
                "go",
                &format_args!("{}.{}", self.layout.major, self.layout.minor),
            )
            .field("bias", &format_args!("{:#x}", self.bias))
            .finish()
    }
}

impl ProcessCounters {
    /// Reads a snapshot: two or three `process_vm_readv` calls plus one per
    /// 1024 goroutines. Never panics on what it reads.
    pub fn read(&self) -> Result<RuntimeCounters, ReadError> {
        counters::read_counters(self.memory.as_ref(), self.layout, &self.addrs)
    }

    /// The load bias applied to link-time addresses.
    pub fn bias(&self) -> u64 {
        self.bias
    }
}
