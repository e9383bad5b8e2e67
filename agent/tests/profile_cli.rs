//! `goalloc profile` as users run it, on the `sites` fixture
//! (tests/go/sites): a profile file `go tool pprof` reads, for old, stripped
//! and PIE builds; `--top` tables; `-o -` to stdout; several processes in
//! one profile, told apart by the `pid` label; one-line errors on bad
//! input; a process that exits mid-profile; no uprobe left on the process
//! afterwards. Needs BPF (root), except the bad-input checks.
//!
//! Whether a process carries uprobes is read from the process itself (see
//! [`common::ProbeSites`]).

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Command, Output, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use common::{
    GOALLOC, KillOnDrop, ProbeSites, Sites, Terminate, go_pprof, pprof_tag_values,
    pprof_top_functions, require_bpf, variant, wait_until,
};

/// One profiled fixture at a time: the machine has few cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `goalloc args` to completion (killed after `limit`).
fn goalloc_in(dir: Option<&Path>, args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new(GOALLOC);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("spawn goalloc");
    // Read while it runs: a profile on stdout is bigger than a pipe.
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("goalloc {args:?} still running after {limit:?}:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = Vec::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr,
    }
}

fn goalloc(args: &[&str]) -> Output {
    goalloc_in(None, args, Duration::from_secs(60))
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A profile of `pid` for `duration` at 4 KiB, then its stderr.
fn profile_to(pids: &[u32], duration: &str, out: &Path) -> String {
    let mut args = vec!["profile".to_string()];
    for p in pids {
        args.extend(["--pid".to_string(), p.to_string()]);
    }
    args.extend(["--duration", duration, "--rate", "4096", "-o"].map(String::from));
    args.push(out.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = goalloc(&args);
    let stderr = stderr_of(&o);
    assert!(
        o.status.success(),
        "goalloc {args:?}: {}\n{stderr}",
        o.status
    );
    assert!(out.is_file(), "{} not written:\n{stderr}", out.display());
    stderr
}

fn assert_sites_shown(file: &Path) -> String {
    let top = go_pprof(file, &["-top", "-sample_index=alloc_space"]);
    let functions = pprof_top_functions(&top);
    for f in ["main.recordSite", "main.inlinedSite"] {
        assert!(
            functions.iter().any(|x| x == f),
            "{f} not in go tool pprof -top of {}:\n{top}",
            file.display()
        );
    }
    top
}

/// No planned probe site of `pid` carries a breakpoint any more (polled a
/// little: the kernel removes them as goalloc's links close); how long it
/// took.
fn assert_no_probes_left(probes: &ProbeSites, pid: u32, what: &str) -> Duration {
    let start = Instant::now();
    let clean = wait_until(Duration::from_secs(2), || probes.installed(pid) == Some(0));
    assert!(
        clean,
        "{what}: pid {pid} still has {:?} of {} probe sites trapped after goalloc exited",
        probes.installed(pid),
        probes.len()
    );
    start.elapsed()
}

// ---------------------------------------------------------------------------
// Scenarios.

/// `-o FILE` on an old Go, a stripped and a PIE build: written, read by
/// `go tool pprof` with the fixture's sites, and no probe left behind.
#[test]
fn profile_file_for_several_builds() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    for cell in ["go1.19.8", "go1.21.13-stripped", "go1.27.3-pie"] {
        let sites = Sites::start(&variant(cell));
        let probes = ProbeSites::of(&sites.program);
        assert_eq!(
            probes.installed(sites.pid),
            Some(0),
            "{cell}: probed before"
        );
        let file = tmp.path().join(format!("{cell}.pb.gz"));
        let started = Instant::now();
        let stderr = profile_to(&[sites.pid], "2s", &file);
        let took = started.elapsed();
        let cleared = assert_no_probes_left(&probes, sites.pid, cell);
        let top = assert_sites_shown(&file);
        assert!(stderr.contains("wrote"), "{cell}: {stderr}");
        println!(
            "{cell}: goalloc profile took {took:?}, probes gone {cleared:?} after it exited\n\
             {stderr}{top}"
        );
    }
}

/// `--top` prints the call-site and type tables (and writes no file);
/// `-o -` writes the gzipped profile to stdout.
#[test]
fn top_tables_and_stdout() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let sites = Sites::start(&variant("go1.27.3"));
    let pid = sites.pid.to_string();
    let probes = ProbeSites::of(&sites.program);

    let cwd = tmp.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let args = [
        "profile",
        "--pid",
        &pid,
        "--duration",
        "2s",
        "--rate",
        "4096",
        "--top",
    ];
    let o = goalloc_in(Some(&cwd), &args, Duration::from_secs(60));
    assert!(o.status.success(), "{}", stderr_of(&o));
    let text = String::from_utf8(o.stdout).expect("utf-8 tables");
    println!("--top:\n{text}");
    assert!(text.starts_with("sampled "), "{text}");
    let first_row = |header: &str| -> String {
        let mut lines = text.lines().skip_while(|l| !l.ends_with(header));
        assert!(lines.next().is_some(), "no {header} table:\n{text}");
        lines.next().unwrap_or_default().to_string()
    };
    let site = first_row("CALL SITE");
    assert!(
        site.contains("main.recordSite ("),
        "first call site {site:?}:\n{text}"
    );
    let typ = first_row("  TYPE");
    assert!(typ.ends_with(" main.record"), "first type {typ:?}:\n{text}");
    let written: Vec<_> = std::fs::read_dir(&cwd).unwrap().collect();
    assert!(written.is_empty(), "--top wrote files: {written:?}");
    assert_no_probes_left(&probes, sites.pid, "--top");

    let args = [
        "profile",
        "--pid",
        &pid,
        "--duration",
        "2s",
        "--rate",
        "4096",
        "-o",
        "-",
    ];
    let o = goalloc(&args);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(
        o.stdout.starts_with(&[0x1f, 0x8b]),
        "-o - wrote {} bytes, not gzip: {:02x?}",
        o.stdout.len(),
        &o.stdout[..o.stdout.len().min(8)]
    );
    let file = tmp.path().join("stdout.pb.gz");
    std::fs::write(&file, &o.stdout).unwrap();
    assert_sites_shown(&file);
    assert_no_probes_left(&probes, sites.pid, "-o -");
}

/// Two processes (two Go versions) in one profile: the `pid` label tells
/// them apart, and the comments name both.
#[test]
fn two_processes_in_one_profile() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let a = Sites::start(&variant("go1.27.3"));
    let b = Sites::start(&variant("go1.21.13"));
    let file = tmp.path().join("two.pb.gz");
    profile_to(&[a.pid, b.pid], "2s", &file);
    assert_sites_shown(&file);
    let tags = go_pprof(&file, &["-tags"]);
    let pids = pprof_tag_values(&tags, "pid");
    for p in [a.pid, b.pid] {
        assert!(
            pids.contains(&p.to_string()),
            "pid {p} not among the pid labels {pids:?}:\n{tags}"
        );
    }
    for (s, name) in [(&a, "a"), (&b, "b")] {
        let top = go_pprof(
            &file,
            &[
                "-top",
                &format!("-tagfocus=pid={}", s.pid),
                "-sample_index=alloc_space",
            ],
        );
        let functions = pprof_top_functions(&top);
        assert!(
            functions.iter().any(|f| f == "main.recordSite"),
            "{name}: no main.recordSite for pid {} alone:\n{top}",
            s.pid
        );
    }
    let comments = go_pprof(&file, &["-comments"]);
    for p in [a.pid, b.pid] {
        assert!(comments.contains(&format!("pid {p} ")), "{comments}");
    }
    println!("pid labels {pids:?}\n{comments}");
}

/// A failing command prints exactly one line, starting with
/// "goalloc: error:", and mentioning `needle`.
fn assert_one_line_error(args: &[&str], needle: &str) {
    let o = goalloc(args);
    let stderr = stderr_of(&o);
    assert!(!o.status.success(), "{args:?} should fail:\n{stderr}");
    assert!(o.stdout.is_empty(), "{args:?} wrote to stdout");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line:\n{stderr}");
    assert!(lines[0].starts_with("goalloc: error: "), "{}", lines[0]);
    assert!(
        lines[0].contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        lines[0]
    );
    println!("{args:?}: {}", lines[0]);
}

/// Bad input: one line each, a non-zero exit, no panic, no file.
#[test]
fn bad_input_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never.pb.gz");
    let out = out.to_str().unwrap();
    let sleeper = Terminate(Command::new("sleep").arg("30").spawn().unwrap());
    let sleeping = sleeper.0.id().to_string();
    let p = |extra: &[&'static str]| {
        let mut v = vec!["profile", "--pid", "1", "-o", out];
        v.extend_from_slice(extra);
        v
    };
    assert_one_line_error(
        &["profile", "--pid", "4000000000", "-o", out],
        "no such process: 4000000000",
    );
    assert_one_line_error(
        &["profile", "--pid", &sleeping, "-o", out],
        "not a Go executable",
    );
    assert_one_line_error(&p(&["--rate", "0"]), "rate");
    assert_one_line_error(&p(&["--rate", "fast"]), "fast");
    assert_one_line_error(&p(&["--rate=-4096"]), "rate");
    assert_one_line_error(&p(&["--duration", "0s"]), "--duration");
    assert_one_line_error(&p(&["--duration", "2h"]), "--duration");
    assert_one_line_error(&p(&["--duration", "soon"]), "soon");
    assert_one_line_error(&["profile", "--pid", "abc", "-o", out], "'abc'");
    // The line must say what is missing, not only "the following required
    // arguments were not provided:" (clap lists them on the next lines).
    assert_one_line_error(&["profile", "--duration", "2s", "-o", out], "--pid");
    assert!(!Path::new(out).exists(), "a failing command wrote {out}");
}

/// A process killed 1 s into a 60 s profile: goalloc ends then, exits 0 and
/// writes what was sampled, saying that the process exited.
#[test]
fn process_exit_mid_profile() {
    if !require_bpf() {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut sites = Sites::start(&variant("go1.27.3"));
    let pid = sites.pid.to_string();
    let file = tmp.path().join("exited.pb.gz");
    let mut child = Command::new(GOALLOC)
        .args(["profile", "--pid", &pid, "--duration", "60s"])
        .args(["--rate", "4096", "-o"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop::default();
    guard.arm(child.id());
    let (tx, rx) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut said = String::new();
    let sampling = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                said += &line;
                said.push('\n');
                if line.contains("sampling every") {
                    break Instant::now();
                }
            }
            Err(e) => panic!("goalloc profile did not start sampling ({e}):\n{said}"),
        }
    };
    std::thread::sleep(Duration::from_secs(1));
    sites.kill();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sampling.elapsed() < Duration::from_secs(15),
            "goalloc profile still running after its process exited:\n{said}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    guard.disarm();
    let took = sampling.elapsed();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        said += &line;
        said.push('\n');
    }
    assert!(status.success(), "{status}:\n{said}");
    assert!(file.is_file(), "no profile written:\n{said}");
    assert_sites_shown(&file);
    let comments = go_pprof(&file, &["-comments"]);
    assert!(
        comments.contains(&format!("pid {pid} ")) && comments.contains("exited"),
        "the comments do not say pid {pid} exited:\n{comments}"
    );
    assert!(
        // Not a speed check: the profile must end with its process, not
        // after its duration (detaching the probes takes seconds).
        took < Duration::from_secs(30),
        "goalloc ran on ({took:?}) although its process exited after 1 s"
    );
    println!("ended {took:?} after sampling started:\n{said}{comments}");
}
