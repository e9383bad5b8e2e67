//! Choosing what to probe in one Go executable, and where.
//!
//! The plan is pure: it reads the binary and decides the functions, probe
//! offsets and per-site configuration; `ebpf` then attaches it.

use agent_common::{
    ABI_REGISTER, ABI_STACK, LOC_REG_ARG0, MAX_SKIP_RANGES, ProbeSite, SITE_FLAG_FRAME_SET,
    SITE_FLAG_STEPPED, SITE_GOROUTINE, SITE_MALLOCGC, SITE_SPECIALIZED, VaRange, names,
};

use crate::{
    binary::{Arch, BinaryError, GoBinary, GoVersion},
    prologue::{self, Placement, PrologueError},
    site,
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
    /// caller is a dispatcher. Two traps for an allocation that goes through
    /// `mallocgc`: only used when the workers cannot be probed.
    MallocgcAndSpecialized,
    /// Go 1.24+: the workers `mallocgc` dispatches to (`mallocgcTiny`,
    /// `mallocgcSmallNoscan`, `mallocgcSmallScanNoHeader`,
    /// `mallocgcSmallScanHeader`, `mallocgcLarge`) and the size-specialized
    /// allocators, not `mallocgc`: one trap per allocation. `mallocgc`
    /// returns `zerobase` for size 0 before dispatching, so every worker hit
    /// is an allocation.
    Workers,
}

/// The allocation workers of Go 1.24+, called by `mallocgc` only.
pub const WORKERS: [&str; 5] = [
    "runtime.mallocgcTiny",
    "runtime.mallocgcSmallNoscan",
    "runtime.mallocgcSmallScanNoHeader",
    "runtime.mallocgcSmallScanHeader",
    "runtime.mallocgcLarge",
];

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
    /// The kernel emulates the instruction at the probe point (one trap per
    /// hit); otherwise it single-steps it (two traps, ~15x the cost).
    pub emulated: bool,
    /// Why the probe sits where it does, and where the arguments are there
    /// (for `goalloc inspect`).
    pub site_reason: String,
    /// Configuration of the probe, found by the eBPF program through the
    /// attach cookie.
    pub site: ProbeSite,
}

#[derive(Debug, Clone)]
pub struct ProbePlan {
    pub go_version: String,
    pub version: GoVersion,
    pub scheme: AllocScheme,
    /// Why this scheme (e.g. why the worker scheme was not used), for
    /// `goalloc inspect` and logs.
    pub scheme_reason: String,
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
    let mallocgc = bin
        .lookup("runtime.mallocgc")
        .ok_or(PlanError::MissingFunction("runtime.mallocgc"))?;
    let (scheme, scheme_reason) = choose_scheme(bin, mallocgc, !specialized.is_empty())?;
    // Dispatchers: functions that count an allocation themselves (or whose
    // caller did) and may call a probed allocator for it. Under the worker
    // scheme mallocgc is not probed, so only the slow paths remain (Go
    // 1.27's tiny slow path may call a small specialized allocator).
    let mut dispatchers: Vec<VaRange> = bin
        .functions()
        .filter(|f| is_dispatcher(&f.name))
        .filter(|f| scheme != AllocScheme::Workers || f.name != "runtime.mallocgc")
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
    let base = ProbeSite {
        abi,
        ..ProbeSite::default()
    };
    let leaf = ProbeSite {
        kind: SITE_SPECIALIZED,
        skip_count: dispatchers.len() as u32,
        skip,
        ..base
    };
    if scheme == AllocScheme::Workers {
        for name in WORKERS {
            if let Some(f) = bin.lookup(name) {
                probes.push(probe(bin, ProbeKind::Alloc, f, leaf, opts)?);
            }
        }
    } else {
        let site = ProbeSite {
            kind: SITE_MALLOCGC,
            ..base
        };
        probes.push(probe(bin, ProbeKind::Alloc, mallocgc, site, opts)?);
    }
    for f in specialized {
        probes.push(probe(bin, ProbeKind::Alloc, f, leaf, opts)?);
    }

    let create = bin
        .lookup("runtime.newproc1")
        .ok_or(PlanError::MissingFunction("runtime.newproc1"))?;
    let goroutine = ProbeSite {
        kind: SITE_GOROUTINE,
        ..base
    };
    probes.push(probe(
        bin,
        ProbeKind::GoroutineCreate,
        create,
        goroutine,
        opts,
    )?);
    // gdestroy exists from Go 1.22 (goexit0 calls it); before, goexit0 did the work.
    let exit = bin
        .lookup("runtime.gdestroy")
        .or_else(|| bin.lookup("runtime.goexit0"))
        .ok_or(PlanError::MissingFunction("runtime.gdestroy"))?;
    probes.push(probe(bin, ProbeKind::GoroutineExit, exit, goroutine, opts)?);

    Ok(ProbePlan {
        go_version: info.go_version.clone(),
        version: info.version,
        scheme,
        scheme_reason,
        probes,
    })
}

/// The workers `mallocgc` must call directly in this binary for the worker
/// scheme to count every allocation (from the sources of each release: with
/// size-specialized malloc on, the tiny path and, in 1.26, the no-header
/// scan path go to specialized allocators instead).
fn expected_workers(version: GoVersion, specialized: bool) -> &'static [&'static str] {
    const SPECIALIZED_1_26: [&str; 3] = [
        "runtime.mallocgcSmallNoscan",
        "runtime.mallocgcSmallScanHeader",
        "runtime.mallocgcLarge",
    ];
    const SPECIALIZED_1_27: [&str; 4] = [
        "runtime.mallocgcSmallNoscan",
        "runtime.mallocgcSmallScanNoHeader",
        "runtime.mallocgcSmallScanHeader",
        "runtime.mallocgcLarge",
    ];
    match (specialized, version < GoVersion::new(1, 27, 0)) {
        (false, _) => &WORKERS,
        (true, true) => &SPECIALIZED_1_26,
        (true, false) => &SPECIALIZED_1_27,
    }
}

/// Chooses how allocations are counted, and says why. The worker scheme is
/// used only when this binary's `mallocgc` is seen to call every expected
/// worker directly and no other `runtime.mallocgc*` function (a worker
/// inlined into `mallocgc`, or a new one, would go uncounted): otherwise
/// the `mallocgc` schemes, which count at the entrance. Never a guess.
fn choose_scheme(
    bin: &GoBinary,
    mallocgc: &crate::binary::Function,
    specialized: bool,
) -> Result<(AllocScheme, String), PlanError> {
    let version = bin.build_info().version;
    let fallback = if specialized {
        AllocScheme::MallocgcAndSpecialized
    } else {
        AllocScheme::Mallocgc
    };
    if version < GoVersion::new(1, 24, 0) {
        return Ok((
            fallback,
            "before Go 1.24 mallocgc allocates itself: probed at its entrance".into(),
        ));
    }
    let calls: std::collections::HashSet<&str> =
        prologue::direct_calls(bin.arch(), bin.code(mallocgc)?, mallocgc.entry)
            .into_iter()
            .filter_map(|target| bin.function_at(target).filter(|f| f.entry == target))
            .map(|f| f.name.as_str())
            .collect();
    for name in expected_workers(version, specialized) {
        if !calls.contains(name) {
            return Ok((
                fallback,
                format!(
                    "Go {version}: mallocgc does not call {name} (inlined or renamed): \
                     probing mallocgc instead"
                ),
            ));
        }
    }
    if let Some(other) = calls.iter().find(|name| {
        name.starts_with("runtime.mallocgc")
            && !WORKERS.contains(name)
            && !is_specialized_allocator(name)
    }) {
        return Ok((
            fallback,
            format!("Go {version}: mallocgc calls {other}, not a known worker: probing mallocgc"),
        ));
    }
    Ok((
        AllocScheme::Workers,
        format!(
            "Go {version}: mallocgc dispatches to {} workers; probing them (one trap per allocation)",
            expected_workers(version, specialized).len()
        ),
    ))
}

fn probe(
    bin: &GoBinary,
    kind: ProbeKind,
    f: &crate::binary::Function,
    site: ProbeSite,
    opts: PlanOptions,
) -> Result<PlannedProbe, PlanError> {
    let code = bin.code(f)?;
    let point =
        prologue::find_probe_point(bin.arch(), code).map_err(|source| PlanError::Prologue {
            function: f.name.clone(),
            source,
        })?;
    let (mut offset, placement) = if opts.at_entry {
        (0, Placement::Entry)
    } else {
        (point.offset, point.placement)
    };
    let mut instruction = if opts.at_entry {
        String::new()
    } else {
        point.instruction
    };
    let mut ret_off = 0;
    let mut frame_set = false;
    let mut emulated = prologue::kernel_emulates(bin.arch(), &code[offset as usize..]);
    let site_reason = match placement {
        Placement::Entry if opts.at_entry => "function entry (--placement entry)".to_string(),
        Placement::Entry => "function entry (no stack check)".to_string(),
        Placement::AfterStackCheck if emulated => {
            "after the stack check (emulated): arguments in their registers, return address at [sp]"
                .to_string()
        }
        // The goroutine probes read nothing but the hit: any straight-line
        // instruction on the way will do.
        Placement::AfterStackCheck if site.kind == SITE_GOROUTINE => {
            match site::find_emulated_counting(bin.arch(), code, offset) {
                Ok(found) => {
                    let reason = format!(
                        "moved past `{}` to the emulated `{}` (the probe reads no argument; \
                         straight-line, no branch into it: once per call)",
                        found.skipped.join("; "),
                        found.instruction,
                    );
                    offset = found.offset;
                    instruction = found.instruction;
                    emulated = true;
                    reason
                }
                Err(why) => format!("after the stack check, single-stepped: {why}"),
            }
        }
        // Only the register ABI: with the stack ABI the arguments are read
        // relative to the stack pointer, which the walk would move.
        Placement::AfterStackCheck if site.abi != ABI_REGISTER => {
            "after the stack check, single-stepped (stack ABI: not moved)".to_string()
        }
        Placement::AfterStackCheck => match site::find_emulated(bin.arch(), code, offset) {
            Ok(found) => {
                let reason = format!(
                    "moved past `{}` to the emulated `{}`: arguments still in their \
                     registers (size RAX, typ RBX), return address at [sp+{:#x}]",
                    found.skipped.join("; "),
                    found.instruction,
                    found.stack_moved
                );
                offset = found.offset;
                instruction = found.instruction;
                ret_off = found.stack_moved;
                frame_set = found.frame_set;
                emulated = true;
                reason
            }
            Err(why) => format!("after the stack check, single-stepped: {why}"),
        },
    };
    let vaddr = f.entry + offset;
    let site = ProbeSite {
        probe_vaddr: vaddr,
        flags: if emulated { 0 } else { SITE_FLAG_STEPPED }
            | if frame_set { SITE_FLAG_FRAME_SET } else { 0 },
        size_loc: LOC_REG_ARG0,
        ret_off,
        ..site
    };
    Ok(PlannedProbe {
        kind,
        function: f.name.clone(),
        vaddr,
        file_offset: bin.file_offset(vaddr)?,
        placement,
        instruction,
        emulated,
        site_reason,
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
