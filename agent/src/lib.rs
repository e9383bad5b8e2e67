//! goalloc: exact allocation and goroutine accounting for Go processes, from eBPF uprobes.

pub mod binary;
pub mod ebpf;
pub mod plan;
pub mod procfs;
pub mod prologue;
pub mod report;
pub mod system;
pub mod watch;
