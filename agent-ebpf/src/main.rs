//! goalloc's eBPF programs: uprobes on the Go runtime's allocators and on
//! goroutine creation and exit, aggregated per process in kernel maps.
#![no_std]
#![no_main]

mod alloc;
mod goroutine;
mod maps;
mod process;
mod profile;
mod regs;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
