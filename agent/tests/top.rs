//! `goalloc top` as a user meets it: in a real terminal (a detached tmux
//! session, read back with `capture-pane`), finding Go processes it was not
//! told about, sorting, filtering, the detail pane, resizing, and leaving
//! the terminal usable however it is quit; and as one table when its
//! stdout is a pipe.
//!
//! The demo service (allocating ~200k objects/s until killed) runs from a
//! copy in a temporary directory, so a filter on that directory's name
//! shows only the test's processes whatever else runs on the host.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{GOALLOC, Terminate, require_bpf, variant};

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
