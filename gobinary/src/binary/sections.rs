//! Accessors for the parts of a [`GoBinary`] that symbolization and type
//! naming read beyond the function list: bytes at link-time addresses, the
//! function table's bytes, the named moduledata fields of the binary's Go
//! release, and the Go build id note.

use std::collections::HashMap;

use super::bytes::{slice, u32_le};
use super::moduledata::{self, ModuledataFields, ModuledataLayout, PointerReader};
use super::{GoBinary, PclntabInfo, PclntabLocation};

/// ELF note type of the Go build id (`cmd/link`'s `ELF_NOTE_GOBUILDID_TAG`).
const NOTE_GOBUILDID: u32 = 4;
/// Longest build id accepted (real ones are about 83 bytes).
const MAX_BUILD_ID: usize = 1024;
/// ELF program header type of notes.
const PT_NOTE: u32 = 4;

impl GoBinary {
    /// `len` file bytes at link-time address `vaddr` (within one loadable
    /// segment), or `None`.
    pub fn read_vaddr(&self, vaddr: u64, len: u64) -> Option<&[u8]> {
        self.elf.read_vaddr(&self.data, vaddr, len)
    }

    /// The file bytes from link-time address `vaddr` to the end of the
    /// file-backed part of its loadable segment, or `None`.
    pub fn read_to_segment_end(&self, vaddr: u64) -> Option<&[u8]> {
        self.elf.read_vaddr_to_segment_end(&self.data, vaddr)
    }

    /// The bytes of the Go function table described by `info` (from its
    /// header to the end of its section, or of its segment when it was found
    /// by scanning).
    pub fn pclntab_bytes(&self, info: &PclntabInfo) -> Option<&[u8]> {
        match &info.location {
            PclntabLocation::Section(name) => {
                let sec = self.elf.section(name)?;
                self.elf.section_data(&self.data, sec)
            }
            PclntabLocation::Scan => self.read_to_segment_end(info.vaddr),
        }
    }

    /// The moduledata fields ([`ModuledataLayout::for_version`] of this
    /// binary's Go release) of the moduledata `info` names; `None` when it
    /// was not found, the release has no known layout, or the values read
    /// are implausible.
    pub fn moduledata_fields(&self, info: &PclntabInfo) -> Option<ModuledataFields> {
        let v = self.go_version();
        let layout: &ModuledataLayout = ModuledataLayout::for_version(v.major, v.minor)?;
        let addr = info.moduledata?;
        // Only PIE files relocate the words read; a non-PIE file has none.
        let relocs = if self.is_pie() {
            self.elf.relative_relocations(&self.data)
        } else {
            HashMap::new()
        };
        let reader = PointerReader {
            elf: &self.elf,
            data: &self.data,
            relocs: &relocs,
            ptr_size: info.header.ptr_size,
        };
        moduledata::read_fields(&reader, addr, layout)
    }

    /// The Go build id (`go tool buildid FILE`) from the `.note.go.buildid`
    /// ELF note, found by section name or, without section headers, among
    /// the `PT_NOTE` segments. `None` when absent or malformed.
    pub fn go_build_id(&self) -> Option<String> {
        if let Some(sec) = self.elf.section(".note.go.buildid")
            && let Some(id) = self
                .elf
                .section_data(&self.data, sec)
                .and_then(go_build_id_note)
        {
            return Some(id);
        }
        self.elf
            .segments
            .iter()
            .filter(|s| s.p_type == PT_NOTE)
            .filter_map(|s| slice(&self.data, s.offset, s.filesz))
            .find_map(go_build_id_note)
    }
}

/// The Go build id among the ELF notes in `notes`: each note is namesz,
/// descsz, type (u32 each), the name padded to 4 bytes, the descriptor
/// padded to 4 bytes. The Go one has name "Go" and type 4.
fn go_build_id_note(notes: &[u8]) -> Option<String> {
    let mut off: u64 = 0;
    // Each note is at least 12 bytes: the loop ends within len/12 steps.
    while let (Some(namesz), Some(descsz), Some(kind)) = (
        u32_le(notes, off),
        u32_le(notes, off + 4),
        u32_le(notes, off + 8),
    ) {
        let name_at = off + 12;
        let desc_at = name_at + u64::from(namesz).next_multiple_of(4);
        let name = slice(notes, name_at, u64::from(namesz))?;
        let desc = slice(notes, desc_at, u64::from(descsz))?;
        // Go's linker pads the name to 4 bytes inside namesz ("Go\0\0").
        let name = name.strip_suffix(b"\0\0").or(name.strip_suffix(b"\0"));
        if kind == NOTE_GOBUILDID && name == Some(b"Go".as_slice()) {
            if desc.len() > MAX_BUILD_ID {
                return None;
            }
            return std::str::from_utf8(desc).ok().map(str::to_string);
        }
        off = desc_at + u64::from(descsz).next_multiple_of(4);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(name);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend_from_slice(desc);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    #[test]
    fn build_id_notes() {
        let mut n = note(b"GNU\0", 3, b"abcdefgh");
        n.extend(note(b"Go\0", 4, b"xyz/abc"));
        assert_eq!(go_build_id_note(&n).as_deref(), Some("xyz/abc"));
        // As Go's linker writes it: namesz 4.
        let n = note(b"Go\0\0", 4, b"xyz/abc");
        assert_eq!(go_build_id_note(&n).as_deref(), Some("xyz/abc"));
        assert_eq!(go_build_id_note(&note(b"Gox\0", 4, b"x")), None);
        assert_eq!(go_build_id_note(&note(b"Go\0", 1, b"x")), None);
        for cut in 0..n.len() {
            let _ = go_build_id_note(&n[..cut]);
        }
        let mut huge = note(b"Go\0", 4, b"x");
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(go_build_id_note(&huge), None);
    }
}
