//! Names of Go types from the executable, given the address of a runtime
//! type descriptor (`*abi.Type`, `*runtime._type` before 1.21): what the
//! allocation probe finds in `mallocgc`'s `typ` argument.
//!
//! A type descriptor starts (every Go from 1.14 to 1.27, `internal/abi/type.go`)
//! with `Size_ uintptr`, `PtrBytes uintptr`, `Hash uint32`, `TFlag uint8`,
//! `Align_`, `FieldAlign_`, `Kind_ uint8`, `Equal` and `GCData` pointers,
//! then `Str int32` (a name offset) and `PtrToThis int32`: on 64-bit, TFlag
//! at +20 and Str at +40. The name is at `moduledata.types + Str`
//! (`runtime.resolveNameOff`): a flag byte, the length (a uvarint from Go
//! 1.17, two big-endian bytes before), the text. With `TFlagExtraStar` (2)
//! the text carries a `*` the type's name does not have (the linker shares
//! the string between `T` and `*T`), which is dropped.
//!
//! Descriptors of the executable lie in `[moduledata.types,
//! moduledata.etypes)`. Anything else was built by `reflect` at run time
//! (on the heap, names resolved through the runtime's `reflectOffs` map)
//! and cannot be named from the file: [`TypeName::ReflectMade`], never a
//! guess.

use crate::binary::bytes::{slice, u8_at, u16_le, u32_le, uvarint};
use crate::binary::{GoBinary, GoVersion};

/// `abi.TFlagExtraStar`.
const TFLAG_EXTRA_STAR: u8 = 2;
/// Longest type name accepted (real ones are far shorter; a bound keeps a
/// corrupt length from producing a huge string).
const MAX_TYPE_NAME: u64 = 1 << 16;

/// The name of a type descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypeName {
    /// As `reflect.Type.String` and `fmt`'s `%T` print it.
    Named(String),
    /// The address is outside the executable's type descriptors: a type
    /// built at run time by `reflect` (`reflect.SliceOf`, `StructOf`, ...).
    ReflectMade,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeNameError {
    #[error("cannot read the Go function table: {0}")]
    Binary(String),
    #[error(
        "runtime.firstmoduledata not found or its type range unreadable: types cannot be named"
    )]
    NoModuledata,
    #[error("type descriptor at {addr:#x}: {problem}")]
    Malformed { addr: u64, problem: &'static str },
}

/// Names type descriptors of one executable by link-time address.
#[derive(Debug, Clone)]
pub struct TypeNames<'a> {
    types: u64,
    etypes: u64,
    /// File bytes from `types` to the end of its segment.
    data: &'a [u8],
    ptr_size: u8,
    /// Name lengths are uvarints (Go 1.17+), else two big-endian bytes.
    varint_len: bool,
}

impl<'a> TypeNames<'a> {
    /// Finds the executable's type descriptors (moduledata `types` and
    /// `etypes`, per the layout of the binary's Go release).
    pub fn new(bin: &'a GoBinary) -> Result<TypeNames<'a>, TypeNameError> {
        let info = bin
            .pclntab_info()
            .map_err(|e| TypeNameError::Binary(e.to_string()))?;
        let md = bin
            .moduledata_fields(&info)
            .ok_or(TypeNameError::NoModuledata)?;
        let data = bin
            .read_to_segment_end(md.types)
            .ok_or(TypeNameError::NoModuledata)?;
        Ok(TypeNames {
            types: md.types,
            etypes: md.etypes,
            data,
            ptr_size: info.header.ptr_size,
            varint_len: bin.go_version() >= GoVersion::new(1, 17, 0),
        })
    }

    /// `[types, etypes)`: link-time addresses of the executable's type
    /// descriptors.
    pub fn range(&self) -> (u64, u64) {
        (self.types, self.etypes)
    }

    /// The name of the descriptor at link-time address `addr` (a runtime
    /// address minus the load bias).
    pub fn name(&self, addr: u64) -> Result<TypeName, TypeNameError> {
        if addr < self.types || addr >= self.etypes {
            return Ok(TypeName::ReflectMade);
        }
        let bad = |problem| TypeNameError::Malformed { addr, problem };
        let ps = u64::from(self.ptr_size);
        let off = addr - self.types;
        let tflag = u8_at(self.data, off + 2 * ps + 4).ok_or_else(|| bad("truncated"))?;
        let str_off = u32_le(self.data, off + 4 * ps + 8).ok_or_else(|| bad("truncated"))? as i32;
        // The runtime: `md.types + off`, which must not pass etypes.
        let name_off = u64::try_from(str_off).map_err(|_| bad("negative name offset"))?;
        if name_off == 0
            || self
                .types
                .checked_add(name_off)
                .is_none_or(|a| a > self.etypes)
        {
            return Err(bad("name offset outside the type descriptors"));
        }
        let (len, text_at) = if self.varint_len {
            let rest = self
                .data
                .get(usize::try_from(name_off + 1).unwrap_or(usize::MAX)..)
                .ok_or_else(|| bad("name out of range"))?;
            let (len, n) = uvarint(rest).ok_or_else(|| bad("bad name length"))?;
            (len, name_off + 1 + n as u64)
        } else {
            let len = u16_le(self.data, name_off + 1)
                .map(u16::swap_bytes)
                .ok_or_else(|| bad("name out of range"))?;
            (u64::from(len), name_off + 3)
        };
        if len > MAX_TYPE_NAME {
            return Err(bad("name too long"));
        }
        let text = slice(self.data, text_at, len).ok_or_else(|| bad("name out of range"))?;
        let text = if tflag & TFLAG_EXTRA_STAR != 0 {
            text.strip_prefix(b"*")
                .ok_or_else(|| bad("extra-star name without a star"))?
        } else {
            text
        };
        Ok(TypeName::Named(String::from_utf8_lossy(text).into_owned()))
    }
}
