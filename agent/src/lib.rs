//! goalloc: exact allocation and goroutine accounting for Go processes, from eBPF uprobes.

pub mod agent;
pub mod classify;
pub mod ebpf;
pub mod identity;
pub mod metrics;
pub mod procfs;
pub mod report;
pub mod system;
pub mod tracker;
pub mod watch;
