//! Tells the eBPF code which CPU's `pt_regs` layout to use (the same variable
//! aya-ebpf reads, so both agree): the architecture of
//! the machine the programs will run on (the build host unless overridden).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\"))");
    println!("cargo::rerun-if-env-changed=AYA_BPF_TARGET_ARCH");
    let arch = std::env::var("AYA_BPF_TARGET_ARCH").unwrap_or_else(|_| {
        let host = std::env::var("HOST").unwrap_or_default();
        host.split('-').next().unwrap_or_default().to_string()
    });
    println!("cargo::rustc-cfg=bpf_target_arch=\"{arch}\"");
}
