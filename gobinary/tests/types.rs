//! Type names from the executable against what the program itself prints:
//! `tests/go/typedump` (built with every toolchain, plain, stripped, PIE and
//! stripped PIE) prints the runtime address of the type descriptor of many
//! kinds of values and `%T` of each; naming those addresses (minus the load
//! bias) from the file must give `%T`, and a type built by reflect at run
//! time must be reported as such.

mod common;

use common::{Built, build_all, hex, run};
use gobinary::GoBinary;
use gobinary::types::{TypeName, TypeNames};

fn check(b: &Built) -> Result<usize, String> {
    let out = run(&mut std::process::Command::new(&b.path));
    let bin = GoBinary::open(&b.path).map_err(|e| e.to_string())?;
    let names = TypeNames::new(&bin).map_err(|e| e.to_string())?;
    let main = bin.lookup("main.main").ok_or("no main.main")?;
    let mut bias = None;
    let mut checked = 0;
    for line in out.lines() {
        let mut parts = line.splitn(3, ' ');
        let (kind, addr) = (parts.next().unwrap_or(""), hex(parts.next().unwrap_or("")));
        let want = parts.next().unwrap_or("").to_string();
        if kind == "anchor" {
            bias = Some(addr.wrapping_sub(main.entry));
            continue;
        }
        let bias = bias.ok_or("no anchor line")?;
        let got = names
            .name(addr.wrapping_sub(bias))
            .map_err(|e| format!("{line}: {e}"))?;
        let expected = match kind {
            "type" => TypeName::Named(want),
            "reflect" => TypeName::ReflectMade,
            _ => return Err(format!("unexpected line {line:?}")),
        };
        if got != expected {
            return Err(format!("{line}: ours {got:?}"));
        }
        checked += 1;
    }
    Ok(checked)
}

#[test]
fn type_names_equal_percent_t() {
    let dir = tempfile::tempdir().expect("temp dir");
    let built = build_all("typedump", dir.path());
    let mut failures = Vec::new();
    for b in &built {
        match check(b) {
            Ok(n) if n >= 19 => eprintln!("{} {:?}: {n} types equal", b.goversion, b.flavour),
            Ok(n) => failures.push(format!("{} {:?}: only {n} types", b.goversion, b.flavour)),
            Err(e) => failures.push(format!("{} {:?}: {e}", b.goversion, b.flavour)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every fixture cell (cgo and experiments included) has a type range, and
/// addresses just outside it are reported as reflect-made.
#[test]
fn every_fixture_has_types() {
    for path in common::fixture_programs("fixture") {
        let bin = GoBinary::open(&path).expect("fixture");
        let names = TypeNames::new(&bin).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (types, etypes) = names.range();
        assert!(types < etypes, "{}", path.display());
        assert_eq!(names.name(types.wrapping_sub(8)), Ok(TypeName::ReflectMade));
        assert_eq!(names.name(etypes), Ok(TypeName::ReflectMade));
        assert_eq!(names.name(0), Ok(TypeName::ReflectMade));
    }
}
