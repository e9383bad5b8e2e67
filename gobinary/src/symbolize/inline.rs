//! The inline tree (`FUNCDATA_InlTree`) of a function: one record per
//! inlined call in its body, indexed by the value of the function's
//! `PCDATA_InlTreeIndex` table at a pc (-1: not in inlined code).
//!
//! Record formats, from the Go sources (`runtime.inlinedCall`):
//! - Go 1.18-1.19 (`runtime/symtab.go`), 20 bytes: `parent int16`,
//!   `funcID uint8`, a pad byte, `file int32`, `line int32`, `func_ int32`
//!   (name offset into funcnametab), `parentPc int32`.
//! - Go 1.20 and later (`runtime/symtabinl.go` from 1.21), 16 bytes:
//!   `funcID uint8`, 3 pad bytes, `nameOff int32`, `parentPc int32`,
//!   `startLine int32`.
//!
//! In both, the caller's frame is found at `entry + parentPc`: the runtime
//! (1.19 `gentraceback`, 1.21+ `inlineUnwinder.next`) reads the caller's
//! inline index, file and line there, so the 1.19 `parent`, `file` and
//! `line` fields are not needed.

use crate::binary::PclnVersion;
use crate::binary::bytes::{slice, u8_at, u32_le};

/// `FUNCDATA_InlTree` (`internal/abi/symtab.go`; the same since Go 1.12).
pub const FUNCDATA_INL_TREE: u8 = 3;
/// `PCDATA_InlTreeIndex` (the same since Go 1.12).
pub const PCDATA_INL_TREE_INDEX: u32 = 2;

/// The record layout of an inline tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InlineFormat {
    /// Go 1.18-1.19: 20-byte records.
    Go118,
    /// Go 1.20+: 16-byte records with the callee's start line.
    Go120,
}

impl InlineFormat {
    /// The format used with a function table version; `None` for 1.16-1.17
    /// tables (funcdata are absolute pointers there, which this reader does
    /// not follow).
    pub fn for_table(v: PclnVersion) -> Option<InlineFormat> {
        match v {
            PclnVersion::Go116 => None,
            PclnVersion::Go118 => Some(InlineFormat::Go118),
            PclnVersion::Go120 => Some(InlineFormat::Go120),
        }
    }

    /// Bytes per record.
    pub fn record_size(self) -> u64 {
        match self {
            InlineFormat::Go118 => 20,
            InlineFormat::Go120 => 16,
        }
    }
}

/// One inlined call: which function was inlined and where its caller's
/// position is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlinedCall {
    /// The inlined function's `abi.FuncID`.
    pub func_id: u8,
    /// Offset of its name in funcnametab.
    pub name_off: i32,
    /// Offset from the outer function's entry of an instruction whose
    /// position is the call site.
    pub parent_pc: i32,
    /// Line of the inlined function's `func` keyword (Go 1.20+).
    pub start_line: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InlineError {
    #[error("negative inline index {0}")]
    NegativeIndex(i32),
    #[error("inline record #{0} lies outside the data")]
    OutOfRange(i32),
}

/// Record `index` of the inline tree starting at `tree[0]`.
pub fn inlined_call(
    tree: &[u8],
    format: InlineFormat,
    index: i32,
) -> Result<InlinedCall, InlineError> {
    let i = u64::try_from(index).map_err(|_| InlineError::NegativeIndex(index))?;
    let size = format.record_size();
    // index < 2^31 and size <= 20: no overflow.
    let rec = slice(tree, i * size, size).ok_or(InlineError::OutOfRange(index))?;
    let i32_at = |off| u32_le(rec, off).map(|v| v as i32);
    let bad = || InlineError::OutOfRange(index);
    Ok(match format {
        InlineFormat::Go118 => InlinedCall {
            func_id: u8_at(rec, 2).ok_or_else(bad)?,
            name_off: i32_at(12).ok_or_else(bad)?,
            parent_pc: i32_at(16).ok_or_else(bad)?,
            start_line: None,
        },
        InlineFormat::Go120 => InlinedCall {
            func_id: u8_at(rec, 0).ok_or_else(bad)?,
            name_off: i32_at(4).ok_or_else(bad)?,
            parent_pc: i32_at(8).ok_or_else(bad)?,
            start_line: Some(i32_at(12).ok_or_else(bad)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_formats() {
        let mut t = vec![0u8; 16];
        t.extend_from_slice(&[22, 0, 0, 0]);
        t.extend_from_slice(&100i32.to_le_bytes());
        t.extend_from_slice(&0x40i32.to_le_bytes());
        t.extend_from_slice(&17i32.to_le_bytes());
        assert_eq!(
            inlined_call(&t, InlineFormat::Go120, 1),
            Ok(InlinedCall {
                func_id: 22,
                name_off: 100,
                parent_pc: 0x40,
                start_line: Some(17)
            })
        );
        assert_eq!(
            inlined_call(&t, InlineFormat::Go120, 2),
            Err(InlineError::OutOfRange(2))
        );
        assert_eq!(
            inlined_call(&t, InlineFormat::Go120, -1),
            Err(InlineError::NegativeIndex(-1))
        );
        let mut old = vec![0u8; 20];
        old[2] = 21;
        old[12..16].copy_from_slice(&7i32.to_le_bytes());
        old[16..20].copy_from_slice(&9i32.to_le_bytes());
        assert_eq!(
            inlined_call(&old, InlineFormat::Go118, 0),
            Ok(InlinedCall {
                func_id: 21,
                name_off: 7,
                parent_pc: 9,
                start_line: None
            })
        );
        assert_eq!(
            inlined_call(&old, InlineFormat::Go118, i32::MAX),
            Err(InlineError::OutOfRange(i32::MAX))
        );
    }
}
