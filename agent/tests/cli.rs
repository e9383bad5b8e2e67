//! The `goalloc` command as users run it: `watch` on a live Go process, its
//! JSON output, exit when the process exits, and one-line errors on bad input.

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::{parse_phases, require_bpf, run_with_stops, variant};

const GOALLOC: &str = env!("CARGO_BIN_EXE_goalloc");

fn goalloc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(GOALLOC).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A failing command prints exactly one line, starting with "goalloc: error:".
fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, stdout, stderr) = goalloc(args);
    assert_ne!(code, 0, "{args:?} should fail");
    assert!(stdout.is_empty(), "{args:?} printed to stdout: {stdout}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got:\n{stderr}"
    );
    assert!(lines[0].starts_with("goalloc: error: "), "{}", lines[0]);
    assert!(
        lines[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
    // Causes are not repeated ("...: No such file (os error 2): No such file (os error 2)").
    assert!(
        lines[0].matches("os error").count() <= 1,
        "{args:?}: cause repeated in {:?}",
        lines[0]
    );
}

#[test]
fn errors_are_one_clear_line() {
    assert_one_line_error(
        &["watch", "--pid", "4000000000"],
        "no such process: 4000000000",
    );
    assert_one_line_error(
        &["watch", "--binary", "/nonexistent/app"],
        "/nonexistent/app",
    );
    assert_one_line_error(&["watch", "--binary", "/bin/sh"], "not a Go executable");
    assert_one_line_error(&["inspect", "/bin/sh"], "not a Go executable");
    assert_one_line_error(&["inspect", "/nonexistent"], "cannot read /nonexistent");
    assert_one_line_error(&["watch"], "nothing to watch");
    assert_one_line_error(&["watch", "--pid", "abc"], "invalid value 'abc'");
    assert_one_line_error(
        &["watch", "--pid", "1", "--binary", "/bin/sh"],
        "cannot be used with",
    );
    assert_one_line_error(
        &["watch", "--binary", "/bin/sh", "--interval", "0s"],
        "--interval",
    );

    // A running process that is not Go.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    assert_one_line_error(&["watch", "--pid", &pid], "not a Go executable");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    // A corrupt Go binary: the first half of a real one.
    let v = variant("go1.27.3");
    let data = std::fs::read(v.program("fixture")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let (code, _, stderr) = goalloc(&["inspect", cut.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn inspect_shows_the_plan() {
    let v = variant("go1.27.3");
    let (code, stdout, stderr) = goalloc(&["inspect", v.program("fixture").to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("go1.27.3"), "{stdout}");
    // Go 1.27 probes the workers mallocgc dispatches to (one trap per allocation).
    assert!(stdout.contains("runtime.mallocgcSmallNoscan"), "{stdout}");
    assert!(stdout.contains("runtime.newproc1"), "{stdout}");
    assert!(
        stdout.contains("after the stack check (emulated)"),
        "{stdout}"
    );
    assert!(stdout.contains("scheme:     Workers"), "{stdout}");
    assert!(stdout.contains("runtime.memstats"), "{stdout}");
}

/// Debian's Go 1.19: every probe on an emulated instruction (the kernel
/// single-steps the `sub rsp` after the stack check): mallocgc's `nop` with
/// its arguments in place, the goroutine probes further on their
/// straight-line blocks.
#[test]
fn inspect_go1_19_has_only_emulated_sites() {
    for label in ["go1.19.8", "go1.19.8-pie"] {
        let v = variant(label);
        let (code, stdout, stderr) = goalloc(&["inspect", v.program("fixture").to_str().unwrap()]);
        assert_eq!(code, 0, "{stderr}");
        let rows: Vec<&str> = stdout
            .lines()
            .skip_while(|l| !l.starts_with("FUNCTION"))
            .skip(1)
            .collect();
        assert_eq!(rows.len(), 3, "{stdout}");
        for row in &rows {
            assert!(row.contains(" emulated "), "{label}: {row}\n{stdout}");
        }
        let mallocgc = rows
            .iter()
            .find(|r| r.starts_with("runtime.mallocgc"))
            .unwrap();
        assert!(mallocgc.trim_end().ends_with(" nop"), "{mallocgc}");
    }
}

/// `goalloc watch --pid` on the fixture: JSON rows while it runs, its totals
/// once it exits, then goalloc exits 0 by itself.
#[test]
fn watch_pid_json_until_exit() {
    if !require_bpf() {
        return;
    }
    let v = variant("go1.27.3");
    let fixture = v.program("fixture");
    let mut watcher = None;
    let (tx, rx) = mpsc::channel();
    let fin = run_with_stops(
        &fixture,
        &["-phases=tiny,small-scan,goroutines"],
        |_| {},
        |pid, stop| {
            if stop == 0 {
                // The fixture is stopped before its first phase: attach now.
                let mut child = Command::new(GOALLOC)
                    .args([
                        "watch",
                        "--pid",
                        &pid.to_string(),
                        "--output",
                        "json",
                        "--interval",
                        "100ms",
                        "--exact",
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stderr = BufReader::new(child.stderr.take().unwrap());
                let mut line = String::new();
                stderr.read_line(&mut line).unwrap();
                assert!(line.contains("probes"), "goalloc said: {line}");
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut rest = String::new();
                    stderr.read_to_string(&mut rest).unwrap();
                    tx.send(rest).unwrap();
                });
                watcher = Some(child);
            }
        },
    );
    assert_eq!(fin.code, 0);
    let phases = parse_phases(&fin.stdout);
    let mut child = watcher.expect("fixture never stopped");
    // goalloc notices the exit within an interval or two.
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = status.expect("goalloc watch did not exit after its only process exited");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let stderr = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "goalloc failed: {stderr}");
    assert!(stderr.is_empty(), "unexpected stderr: {stderr}");

    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (totals, intervals): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r["total"] == true);
    assert_eq!(totals.len(), 1, "{out}");
    let total = totals[0];
    assert_eq!(total["exited"], true);
    assert_eq!(total["go_version"], "go1.27.3");
    for key in ["allocs", "bytes", "goroutines_created", "goroutines_exited"] {
        let sum: u64 = intervals
            .iter()
            .map(|r| r["exact"][key].as_u64().unwrap())
            .sum();
        let total = total["exact"][key].as_u64().unwrap();
        // The last interval of an exited process is folded into its total.
        assert!(sum <= total, "{key}: intervals {sum} > total {total}");
    }
    let mallocs: u64 = phases.iter().map(|p| p.mallocs).sum();
    let created: u64 = phases.iter().map(|p| p.goroutines_created).sum();
    // The whole run includes more than the measured phases (start-up after
    // attach, printing), never less.
    assert!(
        total["exact"]["allocs"].as_u64().unwrap() >= mallocs,
        "{total} vs {mallocs}"
    );
    assert!(total["exact"]["goroutines_created"].as_u64().unwrap() >= created);
    // The runtime's own counters of the same process, in the same rows (as
    // of the last read before it exited: its memory is gone after).
    for key in [
        "allocs",
        "bytes",
        "gc_cycles",
        "goroutines",
        "heap_live_bytes",
    ] {
        assert!(total[key].is_u64(), "runtime {key} missing: {total}");
    }
    assert_eq!(created, 1000);
    println!("watch total: {total}");
}
