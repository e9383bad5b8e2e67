//! Target safety: a Go program behaves the same with and without goalloc's
//! probes (same output minus timing lines, same exit code).

mod common;

use common::{require_bpf, run_with_stops, variants};
use goalloc::{
    ebpf::{AttachmentId, Engine},
    procfs::BinaryKey,
};
use gobinary::{
    GoBinary,
    plan::{self, PlanOptions},
};

/// The fixture's output without the lines that carry timings or counts that
/// legitimately vary between runs of the same program.
fn stable(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| !l.starts_with("time:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn fixture_output_identical_with_and_without_probes() {
    if !require_bpf() {
        return;
    }
    for v in variants() {
        let fixture = v.program("fixture");
        let without = run_with_stops(&fixture, &[], |_| {}, |_, _| {});
        let bin = GoBinary::open(&fixture).unwrap();
        let plan = plan::plan(&bin, PlanOptions::default()).unwrap();
        let mut engine = Engine::load().unwrap();
        let binary = BinaryKey::of_path(&fixture).unwrap();
        let with = run_with_stops(
            &fixture,
            &[],
            |pid| {
                engine
                    .attach(AttachmentId { binary, pid }, &fixture, &plan)
                    .unwrap();
            },
            |_, _| {},
        );
        let hits = engine
            .counters()
            .unwrap()
            .get(agent_common::Counter::AllocHits);
        drop(engine);
        assert!(hits > 0, "{}: the probes never fired", v.label);
        assert_eq!(
            without.code, 0,
            "{}: fixture failed without probes",
            v.label
        );
        assert_eq!(
            with.code, without.code,
            "{}: exit code changed under probes",
            v.label
        );
        assert_eq!(with.stops, without.stops, "{}", v.label);
        assert_eq!(
            stable(&with.stdout),
            stable(&without.stdout),
            "{}: output differs with probes attached",
            v.label
        );
        println!(
            "{}: identical output and exit code; {hits} probe hits",
            v.label
        );
    }
}
