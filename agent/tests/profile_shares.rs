//! `goalloc profile` against a known truth: the `sites` fixture
//! (tests/go/sites) allocates at four call sites in fixed shares of
//! requested bytes (a typed struct with pointers, an inlined function, an
//! untyped byte slice, a size-specialized small object on Go 1.27) and
//! prints them; the profile, read by the real `go tool pprof` of the
//! fixture's own toolchain, must show each site's function with its share
//! of `alloc_space`, and each type label with its share. Every Go version
//! and GOEXPERIMENT built, in the default, stripped and PIE flavours. Needs
//! BPF (run as root via `cargo xtask test`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{GOALLOC, Sites, Variant, require_bpf, variants};

/// The flavours checked; cgo and stripped-PIE add nothing the profile path
/// does not already meet in these.
const FLAVOURS: [&str; 3] = ["default", "stripped", "pie"];

/// Allowed distance from the truth, in percentage points.
const TOLERANCE: f64 = 3.0;

/// One allocation site as the fixture describes it.
#[derive(Debug, Clone)]
struct Site {
    func: String,
    type_label: String,
    /// Percent of the fixture's requested bytes.
    share: f64,
}

/// `variant.json` of a cell: its flavour and the `go` that built it.
fn cell_info(v: &Variant) -> (String, PathBuf) {
    let path = v.dir.join("variant.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("variant.json");
    let field = |k: &str| {
        json[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k} in {}", path.display()))
            .to_string()
    };
    (field("flavour"), PathBuf::from(field("go")))
}

/// Runs `cmd` to completion within `limit`; stdout, or an error with stderr.
fn run_for(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let start = Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return Err(format!(
                "{cmd:?}: still running after {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A percentage as pprof prints it ("40.00%", "100%", "0.0012%").
fn percent(word: &str) -> Option<f64> {
    word.trim().strip_suffix('%')?.trim().parse().ok()
}

/// `-top` rows: (function, flat %, shown as inlined).
fn parse_top(top: &str) -> Vec<(String, f64, bool)> {
    top.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 6 {
                return None;
            }
            let flat = percent(w[1])?;
            percent(w[2])?;
            percent(w[4])?;
            Some((w[5].to_string(), flat, w[6..].contains(&"(inline)")))
        })
        .collect()
}

/// The `type:` block of `-tags`: label -> percent of the tagged total.
fn parse_type_tags(tags: &str) -> Vec<(String, f64)> {
    tags.lines()
        .skip_while(|l| !l.trim_start().starts_with("type:"))
        .skip(1)
        .map_while(|l| {
            // "      12MB (40.00%): main.record"
            let (left, label) = l.split_once("): ")?;
            let (_, pct) = left.rsplit_once('(')?;
            Some((label.trim().to_string(), percent(pct)?))
        })
        .collect()
}

/// What one cell measured: table rows and failures.
struct Outcome {
    rows: Vec<String>,
    bad: Vec<String>,
}

fn check_cell(v: &Variant, go: &Path, out_dir: &Path) -> Outcome {
    let mut o = Outcome {
        rows: Vec::new(),
        bad: Vec::new(),
    };
    let program = v.program("sites");
    if !program.is_file() {
        o.bad.push(format!(
            "{}: no sites fixture (run `cargo xtask fixtures`)",
            v.label
        ));
        return o;
    }
    // Killed when dropped (also when a check panics).
    let fixture = Sites::start(v);
    let pid = fixture.pid;
    let sites: Vec<Site> = fixture
        .sites
        .iter()
        .map(|(func, typ, share)| Site {
            func: func.clone(),
            type_label: typ.clone(),
            share: 100.0 * share,
        })
        .collect();
    let out = out_dir.join(format!("{}.pb.gz", v.label));
    let profiled = run_for(
        Command::new(GOALLOC)
            .args(["profile", "--pid", &pid.to_string()])
            .args(["--duration", "3s", "--rate", "4096", "-o"])
            .arg(&out),
        Duration::from_secs(60),
    );
    drop(fixture);
    if let Err(e) = profiled {
        o.bad
            .push(format!("{}: goalloc profile failed: {e}", v.label));
        return o;
    }
    let pprof = |args: &[&str]| {
        run_for(
            testutil::go_command(go)
                .args(["tool", "pprof", "-sample_index=alloc_space"])
                .args(args)
                .arg(&out),
            Duration::from_secs(60),
        )
    };
    let (top, tags) = match (pprof(&["-top", "-nodecount=50"]), pprof(&["-tags"])) {
        (Ok(top), Ok(tags)) => (top, tags),
        (Err(e), _) | (_, Err(e)) => {
            o.bad
                .push(format!("{}: go tool pprof failed: {e}", v.label));
            return o;
        }
    };
    let rows = parse_top(&top);
    let types = parse_type_tags(&tags);
    let mut cell_bad = Vec::new();
    for s in &sites {
        let flat = rows.iter().find(|r| r.0 == s.func);
        let tagged = types.iter().find(|t| t.0 == s.type_label).map(|t| t.1);
        o.rows.push(format!(
            "{:<44} {:<18} {:<12} {:>6.2} {:>8} {:>8} {:>6}",
            v.label,
            s.func,
            s.type_label,
            s.share,
            flat.map_or("-".into(), |r| format!("{:.2}", r.1)),
            tagged.map_or("-".into(), |t| format!("{t:.2}")),
            flat.map_or("-", |r| if r.2 { "yes" } else { "no" }),
        ));
        match flat {
            None => cell_bad.push(format!(
                "{}: {} not among the -top functions",
                v.label, s.func
            )),
            Some(r) if (r.1 - s.share).abs() > TOLERANCE => cell_bad.push(format!(
                "{}: {} has {:.2}% of alloc_space, truth {:.2}%",
                v.label, s.func, r.1, s.share
            )),
            Some(_) => {}
        }
        match tagged {
            None => cell_bad.push(format!(
                "{}: no type label {} in -tags",
                v.label, s.type_label
            )),
            Some(t) if (t - s.share).abs() > TOLERANCE => cell_bad.push(format!(
                "{}: type {} has {t:.2}% of alloc_space, truth {:.2}%",
                v.label, s.type_label, s.share
            )),
            Some(_) => {}
        }
    }
    if !cell_bad.is_empty() {
        // The whole of what pprof said, to tell a wrong truth from a wrong
        // profile.
        cell_bad.push(format!("{} -top:\n{top}\n-tags:\n{tags}", v.label));
    }
    o.bad.extend(cell_bad);
    o
}

#[test]
fn profile_shares_match_the_fixture() {
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut table = vec![format!(
        "{:<44} {:<18} {:<12} {:>6} {:>8} {:>8} {:>6}",
        "cell", "site", "type", "truth%", "flat%", "type%", "inline"
    )];
    let mut bad = Vec::new();
    let mut cells = 0;
    for v in variants() {
        let (flavour, go) = cell_info(&v);
        if !FLAVOURS.contains(&flavour.as_str()) {
            continue;
        }
        cells += 1;
        let o = check_cell(&v, &go, dir.path());
        table.extend(o.rows);
        bad.extend(o.bad);
    }
    let table = table.join("\n");
    println!("{table}");
    assert!(cells > 0, "no default, stripped or pie cell built");
    assert!(bad.is_empty(), "{table}\n\n{}", bad.join("\n"));
}
