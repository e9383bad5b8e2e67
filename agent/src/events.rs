//! The kernel's process exec/exit events (raw tracepoints), as an async
//! stream of batches for the registry.

use agent_common::ProcEvent;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::ebpf::{Engine, EngineError};

/// Exec/exit events of every process on the host.
pub struct ProcessEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl ProcessEvents {
    /// Attaches the exec/exit tracepoints of `engine` and starts polling
    /// their ring buffer. Call once per engine, inside a tokio runtime.
    pub fn start(engine: &mut Engine) -> Result<ProcessEvents, EngineError> {
        let ring = engine.start_process_events()?;
        // SAFETY: the ring buffer owns its fd and the AsyncFd owns the ring
        // buffer, so the fd stays open exactly as long as it is registered.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| EngineError::Poll(e.into()))?;
        Ok(ProcessEvents { ring })
    }

    /// Waits for events and returns every one available.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<ProcEvent>> {
        let mut guard = self.ring.readable_mut().await?;
        let rb = guard.get_inner_mut();
        let mut out = Vec::new();
        while let Some(item) = rb.next() {
            if item.len() >= std::mem::size_of::<ProcEvent>() {
                // SAFETY: the kernel wrote a ProcEvent (plain integers, any bit
                // pattern valid); read unaligned from the ring.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ProcEvent>()) });
            }
        }
        guard.clear_ready();
        Ok(out)
    }
}
