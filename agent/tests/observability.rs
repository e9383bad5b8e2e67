//! What people plug goalloc into: `/metrics` in both exposition formats, the
//! Grafana dashboard (`deploy/grafana/goalloc.json`) and the alert rules
//! (`deploy/prometheus/goalloc-rules.yaml`, the same groups as the Operator's
//! `deploy/kubernetes/prometheusrule.yaml`, compared by `deploy_manifests`).
//!
//! * The alert rules pass `promtool check rules` and `promtool test rules`
//!   (series that fire and series that must not). No BPF.
//! * Every dashboard query parses: the expressions, Grafana variables
//!   substituted, become a rules file for `promtool check rules`. No BPF.
//! * A live agent answers the classic text format by default and OpenMetrics
//!   when asked; `promtool check metrics` is clean on the classic answer and
//!   complains about nothing but the OpenMetrics counter naming on the other;
//!   both carry the same families; histograms are cumulative.
//! * Every metric the dashboard and the rules name is one a live agent
//!   exports (cAdvisor's memory limit aside).
//!
//! Needs `/usr/bin/promtool` (Debian package prometheus, `cargo xtask setup`).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{Agent, Terminate, require_bpf, variant};
use serde_json::Value;

const PROMTOOL: &str = "/usr/bin/promtool";

/// What Prometheus 2.42 sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Metrics the rules read that other exporters provide.
const EXTERNAL_METRICS: &[&str] = &[
    // cAdvisor (kubelet /metrics/cadvisor): GoallocHeapNearContainerLimit.
    "container_spec_memory_limit_bytes",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

/// Runs promtool; exit code and everything it printed.
fn promtool(args: &[&str], stdin: Option<&str>) -> (Option<i32>, String) {
    assert!(
        Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: run `cargo xtask setup` (Debian package prometheus)"
    );
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .current_dir(deploy("prometheus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.code(), said.into_owned())
}

#[test]
fn alert_rules_pass_promtool_tests() {
    let (code, said) = promtool(&["check", "rules", "goalloc-rules.yaml"], None);
    assert_eq!(code, Some(0), "promtool check rules:\n{said}");
    let started = std::time::Instant::now();
    let (code, said) = promtool(
        &[
            "test",
            "rules",
            "goalloc-rules.test.yaml",
            "goalloc-rules-baseline.test.yaml",
        ],
        None,
    );
    println!("promtool test rules ({:?}):\n{said}", started.elapsed());
    assert_eq!(code, Some(0), "promtool test rules:\n{said}");
    // Every alert of the file is exercised by the tests.
    let rules = std::fs::read_to_string(deploy("prometheus/goalloc-rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/goalloc-rules.test.yaml")).unwrap()
        + &std::fs::read_to_string(deploy("prometheus/goalloc-rules-baseline.test.yaml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alert {alert} has no promtool test"
        );
    }
}

/// The dashboard, parsed.
fn dashboard() -> Value {
    let path = deploy("grafana/goalloc.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, the panels of collapsed rows included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (where, PromQL) for every query of the dashboard: panel targets and the
/// selectors inside the variables' `label_values(...)`.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((
                format!("panel {:?} {}", p["title"], t["refId"]),
                expr.to_string(),
            ));
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"].as_str().expect("variable query is a string");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
            .unwrap_or_else(|| panic!("variable {}: not label_values(selector, label)", v["name"]));
        out.push((format!("variable {}", v["name"]), inner.to_string()));
    }
    out
}

/// Grafana's variables as a query would see them with "All" selected.
fn substitute(expr: &str, variables: &BTreeSet<String>) -> String {
    let mut out = expr
        .replace("$__rate_interval", "2m")
        .replace("$__interval", "1m")
        .replace("$__range", "6h");
    for v in variables {
        out = out.replace(&format!("${{{v}}}"), ".*");
        out = out.replace(&format!("${v}"), ".*");
    }
    out
}

#[test]
fn dashboard_is_importable_and_its_queries_parse() {
    let dash = dashboard();
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let variables: BTreeSet<String> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    for wanted in ["datasource", "namespace", "pod", "process"] {
        assert!(variables.contains(wanted), "no ${wanted} variable");
    }
    let mut ids = BTreeSet::new();
    for p in panels(&dash) {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id {}",
            p["id"]
        );
        assert!(p["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24), "{p}");
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {:?} must use the datasource variable",
                p["title"]
            );
        }
    }

    let queries = dashboard_queries(&dash);
    assert!(queries.len() > 20, "only {} queries", queries.len());
    let mut rules = String::from(
        "# generated from deploy/grafana/goalloc.json\ngroups:\n  - name: dashboard\n    rules:\n",
    );
    for (i, (place, expr)) in queries.iter().enumerate() {
        let expr = substitute(expr, &variables);
        assert!(!expr.contains('$'), "{place}: unknown variable in {expr}");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let (code, said) = promtool(&["check", "rules", file.to_str().unwrap()], None);
    assert_eq!(
        code,
        Some(0),
        "dashboard queries do not parse:\n{said}\n{rules}"
    );
    assert!(
        said.contains(&format!("{} rules found", queries.len())),
        "{said}"
    );

    // The check bites: a broken query fails it.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "groups:\n  - name: b\n    rules:\n      - record: b\n        expr: \"rate(goalloc_goroutines[5m]\"\n",
    )
    .unwrap();
    let (code, _) = promtool(&["check", "rules", broken.to_str().unwrap()], None);
    assert_ne!(code, Some(0), "promtool accepted a broken expression");
}

/// Metric names in a PromQL expression: identifiers that are not functions,
/// keywords, label names (matchers, grouping), numbers or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        // Aggregations, which may be followed by `by (...)` rather than `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its match; strings respected.
    let skip = |mut i: usize, open: char, close: char| -> usize {
        let (mut depth, mut in_str, mut esc) = (0, false, false);
        while i < chars.len() {
            let c = chars[i];
            match (in_str, esc, c) {
                (true, true, _) => esc = false,
                (true, false, '\\') => esc = true,
                (true, false, '"') => in_str = false,
                (false, _, '"') => in_str = true,
                (false, _, c) if c == open => depth += 1,
                (false, _, c) if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip(i, '{', '}');
        } else if c == '[' {
            i = skip(i, '[', ']');
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (1e3, 0.5, 1d, 5m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if GROUPING.contains(&word.as_str()) && call {
                i = skip(next, '(', ')');
            } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found() {
    let names = metric_names(
        r#"sum by (le, pod) (rate(goalloc_x_bucket{a="b{c}", le!="1e3"}[5m] offset 1d)) / on (pod) group_left (comm) goalloc_y > 1.5e3 and bool goalloc:rec:rate5m"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["goalloc_x_bucket", "goalloc_y", "goalloc:rec:rate5m"].map(String::from))
    );
}

/// A GET with an `Accept` header: status, lower-cased headers, body.
fn get(addr: &str, accept: Option<&str>) -> (u16, BTreeMap<String, String>, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    assert!(
        !headers
            .get("transfer-encoding")
            .is_some_and(|t| t.contains("chunked")),
        "chunked answers are not handled here"
    );
    (status.parse().unwrap(), headers, body.to_string())
}

/// `# TYPE` declarations: family name -> type.
fn declared(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// An agent with per-allocation probes and a Go program running, scraped
/// once so that every family, those of the previous scrape included, is there.
fn agent_with_a_go_program() -> (Agent, Terminate) {
    let mut agent = Agent::start();
    agent.wait_ready();
    let demo = Terminate(
        Command::new(variant("go1.27.3").program("demo"))
            .args(["-duration", "60s"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = demo.0.id().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !agent.metrics_text().contains(&format!("pid=\"{pid}\"")) {
        assert!(
            std::time::Instant::now() < deadline,
            "demo {pid} never exported"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (agent, demo)
}

#[test]
fn both_formats_pass_promtool() {
    if !require_bpf() {
        return;
    }
    let (agent, _demo) = agent_with_a_go_program();

    // No Accept, and what curl sends: the classic format, promtool-clean.
    let mut classic_text = String::new();
    for accept in [None, Some("*/*"), Some("text/plain")] {
        let (status, headers, body) = get(&agent.addr, accept);
        assert_eq!(status, 200);
        assert_eq!(
            headers["content-type"], "text/plain; version=0.0.4; charset=utf-8",
            "Accept {accept:?}"
        );
        assert_eq!(headers.get("vary").map(String::as_str), Some("Accept"));
        classic_text = body;
    }
    let classic = &classic_text;
    let (code, said) = promtool(&["check", "metrics"], Some(classic));
    println!("promtool check metrics (classic): exit {code:?} {said}");
    assert!(
        code == Some(0) && said.trim().is_empty(),
        "promtool check metrics on the classic answer:\n{said}"
    );
    assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));

    // Prometheus's Accept: OpenMetrics.
    let (status, headers, om) = get(&agent.addr, Some(PROMETHEUS_ACCEPT));
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "OpenMetrics must end with # EOF");
    // promtool reads only the classic format: in OpenMetrics a counter
    // family `x` has samples `x_total`, which it sees as a family without
    // HELP. That, and nothing else, is what it may say.
    let om_families = declared(&om);
    let (code, said) = promtool(&["check", "metrics"], Some(&om));
    println!("promtool check metrics (OpenMetrics): exit {code:?}\n{said}");
    for problem in said.lines().filter(|l| !l.trim().is_empty()) {
        let family = problem.strip_suffix("_total no help text");
        assert!(
            family.is_some_and(|f| om_families.get(f).is_some_and(|k| k == "counter")),
            "promtool on OpenMetrics: {problem}"
        );
    }

    // Both answers declare the same families, with HELP for each.
    let classic_families = declared(classic);
    let expected: BTreeMap<String, String> = om_families
        .iter()
        .map(|(name, kind)| match kind.as_str() {
            "counter" => (format!("{name}_total"), kind.clone()),
            _ => (name.clone(), kind.clone()),
        })
        .collect();
    assert_eq!(
        classic_families, expected,
        "families differ between the formats"
    );
    for name in classic_families.keys() {
        assert!(
            classic.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        // A unit given twice (name and unit) doubles the suffix.
        for unit in ["seconds", "bytes"] {
            assert!(
                !name.contains(&format!("_{unit}_{unit}")),
                "{name}: unit suffix twice"
            );
        }
    }
    for wanted in [
        "goalloc_heap_allocations_total",
        "goalloc_goroutines",
        "goalloc_heap_allocation_size_bytes",
        "goalloc_allocations_total",
        "goalloc_last_scrape_read_duration_seconds",
    ] {
        assert!(classic_families.contains_key(wanted), "no {wanted}");
    }

    // Histograms: buckets cumulative, ending at the count.
    let samples = common::parse_exposition(classic);
    let mut checked = 0;
    for (family, _) in classic_families.iter().filter(|(_, k)| *k == "histogram") {
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<String, f64> = BTreeMap::new();
        for s in &samples {
            let mut labels = s.labels.clone();
            let le = labels.remove("le");
            let key = format!("{labels:?}");
            if s.name == format!("{family}_bucket") {
                let le = le.unwrap();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                series.entry(key).or_default().push((le, s.value()));
            } else if s.name == format!("{family}_count") {
                counts.insert(key, s.value());
            }
        }
        for (key, buckets) in &series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family}{key}: buckets not cumulative: {buckets:?}"
            );
            assert_eq!(
                buckets.last().map(|b| (b.0, b.1)),
                Some((f64::INFINITY, counts[key])),
                "{family}{key}: +Inf bucket is not the count"
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} histogram series checked");
}

/// Sample names a family of `kind` exposes in the classic format.
fn sample_names(family: &str, kind: &str) -> Vec<String> {
    match kind {
        "histogram" => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{family}{s}"))
            .collect(),
        _ => vec![family.to_string()],
    }
}

#[test]
fn dashboard_and_rules_name_only_exported_metrics() {
    if !require_bpf() {
        return;
    }
    let (agent, _demo) = agent_with_a_go_program();
    let exported: BTreeSet<String> = declared(&agent.metrics_text())
        .iter()
        .flat_map(|(f, k)| sample_names(f, k))
        .collect();

    let dash = dashboard();
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in dashboard_queries(&dash) {
        for name in metric_names(&expr) {
            if !exported.contains(&name) {
                unknown.push(format!("{place}: {name}"));
            }
            used.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics the agent does not export:\n  {}\nexported: {exported:?}",
        unknown.join("\n  ")
    );
    // The figures the dashboard is for are all on it.
    for wanted in [
        "goalloc_heap_live_bytes",
        "goalloc_heap_goal_bytes",
        "goalloc_heap_allocations_total",
        "goalloc_heap_allocated_bytes_total",
        "goalloc_gc_cycles_total",
        "goalloc_goroutines",
        "goalloc_heap_allocation_size_bytes_bucket",
        "goalloc_allocations_total",
        "goalloc_attach_errors_total",
        "goalloc_kernel_map_entries",
        "goalloc_last_scrape_read_duration_seconds",
        "goalloc_processes_inaccessible",
        "goalloc_runtime_reads_total",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
    println!(
        "dashboard: {} metrics, all exported; not on it: {:?}",
        used.len(),
        exported.difference(&used).collect::<Vec<_>>()
    );

    // The alert rules: goalloc's metrics, their own recordings, cAdvisor's.
    let rules = std::fs::read_to_string(deploy("prometheus/goalloc-rules.yaml")).unwrap();
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(String::from)
        .collect();
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut expr = rest.trim().to_string();
        if expr == "|" {
            expr.clear();
            while let Some(next) =
                lines.next_if(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            {
                expr.push_str(next);
                expr.push('\n');
            }
        }
        exprs.push(expr);
    }
    assert!(exprs.len() >= 5, "found {} rule expressions", exprs.len());
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name)
                    || recorded.contains(&name)
                    || EXTERNAL_METRICS.contains(&name.as_str()),
                "the alert rules name {name}, which nothing exports:\n{expr}"
            );
        }
    }
}
