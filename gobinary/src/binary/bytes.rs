//! Bounds-checked little helpers for reading integers and strings out of
//! untrusted byte slices. Every function returns `None` instead of panicking.

/// `d[off..off + len]`, or `None` when any part is out of range.
pub(crate) fn slice(d: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let len = usize::try_from(len).ok()?;
    let end = start.checked_add(len)?;
    d.get(start..end)
}

/// `d[off..]`, or `None` when `off` is past the end.
pub(crate) fn tail(d: &[u8], off: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    d.get(start..)
}

pub(crate) fn u8_at(d: &[u8], off: u64) -> Option<u8> {
    slice(d, off, 1).and_then(|b| b.first().copied())
}

pub(crate) fn u16_le(d: &[u8], off: u64) -> Option<u16> {
    let b = slice(d, off, 2)?;
    Some(u16::from_le_bytes(b.try_into().ok()?))
}

pub(crate) fn u32_le(d: &[u8], off: u64) -> Option<u32> {
    let b = slice(d, off, 4)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

pub(crate) fn u64_le(d: &[u8], off: u64) -> Option<u64> {
    let b = slice(d, off, 8)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// An unsigned word of `size` bytes (4 or 8), little- or big-endian.
pub(crate) fn word(d: &[u8], off: u64, size: u8, big_endian: bool) -> Option<u64> {
    match (size, big_endian) {
        (4, false) => u32_le(d, off).map(u64::from),
        (8, false) => u64_le(d, off),
        (4, true) => {
            let b = slice(d, off, 4)?;
            Some(u64::from(u32::from_be_bytes(b.try_into().ok()?)))
        }
        (8, true) => {
            let b = slice(d, off, 8)?;
            Some(u64::from_be_bytes(b.try_into().ok()?))
        }
        _ => None,
    }
}

/// The NUL-terminated byte string starting at `off` (without the NUL), at
/// most `max` bytes long. `None` if it is out of range or has no terminator.
pub(crate) fn cstr(d: &[u8], off: u64, max: usize) -> Option<&[u8]> {
    let rest = tail(d, off)?;
    let window = rest.get(..max.min(rest.len()))?;
    let nul = window.iter().position(|&b| b == 0)?;
    window.get(..nul)
}

/// Reads NUL-terminated names from one string table with a bound on the
/// total number of bytes scanned, so that a table without terminators (or
/// many offsets into one long string) cannot make parsing quadratic.
pub(crate) struct NameTable<'a> {
    table: &'a [u8],
    max_name: usize,
    budget: usize,
}

impl<'a> NameTable<'a> {
    pub(crate) fn new(table: &'a [u8], max_name: usize) -> Self {
        // Real tables are scanned about once per name reference; allow
        // generous slack for shared names (ABI wrappers) and suffix sharing.
        let budget = table.len().saturating_mul(8).saturating_add(16 << 20);
        NameTable {
            table,
            max_name,
            budget,
        }
    }

    /// The name at `off`, or `None` if it is out of range, unterminated
    /// within `max_name` bytes, or the scan budget is exhausted.
    pub(crate) fn get(&mut self, off: u64) -> Option<&'a [u8]> {
        let rest = tail(self.table, off)?;
        let limit = self.max_name.min(rest.len()).min(self.budget);
        let window = rest.get(..limit)?;
        match window.iter().position(|&b| b == 0) {
            Some(nul) => {
                self.budget -= nul + 1;
                window.get(..nul)
            }
            None => {
                self.budget -= limit;
                None
            }
        }
    }
}

/// Go's unsigned varint (LEB128). Returns the value and the number of bytes
/// used; `None` on truncation or overflow.
pub(crate) fn uvarint(d: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &b) in d.iter().enumerate().take(10) {
        let shift = 7 * u32::try_from(i).ok()?;
        let low = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return None; // more than 64 bits
        }
        value |= low.checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_checked() {
        let d = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(slice(&d, 8, 1), Some(&[9u8][..]));
        assert_eq!(slice(&d, 8, 2), None);
        assert_eq!(slice(&d, u64::MAX, 2), None);
        assert_eq!(slice(&d, 1, u64::MAX), None);
        assert_eq!(u32_le(&d, 0), Some(0x0403_0201));
        assert_eq!(u64_le(&d, 2), None);
        assert_eq!(word(&d, 0, 4, true), Some(0x0102_0304));
        assert_eq!(word(&d, 0, 3, false), None);
        assert_eq!(tail(&d, 9), Some(&[][..]));
        assert_eq!(tail(&d, 10), None);
    }

    #[test]
    fn cstrings() {
        let d = b"abc\0de";
        assert_eq!(cstr(d, 0, 100), Some(&b"abc"[..]));
        assert_eq!(cstr(d, 4, 100), None);
        assert_eq!(cstr(d, 0, 2), None);
        assert_eq!(cstr(d, 3, 2), Some(&b""[..]));
        assert_eq!(cstr(d, 99, 2), None);
    }

    #[test]
    fn name_table_budget() {
        let mut t = NameTable::new(b"ab\0cd\0", 16);
        assert_eq!(t.get(0), Some(&b"ab"[..]));
        assert_eq!(t.get(3), Some(&b"cd"[..]));
        assert_eq!(t.get(2), Some(&b""[..]));
        assert_eq!(t.get(6), None);
        assert_eq!(t.get(u64::MAX), None);
        t.budget = 2;
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(0), None);
        assert_eq!(t.budget, 0);
    }

    #[test]
    fn varints() {
        assert_eq!(uvarint(&[0x05]), Some((5, 1)));
        assert_eq!(uvarint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(uvarint(&[0x80]), None);
        assert_eq!(uvarint(&[]), None);
        assert_eq!(
            uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Some((u64::MAX, 10))
        );
        assert_eq!(
            uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            None
        );
    }
}
