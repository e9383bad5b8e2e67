//! Runs fuzz target bodies on files without libFuzzer (no sanitizer needed),
//! with timings: to check a crash input or a corpus on stable, or to time a
//! slow input.
//!
//! ```text
//! cargo run --release --example replay -- TARGET FILE_OR_DIR...
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use goalloc_fuzz::targets;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((target, paths)) = args.split_first() else {
        eprintln!(
            "usage: replay TARGET FILE_OR_DIR...   (targets: go_binary build_info pclntab elf prologue symbolize, or parse: GoBinary::parse only)"
        );
        std::process::exit(2);
    };
    let run: fn(&[u8]) = match target.as_str() {
        "go_binary" => targets::go_binary,
        "build_info" => targets::build_info,
        "pclntab" => targets::pclntab,
        "elf" => targets::elf,
        "prologue" => targets::prologue,
        "symbolize" => targets::symbolize,
        // Just `GoBinary::parse`, to time it.
        "parse" => |d: &[u8]| drop(goalloc_fuzz::binary::GoBinary::parse(d.to_vec())),
        t => {
            eprintln!("unknown target {t}");
            std::process::exit(2);
        }
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for p in paths {
        collect(Path::new(p), &mut files);
    }
    let mut failed = 0;
    let mut slowest: Vec<(Duration, PathBuf)> = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let start = Instant::now();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            eprintln!("PANIC: {}", f.display());
            failed += 1;
        }
        slowest.push((start.elapsed(), f.clone()));
    }
    slowest.sort();
    for (t, f) in slowest.iter().rev().take(3) {
        println!("{:>10.3?}  {}", t, f.display());
    }
    println!("{target}: {} inputs, {failed} panicked", files.len());
    if failed > 0 {
        std::process::exit(1);
    }
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .expect("read dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            collect(&e, out);
        }
    } else {
        out.push(p.to_path_buf());
    }
}
