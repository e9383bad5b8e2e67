//! Exactness against the Go runtime's own accounting: for each fixture phase,
//! the allocations goalloc counted equal the `MemStats.Mallocs` delta, the
//! bytes equal what the fixture requested, and goroutine creations and exits
//! equal what it did. From Go 1.24 the probes sit on the allocation workers
//! and every allocator hit is one allocation (one trap per allocation).
//! Probes are attached to the fixture process alone. Needs BPF (run as root
//! via `cargo xtask test`).

mod common;

use std::cell::RefCell;

use agent_common::{Counter, Counters, ProcStats};
use common::{Variant, parse_phases, require_bpf, run_with_stops, variant, variants};
use goalloc::{
    ebpf::{AttachmentId, Engine},
    procfs::BinaryKey,
    watch::diff,
};
use gobinary::{
    GoBinary,
    binary::GoVersion,
    plan::{self, AllocScheme, PlanOptions, ProbePlan},
};

/// The variants named in the foundation issue; the matrix test covers the rest.
const NAMED: [&str; 3] = ["go1.21.13", "go1.27.3", "go1.27.3-nosizespecializedmalloc"];

/// One fixture run under probes.
struct Measured {
    /// Printable per-phase table.
    report: String,
    /// Mismatches, one line each.
    bad: Vec<String>,
    counters: Counters,
    /// Sum over phases of the `MemStats.Mallocs` deltas, and of goalloc's counts.
    mallocs: u64,
    counted: u64,
}

/// Runs the fixture of `v` under probes and compares every phase.
fn measure(v: &Variant) -> Measured {
    let fixture = v.program("fixture");
    let bin = GoBinary::open(&fixture).unwrap();
    let plan = plan::plan(&bin, PlanOptions::default()).unwrap();
    let engine = RefCell::new(Engine::load().unwrap());
    let binary = BinaryKey::of_path(&fixture).unwrap();
    let mut snaps: Vec<ProcStats> = Vec::new();
    // Attached to the fixture process alone, right after it started: its
    // first stop comes before its first phase.
    let fin = run_with_stops(
        &fixture,
        &[],
        |pid| {
            engine
                .borrow_mut()
                .attach(AttachmentId { binary, pid }, &fixture, &plan)
                .unwrap();
        },
        |pid, _| {
            snaps.push(
                engine
                    .borrow()
                    .stats(pid)
                    .unwrap()
                    .unwrap_or(ProcStats::ZERO),
            )
        },
    );
    assert_eq!(fin.code, 0, "{} fixture failed:\n{}", v.label, fin.stdout);
    let phases = parse_phases(&fin.stdout);
    assert!(!phases.is_empty(), "no phases reported:\n{}", fin.stdout);
    if v.label.ends_with("-cgo") {
        // The cgo cells really call into C (tests/go/fixture/cgo.go).
        assert!(
            fin.stdout.contains("cgo_call=42"),
            "{}: no C call:\n{}",
            v.label,
            fin.stdout
        );
    }
    assert_eq!(fin.stops, 2 * phases.len(), "two stops per phase expected");

    let mut report = format!(
        "{} ({:?}, {} alloc probes)\n{:<12} {:>10} {:>10} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9}\n",
        v.label,
        plan.scheme,
        plan.count(plan::ProbeKind::Alloc),
        "phase",
        "mallocs",
        "counted",
        "req bytes",
        "counted",
        "gor new",
        "counted",
        "gor exit",
        "counted"
    );
    let mut bad = Vec::new();
    let (mut mallocs, mut counted) = (0, 0);
    for (i, p) in phases.iter().enumerate() {
        let d = diff(&snaps[2 * i + 1], &snaps[2 * i]);
        mallocs += p.mallocs;
        counted += d.allocs;
        report += &format!(
            "{:<12} {:>10} {:>10} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9}\n",
            p.name,
            p.mallocs,
            d.allocs,
            p.bytes.map_or("-".into(), |b| b.to_string()),
            d.bytes,
            p.goroutines_created,
            d.goroutines_created,
            p.goroutines_exited,
            d.goroutines_exited
        );
        if d.allocs != p.mallocs {
            bad.push(format!(
                "{} {}: counted {} allocations, MemStats.Mallocs delta {}",
                v.label, p.name, d.allocs, p.mallocs
            ));
        }
        if let Some(bytes) = p.bytes
            && d.bytes != bytes
        {
            bad.push(format!(
                "{} {}: counted {} bytes, requested {}",
                v.label, p.name, d.bytes, bytes
            ));
        }
        if d.goroutines_created != p.goroutines_created
            || d.goroutines_exited != p.goroutines_exited
        {
            bad.push(format!(
                "{} {}: goroutines counted +{} -{}, fixture did +{} -{}",
                v.label,
                p.name,
                d.goroutines_created,
                d.goroutines_exited,
                p.goroutines_created,
                p.goroutines_exited
            ));
        }
        // One trap per allocation: under the worker scheme every allocator
        // hit is an allocation (no zero sizes, no nested calls).
        let alloc_hits = d.hits - d.goroutines_created - d.goroutines_exited;
        if plan.scheme == AllocScheme::Workers && alloc_hits != d.allocs {
            bad.push(format!(
                "{} {}: {alloc_hits} allocator hits for {} allocations",
                v.label, p.name, d.allocs
            ));
        }
        let hist_total: u64 = d.size_hist.iter().sum();
        if hist_total != d.allocs {
            bad.push(format!(
                "{} {}: histogram holds {hist_total}, allocations {}",
                v.label, p.name, d.allocs
            ));
        }
    }
    let counters = engine.borrow().counters().unwrap();
    report += &format!(
        "probe hits: {} counted, {} skipped as nested in a dispatcher, {} zero-size, {} read errors, {} map full\n",
        counters.get(Counter::AllocHits),
        counters.get(Counter::AllocNestedSkips),
        counters.get(Counter::AllocZeroSize),
        counters.get(Counter::ReadErrors),
        counters.get(Counter::StatsMapFull),
    );
    for c in [Counter::ReadErrors, Counter::StatsMapFull] {
        if counters.get(c) != 0 {
            bad.push(format!(
                "{}: self-counter {} is {}",
                v.label,
                c.name(),
                counters.get(c)
            ));
        }
    }
    Measured {
        report,
        bad,
        counters,
        mallocs,
        counted,
    }
}

/// The scheme every cell must use: the workers from Go 1.24 (the fixtures
/// are built without -race/-asan, so mallocgc dispatches to them), mallocgc
/// before.
fn expected_scheme(plan: &ProbePlan) -> AllocScheme {
    if plan.version >= GoVersion::new(1, 24, 0) {
        AllocScheme::Workers
    } else {
        AllocScheme::Mallocgc
    }
}

fn check(label: &str, scheme: AllocScheme) {
    if !require_bpf() {
        return;
    }
    let v = variant(label);
    let bin = GoBinary::open(&v.program("fixture")).unwrap();
    let plan = plan::plan(&bin, PlanOptions::default()).unwrap();
    assert_eq!(plan.scheme, scheme, "{label}: {}", plan.scheme_reason);
    assert_eq!(expected_scheme(&plan), scheme, "{label}");
    let m = measure(&v);
    println!("{}", m.report);
    if scheme == AllocScheme::MallocgcAndSpecialized {
        // mallocgc dispatched to specialized allocators and those hits were
        // recognised as nested: the double-count guard was exercised.
        assert!(
            m.counters.get(Counter::AllocNestedSkips) > 0,
            "{}",
            m.report
        );
    }
    assert!(m.bad.is_empty(), "{}\n{}", m.report, m.bad.join("\n"));
}

#[test]
fn exact_go1_21() {
    check("go1.21.13", AllocScheme::Mallocgc);
}

#[test]
fn exact_go1_27_size_specialized() {
    check("go1.27.3", AllocScheme::Workers);
}

#[test]
fn exact_go1_27_nosizespecializedmalloc() {
    check("go1.27.3-nosizespecializedmalloc", AllocScheme::Workers);
}

/// Every other built variant: the whole matrix of Go versions,
/// GOEXPERIMENTs and build flavours (stripped, PIE, cgo) unless
/// GOALLOC_MATRIX=quick.
#[test]
fn exact_other_variants() {
    if !require_bpf() {
        return;
    }
    let mut reports = String::new();
    let mut summary = format!(
        "{:<46} {:<7} {:<22} {:>6} {:>10} {:>10} {:>5}\n",
        "cell", "symbols", "scheme", "probes", "mallocs", "counted", "exact"
    );
    let mut bad = Vec::new();
    for v in variants()
        .iter()
        .filter(|v| !NAMED.contains(&v.label.as_str()))
    {
        let bin = GoBinary::open(&v.program("fixture")).unwrap();
        let plan = plan::plan(&bin, PlanOptions::default()).unwrap();
        if plan.scheme != expected_scheme(&plan) {
            bad.push(format!(
                "{}: scheme {:?}, expected {:?} ({})",
                v.label,
                plan.scheme,
                expected_scheme(&plan),
                plan.scheme_reason
            ));
        }
        let m = measure(v);
        summary += &format!(
            "{:<46} {:<7} {:<22} {:>6} {:>10} {:>10} {:>5}\n",
            v.label,
            format!("{:?}", bin.symbol_source()),
            format!("{:?}", plan.scheme),
            plan.probes.len(),
            m.mallocs,
            m.counted,
            if m.bad.is_empty() { "yes" } else { "NO" },
        );
        reports += &m.report;
        bad.extend(m.bad);
    }
    println!("{reports}\n{summary}");
    assert!(bad.is_empty(), "{reports}\n{summary}\n{}", bad.join("\n"));
}
