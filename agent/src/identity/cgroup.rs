//! Which container and pod a process belongs to, from `/proc/PID/cgroup`.
//!
//! The container runtimes and the kubelet name the cgroup of every container
//! after the container id and the pod UID; that is the one link between a PID
//! (what the eBPF side sees) and the Kubernetes objects (what people query
//! metrics by). The layouts recognised here:
//!
//! | who made the cgroup | path (v1 controller line or v2 `0::` line) |
//! | --- | --- |
//! | kubelet, systemd driver | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope` (also `crio-`, `docker-`; `kubepods-besteffort-…`; guaranteed pods sit right under `kubepods.slice` as `kubepods-pod<uid>.slice`) |
//! | kubelet, cgroupfs driver | `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>` (CRI-O names the leaf `crio-<id>`) |
//! | kind / kubelet with a cgroup root | `/kubelet.slice/kubelet-kubepods.slice/…-pod<uid>.slice/cri-containerd-<id>.scope` |
//! | Docker | `/docker/<id>` (cgroupfs), `/system.slice/docker-<id>.scope` (systemd) |
//! | containerd without Kubernetes | `/default/<id>` (`ctr`: containerd's default spec uses `/<namespace>/<id>`), `/system.slice/nerdctl-<id>.scope` |
//! | a private cgroup namespace | `/` (nothing to learn), or paths relative to the reader's namespace root: `/../../kubepods-…-pod<uid>.slice/cri-containerd-<id>.scope` |
//! | the host | `/user.slice/…`, `/system.slice/foo.service`: no container |
//!
//! CRI-O runs a `conmon` monitor per container in `crio-conmon-<id>.scope`,
//! next to the container's own `crio-<id>.scope`. conmon is not the container
//! (it is CRI-O's C helper, never a Go program we would count), so for that
//! scope we report the pod and the runtime but *no* container id: attributing
//! its allocations to the container would be wrong.
//!
//! Static pods (kube-apiserver & co.) have a 32-hex-digit UID (the hash of the
//! manifest) instead of a dashed UUID; it is accepted in a `kubepods` context.
//!
//! Everything here is pure string work on untrusted text: any input yields a
//! (possibly empty) [`CgroupIdentity`], never a panic.

use std::{fmt, fs, io};

/// The container runtime that created the cgroup, when its name says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
}

impl Runtime {
    /// The name used in metric labels and in Kubernetes `containerID` URIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a process's cgroup path says about its container and pod. All fields
/// are `None` for a host process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// 64 lowercase hex digits, as in the pod's `status.containerStatuses[].containerID`
    /// after its `runtime://` prefix.
    pub container_id: Option<String>,
    /// The pod's `metadata.uid` with dashes (the systemd form's `_` undone), or
    /// the 32-hex-digit UID of a static pod.
    pub pod_uid: Option<String>,
    pub runtime: Option<Runtime>,
}

impl CgroupIdentity {
    /// How much a candidate line tells: a container beats a bare pod beats nothing.
    fn information(&self) -> u8 {
        u8::from(self.container_id.is_some()) * 2 + u8::from(self.pod_uid.is_some())
    }
}

/// Parses the text of `/proc/PID/cgroup` (v1, v2 or hybrid).
///
/// Every line is parsed; the one that tells the most wins, and among equally
/// informative lines the preferred hierarchy does: the unified `0::` line,
/// then `name=systemd`, `memory`, `cpu`/`cpuacct`, `pids`, then the rest. On
/// a hybrid host the unified line may be `/` or a systemd service while the
/// v1 controllers carry the container path, hence "most informative first".
pub fn parse_proc_cgroup(text: &str) -> CgroupIdentity {
    let mut best: Option<(u8, u8, CgroupIdentity)> = None;
    for line in text.lines() {
        // `hierarchy-ID:controller-list:cgroup-path`; the path itself may
        // contain ':' (cgroup names are arbitrary), so split at most twice.
        let mut parts = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let id = parse_path(path);
        let info = id.information();
        if info == 0 {
            continue;
        }
        let preference = hierarchy_preference(hierarchy, controllers);
        let better = match &best {
            None => true,
            Some((best_info, best_pref, _)) => {
                info > *best_info || (info == *best_info && preference < *best_pref)
            }
        };
        if better {
            best = Some((info, preference, id));
        }
    }
    best.map(|(_, _, id)| id).unwrap_or_default()
}

/// Reads and parses `/proc/<pid>/cgroup`.
///
/// Cgroup names are bytes, not necessarily UTF-8: invalid sequences are
/// replaced rather than failing the whole read (they cannot be part of an id).
pub fn read(pid: u32) -> io::Result<CgroupIdentity> {
    let bytes = fs::read(format!("/proc/{pid}/cgroup"))?;
    Ok(parse_proc_cgroup(&String::from_utf8_lossy(&bytes)))
}

/// Lower is preferred.
fn hierarchy_preference(hierarchy: &str, controllers: &str) -> u8 {
    if hierarchy == "0" && controllers.is_empty() {
        return 0;
    }
    let has = |name: &str| controllers.split(',').any(|c| c == name);
    if has("name=systemd") {
        1
    } else if has("memory") {
        2
    } else if has("cpu") || has("cpuacct") {
        3
    } else if has("pids") {
        4
    } else {
        5
    }
}

/// What one path component says about a container.
enum ContainerPart {
    Container {
        id: String,
        runtime: Option<Runtime>,
    },
    /// CRI-O's per-container monitor: in the pod, not in the container.
    Conmon,
}

/// Parses one cgroup path.
///
/// When a pod component is present, the container is the first container
/// component below it (a container that creates its own sub-cgroups, such as
/// Docker-in-Docker in a pod or crun's `…scope/container`, keeps the id that
/// Kubernetes knows). Without a pod, the innermost container component wins:
/// for `/docker/<outer>/docker/<inner>` the process runs in `<inner>`.
fn parse_path(path: &str) -> CgroupIdentity {
    // `..` appears when the reader sits in another cgroup namespace than the
    // process; the components after it are still the real names.
    let components: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();

    let mut pod: Option<(usize, String)> = None;
    for (i, component) in components.iter().enumerate() {
        let parent = i.checked_sub(1).and_then(|p| components.get(p)).copied();
        if let Some(uid) = pod_uid_of(parent, component) {
            pod = Some((i, uid));
        }
    }

    let start = pod.as_ref().map_or(0, |(i, _)| i + 1);
    let mut found: Option<ContainerPart> = None;
    for i in start..components.len() {
        let parent = i.checked_sub(1).and_then(|p| components.get(p)).copied();
        let Some(component) = components.get(i) else {
            break;
        };
        if let Some(part) = container_of(parent, component) {
            found = Some(part);
            if pod.is_some() {
                break;
            }
        }
    }

    let (container_id, runtime) = match found {
        Some(ContainerPart::Container { id, runtime }) => (Some(id), runtime),
        Some(ContainerPart::Conmon) => (None, Some(Runtime::CriO)),
        None => (None, None),
    };
    CgroupIdentity {
        container_id,
        pod_uid: pod.map(|(_, uid)| uid),
        runtime,
    }
}

/// `pod<uid>` (cgroupfs driver) or `<kubepods prefix>-pod<uid with _>.slice`
/// (systemd driver).
fn pod_uid_of(parent: Option<&str>, component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    // "kubepods" itself contains "pod", so take the last occurrence: hex
    // digits and separators never contain "pod", the uid follows it.
    let at = name.rfind("pod")?;
    let prefix = name.get(..at)?;
    let raw_uid = name.get(at + "pod".len()..)?;
    let kube_prefix = prefix.ends_with('-') && prefix.contains("kubepods");
    if !(prefix.is_empty() || kube_prefix) {
        return None;
    }
    // systemd uses '-' as its hierarchy separator, so the kubelet writes the
    // UID's dashes as underscores in slice names.
    let uid = raw_uid.replace('_', "-").to_ascii_lowercase();
    if is_uuid(&uid) {
        return Some(uid);
    }
    // A static pod's UID is a bare hash; too generic to accept outside a
    // kubelet-made parent (a `pod<32 hex>` directory could be anything).
    let kube_parent = matches!(
        parent,
        Some("kubepods" | "burstable" | "besteffort" | "guaranteed")
    );
    if is_hex(&uid, 32) && (kube_prefix || kube_parent) {
        return Some(uid);
    }
    None
}

fn container_of(parent: Option<&str>, component: &str) -> Option<ContainerPart> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if is_hex(name, 64) {
        // A bare id: only its parent tells the runtime. The kubelet's
        // cgroupfs layout (`pod<uid>/<id>`) does not say which runtime.
        let runtime = match parent {
            Some("docker") => Some(Runtime::Docker),
            // containerd's default OCI spec puts a container in
            // `/<namespace>/<id>`; "default" is ctr's namespace and "k8s.io"
            // the CRI plugin's.
            Some("default" | "k8s.io") => Some(Runtime::Containerd),
            _ => None,
        };
        return Some(ContainerPart::Container {
            id: name.to_ascii_lowercase(),
            runtime,
        });
    }
    let (prefix, id) = name.rsplit_once('-')?;
    if !is_hex(id, 64) {
        return None;
    }
    let runtime = match prefix {
        "crio-conmon" => return Some(ContainerPart::Conmon),
        "cri-containerd" | "containerd" | "nerdctl" => Some(Runtime::Containerd),
        "crio" => Some(Runtime::CriO),
        "docker" => Some(Runtime::Docker),
        // Other tools (podman's `libpod-<id>.scope`, …): still a container.
        _ => None,
    };
    Some(ContainerPart::Container {
        id: id.to_ascii_lowercase(),
        runtime,
    })
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| is_hex(g, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: &str = "c2f64e0c81ef9c630ac3200534ecd46cde0ef2c9ec891c1e7682a217e86ec29d";
    const C2: &str = "291a39b3288818d09877ae7f9db14481b36bfb9cfb5396dd17105f02d8398076";
    const C3: &str = "bf03f5dc4f4d0e4c15dff819d8b3b5df70d4d38ac3137ac53704946c26be9043";
    const C4: &str = "d3678fcd64c13a5a62c4535ea27a80067db7e57bb396e1dd65f847dcd9d1fd7e";
    const C5: &str = "7ff14329f1a67ee3e68034512ada2a53ade09ddfd7968f7418c547b515017879";
    const C6: &str = "32847e1bd1063208d715e0d8b88eef8ef34f9840cf0a23b871cbf14eb8dfb633";
    const C7: &str = "c2eb982bc16dbad90c41ab3a370bcccc78c6dc557befe495ccb23db8c57bb641";
    const C8: &str = "d9fd0c67ef4deeb68f167207b4db16826ffa40a62f2fb2c896e13feb983523f2";
    const C9: &str = "9c4956ef705247fb996c0a5ba91f8a5cef3d0866d7d7e65f4800c4b9e54f2230";
    const C10: &str = "b367872c8e16048cfb1ae444ddde439dd38a2596ef79ce0d3748b66a91abe89a";
    const U1: &str = "f82d8d36-c94c-432c-9632-da86f0f24e93";
    const U2: &str = "84152ae0-5857-47bc-a0b5-8edd5fb2a82c";
    const U3: &str = "4aa7aacd-841d-44c6-8a90-5793e1c7e99e";
    const U5: &str = "ae5f3df3-1e2a-46f3-9477-25ef0797f2c3";
    const U6: &str = "bb2b21a1-c971-49df-99b0-0e72505cf191";
    const STATIC: &str = "d61a4bcc81546e0162d2829a5c977a76";

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/{name}",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/identity/cgroup"
            )
        );
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
    }

    fn id(container: Option<&str>, pod: Option<&str>, runtime: Option<Runtime>) -> CgroupIdentity {
        CgroupIdentity {
            container_id: container.map(str::to_owned),
            pod_uid: pod.map(str::to_owned),
            runtime,
        }
    }

    #[test]
    fn fixtures() {
        use Runtime::*;
        let cases: &[(&str, CgroupIdentity)] = &[
            (
                "v2_systemd_containerd_burstable.txt",
                id(Some(C1), Some(U1), Some(Containerd)),
            ),
            (
                "v2_systemd_crio_besteffort.txt",
                id(Some(C2), Some(U2), Some(CriO)),
            ),
            // conmon: the pod, the runtime, but deliberately no container.
            ("v2_systemd_crio_conmon.txt", id(None, Some(U2), Some(CriO))),
            (
                "v2_systemd_crio_crun_subcgroup.txt",
                id(Some(C9), Some(U6), Some(CriO)),
            ),
            (
                "v2_systemd_docker_guaranteed.txt",
                id(Some(C3), Some(U3), Some(Docker)),
            ),
            (
                "v2_systemd_static_pod.txt",
                id(Some(C10), Some(STATIC), Some(Containerd)),
            ),
            ("v2_kind_node.txt", id(Some(C5), Some(U5), Some(Containerd))),
            (
                "v2_cgroupns_relative.txt",
                id(Some(C6), Some(U5), Some(Containerd)),
            ),
            ("v2_cgroupns_root.txt", id(None, None, None)),
            ("v2_docker_systemd.txt", id(Some(C7), None, Some(Docker))),
            (
                "v2_containerd_ctr.txt",
                id(Some(C8), None, Some(Containerd)),
            ),
            (
                "v2_nerdctl_systemd.txt",
                id(Some(C4), None, Some(Containerd)),
            ),
            ("v2_host_user_slice.txt", id(None, None, None)),
            ("v2_host_system_service.txt", id(None, None, None)),
            // cgroupfs driver: the path does not name the runtime.
            ("v1_cgroupfs_burstable.txt", id(Some(C1), Some(U1), None)),
            ("v1_cgroupfs_guaranteed.txt", id(Some(C3), Some(U3), None)),
            (
                "v1_cgroupfs_crio_besteffort.txt",
                id(Some(C2), Some(U2), Some(CriO)),
            ),
            (
                "v1_hybrid_systemd_containerd.txt",
                id(Some(C1), Some(U1), Some(Containerd)),
            ),
            ("v1_docker_cgroupfs.txt", id(Some(C7), None, Some(Docker))),
            ("v1_docker_in_docker.txt", id(Some(C8), None, Some(Docker))),
            ("v1_host_system_service.txt", id(None, None, None)),
            ("v1_sandbox_host.txt", id(None, None, None)),
        ];
        for (name, want) in cases {
            assert_eq!(&parse_proc_cgroup(&fixture(name)), want, "{name}");
        }
    }

    #[test]
    fn every_fixture_is_covered() {
        // A fixture added without an expectation would silently test nothing.
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/identity/cgroup"
        );
        let source = include_str!("cgroup.rs");
        for entry in fs::read_dir(dir).expect("fixture dir") {
            let name = entry.expect("dir entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                source.contains(&format!("\"{name}\"")),
                "fixture {name} has no expectation"
            );
        }
    }

    #[test]
    fn prefers_the_most_informative_then_the_preferred_hierarchy() {
        // Unified line says nothing, v1 memory line has the container.
        let text = format!("5:memory:/docker/{C7}\n0::/system.slice/docker.service\n");
        assert_eq!(
            parse_proc_cgroup(&text),
            id(Some(C7), None, Some(Runtime::Docker))
        );
        // Two informative lines that disagree: name=systemd beats pids,
        // whatever the order.
        let text = format!("8:pids:/docker/{C8}\n1:name=systemd:/docker/{C7}\n");
        assert_eq!(parse_proc_cgroup(&text).container_id.as_deref(), Some(C7));
        // The unified line beats everything.
        let text = format!("1:name=systemd:/docker/{C8}\n0::/system.slice/docker-{C7}.scope\n");
        assert_eq!(parse_proc_cgroup(&text).container_id.as_deref(), Some(C7));
    }

    #[test]
    fn pod_without_container_and_odd_names() {
        let slice = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice\n",
            U1.replace('-', "_")
        );
        assert_eq!(parse_proc_cgroup(&slice), id(None, Some(U1), None));
        // Upper-case hex is normalised; ids are compared as lower case.
        let upper = format!("0::/docker/{}\n", C7.to_ascii_uppercase());
        assert_eq!(parse_proc_cgroup(&upper).container_id.as_deref(), Some(C7));
        // A 32-hex `pod…` outside a kubelet tree is not a pod.
        let stray = format!("0::/system.slice/pod{STATIC}\n");
        assert_eq!(parse_proc_cgroup(&stray), CgroupIdentity::default());
        // Ids one digit short or long, or not hex, are not containers.
        for bad in [&C7[1..], &format!("{C7}0"), &C7.replace('c', "g")] {
            let text = format!("0::/system.slice/docker-{bad}.scope\n");
            assert_eq!(parse_proc_cgroup(&text), CgroupIdentity::default(), "{bad}");
        }
        // Not a pod: "pod" must start the name or follow a kubepods prefix.
        let text = format!("0::/system.slice/ipod{U1}.slice\n");
        assert_eq!(parse_proc_cgroup(&text), CgroupIdentity::default());
        // Podman: a container, runtime unknown to us.
        let text = format!("0::/machine.slice/libpod-{C4}.scope/container\n");
        assert_eq!(parse_proc_cgroup(&text), id(Some(C4), None, None));
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "",
            "\n\n",
            ":",
            "::",
            "0::",
            "0:::::",
            "x",
            "0::pod",
            "0::/kubepods/pod",
            "0::/kubepods-pod.slice",
            "0::/-pod\u{e9}\u{1F600}.slice/\u{e9}-",
            "1:name=systemd:/kubepods.slice/kubepods-podé_é.slice/cri-containerd-é.scope",
        ] {
            let _ = parse_proc_cgroup(text);
        }
        // A small deterministic xorshift fuzz over an alphabet that hits the
        // interesting separators and multi-byte characters.
        let alphabet: Vec<char> = "0123456789abcdef-_/:.\npodkubeslicescopecrio é😀"
            .chars()
            .collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut text = String::new();
            let len = (state % 200) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let pick = (state % alphabet.len() as u64) as usize;
                text.push(alphabet[pick]);
            }
            let _ = parse_proc_cgroup(&text);
        }
    }

    #[test]
    fn this_machine() {
        // The build/CI machine is a host (or sandbox) process, not in a container:
        // cgroups v1 with the unified hierarchy mounted beside them.
        let got = read(std::process::id()).expect("read /proc/self/cgroup");
        assert_eq!(got.pod_uid, None, "{got:?}");
        assert_eq!(got.container_id, None, "{got:?}");
    }

    #[test]
    fn missing_process_is_an_io_error() {
        // PIDs are at most 2^22 on Linux; u32::MAX never exists.
        assert!(read(u32::MAX).is_err());
    }

    #[test]
    fn runtime_names() {
        assert_eq!(Runtime::Containerd.to_string(), "containerd");
        assert_eq!(Runtime::CriO.as_str(), "cri-o");
        assert_eq!(Runtime::Docker.as_str(), "docker");
    }
}
