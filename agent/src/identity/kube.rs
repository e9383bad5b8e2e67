//! Pod metadata for the pods of this node, kept current from the Kubernetes API.
//!
//! The cgroup of a process gives its pod UID and container id
//! ([`super::cgroup`]); the labels people query by are namespace, pod and
//! container names. This module watches the pods of *this* node only
//! (`fieldSelector=spec.nodeName=<node>`: a DaemonSet on N nodes must not make
//! every agent hold and stream the whole cluster's pods) and keeps a map
//! pod UID → [`PodMetadata`].
//!
//! Outside a cluster there is nothing to ask: [`start_in_cluster`] returns
//! `Ok(None)` and the labels stay empty.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use ::kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use tokio::{sync::oneshot, task::JoinHandle};

/// The annotation a mirror pod (the API object of a static pod) carries: the
/// static pod's own UID, which is what the kubelet names its cgroup after. The
/// mirror pod's `metadata.uid` is a different, API-assigned UUID.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The annotation by which a pod asks for goalloc's per-allocation probes
/// (`"true"`); see `goalloc agent --exact-for`.
pub const EXACT_ANNOTATION: &str = "goalloc.io/exact";

/// How long [`start`] waits for the first complete list of the node's pods.
/// A node has at most a few hundred pods; an API server that cannot list them
/// in this time is unhealthy or unreachable, and the caller should know.
const INITIAL_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What the labels of one pod's processes are made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMetadata {
    pub namespace: String,
    pub pod: String,
    /// Container id (64 hex digits, no `runtime://` prefix) → container name,
    /// for regular, init and ephemeral containers.
    pub containers: HashMap<String, String>,
    /// The pod carries `goalloc.io/exact: "true"`.
    pub exact: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "NODE_NAME is not set: give the agent its node name through the downward API \
         (env NODE_NAME from fieldRef spec.nodeName)"
    )]
    MissingNodeName,
    #[error("the node name is empty")]
    EmptyNodeName,
    #[error("in-cluster Kubernetes configuration: {0}")]
    InCluster(#[from] ::kube::config::InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] ::kube::Error),
    #[error("listing or watching the pods of node {node}: {source}")]
    Watch {
        node: String,
        #[source]
        source: watcher::Error,
    },
    #[error("the pods of node {node} were not listed within {timeout:?}")]
    InitialSyncTimeout { node: String, timeout: Duration },
    #[error("the pod watcher of node {0} stopped before its first list completed")]
    WatcherStopped(String),
}

/// A cheaply cloneable handle on the pod index of this node. The background
/// watcher stops when the last clone is dropped.
#[derive(Clone)]
pub struct PodIndex {
    index: Arc<RwLock<Index>>,
    _watcher: Arc<AbortOnDrop>,
}

impl fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodIndex")
            .field("pods", &self.len())
            .finish()
    }
}

impl PodIndex {
    /// Namespace, pod name and (when known) container name for a process
    /// whose cgroup named `pod_uid` and `container_id`.
    ///
    /// `pod_uid` may be in the systemd form (underscores); a static pod's UID
    /// is matched through its mirror pod. When the UID is unknown (or empty,
    /// for a cgroup layout that names no pod), a known container id still
    /// finds its pod. The container is `None` when the kubelet has not
    /// reported its id yet (a just-started container) or for a pod's sandbox
    /// (pause) container, which has no status.
    pub fn lookup(
        &self,
        pod_uid: &str,
        container_id: Option<&str>,
    ) -> Option<(String, String, Option<String>)> {
        let container_id = container_id.map(normalise_container_id);
        let index = read(&self.index);
        let meta = index.pod(&normalise_uid(pod_uid)).or_else(|| {
            container_id
                .as_deref()
                .and_then(|id| index.pod_of_container(id))
        })?;
        let container = container_id
            .as_deref()
            .and_then(|id| meta.containers.get(id))
            .cloned();
        Some((meta.namespace.clone(), meta.pod.clone(), container))
    }

    /// Whether the pod of a process (found as by [`lookup`](Self::lookup))
    /// asks for per-allocation probes.
    pub fn exact_requested(&self, pod_uid: &str, container_id: Option<&str>) -> bool {
        let container_id = container_id.map(normalise_container_id);
        let index = read(&self.index);
        index
            .pod(&normalise_uid(pod_uid))
            .or_else(|| {
                container_id
                    .as_deref()
                    .and_then(|id| index.pod_of_container(id))
            })
            .is_some_and(|meta| meta.exact)
    }

    /// Number of pods currently known.
    pub fn len(&self) -> usize {
        read(&self.index).pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Starts watching the pods of `node_name` and returns once they have been
/// listed completely, so that lookups are meaningful from the start.
///
/// An error during that first list (RBAC forbidding `list pods`, an
/// unreachable API server) is returned, not retried: it is most likely a
/// deployment mistake and the caller decides whether to run without pod labels
/// or to exit (and let the DaemonSet restart it). After the first list, errors
/// are logged and the watch is resumed with kube-rs' default backoff; a
/// re-list (e.g. after `410 Gone`) rebuilds the index atomically, so lookups
/// keep answering from the previous state meanwhile.
pub async fn start(node_name: String, client: Client) -> Result<PodIndex, KubeError> {
    if node_name.trim().is_empty() {
        return Err(KubeError::EmptyNodeName);
    }
    let api: Api<Pod> = Api::all(client);
    let mut config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node_name}"))
        // resourceVersion=0: served from the API server's watch cache (which
        // indexes pods by spec.nodeName, as the kubelet lists them the same
        // way) rather than by a quorum read from etcd, once per node on a
        // fleet-wide rollout of this DaemonSet.
        .any_semantic();
    // kube-rs leaves resourceVersion=0 out of paginated lists; one node's
    // pods (a few hundred at most) need no pagination anyway.
    config.page_size = None;
    let index = Arc::new(RwLock::new(Index::default()));
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(run(
        api,
        config,
        Arc::clone(&index),
        ready_tx,
        node_name.clone(),
    ));
    let watcher = Arc::new(AbortOnDrop(Some(task)));
    match tokio::time::timeout(INITIAL_SYNC_TIMEOUT, ready_rx).await {
        Ok(Ok(Ok(()))) => Ok(PodIndex {
            index,
            _watcher: watcher,
        }),
        // Dropping `watcher` here aborts the task.
        Ok(Ok(Err(source))) => Err(KubeError::Watch {
            node: node_name,
            source,
        }),
        Ok(Err(_closed)) => Err(KubeError::WatcherStopped(node_name)),
        Err(_elapsed) => Err(KubeError::InitialSyncTimeout {
            node: node_name,
            timeout: INITIAL_SYNC_TIMEOUT,
        }),
    }
}

/// [`start`] with the in-cluster configuration (service account token and CA)
/// and the node name from the `NODE_NAME` environment variable.
///
/// Returns `Ok(None)`, without touching the network or the file system, when
/// not running in a cluster (no `KUBERNETES_SERVICE_HOST`).
pub async fn start_in_cluster() -> Result<Option<PodIndex>, KubeError> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none_or(|host| host.is_empty()) {
        return Ok(None);
    }
    let node_name = std::env::var("NODE_NAME").map_err(|_| KubeError::MissingNodeName)?;
    let config = ::kube::Config::incluster()?;
    let client = Client::try_from(config)?;
    start(node_name, client).await.map(Some)
}

async fn run(
    api: Api<Pod>,
    config: watcher::Config,
    index: Arc<RwLock<Index>>,
    ready: oneshot::Sender<Result<(), watcher::Error>>,
    node: String,
) {
    let mut ready = Some(ready);
    // A (re)list is collected here and swapped in whole at InitDone: pods
    // deleted while the watch was broken must disappear, and lookups must not
    // see a half-filled index meanwhile.
    let mut relist: Option<Index> = None;
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => relist = Some(Index::default()),
            Ok(watcher::Event::InitApply(pod)) => {
                relist.get_or_insert_with(Index::default).apply(&pod);
            }
            Ok(watcher::Event::InitDone) => {
                let fresh = relist.take().unwrap_or_default();
                log::debug!("pods of node {node} listed: {}", fresh.pods.len());
                *write(&index) = fresh;
                if let Some(ready) = ready.take() {
                    // The receiver is gone only if `start` gave up (timeout).
                    let _ = ready.send(Ok(()));
                }
            }
            Ok(watcher::Event::Apply(pod)) => write(&index).apply(&pod),
            Ok(watcher::Event::Delete(pod)) => write(&index).delete(&pod),
            Err(error) => match ready.take() {
                Some(ready) => {
                    let _ = ready.send(Err(error));
                    return;
                }
                None => log::warn!("watching the pods of node {node}: {error} (retrying)"),
            },
        }
    }
}

/// Aborts the watcher task when the last [`PodIndex`] clone goes away. The
/// task holds only the index, not this guard, so there is no cycle.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Entry {
    meta: PodMetadata,
    /// For a mirror pod, the static pod's UID (see [`MIRROR_ANNOTATION`]).
    mirror_of: Option<String>,
    container_ids: Vec<String>,
}

#[derive(Debug, Default)]
struct Index {
    /// By `metadata.uid`.
    pods: HashMap<String, Entry>,
    /// Static pod UID → mirror pod `metadata.uid`.
    mirrors: HashMap<String, String>,
    /// Container id → pod `metadata.uid`.
    containers: HashMap<String, String>,
}

impl Index {
    fn pod(&self, uid: &str) -> Option<&PodMetadata> {
        let uid = self.mirrors.get(uid).map_or(uid, String::as_str);
        self.pods.get(uid).map(|entry| &entry.meta)
    }

    fn pod_of_container(&self, container_id: &str) -> Option<&PodMetadata> {
        let uid = self.containers.get(container_id)?;
        self.pods.get(uid).map(|entry| &entry.meta)
    }

    fn apply(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref().filter(|uid| !uid.is_empty()) else {
            // Every API pod has a UID; a pod without one cannot be looked up.
            log::debug!("ignoring pod {:?} without a UID", pod.metadata.name);
            return;
        };
        let uid = normalise_uid(uid).into_owned();
        self.remove(&uid);

        let mut containers = HashMap::new();
        if let Some(status) = &pod.status {
            let all = [
                &status.init_container_statuses,
                &status.container_statuses,
                &status.ephemeral_container_statuses,
            ];
            for statuses in all.into_iter().flatten() {
                for status in statuses {
                    for id in status_container_ids(status) {
                        containers.insert(id, status.name.clone());
                    }
                }
            }
        }
        let mirror_of = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_ANNOTATION))
            .map(|hash| normalise_uid(hash).into_owned())
            .filter(|hash| !hash.is_empty() && *hash != uid);

        if let Some(static_uid) = &mirror_of {
            self.mirrors.insert(static_uid.clone(), uid.clone());
        }
        for id in containers.keys() {
            self.containers.insert(id.clone(), uid.clone());
        }
        let entry = Entry {
            container_ids: containers.keys().cloned().collect(),
            meta: PodMetadata {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                pod: pod.metadata.name.clone().unwrap_or_default(),
                containers,
                exact: pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(EXACT_ANNOTATION))
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            },
            mirror_of,
        };
        self.pods.insert(uid, entry);
    }

    fn delete(&mut self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.remove(&normalise_uid(uid));
        }
    }

    fn remove(&mut self, uid: &str) {
        let Some(old) = self.pods.remove(uid) else {
            return;
        };
        if let Some(static_uid) = old.mirror_of
            && self.mirrors.get(&static_uid).is_some_and(|u| u == uid)
        {
            self.mirrors.remove(&static_uid);
        }
        for id in old.container_ids {
            if self.containers.get(&id).is_some_and(|u| u == uid) {
                self.containers.remove(&id);
            }
        }
    }
}

/// The container ids a status names: the running one and, for a restarted
/// container, the previous one. The previous process is gone, but its last
/// samples may still be attributed after it exited; keeping the id costs a
/// map entry until the next restart replaces it.
fn status_container_ids(status: &ContainerStatus) -> impl Iterator<Item = String> + '_ {
    let previous = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.container_id.as_deref());
    status
        .container_id
        .as_deref()
        .into_iter()
        .chain(previous)
        .map(normalise_container_id)
        .filter(|id| !id.is_empty())
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`, lower case
/// (the cgroup side is lower case too).
fn normalise_container_id(id: &str) -> String {
    let bare = id.split_once("://").map_or(id, |(_, rest)| rest);
    bare.trim().to_ascii_lowercase()
}

/// The systemd cgroup form writes the UID's dashes as underscores.
fn normalise_uid(uid: &str) -> Cow<'_, str> {
    if uid.bytes().any(|b| b == b'_' || b.is_ascii_uppercase()) {
        Cow::Owned(uid.replace('_', "-").to_ascii_lowercase())
    } else {
        Cow::Borrowed(uid)
    }
}

// A writer that panicked cannot leave the maps half-updated in a way that
// matters more than losing all pod labels would: keep serving.
fn read(lock: &RwLock<Index>) -> RwLockReadGuard<'_, Index> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(lock: &RwLock<Index>) -> RwLockWriteGuard<'_, Index> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "c2f64e0c81ef9c630ac3200534ecd46cde0ef2c9ec891c1e7682a217e86ec29d";
    const A_OLD: &str = "291a39b3288818d09877ae7f9db14481b36bfb9cfb5396dd17105f02d8398076";
    const INIT: &str = "bf03f5dc4f4d0e4c15dff819d8b3b5df70d4d38ac3137ac53704946c26be9043";
    const DEBUG: &str = "d3678fcd64c13a5a62c4535ea27a80067db7e57bb396e1dd65f847dcd9d1fd7e";
    const API: &str = "7ff14329f1a67ee3e68034512ada2a53ade09ddfd7968f7418c547b515017879";
    const UID: &str = "f82d8d36-c94c-432c-9632-da86f0f24e93";
    const MIRROR_UID: &str = "84152ae0-5857-47bc-a0b5-8edd5fb2a82c";
    const STATIC_UID: &str = "d61a4bcc81546e0162d2829a5c977a76";

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod JSON")
    }

    fn web() -> Pod {
        pod(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": UID},
            "status": {
                "initContainerStatuses": [{
                    "name": "migrate", "containerID": format!("containerd://{INIT}"),
                    "image": "x", "imageID": "", "ready": true, "restartCount": 0
                }],
                "containerStatuses": [{
                    "name": "app", "containerID": format!("containerd://{A}"),
                    "image": "x", "imageID": "", "ready": true, "restartCount": 1,
                    "lastState": {"terminated": {"exitCode": 2, "containerID": format!("containerd://{A_OLD}")}}
                }],
                "ephemeralContainerStatuses": [{
                    "name": "debugger", "containerID": format!("cri-o://{DEBUG}"),
                    "image": "x", "imageID": "", "ready": false, "restartCount": 0
                }]
            }
        }))
    }

    /// An index with no watcher behind it.
    fn handle(index: Index) -> PodIndex {
        PodIndex {
            index: Arc::new(RwLock::new(index)),
            _watcher: Arc::new(AbortOnDrop(None)),
        }
    }

    fn some(
        ns: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Option<(String, String, Option<String>)> {
        Some((ns.into(), pod.into(), container.map(str::to_owned)))
    }

    #[test]
    fn exact_annotation() {
        let mut index = Index::default();
        index.apply(&web());
        let mut asked = web();
        asked.metadata.uid = Some(MIRROR_UID.into());
        asked.metadata.name = Some("web-1".into());
        asked.metadata.annotations = Some(
            [(EXACT_ANNOTATION.to_string(), "True".to_string())]
                .into_iter()
                .collect(),
        );
        asked.status = None;
        index.apply(&asked);
        let pods = handle(index);
        assert!(!pods.exact_requested(UID, Some(A)));
        assert!(pods.exact_requested(MIRROR_UID, None));
        assert!(!pods.exact_requested("unknown", None));
    }

    #[test]
    fn all_kinds_of_containers() {
        let mut index = Index::default();
        index.apply(&web());
        let pods = handle(index);
        assert_eq!(
            pods.lookup(UID, Some(A)),
            some("shop", "web-0", Some("app"))
        );
        assert_eq!(
            pods.lookup(UID, Some(A_OLD)),
            some("shop", "web-0", Some("app"))
        );
        assert_eq!(
            pods.lookup(UID, Some(INIT)),
            some("shop", "web-0", Some("migrate"))
        );
        assert_eq!(
            pods.lookup(UID, Some(DEBUG)),
            some("shop", "web-0", Some("debugger"))
        );
        // A sandbox or not-yet-reported container: the pod, no container.
        assert_eq!(pods.lookup(UID, Some(API)), some("shop", "web-0", None));
        assert_eq!(pods.lookup(UID, None), some("shop", "web-0", None));
        // systemd-form UID, upper-case container id.
        let systemd_uid = UID.replace('-', "_");
        assert_eq!(
            pods.lookup(&systemd_uid, Some(&A.to_ascii_uppercase())),
            some("shop", "web-0", Some("app"))
        );
        // Unknown UID: found through the container id alone, or not at all.
        assert_eq!(pods.lookup("", Some(A)), some("shop", "web-0", Some("app")));
        assert_eq!(pods.lookup(MIRROR_UID, None), None);
        assert_eq!(pods.len(), 1);
    }

    #[test]
    fn apply_replaces_and_delete_removes() {
        let mut index = Index::default();
        index.apply(&web());
        // The container restarted again: the status no longer names A_OLD.
        let mut newer = web();
        if let Some(status) = newer.status.as_mut() {
            status.init_container_statuses = None;
            status.ephemeral_container_statuses = None;
            status.container_statuses = Some(vec![ContainerStatus {
                name: "app".into(),
                container_id: Some(format!("containerd://{API}")),
                ..Default::default()
            }]);
        }
        index.apply(&newer);
        assert_eq!(index.containers.len(), 1);
        assert_eq!(
            index.pod(UID).map(|m| m.containers.clone()),
            Some(HashMap::from([(API.to_owned(), "app".to_owned())]))
        );
        index.delete(&newer);
        assert!(index.pods.is_empty() && index.containers.is_empty());
    }

    #[test]
    fn static_pods_through_their_mirror() {
        let mirror = pod(serde_json::json!({
            "metadata": {
                "name": "kube-apiserver-node-a", "namespace": "kube-system", "uid": MIRROR_UID,
                "annotations": {MIRROR_ANNOTATION: STATIC_UID, "kubernetes.io/config.hash": STATIC_UID}
            },
            "status": {"containerStatuses": [{
                "name": "kube-apiserver", "containerID": format!("containerd://{API}"),
                "image": "x", "imageID": "", "ready": true, "restartCount": 0
            }]}
        }));
        let mut index = Index::default();
        index.apply(&mirror);
        let pods = handle(index);
        let want = some(
            "kube-system",
            "kube-apiserver-node-a",
            Some("kube-apiserver"),
        );
        assert_eq!(pods.lookup(STATIC_UID, Some(API)), want);
        assert_eq!(pods.lookup(MIRROR_UID, Some(API)), want);
        write(&pods.index).delete(&mirror);
        assert_eq!(pods.lookup(STATIC_UID, Some(API)), None);
        assert!(read(&pods.index).mirrors.is_empty());
    }

    #[test]
    fn odd_pods_are_harmless() {
        let mut index = Index::default();
        // No UID: ignored. No status, no namespace: kept with what there is.
        index.apply(&pod(serde_json::json!({"metadata": {"name": "x"}})));
        index.apply(&pod(serde_json::json!({"metadata": {"uid": UID}})));
        index.apply(&pod(serde_json::json!({
            "metadata": {"uid": MIRROR_UID, "name": "p", "namespace": "n"},
            "status": {"containerStatuses": [
                {"name": "waiting", "image": "x", "imageID": "", "ready": false, "restartCount": 0},
                {"name": "blank", "containerID": "", "image": "x", "imageID": "", "ready": false, "restartCount": 0}
            ]}
        })));
        assert_eq!(index.pods.len(), 2);
        assert!(index.containers.is_empty());
        index.delete(&pod(serde_json::json!({"metadata": {"name": "x"}})));
        assert_eq!(index.pods.len(), 2);
    }

    #[test]
    fn container_id_prefixes() {
        assert_eq!(normalise_container_id(&format!("containerd://{A}")), A);
        assert_eq!(normalise_container_id(&format!("cri-o://{A}")), A);
        assert_eq!(normalise_container_id(&format!("docker://{A}")), A);
        assert_eq!(normalise_container_id(A), A);
        assert_eq!(normalise_container_id("containerd://"), "");
    }

    #[tokio::test]
    async fn not_in_a_cluster() {
        // The test process is not a pod (the CI machine sets no such variable).
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            assert!(matches!(start_in_cluster().await, Ok(None)));
        }
    }

    #[tokio::test]
    async fn empty_node_name_is_refused() {
        let config = ::kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
        let client = Client::try_from(config).expect("client");
        assert!(matches!(
            start(" ".into(), client).await,
            Err(KubeError::EmptyNodeName)
        ));
    }
}
