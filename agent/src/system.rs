//! Checks that this process may load eBPF programs and that the kernel has
//! uprobes, so failures are one clear line instead of an errno from deep inside.

use std::{fs, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(
        "missing privileges: goalloc needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run it as root or grant them"
    )]
    MissingPrivileges,
    #[error(
        "this kernel has no uprobe support (no /sys/bus/event_source/devices/uprobe): goalloc needs a kernel built with CONFIG_UPROBE_EVENTS"
    )]
    NoUprobes,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

fn has_bpf_caps(caps: u64) -> bool {
    let has = |c: u32| caps & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Raises the soft limit on open files to the hard limit: every uprobe holds
/// a file descriptor (about 17 per Go 1.27 binary), and the usual soft limit
/// of 1024 would cap the agent at a few dozen binaries.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain data in and out.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::warn!("could not raise the open-files limit");
            }
        }
    }
}

/// Fails early with a clear reason when uprobes cannot work here.
pub fn preflight() -> Result<(), SystemError> {
    if let Some(caps) = effective_caps()
        && !has_bpf_caps(caps)
    {
        return Err(SystemError::MissingPrivileges);
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
        return Err(SystemError::NoUprobes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_parsing() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(status).unwrap();
        assert!(has_bpf_caps(caps));
        assert!(!has_bpf_caps(
            parse_cap_eff("CapEff:\t0000000000000000\n").unwrap()
        ));
        // CAP_BPF + CAP_PERFMON without CAP_SYS_ADMIN.
        assert!(has_bpf_caps((1 << 38) | (1 << 39)));
        assert!(!has_bpf_caps(1 << 39));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
