//! Who a process is in container and Kubernetes terms, for metric labels.
//!
//! [`cgroup`] reads the container id and pod UID a process's cgroup path
//! encodes (pure parsing of `/proc/PID/cgroup`); [`kube`] maps pod UIDs and
//! container ids to namespace, pod and container names through a watch on
//! this node's pods. Outside Kubernetes only the first applies.

pub mod cgroup;
pub mod kube;
