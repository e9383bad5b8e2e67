//! goalloc: exact allocation and goroutine accounting for Go processes, from eBPF uprobes.

pub mod agent;
pub mod attachments;
pub mod classify;
pub mod ebpf;
pub mod events;
pub mod exporter;
pub mod guard;
pub mod identity;
pub mod procfs;
pub mod profile;
pub mod registry;
pub mod report;
pub mod runtime;
pub mod select;
pub mod system;
pub mod top;
pub mod watch;
