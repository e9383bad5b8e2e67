//! Exposition formats and content negotiation for `/metrics`.
//!
//! prometheus-client encodes OpenMetrics only, and the classic text format
//! (`text/plain; version=0.0.4`) differs from it in ways a classic reader
//! notices: a counter family `x` is declared as `x` in OpenMetrics but its
//! samples are `x_total`, which `promtool check metrics` (and every other
//! classic parser) reads as an undeclared family without HELP. Like
//! client_golang's handler, the agent answers OpenMetrics only to scrapers that
//! ask for it and the classic format to everybody else.
//!
//! The classic text is a conversion of the OpenMetrics text, not a second
//! encoder, so both formats always carry the same families and samples: a
//! family added to the collector appears in both without further work. The
//! conversion is line-based and exact for what the two formats share:
//!
//! * counter families are declared with their `_total` sample name;
//! * `# UNIT` and `# EOF` are dropped (classic has neither);
//! * `_created` samples and exemplars are dropped (classic has neither);
//! * `unknown` becomes `untyped`, `info` a gauge named `x_info`, `stateset` a
//!   gauge; `gaugehistogram` has no classic equivalent and is refused;
//! * timestamps go from seconds to milliseconds;
//! * HELP text is re-escaped (OpenMetrics escapes `"`, classic does not).
//!
//! Label sets and values are written identically by both formats and are
//! copied verbatim.

use std::fmt::Write as _;

/// Content type of the OpenMetrics answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic text answer.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A text exposition format the agent can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text, what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, the default.
    Classic,
}

impl Format {
    /// The `Content-Type` header of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Classic => CLASSIC,
        }
    }

    /// The format to answer an `Accept` header with. The media ranges are
    /// tried in decreasing quality (`q`), in header order among equals; the
    /// first one the agent can serve wins. OpenMetrics is served only when
    /// asked for by name (any version the agent does not write is skipped);
    /// everything else, a missing or unparsable header included, gets the
    /// classic format, as with client_golang.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        let mut ranges: Vec<MediaRange> = accept.split(',').filter_map(MediaRange::parse).collect();
        // Stable: equal qualities keep the client's order.
        ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
        for range in ranges.iter().filter(|r| r.q > 0.0) {
            let version = range.version.as_deref();
            match range.essence.as_str() {
                "application/openmetrics-text" if matches!(version, None | Some("1.0.0")) => {
                    return Format::OpenMetrics;
                }
                "text/plain" if matches!(version, None | Some("0.0.4")) => {
                    return Format::Classic;
                }
                "*/*" | "text/*" => return Format::Classic,
                _ => {}
            }
        }
        Format::Classic
    }
}

/// One entry of an `Accept` header.
#[derive(Debug)]
struct MediaRange {
    /// `type/subtype`, lower case.
    essence: String,
    version: Option<String>,
    q: f32,
}

impl MediaRange {
    fn parse(text: &str) -> Option<MediaRange> {
        let mut parts = text.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        if !essence.contains('/') {
            return None;
        }
        let (mut version, mut q) = (None, 1.0);
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "version" => version = Some(value.to_string()),
                // An unparsable quality makes the range unusable, not the header.
                "q" => {
                    q = value
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))?
                }
                _ => {}
            }
        }
        Some(MediaRange {
            essence,
            version,
            q,
        })
    }
}

/// Why an OpenMetrics text could not be converted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("line {line}: {what}: {text:?}")]
    Malformed {
        line: usize,
        what: &'static str,
        text: String,
    },
    #[error("family {family}: type {kind} has no classic text equivalent")]
    Unsupported { family: String, kind: String },
    #[error("no `# EOF` at the end: the exposition is truncated")]
    MissingEof,
}

/// One metric family of the OpenMetrics text, borrowed from it.
#[derive(Debug, Default)]
struct Family<'a> {
    name: &'a str,
    help: Option<&'a str>,
    kind: Option<&'a str>,
    /// (line number, sample line)
    samples: Vec<(usize, &'a str)>,
}

/// The classic text format of an OpenMetrics 1.0.0 text exposition.
pub fn openmetrics_to_classic(text: &str) -> Result<String, ConvertError> {
    let malformed = |line: usize, what: &'static str, text: &str| ConvertError::Malformed {
        line,
        what,
        text: text.to_string(),
    };
    let mut families: Vec<Family> = Vec::new();
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if eof {
            return Err(malformed(n, "text after # EOF", line));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut words = meta.splitn(3, ' ');
            let (Some(keyword), Some(name)) = (words.next(), words.next()) else {
                return Err(malformed(n, "bad metadata line", line));
            };
            let rest = words.next().unwrap_or("");
            // Metadata of a new name starts a new family.
            if families.last().is_none_or(|f| f.name != name) {
                families.push(Family {
                    name,
                    ..Default::default()
                });
            }
            let family = families.last_mut().expect("pushed above");
            if !family.samples.is_empty() {
                return Err(malformed(n, "metadata after the family's samples", line));
            }
            match keyword {
                "HELP" => family.help = Some(rest),
                "TYPE" => family.kind = Some(rest),
                "UNIT" => {}
                _ => return Err(malformed(n, "unknown metadata keyword", line)),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(malformed(n, "not OpenMetrics", line));
        }
        let Some(family) = families.last_mut() else {
            return Err(malformed(n, "sample without a family", line));
        };
        family.samples.push((n, line));
    }
    if !eof {
        return Err(ConvertError::MissingEof);
    }

    let mut out = String::with_capacity(text.len());
    for family in &families {
        let kind = family.kind.unwrap_or("unknown");
        let (name, classic_kind, suffixes): (String, &str, &[&str]) = match kind {
            "counter" => (format!("{}_total", family.name), "counter", &["_total"]),
            "gauge" => (family.name.to_string(), "gauge", &[""]),
            "histogram" => (
                family.name.to_string(),
                "histogram",
                &["_bucket", "_sum", "_count"],
            ),
            "summary" => (family.name.to_string(), "summary", &["", "_sum", "_count"]),
            "unknown" => (family.name.to_string(), "untyped", &[""]),
            "info" => (format!("{}_info", family.name), "gauge", &["_info"]),
            "stateset" => (family.name.to_string(), "gauge", &[""]),
            other => {
                return Err(ConvertError::Unsupported {
                    family: family.name.to_string(),
                    kind: other.to_string(),
                });
            }
        };
        if let Some(help) = family.help {
            let _ = writeln!(out, "# HELP {name} {}", classic_help(help));
        }
        let _ = writeln!(out, "# TYPE {name} {classic_kind}");
        for &(n, line) in &family.samples {
            let sample = Sample::split(line).ok_or_else(|| malformed(n, "bad sample", line))?;
            let Some(suffix) = sample.name.strip_prefix(family.name) else {
                return Err(malformed(n, "sample outside its family", line));
            };
            if suffix == "_created" {
                continue; // classic has no creation times
            }
            if !suffixes.contains(&suffix) {
                return Err(malformed(n, "sample outside its family", line));
            }
            out.push_str(sample.name);
            out.push_str(sample.labels);
            out.push(' ');
            out.push_str(sample.value);
            if let Some(ts) = sample.timestamp {
                let seconds: f64 = ts
                    .parse()
                    .map_err(|_| malformed(n, "bad timestamp", line))?;
                let _ = write!(out, " {}", (seconds * 1000.0).round() as i64);
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// A sample line cut into its parts; the exemplar is left out.
struct Sample<'a> {
    name: &'a str,
    /// `{...}` including the braces, or empty.
    labels: &'a str,
    value: &'a str,
    timestamp: Option<&'a str>,
}

impl<'a> Sample<'a> {
    fn split(line: &'a str) -> Option<Sample<'a>> {
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let labels_end = if line[name_end..].starts_with('{') {
            name_end + label_set_len(&line[name_end..])?
        } else {
            name_end
        };
        let labels = &line[name_end..labels_end];
        let rest = line[labels_end..].strip_prefix(' ')?;
        // Label values are behind us, so " # " can only start an exemplar.
        let rest = rest.split_once(" # ").map_or(rest, |(before, _)| before);
        let mut words = rest.split(' ');
        let value = words.next().filter(|v| !v.is_empty())?;
        let timestamp = words.next();
        if words.next().is_some() || name.is_empty() {
            return None;
        }
        Some(Sample {
            name,
            labels,
            value,
            timestamp,
        })
    }
}

/// Length of the `{...}` label set at the start of `text`, quotes and
/// escapes inside label values respected.
fn label_set_len(text: &str) -> Option<usize> {
    let (mut in_value, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        match (in_value, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_value = false,
            (false, _, '"') => in_value = true,
            (false, _, '}') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// OpenMetrics HELP text (escapes `\\`, `\"`, `\n`) as classic HELP text
/// (escapes `\\` and `\n` only).
fn classic_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('"')) => {
                chars.next();
                out.push('"');
            }
            ('\\', Some('\\' | 'n')) => {
                out.push('\\');
                out.push(chars.next().expect("peeked"));
            }
            // A lone backslash (prometheus-client writes HELP unescaped).
            ('\\', _) => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS_2_42: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiation() {
        use Format::*;
        let cases = [
            (None, Classic),
            (Some(""), Classic),
            (Some("*/*"), Classic),
            (Some("text/plain"), Classic),
            (Some("garbage"), Classic),
            (Some(PROMETHEUS_2_42), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; Version=\"1.0.0\"; charset=utf-8"),
                OpenMetrics,
            ),
            // A version the agent does not write is not served.
            (Some("application/openmetrics-text;version=2.0.0"), Classic),
            // Quality decides, not order.
            (
                Some("text/plain;version=0.0.4;q=0.5,application/openmetrics-text;q=0.9"),
                OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;q=0.4,text/plain;q=0.5"),
                Classic,
            ),
            // q=0 means "not acceptable".
            (Some("application/openmetrics-text;q=0,*/*;q=0.1"), Classic),
            // Unknown types are skipped (protobuf, which the agent does not write).
            (
                Some(
                    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;q=0.5",
                ),
                OpenMetrics,
            ),
            (Some("application/json"), Classic),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "Accept: {accept:?}");
        }
        assert!(
            Classic
                .content_type()
                .starts_with("text/plain; version=0.0.4")
        );
        assert!(
            OpenMetrics
                .content_type()
                .starts_with("application/openmetrics-text; version=1.0.0")
        );
    }

    #[test]
    fn converts_every_kind_the_agent_writes() {
        let om = r#"# HELP goalloc_heap_allocations Heap objects allocated (a "quoted" word).
# TYPE goalloc_heap_allocations counter
goalloc_heap_allocations_total{pid="1",comm="a \"b\" {c} # d"} 10
goalloc_heap_allocations_created{pid="1",comm="a \"b\" {c} # d"} 1700000000.5
# HELP goalloc_heap_live_bytes Bytes of live heap objects.
# TYPE goalloc_heap_live_bytes gauge
# UNIT goalloc_heap_live_bytes bytes
goalloc_heap_live_bytes{pid="1"} 42
goalloc_heap_live_bytes{pid="2"} 43 1700000000.25
# HELP goalloc_size_bytes Sizes.
# TYPE goalloc_size_bytes histogram
# UNIT goalloc_size_bytes bytes
goalloc_size_bytes_sum{pid="1"} 24.0
goalloc_size_bytes_count{pid="1"} 3
goalloc_size_bytes_bucket{le="8.0",pid="1"} 2 # {trace_id="x"} 8.0
goalloc_size_bytes_bucket{le="+Inf",pid="1"} 3
# HELP goalloc_empty A family without samples.
# TYPE goalloc_empty counter
# HELP goalloc_build Build.
# TYPE goalloc_build info
goalloc_build_info{version="1"} 1
# TYPE goalloc_untyped unknown
goalloc_untyped 3.5e3
# EOF
"#;
        let classic = openmetrics_to_classic(om).unwrap();
        let want = r#"# HELP goalloc_heap_allocations_total Heap objects allocated (a "quoted" word).
# TYPE goalloc_heap_allocations_total counter
goalloc_heap_allocations_total{pid="1",comm="a \"b\" {c} # d"} 10
# HELP goalloc_heap_live_bytes Bytes of live heap objects.
# TYPE goalloc_heap_live_bytes gauge
goalloc_heap_live_bytes{pid="1"} 42
goalloc_heap_live_bytes{pid="2"} 43 1700000000250
# HELP goalloc_size_bytes Sizes.
# TYPE goalloc_size_bytes histogram
goalloc_size_bytes_sum{pid="1"} 24.0
goalloc_size_bytes_count{pid="1"} 3
goalloc_size_bytes_bucket{le="8.0",pid="1"} 2
goalloc_size_bytes_bucket{le="+Inf",pid="1"} 3
# HELP goalloc_empty_total A family without samples.
# TYPE goalloc_empty_total counter
# HELP goalloc_build_info Build.
# TYPE goalloc_build_info gauge
goalloc_build_info{version="1"} 1
# TYPE goalloc_untyped untyped
goalloc_untyped 3.5e3
"#;
        assert_eq!(classic, want);
    }

    #[test]
    fn help_escapes() {
        assert_eq!(classic_help(r#"a \"b\" c\\d e\nf"#), r#"a "b" c\\d e\nf"#);
        assert_eq!(classic_help(r"C:\path"), r"C:\\path");
    }

    #[test]
    fn refuses_what_it_cannot_convert_faithfully() {
        let err = |text: &str| openmetrics_to_classic(text).unwrap_err();
        assert_eq!(
            err("# TYPE a counter\na_total 1\n"),
            ConvertError::MissingEof
        );
        assert!(matches!(
            err("# TYPE a gaugehistogram\na_gcount 1\n# EOF\n"),
            ConvertError::Unsupported { .. }
        ));
        for bad in [
            "a_total 1\n# EOF\n",                          // no family
            "# TYPE a counter\nb_total 1\n# EOF\n",        // another family's sample
            "# TYPE a counter\na 1\n# EOF\n",              // counter sample without _total
            "# TYPE a gauge\na{x=\"1\" 1\n# EOF\n",        // unterminated labels
            "# TYPE a gauge\na\n# EOF\n",                  // no value
            "# TYPE a gauge\na 1\n# HELP a late\n# EOF\n", // metadata after samples
            "# TYPE a gauge\n# EOF\na 1\n",                // after EOF
            "# TYPE a gauge\n\n# EOF\n",                   // blank line
        ] {
            assert!(
                matches!(err(bad), ConvertError::Malformed { .. }),
                "accepted {bad:?}"
            );
        }
    }
}
