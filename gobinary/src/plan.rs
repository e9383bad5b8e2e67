//! Choosing what to probe in one Go executable, and where.
//!
//! The plan is pure: it reads the binary and decides the functions, probe
//! offsets and per-site configuration; `ebpf` then attaches it.

use agent_common::{
    ABI_REGISTER, ABI_STACK, MAX_SKIP_RANGES, ProbeSite, SITE_MALLOCGC, SITE_SPECIALIZED, VaRange,
    names,
};

use crate::{
    binary::{Arch, BinaryError, GoBinary, GoVersion},
    prologue::{self, Placement, PrologueError},
};

/// Oldest Go release goalloc supports: the first with the register ABI (amd64).
pub const MIN_GO: GoVersion = GoVersion::new(1, 17, 0);

/// The eBPF program a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Alloc,
    GoroutineCreate,
    GoroutineExit,
}

impl ProbeKind {
    /// Name of the eBPF program in the object file.
    pub fn program(self) -> &'static str {
        match self {
            ProbeKind::Alloc => names::PROG_ALLOC,
            ProbeKind::GoroutineCreate => names::PROG_GOROUTINE_CREATE,
            ProbeKind::GoroutineExit => names::PROG_GOROUTINE_EXIT,
        }
    }
}

/// How allocations are counted exactly once for this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocScheme {
    /// Every allocation goes through `runtime.mallocgc`.
    Mallocgc,
    /// Size-specialized allocators exist (Go 1.26 experiment, 1.27 default):
    /// `mallocgc` plus each specialized function, which skips hits whose
    /// caller is a dispatcher.
    MallocgcAndSpecialized,
}

/// One uprobe to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedProbe {
    pub kind: ProbeKind,
    pub function: String,
    /// Link-time virtual address of the probe point.
    pub vaddr: u64,
    /// Offset of the probe point in the executable file (what uprobes take).
    pub file_offset: u64,
    pub placement: Placement,
    /// The instruction at the probe point, for logs.
    pub instruction: String,
    /// Configuration for allocator probes (`None` for goroutine probes).
    pub site: Option<ProbeSite>,
}

#[derive(Debug, Clone)]
pub struct ProbePlan {
    pub go_version: String,
    pub version: GoVersion,
    pub scheme: AllocScheme,
    pub probes: Vec<PlannedProbe>,
}

impl ProbePlan {
    pub fn count(&self, kind: ProbeKind) -> usize {
        self.probes.iter().filter(|p| p.kind == kind).count()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Probe function entries instead of the instruction after the stack
    /// check. Only for benchmarks: entry probes are ~30x slower and fire twice
    /// when a call restarts after stack growth.
    pub at_entry: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Binary(#[from] BinaryError),
    #[error("{version} is not supported: goalloc needs Go {min} or newer")]
    GoTooOld { version: String, min: GoVersion },
    #[error(
        "binary is for {binary:?} but goalloc runs on {host}: run the {binary:?} build of goalloc"
    )]
    ArchMismatch { binary: Arch, host: &'static str },
    #[error("function {0} not found in the binary: this Go runtime layout is not supported")]
    MissingFunction(&'static str),
    #[error("cannot place a probe in {function}: {source}")]
    Prologue {
        function: String,
        #[source]
        source: PrologueError,
    },
    #[error("{0} dispatcher functions found, at most {MAX_SKIP_RANGES} are supported")]
    TooManyDispatchers(usize),
}

/// The architecture this agent was built for.
pub fn host_arch() -> Option<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(Arch::X86_64),
        "aarch64" => Some(Arch::Aarch64),
        _ => None,
    }
}

/// Whether a function is one of the size-specialized allocators, e.g.
/// `runtime.mallocgcTinySC2` (1.27) or `runtime.mallocgcSmallNoScanSC12`.
pub fn is_specialized_allocator(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("runtime.mallocgc") else {
        return false;
    };
    let Some(rest) = ["TinySize", "TinySC", "SmallNoScanSC", "SmallScanNoHeaderSC"]
        .iter()
        .find_map(|p| rest.strip_prefix(p))
    else {
        return false;
    };
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
}

/// Functions that count an allocation themselves and may call a specialized
/// allocator for it: `mallocgc` and the slow paths.
fn is_dispatcher(name: &str) -> bool {
    name == "runtime.mallocgc"
        || (name.starts_with("runtime.mallocgc") && name.ends_with("SlowPath"))
}

/// Plans the probes for `bin`, checking it can be probed safely on this host.
pub fn plan(bin: &GoBinary, opts: PlanOptions) -> Result<ProbePlan, PlanError> {
    let host = host_arch();
    if host != Some(bin.arch()) {
        return Err(PlanError::ArchMismatch {
            binary: bin.arch(),
            host: std::env::consts::ARCH,
        });
    }
    plan_for_arch(bin, opts)
}

/// Like [`plan`] without the host check, so plans for other architectures can
/// be computed and tested.
pub fn plan_for_arch(bin: &GoBinary, opts: PlanOptions) -> Result<ProbePlan, PlanError> {
    let info = bin.build_info();
    if info.version < MIN_GO {
        return Err(PlanError::GoTooOld {
            version: info.go_version.clone(),
            min: MIN_GO,
        });
    }
    let abi = match bin.arch() {
        // Go records the sub-experiments (noregabiargs, ...), never "noregabi".
        Arch::X86_64 if !info.has_experiment("noregabiargs") => ABI_REGISTER,
        Arch::Aarch64 if info.version >= GoVersion::new(1, 18, 0) => ABI_REGISTER,
        _ => ABI_STACK,
    };

    let specialized: Vec<_> = bin
        .functions()
        .filter(|f| is_specialized_allocator(&f.name))
        .collect();
    let scheme = if specialized.is_empty() {
        AllocScheme::Mallocgc
    } else {
        AllocScheme::MallocgcAndSpecialized
    };
    let mut dispatchers: Vec<VaRange> = bin
        .functions()
        .filter(|f| is_dispatcher(&f.name))
        .map(|f| VaRange {
            start: f.entry,
            end: f.end,
        })
        .collect();
    dispatchers.sort_by_key(|r| r.start);
    if dispatchers.len() > MAX_SKIP_RANGES {
        return Err(PlanError::TooManyDispatchers(dispatchers.len()));
    }
    let mut skip = [VaRange::default(); MAX_SKIP_RANGES];
    skip[..dispatchers.len()].copy_from_slice(&dispatchers);

    let mut probes = Vec::new();
    let mallocgc = bin
        .lookup("runtime.mallocgc")
        .ok_or(PlanError::MissingFunction("runtime.mallocgc"))?;
    let mut site = ProbeSite {
        kind: SITE_MALLOCGC,
        abi,
        ..ProbeSite::default()
    };
    probes.push(probe(bin, ProbeKind::Alloc, mallocgc, Some(site), opts)?);
    site.kind = SITE_SPECIALIZED;
    site.skip_count = dispatchers.len() as u32;
    site.skip = skip;
    for f in specialized {
        probes.push(probe(bin, ProbeKind::Alloc, f, Some(site), opts)?);
    }

    let create = bin
        .lookup("runtime.newproc1")
        .ok_or(PlanError::MissingFunction("runtime.newproc1"))?;
    probes.push(probe(bin, ProbeKind::GoroutineCreate, create, None, opts)?);
    // gdestroy exists from Go 1.22 (goexit0 calls it); before, goexit0 did the work.
    let exit = bin
        .lookup("runtime.gdestroy")
        .or_else(|| bin.lookup("runtime.goexit0"))
        .ok_or(PlanError::MissingFunction("runtime.gdestroy"))?;
    probes.push(probe(bin, ProbeKind::GoroutineExit, exit, None, opts)?);

    Ok(ProbePlan {
        go_version: info.go_version.clone(),
        version: info.version,
        scheme,
        probes,
    })
}

fn probe(
    bin: &GoBinary,
    kind: ProbeKind,
    f: &crate::binary::Function,
    site: Option<ProbeSite>,
    opts: PlanOptions,
) -> Result<PlannedProbe, PlanError> {
    let code = bin.code(f)?;
    let point =
        prologue::find_probe_point(bin.arch(), code).map_err(|source| PlanError::Prologue {
            function: f.name.clone(),
            source,
        })?;
    let (offset, placement) = if opts.at_entry {
        (0, Placement::Entry)
    } else {
        (point.offset, point.placement)
    };
    let vaddr = f.entry + offset;
    let site = site.map(|s| ProbeSite {
        probe_vaddr: vaddr,
        ..s
    });
    Ok(PlannedProbe {
        kind,
        function: f.name.clone(),
        vaddr,
        file_offset: bin.file_offset(vaddr)?,
        placement,
        instruction: if opts.at_entry {
            String::new()
        } else {
            point.instruction
        },
        site,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specialized_names() {
        for yes in [
            "runtime.mallocgcTinySC2",
            "runtime.mallocgcSmallNoScanSC7",
            "runtime.mallocgcSmallScanNoHeaderSC1",
            "runtime.mallocgcSmallScanNoHeaderSC26",
            "runtime.mallocgcTinySize15",
        ] {
            assert!(is_specialized_allocator(yes), "{yes}");
        }
        for no in [
            "runtime.mallocgc",
            "runtime.mallocgcTiny",
            "runtime.mallocgcSmallNoscan",
            "runtime.mallocgcSmallScanNoHeader",
            "runtime.mallocgcLarge",
            "runtime.mallocgcTinySlowPath",
            "runtime.mallocgcSmallNoScanSC",
            "runtime.mallocgcSmallNoScanSC2x",
            "main.mallocgcTinySC2",
        ] {
            assert!(!is_specialized_allocator(no), "{no}");
        }
    }

    #[test]
    fn dispatcher_names() {
        assert!(is_dispatcher("runtime.mallocgc"));
        assert!(is_dispatcher("runtime.mallocgcTinySlowPath"));
        assert!(is_dispatcher("runtime.mallocgcSmallScanSlowPath"));
        assert!(!is_dispatcher("runtime.mallocgcTinySC2"));
        assert!(!is_dispatcher("runtime.mallocgcLarge"));
    }
}
