//! Which processes get the per-allocation probes (`--exact-for`, and the pod
//! annotation `goalloc.io/exact: "true"`). Every other Go process is read
//! through its runtime counters only, at no cost to it.

use std::{fmt, str::FromStr};

use crate::registry::{PodNames, ProcessInfo};

/// One `--exact-for` selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every Go process.
    All,
    Pid(u32),
    /// A glob (`*`, `?`) on the executable's path; without a `/` it is
    /// matched against the file name alone.
    Exe(String),
    Namespace(String),
    Pod {
        namespace: String,
        name: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "malformed selector {0:?}: use all, pid=N, exe=GLOB, namespace=NS or pod=NS/NAME (repeat --exact-for for several)"
)]
pub struct SelectorError(String);

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Selector, SelectorError> {
        let bad = || SelectorError(s.to_string());
        if s == "all" {
            return Ok(Selector::All);
        }
        let (key, value) = s.split_once('=').ok_or_else(bad)?;
        if value.is_empty() {
            return Err(bad());
        }
        match key {
            "pid" => value.parse().map(Selector::Pid).map_err(|_| bad()),
            "exe" => Ok(Selector::Exe(value.to_string())),
            "namespace" => Ok(Selector::Namespace(value.to_string())),
            "pod" => {
                let (namespace, name) = value.split_once('/').ok_or_else(bad)?;
                if namespace.is_empty() || name.is_empty() || name.contains('/') {
                    return Err(bad());
                }
                Ok(Selector::Pod {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all"),
            Selector::Pid(p) => write!(f, "pid={p}"),
            Selector::Exe(g) => write!(f, "exe={g}"),
            Selector::Namespace(n) => write!(f, "namespace={n}"),
            Selector::Pod { namespace, name } => write!(f, "pod={namespace}/{name}"),
        }
    }
}

impl Selector {
    fn matches(&self, p: &ProcessInfo, pod: &PodNames) -> bool {
        match self {
            Selector::All => true,
            Selector::Pid(pid) => p.pid == *pid,
            Selector::Exe(pattern) => {
                let target = if pattern.contains('/') {
                    p.exe.as_str()
                } else {
                    p.exe.rsplit('/').next().unwrap_or_default()
                };
                glob_match(pattern.as_bytes(), target.as_bytes())
            }
            Selector::Namespace(ns) => !pod.namespace.is_empty() && pod.namespace == *ns,
            Selector::Pod { namespace, name } => pod.namespace == *namespace && pod.pod == *name,
        }
    }
}

/// The processes chosen for per-allocation probes, and what they may cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactSelection {
    pub selectors: Vec<Selector>,
    /// Honour the pod annotation `goalloc.io/exact: "true"`.
    pub pod_annotation: bool,
    /// The cost guard's budget per process, as a fraction of one CPU
    /// (`--exact-budget`); `None`: no guard (`goalloc watch --exact`, where
    /// the user asked for these very processes and sees the cost).
    pub budget: Option<f64>,
}

impl ExactSelection {
    /// Nobody: runtime counters only.
    pub fn none() -> ExactSelection {
        ExactSelection::default()
    }

    /// Everybody in scope (`goalloc watch --exact`).
    pub fn all() -> ExactSelection {
        ExactSelection {
            selectors: vec![Selector::All],
            pod_annotation: false,
            budget: None,
        }
    }

    /// Whether the process gets probes. `pod_asks`: its pod carries the
    /// annotation.
    pub fn wants(&self, p: &ProcessInfo, pod: &PodNames, pod_asks: bool) -> bool {
        (self.pod_annotation && pod_asks) || self.selectors.iter().any(|s| s.matches(p, pod))
    }
}

/// Shell-style glob: `*` any run of bytes, `?` one byte, everything else literal.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative with one backtrack point: linear enough for paths.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32, exe: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            comm: "svc".into(),
            exe: exe.into(),
            go_version: "go1.27.3".into(),
            cgroup: Default::default(),
        }
    }

    fn pod(ns: &str, name: &str) -> PodNames {
        PodNames {
            namespace: ns.into(),
            pod: name.into(),
            container: String::new(),
        }
    }

    #[test]
    fn parses_every_form_and_refuses_the_rest() {
        assert_eq!("all".parse(), Ok(Selector::All));
        assert_eq!("pid=42".parse(), Ok(Selector::Pid(42)));
        assert_eq!("exe=*/svc".parse(), Ok(Selector::Exe("*/svc".into())));
        assert_eq!(
            "namespace=shop".parse(),
            Ok(Selector::Namespace("shop".into()))
        );
        assert_eq!(
            "pod=shop/web-0".parse(),
            Ok(Selector::Pod {
                namespace: "shop".into(),
                name: "web-0".into()
            })
        );
        for bad in [
            "",
            "al",
            "pid=",
            "pid=x",
            "pid=-1",
            "exe=",
            "pod=shop",
            "pod=/x",
            "pod=a/b/c",
            "x=y",
            "namespace",
        ] {
            let e = bad.parse::<Selector>().unwrap_err();
            assert!(e.to_string().contains("pid=N, exe=GLOB"), "{bad}: {e}");
        }
        for s in ["all", "pid=7", "exe=/usr/bin/*", "namespace=a", "pod=a/b"] {
            assert_eq!(s.parse::<Selector>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"svc", b"svc"));
        assert!(!glob_match(b"svc", b"svc2"));
        assert!(glob_match(b"svc*", b"svc2"));
        assert!(glob_match(b"*/bin/*", b"/usr/bin/svc"));
        assert!(glob_match(b"s?c", b"sac"));
        assert!(!glob_match(b"s?c", b"sc"));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
    }

    #[test]
    fn selection() {
        let p = info(7, "/usr/local/bin/svc");
        let none = ExactSelection::none();
        assert!(!none.wants(&p, &PodNames::default(), true));
        assert!(ExactSelection::all().wants(&p, &PodNames::default(), false));
        let by = |s: &str| ExactSelection {
            selectors: vec![s.parse().unwrap()],
            pod_annotation: false,
            budget: None,
        };
        assert!(by("pid=7").wants(&p, &PodNames::default(), false));
        assert!(!by("pid=8").wants(&p, &PodNames::default(), false));
        assert!(by("exe=svc").wants(&p, &PodNames::default(), false));
        assert!(by("exe=/usr/local/*").wants(&p, &PodNames::default(), false));
        assert!(!by("exe=/usr/bin/*").wants(&p, &PodNames::default(), false));
        assert!(by("namespace=shop").wants(&p, &pod("shop", "web-0"), false));
        assert!(!by("namespace=shop").wants(&p, &PodNames::default(), false));
        assert!(by("pod=shop/web-0").wants(&p, &pod("shop", "web-0"), false));
        assert!(!by("pod=shop/web-1").wants(&p, &pod("shop", "web-0"), false));
        let annotated = ExactSelection {
            selectors: vec![],
            pod_annotation: true,
            budget: None,
        };
        assert!(annotated.wants(&p, &pod("shop", "web-0"), true));
        assert!(!annotated.wants(&p, &pod("shop", "web-0"), false));
    }
}
