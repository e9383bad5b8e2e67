//! Reading bytes at virtual addresses: of a live process (`process_vm_readv`
//! with many iovecs per call, falling back to `/proc/PID/mem`), or of an
//! executable's file image (what the loader would map, before the program
//! runs: initialised data, and zeros for `.bss`).
//!
//! Everything read through [`Memory`] is untrusted: the caller checks every
//! value before using it as an address or a length.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use crate::binary::elf::Elf;

/// Most iovecs one `process_vm_readv` call takes (`UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Why bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The process has exited (ESRCH, ENOENT, or its memory is gone).
    #[error("the process has exited")]
    Gone,
    /// EPERM/EACCES: no ptrace "attach" access to the process.
    #[error(
        "access to the process's memory denied: needs ptrace attach access (CAP_SYS_PTRACE for other users' processes, and Yama ptrace_scope (/proc/sys/kernel/yama/ptrace_scope) must be < 3)"
    )]
    AccessDenied,
    /// The address is not mapped (EFAULT/EIO), or not in the file image.
    #[error("address {addr:#x} ({len} bytes) is not readable in the target")]
    Unmapped { addr: u64, len: usize },
    #[error("reading process memory: {0}")]
    Io(#[source] io::Error),
}

impl MemoryError {
    fn from_errno(e: io::Error, addr: u64, len: usize) -> MemoryError {
        match e.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => MemoryError::Gone,
            Some(libc::EPERM) | Some(libc::EACCES) => MemoryError::AccessDenied,
            Some(libc::EFAULT) | Some(libc::EIO) => MemoryError::Unmapped { addr, len },
            _ => MemoryError::Io(e),
        }
    }
}

/// One read: `buf.len()` bytes at `addr`.
pub struct ReadRequest<'a> {
    pub addr: u64,
    pub buf: &'a mut [u8],
}

/// A source of bytes at virtual addresses.
pub trait Memory {
    /// Fills every request completely, or fails. Requests are served in
    /// order (a caller relying on the runtime's store order, e.g. reading
    /// `allglen` before `allgptr`, puts them in that order).
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), MemoryError>;

    /// Fills `buf` from `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.read_many(&mut [ReadRequest { addr, buf }])
    }
}

/// The memory of a live process, by pid (host pid namespace).
#[derive(Debug)]
pub struct ProcessMemory {
    pid: u32,
    /// `/proc/PID/mem`, opened the first time `process_vm_readv` is not
    /// available (ENOSYS, e.g. under a seccomp filter).
    mem: OnceLock<File>,
    use_mem_file: OnceLock<bool>,
}

impl ProcessMemory {
    /// No system call happens here: access is checked at the first read.
    pub fn new(pid: u32) -> ProcessMemory {
        ProcessMemory {
            pid,
            mem: OnceLock::new(),
            use_mem_file: OnceLock::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `process_vm_readv` for up to [`IOV_MAX`] requests. Returns how many
    /// bytes were read: the kernel stops at the first iovec it cannot read.
    fn vm_readv(&self, reqs: &mut [ReadRequest<'_>]) -> io::Result<usize> {
        let local: Vec<libc::iovec> = reqs
            .iter_mut()
            .map(|r| libc::iovec {
                iov_base: r.buf.as_mut_ptr().cast(),
                iov_len: r.buf.len(),
            })
            .collect();
        let remote: Vec<libc::iovec> = reqs
            .iter()
            .map(|r| libc::iovec {
                // The remote address is only a number for the kernel.
                iov_base: r.addr as usize as *mut libc::c_void,
                iov_len: r.buf.len(),
            })
            .collect();
        let pid = libc::pid_t::try_from(self.pid)
            .map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: `local` describes buffers we exclusively borrow for the
        // duration of the call (`reqs` is borrowed mutably), each of exactly
        // its length; `remote` is only interpreted in the target's address
        // space, where the kernel checks it. Both counts match the vectors.
        let n = unsafe {
            libc::process_vm_readv(
                pid,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn mem_file(&self) -> Result<&File, MemoryError> {
        if let Some(f) = self.mem.get() {
            return Ok(f);
        }
        let f = File::open(format!("/proc/{}/mem", self.pid))
            .map_err(|e| MemoryError::from_errno(e, 0, 0))?;
        Ok(self.mem.get_or_init(|| f))
    }

    /// One request through `/proc/PID/mem`.
    fn pread(&self, req: &mut ReadRequest<'_>) -> Result<(), MemoryError> {
        let (addr, len) = (req.addr, req.buf.len());
        let f = self.mem_file()?;
        let mut done = 0;
        while done < len {
            let Some(buf) = req.buf.get_mut(done..) else {
                break;
            };
            match f.read_at(buf, addr.wrapping_add(done as u64)) {
                // EOF on /proc/PID/mem: the address space is gone (exited).
                Ok(0) => {
                    return Err(if self.exists() {
                        MemoryError::Unmapped { addr, len }
                    } else {
                        MemoryError::Gone
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(MemoryError::from_errno(e, addr, len)),
            }
        }
        Ok(())
    }

    fn exists(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}/stat", self.pid)).exists()
    }
}

impl Memory for ProcessMemory {
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), MemoryError> {
        if *self.use_mem_file.get().unwrap_or(&false) {
            return reqs.iter_mut().try_for_each(|r| self.pread(r));
        }
        for chunk in reqs.chunks_mut(IOV_MAX) {
            let want: usize = chunk.iter().map(|r| r.buf.len()).sum();
            let got = match self.vm_readv(chunk) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    let _ = self.use_mem_file.set(true);
                    chunk.iter_mut().try_for_each(|r| self.pread(r))?;
                    continue;
                }
                Err(e) => {
                    let (addr, len) = chunk.first().map_or((0, 0), |r| (r.addr, r.buf.len()));
                    return Err(MemoryError::from_errno(e, addr, len));
                }
            };
            if got == want {
                continue;
            }
            // A partial read: the kernel stopped at an iovec it could not
            // read (a torn page or an unmapped address). Redo the rest one
            // by one through /proc/PID/mem to name the culprit.
            let mut skip = got;
            for r in chunk.iter_mut() {
                if skip >= r.buf.len() {
                    skip -= r.buf.len();
                    continue;
                }
                skip = 0;
                self.pread(r)?;
            }
        }
        Ok(())
    }
}

/// An executable's file image at its link-time addresses: bytes of the
/// PT_LOAD segments, zeros where a segment's memory is larger than its file
/// part (`.bss`, `.noptrbss`). What a process of this binary holds before
/// it runs; used by tests and tools.
pub struct FileImage<'a> {
    data: &'a [u8],
    elf: Elf,
}

impl<'a> FileImage<'a> {
    pub fn new(data: &'a [u8]) -> Result<FileImage<'a>, crate::binary::elf::ElfError> {
        Ok(FileImage {
            data,
            elf: Elf::parse(data)?,
        })
    }

    fn read_one(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        let unmapped = MemoryError::Unmapped { addr, len };
        let end = addr
            .checked_add(len as u64)
            .ok_or(MemoryError::Unmapped { addr, len })?;
        let seg = self
            .elf
            .load_segments()
            .find(|s| addr >= s.vaddr && end <= s.vaddr.saturating_add(s.memsz))
            .ok_or(unmapped)?;
        for (i, b) in buf.iter_mut().enumerate() {
            let off = addr - seg.vaddr + i as u64;
            *b = if off < seg.filesz {
                let at = seg.offset.checked_add(off);
                at.and_then(|a| usize::try_from(a).ok())
                    .and_then(|a| self.data.get(a))
                    .copied()
                    .ok_or(MemoryError::Unmapped { addr, len })?
            } else {
                0
            };
        }
        Ok(())
    }
}

impl Memory for FileImage<'_> {
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), MemoryError> {
        reqs.iter_mut()
            .try_for_each(|r| self.read_one(r.addr, r.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_in_batches() {
        // More requests than one process_vm_readv call takes.
        let src: Vec<u64> = (0..3000u64).collect();
        let mut bufs = vec![[0u8; 8]; src.len()];
        let mem = ProcessMemory::new(std::process::id());
        let mut reqs: Vec<ReadRequest<'_>> = bufs
            .iter_mut()
            .zip(&src)
            .map(|(b, v)| ReadRequest {
                addr: v as *const u64 as u64,
                buf: b,
            })
            .collect();
        mem.read_many(&mut reqs).unwrap();
        for (b, v) in bufs.iter().zip(&src) {
            assert_eq!(u64::from_le_bytes(*b), *v);
        }
    }

    #[test]
    fn unmapped_address_is_reported() {
        let mem = ProcessMemory::new(std::process::id());
        let x = 7u64;
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        let mut reqs = [
            ReadRequest {
                addr: &x as *const u64 as u64,
                buf: &mut a,
            },
            ReadRequest {
                addr: 8,
                buf: &mut b,
            },
        ];
        assert!(matches!(
            mem.read_many(&mut reqs),
            Err(MemoryError::Unmapped { addr: 8, .. })
        ));
    }

    #[test]
    fn exited_process_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mem = ProcessMemory::new(pid);
        let mut b = [0u8; 8];
        assert!(matches!(mem.read(0x400000, &mut b), Err(MemoryError::Gone)));
    }
}
