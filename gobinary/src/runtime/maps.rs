//! The load bias of a process's executable, from `/proc/PID/maps`.
//!
//! Addresses found in the file (symbols, anchors) are link-time; a PIE is
//! loaded elsewhere. The executable's mappings are found by the (device,
//! inode) of `/proc/PID/exe`, not by path: paths in `maps` are in the
//! target's mount namespace (a container's), which the agent does not share.
//! When no mapping has that identity (overlayfs shows the underlying file on
//! some kernels), the path `/proc/PID/exe` links to is used: the kernel
//! writes both with the same `d_path`, in the target's namespace.

use std::io;

use crate::binary::elf::Segment;

/// Page size assumed for the bias check (4 KiB on amd64; a bias is a multiple
/// of the page size on every Linux architecture).
const PAGE: u64 = 4096;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// e.g. "r-xp".
    pub perms: String,
    /// File offset of `start`.
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// Path (may end in " (deleted)"), empty for anonymous mappings.
    pub path: String,
}

/// Which file the executable is, as `maps` shows files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The target of `/proc/PID/exe`, for the fallback by path.
    pub path: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("the process has exited")]
    Gone,
    #[error(
        "cannot read the process's maps or executable: permission denied (needs ptrace read access: CAP_SYS_PTRACE for other users' processes)"
    )]
    AccessDenied,
    #[error("reading {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("malformed /proc/PID/maps line {0:?}")]
    Malformed(String),
    #[error(
        "the executable is not mapped in the process (no mapping of inode {inode} on {major}:{minor}, nor of its path)"
    )]
    NotMapped { major: u32, minor: u32, inode: u64 },
    #[error("inconsistent load bias of the executable's segments: {0:#x} vs {1:#x}")]
    Inconsistent(u64, u64),
    #[error("load bias {0:#x} is not page aligned")]
    Unaligned(u64),
    #[error("non-PIE executable mapped at a bias of {0:#x}: the file is not what runs")]
    NonPieMoved(u64),
}

fn io_error(what: String, source: io::Error) -> MapsError {
    match source.raw_os_error() {
        Some(libc::ESRCH) | Some(libc::ENOENT) => MapsError::Gone,
        Some(libc::EPERM) | Some(libc::EACCES) => MapsError::AccessDenied,
        _ => MapsError::Io { what, source },
    }
}

/// Parses the text of `/proc/PID/maps`. Lines are
/// `start-end perms offset major:minor inode [path]` (hex except the inode).
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>, MapsError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| parse_line(line).ok_or_else(|| MapsError::Malformed(line.to_string())))
        .collect()
}

fn parse_line(line: &str) -> Option<MapEntry> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let t = rest.trim_start_matches(' ');
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let (start, end) = field()?.split_once('-')?;
    let perms = field()?.to_string();
    let offset = u64::from_str_radix(field()?, 16).ok()?;
    let (major, minor) = field()?.split_once(':')?;
    let inode = field()?.parse().ok()?;
    // The path is the rest after the padding, and may contain spaces.
    let path = rest.trim_start_matches(' ').to_string();
    let entry = MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode,
        path,
    };
    (entry.start <= entry.end).then_some(entry)
}

/// The load bias of the executable: for each executable PT_LOAD that an
/// executable mapping of the file covers, `map.start + (seg.offset -
/// map.offset) - seg.vaddr`. All must agree and be page aligned; a non-PIE
/// must have 0. Only executable mappings are used: the file ranges of
/// neighbouring data segments share pages (the Go linker packs them), so a
/// file offset alone can lie in two mappings, and RELRO re-protects part of
/// the data; text is mapped once, whole.
pub fn load_bias(
    maps: &[MapEntry],
    exe: &FileIdentity,
    segments: &[Segment],
    pie: bool,
) -> Result<u64, MapsError> {
    let by_id: Vec<&MapEntry> = maps
        .iter()
        .filter(|m| {
            m.inode == exe.inode
                && m.inode != 0
                && m.dev_major == exe.dev_major
                && m.dev_minor == exe.dev_minor
        })
        .collect();
    let mine: Vec<&MapEntry> = if by_id.is_empty() {
        maps.iter()
            .filter(|m| {
                exe.path
                    .as_deref()
                    .is_some_and(|p| !p.is_empty() && m.path == p)
            })
            .collect()
    } else {
        by_id
    };
    let mut bias = None;
    for seg in segments.iter().filter(|s| s.is_exec() && s.filesz > 0) {
        let Some(m) = mine.iter().find(|m| {
            m.perms.as_bytes().get(2) == Some(&b'x')
                && m.offset <= seg.offset
                && seg.offset - m.offset < m.end - m.start
        }) else {
            continue;
        };
        let b = m
            .start
            .wrapping_add(seg.offset - m.offset)
            .wrapping_sub(seg.vaddr);
        match bias {
            None => bias = Some(b),
            Some(prev) if prev != b => return Err(MapsError::Inconsistent(prev, b)),
            Some(_) => {}
        }
    }
    let bias = bias.ok_or(MapsError::NotMapped {
        major: exe.dev_major,
        minor: exe.dev_minor,
        inode: exe.inode,
    })?;
    if bias % PAGE != 0 {
        return Err(MapsError::Unaligned(bias));
    }
    if !pie && bias != 0 {
        return Err(MapsError::NonPieMoved(bias));
    }
    Ok(bias)
}

/// The identity of `/proc/PID/exe` (stat through the link: the file itself).
pub fn exe_identity(pid: u32) -> Result<FileIdentity, MapsError> {
    use std::os::unix::fs::MetadataExt;
    let link = format!("/proc/{pid}/exe");
    let md = std::fs::metadata(&link).map_err(|e| io_error(link.clone(), e))?;
    let path = std::fs::read_link(&link)
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let dev = md.dev();
    Ok(FileIdentity {
        dev_major: libc::major(dev),
        dev_minor: libc::minor(dev),
        inode: md.ino(),
        path,
    })
}

/// The load bias of process `pid`'s executable, whose segments are given.
pub fn process_load_bias(pid: u32, segments: &[Segment], pie: bool) -> Result<u64, MapsError> {
    let exe = exe_identity(pid)?;
    let what = format!("/proc/{pid}/maps");
    let text = std::fs::read_to_string(&what).map_err(|e| io_error(what, e))?;
    if text.is_empty() {
        // A zombie's maps are empty.
        return Err(MapsError::Gone);
    }
    load_bias(&parse_maps(&text)?, &exe, segments, pie)
}

/// The load bias of process `pid` running `bin`.
pub fn binary_load_bias(pid: u32, bin: &crate::GoBinary) -> Result<u64, MapsError> {
    let segments: Vec<Segment> = bin.load_segments().copied().collect();
    process_load_bias(pid, &segments, bin.is_pie())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::elf::{PF_W, PF_X, PT_LOAD};

    const PIE_MAPS: &str = "\
55d0c8a00000-55d0c8a01000 r--p 00000000 fd:01 1234567                    /app/my server (deleted)
55d0c8a01000-55d0c8b3e000 r-xp 00001000 fd:01 1234567                    /app/my server (deleted)
55d0c8b3e000-55d0c8c80000 r--p 0013e000 fd:01 1234567                    /app/my server (deleted)
55d0c8c80000-55d0c8c8a000 rw-p 0027f000 fd:01 1234567                    /app/my server (deleted)
55d0c8c8a000-55d0c8cc0000 rw-p 00000000 00:00 0 
7ffd1a9e4000-7ffd1aa05000 rw-p 00000000 00:00 0                          [stack]
";

    fn seg(flags: u32, offset: u64, vaddr: u64, filesz: u64) -> Segment {
        Segment {
            p_type: PT_LOAD,
            flags,
            offset,
            vaddr,
            filesz,
            memsz: filesz,
        }
    }

    fn pie_segments() -> Vec<Segment> {
        vec![
            seg(4, 0, 0, 0x1000),
            seg(4 | PF_X, 0x1000, 0x1000, 0x13d000),
            seg(4, 0x13e000, 0x13e000, 0x141000),
            // A data segment whose file offset is not page aligned.
            seg(4 | PF_W, 0x27f360, 0x280360, 0x9000),
        ]
    }

    #[test]
    fn parses_lines() {
        let m = parse_maps(PIE_MAPS).unwrap();
        assert_eq!(m.len(), 6);
        assert_eq!(m[0].start, 0x55d0c8a00000);
        assert_eq!(m[1].perms, "r-xp");
        assert_eq!(m[1].offset, 0x1000);
        assert_eq!(
            (m[1].dev_major, m[1].dev_minor, m[1].inode),
            (0xfd, 1, 1234567)
        );
        assert_eq!(m[1].path, "/app/my server (deleted)");
        assert_eq!(m[4].path, "");
        assert_eq!(m[5].path, "[stack]");
        assert!(parse_maps("zz-1 r--p 0 0:0 0").is_err());
        assert!(parse_maps("2000-1000 r--p 0 0:0 0").is_err());
        assert!(parse_maps("1000-2000 r--p 0 0:0").is_err());
    }

    #[test]
    fn pie_bias_by_inode_and_by_path() {
        let m = parse_maps(PIE_MAPS).unwrap();
        let id = FileIdentity {
            dev_major: 0xfd,
            dev_minor: 1,
            inode: 1234567,
            path: None,
        };
        assert_eq!(
            load_bias(&m, &id, &pie_segments(), true).unwrap(),
            0x55d0c8a00000
        );
        // overlayfs: another identity in maps; the path still matches.
        let other = FileIdentity {
            dev_major: 0,
            dev_minor: 0x2a,
            inode: 99,
            path: Some("/app/my server (deleted)".into()),
        };
        assert_eq!(
            load_bias(&m, &other, &pie_segments(), true).unwrap(),
            0x55d0c8a00000
        );
        let none = FileIdentity {
            path: None,
            ..other
        };
        assert!(matches!(
            load_bias(&m, &none, &pie_segments(), true),
            Err(MapsError::NotMapped { .. })
        ));
        // Mapped at a bias, but the file says it is not PIE.
        assert!(matches!(
            load_bias(&m, &id, &pie_segments(), false),
            Err(MapsError::NonPieMoved(_))
        ));
    }

    #[test]
    fn non_pie_bias_is_zero() {
        let maps = "\
00400000-0049b000 r-xp 00000000 08:01 42 /usr/bin/svc
0049b000-00542000 r--p 0009b000 08:01 42 /usr/bin/svc
00542000-00579000 rw-p 00142000 08:01 42 /usr/bin/svc
";
        let segs = vec![
            seg(4 | PF_X, 0, 0x400000, 0x9a1e3),
            seg(4, 0x9b000, 0x49b000, 0xa6a28),
            seg(4 | PF_W, 0x142000, 0x542000, 0x17e20),
        ];
        let id = FileIdentity {
            dev_major: 8,
            dev_minor: 1,
            inode: 42,
            path: None,
        };
        assert_eq!(
            load_bias(&parse_maps(maps).unwrap(), &id, &segs, false).unwrap(),
            0
        );
    }

    #[test]
    fn inconsistent_mappings_are_refused() {
        let maps = "\
00400000-0049b000 r-xp 00000000 08:01 42 /x
00600000-00700000 r-xp 0009b000 08:01 42 /x
";
        let segs = vec![
            seg(4 | PF_X, 0, 0x400000, 0x9a1e3),
            seg(4 | PF_X, 0x9b000, 0x49b000, 0x1000),
        ];
        let id = FileIdentity {
            dev_major: 8,
            dev_minor: 1,
            inode: 42,
            path: None,
        };
        assert!(matches!(
            load_bias(&parse_maps(maps).unwrap(), &id, &segs, true),
            Err(MapsError::Inconsistent(..))
        ));
    }

    #[test]
    fn own_process_bias() {
        // The test binary itself: whatever it is, the bias is consistent.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let elf = crate::binary::elf::Elf::parse(&exe).unwrap();
        let b = process_load_bias(std::process::id(), &elf.segments, elf.is_pie()).unwrap();
        assert_eq!(b % PAGE, 0);
    }
}
