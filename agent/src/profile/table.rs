//! The top allocating call sites and types of a profile, as plain-text
//! tables for a terminal (`goalloc profile --top`, a pane of `goalloc top`).
//!
//! A pure function of a built [`Profile`], so that the tables show exactly
//! what the written profile holds (and read Go's own heap profiles too):
//! - a call site is the first line of a sample's first location, i.e. the
//!   innermost frame (inlined ones included) once the allocator's frames are
//!   trimmed as the writer does; named `function (file.go:line)`;
//! - a type is the sample's `type` label;
//! - values are the profile's own, already unscaled (`alloc_space` bytes,
//!   `alloc_objects` count), ranked by bytes.

use std::collections::HashMap;
use std::io::Write;

use super::pprof::{SIZE_LABEL, TYPE_LABEL, scale_heap_sample};
use super::proto::{Profile, Sample};
use crate::report::human_bytes;
use crate::top::model::human_count;

/// The name of samples without any location.
pub const NO_STACK: &str = "(no stack)";
/// The name of samples without a `type` label (e.g. Go's own profiles).
pub const NO_TYPE: &str = "(no type label)";

/// One row of a ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub name: String,
    /// Estimated bytes allocated (`alloc_space`).
    pub bytes: i64,
    /// Estimated objects allocated (`alloc_objects`).
    pub objects: i64,
    /// Of the profile's total bytes, 0..=1.
    pub share: f64,
}

/// The rankings of one profile.
#[derive(Debug, Clone, PartialEq)]
pub struct TopTables {
    /// By allocating call site, most bytes first.
    pub sites: Vec<Ranked>,
    /// By Go type, most bytes first.
    pub types: Vec<Ranked>,
    pub total_bytes: i64,
    pub total_objects: i64,
    /// Allocations the probe sampled (before unscaling): recovered from each
    /// sample's objects, its `bytes` label and the period, since a profile
    /// stores only the estimates.
    pub samples: usize,
}

/// Ranks `profile`'s samples by call site and by type, keeping the top
/// `limit` of each (totals count every sample).
pub fn top_tables(profile: &Profile, limit: usize) -> TopTables {
    let view = View::new(profile);
    let objects_at = view.value_index("alloc_objects", 0);
    let bytes_at = view.value_index("alloc_space", 1);
    let mut sites: HashMap<String, (i64, i64)> = HashMap::new();
    let mut types: HashMap<String, (i64, i64)> = HashMap::new();
    let (mut total_bytes, mut total_objects, mut samples) = (0i64, 0i64, 0usize);
    for s in &profile.samples {
        let objects = s.values.get(objects_at).copied().unwrap_or(0);
        let bytes = s.values.get(bytes_at).copied().unwrap_or(0);
        total_bytes = total_bytes.saturating_add(bytes);
        total_objects = total_objects.saturating_add(objects);
        samples = samples.saturating_add(view.sampled(s, objects));
        for (table, name) in [(&mut sites, view.site(s)), (&mut types, view.type_of(s))] {
            let e = table.entry(name).or_default();
            e.0 = e.0.saturating_add(bytes);
            e.1 = e.1.saturating_add(objects);
        }
    }
    TopTables {
        sites: rank(sites, total_bytes, limit),
        types: rank(types, total_bytes, limit),
        total_bytes,
        total_objects,
        samples,
    }
}

fn rank(by_name: HashMap<String, (i64, i64)>, total: i64, limit: usize) -> Vec<Ranked> {
    let mut rows: Vec<Ranked> = by_name
        .into_iter()
        .map(|(name, (bytes, objects))| Ranked {
            name,
            bytes,
            objects,
            share: if total > 0 {
                bytes as f64 / total as f64
            } else {
                0.0
            },
        })
        .collect();
    // Name last: equal rows keep one order from run to run.
    rows.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.objects.cmp(&a.objects))
            .then_with(|| a.name.cmp(&b.name))
    });
    rows.truncate(limit);
    rows
}

/// Read access to a profile's tables by id.
struct View<'p> {
    p: &'p Profile,
    locations: HashMap<u64, &'p super::proto::Location>,
    functions: HashMap<u64, &'p super::proto::Function>,
    mappings: HashMap<u64, &'p super::proto::Mapping>,
}

impl<'p> View<'p> {
    fn new(p: &'p Profile) -> Self {
        View {
            p,
            locations: p.locations.iter().map(|l| (l.id, l)).collect(),
            functions: p.functions.iter().map(|f| (f.id, f)).collect(),
            mappings: p.mappings.iter().map(|m| (m.id, m)).collect(),
        }
    }

    fn string(&self, i: i64) -> &'p str {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.p.string_table.get(i))
            .map_or("", String::as_str)
    }

    /// The index of the sample value of `kind`, else `fallback`.
    fn value_index(&self, kind: &str, fallback: usize) -> usize {
        self.p
            .sample_types
            .iter()
            .position(|t| self.string(t.kind) == kind)
            .unwrap_or(fallback)
    }

    fn site(&self, s: &Sample) -> String {
        let Some(loc) = s.location_ids.first().and_then(|id| self.locations.get(id)) else {
            return NO_STACK.to_string();
        };
        if let Some(f) = loc
            .lines
            .first()
            .and_then(|l| self.functions.get(&l.function_id).map(|f| (f, l.line)))
        {
            let (func, line) = f;
            let file = self.string(func.filename);
            let base = file.rsplit('/').next().unwrap_or(file);
            let base = if base.is_empty() { "?" } else { base };
            return format!("{} ({base}:{line})", self.string(func.name));
        }
        // Not symbolized: the address, and the file it is in if known.
        let file = self
            .mappings
            .get(&loc.mapping_id)
            .map(|m| self.string(m.filename))
            .unwrap_or("");
        match file.rsplit('/').next() {
            Some(base) if !base.is_empty() => format!("{:#x} ({base})", loc.address),
            _ => format!("{:#x}", loc.address),
        }
    }

    fn type_of(&self, s: &Sample) -> String {
        s.labels
            .iter()
            .find(|l| self.string(l.key) == TYPE_LABEL && l.str != 0)
            .map_or_else(|| NO_TYPE.to_string(), |l| self.string(l.str).to_string())
    }

    /// The sampled allocations behind `objects`: the count whose unscaling
    /// (Go's, as the writer did it) gives `objects`. Without a size label or
    /// sampling rate, objects are counts.
    fn sampled(&self, s: &Sample, objects: i64) -> usize {
        let size = s
            .labels
            .iter()
            .find(|l| self.string(l.key) == SIZE_LABEL && l.str == 0)
            .map(|l| l.num);
        let rate = self.p.period;
        let count = match size {
            Some(size) if size > 0 && rate > 1 && objects > 0 => {
                let scale = 1.0 / (1.0 - (-(size as f64) / rate as f64).exp());
                let guess = (objects as f64 / scale).round() as i64;
                // The float guess may be one off; the exact count is the one
                // that scales back to `objects`.
                [guess, guess + 1, guess - 1]
                    .into_iter()
                    .find(|&c| {
                        c > 0 && scale_heap_sample(c as u64, size as u64, rate as u64).0 == objects
                    })
                    .unwrap_or(guess)
            }
            _ => objects,
        };
        usize::try_from(count).unwrap_or(0)
    }
}

/// Prints the totals and the two rankings as aligned plain text.
pub fn render(t: &TopTables, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "sampled {} allocations; estimated {} in {} objects",
        t.samples,
        human_bytes(t.total_bytes as f64),
        human_count(t.total_objects as f64),
    )?;
    writeln!(out)?;
    render_ranking(&t.sites, "CALL SITE", out)?;
    writeln!(out)?;
    render_ranking(&t.types, "TYPE", out)
}

fn render_ranking(rows: &[Ranked], what: &str, out: &mut impl Write) -> std::io::Result<()> {
    let cells: Vec<[String; 3]> = rows
        .iter()
        .map(|r| {
            [
                human_bytes(r.bytes as f64),
                format!("{:.1}%", r.share * 100.0),
                human_count(r.objects as f64),
            ]
        })
        .collect();
    let headers = ["BYTES", "SHARE", "OBJECTS"];
    let widths: Vec<usize> = (0..3)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    writeln!(
        out,
        "{:>w0$}  {:>w1$}  {:>w2$}  {what}",
        headers[0],
        headers[1],
        headers[2],
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2],
    )?;
    for (c, r) in cells.iter().zip(rows) {
        writeln!(
            out,
            "{:>w0$}  {:>w1$}  {:>w2$}  {}",
            c[0],
            c[1],
            c[2],
            r.name,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::proto::{Function, Label, Line, Location, Mapping, ValueType};
    use super::*;

    /// Strings of a hand-built profile.
    #[derive(Default)]
    struct Table(Vec<String>);

    impl Table {
        fn id(&mut self, s: &str) -> i64 {
            if let Some(i) = self.0.iter().position(|x| x == s) {
                return i as i64;
            }
            self.0.push(s.to_string());
            self.0.len() as i64 - 1
        }
    }

    /// main.fill inlined into main.load (one location), main.other, an
    /// unsymbolized pc in a library and a sample without a stack.
    fn profile(rate: i64) -> Profile {
        let mut st = Table::default();
        st.id("");
        let f = |st: &mut Table, id, name: &str| Function {
            id,
            name: st.id(name),
            system_name: st.id(name),
            filename: st.id("/src/app/main.go"),
            start_line: 1,
        };
        let functions = vec![
            f(&mut st, 1, "main.fill"),
            f(&mut st, 2, "main.load"),
            f(&mut st, 3, "main.other"),
        ];
        let mappings = vec![Mapping {
            id: 1,
            memory_start: 0x7f00,
            memory_limit: 0x8000,
            file_offset: 0,
            filename: st.id("/usr/lib/libx.so"),
            build_id: 0,
            has_functions: false,
            has_filenames: false,
            has_line_numbers: false,
            has_inline_frames: false,
        }];
        let line = |function_id, line| Line { function_id, line };
        let locations = vec![
            Location {
                id: 1,
                mapping_id: 0,
                address: 0x1000,
                lines: vec![line(1, 42), line(2, 7)],
            },
            Location {
                id: 2,
                mapping_id: 0,
                address: 0x2000,
                lines: vec![line(3, 9)],
            },
            Location {
                id: 3,
                mapping_id: 1,
                address: 0x7f10,
                lines: vec![],
            },
        ];
        let mut sample = |locs: Vec<u64>, ty: Option<&str>, count: u64, size: u64| {
            let (objects, bytes) = scale_heap_sample(count, size, rate as u64);
            let mut labels = vec![Label {
                key: st.id(SIZE_LABEL),
                str: 0,
                num: size as i64,
                num_unit: 0,
            }];
            if let Some(ty) = ty {
                labels.push(Label {
                    key: st.id(TYPE_LABEL),
                    str: st.id(ty),
                    num: 0,
                    num_unit: 0,
                });
            }
            Sample {
                location_ids: locs,
                values: vec![objects, bytes],
                labels,
            }
        };
        let samples = vec![
            sample(vec![1, 2], Some("main.T"), 30, 64),
            sample(vec![1], Some("untyped"), 5, 4096),
            sample(vec![2], Some("main.T"), 7, 64),
            sample(vec![3, 2], None, 1, 32),
            sample(vec![], Some("untyped"), 2, 16),
        ];
        let sample_types = vec![
            ValueType {
                kind: st.id("alloc_objects"),
                unit: st.id("count"),
            },
            ValueType {
                kind: st.id("alloc_space"),
                unit: st.id("bytes"),
            },
        ];
        Profile {
            sample_types,
            samples,
            mappings,
            locations,
            functions,
            string_table: st.0,
            period: rate,
            ..Profile::default()
        }
    }

    #[test]
    fn ranks_sites_and_types_by_bytes() {
        let t = top_tables(&profile(1), 10);
        assert_eq!(t.samples, 45);
        assert_eq!(t.total_objects, 45);
        let total = 30 * 64 + 5 * 4096 + 7 * 64 + 32 + 2 * 16;
        assert_eq!(t.total_bytes, total);
        let rows = |r: &[Ranked]| -> Vec<(String, i64, i64)> {
            r.iter()
                .map(|r| (r.name.clone(), r.bytes, r.objects))
                .collect()
        };
        // The innermost (inlined) line names the site, not its caller.
        assert_eq!(
            rows(&t.sites),
            [
                ("main.fill (main.go:42)".to_string(), 30 * 64 + 5 * 4096, 35),
                ("main.other (main.go:9)".to_string(), 7 * 64, 7),
                // Equal bytes: more objects first.
                (NO_STACK.to_string(), 32, 2),
                ("0x7f10 (libx.so)".to_string(), 32, 1),
            ]
        );
        assert_eq!(
            rows(&t.types),
            [
                ("untyped".to_string(), 5 * 4096 + 2 * 16, 7),
                ("main.T".to_string(), 37 * 64, 37),
                (NO_TYPE.to_string(), 32, 1),
            ]
        );
        let shares: f64 = t.sites.iter().map(|r| r.share).sum();
        assert!((shares - 1.0).abs() < 1e-9, "{shares}");
        assert!((t.types[0].share - (5.0 * 4096.0 + 32.0) / total as f64).abs() < 1e-12);

        let top1 = top_tables(&profile(1), 1);
        assert_eq!(top1.sites.len(), 1);
        assert_eq!(top1.types.len(), 1);
        assert_eq!(top1.total_bytes, total, "totals count every sample");
    }

    #[test]
    fn sampled_count_survives_unscaling() {
        // At 512 KiB, 30 x 64 B become ~245k estimated objects: the header
        // still says how many were sampled.
        let t = top_tables(&profile(512 * 1024), 10);
        assert_eq!(t.samples, 45);
        assert!(t.total_objects > 100_000, "{}", t.total_objects);
    }

    #[test]
    fn empty_profile() {
        let t = top_tables(&Profile::default(), 10);
        assert_eq!((t.samples, t.total_bytes, t.total_objects), (0, 0, 0));
        assert!(t.sites.is_empty() && t.types.is_empty());
        let mut out = Vec::new();
        render(&t, &mut out).expect("render");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("sampled 0 allocations; estimated 0 B in 0 objects\n"));
    }

    #[test]
    fn renders_aligned_tables() {
        let t = TopTables {
            sites: vec![
                Ranked {
                    name: "main.fillCache (main.go:42)".into(),
                    bytes: 12_897_485,
                    objects: 1_234,
                    share: 0.9,
                },
                Ranked {
                    name: "main.small (util.go:7)".into(),
                    bytes: 100,
                    objects: 3,
                    share: 0.1,
                },
            ],
            types: vec![Ranked {
                name: "[]main.entry".into(),
                bytes: 12_897_585,
                objects: 1_237,
                share: 1.0,
            }],
            total_bytes: 12_897_585,
            total_objects: 1_237,
            samples: 40,
        };
        let mut out = Vec::new();
        render(&t, &mut out).expect("render");
        let text = String::from_utf8(out).expect("utf-8");
        let want = "\
sampled 40 allocations; estimated 12.3 MiB in 1.2k objects

   BYTES  SHARE  OBJECTS  CALL SITE
12.3 MiB  90.0%     1.2k  main.fillCache (main.go:42)
   100 B  10.0%        3  main.small (util.go:7)

   BYTES   SHARE  OBJECTS  TYPE
12.3 MiB  100.0%     1.2k  []main.entry
";
        assert_eq!(text, want, "\n{text}");
    }
}
