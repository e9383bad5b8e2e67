//! Offline checks of the Kubernetes manifests under `deploy/kubernetes`.
//!
//! * Every built-in resource is validated by `kubernetes-validate --strict`
//!   (unknown or misspelt fields fail) against the oldest and the newest
//!   Kubernetes version the manifests support. kubernetes-validate only WARNs
//!   and exits 0 for a kind it has no schema for, so here any line that is not
//!   a "passed" line fails the test.
//! * Kinds that are not built into Kubernetes (the Prometheus Operator's
//!   PodMonitor and PrometheusRule, kustomize's Kustomization) are validated
//!   against the strict
//!   JSON schemas in `deploy/schemas/` with the `jsonschema` package that
//!   kubernetes-validate brings along.
//! * The DaemonSet, the RBAC rules and the wiring between the objects are
//!   checked against the documented security policy; each broken rule is named.
//! * The PrometheusRule carries exactly the groups of the plain rules file
//!   `deploy/prometheus/goalloc-rules.yaml` (promtool tests those: see the
//!   `observability` test).
//!
//! Needs no BPF. The tools live in `$GOALLOC_CACHE/venv-tools` (default
//! `<repo>/.cache/venv-tools`), installed by `cargo xtask setup`; when they are
//! missing the tests fail and say so.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use serde_json::{Value, json};

/// Oldest supported Kubernetes version (the DaemonSet uses
/// `securityContext.appArmorProfile`, new in 1.30) and the newest schema set of
/// the pinned kubernetes-validate.
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// The capabilities the agent adds back after dropping ALL; each is justified
/// in daemonset.yaml and in deploy/README.md.
const EXPECTED_CAPS: &[&str] = &["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];

/// Host paths the DaemonSet may mount (read-only), each justified in
/// daemonset.yaml. None today: hostPID gives the node's /proc, the agent reads
/// pods' cgroups from /proc/PID/cgroup, and the container's sysfs already shows
/// /sys/kernel/btf and the uprobe PMU.
const ALLOWED_HOST_PATHS: &[&str] = &[];

/// (apiVersion, kind) -> JSON schema under deploy/schemas/, for the kinds that
/// kubernetes-validate has no schema for.
const LOCAL_SCHEMAS: &[(&str, &str, &str)] = &[
    (
        "monitoring.coreos.com/v1",
        "PodMonitor",
        "podmonitor-monitoring-v1.json",
    ),
    (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        "prometheusrule-monitoring-v1.json",
    ),
    (
        "kustomize.config.k8s.io/v1beta1",
        "Kustomization",
        "kustomization-v1beta1.json",
    ),
];

const NAMESPACE: &str = "goalloc";

/// Runs with the venv's Python.
/// `load FILE...`: prints `{"FILE": [doc, ...], ...}` as JSON (empty documents dropped).
/// `schema SCHEMA`: validates the JSON document on stdin against SCHEMA
/// (draft 2020-12), prints one `path: message` line per error, exits 1 on errors.
const HELPER: &str = r#"
import json, sys
mode = sys.argv[1]
if mode == "load":
    import yaml
    out = {}
    for name in sys.argv[2:]:
        with open(name) as f:
            out[name] = [d for d in yaml.safe_load_all(f) if d is not None]
    json.dump(out, sys.stdout)
elif mode == "schema":
    import jsonschema
    with open(sys.argv[2]) as f:
        schema = json.load(f)
    cls = jsonschema.validators.Draft202012Validator
    cls.check_schema(schema)
    doc = json.load(sys.stdin)
    errors = sorted(cls(schema).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    for e in errors:
        print("%s: %s" % (".".join(map(str, e.absolute_path)) or "(root)", e.message))
    sys.exit(1 if errors else 0)
else:
    sys.exit("unknown mode " + mode)
"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

fn manifests_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

/// `$GOALLOC_CACHE` (relative paths are taken from the repo root) or `<repo>/.cache`.
fn cache_dir() -> PathBuf {
    match std::env::var_os("GOALLOC_CACHE") {
        Some(dir) if !dir.is_empty() => repo_root().join(dir),
        _ => repo_root().join(".cache"),
    }
}

struct Tools {
    validate: PathBuf,
    python: PathBuf,
}

fn tools() -> Tools {
    let bin = cache_dir().join("venv-tools/bin");
    let tools = Tools {
        validate: bin.join("kubernetes-validate"),
        python: bin.join("python"),
    };
    for path in [&tools.validate, &tools.python] {
        if !path.is_file() {
            panic!(
                "{} not found: run `cargo xtask setup` first (it installs the PyPI package \
                 kubernetes-validate into $GOALLOC_CACHE/venv-tools, default <repo>/.cache/venv-tools)",
                path.display()
            );
        }
    }
    tools
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The manifest files, as paths relative to the repo root, sorted.
fn manifest_files() -> Vec<String> {
    let dir = manifests_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .map(|name| format!("deploy/kubernetes/{name}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

/// Every manifest file with its parsed YAML documents, loaded once.
fn manifests() -> &'static BTreeMap<String, Vec<Value>> {
    static DOCS: OnceLock<BTreeMap<String, Vec<Value>>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let tools = tools();
        let out = run(
            Command::new(&tools.python)
                .args(["-c", HELPER, "load"])
                .args(manifest_files()),
            None,
        );
        assert!(
            out.status.success(),
            "parsing the manifests failed:\n{}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout).expect("helper printed JSON")
    })
}

fn api_kind(doc: &Value) -> (&str, &str) {
    (
        doc["apiVersion"].as_str().unwrap_or(""),
        doc["kind"].as_str().unwrap_or(""),
    )
}

fn local_schema(doc: &Value) -> Option<PathBuf> {
    let (api, kind) = api_kind(doc);
    LOCAL_SCHEMAS
        .iter()
        .find(|(a, k, _)| *a == api && *k == kind)
        .map(|(_, _, file)| repo_root().join("deploy/schemas").join(file))
}

/// The one document of `kind` across all manifests.
fn the(kind: &str) -> &'static Value {
    let found: Vec<&Value> = manifests()
        .values()
        .flatten()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} in deploy/kubernetes"
    );
    found[0]
}

/// `v` at a dotted path ("spec.template.spec.hostPID", "ports.0.name"); Null if absent.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    let pointer = format!("/{}", path.replace('.', "/"));
    v.pointer(&pointer).unwrap_or(&NULL)
}

/// Collects broken rules and reports them all at once.
#[derive(Default)]
struct Rules {
    broken: Vec<String>,
}

impl Rules {
    fn check(&mut self, rule: &str, ok: bool, detail: impl FnOnce() -> String) {
        if !ok {
            self.broken.push(format!("[{rule}] {}", detail()));
        }
    }

    fn finish(self, what: &str) {
        if !self.broken.is_empty() {
            panic!(
                "{what}: {} rule(s) broken:\n  {}",
                self.broken.len(),
                self.broken.join("\n  ")
            );
        }
    }
}

fn validate_with_schema(tools: &Tools, schema: &Path, doc: &Value) -> Result<(), String> {
    let out = run(
        Command::new(&tools.python)
            .args(["-c", HELPER, "schema"])
            .arg(schema),
        Some(&doc.to_string()),
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out))
    }
}

#[test]
fn every_manifest_validates_offline() {
    let tools = tools();
    let mut rules = Rules::default();
    let mut builtin_files = Vec::new();
    let mut builtin_docs = 0;
    for (file, docs) in manifests() {
        rules.check("manifest-not-empty", !docs.is_empty(), || {
            format!("{file} has no YAML document")
        });
        let local = docs.iter().filter(|d| local_schema(d).is_some()).count();
        rules.check(
            "one-validator-per-file",
            local == 0 || local == docs.len(),
            || format!("{file} mixes built-in kinds and kinds with a local schema: split it"),
        );
        if local == 0 {
            builtin_files.push(file.clone());
            builtin_docs += docs.len();
            continue;
        }
        for doc in docs {
            let schema = local_schema(doc).unwrap();
            if let Err(errors) = validate_with_schema(&tools, &schema, doc) {
                let (api, kind) = api_kind(doc);
                rules.check("local-schema", false, || {
                    format!(
                        "{file}: {kind} ({api}) does not match {}:\n{}",
                        schema.display(),
                        errors.trim_end()
                    )
                });
            }
        }
    }
    assert!(builtin_docs > 0, "no built-in Kubernetes resources found");
    for version in K8S_VERSIONS {
        let out = run(
            Command::new(&tools.validate)
                .args(["--strict", "-k", version])
                .args(&builtin_files),
            None,
        );
        let output = text(&out);
        println!("kubernetes-validate --strict -k {version}:\n{output}");
        // A kind without a schema is only a WARN (exit 0): anything but "passed" fails.
        let passed = output
            .lines()
            .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
            .count();
        let other: Vec<&str> = output
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !(l.starts_with("INFO ") && l.contains(" passed for resource ")))
            .collect();
        rules.check("kubernetes-validate-exit", out.status.success(), || {
            format!(
                "kubernetes-validate --strict -k {version} exited with {}",
                out.status
            )
        });
        rules.check("kubernetes-validate-clean", other.is_empty(), || {
            format!(
                "kubernetes-validate --strict -k {version} (a WARN means no schema: add the kind to \
                 LOCAL_SCHEMAS with a schema under deploy/schemas/):\n    {}",
                other.join("\n    ")
            )
        });
        rules.check(
            "kubernetes-validate-all-resources",
            passed == builtin_docs,
            || format!("-k {version}: {passed} resources passed, {builtin_docs} expected"),
        );
    }
    rules.finish("manifest validation");
}

/// The validators must really be strict: an unknown field fails both.
#[test]
fn validation_rejects_unknown_fields() {
    let tools = tools();
    let mut daemonset = the("DaemonSet").clone();
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] =
        json!(true);
    let out = run(
        Command::new(&tools.validate).args(["--strict", "-k", K8S_VERSIONS[0], "-"]),
        Some(&daemonset.to_string()),
    );
    assert!(
        !out.status.success() && text(&out).contains("privilegd"),
        "kubernetes-validate --strict accepted an unknown field:\n{}",
        text(&out)
    );

    let mut podmonitor = the("PodMonitor").clone();
    podmonitor["spec"]["podMetricsEndpoints"][0]["intervall"] = json!("30s");
    let schema = local_schema(&podmonitor).unwrap();
    let errors = validate_with_schema(&tools, &schema, &podmonitor)
        .expect_err("the PodMonitor schema accepted an unknown field");
    assert!(errors.contains("intervall"), "unexpected errors: {errors}");

    let mut bad_interval = the("PodMonitor").clone();
    bad_interval["spec"]["podMetricsEndpoints"][0]["interval"] = json!("30 seconds");
    validate_with_schema(&tools, &schema, &bad_interval)
        .expect_err("the PodMonitor schema accepted a malformed interval");

    let rule = the("PrometheusRule");
    let schema = local_schema(rule).unwrap();
    let mut misspelt = rule.clone();
    misspelt["spec"]["groups"][0]["rules"][1]["fro"] = json!("1h");
    let errors = validate_with_schema(&tools, &schema, &misspelt)
        .expect_err("the PrometheusRule schema accepted an unknown field");
    assert!(errors.contains("fro"), "unexpected errors: {errors}");
    let mut bad_for = rule.clone();
    bad_for["spec"]["groups"][0]["rules"][1]["for"] = json!("1 hour");
    validate_with_schema(&tools, &schema, &bad_for)
        .expect_err("the PrometheusRule schema accepted a malformed `for`");
    let mut both = rule.clone();
    both["spec"]["groups"][0]["rules"][1]["record"] = json!("goalloc:x");
    validate_with_schema(&tools, &schema, &both)
        .expect_err("the PrometheusRule schema accepted a rule that records and alerts");
}

/// The Operator's rules and the plain rules file must not drift apart.
#[test]
fn prometheusrule_matches_the_plain_rules_file() {
    let tools = tools();
    let plain = "deploy/prometheus/goalloc-rules.yaml";
    let out = run(
        Command::new(&tools.python).args(["-c", HELPER, "load", plain]),
        None,
    );
    assert!(out.status.success(), "parsing {plain}:\n{}", text(&out));
    let loaded: BTreeMap<String, Vec<Value>> = serde_json::from_slice(&out.stdout).unwrap();
    let groups = &loaded[plain][0]["groups"];
    let rule = the("PrometheusRule");
    assert!(
        groups.as_array().is_some_and(|g| !g.is_empty()),
        "{plain} has no groups"
    );
    assert_eq!(
        &rule["spec"]["groups"], groups,
        "deploy/kubernetes/prometheusrule.yaml's spec.groups differ from {plain}'s groups: \
         edit {plain}, then copy its `groups:` block under `spec:` (indented by two spaces)"
    );
    let names: BTreeSet<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(
        names.len(),
        groups.as_array().unwrap().len(),
        "group names must be unique"
    );
}

#[test]
fn daemonset_follows_the_security_policy() {
    let ds = the("DaemonSet");
    let pod = at(ds, "spec.template.spec");
    let mut r = Rules::default();

    r.check("hostPID", pod["hostPID"] == true, || {
        format!(
            "spec.template.spec.hostPID must be true, is {}",
            pod["hostPID"]
        )
    });
    r.check("no-hostNetwork", pod["hostNetwork"] != true, || {
        "hostNetwork must not be true".into()
    });
    for (file, docs) in manifests() {
        for doc in docs {
            let mut found = Vec::new();
            find_privileged(doc, String::new(), &mut found);
            r.check("no-privileged", found.is_empty(), || {
                format!("{file}: `privileged: true` at {}", found.join(", "))
            });
        }
    }

    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod[*k].as_array())
        .flatten()
        .collect();
    r.check("one-container", containers.len() == 1, || {
        format!("expected exactly one container, found {}", containers.len())
    });
    let expected_caps: BTreeSet<&str> = EXPECTED_CAPS.iter().copied().collect();
    for c in &containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        let drop = strings(&sc["capabilities"]["drop"]);
        r.check("caps-drop-all", drop.contains(&"ALL"), || {
            format!("container {name}: capabilities.drop must contain ALL, is {drop:?}")
        });
        let add = strings(&sc["capabilities"]["add"]);
        let add_set: BTreeSet<&str> = add.iter().copied().collect();
        r.check(
            "caps-add-exact",
            add_set == expected_caps && add.len() == add_set.len(),
            || {
                format!(
                    "container {name}: capabilities.add must be exactly {EXPECTED_CAPS:?} \
                     (documented in daemonset.yaml and deploy/README.md), is {add:?}"
                )
            },
        );
        r.check(
            "no-privilege-escalation",
            sc["allowPrivilegeEscalation"] == false,
            || {
                format!(
                    "container {name}: allowPrivilegeEscalation must be false, is {}",
                    sc["allowPrivilegeEscalation"]
                )
            },
        );
        r.check(
            "read-only-root",
            sc["readOnlyRootFilesystem"] == true,
            || {
                format!(
                    "container {name}: readOnlyRootFilesystem must be true, is {}",
                    sc["readOnlyRootFilesystem"]
                )
            },
        );
        r.check(
            "runs-as-root",
            sc["runAsUser"] == 0 && sc["runAsNonRoot"] == false,
            || {
                format!(
                    "container {name}: runAsUser must be 0 and runAsNonRoot false (added \
                 capabilities only reach uid 0), are {} and {}",
                    sc["runAsUser"], sc["runAsNonRoot"]
                )
            },
        );
        r.check(
            "seccomp-explicit",
            sc["seccompProfile"]["type"].is_string(),
            || {
                format!(
                    "container {name}: seccompProfile.type must be set explicitly (see the comment)"
                )
            },
        );
    }

    let Some(c) = pod["containers"].as_array().and_then(|c| c.first()) else {
        r.check("container", false, || "no container".into());
        return r.finish("DaemonSet");
    };
    let metrics_port = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "metrics");
    r.check(
        "metrics-port",
        metrics_port.is_some_and(|p| p["containerPort"] == 9464),
        || {
            format!(
                "container port named `metrics` must be 9464, ports are {}",
                c["ports"]
            )
        },
    );
    let args = strings(&c["args"]);
    let listen = args
        .iter()
        .position(|a| *a == "--listen")
        .and_then(|i| args.get(i + 1));
    r.check(
        "agent-args",
        args.first() == Some(&"agent") && listen.is_some_and(|l| l.ends_with(":9464")),
        || format!("args must run `agent --listen <addr>:9464`, are {args:?}"),
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        r.check(
            "probes",
            get["path"] == path && (get["port"] == "metrics" || get["port"] == 9464),
            || {
                format!(
                    "{probe} must be httpGet {path} on the metrics port, is {}",
                    c[probe]
                )
            },
        );
    }
    let node_name = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "NODE_NAME");
    r.check(
        "NODE_NAME",
        node_name.is_some_and(|e| at(e, "valueFrom.fieldRef.fieldPath") == "spec.nodeName"),
        || format!("env NODE_NAME must come from fieldRef spec.nodeName, is {node_name:?}"),
    );
    let tolerates_all = pod["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none());
    r.check("tolerate-all-taints", tolerates_all, || {
        format!(
            "tolerations must include {{operator: Exists}} without key or effect, are {}",
            pod["tolerations"]
        )
    });
    let res = &c["resources"];
    r.check(
        "resources",
        at(res, "requests.cpu") == "50m"
            && at(res, "requests.memory") == "64Mi"
            && at(res, "limits.memory") == "256Mi"
            && at(res, "limits.cpu").is_null(),
        || {
            format!(
                "resources must be requests 50m/64Mi, limits memory 256Mi, no CPU limit; are {res}"
            )
        },
    );
    let strategy = &ds["spec"]["updateStrategy"];
    r.check(
        "rolling-update",
        strategy["type"] == "RollingUpdate" && at(strategy, "rollingUpdate.maxUnavailable") == 1,
        || format!("updateStrategy must be RollingUpdate with maxUnavailable 1, is {strategy}"),
    );

    // hostPath volumes: none but the justified ones, all read-only.
    let host_paths: BTreeMap<&str, &str> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, at(v, "hostPath.path").as_str()?)))
        .collect();
    for (volume, path) in &host_paths {
        r.check("host-paths", ALLOWED_HOST_PATHS.contains(path), || {
            format!(
                "hostPath volume {volume} mounts {path}, not in ALLOWED_HOST_PATHS \
                 {ALLOWED_HOST_PATHS:?} (hostPID already gives the node's /proc; the \
                 container's sysfs shows /sys/kernel/btf)"
            )
        });
    }
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let volume = m["name"].as_str().unwrap_or("?");
        if let Some(path) = host_paths.get(volume) {
            r.check("host-mounts-read-only", m["readOnly"] == true, || {
                format!("hostPath {path} (volume {volume}) must be mounted readOnly")
            });
        }
    }
    r.finish("DaemonSet");
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Paths of every `privileged: true` in `v`.
fn find_privileged(v: &Value, path: String, found: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k == "privileged" && *child == true {
                    found.push(p.clone());
                }
                find_privileged(child, p, found);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_privileged(child, format!("{path}.{i}"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn rbac_grants_only_reading_pods() {
    let mut r = Rules::default();
    let role = the("ClusterRole");
    let rules = role["rules"].as_array().cloned().unwrap_or_default();
    r.check("clusterrole-one-rule", rules.len() == 1, || {
        format!(
            "the ClusterRole must have exactly one rule, has {}",
            rules.len()
        )
    });
    for rule in &rules {
        let groups = strings(&rule["apiGroups"]);
        let resources = strings(&rule["resources"]);
        let verbs: BTreeSet<&str> = strings(&rule["verbs"]).into_iter().collect();
        r.check(
            "clusterrole-pods-only",
            groups == [""] && resources == ["pods"] && rule.get("resourceNames").is_none(),
            || format!("rules may only cover core `pods`, found {rule}"),
        );
        r.check(
            "clusterrole-read-only",
            verbs == BTreeSet::from(["get", "list", "watch"]),
            || format!("verbs must be exactly get, list, watch; found {verbs:?}"),
        );
        r.check(
            "clusterrole-no-nonresource",
            rule.get("nonResourceURLs").is_none(),
            || "no nonResourceURLs".into(),
        );
    }
    r.check(
        "no-aggregation",
        role.get("aggregationRule").is_none(),
        || "the ClusterRole must not aggregate other roles".into(),
    );
    for kind in ["Role", "RoleBinding"] {
        let n = manifests()
            .values()
            .flatten()
            .filter(|d| d["kind"] == kind)
            .count();
        r.check("no-other-rbac", n == 0, || {
            format!("unexpected {kind} objects: {n}")
        });
    }
    let binding = the("ClusterRoleBinding");
    let sa = the("ServiceAccount");
    r.check(
        "binding-role",
        at(binding, "roleRef.kind") == "ClusterRole"
            && *at(binding, "roleRef.name") == role["metadata"]["name"],
        || {
            format!(
                "the ClusterRoleBinding must bind the goalloc ClusterRole, roleRef is {}",
                binding["roleRef"]
            )
        },
    );
    let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
    r.check(
        "binding-subject",
        subjects.len() == 1
            && subjects[0]["kind"] == "ServiceAccount"
            && subjects[0]["name"] == sa["metadata"]["name"]
            && subjects[0]["namespace"] == sa["metadata"]["namespace"],
        || {
            format!(
                "the only subject must be the goalloc ServiceAccount, subjects are {subjects:?}"
            )
        },
    );
    r.finish("RBAC");
}

#[test]
fn objects_are_wired_together() {
    let mut r = Rules::default();
    let ns = the("Namespace");
    let ds = the("DaemonSet");
    let sa = the("ServiceAccount");
    let pm = the("PodMonitor");
    let pod_labels = at(ds, "spec.template.metadata.labels");

    r.check(
        "namespace-name",
        ns["metadata"]["name"] == NAMESPACE,
        || format!("the Namespace must be {NAMESPACE}"),
    );
    for mode in ["enforce", "audit", "warn"] {
        let key = format!("pod-security.kubernetes.io/{mode}");
        let value = &ns["metadata"]["labels"][&key];
        r.check("pod-security-labels", value == "privileged", || {
            format!("namespace label {key} must be privileged (hostPID, capabilities), is {value}")
        });
    }
    for (file, docs) in manifests() {
        for doc in docs {
            let (_, kind) = api_kind(doc);
            let cluster_scoped = matches!(
                kind,
                "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "Kustomization"
            );
            if !cluster_scoped {
                r.check(
                    "namespaced",
                    doc["metadata"]["namespace"] == NAMESPACE,
                    || format!("{file}: {kind} must be in namespace {NAMESPACE}"),
                );
            }
            if kind != "Kustomization" {
                r.check(
                    "app-label",
                    at(doc, "metadata.labels").get("app.kubernetes.io/name")
                        == Some(&json!("goalloc")),
                    || format!("{file}: {kind} needs label app.kubernetes.io/name: goalloc"),
                );
            }
        }
    }
    r.check(
        "service-account",
        *at(ds, "spec.template.spec.serviceAccountName") == sa["metadata"]["name"],
        || "the DaemonSet must run as the goalloc ServiceAccount".into(),
    );
    let selects = |selector: &Value| {
        selector["matchLabels"]
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| pod_labels.get(k) == Some(v)))
            && selector.get("matchExpressions").is_none()
    };
    r.check(
        "daemonset-selector",
        selects(at(ds, "spec.selector")),
        || "the DaemonSet's selector must match its pod template labels".into(),
    );
    r.check(
        "podmonitor-selector",
        selects(at(pm, "spec.selector")),
        || {
            format!(
                "the PodMonitor's selector {} must select the DaemonSet's pods {pod_labels}",
                at(pm, "spec.selector")
            )
        },
    );
    let endpoints = at(pm, "spec.podMetricsEndpoints")
        .as_array()
        .cloned()
        .unwrap_or_default();
    r.check(
        "podmonitor-endpoint",
        endpoints.len() == 1
            && endpoints[0]["port"] == "metrics"
            && endpoints[0]["path"] == "/metrics"
            && endpoints[0]["interval"] == "30s",
        || {
            format!(
                "the PodMonitor must scrape port `metrics`, path /metrics, every 30s: {endpoints:?}"
            )
        },
    );
    // The agent's pod/namespace/container labels name what they measure; the
    // operator's target labels of the same names would rename them to
    // exported_* and break the dashboard and the alert rules.
    r.check(
        "podmonitor-honor-labels",
        endpoints.iter().all(|e| e["honorLabels"] == true),
        || format!("the PodMonitor's endpoints must set honorLabels: true: {endpoints:?}"),
    );
    let rule = the("PrometheusRule");
    r.check(
        "prometheusrule-labels",
        at(rule, "metadata.labels") == at(pm, "metadata.labels"),
        || "the PrometheusRule must carry the PodMonitor's labels (one selector for both)".into(),
    );
    r.finish("wiring");
}

#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = the("Kustomization");
    let listed: BTreeSet<String> = strings(&kustomization["resources"])
        .into_iter()
        .map(String::from)
        .collect();
    let files: BTreeSet<String> = manifests()
        .iter()
        .filter(|(_, docs)| !docs.iter().any(|d| d["kind"] == "Kustomization"))
        .map(|(file, _)| file.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(
        listed, files,
        "[kustomization-resources] kustomization.yaml must list exactly the other manifests of deploy/kubernetes"
    );
}
