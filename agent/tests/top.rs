//! `goalloc top` as a user meets it: in a real terminal (a detached tmux
//! session, read back with `capture-pane`), finding Go processes it was not
//! told about, sorting, filtering, the detail pane, resizing, the
//! allocation profile of `p` (its probes on only while it runs), and
//! leaving the terminal usable however it is quit; and as one table when
//! its stdout is a pipe.
//!
//! The demo service (allocating ~200k objects/s until killed) and the
//! `sites` fixture (allocating at four call sites in known shares) run from
//! copies in a temporary directory, so a filter on that directory's name
//! shows only the test's processes whatever else runs on the host.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{GOALLOC, Terminate, require_bpf, uprobes_held, variant};

/// Generous for loading the BPF programs on a busy CI machine.
const STARTUP: Duration = Duration::from_secs(60);
/// A process started while top runs shows within an interval (1 s) plus a
/// draw; a few seconds allow for a loaded machine.
const APPEARS_WITHIN: Duration = Duration::from_secs(5);

/// A tmux server of our own (its socket in a temporary directory, removed
/// with it) with one session, `top`, running an interactive `sh`; killed
/// when dropped.
struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn start(width: u16, height: u16) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let t = Tmux {
            socket: dir.path().join("tmux"),
            _dir: dir,
        };
        let out = t
            .cmd()
            .args(["new-session", "-d", "-s", "top", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg("sh")
            .output()
            .expect("run tmux (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        // -u: the screen is UTF-8 (sort marks, trends, sparklines) whatever
        // the locale of the test.
        c.arg("-u")
            .arg("-S")
            .arg(&self.socket)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        c
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keys by tmux name (`Enter`, `Escape`, `C-c`, `q`).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Text typed as is.
    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "top", "-l", text]);
    }

    /// Types a shell command line and Enter.
    fn run(&self, line: &str) {
        self.type_text(line);
        self.keys(&["Enter"]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "top"])
    }

    /// Polls the screen until `ok` holds; fails with the last screen.
    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            if start.elapsed() > timeout {
                panic!("waited {timeout:?} for {what}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `goalloc top` in the shell and waits for its first screen.
    fn start_top(&self) -> String {
        self.run(&format!("{GOALLOC} top; echo TOP-EXITED"));
        self.wait_for("the top table", STARTUP, |s| {
            s.contains("goalloc top ·") && s.contains("GOROUTINES")
        })
    }

    /// After top exited: the main screen is back (the table is gone with
    /// the alternate screen) and the shell reads lines again (raw mode off).
    fn assert_usable(&self) {
        let screen = self.wait_for("top to exit", Duration::from_secs(30), |s| {
            s.contains("TOP-EXITED")
        });
        assert!(
            !screen.contains("GOROUTINES"),
            "the table is still on the screen after exit:\n{screen}"
        );
        self.run("echo USABLE-$((20+22))");
        self.wait_for("the shell to answer", Duration::from_secs(10), |s| {
            s.contains("USABLE-42")
        });
    }

    /// The pid of the program running in the shell of the pane.
    fn foreground_child(&self) -> u32 {
        let shell = self.tmux(&["display-message", "-p", "-t", "top", "#{pane_pid}"]);
        let shell = shell.trim();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("nothing runs in the shell {shell}"))
            .parse()
            .unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Closing the pane hangs up top, which quits on SIGHUP.
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// The demo service copied into `dir` as `topdemo`.
fn demo_in(dir: &Path) -> PathBuf {
    let program = dir.join("topdemo");
    std::fs::copy(variant("go1.27.3").program("demo"), &program).unwrap();
    program
}

fn start_demo(program: &Path) -> Terminate {
    Terminate(
        Command::new(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display())),
    )
}

/// The `sites` fixture copied into `dir` as `topsites` and started; with its
/// largest site (function, type label, percent of the bytes), from the
/// description it prints before allocating.
fn start_sites(dir: &Path) -> (Terminate, String, String, f64) {
    let program = dir.join("topsites");
    std::fs::copy(variant("go1.27.3").program("sites"), &program)
        .expect("the sites fixture (cargo xtask fixtures builds it)");
    let mut child = Command::new(&program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let stdout = child.stdout.take().unwrap();
    let child = Terminate(child);
    let mut largest: Option<(String, String, f64)> = None;
    // It prints nothing after `loop`: the pipe can close then.
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("fixture stdout");
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["site", func, ty, share] => {
                let share = 100.0 * share.parse::<f64>().expect("share");
                if largest.as_ref().is_none_or(|(_, _, s)| share > *s) {
                    largest = Some((func.to_string(), ty.to_string(), share));
                }
            }
            ["loop"] => break,
            _ => {}
        }
    }
    let (func, ty, share) = largest.expect("no site lines from the fixture");
    (child, func, ty, share)
}

/// The share (`40.1%`) of the ranking row named `name` (a whole word): the
/// last percentage before the name on its line (two rankings may share a
/// line, side by side).
fn share_of(screen: &str, name: &str) -> Option<f64> {
    screen.lines().find_map(|l| {
        let mut share = None;
        for word in l.split_whitespace() {
            if word == name {
                return share;
            }
            if let Some(p) = word.strip_suffix('%') {
                share = p.parse::<f64>().ok();
            }
        }
        None
    })
}

/// Polls the number of uprobe links `top` (running in `tmux`) holds until
/// `want` holds (attaching and detaching take a moment). Top probes nothing
/// but the process it profiles, so any link is the profile's. (The kernel
/// names a link by the path it was attached through, /proc/self/fd/N.)
fn wait_uprobes(tmux: &Tmux, top: u32, want: impl Fn(usize) -> bool, what: &str) {
    let start = Instant::now();
    loop {
        let held = uprobes_held(top);
        if want(held.len()) {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!(
                "waited for {what}: top holds {held:?}; the screen:\n{}",
                tmux.screen()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The table row of `pid` (its first field), split into fields.
fn row(screen: &str, pid: u32) -> Option<Vec<&str>> {
    let pid = pid.to_string();
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&pid.as_str()))
}

/// Line number of the row of `pid`.
fn line_of(screen: &str, pid: u32) -> usize {
    let pid = pid.to_string();
    screen
        .lines()
        .position(|l| l.split_whitespace().next() == Some(pid.as_str()))
        .unwrap_or_else(|| panic!("no row for pid {pid}:\n{screen}"))
}

/// An allocation rate in thousands or more per second (`203.4k`, `1.2M`).
fn busy(allocs: &str) -> bool {
    allocs.ends_with('k') || allocs.ends_with('M')
}

#[test]
fn live_view_finds_sorts_filters_details_resizes_and_quits() {
    if !require_bpf() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = demo_in(tmp.path());
    let first = start_demo(&program);
    let tmux = Tmux::start(200, 50);
    tmux.start_top();

    // Only the test's processes: the filter matches the executable path.
    let dir = tmp
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    tmux.keys(&["/"]);
    tmux.type_text(&dir);
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the running demo, filtered", STARTUP, |s| {
        s.contains(&format!("match /{dir}")) && row(s, first.0.id()).is_some()
    });
    assert!(
        screen.contains("1 match"),
        "the filter lets only the demo through:\n{screen}"
    );

    // A process started now was never named to top: it appears by itself.
    let started = Instant::now();
    let second = start_demo(&program);
    tmux.wait_for("the demo started after top", APPEARS_WITHIN, |s| {
        row(s, second.0.id()).is_some()
    });
    eprintln!("a new process showed after {:?}", started.elapsed());

    // Its figures come from its own runtime counters: ~200k allocations/s.
    let screen = tmux.wait_for("allocation rates", Duration::from_secs(10), |s| {
        [first.0.id(), second.0.id()]
            .iter()
            .all(|pid| row(s, *pid).is_some_and(|f| f.len() > 4 && busy(f[4])))
    });
    let fields = row(&screen, first.0.id()).unwrap();
    assert_eq!(fields[1], "topdemo", "{screen}");
    assert_eq!(fields[3], "go1.27.3", "{screen}");

    // Sort by pid (key 1), then reverse (r): the header marks the column
    // and the rows follow.
    let (low, high) = {
        let (a, b) = (first.0.id(), second.0.id());
        (a.min(b), a.max(b))
    };
    tmux.keys(&["1"]);
    let screen = tmux.wait_for("sorted by pid", Duration::from_secs(5), |s| {
        s.contains("PID▲")
    });
    assert!(
        line_of(&screen, low) < line_of(&screen, high),
        "not by pid:\n{screen}"
    );
    assert!(!screen.contains("ALLOCS/s▼"), "{screen}");
    tmux.keys(&["r"]);
    let screen = tmux.wait_for("reversed", Duration::from_secs(5), |s| s.contains("PID▼"));
    assert!(
        line_of(&screen, high) < line_of(&screen, low),
        "not reversed:\n{screen}"
    );
    tmux.keys(&["0"]);
    tmux.wait_for("sorted by goroutines", Duration::from_secs(5), |s| {
        s.contains("GOROUTINES▼")
    });

    // Enter: the detail pane of the selected (top) row.
    tmux.keys(&["1", "Home", "Enter"]);
    let exe = program.to_string_lossy().into_owned();
    let screen = tmux.wait_for("the detail pane", Duration::from_secs(5), |s| {
        s.contains(&format!("pid {low} · topdemo")) && s.contains("allocation sizes")
    });
    assert!(
        screen.contains("executable") && screen.contains(&exe),
        "{screen}"
    );
    assert!(screen.contains("live heap, last"), "{screen}");
    assert!(screen.contains("goroutines, last"), "{screen}");
    assert!(screen.contains("none (host process)"), "{screen}");
    // Esc closes the pane; the filter stays.
    tmux.keys(&["Escape"]);
    let screen = tmux.wait_for("the pane closed", Duration::from_secs(5), |s| {
        !s.contains("allocation sizes")
    });
    assert!(screen.contains(&format!("match /{dir}")), "{screen}");

    // The view follows the terminal's size.
    tmux.tmux(&["resize-window", "-t", "top", "-x", "100", "-y", "20"]);
    let screen = tmux.wait_for("the view redrawn at 100x20", Duration::from_secs(5), |s| {
        s.lines().count() <= 20 && s.contains("GOROUTINES") && row(s, low).is_some()
    });
    assert!(screen.lines().all(|l| l.chars().count() <= 100), "{screen}");

    // A process that exits leaves the table.
    let gone = second.0.id();
    drop(second);
    tmux.wait_for("the exited demo to go", APPEARS_WITHIN, |s| {
        row(s, gone).is_none() && row(s, first.0.id()).is_some()
    });

    tmux.keys(&["q"]);
    tmux.assert_usable();
}

#[test]
fn ctrl_c_and_signals_restore_the_terminal() {
    if !require_bpf() {
        return;
    }
    let tmux = Tmux::start(160, 40);
    tmux.start_top();
    // Raw mode: Ctrl-C arrives as a key, not as SIGINT.
    tmux.keys(&["C-c"]);
    tmux.assert_usable();

    tmux.run("clear");
    tmux.start_top();
    let top = tmux.foreground_child();
    // SAFETY: kill has no memory preconditions; top is our grandchild.
    assert_eq!(unsafe { libc::kill(top as i32, libc::SIGTERM) }, 0);
    tmux.assert_usable();
}

/// Closing the terminal under `top` (the window, the tmux server) ends it:
/// no process left spinning on a dead terminal.
#[test]
fn a_closed_terminal_ends_top() {
    if !require_bpf() {
        return;
    }
    let tmux = Tmux::start(120, 30);
    tmux.start_top();
    let top = tmux.foreground_child();
    drop(tmux);
    let start = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{top}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{top}/stat")).unwrap_or_default();
        if state.contains(") Z ") {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(top as i32, libc::SIGKILL) };
            panic!("goalloc top (pid {top}) still runs 10 s after its terminal closed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn prints_one_table_when_stdout_is_not_a_terminal() {
    if !require_bpf() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let demo = start_demo(&demo_in(tmp.path()));
    let out = Command::new(GOALLOC)
        .arg("top")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "goalloc top: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No terminal control sequences: plain text for a pipe or a file.
    assert!(!stdout.contains('\x1b'), "{stdout:?}");
    let header: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("GOROUTINES"))
        .collect();
    assert_eq!(header.len(), 1, "one table:\n{stdout}");
    assert!(stdout.starts_with("    PID COMM"), "{stdout}");
    let fields = row(&stdout, demo.0.id()).unwrap_or_else(|| panic!("no demo row:\n{stdout}"));
    assert_eq!(fields[1], "topdemo", "{stdout}");
    // Two reads a second apart give it a rate.
    assert!(busy(fields[4]), "no allocation rate:\n{stdout}");
}

/// `p` profiles the selected process for 5 s with the probes on it alone,
/// shows its top call sites and types, and takes the probes off again:
/// when it ends, is cancelled, when the process exits, and when top quits
/// in the middle.
#[test]
fn p_profiles_the_selected_process_and_leaves_no_probe() {
    if !require_bpf() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sites, func, ty, share) = start_sites(tmp.path());
    let pid = sites.0.id();
    let tmux = Tmux::start(200, 50);
    tmux.start_top();
    let top = tmux.foreground_child();
    let dir = tmp
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let filter = |text: &str| {
        // Backspaces clear the filter before the new one (an Esc followed
        // at once by `/` would read as Alt-/).
        let mut keys = vec!["/"];
        keys.extend(["BSpace"; 100]);
        tmux.keys(&keys);
        tmux.type_text(text);
        tmux.keys(&["Enter"]);
    };
    filter(&dir);
    tmux.wait_for("the sites fixture, filtered", STARTUP, |s| {
        s.contains(&format!("match /{dir}")) && row(s, pid).is_some()
    });
    assert!(uprobes_held(top).is_empty(), "probes before any profile");

    // A whole profile: the status line counts down while the view keeps
    // reading everyone's counters, then the pane opens.
    tmux.keys(&["p"]);
    let running = format!("profiling pid {pid} (topsites)…");
    tmux.wait_for("the profile to start", Duration::from_secs(5), |s| {
        s.contains(&running) && s.contains("5s left")
    });
    wait_uprobes(&tmux, top, |n| n > 0, "the probes on the fixture");
    tmux.wait_for("the countdown", Duration::from_secs(5), |s| {
        s.contains(&running) && (s.contains("3s left") || s.contains("2s left"))
    });
    let title = format!("allocation profile of pid {pid} over 5 s, 1 sample per 64 KiB");
    let screen = tmux.wait_for("the profile pane", Duration::from_secs(30), |s| {
        s.contains(&title)
    });
    eprintln!("the profile pane:\n{screen}");
    assert!(!screen.contains(&running), "{screen}");
    assert!(
        screen.contains("CALL SITE") && screen.contains("TYPE"),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("pid {pid} (topsites): ")),
        "the executable is noted:\n{screen}"
    );
    // The fixture's largest site and type, near their share of the bytes.
    for name in [&func, &ty] {
        let got = share_of(&screen, name).unwrap_or_else(|| panic!("no {name}:\n{screen}"));
        assert!(
            (got - share).abs() < 10.0,
            "{name}: {got}% against {share:.1}% allocated:\n{screen}"
        );
    }
    // The probes are off as soon as the profile ends.
    wait_uprobes(&tmux, top, |n| n == 0, "the probes to come off");
    tmux.keys(&["Escape"]);
    tmux.wait_for("the pane closed", Duration::from_secs(5), |s| {
        !s.contains(&title) && row(s, pid).is_some()
    });
    assert!(uprobes_held(top).is_empty(), "{:?}", uprobes_held(top));

    // A second `p` cancels: the probes come off at once.
    tmux.keys(&["p"]);
    tmux.wait_for("the profile to start", Duration::from_secs(5), |s| {
        s.contains(&running)
    });
    wait_uprobes(&tmux, top, |n| n > 0, "the probes on the fixture");
    tmux.keys(&["p"]);
    tmux.wait_for("the cancel", Duration::from_secs(5), |s| {
        s.contains(&format!("profile of pid {pid} cancelled"))
    });
    wait_uprobes(&tmux, top, |n| n == 0, "the probes to come off");

    // The process exits meanwhile: what was sampled, with a note.
    let demo_exe = demo_in(tmp.path());
    let demo = start_demo(&demo_exe);
    let demo_pid = demo.0.id();
    filter(&format!("{dir}/topdemo"));
    tmux.wait_for("the demo alone", APPEARS_WITHIN, |s| {
        row(s, demo_pid).is_some() && row(s, pid).is_none()
    });
    tmux.keys(&["p"]);
    tmux.wait_for("the profile to start", Duration::from_secs(5), |s| {
        s.contains(&format!("profiling pid {demo_pid} (topdemo)…"))
    });
    wait_uprobes(&tmux, top, |n| n > 0, "the probes on the demo");
    std::thread::sleep(Duration::from_secs(1));
    drop(demo);
    let screen = tmux.wait_for(
        "the pane of the exited demo",
        Duration::from_secs(10),
        |s| {
            s.contains(&format!("allocation profile of pid {demo_pid} over"))
                && s.contains("(exited)")
        },
    );
    eprintln!("the pane of a process that exited meanwhile:\n{screen}");
    assert!(screen.contains("exited after"), "{screen}");
    assert!(
        screen.contains("main."),
        "samples until the exit:\n{screen}"
    );
    // Off the detach threads a moment after the exit.
    wait_uprobes(
        &tmux,
        top,
        |n| n == 0,
        "the probes of the exited demo to go",
    );
    tmux.keys(&["Enter"]);

    // Quitting in the middle of a profile ends it; top leaves cleanly.
    filter(&dir);
    tmux.wait_for("the fixture again", APPEARS_WITHIN, |s| {
        row(s, pid).is_some() && !s.contains("allocation profile")
    });
    tmux.keys(&["p"]);
    wait_uprobes(&tmux, top, |n| n > 0, "the probes on the fixture");
    tmux.keys(&["q"]);
    tmux.assert_usable();
    drop(sites);
}
